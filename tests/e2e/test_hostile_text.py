"""Issue 22 items 4, 5 and 9 on a real cron host: a service's body full of terminal escapes and
chat markup, and a 401 page that echoes the request's secrets, through `deployer run`, `deployer
logs`, the host's journal and the alert channel."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.test_alerts import wait_alert_units_idle
from tests.httpserver import Reply
from tests.robots import Robot

pytestmark = pytest.mark.e2e

# Clear screen, cursor home and moves, OSC 0 (window title), OSC 8 (a link), bell, backspaces,
# a carriage return, 8-bit CSI and OSC, DEL: what the probe sent.
EVIL_BODY = ("\x1b[2J\x1b[H\x1b[5;5H\x1b]0;owned\x07\x1b]8;;http://evil.example/\x1b\\click me\x1b]8;;\x1b\\"
             "ok\b\b\bFAILED\rall good\xc2\x9b2J\xc2\x9d0;t\x07\x7f <!channel> [login](http://evil.example/)"
             ).encode("latin-1")
# What no byte of the output may be: ESC (CSI, OSC), 8-bit CSI/OSC/ST, BEL, BS, CR, DEL.
RAW = re.compile("[\x1b\x9b\x9d\x9c\x07\x08\r\x7f]")

BEARER = "brr-SECRET-5d1e9f0a77"
SIGNING = "sig-SECRET-c3c3c3c3"
TOKEN = "tok-SECRET-slack-01"


def follow_logs(path: str, home) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    environment["HOME"] = str(home)
    # -n 50: the run's lines whether the follower is ready before the run or only after it (a
    # loaded machine takes seconds to start it); the follower prints both the same way.
    # -X faulthandler: a follower that printed nothing is aborted and says where it was.
    return subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "deployer", "logs", "evil", "-f", "-n", "50",
                             "-i", path],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment)


def stop_following(process: subprocess.Popen, until: str, timeout: float = 60) -> str:
    """What `logs -f` printed by the time `until` showed up (then Ctrl-C), bytes as they came."""
    os.set_blocking(process.stdout.fileno(), False)
    printed, deadline = b"", time.monotonic() + timeout
    while until.encode() not in printed and time.monotonic() < deadline and process.poll() is None:
        printed += process.stdout.read() or b""
        time.sleep(0.1)
    process.send_signal(signal.SIGINT if printed else signal.SIGABRT)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    printed += process.stdout.read() or b""
    return printed.decode("utf-8", "replace")


def test_issue22_4_run_and_logs_print_no_raw_escape(cron01, server, deployer, write_inventory, isolated_home):
    """Before: the body's escapes reached the operator's terminal raw through `run`, `logs` and
    `logs -f` (cleared it, retitled it, rewrote `FAILED` as `ok`)."""
    server.routes["/evil"] = Reply(500, EVIL_BODY, content_type="text/plain")
    path = write_inventory(cron01.inventory_host() + f"""
[job:evil]
schedule = 0 3 * * *
url = {server.url("/evil")}
retries = 0
timeout = 10s
""")
    deployer("push", "-i", path, check=True)
    ran = deployer("run", "evil", "-i", path, check=False)
    logs = deployer("logs", "evil", "-i", path, check=True)
    # After the run: `-n 50` prints its lines through the follow path whenever the follower is
    # ready. (A follower started before the run sometimes saw nothing new for a minute while six
    # hosts ran side by side on this machine: not understood yet; this test is about escaping.)
    follow = follow_logs(path, isolated_home)
    # Until the attempt's line, the one with the body's escapes: the run's record (which also says
    # "status 500 not expected") may reach the journal before its stdout lines.
    followed = stop_following(follow, until="\\e]0;owned\\a")
    assert ran.returncode == 1 and server.received("/evil")
    for name, printed in (("run", ran.stdout + ran.stderr), ("logs", logs.stdout + logs.stderr),
                          ("logs -f", followed)):
        assert "status 500 not expected" in printed, f"{name}: {printed}"
        found = RAW.findall(printed)
        assert not found, f"deployer {name} printed raw {found!r}: {printed!r}"
        assert "\\e[2J\\e[H" in printed and "\\e]0;owned\\a" in printed, f"{name}: escapes not shown visibly"


def test_issue22_5_9_an_echoed_secret_reaches_no_journal_output_or_alert(cron01, server, deployer,
                                                                         write_inventory):
    """Before: the 401 page's `Authorization: Bearer ...` went into the journal, `run`'s output
    and the alert; and its `<!channel>` into Slack raw."""

    def echo(record) -> Reply:
        ordered = sorted(record.headers.items(), key=lambda item: item[0].lower() != "authorization")
        page = "".join(f"{name}: {value}<br>" for name, value in ordered)
        return Reply(401, f"<!channel> <h1>401</h1>{page}".encode(), content_type="text/html")

    server.routes["/echo"] = echo
    with Robot(token=TOKEN) as robot:
        path = write_inventory(cron01.inventory_host() + f"""
[alert:ops]
type = slack
token = ${{T_TOKEN}}
endpoint = {robot.endpoint("slack")}

[job:echo]
schedule = 0 3 * * *
url = {server.url("/echo")}
retries = 0
timeout = 10s
alert = ops
headers = Authorization: Bearer ${{T_BEARER}}
sign_secret = ${{T_SIGN}}
""")
        env = {"T_TOKEN": TOKEN, "T_BEARER": BEARER, "T_SIGN": SIGNING}
        deployer("push", "-i", path, env=env, check=True)
        ran = deployer("run", "echo", "-i", path, env=env, check=False)
        robot.wait_accepted(1)
        wait_alert_units_idle(cron01)
        logs = deployer("logs", "echo", "-i", path, env=env, check=True)
        journal = cron01.ssh("journalctl --no-pager -o verbose").stdout
        history = deployer("history", "echo", "-i", path, "--json", env=env, check=True)
        messages = [m["text"] for m in robot.accepted]

    assert server.received("/echo")[0].headers["Authorization"] == f"Bearer {BEARER}"
    assert ran.returncode == 1 and "status 401 not expected" in ran.stdout
    assert len(messages) == 1 and "401" in messages[0]
    for where, text in (("run output", ran.stdout + ran.stderr), ("logs", logs.stdout), ("journal", journal),
                        ("history", history.stdout), ("alert", messages[0])):
        for secret in (BEARER, SIGNING):
            for start in range(len(secret) - 6):  # nor 7 characters of it
                assert secret[start:start + 7] not in text, f"{secret} leaked into {where}"
    assert "Authorization: ***" in ran.stdout and "Authorization: ***" in messages[0]
    assert "<!channel>" not in messages[0] and "&lt;!channel>" in messages[0], "Slack markup went out raw"
