"""The code that runs on the cron host (as root, stdlib only): one call = one SSH round trip.

remote.py sends this file as the argument of `python3 -c` and the request as JSON on
stdin (never in process arguments, so secrets stay out of `ps`). It answers one JSON
document on stdout. It must run on any python3 >= 3.7 and import nothing of ours.
"""
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

LOCK_PATH = "/run/lock/deployer.lock"
LOCK_WAIT_SECONDS = 60


class AgentError(Exception):
    pass


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def managed_files(request):
    """path -> sha256 of every file the deployer owns: marked units and its library files."""
    found = {}
    unit_dir, prefix, marker = request["unit_dir"], request["unit_prefix"], request["marker"].encode()
    try:
        names = sorted(os.listdir(unit_dir))
    except FileNotFoundError:
        names = []
    for name in names:
        path = os.path.join(unit_dir, name)
        if name.startswith(prefix) and os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as handle:
                content = handle.read()
            if content.startswith(marker):
                found[path] = hashlib.sha256(content).hexdigest()
    for directory in (request["lib_dir"], request["credentials_dir"]):
        if os.path.isdir(directory):
            for name in sorted(os.listdir(directory)):
                path = os.path.join(directory, name)
                if os.path.isfile(path):
                    found[path] = sha256(path)
    return found


# systemctl prints times in the local zone; in UTC they can be parsed without guessing what
# an abbreviation such as CST means.
SYSTEMCTL_ENV = dict(os.environ, TZ="UTC", LC_ALL="C", SYSTEMD_PAGER="", SYSTEMD_COLORS="0")


def systemctl(*args, check=True):
    result = subprocess.run(("systemctl",) + args, stdout=subprocess.PIPE, env=SYSTEMCTL_ENV,
                            stderr=subprocess.PIPE, universal_newlines=True)
    if check and result.returncode != 0:
        raise AgentError("systemctl %s: %s" % (" ".join(args[:3]), result.stderr.strip()))
    return result


def op_state(request):
    files = managed_files(request)
    answer = {"files": files}
    if request.get("contents"):
        answer["contents"] = {}
        for path in files:
            if path.startswith(request["unit_dir"]):
                with open(path, "rb") as handle:
                    answer["contents"][path] = base64.b64encode(handle.read()).decode()
    answer["paused"] = sorted(paused_timers())
    answer["owner"] = read_owner()
    return answer


@contextlib.contextmanager
def locked():
    """Serialise pushes: a second one waits, then gives up with a clear message."""
    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    with open(LOCK_PATH, "w") as handle:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AgentError("another push holds %s for over %ds" % (LOCK_PATH, LOCK_WAIT_SECONDS))
                time.sleep(0.2)
        yield


def staging_path(path):
    directory, name = os.path.split(path)
    return os.path.join(directory, ".deployer-staging", name)


def write_staged(path, content, mode):
    staged = staging_path(path)
    # A directory holding secrets (mode 0600 files) is itself closed to others.
    private = mode & 0o077 == 0
    os.makedirs(os.path.dirname(staged), mode=0o700 if private else 0o755, exist_ok=True)
    if private:
        os.chmod(os.path.dirname(path), 0o700)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.chmod(staged, mode)
    return staged


VERIFY_CHUNK = 150  # verify's cost grows faster than linearly with the units it loads at once


def verify(unit_paths):
    """systemd-analyze verify on the staged units, in parallel chunks; any complaint aborts."""
    chunks = [unit_paths[i:i + VERIFY_CHUNK] for i in range(0, len(unit_paths), VERIFY_CHUNK)]
    complaints, running = [], []
    workers = max(os.cpu_count() or 1, 1)
    for chunk in chunks + [None] * workers:
        if chunk is not None:
            # --man=no: otherwise verify runs `man` for every Documentation= line (15x slower).
            running.append(subprocess.Popen(["systemd-analyze", "verify", "--man=no"] + chunk,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            universal_newlines=True))
        while running and (chunk is None or len(running) >= workers):
            process = running.pop(0)
            output = process.communicate()[0]
            lines = [line for line in output.splitlines() if line.strip()]
            if process.returncode != 0 or lines:
                complaints += lines or ["exit status %d" % process.returncode]
            if chunk is not None:
                break
    if complaints:
        raise AgentError("systemd-analyze verify refused the new units: " + " | ".join(complaints[-5:]))


