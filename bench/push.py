#!/usr/bin/env python3
"""Push speed on real cron hosts, as ratios to references measured side by side in this run.

For each size (jobs; each job is a .service and a .timer):
  deployer first   `deployer push` to a freshly booted host
  raw limit        one ssh session: untar the same units, one daemon-reload, one
                   `systemctl enable --now` of all timers (what no tool can beat)
  deployer no-op   `deployer push` again, nothing changed
  ssh true         a bare `ssh host true` (OpenSSH)
  ansible          (--ansible, needs ansible-core) a template task per file type and a
                   systemd_service loop: first push and no-op push

Medians of --repeat runs; a fresh host per first-push sample. Machines are noisy: read the
ratios, not the seconds. This is a benchmark, not a test: nothing here asserts a time.

    make bench                                   # 10, 100, 1000 jobs
    .venv/bin/python bench/push.py --sizes 100 --repeat 5 --ansible
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cronhost import CronHost  # noqa: E402


def inventory_text(host: CronHost, jobs: int) -> str:
    body = "".join(f"[job:job{i:04d}]\nschedule = {i % 60} {i % 24} * * *\n"
                   f"url = http://127.0.0.1:9/job/{i}\n" for i in range(jobs))
    return host.inventory_host() + body


def timed(command: list[str], env: dict, stdin: bytes = b"") -> float:
    started = time.perf_counter()
    result = subprocess.run(command, input=stdin, capture_output=True, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed: {result.stderr.decode()[-500:]}")
    return elapsed


def units_tar(inventory_path: str) -> tuple[bytes, list[str]]:
    from deployer import inventory
    from deployer.render import render_units

    inv = inventory.load(inventory_path)
    files = render_units(inv.jobs)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for f in files:
            info = tarfile.TarInfo(f.name)
            info.size = len(f.content)
            archive.addfile(info, io.BytesIO(f.content))
    return buffer.getvalue(), [f.name for f in files if f.name.endswith(".timer")]


def ansible_files(workdir: Path, host: CronHost, inventory_path: str) -> list[str]:
    """The usual role, written out: rendered units as templates, then a systemd_service loop."""
    from deployer import inventory
    from deployer.render import render_units

    templates = workdir / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    jobs = []
    for f in render_units(inventory.load(inventory_path).jobs):
        (templates / (f.name + ".j2")).write_bytes(f.content.replace(b"{", b"{{ '{' }}"))
        if f.name.endswith(".timer"):
            jobs.append(f.name[: -len(".timer")])
    (workdir / "hosts.ini").write_text(
        f"cron ansible_host=127.0.0.1 ansible_port={host.port} ansible_user=root "
        f"ansible_ssh_private_key_file={host.key} ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={host.known_hosts}'\n")
    (workdir / "play.yml").write_text(f"""- hosts: cron
  gather_facts: false
  vars:
    jobs: {jobs!r}
  tasks:
    - name: services
      ansible.builtin.template: {{src: "templates/{{{{ item }}}}.service.j2", dest: "/etc/systemd/system/{{{{ item }}}}.service"}}
      loop: "{{{{ jobs }}}}"
    - name: timers
      ansible.builtin.template: {{src: "templates/{{{{ item }}}}.timer.j2", dest: "/etc/systemd/system/{{{{ item }}}}.timer"}}
      loop: "{{{{ jobs }}}}"
    - name: enable and start
      ansible.builtin.systemd_service: {{name: "{{{{ item }}}}.timer", enabled: true, state: started, daemon_reload: true}}
      loop: "{{{{ jobs }}}}"
