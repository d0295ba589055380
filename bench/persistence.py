"""Persistence: sessions/s and latency per store and write mode, next to a plain per-request upsert.

``python -m bench.persistence [--sessions 5000] [--quick] [--postgres-url URL] [--couch-url URL]``

Without URLs it starts a throwaway PostgreSQL and pouchdb-server (the test
harness's ``tests.servers``) and stops them at the end. In the same run:

* PostgreSQL: what connect-pg-simple does (one ``INSERT ... ON CONFLICT``
  per request over a pooled connection) against ``SessionCache`` with
  ``PostgresStore`` in write-through and write-behind; a read-through miss
  against one bare primary-key SELECT.
* CouchDB (pouchdb-server): write-through and write-behind.
* JsonFileStore: write-behind into the store, and snapshot save/load of
  100k and 1M sessions.

Write-behind sessions/s counts until the last record is in the store
(``flush()`` included), so it is persisted throughput, not memory speed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from memsession import SessionCache, new_id
from memsession.session import Record, prepare_data, session_key
from persist.base import Store
from persist.jsonfile import JsonFileStore, read_snapshot, write_snapshot
from persist.persistence import PersistConfig, Persistence

from .table import render, verdict


def session_data(i: int) -> dict[str, Any]:
    return {"user_id": i, "csrf": secrets.token_urlsafe(32), "theme": "dark", "roles": ["member"]}


def percentile(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class Result:
    def __init__(self, name: str, count: int, seconds: float, latencies_ns: Sequence[int]) -> None:
        self.name = name
        self.rate = count / seconds
        self.p50 = percentile(latencies_ns, 0.50) / 1000
        self.p99 = percentile(latencies_ns, 0.99) / 1000

    def row(self, baseline: Result | None) -> list[object]:
        ratio = f"{self.rate / baseline.rate:.1f}x" if baseline else "1.0x"
        return [self.name, self.rate, ratio, self.p50, self.p99]


def timed_sets(cache: SessionCache, sids: Sequence[str], datas: Sequence[dict[str, Any]]) -> Result:
    latencies = []
    gc.collect()
    start = time.perf_counter()
    for sid, data in zip(sids, datas):
        t = time.perf_counter_ns()
        cache.set(sid, data)
        latencies.append(time.perf_counter_ns() - t)
    assert cache.persistence is not None
    cache.persistence.flush()
    seconds = time.perf_counter() - start
    return Result("", len(sids), seconds, latencies)


def run_cache(
    name: str, make_store: Callable[[], Store], mode: str, count: int
) -> Result:
    config = PersistConfig(mode=mode, flush_interval=0.05, batch_size=1000)  # type: ignore[arg-type]
    cache = SessionCache(persistence=Persistence(make_store(), config))
    try:
        sids = [new_id() for _ in range(count)]
        datas = [session_data(i) for i in range(count)]
        result = timed_sets(cache, sids, datas)
        result.name = name
        stats = cache.stats()["persistence"]
        assert stats["queued"] == 0 and stats["write_errors"] == 0, stats
        return result
    finally:
        cache.close()


# -- PostgreSQL -------------------------------------------------------------------------


def pg_per_request(url: str, count: int) -> Result:
    """connect-pg-simple's write: one upsert per request, pooled connection, autocommit."""
    import psycopg
    from psycopg_pool import ConnectionPool

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS plain_session (sid varchar PRIMARY KEY, sess json NOT NULL,"
            " expire timestamp(6) NOT NULL)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS plain_session_expire ON plain_session (expire)")
    sql = (
        "INSERT INTO plain_session (sess, expire, sid) SELECT $1, to_timestamp($2), $3"
        " ON CONFLICT (sid) DO UPDATE SET sess = $1, expire = to_timestamp($2) RETURNING sid"
    ).replace("$1", "%(sess)s").replace("$2", "%(expire)s").replace("$3", "%(sid)s")
    with ConnectionPool(url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True) as pool:
        sids = [new_id() for _ in range(count)]
        latencies = []
        gc.collect()
        start = time.perf_counter()
        for i, sid in enumerate(sids):
            t = time.perf_counter_ns()
            body = orjson.dumps(session_data(i)).decode()
            with pool.connection() as conn:
                conn.execute(sql, {"sess": body, "expire": time.time() + 1800, "sid": sid})
            latencies.append(time.perf_counter_ns() - t)
        seconds = time.perf_counter() - start
    return Result("per-request upsert (connect-pg-simple)", count, seconds, latencies)


