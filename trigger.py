#!/usr/bin/env python3
"""Trigger one scheduled job over HTTP: request, judge the response, retry, exit 0 or 1.

Runs on the cron host under a systemd timer (shipped inside a zipapp with `requests`),
and stays compatible with the original Kubernetes recipe: `trigger.py -url URL -token TOKEN`.
Only the standard library and `requests` may be imported here.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit, urlunsplit

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

BODY_EXCERPT = 200
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class RuleError(ValueError):
    """An expect_status / expect_json rule that cannot be parsed."""


# --- success rules (pure; the deployer validates inventories with these too) -------------

_STATUS_ITEM = re.compile(r"^([1-5])xx$|^([1-5][0-9]{2})(?:-([1-5][0-9]{2}))?$")


def parse_expect_status(text: str) -> tuple[tuple[int, int], ...]:
    """`2xx`, `200`, `200-299`, comma-separated -> inclusive (low, high) ranges."""
    ranges = []
    for item in (part.strip().lower() for part in text.split(",")):
        match = _STATUS_ITEM.match(item)
        if not match:
            raise RuleError(f"{item!r} is not a status (use 2xx, 200 or 200-204)")
        klass, low, high = match.groups()
        if klass:
            ranges.append((int(klass) * 100, int(klass) * 100 + 99))
        else:
            ranges.append((int(low), int(high or low)))
            if ranges[-1][0] > ranges[-1][1]:
                raise RuleError(f"{item!r} runs backwards")
    if not ranges:
        raise RuleError("no status given")
    return tuple(ranges)


_PATH = re.compile(r"\s*([A-Za-z0-9_$-]+(?:\.[A-Za-z0-9_$-]+)*)\s*=\s*")


def parse_expect_json(text: str) -> tuple[tuple[tuple[str, ...], Any], ...]:
    """`code=0, data.state="DONE"` -> ((("code",), 0), (("data", "state"), "DONE")).

    Values are JSON literals, so a string may itself contain commas or `=`.
    """
    rules = []
    decoder = json.JSONDecoder()
    pos, text = 0, text.strip()
    while pos < len(text):
        match = _PATH.match(text, pos)
        if not match:
            raise RuleError(f"expected PATH=VALUE at {text[pos:]!r}")
        try:
            value, end = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            raise RuleError(f"value of {match.group(1)!r} is not a JSON literal "
                            f"(quote strings: {match.group(1)}=\"DONE\")") from None
        rules.append((tuple(match.group(1).split(".")), value))
        rest = text[end:].lstrip()
        if rest and not rest.startswith(","):
            raise RuleError(f"expected ',' after the value of {match.group(1)!r}")
        pos = len(text) - len(rest) + (1 if rest else 0)
    return tuple(rules)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    retryable: bool = False


def _lookup(document: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for part in path:
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return False, None
    return True, document


def judge(status: int, body: bytes, expect_status, expect_json) -> Verdict:
    """Success = status in range AND every JSON rule holds.

    5xx and 429 are retryable; other 4xx and business failures are not: the service saw
    the request and said no, and repeating a settlement that said no is not ours to decide.
    """
    if not any(low <= status <= high for low, high in expect_status):
        retryable = status >= 500 or status == 429
        return Verdict(False, f"status {status} not expected", retryable)
    if expect_json:
        try:
            document = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return Verdict(False, "body is not JSON but expect_json needs it")
        for path, want in expect_json:
            found, got = _lookup(document, path)
            name = ".".join(path)
            if not found:
                return Verdict(False, f"{name} missing from the JSON body")
            # JSON true is not 1: Python's True == 1 must not pass a rule.
            if got != want or isinstance(got, bool) != isinstance(want, bool):
                return Verdict(False, f"{name} is {json.dumps(got)}, expected {json.dumps(want)}")
    return Verdict(True, f"status {status}")


def redact_url(url: str) -> str:
    """The URL as it may appear in a log: no password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def describe_error(error: Exception) -> str:
    """`connection refused`, `read timed out`...: the cause, without urllib3's wrappers."""
    import requests

    found = _ERRNO.search(str(error))
    if isinstance(error, requests.Timeout):
        return "timed out" + (" connecting" if isinstance(error, requests.ConnectTimeout) else " reading")
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS error: " + str(error).rsplit(": ", 1)[-1].rstrip(")'\"")
    if found:
        return "connection failed: " + found.group(1).strip().lower()
    return f"{type(error).__name__}: {str(error)[:200]}"


