"""What a push remembers of the last one that left a host up to date: the inputs it was made from
(one key) and the hashes of the files it rendered, in the user's cache directory. A push of the
same inputs to a host that still holds exactly those files is `up to date` without parsing the
inventory or rendering a unit: at 10,000 jobs those took 1.1 s of a no-op push's 2.1 s (issue 25).

The key covers everything a render reads (a missing input would leave a host behind without a
word, so each one is named here):
- the inventory's exact text and path, and the --host given;
- every environment variable its text names as ${NAME} (set or not, and its value), and HOME
  (`~` in a file path);
- the deployer's code: its modules, its unit templates, the trigger bundle's sources (with the
  third-party packages it ships and this Python's bytecode magic) and jinja2;
- this machine's calendar data: the systemd-analyze that checks and expands calendars, and the
  time-zone database that converts cron schedules in a zone.
Every local file the parse read (ca_file, client_cert, client_key, in [defaults] too, and the SSH
key it checks it can read) is listed in the entry with the hash of the bytes the parse read, and
read again to compare: same text, same environment, so the same paths. Anything the host holds
decides for itself: the host compares its files with the digest of those the last push left, hash
by hash (host/hashes.py); an entry only saves the client's half.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional

from . import buildcache
from .models import Host

FORMAT = b"deployer last push 1\n"
FORGET_AFTER = 30 * 86400  # seconds an entry is kept after its push
# What reaching the host takes (remote.connect, the agent's command): all of Host a record keeps.
# Not the rest: heartbeat_url is a secret.
CONNECTION_FIELDS = ("name", "address", "port", "user", "identity_file", "known_hosts", "host_key", "sudo",
                     "python")
_VARIABLE_NAME = r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}"  # inventory._VARIABLE: any name it could expand
# Where this machine's calendar answers come from: schedule._analyze runs systemd-analyze with
# PATH=/usr/bin:/bin, and zoneinfo reads the system's zones (tzdata.zi changes with every update).
CALENDAR_FILES = ("/usr/bin/systemd-analyze", "/bin/systemd-analyze", "/usr/share/zoneinfo/tzdata.zi",
                  "/etc/localtime")


@dataclasses.dataclass(frozen=True)
class Entry:
    """The last push that left `host_name` up to date from these inputs."""

    host_name: str
    host: Host  # how to reach it (the inventory's [host:NAME], as parsed: CONNECTION_FIELDS only)
    files: tuple  # the path of every file the push left on the host
    digest: str  # protocol.files_digest of those files (path -> sha256)
    local_files: dict  # a local file the parse read (its path, `~` expanded) -> [limit, sha256 of the bytes]


def reached_alike(recorded: Host, host: Host) -> bool:
    """Whether `host` is reached as the record's host was (the same CONNECTION_FIELDS)."""
    return all(getattr(recorded, name) == getattr(host, name) for name in CONNECTION_FIELDS)


