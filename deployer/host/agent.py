"""The code that runs on the cron host (as root, stdlib only, python3 >= 3.7): one call = one round trip.

The client ships this module and those it imports (deployer/contract, deployer/host) in the argument of
`python3 -c` and the request as JSON on stdin (never in process arguments, so secrets stay out
of `ps`); the agent answers one JSON document on stdout (protocol.py). Every host path comes
from `paths.Layout`, every systemctl/systemd-analyze/journalctl call goes through one
`Systemd` object: tests run this file in-process against a temporary root and a fake Systemd.

Order: paths -> pure functions -> side effects -> operations -> dispatch.
"""
import base64
import contextlib
import contextvars
import errno
import hashlib
import json
import os
import select
import shutil
import signal
import stat
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Dict

from deployer.contract import audit, paths, protocol, record
from deployer.contract.protocol import (AgentError, AlertTestAnswer, AlertTestRequest, ApplyAnswer, ApplyRequest,
                                        AuditAnswer, AuditEntry, AuditRequest, Failure, HandoffAnswer, HandoffRequest,
                                        Held, HistoryAnswer, HistoryRequest, JobStatus, LogsAnswer, LogsRequest,
                                        PauseAnswer, PauseRequest, ReleaseAnswer, ReleaseRequest, ResumeAnswer,
                                        ResumeRequest, RunAnswer, RunInfo, RunRequest, StateAnswer, StateRequest,
                                        StatusAnswer, StatusRequest, StopAnswer, StopRequest)
from deployer.contract.text import clock_of_iso
from deployer.host.hashes import FileHashes
from deployer.host.journal import (RUN_FIELDS, audit_entries, format_entry, interrupted_runs, last_push, run_matches,
                                   runs_from_journal)
from deployer.host.slot import iso_utc, stamp_of
from deployer.host.state import LOCK_WAIT_SECONDS, HostState, Journal, Lease, Owner, job_timers, write_atomically
from deployer.host.systemctl import UNIT_CHUNK, Systemd, chunks

# -- paths ------------------------------------------------------------------------------------

# Enabled by every push: at boot, before any timer, it finishes an interrupted switch (--boot).
RECOVER_UNIT = paths.RECOVER_UNIT




# -- pure functions ---------------------------------------------------------------------------

def unit_name(path):
    return os.path.basename(path)


def staging_path(path):
    directory, name = os.path.split(path)
    return os.path.join(directory, paths.STAGING, name)


def switch_plan(current, staged, starts, removes, paused, stamps, now, local=lambda path: path):
    """What a switch does, as data: which timers to disable, restamp, enable and start, which
    files to rename and remove. `current`: host path -> sha256; `staged`: host path -> staged
    file; `starts`: host path -> start it now (else: enabled for boot only); `local`: host path
    -> the file under the agent's layout."""
    in_units = paths.UNIT_DIR + "/"
    timers = [p for p in staged if p.endswith(".timer")]
    added = [unit_name(p) for p in timers if p not in current]
    changed = [unit_name(p) for p in timers if p in current]
    boot_only = {unit_name(p) for p in timers if not starts.get(p, True)}
    removed = [unit_name(p) for p in removes if p.endswith(".timer")]
    return Journal(
        disable=tuple(removed),
        restamp=tuple(t for t in changed if t not in paused),
        forget=tuple(removed) + tuple(t for t in added if t not in stamps),
        stopped_at=now,
        stamps={t: w for t, w in stamps.items() if t in added},
        # Library files, then services, then timers: no timer ever points at a missing service.
        renames=tuple((staged[p], local(p)) for p in sorted(staged, key=lambda p: (
            p.startswith(in_units), p.endswith(".timer"), p))),
        # Timers before their services, for the same reason.
        removes=tuple(local(p) for p in sorted(removes, key=lambda p: not p.endswith(".timer"))),
        unpause=tuple(t for t in removed if t in paused),
        reload=any(p.startswith(in_units) for p in list(staged) + list(removes)),
        enable=tuple(t for t in added if t not in paused) + tuple(
            unit_name(p) for p in sorted(staged) if unit_name(p) in paths.BOOT_UNITS and p not in current),
        start=tuple(t for t in added + changed if t not in boot_only and t not in paused),
    )


def iso_time(value):
    """`Tue 2026-11-24 07:41:06 UTC` (as printed under TZ=UTC) or `@<unix>` -> ISO 8601, or ""."""
    value = value.strip()
    if value.startswith("@"):
        seconds = int(value[1:].split(".")[0])
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds)) if seconds else ""
    parts = value.split()
    if len(parts) == 4 and parts[3] == "UTC":
        return "%sT%s+00:00" % (parts[1], parts[2])
    return ""


def calendar_info(value):
    """TimersCalendar=`{ OnCalendar=X ; next_elapse=@N }...` -> ([X, ...], earliest next)."""
    lines, nexts = [], []
    for chunk in value.split("{")[1:]:
        fields_ = dict(part.strip().partition("=")[::2] for part in chunk.rstrip("} ").split(" ; "))
        if "OnCalendar" in fields_:
            lines.append(fields_["OnCalendar"])
        nexts.append(iso_time(fields_.get("next_elapse", "")))
    return lines, min([n for n in nexts if n] or [""])


def lease_ran_out(lease, now):
    """The Lease read at boot (None: unreadable) -> Held when it ran out before `now`, else None.
    An unreadable lease holds too: a double run is the worse mistake."""
    if lease is None:
        return Held(since=iso_time("@%d" % now), down_for_seconds=0.0, lease_seconds=0.0)
    if now - lease.renewed <= lease.seconds:
        return None
    return Held(since=iso_time("@%d" % now), down_for_seconds=round(now - lease.renewed, 3),
                lease_seconds=lease.seconds)



TIMER_STATUS = ("ActiveState", "NextElapseUSecRealtime", "LastTriggerUSec", "TimersCalendar")
SERVICE_STATUS = ("ActiveState", "Result", "ExecMainStatus", "ExecMainStartTimestamp", "ExecMainExitTimestamp")


def job_status(timer, t, s, paused, fenced=False):
    """One job's `systemctl show` facts (timer `t`, service `s`) -> its JobStatus."""
    calendar, next_elapse = calendar_info(t.get("TimersCalendar", ""))
    active = t.get("ActiveState", "") == "active"
    return JobStatus(job=paths.job_of_unit(timer), timer=timer, service=timer[:-len(".timer")] + ".service",
                     timer_state=t.get("ActiveState", ""), enabled=t.get("UnitFileState", ""),
                     calendar=tuple(calendar), next=next_elapse if active else "", paused=paused, fenced=fenced,
                     last=iso_time(t.get("LastTriggerUSec", "")),
                     service_state=s.get("ActiveState", ""), result=s.get("Result", ""),
                     exit_status=int(s.get("ExecMainStatus") or 0), doing=s.get("StatusText", ""),
                     started=iso_time(s.get("ExecMainStartTimestamp", "")),
                     finished=iso_time(s.get("ExecMainExitTimestamp", "")))


# A status reads the journal newest first and stops once every job it asks about has its
# record; a job that never ran has none, so the read stops after this many entries at most.
STATUS_SCAN_LIMIT = 50000


# -- side effects -----------------------------------------------------------------------------

class Stopwatch:
    """Seconds per step, returned with the answer so that a slow push says where it was slow."""

    def __init__(self):
        self.steps, self.last = {}, time.monotonic()

    def lap(self, name):
        now = time.monotonic()
        self.steps[name] = round(self.steps.get(name, 0) + now - self.last, 3)
        self.last = now


HEARTBEAT_SECONDS = 5  # the client gives up after remote.READ_TIMEOUT seconds of silence


STDERR = threading.Lock()  # whole lines from the heartbeat and the work, never interleaved
CLIENT_GONE = threading.Event()  # a write to the client failed: a `logs --follow` ends


def say(line):
    """One line to the client on stderr; a lost client must not stop the work."""
    try:
        with STDERR:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        return True
    except (OSError, ValueError):
        CLIENT_GONE.set()
        return False


def emit_line(text):
    """A journal line the client prints as it comes (`deployer run`, `logs --follow`)."""
    return say("@line " + text)


