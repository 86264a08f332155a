"""Metrics end to end (issue 14): Debian's node_exporter on a real cron host, a real Prometheus
server scraping it with the shipped rules, the heartbeat URL, and `status --json` against the file.

The rules are a test copy of docs/prometheus/deployer-rules.yml with shorter durations (`for:`
of node_exporter down 0s, heartbeat stale after 75 s instead of 180 s): each replaced text must be
found, so a change of the shipped rules cannot silently leave the test checking something else.
"""
from __future__ import annotations

import calendar
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from deployer.contract import paths, record
from tests.cronhost import free_port
from tests.httpserver import Reply, json_reply

pytestmark = pytest.mark.e2e

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "deployer-rules.yml"
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "deployer-dashboard.json"
TEXTFILE = f"{paths.METRICS_DIR}/{paths.METRICS_FILE}"
# Heartbeat every minute: 75 s without one is stale for the test (180 s shipped).
SHORTER = {"[1d]) > 180": "[1d]) > 75", "        for: 2m\n": "        for: 0s\n"}


def textfile(host) -> dict:
    """The host's metrics file -> {(name, job or None): value}; promtool-style lines only."""
    values = {}
    for line in host.ssh(f"cat {TEXTFILE}").stdout.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        job = dict(part.split("=", 1) for part in labels.rstrip("}").split(",")).get("deployer_job")
        values[name, job.strip('"') if job else None] = float(value)
    return values


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.5)


def next_daily(hour: int) -> int:
    """The next HH:00:00 UTC (the jobs' zone) as unix seconds."""
    now = datetime.now(timezone.utc)
    at = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return calendar.timegm((at if at > now else at + timedelta(days=1)).timetuple())


def start_node_exporter(host) -> int:
    """Debian's node_exporter inside the cron host, as its own user, textfile collector only."""
    port = free_port()
    host.ssh(f"mkdir -p {paths.METRICS_DIR} && systemd-run --unit=test-node-exporter -p User=prometheus "
             f"/usr/bin/prometheus-node-exporter --web.listen-address=127.0.0.1:{port} "
             f"--collector.disable-defaults --collector.textfile "
             f"--collector.textfile.directory={paths.METRICS_DIR}")
    return port


class Prometheus:
    """A real Prometheus server on this machine, on a free loopback port, scraping every second."""

    def __init__(self, workdir: Path, target: int):
        if not shutil.which("prometheus"):
            pytest.fail("prometheus is missing: apt-get install prometheus prometheus-node-exporter")
        rules = RULES.read_text()
        for before, after in SHORTER.items():
            assert rules.count(before) == 1, f"the shipped rules no longer hold {before!r}"
            rules = rules.replace(before, after)
        (workdir / "rules.yml").write_text(rules)
        (workdir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{workdir / 'rules.yml'}]\n"
            "scrape_configs:\n"
            f"  - {{job_name: node, static_configs: [{{targets: ['127.0.0.1:{target}']}}]}}\n")
        self.port = free_port()
        self.log = open(workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.ready, 30, "prometheus ready")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def api(self, path: str, **query) -> list:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=5) as answer:
            document = json.load(answer)
        assert document["status"] == "success", document
        data = document["data"]
        if isinstance(data, list):  # /api/v1/series
            return data
        return data["result"] if "result" in data else data["alerts"]

    def query(self, expression: str) -> dict:
        """{deployer_job (or None): value} of an instant vector."""
        return {r["metric"].get("deployer_job"): float(r["value"][1]) for r in self.api("query", query=expression)}

    def label_values(self, variable_query: str) -> list:
        """Grafana's `label_values(SELECTOR, LABEL)` as Prometheus answers it (/api/v1/series)."""
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable_query)
        assert match, f"not a label_values() query: {variable_query}"
        series = self.api("series", **{"match[]": match.group(1)})
        return sorted({s[match.group(2)] for s in series if match.group(2) in s})

    def firing(self, name: str) -> list:
        return [a["labels"] for a in self.api("alerts") if a["labels"]["alertname"] == name and a["state"] == "firing"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path):
    started = []

    def start(target: int) -> Prometheus:
        started.append(Prometheus(tmp_path, target))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def jobs_inventory(host, server, **host_keys) -> str:
    server.routes["/good"] = json_reply({"code": 0})
    server.routes["/bad"] = Reply(500, b"exploded")
    return host.inventory_host(**host_keys) + f"""
[job:good]
schedule = 0 3 * * *
url = {server.url('/good')}
timeout = 45s

[job:bad]
schedule = 0 4 * * *
url = {server.url('/bad')}
retries = 0

[job:sleepy]
schedule = 30 5 * * 1-5
url = {server.url('/good')}
"""


