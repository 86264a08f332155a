"""The host's metrics for node_exporter's textfile collector, and its heartbeat (issue 14).

Run as root by `deployer-host@metrics.service` (paths.METRICS_SERVICE), never by a job run:
every minute (the heartbeat timer), a few seconds after runs end (the debounce timer that every
job's OnSuccess=/OnFailure= starts: a burst of 300 runs starts it a handful of times, not 300),
and after every push, pause and resume (the agent starts it). Each time it reads the run records
(record.py) the journal got since its cursor, adds them to the counters kept in
paths.METRICS_STATE, asks systemd for the state of the jobs that may have changed since (as
`deployer status` does, through the same agent function, so the two agree; see jobs_to_ask), and
replaces one file, paths.METRICS_FILE, whole.

Why not the trigger: a job runs as a DynamicUser in a sandbox, so it could write only where
systemd hands it a directory (StateDirectory=, under /var/lib/private, which node_exporter
cannot read), and every run would pay for it. The record it already sends is the whole input.
"""
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Optional

from deployer.contract import paths
from deployer.contract.protocol import JobStatus
from deployer.contract.record import SKIP_KINDS
from deployer.contract.unitkeys import METRICS, Timing, unit_text
from deployer.host.journal import Position, Recorded, read_records

# 2: each job's last run keeps its record's journal cursor (1 compared the records' start times).
STATE_VERSION = 2
# The heartbeat URL hears from the host at most this often (the collector also runs after runs).
PING_INTERVAL = 30
PING_TIMEOUT = 10.0


class MetricsError(Exception):
    """A refusal, one line (the unit's journal shows it)."""


# -- pure functions ---------------------------------------------------------------------------

def add_records(state: dict, records: List[Recorded], now: float) -> dict:
    """The counters and last run of each job after these records (in the journal's order). A
    record at or before the job's last one in the journal (a journal read again from its start)
    changes nothing. The journal's order, not the runs' clocks: after one run with the clock a day
    ahead, every later run would otherwise look older than it and never count."""
    jobs = {name: dict(values) for name, values in state.get("jobs", {}).items()}
    for recorded in records:
        record, position = recorded.record, Position.of(recorded.cursor)
        job = jobs.setdefault(record.job, {"since": now, "runs": 0, "failures": 0})
        counted = (Position.of((job.get(kind) or {}).get("cursor", "")) for kind in ("last", "last_skipped"))
        if position and not all(position.after(newest) for newest in counted):
            continue
        if record.result == "skipped":  # nothing ran: neither a run nor a failure, and not the last run
            skipped = dict(job.get("skipped") or {})
            kind = record.skipped if record.skipped in SKIP_KINDS else "catch_up"
            skipped[kind] = skipped.get(kind, 0) + 1
            job["skipped"] = skipped
            job["last_skipped"] = {"slot": record.slot, "started": record.started, "reason": record.reason,
                                   "kind": kind, "run": record.run, "cursor": recorded.cursor}
            continue
        job["runs"] += 1
        job["last"] = {"slot": record.slot, "started": record.started, "duration": record.duration,
                       "attempts": record.attempts, "result": record.result,
                       "http_status": record.http_status or 0, "cursor": recorded.cursor}
        ended = record.started + record.duration
        if record.result == "ok":
            job["last_success"] = ended
        else:
            job["failures"] += 1
            job["last_failure"] = ended
    return dict(state, version=STATE_VERSION, jobs=jobs)


def epoch(iso: str) -> float:
    """`2026-11-25T14:00:00+00:00` (the agent's status times, always UTC) -> unix seconds; "" -> 0."""
    # fromisoformat, not strptime: 20,000 calls a pass at 10,000 jobs (0.45 s with strptime)
    return datetime.fromisoformat(iso[:19]).replace(tzinfo=timezone.utc).timestamp() if iso else 0.0


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # gauge | counter
    help: str


