"""The sha256 of each file the deployer manages, kept from one state read to the next with the
file's device, inode, size, mtime and ctime: a read hashes only the files changed since. At
10,000 jobs hashing all 30,000 files was 0.6 s of every no-op push (issue 25); a stat of each is
a tenth of that.

A write to a file, or a new file in its place, sets its ctime to the kernel's clock, and nothing
sets a ctime back. So a file whose ctime is what it was when its hash was taken holds the bytes
hashed then, with one exception: a change within the same tick of the clock as the hash. A hash
is therefore kept only for a file whose ctime was at least RACY_SECONDS old when it was read (as
git's index treats a "racily clean" entry); a younger file is hashed on every read until it ages.
"""
from __future__ import annotations

import os
import time

from deployer.contract.process import keep, read_kept

RACY_SECONDS = 2.0


def _signature(status: os.stat_result) -> tuple:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


class FileHashes:
    """`digest(path, status, read)` -> the file's sha256 (or what `read` says of it), from the
    cache while the file's signature is unchanged; `save()` keeps the hashes of this read."""

    def __init__(self, path: str):
        self.path = path
        # Before any file's stat: a file whose ctime is RACY_SECONDS older than this was that old
        # when it was read, however long the read took.
        self.started = time.time()
        self.known = self._load()
        self.seen: dict = {}

    def _load(self) -> dict:
        known = read_kept(self.path)  # as the agent's compiled modules: only if this user alone may write it
        return known if isinstance(known, dict) else {}

    def digest(self, path: str, status: os.stat_result, read):
        """`status`: the file's stat, taken after this FileHashes was made and before `read()` reads it."""
        signature = _signature(status)
        known = self.known.get(path)
        if known is not None and known[0] == signature:
            self.seen[path] = known
            return known[1]
        value = read()
        if status.st_ctime_ns < (self.started - RACY_SECONDS) * 1e9:
            self.seen[path] = (signature, value)
        return value

    def save(self) -> None:
        """Keep what this read hashed (the files gone since are dropped). Best effort: a cache
        that cannot be written costs the next read its hashing, nothing else."""
        if self.seen == self.known:
            return
        keep(self.path, self.seen, 0o755)
