"""Run ON a cron host by tests/record_host_reads.py (piped to `python3 -` over ssh): makes every
host read through the real `Systemd` boundary of the pushed trigger.pyz, and prints what each
call was given and the raw bytes it got back, as JSON on stdout. Standard library only (the
host has no venv); nothing here parses: the parsing is replayed outside (tests/host_reads.py).

Capture, not imitation: `systemctl.subprocess` is a shim that runs the real process and keeps its
output; `dbus.socket` a shim whose sockets keep every byte PID 1 sent.
"""
import base64
import json
import os
import select
import socket as real_socket
import subprocess as real_subprocess
import sys
import time

sys.path.insert(0, "/var/lib/deployer/lib/trigger.pyz")

from deployer.contract import paths, protocol  # noqa: E402
from deployer.host import agent, dbus, journal, systemctl, watch

CALLS = []
LABEL = ["?"]


class _Tee:
    def __init__(self, stream, call):
        self.stream, self.call = stream, call

    def __iter__(self):
        for line in self.stream:
            self.call["output"] += line.decode("utf-8", "surrogateescape")
            yield line

    def fileno(self):
        return self.stream.fileno()


class _Process:
    """A real process whose output is kept as it is read (journal_entries reads lines; verify
    communicate()s)."""

    def __init__(self, args, **kwargs):
        self.process = real_subprocess.Popen(args, **kwargs)
        self.call = {"label": LABEL[0], "kind": "popen", "command": list(args), "output": ""}
        CALLS.append(self.call)
        self.stdout = _Tee(self.process.stdout, self.call) if self.process.stdout else None

    def communicate(self, *args, **kwargs):
        out, err = self.process.communicate(*args, **kwargs)
        self.call["output"] += out if isinstance(out, str) else (out or b"").decode("utf-8", "surrogateescape")
        self.call["returncode"] = self.process.returncode
        return out, err

    @property
    def returncode(self):
        return self.process.returncode

    def kill(self):
        self.process.kill()

    def wait(self, *args, **kwargs):
        return self.process.wait(*args, **kwargs)


class _Subprocess:
    PIPE, STDOUT, DEVNULL = real_subprocess.PIPE, real_subprocess.STDOUT, real_subprocess.DEVNULL
    SubprocessError = real_subprocess.SubprocessError

    @staticmethod
    def run(args, **kwargs):
        result = real_subprocess.run(args, **kwargs)
        CALLS.append({"label": LABEL[0], "kind": "run", "command": list(args), "output": result.stdout,
                      "stderr": result.stderr, "returncode": result.returncode})
        return result

    Popen = _Process


class _Socket:
    def __init__(self, *args):
        self.sock = real_socket.socket(*args)
        self.call = {"label": LABEL[0], "kind": "dbus", "sent": b"", "received": b""}
        CALLS.append(self.call)

    def __getattr__(self, name):
        return getattr(self.sock, name)

    def sendall(self, data):
        self.call["sent"] += data
        return self.sock.sendall(data)

    def recv(self, size):
        data = self.sock.recv(size)
        self.call["received"] += data
        return data


class _SocketModule:
    AF_UNIX, SOCK_STREAM = real_socket.AF_UNIX, real_socket.SOCK_STREAM
    socket = _Socket


systemctl.subprocess = _Subprocess
dbus.socket = _SocketModule


class Recording(systemctl.Systemd):
    """The real boundary; properties() also notes what it asked (the D-Bus requests)."""

    def properties(self, units, properties):
        units, properties = list(units), list(properties)
        CALLS.append({"label": LABEL[0], "kind": "properties", "units": units, "properties": properties})
        return super().properties(units, properties)


def labelled(label, function, *args, **kwargs):
    LABEL[0] = label
    try:
        return function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 (the recording goes on; the error is kept)
        CALLS.append({"label": label, "kind": "error", "error": "%s: %s" % (type(error).__name__, error)})
        return None


