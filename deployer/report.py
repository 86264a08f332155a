"""What the host commands print: one JSON shape (`version`, `command`, fixed vocabularies) for
status, history, run, plan, push and move, and the text an operator reads. Pure: no I/O.

docs/json.md documents every key; tests/test_report.py pins them (a renamed or dropped key
fails it). Times are ISO 8601 in the job's own zone (its schedule's: `timezone =` or CRON_TZ=).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional, Sequence
from zoneinfo import ZoneInfo

from .contract.options import DURATION_SYNTAX, Invalid, duration_seconds
from .contract.protocol import AuditEntry, Held, JobStatus, RunInfo, duration_text
from .contract.text import printable

VERSION = 1  # of these documents; a key renamed or dropped is a new version
# `result` of a job: its last run (ok, failed, running, never), unless it is paused or held.
RESULTS = ("ok", "failed", "running", "never", "paused", "held", "fenced", "skipped")
# Of one run (fenced: its service holds a newer owner's epoch; skipped: a slot that called nothing,
# by the job's catch_up or concurrency: issue 23).
RUN_RESULTS = ("ok", "failed", "fenced", "skipped")


def envelope(command: str, **body: Any) -> dict:
    return {"version": VERSION, "command": command, **body}


# -- times ---------------------------------------------------------------------------------------

def job_zone(job) -> str:
    """The zone a job's schedule is read in (CRON_TZ= wins over `timezone =`); UTC when unknown."""
    if job is None:
        return "UTC"
    from .schedule import to_calendar

    return to_calendar(job.schedule, job.on_calendar, job.timezone).timezone


def parse_iso(text: str) -> Optional[float]:
    """The agent's ISO 8601 (`2026-11-25T14:00:00+00:00`) -> unix seconds; "" -> None."""
    return datetime.fromisoformat(text).timestamp() if text else None


def iso(moment: Optional[float], zone: str, precise: bool = False) -> Optional[str]:
    """ISO 8601 in `zone`, to the second (`precise`: to the millisecond, for a run's start)."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, ZoneInfo(zone)).isoformat(timespec="milliseconds" if precise else "seconds")


def span(seconds: float) -> str:
    """A length of time as people say it: `51 s`, `3 min`, `2 h 13 min`, `3 d 4 h`."""
    seconds = abs(int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative(moment: float, now: float) -> str:
    """`in 51 s`, `3 min ago`, `now`."""
    delta = moment - now
    if abs(delta) < 1:
        return "now"
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


CLOCK_FORMAT = "%Y-%m-%d %H:%M:%S %Z"  # the one way the CLI prints a moment: 2026-12-06 11:08:41 UTC


def clock(moment: Optional[float], zone: str = "UTC") -> str:
    """`2026-12-06 11:08:41 UTC`: a moment as every text view prints it, in `zone` and naming
    it (its abbreviation, else its offset: `+04`); "-" for none. --json keeps ISO 8601."""
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, ZoneInfo(zone)).strftime(CLOCK_FORMAT)


def clock_of(text: Optional[str], zone: str) -> str:
    """An ISO 8601 time with its offset (a --json value) -> clock() in `zone` (an offset alone
    names no zone: `UTC+08:00`, where the zone says `CST`)."""
    return clock(datetime.fromisoformat(text).timestamp(), zone) if text else "-"


def shown(moment: Optional[float], zone: str, now: float) -> str:
    """`2026-11-25 22:00:00 CST (in 51 s)`, in the job's zone; "-" for none."""
    if moment is None:
        return "-"
    return f"{clock(moment, zone)} ({relative(moment, now)})"


# -- status --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostStatus:
    """One host's answer to `status`, or why there is none (`error`: unreachable, refused)."""

    name: str
    address: str
    jobs: tuple = ()  # JobStatus
    held: Optional[Held] = None  # the host holds its jobs: its lease ran out while it was down
    error: Optional[str] = None
    reachable: bool = True  # False: no connection; an agent that refused (error set) was reached
    machine: str = ""  # which machine answered (StatusAnswer.machine); "" when unknown
    owner: Optional[str] = None  # the [host:NAME] that machine was last pushed as
    last_push: Optional[AuditEntry] = None  # the audit trail's last successful push


def held_text(held: Optional[Held]) -> Optional[str]:
    """`was down 2h13m` while the host holds its jobs (its lease ran out while it was down);
    `failing closed` when it holds for another cause (Held.reason says which)."""
    if held is None:
        return None
    return "failing closed" if held.reason else f"was down {duration_text(held.down_for_seconds)}"


