"""The alert program: one message per failed run (and one when a failing job recovers); failures
that come together (a storm) are one message per channel.

Run by a job's OnFailure=/OnSuccess= unit as `trigger --alert`. Tokens arrive as systemd
credentials ($CREDENTIALS_DIRECTORY/token), never as arguments. The event is sent from
memory first: the disk (a queue of events that could not be sent yet) is only the fallback,
because a full disk is exactly when alerts matter.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Optional

from deployer.contract import paths, unitkeys
from deployer.contract.channels import CHANNEL_TYPES, WATCH_KINDS, AlertPolicy, Channel, build_outbound, exit_number
from deployer.contract.options import EXIT_FENCED
from deployer.contract.protocol import Held, duration_text
from deployer.host.journal import FailedRun, RunAccount, journal_failed_runs, run_account
from deployer.host.run import trust_store
from deployer.host.state import Corrupt, read_held_file

# DingTalk throttles a robot above 20 messages a minute; stay under it and merge the rest.
RATE_LIMIT = 18
RATE_WINDOW = 60.0
DELIVERY_ATTEMPTS = 3
DELIVERY_TIMEOUT = (5.0, 10.0)
MAX_LINES = 12
MAX_TEXT = 4000
# More failed runs than this in one message is a storm: grouped by reason, every job named,
# rather than each run with its lines (issue 23 item 3).
STORM_RUNS = 5
REASON_IN_GROUP = 200
# A queued event older than this has no live alert waiting to send it: the next alert does.
ORPHANED_AFTER = RATE_WINDOW + 180
# A storm is one message per channel (issue 23 item 3). An alert queues its event, then one
# alert of the channel (the gatherer) sends everything queued once nothing of the channel is in
# flight: no run of its jobs that began with the burst still running, no alert of the channel
# still looking up its failures (both read from PID 1's cgroups, not guessed from the clock).
# GATHER_QUIET after the newest event queued and GATHER_SETTLE after the last run or alert seen
# in flight (PID 1 starts a failed run's alert unit a moment after the run's cgroup is gone);
# never later than GATHER_MAX after the first event.
GATHER_QUIET = 1.0
# What a report does once its events are queued on disk (Coalescer.run): it marks its runs
# reported then, not after the channel's gatherer sent them, so that an alert killed while it
# waits for the gatherer (TimeoutStartSec=, on a loaded host) is not restarted into reporting the
# same runs again (a storm's jobs named in a second message). Queued, they go out all the same.
ON_QUEUED: contextvars.ContextVar = contextvars.ContextVar("on_queued", default=None)
GATHER_SETTLE = 3.0
GATHER_MAX = 90.0
GATHER_POLL = 0.5
# The runs a storm waits for began at most this long before its first event was queued (and
# before its newest): a run begun later is the next burst's, a long one begun earlier not the storm's.
STORM_BEFORE = 60.0
# After a failed delivery, the other alerts leave it to the units' restarts (RestartSec=20, so a
# restart always tries) instead of each trying the channel again in turn.
FAILED_PAUSE = 15.0


def _same(text: str) -> str:
    return text


def format_events(events: list[dict], escape: Callable[[str], str] = _same) -> tuple[str, str]:
    """One message for one or several failed runs: (title, markdown text), bounded in size.
    `escape`: the channel's, for every piece of data (names, URLs, the runs' journal lines).
    Several runs that do not fit: the first of format_messages (each names its share)."""
    return format_messages(events, escape)[0]


def clock_text(stamp: str) -> str:
    """An event's `time` (ISO 8601, the host's offset: kept as is in the webhook document) as
    every deployer text writes a moment: `2026-12-06 04:00:00 UTC` (as the journal lines of
    `deployer logs`). Anything else is shown as it came."""
    from deployer.contract.text import clock_of_iso

    return clock_of_iso(stamp)


# The watcher's events (host/watch.py): what the title says, and the paragraph for one.
WATCH_VERBS = {"late": "LATE", "late_ended": "started again", "long": "STILL RUNNING", "long_ended": "finished"}


def _watch_paragraph(e: dict, escape: Callable[[str], str]) -> str:
    job = escape(e["job"])
    if e["kind"] == "late":
        return (f"{job}: slot {escape(e['slot'])} has not started, {escape(e['late_by'])} after its time "
                f"(alert_late = {escape(e['alert_late'])}): {escape(e['reason'])}")
    if e["kind"] == "late_ended":
        return f"{job}: a run started at {escape(clock_text(e['started']))}, the late slot was {escape(e['slot'])}"
    if e["kind"] == "long":
        return (f"{job} still running after {escape(e['running_for'])} (alert_long = {escape(e['alert_long'])}), "
                f"since {escape(clock_text(e['since']))}, run {escape(e['invocation'])}")
    return f"{job} finished after {escape(e['ran_for'])}: {escape(e['result'])}, run {escape(e['invocation'])}"


def _detailed(events: list[dict], escape: Callable[[str], str]) -> tuple[str, str]:
    if all(e.get("kind") in WATCH_KINDS for e in events):
        e = events[0]
        title = (f"deployer: job {escape(e['job'])} {WATCH_VERBS[e['kind']]} on {escape(e['host'])}"
                 if len(events) == 1 else f"deployer: {len(events)} late or long jobs on {escape(e['host'])}")
        return title, "\n\n".join([f"**{title}**"] + [_watch_paragraph(e, escape) for e in events])
    if len(events) == 1 and events[0].get("kind") == "held":
        e = events[0]
        title = (f"deployer: host {escape(e['host'])} HOLDS its jobs (" +
                 ("failing closed)" if e.get("reason") else f"was down {escape(e['down_for'])})"))
    elif len(events) == 1:
        e = events[0]
        verb = ("recovered" if e.get("kind") == "recovered" else
                "FENCED (its service answered a newer owner's epoch; the timer is stopped here)"
                if exit_number(e) == EXIT_FENCED else "FAILED")
        title = f"deployer: job {escape(e['job'])} {verb} on {escape(e['host'])}"
    else:
        title = _merged_title(events, escape)
    parts = [f"**{title}**"]
    for e in events:
        if e.get("kind") == "held":
            parts += _held_paragraphs(e, escape, len(events) > 1)
            continue
        if e.get("kind") in WATCH_KINDS:  # merged with failures (a queued event)
            parts.append(_watch_paragraph(e, escape))
            continue
        if len(events) > 1:
            parts.append(f"**{escape(e['job'])}**")
        if e.get("kind") == "recovered":
            if e.get("failed_runs"):
                runs = int(e["failed_runs"])
                parts.append(f"{escape(e['job'])} recovered after {runs} failed run{'s' if runs != 1 else ''}, "
                             f"{escape(e['failing_for'])}")
            parts.append(f"succeeded again at {escape(clock_text(e['time']))}")
            continue
        # What an operator reads first: which run (job, host, slot) and why; then its own lines.
        slot = f"slot {escape(e['slot'])}" if e.get("slot") else "slot unknown (the run wrote no record)"
        parts.append((f"{escape(e['job'])} on {escape(e['host'])}, " if len(events) == 1 else "")
                     + f"{slot}: {escape(e.get('reason') or e['result'])}")
        if e.get("failed_runs", 0) > 1:  # an alert policy held it back, or this is a reminder
            parts.append(f"{int(e['failed_runs'])} failed runs in a row, failing for {escape(e['failing_for'])}")
        lines = e.get("lines", [])[-(MAX_LINES if len(events) == 1 else 3):]
        parts += [f"> {escape(line[:200])}" for line in lines]
        parts.append(escape(f"{e.get('method', '')} {e.get('url', '')}".strip()))
        parts.append(f"result: {escape(e['result'])}{escape(ended(e))}, at {escape(clock_text(e['time']))}"
                     + (f", run {escape(e['invocation'])}" if e.get("invocation") else ""))
    return title, "\n\n".join(parts)


def _merged_title(events: list[dict], escape: Callable[[str], str]) -> str:
    """The title of a message that merges kinds (a channel's queue gathers whatever came within
    its window): each kind counted for what it is, a hold first. A recovery or a watcher's event
    is never counted as a failed run."""
    host = escape(events[0]["host"])
    failed = [e for e in events if e.get("kind") not in ("held", "recovered") + WATCH_KINDS]
    recovered = [e for e in events if e.get("kind") == "recovered"]
    watched = [e for e in events if e.get("kind") in WATCH_KINDS]
    pieces = []
    if failed:
        pieces.append(f"{len(failed)} job run{'s' if len(failed) != 1 else ''} failed")
    if recovered:
        pieces.append(f"job {escape(recovered[0]['job'])} recovered" if len(recovered) == 1
                      else f"{len(recovered)} jobs recovered")
    if watched:
        pieces.append(f"job {escape(watched[0]['job'])} {WATCH_VERBS[watched[0]['kind']]}" if len(watched) == 1
                      else f"{len(watched)} late or long jobs")
    if any(e.get("kind") == "held" for e in events):  # a hold is no job run: said first
        return f"deployer: host {host} HOLDS its jobs" + "".join("; " + p for p in pieces)
    return f"deployer: {'; '.join(pieces)} on {host}"


def ended(event: dict) -> str:
    """How the run's process ended, for the message: `, exit status 1`, `, signal KILL` or nothing."""
    if event.get("signal"):
        return f", signal {event['signal']}"
    number = exit_number(event)
    return "" if number is None else f", exit status {number}"


