"""The sidecar: a hub that loads, writes behind and prunes a store, with real sockets and stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from memsession import SessionCache, ZmqBus
from memsession.errors import ConfigError, StoreUnavailable
from memsession.hub import HubConfig
from memsession.service.http import parse_http
from memsession.service.metrics import prometheus_text
from memsession.service.sidecar import Sidecar, SidecarConfig
from memsession.session import Record, new_id, session_key
from persist.jsonfile import JsonFileStore, read_snapshot
from persist.url import file_path, open_store, redact, store_kind
from tests.sidecars import SidecarProcess, http_port, wait_until

pytestmark = pytest.mark.timeout(120)

FAST_BUS = {"heartbeat": 0.2, "silence": 0.7, "request_timeout": 3.0}


# -- pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [("file:///tmp/s.json", "file"), ("sessions.json", "file"), ("file:rel.json", "file"),
     ("postgresql://u@h/db", "postgres"), ("postgres://h/db", "postgres"),
     ("couchdb://h:5984/db", "couchdb"), ("https://h/db", "couchdb")],
)
def test_store_kind(url: str, kind: str) -> None:
    assert store_kind(url) == kind


def test_store_url_errors_and_redaction() -> None:
    with pytest.raises(ConfigError):
        store_kind("redis://localhost")
    with pytest.raises(ConfigError):
        store_kind("")
    with pytest.raises(ConfigError):
        file_path("file://otherhost/x.json")
    assert file_path("file:///a/b.json") == "/a/b.json"
    assert redact("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert "s3cret" not in redact("https://admin:s3cret@couch/db")
    assert redact("postgresql://db/x") == "postgresql://db/x"


def test_a_store_in_a_missing_folder_is_refused_saying_how_to_fix_it(tmp_path: Path) -> None:
    from persist.url import check_store

    missing = tmp_path / "missing"
    for url in (f"file://{missing}/s.json", str(missing / "s.json")):
        with pytest.raises(ConfigError, match=f"folder {missing} does not exist; create it") as refused:
            check_store(url)
        assert refused.value.option == "store"
    check_store(f"file://{tmp_path}/s.json")  # an existing folder, a file not made yet: fine
    check_store("postgresql://u@h/db")  # a server is checked when the store connects
    with pytest.raises(ConfigError, match="folder .* does not exist; create it"):
        JsonFileStore(missing / "s.json")  # the store says the same


def test_the_sidecar_command_refuses_a_store_in_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    runtime_dir = tmp_path / "rt"
    store = f"file://{tmp_path}/nonexistent/dir/sessions.json"
    done = subprocess.run(
        [sys.executable, "-m", "memsession", "sidecar", "--store", store, "--runtime-dir", str(runtime_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"memsession sidecar: store={store!r}: the folder {tmp_path}/nonexistent/dir does not exist; "
        "create it or choose a store in an existing folder"
    ]
    assert not runtime_dir.exists()  # checked before anything was made


def test_open_store_file(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/s.json", save_interval=None)
    try:
        assert isinstance(store, JsonFileStore)
        assert store.path == f"{tmp_path}/s.json"
    finally:
        store.close()


def test_config_is_checked(tmp_path: Path) -> None:
    for bad in ({"flush_interval": 0}, {"batch_size": 0}, {"queue_limit": True}, {"http": "nope"},
                {"retry_min": 2.0, "retry_max": 1.0}, {"remove_runtime_dir": True}):
        with pytest.raises(ConfigError):
            SidecarConfig(**bad)  # type: ignore[arg-type]
    assert SidecarConfig(parent_pid=1, remove_runtime_dir=True).remove_runtime_dir
    store = JsonFileStore(tmp_path / "s.json", save_interval=None)
    try:
        with pytest.raises(ConfigError, match="runtime_dir"):  # never the shared default dir
            Sidecar(store, HubConfig(), SidecarConfig(parent_pid=1, remove_runtime_dir=True))
    finally:
        store.close()
    assert parse_http(":9108") == ("127.0.0.1", 9108)


def test_the_writer_queues_what_the_replica_applies(tmp_path: Path) -> None:
    sidecar = Sidecar(JsonFileStore(tmp_path / "s.jsonl", save_interval=None), HubConfig(runtime_dir=str(tmp_path)))
    try:
        state = sidecar.state
        wall = state.clock.wall()
        a1 = Record("a", {"n": 1}, 10, 1, wall, wall, wall + 60)
        a2 = Record("a", {"n": 2}, 11, 1, wall, wall, wall + 60)
        assert state.merge(a2)
        assert not state.merge(a1)  # older: the replica and the queue ignore it
        assert sidecar.writer.get("a") == a2
        assert state.warm([Record("b", {}, 5, 1, wall, wall, wall + 60)]) == 1
        assert "b" in state.replica and sidecar.writer.get("b") is None  # loaded from the store: nothing to write
        assert state.clear(12)
        assert sidecar.writer.queue.clear_due == 12 and sidecar.writer.get("a") is None
        stats = sidecar.stats()
        assert stats["role"] == "sidecar" and stats["persist"]["depth"] == 0
    finally:
        sidecar.writer.close()
        sidecar.store.close()


def test_a_read_back_merges_queued_deltas_into_the_stored_session(tmp_path: Path) -> None:
    """A session the bounded replica no longer holds: queue and store together, never a delta alone."""
    store = JsonFileStore(tmp_path / "s.jsonl", save_interval=None)
    sidecar = Sidecar(store, HubConfig(runtime_dir=str(tmp_path)))
    try:
        wall = sidecar.state.clock.wall()
        store.save([Record("a", {"user": "ada"}, 10, 1, wall, wall, wall + 60)])
        sidecar.writer.add(Record("a", {"cart": [1]}, 11, 2, wall, wall, wall + 60, partial=True))
        sidecar.writer.add(Record("b", {"lone": 1}, 12, 2, wall, wall, wall + 60, partial=True))
        a = sidecar._read_back("a")
        assert a is not None and a.data == {"user": "ada", "cart": [1]} and not a.partial
        assert a.seen == {1: 10, 2: 11}
        b = sidecar._read_back("b")
        assert b is not None and b.data == {"lone": 1} and not b.partial  # nothing stored: all there is
        assert sidecar._read_back("c") is None
    finally:
        sidecar.writer.close()
        store.close()


def test_prometheus_text() -> None:
    text = prometheus_text({"sessions": 3, "epoch": 7, "role": "sidecar", "store": 'odd"name', "received": 2,
                            "dropped": {"malformed": 2, "new reason": 1}, "lag_ms_p50": None, "lag_ms_sum": 30.0,
                            "persist": {"depth": 4, "failing": True, "last_error": "x", "last_flush_at": None,
                                        "unwritten_since": 1_700_000_000.25}})
    lines = set(text.splitlines())
    assert "# TYPE memsession_sessions gauge" in lines and "memsession_sessions 3" in lines
    assert 'memsession_dropped_total{reason="malformed"} 2' in lines
    assert 'memsession_dropped_total{reason="new reason"} 1' in lines
    assert 'memsession_dropped_total{reason="seq jump"} 0' in lines  # every known reason from the start
    assert "memsession_persist_depth 4" in lines and "memsession_persist_failing 1" in lines
    assert "memsession_persist_last_flush_timestamp_seconds 0" in lines  # never
    assert "memsession_persist_oldest_unwritten_timestamp_seconds 1700000000.25" in lines
    assert 'memsession_info{epoch="7",role="sidecar",store="odd\\"name"} 1' in lines
    assert "memsession_replication_lag_seconds_sum 0.03" in lines
    assert "memsession_replication_lag_seconds_count 2" in lines
    samples = [line for line in lines if not line.startswith("#")]
    assert not any("quantile" in line or "last_error" in line for line in samples)  # no lag samples yet
    assert "memsession_ack_asked_total 0" in lines  # a component that does not run reads as zero


# -- a sidecar in this process, real sockets, JSON file store ------------------------------


@pytest.fixture
def runtime_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ms-sc-") as d:
        yield d


def _cache(runtime_dir: str) -> SessionCache:
    return SessionCache(bus=ZmqBus(runtime_dir=runtime_dir, **FAST_BUS), touch_interval=3600)


def test_writes_behind_flushes_on_stop_and_warm_starts(tmp_path: Path, runtime_dir: str) -> None:
    path = tmp_path / "sessions.json"
    hub = HubConfig(runtime_dir=runtime_dir, heartbeat=0.2)
    store = JsonFileStore(path, save_interval=None)
    sids = [new_id() for _ in range(50)]
    with Sidecar(store, hub, SidecarConfig(flush_interval=0.02)) as sidecar, _cache(runtime_dir) as cache:
        for i, sid in enumerate(sids):
            cache.set(sid, {"i": i})
        cache.destroy(sids[0])
        keys = [session_key(sid) for sid in sids]  # what the store holds the sessions by
        wait_until(lambda: all(store.load(k) is not None for k in keys), 10, "writes to reach the store")
        wait_until(lambda: store.load(keys[0]).deleted, 10, "the tombstone to reach the store")  # type: ignore[union-attr]
        stats = sidecar.writer.stats()
        assert stats["saved"] >= len(sids)
        assert stats["depth"] == 0
    # Stopped: the file holds everything (the store was closed by the sidecar, which snapshots).
    saved = {r.key: r for r in read_snapshot(str(path), time.time())}
    assert saved[keys[0]].deleted
    assert all(saved[k].data == {"i": i} for i, k in enumerate(keys) if i)

    # A new sidecar starts warm: a worker that joins gets every session in its snapshot.
    with Sidecar(JsonFileStore(path, save_interval=None), hub, SidecarConfig()) as sidecar:
        assert sidecar.warm_loaded == len(sids)
        with _cache(runtime_dir) as cache:
            assert cache.bus.wait_joined(5)  # type: ignore[union-attr]
            assert cache.get(sids[1]) == {"i": 1}
            assert cache.get(sids[0]) is None
            assert len(cache) == len(sids) - 1


def test_flush_on_stop_writes_what_waited(tmp_path: Path, runtime_dir: str) -> None:
    path = tmp_path / "sessions.json"
    store = JsonFileStore(path, save_interval=None)
    sidecar = Sidecar(store, HubConfig(runtime_dir=runtime_dir), SidecarConfig(flush_interval=60.0,
                                                                               batch_size=10_000))
    sidecar.start()
    try:
        with _cache(runtime_dir) as cache:
            sid = new_id()
            cache.set(sid, {"late": True})
            key = session_key(sid)
            wait_until(lambda: sidecar.state.replica.get(key) is not None, 5, "the hub to apply the write")
            assert store.load(key) is None  # the flush interval has not passed
    finally:
        sidecar.stop()
    assert sidecar.writer.counts["unwritten_at_exit"] == 0
    assert [r.data for r in read_snapshot(str(path), time.time())] == [{"late": True}]


class ClearRefusingStore(JsonFileStore):
    """A JSON file store whose clear() fails, as a database that is down would."""

    def clear(self, version: int) -> int:
        raise StoreUnavailable("switched off", store=self.name, op="clear")


def test_stopping_with_a_clear_the_store_did_not_take_says_so(
    tmp_path: Path, runtime_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ClearRefusingStore(tmp_path / "s.json", save_interval=None)
    sidecar = Sidecar(store, HubConfig(runtime_dir=runtime_dir),
                      SidecarConfig(flush_interval=0.02, close_timeout=0.3, retry_max=0.1))
    sidecar.start()
    try:
        with _cache(runtime_dir) as cache:
            cache.set(new_id(), {"a": 1})
            cache.clear()
            wait_until(lambda: sidecar.writer.counts["clear_errors"] > 0, 10,
                       "the sidecar to try the clear")
    finally:
        with caplog.at_level("INFO", logger="memsession.sidecar"):
            sidecar.stop()
    assert sidecar.writer.queue.clear_due == sidecar.state.cleared > 0
    assert "before the store jsonfile took the clear" in caplog.text
    assert "all changes written" not in caplog.text


def test_prunes_expired_sessions_from_the_store(tmp_path: Path, runtime_dir: str) -> None:
    store = JsonFileStore(tmp_path / "s.json", save_interval=None)
    now = time.time()
    live = Record(new_id(), {"x": 1}, 1, 1, now, now, now + 3600)
    store.save([live, Record(new_id(), {"x": 2}, 1, 1, now - 100, now - 100, now + 0.3)])
    config = SidecarConfig(prune_interval=0.1)
    with Sidecar(store, HubConfig(runtime_dir=runtime_dir), config) as sidecar:
        wait_until(lambda: sidecar.writer.counts["purged"] == 1, 10, "the expired session to be purged")
        assert [r.key for r in store.load_all(time.time() - 1000)] == [live.key]


# -- the command, against PostgreSQL ---------------------------------------------------------


def _pg_rows(url: str) -> dict[str, tuple[int, bool]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        try:
            rows = conn.execute("SELECT sid, version, deleted FROM memsession").fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {sid: (version, deleted) for sid, version, deleted in rows}


@pytest.mark.zmq
def test_command_postgres_http_status_and_sigterm_flush(postgres_url: str) -> None:
    port = http_port()
    sidecar = SidecarProcess(postgres_url, "--flush-interval", "30", "--http", f"127.0.0.1:{port}",
                             "--prune-interval", "0.2")
    with sidecar:
        cache = _cache(sidecar.runtime_dir)
        try:
            sids = [new_id() for _ in range(20)]
            versions = {sid: cache.set(sid, {"n": i}).version for i, sid in enumerate(sids)}
            wait_until(lambda: sidecar.stats()["sessions"] == len(sids), 10, "the sidecar to hold every session")
            assert _pg_rows(postgres_url) == {}  # 30 s flush interval: nothing written yet

            with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as http:
                # The endpoint serves what the hub thread published (refreshed every second).
                health = wait_until(lambda: (r := http.get("/health")).json().get("sessions") == len(sids) and r,
                                    10, "/health to show every session")
                assert health.status_code == 200
                body = health.json()
                assert body["ok"] is True and body["role"] == "sidecar" and body["store"] == "postgres"
                assert body["persist"]["depth"] == len(sids)
                metrics = http.get("/metrics").text
                assert f"memsession_persist_depth {len(sids)}" in metrics.splitlines()
                assert http.get("/nope").status_code == 404

            status = subprocess.run(
                [sys.executable, "-m", "memsession", "status", "--runtime-dir", sidecar.runtime_dir],
                check=False, capture_output=True, text=True, timeout=30,
            )
            assert status.returncode == 0, status.stderr
            assert "sidecar at ipc://" in status.stdout
            assert f"{len(sids)} live" in status.stdout
            assert f"{len(sids)} keys waiting" in status.stdout
            raw = subprocess.run(
                [sys.executable, "-m", "memsession", "status", "--runtime-dir", sidecar.runtime_dir, "--json"],
                check=False, capture_output=True, text=True, timeout=30,
            )
            assert json.loads(raw.stdout)["persist"]["depth"] == len(sids)

            started = time.monotonic()
            assert sidecar.terminate(timeout=30) == 0
            assert time.monotonic() - started < 15
            assert _pg_rows(postgres_url) == {session_key(sid): (versions[sid], False) for sid in sids}
            assert "all changes written to postgres" in sidecar.tail(200)
        finally:
            cache.close()

    gone = subprocess.run(
        [sys.executable, "-m", "memsession", "status", "--runtime-dir", sidecar.runtime_dir, "--timeout", "0.3"],
        check=False, capture_output=True, text=True, timeout=30,
    )
    assert gone.returncode == 1 and "no hub answered" in gone.stderr
    assert not os.path.exists(sidecar.runtime_dir)  # asking leaves no runtime dir behind


@pytest.mark.zmq
def test_a_clear_reaches_postgres_through_the_sidecar_and_outlives_it(postgres_url: str) -> None:
    from persist.base import WATERMARK_KEY

    def sessions() -> dict[str, tuple[int, bool]]:
        return {k: v for k, v in _pg_rows(postgres_url).items() if k != WATERMARK_KEY}

    sidecar = SidecarProcess(postgres_url, "--flush-interval", "0.05")
    with sidecar, _cache(sidecar.runtime_dir) as cache:
        sids = [new_id() for _ in range(10)]
        for i, sid in enumerate(sids):
            cache.set(sid, {"n": i})
        cache.destroy(sids[0])
        destroyed = session_key(sids[0])
        wait_until(lambda: len(sessions()) == len(sids) and sessions()[destroyed][1], 10,
                   "the writes to reach PostgreSQL")
        cache.clear()
        # the live sessions go; the tombstone stays (destroyed stays destroyed)
        wait_until(lambda: list(sessions()) == [destroyed], 10, "the clear to reach PostgreSQL")
        assert sidecar.stats()["cleared"] == cache.cleared
        assert sidecar.stats()["persist"]["clears"] == 1
        later = new_id()
        kept = cache.set(later, {"after": "clear"})
        wait_until(lambda: kept.key in sessions(), 10, "a write after the clear to reach PostgreSQL")
    # A new sidecar starts from the store: nothing the clear ended comes back to a joining worker.
    again = SidecarProcess(postgres_url, "--flush-interval", "0.05")
    with again, _cache(again.runtime_dir) as cache:
        assert cache.bus.wait_joined(5)  # type: ignore[union-attr]
        assert cache.get(later) == {"after": "clear"}
        assert all(cache.get(sid) is None for sid in sids)
        assert len(cache) == 1


def test_writes_behind_to_couchdb(couch_url: str, runtime_dir: str) -> None:
    from persist.couchdb import CouchStore
    from tests.servers import unique_name

    url = f"{couch_url}/{unique_name('sidecar')}"
    with Sidecar(CouchStore(url, trust_env=False), HubConfig(runtime_dir=runtime_dir),
                 SidecarConfig(flush_interval=0.02)), _cache(runtime_dir) as cache:
        sids = [new_id() for _ in range(30)]
        for i, sid in enumerate(sids):
            cache.set(sid, {"i": i, "b": b"\x00bytes"})
        cache.destroy(sids[0])
        check = CouchStore(url, trust_env=False)
        try:
            def stored() -> bool:
                records = {r.key: r for r in check.load_all(time.time())}
                keys = [session_key(sid) for sid in sids]
                return records.get(keys[0]) is not None and records[keys[0]].deleted and all(
                    records.get(k) is not None and records[k].data == {"i": i, "b": b"\x00bytes"}
                    for i, k in enumerate(keys) if i)

            wait_until(stored, 20, "every change to reach CouchDB")
        finally:
            check.close()
