"""The alert program: one message per failed run (and one when a failing job recovers).

Run by a job's OnFailure=/OnSuccess= unit as `trigger --alert`. Tokens arrive as systemd
credentials ($CREDENTIALS_DIRECTORY/token), never as arguments. The event is sent from
memory first: the disk (a queue of events that could not be sent yet) is only the fallback,
because a full disk is exactly when alerts matter.
"""
from __future__ import annotations

import errno
import json
import os
import time
import uuid
from typing import Callable, Optional

from . import paths
from .channels import Channel, build_outbound
from .run import redact_url, trust_store

# DingTalk throttles a robot above 20 messages a minute; stay under it and merge the rest.
RATE_LIMIT = 18
RATE_WINDOW = 60.0
DELIVERY_ATTEMPTS = 3
DELIVERY_TIMEOUT = (5.0, 10.0)
MAX_LINES = 12
MAX_TEXT = 4000
# A queued event older than this has no live alert waiting to send it: the next alert does.
ORPHANED_AFTER = RATE_WINDOW + 180


def format_events(events: list[dict]) -> tuple[str, str]:
    """One message for one or several failed runs: (title, markdown text), bounded in size."""
    if len(events) == 1:
        e = events[0]
        verb = "recovered" if e.get("kind") == "recovered" else "FAILED"
        title = f"deployer: job {e['job']} {verb} on {e['host']}"
    else:
        title = f"deployer: {len(events)} job runs failed on {events[0]['host']}"
    parts = [f"**{title}**"]
    for e in events:
        if len(events) > 1:
            parts.append(f"**{e['job']}**")
        if e.get("kind") == "recovered":
            parts.append(f"succeeded again at {e['time']}")
            continue
        parts.append(f"{e.get('method', '')} {e.get('url', '')}".strip())
        parts.append(f"result: {e['result']}, exit status {e['exit_status']}, at {e['time']}")
        lines = e.get("lines", [])[-(MAX_LINES if len(events) == 1 else 3):]
        parts += [f"> {line[:200]}" for line in lines]
    text = "\n\n".join(parts)
    return title, text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 20] + "\n\n(truncated)"


