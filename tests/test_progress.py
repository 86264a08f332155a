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
