"""host/state.py: each state file's round trip, a missing file, a garbled one, and the exact
bytes the versions before it wrote (a host upgraded in either direction reads the other's files)."""
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from deployer.contract import paths, protocol
from deployer.host import alert, state
from deployer.contract.protocol import AgentError, Held, Takeover
from deployer.host.state import HostState, Journal, Lease, Owner, TakenOver

# What the agent before host/state.py wrote (its Host.write_atomically calls, run on a
# Layout(tmp) and read back byte for byte): the new writers must write exactly these.
OLD_OWNER = b'{"host": "cron01"}'
OLD_LEASE = b'{"renewed": 1796522400.25, "seconds": 300.0}'
OLD_HELD = (b'{"since": "2026-12-06T04:13:00+00:00", "down_for_seconds": 7980.25, "lease_seconds": 300.0, '
            b'"reason": ""}')
OLD_HELD_RUN = (b'{"since": "2026-12-06T04:00:00+00:00", "down_for_seconds": 0.0, "lease_seconds": 0.0, "reason": '
                b'"the hold check at boot failed ([Errno 30] Read-only file system: '
                b'\'/var/lib/deployer/held.json.tmp\')"}')
OLD_TAKEOVERS = (b'{\n "takeovers": [\n  {\n   "source": "cron02",\n   "jobs": [\n    "a",\n    "b"\n   ],\n'
                 b'   "unreachable_at": 1796530000.0,\n   "waited_seconds": 300.0,\n   "forced": false,\n'
                 b'   "at": 1796530400.5\n  },\n  {\n   "source": "cron03",\n   "jobs": [\n    "c"\n   ],\n'
                 b'   "unreachable_at": 0.0,\n   "waited_seconds": 0.0,\n   "forced": true,\n   "at": 1796530500\n'
                 b'  }\n ]\n}')
OLD_JOURNAL = (b'{"disable": ["deployer-old.timer"], "restamp": ["deployer-a.timer"], "forget": ["deployer-old.timer"], '
               b'"stopped_at": 1796530400.5, "stamps": {"deployer-b.timer": 1796530000.0}, "renames": '
               b'[["/var/lib/deployer/.s/x", "/etc/systemd/system/deployer-a.timer"]], "removes": '
               b'["/etc/systemd/system/deployer-old.timer"], "unpause": ["deployer-old.timer"], "reload": true, '
               b'"enable": ["deployer-b.timer"], "start": ["deployer-a.timer", "deployer-b.timer"]}')

JOURNAL = Journal(disable=("deployer-old.timer",), restamp=("deployer-a.timer",), forget=("deployer-old.timer",),
                  stopped_at=1796530400.5, stamps={"deployer-b.timer": 1796530000.0},
                  renames=(("/var/lib/deployer/.s/x", "/etc/systemd/system/deployer-a.timer"),),
                  removes=("/etc/systemd/system/deployer-old.timer",), unpause=("deployer-old.timer",), reload=True,
                  enable=("deployer-b.timer",), start=("deployer-a.timer", "deployer-b.timer"))
HELD = Held(since="2026-12-06T04:13:00+00:00", down_for_seconds=7980.25, lease_seconds=300.0)
HELD_RUN = Held(since="2026-12-06T04:00:00+00:00", reason="the hold check at boot failed ([Errno 30] Read-only file "
                "system: '/var/lib/deployer/held.json.tmp')")
TAKEN = (TakenOver(Takeover("cron02", ("a", "b"), unreachable_at=1796530000.0, waited_seconds=300.0), 1796530400.5),
         TakenOver(Takeover("cron03", ("c",), forced=True), 1796530500))
FAIL_CLOSED = f"[Unit]\nConditionPathExists={paths.NOT_HELD}\n[Timer]\nOnCalendar=daily\n"


@pytest.fixture
def host(tmp_path):
    return HostState(paths.Layout(str(tmp_path)), host="cron01")


