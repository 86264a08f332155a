#!/usr/bin/env python3
"""Lateness of N timers due the same second, on one real cron host, as ratios to references.

One host (tests/cronhost.py) and one loopback HTTP server on this machine that records the
arrival time and path of every request (the container shares our network namespace). For each
size, every variant fires N timers due the same whole second (UTC, AccuracySec=1s as deployer's
timers), three bursts per variant, the variants interleaved round by round so that the noise of
this shared machine spreads over all of them:

  deployer       `deployer push` of N jobs (on_calendar = the due second), the real trigger
  py-sandbox     `python3 -I -S -c <http.client POST>` under deployer's [Service] hardening
  py-bare        the same POST without the hardening (the Python floor without sandbox)
  curl-sandbox   `curl -X POST` under the hardening
  curl-bare      `curl -X POST`, no sandbox (the physical reference)

Lateness = arrival at the server - due time; p50/p99/max pooled over the three bursts. Every
(variant, burst, job) must arrive exactly once, or the run says so and exits 1.

Per-run cost (--cost, on by default): CPU seconds (user+sys from wait4) and peak RSS of one
trigger run vs one bare stdlib POST, on the host, medians of 5 sequential runs.

Part B (--sets): the py workload under sets of hardening directives, one burst of N each, with
the `systemd-analyze security` exposure of each set.

Machines are noisy: read the ratios. This is a benchmark, nothing asserts a time.

    make bench-burst                               # --jobs 100
    .venv/bin/python bench/burst.py --jobs 100,300
    .venv/bin/python bench/burst.py --jobs 100 --sets --bursts 1 --no-variants --no-cost
    .venv/bin/python bench/burst.py --sets full,static-no-kernel --no-variants --no-cost
"""
from __future__ import annotations

import argparse
import calendar
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cronhost import CronHost  # noqa: E402

UNIT_DIR = "/etc/systemd/system"
STATIC_USER = "deployer"
VARIANTS = ("deployer", "py-sandbox", "py-bare", "curl-sandbox", "curl-bare")
# Opt-in (--variants): deployer.host.http from a zip on the host, in the sandbox: what a
# trigger built on it would cost at least.
EXTRA_VARIANTS = ("hostside-sandbox", "deployer-fast",  # deployer-fast: the host's `sandbox = fast`
                  "deployer-nometrics")  # the host's `metrics_dir =` (empty): deployer before issue 14
# PID 1's "Starting <unit>..." entry: one per start of a unit (UNIT=).
UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"
HOSTSIDE_ZIP = "/var/lib/deployer-bench/hostside.zip"


# --- the recording server ------------------------------------------------------------------


