"""PostgresStore(change_log=True): a log row per save, its records numbered per host, in the save's transaction.

What the log holds (keys and versions, never data), the numbering (1, 2, 3,
... per host with no hole, also under concurrent writers of one host, in
threads and in processes), that a save that rolls back leaves nothing
behind (no row, no hole, no notification), clears, pruning, the
notification, the options. The feed that follows the log is
``test_postgres_changelog_feed``'s.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from memsession.errors import ConfigError, StoreError
from persist.postgres import PostgresStore, ddl
from persist.postgres.changelog import LOG_RETENTION, MIN_LOG_RETENTION, ROW_CHANGES, channel_name
from persist.postgres.table import TableNames
from persist.testing import make_test_delta, make_test_record

V = 1 << 40
LOG_COLUMNS = ["host", "seq", "first_seq", "keys", "versions", "origins", "deleted", "cleared", "at"]


def key(i: int | str) -> str:
    """A key as caches make them: the SHA-256 of an id, in hex."""
    return hashlib.sha256(str(i).encode()).hexdigest()


def log_rows(url: str, table: str = '"memsession_changes"') -> list[tuple[Any, ...]]:
    """The log's records, ``(host, seq, key, version, origin, deleted, cleared)`` in host/seq order
    (``table``: the log table, quoted); a clear as key ``''``."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT host, first_seq + u.i - 1, u.k, u.v, u.o, u.x, cleared FROM {table},"
            " unnest(string_to_array(keys, E'\\n'), versions, origins, deleted)"
            " WITH ORDINALITY AS u(k, v, o, x, i)"
            f" UNION ALL SELECT host, seq, '', 0, 0, false, cleared FROM {table} WHERE cleared <> 0"
            " ORDER BY 1, 2"
        ).fetchall()


def row_spans(url: str) -> list[tuple[str, int, int]]:
    """The log's rows as ``(host, first_seq, seq)``: which records share a row."""
    with psycopg.connect(url) as conn:
        return conn.execute('SELECT host, first_seq, seq FROM "memsession_changes" ORDER BY host, seq').fetchall()


