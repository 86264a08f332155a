"""Every host read, from its recorded fixture (tests/data/host_reads/, recorded on a real cron
host by tests/record_host_reads.py): the raw output through the real boundary and parser gives
the recorded `parsed`; every read of the boundary has a fixture; and the decisions made on top
of the reads (status, history, alert accounting, metrics, the watcher) driven from them."""
from __future__ import annotations

import inspect
import json
import os

import pytest

from deployer.host import dbus, journal, systemctl
from tests import host_reads
from tests.host_reads import READS, load_fixtures, parse

FIXTURES = load_fixtures()

# What the boundary's modules offer that reads nothing from the host (so needs no fixture), and why.
NOT_READS = {
    "dbus.object_path": "builds a request's object path",
    "dbus.method_call": "builds a request",
    "dbus.Connection.close": "closes the socket",
    "systemctl.chunks": "splits a list",
    "systemctl.verify_chunks": "splits verify's units over the CPUs",
    "systemctl.systemd_version": "parses the `systemd-analyze --version` verify asks first (the verify fixtures "
                                 "hold its answer; their commands show what verify made of it)",
    "systemctl.verify_argv": "builds verify's argv (the fixtures' commands show it)",
    "systemctl.without_timers_wants_argv": "wraps verify's argv (the fixtures' commands show it)",
    "journal.run_matches": "builds journalctl's matches (the fixtures' commands show them)",
    "journal.Position.after": "compares two positions (tests/test_metrics.py)",
    "journal.FailedRun.exit_number": "a property of a parsed FailedRun",
    "journal.FailedRun.signal": "a property of a parsed FailedRun",
    "journal.main_process_exit": "a predicate of the parsers over one entry (the main process's end, not a "
                                 "control process's: tests/test_alerts.py, in systemd 252's recorded shape)",
}


def boundary_reads():
    """Every public function and method of the boundary's modules: systemctl (Systemd's methods,
    its parsers), dbus (the connection and the message parser), journal (every parser)."""
    names = set()
    for module in (systemctl, dbus, journal):
        short = module.__name__.rsplit(".", 1)[1]
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(value):
                names.add("%s.%s" % (short, name))
            elif inspect.isclass(value) and not issubclass(value, Exception):
                for member, attribute in vars(value).items():
                    if member.startswith("_"):
                        continue
                    if inspect.isfunction(attribute) or isinstance(attribute, (classmethod, staticmethod, property)):
                        names.add("%s.%s" % ("Systemd" if value is systemctl.Systemd else "%s.%s" % (short, name),
                                             member))
    return names


@pytest.mark.parametrize("read, case, fixture", FIXTURES, ids=["%s/%s" % (r, c) for r, c, _ in FIXTURES])
def test_the_recorded_output_parses_as_recorded(read, case, fixture):
    assert fixture["read"] == read, "%s/%s.json is in the directory of another read" % (read, case)
    assert parse(fixture) == fixture["parsed"]


def test_every_read_of_the_boundary_has_a_recorded_fixture():
    covered = {name for read in {r for r, _, _ in FIXTURES} for name in READS[read].through}
    missing = sorted(boundary_reads() - set(NOT_READS) - covered)
    assert not missing, (
        "host reads without a recorded fixture: %s. Make the read in tests/host_reads_probe.py, give it a "
        "replay in tests/host_reads.py (READS, with what it goes `through`), and record on a real host: "
        "`.venv/bin/python -m tests.record_host_reads` (or, if it reads nothing from the host, list it in "
        "NOT_READS with why)" % ", ".join(missing))


def test_every_read_has_a_fixture_and_every_fixture_a_read():
    recorded = {r for r, _, _ in FIXTURES}
    assert set(READS) - recorded == set(), "reads without a fixture: record them (python -m tests.record_host_reads)"
    assert recorded - set(READS) == set(), "fixtures of no read in tests/host_reads.READS"


def test_the_fixtures_are_recordings():
    """Hand-written fixtures say so (`"recorded": false`); the rest came from a real host."""
    for read, case, fixture in FIXTURES:
        assert fixture.get("recorded") is False or "systemd 252" in fixture["recorded"], (read, case)


