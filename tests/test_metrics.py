"""The metrics collector (host/metrics.py) against a temporary root and a recording systemd:
records -> counters that survive a restart, the textfile promtool accepts, and its refusals."""
from __future__ import annotations

from dataclasses import replace

import json
import os
import shutil
import subprocess

import pytest

from deployer.contract import paths
from deployer.host import metrics
from deployer.host.agent import Systemd
from deployer.contract.record import RunRecord

HOST = "cron01"
TIMER_SHOW = {
    "deployer-settle.timer": "ActiveState=active\nUnitFileState=enabled\nNextElapseUSecRealtime=\n"
                             "LastTriggerUSec=Wed 2026-11-25 13:00:00 UTC\n"
                             "TimersCalendar={ OnCalendar=*-*-* *:00:00 ; next_elapse=Wed 2026-11-25 14:00:00 UTC }",
    "deployer-report.timer": "ActiveState=inactive\nUnitFileState=disabled\nNextElapseUSecRealtime=\n"
                             "LastTriggerUSec=n/a\nTimersCalendar={ OnCalendar=*-*-* 03:00:00 ; next_elapse=n/a }",
}
SERVICE_SHOW = {
    "deployer-settle.service": "ActiveState=activating\nResult=success\nExecMainStatus=0\n"
                               "ExecMainStartTimestamp=Wed 2026-11-25 13:59:00 UTC\nExecMainExitTimestamp=",
    "deployer-report.service": "ActiveState=inactive\nResult=success\nExecMainStatus=0\n"
                               "ExecMainStartTimestamp=\nExecMainExitTimestamp=",
}


def record(job, started, result="ok", duration=1.5):
    return RunRecord(job=job, run="r%d" % started, slot=int(started) // 60 * 60, started=started, duration=duration,
                     attempts=1 if result == "ok" else 3, result=result,
                     reason="status 200" if result == "ok" else "status 500, expected 2xx",
                     http_status=200 if result == "ok" else 500)


def cursor(index, sequence="e2f1b4fa3d3642f8b2f8ffb196a48537"):
    """A cursor as journalctl writes one (tests/data/agent/journal-failed-run-and-forged.jsonl)."""
    return "s=%s;i=%x;b=277e2e1616ea4362a215d981b20640da;m=%x;t=%x;x=48c88c260bc6c9f6" % (
        sequence, 0x44 + index, 0x30590dc4f + index, 0x661f23e8b09dc + index)


class FakeSystemd(Systemd):
    """journalctl answers the records after the cursor; systemctl show answers TIMER/SERVICE_SHOW."""

    def __init__(self):
        self.records: list[RunRecord] = []
        self.calls: list[tuple] = []
        self.forged: set[str] = set()  # runs sent by a local user, not by the job's service
        self.shown = {**TIMER_SHOW, **SERVICE_SHOW}  # what `systemctl show` answers, by unit

    def sender(self, r: RunRecord) -> dict:
        if r.run in self.forged:
            return {"_UID": "1000"}
        return {"_UID": "61299", "_SYSTEMD_UNIT": f"deployer-{r.job}.service"}

    def run(self, args):
        args = tuple(args)
        self.calls.append(args)
        if args[0] == "journalctl":
            after = [a.split("=", 1)[1] for a in args if a.startswith("--after-cursor=")]
            start = int(after[0].split(";i=")[1].split(";")[0], 16) - 0x44 + 1 if after else 0
            lines = [json.dumps({"__CURSOR": cursor(i), **r.journal_fields(), **self.sender(r)})
                     for i, r in enumerate(self.records) if i >= start]
            return 0, "\n".join(lines) + "\n", ""
        if args[:2] == ("systemctl", "show"):
            shown = self.shown
            return 0, "\n\n".join("Id=%s\n%s" % (u, shown[u]) for u in args[4:] if u in shown) + "\n", ""
        if args[:2] == ("systemctl", "list-units"):  # every loaded unit and its ActiveState
            states = {u: text.split("ActiveState=", 1)[1].split("\n", 1)[0] for u, text in self.shown.items()}
            return 0, "".join("%s loaded %s sub deployer: a job\n" % (u, state) for u, state in states.items()), ""
        if args == ("systemctl", "stop", paths.METRICS_SOON_TIMER):
            return 0, "", ""
        raise AssertionError(args)

    def properties(self, units, properties):  # never the D-Bus of the machine the tests run on
        return self.show(units, properties)


