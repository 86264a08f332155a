"""cron -> OnCalendar, checked against real systemd (`systemd-analyze calendar`) and cronsim."""
from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deployer.errors import ScheduleError
from deployer.schedule import cron_to_oncalendar, to_calendar

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


@pytest.mark.parametrize("cron, lines", [
    pytest.param("0 * * * *", ["*-*-* *:00:00 UTC"], id="hourly"),
    pytest.param("*/15 9-17 * * 1-5", ["Mon..Fri *-*-* 09..17:00,15,30,45:00 UTC"], id="steps-ranges"),
    pytest.param("30 4 1,15 * 5", ["*-*-01,15 04:30:00 UTC", "Fri *-*-* 04:30:00 UTC"], id="dom-or-dow"),
    pytest.param("0 0 */10 * 1", ["Mon *-*-01,11,21,31 00:00:00 UTC"], id="star-step-dom-ands"),
    pytest.param("0 0 1-31/10 * 1", ["*-*-01,11,21,31 00:00:00 UTC", "Mon *-*-* 00:00:00 UTC"],
                 id="range-step-dom-ors"),
    pytest.param("0 12 * jan,jul sun", ["Sun *-01,07-* 12:00:00 UTC"], id="names"),
    pytest.param("0 0 * * 7", ["Sun *-*-* 00:00:00 UTC"], id="seven-is-sunday"),
    pytest.param("@weekly", ["Sun *-*-* 00:00:00 UTC"], id="cron-weekly-is-sunday"),
    pytest.param("@monthly", ["*-*-01 00:00:00 UTC"], id="monthly"),
    pytest.param("0 9 * * 6,0,1", ["Mon,Sat,Sun *-*-* 09:00:00 UTC"], id="weekend-wraps"),
    # Debian (Vixie) cron: a one-value range keeps one value whatever the step. cronsim
    # reads `a-a/s` like cronie's `a/s` (a to max), so this case is pinned here, by hand.
    pytest.param("0-0/5 * * * *", ["*-*-* *:00:00 UTC"], id="degenerate-range-step"),
])
def test_known_conversions(cron, lines):
    assert list(cron_to_oncalendar(cron, "UTC")) == lines


@pytest.mark.parametrize("cron, zone, lines", [
    pytest.param("30 2 * * *", "America/New_York",
                 ["*-*-* 02:30:00 America/New_York", "Sun 2000..2006-04-01..07 07:00:00 UTC",
                  "Sun 2007..2099-03-08..14 07:00:00 UTC"], id="us-gap"),
    pytest.param("0 2 * * 1-5", "America/New_York", ["Mon..Fri *-*-* 02:00:00 America/New_York"],
                 id="gap-on-a-day-it-does-not-run"),
    pytest.param("15 2 * * *", "Europe/Berlin",
                 ["*-*-* 02:15:00 Europe/Berlin", "Sun 2000..2099-03-25..31 01:00:00 UTC"], id="eu-last-sunday"),
    pytest.param("*/30 2 * * *", "Europe/Berlin",
                 ["*-*-* 02:00,30:00 Europe/Berlin", "Sun 2000..2099-10-25..31 01:00,30:00 UTC"],
                 id="wildcard-minute-no-catch-up-but-a-second-pass-in-autumn"),
    pytest.param("30 1 * * *", "America/New_York", ["*-*-* 01:30:00 America/New_York"], id="overlap-needs-nothing"),
    pytest.param("30 2 * * *", "Asia/Shanghai", ["*-*-* 02:30:00 Asia/Shanghai"], id="no-dst"),
])
def test_dst_catch_up_lines(cron, zone, lines):
    assert list(cron_to_oncalendar(cron, zone)) == lines


def test_a_24_00_transition_is_the_next_days_midnight():
    """Chile springs forward at "24:00" on Saturday: the catch-up runs at Sunday 00:00 local
    (04:00 UTC), on the Sunday tzdata says, rule or not (2022 moved a week)."""
    lines = cron_to_oncalendar("30 0 * * *", "America/Santiago")
    assert "Sun 2023..2096-09-02..08 04:00:00 UTC" in lines and "2022-09-11 04:00:00 UTC" in lines