class Arrivals:
    """Loopback HTTP server: every request's path and arrival time (time.time())."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, float]] = []
        arrivals = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                at = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with arrivals.lock:
                    arrivals.seen.append((self.path, at))
                body = b'{"code": 0}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            do_GET = do_PUT = do_POST

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # a burst of hundreds of connects at once
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def under(self, prefix: str) -> list[tuple[str, float]]:
        with self.lock:
            return [(p, t) for p, t in self.seen if p.startswith(prefix)]


# --- units ---------------------------------------------------------------------------------


def hardening_lines(sandbox: str = "strict") -> list[str]:
    """deployer's sandbox, as the renderer renders it for a host's `sandbox`."""
    from deployer.render import _environment

    text = _environment().get_template("hardening.conf.j2").render(sandbox=sandbox)
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def without(lines: list[str], *keys: str, add: tuple[str, ...] = ()) -> list[str]:
    return [line for line in lines if line.split("=", 1)[0] not in keys] + list(add)


MOUNT_NS = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectProc", "ProcSubset",
            "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
            "DevicePolicy")
SECCOMP = ("SystemCallFilter", "SystemCallArchitectures", "SystemCallErrorNumber", "MemoryDenyWriteExecute",
           "LockPersonality", "RestrictNamespaces", "RestrictRealtime", "RestrictAddressFamilies",
           "RestrictSUIDSGID")


KERNEL = ("ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups")


def hardening_sets() -> dict[str, tuple[str, list[str]]]:
    """Part B: id -> (description, directives): deployer's set, and sets with groups dropped."""
    full = hardening_lines()
    static = without(full, "DynamicUser", add=(f"User={STATIC_USER}",))
    return {
        "full": ("full (deployer)", full),
        "none": ("none", []),
        "static": ("-DynamicUser +User=", static),
        "-privusers": ("-PrivateUsers", without(full, "PrivateUsers")),
        "-proc": ("-ProtectProc/ProcSubset", without(full, "ProtectProc", "ProcSubset")),
        "-privdev": ("-PrivateDevices", without(full, "PrivateDevices", "DevicePolicy")),
        "-kernel": ("-ProtectKernel*/ControlGroups", without(full, *KERNEL)),
        "-seccomp": ("-seccomp group", without(full, *SECCOMP)),
        "dyn-mountns": ("-mount-ns group (DynamicUser implies some)", without(full, *MOUNT_NS)),
        "static-mountns": ("User=, -mount-ns group", without(static, *MOUNT_NS)),
        "static-privusers": ("User=, -PrivateUsers", without(static, "PrivateUsers")),
        "static-min-mount": ("User=, mounts: System/Home/Tmp only",
                             without(static, *(set(MOUNT_NS) - {"ProtectSystem", "ProtectHome", "PrivateTmp"}))),
        "static-no-kernel": ("User=, -PrivateDevices -ProtectKernel*", without(static, "PrivateDevices", "DevicePolicy", *KERNEL)),
        "no-kernel": ("-PrivateDevices -ProtectKernel*", without(full, "PrivateDevices", "DevicePolicy", *KERNEL)),
        "lean-cgroups": ("-PrivateDevices -ProtectKernelTunables -ProtectControlGroups",
                         without(full, "PrivateDevices", "ProtectKernelTunables", "ProtectControlGroups")),
        "lean": ("-PrivateDevices -ProtectKernelTunables", without(full, "PrivateDevices", "ProtectKernelTunables")),
        "-tunables": ("-ProtectKernelTunables", without(full, "ProtectKernelTunables")),
        "-tunables-privdev": ("-ProtectKernelTunables -PrivateDevices",
                              without(full, "ProtectKernelTunables", "PrivateDevices", "DevicePolicy")),
        "-tunables-cgroups": ("-ProtectKernelTunables -ProtectControlGroups",
                              without(full, "ProtectKernelTunables", "ProtectControlGroups")),
    }


ROUND1 = "full,none,static,-privusers,-proc,-privdev,-seccomp,static-mountns,static-privusers"


def python_post(url: str) -> list[str]:
    host, _, rest = url[len("http://"):].partition("/")
    address, port = host.split(":")
    code = (f"import http.client as h;c=h.HTTPConnection('{address}',{port},timeout=60);"
            f"c.request('POST','/{rest}',body=b'');r=c.getresponse();r.read();"
            f"raise SystemExit(r.status//100!=2)")
    return ["/usr/bin/python3", "-I", "-S", "-c", code]


def hostside_post(url: str) -> list[str]:
    code = (f"import sys;sys.path.insert(0,'{HOSTSIDE_ZIP}');from deployer.host.http import request;"
            f"raise SystemExit(request('POST','{url}').status//100!=2)")
    return ["/usr/bin/python3", "-I", "-S", "-c", code]