def heartbeat():
    """`@alive` on stderr every few seconds from a daemon thread: a long, quiet step (verify of
    thousands of units) is told apart from a host that stopped answering."""
    def beat():
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            if not say("@alive"):
                return

    threading.Thread(target=beat, daemon=True).start()


# Where progress goes: `@progress` lines on stderr for the SSH client; the in-process client
# (remote.LocalAgent) takes them as calls, as it takes journal lines (Host.emit).
PROGRESS_TO = contextvars.ContextVar("PROGRESS_TO", default=None)


def progress(text):
    """A step the client may show on a terminal."""
    to = PROGRESS_TO.get()
    if to is None:
        say("@progress " + text)
    else:
        to(text)


# Timers started per systemctl call: small enough that the count a push shows moves (0.3 s a
# call), large enough that calls stay few (2,000 timers: 1.1 s in calls of 100, 0.9 s in calls of
# 500; PID 1 is the rest: pipelined D-Bus StartUnit calls took 1.1 s).
START_CHUNK = UNIT_CHUNK
COUNT_EVERY = 0.5  # seconds between two counts of one step (the client redraws one line)


def counter(step):
    """progress(`step: N/TOTAL`), at most every COUNT_EVERY seconds, and always the last."""
    last = [0.0]

    def report(done, total):
        now = time.monotonic()
        if done == total or now - last[0] >= COUNT_EVERY:
            last[0] = now
            progress("%s: %d/%d" % (step, done, total))

    return report


def start_timers(systemd, timers, prefix="", wait=True):
    """Start timers in chunks, counting, then (`wait`) until all are active, counting."""
    report = counter(prefix + "starting timers")
    for done, chunk in ((i, timers[i:i + START_CHUNK]) for i in range(0, len(timers), START_CHUNK)):
        report(done, len(timers))
        # --no-block: one D-Bus call per timer without waiting for each job, then one check.
        systemd.systemctl("start", "--no-block", *chunk)
    report(len(timers), len(timers))
    if wait:
        systemd.wait_active(timers, report=counter(prefix + "timers active"))


