"""push / plan / status / run / logs against a real systemd host over real SSH."""
from __future__ import annotations

import json
import shlex
import time

import pytest

from deployer.contract import paths
from deployer.host import hashes

from tests.e2e.runs import wait_until
from tests.httpserver import Reply, json_reply

pytestmark = pytest.mark.e2e

FAST = "*:*:0/2"  # every two seconds


def jobs_ini(server, **jobs: str) -> str:
    """[job:NAME] sections; each value is `calendar|path` or a full section body."""
    out = []
    for name, spec in jobs.items():
        if "\n" in spec:
            out.append(f"[job:{name}]\n{spec}\n")
        else:
            calendar, path = spec.split("|")
            key = "on_calendar" if calendar.startswith("*:") else "schedule"
            out.append(f"[job:{name}]\n{key} = {calendar}\nurl = {server.url(path)}\n")
    return "\n".join(out)


def timers(host) -> list[str]:
    """The job timers systemd knows (not deployer-lease@renew.timer: an instance name is never a job's)."""
    out = host.ssh("systemctl list-timers --all --no-legend --plain 'deployer-*'").stdout
    return sorted(t for t in (line.split()[-2] for line in out.splitlines() if line.strip()) if "@" not in t)


def generation(host) -> str:
    """Changes on every daemon-reload (systemd stamps each unit (re)load)."""
    return host.ssh("systemctl show -p UnitsLoadTimestampMonotonic --value").stdout.strip()


def file_stamps(host) -> str:
    return host.ssh("stat -c '%n %i %Y' /etc/systemd/system/deployer-* /var/lib/deployer/lib/*").stdout


def test_push_installs_every_job_and_a_fast_job_really_posts(shared_cron01, server, deployer, write_inventory):
    server.routes["/fast"] = json_reply({"code": 0})
    inventory = write_inventory(shared_cron01.inventory_host() + """
[defaults]
timezone = Asia/Shanghai
""" + jobs_ini(server, fast=f"{FAST}|/fast", hourly="0 * * * *|/hourly",
               nightly="30 2 * * 1-5|/nightly"))

    result = deployer("push", "--host", "cron01", "-i", inventory, check=True)

    # 3 jobs x 2 units, deployer-jobs.slice, deployer-recover.service (issue 16 item 9), the lease's
    # timer, service and hold-at-boot unit (issue 13 item 1), trigger.pyz, the metrics collector and
    # its two timers (issue 14), and each job's epoch (issue 21)
    assert "host cron01: pushed: 18 add" in result.stdout
    assert shared_cron01.ssh("systemctl is-enabled deployer-recover.service deployer-lease@boot.service "
                      "deployer-lease@renew.timer").stdout.split() == ["enabled"] * 3
    assert timers(shared_cron01) == ["deployer-fast.timer", "deployer-hourly.timer", "deployer-nightly.timer"]
    assert shared_cron01.ssh("systemctl is-active deployer-lease@renew.timer").stdout.strip() == "active"
    # The timer's first run (OnBootSec=0: at once) writes the lease, after the push has returned.
    lease = json.loads(wait_until(lambda: shared_cron01.ssh(f"cat {paths.LEASE}", check=False).stdout, 60,
                                  "the lease's first renewal", every=0.5))
    assert lease["seconds"] == 300 and abs(lease["renewed"] - time.time()) < 60
    request = server.wait_for("/fast", timeout=60)[0]
    assert request.method == "POST"
    assert request.headers["X-Deployer-Job"] == "fast"
    calendar = shared_cron01.ssh("systemctl show -p TimersCalendar --value deployer-nightly.timer").stdout
    assert "Mon..Fri *-*-* 02:30:00 Asia/Shanghai" in calendar
    enabled = shared_cron01.ssh("systemctl is-enabled deployer-fast.timer deployer-hourly.timer").stdout.split()
    assert enabled == ["enabled", "enabled"]


