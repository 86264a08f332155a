"""Chaining on a real host (issue 23 item 8): `after = extract` runs when extract succeeded, for
extract's slot; `on_failure_run = cleanup` runs when it failed, for that slot; both are started by
extract's unit (OnSuccess=/OnFailure=) and key their call with extract's slot, and `history`
says why the chained job ran or did not."""
from __future__ import annotations

import json

import pytest

from tests.e2e.runs import wait_until
from tests.httpserver import Reply, json_reply

pytestmark = pytest.mark.e2e


def chain_inventory(host, server, report: bool = True) -> str:
    return host.inventory_host() + f"""
[defaults]
retries = 0
timeout = 10s

[job:extract]
on_calendar = *:*:0/5
url = {server.url("/extract")}
on_failure_run = cleanup

[job:load]
after = extract
url = {server.url("/load")}

[job:cleanup]
url = {server.url("/cleanup")}

""" + (f"""
[job:report]
after = load
url = {server.url("/report")}
""" if report else "")


def test_after_runs_on_success_and_on_failure_run_on_failure_each_with_the_parents_slot(
        shared_cron01, server, deployer, write_inventory):
    answers = iter([json_reply({"code": 0}), Reply(500, b"source down")])
    server.routes["/extract"] = lambda request: next(answers, Reply(500, b"source down"))
    server.routes["/load"] = json_reply({"code": 0})
    server.routes["/cleanup"] = json_reply({"code": 0})
    server.routes["/report"] = json_reply({"code": 0})
    path = write_inventory(chain_inventory(shared_cron01, server))

    plan = deployer("plan", "-i", path, check=True).stdout
    assert "chain: load: after extract succeeded" in plan and "chain: cleanup: after extract failed" in plan, plan
    deployer("push", "-i", path, check=True)
    # Only extract has a timer: the chained jobs are started by its unit.
    timers = shared_cron01.ssh("systemctl list-timers --all --no-legend --plain 'deployer-*'").stdout
    assert "deployer-extract.timer" in timers and "deployer-load" not in timers and "deployer-cleanup" not in timers
    assert "deployer-report" not in timers

    server.wait_for("/extract", count=2, timeout=60)
    server.wait_for("/cleanup", count=1, timeout=60)
    deployer("pause", "extract", "-i", path, check=True)
    loads = server.wait_for("/load", count=1, timeout=60)

    extracts = server.received("/extract")
    ok_slot, failed_slot = (r.headers["X-Deployer-Slot"] for r in extracts[:2])
    assert extracts[0].headers["Idempotency-Key"] == f"extract/{ok_slot}"
    # load ran once, for the slot extract succeeded in, under that slot's key.
    assert [r.headers["Idempotency-Key"] for r in loads] == [f"load/{ok_slot}"]
    assert loads[0].headers["X-Deployer-Slot"] == ok_slot
    # A chain goes on: report (after load) runs for the same slot.
    reports = server.wait_for("/report", count=1, timeout=60)
    assert [r.headers["Idempotency-Key"] for r in reports] == [f"report/{ok_slot}"]
    # cleanup ran for the failed slot (and only for failed ones).
    cleanups = server.received("/cleanup")
    assert cleanups[0].headers["Idempotency-Key"] == f"cleanup/{failed_slot}"
    assert ok_slot not in {r.headers["X-Deployer-Slot"] for r in cleanups}

    def history(job):
        document = json.loads(deployer("history", job, "-i", path, "--json", check=True).stdout)
        return document if document["runs"] else None

    load = wait_until(lambda: history("load"), 30, "load's history")
    assert load["after"] == "extract"
    assert [(r["result"], r["key"], r["after"]) for r in load["runs"]][:1] == [
        ("ok", f"load/{ok_slot}", f"extract {ok_slot} succeeded")]
    reasons = [entry["reason"] for entry in load["not_run"]]
    assert f"extract {failed_slot} failed" in reasons, load["not_run"]
    text = deployer("history", "load", "-i", path, check=True).stdout
    assert f"after extract {ok_slot} succeeded" in text and f"not run: extract {failed_slot} failed" in text, text
    cleanup = wait_until(lambda: history("cleanup"), 30, "cleanup's history")
    assert cleanup["runs"][0]["after"] == f"extract {failed_slot} failed"

    rows = {row["job"]: row for row in json.loads(deployer("status", "-i", path, "--json", check=True).stdout)["jobs"]}
    assert (rows["load"]["result"], rows["load"]["expression"], rows["load"]["next"]) == ("ok", "after extract", None)
    plan = json.loads(deployer("plan", "-i", path, "--json", check=True).stdout)
    assert plan["chains"] == [{"job": "load", "after": "extract", "on": "success"},
                              {"job": "cleanup", "after": "extract", "on": "failure"},
                              {"job": "report", "after": "load", "on": "success"}]
    paused = deployer("pause", "load", "-i", path, check=False)
    assert paused.returncode == 1 and paused.stderr.count("\n") == 1 and "pause extract instead" in paused.stderr

    # A manual run of a chained job is manual (its own key), not the last chained slot.
    deployer("run", "load", "-i", path, check=True)
    assert server.received("/load")[-1].headers["Idempotency-Key"].startswith("load/manual-")


def test_a_chain_across_hosts_or_in_a_cycle_is_one_line_and_exit_1_before_any_host_is_asked(
        shared_cron01, server, deployer, write_inventory):
    good = chain_inventory(shared_cron01, server, report=False)
    other_host = good.replace("[defaults]", "[host:cron02]\naddress = 127.0.0.2\n\n[defaults]").replace(
        "[job:load]\n", "[job:load]\nhost = cron02\n").replace("[job:extract]\n", "[job:extract]\nhost = cron01\n") \
        .replace("[job:cleanup]\n", "[job:cleanup]\nhost = cron01\n")
    cycle = good.replace("on_failure_run = cleanup", "on_failure_run = cleanup").replace(
        "[job:cleanup]\n", "[job:cleanup]\non_failure_run = extract\n").replace("on_calendar = *:*:0/5\n", "")
    cycle = cycle.replace("[job:extract]\n", "[job:extract]\nafter = cleanup\n")
    for text, where in ((other_host, "[job:load] after: [job:extract] runs on host cron01"),
                        (cycle, "is part of a cycle")):
        path = write_inventory(text, name="bad.ini")
        for command in (["validate"], ["push", "--host", "cron01", "--yes"]):
            result = deployer(*command, "-i", path, check=False)
            assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
            assert path in result.stderr and where in result.stderr, result.stderr
