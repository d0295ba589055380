"""SegmentedLRUCache: the reference model, what a flood can and can't evict, and the edges."""

from __future__ import annotations

import pytest
from cachetools import LRUCache
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession import ConfigError, SegmentedLRUCache
from memsession.cache import EVICTED_IDLE, EVICTED_SIZE, Eviction
from memsession.testing import EvictionModel, FakeClock, eviction_machine
from tests.test_cache import _ops, _run

# -- against the reference model, over thousands of steps ----------------------

_deep = settings(max_examples=150, stateful_step_count=60, deadline=None)


def _size(value: int) -> int:
    return value % 3 + 1


def _size_or_nothing(value: int) -> int:
    return value % 3


TestBothTimeouts = eviction_machine(maxsize=6, idle_timeout=10, max_age=25, protected_fraction=0.5).TestCase
TestBothTimeouts.settings = _deep
TestIdleOnly = eviction_machine(maxsize=6, idle_timeout=10, max_age=None, protected_fraction=0.8).TestCase
TestIdleOnly.settings = _deep
TestMaxAgeOnly = eviction_machine(maxsize=6, idle_timeout=None, max_age=10, protected_fraction=0.8).TestCase
TestMaxAgeOnly.settings = _deep
TestNoTimeouts = eviction_machine(maxsize=5, idle_timeout=None, max_age=None, protected_fraction=0.6).TestCase
TestNoTimeouts.settings = _deep
TestMaxAgeShorterThanIdle = eviction_machine(maxsize=6, idle_timeout=30, max_age=7,
                                             protected_fraction=0.8).TestCase
TestMaxAgeShorterThanIdle.settings = _deep
# Protected holds one or two entries: nearly every promotion demotes one.
TestTinyProtected = eviction_machine(maxsize=5, idle_timeout=10, max_age=25, protected_fraction=0.2).TestCase
TestTinyProtected.settings = _deep
TestTinyProtectedIdleOnly = eviction_machine(maxsize=5, idle_timeout=10, max_age=None,
                                             protected_fraction=0.4).TestCase
# Demoted entries sit behind newer ones in probation: the case the idle sweep needs help with.
TestTinyProtectedIdleOnly.settings = settings(max_examples=500, stateful_step_count=60, deadline=None)
TestSized = eviction_machine(maxsize=7, idle_timeout=10, max_age=25, protected_fraction=0.7,
                             getsizeof=_size).TestCase
TestSized.settings = _deep
TestSizedWithZeros = eviction_machine(maxsize=5, idle_timeout=10, max_age=None, protected_fraction=0.5,
                                      getsizeof=_size_or_nothing).TestCase
TestSizedWithZeros.settings = _deep
TestNothingProtected = eviction_machine(maxsize=5, idle_timeout=10, max_age=25, protected_fraction=0).TestCase
TestNothingProtected.settings = _deep


# -- with nothing protected it is plain LRU ----------------------------------------


@given(_ops, st.integers(1, 6))
def test_with_nothing_protected_it_behaves_like_lrucache(ops, maxsize):
    assert _run(SegmentedLRUCache(maxsize, protected_fraction=0), ops) == _run(LRUCache(maxsize), ops)


@given(_ops, st.integers(0, 12))
def test_with_nothing_protected_and_getsizeof_it_behaves_like_lrucache(ops, maxsize):
    def size(v):
        return v

    got = _run(SegmentedLRUCache(maxsize, getsizeof=size, protected_fraction=0), ops)
    assert got == _run(LRUCache(maxsize, getsizeof=size), ops)


@given(st.lists(st.tuples(st.sampled_from(["set", "get"]), st.integers(0, 9)), max_size=60),
       st.integers(1, 6))
def test_the_models_plain_lru_is_cachetools_lrucache(ops, maxsize):
    """The reference model's LRU mode, checked against LRUCache itself: same contents, same eviction order."""
    lru, model = LRUCache(maxsize), EvictionModel(maxsize)
    for op, key in ops:
        if op == "set":
            lru[key] = key
            model.insert(key, key, 0.0)
        else:
            expected = model.get(key, 0.0)
            assert lru.get(key, "miss") == ("miss" if expected is EvictionModel.MISSING else expected)
        assert set(lru) == set(model.entries)
    assert [lru.popitem() for _ in range(len(lru))] == [model.popitem() for _ in range(len(model.entries))]


# -- what a flood can and can't evict ------------------------------------------------


@given(
    maxsize=st.integers(2, 60),
    fraction=st.sampled_from([0.25, 0.5, 0.8, 0.9]),
    used=st.integers(1, 60),
    reads=st.integers(1, 3),
    flood=st.integers(0, 500),
)
@settings(deadline=None)
def test_entries_used_twice_outlast_any_flood_of_entries_used_once(maxsize, fraction, used, reads, flood):
    cache = SegmentedLRUCache(maxsize, protected_fraction=fraction)
    established = [("user", i) for i in range(used)]
    for key in established:
        cache[key] = "logged in"
        for _ in range(reads):
            assert cache[key] == "logged in"
    for i in range(flood):
        cache[("visitor", i)] = "once"
    # Protected keeps the most recently used of them, as many as fit in its share; the flood
    # churns through probation only.
    fits = min(used, int(fraction * maxsize))
    protected = established[used - fits:]
    assert all(key in cache for key in protected)
    if flood >= maxsize:
        assert [key for key in established if key in cache] == protected
    assert len(cache) == min(maxsize, used + flood)


