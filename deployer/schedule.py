"""Cron expressions -> systemd OnCalendar= lines, keeping Vixie/Debian cron's exact meaning.

The traps this module exists for:
- cron ORs day-of-month and day-of-week when both are restricted; systemd ANDs the
  weekday with the date. Vixie cron decides "restricted" by whether the field text
  starts with '*' (so `*/2` counts as unrestricted), and we copy that rule.
- cron's @weekly is Sunday; systemd's `weekly` is Monday. We never emit systemd's
  shorthands, only explicit calendar lines.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Optional

from .errors import ScheduleError
from .contract.options import is_zone  # noqa: F401 - the one time-zone check, shared with the host side

MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
SYSTEMD_WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
KNOWN_MACROS = (*MACROS, "@reboot")  # @reboot is no calendar: the timer runs it at boot


def unknown_macro(word: str) -> Optional[str]:
    """Why `word` (`@weekdays`) is no cron macro, naming the closest ones (or all); None for a
    macro. Without this, `@weekdays` was counted as a 1-field cron line ("expected 5 fields")."""
    import difflib

    if word.lower() in KNOWN_MACROS:
        return None
    close = difflib.get_close_matches(word.lower(), KNOWN_MACROS, n=2)
    hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(KNOWN_MACROS)}"
    return f"unknown macro {word} ({hint})"


@dataclass(frozen=True)
class CronField:
    name: str
    low: int
    high: int
    names: Optional[list[str]] = None
    first_name: int = 0  # the value of names[0]: jan is 1, cron's sun 0, Quartz's sun 1


FIELDS = (
    CronField("minute", 0, 59),
    CronField("hour", 0, 23),
    CronField("day-of-month", 1, 31),
    CronField("month", 1, 12, MONTHS, first_name=1),
    CronField("day-of-week", 0, 7, WEEKDAYS),
)

_ELEMENT = re.compile(r"^(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?$")


def _number(text: str, spec: CronField, expr: str, dialect: str = "cron") -> int:
    if text.isdigit():
        value = int(text)
    elif spec.names and text in spec.names:
        value = spec.names.index(text) + spec.first_name
    else:
        raise ScheduleError(f"{dialect} {expr!r}: {spec.name} field: {text!r} is not a number or name")
    if not spec.low <= value <= spec.high:
        raise ScheduleError(f"{dialect} {expr!r}: {spec.name} field: {value} is outside {spec.low}-{spec.high}")
    return value


def parse_field(text: str, spec: CronField, expr: str) -> frozenset[int]:
    """The set of values one cron field matches, as Vixie cron parses it."""
    values: set[int] = set()
    for element in text.lower().split(","):
        match = _ELEMENT.match(element)
        if not match:
            raise ScheduleError(f"cron {expr!r}: {spec.name} field: cannot parse {element!r}")
        star, first, last, step = match.groups()
        if star:
            low, high = spec.low, spec.high
        else:
            low = _number(first, spec, expr)
            if last is None:
                if step is not None:
                    # Vixie cron rejects N/step; cronie reads it as N-max/step. Refuse the ambiguity.
                    raise ScheduleError(
                        f"cron {expr!r}: {spec.name} field: {element!r} needs a range or '*' "
                        f"before '/' (write {first}-{spec.high}/{step})"
                    )
                high = low
            else:
                high = _number(last, spec, expr)
                if high < low:
                    raise ScheduleError(
                        f"cron {expr!r}: {spec.name} field: range {element!r} runs backwards"
                    )
        stride = int(step) if step is not None else 1
        if stride == 0:
            raise ScheduleError(f"cron {expr!r}: {spec.name} field: step 0 in {element!r}")
        values.update(range(low, high + 1, stride))
    if spec.name == "day-of-week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed 5-field cron expression; `*_star` mirror Vixie cron's DOM_STAR/DOW_STAR flags."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_star: bool
    weekdays_star: bool
    fixed_time: bool = False  # minute and hour fields do not start with '*' (Debian's DST rule)


def parse_cron(expression: str) -> CronSchedule:
    text = " ".join(expression.split())
    text = MACROS.get(text.lower(), text)
    parts = text.split(" ")
    wrong = parts[0].startswith("@") and unknown_macro(parts[0])
    if wrong:
        raise ScheduleError(wrong)
    if len(parts) != 5:
        raise ScheduleError(
            f"cron {expression!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week), a @macro, or 6-7 Quartz fields; got {len(parts)}"
        )
    sets = [parse_field(part, spec, expression) for part, spec in zip(parts, FIELDS)]
    cron = CronSchedule(expression, *sets, parts[2].startswith("*"), parts[4].startswith("*"),
                        not parts[0].startswith("*") and not parts[1].startswith("*"))
    # Debian cron accepts `* * 30 2 *` and never runs it; a timer that never fires is a bug.
    _refuse_never(_CronDays(cron), "cron", "day-of-month", parts[2])
    return cron


@dataclass(frozen=True)
class _CronDays:
    cron: CronSchedule

    @property
    def expression(self) -> str:
        return self.cron.expression

    def matches_day(self, day: date) -> bool:
        return _cron_day_matches(self.cron, day)


def _compress(values: frozenset[int], spec_low: int, spec_high: int, width: int) -> str:
    """`*` for a full range, else a list of values and `a..b` runs, zero-padded."""
    if values == frozenset(range(spec_low, spec_high + 1)):
        return "*"
    ordered = sorted(values)
    runs: list[tuple[int, int]] = []
    for v in ordered:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    out = []
    for a, b in runs:
        if a == b:
            out.append(f"{a:0{width}d}")
        elif b == a + 1:
            out.append(f"{a:0{width}d},{b:0{width}d}")
        else:
            out.append(f"{a:0{width}d}..{b:0{width}d}")
    return ",".join(out)


def _weekdays(values: frozenset[int]) -> str:
    """`Mon..Fri `, `Sat,Sun `, or "" for every day; runs follow systemd's Monday-first week."""
    if values == frozenset(range(7)):
        return ""
    monday_first = sorted((v + 6) % 7 for v in values)
    runs: list[list[int]] = []
    for v in monday_first:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    names = [SYSTEMD_WEEKDAYS[(v + 1) % 7] for v in range(7)]
    parts = [f"{names[r[0]]}..{names[r[-1]]}" if len(r) > 2 else ",".join(names[v] for v in r) for r in runs]
    return ",".join(parts) + " "


