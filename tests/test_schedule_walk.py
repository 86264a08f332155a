"""Issue 12's acceptance walk: every IANA zone, every clock change from 2000 to 2037, a
fixed-time and a wildcard expression at each change, cron (against cronsim) and Quartz
(against tests/quartz_reference.py), deployer's lines expanded by real `systemd-analyze
calendar`.

What is covered, precisely:
- Zones: all of `zoneinfo.available_timezones()`. Zones whose clocks agree at every instant
  from 2000 to 2099 (same offset before the first change, same `clock_transitions`, same
  DST flag on each side of each change) form one group: deployer's lines for them differ
  only in the zone's name (they are a function of `clock_transitions` and the name, which
  the walk asserts for every alias), and systemd reads the same offsets and DST flags from
  their tzfiles, so the walk runs once per group, on its first zone by name.
- Changes: every change of each group from 2000 through 2037 (none skipped), in a window
  from 26 hours before to 26 hours after it, so the days before and after are checked too.
- Expressions, per change: cron `M H * * *` and Quartz `0 M H * * ?` at the middle of the
  gap or the repeated time, and cron `*/15 H1-H2 * * *`, Quartz `0 0/15 H1-H2 * * ?` over
  its hours. Every run systemd computes in the window must equal the reference's runs, but
  for the one named class of difference (`known`), whose number is pinned exactly.
- Lines: systemd gets the lines whose years and months can touch the window (see
  `window_lines`; `test_window_lines_drop_only_lines_that_cannot_fire` checks that filter
  against systemd on whole line sets). Calls run two at a time (two processes).
Slow (about 3 minutes on 2 quiet CPUs, 5 under load): `pytest -m 'not slow'` skips it in the edit loop; `make test-slow` runs it (CI runs both).
"""
from __future__ import annotations

import os
import re
import subprocess
import time
import zoneinfo
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from deployer.schedule import clock_transitions, to_calendar
from tests.quartz_reference import QuartzReference
from tests.test_schedule import needs_systemd, systemd_expands_our_lines_to_exactly_crons_run_times

pytestmark = [pytest.mark.slow, needs_systemd]
UTC = timezone.utc
LAST = 2037
AROUND = timedelta(hours=26)
AROUND_WILDCARD = timedelta(hours=6)
NOW = datetime(2026, 11, 25, tzinfo=UTC)
# The one class of difference that remains, named in the README and pinned by
# test_almaty_2024_cron_wildcard_first_pass_is_a_named_difference: clocks set back with the
# same DST flag on both sides (standard time moved, as Russia's in October 2014 or Almaty's
# in 2024; twice DST to DST, Tbilisi 2004 and Tomsk 2002), where systemd reads part of the repeated hour in its second pass, so a cron wildcard
# job misses those first-pass runs. All are before NOW. The walk counts them exactly:
KNOWN_SAME_FLAG_FALL_BACKS = 49

# tests/test_schedule.py's property (cron expressions in random zones and times), walked longer.
test_systemd_expands_our_lines_to_exactly_crons_run_times_1000 = systemd_expands_our_lines_to_exactly_crons_run_times(1000)


def known(zone, change, expression):
    """Is this difference the README's named one (see KNOWN_SAME_FLAG_FALL_BACKS)?"""
    tz = ZoneInfo(zone)
    flags = {bool((change.at - timedelta(seconds=1)).astimezone(tz).dst()), bool(change.at.astimezone(tz).dst())}
    return expression.startswith("*/") and change.after < change.before and len(flags) == 1 and change.at < NOW


def expressions(change):
    """(kind, expression) whose times sit in the change's gap or repeated time."""
    start, end = change.gap if change.after > change.before else change.repeated
    middle = start + (end - start) / 2
    last = end - timedelta(minutes=1)
    hours = f"{start.hour}-{last.hour}" if last.hour >= start.hour and end - start < timedelta(hours=20) else "*"
    return [("cron", f"{middle.minute} {middle.hour} * * *"), ("cron", f"*/15 {hours} * * *"),
            ("quartz", f"0 {middle.minute} {middle.hour} * * ?"), ("quartz", f"0 0/15 {hours} * * ?")]


