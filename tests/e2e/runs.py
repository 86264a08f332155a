"""Judging a job's runs on a real host by what the host recorded, not by when requests arrived.

Every run leaves a record in the journal (deployer/contract/record.py: DEPLOYER_RUN is systemd's
invocation id) naming its exact slot (DEPLOYER_SLOT, from the timer's calendar: issue 21), however
late it started on a loaded machine. A run stopped before it could write its record (a move
stops it mid-way) is found by PID 1's "Starting" entry for its invocation, written when the
timer elapsed: its slot is the period slot that entry falls in.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Optional

from deployer.contract.record import RUN_FINISHED, RunRecord, sent_by_the_job

UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"  # systemd's "Starting <unit>..." (catalog id)


@dataclass(frozen=True)
class Run:
    run: str  # the invocation id (DEPLOYER_RUN, X-Deployer-Run-Id)
    triggered: float  # unix seconds: when PID 1 started the run's unit
    record: Optional[RunRecord] = None  # its run record, if it wrote one (a run stopped mid-way may not)
    ended: Optional[float] = None  # when PID 1 saw the unit end (deactivated or failed)

    def slot(self, period: int) -> int:
        if self.record is not None and self.record.slot:
            return self.record.slot
        return int(self.triggered) // period * period


def journal(host, matches: str) -> list[dict]:
    out = host.ssh(f"journalctl --no-pager -q -o json {matches}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def records(host, job: str, skipped: bool = False) -> list[RunRecord]:
    """The job's run records that its own runs sent (what history, status and the metrics read);
    with `skipped`, the records of slots skipped instead (issue 23: they are not runs)."""
    return [RunRecord.from_journal(e) for e in journal(host, f"MESSAGE_ID={RUN_FINISHED} DEPLOYER_JOB={job}")
            if sent_by_the_job(e) and (e.get("DEPLOYER_RESULT") == "skipped") == skipped]


def runs(host, job: str) -> list[Run]:
    """Every run PID 1 started of the job's unit, oldest first, with its record where there is one."""
    recorded = {record.run: record for record in records(host, job)}  # first: a recorded run has started
    starts = journal(host, f"_PID=1 MESSAGE_ID={UNIT_STARTING} UNIT=deployer-{job}.service")
    ends = {e["INVOCATION_ID"]: int(e["__REALTIME_TIMESTAMP"]) / 1e6
            for e in journal(host, f"_PID=1 UNIT=deployer-{job}.service")
            if e.get("INVOCATION_ID") and isinstance(e.get("MESSAGE"), str)
            and ("Deactivated successfully" in e["MESSAGE"] or "Failed with result" in e["MESSAGE"])}
    found = [Run(e["INVOCATION_ID"], int(e["__REALTIME_TIMESTAMP"]) / 1e6, recorded.get(e["INVOCATION_ID"]),
                 ends.get(e["INVOCATION_ID"])) for e in starts if e.get("INVOCATION_ID")]
    missing = set(recorded) - {run.run for run in found}
    assert not missing, f"records of runs PID 1 did not start: {missing}"
    return sorted(found, key=lambda run: run.triggered)


def described(hosts: dict, job: str) -> str:
    """Each host's runs of `job` (slot, epoch, start and end) and its last journal lines: what a
    failed slot check needs to say which host ran what (a double in the move test, ci-C of
    2026-12-07, printed only the slots)."""
    lines = []
    for name, host in hosts.items():
        for run in runs(host, job):
            record = run.record
            lines.append("%s run %s started %.3f ended %s slot %s epoch %s" % (
                name, run.run[:8], run.triggered, "%.3f" % run.ended if run.ended else "-",
                record.slot if record else "-", record.epoch if record else "-"))
        lines.append(host.ssh(f"journalctl -q --no-pager -o short-unix -u deployer-{job}.timer "
                              f"-u deployer-{job}.service | tail -n 60", check=False).stdout)
    return "\n".join(lines)


