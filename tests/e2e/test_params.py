"""Issue 23 item 7, on a real host: a job declares run parameters; a scheduled run fills the
defaults, `deployer run JOB --set NAME=VALUE` fills what was asked, history shows the values
and who asked. Judged by what the service received and what the run records say."""
from __future__ import annotations

import json

import pytest

from tests.e2e.runs import records, wait_until
from tests.httpserver import json_reply

pytestmark = pytest.mark.e2e


def test_scheduled_runs_fill_defaults_and_run_set_fills_values_recorded_with_who(shared_cron01, server, deployer,
                                                                                 write_inventory):
    host = shared_cron01
    server.routes["/tick"] = server.routes["/settle"] = json_reply({"code": 0})
    path = write_inventory(host.inventory_host() + f"""
[job:tick]
on_calendar = *:*:0/2
url = {server.url('/tick')}?n=${{{{n}}}}
params = n=7
retries = 0

[job:settle]
schedule = 0 3 1 1 *
url = {server.url('/settle')}?batch=${{{{batch}}}}
body = {{"region": "${{{{region}}}}"}}
params = batch=1, region=cn
retries = 0
""")
    deployer("push", "-i", path, "--yes", check=True)
    scheduled = server.wait_for("/tick", timeout=60)[0]
    assert scheduled.path == "/tick?n=7" and not scheduled.headers["X-Deployer-Slot"].startswith("manual-")

    ran = deployer("run", "settle", "--set", "batch=42&x", "--set", 'region=e"u', "-i", path, check=True)
    [call] = server.received("/settle")
    assert call.path == "/settle?batch=42%26x"  # a value is data in the query, never a new field
    assert json.loads(call.body) == {"region": 'e"u'}  # and a string in a JSON body
    assert "params batch=42&x, region=e\"u (asked by root@" in ran.stdout

    refused = deployer("run", "settle", "--set", "batchh=1", "-i", path, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("deployer: error: job settle: --set batchh: not a parameter of the job "
                                      "(its params: batch, region)")
    assert len(server.received("/settle")) == 1

    history = json.loads(deployer("history", "settle", "--json", "-i", path, check=True).stdout)
    [manual] = history["runs"]
    assert manual["params"] == {"batch": "42&x", "region": 'e"u'}
    assert manual["run_by"].startswith("root@")
    table = deployer("history", "settle", "-i", path, check=True).stdout
    assert "PARAMS" in table.splitlines()[0] and 'batch=42&x,region=e"u (by root@' in table
    wait_until(lambda: records(host, "tick"), timeout=60, what="a record of the scheduled run")
    ticks = [run for run in json.loads(deployer("history", "tick", "--json", "-i", path, check=True).stdout)["runs"]
             if run["result"] != "skipped"]  # a slot skipped while a run went on a loaded machine called nothing
    assert ticks and all(run["params"] == {"n": "7"} and run["run_by"] is None for run in ticks)
