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
from deployer.contract import protocol  # noqa: E402

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

    def call(self, request, progress=None, output=None, stop=None):
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


# --- issue 22 item 14, issue 24 item 2: status shows what each host runs ----------------------

from deployer.errors import DeployerError, RemoteError  # noqa: E402
from deployer.contract.protocol import JobStatus, StatusAnswer  # noqa: E402

MACHINE_A, MACHINE_B = "a" * 32, "b" * 32


def timer(job: str, *calendar: str, active: bool = True) -> JobStatus:
    """A job as a host's agent reports it: its timer's calendar as systemd normalized it."""
    return JobStatus(job, f"deployer-{job}.timer", f"deployer-{job}.service",
                     timer_state="active" if active else "inactive", enabled="enabled", calendar=calendar,
                     next="2026-12-07T03:00:00+00:00" if active else "", service_state="inactive")


class RecordedAgent(remote.Agent):
    """Answers `status` with a StatusAnswer, through the real protocol encoding and answer checks."""

    def __init__(self, host: str, answer: StatusAnswer):
        self.host, self.answer = host, answer

    def call(self, request, progress=None, output=None, stop=None):
        raw = json.dumps({"version": protocol.PROTOCOL_VERSION, "ok": True,
                          "body": protocol.to_json(self.answer)}).encode()
        return self._answer(request, raw)


FLEET = ("[host:cron01]\naddress = 10.0.0.5\n[host:cron02]\naddress = 10.0.0.6\n"
             "[job:settle]\nhost = cron01\nschedule = 0 4 * * *\nurl = http://svc/settle\n"
             "[job:tick]\nhost = cron02\non_calendar = Mon,Tue *-*-* 9:00\nurl = http://svc/tick\n")


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """`status` over hosts whose answers a test gives: host name -> StatusAnswer, or an error
    (a host that cannot be reached)."""

    def run(answers: dict, inventory: str = FLEET, *args: str):
        path = tmp_path / "inventory.ini"
        path.write_text(inventory)

        def connect(inv, name):
            if isinstance(answers[name], Exception):
                raise answers[name]
            return RecordedAgent(name, answers[name])

        monkeypatch.setattr(cli, "_connect", connect)
        text = CliRunner().invoke(cli.main, ["status", "-i", str(path), *args])
        document = CliRunner().invoke(cli.main, ["status", "-i", str(path), "--json", *args])
        assert text.exit_code == document.exit_code, (text.output, document.output)
        return text, json.loads(document.stdout)

    return run


def rows(text: str) -> dict:
    """(host, job) -> the line of the table that lists it."""
    return {tuple(line.split()[:2]): line for line in text.splitlines()[1:] if line.startswith("cron")}


def test_issue24_2_schedule_is_the_hosts_and_a_pending_push_is_flagged(fleet):
    """Before: SCHEDULE was the inventory's, edited and not pushed: the new schedule and a NEXT the
    host will not run. Now it is the host's timer's, and the difference is said."""
    text, document = fleet({
        "cron01": StatusAnswer(jobs=(timer("settle", "*-*-* 03:00:00 UTC"),), machine=MACHINE_A),
        # as written in the inventory "Mon,Tue *-*-* 9:00"; systemd reports it normalized: the same
        "cron02": StatusAnswer(jobs=(timer("tick", "Mon,Tue *-*-* 09:00:00 UTC"),), machine=MACHINE_B)})

    assert text.exit_code == 0, text.output + text.stderr
    lines = rows(text.stdout)
    assert text.stdout.splitlines()[0].split() == ["HOST", "JOB", "SCHEDULE", "LAST", "NEXT", "RESULT", "NOTE"]
    assert "*-*-* 03:00:00 UTC" in lines["cron01", "settle"] and "0 4 * * *" not in lines["cron01", "settle"].split(
        "  never  ")[0]
    assert lines["cron01", "settle"].endswith("schedule differs from inventory (0 4 * * *): push pending")
    assert "Mon,Tue *-*-* 9:00" in lines["cron02", "tick"] and "differs" not in lines["cron02", "tick"]
    settle, tick = document["jobs"]
    assert (settle["schedule"], settle["inventory_schedule"], settle["schedule_differs"]) == (
        ["*-*-* 03:00:00 UTC"], ["*-*-* 04:00:00 UTC"], True)
    assert (tick["schedule_differs"], tick["in_inventory"], tick["also_on"]) == (False, True, [])


def test_issue22_14_a_job_on_two_hosts_is_a_double_run_said_in_the_text(fleet):
    """The runbook's case: a move --force while cron01 was cut off, then cron01 back within its
    lease. Before: two ordinary `ok` rows; only --json said in_inventory: false."""
    text, document = fleet({
        "cron01": StatusAnswer(jobs=(timer("settle", "*-*-* 04:00:00 UTC"), timer("tick", "Mon,Tue *-*-* 09:00:00 UTC")),
                               machine=MACHINE_A),
        "cron02": StatusAnswer(jobs=(timer("tick", "Mon,Tue *-*-* 09:00:00 UTC"),), machine=MACHINE_B)})

    assert text.exit_code == 0
    lines = rows(text.stdout)
    assert "DOUBLE RUN: not in inventory for cron01, and runs on cron02 too: push cron01 to remove it here" \
        in lines["cron01", "tick"]
    assert "host-down.md#a-job-runs-on-two-hosts" in lines["cron01", "tick"]
    assert "DOUBLE RUN: also runs on cron01" in lines["cron02", "tick"]
    assert "NOTE" in text.stdout.splitlines()[0] and "differs" not in text.stdout
    by_host = {(r["host"], r["job"]): r for r in document["jobs"]}
    assert (by_host["cron01", "tick"]["in_inventory"], by_host["cron01", "tick"]["inventory_host"],
            by_host["cron01", "tick"]["also_on"]) == (False, "cron02", ["cron02"])
    assert by_host["cron02", "tick"]["also_on"] == ["cron01"] and by_host["cron01", "settle"]["also_on"] == []