def heard(found: list[Run], requests) -> list[Run]:
    """The runs whose request the service received (X-Deployer-Run-Id is the invocation id);
    asserts that no run sent two requests."""
    ids = [request.headers["X-Deployer-Run-Id"] for request in requests]
    assert len(ids) == len(set(ids)), "a run sent its request twice"
    return [run for run in found if run.run in set(ids)]


def wait_for_runs(host, job: str, count: int, timeout: float = 30) -> list[Run]:
    """Poll (no fixed sleep) until the job has `count` recorded runs."""
    deadline = time.monotonic() + timeout
    while True:
        found = [run for run in runs(host, job) if run.record]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} run record(s) of {job} expected within {timeout}s, got {len(found)}")
        time.sleep(0.3)


# PID 1 fires a timer whose instant passed while its unit ran right after the unit ends.
FIRE_SLACK = 5.0


def assert_each_slot_ran_once(found: list[Run], period: int) -> None:
    """From the first run's slot to the last one's, every `period`-second slot ran exactly once,
    but for systemd's own rule on a loaded machine: a timer does not elapse while its unit still
    runs; when the unit ends, an instant that passed meanwhile fires at once, once, and the run
    names the latest one (as a catch-up does). So a gap between two runs A and B is allowed only
    where A's unit still ran at the first skipped slot and B names the latest slot at A's end."""
    slots = [run.slot(period) for run in found]
    for run in found:  # a slot is never after the timer elapsed for it
        assert run.record is None or run.record.slot <= run.triggered + 1, (run.record, run.triggered)
    assert len(slots) == len(set(slots)), f"a slot ran twice: {[s % 60 for s in slots]}"
    assert slots == sorted(slots), f"slots out of order: {[s % 60 for s in slots]}"
    for a, b, slot_a, slot_b in zip(found, found[1:], slots, slots[1:]):
        if slot_b == slot_a + period:
            continue
        assert a.ended is not None and a.ended >= slot_a + period, \
            f"slot {(slot_a + period) % 60} skipped though the run for {slot_a % 60} had ended ({a.ended}): " \
            f"{[(r.slot(period) % 60, round(r.triggered % 60, 2), r.record and r.record.result) for r in found]}"
        assert int(a.ended) // period * period <= slot_b <= a.ended + FIRE_SLACK, \
            f"the run for {slot_a % 60} ended at {a.ended:.1f}; the next names {slot_b % 60}, not the latest slot then"


def timer_stopped(host, job: str) -> Optional[float]:
    """When PID 1 last stopped the job's timer on `host` (a move's handoff), or None."""
    stops = [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in journal(host, f"_PID=1 UNIT=deployer-{job}.timer")
             if isinstance(e.get("MESSAGE"), str) and "Deactivated successfully" in e["MESSAGE"]]
    return stops[-1] if stops else None


def assert_handed_over(old: list[Run], new: list[Run], period: int, old_timer_stopped: Optional[float]) -> None:
    """A job moved from one host to another (each host's own runs checked by
    assert_each_slot_ran_once): the new host's slots come after the old host's, so none ran twice,
    and a slot that neither ran is one the old host's timer met before it stopped there while that
    host's last run still went (a timer does not elapse while its unit runs; the handoff's stamp
    starts the new host after it). Merging the two hosts' runs into one sequence would ask the new
    host to name the latest slot at the old run's end, which only the old timer could."""
    assert old_timer_stopped is not None, "the old host's timer was never stopped: the job did not move"
    last, first = old[-1], new[0]
    assert last.slot(period) < first.slot(period), \
        f"the new host ran slot {first.slot(period) % 60}, not after the old host's last ({last.slot(period) % 60})"
    for slot in range(last.slot(period) + period, first.slot(period), period):
        assert slot <= old_timer_stopped and last.ended is not None and last.ended >= slot, \
            f"slot {slot % 60} ran on neither host, though the old host's last run had ended ({last.ended}) " \
            f"or its timer had stopped ({old_timer_stopped:.1f})"


def wait_until(condition, timeout: float, what: str, every: float = 0.1):
    """Poll `condition` until it is true (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(every)
