"""Alert storms on a real host (issue 23 item 3): the jobs of two channels fail in the same
second, fired by their own timers, and each channel gets exactly one message that names every
one of its jobs exactly once, under the reason its run failed with. Counted at the receivers
(a DingTalk robot and a Slack-style one on loopback), never judged by the clock."""
from __future__ import annotations

import re
import time

import pytest

from tests.e2e.test_alerts import SECRETS_ENV, alert_inventory, robot, wait_alert_units_idle  # noqa: F401
from tests.httpserver import Reply, json_reply

pytestmark = pytest.mark.e2e

# Three ways to fail, so that each message has three groups, each with the runs' own reason.
ROUTES = {"/e500": ("status 500 not expected", ""), "/e503": ("status 503 not expected", ""),
          "/biz": ("code is 1, expected 0", "expect_json = code=0")}
# channel -> (robot kind, jobs): 100 on the DingTalk robot (the count), 20 on Slack.
CHANNELS = {"ops": ("dingtalk", 100), "chat": ("slack", 20)}
NAME = re.compile(r"\b(?:ops|chat)-storm-\d{3}\b")


def storm_jobs(server, at: int) -> tuple:
    """{channel: {job: reason}} and the inventory's job sections. All at the one second `at`
    (unix seconds, UTC; a calendar that names it, not a period, so that a push taking a while
    still starts every timer for the same moment: one storm); a timeout that a busy test
    machine cannot reach, so that each run fails for its own reason."""
    moment = time.strftime("%H:%M:%S", time.gmtime(at))
    jobs: dict = {channel: {} for channel in CHANNELS}
    sections = ""
    routes = list(ROUTES)
    for channel, (_, count) in CHANNELS.items():
        for i in range(count):
            name = f"{channel}-storm-{i:03d}"
            route = routes[i % len(routes)]
            reason, extra = ROUTES[route]
            jobs[channel][name] = reason
            sections += (f"\n[job:{name}]\non_calendar = *-*-* {moment}\ntimezone = UTC\n"
                         f"url = {server.url(route)}\nalert = {channel}\n"
                         f"timeout = 120s\n{extra}\n")
    return jobs, sections


STORM_LEAD = 40  # seconds from now to the storm: the push of 120 jobs on a loaded machine


def fired(host) -> int:
    """How many storm services the timers have started (running, or failed already)."""
    return len(host.ssh("systemctl list-units --all --no-legend --plain 'deployer-*-storm-*.service' "
                        "--state=activating,active,deactivating,failed").stdout.split("\n")) - 1


def messages_of(robot, kind: str) -> list:
    """(title, text without markdown's backslashes) of each message the robot took for `kind`."""
    out = []
    for message in list(robot.accepted):
        if kind == "dingtalk" and "markdown" in message:
            out.append((message["markdown"]["title"], message["markdown"]["text"].replace("\\", "")))
        elif kind == "slack" and "text" in message:
            out.append((message["text"].split("\n", 1)[0].strip("*"), message["text"]))
    return out


def named_by_reason(text: str) -> dict:
    """{job: the group header it is named under} from a storm message's paragraphs."""
    named, header = {}, None
    for paragraph in text.split("\n\n"):
        if re.search(r"\d+ runs? of \d+ jobs?", paragraph):
            header = paragraph.strip("*")  # DingTalk's markdown bold, Slack's
            continue
        for name in NAME.findall(paragraph):
            assert name not in named, f"{name} named twice"
            named[name] = header
    return named