# Every metric, in the file's order. Labels: deployer_host and deployer_job (Prometheus sets
# `job` and `instance` to the scrape target's and would rename ours to exported_*).
JOB_FAMILIES = (
    Family("deployer_job_runs_total", "counter", "Runs of the job that ended with a record (since it was pushed)."),
    Family("deployer_job_failures_total", "counter", "Runs of the job that failed."),
    Family("deployer_job_last_slot_timestamp_seconds", "gauge", "Scheduled time of the last run."),
    Family("deployer_job_last_start_timestamp_seconds", "gauge", "When the last run started."),
    Family("deployer_job_last_success_timestamp_seconds", "gauge", "When the last successful run ended."),
    Family("deployer_job_last_failure_timestamp_seconds", "gauge", "When the last failed run ended."),
    Family("deployer_job_last_duration_seconds", "gauge", "How long the last run took, retries included."),
    Family("deployer_job_last_success", "gauge", "1 if the last run succeeded, 0 if it failed."),
    Family("deployer_job_last_attempts", "gauge", "Attempts the last run made."),
    Family("deployer_job_last_http_status", "gauge", "HTTP status of the last run's last answer (0: none)."),
    Family("deployer_job_next_run_timestamp_seconds", "gauge", "When the timer fires next (0: not scheduled)."),
    Family("deployer_job_period_seconds", "gauge", "Longest gap between two scheduled runs (0: @reboot)."),
    Family("deployer_job_timeout_seconds", "gauge", "The job's timeout (whole run, retries included)."),
    Family("deployer_job_paused", "gauge", "1 if `deployer pause` stopped the job's timer."),
    Family("deployer_job_stopped", "gauge", "1 if the timer is stopped without a pause (handed off by `deployer move`)."),
    Family("deployer_job_fenced", "gauge", "1 if the host stopped the job itself: its service holds a newer owner's epoch."),
    Family("deployer_job_running", "gauge", "1 while a run is under way."),
    Family("deployer_job_running_since_timestamp_seconds", "gauge", "When the run under way started (0: none)."),
    Family("deployer_job_pushed_timestamp_seconds", "gauge", "When this host first saw the job."),
    Family("deployer_job_skipped_total", "counter", "Slots skipped without a call, by reason: catch_up (missed "
           "by more than the job's catch_up) or concurrency (came while the previous run was still going)."),
    Family("deployer_job_last_skipped_slot_timestamp_seconds", "gauge", "Scheduled time of the last skipped slot."),
)
HOST_FAMILIES = (
    Family("deployer_heartbeat_timestamp_seconds", "gauge", "When the host last wrote its metrics (every minute)."),
    Family("deployer_jobs", "gauge", "Jobs installed on the host."),
    Family("deployer_held", "gauge", "1 if the host holds its jobs (its lease ran out while it was down)."),
    Family("deployer_build_info", "gauge", "The deployer version that pushed the host's units."),
)


# A pass asks PID 1 only about jobs whose state may have changed since the last pass: at 10,000
# jobs, asking about every timer and service took 3.6 s of PID 1 each minute, and ran into the
# unit's 50 s timeout while PID 1 was busy stopping timers (issue 25, docs/performance.md). The
# rest keep what the last pass read. Every FULL_EVERY seconds, and whenever the unit directory,
# timers.target.wants or the boot changed (a push, a disable by hand, a reboot), a pass asks
# about all of them and reads the unit files again: what changes none of these (a unit file
# edited in place, the clock or the zone changed) shows within FULL_EVERY.
FULL_EVERY = 600
# A service in these states is a run under way (job_values: deployer_job_running).
RUNNING_STATES = ("activating", "deactivating", "reloading")
SEEN_FIELDS = ("timer_state", "next", "service_state", "started", "paused", "fenced")