def zone_key(zone):
    """The clock of `zone` from 2000 to 2099: what deployer's lines and systemd depend on."""
    tz = ZoneInfo(zone)
    changes = clock_transitions(zone)
    start = datetime(2000, 1, 1, tzinfo=UTC).astimezone(tz)
    flags = tuple((bool((c.at - timedelta(seconds=1)).astimezone(tz).dst()), bool(c.at.astimezone(tz).dst()))
                  for c in changes)
    return (start.utcoffset(), bool(start.dst())), changes, flags


_DATE = re.compile(r"^(?:[A-Z][a-z]{2}\S* )?(\S+?)-(\S+?)[-~](\S+) ")


def _numbers(spec, low, high):
    if spec == "*":
        return set(range(low, high + 1))
    values = set()
    for item in spec.split(","):
        first, _, last = item.split("/")[0].partition("..")
        values.update(range(int(first), int(last or first) + 1))
    return values


def window_lines(lines, zone, base, until):
    """The lines whose years and months include a local or UTC date of [base, until]; the
    others cannot fire in the window (days, weekdays and times are not read: keeping a line
    is always safe)."""
    tz, months = ZoneInfo(zone), set()
    moment = base - timedelta(days=1)
    while moment <= until + timedelta(days=1):
        for local in (moment, moment.astimezone(tz)):
            months.add((local.year, local.month))
        moment += timedelta(hours=6)
    kept = []
    for line in lines:
        match = _DATE.match(line)
        years, month_set = _numbers(match.group(1), 1970, 2199), _numbers(match.group(2), 1, 12)
        if any(y in years and m in month_set for y, m in months):
            kept.append(line)
    return kept


