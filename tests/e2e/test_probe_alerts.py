"""Issue 16 items 13 and 8 on a real host: every failed run yields exactly one delivered alert,
soon: failures merged by systemd into a running alert, a channel that was down, and a run that
a reboot interrupted."""
from __future__ import annotations

import json
import time

import pytest

from tests.cronhost import CronHost
from tests.e2e.conftest import _require_nspawn
from tests.e2e.test_alerts import SECRETS_ENV, alert_inventory, job, robot, wait_alert_units_idle  # noqa: F401
from tests.httpserver import Reply

pytestmark = pytest.mark.e2e

FAILED_MESSAGE = "d9b373ed55a64feb8242e02dbe79a49c"


def failed_invocations(host, job_name: str) -> list[str]:
    """systemd's own record of the job's failed runs (every boot the journal holds)."""
    out = host.ssh(f"journalctl --no-pager -o json MESSAGE_ID={FAILED_MESSAGE} _PID=1 "
                   f"UNIT=deployer-{job_name}.service").stdout
    return [json.loads(line)["INVOCATION_ID"] for line in out.splitlines() if line.strip()]


def alert_log(host) -> str:
    """What the alert units said (for a failing assertion)."""
    return host.ssh("journalctl --no-pager -o short-monotonic -b -u 'deployer-*alert*' -u 'deployer-*.service' "
                    "| tail -40", check=False).stdout


def reported(robot, invocation: str) -> int:
    """In how many delivered messages a run appears."""
    return sum(invocation in m["markdown"]["text"] for m in robot.accepted)


def wait_reported(robot, invocations: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(reported(robot, i) for i in invocations):
        time.sleep(0.2)


def test_probe16_13_failures_during_a_slow_alert_are_each_reported_once(shared_cron01, server, robot, deployer,  # noqa: F811
                                                                         write_inventory):
    """Before: six failures in a row while the first alert was still being sent (3 s a message):
    systemd merged the later OnFailure= starts into the running alert, and they were never reported."""
    server.routes["/e500"] = Reply(500, b"settlement exploded")
    robot.routes["/robot/send"] = lambda record: (time.sleep(3), robot._dingtalk(record))[1]
    path = write_inventory(alert_inventory(shared_cron01, robot, server, job("burst", server.url("/e500"))))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)

    for _ in range(6):
        shared_cron01.ssh("systemctl start deployer-burst.service", check=False)
    failed = failed_invocations(shared_cron01, "burst")
    assert len(failed) == 6
    wait_reported(robot, failed, timeout=40)
    wait_alert_units_idle(shared_cron01)
    titles = [m["markdown"]["title"] for m in robot.accepted]
    assert {i: reported(robot, i) for i in failed} == {i: 1 for i in failed}, f"{len(titles)} messages: {titles}"
    assert robot.refused == []


def test_probe16_13_an_alert_goes_out_soon_after_its_channel_comes_back(shared_cron01, server, robot, deployer,  # noqa: F811
                                                                        write_inventory):
    """Before: an alert that could not be delivered waited for the next failure (forever if none).
    Now the alert unit restarts itself (RestartSec=20s) and sends what is queued."""
    server.routes["/e500"] = Reply(500, b"settlement exploded")
    down = Reply(502, b"bad gateway")
    robot.routes["/robot/send"], working = down, robot.routes["/robot/send"]
    path = write_inventory(alert_inventory(shared_cron01, robot, server, job("lonely", server.url("/e500"))))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)

    deployer("run", "lonely", "-i", path, env=SECRETS_ENV, check=False)
    deadline = time.monotonic() + 30
    while len(robot.received("/robot/send")) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(robot.received("/robot/send")) == 3, "three attempts while the channel is down"
    robot.routes["/robot/send"] = working
    back = time.monotonic()
    [invocation] = failed_invocations(shared_cron01, "lonely")
    wait_reported(robot, [invocation], timeout=60)
    assert reported(robot, invocation) == 1, f"not delivered soon after the channel came back:\n{alert_log(shared_cron01)}"
    assert time.monotonic() - back < 60, "the issue asks for soon: within a minute"
    wait_alert_units_idle(shared_cron01)
    assert len(robot.accepted) == 1