def put(path, content: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(content)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the bytes of the previous version: read, and written the same ----------------------------

FILES = [
    pytest.param("journal", OLD_JOURNAL, lambda s: s.read_journal(), lambda s: s.write_journal(JOURNAL), JOURNAL,
                 0o600, id="switch-journal"),
    pytest.param("owner", OLD_OWNER, lambda s: s.read_owner(), lambda s: s.write_owner(Owner("cron01")),
                 Owner("cron01"), 0o600, id="owner"),
    pytest.param("lease", OLD_LEASE, lambda s: s.read_lease(), lambda s: s.write_lease(Lease(1796522400.25, 300.0)),
                 Lease(1796522400.25, 300.0), 0o644, id="lease"),
    pytest.param("held", OLD_HELD, lambda s: s.read_held(), lambda s: s.write_held(HELD), HELD, 0o644, id="held"),
    pytest.param("held_run", OLD_HELD_RUN, lambda s: s.read_held_at_boot(), lambda s: s.write_held_run(HELD_RUN),
                 HELD_RUN, 0o644, id="held-run"),
    pytest.param("takeovers", OLD_TAKEOVERS, lambda s: s.read_takeovers(),
                 lambda s: [s.record_takeover(t.takeover, now=t.at) for t in TAKEN], TAKEN, 0o644, id="takeovers"),
]


@pytest.mark.parametrize("name, old, read, write, value, file_mode", FILES)
def test_a_file_the_previous_version_wrote_reads_as_its_value(host, name, old, read, write, value, file_mode):
    put(getattr(host.layout, name), old)
    assert read(host) == value


@pytest.mark.parametrize("name, old, read, write, value, file_mode", FILES)
def test_each_file_is_written_byte_for_byte_as_before_and_reads_back(host, name, old, read, write, value, file_mode):
    write(host)
    path = getattr(host.layout, name)
    assert Path(path).read_bytes() == old  # a host downgraded reads it too
    assert mode(path) == file_mode and not os.path.exists(path + ".tmp")
    assert read(host) == value


@pytest.mark.parametrize("name, old, read, write, value, file_mode", FILES)
def test_a_missing_file_is_none(host, name, old, read, write, value, file_mode):
    assert read(host) in (None, ())


def test_not_held_paused_and_fenced_are_empty_files(host):
    assert (host.paused(), host.fenced()) == (set(), set())
    host.mark_not_held()
    assert Path(host.layout.not_held).read_bytes() == b"" and mode(host.layout.not_held) == 0o644
    host.pause("deployer-a.timer")
    host.fence("deployer-b.timer")
    assert host.paused() == {"deployer-a.timer", "deployer-b.timer"} and host.fenced() == {"deployer-b.timer"}
    assert Path(host.layout.paused_dir, "deployer-a.timer").read_bytes() == b""
    host.unfence(["deployer-a.timer", "deployer-b.timer"])  # a's pause is no fence's: it stays
    assert host.paused() == {"deployer-a.timer"} and host.fenced() == set()
    host.unpause("deployer-a.timer")
    host.unpause("deployer-a.timer")  # twice: a replayed switch does it again
    assert host.paused() == set()


# -- garbled files --------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [pytest.param(b"", id="empty"), pytest.param(b'{"disable": [', id="torn"),
                                     pytest.param(b'{"disable": 3}', id="wrong-type")])
def test_a_garbled_switch_journal_is_corrupt_state_naming_the_way_out(host, content):
    put(host.layout.journal, content)
    assert host.switch_pending()
    with pytest.raises(state.Corrupt) as corrupt:
        host.read_journal()
    assert "mv /var/lib/deployer/pending-switch.json" in str(corrupt.value)
    host.clear_journal()
    assert not host.switch_pending() and host.read_journal() is None


@pytest.mark.parametrize("content, detail", [pytest.param(b"", "empty", id="empty"),
                                             pytest.param(b'{"host": ', "Expecting value", id="torn"),
                                             pytest.param(b'["cron01"]', "not a JSON object", id="a-list"),
                                             pytest.param(b'{"host": 3}', "no host name", id="no-name")])
def test_a_garbled_owner_file_is_corrupt_state_naming_the_way_out(host, content, detail):
    put(host.layout.owner, content)
    with pytest.raises(state.Corrupt) as corrupt:
        host.read_owner()
    assert corrupt.value.code == protocol.CORRUPT_STATE and detail in corrupt.value.detail
    assert "rm /var/lib/deployer/owner.json" in str(corrupt.value)


def test_another_hosts_owner_file_refuses_and_a_link_is_not_followed(host, tmp_path):
    put(host.layout.owner, b'{"host": "cron02"}')
    with pytest.raises(AgentError) as wrong:
        host.check_owner()
    assert wrong.value.code == protocol.WRONG_OWNER and "'cron02'" in str(wrong.value)
    os.unlink(host.layout.owner)
    host.check_owner()  # none yet: the push writes it
    victim = tmp_path / "victim"
    victim.write_text('{"host": "cron01"}')
    os.symlink(victim, host.layout.owner)
    with pytest.raises(state.Corrupt, match="symbolic link"):
        host.read_owner()
    os.unlink(host.layout.owner)
    os.symlink(victim, host.layout.owner + ".tmp")
    host.write_owner(Owner("cron01"))
    assert victim.read_text() == '{"host": "cron01"}' and not os.path.islink(host.layout.owner)


@pytest.mark.parametrize("content", [pytest.param(b"{not json", id="torn"), pytest.param(b"{}", id="no-fields"),
                                     pytest.param(b'{"renewed": "soon", "seconds": 300}', id="not-a-number")])
def test_a_garbled_lease_is_corrupt_state(host, content):
    put(host.layout.lease, content)
    with pytest.raises(state.Corrupt):
        host.read_lease()


@pytest.mark.parametrize("content", [pytest.param(b"{not json", id="torn"), pytest.param(b"", id="empty"),
                                     pytest.param(b'{"since": 1, "color": "red"}', id="unknown-field")])