def held_document(held: Optional[Held]) -> Optional[dict]:
    """A hold as `status --json` and `push --json` show it on the host: None when not held."""
    if held is None:
        return None
    return {"since": held.since, "down_for_seconds": held.down_for_seconds, "lease_seconds": held.lease_seconds,
            "reason": held.reason or None, "text": held_text(held)}


def _last_run(status: JobStatus) -> tuple[Optional[str], Optional[float], Optional[str], Optional[int],
                                          Optional[float]]:
    """-> (last result, last start, reason, exit status, duration) from systemd's facts and the
    journal's (status.last_run), whichever is newer; systemd alone knows a run in progress."""
    if status.service_state in ("activating", "deactivating"):
        return "running", parse_iso(status.started), status.doing or None, None, None
    run: Optional[RunInfo] = status.last_run
    started = parse_iso(status.started) if status.finished else None
    if started is not None and (run is None or run.started < started - 1):
        ok = status.result == "success"
        finished = parse_iso(status.finished)
        reason = None if ok else (status.result if status.result in ("timeout", "oom-kill", "signal", "core-dump")
                                  else f"{status.result or 'failed'} (exit status {status.exit_status})")
        return ("ok" if ok else "failed"), started, reason, status.exit_status, \
            (round(finished - started, 3) if finished else None)
    if run is not None:
        exit_status = (0 if run.result == "ok" else 1) if run.source == "record" else None
        if started is not None and status.result:  # systemd still knows this very run
            exit_status = status.exit_status
        return run.result, run.started, (None if run.result == "ok" else run.reason), exit_status, \
            (run.duration if run.duration >= 0 else None)
    return "never", None, None, None, None


def inventory_calendar(job) -> tuple[str, ...]:
    """The OnCalendar= lines a push gives `job`'s timer (() for @reboot: OnBootSec=)."""
    from .schedule import to_calendar

    return to_calendar(job.schedule, job.on_calendar, job.timezone).lines


def _watch_options(job) -> dict:
    """The job's alert_late / alert_long in seconds as the host's watcher applies them: null when
    unset, or when the job has no alert channel to tell (the options then do nothing)."""
    on = bool(getattr(job, "alert", None))
    return {"alert_late": job.alert_late if on else None, "alert_long": job.alert_long if on else None}


def _expression(job) -> Optional[str]:
    if job is None:
        return None
    if job.schedule is None and not job.on_calendar:  # chained: no calendar of its own
        return f"after {job.after}" if job.after else "on_failure_run"
    return job.schedule if job.schedule is not None else " | ".join(job.on_calendar)


def same_calendar(running: Sequence[str], wanted: Sequence[str], normal: dict) -> bool:
    """Do the timer's lines (as systemd reports them) and the inventory's fire alike? `normal`:
    line -> systemd's normalized form of it (schedule.normalized); lines it lacks are compared
    as written. Order does not matter: a timer fires at the union of its lines."""
    def form(lines):
        return sorted(normal.get(line, line) for line in lines)

    return form(running) == form(wanted)


def job_row(host: HostStatus, status: JobStatus, job, now: float, listed: bool = True,
            normal: Optional[dict] = None, also_on: Sequence[str] = ()) -> dict:
    """One job of one host, as `status --json` lists it (keys pinned by tests/test_report.py).
    `job`: the inventory's Job of that name (its zone), None if none; `listed`: the inventory
    puts it on this host (else a push removes it here); `also_on`: the other machines whose
    timer of this job is active."""
    zone = job_zone(job)
    last_result, last, reason, exit_status, duration = _last_run(status)
    skip = status.last_skipped
    if skip is not None and last_result != "running" and (last is None or skip.started >= last - 1):
        # A slot skipped since the last run (a catch-up skipped at boot exits 0: systemd says ok).
        last_result, last, reason, exit_status, duration = "skipped", skip.started, skip.reason, 0, 0.0
    held = held_text(host.held)
    result = "held" if held else "fenced" if status.fenced else "paused" if status.paused else last_result
    next_run = parse_iso(status.next) if status.next else None
    wanted = inventory_calendar(job) if listed and job is not None else None
    return {
        "host": host.name, "job": status.job, "result": result, "reason": reason,
        "last_result": last_result, "last": iso(last, zone), "duration": duration,
        "exit_status": exit_status, "next": iso(next_run, zone), "paused": status.paused, "fenced": status.fenced,
        "held": held, "timer": "active" if status.timer_state == "active" else "inactive",
        "schedule": list(status.calendar), "timezone": zone, "expression": _expression(job),
        "in_inventory": job is not None and listed,
        "inventory_schedule": list(wanted) if wanted is not None else None,
        "schedule_differs": wanted is not None and not same_calendar(status.calendar, wanted, normal or {}),
        "inventory_host": job.host if job is not None else None, "also_on": list(also_on),
        "skipped": status.skipped, "last_skipped": None if skip is None else {
            "slot": iso(skip.slot or None, zone), "at": iso(skip.started, zone), "reason": skip.reason},
        **_watch_options(job),
    }


