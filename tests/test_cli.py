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
