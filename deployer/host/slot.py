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
(`deployer run JOB --slot ...`, through BACKFILL_DIR) or to run the slot of a timer elapse that
systemd merged into a manual run (the unit was active, so the timer's start joined it). The
agent says so for every run it starts: systemd 252 leaves `$TRIGGER_UNIT` of the last timer
start in the environment of a later `systemctl start`, so the environment alone would key a
manual run as the timer's last slot. Standard library only: the trigger runs
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

from deployer.contract.paths import BACKFILL_DIR, SCHEDULED_JOB_ENV, TIMER_STAMPS, BadName, job_unit

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
    how: str = "timer"  # timer | backfill | manual | clock (the calendar could not be read) | after
    after: str = ""  # a chained run (host/chain.py): "<parent> <its slot> succeeded|failed"
    # What `deployer run` asked of this run: parameter values (name, value) and who asked.
    params: tuple = ()
    by: str = ""
    elapsed: Optional[float] = None  # a timer's run: when the timer elapsed for it

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


def stop_path(job: str, directory: str = BACKFILL_DIR) -> str:
    """Where `deployer stop` names the run it stops (its invocation id), before the SIGTERM."""
    return os.path.join(directory, job_unit(job, "stop"))


def stopped_by_operator(job: str, run: str, directory: str = BACKFILL_DIR) -> bool:
    """Is the SIGTERM this run got `deployer stop`'s (not a shutdown's)? Only then is the run
    not resumed at the next boot: the operator ended it."""
    try:
        with open(stop_path(job, directory), encoding="ascii", errors="replace") as handle:
            return handle.read(100).strip() == run
    except (OSError, BadName):
        return False


@dataclass(frozen=True)
class Asked:
    """What the agent asked the run it starts to stand for: `manual` (a key of its own),
    `backfill` a slot (`deployer run --slot`, a resume at boot), or `elapsed`: the slot of a timer
    elapse that systemd merged into a manual run. `stamp` is the timer stamp's mtime (ns) when
    it asked: a run that finds another one was started by a newer elapse, not by the agent."""

    kind: str = ""  # "" (nothing asked) | manual | backfill | elapsed
    slot: Optional[int] = None
    elapsed: Optional[float] = None
    stamp: Optional[int] = None
    bound: bool = False  # stamp says when it was asked (an older agent's request does not)
    params: tuple = ()  # (name, value) pairs `deployer run --set` gave
    by: str = ""  # who asked: user@client, as the agent saw the SSH connection
    # When it asked, in CLOCK_BOOTTIME seconds: /proc's clock for a process's start, which a
    # step of the wall clock does not move (the request is in /run: of this boot). None: an
    # older agent's request.
    asked_boot: Optional[float] = None


def stamp_of(job: str, stamps: Optional[str] = None) -> Optional[int]:
    """The job timer's Persistent= stamp mtime in ns (None: it never elapsed here)."""
    try:
        return os.stat(os.path.join(stamps or TIMER_STAMPS, "stamp-" + job_unit(job, "timer"))).st_mtime_ns
    except (OSError, BadName):
        return None


def read_request(job: str, run: str = "") -> Asked:
    """What the agent asked this run (invocation id `run`) to stand for, if it asked (and the ask
    has not expired, and is not for a run other than the one going, `not_for`: this one)."""
    try:
        with open(backfill_path(job), encoding="utf-8") as handle:
            request = json.load(handle)
        if run and request.get("not_for") == run:
            return Asked()  # asked while this run went: for the run the agent's start makes after it
        until = request.get("until")
        slot, elapsed, stamp = request.get("slot"), request.get("elapsed"), request.get("stamp")
    except (OSError, ValueError, AttributeError, BadName):
        return Asked()
    if isinstance(until, (int, float)) and time.time() > until:
        return Asked()  # a resume at boot, or a merged slot, that no run took in time
    bound = "stamp" in request and (stamp is None or _is_int(stamp))
    stamp = stamp if bound else None
    given = request.get("params")
    params = tuple((name, value) for name, value in given.items()
                   if isinstance(name, str) and isinstance(value, str)) if isinstance(given, dict) else ()
    by = request.get("by") if isinstance(request.get("by"), str) else ""
    at = request.get("asked_boot")
    at = float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None
    if _is_int(slot):
        return Asked("backfill", slot=slot, stamp=stamp, bound=bound, params=params, by=by, asked_boot=at)
    if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool):
        return Asked("elapsed", elapsed=float(elapsed), stamp=stamp, bound=bound, asked_boot=at)
    return Asked("manual", stamp=stamp, bound=bound, params=params, by=by, asked_boot=at) \
        if request.get("manual") is True else Asked()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_CRONJOB_MINUTE = re.compile(r"-(\d{8,10})$")


def cronjob_slot(job_name: str) -> Optional[int]:
    """A CronJob names each Job `<cronjob>-<scheduled time in unix minutes>`: its slot. A Job made
    by hand (`kubectl create job --from=cronjob/...`) has another name: a manual run."""
    match = _CRONJOB_MINUTE.search(job_name)
    minutes = int(match.group(1)) if match else 0
    return minutes * 60 if 25_000_000 < minutes < 100_000_000 else None  # 2017 .. 2160


# More than /proc's clock tick (10 ms) and the clocks' conversion: see elapsed_at.
START_MARGIN = 0.1


