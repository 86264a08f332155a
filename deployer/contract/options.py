"""Every job option, declared once: the inventory schema, the `Job` record, the trigger's
arguments, the unit's command line and the Kubernetes export all follow from JOB_OPTIONS.

Adding an option is one `Option(...)` here (plus its test): the deployer reads it from the
inventory, renders it onto the trigger's command line, and the trigger parses it back with
the same parser. Parsers are pure and standard-library only, because the trigger runs them
on the cron host; each raises `Invalid` with a message that completes "[section] key: ...".
"""
import contextlib
import contextvars
import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from deployer.contract import paths, rules
from deployer.contract.text import duration_text as text_duration


class Invalid(ValueError):
    """A value an option refuses; the message completes "[section] key: ..."."""


_CONTROL, _NAME = paths.CONTROL, paths.NAME
# The one duration syntax of the product: the inventory (timeout, poll_every, lease), the
# trigger's flags and `deployer history/logs --since`. A number without a unit is seconds.
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_SYNTAX = "e.g. 500ms, 90s, 5m, 1h30m, 7d; units: %s" % ", ".join(DURATION_UNITS)
_UNIT = "|".join(sorted(DURATION_UNITS, key=len, reverse=True))  # `ms` before `m`
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(%s)?)+$" % _UNIT)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(%s)?" % _UNIT)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# HTTP's idempotent methods (RFC 9110 9.2.2): sending one twice has the effect of sending it once.
IDEMPOTENT_METHODS = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
# The trigger's exit statuses (the units and the alert program read them too).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse's own, for a command line it refuses
# The service refused this host's epoch (a 409 fence): the unit's ExecStopPost= stops the timer.
EXIT_FENCED = 3
MAX_TIMEOUT = 24 * 3600
MAX_RETRIES = 10
# Linux refuses a single argument over 128 KiB (MAX_ARG_STRLEN) with "Argument list too long",
# at every run; a URL anywhere near that is a mistake, so refuse it long before.
MAX_URL = 8192
# systemd v252 hands a unit at most 1 MiB of credentials, names included (CREDENTIALS_TOTAL_SIZE_MAX,
# the same as one credential's limit; measured on v252: "body" + 1048572 bytes starts, one byte
# more fails every run with exit 243/CREDENTIALS). 4 KiB of it stay free for credentials the
# deployer itself adds to a run.
CREDENTIALS_LIMIT = 1024 * 1024
MAX_CREDENTIALS = CREDENTIALS_LIMIT - 4096


# --- parsers: text -> value, or Invalid ------------------------------------------------------


def text(value: str) -> str:
    if _CONTROL.search(value):
        raise Invalid("contains a control character")
    return value


def name(value: str) -> str:
    if not _NAME.match(value):
        raise Invalid("%r must match [a-z0-9][a-z0-9-]{0,62}" % (value,))
    return value


def boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise Invalid("%r is not true or false" % (value,))


def duration_seconds(value: str) -> float:
    """`500ms`, `90s`, `5m`, `1h30m`, `1.5h`, `7d` or plain seconds -> seconds (DURATION_UNITS)."""
    compact = value.replace(" ", "")
    if not compact or not _DURATION.match(compact):
        raise Invalid("%r is not a duration (%s)" % (value, DURATION_SYNTAX))
    return sum(float(number) * DURATION_UNITS.get(unit, 1) for number, unit in _DURATION_PART.findall(compact))


def timeout(value: str) -> float:
    seconds = duration_seconds(value)
    if not 1 <= seconds <= MAX_TIMEOUT:
        raise Invalid("%r must be between 1s and 24h" % (value,))
    return int(seconds) if seconds == int(seconds) else seconds


def retries(value: str) -> int:
    if not value.isdigit() or int(value) > MAX_RETRIES:
        raise Invalid("%r is not a whole number from 0 to %d" % (value, MAX_RETRIES))
    return int(value)


MAX_ALERT_AFTER = 1000
# alert_repeat: every failed run alerts (today's behaviour), or only the first of a streak.
REPEAT_WORDS = ("each", "never")


