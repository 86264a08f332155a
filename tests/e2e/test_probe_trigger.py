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


def test_probe16_12_job_and_alert_units_have_a_memory_ceiling(shared_cron01, server, robot, deployer,  # noqa: F811
                                                               write_inventory):
    """Before: no ceiling; an endless body grew one run to 1.17 GB."""
    path = write_inventory(alert_inventory(shared_cron01, robot, server, job("settle", server.url("/settle"))))
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    shown = shared_cron01.ssh("systemctl show -p MemoryMax --value deployer-settle.service "
                       "deployer-alert-ops@settle.service").stdout.split()
    assert shown == [str(128 << 20)] * 2


def test_job_runs_share_the_hosts_slice_and_a_killed_run_is_alerted(shared_cron01, server, robot, deployer,  # noqa: F811
                                                                     write_inventory):
    """Issue 11: one slice per host (systemd-cgtop shows the runs together) with an optional
    ceiling; a run the ceiling kills is a failed run and alerts like any other.

    The test hosts cannot enforce the ceiling itself: this VM runs cgroup v1 and nspawn mounts
    its controllers read-only in the container. So this checks the slice and its limits as
    systemd reads them, each run's membership, and that a run SIGKILLed the way the kernel's
    OOM killer does ends failed and alerted."""
    server.routes["/settle"] = Reply(200, b'{"code":0}', delay=30)
    inventory = alert_inventory(shared_cron01, robot, server, job("settle", server.url("/settle"), "timeout = 60s"))
    inventory = inventory.replace("[alert:ops]", "memory_max = 64M\ntasks_max = 64\ncpu_weight = 50\n\n[alert:ops]", 1)
    path = write_inventory(inventory)
    deployer("push", "-i", path, env=SECRETS_ENV, check=True)
    assert sorted(shared_cron01.ssh("systemctl show -p MemoryMax,TasksMax,CPUWeight --value deployer-jobs.slice").stdout.split()) \
        == sorted([str(64 << 20), "64", "50"])

    shared_cron01.ssh("systemctl start --no-block deployer-settle.service")
    server.wait_for("/settle")
    cgroup = shared_cron01.ssh("systemctl show -p ControlGroup --value deployer-settle.service").stdout.strip()
    assert cgroup == "/deployer.slice/deployer-jobs.slice/deployer-settle.service"
    shared_cron01.ssh("systemctl kill --kill-whom=main --signal=SIGKILL deployer-settle.service")
    robot.wait_accepted(1)
    wait_alert_units_idle(shared_cron01)
    assert shared_cron01.ssh("systemctl show -p Result --value deployer-settle.service").stdout.strip() == "signal"
    assert [m["markdown"]["title"] for m in robot.accepted] == ["deployer: job settle FAILED on cron01"]
