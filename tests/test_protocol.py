"""The typed protocol to the agent: every request and answer survives JSON, versions are checked."""
from __future__ import annotations

import base64
import json
import zlib

import pytest

from deployer.errors import AgentRefused
from deployer.contract import protocol
from deployer.contract.protocol import (ApplyAnswer, ApplyRequest, Failure, FileWrite, HandoffAnswer,
                                        HandoffRequest, Held, HistoryAnswer, HistoryRequest, JobStatus, LogsAnswer,
                                        LogsRequest, PauseAnswer, PauseRequest, ReleaseAnswer, ReleaseRequest,
                                        ResumeAnswer, ResumeRequest, RunAnswer, RunInfo, RunRequest, StateAnswer,
                                        StateRequest, StatusAnswer, StatusRequest, StopAnswer, StopRequest)
from deployer.remote import Agent

EXAMPLES = [
    (StateRequest(contents=True), StateAnswer(files={"/etc/systemd/system/deployer-a.timer": "ab"},
                                               contents={"/etc/systemd/system/deployer-a.timer": "eA=="},
                                               paused=("deployer-a.timer",), owner="cron01",
                                               held=Held("2026-11-25T14:00:00+00:00", 7980.5, 300.0))),
    (ApplyRequest(write=(FileWrite("/etc/systemd/system/deployer-a.timer", "eA==", 0o644, False),),
                  remove=("/etc/systemd/system/deployer-b.timer",), expect={"/x": "y"},
                  stamps={"deployer-a.timer": 17.5},
                  takeover=protocol.Takeover("cron02", ("a",), unreachable_at=10.5, waited_seconds=300.0)),
     ApplyAnswer(reloaded=True, started=("deployer-a.timer",), seconds={"lock": 0.01})),
    (StatusRequest(), StatusAnswer(jobs=(JobStatus("a", "deployer-a.timer", "deployer-a.service",
                                                   calendar=("*-*-* 03:00:00 UTC",), exit_status=1),
                                         JobStatus("b", "deployer-b.timer", "deployer-b.service", paused=True,
                                                   last_run=RunInfo("f00d", 1764064800.25, "failed",
                                                                    "status 500, expected 2xx", slot=1764064800,
                                                                    duration=0.5, attempts=3, http_status=500))))),
    (RunRequest("a"), RunAnswer(ok=False, result="exit-code", exit_status=1, output="POST ...",
                                run=RunInfo("f00d", 17.5, "failed", "timeout (killed, signal KILL)",
                                            source="systemd"), attached="2026-11-25T14:00:00+00:00")),
    (StopRequest("a"), StopAnswer(stopped=True, started="2026-11-25T14:00:00+00:00",
                                  run=RunInfo("f00d", 17.5, "failed", "interrupted: SIGTERM", attempts=1))),
    (LogsRequest("a", lines=20, since=1764064800.0, follow=True), LogsAnswer("lines")),
    (HistoryRequest("a", since=1764064800.0), HistoryAnswer(runs=(RunInfo("f00d", 17.5, "ok", "status 200"),),
                                                             now=1764068400.5, scheduled_since=1764000000.5)),
    (PauseRequest("a"), PauseAnswer("deployer-a.timer")),
    (ResumeRequest("a"), ResumeAnswer("deployer-a.timer")),
    (HandoffRequest(("a", "b")), HandoffAnswer(("deployer-a.timer",), at=12.25)),
    (ReleaseRequest(), ReleaseAnswer(released=Held("2026-11-25T14:00:00+00:00", 12.0, 10.0),
                                     started=("deployer-a.timer",))),
    (protocol.AlertTestRequest("ops"), protocol.AlertTestAnswer("ops", accepted=False, http_status=200,
                                                                answer="errcode 310000: token", output="lines")),
    (protocol.AlertTestRequest("ops"), protocol.AlertTestAnswer("ops", answer="timed out connecting")),
    (protocol.AuditRequest(since=1764064800.0), protocol.AuditAnswer(entries=(protocol.AuditEntry(
        1764064800.5, "push", "ok", "", "2 written, 0 removed", "cron01", "deploy", "10.0.0.9",
        protocol.Actor("alice", "laptop", "push", "ab" * 32, "cd" * 20, True)),), now=1764068400.5)),
]

ACTOR = protocol.Actor("alice", "laptop", "pause", "ab" * 32, "cd" * 20, True)


def test_the_actor_travels_in_the_envelope_and_its_absence_is_nobody():
    raw = protocol.encode_request("cron01", PauseRequest("a"), ACTOR)
    assert protocol.decode_envelope(raw) == ("cron01", PauseRequest("a"), ACTOR)
    assert protocol.decode_request(raw) == ("cron01", PauseRequest("a"))
    assert protocol.decode_envelope(protocol.encode_request("cron01", PauseRequest("a")))[2] == protocol.Actor()