# systemd 252 miscomputes calendars in zones that tzdata models with negative DST: iterating
# "*-03-26 00:00:00 Europe/Dublin" from 2028 skips 2029 (found by the DST property test), so
# a timer would silently miss that run. Europe/London has had Dublin's clock every hour since
# 1996 through 2099 (tests/test_schedule.py checks), and systemd gets it right.
SYSTEMD_ZONE = {"Europe/Dublin": "Europe/London", "Eire": "Europe/London"}


def systemd_zone(zone: str) -> str:
    return SYSTEMD_ZONE.get(zone, zone)


def cron_to_oncalendar(expression: str, timezone: str = "UTC") -> tuple[str, ...]:
    """The OnCalendar= values whose union fires exactly when cron would run `expression`."""
    timezone = systemd_zone(timezone) if timezone else timezone
    cron = parse_cron(expression)
    zone = f" {timezone}" if timezone else ""
    all_days, all_weekdays = frozenset(range(1, 32)), frozenset(range(7))

    def lines_for(hours: frozenset[int], months: frozenset[int], years: str = "*") -> list[str]:
        time = f"{_compress(hours, 0, 23, 2)}:{_compress(cron.minutes, 0, 59, 2)}:00"
        month = _compress(months, 1, 12, 2)

        def line(weekdays: frozenset[int], days: frozenset[int]) -> str:
            return f"{_weekdays(weekdays)}{years}-{month}-{_compress(days, 1, 31, 2)} {time}{zone}"

        if cron.days_star or cron.weekdays_star:
            return [line(cron.weekdays, cron.days)]
        # Both restricted: cron runs on either match, systemd would need both.
        return [line(all_weekdays, cron.days), line(cron.weekdays, all_days)]

    split = _off_hour_gap_days(timezone, cron.hours, cron.minutes,
                               lambda day: _cron_day_matches(cron, day)) if timezone else {}
    if not split:
        lines = lines_for(cron.hours, cron.months)
    else:
        # The hours next to an off-the-hour gap run at UTC instants on the gap's days; the
        # zone's lines for those hours skip those days (see _off_hour_gap_days).
        touched = frozenset(h for hours in split.values() for h in hours)
        lines = lines_for(cron.hours - touched, cron.months) if cron.hours - touched else []
        skip = {(day.year, day.month) for day in split}
        by_years: dict[str, set[int]] = {}
        for month in sorted(cron.months):
            skipped = {year for year, m in skip if m == month}
            # to LAST_YEAR: the gaps after it are not known, and one would stop the line
            years = _compress(frozenset(set(range(1970, LAST_YEAR + 1)) - skipped), -1, -1, 4) if skipped else "*"
            by_years.setdefault(years, set()).add(month)
        for years, months in by_years.items():
            lines += lines_for(touched, frozenset(months), years)
        lines += _split_month_lines(skip, split, lambda day: _cron_day_matches(cron, day),
                                    f"{_compress(touched, 0, 23, 2)}:{_compress(cron.minutes, 0, 59, 2)}:00{zone}")
        lines += _instant_lines(_existing_instants(timezone, split, touched, cron.minutes, (0,)))
    if timezone:
        lines += [extra for extra in cron_dst_lines(cron, timezone) if extra not in lines]
    return tuple(lines)


def _split_month_lines(skip, split, matches_day, time: str) -> list[str]:
    """For each (year, month) in `skip`: a line for the month's matching days but those in
    `split`, years with the same days sharing one line."""
    import calendar

    by_days: dict[tuple[int, str], set[int]] = {}
    for year, month in sorted(skip):
        last = calendar.monthrange(year, month)[1]
        days = frozenset(d for d in range(1, last + 1)
                         if date(year, month, d) not in split and matches_day(date(year, month, d)))
        if days:
            by_days.setdefault((month, _compress(days, 1, 31, 2)), set()).add(year)
    return [f"{_compress(frozenset(years), -1, -1, 4)}-{month:02d}-{days} {time}"
            for (month, days), years in by_days.items()]


def _existing_instants(zone: str, days, hours, minutes, seconds) -> set[datetime]:
    """The UTC instants of the wall times h:m:s (h in `hours`) on each of `days` that exist in
    `zone`; times swallowed by a jump are left out."""
    from zoneinfo import ZoneInfo

    tz, instants = ZoneInfo(zone), set()
    for day in days:
        for hour in sorted(hours):
            for minute in sorted(minutes):
                for second in seconds:
                    wall = datetime(day.year, day.month, day.day, hour, minute, second)
                    moment = wall.replace(tzinfo=tz).astimezone(timezone.utc)
                    if moment.astimezone(tz).replace(tzinfo=None) == wall:
                        instants.add(moment)
    return instants