def _held_paragraphs(e: dict, escape: Callable[[str], str], named: bool) -> list:
    host = escape(e["host"])
    if e.get("reason"):  # the hold fails closed: the check at boot failed, or the hold file is unreadable
        return ([f"**host {host} HOLDS its jobs**"] if named else []) + [
            f"{escape(e['reason'])} (at {escape(e['since'])}): failing closed, no job runs here until "
            f"`deployer push --host {host}` or `deployer release --host {host}` confirms what it still owns."]
    return ([f"**host {host} HOLDS its jobs**"] if named else []) + [
        f"Its lease ({escape(e['lease'])}) ran out while it was down ({escape(e['down_for'])}, back at "
        f"{escape(e['since'])}): its jobs may run elsewhere now, so none runs here until "
        f"`deployer push --host {host}` or `deployer release --host {host}` confirms what it still owns."]


def format_messages(events: list[dict], escape: Callable[[str], str] = _same) -> list:
    """The messages for `events`: [(title, text)], each text at most MAX_TEXT characters.

    One message with every run's details when there are at most STORM_RUNS runs and they fit.
    A storm (more runs, or too long) is grouped by what happened (each failed run's reason: the
    run's verdict, or systemd's for a killed run), each group counting its runs and naming every
    job; when even that does not fit, the groups go out over several messages, each titled
    "part i of n". No job is ever cut off: an operator must see all of them."""
    title, text = _detailed(events, escape)
    runs = [e for e in events if e.get("kind") != "held"]
    if len(text) <= MAX_TEXT and len(runs) <= STORM_RUNS:
        return [(title, text)]
    if len(events) == 1:  # one run's own lines, too long: the job is named, its lines are cut
        return [(title, text[: MAX_TEXT - 20] + "\n\n(truncated)")]
    groups: dict = {}
    held = []
    for e in events:
        if e.get("kind") == "held":
            held += _held_paragraphs(e, escape, True)
            continue
        groups.setdefault(storm_group(e, escape), {}).setdefault(escape(e["job"]), 0)
        groups[storm_group(e, escape)][escape(e["job"])] += 1
    paragraphs = list(held)
    budget = MAX_TEXT - len(title) - 40  # the title, "part i of n", separators
    for key, jobs in groups.items():
        count = sum(jobs.values())
        paragraphs.append(f"**{key}: {count} run{'s' if count > 1 else ''} of {len(jobs)} "
                          f"job{'s' if len(jobs) > 1 else ''}**")
        names = [name + (f" ({times} runs)" if times > 1 else "") for name, times in jobs.items()]
        line = ""
        for name in names:  # every job named, the list split where a message would overflow
            if line and len(line) + 2 + len(name) > budget:
                paragraphs.append(line)
                line = ""
            line = f"{line}, {name}" if line else name
        paragraphs.append(line)
    host = escape(events[0]["host"])
    paragraphs.append(f"Each run's lines: `deployer status --host {host}`, `deployer logs JOB`")
    chunks, current = [], []
    for paragraph in paragraphs:
        for piece in _pieces(paragraph, budget):  # never cut: a paragraph too long goes on in the next
            if current and sum(len(p) + 2 for p in current) + len(piece) > budget:
                chunks.append(current)
                current = []
            current.append(piece)
    chunks.append(current)
    if len(chunks) == 1:
        return [(title, "\n\n".join([f"**{title}**"] + chunks[0]))]
    titled = [f"{title} (part {i} of {len(chunks)})" for i in range(1, len(chunks) + 1)]
    return [(t, "\n\n".join([f"**{t}**"] + chunk)) for t, chunk in zip(titled, chunks)]


