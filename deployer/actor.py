"""Who runs this deployer and on what: the client's part of an audit entry (protocol.Actor).

The local user, this machine's name, the inventory's sha256 (never its contents: it may hold
tokens) and, when the inventory sits in a git work tree, its commit and whether the tree had
uncommitted changes. Without git, or outside a work tree, those stay empty: nothing fails.
The host adds the SSH user and address itself (contract/audit.py): a client cannot choose them.
"""
from __future__ import annotations

import getpass
import hashlib
import os
import socket
import subprocess
from typing import Optional

from .contract.protocol import Actor

GIT_TIMEOUT = 5.0


def local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER/$LOGNAME (a bare container)
        return str(os.getuid())


def _git(directory: str, *args: str) -> Optional[subprocess.CompletedProcess]:
    """One git command in `directory`; None when git is absent, hangs, or cannot run."""
    try:
        return subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return None


def git_version(path: str) -> tuple[str, bool]:
    """(commit, dirty) of the work tree holding `path`; ("", False) outside one or without git.
    Dirty: a tracked file differs from the commit, or the inventory itself is not committed."""
    directory = os.path.dirname(os.path.abspath(path))
    head = _git(directory, "rev-parse", "--verify", "-q", "HEAD")
    if head is None or head.returncode != 0 or len(head.stdout.strip()) != 40:
        return "", False
    changes = _git(directory, "status", "--porcelain", "--untracked-files=no")
    tracked = _git(directory, "ls-files", "--error-unmatch", "--", os.path.basename(path))
    inventory_changed = _git(directory, "status", "--porcelain", "--", os.path.basename(path))
    dirty = (changes is None or changes.returncode != 0 or bool(changes.stdout.strip())
             or tracked is None or tracked.returncode != 0
             or inventory_changed is None or bool(inventory_changed.stdout.strip()))
    return head.stdout.strip(), dirty


def inventory_digest(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return ""


def actor(inventory_path: str, command: str) -> Actor:
    commit, dirty = git_version(inventory_path)
    return Actor(user=local_user(), client=socket.gethostname(), command=command,
                 inventory_sha256=inventory_digest(inventory_path), commit=commit, dirty=dirty)
