"""Pure planning: desired files + remote state -> Plan, and the plan as text or a diff. No I/O."""
from __future__ import annotations

import difflib
from typing import Iterable

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


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def summary(plan: Plan) -> str:
    return (f"{len(plan.add)} to add, {len(plan.change)} to change, "
            f"{len(plan.remove)} to remove, {len(plan.unchanged)} unchanged")


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
    return "".join(out)


def _unified(old: list[str], new: list[str], path: str) -> list[str]:
    lines = list(difflib.unified_diff(old, new, f"a{path}", f"b{path}"))
    return [line if line.endswith("\n") else line + "\n" for line in lines]


def as_dict(plan: Plan) -> dict:
    return {"add": [_name(f.path) for f in plan.add], "change": [_name(f.path) for f in plan.change],
            "remove": [_name(p) for p in plan.remove], "unchanged": [_name(p) for p in plan.unchanged]}
