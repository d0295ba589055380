"""ExpiringLRUCache: the reference model, LRUCache parity, and the edges."""

from __future__ import annotations

import pytest
from cachetools import LRUCache
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession.cache import EVICTED_IDLE, EVICTED_MAX_AGE, EVICTED_SIZE, Eviction, ExpiringLRUCache
from memsession.testing import FakeClock, eviction_machine

# -- against the reference model, over thousands of steps ----------------------

_deep = settings(max_examples=150, stateful_step_count=60, deadline=None)

TestBothTimeouts = eviction_machine(maxsize=6, idle_timeout=10, max_age=25).TestCase
TestBothTimeouts.settings = _deep
TestIdleOnly = eviction_machine(maxsize=6, idle_timeout=10, max_age=None).TestCase
TestIdleOnly.settings = _deep
TestMaxAgeOnly = eviction_machine(maxsize=6, idle_timeout=None, max_age=10).TestCase
TestMaxAgeOnly.settings = _deep
TestNoTimeouts = eviction_machine(maxsize=4, idle_timeout=None, max_age=None).TestCase
TestNoTimeouts.settings = _deep
TestMaxAgeShorterThanIdle = eviction_machine(maxsize=6, idle_timeout=30, max_age=7).TestCase
TestMaxAgeShorterThanIdle.settings = _deep


# -- with no timeouts it is cachetools.LRUCache ---------------------------------

_ops = st.lists(
    st.tuples(st.sampled_from(["set", "get", "del", "pop", "popitem", "in", "len", "getdefault"]),
              st.integers(0, 9), st.integers(0, 5)),
    max_size=80,
)


def _run(cache, ops):
    out = []
    for op, key, value in ops:
        try:
            if op == "set":
                cache[key] = value
                out.append(None)
            elif op == "get":
                out.append(cache[key])
            elif op == "del":
                del cache[key]
                out.append(None)
            elif op == "pop":
                out.append(cache.pop(key))
            elif op == "popitem":
                out.append(cache.popitem())
            elif op == "in":
                out.append(key in cache)
            elif op == "len":
                out.append((len(cache), cache.currsize))
            else:
                out.append(cache.get(key, "dflt"))
        except (KeyError, ValueError) as exc:
            # the message names the class, as cachetools' own classes do
            out.append((type(exc), str(exc).replace(type(cache).__name__, "<cache>")))
    out.append((list(cache), list(cache.items())))
    return out


@given(_ops, st.integers(1, 6))
def test_behaves_like_lrucache_without_timeouts(ops, maxsize):
    assert _run(ExpiringLRUCache(maxsize), ops) == _run(LRUCache(maxsize), ops)


@given(_ops, st.integers(0, 12))
def test_behaves_like_lrucache_with_getsizeof(ops, maxsize):
    def size(v):
        return v

    assert _run(ExpiringLRUCache(maxsize, getsizeof=size), ops) == _run(LRUCache(maxsize, getsizeof=size), ops)


def test_same_constructor_conventions_as_lrucache():
    with pytest.raises(ValueError):
        LRUCache(-1)
    with pytest.raises(ValueError):
        ExpiringLRUCache(-1)
    cache = ExpiringLRUCache(maxsize=2, getsizeof=len)
    cache["a"] = "xx"
    assert cache.currsize == 2 and cache.maxsize == 2
    with pytest.raises(ValueError, match="too large"):
        cache["b"] = "xyz"


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "10", True])
def test_timeouts_must_be_positive_finite_numbers(bad):
    with pytest.raises(ValueError, match="idle_timeout"):
        ExpiringLRUCache(10, idle_timeout=bad)
    with pytest.raises(ValueError, match="max_age"):
        ExpiringLRUCache(10, max_age=bad)


# -- semantics spelled out -----------------------------------------------------

def make(maxsize=10, idle=10.0, age=100.0):
    clock = FakeClock()
    return ExpiringLRUCache(maxsize, idle, age, timer=clock), clock


def test_idle_timeout_slides_with_every_read():
    cache, clock = make()
    cache["k"] = 1
    for _ in range(5):
        clock.advance(9)
        assert cache["k"] == 1
    clock.advance(10)
    assert "k" not in cache
    assert cache.expire() == [("k", 1)]


def test_max_age_is_never_extended_by_reads_or_writes():
    cache, clock = make(idle=10, age=25)
    cache["k"] = 1
    clock.advance(9)
    cache["k"] = 2  # replacing keeps the entry's age
    clock.advance(9)
    assert cache["k"] == 2
    clock.advance(7)  # 25 s after creation
    assert "k" not in cache
    assert cache.evict_expired() == [Eviction("k", 2, EVICTED_MAX_AGE)]


def test_expired_entries_miss_before_they_are_removed():
    cache, clock = make()
    cache["k"] = 1
    clock.advance(10)
    with pytest.raises(KeyError):
        cache["k"]
    assert cache.get("k") is None and cache.peek("k") is None
    assert list(iter(cache)) == []  # list(cache) would call len(), which sweeps as TTLCache's does
    assert cache.evict_expired() == [Eviction("k", 1, EVICTED_IDLE)]


def test_insert_reports_size_evictions_least_recently_used_first():
    cache, _ = make(maxsize=2)
    cache["a"], cache["b"] = 1, 2
    cache["a"]
    assert cache.insert("c", 3) == [Eviction("b", 2, EVICTED_SIZE)]
    assert cache.insert("d", 4) == [Eviction("a", 1, EVICTED_SIZE)]


def test_insert_sweeps_expired_entries_before_evicting_live_ones():
    cache, clock = make(maxsize=2)
    cache["a"] = 1
    clock.advance(5)
    cache["b"] = 2
    clock.advance(6)  # a idle-expired, b live
    assert cache.insert("c", 3) == [Eviction("a", 1, EVICTED_IDLE)]
    assert sorted(cache) == ["b", "c"]


