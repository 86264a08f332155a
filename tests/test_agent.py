"""The host agent, in-process against a temporary root and a fake Systemd (recorded outputs)."""
from __future__ import annotations

import base64
import dataclasses
import errno
import fcntl
import json
import os
import shutil
import subprocess
import threading
import time
import types
from pathlib import Path

import pytest

from deployer.errors import AgentRefused
from deployer.contract import paths, protocol
from deployer.host import agent, journal, state, systemctl
from deployer.host.agent import Journal, switch_plan
from deployer.contract.protocol import ApplyRequest, FileWrite, RunInfo, StateRequest, StatusRequest
from deployer.remote import LocalAgent

DATA = Path(__file__).parent / "data" / "agent"
U = paths.UNIT_DIR


class FakeSystemd(systemctl.Systemd):
    """Records every command; `systemctl show` answers from tests/data/agent/, `is-active` says
    active, verify says `complaints`. Timers started are remembered in `active`."""

    def __init__(self, complaints=(), fail=()):
        self.calls: list[tuple[str, ...]] = []
        self.complaints = list(complaints)
        self.fail = set(fail)  # first words after systemctl that exit 1 (e.g. "disable")
        self.stopped: set[str] = set()
        self.stuck: set[str] = set()  # units that stay active whatever is asked
        self.shown = {}
        for name in ("show-timers.txt", "show-services.txt"):
            self.shown.update(systemctl.parse_show((DATA / name).read_text()))

    def run(self, args):
        args = tuple(args)
        self.calls.append(args)
        words = [a for a in args[1:] if not a.startswith("-")]
        if args[0] == "systemctl" and words and words[0] in self.fail:
            return 1, "", "Failed to %s: Connection timed out" % words[0]
        if args[:2] == ("systemctl", "show"):
            wanted = ["Id"] + args[3].split(",")[1:]
            blocks = [{k: v for k, v in self.shown[u].items() if k in wanted} for u in args[4:] if u in self.shown]
            return 0, "\n\n".join("\n".join(f"{k}={v}" for k, v in b.items()) for b in blocks) + "\n", ""
        if args[:2] == ("systemctl", "is-active"):
            states = ["inactive" if u in self.stopped and u not in self.stuck else "active" for u in args[2:]]
            return 0, "\n".join(states) + "\n", ""
        units = [a for a in args[1:] if a.startswith("deployer-")]
        if words and (words[0] == "stop" or (words[0] == "disable" and "--now" in args)):
            self.stopped.update(units)
        elif words and (words[0] == "start" or (words[0] == "enable" and "--now" in args)):
            self.stopped.difference_update(units)
        return 0, "", ""

    def properties(self, units, properties):  # never the D-Bus of the machine the tests run on
        return self.show(units, properties)

    def verify(self, unit_paths, meanwhile=None, report=lambda done, total: None):
        self.calls.append(("systemd-analyze", "verify", "--man=no") + tuple(unit_paths))
        if meanwhile is not None:
            meanwhile()
        return list(self.complaints)

    journal: list = []  # the entries every journalctl call answers, in the order given

    def journal_entries(self, args, stop=None, limit=None):
        self.calls.append(("journalctl",) + tuple(args))
        read = []
        for entry in self.journal:
            read.append(entry)
            if (stop is not None and stop(entry)) or (limit and len(read) >= limit):
                break
        self.read = len(read)
        return read

    def systemctl_calls(self):
        return [c[1:] for c in self.calls if c[0] == "systemctl" and c[1] != "is-active"]


def unit(name: str, body: str = "[Timer]\nOnCalendar=daily\n") -> bytes:
    return (paths.MARKER + "\n" + body).encode()


def write(path: str, content: bytes, start: bool = True) -> FileWrite:
    import base64

    return FileWrite(path=path, content=base64.b64encode(content).decode(), mode=0o644, start=start)


@pytest.fixture
def host(tmp_path):
    return LocalAgent("cron01", str(tmp_path), FakeSystemd())


def files(host: LocalAgent) -> dict:
    return host.call(StateRequest()).files


# -- the switch plan, as data --------------------------------------------------------------------

@pytest.mark.parametrize("current, staged, starts, removes, paused, stamps, expected", [
    pytest.param({}, {f"{U}/deployer-a.service": "S/a.service", f"{U}/deployer-a.timer": "S/a.timer"}, {},
                 [], set(), {}, Journal(
                     forget=("deployer-a.timer",), stopped_at=1.0, renames=(("S/a.service", f"{U}/deployer-a.service"),
                                              ("S/a.timer", f"{U}/deployer-a.timer")),
                     reload=True, enable=("deployer-a.timer",), start=("deployer-a.timer",)), id="add"),
    pytest.param({f"{U}/deployer-a.timer": "x"}, {f"{U}/deployer-a.timer": "S/a.timer"}, {}, [], set(), {},
                 Journal(restamp=("deployer-a.timer",), stopped_at=1.0,
                         renames=(("S/a.timer", f"{U}/deployer-a.timer"),), reload=True,
                         start=("deployer-a.timer",)), id="change-restamps-and-restarts"),
    pytest.param({f"{U}/deployer-a.timer": "x"}, {f"{U}/deployer-a.timer": "S/a.timer"}, {},
                 [], {"deployer-a.timer"}, {},
                 Journal(stopped_at=1.0, renames=(("S/a.timer", f"{U}/deployer-a.timer"),), reload=True),
                 id="change-of-a-paused-timer-keeps-it-stopped"),
    pytest.param({}, {}, {}, [f"{U}/deployer-a.service", f"{U}/deployer-a.timer"], {"deployer-a.timer"}, {},
                 Journal(disable=("deployer-a.timer",), forget=("deployer-a.timer",), stopped_at=1.0,
                         removes=(f"{U}/deployer-a.timer", f"{U}/deployer-a.service"),
                         unpause=("deployer-a.timer",), reload=True), id="remove-timer-first"),
    pytest.param({}, {f"{U}/deployer-b.timer": "S/b.timer", paths.TRIGGER_PATH: "S/t.pyz"},
                 {f"{U}/deployer-b.timer": False}, [], set(), {"deployer-b.timer": 5.0, "deployer-z.timer": 6.0},
                 Journal(stopped_at=1.0, stamps={"deployer-b.timer": 5.0},
                         renames=(("S/t.pyz", paths.TRIGGER_PATH), ("S/b.timer", f"{U}/deployer-b.timer")),
                         reload=True, enable=("deployer-b.timer",)), id="boot-only-library-first-move-stamps"),
])
def test_switch_plan(current, staged, starts, removes, paused, stamps, expected):
    assert switch_plan(current, staged, starts, removes, paused, stamps, 1.0) == expected


def test_journal_round_trips_through_json():
    journal = switch_plan({}, {f"{U}/deployer-a.timer": "S"}, {}, [f"{U}/deployer-b.timer"], set(),
                          {"deployer-a.timer": 2.0}, 1.0)
    assert state.journal_from_json(state.journal_to_json(journal)) == journal


# -- apply, replay, ownership, lock -----------------------------------------------------------------

def test_apply_installs_then_reports_the_files_and_a_second_state_matches(host):
    timer = f"{U}/deployer-a.timer"
    answer = host.call(ApplyRequest(write=(write(timer, unit("a")),), expect={}))
    assert answer.started == ("deployer-a.timer",) and answer.reloaded
    assert set(files(host)) == {timer}
    assert Path(host.layout.at(timer)).read_bytes() == unit("a")
    assert not os.path.exists(host.layout.journal)
    assert ("daemon-reload",) in host.systemd.systemctl_calls()


def test_a_new_timer_is_linked_before_the_reload(host, monkeypatch):
    """Linked after the reload, each of 10,000 timers was loaded on its own at its start and
    unloaded once stopped: 37 s to start them, 14 s per 500 to stop them (docs/performance.md)."""
    link = Path(host.layout.at(f"{U}/{paths.TIMERS_WANTS}/deployer-a.timer"))
    linked_at_reload = []
    systemctl = host.systemd.systemctl

    def watching(*args, **kwargs):
        if args[:1] == ("daemon-reload",):
            linked_at_reload.append(os.path.lexists(link))
        return systemctl(*args, **kwargs)

    monkeypatch.setattr(host.systemd, "systemctl", watching)
    host.call(ApplyRequest(write=(write(f"{U}/deployer-a.timer", unit("a")),), expect={}))
    assert linked_at_reload == [True]


def test_an_interrupted_switch_is_replayed_by_the_next_read(host, tmp_path):
    staged = Path(host.layout.unit_dir) / paths.STAGING / "deployer-a.timer"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(unit("a"))
    target = host.layout.at(f"{U}/deployer-a.timer")
    journal = Journal(stopped_at=1.0, renames=((str(staged), target),), reload=True,
                      enable=("deployer-a.timer",), start=("deployer-a.timer",))
    Path(host.layout.journal).parent.mkdir(parents=True)
    Path(host.layout.journal).write_text(state.journal_to_json(journal))

    assert f"{U}/deployer-a.timer" in files(host)
    assert not os.path.exists(host.layout.journal) and not staged.exists()
    assert host.systemd.systemctl_calls() == [("daemon-reload",), ("start", "--no-block", "deployer-a.timer")]
    link = Path(host.layout.at(f"{U}/{paths.TIMERS_WANTS}/deployer-a.timer"))
    assert os.readlink(link) == f"{U}/deployer-a.timer", "enabled as `systemctl enable` does it"


def test_a_replay_repeated_after_a_second_crash_ends_the_same(host):
    """Every step may be repeated: playing a journal twice leaves what playing it once leaves."""
    target = f"{U}/deployer-a.timer"
    host.call(ApplyRequest(write=(write(target, unit("a")),), expect={}))
    journal = Journal(stopped_at=1.0, removes=(host.layout.at(target),), disable=("deployer-a.timer",),
                      reload=True)
    for _ in range(2):
        Path(host.layout.journal).write_text(state.journal_to_json(journal))
        assert files(host) == {}


def test_another_hosts_jobs_are_refused(host):
    Path(host.layout.owner).parent.mkdir(parents=True)
    Path(host.layout.owner).write_text(json.dumps({"host": "cron02"}))
    with pytest.raises(AgentRefused) as refused:
        host.call(ApplyRequest(write=(write(f"{U}/deployer-a.timer", unit("a")),), expect={}))
    assert refused.value.code == protocol.WRONG_OWNER and "'cron02'" in str(refused.value)
    assert files(host) == {}


