"""systemd syntax: unit names, `%`/`$` escaping, Exec argument quoting. Templates use these filters.

Why `%` and `$` are doubled: systemd expands specifiers (`%n`, `%i`, ...) in most unit
settings and environment variables (`$FOO`, `${FOO}`) in Exec lines, so a URL such as
`http://h/a%20b?x=$y` would silently change meaning if written as is. Control characters
never get here: the inventory refuses them, and these functions refuse them again because
a newline in a unit file would start a new directive.
"""
from __future__ import annotations

import functools
import re

from .contract.paths import CONTROL, BadName

_CONTROL = CONTROL


class UnsafeValue(BadName):
    """A value that cannot be written into a unit file without changing its structure."""


def check_no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise UnsafeValue(f"control character {_CONTROL.search(value).group()!r} in {value!r}")
    return value


def escape_specifiers(value: str) -> str:
    """For free-text settings (Description=): `%` would start a specifier."""
    return check_no_control(value).replace("%", "%%")


class Specifier(str):
    """An Exec argument that must reach systemd unescaped, e.g. `%i` (the instance name)."""

    def __new__(cls, value: str):
        if not re.fullmatch(r"%[a-zA-Z]", value):
            raise UnsafeValue(f"{value!r} is not a single systemd specifier")
        return super().__new__(cls, value)


# Most of a job's Exec arguments are every job's (the python, the trigger's flags): a render of
# 10,000 jobs quoted 210,000 of them. typed: a Specifier("%i") is not quoted as the text "%i" is.
@functools.lru_cache(maxsize=4096, typed=True)
def quote_exec_arg(value: str) -> str:
    """One Exec*= argument that systemd passes to the process byte for byte."""
    if isinstance(value, Specifier):
        return str(value)
    check_no_control(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def exec_line(argv: list[str]) -> str:
    return " ".join(quote_exec_arg(a) for a in argv)


def seconds(value: int) -> str:
    """A time span systemd reads unambiguously (plain numbers are seconds, but say so)."""
    return f"{int(value)}s"
