"""Issue 21's "Proof", end to end: real cron hosts (systemd-nspawn) against BOTH reference services of
the receiver kit (docs/receiving/: Python + sqlite3, Java + Debian's sqlite-jdbc).

Every scenario ends with every slot executed exactly once and none missed beyond what the schedule's
catch-up rules say, counted per Idempotency-Key from the service's own database (`/_executions`) and
cross-checked with the run records in the cron host's journal. Nothing is judged by wall-clock
windows: the machine is loaded, so waits poll for keys with generous timeouts.

The Java service needs the JDK and sqlite-jdbc (`make install`): missing, it is skipped locally but
FAILS under CI=true (the `java_classes` fixture of tests/test_receivers.py).
"""
from __future__ import annotations

import calendar
import collections
import http.client
import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.conftest import _require_nspawn
from tests.cronhost import CronHost, CronHostError
from tests.robots import Robot
from tests.test_receivers import java_classes, launch  # noqa: F401 - java_classes: a fixture used by launch

pytestmark = pytest.mark.e2e

SECRET = "proof-SECRET-0nce"
RECORD = "MESSAGE_ID=5f0c1b0e9f5a4e2d8a7c3b6d1e2f4a90"
TOKEN, ALERT_SECRET = "tok-proof-1", "SEC-proof-2"
SECRETS_ENV = {"T_TOKEN": TOKEN, "T_SECRET": ALERT_SECRET}
NOT_RESENT = "not retried: the service may have started it"


# --- helpers ----------------------------------------------------------------------------------------

def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def slot_of_key(key: str) -> int:
    """`job/2026-12-01T02:00:00Z` -> unix seconds."""
    return calendar.timegm(time.strptime(key.split("/", 1)[1], "%Y-%m-%dT%H:%M:%SZ"))


def wait_until(predicate, timeout: float = 120.0, what: str = "condition", every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s")


def records(run, job: str | None = None, this_boot: bool = False, boot: str = "", skipped: bool = False) -> list[dict]:
    """The run records (journal, MESSAGE_ID of deployer's runs) of `job` or of every job; with
    `skipped`, the records of slots skipped instead (issue 23: a slot that came while the run
    before it went; it is not a run and called nothing).
    `run(command) -> stdout`: ssh, or nsenter into a host whose sshd is stopped."""
    where = (f" DEPLOYER_JOB={job}" if job else "") + (" -b" if this_boot else "") + (f" -b {boot}" if boot else "")
    out = run(f"journalctl --no-pager -o json {RECORD}{where}")
    found = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r for r in found if (r.get("DEPLOYER_RESULT") == "skipped") == skipped]


def via_ssh(host: CronHost):
    return lambda command: host.ssh(command, timeout=120).stdout


def settle(run, timeout: float = 180.0) -> None:
    """Stop every job timer of the host and wait until no job run is starting or running."""
    run("systemctl stop 'deployer-*.timer' || true")
    wait_until(lambda: not run("systemctl list-units --all --no-legend --plain 'deployer-*.service' "
                               "--state=activating,active,deactivating || true").strip(),
               timeout=timeout, what="the job runs ending", every=1.0)


def check_records_name_their_slots(found: list[dict], period: int) -> None:
    """Every record: the key names the record's slot, a calendar instant at or before the run's start."""
    for r in found:
        slot, key, job = int(r["DEPLOYER_SLOT"]), r["DEPLOYER_KEY"], r["DEPLOYER_JOB"]
        assert key == f"{job}/{iso(slot)}", r
        assert slot % period == 0, f"{key}: not an instant of a */{period} s calendar"
        assert slot <= float(r["DEPLOYER_STARTED"]) + 0.001, f"{key}: the slot is after the run's start"


