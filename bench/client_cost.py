#!/usr/bin/env python3
"""What one POST costs a fresh process: deployer.host.http vs requests vs bare http.client.

Each client runs in its own `python -I` process (as the trigger does, once per run), POSTing
to a loopback server in this process; CPU (user+sys) and peak RSS come from wait4, import time
from `-X importtime` (the top-level module's cumulative time). Medians of --runs. Read ratios.

    .venv/bin/python bench/client_cost.py --runs 15
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CLIENTS = {
    "hostside.http": ("deployer.host.http",
                      "from deployer.host.http import request; assert request('POST', URL, body=b'{}').status == 200"),
    "requests": ("requests", "import requests; assert requests.post(URL, data=b'{}', timeout=(10, 60)).status_code == 200"),
    "http.client": ("http.client", "import http.client as h; c = h.HTTPConnection(HOST, PORT, timeout=60); "
                    "c.request('POST', '/x', body=b'{}'); assert c.getresponse().status == 200"),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def run(argv: list[str]) -> tuple[float, float]:
    pid = os.posix_spawn(argv[0], argv, dict(os.environ, PYTHONPATH=str(REPO)))
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def import_ms(python: str, module: str) -> float:
    err = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True).stderr
    for line in err.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)$", line)
        if match and match.group(3) == module and not match.group(2).strip():
            total = int(match.group(1))
    return total / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--python", default=sys.executable, help="interpreter (it must find requests)")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.handle_error = lambda *a: None  # a client that hangs up first is not news
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/x"
    rows = {}
    for name, (module, code) in CLIENTS.items():
        prelude = f"URL = {url!r}; HOST = '127.0.0.1'; PORT = {port}\n"
        cpu, rss, imp = [], [], []
        for _ in range(args.runs):
            c, r = run([args.python, "-c", prelude + code.replace("; ", "\n")])
            cpu.append(c)
            rss.append(r)
            imp.append(import_ms(args.python, module))
        rows[name] = (statistics.median(imp), statistics.median(cpu), statistics.median(rss))
    base = rows["requests"]
    print(f"one POST in a fresh process, medians of {args.runs} ({args.python})")
    print(f"{'client':<14} | {'import ms':>9} | {'CPU s':>6} | {'peak RSS MB':>11} | vs requests: import, CPU, RSS")
    for name, (imp, cpu, rss) in rows.items():
        print(f"{name:<14} | {imp:>9.1f} | {cpu:>6.3f} | {rss:>11.1f} | "
              f"{imp / base[0]:.2f}x, {cpu / base[1]:.2f}x, {rss / base[2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
