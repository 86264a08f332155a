"""One run of a job: the request, judged by the rules, retried within the job's timeout."""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlsplit, urlunsplit

from . import http
from .http import HttpError as TransportError  # noqa: F401 - .reason, .retryable
from .http import Response
from .record import RunRecord
from .rules import Verdict, judge, parse_expect_json, parse_expect_status
from .text import Masker, run_masker

BODY_EXCERPT = 200
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The most of a response body a run reads: enough for any verdict, never the host's memory.
MAX_BODY = 1 << 20
# A heartbeat ping gets this long in all, and never holds up or fails the job.
PING_BUDGET = 3.0


def trust_store() -> Optional[str]:
    """The host's CA bundle (what curl and the jobs' services trust), for jobs, alerts and pings."""
    return SYSTEM_CA_BUNDLE if os.path.exists(SYSTEM_CA_BUNDLE) else None


def redact_url(url: str) -> str:
    """The URL as it may appear in a log: no password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def request(method: str, url: str, headers: dict, timeout: tuple, body: bytes = b"",
            max_body: int = MAX_BODY, ca_file: Optional[str] = None,
            client_cert: Optional[tuple] = None) -> Response:
    """One HTTP request with the standard-library client (hostside.http): never follows a
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


@dataclass(frozen=True)
class JobSpec:
    """What the trigger was asked to do (its arguments; see options.JOB_OPTIONS)."""

    name: str
    url: str
    method: str = "POST"
    timeout: float = 60.0
    retries: int = 0
    expect_status: str = "2xx"
    expect_json: str = ""
    ping_url: Optional[str] = None
    content_type: str = "application/json"
    resolution: int = 60  # seconds: a cron job's slot is its minute
    # From credentials (options.CREDENTIAL_OPTIONS): never on the command line.
    headers: tuple = ()
    body: str = ""
    ca_file: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    sign_secret: Optional[str] = None


def sign(secret: str, method: str, url: str, timestamp: int, run_id: str, body: bytes) -> str:
    """`v1=` + hex HMAC-SHA256 over method, path with query, timestamp, run id and the body's
    SHA-256, one per line (docs/signing.md shows the service's ten-line check)."""
    import hashlib
    import hmac

    parts = urlsplit(url)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    message = "\n".join((method, target, str(timestamp), run_id, hashlib.sha256(body).hexdigest()))
    return "v1=" + hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def slot_of(now: float, resolution: int) -> int:
    """The nominal time of this run: the timer fires within AccuracySec=1s of it, so the start
    time floored to the schedule's resolution names the slot (a catch-up run after downtime
    names the slot it ran in, not the one it missed)."""
    return int(now - (now % max(resolution, 1)))


def scheduled_at(now: float, resolution: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(slot_of(now, resolution)))


INTERRUPTED = "interrupted: SIGTERM, the host is shutting down or the run was stopped"


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

    def record(self, job: str) -> RunRecord:
        return RunRecord(job=job, run=self.run_id, slot=self.slot, started=self.started,
                         duration=self.duration, attempts=self.attempts,
                         result="ok" if self.ok else "failed", reason=self.reason,
                         http_status=self.http_status)


def current_run_id() -> str:
    return os.environ.get("INVOCATION_ID") or uuid.uuid4().hex


def run_job(spec: JobSpec, log: Callable[[str], None] = print,
            sleep: Callable[[float], None] = time.sleep) -> RunResult:
    """Every attempt within spec.timeout seconds in all; backoff 1s, 2s, 4s... between them.
    A SIGTERM (raised as Interrupted by the caller's handler) ends the run as a failed one."""
    wall = time.time()
    started = time.monotonic()
    deadline = started + spec.timeout
    expect_status, expect_json = parse_expect_status(spec.expect_status), parse_expect_json(spec.expect_json)
    run = current_run_id()
    slot = slot_of(wall, spec.resolution)
    headers = {
        "User-Agent": "deployer-trigger/1",
        "X-Deployer-Job": spec.name,
        "X-Deployer-Run-Id": run,
        "X-Deployer-Scheduled-At": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(slot)),
    }
    headers.update(spec.headers)
    body = spec.body.encode()
    if body:
        headers["Content-Type"] = spec.content_type
    client_cert = (spec.client_cert, spec.client_key) if spec.client_cert else None
    shown = redact_url(spec.url)
    hide = run_masker(spec.url, spec.headers, spec.sign_secret)  # a service may echo them back
    log = (lambda line, _log=log: _log(hide(line))) if hide else log
    attempts = spec.retries + 1
    verdict = Verdict(False, "no attempt made")
    attempt, status, interrupted = 0, None, False

    def expire(signum, frame):
        raise RunTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, spec.timeout)
    try:
        for attempt in range(1, attempts + 1):
            begin = time.monotonic()
            prefix = f"attempt {attempt}/{attempts}: {spec.method} {shown}"
            try:
                remaining = max(deadline - begin, 0.001)
                if spec.sign_secret:  # per attempt: a fresh timestamp, the same run id
                    stamp = int(time.time())
                    headers["X-Deployer-Timestamp"] = str(stamp)
                    headers["X-Deployer-Signature"] = sign(spec.sign_secret, spec.method, spec.url, stamp,
                                                           run, body)
                response = request(spec.method, spec.url, headers, (min(remaining, 10.0), remaining),
                                   body=body, ca_file=spec.ca_file, client_cert=client_cert)
                status = response.status
                verdict = judge(response.status, response.body, expect_status, expect_json)
                line = f"{prefix} -> {response.status} in {time.monotonic() - begin:.2f}s"
                log(line if verdict.ok else f"{line}: {verdict.reason}: {excerpt(response.body, hide)}")
            except TransportError as error:
                verdict = Verdict(False, error.reason, retryable=error.retryable)
                log(f"{prefix} -> error in {time.monotonic() - begin:.2f}s: {verdict.reason}")
            if verdict.ok or not verdict.retryable or attempt == attempts:
                break
            pause = min(2.0 ** (attempt - 1), deadline - time.monotonic())
            if pause <= 0:
                break
            sleep(pause)
    except RunTimeout:
        verdict = Verdict(False, f"timed out after {spec.timeout:g}s (whole run, retries included)")
        log(f"{spec.method} {shown}: {verdict.reason}")
    except Interrupted:
        interrupted = True
        verdict = Verdict(False, INTERRUPTED)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return RunResult(ok=verdict.ok, reason=hide(verdict.reason), run_id=run, slot=slot, started=wall,
                     duration=time.monotonic() - started, attempts=attempt, http_status=status,
                     interrupted=interrupted)


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
