"""systemd syntax: unit names, `%`/`$` escaping, Exec argument quoting. Templates use these filters.

Why `%` and `$` are doubled: systemd expands specifiers (`%n`, `%i`, ...) in most unit
settings and environment variables (`$FOO`, `${FOO}`) in Exec lines, so a URL such as
`http://h/a%20b?x=$y` would silently change meaning if written as is. Control characters
never get here: the inventory refuses them, and these functions refuse them again because
a newline in a unit file would start a new directive.
"""
from __future__ import annotations

import re

UNIT_PREFIX = "deployer-"
MARKER = "# Managed by deployer: edits are overwritten by the next push."

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNIT_WORD = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class UnsafeValue(ValueError):
    """A value that cannot be written into a unit file without changing its structure."""


def check_no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise UnsafeValue(f"control character {_CONTROL.search(value).group()!r} in {value!r}")
    return value


def job_unit(job: str, suffix: str) -> str:
    """`deployer-<job>.<suffix>`: the name an operator sees in `systemctl list-timers`."""
    if not _UNIT_WORD.match(job):
        raise UnsafeValue(f"{job!r} is not a valid unit name part")
    return f"{UNIT_PREFIX}{job}.{suffix}"


def escape_specifiers(value: str) -> str:
    """For free-text settings (Description=): `%` would start a specifier."""
    return check_no_control(value).replace("%", "%%")


class Specifier(str):
    """An Exec argument that must reach systemd unescaped, e.g. `%i` (the instance name)."""

    def __new__(cls, value: str):
        if not re.fullmatch(r"%[a-zA-Z]", value):
            raise UnsafeValue(f"{value!r} is not a single systemd specifier")
        return super().__new__(cls, value)


def quote_exec_arg(value: str) -> str:
    """One Exec*= argument that systemd passes to the process byte for byte."""
    if isinstance(value, Specifier):
        return str(value)
    check_no_control(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def alert_template(channel: str) -> str:
    """`deployer-alert-<channel>@.service`: the OnFailure= handler of every job using it."""
    if not _UNIT_WORD.match(channel):
        raise UnsafeValue(f"{channel!r} is not a valid unit name part")
    return f"{UNIT_PREFIX}alert-{channel}@.service"


def recovery_template(channel: str) -> str:
    """`deployer-recovery-<channel>@.service`: the OnSuccess= handler (sends "recovered")."""
    return alert_template(channel).replace("-alert-", "-recovery-", 1)


def alert_instance(channel: str, job: str) -> str:
    return alert_template(channel).replace("@.service", f"@{job}.service")


def recovery_instance(channel: str, job: str) -> str:
    return recovery_template(channel).replace("@.service", f"@{job}.service")


def exec_line(argv: list[str]) -> str:
    return " ".join(quote_exec_arg(a) for a in argv)


def seconds(value: int) -> str:
    """A time span systemd reads unambiguously (plain numbers are seconds, but say so)."""
    return f"{int(value)}s"
