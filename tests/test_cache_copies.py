"""``copy.copy`` and ``copy.deepcopy`` of the cache cores behave as cachetools' own caches' do.

Since cachetools 8.0 a copy of an ``LRUCache`` has its own state: changing
the copy (setting, deleting, or reading, which reorders) never reaches the
original, and the values themselves are shared. Every test here runs on
``cachetools.LRUCache`` too, so the behaviour asserted is the library's own.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cachetools import LRUCache

from memsession import ExpiringLRUCache, SegmentedLRUCache
from memsession.testing import FakeClock

KINDS = ["LRUCache", "ExpiringLRUCache", "SegmentedLRUCache"]


def make(kind: str, maxsize: int = 8, clock: FakeClock | None = None) -> Any:
    if kind == "LRUCache":
        return LRUCache(maxsize)
    timer = clock or FakeClock()
    return {"ExpiringLRUCache": ExpiringLRUCache, "SegmentedLRUCache": SegmentedLRUCache}[kind](
        maxsize, idle_timeout=60, max_age=600, timer=timer)


def filled(kind: str, clock: FakeClock | None = None) -> Any:
    cache = make(kind, clock=clock)
    for i in range(6):
        cache[f"k{i}"] = [i]
    cache["k1"], cache["k3"]  # a second use: the segmented core protects them
    return cache


@pytest.mark.parametrize("kind", KINDS)
def test_changing_a_copy_leaves_the_original_as_it_was(kind: str) -> None:
    original = filled(kind)
    before = list(original.items())
    duplicate = copy.copy(original)
    duplicate["new"] = ["n"]
    del duplicate["k0"]
    duplicate["k2"] = ["changed"]
    duplicate["k4"]  # a read reorders
    for i in range(10):
        duplicate[f"flood{i}"] = [i]  # evicts from the copy only
    assert list(original.items()) == before
    # The original still works in every way, and so does the copy.
    assert original.pop("k0") == [0]
    del original["k5"]
    original["k6"] = [6]
    assert sorted(original) == ["k1", "k2", "k3", "k4", "k6"]
    assert len(duplicate) == duplicate.currsize == 8
    for key in list(duplicate):
        assert duplicate[key] is not None
        del duplicate[key]
    assert len(duplicate) == 0 and len(original) == 5


@pytest.mark.parametrize("kind", KINDS)
def test_changing_the_original_leaves_a_copy_as_it_was(kind: str) -> None:
    original = filled(kind)
    duplicate = copy.copy(original)
    before = list(duplicate.items())
    original.clear()
    original["other"] = ["o"]
    assert list(duplicate.items()) == before
    assert duplicate.pop("k3") == [3]


@pytest.mark.parametrize("kind", KINDS)
def test_a_copy_shares_the_values_and_a_deep_copy_does_not(kind: str) -> None:
    original = filled(kind)
    shallow, deep = copy.copy(original), copy.deepcopy(original)
    assert shallow["k2"] is original["k2"]
    assert deep["k2"] == original["k2"] and deep["k2"] is not original["k2"]
    assert list(deep.items()) == list(original.items())


@pytest.mark.parametrize("kind", ["ExpiringLRUCache", "SegmentedLRUCache"])
def test_a_copy_keeps_each_entrys_deadlines_and_the_clock(kind: str) -> None:
    clock = FakeClock()
    original = make(kind, clock=clock)
    original["old"] = 1
    clock.advance(50)
    original["young"] = 2
    duplicate = copy.copy(original)
    deep = copy.deepcopy(original)
    clock.advance(20)  # 70 s after "old" was last used, 20 s after "young"
    for cache in (original, duplicate, deep):
        assert "old" not in cache and "young" in cache  # ``in`` is not a use
    duplicate["young"]  # reading slides the copy's idle deadline, not the original's
    clock.advance(50)
    assert "young" not in original and duplicate["young"] == 2
    assert sorted(original.expire()) == [("old", 1), ("young", 2)]
    assert duplicate.expire() == [("old", 1)] and list(duplicate) == ["young"]
