"""A real systemd cron host in ~1 s: this machine's OS booted with systemd-nspawn, sshd on loopback.

Used by the end-to-end tests, the demo and the benchmark (see shared/CRONHOST.md for why
each flag is there). The host's /etc is never touched: the container's /etc is an overlay
whose upper layer is a directory we own, and its root is a tmpfs.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

# Units of this machine that a cron host under test does not need (and that slow its boot).
MASKED = (
    "postgresql.service", "getty@.service", "console-getty.service", "serial-getty@.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "dpkg-db-backup.timer",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "systemd-timesyncd.service",
    "systemd-pstore.service", "systemd-tmpfiles-clean.timer",
    # `make install` puts Prometheus and node_exporter on this machine (for tests/e2e/test_metrics.py),
    # so on every container too: each would start its own on the shared ports. A test starts the
    # one node_exporter it needs itself.
    "prometheus.service", "prometheus-node-exporter.service", "prometheus-node-exporter-apt.timer",
    "prometheus-node-exporter-ipmitool-sensor.timer", "prometheus-node-exporter-mellanox-hca-temp.timer",
    "prometheus-node-exporter-nvme.timer", "prometheus-node-exporter-smartmon.timer",
)
REQUIRED_COMMANDS = ("systemd-nspawn", "sshd", "ssh-keygen", "ssh")
BOOT_TIMEOUT = 60

# Without a systemd on the host side, systemd-nspawn puts the container's cgroups under its own
# cgroup: the root for every container, so each one's `payload/deployer.slice/...` was the same
# cgroup. Two hosts running a job of the same name (cron01 and cron02 in a failover test, or two
# test runs side by side) shared `deployer-tick.service`: PID 1 saw the other container's
# processes there (pid 0: "Failed to kill control group: Input/output error") and failed starts
# with 219/CGROUP. So each container gets a cgroup of its own in the hierarchies systemd uses.
CGROUP_TREES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
CGROUP_PARENT = "deployer-test"

# Every container's systemd, journald and journalctl -f take inotify instances from the same
# user (root, no user namespace), 128 by default: with several hosts booted side by side
# (parallel test workers) `journalctl -f` found none left and never saw a new entry (`deployer
# logs -f` printed nothing). The test machine's limit is raised to what many hosts need.
INOTIFY_INSTANCES = "/proc/sys/fs/inotify/max_user_instances"
INOTIFY_NEEDED = 8192


def enough_inotify_instances() -> None:
    try:
        with open(INOTIFY_INSTANCES) as current:
            if int(current.read()) >= INOTIFY_NEEDED:
                return
        with open(INOTIFY_INSTANCES, "w") as limit:
            limit.write(str(INOTIFY_NEEDED))
    except (OSError, ValueError):
        pass  # not root here: the hosts still boot; only many side by side may run short


class CronHostError(RuntimeError):
    pass


def missing_commands() -> list[str]:
    paths = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [c for c in REQUIRED_COMMANDS if not shutil.which(c, path=paths)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class CronHost:
    """One booted container. `start()` returns when `systemctl is-system-running` says so."""

    def __init__(self, name: str, workdir: Optional[Path] = None, persistent: bool = False,
                 users: tuple[str, ...] = ()):
        """`persistent`: keep /var/lib/deployer, timer stamps and the journal (/var/log/journal,
        as on a Debian 12 host) across restart(), as a disk would (the container's /var is
        otherwise a tmpfs)."""
        self.name = name
        self.machine = f"{name}-{os.getpid()}"
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"cronhost-{name}-"))
        self.persistent = persistent
        self.users = users
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None
        self.key = self.workdir / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.log = self.workdir / "console.log"
        # With `persistent`: the disk's directories to bind read-only at the next start() (a
        # read-only /var/lib/deployer, for the hold's fail-closed tests).
        self.read_only: set[str] = set()

    # -- preparing the overlay ----------------------------------------------------------

    def _prepare(self) -> None:
        upper = self.workdir / "upper"
        if upper.exists():
            shutil.rmtree(upper)
        (upper / "ssh" / "sshd_config.d").mkdir(parents=True)
        (upper / "ssh" / "keys").mkdir()
        (upper / "systemd" / "system").mkdir(parents=True)
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        host_key = upper / "ssh" / "deployer_test_host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        public = self.key.with_suffix(".pub").read_text()
        for user in ("root",) + self.users:
            (upper / "ssh" / "keys" / user).write_text(public)
        if self.users:
            self._add_users(upper)
        (upper / "ssh" / "sshd_config.d" / "00-deployer-test.conf").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey /etc/ssh/deployer_test_host_key\n"
            "AuthorizedKeysFile /etc/ssh/keys/%u\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nUseDNS no\n"
            # Without PAM, no logind session per connection: with it, a connection arriving while
            # the previous session's user@0.service is stopping waited ~120 s for pam_systemd.
            "UsePAM no\n"
            # One connection per user carries every session of the tests' own probes (ssh_args).
            "MaxSessions 100\n"
        )
        host_public = host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_public[0]} {host_public[1]}\n")
        for unit in MASKED:
            (upper / "systemd" / "system" / unit).symlink_to("/dev/null")
        # Nobody reads the passive console: once a start job runs long during boot (a run resumed at
        # boot polls for as long as its work takes), PID 1 prints "A start job is running for ..."
        # there until the pty is full, then blocks (seen: no PID 1 message, D-Bus calls to it timing
        # out, until the container was killed). shared/CRONHOST.md says to set ShowStatus=no.
        (upper / "systemd" / "system.conf.d").mkdir(parents=True)
        (upper / "systemd" / "system.conf.d" / "00-test-host.conf").write_text("[Manager]\nShowStatus=no\n")

    def _add_users(self, upper: Path) -> None:
        """Unprivileged accounts with passwordless sudo, as an ops team's deploy user has."""
        passwd, group, shadow = (Path("/etc", f).read_text() for f in ("passwd", "group", "shadow"))
        for number, user in enumerate(self.users, start=2001):
            passwd += f"{user}:x:{number}:{number}::/tmp:/bin/sh\n"
            group += f"{user}:x:{number}:\n"
            shadow += f"{user}:*:19000:0:99999:7:::\n"
        for name, content, mode in (("passwd", passwd, 0o644), ("group", group, 0o644), ("shadow", shadow, 0o640)):
            (upper / name).write_text(content)
            (upper / name).chmod(mode)
        (upper / "sudoers.d").mkdir()
        rules = upper / "sudoers.d" / "deployer-test"
        rules.write_text("".join(f"{user} ALL=(root) NOPASSWD: ALL\n" for user in self.users))
        rules.chmod(0o440)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "CronHost":
        missing = missing_commands()
        if missing:
            raise CronHostError(f"missing {', '.join(missing)}: apt-get install systemd-container openssh-server")
        if not (self.workdir / "upper").exists():
            self._prepare()
        self.upper = self.workdir / "upper"
        command = [
            "systemd-nspawn", "--directory=/", "--volatile=yes",
            f"--overlay=/etc:{self.upper}:/etc", f"--machine={self.machine}",
            "--register=no", "--keep-unit", "--link-journal=no", "--console=read-only", "--boot",
        ]
        if self.persistent:
            for inside in ("/var/lib/systemd/timers", "/var/lib/deployer", "/var/lib/private", "/var/log/journal"):
                outside = self.disk(inside)
                outside.mkdir(parents=True, exist_ok=True)
                mode = 0o700 if inside.endswith("private") else 0o755  # systemd insists
                if outside.stat().st_mode & 0o777 != mode:  # (an immutable one cannot be chmod-ed)
                    outside.chmod(mode)
                command.insert(-1, f"--bind{'-ro' if inside in self.read_only else ''}={outside}:{inside}")
        cgroups = self._own_cgroups()
        enough_inotify_instances()

        def enter_own_cgroups() -> None:  # in the child, before nspawn runs
            for cgroup in cgroups:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                    procs.write(str(os.getpid()))

        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=enter_own_cgroups if cgroups else None)
        self._wait_ready()
        return self

    def _own_cgroups(self) -> list[str]:
        """This container's cgroup in each hierarchy systemd uses here (see CGROUP_TREES); none
        where the hierarchy is not mounted that way (then nspawn keeps its own behaviour)."""
        made = []
        for tree in CGROUP_TREES:
            if os.access(os.path.join(tree, "cgroup.procs"), os.W_OK):
                cgroup = os.path.join(tree, CGROUP_PARENT, self.machine)
                try:
                    os.makedirs(cgroup, exist_ok=True)
                except OSError:
                    continue
                made.append(cgroup)
        return made

    def _remove_cgroups(self) -> None:
        """Empty cgroups left by a stopped container go (rmdir, deepest first; busy ones stay)."""
        for tree in CGROUP_TREES:
            top = os.path.join(tree, CGROUP_PARENT, self.machine)
            for directory, _, _ in sorted(os.walk(top), key=lambda entry: -entry[0].count("/")):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass

    def disk(self, inside: str) -> Path:
        """Where a `persistent` host keeps `inside` (e.g. /var/lib/deployer) on this machine."""
        return self.workdir / "disk" / inside.strip("/").replace("/", "_")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CronHostError(f"{self.name}: systemd-nspawn exited: {self.log.read_text()[-2000:]}")
            probe = self.ssh("systemctl is-system-running --wait", check=False, timeout=BOOT_TIMEOUT)
            if probe.returncode == 0 or probe.stdout.strip() == "degraded":
                return
            time.sleep(0.1)
        self.stop()
        raise CronHostError(f"{self.name}: not ready after {BOOT_TIMEOUT}s")

    def stop(self) -> None:
        """SIGTERM asks the container to halt; once it hung, so escalate to SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.close_connections()
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._remove_cgroups()

    def restart(self) -> None:
        """Power-cycle: /etc (the overlay) survives, and with `persistent` so does the disk state."""
        self.stop()
        self.start()

    # -- using it -----------------------------------------------------------------------

    def control_path(self, user: str = "root") -> str:
        """The socket of this host's shared connection for `user` (short: a socket path has 108
        bytes; this host's own: two hosts of one run never share a connection)."""
        digest = hashlib.sha1(f"{self.workdir.resolve()}:{self.port}".encode()).hexdigest()[:12]
        return f"{tempfile.gettempdir()}/dct-{digest}-{user}"

    def ssh_args(self, user: str = "root", shared: bool = True) -> list[str]:
        """`shared`: through one connection per host and user, kept open 60 s after its last use.
        A test polls its host hundreds of times: a new connection costs ~90 ms of CPU (the key
        exchange, sshd's start), a session in an open one ~12 ms. Not shared: a connection of its
        own (a test that asks whether the host can be reached now: an open connection outlives
        sshd's listener)."""
        multiplex = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path(user)}",
                     "-o", "ControlPersist=60"] if shared else ["-o", "ControlPath=none"]
        return ["ssh", "-i", str(self.key), "-p", str(self.port), "-F", "/dev/null",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", *multiplex, f"{user}@127.0.0.1"]

    def close_connections(self) -> None:
        """End the shared connections (before a stop: a client must never reach a dying one)."""
        for user in ("root",) + self.users:
            if os.path.exists(self.control_path(user)):
                subprocess.run(["ssh", "-o", f"ControlPath={self.control_path(user)}", "-O", "exit", "127.0.0.1"],
                               capture_output=True, timeout=10)

    def ssh(self, command: str, check: bool = True, timeout: float = 60, user: str = "root",
            input: Optional[str] = None, shared: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.ssh_args(user, shared) + [command], capture_output=True, text=True,
                                timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise CronHostError(f"{self.name}: {command!r} exited {result.returncode}: {result.stderr}")
        return result

    def inventory_host(self, user: str = "root", **extra: str) -> str:
        """The [host:NAME] section that points the deployer at this container."""
        lines = [f"[host:{self.name}]", "address = 127.0.0.1", f"port = {self.port}", f"user = {user}",
                 f"identity_file = {self.key}", f"known_hosts = {self.known_hosts}"]
        lines += [f"{k} = {v}" for k, v in extra.items()]
        return "\n".join(lines) + "\n"

    def __enter__(self) -> "CronHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
