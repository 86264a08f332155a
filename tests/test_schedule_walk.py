"""Issue 12's acceptance walk: every IANA zone, every clock change from 2000 to 2037, a
fixed-time and a wildcard expression at the change, cron (against cronsim) and Quartz
(against tests/quartz_reference.py), expanded by real `systemd-analyze calendar`.
Slow (a few minutes): `pytest -m 'not slow'` skips it in the edit loop; `make test` runs it."""
from __future__ import annotations

import functools
import zoneinfo
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from deployer.schedule import clock_transitions, next_runs_many, to_calendar
from tests.quartz_reference import QuartzReference
from tests.test_schedule import needs_systemd

pytestmark = [pytest.mark.slow, needs_systemd]
LAST = 2037


def expressions(change):
    """Cron and Quartz expressions whose times sit in the change's gap or repeated hour."""
    start, end = change.gap if change.after > change.before else change.repeated
    middle = start + (end - start) / 2
    last = end - timedelta(minutes=1)
    hours = f"{start.hour}-{last.hour}" if last.hour >= start.hour else "*"
    return [("cron", f"{middle.minute} {middle.hour} * * *"), ("cron", f"*/15 {hours} * * *"),
            ("quartz", f"0 {middle.minute} {middle.hour} * * ?"), ("quartz", f"0 0/15 {hours} * * ?")]


@functools.lru_cache(maxsize=None)
def lines_for(expression, zone):
    return to_calendar(expression, (), zone).lines


def cron_window(expression, zone, base, until):
    runs = []
    for moment in CronSim(expression, base.astimezone(ZoneInfo(zone))):
        if moment.astimezone(timezone.utc) >= until:
            return runs
        runs.append(moment.astimezone(timezone.utc))


def check(zone, change):
    base = change.at - timedelta(days=1)
    until = base + timedelta(days=3)
    cases = []
    for kind, expression in expressions(change):
        if kind == "cron":
            expected = cron_window(expression, zone, base, until)
        else:
            expected = QuartzReference(expression, zone).next_runs(base, 1000, until)
        cases.append((expression, lines_for(expression, zone), expected))
    count = max(len(c[2]) for c in cases)
    got = next_runs_many([c[1] for c in cases], count, base)
    return [(zone, change.at, expression, lines) for (expression, lines, expected), runs in zip(cases, got)
            if runs[:len(expected)] != expected]


def test_every_zone_every_change_2000_2037_systemd_matches_cron_and_quartz():
    work = [(zone, change) for zone in sorted(zoneinfo.available_timezones())
            for change in clock_transitions(zone) if change.at.year <= LAST]
    assert len(work) > 10_000
    with ThreadPoolExecutor(4) as pool:
        differences = [d for found in pool.map(lambda w: check(*w), work) for d in found]
    assert differences == [], f"{len(differences)} differences, first: {differences[:5]}"
