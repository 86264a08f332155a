"""Alert storms on a real host (issue 23 item 3): 100 jobs of a channel fail at once, and the
channel gets one message (in parts, each "part i of n", when it has a size limit) that names
every one of its jobs exactly once, under the reason its run failed with. Counted at the
receivers: a DingTalk robot and a Slack-style one on loopback."""
from __future__ import annotations

import re

import pytest

import time

from tests.e2e.test_alerts import SECRETS_ENV, alert_inventory, robot, wait_alert_units_idle  # noqa: F401
from tests.httpserver import Reply, json_reply

pytestmark = pytest.mark.e2e

JOBS = 100
# Three ways to fail, so that the message has three groups, each with the runs' own reason.
ROUTES = {"/e500": ("status 500 not expected", ""), "/e503": ("status 503 not expected", ""),
          "/biz": ("code is 1, expected 0", "expect_json = code=0")}
CHANNELS = {"dingtalk": "ops", "slack": "chat"}


def storm_jobs(server, channel: str) -> tuple:
    """{job: reason} and the inventory's job sections (daily: only the storm runs them; a
    timeout that a busy test machine cannot reach, so that each run fails for its own reason)."""
    jobs, sections = {}, ""
    routes = list(ROUTES)
    for i in range(JOBS):
        name = f"{channel}-storm-{i:03d}"
        route = routes[i % len(routes)]
        reason, extra = ROUTES[route]
        jobs[name] = reason
        sections += (f"\n[job:{name}]\nschedule = 0 3 * * *\nurl = {server.url(route)}\nalert = {channel}\n"
                     f"timeout = 120s\n{extra}\n")
    return jobs, sections


def wait_failed(host, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    failed = ""
    while time.monotonic() < deadline:
        failed = host.ssh("systemctl list-units --all --no-legend --plain --state=failed "
                          "'deployer-*-storm-*.service'").stdout
        if len(failed.split("\n")) >= count and failed.count(".service") >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{failed.count('.service')} of {count} storm jobs failed")


def storm_messages(robot, kind: str) -> list:
    """(title, text without markdown's backslashes) of each message the robot took for `kind`."""
    out = []
    for message in robot.accepted:
        if kind == "dingtalk" and "markdown" in message:
            out.append((message["markdown"]["title"], message["markdown"]["text"].replace("\\", "")))
        elif kind == "slack" and "text" in message:
            out.append((message["text"].split("\n", 1)[0], message["text"]))
    return out


def named_by_reason(text: str) -> dict:
    """{job: the group header it is named under} from a storm message's paragraphs."""
    named, header = {}, None
    for paragraph in text.split("\n\n"):
        if re.search(r"\d+ runs? of \d+ jobs?", paragraph):
            header = paragraph
            continue
        for name in re.findall(r"\b(?:ops|chat)-storm-\d{3}\b", paragraph):
            assert name not in named, f"{name} named twice"
            named[name] = header
    return named


@pytest.mark.parametrize("kind", list(CHANNELS))
def test_a_storm_of_100_failed_jobs_is_one_message_per_channel_naming_all_100(
        shared_cron01, server, robot, deployer, write_inventory, kind):  # noqa: F811
    server.routes.update({"/e500": Reply(500, b"settlement exploded"), "/e503": Reply(503, b"busy"),
                          "/biz": json_reply({"code": 1, "msg": "ledger locked"})})
    channel = CHANNELS[kind]
    jobs, sections = storm_jobs(server, channel)
    path = write_inventory(alert_inventory(shared_cron01, robot, server, f"""
[alert:chat]
type = slack
token = ${{T_TOKEN}}
endpoint = {robot.endpoint("slack")}
""" + sections))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    # What the timers of one minute do: PID 1 starts their services in one go (one transaction,
    # as timers elapsing together; `systemctl start` of 100 units would ask for each in turn).
    wants = "".join(f"Wants=deployer-{name}.service\n" for name in jobs)
    try:
        shared_cron01.ssh("cat > /run/systemd/system/storm-test.target && systemctl daemon-reload && "
                          "systemctl start --no-block storm-test.target", input=f"[Unit]\n{wants}", timeout=120)
        # Every run over (systemd has started each one's OnFailure= alert), then no alert busy.
        wait_failed(shared_cron01, len(jobs), timeout=400)
        wait_alert_units_idle(shared_cron01, timeout=400)
    finally:
        shared_cron01.ssh("rm -f /run/systemd/system/storm-test.target && systemctl daemon-reload", check=False)
    assert robot.refused == []

    messages = storm_messages(robot, kind)
    parts = len(messages)
    want = f"deployer: {JOBS} job runs failed on cron01"
    titles = [title.strip("*") for title, _ in messages]
    assert titles == ([want] if parts == 1 else [f"{want} (part {i} of {parts})" for i in range(1, parts + 1)]), \
        f"{titles}\n" + shared_cron01.ssh(f"journalctl --no-pager -o short-precise -u 'deployer-alert-{channel}@*' "
                                          "-g 'message|running|cannot'", check=False).stdout[-6000:]
    assert all(len(text) <= 4000 for _, text in messages)
    named: dict = {}
    for _, text in messages:
        found = named_by_reason(text)
        assert not set(found) & set(named), f"named in two parts: {set(found) & set(named)}"
        named.update(found)
    assert sorted(named) == sorted(jobs), f"{len(set(jobs) - set(named))} of {JOBS} jobs named in no message"
    for name, reason in jobs.items():
        assert f"failed: {reason} (exit-code, exit status 1)" in named[name], (name, named[name])
    for reason in set(jobs.values()):
        count = sum(1 for r in jobs.values() if r == reason)
        assert any(f"failed: {reason} (exit-code, exit status 1): {count} runs of {count} jobs" in text
                   for _, text in messages), reason