def test_a_host_that_changed_since_it_was_read_is_told_apart_from_a_held_lock(host, monkeypatch):
    with pytest.raises(AgentRefused) as changed:
        host.call(ApplyRequest(expect={f"{U}/deployer-x.timer": "0" * 64}))
    assert changed.value.code == protocol.HOST_CHANGED

    monkeypatch.setattr(agent, "LOCK_WAIT_SECONDS", 0.3)
    os.makedirs(host.layout.run_dir, exist_ok=True)
    with open(host.layout.lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(AgentRefused) as locked:
            host.call(ApplyRequest())
    assert locked.value.code == protocol.LOCKED and "another push holds /run/deployer/lock" in str(locked.value)


def test_each_file_has_the_mode_asked_for_whatever_the_umask_and_secrets_sit_in_a_closed_directory(
        host, monkeypatch):
    """The staging makes each directory once per push, not once per file (30,000 files at 10,000
    jobs), and sets each file's mode on its descriptor: root's umask 077 must not leave a unit or
    the trigger unreadable to systemd's DynamicUser= runs; a credentials directory someone
    opened is closed again by the next push that writes a secret into it."""
    secrets = [paths.job_credential(job, paths.EPOCH_CREDENTIAL) for job in ("a", "b")]
    public = [f"{U}/deployer-a.service", f"{U}/deployer-a.timer", paths.TRIGGER_PATH]
    credentials = os.path.dirname(host.layout.at(secrets[0]))
    os.makedirs(credentials)
    made = []
    real_makedirs = agent.os.makedirs
    monkeypatch.setattr(agent.os, "makedirs", lambda path, *a, **k: (made.append(path), real_makedirs(path, *a, **k)))
    for umask in (0o077, 0o022):
        writes = tuple(FileWrite(path=p, content=base64.b64encode(unit("a", "#%o\n" % umask)).decode(), mode=0o644,
                                 start=False) for p in public) + tuple(
            FileWrite(path=p, content=base64.b64encode(b"%o\n" % umask).decode(), mode=0o600) for p in secrets)
        os.chmod(credentials, 0o755)
        made.clear()
        old = os.umask(umask)
        try:
            host.call(ApplyRequest(write=writes, expect=files(host)))
        finally:
            os.umask(old)
        modes = {p: os.stat(host.layout.at(p)).st_mode & 0o777 for p in public + secrets}
        assert modes == dict({p: 0o644 for p in public}, **{p: 0o600 for p in secrets}), (oct(umask), modes)
        assert os.stat(credentials).st_mode & 0o777 == 0o700
        staging_dirs = {os.path.dirname(agent.staging_path(host.layout.at(p))) for p in public + secrets}
        assert sorted(p for p in made if p in staging_dirs) == sorted(staging_dirs)  # once each


def test_verify_complaints_refuse_the_push_and_leave_nothing_staged(tmp_path):
    host = LocalAgent("cron01", str(tmp_path), FakeSystemd(complaints=["deployer-a.timer:3: bad"]))
    with pytest.raises(AgentRefused) as refused:
        host.call(ApplyRequest(write=(write(f"{U}/deployer-a.timer", unit("a")),), expect={}))
    assert refused.value.code == protocol.VERIFY_FAILED and "deployer-a.timer:3: bad" in str(refused.value)
    assert os.listdir(Path(host.layout.unit_dir) / paths.STAGING) == []
    assert files(host) == {}


def test_a_request_may_not_name_a_file_outside_the_managed_directories(host):
    with pytest.raises(AgentRefused) as refused:
        host.call(ApplyRequest(write=(write("/etc/passwd", b"x"),), expect={}))
    assert refused.value.code == protocol.BAD_REQUEST


# -- status from recorded facts -------------------------------------------------------------------

def test_status_reads_recorded_systemctl_show(host):
    for job in ("good", "bad"):
        host.call(ApplyRequest(write=(write(f"{U}/deployer-{job}.timer", unit(job)),), expect=files(host)))
    jobs = {j.job: j for j in host.call(StatusRequest()).jobs}
    assert jobs["bad"].exit_status == 1 and jobs["bad"].result == "exit-code"
    assert jobs["bad"].last == "2026-11-24T04:00:00+00:00"
    assert jobs["good"].calendar == ("*-*-* 03:00:00 UTC",) and jobs["good"].next == "2026-11-25T03:00:00+00:00"
    assert jobs["good"].last == "" and jobs["good"].exit_status == 0


# -- issue 16 item 1: root-owned state, no links followed, corrupt state reported --------------------

def test_a_link_planted_at_the_lock_is_not_followed_and_nothing_is_truncated(host, tmp_path):
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    os.makedirs(host.layout.run_dir)
    os.symlink(victim, host.layout.lock)
    with pytest.raises(AgentRefused) as refused:
        host.call(ApplyRequest())
    assert refused.value.code == protocol.CORRUPT_STATE and "/run/deployer/lock" in str(refused.value)
    assert victim.read_text() == "precious\n"


def test_the_lock_lives_in_a_private_directory(host):
    os.makedirs(host.layout.run_dir, mode=0o777)
    os.chmod(host.layout.run_dir, 0o777)
    host.call(ApplyRequest())
    assert os.stat(host.layout.run_dir).st_mode & 0o777 == 0o700
    assert os.stat(host.layout.lock).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content", [pytest.param("", id="empty"), pytest.param("{\"disable\": [", id="torn"),
                                     pytest.param("{\"disable\": 3}", id="wrong-type")])
def test_a_corrupt_journal_is_reported_plainly_and_recoverable(host, content):
    os.makedirs(host.layout.state_dir)
    Path(host.layout.journal).write_text(content)
    with pytest.raises(AgentRefused) as refused:
        host.call(StatusRequest())
    message = str(refused.value)
    assert refused.value.code == protocol.CORRUPT_STATE
    assert "/var/lib/deployer/pending-switch.json (the switch journal) is corrupt" in message
    assert "mv /var/lib/deployer/pending-switch.json" in message
    os.rename(host.layout.journal, host.layout.journal + ".broken")  # what the message says to do
    assert host.call(StatusRequest()).jobs == ()


def test_issue24_2_a_status_says_which_machine_answered_and_which_host_it_serves(host):
    """One machine reached under two [host:NAME]s answers the same `machine` to both; a digest of
    /etc/machine-id and the boot id (a clone that kept the image's machine-id differs by its boot)."""
    assert (host.call(StatusRequest()).machine, host.call(StatusRequest()).owner) == ("", None)  # ids unreadable
    for path, text in ((paths.MACHINE_ID, "3d1219c7c4c5404aaa1f6d2a48adfda4\n"),
                       (paths.BOOT_ID, "6c0f1d0e-2b7a-4b1e-9d55-0d9f0a2b1c3e\n")):
        Path(host.layout.at(path)).parent.mkdir(parents=True, exist_ok=True)
        Path(host.layout.at(path)).write_text(text)
    Path(host.layout.owner).parent.mkdir(parents=True)
    Path(host.layout.owner).write_text(json.dumps({"host": "cron01"}))
    answer = host.call(StatusRequest())
    assert len(answer.machine) == 32 and "3d1219c7" not in answer.machine and answer.owner == "cron01"
    assert host.call(StatusRequest()).machine == answer.machine
    Path(host.layout.boot_id).write_text("0e2c7a8e-0a4b-4d7e-8c1a-54d8f1f0b6a2\n")  # another boot, or a clone
    assert host.call(StatusRequest()).machine != answer.machine
    Path(host.layout.owner).write_text("")  # corrupt: a status still answers (a push names the file)
    assert host.call(StatusRequest()).owner is None


def test_a_corrupt_owner_file_is_reported_and_recoverable(host):
    os.makedirs(host.layout.state_dir)
    Path(host.layout.owner).write_text("")
    with pytest.raises(AgentRefused) as refused:
        host.call(StateRequest())
    assert refused.value.code == protocol.CORRUPT_STATE and "rm /var/lib/deployer/owner.json" in str(refused.value)
    os.unlink(host.layout.owner)
    assert host.call(StateRequest()).owner is None


def test_state_files_are_written_without_following_a_planted_link(host, tmp_path):
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    os.makedirs(host.layout.state_dir)
    os.symlink(victim, host.layout.owner + ".tmp")
    host.call(ApplyRequest(write=(write(f"{U}/deployer-a.timer", unit("a")),), expect={}))
    assert victim.read_text() == "precious\n"
    assert json.loads(Path(host.layout.owner).read_text()) == {"host": "cron01"}


# -- issue 16 item 2: a replay never creates a run ------------------------------------------------

def test_a_replay_keeps_the_stamp_of_a_timer_that_ran_after_the_interrupted_switch(host):
    timer = f"{U}/deployer-a.timer"
    host.call(ApplyRequest(write=(write(timer, unit("a")),), expect={}))
    journal = Journal(restamp=("deployer-a.timer", "deployer-b.timer"), stopped_at=1000.0,
                      stamps={"deployer-c.timer": 1000.0}, start=("deployer-a.timer",))
    stamps = Path(host.layout.timer_stamps)
    stamps.mkdir(parents=True)
    for name, ran_at in (("a", 1030.0), ("c", 1040.0)):  # ran after the switch started them
        (stamps / f"stamp-deployer-{name}.timer").touch()
        os.utime(stamps / f"stamp-deployer-{name}.timer", (ran_at, ran_at))
    Path(host.layout.journal).write_text(state.journal_to_json(journal))
    host.systemd.calls.clear()

    files(host)  # replays the journal

    assert os.stat(stamps / "stamp-deployer-a.timer").st_mtime == 1030.0
    assert os.stat(stamps / "stamp-deployer-c.timer").st_mtime == 1040.0
    assert os.stat(stamps / "stamp-deployer-b.timer").st_mtime == 1000.0  # never ran: restamped
    assert ("stop", "deployer-b.timer") in host.systemd.systemctl_calls()
    assert not any("deployer-a.timer" in c and c[0] in ("stop", "clean") for c in host.systemd.systemctl_calls())


def test_a_job_added_again_forgets_the_stamp_its_old_timer_left(host):
    """A removed job's Persistent= stamp stayed: added again, systemd ran at once a slot that
    passed while the job did not exist (found as a failed `keep` on a shared test host)."""
    timer = f"{U}/deployer-a.timer"
    stamp = Path(host.layout.timer_stamps) / "stamp-deployer-a.timer"
    stamp.parent.mkdir(parents=True)
    stamp.touch()
    os.utime(stamp, (1000.0, 1000.0))  # the last run of the job before it was removed

    host.call(ApplyRequest(write=(write(timer, unit("a")),), expect={}))

    assert not stamp.exists()
    assert ("start", "--no-block", "deployer-a.timer") in host.systemd.systemctl_calls()


def test_a_removed_job_leaves_no_stamp(host):
    timer = f"{U}/deployer-a.timer"
    host.call(ApplyRequest(write=(write(timer, unit("a")),), expect={}))
    stamp = Path(host.layout.timer_stamps) / "stamp-deployer-a.timer"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()

    host.call(ApplyRequest(remove=(timer,), expect=files(host)))

    assert not stamp.exists()


class Listing(FakeSystemd):
    """`systemctl list-jobs` lists `queued` start jobs."""

    queued: tuple = ()

    def run(self, args):
        if tuple(args[:2]) == ("systemctl", "list-jobs"):
            self.calls.append(tuple(args))
            return 0, "".join(f"{n} {u} start waiting\n" for n, u in enumerate(self.queued, 7)), ""
        return super().run(args)


@pytest.mark.parametrize("how", ["running", "queued"])
def test_a_removed_job_keeps_its_stamp_while_its_last_run_may_still_read_it(tmp_path, how):
    """The run names its slot from the stamp (host/slot.py). Removed under a run that had not
    read it yet (the move's push to the old host), it named the timer's first slot again."""
    host = LocalAgent("cron01", str(tmp_path), Listing())
    timers = [f"{U}/deployer-{name}.timer" for name in ("a", "b")]
    host.call(ApplyRequest(write=tuple(write(t, unit(t)) for t in timers), expect={}))
    stamps = Path(host.layout.timer_stamps)
    stamps.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        (stamps / f"stamp-deployer-{name}.timer").touch()
    if how == "running":
        host.systemd.shown["deployer-a.service"] = {"Id": "deployer-a.service", "ActiveState": "activating"}
        host.systemd.shown["deployer-b.service"] = {"Id": "deployer-b.service", "ActiveState": "inactive"}
    else:
        host.systemd.queued = ("deployer-a.service", "deployer-other.service")

    host.call(ApplyRequest(remove=tuple(timers), expect=files(host)))

    assert (stamps / "stamp-deployer-a.timer").exists()
    assert not (stamps / "stamp-deployer-b.timer").exists()
    assert files(host) == {}

    # added again later, its first run does not start from that old stamp
    host.systemd.shown.pop("deployer-a.service", None)
    host.systemd.queued = ()
    os.utime(stamps / "stamp-deployer-a.timer", (1000.0, 1000.0))
    host.call(ApplyRequest(write=(write(timers[0], unit("a")),), expect={}))
    assert not (stamps / "stamp-deployer-a.timer").exists()


