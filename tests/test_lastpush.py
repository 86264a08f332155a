"""The last push's record (deployer/lastpush.py): a push of the same inputs to a host that still
holds their files is `up to date` without a parse or a render; any changed input, and any file
changed on the host, makes it a full push again."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from deployer import bundle, cli, inventory, lastpush, remote
from deployer.contract import paths
from tests.test_agent import FakeSystemd

INVENTORY = """[host:cron01]
address = 10.0.0.1
[job:settle]
schedule = 0 * * * *
url = http://svc/settle?token=${SETTLE_TOKEN}
[job:report]
schedule = 30 2 * * *
url = http://svc/report
"""


@pytest.fixture
def cron01(tmp_path, monkeypatch):
    """One in-process host and a cache of its own; `push(text, *args)` runs `deployer push`."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SETTLE_TOKEN", "s3cret")
    agent = remote.LocalAgent("cron01", str(tmp_path / "root"), FakeSystemd())
    monkeypatch.setattr(cli, "_connect", lambda inv, host: agent)
    path = tmp_path / "inventory.ini"

    def push(text: str = INVENTORY, *args: str):
        path.write_text(text)
        result = CliRunner().invoke(cli.main, ["push", "-i", str(path), *args])
        assert result.exit_code == 0, result.output
        return result.output

    return push, agent, path


def refused(path) -> str:
    """A push of the inventory at `path` that must fail as a full push does: its one-line error."""
    result = CliRunner().invoke(cli.main, ["push", "-i", str(path)])
    assert result.exit_code == 1, result.output
    return result.output