def jobs_to_ask(seen: dict, fingerprint: list, jobs, recorded, states, paused, fenced, now: float):
    """The jobs a pass must ask systemd about; None for all of them. `states`: unit -> ActiveState
    of the loaded deployer units (one list-units call). A job is asked about when it is new, has
    new records, its timer's state is not the one the last pass saw (a pause, resume, fence or
    stop, also halfway through one), its service runs now or ran then, it was paused, resumed or
    fenced since, or its timer's next elapse has come."""
    if asks_about_all(seen, fingerprint, now):
        return None
    known = seen.get("jobs", {})
    ask = set()
    for job in jobs:
        was, timer = known.get(job), paths.job_unit(job, "timer")
        if (was is None or job in recorded
                or (states.get(timer) or "inactive") != (was["timer_state"] or "inactive")
                or states.get(paths.job_unit(job, "service")) in RUNNING_STATES
                or was["service_state"] in RUNNING_STATES
                or was["paused"] != (timer in paused) or was["fenced"] != (timer in fenced)
                or (was["next"] and epoch(was["next"]) <= now)):
            ask.add(job)
    return ask


def asks_about_all(seen: dict, fingerprint: list, now: float) -> bool:
    """A pass asks about every job (and reads the unit files again) after a push, a disable or a
    boot since the last pass, and every FULL_EVERY seconds (a clock stepped back too)."""
    full_at = seen.get("full_at", 0)
    return seen.get("fingerprint") != fingerprint or not full_at <= now < full_at + FULL_EVERY


# A directory changed this close to a pass may change again within the same mtime (its clock
# ticks coarsely): such a fingerprint is not kept, so the next pass asks about every job again.
SETTLED_SECONDS = 2.0


def settled(fingerprint: list, now: float):
    """The fingerprint to keep: None while a directory in it changed in the last SETTLED_SECONDS."""
    mtimes = [mark for mark in fingerprint if isinstance(mark, int) and mark]
    return fingerprint if all(abs(now - mtime / 1e9) > SETTLED_SECONDS for mtime in mtimes) else None


def usable_seen(seen) -> dict:
    """What the last pass read, or {} (every job is asked about) when it is not in this version's
    shape: a state written by another version never stops the collector."""
    if not isinstance(seen, dict) or not isinstance(seen.get("jobs"), dict) or not isinstance(
            seen.get("full_at"), (int, float)):
        return {}
    fields = set(SEEN_FIELDS)
    return seen if all(isinstance(v, dict) and set(v) == fields for v in seen["jobs"].values()) else {}


def seen_of(status) -> dict:
    return {field: getattr(status, field) for field in SEEN_FIELDS}


def status_of(job: str, seen: dict):
    """A JobStatus from what an earlier pass read (the fields job_values uses)."""
    timer = paths.job_unit(job, "timer")
    return JobStatus(job=job, timer=timer, service=paths.job_unit(job, "service"), **seen)


def label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def number(value: float) -> str:
    return ("%.3f" % value).rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def job_values(job: str, status, timing: Timing, state: dict) -> Dict[str, Optional[float]]:
    """One job's samples; None leaves a series out (no run yet: no last_* series)."""
    kept = state.get("jobs", {}).get(job, {})
    last = kept.get("last")
    running = status.service_state in ("activating", "deactivating", "reloading")
    timer_on = status.timer_state == "active"
    return {
        "deployer_job_runs_total": kept.get("runs", 0),
        "deployer_job_failures_total": kept.get("failures", 0),
        "deployer_job_last_slot_timestamp_seconds": last and last["slot"],
        "deployer_job_last_start_timestamp_seconds": last and last["started"],
        "deployer_job_last_success_timestamp_seconds": kept.get("last_success"),
        "deployer_job_last_failure_timestamp_seconds": kept.get("last_failure"),
        "deployer_job_last_duration_seconds": last and last["duration"],
        "deployer_job_last_success": None if not last else 1 if last["result"] == "ok" else 0,
        "deployer_job_last_attempts": last and last["attempts"],
        "deployer_job_last_http_status": last and last["http_status"],
        "deployer_job_next_run_timestamp_seconds": epoch(status.next),
        "deployer_job_period_seconds": timing.period,
        "deployer_job_timeout_seconds": timing.timeout,
        "deployer_job_paused": 1 if status.paused and not status.fenced else 0,
        "deployer_job_stopped": 1 if not timer_on and not status.paused and timing.period else 0,
        "deployer_job_fenced": 1 if status.fenced else 0,
        "deployer_job_running": 1 if running else 0,
        "deployer_job_running_since_timestamp_seconds": epoch(status.started) if running else 0,
        "deployer_job_pushed_timestamp_seconds": kept.get("since", 0),
        # One sample per reason, always both (a counter that appears only at its first skip
        # would hide that first increase from rate()).
        "deployer_job_skipped_total": {kind: (kept.get("skipped") or {}).get(kind, 0) for kind in SKIP_KINDS},
        "deployer_job_last_skipped_slot_timestamp_seconds": (kept.get("last_skipped") or {}).get("slot"),
    }


