"""The trigger's command line: `trigger -url URL [-token TOKEN]` runs a job (the original recipe),
`trigger --alert ...` is the alert program. The job arguments come from options.JOB_OPTIONS."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Optional, Sequence

from deployer.contract import options, paths, record
from deployer.contract.channels import CHANNEL_TYPES, Channel, all_fields, received
from deployer.contract.options import EXIT_FAILED, EXIT_FENCED, EXIT_OK
from deployer.host.chain import slot_for, write_chain_slot
from deployer.host.run import (Interrupted, JobSpec, RunResult, current_run_id, interruption, job_spec, ping,
                               redact_url, run_job)
from deployer.host.slot import ITERATIONS, Analyze, Slot
from deployer.host.slot import analyze as slot_analyze
from deployer.host.slot import iso_utc, stamp_of


def _argument_type(parse):
    def convert(text: str):
        try:
            return parse(text)
        except options.Invalid as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trigger", allow_abbrev=False,
        description="Call a job's HTTP endpoint, judge the response, exit 0 on success, 1 on failure.",
    )
    parser.add_argument("--job", default="job", help="job name, sent as X-Deployer-Job")
    for option in options.TRIGGER_OPTIONS:
        flags = [option.flag] + (["-url"] if option.key == "url" else [])
        default = None if option.key == "url" else option.default
        parser.add_argument(*flags, dest=option.dest, type=_argument_type(option.parse), default=default,
                            help=option.help)
    parser.add_argument("-token", "--token", help="DingTalk robot token to alert on failure (the "
                        "original recipe; visible in process lists: installed units use credentials)")
    parser.add_argument("--resolution", type=int, default=60,
                        help="a manual run's X-Deployer-Scheduled-At is its start floored to this (seconds)")
    parser.add_argument("--calendar", action="append", default=[], metavar="LINE",
                        help="the timer's OnCalendar= line (repeatable): a timer-started run's slot is its latest "
                             "instant at or before the moment the timer elapsed")
    parser.add_argument("--chained-from", action="append", default=[], metavar="JOB",
                        help="a job whose OnSuccess=/OnFailure= starts this one (repeatable): such a run "
                             "stands for that job's slot ($MONITOR_*)")
    parser.add_argument("--epoch", type=int, default=0, help="X-Deployer-Epoch (installed units read the "
                        "'epoch' credential instead)")
    parser.add_argument("--fenced", action="store_true", help="as root, from the unit's ExecStopPost=: stop the "
                        "timer of --job, fenced by its service")
    alert = parser.add_argument_group("alert mode (run by a job's OnFailure= unit)")
    alert.add_argument("--alert", action="store_true", help="report the failed run of --job")
    alert.add_argument("--recovered", action="store_true", help="with --alert: report that --job "
                       "succeeded after failing (run by OnSuccess=)")
    alert.add_argument("--sweep", action="store_true", help="with --alert: report failed runs of --job that "
                       "no alert reported yet (run by the alert unit's ExecStopPost=)")
    alert.add_argument("--boot", action="store_true", help="with --alert: report the failed runs of every job "
                       "of --channel that no alert reported (the previous boot's interrupted ones)")
    alert.add_argument("--channel", help="alert channel name")
    alert.add_argument("--type", choices=sorted(CHANNEL_TYPES))
    for field in all_fields().values():  # the channels' fields that are not secret (channels.py)
        if not field.secret:
            alert.add_argument(field.flag, dest=field.key, help=field.help)
    alert.add_argument("--host-name", default=os.environ.get("DEPLOYER_HOST_NAME") or os.uname().nodename)
    metrics = parser.add_argument_group("metrics mode (run by deployer-host@metrics.service, as root)")
    metrics.add_argument("--metrics", action="store_true", help="write the host's metrics file, ping heartbeat_url")
    metrics.add_argument("--metrics-dir", help="node_exporter's textfile directory")
    metrics.add_argument("--deployer-version", default="", help="the version label of deployer_build_info")
    watch = parser.add_argument_group("watch mode (run by deployer-host@watch.service every 15 s)")
    watch.add_argument("--watch", action="store_true", help="alert late slots (alert_late) and long runs "
                       "(alert_long) of the jobs listed in the watch unit, once each, and when they clear (as root: "
                       "reads systemd, leaves the events for --watch-send)")
    watch.add_argument("--watch-send", action="store_true", help="send what --watch left, through the "
                       "jobs' alert channels (as the alert units' user, with their credentials)")
    return parser


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.metrics:
        from deployer.host.metrics import main as metrics_main  # a job run never loads it

        return metrics_main(args.host_name, args.deployer_version, args.metrics_dir or paths.METRICS_DIR)
    if args.watch or args.watch_send:
        from deployer.host.watch import main as watch_main  # a job run never loads them
        from deployer.host.watch import send_main

        return EXIT_OK if (send_main() if args.watch_send else watch_main(args.host_name)) else EXIT_FAILED
    if args.alert:
        if not (args.channel and args.type):
            parser.error("--alert needs --channel and --type")
        from deployer.host.alert import alert_main  # a job run never loads the alert program
        mode = "boot" if args.boot else "sweep" if args.sweep else ""
        channel = alert_channel(args)
        return EXIT_OK if alert_main(args.job, args.host_name, channel, args.recovered, mode) else EXIT_FAILED
    if args.fenced:
        from deployer.host.agent import fence_main  # root, outside the run's sandbox

        return fence_main(args.job)
    if not args.url:
        parser.error("the following arguments are required: -url/--url")
    try:
        from_credentials = credential_values()
        epoch = credential_epoch(args.epoch)
    except options.Invalid as error:
        parser.error(str(error))
    spec = spec_of(args, from_credentials, epoch)
    log = lambda line: print(line, flush=True)  # noqa: E731
    signal.signal(signal.SIGTERM, _interrupt)
    run_id = current_run_id()
    stamp_then = stamp_of(spec.name)  # an elapse during a manual run moves it (systemd merges its start)
    link_then = timer_link(spec.name)
    seen = RememberedElapses()  # the slot's own systemd-analyze answers: most runs need no other
    the_slot = slot_for(spec.name, spec.calendar, run_id, tuple(args.chained_from), log=log, analyze=seen)
    write_chain_slot(spec.name, the_slot)
    log(f"slot {the_slot.name} ({the_slot.how}), key {the_slot.key(spec.name)}, epoch {spec.epoch}"
        + (f", after {the_slot.after}" if the_slot.after else ""))
    through_at = through_path(spec.name)
    # Only a timer's run takes what the previous one left (gone now: a run killed before its end
    # leaves none, nothing is guessed); a manual run or backfill between two leaves it be.
    if the_slot.how == "timer":
        record_coalesced(spec, the_slot, take_through(through_at), log, analyze=seen)
    missed = missed_reason(spec, the_slot)
    if missed:  # a catch-up older than catch_up: nothing is called, nothing alerts; the record says so
        log(f"job {spec.name}: slot {the_slot.name} {missed}")
        record.send(skipped_record(spec, the_slot, missed, "catch_up", run_id), _identifier(spec.name))
        leave_through(through_at, spec, the_slot, [], run_id, time.time(), seen)
        return EXIT_OK
    spec, params, refused = with_params(spec, the_slot)
    if params:
        log("params %s" % ", ".join("%s=%s" % pair for pair in params.items())
            + (f" (asked by {the_slot.by})" if the_slot.by else ""))
    started = time.time()
    try:
        if refused:
            raise ParamsRefused(refused)
        ping(spec.ping_url, "/start", log)
        result = run_job(spec, log=log, slot=the_slot, replace_at=replace_at(spec, the_slot, log, seen))
    except ParamsRefused as error:
        result = RunResult(ok=False, reason=str(error), run_id=run_id, slot=the_slot.at or 0, started=time.time(),
                           duration=0.0, attempts=0, key=the_slot.key(spec.name), epoch=spec.epoch,
                           after=the_slot.after)
    except Interrupted:  # during the /start ping, before the first attempt
        result = RunResult(ok=False, reason=interruption(spec.name, run_id)[0], run_id=run_id,
                           slot=the_slot.at or 0, started=time.time(), duration=0.0, attempts=0, interrupted=True,
                           key=the_slot.key(spec.name), epoch=spec.epoch, after=the_slot.after)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    record.send(result.record(spec.name, json.dumps(params) if params else "", the_slot.by), _identifier(spec.name))
    # A timer paused, removed or moved while the run went (its link is gone, or made anew by a
    # resume) has no overlaps here, now or for its next run to record (leave_through): it was
    # stopped, or another host ran them.
    enabled = link_then is not None and timer_link(spec.name) == link_then
    recorded = record_overlaps(spec, the_slot, started, run_id, log, stamp_then, analyze=seen) if enabled else []
    try:
        return finish(args, spec, the_slot, result, run_id, log)
    finally:  # the run's very end: a slot that comes after this is the next run's to account for
        if enabled:
            leave_through(through_at, spec, the_slot, recorded, run_id, started, seen)


def spec_of(args, from_credentials: dict, epoch: int) -> JobSpec:
    """The run's JobSpec: every option from the arguments (or its credential), and the extras."""
    values = {o.dest: getattr(args, o.dest) for o in options.TRIGGER_OPTIONS}
    values.update(from_credentials)  # a URL with a secret: the command line has it redacted, the credential whole
    return job_spec(args.job, values, resolution=args.resolution, calendar=tuple(args.calendar), epoch=epoch)