def _entries(directory, by_name=True):
    """The entries of `directory`, by name unless not asked ([] when it is not there)."""
    try:
        with os.scandir(directory) as found:
            return sorted(found, key=lambda entry: entry.name) if by_name else list(found)
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass
class Host:
    """What an operation acts on: the paths (a Layout), the systemd boundary, the client's host
    name. Host keeps what touches systemd, the managed files, the timers' stamps and the switch;
    the host's state files (lock, switch journal, owner, lease, hold, paused, fenced, takeovers)
    are `state`'s (state.HostState)."""

    layout: paths.Layout
    systemd: Systemd
    name: str = "?"
    emit: object = emit_line  # where streamed journal lines go (in-process tests pass their own)
    state: HostState = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Every state file is written through this Host's write_atomically (a test makes it refuse one).
        self.state = HostState(self.layout, self.name, self.write_atomically, LOCK_WAIT_SECONDS)

    def sha256(self, path):
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()

    def local(self, path):
        """A host path of a managed file (from a request) -> the file under this layout. Refuses
        anything but a plain name in one of the managed directories."""
        directory, name = os.path.split(path)
        if directory not in (paths.UNIT_DIR, paths.LIB_DIR, paths.CREDENTIALS_DIR) or not name \
                or name.startswith(".") or name in ("..",):
            raise AgentError(protocol.BAD_REQUEST, "%r is not a file the deployer manages" % (path,))
        return self.layout.at(path)

    def managed_files(self, cached=False):
        """host path -> sha256 of every file the deployer owns: marked units and its library files.
        `cached`: a file unchanged since the last cached read is not hashed again (FileHashes);
        an apply hashes every file, so its check that the host did not change since the read
        does not rest on the cache."""
        return {self.layout.to_host(p): digest for p, digest in self.managed_local_files(cached).items()}

    def managed_local_files(self, cached=False):
        """managed_files, keyed by the path under this layout."""
        # scandir: a directory entry says whether it is a plain file, where a stat and an lstat of
        # each of 20,000 units had been a fifth of a 10,000-job host's read.
        hashes = FileHashes(self.layout.file_hashes) if cached else None
        found = {}
        unit_dir, marker = self.layout.unit_dir, paths.MARKER.encode()

        def marked_unit(path):
            with open(path, "rb") as handle:
                content = handle.read()
            return hashlib.sha256(content).hexdigest() if content.startswith(marker) else None

        def digest(entry, read, through_link):
            if hashes is None:
                return read(entry.path)
            return hashes.digest(entry.path, entry.stat(follow_symlinks=through_link), lambda: read(entry.path))

        for entry in _entries(unit_dir, by_name=False):  # 45 ms at 10,000 jobs, and a dict has no order to keep
            if entry.name.startswith(paths.UNIT_PREFIX) and entry.is_file(follow_symlinks=False):
                unit = digest(entry, marked_unit, through_link=False)
                if unit is not None:
                    found[entry.path] = unit
        for directory in (self.layout.lib_dir, self.layout.credentials_dir):
            for entry in _entries(directory, by_name=False):
                if entry.is_file():  # through a link, as the read: so is its signature
                    found[entry.path] = digest(entry, self.sha256, through_link=True)
        if hashes:
            hashes.save()
        return found

    def epochs(self):
        """job -> its epoch here (the 'epoch' credential the push wrote)."""
        found = {}
        suffix = "." + paths.EPOCH_CREDENTIAL
        directory = self.layout.credentials_dir
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            job = name[len("jobs."):-len(suffix)] if name.startswith("jobs.") and name.endswith(suffix) else ""
            try:
                with open(os.path.join(directory, name), "rb") as handle:
                    text = handle.read(32).strip()
            except OSError:
                continue
            if job and text.isdigit():
                found[job] = int(text)
        return found

    def fence(self, job):
        """Stop `job`'s timer here and keep it stopped (as a pause does) until the job is granted to
        this host again (a push with a new epoch) or resumed."""
        timer = paths.job_unit(job, "timer")
        self.state.fence(timer)  # before the timer is even stopped, no run starts
        # --no-block: this runs from the job service's ExecStopPost=, inside its stop.
        self.systemd.systemctl("disable", "--now", "--no-block", timer, check=False)
        return timer

    def runs_dir(self):
        """Where the agent tells a run what it is for (paths.BACKFILL_DIR): a directory its dynamic
        user can read and no other local user can write."""
        directory = self.layout.backfill_dir
        os.makedirs(directory, mode=0o755, exist_ok=True)
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise AgentError(protocol.CORRUPT_STATE, "%s is not a directory only root can write; remove it"
                             % self.layout.to_host(directory))
        return directory

    def ask_run(self, job, slot=None, elapsed=None, ttl=None, params=(), by="", not_for=""):
        """Tell the run the agent is about to start what it stands for: `slot` to backfill, the
        timer `elapsed` (unix seconds) whose start systemd merged into a manual run, else a manual
        run of its own (slot.read_request: the environment cannot say, see there). A file its
        dynamic user can read and no other local user can write; bound to the timer's stamp as
        it is now, so that a run a newer elapse started is not taken for this one. `not_for`:
        the invocation id of a run going, which is not the one asked. -> (path, the inode
        written: Host.withdraw removes that file only)."""
        path = self.ask_path(job)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        request = {"slot": int(slot)} if slot is not None else \
            {"elapsed": float(elapsed)} if elapsed is not None else {"manual": True}
        request["stamp"] = stamp_of(job, self.layout.timer_stamps)
        if params:
            request["params"] = dict(params)
        if by:
            request["by"] = by
        if not_for:
            request["not_for"] = not_for
        # Before the start it asks for: a process started before this is not that start's (on
        # /proc's clock for a process's start, which a step of the wall clock does not move).
        request["asked_boot"] = time.clock_gettime(time.CLOCK_BOOTTIME)
        if ttl:
            request["until"] = time.time() + ttl
        return path, self.write_atomically(path, json.dumps(request), mode=0o644)

    def withdraw(self, path, written):
        """Remove the request ask_run wrote at `path` (inode `written`), unless another agent's
        replaced it since: a `deployer run` that started once this one's run ended, and whose
        run may not have read it yet (removed, that run took itself for the timer's)."""
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == written:
                os.unlink(path)

    def ask_path(self, job):
        """Where ask_run leaves what the run it starts stands for."""
        return os.path.join(self.runs_dir(), paths.job_unit(job, "json"))

    def regrant(self, jobs, now=None):
        """The operator confirmed this host owns `jobs` (a hold released, by `deployer release` or a
        push): each gets an epoch above every one it had here, granted now, so that its service
        fences whichever host ran it meanwhile (docs/receiving.md)."""
        granted = int((now or time.time()) * 1000)
        for job, epoch in self.epochs().items():
            if job in jobs:
                path = os.path.join(self.layout.credentials_dir, "jobs.%s.%s" % (job, paths.EPOCH_CREDENTIAL))
                self.write_atomically(path, "%d\n" % max(granted, epoch + 1))

    def write_staged(self, path, content, mode, ready=None):
        """`content` beside `path`, in the staging directory; a partial file never stays.
        `ready`: the (directory, private) pairs this staging has made already (a push of 10,000
        jobs writes 30,000 files into three directories)."""
        staged = staging_path(path)
        # A directory holding secrets (mode 0600 files) is itself closed to others.
        private = mode & 0o077 == 0
        directory = os.path.dirname(staged)
        if ready is None or (directory, private) not in ready:
            os.makedirs(directory, mode=0o700 if private else 0o755, exist_ok=True)
            if private:
                os.chmod(os.path.dirname(path), 0o700)
            if ready is not None:
                ready.add((directory, private))
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            try:
                os.fchmod(fd, mode)  # the mode asked for, whatever the umask took from it
                rest = memoryview(content)  # os.write, not a file object: 20,000 files at 10,000 jobs
                while rest:
                    rest = rest[os.write(fd, rest):]
            finally:
                os.close(fd)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(staged)
            error.filename = error.filename or staged
            raise
        return staged

    def clear_staging(self):
        for directory in self.layout.managed_dirs():
            staging = os.path.join(directory, paths.STAGING)
            if os.path.isdir(staging):
                for name in os.listdir(staging):
                    os.unlink(os.path.join(staging, name))

    def write_atomically(self, path, text, mode=0o600):
        """Write a file whole or not at all (state.write_atomically): the state files, the run
        requests. -> the inode written."""
        return write_atomically(path, text, mode)

    def stamp(self, timer):
        return os.path.join(self.layout.timer_stamps, "stamp-" + timer)

    def triggered_since(self, timer, when):
        """Whether the timer's Persistent= stamp says it ran after `when` (systemd touches the
        stamp to the trigger time each time the timer elapses)."""
        try:
            return os.stat(self.stamp(timer)).st_mtime > when + 0.001
        except FileNotFoundError:
            return False

    def last_stamp(self, timer):
        try:
            return os.stat(self.stamp(timer)).st_mtime
        except FileNotFoundError:
            return 0.0

    def set_last_trigger(self, timers, when):
        """A timer's last trigger (its Persistent= stamp), as systemd reads it when it starts."""
        for timer in timers:
            stamp = self.stamp(timer)
            os.makedirs(self.layout.timer_stamps, exist_ok=True)
            open(stamp, "a").close()
            os.utime(stamp, (when, when))

    def running_jobs(self, timers):
        """The jobs of these (stopped) timers whose service is running or queued to start."""
        services = [paths.job_unit(job, "service") for job in map(paths.job_of_unit, timers) if job]
        if not services:
            return set()
        shown = self.systemd.properties(services, ["ActiveState"])
        active = {unit for unit, props in shown.items() if props.get("ActiveState") in RUNNING_STATES}
        queued = {line.split()[1] for line in self.systemd.systemctl("list-jobs", "--plain", "--no-legend",
                                                                     check=False)[1].splitlines()
                  if len(line.split()) > 1}
        return {paths.job_of_unit(unit) for unit in set(services) & (active | queued)}

    def play(self, journal, boot=False):
        """Carry out a switch; every step may be repeated. At boot (before sysinit.target, which
        timers wait for) the timers are queued to start, not waited for."""
        systemd = self.systemd
        if journal.disable:
            self.disable_timers(journal.disable)
        # systemd issue 16732: a persistent timer whose new OnCalendar= has a time between its
        # last trigger and now fires at once on reload. Its last trigger becomes the moment it
        # was stopped: an old-schedule gap never fires, a slot inside the push still does.
        # A replay must never create a run: a timer that triggered after that moment (it was
        # started by the interrupted switch, then ran) keeps its stamp, else Persistent= would
        # run again a slot that already ran.
        # And a stamp never moves back: a timer that elapsed after `stopped_at` was noted but
        # before its stop took effect keeps the time of that run (read once it can no longer
        # fire, before `clean` removes the stamp), else its restart would run that slot again.
        restamp = [t for t in journal.restamp if not self.triggered_since(t, journal.stopped_at)]
        if restamp:
            systemd.systemctl("stop", *restamp, check=False)
            last = {t: max(journal.stopped_at, self.last_stamp(t)) for t in restamp}
            systemd.systemctl("clean", "--what=state", *restamp, check=False)
            for timer, when in last.items():
                self.set_last_trigger([timer], when)
        # A removed timer's stamp outlives it: the same job added again later would start from
        # that old last trigger, and Persistent= would run at once a slot that passed while the
        # job did not exist. A stamp written since the switch began is a real trigger's (a
        # replay must keep it).
        # So does its skipped-slot state (/run/deployer-through): its first run would record as
        # skipped a slot of the job as it was before.
        # A removed timer's last run may still be starting, and reads the stamp to name its slot
        # (host/slot.py): without it, it named the timer's first slot again (a double, found by
        # the move test on a slow CI machine). That stamp stays, as a file systemd ignores: a
        # push adding the job again forgets it, a move bringing it back restamps it.
        running = self.running_jobs([t for t in journal.forget if t in journal.disable])
        for timer in journal.forget:
            if timer in journal.disable or not self.triggered_since(timer, journal.stopped_at):
                if paths.job_of_unit(timer) not in running:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.stamp(timer))
                for directory in paths.through_dirs(timer):
                    shutil.rmtree(self.layout.at(directory), ignore_errors=True)
        for timer, when in journal.stamps.items():
            if not self.triggered_since(timer, when):
                self.set_last_trigger([timer], when)
        for staged, target in journal.renames:
            try:
                os.rename(staged, target)
            except FileNotFoundError:
                if os.path.exists(staged):
                    raise  # not a rename this play repeats: its target's directory is gone
        for path in journal.removes:
            if os.path.exists(path):
                os.unlink(path)
        for timer in journal.unpause:
            self.state.unpause(timer)
        # Enabled before the reload: the reload then loads each new timer as a want of
        # timers.target. Linked after it, 10,000 timers took 37 s to start and 14 s per 500 to
        # stop (each loaded on its own, and unloaded again once stopped); linked before, 5 s and
        # 0.5 s (issue 25, docs/performance.md).
        if journal.enable:
            progress("enabling %d timers" % len(journal.enable))
            self.enable_units(journal.enable)
        if journal.reload:
            progress("systemctl daemon-reload")
            systemd.systemctl("daemon-reload")
        if journal.start:
            start_timers(systemd, list(journal.start), wait=not boot)

    def enable_units(self, units):
        """Enable: a timer gets the link `systemctl enable` makes for its only [Install] line,
        WantedBy=timers.target (tests/test_render.py holds every timer template to it); other
        units (the boot units) are enabled by systemctl. One `systemctl enable` of 10,000 timers
        outlived systemctl's D-Bus timeout on a loaded host (issue 25), and it searches every unit
        directory for each unit's links."""
        wants = os.path.join(self.layout.unit_dir, paths.TIMERS_WANTS)
        timers = [u for u in units if u.endswith(".timer")]
        if timers:
            os.makedirs(wants, exist_ok=True)
        for timer in timers:
            link = os.path.join(wants, timer)
            if not os.path.lexists(link):
                os.symlink(paths.UNIT_DIR + "/" + timer, link)  # as systemctl makes it
        others = [u for u in units if not u.endswith(".timer")]
        if others:
            self.systemd.systemctl("--no-reload", "enable", *others)

    def disable_timers(self, timers):
        """Stop timers, in chunks (one call for 10,000 units times out), each call checked, and
        disable them; then check that none is still active. Only after that may their files go.
        Timers whose file is already gone were disabled by the play this one repeats."""
        present = [t for t in timers if os.path.exists(os.path.join(self.layout.unit_dir, t))]
        for chunk in chunks(present, UNIT_CHUNK):
            progress("stopping %d timers" % len(chunk))
            # Stop the timers only: a run already in progress finishes, it is not killed.
            self.systemd.systemctl("stop", *chunk)
        # Disabled = the link `enable` made for WantedBy=timers.target removed (the only [Install]
        # line of a job timer; job_statuses reads "enabled" from the same link). `systemctl
        # disable` searches every unit directory for links to each unit it is given: with 10,000
        # links in timers.target.wants a 500-unit call took 25-45 s, pruning 10,000 jobs 9.5 min.
        wants = os.path.join(self.layout.unit_dir, paths.TIMERS_WANTS)
        for timer in present:
            link = os.path.join(wants, timer)
            if os.path.lexists(link):
                os.unlink(link)
        still = [t for chunk in chunks(present, UNIT_CHUNK)
                 for t, state in zip(chunk, self.systemd.systemctl("is-active", *chunk, check=False)[1].split())
                 if state in ("active", "activating", "reloading")]
        if still:
            raise AgentError(protocol.SYSTEMD, "%d timers are still active after `systemctl stop` "
                             "(%s); their files are kept. Run the command again" % (len(still), ", ".join(still[:5])))

    def roll_forward(self, boot=False):
        """Finish a switch that a crash or a kill interrupted. Returns whether there was one."""
        journal = self.state.read_journal()
        if journal is None:
            return False
        self.play(journal, boot=boot)
        self.state.clear_journal()
        return True

    def release(self, skip=()):
        """End a hold: the job timers (but paused ones and `skip`, which the caller starts or
        removes) start again, their last trigger now: the runs missed while the host was down and
        then held are not made up (another host may have run them). -> (Held or None, started)"""
        held = self.state.current_hold()
        if held is None:
            self.state.mark_not_held()
            return None, ()
        leave = self.state.paused() | set(skip)
        timers = [t for t in job_timers(self.layout) if t not in leave]
        self.set_last_trigger(timers, time.time())
        self.regrant(self.epochs())
        self.state.clear_hold()
        self.state.mark_not_held()  # before any timer starts: each needs it
        if timers:
            start_timers(self.systemd, timers, "releasing the hold: ")
        return held, tuple(timers)

    def machine(self):
        """This machine in this boot, as StatusAnswer.machine says; "" when either id is unreadable
        (a status must not fail for want of it)."""
        ids = []
        for path in (self.layout.machine_id, self.layout.boot_id):
            try:
                with open(path, "rb") as handle:
                    ids.append(handle.read(64).strip())
            except OSError:
                return ""
        if not all(ids):
            return ""
        return hashlib.sha256(b"deployer machine\n" + b"\n".join(ids)).hexdigest()[:32]

    def installed(self, job, suffix):
        unit = paths.job_unit(job, suffix)
        if not os.path.exists(os.path.join(self.layout.unit_dir, unit)):
            raise AgentError(protocol.NOT_INSTALLED, "%s is not installed here (push first?)" % unit)
        return unit


