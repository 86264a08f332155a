"""The trigger as one self-contained zipapp: trigger.py plus pure-Python `requests` and its deps.

The cron host may have nothing but python3 (Debian's has no `requests`), and we install
nothing there with pip or apt. The archive is byte-for-byte reproducible (fixed timestamps,
sorted entries, no bytecode) so that an unchanged deployer never re-uploads it.
"""
from __future__ import annotations

import functools
import importlib
import io
import zipfile
from pathlib import Path

# Imported by requests at import time; charset_normalizer has pure-Python fallbacks for
# its compiled modules, which a zip could not load anyway.
PACKAGES = ("requests", "urllib3", "idna", "certifi", "charset_normalizer")
SKIPPED_SUFFIXES = (".so", ".pyd", ".pyc", ".pyi")
FIXED_TIME = (2020, 1, 1, 0, 0, 0)

MAIN = b"""import sys
import trigger
sys.exit(trigger.main())
"""


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


@functools.lru_cache(maxsize=1)
def trigger_bundle() -> bytes:
    import trigger

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "__main__.py", MAIN)
        _add(archive, "trigger.py", Path(trigger.__file__).read_bytes())
        for package in PACKAGES:
            root = Path(importlib.import_module(package).__file__).parent
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts \
                        and not path.name.endswith(SKIPPED_SUFFIXES):
                    _add(archive, f"{package}/{path.relative_to(root).as_posix()}", path.read_bytes())
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()
