"""The one exception hierarchy; the CLI turns each into a one-line message and exit 1."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


class DeployerError(Exception):
    """A problem the user can fix. Anything else is a bug and keeps its traceback."""

    def lines(self) -> list[str]:
        return [str(self)]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the inventory, located as precisely as we can."""

    file: str
    section: Optional[str]
    key: Optional[str]
    message: str
    line: Optional[int] = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.message}"


class InventoryError(DeployerError):
    """Every problem found in an inventory, reported together."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class ScheduleError(DeployerError):
    """A schedule expression that is invalid or that systemd cannot express."""


class RemoteError(DeployerError):
    """The cron host could not be reached or refused a step; carries the host name."""

    def __init__(self, host: str, message: str):
        self.host = host
        super().__init__(f"host {host}: {message}")


class RemoteCommandError(RemoteError):
    """A command on the host exited non-zero; shows the step, status and stderr tail."""

    def __init__(self, host: str, step: str, status: int, stderr: str):
        self.step = step
        self.status = status
        tail = " | ".join(line for line in stderr.strip().splitlines()[-3:] if line.strip())
        super().__init__(host, f"{step} failed (exit {status})" + (f": {tail}" if tail else ""))


class HostSetupError(RemoteCommandError):
    """The host answered but lacks what the agent needs (its python, passwordless sudo): it is
    not down, and the message says what to set up."""

    def __init__(self, host: str, step: str, status: int, message: str):
        self.step = step
        self.status = status
        RemoteError.__init__(self, host, message)


class JobFailed(DeployerError):
    """`deployer run` started a job and it failed; its output was already shown."""


class AgentRefused(RemoteError):
    """The agent on the host refused a request; `code` is one of contract.protocol.ERROR_CODES
    (`locked`, `host_changed`, `wrong_owner`, ...), so callers can tell refusals apart."""

    def __init__(self, host: str, code: str, message: str):
        self.code = code
        super().__init__(host, message)