def storm_group(event: dict, escape: Callable[[str], str] = _same) -> str:
    """The group a run is named under in a storm's message: what happened to it. A failed run
    by its reason (as `deployer history` shows it) and how systemd saw it end; a long reason is
    shortened, saying so (the job is still named: `deployer logs JOB` has the whole)."""
    if event.get("kind") == "recovered":
        return "succeeded again"
    if event.get("kind") in WATCH_KINDS:  # late or long (watch.py): what the watcher saw
        return WATCH_VERBS[event["kind"]].lower()
    reason = str(event.get("reason") or event.get("result") or "unknown")
    if len(reason) > REASON_IN_GROUP:
        reason = reason[:REASON_IN_GROUP] + "... (shortened)"
    verb = "FENCED" if exit_number(event) == EXIT_FENCED else "failed"
    return f"{verb}: {escape(reason)} ({escape(str(event.get('result') or 'unknown'))}{escape(ended(event))})"


def _pieces(paragraph: str, budget: int) -> list:
    return [paragraph[i:i + budget] for i in range(0, len(paragraph), budget)] or [""]


class NotSent(Exception):
    def __init__(self, reason: str, retryable: bool = True):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


def _post(url: str, params: dict, body: bytes, headers: dict) -> tuple:
    """POST one alert with `requests` (rare and off the jobs' hot path, and it honours the
    host's proxy settings): the host's trust store, no redirects, a bounded answer."""
    import requests

    try:
        with requests.post(url, params=params, data=body, headers=headers, timeout=DELIVERY_TIMEOUT,
                           verify=trust_store() or True, allow_redirects=False, stream=True) as response:
            return response.status_code, response.raw.read(65536, decode_content=True)
    except requests.exceptions.SSLError as error:
        cause = str(error).rsplit("] ", 1)[-1].rstrip(")'\" ")[:200]
        # A certificate that fails verification fails the same way every time.
        raise NotSent(f"TLS error: {cause}", retryable="CERTIFICATE_VERIFY_FAILED" not in str(error)) from None
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
    escape = CHANNEL_TYPES[channel.type].escape
    return all(_deliver_one(channel, title, text, events, log, sleep)
               for title, text in format_messages(events, escape))


def _deliver_one(channel: Channel, title: str, text: str, events: list, log: Callable[[str], None],
                 sleep: Callable[[float], None]) -> bool:
    for attempt in range(1, DELIVERY_ATTEMPTS + 1):
        outbound = build_outbound(channel, title, text, events, time.time())
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
            if not error.retryable:
                log(f"alert via {channel.name} ({channel.type}): not accepted ({detail}); not retried")
                return False
        log(f"alert via {channel.name} ({channel.type}), attempt {attempt}/{DELIVERY_ATTEMPTS}: "
            f"{'accepted' if ok else 'not accepted'} ({detail})")
        if ok:
            return True
        if attempt < DELIVERY_ATTEMPTS:
            sleep(2.0 * attempt)
    return False


@dataclass(frozen=True)
class InFlight:
    """What of a channel PID 1 has going on now (its cgroups): how many runs of the channel's
    jobs began in a time span and still run, and the processes of the channel's alert units."""

    runs: int = 0
    alert_pids: frozenset = frozenset()