def _listed(host: HostStatus, status: JobStatus, inventory_jobs: dict):
    """The inventory's Job of this name (wherever it puts it) and whether it puts it on this host."""
    job = inventory_jobs.get((host.name, status.job))
    return (job, True) if job is not None else (inventory_jobs.get((None, status.job)), False)


def _unequal_lines(hosts: Sequence[HostStatus], inventory_jobs: dict) -> set[str]:
    """The calendar lines of every job whose timer's lines are not, as written, the inventory's:
    only these need systemd to say whether they differ."""
    found = set()
    for host in hosts:
        for status in host.jobs:
            job, listed = _listed(host, status, inventory_jobs)
            wanted = inventory_calendar(job) if listed else None
            if wanted is not None and tuple(status.calendar) != tuple(wanted):
                found |= set(status.calendar) | set(wanted)
    return found


def _running(hosts: Sequence[HostStatus]) -> dict:
    """job -> [(host, machine)] whose timer of it is active (a held host runs nothing)."""
    running: dict = {}
    for host in hosts:
        for status in () if host.held else host.jobs:
            if status.timer_state == "active":
                running.setdefault(status.job, []).append((host.name, host.machine or host.name))
    return running


def _also_on(running: dict, host: HostStatus, job: str) -> list[str]:
    """The other machines whose timer of `job` is active, each once (a machine reached under two
    names is one), by the first name it answered under."""
    seen, names = {host.machine or host.name}, []
    for name, machine in running.get(job, ()):
        if machine not in seen:
            seen.add(machine)
            names.append(name)
    return names


def _absent_row(host: HostStatus, job) -> dict:
    """A job the inventory puts on `host` that it did not report: `unknown` when the host gave
    no status at all, else `not_installed` (a push pending)."""
    if host.error:
        why = "no status from the host" if host.reachable else "host unreachable"
        result, reason = "unknown", f"{why}: {host.error}"
    else:
        result, reason = "not_installed", "in the inventory, not on the host: push pending"
    return {"host": host.name, "job": job.name, "result": result, "reason": reason,
            "inventory_schedule": list(inventory_calendar(job)), "timezone": job_zone(job),
            "expression": _expression(job), **_watch_options(job)}


def _inventory_only(hosts: Sequence[HostStatus], inventory_jobs: dict) -> list[dict]:
    rows = []
    for host in hosts:
        reported = {status.job for status in host.jobs}
        rows += [_absent_row(host, job) for (name, job_name), job in inventory_jobs.items()
                 if name == host.name and job_name not in reported]
    return rows


def _host_entry(host: HostStatus, hosts: Sequence[HostStatus]) -> dict:
    twins = [other.name for other in hosts if other is not host and host.machine and other.machine == host.machine]
    return {"host": host.name, "address": host.address, "reachable": host.reachable, "error": host.error,
            "held": held_document(host.held), "jobs": len(host.jobs), "machine": host.machine or None,
            "owner": host.owner, "same_machine_as": twins,
            "last_push": audit_entry(host.last_push) if host.last_push else None}


def status_document(hosts: Sequence[HostStatus], inventory_jobs: dict, now: float,
                    normalize: Optional[Callable[[list], dict]] = None) -> dict:
    """`status --json`: every host asked (reachable or not), every job of those that answered,
    and (`inventory_only`) the inventory's jobs of those hosts that they did not report.
    `inventory_jobs`: (host, job name) -> Job, and (None, job name) -> Job. `normalize`: calendar
    lines -> their normalized forms (schedule.normalized), asked once, for differing lines only."""
    unequal = _unequal_lines(hosts, inventory_jobs)
    normal = normalize(sorted(unequal)) if normalize and unequal else {}
    running = _running(hosts)
    rows = []
    for host in hosts:
        for status in host.jobs:
            job, listed = _listed(host, status, inventory_jobs)
            rows.append(job_row(host, status, job, now, listed=listed, normal=normal,
                                also_on=_also_on(running, host, status.job)))
    return envelope("status", now=iso(now, "UTC"), hosts=[_host_entry(h, hosts) for h in hosts], jobs=rows,
                    inventory_only=_inventory_only(hosts, inventory_jobs))


