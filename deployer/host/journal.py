"""The one reader of the journal on the cron host: run records and PID 1's entries about a job's
units, turned into typed runs; and the audit trail's entries (contract/audit.py). The agent (status, history, run, resume at boot), the alert
program and the metrics collector all read runs here; the journalctl calls themselves go through
the `Systemd` boundary they are given (systemctl.Systemd; a recording fake in tests), never run here.
Standard library only.
"""
from __future__ import annotations

import contextlib
import json
import signal
from dataclasses import dataclass
from typing import Optional

from deployer.contract import audit, paths, record
from deployer.contract.protocol import RunInfo
from deployer.contract.text import utc_clock

# PID 1's "Starting <unit>..." (it carries the new run's INVOCATION_ID): when a killed run began.
UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"
# The journal fields the run lookups read (`--output-fields`: the rest of an entry stays home).
RUN_FIELDS = ("MESSAGE_ID",) + record.FIELDS + ("_PID", "UNIT", "INVOCATION_ID", "UNIT_RESULT", "EXIT_CODE",
                                                 "EXIT_STATUS", "COMMAND") + record.SENDER_FIELDS


def entry_text(value):
    """A journal field as text: journalctl -o json gives non-UTF-8 values as lists of bytes."""
    if isinstance(value, list):
        return bytes(v for v in value if isinstance(v, int)).decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def format_entry(entry):
    """One journal entry as one line: `2026-11-25 14:03:01 UTC deployer-settle[812]: POST ...`
    (UTC, written as every time the deployer prints: report.CLOCK_FORMAT)."""
    stamp = utc_clock(int(entry.get("__REALTIME_TIMESTAMP") or 0) / 1e6)
    ident = entry_text(entry.get("SYSLOG_IDENTIFIER")) or entry_text(entry.get("_COMM")) or "?"
    pid = entry_text(entry.get("_PID"))
    return "%s %s%s: %s" % (stamp, ident, "[%s]" % pid if pid else "",
                            " ".join(entry_text(entry.get("MESSAGE")).splitlines()))


# Above this many jobs, a read matches every job's entries and leaves the others out itself:
# journalctl slows with the number of match terms (1,000 jobs, 5,000 records: 2.1 s with a term
# per job, 0.23 s without; bench/status_journal.py).
PER_JOB_MATCHES = 50


def run_matches(jobs):
    """journalctl matches for the records and PID 1's run entries of `jobs` (one call for all);
    of every job's when there are more than PER_JOB_MATCHES (runs_from_journal sorts them out).

    Records are matched on the fields journald sets, never on the ones the sender writes: any
    local user can send MESSAGE_ID= and DEPLOYER_JOB= by the thousand, and a scan newest first
    would spend its limit on them (59,400 forged records hid every failed job's reason).
    _SYSTEMD_UNIT= and _SYSTEMD_SLICE= come from the sender's cgroup, which only PID 1 assigns;
    the run's stdout stream pins journald's view of it, so the record it sends before exiting
    carries them."""
    per_job = len(jobs) <= PER_JOB_MATCHES
    senders = (["_SYSTEMD_UNIT=" + paths.job_unit(j, "service") for j in jobs] if per_job
               else ["_SYSTEMD_SLICE=" + paths.JOBS_SLICE])
    return (["MESSAGE_ID=" + record.RUN_FINISHED] + senders
            + ["+", "_PID=1"] + ["MESSAGE_ID=" + m for m in (UNIT_STARTING, record.UNIT_FAILED, record.UNIT_EXITED)]
            + (["UNIT=" + paths.job_unit(j, "service") for j in jobs] if per_job else []))


def main_process_exit(entry) -> bool:
    """Is this PID 1's "Main process exited" entry? PID 1 logs a control process's end (the job's
    ExecStopPost=, killed when a loaded host runs it past TimeoutStopSec=) under the same
    MESSAGE_ID and INVOCATION_ID; COMMAND= says which (`ExecStart`, `ExecStopPost`). Taking the
    last one for the run's end grouped 14 jobs of a CI storm under `signal TERM`."""
    return entry.get("MESSAGE_ID") == record.UNIT_EXITED and entry.get("COMMAND", "ExecStart") == "ExecStart"


