"""The slot a run is for (host/slot.py): from the timer's stamp and its own calendar."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from deployer.host import slot

DATA = Path(__file__).parent / "data" / "slot"
DAY = 86400
# 2026-12-01T18:00:00Z = 2026-12-02 02:00 in Asia/Shanghai
SHANGHAI_2AM = 1796148000


def every(step: int, offset: int = 0):
    """A fake `analyze` for a calendar firing at offset + k*step (what systemd-analyze would say)."""

    def analyze(lines, base, iterations):
        first = ((base - offset) // step + 1) * step + offset
        return [[first + k * step for k in range(iterations)] for _ in lines]

    return analyze


def test_the_recorded_systemd_analyze_output_is_read_as_utc_instants(monkeypatch):
    recorded = (DATA / "daily-shanghai.txt").read_text()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, recorded, ""))
    found, = slot.analyze(["*-*-* 02:00:00 Asia/Shanghai"], 1796083130, 100)
    assert len(found) == 100 and found[0] == SHANGHAI_2AM and found[1] - found[0] == DAY


@pytest.mark.parametrize("at, expected", [
    pytest.param(1000, 1000, id="exactly-on-the-slot"),
    pytest.param(1000.9, 1000, id="within-the-accuracy"),
    pytest.param(1009.999, 1000, id="just-before-the-next"),
    pytest.param(999.999, 990, id="a-hair-before-is-the-previous-slot"),
    pytest.param(1037, 1030, id="late-in-a-burst-names-the-slot-it-started-after"),
])
def test_the_slot_is_the_latest_instant_at_or_before_the_elapse(at, expected):
    assert slot.latest_elapse(["*:*:0/10"], at, every(10)) == expected


def test_a_catch_up_after_days_down_names_the_latest_missed_slot():
    """Down from day 0 to day 3 + 5 h: systemd runs one catch-up, for the latest slot it missed."""
    assert slot.latest_elapse(["daily"], 3 * DAY + 5 * 3600, every(DAY, 2 * 3600)) == 3 * DAY + 2 * 3600


def test_several_lines_give_the_latest_of_all_in_one_call_when_on_time():
    calls = []

    def two(lines, base, n):
        calls.append(list(lines))
        return [every(300 if line == "a" else 7 * DAY, 999 if line == "b" else 0)([line], base, n)[0]
                for line in lines]

    assert slot.latest_elapse(["a", "b"], 1000, two) == 999
    assert slot.latest_elapse(["a", "b"], 7 * DAY + 999.5, two) == 7 * DAY + 999
    assert calls == [["a", "b"]] * 2, "one call each: the first window holds the slot of a run on time"


def test_a_dense_calendar_walks_forward_through_the_window():
    calls = []

    def analyze(lines, base, iterations):
        calls.append(base)
        return every(1)(lines, base, iterations)

    assert slot.latest_elapse(["*:*:*"], 10_000_000, analyze) == 10_000_000
    assert len(calls) == 1, "a window holds a one-second calendar's slot in the first call"


@pytest.mark.parametrize("line, at, expected", [
    pytest.param("*-*-* 02:00:00 Asia/Shanghai", SHANGHAI_2AM + 30, SHANGHAI_2AM, id="zone"),
    pytest.param("*-*-* 02:00:00 Asia/Shanghai", SHANGHAI_2AM - 1, SHANGHAI_2AM - DAY, id="zone-day-before"),
    # 2026-03-29 02:30 does not exist in Berlin (01:59:59 CET -> 03:00 CEST); systemd skips it
    pytest.param("*-*-* 02:30:00 Europe/Berlin", 1774747800 + 3600, 1774661400, id="dst-gap-skipped"),
    pytest.param("Mon *-*-* 09:00:00 UTC", 1796029200 + 7 * DAY - 1, 1796029200, id="weekly"),
])
def test_with_this_machines_systemd(line, at, expected):
    if not os.path.exists(slot.SYSTEMD_ANALYZE):
        pytest.skip("no systemd-analyze")
    assert slot.latest_elapse([line], at) == expected


def test_a_stamp_removed_under_a_run_does_not_name_the_timers_first_slot(tmp_path):
    """A push removing the job (the move's push to the old host) took the stamp before its last
    run read it; `$TRIGGER_TIMER_REALTIME_USEC`, the timer's first elapse, named a slot that had
    run long before: a double (found by the move test on a slow CI machine)."""
    env = {"TRIGGER_UNIT": "deployer-tick.timer", "TRIGGER_TIMER_REALTIME_USEC": "1796531205000000"}
    slept = []
    elapsed = slot.elapsed_at("tick", env, str(tmp_path), started=lambda: 1796531215.02, persistent=True,
                              sleep=slept.append)
    assert elapsed == pytest.approx(1796531215.02 + slot.START_MARGIN, abs=1e-3)
    assert sum(slept) == pytest.approx(slot.STAMP_WAIT)
    # an @reboot timer (OnBootSec=, no Persistent=) has no stamp: the variable is its elapse
    assert slot.elapsed_at("tick", env, str(tmp_path), started=lambda: 1796531215.02) == \
        pytest.approx(1796531205.0, abs=1e-3)


def test_a_stamp_a_restamp_writes_back_is_waited_for(tmp_path):
    """A push changing the job removes the stamp (`systemctl clean`) and writes it again."""
    stamp = tmp_path / "stamp-deployer-tick.timer"
    env = {"TRIGGER_UNIT": "deployer-tick.timer", "TRIGGER_TIMER_REALTIME_USEC": "1796531205000000"}

    def restamped(seconds):
        stamp.touch()
        os.utime(stamp, (1796531210.4, 1796531210.4))

    assert slot.elapsed_at("tick", env, str(tmp_path), started=lambda: 1796531215.02, persistent=True,
                           sleep=restamped) == pytest.approx(1796531210.4, abs=1e-3)


def test_the_elapse_comes_from_the_jobs_own_timer_stamp(tmp_path):
    stamp = tmp_path / "stamp-deployer-settle.timer"
    stamp.touch()
    os.utime(stamp, (1796531230.0019, 1796531230.0019))
    env = {"TRIGGER_UNIT": "deployer-settle.timer", "TRIGGER_TIMER_REALTIME_USEC": "1796531202087600"}
    assert slot.elapsed_at("settle", env, str(tmp_path)) == pytest.approx(1796531230.0019, abs=1e-3)
    # systemd 252 keeps the first elapse in the variable: it counts only where there is no stamp
    assert slot.elapsed_at("other", {**env, "TRIGGER_UNIT": "deployer-other.timer"}, str(tmp_path)) == \
        pytest.approx(1796531202.0876, abs=1e-3)
    assert slot.elapsed_at("settle", {**env, "TRIGGER_UNIT": "deployer-evil.timer"}, str(tmp_path)) is None
    assert slot.elapsed_at("settle", {}, str(tmp_path)) is None


def test_a_run_no_timer_started_is_manual_unless_it_backfills(tmp_path, monkeypatch):
    monkeypatch.setattr(slot, "BACKFILL_DIR", str(tmp_path))
    manual = slot.slot_of_run("settle", ("x",), "abc", env={})
    assert (manual.at, manual.how, manual.key("settle")) == (None, "manual", "settle/manual-abc")
    (tmp_path / "deployer-settle.json").write_text(json.dumps({"slot": SHANGHAI_2AM}))
    backfill = slot.slot_of_run("settle", ("x",), "abc", env={})
    assert (backfill.how, backfill.key("settle")) == ("backfill", "settle/2026-12-01T18:00:00Z")
    (tmp_path / "deployer-settle.json").write_text(json.dumps({"slot": SHANGHAI_2AM, "until": 1.0}))
    assert slot.slot_of_run("settle", ("x",), "abc", env={}).how == "manual", "an expired resume is no backfill"


def test_a_timer_elapse_merged_into_a_manual_run_gets_its_slot(tmp_path, monkeypatch):
    """The agent saw the timer elapse while a manual run held the unit (issue 22 item 6): the run
    it starts after names the slot of that elapse, as the timer's own run would have."""
    if not os.path.exists(slot.SYSTEMD_ANALYZE):
        pytest.skip("no systemd-analyze")
    monkeypatch.setattr(slot, "BACKFILL_DIR", str(tmp_path))
    monkeypatch.setattr(slot, "TIMER_STAMPS", str(tmp_path))
    (tmp_path / "deployer-settle.json").write_text(json.dumps({"elapsed": 1796541460.4, "until": 4e9,
                                                               "stamp": None}))
    merged = slot.slot_of_run("settle", ("*-*-* *:*:00/10",), "abc", env={})
    assert (merged.how, merged.name) == ("timer", "2026-12-06T07:17:40Z")
    (tmp_path / "deployer-settle.json").write_text(json.dumps({"elapsed": 1796541460.4, "until": 1.0,
                                                               "stamp": None}))
    assert slot.slot_of_run("settle", ("*-*-* *:*:00/10",), "abc", env={}).how == "manual"


def stamped(tmp_path, monkeypatch, job: str, at: float):
    """The host's state in tmp_path: the job's timer last elapsed at `at` (its Persistent= stamp)."""
    monkeypatch.setattr(slot, "BACKFILL_DIR", str(tmp_path))
    monkeypatch.setattr(slot, "TIMER_STAMPS", str(tmp_path))
    stamp = tmp_path / f"stamp-deployer-{job}.timer"
    stamp.touch()
    os.utime(stamp, (at, at))
    return stamp


def every_10_s(lines, base, iterations):
    """systemd-analyze for a calendar of every 10 s: the first elapse after `base`."""
    return [[base - base % 10 + 10]]


def test_a_manual_run_is_manual_though_systemd_left_the_timer_in_its_environment(tmp_path, monkeypatch):
    """systemd 252: a `systemctl start` after a timer run still has $TRIGGER_UNIT set to the
    timer. The agent's request says manual; a newer elapse since it asked (the stamp moved) means
    the timer started this run, and its slot wins."""
    stamp = stamped(tmp_path, monkeypatch, "settle", 1796541460.0)
    env = {"TRIGGER_UNIT": "deployer-settle.timer", "TRIGGER_TIMER_REALTIME_USEC": "1796541000000000"}
    asked = {"manual": True, "stamp": stamp.stat().st_mtime_ns}
    (tmp_path / "deployer-settle.json").write_text(json.dumps(asked))
    assert slot.slot_of_run("settle", ("x",), "abc", env=env, analyze=every_10_s).how == "manual"
    os.utime(stamp, (1796541470.2, 1796541470.2))  # the timer elapsed after the agent asked
    assert slot.slot_of_run("settle", ("x",), "abc", env=env, analyze=every_10_s).how == "timer"
    # An older agent's request (no stamp) counts only where no timer is named.
    (tmp_path / "deployer-settle.json").write_text(json.dumps({"slot": SHANGHAI_2AM}))
    assert slot.slot_of_run("settle", ("x",), "abc", env=env, analyze=every_10_s).how == "timer"
    assert slot.slot_of_run("settle", ("x",), "abc", env={}, analyze=every_10_s).how == "backfill"


def test_a_request_made_while_a_run_went_is_not_that_runs(tmp_path, monkeypatch):
    """`deployer run` while the timer's run goes: its start joins that run, and the request is for
    a run the start makes if that one ends first. The timer's run, started within START_MARGIN
    of the request and bound to the same stamp, took it for its own and named itself manual: the
    timer's slot never ran under its key (a helper's review). The agent names the run going."""
    stamp = stamped(tmp_path, monkeypatch, "tick", 1796615770.0)
    env = {"TRIGGER_UNIT": "deployer-tick.timer", "TRIGGER_TIMER_REALTIME_USEC": "1796615700000000"}
    asked = {"manual": True, "stamp": stamp.stat().st_mtime_ns, "not_for": "timers-run"}
    (tmp_path / "deployer-tick.json").write_text(json.dumps(asked))
    timers = slot.slot_of_run("tick", ("x",), "timers-run", env=env, analyze=every_10_s, started=lambda: 1796615770.02)
    assert (timers.how, timers.name) == ("timer", "2026-12-07T03:56:10Z")
    # the run the agent's start made after that one ended is the manual run asked for
    assert slot.slot_of_run("tick", ("x",), "next-run", env=env, analyze=every_10_s, started=lambda: 1796615775.0).how \
        == "manual"


def test_a_manual_run_stays_manual_when_the_timer_elapses_after_its_process_started(tmp_path, monkeypatch):
    """Found on a loaded host: the agent asked for a manual run, PID 1 started it at :47.8, its
    trigger read the request at :50.6, and the timer had elapsed at :50.0 into the active unit
    (merged). The moved stamp was taken for "the timer started this run", capped at the process's
    start: the run named the slot :40, the one the timer's previous run had named (one key, two
    runs: an idempotent service would answer the manual run with the old run's stored result)."""
    stamp = stamped(tmp_path, monkeypatch, "tick", 1796615760.4)  # the timer's previous run (here: 03:56:00)
    env = {"TRIGGER_UNIT": "deployer-tick.timer", "TRIGGER_TIMER_REALTIME_USEC": "1796615760400000"}
    (tmp_path / "deployer-tick.json").write_text(json.dumps({"manual": True, "stamp": stamp.stat().st_mtime_ns}))
    os.utime(stamp, (1796615770.05, 1796615770.05))  # elapsed while the manual run's unit was active
    manual = slot.slot_of_run("tick", ("x",), "e329", env=env, analyze=every_10_s, started=lambda: 1796615767.78)
    assert (manual.how, manual.key("tick")) == ("manual", "tick/manual-e329")
    # The same elapse before the process started: the timer started this run, the ask merged into it.
    timer = slot.slot_of_run("tick", ("x",), "e329", env=env, analyze=every_10_s, started=lambda: 1796615770.6)
    assert (timer.how, timer.name) == ("timer", "2026-12-07T03:56:10Z")


def test_a_timer_run_that_began_just_before_the_agent_asked_keeps_the_timers_slot(tmp_path, monkeypatch):
    """The agent found the unit idle, the timer elapsed and PID 1 started its run, and only then
    did the agent write its request, bound to the stamp of that very elapse; the agent's start
    merged into the timer's run. Its trigger, slow to start on a loaded host, read the request
    after it was written: the stamp had not moved since, and the timer's slot became a manual run
    (the slot ran, but was recorded nowhere). A process older than the request is not its start;
    both times on CLOCK_BOOTTIME (/proc's clock for a start), which a wall-clock step does not move."""
    stamp = stamped(tmp_path, monkeypatch, "tick", 1796615770.05)  # the elapse that started the run
    env = {"TRIGGER_UNIT": "deployer-tick.timer", "TRIGGER_TIMER_REALTIME_USEC": "1796615770050000"}
    asked = {"manual": True, "stamp": stamp.stat().st_mtime_ns, "asked_boot": 5000.30}

    def run(name, born):
        return slot.slot_of_run("tick", ("x",), name, env=env, analyze=every_10_s, started=lambda: 1796615770.2,
                                since_boot=lambda: born)

    (tmp_path / "deployer-tick.json").write_text(json.dumps(asked))
    timer = run("e330", born=5000.19)  # began 0.11 s before the request: more than the margin
    assert (timer.how, timer.name) == ("timer", "2026-12-07T03:56:10Z")
    # The agent's own start: its process begins after the request (or within /proc's tick of it).
    assert run("e331", born=5000.31).key("tick") == "tick/manual-e331"
    assert run("e332", born=5000.21).key("tick") == "tick/manual-e332"
    # A backfill request is read the same way: its slot for its own start only.
    (tmp_path / "deployer-tick.json").write_text(json.dumps(dict(asked, manual=None, slot=SHANGHAI_2AM)))
    assert run("e333", born=5000.31).how == "backfill"
    assert run("e334", born=5000.0).how == "timer"
    # An older agent's request (no "asked_boot") is read as before.
    (tmp_path / "deployer-tick.json").write_text(json.dumps({"manual": True, "stamp": stamp.stat().st_mtime_ns}))
    assert run("e335", born=1.0).how == "manual"


def test_a_process_knows_when_it_was_started_on_the_boot_clock_and_the_wall_clock():
    born, wall = slot.process_started_since_boot(), slot.process_started()
    assert 0 < born <= time.clock_gettime(time.CLOCK_BOOTTIME)
    assert abs((time.time() - wall) - (time.clock_gettime(time.CLOCK_BOOTTIME) - born)) < 0.05


def test_a_cronjob_names_its_slot_in_the_jobs_name():
    assert slot.cronjob_slot("settle-29942240") == 29942240 * 60
    assert slot.cronjob_slot("settle-manual-001") is None
    assert slot.cronjob_slot("") is None
    run = slot.slot_of_run("settle", (), "pod", env={slot.SCHEDULED_JOB_ENV: "settle-29942240"})
    assert (run.how, run.name) == ("cronjob", "2026-12-06T05:20:00Z")


def test_an_unreadable_calendar_falls_back_to_the_elapse_second(tmp_path):
    stamp = tmp_path / "stamp-deployer-x.timer"
    stamp.touch()
    os.utime(stamp, (1000.7, 1000.7))

    def broken(lines, base, iterations):
        raise ValueError("no systemd-analyze")

    lines = []
    env = {"TRIGGER_UNIT": "deployer-x.timer"}
    monkey = slot.elapsed_at
    try:
        slot.elapsed_at = lambda job, env, **kw: monkey(job, env, str(tmp_path), **kw)
        found = slot.slot_of_run("x", ("*:*:*",), "r", env=env, analyze=broken, log=lines.append)
    finally:
        slot.elapsed_at = monkey
    assert (found.at, found.how) == (1000, "clock") and "cannot read the calendar" in lines[0]


def test_an_elapse_after_this_process_started_is_not_the_one_that_started_it(tmp_path):
    """The stamp moved on (a later elapse merged into this run) before a slow trigger read it."""
    stamp = tmp_path / "stamp-deployer-every2.timer"
    stamp.touch()
    os.utime(stamp, (1796568620.0004, 1796568620.0004))  # :20, read at :21
    env = {"TRIGGER_UNIT": "deployer-every2.timer"}
    assert slot.elapsed_at("every2", env, str(tmp_path), started=lambda: 1796568618.15) == \
        pytest.approx(1796568618.15 + slot.START_MARGIN, abs=1e-3)  # PID 1 started the run at :18.14
    assert slot.elapsed_at("every2", env, str(tmp_path), started=lambda: 1796568621.3) == \
        pytest.approx(1796568620.0004, abs=1e-3)  # the stamp said when the elapse came, before this process
    assert slot.elapsed_at("every2", env, str(tmp_path), started=lambda: None) == \
        pytest.approx(1796568620.0004, abs=1e-3)


def test_a_start_that_reads_a_tick_before_its_own_elapse_still_names_that_elapses_slot(tmp_path):
    """/proc truncates the start to 10 ms: a run started 5 ms after the :35 elapse read as
    34.998 and named :34, which the run before it had named (a slot called twice)."""
    stamp = tmp_path / "stamp-deployer-one.timer"
    stamp.touch()
    os.utime(stamp, (1796570315.0001, 1796570315.0001))
    env = {"TRIGGER_UNIT": "deployer-one.timer"}
    elapsed = slot.elapsed_at("one", env, str(tmp_path), started=lambda: 1796570314.998)
    assert elapsed == pytest.approx(1796570315.0001, abs=1e-3)
    assert slot.latest_elapse(["*:*:*"], elapsed, lambda lines, base, n: [[base + i for i in range(1, n + 1)]]) == \
        1796570315


def test_a_process_knows_when_it_was_started_on_the_wall_clock():
    import sys
    import time

    before = time.time()
    out = subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5); from deployer.host import slot; "
                          "print(slot.process_started())"], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    after = time.time()
    started = float(out)
    assert before - 0.05 <= started <= after - 1.5  # its start, not when it asked
    assert slot.process_started("/nonexistent/stat") is None
