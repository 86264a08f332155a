"""The watcher's reads (recorded: tests/data/watch/) and its decisions (alert_late, alert_long), no host."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from deployer import render
from deployer.contract import paths, unitkeys
from deployer.host import watch
from deployer.host.alert import format_messages
from deployer.contract.channels import CHANNEL_TYPES, EVENT_FIELDS, typed_event
from deployer.host.watch import Facts, Watched, decide

DATA = Path(__file__).parent / "data" / "watch"
SLOT = 1796522400.0  # 2026-12-06 02:00:00 UTC
RUN = "5d1f0c2b8a7e4b3c9d6e1f2a3b4c5d6e"
NEXT_RUN = "0a8e4f1c2d3b4a5968778695a4b3c2d1"


class RecordedSystemd:
    """Answers `systemctl show` with the recorded output, and keeps every command it was given."""

    def __init__(self, output: str):
        from deployer.host.systemctl import Systemd

        self.output, self.commands, self.real = output, [], Systemd

    def show(self, units, properties):
        return self.real.show(self, units, properties)

    def properties(self, units, properties):  # as the real one where PID 1's socket cannot be used
        return self.show(units, properties)

    def systemctl(self, *args, check=True):
        self.commands.append(["systemctl", *args])
        return 0, self.output, ""


def test_one_show_call_reads_every_watched_job_and_parses_as_recorded(tmp_path):
    fixture = json.loads((DATA / "show-settle-tick.json").read_text())
    layout = paths.Layout(str(tmp_path))
    os.makedirs(layout.at(paths.HOLD_RUN_DIR))
    Path(layout.not_held).write_text("")
    systemd = RecordedSystemd(fixture["output"])
    watched = [Watched("settle", "ops", long=1800, calendar=("*-*-* 02:00:00 UTC",)),
               Watched("tick", "ops", late=300, calendar=("*-*-* *:*:00",))]
    facts = watch.read_facts(systemd, watched, layout)
    assert systemd.commands == [fixture["command"]]
    assert facts == {job: Facts(**value) for job, value in fixture["parsed"].items()}


def test_the_d_bus_read_gives_the_same_facts():
    """Systemd.properties (root: PID 1's private socket) renders values as systemctl.show_text does:
    times as @<unix>, the invocation id (D-Bus `ay`) as systemctl's hex."""
    from deployer.host.systemctl import show_text

    fixture = json.loads((DATA / "show-settle-tick.json").read_text())
    timer = {"ActiveState": "active", "NextElapseUSecRealtime": show_text("NextElapseUSecRealtime", 1796608800 * 10**6),
             "LastTriggerUSec": show_text("LastTriggerUSec", 1796522400 * 10**6)}
    service = {"ActiveState": "activating", "InvocationID": show_text("InvocationID", list(bytes.fromhex(RUN))),
               "ExecMainStartTimestamp": show_text("ExecMainStartTimestamp", 1796522403 * 10**6),
               "ExecMainExitTimestamp": show_text("ExecMainExitTimestamp", 0), "Result": "success",
               "ExecMainStatus": show_text("ExecMainStatus", 0)}
    assert watch.facts_of(timer, service, None, None, False, False) == Facts(**fixture["parsed"]["settle"])


def test_paused_fenced_and_held_come_from_the_host_files(tmp_path):
    layout = paths.Layout(str(tmp_path))
    for directory in (layout.paused_dir, layout.fenced_dir, os.path.dirname(layout.held)):
        os.makedirs(directory, exist_ok=True)
    Path(layout.paused_dir, "deployer-a.timer").write_text("")
    Path(layout.fenced_dir, "deployer-b.timer").write_text("")
    Path(layout.held).write_text("{}")
    facts = watch.read_facts(RecordedSystemd(""), [Watched(n, "ops", late=60) for n in "abc"], layout)
    assert [(f.paused, f.held) for f in facts.values()] == [(True, True), (True, True), (False, True)]


# -- decisions -------------------------------------------------------------------------------------

LONG = Watched("settle", "ops", long=1800)
RUNNING = Facts(timer_state="active", next_elapse=SLOT + 86400, last_trigger=SLOT, service_state="activating",
                invocation=RUN, started=SLOT + 3)
LATE = Watched("tick", "ops", late=300, calendar=("*-*-* 02:00:00 UTC",))
WAITING = Facts(timer_state="active", next_elapse=SLOT, last_trigger=SLOT - 86400, service_state="inactive",
                invocation=NEXT_RUN, started=SLOT - 86400, exited=SLOT - 86390, result="success")


def no_calendar(lines, after):
    raise AssertionError("systemd-analyze is not needed for a waiting timer")


def daily(lines, after):
    """The next 02:00:00 UTC strictly after `after` (what systemd-analyze answers for the line)."""
    return SLOT + 86400 * ((after - SLOT) // 86400 + 1)


@pytest.mark.parametrize("watched, facts, state, now, kinds, kept", [
    pytest.param(LONG, RUNNING, {}, SLOT + 3 + 1799, [], {}, id="long-not-yet"),
    pytest.param(LONG, RUNNING, {}, SLOT + 3 + 1860, ["long"], {"long": {"invocation": RUN, "since": SLOT + 3,
                                                                         "alerted": SLOT + 1863}}, id="long"),
    pytest.param(LONG, RUNNING, {"long": {"invocation": RUN, "since": SLOT + 3, "alerted": SLOT + 1863}},
                 SLOT + 3000, [], {"long": {"invocation": RUN, "since": SLOT + 3, "alerted": SLOT + 1863}},
                 id="long-told-once-per-run"),
    pytest.param(LONG, replace(RUNNING, service_state="inactive", exited=SLOT + 2523),
                 {"long": {"invocation": RUN, "since": SLOT + 3, "alerted": SLOT + 1863}}, SLOT + 2530,
                 ["long_ended"], {}, id="long-ended"),
    pytest.param(LONG, replace(RUNNING, invocation=NEXT_RUN, started=SLOT + 2600),
                 {"long": {"invocation": RUN, "since": SLOT + 3, "alerted": SLOT + 1863}}, SLOT + 2610,
                 ["long_ended"], {}, id="long-ended-and-the-next-run-started"),
    pytest.param(LATE, WAITING, {}, SLOT + 299, [], {}, id="late-not-yet"),
    pytest.param(LATE, WAITING, {}, SLOT + 312, ["late"], {"late": {"slot": SLOT, "alerted": SLOT + 312}},
                 id="late-timer-did-not-fire"),
    pytest.param(LATE, WAITING, {"late": {"slot": SLOT, "alerted": SLOT + 312}}, SLOT + 4000, [],
                 {"late": {"slot": SLOT, "alerted": SLOT + 312}}, id="late-told-once"),
    pytest.param(LATE, replace(WAITING, last_trigger=SLOT + 570, started=SLOT + 570),
                 {"late": {"slot": SLOT, "alerted": SLOT + 312}}, SLOT + 575, ["late_ended"], {}, id="late-ended"),
    pytest.param(LATE, replace(WAITING, paused=True), {}, SLOT + 4000, [], {}, id="paused-is-never-late"),
    pytest.param(LATE, replace(WAITING, timer_state="inactive", next_elapse=None, held=True), {}, SLOT + 312,
                 ["late"], {"late": {"slot": SLOT, "alerted": SLOT + 312}}, id="held-is-late"),
    pytest.param(replace(LATE, calendar=()), replace(WAITING, timer_state=""), {}, SLOT + 4000, [], {},
                 id="no-calendar-no-slot"),
])
def test_decisions(watched, facts, state, now, kinds, kept):
    events, new = decide(watched, facts, state, "cron01", now, next_after=daily if facts.held else no_calendar,
                         account=lambda invocation: "ok (status 200)")
    assert [e["kind"] for e in events] == kinds
    assert new == kept
    for event in events:
        assert list(typed_event(event)) == list(EVENT_FIELDS[event["kind"]])


def test_a_stopped_timer_is_late_from_the_calendar_after_its_last_trigger():
    stopped = replace(WAITING, timer_state="inactive", next_elapse=None)
    asked = []
    events, _ = decide(LATE, stopped, {}, "cron01", SLOT + 400,
                       next_after=lambda lines, after: asked.append((lines, after)) or daily(lines, after))
    assert asked == [(LATE.calendar, SLOT - 86400)]
    assert events[0]["slot"] == "2026-12-06T02:00:00Z" and events[0]["late_by"] == "6m40s"
    assert events[0]["reason"].startswith("its timer is inactive")
    never = replace(stopped, last_trigger=None, installed=SLOT - 10)  # never fired: since its install
    assert decide(LATE, never, {}, "cron01", SLOT + 400, next_after=daily)[0][0]["slot"] == "2026-12-06T02:00:00Z"


def test_the_ended_run_says_how_it_ended():
    told = {"long": {"invocation": RUN, "since": SLOT + 3, "alerted": SLOT + 1863}}
    failed = replace(RUNNING, service_state="failed", exited=SLOT + 2523, result="exit-code", exit_status="1")
    event = decide(LONG, failed, told, "cron01", SLOT + 2530)[0][0]
    assert (event["ran_for"], event["result"]) == ("42m", "failed (exit-code, exit status 1)")
    after = replace(RUNNING, invocation=NEXT_RUN)
    event = decide(LONG, after, told, "cron01", SLOT + 2610, account=lambda i: f"record of {i}")[0][0]
    assert event["result"] == f"record of {RUN}"


def test_the_messages():
    events, _ = decide(LONG, RUNNING, {}, "cron01", SLOT + 3 + 1860)
    [(title, text)] = format_messages(events, CHANNEL_TYPES["dingtalk"].escape)
    assert title == "deployer: job settle STILL RUNNING on cron01"
    assert ("settle still running after 31m (alert_long = 30m), since 2026-12-06 02:00:03 UTC, run " + RUN) in text
    ended = replace(RUNNING, service_state="inactive", exited=SLOT + 2523, result="success")
    events, _ = decide(LONG, ended, {"long": {"invocation": RUN, "since": SLOT + 3, "alerted": 0}}, "cron01", SLOT + 2600)
    assert format_messages(events)[0] == ("deployer: job settle finished on cron01",
                                          "**deployer: job settle finished on cron01**\n\n"
                                          f"settle finished after 42m: success, run {RUN}")
    events, _ = decide(LATE, WAITING, {}, "cron01", SLOT + 312)
    assert format_messages(events)[0][1].endswith(
        "tick: slot 2026-12-06T02:00:00Z has not started, 5m12s after its time (alert_late = 5m): its timer has not "
        "fired (PID 1 busy, or the clock stepped)")


def test_a_pass_groups_by_channel_and_forgets_jobs_no_longer_watched():
    other = replace(LATE, job="other", channel="pager")
    events, state = watch.watch_pass(
        [LONG, other], {"settle": RUNNING, "other": WAITING}, {"gone": {"late": {"slot": 1, "alerted": 1}}},
        "cron01", SLOT + 1900, next_after=no_calendar, log=lambda line: None)
    assert {c: [e["kind"] for e in found] for c, found in events.items()} == {"ops": ["long"], "pager": ["late"]}
    assert sorted(state) == ["other", "settle"]


def test_the_sender_starts_only_when_there_is_something_to_send(tmp_path):
    outbox, queue = tmp_path / "outbox", tmp_path / "queue"
    assert not watch.anything_to_send(str(outbox), str(queue), ["ops"])
    (queue / "ops").mkdir(parents=True)
    (queue / "ops" / "1.0-1-ab.json.tmp").write_text("{")
    assert not watch.anything_to_send(str(outbox), str(queue), ["ops"])
    watch.write_outbox(str(outbox), {"ops": [{"kind": "late"}]}, 1.0)
    assert watch.anything_to_send(str(outbox), str(queue), ["ops"])
    for name in os.listdir(outbox):
        os.unlink(outbox / name)
    (queue / "ops" / "1.0-1-ab.json").write_text("{}")  # an alert not delivered yet
    assert watch.anything_to_send(str(outbox), str(queue), ["ops"])


def test_the_outbox_round_trip(tmp_path):
    assert watch.write_outbox(str(tmp_path), {}, 1.0) is None
    watch.write_outbox(str(tmp_path), {"ops": [{"kind": "late", "job": "a"}]}, 1.0)
    watch.write_outbox(str(tmp_path), {"ops": [{"kind": "long", "job": "b"}], "pager": [{"kind": "late"}]}, 2.0)
    events, files = watch.read_outbox(str(tmp_path))
    assert {c: [e["kind"] for e in found] for c, found in events.items()} == {"ops": ["late", "long"], "pager": ["late"]}
    assert len(files) == 2


# -- what the deployer renders -----------------------------------------------------------------------

def inventory(tmp_path, jobs: str):
    from deployer import inventory as inv

    path = tmp_path / "inventory.ini"
    path.write_text("[host:cron01]\naddress = 127.0.0.1\n\n[alert:ops]\ntype = dingtalk\ntoken = t\n" + jobs)
    return inv.load(str(path))


def test_the_watcher_is_rendered_only_where_a_job_asks_for_it(tmp_path):
    plain = "".join(f"\n[job:j{i}]\nschedule = * * * * *\nurl = http://x/\nalert = ops\n" for i in range(3))
    names = [f.name for f in render.host_files(inventory(tmp_path, plain), "cron01")]
    assert not [n for n in names if "watch" in n]
    watched = plain + ("\n[job:settle]\nschedule = 0 2 * * *\ntimezone = Asia/Shanghai\nurl = http://x/\n"
                       "alert = ops\nalert_long = 30m\nalert_late = 5m\n"
                       "\n[job:loose]\nschedule = 0 2 * * *\nurl = http://x/\nalert_late = 5m\n")  # no channel
    files = {f.name: f for f in render.host_files(inventory(tmp_path, watched), "cron01")}
    assert paths.WATCH_TIMER in files and paths.WATCH_SERVICE in files and paths.WATCH_SEND_SERVICE in files
    unit = files[paths.WATCH_SERVICE].content.decode()
    sender = files[paths.WATCH_SEND_SERVICE].content.decode()
    assert unitkeys.WATCH.read(unit) == unitkeys.WatchConfig(
        (Watched("settle", "ops", 300, 1800, ("*-*-* 02:00:00 Asia/Shanghai",)),),
        {"ops": unitkeys.WatchChannel("dingtalk", {"endpoint": ""})})
    assert "LoadCredential=ops.token:/etc/deployer/credentials/ops.token" in sender
    assert "LoadCredential" not in unit and "User=deployer-alert" in sender  # root reads, the alert user sends
    assert "=t\n" not in unit + sender


def test_the_inventory_reads_the_thresholds(tmp_path):
    inv = inventory(tmp_path, "\n[defaults]\nalert_late = 90s\n\n[job:a]\nschedule = * * * * *\nurl = http://x/\n"
                              "alert_long = 1h30m\n\n[job:b]\nschedule = * * * * *\nurl = http://x/\n")
    assert [(j.alert_late, j.alert_long) for j in inv.jobs] == [(90, 5400), (90, None)]
