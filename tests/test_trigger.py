"""The trigger against real HTTP servers on loopback."""
from __future__ import annotations

import os
import subprocess
from dataclasses import replace
import threading
import sys

import pytest

from deployer.contract import paths, rules
from deployer.host import http, run
from tests.conftest import REPO
from tests.httpserver import RecordingServer, Reply, json_reply

ANY_2XX = ((200, 299),)


@pytest.mark.parametrize("text, ranges", [
    ("2xx", ((200, 299),)), ("200", ((200, 200),)), ("200-204, 304", ((200, 204), (304, 304))),
])
def test_parse_expect_status(text, ranges):
    assert rules.parse_expect_status(text) == ranges


@pytest.mark.parametrize("text", ["2XX0", "600", "204-200", "", "ok"])
def test_parse_expect_status_refuses(text):
    with pytest.raises(rules.RuleError):
        rules.parse_expect_status(text)


def test_parse_expect_json_values_are_json_literals():
    assert rules.parse_expect_json('code=0, data.state="DONE, really", ok=true, items.0.id=null') == (
        (("code",), 0), (("data", "state"), "DONE, really"), (("ok",), True), (("items", "0", "id"), None))


@pytest.mark.parametrize("text, fix", [
    pytest.param("code == 0", "code=0", id="number"),
    pytest.param('ok=true, data.state == "DONE"', 'data.state="DONE"', id="second-rule-string"),
    pytest.param("code==ok", "code=VALUE", id="not-a-literal"),
])
def test_a_double_equals_names_the_syntax_and_the_fix(text, fix):
    """Issue 24 item 8: `code == 0` was told to quote strings (`code="DONE"`) instead of to drop an `=`."""
    with pytest.raises(rules.RuleError) as caught:
        rules.parse_expect_json(text)
    assert str(caught.value) == f"`==` is not the syntax: a rule is path=value with one `=`; write {fix}"


@pytest.mark.parametrize("status, body, json_rules, ok, retryable", [
    pytest.param(200, b'{"code":0}', (), True, False, id="2xx"),
    pytest.param(500, b"", (), False, True, id="5xx-retried"),
    pytest.param(429, b"", (), False, True, id="429-retried"),
    pytest.param(404, b"", (), False, False, id="4xx-not-retried"),
    pytest.param(200, b'{"code":1}', ((("code",), 0),), False, False, id="business-failure"),
    pytest.param(200, b"<html>", ((("code",), 0),), False, False, id="not-json"),
    pytest.param(200, b'{"code":true}', ((("code",), 1),), False, False, id="true-is-not-1"),
    pytest.param(200, b'{"data":{"state":"DONE"}}', ((("data", "state"), "DONE"),), True, False, id="nested"),
    pytest.param(200, b'{"data":{}}', ((("data", "state"), "DONE"),), False, False, id="missing"),
])
def test_judge(status, body, json_rules, ok, retryable):
    verdict = rules.judge(status, body, ANY_2XX, json_rules)
    assert (verdict.ok, verdict.retryable) == (ok, retryable)


def test_redact_url_hides_a_password():
    assert run.redact_url("https://u:pw@h:8443/x?y=1") == "https://u:***@h:8443/x?y=1"


def spec(server, path, **kw):
    """One attempt unless the test says (a job's default, the trigger's too, is options' retries = 2)."""
    return run.JobSpec(name="settle", url=server.url(path), **{"retries": 0, **kw})


def test_run_job_posts_with_idempotency_headers(server):
    server.routes["/settle"] = json_reply({"code": 0})
    lines: list[str] = []
    verdict = run.run_job(spec(server, "/settle"), log=lines.append)
    assert verdict.ok
    request = server.received("/settle")[0]
    assert request.method == "POST"
    assert request.headers["X-Deployer-Job"] == "settle"
    assert request.headers["X-Deployer-Run-Id"]
    assert lines[0].startswith("attempt 1/1: POST http://127.0.0.1:") and "-> 200 in" in lines[0]


def test_retries_5xx_with_the_same_run_id_then_fails(server):
    server.routes["/flaky"] = Reply(503, b"busy")
    pauses: list[float] = []
    verdict = run.run_job(spec(server, "/flaky", retries=2), log=lambda _: None, sleep=pauses.append)
    got = server.received("/flaky")
    assert not verdict.ok and len(got) == 3
    assert len({r.headers["X-Deployer-Run-Id"] for r in got}) == 1
    assert pauses == [1.0, 2.0]


def test_business_failure_is_not_retried(server):
    server.routes["/biz"] = json_reply({"code": 7, "msg": "insufficient funds"})
    lines: list[str] = []
    verdict = run.run_job(spec(server, "/biz", retries=3, expect_json="code=0"), log=lines.append)
    assert not verdict.ok and len(server.received("/biz")) == 1
    assert 'code is 7, expected 0: {"code": 7, "msg": "insufficient funds"}' in lines[0]


def test_the_timeout_bounds_the_whole_run(server):
    server.routes["/slow"] = Reply(200, b"{}", delay=3)
    verdict = run.run_job(spec(server, "/slow", timeout=0.5, retries=5), log=lambda _: None)
    assert not verdict.ok and "timed out after 0.5s" in verdict.reason
    assert len(server.received("/slow")) == 1


def test_a_read_timeout_at_the_runs_deadline_is_the_runs_timeout_on_a_slow_machine(server, monkeypatch):
    """The request's timeouts end at the run's deadline; the run's alarm is armed a little after
    (on a loaded CI machine, far enough for the read timeout to come first: the run then said
    "timed out reading; not retried" for what was its own timeout). The alarm armed 0.3 s late
    here, as such a machine does."""
    arm = run.signal.setitimer
    monkeypatch.setattr(run.signal, "setitimer",
                        lambda which, seconds, *rest: arm(which, seconds + 0.3 if seconds else 0))
    server.routes["/slow"] = Reply(200, b"{}", delay=3)
    verdict = run.run_job(spec(server, "/slow", timeout=0.5, retries=5), log=lambda _: None)
    assert not verdict.ok and verdict.reason == "timed out after 0.5s (whole run, retries included)", verdict.reason
    assert len(server.received("/slow")) == 1


