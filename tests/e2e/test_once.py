"""Once, at the service (issue 21), on a real cron host: the exact slot of every run, the key and
epoch every attempt carries (signed, v2), retries that cannot double a run, the fence, backfill
and accept-then-poll. Runs are judged by what each request and run record names, never by
wall-clock windows."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import pytest

from tests.httpserver import Recorded, RecordingServer, Reply, json_reply

pytestmark = pytest.mark.e2e

KEY = "once-SECRET-5ca1ab1e"


def v2_ok(request: Recorded, key: str = KEY) -> bool:
    """The v2 check, written here from the spec in docs/receiving.md (not from the trigger's code)."""
    h = request.headers
    message = "\n".join(["v2", request.method, request.path, h["X-Deployer-Timestamp"], h["X-Deployer-Run-Id"],
                         h["X-Deployer-Job"], h["Idempotency-Key"], h["X-Deployer-Epoch"],
                         hashlib.sha256(request.body).hexdigest()])
    expected = "v2=" + hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, h.get("X-Deployer-Signature-V2", ""))


def records(host, job: str) -> list[dict]:
    """The job's run records; not those of slots skipped while a run went (issue 23: not runs)."""
    out = host.ssh(f"journalctl --no-pager -o json DEPLOYER_JOB={job} MESSAGE_ID=5f0c1b0e9f5a4e2d8a7c3b6d1e2f4a90").stdout
    found = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r for r in found if r.get("DEPLOYER_RESULT") != "skipped"]