def test_prometheus_scrapes_the_jobs_and_the_rules_fire(cron01, server, deployer, write_inventory, prometheus_for):
    path = write_inventory(jobs_inventory(cron01, server))
    deployer("push", "-i", path, check=True)
    deployer("pause", "sleepy", "-i", path, check=True)
    deployer("run", "good", "-i", path, check=True)
    deployer("run", "bad", "-i", path, check=False)
    # The debounce timer runs the collector a few seconds after the runs: no wait for a minute.
    wait_for(lambda: textfile(cron01).get(("deployer_job_runs_total", "bad")) == 1, 30, "the runs in the file")
    listing = cron01.ssh(f"stat -c '%U %a' {paths.METRICS_DIR} {TEXTFILE} {paths.METRICS_STATE}").stdout.split("\n")
    assert listing[:3] == ["root 755", "root 644", "root 600"]  # nobody but root writes or reads the counters

    prometheus = prometheus_for(start_node_exporter(cron01))
    wait_for(lambda: len(prometheus.query("deployer_job_runs_total")) == 3, 30, "three jobs scraped")
    assert prometheus.query("deployer_job_runs_total") == {"good": 1, "bad": 1, "sleepy": 0}
    assert prometheus.query("deployer_job_failures_total") == {"good": 0, "bad": 1, "sleepy": 0}
    assert prometheus.query("deployer_job_last_success") == {"good": 1, "bad": 0}
    assert prometheus.query("deployer_job_last_http_status") == {"good": 200, "bad": 500}
    assert prometheus.query("deployer_job_last_attempts") == {"good": 1, "bad": 1}
    assert prometheus.query("deployer_job_paused") == {"good": 0, "bad": 0, "sleepy": 1}
    assert prometheus.query("deployer_job_stopped") == {"good": 0, "bad": 0, "sleepy": 0}
    assert prometheus.query("deployer_job_period_seconds") == {"good": 86400, "bad": 86400, "sleepy": 3 * 86400}
    assert prometheus.query("deployer_job_timeout_seconds") == {"good": 45, "bad": 60, "sleepy": 60}
    assert prometheus.query("deployer_job_next_run_timestamp_seconds") == {
        "good": next_daily(3), "bad": next_daily(4), "sleepy": 0}
    now = time.time()
    started = prometheus.query("deployer_job_last_start_timestamp_seconds")
    assert set(started) == {"good", "bad"} and all(now - 120 < t < now for t in started.values())
    assert prometheus.query("deployer_jobs") == {None: 3}
    [info] = prometheus.api("query", query="deployer_build_info")
    assert info["metric"]["deployer_host"] == "cron01" and info["metric"]["version"]
    # Our labels survive the scrape; `job` and `instance` are the scrape target's.
    [sample] = prometheus.api("query", query='deployer_job_runs_total{deployer_job="good"}')
    assert (sample["metric"]["deployer_host"], sample["metric"]["job"]) == ("cron01", "node")

    firing = wait_for(lambda: prometheus.firing("DeployerJobFailed"), 20, "DeployerJobFailed")
    assert [(a["deployer_job"], a["deployer_host"]) for a in firing] == [("bad", "cron01")]
    assert prometheus.firing("DeployerHeartbeatStale") == [] and prometheus.firing("DeployerNodeExporterDown") == []

    # The Grafana dashboard (docs/grafana/): a run by its timer (the lateness panel's only kind)
    # and a failure while Prometheus watches, then every panel's query against this Prometheus.
    path = push_with_a_run_due_soon(cron01, server, deployer, write_inventory)
    deployer("run", "bad", "-i", path, check=False)
    wait_for(lambda: prometheus.query("deployer_job_runs_total").get("once") == 1
             and prometheus.query("deployer_job_failures_total").get("bad") == 2, 240, "once's and bad's runs scraped")
    check_the_dashboard(prometheus)

    # docs/runbooks/pause.md: pausing the failing job quiets its page.
    deployer("pause", "bad", "-i", path, check=True)
    wait_for(lambda: prometheus.query("deployer_job_paused").get("bad") == 1, 30, "bad paused, scraped")
    wait_for(lambda: prometheus.firing("DeployerJobFailed") == [], 30, "DeployerJobFailed resolved by the pause")
    assert prometheus.query("deployer_job_last_success")["bad"] == 0, "still failed: the pause, not a success, quieted it"
    assert dashboard_query(prometheus, "Failing now") == {None: 0}

    cron01.stop()  # the host dies: node_exporter with it, the heartbeat stops
    down = wait_for(lambda: prometheus.firing("DeployerNodeExporterDown"), 20, "DeployerNodeExporterDown")
    assert down[0]["job"] == "node"
    stale = wait_for(lambda: prometheus.firing("DeployerHeartbeatStale"), 120, "DeployerHeartbeatStale")
    assert [a["deployer_host"] for a in stale] == ["cron01"]