# -- operations -------------------------------------------------------------------------------

# request type -> the op_* that answers it (protocol.OPERATIONS declares each operation once)
HANDLERS: Dict[type, object] = {}


def handles(request_type):
    def register(function):
        HANDLERS[request_type] = function
        return function
    return register


@handles(StateRequest)
def op_state(host, request):
    files = host.managed_files(cached=True)
    owner = host.state.read_owner()
    if request.expect is not None:
        return StateAnswer(matched=protocol.files_digest(files) == request.expect,
                           paused=tuple(sorted(host.state.paused())), owner=owner and owner.host,
                           held=host.state.current_hold())
    contents = {}
    if request.contents:
        for path in files:
            if path.startswith(paths.UNIT_DIR + "/"):
                with open(host.layout.at(path), "rb") as handle:
                    contents[path] = base64.b64encode(handle.read()).decode()
    return StateAnswer(files=files, contents=contents, paused=tuple(sorted(host.state.paused())),
                       owner=owner and owner.host, held=host.state.current_hold(), epochs=host.epochs())


@handles(ApplyRequest)
def op_apply(host, request):
    # A client that dies (killed, connection lost) must not stop a switch under way.
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    watch = Stopwatch()
    with host.state.locked():
        watch.lap("lock")
        return apply_locked(host, request, watch)


def apply_locked(host, request, watch):
    """Everything apply does under the host lock: recover, check, stage, verify, switch."""
    layout = host.layout
    unit_dir = paths.UNIT_DIR
    recovered = host.roll_forward()
    host.state.check_owner()
    current = host.managed_files()
    if current != request.expect:
        raise AgentError(protocol.HOST_CHANGED,
                         "the host changed since it was read (another push?); run the push again")
    check_unmanaged(host, current, [w.path for w in request.write], request.remove)
    host.clear_staging()
    try:
        staged, ready = {}, set()
        units = [item for item in request.write if item.path.startswith(unit_dir + "/")]
        others = [item for item in request.write if not item.path.startswith(unit_dir + "/")]
        progress("writing %d units" % len(units))
        stage(host, units, staged, ready)
        watch.lap("stage")

        def write_the_rest():
            progress("writing %d files" % len(others))
            stage(host, others, staged, ready)
            os.sync()  # every staged byte on disk before anything is switched: one flush, not one per file

        # verify checks the units while the other files (10,000 epoch credentials at 10,000 jobs)
        # are written, in another directory: every unit is staged before it starts. A call took
        # twice as long while files were added to the directory of its units (2,500 units: 0.67 s
        # alone, 1.45 s beside a writer there, 0.69 s beside one writing elsewhere).
        if units:
            complaints = host.systemd.verify(sorted(staged[item.path] for item in units), meanwhile=write_the_rest,
                                             report=counter("systemd-analyze verify"))
        else:
            write_the_rest()
            complaints = []
        if complaints:
            host.clear_staging()
            raise AgentError(protocol.VERIFY_FAILED,
                             "systemd-analyze verify refused the new units: " + " | ".join(complaints[-5:]))
        watch.lap("verify")
        host.state.unfence(granted_timers(request.write))
        paused = host.state.paused()
        journal = switch_plan(current, staged, {w.path: w.start for w in request.write},
                              [p for p in request.remove if host.local(p)], paused, request.stamps, time.time(),
                              local=host.local)
        host.state.write_owner(Owner(host.name))
        host.state.write_journal(journal)  # from here on, the new set is the host's
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        host.clear_staging()  # nothing was switched: the host keeps its current set
        raise AgentError(protocol.NO_SPACE, "no space left on the host's disk (%s): nothing was changed; free "
                         "some space and push again" % (layout.to_host(error.filename) if error.filename
                                                         else "writing the new files"))
    watch.lap("switch")
    # A push confirms what the host owns: a hold ends here. The timers the switch starts, restarts
    # or removes are its own; the others start now (before the switch: the held marker must be
    # gone before the switch starts any timer, or systemd would skip the start).
    released, _ = host.release(skip=set(journal.start) | set(journal.restamp) | set(journal.disable))
    host.play(journal)
    host.state.clear_journal()
    if request.takeover is not None:
        host.state.record_takeover(request.takeover)
    refresh_metrics(host)
    watch.lap("activate")
    added = {unit_name(p) for p in staged if p not in current}
    boot_only = {unit_name(w.path) for w in request.write if w.path.endswith(".timer") and not w.start}
    # Every paused job the push leaves installed stays paused, changed or not: the push says so.
    kept_paused = tuple(sorted(paused - set(journal.unpause)))
    return ApplyAnswer(reloaded=journal.reload, started=tuple(t for t in journal.start if t in added),
                       restarted=tuple(t for t in journal.start if t not in added), stopped=journal.disable,
                       enabled_for_boot=tuple(sorted(boot_only)), kept_paused=kept_paused,
                       recovered_interrupted_push=recovered, seconds=watch.steps, released=released)


