"""push and move across hosts, with in-process agents (remote.LocalAgent) against temporary roots."""
from __future__ import annotations

import os
import time

import pytest

from deployer import deploy, inventory, remote
from deployer.errors import AgentRefused, DeployerError, RemoteError
from deployer.contract import paths, protocol
from tests.test_agent import FakeSystemd

HOSTS = "[host:cron01]\naddress = 10.0.0.1\n[host:cron02]\naddress = 10.0.0.2\n"


def jobs(host: str) -> str:
    return f"[job:a]\nschedule = 0 3 * * *\nurl = http://svc/a\nhost = {host}\n" \
           f"[job:b]\nschedule = 0 4 * * *\nurl = http://svc/b\nhost = cron01\n"


@pytest.fixture
def hosts(tmp_path):
    return {name: remote.LocalAgent(name, str(tmp_path / name), FakeSystemd()) for name in ("cron01", "cron02")}


def load(tmp_path, text: str):
    path = tmp_path / "inventory.ini"
    path.write_text(HOSTS + text)
    return inventory.load(str(path))


def timers(agent) -> set[str]:
    return {deploy.job_of_timer(p) for p in remote.read_state(agent).files} - {None}


def test_a_second_push_plans_nothing(tmp_path, hosts):
    inv = load(tmp_path, jobs("cron01"))
    first = deploy.push(inv, "cron01", hosts["cron01"], hosts.get)
    again = deploy.push(inv, "cron01", hosts["cron01"], hosts.get)
    assert first.result.started == ("deployer-a.timer", "deployer-b.timer", paths.HEARTBEAT_TIMER, paths.LEASE_TIMER)
    assert again.plan.is_noop and again.result is None


def test_a_push_with_nothing_to_change_still_releases_a_held_host(tmp_path, hosts):
    """`status` and `plan` say a push releases a held host: a push that changes no file too."""
    from deployer.host import agent

    inv = load(tmp_path, jobs("cron01"))
    deploy.push(inv, "cron01", hosts["cron01"], hosts.get)
    layout = hosts["cron01"].layout
    agent.renew_lease(300.0, layout, now=1000.0)
    agent.hold_at_boot(layout, FakeSystemd(), now=1000.0 + 7980.0)
    assert remote.read_state(hosts["cron01"]).held is not None

    again = deploy.push(inv, "cron01", hosts["cron01"], hosts.get)
    assert again.plan.is_noop and again.result.released.down_for_seconds == 7980.0
    assert set(again.result.started) >= {"deployer-a.timer", "deployer-b.timer"}
    assert remote.read_state(hosts["cron01"]).held is None


def test_issue24_9_every_push_says_a_paused_job_stays_paused(tmp_path, hosts, capsys):
    """Before: a push that changed nothing printed only "up to date", though pause.md says a
    push says `stays paused`; one that changed another job did not name it either."""
    from deployer import cli

    inv = load(tmp_path, jobs("cron01"))
    deploy.push(inv, "cron01", hosts["cron01"], hosts.get)
    remote.pause(hosts["cron01"], "a")
    again = deploy.push(inv, "cron01", hosts["cron01"], hosts.get)
    changed = deploy.push(load(tmp_path, jobs("cron01").replace("0 4 * * *", "0 5 * * *")), "cron01",
                          hosts["cron01"], hosts.get)
    assert again.plan.is_noop and again.result.kept_paused == ("deployer-a.timer",)
    assert not changed.plan.is_noop and changed.result.kept_paused == ("deployer-a.timer",)
    cli._print_push(again, False)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "  deployer-a.timer stays paused (deployer resume)"
    assert printed[1].startswith("host cron01: up to date: ")


def test_issue24_9_push_json_gives_seconds_per_step(tmp_path, hosts):
    """Before: the README said `push --json` gives seconds per step; the agent measured them
    (ApplyAnswer.seconds) but the document left them out."""
    from deployer.report import push_document

    inv = load(tmp_path, jobs("cron01"))
    first = push_document(deploy.push(inv, "cron01", hosts["cron01"], hosts.get))
    again = push_document(deploy.push(inv, "cron01", hosts["cron01"], hosts.get))
    assert set(first["seconds"]) == {"lock", "stage", "verify", "switch", "activate"}
    assert all(isinstance(v, float) and v >= 0 for v in first["seconds"].values())
    assert again["seconds"] == {}


def test_a_job_still_installed_on_another_host_is_refused(tmp_path, hosts):
    deploy.push(load(tmp_path, jobs("cron01")), "cron01", hosts["cron01"], hosts.get)
    moved = load(tmp_path, jobs("cron02"))
    with pytest.raises(DeployerError, match="job a is still installed on cron01.*deployer move --from cron01"):
        deploy.push(moved, "cron02", hosts["cron02"], hosts.get)
    assert timers(hosts["cron02"]) == set()


