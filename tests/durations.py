"""Refresh tests/data/durations.json (the order `make test` runs the tests in: tests/conftest.py)
from a run's `--durations=0` output: `python -m tests.durations < pytest-output.txt`."""
from __future__ import annotations

import collections
import json
import re
import sys

from tests.conftest import DURATIONS

LINE = re.compile(r"^([0-9.]+)s (?:call|setup|teardown)\s+(\S+)")
AT_LEAST = 10  # seconds: shorter tests keep their collection order


def main() -> None:
    seconds: dict = collections.defaultdict(float)
    for line in sys.stdin:
        match = LINE.match(line)
        if match:
            seconds[match.group(2)] += float(match.group(1))
    longest = {test: round(s) for test, s in sorted(seconds.items(), key=lambda kv: -kv[1]) if s >= AT_LEAST}
    DURATIONS.write_text(json.dumps(longest, indent=0) + "\n")
    print(f"{len(longest)} tests of {AT_LEAST} s or more, {sum(longest.values())} s in all: {DURATIONS}")


if __name__ == "__main__":
    main()
