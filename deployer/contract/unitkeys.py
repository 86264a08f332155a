"""The job facts the renderer writes into unit text and the host programs read back: one codec.

systemd ignores keys that start with X-, so a unit can carry what a host program needs to know
about its job: what it calls (the alert's message), its alert policy, its timer's period and
timeout (the metrics collector), what the watcher watches. Each fact is one `Key` here: its typed
value, the `encode` that deployer/render.py writes the line with (`Key.line`), and the `decode`
that alert.py, metrics.py and watch.py read it back with (`Key.read`, from the text, or
`Key.read_unit`, from the installed unit). Nothing else writes or parses these lines.

The job's alert channel is read the same way (`alert_channel`), from the OnFailure= line the
renderer writes (paths.alert_template): no X- key, but the same kind of fact.

What a host reads can be a unit an older deployer wrote: a line that is missing or that does not
decode is the key's default, never an error (the watcher's configuration has none: it cannot
run without it). Standard library only: this module ships to the host.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Generic, Mapping, Optional, Tuple, TypeVar

from deployer.contract import paths
from deployer.contract.channels import AlertPolicy

T = TypeVar("T")


# -- the unit text: one reader of lines, one reader of files -----------------------------------------


def value_of(unit_text: str, key: str) -> Optional[str]:
    """The value of the first `key=` line of a unit's text; None when it has none. Lines end at
    "\\n" only, as systemd reads them (str.splitlines would also break at \\x85 or \\u2028, which
    a Description= may hold, and let a part of a line pass for a key)."""
    prefix = key + "="
    for line in unit_text.split("\n"):
        if line.startswith(prefix):
            return line[len(prefix):].rstrip("\r")
    return None


def unit_text(name: str, unit_dir: Optional[str] = None) -> str:
    """The text of the installed unit `name` (under paths.UNIT_DIR, looked up when called; or
    `unit_dir`); "" when it cannot be read (pruned since, never installed): a unit without lines."""
    try:
        with open(os.path.join(unit_dir or paths.UNIT_DIR, name), encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return ""


@dataclass(frozen=True)
class Key(Generic[T]):
    """One X-Deployer-* key: its name (paths.*_KEY), its value's default (None: the line is
    required), and the value's codec. `decode` returns the default for what it cannot read
    (raises ValueError when there is none)."""

    name: str
    default: Optional[T]
    encode: Callable[[T], str]
    decode: Callable[[str], T]

    def line(self, value: T) -> str:
        """The unit line, as the renderer writes it."""
        return f"{self.name}={self.encode(value)}"

    def read(self, unit_text: str) -> T:
        """The value in a unit's text: the default when the line is missing or does not decode."""
        raw = value_of(unit_text, self.name)
        if raw is None:
            if self.default is None:
                raise ValueError(f"no {self.name} line")
            return self.default
        return self.decode(raw)

    def read_unit(self, name: str, unit_dir: Optional[str] = None) -> T:
        """The value in the installed unit `name` (an unreadable unit has no line)."""
        try:
            return self.read(unit_text(name, unit_dir))
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None


def _json_object(text: str) -> dict:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    return data


# -- X-Deployer-Request, in a job's .service: what it calls ------------------------------------------


@dataclass(frozen=True)
class Request:
    """The job's METHOD and URL (without its password: redacted by the renderer), for its alert."""

    method: str = ""
    url: str = "(unknown)"


def _encode_request(request: Request) -> str:
    # ensure_ascii: one line of ASCII whatever the URL holds.
    return json.dumps({"method": request.method, "url": request.url}, ensure_ascii=True)


def _decode_request(text: str) -> Request:
    try:
        data = _json_object(text)
        method, url = data["method"], data["url"]
    except (ValueError, KeyError, TypeError):
        return Request()
    if not isinstance(method, str) or not isinstance(url, str):
        return Request()
    return Request(method, url)


REQUEST: Key[Request] = Key(paths.REQUEST_KEY, Request(), _encode_request, _decode_request)


# -- X-Deployer-Alert-Policy, in a job's .service: when its alerts go out -----------------------------


def _encode_policy(policy: AlertPolicy) -> str:
    return json.dumps({"after": policy.after, "repeat": policy.repeat}, sort_keys=True)