def no_parse(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the inventory was parsed")

    monkeypatch.setattr(inventory, "parse", refuse)


def test_a_second_push_of_the_same_inputs_says_up_to_date_without_a_parse(cron01, monkeypatch, tmp_path):
    push, agent, path = cron01
    records = tmp_path / "cache" / "deployer" / "pushed"
    assert "pushed" in push()
    shutil.rmtree(records)
    full = push()  # a full no-op (no record): it writes the record again
    shutil.rmtree(records)
    full_json = push(INVENTORY, "--json")
    no_parse(monkeypatch)
    assert push() == full == "host cron01: up to date: 0 add, 0 change, 0 remove, 16 unchanged\n"
    assert push(INVENTORY, "--json") == full_json


def test_the_record_holds_no_secret_and_only_its_owner_may_read_it(cron01, tmp_path):
    push, _, _ = cron01
    push(INVENTORY.replace("address = 10.0.0.1\n", "address = 10.0.0.1\nheartbeat_url = https://hc.example/p1ng\n"))
    [record] = (tmp_path / "cache" / "deployer" / "pushed").iterdir()
    assert "s3cret" not in record.read_text() and "p1ng" not in record.read_text()
    assert record.stat().st_mode & 0o077 == 0
    assert record.parent.stat().st_mode & 0o077 == 0


def test_a_file_changed_on_the_host_is_put_back(cron01, monkeypatch):
    push, agent, _ = cron01
    push()
    unit = Path(agent.layout.at(paths.UNIT_DIR + "/deployer-report.timer"))
    unit.write_text(unit.read_text().replace("02:30", "03:30"))
    assert "pushed: 0 add, 1 change" in push()
    assert "02:30" in unit.read_text()


def test_a_file_added_or_removed_on_the_host_is_seen(cron01):
    push, agent, _ = cron01
    push()
    stray = Path(agent.layout.at(paths.UNIT_DIR + "/deployer-stray.timer"))
    stray.write_bytes(paths.MARKER.encode() + b"\n[Timer]\n")
    assert "pushed: 0 add, 0 change, 1 remove" in push()
    Path(agent.layout.at(paths.UNIT_DIR + "/deployer-report.timer")).unlink()
    assert "pushed: 1 add, 0 change, 0 remove" in push()


def test_a_changed_environment_variable_is_pushed(cron01, monkeypatch):
    push, _, _ = cron01
    push()
    push()
    monkeypatch.setenv("SETTLE_TOKEN", "n3w")
    assert "pushed: 0 add, 1 change" in push()


def test_a_changed_local_file_is_pushed(cron01, tmp_path):
    push, agent, _ = cron01
    ca = tmp_path / "ca.pem"
    ca.write_text("one\n")
    text = INVENTORY + f"ca_file = {ca}\n"
    push(text)
    push(text)
    ca.write_text("two\n")
    assert "pushed: 0 add, 1 change" in push(text)
    assert Path(agent.layout.at(paths.job_credential("report", "ca.pem"))).read_text() == "two\n"


def test_a_job_granted_a_new_epoch_elsewhere_is_not_up_to_date(cron01):
    """The host's epoch file is the host's: a host whose epoch differs is pushed in full."""
    push, agent, _ = cron01
    push()
    epoch = Path(agent.layout.at(paths.job_credential("report", paths.EPOCH_CREDENTIAL)))
    epoch.write_text("%d\n" % (int(epoch.read_text()) + 5))
    assert "up to date" in push()  # in full: a push keeps the epoch the host holds
    epoch.unlink()
    assert "pushed: 1 add" in push()


def test_a_paused_job_stays_paused_and_is_said(cron01):
    push, agent, _ = cron01
    push()
    remote.pause(agent, "report")
    assert "deployer-report.timer stays paused" in push()


def test_a_push_that_fails_records_nothing(cron01, monkeypatch, tmp_path):
    push, agent, path = cron01

    def refuse(*args, **kwargs):
        from deployer.errors import DeployerError

        raise DeployerError("refused")

    monkeypatch.setattr(remote, "apply", refuse)
    path.write_text(INVENTORY)
    assert "refused" in refused(path)
    assert not (tmp_path / "cache" / "deployer" / "pushed").exists()


def key_of(path: str = "/srv/inventory.ini", source: str = INVENTORY, host=None, **env) -> str:
    return lastpush.key(path, source, host, {"SETTLE_TOKEN": "a", "HOME": "/root", **env})


@pytest.mark.parametrize("other", [
    pytest.param(lambda: key_of(source=INVENTORY + "retries = 1\n"), id="text"),
    pytest.param(lambda: key_of(source=INVENTORY.replace("0 *", "0  *")), id="one-space"),
    pytest.param(lambda: key_of(path="/srv/other.ini"), id="path"),
    pytest.param(lambda: key_of(host="cron01"), id="--host"),
    pytest.param(lambda: key_of(SETTLE_TOKEN="b"), id="a variable it names"),
    pytest.param(lambda: lastpush.key("/srv/inventory.ini", INVENTORY, None, {"HOME": "/root"}), id="unset"),
    pytest.param(lambda: key_of(HOME="/home/ops"), id="HOME"),
])
def test_each_input_of_the_text_changes_the_key(other):
    assert other() != key_of()
    assert key_of(UNRELATED="x") == key_of(), "a variable the text does not name is not an input"


def test_the_code_the_templates_and_the_calendar_data_are_in_the_key(monkeypatch, tmp_path):
    described = json.loads(lastpush._code_and_calendar())
    package = Path(lastpush.__file__).resolve().parent
    modules = {p for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert {Path(m[0]) for m in described["modules"]} == modules
    assert {name for name, _ in described["templates"]} == {p.name for p in (package / "units").iterdir()}
    assert described["bundle"] == bundle.cache_name()
    installed = [m for m in described["installed"] if m[1] is not None]
    assert "deployer-0.1.0.dist-info" in [Path(m[0]).parent.name for m in installed]

    zone_data = tmp_path / "tzdata.zi"
    zone_data.write_text("# version 2026a\n")
    monkeypatch.setattr(lastpush, "CALENDAR_FILES", (str(zone_data),))
    before = key_of()
    zone_data.write_text("# version 2026b\n")
    assert key_of() != before


def test_a_changed_template_or_module_changes_the_code_part(tmp_path):
    package = tmp_path / "deployer"
    (package / "units").mkdir(parents=True)
    (package / "render.py").write_text("x = 1\n")
    (package / "units" / "job.timer.j2").write_text("[Timer]\n")
    before = lastpush._code_and_calendar(package)
    (package / "units" / "job.timer.j2").write_text("[Timer]\nAccuracySec=1s\n")
    after_template = lastpush._code_and_calendar(package)
    (package / "render.py").write_text("x = 22\n")
    assert len({before, after_template, lastpush._code_and_calendar(package)}) == 3


def test_an_entry_whose_local_file_changed_is_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    local = tmp_path / "client.pem"
    local.write_text("one")
    host = inventory.parse(INVENTORY, "inv.ini", {"SETTLE_TOKEN": "a"}).hosts[0]
    lastpush.record("k", "inv.ini", None, host, {"/etc/x": "00"}, lastpush.local_files({str(local): (10, b"one")}))
    assert lastpush.find("k", "inv.ini", None).host == host
    assert lastpush.find("other key", "inv.ini", None) is None
    local.write_text("two")
    assert lastpush.find("k", "inv.ini", None) is None
    local.unlink()
    assert lastpush.find("k", "inv.ini", None) is None


def test_an_ssh_key_that_cannot_be_read_any_more_is_a_full_push_and_its_error(cron01, tmp_path):
    push, _, path = cron01
    key = tmp_path / "id_ed25519"
    key.write_text("key")
    text = INVENTORY.replace("address = 10.0.0.1\n", f"address = 10.0.0.1\nidentity_file = {key}\n")
    push(text)
    key.unlink()
    assert "[host:cron01] identity_file" in refused(path)


def test_an_entry_not_used_for_a_month_is_forgotten(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    host = inventory.parse(INVENTORY, "inv.ini", {"SETTLE_TOKEN": "a"}).hosts[0]
    lastpush.record("k", "old.ini", None, host, {}, {})
    old = lastpush._entry_path("old.ini", None)
    os.utime(old, (0, 0))
    lastpush.record("k", "new.ini", None, host, {}, {})
    assert not old.exists() and lastpush.find("k", "new.ini", None) is not None


def test_a_push_after_one_that_kept_jobs_with_no_prune_removes_them(cron01):
    push, _, _ = cron01
    push()
    without_report = INVENTORY[:INVENTORY.index("[job:report]")]
    assert "kept 1 job" in push(without_report, "--no-prune")
    assert "kept 1 job" in push(without_report, "--no-prune")
    assert "removed 1 job: report" in push(without_report)
    assert "up to date" in push(without_report)


def test_a_local_file_in_defaults_that_every_job_overrides_is_still_an_input(cron01, tmp_path):
    """The parse reads it (and refuses the inventory without it), though no job keeps its value."""
    push, _, path = cron01
    defaults, own = tmp_path / "d.pem", tmp_path / "j.pem"
    defaults.write_text("d\n")
    own.write_text("j\n")
    text = INVENTORY.replace("[job:settle]", f"[defaults]\nca_file = {defaults}\n[job:settle]") + f"ca_file = {own}\n"
    text = text.replace("url = http://svc/settle", f"ca_file = {own}\nurl = http://svc/settle")
    push(text)
    assert "up to date" in push(text)
    defaults.unlink()
    assert "[defaults] ca_file: cannot read" in refused(path)


def test_an_inventory_path_that_is_not_utf8_is_recorded_without_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    host = inventory.parse(INVENTORY, "inv.ini", {"SETTLE_TOKEN": "a"}).hosts[0]
    lastpush.record("k", "inv-\udcff.ini", None, host, {}, {})  # a name that is not UTF-8: no exception
    assert lastpush.find("k", "inv-\udcff.ini", None) is not None


def test_a_full_push_after_the_question_uses_the_same_connection(cron01, monkeypatch):
    push, agent, _ = cron01
    push()
    connected = []
    monkeypatch.setattr(cli, "_connect", lambda inv, host: connected.append(inv.host(host).address) or agent)
    unit = Path(agent.layout.at(paths.UNIT_DIR + "/deployer-report.timer"))
    unit.write_text(unit.read_text().replace("02:30", "03:30"))
    assert "pushed: 0 add, 1 change" in push()  # the record's question, then the full push
    assert connected == ["10.0.0.1"], "one connection: the question's"