def test_second_identical_push_writes_nothing_and_does_not_reload(shared_cron01, server, deployer, write_inventory):
    inventory = write_inventory(shared_cron01.inventory_host() + jobs_ini(server, a="0 * * * *|/a", b="5 4 * * *|/b"))
    before_first = generation(shared_cron01)
    deployer("push", "-i", inventory, check=True)
    after_first = generation(shared_cron01)
    stamps = file_stamps(shared_cron01)

    again = deployer("push", "-i", inventory, "--json", check=True)

    assert after_first != before_first, "the first push must reload systemd (or this test proves nothing)"
    assert json.loads(again.stdout)["add"] == [] and json.loads(again.stdout)["change"] == []
    # 2 jobs x 2 units, the job slice, the recover unit, the lease's 3 units, trigger.pyz, the metrics units (3),
    # 2 epochs: kept as they were, the owner did not change
    assert len(json.loads(again.stdout)["unchanged"]) == 15
    assert generation(shared_cron01) == after_first
    assert file_stamps(shared_cron01) == stamps


def test_a_push_of_unchanged_inputs_still_sees_each_change_on_the_host_and_in_its_inputs(
        shared_cron01, server, deployer, write_inventory, isolated_home):
    """A push of the inputs of the last push (deployer/lastpush.py) reads no inventory, and the
    host hashes only the files changed since its last read (deployer/host/hashes.py): a change by
    hand that keeps a file's size and mtime, and a changed environment variable, are pushed."""
    inventory = write_inventory(shared_cron01.inventory_host() + jobs_ini(
        server, a="0 * * * *|/a", b="schedule = 5 4 * * *\nurl = " + server.url("/b?key=${E2E_KEY}")))
    one = {"E2E_KEY": "one"}
    assert "pushed" in deployer("push", "-i", inventory, env=one, check=True).stdout
    time.sleep(hashes.RACY_SECONDS + 0.5)  # the files are old enough for the host to keep their hashes
    assert "up to date" in deployer("push", "-i", inventory, env=one, check=True).stdout
    assert list((isolated_home / ".cache" / "deployer" / "pushed").iterdir()), "the push kept its record"
    timer = "/etc/systemd/system/deployer-a.timer"
    kept = f"import marshal; print({timer!r} in marshal.load(open({paths.FILE_HASHES!r}, 'rb')))"
    assert shared_cron01.ssh(f"python3 -c {shlex.quote(kept)}").stdout.strip() == "True"
    assert "up to date" in deployer("push", "-i", inventory, env=one, check=True).stdout

    # In place (the same inode), the same size, the mtime put back: only its ctime tells.
    shared_cron01.ssh(f"m=$(stat -c %y {timer}) && o=$(grep -bo AccuracySec=1s {timer} | cut -d: -f1) && "
                      f"printf 9 | dd of={timer} bs=1 seek=$((o + 12)) conv=notrunc status=none && "
                      f"touch -d \"$m\" {timer}")
    assert "AccuracySec=9s" in shared_cron01.ssh(f"cat {timer}").stdout
    pushed = deployer("push", "-i", inventory, env=one, check=True).stdout
    assert "pushed: 0 add, 1 change" in pushed, pushed
    assert "AccuracySec=1s" in shared_cron01.ssh(f"cat {timer}").stdout
    assert "up to date" in deployer("push", "-i", inventory, env=one, check=True).stdout

    two = {"E2E_KEY": "two"}
    assert "pushed: 0 add, 1 change" in deployer("push", "-i", inventory, env=two, check=True).stdout
    assert "up to date" in deployer("push", "-i", inventory, env=two, check=True).stdout
    server.routes["/b"] = json_reply({"code": 0})
    deployer("run", "b", "-i", inventory, env=two, check=True)
    assert server.wait_for("/b", timeout=60)[-1].path == "/b?key=two"


