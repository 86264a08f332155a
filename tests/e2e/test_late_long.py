"""Late slots and long runs, told by the host itself (issue 23 item 2: alert_late, alert_long), on
a real host, to a real DingTalk-style robot: one alert each and one message when it clears,
counted at the receiver; a paused job is never late."""
from __future__ import annotations

import time

import pytest

from tests.e2e.test_alerts import SECRETS_ENV, alert_inventory, robot  # noqa: F401
from tests.httpserver import Reply

pytestmark = pytest.mark.e2e

WATCH_TIMER = "deployer-host@watch.timer"
# The late tests' jobs: every 10 s, not every minute, so that a slot is due (and late) within
# seconds of a timer stopping, not up to a minute later; alert_late stays 30 s (the least the
# watcher, looking every 15 s, can tell).
EVERY_10S = "*:*:0/10"
SENDER = "deployer-host@watch-send.service"


def run_passes(host, count: int = 2) -> None:
    """`count` watcher passes started now, by hand (each sees the host as it is now: the timer's
    own pass, every 15 s, may merge into the first), then until the sender one of them may have
    started is done. What a pass of the timer would find, without waiting for the timer."""
    for _ in range(count):
        host.ssh("systemctl start deployer-host@watch.service", timeout=120)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = host.ssh(f"systemctl is-active {SENDER}; systemctl list-jobs --no-legend {SENDER}",
                         check=False).stdout.split()
        if state and state[0] in ("inactive", "failed") and len(state) == 1:
            return
        time.sleep(0.5)
    raise AssertionError("the sender never ended:\n" + watcher_log(host))


def titles(robot):  # noqa: F811
    return [m["markdown"]["title"] for m in robot.accepted]


LATE = "deployer: job tick LATE on cron02"


def said(robot, job: str) -> list:  # noqa: F811
    """The watcher's events about `job` the robot accepted, in order, by their paragraphs (a message
    may merge them with other kinds): "late", "late_ended", "long", "long_ended"."""
    openings = {"late": f"{job}: slot ", "late_ended": f"{job}: a run started at ",
                "long": f"{job} still running after ", "long_ended": f"{job} finished after "}
    found = []
    for m in robot.accepted:
        for paragraph in m["markdown"]["text"].replace("\\", "").split("\n\n"):
            found += [kind for kind, opening in openings.items() if paragraph.startswith(opening)]
    return found


def watcher_log(host) -> str:
    return host.ssh(f"journalctl --no-pager -o short-precise -n 40 -u deployer-host@watch.service -u {SENDER}",
                    check=False).stdout


def test_a_run_longer_than_alert_long_alerts_once_and_once_more_when_it_ends(
        shared_cron01, server, robot, deployer, write_inventory):  # noqa: F811
    server.routes["/settle"] = Reply(200, b'{"code":0}', delay=50)
    path = write_inventory(alert_inventory(shared_cron01, robot, server, f"""
[job:settle]
schedule = 0 3 * * *
url = {server.url("/settle")}
timeout = 120s
alert_long = 30s
"""))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    assert shared_cron01.ssh(f"systemctl is-active {WATCH_TIMER}", check=False).stdout.strip() == "active"
    shared_cron01.ssh("systemctl start --no-block deployer-settle.service")
    server.wait_for("/settle", timeout=60)
    robot.wait_accepted(2, timeout=180)
    run_passes(shared_cron01)  # two more passes after the run ended: nothing more is sent

    assert titles(robot) == ["deployer: job settle STILL RUNNING on cron01",
                             "deployer: job settle finished on cron01"], (titles(robot), watcher_log(shared_cron01).splitlines())
    assert robot.refused == []
    long, ended = (m["markdown"]["text"].replace("\\", "") for m in robot.accepted)
    assert "settle still running after " in long and "(alert_long = 30s), since " in long, long
    assert "settle finished after " in ended and ": success, run " in ended, ended


