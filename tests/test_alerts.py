"""Alert channels of trigger.py against chat robots on loopback; coalescing with a fake clock."""
from __future__ import annotations

import dataclasses

import json
import os
import subprocess
import sys
import time

import pytest

from deployer.contract import channels, unitkeys
from deployer.host import alert, journal
from tests.conftest import REPO
from tests.httpserver import Reply
from tests.robots import Robot, openssl_hmac_b64

EVENT = {"kind": "failed", "job": "settle", "host": "cron01", "method": "POST", "url": "http://svc/settle",
         "result": "exit-code", "exit_status": "1", "time": "2026-11-24T15:00:01+0800",
         "lines": ["attempt 1/1: POST http://svc/settle -> 500 in 0.01s: status 500 not expected: boom"]}


@pytest.fixture
def robot():
    with Robot(token="tok-1", secret="SEC-abc") as running:
        yield running


def test_dingtalk_signature_matches_an_independent_hmac():
    assert channels.dingtalk_sign("SEC", 1700000000000) == openssl_hmac_b64(b"SEC", b"1700000000000\nSEC")


def test_feishu_signature_matches_an_independent_hmac():
    assert channels.feishu_sign("SEC", 1700000000) == openssl_hmac_b64(b"1700000000\nSEC", b"")


@pytest.mark.parametrize("kind", ["dingtalk", "wecom", "feishu", "slack", "webhook"])
def test_each_channel_is_accepted_by_its_robot(robot, kind):
    secret = robot.secret if kind in ("dingtalk", "feishu") else ""
    channel = channels.Channel("ops", kind, token=robot.token, secret=secret, endpoint=robot.endpoint(kind))
    assert alert.deliver(channel, [EVENT], log=lambda _: None)
    message = robot.accepted[0]
    assert "settle" in json.dumps(message) and "cron01" in json.dumps(message)
    assert robot.refused == []


def test_a_wrong_secret_is_refused_even_though_dingtalk_answers_200(robot):
    channel = channels.Channel("ops", "dingtalk", token=robot.token, secret="wrong", endpoint=robot.endpoint("dingtalk"))
    lines: list[str] = []
    assert not alert.deliver(channel, [EVENT], log=lines.append, sleep=lambda _: None)
    assert robot.refused == ["sign not match"] * alert.DELIVERY_ATTEMPTS
    assert "errcode 310000" in lines[-1]
    assert all("wrong" not in line and robot.token not in line for line in lines), "secrets in a log line"


def test_delivery_failure_is_retried_a_little_then_given_up():
    with Robot() as robot:
        robot.routes["/robot/send"] = Reply(502, b"bad gateway")
        pauses: list[float] = []
        channel = channels.Channel("ops", "dingtalk", token="t", endpoint=robot.endpoint("dingtalk"))
        assert not alert.deliver(channel, [EVENT], log=lambda _: None, sleep=pauses.append)
        assert len(robot.received("/robot/send")) == alert.DELIVERY_ATTEMPTS and pauses == [2.0, 4.0]


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


def test_a_burst_beyond_the_rate_limit_is_merged_not_dropped(tmp_path):
    clock = Clock()
    sent: list[list[dict]] = []
    # quiet=0: every alert goes out at once, so that only the rate limit merges (the backstop
    # behind the gathering of a storm, below).
    coalescer = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep, quiet=0)
    for i in range(alert.RATE_LIMIT):
        assert coalescer.run({**EVENT, "job": f"job{i}"}, lambda events: sent.append(events) or True)
    # Five alerts over the limit: each queued its event and waits for the window.
    late = [{**EVENT, "job": f"late{i}"} for i in range(5)]
    queued = [coalescer.enqueue(event) for event in late]

    assert coalescer.run(late[0], lambda events: sent.append(events) or True, queued=queued[0])
    assert all(coalescer.run(e, lambda events: sent.append(events) or True, queued=q)
               for e, q in zip(late[1:], queued[1:]))

    assert [len(batch) for batch in sent] == [1] * alert.RATE_LIMIT + [5]
    assert clock.t >= 1_000_000.0 + alert.RATE_WINDOW
    title, text = alert.format_events(sent[-1])
    assert title == "deployer: 5 job runs failed on cron01" and "late4" in text


def test_a_failed_delivery_stays_queued_and_goes_out_with_the_next_alert(tmp_path):
    clock = Clock()
    coalescer = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep)
    assert not coalescer.run({**EVENT, "job": "first"}, lambda events: False)
    clock.t += alert.RATE_WINDOW + 200
    sent: list[list[dict]] = []
    assert coalescer.run({**EVENT, "job": "second"}, lambda events: sent.append(events) or True)
    assert [e["job"] for e in sent[0]] == ["first", "second"]


def test_original_recipe_alerts_dingtalk_with_the_token(server):
    server.routes["/down"] = Reply(500, b"down")
    with Robot(token="recipe-token") as robot:
        result = subprocess.run([sys.executable, str(REPO / "trigger.py"), "-url", server.url("/down"),
                                 "-token", "recipe-token", "--endpoint", robot.endpoint("dingtalk")],
                                capture_output=True, text=True)
        assert result.returncode == 1
        assert len(robot.accepted) == 1
        assert "FAILED" in robot.accepted[0]["markdown"]["title"]


def test_a_run_alerts_by_itself_from_the_environment_as_in_kubernetes(server):
    """No OnFailure= in Kubernetes: the trigger alerts itself with DEPLOYER_ALERT_* from a Secret."""
    import os

    server.routes["/down"] = Reply(503, b"down")
    with Robot(token="k8s-token", secret="k8s-secret") as robot:
        env = dict(os.environ, DEPLOYER_ALERT_TYPE="dingtalk", DEPLOYER_ALERT_TOKEN="k8s-token",
                   DEPLOYER_ALERT_SECRET="k8s-secret", DEPLOYER_ALERT_ENDPOINT=robot.endpoint("dingtalk"),
                   DEPLOYER_HOST_NAME="kubernetes")
        result = subprocess.run([sys.executable, str(REPO / "trigger.py"), "--job", "settle", "--url",
                                 server.url("/down")], capture_output=True, text=True, env=env)
        assert result.returncode == 1
        assert [m["markdown"]["title"] for m in robot.accepted] == ["deployer: job settle FAILED on kubernetes"]
        assert "k8s-token" not in result.stdout + result.stderr


# --- what the hostile probe of the host side found (issue 16) ---------------------------------


def test_probe16_17_alerts_do_not_follow_redirects(server):
    """Before: a 307 re-POSTed the alert body to wherever the Location pointed."""
    from tests.httpserver import RecordingServer

    with RecordingServer() as elsewhere:
        elsewhere.routes["/steal"] = Reply(200, b"ok")
        server.routes["/hook"] = Reply(307, b"", headers={"Location": elsewhere.url("/steal")})
        channel = channels.Channel("ops", "webhook", endpoint=server.url("/hook"))
        assert not alert.deliver(channel, [EVENT], log=lambda _: None, sleep=lambda _: None)
        assert elsewhere.received("/steal") == []


def test_probe16_13_a_slow_channel_receives_the_alert_once(server, monkeypatch):
    """Before: an endpoint slower than the client's timeout got every alert three times."""
    server.routes["/hook"] = Reply(200, b"ok", delay=1.5)
    monkeypatch.setattr(alert, "DELIVERY_TIMEOUT", (1.0, 0.5))
    lines: list[str] = []
    channel = channels.Channel("ops", "webhook", endpoint=server.url("/hook"))
    assert alert.deliver(channel, [EVENT], log=lines.append, sleep=lambda _: None)
    time.sleep(2)
    assert len(server.received("/hook")) == 1
    assert "not sent again" in lines[-1]


def test_probe16_3_the_alert_goes_out_when_its_queue_cannot_be_written(server, tmp_path):
    """Before: with /var full the handler died writing its queue file and sent nothing. Here the
    queue directory is a file, so every write into it fails as on a full disk."""
    server.routes["/hook"] = Reply(200, b"ok")
    (tmp_path / "queue").write_text("")
    lines: list[str] = []
    coalescer = alert.Coalescer(str(tmp_path), "ops", log=lines.append)
    channel = channels.Channel("ops", "webhook", endpoint=server.url("/hook"))
    assert coalescer.run(EVENT, lambda events: alert.deliver(channel, events, log=lines.append))
    assert len(server.received("/hook")) == 1


def test_the_alert_reads_the_jobs_method_and_url_from_the_unit_the_renderer_wrote(tmp_path, monkeypatch):
    """One fact, written by the renderer and read back by the alert program (not parsed out of
    Description=); the URL arrives without its password."""
    from deployer import render
    from deployer.contract import paths
    from deployer.models import Job

    job = Job(name="odd", host="cron01", url="https://u:pw@h.example/a%20b/$x;y?q='\"&z=\\é", method="PUT",
              schedule="0 * * * *")
    service = render.job_units(job)[0]
    monkeypatch.setattr(paths, "UNIT_DIR", str(tmp_path))
    (tmp_path / service.name).write_bytes(service.content)
    assert alert.job_request("odd") == ("PUT", "https://u:***@h.example/a%20b/$x;y?q='\"&z=\\é")
    assert alert.job_request("missing") == ("", "(unknown)")


