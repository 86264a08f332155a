"""Record the host reads' fixtures (tests/data/host_reads/) on a real cron host, by hand:

    .venv/bin/python -m tests.record_host_reads [--keep | --from CALLS.json]

Boots a cron host (tests/cronhost.py), pushes four jobs (`good` every minute, `bad` failing with
an alert to a DingTalk-style robot, `never` whose timer never elapses, `long` still running when
the reads are made, past its alert_long), runs them, adds the odd
cases a real host gives (a run PID 1 killed at its RuntimeMaxSec=, one that exited 3 without a
record, a record with a non-UTF-8 MESSAGE and one whose field was sent twice, a resumable run's record
and a skipped slot's: all sent from a job's own cgroup under a dynamic user, as a real run's; a
run killed by SIGKILL), then runs tests/host_reads_probe.py on the host: every read the
agent, the alert sender, the metrics collector and the watcher make, through the real `Systemd`
boundary of the pushed trigger.pyz, with each process's and PID 1's raw answer kept. Each call
becomes one fixture {"command", "output", "parsed"}; `parsed` is what the real parser makes of
the output here (tests/host_reads.py replays it), to be reviewed in the diff before committing.
Existing fixtures of a read are replaced; hand-written ones (`"recorded": false`) are kept.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import host_reads
from tests.cronhost import CronHost
from tests.httpserver import Reply, RecordingServer, json_reply
from tests.robots import Robot

HERE = Path(__file__).parent
TOKEN, SECRET = "tok-record", "SEC-record"
CALENDARS = {"good": ["*-*-* *:*:00 UTC"], "bad": ["*-*-* 03:00:00 UTC"], "never": ["*-01-01 03:00:00 UTC"],
             "long": ["*-*-* 03:00:00 UTC"]}

# A run's record as a real one is sent (journald's native protocol), from a unit in the jobs' slice
# under a dynamic user: the odd ones a real host can get (journalctl -o json gives a non-UTF-8
# field as a list of bytes, a field sent twice as a list of its values).
ODD_SENDER = r"""
import os, socket, struct, time
def field(name, value):
    value = value if isinstance(value, bytes) else value.encode()
    return name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
run = os.environ["INVOCATION_ID"]
base = [("MESSAGE_ID", "5f0c1b0e9f5a4e2d8a7c3b6d1e2f4a90"), ("DEPLOYER_JOB", "odd"), ("DEPLOYER_RUN", run),
        ("DEPLOYER_SLOT", "0"), ("DEPLOYER_STARTED", "%.3f" % time.time()), ("DEPLOYER_DURATION", "0.010"),
        ("DEPLOYER_ATTEMPTS", "1"), ("DEPLOYER_RESULT", "failed"), ("DEPLOYER_KEY", "odd/manual-" + run),
        ("SYSLOG_IDENTIFIER", "deployer-odd")]
sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
# 1: a record whose reason and MESSAGE are not UTF-8 (a service's Latin-1 body quoted in the reason)
one = base + [("DEPLOYER_REASON", b"status 500: caf\xe9 \xff"), ("MESSAGE", b"odd: FAILED (caf\xe9)")]
sink.sendto(b"".join(field(k, v) for k, v in one), "/run/systemd/journal/socket")
time.sleep(0.2)
# 2: a record with DEPLOYER_HTTP_STATUS sent twice (a list in -o json: not a record the parser takes)
two = base + [("DEPLOYER_REASON", "status 502"), ("DEPLOYER_HTTP_STATUS", "502"), ("DEPLOYER_HTTP_STATUS", "503"),
              ("MESSAGE", "odd: FAILED twice")]
