"""Issue 12, case by case: every case the issue lists, checked by real systemd where it is
about run times (cronsim for cron, tests/quartz_reference.py for Quartz)."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from deployer.errors import ScheduleError
from deployer.schedule import Calendar, schedule_kind, split_zone_prefix, to_calendar
from tests.quartz_reference import QuartzReference
from tests.test_schedule import cron_runs, needs_systemd, systemd_runs

UTC = timezone.utc


def lines_for(expression: str, zone: str) -> list[str]:
    return list(to_calendar(expression, (), zone).lines)


# --- 1. DST in zones with unusual transitions (cron: Debian semantics, cronsim) -------------

@needs_systemd
@pytest.mark.parametrize("cron, zone, base, must_include", [
    pytest.param("0 0 * * *", "Asia/Hebron", datetime(2022, 3, 24, tzinfo=UTC), datetime(2022, 3, 26, 22, tzinfo=UTC),
                 id="hebron-midnight-swallowed-2022-03-26"),
    pytest.param("30 2 * * *", "Asia/Hebron", datetime(2027, 3, 24, tzinfo=UTC), None, id="hebron-0230-2027-03-27"),
    pytest.param("*/30 * * * *", "Asia/Hebron", datetime(2022, 10, 27, tzinfo=UTC), None, id="hebron-half-hourly-second-pass"),
    pytest.param("*/30 * * * *", "Asia/Gaza", datetime(2022, 10, 27, tzinfo=UTC), None, id="gaza-half-hourly-second-pass"),
    pytest.param("0 0 * * *", "Asia/Gaza", datetime(2022, 3, 24, tzinfo=UTC), None, id="gaza-midnight"),
    pytest.param("30 23 * * *", "America/Nuuk", datetime(2024, 3, 28, tzinfo=UTC), None, id="nuuk-saturday-2300"),
    pytest.param("*/30 * * * *", "America/Nuuk", datetime(2024, 10, 24, tzinfo=UTC), None, id="nuuk-second-pass"),
    pytest.param("30 0 * * *", "America/Santiago", datetime(2022, 9, 8, tzinfo=UTC), None, id="santiago-24h-spring"),
    pytest.param("*/30 * * * *", "America/Santiago", datetime(2023, 4, 1, tzinfo=UTC), None, id="santiago-24h-fall"),
    pytest.param("*/20 * * * *", "Australia/Adelaide", datetime(2024, 4, 5, tzinfo=UTC), None, id="adelaide-half-hour"),
])
def test_cron_around_unusual_transitions_matches_cronsim(cron, zone, base, must_include):
    lines = lines_for(cron, zone)
    expected = cron_runs(cron, zone, base, 80)
    assert systemd_runs(lines, base, 80) == expected, lines
    if must_include:
        assert must_include in expected


# --- 1b. A gap that starts off the whole hour (found by the walk) ----------------------------

def _analyze_error(line: str, base: datetime) -> str:
    import subprocess

    result = subprocess.run(["systemd-analyze", "calendar", f"--base-time=@{int(base.timestamp())}", line],
                            capture_output=True, text=True, env={"TZ": "UTC", "LC_ALL": "C"})
    return result.stderr if result.returncode else ""


@needs_systemd
def test_systemd_cannot_step_over_a_gap_that_starts_off_the_hour():
    """The reason for the split lines below: systemd 252 finds no next elapse for a time in
    Pacific/Chatham's gap (02:45 -> 03:45, every September), so a timer drops the value."""
    assert "Resource deadlock avoided" in _analyze_error(
        "*-*-* 02:45:00 Pacific/Chatham", datetime(2027, 9, 25, tzinfo=UTC))
    assert "Resource deadlock avoided" in _analyze_error(
        "*-*-* 00:31:00 Asia/Hebron", datetime(2011, 3, 31, tzinfo=UTC))