def push_with_a_run_due_soon(host, server, deployer, write_inventory) -> str:
    """Push the jobs plus `once`, whose timer fires 20 s after the push began (pushed again with
    a later time when a loaded machine ends the push after it: a time already past never fires)."""
    for _ in range(5):
        soon = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=20)
        path = write_inventory(jobs_inventory(host, server) + f"""
[job:once]
on_calendar = {soon:%Y-%m-%d %H:%M:%S} UTC
url = {server.url('/good')}
""")
        deployer("push", "-i", path, check=True)
        if time.time() < soon.timestamp():
            return path
    raise AssertionError("five pushes each ended after the time they gave the `once` job")


def dashboard_targets() -> list:
    """[(panel title, refId, expr)] of docs/grafana/deployer-dashboard.json."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["refId"], target["expr"]) for panel in dashboard["panels"]
            for target in panel["targets"]]


def grafana_expr(expr: str, host: str) -> str:
    """An expr as Grafana sends it: the host variable at one host, the job variable at All
    (its allValue), Grafana's intervals at widths that hold the whole test."""
    for variable, value in (("$__rate_interval", "10m"), ("$__range", "1h"), ("$host", host), ("$job", ".*")):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


def dashboard_query(prometheus, title: str, ref: str = "A") -> dict:
    [expr] = [expr for t, r, expr in dashboard_targets() if (t, r) == (title, ref)]
    return prometheus.query(grafana_expr(expr, "cron01"))