# --- every failed run, from systemd's record in the journal (issue 16 items 13 and 8) -----------

# Recorded on a test host (`journalctl -o json MESSAGE_ID=... _PID=1 UNIT=...`), trimmed to the
# fields that matter, plus one forged by a local user (not _PID=1) and a line that is not JSON.
JOURNAL = [
    '{"MESSAGE_ID":"98e322203f7a4ed290d09fe03c09fe15","UNIT":"deployer-x.service","_PID":"1",'
    '"INVOCATION_ID":"fec9114269294a4db38b20c39f08e831","EXIT_CODE":"exited","EXIT_STATUS":"3",'
    '"__REALTIME_TIMESTAMP":"1795606629404741","_BOOT_ID":"e49bb3a4"}',
    '{"MESSAGE_ID":"d9b373ed55a64feb8242e02dbe79a49c","UNIT":"deployer-x.service","_PID":"1",'
    '"MESSAGE":"deployer-x.service: Failed with result \'exit-code\'.","UNIT_RESULT":"exit-code",'
    '"INVOCATION_ID":"fec9114269294a4db38b20c39f08e831","__REALTIME_TIMESTAMP":"1795606629404814",'
    '"_BOOT_ID":"e49bb3a4"}',
    '{"MESSAGE_ID":"d9b373ed55a64feb8242e02dbe79a49c","UNIT":"deployer-x.service","_PID":"4242",'
    '"UNIT_RESULT":"exit-code","INVOCATION_ID":"forged","__REALTIME_TIMESTAMP":"1795606629500000"}',
    '-- No entries --',
    '{"MESSAGE_ID":"d9b373ed55a64feb8242e02dbe79a49c","UNIT":"deployer-x.service","_PID":"1",'
    '"UNIT_RESULT":"signal","INVOCATION_ID":"0b1d","__REALTIME_TIMESTAMP":"1795606630000000","_BOOT_ID":"e49bb3a4"}',
]


def test_failed_runs_are_read_from_pid1s_record_with_their_exit_status():
    assert journal.parse_failed_runs(JOURNAL) == [
        alert.FailedRun("deployer-x.service", "fec9114269294a4db38b20c39f08e831", "exit-code", "3",
                        1795606629404814, "e49bb3a4", exit_code="exited"),
        alert.FailedRun("deployer-x.service", "0b1d", "signal", "?", 1795606630000000, "e49bb3a4"),
    ]
    exited, killed = journal.parse_failed_runs(JOURNAL)
    assert (exited.exit_number, exited.signal) == (3, None)
    assert (killed.exit_number, killed.signal) == (None, None), "no exit entry: nothing is made up"
    assert (dataclasses.replace(killed, exit_status="9", exit_code="killed").signal) == "KILL"


def run(invocation: str, seconds: float) -> alert.FailedRun:
    return alert.FailedRun("deployer-x.service", invocation, "exit-code", "1", int(seconds * 1e6))


def test_seen_runs_are_not_reported_again_and_the_watermark_moves_forward():
    seen = alert.Seen(int(1000e6)).add([run("a", 1000), run("b", 1001)])
    assert seen.watermark == int(1001e6) and seen.since() == 1001 - alert.SEEN_MARGIN
    assert seen.new([run("a", 1000), run("b", 1001), run("c", 999)]) == [run("c", 999)], \
        "a run journald indexed late (older than the watermark) is still new"
    later = seen.add([run("r%d" % n, 900) for n in range(alert.SEEN_IDS)])
    assert [i for i, _ in later.ids] == ["r%d" % n for n in range(alert.SEEN_IDS)], "the newest ids are kept"


def test_seen_goes_to_memory_when_the_state_directory_is_full(tmp_path, monkeypatch):
    """A full disk: the state could not be saved, so the unit's sweep and each restart found the
    run just reported and sent it again every RestartSec= (an alert every 20 s). The unit's
    RuntimeDirectory= keeps it instead, and the newer of the two is read."""
    full = tmp_path / "state"
    full.write_text("")  # a file where the directory should be: every write there fails
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    seen = alert.Seen(5).add([run("a", 10)])
    alert.save_seen(str(full / "seen" / "x"), seen)
    assert alert.load_seen(str(full / "seen" / "x")) == seen
    full.unlink()  # space again: the state directory is written, and the newer state wins
    alert.save_seen(str(full / "seen" / "x"), seen.add([run("b", 20)]))
    assert [i for i, _ in alert.load_seen(str(full / "seen" / "x")).ids] == ["a", "b"]


def test_seen_survives_a_round_trip_and_a_corrupt_file_means_first_time(tmp_path):
    seen = alert.Seen(5).add([run("a", 10)])
    alert.save_seen(str(tmp_path / "seen" / "x"), seen)
    assert alert.load_seen(str(tmp_path / "seen" / "x")) == seen
    (tmp_path / "seen" / "x").write_text("{")
    assert alert.load_seen(str(tmp_path / "seen" / "x")) is None


class Journal:
    """A fake journal: the runs systemd recorded so far; `find` as journal_failed_runs."""

    def __init__(self, runs=(), boots=None):
        self.runs = list(runs)
        self.boots = boots or {}

    def find(self, unit, since=None, boot=None, after=""):
        if boot is not None:
            return list(self.boots.get(boot, []))
        if after:  # the journal's order: the list's
            return self.runs[[r.cursor for r in self.runs].index(after) + 1:]
        return [r for r in self.runs if since is None or r.realtime >= since * 1e6]


def reporter(tmp_path, journal, batches, on_send=lambda: None, ok=True):
    def send(events, take_queued):
        batches.append([e["invocation"] for e in events])
        on_send()
        return ok

    def report(**how):
        return alert.report_failures("x", "cron01", str(tmp_path), send, lambda _: None, find=journal.find,
                                     sleep=lambda _: None, **how)

    return report


def test_runs_merged_into_a_running_alert_are_each_reported_once(tmp_path):
    """systemd merges an OnFailure= start into the alert still running for the job: the alert
    for run a must also report b (failed before it looked) and c (failed while it was sending),
    and the sweep after it finds nothing left."""
    now = time.time()
    journal = Journal([run("old", now - 50), run("a", now), run("b", now + 1)])
    batches: list = []
    arrive = iter([lambda: journal.runs.append(run("c", now + 2))])
    report = reporter(tmp_path, journal, batches, on_send=lambda: next(arrive, lambda: None)())
    assert report(monitored=run("a", now))
    assert report(sweep=True)
    assert batches == [["a", "b"], ["c"]], "the first time, older history is not reported"


def test_the_monitored_run_is_reported_even_before_journald_has_it(tmp_path):
    now = time.time()
    journal = Journal([])
    batches: list = []
    report = reporter(tmp_path, journal, batches)
    assert report(monitored=run("a", now))
    journal.runs.append(run("a", now))
    assert report(sweep=True)
    assert batches == [["a"]]


def logged(invocation: str, seconds: float, number: int) -> alert.FailedRun:
    """A run as PID 1's entry in the journal has it: with its cursor (sequence number `number`)."""
    return dataclasses.replace(run(invocation, seconds), cursor="s=e2f1b4fa;i=%x;b=277e2e16;m=%x;t=%x" % (
        number, number, int(seconds * 1e6)))


def test_issue22_8_a_failure_merged_into_a_running_alert_after_a_clock_step_back_is_reported(tmp_path):
    """Before: the lookups started at a watermark in wall time. After one failure with the clock a
    day ahead, the next alert found nothing later than it: its own run went out ($MONITOR_*),
    but a failure systemd merged into it while it was sending was never reported. Now the
    lookups read the journal after the cursor of the last failure reported."""
    now = time.time()
    journal = Journal([logged("ahead", now + 86400, 1)])
    batches: list = []
    report = reporter(tmp_path, journal, batches)
    assert report(monitored=journal.runs[0])
    journal.runs.append(logged("back", now, 2))  # the clock stepped back a day
    arrive = iter([lambda: journal.runs.append(logged("merged", now + 1, 3))])
    report = reporter(tmp_path, journal, batches, on_send=lambda: next(arrive, lambda: None)())
    assert report(monitored=run("back", now))
    assert report(sweep=True)
    assert batches == [["ahead"], ["back"], ["merged"]]