def killed_reason(failed, exited):
    """What PID 1 says of a run that wrote no record: `timeout (killed, signal KILL)`, `oom-kill`..."""
    reason = entry_text(failed.get("UNIT_RESULT")) or "failed"
    code, status = entry_text((exited or {}).get("EXIT_CODE")), entry_text((exited or {}).get("EXIT_STATUS"))
    if code in ("killed", "dumped"):
        reason += " (%s, signal %s)" % (code, signal_name(status))
    elif code:
        reason += " (exit status %s)" % status
    return reason


def runs_from_journal(entries):
    """Records and PID 1's entries (any order) -> {job: [RunInfo, ...] oldest first}. A run is told
    by its record; a failed run without one (killed before it could write) by PID 1's entries."""
    recorded, seen = {}, {}
    for entry in entries:
        if entry.get("MESSAGE_ID") == record.RUN_FINISHED and entry.get("DEPLOYER_JOB"):
            if not record.sent_by_the_job(entry):
                continue
            try:
                r = record.RunRecord.from_journal(entry)
            except (KeyError, ValueError, TypeError):
                continue
            recorded[r.run or str(len(recorded))] = (r.job, RunInfo(
                run=r.run, started=r.started, result=r.result, reason=r.reason, slot=r.slot,
                duration=r.duration, attempts=r.attempts, http_status=r.http_status, key=r.key, epoch=r.epoch,
                params=r.params, by=r.by, after=r.after))
        elif entry.get("_PID") == "1" and entry.get("INVOCATION_ID") and entry.get("UNIT"):
            run = seen.setdefault(entry_text(entry["INVOCATION_ID"]), {"unit": entry_text(entry["UNIT"])})
            kind = {UNIT_STARTING: "starting", record.UNIT_FAILED: "failed"}.get(entry.get("MESSAGE_ID"))
            kind = "exited" if main_process_exit(entry) else kind
            if kind:
                run[kind] = entry
    found = {}
    for job, info in recorded.values():
        found.setdefault(job, []).append(info)
    for invocation, run in seen.items():
        job = paths.job_of_unit(run["unit"])
        if invocation in recorded or "failed" not in run or job is None:
            continue
        ended = int(run["failed"].get("__REALTIME_TIMESTAMP") or 0) / 1e6
        began = int(run["starting"].get("__REALTIME_TIMESTAMP") or 0) / 1e6 if "starting" in run else 0.0
        found.setdefault(job, []).append(RunInfo(
            run=invocation, started=began or ended, result="failed", reason=killed_reason(run["failed"],
                                                                                        run.get("exited")),
            duration=round(ended - began, 3) if began else -1.0, source="systemd"))
    return {job: sorted(runs, key=lambda r: r.started) for job, runs in found.items()}


def interrupted_runs(entries):
    """job -> the slot of its last run of the previous boot, when the shutdown interrupted it and
    it may be resumed (a deduplicating service, or accept-then-poll: record.RunRecord.resume)."""
    found = {}
    for entry in entries:
        if entry.get("MESSAGE_ID") != record.RUN_FINISHED or not record.sent_by_the_job(entry):
            continue
        try:
            run = record.RunRecord.from_journal(entry)
        except (KeyError, ValueError, TypeError):
            continue
        if run.result == "skipped":
            continue  # a skipped slot ran nothing: a resume stays due
        if run.resume and run.slot:
            found[run.job] = run.slot
        else:
            found.pop(run.job, None)  # a later run of the job ended: nothing left to resume
    return found


@dataclass(frozen=True)
class Position:
    """Where an entry sits in the journal, read from its cursor
    (`s=<sequence id>;i=<number>;b=<boot id>;m=<monotonic>;t=<realtime>;x=...`, numbers in hex).

    Entries are ordered as sd-journal orders them: by sequence number within one sequence, else
    by monotonic time within one boot, else by wall time. A record's own clock never orders
    runs: after a clock stepped back, later runs have earlier times but higher numbers."""

    sequence: str
    number: int
    boot: str
    monotonic: int
    realtime: int

    @classmethod
    def of(cls, cursor: str) -> Optional["Position"]:
        """The position of `cursor`; None for "" or text that is not a journal cursor."""
        fields = dict(part.split("=", 1) for part in (cursor or "").split(";") if "=" in part)
        try:
            return cls(fields.get("s", ""), int(fields.get("i", "-1"), 16), fields.get("b", ""),
                       int(fields.get("m", "-1"), 16), int(fields.get("t", "-1"), 16)) if "i" in fields else None
        except ValueError:
            return None

    def after(self, other: Optional["Position"]) -> bool:
        if other is None:
            return True
        if self.sequence and self.sequence == other.sequence:
            return self.number > other.number
        if self.boot and self.boot == other.boot:
            return self.monotonic > other.monotonic
        return self.realtime > other.realtime


