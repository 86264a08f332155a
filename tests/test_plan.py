from __future__ import annotations

from deployer.models import ManagedFile, Plan, RemoteState
from deployer.plan import as_dict, make_plan, removed_jobs, render_diff, summary, without_removals

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
                             "unchanged": [], "remove_jobs": ["gone"], "kept_jobs": []}


GONE_SERVICE = "/etc/systemd/system/deployer-gone.service"
ALERT_UNIT = "/etc/systemd/system/deployer-alert-ops@.service"


def test_a_plan_names_the_jobs_it_removes_not_their_files():
    plan = make_plan([A], RemoteState(files={GONE: "0", GONE_SERVICE: "0", ALERT_UNIT: "0",
                                             "/etc/systemd/system/deployer-old.service": "0"}))
    assert removed_jobs(plan) == ("gone", "old")
    assert removed_jobs(make_plan([A], RemoteState(files={ALERT_UNIT: "0"}))) == ()


def test_no_prune_keeps_every_file_no_longer_wanted_and_still_adds_and_changes():
    state = RemoteState(files={B.path: B_OLD.sha256, GONE: "0", GONE_SERVICE: "0", ALERT_UNIT: "0"},
                        contents={GONE: b"[Timer]\n"})
    kept = without_removals(make_plan([A, B], state))
    assert kept == Plan(add=(A,), change=(B,), kept=(ALERT_UNIT, GONE_SERVICE, GONE))
    assert removed_jobs(kept) == ()
    assert as_dict(kept)["remove"] == [] and as_dict(kept)["kept_jobs"] == ["gone"]
    assert summary(kept) == "1 to add, 1 to change, 0 to remove, 3 kept (--no-prune), 0 unchanged"
    assert f"= {GONE} (no longer in the inventory; kept: --no-prune)\n" in render_diff(kept, state)
    only_removals = without_removals(make_plan([], RemoteState(files={GONE: "0"})))
    assert only_removals.is_noop, "a push --no-prune with only removals pending has nothing to do"


def test_a_job_that_became_chained_loses_its_timer_not_itself():
    """Issue 23 item 8: `after =` replaces a job's schedule: its timer goes (even with --no-prune,
    where it would go on running the job on its old calendar); the job is not 'removed'."""
    service = ManagedFile("/etc/systemd/system/deployer-load.service", b"[Service]\n")
    state = RemoteState(files={service.path: service.sha256, "/etc/systemd/system/deployer-load.timer": "0",
                               GONE: "0"})
    plan = make_plan([A, service], state)
    assert removed_jobs(plan) == ("gone",)
    kept = without_removals(plan)
    assert kept.remove == ("/etc/systemd/system/deployer-load.timer",) and kept.kept == (GONE,)
    assert removed_jobs(kept) == ()


def test_the_chains_are_listed_parent_first():
    from deployer.plan import chain_lines, chains

    class Job:
        def __init__(self, name, after=None, on_failure_run=None):
            self.name, self.after, self.on_failure_run = name, after, on_failure_run

    jobs = [Job("load", after="extract"), Job("extract", on_failure_run="cleanup"), Job("cleanup")]
    assert chains(jobs) == [{"job": "load", "after": "extract", "on": "success"},
                            {"job": "cleanup", "after": "extract", "on": "failure"}]
    assert chain_lines(jobs) == [
        "chain: load: after extract succeeded (same slot; deployer-extract.service OnSuccess=)",
        "chain: cleanup: after extract failed (same slot; deployer-extract.service OnFailure=)"]


def test_a_resend_note_per_retries_and_method_names_five_jobs_then_counts():
    """10,000 jobs with the default retries get one note, not 10,000 lines."""
    from types import SimpleNamespace

    from deployer.plan import resend_notes

    def job(name, retries=2, method="POST", idempotent=False):
        return SimpleNamespace(name=name, retries=retries, method=method, idempotent=idempotent)

    many = [job(f"job{i:05d}") for i in range(10000)]
    others = [job("once", retries=0), job("safe", idempotent=True), job("read", method="GET"),
              job("patch", retries=3, method="PATCH")]
    notes = resend_notes(many + others)
    assert notes[0].startswith("[job:job00000], [job:job00001], [job:job00002], [job:job00003], [job:job00004] "
                               "and 9,995 more jobs retries = 2: after a read timeout or a 500/502/504 this POST "
                               "is not sent again")
    assert notes[1].startswith("[job:patch] retries = 3: after a read timeout or a 500/502/504 this PATCH")
    assert len(notes) == 2
