"""Every path and name the deployer uses on the cron host, declared once for every side.

The renderer writes units that name these paths, the agent manages them as root, the trigger
and the alert sender read them. `Layout(root)` maps them under another root, so that the agent
can run against a temporary directory in tests.
"""
import os
import re
from dataclasses import dataclass

UNIT_PREFIX = "deployer-"
MARKER = "# Managed by deployer: edits are overwritten by the next push."

UNIT_DIR = "/etc/systemd/system"
# Where `systemctl enable` links a timer (its WantedBy=timers.target), relative to UNIT_DIR.
TIMERS_WANTS = "timers.target.wants"
CREDENTIALS_DIR = "/etc/deployer/credentials"
STATE_DIR = "/var/lib/deployer"
LIB_DIR = STATE_DIR + "/lib"
TRIGGER_PATH = LIB_DIR + "/trigger.pyz"
JOURNAL = STATE_DIR + "/pending-switch.json"
PAUSED_DIR = STATE_DIR + "/paused"
OWNER = STATE_DIR + "/owner.json"
# The lease: {"renewed": unix time, "seconds": N}, rewritten every N/3 s while the host is up.
LEASE = STATE_DIR + "/lease.json"
# Present while the host holds its jobs (its lease ran out while it was down): every job timer
# has ConditionPathExists=!HELD, so none starts, not even for a Persistent= catch-up run.
HELD = STATE_DIR + "/held.json"
# The takeovers this host made from an unreachable one (`deployer move`), newest last.
TAKEOVERS = STATE_DIR + "/takeovers.json"
# Root-owned and created 0700 by the agent: unlike /run/lock (world-writable), no local user
# can plant a link or hold the lock here.
RUN_DIR = "/run/deployer"
LOCK = RUN_DIR + "/lock"
# The hold decided at this boot (issue 22 item 1: fail closed). Every job timer also carries
# ConditionPathExists=NOT_HELD: written only by a boot check that found the lease valid (or none),
# a push or a release, so a check that failed or never ran holds. HELD_RUN: the hold when HELD
# could not be written (a read-only or full /var). World-readable, for the alert sweep; /run is
# root's, so nobody else plants a file there.
HOLD_RUN_DIR = "/run/deployer-hold"
NOT_HELD = HOLD_RUN_DIR + "/not-held"
HELD_RUN = HOLD_RUN_DIR + "/held.json"
TIMER_STAMPS = "/var/lib/systemd/timers"
# The alert units' StateDirectory= (DynamicUser: systemd keeps it under /var/lib/private).
ALERT_STATE_NAME = "deployer-alerts"
FAILING_DIR = "/var/lib/private/" + ALERT_STATE_NAME + "/failing"
# journald's native socket: where a run sends its structured record (contract/record.py).
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# A manual run asked to backfill one slot finds it here (host/slot.py): written by the agent
# as root, readable by the run's dynamic user, never writable by another local user.
BACKFILL_DIR = "/run/deployer-runs"
# Chaining: where a parent's run leaves its slot for the runs it starts (host/chain.py).
CHAIN_DIR = "/run/deployer-chain"
CHAIN_SLOT = "slot.json"


def chain_dir(job: str) -> str:
    """The job's RuntimeDirectory=, private to its dynamic user."""
    return CHAIN_DIR + "/" + job_unit(job, "service")[:-len(".service")]


def chain_slot(job: str) -> str:
    """Its last run's slot, published by its ExecStopPost= (world-readable)."""
    return chain_dir(job) + ".json"


# Issue 23 item 6: what a timer's run accounted for (its slot and the slots it recorded skipped)
# and when it ended, for the job's next run (host/trigger.py, take_through): the job's
# RuntimeDirectory=, private to its dynamic user and gone at reboot (a slot missed while the host
# was down is not one a run overlapped).
THROUGH_DIR = "/run/deployer-through"
THROUGH_FILE = "through.json"
# An empty file the run leaves beside it, emptied again by the unit's ExecStopPost= (as root): its
# mtime is when the unit ended, later than the run's own end on a loaded host.
THROUGH_ENDED = "ended"


def through_dir(job: str) -> str:
    return THROUGH_DIR + "/" + job_unit(job, "service")[:-len(".service")]


# Where systemd keeps THROUGH_DIR's contents: a preserved RuntimeDirectory= of a DynamicUser= unit
# lives under /run/private, and THROUGH_DIR is only a link into it.
THROUGH_PRIVATE_DIR = "/run/private/" + THROUGH_DIR[len("/run/"):]


def through_dirs(timer: str) -> tuple:
    """The job's state directory, the link and what it points at: both go when the job does."""
    name = timer[:-len(".timer")]
    return (THROUGH_DIR + "/" + name, THROUGH_PRIVATE_DIR + "/" + name)


