"""A small model of Quartz's CronExpression.getTimeAfter, as a reference for the tests.

Where the semantics come from (quartz-scheduler/quartz, org/quartz/CronExpression.java):
getTimeAfter walks a java.util.GregorianCalendar in the trigger's zone field by field
(second, minute, hour, day, month, year), setting wall-clock fields and reading them back.
Java resolves a wall time that happens twice to the later instant (the offset after the
change) and a wall time swallowed by a forward jump to the instant after the jump, which
then reads as another hour, so setCalendarHour and the next loop move on. The result,
for a trigger that keeps running: every matching wall time that exists fires once, a
repeated one in its second pass, a swallowed one not at all.

This model covers the syntax the walk uses (numbers, ranges, lists, `*`, `?`, `a/b`).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo


def _field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for element in text.split(","):
        part, _, step = element.partition("/")
        if part in ("*", "?"):
            first, last = low, high
        elif "-" in part:
            first, last = map(int, part.split("-"))
        else:
            first = int(part)
            last = high if step else first
        values.update(range(first, last + 1, int(step or 1)))
    return values


class QuartzReference:
    def __init__(self, expression: str, zone: str):
        sec, minute, hour, dom, month, dow = expression.split()[:6]
        self.seconds, self.minutes = _field(sec, 0, 59), _field(minute, 0, 59)
        self.hours, self.months = _field(hour, 0, 23), _field(month, 1, 12)
        self.days = None if dom == "?" else _field(dom, 1, 31)
        self.weekdays = None if dow == "?" else _field(dow, 1, 7)  # 1 = Sunday
        self.zone = ZoneInfo(zone)

    def _day(self, day) -> bool:
        if day.month not in self.months:
            return False
        if self.days is not None:
            return day.day in self.days
        return (day.weekday() + 1) % 7 + 1 in self.weekdays

    def next_runs(self, base: datetime, count: int, until: datetime | None = None) -> list[datetime]:
        """The first `count` UTC fire times strictly after `base` (and before `until`)."""
        runs: list[datetime] = []
        day = (base.astimezone(self.zone) - timedelta(days=1)).date()
        last_day = (until.astimezone(self.zone) + timedelta(days=1)).date() if until else None
        while len(runs) < count and (last_day is None or day <= last_day):
            if self._day(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        for second in sorted(self.seconds):
                            wall = datetime(day.year, day.month, day.day, hour, minute, second)
                            moment = wall.replace(tzinfo=self.zone, fold=1)
                            if moment.astimezone(timezone.utc).astimezone(self.zone).replace(tzinfo=None) != wall:
                                continue  # swallowed by a jump forward
                            utc = moment.astimezone(timezone.utc)
                            if utc > base:
                                runs.append(utc)
            day += timedelta(days=1)
        return [t for t in sorted(runs) if until is None or t < until][:count]
