"""The host reads' fixtures (tests/data/host_reads/<read>/<case>.json, as pyinfra's tests/facts/):
what was asked (`command`: argv, D-Bus call or state file), the host's raw answer (`output`), and
what the real parser makes of it (`parsed`). Recorded on a real cron host by
tests/record_host_reads.py; replayed here through the real boundary (`Systemd` with its processes'
and PID 1's answers replaced by the recorded bytes) and the real parsers.

One format for every read (tests/data/watch/ has the first of them):
  {"read": READS key, "recorded": "systemd 252 (...)" or false (hand-written),
   "command": [argv...] | {"dbus": ..., "units": [...], "properties": [...]} | {"file": path},
   "output": stdout as text; D-Bus: base64 of every byte PID 1 sent; a state file: its text (null: absent),
   "returncode": N (where the parser looks at it), "more": [later calls of the same read],
   "parsed": the parsed value in JSON form (dataclasses as objects, tuples as lists)}
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import subprocess
import tempfile
from pathlib import Path

from deployer.contract import paths, protocol
from deployer.host import agent, dbus, journal, metrics, state, systemctl, trigger as cli, watch

DATA = Path(__file__).parent / "data" / "host_reads"


def jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


# -- replaying the host's answers through the real boundary -------------------------------------

class _Stdout:
    """A process's stdout: iterated by lines (journal_entries), or a file descriptor (follow)."""

    def __init__(self, data: bytes):
        self.data = data
        self.file = None

    def __iter__(self):
        return iter(self.data.splitlines(keepends=True))

    def fileno(self):
        if self.file is None:
            self.file = tempfile.TemporaryFile()
            self.file.write(self.data)
            self.file.seek(0)
        return self.file.fileno()


class _Process:
    def __init__(self, answer, text):
        self.answer, self.text = answer, text
        self.stdout = _Stdout((answer.get("output") or "").encode("utf-8", "surrogateescape"))
        self.returncode = answer.get("returncode", 0)

    def communicate(self, *args, **kwargs):
        output = self.answer.get("output") or ""
        return (output if self.text else output.encode("utf-8", "surrogateescape")), None

    def kill(self):
        pass

    def wait(self, *args, **kwargs):
        if self.stdout.file is not None:
            self.stdout.file.close()
        return self.returncode


class _Socket:
    def __init__(self, data: bytes):
        self.data = data

    def recv(self, size):
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def sendall(self, data):
        pass

    def close(self):
        pass


@contextlib.contextmanager
def replaying(fixture):
    """The real boundary, its processes and PID 1's socket answering from `fixture` (and its
    `more`), in order. Yields the commands the code under test gave, to compare with the recorded."""
    answers = [fixture] + list(fixture.get("more", []))
    given = []

    def next_answer(command):
        given.append(command)
        if not answers:
            raise AssertionError("a call the fixture did not record: %r" % (command,))
        return answers.pop(0)

    class Subprocess:
        PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL

        @staticmethod
        def run(args, **kwargs):
            answer = next_answer(list(args))
            return subprocess.CompletedProcess(list(args), answer.get("returncode", 0), answer.get("output") or "",
                                               answer.get("stderr", ""))

        @staticmethod
        def Popen(args, **kwargs):  # noqa: N802 (subprocess's name)
            return _Process(next_answer(list(args)), kwargs.get("universal_newlines") or kwargs.get("text"))

    class Connection(dbus.Connection):
        def __init__(self, *args, **kwargs):
            answer = next_answer({"dbus": "Get"})
            self.sock = _Socket(base64.b64decode(answer["output"]))
            self.buffer, self.deadline = b"", None
            if not self._line().startswith(b"OK "):
                raise dbus.DBusError("PID 1 refused the authentication")

    saved = systemctl.subprocess, dbus.Connection
    systemctl.subprocess, dbus.Connection = Subprocess, Connection
    try:
        yield given
    finally:
        systemctl.subprocess, dbus.Connection = saved


def _argv(fixture):
    return list(fixture["command"])


def _entries(fixture):
    """The journal entries a read got (Systemd.journal_entries, replayed), and its arguments."""
    argv = _argv(fixture)
    args = argv[argv.index("json") + 1:]
    with replaying(fixture) as given:
        entries = systemctl.Systemd().journal_entries(args)
    assert given == [argv], "the read's command changed: record again (python -m tests.record_host_reads)"
    return entries, args


# -- one replay per read: fixture -> the parsed value (JSON form) ---------------------------------

def replay_show(fixture):
    argv = _argv(fixture)
    properties, units = argv[3].split(",")[1:], argv[4:]
    with replaying(fixture) as given:
        shown = systemctl.Systemd().show(units, properties)
    assert given == [argv]
    return shown


