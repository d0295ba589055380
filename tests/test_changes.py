"""A request's change as a record and its delta, the record merge, and SessionCache.change (no I/O)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession import SessionCache, new_id, session_key
from memsession.changes import merge_records, record_change, record_set, reflects, seen_of, stamps_of
from memsession.contrib.core import SessionManager, WebConfig, is_stale
from memsession.cookies import CookieSigner
from memsession.errors import SessionDestroyed, SessionTooLarge
from memsession.testing import FakeClock

KEY = "ab" * 32


def change(base, data, changed, removed=(), *, version, origin, wall=100.0):
    return record_change(base, KEY, data, changed, removed, version=version, origin=origin, wall=wall,
                         idle_timeout=None, max_age=None, flat=True, size=1)


def test_a_new_sessions_first_change_is_the_whole_session():
    held, delta = change(None, {"a": 1}, ["a"], version=10, origin=1)
    assert delta is held and not held.partial
    assert stamps_of(held) == {"a": (10, 1)} and seen_of(held) == {1: 10}


def test_a_change_to_a_session_publishes_only_the_keys_it_touched():
    base, _ = change(None, {"a": 1, "b": 2}, ["a", "b"], version=10, origin=1)
    held, delta = change(base, {"a": 1, "c": 3}, ["c"], ["b"], version=20, origin=2, wall=101.0)
    assert delta.partial and delta.data == {"c": 3}
    assert stamps_of(delta) == {"c": (20, 2), "b": (20, 2)}  # b is a key tombstone
    assert held.data == {"a": 1, "c": 3} and not held.partial
    assert stamps_of(held) == {"a": (10, 1), "b": (20, 2), "c": (20, 2)}
    assert seen_of(held) == {1: 10, 2: 20}
    assert merge_records(base, delta) == held  # the held record is the base with the delta merged in


def test_concurrent_changes_of_different_keys_commute():
    base, _ = change(None, {"x": 0}, ["x"], version=10, origin=1)
    held_a, delta_a = change(base, {"x": 0, "a": 1}, ["a"], version=20, origin=2)
    held_b, delta_b = change(base, {"x": 0, "b": 1}, ["b"], version=21, origin=3)
    one, other = merge_records(held_a, delta_b), merge_records(held_b, delta_a)
    assert one == other and one.data == {"x": 0, "a": 1, "b": 1}
    assert (one.version, one.origin) == (21, 3)


def test_the_later_stamp_wins_a_key_and_a_removal_beats_an_older_set():
    base, _ = change(None, {"k": "old"}, ["k"], version=10, origin=1)
    _, removal = change(base, {}, [], ["k"], version=30, origin=2)
    _, older_set = change(base, {"k": "set"}, ["k"], version=20, origin=3)
    for first, second in ((removal, older_set), (older_set, removal)):
        merged = merge_records(merge_records(base, first), second)
        assert merged.data == {} and stamps_of(merged)["k"] == (30, 2)


def test_an_older_change_merged_again_changes_nothing():
    base, _ = change(None, {"k": 1}, ["k"], version=10, origin=1)
    held, delta = change(base, {"k": 2}, ["k"], version=20, origin=2)
    assert merge_records(held, delta) is None
    assert merge_records(held, base) is None


def test_a_tombstone_beats_every_key_and_a_clear_drops_the_keys_it_covers():
    base, _ = change(None, {"k": 1}, ["k"], version=10, origin=1)
    _, delta = change(base, {"k": 1, "n": 2}, ["n"], version=20, origin=2)
    tomb = replace(base, data={}, version=15, deleted=True, stamps=None, seen=None)
    assert merge_records(tomb, delta) is None and merge_records(delta, tomb) is tomb
    merged = merge_records(base, delta, cleared=12)
    assert merged.data == {"n": 2}  # "k" was last set at 10, before the clear at 12


def test_reflects_asks_for_the_writers_change_not_a_newer_version():
    base, _ = change(None, {"x": 0}, ["x"], version=10, origin=1)
    mine, _ = change(base, {"x": 0, "a": 1}, ["a"], version=20, origin=2)
    theirs, _ = change(base, {"x": 0, "b": 1}, ["b"], version=30, origin=3)
    assert reflects(mine, 20, 2)
    assert not reflects(theirs, 20, 2)  # newer, yet without my change
    assert reflects(theirs, 20, 0)  # a cookie naming no writer can only compare versions
    assert is_stale(theirs, 20, 2) and not is_stale(mine, 20, 2)


_names = st.sampled_from("abcde")
_values = st.dictionaries(_names, st.integers(0, 3), max_size=5)
#: One step of a session's history: (values it ends with, keys it removes, origin, set the whole session?).
_steps = st.lists(st.tuples(_values, st.lists(_names, max_size=2), st.integers(1, 3), st.booleans()),
                  max_size=5)


def _history(steps, deleted):
    """A base built the way sessions are: a run of changes and whole writes by up to three writers."""
    base = None
    version = 10
    for values, removed, origin, whole in steps:
        version += 10
        live = base.data if base is not None else {}
        gone = [k for k in dict.fromkeys(removed) if k not in values]
        data = {k: v for k, v in {**live, **values}.items() if k not in gone}
        if whole:
            gone = [k for k in live if k not in values]
            data = dict(values)
        base, _ = record_change(base, KEY, data, values, gone, version=version, origin=origin,
                                wall=100.0 + version, idle_timeout=50.0, max_age=500.0, flat=True, size=1)
    if base is not None and deleted:
        base = replace(base, data={}, deleted=True, stamps=None, seen=None)
    return base, version


@settings(deadline=None)  # no time limit per example: a loaded machine must not fail the test
@given(_steps, st.booleans(), _values, st.integers(1, 3), st.sampled_from([(50.0, 500.0), (None, 500.0),
                                                                           (50.0, None), (None, None)]))
def test_a_whole_session_write_holds_what_the_general_change_holds(steps, deleted, data, origin, timeouts):
    """``record_set``'s short paths and ``record_change`` with every key set and every other one removed agree."""
    base, version = _history(steps, deleted)
    idle, age = timeouts
    wall = 100.0 + version + 7
    live = base.data if base is not None and not base.deleted else {}
    removed = [k for k in live if k not in data]
    expected, _ = record_change(base, KEY, data, data, removed, version=version + 10, origin=origin, wall=wall,
                                idle_timeout=idle, max_age=age, flat=True, size=3)
    got = record_set(base, KEY, data, version=version + 10, origin=origin, wall=wall, idle_timeout=idle,
                     max_age=age, flat=True, size=3)
    assert got == expected
    assert (got.stamps, got.seen, got.size, got.flat, got.partial) == (
        expected.stamps, expected.seen, expected.size, expected.flat, expected.partial)