def alert_after(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_ALERT_AFTER:
        raise Invalid("%r is not a whole number from 1 to %d (failed runs in a row before the first alert)"
                      % (value, MAX_ALERT_AFTER))
    return int(value)


def alert_repeat(value: str):
    """`each`, `never` or a duration of at least 1m between reminders (as seconds)."""
    if value in REPEAT_WORDS:
        return value
    try:
        seconds = duration_seconds(value)
    except Invalid:
        raise Invalid("%r is not each, never or a duration (%s)" % (value, DURATION_SYNTAX)) from None
    if seconds < 60:
        raise Invalid("%r is under 1m: reminders that often are `each` (every failed run)" % (value,))
    return int(seconds) if seconds == int(seconds) else seconds


# alert_late / alert_long (issue 23 item 2): watched by the host's watcher (host/watch.py),
# which looks every WATCH_EVERY seconds; a threshold under twice that could not be told from the
# watcher's own delay.
WATCH_EVERY = 15
MIN_WATCHED = 2 * WATCH_EVERY


def watched_duration(value: str):
    """A duration of at least MIN_WATCHED (as seconds); empty: off."""
    seconds = duration_seconds(value)
    if seconds < MIN_WATCHED:
        raise Invalid("%r is under %ds: the host looks every %ds" % (value, MIN_WATCHED, WATCH_EVERY))
    return int(seconds) if seconds == int(seconds) else seconds


# catch_up: what a slot missed while the host was down (Persistent=, run once at boot) does.
CATCH_UP_WORDS = ("once", "none")
# `none` still runs a slot whose timer elapsed this long after it: a busy host's PID 1 may elapse a
# timer a few seconds late, and that is not a missed slot. It is also catch_up's least duration.
ON_TIME = 60


def catch_up(value: str):
    """`once` (run the latest missed slot at boot, however late), `none` (a slot whose timer elapsed
    more than ON_TIME after it is skipped) or a duration of at least 1m: a slot missed by more is
    skipped (seconds)."""
    if value.lower() in CATCH_UP_WORDS:
        return value.lower()
    try:
        seconds = duration_seconds(value)
    except Invalid:
        raise Invalid("%r is not once, none or a duration (%s)" % (value, DURATION_SYNTAX)) from None
    if seconds < ON_TIME:
        raise Invalid("%r is under 1m: a slot that late is on time (use none to skip every missed slot)" % (value,))
    return int(seconds) if seconds == int(seconds) else seconds


def catch_up_seconds(value) -> Optional[float]:
    """How late a slot may start and still run: None for `once` (any), ON_TIME for `none`."""
    return None if value == "once" else ON_TIME if value == "none" else float(value)


def catch_up_text(value) -> str:
    """As the inventory and the trigger's flag say it: `once`, `none`, `2h`, `90m`, `1h30m`."""
    if value in CATCH_UP_WORDS:
        return value
    return duration_text(value)


def duration_text(seconds: float) -> str:
    """A setting's duration exactly (what duration_seconds reads): 5400 -> `1h30m`."""
    return text_duration(seconds)


# concurrency: a slot that comes while the job's previous run is still going.
CONCURRENCY = ("forbid", "replace")


def concurrency(value: str) -> str:
    if value.lower() not in CONCURRENCY:
        raise Invalid("%r is not one of %s" % (value, ", ".join(CONCURRENCY)))
    return value.lower()


def url(value: str) -> str:
    text(value)
    if len(value) > MAX_URL:
        raise Invalid("is %d characters long; at most %d" % (len(value), MAX_URL))
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as error:
        raise Invalid("%r is not a valid URL (%s)" % (value, error)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("%r is not an http:// or https:// URL with a host" % (value,))
    if _WHITE_SPACE.search(value):
        raise Invalid("%r contains white space (encode it as %%20)" % (value,))
    return value


_WHITE_SPACE = re.compile(r"\s")  # str.isspace()'s characters (both are Py_UNICODE_ISSPACE)



# A job's URL is redacted at parse and again as its units render: room for 32,768 jobs' URLs, since
# with less a push of 10,000 jobs found none of them still there when it rendered.
@functools.lru_cache(maxsize=1 << 15)
def redact_url(value: str) -> str:
    """The URL as a unit, `ps`, a log or an alert may show it: `***` for a password (for a user
    name alone too: it may be a token) and for every query value whose name looks secret."""
    from urllib.parse import unquote_plus, urlsplit, urlunsplit

    # hiding a value that was not secret costs nothing: the URL is a credential
    from deployer.contract.text import SECRET_QUERY

    parts = urlsplit(value)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = ("%s:***@%s" % (user, hostport)) if colon else "***@" + hostport
    fields = []
    for field in parts.query.split("&") if parts.query else ():
        name_, equals, content = field.partition("=")
        secret = equals and content and SECRET_QUERY.search(unquote_plus(name_))
        fields.append(name_ + "=***" if secret else field)
    return urlunsplit(parts._replace(netloc=netloc, query="&".join(fields)))


def method(value: str) -> str:
    if value.upper() not in METHODS:
        raise Invalid("%r is not one of %s" % (value, ", ".join(METHODS)))
    return value.upper()


def expect_status(value: str) -> str:
    try:
        rules.parse_expect_status(value)
    except rules.RuleError as error:
        raise Invalid(str(error)) from None
    return value


def expect_json(value: str) -> str:
    try:
        rules.parse_expect_json(value)
    except rules.RuleError as error:
        raise Invalid(str(error)) from None
    return value


ASYNC_MODES = ("none", "poll")


def async_mode(value: str) -> str:
    if value.lower() not in ASYNC_MODES:
        raise Invalid("%r is not one of %s" % (value, ", ".join(ASYNC_MODES)))
    return value.lower()


def poll_every(value: str) -> float:
    seconds = duration_seconds(value)
    if not 0.1 <= seconds <= 3600:
        raise Invalid("%r must be between 100ms and 1h" % (value,))
    return int(seconds) if seconds == int(seconds) else seconds


def timezone(value: str) -> str:
    if not is_zone(value):
        raise Invalid("%r is not an IANA time zone (e.g. Asia/Shanghai, UTC)%s" % (value, zone_hint(value)))
    return value


def zone_hint(value: str) -> str:
    """` (did you mean 'Asia/Shanghai'?)` for a zone in the wrong case or misspelt, else ""."""
    import difflib

    try:
        from zoneinfo import available_timezones
    except ImportError:  # python < 3.9 on the host: the deployer's side still says it
        return ""
    zones = sorted(available_timezones())
    by_case = {zone.lower(): zone for zone in zones}
    close = [by_case[value.lower()]] if value.lower() in by_case else difflib.get_close_matches(value, zones, 1, 0.8)
    return " (did you mean %r?)" % close[0] if close else ""


def is_zone(value: str) -> bool:
    """An IANA time zone this machine's tzdata knows (what systemd accepts too)."""
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(value)
        return True
    except (ValueError, KeyError, OSError):
        return False


def calendar_lines(value: str) -> tuple:
    lines = tuple(line.strip() for line in value.splitlines() if line.strip())
    for line in lines:
        text(line)
    if not lines:
        raise Invalid("is empty")
    return lines


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An empty value means "none" (e.g. `alert =` turns alerting off)."""

    def parse_optional(value: str) -> Any:
        return parse(value) if value else None

    return parse_optional


def seconds_text(value: float) -> str:
    return "%gs" % value


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the trigger itself: a job must not be able to forge them.
RESERVED_HEADERS = ("host", "content-length", "transfer-encoding", "connection")


def headers(value: str) -> tuple:
    """One `Name: value` per line -> ((name, value), ...)."""
    found = []
    for line in (line.strip() for line in value.splitlines()):
        if not line:
            continue
        name_, colon, content = line.partition(":")
        name_ = name_.strip()
        if not colon or not _HEADER_NAME.match(name_):
            raise Invalid("%r is not a `Name: value` header line" % (line.split(":")[0],))
        if name_.lower() in RESERVED_HEADERS or name_.lower().startswith("x-deployer-"):
            raise Invalid("%s is set by the trigger itself" % (name_,))
        found.append((name_, text(content.strip())))
    if not found:
        raise Invalid("is empty")
    return tuple(found)


def header_lines(value: tuple) -> str:
    return "".join("%s: %s\n" % pair for pair in value)


# Run parameters (issue 23 item 7): `params = batch=1, region=cn` declares them with their
# defaults; `${{batch}}` in the url or the body is filled at each run, with the default on a
# scheduled run and with `deployer run JOB --set batch=42` on a manual one.
PLACEHOLDER = re.compile(r"\$\{\{([^}]*)\}\}")
_PARAM_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MAX_PARAM_VALUE = 1000


def param_value(value: str) -> str:
    text(value)
    if len(value) > MAX_PARAM_VALUE:
        raise Invalid("a parameter value is %d characters long; at most %d" % (len(value), MAX_PARAM_VALUE))
    return value


def param_name(value: str) -> str:
    if not _PARAM_NAME.match(value):
        raise Invalid("%r is not a parameter name ([a-z_][a-z0-9_]*)" % (value,))
    return value


def params(value: str) -> tuple:
    """`batch=1, region=cn` (or one per line) -> (("batch", "1"), ("region", "cn")): names and
    defaults, in order. A default holds no comma (the separator); it may be empty."""
    found = []
    for item in (part.strip() for line in value.splitlines() for part in line.split(",")):
        if not item:
            continue
        name_, equals, default = item.partition("=")
        if not equals:
            raise Invalid("%r is not name=default (an empty default: %s=)" % (item, name_.strip()))
        name_ = param_name(name_.strip())
        if name_ in dict(found):
            raise Invalid("%s is declared twice" % name_)
        found.append((name_, param_value(default.strip())))
    if not found:
        raise Invalid("is empty")
    return tuple(found)


def params_text(value: tuple) -> str:
    return ",".join("%s=%s" % pair for pair in value)


def placeholders(value: str) -> list:
    """The parameter names `value` uses as ${{name}}, in order of first use."""
    names = []
    for found in PLACEHOLDER.findall(value or ""):
        if found not in names:
            names.append(found)
    return names


def fill(value: str, values: dict, encode: Callable[[str], str]) -> str:
    """`value` with every ${{name}} replaced by encode(values[name])."""
    return PLACEHOLDER.sub(lambda match: encode(values[match.group(1)]), value)


def url_part(value: str) -> str:
    """A parameter in a URL: percent-encoded whole (a `/`, `&` or `#` in it stays data)."""
    from urllib.parse import quote

    return quote(value, safe="")


def json_string_part(value: str) -> str:
    """A parameter in a JSON body: escaped as inside a JSON string (write "${{name}}")."""
    import json

    return json.dumps(value)[1:-1]


class LocalFile(str):
    """A file on the deployer's machine (its path), read when the inventory is read; its bytes
    travel to the host as a credential."""

    content: bytes = b""


# While `recording_local_reads()` is on: every local file read (its path -> (limit, the bytes
# read)), in [defaults] too, whether a job kept the value or not. The last push's record
# (deployer/lastpush.py) is keyed by them.
_LOCAL_READS = contextvars.ContextVar("local_reads", default=None)


@contextlib.contextmanager
def recording_local_reads():
    reads: dict = {}
    token = _LOCAL_READS.set(reads)
    try:
        yield reads
    finally:
        _LOCAL_READS.reset(token)


def read_local_path(path: str, limit: int) -> bytes:
    """Up to `limit` bytes of the file at `path` (OSError if it cannot be read)."""
    with open(path, "rb") as handle:
        return handle.read(limit)


def _read_local(value: str, limit: int) -> bytes:
    """Up to `limit` bytes of a file on the deployer's machine, `~` expanded as ssh and the shell
    do; Invalid names the file as written and, when `~` changed it, as opened."""
    import os

    path = os.path.expanduser(value)
    try:
        content = read_local_path(path, limit)
    except OSError as error:
        shown = value if path == value else "%s (%s)" % (value, path)
        raise Invalid("cannot read %s: %s" % (shown, error.strerror)) from None
    reads = _LOCAL_READS.get()
    if reads is not None:
        reads[path] = (limit, content)
    return content


def readable_file(value: str) -> str:
    """A file the deployer must be able to read later (an SSH key): checked when the inventory is
    read, so that `validate` finds a wrong path, not the first `push`. The path as written."""
    _read_local(value, 0)
    return value


def local_file(value: str) -> LocalFile:
    content = _read_local(value, MAX_CREDENTIALS + 1)  # a run cannot take more: never read a huge file whole
    if len(content) > MAX_CREDENTIALS:
        raise Invalid("%s is over %d bytes, more than a run's credentials may hold" % (value, MAX_CREDENTIALS))
    found = LocalFile(value)
    found.content = content
    return found


def secret_text(value: str) -> str:
    if not value:
        raise Invalid("is empty")
    return text(value)


# --- the declaration -----------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One key of a [job:NAME] section (and of [defaults] unless `job_only`).

    How it reaches the trigger: `flag`, an argument on its command line, written when set, or
    always with `always` (so that a unit says what it does); or `credential`, the name of a
    root-only file that systemd hands to the run (LoadCredential=), for anything secret or
    too large for a command line: never in a unit file, `ps`, `systemctl show` or the journal.
    Neither: the deployer alone uses it.

    `default` is the one default: the inventory's, the trigger's argument parser's (a unit that
    leaves the flag out) and run.JobSpec's (generated from JOB_OPTIONS) alike.
    """

    key: str
    parse: Callable[[str], Any]
    default: Any = None
    flag: Optional[str] = None
    always: bool = False
    job_only: bool = False
    required: bool = False
    multiline: bool = False
    format: Callable[[Any], str] = str
    credential: Optional[str] = None
    # A flag whose value may hold a secret (the URL's password, an api_key): the command line
    # carries shown(value), and when that differs the value itself travels as the `credential`.
    shown: Optional[Callable[[Any], str]] = None
    content: Callable[[Any], bytes] = lambda value: str(value).encode()  # the credential's bytes
    help: str = ""

    @property
    def dest(self) -> str:
        """The Python name of the key (`async` is a keyword: `async_`)."""
        import keyword

        return self.key + "_" if keyword.iskeyword(self.key) else self.key


JOB_OPTIONS = (
    Option("url", url, flag="--url", always=True, job_only=True, required=True, credential="url", shown=redact_url,
           help="the job endpoint (http:// or https://); one with a password or a secret-looking query "
           "value (api_key=, token=) travels as a credential, the unit and `ps` show it redacted"),
    Option("schedule", text, job_only=True,
           help="cron (5 fields, @macros, CRON_TZ=) or Quartz (6-7 fields)"),
    Option("on_calendar", calendar_lines, default=(), job_only=True, multiline=True,
           help="native systemd calendar expressions, one per line"),
    Option("method", method, default="POST", flag="--method", always=True, help="the HTTP method"),
    Option("timeout", timeout, default=60, flag="--timeout", always=True, format=seconds_text,
           help="the whole run, retries included (default 60s)"),
    Option("retries", retries, default=2, flag="--retries", always=True,
           help="extra attempts after a connection error, a timeout, a 5xx, a 429 or a 409 (one the "
                "service may have started only with idempotent = true, or a GET/PUT/DELETE)"),
    Option("expect_status", expect_status, default="2xx", flag="--expect-status", always=True,
           help="accepted statuses: 2xx, 200, 200-204, comma-separated"),
    Option("expect_json", expect_json, default="", flag="--expect-json",
           help="rules on the JSON body: dotted.path=JSON literal, comma-separated"),
    Option("idempotent", boolean, default=False, flag="--idempotent", format=lambda value: str(value).lower(),
           help="the service dedupes on Idempotency-Key: an attempt it may have seen (a read timeout, a "
                "500/502/504) may be sent again; without it a POST is sent again only if it certainly "
                "did not arrive (connect errors, 429, 503)"),
    Option("async", async_mode, default="none", flag="--async",
           help="poll: a 202 Accepted with a Location is followed (GET) until the work ends, within timeout"),
    Option("poll_every", poll_every, default=10, flag="--poll-every", format=seconds_text,
           help="with async = poll: the first wait between polls (grows to 1 min; Retry-After wins)"),
    Option("ping_url", optional(url), flag="--ping-url",
           help="Healthchecks-style heartbeat: /start, then success or /fail"),
    Option("body", text, default="", credential="body", help="the request body (may hold ${SECRETS}: "
           "it travels as a credential, never on a command line)"),
    Option("content_type", text, default="application/json", flag="--content-type",
           help="the body's Content-Type"),
    Option("headers", headers, default=(), credential="headers", multiline=True,
           content=lambda value: header_lines(value).encode(),
           help="request headers, one `Name: value` per line (e.g. Authorization: Bearer ${TOKEN})"),
    Option("ca_file", local_file, credential="ca.pem", content=lambda value: value.content,
           help="CA bundle (PEM) to verify the service's TLS certificate, instead of the host's"),
    Option("client_cert", local_file, credential="client.pem", content=lambda value: value.content,
           help="client certificate (PEM) for mutual TLS"),
    Option("client_key", local_file, credential="client.key", content=lambda value: value.content,
           help="the client certificate's private key (PEM)"),
    Option("sign_secret", secret_text, credential="sign-secret", content=lambda value: str(value).encode(),
           help="HMAC-SHA256 key: each request is signed (X-Deployer-Signature; see docs/signing.md)"),
    Option("params", params, default=(), flag="--params", job_only=True, multiline=True, format=params_text,
           help="run parameters and their defaults, `name=default` comma-separated: ${{name}} in the url "
                "or body is the default on a scheduled run, or `deployer run JOB --set name=value`"),
    Option("timezone", timezone, default="UTC", help="the IANA zone the schedule is in"),
    Option("alert", optional(name), help="the [alert:NAME] told when a run fails; empty: none"),
    Option("alert_after", alert_after, default=1,
           help="failed runs in a row before the first alert of a failing streak (default 1)"),
    Option("alert_repeat", alert_repeat,
           help="while it keeps failing: each (every failed run alerts), never (the first alert only) or a "
                "duration between reminders; default each with alert_after = 1, else never"),
    Option("alert_late", optional(watched_duration),
           help="alert when a slot has not started this long after its time (timer stopped, host held, "
                "clock wrong), once per late slot, and again when a run starts; at least 30s; default off"),
    Option("alert_long", optional(watched_duration),
           help="alert when a run is still going this long after it started, once per run, and when it "
                "ends; at least 30s; default off"),
    Option("host", name, help="the [host:NAME] that runs the job"),
    # Chaining (issue 23 item 8): no flag of their own; the renderer turns them into the parent's
    # OnSuccess=/OnFailure= and the child's --chained-from.
    Option("after", optional(name), job_only=True,
           help="run when this job (same host) succeeded, for the same slot; no schedule of its own"),
    Option("on_failure_run", optional(name), job_only=True,
           help="the job (same host, no schedule of its own) run when this one failed, for the same slot"),

    Option("catch_up", catch_up, default="once", flag="--catch-up", format=catch_up_text,
           help="a slot missed while the host was down: once (run the latest one at boot, the default), "
                "none (skip it) or a duration such as 2h (skip it when missed by more); a skipped slot is "
                "recorded (history, status, metrics), not alerted"),
    Option("concurrency", concurrency, default="forbid", flag="--concurrency",
           help="a slot that comes while the previous run is still going: forbid (it does not start beside "
                "it: the latest such slot runs when that run ends, each earlier one is skipped and recorded) "
                "or replace (the run still going is ended and the new slot's run starts on time)"),
)
OPTIONS_BY_KEY = {option.key: option for option in JOB_OPTIONS}
TRIGGER_OPTIONS = tuple(option for option in JOB_OPTIONS if option.flag)
CREDENTIAL_OPTIONS = tuple(option for option in JOB_OPTIONS if option.credential)


def is_set(option: Option, value: Any) -> bool:
    return value not in (None, "", ()) and value != option.default


def command_line(values: dict) -> list:
    """The trigger's arguments for a job's option values, in declaration order."""
    argv = []
    for option in TRIGGER_OPTIONS:
        value = values.get(option.key, option.default)
        if option.always or is_set(option, value):
            argv += [option.flag, option.format(option.shown(value) if option.shown else value)]
    return argv


def credentials_size(found: dict) -> int:
    """What systemd counts against CREDENTIALS_LIMIT: each credential's name and bytes."""
    return sum(len(name) + len(content) for name, content in found.items())


def credentials(values: dict) -> dict:
    """credential name -> bytes, for the credential options a job sets."""
    return {o.credential: o.content(values[o.key]) for o in CREDENTIAL_OPTIONS if is_set(o, values.get(o.key))
            and (o.shown is None or o.shown(values[o.key]) != values[o.key])}
