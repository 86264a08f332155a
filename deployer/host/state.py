"""The cron host's own state files, each read and written in one place (stdlib only, python3 >= 3.7).

The push lock, the switch journal, which [host:NAME] this machine serves (owner), the lease, the
hold (held, the hold a boot could not record, the boot's "not held"), paused and fenced timers,
the takeovers: `HostState(layout)` is their one reader and one writer, with typed values (frozen
dataclasses, protocol.Held for the hold). A read never follows a link; a write is whole or not at all
(write_atomically). The agent (root) writes them; the agent, the alert sweep (the alert units'
dynamic user: the world-readable files only), the watcher and the metrics collector read them
here. The bytes written are those of the versions before this module (tests/test_state.py pins
them): a host upgraded in either direction reads what the other wrote. What the agent does with
them (systemctl, the timers' stamps, playing a switch) stays in agent.Host.
"""
import contextlib
import fcntl
import json
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from deployer.contract import paths, protocol
from deployer.contract.protocol import AgentError, Held, Takeover

# How long a push waits for another to release the lock (the agent passes its own, which tests shorten).
LOCK_WAIT_SECONDS = 60
# The takeovers kept in paths.TAKEOVERS (the newest).
TAKEOVERS_KEPT = 50


@dataclass(frozen=True)
class Owner:
    """owner.json: the [host:NAME] whose jobs this machine runs (one machine serves one host)."""

    host: str


@dataclass(frozen=True)
class Lease:
    """lease.json: renewed (unix time) by the lease timer every `seconds`/3 while the host is up."""

    renewed: float
    seconds: float


@dataclass(frozen=True)
class Journal:
    """A switch, written before it starts: every step may be repeated, so an interrupted switch
    is finished by playing it again (agent.Host.roll_forward)."""

    disable: Tuple[str, ...] = ()
    restamp: Tuple[str, ...] = ()
    forget: Tuple[str, ...] = ()
    stopped_at: float = 0.0
    stamps: Dict[str, float] = field(default_factory=dict)
    renames: Tuple[Tuple[str, str], ...] = ()
    removes: Tuple[str, ...] = ()
    unpause: Tuple[str, ...] = ()
    reload: bool = False
    enable: Tuple[str, ...] = ()
    start: Tuple[str, ...] = ()


def journal_to_json(journal):
    return json.dumps(protocol.to_json(journal))


def journal_from_json(text):
    return protocol.from_json(Journal, json.loads(text))


@dataclass(frozen=True)
class TakenOver:
    """One entry of takeovers.json: a `deployer move` that installed an unreachable host's jobs here."""

    takeover: Takeover
    at: float  # unix time


class Corrupt(AgentError):
    """A state file that cannot be read (corrupt_state): the message names the file and the way
    out; `detail` says only what is wrong with it."""

    def __init__(self, message, detail):
        super().__init__(protocol.CORRUPT_STATE, message)
        self.detail = detail


# -- one reader, one writer -------------------------------------------------------------------

def read_document(path, shown, what, recovery):
    """A state file as a JSON object, None when absent; never through a link. Anything unreadable
    is an AgentError (corrupt_state) naming the file (`shown`), what it is, and the way out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise Corrupt("%s (%s) cannot be opened: %s (a symbolic link?). %s" % (shown, what, error.strerror, recovery),
                      "%s (a symbolic link?)" % error.strerror)
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read()
    try:
        document = json.loads(raw.decode("utf-8"))
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return document
    except ValueError as error:
        detail = "empty" if not raw.strip() else str(error)
        raise Corrupt("%s (%s) is corrupt (%s). %s" % (shown, what, detail, recovery), detail)


def write_atomically(path, text, mode=0o600):
    """Write a state file whole or not at all; never through a link, never another's file.
    -> the inode written (a writer racing this one may have put its own file in place)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    temporary = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a leftover of a crash (unlink removes a link, not its target)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            written = os.fstat(handle.fileno()).st_ino
        os.rename(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)  # no partial file left behind (a full disk)
        raise
    return written


def read_held_file(path, shown, what, way_out):
    """A hold file (paths.HELD or paths.HELD_RUN) -> Held, None when absent. Unreadable: an
    AgentError (corrupt_state) that says the host holds its jobs and how to end the hold."""
    document = read_document(path, shown, what, way_out)
    if document is None:
        return None
    try:
        return protocol.from_json(Held, document)
    except protocol.ProtocolError as error:
        raise Corrupt("%s is corrupt (%s): the host holds its jobs; %s" % (shown, error.message, way_out),
                      error.message)


def held_text(held):
    return json.dumps(protocol.to_json(held))


def _names(directory):
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


def _touch(directory, name):
    os.makedirs(directory, exist_ok=True)
    os.close(os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))


def _remove(directory, name):
    path = os.path.join(directory, name)
    if os.path.lexists(path):
        os.unlink(path)


def job_timers(layout):
    """The job timers installed here (files; whatever systemd thinks of them)."""
    try:
        names = os.listdir(layout.unit_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(".timer") and paths.job_of_unit(n) is not None)