def test_a_key_both_set_and_removed_is_refused():
    with pytest.raises(ValueError, match="both set and removed"):
        change(None, {"a": 1}, ["a"], ["a"], version=1, origin=1)


# -- SessionCache.change ----------------------------------------------------------------


@pytest.fixture
def cache():
    return SessionCache(clock=FakeClock(), max_session_bytes=256)


def test_change_sets_and_removes_only_what_it_names(cache):
    sid = new_id()
    cache.set(sid, {"a": 1, "b": 2, "c": 3})
    record = cache.change(sid, {"a": 10, "d": 4}, ["b"])
    assert cache.get(sid) == {"a": 10, "c": 3, "d": 4} == record.data
    assert stamps_of(record)["b"] == (record.version, record.origin)


def test_change_is_measured_on_the_whole_session_and_refuses_a_destroyed_one(cache):
    sid = new_id()
    cache.set(sid, {"a": "x" * 120})
    with pytest.raises(SessionTooLarge):
        cache.change(sid, {"b": "y" * 150})
    assert cache.get(sid) == {"a": "x" * 120}
    cache.destroy(sid)
    with pytest.raises(SessionDestroyed):
        cache.change(sid, {"b": 1})


def test_a_delta_for_a_session_not_held_is_kept_aside_until_the_session_arrives(cache):
    other = SessionCache(clock=cache.clock)
    sid = new_id()
    base = other.set(sid, {"a": 1, "b": 2})
    held, delta = record_change(base, session_key(sid), {"a": 1, "b": 2, "c": 3}, ["c"], [],
                                version=other.hlc.now(), origin=other.origin, wall=other.clock.wall(),
                                idle_timeout=None, max_age=None, flat=True, size=1)
    assert not cache.apply(delta) and cache.get(sid) is None  # "c" alone is not the session
    # The whole session arriving after the delta (another publisher's stream) takes it in.
    assert cache.apply(base)
    assert cache.get(sid) == {"a": 1, "b": 2, "c": 3}
    assert not cache.apply(delta)  # already merged


def test_two_managers_saving_different_keys_of_one_session_both_survive():
    clock = FakeClock()
    worker_a, worker_b = SessionCache(clock=clock), SessionCache(clock=clock)
    a = SessionManager(worker_a, WebConfig(secret_keys=["s" * 32]))
    b = SessionManager(worker_b, WebConfig(secret_keys=["s" * 32]))
    first = a.open(None)
    first["user"] = "ada"
    cookie = a.save(first)
    worker_b.apply(worker_a.record(first.sid))
    on_a, on_b = a.open(cookie.value), b.open(cookie.value)
    on_a["x"], on_b["y"] = 1, 2
    a.save(on_a)
    b.save(on_b)
    # Each worker publishes its delta; both merge both.
    worker_b.apply(worker_a.record(first.sid))
    worker_a.apply(worker_b.record(first.sid))
    assert worker_a.get(first.sid) == worker_b.get(first.sid) == {"user": "ada", "x": 1, "y": 2}