def hostside_zip() -> bytes:
    """deployer/host/http.py as source: zipimport compiles it on every run (a few ms; bytecode
    compiled for the host's Python at push time would save them)."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("deployer/__init__.py", "deployer/host/__init__.py", "deployer/host/http.py"):
            archive.writestr(name, b"" if name == "deployer/__init__.py" else (REPO / name).read_bytes())
    return buffer.getvalue()


def curl_post(url: str) -> list[str]:
    return ["/usr/bin/curl", "-sS", "-f", "-X", "POST", "-o", "/dev/null", "--max-time", "60", url]


def exec_line(argv: list[str]) -> str:
    from deployer.systemd import exec_line as render

    return render(argv)


def service_text(argv: list[str], hardening: list[str]) -> str:
    """Deployer's [Service] settings around another command (`%i` is the job index)."""
    return "\n".join(["[Unit]", "Description=burst bench %i", "", "[Service]", "Type=oneshot",
                      "ExecStart=" + exec_line(argv).replace("%%i", "%i"), "TimeoutStartSec=75s",
                      *hardening, ""])


def timer_text(due: int) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(due))
    return f"[Unit]\nDescription=burst bench\n\n[Timer]\nOnCalendar={stamp} UTC\nAccuracySec=1s\n"


def instances(unit: str, jobs: int, suffix: str) -> str:
    return " ".join(f"{unit}@{i:03d}.{suffix}" for i in range(jobs))


# --- the harness ---------------------------------------------------------------------------


@dataclass
class Burst:
    variant: str
    number: str
    due: int
    lateness: list[float]
    missing: int
    duplicates: int
    metrics_runs: int = 0  # starts of the metrics collector the burst caused