# The job credential that holds its epoch on this host (X-Deployer-Epoch, the fence).
EPOCH_CREDENTIAL = "epoch"
# Jobs this host stopped by itself after a service fenced them (a 409 with a higher epoch).
FENCED_DIR = STATE_DIR + "/fenced"
# The sha256 of each managed file as last read, with its inode, size, mtime and ctime: a state
# read hashes only the files changed since (agent.FileHashes).
FILE_HASHES = STATE_DIR + "/file-hashes"
# Who this machine is (issue 24 item 2: one machine must not answer for two [host:NAME]s). The
# agent sends neither as is, only a digest of both (protocol.StatusAnswer.machine).
MACHINE_ID = "/etc/machine-id"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
STAGING = ".deployer-staging"  # beside each managed directory: new files wait here until the switch

# The one name rule for hosts, jobs and channels (the inventory, the units, the agent and the
# client all check it here): it becomes part of unit names, paths and journal fields.
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# The control characters no value may carry into a unit file, a header or a line printed.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadName(ValueError):
    """A job or channel name that cannot be part of a unit name."""


def _word(value: str) -> str:
    if not NAME.match(value):
        raise BadName("%r is not a valid unit name part" % (value,))
    return value


def job_unit(job: str, suffix: str) -> str:
    """`deployer-<job>.<suffix>`: the name an operator sees in `systemctl list-timers`."""
    return "%s%s.%s" % (UNIT_PREFIX, _word(job), suffix)


def job_of_unit(name: str):
    """The job a `deployer-<job>.timer|service` belongs to, or None for any other name."""
    base = os.path.basename(name)
    for suffix in (".timer", ".service"):
        if base.startswith(UNIT_PREFIX) and base.endswith(suffix) and "@" not in base:
            job = base[len(UNIT_PREFIX):-len(suffix)]
            if NAME.match(job):
                return job
    return None


# Every job run of this machine, together under one cgroup (systemd-cgtop shows them as one),
# with the host's optional ceiling. Alerts stay outside it: they report what the ceiling kills.
JOBS_SLICE = UNIT_PREFIX + "jobs.slice"
# In Kubernetes, the pod's Job name (the downward API's `job-name` label, deployer/k8s.py): the
# trigger's slot there.
SCHEDULED_JOB_ENV = "DEPLOYER_SCHEDULED_JOB"
# A key systemd ignores (X- prefix) in a job's [Unit]: one JSON line {"method", "url"} that the
# alert program reads back, the URL without its password.
REQUEST_KEY = "X-Deployer-Request"
# A job's alert policy (channels.AlertPolicy), in its .service when it is not the default.
ALERT_POLICY_KEY = "X-Deployer-Alert-Policy"
# At boot, before any timer: finishes a switch that a crash interrupted.
RECOVER_UNIT = UNIT_PREFIX + "recover.service"
# The lease: a timer that renews it, and a unit that decides at boot, before any timer and
# before the recovery, whether the host holds its jobs. Instance names: never taken for a job's.
LEASE_TIMER = UNIT_PREFIX + "lease@renew.timer"
LEASE_SERVICE = UNIT_PREFIX + "lease@renew.service"
HOLD_UNIT = UNIT_PREFIX + "lease@boot.service"
# Enabled (for sysinit.target) by the push that first installs them.
BOOT_UNITS = (HOLD_UNIT, RECOVER_UNIT)

# Metrics (issue 14). Debian's prometheus-node-exporter reads every *.prom in this directory
# (its textfile collector); `metrics_dir` on a [host:*] picks another, "" turns metrics off.
METRICS_DIR = "/var/lib/prometheus/node-exporter"
METRICS_FILE = "deployer.prom"
# Root-only: the runs/failures counters, each job's last run, the journal cursor. In /var/lib so
# that the counters survive a restart; never in the textfile directory (node_exporter's user
# could read it, and it is no metric).
METRICS_STATE = STATE_DIR + "/metrics.json"
# Instance names (the files are not templates): a name with "@" is never taken for a job's.
# The collector (root, oneshot) writes METRICS_FILE and pings heartbeat_url; the heartbeat timer
# runs it every minute; every job's OnSuccess=/OnFailure= starts the debounce timer, which runs
# it a few seconds later (a burst of runs starts it once, not once per run).
METRICS_SERVICE = UNIT_PREFIX + "host@metrics.service"
HEARTBEAT_TIMER = UNIT_PREFIX + "host@heartbeat.timer"
METRICS_SOON_TIMER = UNIT_PREFIX + "host@metrics-soon.timer"
# A key systemd ignores, in a job's timer: {"period", "timeout"} in seconds, from the renderer
# (which knows the calendar), for the collector.
METRICS_KEY = "X-Deployer-Metrics"
# The watcher (issue 23 item 2): late slots and long runs of the jobs that set alert_late or
# alert_long (host/watch.py). Instance names, like the collector's: never taken for a job's.
# Rendered only on a host where some job asks for it. Its unit carries WATCH_KEY: what it watches.
WATCH_SERVICE = UNIT_PREFIX + "host@watch.service"
WATCH_TIMER = UNIT_PREFIX + "host@watch.timer"
# Started by the watcher only when there is something to send: the sender, as the alert units' user.
WATCH_SEND_SERVICE = UNIT_PREFIX + "host@watch-send.service"
WATCH_KEY = "X-Deployer-Watch"
# What the watcher told (root's, like the metrics' state), and where it (root: an unprivileged
# user cannot ask systemd over D-Bus under DynamicUser=) leaves the events for the sender (the
# alert units' user): the sender's RuntimeDirectory=. ALERT_QUEUE: each channel's queue of
# undelivered alerts (alert.Coalescer), which the watcher looks into to start the sender.
WATCH_STATE = STATE_DIR + "/watch.json"
WATCH_OUTBOX_NAME = "deployer-watch"
WATCH_OUTBOX = "/run/" + WATCH_OUTBOX_NAME
ALERT_QUEUE = "/var/lib/private/" + ALERT_STATE_NAME + "/queue"
# The [host:*] heartbeat_url: a root-only file, never in a unit (a Healthchecks URL is a secret).
HEARTBEAT_URL = CREDENTIALS_DIR + "/host.heartbeat_url"