""")
    return ["ansible-playbook", "-i", str(workdir / "hosts.ini"), str(workdir / "play.yml")]


def measure(size: int, repeat: int, with_ansible: bool, workdir: Path) -> dict[str, float]:
    env = dict(os.environ, HOME=str(workdir / "home"), ANSIBLE_HOST_KEY_CHECKING="False")
    (workdir / "home").mkdir(exist_ok=True)
    deployer = [sys.executable, "-m", "deployer", "push", "--host", "bench", "-i"]
    samples: dict[str, list[float]] = {k: [] for k in ("first", "raw", "noop", "ssh", "ansible", "ansible_noop")}
    for attempt in range(repeat):
        with CronHost("bench", workdir=workdir / f"d{size}-{attempt}") as host:
            path = workdir / f"inventory-{size}.ini"
            path.write_text(inventory_text(host, size))
            samples["first"].append(timed(deployer + [str(path)], env))
            if attempt == 0:
                for _ in range(repeat):
                    samples["noop"].append(timed(deployer + [str(path)], env))
                    samples["ssh"].append(timed(host.ssh_args(shared=False) + ["true"], env))
        with CronHost("bench", workdir=workdir / f"r{size}-{attempt}") as host:
            path.write_text(inventory_text(host, size))
            archive, timers = units_tar(str(path))
            script = (f"tar -x -C /etc/systemd/system && systemctl daemon-reload && "
                      f"systemctl enable --now {' '.join(timers)}")
            samples["raw"].append(timed(host.ssh_args(shared=False) + [script], env, archive))
        if with_ansible and attempt == 0:
            with CronHost("bench", workdir=workdir / f"a{size}") as host:
                path.write_text(inventory_text(host, size))
                command = ansible_files(workdir / f"ansible{size}", host, str(path))
                samples["ansible"].append(timed(command, env))
                samples["ansible_noop"].append(timed(command, env))
    return {k: statistics.median(v) for k, v in samples.items() if v}


def offline(jobs: int, workdir: Path) -> dict[str, float]:
    """Parse + check, render and next runs of `jobs` jobs, in this process: no host involved."""
    from deployer import inventory
    from deployer.render import host_files
    from deployer.schedule import next_runs_many, to_calendar

    path = workdir / f"offline-{jobs}.ini"
    path.write_text("[host:h]\naddress = 10.0.0.1\n" + "".join(
        f"[job:job{i:04d}]\nschedule = {i % 60} {i % 24} * * 1-5\nurl = http://svc/job/{i}\n" for i in range(jobs)))
    started = time.perf_counter()
    inv = inventory.load(str(path))
    parsed = time.perf_counter()
    host_files(inv, "h")
    rendered = time.perf_counter()
    next_runs_many([to_calendar(j.schedule, j.on_calendar, j.timezone).lines for j in inv.jobs], 2)
    return {"parse": parsed - started, "render": rendered - parsed, "next": time.perf_counter() - rendered}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000", help="job counts (default 10,100,1000)")
    parser.add_argument("--repeat", type=int, default=3, help="samples per median (default 3)")
    parser.add_argument("--ansible", action="store_true", help="also time the Ansible role (minutes)")
    args = parser.parse_args()
    if args.ansible and not shutil.which("ansible-playbook"):
        parser.error("--ansible needs ansible-playbook (pip install ansible-core)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="deployer-bench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            print(f"measuring {size} jobs...", file=sys.stderr, flush=True)
            rows.append((size, measure(size, args.repeat, args.ansible, Path(tmp))))
    header = (f"{'jobs':>5} | {'first':>7} {'raw':>7} {'first/raw':>9} | {'no-op':>7} {'ssh':>7} "
              f"{'no-op/ssh':>9}")
    if args.ansible:
        header += f" | {'ansible':>8} {'ans/first':>9} {'ans no-op':>9} {'ans/no-op':>9}"
    print(header)
    print("-" * len(header))
    for size, m in rows:
        line = (f"{size:>5} | {m['first']:>6.2f}s {m['raw']:>6.2f}s {m['first'] / m['raw']:>8.2f}x | "
                f"{m['noop']:>6.2f}s {m['ssh']:>6.2f}s {m['noop'] / m['ssh']:>8.2f}x")
        if "ansible" in m:
            line += (f" | {m['ansible']:>7.1f}s {m['ansible'] / m['first']:>8.0f}x "
                     f"{m['ansible_noop']:>8.1f}s {m['ansible_noop'] / m['noop']:>8.0f}x")
        print(line)
    print(f"(medians of {args.repeat}; targets: first/raw <= 3x at 100 jobs, no-op/ssh <= 4x)")
    with tempfile.TemporaryDirectory() as tmp:
        o = offline(1000, Path(tmp))
    print(f"offline, 1000 jobs: parse+check {o['parse']:.2f}s, render {o['render']:.2f}s, "
          f"next runs (systemd-analyze) {o['next']:.2f}s, total {sum(o.values()):.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