def finish(args, spec: JobSpec, the_slot: Slot, result: RunResult, run_id: str, log) -> int:
    """The run's verdict: its pings, its inline alert, its exit status."""
    if result.interrupted:
        # A run cut short (a reboot, a stop) is a failed run whatever systemd makes of a SIGTERM
        # death (a clean stop for some service types): exit 1, and say why for the alert.
        log(f"job {spec.name}: FAILED ({result.reason})")
        return EXIT_FAILED
    ping(spec.ping_url, "" if result.ok else "/fail", log)
    if result.ok:
        log(f"job {spec.name}: ok ({result.reason})")
        return EXIT_OK
    log(f"job {spec.name}: {result.result.upper()} ({result.reason})")
    if result.fenced:
        return EXIT_FENCED
    channel = inline_channel(args)
    if channel:  # the original recipe's -token, or DEPLOYER_ALERT_* (a Kubernetes Secret)
        from deployer.host.alert import deliver, failed_event

        event = failed_event(job=spec.name, host=args.host_name, slot=the_slot.name, reason=result.reason,
                             method=spec.method, url=redact_url(spec.url), result=result.result,
                             exit_status=EXIT_FAILED, signal=None, time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             invocation=run_id, lines=[])
        deliver(channel, [event], log=log)
    return EXIT_FAILED