def check_the_dashboard(prometheus) -> None:
    """Every query of the dashboard returns the series its panel is meant to show. Here: `good`
    ran once and `bad` twice by hand (its second run, a failure, while Prometheus watched),
    `once` by its timer, `sleepy` (paused) never."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: prometheus.label_values(v["query"]["query"].replace("$host", "cron01"))
                 for v in dashboard["templating"]["list"]}
    assert variables == {"host": ["cron01"], "job": ["bad", "good", "once", "sleepy"]}

    def runs(values):
        return set(values) == {"good", "bad", "once", "sleepy"} and values["bad"] > 0 and values["sleepy"] == 0

    def failures(values):
        return set(values) == {"good", "bad", "once", "sleepy"} and values["bad"] > 0 \
            and values["good"] == values["once"] == 0

    meant = {  # (panel, refId) -> what its query must return now
        ("Failing now", "A"): lambda values: values == {None: 1},  # bad (not paused yet)
        ("Heartbeat age", "A"): lambda values: set(values) == {None} and 0 <= values[None] < 180,
        ("Last result", "A"): lambda values: values == {"good": 1, "bad": 0, "once": 1},
        ("Runs", "A"): runs,
        ("Failures", "A"): failures,
        # Only a run its timer started has a slot: `once`, started at or after it.
        ("Lateness of the last scheduled run", "A"): lambda values: set(values) == {"once"} and values["once"] >= 0,
        ("Duration of the last run", "A"): lambda values: set(values) == {"good", "bad", "once"}
        and all(v > 0 for v in values.values()),
        ("Duration of the last run", "B"): lambda values: values == {"good": 45, "bad": 60, "once": 60},
    }
    targets = dashboard_targets()
    assert {(title, ref) for title, ref, _ in targets} == set(meant), "a panel query without a check here"
    for title, ref, expr in targets:
        values = prometheus.query(grafana_expr(expr, "cron01"))
        assert meant[title, ref](values), f"panel {title!r} ({ref}): {grafana_expr(expr, 'cron01')} -> {values}"
        assert prometheus.query(grafana_expr(expr, "elsewhere")) in ({}, {None: 0}), f"{title}: the host filter"


def test_status_json_and_the_metrics_agree(shared_cron01, server, deployer, write_inventory):
    """Every value both show: next run, paused, held, last result, running, the timer's last run."""
    for _ in range(5):
        # `once` is due 10 s from now: if the push ends later than that (a loaded machine; a
        # calendar time already past never fires), push it again with a later time.
        soon = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=10)
        inventory = jobs_inventory(shared_cron01, server) + f"""
[job:once]
on_calendar = {soon:%Y-%m-%d %H:%M:%S} UTC
url = {server.url('/good')}

[job:moved]
schedule = 0 6 * * *
url = {server.url('/good')}
"""
        path = write_inventory(inventory)
        deployer("push", "-i", path, check=True)
        if time.time() < soon.timestamp():  # the timer was started before its time
            break
    else:
        raise AssertionError("five pushes each ended after the time they gave the `once` job")
    deployer("pause", "sleepy", "-i", path, check=True)
    deployer("run", "bad", "-i", path, check=False)
    shared_cron01.ssh(f"systemctl disable --now {paths.job_unit('moved', 'timer')}")  # what `move` does to a handed-off job
    def once_runs():  # a push that ended after `soon` still started the timer in time: once ran for it too
        return int(shared_cron01.ssh(f"journalctl --no-pager -o cat MESSAGE_ID={record.RUN_FINISHED} "
                                     "DEPLOYER_JOB=once | wc -l").stdout)

    try:
        wait_for(lambda: once_runs() >= 1 and textfile(shared_cron01).get(("deployer_job_runs_total", "once"))
                 == once_runs(), 120, "the timer's runs of once, all counted")
    except AssertionError:  # what the host did with `once`: its timer, its run, the collector's passes
        print(f"due {soon}, now {datetime.now(timezone.utc)}")
        print(shared_cron01.ssh("systemctl list-timers --all --no-pager 'deployer-*'; systemctl status --no-pager "
                                "deployer-once.timer deployer-once.service; journalctl --no-pager -o short-precise "
                                f"-u deployer-once.service -u {paths.METRICS_SERVICE} | tail -40; cat {TEXTFILE}",
                                check=False).stdout)
        raise
    shared_cron01.ssh(f"systemctl start {paths.METRICS_SERVICE}")  # the file as of now (the stopped timer too)

    status = json.loads(deployer("status", "--json", "-i", path, check=True).stdout)
    metrics = textfile(shared_cron01)
    rows = {row["job"]: row for row in status["jobs"]}
    assert set(rows) == {"good", "bad", "sleepy", "once", "moved"}
    assert metrics["deployer_jobs", None] == len(rows)
    for job, row in rows.items():
        def metric(name):
            return metrics.get((f"deployer_job_{name}", job))

        next_run = calendar.timegm(time.strptime(row["next"][:19], "%Y-%m-%dT%H:%M:%S")) if row["next"] else 0
        assert metric("next_run_timestamp_seconds") == next_run, job
        assert metric("paused") == (1 if row["paused"] else 0), job
        assert metric("stopped") == (1 if row["timer"] == "inactive" and not row["paused"]
                                     and metric("period_seconds") else 0), job
        assert metric("running") == (1 if row["last_result"] == "running" else 0), job
        if row["last_result"] == "never":
            assert metric("last_success") is None, job
        else:
            assert metric("last_success") == (1 if row["last_result"] == "ok" else 0), job
        if row["last"]:  # the timer's last trigger: the run started after it, before the next one
            last = calendar.timegm(time.strptime(row["last"][:19], "%Y-%m-%dT%H:%M:%S"))
            assert last - 1 <= metric("last_start_timestamp_seconds"), job
            if next_run > last:  # (a one-time calendar's next is its passed moment)
                assert metric("last_start_timestamp_seconds") < next_run, job
    assert rows["once"]["last"] and rows["bad"]["result"] == "failed"
    assert metrics["deployer_job_stopped", "moved"] == 1 and metrics["deployer_job_paused", "sleepy"] == 1


