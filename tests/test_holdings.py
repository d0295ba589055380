"""What a full SessionCache keeps: sessions in use outlast floods of sessions used once."""

from __future__ import annotations

from memsession import Config, MemoryBus, MemoryHub, SessionCache, new_id
from memsession.testing import FakeClock

MAXSIZE = 200
FLOOD = 1000


def flood(cache: SessionCache, clock: FakeClock, count: int = FLOOD) -> None:
    """``count`` cookie-less writing requests: each makes a new session, used once."""
    for i in range(count):
        cache.set(new_id(), {"csrf": f"token-{i}"})
        clock.advance(0.01)


def test_a_flood_of_new_sessions_keeps_a_session_in_use() -> None:
    clock = FakeClock()
    cache = SessionCache(clock=clock, maxsize=MAXSIZE)
    user = new_id()
    cache.set(user, {"user": "alice"})  # logs in
    assert cache.get(user) == {"user": "alice"}  # comes back
    flood(cache, clock)
    assert cache.get(user) == {"user": "alice"}
    assert cache.length() == MAXSIZE
    assert cache.stats()["evicted"]["size"] == FLOOD + 1 - MAXSIZE


def test_a_session_used_on_another_worker_outlasts_a_flood_here() -> None:
    """A replicated touch means a user came back (elsewhere): it counts as a use here."""
    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    here = SessionCache(clock=clock, maxsize=MAXSIZE, touch_interval=0, bus=MemoryBus(hub))
    there = SessionCache(clock=clock, maxsize=MAXSIZE, touch_interval=0, bus=MemoryBus(hub))
    user = new_id()
    there.set(user, {"user": "alice"})
    clock.advance(1)
    assert there.get(user) == {"user": "alice"}  # her touch reaches ``here``
    flood(here, clock)
    assert here.stats()["touches"] == 0 and here.stats()["applied"] >= 2
    assert here.record(user) is not None and here.get(user) == {"user": "alice"}


def test_a_session_written_again_outlasts_a_flood() -> None:
    clock = FakeClock()
    cache = SessionCache(clock=clock, maxsize=MAXSIZE)
    user = new_id()
    cache.set(user, {"cart": []})
    cache.set(user, {"cart": ["book"]})  # a local write to a session already held
    flood(cache, clock)
    assert cache.record(user) is not None and cache.get(user) == {"cart": ["book"]}


def test_a_session_used_once_is_evicted_like_any_other_new_one() -> None:
    clock = FakeClock()
    cache = SessionCache(clock=clock, maxsize=MAXSIZE)
    once = new_id()
    cache.set(once, {"csrf": "t"})
    flood(cache, clock)
    assert cache.get(once) is None


def test_the_protected_share_is_bounded_so_new_sessions_still_find_room() -> None:
    """Past ``protected_fraction`` the least recently used returning session goes back to probation."""
    clock = FakeClock()
    cache = SessionCache(clock=clock, maxsize=10, protected_fraction=0.5)
    users = [new_id() for _ in range(8)]
    for user in users:
        cache.set(user, {"user": user})
        cache.get(user)
        clock.advance(1)
    flood(cache, clock, 20)
    kept = [user for user in users if cache.record(user) is not None]
    assert kept == users[-5:]  # the five most recently used returning users
    assert cache.length() == 10


def test_with_nothing_protected_it_is_plain_lru() -> None:
    clock = FakeClock()
    cache = SessionCache(clock=clock, maxsize=MAXSIZE, protected_fraction=0)
    user = new_id()
    cache.set(user, {"user": "alice"})
    assert cache.get(user) == {"user": "alice"}
    flood(cache, clock)
    assert cache.get(user) is None  # the finding this policy fixes
    assert Config().protected_fraction == 0.8
