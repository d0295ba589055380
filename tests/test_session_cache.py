"""SessionCache: Store parity, tombstones, merge of remote records, stats, threads."""

from __future__ import annotations

import random
import threading

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from memsession import (
    CacheClosed,
    Config,
    InvalidSessionId,
    Record,
    SessionCache,
    SessionDataError,
    SessionDestroyed,
    SessionTooLarge,
    new_id,
    session_key,
)
from memsession.testing import EvictionModel, FakeClock


def make(**options):
    clock = FakeClock()
    options.setdefault("idle_timeout", 60)
    options.setdefault("max_age", 600)
    return SessionCache(clock=clock, **options), clock


# -- Store parity ----------------------------------------------------------------

def test_set_get_destroy_round_trip():
    cache, _ = make()
    sid = new_id()
    assert cache.get(sid) is None
    cache.set(sid, {"user": 7, "roles": ["a", "b"]})
    assert cache.get(sid) == {"user": 7, "roles": ["a", "b"]}
    assert cache.length() == len(cache) == 1 and sid in cache
    assert cache.all() == {session_key(sid): {"user": 7, "roles": ["a", "b"]}}  # keyed by digest
    assert cache.destroy(sid) is True
    assert cache.get(sid) is None and cache.destroy(sid) is False


def test_get_hands_out_copies():
    cache, _ = make()
    sid = new_id()
    cache.set(sid, {"cart": [1], "n": 1})
    got = cache.get(sid)
    got["cart"].append(2)
    got["n"] = 2
    assert cache.get(sid) == {"cart": [1], "n": 1}


def test_set_returns_the_new_record_with_a_newer_version_and_the_same_creation():
    cache, clock = make()
    sid = new_id()
    first = cache.set(sid, {"a": 1})
    clock.advance(5)
    second = cache.set(sid, {"a": 2})
    assert second.version > first.version and second.origin == cache.origin
    assert second.created == first.created and second.accessed == first.accessed + 5
    assert second.expires == min(second.accessed + 60, second.created + 600)


def test_malformed_ids_miss_on_read_and_raise_on_write():
    cache, _ = make()
    assert cache.get("nope") is None and cache.get(None) is None  # type: ignore[arg-type]
    assert cache.get(["unhashable"]) is None  # type: ignore[arg-type]
    assert cache.stats()["invalid_ids"] == 3
    with pytest.raises(InvalidSessionId):
        cache.set("x" * 10, {})
    with pytest.raises(InvalidSessionId):
        cache.touch("x" * 10)
    with pytest.raises(InvalidSessionId):
        cache.destroy("x" * 10)


def test_ids_of_the_right_length_but_not_of_the_alphabet_miss_and_count_as_invalid():
    cache, _ = make()
    for bad in ("é" * 43, "!" * 43, "\ud800" * 43, "a" * 42 + "="):
        assert cache.get(bad) is None
    assert cache.stats()["invalid_ids"] == 4 and cache.stats()["misses"] == 0


def test_get_finds_a_session_that_came_from_elsewhere_under_the_key_of_its_id():
    """get() hashes the id itself: it must land on the key every other replica and store uses."""
    cache, clock = make()
    sid = new_id()
    wall = clock.wall()
    cache.apply(Record(session_key(sid), {"from": "elsewhere"}, 5 << 16, 7, wall, wall, wall + 60))
    assert cache.get(sid) == {"from": "elsewhere"}


def test_bad_data_fails_at_set_time_with_the_key_path():
    cache, _ = make()
    with pytest.raises(TypeError, match=r"session\['u'\]\['when'\]"):
        cache.set(new_id(), {"u": {"when": object()}})
    with pytest.raises(SessionDataError):
        cache.set(new_id(), {"x": {1, 2}})


def test_per_session_size_limit():
    cache, _ = make(max_session_bytes=1024)
    with pytest.raises(SessionTooLarge):
        cache.set(new_id(), {"blob": b"x" * 2000})


def test_idle_and_absolute_expiry():
    cache, clock = make(idle_timeout=10, max_age=30)
    sid = new_id()
    cache.set(sid, {"a": 1})
    for _ in range(2):
        clock.advance(9)
        assert cache.get(sid) == {"a": 1}
    clock.advance(10)
    assert cache.get(sid) is None  # idle
    cache.set(sid, {"a": 1})
    for _ in range(3):
        clock.advance(9)
        cache.touch(sid)
    clock.advance(3)
    assert cache.get(sid) is None  # 30 s since creation, however active


def test_lru_eviction_beyond_maxsize_is_counted():
    cache, _ = make(maxsize=3)
    sids = [new_id() for _ in range(5)]
    for sid in sids:
        cache.set(sid, {"x": 1})
    assert cache.length() == 3
    assert cache.get(sids[0]) is None and cache.get(sids[4]) == {"x": 1}
    assert cache.stats()["evicted"]["size"] == 2


