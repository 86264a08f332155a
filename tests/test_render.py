"""Rendered units, pinned byte for byte by golden files (UPDATE_GOLDEN=1 rewrites them)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from deployer import inventory
from deployer.render import host_files, trigger_argv

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
ENV = {"TOKEN": "tok-not-in-units", "SECRET": "sec-not-in-units"}


def rendered() -> dict[str, bytes]:
    inv = inventory.load(str(DATA / "golden.ini"), env=ENV)
    return {f.name: f.content for f in host_files(inv, "cron01") if not f.secret}


def test_units_match_golden_files():
    files = rendered()
    if os.environ.get("UPDATE_GOLDEN"):
        for old in GOLDEN.glob("*"):
            old.unlink()
        for name, content in files.items():
            (GOLDEN / name).write_bytes(content)
    assert sorted(files) == sorted(p.name for p in GOLDEN.iterdir())
    for name, content in files.items():
        assert content == (GOLDEN / name).read_bytes(), f"{name} differs from tests/data/golden/{name}"


def test_secrets_are_only_in_root_only_credential_files():
    inv = inventory.load(str(DATA / "golden.ini"), env=ENV)
    files = host_files(inv, "cron01")
    secret_files = {f.path: (f.content, f.mode) for f in files if f.secret}
    assert secret_files == {"/etc/deployer/credentials/ops.token": (b"tok-not-in-units", 0o600),
                            "/etc/deployer/credentials/ops.secret": (b"sec-not-in-units", 0o600),
                            # Issue 22 item 3: a URL with a password or an api_key travels whole as a
                            # credential; units (Description=, ExecStart=, X-Deployer-Request) show it redacted.
                            "/etc/deployer/credentials/jobs.secret-url.url": (
                                b"http://svc:tok-not-in-units@settle-service:8080/api/poll?page=1&api_key=sec-not-in-units",
                                0o600)}
    for f in files:
        if not f.secret:
            assert b"not-in-units" not in f.content


@pytest.mark.parametrize("job, expected_tail", [
    pytest.param("settle-hourly", ["--expect-json", 'code=0, data.state="DONE"', "--ping-url",
                                   "https://hc.example/ping/abc", "--calendar", "*-*-* *:00:00 Asia/Shanghai"],
                 id="cron"),
    pytest.param("odd-url", ["--resolution", "1", "--calendar", "Mon..Fri *-*-* 09:00:00 Asia/Shanghai",
                             "--calendar", "Sat *-*-* 10:00:00 Asia/Shanghai"],
                 id="on-calendar-has-second-resolution-and-names-its-slot-from-every-line"),
])
def test_trigger_arguments(job, expected_tail):
    inv = inventory.load(str(DATA / "golden.ini"), env=ENV)
    argv = trigger_argv(next(j for j in inv.jobs if j.name == job), "/usr/bin/python3")
    assert argv[-len(expected_tail):] == expected_tail


def test_a_host_without_metrics_dir_gets_no_metrics_units(tmp_path):
    from deployer.contract import paths

    source = (DATA / "golden.ini").read_text().replace("[host:cron01]\n", "[host:cron01]\nmetrics_dir =\n", 1)
    (tmp_path / "inv.ini").write_text(source)
    files = host_files(inventory.load(str(tmp_path / "inv.ini"), env=ENV), "cron01")
    names = {f.name for f in files}
    assert not names & {paths.METRICS_SERVICE, paths.HEARTBEAT_TIMER, paths.METRICS_SOON_TIMER}
    assert not any(b"metrics" in f.content for f in files if f.name.startswith("deployer-") and not f.secret)


def test_the_heartbeat_url_is_a_root_only_file_never_in_a_unit(tmp_path):
    from deployer.contract import paths

    source = (DATA / "golden.ini").read_text().replace(
        "[host:cron01]\n", "[host:cron01]\nheartbeat_url = https://hc.example/ping/s3cret\n", 1)
    (tmp_path / "inv.ini").write_text(source)
    files = host_files(inventory.load(str(tmp_path / "inv.ini"), env=ENV), "cron01")
    [url] = [f for f in files if f.path == paths.HEARTBEAT_URL]
    assert (url.content, url.mode, url.secret) == (b"https://hc.example/ping/s3cret\n", 0o600, True)
    assert not any(b"s3cret" in f.content for f in files if f is not url)


@pytest.mark.parametrize("schedule, on_calendar, period", [
    pytest.param("0 * * * *", "", 3600, id="hourly"),
    pytest.param("*/5 * * * *", "", 300, id="every-5-minutes"),
    pytest.param("0 9 * * 1-5", "", 3 * 86400, id="weekdays-Friday-to-Monday"),
    pytest.param("30 4 1,15 * 5", "", 7 * 86400, id="cron-OR-of-day-and-weekday"),
    pytest.param("0 0 1 * *", "", 31 * 86400, id="monthly"),
    pytest.param("0 0 29 2 *", "", 1461 * 86400, id="leap-day"),
    pytest.param("0 8,20 * * *", "", 12 * 3600, id="twice-a-day"),
    pytest.param("0 1,2 * * *", "", 23 * 3600, id="uneven-within-a-day"),
    pytest.param("CRON_TZ=Europe/Berlin 0 3 * * *", "", 86400, id="zone-prefix"),
    pytest.param("@reboot", "", 0, id="boot"),
    pytest.param(None, "Mon..Fri *-*-* 09:00:00\nSat *-*-* 10:00:00", 47 * 3600, id="native"),
    pytest.param("0 0 12 ? * MON-FRI", "", 3 * 86400, id="quartz"),
    pytest.param(None, "2000-01-01 00:00:00", 0, id="never-again"),
])
def test_a_jobs_period_is_the_longest_gap_between_two_runs(tmp_path, schedule, on_calendar, period):
    from deployer.render import periods

    key = f"schedule = {schedule}" if schedule else "on_calendar = " + on_calendar.replace("\n", "\n  ")
    (tmp_path / "inv.ini").write_text(f"[host:h]\naddress = a\n[job:j]\n{key}\nurl = http://x/\n")
    [job] = inventory.load(str(tmp_path / "inv.ini")).jobs
    assert periods([job]) == {"j": period}


def test_units_a_frequent_timer_starts_have_no_start_limit():
    """Issue 22 item 2: systemd's default start limit (5 starts in 10 s) refused a 2 s job's sixth
    run (start-limit-hit: a lost slot, a false alert). Every unit that a run or a timer starts
    often turns it off; the timers and their RestartSec= bound the starts."""
    files = rendered()
    for name in ("deployer-settle-hourly.service", "deployer-odd-url.service", "deployer-alert-ops@.service",
                 "deployer-recovery-ops@.service", "deployer-host@metrics.service"):
        unit = files[name].decode().split("\n[Service]")[0]
        assert "\nStartLimitIntervalSec=0\n" in unit, name


@pytest.mark.parametrize("keys, line", [
    pytest.param("", None, id="default-no-line"),
    pytest.param("alert_after = 3\n", '{"after": 3, "repeat": "never"}', id="after"),
    pytest.param("alert_after = 2\nalert_repeat = 1h\n", '{"after": 2, "repeat": 3600}', id="reminders"),
    pytest.param("alert_repeat = each\n", None, id="explicit-default-no-line"),
    pytest.param("alert_after = 3\nalert =\n", None, id="no-alert-no-line"),
])
def test_the_alert_policy_reaches_the_jobs_unit_only_when_it_is_not_the_default(tmp_path, keys, line):
    from deployer.contract import paths

    (tmp_path / "inv.ini").write_text("[host:cron01]\naddress = h\n[alert:ops]\ntype = webhook\n"
                                      "endpoint = http://hook/\n[defaults]\nalert = ops\n"
                                      f"[job:settle]\nschedule = 0 3 * * *\nurl = http://svc/\n{keys}")
    files = {f.name: f.content.decode() for f in host_files(inventory.load(str(tmp_path / "inv.ini")), "cron01")}
    found = [x for x in files["deployer-settle.service"].splitlines() if x.startswith(paths.ALERT_POLICY_KEY + "=")]
    assert found == ([f"{paths.ALERT_POLICY_KEY}={line}"] if line else [])


def test_every_timer_template_is_wanted_by_timers_target_only():
    """The agent enables and disables a timer by its link in timers.target.wants, not with
    `systemctl enable` (issue 25: one call for 10,000 timers timed out): that is only what
    systemctl would do while this is a timer's whole [Install] section."""
    templates = sorted((Path(__file__).parent.parent / "units").glob("*.timer.j2"))
    assert templates
    for template in templates:
        install = template.read_text().partition("[Install]\n")[2]
        lines = [line for line in install.splitlines() if line.strip() and not line.startswith("#")]
        assert lines == ["WantedBy=timers.target"], template.name


