"""A one-line progress display on a terminal for pushes that take more than a moment."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from .hostside.text import printable

QUIET_SECONDS = 0.8  # a push quicker than this shows no progress at all


class Progress:
    """`update(text)` rewrites one status line on stderr, if it is a terminal and the work has
    already taken QUIET_SECONDS; `done()` erases it. Elsewhere (pipes, CI, --json) it is silent."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, enabled: bool = True):
        self.label = label
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.started = time.monotonic()
        self.shown = False
        self.last = ""

    def update(self, text: str) -> None:
        text = printable(text)  # steps come from the host too (`@progress`)
        self.last = text
        if not self.enabled or time.monotonic() - self.started < QUIET_SECONDS:
            return
        elapsed = time.monotonic() - self.started
        self.stream.write(f"\r\033[K{self.label}: {text} ({elapsed:.0f}s)")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