def deactivations(run) -> dict[str, list[float]]:
    """job -> when PID 1 saw its unit end (deactivated or failed), unix seconds, from the host's journal."""
    found: dict[str, list[float]] = collections.defaultdict(list)
    out = run("journalctl --no-pager -o json _PID=1 --output-fields=UNIT,MESSAGE")
    for line in out.splitlines():
        entry = json.loads(line) if line.strip() else {}
        unit, message = entry.get("UNIT") or "", entry.get("MESSAGE") or ""
        if unit.startswith("deployer-") and unit.endswith(".service") and isinstance(message, str) and \
                ("Deactivated successfully" in message or "Failed with result" in message):
            found[unit[len("deployer-"):-len(".service")]].append(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
    return {job: sorted(times) for job, times in found.items()}


# PID 1 fires a timer whose instant passed while its unit ran right after the unit ends.
FIRE_SLACK = 5.0


def check_no_slot_lost(found: list[dict], period: int, what: str, ended: list[float]) -> int:
    """The runs of one job, each naming its slot, miss no slot beyond systemd's rule: a timer does
    not elapse while its unit is still queued or running; when the unit ends, a calendar instant
    that passed meanwhile fires at once, once, and the run names the LATEST instant passed (the
    same rule as a Persistent= catch-up). So between two runs A and B with slots skipped, A's unit
    ended (`ended`: PID 1's journal) after the first skipped one, and B names the latest instant
    at that end. -> the number of slots coalesced that way."""
    runs = sorted(found, key=lambda r: int(r["DEPLOYER_SLOT"]))
    coalesced = 0
    for a, b in zip(runs, runs[1:]):
        slot_a, slot_b = int(a["DEPLOYER_SLOT"]), int(b["DEPLOYER_SLOT"])
        end_a = float(a["DEPLOYER_STARTED"]) + float(a["DEPLOYER_DURATION"])
        assert slot_b > slot_a, f"{what}: two runs named {iso(slot_a)}"
        if slot_b == slot_a + period:
            continue
        coalesced += (slot_b - slot_a) // period - 1
        unit_end = next((t for t in ended if t >= end_a - 1), None)
        assert unit_end is not None, f"{what}: PID 1 never saw the run for {iso(slot_a)} end"
        assert unit_end >= slot_a + period, \
            f"{what}: {iso(slot_a + period)} skipped though the run for {iso(slot_a)} had ended at {unit_end:.1f}"
        assert int(unit_end) // period * period <= slot_b <= unit_end + FIRE_SLACK, \
            f"{what}: the run for {iso(slot_a)} ended at {unit_end:.1f}; the next one names {iso(slot_b)}, " \
            f"not the latest slot passed then"
    return coalesced


def executed_once(service, keys) -> None:
    """Per key, from the service's database: each executed exactly once (waits for in-flight work)."""
    keys = set(keys)

    def all_done():
        counts = service.executions()
        return counts if keys <= set(counts) else None

    counts = wait_until(all_done, timeout=120, what=f"executions of {len(keys)} keys")
    wrong = {k: counts[k] for k in keys if counts[k] != 1}
    assert not wrong, f"executed other than once: {wrong}"


class Proxy:
    """A loopback reverse proxy, stdlib and threaded, in front of the service: it forwards every
    request and answers 504 when the service has not answered within `read_timeout` seconds (nginx's
    proxy_read_timeout). `log`: one entry per request with its key and the answer it got."""

    HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}

    def __init__(self, upstream_port: int, read_timeout: float):
        self.log: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in Proxy.HOP}
                entry = {"method": self.command, "path": self.path, "key": self.headers.get("Idempotency-Key"),
                         "run": self.headers.get("X-Deployer-Run-Id"), "epoch": self.headers.get("X-Deployer-Epoch")}
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=read_timeout)
                try:
                    upstream.request(self.command, self.path, body=body if self.command == "POST" else None,
                                     headers=headers)
                    response = upstream.getresponse()
                    status, data = response.status, response.read()
                    back = [(k, v) for k, v in response.getheaders() if k.lower() not in Proxy.HOP]
                except (socket.timeout, TimeoutError):
                    status, data, back = 504, b"<html>504 Gateway Time-out</html>", []
                finally:
                    upstream.close()
                entry.update(status=status, headers={k.lower(): v for k, v in back})
                with proxy.lock:
                    proxy.log.append(entry)
                self.send_response(status)
                for name, value in back:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def entries(self) -> list[dict]:
        with self.lock:
            return list(self.log)

    def __enter__(self) -> "Proxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["python", "java"])