def test_a_state_written_before_cursors_is_looked_up_by_time_once(tmp_path):
    """A seen file without a cursor (an alert of an earlier version): the first lookup by the
    watermark, as before; then by the cursor of what it reported."""
    now = time.time()
    journal = Journal([logged("old", now - 10, 1), logged("new", now, 2)])
    alert.save_seen(str(tmp_path / "seen" / "x"), alert.Seen(int((now - 10) * 1e6), (("old", int((now - 10) * 1e6)),)))
    batches: list = []
    assert reporter(tmp_path, journal, batches)(sweep=True)
    assert batches == [["new"]] and alert.load_seen(str(tmp_path / "seen" / "x")).cursor == journal.runs[1].cursor


def test_a_sweep_at_boot_reports_the_run_the_shutdown_interrupted(tmp_path):
    journal = Journal(boots={"-1": [run("cut", time.time() - 600)], "0": []})
    batches: list = []
    assert reporter(tmp_path, journal, batches)()
    assert batches == [["cut"]]
    batches.clear()
    assert reporter(tmp_path, journal, batches)(sweep=True)
    assert batches == []


def test_a_restart_sends_what_an_undelivered_alert_left_queued(tmp_path):
    """The alert unit's Restart= runs without $MONITOR_*: it takes the queue."""
    clock = Clock()
    coalescer = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep)
    assert not coalescer.run({**EVENT, "job": "first"}, lambda events: False)
    sent: list = []
    assert not coalescer.run([], lambda events: sent.append(events) or True, take_queued=True), \
        "right after a failed delivery, only a later restart tries the channel again"
    clock.t += alert.FAILED_PAUSE
    assert coalescer.run([], lambda events: sent.append(events) or True, take_queued=True)
    assert [e["job"] for e in sent[0]] == ["first"]
    assert coalescer.run([], lambda events: sent.append(events) or True, take_queued=True)
    assert len(sent) == 1, "nothing left: nothing sent"


def test_probe16_4_alerts_and_pings_trust_the_hosts_store_like_jobs(tmp_path, monkeypatch):
    """Before: alerts and pings used the zipapp's bundled CA store, so an internal endpoint that
    jobs reached fine failed in alerts and pings. Here only the "host's store" (our CA) trusts
    the server."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from deployer.host import run
    from tests.tls import make_pki

    pki = make_pki(tmp_path / "pki")
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(self.path.split("?")[0])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"https://127.0.0.1:{httpd.server_address[1]}"
    try:
        monkeypatch.setattr(run, "SYSTEM_CA_BUNDLE", str(pki.ca))
        channel = channels.Channel("ops", "webhook", endpoint=base + "/hook")
        lines: list[str] = []
        assert alert.deliver(channel, [EVENT], log=lines.append, sleep=lambda _: None), lines
        run.ping(base + "/hc", "", log=lines.append)
        assert received == ["/hook", "/hc"], lines

        # A store that does not trust the server: refused once, not retried as if transient.
        monkeypatch.setattr(run, "SYSTEM_CA_BUNDLE", str(pki.other_ca))
        lines.clear()
        assert not alert.deliver(channel, [EVENT], log=lines.append, sleep=lambda _: None)
        assert len(lines) == 1 and "certificate verify failed" in lines[0] and "not retried" in lines[0], lines
        assert received == ["/hook", "/hc"]
    finally:
        httpd.shutdown()


def test_a_hold_found_at_boot_is_alerted_once_per_hold_and_channel(tmp_path):
    held = tmp_path / "held.json"
    held.write_text(json.dumps({"since": "2026-11-25T14:00:00+00:00", "down_for_seconds": 7980.5,
                                "lease_seconds": 300.0}))
    state = str(tmp_path)

    events = alert.held_events("cron02", state, "ops", held_path=str(held))

    assert alert.held_events("cron02", state, "ops", held_path=str(held)) == []  # once
    assert len(alert.held_events("cron02", state, "oncall", held_path=str(held))) == 1  # per channel
    title, text = alert.format_events(events)
    assert title == "deployer: host cron02 HOLDS its jobs (was down 2h13m)"
    assert "lease (5m) ran out" in text and "deployer release --host cron02" in text
    held.write_text(json.dumps({"since": "2026-11-26T09:00:00+00:00", "down_for_seconds": 60, "lease_seconds": 10}))
    assert len(alert.held_events("cron02", state, "ops", held_path=str(held))) == 1  # a new hold
    held.unlink()
    assert alert.held_events("cron02", state, "ops", held_path=str(held)) == []


def test_a_boot_that_could_not_record_its_hold_is_alerted_once_with_the_reason(tmp_path):
    """Issue 22 item 1: /var/lib/deployer read-only or full at boot: the hold is in /run instead."""
    held, held_run, state = tmp_path / "held.json", tmp_path / "run-held.json", str(tmp_path)
    reason = ("the hold check at boot failed ([Errno 30] Read-only file system: "
              "'/var/lib/deployer/held.json.tmp')")
    held_run.write_text(json.dumps({"since": "2026-12-06T04:00:00+00:00", "down_for_seconds": 60.0,
                                    "lease_seconds": 10.0, "reason": reason}))

    events = alert.held_events("cron02", state, "ops", held_path=str(held), held_run=str(held_run))

    assert alert.held_events("cron02", state, "ops", held_path=str(held), held_run=str(held_run)) == []
    title, text = alert.format_events(events)
    assert title == "deployer: host cron02 HOLDS its jobs (failing closed)"
    assert "Read-only file system" in text and "deployer release --host cron02" in text
    failed = {"kind": "failed", "job": "tick", "host": "cron02", "method": "POST", "url": "http://h/x",
              "result": "signal", "exit_status": 15, "time": "2026-12-06T04:00:00+00:00", "lines": []}
    title, text = alert.format_events([failed] + events)  # merged with a boot's failures
    assert title == "deployer: host cron02 HOLDS its jobs; 1 job run failed"
    assert "Read-only file system" in text


def test_a_message_merging_kinds_counts_each_for_what_it_is_not_as_failed_runs():
    """A channel's queue merges whatever came in its window: a recovery and the watcher's "started
    again" in one message were titled "1 job runs failed" (a CI run of test_late_long)."""
    recovered = {"kind": "recovered", "job": "tick", "host": "cron02", "failed_runs": 1,
                 "failing_for": "40s", "time": "2026-12-06T04:01:00+00:00"}
    started = {"kind": "late_ended", "job": "tick", "host": "cron02", "slot": "2026-12-06T04:00:10Z",
               "started": "2026-12-06T04:00:50Z", "late_by": "40s", "time": "2026-12-06T04:01:00Z"}
    failed = {"kind": "failed", "job": "settle", "host": "cron02", "method": "POST", "url": "http://h/x",
              "result": "exit-code", "exit_status": 1, "time": "2026-12-06T04:00:00+00:00", "lines": []}

    title, text = alert.format_events([recovered, started])
    assert title == "deployer: job tick recovered; job tick started again on cron02"
    assert "tick recovered after 1 failed run" in text and "tick: a run started at" in text
    late = dict(started, kind="late", alert_late="30s", reason="the host holds its jobs")
    title, _ = alert.format_events([failed, recovered, dict(started, job="other"), late])
    assert title == "deployer: 1 job run failed; job tick recovered; 2 late or long jobs on cron02"
    held = {"kind": "held", "host": "cron02", "down_for": "12s", "since": "x", "lease": "10s"}
    title, text = alert.format_events([held, late])  # the hold, merged with a watcher's event only
    assert title == "deployer: host cron02 HOLDS its jobs; job tick LATE"
    assert "ran out while it was down" in text and "tick: slot 2026-12-06T04:00:10Z has not started" in text


# --- issue 22 item 5: a service's text stays text in every channel ------------------------------

HOSTILE = ["<!channel> <!here> <@U024BE7LH> <http://evil.example/|click here> & more",
           "[login](http://evil.example/phish) ![pixel](http://evil.example/track.png)",
           '<at user_id="all">everyone</at> <font color="warning">fake</font> <@wecom-user>',
           "# heading **bold** `code` | table | ~strike~\n[ref]: http://evil.example/ref"]


def _message_text(kind: str, message: dict) -> str:
    if kind in ("dingtalk", "wecom"):
        return message["markdown"].get("text") or message["markdown"]["content"]
    if kind == "feishu":
        return message["content"]["text"]
    return message["text"]


