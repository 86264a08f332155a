"""The receiver kit (docs/receiving/): both reference services, started for real on loopback and
sent real HTTP requests built from the spec in docs/receiving.md (the v2 signature computed here,
independently of either service). Both implementations must answer identically.

The Java one needs the JDK and Debian's SQLite JDBC driver (`make install` installs them): missing,
its tests are skipped locally but FAIL under CI=true."""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KIT = REPO / "docs" / "receiving"
JDBC_JAR = Path("/usr/share/java/sqlite-jdbc.jar")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KEY = b"s3cret-signing-key"
SLOT = "2026-12-01T02:00:00Z"


def sign_v2(key: bytes, method: str, target: str, stamp: str, run_id: str, job: str,
            idempotency_key: str, epoch: str, body: bytes) -> str:
    message = "\n".join(["v2", method, target, stamp, run_id, job, idempotency_key, epoch,
                         hashlib.sha256(body).hexdigest()])
    return "v2=" + hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict
    text: str

    def json(self):
        return json.loads(self.text)


@dataclass(frozen=True)
class Service:
    port: int
    process: subprocess.Popen
    key: bytes | None = KEY

    def call(self, method: str, target: str, *, job: str = "settle", slot: str = SLOT, epoch: int | None = 1000,
             run_id: str | None = None, body: bytes = b"", stamp: int | None = None, sign_with: bytes | None = None,
             idempotency_key: str | None = "default", extra: dict | None = None, after_signing=None) -> Reply:
        """One request the way the trigger sends it (every header, every attempt and poll)."""
        run_id = run_id or uuid.uuid4().hex
        key = f"{job}/{slot}" if idempotency_key == "default" else idempotency_key
        headers = {"X-Deployer-Job": job, "X-Deployer-Run-Id": run_id, "X-Deployer-Slot": slot,
                   "X-Deployer-Scheduled-At": "2026-12-01T03:00:00+0100"}
        if key is not None:
            headers["Idempotency-Key"] = key
        if epoch is not None:
            headers["X-Deployer-Epoch"] = str(epoch)
        if self.key is not None:
            stamp_text = str(int(time.time()) if stamp is None else stamp)
            headers["X-Deployer-Timestamp"] = stamp_text
            headers["X-Deployer-Signature-V2"] = sign_v2(
                sign_with or self.key, method, target, stamp_text, run_id, job, key or "",
                "" if epoch is None else str(epoch), body)
        headers.update(extra or {})
        if after_signing:   # (target, headers, body) -> a changed request with the original signature
            target, headers, body = after_signing(target, headers, body)
        return self.raw(method, target, headers, body)

    def raw(self, method: str, target: str, headers: dict | None = None, body: bytes = b"") -> Reply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, target, body=body if method == "POST" else None, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                         response.read().decode())
        finally:
            connection.close()

    def executions(self) -> dict:
        return self.raw("GET", "/_executions").json()

    def requests(self) -> list:
        return self.raw("GET", "/_requests").json()


@pytest.fixture(scope="session")
def java_classes(tmp_path_factory) -> Path:
    missing = [what for what, ok in (("javac", shutil.which("javac")), ("java", shutil.which("java")),
                                     (str(JDBC_JAR), JDBC_JAR.exists())) if not ok]
    if missing:
        message = f"the Java reference service needs {', '.join(missing)} (make install)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("java-classes")
    subprocess.run(["javac", "-d", str(out), *map(str, sorted(KIT.glob("*.java")))], check=True, timeout=300)
    return out