@needs_systemd
@pytest.mark.parametrize("expression, zone, base", [
    pytest.param("45 2 * * *", "Pacific/Chatham", datetime(2027, 9, 25, tzinfo=UTC), id="chatham-0245-2027"),
    pytest.param("50 2 * * *", "Pacific/Chatham", datetime(2027, 9, 24, 12, tzinfo=UTC), id="chatham-0250-2027"),
    pytest.param("*/15 2-3 * * *", "Pacific/Chatham", datetime(2027, 9, 25, tzinfo=UTC), id="chatham-0345-after-gap"),
    pytest.param("45 2 * * 6,0", "Pacific/Chatham", datetime(2036, 9, 20, tzinfo=UTC), id="chatham-weekends-2036"),
    pytest.param("0 45 2 * * ?", "Pacific/Chatham", datetime(2027, 9, 25, tzinfo=UTC), id="chatham-quartz-0245"),
    pytest.param("0 0/15 2-3 * * ?", "Pacific/Chatham", datetime(2027, 9, 25, tzinfo=UTC), id="chatham-quartz-wild"),
    pytest.param("31 0 * * *", "Asia/Hebron", datetime(2011, 3, 31, tzinfo=UTC), id="hebron-0031-2011"),
    pytest.param("0 31 0 * * ?", "Asia/Hebron", datetime(2011, 3, 31, tzinfo=UTC), id="hebron-quartz-0031-2011"),
    pytest.param("*/10 0 * * *", "America/St_Johns", datetime(2010, 3, 13, tzinfo=UTC), id="st-johns-0001-2010"),
    # not an off-the-hour gap: Almaty fell back at 00:00 on 1 March 2024, so the second pass
    # is on 29 February, a date no yearly window holds (this crashed the conversion)
    pytest.param("0 0/15 23 * * ?", "Asia/Almaty", datetime(2024, 2, 29, tzinfo=UTC), id="almaty-quartz-29-february"),
])
def test_a_gap_starting_off_the_hour_keeps_every_line_alive(expression, zone, base):
    lines = lines_for(expression, zone)
    expected = (QuartzReference(expression, zone).next_runs(base, 40) if len(expression.split()) == 6
                else cron_runs(expression, zone, base, 40))
    assert systemd_runs(lines, base, 40) == expected, lines  # systemd-analyze fails if any line does
    assert [line for line in lines if _analyze_error(line, base)] == []


@needs_systemd
def test_almaty_2024_cron_wildcard_first_pass_is_a_named_difference():
    """README: Asia/Almaty (and Qostanay) moved from +6 to +5 at 00:00 on 1 March 2024, a
    change of standard time (no DST flag on either side). systemd then reads 23:15..23:45 on
    29 February in the second pass, not the first, so cron's first pass 23:15, 23:30, 23:45
    (17:15..17:45 UTC) is missing. Past only; the conversion itself used to crash."""
    base = datetime(2024, 2, 29, tzinfo=UTC)
    lines = lines_for("*/15 23 * * *", "Asia/Almaty")
    assert lines == ["*-*-* 23:00,15,30,45:00 Asia/Almaty", "2024-02-29 18:00,15,30,45:00 UTC"]
    expected = cron_runs("*/15 23 * * *", "Asia/Almaty", base, 12)
    missing = [datetime(2024, 2, 29, 17, m, tzinfo=UTC) for m in (15, 30, 45)]
    assert systemd_runs(lines, base, 9) == [t for t in expected if t not in missing]


# --- 2. Quartz in a repeated hour: the second pass, as Quartz ------------------------------

@needs_systemd
@pytest.mark.parametrize("quartz, zone, base", [
    pytest.param("0 30 1-10 * * ?", "Europe/Riga", datetime(2021, 10, 30, tzinfo=UTC), id="riga-1-10-2021-10-31"),
    pytest.param("0 0 1 * * ?", "America/New_York", datetime(2012, 11, 3, tzinfo=UTC), id="new-york-0100-2012-11-04"),
    pytest.param("0 0/15 * * * ?", "Europe/Berlin", datetime(2024, 10, 26, 20, tzinfo=UTC), id="berlin-wildcard"),
    pytest.param("0 30 2 * * ?", "America/New_York", datetime(2012, 3, 10, tzinfo=UTC), id="new-york-gap-skipped"),
])
def test_quartz_in_a_repeated_hour_fires_in_the_second_pass(quartz, zone, base):
    lines = lines_for(quartz, zone)
    assert systemd_runs(lines, base, 30) == QuartzReference(quartz, zone).next_runs(base, 30), lines