@pytest.mark.parametrize("kind", ["dingtalk", "wecom", "feishu", "slack", "webhook"])
def test_issue22_5_a_bodys_markup_reaches_no_channel_as_markup(robot, kind):
    """Before: the excerpt went into Slack raw (`<!channel>` pinged everyone, `<url|text>` was a
    link) and into DingTalk/WeCom markdown raw (links, images), and Feishu read `<at>`."""
    secret = robot.secret if kind in ("dingtalk", "feishu") else ""
    channel = channels.Channel("ops", kind, token=robot.token, secret=secret, endpoint=robot.endpoint(kind))
    event = {**EVENT, "lines": HOSTILE}
    assert alert.deliver(channel, [event], log=lambda _: None)
    text = _message_text(kind, robot.accepted[0])
    assert "settle" in text and "cron01" in text
    if kind == "slack":  # Slack's own escaping: &amp; &lt; (no `<` opens a mention or link, so no `>` closes one)
        assert "<" not in text
        assert "&lt;!channel>" in text and "&lt;http://evil.example/|click here>" in text
        assert "&amp; more" in text
    if kind in ("dingtalk", "wecom"):
        data = text.split("\n\n> ", 1)[1]
        for markup in ("](", "![", "<", "**bold", "`code`", "> # heading", "\n[ref]"):
            assert markup not in data, f"{markup!r} reached {kind}'s markdown"
        assert "\\# heading \\*\\*bold" in data
        assert "\\[login\\]\\(http://evil.example/phish\\)" in data
    if kind == "feishu":
        assert "<at" not in text and "</at>" not in text and "＜at user_id" in text
    if kind == "webhook":  # JSON carries text as text; only the data's newline is gone
        assert all(line.replace("\n", " ") in text for line in HOSTILE)
    assert "\n[ref]" not in text, "a newline in data started a block of its own"


def test_issue22_5_each_channel_type_declares_its_escaping():
    for kind in channels.CHANNEL_TYPES.values():
        assert kind.escape("a\nb") == "a b"
    assert channels.CHANNEL_TYPES["slack"].escape("<!channel>") == "&lt;!channel>"
    assert channels.CHANNEL_TYPES["slack"].escape("> quoted") == "&gt; quoted", "a `>` opening a quote"
    assert "](" not in channels.CHANNEL_TYPES["dingtalk"].escape("[x](http://y)")


# --- issue 22 item 11: an alert storm names every failed job ------------------------------------

STORM = REPO / "tests" / "data" / "alerts"


def storm_events(monkeypatch) -> list:
    """82 failed runs at once, from a journal in the shape `journal_failed_runs` reads (PID 1's
    "exited" and "Failed with result" entries) and each run's own lines (`run_account`)."""
    runs = journal.parse_failed_runs((STORM / "storm-82-failed-runs.json").read_text().splitlines())
    lines = json.loads((STORM / "storm-82-run-lines.json").read_text())
    monkeypatch.setattr(alert, "account_of", lambda invocation, fallback: journal.RunAccount(
        "2026-11-24T07:00:00Z", fallback, tuple(lines.get(invocation, []))))
    return [alert.failed_run_event(alert.paths.job_of_unit(r.unit), "cron01", r) for r in runs]


@pytest.mark.parametrize("kind", ["dingtalk", "slack"])
def test_issue23_3_a_storm_of_82_failed_jobs_is_one_message_that_names_every_one(robot, tmp_path, monkeypatch, kind):
    """Issue 22 item 11, before: the merged message was cut at 4,000 characters and named 11 of
    the 82 jobs. Issue 23 item 3, before: the first 18 alerts went out one by one and only the
    rest were merged (19 messages); now the storm is one message (in parts when too long)."""
    events = storm_events(monkeypatch)
    names = {e["job"] for e in events}
    assert len(names) == 82
    clock = Clock()
    secret = robot.secret if kind == "dingtalk" else ""
    channel = channels.Channel("ops", kind, token=robot.token, secret=secret, endpoint=robot.endpoint(kind))
    coalescer = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep)
    send = lambda batch: alert.deliver(channel, batch, log=lambda _: None)  # noqa: E731
    # 82 alert units at once, as systemd starts them: each queues its failure, then waits for
    # the channel to be quiet; the first to get through sends them all, the others find theirs sent.
    queued = []
    for event in events:
        queued.append(coalescer.enqueue(event))
        clock.t += 0.2
    assert all(coalescer.run(e, send, queued=q) for e, q in zip(events, queued))

    texts = [_message_text(kind, message) for message in robot.accepted]
    assert all(len(text) <= alert.MAX_TEXT for text in texts)
    parts = len(texts)
    assert all(f"82 job runs failed on cron01{f' (part {i} of {parts})' if parts > 1 else ''}" in text
               for i, text in enumerate(texts, 1)), [t[:80] for t in texts]
    named = {name for name in names if any(name in text for text in texts)}
    assert named == names, f"{len(names - named)} of 82 failed jobs named in no message: {sorted(names - named)}"
    assert "(truncated)" not in "".join(texts)
    groups = {alert.storm_group(e) for e in events}
    assert all(any(group.replace("`", "") in text.replace("\\", "") for text in texts) for group in groups), groups


def test_issue23_3_a_storm_is_grouped_by_reason_and_a_few_runs_keep_their_details():
    reasons = ["status 500 not expected", "status 503 not expected", "code is 1, expected 0"]
    events = [{**EVENT, "job": f"storm-{i:03d}", "reason": reasons[i % 3]} for i in range(100)]
    (title, text), = alert.format_messages(events)
    assert title == "deployer: 100 job runs failed on cron01"
    for r, reason in enumerate(reasons):
        header = f"**failed: {reason} (exit-code, exit status 1): {len(range(r, 100, 3))} runs of {len(range(r, 100, 3))} jobs**"
        assert header in text, text
        listed = text.split(header)[1].split("\n\n")[1].split(", ")
        assert listed == [f"storm-{i:03d}" for i in range(r, 100, 3)]
    few = alert.format_messages(events[:alert.STORM_RUNS])
    assert len(few) == 1 and "> attempt 1/1" in few[0][1] and "runs of" not in few[0][1]


def test_issue23_3_a_storm_waits_for_quiet_then_goes_out_once_and_a_lone_failure_waits_only_that(tmp_path):
    clock = Clock()
    sent: list = []
    coalescer = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep)
    start = clock.t
    assert coalescer.run({**EVENT, "job": "lone"}, lambda batch: sent.append(batch) or True)
    assert [len(b) for b in sent] == [1] and clock.t - start == pytest.approx(alert.GATHER_QUIET)
    # A storm that goes on (one failure every 2 s for 100 s): held back at most GATHER_MAX.
    sent.clear()
    queued = []
    for i in range(50):
        queued.append(coalescer.enqueue({**EVENT, "job": f"j{i}"}))
        clock.t += 2
        if clock.t - start >= 5 + alert.GATHER_MAX + 1 and not sent:
            assert coalescer.run({}, lambda batch: sent.append(batch) or True, queued=queued[0])
    assert sent and all(coalescer.run([], lambda batch: sent.append(batch) or True, queued=q) for q in queued)
    assert sum(len(b) for b in sent) == 50 and len(sent) == 2


def test_issue23_3_after_a_failed_delivery_the_waiting_alerts_leave_it_to_a_restart(tmp_path):
    clock = Clock()
    tries: list = []
    coalescer = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep)
    queued = [coalescer.enqueue({**EVENT, "job": f"j{i}"}) for i in range(20)]
    results = [coalescer.run([], lambda batch: tries.append(batch) and False, queued=q) for q in queued]
    assert results == [False] * 20 and len(tries) == 1, "one try for the storm, not one per alert"
    clock.t += alert.FAILED_PAUSE
    assert coalescer.run([], lambda batch: tries.append(batch) or True, take_queued=True)
    assert len(tries[-1]) == 20


def test_issue22_11_a_storm_too_large_for_one_message_is_split_into_parts():
    events = [{**EVENT, "job": f"job-with-a-rather-long-name-{i:04d}"} for i in range(400)]
    messages = alert.format_messages(events)
    assert len(messages) > 1 and all(len(text) <= alert.MAX_TEXT for _, text in messages)
    assert messages[0][0].endswith(f"(part 1 of {len(messages)})")
    together = "".join(text for _, text in messages)
    assert all(e["job"] in together for e in events)
    assert "400 runs of 400 jobs" in together


# --- issue 24 item 5: the alert leads with job, host, slot and reason; a typed webhook document --

INVOCATION = "5d1f0c2b8a7e4b3c9d6e1f2a3b4c5d6e"
PID1 = {"_PID": "1", "UNIT": "deployer-settle.service", "INVOCATION_ID": INVOCATION, "_BOOT_ID": "b007"}
RUN = {"_PID": "812", "_UID": "61200", "_SYSTEMD_UNIT": "deployer-settle.service",
       "_SYSTEMD_INVOCATION_ID": INVOCATION, "SYSLOG_IDENTIFIER": "deployer-settle"}
RECORD = {**RUN, "MESSAGE_ID": "5f0c1b0e9f5a4e2d8a7c3b6d1e2f4a90",
          "MESSAGE": "settle: FAILED (status 500 not expected) in 0.01s (1 attempt)", "DEPLOYER_JOB": "settle",
          "DEPLOYER_RUN": INVOCATION, "DEPLOYER_SLOT": "1795503600", "DEPLOYER_STARTED": "1795503600.412",
          "DEPLOYER_DURATION": "0.012", "DEPLOYER_ATTEMPTS": "1", "DEPLOYER_RESULT": "failed",
          "DEPLOYER_REASON": "status 500 not expected", "DEPLOYER_HTTP_STATUS": "500",
          "DEPLOYER_KEY": "settle/2026-11-24T07:00:00Z", "DEPLOYER_EPOCH": "0"}