def test_a_removed_job_leaves_no_skipped_slot_state_and_one_added_again_starts_without_it(host):
    """Its state in /run/deployer-through (a link into /run/private, where systemd keeps a
    DynamicUser= unit's preserved RuntimeDirectory=) outlived it: added again, its first run
    recorded as skipped a slot of the job as it was before (found on a shared test host)."""
    timer = f"{U}/deployer-a.timer"

    def plant():
        made = [Path(host.layout.at(d)) for d in paths.through_dirs("deployer-a.timer")]
        for directory in made:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / paths.THROUGH_FILE).write_text('{"slot": 1000}')
        return made

    left = plant()  # by the job before it was removed, while it did not exist on this host
    host.call(ApplyRequest(write=(write(timer, unit("a")),), expect={}))
    assert not any(d.exists() for d in left)

    left = plant()
    host.call(ApplyRequest(remove=(timer,), expect=files(host)))
    assert not any(d.exists() for d in left)
    assert Path(host.layout.at(paths.THROUGH_DIR)).exists(), "other jobs' state stays"


def test_a_replay_keeps_the_stamp_a_new_timer_wrote_after_the_switch_began(host):
    stamps = Path(host.layout.timer_stamps)
    stamps.mkdir(parents=True)
    for name, written in (("a", 1030.0), ("b", 900.0)):  # a: started by the switch, b: left by an old timer
        (stamps / f"stamp-deployer-{name}.timer").touch()
        os.utime(stamps / f"stamp-deployer-{name}.timer", (written, written))
    journal = Journal(forget=("deployer-a.timer", "deployer-b.timer"), stopped_at=1000.0)
    Path(host.layout.journal).parent.mkdir(parents=True, exist_ok=True)
    Path(host.layout.journal).write_text(state.journal_to_json(journal))

    files(host)  # replays the journal

    assert os.stat(stamps / "stamp-deployer-a.timer").st_mtime == 1030.0
    assert not (stamps / "stamp-deployer-b.timer").exists()


# -- issue 16 item 10: a deployer-* file we did not write is never overwritten or pruned ---------------

@pytest.mark.parametrize("existing", [pytest.param(b"[Timer]\nOnCalendar=daily\n", id="unmarked"),
                                      pytest.param(None, id="link")])
def test_an_unmarked_unit_is_not_overwritten(host, tmp_path, existing):
    target = Path(host.layout.at(f"{U}/deployer-ok2.timer"))
    target.parent.mkdir(parents=True)
    if existing is None:
        (tmp_path / "elsewhere").write_text("theirs")
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.write_bytes(existing)
    with pytest.raises(AgentRefused) as refused:
        host.call(ApplyRequest(write=(write(f"{U}/deployer-ok2.timer", unit("ok2")),), expect=files(host)))
    assert refused.value.code == protocol.UNMANAGED_FILE
    assert f"{U}/deployer-ok2.timer exists and was not written by deployer" in str(refused.value)
    if existing is None:
        assert (tmp_path / "elsewhere").read_text() == "theirs"
    else:
        assert target.read_bytes() == existing


def test_an_unmarked_unit_is_not_pruned(host):
    target = Path(host.layout.at(f"{U}/deployer-ok2.timer"))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"[Timer]\n")
    with pytest.raises(AgentRefused) as refused:
        host.call(ApplyRequest(remove=(f"{U}/deployer-ok2.timer",), expect=files(host)))
    assert refused.value.code == protocol.UNMANAGED_FILE and "deployer-ok2.timer" in str(refused.value)
    assert target.exists()


# -- issue 16 item 19 ------------------------------------------------------------------------------

def test_owner_file_is_private_and_names_only_the_host(host):
    host.call(ApplyRequest(write=(write(f"{U}/deployer-a.timer", unit("a")),), expect={}))
    assert os.stat(host.layout.owner).st_mode & 0o777 == 0o600
    assert json.loads(Path(host.layout.owner).read_text()) == {"host": "cron01"}


def test_systemd_analyze_never_reads_a_value_as_an_option():
    argv = systemctl.verify_argv(["-h", "/x/deployer-a.timer"])
    assert argv.index("--") < argv.index("-h")


class _VerifyProcesses:
    """subprocess for Systemd.verify: `systemd-analyze --version` says `version`, the namespace
    probe answers `probe`, every verify is clean."""

    PIPE, STDOUT = -1, -2

    def __init__(self, probe: int, version: str = "systemd 249 (249.11-0ubuntu3)\n+PAM +AUDIT\n"):
        self.probe, self.version, self.commands = probe, version, []

    def run(self, args, **kwargs):
        self.commands.append(list(args))
        if list(args) == ["systemd-analyze", "--version"]:
            return subprocess.CompletedProcess(list(args), 0, self.version, "")
        return subprocess.CompletedProcess(list(args), self.probe, "", "")

    def Popen(self, args, **kwargs):  # noqa: N802 (subprocess's name)
        self.commands.append(list(args))
        return types.SimpleNamespace(communicate=lambda: ("", ""), returncode=0)


@pytest.mark.parametrize("probe", [0, 1])
def test_older_verify_hides_timers_wants_where_a_mount_namespace_may_be_made(monkeypatch, probe):
    """Before systemd 250, verify loads every timer timers.target.wants names (5.5 s a unit at
    10,000 jobs), and cannot be told to leave the units it names alone."""
    processes = _VerifyProcesses(probe)
    monkeypatch.setattr(systemctl, "subprocess", processes)
    units = ["/s/deployer-j%03d.service" % i for i in range(1200)]
    assert systemctl.Systemd().verify(units) == []
    assert processes.commands[:2] == [["systemd-analyze", "--version"], systemctl.without_timers_wants_argv(["true"])]
    chunks = systemctl.verify_chunks(units, os.cpu_count() or 1, systemctl.VERIFY_CHUNK_WITH_DEPENDENCIES)
    expected = [["systemd-analyze", "verify", "--man=no", "--"] + c for c in chunks]
    assert max(len(c) for c in chunks) <= 500
    if probe == 0:
        expected = [systemctl.without_timers_wants_argv(argv) for argv in expected]
    assert processes.commands[2:] == expected


@pytest.mark.parametrize("version", ["systemd 250 (250.4-1)\n", "systemd 252 (252.39-1~deb12u2)\n+PAM\n",
                                     "systemd 257 (257.9-1~deb13u1)\n"])
def test_verify_checks_each_unit_on_its_own_where_systemd_can(monkeypatch, version):
    """From systemd 250 on: --recursive-errors=no, in calls of up to 2,500 units, no namespace."""
    processes = _VerifyProcesses(0, version)
    monkeypatch.setattr(systemctl, "subprocess", processes)
    monkeypatch.setattr(systemctl.os, "cpu_count", lambda: 2)
    units = ["/s/deployer-j%05d.service" % i for i in range(20000)]
    assert systemctl.Systemd().verify(units) == []
    assert processes.commands[0] == ["systemd-analyze", "--version"]
    calls = processes.commands[1:]
    assert [c[:5] for c in calls] == [["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", "--"]] * 8
    assert [p for c in calls for p in c[5:]] == units


class _AbortingOnTheFlag(_VerifyProcesses):
    """A systemd 251 whose verify aborts on --recursive-errors=no at the first slice (systemd#29350,
    fixed in 255 and in some distributions' 250-254); without the flag it says `said`."""

    def __init__(self, said):
        super().__init__(1, "systemd 251 (251.8-586.fc37)\n")
        self.said = said

    def Popen(self, args, **kwargs):  # noqa: N802 (subprocess's name)
        self.commands.append(list(args))
        if "--recursive-errors=no" in args:
            return types.SimpleNamespace(communicate=lambda: ("Assertion 'u' failed at src/core/unit.c:123, function "
                                                              "unit_has_name(). Aborting.\n", ""), returncode=-6,
                                         kill=lambda: None, wait=lambda: None)
        return types.SimpleNamespace(communicate=lambda: (self.said, ""), returncode=1 if self.said else 0)


@pytest.mark.parametrize("said, complaints", [("", []), ("/s/deployer-j00001.service:3: Unknown key\n",
                                                         ["/s/deployer-j00001.service:3: Unknown key"])])
def test_a_verify_that_aborts_on_checking_each_unit_on_its_own_checks_them_the_older_way(monkeypatch, said, complaints):
    """Not a refusal naming an assertion: the push is checked as on an older systemd."""
    processes = _AbortingOnTheFlag(said)
    monkeypatch.setattr(systemctl, "subprocess", processes)
    monkeypatch.setattr(systemctl.os, "cpu_count", lambda: 2)
    units = ["/s/deployer-j%05d.service" % i for i in range(6000)]  # with the flag: calls of 2,500, 2,500, 1,000
    counted = []
    assert systemctl.Systemd().verify(units, report=lambda *count: counted.append(count)) == complaints * 12
    own = [c for c in processes.commands if "--recursive-errors=no" in c]
    older = [c for c in processes.commands if c[:2] == ["systemd-analyze", "verify"] and c not in own]
    assert len(own) == 2, "a call started after one aborted"  # the two running when it did
    assert [p for c in older for p in c[4:]] == units and max(len(c) - 4 for c in older) <= 500
    assert processes.commands[0] == ["systemd-analyze", "--version"]
    assert counted[0] == (0, 6000) and counted[-1] == (6000, 6000)


@pytest.mark.parametrize("text, version", [
    ("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT", 252), ("systemd 250\n", 250), ("", 0),
    ("systemd\n", 0), ("systemd-analyze: unknown option\n", 0), ("systemd v252\n", 0)])
def test_systemd_version_is_read_from_the_first_words_or_is_0(text, version):
    assert systemctl.systemd_version(text) == version


@pytest.mark.parametrize("units, workers, sizes", [
    (20, 2, [20]), (400, 2, [200, 200]), (1000, 2, [500, 500]), (1000, 8, [150] * 6 + [100]),
    (20000, 2, [2500] * 8), (301, 2, [151, 150]), (3000, 2, [1500, 1500]),
])
def test_verify_splits_the_units_evenly_over_the_cpus_in_calls_of_150_to_2500(units, workers, sizes):
    """A call costs 0.14 s before its first unit: as few calls as the CPUs allow, each small
    enough that the last one does not run alone for long."""
    paths_ = ["/s/deployer-j%05d.service" % i for i in range(units)]
    found = systemctl.verify_chunks(paths_, workers)
    assert [len(c) for c in found] == sizes and [p for c in found for p in c] == paths_


@pytest.mark.parametrize("units, workers, sizes", [
    (1000, 2, [500, 500]), (20000, 2, [500] * 40), (301, 2, [151, 150])])
def test_older_verify_is_given_at_most_500_units_a_call(units, workers, sizes):
    """Older verify grows more than linearly beyond 1,000 units (its start jobs)."""
    paths_ = ["/s/deployer-j%05d.service" % i for i in range(units)]
    found = systemctl.verify_chunks(paths_, workers, systemctl.VERIFY_CHUNK_WITH_DEPENDENCIES)
    assert [len(c) for c in found] == sizes and [p for c in found for p in c] == paths_