# --- clock changes: the zone's actual transitions, as tzdata (zoneinfo) records them -------
#
# systemd resolves a local time in a calendar's zone like this: a time swallowed by a forward jump
# does not happen; a time that happens twice (clocks fall back) happens in its first pass only
# (counted from before it: from a base inside the second pass, the times still ahead in that hour
# elapse in the second pass, which a timer meets only when it starts there without a stamp;
# tests/test_schedule.py second_pass_rest). Where the job's meaning differs, we add lines for the
# exact instants, written in UTC (any zone's offset, half hours included, is expressible that
# way), for every transition tzdata has between FIRST_YEAR and LAST_YEAR:
# - Debian cron (modelled by cronsim): a fixed-time job whose time was swallowed runs once
#   right after the jump; a wildcard job (minute or hour field starting with '*') runs in
#   both passes through a repeated time. (One thing a timer cannot copy: a fixed-time job
#   with two times in one gap, `0,30 0 * * *` across Chile's midnight jump, runs twice in
#   that minute under Debian, whose catch-up loop empties its queue between the skipped
#   minutes: `if (job_runqueue()) sleep(10); virtualTime++; find_jobs(...)`. We run it once.)
# - Quartz: see quartz_to_oncalendar (second pass only, nothing after a jump).
# The transitions come from the zone's real history and rule (zoneinfo), not from the POSIX
# rule string: Asia/Hebron's changes 50 hours past the nominal day, America/Nuuk's at 23:00
# on Saturday, Chile's at 24:00 are all just transitions here. Lines name their weekday
# and a window of days when the transitions follow a rule for a run of years (`Sun
# 2007..2099-03-08..14 07:00:00 UTC`), and the date itself otherwise.

FIRST_YEAR, LAST_YEAR = 2000, 2099  # the extra lines cover clock changes in these years
_PROBE = timedelta(days=7)  # tzdata has no pair of opposite changes within a week since 2000


@dataclass(frozen=True)
class Transition:
    """A change of `zone`'s UTC offset at the UTC instant `at` (offsets in seconds east)."""

    at: datetime
    before: int
    after: int

    def wall(self, offset: int) -> datetime:
        """The local wall clock at the instant, read with `offset` (naive)."""
        return (self.at + timedelta(seconds=offset)).replace(tzinfo=None)

    @functools.cached_property  # every expression of the zone asks again (frozen: cached in __dict__)
    def gap(self) -> tuple[datetime, datetime]:
        """Local times [start, end) that do not exist (empty unless clocks jump forward)."""
        return self.wall(self.before), self.wall(self.after)

    @functools.cached_property
    def repeated(self) -> tuple[datetime, datetime]:
        """Local times [start, end) that happen twice (empty unless clocks fall back)."""
        return self.wall(self.after), self.wall(self.before)


@functools.lru_cache(maxsize=None)
def clock_transitions(zone: str) -> tuple[Transition, ...]:
    """Every change of `zone`'s UTC offset from FIRST_YEAR to LAST_YEAR, from tzdata."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)

    def offset(moment: datetime) -> int:
        return int(moment.astimezone(tz).utcoffset().total_seconds())

    found = []
    moment, end = datetime(FIRST_YEAR - 1, 12, 25, tzinfo=timezone.utc), \
        datetime(LAST_YEAR + 1, 1, 8, tzinfo=timezone.utc)
    current = offset(moment)
    while moment < end:
        probe = moment + _PROBE
        later = offset(probe)
        if later != current:
            low, high = moment, probe  # offset(low) == current != offset(high)
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if offset(middle) == current else (low, middle)
            high = high.replace(microsecond=0)
            if high.year in range(FIRST_YEAR - 1, LAST_YEAR + 2):
                found.append(Transition(high, current, offset(high)))
            current = offset(high)
            moment = high
            continue
        moment = probe
    return tuple(t for t in found if FIRST_YEAR <= t.wall(t.after).year <= LAST_YEAR)


def _minutes_between(hours, minutes, low: datetime, high: datetime):
    """Wall-clock minutes h:m in [low, high) (naive datetimes), in order."""
    day = low.date()
    while day <= high.date():
        for hour in sorted(hours):
            for minute in sorted(minutes):
                moment = datetime(day.year, day.month, day.day, hour, minute)
                if low <= moment < high:
                    yield moment
        day += timedelta(days=1)


def _date_specs(dates: frozenset) -> list[str]:
    """Calendar date parts (`Sun 2007..2099-03-08..14`, `2022-03-26`...) whose union is
    exactly `dates`: a weekday in a window of at most seven days for a run of years where
    every such day is in `dates`, else the dates themselves."""
    import calendar

    uncovered, specs = set(dates), []
    names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

    def day_in(year, month, weekday, first, last):
        for day in range(first, last + 1):
            if date(year, month, day).weekday() == weekday:
                return date(year, month, day)
        return None

    def fits(year, month, weekday, first, last):
        hit = day_in(year, month, weekday, first, last)
        return hit is None or hit in dates

    while uncovered:
        seed = min(uncovered)
        shortest = 28 if seed.month == 2 else calendar.monthrange(2001, seed.month)[1]
        best = None
        for first in range(max(1, seed.day - 6), seed.day + 1):
            for last in range(seed.day, min(first + 6, shortest) + 1):
                low = high = seed.year
                while low - 1 >= FIRST_YEAR and fits(low - 1, seed.month, seed.weekday(), first, last):
                    low -= 1
                while high + 1 <= LAST_YEAR and fits(high + 1, seed.month, seed.weekday(), first, last):
                    high += 1
                hits = {day_in(y, seed.month, seed.weekday(), first, last) for y in range(low, high + 1)}
                covered = (hits - {None}) & uncovered
                score = (len(covered), last - first)
                if best is None or score > best[0]:
                    best = (score, first, last, covered)
        if best is None:  # 29 February: no window of it recurs every year; name the date
            specs.append(f"{seed:%Y-%m-%d}")
            uncovered.discard(seed)
            continue
        (count, _), first, last, covered = best
        if count == 1:  # nothing to generalise: name the date
            specs.append(f"{seed:%Y-%m-%d}")
        else:
            years = sorted({d.year for d in covered})
            span = f"{years[0]}..{years[-1]}" if years[-1] > years[0] + 1 else ",".join(map(str, years))
            days = f"{first:02d}" if first == last else f"{first:02d}..{last:02d}"
            specs.append(f"{names[seed.weekday()]} {span}-{seed.month:02d}-{days}")
        uncovered -= covered
    return specs


def _instant_lines(instants, seconds: str = "00") -> list[str]:
    """UTC lines that fire at exactly the given UTC minutes (each at `seconds`)."""
    by_time: dict[tuple[int, int], set] = {}
    for moment in instants:
        by_time.setdefault((moment.hour, moment.minute), set()).add(moment.date())
    by_dates: dict[frozenset, dict[int, set]] = {}
    for (hour, minute), days in sorted(by_time.items()):
        by_dates.setdefault(frozenset(days), {}).setdefault(hour, set()).add(minute)
    lines = []
    for days, hours in by_dates.items():
        by_minutes: dict[frozenset, set] = {}
        for hour, minutes in hours.items():
            by_minutes.setdefault(frozenset(minutes), set()).add(hour)
        for spec in _date_specs(days):
            for minutes, hour_set in by_minutes.items():
                lines.append(f"{spec} {_compress(frozenset(hour_set), 0, 23, 2)}:"
                             f"{_compress(minutes, 0, 59, 2)}:{seconds} UTC")
    return lines


def _cron_day_matches(cron: CronSchedule, day: date) -> bool:
    if day.month not in cron.months:
        return False
    by_day, by_weekday = day.day in cron.days, (day.weekday() + 1) % 7 in cron.weekdays
    if cron.days_star or cron.weekdays_star:
        return by_day and by_weekday
    return by_day or by_weekday


def cron_dst_lines(cron: CronSchedule, zone: str) -> list[str]:
    """Lines for the runs Debian cron makes around `zone`'s clock changes and systemd would
    not: the catch-up run after a jump for fixed-time jobs, the second pass for wildcard ones."""
    instants = set()
    for change in clock_transitions(zone):
        if change.after > change.before and cron.fixed_time:
            if any(_cron_day_matches(cron, m.date())
                   for m in _minutes_between(cron.hours, cron.minutes, *change.gap)):
                instants.add(change.at)
        elif change.after < change.before and not cron.fixed_time:
            for moment in _minutes_between(cron.hours, cron.minutes, *change.repeated):
                if _cron_day_matches(cron, moment.date()):
                    instants.add(moment.replace(tzinfo=timezone.utc) - timedelta(seconds=change.after))
    return _instant_lines(instants)


def _off_hour_gap_days(zone: str, hours, minutes, matches_day) -> dict[date, set[int]]:
    """Local days (with the job's hours concerned) that systemd 252 cannot step over: a jump
    forward whose gap starts off the whole hour (Pacific/Chatham 02:45 -> 03:45 every
    September, Asia/Hebron 00:01 in 2011, Newfoundland 00:01 until 2011) while the job has a
    time in the gap. From before such a gap, systemd's search for the next elapse of the
    zone's line either fails ("Resource deadlock avoided": a timer drops that OnCalendar=
    value and, with no other, stops firing) or jumps to the next day, skipping the first
    time after the gap (03:45). On those days the hours from the gap's start through its end
    are written as UTC instants, and the zone's lines skip those days."""
    found: dict[date, set[int]] = {}
    for change in clock_transitions(zone):
        start, end = change.gap
        if change.after <= change.before or not (start.minute or start.second):
            continue
        if not any(matches_day(m.date()) for m in _minutes_between(hours, minutes, start, end)):
            continue
        hour = start.replace(minute=0, second=0)
        while hour <= end:
            if hour.hour in hours and matches_day(hour.date()):
                found.setdefault(hour.date(), set()).add(hour.hour)
            hour += timedelta(hours=1)
    return found


