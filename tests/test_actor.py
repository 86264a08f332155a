"""Who runs the deployer, on what (actor.py): the inventory's digest, and its git commit where it
has one (a real git in a temporary work tree), without failing where git is absent."""
from __future__ import annotations

import hashlib
import subprocess

import pytest

from deployer import actor


def git(directory, *args):
    subprocess.run(["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "inventory.ini").write_text("[host:cron01]\naddress = 10.0.0.5\n")
    (tmp_path / "README").write_text("x\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def head(directory) -> str:
    return subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_committed_inventory_gives_its_commit_and_clean(repo):
    who = actor.actor(str(repo / "inventory.ini"), "push")
    assert (who.commit, who.dirty, who.command) == (head(repo), False, "push")
    assert who.inventory_sha256 == hashlib.sha256((repo / "inventory.ini").read_bytes()).hexdigest()
    assert who.user and who.client


@pytest.mark.parametrize("change", [
    pytest.param(lambda r: (r / "inventory.ini").write_text("[host:cron02]\n"), id="inventory-edited"),
    pytest.param(lambda r: (r / "README").write_text("y\n"), id="another-file-edited"),
    pytest.param(lambda r: (r / "other.ini").write_text("[host:x]\n"), id="untracked-inventory"),
])
def test_uncommitted_changes_are_dirty(repo, change):
    change(repo)
    name = "other.ini" if (repo / "other.ini").exists() else "inventory.ini"
    assert actor.git_version(str(repo / name)) == (head(repo), True)


def test_outside_a_work_tree_and_without_git_nothing_fails(tmp_path, monkeypatch):
    (tmp_path / "inventory.ini").write_text("[host:cron01]\n")
    assert actor.git_version(str(tmp_path / "inventory.ini")) == ("", False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    who = actor.actor(str(tmp_path / "inventory.ini"), "pause")
    assert (who.commit, who.dirty) == ("", False) and len(who.inventory_sha256) == 64
