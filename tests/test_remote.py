"""remote.execute against a scripted paramiko channel: read to the end, give up on a silent host."""
from __future__ import annotations

import json
import os
import re
import threading

import pytest

from deployer import remote
from deployer.errors import RemoteError
from deployer.models import Host


class ScriptedChannel:
    """A paramiko Channel whose host sends `chunks` of stdout with a gap between them (both
    buffers empty for a moment), and whose exit status is ready from the start, as it may be
    when the last data is still in flight."""

    def __init__(self, chunks, eof=True):
        self.chunks, self.buffer = list(chunks), b""
        self.eof_received, self.closed = False, False
        self.send_eof = eof
        self.status_event = threading.Event()
        self.status_event.set()
        self.polls = 0
        self._read, self._write = os.pipe()
        os.write(self._write, b"x")

    def fileno(self):
        return self._read

    def settimeout(self, timeout):
        pass

    def exec_command(self, command):
        pass

    def sendall(self, data):
        pass

    def shutdown_write(self):
        pass

    def _tick(self):
        self.polls += 1
        if self.polls % 2 == 0 and self.chunks:  # data arrives every other poll
            self.buffer += self.chunks.pop(0)
        if not self.chunks and self.send_eof:
            self.eof_received = True

    def recv_ready(self):
        return bool(self.buffer)

    def recv(self, size):
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def recv_stderr_ready(self):
        self._tick()  # time passes between polls: the next chunk may have arrived
        return False

    def exit_status_ready(self):
        return True

    def recv_exit_status(self):
        return 0

    def close(self):
        os.close(self._read)
        os.close(self._write)


class Transport:
    def __init__(self, channel):
        self.channel = channel

    def set_keepalive(self, seconds):
        self.keepalive = seconds

    def open_session(self, timeout=None):
        return self.channel


class Connection:
    def __init__(self, channel):
        self.transport = Transport(channel)
        self.client = self

    def open(self):
        pass

    def get_transport(self):
        return self.transport


HOST = Host(name="cron01", address="10.0.0.5")


def test_stdout_is_read_to_the_end_even_when_the_exit_status_came_first():
    chunks = [b"x" * 1000 for _ in range(50)]
    connection = Connection(ScriptedChannel(chunks))
    assert len(remote.execute(connection, HOST, "agent", b"{}")) == 50_000


def test_a_host_that_stops_answering_is_an_error_naming_it_within_the_read_timeout():
    connection = Connection(ScriptedChannel([b"partial"], eof=False))
    with pytest.raises(RemoteError, match=r"^host cron01: agent state: 10\.0\.0\.5 stopped answering"):
        remote.execute(connection, HOST, "agent", b"{}", step="agent state", read_timeout=1.0)
    assert connection.transport.keepalive == remote.KEEPALIVE_SECONDS


def test_a_follow_stopped_by_ctrl_c_ends_between_reads_and_closes_its_channel():
    """`deployer logs -f` takes Ctrl-C as a flag (cli.logs): the read looks at it between reads,
    so no KeyboardInterrupt lands inside one of paramiko's (CI: a follow that never ended)."""
    channel = ScriptedChannel([b"line\n"] * 1000, eof=False)
    closed = []
    channel.close = lambda: closed.append(True)
    asked = []
    with pytest.raises(remote.Stopped):
        remote.execute(Connection(channel), HOST, "agent", b"{}", max_streamed=None,
                       stop=lambda: asked.append(True) or len(asked) > 3)
    assert len(asked) == 4 and closed == [True]


def test_ctrl_c_while_connecting_asks_nothing_of_the_host():
    """`deployer run` interrupted before its request went out must not start the run."""
    channel = ScriptedChannel([b"{}"])
    channel.exec_command = lambda command: pytest.fail("the command was sent")
    with pytest.raises(remote.Stopped):
        remote.execute(Connection(channel), HOST, "agent", b"{}", stop=lambda: True)


# --- connecting: every failure is one line naming what to fix, never paramiko's traceback ---------

