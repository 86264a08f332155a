"""The `deployer` command: thin click commands over the core; DeployerError -> one line, exit 1."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Optional

import click

from . import colour
from .errors import DeployerError, JobFailed
from .contract.text import printable
from .schedule import ScheduleError

EPILOG = "Exit status: 0 ok, 1 failure (reason on stderr), 2 usage error."


class Deployer(click.Group):
    """Translates user errors once, here; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeployerError as error:
            if not isinstance(error, JobFailed):
                for line in error.lines():  # may quote a host's refusal or stderr
                    click.echo(f"deployer: error: {printable(line)}", err=True)
            ctx.exit(1)


@dataclass(frozen=True)
class Options:
    inventory_path: str

    def inventory(self):
        from . import inventory

        return inventory.load(self.inventory_path)

    def inventory_for_job(self, job: str):
        """What a read of one job's runs needs: the hosts and that job, checked (load_for_job)."""
        from . import inventory

        return inventory.load_for_job(self.inventory_path, job)


def _or_group(ctx, param, value):
    """An option given after the subcommand wins; else the same option given before it
    (`deployer -i inv.ini status`), else its default."""
    if value is None:
        value = ctx.find_root().params.get(param.name)
    return value


def _completion_inventory(ctx) -> str:
    """The inventory a command line being completed names (-i after or before the command,
    $DEPLOYER_INVENTORY), else the default."""
    for context in (ctx, ctx.find_root()):
        if context.params.get("inventory_path"):
            return context.params["inventory_path"]
    return os.environ.get("DEPLOYER_INVENTORY") or INVENTORY_DEFAULT


def _completer(kind: str):
    """Shell completion of a [host:NAME] or [job:NAME] of the inventory (click's shell_complete)."""

    def complete(ctx, param, incomplete: str):
        from .inventory import declared_names

        return [name for name in declared_names(_completion_inventory(ctx), kind) if name.startswith(incomplete)]

    return complete


complete_host, complete_job = _completer("host"), _completer("job")


INVENTORY_DEFAULT = "inventory.ini"
INVENTORY_HELP = "The inventory file (hosts, alerts, jobs)."
HOST_HELP = "The [host:NAME] to act on (may be left out when the inventory has one host)."
inventory_option = click.option(
    "-i", "--inventory", "inventory_path", type=click.Path(dir_okay=False), callback=_or_group,
    help=INVENTORY_HELP + f"  [default: {INVENTORY_DEFAULT}, or $DEPLOYER_INVENTORY]",
)
host_option = click.option("--host", "host_name", metavar="NAME", callback=_or_group, help=HOST_HELP,
                           shell_complete=complete_host)
job_argument = click.argument("job", shell_complete=complete_job)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _host_name(inv, host_name: Optional[str]) -> str:
    if host_name:
        inv.host(host_name)
        return host_name
    if len(inv.hosts) == 1:
        return inv.hosts[0].name
    if not inv.hosts:
        raise DeployerError(f"{inv.path}: no [host:NAME] section: add one with its address")
    raise DeployerError(f"{inv.path}: several hosts; choose one with --host "
                        f"({', '.join(h.name for h in inv.hosts)})")


def _connect(inv, host_name):
    """The agent of one host, over SSH: the only place that builds one. It carries who acts and
    from where (the host's audit trail records it with every change)."""
    from . import remote

    context = click.get_current_context(silent=True)  # None in a worker thread: reads, not audited
    names = []
    while context is not None and context.parent is not None:  # `alert test`, whatever the program's name
        names.insert(0, context.info_name or "")
        context = context.parent
    command = " ".join(names)
    return remote.ssh_agent(inv.host(host_name), actor=_actor(inv.path, command))


@functools.lru_cache(maxsize=None)
def _actor(inventory_path: str, command: str):
    from .actor import actor

    return actor(inventory_path, command)


@contextlib.contextmanager
def _ctrl_c_as_flag():
    """Ctrl-C during a streaming read (`logs -f`, `run`) as a flag the read looks at between
    reads (remote.Stopped), never as a KeyboardInterrupt: one that lands just after paramiko took
    a channel buffer's lock leaves it held, and the process hangs for good in the channel's close
    (seen in CI: a `logs -f` alive 37 min after its SIGINT, its main thread and paramiko's
    waiting on one BufferedPipe lock)."""
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda number, frame: interrupted.set())
    try:
        yield interrupted.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _open_host(inventory_path: str, host_name: Optional[str]):
    """What every host command starts with: the inventory, the host's name, its agent."""
    inv = Options(inventory_path).inventory()
    host_name = _host_name(inv, host_name)
    return inv, host_name, _connect(inv, host_name)


def _did_you_mean(name: str, names) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(set(names)), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _job_host(inv, job: str, host_name: Optional[str]) -> tuple[str, object]:
    """The host a job command acts on: --host, else the job's `host =`. -> (host name, Job)."""
    if host_name:
        inv.host(host_name)
    for candidate in inv.jobs:
        if candidate.name == job and (host_name is None or candidate.host == host_name):
            return candidate.host, candidate
    elsewhere = [j.host for j in inv.jobs if j.name == job]
    if elsewhere:
        raise DeployerError(f"{inv.path}: [job:{job}] runs on host {elsewhere[0]}, not {host_name}")
    names = [j.name for j in inv.jobs if host_name is None or j.host == host_name]
    where = f" on host {host_name}" if host_name else ""
    raise DeployerError(f"{inv.path}: no [job:{job}]{where}{_did_you_mean(job, names)}")


def _ask_hosts(inv, names: list, ask, must: tuple = ()):
    """`ask(agent)` of every host in `names`, in parallel -> ({name: (answer, None) or (None,
    error)}, the names that did not answer). A host in `must` that does not answer is the
    command's error (raised); another's is for the caller to warn of."""
    from concurrent.futures import ThreadPoolExecutor

    def one(name):
        try:
            return ask(_connect(inv, name)), None
        except DeployerError as error:
            if name in must:
                raise
            return None, error

    with ThreadPoolExecutor(max_workers=min(len(names), 16)) as pool:
        answers = dict(zip(names, pool.map(one, names)))
    return answers, [name for name, (_, error) in answers.items() if error is not None]