def replay_is_active(fixture):
    """`systemctl is-active UNITS`: one state a line (Systemd.wait_active's read, and the agent's
    after a stop): the states, and what wait_active reports and decides of them."""
    argv = _argv(fixture)
    units = argv[2:]
    reported = []
    with replaying(dict(fixture, more=[fixture])):
        states = systemctl.Systemd().systemctl(*argv[1:], check=False)[1].split()
        try:
            systemctl.Systemd().wait_active(units, timeout=0, report=lambda *counts: reported.append(list(counts)))
            error = None
        except protocol.AgentError as failure:
            error = str(failure)
    return {"states": dict(zip(units, states)), "wait_active": {"reported": reported, "error": error}}


def replay_properties(fixture):
    command = fixture["command"]
    with replaying(fixture) as given:
        shown = systemctl.Systemd().properties(command["units"], command["properties"])
    assert given == [{"dbus": "Get"}]
    return shown


def replay_verify(fixture):
    """A first call asks whether a mount namespace may hide timers.target.wants (systemctl.py)."""
    commands = [fixture["command"]] + [more["command"] for more in fixture.get("more", [])]
    last = commands[-1]
    units = last[len(last) - last[::-1].index("--"):]  # after verify's own `--`
    with replaying(fixture) as given:
        complaints = systemctl.Systemd().verify(units)
    assert given == commands
    return complaints


def replay_follow(fixture):
    """`journalctl -f`'s lines as `deployer logs -f` streams them (agent.follow_lines)."""
    argv = _argv(fixture)
    lines = []
    host = agent.Host(layout=paths.Layout(), systemd=systemctl.Systemd(), emit=lambda line: lines.append(line))
    with replaying(fixture):
        follower = host.systemd.follow(argv[argv.index("json") + 1:])
        agent.follow_lines(host, follower)
        follower.wait()
    return lines


def replay_logs(fixture):
    """`deployer logs JOB -n N` (agent.op_logs: journal_entries, format_entry)."""
    argv = _argv(fixture)
    args = argv[argv.index("json") + 1:]
    job = paths.job_of_unit(args[args.index("-u") + 1])
    lines = int(args[args.index("-n") + 1]) if "-n" in args else None
    with replaying(fixture) as given:
        answer = agent.op_logs(agent.Host(layout=paths.Layout(), systemd=systemctl.Systemd()),
                               protocol.LogsRequest(job, lines=lines))
    assert given == [argv]
    return answer.output.splitlines()


def replay_runs(fixture):
    entries, _ = _entries(fixture)
    return journal.runs_from_journal(entries)


def replay_interrupted(fixture):
    entries, _ = _entries(fixture)
    return journal.interrupted_runs(entries)


def replay_failed_runs(fixture):
    argv = _argv(fixture)
    args = argv[argv.index("json") + 1:]
    unit = next((a[len("UNIT="):] for a in args if a.startswith("UNIT=")), None)
    since = next((int(a[len("--since=@"):]) for a in args if a.startswith("--since=@")), None)
    with replaying(fixture) as given:
        runs = journal.journal_failed_runs(systemctl.Systemd(), unit, since=since)
    assert given == [argv]
    # The same lines, read as a file of them (parse_failed_runs), give the same runs.
    assert journal.parse_failed_runs((fixture["output"] or "").splitlines()) == runs
    return runs


def replay_run_account(fixture):
    argv = _argv(fixture)
    invocation = argv[-1][len("INVOCATION_ID="):]
    last = fixture.get("last", 20)
    with replaying(fixture) as given:
        account = journal.run_account(systemctl.Systemd(), invocation, last)
    assert given == [argv]
    return account


def replay_records(fixture):
    argv = _argv(fixture)
    cursor = next((a[len("--after-cursor="):] for a in argv if a.startswith("--after-cursor=")), "")
    with replaying(fixture) as given:
        records, last = journal.read_records(systemctl.Systemd(), cursor)
    assert given[0] == argv
    return {"records": records, "cursor": last, "positions": [journal.Position.of(r.cursor) for r in records]}


def replay_audit(fixture):
    argv = _argv(fixture)
    since = next(int(a[len("--since=@"):]) for a in argv if a.startswith("--since=@"))
    with replaying(fixture) as given:
        entries = journal.audit_entries(systemctl.Systemd(), since)
    assert given == [argv]
    return entries


def replay_last_push(fixture):
    with replaying(fixture) as given:
        pushed = journal.last_push(systemctl.Systemd())
    assert given == [_argv(fixture)]
    return pushed


