"""One job, one host: ownership, the cross-host check, `move`, and pause/resume, on real hosts."""
from __future__ import annotations

import json
import time

import pytest

from deployer.contract import paths

from tests.e2e.runs import (assert_each_slot_ran_once, assert_handed_over, described, heard, records, runs,
                            timer_stopped, wait_for_runs, wait_until)
from tests.httpserver import json_reply

pytestmark = pytest.mark.e2e


def job(server, name: str, host: str, calendar: str = "0 3 * * *") -> str:
    key = "on_calendar" if calendar.startswith("*:") else "schedule"
    return f"[job:{name}]\n{key} = {calendar}\nurl = {server.url('/' + name)}\nhost = {host}\nretries = 0\n"


def installed(host) -> list[str]:
    """The job timers (the lease's timer has an instance name: deployer-lease@renew.timer)."""
    return host.ssh("ls /etc/systemd/system | grep '^deployer-.*timer$' | grep -v @ || true").stdout.split()


def test_another_hosts_jobs_are_refused_on_a_machine_that_has_an_owner(shared_cron01, server, deployer, write_inventory):
    deployer("push", "-i", write_inventory(shared_cron01.inventory_host() + job(server, "a", "cron01")), check=True)
    # An inventory whose cron02 points, by mistake, at the machine cron01 already is.
    mistaken = shared_cron01.inventory_host().replace("[host:cron01]", "[host:cron02]")
    path = write_inventory(mistaken + job(server, "b", "cron02"), name="mistake.ini")

    result = deployer("push", "--host", "cron02", "-i", path, check=False)

    assert result.returncode == 1
    assert "that machine runs the jobs of host cron01" in result.stderr
    assert installed(shared_cron01) == ["deployer-a.timer"]


def test_a_job_still_installed_elsewhere_is_not_pushed_to_a_second_host(cron01, cron02, server, deployer,
                                                                         write_inventory):
    hosts = cron01.inventory_host() + cron02.inventory_host()
    path = write_inventory(hosts + job(server, "settle", "cron01"))
    deployer("push", "--host", "cron01", "-i", path, check=True)
    write_inventory(hosts + job(server, "settle", "cron02"))

    result = deployer("push", "--host", "cron02", "-i", path, check=False)

    assert result.returncode == 1
    assert "job settle is still installed on cron01" in result.stderr
    assert "deployer move --from cron01 --to cron02" in result.stderr
    assert installed(cron02) == []


def test_move_hands_a_job_over_without_a_double_or_a_missed_run(cron01, cron02, server, deployer, write_inventory):
    server.routes["/tick"] = json_reply({"code": 0})
    hosts = cron01.inventory_host() + cron02.inventory_host()
    path = write_inventory(hosts + job(server, "tick", "cron01", "*:*:0/5"))
    deployer("push", "--host", "cron01", "-i", path, check=True)
    server.wait_for("/tick", count=2, timeout=90)
    write_inventory(hosts + job(server, "tick", "cron02", "*:*:0/5"))

    moved = deployer("move", "--from", "cron01", "--to", "cron02", "-i", path, "--json", check=True)
    assert json.loads(moved.stdout)["moved"] == ["tick"]
    wait_for_runs(cron02, "tick", 3, timeout=40)

    assert installed(cron01) == [] and installed(cron02) == ["deployer-tick.timer"]
    # Judged by slot (when PID 1 of either host started each run the service heard), not by when
    # requests arrived: each 5 s slot ran once, on one host.
    both = sorted(runs(cron01, "tick") + runs(cron02, "tick"), key=lambda run: run.triggered)
    try:
        assert_each_slot_ran_once(heard(both, server.received("/tick")), 5)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{described({'cron01': cron01, 'cron02': cron02}, 'tick')}") from None
    assert "up to date" in deployer("push", "--host", "cron02", "-i", path, check=True).stdout


