"""Jobs -> the exact files the cron host must hold (units from units/*.j2, plus the trigger)."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Iterable

from . import systemd
from .models import Inventory, Job, ManagedFile
from .schedule import job_oncalendar

UNIT_DIR = "/etc/systemd/system"
LIB_DIR = "/var/lib/deployer/lib"
TRIGGER_PATH = f"{LIB_DIR}/trigger.pyz"


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
    argv = [python, TRIGGER_PATH, "--job", job.name, "--url", job.url, "--method", job.method,
            "--timeout", f"{job.timeout}s", "--retries", str(job.retries),
            "--expect-status", job.expect_status]
    if job.expect_json:
        argv += ["--expect-json", job.expect_json]
    return argv


def job_units(job: Job, python: str = "/usr/bin/python3") -> tuple[ManagedFile, ManagedFile]:
    """The .service and .timer of one job, rendered byte for byte."""
    env = _environment()
    service = systemd.job_unit(job.name, "service")
    timer = systemd.job_unit(job.name, "timer")
    common = dict(job=job, marker=systemd.MARKER, service=service, service_name=service[:-8])
    service_text = env.get_template("job.service.j2").render(
        **common, argv=trigger_argv(job, python), on_failure=None)
    timer_text = env.get_template("job.timer.j2").render(
        **common, calendar=job_oncalendar(job.schedule, job.on_calendar, job.timezone))
    return (ManagedFile(f"{UNIT_DIR}/{service}", service_text.encode()),
            ManagedFile(f"{UNIT_DIR}/{timer}", timer_text.encode()))


def render_units(jobs: Iterable[Job], python: str = "/usr/bin/python3") -> tuple[ManagedFile, ...]:
    return tuple(f for job in jobs for f in job_units(job, python))


def desired_files(inventory: Inventory, host_name: str) -> tuple[ManagedFile, ...]:
    """Everything `push --host` makes the host hold: its jobs' units and the trigger bundle."""
    from .bundle import trigger_bundle

    host = inventory.host(host_name)
    units = render_units(inventory.jobs_for(host_name), host.python)
    return units + (ManagedFile(TRIGGER_PATH, trigger_bundle()),)
