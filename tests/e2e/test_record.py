"""Every run leaves one structured journal record on the host (contract/record.py), in both sandboxes."""
from __future__ import annotations

import json
import time

import pytest

from deployer.contract.record import RUN_FINISHED, RunRecord, sent_by_the_job
from tests.httpserver import Reply, json_reply

pytestmark = pytest.mark.e2e


def records(host, job: str) -> list[RunRecord]:
    """The job's records that its own runs sent (what history, status and the metrics accept)."""
    entries = [e for e in records_any_sender(host, job) if sent_by_the_job(e)]
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
def test_each_run_writes_its_record_ok_and_failed(shared_cron01, server, deployer, write_inventory, sandbox):
    server.routes["/good"] = json_reply({"code": 0})
    server.routes["/bad"] = Reply(500, b"exploded")
    path = write_inventory(shared_cron01.inventory_host(sandbox=sandbox) + f"""
[job:good]
schedule = 0 3 * * *
url = {server.url('/good')}

[job:bad]
schedule = 0 4 * * *
url = {server.url('/bad')}
retries = 1
idempotent = true
""")
    deployer("push", "-i", path, check=True)
    before = time.time()
    deployer("run", "good", "-i", path, check=True)
    deployer("run", "bad", "-i", path, check=False)

    [good] = wait_for_records(shared_cron01, "good", 1)
    [bad] = wait_for_records(shared_cron01, "bad", 1)
    assert len(records_any_sender(shared_cron01, "good")) == 1  # the real record passes the sender check
    assert (good.result, good.attempts, good.http_status, good.reason) == ("ok", 1, 200, "status 200")
    assert (bad.result, bad.attempts, bad.http_status) == ("failed", 2, 500)
    assert "500" in bad.reason
    # a manual run names no slot of the schedule: its key is its own (issue 21)
    assert before - 1 < good.started < time.time() and good.slot == 0 and good.key == f"good/manual-{good.run}"
    assert bad.duration >= 1.0  # the backoff between its two attempts
    # The run id is the one the service saw, so a record can be matched with the service's log.
    [request] = server.received("/good")
    assert request.headers["X-Deployer-Run-Id"] == good.run


def test_a_record_a_local_user_sends_changes_no_status_history_or_metric(tmp_path, server, deployer, write_inventory):
    """journald's socket is open to every local user: a forged record (a 'success' dated far in
    the future, a field sent twice) must not become a run (before: status showed it, the metrics
    stopped counting real runs, a field sent twice crashed status)."""
    from tests.cronhost import CronHost
    from tests.e2e.conftest import _require_nspawn

    _require_nspawn()
    server.routes["/bad"] = Reply(500, b"exploded")
    with CronHost("cron01", workdir=tmp_path / "cron01", users=("mallory",)) as host:
        path = write_inventory(host.inventory_host() + f"""
[job:settle]
schedule = 0 4 * * *
url = {server.url('/bad')}
retries = 0
""")
        deployer("push", "-i", path, check=True)
        deployer("run", "settle", "-i", path, check=False)
        wait_for_records(host, "settle", 1)
        forged = "\n".join([f"MESSAGE_ID={RUN_FINISHED}", "MESSAGE=settle: ok", "DEPLOYER_JOB=settle",
                            "DEPLOYER_RUN=forged", "DEPLOYER_SLOT=9000000000", "DEPLOYER_STARTED=9000000000",
                            "DEPLOYER_DURATION=0.1", "DEPLOYER_ATTEMPTS=1", "DEPLOYER_RESULT=ok",
                            "DEPLOYER_REASON=status 200", "DEPLOYER_HTTP_STATUS=200",
                            "DEPLOYER_HTTP_STATUS=200"]) + "\n"
        host.ssh("logger --journald", user="mallory", input=forged)
        assert len(records_any_sender(host, "settle")) == 2  # journald took it: the readers must refuse it

        [row] = json.loads(deployer("status", "-i", path, "--json", check=True).stdout)["jobs"]
        runs = json.loads(deployer("history", "settle", "-i", path, "--since", "1h", "--json",
                                   check=True).stdout)["runs"]
        assert row["result"] == "failed" and "500" in row["reason"]
        assert [run["result"] for run in runs] == ["failed"]


def records_any_sender(host, job: str) -> list[dict]:
    out = host.ssh(f"journalctl --no-pager -q -o json DEPLOYER_JOB={job}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# What a local user can do in a few seconds: records in the job's name, sent to journald's native
# socket (as `logger --journald` does), over every priority (journald limits each on its own).
FLOOD = f"""import socket
record = ("MESSAGE_ID={RUN_FINISHED}\\nMESSAGE=settle: ok\\nDEPLOYER_JOB=settle\\nDEPLOYER_RUN=forged%d\\n"
          "DEPLOYER_SLOT=9000000000\\nDEPLOYER_STARTED=9000000000\\nDEPLOYER_DURATION=0.1\\n"
          "DEPLOYER_ATTEMPTS=1\\nDEPLOYER_RESULT=ok\\nDEPLOYER_REASON=status 200\\nPRIORITY=%d\\n")
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
    for number in range(COUNT):
        journal.sendto((record % (number, number % 8)).encode(), "/run/systemd/journal/socket")
"""


def test_issue22_10_a_flood_of_forged_records_hides_no_failed_jobs_reason(tmp_path, server, deployer,
                                                                          write_inventory):
    """Before: a local user's flood of records in a job's name (tens of thousands in seconds)
    filled the 50,000 entries status reads newest first, and the failed job's reason vanished
    (and status took seconds). Now the query matches journald's own fields of the sender (the
    job's unit; the jobs' slice), which no local user can set. Prints status's time."""
    from deployer.host.agent import STATUS_SCAN_LIMIT
    from tests.cronhost import CronHost
    from tests.e2e.conftest import _require_nspawn

    _require_nspawn()
    server.routes["/bad"] = Reply(500, b"exploded")
    with CronHost("cron01", workdir=tmp_path / "cron01", users=("mallory",)) as host:
        path = write_inventory(host.inventory_host() + f"""
[job:settle]
schedule = 0 4 * * *
url = {server.url('/bad')}
retries = 0
""")
        deployer("push", "-i", path, check=True)
        deployer("run", "settle", "-i", path, check=False)
        wait_for_records(host, "settle", 1)
        began = time.monotonic()
        deployer("status", "-i", path, "--json", check=True)
        quiet = time.monotonic() - began
        began = time.monotonic()
        host.ssh("python3 -", user="mallory", input=FLOOD.replace("COUNT", "60000"), timeout=300)
        sent_in = time.monotonic() - began
        landed = int(host.ssh(f"journalctl --no-pager -q -o cat MESSAGE_ID={RUN_FINISHED} DEPLOYER_JOB=settle "
                              "_UID=2001 | wc -l", timeout=300).stdout)
        assert landed > STATUS_SCAN_LIMIT, f"journald took {landed} forged records: the flood proves nothing"

        began = time.monotonic()
        [row] = json.loads(deployer("status", "-i", path, "--json", check=True).stdout)["jobs"]
        took = time.monotonic() - began
        print(f"\nissue 22 item 10: status {quiet:.2f}s before the flood; {landed} forged records (sent in "
              f"{sent_in:.1f}s); status {took:.2f}s after it")
        assert row["result"] == "failed" and "500" in row["reason"], row
