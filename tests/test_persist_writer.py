"""SessionCache(persistence=Persistence(...)): read-through, write-through, write-behind, negative cache, outages.

The store here is a real JsonFileStore (in memory until it snapshots); the
outage cases wrap it to fail on demand, since the logic under test is the
queue's, not the server's (real server outages: test_persist_pg_wiring).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from memsession import SessionCache
from memsession.errors import ConfigError, SessionDestroyed, StoreRejected, StoreUnavailable
from memsession.session import Record, new_id, session_key
from memsession.testing import FakeClock
from persist.base import merge_row
from persist.jsonfile import JsonFileStore
from persist.persistence import PersistConfig, Persistence
from persist.testing import make_test_delta, make_test_record

BEHIND_SLOW = PersistConfig(mode="write_behind", flush_interval=3600.0)


class RecordingStore(JsonFileStore):
    """A JsonFileStore that counts calls and can be switched off like a server."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(path, save_interval=None, fsync=False, clock=FakeClock(), **options)
        self.down = False
        self.clear_down = False  # only clear() fails
        self.loads = 0
        self.batches: list[int] = []
        self.purges = 0
        self.clears: list[int] = []
        self.calls: list[str] = []
        #: While set, save() waits here (a batch held in flight).
        self.gate: threading.Event | None = None
        self.saving = threading.Event()

    def _check(self, op: str) -> None:
        if self.down or (op == "clear" and self.clear_down):
            raise StoreUnavailable("switched off", store=self.name, op=op)

    def load(self, key: str) -> Record | None:
        self._check("load")
        self.loads += 1
        return super().load(key)

    def save(self, records: Sequence[Record]) -> int:
        self._check("save")
        self.batches.append(len(records))
        self.calls.append("save")
        if self.gate is not None:
            self.saving.set()
            self.gate.wait(10)
        return super().save(records)

    def clear(self, version: int) -> int:
        self._check("clear")
        self.clears.append(version)
        self.calls.append("clear")
        return super().clear(version)

    def purge(self, now: float) -> int:
        self._check("purge")
        self.purges += 1
        return super().purge(now)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(tmp_path / "s.jsonl")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_cache(store: RecordingStore, clock: FakeClock, config: PersistConfig | None = None, **options: Any):
    return SessionCache(clock=clock, persistence=Persistence(store, config), **options)


def test_evicted_session_is_read_back(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock, PersistConfig(mode="write_through"), maxsize=2) as cache:
        sids = [new_id() for _ in range(3)]
        for i, sid in enumerate(sids):
            cache.set(sid, {"n": i})
        assert sids[0] not in cache
        assert cache.get(sids[0]) == {"n": 0}
        assert sids[0] in cache
        assert store.loads == 1
        assert cache.stats()["persistence"]["read_hits"] == 1


