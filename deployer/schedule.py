"""Cron expressions -> systemd OnCalendar= lines, keeping Vixie/Debian cron's exact meaning.

The traps this module exists for:
- cron ORs day-of-month and day-of-week when both are restricted; systemd ANDs the
  weekday with the date. Vixie cron decides "restricted" by whether the field text
  starts with '*' (so `*/2` counts as unrestricted), and we copy that rule.
- cron's @weekly is Sunday; systemd's `weekly` is Monday. We never emit systemd's
  shorthands, only explicit calendar lines.
"""
from __future__ import annotations

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


FIELDS = (
    CronField("minute", 0, 59),
    CronField("hour", 0, 23),
    CronField("day-of-month", 1, 31),
    CronField("month", 1, 12, MONTHS),
    CronField("day-of-week", 0, 7, WEEKDAYS),
)

_ELEMENT = re.compile(r"^(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?$")


def _number(text: str, spec: CronField, expr: str) -> int:
    if text.isdigit():
        value = int(text)
    elif spec.names and text in spec.names:
        value = spec.names.index(text) + (1 if spec.name == "month" else 0)
    else:
        raise ScheduleError(f"cron {expr!r}: {spec.name} field: {text!r} is not a number or name")
    if not spec.low <= value <= spec.high:
        raise ScheduleError(
            f"cron {expr!r}: {spec.name} field: {value} is outside {spec.low}-{spec.high}"
        )
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


def parse_cron(expression: str) -> CronSchedule:
    text = " ".join(expression.split())
    text = MACROS.get(text.lower(), text)
    parts = text.split(" ")
    if len(parts) != 5:
        raise ScheduleError(
            f"cron {expression!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week) or a @macro, got {len(parts)}"
        )
    sets = [parse_field(part, spec, expression) for part, spec in zip(parts, FIELDS)]
    return CronSchedule(expression, *sets, parts[2].startswith("*"), parts[4].startswith("*"))


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


def cron_to_oncalendar(expression: str, timezone: str = "UTC") -> tuple[str, ...]:
    """The OnCalendar= values whose union fires exactly when cron would run `expression`."""
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
        return (line(cron.weekdays, cron.days),)
    # Both restricted: cron runs on either match, systemd would need both.
    return (line(all_weekdays, cron.days), line(cron.weekdays, all_days))


def job_oncalendar(schedule: Optional[str], on_calendar: tuple[str, ...], timezone: str) -> tuple[str, ...]:
    """The calendar lines of a job's timer, from whichever of the two keys it uses."""
    if schedule is not None:
        return cron_to_oncalendar(schedule, timezone)
    return on_calendar