def test_connection_refused_is_a_short_clear_line(server):
    lines: list[str] = []
    verdict = run.run_job(run.JobSpec(name="x", url="http://127.0.0.1:1/x", retries=0), log=lines.append)
    assert not verdict.ok
    assert lines[0].endswith("connection failed: connection refused")


def test_original_recipe_command_line_still_works(server):
    """`trigger.py -url URL -token TOKEN`: exit 0 on success, 1 on failure."""
    server.routes["/ok"] = json_reply({"code": 0})
    server.routes["/down"] = Reply(502, b"bad gateway")
    ok = subprocess.run([sys.executable, str(REPO / "trigger.py"), "-url", server.url("/ok")],
                        capture_output=True, text=True)
    down = subprocess.run([sys.executable, str(REPO / "trigger.py"), "-url", server.url("/down")],
                          capture_output=True, text=True)
    assert (ok.returncode, down.returncode) == (0, 1)
    # A 502 says nothing of whether the service behind the gateway started the work: a POST
    # without idempotent = true is not sent again (issue 21).
    assert ("job job: FAILED (status 502 not expected; not retried: the service may have started it "
            "(set idempotent = true once it dedupes on Idempotency-Key))") in down.stdout


# --- what the hostile probe of the host side found (issue 16), one test per finding ----------


def test_probe16_12_a_large_body_is_read_only_up_to_the_cap(server):
    server.routes["/big"] = Reply(200, b"x" * (run.MAX_BODY * 3))
    response = run.request("POST", server.url("/big"), {}, (5, 5))
    assert response.truncated and len(response.body) == run.MAX_BODY


def test_probe16_12_an_endless_body_costs_neither_memory_nor_the_run(server):
    """Before: an endless body grew the trigger to 1.17 GB in 4 s."""
    server.routes["/endless"] = Reply(200, endless_for=8)
    # A parent of its own, so the peak is the trigger's, not that of any child this pytest ran.
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", measure, sys.executable, str(REPO / "trigger.py"), "-url",
                             server.url("/endless"), "--timeout", "6s", "--retries", "0"],
                            capture_output=True, text=True, timeout=60)
    returncode, peak_kib = (int(x) for x in result.stdout.split())
    assert returncode == 0, result.stderr
    assert peak_kib < 150 * 1024, f"the trigger grew to {peak_kib // 1024} MiB"


def test_probe16_16_a_deeply_nested_body_is_a_failed_verdict_not_a_crash():
    verdict = rules.judge(200, b"[" * 100000 + b"]" * 100000, ANY_2XX, rules.parse_expect_json("code=0"))
    assert not verdict.ok and "nested too deeply" in verdict.reason


def test_probe16_5_a_slow_dripping_ping_never_holds_up_the_job(server):
    """Before: the /start ping took 25.7 s, the job endpoint was never called, a false alert followed."""
    server.routes["/settle"] = json_reply({"code": 0})
    server.routes["/ping/start"] = Reply(200, b"OK" * 40, drip=0.5)
    result = subprocess.run([sys.executable, str(REPO / "trigger.py"), "--job", "settle", "--url",
                             server.url("/settle"), "--timeout", "10s", "--ping-url", server.url("/ping")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert len(server.received("/settle")) == 1 and len(server.received("/ping")) == 1
    # The ping's budget ran out, or (a loaded machine reading the drip slowly) its socket's read
    # timeout first: either way the ping gave up and the job went on.
    assert f"no answer within {run.PING_BUDGET:g}s; going on" in result.stdout or \
        "failed: timed out reading" in result.stdout, result.stdout


def test_probe16_17_pings_do_not_follow_redirects(server):
    with RecordingServer() as elsewhere:
        elsewhere.routes["/steal"] = Reply(200, b"ok")
        server.routes["/hc"] = Reply(307, b"", headers={"Location": elsewhere.url("/steal")})
        run.ping(server.url("/hc"), "", log=lambda _: None)
        assert len(server.received("/hc")) == 1 and elsewhere.received("/steal") == []


def test_probe16_4_a_certificate_that_fails_verification_is_not_retried(tmp_path):
    """A TLS verification error is not transient: retrying it only delays the alert."""
    import http.server
    import ssl
    import threading

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        lines: list[str] = []
        pauses: list[float] = []
        verdict = run.run_job(run.JobSpec(name="x", url=f"https://127.0.0.1:{httpd.server_address[1]}/x",
                                          retries=3), log=lines.append, sleep=pauses.append)
        assert not verdict.ok and "TLS error" in verdict.reason and "certificate verify failed" in verdict.reason
        assert len(lines) == 1 and pauses == []
    finally:
        httpd.shutdown()


# --- issue 22 item 3: secrets in a job URL -----------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    pytest.param("http://svc:PASSWORD@h/x?api_key=TOKEN", "http://svc:***@h/x?api_key=***", id="userinfo-and-key"),
    pytest.param("https://TOKEN@h/x", "https://***@h/x", id="user-name-alone"),
    pytest.param("http://h/x?a=1&Access_Token=abc&b=&sig=zz&page=2#f",
                 "http://h/x?a=1&Access_Token=***&b=&sig=***&page=2#f", id="only-secret-looking-values"),
    pytest.param("https://h.example/a%20b/$x;y?q='\"&z=\\é", "https://h.example/a%20b/$x;y?q='\"&z=\\é", id="no-secret"),
])
def test_redact_url_hides_userinfo_and_secret_looking_query_values(url, shown):
    assert run.redact_url(url) == shown


