"""The agent's side of `deployer stop` and of a `deployer run` that finds the job running (issue 24
item 4), in-process against a temporary root and the fake Systemd of test_agent (recorded
`systemctl show` outputs). tests/e2e/test_run_controls.py runs the same on a real host."""
from __future__ import annotations

import io
import json
import os
import time

import pytest

from deployer.errors import AgentRefused
from deployer.contract import paths, protocol
from deployer.contract.protocol import ApplyRequest, RunRequest, StopRequest
from deployer.host.state import write_atomically
from tests.test_agent import U, files, host, record_entry, unit, write  # noqa: F401 - host: the fixture

SERVICE = "deployer-settle.service"
STARTED = "Sun 2026-12-06 04:00:00 UTC"


def installed(host, **shown: str) -> None:  # noqa: F811
    host.call(ApplyRequest(write=(write(f"{U}/{SERVICE}", unit("settle", "[Service]\n")),), expect=files(host)))
    host.systemd.shown[SERVICE] = {"Id": SERVICE, "Result": "success", "ExecMainStatus": "0", **shown}


def test_stop_with_nothing_running_stops_nothing(host):  # noqa: F811
    installed(host, ActiveState="inactive", InvocationID="")
    assert host.call(StopRequest("settle")) == protocol.StopAnswer(stopped=False)
    assert not [c for c in host.systemd.calls if c[:2] == ("systemctl", "stop")]


def test_stop_names_the_run_to_its_trigger_then_stops_it_and_answers_its_record(host):  # noqa: F811
    installed(host, ActiveState="activating", InvocationID="inv1", ExecMainStartTimestamp=STARTED)
    marker = os.path.join(host.layout.backfill_dir, paths.job_unit("settle", "stop"))
    seen_at_stop = []
    run = host.systemd.run

    def systemd_run(args):
        if tuple(args) == ("systemctl", "stop", SERVICE):
            with open(marker) as note:
                seen_at_stop.append(note.read())
        return run(args)

    host.systemd.run = systemd_run
    host.systemd.journal = [dict(record_entry("settle", "inv1", time.time(), result="failed",
                                              reason="stopped: `deployer stop` ended the run"),
                                 _SYSTEMD_INVOCATION_ID="inv1")]
    answer = host.call(StopRequest("settle"))
    assert seen_at_stop == ["inv1"] and not os.path.exists(marker)
    assert (answer.stopped, answer.started) == (True, "2026-12-06T04:00:00+00:00")
    assert (answer.run.run, answer.run.reason) == ("inv1", "stopped: `deployer stop` ended the run")


def test_a_job_not_installed_cannot_be_stopped(host):  # noqa: F811
    with pytest.raises(AgentRefused) as refused:
        host.call(StopRequest("settle"))
    assert refused.value.code == protocol.NOT_INSTALLED


def test_a_run_asked_while_the_job_runs_says_it_follows_that_run(host):  # noqa: F811
    installed(host, ActiveState="activating", InvocationID="inv1", ExecMainStartTimestamp=STARTED)
    lines = [dict(record_entry("settle", "inv1", time.time() + 1), _SYSTEMD_INVOCATION_ID="inv1")]

    class Follower:
        stdout = io.BytesIO(b"".join(json.dumps(e).encode() + b"\n" for e in lines))

        def kill(self):
            pass

        def wait(self):
            pass

    host.systemd.follow = lambda args: Follower()
    host.systemd.journal = lines
    streamed: list[str] = []
    answer = host.call(RunRequest("settle"), output=streamed.append)
    assert streamed[0] == ("deployer: settle is already running on cron01 (since 2026-12-06 04:00:00 UTC): "
                           "following that run")
    assert answer.attached == "2026-12-06T04:00:00+00:00" and answer.ok and answer.run.run == "inv1"


def test_a_run_that_joins_one_going_leaves_that_runs_own_request_in_place(host):  # noqa: F811
    """Another `deployer run` started the run going, whose trigger may not have read its request
    yet: replaced by this one, made after that run began, it would have taken itself for the
    timer's run (slot.asked_start) and named the timer's last slot (a helper's review)."""
    installed(host, ActiveState="activating", InvocationID="inv1", ExecMainStartTimestamp=STARTED)
    theirs = ask_path(host)
    os.makedirs(os.path.dirname(theirs), exist_ok=True)
    with open(theirs, "w") as request:
        request.write('{"manual": true, "stamp": null, "by": "alice@laptop", "asked_boot": 1.0}')
    seen_at_start = []
    run = host.systemd.run

    def systemd_run(args):
        if tuple(args) == ("systemctl", "start", SERVICE):
            with open(theirs) as request:
                seen_at_start.append(json.load(request))
        return run(args)

    host.systemd.run = systemd_run
    host.systemd.follow = lambda args: _Follower([])
    host.call(RunRequest("settle"), output=lambda line: None)
    assert seen_at_start == [{"manual": True, "stamp": None, "by": "alice@laptop", "asked_boot": 1.0}]
    assert os.path.exists(theirs), "that run's own agent removes it when its run ends"


