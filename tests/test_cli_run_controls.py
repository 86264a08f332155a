"""`run`, `stop` and `history` as an operator meets them (issue 24 item 4), in-process: the
agents answer through the real protocol encoding and answer checks (the host side of each is
proven end to end in tests/e2e/test_run_controls.py)."""
import json
import os
import signal

import pytest
from click.testing import CliRunner

from deployer import cli, remote
from deployer.errors import RemoteError
from deployer.contract import protocol
from deployer.contract.protocol import HistoryAnswer, RunInfo, StopAnswer
from tests.test_cli import EVIL, RAW

NOW = 1796529600.0
FLEET = ("[host:cron01]\naddress = 10.0.0.5\n[host:cron02]\naddress = 10.0.0.6\n[host:cron03]\naddress = 10.0.0.7\n"
         "[job:settle]\nhost = cron02\nschedule = 0 4 * * *\nurl = http://svc/settle\n"
         "[job:batch]\nhost = cron02\nschedule = 0 5 * * *\nurl = http://svc/batch?n=${{n}}\nparams = n=1\n")


CTRL_C = object()


class AnsweringAgent(remote.Agent):
    """Answers every request with the answer a test gave; `stream` lines go to `output` first."""

    def __init__(self, host: str, answer, stream=(), then=None):
        self.host, self.answer, self.stream, self.then = host, answer, stream, then
        self.asked: list = []

    def call(self, request, progress=None, output=None, stop=None):
        self.asked.append(request)
        for line in self.stream:
            if output is not None:
                output(line)
        if self.then is CTRL_C:  # the operator's Ctrl-C, as the SSH read loop sees it
            os.kill(os.getpid(), signal.SIGINT)
            assert stop is not None and stop(), "SIGINT did not reach the read as its stop flag"
            raise remote.Stopped()
        if self.then is not None:
            raise self.then
        raw = json.dumps({"version": protocol.PROTOCOL_VERSION, "ok": True,
                          "body": protocol.to_json(self.answer)}).encode()
        return self._answer(request, raw)


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """Run a command over hosts whose agents a test gives: name -> agent, or an error (unreachable)."""
    path = tmp_path / "inventory.ini"
    path.write_text(FLEET)

    def run(agents: dict, *args: str):
        asked: list[str] = []

        def connect(inv, name):
            asked.append(name)
            if isinstance(agents[name], Exception):
                raise agents[name]
            return agents[name]

        monkeypatch.setattr(cli, "_connect", connect)
        result = CliRunner().invoke(cli.main, [*args, "-i", str(path)])
        return result, sorted(asked)

    return run


def ran(run_id: str, started: float, reason: str = "status 200") -> RunInfo:
    return RunInfo(run_id, started, "ok", reason, slot=int(started), duration=0.5, attempts=1, http_status=200)


def test_history_reads_every_host_and_says_where_each_run_ran(fleet):
    """Before: the runs on the job's old host (it moved from cron01 to cron02) were out of reach."""
    agents = {"cron01": AnsweringAgent("cron01", HistoryAnswer(runs=(ran("old", NOW - 7200),), now=NOW)),
              "cron02": AnsweringAgent("cron02", HistoryAnswer(runs=(ran("new", NOW - 3600),), now=NOW)),
              "cron03": AnsweringAgent("cron03", HistoryAnswer(now=NOW))}
    result, asked = fleet(agents, "history", "settle")
    assert result.exit_code == 0, result.output
    assert asked == ["cron01", "cron02", "cron03"]
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["HOST", "SLOT"]
    assert [line.split()[0] for line in lines[1:3]] == ["cron01", "cron02"]  # by start time
    assert lines[-1].startswith("settle on cron02 and cron01 since ")  # cron03 ran none: not named
    document = json.loads(fleet(agents, "history", "settle", "--json")[0].stdout)
    assert [(r["run"], r["host"]) for r in document["runs"]] == [("old", "cron01"), ("new", "cron02")]
    assert (document["host"], document["hosts"], document["unread_hosts"]) == ("cron02", ["cron02", "cron01"], [])


def test_another_host_that_does_not_answer_is_a_warning_the_jobs_own_is_an_error(fleet):
    down = RemoteError("cron01", "cannot connect to 10.0.0.5: Connection refused")
    agents = {"cron01": down,
              "cron02": AnsweringAgent("cron02", HistoryAnswer(runs=(ran("new", NOW - 3600),), now=NOW)),
              "cron03": AnsweringAgent("cron03", HistoryAnswer(now=NOW))}
    result, _ = fleet(agents, "history", "settle")
    assert result.exit_code == 0
    assert result.stderr == ("deployer: warning: host cron01: cannot connect to 10.0.0.5: Connection refused; "
                             "its runs of settle, if any, are not shown\n")
    assert result.stdout.splitlines()[0].split()[0] == "SLOT"  # one host's runs: the table as before
    agents["cron02"] = RemoteError("cron02", "cannot connect to 10.0.0.6: Connection refused")
    result, _ = fleet(agents, "history", "settle")
    assert result.exit_code == 1 and "deployer: error: host cron02: cannot connect" in result.stderr