class Coalescer:
    """Per channel, the failures of one moment go out as one message (issue 23 item 3), and at
    most RATE_LIMIT messages per RATE_WINDOW.

    An alert queues its event in `state_dir` and says it is waiting (a file named by its pid).
    One waiting alert at a time is the gatherer (a lock): it sends every queued event as one
    message when the burst is over: no run of the channel's jobs begun with it still running and
    every alert process of the channel waiting (`in_flight`, PID 1's cgroups), GATHER_QUIET after
    the newest event queued and GATHER_SETTLE after anything was last seen in flight, at most
    GATHER_MAX after the first event. The other alerts find theirs sent. So a lone failure goes
    out GATHER_QUIET after its alert queued it, and a storm is one message. Without `in_flight`
    (Kubernetes, tests), only the quiet counts. A failed delivery leaves the events queued for
    the unit's restart (or the next alert) to carry; an alert killed while it waits leaves its
    event queued too. A full disk only loses the queue, never the message in hand: an event
    that cannot be queued is sent at once.
    """

    def __init__(self, state_dir: str, channel: str, now=time.time, sleep=time.sleep,
                 log: Callable[[str], None] = print, quiet: float = GATHER_QUIET,
                 in_flight: Optional[Callable[[float, float], InFlight]] = None, pid: Optional[int] = None):
        self.dir = os.path.join(state_dir, "queue", channel)
        self.sent_log = os.path.join(state_dir, f"{channel}.sent")
        self.failed_log = os.path.join(state_dir, f"{channel}.failed")
        self.waiting_dir = os.path.join(state_dir, "waiting", channel)
        self.lock_path = os.path.join(state_dir, f"{channel}.lock")
        self.gather_path = os.path.join(state_dir, f"{channel}.gather")
        self.in_flight = in_flight
        self.pid = os.getpid() if pid is None else pid
        self.now, self.sleep, self.log, self.quiet = now, sleep, log, quiet
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
            if name.endswith(".tmp") and _stamp(name) < self.now() - ORPHANED_AFTER:
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

    def _failed_lately(self) -> bool:
        """A delivery of this channel failed less than FAILED_PAUSE ago (its events are queued)."""
        try:
            with open(self.failed_log) as handle:
                return float(handle.read().strip() or 0) > self.now() - FAILED_PAUSE
        except (OSError, ValueError):
            return False

    def _record_failure(self, failed: bool) -> None:
        try:
            if failed:
                with open(self.failed_log, "w") as handle:
                    handle.write(f"{self.now():.3f}")
            elif os.path.exists(self.failed_log):
                os.unlink(self.failed_log)
        except OSError:
            pass

    def _wait_mark(self, waiting: bool) -> None:
        """Say (or stop saying) that this alert has queued what it found and only waits."""
        path = os.path.join(self.waiting_dir, str(self.pid))
        with contextlib.suppress(OSError):
            if waiting:
                os.makedirs(self.waiting_dir, exist_ok=True)
                open(path, "w").close()
            else:
                os.unlink(path)

    def _waiting(self) -> set:
        try:
            return {int(name) for name in os.listdir(self.waiting_dir) if name.isdigit()}
        except OSError:
            return set()

    def _busy(self, since: float, until: float) -> str:
        """What of the channel is still in flight ("" when nothing): runs of its jobs begun
        between `since` and `until`, or alert processes not waiting (looking up failures)."""
        if self.in_flight is None:
            return ""
        try:
            seen = self.in_flight(since, until)
        except Exception as error:  # noqa: BLE001 - PID 1's cgroups unreadable: gather by the clock alone
            self.log(f"cannot tell which runs and alerts are in flight ({error}); gathering by time alone")
            self.in_flight = None
            return ""
        waiting = self._waiting()
        for gone in waiting - set(seen.alert_pids) - {self.pid}:  # a killed alert's mark: its pid may come again
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.waiting_dir, str(gone)))
        looking = set(seen.alert_pids) - waiting
        parts = [f"{seen.runs} run(s) of its jobs still running"] if seen.runs else []
        parts += [f"{len(looking)} alert(s) still looking up failures"] if looking else []
        return "; ".join(parts)

    def _locked(self, path: Optional[str] = None, block: bool = True):
        import fcntl

        try:
            handle = open(path or self.lock_path, "a")
        except OSError:
            return None  # no lock on a full disk; concurrent alerts may each send their own
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except OSError:
            handle.close()
            return False
        return handle

    def _gather(self, deadline: float) -> None:
        """As the gatherer: return when the burst of what is queued is over (or at `deadline`)."""
        last_busy, told = 0.0, 0.0
        while True:
            fresh = [_stamp(n) for n in self._queued() if _stamp(n) > self.now() - ORPHANED_AFTER]
            if not fresh or self.quiet <= 0:
                return
            cap = min(min(fresh) + GATHER_MAX, deadline)
            if self.now() >= cap:
                if last_busy:
                    self.log(f"gathered for {GATHER_MAX:.0f} s and still in flight: sending what came")
                return
            busy = self._busy(min(fresh) - STORM_BEFORE, max(fresh))
            if busy:
                last_busy = self.now()
                if self.now() >= told + 10:
                    self.log(f"{len(fresh)} event(s) queued: waiting, {busy}")
                    told = self.now()
            ready = max(max(fresh) + self.quiet, last_busy + GATHER_SETTLE if last_busy else 0.0)
            if not busy and self.now() >= ready:
                return
            self.sleep(max(min(ready - self.now(), GATHER_POLL) if not busy else GATHER_POLL, 0.05))

    def run(self, events, send: Callable[[list], bool], give_up_after: float = 120.0,
            queued=None, take_queued: bool = False) -> bool:
        """Deliver `events` (one event or a list) with every other event queued for the channel,
        once the burst they belong to is over; whether they went out (True when there was
        nothing to send, or another alert sent them). `queued`: the name(s) under which this
        alert already queued them. `take_queued`: kept for the callers (every alert carries the
        whole queue). Less than FAILED_PAUSE after a failed delivery, nobody tries again: the
        alert units' restarts do, one at a time, not every waiting alert in turn."""
        events = [events] if isinstance(events, dict) else list(events)
        queued = [queued] if isinstance(queued, str) else list(queued or [])
        memory: list = []  # events the disk refused: sent at once, never held back
        if events and not queued:
            names = [self.enqueue(event) for event in events]
            if all(names):
                queued = names
            else:
                self._remove([name for name in names if name])
                memory = events
        on_queued = ON_QUEUED.get()
        if on_queued is not None and not memory:
            on_queued()
        deadline = self.now() + give_up_after
        self._wait_mark(True)
        try:
            while True:
                mine = [q for q in queued if os.path.exists(os.path.join(self.dir, q))]
                if queued and not mine:
                    return True  # sent by the gatherer, in the message of its burst
                if not memory and not self._queued():
                    return True
                if self._failed_lately() and not memory:
                    return False  # the channel just failed a batch: a restart sends it (RestartSec=)
                gatherer = self._locked(self.gather_path, block=False) if not memory else None
                if gatherer is False:  # another alert gathers: it sends ours too
                    if self.now() > deadline:
                        return False
                    self.sleep(GATHER_POLL * 2)
                    continue
                try:
                    if not memory:
                        self._gather(deadline)
                    return self._send(send, memory, bool(queued))
                finally:
                    if gatherer:
                        gatherer.close()
        finally:
            self._wait_mark(False)

    def _send(self, send: Callable[[list], bool], memory: list, mine: bool) -> bool:
        """Send everything queued (and `memory`) as one message, within the rate limit (waiting
        for the window when it is reached and this alert has events of its own)."""
        while True:
            lock = self._locked()
            try:
                recent = self._recent_sends()
                if len(recent) < RATE_LIMIT:
                    names = self._queued()
                    carried, loaded = self._load(names)
                    if not carried + memory:
                        return True
                    if names:  # how long the oldest waited: what an operator's alert was held back
                        self.log(f"{len(carried + memory)} event(s) in one message, the oldest queued "
                                 f"{self.now() - min(map(_stamp, names)):.1f} s ago")
                    if not send(carried + memory):
                        self._record_failure(True)
                        return False
                    self._record_failure(False)
                    self._remove(loaded)
                    self._record_send(recent)
                    return True
                if not mine and not memory:
                    return False  # only others' events, and the channel is busy: a later alert
                wait = min(recent) + RATE_WINDOW - self.now()
            finally:
                if lock:
                    lock.close()
            self.sleep(max(wait, 0.05))


def _stamp(name: str) -> float:
    """When a queued event was queued (its file name begins with it)."""
    try:
        return float(name.split("-", 1)[0])
    except ValueError:
        return 0.0


# -- which runs failed: systemd's own record in the journal --------------------------------------
# PID 1 logs "Failed with result '...'" (UNIT=, INVOCATION_ID=, UNIT_RESULT=) for every failed
# run, and "Main process exited" (EXIT_CODE=, EXIT_STATUS=) for every run. Only PID 1 can write
# entries with _PID=1, so no local user can forge (or hide) a failure.
# A job's lookups read the journal after the cursor of the last failure reported: the journal's
# order, which a clock stepped back does not change (a watermark in wall time lost every failure
# after a step back). Without a cursor yet (the first time; a state written before cursors), runs
# are looked up from this long before the watermark and recognised by invocation id.
SEEN_MARGIN = 120.0
# The invocation ids a job's state keeps (the newest): enough for every run a lookup can find
# twice (one reported before journald had it; the margin of a lookup by time).
SEEN_IDS = 500
# After sending, look again this many times (failures that came in meanwhile go out now).
ROUNDS = 5
# A sweep that finds nothing looks once more after this long (journald lag).
JOURNAL_LAG = 1.0
# How long a run's account waits for journald to catch up (the alert's reason).
ACCOUNT_WAIT = 60.0
# The barrier's pauses between reads: 0.5 s, doubling to 4 s. A storm's hundred alerts each
# reading the journal every 0.5 s were themselves most of the load that kept journald behind
# (each read a journalctl process, tens of ms of CPU, on a 2-core host).
BARRIER_FIRST_PAUSE = 0.5
BARRIER_LAST_PAUSE = 4.0