sink.sendto(b"".join(field(k, v) for k, v in two), "/run/systemd/journal/socket")
print("odd: sent")
time.sleep(0.5)
"""

# A run the shutdown interrupted, that may be resumed (RunRecord.resume: accept-then-poll), then a
# slot the same job skipped (which leaves the resume due): what agent.resume_interrupted reads.
RESUMABLE_SENDER = ODD_SENDER.split("sink = ")[0].replace('"odd"', '"resumable"').replace("odd/", "resumable/") + r"""
sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
slot = str(int(time.time()) // 60 * 60 - 60)
one = [f for f in base if f[0] not in ("DEPLOYER_SLOT", "DEPLOYER_KEY")] + [
    ("DEPLOYER_SLOT", slot), ("DEPLOYER_KEY", "resumable/" + slot), ("DEPLOYER_RESUME", "y"),
    ("DEPLOYER_REASON", "interrupted while polling"), ("MESSAGE", "resumable: interrupted")]
sink.sendto(b"".join(field(k, v) for k, v in one), "/run/systemd/journal/socket")
time.sleep(0.2)
# (sent by a later run: its own run id)
two = [f for f in base if f[0] not in ("DEPLOYER_SLOT", "DEPLOYER_KEY", "DEPLOYER_RESULT", "DEPLOYER_RUN")] + [
    ("DEPLOYER_RUN", run[::-1]),
    ("DEPLOYER_SLOT", str(int(slot) + 60)), ("DEPLOYER_KEY", "resumable/" + str(int(slot) + 60)),
    ("DEPLOYER_RESULT", "skipped"), ("DEPLOYER_REASON", "the previous run still ran"), ("MESSAGE", "resumable: skipped")]
sink.sendto(b"".join(field(k, v) for k, v in two), "/run/systemd/journal/socket")
print("resumable: sent")
time.sleep(0.5)
"""

BROKEN_UNIT = "/tmp/deployer-broken.service"
BROKEN = "[Unit]\nDescription=broken on purpose\n[Service]\nExecStart=relative/path\nBogusKey=1\n"


def deployer(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(HOME=str(home), T_TOKEN=TOKEN, T_SECRET=SECRET)
    result = subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True, text=True, env=env,
                            timeout=300)
    if check and result.returncode != 0:
        raise SystemExit(f"deployer {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def wait(what: str, condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def inventory(host: CronHost, server: RecordingServer, robot: Robot) -> str:
    return host.inventory_host() + f"""
[alert:ops]
type = dingtalk
token = ${{T_TOKEN}}
secret = ${{T_SECRET}}
endpoint = {robot.endpoint("dingtalk")}

[defaults]
retries = 0
timeout = 10s

[job:good]
schedule = * * * * *
url = {server.url("/ok")}

[job:bad]
schedule = 0 3 * * *
url = {server.url("/bad")}
alert = ops

[job:never]
schedule = 0 3 1 1 *
url = {server.url("/ok")}

[job:long]
schedule = 0 3 * * *
url = {server.url("/slow")}
timeout = 150s
alert_long = 30s
alert = ops
"""


def records_of(host: CronHost, job: str) -> list:
    out = host.ssh(f"journalctl --no-pager -o json MESSAGE_ID=5f0c1b0e9f5a4e2d8a7c3b6d1e2f4a90 DEPLOYER_JOB={job}",
                   check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def record(keep: bool = False) -> list:
    work = Path(tempfile.mkdtemp(prefix="record-host-reads-"))
    home = work / "home"
    home.mkdir()
    routes = {"/ok": json_reply({"code": 0}), "/bad": Reply(500, b"settlement exploded"),
              "/slow": Reply(200, b'{"code": 0}', delay=120)}
    with RecordingServer(routes) as server, Robot(token=TOKEN, secret=SECRET) as robot, \
            CronHost("fixtures", workdir=work / "host") as host:
        path = work / "inventory.ini"
        path.write_text(inventory(host, server, robot))
        deployer(home, "push", "-i", str(path))
        # Still running when the reads are made: a run in progress, and the watcher's state of it.
        host.ssh("systemctl start --no-block deployer-long.service")
        deployer(home, "run", "bad", "-i", str(path), check=False)
        deployer(home, "run", "good", "-i", str(path))
        robot.wait_accepted(1, timeout=60)
        # Not the deployer's: PID 1's own account of runs that wrote no record.
        host.ssh("systemd-run -q --unit=deployer-killed.service --slice=deployer-jobs.slice -p RuntimeMaxSec=1 "
                 "-p DynamicUser=yes sleep 30", check=False)
        host.ssh("systemd-run -q --unit=deployer-crashed.service --slice=deployer-jobs.slice -p DynamicUser=yes "
                 "sh -c 'echo crashing; exit 3'", check=False)
        host.ssh("systemd-run -q --wait --unit=deployer-odd.service --slice=deployer-jobs.slice -p DynamicUser=yes "
                 "python3 -c " + shlex.quote(ODD_SENDER), check=False)
        host.ssh("systemd-run -q --wait --unit=deployer-resumable.service --slice=deployer-jobs.slice "
                 "-p DynamicUser=yes python3 -c " + shlex.quote(RESUMABLE_SENDER), check=False)
        # Killed by a signal: PID 1's "Main process exited, code=killed, status=9/KILL" ($$ is how a
        # command line systemd-run hands to PID 1 says $).
        host.ssh("systemd-run -q --unit=deployer-signalled.service --slice=deployer-jobs.slice -p DynamicUser=yes "
                 "sh -c 'echo going; kill -9 $$$$'", check=False)
        host.ssh(f"cat > {BROKEN_UNIT}", input=BROKEN)
        # A timer's own run of `good` (through.json is a timer run's), and the collector's state.
        wait("a timer run of good", lambda: any(r.get("DEPLOYER_SLOT", "0") != "0" for r in records_of(host, "good")))
        wait("the killed run's end", lambda: "failed" in host.ssh(
            "systemctl is-failed deployer-killed.service", check=False).stdout)
        wait("the watcher's state of the long run", lambda: host.ssh(
            "grep -q long /var/lib/deployer/watch.json", check=False).returncode == 0, timeout=150)
        wait("metrics.json", lambda: host.ssh("test -s /var/lib/deployer/metrics.json", check=False).returncode == 0)
        host.ssh("systemctl start deployer-host@metrics.service", check=False)
        invocations = {"failed-run": records_of(host, "bad")[0]["DEPLOYER_RUN"],
                       "ok-run": records_of(host, "good")[0]["DEPLOYER_RUN"],
                       "killed-run": host.ssh("systemctl show -p InvocationID --value deployer-killed.service"
                                              ).stdout.strip(),
                       "signalled-run": host.ssh("systemctl show -p InvocationID --value deployer-signalled.service"
                                                 ).stdout.strip()}
        plan = {
            "jobs": ["good", "bad", "never", "long"], "odd": "odd", "failing": "bad", "never": "never",
            "extra_history": ["killed", "crashed", "signalled", "resumable"],
            "calendars": CALENDARS, "invocations": invocations, "broken_unit": BROKEN_UNIT,
            "files": {"held:absent": "/var/lib/deployer/held.json", "lease": "/var/lib/deployer/lease.json",
                      "owner": "/var/lib/deployer/owner.json", "metrics": "/var/lib/deployer/metrics.json",
                      "watch": "/var/lib/deployer/watch.json",
                      "through": "/run/deployer-through/deployer-good/through.json"},
        }
        probe = (HERE / "host_reads_probe.py").read_text()
        answer = host.ssh("python3 - " + shlex.quote(json.dumps(plan)), input=probe, timeout=300)
        calls = json.loads(answer.stdout)
        # Last (a held host answers status differently): the hold a boot check writes when the lease
        # ran out while the host was down (agent.hold_at_boot, run as at boot), as the agent reads it.
        host.ssh("systemctl stop deployer-lease@renew.timer", check=False)
        host.ssh("cat > /var/lib/deployer/lease.json", input=json.dumps({"renewed": time.time() - 3600, "seconds": 300}))
        host.ssh("systemctl start deployer-lease@boot.service")
        held = host.ssh("cat /var/lib/deployer/held.json", check=False)
        calls.append({"label": "held", "kind": "file", "path": "/var/lib/deployer/held.json",
                      "output": held.stdout if held.returncode == 0 else None})
        version = host.ssh("systemctl --version | head -1").stdout.strip()
        if keep:
            (work / "calls.json").write_text(json.dumps([calls, version]))
            print("kept", work)
    return calls, version


def main() -> int:
    if "--from" in sys.argv:  # the calls of a kept recording, turned into fixtures again
        calls, version = json.loads(Path(sys.argv[sys.argv.index("--from") + 1]).read_text())
    else:
        calls, version = record(keep="--keep" in sys.argv)
    host_reads.CALENDAR_OF.update(CALENDARS)
    fixtures = host_reads.fixtures_from_calls(calls, recorded_on=version)
    written = host_reads.write_fixtures(fixtures)
    for path in written:
        print(path.relative_to(HERE.parent))
    errors = [c for c in calls if c.get("kind") == "error"]
    for error in errors:
        print("probe error:", error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