def receiver(request, tmp_path):
    """receiver(work_seconds=0) -> a running reference service (tests/test_receivers.py's Service),
    verifying v2 signatures with SECRET, with its own fresh database; each implementation in turn."""
    started = []

    def start(work_seconds: float = 0):
        started.append(launch(request.param, request, tmp_path / f"once{len(started)}.db", work_seconds,
                              key=SECRET.encode()))
        return started[-1]

    yield start
    for service in started:
        service.process.kill()
        service.process.wait(timeout=30)


def job(name: str, url: str, calendar_: str, extra: str = "") -> str:
    return f"""
[job:{name}]
on_calendar = {calendar_}
timezone = UTC
url = {url}
sign_secret = {SECRET}
{extra}
"""


# --- 1. a gateway read timeout shorter than the work --------------------------------------------------

WORK, READ_TIMEOUT, PERIOD_1 = 3.0, 1.5, 6


# The long scenarios run against the Python service only (the suite's time): the Java one answers
# byte for byte alike (tests/test_receivers.py) and faces every other scenario here, the minute-long
# ones in `make test-slow` (CI runs both).
PYTHON_ONLY = pytest.mark.parametrize("receiver", ["python"], indirect=True)
JAVA_IN_SLOW = pytest.mark.parametrize("receiver", ["python", pytest.param("java", marks=pytest.mark.slow)],
                                       indirect=True)


@pytest.mark.parametrize("receiver, slots", [("python", 8), pytest.param("java", 8, marks=pytest.mark.slow),
                                             pytest.param("python", 30, marks=pytest.mark.slow)],
                         indirect=["receiver"])
def test_a_gateway_timeout_never_doubles_a_slot_and_poll_completes_every_one(cron01, receiver, deployer,
                                                                          write_inventory, slots):
    """A 1.5 s proxy read timeout in front of 3 s of work, one job synchronous (POST, retries but not
    idempotent) and one `async = poll`, on the same host and service, concurrently, every 6 s."""
    service = receiver(work_seconds=WORK)
    with Proxy(service.port, READ_TIMEOUT) as proxy:
        calendar_ = f"*:*:0/{PERIOD_1}"
        path = write_inventory(cron01.inventory_host()
                               + job("gwsync", proxy.url("/sync/gwsync"), calendar_, "retries = 2\ntimeout = 30s")
                               + job("gwpoll", proxy.url("/async/gwpoll"), calendar_,
                                     "retries = 2\ntimeout = 30s\nasync = poll\npoll_every = 1s"))
        deployer("push", "-i", path, "--yes", check=True)

        def enough():
            keys = {e["key"] for e in proxy.entries() if e["method"] == "POST"}
            return all(sum(k.startswith(f"{j}/") for k in keys) >= slots for j in ("gwsync", "gwpoll"))

        wait_until(enough, timeout=slots * PERIOD_1 * 4 + 120, what=f"{slots} slots of each job", every=2)
        settle(via_ssh(cron01))
        found = records(via_ssh(cron01))
        ended = deactivations(via_ssh(cron01))
        by_job = {j: [r for r in found if r["DEPLOYER_JOB"] == j] for j in ("gwsync", "gwpoll")}
        check_records_name_their_slots(found, PERIOD_1)

        # (a) synchronous, not idempotent: one POST per slot reached the service, each run failed with
        # the reason, and the service still executed every slot once (the gateway cut only the answer).
        sync = by_job["gwsync"]
        assert len(sync) >= slots
        for r in sync:
            assert r["DEPLOYER_RESULT"] == "failed" and r["DEPLOYER_HTTP_STATUS"] == "504", r
            assert NOT_RESENT in r["DEPLOYER_REASON"], r["DEPLOYER_REASON"]
            assert r["DEPLOYER_ATTEMPTS"] == "1" and r["DEPLOYER_REACHED"] == "y", r
        sync_keys = [r["DEPLOYER_KEY"] for r in sync]
        assert len(set(sync_keys)) == len(sync_keys)
        posts_at_proxy = collections.Counter(e["key"] for e in proxy.entries()
                                             if e["method"] == "POST" and e["key"].startswith("gwsync/"))
        posts_at_service = collections.Counter(e["key"] for e in service.requests()
                                               if e["method"] == "POST" and e["key"].startswith("gwsync/"))
        assert set(posts_at_proxy) == set(sync_keys) and set(posts_at_proxy.values()) == {1}, posts_at_proxy
        assert posts_at_service == posts_at_proxy
        assert {e["status"] for e in proxy.entries() if e["key"].startswith("gwsync/")} == {504}
        assert {e["status"] for e in proxy.entries() if e["method"] == "POST" and e["key"].startswith("gwpoll/")} \
            == {202}, "the gateway passes the accept at once"
        executed_once(service, sync_keys)
        print(f"gwsync: {len(sync)} runs, {check_no_slot_lost(sync, PERIOD_1, 'gwsync', ended['gwsync'])} slots coalesced")

        # (b) the same work, accept-then-poll: every slot succeeded, executed once, one POST each.
        poll = by_job["gwpoll"]
        assert len(poll) >= slots
        assert [r for r in poll if r["DEPLOYER_RESULT"] != "ok"] == []
        poll_keys = [r["DEPLOYER_KEY"] for r in poll]
        assert len(set(poll_keys)) == len(poll_keys)
        poll_posts = collections.Counter(e["key"] for e in proxy.entries()
                                         if e["method"] == "POST" and e["key"].startswith("gwpoll/"))
        assert set(poll_posts) == set(poll_keys) and set(poll_posts.values()) == {1}, poll_posts
        gets = [e for e in proxy.entries() if e["method"] == "GET" and e["key"].startswith("gwpoll/")]
        assert gets and {e["key"] for e in gets} <= set(poll_keys)
        executed_once(service, poll_keys)
        print(f"gwpoll: {len(poll)} runs, {check_no_slot_lost(poll, PERIOD_1, 'gwpoll', ended['gwpoll'])} slots coalesced")

        counts = service.executions()
        assert set(counts) == set(sync_keys) | set(poll_keys), "an execution no run record names"


