"""The inventory's jobs as Kubernetes batch/v1 CronJobs running the same trigger (pure; no I/O).

Semantics kept: the original cron expression and time zone, concurrency -> concurrencyPolicy
(Forbid or Replace), catch_up -> startingDeadlineSeconds (`once`: an hour; `none`: 60 s; a
duration: its seconds), retries -> backoffLimit (the trigger itself then makes one
attempt per pod), timeout -> activeDeadlineSeconds (the whole run). Alert tokens come from a
Secret per channel, by reference: no secret value is ever printed.
"""
from __future__ import annotations


import re
import time
from dataclasses import dataclass
from typing import Any, Optional

from .errors import DeployerError
from . import render
from .contract.channels import CHANNEL_TYPES
from .contract.paths import SCHEDULED_JOB_ENV
from .models import Inventory, Job, is_chained
from .schedule import MACROS, QUARTZ_WEEKDAYS, schedule_kind, split_zone_prefix

DEFAULT_IMAGE = "deployer-trigger:latest"
MAX_CRONJOB_NAME = 52  # Kubernetes appends 11 characters for the Jobs it creates
# If the controller was down, a run up to an hour late still happens (once), like Persistent=
# (catch_up = once: without a deadline Kubernetes gives up on a CronJob that missed 100 slots).
STARTING_DEADLINE_SECONDS = 3600


def starting_deadline(job: Job) -> int:
    """catch_up as Kubernetes' startingDeadlineSeconds: how late a missed slot may still start."""
    from .contract.options import catch_up_seconds

    seconds = catch_up_seconds(job.catch_up)
    return STARTING_DEADLINE_SECONDS if seconds is None else int(seconds)
LABELS = {"app.kubernetes.io/managed-by": "deployer"}


@dataclass(frozen=True)
class Skipped:
    job: str
    reason: str


def k8s_schedule(job: Job) -> tuple[str, str]:
    """(schedule, timeZone) as Kubernetes' cron reads them, or DeployerError saying why not."""
    if is_chained(job):
        raise DeployerError(f"job {job.name}: Kubernetes CronJobs have no chaining: it runs only after another "
                            "job (after / on_failure_run) and has no schedule of its own")
    if job.schedule is None:
        raise DeployerError(f"job {job.name}: on_calendar has no cron equivalent; give it a schedule")
    # Kubernetes refuses CRON_TZ= in the schedule: it goes to .spec.timeZone
    prefixed_zone, text = split_zone_prefix(job.schedule)
    zone = prefixed_zone or job.timezone
    kind = schedule_kind(text)
    if kind == "boot":
        raise DeployerError(f"job {job.name}: @reboot has no Kubernetes equivalent")
    if text.lower() in MACROS:
        return text.lower(), zone
    fields = text.split()
    if kind == "quartz":
        fields = _quartz_as_cron(job.name, fields)
    if len(fields) != 5:
        raise DeployerError(f"job {job.name}: {text!r} is not a 5-field cron expression")
    day, weekday = fields[2], fields[4]
    if (day.startswith("*") and day != "*" and weekday != "*") or \
            (weekday.startswith("*") and weekday != "*" and day != "*"):
        # Debian cron treats a field starting with '*' (like */2) as unrestricted when
        # combining day-of-month and day-of-week; Kubernetes only treats '*' so.
        raise DeployerError(f"job {job.name}: {text!r}: Kubernetes combines {day!r} and {weekday!r} "
                            "differently from cron; write the day fields without a leading */")
    return " ".join(fields), zone


def _quartz_as_cron(name: str, fields: list[str]) -> list[str]:
    seconds, minute, hour, day, month, weekday = fields[:6]
    if seconds != "0" or (len(fields) == 7 and fields[6] != "*") or re.search(r"[LW#]", day + weekday):
        raise DeployerError(f"job {name}: Quartz {' '.join(fields)!r} needs seconds, years or L/W/#, "
                            "which Kubernetes' cron cannot express")

    def weekday_number(token: str) -> str:
        token = token.lower()
        value = QUARTZ_WEEKDAYS.index(token) + 1 if token in QUARTZ_WEEKDAYS else int(token)
        return str(value - 1)  # Quartz 1 = Sunday; cron 0 = Sunday

    if weekday not in ("?", "*"):
        weekday = re.sub(r"[0-9a-zA-Z]+", lambda m: weekday_number(m.group()), weekday)
    return [minute, hour, "*" if day == "?" else day, month, "*" if weekday == "?" else weekday]


