"""Alert policy on a real host (issue 23 item 1): a job that fails five times in a row and
then succeeds, every few seconds from its timer, under `alert_after = 3`, gives exactly one
alert and one recovery, counted at the receiver."""
from __future__ import annotations

import json
import re

import pytest

from tests.e2e.test_alerts import SECRETS_ENV, alert_inventory, robot, wait_alert_units_idle  # noqa: F401
from tests.httpserver import Reply, json_reply

pytestmark = pytest.mark.e2e


def test_alert_after_3_five_failures_then_a_success_give_one_alert_and_one_recovery(
        shared_cron01, server, robot, deployer, write_inventory):  # noqa: F811
    answers = iter([Reply(500, b"ledger locked")] * 5)
    server.routes["/flaky"] = lambda request: next(answers, json_reply({"code": 0}))
    path = write_inventory(alert_inventory(shared_cron01, robot, server, f"""
[job:flaky]
on_calendar = *:*:0/4
url = {server.url("/flaky")}
alert_after = 3
"""))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    # Five failures, then successes: wait for the second success, so that the first one's
    # recovery has surely been decided, then stop the timer and let the alert units finish.
    server.wait_for("/flaky", count=7, timeout=120)
    robot.wait_accepted(2, timeout=60)
    deployer("pause", "flaky", "-i", path, env=SECRETS_ENV, check=True)
    wait_alert_units_idle(shared_cron01)

    titles = [m["markdown"]["title"] for m in robot.accepted]
    assert titles == ["deployer: job flaky FAILED on cron01", "deployer: job flaky recovered on cron01"], titles
    assert robot.refused == []
    failed, recovered = (m["markdown"]["text"] for m in robot.accepted)
    assert "3 failed runs in a row, failing for " in failed
    lead = recovered.replace("\\", "").split("\n\n")[1]  # markdown-escaped
    assert re.fullmatch(r"flaky recovered after 5 failed runs, ([0-9]+[hms])+", lead), recovered
    history = deployer("history", "flaky", "-i", path, "--json", env=SECRETS_ENV, check=True)
    # A slot that came while a failing run still retried (a loaded machine) is listed skipped:
    # it called nothing, it is not a run (issue 23 item 6).
    results = [run["result"] for run in json.loads(history.stdout)["runs"] if run["result"] != "skipped"]
    assert results[:6] == ["failed"] * 5 + ["ok"], results