class ParamsRefused(Exception):
    """`deployer run --set` named a parameter the job's unit does not declare: nothing is sent."""


def with_params(spec: JobSpec, the_slot) -> tuple:
    """-> (spec with every ${{name}} in url and body filled, the values ({} for a job without
    params), why the run is refused ("" if not)). A scheduled run fills the declared
    defaults; a manual one what `deployer run --set` asked (the agent's request), over them."""
    declared = dict(spec.params)
    unknown = [name for name, _ in the_slot.params if name not in declared]
    if unknown:
        return spec, {}, "parameter %s is not declared by job %s (it declares: %s)" % (
            unknown[0], spec.name, ", ".join(declared) or "none")
    values = {**declared, **dict(the_slot.params)}
    body_part = options.json_string_part if "json" in spec.content_type.lower() else str
    filled = replace(spec, url=options.fill(spec.url, values, options.url_part),
                     body=options.fill(spec.body, values, body_part))
    return filled, values, ""


# The most skipped slots one run records (a 1 s calendar under a day-long run would be 86,400).
MAX_SKIPPED = 100


def elapses_in(lines: Sequence[str], after: float, until: float, analyze: Analyze = slot_analyze,
               limit: int = MAX_SKIPPED + 1) -> list:
    """Every instant of any of `lines` in (after, until], oldest first, at most `limit` of them."""
    found, base = set(), int(after)
    for line in lines:
        base = int(after)
        for _ in range(limit):
            elapses = [e for e in analyze([line], base, ITERATIONS)[0] if e > after]
            found.update(e for e in elapses if e <= until)
            if not elapses or elapses[-1] > until or len(found) >= limit:
                break
            base = elapses[-1]
    return sorted(found)[:limit]


