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
    run_id = os.environ.get("INVOCATION_ID") or uuid.uuid4().hex
    headers = {
        "User-Agent": "deployer-trigger/1",
        "X-Deployer-Job": spec.name,
        "X-Deployer-Run-Id": run_id,
        "X-Deployer-Scheduled-At": scheduled_at(time.time(), spec.resolution),
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


# --- alerts -------------------------------------------------------------------------------
#
# An OnFailure= unit runs `trigger --alert` once per failed run, whatever made it fail.
# Tokens arrive as systemd credentials ($CREDENTIALS_DIRECTORY/token), never as arguments.

DEFAULT_ENDPOINTS = {
    "dingtalk": "https://oapi.dingtalk.com/robot/send",
    "wecom": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send",
    "feishu": "https://open.feishu.cn/open-apis/bot/v2/hook/",
    "slack": "https://hooks.slack.com/services/",
}
# DingTalk throttles a robot above 20 messages a minute; stay under it and merge the rest.
RATE_LIMIT = 18
RATE_WINDOW = 60.0
DELIVERY_ATTEMPTS = 3
MAX_LINES = 12
MAX_TEXT = 4000


@dataclass(frozen=True)
class Channel:
    name: str
    type: str
    token: str = ""
    secret: str = ""
    endpoint: str = ""


@dataclass(frozen=True)
class Outbound:
    """One HTTP request that delivers an alert, and how to tell that it was accepted."""

    url: str
    params: dict
    json: dict
    headers: dict
    judge: str  # errcode | code | slack | status


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """base64(HMAC-SHA256(key=secret, msg="{timestamp_ms}\n{secret}")); requests URL-encodes it."""
    import base64
    import hashlib
    import hmac

    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu's own scheme: the key is "{timestamp}\n{secret}" and the message is empty."""
    import base64
    import hashlib
    import hmac

    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def build_outbound(channel: Channel, title: str, text: str, event: dict, now: float) -> Outbound:
    """The request for one message on one channel (pure: `now` is given)."""
    endpoint = channel.endpoint or DEFAULT_ENDPOINTS.get(channel.type, "")
    if channel.type == "dingtalk":
        params = {"access_token": channel.token}
        if channel.secret:
            stamp = int(now * 1000)
            params.update(timestamp=str(stamp), sign=dingtalk_sign(channel.secret, stamp))
        body = {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
        return Outbound(endpoint, params, body, {}, "errcode")
    if channel.type == "wecom":
        return Outbound(endpoint, {"key": channel.token},
                        {"msgtype": "markdown", "markdown": {"content": text}}, {}, "errcode")
    if channel.type == "feishu":
        body: dict = {"msg_type": "text", "content": {"text": plain(text)}}
        if channel.secret:
            stamp = int(now)
            body.update(timestamp=str(stamp), sign=feishu_sign(channel.secret, stamp))
        return Outbound(endpoint.rstrip("/") + "/" + channel.token, {}, body, {}, "code")
    if channel.type == "slack":
        return Outbound(endpoint.rstrip("/") + "/" + channel.token, {}, {"text": plain(text)}, {}, "slack")
    headers = {"Authorization": f"Bearer {channel.token}"} if channel.token else {}
    return Outbound(endpoint, {}, {"title": title, "text": plain(text), **event}, headers, "status")


def accepted(outbound: Outbound, status: int, body: bytes) -> tuple[bool, str]:
    """Did the channel take the message? DingTalk and WeCom say so in errcode, even on HTTP 200."""
    if status >= 300:
        return False, f"HTTP {status}"
    if outbound.judge == "status":
        return True, f"HTTP {status}"
    if outbound.judge == "slack":
        return body.strip() == b"ok", body[:100].decode("utf-8", "replace")
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False, "answer is not JSON"
    key = "errcode" if outbound.judge == "errcode" else "code"
    code = answer.get(key, answer.get("StatusCode"))
    return code == 0, f"{key} {code}: {answer.get('errmsg') or answer.get('msg') or ''}".strip()


def plain(markdown: str) -> str:
    return markdown.replace("**", "").replace("> ", "  ")


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


def deliver(channel: Channel, events: list[dict], log: Callable[[str], None] = print,
            sleep: Callable[[float], None] = time.sleep) -> bool:
    """Send one message, a few tries with backoff; never loops forever; never logs the token."""
    import requests

    title, text = format_events(events)
    for attempt in range(1, DELIVERY_ATTEMPTS + 1):
        outbound = build_outbound(channel, title, text, events[-1], time.time())
        try:
            response = requests.post(outbound.url, params=outbound.params, json=outbound.json,
                                     headers=outbound.headers, timeout=10)
            ok, detail = accepted(outbound, response.status_code, response.content)
        except requests.RequestException as error:
            ok, detail = False, describe_error(error)
        log(f"alert via {channel.name} ({channel.type}), attempt {attempt}/{DELIVERY_ATTEMPTS}: "
            f"{'accepted' if ok else 'not accepted'} ({detail})")
        if ok:
            return True
        if attempt < DELIVERY_ATTEMPTS:
            sleep(2.0 * attempt)
    return False


class Coalescer:
    """Per channel, at most RATE_LIMIT messages per RATE_WINDOW; a burst beyond that is merged.

    Each alert queues its event in `state_dir`. Under the limit an alert sends its own event
    (with any left behind by an earlier failed delivery). Over it, alerts wait for the window;
    the first to get through sends every queued event as one message, and the others find
    theirs already sent. A failed delivery leaves the event queued for the next alert to
    carry: nothing is lost, and nothing loops.
    """

    def __init__(self, state_dir: str, channel: str, now=time.time, sleep=time.sleep):
        self.dir = os.path.join(state_dir, "queue", channel)
        self.sent_log = os.path.join(state_dir, f"{channel}.sent")
        self.lock_path = os.path.join(state_dir, f"{channel}.lock")
        self.now, self.sleep = now, sleep
        os.makedirs(self.dir, exist_ok=True)

    def enqueue(self, event: dict) -> str:
        name = f"{self.now():.6f}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        path = os.path.join(self.dir, name)
        with open(path + ".tmp", "w") as handle:
            json.dump(event, handle)
        os.rename(path + ".tmp", path)
        return name

    def _recent_sends(self) -> list[float]:
        try:
            with open(self.sent_log) as handle:
                stamps = [float(x) for x in handle.read().split()]
        except (OSError, ValueError):
            stamps = []
        return [t for t in stamps if t > self.now() - RATE_WINDOW]

    def _batch(self, mine: str, waited: bool) -> list[str]:
        queued = sorted(p for p in os.listdir(self.dir) if p.endswith(".json"))
        if waited:
            return queued
        orphaned = self.now() - RATE_WINDOW - 180  # older than any live alert: its owner gave up
        return [p for p in queued if p == mine or float(p.split("-", 1)[0]) < orphaned]

    def run(self, mine: str, send: Callable[[list[dict]], bool], give_up_after: float = 120.0) -> bool:
        import fcntl

        deadline = self.now() + give_up_after
        waited = False
        while True:
            with open(self.lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not os.path.exists(os.path.join(self.dir, mine)):
                    return True  # sent by another alert, merged into its message
                recent = self._recent_sends()
                if len(recent) < RATE_LIMIT:
                    batch = self._batch(mine, waited)
                    events = []
                    for name in batch:
                        with open(os.path.join(self.dir, name)) as handle:
                            events.append(json.load(handle))
                    if not send(events):
                        return False
                    for name in batch:
                        os.unlink(os.path.join(self.dir, name))
                    with open(self.sent_log, "w") as handle:
                        handle.write(" ".join(f"{t:.3f}" for t in recent + [self.now()]))
                    return True
                wait = min(recent) + RATE_WINDOW - self.now()
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


UNIT_DIR = "/etc/systemd/system"


def job_request(job: str) -> tuple[str, str]:
    """METHOD and URL from the job unit's Description= (rendered by the deployer: 'deployer job
    NAME: METHOD URL', with % doubled)."""
    try:
        with open(os.path.join(UNIT_DIR, f"deployer-{job}.service"), encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("Description=deployer job ") and ": " in line:
                    method, _, url = line.split(": ", 1)[1].strip().partition(" ")
                    return method, redact_url(url.replace("%%", "%"))
    except OSError:
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


def alert_main(args) -> int:
    channel = Channel(name=args.channel, type=args.type, token=read_credential("token"),
                      secret=read_credential("secret"), endpoint=args.endpoint or "")
    state = os.environ.get("STATE_DIRECTORY") or "/tmp"
    failing = os.path.join(state, "failing", args.job)
    if args.recovered:
        if not os.path.exists(failing):
            return EXIT_OK
        os.unlink(failing)
        event = {"kind": "recovered", "job": args.job, "host": args.host_name,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        print(f"job {args.job} succeeded after failing; telling {channel.name}", flush=True)
    else:
        event = failed_run_event(args.job, args.host_name)
        os.makedirs(os.path.dirname(failing), exist_ok=True)
        open(failing, "w").close()
        print(f"job {args.job} failed ({event['result']}, exit status {event['exit_status']}); "
              f"alerting via {channel.name}", flush=True)
    coalescer = Coalescer(state, channel.name)
    mine = coalescer.enqueue(event)
    delivered = coalescer.run(mine, lambda events: deliver(channel, events, log=lambda l: print(l, flush=True)))
    if not delivered:
        print("alert not delivered; it stays queued and goes out with the next alert", flush=True)
    return EXIT_OK if delivered else EXIT_FAILED


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
    parser.add_argument("-url", "--url", help="the job endpoint (required unless --alert)")
    parser.add_argument("-token", "--token", help="DingTalk robot token to alert on failure (the "
                        "original recipe; visible in process lists: installed units use credentials)")
    parser.add_argument("--job", default="job", help="job name, sent as X-Deployer-Job")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--timeout", type=parse_duration, default=60.0,
                        help="the whole run, retries included (default 60s)")
    parser.add_argument("--retries", type=int, default=0, help="extra attempts after a failure")
    parser.add_argument("--expect-status", default="2xx")
    parser.add_argument("--expect-json", default="")
    parser.add_argument("--resolution", type=int, default=60,
                        help="seconds the nominal time is floored to (60 for cron schedules)")
    parser.add_argument("--ping-url", help="Healthchecks-style heartbeat: /start, then success or /fail")
    alert = parser.add_argument_group("alert mode (run by a job's OnFailure= unit)")
    alert.add_argument("--alert", action="store_true", help="report the failed run of --job")
    alert.add_argument("--recovered", action="store_true", help="with --alert: report that --job "
                       "succeeded after failing (run by OnSuccess=)")
    alert.add_argument("--channel", help="alert channel name")
    alert.add_argument("--type", choices=["dingtalk", "wecom", "feishu", "slack", "webhook"])
    alert.add_argument("--endpoint", help="override the channel's URL (proxies, tests)")
    alert.add_argument("--host-name", default=os.environ.get("DEPLOYER_HOST_NAME") or os.uname().nodename)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.alert:
        if not (args.channel and args.type):
            parser.error("--alert needs --channel and --type")
        return alert_main(args)
    if not args.url:
        parser.error("the following arguments are required: -url/--url")
    try:
        spec = JobSpec(
            name=args.job, url=args.url, method=args.method.upper(), timeout=args.timeout,
            retries=max(args.retries, 0),
            expect_status=parse_expect_status(args.expect_status),
            expect_json=parse_expect_json(args.expect_json), resolution=args.resolution,
        )
    except RuleError as error:
        parser.error(str(error))
    log = lambda line: print(line, flush=True)  # noqa: E731
    ping(args.ping_url, "/start", log)
    verdict = run_job(spec, log=log)
    ping(args.ping_url, "" if verdict.ok else "/fail", log)
    if verdict.ok:
        print(f"job {spec.name}: ok ({verdict.reason})", flush=True)
        return EXIT_OK
    print(f"job {spec.name}: FAILED ({verdict.reason})", flush=True)
    channel = inline_channel(args)
    if channel:  # the original recipe's -token, or DEPLOYER_ALERT_* (a Kubernetes Secret)
        event = {"kind": "failed", "job": spec.name, "host": args.host_name, "method": spec.method,
                 "url": redact_url(spec.url), "result": verdict.reason, "exit_status": EXIT_FAILED,
                 "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lines": []}
        deliver(channel, [event], log=log)
    return EXIT_FAILED


def inline_channel(args) -> Optional[Channel]:
    """Where a run alerts by itself (no OnFailure= unit): `-token`, else the environment."""
    env = os.environ
    kind = args.type or env.get("DEPLOYER_ALERT_TYPE") or ("dingtalk" if args.token else "")
    token = args.token or env.get("DEPLOYER_ALERT_TOKEN", "")
    if not kind or (kind != "webhook" and not token):
        return None
    return Channel("inline", kind, token=token, secret=env.get("DEPLOYER_ALERT_SECRET", ""),
                   endpoint=args.endpoint or env.get("DEPLOYER_ALERT_ENDPOINT", ""))


def ping(url: Optional[str], suffix: str, log: Callable[[str], None]) -> None:
    """Tell an outside monitor (Healthchecks-style) that a run started, succeeded or failed;
    a host that stops running timers is then noticed by what it no longer sends."""
    if not url:
        return
    import requests

    try:
        requests.get(url.rstrip("/") + suffix, timeout=5)
    except requests.RequestException as error:
        log(f"ping {suffix or 'success'} to {redact_url(url)} failed: {describe_error(error)}")


if __name__ == "__main__":
    sys.exit(main())
