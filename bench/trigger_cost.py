#!/usr/bin/env python3
"""CPU of one trigger run, today's against an older revision's and a bare stdlib POST, in one run.

Builds the trigger zipapp of this work tree and of `--against REV` (a git revision, built
from a temporary worktree), starts a loopback HTTP server, then runs the three interleaved,
round by round, so that the noise of a shared machine falls on all of them alike:

  stdlib     `python3 -I -S -c <http.client POST>` (the Python floor)
  REV        that revision's trigger, one manual run (`--job x --url ...`)
  today      this tree's trigger, the same run

CPU = user + sys from wait4 (children included), medians over --rounds. Also splits today's
run into import and main() by time.process_time(). No sandbox, no systemd: bench/burst.py
measures runs on a real host under their units; this one isolates the program itself.

    .venv/bin/python bench/trigger_cost.py --against a5b3305    # issue 11's close
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"  # the host's Python, as the units run it

PHASES = r"""
import os, sys, time
t0 = time.process_time()
sys.path.insert(0, PYZ)
import deployer.host.trigger as cli
t1 = time.process_time()
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
try:
    cli.main(ARGS)
except SystemExit:
    pass
sys.stderr.write("%f %f\n" % (t1 - t0, time.process_time() - t1))
"""


class Ok(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"code":0}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def build(tree: Path, out: Path) -> Path:
    """The trigger zipapp of the source tree `tree`, built by that tree's own bundle code."""
    code = ("import sys; sys.path.insert(0, %r)\nfrom deployer.bundle import trigger_bundle\n"
            "open(%r, 'wb').write(trigger_bundle())" % (str(tree), str(out)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tree)
    return out


def cpu_of(argv: list[str]) -> float:
    with open(os.devnull, "wb") as devnull:
        process = subprocess.Popen(argv, stdout=devnull, stderr=devnull)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"exit {process.returncode}: {' '.join(argv)}")
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="a5b3305", help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/x" % server.server_address[1]
    run_args = ["--job", "x", "--url", url, "--timeout", "10s", "--retries", "0", "--expect-status", "2xx"]

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        old_tree = scratch / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(old_tree), args.against],
                       check=True)
        try:
            old = build(old_tree, scratch / "old.pyz")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)], check=True)
        new = build(REPO, scratch / "new.pyz")
        variants = {
            "stdlib POST": [PYTHON, "-I", "-S", "-c", "import http.client, sys; c = http.client.HTTPConnection("
                            "'127.0.0.1', %d); c.request('POST', '/x', body=b'{}'); c.getresponse().read()"
                            % server.server_address[1]],
            args.against: [PYTHON, "-I", "-S", str(old)] + run_args,
            "today": [PYTHON, "-I", "-S", str(new)] + run_args,
        }
        cpu = {name: [] for name in variants}
        phases = []
        for _ in range(args.rounds):
            for name, argv in variants.items():
                cpu[name].append(cpu_of(argv))
            code = PHASES.replace("PYZ", repr(str(new))).replace("ARGS", repr(run_args))
            done = subprocess.run([PYTHON, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
            phases.append(tuple(map(float, done.stderr.split()[-2:])))

    floor = statistics.median(cpu["stdlib POST"])
    print(f"| per run ({args.rounds} rounds, interleaved) | CPU | / stdlib POST |")
    print("|---|---|---|")
    for name, samples in cpu.items():
        median = statistics.median(samples)
        print(f"| {name} | {median * 1000:.1f} ms | {median / floor:.2f}x |")
    print(f"\ntoday's run: import {statistics.median(p[0] for p in phases) * 1000:.1f} ms, "
          f"main() {statistics.median(p[1] for p in phases) * 1000:.1f} ms (process time, medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
