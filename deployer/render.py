"""Jobs -> the exact files the cron host must hold (units from units/*.j2, plus the trigger)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from . import systemd
from .contract import paths, unitkeys
from .contract.options import EXIT_FENCED
from .contract.channels import CHANNEL_TYPES, AlertPolicy
from .contract.options import OPTIONS_BY_KEY, command_line, credentials, redact_url
from .models import Alert, Host, Inventory, Job, ManagedFile, is_chained
from .schedule import to_calendar



# The memory ceiling of one job run or alert (a run needs ~30 MB; the body read is capped at 1 MiB).
UNIT_MEMORY_MAX = "128M"


def templates_dir():
    """The unit templates, as package data of `deployer` (an importlib.resources Traversable).

    units/ at the top of the repository is their one source; deployer/units links to it, so that
    a checkout or an editable install reads it in place, and a wheel (hence pip, `pip install
    --user`, pipx) carries the files themselves as deployer/units/*.j2. Read through
    importlib.resources, never a path beside sys.prefix, so a zipped install works too.
    """
    from importlib.resources import files

    units = files("deployer").joinpath("units")
    if not units.joinpath("job.service.j2").is_file():
        raise FileNotFoundError("deployer's unit templates (deployer/units/*.j2) are missing from this "
                                "installation: reinstall it from a wheel or a checkout")
    return units


@functools.lru_cache(maxsize=None)
def _environment():
    import jinja2

    units = templates_dir()

    def load(name: str):
        template = units.joinpath(name)
        if not template.is_file():
            return None  # jinja2's TemplateNotFound
        return template.read_text(encoding="utf-8"), f"units/{name}", lambda: True

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.globals.update(memory_max=UNIT_MEMORY_MAX)
    env.filters.update(
        exec_line=systemd.exec_line,
        specifiers=systemd.escape_specifiers,
        seconds=systemd.seconds,
    )
    return env


def trigger_args(job: Job, values: Optional[dict] = None) -> list[str]:
    """The trigger's arguments for a job (the unit's, and the Kubernetes container's).
    `values`: option_values(job), when the caller has them."""
    return ["--job", job.name] + command_line(option_values(job) if values is None else values)


# (inventory key, Job attribute) of every option: Option.dest is computed on each read, and a
# render of 10,000 jobs read it 620,000 times.
_OPTION_ATTRIBUTES = tuple((key, option.dest) for key, option in OPTIONS_BY_KEY.items())


def option_values(job: Job) -> dict:
    """inventory key -> the job's value, for every option."""
    return {key: getattr(job, dest) for key, dest in _OPTION_ATTRIBUTES}


# -I -S: no site-packages to scan and no PYTHON* variables to honour on every start; the
# zipapp carries all it imports.
PYTHON_FLAGS = ["-I", "-S"]


def trigger_argv(job: Job, python: str, parents: tuple = (), values: Optional[dict] = None) -> list[str]:
    """`parents`: the jobs that start this chained one (it has no calendar: it runs their slot)."""
    argv = [python, *PYTHON_FLAGS, paths.TRIGGER_PATH] + trigger_args(job, values)
    if is_chained(job):
        for parent in parents:
            argv += ["--chained-from", parent]
        return argv
    calendar = calendar_of(job)
    if calendar.resolution == 1:
        argv += ["--resolution", "1"]  # native and Quartz calendars may fire every second
    for line in () if calendar.on_boot else calendar.lines:
        argv += ["--calendar", line]  # the timer's own calendar: the run names its exact slot from it
    return argv


def fence_argv(job: Job, python: str, through: bool = False) -> list[str]:
    """The job service's ExecStopPost=: after a fenced run only, stop the job's timer (as root).
    `through` (a job whose runs leave what they accounted for, issue 23 item 6): first mark the
    moment the unit ends on the run's paths.THROUGH_ENDED (a shell redirection: no process), so the
    next run records the slots that came while the run was still exiting."""
    import shlex

    stop = " ".join(shlex.quote(a) for a in [python, *PYTHON_FLAGS, paths.TRIGGER_PATH, "--fenced", "--job", job.name])
    ended = shlex.quote(f"{paths.through_dir(job.name)}/{paths.THROUGH_ENDED}")
    # Root writes in a directory the job's dynamic user owns: never through a link it planted
    # (the run's processes are gone by now: none can swap the file between the test and the write).
    mark = f"test -f {ended} && ! test -h {ended} && : > {ended}; " if through else ""
    return ["/bin/sh", "-c", f'{mark}test "$EXIT_STATUS" != {EXIT_FENCED} || exec {stop}']


# How many of a parent's latest slots its published file keeps: a child that starts later than
# this many parent runs after its own (a loaded host, a parent every second) is keyed by the
# parent's run instead (host/chain.py).
CHAIN_KEEP = 100


def publish_argv(job: str) -> list[str]:
    """The parent's ExecStopPost= (as root): its run's slot, appended to the world-readable
    paths.chain_slot as one JSON line, the last CHAIN_KEEP kept. A list, not the last slot alone:
    a child started late (a loaded host) may come after the parent's next run has ended."""
    import shlex

    left, published = shlex.quote(f"{paths.chain_dir(job)}/{paths.CHAIN_SLOT}"), shlex.quote(paths.chain_slot(job))
    return ["/bin/sh", "-c", f"test -r {left} || exit 0; umask 022; "
            f"{{ tail -n {CHAIN_KEEP - 1} {published} 2>/dev/null; cat {left}; echo; }} > {published}.tmp "
            f"&& mv -f {published}.tmp {published}"]


def calendar_of(job: Job):
    return to_calendar(job.schedule, job.on_calendar, job.timezone)


# An undelivered alert is sent again this long after (the alert unit's RestartSec=): a channel
# that was down hears within about this of coming back, and a down channel costs one short
# process per failed job this often.
ALERT_RESTART_SEC = 20
# The boot sweep waits this long after boot (the network is up; a failing run shows now).
ALERT_BOOT_DELAY = 10


def alert_argv(alert: Alert, host: Host, recovered: bool = False, mode: str = "") -> list[str]:
    """mode: "" (ExecStart), "sweep" (ExecStopPost) or "boot" (the channel's boot sweep)."""
    argv = [host.python, *PYTHON_FLAGS, paths.TRIGGER_PATH, "--alert", "--channel", alert.name, "--type", alert.type,
            "--host-name", host.name]
    argv += [] if mode == "boot" else ["--job", systemd.Specifier("%i")]
    if recovered:
        argv.append("--recovered")
    if mode:
        argv.append("--" + mode)
    for field in plain_fields(alert):  # its type's fields that are not secret (channels.py)
        argv += [field.flag, str(alert.value(field.key))]
    return argv


def plain_fields(alert: Alert) -> list:
    """The channel's fields it sets that go as arguments; the secret ones are credential_files."""
    return [f for f in CHANNEL_TYPES[alert.type].fields if not f.secret and alert.value(f.key)]


def credential_files(alert: Alert) -> tuple[ManagedFile, ...]:
    """Root-only files that systemd hands to the alert unit with LoadCredential=: the channel's
    secret fields it sets (token, signing secret, ...), each named by its key."""
    return tuple(ManagedFile(paths.credential(alert.name, f.key), str(alert.value(f.key)).encode(), 0o600, secret=True)
                 for f in CHANNEL_TYPES[alert.type].fields if f.secret and alert.value(f.key))


def alert_units(alert: Alert, host: Host) -> tuple[ManagedFile, ...]:
    """The channel's OnFailure= handler template and its credentials."""
    credentials = credential_files(alert)
    template = _environment().get_template("alert.service.j2")
    units = []
    for recovered, boot, name in ((False, False, paths.alert_template(alert.name)),
                                  (True, False, paths.recovery_template(alert.name)),
                                  (False, True, paths.boot_alert_unit(alert.name, "service"))):
        text = template.render(alert=alert, marker=paths.MARKER, recovered=recovered, boot=boot,
                               argv=alert_argv(alert, host, recovered, "boot" if boot else ""),
                               sweep_argv=None if boot or recovered else alert_argv(alert, host, False, "sweep"),
                               restart_sec=ALERT_RESTART_SEC, failing_dir=paths.FAILING_DIR, sandbox="strict",
                               state_name=paths.ALERT_STATE_NAME,
                               credentials=[(f.path.rsplit(".", 1)[1], f.path) for f in credentials])
        units.append(ManagedFile(f"{paths.UNIT_DIR}/{name}", text.encode()))
    timer = _environment().get_template("alert-boot.timer.j2").render(
        alert=alert, marker=paths.MARKER, delay=f"{ALERT_BOOT_DELAY}s", service=paths.boot_alert_unit(alert.name, "service"))
    # Enabled for boot only: started now it would fire at once.
    units.append(ManagedFile(f"{paths.UNIT_DIR}/{paths.boot_alert_unit(alert.name, 'timer')}", timer.encode(), start=False))
    return tuple(units) + credentials


def job_credentials(job: Job, epoch: Optional[int] = None, values: Optional[dict] = None) -> dict[str, ManagedFile]:
    """credential name -> the root-only file with a secret or large option (headers, body, keys),
    which systemd hands to the run with LoadCredential=; and the job's epoch on this host (not
    secret, shown in a plan: it changes only when the job's owner does). `values`: option_values(job)."""
    values = option_values(job) if values is None else values
    files = {name: ManagedFile(paths.job_credential(job.name, name), content, 0o600, secret=True)
             for name, content in credentials(values).items()}
    if epoch is not None:  # a cron host's (Kubernetes passes its own on the command line)
        files[paths.EPOCH_CREDENTIAL] = epoch_file(job.name, epoch)
    return files


def epoch_file(job: str, epoch: int) -> ManagedFile:
    return ManagedFile(paths.job_credential(job, paths.EPOCH_CREDENTIAL), b"%d\n" % epoch, 0o600)


def with_epochs(files: Iterable[ManagedFile], epochs: Mapping[str, int]) -> tuple[ManagedFile, ...]:
    """`files` with each job's epoch credential holding the epoch in `epochs`, in place: a push
    renders before it has read the host, which decides the epochs (deploy.plan_push)."""
    granted = {f.path: f for f in (epoch_file(job, epoch) for job, epoch in epochs.items())}
    return tuple(granted.get(f.path, f) for f in files)


# A native or Quartz calendar's period is the longest gap between its next PERIOD_RUNS runs from
# this fixed instant (a Monday), as systemd computes them: the same bytes on every push.
PERIOD_BASE = 1798416000  # 2026-12-28 00:00:00 UTC
PERIOD_RUNS = 60


def periods(jobs) -> dict:
    """job name -> the longest gap in seconds between two of its runs (0: @reboot, or fewer than
    two runs). Cron schedules are computed here (schedule.cron_period); the other calendars in
    one systemd-analyze call for all of them."""
    from datetime import datetime, timezone

    from .schedule import cron_period, next_runs_many

    found, native = {}, {}
    for job in jobs:
        calendar = calendar_of(job)
        if is_chained(job) or calendar.on_boot or not calendar.lines:
            found[job.name] = 0
        elif calendar.kind == "cron":
            found[job.name] = cron_period(job.schedule)
        else:
            native.setdefault(calendar.lines, []).append(job.name)
    unique = sorted(native)
    runs = next_runs_many(unique, PERIOD_RUNS, base=datetime.fromtimestamp(PERIOD_BASE, timezone.utc))
    for lines, r in zip(unique, runs):
        for name in native[lines]:
            found[name] = int(max([(b - a).total_seconds() for a, b in zip(r, r[1:])] or [0]))
    return found


def metrics_timing(job: Job, period: int) -> unitkeys.Timing:
    """The timer's X-Deployer-Metrics value: what the collector cannot learn from systemd."""
    return unitkeys.Timing(period, job.timeout)


def alert_policy(job: Job) -> Optional[AlertPolicy]:
    """The job's alert policy for its unit; None for a job without alerts or with the default
    (every failed run alerts), which the alert program assumes when the line is missing."""
    policy = AlertPolicy.of(job.alert_after, job.alert_repeat)
    return policy if job.alert and policy != AlertPolicy() else None


@dataclass(frozen=True)
class Chain:
    """Who a job starts and who starts it (Inventory.children / parents), for its units."""

    on_success: tuple = ()  # jobs started when it succeeded (their `after`)
    on_failure: tuple = ()  # the job started when it failed (its on_failure_run)
    parents: tuple = ()  # the jobs that start it


def chains(jobs) -> dict:
    """job name -> its Chain, for every job that starts or is started by another (one pass: a
    host of 10,000 jobs renders in linear time)."""
    found: dict = {}
    for job in jobs:
        for parent, child, how in ((job.after, job.name, "after"), (job.name, job.on_failure_run, "on_failure")):
            if not parent or not child:
                continue
            up, down = found.get(parent, Chain()), found.get(child, Chain())
            found[parent] = Chain(up.on_success + (child,) * (how == "after"),
                                  up.on_failure + (child,) * (how == "on_failure"), up.parents)
            found[child] = Chain(down.on_success, down.on_failure, tuple(sorted(set(down.parents) | {parent})))
    return found


def job_units(job: Job, python: str = "/usr/bin/python3", sandbox: str = "strict",
              period: Optional[int] = None, metrics: bool = False, epoch: int = 0,
              chain: Chain = Chain()) -> tuple[ManagedFile, ...]:
    """The .service and .timer of one job, rendered byte for byte, and its credential files.
    `metrics`: the host collects metrics (the run starts the debounce timer, the timer carries
    the job's period, computed here unless given). A chained job has no timer: its parents'
    OnSuccess=/OnFailure= start it (`chain`)."""
    env = _environment()
    service = paths.job_unit(job.name, "service")
    timer = paths.job_unit(job.name, "timer")
    values = option_values(job)
    secrets = job_credentials(job, epoch, values)
    soon = [paths.METRICS_SOON_TIMER] if metrics else []
    through = not is_chained(job) and not calendar_of(job).on_boot  # a calendar's timer: slots it may coalesce
    common = dict(job=job, marker=paths.MARKER, service=service, service_name=service[:-8], slice=paths.JOBS_SLICE,
                  sandbox=sandbox, held=paths.HELD, not_held=paths.NOT_HELD)
    service_text = env.get_template("job.service.j2").render(
        **common, argv=trigger_argv(job, python, chain.parents, values), fence_argv=fence_argv(job, python, through),
        chain_dir=paths.chain_dir(job.name).removeprefix("/run/") if chain.on_success or chain.on_failure else "",
        publish_argv=publish_argv(job.name),
        through_dir=paths.through_dir(job.name).removeprefix("/run/") if through else "",
        chained_units=[paths.job_unit(name, "service") for name in chain.on_success + chain.on_failure],
        fenced=f"{paths.FENCED_DIR}/{timer}",
        credentials=[(name, f.path) for name, f in secrets.items()], shown_url=(shown_url := redact_url(job.url)),
        request_line=unitkeys.REQUEST.line(unitkeys.Request(job.method, shown_url)),
        alert_policy_line=unitkeys.ALERT_POLICY.line(policy) if (policy := alert_policy(job)) else "",
        on_failure=([paths.instance(paths.alert_template(job.alert), job.name)] if job.alert else []) + soon
        + [paths.job_unit(name, "service") for name in chain.on_failure],
        on_success=([paths.instance(paths.recovery_template(job.alert), job.name)] if job.alert else []) + soon
        + [paths.job_unit(name, "service") for name in chain.on_success])
    service_file = ManagedFile(f"{paths.UNIT_DIR}/{service}", service_text.encode())
    if is_chained(job):
        return (service_file,) + tuple(secrets.values())
    calendar = calendar_of(job)
    if metrics and period is None:
        period = periods([job])[job.name]
    timer_text = env.get_template("job.timer.j2").render(
        **common, calendar=calendar,
        metrics_line=unitkeys.METRICS.line(metrics_timing(job, period)) if metrics else "")
    return (service_file,
            ManagedFile(f"{paths.UNIT_DIR}/{timer}", timer_text.encode(), start=not calendar.on_boot)) + tuple(secrets.values())


def render_units(jobs: Iterable[Job], python: str = "/usr/bin/python3",
                 sandbox: str = "strict", metrics: bool = False, epochs: Optional[Mapping[str, int]] = None
                 ) -> tuple[ManagedFile, ...]:
    """`epochs`: job -> its epoch on the host (deploy.grant_epochs); 0 where none is given."""
    jobs = tuple(jobs)
    gaps = periods(jobs) if metrics else {}
    linked = chains(jobs)
    epochs = epochs or {}
    return tuple(f for job in jobs for f in job_units(job, python, sandbox, gaps.get(job.name, 0), metrics,
                                                      epochs.get(job.name, 0), linked.get(job.name, Chain())))


# The debounce of the collector after runs end (paths.METRICS_SOON_TIMER).
METRICS_DELAY = "5s"


def deployer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deployer")
    except PackageNotFoundError:
        return "unknown"


def metrics_argv(host: Host) -> list[str]:
    return [host.python, *PYTHON_FLAGS, paths.TRIGGER_PATH, "--metrics", "--host-name", host.name,
            "--metrics-dir", host.metrics_dir, "--deployer-version", deployer_version()]


def metrics_units(host: Host) -> tuple[ManagedFile, ...]:
    """The collector, its every-minute heartbeat timer and its debounce timer; the heartbeat
    URL as a root-only file. None when the host has no metrics_dir."""
    if not host.metrics_dir:
        return ()
    env = _environment()
    service = env.get_template("metrics.service.j2").render(
        marker=paths.MARKER, metrics_dir=host.metrics_dir, argv=metrics_argv(host))
    heartbeat = env.get_template("heartbeat.timer.j2").render(marker=paths.MARKER, service=paths.METRICS_SERVICE)
    soon = env.get_template("metrics-soon.timer.j2").render(marker=paths.MARKER, service=paths.METRICS_SERVICE,
                                                            delay=METRICS_DELAY)
    files = (ManagedFile(f"{paths.UNIT_DIR}/{paths.METRICS_SERVICE}", service.encode()),
             ManagedFile(f"{paths.UNIT_DIR}/{paths.HEARTBEAT_TIMER}", heartbeat.encode()),
             # Enabled (for boot), never started by a push: it would fire at once.
             ManagedFile(f"{paths.UNIT_DIR}/{paths.METRICS_SOON_TIMER}", soon.encode(), start=False))
    if host.heartbeat_url:
        files += (ManagedFile(paths.HEARTBEAT_URL, str(host.heartbeat_url).encode() + b"\n", 0o600, secret=True),)
    return files


def watched_jobs(jobs) -> list:
    """The jobs the host's watcher looks at: those with an alert channel and alert_late or
    alert_long (the options need a channel to tell; without one they do nothing)."""
    return [job for job in jobs if job.alert and (job.alert_late or job.alert_long)]


def watch_argv(host: Host, send: bool = False) -> list[str]:
    return [host.python, *PYTHON_FLAGS, paths.TRIGGER_PATH] + (["--watch-send"] if send else
                                                                ["--watch", "--host-name", host.name])


def watch_units(inventory: Inventory, host: Host, jobs) -> tuple[ManagedFile, ...]:
    """The watcher's service, its sender and its timer (host/watch.py), only when some job of the host sets
    alert_late or alert_long: a host without them runs nothing more."""
    from .contract.options import WATCH_EVERY
    from .contract.unitkeys import WATCH, WatchChannel, WatchConfig, Watched

    watched = watched_jobs(jobs)
    if not watched:
        return ()
    entries = [Watched(job.name, job.alert, job.alert_late, job.alert_long,
                       () if is_chained(job) or calendar_of(job).on_boot else tuple(calendar_of(job).lines))
               for job in watched]
    alerts = [inventory.alert(name) for name in sorted({job.alert for job in watched})]
    channels = {a.name: WatchChannel(a.type, {f.key: str(a.value(f.key) or "") for f in CHANNEL_TYPES[a.type].fields
                                              if not f.secret}) for a in alerts}
    credentials = [(f"{a.name}.{f.path.rsplit('.', 1)[1]}", f.path) for a in alerts for f in credential_files(a)]
    env = _environment()
    service = env.get_template("watch.service.j2").render(
        marker=paths.MARKER, count=len(entries), every=WATCH_EVERY,
        watch_line=WATCH.line(WatchConfig(tuple(entries), channels)), argv=watch_argv(host), state=paths.WATCH_STATE,
        outbox=paths.WATCH_OUTBOX, send_service=paths.WATCH_SEND_SERVICE)
    sender = env.get_template("watch-send.service.j2").render(
        marker=paths.MARKER, argv=watch_argv(host, send=True), credentials=credentials,
        state_name=paths.ALERT_STATE_NAME, outbox_name=paths.WATCH_OUTBOX_NAME, sandbox="strict")
    timer = env.get_template("watch.timer.j2").render(marker=paths.MARKER, every=WATCH_EVERY,
                                                      service=paths.WATCH_SERVICE)
    return (ManagedFile(f"{paths.UNIT_DIR}/{paths.WATCH_SERVICE}", service.encode()),
            ManagedFile(f"{paths.UNIT_DIR}/{paths.WATCH_SEND_SERVICE}", sender.encode()),
            ManagedFile(f"{paths.UNIT_DIR}/{paths.WATCH_TIMER}", timer.encode()))


def jobs_slice(host: Host) -> ManagedFile:
    """The slice every job run of the host runs in, with the host's optional ceiling."""
    text = _environment().get_template("jobs.slice.j2").render(host=host, marker=paths.MARKER)
    return ManagedFile(f"{paths.UNIT_DIR}/{paths.JOBS_SLICE}", text.encode())


def host_files(inventory: Inventory, host_name: str, epochs: Optional[Mapping[str, int]] = None
               ) -> tuple[ManagedFile, ...]:
    """The units and credentials of one host: its jobs, and the alert channels they use."""
    host = inventory.host(host_name)
    jobs = inventory.jobs_for(host_name)
    channels = sorted({j.alert for j in jobs if j.alert})
    alerts = tuple(f for name in channels for f in alert_units(inventory.alert(name), host))
    return ((jobs_slice(host),) + render_units(jobs, host.python, host.sandbox, bool(host.metrics_dir), epochs) + alerts
            + lease_units(host) + metrics_units(host) + watch_units(inventory, host, jobs))


def preview_files(inventory: Inventory, host_names: Iterable[str]) -> tuple[tuple[str, ManagedFile], ...]:
    """`deployer render`: (where to write it, the file) for the units of each host, never a
    credential (secret, or the epoch a push grants). One host: by unit name; several: under
    HOST/, since two hosts hold units of one name with different text (an alert channel's
    names its host). Every relative path is unique, so each one written is one counted."""
    host_names = list(host_names)
    prefix = len(host_names) > 1
    return tuple((f"{name}/{f.name}" if prefix else f.name, f) for name in host_names
                 for f in host_files(inventory, name)
                 if not f.secret and f.path.startswith(paths.UNIT_DIR + "/"))


def recover_unit(python: str = "/usr/bin/python3") -> ManagedFile:
    """deployer-recover.service: at boot, before any timer, the agent (from the trigger zipapp)
    finishes a switch that a crash interrupted."""
    text = _environment().get_template("recover.service.j2").render(
        marker=paths.MARKER, journal=paths.JOURNAL, state_dir=paths.STATE_DIR, trigger=paths.TRIGGER_PATH,
        python=python)
    return ManagedFile(f"{paths.UNIT_DIR}/{paths.RECOVER_UNIT}", text.encode())


def lease_every(lease: float) -> str:
    """The renewal interval, a third of the lease, in systemd's syntax (100s, 3.333s)."""
    return f"{lease / 3:.3f}".rstrip("0").rstrip(".") + "s"


def lease_units(host: Host) -> tuple[ManagedFile, ...]:
    """The lease on the host's jobs: a timer renewing it every third of its length, and the unit
    that decides at boot, from the last renewal, whether the host holds its jobs."""
    env = _environment()
    common = dict(marker=paths.MARKER, lease_path=paths.LEASE, state_dir=paths.STATE_DIR, trigger=paths.TRIGGER_PATH)
    timer = env.get_template("lease.timer.j2").render(**common, lease=f"{host.lease:g}s", every=lease_every(host.lease),
                                                      service=paths.LEASE_SERVICE)
    service = env.get_template("lease.service.j2").render(
        **common, argv=[host.python, "-m", "deployer.host.agent", "--renew-lease", f"{host.lease:g}"])
    hold = env.get_template("hold.service.j2").render(**common, held=paths.HELD, not_held=paths.NOT_HELD,
                                                      recover=paths.RECOVER_UNIT, python=host.python)
    return (ManagedFile(f"{paths.UNIT_DIR}/{paths.LEASE_SERVICE}", service.encode()),
            ManagedFile(f"{paths.UNIT_DIR}/{paths.LEASE_TIMER}", timer.encode()),
            ManagedFile(f"{paths.UNIT_DIR}/{paths.HOLD_UNIT}", hold.encode()))


def desired_files(inventory: Inventory, host_name: str, epochs: Optional[Mapping[str, int]] = None
                  ) -> tuple[ManagedFile, ...]:
    """Everything `push --host` makes the host hold, the trigger bundle included."""
    from .bundle import trigger_bundle

    return host_files(inventory, host_name, epochs) + (recover_unit(inventory.host(host_name).python), ManagedFile(paths.TRIGGER_PATH,
                                                                                       trigger_bundle()))
