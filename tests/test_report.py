"""The JSON documents (report.py): the keys are a contract, pinned here; and the pure pieces
that decide what status and history say (last run, relative times, missed slots, --since)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from deployer import report
from deployer.contract.protocol import Actor, ApplyAnswer, AuditEntry, Held, JobStatus, RunAnswer, RunInfo
from deployer.models import Plan

# The contract: renaming or dropping a key is a new `version` (docs/json.md). Adding one is not,
# but it is added here and in docs/json.md in the same change.
ENVELOPE = {"version", "command"}
STATUS_KEYS = ENVELOPE | {"now", "hosts", "jobs", "inventory_only"}
STATUS_HOST_KEYS = {"host", "address", "reachable", "error", "held", "jobs", "machine", "owner", "same_machine_as",
                    "last_push"}
STATUS_JOB_KEYS = {"skipped", "last_skipped", "host", "job", "result", "reason", "last_result", "last", "duration", "exit_status", "next",
                   "paused", "fenced", "held", "timer", "schedule", "timezone", "expression", "in_inventory",
                   "inventory_schedule", "schedule_differs", "inventory_host", "also_on", "alert_late", "alert_long"}
INVENTORY_ONLY_KEYS = {"host", "job", "result", "reason", "inventory_schedule", "timezone", "expression",
                       "alert_late", "alert_long"}
HISTORY_KEYS = ENVELOPE | {"host", "job", "timezone", "since", "until", "runs", "summary", "hosts", "unread_hosts",
                           "after", "not_run"}
RUN_KEYS = {"run", "slot", "started", "duration", "attempts", "result", "reason", "http_status", "source", "key",
            "params", "run_by", "after"}
NOT_RUN_KEYS = {"slot", "parent", "parent_run", "parent_result", "reason"}
SUMMARY_KEYS = {"runs", "failures", "skipped", "p50_duration", "max_duration", "slots", "missed_slots", "missed",
                "slots_until"}
RUN_DOCUMENT_KEYS = ENVELOPE | {"host", "job", "result", "reason", "exit_status", "systemd_result", "timezone",
                                "run", "output", "merged_timer_elapse", "attached_since"}
PLAN_KEYS = ENVELOPE | {"host", "add", "change", "remove", "unchanged", "remove_jobs", "kept_jobs"}
PUSH_KEYS = PLAN_KEYS | {"reloaded", "started", "restarted", "stopped", "enabled_for_boot", "kept_paused",
                         "recovered_interrupted_push", "released", "seconds"}
HELD_KEYS = {"since", "down_for_seconds", "lease_seconds", "reason", "text"}
MOVE_KEYS = ENVELOPE | {"moved", "from", "to", "source_unreachable", "waited_seconds", "forced"}

NOW = datetime(2026, 11, 25, 14, 0, 0, tzinfo=timezone.utc).timestamp()
RECORD = RunInfo("f00d", NOW - 180.25, "failed", "code is 7, expected 0", slot=int(NOW - 180), duration=0.5,
                 attempts=1, http_status=200)


def status(**facts) -> JobStatus:
    return JobStatus("settle", "deployer-settle.timer", "deployer-settle.service", **facts)


def document(*statuses, held=None, error=None, reachable=True) -> dict:
    host = report.HostStatus("cron01", "10.0.0.5", jobs=statuses, held=held, error=error, reachable=reachable)
    return json.loads(json.dumps(report.status_document([host], {}, NOW)))


def test_status_document_keys_are_pinned():
    doc = document(status(timer_state="active", next="2026-11-25T15:00:00+00:00"))
    assert set(doc) == STATUS_KEYS and (doc["version"], doc["command"]) == (1, "status")
    assert set(doc["hosts"][0]) == STATUS_HOST_KEYS
    assert set(doc["jobs"][0]) == STATUS_JOB_KEYS


def test_an_unreachable_host_is_one_entry_with_its_error_and_no_jobs():
    doc = document(error="cannot connect to 10.0.0.5: Connection refused", reachable=False)
    assert doc["hosts"] == [{"host": "cron01", "address": "10.0.0.5", "reachable": False, "held": None, "jobs": 0,
                             "error": "cannot connect to 10.0.0.5: Connection refused", "machine": None,
                             "owner": None, "same_machine_as": [], "last_push": None}]
    assert doc["jobs"] == []
    assert "host cron01: UNREACHABLE: cannot connect" in report.status_text(doc, NOW)
    refused = document(error="/var/lib/deployer/pending-switch.json (the switch journal) is corrupt")
    assert refused["hosts"][0]["reachable"] and "host cron01: ERROR: /var/lib" in report.status_text(refused, NOW)


def test_history_run_plan_push_and_move_keys_are_pinned():
    history = report.history_document("cron01", "settle", "UTC", NOW - 3600, NOW, [RECORD], [NOW - 180], NOW)
    assert set(history) == HISTORY_KEYS and set(history["summary"]) == SUMMARY_KEYS
    assert set(history["runs"][0]) == RUN_KEYS | {"host"}
    ran = report.run_document("cron01", "settle", "UTC", RunAnswer(ok=False, result="exit-code", exit_status=1,
                                                                   output="a\nb\n", run=RECORD))
    assert set(ran) == RUN_DOCUMENT_KEYS and set(ran["run"]) == RUN_KEYS and ran["output"] == ["a", "b"]
    assert set(report.plan_document("cron01", Plan())) == PLAN_KEYS | {"chains"}

    class Pushed:
        host, plan, result = "cron01", Plan(), None

    assert set(report.push_document(Pushed)) == PUSH_KEYS  # a no-op push has the same keys
    Pushed.result = ApplyAnswer(reloaded=True)
    assert set(report.push_document(Pushed)) == PUSH_KEYS
    assert set(report.move_document(["a"], "cron01", "cron02")) == MOVE_KEYS


def test_every_result_is_in_the_vocabulary():
    statuses = [status(), status(paused=True), status(service_state="activating", started="2026-11-25T13:59:00+00:00"),
                status(finished="2026-11-25T13:00:01+00:00", started="2026-11-25T13:00:00+00:00", result="success"),
                status(last_run=RECORD)]
    results = [row["result"] for row in document(*statuses)["jobs"]]
    assert results == ["never", "paused", "running", "ok", "failed"]
    assert [row["result"] for row in document(status(), held=Held(down_for_seconds=60.0))["jobs"]] == ["held"]
    fenced = document(status(paused=True, fenced=True))["jobs"][0]
    assert (fenced["result"], fenced["fenced"]) == ("fenced", True)
    assert set(results) | {"fenced"} <= set(report.RESULTS)


def test_a_manual_run_covers_no_slot_and_a_backfill_covers_its_own():
    slots = [NOW - 7200, NOW - 3600]
    manual = RunInfo("m", NOW - 3590, "ok", slot=0, key="settle/manual-m")
    backfill = RunInfo("b", NOW - 60, "ok", slot=NOW - 7200, key="settle/2026-11-25T12:00:00Z")
    assert report.missed_slots(slots, [manual], NOW) == slots
    assert report.missed_slots(slots, [manual, backfill], NOW) == [NOW - 3600]


@pytest.mark.parametrize("facts, expected", [
    pytest.param({}, ("never", None, None, None), id="never-run: no exit status 0"),
    pytest.param({"started": "2026-11-25T13:00:00+00:00", "finished": "2026-11-25T13:00:02+00:00",
                  "result": "exit-code", "exit_status": 1, "last_run": RunInfo("f00d", NOW - 3600, "failed",
                                                                               "status 500, expected 2xx")},
                 ("failed", "2026-11-25T13:00:00+00:00", "status 500, expected 2xx", 1), id="the record's reason"),
    pytest.param({"started": "2026-11-25T13:00:00+00:00", "finished": "2026-11-25T13:01:15+00:00",
                  "result": "timeout", "exit_status": 0},
                 ("failed", "2026-11-25T13:00:00+00:00", "timeout", 0), id="killed without a record"),
    pytest.param({"started": "2026-11-25T13:00:00+00:00", "finished": "2026-11-25T13:00:02+00:00",
                  "result": "exit-code", "exit_status": 1,
                  "last_run": RunInfo("old", NOW - 7200, "failed", "an older run's reason")},
                 ("failed", "2026-11-25T13:00:00+00:00", "exit-code (exit status 1)", 1),
                 id="an older record does not explain a newer failure"),
    pytest.param({"paused": True, "last_run": RunInfo("f00d", NOW - 179.75, "ok", "status 200", duration=0.3)},
                 ("ok", "2026-11-25T13:57:00+00:00", None, 0), id="paused: LAST from the journal"),
])
def test_last_run(facts, expected):
    row = document(status(**facts))["jobs"][0]
    assert (row["last_result"], row["last"], row["reason"], row["exit_status"]) == expected


def test_times_are_in_the_jobs_zone_and_relative():
    assert report.iso(NOW, "Asia/Shanghai") == "2026-11-25T22:00:00+08:00"
    assert report.shown(NOW + 51, "Asia/Shanghai", NOW) == "2026-11-25 22:00:51 CST (in 51 s)"
    assert report.shown(NOW - 180, "America/New_York", NOW) == "2026-11-25 08:57:00 EST (3 min ago)"
    assert report.shown(None, "UTC", NOW) == "-"


@pytest.mark.parametrize("seconds, text", [(0.4, "now"), (51, "in 51 s"), (-180, "3 min ago"),
                                           (7980, "in 2 h 13 min"), (-3 * 86400 - 4 * 3600, "3 d 4 h ago")])
def test_relative(seconds, text):
    assert report.relative(NOW + seconds, NOW) == text


def run(started: float, slot: int = 0, result: str = "ok") -> RunInfo:
    return RunInfo(f"r{started}", started, result, slot=slot, duration=0.2)


@pytest.mark.parametrize("slots, runs, missed", [
    pytest.param([0, 60, 120], [run(0.2, 0), run(60.1, 60), run(120.3, 120)], [], id="all run"),
    pytest.param([0, 60, 120], [run(0.2, 0), run(120.3, 120)], [60], id="one missed"),
    pytest.param([0, 60, 120], [run(0.2, 0), run(75.5, 75), run(120.3, 120)], [], id="a late run covers its slot"),
    pytest.param([0, 60], [run(30.0)], [60], id="a killed run (no slot) covers the slot before it"),
    pytest.param([0, 2, 4, 6], [run(0.1, 0), run(8.1, 8), run(10.0, 10)], [2, 4, 6],
                 id="runs after the window cover nothing in it"),
    pytest.param([0, 60], [run(0.2, 0), run(0.5, 0)], [60], id="one slot run twice covers one slot"),
])
def test_missed_slots(slots, runs, missed):
    assert report.missed_slots([float(s) for s in slots], runs, until=max(slots)) == missed


def test_history_summary():
    runs = [run(NOW - 300, int(NOW - 300)), RunInfo("k", NOW - 200, "failed", "timeout (killed, signal KILL)",
                                                    duration=75.0, source="systemd"), run(NOW - 100, int(NOW - 100))]
    doc = report.history_document("cron01", "settle", "UTC", NOW - 400, NOW, runs,
                                  [NOW - 300, NOW - 200, NOW - 100, NOW - 50], NOW - 20)
    assert doc["summary"] == {"runs": 3, "failures": 1, "skipped": 0, "p50_duration": 0.2, "max_duration": 75.0,
                              "slots": 4,
                              "missed_slots": 1, "missed": ["2026-11-25T13:59:10+00:00"],
                              "slots_until": "2026-11-25T13:59:40+00:00"}
    assert doc["runs"][1]["slot"] is None and doc["runs"][1]["attempts"] is None
    text = report.history_text(doc)
    assert text.splitlines()[-1] == ("settle on cron01 since 2026-11-25 13:53:20 UTC: 3 runs, 1 failed, duration "
                                     "p50 0.20 s, max 75.00 s, 1 missed of 4 slots (2026-11-25 13:59:10 UTC)")


@pytest.mark.parametrize("text, seconds_back", [("7d", 7 * 86400), ("36h", 36 * 3600), ("1d12h", 36 * 3600),
                                                ("90m", 5400), ("30s", 30), ("1.5h", 5400), ("500ms", 0.5),
                                                ("45", 45)])
def test_since_durations(text, seconds_back):
    assert report.since_time(text, NOW) == NOW - seconds_back


def test_since_dates_and_refusals():
    assert report.since_time("2026-11-25T13:00:00+00:00", NOW) == NOW - 3600
    assert report.since_time("20261125T130000+00:00", NOW) == NOW - 3600  # ISO basic form, not seconds
    with pytest.raises(ValueError) as caught:
        report.since_time("last tuesday", NOW)
    assert str(caught.value) == ("'last tuesday' is neither a duration (e.g. 500ms, 90s, 5m, 1h30m, 7d; units: ms, s, "
                                 "m, h, d) nor an ISO 8601 date or time (2026-11-20, 2026-11-20T08:00+08:00)")


def test_a_held_host_says_how_long_it_was_down_in_text_and_as_data():
    held = Held(since="2026-11-25T14:00:00+00:00", down_for_seconds=7980.0, lease_seconds=300.0)
    assert report.held_text(None) is None and report.held_text(held) == "was down 2h13m"
    doc = document(status(), held=held)
    assert [row["result"] for row in doc["jobs"]] == ["held"] and doc["jobs"][0]["held"] == "was down 2h13m"
    assert set(doc["hosts"][0]["held"]) == HELD_KEYS
    assert doc["hosts"][0]["held"] == {"since": "2026-11-25T14:00:00+00:00", "down_for_seconds": 7980.0,
                                       "lease_seconds": 300.0, "reason": None, "text": "was down 2h13m"}
    assert "held: was down 2h13m" in report.status_text(doc, NOW)


def test_a_job_the_inventory_puts_elsewhere_keeps_its_zone_but_is_not_listed_here():
    class Job:
        name, host, schedule, on_calendar, timezone = "settle", "cron02", "0 * * * *", (), "Asia/Shanghai"

    host = report.HostStatus("cron01", "10.0.0.5", jobs=(status(),))
    [row] = report.status_document([host], {("cron02", "settle"): Job, (None, "settle"): Job}, NOW)["jobs"]
    assert (row["timezone"], row["expression"], row["in_inventory"]) == ("Asia/Shanghai", "0 * * * *", False)


def test_inventory_only_rows_are_pinned_and_calendars_compare_as_systemd_reads_them():
    class Job:
        name, host, schedule, on_calendar, timezone = "settle", "cron01", "0 3 * * *", (), "UTC"

    unreachable = report.HostStatus("cron01", "10.0.0.5", error="cannot connect", reachable=False)
    [row] = report.status_document([unreachable], {("cron01", "settle"): Job, (None, "settle"): Job}, NOW)[
        "inventory_only"]
    assert set(row) == INVENTORY_ONLY_KEYS and (row["result"], row["reason"]) == ("unknown",
                                                                                 "host unreachable: cannot connect")
    answered = report.HostStatus("cron01", "10.0.0.5")
    [row] = report.status_document([answered], {("cron01", "settle"): Job}, NOW)["inventory_only"]
    assert row["result"] == "not_installed"
    normal = {"Mon,Tue *-*-* 9:00 UTC": "Mon,Tue *-*-* 09:00:00 UTC"}
    assert report.same_calendar(["Mon,Tue *-*-* 09:00:00 UTC"], ["Mon,Tue *-*-* 9:00 UTC"], normal)
    assert report.same_calendar(["b UTC", "a UTC"], ["a UTC", "b UTC"], {})  # a timer fires at the union
    assert not report.same_calendar(["*-*-* 03:00:00 UTC"], ["*-*-* 04:00:00 UTC"], {})
    assert not report.same_calendar([], ["*-*-* 04:00:00 UTC"], {})


def test_issue24_4_runs_read_from_several_hosts_say_where_each_ran():
    """A job that moved: its runs on the old host are listed with the new host's, by start time,
    each with its host; one host alone keeps the table as it was."""
    runs = [run(NOW - 300, int(NOW - 300)), run(NOW - 100, int(NOW - 100))]
    doc = report.history_document("cron02", "settle", "UTC", NOW - 400, NOW, runs, None, None,
                                  run_hosts=["cron01", "cron02"], unread=["cron03"])
    assert (doc["hosts"], doc["unread_hosts"]) == (["cron02", "cron01"], ["cron03"])
    assert [r["host"] for r in doc["runs"]] == ["cron01", "cron02"]
    lines = report.history_text(doc).splitlines()
    assert lines[0].split()[:2] == ["HOST", "SLOT"]
    assert [line.split()[0] for line in lines[1:3]] == ["cron01", "cron02"]
    assert lines[-1].startswith("settle on cron02 and cron01 since ")
    alone = report.history_text(report.history_document("cron01", "settle", "UTC", NOW - 400, NOW, runs, None, None))
    assert alone.splitlines()[0].split()[0] == "SLOT" and "settle on cron01 since" in alone


def test_issue24_4_a_run_that_followed_one_in_progress_says_since_when():
    ran = report.run_document("cron01", "settle", "Asia/Shanghai", RunAnswer(
        ok=True, result="success", attached="2026-11-25T13:59:00+00:00"))
    assert ran["attached_since"] == "2026-11-25T21:59:00+08:00"
    assert report.run_document("cron01", "settle", "UTC", RunAnswer(ok=True))["attached_since"] is None


ALERT_TEST_KEYS = ENVELOPE | {"results"}
ALERT_TEST_RESULT_KEYS = {"host", "channel", "type", "result", "http_status", "answer"}


@pytest.mark.parametrize("accepted, status, answer, result, line", [
    pytest.param(True, 200, "errcode 0: ok", "accepted", "accepted (HTTP 200; errcode 0: ok)", id="accepted"),
    pytest.param(False, 200, "errcode 310000: token", "refused", "REFUSED (HTTP 200; errcode 310000: token)",
                 id="errcode"),
    pytest.param(False, 403, "HTTP 403: invalid_token", "refused", "REFUSED (HTTP 403: invalid_token)", id="http"),
    pytest.param(False, None, "timed out connecting", "no_answer", "NO ANSWER (timed out connecting)", id="none"),
    pytest.param(False, 200, "errcode 1: \x1b[2Jgone", "refused", "REFUSED (HTTP 200; errcode 1: \\e[2Jgone)",
                 id="escaped"),
])
def test_alert_test_document_keys_are_pinned_and_the_line_says_what_the_channel_answered(
        accepted, status, answer, result, line):
    from deployer.contract.protocol import AlertTestAnswer

    said = AlertTestAnswer("ops", accepted=accepted, http_status=status, answer=answer)
    doc = report.alert_test_document([("cron01", "dingtalk", said)])
    assert set(doc) == ALERT_TEST_KEYS and doc["command"] == "alert test"
    assert set(doc["results"][0]) == ALERT_TEST_RESULT_KEYS and doc["results"][0]["result"] == result
    assert doc["results"][0]["result"] in report.ALERT_TEST_RESULTS
    assert report.alert_test_line("cron01", "dingtalk", said) == f"alert ops (dingtalk) via cron01: {line}"


# -- audit (issue 23 item 9) ---------------------------------------------------------------------

AUDIT_KEYS = {"host", "time", "action", "outcome", "target", "detail", "as_host", "user", "client", "command",
              "ssh_user", "ssh_from", "inventory_sha256", "commit", "dirty"}


from deployer.report import HostStatus, audit_document, audit_text, status_document, status_text  # noqa: E402


def _audited(time_: float, action: str = "push", **actor) -> AuditEntry:
    return AuditEntry(time_, action, "ok", "", "1 written, 0 removed", "cron01", "deploy", "10.0.0.9",
                      Actor(**{"user": "alice", "client": "laptop", "command": action, "commit": "ab" * 20,
                               **actor}))


def test_audit_document_merges_hosts_by_time_and_pins_its_keys():
    doc = audit_document(0.0, 100.0, [("cron02", _audited(30.0, "pause")), ("cron01", _audited(10.0))],
                         ["cron01", "cron02", "cron03"], unread=["cron03"])
    assert set(doc) == {"version", "command", "since", "until", "hosts", "unread_hosts", "entries"}
    assert doc["command"] == "audit" and doc["unread_hosts"] == ["cron03"]
    assert [(e["host"], e["action"]) for e in doc["entries"]] == [("cron01", "push"), ("cron02", "pause")]
    assert set(doc["entries"][0]) == AUDIT_KEYS
    assert doc["entries"][0]["time"] == "1970-01-01T00:00:10.000+00:00"


def test_audit_text_escapes_what_the_client_and_host_said():
    doc = audit_document(0.0, 100.0, [("cron01", _audited(10.0, user="ev\x1b[2Jil", dirty=True))], ["cron01", "x"],
                         unread=["x"])
    text = audit_text(doc)
    assert "\x1b" not in text and "ev\\e[2Jil@laptop (ssh deploy from 10.0.0.9)" in text
    assert "abababa+dirty" in text and "1 actions on 1 of 2 hosts" in text and "not read: x" in text


def test_status_says_who_last_pushed_from_which_commit():
    host = HostStatus("cron01", "10.0.0.5", last_push=_audited(1764064800.0, dirty=True))
    text = status_text(status_document([host], {}, 1764064900.0), 1764064900.0)
    assert ("host cron01: last push: by alice@laptop (ssh deploy from 10.0.0.9), 2025-11-25 10:00:00 UTC, "
            "commit abababa (dirty)") in text


def test_a_chained_jobs_history_says_why_it_ran_and_which_slots_did_not_run():
    """Issue 23 item 8: a run started by its parent names the parent's slot and verdict; the
    parent's failed runs are the slots the `after` job did not run."""
    ran = RunInfo("c1", NOW - 50, "ok", slot=NOW - 60, key="load/2026-11-25T13:59:00Z",
                  after="extract 2026-11-25T13:59:00Z succeeded")
    failed = RunInfo("p2", NOW - 10, "failed", slot=NOW - 15, key="extract/2026-11-25T13:59:45Z")
    fine = RunInfo("p1", NOW - 60, "ok", slot=NOW - 60, key="extract/2026-11-25T13:59:00Z")
    not_run = report.not_run_entries("extract", [fine, failed], "UTC")
    assert [set(entry) for entry in not_run] == [NOT_RUN_KEYS]
    assert not_run[0]["reason"] == "extract 2026-11-25T13:59:45Z failed" and not_run[0]["parent_run"] == "p2"
    document = report.history_document("cron01", "load", "UTC", NOW - 3600, NOW, [ran], None, None,
                                       not_run=not_run, after="extract")
    assert document["after"] == "extract" and document["runs"][0]["after"] == "extract 2026-11-25T13:59:00Z succeeded"
    text = report.history_text(document)
    assert "c1  after extract 2026-11-25T13:59:00Z succeeded" in text
    assert "not run: extract 2026-11-25T13:59:45Z failed" in text


def test_issue23_a_skipped_slot_is_listed_covers_its_slot_and_is_neither_a_run_nor_a_failure():
    skipped = RunInfo("s1", NOW - 200, "skipped", "skipped: missed by 9h12m, catch_up = 2h", slot=int(NOW - 200),
                      duration=0.0)
    runs = [run(NOW - 300, int(NOW - 300)), skipped, run(NOW - 100, int(NOW - 100))]
    doc = report.history_document("cron01", "settle", "UTC", NOW - 400, NOW, runs,
                                  [NOW - 300, NOW - 200, NOW - 100], NOW - 20)
    assert [r["result"] for r in doc["runs"]] == ["ok", "skipped", "ok"]
    assert doc["runs"][1]["reason"] == "skipped: missed by 9h12m, catch_up = 2h"
    assert doc["summary"]["runs"] == 2 and doc["summary"]["failures"] == 0 and doc["summary"]["skipped"] == 1
    assert doc["summary"]["missed_slots"] == 0  # recorded as skipped: accounted for, not missed
    assert doc["summary"]["p50_duration"] == 0.2
    assert ", 1 skipped (catch_up, concurrency), " in report.history_text(doc)
