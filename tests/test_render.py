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
