"""The `deployer` command: thin click commands over the core; DeployerError -> one line, exit 1."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

import click

from .errors import DeployerError, JobFailed

EPILOG = "Exit status: 0 ok, 1 failure (reason on stderr), 2 usage error."


class Deployer(click.Group):
    """Translates user errors once, here; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeployerError as error:
            if not isinstance(error, JobFailed):
                for line in error.lines():
                    click.echo(f"deployer: error: {line}", err=True)
            ctx.exit(1)


@dataclass(frozen=True)
class Options:
    inventory_path: str

    def inventory(self):
        from . import inventory

        return inventory.load(self.inventory_path)


inventory_option = click.option(
    "-i", "--inventory", "inventory_path", default="inventory.ini", show_default=True,
    envvar="DEPLOYER_INVENTORY", type=click.Path(dir_okay=False),
    help="The inventory file (hosts, alerts, jobs).",
)
host_option = click.option(
    "--host", "host_name", metavar="NAME",
    help="The [host:NAME] to act on (may be left out when the inventory has one host).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _host_name(inv, host_name: Optional[str]) -> str:
    if host_name:
        inv.host(host_name)
        return host_name
    if len(inv.hosts) == 1:
        return inv.hosts[0].name
    raise DeployerError(f"{inv.path}: several hosts; choose one with --host "
                        f"({', '.join(h.name for h in inv.hosts)})")


def _connect(inv, host_name):
    from . import remote

    return remote.connect(inv.host(host_name))


def _job(inv, host_name: str, job: str):
    for candidate in inv.jobs_for(host_name):
        if candidate.name == job:
            return candidate
    raise DeployerError(f"{inv.path}: no [job:{job}] on host {host_name}")


@click.group(cls=Deployer, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deployer")
def main():
    """Run HTTP-triggered scheduled jobs from one systemd cron host.

    Typical use: `deployer validate`, `deployer plan --host cron01`, then
    `deployer push --host cron01`; on the host, `systemctl list-timers 'deployer-*'`.
    """


@main.command(epilog=EPILOG)
@inventory_option
def validate(inventory_path):
    """Check the inventory offline; list every problem (file, section, key)."""
    from .schedule import job_oncalendar

    inv = Options(inventory_path).inventory()
    for job in inv.jobs:
        calendar = " | ".join(job_oncalendar(job.schedule, job.on_calendar, job.timezone))
        click.echo(f"{job.name:<24} {job.host:<12} {calendar}")
    click.echo(f"{inventory_path}: ok ({len(inv.hosts)} hosts, {len(inv.alerts)} alerts, "
               f"{len(inv.jobs)} jobs)")


@main.command(epilog=EPILOG)
@inventory_option
@click.option("--out", type=click.Path(file_okay=False), help="Write the units into DIR instead of stdout.")
def render(inventory_path, out):
    """Show (or write) the unit files push would install, for every job (credentials never)."""
    from .render import host_files

    inv = Options(inventory_path).inventory()
    files = [f for host in inv.hosts for f in host_files(inv, host.name) if not f.secret]
    if out:
        os.makedirs(out, exist_ok=True)
        for f in files:
            with open(os.path.join(out, f.name), "wb") as handle:
                handle.write(f.content)
        click.echo(f"wrote {len(files)} unit files to {out}")
        return
    for f in files:
        click.echo(f"# ---- {f.path}")
        click.echo(f.content.decode(), nl=False)


def _plan(inv, host_name, conn, contents=False):
    from . import remote
    from .plan import make_plan
    from .render import desired_files

    desired = desired_files(inv, host_name)
    state = remote.read_state(conn, contents=contents)
    return make_plan(desired, state), state


@main.command(epilog=EPILOG)
@inventory_option
@host_option
@json_option
def plan(inventory_path, host_name, as_json):
    """Connect and show, as a diff, what push would add, change and remove. Changes nothing."""
    from .plan import as_dict, render_diff, summary

    inv = Options(inventory_path).inventory()
    host_name = _host_name(inv, host_name)
    the_plan, state = _plan(inv, host_name, _connect(inv, host_name), contents=True)
    if as_json:
        click.echo(json.dumps({"host": host_name, **as_dict(the_plan)}, indent=2))
        return
    click.echo(render_diff(the_plan, state), nl=False)
    click.echo(f"host {host_name}: {summary(the_plan)}")


@main.command(epilog=EPILOG)
@inventory_option
@host_option
@json_option
def push(inventory_path, host_name, as_json):
    """Make the host run exactly the inventory's jobs for it; prune jobs no longer listed.

    Reads the host's state in one round trip and uploads only what differs; new units
    are checked with `systemd-analyze verify` on the host before anything is switched.
    """
    from . import remote
    from .plan import as_dict, summary

    inv = Options(inventory_path).inventory()
    host_name = _host_name(inv, host_name)
    conn = _connect(inv, host_name)
    the_plan, state = _plan(inv, host_name, conn)
    result = {} if the_plan.is_noop else remote.apply(conn, the_plan, state)
    if as_json:
        click.echo(json.dumps({"host": host_name, **as_dict(the_plan), **result}, indent=2))
        return
    for marker, names in (("+", the_plan.add), ("~", the_plan.change)):
        for f in names:
            click.echo(f"{marker} {f.name}")
    for path in the_plan.remove:
        click.echo(f"- {path.rsplit('/', 1)[-1]}")
    verb = "up to date" if the_plan.is_noop else "pushed"
    click.echo(f"host {host_name}: {verb}: {summary(the_plan).replace('to ', '')}")


def _status_row(job: dict) -> dict:
    """The agent's raw facts -> what an operator reads: ok / failed (why) / running / never run."""
    if job["service_state"] in ("activating", "deactivating"):
        result = "running"
    elif not job["finished"]:
        result = "never run"
    elif job["result"] == "success":
        result = "ok"
    else:
        result = f"failed ({job['result']}, exit {job['exit_status']})"
    return {"job": job["job"], "schedule": job["calendar"],
            "timer": "active" if job["timer_state"] == "active" else "inactive",
            "next": job["next"] or None, "last": job["last"] or None, "result": result,
            "exit_status": job["exit_status"]}


@main.command(epilog=EPILOG)
@inventory_option
@host_option
@json_option
def status(inventory_path, host_name, as_json):
    """Every managed job on the host: schedule, next run, last run, last result."""
    from . import remote

    inv = Options(inventory_path).inventory()
    host_name = _host_name(inv, host_name)
    rows = [_status_row(j) for j in remote.status(_connect(inv, host_name))]
    if as_json:
        click.echo(json.dumps({"host": host_name, "jobs": rows}, indent=2))
        return
    headers = ("job", "next", "last", "result", "schedule")
    table = [[h.upper() for h in headers]] + [
        [r["job"], r["next"] or "-", r["last"] or "-", r["result"], " | ".join(r["schedule"])]
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if not rows:
        click.echo(f"host {host_name}: no jobs installed")


@main.command(epilog=EPILOG)
@click.argument("job")
@inventory_option
@host_option
def run(job, inventory_path, host_name):
    """Run JOB now on the host, wait for it, show its output; exit with its result."""
    from . import remote

    inv = Options(inventory_path).inventory()
    host_name = _host_name(inv, host_name)
    _job(inv, host_name, job)
    result = remote.run(_connect(inv, host_name), job)
    click.echo(result["output"], nl=False)
    if not result["ok"]:
        click.echo(f"deployer: job {job} failed ({result['result']}, exit {result['exit_status']})", err=True)
        raise JobFailed(job)
    click.echo(f"job {job}: ok")


@main.command(epilog=EPILOG)
@click.argument("job")
@inventory_option
@host_option
@click.option("-n", "--lines", type=click.IntRange(min=1), default=50, show_default=True,
              help="How many of the latest journal lines.")
def logs(job, inventory_path, host_name, lines):
    """Show JOB's journal on the host (every run, newest last)."""
    from . import remote

    inv = Options(inventory_path).inventory()
    host_name = _host_name(inv, host_name)
    _job(inv, host_name, job)
    click.echo(remote.logs(_connect(inv, host_name), job, lines), nl=False)


if __name__ == "__main__":
    sys.exit(main())
