#!/usr/bin/env python3
"""Issue 25: each command at N jobs on one real cron host, beside its by-hand reference on that
host in the same run, as a ratio (the machines are noisy: read the ratios, not the seconds).

For each size, one freshly booted host, on a fresh ext4 file system with a journal, as a Debian
host has (--disk here: on this machine's own disk). This machine's root file system has no
journal, and ext4 without one passes over every inode freed in the last minutes for each file it
creates: after 20,000 unit files were removed, writing as many again took 3-12 s instead of 0.5 s,
and whichever side of a comparison ran after a removal paid for it.
  first push       reference: one ssh session untarring the same unit files, symlinks into
                   timers.target.wants, one daemon-reload, `systemctl start` in chunks of 500.
                   The reference goes first, then is taken off by hand (rm, one `systemctl stop`
                   of the glob, daemon-reload: its time is the "by-hand removal" row), then the
                   deployer pushes the same jobs to the same host. After all the other commands,
                   the reference and its removal run once more, then the deployer's push and its
                   removal: each side's mean of two counts, as PID 1 alone is noisy (it took 7 s to
                   start 10,000 timers in one run and 13 s in the next).
  no-op push       reference: one ssh call hashing every deployer unit file; once as an operator
                   pushes again (the last push's record is there), once without it (the first
                   push from another machine or after an upgrade: parse and render). The first
                   one runs right after the first push, within RACY_SECONDS of its writes, where
                   the host hashes every file again (deployer/host/hashes.py): its own row; the
                   median of the others is taken once those files are older.
  one job changed  a push of the inventory with one job's URL changed; reference: writing that
                   job's unit back by hand over ssh, one daemon-reload, a restart of its timer
  status --json    reference: `systemctl list-timers --all 'deployer-*'` over ssh
  history JOB      reference: `journalctl -u deployer-JOB.service` over ssh
  metrics pass     `systemctl start deployer-host@metrics.service` over ssh, timed: once with
                   nothing changed (the heartbeat's pass), once after touching the unit directory
                   (every job asked about, as after a push); reference: list-timers over ssh
  remove all       a push of the inventory with no jobs (prunes them all); reference: the
                   deployer's own first push (adding them)
  validate         offline, no host: time and peak RSS
Also the client's peak RSS per command (/usr/bin/time) and the RSS of the host's PID 1 and
journald before the first push, with the jobs installed, and after removing them.

Medians of --repeat runs for the reads and the no-op push; one sample of each push. This is a
benchmark, not a test: nothing here asserts a time.

    make bench-scale                                  # 1,000 jobs
    .venv/bin/python bench/scale.py --jobs 1000,10000 # 10,000 takes many minutes
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cronhost import CronHost  # noqa: E402
from deployer.host.hashes import RACY_SECONDS  # noqa: E402

CHUNK = 500


@dataclass(frozen=True)
class Sample:
    seconds: float
    rss_mb: float  # peak RSS of the command (and of what it waited for), as /usr/bin/time -f %M reports it


@dataclass(frozen=True)
class Row:
    command: str
    sample: Sample
    reference: Optional[float]
    reference_name: str
    on_host: bool = False  # the command runs on the host: the client's RSS is only ssh's


def run(argv: list[str], env: dict, stdin: bytes = b"", workdir: Path = Path("/tmp")) -> Sample:
    """Run argv to completion; its wall time and peak RSS. Output goes to files, so nothing
    here reads pipes while the child runs; a failure stops the benchmark with its stderr."""
    out, err = workdir / "out", workdir / "err"
    with open(out, "wb") as o, open(err, "wb") as e:
        started = time.perf_counter()
        # Through /usr/bin/time: Linux carries a process's peak RSS across fork and exec, so a
        # child of this (large) process would report at least this process's RSS.
        child = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(workdir / "rss")] + argv,
                                 stdin=subprocess.PIPE, stdout=o, stderr=e, env=env)
        child.stdin.write(stdin)
        child.stdin.close()
        child.wait()
        elapsed = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... exited {child.returncode}: {err.read_text()[-1500:]}")
    return Sample(elapsed, int((workdir / "rss").read_text().split()[-1]) / 1024)


def median(samples: list[Sample]) -> Sample:
    return Sample(statistics.median(s.seconds for s in samples), max(s.rss_mb for s in samples))


def inventory_text(host: Optional[CronHost], jobs: int) -> str:
    head = host.inventory_host() if host else "[host:bench]\naddress = 10.0.0.1\n"
    return head + "".join(f"[job:job{i:05d}]\nschedule = {i % 60} {i % 24} * * *\n"
                          f"url = http://127.0.0.1:9/job/{i}\n" for i in range(jobs))


def units_tar(inventory_path: Path, host_name: str) -> bytes:
    """The unit files the deployer would install (its host files under the unit directory)."""
    from deployer import inventory
    from deployer.contract import paths
    from deployer.render import host_files

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for f in host_files(inventory.load(str(inventory_path)), host_name):
            if not f.path.startswith(paths.UNIT_DIR + "/") or f.secret:
                continue
            info = tarfile.TarInfo(f.path[len(paths.UNIT_DIR) + 1:])
            info.size = len(f.content)
            archive.addfile(info, io.BytesIO(f.content))
    return buffer.getvalue()


def unit_file(inventory_path: Path, name: str) -> bytes:
    from deployer import inventory
    from deployer.render import host_files

    return next(f.content for f in host_files(inventory.load(str(inventory_path)), "bench") if f.name == name)


# The by-hand first push: job timers only (as the deployer starts them; boot-only timers stay).
BY_HAND_PUSH = (
    "set -e; cd /etc/systemd/system && tar -x && mkdir -p timers.target.wants && "
    "cd timers.target.wants && ln -s ../deployer-job*.timer . && systemctl daemon-reload && "
    f"cd .. && ls deployer-job*.timer | xargs -n {CHUNK} systemctl start")
BY_HAND_REMOVE = (
    "set -e; cd /etc/systemd/system && rm -rf deployer-* timers.target.wants/deployer-* && "
    "systemctl stop 'deployer-*' && systemctl daemon-reload && systemctl reset-failed")
HASH_UNITS = ("find /etc/systemd/system -maxdepth 1 -name 'deployer-*' -type f -print0 | "
              "xargs -0 sha256sum >/dev/null")
RSS = ("for p in 1 $(systemctl show -P MainPID systemd-journald); do "
       "ps -o rss= -p $p; done")


def host_rss(host: CronHost) -> tuple[float, float]:
    """RSS of the host's PID 1 and journald, MB."""
    pid1, journald = (int(v) / 1024 for v in host.ssh(RSS).stdout.split())
    return pid1, journald


