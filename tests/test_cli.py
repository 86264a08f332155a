"""The command line as an operator meets it, without a host: messages and exit statuses."""


def test_probe16_19_an_inventory_without_hosts_says_so(deployer, tmp_path):
    """Before: `choose one with --host ()`."""
    path = tmp_path / "inventory.ini"
    path.write_text("[defaults]\ntimezone = UTC\n")
    result = deployer("status", "-i", str(path), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"deployer: error: {path}: no [host:NAME] section: add one with its address"
