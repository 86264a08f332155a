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
from typing import Optional

from .errors import ScheduleError

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
    if len(parts) != 5:
        raise ScheduleError(
            f"cron {expression!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week), a @macro, or 6-7 Quartz fields; got {len(parts)}"
        )
    sets = [parse_field(part, spec, expression) for part, spec in zip(parts, FIELDS)]
    return CronSchedule(expression, *sets, parts[2].startswith("*"), parts[4].startswith("*"),
                        not parts[0].startswith("*") and not parts[1].startswith("*"))


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
    time = (
        f"{_compress(cron.hours, 0, 23, 2)}:{_compress(cron.minutes, 0, 59, 2)}:00"
    )
    month = _compress(cron.months, 1, 12, 2)
    zone = f" {timezone}" if timezone else ""

    def line(weekdays: frozenset[int], days: frozenset[int]) -> str:
        return f"{_weekdays(weekdays)}*-{month}-{_compress(days, 1, 31, 2)} {time}{zone}"

    all_days, all_weekdays = frozenset(range(1, 32)), frozenset(range(7))
    if cron.days_star or cron.weekdays_star:
        lines = [line(cron.weekdays, cron.days)]
    else:
        # Both restricted: cron runs on either match, systemd would need both.
        lines = [line(all_weekdays, cron.days), line(cron.weekdays, all_days)]
    if timezone:
        extras = dst_catch_up_lines(cron, timezone) if cron.fixed_time else dst_repeat_lines(cron, timezone)
        lines += [extra for extra in extras if extra not in lines]
    return tuple(lines)


# --- daylight saving time: Debian cron runs a skipped fixed time right after the jump ---------
#
# When clocks spring forward (02:00 -> 03:00), Debian cron runs each fixed-time job whose time
# fell in the gap once, right after the jump; systemd simply skips that day. The zone's
# current rule (the POSIX TZ string ending its TZif file, e.g. EST5EDT,M3.2.0,M11.1.0) says
# on which day of which month the gap comes, which a calendar line can express: "second
# Sunday of March" is `Sun *-03-08..14`, "last Sunday" is `Sun *-03~07/1`. Falling back
# needs nothing: cron runs a repeated fixed time once, and so does systemd.


@dataclass(frozen=True)
class Gap:
    """A clock change on the day a rule names. Forward (`length` > 0): local times
    [start, start + length) do not exist. Backward (`length` < 0): local times
    [start + length, start) happen twice, the second time at UTC offset `offset_after`."""

    month: int
    week: int  # 1..4, or 5 = the last
    weekday: int  # 0 = Sunday
    day_after: bool  # the jump happens on the day after that weekday (a "24:00" rule)
    start: int  # seconds after local midnight, in the time before the change
    length: int  # seconds: positive forward, negative backward
    offset_after: int = 0  # seconds east of UTC after the change


_POSIX_OFFSET = r"[+-]?\d{1,3}(?::\d{2}){0,2}"
_POSIX_NAME = r"(?:<[^>]+>|[A-Za-z]{3,})"
_POSIX_TZ = re.compile(rf"^{_POSIX_NAME}({_POSIX_OFFSET})(?:{_POSIX_NAME}({_POSIX_OFFSET})?,([^,]+),([^,]+))?$")
_POSIX_RULE = re.compile(r"^M(\d{1,2})\.([1-5])\.([0-6])(?:/(" + _POSIX_OFFSET + r"))?$")


