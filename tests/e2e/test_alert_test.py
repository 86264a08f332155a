"""`deployer alert test` on a real host: the channel's own alert unit sends the message (its
credentials, signing, sandbox), and the command says what the loopback robot answered."""
from __future__ import annotations

import json

import pytest

from tests.e2e.test_alerts import wait_alert_units_idle
from tests.robots import Robot

pytestmark = pytest.mark.e2e

TOKEN = "tok-SECRET-77aa01"
SECRET = "SEC-SECRET-88bb02"


@pytest.fixture
def robot():
    with Robot(token=TOKEN, secret=SECRET) as running:
        yield running


def inventory(host, robot, server) -> str:
    return host.inventory_host() + f"""
[alert:ops]
type = dingtalk
token = ${{T_TOKEN}}
secret = ${{T_SECRET}}
endpoint = {robot.endpoint("dingtalk")}

[alert:chat]
type = slack
token = ${{T_SLACK}}
endpoint = {robot.endpoint("slack")}

[alert:unused]
type = slack
token = x
endpoint = {robot.endpoint("slack")}

[defaults]
retries = 0

[job:settle]
schedule = 0 3 * * *
url = {server.url("/settle")}
alert = ops

[job:report]
schedule = 0 4 * * *
url = {server.url("/report")}
alert = chat
"""


def test_alert_test_goes_out_signed_through_the_host_and_a_wrong_token_is_refused(
        shared_cron01, server, robot, deployer, write_inventory):
    path = write_inventory(inventory(shared_cron01, robot, server))
    good = {"T_TOKEN": TOKEN, "T_SECRET": SECRET, "T_SLACK": TOKEN}
    deployer("push", "-i", path, env=good, check=True)

    both = deployer("alert", "test", "-i", path, env=good, check=True)
    assert both.stdout.splitlines() == [
        "alert chat (slack) via cron01: accepted (HTTP 200; ok)",
        "alert ops (dingtalk) via cron01: accepted (HTTP 200; errcode 0: ok)"]
    # The robot checked the token and the signature (HMAC of its timestamp with the secret).
    assert robot.refused == [] and len(robot.accepted) == 2
    dingtalk = next(m for m in robot.accepted if "markdown" in m)
    assert dingtalk["markdown"]["title"] == "deployer: test message via ops from cron01"
    slack = next(m for m in robot.accepted if "text" in m)
    assert slack["text"].startswith("deployer: test message via chat from cron01\n")
    assert not server.requests, "a test runs no job"

    one = deployer("alert", "test", "ops", "-i", path, "--json", env=good, check=True)
    document = json.loads(one.stdout)
    assert document["command"] == "alert test" and document["results"] == [
        {"host": "cron01", "channel": "ops", "type": "dingtalk", "result": "accepted", "http_status": 200,
         "answer": "errcode 0: ok"}]

    # Wrong tokens installed on the host (the deployer's environment is not what is tested).
    wrong = {"T_TOKEN": "stale-token", "T_SECRET": SECRET, "T_SLACK": "stale-token"}
    deployer("push", "-i", path, env=wrong, check=True)
    accepted_before = len(robot.accepted)
    refused = deployer("alert", "test", "-i", path, env=good, check=False)
    assert refused.returncode == 1
    assert refused.stdout.splitlines() == [
        "alert chat (slack) via cron01: REFUSED (HTTP 404: no such route)",
        "alert ops (dingtalk) via cron01: REFUSED (HTTP 200; errcode 310000: token)"]
    wait_alert_units_idle(shared_cron01)
    # Sent once each: a refused test is not retried, and its unit does not restart to send it again.
    assert robot.refused == ["token"] and len(robot.accepted) == accepted_before
    assert len([r for r in robot.requests if r.path.startswith("/services/stale-token")]) == 1
    assert TOKEN not in refused.stdout + refused.stderr and "stale-token" not in refused.stdout + refused.stderr


def test_alert_test_names_what_it_cannot_test(shared_cron01, server, robot, deployer, write_inventory):
    path = write_inventory(inventory(shared_cron01, robot, server))
    env = {"T_TOKEN": TOKEN, "T_SECRET": SECRET, "T_SLACK": TOKEN}
    deployer("push", "-i", path, env=env, check=True)
    unused = deployer("alert", "test", "unused", "-i", path, env=env, check=False)
    assert unused.returncode == 1 and unused.stdout == ""
    assert "no job on host cron01 alerts through unused" in unused.stderr
    unknown = deployer("alert", "test", "opz", "-i", path, env=env, check=False)
    assert "no [alert:opz]; did you mean ops?" in unknown.stderr
    assert robot.requests == []
