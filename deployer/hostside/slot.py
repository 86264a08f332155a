"""What a run is for: the exact scheduled slot, read from the timer that started it.

systemd names the timer that started a run in `$TRIGGER_UNIT`, and stamps the moment it elapsed
on the timer's Persistent= stamp file (its mtime, in TIMER_STAMPS): never before its calendar
instant, within AccuracySec= of it when on time, at boot for a catch-up. (`$TRIGGER_TIMER_
REALTIME_USEC` would say the same, but systemd 252 keeps the first elapse there for every later
run of the timer; it is used only where there is no stamp.) The slot is the latest instant of the timer's own
calendar at or before that moment, as `systemd-analyze calendar` computes it: on time, late in a
burst (the elapse is stamped before the start queues), caught up after downtime (the latest
missed slot, the one systemd runs) and on a new host after a move alike. A run nobody's timer
started is manual: it has a key of its own, unless the agent asked it to backfill one slot
(`deployer run JOB --slot ...`, through BACKFILL_DIR). Standard library only: the trigger runs
it on the cron host.
"""
from __future__ import annotations

import calendar as _calendar
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from .paths import BACKFILL_DIR, TIMER_STAMPS, BadName, job_unit

SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
# How far back the slot is looked for, widening until one is found. A run on time elapsed
# within a second or two of its slot: the first window holds it whatever the calendar, in one
# systemd-analyze call (a process: the cost that counts in a burst). Only a catch-up after
# downtime looks further back, a yearly one in the last window.
LOOKBACKS = (5, 70, 4200, 3 * 86400, 200 * 86400, 40 * 366 * 86400)
# Elapses asked per call: more than a one-second calendar has in the first window.
ITERATIONS = 8
_ELAPSE = re.compile(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC$")


@dataclass(frozen=True)
class Slot:
    """The slot a run is for: `at` (unix seconds) for a scheduled or backfilled one, None for a
    manual run, which is keyed by its run id."""

    at: Optional[int]
    run: str
    how: str = "timer"  # timer | backfill | manual | clock (the calendar could not be read)

    @property
    def name(self) -> str:
        """`2026-12-01T02:00:00Z`, or `manual-<run id>`: X-Deployer-Slot and the key's tail."""
        return iso_utc(self.at) if self.at is not None else "manual-" + self.run

    def key(self, job: str) -> str:
        """The Idempotency-Key: the same on every retry, catch-up, host and poll of this slot."""
        return "%s/%s" % (job, self.name)


def iso_utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def parse_iso_utc(text: str) -> int:
    """`2026-12-01T02:00:00Z` -> unix seconds (ValueError otherwise)."""
    return _calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


Analyze = Callable[[Sequence[str], int, int], Sequence[Sequence[int]]]


def analyze(lines: Sequence[str], base: int, iterations: int) -> list:
    """For each calendar line, its first `iterations` elapses strictly after `base`, unix
    seconds: one systemd-analyze call for all the lines."""
    done = subprocess.run([SYSTEMD_ANALYZE, "calendar", "--base-time=@%d" % base, "--iterations=%d" % iterations,
                           *lines], capture_output=True, text=True, env={"TZ": "UTC", "SYSTEMD_COLORS": "0"},
                          timeout=10)
    if done.returncode != 0:
        raise ValueError(done.stderr.strip() or "systemd-analyze calendar failed")
    blocks = [block for block in done.stdout.split("\n\n") if "Normalized form:" in block]
    if len(blocks) != len(lines):
        raise ValueError("systemd-analyze gave %d answers for %d lines" % (len(blocks), len(lines)))
    return [[_calendar.timegm(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
             for match in (_ELAPSE.search(text.strip()) for text in block.splitlines()) if match]
            for block in blocks]


def latest_elapse(lines: Sequence[str], at: float, analyze: Analyze = analyze) -> Optional[int]:
    """The latest instant of any of `lines` at or before `at`; None if there is none.

    Windows widen back from `at` until one holds an elapse of some line: an elapse of another
    line outside that window is older, so the window's latest is the answer. A line whose
    elapses fill the window is walked forward to `at`."""
    at = int(at)
    for back in LOOKBACKS:
        answers = analyze(lines, at - back, ITERATIONS)
        if not any(e <= at for elapses in answers for e in elapses):
            continue
        return max(_walk(line, elapses, at, analyze) for line, elapses in zip(lines, answers))
    return None


def _walk(line: str, elapses: Sequence[int], at: int, analyze: Analyze) -> int:
    """The latest elapse of `line` at or before `at`, given its first ones after some base (0: none)."""
    latest = 0
    for _ in range(1000):  # bounded: each step moves ITERATIONS elapses forward
        within = [e for e in elapses if e <= at]
        if within:
            latest = within[-1]
        if len(within) < len(elapses) or len(elapses) < ITERATIONS:
            return latest
        elapses = analyze([line], elapses[-1], ITERATIONS)[0]
    return latest


def backfill_path(job: str) -> str:
    return os.path.join(BACKFILL_DIR, job_unit(job, "json"))


def read_backfill(job: str) -> Optional[int]:
    """The slot the agent asked this manual run to backfill, if it did."""
    try:
        with open(backfill_path(job), encoding="utf-8") as handle:
            request = json.load(handle)
        slot, until = request.get("slot"), request.get("until")
    except (OSError, ValueError, AttributeError, BadName):
        return None
    if isinstance(until, (int, float)) and time.time() > until:
        return None  # a resume at boot that no run took in time
    return slot if isinstance(slot, int) and not isinstance(slot, bool) else None


# In Kubernetes, the pod's Job name (the downward API's `job-name` label, deployer/k8s.py).
SCHEDULED_JOB_ENV = "DEPLOYER_SCHEDULED_JOB"
_CRONJOB_MINUTE = re.compile(r"-(\d{8,10})$")


def cronjob_slot(job_name: str) -> Optional[int]:
    """A CronJob names each Job `<cronjob>-<scheduled time in unix minutes>`: its slot. A Job made
    by hand (`kubectl create job --from=cronjob/...`) has another name: a manual run."""
    match = _CRONJOB_MINUTE.search(job_name)
    minutes = int(match.group(1)) if match else 0
    return minutes * 60 if 25_000_000 < minutes < 100_000_000 else None  # 2017 .. 2160


def elapsed_at(job: str, env, stamps: str = TIMER_STAMPS) -> Optional[float]:
    """When the job's own timer elapsed to start this run; None when no timer started it."""
    trigger = env.get("TRIGGER_TIMER_REALTIME_USEC", "")
    try:
        timer = job_unit(job, "timer")
    except BadName:
        return None
    if env.get("TRIGGER_UNIT") != timer:
        return None
    try:
        return os.stat(os.path.join(stamps, "stamp-" + timer)).st_mtime
    except OSError:
        return int(trigger) / 1e6 if trigger.isdigit() else None


def slot_of_run(job: str, calendar: Sequence[str], run: str, env=os.environ, now: Callable[[], float] = time.time,
                analyze: Analyze = analyze, log: Callable[[str], None] = lambda line: None) -> Slot:
    """The slot this run is for (see the module's docstring)."""
    scheduled = cronjob_slot(env.get(SCHEDULED_JOB_ENV, ""))
    if scheduled is not None:
        return Slot(scheduled, run, "cronjob")
    elapsed = elapsed_at(job, env)
    if elapsed is None:
        backfill = read_backfill(job)
        return Slot(backfill, run, "backfill") if backfill is not None else Slot(None, run, "manual")
    if not calendar:  # @reboot: the boot is the slot
        return Slot(int(elapsed), run)
    try:
        found = latest_elapse(calendar, elapsed, analyze)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        log("cannot read the calendar (%s): the slot is the second the timer elapsed" % error)
        found = None
    return Slot(found, run) if found is not None else Slot(int(elapsed), run, "clock")