def test_a_storm_of_100_failed_jobs_is_one_message_per_channel_naming_every_job(
        shared_cron01, server, robot, deployer, write_inventory):  # noqa: F811
    server.routes.update({"/e500": Reply(500, b"settlement exploded"), "/e503": Reply(503, b"busy"),
                          "/biz": json_reply({"code": 1, "msg": "ledger locked"})})
    storm_at = int(time.time()) + STORM_LEAD
    jobs, sections = storm_jobs(server, storm_at)
    total = sum(len(names) for names in jobs.values())
    path = write_inventory(alert_inventory(shared_cron01, robot, server, f"""
[alert:chat]
type = slack
token = ${{T_TOKEN}}
endpoint = {robot.endpoint("slack")}
""" + sections))
    began = time.monotonic()
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    print(f"push: {time.monotonic() - began:.1f} s")
    assert time.time() < storm_at, "the push ended after the storm's moment: its timers wait for tomorrow"
    # The timers fire at the storm's moment: every storm job starts then, in one go of PID 1.
    # Stopped once they all have (nothing more is due today; the shared host's reset removes them).
    deadline = time.monotonic() + 150
    while fired(shared_cron01) < total:
        assert time.monotonic() < deadline, f"{fired(shared_cron01)} of {total} storm jobs started"
        time.sleep(0.5)
    shared_cron01.ssh("systemctl stop 'deployer-*-storm-*.timer'")
    print(f"all {total} fired: {time.monotonic() - began:.1f} s")

    # Wait for what the receivers record: every job named (or the time out), then no alert busy.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        named = {name for kind, _ in CHANNELS.values() for _, text in messages_of(robot, kind)
                 for name in NAME.findall(text)}
        if named >= {name for names in jobs.values() for name in names}:
            break
        time.sleep(1)
    print(f"all named: {time.monotonic() - began:.1f} s")
    unnamed = sorted({name for names in jobs.values() for name in names} - named)
    if unnamed:
        print(f"{len(unnamed)} never named: {unnamed}")
        print(shared_cron01.ssh(f"systemctl list-units --all --no-legend --plain 'deployer-{unnamed[0]}.service' "
                                f"'deployer-alert-*@{unnamed[0]}.service'; journalctl --no-pager -o short-precise "
                                f"-u 'deployer-alert-*@{unnamed[0]}.service' -u 'deployer-{unnamed[0]}.service'",
                                check=False).stdout[-6000:])
    wait_alert_units_idle(shared_cron01, timeout=300)
    print(f"alerts idle: {time.monotonic() - began:.1f} s")
    assert robot.refused == []

    log = shared_cron01.ssh("journalctl --no-pager -o short-precise -u 'deployer-alert-*' "
                            "-g 'in one message|waiting|gathered|cannot'", check=False).stdout[-4000:]
    print(log)
    for channel, (kind, count) in CHANNELS.items():
        messages = messages_of(robot, kind)
        # Exactly one message per channel (100 names fit in one: no "part i of n").
        assert [title for title, _ in messages] == [f"deployer: {count} job runs failed on cron01"], \
            f"{channel}: {[title for title, _ in messages]}\n{log}"
        (_, text), = messages
        assert len(text) <= 4000
        named = named_by_reason(text)
        assert sorted(named) == sorted(jobs[channel]), \
            f"{channel}: {len(set(jobs[channel]) - set(named))} of {count} jobs named in no message"
        # Each job under the reason its run gave: the route's, or (a loaded test server can fail a
        # call otherwise) the one the run wrote in its journal ("job NAME: FAILED (REASON)").
        for name, reason in jobs[channel].items():
            if not named[name].startswith(f"failed: {reason} (exit-code, exit status 1): "):
                said = shared_cron01.ssh(f"journalctl --no-pager -o cat -u deployer-{name}.service "
                                         f"-g '^job {name}: FAILED'", check=False).stdout.strip()
                reason = said.split("FAILED (", 1)[1][:-1] if "FAILED (" in said else reason
                print(f"{name}: its run said {said!r}")
            assert named[name].startswith(f"failed: {reason} (exit-code, exit status 1): "), (name, named[name])
        for header in set(named.values()):
            count = sum(1 for h in named.values() if h == header)
            assert header.endswith(f": {count} run{'s' if count > 1 else ''} of {count} job{'s' if count > 1 else ''}"), header


def test_a_lone_failure_is_a_message_of_its_own_and_is_not_held_back_for_a_storm(
        shared_cron01, server, robot, deployer, write_inventory):  # noqa: F811
    """A lone failure has nothing of its channel in flight: its alert sends it after the quiet
    (GATHER_QUIET), never after a storm's waits. Judged by what the alert recorded; the delay
    from the run's failure to the message is printed, not judged (a busy machine is slow)."""
    server.routes["/e500"] = Reply(500, b"settlement exploded")
    path = write_inventory(alert_inventory(shared_cron01, robot, server,
                                           "\n[job:lone]\nschedule = 0 3 * * *\nurl = " + server.url("/e500") + "\n"))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    deployer("run", "lone", "-i", path, env=SECRETS_ENV, check=False)
    robot.wait_accepted(1, timeout=120)
    wait_alert_units_idle(shared_cron01, timeout=120)
    assert [m["markdown"]["title"] for m in robot.accepted] == ["deployer: job lone FAILED on cron01"]
    said = shared_cron01.ssh("journalctl --no-pager -o cat -u 'deployer-alert-ops@lone.service' "
                             "-g 'in one message|waiting|gathered'").stdout
    assert said.startswith("1 event(s) in one message, the oldest queued ") and "waiting" not in said, said
    queued = float(said.split("the oldest queued ")[1].split(" s ago")[0])
    stamps = shared_cron01.ssh(
        "journalctl --no-pager -o json --output-fields=MESSAGE -u deployer-lone.service -u 'deployer-alert-ops@lone.service' "
        "| python3 -c 'import json,sys\n"
        "for l in sys.stdin:\n e=json.loads(l); m=str(e.get(\"MESSAGE\"))\n"
        " if \"Failed with result\" in m or \"accepted\" in m: print(int(e[\"__REALTIME_TIMESTAMP\"])/1e6, m[:60])'").stdout
    print(f"lone failure: alert held {queued} s after queuing\n{stamps}")
