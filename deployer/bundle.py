"""The trigger as one self-contained zipapp: the packages that run on the host (SHIPPED) plus pure-Python
`requests` and its deps.

The cron host may have nothing but python3 (Debian's has no `requests`), and we install
nothing there with pip or apt. The archive is reproducible (fixed timestamps, sorted entries)
so that an unchanged deployer never re-uploads it. The host-side package also travels as
bytecode for this Python's version (used where the host's Python has the same).
"""
from __future__ import annotations

import functools
import importlib.util
import io
import zipfile
from pathlib import Path

from . import buildcache

# Imported by requests at import time; charset_normalizer has pure-Python fallbacks for
# its compiled modules, which a zip could not load anyway.
# Ours: the contract both sides agree on, the host's programs, and the old module name that a
# host's boot units written by an older deployer still start (deployer/hostside/__init__.py).
SHIPPED = ("contract", "host", "hostside")
PACKAGES = ("requests", "urllib3", "idna", "certifi", "charset_normalizer")
SKIPPED_SUFFIXES = (".so", ".pyd", ".pyc", ".pyi")
FIXED_TIME = (2020, 1, 1, 0, 0, 0)

# exit_now: a run ends without the interpreter's teardown of what it loaded, 11 ms of each run's
# CPU (contract/process.py).
MAIN = b"""from deployer.contract.process import exit_now
from deployer.host.trigger import main
exit_now(main())
"""


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _sources() -> list[tuple[str, Path]]:
    """(name in the archive, file) for the host-side package and every file of the packages it needs."""
    ours = Path(__file__).resolve().parent
    found = [("deployer/__init__.py", ours / "__init__.py")]
    for package in SHIPPED:
        found += [(f"deployer/{package}/{path.name}", path) for path in sorted((ours / package).glob("*.py"))]
    for package in PACKAGES:
        root = Path(importlib.util.find_spec(package).origin).parent
        found += [(f"{package}/{path.relative_to(root).as_posix()}", path) for path in sorted(root.rglob("*"))
                  if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(SKIPPED_SUFFIXES)]
    return found


def _cache_name(sources: list[tuple[str, Path]]) -> str:
    """Keyed by every source's name, size and mtime: a changed trigger.py or upgraded
    `requests` gives a new key, and an unchanged one costs a stat per file, not a zip."""
    # This file too: a change in how the bundle is built must not reuse one built the old way.
    salt = MAIN + importlib.util.MAGIC_NUMBER + Path(__file__).read_bytes()
    return f"trigger-{buildcache.key(salt, sources)}.pyz"


@functools.lru_cache(maxsize=1)  # once a process: a push's key (lastpush) names it, and its render builds it
def cache_name() -> str:
    """The name the bundle this deployer builds is kept under: it changes with any of its sources."""
    return _cache_name(_sources())


@functools.lru_cache(maxsize=1)
def trigger_bundle() -> bytes:
    return buildcache.cached(cache_name(), lambda: _build(_sources()))


# Compiles every module in a fresh interpreter: marshal's output depends on the state of the
# process (which objects are shared, and set order under hash randomisation), so bytecode made
# inside a long-lived deployer would differ from one run to the next, and so would the bundle.
_COMPILE = """
import base64, importlib.util, json, sys
from importlib._bootstrap_external import _code_to_hash_pyc
out = {}
for name, text in sorted(json.load(sys.stdin).items()):
    source = text.encode()
    code = compile(source, "trigger.pyz/" + name, "exec", dont_inherit=True, optimize=0)
    out[name] = base64.b64encode(_code_to_hash_pyc(code, importlib.util.source_hash(source), False)).decode()
json.dump(out, sys.stdout)
"""


def _bytecode(sources: dict[str, bytes]) -> dict[str, bytes]:
    """Unchecked hash-based .pyc files (PEP 552): zipimport cannot cache bytecode, so without
    them every run would compile the package again. Unchecked, because the archive holds exactly
    the source they were compiled from; a host whose Python has another magic number ignores
    them and compiles the source."""
    import base64
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-I", "-S", "-c", _COMPILE], check=True, capture_output=True,
                            input=json.dumps({n: s.decode() for n, s in sources.items()}).encode(),
                            env={"PYTHONHASHSEED": "0"})
    return {name: base64.b64decode(pyc) for name, pyc in json.loads(result.stdout).items()}


def _build(sources: list[tuple[str, Path]]) -> bytes:
    buffer = io.BytesIO()
    contents = {name: path.read_bytes() for name, path in sources}
    compiled = _bytecode({name: source for name, source in contents.items() if name.startswith("deployer/")})
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "__main__.py", MAIN)
        for name, source in contents.items():
            _add(archive, name, source)
            if name in compiled:
                _add(archive, name[:-3] + ".pyc", compiled[name])
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()