def test_new_york_0100_on_the_fall_back_day_is_the_est_one():
    runs = QuartzReference("0 0 1 * * ?", "America/New_York").next_runs(datetime(2012, 11, 3, 12, tzinfo=UTC), 1)
    assert runs == [datetime(2012, 11, 4, 6, tzinfo=UTC)]  # 01:00 EST, not 01:00 EDT (05:00 UTC)


def test_cron_keeps_debian_semantics_in_the_repeated_hour():
    assert "Sun 2007..2099-11-01..07 06:00,20,40:00 UTC" in lines_for("*/20 * * * *", "America/New_York")
    assert lines_for("0 1 * * *", "America/New_York") == ["*-*-* 01:00:00 America/New_York"]  # first pass


# --- 3. weekday names containing W; 4. day-of-month unions -----------------------------------

@pytest.mark.parametrize("quartz, lines", [
    pytest.param("0 0 12 ? * WED", ["Wed *-*-* 12:00:00 UTC"], id="WED"),
    pytest.param("0 0 12 ? * WED-SAT,SUN", ["Wed..Sun *-*-* 12:00:00 UTC"], id="WED-SAT,SUN"),
    pytest.param("0 0 12 ? * SUN-WED", ["Mon..Wed,Sun *-*-* 12:00:00 UTC"], id="SUN-WED"),
    pytest.param("0 0 12 ? * FRI-MON", ["Mon,Fri..Sun *-*-* 12:00:00 UTC"], id="wrapping-range"),
    pytest.param("0 0 12 L-1W * ?", ["Mon..Fri *-*~02 12:00:00 UTC", "Fri *-*~03 12:00:00 UTC",
                                     "Mon *-*~01 12:00:00 UTC"], id="L-1W"),
    pytest.param("0 0 12 L-5W * ?", ["Mon..Fri *-*~06 12:00:00 UTC", "Fri *-*~07 12:00:00 UTC",
                                     "Mon *-*~05 12:00:00 UTC"], id="L-5W"),
    pytest.param("0 0 12 1,L * ?", ["*-*-01 12:00:00 UTC", "*-*~01 12:00:00 UTC"], id="1,L"),
    pytest.param("0 0 12 L-1W,L-1 * ?", ["Mon..Fri *-*~02 12:00:00 UTC", "Fri *-*~03 12:00:00 UTC",
                                         "Mon *-*~01 12:00:00 UTC", "*-*~02 12:00:00 UTC"], id="L-1W,L-1"),
    pytest.param("0 0 12 2W,16 * ?", ["*-*-16 12:00:00 UTC", "Mon..Fri *-*-02 12:00:00 UTC",
                                      "Mon *-*-03 12:00:00 UTC", "Fri *-*-01 12:00:00 UTC"], id="2W,16"),
])
def test_quartz_forms_systemd_can_express(quartz, lines):
    assert lines_for(quartz, "UTC") == lines


@needs_systemd
@pytest.mark.parametrize("dom", [pytest.param(d, id=d) for d in ("L-1W", "L-5W", "1,L", "L-1W,L-1", "2W,16")])
def test_day_of_month_unions_fire_on_quartzs_days(dom):
    """Each element's days, from the documented rule, OR-ed; systemd expands our lines."""
    from datetime import timedelta

    from tests.test_schedule import quartz_day_matches

    base = datetime(2024, 1, 1, tzinfo=UTC)
    expected, day = [], base.date()
    while len(expected) < 40:
        if any(quartz_day_matches(day, e if e.startswith("L-") and e.endswith("W") else e, "?")
               if not (e.startswith("L-") and e.endswith("W")) else _last_minus_w(day, int(e[2:-1]))
               for e in dom.split(",")):
            expected.append(datetime(day.year, day.month, day.day, 12, tzinfo=UTC))
        day += timedelta(days=1)
    assert systemd_runs(lines_for(f"0 0 12 {dom} * ?", "UTC"), base, 40) == expected


def _last_minus_w(day, back: int) -> bool:
    import calendar

    target = day.replace(day=calendar.monthrange(day.year, day.month)[1] - back)
    if target.weekday() == 5:
        target = target.replace(day=target.day - 1)
    elif target.weekday() == 6:
        target = target.replace(day=target.day + 1)
    return day == target


