"""Issue 23 item 9 on real hosts: every push, move, pause, resume, release, manual run, stop and
alert test leaves an audit entry in the host's journal, saying who (the local user, the SSH
user) and from where (the client, its address as the host saw it), with the inventory's digest
and git commit; `deployer audit` merges them across hosts; `status` says who last pushed."""
from __future__ import annotations

import getpass
import hashlib
import json
import socket
import subprocess
from pathlib import Path

import pytest

from deployer.contract import audit
from tests.cronhost import CronHost
from tests.httpserver import json_reply
from tests.robots import Robot

pytestmark = pytest.mark.e2e

TOKEN = "SLACK-TOKEN-5d1c9e"  # must never reach the audit trail


def job(server, name: str, host: str, **extra: str) -> str:
    lines = "".join(f"{k} = {v}\n" for k, v in extra.items())
    return f"[job:{name}]\nschedule = 0 3 * * *\nurl = {server.url('/' + name)}\nhost = {host}\nretries = 0\n{lines}"


def git(directory: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def audit_json(deployer, path: str, *args: str, check=True) -> dict:
    return json.loads(deployer("audit", "-i", path, "--json", *args, check=check).stdout)


def test_every_action_is_recorded_with_who_and_from_where_across_two_hosts(
        cron01, cron02, server, deployer, write_inventory):
    server.routes["/settle"] = json_reply({"code": 0})
    robot = Robot(token=TOKEN).__enter__()
    try:
        hosts = cron01.inventory_host() + cron02.inventory_host()
        alert = f"[alert:chat]\ntype = slack\ntoken = {TOKEN}\nendpoint = {robot.endpoint('slack')}\n"
        path = write_inventory(hosts + alert + job(server, "settle", "cron01", alert="chat"))
        directory = Path(path).parent
        git(directory, "init", "-q")
        git(directory, "add", Path(path).name)
        git(directory, "commit", "-q", "-m", "cron01 settles")
        clean = git(directory, "rev-parse", "HEAD")

        deployer("push", "--host", "cron01", "-i", path, check=True)
        deployer("pause", "settle", "-i", path, check=True)
        deployer("resume", "settle", "-i", path, check=True)
        deployer("run", "settle", "-i", path, check=True)
        deployer("alert", "test", "chat", "-i", path, check=True)
        deployer("release", "--host", "cron01", "-i", path, check=True)
        deployer("pause", "nosuchjob", "--host", "cron01", "-i", path, check=False)  # refused by the client
        # Not committed: the move is made from a dirty tree.
        write_inventory(hosts + alert + job(server, "settle", "cron02", alert="chat"))
        deployer("move", "--from", "cron01", "--to", "cron02", "-i", path, check=True)
        # A local user of cron01 forges an entry: it must not count.
        cron01.ssh("runuser -u nobody -- logger --journald <<'EOF'\nMESSAGE=forged\nMESSAGE_ID=%s\n"
                   "DEPLOYER_AUDIT_TIME=1\nDEPLOYER_AUDIT_ACTION=push\nDEPLOYER_AUDIT_USER=mallory\nEOF" % audit.AUDIT)

        document = audit_json(deployer, path)
    finally:
        robot.__exit__(None, None, None)

    assert document["command"] == "audit" and document["hosts"] == ["cron01", "cron02"]
    assert document["unread_hosts"] == []
    entries = document["entries"]
    assert [e["time"] for e in entries] == sorted(e["time"] for e in entries)  # merged by time
    assert [(e["host"], e["action"], e["command"], e["target"], e["outcome"]) for e in entries] == [
        ("cron01", "push", "push", None, "ok"),
        ("cron01", "pause", "pause", "settle", "ok"),
        ("cron01", "resume", "resume", "settle", "ok"),
        ("cron01", "run", "run", "settle", "ok"),
        ("cron01", "alert_test", "alert test", "chat", "ok"),
        ("cron01", "release", "release", None, "ok"),
        ("cron01", "handoff", "move", "settle", "ok"),
        ("cron02", "push", "move", None, "ok"),
        ("cron01", "push", "move", None, "ok"),
    ]
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    for entry in entries:
        assert (entry["user"], entry["client"]) == (getpass.getuser(), socket.gethostname())
        assert (entry["ssh_user"], entry["ssh_from"]) == ("root", "127.0.0.1")  # the host's own word
        assert entry["commit"] == clean
        assert "mallory" not in json.dumps(entry)
    assert [e["dirty"] for e in entries] == [False] * 6 + [True] * 3
    assert entries[-1]["inventory_sha256"] == digest and entries[0]["inventory_sha256"] != digest
    assert entries[3]["detail"] == "manual" and entries[4]["detail"] == "accepted"
    assert entries[7]["detail"].endswith(" written, 0 removed") and entries[8]["detail"].startswith("0 written, ")
    # Never a secret: the inventory travels as its digest only.
    for host, count in ((cron01, 8), (cron02, 1)):
        trail = host.ssh(f"journalctl -o json MESSAGE_ID={audit.AUDIT} _UID=0").stdout
        assert trail.count(audit.AUDIT) == count and TOKEN not in trail

    # status: who last pushed, when, from which commit.
    status = json.loads(deployer("status", "-i", path, "--json", check=True).stdout)
    last = {h["host"]: h["last_push"] for h in status["hosts"]}
    assert last["cron02"]["commit"] == clean and last["cron02"]["dirty"] is True
    assert last["cron01"]["time"] == entries[-1]["time"]
    text = deployer("status", "-i", path, check=True).stdout
    assert f"host cron02: last push: by {getpass.getuser()}@{socket.gethostname()} (ssh root from 127.0.0.1), " \
           in text and f"commit {clean[:7]} (dirty)" in text

    # One host down: the other's actions are still shown, the missing one is named; --since bounds.
    cron02.stop()
    result = deployer("audit", "-i", path, check=True)
    assert "deployer: warning: host cron02: " in result.stderr and "are not shown" in result.stderr
    assert "handoff (move)" in result.stdout and "actions on 1 of 2 hosts" in result.stdout
    assert "not read: cron02" in result.stdout
    assert audit_json(deployer, path, "--host", "cron01", "--since", "2099-01-01")["entries"] == []
    assert deployer("audit", "-i", path, "--host", "cron02", check=False).returncode == 1


@pytest.fixture
def cron_ops(tmp_path):
    from tests.e2e.conftest import _require_nspawn

    _require_nspawn()
    with CronHost("cron01", workdir=tmp_path / "cron01", users=("ops",)) as host:
        yield host


def test_under_sudo_the_ssh_user_is_the_login_not_root(cron_ops, server, deployer, write_inventory):
    path = write_inventory(cron_ops.inventory_host(user="ops", sudo="true") + job(server, "settle", "cron01"))

    deployer("push", "-i", path, check=True)

    [entry] = audit_json(deployer, path)["entries"]
    assert (entry["action"], entry["ssh_user"], entry["ssh_from"]) == ("push", "ops", "127.0.0.1")
    assert entry["commit"] is None and entry["dirty"] is False  # not in a git work tree: nothing fails


def test_a_manual_run_left_with_ctrl_c_is_recorded_all_the_same(
        shared_cron01, server, deployer, write_inventory, isolated_home):
    import os
    import signal
    import sys

    from tests.e2e.runs import wait_until
    from tests.httpserver import Reply

    server.routes["/slow"] = Reply(200, b"done", delay=6)
    path = write_inventory(shared_cron01.inventory_host() + job(server, "slow", "cron01", timeout="60s"))
    deployer("push", "-i", path, check=True)
    environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    environment["HOME"] = str(isolated_home)
    running = subprocess.Popen([sys.executable, "-m", "deployer", "run", "slow", "-i", path], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    server.wait_for("/slow", timeout=90)  # the run is under way
    running.send_signal(signal.SIGINT)
    _, err = running.communicate(timeout=30)
    assert "goes on on cron01" in err, err

    entries = wait_until(lambda: [e for e in audit_json(deployer, path)["entries"] if e["action"] == "run"], 60,
                         "the run's audit entry", every=1)
    assert [(e["target"], e["detail"], e["outcome"]) for e in entries] == [("slow", "manual", "ok")]
