"""Issue 22 item 6, on a real host: a manual run that is still going when the job's timer
elapses. systemd merges the timer's start into the running unit, so that slot ran nowhere and
`history` called it missed. The agent now starts the merged slot's run after the manual one.

The manual run is made longer than the job's period, so at least one slot elapses during it
however late the run starts on a loaded machine; the test then reads which slots did, from the
manual run's own start and end in PID 1's journal."""
from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from tests.e2e.runs import records, runs, wait_until
from tests.httpserver import Reply

pytestmark = pytest.mark.e2e

PERIOD = 10
MANUAL_SECONDS = PERIOD + 2


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def test_a_slot_that_elapses_during_a_manual_run_still_runs_once(shared_cron01, server, deployer,
                                                                 write_inventory):
    host = shared_cron01

    def answer(request):
        manual = request.headers["X-Deployer-Slot"].startswith("manual-")
        return Reply(200, b'{"code": 0}', delay=MANUAL_SECONDS if manual else 0.0)

    server.routes["/tick"] = answer
    path = write_inventory(host.inventory_host() + f"""
[job:tick]
on_calendar = *:*:0/{PERIOD}
timezone = UTC
url = {server.url('/tick')}
retries = 0
timeout = 30s
""")
    deployer("push", "-i", path, "--yes", check=True)
    wait_until(lambda: records(host, "tick"), timeout=60, what="a first scheduled run")

    for _ in range(3):
        ran = deployer("run", "tick", "-i", path, check=True)
        # The timer may start a run between the agent's look and its start (a 10 s period on a
        # loaded machine): the request joins it, that run keeps the timer's slot, and the agent
        # says so. That is no manual run: ask again.
        if "which joined it" not in ran.stdout + ran.stderr:
            break
        print("joined the timer's run:", ran.stdout + ran.stderr)
    # The run has ended; its record may reach the journal a moment later (journald under load).
    # Up to 2 min, as most waits in the suite. When it fails it says which is missing (a loaded run's
    # failure here was a manual run keyed as the timer's previous slot: host/slot.py asked_start).
    try:
        [manual] = wait_until(lambda: [r for r in runs(host, "tick") if r.record and "/manual-" in r.record.key
                                       and r.ended], timeout=120, what="the manual run's record and end")
    except (AssertionError, ValueError):  # which is missing (or is there twice): the record, or PID 1's entries
        print(runs(host, "tick"))
        print(host.ssh("journalctl -o short-precise --no-pager -n 40 -u deployer-tick.service").stdout)
        raise
    merged = [s for s in range(int(manual.triggered) // PERIOD * PERIOD, int(manual.ended) + 1, PERIOD)
              if manual.triggered < s <= manual.ended]
    assert merged, f"no slot elapsed during the manual run ({manual.triggered:.1f}..{manual.ended:.1f})"
    latest = merged[-1]
    # The agent names the moment PID 1 stamped the elapse: on a loaded host seconds after the slot
    # (:43 for :40), and still within the manual run; the slot run for it is the latest at or before.
    said = re.search(r"the timer elapsed at (\S+) during this manual run", ran.stdout + ran.stderr)
    if said:
        elapsed = datetime.fromisoformat(said.group(1)).timestamp()
        assert manual.triggered < elapsed <= manual.ended + 1, (elapsed, manual)
        assert elapsed // PERIOD * PERIOD == latest, (said.group(1), iso(latest))
    # Else nothing was said merged: seen twice on loaded CI runs, the cause not proven (PID 1
    # processing the elapse only after the manual run ended would do it; once no run of the slot
    # came within 60 s either, so it may have been recorded skipped). Either way the slot must be
    # accounted for exactly once, never lost, as below; what became of it is printed here.
    if not said:
        print(f"no merge reported for {iso(latest)}:", [(iso(r.slot), r.key, r.result) for r in records(host, "tick")])

    # systemd's own rule for a timer whose unit was busy: one run, for the latest slot passed. On
    # a loaded machine the follow-up run may start after the next slot too, and then stands for
    # both (named by the later): the merged slot is then recorded skipped, once (issue 23 item 6).
    # Either way it is accounted for once, never lost.
    def accounted():
        run_of_it = [r for r in records(host, "tick") if r.slot == latest]
        skipped_it = [r for r in records(host, "tick", skipped=True) if r.slot == latest]
        return (run_of_it, skipped_it) if run_of_it or skipped_it else None

    try:
        run_of_it, skipped_it = wait_until(accounted, timeout=60,
                                  what=f"the run (or skipped record) of the slot {iso(latest)} merged into the manual run")
    except AssertionError:
        print([(iso(r.slot), r.key, r.result) for r in records(host, "tick")])
        print(host.ssh("journalctl -o short-precise --no-pager -n 80 -u deployer-tick.service").stdout)
        raise
    wait_until(lambda: any(r.slot > latest for r in records(host, "tick")), timeout=60,
               what="the next scheduled run")
    run_of_it, skipped_it = accounted()
    print(f"the merged slot {iso(latest)}: {'ran' if run_of_it else 'recorded skipped (the follow-up run came late)'}")
    assert len(run_of_it) + len(skipped_it) == 1, (run_of_it, skipped_it)
    keys = [r.headers["Idempotency-Key"] for r in server.received("/tick")]
    assert keys.count(f"tick/{iso(latest)}") == len(run_of_it), keys
    slots = [r.slot for r in records(host, "tick") if r.slot]
    assert len(slots) == len(set(slots)), f"a slot ran twice: {slots}"
    assert all(r.result == "ok" for r in records(host, "tick"))
