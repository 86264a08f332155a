from __future__ import annotations

from deployer.models import ManagedFile, Plan, RemoteState
from deployer.plan import as_dict, make_plan, render_diff, summary

A = ManagedFile("/etc/systemd/system/deployer-a.timer", b"[Timer]\nOnCalendar=*:00\n")
B = ManagedFile("/etc/systemd/system/deployer-b.timer", b"[Timer]\nOnCalendar=*:15\n")
B_OLD = ManagedFile(B.path, b"[Timer]\nOnCalendar=*:10\n")
GONE = "/etc/systemd/system/deployer-gone.timer"


def test_plan_adds_changes_removes_by_hash():
    state = RemoteState(files={B.path: B_OLD.sha256, GONE: "f" * 64})
    assert make_plan([A, B], state) == Plan(add=(A,), change=(B,), remove=(GONE,), unchanged=())


def test_identical_state_plans_nothing():
    state = RemoteState(files={A.path: A.sha256, B.path: B.sha256})
    plan = make_plan([B, A], state)
    assert plan == Plan(unchanged=(A.path, B.path)) and plan.is_noop
    assert summary(plan) == "0 to add, 0 to change, 0 to remove, 2 unchanged"


def test_diff_shows_the_changed_lines():
    state = RemoteState(files={B.path: B_OLD.sha256}, contents={B.path: B_OLD.content})
    diff = render_diff(make_plan([B], state), state)
    assert "~ /etc/systemd/system/deployer-b.timer\n" in diff
    assert "-OnCalendar=*:10\n+OnCalendar=*:15\n" in diff


def test_as_dict_uses_file_names():
    plan = make_plan([A], RemoteState(files={GONE: "0"}))
    assert as_dict(plan) == {"add": ["deployer-a.timer"], "change": [], "remove": ["deployer-gone.timer"],
                             "unchanged": []}