def _decode_policy(text: str) -> AlertPolicy:
    """Anything unreadable is the default: a job alerts on every failed run rather than never."""
    try:
        data = _json_object(text)
        after, repeat = int(data["after"]), data["repeat"]
    except (ValueError, KeyError, TypeError):
        return AlertPolicy()
    if after < 1 or not (repeat in ("each", "never") or (isinstance(repeat, (int, float)) and repeat > 0)):
        return AlertPolicy()
    return AlertPolicy(after, repeat)


# Written only when the policy is not the default (the renderer leaves the line out).
ALERT_POLICY: Key[AlertPolicy] = Key(paths.ALERT_POLICY_KEY, AlertPolicy(), _encode_policy, _decode_policy)


# -- X-Deployer-Metrics, in a job's .timer: what the collector cannot learn from systemd --------------


@dataclass(frozen=True)
class Timing:
    """Seconds: the longest gap between two of the job's slots (0: @reboot, or unknown), and its
    timeout (the whole run, retries included)."""

    period: float = 0.0
    timeout: float = 0.0


def _number(value: float):
    """3600 rather than 3600.0 in the line: a whole number is written as an integer."""
    return int(value) if float(value).is_integer() else value


def _encode_timing(timing: Timing) -> str:
    return json.dumps({"period": _number(timing.period), "timeout": _number(timing.timeout)}, sort_keys=True)


def _decode_timing(text: str) -> Timing:
    try:
        data = _json_object(text)
        return Timing(float(data.get("period") or 0), float(data.get("timeout") or 0))
    except (ValueError, TypeError):
        return Timing()


# Written only on a host that collects metrics.
METRICS: Key[Timing] = Key(paths.METRICS_KEY, Timing(), _encode_timing, _decode_timing)


# -- X-Deployer-Watch, in the watcher's service: what it watches --------------------------------------


@dataclass(frozen=True)
class Watched:
    """One job the watcher looks at: its thresholds (seconds; None: off), its alert channel, and
    its timer's calendar lines (empty: no slots to be late for: chained, @reboot)."""

    job: str
    channel: str
    late: Optional[float] = None
    long: Optional[float] = None
    calendar: tuple = ()


@dataclass(frozen=True)
class WatchChannel:
    """An alert channel the watcher tells, as its sender needs it: its type and the type's fields
    that are not secret (channels.Field; the endpoint, where it has one). Never a token."""

    type: str
    values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WatchConfig:
    """The watcher's whole configuration: its jobs (sorted by name) and their channels."""

    watched: Tuple[Watched, ...] = ()
    channels: Mapping[str, WatchChannel] = field(default_factory=dict)


def _encode_watch(config: WatchConfig) -> str:
    return json.dumps({"jobs": {w.job: {"channel": w.channel, "late": w.late, "long": w.long,
                                        "calendar": list(w.calendar)} for w in config.watched},
                       "channels": {name: {**c.values, "type": c.type} for name, c in config.channels.items()}},
                      sort_keys=True, separators=(",", ":"))


def _decode_watch(text: str) -> WatchConfig:
    """ValueError for anything unreadable: the watcher has no default to fall back on."""
    try:
        data = _json_object(text)
        watched = tuple(Watched(job, str(v["channel"]), v.get("late"), v.get("long"), tuple(v.get("calendar") or ()))
                        for job, v in sorted(data["jobs"].items()))
        channels = {str(name): WatchChannel(str(c["type"]), {str(k): str(v or "") for k, v in c.items() if k != "type"})
                    for name, c in data["channels"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"unreadable {paths.WATCH_KEY} value: {error!r}") from None
    return WatchConfig(watched, channels)


WATCH: Key[WatchConfig] = Key(paths.WATCH_KEY, None, _encode_watch, _decode_watch)


# -- OnFailure=, in a job's .service: its alert channel ----------------------------------------------


def alert_channel(unit_text: str) -> str:
    """The job's alert channel, from the OnFailure= line that starts its alert template
    (paths.alert_template, first on the line); "" for a job without alerts."""
    prefix = "OnFailure=" + paths.UNIT_PREFIX + "alert-"
    for line in unit_text.split("\n"):
        if line.startswith(prefix) and "@" in line:
            return line[len(prefix):].split("@", 1)[0]
    return ""
