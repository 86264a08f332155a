"""One run of a job: the request, judged by the rules, retried within the job's timeout."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlsplit, urlunsplit

from .rules import Verdict, judge, parse_expect_json, parse_expect_status

BODY_EXCERPT = 200
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The most of a response body a run reads: enough for any verdict, never the host's memory.
MAX_BODY = 1 << 20
# A heartbeat ping gets this long in all, and never holds up or fails the job.
PING_BUDGET = 3.0


def trust_store():
    """The host's CA bundle (what curl and the jobs' services trust), for jobs, alerts and pings."""
    return SYSTEM_CA_BUNDLE if os.path.exists(SYSTEM_CA_BUNDLE) else True


def redact_url(url: str) -> str:
    """The URL as it may appear in a log: no password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class TransportError(Exception):
    """The request got no response: `reason` says why in a few words; `retryable` whether
    another attempt may help (a refused connection may; a certificate that fails does not)."""

    def __init__(self, reason: str, retryable: bool = True):
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes  # at most max_body bytes
    truncated: bool


_TLS_VERIFY = re.compile(r"certificate verify failed: ([^(]+)")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def request(method: str, url: str, headers: dict, timeout: tuple, body: bytes = b"",
            max_body: int = MAX_BODY, session=None) -> Response:
    """One HTTP request: never follows a redirect, verifies TLS against the host's trust store,
    reads at most `max_body` bytes of the answer."""
    import requests

    try:
        with (session or requests).request(method, url, headers=headers, data=body or None,
                                           verify=trust_store(), timeout=timeout, allow_redirects=False,
                                           stream=True) as response:
            content = response.raw.read(max_body + 1, decode_content=True)
            return Response(response.status_code, content[:max_body], len(content) > max_body)
    except requests.exceptions.SSLError as error:
        text = str(error)
        found = _TLS_VERIFY.search(text)
        if found:  # the peer is not who it claims, or not trusted: another attempt cannot help
            raise TransportError("TLS error: certificate verify failed: " + found.group(1).strip(),
                                 retryable=False) from None
        detail = re.sub(r"\s*\(_ssl\.c:\d+\)?", "", text.rsplit(": ", 1)[-1]).rstrip(")'\" ")
        raise TransportError("TLS error: " + detail) from None
    except requests.Timeout as error:
        connecting = isinstance(error, requests.ConnectTimeout)
        raise TransportError("timed out " + ("connecting" if connecting else "reading")) from None
    except requests.RequestException as error:
        found = _ERRNO.search(str(error))
        if found:
            raise TransportError("connection failed: " + found.group(1).strip().lower()) from None
        raise TransportError(f"{type(error).__name__}: {str(error)[:200]}") from None


def excerpt(body: bytes) -> str:
    text = body[:BODY_EXCERPT].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text + ("..." if len(body) > BODY_EXCERPT else "")


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
    resolution: int = 60  # seconds: a cron job's slot is its minute


def scheduled_at(now: float, resolution: int) -> str:
    """The nominal time of this run: the timer fires within AccuracySec=1s of it, so the start
    time floored to the schedule's resolution names the slot (a catch-up run after downtime
    names the slot it ran in, not the one it missed)."""
    slot = now - (now % max(resolution, 1))
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(slot))


def run_job(spec: JobSpec, log: Callable[[str], None] = print,
            sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Every attempt within spec.timeout seconds in all; backoff 1s, 2s, 4s... between them."""
    import requests

    started = time.monotonic()
    deadline = started + spec.timeout
    expect_status, expect_json = parse_expect_status(spec.expect_status), parse_expect_json(spec.expect_json)
    run_id = os.environ.get("INVOCATION_ID") or uuid.uuid4().hex
    headers = {
        "User-Agent": "deployer-trigger/1",
        "X-Deployer-Job": spec.name,
        "X-Deployer-Run-Id": run_id,
        "X-Deployer-Scheduled-At": scheduled_at(time.time(), spec.resolution),
    }
    shown = redact_url(spec.url)
    attempts = spec.retries + 1
    verdict = Verdict(False, "no attempt made")

    def expire(signum, frame):
        raise RunTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, spec.timeout)
    try:
        with requests.Session() as session:
            for attempt in range(1, attempts + 1):
                begin = time.monotonic()
                prefix = f"attempt {attempt}/{attempts}: {spec.method} {shown}"
                try:
                    remaining = max(deadline - begin, 0.001)
                    response = request(spec.method, spec.url, headers, (min(remaining, 10.0), remaining),
                                       session=session)
                    verdict = judge(response.status, response.body, expect_status, expect_json)
                    line = f"{prefix} -> {response.status} in {time.monotonic() - begin:.2f}s"
                    log(line if verdict.ok else f"{line}: {verdict.reason}: {excerpt(response.body)}")
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
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return verdict


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