class _HeldChecks:
    """subprocess for Systemd.verify on systemd 252: each call says `chunk N` and ends once
    `release` is set."""

    PIPE, STDOUT = -1, -2

    def __init__(self):
        self.started, self.killed, self.release = [], [], threading.Event()

    def run(self, args, **kwargs):
        return subprocess.CompletedProcess(list(args), 0, "systemd 252 (252.39-1~deb12u2)\n", "")

    def Popen(self, args, **kwargs):  # noqa: N802 (subprocess's name)
        index = len(self.started)
        self.started.append(index)
        call = types.SimpleNamespace(returncode=None)

        def communicate():
            assert self.release.wait(5), "a verify call was waited for before the work beside it let it end"
            call.returncode = 0
            return f"chunk {index}\n", ""

        call.communicate = communicate
        call.kill = lambda: self.killed.append(index)
        call.wait = lambda: None
        return call


def test_verify_runs_while_the_other_files_are_written_and_answers_when_both_are_done(monkeypatch):
    """A push writes its units, then checks them while it writes the rest (its 10,000 epoch
    credentials at 10,000 jobs) and flushes them: the first calls run before that work ends, and
    verify answers, in the units' order, only once it has."""
    checks, done = _HeldChecks(), []
    monkeypatch.setattr(systemctl, "subprocess", checks)
    monkeypatch.setattr(systemctl.os, "cpu_count", lambda: 2)

    def meanwhile():
        deadline = time.monotonic() + 5
        while len(checks.started) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        done.append(list(checks.started))  # the calls running while this works
        checks.release.set()
        time.sleep(0.2)
        agent.progress("writing 1 files")  # where the caller's progress goes (remote.LocalAgent's)
        done.append("written")

    units = ["/s/deployer-j%05d.service" % i for i in range(6000)]  # calls of 2,500, 2,500, 1,000
    shown, counted = [], []
    token = agent.PROGRESS_TO.set(shown.append)
    try:
        assert systemctl.Systemd().verify(units, meanwhile=meanwhile, report=lambda *count: counted.append(count)) \
            == ["chunk 0", "chunk 1", "chunk 2"]
    finally:
        agent.PROGRESS_TO.reset(token)
    assert done == [[0, 1], "written"] and checks.started == [0, 1, 2] and checks.killed == []
    assert shown == ["writing 1 files"]
    assert counted == [(0, 6000), (2500, 6000), (5000, 6000), (6000, 6000)]


def test_a_write_that_fails_beside_verify_stops_its_calls_and_is_what_the_push_says(monkeypatch):
    checks = _HeldChecks()
    monkeypatch.setattr(systemctl, "subprocess", checks)
    monkeypatch.setattr(systemctl.os, "cpu_count", lambda: 2)

    def meanwhile():
        while len(checks.started) < 2:
            time.sleep(0.01)
        threading.Timer(0.5, checks.release.set).start()  # the running calls end after the failure
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as failed:
        systemctl.Systemd().verify(["/s/deployer-j%05d.service" % i for i in range(6000)], meanwhile=meanwhile)
    assert failed.value.errno == errno.ENOSPC
    assert checks.started == [0, 1] and checks.killed == [1], "the calls went on after the work beside them failed"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("systemd-analyze"), reason="needs root and systemd")
def test_verify_with_timers_wants_hidden_says_what_plain_verify_says(tmp_path, monkeypatch):
    """On this machine's own systemd: the directory is empty for verify alone, and verify's
    verdict is the one it gives without the namespace."""
    wants = tmp_path / "timers.target.wants"
    wants.mkdir()
    (wants / "deployer-x.timer").symlink_to("/etc/systemd/system/deployer-x.timer")
    monkeypatch.setattr(systemctl, "TIMERS_WANTS_DIR", str(wants))
    inside = subprocess.run(systemctl.without_timers_wants_argv(["ls", "-A", str(wants)]), capture_output=True,
                            text=True)
    assert (inside.returncode, inside.stdout, inside.stderr) == (0, "", "")
    assert os.listdir(wants) == ["deployer-x.timer"]  # for everyone else, as it was

    good, bad = tmp_path / "deployer-good.service", tmp_path / "deployer-bad.service"
    good.write_text("[Service]\nExecStart=/bin/true\n")
    bad.write_text("[Service]\nExecStart=relative/path\n")
    for unit in (good, bad):
        plain = subprocess.run(systemctl.verify_argv([str(unit)], own_errors=False), capture_output=True, text=True)
        hidden = subprocess.run(systemctl.without_timers_wants_argv(systemctl.verify_argv([str(unit)], own_errors=False)),
                                capture_output=True, text=True)
        assert (hidden.returncode, hidden.stdout + hidden.stderr) == (plain.returncode, plain.stdout + plain.stderr)
    monkeypatch.setattr(systemctl, "OWN_ERRORS_SINCE", 10 ** 6)  # the older path, whatever this systemd is
    assert systemctl.Systemd().verify([str(good)]) == []
    assert any("relative/path" in line for line in systemctl.Systemd().verify([str(bad)]))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("systemd-analyze")
                    or systemctl.systemd_version(subprocess.run(["systemd-analyze", "--version"], capture_output=True,
                                                                text=True).stdout) < systemctl.OWN_ERRORS_SINCE,
                    reason="needs root and systemd 250")
def test_verify_reports_each_units_own_mistakes_and_its_drop_ins_not_the_units_it_names(tmp_path):
    """On this machine's own systemd: a push refuses what it writes, as this host would load it
    (drop-ins included), not an operator's unit one of its units names."""
    staging = tmp_path / "staging"
    staging.mkdir()
    operators = tmp_path / "operators.service"
    operators.write_text("[Service]\nExecStart=/bin/true\nNoSuchKey=1\n")
    names = staging / "deployer-names.service"
    names.write_text("[Unit]\nAfter=%s\nOnFailure=%s\n[Service]\nExecStart=/bin/true\nSlice=deployer-jobs.slice\n"
                     % (operators.name, operators.name))
    (staging / "deployer-jobs.slice").write_text("[Slice]\nMemoryMax=1G\n")
    wrong = staging / "deployer-wrong.service"
    wrong.write_text("[Service]\nExecStart=relative/path\n")
    own = staging / "deployer-own.timer"
    own.write_text("[Timer]\nOnCalendar=*-*-* 25:00:00\n")
    drop_in = staging / "deployer-dropped.service.d"
    drop_in.mkdir()
    (staging / "deployer-dropped.service").write_text("[Service]\nExecStart=/bin/true\n")
    (drop_in / "operator.conf").write_text("[Service]\nAnotherNoSuchKey=1\n")
    shutil.copy(operators, staging / operators.name)  # where verify looks for the units named

    said = systemctl.Systemd().verify([str(staging / n) for n in ("deployer-dropped.service", "deployer-names.service",
                                                                   "deployer-own.timer", "deployer-wrong.service")])
    assert any("relative/path" in line for line in said)
    assert any("25:00:00" in line for line in said)
    assert any("AnotherNoSuchKey" in line and "operator.conf" in line for line in said)
    assert not any("NoSuchKey" in line and "operators.service" in line for line in said), said
    assert systemctl.Systemd().verify([str(staging / n) for n in ("deployer-jobs.slice", "deployer-names.service")]) == []
    # a job's slice is loaded with it: a mistake there is one of the push's own
    (staging / "deployer-jobs.slice").write_text("[Slice]\nCPUQuota=bogus\n")
    assert any("CPUQuota" in line or "CPU quota" in line for line in
               systemctl.Systemd().verify([str(staging / "deployer-names.service")]))


# -- issue 16 item 11: removing many jobs is batched and checked -------------------------------------

def many(host, count):
    writes = tuple(write(f"{U}/deployer-j{i:05d}.{kind}", unit(f"j{i}")) for i in range(count)
                   for kind in ("service", "timer"))
    host.call(ApplyRequest(write=writes, expect={}))
    return [w.path for w in writes]


def test_removing_many_timers_is_done_in_chunks_and_checked(host):
    removed = many(host, 1200)
    host.systemd.calls.clear()
    host.call(ApplyRequest(remove=tuple(removed), expect=files(host)))
    stops = [c for c in host.systemd.systemctl_calls() if c[0] == "stop"]
    assert [len(c) - 1 for c in stops] == [500, 500, 200]
    assert files(host) == {}


def test_removed_timers_are_disabled_by_their_link_not_by_systemctl_disable(host):
    """`systemctl disable` searches every unit directory for each unit's links: 25-45 s per 500
    units with 10,000 links (issue 25). The link `enable` made is removed instead."""
    removed = many(host, 3)
    wants = Path(host.layout.at(f"{U}/{paths.TIMERS_WANTS}"))
    (wants / "other.timer").symlink_to(f"{U}/other.timer")
    assert len(list(wants.iterdir())) == 4, "the push enabled its three timers by their links"
    host.systemd.calls.clear()
    host.call(ApplyRequest(remove=tuple(removed[:4]), expect=files(host)))  # j00000 and j00001
    assert sorted(p.name for p in wants.iterdir()) == ["deployer-j00002.timer", "other.timer"]
    assert not [c for c in host.systemd.systemctl_calls() if "disable" in c]


@pytest.mark.parametrize("failure", [pytest.param("stop", id="stop-fails"),
                                     pytest.param("stuck", id="still-active")])
def test_files_of_timers_that_did_not_stop_are_kept(host, failure):
    removed = many(host, 3)
    if failure == "stuck":
        host.systemd.stuck.add("deployer-j00001.timer")
    else:
        host.systemd.fail.add("stop")
    state = files(host)
    with pytest.raises(AgentRefused) as refused:
        host.call(ApplyRequest(remove=tuple(removed), expect=state))
    assert refused.value.code == protocol.SYSTEMD
    assert all(os.path.exists(host.layout.at(p)) for p in removed)
    assert os.path.exists(host.layout.journal), "the switch stays journalled, to be finished later"


def test_status_lists_jobs_only_not_the_channels_boot_timer(host):
    boot_timer = f"{U}/deployer-boot-alert@ops.timer"
    host.call(ApplyRequest(write=(write(f"{U}/deployer-good.timer", unit("good")), write(boot_timer, unit("ops"))),
                           expect=files(host)))
    assert boot_timer in files(host)
    assert [j.job for j in host.call(StatusRequest()).jobs] == ["good"]


def test_status_asks_systemctl_show_in_chunks(host):
    many(host, 1200)
    host.systemd.calls.clear()
    assert len(host.call(StatusRequest()).jobs) == 1200
    shows = [c for c in host.systemd.systemctl_calls() if c[0] == "show"]
    assert sorted(len(c) - 3 for c in shows) == [200, 200, 500, 500, 500, 500]


# -- issue 16 item 9: roll forward at boot, before timers start ----------------------------------------

def test_a_push_enables_the_boot_recovery_unit_once():
    recover = f"{U}/{agent.RECOVER_UNIT}"
    assert switch_plan({}, {recover: "S/r"}, {}, [], set(), {}, 1.0).enable == (agent.RECOVER_UNIT,)
    assert switch_plan({recover: "x"}, {recover: "S/r"}, {}, [], set(), {}, 1.0).enable == ()