def test_the_host_pings_its_heartbeat_url_every_minute(shared_cron01, server, deployer, write_inventory):
    server.routes["/ping/0f3c-uuid"] = Reply(200, b"OK")
    path = write_inventory(shared_cron01.inventory_host(heartbeat_url=server.url("/ping/0f3c-uuid")))
    deployer("push", "-i", path, check=True)
    # The push runs the collector (a first ping at once); the heartbeat timer then every minute.
    # Judged by what the host ran, not by the gaps between pings (a loaded machine delays them).
    pings = wait_for(lambda: len(server.received("/ping/0f3c-uuid")) >= 2 and server.received("/ping/0f3c-uuid"),
                     180, "two heartbeat pings")
    assert pings[0].method == "GET"
    timer = shared_cron01.ssh(f"systemctl show -p TimersCalendar -p ActiveState {paths.HEARTBEAT_TIMER}").stdout
    assert "OnCalendar=*-*-* *:*:30 " in timer and "ActiveState=active" in timer, timer
    started = shared_cron01.ssh(f"journalctl --no-pager -o cat _PID=1 UNIT={paths.METRICS_SERVICE} "
                                "| grep -c '^Starting' || true").stdout
    assert len(server.received("/ping/0f3c-uuid")) <= int(started.strip() or 0), "a ping no collector run sent"
    # The URL is a secret: in a root-only file, not in a unit or `systemctl show`.
    assert "0f3c-uuid" not in shared_cron01.ssh(f"cat /etc/systemd/system/deployer-* ; systemctl show '{paths.METRICS_SERVICE}'").stdout
    assert shared_cron01.ssh(f"stat -c '%U %a' {paths.HEARTBEAT_URL}").stdout.strip() == "root 600"


def test_each_run_reaches_the_file_seconds_after_it_ends_not_a_minute(shared_cron01, server, deployer, write_inventory):
    """The debounce timer: every run's OnSuccess=/OnFailure= arms it, it runs the collector 5 s
    later, which stops it, so the next run arms it again."""
    path = write_inventory(jobs_inventory(shared_cron01, server))
    deployer("push", "-i", path, check=True)
    since = shared_cron01.ssh("date +%s").stdout.strip()
    for number, job in enumerate(("good", "bad", "good"), start=1):
        deployer("run", job, "-i", path, check=job == "good")
        ended = time.monotonic()
        try:
            wait_for(lambda: sum(v for (name, _), v in textfile(shared_cron01).items()
                                 if name == "deployer_job_runs_total") == number, 30, f"run {number} in the file")
        except AssertionError:  # what the collector, its debounce timer and the runs did
            print(shared_cron01.ssh(f"journalctl --no-pager -o short-precise --since=@{since} -u {paths.METRICS_SERVICE} "
                                    f"-u {paths.METRICS_SOON_TIMER} -u deployer-good.service -u deployer-bad.service",
                                    check=False).stdout[-6000:])
            raise
        assert time.monotonic() - ended < 15, "a run waited for the minute's heartbeat"
        # The next run ends with the collector at rest, so that its end arms the timer (a run ending
        # during a pass is read by that pass: tests/test_metrics.py, collect_until_quiet).
        wait_for(lambda: shared_cron01.ssh(f"systemctl is-active {paths.METRICS_SERVICE} {paths.METRICS_SOON_TIMER}",
                                           check=False).stdout.split() == ["inactive", "inactive"], 30,
                 "the collector and its debounce timer at rest")
    log = shared_cron01.ssh(f"journalctl --no-pager -o cat --since=@{since} _PID=1 "
                     f"UNIT={paths.METRICS_SOON_TIMER}").stdout
    assert log.count("Started") >= 3, log



