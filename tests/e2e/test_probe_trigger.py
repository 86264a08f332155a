"""What the hostile probe of the host side found in the trigger and the alert units (issue 16),
reproduced on a real host."""
from __future__ import annotations

import pytest

from tests.e2e.test_alerts import SECRETS_ENV, alert_inventory, job, robot, wait_alert_units_idle  # noqa: F401
from tests.httpserver import Reply

pytestmark = pytest.mark.e2e

ALERT_STATE = "/var/lib/private/deployer-alerts"


def test_probe16_3_a_failure_is_alerted_on_a_full_disk(cron01, server, robot, deployer, write_inventory):  # noqa: F811
    """Before: the handler died with ENOSPC writing its queue file, sent nothing, and left
    zero-byte .tmp files behind. The alerts' state directory is a full 64 KiB tmpfs here."""
    server.routes["/e500"] = Reply(500, b"settlement exploded")
    path = write_inventory(alert_inventory(cron01, robot, server, job("e500", server.url("/e500"))))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    cron01.ssh(f"mkdir -p {ALERT_STATE} && mount -t tmpfs -o size=64k,mode=0755 tmpfs {ALERT_STATE} && "
               f"(dd if=/dev/zero of={ALERT_STATE}/filler bs=4k 2>/dev/null || true)")
    assert "No space left" in cron01.ssh(f"echo x > {ALERT_STATE}/probe", check=False).stderr

    deployer("run", "e500", "-i", path, env=SECRETS_ENV, check=False)
    robot.wait_accepted(1)
    wait_alert_units_idle(cron01)
    assert [m["markdown"]["title"] for m in robot.accepted] == ["deployer: job e500 FAILED on cron01"]
    leftovers = cron01.ssh(f"find {ALERT_STATE} -name '*.tmp' -size 0", check=False).stdout.split()
    assert leftovers == []


def test_probe16_12_job_and_alert_units_have_a_memory_ceiling(cron01, server, robot, deployer,  # noqa: F811
                                                               write_inventory):
    """Before: no ceiling; an endless body grew one run to 1.17 GB."""
    path = write_inventory(alert_inventory(cron01, robot, server, job("settle", server.url("/settle"))))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    shown = cron01.ssh("systemctl show -p MemoryMax --value deployer-settle.service "
                       "deployer-alert-ops@settle.service").stdout.split()
    assert shown == [str(128 << 20)] * 2