def test_boot_recovery_finishes_the_switch_and_queues_timers_without_waiting(tmp_path, capsys):
    layout = paths.Layout(str(tmp_path))
    systemd = FakeSystemd()
    staged = Path(layout.unit_dir) / paths.STAGING / "deployer-a.timer"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(unit("a"))
    journal = Journal(stopped_at=1.0, renames=((str(staged), layout.at(f"{U}/deployer-a.timer")),), reload=True,
                      enable=("deployer-a.timer",), start=("deployer-a.timer",))
    os.makedirs(layout.state_dir)
    Path(layout.journal).write_text(state.journal_to_json(journal))

    assert agent.boot(layout, systemd) == 0

    assert not os.path.exists(layout.journal) and os.path.exists(layout.at(f"{U}/deployer-a.timer"))
    # Timers wait for sysinit.target, which waits for this unit: waiting for them would deadlock.
    assert systemd.systemctl_calls()[-1] == ("start", "--no-block", "deployer-a.timer")
    assert not any(c[:2] == ("systemctl", "is-active") for c in systemd.calls)
    assert "finished an interrupted switch" in capsys.readouterr().out


def test_the_recovery_unit_runs_the_agent_from_the_zipapp_before_timers():
    from deployer.render import recover_unit

    text = recover_unit().content.decode()
    assert text.startswith(paths.MARKER + "\n")
    for line in ("DefaultDependencies=no", "Before=sysinit.target shutdown.target",
                 f"ConditionPathExists={paths.JOURNAL}", f"Environment=PYTHONPATH={paths.TRIGGER_PATH}",
                 "ExecStart=/usr/bin/python3 -m deployer.host.agent --boot", "WantedBy=sysinit.target"):
        assert line in text.splitlines()


# -- issue 16 item 18: a full disk ---------------------------------------------------------------------

def test_a_full_disk_is_one_clear_refusal_and_leaves_no_staged_file(host, monkeypatch):
    import errno

    real_fdopen, opened = os.fdopen, []

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *args, **kwargs):
        opened.append(fd)
        handle = real_fdopen(fd, *args, **kwargs)
        return Full(handle) if len(opened) == 2 else handle

    monkeypatch.setattr(agent.os, "fdopen", fdopen)
    writes = tuple(write(f"{U}/deployer-{n}.timer", unit(n)) for n in ("a", "b", "c"))
    with pytest.raises(AgentRefused) as refused:
        host.call(ApplyRequest(write=writes, expect={}))
    monkeypatch.undo()
    assert refused.value.code == protocol.NO_SPACE and "nothing was changed" in str(refused.value)
    assert os.listdir(Path(host.layout.unit_dir) / paths.STAGING) == []
    assert files(host) == {}


class ElapsesWhileStopping(FakeSystemd):
    """The timer elapses after the switch noted its stop time, just before the stop takes
    effect (systemd touches its stamp); `clean --what=state` removes the stamp, as systemd does."""

    def __init__(self, stamps: str):
        super().__init__()
        self.stamps, self.fired = stamps, None

    def run(self, args):
        words = [a for a in args[1:] if not a.startswith("-")]
        if args[0] == "systemctl" and words[:1] in (["stop"], ["clean"]):
            for timer in (w for w in words[1:] if w.endswith(".timer")):
                path = os.path.join(self.stamps, "stamp-" + timer)
                if words[0] == "stop":
                    os.makedirs(self.stamps, exist_ok=True)
                    open(path, "a").close()
                    self.fired = time.time()
                    os.utime(path, (self.fired, self.fired))
                elif os.path.exists(path):
                    os.unlink(path)
        return super().run(args)


def test_a_timer_that_fires_while_the_push_stops_it_keeps_that_run(tmp_path):
    """Found by test_pushes_during_firing_windows: the stamp was set back to the moment the
    switch was planned, before a run that happened just after it, so the restarted timer ran
    that slot a second time."""
    host = LocalAgent("cron01", str(tmp_path), FakeSystemd())
    timer = f"{U}/deployer-a.timer"
    host.call(ApplyRequest(write=(write(timer, unit("a")),), expect=files(host)))
    host.systemd = ElapsesWhileStopping(host.layout.timer_stamps)
    host.call(ApplyRequest(write=(write(timer, unit("a", "[Timer]\nOnCalendar=*:*:0/2\n")),), expect=files(host)))
    assert host.systemd.fired is not None, "the change must restamp the timer, or this test proves nothing"
    stamp = os.stat(os.path.join(host.layout.timer_stamps, "stamp-deployer-a.timer")).st_mtime
    assert stamp >= host.systemd.fired - 0.001


# -- issue 13 item 1: the lease; a host back after it ran out holds its jobs ---------------------

def lease_host(tmp_path, renewed: float, seconds: float = 300.0, timers=("a", "b")):
    layout = paths.Layout(str(tmp_path))
    os.makedirs(layout.unit_dir)
    for name in timers:
        Path(layout.unit_dir, paths.job_unit(name, "timer")).write_bytes(unit(name))
    agent.renew_lease(seconds, layout, now=renewed)
    return layout


@pytest.mark.parametrize("away, held", [pytest.param(299.0, False, id="reboot-within-the-lease"),
                                        pytest.param(7980.0, True, id="down-2h13m")])
def test_a_host_back_after_its_lease_ran_out_holds_its_jobs(tmp_path, capsys, away, held):
    layout = lease_host(tmp_path, renewed=1000.0)

    assert agent.hold_at_boot(layout, FakeSystemd(), now=1000.0 + away) == 0

    assert os.path.exists(layout.held) == held
    out = capsys.readouterr().out
    assert ("HOLDING every job" in out and "(2h13m)" in out) if held else "lease still valid" in out


def test_a_hold_survives_a_reboot_and_an_unreadable_lease_holds(tmp_path):
    layout = lease_host(tmp_path, renewed=1000.0)
    Path(layout.lease).write_text("{not json")
    assert agent.hold_at_boot(layout, FakeSystemd(), now=1001.0) == 0
    assert os.path.exists(layout.held)
    agent.renew_lease(300.0, layout, now=1002.0)  # a held host that is up renews all the same
    assert agent.hold_at_boot(layout, FakeSystemd(), now=1003.0) == 0
    assert os.path.exists(layout.held)


def test_status_and_state_say_held_and_release_starts_the_timers_without_catch_up(tmp_path):
    layout = lease_host(tmp_path, renewed=1000.0)
    agent.hold_at_boot(layout, FakeSystemd(), now=1000.0 + 7980.0)
    systemd = FakeSystemd()
    host = LocalAgent("cron01", str(tmp_path), systemd)
    os.makedirs(layout.paused_dir)
    Path(layout.paused_dir, "deployer-b.timer").touch()

    held = host.call(StatusRequest()).held
    assert held.down_for_seconds == 7980.0 and held.lease_seconds == 300.0
    assert host.call(StateRequest()).held == held

    before = time.time()
    answer = host.call(protocol.ReleaseRequest())

    assert answer.released == held and answer.started == ("deployer-a.timer",)  # b stays paused
    assert not os.path.exists(layout.held)
    assert ("start", "--no-block", "deployer-a.timer") in systemd.systemctl_calls()
    stamp = os.path.join(layout.timer_stamps, "stamp-deployer-a.timer")
    assert os.stat(stamp).st_mtime >= before - 1  # the missed runs are not made up
    assert host.call(protocol.ReleaseRequest()) == protocol.ReleaseAnswer()
    assert host.call(StatusRequest()).held is None


def test_a_push_to_a_held_host_prunes_and_releases(tmp_path):
    layout = lease_host(tmp_path, renewed=1000.0, timers=())
    systemd = FakeSystemd()
    host = LocalAgent("cron01", str(tmp_path), systemd)
    a, moved = f"{U}/deployer-a.timer", f"{U}/deployer-moved.timer"
    host.call(ApplyRequest(write=(write(a, unit("a")), write(moved, unit("moved"))), expect=files(host)))
    agent.hold_at_boot(layout, systemd, now=1000.0 + 400.0)
    systemd.calls.clear()

    answer = host.call(ApplyRequest(remove=(moved,), expect=files(host)))

    assert answer.released is not None and answer.stopped == ("deployer-moved.timer",)
    assert not os.path.exists(layout.held)
    starts = [c for c in systemd.systemctl_calls() if c[0] == "start"]
    assert starts == [("start", "--no-block", "deployer-a.timer")]  # never the pruned one


# -- issue 22 item 1: the hold fails closed; item 13: a corrupt hold file ----------------------------

FAIL_CLOSED = f"[Unit]\nConditionPathExists={paths.NOT_HELD}\n[Timer]\nOnCalendar=daily\n"


def refuse_writes_to(monkeypatch, path, error=errno.EROFS):
    """A /var/lib/deployer that is read-only, full or immutable: writing `path` fails as it would."""
    write_atomically = agent.Host.write_atomically

    def refusing(self, target, text, mode=0o600):
        if target == path:
            raise OSError(error, os.strerror(error), target)
        return write_atomically(self, target, text, mode)

    monkeypatch.setattr(agent.Host, "write_atomically", refusing)


@pytest.mark.parametrize("error", [pytest.param(errno.EROFS, id="read-only"), pytest.param(errno.ENOSPC, id="full"),
                                   pytest.param(errno.EPERM, id="immutable")])
def test_a_hold_that_cannot_be_written_still_holds_and_says_why(tmp_path, monkeypatch, capsys, error):
    layout = lease_host(tmp_path, renewed=1000.0, timers=())
    Path(layout.unit_dir, "deployer-a.timer").write_bytes(unit("a", FAIL_CLOSED))
    refuse_writes_to(monkeypatch, layout.held, error)

    assert agent.hold_at_boot(layout, FakeSystemd(), now=1000.0 + 7980.0) == 1

    assert not os.path.exists(layout.not_held) and not os.path.exists(layout.held)
    assert os.strerror(error) in capsys.readouterr().err
    held = LocalAgent("cron01", str(tmp_path), FakeSystemd()).call(StatusRequest()).held
    assert held is not None and os.strerror(error) in held.reason and held.down_for_seconds == 7980.0
    assert json.loads(Path(layout.held_run).read_text())["reason"] == held.reason  # for the alert sweep


def test_any_error_while_deciding_holds(tmp_path, monkeypatch):
    layout = lease_host(tmp_path, renewed=1000.0, timers=())
    Path(layout.unit_dir, "deployer-a.timer").write_bytes(unit("a", FAIL_CLOSED))
    monkeypatch.setattr(agent, "lease_ran_out", lambda lease, now: 1 / 0)

    assert agent.hold_at_boot(layout, FakeSystemd(), now=1001.0) == 1

    assert not os.path.exists(layout.not_held)
    held = LocalAgent("cron01", str(tmp_path), FakeSystemd()).call(StatusRequest()).held
    assert "ZeroDivisionError" in held.reason


@pytest.mark.parametrize("lease", [pytest.param(True, id="lease-valid"), pytest.param(False, id="no-lease")])
def test_only_a_boot_that_decided_not_held_lets_the_timers_start(tmp_path, lease):
    layout = lease_host(tmp_path, renewed=1000.0)
    if not lease:
        os.unlink(layout.lease)
    assert agent.hold_at_boot(layout, FakeSystemd(), now=1100.0) == 0
    assert os.path.exists(layout.not_held) and not os.path.exists(layout.held)


def test_timers_that_wait_for_a_decision_the_boot_never_made_are_held_until_released(tmp_path):
    """The hold unit did not run (its program unreadable, or it crashed): the timers skip, and
    status says so; a release confirms the host and starts them."""
    layout = lease_host(tmp_path, renewed=1000.0, timers=())
    Path(layout.unit_dir, "deployer-a.timer").write_bytes(unit("a", FAIL_CLOSED))
    systemd = FakeSystemd()
    host = LocalAgent("cron01", str(tmp_path), systemd)

    held = host.call(StatusRequest()).held
    assert held is not None and "did not decide" in held.reason and paths.HOLD_UNIT in held.reason

    answer = host.call(protocol.ReleaseRequest())
    assert answer.released == held and answer.started == ("deployer-a.timer",)
    assert os.path.exists(layout.not_held) and host.call(StatusRequest()).held is None