def launch(implementation: str, request, db: Path, work_seconds: float = 0, key: bytes | None = KEY) -> Service:
    if implementation == "java":
        classes = request.getfixturevalue("java_classes")
        command = ["java", "-cp", f"{classes}{os.pathsep}{JDBC_JAR}", "OnceService"]
    else:
        command = [sys.executable, str(KIT / "once_service.py")]
    command += ["--port", "0", "--db", str(db), "--work-seconds", str(work_seconds)]
    if key is not None:
        secret = db.with_suffix(".key")
        secret.write_bytes(key + b"\n")   # as `echo KEY > file` writes it
        command += ["--secret-file", str(secret)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        return Service(wait_listening(process), process, key)
    except BaseException:
        process.kill()
        raise


@pytest.fixture
def services(request, tmp_path):
    """launch(implementation, **options) -> a running Service with its own fresh database."""
    started: list[Service] = []

    def run(implementation: str, **options) -> Service:
        started.append(launch(implementation, request, tmp_path / f"once{len(started)}.db", **options))
        return started[-1]

    yield run
    for service in started:
        service.process.kill()
        service.process.wait(timeout=30)


@pytest.fixture(params=["python", "java"])
def start(request, services):
    """start(work_seconds=0, key=KEY) -> a running Service of each implementation in turn."""
    return lambda **options: services(request.param, **options)


def wait_listening(process: subprocess.Popen, timeout: float = 120) -> int:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    match = re.fullmatch(r"listening on (\d+)\n", lines[0] if lines else "")
    assert match, f"no 'listening on PORT' within {timeout} s: {lines!r}, exit {process.poll()}"
    return int(match[1])


def in_background(function, *args, **kwargs) -> dict:
    """Run a call in a thread; the returned dict gets "reply" when it answers."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(reply=function(*args, **kwargs)), daemon=True)
    thread.start()
    result["thread"] = thread
    return result


def test_first_request_executes_a_retry_gets_the_stored_answer(start):
    service = start()
    first = service.call("POST", "/sync/settle", run_id="run-1", body=b'{"day": 1}')
    assert first.status == 200 and first.json() == {"code": 0, "key": f"settle/{SLOT}", "executions": 1}
    assert "idempotent-replayed" not in first.headers
    # A retry of the same run, then a catch-up from another run: both the same slot.
    for run_id in ("run-1", "run-2"):
        again = service.call("POST", "/sync/settle", run_id=run_id, body=b'{"day": 1}')
        assert (again.status, again.text) == (first.status, first.text)
        assert again.headers["idempotent-replayed"] == "true"
    assert service.executions() == {f"settle/{SLOT}": 1}
    assert [r["answered"] for r in service.requests()] == [200, 200, 200]


def test_a_manual_run_has_its_own_key(start):
    service = start()
    assert service.call("POST", "/sync/settle").status == 200
    manual = service.call("POST", "/sync/settle", slot="manual-r9", idempotency_key="settle/manual-r9", run_id="r9")
    assert manual.json()["executions"] == 1 and "idempotent-replayed" not in manual.headers
    assert service.executions() == {f"settle/{SLOT}": 1, "settle/manual-r9": 1}


def test_without_an_idempotency_key_every_request_executes(start):
    service = start()
    for count in (1, 2):
        reply = service.call("POST", "/sync/settle", idempotency_key=None)
        assert reply.status == 200 and reply.json() == {"code": 0, "key": "-", "executions": count}
    assert service.executions() == {"-": 2}


TAMPER = {
    "signature": lambda t, h, b: (t, {**h, "X-Deployer-Signature-V2": "v2=" + "0" * 64}, b),
    "body": lambda t, h, b: (t, h, b + b" "),
    "target": lambda t, h, b: (t.replace("day=1", "day=2"), h, b),
    "epoch": lambda t, h, b: (t, {**h, "X-Deployer-Epoch": "1001"}, b),
    "idempotency key": lambda t, h, b: (t, {**h, "Idempotency-Key": "settle/2026-12-02T02:00:00Z"}, b),
    "run id": lambda t, h, b: (t, {**h, "X-Deployer-Run-Id": "another-run"}, b),
    "missing": lambda t, h, b: (t, {k: v for k, v in h.items() if k != "X-Deployer-Signature-V2"}, b),
    "v1 only": lambda t, h, b: (t, {k.replace("-V2", ""): v.replace("v2=", "v1=") for k, v in h.items()}, b),
}


@pytest.mark.parametrize("tamper", ["key", *TAMPER])
def test_a_bad_signature_is_refused(start, tamper):
    service = start()
    kwargs = {"sign_with": b"another key"} if tamper == "key" else {"after_signing": TAMPER[tamper]}
    reply = service.call("POST", "/sync/settle?day=1", body=b'{"day": 1}', **kwargs)
    assert reply.status == 401 and reply.json() == {"error": "bad signature"}
    assert service.executions() == {}
    assert [r["answered"] for r in service.requests()] == [401]


def test_a_changed_slot_header_is_refused(start):
    service = start()
    reply = service.call("POST", "/sync/settle", after_signing=lambda t, h, b: (
        t, {**h, "X-Deployer-Slot": "2026-12-02T02:00:00Z"}, b))
    assert reply.status in (400, 401), f"a re-aimed X-Deployer-Slot was accepted: {reply.status} {reply.text}"
    assert service.executions() == {}


# A stamp from the future comes closer to the service's clock while the request travels: on a
# loaded machine a second or more, so its margin is wider than the past one's (which only grows).
@pytest.mark.parametrize("age", [301, -330])
def test_a_stale_timestamp_is_refused(start, age):
    service = start()
    assert service.call("POST", "/sync/settle", stamp=int(time.time()) - age).status == 401
    assert service.call("POST", "/sync/settle", stamp=int(time.time()) - 250).status == 200
    assert service.executions() == {f"settle/{SLOT}": 1}


def test_without_a_key_configured_nothing_is_verified(start):
    service = start(key=None)
    assert service.call("POST", "/sync/settle").status == 200


def test_a_lower_epoch_is_fenced(start):
    service = start()
    assert service.call("POST", "/sync/settle", epoch=2000).status == 200
    stale = service.call("POST", "/sync/settle", epoch=1999, slot="2026-12-01T03:00:00Z")
    assert stale.status == 409 and stale.headers["x-deployer-epoch"] == "2000"
    assert stale.json() == {"error": "fenced", "job": "settle", "epoch": 2000, "yours": 1999}
    # The fence comes before the replay too: the old owner gets no stored answer either.
    assert service.call("POST", "/sync/settle", epoch=1999).status == 409
    assert service.executions() == {f"settle/{SLOT}": 1}


def test_a_higher_epoch_is_accepted_then_the_old_one_refused(start):
    service = start()
    assert service.call("POST", "/sync/settle", epoch=1000).status == 200
    new_owner = service.call("POST", "/sync/settle", epoch=5000, slot="2026-12-01T03:00:00Z")
    assert new_owner.status == 200
    assert service.call("POST", "/sync/settle", epoch=5000, slot="2026-12-01T04:00:00Z").status == 200
    old_owner = service.call("POST", "/sync/settle", epoch=1000, slot="2026-12-01T05:00:00Z")
    assert old_owner.status == 409 and old_owner.headers["x-deployer-epoch"] == "5000"
    # Epochs are per job: another job's old epoch is not fenced by settle's.
    assert service.call("POST", "/sync/report", job="report", epoch=1).status == 200
    assert sorted((r["epoch"], r["answered"]) for r in service.requests()) == \
        [(1, 200), (1000, 200), (1000, 409), (5000, 200), (5000, 200)]


def test_a_malformed_epoch_is_a_bad_request(start):
    service = start(key=None)
    assert service.call("POST", "/sync/settle", extra={"X-Deployer-Epoch": "12a"}).status == 400
    assert service.executions() == {}


def test_async_202_poll_and_a_duplicate_while_running(start):
    service = start(work_seconds=3)
    accepted = service.call("POST", "/async/report", body=b"{}")
    assert accepted.status == 202 and accepted.headers["retry-after"] == "1"
    location = accepted.headers["location"]
    assert re.fullmatch(r"/operations/[0-9a-f]+", location)
    poll = service.call("GET", location)
    assert poll.status == 202 and poll.headers["retry-after"] == "1"
    duplicate = service.call("POST", "/async/report", body=b"{}")
    assert duplicate.status == 202 and duplicate.headers["location"] == location
    deadline = time.monotonic() + 60
    while (poll := service.call("GET", location)).status == 202:
        assert time.monotonic() < deadline, "the operation never finished"
        time.sleep(0.3)
    assert poll.status == 200 and poll.json() == {"code": 0, "key": f"settle/{SLOT}", "executions": 1}
    replay = service.call("POST", "/async/report", body=b"{}")
    assert (replay.status, replay.text, replay.headers["idempotent-replayed"]) == (200, poll.text, "true")
    assert service.executions() == {f"settle/{SLOT}": 1}


def test_a_poll_is_signed_and_fenced_like_any_request(start):
    service = start(work_seconds=3)
    location = service.call("POST", "/async/report", epoch=1000).headers["location"]
    assert service.call("GET", location, sign_with=b"another key").status == 401
    assert service.call("POST", "/sync/settle", epoch=2000, slot="2026-12-01T03:00:00Z").status == 200
    fenced = service.call("GET", location, epoch=1000)
    assert fenced.status == 409 and fenced.headers["x-deployer-epoch"] == "2000"
    assert service.call("GET", "/operations/unknown", epoch=2000).status == 404


def test_a_sync_duplicate_while_running_gets_409_without_an_epoch(start):
    service = start(work_seconds=3)
    first = in_background(service.call, "POST", "/sync/settle", run_id="run-1")
    wait_for(lambda: any(r["answered"] == 200 for r in service.requests()))   # the claim is committed
    duplicate = service.call("POST", "/sync/settle", run_id="run-1")
    assert duplicate.status == 409 and duplicate.headers["retry-after"] == "1"
    assert "x-deployer-epoch" not in duplicate.headers
    assert duplicate.json() == {"error": "in progress", "key": f"settle/{SLOT}"}
    first["thread"].join(60)
    assert first["reply"].status == 200 and first["reply"].json()["executions"] == 1
    assert service.executions() == {f"settle/{SLOT}": 1}


def test_the_trigger_waits_out_a_key_another_host_is_running(start):
    """The race of a move: the old owner's request for a slot is still running when the new
    owner sends the same slot. The new owner's run ends with the stored answer, not a failure."""
    from deployer.host import run
    from deployer.host.slot import Slot, parse_iso_utc

    service = start(work_seconds=3, key=None)
    old_owner = in_background(service.call, "POST", "/sync/settle", run_id="old-owner")
    wait_for(lambda: any(r["answered"] == 200 for r in service.requests()))   # the claim is committed
    spec = run.JobSpec(name="settle", url=f"http://127.0.0.1:{service.port}/sync/settle", retries=0,
                       expect_json="code=0", epoch=1000)
    result = run.run_job(spec, log=lambda _: None, slot=Slot(parse_iso_utc(SLOT), "new-owner"))
    old_owner["thread"].join(60)
    assert result.ok, result.reason
    assert result.key == f"settle/{SLOT}" and service.executions() == {f"settle/{SLOT}": 1}
    assert 409 in [r["answered"] for r in service.requests()], "the new owner never met the running key"


def wait_for(condition, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("path", ["/sync/settle", "/async/settle"])
def test_concurrent_duplicates_execute_once(start, path):
    service = start(work_seconds=1)
    barrier = threading.Barrier(10)

    def one():
        barrier.wait()
        return service.call("POST", path, run_id="run-1")

    calls = [in_background(one) for _ in range(10)]
    for call in calls:
        call["thread"].join(120)
    replies = [call["reply"] for call in calls]
    if path.startswith("/sync/"):
        assert {r.status for r in replies} <= {200, 409} and 200 in {r.status for r in replies}
        assert all("x-deployer-epoch" not in r.headers for r in replies)
        wait_for(lambda: service.call("POST", path).status == 200)
    else:
        assert {r.status for r in replies} <= {200, 202}
        assert len({r.headers.get("location") for r in replies if r.status == 202}) == 1
        wait_for(lambda: service.call("POST", path).status == 200)
    assert service.executions() == {f"settle/{SLOT}": 1}


def test_the_test_endpoints_need_no_signature_and_unknown_paths_are_404(start):
    service = start()
    assert service.raw("GET", "/_executions").status == 200
    assert service.raw("GET", "/_requests").json() == []
    assert service.call("POST", "/elsewhere").status == 404
    assert service.call("GET", "/sync/settle").status == 404


def transcript(service: Service) -> list:
    """One scenario through every kind of answer, as comparable text (operation ids masked)."""
    def seen(reply: Reply) -> tuple:
        shown = {k: v for k, v in reply.headers.items() if k in
                 ("content-type", "location", "retry-after", "x-deployer-epoch", "idempotent-replayed")}
        mask = lambda text: re.sub(r"/operations/[0-9a-f]+", "/operations/ID", text)
        return reply.status, {k: mask(v) for k, v in shown.items()}, mask(reply.text)

    later = "2026-12-01T03:00:00Z"
    replies = [service.call("POST", "/sync/settle", epoch=2000), service.call("POST", "/sync/settle", epoch=2000),
               service.call("POST", "/sync/settle", idempotency_key=None, epoch=2000),
               service.call("POST", "/sync/settle", epoch=1000, slot=later),
               service.call("POST", "/sync/settle", sign_with=b"another key", slot=later),
               service.call("POST", "/sync/settle", extra={"X-Deployer-Epoch": "x"}),
               service.call("POST", "/elsewhere"), service.call("GET", "/operations/unknown", epoch=2000),
               service.raw("GET", "/_requests")]
    accepted = service.call("POST", "/async/report", job="report", epoch=7, body=b"{}")
    replies += [accepted, service.call("POST", "/async/report", job="report", epoch=7, body=b"{}"),
                service.call("GET", accepted.headers["location"], job="report", epoch=7)]
    wait_for(lambda: service.call("GET", accepted.headers["location"], job="report", epoch=7).status == 200)
    replies += [service.call("GET", accepted.headers["location"], job="report", epoch=7),
                service.call("POST", "/async/report", job="report", epoch=7, body=b"{}"),
                service.raw("GET", "/_executions")]
    return [seen(reply) for reply in replies]


def test_both_services_answer_byte_for_byte_alike(services):
    python, java = (transcript(services(name, work_seconds=2)) for name in ("python", "java"))
    assert [(status, text) for status, _, text in python][:3] == [
        (200, f'{{"code": 0, "key": "settle/{SLOT}", "executions": 1}}'),
        (200, f'{{"code": 0, "key": "settle/{SLOT}", "executions": 1}}'), (200, '{"code": 0, "key": "-", "executions": 1}')]
    for step, (ours, theirs) in enumerate(zip(python, java)):
        assert ours == theirs, f"step {step}"


# --- docs/receiving.md's own snippet --------------------------------------------------------------

def docs_verify_v2():
    """The ```python block of docs/receiving.md that defines verify_v2, executed as it stands."""
    text = (REPO / "docs" / "receiving.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify_v2(" in b]
    assert len(blocks) == 1, "docs/receiving.md must have one python block defining verify_v2"
    namespace: dict = {}
    exec(compile(blocks[0], "docs/receiving.md", "exec"), namespace)
    return namespace["verify_v2"]


def signed_request(**change) -> tuple:
    fields = dict(key=KEY, method="POST", target="/sync/settle?day=1", stamp=str(int(time.time())),
                  run_id="run-1", job="settle", idempotency_key=f"settle/{SLOT}", epoch="1000", body=b'{"day": 1}')
    headers = {"X-Deployer-Timestamp": fields["stamp"], "X-Deployer-Run-Id": fields["run_id"],
               "X-Deployer-Job": fields["job"], "Idempotency-Key": fields["idempotency_key"],
               "X-Deployer-Epoch": fields["epoch"], "X-Deployer-Slot": SLOT,
               "X-Deployer-Signature-V2": sign_v2(**fields)}
    fields.update(change)
    headers.update({"Idempotency-Key": fields["idempotency_key"], "X-Deployer-Epoch": fields["epoch"]})
    return fields["key"], fields["method"], fields["target"], headers, fields["body"]


def test_the_docs_verify_snippet_accepts_a_correct_signature():
    assert docs_verify_v2()(*signed_request()) is True


@pytest.mark.parametrize("change", [
    {"key": b"another key"}, {"idempotency_key": "settle/2026-12-02T02:00:00Z"}, {"epoch": "1001"},
    {"body": b'{"day": 2}'}, {"target": "/sync/settle?day=2"}, {"method": "PUT"}])
def test_the_docs_verify_snippet_rejects_a_change(change):
    assert docs_verify_v2()(*signed_request(**change)) is False


def test_the_docs_verify_snippet_rejects_a_stale_timestamp():
    key, method, target, headers, body = signed_request()
    stamp = str(int(time.time()) - 301)
    headers["X-Deployer-Timestamp"] = stamp
    headers["X-Deployer-Signature-V2"] = sign_v2(key, method, target, stamp, "run-1", "settle",
                                                 f"settle/{SLOT}", "1000", body)
    assert docs_verify_v2()(key, method, target, headers, body) is False


def test_the_reference_service_verifies_with_the_docs_snippet():
    """once_service.py's verify_v2 is the docs' one, not a second version that could drift."""
    docs = [b for b in re.findall(r"```python\n(.*?)```", (REPO / "docs" / "receiving.md").read_text(), re.S)
            if "def verify_v2(" in b][0]
    assert docs[docs.index("def verify_v2("):].strip() in (KIT / "once_service.py").read_text()
