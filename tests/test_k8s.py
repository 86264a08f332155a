"""Exported CronJobs, validated against the Kubernetes schema in strict mode."""
from __future__ import annotations

import pytest
import yaml
from kubernetes_validate import validate

from deployer import inventory
from deployer.errors import DeployerError
from deployer.k8s import export, k8s_schedule, render_yaml

SECRETS = {"TOKEN": "tok-never-printed-123", "SECRET": "sec-never-printed-456"}
INVENTORY = """[host:cron01]
address = 10.0.0.5

[alert:ops]
type = dingtalk
token = ${TOKEN}
secret = ${SECRET}

[defaults]
alert = ops
retries = 2
timeout = 90s

[job:settle-hourly]
schedule = 0 * * * *
timezone = Asia/Shanghai
url = http://settle:8080/api/settle
expect_json = code=0, data.state="DONE"

[job:weekly-report]
schedule = 30 9 * * MON
timezone = Europe/Berlin
url = https://report/api/weekly?x=1&y='2'
retries = 0
headers = Authorization: Bearer ${TOKEN}
timeout = 10m

[job:quartz-daily]
schedule = 0 15 10 ? * MON-FRI
url = http://svc/daily

[job:boot-only]
schedule = @reboot
url = http://svc/boot

[job:native]
on_calendar = Mon..Fri *-*-* 09:00:00
url = http://svc/native
"""


@pytest.fixture
def inv(tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(INVENTORY)
    return inventory.load(str(path), env=SECRETS)


def exported(inv, **kw) -> tuple[str, list[dict]]:
    manifests, skipped = export(inv, image="registry.example/deployer-trigger:1", namespace="jobs",
                                skip_unexpressible=True, **kw)
    text = render_yaml(inv, manifests, skipped, "jobs")
    return text, [d for d in yaml.safe_load_all(text) if d]


def test_every_manifest_passes_strict_schema_validation(inv):
    text, documents = exported(inv)
    assert len(documents) == 3
    for document in documents:
        validate(document, "1.30.0", strict=True)


def test_semantics_are_kept(inv):
    _, documents = exported(inv)
    jobs = {d["metadata"]["name"]: d for d in documents}
    hourly = jobs["settle-hourly"]["spec"]
    assert (hourly["schedule"], hourly["timeZone"], hourly["concurrencyPolicy"]) == ("0 * * * *", "Asia/Shanghai", "Forbid")
    template = hourly["jobTemplate"]["spec"]
    assert (template["backoffLimit"], template["activeDeadlineSeconds"]) == (2, 90)
    args = template["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--expect-json") + 1] == 'code=0, data.state="DONE"'
    assert args[args.index("--retries") + 1] == "0", "Kubernetes retries the pod; the trigger must not too"
    weekly = jobs["weekly-report"]["spec"]
    assert (weekly["schedule"], weekly["timeZone"]) == ("30 9 * * MON", "Europe/Berlin")
    assert weekly["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 600
    assert jobs["quartz-daily"]["spec"]["schedule"] == "15 10 * * 1-5"  # Quartz MON-FRI is 2-6


def test_no_secret_value_is_ever_printed(inv):
    text, documents = exported(inv)
    assert SECRETS["TOKEN"] not in text and SECRETS["SECRET"] not in text
    env = documents[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "DEPLOYER_ALERT_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "deployer-alert-ops", "key": "token"}}} in env
    assert "kubectl -n jobs create secret generic deployer-alert-ops" in text


def test_jobs_cron_cannot_express_are_named(inv):
    with pytest.raises(DeployerError) as caught:
        export(inv)
    assert "job boot-only: @reboot" in str(caught.value) and "job native: on_calendar" in str(caught.value)
    text, _ = exported(inv)
    assert "# skipped native: job native: on_calendar has no cron equivalent" in text


@pytest.mark.parametrize("schedule, expected", [
    ("CRON_TZ=Asia/Tokyo 0 9 * * *", ("0 9 * * *", "Asia/Tokyo")),
    ("@weekly", ("@weekly", "UTC")),
    ("0 0 12 ? * 1,7", ("0 12 * * 0,6", "UTC")),
])
def test_schedules(schedule, expected):
    from deployer.models import Job

    assert k8s_schedule(Job(name="j", url="http://x/", host="h", schedule=schedule)) == expected


@pytest.mark.parametrize("schedule", ["0 0 */2 * 1", "0 0 0 L * ?", "30 0 12 * * ?", "0 0 12 ? * 6#3"])
def test_schedules_kubernetes_would_read_differently_are_refused(schedule):
    from deployer.models import Job

    with pytest.raises(DeployerError):
        k8s_schedule(Job(name="j", url="http://x/", host="h", schedule=schedule))


def test_cli_validates_with_the_kubernetes_validate_command(tmp_path, deployer):
    import subprocess
    import sys

    path = tmp_path / "inventory.ini"
    path.write_text(INVENTORY)
    out = deployer("export", "k8s", "-i", str(path), "--skip-unexpressible", env=SECRETS, check=True)
    manifest = tmp_path / "cronjobs.yaml"
    manifest.write_text(out.stdout)
    checked = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0", str(manifest)],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "skipped boot-only" in out.stderr


def test_credential_options_come_from_a_mounted_secret_never_the_manifest(inv):
    """headers, body, keys: the trigger reads them from $CREDENTIALS_DIRECTORY, here a Secret's files."""
    text, documents = exported(inv)
    weekly = next(d for d in documents if d["metadata"]["name"] == "weekly-report")
    pod = weekly["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["volumes"] == [{"name": "credentials", "secret": {"secretName": "deployer-job-weekly-report",
                                                                 "defaultMode": 0o400}}]
    assert {"name": "CREDENTIALS_DIRECTORY", "value": container["volumeMounts"][0]["mountPath"]} in container["env"]
    assert "--from-file=headers=./weekly-report.headers" in text
    assert SECRETS["TOKEN"] not in text