def test_the_completeness_check_names_a_new_read(monkeypatch):
    """A read added to the boundary without a fixture is caught (the check can fail)."""

    def journal_new_read(systemd):
        return systemd.journal_entries(["-n", "1"])

    journal_new_read.__module__ = journal.__name__
    monkeypatch.setattr(journal, "new_read", journal_new_read, raising=False)
    assert "journal.new_read" in boundary_reads()
    with pytest.raises(AssertionError, match="journal.new_read.*tests.record_host_reads"):
        test_every_read_of_the_boundary_has_a_recorded_fixture()


def fixture(read, case):
    return next(f for r, c, f in FIXTURES if (r, c) == (read, case))



# -- the decisions on top of the reads, driven from the recordings -------------------------------

def parsed_now(read, case):
    """The fixture's value as the parser makes it now (typed, not its JSON form)."""
    return READS[read].replay(fixture(read, case))


def test_status_rows_from_the_recorded_properties_and_last_runs():
    """agent.job_status on what PID 1 answered (D-Bus), with the last runs the journal gave."""
    from deployer.host import agent

    timers = parsed_now("systemctl.properties", "status-timers")
    services = parsed_now("systemctl.properties", "status-services")
    last = {job: runs[-1] for job, runs in parsed_now("journal.runs_from_journal", "status-last-runs").items()}
    rows = {}
    for timer in ("deployer-good.timer", "deployer-bad.timer", "deployer-never.timer"):
        service = timer[:-len(".timer")] + ".service"
        row = agent.job_status(timer, dict(timers[timer], UnitFileState="enabled"), services[service], False)
        rows[row.job] = row.__class__(**dict(row.__dict__, last_run=last.get(row.job)))
    good, bad, never = rows["good"], rows["bad"], rows["never"]
    assert (good.timer_state, good.result, good.exit_status) == ("active", "success", 0)
    assert good.last and good.next > good.last and good.calendar == ("*-*-* *:*:00 UTC",)
    assert (bad.service_state, bad.result, bad.exit_status) == ("failed", "exit-code", 1)
    assert bad.last == "" and bad.last_run.reason == "status 500 not expected"  # a manual run: no trigger
    assert (never.last, never.started, never.finished, never.last_run) == ("", "", "", None)
    assert never.next.startswith("2027-01-01T03:00:00")
    assert not agent.needs_last_run(good) and agent.needs_last_run(bad)


def test_history_from_the_recorded_journal(tmp_path):
    """agent.op_history replayed: a failed run by its record, runs PID 1 alone tells of (killed at
    RuntimeMaxSec=, exited 3), records the parser refuses (a non-UTF-8 field, a field sent twice)."""
    from deployer.contract import paths, protocol
    from deployer.host import agent

    def history(job):
        with host_reads.replaying(fixture("journal.runs_from_journal", "history-" + job)):
            host = agent.Host(layout=paths.Layout(str(tmp_path)), systemd=systemctl.Systemd())
            return agent.op_history(host, protocol.HistoryRequest(job, since=0))

    bad = history("bad")
    assert [(r.result, r.reason, r.http_status, r.source) for r in bad.runs] == [
        ("failed", "status 500 not expected", 500, "record")]
    assert [(r.result, r.reason, r.source) for r in history("killed").runs] == [("failed", "timeout", "systemd")]
    assert [(r.reason, r.duration) for r in history("crashed").runs] == [("exit-code (exit status 3)", -1.0)]
    assert [r.reason for r in history("signalled").runs] == ["signal (killed, signal KILL)"]
    assert [(r.result, r.reason) for r in history("resumable").runs] == [
        ("failed", "interrupted while polling"), ("skipped", "the previous run still ran")]
    assert history("odd").runs == () and history("never").runs == ()
    # The manual run, then a timer's slot (`good` runs every minute: the recording may hold a
    # timer run before the manual one too).
    manual = [r.slot == 0 for r in history("good").runs]
    assert manual.count(True) == 1 and False in manual[manual.index(True):], manual