class Bench:
    def __init__(self, host: CronHost, server: Arrivals, workdir: Path, jobs: int):
        self.host, self.server, self.workdir, self.jobs = host, server, workdir, jobs
        self.env = dict(os.environ, HOME=str(workdir / "home"))
        (workdir / "home").mkdir(exist_ok=True)
        self.inventory = workdir / f"inventory-{jobs}.ini"
        self.lead_factor = 1.0

    def due_second(self, push: bool = False) -> int:
        """A whole second far enough ahead for the arming (a push of N jobs, or one ssh) to end;
        each overrun (a loaded machine) doubles the lead of later bursts."""
        lead = (3.0 + self.jobs / 40 if push else 1.5 + self.jobs / 150) * self.lead_factor
        return int(time.time() + lead) + 1

    # arming ----------------------------------------------------------------------------

    def arm_deployer(self, key: str, variant: str = "deployer", sandbox: str = "strict", metrics: bool = True) -> int:
        """Push N jobs due the same second, each calling /VARIANT/KEY/<i> (the host's `sandbox`;
        `metrics`: the host's default metrics_dir, else none)."""
        due = self.due_second(push=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(due))
        body = "".join(f"[job:burst{i:03d}]\non_calendar = {stamp} UTC\n"
                       f"url = {self.server.url(f'/{variant}/{key}/{i}')}\n" for i in range(self.jobs))
        extra = {} if metrics else {"metrics_dir": ""}
        self.inventory.write_text(self.host.inventory_host(sandbox=sandbox, **extra) + body)
        self.deployer("push", "--host", "bench", "-i", str(self.inventory))
        return due

    def arm_custom(self, unit: str, variant: str, make, key: str, hardening: list[str]) -> int:
        """N instances of UNIT@.service running make(URL of /VARIANT/KEY/<i>), due the same second."""
        argv = make(self.server.url(f"/{variant}/{key}/%i"))
        due = self.due_second()
        script = (f"cat > {UNIT_DIR}/{unit}@.service <<'EOF'\n{service_text(argv, hardening)}EOF\n"
                  f"cat > {UNIT_DIR}/{unit}@.timer <<'EOF'\n{timer_text(due)}EOF\n"
                  f"systemctl daemon-reload && systemctl restart {instances(unit, self.jobs, 'timer')}")
        self.host.ssh(script)
        return due

    def deployer(self, *args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True,
                                text=True, env=self.env, cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(f"deployer {' '.join(args[:1])} failed: {result.stderr[-800:]}")

    # one burst -------------------------------------------------------------------------

    def burst(self, variant: str, key: str, arm) -> Burst:
        """arm(key) installs the timers and returns their due second. If the arming ended after
        it (a loaded machine), the timers may fire or not: that attempt is dropped (its key is
        never read again) and the burst is armed again with a new key and a longer lead."""
        for attempt in range(3):
            due = arm(key)
            if time.time() < due - 0.2:
                break
            print(f"  {variant}: arming ended after the due second; again with a longer lead",
                  file=sys.stderr, flush=True)
            self.lead_factor *= 2
            time.sleep(2)
            self.wait_idle()
            key += "r"
        else:
            raise SystemExit(f"{variant}: arming never ended before the due second")
        prefix = f"/{variant}/{key}/"
        deadline = due + 120
        while time.time() < deadline and len({p for p, _ in self.server.under(prefix)}) < self.jobs:
            time.sleep(0.2)
        self.wait_idle()
        seen = self.server.under(prefix)
        counts: dict[str, int] = {}
        for path, _ in seen:
            counts[path] = counts.get(path, 0) + 1
        if len(counts) < self.jobs:
            why = self.host.ssh(
                "systemctl list-units --no-legend --plain --failed 'bx-*' 'deployer-*'; for u in $(systemctl "
                "list-units --no-legend --plain --failed 'bx-*' 'deployer-*' | cut -d' ' -f1 | head -3); do "
                "journalctl --no-pager -o cat -n 6 -u $u; done", check=False).stdout
            print(f"  {variant} {key}: {self.jobs - len(counts)} missing; on the host:\n{why}",
                  file=sys.stderr, flush=True)
        first = {}
        for path, at in seen:
            first.setdefault(path, at)
        runs = self.collector_runs(due) if variant.startswith("deployer") else 0
        return Burst(variant, key, due, [at - due for at in first.values()],
                     missing=self.jobs - len(counts), duplicates=sum(c - 1 for c in counts.values()),
                     metrics_runs=runs)

    def collector_runs(self, due: int) -> int:
        """Starts of the metrics collector from the due second until its debounce timer is done
        (the every-minute heartbeat included when it fell in the burst)."""
        from deployer.contract import paths

        for _ in range(100):  # the debounce timer may still wait to run the collector
            state = self.host.ssh(f"systemctl is-active {paths.METRICS_SOON_TIMER} {paths.METRICS_SERVICE}",
                                  check=False).stdout.split()
            if "active" not in state and "activating" not in state:
                break
            time.sleep(0.3)
        out = self.host.ssh(f"journalctl --no-pager -q -o cat --since=@{due - 1} _PID=1 MESSAGE_ID={UNIT_STARTING} "
                            f"UNIT={paths.METRICS_SERVICE}", check=False).stdout
        return len([line for line in out.splitlines() if line.strip()])

    def wait_idle(self) -> None:
        """No bench or deployer service still running (a straggler would tax the next burst)."""
        for _ in range(300):
            out = self.host.ssh("systemctl list-units --no-legend --plain --state=activating,deactivating "
                                "'bx-*.service' 'deployer-*.service'", check=False).stdout
            if not out.strip():
                return
            time.sleep(0.3)

    def cleanup_custom(self, unit: str) -> None:
        self.host.ssh(f"systemctl stop {instances(unit, self.jobs, 'timer')} ; "
                      f"rm -f {UNIT_DIR}/{unit}@.service {UNIT_DIR}/{unit}@.timer; systemctl daemon-reload")

    def cleanup_deployer(self) -> None:
        self.inventory.write_text(self.host.inventory_host())
        self.deployer("push", "--host", "bench", "-i", str(self.inventory))

    def upload_hostside(self) -> None:
        import base64

        self.host.ssh(f"mkdir -p {os.path.dirname(HOSTSIDE_ZIP)} && base64 -d > {HOSTSIDE_ZIP}",
                      input=base64.b64encode(hostside_zip()).decode())

    # per-run cost ----------------------------------------------------------------------

    def cost(self, runs: int = 5) -> dict[str, dict[str, float]]:
        """CPU (user+sys) and peak RSS of single runs on the host, from wait4's rusage."""
        from deployer import inventory
        from deployer.contract import paths
        from deployer.render import metrics_argv, trigger_argv

        measurer = (
            "import json,os,statistics,sys\n"
            "runs=int(sys.argv[1]);argv=sys.argv[2:];cpu=[];rss=[]\n"
            "for _ in range(runs):\n"
            "    pid=os.posix_spawn(argv[0],argv,dict(os.environ))\n"
            "    _,status,ru=os.wait4(pid,0)\n"
            "    assert os.waitstatus_to_exitcode(status)==0,argv\n"
            "    cpu.append(ru.ru_utime+ru.ru_stime);rss.append(ru.ru_maxrss/1024)\n"
            "print(json.dumps({'cpu':statistics.median(cpu),'rss':statistics.median(rss)}))\n")
        self.host.ssh("cat > /root/rusage.py", input=measurer)
        self.inventory.write_text(self.host.inventory_host() + "[job:cost]\non_calendar = 2000-01-01 UTC\n"
                                  f"url = {self.server.url('/cost/trigger')}\n")
        self.deployer("push", "--host", "bench", "-i", str(self.inventory))
        job = inventory.load(str(self.inventory)).jobs[0]
        host = inventory.load(str(self.inventory)).hosts[0]
        collector = metrics_argv(host)
        commands = {"trigger": trigger_argv(job, "/usr/bin/python3"),
                    # the common pass (nothing new since its cursor), and one that reads every
                    # record the journal holds (no state: after every burst of this run)
                    "metrics warm": collector,
                    "metrics cold": ["/bin/sh", "-c", f"rm -f {paths.METRICS_STATE}; exec {shlex.join(collector)}"],
                    "stdlib POST": python_post(self.server.url("/cost/stdlib")),
                    "hostside POST": hostside_post(self.server.url("/cost/hostside")),
                    "curl": curl_post(self.server.url("/cost/curl"))}
        self.upload_hostside()
        result = {}
        for name, argv in commands.items():
            out = self.host.ssh(f"python3 /root/rusage.py {runs} {shlex.join(argv)}").stdout
            result[name] = json.loads(out.strip().splitlines()[-1])  # the trigger prints too
        self.cleanup_deployer()
        return result

    # security ---------------------------------------------------------------------------

    def exposure(self, unit: str) -> float:
        import re

        report = self.host.ssh(f"systemd-analyze security --no-pager {unit}@000.service", check=False).stdout
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
        return float(match.group(1)) if match else float("nan")


# --- reporting -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def summary(bursts: list[Burst]) -> dict[str, float]:
    values = [v for b in bursts for v in b.lateness]
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "bursts_p99": []}
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values),
            "bursts_p99": [percentile(b.lateness, 99) if b.lateness else float("nan") for b in bursts]}