def test_a_push_to_a_host_that_never_booted_with_the_hold_unit_lets_its_timers_start(host):
    """The first push installs the hold unit but it only runs at the next boot: the push decides."""
    host.call(ApplyRequest(write=(write(f"{U}/deployer-a.timer", unit("a", FAIL_CLOSED)),), expect=files(host)))
    assert os.path.exists(host.layout.not_held)
    assert host.call(StatusRequest()).held is None


@pytest.mark.parametrize("content", [pytest.param(b"{not json", id="not-json"), pytest.param(b"", id="empty"),
                                     pytest.param(b'{"since": 1, "color": "red"}', id="unknown-field")])
def test_a_corrupt_hold_file_holds_and_status_plan_and_push_work(tmp_path, content):
    """Issue 22 item 13: the message said a push removes it, while state, status and push failed."""
    layout = lease_host(tmp_path, renewed=1000.0, timers=())
    systemd = FakeSystemd()
    host = LocalAgent("cron01", str(tmp_path), systemd)
    a = f"{U}/deployer-a.timer"
    host.call(ApplyRequest(write=(write(a, unit("a")),), expect=files(host)))
    Path(layout.held).write_bytes(content)

    held = host.call(StatusRequest()).held
    assert held is not None and "held.json" in held.reason and "push" in held.reason
    assert host.call(StateRequest()).held == held
    answer = host.call(ApplyRequest(write=(write(a, unit("a", "[Timer]\nOnCalendar=hourly\n")),), expect=files(host)))
    assert answer.released == held
    assert not os.path.exists(layout.held) and host.call(StatusRequest()).held is None


def test_the_takeover_is_recorded_on_the_host_that_took_the_jobs(host, tmp_path):
    takeover = protocol.Takeover("cron02", ("a",), unreachable_at=5.0, waited_seconds=10.0)
    host.call(ApplyRequest(write=(write(f"{U}/deployer-a.timer", unit("a")),), expect=files(host),
                           takeover=takeover))
    recorded = json.loads(Path(host.layout.takeovers).read_text())["takeovers"]
    assert [(t["source"], t["jobs"], t["waited_seconds"], t["forced"]) for t in recorded] == [
        ("cron02", ["a"], 10.0, False)]


def test_the_hold_unit_runs_before_timers_and_the_recovery_and_job_timers_skip_while_held():
    from deployer.models import Host
    from deployer.render import lease_units

    service, timer, hold = (f.content.decode().splitlines() for f in lease_units(Host("cron01", "x", lease=10.0)))
    for line in ("DefaultDependencies=no", f"Before=sysinit.target shutdown.target {paths.RECOVER_UNIT}",
                 "WantedBy=sysinit.target",
                 "ExecStart=/usr/bin/python3 -m deployer.host.agent --hold-at-boot"):
        assert line in hold
    assert "OnUnitActiveSec=3.333s" in timer and "OnBootSec=0" in timer
    assert 'ExecStart="/usr/bin/python3" "-m" "deployer.host.agent" "--renew-lease" "10"' in service
    assert switch_plan({}, {f"{U}/{paths.HOLD_UNIT}": "S/h"}, {}, [], set(), {}, 1.0).enable == (paths.HOLD_UNIT,)
    # It always runs (no condition on the lease): only it writes the marker that lets timers start.
    assert not [line for line in hold if line.startswith("ConditionPathExists=")]

# -- issue 13: runs from the journal (records, and PID 1's entries for runs killed without one) ------