def test_alert_accounting_from_pid1s_recorded_entries(tmp_path, monkeypatch):
    """alert.report_failures: PID 1's failed run (recorded) alerts once, with its record's slot and
    reason (recorded run account); the same runs found again alert nothing."""
    from deployer.host import alert

    runs = parsed_now("journal.journal_failed_runs", "unit")

    def find(unit, since=None, boot=None, after=""):  # journalctl's own filtering of the recording
        assert unit == "deployer-bad.service"
        if after:
            return runs[[r.cursor for r in runs].index(after) + 1:]
        return [r for r in runs if since is None or r.realtime / 1e6 >= since]

    account = fixture("journal.run_account", "failed-run")
    monkeypatch.setattr(alert, "job_request", lambda job: ("POST", "http://127.0.0.1/bad"))
    sent = []

    def send(events, take_queued):
        sent.extend(events)
        return True

    with host_reads.replaying(account):
        assert alert.report_failures("bad", "fixtures", str(tmp_path), send, lambda line: None,
                                     monitored=runs[0], find=find)
    assert [(e["job"], e["reason"], e["slot"], e["invocation"], e["exit_status"]) for e in sent] == [
        ("bad", "status 500 not expected", "manual-" + runs[0].invocation, runs[0].invocation, 1)]
    assert "attempt 1/1: POST" in "\n".join(sent[0]["lines"])
    # A later sweep that finds the same run again (a lookup by time, with its margin) reports nothing.
    assert alert.report_failures("bad", "fixtures", str(tmp_path), send, lambda line: None, sweep=True,
                                 find=lambda unit, **where: runs, sleep=lambda seconds: None)
    assert len(sent) == 1  # already reported


def test_a_boot_resumes_the_interrupted_run_the_journal_recorded():
    """journal.interrupted_runs (what agent.resume_interrupted starts again at boot): the resumable
    run's slot; the slot skipped after it leaves the resume due."""
    runs = parsed_now("journal.runs_from_journal", "history-resumable")["resumable"]
    assert parsed_now("journal.interrupted_runs", "this-boot") == {"resumable": runs[0].slot}


def test_an_alert_for_a_killed_run_says_how_pid1_saw_it_end():
    """What the alert says of runs that wrote no record (journal.run_account, recorded)."""
    assert parsed_now("journal.run_account", "signalled-run").reason == "signal (killed, signal KILL)"
    assert parsed_now("journal.run_account", "signalled-run").lines == ("going",)
    assert parsed_now("journal.run_account", "killed-run").reason == "timeout"
    assert not parsed_now("journal.run_account", "no-such-run").complete


def test_metrics_counters_from_the_recorded_records():
    """metrics.add_records on the records the collector read (journal.read_records, recorded)."""
    from deployer.host import metrics

    recorded = parsed_now("journal.read_records", "all")
    state = metrics.add_records({"version": metrics.STATE_VERSION, "cursor": "", "jobs": {}}, recorded["records"],
                                now=recorded["records"][-1].record.started + 60)
    jobs = state["jobs"]
    assert (jobs["bad"]["runs"], jobs["bad"]["failures"]) == (1, 1)
    assert jobs["good"]["runs"] == len([r for r in recorded["records"] if r.record.job == "good"]) >= 2
    last_good = [r.cursor for r in recorded["records"] if r.record.job == "good"][-1]
    assert jobs["good"]["failures"] == 0 and jobs["good"]["last"]["cursor"] == last_good
    # A skipped slot (recorded: `resumable`) is neither a run nor a failure.
    assert (jobs["resumable"]["runs"], jobs["resumable"]["failures"], jobs["resumable"]["skipped"]) == (
        1, 1, {"catch_up": 1})
    again = metrics.add_records(state, recorded["records"], now=0)  # the same journal read again
    assert again["jobs"] == jobs


def test_watch_decisions_from_the_recorded_properties():
    """watch.decide on the facts read from PID 1 (recorded): a long run is only what is running;
    `good` (every minute, last run at its slot) is not late until its next slot passes."""
    from deployer.host import watch

    facts = parsed_now("watch.read_facts", "jobs")
    watched = {w["job"]: watch.Watched(**w) for w in fixture("watch.read_facts", "jobs")["command"]["watched"]}
    good = facts["good"]
    quiet = watch.decide(watched["good"], good, {}, "fixtures", now=good.exited + 1)
    assert quiet[0] == []
    assert watch.decide(watched["good"], good, {}, "fixtures", now=good.next_elapse + 299)[0] == []
    events, state = watch.decide(watched["good"], good, {}, "fixtures", now=good.next_elapse + 301)
    assert [(e["kind"], e["late_by"]) for e in events] == [("late", "5m1s")]
    assert state == {"late": {"slot": good.next_elapse, "alerted": good.next_elapse + 301}}
    for job in ("bad", "never"):  # not running, not due: nothing to say
        assert watch.decide(watched[job], facts[job], {}, "fixtures", now=good.exited + 1)[0] == []
    # `long` was running when recorded: long once past alert_long, and told once (the watcher's
    # own state of that run, recorded: watch.json)
    long, kept = facts["long"], parsed_now("state.watch", "watch")["long"]
    assert long.service_state == "activating" and long.invocation == kept["long"]["invocation"]
    assert watch.decide(watched["long"], long, {}, "fixtures", now=long.started + 1799)[0] == []
    events, state = watch.decide(watched["long"], long, {}, "fixtures", now=long.started + 1801)
    assert [e["kind"] for e in events] == ["long"] and state["long"]["invocation"] == long.invocation
    assert watch.decide(watched["long"], long, kept, "fixtures", now=long.started + 1801)[0] == []