@pytest.mark.parametrize("tick_on_cron02, note", [
    pytest.param(timer("tick", "Mon,Tue *-*-* 09:00:00 UTC", active=False), "not in inventory for this host "
                 "(the inventory puts it on cron02): a moved job still here? push cron01", id="paused-there"),
    pytest.param(None, "not in inventory for this host (the inventory puts it on cron02)", id="not-there"),
])
def test_issue22_14_a_job_the_inventory_puts_elsewhere_is_flagged_without_a_double_run(fleet, tick_on_cron02, note):
    text, _ = fleet({"cron01": StatusAnswer(jobs=(timer("tick", "Mon,Tue *-*-* 09:00:00 UTC"),), machine=MACHINE_A),
                     "cron02": StatusAnswer(jobs=(tick_on_cron02,) if tick_on_cron02 else (), machine=MACHINE_B)})
    lines = rows(text.stdout)
    assert note in lines["cron01", "tick"] and "DOUBLE RUN" not in text.stdout
    if tick_on_cron02 is None:  # what the inventory puts on cron02 and cron02 lacks: a push pending
        assert "not installed" in lines["cron02", "tick"] and lines["cron02", "tick"].endswith("push pending")


def test_issue24_2_one_machine_under_two_host_names_is_refused(fleet):
    """Before: its jobs listed twice, exit 0. Now listed once (under the name it was pushed as),
    flagged, and exit 1 with the reason on stderr."""
    inventory = FLEET.replace("[host:cron02]\naddress = 10.0.0.6", "[host:cron02]\naddress = cron01.example")
    same = StatusAnswer(jobs=(timer("settle", "*-*-* 04:00:00 UTC"),), machine=MACHINE_A, owner="cron01")
    text, document = fleet({"cron01": same, "cron02": same}, inventory)

    assert text.exit_code == 1
    assert text.stderr.startswith("deployer: error: hosts cron01 and cron02 are one machine: fix the address of "
                                  "one of them in ") and text.stderr.strip().endswith("inventory.ini")
    assert [key for key in rows(text.stdout)] == [("cron01", "settle")]
    assert [r["also_on"] for r in document["jobs"]] == [[], []]  # its own twin is not another machine
    assert f"host cron02: SAME MACHINE as host cron01 (machine {MACHINE_A[:12]})" in text.stdout
    assert [(h["host"], h["machine"], h["same_machine_as"]) for h in document["hosts"]] == [
        ("cron01", MACHINE_A, ["cron02"]), ("cron02", MACHINE_A, ["cron01"])]
    # pushed as cron02: the table lists it under cron02
    pushed_as_cron02 = StatusAnswer(jobs=same.jobs, machine=MACHINE_A, owner="cron02")
    text, _ = fleet({"cron01": pushed_as_cron02, "cron02": pushed_as_cron02}, inventory)
    assert "host cron01: SAME MACHINE as host cron02" in text.stdout


def test_issue24_2_clones_of_one_image_are_two_machines(fleet):
    """Same /etc/machine-id, another boot: `machine` differs, nothing is flagged."""
    text, document = fleet({"cron01": StatusAnswer(jobs=(timer("settle", "*-*-* 04:00:00 UTC"),), machine=MACHINE_A),
                            "cron02": StatusAnswer(jobs=(timer("tick", "Mon,Tue *-*-* 09:00:00 UTC"),),
                                                   machine=MACHINE_B)})
    assert text.exit_code == 0 and "SAME MACHINE" not in text.stdout and "NOTE" not in text.stdout
    assert [h["same_machine_as"] for h in document["hosts"]] == [[], []]


def test_issue24_2_an_unreachable_hosts_jobs_are_listed_as_unknown(fleet):
    """Before: an unreachable host's jobs were missing from the table (one line said the host was)."""
    reason = "cannot connect to 10.0.0.6:22: Connection refused (is sshd running there, and the port right?)"
    text, document = fleet({"cron01": StatusAnswer(jobs=(timer("settle", "*-*-* 04:00:00 UTC"),
                                                         timer("tick", "Mon,Tue *-*-* 09:00:00 UTC")), machine=MACHINE_A),
                            "cron02": RemoteError("cron02", reason)})

    assert text.exit_code == 1
    assert rows(text.stdout)["cron02", "tick"].split()[2:7] == ["?", "?", "?", "unknown", "host"]
    assert rows(text.stdout)["cron02", "tick"].split("  unknown ", 1)[1].strip() == f"host unreachable: {reason}"
    # what cron01 runs and the inventory puts on cron02: whether cron02 runs it too is not known
    assert "(the inventory puts it on cron02, which gave no status: it may run there too)" in \
        rows(text.stdout)["cron01", "tick"]
    assert f"host cron02: UNREACHABLE: {reason}" in text.stdout
    assert text.stderr.strip() == f"deployer: error: host cron02: {reason}"
    assert document["inventory_only"] == [{
        "host": "cron02", "job": "tick", "result": "unknown", "reason": f"host unreachable: {reason}",
        "inventory_schedule": ["Mon,Tue *-*-* 9:00 UTC"], "timezone": "UTC", "expression": "Mon,Tue *-*-* 9:00",
        "alert_late": None, "alert_long": None}]
    assert [r["job"] for r in document["jobs"]] == ["settle", "tick"]  # `jobs`: as before, what hosts reported