@pytest.fixture
def persistent01(tmp_path):
    _require_nspawn()
    with CronHost("cron01", workdir=tmp_path / "cron01", persistent=True) as host:
        yield host


def test_probe16_8_a_run_interrupted_by_a_reboot_is_alerted_after_boot(persistent01, server, robot,  # noqa: F811
                                                                       deployer, write_inventory):
    """Before: a reboot during a run lost it silently: no alert (an OnFailure= start conflicts
    with shutdown, and a SIGTERM exit counted as clean)."""
    host = persistent01
    server.routes["/slow"] = Reply(200, b'{"code":0}', delay=20)
    path = write_inventory(alert_inventory(host, robot, server, job("nightly", server.url("/slow"),
                                                                      "timeout = 60s")))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    host.ssh("systemctl start --no-block deployer-nightly.service")
    server.wait_for("/slow")
    host.restart()

    [invocation] = failed_invocations(host, "nightly")
    wait_reported(robot, [invocation], timeout=45)
    assert reported(robot, invocation) == 1, f"messages: {robot.accepted}\n{alert_log(host)}"
    [message] = robot.accepted
    assert message["markdown"]["title"] == "deployer: job nightly FAILED on cron01"
    assert "interrupted" in message["markdown"]["text"]
    # Before: status said "never run" after the reboot (systemd forgets the run; its record stays).
    [row] = json.loads(deployer("status", "-i", path, "--json", env=SECRETS_ENV, check=True).stdout)["jobs"]
    assert (row["result"], row["last_result"]) == ("failed", "failed") and "interrupted" in row["reason"]


def test_issue22_8_a_failure_merged_into_a_running_alert_after_a_clock_step_back_is_reported(  # noqa: F811
        shared_cron01, server, robot, deployer, write_inventory):
    """Before: the job's alert state kept a watermark in wall time, and lookups began there. After
    a failure with the clock a day ahead, the clock stepped back: the next alert still sent its
    own run ($MONITOR_*), but failures systemd merged into it while it was sending were never
    found. Now lookups read the journal after the cursor of the last failure reported.

    The containers share this machine's kernel clock (and nspawn drops CAP_SYS_TIME), so the test
    steps no clock: after the first failure's alert, its state is put where an alert under a clock
    a day ahead leaves it (PID 1 stamps its entries with the wall clock, and the watermark and the
    ids are those stamps: each a day later). A cursor, where the alert wrote one, stays: it is the
    journal's, whatever the clock."""
    host = shared_cron01
    server.routes["/e500"] = Reply(500, b"settlement exploded")
    path = write_inventory(alert_inventory(host, robot, server, job("stepped", server.url("/e500"))))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    host.ssh("systemctl start deployer-stepped.service", check=False)
    [first] = failed_invocations(host, "stepped")
    wait_reported(robot, [first], timeout=40)
    wait_alert_units_idle(host)
    seen = "/var/lib/private/deployer-alerts/seen/stepped"
    state = json.loads(host.ssh(f"cat {seen}").stdout)
    day = 86400 * 10**6
    state.update(watermark=state["watermark"] + day, ids=[[i, t + day] for i, t in state["ids"]])
    host.ssh(f"cat > {seen}", input=json.dumps(state))  # in place: the alert user keeps it

    robot.routes["/robot/send"] = lambda record: (time.sleep(3), robot._dingtalk(record))[1]
    for _ in range(3):  # the second and third while the first's alert is still sending: merged
        host.ssh("systemctl start deployer-stepped.service", check=False)
    later = [i for i in failed_invocations(host, "stepped") if i != first]
    assert len(later) == 3
    wait_reported(robot, later, timeout=60)
    wait_alert_units_idle(host)
    assert {i: reported(robot, i) for i in [first] + later} == {i: 1 for i in [first] + later}, alert_log(host)