def run_entries(killed: bool = False) -> list:
    """A failed run's entries as `journalctl -o json _SYSTEMD_INVOCATION_ID=X + INVOCATION_ID=X`
    gives them: PID 1's five lines around the trigger's three and its record (none when killed),
    and one a local user sent with the run's INVOCATION_ID= (journald does not check that field)."""
    code, status, result = ("killed", "9", "signal") if killed else ("exited", "1", "exit-code")
    return [
        {**PID1, "MESSAGE_ID": journal.UNIT_STARTING, "MESSAGE": "Starting deployer-settle.service - deployer job settle..."},
        {**RUN, "MESSAGE": "slot 2026-11-24T07:00:00Z (timer), key settle/2026-11-24T07:00:00Z, epoch 0"},
        {**RUN, "MESSAGE": "attempt 1/1: POST http://svc/settle -> 500 in 0.01s: status 500 not expected: boom"},
    ] + ([] if killed else [
        {**RUN, "MESSAGE": "job settle: FAILED (status 500 not expected)"},
        RECORD,
    ]) + [
        {"_PID": "4242", "_UID": "1000", "INVOCATION_ID": INVOCATION, "MESSAGE": "<!channel> forged line"},
        {**PID1, "MESSAGE_ID": "98e322203f7a4ed290d09fe03c09fe15", "EXIT_CODE": code, "EXIT_STATUS": status,
         "MESSAGE": f"deployer-settle.service: Main process exited, code={code}, status={status}/FAILURE"},
        {**PID1, "MESSAGE_ID": "d9b373ed55a64feb8242e02dbe79a49c", "UNIT_RESULT": result, "__CURSOR": "s=1;i=9",
         "__REALTIME_TIMESTAMP": "1795503600500000", "MESSAGE": f"deployer-settle.service: Failed with result '{result}'."},
        {**PID1, "MESSAGE": "Failed to start deployer-settle.service - deployer job settle."},
        {**PID1, "MESSAGE": "deployer-settle.service: Consumed 95ms CPU time."},
    ]


class RecordedSystemd:
    def __init__(self, entries):
        self.entries = entries

    def journal_entries(self, args):
        return list(self.entries)


BOILERPLATE = ("Starting deployer-settle", "Main process exited", "Failed with result", "Failed to start", "Consumed")


@pytest.mark.parametrize("killed", [False, True], ids=["record", "killed"])
def test_issue24_5_a_runs_account_is_its_slot_reason_and_own_lines(killed):
    account = journal.run_account(RecordedSystemd(run_entries(killed)), INVOCATION, alert.MAX_LINES)
    own = ("slot 2026-11-24T07:00:00Z (timer), key settle/2026-11-24T07:00:00Z, epoch 0",
           "attempt 1/1: POST http://svc/settle -> 500 in 0.01s: status 500 not expected: boom")
    if killed:  # no record: PID 1 says what ended it, and the slot is not known
        assert account == journal.RunAccount(None, "signal (killed, signal KILL)", own)
    else:
        assert account == journal.RunAccount("2026-11-24T07:00:00Z", "status 500 not expected",
                                             own + ("job settle: FAILED (status 500 not expected)",))


def test_issue23_3_an_alert_waits_for_journald_to_catch_up_before_giving_its_reason(monkeypatch):
    """Under a storm's load journald is tens of seconds behind: the first read has none of the
    run's end, and the reason would be systemd's result (`exit-code`), so a storm's runs would be
    grouped by result, not by the reason each gave. The alert waits for journald, then reads again."""
    entries = run_entries()
    reads: list = []
    barriers: list = []

    class Behind(RecordedSystemd):
        def journal_entries(self, args, **_):
            reads.append(args)
            return list(self.entries[:3] if not barriers else self.entries)

    monkeypatch.setattr(alert, "_systemd", lambda: Behind(entries))
    monkeypatch.setattr(alert, "journal_barrier", lambda wait: barriers.append(wait) or True)
    account = alert.account_of(INVOCATION, "exit-code")
    assert (account.reason, account.complete, len(reads), barriers) == ("status 500 not expected", True, 2,
                                                                         [alert.ACCOUNT_WAIT])
    reads.clear()  # the journal had it at once: no barrier
    assert alert.account_of(INVOCATION, "exit-code").reason == "status 500 not expected" and len(reads) == 1
    assert barriers == [alert.ACCOUNT_WAIT]


def test_issue23_3_the_journal_barrier_is_an_entry_read_back(tmp_path, monkeypatch):
    """journald takes its native socket's entries in order: once the alert reads back an entry it
    sent, the entries sent before it (the run's record, PID 1's failure) are readable too."""
    import contextlib
    import socket

    path = str(tmp_path / "journal.socket")
    journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journald.bind(path)
    journald.setblocking(False)
    got: list = []

    class Journal:
        def journal_entries(self, args, **_):
            with contextlib.suppress(BlockingIOError):
                got.append(journald.recv(65536))  # journald takes it in, one poll later
                return []
            token = args[0].split("=", 1)[1].encode()
            return [{"MESSAGE": "waiting"}] if got and token in got[0] else []

    monkeypatch.setattr(alert, "_systemd", Journal)
    pauses: list = []
    assert alert.journal_barrier(10, path, sleep=pauses.append) and pauses == [0.5]
    assert b"DEPLOYER_ALERT_BARRIER=" in got[0] and b"SYSLOG_IDENTIFIER=deployer-alert" in got[0]
    journald.close()
    assert not alert.journal_barrier(10, str(tmp_path / "none"), sleep=pauses.append), "no journal: not waited for"


def test_the_journal_barrier_reads_less_often_the_longer_journald_lags(tmp_path, monkeypatch):
    """A storm's hundred alerts, each polling every 0.5 s, were most of the load that kept
    journald behind: the pauses double up to 4 s, and the last one ends at the deadline."""
    import socket

    path = str(tmp_path / "journal.socket")
    journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journald.bind(path)
    reads: list = []

    class Journal:
        def journal_entries(self, args, **_):
            reads.append(args)
            return [{"MESSAGE": "waiting"}] if len(reads) == 7 else []

    monkeypatch.setattr(alert, "_systemd", Journal)
    pauses: list = []
    assert alert.journal_barrier(60, path, sleep=pauses.append)
    assert pauses == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    clock = iter([0.0, 1.0, 9.5, 10.5])
    monkeypatch.setattr(alert.time, "monotonic", lambda: next(clock))
    reads.clear()
    pauses.clear()
    assert not alert.journal_barrier(10, path, sleep=pauses.append)
    assert pauses == [0.5, 0.5], "the last pause ends at the deadline"
    journald.close()


def failed_settle_event(monkeypatch, killed: bool = False) -> dict:
    entries = run_entries(killed)
    monkeypatch.setattr(alert, "_systemd", lambda: RecordedSystemd(entries))
    [run] = journal.failed_runs(entries)
    return alert.failed_run_event("settle", "cron01", run)


@pytest.mark.parametrize("killed", [False, True])
def test_a_control_process_killed_after_the_run_is_not_taken_for_the_runs_end(monkeypatch, killed):
    """CI, a storm on a saturated host: the job's ExecStopPost= ran past TimeoutStopSec= and PID 1
    logged "Control process exited, code=killed, status=15/TERM" under the run's MESSAGE_ID and
    INVOCATION_ID (systemd 252, as recorded on a test host: COMMAND=ExecStopPost); 14 jobs were
    grouped under `(exit-code, signal TERM)`. The run's end is its main process's (COMMAND=ExecStart)."""
    control = {**PID1, "MESSAGE_ID": "98e322203f7a4ed290d09fe03c09fe15", "EXIT_CODE": "killed", "EXIT_STATUS": "15",
               "COMMAND": "ExecStopPost",
               "MESSAGE": "deployer-settle.service: Control process exited, code=killed, status=15/TERM"}
    entries = [dict(e, COMMAND="ExecStart") if e.get("MESSAGE_ID") == "98e322203f7a4ed290d09fe03c09fe15" else e
               for e in run_entries(killed)]
    failed_at = next(i for i, e in enumerate(entries) if e.get("MESSAGE_ID") == "d9b373ed55a64feb8242e02dbe79a49c")
    entries.insert(failed_at, control)  # PID 1 logs it after the main process's end, before "Failed with result"
    [found] = journal.failed_runs(entries)
    assert (found.exit_number, found.signal) == ((None, "KILL") if killed else (1, None))
    monkeypatch.setattr(alert, "_systemd", lambda: RecordedSystemd(entries))
    event = alert.failed_run_event("settle", "cron01", found)
    assert alert.storm_group(event).endswith(", signal KILL)" if killed else "(exit-code, exit status 1)")
    if killed:  # a run that wrote no record: PID 1's words, the main process's end
        assert event["reason"] == "signal (killed, signal KILL)"
        [run] = journal.runs_from_journal(entries)["settle"]
        assert run.reason == "signal (killed, signal KILL)"


