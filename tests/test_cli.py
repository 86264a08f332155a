"""The command line as an operator meets it, without a host: messages and exit statuses."""

import pytest


def test_probe16_19_an_inventory_without_hosts_says_so(deployer, tmp_path):
    """Before: `choose one with --host ()`."""
    path = tmp_path / "inventory.ini"
    path.write_text("[defaults]\ntimezone = UTC\n")
    result = deployer("status", "-i", str(path), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"deployer: error: {path}: no [host:NAME] section: add one with its address"


TWO_HOSTS = "[host:cron01]\naddress = 10.0.0.1\n[host:cron02]\naddress = 10.0.0.2\n"


@pytest.mark.parametrize("args", [
    pytest.param(("-i", "{inv}", "--host", "nosuch", "status"), id="before"),
    pytest.param(("status", "-i", "{inv}", "--host", "nosuch"), id="after"),
    pytest.param(("--inventory", "{inv}", "logs", "settle", "--host", "nosuch"), id="mixed"),
    pytest.param(("-i", "{other}", "--host", "cron01", "status", "-i", "{inv}", "--host", "nosuch"),
                 id="after-wins"),
])
def test_inventory_and_host_work_before_and_after_the_command(deployer, tmp_path, args):
    """Before: `deployer -i inv.ini status` was `No such option '-i'` (exit 2)."""
    inv, other = tmp_path / "inv.ini", tmp_path / "other.ini"
    inv.write_text(TWO_HOSTS)
    other.write_text("[host:elsewhere]\naddress = 10.0.0.3\n")
    result = deployer(*(a.format(inv=inv, other=other) for a in args), check=False)
    assert result.returncode == 1
    assert result.stderr == f"deployer: error: {inv}: no [host:nosuch] (hosts: cron01, cron02)\n"


def test_the_inventory_comes_from_the_environment_when_not_given(deployer, tmp_path):
    inv = tmp_path / "inv.ini"
    inv.write_text(TWO_HOSTS)
    result = deployer("validate", env={"DEPLOYER_INVENTORY": str(inv)}, check=True)
    assert result.stdout.strip() == f"{inv}: ok (2 hosts, 0 alerts, 0 jobs)"


JOB_ON_CRON02 = """[host:cron01]
address = 127.0.0.1
port = 9

[host:cron02]
address = 127.0.0.1
port = 9

[job:settle-hourly]
schedule = 0 * * * *
url = http://127.0.0.1:9/s
host = cron02
"""


def test_a_job_command_names_the_closest_job_for_an_unknown_one(deployer, tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(JOB_ON_CRON02)
    for command in ("run", "logs", "history", "pause", "resume"):
        result = deployer(command, "settle-hourl", "-i", str(path), check=False)
        assert result.returncode == 1
        assert result.stderr.strip() == (f"deployer: error: {path}: no [job:settle-hourl]; "
                                         "did you mean settle-hourly?"), command


def test_a_job_command_is_refused_for_a_host_the_job_is_not_on(deployer, tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(JOB_ON_CRON02)
    result = deployer("run", "settle-hourly", "--host", "cron01", "-i", str(path), check=False)
    assert result.stderr.strip() == f"deployer: error: {path}: [job:settle-hourly] runs on host cron02, not cron01"


def test_a_bad_since_is_a_usage_error(deployer, tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(JOB_ON_CRON02)
    result = deployer("history", "settle-hourly", "--since", "last week", "-i", str(path), check=False)
    assert result.returncode == 2 and "neither a duration (7d, 36h, 90m) nor an ISO 8601" in result.stderr