# --- Quartz (xxl-job, ElasticJob): sec min hour dom month dow [year] -------------------------
#
# Semantics are Quartz's own (org.quartz.CronExpression, quartz-scheduler/quartz on GitHub):
# buildExpression/addToSet for the syntax (an increment must stay below the field's range,
# `N/step` runs to the maximum, a backwards range wraps around), getTimeAfter for the times.
# getTimeAfter walks the wall clock with java.util.GregorianCalendar, which reads a local time
# that happens twice as the later one (the offset after the change) and moves a local time
# swallowed by a jump forward, out of the hour the walk asked for (setCalendarHour), so:
# Quartz never fires in the first pass through a repeated time, only in the second, and
# never makes up a time swallowed by a jump. tests/quartz_reference.py is that model.

QUARTZ_WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]  # 1..7
QUARTZ_FIELDS = (
    CronField("second", 0, 59), CronField("minute", 0, 59), CronField("hour", 0, 23),
    CronField("day-of-month", 1, 31), CronField("month", 1, 12, MONTHS, first_name=1),
    CronField("day-of-week", 1, 7, QUARTZ_WEEKDAYS, first_name=1), CronField("year", 1970, 2099),
)
_QUARTZ_ELEMENT = re.compile(r"^(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?$")


def _quartz_number(text: str, spec: CronField, expr: str) -> int:
    return _number(text, spec, expr, dialect="quartz")


def _quartz_field(text: str, spec: CronField, expr: str) -> frozenset[int]:
    """Quartz lists, ranges and steps; `N/step` means N to the maximum, every step; a range
    that runs backwards (`FRI-MON`, `22-2`) wraps around, as in Quartz's addToSet."""
    values: set[int] = set()
    size = spec.high - spec.low + 1
    for element in text.lower().split(","):
        match = _QUARTZ_ELEMENT.match(element)
        if not match:
            raise ScheduleError(f"quartz {expr!r}: {spec.name} field: {element!r} cannot be expressed "
                                "in systemd (or is not Quartz syntax)")
        star, first, last, step = match.groups()
        low = spec.low if star else _quartz_number(first, spec, expr)
        high = spec.high if star or (last is None and step) else \
            _quartz_number(last, spec, expr) if last is not None else low
        stride = int(step) if step else 1
        if stride == 0:
            raise ScheduleError(f"quartz {expr!r}: {spec.name} field: step 0 in {element!r}")
        if step and stride >= size and spec.name != "year":
            raise ScheduleError(f"quartz {expr!r}: {spec.name} field: increment {stride} in {element!r} "
                                f"must be less than {size} (Quartz refuses it)")
        if high < low:
            if spec.name == "year":
                raise ScheduleError(f"quartz {expr!r}: {spec.name} field: range {element!r} runs backwards")
            high += size
        values.update((v - spec.low) % size + spec.low for v in range(low, high + 1, stride))
    return frozenset(values)