@pytest.mark.parametrize("killed", [False, True])
def test_a_run_whose_exit_entry_pid1_dropped_ends_as_monitor_says(monkeypatch, killed):
    """CI, a loaded machine, a storm of 120 failed jobs: PID 1 dropped some "Main process exited"
    entries (it gives up on one it cannot send within 10 ms) and 8 jobs were grouped under
    `failed: status 500 not expected (exit-code)`, without `exit status 1`. The alert that
    $MONITOR_* names the run for takes how it ended from there."""
    entries = [e for e in run_entries(killed) if e.get("MESSAGE_ID") != "98e322203f7a4ed290d09fe03c09fe15"]
    monkeypatch.setattr(alert, "_systemd", lambda: RecordedSystemd(entries))
    [found] = journal.failed_runs(entries)
    assert (found.exit_number, found.signal) == (None, None)
    monkeypatch.setenv("MONITOR_INVOCATION_ID", INVOCATION)
    monkeypatch.setenv("MONITOR_SERVICE_RESULT", "signal" if killed else "exit-code")
    monkeypatch.setenv("MONITOR_EXIT_CODE", "killed" if killed else "exited")
    monkeypatch.setenv("MONITOR_EXIT_STATUS", "KILL" if killed else "1")
    event = alert.failed_run_event("settle", "cron01", found)
    assert (event["exit_status"], event["signal"]) == ((None, "KILL") if killed else (1, None))
    assert alert.storm_group(event).endswith(", signal KILL)" if killed else "(exit-code, exit status 1)")
    monkeypatch.setenv("MONITOR_INVOCATION_ID", "another-run")
    assert alert.failed_run_event("settle", "cron01", found)["exit_status"] is None, "another run's exit is not taken"


@pytest.mark.parametrize("kind", ["dingtalk", "wecom", "feishu", "slack", "webhook"])
def test_issue24_5_the_message_leads_with_job_host_slot_and_reason_then_the_runs_lines(robot, monkeypatch, kind):
    """Before: `result: exit-code, exit status 1` first, the reason in the 4th of 8 journal lines
    (5 of them PID 1's), and Slack's text had `-&gt;` for `->`."""
    secret = robot.secret if kind in ("dingtalk", "feishu") else ""
    channel = channels.Channel("ops", kind, token=robot.token, secret=secret, endpoint=robot.endpoint(kind))
    assert alert.deliver(channel, [failed_settle_event(monkeypatch)], log=lambda _: None)
    paragraphs = _message_text(kind, robot.accepted[0]).split("\n\n")
    assert paragraphs[0].strip("*") == "deployer: job settle FAILED on cron01"
    assert paragraphs[1] == "settle on cron01, slot 2026-11-24T07:00:00Z: status 500 not expected"
    assert "POST http://svc/settle -> 500 in 0.01s" in paragraphs[3], "the arrow reads as written"
    assert paragraphs[-1].startswith("result: exit-code, exit status 1, at ")
    text = "\n\n".join(paragraphs)
    assert not [line for line in BOILERPLATE if line in text], "systemd's boilerplate in the message"
    assert "forged" not in text and "FAILED (status 500 not expected) in 0.01s" not in text


def test_issue24_5_a_killed_run_leads_with_pid1s_reason(robot, monkeypatch):
    channel = channels.Channel("ops", "slack", token=robot.token, endpoint=robot.endpoint("slack"))
    assert alert.deliver(channel, [failed_settle_event(monkeypatch, killed=True)], log=lambda _: None)
    paragraphs = robot.accepted[0]["text"].split("\n\n")
    assert paragraphs[1] == "settle on cron01, slot unknown (the run wrote no record): signal (killed, signal KILL)"
    assert paragraphs[-1].startswith("result: signal, signal KILL, at ")


def test_issue24_5_the_webhook_document_is_typed(robot, monkeypatch):
    channel = channels.Channel("ops", "webhook", token=robot.token, endpoint=robot.endpoint("webhook"))
    failed, killed = failed_settle_event(monkeypatch), failed_settle_event(monkeypatch, killed=True)
    version1 = {**EVENT, "job": "queued-before-the-upgrade"}  # exit_status "1", no reason, slot or signal
    assert alert.deliver(channel, [failed], log=lambda _: None)
    assert alert.deliver(channel, [version1, killed], log=lambda _: None)
    one, merged = robot.accepted
    assert {key: one[key] for key in ("version", "kind", "job", "host", "slot", "reason", "result", "exit_status",
                                      "signal", "invocation")} == {
        "version": 2, "kind": "failed", "job": "settle", "host": "cron01", "slot": "2026-11-24T07:00:00Z",
        "reason": "status 500 not expected", "result": "exit-code", "exit_status": 1, "signal": None,
        "invocation": INVOCATION}
    assert one["lines"][-1] == "job settle: FAILED (status 500 not expected)"
    assert one["events"] == [{k: v for k, v in one.items() if k not in ("version", "title", "text", "events")}]
    assert [(e["job"], e["exit_status"], e["signal"], e["reason"]) for e in merged["events"]] == [
        ("queued-before-the-upgrade", 1, None, "exit-code"), ("settle", None, "KILL", "signal (killed, signal KILL)")]
    assert merged["job"] == "settle", "the top level is the last event, as in version 1"
    for document in (one, merged):
        assert list(document)[:3] == ["version", "title", "text"]
        assert all(list(e) == list(channels.EVENT_FIELDS[e["kind"]]) for e in document["events"])


def test_issue24_5_every_webhook_field_is_documented():
    """docs/alerts.md has a table row for every field of the document and of each event kind."""
    doc = (REPO / "docs" / "alerts.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `")}
    fields = {"version", "title", "text", "events"} | {f for names in channels.EVENT_FIELDS.values() for f in names}
    assert fields - rows == set(), "fields of the webhook document missing from docs/alerts.md"


# --- issue 24 item 7: an alert writes its time as every deployer text does ------------------------

@pytest.mark.parametrize("stamp", ["2026-12-06T12:00:00+0800", "2026-12-06T04:00:00+00:00"])
def test_issue24_7_an_alert_says_when_in_the_one_format(stamp):
    """Before: `at 2026-12-06T12:00:00+0800` (the host's zone, ISO), where status, history and logs
    print otherwise. The event's `time` (the webhook document's) stays ISO 8601."""
    failed = {"kind": "failed", "job": "tick", "host": "cron02", "method": "POST", "url": "http://h/x",
              "result": "exit-code", "exit_status": 1, "time": stamp, "lines": []}
    _, text = alert.format_events([failed])
    assert "exit status 1, at 2026-12-06 04:00:00 UTC" in text and stamp not in text
    _, text = alert.format_events([dict(failed, kind="recovered")])
    assert "succeeded again at 2026-12-06 04:00:00 UTC" in text
    assert failed["time"] == stamp
    assert alert.clock_text("not a time") == "not a time"


# -- deployer alert test (issue 23 item 4) ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["dingtalk", "wecom", "feishu", "slack", "webhook"])
def test_a_test_message_is_accepted_by_each_robot_and_says_it_is_a_test(robot, kind):
    secret = robot.secret if kind in ("dingtalk", "feishu") else ""
    channel = channels.Channel("ops", kind, token=robot.token, secret=secret, endpoint=robot.endpoint(kind))
    accepted, status, answer = alert.test_send(channel, "cron01")
    assert (accepted, status, robot.refused) == (True, 200, [])
    assert "test message via ops from cron01" in json.dumps(robot.accepted[0])
    if kind == "webhook":
        assert robot.accepted[0]["kind"] == "test" and robot.accepted[0]["events"] == [
            {"kind": "test", "host": "cron01", "time": robot.accepted[0]["time"]}]


@pytest.mark.parametrize("kind, token, secret, answer", [
    pytest.param("dingtalk", "wrong", "SEC-abc", "errcode 310000: token", id="dingtalk-token"),
    pytest.param("dingtalk", "tok-1", "wrong", "errcode 310000: sign not match", id="dingtalk-sign"),
    pytest.param("slack", "wrong", "", "HTTP 404: no such route", id="slack-token"),
    pytest.param("webhook", "wrong", "", "HTTP 401: no", id="webhook-token"),
])
def test_a_refused_test_message_is_sent_once_and_says_what_the_channel_answered(robot, kind, token, secret, answer):
    channel = channels.Channel("ops", kind, token=token, secret=secret, endpoint=robot.endpoint(kind))
    assert alert.test_send(channel, "cron01")[::2] == (False, answer)
    assert len(robot.requests) == 1, "a test is one attempt: what the channel answers is the point"