@dataclass(frozen=True)
class FailedRun:
    """One failed run of a unit, as PID 1 recorded it."""

    unit: str
    invocation: str
    result: str
    exit_status: str
    realtime: int  # microseconds since the epoch
    boot: str = ""
    cursor: str = ""  # of PID 1's "failed" entry: where the next lookup starts
    exit_code: str = ""  # PID 1's EXIT_CODE: exited | killed | dumped ("": not known)

    @property
    def exit_number(self) -> Optional[int]:
        """The main process's exit status when it exited (None when a signal ended it, or unknown)."""
        return int(self.exit_status) if self.exit_code in ("exited", "") and self.exit_status.isdigit() \
            and self.result != "signal" else None

    @property
    def signal(self) -> Optional[str]:
        """The signal that ended the main process (`KILL`), None when it exited."""
        if self.exit_code not in ("killed", "dumped"):
            return None
        return signal_name(self.exit_status)


def signal_name(status: str) -> str:
    """PID 1 logs a signal's number (9), $MONITOR_EXIT_STATUS its name (KILL): people know the name."""
    try:
        return signal.Signals(int(status)).name[3:]
    except ValueError:
        return status


def parse_failed_runs(lines) -> list:
    """`journalctl -o json` lines of PID 1's failed and exited entries -> FailedRun."""
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return failed_runs(entries)


