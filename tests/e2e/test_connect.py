"""Connecting to a real host with the wrong settings: one line naming what to fix, nothing changed."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.e2e.test_push import jobs_ini

pytestmark = pytest.mark.e2e


@pytest.fixture
def other_key(tmp_path):
    key = tmp_path / "not-authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def encrypted_key(tmp_path):
    key = tmp_path / "encrypted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(key)], check=True)
    return key


def wrong(cron01, **changes: str) -> str:
    section = cron01.inventory_host()
    for key, value in changes.items():
        section = "\n".join(f"{key} = {value}" if line.startswith(f"{key} =") else line
                            for line in section.splitlines()) + "\n"
    return section


@pytest.mark.parametrize("changes, expected", [
    pytest.param({"identity_file": "{other_key}"},
                 "ssh root@127.0.0.1 port {port}: authentication failed: the host accepted none of the keys tried "
                 "({other_key}): check user and identity_file in [host:cron01], and that the key's .pub is in "
                 "that user's ~/.ssh/authorized_keys", id="wrong-key"),
    pytest.param({"user": "nobody"},
                 "ssh nobody@127.0.0.1 port {port}: authentication failed: the host accepted none of the keys "
                 "tried ({key}): check user", id="wrong-user"),
    pytest.param({"identity_file": "{key}.pub"},
                 "identity_file {key}.pub: not a private key that ssh can read (that is the public key: give "
                 "the file without .pub)", id="public-key-given"),
    pytest.param({"identity_file": "{encrypted_key}"},
                 "ssh root@127.0.0.1 port {port}: a key is protected by a passphrase (tried {encrypted_key}); "
                 "load it into ssh-agent (ssh-add) or use a key without one", id="passphrase"),
    pytest.param({"known_hosts": "{tmp}/no-such-known-hosts"},
                 "127.0.0.1 is not in known_hosts (the file {tmp}/no-such-known-hosts does not exist) and "
                 "host_key = strict", id="known-hosts-file-missing"),
])
def test_a_wrong_ssh_setting_is_one_line_naming_user_host_port_and_key(shared_cron01, server, deployer, write_inventory,
                                                                       tmp_path, other_key, encrypted_key,
                                                                       changes, expected):
    """Before: `host cron01: ssh: Authentication failed.` (no user, no key)."""
    values = dict(other_key=other_key, encrypted_key=encrypted_key, key=shared_cron01.key, port=shared_cron01.port, tmp=tmp_path)
    inventory = wrong(shared_cron01, **{k: v.format(**values) for k, v in changes.items()})
    path = write_inventory(inventory + jobs_ini(server, a="0 * * * *|/a"))

    result = deployer("push", "-i", path, check=False)

    assert result.returncode == 1
    assert result.stderr.startswith(f"deployer: error: host cron01: {expected.format(**values)}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert shared_cron01.ssh("ls /etc/systemd/system/ | grep -c deployer- || true").stdout.strip() == "0"


def test_a_python_missing_on_the_host_names_the_key_to_set(shared_cron01, server, deployer, write_inventory):
    path = write_inventory(shared_cron01.inventory_host(python="/usr/bin/python9") + jobs_ini(server, a="0 * * * *|/a"))

    result = deployer("push", "-i", path, check=False)

    assert result.stderr == ("deployer: error: host cron01: /usr/bin/python9 is not on 127.0.0.1: install python3 "
                             "there, or set python in [host:cron01]\n")


def test_the_unknown_host_message_gives_a_keyscan_that_works(shared_cron01, server, deployer, write_inventory, tmp_path):
    """A port other than 22 is written `[host]:port` in known_hosts: a bare `ssh-keyscan host` would not do."""
    known = tmp_path / "fresh_known_hosts"
    path = write_inventory(shared_cron01.inventory_host().replace(str(shared_cron01.known_hosts), str(known))
                           + jobs_ini(server, a="0 * * * *|/a"))
    refused = deployer("push", "-i", path, check=False)
    command = re.search(r"\(ssh-keyscan (.*?), after checking", refused.stderr).group(1)
    assert command == f"-p {shared_cron01.port} 127.0.0.1 >> {known}"

    subprocess.run(f"ssh-keyscan {command}", shell=True, check=True, timeout=30, stderr=subprocess.DEVNULL)

    deployer("push", "-i", path, check=True)


def test_a_changed_host_key_message_gives_the_removal_that_works(shared_cron01, server, deployer, write_inventory,
                                                                 tmp_path):
    known = tmp_path / "stale_known_hosts"
    another_key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known.write_text(f"[127.0.0.1]:{shared_cron01.port} ssh-ed25519 {another_key}\n")
    path = write_inventory(shared_cron01.inventory_host().replace(str(shared_cron01.known_hosts), str(known))
                           + jobs_ini(server, a="0 * * * *|/a"))
    refused = deployer("push", "-i", path, check=False)
    assert "CHANGED" in refused.stderr and refused.stderr.count("\n") == 1
    # both keys as ssh shows them (issue 24 item 8: the offered one was MD5 hex, the known one absent)
    stale = subprocess.run(["ssh-keygen", "-l", "-f", str(known)], capture_output=True, text=True, check=True)
    assert f"known_hosts has ssh-ed25519 {stale.stdout.split()[1]}, the host offered " in refused.stderr
    assert re.search(r"the host offered \S+ SHA256:[A-Za-z0-9+/]{43};", refused.stderr), refused.stderr
    removal = re.search(r"remove the old key: (ssh-keygen -R .*)$", refused.stderr.strip()).group(1)

    subprocess.run(removal, shell=True, check=True, timeout=30, capture_output=True)
    subprocess.run(f"ssh-keyscan -p {shared_cron01.port} 127.0.0.1 >> {known}", shell=True, check=True, timeout=30,
                   stderr=subprocess.DEVNULL)

    deployer("push", "-i", path, check=True)
    assert another_key not in known.read_text()


def test_without_known_hosts_in_the_inventory_the_users_own_file_is_trusted(shared_cron01, server, deployer,
                                                                            write_inventory, isolated_home):
    """As ssh: a host already in ~/.ssh/known_hosts is known. Before: refused as not in known_hosts."""
    (isolated_home / ".ssh").mkdir(exist_ok=True)
    (isolated_home / ".ssh" / "known_hosts").write_text(shared_cron01.known_hosts.read_text())
    section = "".join(line + "\n" for line in shared_cron01.inventory_host().splitlines()
                      if not line.startswith("known_hosts"))
    path = write_inventory(section + jobs_ini(server, a="0 * * * *|/a"))

    deployer("push", "-i", path, check=True)


def test_the_ssh_connection_sends_each_packet_at_once(shared_cron01, tmp_path):
    """TCP_NODELAY: with Nagle's algorithm on (paramiko's default), each small SSH packet waited
    for the host's delayed ACK, 40 ms at a time: 45 of the handshake's 65 ms, and 35 ms of
    each channel (issue 25, docs/performance.md)."""
    import socket

    from deployer import inventory, remote

    path = tmp_path / "inv.ini"
    path.write_text(shared_cron01.inventory_host())
    host = inventory.load(str(path)).hosts[0]
    connection = remote.connect(host)
    remote._open(connection, host)
    try:
        sock = connection.client.get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert remote.execute(connection, host, "echo through") == b"through\n"
    finally:
        connection.close()
