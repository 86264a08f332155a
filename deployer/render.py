"""Jobs -> the exact files the cron host must hold (units from units/*.j2, plus the trigger)."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Iterable

from . import systemd
from .hostside import paths
from .models import Alert, Host, Inventory, Job, ManagedFile
from .schedule import to_calendar



def templates_dir() -> Path:
    """units/ beside the package in a checkout, else where the wheel installed it."""
    for candidate in (Path(__file__).resolve().parent.parent / "units",
                      Path(sys.prefix) / "share" / "deployer" / "units"):
        if (candidate / "job.service.j2").is_file():
            return candidate
    raise FileNotFoundError("deployer unit templates (units/*.j2) are not installed")


@functools.lru_cache(maxsize=None)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(
        exec_line=systemd.exec_line,
        specifiers=systemd.escape_specifiers,
        seconds=systemd.seconds,
    )
    return env


def trigger_argv(job: Job, python: str) -> list[str]:
    argv = [python, paths.TRIGGER_PATH, "--job", job.name, "--url", job.url, "--method", job.method,
            "--timeout", f"{job.timeout}s", "--retries", str(job.retries),
            "--expect-status", job.expect_status]
    if job.expect_json:
        argv += ["--expect-json", job.expect_json]
    if job.ping_url:
        argv += ["--ping-url", job.ping_url]
    if job.schedule is None or len(job.schedule.split()) >= 6:
        argv += ["--resolution", "1"]  # native and Quartz calendars may fire every second
    return argv


def alert_argv(alert: Alert, host: Host, recovered: bool = False) -> list[str]:
    argv = [host.python, paths.TRIGGER_PATH, "--alert", "--channel", alert.name, "--type", alert.type,
            "--host-name", host.name, "--job", systemd.Specifier("%i")]
    if recovered:
        argv.append("--recovered")
    if alert.endpoint:
        argv += ["--endpoint", alert.endpoint]
    return argv


def credential_files(alert: Alert) -> tuple[ManagedFile, ...]:
    """Root-only files that systemd hands to the alert unit with LoadCredential=."""
    return tuple(ManagedFile(paths.credential(alert.name, kind), value.encode(), 0o600, secret=True)
                 for kind, value in (("token", alert.token), ("secret", alert.secret)) if value)


def alert_units(alert: Alert, host: Host) -> tuple[ManagedFile, ...]:
    """The channel's OnFailure= handler template and its credentials."""
    credentials = credential_files(alert)
    template = _environment().get_template("alert.service.j2")
    units = []
    for recovered, name in ((False, paths.alert_template(alert.name)),
                            (True, paths.recovery_template(alert.name))):
        text = template.render(alert=alert, marker=paths.MARKER, argv=alert_argv(alert, host, recovered),
                               recovered=recovered, failing_dir=paths.FAILING_DIR,
                               credentials=[(f.path.rsplit(".", 1)[1], f.path) for f in credentials])
        units.append(ManagedFile(f"{paths.UNIT_DIR}/{name}", text.encode()))
    return tuple(units) + credentials


def job_units(job: Job, python: str = "/usr/bin/python3") -> tuple[ManagedFile, ManagedFile]:
    """The .service and .timer of one job, rendered byte for byte."""
    env = _environment()
    service = paths.job_unit(job.name, "service")
    timer = paths.job_unit(job.name, "timer")
    common = dict(job=job, marker=paths.MARKER, service=service, service_name=service[:-8])
    service_text = env.get_template("job.service.j2").render(
        **common, argv=trigger_argv(job, python),
        on_failure=paths.instance(paths.alert_template(job.alert), job.name) if job.alert else None,
        on_success=paths.instance(paths.recovery_template(job.alert), job.name) if job.alert else None)
    calendar = to_calendar(job.schedule, job.on_calendar, job.timezone)
    timer_text = env.get_template("job.timer.j2").render(**common, calendar=calendar)
    return (ManagedFile(f"{paths.UNIT_DIR}/{service}", service_text.encode()),
            ManagedFile(f"{paths.UNIT_DIR}/{timer}", timer_text.encode(), start=not calendar.on_boot))


def render_units(jobs: Iterable[Job], python: str = "/usr/bin/python3") -> tuple[ManagedFile, ...]:
    return tuple(f for job in jobs for f in job_units(job, python))


def host_files(inventory: Inventory, host_name: str) -> tuple[ManagedFile, ...]:
    """The units and credentials of one host: its jobs, and the alert channels they use."""
    host = inventory.host(host_name)
    jobs = inventory.jobs_for(host_name)
    channels = sorted({j.alert for j in jobs if j.alert})
    alerts = tuple(f for name in channels for f in alert_units(inventory.alert(name), host))
    return render_units(jobs, host.python) + alerts


def recover_unit(python: str = "/usr/bin/python3") -> ManagedFile:
    """deployer-recover.service: at boot, before any timer, the agent (from the trigger zipapp)
    finishes a switch that a crash interrupted."""
    from .hostside.agent import RECOVER_UNIT

    text = _environment().get_template("recover.service.j2").render(
        marker=paths.MARKER, journal=paths.JOURNAL, state_dir=paths.STATE_DIR, trigger=paths.TRIGGER_PATH,
        python=python)
    return ManagedFile(f"{paths.UNIT_DIR}/{RECOVER_UNIT}", text.encode())


def desired_files(inventory: Inventory, host_name: str) -> tuple[ManagedFile, ...]:
    """Everything `push --host` makes the host hold, the trigger bundle included."""
    from .bundle import trigger_bundle

    return host_files(inventory, host_name) + (recover_unit(inventory.host(host_name).python),
                                                ManagedFile(paths.TRIGGER_PATH, trigger_bundle()))