@pytest.mark.parametrize("field, value", [("machine", "\x1b]0;pwned\x07" + "a" * 24), ("owner", "cron01\x1b[2J")])
def test_issue24_2_a_machine_or_owner_outside_its_rule_is_refused(fleet, field, value):
    answer = StatusAnswer(jobs=(timer("settle", "*-*-* 04:00:00 UTC"),), **{field: value})
    text, _ = fleet({"cron01": answer, "cron02": StatusAnswer()})
    assert text.exit_code == 1 and "answer is not valid" in text.stderr and "\x1b" not in text.stdout + text.stderr


# --- issue 24 item 7: render --out writes what it counts, per host; render --host ----------------

TWO_HOSTS_ONE_CHANNEL = ("[host:cron01]\naddress = 10.0.0.1\n[host:cron02]\naddress = 10.0.0.2\n"
                         "[alert:ops]\ntype = webhook\nendpoint = http://hook.example/x\n[defaults]\nalert = ops\n"
                         "[job:a]\nschedule = 0 3 * * *\nurl = http://svc/a\nhost = cron01\n"
                         "[job:b]\nschedule = 0 4 * * *\nurl = http://svc/b\nhost = cron02\n")


def test_issue24_7_render_out_counts_the_files_it_wrote_and_each_host_gets_its_own(tmp_path):
    """Before: `wrote 46 unit files` and 35 on disk: the hosts' units of one name overwrote each
    other, leaving cron02's alert unit where cron01's belonged."""
    path, out = tmp_path / "inventory.ini", tmp_path / "preview"
    path.write_text(TWO_HOSTS_ONE_CHANNEL)
    result = CliRunner().invoke(cli.main, ["render", "-i", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert result.output == f"wrote {len(written)} unit files to {out} (cron01, cron02: one directory each)\n"
    for host, job, other in (("cron01", "a", "b"), ("cron02", "b", "a")):
        alert = (out / host / "deployer-alert-ops@.service").read_text()
        other_host = "cron02" if host == "cron01" else "cron01"
        assert f'"--host-name" "{host}"' in alert and f'"--host-name" "{other_host}"' not in alert
        assert (out / host / f"deployer-{job}.timer").is_file() and not (out / host / f"deployer-{other}.timer").exists()


@pytest.mark.parametrize("where", ["after", "before"])
def test_issue24_7_render_host_renders_that_hosts_units_only(tmp_path, where):
    """Before: `No such option: --host`."""
    path = tmp_path / "inventory.ini"
    path.write_text(TWO_HOSTS_ONE_CHANNEL)
    args = ["render", "-i", str(path), "--host", "cron02"] if where == "after" else \
        ["--host", "cron02", "render", "-i", str(path)]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    shown = [line.split()[-1] for line in result.output.splitlines() if line.startswith("# ---- ")]
    assert "/etc/systemd/system/deployer-b.timer" in shown and "/etc/systemd/system/deployer-a.timer" not in shown
    assert '"--host-name" "cron02"' in result.output and '"--host-name" "cron01"' not in result.output
    out = tmp_path / "one"
    result = CliRunner().invoke(cli.main, args + ["--out", str(out)])
    assert result.output == f"wrote {len(list(out.iterdir()))} unit files to {out}\n"
    assert (out / "deployer-b.timer").is_file()


# --- issue 24 item 7: plan and push at scale: the summary first, a line per job, diffs on demand --

from deployer import deploy  # noqa: E402
from tests.test_agent import FakeSystemd  # noqa: E402


def many_jobs(count: int, first: int = 0) -> str:
    return "[host:cron01]\naddress = 10.0.0.1\n[defaults]\nretries = 0\n" + "".join(
        f"[job:j{i:04d}]\nschedule = 0 3 * * *\nurl = http://svc/{i}\n" for i in range(first, count))


@pytest.fixture
def cron01(tmp_path, monkeypatch):
    """One in-process host (the real agent against a temporary root); `run(inventory, *args)`
    runs the CLI against it. -> (run, agent)."""
    agent = remote.LocalAgent("cron01", str(tmp_path / "root"), FakeSystemd())
    monkeypatch.setattr(cli, "_connect", lambda inv, host: agent)
    path = tmp_path / "inventory.ini"

    def run(inventory: str, *args: str, **kw):
        path.write_text(inventory)
        return CliRunner().invoke(cli.main, [*args, "-i", str(path)], **kw)

    return run, agent


def test_issue24_7_plan_of_three_new_jobs_is_a_summary_and_a_line_per_job(cron01):
    """Before: 833 lines of diff with the summary last."""
    run, _ = cron01
    plan = run(many_jobs(3), "plan")
    assert plan.exit_code == 0, plan.output
    lines = plan.stdout.splitlines()
    assert lines[0] == ("host cron01: 3 jobs to add, 0 to change, 0 to remove "
                        "(files: 18 to add, 0 to change, 0 to remove, 0 unchanged)")
    assert lines[1:4] == ["+ job j0000", "+ job j0001", "+ job j0002"]
    assert "+ deployer-jobs.slice" in lines and len(lines) < 20
    assert not [line for line in lines if line.startswith(("@@", "--- ", "+++ ", "+[Unit]"))]

    with_diff = run(many_jobs(3), "plan", "--diff").stdout.splitlines()
    assert with_diff[:len(lines)] == lines, "--diff adds the diffs after the same lines"
    assert "+++ b/etc/systemd/system/deployer-j0000.timer" in with_diff and "+[Timer]" in with_diff


def test_issue24_7_a_changed_and_a_removed_job_are_one_line_each(cron01):
    run, _ = cron01
    run(many_jobs(3), "push")
    changed = many_jobs(2).replace("url = http://svc/1\n", "url = http://svc/1-new\n")
    lines = run(changed, "plan").stdout.splitlines()
    assert lines[0].startswith("host cron01: 0 jobs to add, 1 to change, 1 to remove (files: ")
    assert lines[1:3] == ["~ job j0001 (deployer-j0001.service)", "- job j0002 (not in inventory.ini)"]


def test_issue24_7_push_shows_the_plan_first_and_a_thousand_jobs_in_a_few_lines(cron01):
    """Before: a line per file after the push (2,000 for 1,000 jobs), and nothing before it."""
    run, _ = cron01
    pushed = run(many_jobs(60), "push")
    assert pushed.exit_code == 0, pushed.output
    lines = pushed.stdout.splitlines()
    assert lines[0].startswith("host cron01: 60 jobs to add, 0 to change, 0 to remove (files: 189 to add")
    assert lines[1:cli.PUSH_LISTS + 2] == [f"+ job j{i:04d}" for i in range(cli.PUSH_LISTS)] + [
        "+ ... and 40 more jobs to add (deployer plan lists them all)"]
    assert lines[-1] == "host cron01: pushed: 189 add, 0 change, 0 remove, 0 unchanged"
    assert len(lines) < cli.PUSH_LISTS + 20
    again = run(many_jobs(60), "push")
    assert again.stdout == "host cron01: up to date: 0 add, 0 change, 0 remove, 189 unchanged\n"


def test_issue24_7_push_announces_its_plan_before_it_asks_and_before_it_changes_anything(tmp_path):
    from deployer import inventory

    agent = remote.LocalAgent("cron01", str(tmp_path / "root"), FakeSystemd())
    path = tmp_path / "inventory.ini"
    path.write_text(many_jobs(3))
    deploy.push(inventory.load(str(path)), "cron01", agent, lambda name: agent)
    path.write_text(many_jobs(2))
    events = []

    def announce(plan, state):
        events.append(("announce", deploy.removed_jobs(plan), len(remote.read_state(agent).files)))

    def confirm(jobs):
        events.append(("confirm", jobs, len(remote.read_state(agent).files)))
        return False

    with pytest.raises(DeployerError):
        deploy.push(inventory.load(str(path)), "cron01", agent, lambda name: agent, announce=announce,
                    confirm=confirm)
    installed = len(remote.read_state(agent).files)
    assert events == [("announce", ("j0002",), installed), ("confirm", ("j0002",), installed)]


# --- issue 24 item 7: one time format in every text view: 2026-12-06 11:08:41 UTC ------------------

import re  # noqa: E402

from deployer import report  # noqa: E402
from deployer.host.journal import format_entry  # noqa: E402
from deployer.contract.protocol import RunInfo  # noqa: E402

CLOCK = re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (UTC|CST|CET|CEST|[+-]\d\d)\b")
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def test_issue24_7_schedule_and_validate_print_the_one_format_and_json_keeps_iso(tmp_path):
    """Before: `2026-12-07T04:00:00+08:00` in validate and schedule, `04:00:00` (no date, no
    zone) in history's STARTED, `2026-12-06T04:00:00+00:00` in logs, `HH:MM:SS CET` in move."""
    text = CliRunner().invoke(cli.main, ["schedule", "0 4 * * *", "--timezone", "Asia/Shanghai", "--count", "2"])
    assert [line.strip() for line in text.output.splitlines()[1:]] == [
        line for line in (m.group(0) for m in CLOCK.finditer(text.output))]
    assert all(line.endswith("04:00:00 CST") for line in text.output.splitlines()[1:]) and not ISO.search(text.output)
    document = json.loads(CliRunner().invoke(cli.main, ["schedule", "0 4 * * *", "--timezone", "Asia/Shanghai",
                                                        "--json"]).output)
    assert all(moment.endswith("T04:00:00+08:00") for moment in document["next"])

    path = tmp_path / "inventory.ini"
    path.write_text("[host:cron01]\naddress = 10.0.0.1\n[job:settle]\nschedule = 0 4 * * *\n"
                    "timezone = Europe/Berlin\nurl = http://svc/s\n")
    validated = CliRunner().invoke(cli.main, ["validate", "-i", str(path)]).output
    next_line = next(line for line in validated.splitlines() if "next:" in line)
    assert len(CLOCK.findall(next_line)) == 2 and " 04:00:00 CE" in next_line and not ISO.search(validated)


def test_issue24_7_history_logs_and_status_print_the_one_format(fleet):
    run = RunInfo(run="0b1d", started=1796529600.25, result="ok", slot=1796529600, duration=0.4, attempts=1,
                  key="settle/2026-12-06T04:00:00Z")
    document = report.history_document("cron01", "settle", "Asia/Shanghai", 1796529000.0, 1796529700.0, [run],
                                       [1796529600.0], 1796529650.0)
    lines = report.history_text(document).splitlines()
    assert lines[1].split("  ")[:2] == ["2026-12-06 12:00:00 CST", "2026-12-06 12:00:00 CST"]
    assert " since 2026-12-06 11:50:00 CST: 1 runs" in lines[-1] and not ISO.search("\n".join(lines))
    assert document["runs"][0]["started"] == "2026-12-06T12:00:00.250+08:00", "--json keeps ISO 8601"

    entry = {"__REALTIME_TIMESTAMP": "1796529600000000", "SYSLOG_IDENTIFIER": "deployer-settle", "_PID": "812",
             "MESSAGE": "POST http://svc/s -> 200"}
    assert format_entry(entry) == "2026-12-06 04:00:00 UTC deployer-settle[812]: POST http://svc/s -> 200"

    text, document = fleet({"cron01": StatusAnswer(jobs=(timer("settle", "*-*-* 04:00:00 UTC"),), machine=MACHINE_A),
                            "cron02": StatusAnswer(jobs=(timer("tick", "Mon,Tue *-*-* 09:00:00 UTC"),),
                                                   machine=MACHINE_B)})
    assert "2026-12-07 03:00:00 UTC (" in rows(text.stdout)["cron01", "settle"] and not ISO.search(text.stdout)
    assert document["jobs"][0]["next"] == "2026-12-07T03:00:00+00:00"


# --- issue 24 item 10: colour on a terminal, never elsewhere, never with NO_COLOR ----------------

from click import unstyle  # noqa: E402

from deployer import colour  # noqa: E402


@pytest.mark.parametrize("tty, no_color, coloured", [
    pytest.param(True, None, True, id="terminal"),
    pytest.param(True, "1", False, id="terminal-NO_COLOR"),
    pytest.param(False, None, False, id="pipe"),
])
def test_issue24_10_plan_is_coloured_on_a_terminal_only(cron01, monkeypatch, tty, no_color, coloured):
    """CliRunner's color=True is click's terminal: it keeps the codes click.echo strips on a pipe."""
    run, _ = cron01
    if no_color:
        monkeypatch.setenv("NO_COLOR", no_color)
    plan = run(many_jobs(1), "plan", "--diff", color=tty)
    assert ("\x1b[32m+ job j0000\x1b[0m" in plan.stdout) == coloured
    assert ("\x1b[32m+[Timer]\x1b[0m" in plan.stdout) == coloured
    assert ("\x1b[" in plan.stdout) == coloured
    assert "+ job j0000" in unstyle(plan.stdout)
    pushed = run(many_jobs(1), "push", color=tty)
    assert ("host cron01: \x1b[32mpushed\x1b[0m: " in pushed.stdout) == coloured


def test_issue24_10_result_words_are_coloured_and_the_columns_stay_aligned():
    runs = [RunInfo(run="a1", started=1796529600.0, result="ok", slot=1796529600, duration=0.4, attempts=1),
            RunInfo(run="a2", started=1796533200.0, result="failed", reason="status 500, expected 2xx",
                    slot=1796533200, duration=0.5, attempts=3)]
    document = report.history_document("cron01", "settle", "UTC", 1796529000.0, 1796540000.0, runs, None, None)
    plain, painted = report.history_text(document), report.history_text(document, colour.result)
    assert unstyle(painted) == plain
    ok_row, failed_row = painted.splitlines()[1:3]
    assert "\x1b[32mok\x1b[0m" in ok_row and "\x1b[31m\x1b[1mfailed\x1b[0m" in failed_row
    assert colour.result("paused (last: ok)").startswith("\x1b[33mpaused\x1b[0m")
    assert colour.result("up to date") == "\x1b[32mup to date\x1b[0m"
    assert colour.result("never") == "never"


def test_issue24_10_status_colours_its_result_column(fleet, monkeypatch):
    answers = {"cron01": StatusAnswer(jobs=(timer("settle", "*-*-* 04:00:00 UTC"),), machine=MACHINE_A),
               "cron02": StatusAnswer(jobs=(timer("tick", "Mon,Tue *-*-* 09:00:00 UTC", active=False),),
                                      machine=MACHINE_B)}
    _, document = fleet(answers)
    now = report.now_utc()
    painted = report.status_text(document, now, colour.result)
    assert unstyle(painted) == report.status_text(document, now)
    monkeypatch.setenv("NO_COLOR", "1")
    assert report.status_text(document, now, colour.result) == report.status_text(document, now)


# --- issue 24 item 10: shell completion of job and host names, from the inventory -----------------

from click.shell_completion import ShellComplete  # noqa: E402

COMPLETED = ("[host:cron01]\naddress = 10.0.0.1\n[host:cron02]\naddress = 10.0.0.2\n"
             "[alert:ops]\ntype = dingtalk\ntoken = ${NOT_SET_WHILE_COMPLETING}\n"
             "[job:settle]\nschedule = 0 3 * * *\nurl = http://svc/s\nhost = cron01\n"
             "[job:settle-daily]\nschedule = 0 4 * * *\nurl = http://svc/d\nhost = cron02\n"
             "[job:report]\nschedule = 0 5 * * *\nurl = http://svc/r\nhost = cron02\n")


def completions(args: list[str], incomplete: str) -> list[str]:
    return [item.value for item in ShellComplete(cli.main, {}, "deployer", "_DEPLOYER_COMPLETE")
            .get_completions(args, incomplete)]


@pytest.mark.parametrize("command", ["run", "history", "logs", "pause", "resume"])
def test_issue24_10_job_names_complete_from_the_inventory(tmp_path, command):
    """An unset ${VAR} (a token only push needs) does not stop completion."""
    path = tmp_path / "prod.ini"
    path.write_text(COMPLETED)
    assert completions([command, "-i", str(path)], "se") == ["settle", "settle-daily"]
    assert completions(["-i", str(path), command], "") == ["settle", "settle-daily", "report"]


@pytest.mark.parametrize("args", [["status", "--host"], ["push", "--host"], ["--host"], ["move", "--from"],
                                  ["move", "--to"], ["release", "--host"], ["render", "--host"]])
def test_issue24_10_host_names_complete_from_the_inventory(tmp_path, monkeypatch, args):
    path = tmp_path / "inventory.ini"
    path.write_text(COMPLETED)
    monkeypatch.chdir(tmp_path)  # the default inventory
    assert completions(args, "cron") == ["cron01", "cron02"]
    assert completions(args, "x") == []


def test_issue24_10_completion_without_an_inventory_offers_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert completions(["logs"], "") == [] and completions(["status", "--host"], "") == []


def test_issue24_10_the_readme_line_prints_a_bash_completion_script():
    """README: eval "$(_DEPLOYER_COMPLETE=bash_source deployer)"."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert 'eval "$(_DEPLOYER_COMPLETE=bash_source deployer)"' in readme
    script = CliRunner().invoke(cli.main, [], prog_name="deployer", env={"_DEPLOYER_COMPLETE": "bash_source"})
    assert script.exit_code == 0 and "complete -o nosort -F _deployer_completion deployer" in script.output


# --- issue 24 item 10: deployer init -------------------------------------------------------------

@pytest.mark.parametrize("args, host, address", [
    pytest.param([], "cron01", "10.0.0.5", id="defaults"),
    pytest.param(["--host", "batch-01", "--address", "batch01.internal.example"], "batch-01",
                 "batch01.internal.example", id="named"),
])
def test_issue24_10_init_writes_a_commented_inventory_that_validates(tmp_path, monkeypatch, args, host, address):
    monkeypatch.chdir(tmp_path)
    written = CliRunner().invoke(cli.main, ["init", *args])
    assert written.exit_code == 0, written.output
    assert written.output == (f"wrote inventory.ini: host {host} ({address}) and job example; edit it, then: "
                              "deployer validate -i inventory.ini\n")
    text = (tmp_path / "inventory.ini").read_text()
    assert f"[host:{host}]\n" in text and f"address = {address}\n" in text and "[job:example]\n" in text
    assert sum(line.startswith("#") for line in text.splitlines()) >= 15, "a starter explains itself"
    validated = CliRunner().invoke(cli.main, ["validate"])
    assert validated.exit_code == 0, validated.output
    assert validated.output.splitlines()[-1] == "inventory.ini: ok (1 hosts, 0 alerts, 1 jobs)"
    assert f"example  (host {host})  *-*-* *:00:00 UTC" in validated.output


def test_issue24_10_init_never_overwrites_an_inventory(tmp_path):
    path = tmp_path / "prod.ini"
    path.write_text("[host:prod]\naddress = 10.9.9.9\n")
    refused = CliRunner().invoke(cli.main, ["init", "-i", str(path)])
    assert refused.exit_code == 1
    assert refused.stderr == f"deployer: error: {path} already exists; not overwritten (give another file with -i FILE)\n"
    assert path.read_text() == "[host:prod]\naddress = 10.9.9.9\n"


@pytest.mark.parametrize("args", [["--host", "Cron_01"], ["--address", "10.0.0.5 ; rm"]])
def test_issue24_10_init_refuses_a_name_or_address_the_inventory_would_refuse(tmp_path, args):
    path = tmp_path / "inventory.ini"
    refused = CliRunner().invoke(cli.main, ["init", "-i", str(path), *args])
    assert refused.exit_code == 1 and refused.stderr.startswith("deployer: error: --") and not path.exists()


def test_validate_shows_when_a_chained_job_runs_and_a_bad_chain_is_one_line_exit_1(tmp_path):
    """Issue 23 item 8: `after` / `on_failure_run` in validate; an unknown job is file, section, key."""
    path = tmp_path / "inventory.ini"
    path.write_text("[host:cron01]\naddress = 10.0.0.1\n[job:extract]\nschedule = 0 2 * * *\nurl = http://x/\n"
                    "on_failure_run = cleanup\n[job:load]\nafter = extract\nurl = http://y/\n"
                    "[job:cleanup]\nurl = http://z/\n")
    shown = CliRunner().invoke(cli.main, ["validate", "-i", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "load  (host cron01)  after extract succeeded\n" in shown.output
    assert "cleanup  (host cron01)  after extract failed\n" in shown.output
    path.write_text(path.read_text().replace("after = extract", "after = extrct"))
    refused = CliRunner().invoke(cli.main, ["validate", "-i", str(path)])
    assert refused.exit_code == 1
    assert refused.output == f"deployer: error: {path}:8: [job:load] after: no [job:extrct] (did you mean 'extract'?)\n"


# --- issue 20: every host command in-process, against the real agent (LocalAgent + FakeSystemd) ---
# The e2e suite proves them on real hosts; these decide their output and effect in milliseconds.

import os  # noqa: E402
from pathlib import Path  # noqa: E402

from deployer.contract import paths  # noqa: E402
from deployer.host import agent
from tests.test_agent import journal_socket  # noqa: E402

HOSTS_WITH_A_CHANNEL = ("[host:cron01]\naddress = 10.0.0.1\n[host:cron02]\naddress = 10.0.0.2\n"
             "[alert:ops]\ntype = dingtalk\ntoken = t0ken\n[defaults]\nretries = 0\nalert = ops\n")


def two_jobs_on(host: str) -> str:
    return HOSTS_WITH_A_CHANNEL + "".join(f"[job:{name}]\nschedule = 0 3 * * *\nurl = http://svc/{name}\nhost = {host}\n"
                               for name in ("settle", "report"))


class Journald:
    """journald for an in-process host: what its agent sends to the journal socket is what its
    journalctl answers (with the _UID journald adds: the agent's, root)."""

    def __init__(self, root: Path, systemd):
        self.sink, self.systemd = journal_socket(root), systemd
        self.sink.settimeout(0)
        systemd.journal = []

    def collect(self) -> None:
        while True:
            try:
                datagram = self.sink.recv(65536)
            except BlockingIOError:
                return
            fields = dict(line.partition("=")[::2] for line in datagram.decode().splitlines())
            self.systemd.journal.append(dict(fields, _UID="0", __CURSOR=f"c{len(self.systemd.journal)}"))


@pytest.fixture
def fleet_in_process(tmp_path, monkeypatch):
    """Two in-process hosts; `run(inventory, *args)` runs the CLI against them -> (run, agents, journals)."""
    agents = {name: remote.LocalAgent(name, str(tmp_path / name), FakeSystemd()) for name in ("cron01", "cron02")}
    journals = {name: Journald(tmp_path / name, agent.systemd) for name, agent in agents.items()}
    monkeypatch.setattr(cli, "_connect", lambda inv, host: agents[host])
    path = tmp_path / "inventory.ini"

    def run(inventory: str, *args: str):
        path.write_text(inventory)
        result = CliRunner().invoke(cli.main, [*args, "-i", str(path)])
        for journal in journals.values():
            journal.collect()
        return result

    return run, agents, journals


def installed_jobs(agent) -> set:
    return {paths.job_of_unit(p.rsplit("/", 1)[1]) for p in remote.read_state(agent).files if p.endswith(".timer")
            and "/deployer-" in p and paths.job_of_unit(p.rsplit("/", 1)[1])}


def test_issue20_pause_and_resume_run_in_process_and_stop_and_start_the_timer(fleet_in_process):
    run, agents, _ = fleet_in_process
    assert run(two_jobs_on("cron01"), "push", "--host", "cron01").exit_code == 0
    systemd = agents["cron01"].systemd
    systemd.calls.clear()

    paused = run(two_jobs_on("cron01"), "pause", "settle")
    assert (paused.exit_code, paused.output) == (0, "job settle paused on cron01\n")
    assert remote.read_state(agents["cron01"]).paused == {"deployer-settle.timer"}
    assert ("disable", "--now", "deployer-settle.timer") in systemd.systemctl_calls()
    assert "deployer-settle.timer" in systemd.stopped

    resumed = run(two_jobs_on("cron01"), "resume", "settle")
    assert resumed.exit_code == 0 and resumed.output.startswith("job settle resumed on cron01")
    assert remote.read_state(agents["cron01"]).paused == set()
    assert "deployer-settle.timer" not in systemd.stopped


def test_issue20_release_in_process_says_not_held_then_releases_a_hold(fleet_in_process):
    run, agents, _ = fleet_in_process
    assert run(two_jobs_on("cron01"), "push", "--host", "cron01").exit_code == 0
    quiet = run(two_jobs_on("cron01"), "release", "--host", "cron01")
    assert (quiet.exit_code, quiet.output) == (0, "host cron01: not held; nothing to release\n")

    layout = agents["cron01"].layout
    agent.renew_lease(300.0, layout, now=1000.0)
    agent.hold_at_boot(layout, FakeSystemd(), now=1000.0 + 7980.0)  # back after 2h13m: its lease ran out
    held = run(two_jobs_on("cron01"), "release", "--host", "cron01")
    assert held.exit_code == 0, held.output
    assert held.output.startswith("host cron01: released (") and held.output.endswith("; 2 job timers started\n")
    assert "2h13m" in held.output
    assert not os.path.exists(layout.held)


def test_issue20_move_in_process_installs_on_the_target_then_removes_from_the_source(fleet_in_process):
    run, agents, _ = fleet_in_process
    assert run(two_jobs_on("cron01"), "push", "--host", "cron01").exit_code == 0
    assert installed_jobs(agents["cron01"]) == {"settle", "report"}

    moved = run(two_jobs_on("cron02"), "move", "--from", "cron01", "--to", "cron02")
    assert moved.exit_code == 0, moved.output
    assert moved.output.splitlines()[0] == "moved 2 jobs from cron01 to cron02: report, settle"
    assert installed_jobs(agents["cron02"]) == {"settle", "report"}
    assert installed_jobs(agents["cron01"]) == set()
    handoff = [c for c in agents["cron01"].systemd.systemctl_calls() if c[:2] == ("disable", "--now")]
    assert handoff and set(handoff[0][2:]) == {"deployer-settle.timer", "deployer-report.timer"}



def test_issue20_move_json_in_process_names_the_jobs_and_says_the_source_answered(fleet_in_process):
    run, agents, _ = fleet_in_process
    assert run(two_jobs_on("cron01"), "push", "--host", "cron01").exit_code == 0
    moved = run(two_jobs_on("cron02"), "move", "--from", "cron01", "--to", "cron02", "--json")
    document = json.loads(moved.stdout)
    assert (document["moved"], document["from"], document["to"]) == (["report", "settle"], "cron01", "cron02")
    assert (document["source_unreachable"], document["forced"]) == (False, False)
    assert installed_jobs(agents["cron02"]) == {"settle", "report"} and not installed_jobs(agents["cron01"])


def test_issue20_audit_in_process_reads_back_what_the_agent_recorded(fleet_in_process):
    run, agents, journals = fleet_in_process
    assert run(two_jobs_on("cron01"), "push", "--host", "cron01").exit_code == 0
    assert run(two_jobs_on("cron01"), "pause", "settle").exit_code == 0

    trail = json.loads(run(two_jobs_on("cron01"), "audit", "--host", "cron01", "--json").output)
    assert [(e["action"], e["target"], e["outcome"]) for e in trail["entries"]] == [
        ("push", None, "ok"), ("pause", "settle", "ok")]
    text = run(two_jobs_on("cron01"), "audit", "--host", "cron01").output
    assert " push " in text and " pause " in text and "settle" in text


def test_issue20_alert_test_in_process_reports_what_the_channel_answered(fleet_in_process):
    """The alert unit's answer as its program writes it to the journal (a recorded entry)."""
    run, agents, _ = fleet_in_process
    assert run(two_jobs_on("cron01"), "push", "--host", "cron01").exit_code == 0
    systemd = agents["cron01"].systemd
    systemd.journal = [{"__CURSOR": "c1", "_UID": "61900", "MESSAGE": "test message sent: HTTP 200, errcode 0",
                        "DEPLOYER_ALERT_TEST": "ops", "DEPLOYER_ALERT_ACCEPTED": "y",
                        "DEPLOYER_ALERT_HTTP_STATUS": "200", "DEPLOYER_ALERT_ANSWER": "errcode 0: ok"}]
    tested = run(two_jobs_on("cron01"), "alert", "test", "ops")
    assert tested.exit_code == 0, tested.output
    assert "ops" in tested.output and "200" in tested.output and "errcode 0: ok" in tested.output
    assert ("start", paths.alert_test_unit("ops")) in systemd.systemctl_calls()

    systemd.journal = [dict(systemd.journal[0], _UID="1000")]  # a local user's forgery counts for nothing
    forged = run(two_jobs_on("cron01"), "alert", "test", "ops")
    assert forged.exit_code == 1 and "not sent" in forged.output


# --- history: the slots counted while the hosts answer ------------------------------------------

from deployer.inventory import parse as parse_inventory  # noqa: E402


def _job(schedule: str, timeout: str = "60s"):
    source = (f"[host:cron01]\naddress = 127.0.0.1\n\n[job:settle]\nschedule = {schedule}\ntimeout = {timeout}\n"
              "url = http://127.0.0.1/settle\n")
    [job] = parse_inventory(source, "inventory.ini", {}).jobs
    return job


@pytest.mark.parametrize("schedule", ["0 2 * * *", "*/5 * * * *", "@reboot", "@hourly"])
@pytest.mark.parametrize("installed_ago, host_ahead", [(7 * 86400, 0.3), (3600, 30.0), (200, 0.3), (40, 0.3),
                                                        (86400, 90.0), (86400, -20.0)])
def test_history_counts_the_slots_of_the_window_the_answer_sets_from_the_ones_counted_meanwhile(
        monkeypatch, schedule, installed_ago, host_ahead):
    now = 1796663700.25 - 5  # a slot of */5 five seconds on: in the window a host 90 s ahead adds
    start = now - 7 * 86400
    job = _job(schedule)
    counted = cli._slots(job, start, now + 60)
    installed, until = now - installed_ago, now + host_ahead
    counts = []
    real = cli._slots
    monkeypatch.setattr(cli, "_slots", lambda *args: counts.append(args) or real(*args))
    assert cli._slots_within(counted, job, max(start, installed), until) == real(job, max(start, installed), until)
    assert len(counts) == (host_ahead > 60 and schedule != "@reboot")  # counted again only when it must be


@pytest.mark.parametrize("limit", [500, 2000])
def test_a_window_too_dense_to_count_whole_is_cut_where_a_count_of_its_own_would_cut_it(monkeypatch, limit):
    monkeypatch.setattr(cli, "MAX_SLOTS", limit)
    now = 1796663730.25
    job = _job("*/1 * * * *", timeout="10s")  # 1,440 a day: a limit of 500 comes first, one of 2,000 not
    counted = cli._slots(job, now - 86400, now + 60)
    for installed in (now - 86400, now - 40000, now - 20000):
        within = cli._slots_within(counted, job, installed, now + 1)
        assert within == cli._slots(job, installed, now + 1)
    assert len(cli._slots_within(counted, job, now - 86400, now + 1)[0]) == min(limit, 1440)
