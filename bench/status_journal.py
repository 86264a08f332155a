#!/usr/bin/env python3
"""What status's journal read costs (issue 13): `deployer status` of N jobs on a real cron host,
and, side by side on the same host, the agent's one journalctl call alone, as a ratio.

The journalctl column reads every record of the jobs (the agent stops at each job's newest);
the last column is the same read with a match term per job, as the agent does for 50 jobs or
fewer (journal.PER_JOB_MATCHES). Two cases per size: every job never ran (the read finds nothing: the worst case for the early
stop, bounded by journald's field index), and every job paused with RECORDS records each in the
journal (written with `logger --journald`, as the trigger writes them), where the read stops at
each job's newest record. Medians of --repeat runs. Not a test: nothing here asserts a time.

    .venv/bin/python bench/status_journal.py --sizes 100,1000
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deployer.host import journal  # noqa: E402
from deployer.contract.record import RunRecord  # noqa: E402
from tests.cronhost import CronHost  # noqa: E402

RECORDS = 5  # per job; journald drops a sender above 10,000 entries in 30 s


def deployer(*args: str, home: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = home
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "deployer", *args], check=True, capture_output=True, env=env)
    return time.monotonic() - started


def journal_call(host: CronHost, jobs: list[str], per_job: bool = False) -> float:
    """The agent's read of every record of `jobs` (without its early stop): as it makes it, or
    (`per_job`) with a match term per job, as it does for PER_JOB_MATCHES jobs or fewer."""
    argv = ["journalctl", "--no-pager", "-q", "-o", "json", "-r", "--output-fields=" + ",".join(journal.RUN_FIELDS)]
    matches = journal.run_matches(jobs)
    if per_job and len(jobs) > journal.PER_JOB_MATCHES:
        matches = (matches[:1] + ["DEPLOYER_JOB=" + j for j in jobs] + matches[1:]
                   + ["UNIT=deployer-%s.service" % j for j in jobs])
    argv += matches
    timer = ("import json,subprocess,sys,time; a=json.load(sys.stdin); s=time.monotonic(); "
             "subprocess.run(a,stdout=subprocess.DEVNULL,check=True); print(time.monotonic()-s)")
    return float(host.ssh(f"python3 -c {shlex.quote(timer)}", input=json.dumps(argv)).stdout.strip())


def write_records(host: CronHost, jobs: list[str], count: int) -> None:
    """`count` records per job, sent to the host's journald as the trigger sends them (record.py's
    native protocol, one datagram each), by a python3 on the host."""
    now = time.time() - 3600
    entries = [{"SYSLOG_IDENTIFIER": f"deployer-{job}", **RunRecord(
        job, f"{i:08x}{job}", int(now) + i, now + i, 0.3, 1, "ok", "status 200", 200).journal_fields()}
        for i in range(count) for job in jobs]
    sender = ("import json,socket,sys; s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n"
              "for e in json.load(sys.stdin):\n"
              " s.sendto(''.join('%s=%s\\n'%kv for kv in e.items()).encode(),'/run/systemd/journal/socket')")
    host.ssh(f"python3 -c {shlex.quote(sender)}", input=json.dumps(entries), timeout=600)
    deadline = time.monotonic() + 60
    last = jobs[-1]
    while time.monotonic() < deadline and int(host.ssh(f"journalctl -q -o cat DEPLOYER_JOB={last} | wc -l")
                                               .stdout) < count:
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    print(" jobs | case            | status   journalctl  journal/status  a term per job")
    with tempfile.TemporaryDirectory() as work:
        for size in [int(s) for s in options.sizes.split(",")]:
            with CronHost("cron01", workdir=Path(work) / f"cron01-{size}") as host:
                jobs = [f"job{i:04d}" for i in range(size)]
                path = Path(work) / f"inventory-{size}.ini"
                path.write_text(host.inventory_host() + "".join(
                    f"[job:{j}]\nschedule = {i % 60} {i % 24} * * *\nurl = http://127.0.0.1:9/{j}\n"
                    for i, j in enumerate(jobs)))
                deployer("push", "-i", str(path), home=work)
                for case in ("never ran", f"paused, {RECORDS} runs"):
                    if case != "never ran":
                        write_records(host, jobs, RECORDS)
                        stamp = "/var/lib/deployer/paused"
                        host.ssh(f"mkdir -p {stamp} && cd {stamp} && for j in {' '.join(jobs)}; do "
                                 f": > deployer-$j.timer; done")
                    deployer("status", "-i", str(path), "--json", home=work)  # warm up
                    status = statistics.median(deployer("status", "-i", str(path), "--json", home=work)
                                               for _ in range(options.repeat))
                    journal = statistics.median(journal_call(host, jobs) for _ in range(options.repeat))
                    per_job = statistics.median(journal_call(host, jobs, True) for _ in range(options.repeat))
                    print(f"{size:5d} | {case:15s} | {status:6.2f}s  {journal:8.2f}s   {journal / status:8.2f}x"
                          f"        {per_job:8.2f}s")


if __name__ == "__main__":
    main()