def test_a_run_still_starting_when_its_job_moves_names_its_own_slot(cron01, cron02, server, deployer,
                                                                    write_inventory):
    """The move's push to the old host removed the timer's stamp before that host's last run had
    read it, and the run named the timer's first slot again: a double (ci-C, 2026-12-07, on a
    slow machine). Here that run is held until the new host has run too: its trigger reads the
    agent's run request (slot.read_request) just before the stamp, and that file is a FIFO the
    test writes to when it is time (a loaded host delays a trigger the same way, by seconds)."""
    server.routes["/tick"] = json_reply({"code": 0})
    hosts = cron01.inventory_host() + cron02.inventory_host()
    path = write_inventory(hosts + job(server, "tick", "cron01", "*:*:0/5"))
    deployer("push", "--host", "cron01", "-i", path, check=True)
    wait_for_runs(cron01, "tick", 2, timeout=40)  # the timer's first slot is long done
    request = f"{paths.BACKFILL_DIR}/deployer-tick.json"
    cron01.ssh(f"mkdir -p {paths.BACKFILL_DIR} && mkfifo -m 0644 {request}")
    gated_at = time.time()
    held = wait_until(lambda: [run.run for run in runs(cron01, "tick") if not run.record and run.triggered > gated_at],
                      20, "a run of tick held before it reads its stamp", every=0.5)

    write_inventory(hosts + job(server, "tick", "cron02", "*:*:0/5"))
    deployer("move", "--from", "cron01", "--to", "cron02", "-i", path, check=True)
    wait_for_runs(cron02, "tick", 2, timeout=40)
    # the host keeps the stamp for that run (the trigger's fallback, its own start, would name
    # the right slot here too: the process started on time)
    assert cron01.ssh(f"test -e {paths.TIMER_STAMPS}/stamp-deployer-tick.timer", check=False).returncode == 0, \
        "the push removing the job took the stamp its held run has yet to read"
    cron01.ssh(f"timeout 20 sh -c 'echo {{}} > {request}' && rm {request}")
    wait_until(lambda: all(run.record for run in runs(cron01, "tick")), 30, "the held run's record", every=0.5)

    assert len(held) == 1, held
    # Each host's runs by its own timer's rule, and the handover between them: a slot the old
    # timer met while the held run went is skipped there (as any overlap), and when the move ended
    # after it, the new host starts after it too (ci-G, 2026-12-07: the old timer stopped at :40.07,
    # after the slot :40; in every earlier run the move had stopped it before the slot).
    received = server.received("/tick")
    old, new = (heard(runs(host, "tick"), received) for host in (cron01, cron02))
    try:
        assert_each_slot_ran_once(old, 5)
        assert_each_slot_ran_once(new, 5)
        assert_handed_over(old, new, 5, timer_stopped(cron01, "tick"))
        assert old[-1].run == held[0] and old[-1].slot(5) == int(old[-1].triggered) // 5 * 5  # its own slot
    except AssertionError as error:
        raise AssertionError(f"{error}\n{described({'cron01': cron01, 'cron02': cron02}, 'tick')}") from None
    # Two of cron02's slots came while the held run went: they are not its overlaps to record
    # as skipped (cron02 ran them; the timer here had stopped)
    assert records(cron01, "tick", skipped=True) == []


def test_pause_survives_a_push_and_resume_restarts_the_timer(shared_cron01, server, deployer, write_inventory):
    server.routes["/tick"] = json_reply({"code": 0})
    path = write_inventory(shared_cron01.inventory_host() + job(server, "tick", "cron01", "*:*:0/2"))
    deployer("push", "-i", path, check=True)
    server.wait_for("/tick", timeout=60)

    deployer("pause", "tick", "-i", path, check=True)
    write_inventory(shared_cron01.inventory_host() + job(server, "tick", "cron01", "*:*:1/2"))  # a change while paused
    pushed = deployer("push", "-i", path, check=True)
    paused_at = time.time()
    status = json.loads(deployer("status", "-i", path, "--json", check=True).stdout)["jobs"][0]
    # Long enough for two runs, were the timer running (it must not be): two of its slots (odd
    # seconds) after paused_at + 1, and a second for a request to arrive.
    wait_until(lambda: len([t for t in range(int(paused_at) + 2, int(time.time()) - 1) if t % 2]) >= 2, 20,
               "two slots of the paused timer")

    assert "deployer-tick.timer stays paused" in pushed.stdout
    assert status["paused"] and status["next"] is None
    assert shared_cron01.ssh("systemctl is-enabled deployer-tick.timer", check=False).stdout.strip() == "disabled"
    # By the slot each request was for (a run the timer started before the pause may reach the
    # service late on a loaded machine): none after the pause.
    paused_slot = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(paused_at + 1))
    assert [r.headers["X-Deployer-Slot"] for r in server.received("/tick")
            if r.headers["X-Deployer-Slot"] > paused_slot] == []

    deployer("resume", "tick", "-i", path, check=True)
    resumed = len(server.received("/tick"))
    server.wait_for("/tick", count=resumed + 1, timeout=60)
    assert not json.loads(deployer("status", "-i", path, "--json", check=True).stdout)["jobs"][0]["paused"]
