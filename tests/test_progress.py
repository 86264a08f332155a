from __future__ import annotations

import io

from deployer import progress
from deployer.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_quick_work_shows_nothing():
    screen = Terminal()
    bar = Progress("push cron01", stream=screen)
    bar.update("reading the host's state")
    bar.done()
    assert screen.getvalue() == ""


def test_slow_work_shows_one_rewritten_line_then_erases_it(monkeypatch):
    screen = Terminal()
    bar = Progress("push cron01", stream=screen)
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    bar.update("host: starting 1000 timers")
    bar.done()
    assert screen.getvalue().startswith("\r\033[Kpush cron01: host: starting 1000 timers (")
    assert screen.getvalue().endswith("\r\033[K")


def test_never_on_a_pipe(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
    bar = Progress("push cron01", stream=pipe)
    bar.update("anything")
    assert pipe.getvalue() == ""


# --- issue 24 item 7: a 1,000-timer push counts, on a terminal and in a log ---------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def counted_push(bar, clock, total=1000, seconds_per_chunk=2.0):
    """The agent's reports for starting `total` timers, 100 per call, as a push relays them."""
    bar.update("host: systemctl daemon-reload")
    for done in range(0, total + 1, 100):
        bar.update(f"host: starting timers: {done}/{total}")
        clock.now += seconds_per_chunk
    bar.update(f"host: timers active: {total}/{total}")


def test_issue24_7_on_a_terminal_the_count_moves_on_one_line(monkeypatch):
    """Before: `starting 1000 timers` for 20 s, then the list."""
    clock, screen = Clock(), Terminal()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    bar = Progress("push cron01", stream=screen)
    counted_push(bar, clock)
    bar.done()
    drawn = screen.getvalue().split("\r\033[K")
    # Issue 25: the rate and the time left, from the count since the step began (100 per 2 s).
    assert "push cron01: host: starting timers: 500/1000 (10s, 50/s, 10s left)" in drawn
    assert "push cron01: host: starting timers: 1000/1000 (20s)" in drawn
    assert "push cron01: host: starting timers: 100/1000 (2s, 50/s, 18s left)" in drawn
    assert "\n" not in screen.getvalue() and screen.getvalue().endswith("\r\033[K")


def test_issue24_7_in_a_log_a_long_counted_step_is_a_few_lines(monkeypatch):
    clock, pipe = Clock(), io.StringIO()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    counted_push(Progress("push cron01", stream=pipe), clock)
    assert pipe.getvalue().splitlines() == ["push cron01: host: starting timers: 500/1000 (10s, 50/s, 10s left)",
                                            "push cron01: host: starting timers: 1000/1000 (20s)"]


def test_issue24_7_in_a_log_a_push_of_seconds_says_nothing(monkeypatch):
    clock, pipe = Clock(), io.StringIO()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    counted_push(Progress("push cron01", stream=pipe), clock, total=300, seconds_per_chunk=1.0)
    assert pipe.getvalue() == ""
