"""What the client builds from its own source files and may reuse: the trigger's zipapp
(bundle.py) and the agent's bootstrap program (remote.py), in the user's cache directory, keyed by
every source file's name, size and mtime (a stat per file, not a build per command). Neither
holds a secret: both are the deployer's code."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable


def directory() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deployer"


def key(salt: bytes, files: Iterable[tuple[str, Path]]) -> str:
    """`salt`: what else the build depends on (the builder's own source, a format version)."""
    digest = hashlib.sha256(salt)
    for name, path in files:
        stat = path.stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:24]


def cached(name: str, build: Callable[[], bytes]) -> bytes:
    """The cache's `name` if it is there, else build() (kept for the next command: a cache that
    cannot be written, a read-only home, only costs the build)."""
    path = directory() / name
    try:
        return path.read_bytes()
    except OSError:
        pass
    content = build()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(content)
        temporary.replace(path)
    except OSError:
        pass
    return content
