"""The one module that touches the cron host: SSH connection policy and the agent round trips.

Every function takes its connection as a parameter; only the CLI calls `connect`.
Each operation is one SSH exec of agent.py with a JSON request on stdin.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shlex
import socket
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

from . import systemd
from .errors import RemoteCommandError, RemoteError
from .models import Host, Plan, RemoteState
from .hostside import paths

LAYOUT = {"unit_dir": paths.UNIT_DIR, "lib_dir": paths.LIB_DIR, "credentials_dir": paths.CREDENTIALS_DIR,
          "unit_prefix": paths.UNIT_PREFIX, "marker": paths.MARKER}
CONNECT_TIMEOUT = 15


def _agent_command(host: Host) -> str:
    source = (Path(__file__).with_name("agent.py")).read_bytes()
    packed = base64.b64encode(zlib.compress(source, 9)).decode()
    bootstrap = f"import zlib,base64;exec(zlib.decompress(base64.b64decode('{packed}')))"
    command = f"{shlex.quote(host.python)} -c {shlex.quote(bootstrap)}"
    return f"sudo -n {command}" if host.sudo else command


def connect(host: Host):
    """A fabric.Connection with host keys checked strictly unless the host says accept-new.

    Fabric's default silently trusts unknown hosts (AutoAddPolicy); we replace it.
    """
    import fabric
    import paramiko

    kwargs: dict[str, Any] = {}
    if host.identity_file:
        kwargs["key_filename"] = os.path.expanduser(host.identity_file)
    connection = fabric.Connection(
        host.address, user=host.user, port=host.port, connect_kwargs=kwargs,
        connect_timeout=CONNECT_TIMEOUT,
    )
    client = connection.client
    known_hosts = os.path.expanduser(host.known_hosts or "~/.ssh/known_hosts")
    if host.known_hosts and os.path.exists(known_hosts):
        client.load_host_keys(known_hosts)
    if host.host_key == "accept-new":
        client.set_missing_host_key_policy(_AcceptNew(known_hosts))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    connection.deployer_host = host
    return connection


class _AcceptNew:
    """OpenSSH's StrictHostKeyChecking=accept-new: trust a first key, record it; a changed
    key is still refused (paramiko raises BadHostKeyException before asking a policy)."""

    def __init__(self, known_hosts: str):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        os.makedirs(os.path.dirname(self.known_hosts) or ".", mode=0o700, exist_ok=True)
        with open(self.known_hosts, "a", encoding="ascii") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def _open(connection) -> None:
    import paramiko

    host: Host = connection.deployer_host
    try:
        connection.open()
    except paramiko.BadHostKeyException as error:
        raise RemoteError(host.name, f"host key for {error.hostname} CHANGED (got {error.key.get_name()} "
                          f"{error.key.get_fingerprint().hex()}); refusing to connect. If the host "
                          "was rebuilt, remove the old key from known_hosts") from None
    except paramiko.SSHException as error:
        if "not found in known_hosts" in str(error):
            raise RemoteError(host.name, f"{host.address} is not in known_hosts and host_key = strict; "
                              "add its key (ssh-keyscan) or set host_key = accept-new") from None
        raise RemoteError(host.name, f"ssh: {error}") from None
    except (socket.error, EOFError) as error:
        raise RemoteError(host.name, f"cannot connect to {host.address}: {error}") from None


PROGRESS_PREFIX = b"@progress "
UPLOAD_CHUNK = 1 << 18


def execute(connection, command: str, stdin: bytes = b"", step: str = "command",
            progress: Optional[Callable[[str], None]] = None) -> bytes:
    """Run one command with `stdin`; return stdout; raise RemoteCommandError on non-zero exit.

    Uses the paramiko channel directly: Invoke's stdin pump sleeps between 1 kB chunks,
    which would make a large push crawl. Lines `@progress ...` on the command's stderr
    are steps reported by the agent, passed to `progress`.
    """
    _open(connection)
    channel = connection.client.get_transport().open_session()
    report = progress or (lambda text: None)
    try:
        channel.exec_command(command)
        for offset in range(0, len(stdin), UPLOAD_CHUNK):
            if len(stdin) > UPLOAD_CHUNK:
                report(f"uploading {offset / 1e6:.1f} of {len(stdin) / 1e6:.1f} MB")
            channel.sendall(stdin[offset:offset + UPLOAD_CHUNK])
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            if channel.recv_ready():
                out += channel.recv(1 << 16)
            elif channel.recv_stderr_ready():
                err += channel.recv_stderr(1 << 16)
                while PROGRESS_PREFIX in err and b"\n" in err[err.index(PROGRESS_PREFIX):]:
                    start = err.index(PROGRESS_PREFIX)
                    end = err.index(b"\n", start)
                    report("host: " + err[start + len(PROGRESS_PREFIX):end].decode("utf-8", "replace"))
                    del err[start:end + 1]
            elif channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            else:
                select.select([channel], [], [], 0.5)
        status = channel.recv_exit_status()
    finally:
        channel.close()
    if status != 0:
        raise RemoteCommandError(connection.deployer_host.name, step, status, err.decode("utf-8", "replace"))
    return bytes(out)


def call_agent(connection, op: str, progress: Optional[Callable[[str], None]] = None, **request: Any) -> Any:
    host: Host = connection.deployer_host
    payload = json.dumps({"op": op, **LAYOUT, "host": host.name, **request}).encode()
    raw = execute(connection, _agent_command(host), payload, step=f"agent {op}", progress=progress)
    try:
        answer = json.loads(raw)
    except ValueError:
        raise RemoteError(host.name, f"agent {op}: unreadable answer: {raw[:200]!r}") from None
    if not answer["ok"]:
        raise RemoteError(host.name, answer["error"])
    return answer["result"]


def read_state(connection, contents: bool = False) -> RemoteState:
    result = call_agent(connection, "state", contents=contents)
    return RemoteState(
        files=result["files"],
        contents={p: base64.b64decode(c) for p, c in result.get("contents", {}).items()},
        paused=frozenset(result.get("paused", ())),
        owner=(result.get("owner") or {}).get("host"),
    )


def apply(connection, plan: Plan, state: RemoteState, inventory_path: str,
          progress: Optional[Callable[[str], None]] = None, stamps: Optional[dict] = None) -> dict:
    """Stage, verify, then switch; `state` guards against a host that changed meanwhile.
    `stamps`: timer -> last trigger (unix time) to give added timers (see `deployer move`)."""
    writes = [{"path": f.path, "content": base64.b64encode(f.content).decode(), "mode": f.mode,
               "start": f.start} for f in plan.add + plan.change]
    return call_agent(connection, "apply", progress=progress, write=writes, remove=list(plan.remove),
                      expect=state.files, inventory=os.path.abspath(inventory_path), stamps=stamps or {})


def pause(connection, job: str) -> dict:
    return call_agent(connection, "pause", timer=systemd.job_unit(job, "timer"))


def resume(connection, job: str) -> dict:
    return call_agent(connection, "resume", timer=systemd.job_unit(job, "timer"))


def handoff(connection, jobs: list[str]) -> dict:
    return call_agent(connection, "handoff", timers=[systemd.job_unit(j, "timer") for j in jobs])


def status(connection) -> list[dict]:
    return call_agent(connection, "status")["jobs"]


def run(connection, job: str) -> dict:
    return call_agent(connection, "run", service=systemd.job_unit(job, "service"))


def logs(connection, job: str, lines: Optional[int]) -> str:
    return call_agent(connection, "logs", service=systemd.job_unit(job, "service"), lines=lines)["output"]
