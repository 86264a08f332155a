"""cron -> OnCalendar, checked against real systemd (`systemd-analyze calendar`) and cronsim."""
from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer.errors import ScheduleError
from deployer.schedule import cron_to_oncalendar

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
    it = CronSim(expression, base.astimezone(ZoneInfo(zone)))
    runs = []
    for moment in it:
        runs.append(moment.astimezone(timezone.utc))
        if len(runs) == count:
            break
    return runs


@needs_systemd
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression=cron_expressions, zone=st.sampled_from(ZONES),
       base=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31)))
def test_systemd_expands_our_lines_to_exactly_crons_run_times(expression, zone, base):
    base = base.replace(second=0, microsecond=0, tzinfo=timezone.utc)
    lines = list(cron_to_oncalendar(expression, zone))
    # Both tools start strictly after `base`.
    assert systemd_runs(lines, base, ITERATIONS) == cron_runs(expression, zone, base, ITERATIONS), \
        (expression, zone, lines)