def test_cold_process_serves_stored_sessions(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "s.jsonl"
    first = SessionCache(clock=clock, persistence=Persistence(JsonFileStore(path, save_interval=None, clock=clock)))
    sids = [new_id() for _ in range(5)]
    for sid in sids:
        first.set(sid, {"sid": sid})
    first.close()
    with SessionCache(clock=clock, persistence=Persistence(JsonFileStore(path, save_interval=None, clock=clock))) as cold:
        assert len(cold) == 0
        assert all(cold.get(sid) == {"sid": sid} for sid in sids)
    preload = PersistConfig(preload=True)
    with SessionCache(clock=clock, persistence=Persistence(JsonFileStore(path, save_interval=None, clock=clock), preload)) as warm:
        assert len(warm) == 5


def test_read_through_keeps_expiry(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock, PersistConfig(mode="write_through"), idle_timeout=100, max_age=None) as cache:
        sid = new_id()
        cache.set(sid, {"a": 1})
        cache.evict_all()
        clock.advance(99)
        assert cache.get(sid) == {"a": 1}
        cache.evict_all()
        clock.advance(2)
        assert cache.get(sid) is None


def test_write_through_saves_before_returning(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock, PersistConfig(mode="write_through")) as cache:
        sid = new_id()
        record = cache.set(sid, {"a": 1})
        assert store.load(session_key(sid)) == record
        cache.destroy(sid)
        stored = store.load(session_key(sid))
        assert stored is not None and stored.deleted


def test_destroyed_session_read_back_stays_destroyed(store: RecordingStore, clock: FakeClock, tmp_path: Path) -> None:
    sid = new_id()
    with make_cache(store, clock, PersistConfig(mode="write_through")) as cache:
        cache.set(sid, {"a": 1})
        cache.destroy(sid)
    again = RecordingStore(tmp_path / "s.jsonl")
    with make_cache(again, clock) as cold:
        assert cold.get(sid) is None
        with pytest.raises(SessionDestroyed):
            cold.set(sid, {"late": True})


def test_write_behind_coalesces_by_key(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock, BEHIND_SLOW) as cache:
        sid, other = new_id(), new_id()
        for i in range(100):
            cache.set(sid, {"i": i})
        cache.set(other, {})
        assert store.load(session_key(sid)) is None
        assert cache.stats()["persistence"]["queued"] == 2
        assert cache.persistence is not None and cache.persistence.flush() == 2
        assert store.batches == [2]
        stored = store.load(session_key(sid))
        assert stored is not None and stored.data == {"i": 99}


def test_write_behind_flushes_on_interval(store: RecordingStore) -> None:
    with SessionCache(persistence=Persistence(store, PersistConfig(flush_interval=0.01))) as cache:
        sid = new_id()
        cache.set(sid, {"a": 1})
        wait_until(lambda: store.load(session_key(sid)) is not None)


def test_write_behind_flushes_when_enough_keys_wait(store: RecordingStore) -> None:
    config = PersistConfig(flush_interval=3600.0, batch_size=10)
    with SessionCache(persistence=Persistence(store, config)) as cache:
        sids = [new_id() for _ in range(10)]
        for sid in sids:
            cache.set(sid, {})
        wait_until(lambda: all(store.load(session_key(s)) is not None for s in sids))


def test_close_flushes_write_behind(store: RecordingStore, tmp_path: Path) -> None:
    cache = SessionCache(persistence=Persistence(store, BEHIND_SLOW))
    sids = [new_id() for _ in range(50)]
    for sid in sids:
        cache.set(sid, {"sid": sid})
    cache.close()
    assert store.stats()["snapshots"] == 1
    reopened = JsonFileStore(tmp_path / "s.jsonl", save_interval=None)
    try:
        assert all(reopened.load(session_key(s)) is not None for s in sids)
    finally:
        reopened.close()


def test_a_queued_write_is_merged_into_what_the_store_has(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock, BEHIND_SLOW, maxsize=1) as cache:
        first, second = new_id(), new_id()
        other = SessionCache(clock=clock)  # another worker, whose write of "theirs" is stored already
        store.save([other.set(first, {"theirs": 1})])
        cache.set(first, {"n": 1})  # not yet written: the queue holds it
        cache.set(second, {"n": 2})
        assert first not in cache
        # The queued record is what this process held, not the whole session: merged with the row.
        assert cache.get(first) == {"theirs": 1, "n": 1}
        assert store.loads == 1


def test_unknown_ids_are_cached_negatively(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock, PersistConfig(negative_ttl=5.0)) as cache:
        sid = new_id()
        for _ in range(100):
            assert cache.get(sid) is None
        assert store.loads == 1
        assert cache.stats()["persistence"]["negative_hits"] == 99
        clock.advance(5.1)
        assert cache.get(sid) is None
        assert store.loads == 2
        cache.set(sid, {"now": "known"})
        cache.evict_all()
        assert cache.get(sid) == {"now": "known"}


def test_negative_cache_is_bounded(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock, PersistConfig(negative_max=10)) as cache:
        sids = [new_id() for _ in range(30)]
        for sid in sids:
            cache.get(sid)
        assert cache.stats()["persistence"]["negative"] == 10
        cache.get(sids[0])
        assert store.loads == 31


def test_malformed_ids_never_reach_the_store(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock) as cache:
        for bad in ("", "short", "x" * 43 + "!", "ü" * 43):
            assert cache.get(bad) is None
        assert store.loads == 0


def test_write_through_outage_raises_and_retries(
    store: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    config = PersistConfig(mode="write_through", retry_min=0.01, retry_max=0.02)
    with SessionCache(persistence=Persistence(store, config)) as cache:
        sid = new_id()
        store.down = True
        with pytest.raises(StoreUnavailable):
            cache.set(sid, {"a": 1})
        assert cache.get(sid) == {"a": 1}
        stats = cache.stats()["persistence"]
        assert stats["write_errors"] >= 1 and stats["queued"] == 1
        assert "failing" in caplog.text
        store.down = False
        wait_until(lambda: store.load(session_key(sid)) is not None)
        wait_until(lambda: cache.stats()["persistence"]["queued"] == 0)
        assert "is back" in caplog.text


def test_write_behind_outage_loses_nothing(store: RecordingStore) -> None:
    config = PersistConfig(flush_interval=0.005, retry_min=0.01, retry_max=0.05)
    with SessionCache(persistence=Persistence(store, config)) as cache:
        store.down = True
        sids = [new_id() for _ in range(200)]
        for i, sid in enumerate(sids):
            cache.set(sid, {"i": i})
        wait_until(lambda: cache.stats()["persistence"]["write_errors"] >= 2)
        assert all(cache.get(sid) is not None for sid in sids)
        store.down = False
        wait_until(lambda: all(store.load(session_key(s)) is not None for s in sids))


def test_touches_are_written_behind_and_never_fail_reads(store: RecordingStore, clock: FakeClock) -> None:
    config = PersistConfig(mode="write_through", flush_interval=3600.0)
    with make_cache(store, clock, config, touch_interval=10) as cache:
        sid = new_id()
        record = cache.set(sid, {"a": 1})
        store.down = True
        clock.advance(11)
        assert cache.get(sid) == {"a": 1}
        assert cache.touch(sid)
        store.down = False
        assert cache.persistence is not None and cache.persistence.flush() == 1
        stored = store.load(session_key(sid))
        assert stored is not None and stored.version == record.version and stored.accessed > record.accessed


def test_read_error_raises_or_misses(store: RecordingStore, clock: FakeClock, tmp_path: Path) -> None:
    sid = new_id()
    with make_cache(store, clock) as cache:
        store.down = True
        with pytest.raises(StoreUnavailable):
            cache.get(sid)
        assert cache.stats()["persistence"]["read_errors"] == 1
        store.down = False
    other = RecordingStore(tmp_path / "other.jsonl")
    with make_cache(other, clock, PersistConfig(on_read_error="miss")) as cache:
        other.down = True
        assert cache.get(sid) is None
        other.down = False


def test_touch_reads_through(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock, PersistConfig(mode="write_through")) as cache:
        sid = new_id()
        cache.set(sid, {})
        cache.evict_all()
        assert cache.touch(sid)
        assert sid in cache
        assert not cache.touch(new_id())


def test_close_gives_up_after_timeout(store: RecordingStore, caplog: pytest.LogCaptureFixture) -> None:
    config = PersistConfig(flush_interval=3600.0, close_timeout=0.05, retry_min=0.01, retry_max=0.01)
    cache = SessionCache(persistence=Persistence(store, config))
    cache.set(new_id(), {})
    store.down = True
    with caplog.at_level(logging.ERROR):
        cache.close()
    assert cache.stats()["persistence"]["lost"] == 1
    assert "lost" in caplog.text


def test_prune_interval_purges_the_store(store: RecordingStore) -> None:
    config = PersistConfig(flush_interval=0.01, prune_interval=0.01)
    with SessionCache(persistence=Persistence(store, config)):
        wait_until(lambda: store.purges >= 2)


def test_concurrent_requests(store: RecordingStore) -> None:
    sids = [new_id() for _ in range(40)]
    config = PersistConfig(flush_interval=0.002, batch_size=16)
    with SessionCache(persistence=Persistence(store, config), maxsize=8) as cache:
        def worker(offset: int) -> None:
            for round_ in range(50):
                sid = sids[(offset + round_) % len(sids)]
                cache.set(sid, {"by": offset, "round": round_})
                cache.get(sids[(offset * 7 + round_) % len(sids)])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert cache.persistence is not None
        cache.persistence.flush()
        for sid in sids:
            assert cache.get(sid) == store.load(session_key(sid)).data  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "sometimes"},
        {"flush_interval": 0},
        {"batch_size": 0},
        {"negative_ttl": -1},
        {"retry_min": 2.0, "retry_max": 1.0},
        {"prune_interval": float("inf")},
        {"on_read_error": "ignore"},
    ],
)
def test_bad_options(options: dict) -> None:
    with pytest.raises(ConfigError):
        PersistConfig(**options)