CHAIN = """[host:cron01]
address = 10.0.0.5
[alert:ops]
type = webhook
endpoint = https://hooks.example/x
[job:extract]
schedule = 0 2 * * *
url = http://svc/extract
alert = ops
on_failure_run = cleanup
[job:load]
after = extract
url = http://svc/load
[job:cleanup]
url = http://svc/cleanup
"""


def test_a_chain_is_the_parents_on_success_and_on_failure_and_the_child_has_no_timer(tmp_path):
    """Issue 23 item 8: the parent's unit starts its children beside its alert and metrics units,
    leaves its slot in its runtime directory and publishes it as root; a chained job has no timer
    and names the parents whose slot it takes."""
    path = tmp_path / "inventory.ini"
    path.write_text(CHAIN)
    files = {f.name: f.content.decode() for f in host_files(inventory.load(str(path), env={}), "cron01")
             if not f.secret}
    assert "deployer-extract.timer" in files
    assert "deployer-load.timer" not in files and "deployer-cleanup.timer" not in files
    parent = files["deployer-extract.service"].splitlines()
    assert ("OnFailure=deployer-alert-ops@extract.service deployer-host@metrics-soon.timer deployer-cleanup.service"
            in parent)
    assert ("OnSuccess=deployer-recovery-ops@extract.service deployer-host@metrics-soon.timer deployer-load.service"
            in parent)
    assert "After=deployer-load.service deployer-cleanup.service" in parent  # its next run waits for theirs
    assert "RuntimeDirectory=deployer-chain/deployer-extract" in parent and "RuntimeDirectoryPreserve=yes" in parent
    assert any(line.startswith('ExecStopPost=-+"/bin/sh" "-c" "test -r /run/deployer-chain/deployer-extract/slot.json')
               and "> /run/deployer-chain/deployer-extract.json.tmp && mv -f" in line for line in parent)
    for child in ("load", "cleanup"):
        text = files[f"deployer-{child}.service"]
        assert text.rstrip().splitlines()[0] == "# Managed by deployer: edits are overwritten by the next push."
        assert '"--chained-from" "extract"' in text and "--calendar" not in text
        assert "RuntimeDirectory" not in text and "OnSuccess=deployer-host@metrics-soon.timer" in text


