"""The command line as an operator meets it, without a host: messages and exit statuses."""


def test_probe16_19_an_inventory_without_hosts_says_so(deployer, tmp_path):
    """Before: `choose one with --host ()`."""
    path = tmp_path / "inventory.ini"
    path.write_text("[defaults]\ntimezone = UTC\n")
    result = deployer("status", "-i", str(path), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"deployer: error: {path}: no [host:NAME] section: add one with its address"


TWO_HOSTS = """[host:cron01]
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
    path.write_text(TWO_HOSTS)
    for command in ("run", "logs", "history", "pause", "resume"):
        result = deployer(command, "settle-hourl", "-i", str(path), check=False)
        assert result.returncode == 1
        assert result.stderr.strip() == (f"deployer: error: {path}: no [job:settle-hourl]; "
                                         "did you mean settle-hourly?"), command


def test_a_job_command_is_refused_for_a_host_the_job_is_not_on(deployer, tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(TWO_HOSTS)
    result = deployer("run", "settle-hourly", "--host", "cron01", "-i", str(path), check=False)
    assert result.stderr.strip() == f"deployer: error: {path}: [job:settle-hourly] runs on host cron02, not cron01"


def test_a_bad_since_is_a_usage_error(deployer, tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(TWO_HOSTS)
    result = deployer("history", "settle-hourly", "--since", "last week", "-i", str(path), check=False)
    assert result.returncode == 2 and "neither a duration (7d, 36h, 90m) nor an ISO 8601" in result.stderr