# --- 2. a burst: 100 jobs due the same second ------------------------------------------------------

BURST_JOBS, PERIOD_2, BURST_SLOTS = 100, 20, 3


@PYTHON_ONLY
def test_a_burst_of_100_jobs_every_key_names_its_slot(cron01, receiver, deployer, write_inventory):
    service = receiver()
    names = [f"b{i:03d}" for i in range(BURST_JOBS)]
    path = write_inventory(cron01.inventory_host() + "".join(
        job(n, f"http://127.0.0.1:{service.port}/sync/{n}", f"*:*:0/{PERIOD_2}", "retries = 0\ntimeout = 120s")
        for n in names))
    deployer("push", "-i", path, "--yes", check=True)

    def enough():
        per_job = collections.Counter(e["key"].split("/")[0] for e in service.requests() if e["answered"] == 200)
        return all(per_job[n] >= BURST_SLOTS for n in names)

    wait_until(enough, timeout=BURST_SLOTS * PERIOD_2 * 6 + 300, what=f"{BURST_SLOTS} slots of 100 jobs", every=3)
    settle(via_ssh(cron01), timeout=300)
    found = records(via_ssh(cron01))
    assert {r["DEPLOYER_JOB"] for r in found} == set(names)
    assert [r for r in found if r["DEPLOYER_RESULT"] != "ok"] == []
    check_records_name_their_slots(found, PERIOD_2)
    keys = [r["DEPLOYER_KEY"] for r in found]
    assert len(set(keys)) == len(keys), "two runs named one slot"
    lateness = sorted(float(r["DEPLOYER_STARTED"]) - int(r["DEPLOYER_SLOT"]) for r in found)
    print(f"burst: {len(found)} runs, lateness p50 {lateness[len(lateness) // 2]:.1f}s max {lateness[-1]:.1f}s")
    ended = deactivations(via_ssh(cron01))
    coalesced = sum(check_no_slot_lost([r for r in found if r["DEPLOYER_JOB"] == n], PERIOD_2, n, ended.get(n, []))
                    for n in names)
    # concurrency = forbid (issue 23 item 6): a slot no run named because the run before it still
    # went is recorded once, as skipped, under its own slot's key, and never reaches the service.
    skipped = records(via_ssh(cron01), skipped=True)
    skipped_keys = [r["DEPLOYER_KEY"] for r in skipped]
    assert len(set(skipped_keys)) == len(skipped_keys), "a skipped slot recorded twice"
    assert not set(skipped_keys) & set(keys), "a slot both run and recorded skipped"
    assert all(r["DEPLOYER_REASON"].startswith("skipped: previous run still running since ") for r in skipped)
    # Every slot coalesced between a job's first run and its last is recorded, by the run it
    # overlapped (at its end) or by the next run (what came before that run's unit ended).
    spans = {n: (min(slots), max(slots)) for n in names
             for slots in [[int(r["DEPLOYER_SLOT"]) for r in found if r["DEPLOYER_JOB"] == n]]}
    between = [r for r in skipped
               if spans[r["DEPLOYER_JOB"]][0] < int(r["DEPLOYER_SLOT"]) < spans[r["DEPLOYER_JOB"]][1]]
    print(f"burst: {coalesced} slots coalesced by systemd (a timer does not elapse while its run is queued), "
          f"{len(between)} of them recorded as skipped ({len(skipped)} skipped records in all)")
    assert len(between) == coalesced, "a slot between two runs neither ran nor was recorded skipped"
    executed_once(service, keys)
    assert set(service.executions()) == set(keys)  # none of the skipped ones
    posts = collections.Counter(e["key"] for e in service.requests())
    assert set(posts.values()) == {1}, {k: v for k, v in posts.items() if v != 1}


