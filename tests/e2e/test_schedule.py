"""Schedules on a real host: no unplanned run on a schedule change (systemd issue 16732),
@reboot at boot only, and one catch-up run after downtime (Persistent=true)."""
from __future__ import annotations

import calendar
import time

import pytest

from tests.cronhost import CronHost
from tests.e2e.runs import assert_each_slot_ran_once, heard, runs, wait_for_runs, wait_until
from tests.httpserver import json_reply

pytestmark = pytest.mark.e2e


def slot_of(request) -> int:
    """The slot a request was for (X-Deployer-Slot), unix seconds."""
    return calendar.timegm(time.strptime(request.headers["X-Deployer-Slot"], "%Y-%m-%dT%H:%M:%SZ"))


def calendar_job(server, name: str, calendar: str, key: str = "on_calendar") -> str:
    return f"[job:{name}]\n{key} = {calendar}\nurl = {server.url('/' + name)}\nretries = 0\n"


def test_a_schedule_change_causes_no_unplanned_run(shared_cron01, server, deployer, write_inventory):
    server.routes["/tick"] = json_reply({"code": 0})
    path = write_inventory(shared_cron01.inventory_host() + calendar_job(server, "tick", "*:*:0/10"))
    deployer("push", "-i", path, check=True)
    first = server.wait_for("/tick", timeout=60)[0]
    fired = slot_of(first)
    wait_until(lambda: time.time() >= fired + 4, 60, "4 s after the last slot")
    # The new schedule's first time after the last run (fired + 3 s) is already past: systemd
    # issue 16732 would run the job at once on reload, for that slot. It must wait for fired + 13 s.
    write_inventory(shared_cron01.inventory_host() + calendar_job(server, "tick", "*:*:03/10"))
    changed = deployer("push", "-i", path, check=True)
    # the timer, and its service: the trigger names its slot from the timer's calendar (issue 21)
    assert "2 change" in changed.stdout

    # Judged by the slot each run was for (a loaded machine may start any run late): the first run
    # of the new schedule is for a time after the change, never the one already past.
    new = wait_until(lambda: [slot_of(r) for r in server.received("/tick") if slot_of(r) % 10 == 3], 60,
                     "a run of the new schedule")
    assert new[0] >= fired + 13, f"unplanned run for {new[0] - fired}s after the last slot"


def test_reboot_job_runs_at_boot_not_at_push(tmp_path, server, deployer, write_inventory):
    server.routes["/boot"] = json_reply({"code": 0})
    with CronHost("cron01", workdir=tmp_path / "cron01", persistent=True) as host:
        path = write_inventory(host.inventory_host() + calendar_job(server, "boot", "@reboot", key="schedule"))
        pushed = deployer("push", "-i", path, "--json", check=True)
        assert "deployer-boot.timer" in pushed.stdout
        assert host.ssh("systemctl is-enabled deployer-boot.timer").stdout.strip() == "enabled"
        assert host.ssh("systemctl is-active deployer-boot.timer", check=False).stdout.strip() == "inactive"
        host.ssh("systemctl list-timers --all >/dev/null")  # a round trip after the push
        assert server.received("/boot") == []

        host.restart()

        server.wait_for("/boot", timeout=90)
        assert deployer("push", "-i", path, check=True).stdout.strip().endswith("unchanged")
        assert len(server.received("/boot")) == 1


def test_downtime_across_several_runs_gives_one_catch_up_run(tmp_path, server, deployer, write_inventory):
    server.routes["/often"] = json_reply({"code": 0})
    with CronHost("cron01", workdir=tmp_path / "cron01", persistent=True) as host:
        path = write_inventory(host.inventory_host() + calendar_job(server, "often", "*:*:0/10"))
        deployer("push", "-i", path, check=True)
        server.wait_for("/often", timeout=90)
        host.stop()
        down_at = time.time()
        second_slot = (int(down_at) // 10 + 2) * 10  # at least two scheduled times pass while it is down
        wait_until(lambda: time.time() > second_slot + 0.5, 30, "two scheduled times while down", every=0.2)
        before = len(server.received("/often"))

        host.start()

        server.wait_for("/often", count=before + 1, timeout=60)
        # The slots that elapsed before the timer started this boot (not `booted`: a loaded
        # machine takes longer than a slot to boot) are the catch-up's.
        timer_started = int(host.ssh("systemctl show -P ActiveEnterTimestamp --timestamp=unix "
                                     "deployer-often.timer").stdout.strip().lstrip("@").split(".")[0])
        next_slot = (timer_started // 10 + 1) * 10  # the first regular time after it started
        wait_until(lambda: time.time() > next_slot + 0.5, 60, "the first regular time after boot")

        def since_down():  # the runs of this boot, once every request the service got has its record
            found = [run for run in runs(host, "often") if run.triggered > down_at]
            return len(found) == len(server.received("/often")) - before and found

        # Judged by the slot each run named (its record): the catch-up names a slot from before
        # the timer started; every later run, a regular time after it.
        catch_up = [run for run in wait_until(since_down, 60, "a record of every run")
                    if run.slot(10) <= timer_started]
        assert len(catch_up) == 1, f"{len(catch_up)} runs on return; Persistent= should give one"


def test_pushes_during_firing_windows_neither_double_nor_drop_a_run(shared_cron01, server, deployer, write_inventory):
    """Each push rewrites the timer (same times, other text), so systemd restarts it mid-stream."""
    server.routes["/every2"] = json_reply({"code": 0})
    calendars = ["*:*:0/2", "*:*:00/2", "*-*-* *:*:0/2"]
    path = write_inventory(shared_cron01.inventory_host() + calendar_job(server, "every2", calendars[0]))
    deployer("push", "-i", path, check=True)
    wait_for_runs(shared_cron01, "every2", 2, timeout=60)
    for i in range(1, 7):
        write_inventory(shared_cron01.inventory_host() + calendar_job(server, "every2", calendars[i % 3]))
        assert "2 change" in deployer("push", "-i", path, check=True).stdout  # the timer and its service
    count = len(wait_for_runs(shared_cron01, "every2", 0))
    found = wait_for_runs(shared_cron01, "every2", count + 2, timeout=60)

    # Judged by slot (when PID 1 started each run the service heard), not by when requests
    # arrived: each 2 s slot from the first run to the last ran once.
    assert_each_slot_ran_once(heard(runs(shared_cron01, "every2"), server.received("/every2")), 2)
    assert all(run.record.result == "ok" for run in found)