def wait_active(units, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        states = systemctl("is-active", *units, check=False).stdout.split()
        pending = [u for u, state in zip(units, states) if state != "active"]
        if not pending:
            return
        if time.monotonic() > deadline or any(s == "failed" for s in states):
            raise AgentError("timers did not start: %s" % ", ".join(pending[:5]))
        time.sleep(0.05)


def unit_name(path):
    return os.path.basename(path)


class Stopwatch:
    """Seconds per step, returned with the answer so that a slow push says where it was slow."""

    def __init__(self):
        self.steps, self.last = {}, time.monotonic()

    def lap(self, name):
        now = time.monotonic()
        self.steps[name] = round(self.steps.get(name, 0) + now - self.last, 3)
        self.last = now


def progress(text):
    """A step the client may show on a terminal; a lost client must not stop the push."""
    try:
        sys.stderr.write("@progress " + text + "\n")
        sys.stderr.flush()
    except OSError:
        pass


STATE_DIR = "/var/lib/deployer"
JOURNAL = STATE_DIR + "/pending-switch.json"
PAUSED_DIR = STATE_DIR + "/paused"
TIMER_STAMPS = "/var/lib/systemd/timers"


def paused_timers():
    try:
        return set(os.listdir(PAUSED_DIR))
    except FileNotFoundError:
        return set()


def write_atomically(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(path + ".tmp", path)


def set_last_trigger(timers, when):
    """A timer's last trigger (its Persistent= stamp), as systemd reads it when it starts."""
    for timer in timers:
        stamp = os.path.join(TIMER_STAMPS, "stamp-" + timer)
        os.makedirs(TIMER_STAMPS, exist_ok=True)
        open(stamp, "a").close()
        os.utime(stamp, (when, when))


def play(journal):
    """Carry out a switch. Every step may be repeated, so an interrupted switch is finished
    by playing its journal again (roll_forward)."""
    if journal["disable"]:
        # Stop the timers only: a run already in progress finishes, it is not killed.
        systemctl("--no-reload", "disable", "--now", *journal["disable"], check=False)
    if journal["restamp"]:
        # systemd issue 16732: a persistent timer whose new OnCalendar= has a time between its
        # last trigger and now fires at once on reload. Its last trigger becomes the moment it
        # was stopped: an old-schedule gap never fires, a slot inside the push still does.
        systemctl("stop", *journal["restamp"], check=False)
        systemctl("clean", "--what=state", *journal["restamp"], check=False)
        set_last_trigger(journal["restamp"], journal["stopped_at"])
    for timer, when in journal["stamps"].items():
        set_last_trigger([timer], when)
    for staged, target in journal["renames"]:
        if os.path.exists(staged):
            os.rename(staged, target)
    for path in journal["removes"]:
        if os.path.exists(path):
            os.unlink(path)
    for timer in journal["unpause"]:
        if os.path.exists(os.path.join(PAUSED_DIR, timer)):
            os.unlink(os.path.join(PAUSED_DIR, timer))
    if journal["reload"]:
        progress("systemctl daemon-reload")
        systemctl("daemon-reload")
    if journal["enable"]:
        progress("enabling %d timers" % len(journal["enable"]))
        systemctl("--no-reload", "enable", *journal["enable"])
    if journal["start"]:
        progress("starting %d timers" % len(journal["start"]))
        # --no-block: one D-Bus call per timer without waiting for each job, then one check.
        systemctl("start", "--no-block", *journal["start"])
        wait_active(journal["start"])


def roll_forward():
    """Finish a switch that a crash or a kill interrupted. Returns whether there was one."""
    try:
        with open(JOURNAL) as handle:
            journal = json.load(handle)
    except FileNotFoundError:
        return False
    play(journal)
    os.unlink(JOURNAL)
    return True


def clear_staging(request):
    for directory in (request["unit_dir"], request["lib_dir"], request["credentials_dir"]):
        staging = os.path.join(directory, ".deployer-staging")
        if os.path.isdir(staging):
            for name in os.listdir(staging):
                os.unlink(os.path.join(staging, name))


def op_apply(request):
    # A client that dies (killed, connection lost) must not stop a switch under way.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    watch = Stopwatch()
    with locked():
        watch.lap("lock")
        return apply_locked(request, watch)


def apply_locked(request, watch):
    """Everything apply does under the host lock: recover, check, stage, verify, switch."""
    unit_dir = request["unit_dir"]
    writes = request["write"]  # [{"path", "content" (base64), "mode", "start"}]
    removes = request["remove"]
    recovered = roll_forward()
    check_owner(request)
    current = managed_files(request)
    if current != request["expect"]:
        raise AgentError("the host changed since it was read (another push?); run the push again")
    clear_staging(request)
    progress("writing %d files" % len(writes))
    staged = {}
    for item in writes:
        staged[item["path"]] = write_staged(item["path"], base64.b64decode(item["content"]), item["mode"])
    os.sync()  # every staged byte on disk before anything is switched: one flush, not one per file
    watch.lap("stage")
    progress("systemd-analyze verify: %d units" % sum(p.startswith(unit_dir + "/") for p in staged))
    try:
        verify(sorted(s for p, s in staged.items() if p.startswith(unit_dir + "/")))
    except AgentError:
        clear_staging(request)
        raise
    watch.lap("verify")
    paused = paused_timers()
    starts = {item["path"]: item.get("start", True) for item in writes}
    timers = [p for p in staged if p.endswith(".timer")]
    added = [unit_name(p) for p in timers if p not in current]
    changed = [unit_name(p) for p in timers if p in current]
    boot_only = {unit_name(p) for p in timers if not starts[p]}
    removed = [unit_name(p) for p in removes if p.endswith(".timer")]
    journal = {
        "disable": removed,
        "restamp": [t for t in changed if t not in paused],
        "stopped_at": time.time(),
        "stamps": {t: w for t, w in request.get("stamps", {}).items() if t in added},
        # Library files, then services, then timers: no timer ever points at a missing service.
        "renames": [[staged[p], p] for p in sorted(staged, key=lambda p: (
            p.startswith(unit_dir + "/"), p.endswith(".timer"), p))],
        # Timers before their services, for the same reason.
        "removes": sorted(removes, key=lambda p: not p.endswith(".timer")),
        "unpause": [t for t in removed if t in paused],
        "reload": any(p.startswith(unit_dir + "/") for p in list(staged) + removes),
        "enable": [t for t in added if t not in paused],
        "start": [t for t in added + changed if t not in boot_only and t not in paused],
    }
    write_atomically(OWNER, json.dumps({"host": request["host"], "inventory": request.get("inventory", "?")}))
    write_atomically(JOURNAL, json.dumps(journal))  # from here on, the new set is what the host holds
    watch.lap("switch")
    play(journal)
    os.unlink(JOURNAL)
    watch.lap("activate")
    return {"reloaded": journal["reload"], "started": [t for t in journal["start"] if t in added],
            "restarted": [t for t in journal["start"] if t in changed], "stopped": removed,
            "enabled_for_boot": sorted(boot_only), "kept_paused": sorted(paused & set(added + changed)),
            "recovered_interrupted_push": recovered, "seconds": watch.steps}


def show(units, properties):
    """`systemctl show` for many units in one call -> {unit: {property: value}}."""
    if not units:
        return {}
    result = systemctl("show", "-p", ",".join(["Id"] + properties), *units)
    shown, block = {}, {}
    for line in result.stdout.splitlines() + [""]:
        if not line.strip():
            if block.get("Id"):
                shown[block["Id"]] = block
            block = {}
            continue
        key, _, value = line.partition("=")
        block[key] = value
    return shown


def iso_time(value):
    """`Tue 2026-11-24 07:41:06 UTC` (as printed under TZ=UTC) or `@<unix>` -> ISO 8601, or ""."""
    value = value.strip()
    if value.startswith("@"):
        seconds = int(value[1:].split(".")[0])
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds)) if seconds else ""
    parts = value.split()
    if len(parts) == 4 and parts[3] == "UTC":
        return "%sT%s+00:00" % (parts[1], parts[2])
    return ""


