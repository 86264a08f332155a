"""The record a run leaves: one structured journal entry per run, written by the trigger.

`journalctl DEPLOYER_JOB=settle -o json` on the host lists a job's runs; `deployer history`
and the metrics read the same fields. A run killed before it could write (systemd's timeout
backstop, an OOM kill, a power loss) has no record: PID 1's own entries for the unit say so
(host/alert.py reads them for alerts).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Optional

from deployer.contract.paths import JOURNAL_SOCKET, BadName, job_unit

# systemd's DynamicUser= range: every job run's user (both sandboxes), never a login's.
DYNAMIC_UIDS = range(61184, 65520)
# The journal fields that say who sent an entry; journald sets them, a sender cannot.
SENDER_FIELDS = ("_UID", "_SYSTEMD_UNIT")
# `journalctl MESSAGE_ID=...` finds every run of every job.
RUN_FINISHED = "5f0c1b0e9f5a4e2d8a7c3b6d1e2f4a90"
RESULTS = ("ok", "failed", "fenced", "skipped")
# DEPLOYER_SKIPPED of a slot that called nothing (docs/json.md)
SKIP_KINDS = ("catch_up", "concurrency")
# PID 1's own entries about a unit's run (they carry UNIT=, INVOCATION_ID=): "Failed with
# result 'timeout'" (UNIT_RESULT=) and "Main process exited" (EXIT_CODE=, EXIT_STATUS=). They are
# all a run killed before it could write its record leaves.
UNIT_FAILED = "d9b373ed55a64feb8242e02dbe79a49c"
UNIT_EXITED = "98e322203f7a4ed290d09fe03c09fe15"
MAX_REASON = 1000
PRIORITY_INFO, PRIORITY_ERR = "6", "3"
# Every field a record carries (journal_fields), for the readers' --output-fields=.
FIELDS = ("DEPLOYER_JOB", "DEPLOYER_RUN", "DEPLOYER_SLOT", "DEPLOYER_STARTED", "DEPLOYER_DURATION",
          "DEPLOYER_ATTEMPTS", "DEPLOYER_RESULT", "DEPLOYER_REASON", "DEPLOYER_HTTP_STATUS", "DEPLOYER_KEY",
          "DEPLOYER_EPOCH", "DEPLOYER_REACHED", "DEPLOYER_RESUME", "DEPLOYER_PARAMS", "DEPLOYER_RUN_BY",
          "DEPLOYER_AFTER", "DEPLOYER_SKIPPED")


@dataclass(frozen=True)
class RunRecord:
    job: str
    run: str  # the run id: systemd's $INVOCATION_ID, sent to the service as X-Deployer-Run-Id
    slot: int  # the scheduled slot, unix seconds (X-Deployer-Scheduled-At)
    started: float  # unix seconds
    duration: float  # seconds, retries included
    attempts: int
    result: str  # one of RESULTS
    reason: str  # the verdict's reason, one line
    http_status: Optional[int] = None  # of the last attempt that got an answer
    key: str = ""  # the Idempotency-Key sent: <job>/<slot> or <job>/manual-<run id>
    epoch: int = 0  # the X-Deployer-Epoch sent
    reached: tuple = ()  # per attempt: may the service have seen it (and be executing it)?
    resume: bool = False  # interrupted, and safe to start again under the same key at boot
    params: str = ""  # the parameter values this run used, a JSON object: {"batch": "42"}
    by: str = ""  # who asked for a manual run (`deployer run`): user@client
    after: str = ""  # a chained run: "<parent> <its slot> succeeded|failed", why it ran
    skipped: str = ""  # result "skipped": one of SKIP_KINDS

    @property
    def message(self) -> str:
        if self.result == "skipped":
            return f"{self.job}: slot {self.key.split('/', 1)[-1]} {self.reason}"
        plural = "" if self.attempts == 1 else "s"
        verdict = "ok" if self.result == "ok" else f"{self.result.upper()} ({self.reason})"
        return f"{self.job}: {verdict} in {self.duration:.2f}s ({self.attempts} attempt{plural})"

    def journal_fields(self) -> dict:
        return {
            "MESSAGE": self.message,
            "MESSAGE_ID": RUN_FINISHED,
            "PRIORITY": PRIORITY_ERR if self.result in ("failed", "fenced") else PRIORITY_INFO,
            "DEPLOYER_JOB": self.job,
            "DEPLOYER_RUN": self.run,
            "DEPLOYER_SLOT": str(self.slot),
            "DEPLOYER_STARTED": f"{self.started:.3f}",
            "DEPLOYER_DURATION": f"{self.duration:.3f}",
            "DEPLOYER_ATTEMPTS": str(self.attempts),
            "DEPLOYER_RESULT": self.result,
            "DEPLOYER_REASON": " ".join(self.reason.split())[:MAX_REASON],
            "DEPLOYER_HTTP_STATUS": "" if self.http_status is None else str(self.http_status),
            "DEPLOYER_KEY": self.key,
            "DEPLOYER_EPOCH": str(self.epoch),
            "DEPLOYER_REACHED": "".join("y" if seen else "n" for seen in self.reached),
            "DEPLOYER_RESUME": "y" if self.resume else "",
            "DEPLOYER_PARAMS": self.params,
            "DEPLOYER_RUN_BY": self.by,
            **({"DEPLOYER_AFTER": self.after} if self.after else {}),
            **({"DEPLOYER_SKIPPED": self.skipped} if self.skipped else {}),
        }

    @classmethod
    def from_journal(cls, entry: dict) -> "RunRecord":
        """From one `journalctl -o json` entry (raises ValueError/KeyError on a foreign one:
        journalctl gives a field sent twice as a list)."""
        if any(not isinstance(v, str) for k, v in entry.items() if k.startswith("DEPLOYER_")):
            raise ValueError("a record field that is not one string")
        status = entry.get("DEPLOYER_HTTP_STATUS") or ""
        return cls(job=entry["DEPLOYER_JOB"], run=entry.get("DEPLOYER_RUN", ""),
                   slot=int(entry["DEPLOYER_SLOT"]), started=float(entry["DEPLOYER_STARTED"]),
                   duration=float(entry["DEPLOYER_DURATION"]), attempts=int(entry["DEPLOYER_ATTEMPTS"]),
                   result=entry["DEPLOYER_RESULT"], reason=entry.get("DEPLOYER_REASON", ""),
                   http_status=int(status) if status.isdigit() else None, key=entry.get("DEPLOYER_KEY", ""),
                   epoch=int(entry.get("DEPLOYER_EPOCH") or 0),
                   reached=tuple(c == "y" for c in entry.get("DEPLOYER_REACHED", "")),
                   resume=entry.get("DEPLOYER_RESUME") == "y", params=entry.get("DEPLOYER_PARAMS", ""),
                   by=entry.get("DEPLOYER_RUN_BY", ""), after=entry.get("DEPLOYER_AFTER", ""),
                   skipped=entry.get("DEPLOYER_SKIPPED", ""))


def sent_by_the_job(entry: dict) -> bool:
    """Did the job's own run send this entry? journald's native socket is open to every local
    user, so anyone can send an entry with these fields: only one from a DynamicUser= run
    (`_UID`, from the kernel's credentials) counts, and from the job's own unit when journald
    could tell the unit (`_SYSTEMD_UNIT` can be missing for a sender that already exited)."""
    uid, unit = entry.get("_UID"), entry.get("_SYSTEMD_UNIT")
    if not isinstance(uid, str) or not uid.isdigit() or int(uid) not in DYNAMIC_UIDS:
        return False
    try:
        own = job_unit(entry.get("DEPLOYER_JOB") or "", "service")
    except (BadName, TypeError):
        return False
    return unit is None or unit == own


def encode(fields: dict) -> bytes:
    """journald's native protocol: `KEY=value` lines; a value with a newline is length-prefixed."""
    out = bytearray()
    for key, value in fields.items():
        data = str(value).encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def send(record: RunRecord, identifier: str, path: str = JOURNAL_SOCKET) -> bool:
    """Send the record to the journal; False where there is none (Kubernetes, a laptop)."""
    return send_fields({"SYSLOG_IDENTIFIER": identifier, **record.journal_fields()}, path)


def send_fields(fields: dict, path: str = JOURNAL_SOCKET) -> bool:
    """One structured entry to journald's native socket; False where there is none."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
            journal.sendto(encode(fields), path)
        return True
    except OSError:
        return False