def keys_storage(url: str, table: str = '"memsession_changes"') -> str:
    """How the log's keys and arrays are stored: ``'e'``, uncompressed out of line, is what the log asks for."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT DISTINCT attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                            " AND attname IN ('keys', 'versions', 'origins', 'deleted')", [table]).fetchall()
    assert len(rows) == 1
    return str(rows[0][0])


def counters(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute('SELECT host, seq FROM "memsession_changes_hosts"').fetchall())


def logging_store(url: str, host: str = "h1", **options: Any) -> PostgresStore:
    return PostgresStore(url, create_table=True, change_log=True, host=host, **options)


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    store = logging_store(postgres_url)
    yield store
    store.close()


# -- what a save logs -----------------------------------------------------------------------------


@pytest.mark.parametrize("copying", [False, True], ids=["upsert", "copy"])
@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "plain"])
def test_a_save_logs_the_records_it_wrote_in_one_row_and_no_data(postgres_url: str, copying: bool,
                                                                 pipelined: bool) -> None:
    store = logging_store(postgres_url, copy_rows=1 if copying else 1000)
    store.pipelined = pipelined and store.pipelined
    try:
        before = time.time()
        batch = [make_test_record(key(1), {"secret": "s1"}, version=V + 1, origin=3),
                 make_test_record(key(2), {"secret": "s2"}, version=V + 2, origin=4),
                 make_test_record(key(3), version=V + 3, origin=5, deleted=True)]
        assert store.save(batch) == 3
        assert log_rows(postgres_url) == [
            ("h1", 1, key(1), V + 1, 3, False, 0), ("h1", 2, key(2), V + 2, 4, False, 0),
            ("h1", 3, key(3), V + 3, 5, True, 0),
        ]
        # A save that changes nothing writes nothing and logs nothing.
        assert store.save(batch) == 0
        assert len(log_rows(postgres_url)) == 3
        # A delta logs the stored record's (version, origin) after the merge.
        assert store.save([make_test_delta(key(1), {"more": 1}, version=V + 10, origin=9)]) == 1
        assert log_rows(postgres_url)[-1] == ("h1", 4, key(1), V + 10, 9, False, 0)
        assert counters(postgres_url) == {"h1": 4}
        assert row_spans(postgres_url) == [("h1", 1, 3), ("h1", 4, 4)]  # one row per save
        with psycopg.connect(postgres_url) as conn:
            columns = conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'memsession_changes' ORDER BY ordinal_position"
            ).fetchall()
            (low, high), = conn.execute('SELECT min(at), max(at) FROM "memsession_changes"').fetchall()
        assert [name for (name,) in columns] == LOG_COLUMNS  # no room for data
        assert before - 60 < low <= high < time.time() + 60  # the server's wall clock
    finally:
        store.close()


def test_keys_of_any_shape_reach_the_log_as_written(store: PostgresStore, postgres_url: str) -> None:
    odd = ['a"b', "back\\slash", "NULL", "with space", "{brace}", "comma,key", "ünï", '\\"', "k"]
    for copy_rows in (1000, 1):  # the array literal of the upsert path, the COPY of the copying one
        store.copy_rows = copy_rows
        batch = [make_test_record(f"{k}{copy_rows}", version=V) for k in odd]
        assert store.save(batch) == len(odd)
    assert [row[2] for row in log_rows(postgres_url)] == [f"{k}{n}" for n in (1000, 1) for k in odd]


def test_hosts_are_numbered_apart(postgres_url: str) -> None:
    one, two = logging_store(postgres_url, "one"), logging_store(postgres_url, "two")
    try:
        one.save([make_test_record(key(i)) for i in range(3)])
        two.save([make_test_record(key(i), version=V + 1) for i in range(2)])
        one.save([make_test_record(key(9))])
        assert [(h, s) for h, s, *_ in log_rows(postgres_url)] == [
            ("one", 1), ("one", 2), ("one", 3), ("one", 4), ("two", 1), ("two", 2),
        ]
        assert counters(postgres_url) == {"one": 4, "two": 2}
    finally:
        one.close()
        two.close()


def test_the_log_is_off_by_default_and_then_writes_nothing(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, create_table=True)
    try:
        assert store.changes is None
        store.save([make_test_record(key(1))])
        assert store.prune_changes(time.time()) == 0
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT to_regclass('memsession_changes')").fetchone() == (None,)
    finally:
        store.close()


# -- numbering under concurrent writers of one host ----------------------------------------------------


def _write(url: str, host: str, worker: int, rounds: int, barrier: Any) -> int:
    """One writer: ``rounds`` batches of varied sizes (some copied), keys shared with the other writers."""
    store = logging_store(url, host, copy_rows=40)
    written = 0
    try:
        for n in range(rounds):
            barrier.wait(30)
            size = (1, 5, 60, 3)[n % 4]
            version = V + n * 1000 + worker
            batch = [make_test_record(key((n * 7 + j) % 50), {"w": worker}, version=version + j * 10)
                     for j in range(size)]
            written += store.save(batch)
    finally:
        store.close()
    return written


def _process_writer(url: str, host: str, worker: int, rounds: int, barrier: Any, out: Any) -> None:
    out.put(_write(url, host, worker, rounds, barrier))


def _assert_gap_free(url: str, written: dict[str, int]) -> None:
    rows = log_rows(url)
    for host, count in written.items():
        assert [seq for h, seq, *_ in rows if h == host] == list(range(1, count + 1))
    assert counters(url) == written


def test_numbering_is_gap_free_under_concurrent_writer_threads(postgres_url: str) -> None:
    # Three writers of one host and one of another, on one set of keys, every round at once: key locks,
    # the table lock and the counter in one order (no deadlock), one host's batches take turns at its counter.
    workers = [("h1", 1), ("h1", 2), ("h1", 3), ("h2", 4)]
    barrier = threading.Barrier(len(workers))
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def run(host: str, worker: int) -> None:
        try:
            results[worker] = _write(postgres_url, host, worker, 40, barrier)
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=w) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    _assert_gap_free(postgres_url, {"h1": results[1] + results[2] + results[3], "h2": results[4]})


def test_numbering_is_gap_free_under_concurrent_writer_processes(postgres_url: str) -> None:
    logging_store(postgres_url).close()  # the tables, before the writers race to make them
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_process_writer, args=(postgres_url, "h1", worker, 30, barrier, out))
             for worker in (1, 2)]
    for proc in procs:
        proc.start()
    try:
        totals = [out.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(30)
    assert all(proc.exitcode == 0 for proc in procs)
    _assert_gap_free(postgres_url, {"h1": sum(totals)})


# -- a save that fails leaves nothing ----------------------------------------------------------------


def _fail_at_commit(url: str, bad_key: str) -> None:
    """A deferred constraint trigger: the save of ``bad_key`` fails at COMMIT, after its log rows went in."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN IF NEW.sid = '{bad_key}' THEN RAISE EXCEPTION 'refused at commit'; END IF;"
            " RETURN NULL; END $$"
        )
        conn.execute('CREATE CONSTRAINT TRIGGER refuse AFTER INSERT OR UPDATE ON "memsession"'
                     " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()")


