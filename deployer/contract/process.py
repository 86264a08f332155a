"""What a process of ours costs at its start and at its end, on either side: the client's
commands, the agent. Both are short, and most of what each took was Python's, not ours.

**The start.** For each class, dataclasses writes the source of __init__, __repr__, __eq__,
__hash__, __setattr__ and __delattr__ and compiles it with `exec`: 0.3-0.6 ms a class. The client
builds about 70 classes for any command and the agent about 50, so every command paid 20-35 ms of
compiling the same texts before it did anything (issue 25: the start is most of `history`).
A code object depends only on its source text and the Python that compiled it. So `install`
puts a `CodeCache` in front of the `exec` that dataclasses calls: a text seen before runs from
its code object. Only our classes go through it (dataclasses passes the class's module
globals); anyone else's keep the builtin. Where a Python's dataclasses stops calling `exec` by
that name, nothing is cached and nothing else changes. The client keeps the codes in its cache
directory, the agent beside its compiled modules (remote.BOOTSTRAP). Either is read only when
this user alone may write it: it is code.

**The end.** Python tears down every module and object it loaded before it exits: 40-60 ms
with paramiko, cryptography, invoke and click loaded. `exit_now` ends the process without it,
as Python would in everything else.
"""
# No `from __future__ import annotations` here: the builtin exec, called from this module for
# anyone else's classes, compiles with this module's __future__ flags (their annotations would
# turn to strings).
import atexit
import builtins
import marshal
import os
import sys
import threading
import time

OURS = "deployer."
# Twice the texts of every class of ours (about 90 classes, 6 texts each; 500 kB, 2.5 ms to read):
# past it, the file keeps only what this process used, so texts of older versions do not pile up.
MAX_TEXTS = 1000


class CodeCache:
    """`exec` for dataclasses: `codes` maps each source text to its code object; `compiled` counts
    the texts this process had to compile (the caller saves `codes` when it is not 0)."""

    def __init__(self, codes: dict):
        self.codes = codes
        self.used: set = set()
        self.compiled = 0

    def exec(self, source, globals=None, locals=None, *more, **named):
        if isinstance(source, str) and isinstance(globals, dict) and str(globals.get("__name__", "")).startswith(OURS):
            code = self.codes.get(source)
            if code is None:
                # dont_inherit: as the builtin compiles for dataclasses' own frame, which has no
                # __future__ imports.
                code = self.codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
                self.compiled += 1
            self.used.add(source)
            source = code
        return builtins.exec(source, globals, locals, *more, **named)

    def to_keep(self) -> dict:
        if len(self.codes) <= MAX_TEXTS:
            return self.codes
        return {text: code for text, code in self.codes.items() if text in self.used}


def install(codes: dict) -> CodeCache:
    """From now on, this process's dataclasses compile each text of ours once, into `codes`."""
    import dataclasses

    cache = CodeCache(codes)
    dataclasses.exec = cache.exec  # a module global: found before the builtin
    return cache


def file_name() -> str:
    """Named by the bytecode format and the optimization level, which the code objects depend on."""
    import importlib.util  # the client's alone: the agent keeps its codes in its own cache

    return "dataclass-code-%s-O%d.marshal" % (importlib.util.MAGIC_NUMBER.hex(), sys.flags.optimize)


def _ours(status: os.stat_result) -> bool:
    """Written by this user and by nobody else."""
    return status.st_uid == os.geteuid() and not status.st_mode & 0o022


def read_kept(path: str):
    """What `keep` wrote at `path`; None when there is none, when anyone but this user may write
    the file or its directory (it is read with marshal: code, or what code trusts), or when it
    does not unmarshal."""
    try:
        if not _ours(os.stat(os.path.dirname(path))):
            return None
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as handle:
            if not _ours(os.fstat(handle.fileno())):
                return None
            return marshal.loads(handle.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None


def keep(path: str, value, directory_mode: int) -> None:
    """`value` marshalled at `path` (0600), whole or not at all. Best effort: a cache that cannot
    be written costs its next reader the work it saved, nothing else."""
    temporary = "%s.%d.tmp" % (path, os.getpid())
    try:
        os.makedirs(os.path.dirname(path), mode=directory_mode, exist_ok=True)
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600),
                  "wb") as handle:
            handle.write(marshal.dumps(value))
        os.replace(temporary, path)
    except (OSError, ValueError):
        try:
            os.unlink(temporary)
        except OSError:
            pass


def load(path: str) -> dict:
    """The codes kept at `path` ({} when read_kept finds none, or not a dict of text -> code)."""
    codes = read_kept(path)
    if not isinstance(codes, dict):
        return {}
    code_type = type(load.__code__)
    return {text: code for text, code in codes.items() if isinstance(text, str) and isinstance(code, code_type)}


def save(path: str, cache: CodeCache) -> None:
    """Keep `cache`'s codes at `path` (its directory 0700)."""
    try:
        _remove_stale_temporaries(path)
    except OSError:
        pass
    keep(path, cache.to_keep(), 0o700)


def _remove_stale_temporaries(path: str) -> None:
    """Those of a save killed before its rename, a minute on."""
    directory, prefix = os.path.split(path)
    for name in os.listdir(directory):
        if name.startswith(prefix + ".") and name.endswith(".tmp"):
            try:
                if os.lstat(os.path.join(directory, name)).st_mtime < time.time() - 60:
                    os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def install_for_user(directory: str) -> None:
    """The client: codes kept in the user's cache `directory`, saved at exit if this command
    compiled any."""
    path = os.path.join(directory, file_name())
    cache = install(load(path))
    atexit.register(lambda: cache.compiled and save(path, cache))


def exit_now(status) -> None:
    """Exit with `status` as Python would, less its teardown of every module and object: 40-60 ms
    on the client, where paramiko, cryptography, invoke and click are loaded (a sixth of a
    `history` or of a no-op push), 11 ms for the agent. The atexit handlers still run (the
    caches' saves, paramiko's closing of its transports). Anything unusual takes Python's own way
    out, which reports it: a status that is not a number, a thread still running that is not a
    daemon, output that cannot be written."""
    status = 0 if status is None else status
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not isinstance(status, int) or others:
        sys.exit(status)
    try:
        _flush()
        try:
            atexit._run_exitfuncs()
        except Exception:  # noqa: BLE001 - 3.7-3.9 raise a handler's error again: it was printed
            pass
        _flush()
    except (OSError, ValueError):
        sys.exit(status)
    os._exit(status & 0xFF)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: started with that descriptor closed (`>&-`)
            stream.flush()
