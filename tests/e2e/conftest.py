"""Real systemd cron hosts (systemd-nspawn) for the end-to-end tests.

Where they cannot boot, the tests are skipped locally but FAIL under CI=true: a skipped
end-to-end test in CI would hide exactly what they exist to prove.
"""
from __future__ import annotations

import os

import pytest

from tests.cronhost import CronHost, missing_commands

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require_nspawn():
    missing = missing_commands()
    if os.geteuid() != 0:
        missing.append("root")
    if missing:
        message = f"a real cron host needs {', '.join(missing)} (apt-get install systemd-container openssh-server)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def cron01(tmp_path):
    _require_nspawn()
    with CronHost("cron01", workdir=tmp_path / "cron01") as host:
        yield host


@pytest.fixture
def cron02(tmp_path):
    _require_nspawn()
    with CronHost("cron02", workdir=tmp_path / "cron02") as host:
        yield host


@pytest.fixture
def write_inventory(tmp_path):
    """Write an inventory file; returns its path (as a string for the CLI)."""

    def write(text: str, name: str = "inventory.ini") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write