@pytest.mark.parametrize("copying", [False, True], ids=["upsert", "copy"])
def test_a_save_that_rolls_back_leaves_no_log_row_no_hole_and_no_notification(postgres_url: str,
                                                                             copying: bool) -> None:
    store = logging_store(postgres_url, copy_rows=1 if copying else 1000)
    listener = psycopg.connect(postgres_url, autocommit=True)
    try:
        listener.execute('LISTEN "memsession_changes"')
        store.save([make_test_record(key(0))])
        # Refused by the upsert itself (an origin bigint can't hold), before the log statement...
        with pytest.raises(StoreError):
            store.save([make_test_record(key(1)), make_test_record(key(2), origin=1 << 63)])
        # ...and at COMMIT, after the log rows were written.
        _fail_at_commit(postgres_url, key(3))
        with pytest.raises(StoreError, match="refused at commit"):
            store.save([make_test_record(key(4)), make_test_record(key(3))])
        assert log_rows(postgres_url) == [("h1", 1, key(0), V, 7, False, 0)]
        assert counters(postgres_url) == {"h1": 1}
        assert store.save([make_test_record(key(5))]) == 1
        assert [seq for _, seq, *_ in log_rows(postgres_url)] == [1, 2]
        heard = [n.payload for n in listener.notifies(timeout=1.0, stop_after=3)]
        assert heard == ["h1:1", "h1:2"]
    finally:
        listener.close()
        store.close()


# -- clears, pruning, the notification ------------------------------------------------------------


def test_a_clear_is_logged_once_with_its_watermark(store: PostgresStore, postgres_url: str) -> None:
    store.save([make_test_record(key(1), version=V)])
    assert store.clear(V + 5) == 1
    assert store.clear(V + 1) == 0  # covered by the stored watermark: nothing happened, nothing logged
    store.clear(V + 9)
    assert log_rows(postgres_url) == [
        ("h1", 1, key(1), V, 7, False, 0),
        ("h1", 2, "", 0, 0, False, V + 5),
        ("h1", 3, "", 0, 0, False, V + 9),
    ]


def test_purge_prunes_log_rows_past_the_retention_and_keeps_the_counters(store: PostgresStore,
                                                                        postgres_url: str) -> None:
    for i in range(5):
        store.save([make_test_record(key(i), expires=float("inf")),
                    make_test_record(key(i + 10), expires=float("inf"))])
    now = time.time()
    assert store.prune_changes(now) == 0  # younger than the retention
    assert store.purge(now + LOG_RETENTION + 120) == 0  # no session lapsed; the log was pruned all the same
    assert log_rows(postgres_url) == []
    assert counters(postgres_url) == {"h1": 10}
    store.save([make_test_record(key(9))])
    assert [seq for _, seq, *_ in log_rows(postgres_url)] == [11]
    for i in range(5):
        store.save([make_test_record(key(i + 20), expires=float("inf"))])
    assert store.changes is not None
    # Bounded statements (2 rows each here), repeated until done.
    assert store.changes.prune(store._run, now + LOG_RETENTION + 120, rows=2) == 6
    assert log_rows(postgres_url) == []


@pytest.mark.parametrize("copying", [False, True], ids=["upsert", "copy"])
def test_a_save_of_more_records_than_a_row_holds_takes_several_rows_numbered_on(postgres_url: str,
                                                                                copying: bool) -> None:
    store = logging_store(postgres_url, copy_rows=1 if copying else 10_000)
    try:
        store.save([make_test_record(key(0))])
        batch = [make_test_record(key(i), version=V + i) for i in range(1, ROW_CHANGES * 2 + 101)]
        assert store.save(batch) == len(batch)
        assert row_spans(postgres_url) == [
            ("h1", 1, 1), ("h1", 2, ROW_CHANGES + 1), ("h1", ROW_CHANGES + 2, 2 * ROW_CHANGES + 1),
            ("h1", 2 * ROW_CHANGES + 2, 2 * ROW_CHANGES + 101),
        ]
        assert [(seq, k, v) for _, seq, k, v, *_ in log_rows(postgres_url)][1:] == [
            (i + 1, key(i), V + i) for i in range(1, ROW_CHANGES * 2 + 101)
        ]
        assert counters(postgres_url) == {"h1": 2 * ROW_CHANGES + 101}
    finally:
        store.close()