class NotSent(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _post(url: str, params: dict, body: bytes, headers: dict) -> tuple:
    """POST one alert with `requests` (rare and off the jobs' hot path, and it honours the
    host's proxy settings): the host's trust store, no redirects, a bounded answer."""
    import requests

    try:
        with requests.post(url, params=params, data=body, headers=headers, timeout=DELIVERY_TIMEOUT,
                           verify=trust_store() or True, allow_redirects=False, stream=True) as response:
            return response.status_code, response.raw.read(65536, decode_content=True)
    except requests.exceptions.ConnectTimeout:
        raise NotSent("timed out connecting") from None
    except requests.Timeout:
        raise NotSent("timed out reading") from None
    except requests.RequestException as error:
        cause = str(error).rsplit("] ", 1)[-1].rstrip(")'\" ")[:200]
        raise NotSent(f"{type(error).__name__}: {cause}") from None


def deliver(channel: Channel, events: list, log: Callable[[str], None] = print,
            sleep: Callable[[float], None] = time.sleep) -> bool:
    """Send one message, a few tries with backoff; never loops forever; never logs the token.

    An attempt whose request went out but whose answer did not come back in time may have
    been delivered: it is not sent again (a slow channel would otherwise get it three times).
    """
    title, text = format_events(events)
    for attempt in range(1, DELIVERY_ATTEMPTS + 1):
        outbound = build_outbound(channel, title, text, events[-1], time.time())
        body = json.dumps(outbound.json).encode()
        try:
            status, answer = _post(outbound.url, outbound.params, body, {
                "Content-Type": "application/json", "User-Agent": "deployer-alert/1", **outbound.headers})
            ok, detail = outbound.accepted(status, answer)
        except NotSent as error:
            if error.reason == "timed out reading":
                log(f"alert via {channel.name} ({channel.type}), attempt {attempt}/{DELIVERY_ATTEMPTS}: "
                    "sent, but no answer in time; not sent again, which could deliver it twice")
                return True
            ok, detail = False, error.reason
        log(f"alert via {channel.name} ({channel.type}), attempt {attempt}/{DELIVERY_ATTEMPTS}: "
            f"{'accepted' if ok else 'not accepted'} ({detail})")
        if ok:
            return True
        if attempt < DELIVERY_ATTEMPTS:
            sleep(2.0 * attempt)
    return False


class Coalescer:
    """Per channel, at most RATE_LIMIT messages per RATE_WINDOW; a burst beyond that is merged.

    Under the limit, an alert sends its own event from memory (with any left behind by an
    earlier failed delivery). Over it, the event is queued in `state_dir` and the alert waits
    for the window; the first to get through sends every queued event as one message, and the
    others find theirs already sent. A failed delivery leaves the event queued for the next
    alert to carry. A full disk only loses the queue, never the message in hand.
    """

    def __init__(self, state_dir: str, channel: str, now=time.time, sleep=time.sleep,
                 log: Callable[[str], None] = print):
        self.dir = os.path.join(state_dir, "queue", channel)
        self.sent_log = os.path.join(state_dir, f"{channel}.sent")
        self.lock_path = os.path.join(state_dir, f"{channel}.lock")
        self.now, self.sleep, self.log = now, sleep, log
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError:
            pass  # a full disk: the queue is unusable, sending still works

    def enqueue(self, event: dict) -> Optional[str]:
        """Queue an event; None when the disk refuses (the partial file is removed)."""
        name = f"{self.now():.6f}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        path = os.path.join(self.dir, name)
        try:
            with open(path + ".tmp", "w") as handle:
                json.dump(event, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(path + ".tmp", path)
            return name
        except OSError as error:
            self.log(f"cannot queue the alert ({errno.errorcode.get(error.errno, error)}); sending from memory")
            try:
                os.unlink(path + ".tmp")
            except OSError:
                pass
            return None

    def _queued(self) -> list:
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        for name in names:  # a .tmp left by a writer that died or ran out of space
            if name.endswith(".tmp") and float(name.split("-", 1)[0]) < self.now() - ORPHANED_AFTER:
                try:
                    os.unlink(os.path.join(self.dir, name))
                except OSError:
                    pass
        return sorted(n for n in names if n.endswith(".json"))

    def _load(self, names: list) -> tuple:
        events, loaded = [], []
        for name in names:
            try:
                with open(os.path.join(self.dir, name)) as handle:
                    events.append(json.load(handle))
                loaded.append(name)
            except (OSError, ValueError):
                self._remove([name])  # unreadable: nothing to send
        return events, loaded

    def _remove(self, names: list) -> None:
        for name in names:
            try:
                os.unlink(os.path.join(self.dir, name))
            except OSError:
                pass

    def _recent_sends(self) -> list:
        try:
            with open(self.sent_log) as handle:
                stamps = [float(x) for x in handle.read().split()]
        except (OSError, ValueError):
            stamps = []
        return [t for t in stamps if t > self.now() - RATE_WINDOW]

    def _record_send(self, recent: list) -> None:
        try:
            with open(self.sent_log, "w") as handle:
                handle.write(" ".join(f"{t:.3f}" for t in recent + [self.now()]))
        except OSError:
            pass  # only the rate limit's memory is lost

    def _locked(self):
        import fcntl

        try:
            handle = open(self.lock_path, "a")
        except OSError:
            return None  # no lock on a full disk; concurrent alerts may each send their own
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    def run(self, event: dict, send: Callable[[list], bool], give_up_after: float = 120.0,
            queued: Optional[str] = None) -> bool:
        """Deliver `event` (merged with queued ones when the channel is busy); whether it went out.
        `queued`: the name under which this alert already queued it."""
        deadline = self.now() + give_up_after
        waited = False
        while True:
            lock = self._locked()
            try:
                if queued and not os.path.exists(os.path.join(self.dir, queued)):
                    return True  # sent by another alert, merged into its message
                recent = self._recent_sends()
                if len(recent) < RATE_LIMIT:
                    orphaned = self.now() - ORPHANED_AFTER
                    others = [n for n in self._queued() if n != queued and
                              (waited or float(n.split("-", 1)[0]) < orphaned)]
                    events, loaded = self._load(others)
                    if not send(events + [event]):
                        if not queued:
                            self.enqueue(event)
                        return False
                    self._remove(loaded + ([queued] if queued else []))
                    self._record_send(recent)
                    return True
                if not queued:
                    queued = self.enqueue(event)
                wait = min(recent) + RATE_WINDOW - self.now()
            finally:
                if lock:
                    lock.close()
            if self.now() + wait > deadline:
                return False
            waited = True
            self.sleep(max(wait, 0.1))


def failed_run_event(job: str, host: str) -> dict:
    """What the OnFailure= unit knows: systemd's $MONITOR_* and the run's journal lines."""
    import subprocess

    invocation = os.environ.get("MONITOR_INVOCATION_ID", "")
    lines: list[str] = []
    if invocation:
        result = subprocess.run(
            ["journalctl", "--no-pager", "-o", "cat", f"_SYSTEMD_INVOCATION_ID={invocation}", "+",
             f"INVOCATION_ID={invocation}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            universal_newlines=True)
        lines = [line for line in result.stdout.splitlines() if line.strip()][-MAX_LINES:]
    method, url = job_request(job)
    return {"kind": "failed", "job": job, "host": host, "method": method, "url": url,
            "result": os.environ.get("MONITOR_SERVICE_RESULT", "unknown"),
            "exit_status": os.environ.get("MONITOR_EXIT_STATUS", "?"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "invocation": invocation, "lines": lines}


def job_request(job: str) -> tuple[str, str]:
    """METHOD and URL of a job, from the X-Deployer-Request= line the renderer wrote for us."""
    prefix = paths.REQUEST_KEY + "="
    try:
        with open(os.path.join(paths.UNIT_DIR, paths.job_unit(job, "service")), encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(prefix):
                    request = json.loads(line[len(prefix):])
                    return request["method"], request["url"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "", "(unknown)"


def read_credential(name: str) -> str:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return ""
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""


def now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def mark(path: str, failing: bool) -> None:
    """The failing marker that makes the next success send "recovered" (best effort)."""
    try:
        if failing:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
        elif os.path.exists(path):
            os.unlink(path)
    except OSError:
        pass


def alert_main(job: str, host_name: str, channel: Channel, recovered: bool) -> bool:
    """What an OnFailure=/OnSuccess= unit runs; whether the message went out (or was not needed)."""
    log = lambda line: print(line, flush=True)  # noqa: E731
    state = os.environ.get("STATE_DIRECTORY") or "/tmp"
    failing = os.path.join(state, "failing", job)
    if recovered:
        if not os.path.exists(failing):
            return True
        mark(failing, False)
        event = {"kind": "recovered", "job": job, "host": host_name, "time": now_text()}
        log(f"job {job} succeeded after failing; telling {channel.name}")
    else:
        event = failed_run_event(job, host_name)
        mark(failing, True)
        log(f"job {job} failed ({event['result']}, exit status {event['exit_status']}); alerting via {channel.name}")
    coalescer = Coalescer(state, channel.name, log=log)
    delivered = coalescer.run(event, lambda events: deliver(channel, events, log=log))
    if not delivered:
        log("alert not delivered; it stays queued and goes out with the next alert")
    return delivered
