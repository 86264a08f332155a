"""Fixtures shared by all tests: a real loopback HTTP server, and running the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from tests.httpserver import RecordingServer

REPO = Path(__file__).resolve().parent.parent

# Property tests: `make test-fast` (the edit loop) draws new examples every run, to find new
# cases; `make test` and CI (`--hypothesis-profile=repeatable`) draw the same ones every run, so a
# CI result can be reproduced and is not a lottery over rare examples. Each case exploration finds
# is pinned with @example (e.g. test_schedule's midnight gap, test_fuzz's `\;`).
settings.register_profile("repeatable", derandomize=True)


@pytest.fixture
def server():
    with RecordingServer() as running:
        yield running


@pytest.fixture
def isolated_home(tmp_path_factory) -> Path:
    """A HOME without the developer's ~/.ssh (config, keys, known_hosts) or an ssh-agent."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def deployer(isolated_home):
    """Run the installed `deployer` as an operator would: a subprocess, with a clean HOME."""

    def run(*args: str, env: dict | None = None, check: bool | None = None) -> subprocess.CompletedProcess:
        environment = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        environment.update(HOME=str(isolated_home), **(env or {}))
        result = subprocess.run([sys.executable, "-m", "deployer", *args], capture_output=True,
                                text=True, env=environment, timeout=300)
        if check is True and result.returncode != 0:
            raise AssertionError(f"deployer {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        if check is False and result.returncode == 0:
            raise AssertionError(f"deployer {' '.join(args)} should have failed:\n{result.stdout}")
        return result

    return run