def _quartz_day_element(dom: str, expr: str) -> list[str]:
    """One element of day-of-month -> systemd day parts (`-01,15`, `~01`, `MF~02`...)."""
    if dom == "L":
        return ["~01"]
    match = re.fullmatch(r"L-(\d+)", dom)
    if match:
        back = int(match.group(1))
        if back > 27:
            raise ScheduleError(f"quartz {expr!r}: day-of-month: L-{back} goes back further than any month")
        return [f"~{back + 1:02d}"]
    match = re.fullmatch(r"L(?:-(\d+))?W", dom)
    if match:  # the weekday nearest to the last day (minus n): Saturday -> Friday, Sunday -> Monday
        back = int(match.group(1) or 0)
        if back > 26:
            raise ScheduleError(f"quartz {expr!r}: day-of-month: {dom} near a month's start depends on "
                                "the month's length, which systemd cannot test; use L-0W..L-26W")
        if back == 0:  # a Sunday last day has no Monday after it in the month: Friday
            return ["MF~01", "Fri~02", "Fri~03"]
        return [f"MF~{back + 1:02d}", f"Fri~{back + 2:02d}", f"Mon~{back:02d}"]
    match = re.fullmatch(r"(\d+)W", dom)
    if match:
        day = int(match.group(1))
        if not 1 <= day <= 27:
            # A Sunday 28th is February's last day in common years: Quartz then moves back to
            # Friday, which depends on the month's length, which a calendar line cannot test.
            raise ScheduleError(f"quartz {expr!r}: day-of-month: {day}W (nearest weekday near a month's "
                                "end) cannot be expressed in systemd; use 1W..27W or LW")
        # The day itself if a weekday; a Saturday moves to Friday (day-1), a Sunday to Monday
        # (day+1); the 1st never moves into the previous month: a Saturday 1st runs Monday 3rd.
        parts = [f"MF-{day:02d}", f"Mon-{day + 1:02d}"]
        parts.append(f"Fri-{day - 1:02d}" if day > 1 else "Mon-03")
        return parts
    if re.search(r"[LW#]", dom):
        raise ScheduleError(f"quartz {expr!r}: day-of-month: {dom!r} cannot be expressed in systemd")
    return ["-" + _compress(_quartz_field(dom, QUARTZ_FIELDS[3], expr), 1, 31, 2)]


def _quartz_days(dom: str, expr: str) -> list[str]:
    """Day-of-month -> systemd day parts; a list (`1,L`, `2W,16`) is the union of its elements."""
    dom = dom.upper()
    if dom in ("?", "*"):
        return ["-*"]
    plain = [e for e in dom.split(",") if not re.search(r"[LW#]", e)]
    parts = [part for e in dom.split(",") if re.search(r"[LW#]", e) for part in _quartz_day_element(e, expr)]
    if plain:
        parts.insert(0, _quartz_day_element(",".join(plain), expr)[0])
    return list(dict.fromkeys(parts))


def _quartz_weekdays(dow: str, expr: str) -> tuple[frozenset[int], str]:
    """Day-of-week -> (cron weekdays 0..6, a day part it implies, e.g. last week `~07/1`)."""
    dow = dow.upper()
    if dow in ("?", "*"):
        return frozenset(range(7)), ""
    if dow == "L":
        return frozenset({6}), ""  # Quartz: a lone L is day 7, Saturday
    match = re.fullmatch(r"([0-9A-Z]+)L", dow)
    if match:
        return frozenset({_quartz_number(match.group(1).lower(), QUARTZ_FIELDS[5], expr) - 1}), "~07/1"
    match = re.fullmatch(r"([0-9A-Z]+)#(\d+)", dow)
    if match:
        nth = int(match.group(2))
        if not 1 <= nth <= 5:
            raise ScheduleError(f"quartz {expr!r}: day-of-week: #{nth} must be 1 to 5")
        weekday = _quartz_number(match.group(1).lower(), QUARTZ_FIELDS[5], expr) - 1
        return frozenset({weekday}), f"-{(nth - 1) * 7 + 1:02d}..{min(nth * 7, 31):02d}"
    if "#" in dow or re.search(r"(?<![A-Z])L|\dL", dow):  # names may contain W (WED) but no L
        raise ScheduleError(f"quartz {expr!r}: day-of-week: {dow!r} cannot be expressed in systemd")
    return frozenset(v - 1 for v in _quartz_field(dow, QUARTZ_FIELDS[5], expr)), ""


_DAY_NAMES = {"MF": "Mon..Fri", "Fri": "Fri", "Mon": "Mon"}