def print_table(jobs: int, results: dict[str, list[Burst]]) -> None:
    print(f"\n{jobs} timers due the same second, {len(next(iter(results.values())))} bursts each "
          "(lateness = arrival at the server - due second)")
    header = f"{'variant':<14} | {'p50':>6} {'p99':>6} {'max':>6} | p99 per burst"
    print(header)
    print("-" * len(header))
    stats = {name: summary(bursts) for name, bursts in results.items()}
    for name, s in stats.items():
        per = " ".join(f"{v:.2f}" for v in s["bursts_p99"])
        print(f"{name:<14} | {s['p50']:>5.2f}s {s['p99']:>5.2f}s {s['max']:>5.2f}s | {per}")
    for name in ("deployer", "deployer-fast"):
        if name in results:
            print(f"metrics collector runs per burst of {jobs} ({name}): "
                  + " ".join(str(b.metrics_runs) for b in results[name]))
    if "deployer" in stats and "deployer-nometrics" in stats:
        print(f"p99 deployer / deployer-nometrics: {stats['deployer']['p99'] / stats['deployer-nometrics']['p99']:.2f}x")
    for subject in ("deployer", "deployer-fast", "hostside-sandbox", "deployer-nometrics"):
        if subject not in stats:
            continue
        for ref in ("py-sandbox", "py-bare", "curl-sandbox", "curl-bare"):
            if ref in stats:
                print(f"p99 {subject} / {ref}: {stats[subject]['p99'] / stats[ref]['p99']:.2f}x")
    if "py-sandbox" in stats and "py-bare" in stats:
        print(f"p99 py-sandbox / py-bare: {stats['py-sandbox']['p99'] / stats['py-bare']['p99']:.2f}x;  "
              f"curl-sandbox / curl-bare: "
              f"{stats.get('curl-sandbox', {}).get('p99', float('nan')) / stats.get('curl-bare', {}).get('p99', float('nan')):.2f}x")


