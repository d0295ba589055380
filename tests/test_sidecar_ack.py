"""Acknowledged mode: a save returns only once the sidecar has the version in its store."""

from __future__ import annotations

import time

import msgpack
import pytest

from memsession import SessionCache, ZmqBus
from memsession.errors import ConfigError, StoreError, StoreUnavailable
from memsession.service.ack import SidecarAckStore
from memsession.service.ack_server import AckBook, parse_request
from memsession.session import Record, new_id, session_key
from persist import Persistence
from persist.persistence import PersistConfig
from persist.postgres import PostgresStore
from persist.queue import WriteQueue
from tests.sidecars import SidecarProcess

pytestmark = pytest.mark.timeout(120)


def rec(key: str, version: int, origin: int = 1, deleted: bool = False) -> Record:
    return Record(key, {}, version, origin, 1.0, 1.0, 1e12, deleted)


def test_settled_rule() -> None:
    q = WriteQueue()
    a = rec("a", 5)
    assert q.settled("a", 5, 1)  # nothing of the key waits: the store has it, or something newer
    q.add(a)
    assert q.settled("a", 5, 1) is False
    batch = q.take(10)
    assert q.settled("a", 5, 1) is False  # in flight is not stored yet
    q.done(batch)
    assert q.settled("a", 5, 1) is True
    q.add(rec("b", 7))
    q.done(q.take(10), refused=["b"])
    assert q.settled("b", 7, 1) is None  # refused: the waiter hears so at once
    q.add(rec("c", 1))
    assert q.settled("a", 5, 1) is True
    q.rewrite_due = True  # an overflow dropped live records: nothing is settled until the rewrite
    assert q.settled("a", 5, 1) is False


def test_ack_book_answers_when_the_queue_settles() -> None:
    state: dict[str, bool | None] = {"a": False, "b": False}

    def settled(key: str, version: int, origin: int) -> bool | None:
        return state.get(key, True)

    book = AckBook()
    assert book.ask(b"w1", 1, [("a", 5, 1, 1.0), ("b", 3, 1, 1.0)], 10.0, settled) is None
    state["a"] = True
    assert book.recheck(settled) == []  # b still missing
    state["b"] = True
    assert book.recheck(settled) == [(b"w1", 1, [], [])]
    assert len(book) == 0
    assert book.ask(b"w2", 2, [("x", 4, 1, 1.0)], 10.0, settled) == (b"w2", 2, [], [])  # settled already
    state["c"] = None
    assert book.ask(b"w3", 3, [("c", 1, 1, 1.0)], 10.0, settled) == (b"w3", 3, [], ["c"])  # refused
    state["d"] = False
    assert book.ask(b"w4", 4, [("d", 1, 1, 1.0)], 5.0, settled) is None
    assert book.expire(4.0) == []
    assert book.expire(5.0) == [(b"w4", 4, ["d"], [])]
    assert book.counts == {"asked": 4, "acked": 2, "refused": 1, "timed_out": 1, "malformed": 0}


@pytest.mark.parametrize("payload", [
    b"\xc1", msgpack.packb([1, [["k", 1, 1, 1.0]], "x"]), msgpack.packb([1, [["k", 1]], 10]),
    msgpack.packb(["1", [], 10]), msgpack.packb([1, [], -5]), msgpack.packb([1, [], 10**9]), msgpack.packb(7),
])
def test_malformed_ack_requests_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError, match="malformed ack request"):
        parse_request(payload)


def test_store_options_are_checked(tmp_path) -> None:
    with pytest.raises(ConfigError):
        SidecarAckStore()
    with pytest.raises(ConfigError):
        SidecarAckStore(requests=f"ipc://{tmp_path}/x", ack=f"ipc://{tmp_path}/y", timeout=0)
    with pytest.raises(ConfigError, match="another user|group or others"):  # ipc only in a private directory
        SidecarAckStore(requests="ipc:///tmp/x", ack="ipc:///tmp/y", timeout=0.1)
    store = SidecarAckStore(requests=f"ipc://{tmp_path}/x", ack=f"ipc://{tmp_path}/y", timeout=0.1)
    try:
        for bad in (-1, 2**63, "7"):
            with pytest.raises(ConfigError):  # refused here, before anything is sent
                store.clear(bad)  # type: ignore[arg-type]
    finally:
        store.close()


@pytest.mark.zmq
def test_acknowledged_writes_are_in_postgres_when_set_returns(postgres_url: str) -> None:
    # A 30 s flush interval: without the ack, nothing would reach the database for 30 s.
    sidecar = SidecarProcess(postgres_url, "--flush-interval", "30", "--heartbeat", "0.2")
    with sidecar:
        ack_store = SidecarAckStore(runtime_dir=sidecar.runtime_dir, timeout=1.0)
        cache = SessionCache(bus=ZmqBus(runtime_dir=sidecar.runtime_dir, heartbeat=0.2, silence=0.7), persistence=Persistence(ack_store, PersistConfig(mode="write_through", close_timeout=0.5)),
                             touch_interval=3600)
        pg = PostgresStore(postgres_url)
        try:
            written = {}
            for i in range(20):
                sid = new_id()
                record = cache.set(sid, {"i": i})
                written[sid] = record.version
                stored = pg.load(session_key(sid))  # no waiting: set() returned, so it is there
                assert stored is not None and stored.version == record.version
            gone = next(iter(written))
            cache.destroy(gone)
            assert pg.load(session_key(gone)).deleted  # type: ignore[union-attr]

            sidecar.kill()  # SIGKILL: no flush; acknowledged writes were already stored
            for sid, version in written.items():
                stored = pg.load(session_key(sid))
                assert stored is not None and (stored.deleted or stored.version == version)

            # Without a sidecar, an acknowledged write fails loudly (the value stays in memory).
            sid = new_id()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                cache.set(sid, {"late": True})
            assert time.monotonic() - started < 10
            assert cache.get(sid) == {"late": True}
            with pytest.raises(StoreError):
                ack_store.delete([session_key(sid)])
        finally:
            pg.close()
            cache.close()


@pytest.mark.zmq
def test_a_sidecar_never_confirms_a_record_it_did_not_get(tmp_path) -> None:
    # After a restart the PUSH may have gone to the sidecar before this one: its queue is
    # empty, yet it must not confirm what neither its store nor its replica holds.
    import zmq

    from memsession.service.ack import default_ack_endpoint

    with SidecarProcess(str(tmp_path / "s.json")) as sidecar:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        try:
            sock.connect(default_ack_endpoint(sidecar.runtime_dir))
            sock.send(msgpack.packb([1, [[new_id(), 5, 1, 1.0]], 300]))
            assert sock.poll(10_000)
            rid, missing, refused = msgpack.unpackb(sock.recv(), raw=False)
            assert rid == 1 and len(missing) == 1 and refused == []
        finally:
            sock.close()
            ctx.term()
