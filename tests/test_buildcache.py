"""The build cache (deployer/buildcache.py): built once, reused while no source changes, and a
cache that cannot be written only costs the build."""
from __future__ import annotations

import os

from deployer import buildcache, remote


def test_a_build_is_reused_until_a_source_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "a.py"
    source.write_text("x = 1\n")
    builds = []

    def build():
        builds.append(source.read_text())
        return source.read_bytes()

    name = lambda: "thing-%s" % buildcache.key(b"v1", [("a.py", source)])  # noqa: E731
    assert buildcache.cached(name(), build) == buildcache.cached(name(), build) == b"x = 1\n"
    assert len(builds) == 1
    source.write_text("x = 22\n")  # another size and mtime: another key
    assert buildcache.cached(name(), build) == b"x = 22\n" and len(builds) == 2
    assert name() != "thing-%s" % buildcache.key(b"v2", [("a.py", source)]), "the salt is part of the key"


def test_a_cache_that_cannot_be_written_costs_only_the_build(tmp_path, monkeypatch):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert buildcache.cached("thing", lambda: b"built") == b"built"


def test_the_agent_bootstrap_from_the_cache_is_the_one_packed_now(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    remote.bootstrap.cache_clear()
    try:
        program = remote.bootstrap()
        [kept] = os.listdir(tmp_path / "deployer")
        assert kept.startswith("agent-") and program == remote._pack()
        remote.bootstrap.cache_clear()
        assert remote.bootstrap() == program  # read back from the file
    finally:
        remote.bootstrap.cache_clear()
