"""The host's cache of its files' hashes (deployer/host/hashes.py): a file is hashed again as soon
as anything about it changed, a file too young to trust is always hashed, and a cache another
user could have written is not read."""
from __future__ import annotations

import hashlib
import os

import pytest

from deployer.host import hashes
from deployer.host.hashes import FileHashes


@pytest.fixture
def old_enough(monkeypatch):
    """Every file counts as old enough to cache (a test cannot age a ctime)."""
    monkeypatch.setattr(hashes, "RACY_SECONDS", -60.0)


def read_all(cache: str, files) -> tuple[dict, list]:
    """One state read over `files` -> (path -> digest, the paths it had to read)."""
    hashed = FileHashes(cache)
    reads = []

    def reader(path):
        def read():
            reads.append(path)
            with open(path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        return read

    found = {str(f): hashed.digest(str(f), os.stat(f), reader(str(f))) for f in files}
    hashed.save()
    return found, reads


def test_an_unchanged_file_is_read_once_and_a_changed_one_again(tmp_path, old_enough):
    cache = str(tmp_path / "state" / "file-hashes")
    a, b = tmp_path / "a.timer", tmp_path / "b.timer"
    a.write_text("one")
    b.write_text("two")
    first, reads = read_all(cache, [a, b])
    assert reads == [str(a), str(b)]
    assert read_all(cache, [a, b]) == (first, [])

    # The same size, the old mtime put back: only the ctime says it changed.
    stamp = os.stat(a)
    a.write_text("eno")
    os.utime(a, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert os.stat(a).st_size == stamp.st_size and os.stat(a).st_mtime_ns == stamp.st_mtime_ns
    found, reads = read_all(cache, [a, b])
    assert reads == [str(a)] and found[str(a)] == hashlib.sha256(b"eno").hexdigest()


def test_a_file_replaced_by_another_is_read_again(tmp_path, old_enough):
    cache = str(tmp_path / "file-hashes")
    a = tmp_path / "a.timer"
    a.write_text("one")
    read_all(cache, [a])
    replacement = tmp_path / "new"
    replacement.write_text("two")
    os.replace(replacement, a)
    found, reads = read_all(cache, [a])
    assert reads == [str(a)] and found[str(a)] == hashlib.sha256(b"two").hexdigest()


def test_a_file_changed_within_racy_seconds_of_its_read_is_never_kept(tmp_path):
    cache = str(tmp_path / "file-hashes")
    a = tmp_path / "a.timer"
    a.write_text("one")  # just now: its ctime is younger than RACY_SECONDS
    read_all(cache, [a])
    assert read_all(cache, [a])[1] == [str(a)]


def test_a_cache_another_user_could_write_is_not_read(tmp_path, old_enough):
    cache = tmp_path / "file-hashes"
    a = tmp_path / "a.timer"
    a.write_text("one")
    read_all(str(cache), [a])
    os.chmod(cache, 0o666)
    assert read_all(str(cache), [a])[1] == [str(a)]
    os.chmod(cache, 0o600)
    os.chmod(tmp_path, 0o777)
    assert read_all(str(cache), [a])[1] == [str(a)]
    os.chmod(tmp_path, 0o755)


def test_a_broken_cache_is_a_read_of_every_file(tmp_path, old_enough):
    cache = tmp_path / "file-hashes"
    a = tmp_path / "a.timer"
    a.write_text("one")
    for broken in (b"", b"\x00garbage", b"N"):  # empty, not marshal, not a dict
        cache.write_bytes(broken)
        os.chmod(cache, 0o600)
        assert read_all(str(cache), [a])[1] == [str(a)]


def test_the_cache_is_its_owners_alone(tmp_path, old_enough):
    cache = tmp_path / "state" / "file-hashes"
    a = tmp_path / "a.timer"
    a.write_text("one")
    read_all(str(cache), [a])
    assert cache.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in cache.parent.iterdir()] == ["file-hashes"], "no temporary file left"