def wait_until(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_every_run_names_its_exact_slot_key_and_epoch_signed(cron01, deployer, write_inventory):
    with RecordingServer({"/tick": json_reply({"code": 0})}) as service:
        path = write_inventory(cron01.inventory_host() + f"""
[job:tick]
on_calendar = *:*:0/3
timezone = UTC
url = {service.url('/tick')}
sign_secret = {KEY}
retries = 0
""")
        deployer("push", "-i", path, "--yes", check=True)
        got = service.wait_for("/tick", 4, timeout=60)
        slots = [r.headers["X-Deployer-Slot"] for r in got]
        assert len(set(slots)) == len(slots), f"a slot ran twice: {slots}"
        for request in got:
            h = request.headers
            slot = h["X-Deployer-Slot"]
            assert slot.endswith("Z") and int(slot[17:19]) % 3 == 0, f"{slot} is not a slot of *:*:0/3"
            assert h["Idempotency-Key"] == f"tick/{slot}"
            assert int(h["X-Deployer-Epoch"]) > 1_700_000_000_000  # a grant time in ms
            assert v2_ok(request), "the v2 signature must verify with the documented formula"
        epoch = {r.headers["X-Deployer-Epoch"] for r in got}
        assert len(epoch) == 1, "one owner, one epoch"
        wait_until(lambda: len(records(cron01, "tick")) >= 4, what="run records")
        for record in records(cron01, "tick")[:4]:
            assert record["DEPLOYER_KEY"] == f"tick/{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(int(record['DEPLOYER_SLOT'])))}"
            assert int(record["DEPLOYER_SLOT"]) <= float(record["DEPLOYER_STARTED"])

        # A second push keeps the epoch: the owner did not change.
        deployer("push", "-i", path, "--yes", check=True)
        before = len(service.received("/tick"))
        later = service.wait_for("/tick", before + 1, timeout=90)[-1]
        assert later.headers["X-Deployer-Epoch"] in epoch


def test_manual_run_backfill_and_a_time_that_is_no_slot(cron01, deployer, write_inventory):
    with RecordingServer({"/settle": json_reply({"code": 0})}) as service:
        path = write_inventory(cron01.inventory_host() + f"""
[job:settle]
schedule = 0 2 * * *
timezone = Asia/Shanghai
url = {service.url('/settle')}
""")
        deployer("push", "-i", path, "--yes", check=True)
        deployer("run", "settle", "-i", path, check=True)
        deployer("run", "settle", "--slot", "2026-12-01T02:00", "-i", path, check=True)
        wrong = deployer("run", "settle", "--slot", "2026-12-01T02:30", "-i", path, check=False)
        manual, backfill = service.wait_for("/settle", 2)
        assert manual.headers["Idempotency-Key"] == f"settle/manual-{manual.headers['X-Deployer-Run-Id']}"
        assert backfill.headers["Idempotency-Key"] == "settle/2026-11-30T18:00:00Z"  # 02:00 in Shanghai
        assert backfill.headers["X-Deployer-Slot"] == "2026-11-30T18:00:00Z"
        assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1
        assert "not a slot of the job's schedule; nearest: 2026-12-01T02:00:00+08:00 or 2026-12-02T02:00:00+08:00" \
            in wrong.stderr
        assert len(service.received("/settle")) == 2, "a refused backfill sends nothing"
        # The backfill request is gone: the next manual run has a key of its own again.
        deployer("run", "settle", "-i", path, check=True)
        third = service.wait_for("/settle", 3)[-1]
        assert third.headers["Idempotency-Key"].startswith("settle/manual-")


def test_a_post_the_service_may_have_started_is_not_sent_again(cron01, deployer, write_inventory):
    with RecordingServer({"/pay": Reply(502, b"bad gateway"), "/safe": Reply(502, b"bad gateway"),
                          "/busy": Reply(503, b"busy", headers={"Retry-After": "1"})}) as service:
        path = write_inventory(cron01.inventory_host() + f"""
[defaults]
retries = 2

[job:pay]
schedule = 0 3 * * *
url = {service.url('/pay')}

[job:safe]
schedule = 0 3 * * *
url = {service.url('/safe')}
idempotent = true

[job:busy]
schedule = 0 3 * * *
url = {service.url('/busy')}
""")
        deployer("push", "-i", path, "--yes", check=True)
        pay = deployer("run", "pay", "-i", path, check=False)
        deployer("run", "safe", "-i", path, check=False)
        deployer("run", "busy", "-i", path, check=False)
        assert len(service.received("/pay")) == 1
        assert "not retried: the service may have started it" in pay.stdout + pay.stderr
        assert len(service.received("/safe")) == 3, "idempotent = true: a 502 may be sent again"
        assert len(service.received("/busy")) == 3, "a 503 says the service did not act: sent again"
        safe = service.received("/safe")
        assert len({r.headers["Idempotency-Key"] for r in safe}) == 1, "every retry carries the same key"
        record = wait_until(lambda: records(cron01, "pay"), what="pay's record")[-1]
        assert record["DEPLOYER_REACHED"] == "y"


def test_accept_then_poll_until_the_work_ends(cron01, deployer, write_inventory):
    polls = []

    def operation(request: Recorded) -> Reply:
        polls.append(request)
        if len(polls) < 3:
            return Reply(202, b'{"state": "running"}', headers={"Retry-After": "1"})
        return json_reply({"code": 0, "state": "DONE"})

    with RecordingServer({"/long": Reply(202, b"", headers={"Location": "/operations/42"}),
                          "/operations/42": operation}) as service:
        path = write_inventory(cron01.inventory_host() + f"""
[job:long]
schedule = 0 3 * * *
url = {service.url('/long')}
async = poll
poll_every = 1s
expect_json = code=0
sign_secret = {KEY}
timeout = 10m
""")
        deployer("push", "-i", path, "--yes", check=True)
        result = deployer("run", "long", "-i", path, check=True)
        assert len(service.received("/long")) == 1 and len(polls) == 3
        key = service.received("/long")[0].headers["Idempotency-Key"]
        assert all(p.method == "GET" and p.headers["Idempotency-Key"] == key and v2_ok(p) for p in polls)
        assert "202" in result.stdout and "polling" in result.stdout

        # While it polls, status says what the run waits for.
        seen = threading.Event()

        def slowly(request: Recorded) -> Reply:  # running until the test has seen the status
            return json_reply({"code": 0}) if seen.is_set() else Reply(202, b"", headers={"Retry-After": "1"})

        service.routes["/operations/42"] = slowly
        cron01.ssh("systemctl start --no-block deployer-long.service")

        def waiting():
            document = json.loads(deployer("status", "-i", path, "--json").stdout)
            row = next(j for j in document["jobs"] if j["job"] == "long")
            return row if row["result"] == "running" and "waiting for the service" in (row["reason"] or "") else None

        row = wait_until(waiting, timeout=30, what="status: running, waiting for the service")
        assert row["reason"].startswith("waiting for the service (accepted at ")
        assert "running: waiting for the service" in deployer("status", "-i", path).stdout
        seen.set()
        wait_until(lambda: len(records(cron01, "long")) == 2, what="the polled run's end")
        assert records(cron01, "long")[-1]["DEPLOYER_RESULT"] == "ok"


def test_a_fenced_host_stops_the_job_by_itself(cron01, deployer, write_inventory):
    def fence(request: Recorded) -> Reply:
        held = int(request.headers["X-Deployer-Epoch"]) + 1000
        return Reply(409, json.dumps({"error": "fenced"}).encode(), headers={"X-Deployer-Epoch": str(held)})

    with RecordingServer({"/settle": fence}) as service:
        path = write_inventory(cron01.inventory_host() + f"""
[job:settle]
on_calendar = *:*:0/2
url = {service.url('/settle')}
retries = 3
idempotent = true
""")
        deployer("push", "-i", path, "--yes", check=True)
        service.wait_for("/settle", 1, timeout=90)
        wait_until(lambda: cron01.ssh("systemctl is-active deployer-settle.timer", check=False).stdout.strip()
                   == "inactive", what="the fenced timer stopping")
        count = len(service.received("/settle"))
        assert count <= 2, "a fenced run is not retried, and the timer stops after it"
        record = wait_until(lambda: records(cron01, "settle"), what="the fenced record")[0]
        assert record["DEPLOYER_RESULT"] == "fenced"
        status = json.loads(deployer("status", "-i", path, "--json").stdout)
        job = next(j for j in status["jobs"] if j["job"] == "settle")
        assert job["result"] == "fenced", job
        # Stopped by itself: nothing more reaches the service (a timer every 2 s would).
        assert cron01.ssh("systemctl is-enabled deployer-settle.timer", check=False).stdout.strip() == "disabled"