def machine_aliases(document: dict) -> dict[str, str]:
    """Host names that reach a machine already listed under another name -> that name: the one
    the machine was last pushed as (its owner), else the first in the inventory."""
    order = [host["host"] for host in document["hosts"]]
    aliases = {}
    for host in document["hosts"]:
        group = [name for name in order if name == host["host"] or name in host["same_machine_as"]]
        if len(group) > 1:
            primary = host["owner"] if host["owner"] in group else group[0]
            if primary != host["host"]:
                aliases[host["host"]] = primary
    return aliases


Paint = Callable[[str], str]


def _table(rows: list[list[str]], column: int = -1, paint: Optional[Paint] = None) -> list[str]:
    """Aligned columns; every cell is text from a host or an inventory, escaped (printable).
    `paint` (colour.result) is given each body cell of `column`, padded, once escaped."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def cell(text: str, width: int, index: int, body: bool) -> str:
        padded = text.ljust(width)
        return paint(padded) if paint and body and index == column else padded

    return ["  ".join(cell(text, w, i, n > 0) for i, (text, w) in enumerate(zip(row, widths))).rstrip()
            for n, row in enumerate(rows)]


def result_text(row: dict) -> str:
    """`failed: status 500, expected 2xx`, `paused (last: ok)`, `held: was down 2 h 13 min`."""
    last = row["last_result"] + (f": {row['reason']}" if row["reason"] else "")
    if row["result"] == "held":
        return f"held: {row['held']} (last: {last})"
    if row["result"] == "paused":
        return f"paused (last: {last})"
    if row["result"] == "fenced":
        return f"fenced: its service holds a newer owner's epoch; timer stopped here (last: {last})"
    return last


RUNBOOK_TWO_HOSTS = "docs/runbooks/host-down.md#a-job-runs-on-two-hosts"


def notes(row: dict, silent: Sequence[str] = ()) -> list[str]:
    """What an operator must know of a job beyond its result: the host runs another schedule
    than the inventory's, or a job the inventory does not put there (a double run?).
    `silent`: the hosts that gave no status (what they run is unknown)."""
    found = []
    host, there, others = row["host"], row["inventory_host"], ", ".join(row["also_on"])
    if row.get("skipped") and row["last_skipped"]:
        last = row["last_skipped"]
        found.append(f"{row['skipped']} slot{'s' if row['skipped'] != 1 else ''} skipped (last "
                     f"{clock_of(last['slot'], row['timezone'])}: {last['reason']})")
    if row["schedule_differs"]:
        found.append(f"schedule differs from inventory ({row['expression']}): push pending")
    if not row["in_inventory"]:
        if row["also_on"] and row["timer"] == "active":
            found.append(f"DOUBLE RUN: not in inventory for {host}, and runs on {others} too: push {host} "
                         f"to remove it here; see {RUNBOOK_TWO_HOSTS}")
        elif there in silent:
            found.append(f"not in inventory for this host (the inventory puts it on {there}, which gave no "
                         f"status: it may run there too); see {RUNBOOK_TWO_HOSTS}")
        elif there:
            found.append(f"not in inventory for this host (the inventory puts it on {there}): a moved job "
                         f"still here? push {host} to remove it; see {RUNBOOK_TWO_HOSTS}")
        else:
            found.append(f"not in inventory: the next push to {host} removes it")
    elif row["also_on"] and row["timer"] == "active":
        found.append(f"DOUBLE RUN: also runs on {others}, which the inventory does not put it on; "
                     f"see {RUNBOOK_TWO_HOSTS}")
    return found


def _schedule_cell(row: dict) -> str:
    """What the host's timer runs: the inventory's expression when the timer's calendar is
    exactly what the inventory renders (easier to read), else the timer's own lines."""
    if row["in_inventory"] and not row["schedule_differs"] and row["expression"]:
        return row["expression"]
    return " | ".join(row["schedule"]) or "at boot"  # a timer of ours without a calendar: OnBootSec=


def _job_cells(row: dict, now: float, silent: Sequence[str]) -> list[str]:
    zone = row["timezone"]
    return [row["host"], row["job"], _schedule_cell(row),
            shown(parse_iso(row["last"]) if row["last"] else None, zone, now),
            shown(parse_iso(row["next"]) if row["next"] else None, zone, now), result_text(row),
            "; ".join(notes(row, silent))]