def _stats(files: Iterable[Path]) -> list:
    found = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            found.append((str(path), None))
            continue
        found.append((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return found


def _metadata_files() -> list[Path]:
    """Every installed deployer's metadata on sys.path, where importlib.metadata finds the version
    (importing it costs a no-op push 12 ms): a reinstall rewrites it."""
    found = []
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as names:
                found += [Path(n.path, leaf) for n in names for leaf in ("METADATA", "PKG-INFO")
                          if n.name.startswith("deployer") and n.name.endswith((".dist-info", ".egg-info"))]
        except OSError:
            continue
    return sorted(found)


def _zone_data() -> list[Path]:
    """Where zoneinfo reads zones here: its search path's tzdata.zi, else the `tzdata` package."""
    import importlib.util
    import zoneinfo

    found = [Path(directory, "tzdata.zi") for directory in zoneinfo.TZPATH]
    spec = importlib.util.find_spec("tzdata")
    if spec is not None and spec.origin:
        found += sorted(Path(spec.origin).parent.glob("*.py")) + [Path(spec.origin).parent / "zoneinfo" / "tzdata.zi"]
    return found


def _code_and_calendar(ours: Optional[Path] = None) -> bytes:
    """What renders and checks: the deployer's code (the package at `ours`) and the machine's
    calendar data."""
    import importlib.util
    import re

    from . import bundle

    ours = ours or Path(__file__).resolve().parent
    modules = sorted(p for p in ours.rglob("*.py") if "__pycache__" not in p.parts)
    jinja = Path(importlib.util.find_spec("jinja2").origin).parent
    units = ours / "units"  # render.templates_dir(), without importlib.resources where it is a directory
    if not units.is_dir():
        from .render import templates_dir

        units = templates_dir()
    templates = sorted((t.name, hashlib.sha256(t.read_bytes()).hexdigest()) for t in units.iterdir() if t.is_file())
    described = {
        "python": [sys.version, importlib.util.MAGIC_NUMBER.hex()],
        "installed": _stats(_metadata_files()),  # render.deployer_version(): the metrics unit names it
        "modules": _stats(modules),
        "templates": templates,
        "bundle": bundle.cache_name(),
        "jinja2": _stats(sorted(jinja.glob("*.py"))),
        "calendar": _stats(Path(p) for p in CALENDAR_FILES) + [os.path.realpath("/etc/localtime")] +
        _stats(_zone_data()),
        "tz": [os.environ.get("TZ"), os.environ.get("PYTHONTZPATH")],
        "variable syntax": re.compile(_VARIABLE_NAME).pattern,
    }
    return json.dumps(described, sort_keys=True).encode()


def key(inventory_path: str, source: str, host_option: Optional[str], env: Mapping[str, str]) -> str:
    """The key of a push of `source` (the inventory's text, as parsed) with --host `host_option`."""
    import re

    names = sorted(set(re.findall(_VARIABLE_NAME, source)) | {"HOME"})
    variables = [(name, env.get(name)) for name in names]
    digest = hashlib.sha256(FORMAT)
    for part in (os.path.abspath(inventory_path), host_option or "", json.dumps(variables),
                 _code_and_calendar(), source):
        data = part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")
        digest.update(b"%d\n" % len(data) + data)
    return digest.hexdigest()


def _entry_path(inventory_path: str, host_option: Optional[str]) -> Path:
    # One entry per inventory and --host: a new push of them replaces the last one's.
    name = hashlib.sha256(f"{os.path.abspath(inventory_path)}\0{host_option or ''}".encode(
        "utf-8", "surrogateescape")).hexdigest()[:32]
    return buildcache.directory() / "pushed" / f"{name}.json"


def local_files(reads: Mapping[str, tuple]) -> dict:
    """options.recording_local_reads() of a parse -> path -> [the limit it read up to, sha256 of
    the bytes it read] (a limit of 0: a file it only checked it could read, an SSH key)."""
    return {path: [limit, hashlib.sha256(content).hexdigest()] for path, (limit, content) in reads.items()}


def _same(path: str, limit: int, digest: str) -> bool:
    from .contract.options import read_local_path

    try:
        return hashlib.sha256(read_local_path(path, limit)).hexdigest() == digest
    except OSError:
        return False


def record(the_key: str, inventory_path: str, host_option: Optional[str], host: Host,
           files: Mapping[str, str], local: Mapping[str, list]) -> None:
    """Keep what a push that left the host up to date made it hold (`files`: path -> sha256; the
    epochs included: a host whose epoch moved since, by a move, is pushed in full). Best effort:
    a cache that cannot be written costs the next push its parse and render, nothing else."""
    from .contract.protocol import files_digest

    document = {"key": the_key, "host_name": host.name,
                "host": {name: getattr(host, name) for name in CONNECTION_FIELDS},
                "files": sorted(files), "digest": files_digest(files), "local_files": dict(local)}
    try:
        path = _entry_path(inventory_path, host_option)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for other in path.parent.iterdir():  # an inventory not pushed for a month (or gone)
            try:
                if other.stat().st_mtime < time.time() - FORGET_AFTER:
                    other.unlink()
            except OSError:
                continue  # another push's, removed meanwhile
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            json.dump(document, handle)
        temporary.replace(path)
    except (OSError, ValueError):  # ValueError: a path that is not text (UnicodeEncodeError)
        pass


def find(the_key: str, inventory_path: str, host_option: Optional[str]) -> Optional[Entry]:
    """The entry of the last push made from exactly these inputs, if its local files still hold
    the bytes it read; else None."""
    try:
        with open(_entry_path(inventory_path, host_option), encoding="utf-8") as handle:
            document = json.load(handle)
        if document.get("key") != the_key:
            return None
        entry = Entry(document["host_name"], Host(**document["host"]), tuple(document["files"]),
                      document["digest"], dict(document["local_files"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entry if all(_same(path, *read) for path, read in entry.local_files.items()) else None

