"""The audit trail: one structured journal entry per action the agent takes for an operator
(push, move's hand-over, pause, resume, release, manual run, stop, alert test), saying who and from where.

The client says who it is (protocol.Actor: its local user, host name, the inventory's sha256
and git commit); the host adds what it knows itself and a client cannot choose: the SSH user
(sudo's caller under sudo) and the SSH client's address. `journalctl MESSAGE_ID=<AUDIT>` on the
host lists them; `deployer audit` reads them through journal.audit_entries. Standard library only.

What it is worth: the agent runs as root, and journald stamps its entries `_UID=0`, which the
readers require, so a local user without root cannot forge one. An operator with root on the
host (every one: the agent needs it) can write any journal entry: the trail records honest
operators' actions, it is no proof against a root who lies.
"""
from __future__ import annotations

import os
import pwd
import re

from deployer.contract import protocol
from deployer.contract.paths import JOURNAL_SOCKET
from deployer.contract.record import send_fields

# `journalctl MESSAGE_ID=...` finds every audited action.
AUDIT = "8e1f5c2a6b7d4c0e9a3f1b2d4c6e8a01"
# The agent runs as root: an entry from another sender is forged (any local user can send one).
ROOT_UID = "0"
ACTIONS = ("push", "handoff", "pause", "resume", "release", "run", "stop", "alert_test")
OUTCOMES = ("ok",) + protocol.ERROR_CODES + ("error",)
MAX_TEXT = 200  # a client-supplied text field, in characters
PREFIX = "DEPLOYER_AUDIT_"
# Every field an entry carries, for the readers' --output-fields=.
FIELDS = tuple(PREFIX + name for name in (
    "TIME", "ACTION", "OUTCOME", "TARGET", "DETAIL", "HOST", "SSH_USER", "SSH_FROM", "USER", "CLIENT",
    "COMMAND", "INVENTORY_SHA256", "COMMIT", "DIRTY"))
_HEX40, _HEX64 = re.compile(r"^[0-9a-f]{40}$"), re.compile(r"^[0-9a-f]{64}$")


def one_line(text, limit=MAX_TEXT) -> str:
    """A client's or a request's text as one bounded line (escaped again where it is shown)."""
    return " ".join(str(text or "").split())[:limit]


def clean_actor(actor: protocol.Actor) -> protocol.Actor:
    """The client's word, bounded: one line each, digests only when they are digests."""
    return protocol.Actor(user=one_line(actor.user), client=one_line(actor.client), command=one_line(actor.command),
                          inventory_sha256=actor.inventory_sha256 if _HEX64.match(actor.inventory_sha256) else "",
                          commit=actor.commit if _HEX40.match(actor.commit) else "", dirty=bool(actor.dirty))


def _ancestors(pid, proc="/proc", depth=12):
    """`pid`'s parent, its parent... (up to `depth`, never PID 1)."""
    for _ in range(depth):
        try:
            with open(os.path.join(proc, str(pid), "stat"), "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            return
        if pid <= 1:
            return
        yield pid


def _environ_value(pid, name, proc="/proc"):
    try:
        with open(os.path.join(proc, str(pid), "environ"), "rb") as handle:
            block = handle.read()
    except OSError:
        return None
    for item in block.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key.decode("ascii", "replace") == name:
            return value.decode("utf-8", "replace")
    return None


def ssh_origin(environ=None, proc="/proc", pid=None, uid=None):
    """(SSH user, SSH client address) as this host knows them. The user: sudo's caller under
    sudo (SUDO_USER, set by sudo), else the login's own. The address: the first field of
    SSH_CONNECTION, which sshd sets for the session; sudo drops it from the agent's environment,
    so it is read from the nearest ancestor (the login's shell) that has it. ("", "") where
    there is no SSH session (a test running the agent in-process)."""
    environ = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    user = environ.get("SUDO_USER", "") if uid == 0 else ""
    if not user:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
    connection = environ.get("SSH_CONNECTION")
    if connection is None:
        for ancestor in _ancestors(os.getpid() if pid is None else pid, proc):
            connection = _environ_value(ancestor, "SSH_CONNECTION", proc)
            if connection is not None:
                break
    return one_line(user), one_line((connection or "").split(" ")[0], 64)


def journal_fields(entry: protocol.AuditEntry) -> dict:
    """The entry as journal fields: a readable MESSAGE and one DEPLOYER_AUDIT_* field per fact."""
    actor = entry.actor
    who = "%s@%s" % (actor.user or "?", actor.client or "?")
    what = entry.action + (" " + entry.target if entry.target else "")
    message = "deployer %s: %s by %s (ssh %s from %s)%s" % (
        entry.outcome if entry.outcome != "ok" else "audit", what, who, entry.ssh_user or "?",
        entry.ssh_from or "?", ", commit %s%s" % (actor.commit[:12], " (dirty)" if actor.dirty else "")
        if actor.commit else "")
    return {
        "MESSAGE": message,
        "MESSAGE_ID": AUDIT,
        "PRIORITY": "5",  # notice: an operator changed something
        PREFIX + "TIME": "%.3f" % entry.time,
        PREFIX + "ACTION": entry.action,
        PREFIX + "OUTCOME": entry.outcome,
        PREFIX + "TARGET": one_line(entry.target),
        PREFIX + "DETAIL": one_line(entry.detail, 1000),
        PREFIX + "HOST": one_line(entry.host),
        PREFIX + "SSH_USER": entry.ssh_user,
        PREFIX + "SSH_FROM": entry.ssh_from,
        PREFIX + "USER": actor.user,
        PREFIX + "CLIENT": actor.client,
        PREFIX + "COMMAND": actor.command,
        PREFIX + "INVENTORY_SHA256": actor.inventory_sha256,
        PREFIX + "COMMIT": actor.commit,
        PREFIX + "DIRTY": "y" if actor.dirty else "",
    }


def from_journal(entry: dict) -> protocol.AuditEntry:
    """From one `journalctl -o json` entry (ValueError/KeyError on a foreign or forged one)."""
    if entry.get("MESSAGE_ID") != AUDIT or entry.get("_UID") != ROOT_UID:
        raise ValueError("not an audit entry the agent wrote")
    if any(not isinstance(v, str) for k, v in entry.items() if k.startswith(PREFIX)):
        raise ValueError("an audit field that is not one string")

    def text(name, limit=MAX_TEXT):
        return one_line(entry.get(PREFIX + name, ""), limit)

    action = entry[PREFIX + "ACTION"]
    if action not in ACTIONS:
        raise ValueError("unknown action %r" % action)
    outcome = text("OUTCOME", 40)
    actor = clean_actor(protocol.Actor(user=text("USER"), client=text("CLIENT"), command=text("COMMAND"),
                                       inventory_sha256=text("INVENTORY_SHA256"), commit=text("COMMIT"),
                                       dirty=entry.get(PREFIX + "DIRTY") == "y"))
    return protocol.AuditEntry(time=float(entry[PREFIX + "TIME"]), action=action,
                               outcome=outcome if outcome in OUTCOMES else "error", target=text("TARGET"),
                               detail=text("DETAIL", 1000), host=text("HOST"), ssh_user=text("SSH_USER"),
                               ssh_from=text("SSH_FROM", 64), actor=actor)


def send(entry: protocol.AuditEntry, path: str = JOURNAL_SOCKET) -> bool:
    """Send the entry to the journal; False where there is none."""
    return send_fields({"SYSLOG_IDENTIFIER": "deployer-agent", **journal_fields(entry)}, path)
