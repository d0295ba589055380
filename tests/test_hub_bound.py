"""The hub's bounded replica: at most ``maxsize`` live sessions (segmented LRU), evicted ones read back.

The pure part (``HubState``, ``StoreReads``) first, then a real ``memsession
sidecar`` process on PostgreSQL with a small ``--maxsize``: real ZeroMQ
clients and gunicorn workers that never saw an evicted session get it
through the hub.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from memsession import SessionCache, ZmqBus, wire
from memsession.errors import ConfigError, StoreUnavailable
from memsession.hub import HubConfig, HubState, query_snapshot
from memsession.hub.reads import StoreReads
from memsession.service.cli import build_parser
from memsession.service.commands import format_status
from memsession.session import Record, new_id, session_key
from memsession.testing import FakeClock
from tests.sidecars import Gunicorn, SidecarProcess, client, wait_until

pytestmark = pytest.mark.timeout(180)

NOW = 1_700_000_000.0
FAST_BUS = {"heartbeat": 0.2, "silence": 0.7, "request_timeout": 3.0}


def rec(key: str, version: int = 10, *, accessed: float = NOW, deleted: bool = False, origin: int = 1) -> Record:
    return Record(key, {} if deleted else {"v": version}, version, origin, NOW, accessed, NOW + 100, deleted)


def live_keys(state: HubState) -> list[str]:
    return sorted(k for k, r in state.replica.items() if not r.deleted)


class Reads:
    """What a ``HubState`` asked its store to read (``read_back``), answered when the test says."""

    def __init__(self, accept: bool = True) -> None:
        self.asked: list[tuple[bytes, int, str]] = []
        self.accept = accept

    def __call__(self, sender: bytes, rid: int, key: str) -> bool:
        if self.accept:
            self.asked.append((sender, rid, key))
        return self.accept


def get(state: HubState, key: str, rid: int = 1, sender: bytes = b"worker") -> list[list[bytes]]:
    replies, _ = state.on_request(wire.encode_request(wire.GET, rid, key), sender)
    return replies


def record_in(reply: list[bytes]) -> Record | None:
    decoded = wire.decode_reply(reply)
    assert decoded.op == wire.RECORD
    return decoded.body[0]  # type: ignore[no-any-return]


# -- the bound -------------------------------------------------------------------------


def test_maxsize_is_checked() -> None:
    assert HubConfig().maxsize == 1_000_000
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError):
            HubConfig(maxsize=bad)  # type: ignore[arg-type]
    for command in ("hub", "sidecar"):
        extra = ["--store", "x.json"] if command == "sidecar" else []
        assert build_parser().parse_args([command, *extra, "--maxsize", "7"]).maxsize == 7


def test_the_replica_holds_at_most_maxsize_evicting_sessions_used_once_first() -> None:
    state = HubState(clock=FakeClock(wall=NOW), maxsize=3)
    keys = [new_id() for _ in range(5)]
    for key in keys[:3]:
        assert state.merge(rec(key))
    get(state, keys[0])  # a read is a second access: keys[0] is protected, keys[1] goes next
    assert state.merge(rec(keys[3]))
    assert live_keys(state) == sorted([keys[0], keys[2], keys[3]])
    assert state.merge(rec(keys[2], version=11))  # a write is one too: keys[3], used once, goes next
    assert state.merge(rec(keys[4]))
    assert live_keys(state) == sorted([keys[0], keys[2], keys[4]])
    stats = state.stats()
    assert stats["sessions"] == 3 and stats["evicted"] == 2 and stats["maxsize"] == 3
    assert not state.holds_all
    # Snapshots carry what is held, never more than maxsize live records.
    (*chunks, end) = state.snapshot(1)
    assert wire.decode_reply(end).body[3] == 3


def test_a_flood_of_new_sessions_keeps_the_sessions_in_use() -> None:
    state = HubState(clock=FakeClock(wall=NOW), maxsize=200)
    user = new_id()
    assert state.merge(rec(user))
    get(state, user)  # a worker read it through the hub
    for _ in range(1000):
        assert state.merge(rec(new_id()))
    assert not state.replica[user].deleted and len(live_keys(state)) == 200
    assert state.stats()["evicted"] == 801


def test_tombstones_are_not_evicted_and_keep_a_destroyed_session_dead() -> None:
    state = HubState(clock=FakeClock(wall=NOW), maxsize=2)
    doomed, others = new_id(), [new_id() for _ in range(4)]
    assert state.merge(rec(doomed, version=10))
    assert state.merge(rec(doomed, version=11, deleted=True))
    for key in others:
        assert state.merge(rec(key))
    assert state.replica[doomed].deleted  # outside the bound: it stays until it lapses
    assert len(live_keys(state)) == 2 and state.stats()["tombstones"] == 1
    # A worker that missed the destroy pushes its older live copy: the tombstone still beats it.
    batch = [wire.record_to_list(rec(doomed, version=10))]
    _, relays = state.on_request(wire.encode_request(wire.PUSH, 2, batch, 0))
    assert relays == [] and state.replica[doomed].deleted


def test_a_clear_still_drops_what_it_covers_and_keeps_the_count_right() -> None:
    state = HubState(clock=FakeClock(wall=NOW), maxsize=2)
    old, new = new_id(), new_id()
    state.merge(rec(old, version=10))
    state.merge(rec(new, version=30))
    assert state.clear(20)
    assert live_keys(state) == [new]
    state.merge(rec(new_id(), version=31))
    assert len(live_keys(state)) == 2 and state.stats()["evicted"] == 0  # the cleared one left room


def test_warm_start_keeps_the_most_recently_accessed_and_every_tombstone() -> None:
    state = HubState(clock=FakeClock(wall=NOW), maxsize=3)
    live = [rec(new_id(), accessed=NOW - 50 + i) for i in range(8)]
    tombs = [rec(new_id(), deleted=True) for _ in range(3)]
    order = [live[5], tombs[0], live[1], live[7], live[0], tombs[1], live[6], live[2], live[4], tombs[2], live[3]]
    assert state.warm(order) == 11
    assert live_keys(state) == sorted(r.key for r in live[5:])
    assert all(state.replica[t.key].deleted for t in tombs)
    assert state.stats()["evicted"] == 5 and not state.holds_all
    # The access order starts as the order of ``accessed``: live[5] goes first.
    state.merge(rec(new_id()))
    assert live[5].key not in state.replica and live[6].key in state.replica


def test_a_miss_is_read_back_only_once_something_was_evicted() -> None:
    reads = Reads()
    state = HubState(clock=FakeClock(wall=NOW), maxsize=2, read_back=reads)
    a, b, c = new_id(), new_id(), new_id()
    state.merge(rec(a))
    assert record_in(get(state, b)[0]) is None and reads.asked == []  # holds everything: a miss is a miss
    state.merge(rec(b))
    state.merge(rec(c))  # evicts a
    assert get(state, a, rid=7) == []  # no reply yet: the store is asked
    assert reads.asked == [(b"worker", 7, a)]
    state.read_back_done(a, rec(a), True)
    reply = record_in(state.answer_get(7, a))
    assert reply is not None and reply.key == a
    assert state.stats()["read_backs"] == 1
    assert a in state.replica and b not in state.replica  # read back is an access; b made room
    # What came from the store is not queued for the store again.
    changes: list[Record] = []
    state.on_change = changes.append
    state.read_back_done(b, rec(b), True)
    assert changes == []


def test_a_full_read_back_queue_leaves_the_get_unanswered() -> None:
    reads = Reads(accept=False)
    state = HubState(clock=FakeClock(wall=NOW), maxsize=1, read_back=reads)
    a, b = new_id(), new_id()
    state.merge(rec(a))
    state.merge(rec(b))
    assert get(state, a) == []  # "no answer" rather than a wrong "no such session"
    assert state.stats()["read_back_refused"] == 1


def test_a_touch_of_an_evicted_session_is_applied_to_the_copy_read_back() -> None:
    reads = Reads()
    changes: list[Record] = []
    state = HubState(clock=FakeClock(wall=NOW), maxsize=1, read_back=reads, on_change=changes.append)
    a, b = new_id(), new_id()
    state.merge(rec(a, version=10))
    state.merge(rec(b))  # evicts a
    changes.clear()
    body = (a, 10, 1, NOW + 30, NOW + 130)
    state._apply(wire.TOUCH, body)
    assert [k for _, _, k in reads.asked] == [a] and changes == []
    state.read_back_done(a, rec(a, version=10), True)
    assert state.replica[a].accessed == NOW + 30 and state.replica[a].expires == NOW + 130
    assert [r.accessed for r in changes] == [NOW + 30]  # the slid expiry goes to the store


# -- the reader threads ------------------------------------------------------------------


def test_store_reads_run_off_the_calling_thread_join_and_are_bounded() -> None:
    release = threading.Event()
    loaded: list[str] = []

    def load(key: str) -> Record | None:
        release.wait(10)
        loaded.append(key)
        if key == "broken":
            raise StoreUnavailable("down", store="test", op="load")
        return rec(key) if key != "absent" else None

    reads = StoreReads(load, limit=4, threads=1).start()
    try:
        assert reads.submit(b"w1", 1, "k") and reads.submit(b"w2", 2, "k")  # one read for both
        assert reads.submit(b"w3", 3, "absent") and reads.submit(b"w4", 4, "broken")
        assert not reads.submit(b"w5", 5, "more")  # four requests wait: full
        release.set()
        results: dict[str, tuple[Record | None, bool, list[tuple[bytes, int]]]] = {}

        def collect() -> bool:
            results.update({r.key: (r.record, r.ok, r.waiters) for r in reads.take()})
            return len(results) == 3

        wait_until(collect, 10, "the three reads")
        assert results["k"][1] and results["k"][2] == [(b"w1", 1), (b"w2", 2)]
        assert results["absent"] == (None, True, [(b"w3", 3)])
        assert results["broken"] == (None, False, [(b"w4", 4)])
        assert sorted(loaded) == ["absent", "broken", "k"]
        stats = reads.stats()
        assert stats["full"] == 1 and stats["joined"] == 1 and stats["errors"] == 1 and stats["waiting"] == 0
        assert reads.submit(b"w6", 6, "again")  # room again
    finally:
        release.set()
        reads.stop()


# -- a real sidecar on PostgreSQL ----------------------------------------------------------

MAXSIZE = 10


@pytest.fixture
def sidecar(postgres_url: str) -> Iterator[SidecarProcess]:
    with SidecarProcess(postgres_url, "--maxsize", str(MAXSIZE), "--flush-interval", "0.05",
                        "--heartbeat", "0.2") as process:
        yield process


def _cache(runtime_dir: str, **options: object) -> SessionCache:
    return SessionCache(bus=ZmqBus(runtime_dir=runtime_dir, **FAST_BUS), **options)  # type: ignore[arg-type]


def _stored(postgres_url: str, sids: list[str]) -> dict[str, Record]:
    """The rows of the sessions ``sids`` (stored by ``session_key``), by id."""
    from persist.postgres import PostgresStore

    store = PostgresStore(postgres_url)
    try:
        return {sid: r for sid in sids if (r := store.load(session_key(sid))) is not None}
    finally:
        store.close()


def test_a_fresh_worker_gets_an_evicted_session_read_back_from_the_store(
        sidecar: SidecarProcess, postgres_url: str) -> None:
    sids = [new_id() for _ in range(3 * MAXSIZE)]
    with _cache(sidecar.runtime_dir, touch_interval=3600) as writer:
        assert writer.bus.wait_joined(10)  # type: ignore[union-attr]
        for i, sid in enumerate(sids):
            writer.set(sid, {"i": i})
        versions = {sid: writer.record(sid).version for sid in sids}  # type: ignore[union-attr]
        stats = wait_until(lambda: (s := sidecar.stats())["applied"] >= len(sids) and s, 10,
                           "the sidecar to apply every write")
        assert stats["sessions"] == MAXSIZE and stats["evicted"] == len(sids) - MAXSIZE
        assert len(query_snapshot(sidecar.requests)) == MAXSIZE
        wait_until(lambda: len(_stored(postgres_url, sids)) == len(sids), 10, "every write to reach the store")

        # A process that never saw these sessions: its snapshot has the last MAXSIZE only.
        with _cache(sidecar.runtime_dir) as fresh:
            assert fresh.bus.wait_joined(10)  # type: ignore[union-attr]
            assert fresh.record(sids[0]) is None
            for i, sid in enumerate(sids[:MAXSIZE]):
                got = fresh.wait_for(sid, versions[sid], 0.05)
                assert got is not None and got.data == {"i": i}
        stats = sidecar.stats()
        assert stats["read_backs"] >= MAXSIZE and stats["read_back"]["found"] >= MAXSIZE
        assert stats["sessions"] == MAXSIZE  # what was read back pushed others out
        assert "maxsize 10" in format_status(stats, sidecar.requests)


def test_a_touch_of_an_evicted_session_reaches_the_store(sidecar: SidecarProcess, postgres_url: str) -> None:
    sids = [new_id() for _ in range(2 * MAXSIZE)]
    with _cache(sidecar.runtime_dir, touch_interval=0) as worker:
        assert worker.bus.wait_joined(10)  # type: ignore[union-attr]
        for sid in sids:
            worker.set(sid, {"n": 1})
        wait_until(lambda: len(_stored(postgres_url, sids)) == len(sids), 10, "every write to reach the store")
        first = _stored(postgres_url, sids[:1])[sids[0]]
        assert sidecar.stats()["sessions"] == MAXSIZE  # sids[0] was evicted
        assert worker.get(sids[0]) == {"n": 1}  # a touch on the bus, for a session the hub no longer holds
        wait_until(lambda: _stored(postgres_url, sids[:1])[sids[0]].accessed > first.accessed, 10,
                   "the touch to reach the store")


def test_a_warm_start_holds_the_most_recent_and_reads_back_the_rest(postgres_url: str) -> None:
    sids = [new_id() for _ in range(3 * MAXSIZE)]
    with SidecarProcess(postgres_url, "--flush-interval", "0.05") as unbounded:  # holds them all
        with _cache(unbounded.runtime_dir, touch_interval=3600) as writer:
            assert writer.bus.wait_joined(10)  # type: ignore[union-attr]
            for i, sid in enumerate(sids):
                writer.set(sid, {"i": i})
            versions = {sid: writer.record(sid).version for sid in sids}  # type: ignore[union-attr]
            wait_until(lambda: len(_stored(postgres_url, sids)) == len(sids), 10, "every write to reach the store")
    with SidecarProcess(postgres_url, "--maxsize", str(MAXSIZE)) as bounded:
        stats = bounded.stats()
        assert stats["persist"]["warm_loaded"] == len(sids)
        assert stats["sessions"] == MAXSIZE and stats["evicted"] == len(sids) - MAXSIZE
        held = sorted(r.key for r in query_snapshot(bounded.requests))
        assert held == sorted(session_key(sid) for sid in sids[-MAXSIZE:])
        with _cache(bounded.runtime_dir) as fresh:
            assert fresh.bus.wait_joined(10)  # type: ignore[union-attr]
            got = fresh.wait_for(sids[0], versions[sids[0]], 0.05)
            assert got is not None and got.data == {"i": 0}


def test_gunicorn_workers_started_after_the_eviction_still_serve_every_session(
        sidecar: SidecarProcess) -> None:
    env = {"MEMSESSION_RUNTIME_DIR": sidecar.runtime_dir, "WORKERS": "2"}
    users = [f"user{i}" for i in range(2 * MAXSIZE)]
    cookies = {}
    with Gunicorn("examples/sidecar/gunicorn.external.conf.py", "examples.sidecar.app:app", env=env) as server:
        for user in users:
            with client(server.url) as c:
                response = c.post("/login", params={"user": user})
                assert response.status_code == 200
                cookies[user] = response.cookies["session"]
    wait_until(lambda: sidecar.stats()["evicted"] >= len(users) - MAXSIZE, 10, "the sidecar to evict")
    assert sidecar.stats()["sessions"] <= MAXSIZE
    # New workers: they never saw the first logins, and the hub no longer holds them.
    with Gunicorn("examples/sidecar/gunicorn.external.conf.py", "examples.sidecar.app:app", env=env) as server:
        for user in users:
            with client(server.url, [("session", cookies[user])]) as c:
                response = c.get("/me")
                assert response.status_code == 200, response.text
                assert response.json()["session"] == {"user": user}
    assert sidecar.stats()["read_backs"] >= len(users) - MAXSIZE