@pytest.mark.parametrize("schema", [None, "app"])
def test_the_notification_names_the_host_and_last_seq_on_the_log_tables_channel(postgres_url: str,
                                                                              schema: str | None) -> None:
    store = logging_store(postgres_url, schema=schema, table="sess")
    channel = channel_name(TableNames.build(schema, "sess", None))
    assert channel == ("sess_changes" if schema is None else "app.sess_changes")
    listener = psycopg.connect(postgres_url, autocommit=True)
    try:
        listener.execute(f'LISTEN "{channel}"')
        store.save([make_test_record(key(i)) for i in range(3)])
        store.save([make_test_record(key(i), version=V + 1) for i in range(300)] if schema else
                   [make_test_record(key(7))])
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=5.0, stop_after=2)]
        assert heard == [(channel, "h1:3"), (channel, "h1:303" if schema else "h1:4")]
    finally:
        listener.close()
        store.close()


def test_a_channel_name_too_long_to_keep_becomes_a_digest() -> None:
    long = TableNames.build("s" * 40, "t" * 40, None)
    assert len(channel_name(long).encode()) <= 63
    assert channel_name(long) != channel_name(TableNames.build("s" * 40, "t" * 39 + "u", None))


# -- the tables, the options ---------------------------------------------------------------------------


def test_a_store_with_the_log_on_and_its_tables_missing_fails_at_open(postgres_url: str) -> None:
    PostgresStore(postgres_url, create_table=True).close()
    with pytest.raises(StoreError, match="change log's tables") as raised:
        PostgresStore(postgres_url, change_log=True, host="h1")
    assert raised.value.op == "open"


def test_a_log_of_the_older_layout_is_refused_at_open_with_what_to_do(postgres_url: str) -> None:
    logging_store(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute('DROP TABLE "memsession_changes"')
        conn.execute('CREATE TABLE "memsession_changes" (host text, seq bigint, key text, version bigint,'
                     ' origin bigint, deleted boolean, cleared bigint, at float8, PRIMARY KEY (host, seq))')
    with pytest.raises(StoreError, match="older layout .* drop it") as raised:
        logging_store(postgres_url)
    assert raised.value.op == "open"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute('DROP TABLE "memsession_changes"')
    store = logging_store(postgres_url)  # made anew, numbered on from the kept counter
    try:
        store.save([make_test_record(key(1))])
        assert row_spans(postgres_url) == [("h1", 1, 1)] and keys_storage(postgres_url) == "e"
    finally:
        store.close()


def test_the_ddl_with_the_change_log_makes_what_the_store_needs(postgres_url: str) -> None:
    assert "memsession_changes" not in ddl()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(ddl(schema="app", table="sess", change_log=True))
    store = PostgresStore(postgres_url, schema="app", table="sess", change_log=True, host="h1")
    try:
        store.save([make_test_record(key(1))])
        assert log_rows(postgres_url, '"app"."sess_changes"') == [("h1", 1, key(1), V, 7, False, 0)]
        assert keys_storage(postgres_url, '"app"."sess_changes"') == "e"
    finally:
        store.close()


@pytest.mark.parametrize(("options", "option"), [
    ({"change_log": "yes"}, "change_log"),
    ({"change_log": True, "host": ""}, "host"),
    ({"change_log": True, "host": "line\nbreak"}, "host"),
    ({"change_log": True, "host": "h" * 256}, "host"),
    ({"change_log": True, "host": 7}, "host"),
    ({"change_log": True, "log_retention": MIN_LOG_RETENTION - 1}, "log_retention"),
    ({"change_log": True, "log_retention": float("inf")}, "log_retention"),
    ({"change_log": True, "log_retention": "1h"}, "log_retention"),
    ({"host": "h1"}, "host"),
    ({"log_retention": 7200.0}, "log_retention"),
    ({"change_log": True, "table": "t" * 50}, "table"),
])
def test_bad_change_log_options_fail_at_construction(options: dict[str, Any], option: str) -> None:
    # Before any connection is tried: the URL leads nowhere.
    with pytest.raises(ConfigError) as raised:
        PostgresStore("postgresql://nobody@127.0.0.1:1/none", **options)
    assert raised.value.option == option