def replay_watch(fixture):
    """watch.read_facts: the watched jobs' properties (one D-Bus read) -> Facts; the host was not
    held, and no timer paused, when recorded."""
    command = fixture["command"]
    watched = [watch.Watched(**w) for w in command["watched"]]
    with tempfile.TemporaryDirectory() as root, replaying(fixture) as given:
        layout = paths.Layout(root)
        os.makedirs(layout.at(paths.HOLD_RUN_DIR))
        Path(layout.not_held).write_text("")
        facts = watch.read_facts(systemctl.Systemd(), watched, layout)
    assert given == [{"dbus": "Get"}]
    return facts


@contextlib.contextmanager
def _state_file(fixture, inside):
    """The recorded state file at its place under a temporary root (absent when `output` is null)."""
    with tempfile.TemporaryDirectory() as root:
        layout = paths.Layout(root)
        path = layout.at(inside)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if fixture["output"] is not None:
            Path(path).write_bytes(fixture["output"].encode("utf-8", "surrogateescape"))
        yield layout, path


def replay_state_document(fixture):
    """The agent's root-owned state files (held.json, lease.json, owner.json), as HostState reads
    them (the typed value as JSON)."""
    inside = fixture["command"]["file"]
    with _state_file(fixture, inside) as (layout, _):
        host_state = state.HostState(layout)
        value = {"held.json": host_state.read_held, "lease.json": host_state.read_lease,
                 "owner.json": host_state.read_owner}[os.path.basename(inside)]()
        return None if value is None else protocol.to_json(value)


def replay_metrics_state(fixture):
    with _state_file(fixture, fixture["command"]["file"]) as (_, path):
        return metrics.read_state(path)


def replay_watch_state(fixture):
    with _state_file(fixture, fixture["command"]["file"]) as (_, path):
        return watch.load_state(path)


def replay_through(fixture):
    """A timer run's through.json, as the job's next run takes it (cli.take_through); the unit's
    end (the `ended` file's mtime) is not part of the recording."""
    with _state_file(fixture, fixture["command"]["file"]) as (_, path):
        return cli.take_through(path)


@dataclasses.dataclass(frozen=True)
class Read:
    replay: object
    # The boundary methods and parsers a replay of this read goes through (the completeness test).
    through: tuple


READS = {
    "systemctl.show": Read(replay_show, ("Systemd.show", "Systemd.systemctl", "Systemd.run", "systemctl.parse_show")),
    "systemctl.is-active": Read(replay_is_active, ("Systemd.systemctl", "Systemd.wait_active")),
    "systemctl.properties": Read(replay_properties, ("Systemd.properties", "dbus.Connection.get_properties",
                                                     "dbus.parse_message", "dbus.message_length",
                                                     "systemctl.show_text")),
    "systemctl.verify": Read(replay_verify, ("Systemd.verify",)),
    "systemctl.follow": Read(replay_follow, ("Systemd.follow", "journal.format_entry", "journal.entry_text")),
    "agent.op_logs": Read(replay_logs, ("Systemd.journal_entries", "journal.format_entry", "journal.entry_text")),
    "journal.runs_from_journal": Read(replay_runs, ("Systemd.journal_entries", "journal.runs_from_journal",
                                                    "journal.killed_reason", "journal.signal_name",
                                                    "journal.entry_text")),
    "journal.interrupted_runs": Read(replay_interrupted, ("Systemd.journal_entries", "journal.interrupted_runs")),
    "journal.journal_failed_runs": Read(replay_failed_runs, ("Systemd.journal_entries", "journal.journal_failed_runs",
                                                             "journal.failed_runs", "journal.parse_failed_runs")),
    "journal.run_account": Read(replay_run_account, ("Systemd.journal_entries", "journal.run_account")),
    "journal.read_records": Read(replay_records, ("Systemd.run", "Systemd.journal_read", "journal.read_records",
                                                  "journal.Position.of")),
    "journal.audit_entries": Read(replay_audit, ("Systemd.journal_entries", "journal.audit_entries")),
    "journal.last_push": Read(replay_last_push, ("Systemd.journal_entries", "journal.last_push")),
    "watch.read_facts": Read(replay_watch, ("Systemd.properties", "watch.read_facts")),
    "state.agent": Read(replay_state_document, ("state.HostState.read_held", "state.HostState.read_lease",
                                                "state.HostState.read_owner")),
    "state.metrics": Read(replay_metrics_state, ("metrics.read_state",)),
    "state.watch": Read(replay_watch_state, ("watch.load_state",)),
    "state.through": Read(replay_through, ("cli.take_through",)),
}


