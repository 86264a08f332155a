"""Frozen value types passed between the modules: inventory, units, remote state, plan."""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from .contract.channels import Channel, Secret
from .contract.options import JOB_OPTIONS
from .contract.paths import METRICS_DIR

# An [alert:NAME] is the channel record the alert sender delivers through.
Alert = Channel
__all__ = ["Alert", "Secret"]


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
    sandbox: str = "strict"  # strict | fast (job units without the mount directives)
    # The ceiling of all job runs together (deployer-jobs.slice); None: no limit.
    cpu_weight: Optional[int] = None
    memory_max: Optional[str] = None
    tasks_max: Optional[int] = None
    # node_exporter's textfile directory ("" = no metrics), and a URL pinged every minute.
    metrics_dir: str = METRICS_DIR
    heartbeat_url: Optional[str] = None
    # Seconds the host's lease on its jobs lasts: back after longer than this, it holds them.
    lease: float = 300.0


def _job_fields():
    required = [o for o in JOB_OPTIONS if o.required]
    return ([("name", str), ("host", str)] + [(o.dest, Any) for o in required] +
            [(o.dest, Any, field(default=o.default)) for o in JOB_OPTIONS if not o.required and o.key != "host"])


# One [job:NAME]: its name, its host, and a field per option of options.JOB_OPTIONS.
# Made in this module ("__module__"), not in `types`: its generated code is compiled once per
# machine as every class of ours (contract/process.py).
Job = make_dataclass("Job", _job_fields(), frozen=True, namespace={"__module__": __name__})
Job.__doc__ = "One [job:NAME] with every option of options.JOB_OPTIONS resolved ([defaults] applied)."


def is_chained(job) -> bool:
    """A job another one starts (`after =`, or named by an `on_failure_run =`): it has no calendar
    and no timer of its own (the inventory allows no calendar only then)."""
    return job.schedule is None and not job.on_calendar


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: tuple[Host, ...]
    alerts: tuple[Alert, ...]
    jobs: tuple[Job, ...]
    # (section, key) -> the environment variable a value was read from (`token = ${DINGTALK_TOKEN}`):
    # what an export tells its reader to set, by the name the inventory gives it.
    variables: dict = field(default_factory=dict, compare=False)

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

    def children(self, parent: str) -> tuple[tuple[str, Job], ...]:
        """(how, job) for each job `parent` starts: "after" (its success) or "on_failure" (its failure)."""
        by_name = {j.name: j for j in self.jobs}
        found = [("after", j) for j in self.jobs if j.after == parent]
        failure = next((j.on_failure_run for j in self.jobs if j.name == parent), None)
        return tuple(found) + ((("on_failure", by_name[failure]),) if failure in by_name else ())

    def parents(self, child: str) -> tuple[tuple[str, str], ...]:
        """(how, parent name) for each job that starts `child`."""
        return self.all_parents().get(child, ())

    def all_parents(self) -> dict:
        """child -> ((how, parent name), ...) for every chained job, in one pass."""
        found: dict = {}
        for j in self.jobs:
            if j.after:
                found[j.name] = found.get(j.name, ()) + (("after", j.after),)
            if j.on_failure_run:
                found[j.on_failure_run] = found.get(j.on_failure_run, ()) + (("on_failure", j.name),)
        return found

    def channels_of(self, host: str) -> tuple[str, ...]:
        """The alert channels a push installs on `host`: those its jobs alert through."""
        return tuple(sorted({j.alert for j in self.jobs_for(host) if j.alert}))


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
    held: Optional[Any] = None  # protocol.Held when the host holds its jobs (a push releases them)
    epochs: dict[str, int] = field(default_factory=dict)  # job -> its epoch on the host (the fence)


@dataclass(frozen=True)
class Plan:
    """What a push does. Paths are sorted; unit activation follows from the file changes."""

    add: tuple[ManagedFile, ...] = ()
    change: tuple[ManagedFile, ...] = ()
    remove: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()  # no longer wanted, but left in place (push --no-prune)

    @property
    def is_noop(self) -> bool:
        return not (self.add or self.change or self.remove)