def _open_job(inventory_path: str, job: str, host_name: Optional[str], reading: bool = False):
    """What every job command starts with: the inventory, the job's host, the Job, that host's
    agent. `reading` (a command that only reads the job's runs): only what it uses is checked."""
    options = Options(inventory_path)
    inv = options.inventory_for_job(job) if reading else options.inventory()
    host_name, the_job = _job_host(inv, job, host_name)
    return inv, host_name, the_job, _connect(inv, host_name)


@click.group(cls=Deployer, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deployer")
@click.option("-i", "--inventory", "inventory_path", default=INVENTORY_DEFAULT, show_default=True,
              envvar="DEPLOYER_INVENTORY", type=click.Path(dir_okay=False),
              help=INVENTORY_HELP + " Also accepted after the command.")
@click.option("--host", "host_name", metavar="NAME", help=HOST_HELP + " Also accepted after the command.",
              shell_complete=complete_host)
def main(inventory_path, host_name):
    """Run HTTP-triggered scheduled jobs from one systemd cron host.

    Typical use: `deployer validate`, `deployer plan --host cron01`, then
    `deployer push --host cron01`; on the host, `systemctl list-timers 'deployer-*'`.
    """


def _local(moment, zone: str) -> str:
    """ISO 8601 in `zone`, for --json."""
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo(zone)).isoformat()


def _clock_text(moment, zone: str) -> str:
    """`2026-12-06 11:08:41 UTC` (report.clock), for text."""
    from .report import clock

    return clock(moment.timestamp(), zone)


@main.command(epilog=EPILOG)
@inventory_option
@click.option("--host", "host_name", metavar="NAME", default="cron01", show_default=True,
              help="The name of the starter [host:NAME].")
@click.option("--address", default="10.0.0.5", show_default=True, metavar="ADDRESS",
              help="The cron host's address (name or IP) for SSH.")
def init(inventory_path, host_name, address):
    """Write a commented starter inventory: one host, one job (never over an existing file).

    Then edit it, check it with `deployer validate`, and see what a push would do with
    `deployer plan`.
    """
    from .starter import starter_inventory

    path = inventory_path or os.environ.get("DEPLOYER_INVENTORY") or INVENTORY_DEFAULT
    text = starter_inventory(host_name, address)
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise DeployerError(f"{path} already exists; not overwritten (give another file with -i FILE)") from None
    except OSError as error:
        raise DeployerError(f"cannot write {path}: {error.strerror}") from None
    click.echo(f"wrote {path}: host {host_name} ({address}) and job example; edit it, then: "
               f"deployer validate -i {path}")


@main.command(epilog=EPILOG)
@inventory_option
@click.option("--count", type=click.IntRange(0, 100), default=2, show_default=True,
              help="How many next runs to show per job.")
def validate(inventory_path, count):
    """Check the inventory offline; list every problem (file, section, key).

    When it is valid, shows each job's host, calendar and next runs, computed by
    this machine's systemd from the exact lines its timer will hold.
    """
    from .schedule import next_runs_many, to_calendar

    inv = Options(inventory_path).inventory()
    calendars = [to_calendar(j.schedule, j.on_calendar, j.timezone) for j in inv.jobs]
    runs = next_runs_many([c.lines for c in calendars], count)
    from .models import is_chained

    parents = inv.all_parents()
    lines = []  # one write: 20,000 lines for 10,000 jobs
    for job, calendar, upcoming in zip(inv.jobs, calendars, runs):
        if is_chained(job):
            lines.append(f"{job.name}  (host {job.host})  {chain_text(parents.get(job.name, ()))}")
            continue
        when = "at boot" if calendar.on_boot else ", ".join(_clock_text(t, calendar.timezone) for t in upcoming)
        lines.append(f"{job.name}  (host {job.host})  {' | '.join(calendar.lines) or '@reboot'}")
        if count:
            lines.append(f"    next: {when or 'never'}")
    from .plan import resend_notes

    lines += [f"note: {note}" for note in resend_notes(inv.jobs)]
    lines.append(f"{inventory_path}: ok ({len(inv.hosts)} hosts, {len(inv.alerts)} alerts, {len(inv.jobs)} jobs)")
    click.echo("\n".join(lines))


