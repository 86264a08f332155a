"""The watcher: late slots and long runs (alert_late, alert_long), told to the job's alert channel
once each, and told again when it clears.

Run every options.WATCH_EVERY seconds by `deployer-host@watch.timer` as `trigger --watch` (root:
under DynamicUser= systemd cannot be asked over D-Bus), on a host where some job sets alert_late
or alert_long (none else renders it). One pass costs one D-Bus read (systemctl.Systemd.properties)
of the watched jobs' timers and services, whatever their number, and a `systemd-analyze calendar` only for a stopped
timer's job. What it has to tell it leaves in paths.WATCH_OUTBOX and starts the sender
(`trigger --watch-send`, as the alert units' user with the channels' credentials), which delivers
through the alert program's own code (alert.deliver behind the channel's Coalescer: the same
credentials, proxy, signing, rate limit and queue).

The rules (docs/alerts.md):
- long: the job's service has been running (this invocation) longer than alert_long -> one alert
  per run (its InvocationID is kept), and one more when that run has ended.
- late: the slot due is the timer's next elapse while the timer waits, else (a stopped timer, a
  held host) the first calendar instant after its last trigger. Due more than alert_late ago ->
  one alert, kept until a run starts at or after that slot (then one more). A paused or fenced
  job is never late: not running is what the operator (or the newer owner) asked for.
"""
from __future__ import annotations

import calendar as _calendar
import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from deployer.contract import paths
from deployer.contract.options import duration_text as _duration_text
from deployer.contract.unitkeys import WATCH, Watched
from deployer.host.state import HostState


def duration_text(seconds: float) -> str:
    """31m, 1h2m5s: whole seconds, as the inventory writes durations."""
    return _duration_text(int(seconds))

TIMER_PROPERTIES = ("ActiveState", "NextElapseUSecRealtime", "LastTriggerUSec")
SERVICE_PROPERTIES = ("ActiveState", "InvocationID", "ExecMainStartTimestamp", "ExecMainExitTimestamp", "Result",
                      "ExecMainStatus")
RUNNING = ("activating", "active", "deactivating", "reloading")


# -- what the host says: one D-Bus read of the units' properties, a few files -----------------------------------------


@dataclass(frozen=True)
class Facts:
    """One job as the host shows it now (times in unix seconds; None: unknown or never)."""

    timer_state: str = ""
    next_elapse: Optional[float] = None
    last_trigger: Optional[float] = None  # the timer's, or its Persistent= stamp: the later
    installed: Optional[float] = None  # the timer file's mtime: a base for a timer that never fired
    service_state: str = ""
    invocation: str = ""
    started: Optional[float] = None
    exited: Optional[float] = None
    result: str = ""
    exit_status: str = ""
    paused: bool = False  # paused or fenced: not running is intended
    held: bool = False


def shown_time(value: str) -> Optional[float]:
    """`Sun 2026-12-06 02:00:03 UTC` (systemctl show under TZ=UTC) or `@1796522403` (the D-Bus
    read, systemctl.show_text) -> unix seconds; else None (empty, `n/a`)."""
    value = (value or "").strip()
    if value.startswith("@") and value[1:].isdigit():
        return float(value[1:]) or None
    parts = value.split()
    if len(parts) == 4 and parts[3] == "UTC":
        try:
            return float(_calendar.timegm(time.strptime(parts[1] + " " + parts[2], "%Y-%m-%d %H:%M:%S")))
        except ValueError:
            return None
    return None