def pg_read_through(url: str, count: int) -> tuple[float, float]:
    """Median microseconds: SessionCache miss read through PostgresStore vs one bare PK SELECT."""
    import psycopg

    from persist.postgres import PostgresStore

    store = PostgresStore(url, create_table=True)
    sids = [new_id() for _ in range(count)]
    now = time.time()
    records = []
    for i, sid in enumerate(sids):
        data, size, flat = prepare_data(session_data(i), 1 << 16)
        records.append(Record(session_key(sid), data, 1 << 40, 1, now, now, now + 1800, False, flat, size))
    store.save(records)
    cache = SessionCache(persistence=Persistence(store, PersistConfig(negative_ttl=0)))
    try:
        through = []
        for sid in sids:
            t = time.perf_counter_ns()
            assert cache.get(sid) is not None
            through.append(time.perf_counter_ns() - t)
        assert cache.stats()["persistence"]["read_hits"] == count
    finally:
        cache.close()
    bare = []
    with psycopg.connect(url, autocommit=True) as conn:
        for sid in sids:
            t = time.perf_counter_ns()
            conn.execute('SELECT sess FROM "memsession" WHERE sid = %s', [session_key(sid)]).fetchone()
            bare.append(time.perf_counter_ns() - t)
    return percentile(through, 0.5) / 1000, percentile(bare, 0.5) / 1000


# -- JSON snapshots ---------------------------------------------------------------------


def json_snapshot(count: int, folder: str) -> tuple[float, float, int]:
    """Seconds to save and to load ``count`` small sessions, and the file size."""
    now = time.time()
    records = []
    for i in range(count):
        data = {"user_id": i, "csrf": "x" * 43, "theme": "dark"}
        records.append(Record(session_key(new_id()), data, (1 << 40) + i, 1, now, now, now + 1800, False, True, 60))
    path = os.path.join(folder, f"snap-{count}.jsonl")
    gc.collect()
    start = time.perf_counter()
    write_snapshot(path, records, now)
    saved = time.perf_counter() - start
    del records
    gc.collect()
    start = time.perf_counter()
    loaded = sum(1 for _ in read_snapshot(path, now))
    load_seconds = time.perf_counter() - start
    assert loaded == count
    size = os.path.getsize(path)
    os.unlink(path)
    return saved, load_seconds, size


# -- servers ----------------------------------------------------------------------------


def _durable_postgres_class() -> type:
    from tests.servers import PostgresServer

    class DurablePostgres(PostgresServer):  # type: ignore[misc,valid-type]
        """The test harness's throwaway server, optionally with durable commits (fsync=on)."""

        fsync = "off"

        def _run(self, tool: str, *args: str, **kwargs: Any) -> Any:
            if tool == "pg_ctl" and args[:1] == ("start",):
                args = tuple(a.replace("-c fsync=off", f"-c fsync={self.fsync}") for a in args)
            return super()._run(tool, *args, **kwargs)

    return DurablePostgres


@contextlib.contextmanager
def servers(
    pg_url: str | None, couch_url: str | None, want_couch: bool
) -> Iterator[tuple[str | None, Any, str | None]]:
    """(postgres url, the server object if started here, couch url)."""
    started = []
    pg = None
    try:
        if pg_url is None or (couch_url is None and want_couch):
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            from tests.servers import CouchServer, ServerError
        if pg_url is None:
            try:
                pg = _durable_postgres_class()("bench").start()
                started.append(pg)
                pg_url = pg.url
            except ServerError as exc:
                print(f"PostgreSQL unavailable, skipped: {exc}", file=sys.stderr)
        if couch_url is None and want_couch:
            try:
                couch = CouchServer().start()
                started.append(couch)
                couch_url = couch.url
            except ServerError as exc:
                print(f"CouchDB-API server unavailable, skipped: {exc}", file=sys.stderr)
        yield pg_url, pg, couch_url
    finally:
        for server in started:
            server.stop()