def record_entry(job, run, started, result="ok", reason="status 200", **extra):
    from deployer.contract.record import RunRecord

    fields = RunRecord(job, run, int(started) // 60 * 60, started, 0.5, 1, result, reason, 200).journal_fields()
    return {**fields, "__REALTIME_TIMESTAMP": str(int((started + 0.5) * 1e6)), "_PID": "812", "_UID": "61200",
            **extra}


def pid1(job, invocation, message_id, at, **fields):
    return {"MESSAGE_ID": message_id, "_PID": "1", "UNIT": f"deployer-{job}.service", "INVOCATION_ID": invocation,
            "__REALTIME_TIMESTAMP": str(int(at * 1e6)), **fields}


def test_runs_from_the_journal_records_and_a_run_killed_before_its_record():
    from deployer.contract.record import UNIT_EXITED, UNIT_FAILED

    entries = [
        pid1("settle", "aa", journal.UNIT_STARTING, 1000.0), record_entry("settle", "aa", 1000.1),
        pid1("settle", "aa", UNIT_EXITED, 1000.7, EXIT_CODE="exited", EXIT_STATUS="0"),
        pid1("settle", "bb", journal.UNIT_STARTING, 2000.0),
        pid1("settle", "bb", UNIT_EXITED, 2075.0, EXIT_CODE="killed", EXIT_STATUS="9"),
        pid1("settle", "bb", UNIT_FAILED, 2075.0, UNIT_RESULT="timeout"),
        pid1("settle", "cc", journal.UNIT_STARTING, 3000.0), record_entry("settle", "cc", 3000.1, "failed", "code is 7"),
        pid1("settle", "cc", UNIT_EXITED, 3000.7, EXIT_CODE="exited", EXIT_STATUS="1"),
        pid1("settle", "cc", UNIT_FAILED, 3000.7, UNIT_RESULT="exit-code"),
        record_entry("other", "dd", 1500.0),
    ]
    runs = journal.runs_from_journal(entries)
    assert [(r.run, r.result, r.reason, r.source) for r in runs["settle"]] == [
        ("aa", "ok", "status 200", "record"), ("bb", "failed", "timeout (killed, signal KILL)", "systemd"),
        ("cc", "failed", "code is 7", "record")]
    assert (runs["settle"][1].started, runs["settle"][1].duration, runs["settle"][1].slot) == (2000.0, 75.0, 0)
    assert [r.run for r in runs["other"]] == ["dd"]


def test_a_record_a_local_user_sends_is_not_a_run_and_a_field_sent_twice_is_no_crash():
    """journald's socket is open to every user: only a DynamicUser= run of the job's own unit counts."""
    real = record_entry("settle", "aa", 1000.0, _SYSTEMD_UNIT="deployer-settle.service")
    forged = [record_entry("settle", "zz", 9e9, _UID="1000"),  # a login's uid
              record_entry("settle", "yy", 9e9, _SYSTEMD_UNIT="deployer-other.service"),  # another job's run
              {**record_entry("settle", "xx", 9e9), "DEPLOYER_HTTP_STATUS": ["200", "200"]}]  # sent twice
    runs = journal.runs_from_journal([real] + forged)
    assert [r.run for r in runs["settle"]] == ["aa"]


def test_status_reads_last_runs_with_one_journal_call_that_ends_once_each_job_has_its_record(host):
    for job in ("good", "bad", "new"):
        host.call(ApplyRequest(write=(write(f"{U}/deployer-{job}.timer", unit(job)),), expect=files(host)))
    host.systemd.journal = [record_entry("bad", "b2", 3000.0, "failed", "status 500, expected 2xx"),
                            record_entry("new", "n1", 2000.0), record_entry("bad", "b1", 1000.0),
                            record_entry("new", "n0", 500.0)]
    host.systemd.calls.clear()
    jobs = {j.job: j for j in host.call(StatusRequest()).jobs}
    # One call for the runs, whatever the number of jobs (the other reads the audit trail's last push).
    [call] = [c for c in host.systemd.calls if c[0] == "journalctl" and journal.AUDIT_MATCHES[0] not in c]
    # `good` succeeded and systemd knows its run: it is not asked about; `new` never ran per systemd.
    assert [a for a in call if a.startswith("_SYSTEMD_UNIT=")] == ["_SYSTEMD_UNIT=deployer-bad.service",
                                                                   "_SYSTEMD_UNIT=deployer-new.service"]
    assert call[1] == "-r" and host.systemd.read == 2  # newest first, stopped at the second record
    assert jobs["bad"].last_run.reason == "status 500, expected 2xx" and jobs["new"].last_run.run == "n1"
    assert jobs["good"].last_run is None


def test_history_is_one_journal_call_and_keeps_runs_since(host):
    from deployer.contract.protocol import HistoryRequest

    host.call(ApplyRequest(write=(write(f"{U}/deployer-settle.timer", unit("settle")),), expect=files(host)))
    host.systemd.journal = [record_entry("settle", "a", 900.0), record_entry("settle", "b", 1100.0)]
    host.systemd.calls.clear()
    answer = host.call(HistoryRequest("settle", since=1000.0))
    assert [c[:2] for c in host.systemd.calls] == [("journalctl", "--since=@1000")]
    assert [r.run for r in answer.runs] == ["b"] and answer.scheduled_since > 0


def test_a_run_streams_its_lines_and_answers_them_with_its_record(host):
    """`emit` gets each line of the run as journalctl -f hands it over; the answer repeats them."""
    import io

    from deployer.contract.protocol import RunRequest

    host.call(ApplyRequest(write=(write(f"{U}/deployer-settle.service", unit("settle", "[Service]\n")),),
                           expect=files(host)))
    now = time.time()
    lines = [dict(record_entry("settle", "inv1", now + 1), _SYSTEMD_INVOCATION_ID="inv1",
                  SYSLOG_IDENTIFIER="deployer-settle")]
    lines.insert(0, {"MESSAGE": "POST http://x -> 200", "_SYSTEMD_INVOCATION_ID": "inv1", "_PID": "812",
                     "SYSLOG_IDENTIFIER": "deployer-settle", "__REALTIME_TIMESTAMP": str(int((now + 0.5) * 1e6))})
    lines.insert(0, {"MESSAGE": "an earlier run", "_SYSTEMD_INVOCATION_ID": "inv0", "_PID": "811",
                     "__REALTIME_TIMESTAMP": str(int((now - 30) * 1e6))})

    class Follower:
        stdout = io.BytesIO(b"".join(json.dumps(e).encode() + b"\n" for e in lines))

        def kill(self):
            pass

        def wait(self):
            pass

    host.systemd.follow = lambda args: Follower()
    host.systemd.shown["deployer-settle.service"] = {"Id": "deployer-settle.service", "InvocationID": "inv1",
                                                     "Result": "success", "ExecMainStatus": "0"}
    host.systemd.journal = lines[1:]
    streamed = []
    answer = host.call(RunRequest("settle"), output=streamed.append)
    assert [line.split(": ", 1)[1] for line in streamed] == ["POST http://x -> 200", "settle: ok in 0.50s (1 attempt)"]
    assert answer.output.splitlines() == streamed and answer.ok and answer.run.run == "inv1"


def start_a_manual_run(host, elapse_during_it: bool, new_invocation: str = "inv1", held: bool = False,
                       key: str = ""):
    """A manual run of `settle` on the fake host; the timer's stamp is touched while it runs
    when `elapse_during_it` (what systemd does when the timer elapses then). `held`: the host
    holds its jobs, and the run is forced. `key`: the Idempotency-Key the run's record names."""
    import io

    from deployer.contract.protocol import RunRequest

    host.call(ApplyRequest(write=(write(f"{U}/deployer-settle.service", unit("settle", "[Service]\n")),),
                           expect=files(host)))
    if held:
        hold(host)
    lines = [dict(record_entry("settle", "inv1", time.time() + 1), _SYSTEMD_INVOCATION_ID="inv1", DEPLOYER_KEY=key)]

    class Follower:
        stdout = io.BytesIO(b"".join(json.dumps(e).encode() + b"\n" for e in lines))

        def kill(self):
            pass

        def wait(self):
            pass

    stamp = host.layout.at(paths.TIMER_STAMPS + "/stamp-deployer-settle.timer")
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    open(stamp, "w").close()
    os.utime(stamp, (1000.0, 1000.0))
    run = host.systemd.run

    def systemd_run(args):
        if tuple(args) == ("systemctl", "start", "deployer-settle.service") and elapse_during_it:
            os.utime(stamp, (1796541460.4, 1796541460.4))
            host.systemd.shown["deployer-settle.service"]["InvocationID"] = "inv1"
        answer = run(args)
        if tuple(args[:2]) == ("systemctl", "show") and "Result" in args[3]:  # the run's end is read
            host.systemd.shown["deployer-settle.service"]["InvocationID"] = new_invocation
        return answer

    host.systemd.run = systemd_run
    host.systemd.follow = lambda args: Follower()
    host.systemd.shown["deployer-settle.service"] = {"Id": "deployer-settle.service", "InvocationID": "inv1",
                                                     "Result": "success", "ExecMainStatus": "0"}
    host.systemd.journal = lines
    streamed: list[str] = []
    return host.call(RunRequest("settle", force=held), output=streamed.append), streamed


def hold(host, down_for: float = 7980.0) -> None:
    """What the boot check writes when the lease ran out while the host was down."""
    os.makedirs(os.path.dirname(host.layout.held), exist_ok=True)
    Path(host.layout.held).write_text(json.dumps(protocol.to_json(protocol.Held(
        since="2026-12-06T08:00:00+00:00", down_for_seconds=down_for, lease_seconds=300.0))))


def test_issue24_9_a_held_host_refuses_a_manual_run_without_force(host):
    """Before: `deployer run` ran a job on a held host without a word, though its jobs may have
    moved to another host while it was down (host-down.md)."""
    from deployer.contract.protocol import RunRequest

    host.call(ApplyRequest(write=(write(f"{U}/deployer-settle.service", unit("settle", "[Service]\n")),),
                           expect=files(host)))
    hold(host)
    with pytest.raises(AgentRefused, match=r"holds its jobs \(was down 2h13m\).*--force") as refused:
        host.call(RunRequest("settle"))
    assert refused.value.code == protocol.HELD
    assert not [c for c in host.systemd.calls if c[:2] == ("systemctl", "start")]


def test_issue24_9_a_forced_run_on_a_held_host_runs_and_says_it_was_held(host):
    answer, _ = start_a_manual_run(host, elapse_during_it=False, held=True)
    assert answer.ok and answer.held.down_for_seconds == 7980.0


def test_a_timer_elapse_merged_into_a_manual_run_runs_its_slot_after_it(host):
    """Issue 22 item 6: the timer elapsed while the manual run held the unit, so systemd merged
    its start into it; the agent starts that slot's run and says so."""
    answer, streamed = start_a_manual_run(host, elapse_during_it=True)
    starts = [c for c in host.systemd.calls if c[:2] == ("systemctl", "start")]
    assert starts == [("systemctl", "start", "deployer-settle.service"),
                      ("systemctl", "start", "--no-block", "deployer-settle.service")]
    with open(host.layout.at(paths.BACKFILL_DIR + "/deployer-settle.json")) as asked:
        request = json.load(asked)
    assert request["elapsed"] == pytest.approx(1796541460.4, abs=1e-3)
    assert request["stamp"] == os.stat(host.layout.at(paths.TIMER_STAMPS + "/stamp-deployer-settle.timer")).st_mtime_ns
    assert answer.merged_elapse == "2026-12-06T07:17:40+00:00"
    assert "the timer elapsed at 2026-12-06T07:17:40+00:00 during this manual run" in streamed[-1]


def test_a_request_that_joined_the_timers_run_says_so(host):
    """The timer started a run between the agent's look (nothing running) and its start, which
    joined that run: the run kept the timer's slot (slot.asked_start), and the operator is told
    that this was the timer's run, not a manual one."""
    answer, streamed = start_a_manual_run(host, elapse_during_it=False, key="settle/2026-12-06T07:17:00Z")
    assert answer.attached and answer.run.key == "settle/2026-12-06T07:17:00Z"
    assert "the job's timer started a run (slot " in streamed[-1] and "which joined it" in streamed[-1]
    manual, streamed = start_a_manual_run(host, elapse_during_it=False, key="settle/manual-inv1")
    assert not manual.attached and not [line for line in streamed if "joined" in line]


@pytest.mark.parametrize("elapsed, invocation", [pytest.param(False, "inv1", id="no-elapse"),
                                                 pytest.param(True, "inv2", id="the-timers-own-run-started")])
def test_a_manual_run_starts_nothing_more_when_no_slot_was_merged(host, elapsed, invocation):
    answer, _ = start_a_manual_run(host, elapse_during_it=elapsed, new_invocation=invocation)
    assert [c for c in host.systemd.calls if c[:2] == ("systemctl", "start")] == \
        [("systemctl", "start", "deployer-settle.service")]
    assert answer.merged_elapse == ""


def test_a_status_of_many_jobs_matches_every_jobs_runs_and_keeps_only_those_asked(host):
    many(host, journal.PER_JOB_MATCHES + 1)
    host.systemd.journal = [record_entry("elsewhere", "x1", 3000.0), record_entry("j00001", "a1", 2000.0)]
    host.systemd.calls.clear()
    jobs = {j.job: j for j in host.call(StatusRequest()).jobs}
    [call] = [c for c in host.systemd.calls if c[0] == "journalctl" and journal.AUDIT_MATCHES[0] not in c]
    assert not [a for a in call if a.startswith(("DEPLOYER_JOB=", "UNIT=", "_SYSTEMD_UNIT="))]  # slows with each term
    assert jobs["j00001"].last_run.run == "a1" and "elsewhere" not in jobs and jobs["j00002"].last_run is None


# -- issue 22 item 10: a flood of forged records starves no status scan -----------------------------

# Recorded on a test host (tests/e2e/test_record.py's setup): `journalctl -o json MESSAGE_ID=<record>
# + _PID=1 UNIT=deployer-settle.service`, trimmed to the fields the readers ask for: PID 1's
# entries of one failed run, its record, then a record `mallory` sent with `logger --journald`.
FLOODED = DATA / "journal-failed-run-and-forged.jsonl"


def journalctl(args, entries):
    """What journalctl answers `args` from `entries` (oldest first), by its match rules: terms of
    one field OR-ed, of different fields AND-ed, `+` between alternatives; `-r` newest first."""
    groups = [{}]
    for arg in args:
        if arg == "+":
            groups.append({})
        elif "=" in arg and not arg.startswith("-"):
            field, value = arg.split("=", 1)
            groups[-1].setdefault(field, set()).add(value)
    found = [e for e in entries if any(all(e.get(f) in values for f, values in g.items()) for g in groups)]
    return found[::-1] if "-r" in args else found


class MatchingSystemd(FakeSystemd):
    """journalctl_entries as the real journal answers: only the entries the matches select."""

    def journal_entries(self, args, stop=None, limit=None):
        self.calls.append(("journalctl",) + tuple(args))
        read = []
        for entry in journalctl(args, self.journal):
            read.append(entry)
            if (stop is not None and stop(entry)) or (limit and len(read) >= limit):
                break
        self.read = len(read)
        return read


def flooded_journal(count):
    """The recorded run, then `count` copies of the forged record (each its own run and cursor)."""
    entries = [json.loads(line) for line in FLOODED.read_text().splitlines()]
    forged = entries.pop()
    assert forged["_UID"] == "2001" and forged["DEPLOYER_JOB"] == "settle"
    head, _, tail = forged["__CURSOR"].partition(";i=")
    rest = tail.split(";", 1)[1]
    return entries + [dict(forged, DEPLOYER_RUN="forged%d" % i, __CURSOR="%s;i=%x;%s" % (head, 0x50 + i, rest))
                      for i in range(count)]


@pytest.mark.parametrize("others", [pytest.param(0, id="matched-per-job"),
                                    pytest.param(journal.PER_JOB_MATCHES, id="more-jobs-than-per-job-matches")])
def test_issue22_10_a_flood_of_forged_records_hides_no_failed_jobs_reason(tmp_path, others):
    """Before: 59,400 records a local user sent (MESSAGE_ID= and DEPLOYER_JOB= are anyone's to
    send) filled the 50,000 entries the scan reads newest first, and the failed run's reason
    vanished from status. Now the query matches the sender's unit or the jobs' slice (journald's
    fields): the forged records are never read."""
    host = LocalAgent("cron01", str(tmp_path), MatchingSystemd())
    if others:
        many(host, others)
    host.call(ApplyRequest(write=(write(f"{U}/deployer-settle.timer", unit("settle")),), expect=files(host)))
    host.systemd.shown["deployer-settle.service"] = {"Id": "deployer-settle.service", "ActiveState": "failed",
                                                     "Result": "exit-code", "ExecMainStatus": "1"}
    host.systemd.journal = flooded_journal(59_400)
    jobs = {j.job: j for j in host.call(StatusRequest()).jobs}
    assert jobs["settle"].last_run.reason == "status 500 not expected"
    assert host.systemd.read < 10, "the scan read forged records"


# -- issue 22 item 8: runs in the journal's order, never by their clocks -----------------------------

S, B = "s=e2f1b4fa3d3642f8b2f8ffb196a48537", "b=277e2e1616ea4362a215d981b20640da"


@pytest.mark.parametrize("cursor, other, after", [
    pytest.param(f"{S};i=49;{B};m=10;t=1", f"{S};i=48;{B};m=20;t=2", True, id="a-higher-number-with-an-earlier-clock"),
    pytest.param(f"{S};i=48;{B};m=10;t=9", f"{S};i=49;{B};m=5;t=1", False, id="a-lower-number-with-a-later-clock"),
    pytest.param(f"s=aa;i=1;{B};m=30;t=1", f"{S};i=49;{B};m=20;t=9", True, id="another-sequence-same-boot-monotonic"),
    pytest.param("s=aa;i=1;b=bb;m=1;t=9", f"{S};i=49;{B};m=20;t=5", True, id="another-boot-wall-time"),
    pytest.param(f"{S};i=1;{B};m=1;t=1", "", True, id="nothing-before"),
])
def test_journal_positions_are_ordered_as_sd_journal_orders_entries(cursor, other, after):
    assert journal.Position.of(cursor).after(journal.Position.of(other)) is after


def test_failed_runs_keep_the_journals_order_after_a_clock_step():
    from deployer.contract.record import UNIT_FAILED

    entries = [pid1("settle", "ahead", UNIT_FAILED, 2000.0 + 86400, __CURSOR=f"{S};i=1"),
               pid1("settle", "back", UNIT_FAILED, 2000.0, __CURSOR=f"{S};i=2")]
    assert [r.invocation for r in journal.failed_runs(entries)] == ["ahead", "back"]


def test_the_agent_decodes_a_request_once(monkeypatch):
    """A push of 10,000 jobs is 30,000 files: the read watchdog and the handler share one decoding."""
    import io
    import sys

    from deployer.contract.protocol import StateRequest, encode_request

    decodings, watched, handled = [], [], []
    decode_envelope = protocol.decode_envelope
    monkeypatch.setattr(protocol, "decode_envelope", lambda raw: decodings.append(1) or decode_envelope(raw))
    monkeypatch.setattr(agent, "heartbeat", lambda: None)
    monkeypatch.setattr(agent, "watch_reads", watched.append)
    monkeypatch.setattr(agent, "handle", lambda raw, decoded=None: handled.append(decoded) or b"{}")
    raw = encode_request("cron01", StateRequest())
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(raw)))
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=io.BytesIO(), flush=lambda: None))
    agent.main([])
    assert decodings == [1] and watched == handled and handled[0][:2] == ("cron01", StateRequest())