def next_elapse(lines: Sequence[str], after: float, analyze: Analyze = slot_analyze) -> Optional[int]:
    """The first instant of any of `lines` strictly after `after`; None if there is none."""
    firsts = [elapses[0] for elapses in analyze(lines, int(after), 1) if elapses]
    return min(firsts) if firsts else None


class RememberedElapses:
    """slot.analyze that keeps its answers: the slot's own call already lists the elapses after
    the slot, so whether a later one came while the run went (and when the next comes) costs no
    second systemd-analyze process in the common case (a process is the cost that counts in a
    burst: docs/performance.md)."""

    def __init__(self, analyze: Analyze = slot_analyze):
        self.analyze, self.answers = analyze, []

    def __call__(self, lines, base, iterations):
        found = self.analyze(lines, base, iterations)
        self.answers += [(line, base, list(elapses)) for line, elapses in zip(lines, found)]
        return found

    def next_after(self, lines, at) -> Optional[int]:
        """The first elapse of any of `lines` after `at`, if the kept answers say it (each line
        needs an answer that began at or before `at` and went past it); else None."""
        firsts = []
        for line in lines:
            known = [min(e for e in elapses if e > at) for name, base, elapses in self.answers
                     if name == line and base <= at and any(e > at for e in elapses)]
            if not known:
                return None
            firsts.append(min(known))
        return min(firsts) if firsts else None


def replace_at(spec: JobSpec, the_slot: Slot, log, analyze=slot_analyze) -> Optional[float]:
    """concurrency = replace: when the next slot comes (this run then ends, and its timer, armed
    again by the run's end, starts that slot's run at once). Only a timer's run is replaced: a
    manual run merges the timer's start instead (agent.run_merged_slot)."""
    if spec.concurrency != "replace" or the_slot.how != "timer" or the_slot.at is None or not spec.calendar:
        return None
    try:
        found = getattr(analyze, "next_after", lambda lines, at: None)(spec.calendar, the_slot.at)
        found = found if found is not None else next_elapse(spec.calendar, the_slot.at, analyze)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        log(f"cannot read the calendar ({error}): this run is not replaced by the next slot")
        return None
    return float(found) if found is not None else None


def lateness(the_slot: Slot) -> float:
    """How long after its slot the timer elapsed for this run (0 unless a timer started it): a
    catch-up at boot, or a slot that waited for the previous run to end."""
    if the_slot.how != "timer" or the_slot.at is None or the_slot.elapsed is None:
        return 0.0
    return max(the_slot.elapsed - the_slot.at, 0.0)


def missed_reason(spec: JobSpec, the_slot: Slot) -> str:
    """`skipped: missed by 9h12m, catch_up = 2h` when the timer elapsed for this slot later than
    the job's catch_up allows (a slot missed while the host was down, run at boot; or one that
    waited for a run that went on long); "" when it runs. Only a timer's run is ever skipped: a
    manual run or a backfill was asked for by someone."""
    allowed = options.catch_up_seconds(spec.catch_up)
    late = lateness(the_slot)
    if allowed is None or late <= allowed:
        return ""
    return "skipped: missed by %s, catch_up = %s" % (options.duration_text(int(late)),
                                                     options.catch_up_text(spec.catch_up))