def pg_section(url: str, n: int, header: list[str]) -> bool:
    """One PostgreSQL table; True if write-behind made the 5x target."""
    import psycopg

    from persist.postgres import PostgresStore

    def pg_store() -> Store:
        return PostgresStore(url, create_table=True)

    with psycopg.connect(url, autocommit=True) as conn:
        fsync = conn.execute("SHOW fsync").fetchone()[0]  # type: ignore[index]
        conn.execute("DROP TABLE IF EXISTS plain_session, memsession")
    baseline = pg_per_request(url, n)
    through = run_cache("SessionCache write_through (PostgresStore)", pg_store, "write_through", n)
    behind = run_cache("SessionCache write_behind (PostgresStore)", pg_store, "write_behind", n)
    rows = [r.row(baseline) for r in (baseline, through, behind)]
    print(render(f"PostgreSQL, fsync={fsync}, {n} new sessions each", header, rows))
    ratio = behind.rate / baseline.rate
    print(f"target: write-behind >= 5x per-request upserts: {ratio:.1f}x {verdict(ratio >= 5)}")
    miss, select = pg_read_through(url, min(n, 2000))
    print(
        f"read-through miss p50 {miss:.0f} us vs bare primary-key SELECT p50 {select:.0f} us"
        f" ({miss / select:.2f}x; the miss runs exactly one SELECT)"
    )
    print()
    return ratio >= 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.persistence", description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000, help="sessions written per PostgreSQL subject")
    parser.add_argument("--couch-sessions", type=int, default=1000, help="sessions per CouchDB subject")
    parser.add_argument("--snapshot-sizes", default="100000,1000000")
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--couch-url", default=None)
    parser.add_argument("--no-couch", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.couch_sessions, args.snapshot_sizes = 500, 100, "10000"
    sizes = [int(s) for s in args.snapshot_sizes.split(",") if s]
    status = 0
    header = ["subject", "sessions/s", "vs baseline", "p50 us", "p99 us"]

    with servers(args.postgres_url, args.couch_url, not args.no_couch) as (pg_url, pg, couch_url):
        if pg_url is not None:
            # connect-pg-simple pays one commit per request, so what a commit costs decides
            # the ratio: the test harness's fsync=off server first, then durable commits.
            ok = pg_section(pg_url, args.sessions, header)
            if pg is not None:
                pg.fsync = "on"
                pg.restart()
                ok = pg_section(pg_url, args.sessions, header)
            status |= int(not ok)
        if couch_url is not None:
            from persist.couchdb import CouchStore

            n = args.couch_sessions
            names = iter(range(1000))

            def couch_store() -> Store:
                return CouchStore(f"{couch_url}/bench_{os.getpid()}_{next(names)}", trust_env=False)

            through = run_cache("SessionCache write_through (CouchStore)", couch_store, "write_through", n)
            behind = run_cache("SessionCache write_behind (CouchStore)", couch_store, "write_behind", n)
            print(render(f"CouchDB API (pouchdb-server), {n} new sessions each", header, [r.row(through) for r in (through, behind)]))
            print()

    with tempfile.TemporaryDirectory() as folder:
        n = args.sessions

        def json_store() -> Store:
            return JsonFileStore(os.path.join(folder, "bench.jsonl"), save_interval=None)

        through = run_cache("SessionCache write_through (JsonFileStore)", json_store, "write_through", n)
        behind = run_cache("SessionCache write_behind (JsonFileStore)", json_store, "write_behind", n)
        print(render(f"JsonFileStore (memory until snapshot), {n} sessions each", header, [r.row(through) for r in (through, behind)]))
        rows = []
        for size in sizes:
            saved, loaded, nbytes = json_snapshot(size, folder)
            ok = saved < 5 and loaded < 5
            if size >= 1_000_000:
                status |= int(not ok)
            rows.append([f"{size:,} sessions", saved, loaded, f"{nbytes / 1e6:.0f} MB", verdict(ok) if size >= 1_000_000 else ""])
        print()
        print(render("JSON snapshot (target at 1M: save and load each < 5 s)", ["size", "save s", "load s", "file", "target"], rows))
    return status


if __name__ == "__main__":
    sys.exit(main())