def failed_runs(entries) -> list:
    """PID 1's "failed with result" and "exited" entries -> FailedRun, in the journal's order
    (not by time: a clock stepped back would put a later run first); an exit entry gives its
    run's exit status (or signal)."""
    failed, exits = [], {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("_PID") != "1" or not entry.get("INVOCATION_ID"):
            continue
        if main_process_exit(entry):
            exits[entry["INVOCATION_ID"]] = (str(entry.get("EXIT_STATUS", "?")), str(entry.get("EXIT_CODE", "")))
        elif entry.get("MESSAGE_ID") == record.UNIT_FAILED and entry.get("UNIT"):
            failed.append(entry)
    return [FailedRun(e["UNIT"], e["INVOCATION_ID"], str(e.get("UNIT_RESULT", "unknown")),
                      exits.get(e["INVOCATION_ID"], ("?", ""))[0], int(e.get("__REALTIME_TIMESTAMP", 0)),
                      e.get("_BOOT_ID", ""), str(e.get("__CURSOR", "")), exits.get(e["INVOCATION_ID"], ("?", ""))[1])
            for e in failed]


def journal_failed_runs(systemd, unit: Optional[str], since: Optional[float] = None,
                        boot: Optional[str] = None, after: str = "") -> list:
    """The failed runs of `unit` (every unit: None) since `since` (epoch seconds), in `boot`, or
    after the entry at cursor `after`."""
    args = []
    if after:
        args.append(f"--after-cursor={after}")
    if since is not None:
        args.append(f"--since=@{max(int(since), 0)}")
    if boot is not None:
        args.append(f"--boot={boot}")
    args += [f"MESSAGE_ID={record.UNIT_FAILED}"] + ([f"MESSAGE_ID={record.UNIT_EXITED}"] if unit else []) + ["_PID=1"]
    if unit:
        args.append(f"UNIT={unit}")
    return failed_runs(systemd.journal_entries(args))


@dataclass(frozen=True)
class RunAccount:
    """What a failed run's alert says of it: the slot and the reason first, then its last lines."""

    slot: Optional[str]  # `2026-12-01T02:00:00Z` or `manual-<run id>`; None: the run wrote no record
    reason: str
    lines: tuple
    # False: the journal has neither the run's record nor PID 1's "Failed with result" (journald
    # may be behind, as under a storm's load): the reason is the fallback.
    complete: bool = True


def run_account(systemd, invocation: str, last: int, fallback: str = "failed") -> RunAccount:
    """A run's account from its journal entries (one read): the slot and reason of its record
    (the trigger's verdict), or PID 1's when it wrote none (killed: `timeout (killed, signal
    KILL)`); and the last `last` lines the run itself wrote. PID 1's lines about the run
    ("Starting", "Main process exited", "Failed with result", "Consumed 95ms CPU time") are
    left out: the reason says what they say. Only entries journald tied to the run count
    (`_SYSTEMD_INVOCATION_ID`, `_PID=1`): a local user can send an entry with any INVOCATION_ID=."""
    if not invocation:
        return RunAccount(None, fallback, ())
    entries = systemd.journal_entries([f"_SYSTEMD_INVOCATION_ID={invocation}", "+", f"INVOCATION_ID={invocation}"])
    own = [e for e in entries if isinstance(e, dict) and e.get("_SYSTEMD_INVOCATION_ID") == invocation
           and e.get("_PID") != "1"]
    finished = None
    for entry in own:
        if entry.get("MESSAGE_ID") == record.RUN_FINISHED and record.sent_by_the_job(entry):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                finished = record.RunRecord.from_journal(entry)
    # The record's own MESSAGE repeats the trigger's last line: left out too.
    texts = [entry_text(e.get("MESSAGE")) for e in own if e.get("MESSAGE_ID") != record.RUN_FINISHED]
    lines = tuple(text for text in texts if text.strip())[-last:] if last else ()
    if finished is not None:
        return RunAccount(finished.key.split("/", 1)[1] if "/" in finished.key else None,
                          finished.reason or finished.result, lines)
    pid1 = [e for e in entries if isinstance(e, dict) and e.get("_PID") == "1" and e.get("INVOCATION_ID") == invocation]
    failed = next((e for e in pid1 if e.get("MESSAGE_ID") == record.UNIT_FAILED), None)
    exited = next((e for e in pid1 if main_process_exit(e)), None)
    return RunAccount(None, killed_reason(failed, exited) if failed else fallback, lines,
                      complete=failed is not None)


# What the metrics collector asks of a record (`--output-fields`), and who sent it.
RECORD_FIELDS = record.FIELDS + record.SENDER_FIELDS


@dataclass(frozen=True)
class Recorded:
    """A run record and the cursor of its journal entry (its place in the journal's order)."""

    record: record.RunRecord
    cursor: str


def read_records(systemd, cursor: str):
    """The run records the journal got after `cursor` ("" = all it holds), in the journal's
    order -> ([Recorded], new cursor)."""
    args = ["--output-fields=" + ",".join(RECORD_FIELDS), "MESSAGE_ID=" + record.RUN_FINISHED]
    if cursor:
        args.append("--after-cursor=" + cursor)
    code, out = systemd.journal_read(args)
    if code != 0 and cursor:  # a cursor of a journal that is gone (a volatile journal, rotated)
        return read_records(systemd, "")
    records = []
    for line in out.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            cursor = entry.get("__CURSOR", cursor)
            if record.sent_by_the_job(entry):
                records.append(Recorded(record.RunRecord.from_journal(entry), cursor))
    return records, cursor


# What an audit read asks of an entry (`--output-fields`), and who sent it.
AUDIT_FIELDS = ("MESSAGE_ID",) + audit.FIELDS + ("_UID",)
# Matched on the field journald sets (_UID=0: the agent, as root), never on the sender's alone:
# a local user can send MESSAGE_ID=<AUDIT> by the thousand.
AUDIT_MATCHES = ["MESSAGE_ID=" + audit.AUDIT, "_UID=" + audit.ROOT_UID]


def audit_entries(systemd, since: float) -> list:
    """The audit trail since `since` (unix seconds), oldest first: one journalctl call."""
    entries = systemd.journal_entries(["--since=@%d" % max(int(since), 0),
                                       "--output-fields=" + ",".join(AUDIT_FIELDS)] + AUDIT_MATCHES)
    found = []
    for entry in entries:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            found.append(audit.from_journal(entry))
    return sorted(found, key=lambda e: e.time)


def last_push(systemd):
    """The last push that changed this host (or confirmed it), from the audit trail; None when
    none is recorded. Read newest first, ended at the first."""
    entries = systemd.journal_entries(["-r", "--output-fields=" + ",".join(AUDIT_FIELDS)] + AUDIT_MATCHES
                                      + [audit.PREFIX + "ACTION=push", audit.PREFIX + "OUTCOME=ok"],
                                      stop=lambda entry: True)
    for entry in entries:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return audit.from_journal(entry)
    return None