# --- 3. the host down across three slots, booted with its disk -----------------------------------

PERIOD_3 = 10


@JAVA_IN_SLOW
def test_the_catch_up_after_downtime_carries_the_latest_missed_slot(tmp_path, receiver, deployer, write_inventory):
    _require_nspawn()
    service = receiver()
    host = CronHost("cron01", workdir=tmp_path / "cron01", persistent=True).start()
    try:
        path = write_inventory(host.inventory_host(lease="30m") + job(
            "catchup", f"http://127.0.0.1:{service.port}/sync/catchup", f"*:*:0/{PERIOD_3}", "retries = 0"))
        deployer("push", "-i", path, "--yes", check=True)
        wait_until(lambda: len(service.executions()) >= 2, what="two runs before the stop")

        host.stop()
        before = set(service.executions())
        last = max(map(slot_of_key, before))
        # Three slots pass while it is down (the host's calendar, not a count of runs).
        while time.time() < last + 3 * PERIOD_3 + 1:
            time.sleep(0.5)
        booting = time.time()
        host.start()
        ready = time.time()
        wait_until(lambda: len([r for r in records(via_ssh(host), "catchup", this_boot=True)]) >= 2,
                   timeout=180, what="the catch-up and one more run")
        settle(via_ssh(host))

        this_boot = sorted(records(via_ssh(host), "catchup", this_boot=True), key=lambda r: int(r["DEPLOYER_SLOT"]))
        check_records_name_their_slots(this_boot, PERIOD_3)
        caught = int(this_boot[0]["DEPLOYER_SLOT"])
        latest_missed_at_least = int(booting) // PERIOD_3 * PERIOD_3
        print(f"last before stop {iso(last)}, boot at {iso(booting)}..{iso(ready)}, catch-up names {iso(caught)}")
        assert caught - last >= 3 * PERIOD_3, "the host was down across three slots"
        assert caught >= latest_missed_at_least, \
            f"the catch-up names {iso(caught)}, not the latest slot missed ({iso(latest_missed_at_least)} or later)"
        # The slots that elapsed before the timer started this boot (a loaded machine may take
        # longer to boot than a slot: not `ready`, the time the boot was seen done).
        timer_started = int(host.ssh("systemctl show -P ActiveEnterTimestamp --timestamp=unix "
                                     "deployer-catchup.timer").stdout.strip().lstrip("@").split(".")[0])
        assert len([r for r in this_boot if int(r["DEPLOYER_SLOT"]) <= timer_started]) == 1, \
            "one catch-up run for the slots missed while down (systemd's Persistent= rule)"
        keys = [r["DEPLOYER_KEY"] for r in records(via_ssh(host), "catchup")]
        assert len(set(keys)) == len(keys)
        executed_once(service, keys)
        assert set(service.executions()) == set(keys)
        missed = [iso(s) for s in range(last + PERIOD_3, caught, PERIOD_3)]
        assert not any(f"catchup/{m}" in service.executions() for m in missed), \
            "the earlier missed slots are not run (one catch-up, for the latest)"
        check_no_slot_lost(this_boot, PERIOD_3, "after the boot", deactivations(via_ssh(host)).get("catchup", []))
    finally:
        host.stop()


