"""The order `make test` runs the tests in (tests/conftest.py longest_first)."""
from __future__ import annotations

from dataclasses import dataclass

from tests.conftest import longest_first


@dataclass(frozen=True)
class Item:
    nodeid: str


def test_each_workers_share_starts_with_its_long_tests_and_the_shares_are_balanced():
    seconds = {"a": 300, "b": 200, "c": 150, "d": 100, "e": 90, "f": 20}
    items = [Item(n) for n in "xyfzaqbwcrdset"]  # 8 short ones, 6 measured, in collection order
    ordered = longest_first(items, seconds, workers=4)
    assert sorted(i.nodeid for i in ordered) == sorted(i.nodeid for i in items)
    # worksteal's split of 14 tests over 4 workers: 3, 3, 4, 4
    shares = [ordered[0:3], ordered[3:6], ordered[6:10], ordered[10:14]]
    assert [[i.nodeid for i in share] for share in shares] == [
        ["a", "x", "y"], ["b", "z", "q"], ["c", "f", "w", "r"], ["d", "e", "s", "t"]]
    # LPT: e (90) joins d (100, the least loaded then), f (20) joins c (150 < 190)


def test_one_worker_runs_the_longest_first_and_the_rest_in_their_order():
    items = [Item(n) for n in "xaby"]
    assert [i.nodeid for i in longest_first(items, {"a": 10, "b": 20}, workers=1)] == ["b", "a", "x", "y"]