# A run whose clock is a day ahead, run by the job's own unit: the trigger under a wrapper that
# adds a day to time.time() (the run's wall clock: DEPLOYER_STARTED, the one time add_records
# compared) and runs the shipped zipapp unchanged.
DAY_AHEAD = """import runpy, sys, time
real = time.time
time.time = lambda: real() + 86400
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_a_day_ahead(host, job: str) -> None:
    """Start the job's service once with its clock a day ahead (a drop-in, removed after)."""
    service = paths.job_unit(job, "service")
    line = next(line for line in host.ssh(f"cat /etc/systemd/system/{service}").stdout.splitlines()
                if line.startswith("ExecStart="))
    zipapp = f'"{paths.TRIGGER_PATH}"'
    assert zipapp in line, line
    host.ssh("mkdir -p /etc/deployer-test-clock && cat > /etc/deployer-test-clock/ahead.py", input=DAY_AHEAD)
    wrapped = line.replace(zipapp, f'"/etc/deployer-test-clock/ahead.py" {zipapp}')
    host.ssh(f"mkdir -p /etc/systemd/system/{service}.d && cat > /etc/systemd/system/{service}.d/ahead.conf",
             input=f"[Service]\nExecStart=\n{wrapped}\n")
    try:
        host.ssh(f"systemctl daemon-reload && systemctl start {service}", check=False)
    finally:
        host.ssh(f"rm -rf /etc/systemd/system/{service}.d /etc/deployer-test-clock && systemctl daemon-reload")


def test_issue22_8_failures_count_after_a_run_with_the_clock_a_day_ahead(shared_cron01, server, deployer,
                                                                          write_inventory):
    """Before: after one run recorded with the clock a day ahead, no later run counted (a record
    not newer than the last was skipped): failures stopped raising DeployerJobFailed. Now the
    collector orders records by their journal cursor.

    The containers share this machine's kernel clock (nspawn also drops CAP_SYS_TIME), so the
    test steps no clock: the first run is the real trigger, started by its own unit, whose
    time.time() is a day ahead (run_a_day_ahead). Its record carries DEPLOYER_STARTED a day
    ahead, as a run on a host whose clock was a day ahead writes it; journald stamps it with the
    real time, which the collector never read."""
    host = shared_cron01
    path = write_inventory(jobs_inventory(host, server))
    deployer("push", "-i", path, check=True)
    run_a_day_ahead(host, "bad")
    wait_for(lambda: textfile(host).get(("deployer_job_runs_total", "bad")) == 1, 120, "the day-ahead run in the file")
    assert textfile(host)["deployer_job_last_start_timestamp_seconds", "bad"] > time.time() + 80000
    for _ in range(2):  # the clock back where it belongs
        deployer("run", "bad", "-i", path, check=False)
    counted = wait_for(lambda: (lambda v: v.get(("deployer_job_failures_total", "bad")) == 3 and v)(textfile(host)),
                       60, "the two later failures in the file")
    assert counted["deployer_job_runs_total", "bad"] == 3
    assert counted["deployer_job_last_start_timestamp_seconds", "bad"] < time.time() + 3600