@pytest.fixture
def host(tmp_path):
    layout = paths.Layout(str(tmp_path))
    os.makedirs(layout.unit_dir)
    for job, settings in (("settle", {"period": 3600, "timeout": 60}), ("report", {"period": 86400, "timeout": 300})):
        with open(os.path.join(layout.unit_dir, paths.job_unit(job, "timer")), "w") as handle:
            handle.write("%s\n[Unit]\n%s=%s\n[Timer]\nOnCalendar=hourly\n"
                         % (paths.MARKER, paths.METRICS_KEY, json.dumps(settings)))
    # An unmanaged timer of the same shape is no job of ours.
    with open(os.path.join(layout.unit_dir, "deployer-stray.timer"), "w") as handle:
        handle.write("[Timer]\nOnCalendar=hourly\n")
    directory = tmp_path / paths.METRICS_DIR.lstrip("/")
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    return layout, FakeSystemd()


def collect(host, now=1795615200.0):
    layout, systemd = host
    return metrics.collect(HOST, "1.2.3", paths.METRICS_DIR, layout=layout, systemd=systemd, now=now)


def parse(text):
    values = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


def series(name, job):
    return '%s{deployer_host="%s",deployer_job="%s"}' % (name, HOST, job)


def test_runs_become_counters_and_last_values(host):
    host[1].records = [record("settle", 1795600000.0), record("settle", 1795603600.0, "failed", 12.25)]
    values = parse(collect(host))
    assert values[series("deployer_job_runs_total", "settle")] == 2
    assert values[series("deployer_job_failures_total", "settle")] == 1
    assert values[series("deployer_job_last_success", "settle")] == 0
    assert values[series("deployer_job_last_start_timestamp_seconds", "settle")] == 1795603600.0
    assert values[series("deployer_job_last_slot_timestamp_seconds", "settle")] == 1795603560
    assert values[series("deployer_job_last_duration_seconds", "settle")] == 12.25
    assert values[series("deployer_job_last_success_timestamp_seconds", "settle")] == 1795600001.5
    assert values[series("deployer_job_last_failure_timestamp_seconds", "settle")] == 1795603612.25
    assert values[series("deployer_job_last_attempts", "settle")] == 3
    assert values[series("deployer_job_last_http_status", "settle")] == 500
    assert values[series("deployer_job_next_run_timestamp_seconds", "settle")] == 1795615200  # 14:00 UTC
    assert values[series("deployer_job_period_seconds", "settle")] == 3600
    assert values[series("deployer_job_timeout_seconds", "report")] == 300
    assert values[series("deployer_job_running", "settle")] == 1
    assert values[series("deployer_job_running_since_timestamp_seconds", "settle")] == 1795615140  # 13:59
    assert values[series("deployer_job_running", "report")] == 0
    assert values[series("deployer_job_stopped", "report")] == 1  # stopped, not paused
    assert values[series("deployer_job_runs_total", "report")] == 0
    assert series("deployer_job_last_success", "report") not in values  # never ran: no last_* series
    assert values['deployer_jobs{deployer_host="cron01"}'] == 2
    assert values['deployer_held{deployer_host="cron01"}'] == 0
    assert values['deployer_build_info{deployer_host="cron01",version="1.2.3"}'] == 1
    assert values['deployer_heartbeat_timestamp_seconds{deployer_host="cron01"}'] == 1795615200