def test_changed_and_removed_jobs_are_updated_and_pruned(shared_cron01, server, deployer, write_inventory):
    # Hourly jobs: one may fire if the test runs across an hour; that run must succeed.
    server.routes["/keep"] = server.routes["/gone"] = json_reply({"code": 0})
    path = write_inventory(shared_cron01.inventory_host() + jobs_ini(server, keep="0 * * * *|/keep",
                                                               gone="0 * * * *|/gone"))
    deployer("push", "-i", path, check=True)
    write_inventory(shared_cron01.inventory_host() + jobs_ini(server, keep="15 * * * *|/keep"))

    plan = deployer("plan", "--diff", "-i", path, check=True)
    assert "~ job keep (deployer-keep.service, deployer-keep.timer)" in plan.stdout
    assert "- job gone (not in " in plan.stdout
    assert "~ /etc/systemd/system/deployer-keep.timer" in plan.stdout
    assert "-OnCalendar=*-*-* *:00:00 UTC" in plan.stdout
    assert "+OnCalendar=*-*-* *:15:00 UTC" in plan.stdout
    assert "- /etc/systemd/system/deployer-gone.timer" in plan.stdout
    assert timers(shared_cron01) == ["deployer-gone.timer", "deployer-keep.timer"], "plan must change nothing"

    pushed = deployer("push", "-i", path, check=True)

    # keep's timer, and its service (the trigger names its slot from the calendar); gone's two units and epoch
    assert "2 change, 3 remove" in pushed.stdout
    assert timers(shared_cron01) == ["deployer-keep.timer"]
    assert shared_cron01.ssh("ls /etc/systemd/system/timers.target.wants/ | grep deployer-").stdout.split() == [
        paths.HEARTBEAT_TIMER, paths.METRICS_SOON_TIMER, "deployer-keep.timer", "deployer-lease@renew.timer"]
    assert "*:15:00" in shared_cron01.ssh("systemctl show -p TimersCalendar --value deployer-keep.timer").stdout
    assert shared_cron01.ssh("systemctl --failed --no-legend").stdout.strip() == ""


def test_a_job_added_again_does_not_run_a_slot_that_passed_while_it_was_gone(cron01, server, deployer,
                                                                             write_inventory):
    """systemd keeps a timer's Persistent= stamp after its unit file is gone; a job added again
    started from that old last trigger and ran at once the slot that passed in between."""
    server.routes["/again"] = server.routes["/other"] = json_reply({"code": 0})
    stamp = f"{paths.TIMER_STAMPS}/stamp-deployer-again.timer"
    path = write_inventory(cron01.inventory_host() + jobs_ini(server, again="0 * * * *|/again",
                                                              other="0 3 1 1 *|/other"))
    deployer("push", "-i", path, check=True)
    assert cron01.ssh(f"test -e {stamp}", check=False).returncode == 0  # systemd wrote it at the start

    write_inventory(cron01.inventory_host() + jobs_ini(server, other="0 3 1 1 *|/other"))
    deployer("push", "-i", path, check=True)
    assert cron01.ssh(f"test -e {stamp}", check=False).returncode == 1, "a removed job must leave no stamp"

    # As an older deployer left it, from a removal two hours ago: a whole hour's slot since.
    cron01.ssh(f"touch -d @{int(time.time()) - 7200} {stamp}")
    write_inventory(cron01.inventory_host() + jobs_ini(server, again="0 * * * *|/again",
                                                       other="0 3 1 1 *|/other"))
    deployer("push", "-i", path, check=True)
    time.sleep(2)  # a catch-up is queued as the timer starts, and the push waits for that start

    started = cron01.ssh("systemctl show -p ExecMainStartTimestampMonotonic --value deployer-again.service").stdout
    assert started.strip() == "0", "the job ran a slot from before it was added again"
    assert server.received("/again") == []
    assert int(cron01.ssh(f"stat -c %Y {stamp}").stdout) >= time.time() - 60  # systemd's own, from the start


