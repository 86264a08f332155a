"""host/chain.py (issue 23 item 8): a run its parent's unit started stands for the parent's slot."""
from __future__ import annotations

import json

import pytest

from deployer.host import chain, slot
from deployer.host.slot import Slot

PARENT_RUN = "0123456789abcdef0123456789abcdef"
SLOT = 1796522400  # 2026-12-06T02:00:00Z


def left(tmp_path, invocation=PARENT_RUN, at=SLOT, run=PARENT_RUN, later: int = 0) -> str:
    """The parent's published slots: this run's, then `later` runs of the parent that ended since."""
    path = tmp_path / "published-extract.json"
    lines = [json.dumps({"invocation": invocation, "slot": at, "run": run})]
    lines += [json.dumps({"invocation": "%032x" % n, "slot": at + 5 * n, "run": "%032x" % n}) for n in range(1, later + 1)]
    path.write_text("not json\n" + "\n".join(lines) + "\n")
    return str(path)


def monitor(result="success", invocation=PARENT_RUN, unit="deployer-extract.service") -> dict:
    return {"MONITOR_UNIT": unit, "MONITOR_INVOCATION_ID": invocation, "MONITOR_SERVICE_RESULT": result}


@pytest.mark.parametrize("result, verdict", [pytest.param("success", "succeeded", id="on-success"),
                                             pytest.param("exit-code", "failed", id="on-failure")])
def test_the_child_takes_the_parents_slot_and_says_why(tmp_path, result, verdict):
    found = chain.chained_slot(("extract",), "child-run", env=monitor(result), path=left(tmp_path))
    assert found == Slot(SLOT, PARENT_RUN, "after", after=f"extract 2026-12-06T02:00:00Z {verdict}")
    assert found.key("load") == "load/2026-12-06T02:00:00Z"


def test_a_child_that_starts_after_the_parents_next_runs_still_finds_its_slot(tmp_path):
    """A loaded host: the parent ran again (and ended) before the child it started read its slot."""
    found = chain.chained_slot(("extract",), "child-run", env=monitor(), path=left(tmp_path, later=3))
    assert found.key("load") == "load/2026-12-06T02:00:00Z"


def test_a_manual_parent_run_gives_its_children_its_manual_key(tmp_path):
    found = chain.chained_slot(("extract",), "child-run", env=monitor(), path=left(tmp_path, at=None))
    assert found.key("load") == f"load/manual-{PARENT_RUN}"


@pytest.mark.parametrize("env", [
    pytest.param({}, id="no-monitor"),
    pytest.param(monitor(unit="deployer-other.service"), id="another-units-monitor"),
    pytest.param(monitor(unit="deployer-extract.timer"), id="not-a-service"),
])
def test_a_run_no_parent_started_is_not_chained(tmp_path, env):
    assert chain.chained_slot(("extract",), "child-run", env=env, path=left(tmp_path)) is None


def test_a_slot_left_by_another_parent_run_is_never_taken(tmp_path):
    """The file is the parent's last run's; $MONITOR_INVOCATION_ID names the run that started
    this one: a mismatch (the parent was killed before it wrote) keys by the parent's run."""
    found = chain.chained_slot(("extract",), "child-run", env=monitor(invocation="f" * 32),
                               path=left(tmp_path, invocation="e" * 32))
    assert (found.at, found.key("load")) == (None, "load/manual-" + "f" * 32)
    missing = chain.chained_slot(("extract",), "child-run", env=monitor(), path=str(tmp_path / "none.json"))
    assert missing.key("load") == f"load/manual-{PARENT_RUN}"


def test_what_the_agent_asked_wins_over_a_monitor_left_in_the_environment(tmp_path, monkeypatch):
    """systemd 252 may leave $MONITOR_* of the last chained start in a later `systemctl start`."""
    monkeypatch.setattr(slot, "BACKFILL_DIR", str(tmp_path))
    monkeypatch.setattr(chain, "chain_slot", lambda job: left(tmp_path))
    env = monitor()
    assert chain.slot_for("load", (), "run", ("extract",), env=env).how == "after"
    (tmp_path / "deployer-load.json").write_text(json.dumps({"manual": True, "stamp": None}))
    manual = chain.slot_for("load", (), "run", ("extract",), env=env)
    assert (manual.how, manual.key("load")) == ("manual", "load/manual-run")
    assert chain.slot_for("extract", (), "run", (), env=env).how == "manual", "no parents: never chained"


def test_the_parent_leaves_its_slot_only_in_its_own_runtime_directory(tmp_path, monkeypatch):
    directory = tmp_path / "deployer-extract"
    directory.mkdir()
    monkeypatch.setattr(chain, "chain_dir", lambda job: str(directory))
    the_slot = Slot(SLOT, PARENT_RUN)
    assert not chain.write_chain_slot("extract", the_slot, env={"INVOCATION_ID": PARENT_RUN})
    assert not chain.write_chain_slot("extract", the_slot, env={"RUNTIME_DIRECTORY": str(tmp_path),
                                                                "INVOCATION_ID": PARENT_RUN})
    assert chain.write_chain_slot("extract", the_slot, env={"RUNTIME_DIRECTORY": str(directory),
                                                            "INVOCATION_ID": PARENT_RUN})
    written = directory / "slot.json"
    assert json.loads(written.read_text()) == {"invocation": PARENT_RUN, "slot": SLOT, "run": PARENT_RUN}
    found = chain.chained_slot(("extract",), "child", env=monitor(), path=str(written))
    assert found.key("load") == "load/2026-12-06T02:00:00Z"
