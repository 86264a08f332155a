"""Failover from a dead cron host (issue 13 item 1), on real hosts that power off and boot again
from their old disk: the lease, the hold at boot, `deployer move` from an unreachable host,
`deployer release`, and a reboot within the lease that catches up once."""
from __future__ import annotations

import collections
import json
import time

import pytest

from tests.cronhost import CronHost
from tests.e2e.conftest import _require_nspawn
from tests.e2e.runs import assert_each_slot_ran_once, heard, runs
from tests.e2e.runs import wait_until as poll_until
from tests.httpserver import json_reply
from tests.robots import Robot

pytestmark = pytest.mark.e2e

TOKEN, SECRET = "tok-failover-1", "SEC-failover-2"
SECRETS_ENV = {"T_TOKEN": TOKEN, "T_SECRET": SECRET}
SLOT = "X-Deployer-Scheduled-At"


@pytest.fixture
def robot():
    with Robot(token=TOKEN, secret=SECRET) as running:
        yield running


def boot(tmp_path, name: str) -> CronHost:
    """A host with a disk: /var/lib/deployer, the timer stamps and the journal survive a power cycle."""
    _require_nspawn()
    return CronHost(name, workdir=tmp_path / name, persistent=True).start()


def inventory(hosts, server, robot, job_host: str, calendar: str = "*:*:0/5", lease: str = "10s") -> str:
    text = "".join(h.inventory_host(lease=lease) for h in hosts)
    return text + f"""
[alert:ops]
type = dingtalk
token = ${{T_TOKEN}}
secret = ${{T_SECRET}}
endpoint = {robot.endpoint("dingtalk")}

[job:tick]
on_calendar = {calendar}
url = {server.url("/tick")}
host = {job_host}
alert = ops
retries = 0
timeout = 10s
"""


def installed(host) -> list[str]:
    return host.ssh("ls /etc/systemd/system | grep '^deployer-.*timer$' | grep -v @ || true").stdout.split()


def runs_this_boot(host) -> int:
    """Starts of the job's service in the current boot, from the host's own journal."""
    out = host.ssh("journalctl -b -o cat _PID=1 -u deployer-tick.service | grep -c 'Starting' || true").stdout
    return int(out.strip() or 0)


def per_slot(server) -> collections.Counter:
    return collections.Counter(r.headers.get(SLOT) for r in server.received("/tick"))


def wait_until(moment: float) -> None:
    while time.time() < moment:
        time.sleep(0.1)


def test_a_dead_hosts_jobs_move_and_its_return_runs_none_of_them(tmp_path, server, robot, deployer,
                                                                  write_inventory):
    server.routes["/tick"] = json_reply({"code": 0})
    cron01, cron02 = boot(tmp_path, "cron01"), boot(tmp_path, "cron02")
    try:
        path = write_inventory(inventory((cron01, cron02), server, robot, "cron02"))
        deployer("push", "--host", "cron02", "-i", path, env=SECRETS_ENV, check=True)
        server.wait_for("/tick", count=2, timeout=90)

        cron02.stop()  # the machine dies with its disk
        stopped = time.time()
        write_inventory(inventory((cron01, cron02), server, robot, "cron01"))

        # A push alone cannot check the dead host; the refusal names the way through.
        refused = deployer("push", "--host", "cron01", "-i", path, env=SECRETS_ENV, check=False)
        assert "deployer move --from cron02 --to cron01" in refused.stderr
        moved = deployer("move", "--from", "cron02", "--to", "cron01", "-i", path, env=SECRETS_ENV, check=True)
        took = time.time()
        assert "cron02 is unreachable" in moved.stderr and "waiting out its lease (10s)" in moved.stderr
        assert "took over 1 jobs of unreachable cron02 on cron01: tick" in moved.stdout
        assert took - stopped >= 10, "the move did not wait out the lease"
        assert '"source": "cron02"' in cron01.ssh("cat /var/lib/deployer/takeovers.json").stdout

        count = len(server.received("/tick"))
        server.wait_for("/tick", count=count + 3, timeout=90)  # cron01 runs it now

        cron02.start()  # from its old disk, long after its lease ran out
        back = time.time()
        status = deployer("status", "--host", "cron02", "-i", path, env=SECRETS_ENV, check=True)
        assert "held: was down" in status.stdout
        assert cron02.ssh("systemctl is-active deployer-tick.timer", check=False).stdout.strip() == "inactive"
        wait_until(back + 16)  # three slots with cron02 up

        assert runs_this_boot(cron02) == 0
        deadline = time.monotonic() + 30  # the channel's boot sweep runs 10 s after boot
        while time.monotonic() < deadline and not any("HOLDS" in m["markdown"]["title"] for m in robot.accepted):
            time.sleep(0.1)
        wait_until(time.time() + 2)  # and no second one
        held = [m["markdown"] for m in robot.accepted if "HOLDS" in m["markdown"]["title"]]
        # One message; a run the death interrupted (a loaded machine: more often in flight) is
        # told in the same one ("...HOLDS its jobs; 1 job run failed").
        assert len(held) == 1 and held[0]["title"].startswith("deployer: host cron02 HOLDS its jobs"), held
        assert "ran out while it was down" in held[0]["text"], held

        pushed = deployer("push", "--host", "cron02", "-i", path, env=SECRETS_ENV, check=True)
        assert "- job tick (not in " in pushed.stdout and "released" in pushed.stdout
        assert installed(cron02) == [] and installed(cron01) == ["deployer-tick.timer"]
        assert "held" not in deployer("status", "--host", "cron02", "-i", path, env=SECRETS_ENV, check=True).stdout
        wait_until(time.time() + 6)

        counts = per_slot(server)
        doubles = {slot: n for slot, n in counts.items() if n > 1}
        assert doubles == {}, f"slots run twice: {doubles}"
        # Every 5 s slot from the takeover on ran, exactly once, on cron01: judged by slot (when
        # its PID 1 started each run the service heard), not by when the requests arrived.
        taken = [run for run in runs(cron01, "tick") if run.triggered > took + 1]
        assert_each_slot_ran_once(heard(taken, server.received("/tick")), 5)
        assert runs_this_boot(cron02) == 0
    finally:
        cron02.stop()
        cron01.stop()


