"""Acknowledged mode: a save returns only once the sidecar has the version in its store."""

from __future__ import annotations

import time

import pytest

from memsession import SessionCache, ZmqBus
from memsession.errors import ConfigError, StoreError, StoreUnavailable
from memsession.session import new_id
from persist.ack import AckBook, SidecarAckStore, durable
from persist.postgres import PostgresStore
from persist.writer import PersistConfig
from tests.sidecars import SidecarProcess

pytestmark = pytest.mark.timeout(120)


def test_durable_rule() -> None:
    assert not durable(None, 5, 1, 1.0)
    assert durable((5, 1, 1.0, False), 5, 1, 1.0)
    assert durable((6, 1, 0.0, False), 5, 1, 1.0)  # newer version
    assert durable((5, 2, 0.0, False), 5, 1, 1.0)  # same version, higher origin wins the tie
    assert not durable((5, 1, 0.5, False), 5, 1, 1.0)  # the touch is not stored yet
    assert not durable((4, 9, 9.0, False), 5, 1, 1.0)
    assert durable((1, 1, 0.0, True), 5, 1, 1.0)  # destroyed: nothing newer will ever be stored


def test_ack_book_answers_when_the_store_catches_up() -> None:
    book = AckBook(capacity=2)
    assert not book.ask(b"w1", 1, [("a", 5, 1, 1.0), ("b", 3, 1, 1.0)], deadline=10.0)
    assert book.record_stored([["a", 5, 1, 1.0, False]]) == []  # b still missing
    assert book.record_stored([["b", 2, 1, 1.0, False]]) == []  # older than wanted
    assert book.record_stored([["b", 3, 1, 1.0, False]]) == [(b"w1", 1)]
    assert len(book) == 0
    assert book.ask(b"w2", 2, [("a", 4, 1, 1.0)], deadline=10.0)  # already stored: answer at once
    assert book.record_stored([["a", 4, 1, 9.0, False]]) == []  # an older write arriving late changes nothing
    assert book.stored["a"] == (5, 1, 1.0, False)
    assert not book.ask(b"w3", 3, [("c", 1, 1, 1.0)], deadline=5.0)
    assert book.expire(4.0) == []
    assert book.expire(5.0) == [(b"w3", 3, ["c"])]
    book.record_stored([["d", 1, 1, 1.0, False], ["e", 1, 1, 1.0, False]])
    assert "a" not in book.stored and len(book.stored) == 2  # bounded: oldest keys forgotten
    assert book.counts == {"asked": 3, "acked": 2, "timed_out": 1}


def test_store_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        SidecarAckStore()
    with pytest.raises(ConfigError):
        SidecarAckStore(requests="ipc:///tmp/x", ack="ipc:///tmp/y", timeout=0)
    store = SidecarAckStore(requests="ipc:///tmp/x", ack="ipc:///tmp/y", timeout=0.1)
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
        cache = SessionCache(bus=ZmqBus(runtime_dir=sidecar.runtime_dir, heartbeat=0.2, silence=0.7),
                             store=ack_store, persistence=PersistConfig(mode="write_through", close_timeout=0.5),
                             touch_interval=3600)
        pg = PostgresStore(postgres_url)
        try:
            written = {}
            for i in range(20):
                sid = new_id()
                record = cache.set(sid, {"i": i})
                written[sid] = record.version
                stored = pg.load(sid)  # no waiting: set() returned, so it is there
                assert stored is not None and stored.version == record.version
            gone = next(iter(written))
            cache.destroy(gone)
            assert pg.load(gone).deleted  # type: ignore[union-attr]

            sidecar.kill()  # SIGKILL: no flush; acknowledged writes were already stored
            for sid, version in written.items():
                stored = pg.load(sid)
                assert stored is not None and (stored.deleted or stored.version == version)

            # Without a sidecar, an acknowledged write fails loudly (the value stays in memory).
            sid = new_id()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                cache.set(sid, {"late": True})
            assert time.monotonic() - started < 10
            assert cache.get(sid) == {"late": True}
            with pytest.raises(StoreError):
                ack_store.delete([sid])
        finally:
            pg.close()
            cache.close()