def facts_of(timer: dict, service: dict, stamp: Optional[float], installed: Optional[float], paused: bool,
             held: bool) -> Facts:
    """Pure: the `systemctl show` blocks of a job's timer and service (and the files) -> Facts."""
    last = [t for t in (shown_time(timer.get("LastTriggerUSec", "")), stamp) if t]
    return Facts(timer_state=timer.get("ActiveState", ""), next_elapse=shown_time(timer.get("NextElapseUSecRealtime", "")),
                 last_trigger=max(last) if last else None, installed=installed,
                 service_state=service.get("ActiveState", ""), invocation=service.get("InvocationID", ""),
                 started=shown_time(service.get("ExecMainStartTimestamp", "")),
                 exited=shown_time(service.get("ExecMainExitTimestamp", "")), result=service.get("Result", ""),
                 exit_status=service.get("ExecMainStatus", ""), paused=paused, held=held)


def _mtime(path: str) -> Optional[float]:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def read_facts(systemd, watched, layout: paths.Layout = paths.Layout()) -> dict:
    """job -> Facts, for every watched job: ONE read of all their timers' and services'
    properties (Systemd.properties: a pipelined D-Bus conversation with PID 1, as root; `systemctl
    show`, 500 units a call, where that socket cannot be used); the rest are stat() calls."""
    units = []
    for w in watched:
        units += [paths.job_unit(w.job, "timer"), paths.job_unit(w.job, "service")]
    shown = systemd.properties(units, sorted(set(TIMER_PROPERTIES + SERVICE_PROPERTIES))) if units else {}
    state = HostState(layout)
    stopped = state.paused() | state.fenced()
    held = state.current_hold() is not None
    found = {}
    for w in watched:
        timer, service = paths.job_unit(w.job, "timer"), paths.job_unit(w.job, "service")
        stamp = _mtime(os.path.join(layout.timer_stamps, "stamp-" + timer))
        found[w.job] = facts_of(shown.get(timer, {}), shown.get(service, {}), stamp,
                                _mtime(os.path.join(layout.unit_dir, timer)), timer in stopped, held)
    return found


def next_after(lines, after: float) -> Optional[float]:
    """The first instant of any calendar line strictly after `after` (systemd-analyze)."""
    from deployer.host.slot import analyze

    firsts = [elapses[0] for elapses in analyze(list(lines), int(after), 1) if elapses]
    return float(min(firsts)) if firsts else None


# -- the decisions: pure ------------------------------------------------------------------------


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def due_slot(w: Watched, f: Facts, next_after: Callable = next_after) -> Optional[float]:
    """The slot the job waits for: the waiting timer's next elapse (systemd's own), else the first
    calendar instant after its last trigger (or after it was installed, if it never fired)."""
    if not w.calendar:
        return None
    if f.timer_state == "active" and f.next_elapse:
        return f.next_elapse
    base = f.last_trigger or f.installed
    return next_after(w.calendar, base) if base else None


def why_late(f: Facts) -> str:
    if f.held:
        return "the host holds its jobs (failover hold): `deployer release` or `deployer push` ends it"
    if f.timer_state != "active":
        return f"its timer is {f.timer_state or 'not loaded'} (stopped by hand? `deployer push` starts it again)"
    if f.service_state in RUNNING:
        return "its previous run is still going (concurrency = forbid)"
    return "its timer has not fired (PID 1 busy, or the clock stepped)"