def test_entry_from_elsewhere_expires_when_it_would_have_there():
    cache, clock = make(idle=10, age=25)
    now = clock()
    cache.insert("old", 1, created=now - 20, accessed=now - 2)
    clock.advance(5)  # 25 s after its creation elsewhere
    assert "old" not in cache
    now = clock()
    assert cache.insert("idle", 2, created=now - 1, accessed=now - 9) == [Eviction("old", 1, EVICTED_MAX_AGE)]
    assert "idle" in cache
    clock.advance(1)
    assert cache.evict_expired() == [Eviction("idle", 2, EVICTED_IDLE)]


def test_out_of_order_arrivals_are_all_found_by_expire():
    """Entries arriving with older timestamps than the ones already held still expire on time."""
    cache, clock = make(maxsize=1000, idle=50, age=100)
    now = clock()
    for i in range(200):  # local, in order
        cache[("local", i)] = i
    for i in range(200):  # from elsewhere, ages all over the place (some past the walk-back limit)
        cache.insert(("far", i), i, created=now - (i * 37 % 90), accessed=now - (i * 13 % 45))
    clock.advance(60)
    gone = cache.evict_expired()
    assert {e.key for e in gone} == {("local", i) for i in range(200)} | {("far", i) for i in range(200)}
    assert len(cache) == 0


def test_a_read_at_a_time_before_the_newest_access_still_expires_on_time():
    """A lookup stamped earlier than an access already seen lands behind it in LRU order."""
    cache, clock = make(idle=10, age=100)
    cache["a"], cache["b"] = 1, 2
    start = clock()
    clock.advance(5)
    cache["b"]  # the newest access: start + 5
    assert cache.lookup("a", start + 1) == 1  # order now b, a; a expires at start + 11, b at start + 15
    clock.advance(6.5)
    assert cache.evict_expired() == [Eviction("a", 1, EVICTED_IDLE)]
    assert list(iter(cache)) == ["b"]


def test_an_entry_due_before_everything_held_is_swept_on_time():
    """A sweep skips work until the earliest expiry it saw; an insert due sooner moves that point."""
    cache, clock = make(idle=100, age=1000)
    cache["long"] = 1
    assert cache.evict_expired() == []
    now = clock()
    cache.insert("short", 2, accessed=now - 95)  # due at now + 5, long at now + 100
    clock.advance(4)
    assert cache.evict_expired() == []
    clock.advance(2)
    assert cache.evict_expired() == [Eviction("short", 2, EVICTED_IDLE)]
    assert cache.insert("new", 3) == [] and sorted(cache) == ["long", "new"]


def test_a_rewrite_here_and_now_keeps_the_age_and_slides_the_idle_expiry():
    cache, clock = make(idle=10, age=25)
    cache["k"] = 1
    created = clock()
    clock.advance(8)
    cache["k"] = 2
    assert cache.expires_at("k") == created + 18
    clock.advance(8)
    cache["k"] = 3
    assert cache.expires_at("k") == created + 25  # capped by the age
    clock.advance(9)
    assert cache.evict_expired() == [Eviction("k", 3, EVICTED_MAX_AGE)]


def test_a_future_access_time_counts_as_now():
    cache, clock = make(idle=10, age=100)
    cache.insert("k", 1, accessed=clock() + 1000)
    clock.advance(10)
    assert "k" not in cache


def test_expires_at_and_peek_do_not_touch():
    cache, clock = make(maxsize=2)
    cache["a"], cache["b"] = 1, 2
    assert cache.peek("a") == 1
    assert cache.expires_at("a") == clock() + 10
    cache["c"] = 3  # "a" is still least recently used: peek did not count
    assert "a" not in cache and cache.expires_at("a") is None


def test_clear_resets_everything():
    cache, clock = make()
    for i in range(5):
        cache.insert(i, i, created=clock() - 50 - i)  # some via the late heap
    cache.clear()
    assert len(cache) == 0 and cache.evict_expired(clock() + 1000) == []
    cache["x"] = 1
    assert cache["x"] == 1


def test_heaps_stay_bounded_under_churn_of_late_arrivals():
    """Stale bookkeeping from deleted late arrivals is compacted, so memory tracks live entries."""
    cache, clock = make(maxsize=100, idle=1000, age=10000)
    now = clock()
    for i in range(20000):
        cache.insert(i, i, created=now - 5000, accessed=now - 500)  # late on both counts
    late_deadlines = cache._ExpiringCache__sweep.deadlines._late
    late_idle = cache._ExpiringCache__sweep.late_idle
    assert len(cache) == 100
    assert len(late_deadlines) <= 2 * 100 + 1024 + 1
    assert len(late_idle) <= 2 * 100 + 1024 + 1


def test_timer_is_read_once_per_operation():
    reads = []
    clock = FakeClock()

    def timer():
        reads.append(1)
        return clock()

    cache = ExpiringLRUCache(10, 10, 100, timer=timer)
    cache["a"] = 1
    reads.clear()
    cache["a"]
    assert len(reads) == 1
    reads.clear()
    cache.insert("b", 2)
    assert len(reads) == 1


def test_repeated_arrivals_of_one_entry_keep_bookkeeping_small():
    """Re-inserting a late entry with a new deadline leaves no live-looking stale heap entries."""
    cache, clock = make(maxsize=100, idle=1000, age=10000)
    now = clock()
    for i in range(5000):
        cache.insert(i % 10, i, created=now - 5000 - (i % 7) * 1e-9, accessed=now - 1)
    assert len(cache._ExpiringCache__sweep.deadlines._late) <= 2 * 10 + 1024 + 1
