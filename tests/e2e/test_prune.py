"""Safe prune on a real host: push names the jobs it removes, asks on a terminal, --no-prune keeps
them, and `plan --exit-code` tells CI whether a push would change anything."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.e2e.test_push import jobs_ini, timers

pytestmark = pytest.mark.e2e


def on_a_terminal(args: list[str], answer: str | None, home) -> tuple[int, str, str]:
    """Run `deployer ARGS` with stdin and stderr on a pseudo-terminal, as an operator would;
    type `answer` when it asks. Returns (status, what the terminal showed, stdout)."""
    main, side = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    environment["HOME"] = str(home)
    process = subprocess.Popen([sys.executable, "-m", "deployer", *args], stdin=side, stderr=side,
                               stdout=subprocess.PIPE, env=environment)
    os.close(side)
    shown, answered, deadline = b"", False, time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            if answer is not None and not answered and b"[y/N]" in shown:
                os.write(main, answer.encode() + b"\n")
                answered = True
            if process.poll() is not None and not ready:
                break
        stdout = process.stdout.read().decode()
        return process.wait(timeout=10), shown.decode(errors="replace").replace("\r\n", "\n"), stdout
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main)


@pytest.fixture
def pushed_three(shared_cron01, server, deployer, write_inventory):
    """cron01 runs keep, gone1, gone2; the inventory is then cut down to keep alone."""
    path = write_inventory(shared_cron01.inventory_host() + jobs_ini(server, keep="0 * * * *|/keep",
                                                               gone1="0 * * * *|/g1", gone2="0 * * * *|/g2"))
    deployer("push", "-i", path, check=True)
    write_inventory(shared_cron01.inventory_host() + jobs_ini(server, keep="0 * * * *|/keep"))
    assert timers(shared_cron01) == ["deployer-gone1.timer", "deployer-gone2.timer", "deployer-keep.timer"]
    return path


def test_on_a_terminal_push_names_the_jobs_and_no_changes_nothing(shared_cron01, pushed_three, isolated_home):
    status, shown, stdout = on_a_terminal(["push", "-i", pushed_three], "n", isolated_home)

    assert status == 1
    assert (f"push would remove 2 jobs from host cron01 that {pushed_three} no longer lists: gone1, gone2\n"
            "Remove them? [y/N]: n\n") in shown
    assert "deployer: error: host cron01: push cancelled, nothing changed (--no-prune keeps those jobs; " \
           "--yes removes without asking)" in shown
    # On stdout: the plan, shown before the question (summary first, a line per job), and nothing
    # after it (no "pushed").
    assert "Traceback" not in shown
    assert stdout.splitlines()[:3] == [stdout.splitlines()[0], "- job gone1 (not in inventory.ini)",
                                       "- job gone2 (not in inventory.ini)"], stdout
    assert stdout.startswith("host cron01: 0 jobs to add, 0 to change, 2 to remove (files: "), stdout
    assert "pushed" not in stdout and "up to date" not in stdout, stdout
    assert timers(shared_cron01) == ["deployer-gone1.timer", "deployer-gone2.timer", "deployer-keep.timer"]
    ended, shown, _ = on_a_terminal(["push", "-i", pushed_three], "\x04", isolated_home)  # Ctrl-D: no answer
    assert ended == 1 and "push cancelled, nothing changed" in shown and "Aborted" not in shown, shown
    assert timers(shared_cron01) == ["deployer-gone1.timer", "deployer-gone2.timer", "deployer-keep.timer"]


def test_on_a_terminal_yes_removes_them(shared_cron01, pushed_three, isolated_home):
    status, shown, stdout = on_a_terminal(["push", "-i", pushed_three], "y", isolated_home)

    assert status == 0, shown
    assert "Remove them? [y/N]: y" in shown
    assert "  removed 2 jobs: gone1, gone2\n" in stdout
    assert timers(shared_cron01) == ["deployer-keep.timer"]


def test_yes_does_not_ask_even_on_a_terminal(shared_cron01, pushed_three, isolated_home):
    status, shown, stdout = on_a_terminal(["push", "--yes", "-i", pushed_three], None, isolated_home)

    assert status == 0, shown
    assert "[y/N]" not in shown
    assert timers(shared_cron01) == ["deployer-keep.timer"]


def test_without_a_terminal_push_prunes_as_the_contract_says_and_names_them(shared_cron01, pushed_three, deployer):
    result = deployer("push", "-i", pushed_three, check=True)

    assert "  removed 2 jobs: gone1, gone2\n" in result.stdout
    assert "[y/N]" not in result.stderr
    assert timers(shared_cron01) == ["deployer-keep.timer"]


def test_a_push_that_removes_no_job_does_not_ask(shared_cron01, server, write_inventory, deployer, isolated_home):
    path = write_inventory(shared_cron01.inventory_host() + jobs_ini(server, keep="0 * * * *|/keep"))
    deployer("push", "-i", path, check=True)
    write_inventory(shared_cron01.inventory_host() + jobs_ini(server, keep="5 * * * *|/keep", new="0 3 * * *|/new"))

    status, shown, stdout = on_a_terminal(["push", "-i", path], None, isolated_home)

    assert status == 0, shown
    assert "[y/N]" not in shown
    assert timers(shared_cron01) == ["deployer-keep.timer", "deployer-new.timer"]


def test_no_prune_keeps_the_jobs_running_and_plan_exit_code_tells_ci(shared_cron01, server, pushed_three, deployer,
                                                                     write_inventory):
    write_inventory(shared_cron01.inventory_host() + jobs_ini(server, keep="0 * * * *|/keep", new="0 3 * * *|/new"))

    pending = deployer("plan", "--exit-code", "-i", pushed_three, check=False)
    plan_json = json.loads(deployer("plan", "--json", "-i", pushed_three, check=True).stdout)
    kept = deployer("push", "--no-prune", "-i", pushed_three, check=True)
    after_no_prune = deployer("plan", "--exit-code", "--no-prune", "-i", pushed_three)
    still_pending = deployer("plan", "--exit-code", "-i", pushed_three, check=False)

    assert pending.returncode == 3, pending.stderr
    assert f"host cron01: push would remove 2 jobs not in {pushed_three}: gone1, gone2\n" in pending.stdout
    assert plan_json["remove_jobs"] == ["gone1", "gone2"] and plan_json["kept_jobs"] == []
    assert "kept 2 jobs no longer in the inventory (--no-prune): gone1, gone2" in kept.stdout
    assert timers(shared_cron01) == ["deployer-gone1.timer", "deployer-gone2.timer", "deployer-keep.timer",
                              "deployer-new.timer"]
    active = shared_cron01.ssh("systemctl is-active deployer-gone1.timer deployer-gone2.timer", check=False).stdout
    assert active.split() == ["active", "active"], "a kept job keeps its schedule"
    assert after_no_prune.returncode == 0, after_no_prune.stdout
    # two removed jobs' service, timer and epoch
    assert "0 to remove, 6 kept (--no-prune)" in after_no_prune.stdout
    assert still_pending.returncode == 3

    deployer("push", "-i", pushed_three, check=True)
    done = deployer("plan", "--exit-code", "-i", pushed_three, check=True)
    assert done.returncode == 0 and "0 to add, 0 to change, 0 to remove" in done.stdout