def test_a_url_with_a_secret_reaches_the_run_as_a_credential_and_the_command_line_redacted(server, tmp_path):
    from deployer.contract import options

    server.routes["/x"] = json_reply({"code": 0})
    url = server.url("/x").replace("http://", "http://svc:PASSWORD@") + "?api_key=TOKEN&page=2"
    values = {"url": url, "method": "GET", "retries": 0}
    argv = options.command_line(values)
    assert "PASSWORD" not in " ".join(argv) and "TOKEN" not in " ".join(argv)
    assert options.credentials(values) == {"url": url.encode()}
    assert options.credentials({"url": server.url("/x")}) == {}  # nothing to hide: no credential
    (tmp_path / "url").write_bytes(options.credentials(values)["url"])

    ran = subprocess.run([sys.executable, str(REPO / "trigger.py"), "--job", "x", *argv], capture_output=True,
                         text=True, env={"CREDENTIALS_DIRECTORY": str(tmp_path), "PATH": "/usr/bin:/bin"})

    assert ran.returncode == 0, ran.stdout + ran.stderr
    request = server.received("/x")[0]
    assert request.path == "/x?api_key=TOKEN&page=2"
    assert request.headers["Authorization"] == "Basic " + __import__("base64").b64encode(b"svc:PASSWORD").decode()
    assert "PASSWORD" not in ran.stdout + ran.stderr and "TOKEN" not in ran.stdout + ran.stderr


# --- once at the service (issue 21) -----------------------------------------------------------

@pytest.mark.parametrize("status, reached", [
    pytest.param(500, True, id="500-may-have-started"), pytest.param(502, True, id="502-gateway-says-nothing"),
    pytest.param(504, True, id="504-gateway-timeout"), pytest.param(503, False, id="503-did-not-act"),
    pytest.param(429, False, id="429-did-not-act"), pytest.param(409, True, id="409-a-conflict-of-the-service"),
])
def test_judge_says_whether_the_service_may_have_started_the_work(status, reached):
    verdict = rules.judge(status, b"", ANY_2XX, ())
    assert (verdict.retryable, verdict.reached) == (True, reached)


@pytest.mark.parametrize("method, idempotent, status, sent", [
    pytest.param("POST", False, 502, 1, id="post-502-not-resent"),
    pytest.param("POST", False, 500, 1, id="post-500-not-resent"),
    pytest.param("POST", True, 502, 3, id="idempotent-post-502-resent"),
    pytest.param("PUT", False, 502, 3, id="put-is-idempotent-by-http"),
    pytest.param("POST", False, 503, 3, id="post-503-resent"),
])
def test_an_attempt_the_service_may_have_seen_is_resent_only_when_that_cannot_double_it(
        server, method, idempotent, status, sent):
    server.routes["/pay"] = Reply(status, b"oops")
    lines: list[str] = []
    result = run.run_job(spec(server, "/pay", method=method, idempotent=idempotent, retries=2), log=lines.append,
                         sleep=lambda s: None)
    got = server.received("/pay")
    assert len(got) == sent and not result.ok
    assert len({r.headers["Idempotency-Key"] for r in got}) == 1
    if sent == 1:
        assert result.reason.endswith(run.NOT_RESENT) and result.reached == (True,)


def test_a_read_timeout_after_sending_is_not_resent(server):
    server.routes["/slow"] = Reply(200, b"{}", delay=2)
    result = run.run_job(spec(server, "/slow", timeout=1.5, retries=3), log=lambda _: None, sleep=lambda s: None)
    assert len(server.received("/slow")) == 1 and not result.ok


def test_retry_after_is_honoured_within_the_deadline(server):
    server.routes["/busy"] = Reply(429, b"", headers={"Retry-After": "7"})
    pauses: list[float] = []
    run.run_job(spec(server, "/busy", retries=1, timeout=60), log=lambda _: None, sleep=pauses.append)
    assert pauses == [7.0]


def test_headers_key_slot_epoch_and_a_v2_signature_over_them(server):
    server.routes["/x"] = json_reply({"code": 0})
    the_slot = run.Slot(1796148000, "r1")
    run.run_job(spec(server, "/x?q=%C3%A9", sign_secret="k", epoch=17), log=lambda _: None, slot=the_slot)
    got = server.received("/x")[0]
    h = got.headers
    assert (h["Idempotency-Key"], h["X-Deployer-Slot"], h["X-Deployer-Epoch"]) == \
        ("settle/2026-12-01T18:00:00Z", "2026-12-01T18:00:00Z", "17")
    assert h["X-Deployer-Signature-V2"] == run.sign_v2("k", "POST", server.url("/x?q=%C3%A9"), int(h["X-Deployer-Timestamp"]),
                                                       h["X-Deployer-Run-Id"], "settle", h["Idempotency-Key"], 17, b"")
    for changed in (dict(key="settle/2026-12-01T18:00:01Z"), dict(epoch=16), dict(job="other")):
        args = {**dict(job="settle", key=h["Idempotency-Key"], epoch=17), **changed}
        assert run.sign_v2("k", "POST", server.url("/x?q=%C3%A9"), int(h["X-Deployer-Timestamp"]),
                           h["X-Deployer-Run-Id"], body=b"", **args) != h["X-Deployer-Signature-V2"]


def test_a_non_ascii_url_is_signed_as_sent(server):
    server.routes["/caf%C3%A9"] = json_reply({"code": 0})
    run.run_job(spec(server, "/café", sign_secret="k"), log=lambda _: None)
    got = server.received("/caf%C3%A9")[0]
    assert got.path == "/caf%C3%A9"
    import hashlib
    import hmac
    message = "\n".join(("POST", got.path, got.headers["X-Deployer-Timestamp"], got.headers["X-Deployer-Run-Id"],
                         hashlib.sha256(b"").hexdigest()))
    assert got.headers["X-Deployer-Signature"] == "v1=" + hmac.new(b"k", message.encode(), hashlib.sha256).hexdigest()


def test_a_409_with_a_higher_epoch_fences_the_run_and_is_not_retried(server):
    server.routes["/f"] = Reply(409, b"{}", headers={"X-Deployer-Epoch": "1796531300378"})
    result = run.run_job(spec(server, "/f", epoch=1796531299378, retries=3, idempotent=True), log=lambda _: None)
    assert result.fenced and result.result == "fenced" and len(server.received("/f")) == 1
    assert "granted to another host at 2026-12-06T04:28:20Z" in result.reason