def _posix_seconds(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    parts = [int(p) for p in text.lstrip("+-").split(":")] + [0, 0]
    return sign * (parts[0] * 3600 + parts[1] * 60 + parts[2])


def _posix_tz(zone: str) -> str:
    import zoneinfo
    from pathlib import Path

    for root in list(zoneinfo.TZPATH):
        path = Path(root) / zone
        if path.is_file():
            return path.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("ascii", "replace")
    return ""


def dst_gaps(zone: str) -> tuple[Gap, ...]:
    """The forward jumps in `zone`'s current rule (none for UTC, Asia/Shanghai...)."""
    return tuple(change for change in clock_changes(zone) if change.length > 0)


def dst_overlaps(zone: str) -> tuple[Gap, ...]:
    return tuple(change for change in clock_changes(zone) if change.length < 0)


@functools.lru_cache(maxsize=None)
def clock_changes(zone: str) -> tuple[Gap, ...]:
    """Both clock changes of `zone`'s current DST rule."""
    match = _POSIX_TZ.match(_posix_tz(zone))
    if not match or not match.group(3):
        return ()
    standard = -_posix_seconds(match.group(1))  # POSIX offsets count west: EST5 is UTC-5
    daylight = -_posix_seconds(match.group(2)) if match.group(2) else standard + 3600
    gaps = []
    for rule, change, after in ((match.group(3), daylight - standard, daylight),
                                (match.group(4), standard - daylight, standard)):
        parsed = _POSIX_RULE.match(rule)
        if not parsed:
            raise ScheduleError(f"time zone {zone}: DST rule {rule!r} cannot be expressed in systemd")
        month, week, weekday, at = (int(g) if i < 3 else g for i, g in enumerate(parsed.groups()))
        start = _posix_seconds(at) if at else 7200
        day_after = start >= 86400 and week < 5  # "24:00 on Saturday" (Chile): 00:00 on Sunday
        if day_after:
            start, weekday = start - 86400, (weekday + 1) % 7
        gaps.append(Gap(month, week, weekday, day_after, start, change, after))
    return tuple(gaps)


def _change_days(change: Gap, cron: CronSchedule) -> frozenset[int]:
    """The days of the change's month on which it may fall and on which the job runs."""
    import calendar

    if change.week == 5:  # the last such weekday: in the month's last seven days
        last = calendar.monthrange(2001, change.month)[1]
        days = frozenset(range(last - 6, last + 1))
    else:  # the n-th such weekday (or the day after it)
        first = change.week * 7 - 6 + change.day_after
        days = frozenset(range(first, first + 7))
    by_weekday = change.weekday in cron.weekdays
    if cron.days_star or cron.weekdays_star:  # cron ANDs the two day fields
        return days & cron.days if by_weekday else frozenset()
    return days if by_weekday else days & cron.days  # cron ORs them


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:00"


def dst_catch_up_lines(cron: CronSchedule, zone: str) -> list[str]:
    """Lines that run `cron` right after a forward jump that swallowed one of its times."""
    lines = []
    for gap in dst_gaps(zone):
        swallowed = any(gap.start <= h * 3600 + m * 60 < gap.start + gap.length
                        for h in cron.hours for m in cron.minutes)
        if not swallowed or gap.month not in cron.months:
            continue
        after = gap.start + gap.length
        if gap.month == 2 or not 0 <= gap.start < after < 86400:
            raise ScheduleError(f"cron {cron.expression!r}: the DST change in {zone} cannot be expressed")
        days = _change_days(gap, cron)
        if days:
            lines.append(f"{SYSTEMD_WEEKDAYS[gap.weekday]} *-{gap.month:02d}-{_compress(days, 1, 31, 2)} "
                         f"{_clock(after)} {zone}")
    return lines


def dst_repeat_lines(cron: CronSchedule, zone: str) -> list[str]:
    """Lines for the second pass through a repeated hour, which Debian cron gives wildcard
    jobs and systemd skips: the same wall-clock times at the fixed offset in force after
    the change (Etc/GMT-10 is UTC+10). Zones whose offset is not whole hours have no such
    name in tzdata; there systemd's single pass stands (a documented limitation)."""
    lines = []
    for overlap in dst_overlaps(zone):
        if overlap.month not in cron.months or overlap.month == 2 or overlap.offset_after % 3600:
            continue
        low, high = overlap.start + overlap.length, overlap.start
        if not 0 <= low < high <= 86400:
            continue
        days = _change_days(overlap, cron)
        hours = sorted(h for h in cron.hours if any(low <= h * 3600 + m * 60 < high for m in cron.minutes))
        if not days or not hours:
            continue
        offset_hours = overlap.offset_after // 3600
        fixed = "UTC" if offset_hours == 0 else f"Etc/GMT{-offset_hours:+d}"
        for hour in hours:
            minutes = frozenset(m for m in cron.minutes if low <= hour * 3600 + m * 60 < high)
            lines.append(f"{SYSTEMD_WEEKDAYS[overlap.weekday]} *-{overlap.month:02d}-{_compress(days, 1, 31, 2)} "
                         f"{hour:02d}:{_compress(minutes, 0, 59, 2)}:00 {fixed}")
    return lines


# --- Quartz (xxl-job, ElasticJob): sec min hour dom month dow [year] -------------------------

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
    """Quartz lists, ranges and steps; `N/step` means N to the maximum, every step."""
    values: set[int] = set()
    for element in text.lower().split(","):
        match = _QUARTZ_ELEMENT.match(element)
        if not match:
            raise ScheduleError(f"quartz {expr!r}: {spec.name} field: {element!r} cannot be expressed "
                                "in systemd (or is not Quartz syntax)")
        star, first, last, step = match.groups()
        low = spec.low if star else _quartz_number(first, spec, expr)
        high = spec.high if star or (last is None and step) else \
            _quartz_number(last, spec, expr) if last is not None else low
        if high < low:
            raise ScheduleError(f"quartz {expr!r}: {spec.name} field: range {element!r} runs backwards")
        stride = int(step) if step else 1
        if stride == 0:
            raise ScheduleError(f"quartz {expr!r}: {spec.name} field: step 0 in {element!r}")
        values.update(range(low, high + 1, stride))
    return frozenset(values)


def _quartz_days(dom: str, expr: str) -> list[str]:
    """Day-of-month -> systemd day parts (`-01,15`, `~01`...); several parts are OR-ed lines."""
    dom = dom.upper()
    if dom in ("?", "*"):
        return ["-*"]
    if dom == "L":
        return ["~01"]
    match = re.fullmatch(r"L-(\d+)", dom)
    if match:
        back = int(match.group(1))
        if back > 27:
            raise ScheduleError(f"quartz {expr!r}: day-of-month: L-{back} goes back further than any month")
        return [f"~{back + 1:02d}"]
    if dom == "LW":  # the last weekday: the last day if a weekday, else the Friday before it
        return ["MF~01", "Fri~02", "Fri~03"]
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
    if re.search(r"[LW#]", dow):
        raise ScheduleError(f"quartz {expr!r}: day-of-week: {dow!r} cannot be expressed in systemd")
    return frozenset(v - 1 for v in _quartz_field(dow, QUARTZ_FIELDS[5], expr)), ""


def quartz_to_oncalendar(expression: str, timezone: str = "UTC") -> tuple[str, ...]:
    timezone = systemd_zone(timezone)
    parts = expression.split()
    if len(parts) not in (6, 7):
        raise ScheduleError(f"quartz {expression!r}: expected 6 or 7 fields, got {len(parts)}")
    sec, minute, hour, dom, month, dow = parts[:6]
    if (dom == "?") == (dow == "?"):
        raise ScheduleError(f"quartz {expression!r}: put '?' in exactly one of day-of-month and "
                            "day-of-week (Quartz does not combine them)")
    time = ":".join(_compress(_quartz_field(f, QUARTZ_FIELDS[i], expression), 0, 23 if i == 2 else 59, 2)
                    for i, f in ((2, hour), (1, minute), (0, sec)))
    months = _compress(_quartz_field(month, QUARTZ_FIELDS[4], expression), 1, 12, 2)
    years = _compress(_quartz_field(parts[6], QUARTZ_FIELDS[6], expression), 1970, 2099, 4) \
        if len(parts) == 7 else "*"
    weekdays, implied_day = _quartz_weekdays(dow, expression)
    lines = []
    for day in ([implied_day] if implied_day else _quartz_days(dom, expression)):
        names = _weekdays(weekdays).strip()
        for prefix, weekday in (("MF", "Mon..Fri"), ("Fri", "Fri"), ("Mon", "Mon")):
            if day.startswith(prefix):
                day, names = day[len(prefix):], weekday
        lines.append(f"{names + ' ' if names else ''}{years}-{months}{day} {time} {timezone}".strip())
    return tuple(lines)


# --- one entry point for every kind of schedule ---------------------------------------------

_TZ_PREFIX = re.compile(r"^\s*(?:CRON_)?TZ=(\S+)\s+(.*)$")


@dataclass(frozen=True)
class Calendar:
    """What a timer needs: OnCalendar= lines (in their zone), or `on_boot` for @reboot."""

    lines: tuple[str, ...]
    timezone: str
    on_boot: bool = False


def is_zone(name: str) -> bool:
    """An IANA time zone this machine's tzdata knows (what systemd accepts too)."""
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
        return True
    except (ValueError, KeyError, OSError):
        return False


def has_zone(line: str) -> bool:
    """Does a native calendar line end in a time zone (`UTC` or an IANA name)?"""
    last = line.split()[-1] if line.split() else ""
    return (last == "UTC" or "/" in last) and is_zone(last)


def to_calendar(schedule: Optional[str], on_calendar: tuple[str, ...], timezone: str = "UTC") -> Calendar:
    """A job's schedule (cron, @macro, CRON_TZ=..., Quartz) or native lines -> Calendar."""
    if schedule is None:
        return Calendar(tuple(line if has_zone(line) else f"{line} {systemd_zone(timezone)}"
                              for line in on_calendar), timezone)
    text = schedule.strip()
    prefixed = _TZ_PREFIX.match(text)
    if prefixed:
        timezone, text = prefixed.group(1), prefixed.group(2).strip()
        if not is_zone(timezone):
            raise ScheduleError(f"{schedule!r}: {timezone!r} is not an IANA time zone")
    if text.lower() == "@reboot":
        return Calendar((), timezone, on_boot=True)
    if len(text.split()) in (6, 7):
        return Calendar(quartz_to_oncalendar(text, timezone), timezone)
    return Calendar(cron_to_oncalendar(text, timezone), timezone)


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
    per_line = iter([{datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
                      for m in _ELAPSE.findall(block)} for block in blocks])
    return [sorted(set().union(*(next(per_line) for _ in lines)))[:count] for lines in calendars]


def next_runs(lines: tuple[str, ...], count: int, base=None) -> list:
    return next_runs_many([lines], count, base)[0]