def stage(host, writes, staged, ready):
    """Write `writes` to their staging directories (staged: host path -> staged path; ready: the
    directories this push has made)."""
    for item in writes:
        staged[item.path] = host.write_staged(host.local(item.path), base64.b64decode(item.content), item.mode, ready)


def granted_timers(writes):
    """The timers of jobs whose epoch this apply writes: granted to this host anew."""
    suffix = "." + paths.EPOCH_CREDENTIAL
    names = [os.path.basename(w.path) for w in writes]
    return [paths.job_unit(n[len("jobs."):-len(suffix)], "timer") for n in names
            if n.startswith("jobs.") and n.endswith(suffix)]


def refresh_metrics(host):
    """A push, pause or resume shows in the metrics at once: the collector is started (its own
    unit, as root; --no-block: the agent does not wait for it). Hosts without metrics have no unit."""
    if os.path.exists(os.path.join(host.layout.unit_dir, paths.METRICS_SERVICE)):
        host.systemd.systemctl("start", "--no-block", paths.METRICS_SERVICE, check=False)


def check_unmanaged(host, current, writes, removes):
    """A deployer-* unit that is not ours (no marker, or a link) is never overwritten or pruned."""
    for path in list(writes) + list(removes):
        if path not in current and os.path.lexists(host.local(path)):
            raise AgentError(protocol.UNMANAGED_FILE, "%s exists and was not written by deployer (no \"%s\" "
                             "first line): refusing to overwrite it. Rename the job, or remove the file if "
                             "it is an old copy" % (path, paths.MARKER[:24] + "..."))
    for path in removes:
        if path not in current:
            raise AgentError(protocol.UNMANAGED_FILE, "%s is not a file deployer manages here: refusing to "
                             "remove it" % path)


@handles(StatusRequest)
def op_status(host, request):
    units = {unit_name(p) for p in host.managed_files() if paths.job_of_unit(p)} - {paths.RECOVER_UNIT}
    # A chained job (after =) has a service and no timer: it is listed by the timer it lacks.
    timers = sorted({u.rsplit(".", 1)[0] + ".timer" for u in units})
    try:
        owner = host.state.read_owner()
    except AgentError:
        owner = None  # a status still answers; the next push names the corrupt file
    pushed = last_push(host.systemd)
    return StatusAnswer(jobs=with_skips(host, with_last_runs(host, job_statuses(host, timers))),
                        held=host.state.current_hold(), machine=host.machine(), owner=owner and owner.host,
                        last_push=pushed)


def job_statuses(host, timers):
    """The JobStatus of each job timer: what `deployer status` shows and the metrics collector
    (metrics.py) exports, read once, the same way, so that the two agree."""
    services = [t[:-len(".timer")] + ".service" for t in timers]
    timer_props = host.systemd.properties([t for t in timers if os.path.exists(os.path.join(host.layout.unit_dir, t))],
                                          TIMER_STATUS)
    service_props = host.systemd.properties(services, SERVICE_STATUS)
    # Enabled = linked from timers.target.wants (what `enable` does for WantedBy=timers.target),
    # read here rather than asked of PID 1 (UnitFileState is the slow property; see dbus.py).
    wants = os.path.join(host.layout.unit_dir, paths.TIMERS_WANTS)
    for timer, props in timer_props.items():
        props["UnitFileState"] = "enabled" if os.path.lexists(os.path.join(wants, timer)) else "disabled"
    running = [name for name, props in service_props.items() if props.get("ActiveState") in ("activating", "deactivating")]
    # What a run in progress says it is doing (the trigger's sd_notify STATUS=, e.g. waiting for
    # the service to finish accepted work): asked of running services only.
    for name, props in host.systemd.properties(running, ("StatusText",)).items() if running else ():
        service_props.setdefault(name, {})["StatusText"] = props.get("StatusText", "")
    paused, fenced = host.state.paused(), host.state.fenced()
    return tuple(job_status(t, timer_props.get(t, {}), service_props.get(s, {}), t in paused, t in fenced)
                 for t, s in zip(timers, services))


def needs_last_run(job):
    """Does systemd leave out what status must say of this job's last run? A failure's reason is
    in its record only; a paused timer's units are unloaded and a reboot forgets every last run."""
    return job.paused or not job.finished or job.result not in ("", "success")


def with_last_runs(host, jobs):
    """`jobs` with `last_run` from ONE journalctl call for all that need it (needs_last_run), read
    newest first and ended once each has its record (one that never ran has none:
    STATUS_SCAN_LIMIT bounds the read)."""
    asked = [j.job for j in jobs if needs_last_run(j)]
    if not asked:
        return tuple(jobs)
    waiting = set(asked)

    def done(entry):
        if entry.get("MESSAGE_ID") == record.RUN_FINISHED and record.sent_by_the_job(entry):
            waiting.discard(entry.get("DEPLOYER_JOB"))
        return not waiting

    entries = host.systemd.journal_entries(["-r", "--output-fields=" + ",".join(RUN_FIELDS)] + run_matches(asked),
                                           stop=done, limit=STATUS_SCAN_LIMIT)
    wanted = set(asked)
    last = {job: runs[-1] for job, runs in runs_from_journal(entries).items() if job in wanted}
    return tuple(replace(j, last_run=last[j.job]) if j.job in last else j for j in jobs)