def trigger_args(job: Job, epoch: int) -> list[str]:
    """The unit's trigger arguments, but one attempt per pod: Kubernetes retries (backoffLimit).
    `epoch`: the export's grant time (ms): a CronJob is one more owner of the job."""
    args = render.trigger_args(job)
    args[args.index("--retries") + 1] = "0"
    return args + ["--epoch", str(epoch)]


def grant_epoch(clock=time.time) -> int:
    """The epoch of jobs exported now (deploy.grant_epochs' scheme: the grant time in ms)."""
    return int(clock() * 1000)


CREDENTIALS_MOUNT = "/run/deployer-credentials"


def job_secret_name(job: str) -> str:
    return f"deployer-job-{job}"


def secret_name(channel: str) -> str:
    return f"deployer-alert-{channel}"


def secret_fields(alert) -> list:
    """The channel's secret fields it sets (channels.py): keys of its Secret, never values here."""
    return [f for f in CHANNEL_TYPES[alert.type].fields if f.secret and alert.value(f.key)]


def cronjob(inv: Inventory, job: Job, image: str, namespace: Optional[str], suspend: bool = False,
            epoch: int = 0) -> dict[str, Any]:
    schedule, zone = k8s_schedule(job)
    if len(job.name) > MAX_CRONJOB_NAME:
        raise DeployerError(f"job {job.name}: Kubernetes limits CronJob names to {MAX_CRONJOB_NAME} characters")
    labels = {**LABELS, "deployer/job": job.name}
    env: list[dict[str, Any]] = [
        {"name": "DEPLOYER_HOST_NAME", "value": "kubernetes"},
        # The Job's name ends in its scheduled minute (the CronJob controller's naming): the slot.
        {"name": SCHEDULED_JOB_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}},
    ]
    if job.alert:
        alert = inv.alert(job.alert)
        env += [{"name": "DEPLOYER_ALERT_TYPE", "value": alert.type}]
        env += [{"name": field.env, "value": str(alert.value(field.key))} for field in render.plain_fields(alert)]
        env += [{"name": field.env, "valueFrom": {"secretKeyRef": {"name": secret_name(alert.name), "key": field.key}}}
                for field in secret_fields(alert)]
    credentials = sorted(render.job_credentials(job))
    pod: dict[str, Any] = {}
    mounts: dict[str, Any] = {}
    if credentials:  # the trigger reads them from $CREDENTIALS_DIRECTORY, as under systemd
        env.append({"name": "CREDENTIALS_DIRECTORY", "value": CREDENTIALS_MOUNT})
        mounts = {"volumeMounts": [{"name": "credentials", "mountPath": CREDENTIALS_MOUNT, "readOnly": True}]}
        pod = {"volumes": [{"name": "credentials", "secret": {"secretName": job_secret_name(job.name),
                                                              "defaultMode": 0o400}}]}
    container = {
        "name": "trigger", "image": image, "args": trigger_args(job, epoch), "env": env, **mounts,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": render.UNIT_MEMORY_MAX + "i"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
    }
    metadata: dict[str, Any] = {"name": job.name, "labels": labels}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": metadata,
        "spec": {
            "schedule": schedule, "timeZone": zone, "concurrencyPolicy": job.concurrency.capitalize(),
            "suspend": suspend, "startingDeadlineSeconds": starting_deadline(job),
            "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
            "jobTemplate": {"metadata": {"labels": labels}, "spec": {
                "backoffLimit": job.retries, "activeDeadlineSeconds": job.timeout,
                "template": {"metadata": {"labels": labels}, "spec": {
                    "restartPolicy": "Never", "containers": [container], **pod,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                }},
            }},
        },
    }


def export(inv: Inventory, image: str = DEFAULT_IMAGE, namespace: Optional[str] = None,
           skip_unexpressible: bool = False, suspend: bool = False) -> tuple[list[dict[str, Any]], list[Skipped]]:
    manifests, skipped, problems = [], [], []
    epoch = grant_epoch()
    for job in inv.jobs:
        try:
            manifests.append(cronjob(inv, job, image, namespace, suspend, epoch))
        except DeployerError as error:
            (skipped.append(Skipped(job.name, str(error))) if skip_unexpressible else problems.append(str(error)))
    if problems:
        raise DeployerError("cannot export: " + "; ".join(problems) + " (--skip-unexpressible leaves them out)")
    return manifests, skipped