def test_prune_drops_expired_and_reports_how_many():
    cache, clock = make(idle_timeout=10)
    for _ in range(4):
        cache.set(new_id(), {"x": 1})
    clock.advance(5)
    keep = new_id()
    cache.set(keep, {"x": 1})
    clock.advance(6)
    assert cache.prune() == 4
    assert list(cache) == [session_key(keep)]
    assert cache.stats()["expired"] == 4


def test_evict_all_forgets_sessions_here_but_not_tombstones():
    cache, _ = make()
    live, dead = new_id(), new_id()
    cache.set(live, {"x": 1})
    cache.set(dead, {"x": 1})
    cache.destroy(dead)
    cache.evict_all()
    assert cache.length() == 0 and cache.stats()["bytes"] == 0
    assert cache.cleared == 0  # nothing was ended: a copy from elsewhere is still welcome
    with pytest.raises(SessionDestroyed):
        cache.set(dead, {"x": 1})


def test_clear_ends_everything_so_far_and_refuses_late_copies_of_it():
    cache, clock = make()
    live, dead = new_id(), new_id()
    before = cache.set(live, {"x": 1})
    cache.set(dead, {"x": 1})
    cache.destroy(dead)
    cache.clear()
    assert cache.length() == 0 and cache.stats()["bytes"] == 0
    assert cache.cleared > before.version and cache.stats()["clears"] == 1
    assert not cache.apply(before)  # a late copy of a cleared session does not come back
    assert cache.get(live) is None
    # tombstones outlive a clear: destroyed stays destroyed
    assert cache.stats()["tombstones"] == 1
    with pytest.raises(SessionDestroyed):
        cache.set(dead, {"y": 2})
    clock.advance(1)
    assert cache.set(live, {"y": 2}).version > cache.cleared  # a new write after the clear


def test_a_tombstone_below_the_watermark_still_beats_a_newer_live_copy():
    """Whatever order a clear, a destroy and a later write arrive in, replicas agree."""
    clock = FakeClock()
    sid = new_id()
    writer, other = SessionCache(clock=clock), SessionCache(clock=clock)
    other.destroy(sid)
    tomb = other.record(sid)
    clearing = SessionCache(clock=clock)
    clock.advance(0.01)
    clearing.clear()
    clock.advance(0.01)
    live = writer.set(sid, {"after": "clear"})
    assert tomb.version < clearing.cleared < live.version
    orders = [[tomb, "clear", live], [live, tomb, "clear"], ["clear", live, tomb], [live, "clear", tomb]]
    outcomes = set()
    for order in orders:
        replica = SessionCache(clock=clock)
        for item in order:
            if item == "clear":
                replica.apply_clear(clearing.cleared)
            else:
                replica.apply(item)
        outcomes.add(repr(replica.record(sid)))
    assert outcomes == {repr(tomb)}


def test_a_remote_clear_keeps_what_was_written_after_it():
    cache, clock = make()
    old, new = new_id(), new_id()
    first = cache.set(old, {"a": 1})
    clock.advance(1)
    second = cache.set(new, {"b": 2})
    assert cache.apply_clear(first.version)
    assert cache.get(old) is None and cache.get(new) == {"b": 2}
    assert not cache.apply_clear(first.version - 1)  # the watermark never goes down
    assert cache.cleared == first.version
    assert cache.apply_clear(second.version) and len(cache) == 0


# -- tombstones -------------------------------------------------------------------

def test_destroyed_id_cannot_be_written_until_its_tombstone_expires():
    cache, clock = make(tombstone_ttl=300)
    sid = new_id()
    cache.set(sid, {"a": 1})
    cache.destroy(sid)
    clock.advance(299)
    with pytest.raises(SessionDestroyed):
        cache.set(sid, {"a": 2})
    assert cache.record(sid).deleted
    clock.advance(1)
    cache.set(sid, {"a": 3})
    assert cache.get(sid) == {"a": 3}


def test_tombstones_are_swept():
    cache, clock = make(tombstone_ttl=100)
    for _ in range(10):
        cache.destroy(new_id())
    assert cache.stats()["tombstones"] == 10
    clock.advance(100)
    cache.prune()
    assert cache.stats()["tombstones"] == 0


# -- records from elsewhere (the replication and store seam) ----------------------

def remote(cache, sid, data, *, version, origin=99, created=None, accessed=None, deleted=False, **kw):
    wall = cache.clock.wall()
    created = wall if created is None else created
    accessed = wall if accessed is None else accessed
    expires = kw.get("expires", min(accessed + cache.config.idle_timeout, created + cache.config.max_age))
    return Record(session_key(sid), data, version, origin, created, accessed, expires, deleted, flat=True,
                  size=len(msgpack.packb(data)))


