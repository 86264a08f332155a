"""Colour on a terminal: result words and diff lines. Never when NO_COLOR is set (no-color.org),
and never when the output is not a terminal (click.echo strips the codes there)."""
from __future__ import annotations

import os
import re

import click

# A result word -> its colour: green for what went right, red for what needs someone, yellow
# for what waits on someone (paused, held, a push pending).
RESULT_COLOURS = {"ok": "green", "pushed": "green", "up to date": "green",
                  "failed": "red", "fenced": "red", "unknown": "red", "error": "red",
                  "paused": "yellow", "held": "yellow", "running": "cyan", "never": None,
                  "not installed": "yellow"}
DIFF_COLOURS = {"+": "green", "-": "red", "~": "yellow", "@": "cyan", "=": None}


def wanted() -> bool:
    """NO_COLOR set to anything but the empty string turns colour off."""
    return not os.environ.get("NO_COLOR")


def result(text: str) -> str:
    """`failed: status 500` with its first word coloured; padding and the rest as they were."""
    match = re.match(r"(\s*)(up to date|not installed|[a-z_]+)(.*)", text, re.S)
    if not wanted() or not match or not RESULT_COLOURS.get(match.group(2)):
        return text
    lead, word, rest = match.groups()
    return lead + click.style(word, fg=RESULT_COLOURS[word], bold=True if word in ("failed", "fenced") else None) + rest


def diff_line(line: str) -> str:
    """A plan line (`+ job settle`) or a unified diff line, coloured by its first character;
    the file headers (`--- a/...`, `+++ b/...`) in bold."""
    if not wanted() or not line:
        return line
    if line.startswith(("+++ ", "--- ")):
        return click.style(line, bold=True)
    colour = DIFF_COLOURS.get(line[0])
    return click.style(line, fg=colour) if colour else line


def diff(text: str) -> str:
    return "".join(diff_line(line.rstrip("\n")) + ("\n" if line.endswith("\n") else "")
                   for line in text.splitlines(keepends=True))