def test_release_ends_a_hold_and_the_jobs_run_again(tmp_path, server, robot, deployer, write_inventory):
    server.routes["/tick"] = json_reply({"code": 0})
    cron02 = boot(tmp_path, "cron02")
    try:
        path = write_inventory(inventory((cron02,), server, robot, "cron02"))
        deployer("push", "-i", path, env=SECRETS_ENV, check=True)
        server.wait_for("/tick", count=1, timeout=90)
        cron02.stop()
        wait_until(time.time() + 12)
        cron02.start()
        count = len(server.received("/tick"))
        wait_until(time.time() + 11)
        assert len(server.received("/tick")) == count and runs_this_boot(cron02) == 0

        released = deployer("release", "-i", path, env=SECRETS_ENV, check=True)

        assert "host cron02: released (was down" in released.stdout and "1 job timers started" in released.stdout
        server.wait_for("/tick", count=count + 2, timeout=60)
        assert runs_this_boot(cron02) >= 2  # the count that said 0 above does see runs
        assert "not held" in deployer("release", "-i", path, env=SECRETS_ENV, check=True).stdout
    finally:
        cron02.stop()


def test_a_reboot_within_the_lease_catches_the_missed_run_up_once(tmp_path, server, robot, deployer,
                                                                  write_inventory):
    server.routes["/tick"] = json_reply({"code": 0})
    cron01 = boot(tmp_path, "cron01")
    try:
        path = write_inventory(inventory((cron01,), server, robot, "cron01", calendar="*:*:0/20", lease="2m"))
        deployer("push", "-i", path, env=SECRETS_ENV, check=True)
        server.wait_for("/tick", count=1, timeout=90)
        cron01.stop()
        down = time.time()
        before = server.received("/tick")
        last = before[-1].at
        missed = last - last % 20 + 20
        wait_until(missed + 1)  # the next slot passes while the host is down
        cron01.start()
        missed_slot = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(missed))

        def slots_after_the_reboot():
            return [r.headers["X-Deployer-Slot"] for r in server.received("/tick") if r.at > down]

        # Judged by the slots the service was called for (a loaded machine may also reach the
        # next slot before the check): the missed one once, and no slot twice.
        poll_until(lambda: missed_slot in slots_after_the_reboot(), 60, "the catch-up of the missed slot")
        after = slots_after_the_reboot()
        assert after.count(missed_slot) == 1 and len(set(after)) == len(after), after
        assert all(slot >= missed_slot for slot in after), after
        assert "held" not in deployer("status", "-i", path, env=SECRETS_ENV, check=True).stdout
    finally:
        cron01.stop()


def test_move_with_force_takes_over_at_once_and_says_what_it_risks(tmp_path, server, robot, deployer,
                                                                   write_inventory):
    from tests.cronhost import free_port

    server.routes["/tick"] = json_reply({"code": 0})
    cron01 = boot(tmp_path, "cron01")
    try:
        # cron02: an address where nothing answers (a machine that is off), with a lease of an hour.
        dead = cron01.inventory_host(lease="1h").replace("[host:cron01]", "[host:cron02]").replace(
            f"port = {cron01.port}", f"port = {free_port()}")
        path = write_inventory(cron01.inventory_host(lease="10s") + dead + inventory((), server, robot, "cron01"))
        started = time.monotonic()

        moved = deployer("move", "--from", "cron02", "--to", "cron01", "--force", "-i", path, "--json",
                         env=SECRETS_ENV, check=True)

        assert time.monotonic() - started < 60, "--force must not wait out the hour"
        assert "warning: --force" in moved.stderr and "runs tick too" in moved.stderr
        document = json.loads(moved.stdout)
        assert document["moved"] == ["tick"] and document["forced"] is True and document["source_unreachable"]
        assert installed(cron01) == ["deployer-tick.timer"]
        server.wait_for("/tick", count=1, timeout=60)
        assert '"forced": true' in cron01.ssh("cat /var/lib/deployer/takeovers.json").stdout
    finally:
        cron01.stop()