def test_apply_merges_key_by_key_the_later_stamp_winning_each_key():
    cache, _ = make()
    sid = new_id()
    local = cache.set(sid, {"v": "local"})
    # An older change loses the key both wrote, and brings the key only it wrote.
    assert cache.apply(remote(cache, sid, {"v": "old", "w": "other"}, version=local.version - 1))
    assert cache.get(sid) == {"v": "local", "w": "other"}
    # Merging the same record again changes nothing.
    assert not cache.apply(remote(cache, sid, {"v": "old", "w": "other"}, version=local.version - 1))
    assert cache.apply(remote(cache, sid, {"v": "new"}, version=local.version + 1))
    assert cache.get(sid) == {"v": "new", "w": "other"}
    tie = remote(cache, sid, {"v": "tie"}, version=local.version + 1, origin=100)
    assert cache.apply(tie) and cache.get(sid) == {"v": "tie", "w": "other"}
    assert cache.stats()["applied"] == 3 and cache.stats()["ignored"] == 1


def test_local_writes_after_a_remote_one_get_later_versions():
    cache, _ = make()
    sid = new_id()
    far_future = cache.hlc.now() + (30_000 << 16)  # 30 s ahead: within the skew a record may have
    cache.apply(remote(cache, sid, {"v": 1}, version=far_future))
    assert cache.set(sid, {"v": 2}).version > far_future


def test_a_late_update_never_resurrects_a_destroyed_session():
    cache, _ = make()
    sid = new_id()
    cache.set(sid, {"v": 1})
    cache.destroy(sid)
    newer = remote(cache, sid, {"v": "late"}, version=cache.hlc.now() + 1000)
    assert not cache.apply(newer)
    assert cache.get(sid) is None


def test_remote_tombstone_removes_and_blocks():
    cache, _ = make()
    sid = new_id()
    cache.set(sid, {"v": 1})
    wall = cache.clock.wall()
    tomb = Record(session_key(sid), {}, 1, 99, wall, wall, wall + 600, True)  # older version: still final
    assert cache.apply(tomb)
    assert cache.get(sid) is None
    with pytest.raises(SessionDestroyed):
        cache.set(sid, {"v": 2})


def test_remote_record_keeps_its_age_and_is_never_extended():
    cache, clock = make(idle_timeout=60, max_age=600)
    sid = new_id()
    wall = clock.wall()
    cache.apply(remote(cache, sid, {"v": 1}, version=1, created=wall - 590, accessed=wall - 1))
    clock.advance(9)
    assert cache.get(sid) == {"v": 1}
    clock.advance(1)
    assert cache.get(sid) is None


def test_expired_remote_record_is_not_kept():
    cache, _ = make()
    sid = new_id()
    wall = cache.clock.wall()
    assert not cache.apply(remote(cache, sid, {"v": 1}, version=5, created=wall - 700, accessed=wall - 700))
    assert cache.get(sid) is None


def test_remote_touch_slides_the_idle_timer():
    cache, clock = make(idle_timeout=60)
    sid = new_id()
    rec = cache.set(sid, {"v": 1})
    clock.advance(50)
    assert cache.apply(rec.touched(clock.wall(), clock.wall() + 60))
    clock.advance(50)
    assert cache.record(sid) is not None
    assert not cache.apply(rec)  # an older touch of the same version changes nothing


def test_touches_are_coalesced():
    cache, clock = make(touch_interval=30)
    sid = new_id()
    cache.set(sid, {"v": 1})
    for _ in range(10):
        clock.advance(5)
        cache.get(sid)
    # 50 s of reads: one propagated touch at 30 s
    assert cache.stats()["touches"] == 1
    assert cache.record(sid).accessed == cache.clock.wall() - 20


# -- lifecycle and stats ----------------------------------------------------------

def test_closed_cache_refuses_work_and_close_is_idempotent():
    with SessionCache() as cache:
        sid = new_id()
        cache.set(sid, {"a": 1})
    cache.close()
    assert cache.closed
    for call in (lambda: cache.get(sid), lambda: cache.set(sid, {}), lambda: cache.destroy(sid), cache.length):
        with pytest.raises(CacheClosed):
            call()
    assert cache.stats()["sessions"] == 1  # still readable for a last report


def test_stats_report_counts_and_sizes():
    cache, _ = make()
    sid = new_id()
    cache.set(sid, {"a": "x" * 100})
    cache.get(sid)
    cache.get(new_id())
    stats = cache.stats()
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["sets"] == 1
    assert stats["sessions"] == 1 and stats["bytes"] == len(msgpack.packb({"a": "x" * 100}))
    assert set(stats["evicted"]) == {"idle", "max_age", "size"}


# -- against the reference model --------------------------------------------------

SIDS = [new_id() for _ in range(6)]


