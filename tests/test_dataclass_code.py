"""deployer/contract/dataclass_code.py: our classes' generated code compiled once, kept safely."""
from __future__ import annotations

import dataclasses
import marshal
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from deployer.contract import dataclass_code

ROOT = Path(__file__).resolve().parent.parent

# No `from __future__ import annotations` here: the generated __init__ must keep real types.
CLASSES = textwrap.dedent("""
    from dataclasses import dataclass, field
    from typing import Optional

    @dataclass(frozen=True)
    class Run:
        job: str
        slot: Optional[int] = None
        tags: tuple = ()
        notes: frozenset = field(default_factory=frozenset)

    @dataclass
    class Counter:
        count: int = 0
""")


@pytest.fixture
def installed():
    """Whatever a test installs is gone after it: the rest of the suite builds classes as usual."""
    before = dataclasses.__dict__.get("exec")
    yield
    if before is None:
        dataclasses.__dict__.pop("exec", None)
    else:
        dataclasses.exec = before


def _module(name: str):
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(CLASSES, name, "exec", dont_inherit=True), module.__dict__)
    finally:
        del sys.modules[name]
    return module


def _behaviour(module):
    run, other = module.Run("settle", 5), module.Run("settle", 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.job = "x"
    counter = module.Counter()
    counter.count += 1
    return (repr(run), run == other, hash(run) == hash(other), run.notes, run.tags, repr(counter),
            dict(module.Run.__init__.__annotations__), [f.name for f in dataclasses.fields(module.Run)])


def test_a_class_of_ours_built_from_kept_code_is_the_class_dataclasses_builds(installed):
    plain = _behaviour(_module("deployer.plain"))
    cache = dataclass_code.install({})
    first = _behaviour(_module("deployer.first"))
    assert cache.compiled >= 8  # Run's six functions, Counter's three (no __hash__, no frozen setattr)
    assert first[:-2] == plain[:-2] and first[-1] == plain[-1]
    assert first[-2] == plain[-2] == {"job": str, "slot": first[-2]["slot"], "tags": tuple, "notes": frozenset,
                                      "return": None}

    again = dataclass_code.install(cache.codes)
    second = _behaviour(_module("deployer.second"))
    assert again.compiled == 0  # every text was kept: nothing compiled
    assert second[:-2] == plain[:-2] and second[-2:] == first[-2:]


def test_only_our_classes_go_through_the_cache(installed):
    cache = dataclass_code.install({})
    _module("somebody.else")
    assert cache.compiled == 0 and cache.codes == {}
    _module("deployer.ours")
    assert cache.compiled > 0


def test_the_kept_codes_are_this_users_alone_and_read_only_when_nobody_else_may_write_them(installed, tmp_path):
    cache = dataclass_code.install({})
    _module("deployer.kept")
    directory = tmp_path / "cache"
    path = str(directory / dataclass_code.file_name())
    dataclass_code.save(path, cache)
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert os.listdir(directory) == [dataclass_code.file_name()]  # no temporary file left
    assert dataclass_code.load(path) == cache.codes and cache.codes

    os.chmod(path, 0o620)
    assert dataclass_code.load(path) == {}
    os.chmod(path, 0o600)
    directory.chmod(0o777)
    assert dataclass_code.load(path) == {}
    directory.chmod(0o700)

    elsewhere = tmp_path / "elsewhere"
    os.replace(path, elsewhere)
    os.symlink(elsewhere, path)
    assert dataclass_code.load(path) == {}  # a link in its place is not followed
    os.unlink(path)

    for damage in (b"", b"\x00garbage", marshal.dumps(["not", "a", "dict"])):
        Path(path).write_bytes(damage)
        assert dataclass_code.load(path) == {}
    code = compile("", "x", "exec")
    Path(path).write_bytes(marshal.dumps({"text": "not code", 3: code, "ok": code}))
    assert list(dataclass_code.load(path)) == ["ok"]


def test_a_cache_that_cannot_be_written_costs_nothing_but_the_compiling(installed, tmp_path):
    cache = dataclass_code.install({})
    _module("deployer.unwritable")
    (tmp_path / "file").write_text("")
    dataclass_code.save(str(tmp_path / "file" / "codes"), cache)  # its directory is a file
    assert dataclass_code.load(str(tmp_path / "file" / "codes")) == {}


def test_texts_of_older_versions_do_not_pile_up(installed, monkeypatch):
    monkeypatch.setattr(dataclass_code, "MAX_TEXTS", 5)
    old = {f"old text {n}": compile("", "x", "exec") for n in range(5)}
    cache = dataclass_code.install(dict(old))
    _module("deployer.current")
    kept = cache.to_keep()
    assert not set(old) & set(kept) and kept and set(kept) == cache.used


def test_the_command_keeps_the_codes_and_a_second_command_compiles_none(tmp_path):
    """`deployer` (python -m) writes the file at exit; the next command reads it and, having
    compiled nothing, leaves it as it was."""
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[host:cron01]\naddress = 127.0.0.1\n\n[job:settle]\nschedule = @hourly\n"
                         "url = http://127.0.0.1:8080/settle\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "deployer", "validate", "-i", str(inventory)]
    subprocess.run(command, env=env, check=True, capture_output=True)
    kept = tmp_path / "xdg" / "deployer" / dataclass_code.file_name()
    codes = marshal.loads(kept.read_bytes())
    assert any("def __init__(self,job" in text for text in codes) and oct(kept.stat().st_mode & 0o777) == "0o600"
    written = kept.stat().st_mtime_ns
    os.utime(kept, ns=(written - 10**9, written - 10**9))
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert kept.stat().st_mtime_ns == written - 10**9