def _absent_cells(row: dict) -> list[str]:
    """`unknown` (the why, e.g. `host unreachable: ...`, as its note) or `not installed`."""
    if row["result"] == "unknown":
        return [row["host"], row["job"], "?", "?", "?", "unknown", row["reason"]]
    return [row["host"], row["job"], "-", "-", "-", "not installed", row["reason"]]


def _rows_by_host(document: dict, now: float) -> list[list[str]]:
    """Each host's jobs, then the inventory's jobs it did not report; a machine already listed
    under another name is not listed twice."""
    aliases = machine_aliases(document)
    silent = [host["host"] for host in document["hosts"] if host["error"]]
    rows = []
    for host in document["hosts"]:
        if host["host"] in aliases:
            continue
        rows += [_job_cells(row, now, silent) for row in document["jobs"] if row["host"] == host["host"]]
        rows += [_absent_cells(row) for row in document["inventory_only"] if row["host"] == host["host"]]
    return rows


def _host_lines(document: dict) -> list[str]:
    aliases = machine_aliases(document)
    lines = []
    for host in document["hosts"]:
        name = host["host"]
        if name in aliases:
            lines.append(f"host {name}: SAME MACHINE as host {aliases[name]} (machine {host['machine'][:12]}): one "
                         f"machine answers for both names, its jobs are listed under {aliases[name]}; fix the "
                         f"address of one of them in the inventory")
        elif host["error"]:
            lines.append(f"host {name}: {'ERROR' if host['reachable'] else 'UNREACHABLE'}: {printable(host['error'])}")
        elif host["held"]:
            why = f": {host['held']['reason']}" if host["held"].get("reason") else ""
            lines.append(f"host {name}: held: {host['held']['text']}{why}: no job runs until `deployer push` "
                         f"or `deployer release --host {name}`")
        elif not host["jobs"]:
            lines.append(f"host {name}: no jobs installed")
        if host.get("last_push") and name not in aliases:
            lines.append(f"host {name}: last push: {last_push_text(host['last_push'])}")
    return lines


def last_push_text(entry: dict) -> str:
    """`by alice@laptop, 2026-12-06 14:03:01 UTC, commit abc1234 (dirty)` (escaped)."""
    commit = f", commit {entry['commit'][:7]}{' (dirty)' if entry['dirty'] else ''}" if entry["commit"] else \
        ", not from a git commit"
    return printable(f"by {_who(entry)}, {clock_of(entry['time'], 'UTC')}{commit}")


def _who(entry: dict) -> str:
    """`alice@laptop (ssh deploy from 10.0.0.9)`: the client's word, then the host's own."""
    ssh = f"ssh {entry['ssh_user'] or '?'}" + (f" from {entry['ssh_from']}" if entry["ssh_from"] else "")
    return f"{entry['user'] or '?'}@{entry['client'] or '?'} ({ssh})"


# -- audit ---------------------------------------------------------------------------------------

def audit_entry(entry: AuditEntry, host: Optional[str] = None) -> dict:
    """One audited action as `audit --json` and `status --json` (`last_push`) give it."""
    actor = entry.actor
    document = {"time": iso(entry.time, "UTC", precise=True), "action": entry.action, "outcome": entry.outcome,
                "target": entry.target or None, "detail": entry.detail or None, "as_host": entry.host or None,
                "user": actor.user or None, "client": actor.client or None, "command": actor.command or None,
                "ssh_user": entry.ssh_user or None, "ssh_from": entry.ssh_from or None,
                "inventory_sha256": actor.inventory_sha256 or None, "commit": actor.commit or None,
                "dirty": actor.dirty}
    return {"host": host, **document} if host is not None else document


def audit_document(since: float, until: float, entries: Sequence[tuple[str, AuditEntry]], hosts: Sequence[str],
                   unread: Sequence[str] = ()) -> dict:
    """`audit --json`: `entries` ((host, AuditEntry) pairs) merged oldest first, from `hosts`;
    `unread`: hosts asked that did not answer (their actions are missing)."""
    ordered = sorted(entries, key=lambda pair: (pair[1].time, pair[0]))
    return envelope("audit", since=iso(since, "UTC"), until=iso(until, "UTC"), hosts=list(hosts),
                    unread_hosts=list(unread), entries=[audit_entry(entry, host) for host, entry in ordered])