def test_a_test_message_that_gets_no_answer_has_no_status(server):
    server.routes["/slow"] = Reply(200, b"ok", delay=alert.DELIVERY_TIMEOUT[1] + 2)
    channel = channels.Channel("ops", "webhook", endpoint=server.url("/slow"))
    assert alert.test_send(channel, "cron01") == (False, None, "timed out reading")


def test_the_agent_takes_the_test_answer_only_from_the_units_dynamic_user():
    from deployer.host.agent import alert_test_answer

    fields = {"DEPLOYER_ALERT_TEST": "ops", "DEPLOYER_ALERT_ACCEPTED": "y", "DEPLOYER_ALERT_HTTP_STATUS": "200",
              "DEPLOYER_ALERT_ANSWER": "errcode 0: ok"}
    forged = dict(fields, _UID="1000")
    real = dict(fields, _UID="61300", DEPLOYER_ALERT_ACCEPTED="n", DEPLOYER_ALERT_ANSWER="errcode 310000: token")
    answer = alert_test_answer("ops", [forged, real], "lines")
    assert (answer.accepted, answer.http_status, answer.answer) == (False, 200, "errcode 310000: token")
    assert alert_test_answer("ops", [forged], "").answer == "not sent: the test unit wrote no answer"
    assert alert_test_answer("ops", [], "", 1, "Job failed").answer == "not sent: the test unit failed (Job failed)"


# -- alert policy (issue 23 item 1) -----------------------------------------------------------------

EACH, AFTER3, HOURLY = channels.AlertPolicy(), channels.AlertPolicy(3, "never"), channels.AlertPolicy(2, 3600)


@pytest.mark.parametrize("policy, failures, alerted, now, sends", [
    pytest.param(EACH, 1, 0, 100, True, id="default-first"),
    pytest.param(EACH, 7, 50, 100, True, id="default-every-run"),
    pytest.param(AFTER3, 2, 0, 100, False, id="after3-below"),
    pytest.param(AFTER3, 3, 0, 100, True, id="after3-reached"),
    pytest.param(AFTER3, 4, 90, 100_000, False, id="after3-never-reminds"),
    pytest.param(HOURLY, 5, 100, 100 + 3599, False, id="repeat-not-due"),
    pytest.param(HOURLY, 6, 100, 100 + 3600, True, id="repeat-due"),
])
def test_the_policy_decides_from_the_streak(policy, failures, alerted, now, sends):
    assert policy.decide(failures, alerted, 1, now) is sends


@pytest.mark.parametrize("after, repeat, policy", [
    pytest.param(1, None, channels.AlertPolicy(1, "each"), id="default-is-todays-behaviour"),
    pytest.param(3, None, channels.AlertPolicy(3, "never"), id="after-alone-alerts-once-per-streak"),
    pytest.param(3, "each", channels.AlertPolicy(3, "each"), id="explicit-each"),
    pytest.param(1, 3600, channels.AlertPolicy(1, 3600), id="reminders"),
])
def test_the_policy_of_the_inventory_values_round_trips_through_the_unit(after, repeat, policy):
    assert channels.AlertPolicy.of(after, repeat) == policy
    assert unitkeys.ALERT_POLICY.read(unitkeys.ALERT_POLICY.line(policy)) == policy


@pytest.mark.parametrize("text", ["", "{", '{"after": 0, "repeat": "each"}', '{"after": 2, "repeat": "sometimes"}',
                                  '{"after": 2, "repeat": -5}', "[]"])
def test_an_unreadable_policy_line_means_every_failed_run_alerts(text):
    assert unitkeys.ALERT_POLICY.decode(text) == EACH


def test_five_failures_then_a_success_under_alert_after_3_send_one_alert_and_one_recovery(tmp_path):
    """The host side, counted: what apply_policy lets through, run after run, then the recovery."""
    clock = iter(range(1000, 100_000, 60))
    sent, lines = [], []
    for _ in range(5):
        sent += alert.apply_policy(str(tmp_path), "settle", AFTER3, [dict(EVENT)], lines.append,
                                   now=lambda: next(clock))
    assert len(sent) == 1 and (sent[0]["failed_runs"], sent[0]["failing_for"]) == (3, "2m")
    assert "job settle: 2 failed run(s) in a row; no alert now (alert_after = 3)" in lines
    streak = alert.load_streak(str(tmp_path), "settle")
    assert (streak.failures, streak.since, streak.alerted) == (5, 1000, 1120)
    recovered = alert.recovered_event("settle", "cron01", streak, 1000 + 2 * 3600 + 13 * 60)
    title, text = alert.format_events([recovered])
    assert title == "deployer: job settle recovered on cron01"
    assert text.split("\n\n")[1] == "settle recovered after 5 failed runs, 2h13m"
    assert channels.typed_event(recovered)["failed_runs"] == 5


def test_reminders_go_out_at_most_once_per_alert_repeat(tmp_path):
    moments = iter([0, 600, 1200, 3000, 600 + 3599, 600 + 3600, 600 + 3600 + 100])
    sent = [bool(alert.apply_policy(str(tmp_path), "settle", HOURLY, [dict(EVENT)], lambda _: None,
                                    now=lambda: next(moments))) for _ in range(7)]
    assert sent == [False, True, False, False, False, True, False]


def test_a_default_policy_alerts_every_failed_run_and_leaves_the_event_as_it_was(tmp_path):
    sent = [alert.apply_policy(str(tmp_path), "settle", EACH, [dict(EVENT)], lambda _: None) for _ in range(3)]
    assert sent == [[EVENT]] * 3


def test_a_streak_that_cannot_be_saved_leaves_no_empty_file(tmp_path, monkeypatch):
    """A full disk (e2e: test_probe_trigger's 64 KiB tmpfs) fails the write after the open: the
    count is lost (best effort), and no zero-byte .tmp is left behind."""
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(alert.json, "dump", no_space)
    alert.save_streak(str(tmp_path), "settle", alert.Streak(failures=2, since=1.0))
    assert [p.name for p in (tmp_path / "streak").iterdir()] == []