def test_the_parents_published_slots_keep_the_latest_runs_as_json_lines(tmp_path):
    """The publishing ExecStopPost= run by a real shell: each parent run appends its slot, the
    oldest go beyond CHAIN_KEEP, nothing happens when the run left none."""
    import subprocess

    from deployer import render
    from deployer.contract import paths

    script = render.publish_argv("extract")[2].replace(paths.CHAIN_DIR, str(tmp_path))
    (tmp_path / "deployer-extract").mkdir()
    subprocess.run(["/bin/sh", "-c", script], check=True)
    assert not (tmp_path / "deployer-extract.json").exists()
    for n in range(render.CHAIN_KEEP + 5):
        (tmp_path / "deployer-extract" / "slot.json").write_text('{"invocation": "%d"}' % n)
        subprocess.run(["/bin/sh", "-c", script], check=True)
    published = tmp_path / "deployer-extract.json"
    lines = published.read_text().splitlines()
    assert len(lines) == render.CHAIN_KEEP and lines[0] == '{"invocation": "5"}' and lines[-1] == '{"invocation": "104"}'
    assert published.stat().st_mode & 0o777 == 0o644


def test_epochs_set_in_after_rendering_give_the_files_rendered_with_them():
    """A push renders while the host is read, then sets in the epochs that read decides."""
    from deployer.render import desired_files, with_epochs

    inv = inventory.load(str(DATA / "golden.ini"), env=ENV)
    for host in inv.hosts:
        epochs = {job.name: 1700000000 + number for number, job in enumerate(inv.jobs_for(host.name))}
        assert epochs
        assert with_epochs(desired_files(inv, host.name), epochs) == desired_files(inv, host.name, epochs)
        assert with_epochs(desired_files(inv, host.name), epochs) != desired_files(inv, host.name)