@pytest.mark.parametrize("quartz, part", [
    pytest.param("0 0 12 L-27W * ?", "L-27W", id="L-27W-depends-on-month-length"),
    pytest.param("0 0 12 ? * 2#1,3", "cannot be expressed", id="nth-weekday-in-a-list"),
    pytest.param("0 0 12 30W * ?", "30W", id="30W"),
])
def test_quartz_systemd_cannot_express_is_refused_naming_the_part(quartz, part):
    with pytest.raises(ScheduleError, match=re.escape(part)):
        lines_for(quartz, "UTC")


# --- 5. invalid input refused, naming the field ----------------------------------------------

@pytest.mark.parametrize("expression, message", [
    pytest.param("0/120 * * * * ?", "second field: increment 120", id="quartz-seconds-0/120"),
    pytest.param("0 0/120 * * * ?", "minute field: increment 120", id="quartz-minutes-0/120"),
    pytest.param("0 0 0/120 * * ?", "hour field: increment 120", id="quartz-hours-0/120"),
    pytest.param("0 0 0/24 * * ?", "hour field: increment 24", id="quartz-hours-0/24"),
    pytest.param("* * 30 2 *", "day-of-month field '30' never falls", id="cron-30-feb"),
    pytest.param("* * 31 4 *", "day-of-month field '31' never falls", id="cron-31-apr"),
    pytest.param("0 0 0 30 FEB ?", "day-of-month field '30' never falls", id="quartz-30-feb"),
])
def test_never_firing_or_invalid_is_refused(expression, message):
    with pytest.raises(ScheduleError, match=re.escape(message)):
        lines_for(expression, "UTC")


def test_a_leap_day_is_not_never():
    assert lines_for("0 0 29 2 *", "UTC") == ["*-02-29 00:00:00 UTC"]


# --- 6. CLI wording ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    pytest.param(["-1 * * * *"], "minute field", id="leading-dash"),
    pytest.param(["* * * *"], "5 fields", id="four-fields"),
    pytest.param(["xyz"], "5 fields", id="one-word"),
    pytest.param(["-1 * * * *", "--timezone", "Asia/Shanghai"], "minute field", id="leading-dash-with-option"),
])
def test_schedule_command_explains_cron_not_click(deployer, argv, needle):
    result = deployer("schedule", *argv, check=False)
    assert result.returncode == 1, result.stderr
    assert needle in result.stderr and "No such option" not in result.stderr
    assert result.stderr.count("\n") == 1


@needs_systemd
def test_schedule_command_options_still_work_after_the_expression(deployer):
    import json

    out = deployer("schedule", "0 9 * * *", "--timezone", "Asia/Shanghai", "--count", "2", "--json", check=True)
    assert json.loads(out.stdout)["next"][0].endswith("T09:00:00+08:00")


# --- the public decisions the renderer and the Kubernetes export read ------------------------

@pytest.mark.parametrize("expression, kind", [
    pytest.param("0 * * * *", "cron", id="cron"), pytest.param("@daily", "cron", id="macro"),
    pytest.param("CRON_TZ=UTC 0 0 * * * ?", "quartz", id="prefixed-quartz"),
    pytest.param("0 0 12 ? * WED 2030", "quartz", id="quartz-7"),
    pytest.param("@reboot", "boot", id="reboot"), pytest.param("TZ=UTC @reboot", "boot", id="prefixed-reboot"),
])
def test_schedule_kind(expression, kind):
    assert schedule_kind(expression) == kind


def test_split_zone_prefix():
    assert split_zone_prefix("CRON_TZ=Asia/Shanghai  0 9 * * *") == ("Asia/Shanghai", "0 9 * * *")
    assert split_zone_prefix(" 0 9 * * *") == (None, "0 9 * * *")


@pytest.mark.parametrize("schedule, on_calendar, kind, resolution", [
    pytest.param("0 9 * * *", (), "cron", 60, id="cron"),
    pytest.param("0 0 9 * * ?", (), "quartz", 1, id="quartz"),
    pytest.param(None, ("*:*:0/2",), "calendar", 1, id="native"),
    pytest.param("@reboot", (), "boot", 60, id="boot"),
])
def test_calendar_carries_kind_and_resolution(schedule, on_calendar, kind, resolution):
    calendar = to_calendar(schedule, on_calendar, "UTC")
    assert isinstance(calendar, Calendar) and (calendar.kind, calendar.resolution) == (kind, resolution)