def calendar_info(value):
    """TimersCalendar=`{ OnCalendar=X ; next_elapse=@N }...` -> ([X, ...], earliest next)."""
    lines, nexts = [], []
    for chunk in value.split("{")[1:]:
        fields = dict(part.strip().partition("=")[::2] for part in chunk.rstrip("} ").split(" ; "))
        if "OnCalendar" in fields:
            lines.append(fields["OnCalendar"])
        nexts.append(iso_time(fields.get("next_elapse", "")))
    return lines, min([n for n in nexts if n] or [""])


def op_status(request):
    prefix = request["unit_prefix"]
    timers = sorted(unit_name(p) for p in managed_files(request) if p.endswith(".timer"))
    services = [t[: -len(".timer")] + ".service" for t in timers]
    timer_props = show(timers, ["ActiveState", "UnitFileState", "NextElapseUSecRealtime",
                                "LastTriggerUSec", "TimersCalendar"])
    service_props = show(services, ["ActiveState", "Result", "ExecMainStatus",
                                    "ExecMainStartTimestamp", "ExecMainExitTimestamp"])
    jobs = []
    paused = paused_timers()
    for timer, service in zip(timers, services):
        t, s = timer_props.get(timer, {}), service_props.get(service, {})
        calendar, next_elapse = calendar_info(t.get("TimersCalendar", ""))
        active = t.get("ActiveState", "") == "active"
        jobs.append({"job": timer[len(prefix): -len(".timer")], "timer": timer, "service": service,
                     "timer_state": t.get("ActiveState", ""), "enabled": t.get("UnitFileState", ""),
                     "calendar": calendar, "next": next_elapse if active else "",
                     "paused": timer in paused,
                     "last": iso_time(t.get("LastTriggerUSec", "")),
                     "service_state": s.get("ActiveState", ""), "result": s.get("Result", ""),
                     "exit_status": int(s.get("ExecMainStatus") or 0),
                     "started": iso_time(s.get("ExecMainStartTimestamp", "")),
                     "finished": iso_time(s.get("ExecMainExitTimestamp", ""))})
    return {"jobs": jobs}