def test_store_must_implement_the_protocol() -> None:
    with pytest.raises(ConfigError):
        SessionCache(persistence=Persistence(object()))  # type: ignore[arg-type]


def test_a_cache_inherited_through_fork_refuses_to_persist(store: RecordingStore) -> None:
    import os

    cache = SessionCache(persistence=Persistence(store))
    try:
        read, write = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() with threads running: that hazard is the point here.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: report what set() and get() do, then leave at once
            try:
                outcome = []
                for call in (lambda: cache.set(new_id(), {}), lambda: cache.get(new_id())):
                    try:
                        call()
                        outcome.append("ok")
                    except Exception as exc:  # reported to the parent
                        outcome.append(type(exc).__name__ + ("/fork" if "fork" in str(exc) else ""))
                os.write(write, ",".join(outcome).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            answer = pipe.read().decode()
        os.waitpid(pid, 0)
        assert answer == "StoreError/fork,StoreError/fork"
    finally:
        cache.close()


class RefusingStore(RecordingStore):
    """Refuses records whose data holds "poison", naming them or not, as real stores do."""

    def __init__(self, path: Path, *, name_them: bool) -> None:
        super().__init__(path)
        self.name_them = name_them

    def save(self, records: Sequence[Record]) -> int:
        bad = [r.key for r in records if "poison" in r.data]
        if bad:
            raise StoreRejected("refused", keys=bad if self.name_them else None, store=self.name, op="save")
        return super().save(records)


@pytest.mark.parametrize("name_them", [True, False])
def test_a_refused_record_does_not_hold_back_the_queue(tmp_path: Path, name_them: bool) -> None:
    store = RefusingStore(tmp_path / "s.jsonl", name_them=name_them)
    with SessionCache(persistence=Persistence(store, BEHIND_SLOW)) as cache:
        sids = [new_id() for _ in range(40)]
        for i, sid in enumerate(sids):
            cache.set(sid, {"poison": True} if i in (3, 17) else {"i": i})
        assert cache.persistence is not None
        cache.persistence.flush()
        assert all((store.load(session_key(sid)) is None) == (i in (3, 17)) for i, sid in enumerate(sids))
        stats = cache.stats()["persistence"]
        assert stats["rejected"] == 2 and stats["queued"] == 0 and stats["saved"] == 38


def test_write_through_raises_a_refusal_without_queueing(tmp_path: Path) -> None:
    store = RefusingStore(tmp_path / "s.jsonl", name_them=True)
    with SessionCache(persistence=Persistence(store, PersistConfig(mode="write_through"))) as cache:
        with pytest.raises(StoreRejected):
            cache.set(new_id(), {"poison": 1})
        stats = cache.stats()["persistence"]
        assert stats["rejected"] == 1 and stats["queued"] == 0


def test_expired_stored_sessions_are_cached_negatively(store: RecordingStore, clock: FakeClock) -> None:
    with make_cache(store, clock, PersistConfig(mode="write_through"), idle_timeout=10, max_age=None) as cache:
        sid = new_id()
        cache.set(sid, {"a": 1})
        clock.advance(11)
        cache.prune()
        for _ in range(5):
            assert cache.get(sid) is None
        assert store.loads == 1


# -- clear -------------------------------------------------------------------------------

OUTAGE = PersistConfig(flush_interval=0.005, retry_min=0.01, retry_max=0.02)


@pytest.fixture
def persistence(store: RecordingStore, clock: FakeClock):
    p = Persistence(store, BEHIND_SLOW, clock=clock)
    yield p
    p.close()


def test_clear_drops_queued_live_records_it_covers_and_keeps_tombstones(
    store: RecordingStore, persistence: Persistence
) -> None:
    old, at, new = (make_test_record(k, version=v) for k, v in (("old", 100), ("at", 200), ("new", 300)))
    tomb = make_test_record("tomb", version=150, deleted=True)
    for record in (old, at, new, tomb):
        persistence.emit(record)
    persistence.clear(200)
    assert store.clears == [200]
    assert persistence.stats()["queued"] == 2
    assert persistence.read("old") is None and persistence.read("at") is None
    assert persistence.read("tomb") == tomb
    assert persistence.flush() == 2
    assert store.load("new") == new and store.load("old") is None and store.load("tomb") == tomb
    persistence.emit(make_test_record("late", version=150))
    assert persistence.stats()["queued"] == 0
    late_tomb = make_test_record("late", version=150, deleted=True)
    persistence.emit(late_tomb)
    assert persistence.stats()["queued"] == 1
    assert persistence.flush() == 1
    assert store.load("late") == late_tomb


def test_a_late_tombstone_below_the_clear_still_beats_a_stored_session_above_it(
    store: RecordingStore, persistence: Persistence
) -> None:
    """The destroy happened before the clear, yet after the write it beats: destroyed stays destroyed."""
    above = make_test_record("s", version=300)
    store.save([above])
    persistence.clear(200)
    tomb = make_test_record("s", version=150, deleted=True)
    persistence.emit(tomb)
    persistence.flush()
    assert store.load("s") == tomb
    persistence.emit(above)  # a late copy from another writer
    persistence.flush()
    assert store.load("s") == tomb and persistence.read("s") == tomb


def test_clear_reaches_the_store_at_once_and_once(store: RecordingStore, persistence: Persistence) -> None:
    store.save([make_test_record("old", version=100), make_test_record("new", version=300)])
    persistence.clear(200)
    assert store.load("old") is None and store.load("new") is not None
    persistence.clear(200)
    persistence.clear(150)
    persistence.clear(0)
    assert store.clears == [200]
    stats = persistence.stats()
    assert (stats["clears"], stats["clear_errors"], stats["cleared"], stats["clear_due"]) == (1, 0, 200, 0)


def test_clear_is_retried_after_an_outage_before_the_next_batch(
    store: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save([make_test_record("old", version=100)])
    with SessionCache(persistence=Persistence(store, OUTAGE)) as cache:
        assert cache.persistence is not None
        store.down = True
        cache.persistence.emit(make_test_record("new", version=300))
        cache.persistence.clear(200)  # never raises store trouble
        stats = cache.stats()["persistence"]
        assert stats["clear_errors"] >= 1 and stats["clear_due"] == 200 and stats["clears"] == 0
        assert "failing" in caplog.text
        wait_until(lambda: cache.stats()["persistence"]["clear_errors"] >= 3)  # the writer retries
        store.calls.clear()
        store.down = False
        wait_until(lambda: cache.stats()["persistence"]["queued"] == 0)
        stats = cache.stats()["persistence"]
        assert stats["clears"] == 1 and stats["clear_due"] == 0
        assert store.calls[:2] == ["clear", "save"]
        assert store.load("old") is None and store.load("new") is not None
        assert "is back" in caplog.text


def test_a_higher_clear_replaces_one_still_owed(store: RecordingStore, persistence: Persistence) -> None:
    store.clear_down = True
    persistence.clear(100)
    persistence.clear(300)
    persistence.clear(200)
    assert persistence.stats()["clear_due"] == 300
    store.clear_down = False
    persistence.flush()
    assert store.clears == [300]
    assert persistence.stats()["clear_due"] == 0


def test_reads_never_return_a_live_record_a_clear_covers(store: RecordingStore, persistence: Persistence) -> None:
    stored = make_test_record("stored", version=100)
    tomb = make_test_record("tomb", version=100, deleted=True)
    store.save([stored, tomb, make_test_record("kept", version=300)])
    store.clear_down = True  # the store still holds "stored"
    persistence.clear(200)
    assert store.load("stored") == stored
    assert persistence.read("stored") is None
    assert persistence.read("kept") is not None
    assert persistence.read("tomb") == tomb
    applied: list[Record] = []
    assert persistence.preload(applied.append, 10) == 2
    assert sorted(r.key for r in applied) == ["kept", "tomb"]
    store.clear_down = False


def test_a_live_record_in_flight_during_a_clear_is_not_read_back(
    store: RecordingStore, persistence: Persistence
) -> None:
    flying = make_test_record("flying", version=100)
    tomb = make_test_record("tomb", version=100, deleted=True)
    persistence.emit(flying)
    persistence.emit(tomb)
    store.gate = threading.Event()
    flusher = threading.Thread(target=persistence.flush)
    flusher.start()
    try:
        assert store.saving.wait(10)
        assert persistence.read("flying") == flying  # in flight, not cleared yet
        persistence.clear(200)
        assert persistence.read("flying") is None
        assert persistence.read("tomb") == tomb
    finally:
        store.gate.set()
        flusher.join(10)
    assert store.load("flying") is None  # the store's watermark refused the late live record
    assert store.load("tomb") == tomb  # and let the tombstone through


def test_close_writes_a_clear_still_owed(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store = RecordingStore(path)
    store.save([make_test_record("old", version=100)])
    p = Persistence(store, OUTAGE)
    store.clear_down = True
    p.clear(200)
    assert p.stats()["clear_due"] == 200
    store.clear_down = False
    p.close()
    assert store.clears == [200] and p.stats()["clear_due"] == 0
    reopened = JsonFileStore(path, save_interval=None)
    try:
        assert reopened.load("old") is None
        assert reopened.save([make_test_record("late", version=150)]) == 0
    finally:
        reopened.close()


def test_close_says_when_a_clear_could_not_be_written(
    store: RecordingStore, caplog: pytest.LogCaptureFixture
) -> None:
    p = Persistence(store, PersistConfig(close_timeout=0.05, retry_min=0.01, retry_max=0.01))
    store.clear_down = True
    p.clear(200)
    with caplog.at_level(logging.ERROR):
        p.close()
    assert "clear at watermark 200" in caplog.text
    p.clear(300)
    assert p.stats()["clear_errors"] >= 2
    assert "after the store" in caplog.text


def test_clear_refuses_a_bad_version(persistence: Persistence) -> None:
    for bad in (-1, True, 2.0, "1", 1 << 63):
        with pytest.raises(ConfigError):
            persistence.clear(bad)  # type: ignore[arg-type]


def test_a_store_without_clear_fails_at_start(tmp_path: Path) -> None:
    class OldStore:
        name = "old"

        def load(self, key: str) -> None: ...
        def load_all(self, now: float) -> Any: ...
        def save(self, records: Any) -> int: ...
        def delete(self, keys: Any) -> int: ...
        def purge(self, now: float) -> int: ...
        def close(self) -> None: ...

    with pytest.raises(ConfigError, match="missing: clear"):
        Persistence(OldStore())  # type: ignore[arg-type]


def test_cache_clear_ends_sessions_in_the_store_too(tmp_path: Path, clock: FakeClock) -> None:
    """``SessionCache.clear`` reaches the store: a cold process does not bring the sessions back."""
    path = tmp_path / "s.jsonl"
    sids = [new_id() for _ in range(3)]
    destroyed = new_id()
    with SessionCache(clock=clock, persistence=Persistence(JsonFileStore(path, save_interval=None, clock=clock))) as cache:
        for sid in sids:
            cache.set(sid, {"sid": sid})
        cache.set(destroyed, {"gone": True})
        cache.destroy(destroyed)
        assert cache.persistence is not None
        cache.persistence.flush()
        cache.clear()
        later = new_id()
        cache.set(later, {"later": True})
        assert cache.stats()["persistence"]["clears"] == 1
    with SessionCache(clock=clock, persistence=Persistence(JsonFileStore(path, save_interval=None, clock=clock))) as cold:
        assert all(cold.get(sid) is None for sid in sids)
        assert cold.get(later) == {"later": True}
        assert cold.persistence is not None
        tomb = cold.persistence.store.load(session_key(destroyed))  # the clear kept the destroy
        assert tomb is not None and tomb.deleted
        assert cold.get(destroyed) is None


# -- deltas --------------------------------------------------------------------------------


def test_a_queued_delta_is_read_merged_into_the_stored_record(store: RecordingStore, persistence: Persistence) -> None:
    """A delta alone is never the answer: what the store holds of the session comes with it."""
    stored = make_test_record("s", {"user": "ada", "cart": [1]}, version=100)
    store.save([stored])
    deltas = [make_test_delta("s", {"cart": [1, 2]}, version=200, origin=9),
              make_test_delta("s", {"coupon": "x"}, version=201, origin=3)]
    for delta in deltas:
        persistence.emit(delta)
    read = persistence.read("s")
    assert read is not None and not read.partial
    assert read.data == {"user": "ada", "cart": [1, 2], "coupon": "x"}
    assert read == merge_row(merge_row(stored, deltas[0]), deltas[1])
    assert store.loads == 1
    whole = make_test_record("w", {"only": "queued"}, version=300)
    persistence.emit(whole)
    # A whole record queued is still merged with the row: it is what one process held, not the session.
    assert persistence.read("w") == whole and store.loads == 2
    persistence.emit(make_test_delta("new", {"first": 1}, version=400))
    lone = persistence.read("new")
    assert lone is not None and lone.data == {"first": 1} and not lone.partial  # nothing stored: all there is
    persistence.flush()
    assert store.load("s") == read and store.load("new") == lone