def _inventory(tmp_path, port: int, **extra: str) -> str:
    lines = ["[host:cron01]", "address = 127.0.0.1", f"port = {port}", "user = ops"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path = tmp_path / "inventory.ini"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_port_that_is_not_ssh_is_one_line_without_paramikos_traceback(deployer, server, tmp_path):
    """Before: paramiko's transport thread printed a 22-line traceback, then our line."""
    result = deployer("status", "-i", _inventory(tmp_path, server.port), check=False)
    assert result.returncode == 1
    assert result.stderr == (f"deployer: error: host cron01: 127.0.0.1 port {server.port} does not answer as an SSH "
                             "server (no SSH banner): check address and port in [host:cron01]\n")


def test_a_closed_port_says_refused_and_names_the_port(deployer, tmp_path):
    port = _closed_port()
    result = deployer("status", "-i", _inventory(tmp_path, port), check=False)
    assert result.stderr == (f"deployer: error: host cron01: cannot connect to 127.0.0.1 port {port}: connection "
                             "refused (is sshd running there, and is the port right?)\n")


def test_a_missing_identity_file_is_named_before_connecting(deployer, tmp_path):
    """The inventory refuses it (issue 24 item 8), as `validate` does: file, line, section and key."""
    missing = tmp_path / "no-such-key"
    path = _inventory(tmp_path, _closed_port(), identity_file=str(missing))
    for command in ("validate", "status"):
        result = deployer(command, "-i", path, check=False)
        assert result.stderr == (f"deployer: error: {path}:5: [host:cron01] identity_file: cannot read {missing}: "
                                 "No such file or directory\n"), command


def test_an_identity_file_gone_since_the_inventory_was_read_is_named_before_connecting(tmp_path):
    host = Host(name="cron01", address="127.0.0.1", port=_closed_port(), identity_file=str(tmp_path / "gone"))
    with pytest.raises(RemoteError, match=rf"^host cron01: identity_file {tmp_path}/gone: no such file$"):
        remote._open(remote.connect(host), host)


def _host_key(tmp_path, kind: str):
    """A real key made by ssh-keygen, as paramiko reads it, and OpenSSH's own fingerprint of it."""
    import subprocess

    import paramiko

    path = tmp_path / f"host_{kind}_key"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{path}.pub"], capture_output=True, text=True,
                            check=True).stdout
    key_class = {"ed25519": paramiko.Ed25519Key, "ecdsa": paramiko.ECDSAKey, "rsa": paramiko.RSAKey}[kind]
    return key_class.from_private_key_file(str(path)), listed.split()[1]


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_a_fingerprint_is_the_one_openssh_shows(tmp_path, kind):
    key, openssh = _host_key(tmp_path, kind)
    assert remote.fingerprint(key) == openssh and openssh.startswith("SHA256:")


def test_a_changed_host_key_shows_both_keys_as_openssh_does(tmp_path):
    """Issue 24 item 8: the offered key was MD5 hex (paramiko's get_fingerprint), which no current ssh prints,
    and the expected one was not shown at all."""
    import paramiko

    (known_key, known), (offered_key, offered) = _host_key(tmp_path, "ed25519"), _host_key(tmp_path, "ecdsa")
    host = Host(name="cron01", address="10.0.0.5", port=2222, known_hosts=str(tmp_path / "known_hosts"))
    error = paramiko.BadHostKeyException("10.0.0.5", offered_key, known_key)  # as SSHClient.connect raises it
    assert str(remote._connect_error(error, remote.connect(host), host)) == (
        f"host cron01: host key for 10.0.0.5 CHANGED: known_hosts has ssh-ed25519 {known}, the host offered "
        f"ecdsa-sha2-nistp256 {offered}; refusing to connect. If the host was rebuilt, remove the old key: "
        f"ssh-keygen -R '[10.0.0.5]:2222' -f {tmp_path}/known_hosts")


def test_the_keys_tried_are_the_identity_files_the_agent_and_the_default_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("")
    connection = remote.connect(Host(name="cron01", address="10.0.0.5", identity_file="~/keys/cron"))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    assert remote._keys_tried(connection) == (f"{tmp_path}/keys/cron, the ssh-agent's keys, "
                                              f"{tmp_path}/.ssh/id_ed25519")
    monkeypatch.delenv("SSH_AUTH_SOCK")
    (tmp_path / ".ssh" / "id_ed25519").unlink()
    assert remote._keys_tried(remote.connect(Host(name="cron01", address="10.0.0.5"))) == "none"


def test_a_known_hosts_file_ssh_cannot_read_is_one_line_naming_it(tmp_path):
    broken = tmp_path / "known_hosts"
    broken.write_text("# a comment\n10.0.0.5 ssh-ed25519 AAAA!!!notbase64\n")
    with pytest.raises(RemoteError) as refused:
        remote.connect(Host(name="cron01", address="10.0.0.5", known_hosts=str(broken)))
    assert str(refused.value) == (f"host cron01: {broken}:2: not a known_hosts entry ('10.0.0.5 ssh-ed25519 "
                                  "AAAA!!!notbase64'): remove or fix that line")
    with pytest.raises(RemoteError, match=rf"^host cron01: known_hosts {tmp_path}: cannot read: Is a directory$"):
        remote.connect(Host(name="cron01", address="10.0.0.5", known_hosts=str(tmp_path)))