def exactly_once(results: dict[str, list[Burst]]) -> list[str]:
    return [f"{b.variant} burst {b.number}: {b.missing} missing, {b.duplicates} duplicated"
            for bursts in results.values() for b in bursts if b.missing or b.duplicates]


# --- main ----------------------------------------------------------------------------------


def check_prerequisites() -> None:
    if not shutil.which("curl"):
        raise SystemExit("curl is missing (the container shares this machine's /usr): apt-get install -y curl, "
                         "or `make bench-burst`, which installs it")
    if os.geteuid() != 0:
        raise SystemExit("a real cron host (systemd-nspawn) needs root")


def run_size(jobs: int, args, workdir: Path, server: Arrivals) -> int:
    failures: list[str] = []
    with CronHost("bench", workdir=workdir / f"host{jobs}") as host:
        host.ssh(f"useradd --system --no-create-home --shell /usr/sbin/nologin {STATIC_USER}")
        bench = Bench(host, server, workdir, jobs)
        tag = f"n{jobs}"
        if not args.no_variants:
            full = hardening_lines()
            custom = {
                "py-sandbox": (python_post, full), "py-bare": (python_post, []),
                "curl-sandbox": (curl_post, full), "curl-bare": (curl_post, []),
                "hostside-sandbox": (hostside_post, full),
            }
            variants = args.variants.split(",")
            if "hostside-sandbox" in variants:
                bench.upload_hostside()
            results: dict[str, list[Burst]] = {v: [] for v in variants}
            for number in range(args.bursts):
                for variant in variants:
                    print(f"{jobs} jobs, burst {number + 1}/{args.bursts}: {variant}", file=sys.stderr, flush=True)
                    key = f"{tag}-{number}"
                    if variant == "deployer":
                        results[variant].append(bench.burst(variant, key, bench.arm_deployer))
                    elif variant == "deployer-nometrics":
                        results[variant].append(bench.burst(
                            variant, key, lambda k: bench.arm_deployer(k, "deployer-nometrics", metrics=False)))
                    elif variant == "deployer-fast":
                        results[variant].append(bench.burst(
                            variant, key, lambda k: bench.arm_deployer(k, "deployer-fast", "fast")))
                    else:
                        make, hardening = custom[variant]
                        unit = "bx-" + variant
                        results[variant].append(bench.burst(
                            variant, key, lambda k: bench.arm_custom(unit, variant, make, k, hardening)))
                        bench.cleanup_custom(unit)
            bench.cleanup_deployer()
            print_table(jobs, results)
            failures += exactly_once(results)
        if args.cost:
            cost = bench.cost()
            s = cost["stdlib POST"]
            print(f"\nper run on the host (median of 5): {'':>2}CPU s   peak RSS MB")
            for name, c in cost.items():
                print(f"  {name:<12} {c['cpu']:>8.3f} {c['rss']:>10.1f}")
            for name in ("trigger", "hostside POST"):
                c = cost[name]
                print(f"  {name} / stdlib POST: CPU {c['cpu'] / s['cpu']:.2f}x, peak memory {c['rss'] / s['rss']:.2f}x")
            records = int(bench.host.ssh("journalctl -q -o cat MESSAGE_ID=5f0c1b0e9f5a4e2d8a7c3b6d1e2f4a90 | wc -l",
                                         check=False).stdout.strip() or 0)
            print(f"  metrics cold read {records} records")
            if not args.no_variants and "deployer" in results:
                starts = statistics.median(b.metrics_runs for b in results["deployer"])
                per_run = starts * cost["metrics cold"]["cpu"] / jobs
                print(f"  metrics per job run in a burst of {jobs}: {starts:g} collector runs x "
                      f"{cost['metrics cold']['cpu']:.3f} s / {jobs} = {per_run * 1000:.1f} ms; "
                      f"(trigger + metrics) / trigger: {(cost['trigger']['cpu'] + per_run) / cost['trigger']['cpu']:.3f}x")
        if args.sets:
            sets_results: dict[str, list[Burst]] = {}
            scores: dict[str, float] = {}
            known = hardening_sets()
            chosen = ROUND1 if args.sets == "round1" else args.sets
            unit = "bx-set"
            chosen_sets = [known[key] for key in chosen.split(",")]
            for number in range(args.bursts):  # interleaved, so that noise spreads over all sets
                for index, (name, lines) in enumerate(chosen_sets):
                    print(f"{jobs} jobs, set {name!r} burst {number + 1}", file=sys.stderr, flush=True)
                    burst_key = f"{tag}-set{index}-{number}"
                    sets_results.setdefault(name, []).append(
                        bench.burst("set", burst_key, lambda k: bench.arm_custom(unit, "set", python_post, k, lines)))
                    if number == 0:
                        scores[name] = bench.exposure(unit)
            bench.cleanup_custom(unit)
            base = summary(sets_results.get("none") or sets_results["full (deployer)"])["p99"]
            print(f"\nPart B: the stdlib POST under sets of hardening directives, {jobs} timers, "
                  f"{args.bursts} burst(s) each")
            header = f"{'set':<34} | {'p50':>6} {'p99':>6} {'max':>6} | {'p99/base':>8} | exposure"
            print(header)
            print("-" * len(header))
            for name, bursts in sets_results.items():
                s = summary(bursts)
                print(f"{name:<34} | {s['p50']:>5.2f}s {s['p99']:>5.2f}s {s['max']:>5.2f}s | "
                      f"{s['p99'] / base:>7.2f}x | {scores[name]:.1f}")
            failures += exactly_once(sets_results)
    if failures:
        print("NOT exactly once:\n  " + "\n  ".join(failures))
        return 1
    print(f"exactly once: every job of every burst arrived exactly once ({jobs} jobs)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="100", help="timer counts (default 100)")
    parser.add_argument("--bursts", type=int, default=3, help="bursts per variant (default 3)")
    parser.add_argument("--no-cost", dest="cost", action="store_false", help="skip the per-run cost")
    parser.add_argument("--sets", nargs="?", const="round1", default="",
                        help="Part B: hardening sets by id, comma-separated (default: round1); "
                             "the ratio column is to 'none' if run, else to 'full'")
    parser.add_argument("--no-variants", action="store_true", help="skip the burst variants")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS + EXTRA_VARIANTS)} (default: the first five)")
    args = parser.parse_args()
    check_prerequisites()
    server = Arrivals()
    status = 0
    with tempfile.TemporaryDirectory(prefix="deployer-burst-") as tmp:
        for jobs in (int(s) for s in args.jobs.split(",")):
            status |= run_size(jobs, args, Path(tmp), server)
    return status


if __name__ == "__main__":
    sys.exit(main())