def test_op_status_makes_exactly_the_recorded_reads_and_answers_from_them(tmp_path):
    """agent.op_status end to end on the recorded answers, in the order the agent asked them on the
    host: the last push (journal), the timers' and services' properties (D-Bus), the last runs of
    the jobs that need one (journal); the state files as recorded (owner.json, metrics.json)."""
    from pathlib import Path

    from deployer.contract import paths, protocol
    from deployer.host import agent

    layout = paths.Layout(str(tmp_path))
    os.makedirs(os.path.join(layout.unit_dir, paths.TIMERS_WANTS))
    for job in ("good", "bad", "never", "long"):
        for suffix in ("timer", "service"):
            Path(layout.unit_dir, paths.job_unit(job, suffix)).write_text(paths.MARKER + "\n")
        os.symlink("../" + paths.job_unit(job, "timer"),
                   os.path.join(layout.unit_dir, paths.TIMERS_WANTS, paths.job_unit(job, "timer")))
    for read, case in (("state.agent", "owner"), ("state.metrics", "metrics")):
        recorded = fixture(read, case)
        os.makedirs(os.path.dirname(layout.at(recorded["command"]["file"])), exist_ok=True)
        Path(layout.at(recorded["command"]["file"])).write_text(recorded["output"])
    os.makedirs(layout.at(paths.HOLD_RUN_DIR))
    Path(layout.not_held).write_text("")
    asked = [fixture("journal.last_push", "status"), fixture("systemctl.properties", "status-timers"),
             fixture("systemctl.properties", "status-services"), fixture("systemctl.properties", "status-running"),
             fixture("journal.runs_from_journal", "status-last-runs")]
    with host_reads.replaying(dict(asked[0], more=asked[1:])) as given:
        answer = agent.op_status(agent.Host(layout=layout, systemd=systemctl.Systemd(), name="fixtures"),
                                 protocol.StatusRequest())
    assert given == [f["command"] if isinstance(f["command"], list) else {"dbus": "Get"} for f in asked]
    rows = {row.job: row for row in answer.jobs}
    assert sorted(rows) == ["bad", "good", "long", "never"] and answer.owner == "fixtures" and answer.held is None
    assert rows["long"].service_state == "activating" and "waiting for the answer" in rows["long"].doing
    assert answer.last_push.action == "push" and answer.last_push.outcome == "ok"
    assert rows["bad"].last_run.reason == "status 500 not expected" and rows["bad"].result == "exit-code"
    assert rows["good"].last_run is None and rows["good"].enabled == "enabled"  # succeeded: systemd says all
    assert rows["never"].last == "" and rows["never"].last_run is None
    metrics_state = json.loads(fixture("state.metrics", "metrics")["output"])
    assert rows["bad"].skipped == sum((metrics_state["jobs"]["bad"].get("skipped") or {}).values())


def test_the_hold_at_boot_from_the_recorded_lease_and_hold():
    """agent.lease_ran_out on the lease a host renewed (recorded), and the hold a boot check wrote
    when the lease had run out (recorded: agent.hold_at_boot on the host), as the agent reads it."""
    from deployer.contract import protocol
    from deployer.host import agent, state

    lease = state.Lease(**parsed_now("state.agent", "lease"))
    assert agent.lease_ran_out(lease, lease.renewed + lease.seconds) is None
    held = agent.lease_ran_out(lease, lease.renewed + lease.seconds + 60)
    assert (held.lease_seconds, held.down_for_seconds) == (lease.seconds, lease.seconds + 60)
    on_disk = protocol.from_json(protocol.Held, parsed_now("state.agent", "held"))
    assert on_disk.lease_seconds == 300 and on_disk.down_for_seconds >= 3600 and on_disk.reason == ""
    assert parsed_now("state.agent", "held-absent") is None
