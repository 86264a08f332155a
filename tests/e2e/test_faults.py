"""Faults during a push, on a real host: killed clients, a killed agent, concurrent pushes.
After each, the host holds the old or the new complete set of valid units, and the next
push converges."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from deployer import inventory
from deployer.contract import paths
from deployer.render import desired_files

pytestmark = pytest.mark.e2e

# How many kills a walk makes: a few in `make test`, more in the slow run (`make test-slow`; CI
# runs both), so that the suite an engineer runs stays short and CI still walks far.
KILLS = pytest.mark.parametrize("kills", [3, pytest.param(9, marks=pytest.mark.slow)])


def jobs(first: int, last: int, minute: int) -> str:
    # On 29 February only: a job due during the test would fail (nothing listens on port 9) and
    # show up in `--failed`, which assert_consistent reads as a broken push.
    return "".join(f"[job:j{i:03d}]\nschedule = {minute} {i % 24} 29 2 *\nurl = http://127.0.0.1:9/j{i}\n"
                   for i in range(first, last))


@pytest.fixture
def two_inventories(shared_cron01, write_inventory):
    """A and B overlap: pushing one after the other adds, changes and removes jobs."""
    a = write_inventory(shared_cron01.inventory_host() + jobs(0, 60, 5), name="a.ini")
    b = write_inventory(shared_cron01.inventory_host() + jobs(30, 90, 7), name="b.ini")
    return a, b


def expected(path: str) -> dict[str, str]:
    """The units and the trigger bundle a push of `path` leaves (what host_files reads; the jobs'
    epochs, in the credentials directory, are granted by the push itself)."""
    return {f.path: f.sha256 for f in desired_files(inventory.load(path), "cron01")
            if f.path.startswith(("/etc/systemd/system/", "/var/lib/deployer/lib/"))}


def host_files(host) -> dict[str, str]:
    host.ssh("flock /run/deployer/lock true")  # an agent still at work finishes first
    out = host.ssh("cd / && sha256sum /etc/systemd/system/deployer-* /var/lib/deployer/lib/* 2>/dev/null || true").stdout
    return {path: digest for digest, path in (line.split() for line in out.splitlines())}


def assert_consistent(host) -> None:
    """Every unit complete and valid, no timer without its service, nothing failed."""
    names = host.ssh("ls /etc/systemd/system | grep '^deployer-' || true").stdout.split()
    for timer in (n for n in names if n.endswith(".timer") and paths.job_of_unit(n)):
        assert timer[:-6] + ".service" in names, f"{timer} without its service"
    if names:
        verify = host.ssh("cd /etc/systemd/system && systemd-analyze verify --man=no deployer-*", check=False)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    assert host.ssh("systemctl list-units --failed --no-legend 'deployer-*'").stdout.strip() == ""


def start_push(path: str, home) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(home)
    return subprocess.Popen([sys.executable, "-m", "deployer", "push", "-i", path], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@KILLS
def test_a_push_killed_at_random_moments_leaves_the_old_or_the_new_set(shared_cron01, two_inventories, deployer,
                                                                        isolated_home, kills):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    a, b = two_inventories
    deployer("push", "-i", a, check=True)
    outcomes = []
    for attempt in range(kills):
        before = host_files(shared_cron01)
        target = b if attempt % 2 == 0 else a
        push = start_push(target, isolated_home)
        time.sleep(rng.uniform(0.2, 1.4))
        os.killpg(push.pid, signal.SIGKILL)
        push.wait()
        after = host_files(shared_cron01)
        assert after in (before, expected(target)), f"seed {seed}: a mixed set after kill {attempt}"
        outcomes.append("new" if after == expected(target) else "old")
        assert_consistent(shared_cron01)
    deployer("push", "-i", b, check=True)
    assert host_files(shared_cron01) == expected(b)
    assert "up to date" in deployer("push", "-i", b, check=True).stdout
    print(f"seed {seed}: {outcomes}")


@KILLS
def test_an_agent_killed_on_the_host_mid_switch_is_finished_by_the_next_command(shared_cron01, two_inventories, deployer,
                                                                                 isolated_home, kills):
    a, b = two_inventories
    deployer("push", "-i", a, check=True)
    interrupted = 0
    for attempt in range(kills):
        target = b if attempt % 2 == 0 else a
        push = start_push(target, isolated_home)
        # Kill the agent itself, as a crash of the host's python would, once it is at work.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if shared_cron01.ssh("pgrep -f 'import [z]lib,base64' >/dev/null", check=False).returncode == 0:
                break
        time.sleep(random.uniform(0.0, 0.5))
        shared_cron01.ssh("pkill -KILL -f 'import [z]lib,base64' || true")
        push.wait(timeout=60)
        interrupted += shared_cron01.ssh("test -e /var/lib/deployer/pending-switch.json", check=False).returncode == 0
        # Each file on disk is whole: the old or the new version of itself.
        on_disk = {p: d for p, d in host_files(shared_cron01).items()}
        versions = {}
        for inv in (a, b):
            for path, digest in expected(inv).items():
                versions.setdefault(path, set()).add(digest)
        assert all(digest in versions.get(path, set()) for path, digest in on_disk.items())
        deployer("status", "-i", target, check=True)  # any command finishes an interrupted switch
        assert shared_cron01.ssh("test -e /var/lib/deployer/pending-switch.json", check=False).returncode != 0
        assert host_files(shared_cron01) in (expected(a), expected(b))
        assert_consistent(shared_cron01)
        deployer("push", "-i", target, check=True)
        assert host_files(shared_cron01) == expected(target)
    print(f"{interrupted} of {kills} kills landed mid-switch")


def test_two_pushes_at_once_serialise_or_fail_clearly(shared_cron01, two_inventories, isolated_home, deployer):
    a, b = two_inventories
    first, second = start_push(a, isolated_home), start_push(b, isolated_home)
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in (first, second)]
    assert any(code == 0 for code, _ in results)
    for code, err in results:
        assert code == 0 or "changed since it was read" in err or "another push" in err, err
    assert host_files(shared_cron01) in (expected(a), expected(b))
    assert_consistent(shared_cron01)