def test_the_cookie_names_the_change_and_old_cookies_still_verify():
    signer = CookieSigner(["s" * 32])
    sid = new_id()
    assert signer.unsign_stamp(signer.sign(sid, 0x1234, 0xABC)) == (sid, 0x1234, 0xABC)
    assert signer.unsign(signer.sign(sid, 0x1234, 0xABC)) == (sid, 0x1234)
    assert signer.unsign_stamp(signer.sign(sid, 0x1234)) == (sid, 0x1234, 0)


def test_a_clear_drops_the_keys_it_covers_from_a_newer_session_held_here(cache):
    sid = new_id()
    cache.set(sid, {"old": 1})
    other = SessionCache(clock=cache.clock)
    watermark = other.hlc.now()
    cache.clock.advance(1)
    cache.change(sid, {"new": 2})  # after the clear was made elsewhere, before it arrived here
    assert cache.apply_clear(watermark)
    assert cache.get(sid) == {"new": 2}


class SlowClock(FakeClock):
    """Each wall reading is 5 ms after the one before: a thread descheduled between two readings."""

    def wall(self) -> float:
        self.advance(0.005)
        return super().wall()


def test_a_change_is_never_sent_as_a_touch_however_late_its_version_is_issued():
    from memsession.bus import MemoryBus, MemoryHub
    from memsession.bus.streams import is_touch

    hub = MemoryHub(clock=SlowClock())
    writer = SessionCache(clock=hub.clock, bus=MemoryBus(hub))
    reader = SessionCache(clock=hub.clock, bus=MemoryBus(hub))
    sid = new_id()
    first = writer.set(sid, {"a": 1})
    second = writer.change(sid, {"b": 2})
    assert not is_touch(first) and not is_touch(second)
    assert reader.get(sid) == {"a": 1, "b": 2}


def test_key_tombstones_are_bounded_keeping_the_most_recent():
    from memsession.changes import MAX_KEY_TOMBSTONES

    cache = SessionCache(clock=FakeClock())
    sid = new_id()
    cache.set(sid, {"keep": 1})
    for n in range(MAX_KEY_TOMBSTONES + 10):
        cache.change(sid, {f"k{n}": n})
        cache.change(sid, {}, [f"k{n}"])
    record = cache.record(sid)
    removed = set(stamps_of(record)) - set(record.data)
    assert len(removed) == MAX_KEY_TOMBSTONES and f"k{MAX_KEY_TOMBSTONES + 9}" in removed and "k0" not in removed
    assert record.data == {"keep": 1}


def test_set_replaces_what_this_copy_held_and_keeps_a_key_another_worker_set_meanwhile():
    from memsession.bus import MemoryBus, MemoryHub

    hub = MemoryHub()
    a, b = SessionCache(bus=MemoryBus(hub)), SessionCache(bus=MemoryBus(hub))
    sid = new_id()
    a.set(sid, {"old": 1, "x": 1})
    hub.hold()  # both write before either hears of the other
    a.set(sid, {"x": 2})  # "old" was held here: removed
    b.change(sid, {"b": 1})  # "b" was never in a's copy: kept
    hub.release()
    assert a.get(sid) == b.get(sid) == {"x": 2, "b": 1}


def test_deltas_kept_aside_are_bounded_oldest_first(monkeypatch):
    import memsession.holdings as holdings

    monkeypatch.setattr(holdings, "ORPHANS_MAX", 3)
    writer, reader = SessionCache(clock=FakeClock()), SessionCache(clock=FakeClock())
    sids = [new_id() for _ in range(5)]
    for sid in sids:
        base = writer.set(sid, {"a": 1})
        _, delta = record_change(base, session_key(sid), {"a": 1, "b": 2}, ["b"], [], version=writer.hlc.now(),
                                 origin=writer.origin, wall=writer.clock.wall(), idle_timeout=None,
                                 max_age=None, flat=True, size=1)
        assert not reader.apply(delta)
    assert list(reader._held.orphans) == [session_key(sid) for sid in sids[2:]]
    reader.apply(writer.record(sids[4]))
    assert reader.get(sids[4]) == {"a": 1, "b": 2}


def test_a_key_both_set_and_removed_by_one_change_is_a_value_error(cache):
    sid = new_id()
    cache.set(sid, {"a": 1})
    with pytest.raises(ValueError, match="both set and removed"):
        cache.change(sid, {"a": 2}, ["a"])
    assert cache.get(sid) == {"a": 1}


def test_a_refreshed_cookie_keeps_naming_the_users_own_change():
    clock = FakeClock()
    cache = SessionCache(clock=clock, touch_interval=0)
    manager = SessionManager(cache, WebConfig(secret_keys=["s" * 32]))
    first = manager.open(None)
    first["user"] = "ada"
    cookie = manager.save(first)
    mine = manager.signer.unsign_stamp(cookie.value)
    other = SessionCache(clock=clock)
    other.apply(cache.record(first.sid))
    cache.apply(other.change(first.sid, {"theme": "dark"}))  # another writer's later change
    session = manager.open(cookie.value)
    session.modified = True  # re-send the cookie, changing nothing
    refreshed = manager.save(session)
    assert refreshed is not None and manager.signer.unsign_stamp(refreshed.value) == mine