def audit_text(document: dict) -> str:
    """TIME HOST ACTION TARGET OUTCOME WHO COMMIT DETAIL, oldest first, then one summary line."""
    rows = [["TIME", "HOST", "ACTION", "TARGET", "OUTCOME", "WHO", "COMMIT", "DETAIL"]]
    for e in document["entries"]:
        action = e["action"] + (f" ({e['command']})" if e["command"] and e["command"] != e["action"] else "")
        commit = (e["commit"][:7] + ("+dirty" if e["dirty"] else "")) if e["commit"] else "-"
        rows.append([clock_of(e["time"], "UTC"), e["host"], action, e["target"] or "-", e["outcome"], _who(e),
                     commit, e["detail"] or ""])
    lines = _table(rows) if document["entries"] else []
    read = len(document["hosts"]) - len(document["unread_hosts"])
    summary = (f"{len(document['entries'])} actions on {read} of {len(document['hosts'])} hosts since "
               f"{clock_of(document['since'], 'UTC')}")
    if document["unread_hosts"]:
        summary += f"; not read: {', '.join(document['unread_hosts'])}"
    return "\n".join(lines + [printable(summary)]) + "\n"


def status_text(document: dict, now: float, paint: Optional[Paint] = None) -> str:
    """The table (HOST JOB SCHEDULE LAST NEXT RESULT, and NOTE when a job has one), then one
    line per host that needs one (unreachable, refused, held, empty, one machine twice).
    `paint`: colours a RESULT cell (on a terminal)."""
    header = ["HOST", "JOB", "SCHEDULE", "LAST", "NEXT", "RESULT", "NOTE"]
    rows = _rows_by_host(document, now)
    if not any(row[-1] for row in rows):
        header, rows = header[:-1], [row[:-1] for row in rows]
    return "\n".join(_table([header] + rows, header.index("RESULT"), paint) + _host_lines(document)) + "\n"


# -- history -------------------------------------------------------------------------------------

# A run that names no slot of the schedule (it started late, or was killed before it could name
# one) covers the latest uncovered slot at most this long before it started.
LATE_TOLERANCE = 60


def run_entry(run: RunInfo, zone: str) -> dict:
    return {"run": run.run, "slot": iso(run.slot, zone) if run.slot else None, "started": iso(run.started, zone, precise=True),
            "duration": run.duration if run.duration >= 0 else None, "attempts": run.attempts or None,
            "result": run.result, "reason": run.reason, "http_status": run.http_status, "source": run.source,
            "key": run.key or None, "params": run_params(run) or None, "run_by": run.by or None,
            "after": run.after or None}


def run_params(run: RunInfo) -> dict:
    """The parameter values a run used ({} for none, or a record that is not a JSON object of strings)."""
    try:
        found = json.loads(run.params) if run.params else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def not_run_entries(parent: str, parent_runs: Sequence[RunInfo], zone: str) -> list:
    """A chained job's slots that did not run because its `after` parent did not succeed (the
    parent's failed runs): `history` of the child says so, from the parent's records."""
    entries = []
    for run in parent_runs:
        if run.result == "ok":
            continue
        named = run.key.split("/", 1)[1] if "/" in run.key else (iso_z(run.slot) if run.slot else run.run)
        entries.append({"slot": iso(run.slot, zone) if run.slot else None, "parent": parent, "parent_run": run.run,
                        "parent_result": run.result, "reason": f"{parent} {named} {run.result}"})
    return entries


def iso_z(seconds: float) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(int(seconds)))


def missed_slots(slots: Sequence[float], runs: Sequence[RunInfo], until: float) -> list[float]:
    """The scheduled slots (up to `until`) no run covers. A run covers the slot its record names;
    a run killed before it could name one covers the latest uncovered one at most LATE_TOLERANCE
    before its start; a manual run (its own key) covers none."""
    ordered = sorted(slots)
    covered = {run.slot for run in runs if run.slot in set(ordered)}
    for run in runs:
        if "/manual-" in run.key:
            continue
        named = run.slot or run.started
        if run.slot in covered or named > until:
            continue
        candidates = [s for s in ordered if s <= named < s + LATE_TOLERANCE and s not in covered]
        if candidates:
            covered.add(candidates[-1])
    return [s for s in ordered if s not in covered]


