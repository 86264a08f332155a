"""Chaining (issue 23 item 8): a chained run stands for its parent's slot.

A job with `after = extract` (or another's `on_failure_run`) has no timer: extract's unit starts
it with OnSuccess= (OnFailure=). systemd (>= 249) gives that start $MONITOR_UNIT,
$MONITOR_INVOCATION_ID and $MONITOR_SERVICE_RESULT, but not the parent's slot; so the parent's run
leaves its slot in its RuntimeDirectory= (paths.chain_dir, which only its own dynamic user can
write); a dynamic user's runtime directory is private to it (systemd links it into /run/private,
0700), so the unit's ExecStopPost= appends it as root to a world-readable list of the parent's
latest slots beside it (paths.chain_slot, in the root-owned paths.CHAIN_DIR: render.publish_argv),
and the child takes the one whose invocation id is $MONITOR_INVOCATION_ID. systemd 252 reads
$MONITOR_* from the parent unit as it is when the child is spawned, not when it was triggered:
seen on a loaded host, the parent's next run had started by then and the child named it. So the
parent is ordered After= its children: its next run waits until the child has ended.
The child's Idempotency-Key then names the parent's slot, and its record says why it ran. Not
imported by the agent (its bootstrap has a size limit). Standard library only.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from deployer.contract.paths import CHAIN_SLOT, BadName, chain_dir, chain_slot, job_unit
from deployer.host.slot import Slot, _is_int, read_request, slot_of_run


def slot_for(job: str, calendar: Sequence[str], run: str, parents: Sequence[str], env=os.environ,
             log=lambda line: None, analyze=None) -> Slot:
    """The slot of this run: its parent's when a parent's OnSuccess=/OnFailure= started it, else
    as slot.slot_of_run says. What the agent asked (a manual run) wins: systemd 252 may leave
    $MONITOR_* of the last chained start in a later `systemctl start`'s environment."""
    if parents and not read_request(job, run).kind:
        chained = chained_slot(parents, run, env)
        if chained is not None:
            return chained
    return slot_of_run(job, calendar, run, env=env, log=log, **({"analyze": analyze} if analyze else {}))


def write_chain_slot(job: str, slot: Slot, env=os.environ) -> bool:
    """A job that starts others (its unit has RuntimeDirectory= chain_dir(job)) leaves the slot
    this run stands for there, for the run its OnSuccess=/OnFailure= starts (chained_slot)."""
    try:
        directory = chain_dir(job)
    except BadName:
        return False
    if directory not in env.get("RUNTIME_DIRECTORY", "").split(":"):  # one per RuntimeDirectory=
        return False  # no job starts this one's children (or not under systemd)
    path = os.path.join(directory, CHAIN_SLOT)
    text = json.dumps({"invocation": env.get("INVOCATION_ID", ""), "slot": slot.at, "run": slot.run})
    temporary = path + ".tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # the unit's ExecStopPost= publishes it, as root
            handle.write(text)
        os.replace(temporary, path)
        return True
    except OSError:
        return False


def chained_slot(parents: Sequence[str], run: str, env=os.environ, path: Optional[str] = None) -> Optional[Slot]:
    """The slot of a run that a parent's OnSuccess=/OnFailure= started: the parent's, read from
    what the parent's run left (write_chain_slot) and bound to it by $MONITOR_INVOCATION_ID,
    which systemd (>= 249) sets for exactly that start. None when no parent started this run."""
    unit = env.get("MONITOR_UNIT", "")
    parent = next((p for p in parents if _unit_or_none(p) == unit), None)
    if parent is None:
        return None
    verdict = "succeeded" if env.get("MONITOR_SERVICE_RESULT") == "success" else "failed"
    try:
        with open(path or chain_slot(parent), encoding="utf-8") as handle:
            lines = handle.read(1 << 20).splitlines()  # the parent's latest runs, one JSON line each
        invocation = env.get("MONITOR_INVOCATION_ID")
        left = next(found for found in (_json(line) for line in reversed(lines))
                    if invocation and found.get("invocation") == invocation)
        at = left.get("slot")
        at = at if _is_int(at) else None
        parent_run = left.get("run") if isinstance(left.get("run"), str) and left.get("run") else run
    except (OSError, ValueError, AttributeError, BadName, StopIteration):
        # The parent ended before it knew its slot (killed at start): keyed by its run, still one key per parent run.
        at, parent_run = None, env.get("MONITOR_INVOCATION_ID") or run
    named = Slot(at, parent_run).name
    return Slot(at, parent_run, "after", after="%s %s %s" % (parent, named, verdict))


def _json(line: str) -> dict:
    try:
        found = json.loads(line)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _unit_or_none(job: str) -> Optional[str]:
    try:
        return job_unit(job, "service")
    except BadName:
        return None