@dataclass(frozen=True)
class HostState:
    """The state files under `layout`. `host`: the [host:NAME] the caller acts for (named in the
    ways out); `write`: the atomic write every file goes through (the agent passes its own);
    `lock_wait`: seconds a push waits for the lock."""

    layout: paths.Layout
    host: str = "?"
    write: Callable = write_atomically
    lock_wait: float = LOCK_WAIT_SECONDS

    def shown(self, path):
        return self.layout.to_host(path)

    # -- the lock ---------------------------------------------------------------------------

    def private_dir(self, directory, mode=0o700):
        """`directory`, created if missing, checked to be a real directory owned by us and not
        writable by others: no local user can plant a link in it or hold a file there."""
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            pass
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise AgentError(protocol.CORRUPT_STATE, "%s is not a directory owned by root (a link, or planted "
                             "by another user?): remove it and run the command again" % self.shown(directory))
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(directory, mode)
        return directory

    @contextlib.contextmanager
    def locked(self):
        """Serialise pushes: a second one waits, then gives up with a clear message. The lock
        lives in root's own 0700 directory and is opened without following links or truncating."""
        lock = os.path.join(self.private_dir(self.layout.run_dir), os.path.basename(self.layout.lock))
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise AgentError(protocol.CORRUPT_STATE, "cannot open the lock %s (%s): remove it and run the "
                             "command again" % (self.shown(lock), error.strerror))
        try:
            deadline = time.monotonic() + self.lock_wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise AgentError(protocol.LOCKED, "another push holds %s for over %ds"
                                         % (self.shown(lock), self.lock_wait))
                    time.sleep(0.2)
            yield
        finally:
            os.close(fd)

    # -- pending-switch.json: the switch journal ---------------------------------------------

    def switch_pending(self):
        return os.path.exists(self.layout.journal)

    def read_journal(self) -> Optional[Journal]:
        """The switch a crash or a kill interrupted, None when none was."""
        shown = self.shown(self.layout.journal)
        recovery = ("An interrupted push cannot be finished from it: move it aside (mv %s %s.broken), run "
                    "`deployer push`, and check `systemctl list-timers 'deployer-*'`" % (shown, shown))
        document = read_document(self.layout.journal, shown, "the switch journal", recovery)
        if document is None:
            return None
        try:
            return protocol.from_json(Journal, document)
        except protocol.ProtocolError as error:
            raise Corrupt("%s (the switch journal) is corrupt (%s). %s" % (shown, error.message, recovery),
                          error.message)

    def write_journal(self, journal: Journal):
        """Written before the switch starts: from here on, the new set is the host's."""
        self.write(self.layout.journal, journal_to_json(journal), 0o600)

    def clear_journal(self):
        """The switch is done."""
        os.unlink(self.layout.journal)

    # -- owner.json -------------------------------------------------------------------------

    def read_owner(self) -> Optional[Owner]:
        shown = self.shown(self.layout.owner)
        recovery = "Remove it (rm %s): the next push writes it again" % shown
        document = read_document(self.layout.owner, shown, "which [host:NAME] this machine serves", recovery)
        if document is None:
            return None
        if not isinstance(document.get("host"), str):
            raise Corrupt("%s (which [host:NAME] this machine serves) is corrupt (no host name). %s"
                          % (shown, recovery), "no host name")
        return Owner(host=document["host"])

    def write_owner(self, owner: Owner):
        self.write(self.layout.owner, json.dumps({"host": owner.host}), 0o600)

    def check_owner(self):
        """One machine serves one [host:NAME]: another host's jobs must never land here."""
        owner = self.read_owner()
        if owner and owner.host != self.host:
            raise AgentError(protocol.WRONG_OWNER, "this machine runs the jobs of host %r; refusing to install "
                             "host %r's jobs here. Check the address in the inventory, or hand the jobs over "
                             "with `deployer move`" % (owner.host, self.host))

    # -- paused/ and fenced/: one empty file per timer ----------------------------------------

    def paused(self):
        """The timers paused here (`deployer pause`, or stopped by a fence)."""
        return _names(self.layout.paused_dir)

    def fenced(self):
        """Timers this host stopped because their service fenced it (a newer owner holds them)."""
        return _names(self.layout.fenced_dir)

    def pause(self, timer):
        _touch(self.layout.paused_dir, timer)

    def unpause(self, timer):
        _remove(self.layout.paused_dir, timer)

    def fence(self, timer):
        """Paused, and marked fenced: the fence marker last (the job's service has
        ConditionPathExists=! on it, so no run starts once it exists)."""
        self.pause(timer)
        _touch(self.layout.fenced_dir, timer)

    def unfence(self, timers):
        """Jobs granted to this host again: each fence (and the pause that kept it) ends."""
        for timer in timers:
            if os.path.lexists(os.path.join(self.layout.fenced_dir, timer)):
                _remove(self.layout.fenced_dir, timer)
                self.unpause(timer)

    # -- lease.json -------------------------------------------------------------------------

    def read_lease(self) -> Optional[Lease]:
        """The lease, None when none was ever written; unreadable: an AgentError (corrupt_state)."""
        shown = self.shown(self.layout.lease)
        document = read_document(self.layout.lease, shown, "the lease", "")
        if document is None:
            return None
        try:
            return Lease(renewed=float(document["renewed"]), seconds=float(document["seconds"]))
        except (KeyError, TypeError, ValueError) as error:
            detail = "%s: %s" % (type(error).__name__, error)
            raise Corrupt("%s (the lease) is corrupt (%s)" % (shown, detail), detail)

    def write_lease(self, lease: Lease):
        self.write(self.layout.lease, json.dumps({"renewed": lease.renewed, "seconds": lease.seconds}), 0o644)

    # -- the hold: held.json, /run's held.json and not-held -----------------------------------

    def way_out(self):
        return "`deployer release --host %s` (or a push) removes it" % self.host

    def read_held(self) -> Optional[Held]:
        """Held when this host holds its jobs, else None. Fail closed: a hold file that cannot be
        read still holds (its timers skip while it exists), with the reason."""
        try:
            return read_held_file(self.layout.held, self.shown(self.layout.held), "this host holds its jobs",
                                  self.way_out())
        except AgentError as error:
            return Held(reason=str(error))

    def read_held_at_boot(self) -> Optional[Held]:
        """The hold of a boot check that could not write paths.HELD, or of one that never decided
        (no paths.NOT_HELD while the job timers wait for it; those of older pushes do not)."""
        try:
            held = read_held_file(self.layout.held_run, self.shown(self.layout.held_run), "the hold this boot decided",
                                  self.way_out())
        except AgentError as error:
            return Held(reason=str(error))
        if held is not None:
            return held
        if os.path.exists(self.layout.not_held) or not self.timers_need_a_decision():
            return None
        return Held(reason="the hold check at boot did not decide (see `journalctl -b -u %s` on the host)"
                    % paths.HOLD_UNIT)

    def current_hold(self) -> Optional[Held]:
        """The hold in force: the one on disk, else the one this boot decided (or failed to)."""
        return self.read_held() or self.read_held_at_boot()

    def held_on_disk(self):
        """Whether paths.HELD exists (readable or not): a hold that survives reboots."""
        return os.path.lexists(self.layout.held)

    def timers_need_a_decision(self):
        """Whether the installed job timers wait for paths.NOT_HELD (those of older pushes do not)."""
        condition = "ConditionPathExists=" + paths.NOT_HELD
        for timer in job_timers(self.layout):
            with contextlib.suppress(OSError), open(os.path.join(self.layout.unit_dir, timer), encoding="utf-8") as f:
                if condition in f.read():
                    return True
        return False

    def write_held(self, held: Held):
        self.write(self.layout.held, held_text(held), 0o644)

    def write_held_run(self, held: Held):
        """The hold when paths.HELD could not be written (a read-only or full /var)."""
        self.write(self.layout.held_run, held_text(held), 0o644)

    def mark_not_held(self):
        """The job timers may start (paths.NOT_HELD): the boot check found the lease valid, or a
        push or release confirmed what this host owns."""
        self.write(self.layout.not_held, "", 0o644)

    def clear_hold(self):
        """Remove both hold files; one that cannot be removed is an AgentError (still held)."""
        for marker in (self.layout.held, self.layout.held_run):
            try:
                os.unlink(marker)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise AgentError(protocol.CORRUPT_STATE, "cannot remove %s (%s): the host still holds its jobs; "
                                 "make %s writable and release again"
                                 % (self.shown(marker), error.strerror, os.path.dirname(self.shown(marker))))

    # -- takeovers.json ---------------------------------------------------------------------

    def read_takeovers(self) -> Tuple[TakenOver, ...]:
        """The takeovers recorded here, oldest first; entries that cannot be read are left out.
        Unreadable as a whole: an AgentError (corrupt_state)."""
        shown = self.shown(self.layout.takeovers)
        document = read_document(self.layout.takeovers, shown, "the takeovers recorded here",
                                 "Move it aside (mv %s %s.broken)" % (shown, shown)) or {}
        entries = document.get("takeovers")
        found = []
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict):
                continue
            fields_ = dict(entry)
            at = fields_.pop("at", None)
            try:
                if isinstance(at, bool) or not isinstance(at, (int, float)):
                    raise protocol.ProtocolError(protocol.BAD_REQUEST, "no time")
                found.append(TakenOver(takeover=protocol.from_json(Takeover, fields_), at=at))
            except protocol.ProtocolError:
                continue
        return tuple(found)

    def record_takeover(self, takeover: Takeover, now=None):
        """Append one takeover (the newest TAKEOVERS_KEPT are kept). An unreadable file is
        replaced: a record must not stop the takeover that it records."""
        try:
            kept = list(self.read_takeovers())[-(TAKEOVERS_KEPT - 1):]
        except AgentError:
            kept = []
        entries = kept + [TakenOver(takeover, time.time() if now is None else now)]
        document = {"takeovers": [dict(protocol.to_json(t.takeover), at=t.at) for t in entries]}
        self.write(self.layout.takeovers, json.dumps(document, indent=1), 0o644)
