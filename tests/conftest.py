"""Fixtures shared by all tests: a real loopback HTTP server, and running the real CLI."""
from __future__ import annotations

import json
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

# Each test of 10 s or more, in seconds, as one `make test` measured it (--durations=0; refresh
# with tests/durations.py). Used only to order the run, so that no long test starts last and sets
# the time: see longest_first.
DURATIONS = REPO / "tests" / "data" / "durations.json"


def pytest_collection_modifyitems(config, items):
    try:
        measured = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    items[:] = longest_first(items, measured, workers)


def longest_first(items: list, seconds: dict, workers: int) -> list:
    """`items` in the order that makes pytest-xdist's `--dist worksteal` (Makefile) finish
    soonest. It hands worker k the k-th of `workers` equal shares of the list, and an idle worker
    steals from the end of the longest queue. So: the measured tests are dealt into the shares
    longest first, each to the share with the least time so far (LPT), at the front of its share;
    the others (unmeasured: short) fill the shares in their order, at the back, where they are
    stolen to fill the gaps. One worker: simply longest first."""
    measured = sorted((item for item in items if seconds.get(item.nodeid)), key=lambda item: -seconds[item.nodeid])
    rest = [item for item in items if not seconds.get(item.nodeid)]
    if workers <= 1:
        return measured + rest
    shares: list = [[] for _ in range(workers)]
    load = [0.0] * workers
    for item in measured:
        share = load.index(min(load))
        shares[share].append(item)
        load[share] += seconds[item.nodeid]
    left = len(items)
    for number, share in enumerate(shares):
        size = left // (workers - number)  # worksteal's split of what is left
        left -= size
        taken = max(size - len(share), 0)
        share += rest[:taken]
        rest = rest[taken:]
    shares[-1] += rest
    return [item for share in shares for item in share]


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