def test_counters_survive_a_restart_and_no_run_counts_twice(host):
    host[1].records = [record("settle", 1795600000.0)]
    collect(host)
    host[1].records.append(record("settle", 1795603600.0, "failed"))
    collect(host)  # a new process: everything it knows comes from the state file and the journal
    collect(host)
    values = parse(collect(host))
    assert values[series("deployer_job_runs_total", "settle")] == 2
    assert values[series("deployer_job_failures_total", "settle")] == 1
    # The cursor: later passes ask the journal only for what is new.
    last_read = [c for c in host[1].calls if c[0] == "journalctl"][-1]
    assert [a for a in last_read if a.startswith("--after-cursor=")] == ["--after-cursor=" + cursor(1)]


def test_a_record_a_local_user_forged_counts_for_nothing(host):
    """Before: a record dated in the future made every real run after it look old (never counted)."""
    host[1].records = [record("settle", 9_000_000_000.0)]
    host[1].forged.add("r9000000000")
    collect(host)
    host[1].records.append(record("settle", 1795603600.0, "failed"))
    values = parse(collect(host))
    assert values[series("deployer_job_runs_total", "settle")] == 1
    assert values[series("deployer_job_failures_total", "settle")] == 1


def test_a_journal_read_again_from_the_start_counts_nothing_twice(host):
    layout, systemd = host
    systemd.records = [record("settle", 1795600000.0), record("settle", 1795603600.0)]
    collect(host)
    state = json.loads(open(layout.at(paths.METRICS_STATE)).read())
    state["cursor"] = ""  # a lost cursor (a volatile journal after a reboot)
    with open(layout.at(paths.METRICS_STATE), "w") as handle:
        json.dump(state, handle)
    assert parse(collect(host))[series("deployer_job_runs_total", "settle")] == 2


def test_issue22_8_runs_after_one_with_the_clock_a_day_ahead_still_count(host):
    """Before: a run started with the clock a day ahead; every later run started "earlier" and was
    skipped as already counted: failures stopped counting (no DeployerJobFailed). Now the
    journal's order decides what is new (each record's cursor), not the runs' clocks."""
    host[1].records = [record("settle", 1795600000.0 + 86400)]
    collect(host)
    host[1].records += [record("settle", 1795600060.0, "failed"), record("settle", 1795600120.0, "failed")]
    collect(host)
    values = parse(collect(host))
    assert values[series("deployer_job_runs_total", "settle")] == 3
    assert values[series("deployer_job_failures_total", "settle")] == 2
    assert values[series("deployer_job_last_start_timestamp_seconds", "settle")] == 1795600120.0
    assert values[series("deployer_job_last_success", "settle")] == 0


def test_a_version_1_state_counts_every_record_after_its_cursor(host):
    """A state an earlier version wrote (no cursor per job), after the day-ahead run: each job's
    last run moves to the state's cursor, and the records after it count."""
    layout, systemd = host
    systemd.records = [record("settle", 1795600000.0 + 86400), record("settle", 1795600060.0, "failed")]
    ahead = {"slot": 1795686360, "started": 1795686400.0, "duration": 1.5, "attempts": 1, "result": "ok",
             "http_status": 200}
    os.makedirs(os.path.dirname(layout.at(paths.METRICS_STATE)), exist_ok=True)
    with open(layout.at(paths.METRICS_STATE), "w") as handle:
        json.dump({"version": 1, "cursor": cursor(0), "jobs": {"settle": {"since": 1795500000.0, "runs": 7,
                                                                        "failures": 0, "last": ahead}}}, handle)
    values = parse(collect(host))
    assert values[series("deployer_job_runs_total", "settle")] == 8
    assert values[series("deployer_job_failures_total", "settle")] == 1
    state = json.loads(open(layout.at(paths.METRICS_STATE)).read())
    assert state["version"] == 2 and state["jobs"]["settle"]["last"]["cursor"] == cursor(1)


def test_the_paused_marker_shows(host):
    layout, _ = host
    os.makedirs(layout.paused_dir)
    open(os.path.join(layout.paused_dir, "deployer-report.timer"), "w").close()
    values = parse(collect(host))
    assert (values[series("deployer_job_paused", "report")], values[series("deployer_job_stopped", "report")]) == (1, 0)