def test_a_flood_evicts_entries_used_once_first_and_oldest_first():
    cache = SegmentedLRUCache(10, protected_fraction=0.5)
    cache["user"] = 1
    assert cache["user"] == 1
    evicted = []
    for i in range(30):
        evicted += cache.insert(("visitor", i), i)
    assert evicted == [Eviction(("visitor", i), i, EVICTED_SIZE) for i in range(21)]
    assert "user" in cache and [k for k in cache if k != "user"] == [("visitor", i) for i in range(21, 30)]


def test_every_kind_of_second_use_protects():
    clock = FakeClock()
    for second_use in ("read", "lookup", "write", "write from elsewhere"):
        cache = SegmentedLRUCache(4, 100, 1000, timer=clock, protected_fraction=0.5)
        cache["user"] = 1
        if second_use == "read":
            cache["user"]
        elif second_use == "lookup":
            cache.lookup("user", clock())
        elif second_use == "write":
            cache["user"] = 2
        else:
            cache.insert("user", 2, created=clock() - 50, accessed=clock() - 5)
        for i in range(10):
            cache[i] = i
        assert "user" in cache, second_use


def test_peek_contains_and_expires_at_are_not_uses():
    cache = SegmentedLRUCache(3, protected_fraction=0.5)
    cache["a"] = 1
    assert cache.peek("a") == 1 and "a" in cache and cache.expires_at("a") == float("inf")
    cache["b"], cache["c"], cache["d"] = 2, 3, 4
    assert "a" not in cache


def test_protected_overflow_is_demoted_to_probation_and_must_earn_its_place_again():
    cache = SegmentedLRUCache(4, protected_fraction=0.5)  # protected holds 2
    for key in "abc":
        cache[key] = key
        cache[key]  # a, b, c all used twice: a is demoted when c comes in
    assert cache.protected_size == 2
    cache["new"] = "x"  # probation is now a, new (least recent first)
    assert cache.insert("newer", "y") == [Eviction("a", "a", EVICTED_SIZE)]
    assert set(cache) == {"b", "c", "new", "newer"}


def test_a_demoted_entry_still_expires_on_time():
    """Demotion puts an entry behind newer ones in probation; the idle sweep still finds it."""
    clock = FakeClock()
    cache = SegmentedLRUCache(10, idle_timeout=10, timer=clock, protected_fraction=0.2)  # protected holds 2
    cache["old"] = 0
    cache["old"]
    clock.advance(5)
    cache["fresh"] = 1  # in probation, accessed after "old"
    for key in ("x", "y"):
        cache[key] = key
        cache[key]  # "old" is demoted behind "fresh"
    clock.advance(5)
    assert cache.evict_expired() == [Eviction("old", 0, EVICTED_IDLE)]
    assert set(cache) == {"fresh", "x", "y"}


def test_sizes_bound_protected_in_getsizeof_units():
    cache = SegmentedLRUCache(10, getsizeof=len, protected_fraction=0.5)  # protected holds 5
    cache["big"] = "xxxx"
    cache["big"]
    cache["small"] = "xx"
    cache["small"]  # 4 + 2 > 5: "big" is demoted
    assert cache.protected_size == 2
    cache["small"] = "x"  # a write resizes what protected counts
    assert cache.protected_size == 1
    del cache["small"]
    assert cache.protected_size == 0
    with pytest.raises(ValueError, match="too large"):
        cache["huge"] = "x" * 11


def test_clear_forgets_both_segments():
    cache = SegmentedLRUCache(4, protected_fraction=0.5)
    cache["a"] = 1
    cache["a"]
    cache["b"] = 2
    cache.clear()
    assert len(cache) == 0 and cache.protected_size == 0
    with pytest.raises(KeyError, match="SegmentedLRUCache is empty"):
        cache.popitem()
    cache["c"] = 3
    assert cache.popitem() == ("c", 3)


@pytest.mark.parametrize("bad", [-0.1, 1, 1.5, float("nan"), float("inf"), "0.8", True, None])
def test_protected_fraction_is_checked(bad):
    with pytest.raises(ConfigError, match="protected_fraction"):
        SegmentedLRUCache(10, protected_fraction=bad)


def test_same_constructor_conventions_as_expiringlrucache():
    with pytest.raises(ValueError):
        SegmentedLRUCache(-1)
    with pytest.raises(ValueError, match="idle_timeout"):
        SegmentedLRUCache(10, idle_timeout=0)
    cache = SegmentedLRUCache(10, idle_timeout=5, max_age=50)
    assert (cache.idle_timeout, cache.max_age, cache.protected_fraction, cache.maxsize) == (5, 50, 0.8, 10)
