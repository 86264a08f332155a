"""push and move across hosts, with in-process agents (remote.LocalAgent) against temporary roots."""
from __future__ import annotations

import os
import time

import pytest

from deployer import deploy, inventory, remote
from deployer.errors import AgentRefused, DeployerError
from deployer.hostside import paths, protocol
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
    assert first.result.started == ("deployer-a.timer", "deployer-b.timer", paths.HEARTBEAT_TIMER)
    assert again.plan.is_noop and again.result is None


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
