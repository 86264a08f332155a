"""Issue 22 item 3, on a real host: a job URL with a password and an api_key. The unit keeps a
redacted URL; the whole one reaches the run as a credential. The secret must be in no unit file,
no process list during a run, no `systemctl show`, no journal line and no alert, while the
service still gets the right request."""
from __future__ import annotations

import base64
import threading
import time

import pytest

from tests.httpserver import Reply
from tests.robots import Robot

pytestmark = pytest.mark.e2e

TOKEN = "tok-url-secrets"
PASSWORD, API_KEY = "PassW0rd-in-url", "ApiKey-in-query"


def test_secrets_in_a_job_url_reach_the_service_and_nothing_else(cron01, server, deployer, write_inventory):
    # Held until `ps` has looked (a run to catch, however slow the machine is) and failing (an
    # alert quoting PID 1's lines about the unit).
    looked = threading.Event()

    def held_then_failing(_request):
        looked.wait(60)
        return Reply(500, b'{"code": 1}')

    server.routes["/report"] = held_then_failing
    url = server.url("/report").replace("http://", f"http://svc:{PASSWORD}@") + f"?api_key={API_KEY}&page=2"
    with Robot(token=TOKEN) as robot:
        path = write_inventory(cron01.inventory_host() + f"""
[alert:ops]
type = wecom
token = {TOKEN}
endpoint = {robot.endpoint("wecom")}

[job:report]
on_calendar = *:*:0/20
url = {url}
alert = ops
retries = 0
timeout = 10s
""")
        pushed = deployer("push", "-i", path, check=True)
        shown = deployer("plan", "-i", path, check=True).stdout + pushed.stdout + pushed.stderr

        server.wait_for("/report", timeout=90)
        try:
            during = cron01.ssh("ps -eo args ww; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '").stdout
        finally:
            looked.set()
        assert "trigger.pyz" in during, "no run caught in ps"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not robot.accepted:
            time.sleep(0.2)
        assert robot.accepted, "no alert"
        time.sleep(2)

        request = server.received("/report")[0]
        assert request.path == f"/report?api_key={API_KEY}&page=2"
        assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"svc:{PASSWORD}".encode()).decode()

        places = {
            "unit files": cron01.ssh("cat /etc/systemd/system/deployer-*").stdout,
            "ps during a run": during,
            "systemctl show": cron01.ssh("systemctl show deployer-report.service deployer-report.timer "
                                         "deployer-alert-ops@report.service").stdout,
            "systemctl status": cron01.ssh("systemctl status --no-pager -n 50 deployer-report.service",
                                           check=False).stdout,
            "the journal": cron01.ssh("journalctl -b --no-pager -o verbose").stdout,
            "the alert": repr(robot.accepted),
            "deployer's output": shown,
            "deployer logs": deployer("logs", "report", "-i", path, check=True).stdout,
        }
        assert "svc:***@" in places["unit files"] and "api_key=***" in places["the alert"] + places["the journal"]
        for where, text in places.items():
            assert PASSWORD not in text and API_KEY not in text, f"the secret is in {where}"