def alert_template(channel: str) -> str:
    """`deployer-alert-<channel>@.service`: the OnFailure= handler of every job using it."""
    return "%salert-%s@.service" % (UNIT_PREFIX, _word(channel))


def recovery_template(channel: str) -> str:
    """`deployer-recovery-<channel>@.service`: the OnSuccess= handler (sends "recovered")."""
    return "%srecovery-%s@.service" % (UNIT_PREFIX, _word(channel))


def boot_alert_unit(channel: str, suffix: str) -> str:
    """`deployer-boot-alert@<channel>.timer|service`: the channel's sweep at boot. An instance
    name (the files are not templates) because a name with "@" is never taken for a job's."""
    return "%sboot-alert@%s.%s" % (UNIT_PREFIX, _word(channel), suffix)


# The alert template's instance that `deployer alert test` starts: "_" is in no job name, so no
# failed job's alert can ever be taken for a test (or a test for a failed job's alert).
ALERT_TEST_INSTANCE = "_test"


def alert_test_unit(channel: str) -> str:
    """`deployer-alert-<channel>@_test.service`: the channel's own alert unit (its credentials,
    user, sandbox and environment), started to send a test message."""
    return alert_template(channel).replace("@.service", "@%s.service" % ALERT_TEST_INSTANCE)


def instance(template: str, job: str) -> str:
    return template.replace("@.service", "@%s.service" % _word(job))


def credential(channel: str, kind: str) -> str:
    return "%s/%s.%s" % (CREDENTIALS_DIR, _word(channel), kind)


def job_credential(job: str, name: str) -> str:
    """A job's credential file. Channel names hold no dot, so `jobs.` never meets a channel's."""
    return "%s/jobs.%s.%s" % (CREDENTIALS_DIR, _word(job), name)


@dataclass(frozen=True)
class Layout:
    """The paths above under `root` ("/" on a real host)."""

    root: str = "/"

    def at(self, absolute: str) -> str:
        return os.path.join(self.root, absolute.lstrip("/")) if self.root != "/" else absolute

    @property
    def unit_dir(self) -> str:
        return self.at(UNIT_DIR)

    @property
    def lib_dir(self) -> str:
        return self.at(LIB_DIR)

    @property
    def credentials_dir(self) -> str:
        return self.at(CREDENTIALS_DIR)

    @property
    def state_dir(self) -> str:
        return self.at(STATE_DIR)

    @property
    def journal(self) -> str:
        return self.at(JOURNAL)

    @property
    def paused_dir(self) -> str:
        return self.at(PAUSED_DIR)

    @property
    def owner(self) -> str:
        return self.at(OWNER)

    @property
    def lease(self) -> str:
        return self.at(LEASE)

    @property
    def held(self) -> str:
        return self.at(HELD)

    @property
    def not_held(self) -> str:
        return self.at(NOT_HELD)

    @property
    def held_run(self) -> str:
        return self.at(HELD_RUN)

    @property
    def takeovers(self) -> str:
        return self.at(TAKEOVERS)

    @property
    def backfill_dir(self) -> str:
        return self.at(BACKFILL_DIR)

    @property
    def fenced_dir(self) -> str:
        return self.at(FENCED_DIR)

    @property
    def run_dir(self) -> str:
        return self.at(RUN_DIR)

    @property
    def lock(self) -> str:
        return self.at(LOCK)

    @property
    def timer_stamps(self) -> str:
        return self.at(TIMER_STAMPS)

    @property
    def file_hashes(self) -> str:
        return self.at(FILE_HASHES)

    @property
    def machine_id(self) -> str:
        return self.at(MACHINE_ID)

    @property
    def boot_id(self) -> str:
        return self.at(BOOT_ID)

    def managed_dirs(self):
        """The directories whose files the deployer owns (units only when marked)."""
        return (self.unit_dir, self.lib_dir, self.credentials_dir)

    def to_host(self, path: str) -> str:
        """A path under this layout -> the path a real host would have."""
        if self.root == "/":
            return path
        return "/" + os.path.relpath(path, self.root)