def test_history_host_reads_only_that_host_even_one_the_job_left(fleet):
    """Before: `--host cron01` was refused (`runs on host cron02, not cron01`)."""
    agents = {"cron01": AnsweringAgent("cron01", HistoryAnswer(runs=(ran("old", NOW - 7200),), now=NOW))}
    result, asked = fleet(agents, "history", "settle", "--host", "cron01")
    assert result.exit_code == 0, result.output
    assert asked == ["cron01"]
    assert result.stdout.splitlines()[-1].startswith("settle on cron01 since ")
    assert "missed slots: not known" in result.stdout  # its timer is not there any more


def test_ctrl_c_during_run_says_the_run_goes_on_and_how_to_stop_it(fleet):
    """Before: click's bare `Aborted!`, as if the run had ended with the command."""
    waiting = "attempt 1/1: POST http://svc/settle: waiting for the answer (30 s)"
    agent = AnsweringAgent("cron02", None, stream=[waiting], then=CTRL_C)
    result, _ = fleet({"cron02": agent}, "run", "settle")
    assert result.exit_code == 1
    assert "waiting for the answer (30 s)" in result.stdout
    assert result.stderr.strip() == ("deployer: interrupted: the run goes on on cron02; stop it with: "
                                     "deployer stop settle")
    quiet = AnsweringAgent("cron02", None, then=CTRL_C)
    result, _ = fleet({"cron02": quiet}, "run", "settle", "--json")
    assert result.stderr.strip() == ("deployer: interrupted: the run, if it started, goes on on cron02; stop it "
                                     "with: deployer stop settle")


@pytest.mark.parametrize("answer, said", [
    pytest.param(StopAnswer(), "job settle is not running on cron02; nothing to stop", id="nothing-runs"),
    pytest.param(StopAnswer(stopped=True, started="2026-12-06T04:00:00+00:00",
                            run=RunInfo("f00d", NOW, "failed", "interrupted: SIGTERM", attempts=1)),
                 "job settle stopped on cron02 (running since 2026-12-06 04:00:00 UTC); recorded as failed: "
                 "interrupted: SIGTERM", id="stopped"),
])
def test_stop_says_what_it_did(fleet, answer, said):
    agent = AnsweringAgent("cron02", answer)
    result, _ = fleet({"cron02": agent}, "stop", "settle")
    assert (result.exit_code, result.stdout.strip()) == (0, said)
    assert agent.asked == [protocol.StopRequest("settle")]


def test_stop_prints_no_control_character_a_host_sends(fleet):
    agent = AnsweringAgent("cron02", StopAnswer(stopped=True, run=RunInfo("f00d", NOW, "failed", EVIL)))
    result, _ = fleet({"cron02": agent}, "stop", "settle")
    assert result.exit_code == 0 and "\\e[2J" in result.stdout
    assert not [c for c in RAW if c in result.stdout]


# -- run --set (issue 23 item 7) ------------------------------------------------------------------

@pytest.mark.parametrize("args, said", [
    pytest.param(("batch", "--set", "m=2"), "deployer: error: job batch: --set m: not a parameter of the job (its "
                 "params: n)", id="undeclared"),
    pytest.param(("settle", "--set", "n=2"), "deployer: error: job settle: --set n: not a parameter of the job (its "
                 "params: none; declare them with params = NAME=DEFAULT)", id="job-without-params"),
    pytest.param(("batch", "--set", "n"), "deployer: error: job batch: --set n: write NAME=VALUE", id="no-value"),
    pytest.param(("batch", "--set", "n=a\x1bb"), "deployer: error: job batch: --set n: contains a control character",
                 id="control-character"),
])
def test_a_set_the_job_does_not_declare_is_one_line_and_asks_nothing(fleet, args, said):
    agent = AnsweringAgent("cron02", None)
    result, connected = fleet({"cron02": agent}, "run", *args)
    assert result.exit_code == 1
    assert result.stderr.strip() == said
    assert connected == [] and agent.asked == []  # refused before connecting


def test_run_set_sends_the_values_to_the_host(fleet):
    agent = AnsweringAgent("cron02", protocol.RunAnswer(ok=True))
    result, _ = fleet({"cron02": agent}, "run", "batch", "--set", "n=42")
    assert result.exit_code == 0, result.output
    assert agent.asked[0].params == (("n", "42"),)