def test_move_hands_over_and_stamps_the_handoff_moment(tmp_path, hosts):
    deploy.push(load(tmp_path, jobs("cron01")), "cron01", hosts["cron01"], hosts.get)
    moving, to_target, to_source = deploy.move(load(tmp_path, jobs("cron02")), "cron01", "cron02", hosts.get)
    assert moving == ["a"]
    assert timers(hosts["cron02"]) == {"a"} and timers(hosts["cron01"]) == {"b"}
    stamp = hosts["cron02"].layout.at(paths.TIMER_STAMPS + "/stamp-deployer-a.timer")
    assert abs(os.stat(stamp).st_mtime - time.time()) < 60


def test_move_rolls_back_when_the_target_refuses(tmp_path, hosts):
    deploy.push(load(tmp_path, jobs("cron01")), "cron01", hosts["cron01"], hosts.get)
    hosts["cron02"].systemd.complaints = ["deployer-a.timer:7: Unknown key"]
    source_calls = hosts["cron01"].systemd.calls
    source_calls.clear()

    with pytest.raises(AgentRefused) as refused:
        deploy.move(load(tmp_path, jobs("cron02")), "cron01", "cron02", hosts.get)

    assert refused.value.code == protocol.VERIFY_FAILED and refused.value.host == "cron02"
    assert ("systemctl", "disable", "--now", "deployer-a.timer") in source_calls  # the handoff
    assert source_calls[-2:] == [("systemctl", "enable", "--now", "deployer-a.timer"),  # the rollback
                                 ("systemctl", "start", "--no-block", paths.METRICS_SERVICE)]  # its metrics
    assert timers(hosts["cron01"]) == {"a", "b"} and timers(hosts["cron02"]) == set()


# -- issue 13 item 1: failover from a host that does not answer ----------------------------------

class Switchable(remote.Agent):
    """A host that can be powered off: while `down`, every call fails as an unreachable one does."""

    def __init__(self, agent: remote.LocalAgent):
        self.agent, self.host, self.down = agent, agent.host, False

    def call(self, request, progress=None):
        if self.down:
            raise RemoteError(self.host, "cannot connect to 10.0.0.2: [Errno 111] Connection refused")
        return self.agent.call(request, progress)


@pytest.fixture
def dead_cron02(tmp_path, hosts):
    """cron02 ran job a; then it went down, and the inventory now designates a to cron01."""
    cron02 = Switchable(hosts["cron02"])
    connect = {"cron01": hosts["cron01"], "cron02": cron02}.get
    deploy.push(load(tmp_path, jobs("cron02")), "cron02", cron02, connect)
    deploy.push(load(tmp_path, jobs("cron02")), "cron01", hosts["cron01"], connect)
    cron02.down = True
    return cron02, connect


def test_a_push_that_needs_a_dead_host_points_at_move(tmp_path, hosts, dead_cron02):
    _, connect = dead_cron02
    with pytest.raises(DeployerError, match="If cron02 is down, take its jobs over with: deployer move "
                                            "--from cron02 --to cron01"):
        deploy.push(load(tmp_path, jobs("cron01")), "cron01", hosts["cron01"], connect)


def test_move_from_a_dead_host_waits_out_its_lease_then_takes_the_jobs_over(tmp_path, hosts, dead_cron02):
    _, connect = dead_cron02
    inv = load(tmp_path, jobs("cron01"))
    waits = []

    moving, to_target, to_source = deploy.move(inv, "cron02", "cron01", connect, wait=waits.append,
                                               clock=lambda: 5000.0)

    assert [(w.host, w.since, w.lease, w.until) for w in waits] == [("cron02", 5000.0, 300.0, 5300.0)]
    assert "Connection refused" in waits[0].reason
    assert moving == ["a"] and to_source is None and timers(hosts["cron01"]) == {"a", "b"}
    assert to_target.takeover == protocol.Takeover("cron02", ("a",), unreachable_at=5000.0, waited_seconds=0.0)
    # Persistent= on cron01 runs once a slot that passed since cron02 was found unreachable.
    stamp = hosts["cron01"].layout.at(paths.TIMER_STAMPS + "/stamp-deployer-a.timer")
    assert os.stat(stamp).st_mtime == 5000.0
    recorded = hosts["cron01"].layout.takeovers
    assert '"source": "cron02"' in open(recorded).read()


def test_move_with_force_does_not_wait_and_says_so_in_the_record(tmp_path, hosts, dead_cron02):
    _, connect = dead_cron02
    moving, to_target, _ = deploy.move(load(tmp_path, jobs("cron01")), "cron02", "cron01", connect, force=True,
                                       wait=lambda gone: pytest.fail("waited"))
    assert moving == ["a"] and to_target.takeover.forced


def test_a_source_back_before_the_lease_ran_out_gets_the_normal_hand_over(tmp_path, hosts, dead_cron02):
    cron02, connect = dead_cron02

    def comes_back(gone):
        cron02.down = False

    moving, to_target, to_source = deploy.move(load(tmp_path, jobs("cron01")), "cron02", "cron01", connect,
                                               wait=comes_back)

    assert moving == ["a"] and to_target.takeover is None and to_source is not None
    assert timers(hosts["cron02"]) == set() and timers(hosts["cron01"]) == {"a", "b"}