def test_a_409_for_a_key_in_progress_is_waited_out_not_failed(server):
    """Another host (or this run's earlier attempt) holds the key at the service: ask again with
    the same key until its outcome, whatever `retries` says; it cannot run the work twice."""
    answers = iter([Reply(409, b'{"error": "in progress"}', headers={"Retry-After": "1"}),
                    Reply(409, b'{"error": "in progress"}', headers={"Retry-After": "2"}),
                    json_reply({"code": 0})])
    server.routes["/pay"] = lambda request: next(answers)
    pauses: list[float] = []
    lines: list[str] = []
    result = run.run_job(spec(server, "/pay", retries=0), log=lines.append, sleep=pauses.append)
    got = server.received("/pay")
    assert result.ok and result.attempts == 1 and len(got) == 3 and pauses == [1.0, 2.0]
    assert len({r.headers["Idempotency-Key"] for r in got}) == 1
    assert "the service is running this key" in lines[0] and "waiting for its outcome" in lines[0]


def test_a_key_in_progress_then_a_fence_ends_fenced(server):
    answers = iter([Reply(409, b"{}", headers={"Retry-After": "1"}),
                    Reply(409, b"{}", headers={"X-Deployer-Epoch": "1796531300378"})])
    server.routes["/pay"] = lambda request: next(answers)
    result = run.run_job(spec(server, "/pay", epoch=1796531299378), log=lambda _: None, sleep=lambda s: None)
    assert result.fenced and len(server.received("/pay")) == 2


def test_a_key_in_progress_is_waited_for_only_until_the_run_times_out(server):
    server.routes["/pay"] = Reply(409, b"{}", headers={"Retry-After": "1"})
    result = run.run_job(spec(server, "/pay", timeout=2.5), log=lambda _: None)
    assert not result.ok and "timed out after 2.5s" in result.reason
    assert 2 <= len(server.received("/pay")) <= 3