@dataclass(frozen=True)
class QuartzSchedule:
    """A parsed Quartz expression: times, months, years and `days`, the OR-ed day clauses as
    (systemd weekday names or "", systemd day part)."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    years: Optional[frozenset[int]]
    days: tuple[tuple[str, str], ...]

    def matches_day(self, day: date) -> bool:
        """Does the job run on `day` (the same clauses systemd is given, read in Python)?"""
        import calendar

        if day.month not in self.months or (self.years is not None and day.year not in self.years):
            return False
        last = calendar.monthrange(day.year, day.month)[1]
        for names, part in self.days:
            if names and day.weekday() not in _weekday_set(names):
                continue
            if _day_part_days(part, last) is None or day.day in _day_part_days(part, last):
                return True
        return False


def _weekday_set(names: str) -> set[int]:
    """`Mon..Fri`, `Sat,Sun` -> Python weekdays (Monday 0)."""
    order = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    days: set[int] = set()
    for item in names.split(","):
        first, _, last = item.partition("..")
        days.update(range(order.index(first), order.index(last or first) + 1))
    return days


def _day_part_days(part: str, last: int) -> Optional[set[int]]:
    """The days a systemd day part (`-*`, `-01,15..20`, `~03`, `~07/1`) names; None for all."""
    if part == "-*":
        return None
    if part.startswith("~"):
        back, _, repeat = part[1:].partition("/")
        first = last - int(back) + 1
        return set(range(first, last + 1)) if repeat else {first}
    days: set[int] = set()
    for item in part[1:].split(","):
        low, _, high = item.partition("..")
        days.update(range(int(low), int(high or low) + 1))
    return days


def parse_quartz(expression: str) -> QuartzSchedule:
    parts = expression.split()
    if len(parts) not in (6, 7):
        raise ScheduleError(f"quartz {expression!r}: expected 6 or 7 fields, got {len(parts)}")
    sec, minute, hour, dom, month, dow = parts[:6]
    if (dom == "?") == (dow == "?"):
        raise ScheduleError(f"quartz {expression!r}: put '?' in exactly one of day-of-month and "
                            "day-of-week (Quartz does not combine them)")
    times = [_quartz_field(f, QUARTZ_FIELDS[i], expression) for i, f in enumerate((sec, minute, hour))]
    months = _quartz_field(month, QUARTZ_FIELDS[4], expression)
    years = _quartz_field(parts[6], QUARTZ_FIELDS[6], expression) if len(parts) == 7 else None
    weekdays, implied_day = _quartz_weekdays(dow, expression)
    clauses = []
    for day in ([implied_day] if implied_day else _quartz_days(dom, expression)):
        names = _weekdays(weekdays).strip()
        for prefix, weekday in _DAY_NAMES.items():
            if day.startswith(prefix):
                day, names = day[len(prefix):], weekday
        clauses.append((names, day))
    schedule = QuartzSchedule(expression, *times, months, years, tuple(clauses))
    _refuse_never(schedule, "quartz", "day-of-month", dom)
    return schedule


def _refuse_never(schedule, dialect: str, name: str, text: str) -> None:
    """Refuse a schedule whose days never come (30 February, 31 April): no timer that never fires."""
    # Weekdays fall on the same dates again after 28 years (within a century): `*/7` of January on
    # a Sunday first comes in 2034, so a shorter look refused a schedule that runs.
    this_year = date.today().year
    years = sorted(schedule.years) if getattr(schedule, "years", None) else range(this_year, this_year + 29)
    day = date(years[0], 1, 1)
    for year in years:
        day = date(year, 1, 1)
        while day.year == year:
            if schedule.matches_day(day):
                return
            day += timedelta(days=1)
    raise ScheduleError(f"{dialect} {schedule.expression!r}: {name} field {text!r} never falls in the "
                        "months (and years) given: the job would never run")


def quartz_to_oncalendar(expression: str, timezone: str = "UTC") -> tuple[str, ...]:
    """OnCalendar= lines that fire when Quartz would: in a repeated time, the second pass only
    (see the note above)."""
    quartz = parse_quartz(expression)
    zone = systemd_zone(timezone)
    years = _compress(quartz.years, 1970, 2099, 4) if quartz.years is not None else "*"
    months = _compress(quartz.months, 1, 12, 2)
    minute_second = f"{_compress(quartz.minutes, 0, 59, 2)}:{_compress(quartz.seconds, 0, 59, 2)}"

    def lines(hours, year_spec=years, month_spec=months, clauses=quartz.days, where=zone):
        hour = _compress(hours, 0, 23, 2)
        return [f"{names + ' ' if names else ''}{year_spec}-{month_spec}{day} {hour}:{minute_second} {where}"
                for names, day in clauses]

    repeated = _quartz_repeated_days(quartz, timezone)
    gaps = _off_hour_gap_days(timezone, quartz.hours, quartz.minutes, quartz.matches_day)
    for day, hours in gaps.items():
        repeated.setdefault(day, set()).update(hours)
    # With such gaps, split months end at LAST_YEAR: later gaps are not known, and one would
    # stop the line (see _off_hour_gap_days).
    last_year = LAST_YEAR if gaps else 2199
    if not repeated:
        return tuple(lines(quartz.hours))
    # On a day with a repeated time, the hours it touches run at explicit UTC instants, and
    # the zone's line for those hours skips that day (systemd would pick the first pass).
    touched = frozenset(h for hours in repeated.values() for h in hours)
    out = lines(quartz.hours - touched) if quartz.hours - touched else []
    skip = {(d.year, d.month) for d in repeated}
    by_years: dict[str, set[int]] = {}
    for month in sorted(quartz.months):
        skipped = {y for y, m in skip if m == month}
        allowed = set(quartz.years or range(1970, last_year + 1)) - skipped
        if allowed:
            by_years.setdefault(_compress(frozenset(allowed), -1, -1, 4) if skipped else years, set()).add(month)
    for year_spec, month_set in by_years.items():
        out += lines(touched, year_spec, _compress(frozenset(month_set), 1, 12, 2))
    import calendar
    by_month: dict[tuple[int, str], set[int]] = {}
    for year, month in sorted(skip):
        last = calendar.monthrange(year, month)[1]
        days = frozenset(d for d in range(1, last + 1) if date(year, month, d) not in repeated
                         and quartz.matches_day(date(year, month, d)))
        if days:
            by_month.setdefault((month, _compress(days, 1, 31, 2)), set()).add(year)
    for (month, days), year_set in by_month.items():
        out += lines(touched, _compress(frozenset(year_set), -1, -1, 4), f"{month:02d}", (("", "-" + days),))
    out += _instant_lines(_quartz_instants(quartz, timezone, repeated, touched),
                          seconds=_compress(quartz.seconds, 0, 59, 2))
    return tuple(dict.fromkeys(out))


def _quartz_repeated_days(quartz: QuartzSchedule, zone: str) -> dict[date, set[int]]:
    """Local days on which one of the job's times happens twice, with the hours concerned."""
    found: dict[date, set[int]] = {}
    for change in clock_transitions(zone):
        if change.after < change.before:
            for moment in _minutes_between(quartz.hours, quartz.minutes, *change.repeated):
                if quartz.matches_day(moment.date()):
                    found.setdefault(moment.date(), set()).add(moment.hour)
    return found


