"""What a push that takes more than a moment shows while it works: one line rewritten in place
on a terminal; elsewhere (CI logs, pipes) a few whole lines for the long counted steps."""
from __future__ import annotations

import re
import sys
import time
from typing import TextIO

from .contract.text import printable

QUIET_SECONDS = 0.8  # a push quicker than this shows no progress at all
# Not on a terminal: a counted step (`starting timers: 300/1000`) gets a line once it has gone
# on this long since the last line, and then its last count. Steps without a count get none: a
# log holds a few lines for 1,000 timers, and a push of seconds none.
LOG_EVERY = 10.0
# A counted step's rate and time left are shown once it has counted this long (a first chunk's
# rate says little).
PACE_AFTER = 1.0
COUNT = re.compile(r"^(?P<step>.*): (?P<done>\d+)/(?P<total>\d+)$")


class Progress:
    """`update(text)` rewrites one status line on stderr if it is a terminal, once the work has
    taken QUIET_SECONDS; `done()` erases it. Not on a terminal, counted steps are logged as
    whole lines (see LOG_EVERY). `enabled=False` (--json) shows nothing anywhere."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, enabled: bool = True):
        self.label = label
        self.stream = stream
        self.enabled = enabled
        self.terminal = stream.isatty()
        self.started = time.monotonic()
        self.shown = False
        self.last = ""
        self.logged_step, self.logged_at = None, 0.0
        self.counting: dict = {}  # counted step -> (when, count) it was first seen: its rate

    def update(self, text: str) -> None:
        text = printable(text)  # steps come from the host too (`@progress`)
        self.last = text
        elapsed = time.monotonic() - self.started
        pace = self._pace(text, elapsed)  # a step is timed from its first count, shown or not
        if not self.enabled or elapsed < QUIET_SECONDS:
            return
        if not self.terminal:
            self._log(text, elapsed, pace)
            return
        self.stream.write(f"\r\033[K{self.label}: {text} ({elapsed:.0f}s{pace})")
        self.stream.flush()
        self.shown = True

    def _pace(self, text: str, elapsed: float) -> str:
        """`, 50/s, 10s left` for a counted step under way, from its count since first seen."""
        count = COUNT.match(text.removeprefix("host: "))
        if not count:
            return ""
        done, total = int(count["done"]), int(count["total"])
        since, first = self.counting.setdefault(count["step"], (elapsed, done))
        if done >= total or done <= first or elapsed - since < PACE_AFTER:
            return ""
        rate = (done - first) / (elapsed - since)
        return f", {rate:.0f}/s, {(total - done) / rate:.0f}s left"

    def _log(self, text: str, elapsed: float, pace: str = "") -> None:
        count = COUNT.match(text.removeprefix("host: "))
        if not count:
            return
        step, ended = count["step"], count["done"] == count["total"]
        if elapsed - self.logged_at < LOG_EVERY and not (ended and step == self.logged_step):
            return
        self.logged_step, self.logged_at = step, elapsed
        self.stream.write(f"{self.label}: {text} ({elapsed:.0f}s{pace})\n")
        self.stream.flush()

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False
