"""Issue 16, the agent side, on real cron hosts: each test reproduces a finding of the hostile probe."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cronhost import CronHost
from tests.httpserver import json_reply

pytestmark = pytest.mark.e2e

JOURNAL = "/var/lib/deployer/pending-switch.json"


@pytest.fixture
def cron_user(tmp_path):
    """A host with an unprivileged local account (`mallory`), as a shared cron host has."""
    from tests.e2e.conftest import _require_nspawn

    _require_nspawn()
    with CronHost("cron01", workdir=tmp_path / "cron01", users=("mallory",)) as host:
        yield host


def job(name: str, url: str, calendar: str = "*-*-* 03:00:00") -> str:
    return f"[job:{name}]\non_calendar = {calendar}\nurl = {url}\nretries = 0\ntimeout = 5s\n"


# -- item 1 ------------------------------------------------------------------------------------

def test_a_local_user_cannot_make_the_agent_truncate_a_file_or_hold_its_lock(cron_user, deployer, write_inventory,
                                                                            server):
    host = cron_user
    host.ssh("printf 'precious\\n' > /etc/victim.conf && chmod 644 /etc/victim.conf")
    for planted in ("/run/lock/deployer.lock", "/run/lock/deployer"):  # the old lock and a would-be directory
        host.ssh(f"ln -s /etc/victim.conf {planted}", user="mallory")
    path = write_inventory(host.inventory_host() + job("a", server.url("/a")))

    deployer("push", "-i", path, check=True)
    deployer("pause", "a", "-i", path, check=True)

    assert host.ssh("cat /etc/victim.conf").stdout == "precious\n"
    assert host.ssh("stat -c '%a %U' /run/deployer /run/deployer/lock").stdout.split("\n")[:2] == \
        ["700 root", "600 root"]
    held = host.ssh("flock -s -n /run/deployer/lock true", user="mallory", check=False)
    assert held.returncode != 0 and "Permission denied" in held.stderr


def test_a_corrupt_journal_is_reported_in_one_line_and_recoverable(cron01, deployer, write_inventory, server):
    path = write_inventory(cron01.inventory_host() + job("a", server.url("/a")))
    deployer("push", "-i", path, check=True)
    cron01.ssh(f": > {JOURNAL}")  # what the old lock attack left behind

    broken = deployer("status", "-i", path, check=False)

    assert broken.returncode == 1 and broken.stderr.count("\n") == 1 and "Traceback" not in broken.stderr
    assert f"{JOURNAL} (the switch journal) is corrupt (empty)" in broken.stderr
    cron01.ssh(f"mv {JOURNAL} {JOURNAL}.broken")  # the recovery the message names
    assert "deployer-a" not in deployer("status", "-i", path, check=True).stderr
    assert "up to date" in deployer("push", "-i", path, check=True).stdout


# -- item 2 ------------------------------------------------------------------------------------

def wait_until_second(modulo: int, at: float) -> float:
    """Sleep until the wall clock is `at` seconds into a `modulo`-second period; return the time."""
    now = time.time()
    time.sleep((at - now % modulo) % modulo)
    return time.time()


def test_replaying_an_interrupted_push_never_creates_a_run(cron01, deployer, write_inventory, server):
    """The agent dies after starting the timers and before removing its journal: the host holds
    the new units, the timers run, the journal is still there. The next command replays it."""
    server.routes["/tick"] = json_reply({"code": 0})
    path = write_inventory(cron01.inventory_host() + job("tick", server.url("/tick"), "*:*:0/20"))
    deployer("push", "-i", path, check=True)
    # Keep the journal of the next push as it was when the switch ran (the state a kill between
    # `systemctl start` and its removal leaves); then let the push finish.
    keep = subprocess.Popen(cron01.ssh_args() + [f"until cp {JOURNAL} /root/kept 2>/dev/null; do :; done"])
    write_inventory(cron01.inventory_host() + job("tick", server.url("/tick"), "*:*:0/10"))
    deployer("push", "-i", path, check=True)
    keep.wait(timeout=30)
    pushed = time.time()
    before = len(server.received("/tick"))
    server.wait_for("/tick", count=before + 1, timeout=15)  # the new timer ran once after the switch
    ran = len(server.received("/tick"))
    cron01.ssh(f"cp /root/kept {JOURNAL}")  # the agent "died" before removing it

    replay = wait_until_second(10, 3.0)  # replay away from a slot, so an extra run stands out
    deployer("status", "-i", path, check=True)
    assert cron01.ssh(f"test -e {JOURNAL}", check=False).returncode != 0, "the journal was replayed"
    next_slot = replay - replay % 10 + 10
    time.sleep(max(0.0, next_slot - time.time()))
    extra = [r for r in server.received("/tick") if replay <= r.at < next_slot]

    assert extra == [], f"the replay ran the job {len(extra)} extra time(s) (pushed {pushed:.1f})"
    server.wait_for("/tick", count=ran + 1, timeout=15)  # and the timer still runs on schedule


# -- item 7 ------------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_black_holed_host_gives_a_one_line_error_naming_it_in_bounded_time(cron01, deployer, write_inventory,
                                                                           server, isolated_home):
    from deployer import remote
    from tests.httpserver import Reply

    server.routes["/slow"] = Reply(200, b"{}", delay=300)
    path = write_inventory(cron01.inventory_host() + job("slow", server.url("/slow")).replace("5s", "600s"))
    deployer("push", "-i", path, check=True)
    environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    environment["HOME"] = str(isolated_home)
    started = time.monotonic()
    run = subprocess.Popen([sys.executable, "-m", "deployer", "run", "slow", "-i", path], env=environment,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server.wait_for("/slow", timeout=30)  # the agent is waiting for the job: the session is quiet
    sessions = [p for p in descendants(cron01.process.pid) if open(f"/proc/{p}/comm").read().strip() == "sshd"]
    stopped = time.monotonic()
    for pid in sessions:
        os.kill(pid, signal.SIGSTOP)  # the container's sshd (listener and sessions) stops answering
    try:
        _, err = run.communicate(timeout=remote.READ_TIMEOUT + 60)
    finally:
        for pid in sessions:
            os.kill(pid, signal.SIGCONT)
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "host cron01: " in err and "127.0.0.1 stopped answering" in err
    assert time.monotonic() - stopped < remote.READ_TIMEOUT + 30, f"took {time.monotonic() - started:.0f}s"