def _quartz_instants(quartz: QuartzSchedule, zone: str, days, touched) -> set[datetime]:
    """UTC minutes at which Quartz fires on `days` in the `touched` hours: a repeated local
    time in its second pass (fold=1), a time swallowed by a jump not at all."""
    from zoneinfo import ZoneInfo

    tz, instants = ZoneInfo(zone), set()
    for day in days:
        for hour in sorted(touched & quartz.hours):
            for minute in sorted(quartz.minutes):
                wall = datetime(day.year, day.month, day.day, hour, minute)
                moment = wall.replace(tzinfo=tz, fold=1).astimezone(timezone.utc)
                if moment.astimezone(tz).replace(tzinfo=None) == wall:
                    instants.add(moment)
    return instants


# --- one entry point for every kind of schedule ---------------------------------------------

_TZ_PREFIX = re.compile(r"^\s*(?:CRON_)?TZ=(\S+)\s+(.*)$")


def split_zone_prefix(text: str) -> tuple[Optional[str], str]:
    """`CRON_TZ=Zone rest` or `TZ=Zone rest` -> (Zone, rest); anything else -> (None, text)."""
    prefixed = _TZ_PREFIX.match(text)
    if prefixed:
        return prefixed.group(1), prefixed.group(2).strip()
    return None, text.strip()


def calendar_for_expression(expression: str, zone: str) -> "Calendar":
    """A free-form EXPRESSION (`deployer schedule`): cron or Quartz when it looks like one (a
    @macro, a TZ= prefix, five or more fields), else a native systemd calendar line."""
    cron_like = expression.strip().startswith("@") or len(expression.split()) >= 5 or "TZ=" in expression
    return to_calendar(expression if cron_like else None, () if cron_like else (expression,), zone)


def schedule_kind(expression: str) -> str:
    """"boot" (@reboot), "quartz" (6 or 7 fields) or "cron" (everything else: 5 fields,
    @macros, and malformed text, which the cron parser then explains). The one place
    that tells cron from Quartz."""
    text = split_zone_prefix(expression)[1]
    if text.lower() == "@reboot":
        return "boot"
    return "quartz" if len(text.split()) in (6, 7) else "cron"


RESOLUTION = {"cron": 60, "boot": 60, "quartz": 1, "calendar": 1}  # seconds a timer may fire at


@dataclass(frozen=True)
class Calendar:
    """What a timer needs: OnCalendar= lines (in their zone), or `on_boot` for @reboot.
    `kind` is "cron", "quartz", "boot" or "calendar" (native lines); `resolution` is the
    finest step in seconds at which it may fire (60 for cron, 1 for Quartz and native)."""

    lines: tuple[str, ...]
    timezone: str
    on_boot: bool = False
    kind: str = "calendar"

    @property
    def resolution(self) -> int:
        return RESOLUTION[self.kind]


def has_zone(line: str) -> bool:
    """Does a native calendar line end in a time zone (`UTC` or an IANA name)?"""
    last = line.split()[-1] if line.split() else ""
    return (last == "UTC" or "/" in last) and is_zone(last)


@functools.lru_cache(maxsize=4096)  # pure; jobs share schedules, and render asks twice per job
def to_calendar(schedule: Optional[str], on_calendar: tuple[str, ...], timezone: str = "UTC") -> Calendar:
    """A job's schedule (cron, @macro, CRON_TZ=..., Quartz) or native lines -> Calendar."""
    if schedule is None:
        return Calendar(tuple(line if has_zone(line) else f"{line} {systemd_zone(timezone)}"
                              for line in on_calendar), timezone)
    zone, text = split_zone_prefix(schedule)
    if zone is not None:
        if not is_zone(zone):
            raise ScheduleError(f"{schedule!r}: {zone!r} is not an IANA time zone")
        timezone = zone
    kind = schedule_kind(text)
    if kind == "boot":
        return Calendar((), timezone, on_boot=True, kind=kind)
    convert = quartz_to_oncalendar if kind == "quartz" else cron_to_oncalendar
    return Calendar(convert(text, timezone), timezone, kind=kind)


# --- systemd as the judge of calendars and next runs ----------------------------------------

