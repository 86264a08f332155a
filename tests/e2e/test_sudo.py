"""A non-root deploy user: with `sudo = true` everything works; without it, a clear refusal."""
from __future__ import annotations

import json

import pytest

from tests.cronhost import CronHost
from tests.httpserver import json_reply

pytestmark = pytest.mark.e2e


@pytest.fixture
def cron_ops(tmp_path):
    from tests.e2e.conftest import _require_nspawn

    _require_nspawn()
    with CronHost("cron01", workdir=tmp_path / "cron01", users=("ops",)) as host:
        yield host


def test_sudo_true_works_end_to_end_for_a_non_root_user(cron_ops, server, deployer, write_inventory):
    server.routes["/s"] = json_reply({"code": 0})
    path = write_inventory(cron_ops.inventory_host(user="ops", sudo="true")
                           + f"[job:settle]\nschedule = 0 3 * * *\nurl = {server.url('/s')}\n")
    assert cron_ops.ssh("id -u", user="ops").stdout.strip() != "0"

    deployer("push", "-i", path, check=True)
    ran = deployer("run", "settle", "-i", path, check=True)
    status = json.loads(deployer("status", "-i", path, "--json", check=True).stdout)

    assert "-> 200" in ran.stdout and status["jobs"][0]["result"] == "ok"
    assert cron_ops.ssh("stat -c %U /etc/systemd/system/deployer-settle.timer").stdout.strip() == "root"
    assert "up to date" in deployer("push", "-i", path, check=True).stdout


def test_without_sudo_a_non_root_user_gets_a_clear_refusal(cron_ops, server, deployer, write_inventory):
    path = write_inventory(cron_ops.inventory_host(user="ops")
                           + f"[job:settle]\nschedule = 0 3 * * *\nurl = {server.url('/s')}\n")
    result = deployer("push", "-i", path, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "sudo = true" in result.stderr


def test_sudo_that_asks_for_a_password_says_what_to_set_up(cron_ops, server, deployer, write_inventory):
    """Before: `agent state failed (exit 1): sudo: a password is required`."""
    cron_ops.ssh("rm /etc/sudoers.d/deployer-test")
    path = write_inventory(cron_ops.inventory_host(user="ops", sudo="true")
                           + f"[job:settle]\nschedule = 0 3 * * *\nurl = {server.url('/s')}\n")

    result = deployer("push", "-i", path, check=False)

    assert result.stderr == ("deployer: error: host cron01: sudo = true, but ops on 127.0.0.1 may not run sudo "
                             "without a password: give it a NOPASSWD rule in /etc/sudoers.d/, or log in as root\n")
    assert cron_ops.ssh("ls /etc/systemd/system/ | grep -c deployer- || true").stdout.strip() == "0"


def test_a_missing_python_behind_sudo_names_the_key_to_set(cron_ops, server, deployer, write_inventory):
    path = write_inventory(cron_ops.inventory_host(user="ops", sudo="true", python="/usr/bin/python9")
                           + f"[job:settle]\nschedule = 0 3 * * *\nurl = {server.url('/s')}\n")

    result = deployer("push", "-i", path, check=False)

    assert result.stderr == ("deployer: error: host cron01: /usr/bin/python9 is not on 127.0.0.1: install python3 "
                             "there, or set python in [host:cron01]\n")