@pytest.mark.parametrize("name", ["held", "held_run"])
def test_a_garbled_hold_file_still_holds_and_says_how_to_end_it(host, content, name):
    put(getattr(host.layout, name), content)
    held = host.current_hold()
    assert held is not None and "held.json" in held.reason and "deployer release --host cron01" in held.reason


def test_timers_waiting_for_a_decision_the_boot_never_made_hold(host):
    put(os.path.join(host.layout.unit_dir, "deployer-a.timer"), b"[Timer]\nOnCalendar=daily\n")
    assert host.current_hold() is None  # an older push's timers do not wait for it
    put(os.path.join(host.layout.unit_dir, "deployer-b.timer"), FAIL_CLOSED.encode())
    assert "did not decide" in host.current_hold().reason
    host.mark_not_held()
    assert host.current_hold() is None
    host.write_held(HELD)
    assert host.current_hold() == HELD and host.held_on_disk()
    host.clear_hold()
    assert host.current_hold() is None and not host.held_on_disk()


def test_a_garbled_takeovers_file_keeps_what_it_can_and_never_stops_a_takeover(host):
    put(host.layout.takeovers, b"{torn")
    with pytest.raises(state.Corrupt, match="mv /var/lib/deployer/takeovers.json"):
        host.read_takeovers()
    host.record_takeover(TAKEN[0].takeover, now=TAKEN[0].at)  # replaces it
    assert host.read_takeovers() == TAKEN[:1]
    document = json.loads(OLD_TAKEOVERS)
    document["takeovers"][1:1] = [{"source": "x", "at": "yesterday"}, "a string", {"color": "red", "at": 1.0}]
    put(host.layout.takeovers, json.dumps(document).encode())
    assert host.read_takeovers() == TAKEN  # the entries it cannot read are left out


def test_only_the_newest_takeovers_are_kept(host):
    for at in range(state.TAKEOVERS_KEPT + 3):
        host.record_takeover(Takeover("cron02", ("a",)), now=float(at))
    kept = host.read_takeovers()
    assert len(kept) == state.TAKEOVERS_KEPT and kept[0].at == 3.0 and kept[-1].at == state.TAKEOVERS_KEPT + 2.0


# -- the lock -------------------------------------------------------------------------------------

def test_the_lock_serialises_and_a_second_one_gives_up_naming_it(tmp_path):
    first, second = (HostState(paths.Layout(str(tmp_path)), lock_wait=0.3) for _ in range(2))
    with first.locked():
        assert mode(first.layout.run_dir) == 0o700 and mode(first.layout.lock) == 0o600
        with pytest.raises(AgentError) as locked:
            with second.locked():
                pass
    assert locked.value.code == protocol.LOCKED and "/run/deployer/lock" in str(locked.value)
    entered = threading.Event()

    def take():
        with second.locked():
            entered.set()

    with first.locked():
        waiter = threading.Thread(target=take)
        waiter.start()
    waiter.join(5)
    assert entered.is_set()  # taken once the first let it go


def test_every_write_goes_through_the_write_it_was_given(tmp_path):
    """The agent passes its Host.write_atomically (tests/test_agent.py makes it refuse held.json)."""
    written = []
    host = HostState(paths.Layout(str(tmp_path)), write=lambda path, text, mode: written.append((path, text, mode)))
    host.write_owner(Owner("cron01"))
    host.write_lease(Lease(1.0, 2.0))
    host.write_held(HELD)
    host.write_held_run(HELD_RUN)
    host.mark_not_held()
    host.record_takeover(Takeover("cron02"), now=1.0)
    host.write_journal(JOURNAL)
    layout = host.layout
    assert [p for p, _, _ in written] == [layout.owner, layout.lease, layout.held, layout.held_run, layout.not_held,
                                          layout.takeovers, layout.journal]
    assert os.listdir(tmp_path) == []


# -- the other host programs read the hold through it ----------------------------------------------

def test_the_alert_sweep_reads_the_hold_as_the_agent_does(tmp_path, monkeypatch):
    monkeypatch.setattr(alert, "boot_id", lambda: "boot-1")
    layout = paths.Layout(str(tmp_path))
    put(layout.held, OLD_HELD)
    [event] = alert.held_events("cron01", str(tmp_path), "ops", layout.held, layout.held_run)
    assert (event["since"], event["down_for"], event["lease"], event["reason"]) == (HELD.since, "2h13m", "5m", "")
    put(layout.held, b"{torn")
    [event] = alert.held_events("cron01", str(tmp_path), "ops", layout.held, layout.held_run)
    assert event["since"] == "boot-1" and event["reason"].startswith(layout.held + " is unreadable (Expecting")
    assert alert.held_events("cron01", str(tmp_path), "ops", layout.held, layout.held_run) == []  # once per boot


def test_state_ships_with_the_agent_and_in_the_trigger_bundle():
    from deployer import bundle, remote

    assert "deployer.host.state" in remote.agent_modules()
    assert "deployer/host/state.py" in [name for name, _ in bundle._sources()]