@contextlib.contextmanager
def journaled_disk(directory: Path, use: bool = True):
    """`directory` on a fresh loop-mounted ext4 with a journal (mkfs.ext4's defaults), removed after;
    or, not `use`d, `directory` as it is."""
    directory.mkdir(parents=True, exist_ok=True)
    if not use:
        yield directory
        return
    image = directory.parent / (directory.name + ".img")
    subprocess.run(["truncate", "-s", "8G", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=False)
        image.unlink()


def measure(size: int, repeat: int, workdir: Path, journaled: bool = True
            ) -> tuple[list[Row], dict[str, tuple[float, float]]]:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(workdir / "home")
    (workdir / "home").mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    memory: dict[str, tuple[float, float]] = {}
    deployer = [sys.executable, "-m", "deployer"]

    def log(message: str) -> None:
        print(f"[{size} jobs, {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    with journaled_disk(workdir / "disk", journaled) as disk, CronHost("bench", workdir=disk / "host") as host:
        ssh = host.ssh_args(shared=False)
        path, empty = workdir / "inventory.ini", workdir / "empty.ini"
        path.write_text(inventory_text(host, size))
        empty.write_text(inventory_text(host, 0))
        inv = ["-i", str(path), "--host", "bench"]
        memory["before"] = host_rss(host)

        log("by-hand first push")
        by_hand = run(ssh + [BY_HAND_PUSH], env, units_tar(path, "bench"), workdir)
        installed = int(host.ssh("systemctl list-timers --all --no-legend 'deployer-job*' | wc -l").stdout)
        if installed != size:
            raise SystemExit(f"by-hand push: {installed} timers active, not {size}")
        log("by-hand removal")
        by_hand_removal = run(ssh + [BY_HAND_REMOVE], env, workdir=workdir)

        log("deployer first push")
        first = run(deployer + ["push", "--yes"] + inv, env, workdir=workdir)
        installed = int(host.ssh("systemctl list-timers --all --no-legend 'deployer-job*' | wc -l").stdout)
        enabled = host.ssh(f"systemctl is-enabled deployer-job{size - 1:05d}.timer", check=False).stdout.strip()
        if installed != size or enabled != "enabled":
            raise SystemExit(f"deployer push: {installed} timers active, not {size}; the last one is {enabled}")
        memory["jobs installed"] = host_rss(host)

        log("no-op push")
        right_after = run(deployer + ["push", "--yes"] + inv, env, workdir=workdir)
        time.sleep(RACY_SECONDS)
        noop = median([run(deployer + ["push", "--yes"] + inv, env, workdir=workdir) for _ in range(repeat)])
        hashing = median([run(ssh + [HASH_UNITS], env, workdir=workdir) for _ in range(repeat)])
        rows.append(Row("no-op push", noop, hashing.seconds, "one ssh hashing the unit files"))
        rows.append(Row(f"no-op push, within {RACY_SECONDS:g} s of a push", right_after, hashing.seconds,
                        "one ssh hashing the unit files"))
        # Without the last push's record (deployer/lastpush.py): from another machine, or the first
        # push after an upgrade of the deployer: the inventory parsed and every unit rendered.
        records = Path(env.get("XDG_CACHE_HOME") or Path(env["HOME"]) / ".cache") / "deployer" / "pushed"

        def without_record() -> Sample:
            shutil.rmtree(records, ignore_errors=True)
            return run(deployer + ["push", "--yes"] + inv, env, workdir=workdir)

        full_noop = median([without_record() for _ in range(repeat)])
        rows.append(Row("no-op push, no record", full_noop, hashing.seconds, "one ssh hashing the unit files"))

        log("one job changed")
        job = f"job{size // 3:05d}"
        original = path.read_text()
        edited = original.replace(f"/job/{size // 3}\n", f"/job/{size // 3}?changed=1\n")
        if edited == original:
            raise SystemExit(f"no [job:{job}] url to change")
        path.write_text(edited)
        changed = run(deployer + ["push", "--yes"] + inv, env, workdir=workdir)
        path.write_text(original)
        by_hand_change = run(ssh + [f"cat > /etc/systemd/system/deployer-{job}.service && systemctl daemon-reload "
                                    f"&& systemctl restart deployer-{job}.timer"],
                             env, unit_file(path, f"deployer-{job}.service"), workdir)
        rows.append(Row("one job changed", changed, by_hand_change.seconds, "its unit by hand, daemon-reload, restart"))

        log("status --json")
        list_timers = ssh + ["systemctl list-timers --all 'deployer-*' >/dev/null"]
        status = median([run(deployer + ["status", "--json"] + inv, env, workdir=workdir) for _ in range(repeat)])
        timers = median([run(list_timers, env, workdir=workdir) for _ in range(repeat)])
        rows.append(Row("status --json", status, timers.seconds, "list-timers over ssh"))

        log("history")
        job = f"job{size // 2:05d}"
        history = median([run(deployer + ["history", job] + inv, env, workdir=workdir) for _ in range(repeat)])
        journal = median([run(ssh + [f"journalctl -u deployer-{job}.service >/dev/null"], env, workdir=workdir)
                          for _ in range(repeat)])
        rows.append(Row(f"history {job}", history, journal.seconds, "journalctl -u over ssh"))

        log("metrics pass")
        # Nothing changed since the pass the push started: what the heartbeat pays each minute.
        metrics = median([run(ssh + ["systemctl start deployer-host@metrics.service"], env, workdir=workdir)
                          for _ in range(repeat)])
        rows.append(Row("metrics pass", metrics, timers.seconds, "list-timers over ssh", on_host=True))
        # Every job asked about, as after a push or every 10 minutes (touching the unit directory
        # is what a push does to it).
        full = median([run(ssh + ["touch /etc/systemd/system && systemctl start deployer-host@metrics.service"],
                           env, workdir=workdir) for _ in range(repeat)])
        rows.append(Row("metrics pass, all jobs", full, timers.seconds, "list-timers over ssh", on_host=True))
        memory["after the reads"] = host_rss(host)

        log("remove all")
        removal = run(deployer + ["push", "--yes", "-i", str(empty), "--host", "bench"], env, workdir=workdir)
        left = int(host.ssh("systemctl list-timers --all --no-legend 'deployer-job*' | wc -l").stdout)
        if left:
            raise SystemExit(f"removal left {left} timers")
        memory["jobs removed"] = host_rss(host)
        rows.append(Row("remove all", removal, first.seconds, "the deployer's first push (adding)"))

        log("by-hand first push and removal, again")
        by_hand_again = run(ssh + [BY_HAND_PUSH], env, units_tar(path, "bench"), workdir)
        installed = int(host.ssh("systemctl list-timers --all --no-legend 'deployer-job*' | wc -l").stdout)
        if installed != size:
            raise SystemExit(f"by-hand push, again: {installed} timers active, not {size}")
        by_hand_removal_again = run(ssh + [BY_HAND_REMOVE], env, workdir=workdir)
        log("deployer first push and removal, again")
        first_again = run(deployer + ["push", "--yes"] + inv, env, workdir=workdir)
        installed = int(host.ssh("systemctl list-timers --all --no-legend 'deployer-job*' | wc -l").stdout)
        if installed != size:
            raise SystemExit(f"deployer push, again: {installed} timers active, not {size}")
        removal_again = run(deployer + ["push", "--yes", "-i", str(empty), "--host", "bench"], env, workdir=workdir)
        log(f"by-hand first push: {by_hand.seconds:.2f} s, {by_hand_again.seconds:.2f} s; "
            f"removal: {by_hand_removal.seconds:.2f} s, {by_hand_removal_again.seconds:.2f} s; deployer first push: "
            f"{first.seconds:.2f} s, {first_again.seconds:.2f} s; removal: {removal.seconds:.2f} s, "
            f"{removal_again.seconds:.2f} s")
        reference = statistics.mean([by_hand.seconds, by_hand_again.seconds])
        first = Sample(statistics.mean([first.seconds, first_again.seconds]), max(first.rss_mb, first_again.rss_mb))
        rows.insert(0, Row("first push", first, reference,
                           "tar, symlinks, daemon-reload, start x500 (means of two)"))
        removal = Sample(statistics.mean([removal.seconds, removal_again.seconds]),
                         max(removal.rss_mb, removal_again.rss_mb))
        rows[[r.command for r in rows].index("remove all")] = Row("remove all", removal, first.seconds,
                                                                  "the deployer's first push (adding; means of two)")
        removal_by_hand = Sample(statistics.mean([by_hand_removal.seconds, by_hand_removal_again.seconds]),
                                 max(by_hand_removal.rss_mb, by_hand_removal_again.rss_mb))
        rows.append(Row("by-hand removal", removal_by_hand, reference,
                        "by-hand first push (rm, stop glob, reload; means)", on_host=True))

    log("validate")
    offline = workdir / "offline.ini"
    offline.write_text(inventory_text(None, size))
    validate = run(deployer + ["validate", "-i", str(offline)], env, workdir=workdir)
    rows.append(Row("validate", validate, None, "(offline)"))
    return rows, memory


def table(size: int, rows: list[Row], memory: dict[str, tuple[float, float]], repeat: int) -> str:
    lines = [f"### {size:,} jobs", "",
             "| command | seconds | reference seconds | ratio | client peak RSS | reference |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{r.reference:.2f}" if r.reference is not None else "-"
        ratio = f"{r.sample.seconds / r.reference:.2f}x" if r.reference else "-"
        rss = "(on host)" if r.on_host else f"{r.sample.rss_mb:.0f} MB"
        lines.append(f"| {r.command} | {r.sample.seconds:.2f} | {ref} | {ratio} | {rss} "
                     f"| {r.reference_name} |")
    lines += ["", "| host RSS | PID 1 | journald |", "|---|---|---|"]
    lines += [f"| {when} | {pid1:.1f} MB | {journald:.1f} MB |" for when, (pid1, journald) in memory.items()]
    lines += ["", f"(reads and no-op push: medians of {repeat}; pushes and validate: one sample)"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="1000", help="job counts, comma-separated (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="samples per median of the reads (default 3)")
    parser.add_argument("--disk", choices=("journaled", "here"), default="journaled",
                        help="the host's files on a fresh ext4 with a journal (default), or on this machine's disk")
    args = parser.parse_args()
    results = {}
    print("host's files: " + ("a fresh ext4 with a journal, loop-mounted" if args.disk == "journaled"
                              else "this machine's disk") + "\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="deployer-scale-") as tmp:
        for size in (int(s) for s in args.jobs.split(",")):
            rows, memory = measure(size, args.repeat, Path(tmp) / str(size), args.disk == "journaled")
            results[size] = rows
            print(table(size, rows, memory, args.repeat) + "\n", flush=True)
    sizes = sorted(results)
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print(f"### growth {small:,} -> {large:,} jobs ({large / small:.0f}x the jobs)\n")
        print("| command | seconds | reference | ratio then | ratio now |\n|---|---|---|---|---|")
        for a, b in zip(results[small], results[large]):
            ref = f"{b.reference / a.reference:.1f}x" if a.reference else "-"
            then = f"{a.sample.seconds / a.reference:.2f}x" if a.reference else "-"
            now = f"{b.sample.seconds / b.reference:.2f}x" if b.reference else "-"
            print(f"| {a.command.split()[0] if a.command.startswith('history') else a.command} | "
                  f"{b.sample.seconds / a.sample.seconds:.1f}x | {ref} | {then} | {now} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
