"""Issue 13 items 2-4 on real hosts: fleet status (two hosts, one stopped), history from the
per-run records and PID 1's entries, `run` streaming its lines, `logs --follow` / `--since`."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from tests.e2e.runs import wait_until
from tests.httpserver import Reply, json_reply

pytestmark = pytest.mark.e2e


def job(server, name: str, host: str, schedule: str = "0 3 * * *", **extra: str) -> str:
    key = "on_calendar" if schedule.startswith("*:") else "schedule"
    lines = "".join(f"{k} = {v}\n" for k, v in extra.items())
    return f"[job:{name}]\n{key} = {schedule}\nurl = {server.url('/' + name)}\nhost = {host}\nretries = 0\n{lines}"


def status(deployer, path: str, check=True) -> dict:
    result = deployer("status", "-i", path, "--json", check=check)
    return json.loads(result.stdout)


def test_fleet_status_shows_every_host_reasons_zones_paused_and_an_unreachable_host(
        cron01, cron02, server, deployer, write_inventory):
    server.routes["/good"] = json_reply({"code": 0})
    server.routes["/bad"] = Reply(500, b"settlement exploded")
    server.routes["/business"] = json_reply({"code": 7})
    server.routes["/quiet"] = json_reply({"code": 0})
    path = write_inventory(
        cron01.inventory_host() + cron02.inventory_host()
        + job(server, "good", "cron01", "0 3 * * *", timezone="Asia/Shanghai")
        + job(server, "quiet", "cron01", "CRON_TZ=America/New_York 0 4 * * *")
        + job(server, "bad", "cron02") + job(server, "business", "cron02", expect_json="code=0")
        + job(server, "never", "cron02", "0 5 * * *"))
    for host in ("cron01", "cron02"):
        deployer("push", "--host", host, "-i", path, check=True)
    # Job commands find the host from the job's `host =`: no --host with two hosts.
    deployer("run", "good", "-i", path, check=True)
    deployer("run", "quiet", "-i", path, check=True)
    deployer("run", "bad", "-i", path, check=False)
    deployer("run", "business", "-i", path, check=False)
    deployer("pause", "quiet", "-i", path, check=True)

    document = status(deployer, path)
    table = deployer("status", "-i", path, check=True).stdout

    assert document["version"] == 1 and document["command"] == "status"
    assert [(h["host"], h["reachable"], h["jobs"]) for h in document["hosts"]] == [("cron01", True, 2),
                                                                                   ("cron02", True, 3)]
    rows = {r["job"]: r for r in document["jobs"]}
    assert {j: (r["host"], r["result"]) for j, r in rows.items()} == {
        "good": ("cron01", "ok"), "quiet": ("cron01", "paused"), "bad": ("cron02", "failed"),
        "business": ("cron02", "failed"), "never": ("cron02", "never")}
    assert rows["business"]["reason"] == "code is 7, expected 0"
    assert rows["bad"]["reason"].startswith("status 500") and rows["bad"]["exit_status"] == 1
    assert rows["never"]["exit_status"] is None and rows["never"]["last"] is None
    assert rows["good"]["last"].endswith("+08:00") and rows["good"]["next"].endswith("T03:00:00+08:00")
    assert rows["good"]["exit_status"] == 0 and rows["good"]["reason"] is None
    # Paused: LAST is kept (systemd forgets the unloaded units; the journal does not).
    assert rows["quiet"]["last"] is not None and rows["quiet"]["last_result"] == "ok"
    assert rows["quiet"]["timezone"] == "America/New_York" and rows["quiet"]["next"] is None
    assert rows["quiet"]["last"][-6:] in ("-05:00", "-04:00")
    lines = table.splitlines()
    assert lines[0].split() == ["HOST", "JOB", "SCHEDULE", "LAST", "NEXT", "RESULT"]
    good = next(line for line in lines if line.split()[:2] == ["cron01", "good"])
    assert " CST (" in good and " ago)" in good and "(in " in good
    assert any("business" in line and "failed: code is 7, expected 0" in line for line in lines)
    assert any("quiet" in line and "paused (last: ok)" in line for line in lines)

    cron02.stop()
    down = deployer("status", "-i", path, "--json", check=False)
    text = deployer("status", "-i", path, check=False)

    assert down.returncode == 1 and text.returncode == 1
    document = json.loads(down.stdout)
    assert [(h["host"], h["reachable"]) for h in document["hosts"]] == [("cron01", True), ("cron02", False)]
    assert "cannot connect" in document["hosts"][1]["error"]
    assert sorted(r["job"] for r in document["jobs"]) == ["good", "quiet"]
    error = document["hosts"][1]["error"]
    # Its inventory jobs are rows too, unknown (issue 24 item 2), then the line saying why.
    assert [(r["job"], r["result"]) for r in document["inventory_only"]] == [
        ("bad", "unknown"), ("business", "unknown"), ("never", "unknown")]
    *rows, last = [line for line in text.stdout.splitlines() if "cron02" in line]
    assert last == f"host cron02: UNREACHABLE: {error}"
    assert [row.split()[1] for row in rows] == ["bad", "business", "never"]
    assert all(re.search(rf"  unknown +host unreachable: {re.escape(error)}$", row) for row in rows), rows
    assert text.stderr.strip() == f"deployer: error: host cron02: {document['hosts'][1]['error']}"


def test_history_lists_runs_a_killed_run_and_missed_slots(shared_cron01, server, deployer, write_inventory):
    server.routes["/tick"] = json_reply({"code": 0})
    server.routes["/slow"] = Reply(200, b"{}", delay=60)
    path = write_inventory(shared_cron01.inventory_host() + job(server, "tick", "cron01", "*:*:0/2", timeout="3s")
                           + job(server, "slow", "cron01", "0 4 * * *", timeout="90s"))
    started = time.time()
    # Every run of the test, however long a loaded machine makes it (`--since 2m` dropped the first).
    since = datetime.fromtimestamp(int(started) - 60, timezone.utc).isoformat()
    deployer("push", "-i", path, check=True)
    server.wait_for("/tick", count=3, timeout=90)
    deployer("pause", "tick", "-i", path, check=True)
    paused = time.time()
    # Three slots pass while paused (missed): every even second from paused + 2 to now - 2.
    wait_until(lambda: len([t for t in range(int(paused) + 2, int(time.time()) - 1) if t % 2 == 0]) >= 3,
               20, "three slots while paused")
    deployer("resume", "tick", "-i", path, check=True)
    resumed = time.time()
    pause_slots = [t for t in range(int(paused) + 1, int(resumed)) if t % 2 == 0]
    # A run killed before it could write its record: only PID 1's entries tell it.
    shared_cron01.ssh("systemctl start --no-block deployer-slow.service")
    server.wait_for("/slow", timeout=90)
    # The run is one process (the trigger): --kill-whom=main, since the cgroup-wide kill of the
    # container's systemd sometimes fails with EIO ("Failed to send signal SIGKILL to auxiliary processes").
    shared_cron01.ssh("systemctl kill --kill-whom=main --signal=KILL deployer-slow.service")

    def missed_so_far():  # a slot is judged once the tick job's grace (timeout + 10 s) is over
        document = json.loads(deployer("history", "tick", "-i", path, "--since", since, "--json",
                                       check=True).stdout)
        return {int(datetime.fromisoformat(m).timestamp()) for m in document["summary"]["missed"]}

    wait_until(lambda: set(pause_slots) <= missed_so_far(), 60, "the paused slots judged missed", every=1)

    before = len(server.received("/tick"))
    tick = json.loads(deployer("history", "tick", "-i", path, "--since", since, "--json", check=True).stdout)
    # A run listed is one the service heard: give an in-flight request its time to land.
    listed = {r["run"] for r in tick["runs"]}
    try:
        wait_until(lambda: listed <= {q.headers["X-Deployer-Run-Id"] for q in server.received("/tick")}, 10,
                   "every listed run's request")
    except AssertionError:
        pass  # the count below says which
    after = len(server.received("/tick"))
    slow = json.loads(deployer("history", "slow", "-i", path, "--since", "1h", "--json", check=True).stdout)
    text = deployer("history", "tick", "-i", path, "--since", since, check=True).stdout
    rows = {r["job"]: r for r in status(deployer, path)["jobs"]}

    assert tick["version"] == 1 and tick["command"] == "history" and tick["timezone"] == "UTC"
    # A slot that came while the run before it still went (a loaded machine) is listed as
    # skipped (issue 23 item 6): it called nothing, it is not a run.
    runs = [r for r in tick["runs"] if r["result"] != "skipped"]
    assert all(r["source"] == "record" and r["reason"].startswith("skipped: previous run still running since ")
               for r in tick["runs"] if r["result"] == "skipped"), tick["runs"]
    heard_ids = [q.headers["X-Deployer-Run-Id"] for q in server.received("/tick")]
    assert before - 1 <= len(runs) <= after, (  # a run may be under way as history reads
        before, after, [(r["run"], r["slot"], r["source"], r["result"]) for r in runs if r["run"] not in heard_ids])
    requests = {request.headers["X-Deployer-Run-Id"]: request for request in server.received("/tick")}
    for run in runs:  # each run is the request of the same run id
        assert abs(datetime.fromisoformat(run["started"]).timestamp() - requests[run["run"]].at) < 1
    assert all(r["result"] == "ok" and r["attempts"] == 1 and r["source"] == "record" for r in runs)
    starts = [datetime.fromisoformat(r["started"]).timestamp() for r in runs]
    assert starts == sorted(starts) and started - 1 < starts[0]
    assert not [t for t in starts if paused + 1 < t < resumed - 1]
    summary = tick["summary"]
    assert summary["runs"] == len(runs) and summary["failures"] == 0
    assert 0 < summary["p50_duration"] <= summary["max_duration"] < 3
    missed = [datetime.fromisoformat(m).timestamp() for m in summary["missed"]]
    assert summary["missed_slots"] == len(missed) >= 3, summary
    # Every slot of the pause is missed; outside it (on a loaded machine a timer may be late and
    # run once for several slots) a missed slot is one the service really heard nothing for.
    assert set(pause_slots) <= set(missed), (pause_slots, summary["missed"])
    heard = [r.at for r in server.received("/tick")]
    assert not [m for m in missed if any(m <= at < m + 1 for at in heard)], (summary["missed"], heard)
    assert text.splitlines()[0].split() == ["SLOT", "STARTED", "DURATION", "ATTEMPTS", "RESULT", "REASON"]
    assert re.match(r"tick on cron01 since \S+ \S+ UTC: \d+ runs, 0 failed, (\d+ skipped \(catch_up, concurrency\), )?"
                    r"duration p50 0\.\d\d s, max \d\.\d\d s, "
                    r"\d+ missed of \d+ slots \(", text.splitlines()[-1]), text

    [killed] = slow["runs"]
    assert (killed["result"], killed["source"], killed["slot"], killed["attempts"]) == ("failed", "systemd",
                                                                                       None, None)
    assert killed["reason"] == "signal (killed, signal KILL)"
    assert killed["duration"] is not None and 0 < killed["duration"] < 30
    assert slow["summary"]["failures"] == 1
    assert rows["slow"]["result"] == "failed" and rows["slow"]["reason"] == killed["reason"]


def test_run_streams_its_lines_as_they_happen(shared_cron01, server, deployer, write_inventory, isolated_home):
    server.routes["/flaky"] = Reply(503, b"busy")
    path = write_inventory(shared_cron01.inventory_host() + job(server, "flaky", "cron01", timeout="30s")
                           .replace("retries = 0", "retries = 2"))
    deployer("push", "-i", path, check=True)
    environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    environment["HOME"] = str(isolated_home)
    process = subprocess.Popen([sys.executable, "-m", "deployer", "run", "flaky", "-i", path], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stdout:
        seen.append((time.monotonic(), line.rstrip("\n")))
    process.wait(timeout=60)
    ended = time.monotonic()

    attempts = [(at, line) for at, line in seen if "-> 503" in line]
    assert process.returncode == 1 and len(attempts) == 3, seen
    # Backoff 1 s + 2 s between the attempts: the first line came while the run went on.
    assert ended - attempts[0][0] > 2.5, seen
    assert "deployer: job flaky failed (status 503" in process.stderr.read()
    assert len([line for _, line in seen if "FAILED" in line and "flaky" in line]) >= 1
    assert len(seen) == len(set(line for _, line in seen))  # nothing printed twice

    document = json.loads(deployer("run", "flaky", "-i", path, "--json", check=False).stdout)
    assert (document["version"], document["command"], document["result"], document["exit_status"]) == (
        1, "run", "failed", 1)
    assert document["reason"].startswith("status 503") and document["run"]["attempts"] == 3
    assert document["run"]["source"] == "record" and document["run"]["http_status"] == 503
    assert sum("-> 503" in line for line in document["output"]) == 3


def test_logs_follow_streams_until_interrupted_and_since_limits(shared_cron01, server, deployer, write_inventory,
                                                                 isolated_home):
    server.routes["/tick"] = json_reply({"code": 0})
    path = write_inventory(shared_cron01.inventory_host() + job(server, "tick", "cron01", "*:*:0/2"))
    deployer("push", "-i", path, check=True)
    server.wait_for("/tick", count=2, timeout=90)
    environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    environment["HOME"] = str(isolated_home)
    # Ctrl-C's SIGINT as a terminal delivers it: a suite started in the background (`make test &`,
    # nohup, CI runners) inherits SIGINT ignored, and so would `deployer logs -f`, which then never ends.
    follow = subprocess.Popen([sys.executable, "-m", "deployer", "logs", "tick", "-i", path, "-f", "-n", "1"],
                              env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in follow.stdout:
        lines.append(line)
        if sum("-> 200" in x for x in lines) >= 3:
            break
    follow.send_signal(signal.SIGINT)
    out, err = follow.communicate(timeout=20)

    assert sum("-> 200" in x for x in lines) >= 3  # read while following: -f never ends by itself
    assert follow.returncode == 0 and "Traceback" not in err, err
    deadline = time.monotonic() + 20  # the agent notices the client is gone and ends its journalctl -f
    while shared_cron01.ssh("pgrep -f '^journalctl .*-f' || true").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shared_cron01.ssh("pgrep -f '^journalctl .*-f' || true").stdout.strip() == ""

    # A run within the last 3 s (one every 2 s), polled for rather than slept for.
    def since_3s():
        called = time.time()
        lines = deployer("logs", "tick", "-i", path, "--since", "3s", check=True).stdout.splitlines()
        return (called, lines) if lines else None

    called, recent = wait_until(since_3s, 20, "a line within the last 3 s", every=0.5)
    everything = deployer("logs", "tick", "-i", path, "--since", "10m", check=True).stdout.splitlines()
    assert 0 < len(recent) < len(everything)
    # Each line starts with its time, as every deployer text writes one: `2026-12-06 04:00:00 UTC`.
    stamps = [datetime.strptime(" ".join(line.split()[:3]), "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
              .timestamp() for line in recent]
    # "3s" counts from when the command began, after `called`: judged from there, not from when it
    # ended (a loaded machine took 27 s to run it; the lines shown had come 3 s before it began).
    # A stamp is a whole second: 1 s more.
    assert min(stamps) >= called - 3 - 1, (called, min(stamps))


def test_a_mistake_in_another_job_does_not_hide_a_jobs_runs(shared_cron01, server, deployer, write_inventory):
    """`history` and `logs` check what they read: the hosts and their job (issue 25: at 10,000
    jobs, checking every one cost `history` three times its journal read)."""
    server.routes["/tick"] = json_reply({"code": 0})
    good = shared_cron01.inventory_host() + job(server, "tick", "cron01", "*:*:0/2")
    path = write_inventory(good)
    deployer("push", "-i", path, check=True)
    server.wait_for("/tick", timeout=60)
    write_inventory(good + "[job:half-edited]\nschedule = 61 * * * *\nurl = http://svc/${NOT_SET_ANYWHERE}\n")

    tick = json.loads(deployer("history", "tick", "-i", path, "--since", "1h", "--json", check=True).stdout)
    logs = deployer("logs", "tick", "-i", path, "-n", "5", check=True).stdout
    push = deployer("push", "-i", path, check=False)

    assert tick["job"] == "tick" and [r for r in tick["runs"] if r["result"] == "ok"], tick
    assert "deployer-tick" in logs
    assert push.returncode == 1 and "[job:half-edited]" in push.stderr and "Traceback" not in push.stderr
    assert shared_cron01.ssh("ls /etc/systemd/system | grep -c '^deployer-half-edited' || true").stdout.strip() == "0"