def test_a_run_started_here_is_asked_for_on_the_boot_clock_and_its_own_record_is_its_answer(host):  # noqa: F811
    """The request says when it was made on CLOCK_BOOTTIME (slot.asked_start compares a process's
    start with it), and the answer is the run's own record, not a slot it recorded skipped after
    it (those come last): read as "not the manual run asked for", they had said it joined the timer's."""
    installed(host, ActiveState="inactive", InvocationID="inv1")
    manual = dict(record_entry("settle", "inv1", time.time() + 1), _SYSTEMD_INVOCATION_ID="inv1",
                  DEPLOYER_KEY="settle/manual-inv1")
    skipped = dict(record_entry("settle", "inv1-skip", time.time() + 2, result="skipped",
                                reason="skipped: previous run still running"), _SYSTEMD_INVOCATION_ID="inv1",
                   DEPLOYER_KEY="settle/2026-12-06T04:01:00Z")
    requests = requests_at_start(host)
    host.systemd.follow = lambda args: _Follower([manual, skipped])
    host.systemd.journal = [manual, skipped]
    streamed: list[str] = []
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    answer = host.call(RunRequest("settle"), output=streamed.append)
    assert before <= requests[0]["asked_boot"] <= time.clock_gettime(time.CLOCK_BOOTTIME)
    assert answer.run.key == "settle/manual-inv1" and not answer.attached
    assert not [line for line in streamed if "joined" in line]


def ask_path(host):  # noqa: F811
    return os.path.join(host.layout.backfill_dir, paths.job_unit("settle", "json"))


def requests_at_start(host):  # noqa: F811
    """What the agent's request held when `systemctl start` ran: one entry per start."""
    seen = []
    run = host.systemd.run

    def systemd_run(args):
        if tuple(args) == ("systemctl", "start", SERVICE):
            with open(ask_path(host)) as request:
                seen.append(json.load(request))
        return run(args)

    host.systemd.run = systemd_run
    return seen


class _Follower:
    def __init__(self, entries):
        self.stdout = io.BytesIO(b"".join(json.dumps(e).encode() + b"\n" for e in entries))

    def kill(self):
        pass

    def wait(self):
        pass


def test_a_backfill_asked_while_the_job_runs_is_refused(host):  # noqa: F811
    installed(host, ActiveState="activating", InvocationID="inv1", ExecMainStartTimestamp=STARTED)
    with pytest.raises(AgentRefused, match="a backfill would not start") as refused:
        host.call(RunRequest("settle", slot=1796529600))
    assert refused.value.code == protocol.RUNNING
    assert not [c for c in host.systemd.calls if c[:2] == ("systemctl", "start")]


def test_a_run_asked_while_the_last_one_is_ending_is_a_run_of_its_own(host):  # noqa: F811
    """Deactivating (its ExecStopPost=): `systemctl start` waits for that run's end and starts a
    new one, which must find this request; it does not follow the run that is ending."""
    installed(host, ActiveState="deactivating", InvocationID="inv1", ExecMainStartTimestamp=STARTED)
    requests = requests_at_start(host)
    host.systemd.follow = lambda args: _Follower([])
    streamed: list[str] = []
    answer = host.call(RunRequest("settle"), output=streamed.append)
    assert requests and requests[0]["manual"] is True
    assert not answer.attached and not [line for line in streamed if "following" in line]


def test_a_run_leaves_the_request_another_run_wrote_after_it(host):  # noqa: F811
    """Its run ended, then another `deployer run` asked and started a new one before this agent
    cleaned up: removing that request made the new run take itself for the timer's."""
    installed(host, ActiveState="inactive", InvocationID="inv1")
    run = host.systemd.run

    def systemd_run(args):
        if tuple(args) == ("systemctl", "start", SERVICE):
            write_atomically(ask_path(host), '{"manual": true, "by": "bob@laptop"}', mode=0o644)
        return run(args)

    host.systemd.run = systemd_run
    host.systemd.follow = lambda args: _Follower([])
    host.call(RunRequest("settle"), output=lambda line: None)
    with open(ask_path(host)) as request:
        assert json.load(request)["by"] == "bob@laptop"

    host.systemd.run = run
    host.call(RunRequest("settle"), output=lambda line: None)
    assert not os.path.exists(ask_path(host)), "its own request is removed"


def test_a_run_asked_while_the_timers_run_goes_is_not_asked_of_that_run(host):  # noqa: F811
    """The request names the run going (its invocation id): that run keeps the timer's slot even
    if it reads the request before its stamp (slot.read_request)."""
    installed(host, ActiveState="activating", InvocationID="timers-run", ExecMainStartTimestamp=STARTED)
    requests = requests_at_start(host)
    host.systemd.follow = lambda args: _Follower([])
    host.call(RunRequest("settle"), output=lambda line: None)
    assert requests[0]["manual"] is True and requests[0]["not_for"] == "timers-run"


def test_a_run_asked_as_a_fenced_run_ends_is_refused_as_fenced(host):  # noqa: F811
    """The run ending (deactivating) was fenced: its ExecStopPost= marks the job fenced, and the
    start this request makes is held back by that (ConditionPathExists=!): no run, the same
    invocation. Before: reported as the timer's run this request joined, ok."""
    installed(host, ActiveState="deactivating", InvocationID="inv1", ExecMainStartTimestamp=STARTED)
    run = host.systemd.run

    def systemd_run(args):
        if tuple(args) == ("systemctl", "start", SERVICE):
            os.makedirs(host.layout.fenced_dir, exist_ok=True)  # as the ending run's ExecStopPost= does
            open(os.path.join(host.layout.fenced_dir, "deployer-settle.timer"), "w").close()
        return run(args)

    host.systemd.run = systemd_run
    host.systemd.follow = lambda args: _Follower([])
    host.systemd.journal = [dict(record_entry("settle", "inv1", time.time() - 1), _SYSTEMD_INVOCATION_ID="inv1")]
    with pytest.raises(AgentRefused, match="job settle is fenced on this host") as refused:
        host.call(RunRequest("settle"), output=lambda line: None)
    assert refused.value.code == protocol.NOT_INSTALLED