def textfile(host: str, version: str, jobs: Dict[str, Dict[str, Optional[float]]], now: float,
             held: bool = False) -> str:
    """The node_exporter textfile: every family once, HELP and TYPE first (promtool's rules)."""
    out = []
    host_label = 'deployer_host="%s"' % label_value(host)
    ordered = sorted(jobs.items())
    job_labels = {job: '%s,deployer_job="%s"' % (host_label, label_value(job)) for job, _ in ordered}
    for family in JOB_FAMILIES:
        samples = []
        for job, values in ordered:
            value = values[family.name]
            labels = job_labels[job]
            if isinstance(value, dict):  # by reason
                samples += ['%s{%s,reason="%s"} %s' % (family.name, labels, label_value(kind), number(count))
                            for kind, count in value.items()]
            elif value is not None:
                samples.append('%s{%s} %s' % (family.name, labels, number(value)))
        if samples:
            out += ["# HELP %s %s" % (family.name, family.help), "# TYPE %s %s" % (family.name, family.kind)] + samples
    host_values = {"deployer_heartbeat_timestamp_seconds": '{%s} %s' % (host_label, number(round(now, 3))),
                   "deployer_jobs": '{%s} %d' % (host_label, len(jobs)),
                   "deployer_held": '{%s} %d' % (host_label, 1 if held else 0),
                   "deployer_build_info": '{%s,version="%s"} 1' % (host_label, label_value(version))}
    for family in HOST_FAMILIES:
        out += ["# HELP %s %s" % (family.name, family.help), "# TYPE %s %s" % (family.name, family.kind),
                family.name + host_values[family.name]]
    return "\n".join(out) + "\n"


# -- side effects -----------------------------------------------------------------------------

def read_state(path: str) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {"version": STATE_VERSION, "cursor": "", "jobs": {}}
    with os.fdopen(fd) as handle:
        try:
            state = json.load(handle)
        except ValueError:
            # Unreadable (a disk error): start the counters again; Prometheus takes a counter
            # reset in its stride, and the journal's records are read again.
            return {"version": STATE_VERSION, "cursor": "", "jobs": {}}
    if isinstance(state, dict) and state.get("version") == 1:
        state = migrated(state)
    return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else {
        "version": STATE_VERSION, "cursor": "", "jobs": {}}


def migrated(state: dict) -> dict:
    """A version 1 state in version 2: each job's last run is placed at the state's cursor (the
    last record that version read: every record it counted is at or before it, none after)."""
    jobs = {name: dict(values, last=dict(values["last"], cursor=state.get("cursor") or ""))
            if isinstance(values, dict) and isinstance(values.get("last"), dict) else values
            for name, values in (state.get("jobs") or {}).items()}
    return dict(state, version=STATE_VERSION, jobs=jobs)


