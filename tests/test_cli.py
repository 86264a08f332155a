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
    assert result.returncode == 2
    assert "neither a duration (e.g. 500ms, 90s, 5m, 1h30m, 7d; units: ms, s, m, h, d) nor an ISO 8601" in result.stderr


# --- issue 22 item 4: nothing a host or a service sends reaches the terminal raw ----------------

import json  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from deployer import cli, remote  # noqa: E402
from deployer.hostside import protocol  # noqa: E402

# A service's body and a compromised host's fields: clear screen, cursor moves, OSC 0 (window
# title), OSC 8 (a link), bell, backspaces, a carriage return, 8-bit CSI, DEL.
EVIL = ("\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\"
        "ok\b\b\bFAILED\rall good\x9b2J\x7f")
RAW = ("\x1b", "\x07", "\x08", "\r", "\x9b", "\x9d", "\x7f")


class HostileAgent(remote.Agent):
    """Answers as a compromised host would: every free-text field full of escapes (through the
    real protocol decoding and answer checks, as over SSH)."""

    host = "cron01"

    def __init__(self, body: dict):
        self.body = body

    def call(self, request, progress=None, output=None):
        op = protocol.OP_OF_REQUEST[type(request)]
        if output is not None:
            for line in (f"attempt 1/1: -> 500: {EVIL}", EVIL):
                output(line)
        raw = json.dumps({"version": protocol.PROTOCOL_VERSION, "ok": True, "body": self.body[op]}).encode()
        return self._answer(request, raw)


RUN_INFO = {"run": "0b1d", "started": 1796529600.0, "result": "failed", "reason": f"status 500: {EVIL}",
            "slot": 1796529600, "duration": 0.5, "attempts": 1, "http_status": 500, "source": "record"}
ANSWERS = {
    "run": {"ok": False, "result": "exit-code", "exit_status": 1, "output": f"{EVIL}\nsecond line {EVIL}",
            "error": "", "run": RUN_INFO},
    "logs": {"output": f"Dec 06 04:00:00 cron01 deployer-settle[1]: {EVIL}\nnext line\r\x1b[1A{EVIL}\n"},
    "status": {"jobs": [{"job": "settle", "timer": "deployer-settle.timer", "service": "deployer-settle.service",
                         "timer_state": "active", "enabled": "enabled", "calendar": [f"*-*-* 03:00:00{EVIL}"],
                         "next": "", "last": "", "paused": False, "service_state": "inactive", "result": "",
                         "exit_status": 0, "started": "", "finished": "", "last_run": RUN_INFO}], "held": None},
    "history": {"runs": [RUN_INFO], "now": 1796529700.0, "scheduled_since": 0.0},
}


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[host:cron01]\naddress = 10.0.0.1\n[job:settle]\nhost = cron01\n"
                         "schedule = 0 3 * * *\nurl = http://svc/settle\n")

    def run(*args, answers=ANSWERS):
        monkeypatch.setattr(cli, "_connect", lambda inv, host: HostileAgent(answers))
        return CliRunner().invoke(cli.main, [*args, "-i", str(inventory)])

    return run


@pytest.mark.parametrize("args", [("run", "settle"), ("logs", "settle"), ("logs", "settle", "-f"), ("status",),
                                  ("history", "settle")], ids=" ".join)
def test_issue22_4_a_hostile_host_or_service_prints_no_control_character(hostile, args):
    """Before: `run`, `logs`, `logs -f` printed the service's body raw, and `status` every field
    of a compromised host's answer: the terminal cleared, moved, retitled, linked, rewrote."""
    result = hostile(*args)
    printed = result.output
    assert "pwned" in printed or "next line" in printed or "settle" in printed, printed
    assert not [c for c in RAW if c in printed], f"raw control characters in {printed!r}"
    assert "\\e[2J" in printed or args == ("status",) and "\\e]0;pwned\\a" in printed


@pytest.mark.parametrize("field, value, problem", [
    ("job", "settle\x1b[2J", "job name"),
    ("job", "../../etc", "job name"),
    ("result", "exit-code\x1b]0;x\x07", "systemd state"),
    ("next", "tomorrow\x1b[H", "not an ISO 8601 time"),
])
def test_issue22_4_names_and_words_outside_their_rules_are_refused(hostile, field, value, problem):
    answers = json.loads(json.dumps(ANSWERS))
    answers["status"]["jobs"][0][field] = value
    result = hostile("status", answers=answers)
    assert result.exit_code == 1
    assert "answer is not valid" in result.output and problem in result.output
    assert "\x1b" not in result.output


@pytest.mark.parametrize("field, value", [("result", "ok\x1b[2J"), ("source", "cache"), ("run", "\x1b]8;;x"),
                                          ("started", float("nan"))])
def test_issue22_4_a_run_outside_its_vocabulary_is_refused(hostile, field, value):
    answers = json.loads(json.dumps(ANSWERS))
    answers["history"]["runs"][0][field] = value
    result = hostile("history", "settle", answers=answers)
    assert result.exit_code == 1 and "answer is not valid" in result.output
    assert "\x1b" not in result.output