def excerpt(body: bytes) -> str:
    text = body[:BODY_EXCERPT].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text + ("..." if len(body) > BODY_EXCERPT else "")


# --- running a job ------------------------------------------------------------------------


class RunTimeout(Exception):
    pass


@dataclass(frozen=True)
class JobSpec:
    name: str
    url: str
    method: str = "POST"
    timeout: float = 60.0
    retries: int = 0
    expect_status: tuple = ((200, 299),)
    expect_json: tuple = ()


def run_job(spec: JobSpec, log: Callable[[str], None] = print,
            sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Every attempt within spec.timeout seconds in all; backoff 1s, 2s, 4s... between them."""
    import requests

    started = time.monotonic()
    deadline = started + spec.timeout
    run_id = os.environ.get("INVOCATION_ID") or uuid.uuid4().hex
    headers = {
        "User-Agent": "deployer-trigger/1",
        "X-Deployer-Job": spec.name,
        "X-Deployer-Run-Id": run_id,
        "X-Deployer-Scheduled-At": time.strftime("%Y-%m-%dT%H:%M:00%z", time.localtime()),
    }
    verify = SYSTEM_CA_BUNDLE if os.path.exists(SYSTEM_CA_BUNDLE) else True
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
                    response = session.request(
                        spec.method, spec.url, headers=headers, verify=verify,
                        timeout=(min(remaining, 10.0), remaining), allow_redirects=False,
                    )
                    body = response.content
                    verdict = judge(response.status_code, body, spec.expect_status, spec.expect_json)
                    line = f"{prefix} -> {response.status_code} in {time.monotonic() - begin:.2f}s"
                    log(line if verdict.ok else f"{line}: {verdict.reason}: {excerpt(body)}")
                except RunTimeout:
                    raise
                except requests.RequestException as error:
                    verdict = Verdict(False, describe_error(error), retryable=True)
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


# --- command line -------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90s, 5m, 1h)")
    factor = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * factor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trigger", allow_abbrev=False,
        description="Call a job's HTTP endpoint, judge the response, exit 0 on success, 1 on failure.",
    )
    parser.add_argument("-url", "--url", required=True, help="the job endpoint")
    parser.add_argument("-token", "--token", help="DingTalk robot token to alert on failure "
                        "(original recipe; visible in process lists, units use credentials)")
    parser.add_argument("--job", default="job", help="job name, sent as X-Deployer-Job")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--timeout", type=parse_duration, default=60.0,
                        help="the whole run, retries included (default 60s)")
    parser.add_argument("--retries", type=int, default=0, help="extra attempts after a failure")
    parser.add_argument("--expect-status", default="2xx")
    parser.add_argument("--expect-json", default="")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = JobSpec(
            name=args.job, url=args.url, method=args.method.upper(), timeout=args.timeout,
            retries=max(args.retries, 0),
            expect_status=parse_expect_status(args.expect_status),
            expect_json=parse_expect_json(args.expect_json),
        )
    except RuleError as error:
        parser.error(str(error))
    verdict = run_job(spec, log=lambda line: print(line, flush=True))
    if verdict.ok:
        print(f"job {spec.name}: ok ({verdict.reason})", flush=True)
        return EXIT_OK
    print(f"job {spec.name}: FAILED ({verdict.reason})", flush=True)
    if args.token:
        send_dingtalk_text(args.token, f"job {spec.name} failed: {spec.method} "
                           f"{redact_url(spec.url)}: {verdict.reason}")
    return EXIT_FAILED


def send_dingtalk_text(token: str, text: str,
                       endpoint: str = "https://oapi.dingtalk.com/robot/send") -> bool:
    """The original recipe's alert: a text message to a DingTalk robot; judged by errcode."""
    import requests

    try:
        response = requests.post(endpoint, params={"access_token": token}, timeout=10,
                                 json={"msgtype": "text", "text": {"content": text}})
        ok = response.status_code == 200 and response.json().get("errcode") == 0
    except (requests.RequestException, ValueError) as error:
        print(f"alert to DingTalk failed: {type(error).__name__}", flush=True)
        return False
    if not ok:
        print(f"alert to DingTalk refused: HTTP {response.status_code}", flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
