"""The typed protocol between the deployer (client) and the agent on the cron host.

One frozen dataclass per request and per answer, sent as JSON in an envelope that carries
PROTOCOL_VERSION: each side refuses, saying so plainly, to talk to another version. Errors
carry a code (ERROR_CODES) so that a client can tell a lock held by another push from a host
that changed since it was read. Standard library only, python3 >= 3.7 (this module runs on
the host too).
"""
import functools
import json
import typing
import zlib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, Optional, Tuple

from deployer.contract.text import duration_text as text_duration

# 1: untyped dicts with paths in the request (deployer <= 0.x). 2: this module.
PROTOCOL_VERSION = 2

# Error codes: what went wrong, for a program; the message says it for a person.
LOCKED = "locked"                  # another push holds the host lock
HOST_CHANGED = "host_changed"      # the host's files differ from the state the plan was made on
NOT_ROOT = "not_root"
WRONG_OWNER = "wrong_owner"        # the machine runs another [host:NAME]'s jobs
NOT_INSTALLED = "not_installed"    # the job asked for is not on this host
VERIFY_FAILED = "verify_failed"    # systemd-analyze verify refused the staged units
CORRUPT_STATE = "corrupt_state"    # a state file of ours is unreadable (names it and the way out)
UNMANAGED_FILE = "unmanaged_file"  # a deployer-* unit we did not write is in the way
VERSION = "version"                # the two sides speak different protocol versions
BAD_REQUEST = "bad_request"
SYSTEMD = "systemd"                # a systemctl step failed
NO_SPACE = "no_space"              # the host's disk is full
HELD = "held"                      # the host holds its jobs: a manual run needs `force`
RUNNING = "running"                # a backfill asked while the job runs: it would not start
ERROR_CODES = (LOCKED, HOST_CHANGED, NOT_ROOT, WRONG_OWNER, NOT_INSTALLED, VERIFY_FAILED, CORRUPT_STATE,
               UNMANAGED_FILE, VERSION, BAD_REQUEST, SYSTEMD, NO_SPACE, HELD, RUNNING)