def test_dublin_is_written_as_london_which_has_its_clock():
    """systemd 252 skips runs in Europe/Dublin (negative DST); London is the same clock."""
    from datetime import timedelta

    dublin, london = ZoneInfo("Europe/Dublin"), ZoneInfo("Europe/London")
    moment = datetime(1996, 1, 1, tzinfo=timezone.utc)
    while moment < datetime(2100, 1, 1, tzinfo=timezone.utc):
        assert moment.astimezone(dublin).utcoffset() == moment.astimezone(london).utcoffset(), moment
        moment += timedelta(hours=6)
    assert cron_to_oncalendar("0 0 26 3 *", "Europe/Dublin") == ("*-03-26 00:00:00 Europe/London",)


@pytest.mark.parametrize("cron, message", [
    ("* * * *", "expected 5 fields"),
    ("60 * * * *", "minute field: 60 is outside 0-59"),
    ("5/15 * * * *", "needs a range or '*' before '/'"),
    ("* * * * mon-sun-tue", "cannot parse"),
    ("*/0 * * * *", "step 0"),
    ("0 0 5-1 * *", "runs backwards"),
    ("0 0 * foo *", "'foo' is not a number or name"),
])
def test_invalid_cron_is_one_clear_line(cron, message):
    with pytest.raises(ScheduleError, match=re.escape(message)):
        cron_to_oncalendar(cron)


@pytest.mark.parametrize("schedule, message", [
    pytest.param("@weekdays", "unknown macro @weekdays (did you mean @weekly?)", id="close"),
    pytest.param("CRON_TZ=UTC @hourlyy", "unknown macro @hourlyy (did you mean @hourly?)", id="with-zone"),
    pytest.param("@often", "unknown macro @often (known: @yearly, @annually, @monthly, @weekly, @daily, @midnight, "
                 "@hourly, @reboot)", id="none-close"),
])
def test_an_unknown_macro_is_named_with_the_closest_ones(schedule, message):
    """Issue 24 item 8: `@weekdays` said "expected 5 fields"."""
    with pytest.raises(ScheduleError) as caught:
        to_calendar(schedule, (), "UTC")
    assert str(caught.value) == message


# --- property: our lines, expanded by systemd itself, give exactly cron's run times --------