def test_run_status_and_logs(shared_cron01, server, deployer, write_inventory):
    server.routes["/good"] = json_reply({"code": 0})
    server.routes["/bad"] = Reply(500, b"settlement exploded")
    path = write_inventory(shared_cron01.inventory_host() + jobs_ini(
        server, good="0 3 * * *|/good",
        bad=f"schedule = 0 4 * * *\nurl = {server.url('/bad')}\nretries = 0"))
    deployer("push", "-i", path, check=True)

    ok = deployer("run", "good", "-i", path, check=True)
    failed = deployer("run", "bad", "-i", path, check=False)
    status = json.loads(deployer("status", "-i", path, "--json", check=True).stdout)
    logs = deployer("logs", "bad", "-i", path, "-n", "20", check=True)
    table = deployer("status", "-i", path, check=True).stdout

    assert "POST http://127.0.0.1" in ok.stdout and "-> 200" in ok.stdout
    assert failed.returncode == 1
    assert "-> 500" in failed.stdout and "settlement exploded" in failed.stdout
    assert "job bad failed" in failed.stderr
    rows = {row["job"]: row for row in status["jobs"]}
    assert rows["good"]["result"] == "ok"
    assert rows["bad"]["result"].startswith("failed") and rows["bad"]["exit_status"] == 1
    assert rows["good"]["schedule"] == ["*-*-* 03:00:00 UTC"]
    assert rows["good"]["next"].endswith("+00:00")
    assert "settlement exploded" in logs.stdout
    assert table.splitlines()[0].split() == ["HOST", "JOB", "SCHEDULE", "LAST", "NEXT", "RESULT"]
    rows = [line for line in table.splitlines()[1:] if not line.startswith("host ")]
    assert [line.split()[:3] for line in rows] == [["cron01", "bad", "0"], ["cron01", "good", "0"]]
    assert "host cron01: last push: by " in table  # the audit trail's line after the table (issue 23 item 9)
    assert "failed: status 500" in table
    assert len(server.received("/good")) == 1


def test_bad_inventory_is_refused_and_changes_nothing(shared_cron01, server, deployer, write_inventory):
    path = write_inventory(shared_cron01.inventory_host() + jobs_ini(server, a="0 * * * *|/a"))
    deployer("push", "-i", path, check=True)
    stamps = file_stamps(shared_cron01)
    write_inventory(shared_cron01.inventory_host() + "[job:a]\nschedule = 0 * * * *\nurl = " + server.url("/a")
                    + "\nretires = 3\n")

    result = deployer("push", "-i", path, check=False)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "[job:a] retires: unknown key (did you mean 'retries'?)" in result.stderr
    assert path in result.stderr
    assert "Traceback" not in result.stderr
    assert file_stamps(shared_cron01) == stamps


def test_a_unit_verify_refuses_stops_the_push_before_anything_changes(
        shared_cron01, server, deployer, write_inventory):
    """verify checks the units in parallel calls while the push writes its other files (the
    jobs' epoch credentials): a complaint about one unit of a later call still refuses the whole
    push, and the host keeps what it had, credentials too, with nothing left staged. The
    complaint is the host's own: an operator's drop-in for one new job's service, with a key
    this systemd does not know."""
    before = write_inventory(shared_cron01.inventory_host() + jobs_ini(server, a="0 * * * *|/a"))
    deployer("push", "-i", before, check=True)
    many = {f"j{number:03d}": f"0 3 * * *|/j{number}" for number in range(400)}
    after = write_inventory(shared_cron01.inventory_host() + jobs_ini(server, a="0 * * * *|/a", **many), "many.ini")
    drop_in = "/etc/systemd/system/deployer-j350.service.d"
    shared_cron01.ssh(f"mkdir {drop_in} && printf '[Service]\\nNoSuchKey=1\\n' > {drop_in}/operator.conf")
    stamps, credentials = file_stamps(shared_cron01), shared_cron01.ssh("ls -l /etc/deployer/credentials").stdout

    refused = deployer("push", "-i", after, check=False)

    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "systemd-analyze verify refused the new units" in refused.stderr
    assert f"{drop_in}/operator.conf:2: Unknown key 'NoSuchKey'" in refused.stderr
    assert file_stamps(shared_cron01) == stamps
    assert shared_cron01.ssh("ls -l /etc/deployer/credentials").stdout == credentials
    assert shared_cron01.ssh(f"find /etc -path '*/{paths.STAGING}/*'").stdout == ""
    assert timers(shared_cron01) == ["deployer-a.timer"]

    shared_cron01.ssh(f"rm -r {drop_in}")
    deployer("push", "-i", after, check=True)
    assert len(timers(shared_cron01)) == 401