def test_a_request_decoded_before_is_handled_as_it_was_decoded(tmp_path, monkeypatch):
    from deployer.contract.protocol import StateRequest, encode_request

    decodings = []
    decode_envelope = protocol.decode_envelope
    monkeypatch.setattr(protocol, "decode_envelope", lambda raw: decodings.append(1) or decode_envelope(raw))
    decoded = agent.decode(encode_request("cron01", StateRequest()))
    answer = agent.handle(b"", layout=paths.Layout(str(tmp_path)), systemd=FakeSystemd(), require_root=False,
                          decoded=decoded)
    assert json.loads(answer)["ok"] is True and decodings == [1]
    refused = agent.decode(b"{not json")
    assert isinstance(refused, protocol.ProtocolError)
    assert json.loads(agent.handle(b"{not json", decoded=refused, require_root=False))["ok"] is False


def test_a_stuck_read_says_where_it_was_and_ends_instead_of_beating_for_ever():
    """The heartbeat keeps a client waiting as long as the agent lives: a status that never ends
    (seen once under heavy load: 300 s) must end, saying where each thread was."""
    import subprocess
    import sys

    from deployer.contract.protocol import StatusRequest, encode_request

    program = ("import sys, time\nfrom deployer.host import agent\n"
               "agent.watch_reads(agent.decode(sys.stdin.buffer.read()), limit=0.5)\ntime.sleep(30)\n")
    done = subprocess.run([sys.executable, "-c", program], input=encode_request("cron01", StatusRequest()),
                          capture_output=True, timeout=20)
    err = done.stderr.decode()
    assert done.returncode == agent.EXIT_STUCK, err
    assert "StatusRequest did not finish within 0s (stuck); where each thread was:" in err, err
    assert 'File "<string>", line 4 in <module>' in err, err  # the main thread, in its sleep
    assert err.splitlines()[-1] == "deployer agent: stuck in <string>:4 <module>", err


def test_issue24_7_timers_start_in_chunks_and_the_count_is_reported(capsys):
    """Before: one `systemctl start` of 1,000 timers (20 s) behind one `starting 1000 timers`."""
    systemd = FakeSystemd()
    timers = [f"deployer-j{i}.timer" for i in range(1200)]
    agent.start_timers(systemd, timers)
    starts = [call for call in systemd.systemctl_calls() if call[0] == "start"]
    assert [len(call) - 2 for call in starts] == [500, 500, 200]
    assert [t for call in starts for t in call[2:]] == timers
    reported = [line for line in capsys.readouterr().err.splitlines() if line.startswith("@progress")]
    assert reported[0] == "@progress starting timers: 0/1200"
    assert "@progress starting timers: 1200/1200" in reported
    assert reported[-1] == "@progress timers active: 1200/1200"


# -- issue 23 item 9: the audit trail ---------------------------------------------------------------

def journal_socket(root: Path):
    """A real datagram socket where the agent's Layout puts journald's: what the agent sends arrives."""
    import socket

    path = root / paths.JOURNAL_SOCKET.lstrip("/")
    path.parent.mkdir(parents=True)
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    sink.settimeout(5)
    return sink


def received(sink) -> dict:
    fields = {}
    for line in sink.recv(65536).decode().splitlines():  # no value here has a newline
        key, _, value = line.partition("=")
        fields[key] = value
    return fields


ACTOR = protocol.Actor("alice", "laptop", "push", "ab" * 32, "cd" * 20, True)


def test_audit_records_who(tmp_path):
    from deployer.contract import audit

    sink = journal_socket(tmp_path)
    host = LocalAgent("cron01", str(tmp_path), FakeSystemd(), actor=ACTOR)
    host.call(ApplyRequest(write=(write(f"{U}/deployer-a.timer", unit("a")),), expect=files(host)))
    pushed = received(sink)
    host.call(protocol.PauseRequest("a"))
    paused = received(sink)
    with pytest.raises(AgentRefused):
        host.call(protocol.PauseRequest("nope"))
    refused = received(sink)
    host.call(StatusRequest())  # a read is not audited

    assert pushed["MESSAGE_ID"] == audit.AUDIT and pushed["DEPLOYER_AUDIT_ACTION"] == "push"
    assert pushed["DEPLOYER_AUDIT_DETAIL"] == "1 written, 0 removed"
    assert (pushed["DEPLOYER_AUDIT_USER"], pushed["DEPLOYER_AUDIT_CLIENT"], pushed["DEPLOYER_AUDIT_COMMIT"],
            pushed["DEPLOYER_AUDIT_DIRTY"], pushed["DEPLOYER_AUDIT_INVENTORY_SHA256"]) == \
        ("alice", "laptop", "cd" * 20, "y", "ab" * 32)
    import pwd
    login = (os.getuid() == 0 and os.environ.get("SUDO_USER")) or pwd.getpwuid(os.getuid()).pw_name
    assert pushed["DEPLOYER_AUDIT_SSH_USER"] == login  # the host's word: the actor does not say it
    assert (paused["DEPLOYER_AUDIT_ACTION"], paused["DEPLOYER_AUDIT_TARGET"], paused["DEPLOYER_AUDIT_OUTCOME"]) \
        == ("pause", "a", "ok")
    assert (refused["DEPLOYER_AUDIT_TARGET"], refused["DEPLOYER_AUDIT_OUTCOME"]) == ("nope", "not_installed")
    sink.settimeout(0.2)
    with pytest.raises(OSError):  # nothing more: the status was not recorded
        sink.recv(65536)


def test_the_clients_word_is_bounded_and_its_digests_must_be_digests(tmp_path):
    sink = journal_socket(tmp_path)
    liar = protocol.Actor("a\nb" + "x" * 500, "laptop\x1b[2J", "push", "not-a-digest", "HEAD", False)
    host = LocalAgent("cron01", str(tmp_path), FakeSystemd(), actor=liar)
    host.call(protocol.ReleaseRequest())
    fields = received(sink)
    assert fields["DEPLOYER_AUDIT_USER"] == ("a b" + "x" * 500)[:200]
    assert fields["DEPLOYER_AUDIT_INVENTORY_SHA256"] == "" and fields["DEPLOYER_AUDIT_COMMIT"] == ""
    assert fields["DEPLOYER_AUDIT_ACTION"] == "release" and fields["DEPLOYER_AUDIT_DETAIL"] == "not held"


def fake_proc(root: Path, chain):
    """/proc of a process chain [(pid, ppid, environ)], the agent's first."""
    for pid, ppid, environ in chain:
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} (py thon) S {ppid} 1 1 0 -1\n")
        (root / str(pid) / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in environ.items()))


def test_the_ssh_origin_is_the_hosts_own_word_through_sudo(tmp_path):
    from deployer.contract.audit import ssh_origin

    # agent (sudo dropped SSH_CONNECTION) <- sudo <- the login's shell, which sshd gave it
    fake_proc(tmp_path, [(40, 30, {}), (30, 20, {"SUDO_USER": "deploy"}),
                         (20, 10, {"SSH_CONNECTION": "10.0.0.9 50022 10.0.0.5 22"}), (10, 1, {})])
    assert ssh_origin({"SUDO_USER": "deploy"}, proc=str(tmp_path), pid=40, uid=0) == ("deploy", "10.0.0.9")
    assert ssh_origin({"SSH_CONNECTION": "192.0.2.1 1 2 22"}, proc=str(tmp_path), pid=40, uid=0) == \
        ("root", "192.0.2.1")
    assert ssh_origin({}, proc=str(tmp_path / "none"), pid=40, uid=0) == ("root", "")


def test_audit_entries_forged_by_a_local_user_count_for_nothing(tmp_path):
    from deployer.contract import audit

    entry = protocol.AuditEntry(1000.5, "pause", "ok", "a", "", "cron01", "root", "10.0.0.9", ACTOR)
    fields = {k: v for k, v in audit.journal_fields(entry).items()}
    systemd = MatchingSystemd()
    systemd.journal = [dict(fields, _UID="0"), dict(fields, _UID="1000", DEPLOYER_AUDIT_TARGET="forged"),
                       dict(fields, _UID="0", DEPLOYER_AUDIT_ACTION="push", DEPLOYER_AUDIT_TIME="2000.0")]
    host = LocalAgent("cron01", str(tmp_path), systemd)
    answer = host.call(protocol.AuditRequest(since=0.0))
    assert [(e.action, e.target) for e in answer.entries] == [("pause", "a"), ("push", "a")]
    assert answer.entries[0] == entry
    assert host.call(StatusRequest()).last_push.time == 2000.0


def test_issue23_a_status_says_the_slots_each_job_skipped_as_the_metrics_counted_them(host):
    for job in ("good", "bad"):
        host.call(ApplyRequest(write=(write(f"{U}/deployer-{job}.timer", unit(job)),), expect=files(host)))
    os.makedirs(os.path.dirname(host.layout.at(paths.METRICS_STATE)), exist_ok=True)
    Path(host.layout.at(paths.METRICS_STATE)).write_text(json.dumps({"version": 2, "cursor": "", "jobs": {
        "good": {"runs": 3, "skipped": {"catch_up": 1, "concurrency": 2}, "last_skipped": {
            "slot": 1796540400, "started": 1796573520.5, "reason": "skipped: missed by 9h12m, catch_up = 2h",
            "kind": "catch_up", "run": "inv1", "cursor": "s=1;i=2"}}}}))
    host.systemd.calls.clear()
    jobs = {j.job: j for j in host.call(StatusRequest()).jobs}
    assert jobs["good"].skipped == 3 and jobs["good"].last_skipped == RunInfo(
        run="inv1", started=1796573520.5, result="skipped", reason="skipped: missed by 9h12m, catch_up = 2h",
        slot=1796540400, duration=0.0)
    assert (jobs["bad"].skipped, jobs["bad"].last_skipped) == (0, None)
    Path(host.layout.at(paths.METRICS_STATE)).write_text("{torn")  # unreadable: a status still answers
    assert {j.job: j.skipped for j in host.call(StatusRequest()).jobs} == {"good": 0, "bad": 0}


def test_issue23_a_slot_skipped_at_boot_does_not_cancel_the_resume_of_a_run_the_shutdown_cut():
    cut = record_entry("settle", "a1", 1000.0, "failed", "interrupted", DEPLOYER_RESUME="y")
    skipped = record_entry("settle", "a2", 5000.0, "skipped", "skipped: missed by 1h, catch_up = 10m",
                           DEPLOYER_SKIPPED="catch_up")
    assert journal.interrupted_runs([cut, skipped]) == {"settle": 960}
    assert journal.interrupted_runs([cut, record_entry("settle", "a3", 5000.0)]) == {}  # a run that ended: none


def test_every_operation_of_the_protocol_has_one_handler_and_no_handler_is_undeclared():
    assert set(agent.HANDLERS) == {op.request for op in protocol.OPERATIONS.values()}


def test_the_reads_and_the_operations_that_settle_a_switch_first_are_those_the_agent_always_had():
    reads = {name for name, op in protocol.OPERATIONS.items() if op.reads}
    assert reads == {"state", "status", "history", "audit"}
    assert {name for name, op in protocol.OPERATIONS.items() if op.settles_first} == {"state", "status", "run"}