# --- 4. a partition: cron01 alive, unreachable by the operator; move --force ------------------------

def container_leader(host: CronHost) -> int:
    """The host-side pid of the container's PID 1 (systemd): a descendant of systemd-nspawn."""
    parents: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                parents[int(fields[1])].append(int(entry))
            except OSError:
                continue
    queue = [host.process.pid]
    while queue:
        pid = queue.pop(0)
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() == "systemd" and pid != host.process.pid:
                    return pid
        except OSError:
            pass
        queue.extend(parents.get(pid, []))
    raise AssertionError(f"{host.name}: no systemd under nspawn pid {host.process.pid}")


def via_nsenter(host: CronHost):
    leader = container_leader(host)

    def run(command: str) -> str:
        done = subprocess.run(["nsenter", "-t", str(leader), "-m", "-u", "-i", "-p", "--", "/bin/sh", "-c", command],
                              capture_output=True, text=True, timeout=120)
        return done.stdout

    return run


def test_a_partitioned_host_is_fenced_and_stops_by_itself(cron01, cron02, receiver, deployer, write_inventory):
    service = receiver()
    with Robot(token=TOKEN, secret=ALERT_SECRET) as robot:
        def inventory(owner: str) -> str:
            return write_inventory(cron01.inventory_host() + cron02.inventory_host() + f"""
[alert:ops]
type = dingtalk
token = ${{T_TOKEN}}
secret = ${{T_SECRET}}
endpoint = {robot.endpoint("dingtalk")}
""" + job("fence", f"http://127.0.0.1:{service.port}/sync/fence", "*:*:0/5",
          f"host = {owner}\nalert = ops\nretries = 0\ntimeout = 20s"))

        path = inventory("cron01")
        deployer("push", "--host", "cron01", "-i", path, "--yes", env=SECRETS_ENV, check=True)
        wait_until(lambda: len(service.executions()) >= 2, what="cron01 running the job")
        old = {e["epoch"] for e in service.requests()}
        assert len(old) == 1
        old_epoch = old.pop()

        # The partition: cron01 keeps running (and reaches the service), its sshd is gone.
        cron01.ssh("systemctl stop ssh.service", check=False)
        inside01 = via_nsenter(cron01)
        assert inside01("systemctl is-active ssh.service").strip() == "inactive"
        assert cron01.ssh("true", check=False, timeout=30, shared=False).returncode != 0, \
            "the operator still reaches cron01"

        inventory("cron02")
        moved = deployer("move", "--from", "cron01", "--to", "cron02", "--force", "-i", path, env=SECRETS_ENV,
                         check=True)
        assert "warning: --force" in moved.stderr

        def new_owner_runs():
            newer = [e for e in service.requests() if e["epoch"] > old_epoch and e["answered"] == 200]
            return len({e["key"] for e in newer}) >= 3

        wait_until(new_owner_runs, timeout=120, what="cron02 running the job")
        wait_until(lambda: inside01("systemctl is-active deployer-fence.timer").strip() == "inactive",
                   timeout=120, what="cron01 stopping the fenced timer by itself")
        assert inside01("systemctl is-enabled deployer-fence.timer").strip() == "disabled"
        settle(inside01)
        settle(via_ssh(cron02))

        requests = service.requests()
        first_new = next(i for i, e in enumerate(requests) if e["epoch"] > old_epoch)
        late_old = [e for e in requests[first_new:] if e["epoch"] == old_epoch]
        assert late_old, "cron01 fired after the move"
        assert {e["answered"] for e in late_old} == {409}, late_old
        # The move's race: cron01's request for a slot still running when cron02 sends the same
        # slot. cron02 meets the key in progress (409 with Retry-After) and waits for its answer.
        for met in [e for e in requests if e["epoch"] > old_epoch and e["answered"] != 200]:
            assert met["answered"] == 409, met
            assert any(e["key"] == met["key"] and e["epoch"] == old_epoch for e in requests), \
                f"a 409 to cron02 for a key cron01 never sent: {met}"
            assert any(e["key"] == met["key"] and e["epoch"] > old_epoch and e["answered"] == 200
                       for e in requests), f"cron02 gave up on a key in progress: {met}"

        on01 = records(inside01, "fence")
        on02 = records(via_ssh(cron02), "fence")
        fenced = [r for r in on01 if r["DEPLOYER_RESULT"] == "fenced"]
        assert len(fenced) == 1 and on01[-1] is fenced[0], [(r["DEPLOYER_KEY"], r["DEPLOYER_RESULT"]) for r in on01]
        assert [r for r in on01[:-1] if r["DEPLOYER_RESULT"] != "ok"] == []
        assert [r for r in on02 if r["DEPLOYER_RESULT"] != "ok"] == []
        assert int(on02[0]["DEPLOYER_EPOCH"]) > int(on01[0]["DEPLOYER_EPOCH"])

        # Executions per key exactly once: from either host, whichever came first.
        executed = [r["DEPLOYER_KEY"] for r in on01 + on02 if r["DEPLOYER_RESULT"] == "ok"]
        executed_once(service, executed)
        assert set(service.executions()) == set(executed)

        # One alert names the host that was still firing the job.
        wait_until(lambda: robot.accepted, timeout=120, what="the alert")
        wait_until(lambda: not inside01("systemctl list-units --all --no-legend --plain 'deployer-alert-*' "
                                        "--state=activating,active").strip(), timeout=120, what="cron01's alerts")
        time.sleep(3)
        titles = [m["markdown"]["title"] for m in robot.accepted]
        for message in robot.accepted:
            print(f"alert: {message['markdown']['title']}\n{message['markdown']['text']}\n")
        assert len(titles) == 1 and "fence" in titles[0] and "cron01" in titles[0], titles
        text = robot.accepted[0]["markdown"]["text"]
        print(f"the alert: {titles[0]}\n{text}")
        assert "fenced" in text, text
        assert robot.refused == []