def decide(w: Watched, f: Facts, state: dict, host: str, now: float, next_after: Callable = next_after,
           account: Callable[[str], str] = lambda invocation: "") -> tuple:
    """(events to send, the job's new state). `state`: {"late": {"slot", "alerted"}, "long":
    {"invocation", "since", "alerted"}}, either missing. `account(invocation)`: how an ended run
    that is no longer the service's last ended (its record's reason), from the journal."""
    events, state = [], dict(state)
    stamp = iso(now)
    long = state.get("long")
    running = f.service_state in RUNNING and f.started is not None and bool(f.invocation)
    if long and (f.invocation != long["invocation"] or not running):
        same = f.invocation == long["invocation"]
        ended = f.exited if same and f.exited else now
        if same:
            verdict = "success" if f.result == "success" else \
                f"failed ({f.result or 'unknown'}, exit status {f.exit_status or '?'})"
        else:
            verdict = account(long["invocation"]) or "ended"
        events.append({"kind": "long_ended", "job": w.job, "host": host, "since": iso(long["since"]),
                       "ran_for": duration_text(max(ended - long["since"], 0)), "result": verdict,
                       "invocation": long["invocation"], "time": stamp})
        state.pop("long")
        long = None
    if w.long and not long and running and now - f.started > w.long:
        events.append({"kind": "long", "job": w.job, "host": host, "since": iso(f.started),
                       "running_for": duration_text(now - f.started), "alert_long": duration_text(w.long),
                       "invocation": f.invocation, "time": stamp})
        state["long"] = {"invocation": f.invocation, "since": f.started, "alerted": now}

    late = state.get("late")
    if late:
        started = max(f.last_trigger or 0, f.started or 0)
        if started >= late["slot"]:
            events.append({"kind": "late_ended", "job": w.job, "host": host, "slot": iso(late["slot"]),
                           "started": iso(started), "late_by": duration_text(max(started - late["slot"], 0)),
                           "time": stamp})
            state.pop("late")
    elif w.late and not f.paused:
        due = due_slot(w, f, next_after)
        if due is not None and now - due > w.late:
            events.append({"kind": "late", "job": w.job, "host": host, "slot": iso(due),
                           "late_by": duration_text(now - due), "alert_late": duration_text(w.late),
                           "reason": why_late(f), "time": stamp})
            state["late"] = {"slot": due, "alerted": now}
    return events, state


# -- the pass: read, decide, remember, send ------------------------------------------------------