@dataclass(frozen=True)
class Seen:
    """Per job, what its alerts have already taken care of: the cursor of the last failure
    reported, a watermark (microseconds) for a lookup without one, and the invocation ids of the
    runs reported last."""

    watermark: int
    ids: tuple = ()  # ((invocation, realtime), ...), oldest first
    cursor: str = ""

    def new(self, runs: list, floor: int = 0) -> list:
        known = {i for i, _ in self.ids}
        return [r for r in runs if r.invocation not in known and r.realtime >= floor]

    def since(self) -> float:
        """Where a lookup without a cursor starts (epoch seconds)."""
        return self.watermark / 1e6 - SEEN_MARGIN

    def add(self, runs: list) -> "Seen":
        """`runs` (in the journal's order; one reported before journald had it has no cursor)."""
        watermark = max([self.watermark] + [r.realtime for r in runs])
        cursor = next((r.cursor for r in reversed(runs) if r.cursor), self.cursor)
        ids = dict(self.ids)
        for run in runs:  # re-inserted: the newest last
            ids.pop(run.invocation, None)
            ids[run.invocation] = run.realtime
        return Seen(watermark, tuple(ids.items())[-SEEN_IDS:], cursor)


def spare_path(path: str) -> Optional[str]:
    """Where `path` (a job's seen state) goes when the state directory is full: the unit's
    RuntimeDirectory= (memory, kept until boot); None outside a unit that has one."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return os.path.join(runtime, "seen", os.path.basename(path)) if runtime else None


def load_seen(path: str) -> Optional[Seen]:
    """The newer of the job's seen state and its spare (written while the disk was full)."""
    found = [seen for seen in (_read_seen(path), _read_seen(spare_path(path))) if seen is not None]
    return max(found, key=lambda seen: seen.watermark) if found else None


