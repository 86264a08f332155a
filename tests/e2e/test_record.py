"""Every run leaves one structured journal record on the host (hostside/record.py), in both sandboxes."""
from __future__ import annotations

import json
import time

import pytest

from deployer.hostside.record import RUN_FINISHED, RunRecord
from tests.httpserver import Reply, json_reply

pytestmark = pytest.mark.e2e


def records(host, job: str) -> list[RunRecord]:
    out = host.ssh(f"journalctl --no-pager -q -o json DEPLOYER_JOB={job}").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert all(entry["MESSAGE_ID"] == RUN_FINISHED for entry in entries)
    assert all(entry["SYSLOG_IDENTIFIER"] == f"deployer-{job}" for entry in entries)
    return [RunRecord.from_journal(entry) for entry in entries]


def wait_for_records(host, job: str, count: int, timeout: float = 20) -> list[RunRecord]:
    deadline = time.monotonic() + timeout
    while True:
        found = records(host, job)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.parametrize("sandbox", ["strict", "fast"])
def test_each_run_writes_its_record_ok_and_failed(cron01, server, deployer, write_inventory, sandbox):
    server.routes["/good"] = json_reply({"code": 0})
    server.routes["/bad"] = Reply(500, b"exploded")
    path = write_inventory(cron01.inventory_host(sandbox=sandbox) + f"""
[job:good]
schedule = 0 3 * * *
url = {server.url('/good')}

[job:bad]
schedule = 0 4 * * *
url = {server.url('/bad')}
retries = 1
""")
    deployer("push", "-i", path, check=True)
    before = time.time()
    deployer("run", "good", "-i", path, check=True)
    deployer("run", "bad", "-i", path, check=False)

    [good] = wait_for_records(cron01, "good", 1)
    [bad] = wait_for_records(cron01, "bad", 1)
    assert (good.result, good.attempts, good.http_status, good.reason) == ("ok", 1, 200, "status 200")
    assert (bad.result, bad.attempts, bad.http_status) == ("failed", 2, 500)
    assert "500" in bad.reason
    assert before - 1 < good.started < time.time() and good.slot == int(good.started) // 60 * 60
    assert bad.duration >= 1.0  # the backoff between its two attempts
    # The run id is the one the service saw, so a record can be matched with the service's log.
    [request] = server.received("/good")
    assert request.headers["X-Deployer-Run-Id"] == good.run
