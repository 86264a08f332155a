"""Pure planning: desired files + remote state -> Plan, and the plan as text or a diff. No I/O."""
from __future__ import annotations

import difflib
from typing import Iterable

from .contract import paths
from .models import ManagedFile, Plan, RemoteState


def make_plan(desired: Iterable[ManagedFile], state: RemoteState) -> Plan:
    """Compare by sha256: add what is missing, change what differs, remove what is no longer wanted."""
    wanted = {f.path: f for f in desired}
    add = tuple(wanted[p] for p in sorted(wanted) if p not in state.files)
    change = tuple(wanted[p] for p in sorted(wanted)
                   if p in state.files and state.files[p] != wanted[p].sha256)
    remove = tuple(sorted(p for p in state.files if p not in wanted))
    unchanged = tuple(sorted(p for p in wanted if state.files.get(p) == wanted[p].sha256))
    return Plan(add=add, change=change, remove=remove, unchanged=unchanged)


def without_removals(plan: Plan) -> Plan:
    """`push --no-prune`: add and change only. Everything no longer wanted stays, not only the jobs'
    units: a kept job's OnFailure= still names its alert channel, whose units must stay too. But the
    timer of a job that stays and became chained (after =) goes: kept, it would run the job on its
    old calendar too."""
    doomed = set(removed_jobs(plan))
    retimed = tuple(p for p in plan.remove if p.endswith(".timer") and paths.job_of_unit(p)
                    and paths.job_of_unit(p) not in doomed)
    return Plan(add=plan.add, change=plan.change, unchanged=plan.unchanged, remove=retimed,
                kept=plan.kept + tuple(p for p in plan.remove if p not in retimed))


def jobs_of(files: Iterable[str]) -> tuple[str, ...]:
    """The jobs whose units are among `files` (sorted): what an operator calls a removal."""
    return tuple(sorted({j for j in (paths.job_of_unit(p) for p in files) if j}))


def removed_jobs(plan: Plan) -> tuple[str, ...]:
    """Jobs none of whose units stay: a job that became chained loses its timer, not itself."""
    if not plan.remove:
        return ()
    staying = set(jobs_of([f.path for f in plan.add + plan.change] + list(plan.unchanged)))
    return tuple(j for j in jobs_of(plan.remove) if j not in staying)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def summary(plan: Plan) -> str:
    kept = f", {len(plan.kept)} kept (--no-prune)" if plan.kept else ""
    return (f"{len(plan.add)} to add, {len(plan.change)} to change, "
            f"{len(plan.remove)} to remove{kept}, {len(plan.unchanged)} unchanged")


def job_of_file(path: str):
    """The job a managed file belongs to (its units, its credentials), or None (host units,
    alert channels, the lease and metrics units)."""
    if path.endswith("/" + paths.RECOVER_UNIT):
        return None  # deployer-recover.service: the host's, not a job named "recover"
    job = paths.job_of_unit(path)
    if job is None and path.startswith(paths.CREDENTIALS_DIR + "/jobs."):
        job = path[len(paths.CREDENTIALS_DIR + "/jobs."):].rsplit(".", 1)[0] or None
    return job


def _changes(plan: Plan) -> tuple[dict[str, dict[str, list[str]]], list[tuple[str, str]]]:
    """-> (job -> marker -> its file names, [(marker, path)] of the files no job owns)."""
    by_job: dict[str, dict[str, list[str]]] = {}
    others: list[tuple[str, str]] = []
    for marker, names in (("+", [f.path for f in plan.add]), ("~", [f.path for f in plan.change]),
                          ("-", list(plan.remove))):
        for path in names:
            job = job_of_file(path)
            if job is None:
                others.append((marker, path))
            else:
                by_job.setdefault(job, {}).setdefault(marker, []).append(_name(path))
    return by_job, others


def _kind(markers: dict) -> str:
    """A job's files all added: the job is added ("+"); all removed: removed ("-"); else changed."""
    return next(iter(markers)) if set(markers) in ({"+"}, {"-"}) else "~"


def job_summary(plan: Plan) -> str:
    """`3 jobs to add, 1 to change, 0 to remove`: what the plan means, counted in jobs."""
    by_job, _ = _changes(plan)
    kinds = [_kind(markers) for markers in by_job.values()]
    return (f"{kinds.count('+')} job{'' if kinds.count('+') == 1 else 's'} to add, {kinds.count('~')} to change, "
            f"{kinds.count('-')} to remove")