def _read_seen(path: Optional[str]) -> Optional[Seen]:
    try:
        with open(path) as handle:
            data = json.load(handle)
        return Seen(int(data["watermark"]), tuple((str(i), int(t)) for i, t in data["ids"]),
                    str(data.get("cursor", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_seen(path: str, seen: Seen) -> None:
    """On the state directory; when it is full, on the spare (else the sweep and every restart
    would find the runs just reported and send them again, every RestartSec=)."""
    for target in (path, spare_path(path)):
        if target and _write_seen(target, seen):
            return


def _write_seen(path: str, seen: Seen) -> bool:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as handle:
            json.dump({"watermark": seen.watermark, "ids": [list(x) for x in seen.ids], "cursor": seen.cursor}, handle)
        os.rename(path + ".tmp", path)
        return True
    except OSError:
        try:
            os.unlink(path + ".tmp")
        except OSError:
            pass
        return False


def lookup(find, unit: str, seen: Seen) -> list:
    """The failed runs of `unit` that `seen` may not have taken care of yet."""
    return find(unit, after=seen.cursor) if seen.cursor else find(unit, since=seen.since())


def find_failed_runs(unit: Optional[str], since: Optional[float] = None, boot: Optional[str] = None,
                     after: str = "") -> list:
    """PID 1's failed runs of `unit` (journal.journal_failed_runs), read through the host boundary."""
    return journal_failed_runs(_systemd(), unit, since, boot, after)


def account_of(invocation: str, fallback: str, wait: Optional[float] = None) -> RunAccount:
    """The failed run's account. When the journal has neither the run's record nor PID 1's
    "Failed with result" (journald is behind: under a storm's load by tens of seconds), the alert
    waits until journald has caught up with it (journal_barrier, at most `wait`) and reads again:
    else a storm's runs would be grouped by systemd's result, not by the reason each gave."""
    account = run_account(_systemd(), invocation, MAX_LINES, fallback)
    wait = ACCOUNT_WAIT if wait is None else wait
    if account.complete or not invocation or wait <= 0 or not journal_barrier(wait):
        return account
    return run_account(_systemd(), invocation, MAX_LINES, fallback)


def journal_barrier(wait: float, socket_path: str = paths.JOURNAL_SOCKET, sleep=time.sleep) -> bool:
    """Send journald an entry and wait until journalctl reads it back (at most `wait`): journald
    takes the native socket's entries in order, so every entry sent before it (the run's record,
    PID 1's "Failed with result") is readable then. False: no journal to ask, or not in time."""
    from deployer.contract.record import encode

    token = uuid.uuid4().hex
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
            sink.sendto(encode({"MESSAGE": "waiting for the journal to catch up", "SYSLOG_IDENTIFIER": "deployer-alert",
                                "DEPLOYER_ALERT_BARRIER": token}), socket_path)
    except OSError:
        return False
    deadline = time.monotonic() + wait
    pause = BARRIER_FIRST_PAUSE
    while True:
        if _systemd().journal_entries([f"DEPLOYER_ALERT_BARRIER={token}"], limit=1):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sleep(min(pause, left))
        pause = min(pause * 2, BARRIER_LAST_PAUSE)


def _systemd():
    from deployer.host.systemctl import Systemd  # every journalctl call of the host programs goes through it

    return Systemd()


def monitored_run(job: str) -> Optional[FailedRun]:
    """The run an OnFailure= start names in $MONITOR_* (None for a sweep or a boot). A Restart= of
    the unit gets the first start's $MONITOR_* again (systemd 252): the run is queued by then."""
    invocation = os.environ.get("MONITOR_INVOCATION_ID", "")
    if not invocation:
        return None
    return FailedRun(paths.job_unit(job, "service"), invocation, os.environ.get("MONITOR_SERVICE_RESULT", "unknown"),
                     os.environ.get("MONITOR_EXIT_STATUS", "?"), int(time.time() * 1e6),
                     exit_code=os.environ.get("MONITOR_EXIT_CODE", ""))


def failed_event(*, job: str, host: str, slot: Optional[str], reason: str, method: str, url: str, result: str,
                 exit_status: Optional[int], signal: Optional[str], time: str, invocation: str,
                 lines: "list[str]") -> dict:
    """A failed run as an alert event: every field, typed as the webhook document has it
    (docs/alerts.md). The one place an event of kind "failed" is made."""
    return {"kind": "failed", "job": job, "host": host, "slot": slot, "reason": reason, "method": method,
            "url": url, "result": result, "exit_status": exit_status, "signal": signal, "time": time,
            "invocation": invocation, "lines": list(lines)}


def with_exit_of(run: FailedRun, monitored: Optional[FailedRun]) -> FailedRun:
    """`run` as the journal has it, with how it ended from $MONITOR_* when the journal lacks its
    "Main process exited" entry and $MONITOR_* names the same run. PID 1 gives up on a journal
    entry it cannot send within 10 ms (systemd's log.c), so under a storm's load some of its
    entries are lost; PID 1 hands $MONITOR_* to the unit it starts, which loses nothing."""
    if monitored is None or run.invocation != monitored.invocation or run.exit_status != "?":
        return run
    return replace(run, exit_status=monitored.exit_status, exit_code=monitored.exit_code)


def failed_run_event(job: str, host: str, run: Optional[FailedRun] = None) -> dict:
    """One failed run as an alert event: its record's slot and reason (PID 1's for a run that
    wrote none), how systemd saw it end, and the run's own last lines."""
    monitored = monitored_run(job)
    run = with_exit_of(run or monitored or FailedRun(paths.job_unit(job, "service"), "", "unknown", "?",
                                                     int(time.time() * 1e6)), monitored)
    method, url = job_request(job)
    account = account_of(run.invocation, run.result)
    return failed_event(job=job, host=host, slot=account.slot, reason=account.reason, method=method, url=url,
                        result=run.result, exit_status=run.exit_number, signal=run.signal,
                        time=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(run.realtime / 1e6)),
                        invocation=run.invocation, lines=list(account.lines))


def job_request(job: str) -> tuple[str, str]:
    """METHOD and URL of a job, from the X-Deployer-Request= line the renderer wrote for us."""
    request = unitkeys.REQUEST.read_unit(paths.job_unit(job, "service"))
    return request.method, request.url


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


@contextlib.contextmanager
def job_lock(state: str, job: str):
    """One alert program per job at a time reads and writes its state (seen runs, streak):
    a run is claimed once, and a recovery never interleaves with a failure's count."""
    import fcntl

    path = os.path.join(state, "seen", job + ".lock")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = open(path, "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError:
        lock = None
    try:
        yield
    finally:
        if lock:
            lock.close()


@dataclass(frozen=True)
class Streak:
    """A job's failed runs in a row, since its last success (the alert policy counts them)."""

    failures: int = 0
    since: float = 0.0    # when the first of them was reported (unix time)
    alerted: float = 0.0  # when the last alert of the streak went out; 0: none yet


def load_streak(state: str, job: str) -> Optional[Streak]:
    try:
        with open(os.path.join(state, "streak", job)) as handle:
            data = json.load(handle)
        return Streak(int(data["failures"]), float(data["since"]), float(data["alerted"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_streak(state: str, job: str, streak: Optional[Streak]) -> None:
    """Best effort: a full disk loses the count (the next failure starts a new streak)."""
    path = os.path.join(state, "streak", job)
    try:
        if streak is None:
            if os.path.exists(path):
                os.unlink(path)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as handle:
            json.dump({"failures": streak.failures, "since": streak.since, "alerted": streak.alerted}, handle)
        os.rename(path + ".tmp", path)
    except OSError:
        with contextlib.suppress(OSError):  # a full disk leaves no empty .tmp behind
            os.unlink(path + ".tmp")


def job_policy(job: str) -> AlertPolicy:
    """The job's alert policy, from the line the renderer wrote into its unit (none: the default)."""
    return unitkeys.ALERT_POLICY.read_unit(paths.job_unit(job, "service"))


def apply_policy(state: str, job: str, policy: AlertPolicy, events: list, log: Callable[[str], None],
                 now: Callable[[], float] = time.time) -> list:
    """Count `events` (the job's newly found failed runs) into its streak; the events to send
    now: all of them, annotated with the streak, or none (below alert_after, or already
    alerted and no reminder due). Called under job_lock."""
    if not events:
        return events
    moment = now()
    streak = load_streak(state, job) or Streak(since=moment)
    streak = replace(streak, failures=streak.failures + len(events))
    send = policy.decide(streak.failures, streak.alerted, len(events), moment)
    if send:
        streak = replace(streak, alerted=moment)
    save_streak(state, job, streak)
    if not send:
        why = (f"alert_after = {policy.after}" if not streak.alerted else
               f"alerted at {time.strftime('%H:%M:%S', time.gmtime(streak.alerted))} UTC, alert_repeat = "
               + (policy.repeat if isinstance(policy.repeat, str) else duration_text(float(policy.repeat))))
        log(f"job {job}: {streak.failures} failed run(s) in a row; no alert now ({why})")
        return []
    if policy == AlertPolicy():
        return events  # the default: every failed run alerts, as its own message says
    return [dict(e, failed_runs=streak.failures, failing_for=duration_text(moment - streak.since)) for e in events]


def report_failures(job: str, host_name: str, state: str, send_events: Callable[..., bool],
                    log: Callable[[str], None], monitored: Optional[FailedRun] = None, sweep: bool = False,
                    take_queued: bool = False, find=find_failed_runs, sleep=time.sleep) -> bool:
    """Report every failed run of `job` that no alert has reported yet (systemd merges an
    OnFailure= start into an alert still running for the same job, so $MONITOR_* may name only
    one of several). Then look again, until nothing new: a failure during the send goes out now.

    The first time for a job: the monitored run and later ones, or without one (a sweep at boot)
    those of the previous and the current boot; never older history. `sweep`: also look once
    more after JOURNAL_LAG when nothing is found. Whether everything went out (or was queued and
    `send_events` said so)."""
    unit = paths.job_unit(job, "service")
    seen_path = os.path.join(state, "seen", job)
    with job_lock(state, job):
        return _report_failures(job, host_name, seen_path, unit, send_events, log, monitored, sweep, take_queued,
                                find, sleep)


def _report_failures(job, host_name, seen_path, unit, send_events, log, monitored, sweep, take_queued, find, sleep):
    seen, floor = load_seen(seen_path), 0
    if seen is None:
        if monitored:
            found = find(unit, since=monitored.realtime / 1e6 - SEEN_MARGIN)
            floor = next((r.realtime for r in found if r.invocation == monitored.invocation), monitored.realtime)
            seen = Seen(floor).add([r for r in found if r.realtime < floor])
        else:
            found = find(unit, boot="-1") + find(unit, boot="0")
            seen = Seen(int(time.time() * 1e6))
    else:
        found = lookup(find, unit, seen)
    pending = [monitored] if monitored and monitored.invocation not in {r.invocation for r in found} else []
    delivered = True
    for round_ in range(ROUNDS):
        runs = seen.new(found, floor) + seen.new(pending)
        pending = []
        if not runs and sweep and round_ == 0:
            sleep(JOURNAL_LAG)
            runs = seen.new(lookup(find, unit, seen), floor)
        if not runs and not take_queued:
            break
        if runs:
            log(f"job {job}: {len(runs)} failed run(s) to report: "
                + ", ".join(f"{r.invocation or '?'} ({r.result})" for r in runs))
        marked = seen.add(runs)
        token = ON_QUEUED.set(lambda: save_seen(seen_path, marked))
        try:
            delivered = send_events([failed_run_event(job, host_name, r) for r in runs], take_queued) and delivered
        finally:
            ON_QUEUED.reset(token)
        seen = marked
        save_seen(seen_path, seen)
        take_queued = False
        if not runs:
            break
        found = lookup(find, unit, seen)
    save_seen(seen_path, seen)
    return delivered


def boot_jobs(channel: str, find=find_failed_runs) -> list:
    """The jobs alerting via `channel` that failed in the previous boot or this one (a run the
    shutdown interrupted ends there, and its OnFailure= start was refused by the shutdown)."""
    units = {r.unit for r in find(None, boot="-1") + find(None, boot="0")}
    jobs = []
    for unit in sorted(units):
        job = paths.job_of_unit(unit)
        if job and unit.endswith(".service") and channel_of(job) == channel:
            jobs.append(job)
    return jobs


def held_events(host_name: str, state: str, channel: str, held_path: str = paths.HELD,
                held_run: str = paths.HELD_RUN) -> list:
    """The hold that the boot found (agent --hold-at-boot), once per hold and channel: the boot
    it began at is noted in the channel's state. A boot check that failed holds too (fail closed):
    its hold is in `held_run` (/run) when `held_path` could not be written. Read as the agent
    reads them (state.read_held_file)."""
    held = since = None
    for path in (held_path, held_run):
        try:
            held = read_held_file(path, path, "the hold", "")
        except (Corrupt, OSError) as error:  # it holds all the same: alerted once per boot
            why = error.detail if isinstance(error, Corrupt) else error.strerror
            held, since = Held(reason=f"{path} is unreadable ({why})"), boot_id()
        if held is not None:
            since = since or held.since or boot_id()
            break
    if held is None:
        return []
    noted = os.path.join(state, "held-alerted." + channel)
    try:
        with open(noted, encoding="utf-8") as handle:
            if handle.read().strip() == since:
                return []
    except OSError:
        pass
    try:
        with open(noted, "w", encoding="utf-8") as handle:
            handle.write(since)
    except OSError:
        pass
    return [{"kind": "held", "host": host_name, "since": since, "time": now_text(),
             "down_for": duration_text(held.down_for_seconds), "lease": duration_text(held.lease_seconds),
             "reason": held.reason}]


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown boot"


CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_tree(root: str, top: str) -> str:
    """`top` (a slice) in the cgroup tree systemd keeps: cgroup v2, or the unified/ or systemd/
    hierarchy of v1/hybrid (e.g. in a container of an older host)."""
    found = [os.path.join(root, sub, top) for sub in ("", "unified", "systemd")]
    return next((path for path in found if os.path.isdir(path)), found[0])


def runs_in_flight(root: str = CGROUP_ROOT) -> dict:
    """{job service: when its run began} for every job run going on now: its cgroup in the jobs'
    slice exists from its start until it has ended (PID 1's own state, readable by the alert's
    user; the journal lags behind by many seconds under a storm's load)."""
    import glob

    top = _cgroup_tree(root, paths.JOBS_SLICE.rsplit("-", 1)[0] + ".slice")  # deployer-jobs.slice is in deployer.slice
    running = {}
    for path in glob.glob(os.path.join(top, "**", paths.UNIT_PREFIX + "*.service"), recursive=True):
        unit = os.path.basename(path)
        if paths.job_of_unit(unit):
            with contextlib.suppress(OSError):
                running[unit] = os.stat(path).st_ctime
    return running


def alert_processes(channel: str, root: str = CGROUP_ROOT) -> set:
    """The processes of `channel`'s failure and boot alert units, from their cgroups: an alert
    unit started by PID 1 has its cgroup before its program has read anything. Not the recovery
    units: one starts (its ExecCondition= at least) after every successful run, and on a channel
    whose jobs succeed every few seconds they would hold a lone failure for GATHER_MAX."""
    import glob

    top = _cgroup_tree(root, "system.slice")
    units = (paths.alert_template(channel), paths.boot_alert_unit(channel, "service"))
    pids: set = set()
    for unit in units:
        for path in glob.glob(os.path.join(top, "*", unit.replace("@.service", "@*.service"), "cgroup.procs")):
            with contextlib.suppress(OSError, ValueError):
                with open(path, encoding="ascii") as handle:
                    pids.update(int(line) for line in handle if line.strip())
    return pids


def channel_in_flight(channel: str, since: float, until: float, runs=runs_in_flight,
                      alerts=alert_processes, channel_of=None) -> InFlight:
    """What of `channel` is in flight: its jobs' runs begun between `since` and `until`, and its
    alert units' processes (Coalescer's `in_flight`)."""
    channel_of = channel_of or _channel_of_cached
    began = [t for unit, t in runs().items()
             if since <= t <= until and channel_of(paths.job_of_unit(unit)) == channel]
    return InFlight(len(began), frozenset(alerts(channel)))


_CHANNELS: dict = {}


def _channel_of_cached(job: str) -> str:
    if job not in _CHANNELS:
        _CHANNELS[job] = channel_of(job)
    return _CHANNELS[job]


def channel_of(job: str) -> str:
    """The alert channel of a job, from its unit's OnFailure= (rendered by the deployer)."""
    return unitkeys.alert_channel(unitkeys.unit_text(paths.job_unit(job, "service")))


# The journal fields of a test's answer: the agent reads them from the test unit's invocation.
TEST_FIELDS = ("DEPLOYER_ALERT_TEST", "DEPLOYER_ALERT_ACCEPTED", "DEPLOYER_ALERT_HTTP_STATUS",
               "DEPLOYER_ALERT_ANSWER")


def test_message(channel: Channel, host_name: str) -> tuple:
    """(title, text, event) of `deployer alert test`: says it is a test, and where it came from."""
    escape = CHANNEL_TYPES[channel.type].escape
    title = f"deployer: test message via {escape(channel.name)} from {escape(host_name)}"
    text = (f"**{title}**\n\nSent by `deployer alert test` through host {escape(host_name)}, as a failed "
            f"job's alert would be (same credentials, proxy and signing). No job failed.")
    return title, text, {"kind": "test", "host": host_name, "time": now_text()}


def test_send(channel: Channel, host_name: str, now: Callable[[], float] = time.time) -> tuple:
    """One attempt, no queue and no retry: what the channel answers is the point.
    -> (accepted, HTTP status or None when no answer came, what it answered)."""
    title, text, event = test_message(channel, host_name)
    outbound = build_outbound(channel, title, text, [event], now())
    try:
        status, body = _post(outbound.url, outbound.params, json.dumps(outbound.json).encode(), {
            "Content-Type": "application/json", "User-Agent": "deployer-alert/1", **outbound.headers})
    except NotSent as error:
        return False, None, error.reason
    ok, detail = outbound.accepted(status, body)
    said = " ".join(body[:200].decode("utf-8", "replace").split())
    if status >= 300 and said:  # the code alone hides why (Slack: 403 invalid_token)
        detail = f"{detail}: {said}"
    return ok, status, detail


def test_main(channel: Channel, host_name: str, journal: str = paths.JOURNAL_SOCKET) -> bool:
    """What the channel's alert unit runs as instance ALERT_TEST_INSTANCE: send a test message,
    log the answer, and leave it in the journal for the agent. True even when refused: the
    unit's Restart=on-failure must not send the test again."""
    from deployer.contract.record import encode

    accepted, status, detail = test_send(channel, host_name)
    verdict = "accepted" if accepted else "not accepted"
    line = f"alert test via {channel.name} ({channel.type}): {verdict} ({detail})"
    print(line, flush=True)
    fields = dict(zip(TEST_FIELDS, (channel.name, "y" if accepted else "n",
                                    "" if status is None else str(status), detail)))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
            sink.sendto(encode({"MESSAGE": line, "SYSLOG_IDENTIFIER": "deployer-alert", **fields}), journal)
    except OSError as error:
        print(f"alert test: cannot write the answer to the journal ({error})", flush=True)
    return True


def recovered_event(job: str, host_name: str, streak: Optional[Streak], now: float) -> dict:
    """The job succeeded again; with its streak (none: one noted before streaks were counted)."""
    event = {"kind": "recovered", "job": job, "host": host_name, "time": now_text()}
    if streak is not None and streak.failures:
        event.update(failed_runs=streak.failures, failing_for=duration_text(now - streak.since))
    return event


def alert_main(job: str, host_name: str, channel: Channel, recovered: bool, mode: str = "") -> bool:
    """What the alert units run; whether the message went out (or was not needed).

    mode "": an OnFailure= start ($MONITOR_*) or the unit's Restart= (the same $MONITOR_*, a run
    queued already: it sends what an earlier attempt queued); "sweep": the unit's ExecStopPost= (failures whose start
    systemd merged into this run); "boot": every job of the channel, once at boot."""
    if job == paths.ALERT_TEST_INSTANCE:
        return True if mode == "sweep" else test_main(channel, host_name)
    log = lambda line: print(line, flush=True)  # noqa: E731
    state = os.environ.get("STATE_DIRECTORY") or "/tmp"
    # A failure or a recovery waits while others of its channel are in flight (a storm is one message).
    coalescer = Coalescer(state, channel.name, log=log,
                          in_flight=lambda since, until: channel_in_flight(channel.name, since, until))
    return _alert(job, host_name, channel, recovered, mode, state, coalescer, log)


def _alert(job: str, host_name: str, channel: Channel, recovered: bool, mode: str, state: str,
           coalescer: "Coalescer", log: Callable[[str], None]) -> bool:
    """alert_main's work, with the channel's coalescer."""

    def send(events: list, take_queued: bool = False) -> bool:
        delivered = coalescer.run(events, lambda batch: deliver(channel, batch, log=log), take_queued=take_queued)
        if not delivered:
            log("alert not delivered; it stays queued and goes out when this unit restarts")
        return delivered

    if recovered:
        failing = os.path.join(state, "failing", job)
        if not os.path.exists(failing):
            return True
        if account_of(os.environ.get("MONITOR_INVOCATION_ID", ""), "", wait=0).reason.startswith("skipped: "):
            log(f"job {job}: a skipped slot (catch_up) called nothing: it is no recovery")
            return True
        with job_lock(state, job):
            streak = load_streak(state, job)
            save_streak(state, job, None)
            mark(failing, False)
        if streak is not None and not streak.alerted:
            log(f"job {job} succeeded after {streak.failures} failed run(s) in a row, none of them alerted "
                f"(alert_after = {job_policy(job).after}): no recovery message")
            return True
        log(f"job {job} succeeded after failing; telling {channel.name}")
        return send([recovered_event(job, host_name, streak, time.time())])

    def report(name: str, deliver_now: Callable[..., bool] = send, **how) -> bool:
        policy = job_policy(name)

        def send_and_mark(events: list, take_queued: bool) -> bool:
            if events:  # every failed run: the next success ends the streak
                mark(os.path.join(state, "failing", name), True)
            return deliver_now(apply_policy(state, name, policy, events, log), take_queued)

        return report_failures(name, host_name, state, send_and_mark, log, **how)

    if mode == "boot":
        # Every job's interrupted runs and the hold: one message (a storm), not one per job.
        found: list = []
        collect = lambda events, take_queued=False: found.extend(events) or True  # noqa: E731
        for name in boot_jobs(channel.name):
            report(name, collect)
        return send(found + held_events(host_name, state, channel.name), take_queued=True)
    if mode == "sweep":
        # ExecStopPost= cannot read the unit's credentials (v252: permission denied): queue what
        # it finds and fail, so that the restart (RestartSec=) sends it.
        policy = job_policy(job)

        def queue(events: list, take_queued: bool) -> bool:
            if events:
                mark(os.path.join(state, "failing", job), True)
            alerting = apply_policy(state, job, policy, events, log)
            for event in alerting:
                coalescer.enqueue(event)
            return not alerting

        return report_failures(job, host_name, state, queue, log, sweep=True)
    monitored = monitored_run(job)
    return report(job, monitored=monitored, take_queued=True)