def test_no_ask_goes_out_when_the_next_would_have_no_time_left_for_its_answer(monkeypatch):
    """ci14, a loaded machine: 409s with Retry-After: 1 in a 2.5 s run were asked at 0, 1, 2 and
    once more at 2.5 s, with 1 ms left for the answer. On a clock of the test's: asks at 0, 1, 2."""
    clock = [1000.0]
    monkeypatch.setattr(run.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(run.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    asked = []
    busy = http.Response(409, b"{}", False, 0.001, {"retry-after": "1"})

    class Caller:
        key = "settle/2026-12-06T10:00:00Z"

        def send(self, method, url, body, deadline):
            asked.append(clock[0] - 1000.0)
            return busy

    with pytest.raises(run.RunTimeout):
        run.await_key(Caller(), run.JobSpec(name="settle", url="http://127.0.0.1:1/pay"), b"", busy, 1000.0 + 2.5,
                      run.time.sleep)
    assert asked == [1.0, 2.0]  # after the first ask (at 0), not at 2.5
    assert clock[0] >= 1000.0 + 2.5, "it waited for the run's alarm (here: its stand-in)"


def test_a_409_without_retry_after_is_the_services_conflict_and_not_resent(server):
    server.routes["/pay"] = Reply(409, b'{"error": "already settled"}')
    result = run.run_job(spec(server, "/pay", retries=2), log=lambda _: None, sleep=lambda s: None)
    assert not result.ok and len(server.received("/pay")) == 1 and result.reason.endswith(run.NOT_RESENT)


def test_a_409_with_a_lower_epoch_is_no_fence(server):
    server.routes["/f"] = Reply(409, b"{}", headers={"X-Deployer-Epoch": "5"})
    result = run.run_job(spec(server, "/f", epoch=17, retries=0), log=lambda _: None)
    assert not result.fenced and result.result == "failed"


def test_accept_then_poll_follows_the_location_until_the_end(server):
    answers = iter([Reply(202, b"", headers={"Retry-After": "0"}), json_reply({"code": 0})])
    server.routes["/long"] = Reply(202, b"", headers={"Location": "/ops/1"})
    server.routes["/ops/1"] = lambda request: next(answers)
    pauses: list[float] = []
    result = run.run_job(spec(server, "/long", async_="poll", poll_every=4, expect_json="code=0"),
                         log=lambda _: None, sleep=pauses.append)
    assert result.ok and [r.method for r in server.received("/ops/1")] == ["GET", "GET"]
    assert pauses == [4.0, 0.0], "poll_every first, then the service's Retry-After"


def test_a_202_without_location_fails_an_async_job(server):
    server.routes["/long"] = Reply(202, b"")
    result = run.run_job(spec(server, "/long", async_="poll"), log=lambda _: None)
    assert not result.ok and "without a Location" in result.reason


def test_a_sync_job_takes_a_202_as_success_as_before(server):
    server.routes["/long"] = Reply(202, b"", headers={"Location": "/ops/1"})
    assert run.run_job(spec(server, "/long"), log=lambda _: None).ok


# --- issue 22 item 9: a service that echoes the request's secrets ------------------------------

TOKEN = "tok-SECRET-7e3f9a1c"
SIGN = "sign-SECRET-55aa"
PASSWORD = "pw-SECRET-0b0b"


def echo_headers(record) -> Reply:
    """A 401 page that shows the request's headers (many frameworks' debug pages do)."""
    ordered = sorted(record.headers.items(), key=lambda item: item[0].lower() != "authorization")
    shown = "".join(f"{name}: {value}<br>" for name, value in ordered)
    return Reply(401, f"<h1>401 Unauthorized</h1>{shown}".encode(), content_type="text/html")


# The token starts at character 47 of the page: padded by 144 or 148, the excerpt's cut at 200
# falls inside it.
@pytest.mark.parametrize("padding", [0, 144, 148], ids=lambda n: f"padding{n}")
def test_issue22_9_secrets_a_service_echoes_never_reach_the_log_or_the_reason(server, padding):
    """Before: the excerpt of the 401 page put `Authorization: Bearer ...` into the run's lines
    (its journal, `deployer run`, the alert); a cut at 200 characters could leave half of it."""
    server.routes["/echo"] = lambda record: Reply(401, b"x" * padding + echo_headers(record).body)
    server.routes["/biz"] = lambda record: json_reply({"code": 1, "token": record.headers.get("Authorization")})
    lines: list[str] = []
    url = server.url("/echo").replace("http://", f"http://svc:{PASSWORD}@")
    echoed = run.run_job(run.JobSpec(name="x", url=url, retries=0, headers=(("Authorization", f"Bearer {TOKEN}"),),
                                     sign_secret=SIGN), log=lines.append)
    judged = run.run_job(run.JobSpec(name="x", url=server.url("/biz"), retries=0, expect_json='token="no"',
                                     headers=(("Authorization", f"Bearer {TOKEN}"),)), log=lines.append)
    assert not echoed.ok and not judged.ok
    assert server.received("/echo")[0].headers["Authorization"] == f"Bearer {TOKEN}", "the request itself is intact"
    everything = "\n".join(lines + [echoed.reason, judged.reason])
    assert "401" in everything and "***" in everything
    for secret in (TOKEN, SIGN, PASSWORD):
        for start in range(0, len(secret) - 6):  # nor any 7 characters of it (a cut half)
            assert secret[start:start + 7] not in everything, f"{secret} leaked: {everything}"


def test_issue24_4_a_slow_answer_is_waited_for_out_loud(server):
    """Issue 24 item 4: a 90 s attempt printed nothing until its answer. The service here answers
    only once the run has said twice that it waits, so the lines are judged by their order, not
    by a clock: the waiting lines come first, counting up, and none after the answer."""
    lines: list[str] = []
    said_twice = threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if sum("waiting for the answer" in seen for seen in lines) >= 2:
            said_twice.set()

    def answer_when_told(recorded):
        said_twice.wait(60)
        return json_reply({"code": 0})

    server.routes["/slow"] = answer_when_told
    result = run.run_job(spec(server, "/slow", timeout=120), log=log, waiting_every=0.2)
    assert result.ok and said_twice.is_set()
    prefix = f"attempt 1/1: POST {server.url('/slow')}"
    assert lines[:2] == [f"{prefix}: waiting for the answer (0.2 s)", f"{prefix}: waiting for the answer (0.4 s)"]
    answered = next(i for i, line in enumerate(lines) if "-> 200 in" in line)
    assert all("waiting for the answer" in line for line in lines[:answered])
    assert not any("waiting" in line for line in lines[answered:])


def test_issue24_4_the_waiting_lines_stop_with_the_runs_timeout(server):
    server.routes["/never"] = Reply(200, b"{}", delay=5)
    lines: list[str] = []
    result = run.run_job(spec(server, "/never", timeout=1.0), log=lines.append, waiting_every=0.3)
    assert not result.ok and "timed out after 1s" in result.reason
    assert any("waiting for the answer (0.3 s)" in line for line in lines)
    assert "timed out" in lines[-1]


def test_issue24_4_a_sigterm_is_deployer_stops_only_for_the_run_it_names(tmp_path):
    """`deployer stop` names the run before its SIGTERM: that run is stopped (not resumed at the
    next boot); any other SIGTERM (a shutdown) stays an interruption that may be resumed."""
    from deployer.host import slot

    assert not slot.stopped_by_operator("settle", "run1", str(tmp_path))
    with open(slot.stop_path("settle", str(tmp_path)), "w") as marker:
        marker.write("run1")
    assert slot.stopped_by_operator("settle", "run1", str(tmp_path))
    assert not slot.stopped_by_operator("settle", "run2", str(tmp_path))
    assert not slot.stopped_by_operator("other", "run1", str(tmp_path))


# --- run parameters (issue 23 item 7) ------------------------------------------------------------

def params_run(server, tmp_path, monkeypatch, asked=None, content_type="application/json"):
    """One run of the trigger's main() against `server`; `asked`: what `deployer run --set` put in
    the agent's request (params, by)."""
    import json

    from deployer.contract import options
    from deployer.host import slot, trigger as cli

    monkeypatch.setattr(slot, "BACKFILL_DIR", str(tmp_path))
    monkeypatch.delenv("TRIGGER_UNIT", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    if asked is not None:
        (tmp_path / "deployer-settle.json").write_text(json.dumps({"manual": True, "stamp": None, **asked}))
    values = {"url": server.url("/settle") + "?batch=${{batch}}&day=${{day}}", "retries": 0,
              "params": options.params("batch=1, day=today"), "content_type": content_type}
    sent = []
    monkeypatch.setattr(cli.record, "send", lambda record, identifier: sent.append(record) or True)
    code = cli.main(["--job", "settle", *options.command_line(values)])
    return code, sent


def test_a_scheduled_run_fills_the_declared_defaults(server, tmp_path, monkeypatch):
    server.routes["/settle"] = json_reply({"code": 0})
    code, sent = params_run(server, tmp_path, monkeypatch)
    assert code == 0
    assert server.received("/settle")[0].path == "/settle?batch=1&day=today"
    assert sent[0].params == '{"batch": "1", "day": "today"}' and sent[0].by == ""


def test_a_manual_run_fills_what_run_set_asked_encoded_and_records_who(server, tmp_path, monkeypatch):
    server.routes["/settle"] = json_reply({"code": 0})
    code, sent = params_run(server, tmp_path, monkeypatch,
                            {"params": {"batch": "42&x=1/2"}, "by": "alice@10.0.0.9"})
    assert code == 0
    assert server.received("/settle")[0].path == "/settle?batch=42%26x%3D1%2F2&day=today"  # data, not query
    assert sent[0].params == '{"batch": "42&x=1/2", "day": "today"}' and sent[0].by == "alice@10.0.0.9"


def test_a_parameter_the_unit_does_not_declare_fails_the_run_and_sends_nothing(server, tmp_path, monkeypatch):
    server.routes["/settle"] = json_reply({"code": 0})
    code, sent = params_run(server, tmp_path, monkeypatch, {"params": {"batchh": "42"}})
    assert code == 1
    assert server.received("/settle") == []
    assert sent[0].reason == "parameter batchh is not declared by job settle (it declares: batch, day)"


def test_a_parameter_in_a_json_body_stays_json():
    from deployer.contract import options
    from deployer.host import trigger as cli
    from deployer.host.slot import Slot

    spec = run.JobSpec(name="settle", url="http://svc/x", body='{"note": "${{note}}"}',
                       params=options.params("note=plain"))
    filled, values, refused = cli.with_params(spec, Slot(None, "r", "manual", params=(("note", 'a "quote"\n'),)))
    assert refused == "" and values == {"note": 'a "quote"\n'}
    assert __import__("json").loads(filled.body) == {"note": 'a "quote"\n'}


# -- issue 23: catch_up and concurrency --------------------------------------------------------------

SEVEN = 1796540400  # 2026-12-06T07:00:00Z


@pytest.mark.parametrize("catch_up, elapsed, reason", [
    pytest.param("once", SEVEN + 9 * 3600 + 720, "", id="once-runs-however-late"),
    pytest.param(7200, SEVEN + 9 * 3600 + 720, "skipped: missed by 9h12m, catch_up = 2h", id="2h-missed-by-9h12m"),
    pytest.param(7200, SEVEN + 3600, "", id="2h-missed-by-1h-runs"),
    pytest.param("none", SEVEN + 61, "skipped: missed by 1m1s, catch_up = none", id="none-a-minute-late"),
    pytest.param("none", SEVEN + 3, "", id="none-on-time-on-a-busy-host"),
])
def test_issue23_a_timer_run_later_than_catch_up_is_skipped(catch_up, elapsed, reason):
    from deployer.host import trigger as cli
    from deployer.host.slot import Slot

    job = run.JobSpec(name="briefing", url="http://x/", catch_up=catch_up, calendar=("*-*-* 07:00:00",))
    assert cli.missed_reason(job, Slot(SEVEN, "r1", elapsed=elapsed)) == reason
    # What someone asked for is never skipped: a backfill, a manual run.
    assert cli.missed_reason(job, Slot(SEVEN, "r1", "backfill", elapsed=elapsed)) == ""
    assert cli.missed_reason(job, Slot(None, "r1", "manual")) == ""


def test_issue23_a_skipped_slot_is_a_record_of_its_own_that_called_nothing():
    from deployer.contract import record
    from deployer.host import trigger as cli
    from deployer.host.slot import Slot

    job = run.JobSpec(name="briefing", url="http://x/", catch_up=7200, epoch=5)
    made = cli.skipped_record(job, Slot(SEVEN, "inv1"), "skipped: missed by 9h12m, catch_up = 2h", "catch_up", "inv1")
    fields = made.journal_fields()
    assert (fields["DEPLOYER_RESULT"], fields["DEPLOYER_SKIPPED"], fields["DEPLOYER_ATTEMPTS"]) == \
        ("skipped", "catch_up", "0")
    assert fields["DEPLOYER_KEY"] == "briefing/2026-12-06T07:00:00Z" and fields["PRIORITY"] == record.PRIORITY_INFO
    assert fields["MESSAGE"] == "briefing: slot 2026-12-06T07:00:00Z skipped: missed by 9h12m, catch_up = 2h"
    assert record.RunRecord.from_journal(fields) == replace(made, started=round(made.started, 3))


def fake_analyze(period):
    """systemd-analyze for `*:*:0/period`-like lines: the first `iterations` multiples after `base`."""
    def analyze(lines, base, iterations):
        return [[(base // period + i) * period for i in range(1, iterations + 1)] for _ in lines]
    return analyze


def test_issue23_slots_that_came_while_a_timer_run_went_are_skipped_but_the_latest_which_runs_next():
    from deployer.host import trigger as cli
    from deployer.host.slot import Slot

    job = run.JobSpec(name="tick", url="http://x/", calendar=("*:*:0/10",))
    sent = []
    count = cli.record_overlaps(job, Slot(1000, "inv1", elapsed=1000.2), 1000.3, "inv1", lambda line: None,
                                stamp_then=None, analyze=fake_analyze(10), now=1035.0, stamp_now=None,
                                send=lambda r, ident: sent.append(r))
    # 1010, 1020 and 1030 came; systemd starts one run when this one ends: 1030's (late). 1010, 1020 never run.
    assert count == [1010, 1020] and [r.slot for r in sent] == [1010, 1020]
    assert {r.result for r in sent} == {"skipped"} and {r.skipped for r in sent} == {"concurrency"}
    assert sent[0].reason == "skipped: previous run still running since 1970-01-01T00:16:40Z"
    assert len({r.run for r in sent}) == 2 and all(r.run.startswith("inv1-s") for r in sent)
    # A run that ended before the next slot skipped nothing.
    assert cli.record_overlaps(job, Slot(1000, "inv2", elapsed=1000.2), 1000.3, "inv2", lambda line: None, None,
                               analyze=fake_analyze(10), now=1009.9, stamp_now=None, send=sent.append) == []


def timer_runs(job, runs, analyze, send, lost=()):
    """Timer runs of `job` one after another, as systemd starts them: each (slot, when it recorded
    its overlaps, when it ended). Each takes what the run before it left (unless `lost`: a run
    killed before its end leaves nothing), records what the timer coalesced, runs, records its
    overlaps and leaves what it accounted for. -> the slots run."""
    from deployer.host import trigger as cli
    from deployer.host.slot import Slot

    left, ran = {}, []
    for number, (at, recorded_at, ended) in enumerate(runs):
        the_slot, run_id = Slot(at, "inv%d" % number, elapsed=at + 0.2), "inv%d" % number
        cli.record_coalesced(job, the_slot, left, lambda line: None, analyze=analyze, send=send)
        ran.append(at)
        recorded = cli.record_overlaps(job, the_slot, at + 0.3, run_id, lambda line: None, None, analyze=analyze,
                                       send=send, now=recorded_at, stamp_now=None)
        left = {} if number in lost else cli.leave_through("", job, the_slot, recorded, run_id, at + 0.3,
                                                           analyze, now=ended)
    return ran


def test_issue23_6_the_end_record_and_the_next_runs_record_partition_the_slots_none_twice_none_lost():
    """A run records at its end the slots that came while it went but the latest, which the timer
    starts next; a slot that comes before the unit has ended makes the timer name a newer one. The
    next run records those, from where the previous one's record stopped: together, every slot
    between the first run and the last is run once or recorded skipped once."""
    from deployer.host import trigger as cli

    job = run.JobSpec(name="tick", url="http://x/", calendar=("*:*:0/10",))
    sent = []
    # (slot, overlaps recorded at, run ended at); systemd's next elapse names the latest slot by then.
    runs = [(1000, 1004.0, 1004.1),   # no overlap
            (1010, 1025.0, 1031.0),   # 1020 came (handed on), then 1030 before the unit ended: 1030 runs
            (1030, 1039.99, 1040.5),  # nothing came by its record; 1040 came as it ended: 1040 runs (no gap)
            (1040, 1075.0, 1082.0),   # 1050, 1060 recorded at its end, 1070 handed on, 1080 came: 1080 runs
            (1080, 1081.0, 1081.5),
            (1090, 1099.0, 1099.5)]
    ran = timer_runs(job, runs, fake_analyze(10), lambda r, ident: sent.append(r))
    skipped = [r.slot for r in sent]
    assert len(skipped) == len(set(skipped)), "a slot recorded twice"
    assert not set(skipped) & set(ran), "a slot both run and recorded skipped"
    assert sorted(skipped + ran) == list(range(1000, 1091, 10)), "a slot neither run nor recorded"
    assert sorted(skipped) == [1020, 1050, 1060, 1070]
    by_slot = {r.slot: r for r in sent}
    # Recorded by the next run as the previous run's end would have: same reason, same run id.
    assert by_slot[1020].reason == "skipped: previous run still running since %s" % cli.iso_utc(1010.3)
    assert by_slot[1020].run == "inv1-s1020" and by_slot[1070].run == "inv3-s1070"
    assert {r.skipped for r in sent} == {"concurrency"}


def test_a_timer_no_longer_enabled_here_has_no_overlaps_to_record(tmp_path):
    """Paused, removed or moved to another host while the run went: its link is gone."""
    from deployer.host import trigger as cli

    wants = tmp_path / paths.TIMERS_WANTS
    wants.mkdir()
    assert cli.timer_link("settle", str(tmp_path)) is None
    link = wants / "deployer-settle.timer"
    link.symlink_to("../deployer-settle.timer")  # dangling, as systemctl links
    first = cli.timer_link("settle", str(tmp_path))
    assert first is not None and cli.timer_link("settle", str(tmp_path)) == first
    assert cli.timer_link("other", str(tmp_path)) is None
    assert cli.timer_link("../x", str(tmp_path)) is None
    # A pause and a resume: the link goes, and comes back as another one.
    keep = wants / "keep"
    keep.symlink_to("x")  # holds the inode number, as other links on a host would
    link.unlink()
    link.symlink_to("../deployer-settle.timer")
    assert cli.timer_link("settle", str(tmp_path)) not in (None, first)


def test_issue23_6_a_slot_that_came_after_the_previous_run_ended_is_not_an_overlap():
    """The timer stopped after a run ended (a pause, a hold) and started again: the latest slot
    missed runs (Persistent=), the ones before it came while nothing ran: not recorded as skipped
    by concurrency (history counts them missed). Nor after a run killed before its end."""
    job = run.JobSpec(name="tick", url="http://x/", calendar=("*:*:0/10",))
    sent = []
    ran = timer_runs(job, [(1000, 1004.0, 1004.1), (1050, 1051.0, 1051.5)], fake_analyze(10), sent.append)
    assert ran == [1000, 1050] and sent == []
    # Overlapped 1020 (handed on), ended at 1025; the timer was stopped then, started at 1052.
    ran = timer_runs(job, [(1010, 1025.0, 1025.5), (1050, 1052.0, 1052.5)], fake_analyze(10),
                     lambda r, ident: sent.append(r))
    assert [r.slot for r in sent] == [1020], "1020 came while 1010's run went; 1030, 1040 after it ended"
    sent.clear()
    timer_runs(job, [(1010, 1025.0, 1031.0), (1030, 1031.5, 1032.0)], fake_analyze(10),
               lambda r, ident: sent.append(r), lost=(0,))
    assert sent == [], "nothing left, nothing guessed"


def test_issue23_6_the_next_run_asks_systemd_analyze_nothing_when_it_is_the_slot_handed_on(tmp_path, monkeypatch):
    """The common case costs no process: the previous run left the slot it handed on."""
    from deployer.contract import paths
    from deployer.host import trigger as cli
    from deployer.host.slot import Slot, latest_elapse

    calls = []

    def counted(lines, base, iterations):
        calls.append(base)
        return fake_analyze(10)(lines, base, iterations)

    job = run.JobSpec(name="tick", url="http://x/", calendar=("*:*:0/10",))
    directory = tmp_path / "deployer-tick"
    directory.mkdir()
    monkeypatch.setattr(paths, "through_dir", lambda name: str(directory))
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/deployer-chain/deployer-tick:" + str(directory))
    path = cli.through_path("tick")
    assert path == str(directory / "through.json")
    seen = cli.RememberedElapses(counted)
    assert latest_elapse(job.calendar, 1000.2, seen) == 1000 and len(calls) == 1
    left = cli.leave_through(path, job, Slot(1000, "inv1"), [], "inv1", 1000.3, seen, now=1005.0)
    assert left["next"] == 1010 and len(calls) == 1
    taken = cli.take_through(path)
    assert {k: v for k, v in taken.items() if k != "unit_ended"} == left
    assert not (directory / "through.json").exists(), "each is read by one run only"
    assert cli.record_coalesced(job, Slot(1010, "inv2"), taken, print, analyze=counted, send=None) == []
    assert len(calls) == 1
    # The unit ended later than the run (its ExecStopPost= emptied the mark): 1010 came before.
    left = cli.leave_through(path, job, Slot(1000, "inv1"), [], "inv1", 1000.3, seen, now=1005.0)
    ended = directory / paths.THROUGH_ENDED
    assert ended.exists() and ended.read_bytes() == b""
    os.utime(ended, (1012.5, 1012.5))
    taken = cli.take_through(path)
    assert taken["unit_ended"] == 1012.5
    sent = []
    assert cli.record_coalesced(job, Slot(1020, "inv2"), taken, print, analyze=counted,
                                send=lambda r, ident: sent.append(r)) == [1010]
    assert sent[0].run == "inv1-s1010"
    # A mark older than the run's own end is an earlier run's: the run's end (1012) counts, not it.
    assert cli.record_coalesced(job, Slot(1020, "inv2"), {**taken, "ended": 1012.0, "unit_ended": 1003.0}, print,
                                analyze=counted, send=lambda r, ident: None) == [1010]
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/elsewhere")
    assert cli.through_path("tick") == "", "outside its unit nothing is kept"
    # What a manual run or a backfill overlapped is not the timer's to continue from.
    assert cli.leave_through(path, job, Slot(None, "m", "manual"), [], "m", 1000.0, seen) == {}


def test_issue23_a_manual_run_counts_only_elapses_its_timer_stamped_while_it_went():
    from deployer.host import trigger as cli
    from deployer.host.slot import Slot

    job = run.JobSpec(name="tick", url="http://x/", calendar=("*:*:0/10",))
    manual = Slot(None, "inv1", "manual")
    # Paused (the stamp did not move): nothing came.
    assert cli.overlapped_slots(job, manual, 1001.0, 1035.0, 5, 5, fake_analyze(10)) == []
    # Elapsed at 1010, 1020, 1030 (stamped 1030): the agent runs 1030's slot after it; 1010 and 1020 are lost.
    assert cli.overlapped_slots(job, manual, 1001.0, 1035.0, 5, int(1030.1e9), fake_analyze(10)) == [1010, 1020]
    # In Kubernetes the CronJob controller decides.
    assert cli.overlapped_slots(job, Slot(1000, "j", "cronjob"), 1000.0, 1035.0, None, None, fake_analyze(10)) == []


def test_issue23_replace_ends_the_run_when_the_next_slot_comes(server):
    import time

    server.routes["/long"] = Reply(200, b"{}", delay=5)
    begun = time.time()
    verdict = run.run_job(spec(server, "/long", timeout=30, concurrency="replace"), log=lambda _: None,
                          replace_at=begun + 1.0)
    assert not verdict.ok and verdict.reason.startswith("replaced: the slot ") and "(concurrency = replace)" in verdict.reason
    assert 0.9 <= verdict.duration < 4
    assert not verdict.resume


def test_issue23_replace_is_asked_only_of_a_timer_run_and_names_the_next_slot():
    from deployer.host import trigger as cli
    from deployer.host.slot import Slot

    job = run.JobSpec(name="tick", url="http://x/", calendar=("*:*:0/10",), concurrency="replace")
    assert cli.replace_at(job, Slot(1000, "r"), print, fake_analyze(10)) == 1010.0
    assert cli.replace_at(job, Slot(None, "r", "manual"), print, fake_analyze(10)) is None
    assert cli.replace_at(run.JobSpec(name="tick", url="http://x/", calendar=("*:*:0/10",)), Slot(1000, "r"), print,
                          fake_analyze(10)) is None


def test_issue23_a_run_that_ended_before_the_next_slot_asks_systemd_analyze_nothing_more():
    """The slot's own call already lists the elapses after it: forbid's check and replace's next
    slot cost no second process (a burst's cost is its processes)."""
    from deployer.host import trigger as cli
    from deployer.host.slot import latest_elapse, Slot

    calls = []

    def counted(lines, base, iterations):
        calls.append((tuple(lines), base))
        return fake_analyze(10)(lines, base, iterations)

    seen = cli.RememberedElapses(counted)
    assert latest_elapse(["*:*:0/10"], 1000.4, seen) == 1000 and len(calls) == 1
    job = run.JobSpec(name="tick", url="http://x/", calendar=("*:*:0/10",), concurrency="replace")
    assert cli.overlapped_slots(job, Slot(1000, "r"), 1000.4, 1009.0, None, None, seen) == []
    assert cli.replace_at(job, Slot(1000, "r"), print, seen) == 1010.0
    assert len(calls) == 1
    # A run that outlasted the known elapses asks for the ones it went past.
    assert cli.overlapped_slots(job, Slot(1000, "r"), 1000.4, 1200.0, None, None, seen)[:2] == [1010, 1020]
    assert len(calls) > 1
    assert cli.RememberedElapses(counted).next_after(["*:*:0/10"], 1000) is None  # nothing kept: not known


@pytest.mark.parametrize("links, enabled", [
    pytest.param([(7, 1), (7, 1)], True, id="enabled-all-along"),
    pytest.param([(7, 1), None], False, id="paused"),
    pytest.param([(7, 1), (8, 2)], False, id="paused-and-resumed"),
    pytest.param([None, None], False, id="paused-before"),
])
def test_a_run_whose_timer_was_stopped_under_it_leaves_nothing_for_a_next_run(server, tmp_path, monkeypatch,
                                                                             links, enabled):
    """Paused (or removed, or moved) while it went: the slots since are not its overlaps, neither
    recorded by it nor left (through.json) for the run after a resume to record (a helper's
    review: the first run after a resume recorded the paused slots as skipped)."""
    from deployer.host import slot, trigger as cli
    from deployer.host.slot import Slot

    server.routes["/tick"] = json_reply({"code": 0})
    directory = tmp_path / "deployer-tick"
    directory.mkdir()
    monkeypatch.setattr(slot, "BACKFILL_DIR", str(tmp_path))
    monkeypatch.setattr(paths, "through_dir", lambda name: str(directory))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(directory))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(cli, "slot_for", lambda job, calendar, run_id, parents, **kw: Slot(1000, run_id, "timer"))
    monkeypatch.setattr(cli, "timer_link", lambda job: links.pop(0))
    overlaps = []
    monkeypatch.setattr(cli, "record_overlaps", lambda *a, **kw: overlaps.append(a) or [])
    monkeypatch.setattr(cli.record, "send", lambda record, identifier: True)

    assert cli.main(["--job", "tick", "--url", server.url("/tick"), "--retries", "0",
                     "--calendar", "*:*:0/5"]) == 0

    assert (directory / paths.THROUGH_FILE).exists() == enabled
    assert bool(overlaps) == enabled