class FacadeMachine(RuleBasedStateMachine):
    """SessionCache keeps exactly what the eviction model keeps, plus tombstones."""

    def __init__(self):
        super().__init__()
        self.clock = FakeClock()
        self.cache = SessionCache(clock=self.clock, maxsize=4, idle_timeout=10, max_age=25,
                                  tombstone_ttl=15, touch_interval=3)
        # The default policy: segmented LRU with the default protected share.
        self.model = EvictionModel(4, 10, 25, protected_fraction=Config().protected_fraction)
        self.tombstones: dict[str, float] = {}

    def dead(self, sid):
        return self.tombstones.get(sid, -1) > self.clock()

    @rule(sid=st.sampled_from(SIDS), value=st.integers(-1000, 1000))
    def set(self, sid, value):
        if self.dead(sid):
            with pytest.raises(SessionDestroyed):
                self.cache.set(sid, {"v": value})
        else:
            self.cache.set(sid, {"v": value})
            self.model.insert(sid, {"v": value}, self.clock())

    @rule(sid=st.sampled_from(SIDS))
    def get(self, sid):
        expected = self.model.get(sid, self.clock())
        assert self.cache.get(sid) == (None if expected is EvictionModel.MISSING else expected)

    @rule(sid=st.sampled_from(SIDS))
    def touch(self, sid):
        expected = self.model.get(sid, self.clock()) is not EvictionModel.MISSING
        assert self.cache.touch(sid) is expected

    @rule(sid=st.sampled_from(SIDS))
    def destroy(self, sid):
        live = self.model.is_live(sid, self.clock())
        if sid in self.model.entries:
            self.model.delete(sid)
        self.tombstones[sid] = self.clock() + 15
        assert self.cache.destroy(sid) is live

    @rule(seconds=st.sampled_from([0.5, 1, 3, 9, 30]))
    def wait(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def prune(self):
        self.cache.prune()
        self.model.expire(self.clock())
        live = self.model.live(self.clock())
        sizes = sum(len(msgpack.packb(v)) for v in live.values())
        assert self.cache.stats()["bytes"] == sizes

    @invariant()
    def same_sessions(self):
        live = self.model.live(self.clock())
        assert set(iter(self.cache)) == {session_key(sid) for sid in live}
        assert self.cache.length() == len(live)


TestFacadeMachine = FacadeMachine.TestCase
TestFacadeMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


# -- threads ------------------------------------------------------------------------

def test_many_threads_hammering_one_cache_keep_it_consistent():
    cache = SessionCache(maxsize=500, idle_timeout=60, max_age=600, touch_interval=0)
    sids = [new_id() for _ in range(800)]
    errors: list[Exception] = []
    start = threading.Barrier(16)

    def work(seed):
        rnd = random.Random(seed)
        try:
            start.wait()
            for i in range(3000):
                sid = rnd.choice(sids)
                op = rnd.random()
                if op < 0.5:
                    got = cache.get(sid)
                    assert got is None or set(got) == {"by", "i"}
                elif op < 0.9:
                    try:
                        cache.set(sid, {"by": seed, "i": i})
                    except SessionDestroyed:
                        pass
                elif op < 0.97:
                    cache.touch(sid)
                else:
                    cache.destroy(sid)
        except Exception as exc:  # surfaced below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats()
    live = cache.all()
    assert stats["sessions"] == len(live) <= 500
    assert stats["bytes"] == sum(len(msgpack.packb(d)) for d in live.values())
    assert stats["hits"] + stats["misses"] > 0


def test_repeated_remote_updates_keep_the_entry_age_exactly():
    cache, clock = make(idle_timeout=1000, max_age=600)
    sid = new_id()
    wall = clock.wall()
    for version in range(1, 201):  # 2 s of updates, each carrying the same creation time
        clock.advance(0.01)
        assert cache.apply(remote(cache, sid, {"v": version}, version=version, created=wall - 300))
    clock.advance(297.99)  # 299.99 s after creation: still live
    assert cache.get(sid) == {"v": 200}
    clock.advance(0.02)  # 300.01 s: max_age reached, not a moment later
    assert cache.get(sid) is None


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6), st.integers(1, 3), st.booleans(),
                          st.integers(-5, 30)), max_size=25))
def test_apply_many_ends_where_one_at_a_time_ends(specs):
    sids = [new_id() for _ in range(4)]
    clock = FakeClock()
    records = [
        Record(sids[k], {} if dead else {"v": v, "o": o}, v, o, clock.wall(), clock.wall(),
               clock.wall() + life, dead)
        for k, v, o, dead, life in specs
    ]
    one, many = SessionCache(clock=clock), SessionCache(clock=clock)
    changed = [one.apply(r) for r in records]
    assert many.apply_many(records) == sum(changed)
    assert {r.key: r for r in one.records()} == {r.key: r for r in many.records()}
    assert one.stats()["applied"] == many.stats()["applied"]