def skipped_record(spec: JobSpec, the_slot: Slot, reason: str, kind: str, run: str) -> record.RunRecord:
    return record.RunRecord(job=spec.name, run=run, slot=the_slot.at or 0, started=time.time(), duration=0.0,
                            attempts=0, result="skipped", reason=reason, key=the_slot.key(spec.name),
                            epoch=spec.epoch, skipped=kind)


def timer_link(job: str, unit_dir: Optional[str] = None) -> Optional[tuple]:
    """The job's timer link in timers.target.wants, as (inode, ctime), or None: gone once a push
    paused or removed the job (a move's too), and made anew when it resumes. A run that finds the
    same link at its end as at its start ran under a timer that ran all along. Slots that came
    otherwise are not its overlaps: the timer was stopped, or another host ran them (found by the
    move test with a held run: the old host recorded as skipped a slot the new one ran; and by the
    history test: a run that went through a whole pause recorded the paused slots as skipped)."""
    try:
        link = os.lstat(os.path.join(unit_dir or paths.UNIT_DIR, paths.TIMERS_WANTS, paths.job_unit(job, "timer")))
    except (OSError, paths.BadName):
        return None
    return (link.st_ino, link.st_ctime_ns)


def overlapped_slots(spec: JobSpec, the_slot: Slot, started: float, now: float, stamp_then, stamp_now,
                     analyze=slot_analyze) -> list:
    """The slots that came while this run went and will never run (concurrency = forbid): systemd
    starts no second run of a unit that is running. A timer's run holds its timer (systemd 252
    arms it again only when the run ends, and then elapses it at once: the latest slot that came
    runs then, late); a manual run merges the timer's start (the agent runs that elapse's slot
    after it, agent.run_merged_slot). Either way every slot before the latest one that came is
    dropped: those are returned. A manual run counts only an elapse its timer stamped meanwhile."""
    if not spec.calendar or the_slot.how in ("cronjob", "clock"):
        return []
    if the_slot.how == "timer" and the_slot.at is not None:
        after, until = the_slot.at, now
    elif stamp_now is not None and stamp_now != stamp_then:
        after, until = started, stamp_now / 1e9
    else:
        return []
    known = getattr(analyze, "next_after", lambda lines, at: None)(spec.calendar, after)
    if known is not None and known > until:
        return []  # the next slot is still to come: nothing came (no systemd-analyze process)
    try:
        came = elapses_in(spec.calendar, after, until, analyze)
    except (OSError, ValueError, subprocess.SubprocessError):
        return []
    return came[:-1]


def record_overlaps(spec: JobSpec, the_slot: Slot, started: float, run_id: str, log, stamp_then: Optional[int],
                    analyze=slot_analyze, send=record.send, now: Optional[float] = None,
                    stamp_now: Optional[int] = None) -> list:
    """Record each slot this run made the job skip (`skipped: previous run still running since
    ...`), each once, under a run id of its own; -> the slots recorded. `stamp_then`: the timer's
    stamp when the run began."""
    dropped = overlapped_slots(spec, the_slot, started, time.time() if now is None else now, stamp_then,
                               stamp_of(spec.name) if stamp_now is None else stamp_now, analyze)
    since = iso_utc(started)
    for at in dropped[:MAX_SKIPPED]:
        skipped = Slot(at, run_id)
        reason = "skipped: previous run still running since %s" % since
        log(f"job {spec.name}: slot {skipped.name} {reason}")
        send(skipped_record(spec, skipped, reason, "concurrency", "%s-s%d" % (run_id[:40], at)), _identifier(spec.name))
    if len(dropped) > MAX_SKIPPED:
        log(f"job {spec.name}: more slots came while this run went; only the first {MAX_SKIPPED} are recorded")
    return dropped[:MAX_SKIPPED]


