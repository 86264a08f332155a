"""The push and move sequences: plan against the host's state, keep each job on one host, apply.

Agents are given (only the CLI builds the SSH ones); `connect` gives the agent of another host
of the inventory when a step must look there. Tests pass in-process agents (remote.LocalAgent).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from . import lastpush, remote
from .errors import AgentRefused, DeployerError, RemoteCommandError, RemoteError
from .contract import paths
from .contract.protocol import ApplyAnswer, Takeover
from .models import Inventory, Plan, RemoteState
from .plan import make_plan, removed_jobs, without_removals
from .render import desired_files, with_epochs

T = TypeVar("T")

Connect = Callable[[str], remote.Agent]
# Asked with the jobs a push would remove, before anything changes; False cancels the push.
Confirm = Callable[[tuple[str, ...]], bool]


@dataclass(frozen=True)
class Pushed:
    host: str
    plan: Plan
    result: Optional[ApplyAnswer] = None  # None when there was nothing to do
    takeover: Optional[Takeover] = None  # the jobs came from an unreachable host (deployer move)


@dataclass(frozen=True)
class Unreachable:
    """A source host that did not answer: `move` waits out its lease from `since` (unix time)."""

    host: str
    reason: str
    since: float
    lease: float

    @property
    def until(self) -> float:
        return self.since + self.lease


def unreachable(error: RemoteError) -> bool:
    """No answer at all (connection refused, timed out, host silent): not a host that answered
    with a refusal or whose command failed."""
    return not isinstance(error, (AgentRefused, RemoteCommandError))


def job_of_timer(path: str) -> Optional[str]:
    return paths.job_of_unit(path) if path.endswith(".timer") else None


def check_owner(state: RemoteState, host_name: str) -> None:
    if state.owner and state.owner != host_name:
        raise DeployerError(f"host {host_name}: that machine runs the jobs of host {state.owner}; refusing to "
                            f"install {host_name}'s jobs there (check its address, or use deployer move)")


def check_not_elsewhere(inv: Inventory, host_name: str, jobs: list[str], connect: Connect,
                        skip: tuple[str, ...] = ()) -> None:
    """A job being added here must not still be installed on another host: it would run twice.
    `skip`: hosts already dealt with (the unreachable source of a move, whose lease ran out)."""
    for other in (h.name for h in inv.hosts if h.name != host_name and h.name not in skip):
        try:
            state = remote.read_state(connect(other))
        except DeployerError as error:
            if isinstance(error, RemoteError) and unreachable(error):
                raise DeployerError(f"cannot check that {other} no longer runs {', '.join(jobs)} ({error}). If "
                                    f"{other} is down, take its jobs over with: deployer move --from {other} "
                                    f"--to {host_name} (it waits out {other}'s lease; see docs/runbooks/"
                                    f"host-down.md)") from None
            raise DeployerError(f"cannot check that {other} no longer runs {', '.join(jobs)} ({error}); "
                                f"push {other} first, or use deployer move --from {other} --to {host_name}") from None
        still = sorted(j for j in jobs if any(job_of_timer(p) == j for p in state.files))
        if still:
            raise DeployerError(f"job {', '.join(still)} is still installed on {other}: running it on {host_name} "
                                f"too would run it twice. Use: deployer move --from {other} --to {host_name}")


def grant_epochs(jobs: list[str], state: RemoteState, above: Optional[dict] = None,
                 clock: Callable[[], float] = time.time) -> dict[str, int]:
    """job -> its X-Deployer-Epoch on this host. A job the host already holds keeps its epoch;
    one granted to it now (new here, or moved here) gets the grant time in milliseconds, bumped
    above every epoch the client can read for it: this host's and `above` (the source of a
    move). A held host's jobs are granted anew by the agent when the hold ends. docs/receiving.md
    argues why an epoch only grows."""
    now, above = int(clock() * 1000), above or {}
    epochs = {}
    for job in jobs:
        held = state.epochs.get(job)
        if held is not None and held > above.get(job, -1):
            epochs[job] = held
        else:
            epochs[job] = max(now, (held or 0) + 1, above.get(job, 0) + 1)
    return epochs


def plan_push(inv: Inventory, host_name: str, agent: remote.Agent, contents: bool = False,
              prune: bool = True, above: Optional[dict] = None) -> tuple[Plan, RemoteState]:
    # The host reads and hashes its files while the units are rendered here: at 10,000 jobs each
    # takes most of a second, and neither needs the other but for the epochs, set in after.
    reading = in_background(lambda: remote.read_state(agent, contents=contents))
    files = desired_files(inv, host_name)
    state = reading()
    check_owner(state, host_name)
    epochs = grant_epochs([j.name for j in inv.jobs_for(host_name)], state, above)
    the_plan = make_plan(with_epochs(files, epochs), state)
    return (the_plan if prune else without_removals(the_plan)), state


def in_background(work: Callable[[], T]) -> Callable[[], T]:
    """Start `work` in a thread; -> a call that waits for it and returns its result or raises its
    error. A daemon thread: Ctrl-C meanwhile ends the command without waiting for the host."""
    import threading

    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, work()))
        except BaseException as error:  # noqa: B036 (re-raised in the caller's thread)
            outcome.append((False, error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    return result


def up_to_date(entry: lastpush.Entry, agent: remote.Agent) -> Optional[Pushed]:
    """The push of `entry`'s inputs, if the host still holds exactly the files it made the host
    hold (nothing held): `up to date`, without a parse or a render. None: a full push decides."""
    matched, state = remote.holds(agent, entry.digest)
    check_owner(state, entry.host_name)
    if state.held is not None or not matched:
        return None
    paused = tuple(sorted(state.paused))
    return Pushed(entry.host_name, Plan(unchanged=entry.files), ApplyAnswer(kept_paused=paused) if paused else None)


def _remember(remember: Callable[[dict], None], plan: Plan, state: RemoteState) -> None:
    """Give `remember` the files the host holds after `plan` was applied to `state` (path ->
    sha256), when they are exactly the inventory's: with files kept by --no-prune, a later push
    of the same inputs without it has something to remove."""
    if not plan.kept:
        held = {path: state.files[path] for path in plan.unchanged}
        held.update((f.path, f.sha256) for f in plan.add + plan.change)
        remember(held)


def push(inv: Inventory, host_name: str, agent: remote.Agent, connect: Connect,
         progress: Callable[[str], None] = lambda text: None, stamps: Optional[dict] = None,
         cross_check: bool = True, prune: bool = True, confirm: Optional[Confirm] = None,
         takeover: Optional[Takeover] = None, above: Optional[dict] = None,
         announce: Callable[[Plan, RemoteState], None] = lambda plan, state: None,
         remember: Callable[[dict], None] = lambda files: None) -> Pushed:
    """Make the host hold exactly the inventory's files for it (one read, one apply).

    `prune=False` removes nothing. `confirm` is asked before a push that removes jobs; the host
    is not read again after it: the apply's expected state refuses a host changed meanwhile.
    `takeover`: the jobs come from that unreachable host (deployer move); recorded on this one.
    `above`: job -> an epoch the new one must exceed (the source's, in a move).
    `announce` is given a plan that changes something, before `confirm` and before any change.
    `remember` is given what the host holds once the push succeeded (path -> sha256), unless
    --no-prune kept files there.
    """
    progress("reading the host's state")
    the_plan, state = plan_push(inv, host_name, agent, prune=prune, above=above)
    if the_plan.is_noop:
        # Nothing to change, but a paused job stays paused: say so, as a push that changes it does.
        paused = tuple(sorted(state.paused))
        if state.held is None:
            _remember(remember, the_plan, state)
            return Pushed(host_name, the_plan, ApplyAnswer(kept_paused=paused) if paused else None)
        # The host holds its jobs: the push confirms it owns them all.
        progress("releasing the host's hold")
        answer = remote.release(agent)  # it grants the jobs new epochs: the files are not `state`'s any more
        return Pushed(host_name, the_plan, ApplyAnswer(started=answer.started, released=answer.released,
                                                       kept_paused=paused))
    announce(the_plan, state)
    doomed = removed_jobs(the_plan)
    if doomed and confirm is not None and not confirm(doomed):
        raise DeployerError(f"host {host_name}: push cancelled, nothing changed (--no-prune keeps "
                            f"{'that job' if len(doomed) == 1 else 'those jobs'}; --yes removes without asking)")
    added = [j for j in (job_of_timer(f.path) for f in the_plan.add) if j]
    if added and (cross_check or takeover) and len(inv.hosts) > 1:
        progress("checking that no other host runs the new jobs")
        check_not_elsewhere(inv, host_name, added, connect, skip=(takeover.source,) if takeover else ())
    result = remote.apply(agent, the_plan, state, progress=progress, stamps=stamps, takeover=takeover)
    _remember(remember, the_plan, state)
    return Pushed(host_name, the_plan, result, takeover)


def wait_until(moment: float, clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
               tick: Callable[[float], None] = lambda left: None) -> None:
    """Sleep until `moment` (unix time), calling `tick(seconds left)` about once a second."""
    while True:
        left = moment - clock()
        if left <= 0:
            return
        tick(left)
        sleep(min(left, 1.0))


def move(inv: Inventory, source: str, target: str, connect: Connect,
         progress: Callable[[str], None] = lambda text: None, force: bool = False,
         wait: Callable[[Unreachable], None] = lambda gone: wait_until(gone.until),
         clock: Callable[[], float] = time.time) -> tuple[list[str], Pushed, Optional[Pushed]]:
    """Hand the jobs the inventory designates to `target` but `source` still runs over to `target`.

    Their timers stop on `source` first; on `target` each starts with its last trigger set to
    that moment, so Persistent= runs a time that passed during the hand-over once, and never
    one that `source` already ran. Then `source` is pushed, which removes them there.

    An unreachable `source` (down) cannot be asked to stop: the move waits out its lease from the
    moment it found it unreachable (`wait`; `force` skips that), so that `source`, if it comes
    back, holds its jobs at boot. If it answers by then, the hand-over is the normal one; else
    the jobs are installed on `target` and the takeover is recorded there; `source` is pushed
    (its jobs removed) when it is back. The third element is then None.
    """
    source_conn, target_conn = connect(source), connect(target)
    try:
        source_state = remote.read_state(source_conn)
    except RemoteError as error:
        if not unreachable(error):
            raise
        gone = Unreachable(source, str(error), clock(), inv.host(source).lease)
        if not force:
            wait(gone)
            try:
                source_state = remote.read_state(source_conn)
            except RemoteError as again:
                if not unreachable(again):
                    raise
                return take_over(inv, gone, target, target_conn, connect, progress, waited=clock() - gone.since)
        else:
            return take_over(inv, gone, target, target_conn, connect, progress, waited=0.0, forced=True)
    on_source = {job_of_timer(p) for p in source_state.files} - {None}
    moving = sorted(on_source & {j.name for j in inv.jobs_for(target)})
    if not moving:
        raise DeployerError(f"nothing to move: no job designated to {target} (host = {target}) is installed "
                            f"on {source}")
    progress(f"stopping {len(moving)} timers on {source}")
    stopped = remote.handoff(source_conn, moving)
    stamps = {paths.job_unit(j, "timer"): stopped.at for j in moving}
    try:
        to_target = push(inv, target, target_conn, connect, progress, stamps=stamps, cross_check=False,
                         above=source_state.epochs)
    except DeployerError:
        progress(f"restarting the timers on {source}")
        for job in moving:
            remote.resume(source_conn, job)
        raise
    to_source = push(inv, source, source_conn, connect, progress, cross_check=False)
    return moving, to_target, to_source


def take_over(inv: Inventory, gone: Unreachable, target: str, target_conn: remote.Agent, connect: Connect,
              progress: Callable[[str], None], waited: float, forced: bool = False
              ) -> tuple[list[str], Pushed, None]:
    """Install on `target` the jobs the inventory designates to it that it does not run yet (the
    ones `gone` may have run), stamped with the moment `gone` was found unreachable: a slot that
    passed since then runs once on `target`."""
    the_plan, _ = plan_push(inv, target, target_conn)
    moving = sorted(j for j in (job_of_timer(f.path) for f in the_plan.add) if j)
    if not moving:
        raise DeployerError(f"nothing to move: every job designated to {target} (host = {target}) is already "
                            f"installed there; set host = {target} on {gone.host}'s jobs in {inv.path} first")
    takeover = Takeover(source=gone.host, jobs=tuple(moving), unreachable_at=gone.since,
                        waited_seconds=round(waited, 3), forced=forced)
    stamps = {paths.job_unit(j, "timer"): gone.since for j in moving}
    progress(f"installing {len(moving)} jobs of unreachable {gone.host} on {target}")
    return moving, push(inv, target, target_conn, connect, progress, stamps=stamps, takeover=takeover), None