def test_unknown_host_key_is_refused_by_default(shared_cron01, deployer, write_inventory, tmp_path, server):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    host = shared_cron01.inventory_host().replace(str(shared_cron01.known_hosts), str(empty))
    path = write_inventory(host + jobs_ini(server, a="0 * * * *|/a"))

    result = deployer("push", "-i", path, check=False)

    assert result.returncode == 1
    assert "not in known_hosts and host_key = strict" in result.stderr
    assert shared_cron01.ssh("ls /etc/systemd/system/ | grep -c deployer- || true").stdout.strip() == "0"


def test_accept_new_trusts_first_key_then_refuses_a_changed_one(shared_cron01, deployer, write_inventory, tmp_path, server):
    known = tmp_path / "tofu_known_hosts"
    host = shared_cron01.inventory_host(host_key="accept-new").replace(str(shared_cron01.known_hosts), str(known))
    path = write_inventory(host + jobs_ini(server, a="0 * * * *|/a"))

    deployer("push", "-i", path, check=True)
    assert "ssh-ed25519" in known.read_text()
    another_key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known.write_text(f"{shared_cron01.known_hosts.read_text().split()[0]} ssh-ed25519 {another_key}\n")
    changed = deployer("push", "-i", path, check=False)

    assert changed.returncode == 1
    assert "CHANGED" in changed.stderr


def test_an_odd_but_legal_url_reaches_the_service_unchanged(shared_cron01, server, deployer, write_inventory):
    odd = server.url("/odd/a%20b/$x;y$$z%%i?q='\"&z=\\é&p=%2F")
    # Byte for byte as written, but for what cannot be on the wire: the non-ASCII é, as UTF-8 %XX.
    sent = "/odd/a%20b/$x;y$$z%%i?q='\"&z=\\%C3%A9&p=%2F"
    server.routes[sent.split("?")[0]] = json_reply({"code": 0})
    path = write_inventory(shared_cron01.inventory_host() + f"[job:odd]\nschedule = 0 3 * * *\nurl = {odd}\n")
    deployer("push", "-i", path, check=True)

    ran = deployer("run", "odd", "-i", path, check=True)

    assert server.received(sent.split("?")[0])[0].path == sent
    assert f"POST {odd} -> 200" in ran.stdout, "the trigger must have been given the URL byte for byte"


def test_ssh_round_trips_do_not_grow_with_the_number_of_jobs(shared_cron01, server, write_inventory, isolated_home,
                                                             monkeypatch):
    """Counted on real pushes: 2 round trips for a push that changes something, 1 for a no-op."""
    from click.testing import CliRunner

    from deployer import remote
    from deployer.cli import main

    calls: list[str] = []
    real_execute = remote.execute

    def counting(connection, command, *args, **kwargs):
        calls.append(kwargs.get("step", "?"))
        return real_execute(connection, command, *args, **kwargs)

    monkeypatch.setattr(remote, "execute", counting)
    monkeypatch.setenv("HOME", str(isolated_home))
    counts = {}
    for jobs in (3, 60):
        body = "".join(f"[job:j{i}]\nschedule = 0 * * * *\nurl = {server.url('/x')}\n" for i in range(jobs))
        path = write_inventory(shared_cron01.inventory_host() + body, name=f"inv{jobs}.ini")
        for kind in ("push", "no-op"):
            calls.clear()
            result = CliRunner().invoke(main, ["push", "-i", path])
            assert result.exit_code == 0, result.output
            counts[(jobs, kind)] = list(calls)
    assert counts[(3, "push")] == counts[(60, "push")] == ["agent state", "agent apply"]
    assert counts[(3, "no-op")] == counts[(60, "no-op")] == ["agent state"]