# Issue 23 item 6, the slots between two runs. A run records at its end the slots that came while
# it went, but the latest: the timer, armed again only when the unit has ended, elapses at once for
# that one. If another slot comes before that elapse (the run's pings, its exit, ExecStopPost=:
# the unit is still active), the timer names the newer one and the one handed on never runs. So
# each timer run leaves what it accounted for (`through`: its slot or the last it recorded) and
# when it ended, and its unit's ExecStopPost= marks when the unit ended (a loaded host takes
# seconds from the one to the other); the next timer run records the slots after `through` and
# before its own that came by the later of the two: the previous run was still running at each.
# The two records partition the slots: the end record takes those before the latest that came,
# the next run those from there on, up to its own slot. A slot that came after the previous run had ended and before
# the timer elapsed (the timer stopped: a pause, a hold, a push; PID 1 late) is no overlap: it is
# left unrecorded (history counts it missed), and so is every slot before a reboot (the state
# lives in /run), or after a run killed before its end (the state is taken at the start).


def through_path(job: str) -> str:
    """The job's state file, when this run has its directory (a timer's job, under its unit)."""
    try:
        directory = paths.through_dir(job)
    except paths.BadName:
        return ""
    return os.path.join(directory, paths.THROUGH_FILE) \
        if directory in os.environ.get("RUNTIME_DIRECTORY", "").split(":") else ""