class ProtocolError(Exception):
    """An answer or request that cannot be read; `code` is one of ERROR_CODES."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# -- requests and answers ---------------------------------------------------------------------

@dataclass(frozen=True)
class Held:
    """A host that holds its jobs: its lease ran out while it was down (found at boot)."""

    since: str = ""                # ISO 8601: the boot that found the lease run out
    down_for_seconds: float = 0.0  # from the last renewal before it went down to that boot
    lease_seconds: float = 0.0     # the lease it had then
    reason: str = ""               # set when it holds for another cause: the boot could not decide or
                                   # record the hold, or the hold file is unreadable


def duration_text(seconds):
    """2h13m, 4m5s, 12s: how long something took or was down, for a person (status, alerts, the
    boot log), in the one duration syntax (text.duration_text), its two largest units."""
    return text_duration(int(seconds), largest=2)


@dataclass(frozen=True)
class Takeover:
    """Jobs installed on this host for an unreachable one, recorded by `deployer move`."""

    source: str
    jobs: Tuple[str, ...] = ()
    unreachable_at: float = 0.0  # when the source was found unreachable (unix time)
    waited_seconds: float = 0.0  # how long the mover waited for the source's lease to run out
    forced: bool = False         # --force: the wait was skipped


@dataclass(frozen=True)
class StateRequest:
    contents: bool = False  # also send the text of the managed units (for `plan`'s diff)
    # The files_digest of what the client expects the host to hold (the last push's, lastpush.py):
    # the answer says only whether the host holds exactly that (`matched`), without the files
    # and the epochs (at 10,000 jobs they were 3.7 MB to encode, send and decode).
    expect: Optional[str] = None


@dataclass(frozen=True)
class StateAnswer:
    files: Dict[str, str] = field(default_factory=dict)      # path -> sha256
    contents: Dict[str, str] = field(default_factory=dict)   # unit path -> base64 text, if asked
    paused: Tuple[str, ...] = ()                             # timers kept paused
    owner: Optional[str] = None                              # the [host:NAME] last pushed here
    held: Optional[Held] = None                              # the host holds its jobs (push releases)
    epochs: Dict[str, int] = field(default_factory=dict)     # job -> its epoch here (the fence)
    matched: Optional[bool] = None                           # the files are the request's `expect`


def files_digest(files) -> str:
    """One sha256 of a path -> sha256 map (the host's files), the same whatever its order."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(("%s\0%s\n" % (path, files[path])).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


@dataclass(frozen=True)
class FileWrite:
    path: str
    content: str  # base64
    mode: int = 0o644
    start: bool = True  # a timer started by the push (False: enabled for boot only)


@dataclass(frozen=True)
class ApplyRequest:
    write: Tuple[FileWrite, ...] = ()
    remove: Tuple[str, ...] = ()
    expect: Dict[str, str] = field(default_factory=dict)  # the StateAnswer.files the plan was made on
    stamps: Dict[str, float] = field(default_factory=dict)  # added timer -> its last trigger (move)
    takeover: Optional[Takeover] = None  # recorded on the host when the jobs come from an unreachable one


@dataclass(frozen=True)
class ApplyAnswer:
    reloaded: bool = False
    started: Tuple[str, ...] = ()
    restarted: Tuple[str, ...] = ()
    stopped: Tuple[str, ...] = ()
    enabled_for_boot: Tuple[str, ...] = ()
    kept_paused: Tuple[str, ...] = ()
    recovered_interrupted_push: bool = False
    seconds: Dict[str, float] = field(default_factory=dict)
    released: Optional[Held] = None  # the hold this push ended (its jobs' timers run again)


@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class JobStatus:
    job: str
    timer: str
    service: str
    timer_state: str = ""
    enabled: str = ""
    calendar: Tuple[str, ...] = ()
    next: str = ""      # ISO 8601, "" when none
    last: str = ""
    paused: bool = False
    fenced: bool = False  # stopped by the host itself: the job's service holds a newer epoch
    doing: str = ""       # what a run in progress says it is doing (sd_notify STATUS=)
    service_state: str = ""
    result: str = ""
    exit_status: int = 0
    started: str = ""
    finished: str = ""
    # The last run as the journal remembers it (its record, else PID 1's): systemd forgets a
    # paused timer's units, and a reboot forgets every unit's last run.
    last_run: Optional["RunInfo"] = None
    skipped: int = 0  # slots skipped (catch_up, concurrency), as metrics.json counts them
    last_skipped: Optional["RunInfo"] = None


@dataclass(frozen=True)
class RunInfo:
    """One run of a job: its journal record (source "record"), or, for a run killed before it
    could write one (timeout backstop, OOM kill, power loss), what PID 1 logged (source
    "systemd": slot 0, attempts 0, reason = systemd's result such as `timeout`)."""

    run: str                 # the invocation id
    started: float           # unix seconds
    result: str              # ok | failed
    reason: str = ""
    slot: int = 0            # the scheduled slot, unix seconds; 0 when unknown
    duration: float = -1.0   # seconds; -1 when unknown
    attempts: int = 0
    http_status: Optional[int] = None
    source: str = "record"   # record | systemd
    key: str = ""            # the Idempotency-Key it sent ("" for a run without a record)
    epoch: int = 0           # the X-Deployer-Epoch it sent
    params: str = ""         # the parameter values it used, a JSON object ("" without params)
    by: str = ""             # who asked for it (a manual run): user@client
    after: str = ""          # a chained run: "<parent> <its slot> succeeded|failed" (why it ran)


@dataclass(frozen=True)
class Actor:
    """Who acts and from where, as the client says (the host adds what it knows itself: the SSH
    user and the client's address). Recorded in the host's audit trail; never a secret: the
    inventory travels as its digest only."""

    user: str = ""              # the local user running deployer
    client: str = ""            # the client machine's host name
    command: str = ""           # the deployer command: push, move, pause, run, alert test...
    inventory_sha256: str = ""  # of the inventory file's bytes
    commit: str = ""            # the inventory's git commit (40 hex digits); "" outside a work tree
    dirty: bool = False         # that work tree had uncommitted changes (or the inventory is untracked)


@dataclass(frozen=True)
class AuditEntry:
    """One action recorded on a host by its agent (contract/audit.py)."""

    time: float                 # unix seconds
    action: str                 # one of audit.ACTIONS: push, handoff, pause, resume, release, run, stop, alert_test
    outcome: str = "ok"         # ok, or the refusal's error code (ERROR_CODES)
    target: str = ""            # the job or channel acted on ("" for a whole host)
    detail: str = ""            # e.g. `3 written, 1 removed`, `slot 2026-12-01T02:00:00Z`, `forced`
    host: str = ""              # the [host:NAME] the client acted as
    ssh_user: str = ""          # the user the SSH login was (sudo's caller when it ran under sudo)
    ssh_from: str = ""          # the SSH client's address, from the SSH session on the host
    actor: Actor = field(default_factory=Actor)


@dataclass(frozen=True)
class AuditRequest:
    since: float  # unix seconds


@dataclass(frozen=True)
class AuditAnswer:
    entries: Tuple[AuditEntry, ...] = ()  # oldest first
    now: float = 0.0  # the host's clock when it answered


@dataclass(frozen=True)
class StatusAnswer:
    jobs: Tuple[JobStatus, ...] = ()
    held: Optional[Held] = None
    # Which machine answered, in this boot: sha256 of /etc/machine-id and the boot id, 32 hex
    # digits ("" when unreadable). Two [host:NAME]s with the same value are one machine; the boot
    # id tells apart clones of one image that kept its machine-id. A digest: systemd asks that
    # the machine-id itself stay private (machine-id(5)).
    machine: str = ""
    owner: Optional[str] = None  # the [host:NAME] last pushed to this machine (owner.json)
    last_push: Optional[AuditEntry] = None  # the audit trail's last successful push (None: none recorded)


@dataclass(frozen=True)
class RunRequest:
    job: str
    slot: Optional[int] = None  # backfill this slot (unix seconds) under its own key; None: a manual key
    force: bool = False  # run even on a held host (another host may run the job now)
    params: Tuple[Tuple[str, str], ...] = ()  # `deployer run --set NAME=VALUE`: (name, value) pairs


@dataclass(frozen=True)
class RunAnswer:
    ok: bool
    result: str = ""
    exit_status: int = 0
    output: str = ""  # every journal line of the run (also streamed as `@line` while it ran)
    error: str = ""
    run: Optional[RunInfo] = None  # its record, when it wrote one
    # The timer elapsed during this run and systemd merged its start into it: the agent started
    # that slot's run after this one (ISO time of the elapse; "" when it did not happen).
    merged_elapse: str = ""
    held: Optional[Held] = None  # the host held its jobs and the run was forced
    # The job was already running when asked: the agent followed that run instead of starting
    # one (ISO time it started; "" when this request started the run).
    attached: str = ""


@dataclass(frozen=True)
class StopRequest:
    job: str


@dataclass(frozen=True)
class StopAnswer:
    stopped: bool = False  # False: the job was not running (nothing to stop)
    started: str = ""      # ISO 8601: when the stopped run started
    run: Optional[RunInfo] = None  # the stopped run's record (interrupted), when it wrote one


@dataclass(frozen=True)
class LogsRequest:
    job: str
    lines: Optional[int] = None
    since: Optional[float] = None  # unix seconds
    follow: bool = False  # stream new lines as `@line` until the client goes away (no answer)


@dataclass(frozen=True)
class HistoryRequest:
    job: str
    since: float  # unix seconds


@dataclass(frozen=True)
class HistoryAnswer:
    runs: Tuple[RunInfo, ...] = ()  # oldest first
    now: float = 0.0  # the host's clock when it answered
    scheduled_since: float = 0.0  # when the job's timer, as it is now, was installed (0: not installed)


@dataclass(frozen=True)
class LogsAnswer:
    output: str = ""


@dataclass(frozen=True)
class PauseRequest:
    job: str


@dataclass(frozen=True)
class PauseAnswer:
    timer: str


@dataclass(frozen=True)
class ResumeRequest:
    job: str


@dataclass(frozen=True)
class ResumeAnswer:
    timer: str


@dataclass(frozen=True)
class HandoffRequest:
    jobs: Tuple[str, ...] = ()


@dataclass(frozen=True)
class HandoffAnswer:
    stopped: Tuple[str, ...] = ()
    at: float = 0.0  # when the timers were stopped (unix time)


@dataclass(frozen=True)
class ReleaseRequest:
    pass


@dataclass(frozen=True)
class ReleaseAnswer:
    released: Optional[Held] = None  # None: the host held nothing
    started: Tuple[str, ...] = ()    # the job timers started again


@dataclass(frozen=True)
class AlertTestRequest:
    channel: str  # an [alert:NAME] installed on the host (a job of the host alerts through it)


@dataclass(frozen=True)
class AlertTestAnswer:
    """What the channel answered a test message sent by its own alert unit on the host."""

    channel: str
    accepted: bool = False
    http_status: Optional[int] = None  # None: no answer came (refused connection, timeout, TLS)
    answer: str = ""   # the channel's verdict: `errcode 310000: keywords not in content`, `HTTP 404: ...`
    output: str = ""   # the test unit's journal lines


@dataclass(frozen=True)
class Operation:
    """One request the agent answers: the one declaration both sides read. A new command on the
    host is an entry here, its handler in agent.py (`@handles`) and the CLI command."""

    name: str
    request: type
    answer: type
    # A read: the agent's watchdog ends it if it hangs (agent.watch_reads). Reads change nothing.
    reads: bool = False
    # Finishes an interrupted switch first, so that what it reads or starts is the host as pushed.
    settles_first: bool = False


OPERATIONS = {op.name: op for op in (
    Operation("state", StateRequest, StateAnswer, reads=True, settles_first=True),
    Operation("apply", ApplyRequest, ApplyAnswer),
    Operation("status", StatusRequest, StatusAnswer, reads=True, settles_first=True),
    Operation("run", RunRequest, RunAnswer, settles_first=True),
    Operation("stop", StopRequest, StopAnswer),
    Operation("logs", LogsRequest, LogsAnswer),
    Operation("pause", PauseRequest, PauseAnswer),
    Operation("resume", ResumeRequest, ResumeAnswer),
    Operation("handoff", HandoffRequest, HandoffAnswer),
    Operation("release", ReleaseRequest, ReleaseAnswer),
    Operation("history", HistoryRequest, HistoryAnswer, reads=True),
    Operation("alert_test", AlertTestRequest, AlertTestAnswer),
    Operation("audit", AuditRequest, AuditAnswer, reads=True),
)}
OP_OF_REQUEST = {op.request: op.name for op in OPERATIONS.values()}


def operation_of(request) -> Operation:
    return OPERATIONS[OP_OF_REQUEST[type(request)]]


class AgentError(Exception):
    """A refusal the client shows as one line; `code` is one of protocol.ERROR_CODES."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Failure:
    """What a refused request answers instead of its answer type."""

    code: str
    message: str


# -- JSON ---------------------------------------------------------------------------------------

def to_json(value):
    """A dataclass (nested ones, tuples, dicts) -> JSON-ready data."""
    if is_dataclass(value):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(kind, data):
    """JSON data -> an instance of `kind` (a dataclass, Tuple[X, ...], Dict[str, X], Optional[X]...).
    Unknown keys are refused: both sides speak the same version, so one is a bug."""
    if kind is str or kind is int or kind is bool:  # first: most of a push's 30,000 files' fields
        _expect(type(data) is kind, kind, data)
        return data
    origin = getattr(kind, "__origin__", None)
    args = getattr(kind, "__args__", ()) or ()
    if origin is typing.Union:
        if data is None and type(None) in args:
            return None
        return from_json([a for a in args if a is not type(None)][0], data)
    if origin in (tuple, typing.Tuple):
        _expect(isinstance(data, list), kind, data)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(args[0], item) for item in data)
        _expect(len(args) == len(data), kind, data)
        return tuple(from_json(a, item) for a, item in zip(args, data))
    if origin in (dict, typing.Dict):
        _expect(isinstance(data, dict), kind, data)
        return {k: from_json(args[1], v) for k, v in data.items()}
    if is_dataclass(kind):
        _expect(isinstance(data, dict), kind, data)
        hints, names = _fields_of(kind)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ProtocolError(BAD_REQUEST, "%s: unknown field(s) %s" % (kind.__name__, ", ".join(unknown)))
        try:
            return kind(**{k: from_json(hints[k], v) for k, v in data.items()})
        except TypeError as error:
            raise ProtocolError(BAD_REQUEST, "%s: %s" % (kind.__name__, error))
    if kind is float:
        _expect(isinstance(data, (int, float)) and not isinstance(data, bool), kind, data)
        return float(data)
    if kind is Any:
        return data
    raise TypeError("no JSON mapping for %r" % (kind,))


@functools.lru_cache(maxsize=None)
def _fields_of(kind):
    """A dataclass's field types and names, worked out once: a push of 10,000 jobs sends 30,000 FileWrites."""
    return typing.get_type_hints(kind), frozenset(f.name for f in fields(kind))


def _expect(ok, kind, data):
    if not ok:
        raise ProtocolError(BAD_REQUEST, "expected %s, got %r" % (getattr(kind, "__name__", kind), data))


# A request larger than this goes zlib-compressed: a push of 10,000 jobs is 65 MB of JSON (every
# unit file, base64), 2.4 MB compressed in 0.1 s; the SSH channel took most of a second for it.
COMPRESS_ABOVE = 64 * 1024
ZLIB_FIRST_BYTE = b"\x78"


def encode_request(host, request, actor=None):
    """The bytes the client sends on the agent's stdin. `host`: the [host:NAME] acting; `actor`:
    who acts, from where (an Actor, for the host's audit trail)."""
    op = OP_OF_REQUEST[type(request)]
    envelope = {"version": PROTOCOL_VERSION, "op": op, "host": host, "body": to_json(request)}
    if actor is not None:
        envelope["actor"] = to_json(actor)
    raw = json.dumps(envelope).encode()
    return zlib.compress(raw, 1) if len(raw) > COMPRESS_ABOVE else raw


def decode_request(raw):
    """Agent side: bytes -> (host, request); ProtocolError(VERSION) for another client version."""
    return decode_envelope(raw)[:2]


def decode_envelope(raw):
    """Agent side: bytes (JSON, or JSON zlib-compressed) -> (host, request, Actor); an envelope
    without an actor gives Actor()."""
    try:
        if isinstance(raw, bytes) and raw[:1] == ZLIB_FIRST_BYTE:  # JSON never starts with "x"
            raw = zlib.decompress(raw)
        envelope = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (ValueError, zlib.error) as error:
        raise ProtocolError(BAD_REQUEST, "unreadable request: %s" % error)
    if not isinstance(envelope, dict):
        raise ProtocolError(BAD_REQUEST, "unreadable request")
    version = envelope.get("version", 1)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(VERSION, "the deployer speaks agent protocol %s and this agent speaks %d: %s"
                            % (version, PROTOCOL_VERSION, _advice(version)))
    if envelope.get("op") not in OPERATIONS:
        raise ProtocolError(BAD_REQUEST, "unknown operation %r" % (envelope.get("op"),))
    request_type = OPERATIONS[envelope["op"]].request
    actor = from_json(Actor, envelope.get("actor") or {})
    return envelope.get("host") or "?", from_json(request_type, envelope.get("body") or {}), actor


def encode_answer(answer):
    """Agent side: an answer dataclass or a Failure -> bytes for stdout."""
    if isinstance(answer, Failure):
        document = {"version": PROTOCOL_VERSION, "ok": False, "error": to_json(answer)}
    else:
        document = {"version": PROTOCOL_VERSION, "ok": True, "body": to_json(answer)}
    return json.dumps(document).encode()


def decode_answer(request, raw):
    """Client side: bytes -> the answer type of `request`, or a Failure. ProtocolError when the
    bytes are not an answer of this version."""
    try:
        document = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except ValueError:
        raise ProtocolError(BAD_REQUEST, "unreadable answer: %r" % (raw[:200],))
    if not isinstance(document, dict):
        raise ProtocolError(BAD_REQUEST, "unreadable answer: %r" % (raw[:200],))
    version = document.get("version", 1)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(VERSION, "the agent on the host speaks protocol %s and this deployer speaks %d: %s"
                            % (version, PROTOCOL_VERSION, _advice(version)))
    if not document.get("ok"):
        return from_json(Failure, document.get("error") or {})
    return from_json(operation_of(request).answer, document.get("body") or {})


def _advice(version):
    if isinstance(version, int) and version < PROTOCOL_VERSION:
        return "the other side is an older deployer; upgrade it (or run this version's deployer)"
    return "the other side is a newer deployer; upgrade this one"