def test_without_known_hosts_in_the_inventory_the_users_file_is_read_as_ssh_does(tmp_path, monkeypatch):
    """Before: ~/.ssh/known_hosts was never loaded, so every host was refused as unknown."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    (tmp_path / ".ssh" / "known_hosts").write_text(f"[10.0.0.5]:2222 ssh-ed25519 {key}\n")
    client = remote.connect(Host(name="cron01", address="10.0.0.5", port=2222)).client
    assert client.get_host_keys().lookup("[10.0.0.5]:2222")["ssh-ed25519"].get_base64() == key


# --- issue 22 item 4: a host answering without end -----------------------------------------------

class EndlessChannel(ScriptedChannel):
    """A compromised host's agent: stdout (or `@line`s on stderr) that never ends."""

    def __init__(self, stderr: bool = False):
        super().__init__([])
        self.stderr, self.sent = stderr, 0
        self.send_eof = False

    def recv_ready(self):
        return not self.stderr

    def _count(self, size):
        self.sent += size
        if self.sent > 64 << 20:  # a client without a cap would read until it runs out of memory
            raise AssertionError("read 64 MiB of an endless answer: no cap")

    def recv(self, size):
        self._count(size)
        return b"x" * size

    def recv_stderr_ready(self):
        return self.stderr

    def recv_stderr(self, size):
        self._count(size)
        return (b"@line \x1b[2J" + b"y" * 1000 + b"\n") * (size // 1010)


@pytest.mark.parametrize("stderr", [False, True], ids=["answer", "line-stream"])
def test_issue22_4_an_endless_answer_is_cut_at_the_cap_with_one_line(stderr, monkeypatch):
    """Before: the client read a hostile host's endless answer until it held 2.6 GB."""
    monkeypatch.setattr(remote, "MAX_ANSWER", 4 << 20)
    monkeypatch.setattr(remote, "MAX_STREAMED", 4 << 20)
    channel = EndlessChannel(stderr=stderr)
    lines: list = []
    with pytest.raises(RemoteError) as caught:
        remote.execute(Connection(channel), HOST, "agent", b"{}", step="agent logs", output=lines.append,
                       max_streamed=remote.MAX_STREAMED)
    message = " ".join(caught.value.lines())
    assert "\n" not in message and "sent more than 4 MiB" in message and "10.0.0.5" in message
    assert channel.sent < 6 << 20, "it stopped reading at the cap"


def test_issue22_4_a_stderr_line_without_end_is_cut_too(monkeypatch):
    channel = EndlessChannel(stderr=True)
    channel.recv_stderr = lambda size: channel._count(size) or b"z" * size
    with pytest.raises(RemoteError, match="MiB of other output"):
        remote.execute(Connection(channel), HOST, "agent", b"{}", step="agent status")
    assert channel.sent < (1 << 20) + 2 * 65536


def test_issue22_4_a_refusal_with_a_code_outside_the_protocol_is_not_taken_as_one():
    from deployer.contract import protocol

    agent = remote.LocalAgent("cron01", "/nonexistent", None)
    raw = json.dumps({"version": protocol.PROTOCOL_VERSION, "ok": False,
                      "error": {"code": "locked\x1b[2J", "message": "held by \x1b]0;pwned\x07"}}).encode()
    with pytest.raises(RemoteError, match="unknown code") as caught:
        agent._answer(protocol.StatusRequest(), raw)
    assert not isinstance(caught.value, remote.AgentRefused)


def test_the_agent_command_fits_one_argument_with_room_for_sudo_and_quoting():
    """The remote shell runs the command from one argv string (MAX_ARG_STRLEN): the bootstrap,
    packed, must leave it room; it was within 1 KiB of the old, halved limit at 64,268 bytes."""
    from deployer.models import Host

    command = remote._agent_command(Host(name="cron01", address="10.0.0.5", sudo=True,
                                         python="/opt/" + "p" * 200 + "/bin/python3"))
    assert len(command) < remote.MAX_ARGUMENT
    assert len(remote.bootstrap()) + remote.COMMAND_ROOM < remote.MAX_ARGUMENT


def test_the_shipped_agent_has_no_comments_and_every_line_where_it_was():
    source = 'x = "# kept"  # gone\n# gone\n\ndef f():  # gone\n    return 1\n'
    assert remote.without_comments(source) == 'x = "# kept"\n\n\ndef f():\n    return 1\n'


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the agent's cache of compiled modules is root's")


def _agent_on_this_machine(program: str, *prefix: str) -> str:
    """The packed agent run here by the host's python, given an unreadable request: every module
    is imported, and the answer (a refusal) touches nothing."""
    import subprocess

    done = subprocess.run([*prefix, "/usr/bin/python3", *remote.AGENT_FLAGS, "-c", program], input=b"not a request",
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@ROOT_ONLY
def test_the_agent_keeps_its_compiled_modules_only_where_nobody_but_root_may_write(tmp_path):
    import marshal

    cache = tmp_path / "cache" / "agent"
    program = remote._pack(str(cache))
    assert '"bad_request"' in _agent_on_this_machine(program)
    [kept] = list(cache.iterdir())
    assert kept.name.endswith(".bin") and oct(kept.stat().st_mode & 0o777) == "0o600"
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    compiled = marshal.loads(kept.read_bytes())
    dataclass_codes = compiled.pop("")  # the code dataclasses generated for the agent's classes
    assert set(compiled) == set(remote.agent_modules())
    history_request = re.compile(r"def __init__\(self, ?job:\w+, ?since:\w+\)")  # the names differ by version
    assert any(history_request.search(text) for text in dataclass_codes)

    # What is kept is what runs: a planted agent (root's, as only root could plant it) answers.
    planted = {name: (package, compile("", name, "exec")) for name, (package, _) in compiled.items()}
    planted[remote.AGENT_MODULE] = (False, compile("def main(): print('from the cache')", "x", "exec"))
    planted[remote.PROCESS_MODULE] = compiled[remote.PROCESS_MODULE]
    kept.write_bytes(marshal.dumps(planted))
    assert _agent_on_this_machine(program).strip() == "from the cache"

    # A file others may write is not read, and is replaced by the agent's own.
    kept.chmod(0o666)
    assert '"bad_request"' in _agent_on_this_machine(program)
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    assert marshal.loads(kept.read_bytes()).keys() == compiled.keys() | {""}
    assert "from the cache" not in _agent_on_this_machine(program)

    # Nor in a directory others may write (they could swap the file): neither read nor written.
    kept.write_bytes(marshal.dumps(planted))
    cache.chmod(0o777)
    assert '"bad_request"' in _agent_on_this_machine(program)
    assert kept.read_bytes() == marshal.dumps(planted)

    # A link planted in its place is not followed.
    cache.chmod(0o700)
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(marshal.dumps(planted))
    kept.unlink()
    kept.symlink_to(elsewhere)
    assert '"bad_request"' in _agent_on_this_machine(program)
    assert not kept.is_symlink() and elsewhere.read_bytes() == marshal.dumps(planted)


@ROOT_ONLY
def test_a_corrupt_or_foreign_cache_file_is_compiled_anew_and_another_versions_old_file_removed(tmp_path):
    cache = tmp_path / "agent"
    program = remote._pack(str(cache))
    _agent_on_this_machine(program)
    [kept] = list(cache.iterdir())
    for damage in (b"", b"\x00garbage", __import__("marshal").dumps(["not", "a", "dict"])):
        kept.write_bytes(damage)
        assert '"bad_request"' in _agent_on_this_machine(program)
        assert kept.read_bytes() not in (b"", b"\x00garbage")
    old, fresh = cache / "0123-cpython-311.bin", cache / "4567-cpython-311.bin"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (1, 1))
    kept.unlink()
    _agent_on_this_machine(program)
    assert sorted(p.name for p in cache.iterdir()) == sorted([kept.name, fresh.name])


@ROOT_ONLY
def test_an_agent_that_is_not_root_runs_roots_cache_and_writes_none():
    import marshal
    import shutil
    import tempfile
    from pathlib import Path

    top = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is root's alone: nobody can reach it
    try:
        top.chmod(0o755)
        cache = top / "agent"
        program = remote._pack(str(cache))
        _agent_on_this_machine(program)
        [kept] = list(cache.iterdir())
        cache.chmod(0o755)
        kept.chmod(0o644)
        compiled = marshal.loads(kept.read_bytes())
        planted = {name: (entry[0], compile("", name, "exec")) for name, entry in compiled.items() if name}
        planted[remote.AGENT_MODULE] = (False, compile("def main(): print('from the cache')", "x", "exec"))
        planted[remote.PROCESS_MODULE] = compiled[remote.PROCESS_MODULE]
        kept.write_bytes(marshal.dumps(planted))
        # A file only root may write is safe for anyone to read (a non-root agent is refused anyway).
        nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        assert _agent_on_this_machine(program, *nobody).strip() == "from the cache"
        kept.unlink()
        assert '"bad_request"' in _agent_on_this_machine(program, *nobody)  # cannot write: compiles, answers
        assert list(cache.iterdir()) == []
    finally:
        shutil.rmtree(top)