def load_state(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_state(path: str, state: dict) -> None:
    """Before sending: an alert is at most once (a full disk may lose the memory: then once per
    pass would be worse than once; an undelivered alert stays in the channel's queue)."""
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(state, handle, sort_keys=True)
        os.rename(path + ".tmp", path)
    except OSError as error:
        print(f"watch: cannot keep what was alerted ({error})", flush=True)


def watch_pass(watched, facts: dict, state: dict, host: str, now: float, next_after: Callable = next_after,
               account: Callable[[str], str] = lambda invocation: "", log=print) -> tuple:
    """-> ({channel: [events]}, new state) for every watched job (a job no longer watched is forgotten)."""
    events, kept = {}, {}
    for w in watched:
        try:
            found, job_state = decide(w, facts[w.job], state.get(w.job, {}), host, now, next_after, account)
        except (ValueError, OSError) as error:  # a calendar systemd-analyze refuses: the others still go
            log(f"watch: job {w.job}: {error}")
            found, job_state = [], state.get(w.job, {})
        for event in found:
            log(f"watch: job {w.job}: {event['kind']} -> {w.channel}")
        events.setdefault(w.channel, []).extend(found)
        if job_state:
            kept[w.job] = job_state
    return {c: e for c, e in events.items() if e}, kept


def write_outbox(directory: str, events: dict, now: float) -> Optional[str]:
    """The events of a pass, as one file the sender reads: owned like the directory (the sender's
    user, once it ran; before that systemd hands it the directory and all in it), so that it can
    read and remove it; None when there is nothing to send."""
    if not events:
        return None
    os.makedirs(directory, mode=0o755, exist_ok=True)
    path = os.path.join(directory, "%.6f-%d.json" % (now, os.getpid()))
    # Root, in a directory the sender's user owns: a new file only (O_EXCL), never through a link
    # planted there (O_NOFOLLOW), handed over by its descriptor, not by a name that can be swapped.
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(events, handle)
        owner = os.stat(directory)
        try:
            os.fchown(handle.fileno(), owner.st_uid, owner.st_gid)
        except OSError:
            pass  # not root (a test): the same user reads it
    os.rename(path + ".tmp", path)
    return path


def anything_to_send(outbox: str, queue: str, channels) -> bool:
    """Whether the sender has work: a pass's events, or a channel's queue that is not empty (an
    alert an earlier send could not deliver). A few listdir() calls: the sender (a sandboxed
    process as another user) starts only then, not every pass."""
    for directory in [outbox] + [os.path.join(queue, name) for name in channels]:
        try:
            if any(name.endswith(".json") for name in os.listdir(directory)):
                return True
        except OSError:
            continue
    return False


def read_outbox(directory: str) -> tuple:
    """-> ({channel: [events]} of every pass not sent yet, oldest first; the files read)."""
    merged, files = {}, []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except OSError:
        return merged, files
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as handle:
                for channel, events in json.load(handle).items():
                    merged.setdefault(channel, []).extend(events)
        except (OSError, ValueError, AttributeError):
            pass  # unreadable: nothing to send from it
        files.append(path)
    return merged, files


def main(host_name: str, state_path: str = paths.WATCH_STATE) -> bool:
    """The watcher's pass (root): read the host, decide, remember, leave the events, and start
    the sender when there is something to send."""
    from deployer.host.journal import run_account
    from deployer.host.systemctl import Systemd  # every systemctl/journalctl call of the host programs goes through it

    log = lambda line: print(line, flush=True)  # noqa: E731
    config = WATCH.read_unit(paths.WATCH_SERVICE)
    watched, channels = config.watched, config.channels
    systemd = Systemd()
    now = time.time()

    def account(invocation: str) -> str:
        return run_account(systemd, invocation, 0, "").reason

    events, state = watch_pass(watched, read_facts(systemd, watched), load_state(state_path), host_name, now,
                               account=account, log=log)
    save_state(state_path, state)
    write_outbox(paths.WATCH_OUTBOX, events, now)
    if anything_to_send(paths.WATCH_OUTBOX, paths.ALERT_QUEUE, channels):
        systemd.systemctl("start", "--no-block", paths.WATCH_SEND_SERVICE, check=False)
    return True


def send_main() -> bool:
    """The sender (deployer-host@watch-send.service: the alert units' user, their state directory
    and the channels' credentials): what the watcher left, through alert.deliver behind each channel's
    Coalescer. An event that cannot go out now stays in the channel's queue for the next pass."""
    from deployer.contract.channels import received
    from deployer.host.alert import Coalescer, deliver, read_credential

    log = lambda line: print(line, flush=True)  # noqa: E731
    channels = WATCH.read_unit(paths.WATCH_SERVICE).channels
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0] or "/tmp"
    outbox = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or paths.WATCH_OUTBOX
    events, files = read_outbox(outbox)
    for name in sorted(set(events) - set(channels)):
        log(f"{len(events[name])} event(s) for channel {name}, no longer watched: dropped")
    # Every event into its channel's queue first, then the outbox emptied: a sender killed after
    # that finds them queued (and sends them once), not in the outbox again. An event the disk
    # refuses stays in memory and goes out with its channel's message.
    pending = {}
    for name, how in sorted(channels.items()):
        coalescer = Coalescer(state_dir, name, log=log)
        own = events.get(name, [])
        names = [coalescer.enqueue(event) for event in own]
        pending[name] = (coalescer, how, [n for n in names if n], [e for e, n in zip(own, names) if not n])
    for path in files:
        try:
            os.unlink(path)
        except OSError:
            pass
    delivered = True
    for name, (coalescer, how, queued, unqueued) in pending.items():
        channel = received(name, how.type, lambda key: how.values.get(key) or None,
                           lambda key, name=name: read_credential(name + "." + key))
        send = lambda batch, channel=channel: deliver(channel, batch, log=log)  # noqa: E731
        # Also what an earlier pass could not deliver (queued): the same channel, merged.
        sent = coalescer.run(unqueued, send) if unqueued else True
        sent = coalescer.run([], send, queued=queued) and sent
        delivered = (sent or not (queued or unqueued)) and delivered
    return delivered