def test_issue23_a_skipped_slot_after_failures_is_no_recovery(tmp_path, monkeypatch, robot):
    """A catch-up skipped by catch_up exits 0, so OnSuccess= starts the recovery alert: the job
    still fails, and the failing streak goes on."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("MONITOR_INVOCATION_ID", "inv-skipped")
    (tmp_path / "failing").mkdir()
    (tmp_path / "failing" / "settle").write_text("")
    reasons = {"inv-skipped": "skipped: missed by 9h12m, catch_up = 2h", "inv-ran": "status 200"}
    monkeypatch.setattr(alert, "account_of", lambda invocation, fallback, **_: journal.RunAccount(
        "2026-12-06T07:00:00Z", reasons[invocation], ()))
    channel = channels.Channel("ops", "slack", token=robot.token, endpoint=robot.endpoint("slack"))
    assert alert.alert_main("settle", "cron01", channel, recovered=True)
    assert robot.accepted == [] and (tmp_path / "failing" / "settle").exists()
    monkeypatch.setenv("MONITOR_INVOCATION_ID", "inv-ran")  # a run that succeeded: the recovery goes out
    assert alert.alert_main("settle", "cron01", channel, recovered=True)
    assert len(robot.accepted) == 1 and not (tmp_path / "failing" / "settle").exists()


def in_flight_of(clock, runs: dict, alerts: set):
    """A Coalescer's `in_flight` over a fake PID 1: {run: when it began} and alert pids, changed
    by the test as time goes on."""
    def in_flight(since, until):
        return alert.InFlight(sum(1 for began in runs.values() if since <= began <= until), frozenset(alerts))
    return in_flight


def test_issue23_3_a_storm_waits_for_alerts_still_looking_up_their_failures(tmp_path):
    """Under a storm's load an alert takes seconds to read the journal before it queues its
    failure: its unit's process (its cgroup) is in flight and not waiting, so the message waits
    for it; else the first alert would go out alone."""
    clock = Clock()
    sent: list = []
    alerts = {101, 102}  # the gatherer (waiting) and a slow alert still reading the journal
    first = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep,
                            in_flight=in_flight_of(clock, {}, alerts), pid=101)
    slow = alert.Coalescer(str(tmp_path), "ops", now=clock.now, pid=102)
    start = clock.t
    looked: list = []

    def sleep(seconds):  # the slow alert queues its failure 20 s into the wait, then waits too
        clock.sleep(seconds)
        if clock.t - start >= 20 and not looked:
            looked.append(slow.enqueue({**EVENT, "job": "slow"}))
            slow._wait_mark(True)

    first.sleep = sleep
    assert first.run({**EVENT, "job": "first"}, lambda batch: sent.append(batch) or True)
    assert [[e["job"] for e in batch] for batch in sent] == [["first", "slow"]]
    assert clock.t - start == pytest.approx(20 + alert.GATHER_SETTLE, abs=alert.GATHER_POLL)
    # An alert stuck looking (it never queues) holds a message back at most GATHER_MAX.
    sent.clear()
    slow._wait_mark(False)
    start = clock.t
    assert first.run({**EVENT, "job": "after"}, lambda batch: sent.append(batch) or True)
    assert len(sent) == 1 and alert.GATHER_MAX <= clock.t - start <= alert.GATHER_MAX + 1


def test_issue23_3_a_storm_waits_for_its_jobs_still_running_then_settles(tmp_path):
    """The runs of one minute fail over seconds on a busy host: the message waits while a run of
    the channel's jobs begun with the burst still runs, then GATHER_SETTLE more (PID 1 starts the
    last run's alert a moment after the run's cgroup is gone)."""
    clock = Clock()
    sent: list = []
    runs = {"late": clock.t - 1}
    waiting = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep,
                              in_flight=in_flight_of(clock, runs, set()))
    other = alert.Coalescer(str(tmp_path), "ops", now=clock.now)
    start = clock.t

    def sleep(seconds):  # `late` ends 12 s into the wait; its alert queues it 2 s later
        clock.sleep(seconds)
        if clock.t - start >= 12:
            runs.pop("late", None)
        if clock.t - start >= 14 and not sent and len(waiting._queued()) == 1:
            other.enqueue({**EVENT, "job": "late"})

    waiting.sleep = sleep
    assert waiting.run({**EVENT, "job": "first"}, lambda batch: sent.append(batch) or True)
    assert [[e["job"] for e in batch] for batch in sent] == [["first", "late"]]
    assert clock.t - start == pytest.approx(12 + alert.GATHER_SETTLE, abs=alert.GATHER_POLL)


@pytest.mark.parametrize("began, why", [
    pytest.param(-10 * alert.STORM_BEFORE, "a long run begun well before the failure", id="long-before"),
    pytest.param(+30, "a run begun after the failure was queued (the next burst's)", id="after"),
])
def test_issue23_3_a_lone_failure_waits_only_the_quiet_for_runs_not_of_its_burst(tmp_path, began, why):
    clock = Clock()
    sent: list = []
    runs = {"other": clock.t + began}
    coalescer = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep,
                                in_flight=in_flight_of(clock, runs, set()))
    start = clock.t
    assert coalescer.run({**EVENT, "job": "lone"}, lambda batch: sent.append(batch) or True)
    assert len(sent) == 1 and clock.t - start == pytest.approx(alert.GATHER_QUIET), why


def test_issue23_3_an_alert_whose_event_the_gatherer_sent_returns_without_sending(tmp_path):
    """One alert gathers (a lock); the others only watch their queued events go."""
    import fcntl

    clock = Clock()
    coalescer = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep)
    gatherer = open(coalescer.gather_path, "a")
    fcntl.flock(gatherer, fcntl.LOCK_EX)  # another alert gathers
    name = coalescer.enqueue({**EVENT, "job": "mine"})

    def sleep(seconds):  # the gatherer sends it 5 s later
        clock.sleep(seconds)
        if clock.t >= 1_000_005.0:
            coalescer._remove([name])

    coalescer.sleep = sleep
    assert coalescer.run({**EVENT, "job": "mine"}, lambda batch: pytest.fail("sent twice"), queued=name)
    gatherer.close()
    assert not (tmp_path / "waiting" / "ops").exists() or not list((tmp_path / "waiting" / "ops").iterdir())


def test_issue23_3_in_flight_is_read_from_the_cgroups_of_the_jobs_and_the_alert_units(tmp_path, monkeypatch):
    for root in (tmp_path / "v2", tmp_path / "hybrid" / "unified"):
        jobs = root / "deployer.slice" / "deployer-jobs.slice"
        for unit in ("deployer-a.service", "deployer-b.service"):
            (jobs / unit).mkdir(parents=True)
        units = root / "system.slice"
        for slice_, unit, pids in (("system-deployer\\x2dalert\\x2dops.slice", "deployer-alert-ops@a.service", "7\n8\n"),
                                   ("system-deployer\\x2drecovery\\x2dops.slice", "deployer-recovery-ops@b.service", "9\n"),
                                   ("system-deployer\\x2dboot\\x2dalert.slice", "deployer-boot-alert@ops.service", "10\n"),
                                   ("system-deployer\\x2dalert\\x2dchat.slice", "deployer-alert-chat@c.service", "11\n")):
            (units / slice_ / unit).mkdir(parents=True)
            (units / slice_ / unit / "cgroup.procs").write_text(pids)
    (tmp_path / "v2" / "deployer.slice" / "deployer-host@metrics.service").mkdir()
    running = alert.runs_in_flight(str(tmp_path / "v2"))
    assert sorted(running) == ["deployer-a.service", "deployer-b.service"]
    assert sorted(alert.runs_in_flight(str(tmp_path / "hybrid"))) == ["deployer-a.service", "deployer-b.service"]
    for root in ("v2", "hybrid"):
        assert alert.alert_processes("ops", str(tmp_path / root)) == {7, 8, 10}, "the recovery unit (9) holds no storm"
    began = running["deployer-a.service"]
    seen = alert.channel_in_flight("ops", began - 1, began + 1, runs=lambda: running,
                                   alerts=lambda channel: {7}, channel_of={"a": "ops", "b": "chat"}.get)
    assert seen == alert.InFlight(1, frozenset({7}))
    later = alert.channel_in_flight("ops", began + 1, began + 60, runs=lambda: running, alerts=lambda c: set(),
                                    channel_of={"a": "ops", "b": "chat"}.get)
    assert later == alert.InFlight(0, frozenset())


def test_issue23_3_an_alert_killed_while_it_waits_loses_nothing(tmp_path):
    """Killed while it waits (SIGKILL, the unit's timeout): its failure stays queued on disk, and
    its waiting mark stays behind; the unit's restart sends it."""
    clock = Clock()
    killed = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep, pid=4242)
    killed.enqueue({**EVENT, "job": "killed"})
    killed._wait_mark(True)  # and then nothing: no cleanup runs after SIGKILL
    clock.t += 30
    sent: list = []
    restart = alert.Coalescer(str(tmp_path), "ops", now=clock.now, sleep=clock.sleep,
                              in_flight=lambda since, until: alert.InFlight(0, frozenset({7})), pid=7)
    assert restart.run([], lambda batch: sent.append(batch) or True, take_queued=True)
    assert [[e["job"] for e in batch] for batch in sent] == [["killed"]]


def test_issue23_3_a_killed_alerts_waiting_mark_is_dropped_and_never_hides_a_process_that_reuses_its_pid(tmp_path):
    """A mark left by an alert killed while waiting (its pid gone from the cgroups) is removed:
    were the pid reused by an alert still looking up failures, that one would count as waiting."""
    coalescer = alert.Coalescer(str(tmp_path), "ops", in_flight=lambda since, until: alert.InFlight(0, frozenset({5})),
                                pid=5)
    os.makedirs(coalescer.waiting_dir)
    for pid in (5, 77):
        open(os.path.join(coalescer.waiting_dir, str(pid)), "w").close()
    assert coalescer._busy(0.0, 1.0) == ""
    assert sorted(os.listdir(coalescer.waiting_dir)) == ["5"]


def test_an_alert_killed_while_its_queued_events_wait_for_the_gatherer_does_not_report_them_again(tmp_path):
    """ci12, a storm on a doubly loaded machine: alerts killed at TimeoutStartSec= while they
    waited for the channel's gatherer had not marked their runs reported, and their restarts
    named those jobs in a second and third message. The runs are marked once queued."""
    now = time.time()
    journal = Journal([run("a", now)], boots={"0": [run("a", now)]})
    clock = Clock()
    coalescer = alert.Coalescer(str(tmp_path / "queue"), "ops", now=clock.now, sleep=clock.sleep, quiet=0)

    class Killed(BaseException):
        pass

    def killed_while_delivering(events):
        raise Killed()  # what TimeoutStartSec='s SIGTERM does to the waiting alert

    def send(events, take_queued):
        return coalescer.run(events, killed_while_delivering)

    with pytest.raises(Killed):
        alert.report_failures("x", "cron01", str(tmp_path), send, lambda _: None, find=journal.find,
                              sleep=lambda _: None, monitored=run("a", now))
    assert len(coalescer._queued()) == 1, "queued: the restart's alert sends it"

    # The killed unit's ExecStopPost= sweep (and then its restart) looks for failed runs not reported.
    swept: list = []
    assert alert.report_failures("x", "cron01", str(tmp_path),
                                 lambda events, take_queued: swept.extend(events) or True,
                                 lambda _: None, find=journal.find, sleep=lambda _: None, sweep=True)
    assert swept == [], "the sweep finds the run reported and queues it no second time"