def test_wait_until_counts_down_once_a_second():
    now, ticks = [100.0], []

    def sleep(seconds):
        now[0] += seconds

    deploy.wait_until(102.5, clock=lambda: now[0], sleep=sleep, tick=ticks.append)
    assert ticks == [2.5, 1.5, 0.5] and now[0] == 102.5


def test_a_push_that_removes_jobs_asks_first_and_a_no_changes_nothing(tmp_path, hosts):
    deploy.push(load(tmp_path, jobs("cron01")), "cron01", hosts["cron01"], hosts.get)
    before = remote.read_state(hosts["cron01"]).files
    smaller = load(tmp_path, "[job:c]\nschedule = 0 5 * * *\nurl = http://svc/c\nhost = cron01\n")
    asked = []

    with pytest.raises(DeployerError, match="push cancelled, nothing changed.*--no-prune keeps those jobs"):
        deploy.push(smaller, "cron01", hosts["cron01"], hosts.get, confirm=lambda jobs: asked.append(jobs))

    assert asked == [("a", "b")]
    assert remote.read_state(hosts["cron01"]).files == before
    pushed = deploy.push(smaller, "cron01", hosts["cron01"], hosts.get, confirm=lambda jobs: True)
    assert timers(hosts["cron01"]) == {"c"} and pushed.result.stopped


def test_a_push_that_removes_no_job_does_not_ask(tmp_path, hosts):
    deploy.push(load(tmp_path, jobs("cron01")), "cron01", hosts["cron01"], hosts.get)

    def refuse(jobs):
        raise AssertionError(f"asked about {jobs}")

    changed = load(tmp_path, jobs("cron01").replace("0 3 * * *", "0 6 * * *"))
    pushed = deploy.push(changed, "cron01", hosts["cron01"], hosts.get, confirm=refuse)
    # The timer, and the service, whose trigger names its slot from the timer's calendar.
    assert [f.name for f in pushed.plan.change] == ["deployer-a.service", "deployer-a.timer"]
    assert not pushed.plan.remove


def test_no_prune_keeps_jobs_no_longer_listed_and_installs_the_new_ones(tmp_path, hosts):
    deploy.push(load(tmp_path, jobs("cron01")), "cron01", hosts["cron01"], hosts.get)
    smaller = load(tmp_path, "[job:c]\nschedule = 0 5 * * *\nurl = http://svc/c\nhost = cron01\n")

    pushed = deploy.push(smaller, "cron01", hosts["cron01"], hosts.get, prune=False,
                         confirm=lambda jobs: pytest.fail(f"asked about {jobs}"))

    assert timers(hosts["cron01"]) == {"a", "b", "c"}
    assert pushed.plan.remove == () and {deploy.job_of_timer(p) for p in pushed.plan.kept} - {None} == {"a", "b"}
    again = deploy.push(smaller, "cron01", hosts["cron01"], hosts.get, prune=False)
    assert again.plan.is_noop and again.result is None


class SlowReadAgent(remote.Agent):
    """An agent whose state read waits (up to 5 s) for the units' rendering to have begun."""

    def __init__(self, agent: remote.LocalAgent, rendering, fail: bool = False):
        self.agent, self.host, self.rendering, self.fail = agent, agent.host, rendering, fail
        self.read_saw_rendering = None

    def call(self, request, progress=None, output=None, stop=None):
        if isinstance(request, protocol.StateRequest):
            self.read_saw_rendering = self.rendering.wait(5)
            if self.fail:
                raise RemoteError(self.host, "agent state: cron01 stopped answering")
        return self.agent.call(request, progress, output, stop)


def _rendering_watched(monkeypatch):
    import threading

    rendering = threading.Event()
    render = deploy.desired_files

    def watched(*args, **kwargs):
        rendering.set()
        return render(*args, **kwargs)

    monkeypatch.setattr(deploy, "desired_files", watched)
    return rendering


def test_the_host_is_read_while_the_units_are_rendered(tmp_path, hosts, monkeypatch):
    inv = load(tmp_path, jobs("cron01"))
    agent = SlowReadAgent(hosts["cron01"], _rendering_watched(monkeypatch))
    pushed = deploy.push(inv, "cron01", agent, hosts.get)
    assert agent.read_saw_rendering is True
    assert "deployer-a.timer" in pushed.result.started
    assert deploy.push(inv, "cron01", agent, hosts.get).plan.is_noop  # the epochs set in after are the host's


def test_a_state_read_that_fails_while_rendering_is_the_pushs_error(tmp_path, hosts, monkeypatch):
    inv = load(tmp_path, jobs("cron01"))
    agent = SlowReadAgent(hosts["cron01"], _rendering_watched(monkeypatch), fail=True)
    with pytest.raises(RemoteError, match="stopped answering"):
        deploy.push(inv, "cron01", agent, hosts.get)
    assert timers(hosts["cron01"]) == set()
