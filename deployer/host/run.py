"""One run of a job: the request, judged by the rules, retried within the job's timeout."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Optional

from deployer.contract.options import IDEMPOTENT_METHODS, JOB_OPTIONS, redact_url
from deployer.contract.record import RunRecord
from deployer.contract.rules import Verdict, judge, parse_expect_json, parse_expect_status
from deployer.contract.text import Masker, run_masker
from deployer.host import http
from deployer.host.http import HttpError as TransportError  # noqa: F401 - .reason, .retryable
from deployer.host.http import Response
from deployer.host.slot import Slot, iso_utc, stopped_by_operator

BODY_EXCERPT = 200
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The most of a response body a run reads: enough for any verdict, never the host's memory.
MAX_BODY = 1 << 20
# A heartbeat ping gets this long in all, and never holds up or fails the job.
PING_BUDGET = 3.0
# While a request is outstanding the run says so this often (a line to its journal, which
# `deployer run` streams): a 90 s attempt must not look like a hung command.
WAITING_EVERY = 30.0


def trust_store() -> Optional[str]:
    """The host's CA bundle (what curl and the jobs' services trust), for jobs, alerts and pings."""
    return SYSTEM_CA_BUNDLE if os.path.exists(SYSTEM_CA_BUNDLE) else None


def request(method: str, url: str, headers: dict, timeout: tuple, body: bytes = b"",
            max_body: int = MAX_BODY, ca_file: Optional[str] = None,
            client_cert: Optional[tuple] = None) -> Response:
    """One HTTP request with the standard-library client (host/http.py): never follows a
    redirect, verifies TLS against the host's trust store (or `ca_file`), reads at most
    `max_body` bytes of the answer, and holds the whole read to one deadline."""
    cert, key = client_cert or (None, None)
    try:
        return http.request(method, url, headers=headers, body=body, timeout=timeout,
                            ca_file=ca_file or trust_store(), client_cert=cert, client_key=key,
                            max_body=max_body)
    except ValueError as error:
        raise TransportError(f"cannot send: {error}", retryable=False) from None


def excerpt(body: bytes, hide: Masker = Masker()) -> str:
    """The start of a body for a log line, its secrets masked before it is cut (a cut must not
    leave a secret's first half behind)."""
    text = " ".join(body[:BODY_EXCERPT + 4096].decode("utf-8", "replace").split())
    text = hide(text)
    return text[:BODY_EXCERPT] + ("..." if len(text) > BODY_EXCERPT or len(body) > BODY_EXCERPT + 4096 else "")


class RunTimeout(Exception):
    pass


# What the trigger takes beside the job's options: declared here alone (the options are JOB_OPTIONS').
SPEC_EXTRAS = (
    # seconds: X-Deployer-Scheduled-At of a manual run is its start floored to this
    ("resolution", int, field(default=60)),
    ("calendar", tuple, field(default=())),  # the timer's OnCalendar= lines: the slot a run is for comes from them
    ("epoch", int, field(default=0)),  # X-Deployer-Epoch: grows whenever the job's owner changes (the fence)
)
# The options that reach a run: an argument of the trigger (`flag`) or a credential (never on the
# command line). A file's option (ca_file, client_cert, client_key) holds the credential's path.
SPEC_OPTIONS = tuple(o for o in JOB_OPTIONS if o.flag or o.credential)


def _spec_fields() -> list:
    required = [o for o in SPEC_OPTIONS if o.required]
    return ([("name", str)] + [(o.dest, Any) for o in required]
            + [(o.dest, Any, field(default=o.default)) for o in SPEC_OPTIONS if not o.required] + list(SPEC_EXTRAS))


# What the trigger was asked to do: its name, a field per option of SPEC_OPTIONS with the option's
# default (the trigger's argument parser has the same: one default per option), and SPEC_EXTRAS.
# Made in this module ("__module__"), not in `types`: its generated code is compiled once per
# machine as every class of ours (contract/process.py).
JobSpec = make_dataclass("JobSpec", _spec_fields(), frozen=True, namespace={"__module__": __name__})
JobSpec.__doc__ = "What the trigger was asked to do (its arguments and credentials; see options.JOB_OPTIONS)."


def job_spec(name: str, values: dict, **extras) -> "JobSpec":
    """A JobSpec from option values by dest (the trigger's parsed arguments and credentials; other
    keys are ignored) and SPEC_EXTRAS; what is not given keeps its default."""
    known = {o.dest for o in SPEC_OPTIONS}
    return JobSpec(name=name, **{k: v for k, v in values.items() if k in known}, **extras)


def wire_target(url: str) -> str:
    """The request target exactly as it goes on the request line (path and query, non-ASCII
    percent-encoded): what a service sees, so what is signed."""
    return http.parse_url(url).path


def _hmac(secret: str, lines) -> str:
    import hashlib
    import hmac

    return hmac.new(secret.encode(), "\n".join(lines).encode(), hashlib.sha256).hexdigest()


def _body_hash(body: bytes) -> str:
    import hashlib

    return hashlib.sha256(body).hexdigest()


def sign(secret: str, method: str, url: str, timestamp: int, run_id: str, body: bytes) -> str:
    """`v1=` + hex HMAC-SHA256 over method, path with query, timestamp, run id and the body's
    SHA-256, one per line (docs/signing.md shows the service's ten-line check)."""
    return "v1=" + _hmac(secret, (method, wire_target(url), str(timestamp), run_id, _body_hash(body)))


def sign_v2(secret: str, method: str, url: str, timestamp: int, run_id: str, job: str, key: str, epoch: int,
            body: bytes) -> str:
    """`v2=` + hex HMAC-SHA256 over "v2", method, target, timestamp, run id, job, Idempotency-Key,
    epoch and the body's SHA-256, one per line (docs/receiving.md): a changed job, slot or
    epoch breaks it, so a service may key and fence on them."""
    return "v2=" + _hmac(secret, ("v2", method, wire_target(url), str(timestamp), run_id, job, key, str(epoch),
                                  _body_hash(body)))


def slot_of(now: float, resolution: int) -> int:
    """A manual run's legacy X-Deployer-Scheduled-At: its start floored to the schedule's resolution."""
    return int(now - (now % max(resolution, 1)))


def scheduled_at(now: float, resolution: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(slot_of(now, resolution)))


INTERRUPTED = "interrupted: SIGTERM, the host is shutting down or the run was stopped"
STOPPED = "stopped: `deployer stop` ended the run"


def interruption(job: str, run: str) -> tuple:
    """A SIGTERM's reason, and whether the run may be resumed at the next boot (a shutdown's
    may; one `deployer stop` ended may not). -> (reason, resumable)"""
    return (STOPPED, False) if stopped_by_operator(job, run) else (INTERRUPTED, True)
NOT_RESENT = ("not retried: the service may have started it "
              "(set idempotent = true once it dedupes on Idempotency-Key)")
# The most a poll waits between two looks (poll_every grows to it), unless Retry-After says more.
MAX_POLL_EVERY = 60.0


class Interrupted(BaseException):
    """SIGTERM during a run (BaseException: no `except Exception` on the way swallows it)."""


@dataclass(frozen=True)
class RunResult:
    """How a run went: the verdict of its last attempt and what the record needs."""

    ok: bool
    reason: str
    run_id: str
    slot: int
    started: float  # unix seconds
    duration: float
    attempts: int
    http_status: Optional[int] = None
    interrupted: bool = False
    fenced: bool = False
    key: str = ""
    epoch: int = 0
    reached: tuple = ()  # per attempt: may the service have seen it?
    resume: bool = False  # interrupted, and the same key may be sent again after boot
    after: str = ""  # a chained run: why it ran (Slot.after)

    @property
    def result(self) -> str:
        return "ok" if self.ok else "fenced" if self.fenced else "failed"

    def record(self, job: str, params: str = "", by: str = "") -> RunRecord:
        return RunRecord(job=job, run=self.run_id, slot=self.slot, started=self.started,
                         duration=self.duration, attempts=self.attempts, result=self.result, reason=self.reason,
                         http_status=self.http_status, key=self.key, epoch=self.epoch, reached=self.reached,
                         resume=self.resume, params=params, by=by, after=self.after)


def current_run_id() -> str:
    return os.environ.get("INVOCATION_ID") or uuid.uuid4().hex


def may_resend(spec: JobSpec) -> bool:
    """May a request the service may already be executing be sent again?"""
    return spec.idempotent or spec.method in IDEMPOTENT_METHODS


def retry_after(response: Optional[Response], default: float) -> float:
    """The answer's Retry-After in seconds (delta form; an HTTP date counts from now), else `default`."""
    text = response.header("retry-after").strip() if response is not None else ""
    if text.isdigit():
        return float(text)
    if text:
        from email.utils import parsedate_to_datetime

        try:
            return max(parsedate_to_datetime(text).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            pass
    return default


def fence_epoch(response: Response) -> Optional[int]:
    """The epoch a 409 says the service holds, when the 409 is a fence (docs/receiving.md)."""
    text = response.header("x-deployer-epoch").strip() if response.status == 409 else ""
    return int(text) if text.isdigit() else None


class _Caller:
    """Sends one job's requests: the run's headers on every attempt and poll, each signed anew."""

    def __init__(self, spec: JobSpec, run: str, key: str, slot: Slot, legacy_slot: int,
                 log: Callable[[str], None] = lambda line: None, waiting_every: float = WAITING_EVERY):
        self.spec, self.run, self.key = spec, run, key
        self.log, self.waiting_every = log, waiting_every
        self.headers = {
            "User-Agent": "deployer-trigger/1",
            "X-Deployer-Job": spec.name,
            "X-Deployer-Run-Id": run,
            "X-Deployer-Scheduled-At": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(legacy_slot)),
            "Idempotency-Key": key,
            "X-Deployer-Slot": slot.name,
            "X-Deployer-Epoch": str(spec.epoch),
        }
        self.headers.update(spec.headers)
        self.client_cert = (spec.client_cert, spec.client_key) if spec.client_cert else None

    def send(self, method: str, url: str, body: bytes, deadline: float, label: str = "") -> Response:
        """One request; every `waiting_every` seconds without its answer, a line says so under `label`."""
        headers = dict(self.headers)
        if body:
            headers["Content-Type"] = self.spec.content_type
        if self.spec.sign_secret:  # per attempt: a fresh timestamp, the same run id and key
            stamp = int(time.time())
            headers["X-Deployer-Timestamp"] = str(stamp)
            headers["X-Deployer-Signature"] = sign(self.spec.sign_secret, method, url, stamp, self.run, body)
            headers["X-Deployer-Signature-V2"] = sign_v2(self.spec.sign_secret, method, url, stamp, self.run,
                                                         self.spec.name, self.key, self.spec.epoch, body)
        remaining = max(deadline - time.monotonic(), 0.001)
        with saying_while_waiting(self.log, label or f"{method} {redact_url(url)}", self.waiting_every):
            return request(method, url, headers, (min(remaining, 10.0), remaining), body=body,
                           ca_file=self.spec.ca_file, client_cert=self.client_cert)


@contextlib.contextmanager
def saying_while_waiting(log: Callable[[str], None], label: str, every: float):
    """Log `label: waiting for the answer (30 s)` every `every` seconds until the block ends
    (the request's answer, error or the run's timeout). The last such line is logged before
    the block returns, so none comes after the line that reports the answer."""
    answered = threading.Event()

    def say() -> None:
        waited = 0.0
        while not answered.wait(every):
            waited += every
            text = f"waiting for the answer ({waited:g} s)"
            log(f"{label}: {text}")
            notify_status(f"{label}: {text}")

    sayer = threading.Thread(target=say, daemon=True)
    sayer.start()
    try:
        yield
    finally:
        answered.set()
        sayer.join()


def run_job(spec: JobSpec, log: Callable[[str], None] = print,
            sleep: Callable[[float], None] = time.sleep, slot: Optional[Slot] = None,
            waiting_every: float = WAITING_EVERY, replace_at: Optional[float] = None) -> RunResult:
    """Every attempt within spec.timeout seconds in all; backoff 1s, 2s, 4s... between them (or
    the service's Retry-After); every `waiting_every` seconds of a request without its answer,
    a line says the run is waiting. An attempt the service may have seen is sent again only when
    that cannot run the work twice (may_resend). A SIGTERM (raised as Interrupted by the
    caller's handler) ends the run as a failed one. `replace_at` (unix seconds, concurrency =
    replace): the next slot; the run ends then, failed (`replaced: ...`), if it is still going,
    so that its timer starts that slot's run at once."""
    wall = time.time()
    started = time.monotonic()
    deadline = started + spec.timeout
    expect_status, expect_json = parse_expect_status(spec.expect_status), parse_expect_json(spec.expect_json)
    run = current_run_id()
    slot = slot or Slot(None, run, "manual")
    key = slot.key(spec.name)
    body = spec.body.encode()
    shown = redact_url(spec.url)
    hide = run_masker(spec.url, spec.headers, spec.sign_secret)  # a service may echo them back
    log = (lambda line, _log=log: _log(hide(line))) if hide else log
    caller = _Caller(spec, run, key, slot, slot.at if slot.at is not None else slot_of(wall, spec.resolution),
                     log=log, waiting_every=waiting_every)
    attempts = spec.retries + 1
    verdict = Verdict(False, "no attempt made")
    attempt, status, interrupted, fenced, reached, resumable = 0, None, False, False, [], False

    def expire(signum, frame):
        raise RunTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    replacing = replace_at is not None and replace_at - wall < spec.timeout
    signal.setitimer(signal.ITIMER_REAL, max(replace_at - time.time(), 0.001) if replacing else spec.timeout)
    try:
        for attempt in range(1, attempts + 1):
            begin = time.monotonic()
            prefix = f"attempt {attempt}/{attempts}: {spec.method} {shown}"
            response = None
            try:
                response = caller.send(spec.method, spec.url, body, deadline, label=prefix)
                if key_in_progress(response):
                    log(f"{prefix} -> 409 in {time.monotonic() - begin:.2f}s: the service is running this "
                        f"key ({key}) already; waiting for its outcome")
                    response = await_key(caller, spec, body, response, deadline, sleep)
                status = response.status
                held = fence_epoch(response)
                if held is not None and held > spec.epoch:
                    reached.append(True)
                    fenced, verdict = True, Verdict(False, fenced_reason(spec, held))
                    log(f"{prefix} -> 409 in {time.monotonic() - begin:.2f}s: {verdict.reason}")
                    break
                if response.status == 202 and spec.async_ == "poll":
                    reached.append(True)
                    log(f"{prefix} -> 202 in {time.monotonic() - begin:.2f}s: accepted")
                    verdict, status, fenced = poll(caller, spec, response, deadline, expect_status, expect_json,
                                                   log, sleep)
                    break
                verdict = judge(response.status, response.body, expect_status, expect_json)
                reached.append(verdict.reached)
                line = f"{prefix} -> {response.status} in {time.monotonic() - begin:.2f}s"
                log(line if verdict.ok else f"{line}: {verdict.reason}: {excerpt(response.body, hide)}")
            except TransportError as error:
                if time.monotonic() >= deadline - DEADLINE_SLACK:
                    # The request's timeouts end at the run's deadline, a few ms before the run's
                    # alarm (armed after `started`): the run timed out, not the attempt.
                    await_alarm(deadline)
                verdict = Verdict(False, error.reason, retryable=error.retryable, reached=error.sent)
                reached.append(error.sent)
                log(f"{prefix} -> error in {time.monotonic() - begin:.2f}s: {verdict.reason}")
            if verdict.ok or not verdict.retryable or attempt == attempts:
                break
            if verdict.reached and not may_resend(spec):
                verdict = Verdict(False, f"{verdict.reason}; {NOT_RESENT}")
                log(f"{spec.method} {shown}: {NOT_RESENT}")
                break
            pause = min(retry_after(response, 2.0 ** (attempt - 1)), deadline - time.monotonic())
            if pause <= 0:
                break
            sleep(pause)
    except RunTimeout:
        verdict = Verdict(False, f"timed out after {spec.timeout:g}s (whole run, retries included)")
        if replacing and time.time() >= replace_at - 1:
            verdict = Verdict(False, replaced_reason(replace_at))
        log(f"{spec.method} {shown}: {verdict.reason}")
    except Interrupted:
        interrupted = True
        reason, resumable = interruption(spec.name, run)
        verdict = Verdict(False, reason)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return RunResult(ok=verdict.ok, reason=hide(verdict.reason), run_id=run, slot=slot.at or 0, started=wall,
                     duration=time.monotonic() - started, attempts=attempt, http_status=status,
                     interrupted=interrupted, fenced=fenced, key=key, epoch=spec.epoch, reached=tuple(reached),
                     resume=interrupted and resumable and slot.at is not None
                     and (spec.async_ == "poll" or may_resend(spec)), after=slot.after)


def replaced_reason(replace_at: float) -> str:
    return f"replaced: the slot {iso_utc(replace_at)} came while it ran (concurrency = replace)"


def key_in_progress(response: Response) -> bool:
    """A 409 with Retry-After and no fence epoch: the service holds this Idempotency-Key and
    is still running it (the draft's "request outstanding for this key"), from this host's
    earlier attempt or another's. Asking again with the same key cannot run it twice. A 409
    without Retry-After is the service's own conflict and is judged like any other answer."""
    return response.status == 409 and bool(response.header("retry-after").strip()) \
        and fence_epoch(response) is None


# A request's timeout that ends within this of the run's deadline is the run's timeout.
DEADLINE_SLACK = 0.01


def await_alarm(deadline: float) -> None:
    """Wait for the run's alarm (SIGALRM, set just after `deadline`: a RunTimeout raised where
    this waits). Raising RunTimeout here instead would let the alarm land a second time, in the
    timeout's own handling; without an alarm (a caller's test), one second after `deadline`."""
    while time.monotonic() < deadline + 1.0:
        time.sleep(0.01)
    raise RunTimeout()


def await_key(caller: "_Caller", spec: JobSpec, body: bytes, response: Response, deadline: float,
              sleep: Callable[[float], None]) -> Response:
    """Ask again with the same key while the service says it is still running it; the
    answer after that is judged like a first one. Only the run's deadline ends the wait."""
    notify_status("waiting for the service (key %s in progress)" % caller.key)
    while key_in_progress(response):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunTimeout()
        pause = min(retry_after(response, 1.0), MAX_POLL_EVERY)
        if pause >= left:
            # The next ask would go out with no time left for its answer (ci14: a fourth request
            # 2.5 s into a 2.5 s run): none goes out, and the run's alarm ends it.
            sleep(left)
            await_alarm(deadline)
        sleep(pause)
        try:
            response = caller.send(spec.method, spec.url, body, deadline)
        except TransportError:
            continue  # the key is held at the service: asking again stays safe
    return response


def fenced_reason(spec: JobSpec, held: int) -> str:
    """The epoch is the grant time of the job's newest owner: it says when the job moved."""
    moved = iso_utc(held / 1000) if held > 10 ** 12 else "?"
    return (f"fenced: {spec.name} was granted to another host at {moved} (the service holds epoch {held}, "
            f"this host's is {spec.epoch}); this host stops the job's timer")


def poll(caller: _Caller, spec: JobSpec, accepted: Response, deadline: float, expect_status, expect_json,
         log: Callable[[str], None], sleep: Callable[[float], None]) -> tuple:
    """Follow a 202's Location (or Operation-Location) until the service answers something else,
    which is judged like a synchronous answer -> (verdict, last status, fenced). Poll failures
    are transient: the run's deadline alone ends the wait."""
    from urllib.parse import urljoin

    location = accepted.header("location") or accepted.header("operation-location")
    if not location:
        return Verdict(False, "202 without a Location to poll (async = poll)"), 202, False
    url = urljoin(spec.url, location)
    every, response, polls = spec.poll_every, accepted, 0
    log(f"polling {redact_url(url)} every {every:g}s while it answers 202")
    notify_status("waiting for the service (accepted at %s)" % time.strftime("%H:%M:%SZ", time.gmtime()))
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunTimeout()
        sleep(min(retry_after(response, every), left))
        every, polls = min(every * 1.5, max(MAX_POLL_EVERY, spec.poll_every)), polls + 1
        try:
            response = caller.send("GET", url, b"", deadline)
        except TransportError as error:
            response = None
            log(f"poll {polls}: error: {error.reason}; polling on")
            continue
        held = fence_epoch(response)
        if held is not None and held > spec.epoch:
            return Verdict(False, fenced_reason(spec, held)), 409, True
        if response.status == 202:
            continue
        if response.status >= 500 or response.status == 429:
            log(f"poll {polls}: {response.status}; polling on")
            continue
        verdict = judge(response.status, response.body, expect_status, expect_json)
        line = f"poll {polls}: GET {redact_url(url)} -> {response.status}"
        hide = run_masker(spec.url, spec.headers, spec.sign_secret)
        log(line if verdict.ok else f"{line}: {verdict.reason}: {excerpt(response.body, hide)}")
        return verdict, response.status, False


def notify_status(text: str) -> None:
    """Say what the run is doing to systemd (`systemctl status`, `deployer status`): sd_notify
    STATUS= on $NOTIFY_SOCKET (the unit's NotifyAccess=main); nothing where there is none."""
    import socket

    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.sendto(("STATUS=" + " ".join(text.split())).encode("utf-8", "replace"), address)
    except OSError:
        pass


def ping(url: Optional[str], suffix: str, log: Callable[[str], None], budget: float = PING_BUDGET) -> None:
    """Tell an outside monitor (Healthchecks-style) that a run started, succeeded or failed.

    The ping runs beside the job and is given `budget` seconds in all: a monitor that answers
    slowly (or drips its answer) must never hold up the job or change its result.
    """
    if not url:
        return
    target = url.rstrip("/") + suffix

    def send() -> None:
        try:
            request("GET", target, {"User-Agent": "deployer-trigger/1"}, (budget, budget), max_body=1024)
        except TransportError as error:
            log(f"ping {suffix or 'success'} to {redact_url(url)} failed: {error.reason}")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(budget)
    if sender.is_alive():
        log(f"ping {suffix or 'success'} to {redact_url(url)}: no answer within {budget:g}s; going on")