_ELAPSE = re.compile(r"(?:Next elapse|Iter\. #\d+): \w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def _analyze(lines: list[str], count: int, base=None):
    import subprocess

    args = ["systemd-analyze", "calendar", f"--iterations={count}"]
    if base is not None:
        args.append(f"--base-time=@{int(base.timestamp())}")
    try:
        return subprocess.run(args + lines, capture_output=True, text=True,
                              env={"TZ": "UTC", "LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    except FileNotFoundError:
        raise ScheduleError("systemd-analyze is not installed here (Debian: package systemd)") from None


def check_calendar_lines(lines: list[str]) -> dict[str, str]:
    """Every line systemd refuses, with its reason. One call when all are fine."""
    if not lines or _analyze(lines, 1).returncode == 0:
        return {}
    bad = {}
    for line in lines:
        result = _analyze([line], 1)
        if result.returncode != 0:
            bad[line] = (result.stderr.strip().splitlines() or ["invalid"])[-1]
    return bad


def normalized(lines) -> dict[str, str]:
    """Each calendar line -> systemd's normalized form (what a timer reports as its calendar),
    from one systemd-analyze call. {} when this machine cannot tell (no systemd-analyze, or it
    refuses a line, e.g. a zone it lacks): the caller then compares the lines as written."""
    # A host's answer is data: a "line" that systemd-analyze would read as an option is left out.
    lines = sorted({line for line in lines if not line.startswith("-")})
    if not lines:
        return {}
    try:
        result = _analyze(lines, 1)
    except ScheduleError:
        return {}
    forms = re.findall(r"^Normalized form: (.*)$", result.stdout, re.M)
    return dict(zip(lines, forms)) if result.returncode == 0 and len(forms) == len(lines) else {}


def next_runs_many(calendars: list[tuple[str, ...]], count: int, base=None) -> list[list]:
    """For each tuple of lines, the next `count` elapses of their union, as systemd computes
    them (UTC datetimes). One systemd-analyze call for all, so that validating 1,000 jobs is
    one process, not 1,000."""
    from datetime import datetime, timezone

    flat = [line for lines in calendars for line in lines]
    if not flat or count <= 0:
        return [[] for _ in calendars]
    result = _analyze(flat, count, base)
    if result.returncode != 0:
        bad = check_calendar_lines(flat)
        raise ScheduleError("systemd refuses " + "; ".join(f"{k!r}: {v}" for k, v in bad.items()))
    blocks = [b for b in result.stdout.split("\n\n") if "Normalized form:" in b]
    if len(blocks) != len(flat):
        raise ScheduleError(f"unexpected systemd-analyze output ({len(blocks)} blocks for {len(flat)} lines)")
    per_line = iter([{datetime.fromisoformat(m).replace(tzinfo=timezone.utc)  # "%Y-%m-%d %H:%M:%S"
                      for m in _ELAPSE.findall(block)} for block in blocks])
    return [sorted(set().union(*(next(per_line) for _ in lines)))[:count] for lines in calendars]


def next_runs(lines: tuple[str, ...], count: int, base=None) -> list:
    return next_runs_many([lines], count, base)[0]


def elapses_between(lines: tuple[str, ...], start: float, end: float, limit: int) -> tuple[list[float], float]:
    """Every elapse of `lines` in [start, end] (unix seconds), at most `limit` counted from
    `start` -> (elapses, the end of the window they cover: `end`, or the last one counted when
    `limit` ran out first). systemd-analyze's cost grows with its iterations, so they start few
    and grow with the density the first answer shows: a daily job's week is one call of 64, not
    `limit` (a history paid 0.13 s for 20,000)."""
    base = datetime.fromtimestamp(start - 1, timezone.utc)
    count = min(limit, 64)
    while True:
        found = [t.timestamp() for t in next_runs(lines, count, base=base)]
        if len(found) < count or found[-1] >= end or count >= limit:
            break
        per_second = count / (found[-1] - start + 1)
        count = min(limit, max(2 * count, int((end - start + 1) * per_second * 1.25) + 16))
    if len(found) == limit and found[-1] < end:
        end = found[-1]  # the schedule is too dense to count the whole window: say up to where
    return [t for t in found if start <= t <= end], end


# --- the longest gap between two runs (the metrics' period) -----------------------------------

# Twelve years from a fixed day: every day pattern repeats within it (Feb 29 included), and the
# result never depends on the day it is computed.
_PERIOD_START = date(2027, 1, 1)
_PERIOD_DAYS = 12 * 366


@functools.lru_cache(maxsize=1024)
def _longest_day_gap(months: frozenset, days: frozenset, weekdays: frozenset, days_star: bool,
                     weekdays_star: bool) -> int:
    """Longest run of days between two matching days of a cron day pattern (0: fewer than two)."""
    cron = CronSchedule("", frozenset(), frozenset(), days, months, weekdays, days_star, weekdays_star)
    matching = [n for n in range(_PERIOD_DAYS) if _cron_day_matches(cron, _PERIOD_START + timedelta(days=n))]
    return max([b - a for a, b in zip(matching, matching[1:])] or [0])


@functools.lru_cache(maxsize=4096)
def cron_period(expression: str) -> int:
    """The longest gap in seconds between two runs of a 5-field cron schedule (or @macro), on
    the wall clock (a clock change moves it by an hour); 0 if it runs fewer than twice in
    twelve years. Pure: a thousand jobs take milliseconds, where systemd-analyze takes minutes."""
    cron = parse_cron(split_zone_prefix(expression)[1])
    times = sorted(h * 3600 + m * 60 for h in cron.hours for m in cron.minutes)
    within = max([b - a for a, b in zip(times, times[1:])] or [0])
    days = _longest_day_gap(cron.months, cron.days, cron.weekdays, cron.days_star, cron.weekdays_star)
    return max(within, days * 86400 - times[-1] + times[0]) if days else within


# --- backfill: is a time a slot of the schedule? ----------------------------------------------

def parse_slot_time(text: str, zone: str) -> float:
    """`2026-12-01T02:00[:00]` in `zone`, or with `Z` / an offset -> unix seconds."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    raw = text.strip()
    try:
        moment = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    except ValueError:
        raise ScheduleError(f"{text!r} is not a time (use 2026-12-01T02:00, in the job's zone, or add Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return moment.timestamp()


def check_slot(lines: tuple[str, ...], when: float, zone: str) -> int:
    """`when` if it is a slot of the calendar, else ScheduleError naming the nearest slots."""
    from datetime import datetime, timezone

    from .host.slot import latest_elapse

    before = latest_elapse(lines, when)
    if before is not None and before == int(when) and when == int(when):
        return int(when)
    after = next_runs(lines, 1, base=datetime.fromtimestamp(when, timezone.utc))
    near = [t for t in (before, after[0].timestamp() if after else None) if t is not None]
    shown = " or ".join(_zoned(t, zone) for t in near) or "none"
    raise ScheduleError(f"{_zoned(when, zone)} is not a slot of the job's schedule; nearest: {shown}")


def _zoned(seconds: float, zone: str) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(seconds, ZoneInfo(zone)).isoformat(timespec="seconds")
