"""Issue 22 item 14, issue 24 item 2 on real hosts: `status` shows what each host runs, not what
the inventory says: a schedule edited and not pushed, a job running on two hosts (the cut-off
host of the host-down runbook), one machine under two host names, an unreachable host's jobs."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def job(server, name: str, host: str, schedule: str) -> str:
    return f"[job:{name}]\nschedule = {schedule}\nurl = {server.url('/' + name)}\nhost = {host}\nretries = 0\n"


def table(text: str) -> dict:
    """(host, job) -> its line of the table."""
    return {tuple(line.split()[:2]): line for line in text.splitlines()[1:] if line.startswith("cron")}


def test_status_shows_what_each_host_runs(shared_cron01, cron02, server, deployer, write_inventory):
    cron01 = shared_cron01
    # `tick` pushed to both hosts (each pushed from an inventory that knows only itself): as after a
    # `move --force` while cron01 was cut off, not down, and back within its lease.
    deployer("push", "-i", write_inventory(cron01.inventory_host() + job(server, "settle", "cron01", "0 4 * * *")
                                           + job(server, "tick", "cron01", "0 5 * * *"), "cron01.ini"), check=True)
    deployer("push", "-i", write_inventory(cron02.inventory_host() + job(server, "tick", "cron02", "0 5 * * *"),
                                           "cron02.ini"), check=True)
    # The fleet's inventory: tick on cron02; settle's schedule edited, not pushed; `fresh` not pushed.
    fleet = (cron01.inventory_host() + cron02.inventory_host() + job(server, "settle", "cron01", "0 6 * * *")
             + job(server, "tick", "cron02", "0 5 * * *") + job(server, "fresh", "cron02", "0 7 * * *"))
    path = write_inventory(fleet)

    text = deployer("status", "-i", path, check=True)
    rows = table(text.stdout)
    assert "*-*-* 04:00:00 UTC" in rows["cron01", "settle"]  # what cron01 runs, not the edited 0 6 * * *
    assert rows["cron01", "settle"].endswith("schedule differs from inventory (0 6 * * *): push pending")
    assert "DOUBLE RUN: not in inventory for cron01, and runs on cron02 too" in rows["cron01", "tick"]
    assert "DOUBLE RUN: also runs on cron01" in rows["cron02", "tick"]
    assert "not installed" in rows["cron02", "fresh"] and "SAME MACHINE" not in text.stdout  # two containers
    document = json.loads(deployer("status", "-i", path, "--json", check=True).stdout)
    jobs = {(r["host"], r["job"]): r for r in document["jobs"]}
    assert (jobs["cron01", "tick"]["in_inventory"], jobs["cron01", "tick"]["also_on"]) == (False, ["cron02"])
    machines = [h["machine"] for h in document["hosts"]]
    assert all(machines) and machines[0] != machines[1]

    # A paused timer still reports its calendar: no false drift, and the real one stays flagged.
    deployer("pause", "settle", "-i", path, check=True)
    [settle] = [r for r in json.loads(deployer("status", "-i", path, "--json", check=True).stdout)["jobs"]
                if r["job"] == "settle"]
    assert (settle["result"], settle["schedule"], settle["schedule_differs"]) == (
        "paused", ["*-*-* 04:00:00 UTC"], True)

    # One machine under two names: listed once, flagged, exit 1.
    twice = write_inventory(fleet + cron01.inventory_host().replace("[host:cron01]", "[host:cron01b]"), "twice.ini")
    same = deployer("status", "-i", twice, check=False)
    assert same.returncode == 1, same.stdout + same.stderr
    assert "host cron01b: SAME MACHINE as host cron01" in same.stdout and "cron01b" not in table(same.stdout)
    assert "deployer: error: hosts cron01 and cron01b are one machine" in same.stderr
    assert "DOUBLE RUN: also runs on cron01, which" in table(same.stdout)["cron02", "tick"]  # one machine, once

    # An unreachable host's jobs: listed, unknown.
    cron02.stop()
    down = deployer("status", "-i", path, check=False)
    assert down.returncode == 1
    rows = table(down.stdout)
    assert {key for key in rows if key[0] == "cron02"} == {("cron02", "tick"), ("cron02", "fresh")}
    assert all(rows[key].split()[5:9] == ["unknown", "host", "unreachable:", "cannot"] for key in rows
               if key[0] == "cron02")
    assert "which gave no status: it may run there too" in rows["cron01", "tick"]