def test_files_are_root_only_where_they_must_be(host):
    layout, _ = host
    collect(host)
    textfile = layout.at(paths.METRICS_DIR + "/" + paths.METRICS_FILE)
    assert os.stat(textfile).st_mode & 0o777 == 0o644
    assert os.stat(layout.at(paths.METRICS_STATE)).st_mode & 0o777 == 0o600
    assert [n for n in os.listdir(os.path.dirname(textfile))] == [paths.METRICS_FILE]  # no temporary left


@pytest.mark.skipif(os.geteuid() != 0, reason="the owner check needs root to own the directory")
def test_a_directory_others_can_write_is_refused(host):
    layout, _ = host
    directory = layout.at(paths.METRICS_DIR)
    os.chmod(directory, 0o777)
    with pytest.raises(metrics.MetricsError, match="writable by others than root"):
        collect(host)
    assert os.listdir(directory) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the owner check needs root to own the directory")
def test_a_directory_swapped_for_a_link_is_refused_and_nothing_lands_where_it_points(host, tmp_path):
    """The parent of Debian's textfile directory belongs to `prometheus`: that user can put a
    link where the directory was. Root must not follow it."""
    layout, _ = host
    directory = layout.at(paths.METRICS_DIR)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rmdir(directory)
    os.symlink(elsewhere, directory)
    with pytest.raises(metrics.MetricsError, match="not a directory root can use"):
        collect(host)
    assert os.listdir(elsewhere) == []


def test_the_textfile_passes_promtool_check_metrics(host):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is missing (apt-get install prometheus; `make install` does)")
    host[1].records = [record("settle", 1795600000.0), record("report", 1795603600.0, "failed")]
    text = collect(host)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr


def skipped(job, started, kind="catch_up"):
    reason = ("skipped: missed by 9h12m, catch_up = 2h" if kind == "catch_up"
              else "skipped: previous run still running since 2026-12-06T02:00:00Z")
    return replace(record(job, started, "skipped", 0.0), attempts=0, http_status=None, reason=reason, skipped=kind,
                   run="s%d" % started)