# --- issue 24 item 7: the header names the inventory's variables; loopback URLs are warned of ---

def test_issue24_7_the_secret_commands_name_the_variables_the_inventory_reads(inv, tmp_path):
    """Before: `${OPS_TOKEN}` (made from the channel's name) where the inventory says `${TOKEN}`."""
    text, _ = exported(inv)
    assert '--from-literal=token="${TOKEN}" --from-literal=secret="${SECRET}"' in text
    literal = tmp_path / "literal.ini"
    literal.write_text(INVENTORY.replace("token = ${TOKEN}", "token = written-here"))
    text = render_yaml(inventory.load(str(literal), env=SECRETS), *export(
        inventory.load(str(literal), env=SECRETS), skip_unexpressible=True), None)
    assert '--from-literal=token="${OPS_TOKEN}"' in text and "written-here" not in text


def test_issue24_7_an_export_of_loopback_urls_warns_on_stderr(tmp_path):
    from click.testing import CliRunner

    from deployer import cli

    path = tmp_path / "inventory.ini"
    path.write_text("[host:cron01]\naddress = 10.0.0.5\n[job:local]\nschedule = 0 3 * * *\n"
                    "url = http://127.0.0.1:8080/run\n[job:named]\nschedule = 0 3 * * *\nurl = http://localhost/x\n"
                    "[job:remote]\nschedule = 0 3 * * *\nurl = http://svc.jobs:8080/run\n")
    result = CliRunner().invoke(cli.main, ["export", "k8s", "-i", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "deployer: warning: job local: url http://127.0.0.1:8080/run is the pod itself in Kubernetes (localhost): "
        "give the service's cluster address",
        "deployer: warning: job named: url http://localhost/x is the pod itself in Kubernetes (localhost): "
        "give the service's cluster address"]
    assert "warning" not in result.stdout and "kind: CronJob" in result.stdout


def test_an_alert_policy_kubernetes_cannot_keep_is_noted_in_the_header(tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(INVENTORY.replace("url = http://svc/daily\n", "url = http://svc/daily\nalert_after = 3\n"))
    text, _ = exported(inventory.load(str(path), env=SECRETS))
    notes = [line for line in text.splitlines() if line.startswith("# note quartz")]
    assert notes == ["# note quartz-daily: alert_after/alert_repeat have no Kubernetes equivalent: there every "
                     "failed run alerts by itself (the trigger keeps no streak between pods)"]


def test_issue23_late_and_long_are_notes_not_deadlines(tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(INVENTORY.replace("url = http://svc/daily\n", "url = http://svc/daily\nalert_late = 5m\n"
                                      "alert_long = 30m\n"))
    text, _ = exported(inventory.load(str(path), env=SECRETS))
    notes = [line for line in text.splitlines() if line.startswith("# note quartz-daily")]
    assert notes == [
        "# note quartz-daily: alert_late has no Kubernetes equivalent: startingDeadlineSeconds (written from catch_up) "
        "is not it: a slot that could not start within it is skipped, and nothing tells that a slot is late",
        "# note quartz-daily: alert_long has no Kubernetes equivalent: activeDeadlineSeconds (written from timeout) "
        "is not it: it kills the run, where alert_long tells once and lets it go on"]
    assert "alert_late" not in text.split("---", 1)[1] and "alert_long" not in text.split("---", 1)[1]


def test_params_run_with_their_defaults_and_the_header_says_run_set_has_no_equivalent(tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(INVENTORY.replace("url = http://svc/daily\n",
                                      "url = http://svc/daily?n=${{n}}\nparams = n=5\n"))
    text, _ = exported(inventory.load(str(path), env=SECRETS))
    notes = [line for line in text.splitlines() if line.startswith("# note quartz-daily")]
    assert notes == ["# note quartz-daily: params: each scheduled run fills the declared defaults; Kubernetes has "
                     "no manual run with values (`kubectl create job --from=cronjob/...` takes none): there "
                     "`deployer run --set` has no equivalent"]
    assert "--params" in text and "n=5" in text


def test_kubernetes_has_no_chaining_a_chained_job_is_refused_and_its_parent_noted(tmp_path):
    """Issue 23 item 8: a CronJob cannot start another; a chained job has no schedule to export."""
    path = tmp_path / "inventory.ini"
    path.write_text(INVENTORY.replace("url = http://svc/daily\n", "url = http://svc/daily\non_failure_run = tidy\n")
                    + "\n[job:tidy]\nurl = http://svc/tidy\n")
    inv = inventory.load(str(path), env=SECRETS)
    with pytest.raises(DeployerError, match="job tidy: Kubernetes CronJobs have no chaining"):
        export(inv)
    text, documents = exported(inv)
    assert "tidy" not in {d["metadata"]["name"] for d in documents}
    assert ("# note quartz-daily: Kubernetes CronJobs have no chaining: this CronJob does not start tidy "
            "(after / on_failure_run)") in text.splitlines()


@pytest.mark.parametrize("keys, deadline, policy", [
    pytest.param("", 3600, "Forbid", id="defaults: once, forbid"),
    pytest.param("catch_up = 2h\nconcurrency = replace\n", 7200, "Replace", id="2h-replace"),
    pytest.param("catch_up = none\nconcurrency = forbid\n", 60, "Forbid", id="none-forbid"),
])
def test_issue23_catch_up_and_concurrency_become_the_deadline_and_the_policy(tmp_path, keys, deadline, policy):
    path = tmp_path / "inventory.ini"
    path.write_text(INVENTORY.replace("url = http://svc/daily\n", "url = http://svc/daily\n" + keys))
    _, documents = exported(inventory.load(str(path), env=SECRETS))
    spec = {d["metadata"]["name"]: d for d in documents}["quartz-daily"]["spec"]
    assert (spec["startingDeadlineSeconds"], spec["concurrencyPolicy"]) == (deadline, policy)
    validate({d["metadata"]["name"]: d for d in documents}["quartz-daily"], "1.30.0", strict=True)


def test_issue23_3_storms_are_noted_as_a_cron_host_thing_per_channel(inv):
    text, _ = exported(inv)
    notes = [line for line in text.splitlines() if line.startswith("# note alert ")]
    assert notes == ["# note alert ops: a storm (many jobs failing at once) is one message per channel on a cron "
                     "host; Kubernetes has no such gathering: there every failed pod sends its own message"]
