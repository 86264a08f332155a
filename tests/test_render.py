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
                            "/etc/deployer/credentials/ops.secret": (b"sec-not-in-units", 0o600)}
    for f in files:
        if not f.secret:
            assert b"not-in-units" not in f.content


@pytest.mark.parametrize("job, expected_tail", [
    pytest.param("settle-hourly", ["--expect-json", 'code=0, data.state="DONE"', "--ping-url",
                                   "https://hc.example/ping/abc"], id="cron"),
    pytest.param("odd-url", ["--resolution", "1"], id="on-calendar-has-second-resolution"),
])
def test_trigger_arguments(job, expected_tail):
    inv = inventory.load(str(DATA / "golden.ini"), env=ENV)
    argv = trigger_argv(next(j for j in inv.jobs if j.name == job), "/usr/bin/python3")
    assert argv[-len(expected_tail):] == expected_tail


def test_a_host_without_metrics_dir_gets_no_metrics_units(tmp_path):
    from deployer.hostside import paths

    source = (DATA / "golden.ini").read_text().replace("[host:cron01]\n", "[host:cron01]\nmetrics_dir =\n", 1)
    (tmp_path / "inv.ini").write_text(source)
    files = host_files(inventory.load(str(tmp_path / "inv.ini"), env=ENV), "cron01")
    names = {f.name for f in files}
    assert not names & {paths.METRICS_SERVICE, paths.HEARTBEAT_TIMER, paths.METRICS_SOON_TIMER}
    assert not any(b"metrics" in f.content for f in files if f.name.startswith("deployer-") and not f.secret)


def test_the_heartbeat_url_is_a_root_only_file_never_in_a_unit(tmp_path):
    from deployer.hostside import paths

    source = (DATA / "golden.ini").read_text().replace(
        "[host:cron01]\n", "[host:cron01]\nheartbeat_url = https://hc.example/ping/s3cret\n", 1)
    (tmp_path / "inv.ini").write_text(source)
    files = host_files(inventory.load(str(tmp_path / "inv.ini"), env=ENV), "cron01")
    [url] = [f for f in files if f.path == paths.HEARTBEAT_URL]
    assert (url.content, url.mode, url.secret) == (b"https://hc.example/ping/s3cret\n", 0o600, True)
    assert not any(b"s3cret" in f.content for f in files if f is not url)


def test_a_jobs_period_is_the_longest_gap_of_its_calendar():
    from deployer.render import periods
    from deployer.schedule import to_calendar

    calendars = ("0 * * * *", "0 9 * * 1-5", "*/5 * * * *",
                 "0 0 1 * *")
    found = periods([to_calendar(c, (), "UTC") for c in calendars])
    assert [found[to_calendar(c, (), "UTC").lines] for c in calendars] == [3600, 3 * 86400, 300, 31 * 86400]