def variable(inv: Inventory, channel: str, key: str) -> str:
    """The environment variable that holds a channel's token or secret: the one the inventory
    reads it from (`token = ${DINGTALK_TOKEN}`), else one named after the channel."""
    return inv.variables.get((f"alert:{channel}", key)) or f"{channel.upper().replace('-', '_')}_{key.upper()}"


LOOPBACK = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


def loopback_warnings(inv: Inventory) -> list[str]:
    """Jobs and channels whose URL names this machine: in a pod, localhost is the pod itself,
    so the exported CronJob would call nothing (or the wrong thing)."""
    from urllib.parse import urlsplit

    def loopback(url: Optional[str]) -> bool:
        host = (urlsplit(str(url)).hostname or "") if url else ""
        return host in LOOPBACK or host.endswith(".localhost") or host.startswith("127.")

    found = [f"job {j.name}: url {render.redact_url(j.url)} is the pod itself in Kubernetes (localhost): "
             "give the service's cluster address" for j in inv.jobs if loopback(j.url)]
    used = sorted({j.alert for j in inv.jobs if j.alert})
    found += [f"alert {a}: endpoint {render.redact_url(inv.alert(a).endpoint)} is the pod itself in Kubernetes (localhost)"
              for a in used if loopback(inv.alert(a).endpoint)]
    return found


def secret_commands(inv: Inventory, namespace: Optional[str]) -> list[str]:
    """How to create the Secrets the CronJobs reference, with placeholders, never values."""
    used = sorted({j.alert for j in inv.jobs if j.alert})
    flag = f" -n {namespace}" if namespace else ""
    commands = []
    for name in used:
        alert = inv.alert(name)
        literals = " ".join(f"--from-literal={f.key}=\"${{{variable(inv, name, f.key)}}}\""
                            for f in secret_fields(alert))
        commands.append(f"kubectl{flag} create secret generic {secret_name(name)} {literals}")
    for job in inv.jobs:
        files = " ".join(f"--from-file={name}=./{job.name}.{name}" for name in sorted(render.job_credentials(job)))
        if files:
            commands.append(f"kubectl{flag} create secret generic {job_secret_name(job.name)} {files}")
    return commands


def render_yaml(inv: Inventory, manifests: list[dict[str, Any]], skipped: list[Skipped],
                namespace: Optional[str]) -> str:
    header = ["# Generated by `deployer export k8s` from " + inv.path + ". Alert secrets are referenced,",
              "# never included; create them first:"]
    header += [f"#   {command}" for command in secret_commands(inv, namespace)] or ["#   (no alerts)"]
    header += [f"# skipped {s.job}: {s.reason}" for s in skipped]
    header += [f"# note {job.name}: alert_after/alert_repeat have no Kubernetes equivalent: there every failed run "
               "alerts by itself (the trigger keeps no streak between pods)" for job in inv.jobs
               if render.alert_policy(job) is not None]
    header += [f"# note {job.name}: alert_late has no Kubernetes equivalent: startingDeadlineSeconds (written from "
               "catch_up) is not it: a slot that could not start within it is skipped, and nothing tells that a slot is late"
               for job in inv.jobs if job.alert and job.alert_late]
    header += [f"# note {job.name}: alert_long has no Kubernetes equivalent: activeDeadlineSeconds (written from "
               "timeout) is not it: it kills the run, where alert_long tells once and lets it go on" for job in inv.jobs if job.alert and job.alert_long]
    header += [f"# note {job.name}: params: each scheduled run fills the declared defaults; Kubernetes has no "
               "manual run with values (`kubectl create job --from=cronjob/...` takes none): there `deployer run "
               "--set` has no equivalent" for job in inv.jobs if job.params]

    exported = {m["metadata"]["name"] for m in manifests}
    for name, chain in render.chains(inv.jobs).items():
        started = chain.on_success + chain.on_failure
        if started and name in exported:
            header.append(f"# note {name}: Kubernetes CronJobs have no chaining: this CronJob does not start "
                          f"{', '.join(started)} (after / on_failure_run)")
    header += [f"# note alert {channel}: a storm (many jobs failing at once) is one message per channel on a cron "
               "host; Kubernetes has no such gathering: there every failed pod sends its own message"
               for channel in sorted({job.alert for job in inv.jobs if job.alert})]
    import yaml

    documents = [yaml.safe_dump(m, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16)
                 for m in manifests]
    return "\n".join(header) + "\n" + "".join(f"---\n{document}" for document in documents)
