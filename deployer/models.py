"""Frozen value types passed between the modules: inventory, units, remote state, plan."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


class Secret(str):
    """A string that never shows itself in a repr, a log line or a traceback."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: Optional[int] = None  # None: ~/.ssh/config, else 22
    user: Optional[str] = None  # None: ~/.ssh/config, else the current user
    identity_file: Optional[str] = None
    known_hosts: Optional[str] = None
    host_key: str = "strict"  # strict | accept-new
    sudo: bool = False
    python: str = "/usr/bin/python3"


@dataclass(frozen=True)
class Alert:
    name: str
    type: str
    token: Secret
    secret: Optional[Secret] = None
    endpoint: Optional[str] = None


@dataclass(frozen=True)
class Job:
    name: str
    url: str
    host: str
    schedule: Optional[str] = None
    on_calendar: tuple[str, ...] = ()
    method: str = "POST"
    timezone: str = "UTC"
    timeout: int = 60  # seconds, the whole run with its retries
    retries: int = 2
    alert: Optional[str] = None
    expect_status: str = "2xx"
    expect_json: str = ""
    ping_url: Optional[str] = None


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: tuple[Host, ...]
    alerts: tuple[Alert, ...]
    jobs: tuple[Job, ...]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        from .errors import DeployerError

        known = ", ".join(h.name for h in self.hosts) or "none"
        raise DeployerError(f"{self.path}: no [host:{name}] (hosts: {known})")

    def alert(self, name: str) -> Alert:
        return next(a for a in self.alerts if a.name == name)

    def jobs_for(self, host: str) -> tuple[Job, ...]:
        return tuple(j for j in self.jobs if j.host == host)


@dataclass(frozen=True)
class ManagedFile:
    """A file the deployer owns on the cron host, with the exact bytes it must hold."""

    path: str
    content: bytes
    mode: int = 0o644
    secret: bool = False  # a credential: never shown in a diff or a log
    start: bool = True  # for a timer: start it on push (a boot-only timer would fire at once)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class RemoteState:
    """What the host holds now: the deployer's files (path -> sha256) and their text if asked."""

    files: dict[str, str] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    paused: frozenset[str] = frozenset()
    owner: Optional[str] = None  # the [host:NAME] whose jobs this machine runs, if pushed before


@dataclass(frozen=True)
class Plan:
    """What a push does. Paths are sorted; unit activation follows from the file changes."""

    add: tuple[ManagedFile, ...] = ()
    change: tuple[ManagedFile, ...] = ()
    remove: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def is_noop(self) -> bool:
        return not (self.add or self.change or self.remove)