def history_document(host: str, job: str, zone: str, since: float, until: float, runs: Sequence[RunInfo],
                     slots: Optional[Sequence[float]], slots_until: Optional[float],
                     run_hosts: Sequence[str] = (), unread: Sequence[str] = (), not_run: Sequence[dict] = (),
                     after: Optional[str] = None) -> dict:
    """`history --json`. `slots`: the schedule's slots in [since, slots_until] (None: unknown,
    e.g. @reboot or a job not in the inventory); a missed slot is one no run covers.
    `run_hosts`: where each run ran, when the runs were read from several hosts (else `host`);
    `unread`: hosts that were asked and did not answer (their runs, if any, are missing).
    A chained job: `after`, its parent, and `not_run` (not_run_entries), the slots it did not run."""
    where = list(run_hosts) or [host] * len(runs)
    ran = [r for r in runs if r.result != "skipped"]  # a skipped slot is listed, but it is not a run
    durations = sorted(r.duration for r in ran if r.duration >= 0)
    missed = missed_slots(slots, runs, slots_until) if slots is not None else None
    return envelope("history", host=host, job=job, timezone=zone, since=iso(since, zone), until=iso(until, zone),
                    hosts=[host] + sorted(set(where) - {host}), unread_hosts=list(unread),
                    runs=[dict(run_entry(r, zone), host=h) for r, h in zip(runs, where)],
                    after=after, not_run=list(not_run), summary={
                        "runs": len(ran), "failures": sum(r.result != "ok" for r in ran),
                        "skipped": len(runs) - len(ran),
                        "p50_duration": round(_median(durations), 3) if durations else None,
                        "max_duration": durations[-1] if durations else None,
                        "slots": len(slots) if slots is not None else None,
                        "missed_slots": len(missed) if missed is not None else None,
                        "missed": [iso(s, zone) for s in missed] if missed is not None else None,
                        "slots_until": iso(slots_until, zone) if slots_until is not None else None})


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _skipped_text(summary: dict) -> str:
    return f"{summary['skipped']} skipped (catch_up, concurrency), " if summary.get("skipped") else ""


def history_text(document: dict, paint: Optional[Paint] = None) -> str:
    """The runs as a table (SLOT STARTED DURATION ATTEMPTS RESULT REASON, and a HOST column first
    when they ran on more than one host) and the summary line. `paint`: colours a RESULT cell (on
    a terminal)."""
    zone = document["timezone"]
    several = len(document.get("hosts", ())) > 1
    rows = [["SLOT", "STARTED", "DURATION", "ATTEMPTS", "RESULT", "REASON"]]
    for run in document["runs"]:
        rows.append([clock_of(run["slot"], zone), clock_of(run["started"], zone), _seconds(run["duration"]),
                     str(run["attempts"] or "-"), run["result"], run["reason"] or ""])
    if any(run.get("params") or run.get("run_by") for run in document["runs"]):  # issue 23 item 7
        rows[0].append("PARAMS")
        for run, row in zip(document["runs"], rows[1:]):
            asked = ",".join(f"{name}={value}" for name, value in (run.get("params") or {}).items())
            row.append((asked + (f" (by {run['run_by']})" if run.get("run_by") else "")).strip())
    if several:
        rows = [["HOST"] + rows[0]] + [[run["host"]] + row for run, row in zip(document["runs"], rows[1:])]
    lines = _table(rows, 5 if several else 4, paint) if document["runs"] else []
    lines += [f"{run['run']}  after {run['after']}" for run in document["runs"] if run.get("after")]
    lines += [f"not run: {entry['reason']}" for entry in document.get("not_run", ())]
    s = document["summary"]
    hosts = " and ".join(document["hosts"]) if several else document["host"]
    text = (f"{document['job']} on {hosts} since {clock_of(document['since'], zone)}: {s['runs']} runs, "
            f"{s['failures']} failed, {_skipped_text(s)}duration p50 {_seconds(s['p50_duration'])}, max {_seconds(s['max_duration'])}")
    if s["missed_slots"] is None:
        text += ", missed slots: not known (no schedule to compare with)"
    else:
        text += f", {s['missed_slots']} missed of {s['slots']} slots"
        if s["missed"]:
            shown_missed = ", ".join(clock_of(m, zone) for m in s["missed"][:5])
            text += f" ({shown_missed}{', ...' if len(s['missed']) > 5 else ''})"
    return "\n".join(lines + [printable(text)]) + "\n"


# -- run, plan, push, move -----------------------------------------------------------------------