def change_lines(plan: Plan, inventory_name: str = "the inventory", limit: int = 0) -> list[str]:
    """One line per job push would add, change or remove, then one per other file (host and
    channel units): `+ job settle`, `~ job report (deployer-report.timer)`, `- job old (not in
    inventory.ini)`. `limit`: at most this many job lines of each kind, then `... and N more`."""
    by_job, others = _changes(plan)
    secret = {f.path for f in plan.add + plan.change if f.secret}
    kinds: dict[str, list[str]] = {"+": [], "~": [], "-": []}
    for job in sorted(by_job):
        kind = _kind(by_job[job])
        if kind == "+":
            kinds["+"].append(f"+ job {job}")
        elif kind == "-":
            kinds["-"].append(f"- job {job} (not in {inventory_name})")
        else:
            files = sorted(name for names in by_job[job].values() for name in names)
            kinds["~"].append(f"~ job {job} ({', '.join(files)})")
    lines = []
    for marker in "+~-":
        shown = kinds[marker][:limit] if limit else kinds[marker]
        lines += shown
        if len(kinds[marker]) > len(shown):
            verb = {"+": "to add", "~": "to change", "-": "to remove"}[marker]
            lines.append(f"{marker} ... and {len(kinds[marker]) - len(shown)} more jobs {verb} (deployer plan "
                         "lists them all)")
    lines += [f"{marker} {_name(path)}" + (" (secret)" if path in secret else "") for marker, path in others]
    lines += [f"= job {job} (no longer in {inventory_name}; kept: --no-prune)" for job in jobs_of(plan.kept)]
    return lines


def _text(content: bytes) -> list[str]:
    try:
        return content.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return []


def render_diff(plan: Plan, state: RemoteState) -> str:
    """A unified diff per file, as `git diff` would show it; binary files by name only."""
    out: list[str] = []
    for f in plan.add:
        out.append(f"+ {f.path}" + (" (secret, not shown)\n" if f.secret else "\n"))
        if not f.secret:
            out += _unified([], _text(f.content), f.path)
    for f in plan.change:
        out.append(f"~ {f.path}" + (" (secret, not shown)\n" if f.secret else "\n"))
        if f.path in state.contents and not f.secret:
            out += _unified(_text(state.contents[f.path]), _text(f.content), f.path)
    for path in plan.remove:
        out.append(f"- {path}\n")
        out += _unified(_text(state.contents.get(path, b"")), [], path)
    for path in plan.kept:
        out.append(f"= {path} (no longer in the inventory; kept: --no-prune)\n")
    return "".join(out)


def _unified(old: list[str], new: list[str], path: str) -> list[str]:
    lines = list(difflib.unified_diff(old, new, f"a{path}", f"b{path}"))
    return [line if line.endswith("\n") else line + "\n" for line in lines]


def as_dict(plan: Plan) -> dict:
    return {"add": [_name(f.path) for f in plan.add], "change": [_name(f.path) for f in plan.change],
            "remove": [_name(p) for p in plan.remove], "unchanged": [_name(p) for p in plan.unchanged],
            "remove_jobs": list(removed_jobs(plan)), "kept_jobs": list(jobs_of(plan.kept))}


# A note names this many jobs, then how many more (an inventory of 10,000 jobs gets one line).
NOTE_NAMES = 5


def resend_notes(jobs) -> list[str]:
    """One line per retries and method the once-rule limits, naming its jobs: a POST or PATCH
    the service may have started (a read timeout, a 500/502/504) is not sent again without
    `idempotent = true`."""
    from .contract.options import IDEMPOTENT_METHODS

    limited: dict[tuple, list[str]] = {}
    for j in jobs:
        if j.retries and not j.idempotent and j.method not in IDEMPOTENT_METHODS:
            limited.setdefault((j.retries, j.method), []).append(j.name)
    notes = []
    for (retries, method), names in limited.items():
        named = ", ".join(f"[job:{name}]" for name in names[:NOTE_NAMES])
        if len(names) > NOTE_NAMES:
            named += f" and {len(names) - NOTE_NAMES:,} more jobs"
        notes.append(f"{named} retries = {retries}: after a read timeout or a 500/502/504 this {method} is "
                     f"not sent again (the service may have started it); set idempotent = true once the service "
                     f"dedupes on Idempotency-Key (docs/receiving.md)")
    return notes


def chains(jobs) -> list[dict]:
    """The chains among `jobs` (one host's), parent first: {"job", "after", "on"} where `on` is
    "success" (`after =`) or "failure" (the parent's on_failure_run). The inventory refused a
    cycle and a chain across hosts already."""
    found = [{"job": j.name, "after": j.after, "on": "success"} for j in jobs if j.after]
    found += [{"job": j.on_failure_run, "after": j.name, "on": "failure"} for j in jobs if j.on_failure_run]
    return sorted(found, key=lambda c: (c["after"], c["on"] != "success", c["job"]))


def chain_lines(jobs) -> list[str]:
    """`chain: load: after extract succeeded`, a line per chained run the host's units start."""
    return [f"chain: {c['job']}: after {c['after']} {'succeeded' if c['on'] == 'success' else 'failed'} "
            f"(same slot; deployer-{c['after']}.service On{c['on'].capitalize()}=)" for c in chains(jobs)]
