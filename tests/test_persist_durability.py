"""What each write mode promises, checked against a real PostgreSQL and real crashes.

- a PostgreSQL restart in the middle of a run: reads memory can serve keep
  working, write-behind loses nothing, write-through works again at once;
- a writer killed with SIGKILL: every write-through ``set()`` that returned
  is in the table; a JSON snapshot is never left half-written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from memsession import SessionCache
from memsession.errors import StoreUnavailable
from memsession.session import new_id, session_key
from persist.base import WATERMARK_KEY
from persist.jsonfile import read_snapshot
from persist.persistence import PersistConfig, Persistence
from persist.postgres import PostgresStore
from persist.testing import make_test_record
from tests.servers import PostgresServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def private_postgres(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> PostgresServer:
    """A cluster of this test's own, so restarting it disturbs no other test.

    Depends on the shared server so it is skipped (or failed, in CI) exactly when that one is.
    """
    server = PostgresServer("restart")
    request.addfinalizer(server.stop)
    return server.start()


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def stored(url: str) -> dict[str, str]:
    """Every row's data as text, by key (``session_key`` of the session's id)."""
    with psycopg.connect(url) as conn:
        return dict(conn.execute('SELECT sid, sess::text FROM "memsession"').fetchall())


def test_postgres_restart_mid_run(private_postgres: PostgresServer) -> None:
    postgres_server, postgres_url = private_postgres, private_postgres.url
    # A short pool timeout, so the writer sees the outage rather than waiting it out.
    behind = SessionCache(
        persistence=Persistence(PostgresStore(postgres_url, create_table=True, timeout=0.1), PersistConfig(flush_interval=0.01, retry_min=0.05, retry_max=0.25)),
    )
    through = SessionCache(
        persistence=Persistence(PostgresStore(postgres_url, create_table=True, timeout=1.0), PersistConfig(mode="write_through")),
    )
    try:
        early = new_id()
        through.set(early, {"early": True})
        written: dict[str, int] = {}
        restart_error: list[BaseException] = []

        def restart() -> None:
            try:
                postgres_server.restart()
            except BaseException as exc:  # reported below
                restart_error.append(exc)

        restarter = threading.Thread(target=restart)
        restarter.start()
        i = 0
        while restarter.is_alive() or i < 50:
            sid = new_id()
            behind.set(sid, {"i": i})
            written[sid] = i
            assert through.get(early) == {"early": True}
            i += 1
            time.sleep(0.001)
        restarter.join()
        assert not restart_error, restart_error
        assert behind.stats()["persistence"]["write_errors"] >= 1, "the outage was never seen"

        after = new_id()
        through.set(after, {"after": True})
        assert session_key(after) in stored(postgres_url)

        wait_until(lambda: behind.stats()["persistence"]["queued"] == 0)
        rows = stored(postgres_url)
        missing = [sid for sid in written if session_key(sid) not in rows]
        assert not missing, f"{len(missing)} of {len(written)} write-behind sessions lost"
        assert all(rows[session_key(sid)] == f'{{"i":{n}}}' for sid, n in written.items())
    finally:
        behind.close()
        through.close()


def test_write_through_during_outage_raises_then_recovers(private_postgres: PostgresServer) -> None:
    postgres_server, postgres_url = private_postgres, private_postgres.url
    cache = SessionCache(
        persistence=Persistence(PostgresStore(postgres_url, create_table=True, timeout=0.1), PersistConfig(mode="write_through", retry_min=0.05, retry_max=0.2)),
    )
    try:
        known = new_id()
        cache.set(known, {"a": 1})
        failed: list[str] = []
        done = threading.Event()

        def writer() -> None:
            while not done.is_set():
                sid = new_id()
                try:
                    cache.set(sid, {"late": True})
                except StoreUnavailable:
                    failed.append(sid)
                time.sleep(0.002)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            postgres_server.restart()
        finally:
            done.set()
            thread.join()
        assert cache.get(known) == {"a": 1}
        assert failed, "the outage was never seen"
        # Refused while down: kept in memory, and written once the server was back.
        assert all(cache.get(sid) == {"late": True} for sid in failed)
        wait_until(lambda: cache.stats()["persistence"]["queued"] == 0)
        rows = stored(postgres_url)
        assert all(session_key(sid) in rows for sid in failed)
    finally:
        cache.close()


CHILD_PG = textwrap.dedent(
    """
    import sys
    from memsession import SessionCache
    from memsession.session import new_id
    from persist.postgres import PostgresStore
    from persist.persistence import PersistConfig, Persistence

    cache = SessionCache(
        persistence=Persistence(PostgresStore(sys.argv[1], create_table=True), PersistConfig(mode="write_through")),
    )
    i = 0
    while True:
        sid = new_id()
        cache.set(sid, {"i": i})
        print(sid, i, flush=True)
        i += 1
    """
)


def test_sigkill_keeps_every_acknowledged_write_through(postgres_url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_PG, postgres_url],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    acknowledged: dict[str, str] = {}
    try:
        assert child.stdout is not None
        while len(acknowledged) < 300:
            line = child.stdout.readline()
            assert line, f"writer exited early with {child.poll()}"
            sid, i = line.split()
            acknowledged[sid] = i
        os.kill(child.pid, signal.SIGKILL)
        for line in child.stdout:
            sid, _, i = line.strip().partition(" ")
            if i:
                acknowledged[sid] = i
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    rows = stored(postgres_url)
    missing = [sid for sid in acknowledged if session_key(sid) not in rows]
    assert not missing, f"{len(missing)} acknowledged writes lost"
    assert all(rows[session_key(sid)] == f'{{"i":{i}}}' for sid, i in acknowledged.items())


CHILD_JSON = textwrap.dedent(
    """
    import sys
    from memsession import SessionCache
    from memsession.session import new_id
    from persist.jsonfile import JsonFileStore
    from persist.persistence import Persistence

    store = JsonFileStore(sys.argv[1], save_interval=0.005)
    cache = SessionCache(persistence=Persistence(store))
    i = 0
    while True:
        cache.set(new_id(), {"i": i, "pad": "x" * 200})
        if i % 500 == 0:
            cache.persistence.flush()
            print(store.snapshot(), flush=True)
        i += 1
    """
)


def test_sigkill_never_leaves_a_damaged_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "sessions.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_JSON, str(path)], stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    try:
        assert child.stdout is not None
        snapshots = 0
        while snapshots < 6:
            line = child.stdout.readline()
            assert line, f"writer exited early with {child.poll()}"
            snapshots += 1
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    records = list(read_snapshot(str(path), 0.0))
    assert len(records) >= 2500
    assert all(r.data["pad"] == "x" * 200 for r in records)
    leftovers = [p for p in os.listdir(tmp_path) if p not in ("sessions.jsonl", ".sessions.jsonl.lock")]
    assert all(p.endswith(".tmp") for p in leftovers)


def test_clear_while_postgres_is_down_is_applied_when_it_returns(private_postgres: PostgresServer) -> None:
    postgres_server, postgres_url = private_postgres, private_postgres.url
    store = PostgresStore(postgres_url, create_table=True, timeout=0.1)
    persistence = Persistence(store, PersistConfig(flush_interval=0.01, retry_min=0.05, retry_max=0.25))
    try:
        store.save([make_test_record("old", version=100), make_test_record("new", version=300)])
        # Halt and relaunch the same cluster (same port, same data).
        postgres_server._halt()
        postgres_server._running = False
        try:
            persistence.clear(200)  # store trouble is never raised
            stats = persistence.stats()
            assert stats["clear_errors"] >= 1 and stats["clear_due"] == 200
        finally:
            postgres_server._launch()
            postgres_server._running = True
        wait_until(lambda: persistence.stats()["clear_due"] == 0)
        assert persistence.stats()["clears"] == 1
        assert set(stored(postgres_url)) == {"new", WATERMARK_KEY}
    finally:
        persistence.close()