def test_every_family_is_written_once_with_help_and_type(host):
    host[1].records = [record("settle", 1795600000.0), record("report", 1795603600.0, "failed"),
                       skipped("report", 1795607200.0)]
    text = collect(host)
    names = [f.name for f in metrics.JOB_FAMILIES + metrics.HOST_FAMILIES]
    assert [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")] == names


def test_a_pass_looks_again_until_nothing_new_is_in_the_journal(host):
    layout, systemd = host
    assert metrics.collect_until_quiet(HOST, "1", paths.METRICS_DIR, layout=layout, systemd=systemd) == 1

    class Arriving(FakeSystemd):
        """A run ends while each of the first two passes asks systemd for the jobs' state: after
        the pass read the journal, as on a loaded host."""

        def show(self, units, properties):
            reads = [call for call in self.calls if call[0] == "journalctl"]
            if len(self.records) < min(len(reads), 2):  # one run in each of the first two passes
                self.records.append(record("settle", 1795600000.0 + 60 * len(self.records)))
            return super().show(units, properties)

    arriving = Arriving()
    passes = metrics.collect_until_quiet(HOST, "1", paths.METRICS_DIR, layout=layout, systemd=arriving)
    assert passes == 3  # none read, then each run by the pass after the one it ended in
    text = open(layout.at(paths.METRICS_DIR + "/" + paths.METRICS_FILE)).read()
    assert parse(text)[series("deployer_job_runs_total", "settle")] == 2


def test_the_debounce_timer_is_stopped_after_each_pass_before_the_journal_is_looked_at_again(host):
    """Started while it waits or has elapsed into this start, the timer does nothing: stopped
    before the last look at the journal, a run that ends after that look starts it anew."""
    layout, systemd = host
    systemd.records = [record("settle", 1795600000.0)]
    assert metrics.collect_until_quiet(HOST, "1", paths.METRICS_DIR, layout=layout, systemd=systemd) == 1
    stop = ("systemctl", "stop", paths.METRICS_SOON_TIMER)
    reads = [index for index, call in enumerate(systemd.calls) if call[0] == "journalctl"]
    assert systemd.calls.count(stop) == 1 and len(reads) == 2  # the pass's read, then the look
    assert reads[0] < systemd.calls.index(stop) < reads[1]


def test_a_host_that_holds_its_jobs_says_so(host):
    layout, _ = host
    os.makedirs(os.path.dirname(layout.held), exist_ok=True)
    with open(layout.held, "w") as handle:
        json.dump({"since": "2026-11-25T14:00:00+00:00", "down_for_seconds": 900.0, "lease_seconds": 300.0}, handle)
    assert parse(collect(host))['deployer_held{deployer_host="cron01"}'] == 1



def test_a_chained_job_has_its_series_without_a_timer(host):
    """Issue 23 item 8: a job its parent starts (after =) has a service and no timer: its runs
    count, it has no next run and no period, and it is never 'stopped'."""
    layout, systemd = host
    for name in (paths.job_unit("load", "service"), paths.RECOVER_UNIT, paths.job_unit("settle", "service")):
        with open(os.path.join(layout.unit_dir, name), "w") as handle:
            handle.write(paths.MARKER + "\n[Service]\n")
    assert metrics.installed_jobs(layout)["load"] == "" and "recover" not in metrics.installed_jobs(layout)
    systemd.records = [record("load", 1795615000.0)]
    values = parse(collect(host))
    assert values[series("deployer_job_runs_total", "load")] == 1
    assert values[series("deployer_job_stopped", "load")] == 0
    assert values[series("deployer_job_next_run_timestamp_seconds", "load")] == 0
    assert values[series("deployer_job_period_seconds", "settle")] == 3600, "a timer's settings still win"


def test_issue23_a_skipped_slot_is_counted_once_by_reason_and_is_neither_a_run_nor_a_failure(host):
    host[1].records = [record("settle", 1795600000.0), skipped("settle", 1795603600.0),
                       skipped("settle", 1795607200.0, "concurrency")]
    text = collect(host)
    label = 'deployer_host="%s",deployer_job="settle"' % HOST
    assert f'deployer_job_skipped_total{{{label},reason="catch_up"}} 1' in text
    assert f'deployer_job_skipped_total{{{label},reason="concurrency"}} 1' in text
    assert f"deployer_job_runs_total{{{label}}} 1" in text and f"deployer_job_failures_total{{{label}}} 0" in text
    assert f"deployer_job_last_success{{{label}}} 1" in text  # the last RUN succeeded
    assert f"deployer_job_last_skipped_slot_timestamp_seconds{{{label}}} {1795607200 // 60 * 60}" in text
    # Read again (the journal from its start: a lost cursor): nothing counts twice.
    host[1].records = host[1].records + [skipped("settle", 1795610800.0, "concurrency")]
    again = collect(host)
    assert f'deployer_job_skipped_total{{{label},reason="concurrency"}} 2' in again
    assert f'deployer_job_skipped_total{{{label},reason="catch_up"}} 1' in again


# -- a pass costs what changed (issue 25) --------------------------------------------------------

def asked(systemd, since=0):
    """The units a pass asked `systemctl show` about, after call `since`."""
    return {unit for call in systemd.calls[since:] if call[:2] == ("systemctl", "show")
            for unit in call[4:]}


REPORT_STARTED = ("ActiveState=active\nUnitFileState=enabled\nNextElapseUSecRealtime=\nLastTriggerUSec=n/a\n"
                  "TimersCalendar={ OnCalendar=*-*-* 03:00:00 ; next_elapse=Thu 2026-11-26 03:00:00 UTC }")


def test_a_second_pass_asks_only_about_jobs_that_may_have_changed(host):
    layout, systemd = host
    now = 1795615200.0
    systemd.shown["deployer-report.timer"] = REPORT_STARTED
    collect(host, now)
    assert asked(systemd) == {"deployer-settle.timer", "deployer-settle.service",
                              "deployer-report.timer", "deployer-report.service"}
    # report's next elapse moved without a push (what no pass can see but by asking); settle is
    # running and its next elapse (14:00) has come: only settle is asked about.
    systemd.shown["deployer-report.timer"] = REPORT_STARTED.replace("03:00:00 UTC }", "04:00:00 UTC }")
    calls = len(systemd.calls)
    values = parse(collect(host, now + 60))
    assert asked(systemd, calls) == {"deployer-settle.timer", "deployer-settle.service"}
    assert values[series("deployer_job_next_run_timestamp_seconds", "report")] == 1795662000  # 03:00, as last seen
    assert values[series("deployer_job_running", "settle")] == 1
    # After FULL_EVERY every job is asked about again.
    calls = len(systemd.calls)
    values = parse(collect(host, now + 60 + metrics.FULL_EVERY))
    assert "deployer-report.timer" in asked(systemd, calls)
    assert values[series("deployer_job_next_run_timestamp_seconds", "report")] == 1795665600  # 04:00


@pytest.mark.parametrize("change", ["nothing", "record", "pause", "fence", "next elapse", "push", "disable by hand",
                                    "new boot", "clock stepped back", "timer stopped", "service running"])
def test_what_makes_a_pass_ask_about_a_quiet_job_again(host, change, tmp_path):
    layout, systemd = host
    systemd.shown["deployer-report.timer"] = REPORT_STARTED
    if change == "next elapse":  # 14:02, two minutes after the first pass
        systemd.shown["deployer-report.timer"] = REPORT_STARTED.replace("Thu 2026-11-26 03:00", "Wed 2026-11-25 14:02")
    wants = os.path.join(layout.unit_dir, paths.TIMERS_WANTS)
    os.makedirs(wants)
    os.symlink(os.path.join(layout.unit_dir, "deployer-report.timer"), os.path.join(wants, "deployer-report.timer"))
    now = 1795615200.0
    collect(host, now)
    later = now + 60
    if change == "record":
        systemd.records.append(record("report", now + 10))
    elif change in ("pause", "fence"):
        marks = layout.paused_dir if change == "pause" else layout.fenced_dir
        os.makedirs(marks, exist_ok=True)
        open(os.path.join(marks, "deployer-report.timer"), "w").close()
    elif change == "next elapse":
        later = now + 180
    elif change == "push":
        os.rename(os.path.join(layout.unit_dir, "deployer-stray.timer"), os.path.join(layout.unit_dir, "x.timer"))
    elif change == "disable by hand":  # `systemctl disable`: the link goes, the unit directory stays as it was
        os.unlink(os.path.join(wants, "deployer-report.timer"))
    elif change == "new boot":
        os.makedirs(os.path.dirname(layout.boot_id), exist_ok=True)
        with open(layout.boot_id, "w") as handle:
            handle.write("5c2e1d0a-new-boot\n")
    elif change == "clock stepped back":
        later = now - 3600
    elif change == "timer stopped":  # by hand, or a pause the last pass saw halfway (its marker, not the stop)
        systemd.shown["deployer-report.timer"] = TIMER_SHOW["deployer-report.timer"]
    elif change == "service running":  # a manual run, or one its parent started
        systemd.shown["deployer-report.service"] = SERVICE_SHOW["deployer-settle.service"]
    calls = len(systemd.calls)
    collect(host, later)
    assert ("deployer-report.timer" in asked(systemd, calls)) == (change != "nothing"), change


def test_a_quiet_pass_asks_about_no_job():
    """Pure: with nothing changed, nothing is asked (one list-units call said so)."""
    seen = {"fingerprint": [1, 2, "b"], "full_at": 1000.0, "jobs": {
        "a": {"timer_state": "active", "next": "2026-11-26T03:00:00+00:00", "service_state": "inactive",
              "started": "", "paused": False, "fenced": False},
        "chained": {"timer_state": "", "next": "", "service_state": "inactive", "started": "", "paused": False,
                    "fenced": False}}}
    quiet = {"deployer-a.timer": "active", "deployer-a.service": "inactive"}  # chained: nothing loaded

    def ask(jobs=("a", "chained"), states=quiet, mark=(1, 2, "b"), now=1060.0):
        return metrics.jobs_to_ask(seen, list(mark), list(jobs), set(), states, set(), set(), now)

    assert ask() == set()
    assert ask(states=dict(quiet, **{"deployer-a.service": "activating"})) == {"a"}
    assert ask(states=dict(quiet, **{"deployer-a.timer": "inactive"})) == {"a"}
    assert ask(jobs=("a", "chained", "new")) == {"new"}
    assert ask(mark=(1, 3, "b")) is None
    assert ask(now=1000.0 + metrics.FULL_EVERY) is None


@pytest.mark.parametrize("change", ["gone", "junk", "jobs not a dict", "a field missing", "a field more"])
def test_what_another_version_left_in_the_state_makes_a_pass_ask_about_every_job(host, change):
    layout, systemd = host
    collect(host)
    path = layout.at(paths.METRICS_STATE)
    with open(path) as handle:
        state = json.load(handle)
    seen = state["seen"]  # from a pass a minute ago, the fingerprint unchanged: the next would ask about settle only
    if change == "gone":
        del state["seen"]
    elif change == "junk":
        state["seen"] = "junk"
    elif change == "jobs not a dict":
        seen["jobs"] = []
    elif change == "a field missing":
        del seen["jobs"]["report"]["next"]
    else:
        seen["jobs"]["report"]["new"] = 1
    with open(path, "w") as handle:
        json.dump(state, handle)
    calls = len(systemd.calls)
    collect(host, 1795615200.0 + 60)
    assert "deployer-report.timer" in asked(systemd, calls)


def remove_keeping_the_directory_mtime(layout, name):
    """A job's timer removed within the same tick of the directory's clock as the last pass."""
    info = os.stat(layout.unit_dir)
    os.unlink(os.path.join(layout.unit_dir, name))
    os.utime(layout.unit_dir, ns=(info.st_atime_ns, info.st_mtime_ns))


def jobs_in_the_file(host, now):
    return parse(collect(host, now))['deployer_jobs{deployer_host="cron01"}']


def test_a_unit_directory_changed_just_before_a_pass_makes_the_next_pass_read_it_again(host):
    """Racy mtimes (as git's index has them): a push's last change can share the directory's mtime
    with a pass that read the directory just before it."""
    layout, _ = host
    now = 1795615200.0
    os.utime(layout.unit_dir, (now - 1, now - 1))  # changed a second before the pass
    assert jobs_in_the_file(host, now) == 2
    remove_keeping_the_directory_mtime(layout, "deployer-report.timer")
    assert jobs_in_the_file(host, now + 60) == 1


def test_every_full_pass_reads_the_unit_files_again(host):
    layout, _ = host
    now = 1795615200.0
    os.utime(layout.unit_dir, (now - 100, now - 100))
    assert jobs_in_the_file(host, now) == 2
    remove_keeping_the_directory_mtime(layout, "deployer-report.timer")
    assert jobs_in_the_file(host, now + 60) == 2  # nothing said it changed: as the last pass saw it
    assert jobs_in_the_file(host, now + 60 + metrics.FULL_EVERY) == 1


def test_when_list_units_fails_a_pass_asks_about_every_job(host):
    layout, systemd = host
    collect(host)

    class Failing(FakeSystemd):
        def run(self, args):
            if tuple(args[:2]) == ("systemctl", "list-units"):
                self.calls.append(tuple(args))
                return 1, "", "Failed to connect to bus"
            return super().run(args)

    failing = Failing()
    failing.shown = systemd.shown
    metrics.collect(HOST, "1.2.3", paths.METRICS_DIR, layout=layout, systemd=failing, now=1795615200.0 + 60)
    assert "deployer-report.timer" in asked(failing)