@main.command(epilog=EPILOG, context_settings={"ignore_unknown_options": True})
@click.argument("expression", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timezone", "zone", default="UTC", show_default=True, help="IANA zone the schedule is in.")
@click.option("--count", type=click.IntRange(0, 1000), default=5, show_default=True)
@json_option
def schedule(expression, zone, count, as_json):
    """The OnCalendar= lines for a cron, Quartz or systemd calendar EXPRESSION, and its next runs.

    EXPRESSION: 5 fields (cron, Debian semantics: day-of-month and day-of-week are OR-ed
    when both are restricted), a @macro (@hourly ... @reboot), `CRON_TZ=Zone <cron>`,
    6 or 7 fields (Quartz: seconds first, `?`, L, W, #), or a native systemd calendar
    ("Mon..Fri *-*-* 09:00"). Next runs are computed by systemd from the lines shown.
    A leading '-' is part of the expression, not an option.
    """
    from .schedule import calendar_for_expression, check_calendar_lines, next_runs

    _check_zone_option(zone)
    expression = " ".join(expression)
    fields = len(expression.split())
    calendar = calendar_for_expression(expression, zone)
    refused = check_calendar_lines(list(calendar.lines))
    if refused:
        raise DeployerError(
            f"{expression!r} is not a cron expression (5 fields: minute hour day-of-month month "
            f"day-of-week; got {fields}), a @macro, Quartz (6-7 fields), nor a systemd calendar "
            f"(systemd: {next(iter(refused.values()))})")
    moments = next_runs(calendar.lines, count)
    if as_json:
        document = {"oncalendar": list(calendar.lines), "next": [_local(t, calendar.timezone) for t in moments],
                    "timezone": calendar.timezone}
        if calendar.on_boot:
            document["on_boot"] = True
        click.echo(json.dumps(document, indent=2))
        return
    for line in calendar.lines:
        click.echo(f"OnCalendar={line}")
    if calendar.on_boot:
        click.echo("OnBootSec=0    (runs once at every boot)")
    for moment in moments:
        click.echo(f"  {_clock_text(moment, calendar.timezone)}")


def _check_zone_option(zone: str) -> None:
    from .schedule import is_zone

    if not is_zone(zone):
        from .contract.options import zone_hint

        raise click.BadParameter(f"{zone!r} is not an IANA time zone{zone_hint(zone)}", param_hint="--timezone")


@main.command(epilog=EPILOG)
@inventory_option
@host_option
@click.option("--out", type=click.Path(file_okay=False),
              help="Write the units into DIR instead of stdout (into DIR/HOST/ when several hosts).")
def render(inventory_path, host_name, out):
    """Show (or write) the unit files push would install, for every host or --host (credentials never)."""
    from .render import preview_files

    inv = Options(inventory_path).inventory()
    hosts = [_host_name(inv, host_name)] if host_name else [h.name for h in inv.hosts]
    files = preview_files(inv, hosts)
    if out:
        for relative, f in files:
            target = os.path.join(out, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(f.content)
        per_host = f" ({', '.join(hosts)}: one directory each)" if len(hosts) > 1 else ""
        click.echo(f"wrote {len(files)} unit files to {out}{per_host}")
        return
    for relative, f in files:
        where = f"{relative.split('/')[0]}:" if len(hosts) > 1 else ""
        click.echo(f"# ---- {where}{f.path}")
        click.echo(f.content.decode(), nl=False)


# `plan --exit-code` when push would change something. Not 2, terraform's choice: the contract
# gives 2 to usage errors, and a CI step must not read a mistyped option as "changes pending".
CHANGES_PENDING = 3

no_prune_option = click.option(
    "--no-prune", "no_prune", is_flag=True,
    help="Remove nothing: jobs no longer in the inventory (and their alert units) stay installed.")


def _names(jobs, limit: int = 0) -> str:
    shown = jobs[:limit] if limit else jobs
    more = f" and {len(jobs) - len(shown)} more" if len(jobs) > len(shown) else ""
    return ", ".join(shown) + more


@main.command(epilog="Exit status: 0 ok, 1 failure (reason on stderr), 2 usage error; with --exit-code, "
              f"{CHANGES_PENDING} when push would change something.")
@inventory_option
@host_option
@json_option
@no_prune_option
@click.option("--exit-code", "exit_code", is_flag=True,
              help=f"Exit {CHANGES_PENDING} when push would change something, 0 when not (for CI).")
@click.option("--diff", "show_diff", is_flag=True, help="Also show each file's changes as a unified diff.")
def plan(inventory_path, host_name, as_json, no_prune, exit_code, show_diff):
    """Connect and show what push would add, change and remove: a summary, then a line per job
    (and per host or channel unit), then the chains (after / on_failure_run: who starts whom).
    Changes nothing. --diff adds the files' diffs.

    Names the jobs push would remove (no longer in the inventory); `push --no-prune` keeps them.
    """
    from .deploy import plan_push
    from .plan import chain_lines, chains, render_diff, resend_notes
    from .report import plan_document

    inv, host_name, agent = _open_host(inventory_path, host_name)
    the_plan, state = plan_push(inv, host_name, agent, contents=show_diff, prune=not no_prune)
    if as_json:
        click.echo(json.dumps(plan_document(host_name, the_plan, chains(inv.jobs_for(host_name))), indent=2))
    else:
        _print_plan(host_name, the_plan, inv.path, state.held)
        for line in chain_lines(inv.jobs_for(host_name)):
            click.echo(line)
        if show_diff:
            click.echo(colour.diff(printable(render_diff(the_plan, state), newlines=True)), nl=False)
        for note in resend_notes(inv.jobs_for(host_name)):
            click.echo(f"note: {note}")
    if exit_code and not the_plan.is_noop:
        click.get_current_context().exit(CHANGES_PENDING)


# A push of thousands of jobs lists this many of each kind (added, changed, removed); plan lists all.
PUSH_LISTS = 20


def _print_plan(host_name: str, the_plan, inventory_path: str, held=None, limit: int = 0) -> None:
    """What plan prints and push shows before it acts: the summary first, a line per job, then
    what else push does (remove jobs, release a held host)."""
    from .plan import change_lines, job_summary, removed_jobs, summary

    click.echo(f"host {host_name}: {job_summary(the_plan)} (files: {summary(the_plan)})")
    for line in change_lines(the_plan, os.path.basename(inventory_path), limit):
        click.echo(colour.diff_line(printable(line)))
    doomed = removed_jobs(the_plan)
    if doomed:
        click.echo(f"host {host_name}: push would remove {len(doomed)} "
                   f"job{'s' if len(doomed) > 1 else ''} not in {inventory_path}: {_names(doomed, limit)}")
    if held:
        click.echo(f"host {host_name}: held ({_held_why(held)}): a push releases it, and its jobs run again")


def _held_why(held) -> str:
    """`was down 2h13m`, or why a host holds its jobs when not for its lease (Held.reason)."""
    return held.reason or f"was down {_duration(held.down_for_seconds)}"


def _print_push(pushed, as_json: bool, announced: bool = False) -> None:
    """What a push did. `announced`: its plan was shown before it acted (push does; move not)."""
    from .plan import change_lines, jobs_of, removed_jobs, summary

    if as_json:
        from .report import push_document

        click.echo(json.dumps(push_document(pushed), indent=2))
        return
    if not announced:
        for line in change_lines(pushed.plan, limit=PUSH_LISTS):
            click.echo(colour.diff_line(printable(line)))
    for timer in pushed.result.kept_paused if pushed.result else ():
        click.echo(f"  {timer} stays paused (deployer resume)")
    removed, kept = removed_jobs(pushed.plan), jobs_of(pushed.plan.kept)
    if removed:
        click.echo(f"  removed {len(removed)} job{'s' if len(removed) > 1 else ''}: {_names(removed, PUSH_LISTS)}")
    if kept:
        click.echo(f"  kept {len(kept)} job{'s' if len(kept) > 1 else ''} no longer in the inventory "
                   f"(--no-prune): {_names(kept, PUSH_LISTS)}")
    if pushed.result and pushed.result.released:
        click.echo(f"host {pushed.host}: released: it held its jobs ({_held_why(pushed.result.released)}); "
                   "they run again")
    verb = "up to date" if pushed.plan.is_noop else "pushed"
    click.echo(f"host {pushed.host}: {colour.result(verb)}: {summary(pushed.plan).replace('to ', '')}")


def _ask_before_pruning(host_name: str, inventory_path: str, progress):
    """On a terminal, ask before removing jobs. Elsewhere (CI, pipes) push prunes as the contract
    says, naming the jobs in its output; `plan --exit-code` and `--no-prune` are the guards there."""

    def confirm(jobs) -> bool:
        if not sys.stdin.isatty():
            return True
        progress.done()
        click.echo(f"push would remove {len(jobs)} job{'s' if len(jobs) > 1 else ''} from host {host_name} "
                   f"that {inventory_path} no longer lists: {_names(jobs, 20)}", err=True)
        try:
            return click.confirm(f"Remove {'it' if len(jobs) == 1 else 'them'}?", default=False, err=True)
        except click.Abort:  # end of input or Ctrl-C at the question: the answer is no
            click.echo("", err=True)
            return False

    return confirm


@main.command(epilog=EPILOG)
@inventory_option
@host_option
@json_option
@no_prune_option
@click.option("-y", "--yes", is_flag=True, help="Remove jobs no longer in the inventory without asking.")
def push(inventory_path, host_name, as_json, no_prune, yes):
    """Make the host run exactly the inventory's jobs for it; prune jobs no longer listed.

    Reads the host's state in one round trip and uploads only what differs; new units
    are checked with `systemd-analyze verify` on the host before anything is switched.
    When nothing it reads changed since its last push from this machine (the inventory's
    text, the variables it names, its local files, the deployer itself), it only asks the
    host whether it still holds exactly those files: `up to date` without reading the
    inventory again (the record is in ~/.cache/deployer/pushed).
    A job new to this host must not still be installed on another host of the inventory.
    It shows its plan first, as `plan` does (at most 20 jobs of each kind). On a terminal,
    a push that would remove jobs names them and asks first (--yes does not ask; --no-prune
    keeps them). Without a terminal it removes them, as `plan` showed.
    """
    from . import deploy, inventory, lastpush
    from .contract.options import recording_local_reads
    from .models import Inventory
    from .progress import Progress

    source = inventory.read_source(inventory_path)
    inputs = lastpush.key(inventory_path, source, host_name, os.environ)
    last, asked = lastpush.find(inputs, inventory_path, host_name), None
    if last is not None:
        asked = _connect(Inventory(inventory_path, hosts=(last.host,), alerts=(), jobs=()), last.host_name)
        pushed = deploy.up_to_date(last, asked)
        if pushed is not None:
            _print_push(pushed, as_json)
            return
    host_option = host_name
    with recording_local_reads() as local_reads:
        inv = inventory.parse(source, inventory_path, os.environ)
    host_name = _host_name(inv, host_name)
    # The question's connection serves the full push too (the same inputs name the same host; checked).
    agent = asked if asked is not None and lastpush.reached_alike(last.host, inv.host(host_name)) \
        else _connect(inv, host_name)
    progress = Progress(f"push {host_name}", enabled=not as_json)
    confirm = None if yes else _ask_before_pruning(host_name, inv.path, progress)

    def announce(the_plan, state) -> None:
        """The plan, as `plan` shows it, before anything changes (and before push asks)."""
        if not as_json:
            progress.done()
            _print_plan(host_name, the_plan, inv.path, state.held, limit=PUSH_LISTS)

    def remember(files) -> None:
        lastpush.record(inputs, inventory_path, host_option, inv.host(host_name), files,
                        lastpush.local_files(local_reads))

    try:
        pushed = deploy.push(inv, host_name, agent, lambda name: _connect(inv, name),
                             progress=progress.update, prune=not no_prune, confirm=confirm, announce=announce,
                             remember=remember)
    finally:
        progress.done()
    _print_push(pushed, as_json, announced=not pushed.plan.is_noop)


@main.command(epilog=EPILOG)
@inventory_option
@click.option("--from", "source", required=True, metavar="HOST", help="The host that runs the jobs now.",
              shell_complete=complete_host)
@click.option("--to", "target", required=True, metavar="HOST", help="The host the inventory designates.",
              shell_complete=complete_host)
@click.option("--force", is_flag=True, help="SOURCE unreachable: do not wait out its lease (risks double runs).")
@json_option
def move(inventory_path, source, target, force, as_json):
    """Hand jobs from one host to another without a double or a missed run.

    First set `host = TARGET` on the jobs in the inventory. Then this stops their timers on
    SOURCE, installs them on TARGET (a time that passed during the hand-over runs once
    there), and pushes SOURCE, which removes them. If TARGET refuses, SOURCE resumes.

    SOURCE unreachable (down): this waits out SOURCE's lease from the moment it found it so,
    after which SOURCE, if it boots again, holds its jobs; then installs them on TARGET and
    records the takeover there. Push SOURCE when it is back: that removes them.
    """
    from . import deploy
    from .progress import Progress

    inv = Options(inventory_path).inventory()
    for name in (source, target):
        inv.host(name)
    progress = Progress(f"move {source} -> {target}", enabled=not as_json)

    def wait(gone):
        progress.done()
        click.echo(f"deployer: {source} is unreachable ({printable(gone.reason)}).", err=True)
        click.echo(f"deployer: waiting out its lease ({_duration(gone.lease)}) until {_clock(gone.until)}: if "
                   f"{source} boots again after that, it holds its jobs instead of running them. Ctrl-C stops "
                   f"here (nothing changed); --force skips the wait.", err=True)
        countdown = Progress(f"waiting for {source}'s lease", enabled=not as_json)
        countdown.started -= 1  # show the countdown from the first second
        try:
            deploy.wait_until(gone.until, tick=lambda left: countdown.update(f"{_duration(left)} left"))
        finally:
            countdown.done()
        click.echo(f"deployer: {source}'s lease ran out; checking once more that it is still unreachable",
                   err=True)

    try:
        moving, to_target, to_source = deploy.move(inv, source, target, lambda name: _connect(inv, name),
                                                   progress=progress.update, force=force, wait=wait)
    finally:
        progress.done()
    takeover = to_target.takeover
    if takeover and takeover.forced:
        click.echo(f"deployer: warning: --force: did not wait out {source}'s lease. If {source} is still up "
                   f"(cut off from here, not down), it runs {', '.join(moving)} too: each runs twice until "
                   f"it is powered off or cut off from the jobs' service; and if it boots within "
                   f"{_duration(inv.host(source).lease)} of its last lease renewal, it runs them again.", err=True)
    if as_json:
        from .report import move_document

        click.echo(json.dumps(move_document(moving, source, target, takeover), indent=2))
        return
    if takeover:
        click.echo(f"took over {len(moving)} jobs of unreachable {source} on {target}: {', '.join(moving)}")
        _print_push(to_target, False)
        click.echo(f"host {source}: unreachable; when it is back it holds its jobs: push it "
                   f"(deployer push --host {source}) to remove them there")
        return
    click.echo(f"moved {len(moving)} jobs from {source} to {target}: {', '.join(moving)}")
    _print_push(to_target, False)
    _print_push(to_source, False)


def _duration(seconds: float) -> str:
    from .contract.protocol import duration_text

    return duration_text(seconds)


def _clock(moment: float) -> str:
    from .report import clock

    return clock(moment)


@main.command(epilog=EPILOG)
@inventory_option
@host_option
def release(inventory_path, host_name):
    """End a hold: HOST's lease ran out while it was down, so it runs none of its jobs.

    Confirms that HOST still owns the jobs installed on it: their timers start again (runs
    missed while it was down are not made up: `deployer run JOB` runs one now). If some of
    them moved elsewhere, push HOST instead: that removes those and releases the rest.
    """
    from . import remote

    _, host_name, agent = _open_host(inventory_path, host_name)
    answer = remote.release(agent)
    if answer.released is None:
        click.echo(f"host {host_name}: not held; nothing to release")
        return
    click.echo(f"host {host_name}: released ({_held_why(answer.released)}); "
               f"{len(answer.started)} job timers started")


def _host_status(inv, host):
    """One host's status, or the one line saying why there is none (unreachable, refused)."""
    from . import remote
    from .report import HostStatus

    from .errors import AgentRefused, RemoteCommandError

    try:
        answer = remote.status(_connect(inv, host.name))
    except DeployerError as error:
        message = " ".join(error.lines()).removeprefix(f"host {host.name}: ")
        # An agent that answered with a refusal (corrupt state...) is reachable, but has no status.
        return HostStatus(host.name, host.address, error=message,
                          reachable=isinstance(error, (AgentRefused, RemoteCommandError)))
    return HostStatus(host.name, host.address, jobs=answer.jobs, held=answer.held, machine=answer.machine,
                      owner=answer.owner, last_push=answer.last_push)


STATUS_EPILOG = ("Exit status: 0 ok, 1 failure (reason on stderr): a host gave no status (its inventory jobs "
                 "show as unknown), or two host names reach one machine; 2 usage error.")


@main.command(epilog=STATUS_EPILOG)
@inventory_option
@host_option
@json_option
def status(inventory_path, host_name, as_json):
    """Every managed job of every host (or of --host): result and why it failed, last and next
    run in the job's own time zone, paused and held jobs; and who last pushed each host, when,
    from which commit (`last push: by USER@CLIENT ...`; `deployer audit` for the rest).

    Shows what each host runs: the schedule of its timer, flagged when it differs from the
    inventory's (a push pending), and jobs a host runs that the inventory does not put there.
    Hosts are asked in parallel; an unreachable one lists its inventory jobs as unknown, and
    exit status 1; so do two host names that reach the same machine. Slots a job skipped
    (catch_up, concurrency) are a note: how many, and the last one's reason.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .report import machine_aliases, now_utc, status_document, status_text
    from .schedule import normalized

    inv = Options(inventory_path).inventory()
    hosts = [inv.host(_host_name(inv, host_name))] if host_name or len(inv.hosts) <= 1 else list(inv.hosts)
    with ThreadPoolExecutor(max_workers=min(len(hosts), 16)) as pool:
        answers = list(pool.map(lambda h: _host_status(inv, h), hosts))
    jobs = {(j.host, j.name): j for j in inv.jobs}
    jobs.update({(None, j.name): j for j in inv.jobs})
    now = now_utc()
    document = status_document(answers, jobs, now, normalize=normalized)
    click.echo(json.dumps(document, indent=2) if as_json else status_text(document, now, colour.result), nl=as_json)
    failed = [a for a in answers if a.error]
    for answer in failed:
        click.echo(f"deployer: error: host {answer.name}: {printable(answer.error)}", err=True)
    aliases = machine_aliases(document)
    for alias, primary in aliases.items():
        click.echo(f"deployer: error: hosts {primary} and {alias} are one machine: fix the address of one of "
                   f"them in {inv.path}", err=True)
    if failed or aliases:
        sys.exit(1)


@main.command(epilog=EPILOG)
@job_argument
@inventory_option
@click.option("--host", "host_name", metavar="NAME", callback=_or_group,
              help="Read only this [host:NAME]: the job's old host too, after a move. Default: every host.")
@click.option("--since", default="7d", show_default=True, metavar="WHEN",
              help="How far back: a duration (7d, 36h, 90m) or an ISO 8601 date or time.")
@json_option
def history(job, inventory_path, host_name, since, as_json):
    """One line per run of JOB (slot, start, duration, attempts, result, reason) and a summary:
    runs, failures, p50/max duration, and the slots its schedule had with no run.

    Read from the per-run records in the hosts' journals (`journalctl DEPLOYER_JOB=JOB`), plus
    PID 1's entries for runs killed before they could write one. Every host of the inventory
    is read, so the runs of a job that moved are all there, each with the host it ran on (a
    HOST column); a host other than the job's own that does not answer is a warning. Missed
    slots are counted from when the job's timer was last installed or changed by a push on
    its host. A chained job (after = JOB) shows why each run ran (its parent's slot and verdict)
    and the parent's failed runs as the slots it did not run.
    A slot the job's catch_up or concurrency skipped is listed as `skipped` with its
    reason (it called nothing) and counted apart: it is neither a run nor a missed slot.
    """
    from . import remote
    from .report import history_document, history_text, job_zone, now_utc, since_time

    now = now_utc()
    try:
        start = since_time(since, now)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None
    inv = Options(inventory_path).inventory_for_job(job)
    own_host, the_job = _job_host(inv, job, None)
    primary = host_name or own_host
    inv.host(primary)
    names = [primary] + ([] if host_name else [h.name for h in inv.hosts if h.name != primary])

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as counting:
        # The schedule's slots are counted here (systemd-analyze) while the hosts answer: from
        # `start` to a minute past now, a window that holds the one the answer sets unless the host's
        # clock runs more than a minute ahead (then they are counted again).
        counted = counting.submit(_slots, the_job, start, now + 60)
        answers, unread = _ask_hosts(inv, names, lambda agent: remote.history(agent, job, start), must=(primary,))
    for name in unread:
        reason = " ".join(answers[name][1].lines()).removeprefix(f"host {name}: ")
        click.echo(f"deployer: warning: host {name}: {printable(reason)}; its runs of {job}, if any, "
                   "are not shown", err=True)
    ran = sorted(((run, name) for name, (answer, _) in answers.items() if answer for run in answer.runs),
                 key=lambda pair: pair[0].started)
    answer = answers[primary][0]
    until = answer.now or now
    # Slots count from when the timer, as it is now, was installed: before, another schedule (or none).
    slots, slots_until = _slots_within(counted.result(), the_job, max(start, answer.scheduled_since), until) \
        if answer.scheduled_since else (None, None)
    not_run = []
    if the_job is not None and the_job.after:  # why a chained run did not run: its parent's failed runs
        from .report import not_run_entries

        parent = remote.history(_connect(inv, primary), the_job.after, start)
        not_run = not_run_entries(the_job.after, parent.runs, job_zone(the_job))
    document = history_document(primary, job, job_zone(the_job), start, until, [run for run, _ in ran], slots,
                                slots_until, run_hosts=[name for _, name in ran], unread=unread, not_run=not_run,
                                after=the_job.after if the_job is not None else None)
    click.echo(json.dumps(document, indent=2) if as_json else history_text(document, colour.result), nl=as_json)


AUDIT_EPILOG = ("Exit status: 0 ok (a host other than --host that could not be read is a warning), 1 failure "
                "(reason on stderr): no host could be read, or --host could not; 2 usage error.")


@main.command(epilog=AUDIT_EPILOG)
@inventory_option
@click.option("--host", "host_name", metavar="NAME", callback=_or_group, shell_complete=complete_host,
              help="Read only this [host:NAME]. Default: every host of the inventory.")
@click.option("--since", default="30d", show_default=True, metavar="WHEN",
              help="How far back: a duration (30d, 36h, 90m) or an ISO 8601 date or time.")
@json_option
def audit(inventory_path, host_name, since, as_json):
    """Who changed what on the hosts, and from where: every push, move, pause, resume, release,
    manual run, stop and alert test, oldest first, merged across hosts.

    Each line: when, the host, the action (and the deployer command that made it: a move
    is a handoff and pushes), the job or channel, the outcome (ok, or why the host refused),
    who (the local user @ the client machine, as the client said; the SSH user and the client's
    address, as the host saw them), the inventory's git commit (+dirty: uncommitted changes) and
    a detail. `--json` adds the inventory file's sha256. Read from each host's journal
    (`journalctl MESSAGE_ID=8e1f5c2a6b7d4c0e9a3f1b2d4c6e8a01`); a host that cannot be read is named.
    """
    from . import remote
    from .report import audit_document, audit_text, now_utc, since_time

    now = now_utc()
    try:
        start = since_time(since, now)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None
    inv = Options(inventory_path).inventory()
    names = [_host_name(inv, host_name)] if host_name or len(inv.hosts) <= 1 else [h.name for h in inv.hosts]

    answers, unread = _ask_hosts(inv, names, lambda agent: remote.audit(agent, start))
    for name in unread:
        reason = " ".join(answers[name][1].lines()).removeprefix(f"host {name}: ")
        click.echo(f"deployer: {'error' if host_name else 'warning'}: host {name}: {printable(reason)}; its "
                   "actions, if any, are not shown", err=True)
    entries = [(name, entry) for name, (answer, _) in answers.items() if answer for entry in answer.entries]
    until = max([answer.now for answer, _ in answers.values() if answer] or [now])
    document = audit_document(start, until, entries, names, unread)
    click.echo(json.dumps(document, indent=2) if as_json else audit_text(document), nl=as_json)
    if len(unread) == len(names) or (host_name and unread):
        sys.exit(1)

def _no_timer(inv, job, command: str) -> None:
    """A chained job has no timer to stop or start: its parent's runs start it."""
    from .models import is_chained

    if is_chained(job):
        parents = sorted({parent for _, parent in inv.parents(job.name)})
        raise DeployerError(f"job {job.name} has no timer to {command}: it runs {chain_text(inv.parents(job.name))}; "
                            f"{command} {' / '.join(parents)} instead, or remove its after / on_failure_run")


def chain_text(parents) -> str:
    """`after extract succeeded | after load failed`: when a chained job runs ((how, parent), ...)."""
    return " | ".join(f"after {parent} {'succeeded' if how == 'after' else 'failed'}" for how, parent in parents)


def _backfill_slot(job, text: str) -> int:
    from .models import is_chained
    from .schedule import check_slot, parse_slot_time, to_calendar

    if is_chained(job):
        raise DeployerError(f"job {job.name}: a chained job runs for its parent's slot: backfill the parent")

    calendar = to_calendar(job.schedule, job.on_calendar, job.timezone)
    if calendar.on_boot:
        raise DeployerError(f"job {job.name}: an @reboot job has no slots to backfill")
    try:
        return check_slot(calendar.lines, parse_slot_time(text, job.timezone), job.timezone)
    except ScheduleError as error:
        raise DeployerError(f"job {job.name}: --slot {text}: {error}") from None


def _run_params(job, given: tuple) -> tuple:
    """`--set NAME=VALUE`s -> ((name, value), ...), each checked against the job's params."""
    from .contract.options import Invalid, param_value

    declared = [name for name, _ in job.params or ()]
    found = {}
    for item in given:
        name, equals, value = item.partition("=")
        if not equals:
            raise DeployerError(f"job {job.name}: --set {item}: write NAME=VALUE")
        if name not in declared:
            raise DeployerError(f"job {job.name}: --set {name}: not a parameter of the job (its params: "
                                f"{', '.join(declared) or 'none; declare them with params = NAME=DEFAULT'})")
        try:
            found[name] = param_value(value)
        except Invalid as error:
            raise DeployerError(f"job {job.name}: --set {name}: {error}") from None
    return tuple(found.items())


MAX_SLOTS = 20000  # slots enumerated for a history's missed-slot count (a job every 2 s: about 11 h)


def _slots(job, start: float, until: float):
    """The job's scheduled slots in [start, until - grace] (a slot younger than the job's timeout
    may still be running) -> (slots, the end of the window they cover); (None, None) for @reboot."""
    from .schedule import elapses_between, to_calendar

    calendar = to_calendar(job.schedule, job.on_calendar, job.timezone)
    if calendar.on_boot:
        return None, None
    end = until - float(job.timeout) - 10
    if end <= start:
        return [], end
    return elapses_between(calendar.lines, start, end, MAX_SLOTS)


def _slots_within(counted, job, start: float, until: float):
    """`_slots(job, start, until)`, taken from `counted` (what `_slots` gave for a window that
    starts no later) where it covers the window; else counted anew. A count that covers its
    window whole was not cut by MAX_SLOTS, and neither would a count of a part of it be."""
    slots, covered = counted
    if slots is None:
        return None, None
    end = until - float(job.timeout) - 10
    if end <= start:
        return [], end
    if covered < end:  # the host's clock is ahead, or the count stopped at MAX_SLOTS
        return _slots(job, start, until)
    return [t for t in slots if start <= t <= end], end


@main.command(epilog=EPILOG)
@job_argument
@click.option("--slot", "slot_text", metavar="TIME",
              help="backfill this slot of the schedule (2026-12-01T02:00 in the job's zone, or with Z): "
                   "the request carries that slot's Idempotency-Key, so a deduplicating service answers "
                   "with its first result instead of running it again. Without it, a run has a key of its "
                   "own (manual-<run id>).")
@click.option("--set", "settings", metavar="NAME=VALUE", multiple=True,
              help="a value for one of the job's params (repeatable): fills ${{NAME}} in its url and body for "
                   "this run instead of the default; recorded in history with who ran it")
@click.option("--force", is_flag=True,
              help="Run even though the host holds its jobs (its lease ran out while it was down: "
                   "another host may run JOB now, so it may run twice).")
@inventory_option
@host_option
@json_option
def run(job, slot_text, settings, force, inventory_path, host_name, as_json):
    """Run JOB now on its host, showing its journal lines as they happen; exit with its result.

    A host that holds its jobs (see `deployer release`) refuses, unless --force. When JOB is
    already running, it says so and follows that run instead of starting one. Ctrl-C leaves the
    run going on the host (`deployer stop JOB` ends it).
    Every line is the service's and the host's text: printed escaped (contract/text.printable).
    """
    from . import remote
    from .report import job_zone, run_document

    inv = Options(inventory_path).inventory()
    host_name, the_job = _job_host(inv, job, host_name)
    slot = _backfill_slot(the_job, slot_text) if slot_text else None
    params = _run_params(the_job, settings)
    agent = _connect(inv, host_name)  # only once what was asked is known to be right
    streamed: list[str] = []

    def show(line: str) -> None:
        streamed.append(line)
        if not as_json:
            click.echo(printable(line))

    try:
        with _ctrl_c_as_flag() as interrupted:
            result = remote.run(agent, job, output=show, slot=slot, force=force, params=params, stop=interrupted)
    except remote.Stopped:
        # Leaving stops only the watching: the run is a systemd service of the host's.
        goes_on = "the run goes on" if streamed else "the run, if it started, goes on"
        click.echo(f"\ndeployer: interrupted: {goes_on} on {host_name}; stop it with: deployer stop {job}",
                   err=True)
        sys.exit(1)
    if result.held is not None:
        click.echo(f"deployer: warning: --force: host {host_name} holds its jobs ({printable(_held_why(result.held))}); "
                   f"ran {job} anyway: if another host runs it too, it ran twice", err=True)
    if as_json:
        click.echo(json.dumps(run_document(host_name, job, job_zone(the_job), result), indent=2))
    else:
        for line in result.output.splitlines():  # whatever the stream missed (journald's lag)
            if line not in streamed:
                click.echo(printable(line))
    if not result.ok:
        if not as_json:
            reason = result.run.reason if result.run else f"{result.result}, exit {result.exit_status}"
            if result.error:  # what systemctl said of the start (its job may have failed, not the run)
                reason += f"; systemctl start: {result.error}"
            click.echo(f"deployer: job {job} failed ({printable(reason)})", err=True)
        raise JobFailed(job)
    if not as_json:
        click.echo(f"job {job}: ok")


@main.command(epilog=EPILOG)
@job_argument
@inventory_option
@host_option
def stop(job, inventory_path, host_name):
    """Stop JOB's run in progress on its host (its timer stays: the next slot runs as scheduled).

    The run ends as an interrupted one: recorded as failed, and its alert is sent. Nothing
    running is not an error.
    """
    from . import remote
    from .report import clock_of, job_zone

    _, host_name, the_job, agent = _open_job(inventory_path, job, host_name)
    answer = remote.stop(agent, job)
    if not answer.stopped:
        click.echo(f"job {job} is not running on {host_name}; nothing to stop")
        return
    since = f" (running since {clock_of(answer.started, job_zone(the_job))})" if answer.started else ""
    recorded = f"; recorded as {answer.run.result}: {printable(answer.run.reason)}" if answer.run else ""
    click.echo(f"job {job} stopped on {host_name}{since}{recorded}")


@main.command(epilog=EPILOG)
@job_argument
@inventory_option
@host_option
def pause(job, inventory_path, host_name):
    """Stop JOB's timer without removing it; pushes keep it paused until `resume`.

    A run in progress finishes. Like Kubernetes' `suspend`; runs missed while paused are not
    made up on resume.
    """
    from . import remote

    inv, host_name, the_job, agent = _open_job(inventory_path, job, host_name)
    _no_timer(inv, the_job, "pause")
    remote.pause(agent, job)
    click.echo(f"job {job} paused on {host_name}")


@main.command(epilog=EPILOG)
@job_argument
@inventory_option
@host_option
def resume(job, inventory_path, host_name):
    """Start JOB's timer again; its next run is its next scheduled time (none are made up)."""
    from . import remote

    inv, host_name, the_job, agent = _open_job(inventory_path, job, host_name)
    _no_timer(inv, the_job, "resume")
    remote.resume(agent, job)
    click.echo(f"job {job} resumed on {host_name}")


@main.command(epilog=EPILOG)
@job_argument
@inventory_option
@host_option
@click.option("-n", "--lines", type=click.IntRange(min=1), default=None,
              help="How many of the latest journal lines  [default: 50, or all with --since]")
@click.option("--since", metavar="WHEN", help="Only lines since: a duration (2h, 7d) or an ISO 8601 date or time.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they come, until Ctrl-C.")
def logs(job, inventory_path, host_name, lines, since, follow):
    """Show JOB's journal on its host (every run, newest last); --follow streams new lines."""
    from . import remote
    from .report import now_utc, since_time

    start = None
    if since:
        try:
            start = since_time(since, now_utc())
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--since") from None
    if lines is None and start is None:
        lines = 50
    _, _, _, agent = _open_job(inventory_path, job, host_name, reading=True)
    if not follow:
        click.echo(printable(remote.logs(agent, job, lines, since=start), newlines=True), nl=False)
        return
    try:  # Ctrl-C is how a follow ends; the agent stops when its next write finds no client
        with _ctrl_c_as_flag() as interrupted:
            remote.logs(agent, job, lines, since=start, follow=True, output=lambda line: click.echo(printable(line)),
                        stop=interrupted)
    except remote.Stopped:
        pass


@main.group()
def alert():
    """Alert channels, as the cron hosts reach them."""


ALERT_TEST_EPILOG = ("Exit status: 0 every channel accepted its test message; 1 a channel refused it or gave no "
                     "answer, or a host could not be asked (reason on stderr); 2 usage error.")


@alert.command("test", epilog=ALERT_TEST_EPILOG)
@click.argument("channel", required=False)
@inventory_option
@host_option
@json_option
def alert_test(channel, inventory_path, host_name, as_json):
    """Send a test message through CHANNEL (default: every channel the host's jobs alert
    through), from the cron host, exactly as a failed job's alert goes out: the channel's own
    alert unit sends it, with the credentials, proxy and signing installed there. Says what
    the channel answered (its HTTP status and the robot's errcode/errmsg).

    Every host (or --host) whose jobs alert through the channel sends one; push first, as the
    test uses what is installed.
    """
    from . import remote
    from .report import alert_test_document, alert_test_line

    inv = Options(inventory_path).inventory()
    hosts = [_host_name(inv, host_name)] if host_name or len(inv.hosts) <= 1 else [h.name for h in inv.hosts]
    if channel is not None and channel not in {a.name for a in inv.alerts}:
        raise DeployerError(f"{inv.path}: no [alert:{channel}]{_did_you_mean(channel, [a.name for a in inv.alerts])}")
    targets = [(h, c) for h in hosts for c in inv.channels_of(h) if channel in (None, c)]
    if not targets:
        where = f"host {hosts[0]}" if len(hosts) == 1 else "any host"
        raise DeployerError(f"{inv.path}: no job on {where} alerts through "
                            f"{channel or 'a channel'}: the test is sent by a host that installs the channel "
                            "for its jobs (`alert =`)")
    results, failed = [], False
    for host, name in targets:
        try:
            answer = remote.alert_test(_connect(inv, host), name)
        except DeployerError as error:
            failed = True
            for line in error.lines():
                click.echo(f"deployer: error: {printable(line)}", err=True)
            continue
        results.append((host, inv.alert(name).type, answer))
        failed = failed or not answer.accepted
        if not as_json:
            click.echo(alert_test_line(host, inv.alert(name).type, answer))
            if answer.http_status is None:  # the unit's own lines say why nothing was heard
                for line in answer.output.splitlines()[-10:]:
                    click.echo(f"  {printable(line)}", err=True)
    if as_json:
        click.echo(json.dumps(alert_test_document(results), indent=2))
    if failed:
        sys.exit(1)


@main.group()
def export():
    """The inventory's jobs in another scheduler's format."""


@export.command("k8s", epilog=EPILOG)
@inventory_option
@click.option("--image", default="deployer-trigger:latest", show_default=True,
              help="The trigger image (docs/kubernetes/Dockerfile builds it).")
@click.option("--namespace", metavar="NS", help="Set metadata.namespace on every manifest.")
@click.option("--skip-unexpressible", is_flag=True,
              help="Leave out, with a comment, jobs Kubernetes cannot schedule (else: error).")
@click.option("--suspend", is_flag=True, help="Emit the CronJobs suspended (to switch over job by job).")
def export_k8s(inventory_path, image, namespace, skip_unexpressible, suspend):
    """batch/v1 CronJobs (YAML) running the same trigger with the same success rules.

    Keeps the cron expression and time zone; concurrencyPolicy Forbid; retries ->
    backoffLimit; timeout -> activeDeadlineSeconds. Alert tokens are referenced from a
    Secret per channel (the header says how to create them); no secret is printed.
    """
    from . import k8s

    inv = Options(inventory_path).inventory()
    manifests, skipped = k8s.export(inv, image, namespace, skip_unexpressible, suspend)
    click.echo(k8s.render_yaml(inv, manifests, skipped, namespace), nl=False)
    for item in skipped:
        click.echo(f"deployer: warning: skipped {item.job}: {item.reason}", err=True)
    for warning in k8s.loopback_warnings(inv):
        click.echo(f"deployer: warning: {printable(warning)}", err=True)


if __name__ == "__main__":
    sys.exit(main())