def parse(fixture):
    """The fixture's raw output through the real parser, in JSON form (as `parsed` holds it)."""
    return json.loads(json.dumps(jsonable(READS[fixture["read"]].replay(fixture))))


def load_fixtures():
    """[(read, case, fixture)] of every fixture file."""
    return [(path.parent.name, path.stem, json.loads(path.read_text()))
            for path in sorted(DATA.glob("*/*.json"))]


# -- from the probe's calls to fixtures (tests/record_host_reads.py) ------------------------------

def _is_journal(call, *words):
    command = call.get("command") or []
    return command[:1] == ["journalctl"] and all(any(w in c for c in command) for w in words)


def fixtures_from_calls(calls, recorded_on):
    """The probe's calls (tests/host_reads_probe.py) -> {(read, case): fixture without `parsed`}."""
    found, properties = {}, None

    def add(read, case, call, **extra):
        fixture = {"read": read, "recorded": "%s, on a cron host of tests/cronhost.py (tests/record_host_reads.py)"
                   % recorded_on, "command": call["command"], "output": call.get("output")}
        if "returncode" in call and read in ("systemctl.verify", "journal.read_records"):
            fixture["returncode"] = call["returncode"]
        fixture.update(extra)
        key = (read, case)
        if key in found:  # a second call of the same read: a continuation (read_records' re-read)
            found[key].setdefault("more", []).append({k: fixture[k] for k in ("command", "output", "returncode")
                                                      if k in fixture})
        else:
            found[key] = fixture

    for call in calls:
        label, kind = call["label"], call["kind"]
        head, _, tail = label.partition(":")
        if kind == "properties":
            properties = call
            continue
        if kind == "dbus":
            command = {"dbus": "org.freedesktop.DBus.Properties.Get, pipelined on " + dbus.PRIVATE_SOCKET,
                       "units": properties["units"], "properties": properties["properties"]}
            dbus_call = {"command": command, "output": call["received"]}
            if head == "watch":
                units = properties["units"]
                command["watched"] = [dict(job=paths.job_of_unit(u), channel="ops", late=300, long=1800,
                                           calendar=CALENDAR_OF.get(paths.job_of_unit(u), []))
                                      for u in units if u.endswith(".timer")]
                add("watch.read_facts", "jobs", dbus_call)
            else:
                case = tail or head
                if head == "status":
                    case = "status-" + ("timers" if properties["units"][0].endswith(".timer") else
                                        "running" if properties["properties"] == ["StatusText"] else "services")
                add("systemctl.properties", case, dbus_call)
            continue
        if kind == "file":
            read = {"metrics": "state.metrics", "watch": "state.watch", "through": "state.through"}.get(head,
                                                                                                     "state.agent")
            add(read, label.replace(":", "-"), {"command": {"file": call["path"]}, "output": call.get("output")})
            continue
        if kind == "error":
            continue
        if head == "status" and _is_journal(call, "ACTION=push"):
            add("journal.last_push", "status", call)
        elif head == "status":
            add("journal.runs_from_journal", "status-last-runs", call)
        elif head == "history":
            add("journal.runs_from_journal", "history-" + tail, call)
        elif head == "logs":
            add("agent.op_logs", tail, call)
        elif head == "audit":
            add("journal.audit_entries", "all", call)
        elif head == "last-push":
            continue  # the same read as status's
        elif head == "show":
            add("systemctl.show", tail, call)
        elif head == "is-active":
            add("systemctl.is-active", "timers-and-a-unit-that-does-not-exist", call)
        elif head == "verify":
            add("systemctl.verify", tail, call)
        elif head == "failed-runs":
            add("journal.journal_failed_runs", tail, call)
        elif head == "run-account":
            add("journal.run_account", tail, call)
        elif head == "records":
            add("journal.read_records", tail, call)
        elif head == "interrupted":
            add("journal.interrupted_runs", "this-boot", call)
        elif head == "follow" and kind == "follow":  # (the process's own call read nothing: the probe reads it)
            add("systemctl.follow", tail, call)
    return found


CALENDAR_OF = {}  # set by the recorder: job -> its timer's calendar lines


def write_fixtures(found):
    """Write each fixture with its `parsed` (replayed now); a read's recorded fixtures that this
    recording has no more are removed, hand-written ones (`"recorded": false`) kept."""
    written = []
    for read in {read for read, _ in found}:
        for old in (DATA / read).glob("*.json"):
            if json.loads(old.read_text()).get("recorded") is not False:
                old.unlink()
    for (read, case), fixture in sorted(found.items()):
        fixture["parsed"] = parse(fixture)
        path = DATA / read / (case + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    return written