def run_document(host: str, job: str, zone: str, answer) -> dict:
    """`run --json`: how the run went (from its record when it wrote one) and its journal lines."""
    run = answer.run
    reason = run.reason if run is not None else (None if answer.ok else
                                                 f"{answer.result or 'failed'} (exit status {answer.exit_status})")
    return envelope("run", host=host, job=job, result="ok" if answer.ok else "failed",
                    reason=None if answer.ok and run is None else reason, exit_status=answer.exit_status,
                    systemd_result=answer.result or None, timezone=zone,
                    run=run_entry(run, zone) if run is not None else None, output=answer.output.splitlines(),
                    merged_timer_elapse=getattr(answer, "merged_elapse", "") or None,
                    attached_since=iso(datetime.fromisoformat(answer.attached).timestamp(), zone)
                    if answer.attached else None)


def plan_document(host: str, plan, chains: Sequence[dict] = ()) -> dict:
    """`chains`: plan.chains of the host's jobs (who starts whom, for the same slot)."""
    from .plan import as_dict

    return envelope("plan", host=host, **as_dict(plan), chains=list(chains))


def push_document(pushed) -> dict:
    """`push --json`: the plan and what the switch did (the same keys when nothing was to do)."""
    from .plan import as_dict

    result = pushed.result
    return envelope("push", host=pushed.host, **as_dict(pushed.plan),
                    reloaded=bool(result and result.reloaded),
                    started=list(result.started) if result else [],
                    restarted=list(result.restarted) if result else [],
                    stopped=list(result.stopped) if result else [],
                    enabled_for_boot=list(result.enabled_for_boot) if result else [],
                    kept_paused=list(result.kept_paused) if result else [],
                    recovered_interrupted_push=bool(result and result.recovered_interrupted_push),
                    released=held_document(result.released if result else None),
                    seconds=dict(result.seconds) if result else {})


def move_document(moving: Sequence[str], source: str, target: str, takeover: Any = None) -> dict:
    """`takeover`: the protocol's Takeover when the source did not answer (move waited out its
    lease, or --force did not)."""
    return envelope("move", moved=list(moving), **{"from": source, "to": target},
                    source_unreachable=takeover is not None,
                    waited_seconds=takeover.waited_seconds if takeover else None,
                    forced=bool(takeover and takeover.forced))


def now_utc() -> float:
    return datetime.now(timezone.utc).timestamp()


def since_time(text: str, now: float) -> float:
    """`--since`: an ISO 8601 date or time (`2026-11-20`, `2026-11-20T08:00+08:00`; without an
    offset, this machine's zone) or a duration back from now in the inventory's syntax (`7d`,
    `36h`, `1d12h`, `90m`; options.duration_seconds). Raises ValueError naming both forms."""
    try:
        # A date first: `20261120` is ISO 8601's basic form, not 20261120 seconds ago.
        return datetime.fromisoformat(text.strip()).timestamp()  # a naive time is local time
    except ValueError:
        pass
    try:
        return now - duration_seconds(text)
    except Invalid:
        raise ValueError(f"{text!r} is neither a duration ({DURATION_SYNTAX}) nor an ISO 8601 date or time "
                         "(2026-11-20, 2026-11-20T08:00+08:00)") from None


# -- alert test -----------------------------------------------------------------------------------

# `result` of one alert test: the channel took the message, answered no, or gave no answer at all.
ALERT_TEST_RESULTS = ("accepted", "refused", "no_answer")


def alert_test_result(answer) -> str:
    if answer.accepted:
        return "accepted"
    return "refused" if answer.http_status is not None else "no_answer"


def alert_test_line(host: str, alert_type: str, answer) -> str:
    """`alert ops (dingtalk) via cron01: refused (HTTP 200; errcode 310000: token is not exist)`."""
    said = printable(answer.answer)
    if answer.http_status is not None and not said.startswith("HTTP "):
        said = f"HTTP {answer.http_status}; {said}" if said else f"HTTP {answer.http_status}"
    verdict = {"accepted": "accepted", "refused": "REFUSED", "no_answer": "NO ANSWER"}[alert_test_result(answer)]
    return f"alert {answer.channel} ({alert_type}) via {host}: {verdict} ({said})"


def alert_test_document(results) -> dict:
    """results: [(host, channel type, AlertTestAnswer)] -> the `--json` document."""
    return envelope("alert test", results=[
        {"host": host, "channel": answer.channel, "type": alert_type, "result": alert_test_result(answer),
         "http_status": answer.http_status, "answer": answer.answer} for host, alert_type, answer in results])


def _median(values: Sequence[float]) -> float:
    import statistics  # here: its imports are 3 ms of every command's start, for one summary

    return statistics.median(values)