def open_directory(directory: str) -> int:
    """The textfile directory, opened once without following a link and checked on that very
    descriptor: it must be one only root can write (anyone else could forge metrics), and whoever
    owns its parent (Debian's postinst gives /var/lib/prometheus to `prometheus`) cannot swap it
    for a link between the check and the write."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise MetricsError("%s is not a directory root can use (%s)" % (directory, error.strerror)) from None
    info = os.fstat(fd)
    if info.st_uid != 0 or info.st_mode & 0o022:
        os.close(fd)
        raise MetricsError("%s is writable by others than root (owner uid %d, mode %o): refusing to write "
                           "metrics there; make it root-owned, 0755" % (directory, info.st_uid, info.st_mode & 0o7777))
    return fd


def write_atomically(path: str, text: str, mode: int, directory_fd: Optional[int] = None) -> None:
    """Whole or not at all (a scrape never reads half a file): a fresh temporary, then rename.
    `directory_fd`: every step inside that directory (open_directory), `path` its file name."""
    where = {} if directory_fd is None else {"dir_fd": directory_fd}
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, "." + name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, **where)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, **where)
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), mode)  # whatever the umask
            handle.write(text)
        if directory_fd is None:
            os.rename(temporary, path)
        else:
            os.rename(temporary, path, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary, **where)
        raise


def installed_jobs(layout) -> Dict[str, str]:
    """job -> its timer unit's text, for every job timer deployer installed; "" for a chained job
    (after =: a service its parent starts, no timer, no period of its own)."""
    jobs, services = {}, []
    for name in sorted(os.listdir(layout.unit_dir)):
        job = paths.job_of_unit(name)
        if not job or name == paths.RECOVER_UNIT:
            continue
        text = unit_text(name, layout.unit_dir)
        if not text.startswith(paths.MARKER):
            continue
        if name.endswith(".timer"):
            jobs[job] = text
        else:
            services.append(job)
    return {**{job: "" for job in services if job not in jobs}, **jobs}


def fingerprint(layout) -> list:
    """What changes when jobs are pushed, enabled or disabled, or the host boots: the unit
    directory and timers.target.wants (their mtimes), and the boot id."""
    marks = []
    for directory in (layout.unit_dir, os.path.join(layout.unit_dir, paths.TIMERS_WANTS)):
        try:
            marks.append(os.stat(directory).st_mtime_ns)
        except FileNotFoundError:
            marks.append(0)
    try:
        with open(layout.boot_id) as handle:
            marks.append(handle.read().strip())
    except OSError:
        marks.append("")
    return marks


def unit_states(systemd) -> Optional[dict]:
    """unit -> ActiveState of every loaded deployer timer and service: one question to PID 1,
    answered from its memory (a unit it has unloaded is inactive). None when it did not answer:
    the pass then asks about every job."""
    code, out, _ = systemd.systemctl("list-units", "--all", "--plain", "--no-legend", "--type=timer,service",
                                     paths.UNIT_PREFIX + "*", check=False)
    if code != 0:
        return None
    return {fields[0]: fields[2] for fields in (line.split(None, 4) for line in out.splitlines()) if len(fields) > 2}


def ping(url: str, log) -> bool:
    from urllib.parse import urlsplit

    from deployer.host.run import TransportError, request

    # A Healthchecks-style URL is a secret as a whole (its path is the check's key): the log
    # names the monitor's host only.
    shown = urlsplit(url).hostname or "the heartbeat URL"
    try:
        response = request("GET", url, {"User-Agent": "deployer-heartbeat/1"}, (PING_TIMEOUT, PING_TIMEOUT),
                           max_body=1024)
    except TransportError as error:
        log("heartbeat to %s failed: %s" % (shown, error.reason))
        return False
    if response.status >= 400:
        log("heartbeat to %s: status %d" % (shown, response.status))
        return False
    return True


def collect(host: str, version: str, directory: str, layout=None, systemd=None, now=None, log=print) -> str:
    """One pass: records -> counters -> the textfile (returned as written); the heartbeat ping."""
    from deployer.host.agent import Host, job_statuses
    from deployer.host.state import HostState
    from deployer.host.systemctl import Systemd

    layout = layout or paths.Layout()
    systemd = systemd or Systemd()
    now = time.time() if now is None else now
    state_path = layout.at(paths.METRICS_STATE)
    state = read_state(state_path)
    records, cursor = read_records(systemd, state.get("cursor", ""))
    state = add_records(dict(state, cursor=cursor), records, now)
    seen, mark = usable_seen(state.get("seen")), fingerprint(layout)
    full = asks_about_all(seen, mark, now)
    if full or not isinstance(seen.get("timing"), dict):
        timing = {job: METRICS.read(text) for job, text in installed_jobs(layout).items()}
    else:
        timing = {job: Timing(*value) for job, value in seen["timing"].items()}
    machine = Host(layout, systemd, host)
    states = None if full else unit_states(systemd)
    ask = None if states is None else jobs_to_ask(seen, mark, timing, {r.record.job for r in records}, states,
                                                  machine.state.paused(), machine.state.fenced(), now)
    asking = [paths.job_unit(job, "timer") for job in (timing if ask is None else sorted(ask))]
    asked = job_statuses(machine, asking) if asking else ()
    known = {} if ask is None else seen.get("jobs", {})
    known = dict({job: known[job] for job in timing if job in known}, **{s.job: seen_of(s) for s in asked})
    state["seen"] = {"fingerprint": settled(mark, now), "full_at": now if ask is None else seen["full_at"], "jobs": known,
                     "timing": {job: [t.period, t.timeout] for job, t in timing.items()}}
    # Only the installed jobs are kept: a job pruned and pushed again starts its counters again.
    jobs_state = {job: state["jobs"].get(job) or {"since": now, "runs": 0, "failures": 0} for job in timing}
    state = dict(state, jobs=jobs_state)
    values = {job: job_values(job, status_of(job, known[job]), timing[job], state) for job in timing}
    text = textfile(host, version, values, now, held=is_held(HostState(layout, host)))
    url = read_heartbeat_url(layout)
    due = url and now - state.get("pinged", 0) >= PING_INTERVAL
    if due:
        state["pinged"] = now
    os.makedirs(os.path.dirname(state_path), mode=0o755, exist_ok=True)
    write_atomically(state_path, json.dumps(state, sort_keys=True), 0o600)
    target = layout.at(directory)
    if not os.path.isdir(target):
        os.makedirs(target, mode=0o755)
    directory_fd = open_directory(target)
    try:
        write_atomically(paths.METRICS_FILE, text, 0o644, directory_fd=directory_fd)
    finally:
        os.close(directory_fd)
    if due:  # after the file: a slow monitor never holds up the metrics
        ping(url, log)
    return text


def is_held(state) -> bool:
    """A corrupt hold file holds too, and so does a boot that could not decide (as the agent reads
    them, state.HostState): the metrics say so every minute instead of stopping, which would look
    like a dead host."""
    from deployer.contract.protocol import AgentError

    try:
        return state.current_hold() is not None
    except AgentError:
        return True


def read_heartbeat_url(layout) -> str:
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(layout.at(paths.HEARTBEAT_URL), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as handle:
            return handle.read().strip()
    return ""


# Passes of one start at most: a run that ends while a pass runs is read by the next pass.
MAX_PASSES = 5


def collect_until_quiet(host: str, version: str, directory: str, layout=None, systemd=None, log=print) -> int:
    """collect() until nothing new is in the journal after a pass; the number of passes.

    After each pass the debounce timer is stopped (and waited for), then the journal is looked at
    once more. While the timer waits, or has elapsed into this very start (it stays active until
    this unit ends), a run's OnSuccess=/OnFailure= starting it does nothing: a run ending after
    the last look would wait for the minute's heartbeat (seen on loaded and unloaded CI runs).
    Once it is stopped, a run that ends arms it anew, and one that ended before is in the journal
    the look reads."""
    from deployer.host.systemctl import Systemd

    layout = layout or paths.Layout()
    systemd = systemd or Systemd()
    for number in range(1, MAX_PASSES + 1):
        collect(host, version, directory, layout=layout, systemd=systemd, log=log)
        systemd.systemctl("stop", paths.METRICS_SOON_TIMER, check=False)
        records, _ = read_records(systemd, read_state(layout.at(paths.METRICS_STATE)).get("cursor", ""))
        if not records:
            break
    return number


# A start still running after this long prints where it is (to the journal) before the unit's
# TimeoutStartSec=50s ends it: a pass takes well under a second on a host of 1,000 jobs.
STUCK_SECONDS = 40


def main(host: str, version: str, directory: str) -> int:
    import faulthandler

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    faulthandler.dump_traceback_later(STUCK_SECONDS, file=sys.stderr)
    try:
        collect_until_quiet(host, version, directory, log=log)
    except (MetricsError, OSError) as error:
        log("metrics: %s" % error)
        return 1
    return 0