def take_through(path: str) -> dict:
    """What the job's previous run left (see above), removed: each is read by one run only."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.loads(handle.read(4096))
        os.unlink(path)
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    try:  # when the unit ended (its ExecStopPost= marked it): the run was still exiting until then
        found["unit_ended"] = os.stat(os.path.join(os.path.dirname(path), paths.THROUGH_ENDED)).st_mtime
    except OSError:
        pass
    return found


def leave_through(path: str, spec: JobSpec, the_slot: Slot, recorded: Sequence[int], run_id: str, started: float,
                  analyze=slot_analyze, now: Optional[float] = None) -> dict:
    """Leave what this run accounted for, for the next one; only a timer's run does (what a manual
    run or a backfill overlapped is not the timer's to continue from). -> what was left."""
    if the_slot.how != "timer" or the_slot.at is None or not spec.calendar:
        return {}
    through = max([the_slot.at, *recorded])
    try:  # known without a process in the common case: the slot's own systemd-analyze answer
        upcoming = getattr(analyze, "next_after", lambda lines, at: None)(spec.calendar, through)
    except (OSError, ValueError, subprocess.SubprocessError):
        upcoming = None
    left = {"run": run_id, "slot": the_slot.at, "through": through, "next": upcoming, "started": started,
            "ended": time.time() if now is None else now}
    if path:
        temporary, ended = path + ".tmp", os.path.join(os.path.dirname(path), paths.THROUGH_ENDED)
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(left, handle)
            if not os.path.exists(ended):
                os.close(os.open(ended, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            os.replace(temporary, path)
        except OSError:
            return {}
    return left


def coalesced_slots(spec: JobSpec, the_slot: Slot, before: dict, analyze=slot_analyze) -> list:
    """The slots after what the previous run accounted for and before this run's own, that came
    while that run still went (by its end): the timer merged them into this run's elapse."""
    through, upcoming, ended = before.get("through"), before.get("next"), before.get("ended")
    if the_slot.how != "timer" or the_slot.at is None or not spec.calendar or not isinstance(through, int) \
            or isinstance(through, bool) or not isinstance(ended, (int, float)) or the_slot.at <= through:
        return []
    unit_ended = before.get("unit_ended")
    if isinstance(unit_ended, (int, float)) and not isinstance(unit_ended, bool):
        ended = max(ended, unit_ended)  # older: a mark of an earlier run (its ExecStopPost= did not run)
    if isinstance(upcoming, int) and (the_slot.at <= upcoming or upcoming > ended):
        return []  # the common case: this run is the slot handed on (no systemd-analyze process)
    until = min(the_slot.at - 1, ended)
    try:
        return elapses_in(spec.calendar, through, until, analyze, limit=MAX_SKIPPED)
    except (OSError, ValueError, subprocess.SubprocessError):
        return []


def record_coalesced(spec: JobSpec, the_slot: Slot, before: dict, log, analyze=slot_analyze,
                     send=record.send) -> list:
    """Record each coalesced_slots once, as the previous run's end would have (same reason, same
    run id): -> the slots recorded."""
    found = coalesced_slots(spec, the_slot, before, analyze)
    started, previous = before.get("started"), before.get("run")
    if not found or not isinstance(started, (int, float)) or not isinstance(previous, str):
        return []
    reason = "skipped: previous run still running since %s" % iso_utc(started)
    for at in found:
        skipped = Slot(at, previous)
        log(f"job {spec.name}: slot {skipped.name} {reason} (it came before that run ended, after its own record)")
        send(skipped_record(spec, skipped, reason, "concurrency", "%s-s%d" % (previous[:40], at)),
             _identifier(spec.name))
    return found


def _identifier(job: str) -> str:
    """The record's SYSLOG_IDENTIFIER: the unit's (SyslogIdentifier=), so `journalctl -t` finds both."""
    try:
        return paths.job_unit(job, "service")[:-len(".service")]
    except paths.BadName:  # a bare `trigger.py --job "Some Name"` outside the units
        return "trigger"


def _interrupt(signum, frame):
    raise Interrupted()


def credential_epoch(given: int) -> int:
    """The job's epoch on this host: its 'epoch' credential when the unit hands one over."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    path = os.path.join(directory, paths.EPOCH_CREDENTIAL) if directory else ""
    if not path or not os.path.exists(path):
        return given
    with open(path, encoding="ascii", errors="replace") as handle:
        text = handle.read().strip()
    if not text.isdigit():
        raise options.Invalid("the epoch credential is not a whole number")
    return int(text)


def credential_values() -> dict:
    """The options that reach a run as systemd credentials (or, in Kubernetes, as files of a
    mounted Secret named by $CREDENTIALS_DIRECTORY): files are used where they lie."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    values: dict = {}
    for option in options.CREDENTIAL_OPTIONS if directory else ():
        path = os.path.join(directory, option.credential)
        if not os.path.exists(path):
            continue
        if option.parse is options.local_file:
            values[option.dest] = path
        else:
            with open(path, encoding="utf-8") as handle:
                values[option.dest] = option.parse(handle.read())
    return values


def alert_channel(args) -> Channel:
    """The alert unit's channel: its type's fields from the arguments, the secret ones from the
    unit's credentials (a sweep reads none: it only queues)."""
    from deployer.host.alert import read_credential

    return received(args.channel, args.type, lambda key: getattr(args, key),
                    lambda key: "" if args.sweep else read_credential(key))


def inline_channel(args) -> Optional[Channel]:
    """Where a run alerts by itself (no OnFailure= unit): `-token`, else the environment."""
    env = os.environ
    kind = args.type or env.get("DEPLOYER_ALERT_TYPE") or ("dingtalk" if args.token else "")
    if kind not in CHANNEL_TYPES:
        return None
    fields = CHANNEL_TYPES[kind].fields
    named = {f.key: f.env for f in fields}  # DEPLOYER_ALERT_TOKEN, ..._SECRET, ..._ENDPOINT
    channel = received("inline", kind, lambda key: getattr(args, key, None) or env.get(named[key], ""),
                       lambda key: (args.token if key == "token" else "") or env.get(named[key], ""))
    # Without its credential no channel can be told (a missing argument fails at delivery, logged).
    return None if any(f.required and f.secret and not channel.value(f.key) for f in fields) else channel


if __name__ == "__main__":
    sys.exit(main())