def follow(systemd, args, seconds=10.0):
    process = systemd.follow(args)
    call = {"label": LABEL[0], "kind": "follow", "command": ["journalctl", "--no-pager", "-q", "-f", "-o", "json"]
            + list(args), "output": ""}
    CALLS.append(call)
    deadline = time.monotonic() + seconds
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(process.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            data += chunk
        elif data.endswith(b"\n"):
            break  # what was there to read is read: -f waits for more
    process.kill()
    process.wait()
    call["output"] = data[:data.rfind(b"\n") + 1].decode("utf-8", "surrogateescape")


def state_file(label, path):
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raw = None
        CALLS.append({"label": label, "kind": "file", "path": path, "error": error.strerror})
        return
    CALLS.append({"label": label, "kind": "file", "path": path, "output": raw.decode("utf-8", "surrogateescape")})


def main():
    plan = json.loads(sys.argv[1])
    systemd = Recording()
    host = agent.Host(layout=paths.Layout(), systemd=systemd, name="cron01")
    timers = [paths.job_unit(j, "timer") for j in plan["jobs"]]
    services = [paths.job_unit(j, "service") for j in plan["jobs"]]
    labelled("status", agent.op_status, host, protocol.StatusRequest())
    for job in plan["jobs"] + [plan["odd"]] + plan["extra_history"]:
        labelled("history:" + job, agent.op_history, host, protocol.HistoryRequest(job, since=0))
    labelled("logs:" + plan["failing"], agent.op_logs, host, protocol.LogsRequest(plan["failing"], lines=20))
    labelled("logs:" + plan["odd"], agent.op_logs, host, protocol.LogsRequest(plan["odd"], lines=20))
    labelled("audit", agent.op_audit, host, protocol.AuditRequest(since=0))
    labelled("last-push", journal.last_push, systemd)
    labelled("show:timers", systemd.show, timers, agent.TIMER_STATUS)
    labelled("show:services", systemd.show, services, agent.SERVICE_STATUS)
    labelled("show:nosuch", systemd.show, ["deployer-nosuch.timer", "deployer-nosuch.service"],
             agent.TIMER_STATUS + agent.SERVICE_STATUS)
    labelled("properties:timers", systemd.properties, timers, agent.TIMER_STATUS)
    labelled("properties:services", systemd.properties, services, agent.SERVICE_STATUS)
    labelled("properties:nosuch", systemd.properties, ["deployer-nosuch.timer", "deployer-nosuch.service"],
             ["ActiveState", "NextElapseUSecRealtime", "LastTriggerUSec", "InvocationID"])
    labelled("is-active", systemd.systemctl, "is-active", *(timers + ["deployer-nosuch.timer"]), check=False)
    watched = [watch.Watched(j, "ops", late=300, long=1800, calendar=tuple(plan["calendars"].get(j, ())))
               for j in plan["jobs"]]
    labelled("watch", watch.read_facts, systemd, watched, paths.Layout())
    unit_dir = paths.UNIT_DIR
    labelled("verify:clean", systemd.verify, [os.path.join(unit_dir, u) for u in services[:1] + timers[:1]])
    labelled("verify:broken", systemd.verify, [plan["broken_unit"]])
    failing_unit = paths.job_unit(plan["failing"], "service")
    labelled("failed-runs:unit", journal.journal_failed_runs, systemd, failing_unit, since=0)
    labelled("failed-runs:all", journal.journal_failed_runs, systemd, None, since=0)
    labelled("failed-runs:none", journal.journal_failed_runs, systemd, paths.job_unit(plan["never"], "service"),
             since=0)
    for name, invocation in plan["invocations"].items():
        labelled("run-account:" + name, journal.run_account, systemd, invocation, 20)
    labelled("run-account:no-such-run", journal.run_account, systemd, "0123456789abcdef0123456789abcdef", 20)
    labelled("records:all", journal.read_records, systemd, "")
    labelled("records:bad-cursor", journal.read_records, systemd, "s=0;i=1;b=0;m=0;t=0;x=0")
    labelled("interrupted", systemd.journal_entries,
             ["-b", "0", "--output-fields=" + ",".join(journal.RUN_FIELDS), "MESSAGE_ID=" + journal.record.RUN_FINISHED])
    LABEL[0] = "follow:" + plan["failing"]
    follow(systemd, ["--since=@0", "_SYSTEMD_UNIT=" + failing_unit])
    for label, path in plan["files"].items():
        state_file(label, path)
    for call in CALLS:
        for key in ("sent", "received"):
            if key in call:
                call[key] = base64.b64encode(call[key]).decode()
    json.dump(CALLS, sys.stdout)


if __name__ == "__main__":
    main()
