"""The boundary to systemd on the cron host: every systemctl, systemd-analyze verify and journalctl
process the agent, the alert program and the metrics collector start, and PID 1's properties over
D-Bus (dbus.py), go through `Systemd`. Tests replace it with a recording fake (tests/data/agent).
The trigger's own calendar question (slot.analyze) stays in slot.py: it runs for every slot and
must not import the agent's modules. Standard library only.
"""
from __future__ import annotations

import contextvars
import json
import os
import subprocess
import threading
import time

from deployer.contract import paths, protocol
from deployer.contract.protocol import AgentError
from deployer.host import dbus

# Units per systemctl call: 10,000 in one `stop` or `enable` outlive systemctl's D-Bus timeout.
UNIT_CHUNK = 500
# Units per systemd-analyze verify. Where each unit is checked on its own (OWN_ERRORS_SINCE), a call
# costs 0.14 s before its first unit, then about 0.2 ms a unit, linearly (5,000 units: 1.2 s).
# Older verify also builds each unit's start job with its dependencies: 0.5 ms a unit up to 1,000
# and more beyond (on a 10,000-job host: 150 units 0.25 s, 500 0.44 s, 1,000 0.89 s, 2,000 2.4 s).
# So the units are split evenly over the CPUs, in calls of these sizes.
VERIFY_CHUNK = (150, 2500)
VERIFY_CHUNK_WITH_DEPENDENCIES = (150, 500)


def chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def verify_chunks(unit_paths, workers, sizes=VERIFY_CHUNK):
    """The verify calls for `unit_paths` on `workers` CPUs: as even as `sizes` (low, high) allows."""
    low, high = sizes
    return chunks(list(unit_paths), min(high, max(low, -(-len(unit_paths) // workers))))


class _Beside:
    """`work` (or nothing) in a thread, in the caller's context (where its progress goes), its
    error kept for the caller."""

    def __init__(self, work):
        self.errors, self.thread = [], None
        if work is not None:
            self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run, work),
                                           daemon=True)
            self.thread.start()

    def _run(self, work):
        try:
            work()
        except BaseException as error:  # noqa: B902 (raised again in the caller's thread)
            self.errors.append(error)

    def raise_its_error(self):
        if self.errors:
            raise self.errors[0]

    def wait(self):
        if self.thread is not None:
            self.thread.join()


# `--recursive-errors=no` (systemd 250): verify reports what is wrong in each unit it is given (its
# file, its drop-ins, its slice), and not what is wrong in the units it only names (After=,
# Requires=, OnFailure=). That is what a push needs: every unit it writes is given, and a unit it
# does not write (an operator's target) is not its to refuse. It costs 40% less (500 units:
# 0.27 s, not 0.46 s), grows linearly, and needs no hidden timers.target.wants (below), as no start
# job with its dependencies is built for each unit. Older verify also reports the named units'
# mistakes. Builds of systemd 250-254 without upstream's fix (systemd#29350) abort on the flag at
# the first slice: verify then runs again without it.
OWN_ERRORS_SINCE = 250


def verify_argv(unit_paths, own_errors=True):
    """`--` ends the options: no file name or calendar value is ever read as one (`-h`)."""
    # --man=no: otherwise verify runs `man` for every Documentation= line (15x slower).
    return (["systemd-analyze", "verify", "--man=no"] + (["--recursive-errors=no"] if own_errors else [])
            + ["--"] + list(unit_paths))


def systemd_version(text):
    """`systemd-analyze --version` ("systemd 252 (252.39-1~deb12u2)...") -> 252, or 0."""
    words = text.split()
    return int(words[1]) if len(words) > 1 and words[0] == "systemd" and words[1].isdigit() else 0


# Older verify loads timers.target with any unit it checks (a timer's default dependencies, and
# basic.target's), and with it every timer its .wants directory names: on a host of 10,000 jobs
# one unit took 5.5 s to verify, and a push changing every job took 133 such calls. So verify
# runs in a mount namespace of its own where that directory is an empty tmpfs, which nothing
# else sees: 0.2 s. Where no namespace may be made (a container without CAP_SYS_ADMIN) or the
# directory is not there, verify runs as it is.
TIMERS_WANTS_DIR = paths.UNIT_DIR + "/" + paths.TIMERS_WANTS
_HIDE_THEN_EXEC = 'mount -t tmpfs -o size=16k,mode=0755 deployer-verify "$1" && shift && exec "$@"'


def without_timers_wants_argv(argv):
    """`argv` run where TIMERS_WANTS_DIR is empty."""
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _HIDE_THEN_EXEC, "sh",
            TIMERS_WANTS_DIR] + list(argv)


def parse_show(text):
    """`systemctl show -p Id,...` output -> {unit: {property: value}}."""
    shown, block = {}, {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if block.get("Id"):
                shown[block["Id"]] = block
            block = {}
            continue
        key, _, value = line.partition("=")
        block[key] = value
    return shown


# The properties a status reads, by the D-Bus interface that holds them (Systemd.properties).
BUS_PROPERTIES = {
    "ActiveState": dbus.UNIT_INTERFACE,
    "NextElapseUSecRealtime": dbus.TIMER_INTERFACE, "LastTriggerUSec": dbus.TIMER_INTERFACE,
    "TimersCalendar": dbus.TIMER_INTERFACE,
    "Result": dbus.SERVICE_INTERFACE, "ExecMainStatus": dbus.SERVICE_INTERFACE,
    "ExecMainStartTimestamp": dbus.SERVICE_INTERFACE, "ExecMainExitTimestamp": dbus.SERVICE_INTERFACE,
    "StatusText": dbus.SERVICE_INTERFACE,
    "InvocationID": dbus.UNIT_INTERFACE,  # the watcher's (host/watch.py): which run is going
}


USEC_INFINITY = (1 << 64) - 1  # systemd's "never" (e.g. the next elapse of a stopped timer)


def show_text(name, value):
    """A D-Bus property value as `systemctl show` prints it (times as `@<unix>`, which
    iso_time reads), so that both sources feed job_status alike."""
    if name == "TimersCalendar":
        return " ".join("{ OnCalendar=%s ; next_elapse=%s }" % (spec, show_text("USec", elapse))
                        for _base, spec, elapse in value)
    if name == "InvocationID" and isinstance(value, list):  # `ay`: systemctl prints it as hex
        return bytes(value).hex()
    if isinstance(value, int) and not isinstance(value, bool) and name.endswith(("USec", "Realtime", "Timestamp")):
        return "" if value in (0, USEC_INFINITY) else "@%d" % (value // 1000000)
    return str(value)


# systemctl prints times in the local zone; in UTC they can be parsed without guessing what
# an abbreviation such as CST means.
SYSTEMD_ENV = dict(os.environ, TZ="UTC", LC_ALL="C", SYSTEMD_PAGER="", SYSTEMD_COLORS="0")


class Systemd:
    """Every call to systemctl, systemd-analyze and journalctl: the boundary a test replaces."""

    def run(self, args):
        """-> (returncode, stdout, stderr)"""
        result = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=SYSTEMD_ENV,
                                universal_newlines=True)
        return result.returncode, result.stdout, result.stderr

    def systemctl(self, *args, check=True):
        code, out, err = self.run(("systemctl",) + args)
        if check and code != 0:
            raise AgentError(protocol.SYSTEMD, "systemctl %s: %s" % (" ".join(args[:3]), err.strip()))
        return code, out, err

    def show(self, units, properties):
        """`systemctl show` for many units, UNIT_CHUNK per call -> {unit: {property: value}}."""
        shown = {}
        for chunk in chunks(list(units), UNIT_CHUNK):
            shown.update(parse_show(self.systemctl("show", "-p", ",".join(["Id"] + list(properties)), *chunk)[1]))
        return shown

    def properties(self, units, properties):
        """Like show(), for the properties in BUS_PROPERTIES only, read with one pipelined D-Bus
        conversation (see dbus.py for why not `systemctl show`); show() where PID 1's private
        socket cannot be used."""
        units, properties = list(units), list(properties)
        try:
            with dbus.Connection() as bus:
                values = bus.get_properties((dbus.object_path(u), BUS_PROPERTIES[p], p)
                                            for u in units for p in properties)
        except (dbus.DBusError, OSError):
            return self.show(units, properties)
        shown = {}
        for index, unit in enumerate(units):
            row = values[index * len(properties):(index + 1) * len(properties)]
            shown[unit] = dict({"Id": unit}, **{p: show_text(p, v) for p, v in zip(properties, row) if v is not None})
        return shown

    def verify(self, unit_paths, meanwhile=None, report=lambda done, total: None):
        """systemd-analyze verify on the staged units, in parallel chunks -> complaint lines.
        `meanwhile`: work done in a thread while the calls run (a push writes its other files
        and flushes them); an error it raises stops the calls and is raised here, and nothing
        returns before it has ended. `report(done, total)`: units checked so far."""
        unit_paths = list(unit_paths)
        report(0, len(unit_paths))
        beside = _Beside(meanwhile)
        try:
            code, out, _ = self.run(["systemd-analyze", "--version"])
            if code == 0 and systemd_version(out) >= OWN_ERRORS_SINCE:
                complaints = self._verify_calls(unit_paths, True, False, beside, report)
                if complaints is not None:
                    return complaints
            # Older verify; or one that aborts on --recursive-errors=no (OWN_ERRORS_SINCE), checked again.
            hidden = self.run(without_timers_wants_argv(["true"]))[0] == 0
            return self._verify_calls(unit_paths, False, hidden, beside, report)
        finally:
            beside.wait()
            beside.raise_its_error()

    def _verify_calls(self, unit_paths, own_errors, hidden, beside, report):
        """The calls of verify() -> complaint lines, or None when a call checking each unit on its
        own was killed by a signal (that systemd aborts on the flag)."""
        complaints, running, checked = [], [], 0
        workers = max(os.cpu_count() or 1, 1)
        sizes = VERIFY_CHUNK if own_errors else VERIFY_CHUNK_WITH_DEPENDENCIES
        try:
            for chunk in verify_chunks(unit_paths, workers, sizes) + [None] * workers:
                beside.raise_its_error()
                if chunk is not None:
                    argv = verify_argv(chunk, own_errors)
                    argv = without_timers_wants_argv(argv) if hidden else argv
                    running.append((len(chunk), subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                                 stderr=subprocess.STDOUT, universal_newlines=True,
                                                                 env=SYSTEMD_ENV)))
                while running and (chunk is None or len(running) >= workers):
                    size, process = running[0]
                    output = process.communicate()[0]
                    running.pop(0)
                    if own_errors and process.returncode < 0:
                        return None
                    lines = [line for line in output.splitlines() if line.strip()]
                    if process.returncode != 0 or lines:
                        complaints += lines or ["exit status %d" % process.returncode]
                    checked += size
                    report(checked, len(unit_paths))
                    if chunk is not None:
                        break
        finally:
            for _, process in running:
                process.kill()
                process.wait()
        return complaints

    def journal_entries(self, args, stop=None, limit=None):
        """`journalctl -o json ARGS` -> entries, read as they come: `stop(entry)` true, or `limit`
        entries, ends the read (and journalctl) early."""
        process = subprocess.Popen(["journalctl", "--no-pager", "-q", "-o", "json"] + list(args),
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=SYSTEMD_ENV)
        entries = []
        try:
            for line in process.stdout:
                try:
                    entry = json.loads(line.decode("utf-8", "replace"))
                except ValueError:
                    continue
                entries.append(entry)
                if (stop is not None and stop(entry)) or (limit and len(entries) >= limit):
                    break
        finally:
            process.kill()
            process.wait()
        return entries

    def journal_read(self, args):
        """`journalctl -o json ARGS` whole -> (exit status, stdout): for a read that must know
        whether journalctl refused it (a cursor of a journal that is gone)."""
        code, out, _ = self.run(["journalctl", "--no-pager", "-o", "json"] + list(args))
        return code, out

    def follow(self, args):
        """`journalctl -f -o json ARGS` as a running process (its stdout: one entry per line)."""
        return subprocess.Popen(["journalctl", "--no-pager", "-q", "-f", "-o", "json"] + list(args),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=SYSTEMD_ENV)

    def wait_active(self, units, timeout=60, report=lambda active, total: None):
        """Until every unit is active; `report(active, total)` when the count moved."""
        deadline = time.monotonic() + timeout
        reported = -1
        while True:
            states = self.systemctl("is-active", *units, check=False)[1].split()
            pending = [u for u, state in zip(units, states) if state != "active"]
            if len(units) - len(pending) != reported:
                reported = len(units) - len(pending)
                report(reported, len(units))
            if not pending:
                return
            if time.monotonic() > deadline or any(s == "failed" for s in states):
                raise AgentError(protocol.SYSTEMD, "timers did not start: %s" % ", ".join(pending[:5]))
            time.sleep(0.05)