# --- 5. backfill of a past slot, and a manual run ---------------------------------------------------

def test_a_backfill_gets_the_first_answer_and_a_manual_run_its_own_key(cron01, receiver, deployer, write_inventory):
    service = receiver()
    with Proxy(service.port, 60) as proxy:
        path = write_inventory(cron01.inventory_host() + job("refill", proxy.url("/sync/refill"), "*:*:0/5",
                                                             "retries = 0"))
        deployer("push", "-i", path, "--yes", check=True)
        first = wait_until(lambda: sorted(service.executions()), what="a run of the timer")[0]
        settle(via_ssh(cron01))

        backfill = deployer("run", "refill", "--slot", iso(slot_of_key(first)), "-i", path, check=True)
        replays = [e for e in proxy.entries() if e["key"] == first]
        assert len(replays) == 2, replays
        assert replays[1]["status"] == 200 and replays[1]["headers"].get("idempotent-replayed") == "true", replays[1]
        assert "idempotent-replayed" not in replays[0]["headers"], "the timer's run executed it"
        assert replays[1]["run"] != replays[0]["run"], "the backfill is a run of its own, for the same slot"
        assert service.executions()[first] == 1, "no second execution"
        print(backfill.stdout)

        deployer("run", "refill", "-i", path, check=True)
        manual = proxy.entries()[-1]
        assert manual["key"] == f"refill/manual-{manual['run']}"
        assert "idempotent-replayed" not in manual["headers"]
        counts = service.executions()
        assert counts[manual["key"]] == 1
        assert set(counts.values()) == {1}
        record_keys = [r["DEPLOYER_KEY"] for r in records(via_ssh(cron01), "refill")]
        assert record_keys.count(first) == 2 and manual["key"] in record_keys
        assert set(record_keys) == set(counts)


# --- 6. a run killed by a reboot while polling resumes under the same key --------------------------

RESUME_WORK = float(os.environ.get("PROOF_RESUME_WORK", "30"))