def with_skips(host, jobs):
    """`jobs` with the slots each skipped, as the metrics collector counted them."""
    try:
        fd = os.open(host.layout.at(paths.METRICS_STATE), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, encoding="utf-8") as handle:
            kept = json.load(handle)["jobs"]
        found = {}
        for j in jobs:
            job = kept.get(j.job) or {}
            last = job.get("last_skipped")
            found[j.job] = replace(j, skipped=sum((job.get("skipped") or {}).values()), last_skipped=last and RunInfo(
                run=str(last["run"]), started=float(last["started"]), result="skipped", reason=str(last["reason"]),
                slot=int(last["slot"]), duration=0.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return tuple(jobs)
    return tuple(found[j.job] for j in jobs)


@handles(HistoryRequest)
def op_history(host, request):
    """Every run of one job since `request.since`: one journalctl call, records and PID 1's entries."""
    paths.job_unit(request.job, "service")  # a bad name is refused before it reaches journalctl
    entries = host.systemd.journal_entries(["--since=@%d" % max(int(request.since), 0),
                                            "--output-fields=" + ",".join(RUN_FIELDS)] + run_matches([request.job]))
    runs = runs_from_journal(entries).get(request.job, [])
    try:  # a push that changes the schedule rewrites the timer: slots before it were another schedule's
        installed = os.stat(os.path.join(host.layout.unit_dir, paths.job_unit(request.job, "timer"))).st_mtime
    except OSError:
        installed = 0.0
    return HistoryAnswer(runs=tuple(r for r in runs if r.started >= request.since - 1), now=time.time(),
                         scheduled_since=installed)


# After its run ends, how long `run` waits for the run's last lines (its record) to reach the journal.
JOURNAL_LAG = 3.0


def who_asked():
    """`user@client` of the SSH session that asked, as the host sees it (audit.ssh_origin): the
    client's own word is not taken."""
    user, client = audit.ssh_origin()
    return "%s@%s" % (user, client) if client else user


@handles(RunRequest)
def op_run(host, request):
    """Start the job's service and wait for it, streaming the run's journal lines as they come
    (`@line` on stderr); the answer carries every line and the run's record."""
    service = host.installed(request.job, "service")
    if paths.job_unit(request.job, "timer") in host.state.fenced():
        raise fenced_error(request.job)
    held = check_run_on_hold(host, request)
    attached, going = running_since(host, service)
    if attached is not None:
        if request.slot is not None or request.params:
            asked = "a backfill" if request.slot is not None else "a run with --set"
            raise AgentError(protocol.RUNNING, "%s is already running on %s (since %s): %s would not "
                             "start; run it again when this run ends" % (request.job, host.name, clock_of_iso(attached)
                                                                         if attached else "?", asked))
        # systemctl start merges into the run in progress and returns when it ends.
        host.emit("deployer: %s is already running on %s (since %s): following that run"
                  % (request.job, host.name, clock_of_iso(attached) if attached else "?"))
    if attached is not None and os.path.exists(host.ask_path(request.job)):
        # The run going may not have read what it was asked to stand for yet (another `deployer
        # run` started it): replaced, it would take this request, made after it began, for the
        # timer's (slot.asked_start). This start only joins it.
        asked = None
    else:
        # Not for the unit's run going, if one is (a timer's, a chained one's, one ending): this
        # start joins it or waits for its end, and it may read this before it reads its stamp.
        asked, written = host.ask_run(request.job, slot=request.slot, params=request.params, by=who_asked(),
                                      not_for=going)
    stamp_before = stamp_of(request.job, host.layout.timer_stamps)
    since = time.time()
    follower = host.systemd.follow(["--since=@%d" % int(since), "_SYSTEMD_UNIT=" + service])
    finished = threading.Event()  # the run's record was streamed
    reader = threading.Thread(target=stream_run_lines, args=(host, follower, since, finished), daemon=True)
    reader.start()
    try:
        code, _, err = host.systemd.systemctl("start", service, check=False)
        props = host.systemd.show([service], ["InvocationID", "Result", "ExecMainStatus"]).get(service, {})
        finished.wait(JOURNAL_LAG)
    finally:
        follower.kill()
        follower.wait()
        reader.join(1.0)
        if asked is not None:
            host.withdraw(asked, written)
    invocation = props.get("InvocationID", "")
    if attached is None and going and invocation == going:
        # The start made no run: a condition held it back. The run that was ending (deactivating)
        # when this was asked may have been fenced, and its ExecStopPost= marked the job so.
        if paths.job_unit(request.job, "timer") in host.state.fenced():
            raise fenced_error(request.job)
    merged = run_merged_slot(host, request.job, service, invocation, stamp_before,
                             stamp_of(request.job, host.layout.timer_stamps))
    entries = host.systemd.journal_entries(["_SYSTEMD_INVOCATION_ID=" + invocation]) if invocation else []
    runs = runs_from_journal(entries).get(request.job, [])
    # Its own record, not one of the slots it recorded skipped (they come after it).
    ran = [r for r in runs if r.result != "skipped"]
    run = ran[-1] if ran else runs[-1] if runs else None
    if attached is None and ran and run.source == "record" and not run_asked_for(run, request):
        # The timer started a run between the check above and the start: the start joined it,
        # and that run kept the timer's slot (slot.asked_start), as it should.
        attached = iso_time("@%d" % run.started)
        host.emit("deployer: the job's timer started a run (slot %s) just before this request, which joined it%s"
                  % (iso_time("@%d" % run.slot) if run.slot else "?",
                     "; what was asked (--slot, --set) did not run: ask again" if request.slot is not None
                     or request.params else ""))
    return RunAnswer(ok=code == 0, result=props.get("Result", ""),
                     exit_status=int(props.get("ExecMainStatus") or 0),
                     output="".join(format_entry(e) + "\n" for e in entries if "MESSAGE" in e),
                     error=err.strip(), run=run, merged_elapse=merged, held=held,
                     attached=attached or "")


def fenced_error(job):
    return AgentError(protocol.NOT_INSTALLED, "job %s is fenced on this host: its service holds a newer owner's "
                      "epoch (the job moved); `deployer resume %s` if this host should own it again" % (job, job))


def run_asked_for(run, request):
    """Whether the recorded `run` is the one `request` asked for: its backfill slot, or a manual
    run (its key says manual-<invocation>; a record without a key cannot say, and is taken to be)."""
    if request.slot is not None:
        return run.slot == request.slot
    return not run.key or "/manual-" in run.key


RUNNING_STATES = ("activating", "active", "reloading", "deactivating")
# A start joins a run in these; one that is deactivating (its ExecStopPost=) ends first, and
# the start then makes a run of its own.
JOINABLE_STATES = ("activating", "active", "reloading")


def running_since(host, service):
    """When the run of `service` in progress, which a start would join, started (ISO 8601; ""
    when systemd does not say; None when none runs or the one going is ending), and the unit's
    invocation id (that run's, or the last one's)."""
    props = host.systemd.show([service], ["ActiveState", "ExecMainStartTimestamp", "InvocationID"]).get(service, {})
    if props.get("ActiveState") not in JOINABLE_STATES:
        return None, props.get("InvocationID", "")
    return iso_time(props.get("ExecMainStartTimestamp", "")), props.get("InvocationID", "")


@handles(StopRequest)
def op_stop(host, request):
    """Stop the job's run in progress: its trigger takes the SIGTERM as `deployer stop`'s and
    records the run as failed, stopped (its alert says so). Nothing running is an answer, not an
    error."""
    service = host.installed(request.job, "service")
    props = host.systemd.show([service], ["ActiveState", "ExecMainStartTimestamp", "InvocationID"]).get(service, {})
    if props.get("ActiveState") not in RUNNING_STATES:
        return StopAnswer(stopped=False)
    invocation = props.get("InvocationID", "")
    # Names the run for its trigger: this SIGTERM is an operator's, so the run is not resumed at
    # the next boot as a shutdown's would be (run.interruption).
    marker = os.path.join(host.runs_dir(), paths.job_unit(request.job, "stop"))
    host.write_atomically(marker, invocation, mode=0o644)
    try:
        host.systemd.systemctl("stop", service)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)
    runs, deadline = [], time.monotonic() + JOURNAL_LAG
    while invocation and not runs and time.monotonic() < deadline:  # the record reaches the journal late
        runs = [run for run in runs_from_journal(host.systemd.journal_entries(
            ["_SYSTEMD_INVOCATION_ID=" + invocation])).get(request.job, []) if run.source == "record"]
        if not runs:
            time.sleep(0.2)
    return StopAnswer(stopped=True, started=iso_time(props.get("ExecMainStartTimestamp", "")),
                      run=runs[-1] if runs else None)


def check_run_on_hold(host, request):
    """A held host's jobs may run elsewhere now (they were moved while it was down): a manual
    run there could run one twice, so it needs `force`. -> the hold it was forced past, or None."""
    held = host.state.current_hold()
    if held is not None and not request.force:
        why = held.reason or "was down %s" % protocol.duration_text(held.down_for_seconds)
        raise AgentError(protocol.HELD, "this host holds its jobs (%s): %s may run on another host now. End "
                         "the hold first (`deployer push` or `deployer release`), or run it anyway with --force"
                         % (why, request.job))
    return held


# How long the run started for a merged timer elapse may take to read what it stands for.
MERGED_TTL = 120


def run_merged_slot(host, job, service, invocation, before, after):
    """The timer elapsed while this manual run held the unit: systemd merged its start into the
    running one, and the slot would run nowhere (issue 22 item 6). Start a run for that elapse's
    slot now (its key is the slot's, so a service that already has it answers from its store).
    `before`, `after`: the timer's stamp (ns) -> the elapse as ISO time, "" when the timer did not
    elapse or its own run started anyway."""
    if after is None or after == before:
        return ""
    now = host.systemd.show([service], ["InvocationID"]).get(service, {})
    if now.get("InvocationID", "") != invocation:
        return ""  # the timer's own run started after this one (not merged)
    host.ask_run(job, elapsed=after / 1e9, ttl=MERGED_TTL)
    host.systemd.systemctl("start", "--no-block", service, check=False)
    shown = iso_time("@%d" % (after // 10 ** 9))
    host.emit("%s deployer: the timer elapsed at %s during this manual run; systemd merged its start "
              "into it, so its slot runs now (deployer-%s.service)" % (shown, shown, job))
    return shown


def stream_run_lines(host, follower, since, finished):
    """The follower's entries written by the run (not PID 1's, not an earlier run's) -> host.emit."""
    for line in follower.stdout:
        try:
            entry = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            continue
        if int(entry.get("__REALTIME_TIMESTAMP") or 0) / 1e6 < since or not entry.get("_SYSTEMD_INVOCATION_ID"):
            continue
        host.emit(format_entry(entry))
        if entry.get("MESSAGE_ID") == record.RUN_FINISHED:
            finished.set()


@handles(LogsRequest)
def op_logs(host, request):
    args = ["-u", paths.job_unit(request.job, "service")]
    if request.lines:
        args += ["-n", str(request.lines)]
    if request.since is not None:
        args.append("--since=@%d" % max(int(request.since), 0))
    if not request.follow:
        return LogsAnswer(output="".join(format_entry(e) + "\n" for e in host.systemd.journal_entries(args)
                                         if "MESSAGE" in e))
    follower = host.systemd.follow(args)
    try:
        follow_lines(host, follower)
    finally:
        follower.kill()
        follower.wait()
    return LogsAnswer()


def follow_lines(host, follower):
    """Stream entries until journalctl ends or the client goes away (a failed write, of a line
    or of the heartbeat, sets CLIENT_GONE)."""
    pending = b""
    descriptor = follower.stdout.fileno()
    while not CLIENT_GONE.is_set():
        ready, _, _ = select.select([descriptor], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(descriptor, 1 << 16)
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                entry = json.loads(line.decode("utf-8", "replace"))
            except ValueError:
                continue
            if "MESSAGE" in entry and host.emit(format_entry(entry)) is False:
                return


@handles(PauseRequest)
def op_pause(host, request):
    with host.state.locked():
        timer = host.installed(request.job, "timer")
        host.state.pause(timer)
        # Disabled as well as stopped, so that a reboot does not bring it back.
        host.systemd.systemctl("disable", "--now", timer)
        refresh_metrics(host)
        return PauseAnswer(timer=timer)


@handles(ResumeRequest)
def op_resume(host, request):
    with host.state.locked():
        timer = host.installed(request.job, "timer")
        host.state.unpause(timer)
        host.state.unfence([timer])
        # Runs missed while paused are not made up: the last trigger becomes now.
        host.systemd.systemctl("stop", timer, check=False)
        host.systemd.systemctl("clean", "--what=state", timer, check=False)
        host.set_last_trigger([timer], time.time())
        host.systemd.systemctl("enable", "--now", timer)
        refresh_metrics(host)
        return ResumeAnswer(timer=timer)


# How long the agent waits for a finished test's answer to reach the journal (a loaded journald lags).
ALERT_TEST_JOURNAL_WAIT = 15.0


@handles(AlertTestRequest)
def op_alert_test(host, request):
    """`deployer alert test`: start the channel's own alert unit as its test instance, which
    sends one test message exactly as a failed job's alert goes out (the unit's credentials,
    dynamic user, sandbox and the manager's proxy environment), and answer what the channel said."""
    template = paths.alert_template(request.channel)
    if not os.path.exists(os.path.join(host.layout.unit_dir, template)):
        raise AgentError(protocol.NOT_INSTALLED, "alert channel %s is not installed on %s: no job pushed here "
                         "alerts through it (push first?)" % (request.channel, host.name))
    unit = paths.alert_test_unit(request.channel)
    # The journal's end before the start: the test's lines are those after it. (Not by the
    # unit's InvocationID: a finished oneshot nothing refers to is collected at once.)
    last = host.systemd.journal_entries(["-n", "1"])
    after = ["--after-cursor=" + last[-1]["__CURSOR"]] if last and "__CURSOR" in last[-1] else []
    code, _, err = host.systemd.systemctl("start", unit, check=False)
    deadline = time.monotonic() + ALERT_TEST_JOURNAL_WAIT
    while True:
        entries = host.systemd.journal_entries(after + ["_SYSTEMD_UNIT=" + unit])
        if any("DEPLOYER_ALERT_TEST" in e for e in entries) or code != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    output = "".join(format_entry(e) + "\n" for e in entries if "MESSAGE" in e)
    return alert_test_answer(request.channel, entries, output, code, err.strip())


def alert_test_answer(channel, entries, output, code=0, failure=""):
    """The answer from the test unit's journal entries: the one its program sent (TEST_FIELDS),
    only from a dynamic user (the unit's), since any local user can write to the journal."""
    for entry in entries:
        uid = entry.get("_UID")
        if entry.get("DEPLOYER_ALERT_TEST") != channel or not (isinstance(uid, str) and uid.isdigit()
                                                               and int(uid) in record.DYNAMIC_UIDS):
            continue
        status = entry.get("DEPLOYER_ALERT_HTTP_STATUS") or ""
        return AlertTestAnswer(channel=channel, accepted=entry.get("DEPLOYER_ALERT_ACCEPTED") == "y",
                               http_status=int(status) if status.isdigit() else None,
                               answer=str(entry.get("DEPLOYER_ALERT_ANSWER") or ""), output=output)
    why = "the test unit failed (%s)" % failure if code != 0 else "the test unit wrote no answer"
    return AlertTestAnswer(channel=channel, accepted=False, answer="not sent: " + why, output=output)


@handles(HandoffRequest)
def op_handoff(host, request):
    """The first step of `deployer move`: stop these timers here and say when."""
    with host.state.locked():
        timers = [paths.job_unit(j, "timer") for j in request.jobs]
        timers = [t for t in timers if os.path.exists(os.path.join(host.layout.unit_dir, t))]
        if timers:
            host.systemd.systemctl("disable", "--now", *timers)
        return HandoffAnswer(stopped=tuple(timers), at=time.time())


@handles(ReleaseRequest)
def op_release(host, request):
    """`deployer release`: the operator confirms that this host still owns its jobs."""
    with host.state.locked():
        held, started = host.release()
        return ReleaseAnswer(released=held, started=started)


@handles(AuditRequest)
def op_audit(host, request):
    """`deployer audit`: the audit trail since `request.since`."""
    return AuditAnswer(entries=tuple(audit_entries(host.systemd, request.since)), now=time.time())


def audited(request, answer):
    """(action, target, detail) of a request the audit trail records, else None (reads are not)."""
    kind = type(request)
    if kind is ApplyRequest:
        detail = "%d written, %d removed" % (len(request.write), len(request.remove))
        if request.takeover is not None:
            detail += ", took over %d jobs of unreachable %s%s" % (
                len(request.takeover.jobs), request.takeover.source, " (forced)" if request.takeover.forced else "")
        if isinstance(answer, ApplyAnswer) and answer.released is not None:
            detail += ", released a hold"
        return "push", "", detail
    if kind is HandoffRequest:
        return "handoff", ",".join(request.jobs), ""
    if kind is RunRequest:
        detail = ("slot %s" % iso_utc(request.slot)) if request.slot is not None else "manual"
        return "run", request.job, detail + (", forced" if request.force else "")
    if kind in (PauseRequest, ResumeRequest, StopRequest):
        return {PauseRequest: "pause", ResumeRequest: "resume", StopRequest: "stop"}[kind], request.job, ""
    if kind is ReleaseRequest:
        return "release", "", ("was held" if getattr(answer, "released", None) else "not held")
    if kind is AlertTestRequest:
        accepted = getattr(answer, "accepted", None)
        return "alert_test", request.channel, "" if accepted is None else ("accepted" if accepted else "not accepted")
    return None


def record_action(host, request, answer, actor, began):
    """Write the audit entry of an action: the client's word (actor) and the host's own (the SSH
    user and address), dated when the action began (a manual run's entry is written when it
    ends, with its outcome). A journal that cannot be written never fails the action."""
    what = audited(request, answer)
    if what is None:
        return
    action, target, detail = what
    ssh_user, ssh_from = audit.ssh_origin()
    entry = AuditEntry(time=began, action=action, outcome=answer.code if isinstance(answer, Failure) else "ok",
                       target=target, detail=detail, host=host.name, ssh_user=ssh_user, ssh_from=ssh_from,
                       actor=audit.clean_actor(actor))
    audit.send(entry, host.layout.at(paths.JOURNAL_SOCKET))


# -- dispatch ---------------------------------------------------------------------------------



def decode(raw):
    """A request's bytes -> (host name, request, actor), or the error that refuses it (handle
    answers it). Decoded once: a push of 10,000 jobs is 30,000 files."""
    try:
        return protocol.decode_envelope(raw)
    except (protocol.ProtocolError, paths.BadName) as error:
        return error


def handle(raw, layout=None, systemd=None, require_root=True, emit=None, progress_to=None, decoded=None):
    """One request (bytes; `decoded`: what decode() made of them) -> one answer (bytes). The
    in-process client calls this directly (`emit`: where streamed journal lines go, else `@line`
    on stderr; `progress_to`: where progress goes, else `@progress` on stderr)."""
    if progress_to is not None:
        token = PROGRESS_TO.set(progress_to)
        try:
            return handle(raw, layout, systemd, require_root, emit, decoded=decoded)
        finally:
            PROGRESS_TO.reset(token)
    host = request = actor = None
    began = time.time()
    try:
        decoded = decode(raw) if decoded is None else decoded
        if isinstance(decoded, Exception):
            raise decoded
        name, request, actor = decoded
        host = Host(layout or paths.Layout(), systemd or Systemd(), name, emit or emit_line)
        if require_root and os.geteuid() != 0:
            raise AgentError(protocol.NOT_ROOT, "needs root on the host: log in as root, or set `sudo = true` "
                             "(passwordless sudo for this user) in [host:%s]" % name)
        if protocol.operation_of(request).settles_first and host.state.switch_pending():
            with host.state.locked():  # an interrupted switch is finished before anything reads the host
                host.roll_forward()
        began = time.time()
        answer = HANDLERS[type(request)](host, request)
    except protocol.ProtocolError as error:
        answer = Failure(error.code, error.message)
    except AgentError as error:
        answer = Failure(error.code, str(error))
    except paths.BadName as error:
        answer = Failure(protocol.BAD_REQUEST, str(error))
    if host is not None:
        record_action(host, request, answer, actor, began)
    return protocol.encode_answer(answer)


def boot(layout=None, systemd=None):
    """deployer-recover.service: finish an interrupted switch before timers start. -> exit status"""
    host = Host(layout or paths.Layout(), systemd or Systemd(), "boot")
    try:
        with host.state.locked():
            finished = host.roll_forward(boot=True)
    except AgentError as error:
        sys.stderr.write("deployer agent --boot: %s\n" % error)
        return 1
    print("deployer: finished an interrupted switch" if finished else "deployer: no interrupted switch")
    return 0


def fence_main(job, layout=None, systemd=None):
    """From a job service's ExecStopPost= (as root) after its run ended fenced: stop its timer."""
    host = Host(layout or paths.Layout(), systemd or Systemd())
    try:
        timer = host.fence(job)
    except (OSError, paths.BadName) as error:
        say("cannot stop the timer of fenced job %s: %s" % (job, error))
        return 1
    say("%s: stopped; the job's service fenced this host (the job is owned elsewhere); `deployer status` "
        "shows it fenced, `deployer resume %s` or a push that grants it here again restarts it" % (timer, job))
    return 0


def resume_interrupted(host):
    """At boot, before any timer: start again, under the same slot key, each run the shutdown
    interrupted (the service answers a finished key with its result, a running one with its
    202 and Location, so polling resumes; nothing is executed twice)."""
    try:
        entries = host.systemd.journal_entries(["-b", "-1", "--output-fields=" + ",".join(RUN_FIELDS),
                                                "MESSAGE_ID=" + record.RUN_FINISHED])
    except OSError:
        return ()
    stopped = host.state.paused() | host.state.fenced()
    resumed = []
    for job, slot in sorted(interrupted_runs(entries).items()):
        service = paths.job_unit(job, "service")
        if paths.job_unit(job, "timer") in stopped or not os.path.exists(os.path.join(host.layout.unit_dir, service)):
            continue
        host.ask_run(job, slot=slot, ttl=RESUME_TTL)
        host.systemd.systemctl("start", "--no-block", service, check=False)
        resumed.append(job)
        print("deployer: resuming %s's run for slot %s, interrupted by the shutdown (same key)"
              % (job, iso_utc(slot)))
    return tuple(resumed)


# A resume's backfill request is read by the run it starts, once the network is up; after this
# long a manual start no longer takes it for a resume.
RESUME_TTL = 900


def hold_at_boot(layout=None, systemd=None, now=None):
    """deployer-lease@boot.service: before any timer, hold every job when the lease ran out while
    the host was down (its jobs may have moved). Fail closed: the job timers start only once this
    has written paths.NOT_HELD, so an error anywhere here holds; the hold goes to paths.HELD, or
    to paths.HELD_RUN when that cannot be written (a read-only or full /var). -> exit status"""
    host = Host(layout or paths.Layout(), systemd or Systemd(), "boot")
    state = host.state
    now = time.time() if now is None else now
    held = None
    try:
        with state.locked():
            if state.held_on_disk():
                print("deployer: still holding every job (since an earlier boot) until `deployer push` or "
                      "`deployer release`")
                return 0
            try:
                lease, unreadable = state.read_lease(), False
            except AgentError:
                lease, unreadable = None, True  # lease_ran_out holds
            if lease is None and not unreadable:
                state.mark_not_held()
                print("deployer: no lease recorded: the jobs run")
                resume_interrupted(host)
                return 0
            held = lease_ran_out(lease, now)
            if held is None:
                state.mark_not_held()
                print("deployer: lease still valid (renewed %s before this boot): the jobs run"
                      % protocol.duration_text(now - lease.renewed))
                resume_interrupted(host)
                return 0
            state.write_held(held)
    except Exception as error:  # noqa: BLE001 - whatever went wrong, the jobs are held
        reason = "the hold check at boot failed (%s)" % (
            error if isinstance(error, (AgentError, OSError)) else "%s: %s" % (type(error).__name__, error))
        held = Held(since=(held.since if held else iso_time("@%d" % now)),
                    down_for_seconds=held.down_for_seconds if held else 0.0,
                    lease_seconds=held.lease_seconds if held else 0.0, reason=reason)
        with contextlib.suppress(Exception):
            state.write_held_run(held)
        sys.stderr.write("deployer agent --hold-at-boot: HOLDING every job: %s; no job runs until `deployer push` "
                         "or `deployer release`\n" % reason)
        return 1
    why = ("the lease (%s) ran out while this host was down (%s)"
           % (protocol.duration_text(held.lease_seconds), protocol.duration_text(held.down_for_seconds))
           if held.lease_seconds else "the lease file is unreadable")
    print("deployer: HOLDING every job: %s; no job runs until `deployer push` or `deployer release` confirms "
          "what this host still owns" % why)
    return 0


def renew_lease(seconds, layout=None, now=None):
    """deployer-lease@renew.service: this host is up and runs its jobs, for `seconds` more."""
    HostState(layout or paths.Layout()).write_lease(Lease(renewed=time.time() if now is None else now,
                                                          seconds=seconds))
    return 0


# A read that takes this long is stuck, not slow (status of 10,000 jobs takes seconds): the
# heartbeat would keep the client waiting for ever, so the agent says where it is, and ends.
READ_LIMIT_SECONDS = 150
EXIT_STUCK = 70


def watch_reads(decoded, limit=READ_LIMIT_SECONDS):
    """Give a read request (`decoded`: what decode() made of it) `limit` seconds; then print every
    thread's stack to the client and exit."""
    import faulthandler

    if isinstance(decoded, Exception):
        return  # handle() answers it
    request = decoded[1]
    if not protocol.operation_of(request).reads:
        return

    main_thread = threading.main_thread().ident

    def expire():
        say("deployer agent: %s did not finish within %ds (stuck); where each thread was:"
            % (type(request).__name__, limit))
        with STDERR:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        # Last, as one line: the client shows the last lines of what a failed agent said.
        frames = traceback.extract_stack(sys._current_frames().get(main_thread))[-4:]
        say("deployer agent: stuck in " + " > ".join("%s:%d %s" % (os.path.basename(f.filename), f.lineno, f.name)
                                                    for f in frames))
        os._exit(EXIT_STUCK)

    watchdog = threading.Timer(limit, expire)
    watchdog.daemon = True
    watchdog.start()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--boot"]:
        sys.exit(boot())
    if argv == ["--hold-at-boot"]:
        sys.exit(hold_at_boot())
    if len(argv) == 2 and argv[0] == "--renew-lease":
        sys.exit(renew_lease(float(argv[1])))
    heartbeat()
    raw = sys.stdin.buffer.read()
    decoded = decode(raw)
    watch_reads(decoded)
    answer = handle(raw, decoded=decoded)
    try:
        sys.stdout.buffer.write(answer)
        sys.stdout.flush()
    except OSError:
        pass  # the client is gone; the work is done all the same


if __name__ == "__main__":
    main()