def test_a_large_request_travels_compressed_and_a_small_one_as_json():
    writes = tuple(FileWrite(path=f"/etc/systemd/system/deployer-j{i:05d}.service",
                             content=base64.b64encode(b"[Service]\nExecStart=/bin/true %d\n" % i).decode(),
                             mode=0o644, start=True) for i in range(2000))
    large = protocol.encode_request("cron01", ApplyRequest(write=writes, expect={}), ACTOR)
    small = protocol.encode_request("cron01", PauseRequest("a"), ACTOR)
    assert small.startswith(b"{") and json.loads(small)["op"] == "pause"
    assert len(zlib.decompress(large)) > protocol.COMPRESS_ABOVE > 4 * len(large)
    assert protocol.decode_envelope(large) == ("cron01", ApplyRequest(write=writes, expect={}), ACTOR)


@pytest.mark.parametrize("raw", [b"x\x9c not zlib at all", zlib.compress(b"[1, 2]"), zlib.compress(b"\xff\xfe")])
def test_a_request_that_is_neither_json_nor_compressed_json_is_refused_plainly(raw):
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode_request(raw)
    assert refused.value.code == protocol.BAD_REQUEST


def test_every_operation_has_an_example():
    assert {type(r) for r, _ in EXAMPLES} == set(protocol.OP_OF_REQUEST)


@pytest.mark.parametrize("request_, answer", [pytest.param(r, a, id=type(r).__name__) for r, a in EXAMPLES])
def test_round_trip(request_, answer):
    assert protocol.decode_request(protocol.encode_request("cron01", request_)) == ("cron01", request_)
    assert protocol.decode_answer(request_, protocol.encode_answer(answer)) == answer


def test_exit_status_is_an_int_in_every_answer():
    for kind in (JobStatus, RunAnswer):
        assert kind.__dataclass_fields__["exit_status"].type is int
    raw = json.dumps({"version": protocol.PROTOCOL_VERSION, "ok": True,
                      "body": {"ok": False, "exit_status": "1"}})
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_answer(RunRequest("a"), raw.encode())


def test_an_unknown_field_is_refused_not_ignored():
    raw = json.dumps({"version": protocol.PROTOCOL_VERSION, "op": "apply", "host": "h",
                      "body": {"take_over": True}})
    with pytest.raises(protocol.ProtocolError, match="unknown field.*take_over"):
        protocol.decode_request(raw.encode())


@pytest.mark.parametrize("version, says", [
    pytest.param(1, "older deployer", id="older-client"),
    pytest.param(protocol.PROTOCOL_VERSION + 1, "newer deployer", id="newer-client"),
])
def test_the_agent_refuses_another_clients_version_plainly(version, says):
    raw = json.dumps({"version": version, "op": "state", "host": "h", "body": {}}).encode()
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.decode_request(raw)
    assert refused.value.code == protocol.VERSION and says in refused.value.message


class Canned(Agent):
    """An agent that answers fixed bytes: what an older or newer agent would print."""

    def __init__(self, raw: bytes):
        self.host, self.raw = "cron01", raw

    def call(self, request, progress=None):
        return self._answer(request, self.raw)


@pytest.mark.parametrize("raw, code, says", [
    pytest.param(b'{"ok": true, "result": {"files": {}}}', protocol.VERSION, "speaks protocol 1", id="older-agent"),
    pytest.param(json.dumps({"version": 99, "ok": True, "body": {}}).encode(), protocol.VERSION,
                 "upgrade this one", id="newer-agent"),
    pytest.param(b"Traceback (most", protocol.BAD_REQUEST, "unreadable answer", id="garbage"),
    pytest.param(protocol.encode_answer(Failure(protocol.LOCKED, "another push holds /run/deployer/lock")),
                 protocol.LOCKED, "another push", id="locked"),
    pytest.param(protocol.encode_answer(Failure(protocol.HOST_CHANGED, "the host changed")),
                 protocol.HOST_CHANGED, "changed", id="host-changed"),
])
def test_the_client_tells_refusals_apart(raw, code, says):
    with pytest.raises(AgentRefused) as refused:
        Canned(raw).call(StateRequest())
    assert refused.value.code == code and says in str(refused.value)
    assert str(refused.value).startswith("host cron01: ")


def test_error_codes_are_distinct():
    assert len(set(protocol.ERROR_CODES)) == len(protocol.ERROR_CODES)