def journal(service, lines=None, invocation=None):
    args = ["journalctl", "--no-pager", "-o", "short-iso", "-u", service]
    if invocation:
        args.append("_SYSTEMD_INVOCATION_ID=" + invocation)
    if lines:
        args += ["-n", str(lines)]
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    return result.stdout


def op_run(request):
    service = request["service"]
    if not os.path.exists(os.path.join(request["unit_dir"], service)):
        raise AgentError("%s is not installed here (push first?)" % service)
    started = systemctl("start", service, check=False)
    props = show([service], ["InvocationID", "Result", "ExecMainStatus"]).get(service, {})
    invocation = props.get("InvocationID", "")
    return {"ok": started.returncode == 0, "result": props.get("Result", ""),
            "exit_status": props.get("ExecMainStatus", ""),
            "output": journal(service, invocation=invocation) if invocation else "",
            "error": started.stderr.strip()}


OWNER = STATE_DIR + "/owner.json"


def read_owner():
    try:
        with open(OWNER) as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return None


def check_owner(request):
    """One machine serves one [host:NAME]: another host's jobs must never land here."""
    owner = read_owner()
    if owner and owner.get("host") != request["host"] and not request.get("take_over"):
        raise AgentError("this machine runs the jobs of host %r (pushed from %s); refusing to install host "
                         "%r's jobs here. Check the address in the inventory, or hand the jobs over with "
                         "`deployer move`" % (owner.get("host"), owner.get("inventory", "?"), request["host"]))


def installed_timer(request):
    timer = request["timer"]
    if not os.path.exists(os.path.join(request["unit_dir"], timer)):
        raise AgentError("%s is not installed here" % timer)
    return timer


def op_pause(request):
    with locked():
        timer = installed_timer(request)
        os.makedirs(PAUSED_DIR, exist_ok=True)
        open(os.path.join(PAUSED_DIR, timer), "w").close()
        # Disabled as well as stopped, so that a reboot does not bring it back.
        systemctl("disable", "--now", timer)
        return {"paused": timer}


def op_resume(request):
    with locked():
        timer = installed_timer(request)
        marker = os.path.join(PAUSED_DIR, timer)
        if os.path.exists(marker):
            os.unlink(marker)
        # Runs missed while paused are not made up: the last trigger becomes now.
        systemctl("stop", timer, check=False)
        systemctl("clean", "--what=state", timer, check=False)
        set_last_trigger([timer], time.time())
        systemctl("enable", "--now", timer)
        return {"resumed": timer}


def op_handoff(request):
    """The first step of `deployer move`: stop these timers here and say when."""
    with locked():
        timers = [t for t in request["timers"] if os.path.exists(os.path.join(request["unit_dir"], t))]
        if timers:
            systemctl("disable", "--now", *timers)
        return {"stopped": timers, "at": time.time()}


def op_logs(request):
    return {"output": journal(request["service"], lines=request.get("lines"))}


OPERATIONS = {"state": op_state, "apply": op_apply, "status": op_status, "run": op_run, "logs": op_logs,
              "pause": op_pause, "resume": op_resume, "handoff": op_handoff}


def main():
    request = json.loads(sys.stdin.read())
    try:
        if os.geteuid() != 0:
            raise AgentError("needs root on the host: log in as root, or set `sudo = true` (passwordless "
                             "sudo for this user) in [host:%s]" % request.get("host", "?"))
        if request["op"] in ("state", "status", "run") and os.path.exists(JOURNAL):
            with locked():  # an interrupted switch is finished before anything reads the host
                roll_forward()
        answer = {"ok": True, "result": OPERATIONS[request["op"]](request)}
    except AgentError as error:
        answer = {"ok": False, "error": str(error)}
    try:
        sys.stdout.write(json.dumps(answer))
        sys.stdout.flush()
    except OSError:
        pass  # the client is gone; the work is done all the same


if __name__ == "__main__":
    main()
