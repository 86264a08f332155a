"""Every command a runbook shows exists: deployer lines parse with the real CLI, and host
lines (systemctl, journalctl, systemd-analyze) run on a real cron host. What a runbook says a
command prints is checked on that host too (see OUTPUT)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from deployer.cli import main
# The end-to-end tests' shared host, for this file outside tests/e2e: one boot for all its tests
# (a session of its own here; `make test` gives each file a worker anyway).
from tests.e2e.conftest import _shared_cron01_host, shared_cron01  # noqa: F401

RUNBOOKS = sorted((Path(__file__).resolve().parent.parent / "docs" / "runbooks").glob("*.md"))
HOST_COMMANDS = ("systemctl", "journalctl", "systemd-analyze")

# What a command block prints is a fenced ```output block right after it. Each of its lines must
# appear in what the block's commands printed (stdout and stderr, in order of the commands), as a
# substring with runs of white space read as one space: a runbook shows the part that matters
# (`paused (last: ok)`), not the clock ("3 min ago") or a table's padding.
OUTPUT = re.compile(r"```sh\n((?:(?!```).)*)```[ \t]*\n\s*```output\n((?:(?!```).)*)```", re.S)


def command_lines(block: str) -> list[str]:
    words = (shlex.split(line, comments=True) for line in block.splitlines())
    return [shlex.join(w) for w in words if w]


def commands(tool_prefixes: tuple[str, ...]) -> list[tuple[str, str]]:
    found = []
    for book in RUNBOOKS:
        for block in re.findall(r"```sh\n(.*?)```", book.read_text(), re.S):
            found += [(book.name, line) for line in command_lines(block) if shlex.split(line)[0] in tool_prefixes]
    return found


def checked_blocks(book: Path) -> list[tuple[list[str], list[str]]]:
    """(the commands of a block, the lines its ```output block says they print), in order."""
    return [(command_lines(block), [line.strip() for line in output.splitlines() if line.strip()])
            for block, output in OUTPUT.findall(book.read_text())]


def test_the_runbooks_show_commands_at_all():
    assert len(commands(("deployer",))) >= 15 and len(commands(HOST_COMMANDS)) >= 5


def test_every_output_block_follows_a_command_block():
    """An ```output block the pattern misses (a blank line too many, a typo) would check nothing."""
    for book in RUNBOOKS:
        assert book.read_text().count("```output") == len(checked_blocks(book)), book.name


@pytest.mark.parametrize("book, line", commands(("deployer",)))
def test_every_deployer_command_in_a_runbook_exists_and_parses(book, line):
    args = shlex.split(line)[1:]
    command, ctx = main, main.make_context("deployer", list(args), resilient_parsing=True)
    while isinstance(command, click.Group):
        name, args = args[0], args[1:]
        command = command.get_command(ctx, name)
        assert command is not None, f"{book}: no command {name!r} in {line!r}"
        ctx = command.make_context(name, list(args), parent=ctx)  # raises on an unknown option


def push_the_examples(host, server, deployer, tmp_path) -> dict:
    """The runbooks' example set-up on `host`: job settle-hourly, alert channel ops. -> the
    environment that points `deployer` at it."""
    from tests.httpserver import Reply, json_reply

    server.routes.update({"/s": Reply(200, b"done"), "/robot": json_reply({"errcode": 0})})
    path = tmp_path / "inventory.ini"
    path.write_text(host.inventory_host() + "[alert:ops]\ntype = dingtalk\ntoken = ${DINGTALK_TOKEN}\n"
                    f"endpoint = {server.url('/robot')}\n[job:settle-hourly]\nschedule = 0 * * * *\n"
                    f"url = {server.url('/s')}\nalert = ops\n")
    env = {"DEPLOYER_INVENTORY": str(path), "DINGTALK_TOKEN": "old-token"}
    deployer("push", env=env, check=True)
    return env


@pytest.mark.e2e
def test_every_host_command_in_a_runbook_runs_on_a_real_host(tmp_path, server, deployer, shared_cron01):
    env = push_the_examples(shared_cron01, server, deployer, tmp_path)
    deployer("run", "settle-hourly", env=env, check=True)  # a run for `status`, `journalctl` to show
    for book, line in commands(HOST_COMMANDS):
        result = shared_cron01.ssh(line, check=False)
        # `systemctl status` exits 3 for a unit that is not running, as a oneshot job is between runs
        allowed = (0, 3) if line.startswith("systemctl status") else (0,)
        assert result.returncode in allowed, f"{book}: {line!r} exited {result.returncode}: {result.stderr}"


# Where a runbook starts, after the examples are pushed: what happened before its first command.
HOLD = ("""printf '%s' '{"since": "2026-12-06T08:00:00+00:00", "down_for_seconds": 7980.0, """
        """"lease_seconds": 300.0, "reason": ""}' > /var/lib/deployer/held.json""")  # as the boot check writes it
GIVEN = {
    "pause.md": ["deployer run settle-hourly"],
    "on-the-host.md": ["deployer pause settle-hourly"],
    "host-down.md": [HOLD],
    "who-changed-it.md": ["deployer pause settle-hourly", "deployer resume settle-hourly"],
}


def run_line(line: str, host, deployer, env: dict, check: bool | None = None) -> str:
    """One runbook line as an operator runs it: deployer here, anything else on the host;
    `export NAME=value` sets NAME for the lines after it. -> what it printed."""
    words = shlex.split(line)
    if words[0] == "export":
        env.update(word.split("=", 1) for word in words[1:])
        return ""
    if words[0] == "deployer":
        result = deployer(*words[1:], env=env, check=check)
    else:
        result = host.ssh(line, check=bool(check))
    return result.stdout + result.stderr


def squeeze(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.e2e
@pytest.mark.parametrize("book", [b for b in RUNBOOKS if checked_blocks(b)], ids=lambda b: b.name)
def test_what_a_runbook_says_a_command_prints_it_prints(book, tmp_path, server, deployer, shared_cron01):
    env = push_the_examples(shared_cron01, server, deployer, tmp_path)
    for line in GIVEN.get(book.name, ()):
        run_line(line, shared_cron01, deployer, env, check=True)
    for lines, expected in checked_blocks(book):
        printed = "".join(run_line(line, shared_cron01, deployer, env) for line in lines)
        missing = [e for e in expected if squeeze(e) not in squeeze(printed)]
        assert not missing, f"{book.name}: {lines} printed\n{printed}\nwithout {missing}"