def process_started_since_boot(stat: str = "/proc/self/stat") -> Optional[float]:
    """When this process was started, CLOCK_BOOTTIME seconds (to the clock tick: /proc counts
    its start time in that clock since Linux 4.17)."""
    try:
        with open(stat, encoding="ascii", errors="replace") as handle:
            fields = handle.read().rpartition(")")[2].split()  # after `(comm)`: field 3 onwards
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_started(stat: str = "/proc/self/stat") -> Optional[float]:
    """When this process was started, unix seconds (to the clock tick): its start since boot,
    placed on the wall clock by CLOCK_BOOTTIME."""
    since_boot = process_started_since_boot(stat)
    if since_boot is None:
        return None
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)


# How long a run waits for its timer's stamp to come back: a push that restamps a changed timer
# removes it (`systemctl clean`) and writes it again a moment later.
STAMP_WAIT = 2.0


def elapsed_at(job: str, env, stamps: Optional[str] = None,
               started: Callable[[], Optional[float]] = process_started, persistent: bool = False,
               sleep: Callable[[float], None] = time.sleep) -> Optional[float]:
    """When the job's own timer elapsed to start this run; None when no timer started it.

    The stamp says the timer's latest elapse when it is read. On a busy host the trigger may be
    read it seconds after PID 1 started it, and an elapse in between (merged into this run: the
    unit was already active) has moved the stamp: the run was started by an elapse no later than
    its own process, so the moment is capped there (found by test_pushes_during_firing_windows
    on a loaded CI machine: a run PID 1 started at :18 named the slot :20).

    A `persistent` timer (Persistent=: a calendar job's) stamps every elapse before its run
    starts, so a stamp that is missing was removed under this run: by a push restamping the
    timer (it comes back at once) or removing it. `$TRIGGER_TIMER_REALTIME_USEC` names the
    timer's first elapse there (systemd 252), a slot long done: the moment is this run's start.
    That is exact for a run started on time; one that waited (a queued start) names the latest
    slot by then, as a catch-up does. The host keeps a removed timer's stamp while its run goes
    (agent.Host.running_jobs), so this is the last resort."""
    trigger = env.get("TRIGGER_TIMER_REALTIME_USEC", "")
    try:
        timer = job_unit(job, "timer")
    except BadName:
        return None
    if env.get("TRIGGER_UNIT") != timer:
        return None
    path = os.path.join(stamps or TIMER_STAMPS, "stamp-" + timer)
    stamped = _mtime(path)
    waited = 0.0
    while stamped is None and persistent and waited < STAMP_WAIT:
        sleep(0.05)
        waited += 0.05
        stamped = _mtime(path)
    began = started()
    if stamped is None:
        if persistent and began is not None:
            return began + START_MARGIN
        return int(trigger) / 1e6 if trigger.isdigit() else None
    # /proc counts the start in clock ticks, truncated: a start a few ms after its own elapse
    # can read as before it, and capping there named the slot before, one its own run had named
    # (a double, found by the start-limit test). An elapse within the margin after the start
    # came while this run went: merged into it, it starts no other run to name it.
    return min(stamped, began + START_MARGIN) if began is not None else stamped


def _mtime(path: str) -> Optional[float]:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def asked_start(job: str, asked: Asked, started: Callable[[], Optional[float]] = process_started,
                since_boot: Callable[[], Optional[float]] = process_started_since_boot) -> bool:
    """Whether the agent's start made this run though `$TRIGGER_UNIT` names the job's timer
    (systemd 252 keeps it from the last timer start): the timer has not elapsed since the agent
    asked, or it elapsed only after this run's process was started (the unit was active: that
    start merged into this run, and the agent runs its slot after this one). A timer elapse before
    the process started is what started it: the agent's start merged into the timer's. So is a
    process that was started before the agent asked (the agent asks, then starts): the timer had
    elapsed and started it just before the ask, which then bound to that elapse's stamp."""
    if not asked.bound:
        return False
    born = since_boot() if asked.asked_boot is not None else None
    if born is not None and born + START_MARGIN < asked.asked_boot:
        return False
    stamp = stamp_of(job)
    if asked.stamp == stamp:
        return True
    began = started()
    return stamp is not None and began is not None and stamp / 1e9 > began + START_MARGIN


def slot_of_run(job: str, calendar: Sequence[str], run: str, env=os.environ, now: Callable[[], float] = time.time,
                analyze: Analyze = analyze, log: Callable[[str], None] = lambda line: None,
                started: Callable[[], Optional[float]] = process_started,
                since_boot: Callable[[], Optional[float]] = process_started_since_boot) -> Slot:
    """The slot this run is for (see the module's docstring)."""
    scheduled = cronjob_slot(env.get(SCHEDULED_JOB_ENV, ""))
    if scheduled is not None:
        return Slot(scheduled, run, "cronjob")
    asked, elapsed = read_request(job, run), elapsed_at(job, env, started=started, persistent=bool(calendar))
    # systemd 252 keeps $TRIGGER_UNIT from the last timer start in a later manual start's
    # environment: what the agent asked wins, unless the timer's elapse started this run.
    if asked.kind and (elapsed is None or asked_start(job, asked, started, since_boot)):
        if asked.kind == "backfill":
            return Slot(asked.slot, run, "backfill", params=asked.params, by=asked.by)
        if asked.kind == "manual":
            return Slot(None, run, "manual", params=asked.params, by=asked.by)
        elapsed = asked.elapsed  # the timer's start that systemd merged into a manual run
    if elapsed is None:
        return Slot(None, run, "manual")
    if not calendar:  # @reboot: the boot is the slot
        return Slot(int(elapsed), run, elapsed=elapsed)
    try:
        found = latest_elapse(calendar, elapsed, analyze)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        log("cannot read the calendar (%s): the slot is the second the timer elapsed" % error)
        found = None
    return Slot(found, run, elapsed=elapsed) if found is not None else Slot(int(elapsed), run, "clock")