def test_a_stopped_timer_is_late_once_until_a_run_starts_and_a_paused_job_is_never_late(
        shared_cron01, server, robot, deployer, write_inventory):  # noqa: F811
    server.routes["/tick"] = Reply(200, b'{"code":0}')
    server.routes["/quiet"] = Reply(200, b'{"code":0}')
    path = write_inventory(alert_inventory(shared_cron01, robot, server, f"""
[job:tick]
on_calendar = {EVERY_10S}
url = {server.url("/tick")}
alert_late = 30s

[job:quiet]
on_calendar = {EVERY_10S}
url = {server.url("/quiet")}
alert_late = 30s
"""))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    server.wait_for("/tick", timeout=90)
    server.wait_for("/quiet", timeout=90)
    # Both stop running at once: one by hand (late), one paused (intended).
    deployer("pause", "quiet", "-i", path, env=SECRETS_ENV, check=True)
    shared_cron01.ssh("systemctl stop deployer-tick.timer")
    robot.wait_accepted(1, timeout=180)
    run_passes(shared_cron01)  # still late: told once
    assert titles(robot) == ["deployer: job tick LATE on cron01"], (titles(robot), watcher_log(shared_cron01).splitlines())
    late = robot.accepted[0]["markdown"]["text"].replace("\\", "")
    assert "(alert_late = 30s): its timer is inactive" in late, late

    runs = len(server.received("/tick"))
    shared_cron01.ssh("systemctl start deployer-tick.timer")
    server.wait_for("/tick", count=runs + 1, timeout=90)
    robot.wait_accepted(2, timeout=120)
    run_passes(shared_cron01)
    assert titles(robot) == ["deployer: job tick LATE on cron01",
                             "deployer: job tick started again on cron01"], (titles(robot), watcher_log(shared_cron01).splitlines())
    # quiet's slots were as late as tick's, for longer: a paused job is never late.
    assert not [m for m in robot.accepted if "quiet" in m["markdown"]["text"]]
    assert robot.refused == []


def test_a_held_host_is_late_and_the_release_ends_it(tmp_path, server, deployer, write_inventory):
    """A host that came back after its lease ran out holds its jobs (failover): that is what the
    late alert is for, and it names the hold."""
    from tests.cronhost import CronHost
    from tests.e2e.conftest import _require_nspawn
    from tests.e2e.test_alerts import SECRET, TOKEN
    from tests.robots import Robot

    _require_nspawn()
    server.routes["/tick"] = Reply(200, b'{"code":0}')
    host = CronHost("cron02", workdir=tmp_path / "cron02", persistent=True).start()
    try:
        with Robot(token=TOKEN, secret=SECRET) as robot:
            path = write_inventory(alert_inventory(host, robot, server, f"""
[job:tick]
on_calendar = {EVERY_10S}
url = {server.url("/tick")}
alert_late = 30s
""").replace(host.inventory_host(), host.inventory_host(lease="10s")))
            deployer("push", "-i", path, env=SECRETS_ENV, check=True)
            server.wait_for("/tick", timeout=90)
            host.stop()
            time.sleep(12)  # the lease (10 s) runs out while the host is down
            host.start()
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and "late" not in said(robot, "tick"):
                time.sleep(0.5)
            late = [m["markdown"]["text"].replace("\\", "") for m in robot.accepted
                    if "job tick LATE" in m["markdown"]["title"]]
            assert len(late) == 1, (titles(robot), watcher_log(host).splitlines())
            assert "the host holds its jobs (failover hold)" in late[0], late[0]

            deployer("push", "-i", path, env=SECRETS_ENV, check=True)  # releases the hold
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and "late_ended" not in said(robot, "tick"):
                time.sleep(0.5)
            run_passes(host)
            # The run that failed at the held boot recovers after the release: its message may
            # merge with "started again" (one channel, one window), titled for both.
            assert said(robot, "tick") == ["late", "late_ended"], (titles(robot), watcher_log(host).splitlines())
            assert [t for t in titles(robot) if "LATE" in t or "started again" in t] in (
                [LATE, "deployer: job tick started again on cron02"],
                [LATE, "deployer: job tick recovered; job tick started again on cron02"]), titles(robot)
    finally:
        host.stop()
