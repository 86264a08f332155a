"""Every command a runbook shows exists: deployer lines parse with the real CLI, and host
lines (systemctl, journalctl, systemd-analyze) run on a real cron host."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from deployer.cli import main

RUNBOOKS = sorted((Path(__file__).resolve().parent.parent / "docs" / "runbooks").glob("*.md"))
HOST_COMMANDS = ("systemctl", "journalctl", "systemd-analyze")


def commands(tool_prefixes: tuple[str, ...]) -> list[tuple[str, str]]:
    found = []
    for book in RUNBOOKS:
        for block in re.findall(r"```sh\n(.*?)```", book.read_text(), re.S):
            for line in block.splitlines():
                words = shlex.split(line, comments=True)
                if words and words[0] in tool_prefixes:
                    found.append((book.name, shlex.join(words)))
    return found


def test_the_runbooks_show_commands_at_all():
    assert len(commands(("deployer",))) >= 15 and len(commands(HOST_COMMANDS)) >= 5


@pytest.mark.parametrize("book, line", commands(("deployer",)))
def test_every_deployer_command_in_a_runbook_exists_and_parses(book, line):
    args = shlex.split(line)[1:]
    command, ctx = main, main.make_context("deployer", list(args), resilient_parsing=True)
    while isinstance(command, click.Group):
        name, args = args[0], args[1:]
        command = command.get_command(ctx, name)
        assert command is not None, f"{book}: no command {name!r} in {line!r}"
        ctx = command.make_context(name, list(args), parent=ctx)  # raises on an unknown option


@pytest.mark.e2e
def test_every_host_command_in_a_runbook_runs_on_a_real_host(tmp_path, server, deployer):
    from tests.e2e.conftest import _require_nspawn
    from tests.cronhost import CronHost

    _require_nspawn()
    with CronHost("cron01", workdir=tmp_path / "cron01") as host:
        path = tmp_path / "inventory.ini"
        path.write_text(host.inventory_host() + f"[job:settle-hourly]\nschedule = 0 * * * *\nurl = {server.url('/s')}\n")
        deployer("push", "-i", str(path), check=True)
        deployer("run", "settle-hourly", "-i", str(path), check=False)
        for book, line in commands(HOST_COMMANDS):
            result = host.ssh(line, check=False)
            # `systemctl status` exits 3 for a unit that is not running, as a oneshot job is between runs
            allowed = (0, 3) if line.startswith("systemctl status") else (0,)
            assert result.returncode in allowed, f"{book}: {line!r} exited {result.returncode}: {result.stderr}"
