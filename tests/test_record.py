"""The per-run journal record: its fields, its wire format, and a real datagram socket."""
from __future__ import annotations

import socket

from deployer.contract import record
from deployer.contract.record import RunRecord

FAILED = RunRecord(job="settle", run="abc123", slot=1_764_000_000, started=1_764_000_000.25, duration=1.5,
                   attempts=3, result="failed", reason="status 500,\nexpected 2xx", http_status=500)


def parse(datagram: bytes) -> dict:
    """journald's native format, read back (what systemd-journald does with it)."""
    fields, rest = {}, datagram
    while rest:
        line, sep, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:
            size = int.from_bytes(after[:8], "little")
            fields[line.decode()] = after[8:8 + size].decode()
            assert after[8 + size:9 + size] == b"\n"
            rest = after[9 + size:]
    return fields


def test_a_record_round_trips_through_the_journal_fields():
    fields = FAILED.journal_fields()
    assert fields["DEPLOYER_REASON"] == "status 500, expected 2xx"  # one line
    assert fields["MESSAGE"] == "settle: FAILED (status 500,\nexpected 2xx) in 1.50s (3 attempts)"
    assert fields["PRIORITY"] == record.PRIORITY_ERR and fields["MESSAGE_ID"] == record.RUN_FINISHED
    back = RunRecord.from_journal(fields)
    assert back == RunRecord(**{**FAILED.__dict__, "reason": "status 500, expected 2xx"})


def test_a_record_without_an_answer_has_no_status():
    ok = RunRecord(job="a", run="r", slot=60, started=60.0, duration=0.1, attempts=0, result="failed",
                   reason="interrupted")
    assert ok.journal_fields()["DEPLOYER_HTTP_STATUS"] == ""
    assert RunRecord.from_journal(ok.journal_fields()).http_status is None


def test_send_writes_one_native_datagram_a_value_with_a_newline_length_prefixed(tmp_path):
    path = str(tmp_path / "socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(path)
        assert record.send(FAILED, "deployer-settle", path=path)
        fields = parse(journal.recv(65536))
    assert fields["SYSLOG_IDENTIFIER"] == "deployer-settle"
    assert fields["MESSAGE"].endswith("(3 attempts)") and "\n" in fields["MESSAGE"]
    assert RunRecord.from_journal(fields).attempts == 3


def test_send_without_a_journal_says_so_and_does_not_raise(tmp_path):
    assert record.send(FAILED, "x", path=str(tmp_path / "absent")) is False


def test_a_chained_runs_record_says_why_it_ran_and_an_unchained_one_has_no_field():
    chained = RunRecord(job="load", run="r", slot=60, started=61.0, duration=0.1, attempts=1, result="ok",
                        reason="status 200", key="load/1970-01-01T00:01:00Z", after="extract 1970-01-01T00:01:00Z succeeded")
    fields = chained.journal_fields()
    assert fields["DEPLOYER_AFTER"] == "extract 1970-01-01T00:01:00Z succeeded"
    assert RunRecord.from_journal(fields) == chained
    assert "DEPLOYER_AFTER" not in FAILED.journal_fields() and "DEPLOYER_AFTER" in record.FIELDS