@PYTHON_ONLY
def test_a_reboot_while_polling_resumes_the_same_key_and_executes_once(tmp_path, receiver, deployer, write_inventory):
    _require_nspawn()
    service = receiver(work_seconds=RESUME_WORK)
    host = CronHost("cron01", workdir=tmp_path / "cron01", persistent=True).start()
    try:
        # One daily slot, far enough ahead for the push: the timer fires it once, and no Persistent=
        # catch-up after the reboot (the stamp says it ran).
        due = (int(time.time()) + 35) // 10 * 10
        daily = time.strftime("*-*-* %H:%M:%S", time.gmtime(due))
        key = f"resume/{iso(due)}"
        path = write_inventory(host.inventory_host(lease="30m") + job(
            "resume", f"http://127.0.0.1:{service.port}/async/resume", daily,
            "async = poll\npoll_every = 1s\ntimeout = 10m\nretries = 0"))
        deployer("push", "-i", path, "--yes", check=True)
        assert time.time() < due - 5, "the push took longer than the lead: the slot is gone"

        def polling():
            seen = [e for e in service.requests() if e["key"] == key]
            return seen if any(e["method"] == "GET" and e["answered"] == 202 for e in seen) else None

        wait_until(polling, timeout=due - time.time() + 120, what="the run polling")
        host.stop()   # SIGTERM to the run mid-poll, a shutdown; then a boot with the disk
        booting = time.time()
        try:
            host.start()
            unfinished_boot = None
        except (subprocess.TimeoutExpired, CronHostError) as error:
            # `systemctl is-system-running --wait` did not return within the boot timeout: say why.
            unfinished_boot = (f"{type(error).__name__} {time.time() - booting:.0f}s after the boot began; "
                               f"is-system-running: {host.ssh('systemctl is-system-running', check=False).stdout.strip()}"
                               f"; jobs: {host.ssh('systemctl list-jobs --no-pager', check=False).stdout.strip()}")
            print(unfinished_boot)

        wait_until(lambda: service.executions().get(key) == 1 and any(
            r["DEPLOYER_RESULT"] == "ok" for r in records(via_ssh(host), "resume", this_boot=True)),
            timeout=RESUME_WORK + 180, what="the resumed run ending ok")
        settle(via_ssh(host))

        before = records(via_ssh(host), "resume", boot="-1")
        after = records(via_ssh(host), "resume", this_boot=True)
        assert [r["DEPLOYER_KEY"] for r in before] == [key], "one run before the reboot, for the slot"
        assert before[0]["DEPLOYER_RESULT"] == "failed" and "interrupted" in before[0]["DEPLOYER_REASON"], before[0]
        assert before[0].get("DEPLOYER_RESUME") == "y", before[0]
        assert [(r["DEPLOYER_KEY"], r["DEPLOYER_RESULT"]) for r in after] == [(key, "ok")], after
        assert after[0]["DEPLOYER_RUN"] != before[0]["DEPLOYER_RUN"]

        requests = [e for e in service.requests() if e["key"] == key]
        posts = [i for i, e in enumerate(requests) if e["method"] == "POST"]
        assert len(posts) == 2, requests
        assert requests[posts[0]]["answered"] == 202
        # The resumed POST found the work still running: the same 202 (and Location), polling resumed.
        assert requests[posts[1]]["answered"] == 202, requests
        resumed_polls = [e for e in requests[posts[1] + 1:] if e["method"] == "GET"]
        assert resumed_polls and resumed_polls[-1]["answered"] == 200
        assert {e["path"] for e in requests if e["method"] == "GET"} == {resumed_polls[-1]["path"]}, \
            "one operation, polled before and after the reboot"
        assert service.executions() == {key: 1}
        resumed_end = float(after[0]["DEPLOYER_STARTED"]) + float(after[0]["DEPLOYER_DURATION"])
        print(f"boot began {booting:.1f}, resumed run {float(after[0]['DEPLOYER_STARTED']):.1f}..{resumed_end:.1f}")
        if unfinished_boot:  # what held the boot up, in its own words (a stuck start prints its stack)
            print(host.ssh("journalctl -b --no-pager -o short-monotonic -u 'deployer-host@*'", check=False).stdout)
        assert unfinished_boot is None, f"the host never finished booting while the resumed run polled: {unfinished_boot}"
    finally:
        host.stop()
