"""Issue 22 item 2, on a real host: a job every second and one every two seconds, for two minutes.
systemd's default start limit (5 starts in 10 s) refused the sixth start of such a job
(`start-limit-hit`): a lost slot and a false alert through OnFailure=. Every slot must run once."""
from __future__ import annotations

import calendar as calendar_
import json
import time

import pytest

from tests.httpserver import json_reply
from tests.robots import Robot

pytestmark = pytest.mark.e2e

TOKEN = "tok-start-limit"
MINUTES = 2
# systemd's "Starting UNIT..." job message (the start of one invocation of the service).
JOB_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"


# systemd's "Deactivated successfully" (the end of one invocation that succeeded).
UNIT_SUCCESS = "7ad2d189f7e94e70a38c781354912448"


def starts(host, unit: str, since: float, message: str = JOB_STARTING) -> list[float]:
    """When PID 1 started `unit` (one entry per invocation), from its own journal; with
    `message=UNIT_SUCCESS`, when each invocation ended."""
    out = host.ssh(f"journalctl -o json _PID=1 UNIT={unit} MESSAGE_ID={message} --since=@{int(since)}").stdout
    return sorted(int(json.loads(line)["__REALTIME_TIMESTAMP"]) / 1e6 for line in out.splitlines() if line.strip())


def unrun_slots(slot_moments: list[float], started: list[float], ended: list[float]) -> tuple[list, list]:
    """-> (slots no start stands for, those of them that no run was active at). A start is at most
    AccuracySec= (1 s) after its slot. A slot that elapses while the previous run is still going
    starts nothing (the unit is active): on a loaded machine a 1 s job can take longer than 1 s,
    and that is not the start limit (which the journal check below catches by name)."""
    stood_for = {max((slot for slot in slot_moments if slot <= start), default=None) for start in started}
    unrun = [slot for slot in slot_moments if slot not in stood_for]
    runs = list(zip(started, ended))  # one unit's runs never overlap: starts and ends alternate
    unexplained = [slot for slot in unrun if not any(begin <= slot + 1 and end >= slot for begin, end in runs)]
    return unrun, unexplained


def slots(host, calendar: str, after: float, until: float) -> list[float]:
    """The moments `calendar` elapses in (after, until], as systemd computes them."""
    out = host.ssh(f"TZ=UTC systemd-analyze calendar --base-time=@{int(after)} --iterations=400 '{calendar}' "
                   "| sed -n 's/.*\\(Next elapse\\|Iter\\. #[0-9]*\\): *//p'").stdout
    moments = [calendar_.timegm(time.strptime(line.strip()[4:23], "%Y-%m-%d %H:%M:%S"))
               for line in out.splitlines() if line.strip()]
    assert len(moments) == 400, out
    return [m for m in moments if after < m <= until]


def test_jobs_every_one_and_two_seconds_run_every_slot_and_never_hit_the_start_limit(cron01, server, deployer,
                                                                                     write_inventory):
    server.routes["/one"] = json_reply({"code": 0})
    server.routes["/two"] = json_reply({"code": 0})
    with Robot(token=TOKEN) as robot:
        jobs = "".join(f"""
[job:{name}]
on_calendar = {calendar}
url = {server.url('/' + name)}
alert = ops
retries = 0
timeout = 5s
""" for name, calendar in (("one", "*:*:*"), ("two", "*:*:0/2")))
        path = write_inventory(cron01.inventory_host(sandbox="fast") + f"""
[alert:ops]
type = wecom
token = {TOKEN}
endpoint = {robot.endpoint("wecom")}
""" + jobs)
        pushed_at = time.time()
        deployer("push", "-i", path, check=True)
        server.wait_for("/two", timeout=20)
        time.sleep(MINUTES * 60)

        for unit, calendar in (("deployer-one.service", "*:*:*"), ("deployer-two.service", "*:*:0/2")):
            started = starts(cron01, unit, pushed_at)
            ended = starts(cron01, unit, pushed_at, message=UNIT_SUCCESS)
            # A start is at most AccuracySec= (1 s) after its slot: the slots in (first - 1, last]
            # are exactly the ones these starts stand for; each must have one, or have come while
            # the run before it still ran.
            expected = slots(cron01, calendar, started[0] - 1, started[-1])
            assert len(expected) >= MINUTES * 60 // (1 if calendar == "*:*:*" else 2) - 2
            unrun, unexplained = unrun_slots(expected, started, ended)
            print(f"{unit}: {len(started)} runs for {len(expected)} slots; {len(unrun)} slots came while a run went on")
            assert unexplained == [], f"{unit}: {len(started)} runs for {len(expected)} slots; lost: {unexplained}"
        limited = cron01.ssh("journalctl -b --no-pager | grep -i 'start-limit-hit\\|repeated too quickly' || true")
        assert limited.stdout == ""
        # Every start of the metrics finished: none waited out its TimeoutStartSec= for a D-Bus
        # reply PID 1 never sent (a call that arrived with BEGIN: dbus.Connection).
        stuck = cron01.ssh("journalctl -b --no-pager -o cat -u deployer-host@metrics.service "
                           "| grep -i 'start operation timed out\\|Timeout (' || true")
        assert stuck.stdout == "", stuck.stdout
        failed = cron01.ssh("systemctl list-units --failed --plain --no-legend 'deployer-*'").stdout.strip()
        assert failed == "", failed + "\n" + cron01.ssh(
            "journalctl --no-pager -n 40 -u 'deployer-host@*' -u 'deployer-one*' -u 'deployer-two*'").stdout
        assert robot.accepted == [] and robot.refused == []