_ELAPSE = re.compile(r"(?:Next elapse|Iter\. #\d+): \w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def systemd_window(calendars, base, until, count):
    """For each tuple of lines, every elapse of their union after `base` and before `until`,
    by systemd, in one call; each line is iterated `count` times, and a line still inside the
    window after that is an error (count too small), not a silent cut. (None, error) when
    systemd cannot compute an elapse."""
    flat = [line for lines in calendars for line in lines]
    result = subprocess.run(
        ["systemd-analyze", "calendar", f"--iterations={count}", f"--base-time=@{int(base.timestamp())}", *flat],
        capture_output=True, text=True, env={"TZ": "UTC", "LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        return None, result.stderr.strip().splitlines()[-1:]
    blocks = [b for b in result.stdout.split("\n\n") if "Normalized form:" in b]
    assert len(blocks) == len(flat)
    per_line = []
    for block in blocks:
        found = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for m in _ELAPSE.findall(block)]
        assert len(found) < count or found[-1] >= until, f"{count} iterations do not reach {until}"
        per_line.append({t for t in found if t < until})
    lines = iter(per_line)
    return [sorted(set().union(*(next(lines) for _ in group))) for group in calendars], None


def reference(kind, expression, zone, base, until):
    if kind == "quartz":
        return QuartzReference(expression, zone).next_runs(base, 10_000, until)
    runs = []
    for moment in CronSim(expression, base.astimezone(ZoneInfo(zone))):
        moment = moment.astimezone(UTC)
        if moment >= until:
            return runs
        runs.append(moment)


def walk_group(zone, aliases):
    """Check every change of `zone` 2000-2037; returns (changes, checks, calls, differences)."""
    changes = [c for c in clock_transitions(zone) if c.at.year <= LAST]
    differences, checks, calls, lines_cache = [], 0, 0, {}
    for change in changes:
        jump = timedelta(seconds=abs(change.after - change.before))
        for pair in (expressions(change)[0::2], expressions(change)[1::2]):
            # fixed times: the day before and after too; wildcards: the hours around the change
            around = AROUND if pair[0][1][0] != "*" else max(AROUND_WILDCARD, jump + timedelta(hours=3))
            base, until = change.at - around, change.at + around
            cases = []
            for kind, expression in pair:
                if expression not in lines_cache:
                    lines_cache[expression] = to_calendar(expression, (), zone).lines
                    if change is changes[0]:
                        for alias in aliases:  # the same lines but for the zone's name
                            assert to_calendar(expression, (), alias).lines == tuple(
                                line.replace(f" {zone}", f" {alias}") for line in lines_cache[expression]), alias
                cases.append((expression, tuple(window_lines(lines_cache[expression], zone, base, until)),
                              reference(kind, expression, zone, base, until)))
            got, error = systemd_window([c[1] for c in cases], base, until, max(len(c[2]) for c in cases) + 2)
            calls += 1
            for index, (expression, lines, expected) in enumerate(cases):
                checks += 1
                if error or got[index] != expected:
                    differences.append((zone, change.at.isoformat(), expression, error or (got[index], expected),
                                        error is None and known(zone, change, expression)))
    return len(changes), checks, calls, differences


def _key_of(zone):
    return zone, zone_key(zone)


def test_every_zone_every_change_2000_2037_systemd_matches_cron_and_quartz():
    started = time.monotonic()
    zones = sorted(zoneinfo.available_timezones())
    with ProcessPoolExecutor(2) as pool:
        groups: dict = {}
        for zone, key in pool.map(_key_of, zones, chunksize=20):
            groups.setdefault(key, []).append(zone)
        keyed = time.monotonic()
        walked = [g for key, g in groups.items() if any(c.at.year <= LAST for c in key[1])]
        results = list(pool.map(walk_group, [g[0] for g in walked], [g[1:] for g in walked]))
    changes = sum(r[0] for r in results)
    checks = sum(r[1] for r in results)
    differences = [d[:4] for r in results for d in r[3] if not d[4]]
    named = [d[:3] for r in results for d in r[3] if d[4]]
    summary = (f"walk: {len(zones)} zones, {len(groups)} distinct clocks ({len(walked)} with changes "
               f"2000-{LAST}), {changes} changes, {checks} checks, {sum(r[2] for r in results)} "
               f"systemd-analyze calls, {keyed - started:.0f} s grouping + "
               f"{time.monotonic() - keyed:.0f} s walking on {os.cpu_count()} CPUs; "
               f"{len(named)} named differences (set back, same DST flag)")
    print(summary)
    assert len(zones) > 500 and changes > 5_000
    assert differences == [], f"{len(differences)} differences, first: {differences[:5]}\n{summary}"
    assert len(named) == KNOWN_SAME_FLAG_FALL_BACKS, named


@pytest.mark.parametrize("zone, expression, at", [
    pytest.param("America/New_York", "0 0/15 1-1 * * ?", datetime(2012, 11, 4, 6, tzinfo=UTC), id="new-york-quartz"),
    pytest.param("Asia/Hebron", "0 0/15 0-0 * * ?", datetime(2022, 10, 28, 22, tzinfo=UTC), id="hebron-quartz"),
    pytest.param("Pacific/Chatham", "*/15 2-3 * * *", datetime(2027, 9, 25, 14, tzinfo=UTC), id="chatham-cron"),
    pytest.param("Pacific/Chatham", "0 45 2 * * ?", datetime(2030, 9, 28, 14, tzinfo=UTC), id="chatham-quartz"),
])
def test_window_lines_drop_only_lines_that_cannot_fire(zone, expression, at):
    """The walk's filter against systemd: all of the lines and the kept ones fire alike in
    the window (and the filter does drop lines, or it would prove nothing)."""
    lines = to_calendar(expression, (), zone).lines
    base, until = at - AROUND, at + AROUND
    kept = window_lines(lines, zone, base, until)
    assert len(kept) < len(lines)
    (everything, kept_runs), error = systemd_window([lines, tuple(kept)], base, until, 200)
    assert error is None and everything == kept_runs and everything
