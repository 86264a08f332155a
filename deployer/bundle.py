"""The trigger as one self-contained zipapp: deployer/hostside plus pure-Python `requests` and its deps.

The cron host may have nothing but python3 (Debian's has no `requests`), and we install
nothing there with pip or apt. The archive is byte-for-byte reproducible (fixed timestamps,
sorted entries, no bytecode) so that an unchanged deployer never re-uploads it.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import zipfile
from pathlib import Path

# Imported by requests at import time; charset_normalizer has pure-Python fallbacks for
# its compiled modules, which a zip could not load anyway.
PACKAGES = ("requests", "urllib3", "idna", "certifi", "charset_normalizer")
SKIPPED_SUFFIXES = (".so", ".pyd", ".pyc", ".pyi")
FIXED_TIME = (2020, 1, 1, 0, 0, 0)

MAIN = b"""import sys
from deployer.hostside.cli import main
sys.exit(main())
"""


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _sources() -> list[tuple[str, Path]]:
    """(name in the archive, file) for the host-side package and every file of the packages it needs."""
    from . import hostside

    package = Path(hostside.__file__).parent
    found = [("deployer/__init__.py", package.parent / "__init__.py")]
    found += [(f"deployer/hostside/{path.name}", path) for path in sorted(package.glob("*.py"))]
    for package in PACKAGES:
        root = Path(importlib.util.find_spec(package).origin).parent
        found += [(f"{package}/{path.relative_to(root).as_posix()}", path) for path in sorted(root.rglob("*"))
                  if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(SKIPPED_SUFFIXES)]
    return found


def _cache_path(sources: list[tuple[str, Path]]) -> Path:
    """Keyed by every source's name, size and mtime: a changed trigger.py or upgraded
    `requests` gives a new key, and an unchanged one costs a stat per file, not a zip."""
    key = hashlib.sha256(MAIN)
    for name, path in sources:
        stat = path.stat()
        key.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deployer"
    return cache / f"trigger-{key.hexdigest()[:24]}.pyz"


@functools.lru_cache(maxsize=1)
def trigger_bundle() -> bytes:
    sources = _sources()
    cached = _cache_path(sources)
    try:
        return cached.read_bytes()
    except OSError:
        pass
    content = _build(sources)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(content)
        temporary.replace(cached)
    except OSError:
        pass  # a read-only home only costs the rebuild
    return content


def _build(sources: list[tuple[str, Path]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "__main__.py", MAIN)
        for name, path in sources:
            _add(archive, name, path.read_bytes())
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()
