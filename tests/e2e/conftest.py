"""Real systemd cron hosts (systemd-nspawn) for the end-to-end tests.

`cron01` and `cron02` boot a fresh host for each test. `shared_cron01` is one host booted once
per session and reset between tests (every deployer unit stopped and removed, the deployer's
state, credentials and timer stamps gone, the journal emptied): for a test that pushes to one
host and needs nothing else of a fresh one. A test that stops, reboots or breaks its host
(mounts, SIGSTOP, local users) or needs two hosts keeps a fresh one.

Where they cannot boot, the tests are skipped locally but FAIL under CI=true: a skipped
end-to-end test in CI would hide exactly what they exist to prove.
"""
from __future__ import annotations

import os
import warnings

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


# Everything a push (and the tests' own probes) leave on a host, gone; then the journal emptied
# (`--rotate` closes the active file, `--vacuum-time` deletes every closed one), so that status,
# history and metrics see no earlier test's runs. A preserved RuntimeDirectory= of a DynamicUser=
# unit is a link into /run/private: both go, or systemd finds the link gone and its target there.
RESET = r"""
systemctl stop --all 'deployer*' 2>/dev/null
rm -rf /etc/systemd/system/deployer* /etc/systemd/system/*.wants/deployer* /etc/systemd/system/.deployer* \
       /etc/deployer /var/lib/deployer /var/lib/.deployer* /var/lib/deployer-* /var/lib/private/deployer* \
       /var/lib/systemd/timers/stamp-deployer* /var/lib/prometheus/node-exporter/deployer.prom \
       /var/lib/prometheus/node-exporter/.deployer* /run/deployer \
       /run/deployer-through /run/private/deployer-through /run/deployer-watch /run/private/deployer-watch
find /root /tmp -mindepth 1 -maxdepth 1 -newer /run/deployer-test-booted ! -name 'systemd-private-*' \
     -exec rm -rf {} +
systemctl daemon-reload
systemctl reset-failed
journalctl --rotate --vacuum-time=1s >/dev/null 2>&1
# What must hold now, as on a fresh host: no file of the deployer's, no deployer unit active
# (PID 1 may still hold a deleted unit, not-found and inactive, until it collects it; and the
# slices deployer.slice and deployer-jobs.slice exist implicitly), no run record.
left=$(find /etc /var/lib /root /tmp -name '*deployer*' ! -path '/etc/ssh/*')
units=$(systemctl list-units --all --plain --no-legend 'deployer*' | awk '$3 != "inactive" {print $1, $2, $3}')
records=$(journalctl --no-pager -o cat MESSAGE_ID=5f0c1b0e9f5a4e2d8a7c3b6d1e2f4a90 | wc -l)
if [ -n "$left$units" ] || [ "$records" != 0 ]; then echo "left: $left $units records: $records" >&2; exit 1; fi
"""


class SharedHost:
    """One `cron01` for the session, reset before each test that uses it; booted anew if a
    reset fails or the host is gone."""

    def __init__(self, factory):
        self.factory = factory
        self.host = None
        self.boots = 0

    def _boot(self) -> CronHost:
        if self.host is not None:
            self.host.stop()
        self.boots += 1
        host = CronHost("cron01", workdir=self.factory.mktemp("shared-cron01"))
        host.machine = f"cron01-shared{self.boots}-{os.getpid()}"  # beside a fresh cron01 of the same run
        host.start()
        host.ssh("touch /run/deployer-test-booted")
        self.host = host
        return host

    def get(self) -> CronHost:
        host = self.host
        if host is None or host.process.poll() is not None:
            return self._boot()
        try:
            host.ssh(RESET, timeout=60)
            return host
        except Exception as error:  # CronHostError, subprocess.TimeoutExpired
            # Correct but slow: shown in the summary, so that a reset that always fails is seen.
            warnings.warn(f"shared cron01: reset failed, booting a new one: {error}")
            return self._boot()

    def close(self) -> None:
        if self.host is not None:
            self.host.stop()


@pytest.fixture(scope="session")
def _shared_cron01_host(tmp_path_factory):
    shared = SharedHost(tmp_path_factory)
    yield shared
    shared.close()


@pytest.fixture
def shared_cron01(_shared_cron01_host):
    """A booted `cron01` as a fresh one looks to the deployer (see RESET), without the boot."""
    _require_nspawn()
    yield _shared_cron01_host.get()


@pytest.fixture
def write_inventory(tmp_path):
    """Write an inventory file; returns its path (as a string for the CLI)."""

    def write(text: str, name: str = "inventory.ini") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write