def _element(low: int, high: int, names=None):
    number = st.integers(low, high)
    pair = st.tuples(number, number).map(sorted)
    wide_pair = pair.filter(lambda p: p[0] < p[1])  # see degenerate-range-step above
    return st.one_of(
        number.map(str),
        pair.map(lambda p: f"{p[0]}-{p[1]}"),
        st.tuples(wide_pair, st.integers(1, max(1, (high - low) // 2))).map(
            lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
        st.integers(1, max(1, (high - low) // 2)).map(lambda s: f"*/{s}"),
        *([st.sampled_from(names)] if names else []),
    )


def _field(low, high, names=None, star_weight=3):
    listed = st.lists(_element(low, high, names), min_size=1, max_size=3).map(",".join)
    return st.one_of(*([st.just("*")] * star_weight), listed)


cron_expressions = st.tuples(
    _field(0, 59, star_weight=1), _field(0, 23, star_weight=1), _field(1, 31),
    _field(1, 12, ["jan", "mar", "jun", "dec"]), _field(0, 7, ["mon", "fri", "sun"]),
).map(" ".join)

ZONES = ["UTC", "Asia/Shanghai"]
DST_ZONES = ["America/New_York", "Europe/Berlin", "Australia/Sydney", "Europe/Dublin", "Pacific/Auckland",
             "America/Santiago"]
ITERATIONS = 12


def systemd_runs(lines: list[str], base: datetime, count: int) -> list[datetime]:
    """The first `count` elapses of the union of `lines`, as systemd computes them."""
    result = subprocess.run(
        ["systemd-analyze", "calendar", f"--iterations={count}",
         f"--base-time={base.strftime('%Y-%m-%d %H:%M:%S')} UTC", *lines],
        capture_output=True, text=True, env={"TZ": "UTC", "LC_ALL": "C"}, check=True)
    found = re.findall(r"(?:Next elapse|Iter\. #\d+): \w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", result.stdout)
    times = sorted({datetime.strptime(f, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc) for f in found})
    return times[:count]


def cron_runs(expression: str, zone: str, base: datetime, count: int) -> list[datetime]:
    """Debian cron's runs after `base` (UTC), as instants.

    Fixed-time jobs: cronsim, which models Debian's catch-up after a forward jump (its
    fix-up mode works on the naive wall clock). Wildcard jobs (minute or hour field starting
    with '*': cron's MIN_STAR/HR_STAR): the wall-clock minutes cronsim matches without a zone,
    placed on the zone's clock by Debian's own rule (cron 3.0pl1-162, bookworm, cron.c main loop):

        case 2: ... /* run wildcard jobs for current minute */
                find_jobs(timeRunning, &database, TRUE, FALSE);
        case 0: ... DST ending just run the wildcard jobs ...
                find_jobs(timeRunning, &database, TRUE, FALSE);

    where timeRunning is the new local wall minute (set_time: `clockTime = (StartTime +
    GMToff) / SECONDS_PER_MINUTE`, find_jobs reads it with gmtime()). So a wildcard job runs
    at every wall minute that exists, twice in a repeated one, and never for a wall minute a
    jump swallowed. cronsim with a zone gets this wrong when a jump swallows midnight
    (America/Santiago): it lands on the imaginary 00:00 (the instant of 01:00) and its next
    step skips the real 01:00, or, for `* 1 ...`, the whole 01:xx hour; and it counted 00:00
    for `* 0 * * 0`, which cron never runs (found by the property test)."""
    tz = ZoneInfo(zone)
    parts = expression.split()
    if not (parts[0].startswith("*") or parts[1].startswith("*")):
        # cronsim reads the wall clock and ignores `fold`: from a base in the second pass through
        # a repeated hour it gives the first pass's times, before the base. Those ran already.
        later = (moment.astimezone(timezone.utc) for moment in CronSim(expression, base.astimezone(tz)))
        return [moment for _, moment in zip(range(count), (m for m in later if m > base))]
    # A clock change moves a wall time by at most 2 hours from its instant (2000-2099), so
    # start 3 hours early on the wall (a second pass after `base`) and stop 3 hours past.
    margin = timedelta(hours=3)
    start = base.astimezone(tz).replace(tzinfo=None) - margin
    runs: set[datetime] = set()
    for wall in CronSim(expression, start):
        if len(runs) >= count and wall > sorted(runs)[count - 1].astimezone(tz).replace(tzinfo=None) + margin:
            break
        for fold in (0, 1):  # a repeated wall minute: both passes; elsewhere one instant
            moment = wall.replace(tzinfo=tz, fold=fold).astimezone(timezone.utc)
            if moment.astimezone(tz).replace(tzinfo=None) == wall and moment > base:
                runs.add(moment)  # (a wall minute swallowed by a jump never reads back: no run)
    return sorted(runs)[:count]


def near_dst_changes():
    """Base times a few days before a DST change (either way), where the traps are."""
    return st.tuples(st.integers(2024, 2031), st.sampled_from([(3, 5), (3, 24), (10, 1), (10, 22), (11, 1), (4, 1), (9, 1)]),
                     st.integers(0, 6 * 24)).map(lambda t: datetime(t[0], *t[1]) + timedelta(hours=t[2]))


fixed_time_crons = st.tuples(
    st.lists(st.integers(0, 59), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
    st.one_of(st.integers(0, 4).map(str), st.tuples(st.integers(0, 3), st.integers(1, 4)).map(
        lambda t: f"{t[0]}-{t[0] + t[1]}")),
    _field(1, 31), _field(1, 12, ["mar", "oct"]), _field(0, 7, ["sun", "mon"]),
).map(" ".join)


@needs_systemd
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=st.one_of(cron_expressions, fixed_time_crons), zone=st.sampled_from(DST_ZONES),
       base=near_dst_changes())
@example(expression="* 0 * * 0", zone="America/Santiago", base=datetime(2024, 9, 1, 5, 0))  # a gap at midnight
# The day starts at 01:00 (midnight swallowed): cron runs wildcard jobs at the new wall minute,
# 01:00; cronsim made it an imaginary 00:00 and then skipped 01:00 (or the whole 01:xx hour).
@example(expression="* * */2 * */2", zone="America/Santiago", base=datetime(2025, 9, 1, 4, 0))
@example(expression="* 1 7 9 *", zone="America/Santiago", base=datetime(2025, 9, 1, 4, 0))
# From 2026-10-25 01:00 UTC, the instant London and Dublin fall back (found by the property test):
# cron waits for the next day; systemd elapses 01:01 again, in the second pass.
@example(expression="1 1 * * *", zone="Europe/Dublin", base=datetime(2026, 10, 25, 1, 0))
def test_across_dst_changes_systemd_runs_exactly_when_debian_cron_would(expression, zone, base):
    """cronsim models Debian cron's DST rules: a fixed time swallowed by a forward jump runs
    right after it, a repeated one runs once, wildcard jobs follow the wall clock. One thing
    systemd does otherwise, and it is expected here: from a base inside the second pass through
    a repeated hour, the fixed times still ahead in that hour elapse in the second pass too."""
    base = base.replace(tzinfo=timezone.utc)
    lines = list(cron_to_oncalendar(expression, zone))
    expected = cron_runs(expression, zone, base, ITERATIONS)
    expected = sorted(set(expected) | set(second_pass_rest(expression, zone, base)))[:ITERATIONS]
    assert systemd_runs(lines, base, ITERATIONS) == expected, (expression, zone, lines)


def second_pass_rest(expression: str, zone: str, base: datetime) -> list[datetime]:
    """A fixed-time job's times later in the repeated hour than `base`, in their second pass,
    when `base` itself is in the second pass: systemd resolves a wall time from its base's side
    of the change. A timer meets this only when it starts, without a stamp, inside that hour:
    then such a time runs once in the second pass, where cron would wait for the next day."""
    tz = ZoneInfo(zone)
    parts = expression.split()
    here = base.astimezone(tz)
    if parts[0].startswith("*") or parts[1].startswith("*") or here.fold == 0:
        return []
    found = []
    for wall in CronSim(expression, here.replace(tzinfo=None)):
        first, second = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
        if first.utcoffset() == second.utcoffset():
            break  # past the repeated hour
        if second.astimezone(timezone.utc) > base:
            found.append(second.astimezone(timezone.utc))
    return found


def systemd_expands_our_lines_to_exactly_crons_run_times(examples: int):
    """The property, as a test of `examples` examples: 100 in the suite an engineer runs, 1,000
    in the slow run (tests/test_schedule_walk.py; CI runs both). Each example is a
    systemd-analyze call: 1,000 of them took 82 s of `make test`."""
    @needs_systemd
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(expression=cron_expressions, zone=st.sampled_from(ZONES),
           base=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31)))
    def test(expression, zone, base):
        check_systemd_expands_our_lines_to_exactly_crons_run_times(expression, zone, base)

    return test


def check_systemd_expands_our_lines_to_exactly_crons_run_times(expression, zone, base):
    base = base.replace(second=0, microsecond=0, tzinfo=timezone.utc)
    lines = list(cron_to_oncalendar(expression, zone))
    # Both tools start strictly after `base`.
    assert systemd_runs(lines, base, ITERATIONS) == cron_runs(expression, zone, base, ITERATIONS), \
        (expression, zone, lines)


test_systemd_expands_our_lines_to_exactly_crons_run_times = systemd_expands_our_lines_to_exactly_crons_run_times(100)


# --- Quartz ---------------------------------------------------------------------------------

@pytest.mark.parametrize("quartz, lines", [
    pytest.param("0 0/15 9-17 ? * MON-FRI", ["Mon..Fri *-*-* 09..17:00,15,30,45:00 UTC"], id="steps"),
    pytest.param("30 0 12 L * ?", ["*-*~01 12:00:30 UTC"], id="last-day"),
    pytest.param("0 0 12 L-2 * ?", ["*-*~03 12:00:00 UTC"], id="last-minus"),
    pytest.param("0 0 12 ? * 6L", ["Fri *-*~07/1 12:00:00 UTC"], id="last-friday"),
    pytest.param("0 0 12 ? * 6#3", ["Fri *-*-15..21 12:00:00 UTC"], id="third-friday"),
    pytest.param("0 0 12 ? * 1", ["Sun *-*-* 12:00:00 UTC"], id="quartz-1-is-sunday"),
    pytest.param("0 0 8 1 1 ? 2027-2029", ["2027..2029-01-01 08:00:00 UTC"], id="years"),
])
def test_quartz_conversions(quartz, lines):
    assert list(cron_to_oncalendar_any(quartz)) == lines


def cron_to_oncalendar_any(expression: str, zone: str = "UTC"):
    from deployer.schedule import to_calendar

    return to_calendar(expression, (), zone).lines


@pytest.mark.parametrize("quartz, part", [
    ("0 0 12 31W * ?", "31W"), ("0 0 12 28W * ?", "28W"), ("0 0 12 1,15 * 2", "exactly one"), ("0 0 12 ? * 6#6", "#6"),
    ("0 0 12 ? * 2L,3", "cannot be expressed"), ("0 0 12 * * ? 2030 x", "got 8"),
])
def test_quartz_that_systemd_cannot_express_is_refused_naming_the_part(quartz, part):
    with pytest.raises(ScheduleError, match=re.escape(part)):
        cron_to_oncalendar_any(quartz)


def quartz_day_matches(day, dom: str, dow: str) -> bool:
    """An independent oracle for Quartz's day rules, straight from its documentation."""
    import calendar as cal

    last = cal.monthrange(day.year, day.month)[1]
    weekday = (day.weekday() + 1) % 7 + 1  # Quartz: 1 = Sunday ... 7 = Saturday
    if dom != "?":
        if dom == "L":
            return day.day == last
        if dom.startswith("L-"):
            return day.day == last - int(dom[2:])
        if dom in ("LW",) or dom.endswith("W"):
            target = last if dom == "LW" else int(dom[:-1])
            probe = day.replace(day=target)
            if probe.weekday() == 5:  # Saturday -> Friday, or Monday if that leaves the month
                probe = probe.replace(day=target - 1) if target > 1 else probe.replace(day=target + 2)
            elif probe.weekday() == 6:  # Sunday -> Monday, or Friday at the month's end
                probe = probe.replace(day=target + 1) if target < last else probe.replace(day=target - 2)
            return day == probe
        return day.day == int(dom)
    if dow.endswith("L"):
        return weekday == int(dow[:-1]) and day.day > last - 7
    if "#" in dow:
        wanted, nth = map(int, dow.split("#"))
        return weekday == wanted and (day.day - 1) // 7 + 1 == nth
    return weekday == int(dow)


quartz_days = st.one_of(
    st.tuples(st.sampled_from(["L", "LW", "L-1", "L-5"] + [f"{d}W" for d in (1, 2, 7, 15, 27)]
                              + [str(d) for d in (1, 13, 29, 31)]), st.just("?")),
    st.tuples(st.just("?"), st.one_of(st.integers(1, 7).map(lambda d: f"{d}L"),
                                      st.tuples(st.integers(1, 7), st.integers(1, 5)).map(lambda t: f"{t[0]}#{t[1]}"),
                                      st.integers(1, 7).map(str))),
)


@needs_systemd
@settings(max_examples=150, deadline=None)
@given(days=quartz_days, hour=st.integers(0, 23), zone=st.sampled_from(ZONES),
       base=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31)))
def test_systemd_expands_quartz_day_rules_exactly(days, hour, zone, base):
    from datetime import timedelta

    dom, dow = days
    expression = f"0 30 {hour} {dom} * {dow}"
    base = base.replace(second=0, microsecond=0, tzinfo=timezone.utc)
    lines = list(cron_to_oncalendar_any(expression, zone))
    expected, day = [], base.astimezone(ZoneInfo(zone)).date()
    while len(expected) < 6:
        if quartz_day_matches(day, dom, dow):
            moment = datetime(day.year, day.month, day.day, hour, 30, tzinfo=ZoneInfo(zone))
            if moment > base:
                expected.append(moment.astimezone(timezone.utc))
        day += timedelta(days=1)
    assert systemd_runs(lines, base, 6) == expected, (expression, zone, lines)


# --- other forms ----------------------------------------------------------------------------

def test_cron_tz_prefix_sets_the_zone():
    assert list(cron_to_oncalendar_any("CRON_TZ=Asia/Shanghai 0 9 * * *", "UTC")) == \
        ["*-*-* 09:00:00 Asia/Shanghai"]


def test_reboot_is_a_boot_timer_without_calendar():
    from deployer.schedule import to_calendar

    assert to_calendar("@reboot", (), "UTC").on_boot


def test_native_lines_get_the_job_zone_unless_they_name_one():
    from deployer.schedule import to_calendar

    assert to_calendar(None, ("Mon *-*-* 09:00", "*-*-* 10:00 Europe/Berlin"), "Asia/Shanghai").lines == (
        "Mon *-*-* 09:00 Asia/Shanghai", "*-*-* 10:00 Europe/Berlin")


@needs_systemd
def test_schedule_command_json_contract(deployer):
    import json as jsonlib

    out = deployer("schedule", "30 4 1,15 * 5", "--timezone", "Asia/Shanghai", "--count", "4", "--json", check=True)
    document = jsonlib.loads(out.stdout)
    assert document["oncalendar"] == ["*-*-01,15 04:30:00 Asia/Shanghai", "Fri *-*-* 04:30:00 Asia/Shanghai"]
    assert len(document["next"]) == 4 and all(t.endswith("+08:00") for t in document["next"])
    moments = [datetime.fromisoformat(t) for t in document["next"]]
    assert moments == sorted(moments)
    assert all(m.day in (1, 15) or m.weekday() == 4 for m in moments)


def test_schedule_command_refuses_bad_input_in_one_line(deployer):
    bad = deployer("schedule", "0 0 12 31W * ?", check=False)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "31W" in bad.stderr
    usage = deployer("schedule", "0 * * * *", "--timezone", "Mars/Base", check=False)
    assert usage.returncode == 2


def test_repeated_hour_for_wildcard_jobs_is_the_second_pass_in_utc():
    assert cron_to_oncalendar("*/20 * * * *", "America/New_York") == (
        "*-*-* *:00,20,40:00 America/New_York", "Sun 2000..2006-10-25..31 06:00,20,40:00 UTC",
        "Sun 2007..2099-11-01..07 06:00,20,40:00 UTC")


def test_half_hour_zones_get_their_second_pass_too():
    """UTC+9:30 has no Etc/ name, but the second pass is an instant, and UTC names it."""
    lines = cron_to_oncalendar("*/20 * * * *", "Australia/Adelaide")
    assert "Sat 2006..2099-04-01..06 16:30,50:00 UTC" in lines and "Sat 2006..2099-04-01..06 17:10:00 UTC" in lines


def test_normalized_gives_systemds_form_of_each_line_and_nothing_it_cannot_tell():
    """`status` compares a host's timer calendar (systemd's normalized form) with the inventory's."""
    from deployer.schedule import normalized

    assert normalized(["Mon,Tue *-*-* 9:00 UTC", "*-*-* 04:00:00 UTC"]) == {
        "Mon,Tue *-*-* 9:00 UTC": "Mon,Tue *-*-* 09:00:00 UTC", "*-*-* 04:00:00 UTC": "*-*-* 04:00:00 UTC"}
    assert normalized(["not a calendar"]) == {} and normalized([]) == {}
    assert normalized(["--version"]) == {}  # a host's text never reaches systemd-analyze as an option


def test_a_schedule_whose_first_day_is_years_away_is_not_refused():
    """Found by the property test: `*/7` of January on a Sunday (vixie cron ANDs the two day
    fields when one starts with `*`) first comes on 2034-01-01; an 8-year look refused it."""
    assert cron_to_oncalendar("* * */7 1 0", "UTC")


@needs_systemd
@pytest.mark.parametrize("lines, hours", [
    (("*-*-* 05:05:00 UTC",), 24 * 7),                      # daily, a week
    (("*-*-* *:*:00/2 UTC",), 11),                         # every 2 s: more than the limit holds
    (("*-*-* *:00/15:00 UTC", "Mon *-*-* 09:30:00 UTC"), 24 * 30),
    (("2027-03-01 12:00:00 UTC",), 24 * 400),               # one elapse, then none
    (("*-*-* 02:30:00 Europe/Berlin",), 24 * 60),           # a zone, over its clock change
])
def test_elapses_between_are_those_of_one_long_enumeration_from_few_iterations(monkeypatch, lines, hours):
    from datetime import datetime, timezone

    from deployer import schedule

    start = datetime(2027, 2, 20, 7, 13, 20, tzinfo=timezone.utc).timestamp()
    end, limit = start + hours * 3600, 20000
    everything = [t.timestamp() for t in schedule.next_runs(lines, limit, base=datetime.fromtimestamp(start - 1, timezone.utc))]
    covered = everything[-1] if len(everything) == limit and everything[-1] < end else end
    iterations = []
    analyze = schedule._analyze
    monkeypatch.setattr(schedule, "_analyze", lambda l, count, base=None: iterations.append(count) or analyze(l, count, base))

    assert schedule.elapses_between(lines, start, end, limit) == ([t for t in everything if start <= t <= covered], covered)
    assert sum(iterations) <= max(4 * len([t for t in everything if t <= covered]), 64 * len(iterations))
    if hours == 24 * 7:
        assert iterations == [64]
