"""PostgresStore against a real PostgreSQL: the store contract, naming, DDL, errors."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from memsession.errors import ConfigError, StoreError, StoreUnavailable
from memsession.session import is_valid_sid
from persist import Persistence
from persist.base import WATERMARK_KEY
from persist.postgres import PostgresStore, ddl
from persist.testing import T0, StoreContract, make_test_record
from tests.servers import PostgresServer, free_port


class TestPostgresContract(StoreContract):
    @pytest.fixture
    def make_store(self, postgres_url: str):
        return lambda: PostgresStore(postgres_url, create_table=True, max_size=4)


class TestPostgresCustomNamesContract(StoreContract):
    """Every identifier renamed, with characters that need quoting."""

    batch_size = 2000

    @pytest.fixture
    def make_store(self, postgres_url: str):
        return lambda: PostgresStore(
            postgres_url,
            schema="My Schema",
            table='web "sessions"',
            columns={"key": "Session ID", "data": "payload", "expires": "valid until", "deleted": "gone"},
            create_table=True,
            page_size=97,
            purge_batch=13,
        )


def test_custom_names_are_used(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, schema="app", table="sess", columns={"key": "id"}, create_table=True)
    try:
        store.save([make_test_record("k1", {"a": 1})])
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute('SELECT "id", "sess"::text FROM "app"."sess"').fetchall() == [("k1", '{"a":1}')]
        indexes = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'app'").fetchall()
        assert ("sess_expire_idx",) in indexes


def test_schema_sql_file_matches_ddl() -> None:
    shipped = (Path(__file__).parent.parent / "persist" / "schema.sql").read_text()
    body = "".join(line + "\n" for line in shipped.splitlines() if not line.startswith("--"))
    assert body == ddl()


@pytest.mark.parametrize("names", [("plain",), ('we"ird',), ("with space",), ("ünï",), ("o'k",), ("%s",),
                                   ("a\\b",), ("app", "x.y")])
def test_the_ddl_quotes_identifiers_as_psycopg_does(names: tuple[str, ...]) -> None:
    from psycopg import sql

    from persist.postgres.table import quote_ident

    assert quote_ident(*names) == sql.Identifier(*names).as_string(None)


def test_shipped_ddl_creates_a_working_table(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(ddl())
    store = PostgresStore(postgres_url)
    try:
        record = make_test_record("k", expires=math.inf)
        assert store.save([record]) == 1
        assert store.load("k") == record
    finally:
        store.close()


def test_database_url_fallback(postgres_url: str) -> None:
    store = PostgresStore(environ={"DATABASE_URL": postgres_url}, create_table=True)
    try:
        assert store.load("nobody") is None
    finally:
        store.close()
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        PostgresStore(environ={})


def test_passed_pool_is_used_and_left_open(postgres_url: str) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(postgres_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        store = PostgresStore(pool=pool, create_table=True)
        store.save([make_test_record("k")])
        store.close()
        assert not pool.closed
        with pool.connection() as conn:
            assert conn.execute('SELECT count(*) FROM "memsession"').fetchone() == (1,)


def test_unreachable_server_fails_at_start() -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=1"
    with pytest.raises(StoreUnavailable) as info:
        PostgresStore(url, connect_timeout=1.0)
    assert info.value.store == "postgres"


@pytest.fixture
def password_role(postgres_server: PostgresServer) -> Iterator[str]:
    """The server's password-checked role (see ``PostgresServer``), with the password "right-pw"."""
    role = PostgresServer.PASSWORD_ROLE
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right-pw'")
    yield role
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_wrong_password_fails_at_once_saying_authentication_failed(
    postgres_server: PostgresServer, postgres_url: str, password_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = postgres_url.rpartition("/")[2]
    url = f"postgresql://{password_role}:{{}}@127.0.0.1:{postgres_server.port}/{database}"
    PostgresStore(url.format("right-pw"), connect_timeout=10.0).close()  # the role does log in with a password
    with pytest.raises(StoreError) as info:
        PostgresStore(url.format("wrong-pw-7f3a"), connect_timeout=10.0)
    message = str(info.value)
    assert "authentication failed" in message and password_role in message, message
    assert "not reachable" not in message and "wrong-pw-7f3a" not in message, message
    assert info.value.op == "connect" and info.value.store == "postgres"
    # Permanent, so not retried: the pool never started connecting (it logs each failed attempt).
    assert not isinstance(info.value, StoreUnavailable)
    assert not [r for r in caplog.records if r.name.startswith("psycopg.pool")]


def test_an_unknown_role_fails_at_once_saying_authentication_failed(postgres_server: PostgresServer) -> None:
    url = f"postgresql://no_such_role_e1@127.0.0.1:{postgres_server.port}/{postgres_server.database}"
    with pytest.raises(StoreError, match="authentication failed") as info:
        PostgresStore(url, connect_timeout=10.0)
    assert not isinstance(info.value, StoreUnavailable)


def test_missing_table_is_a_store_error(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, table="absent")
    try:
        with pytest.raises(StoreError) as info:
            store.load("k")
        assert info.value.op == "load" and not isinstance(info.value, StoreUnavailable)
    finally:
        store.close()


@pytest.mark.parametrize(
    "options",
    [
        {"columns": {"nope": "x"}},
        {"columns": {"key": "same", "data": "same"}},
        {"columns": {"key": ""}},
        {"table": ""},
        {"table": "x" * 64},
        {"purge_batch": 0},
        {"page_size": True},
    ],
)
def test_bad_options_fail_at_construction(options: dict) -> None:
    with pytest.raises(ConfigError):
        PostgresStore("postgresql://127.0.0.1:1/none", **options)


def test_purge_runs_in_bounded_batches(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, create_table=True, purge_batch=7)
    try:
        store.save([make_test_record(f"k{i}", expires=T0 + (i % 2) * 100) for i in range(50)])
        assert store.purge(T0 + 50) == 25
        assert sum(1 for _ in store.load_all(0.0)) == 25
    finally:
        store.close()


def test_two_stores_on_one_table_keep_the_newest(postgres_url: str) -> None:
    a = PostgresStore(postgres_url, create_table=True)
    b = PostgresStore(postgres_url, create_table=True)
    try:
        a.save([make_test_record("k", {"w": "a"}, version=10, origin=1)])
        # Its key loses; the row now reflects b's change too (seen).
        assert b.save([make_test_record("k", {"w": "b"}, version=9, origin=2)]) == 1
        loaded = b.load("k")
        assert loaded is not None and loaded.data == {"w": "a"} and loaded.seen == {1: 10, 2: 9}
        assert b.save([make_test_record("k", {"w": "b"}, version=9, origin=2)]) == 0
    finally:
        a.close()
        b.close()


def test_ddl_command(capsys: pytest.CaptureFixture[str]) -> None:
    from memsession.service.cli import main

    assert main(["ddl"]) == 0
    assert capsys.readouterr().out == ddl()
    assert main(["ddl", "--schema", "app", "--table", "s", "--column", "key=id", "--column", "data=body"]) == 0
    assert capsys.readouterr().out == ddl("app", "s", {"key": "id", "data": "body"})
    assert main(["ddl", "--column", "key"]) == 2
    assert main(["ddl", "--column", "nope=x"]) == 2


def test_session_cache_over_postgres(postgres_url: str) -> None:
    """Evicted sessions come back from the table; a cold process serves them; unknown ids are cached."""
    from memsession import SessionCache, new_id
    from persist.persistence import PersistConfig

    sids = [new_id() for _ in range(3)]
    config = PersistConfig(mode="write_through", negative_ttl=60.0)
    with SessionCache(persistence=Persistence(PostgresStore(postgres_url, create_table=True), config), maxsize=2) as cache:
        for i, sid in enumerate(sids):
            cache.set(sid, {"n": i, "b": b"\x00"})
        assert sids[0] not in cache
        assert cache.get(sids[0]) == {"n": 0, "b": b"\x00"}
        unknown = new_id()
        assert cache.get(unknown) is None and cache.get(unknown) is None
        stats = cache.stats()["persistence"]
        assert stats["read_hits"] == 1 and stats["read_misses"] == 1 and stats["negative_hits"] == 1
        cache.destroy(sids[1])
    with SessionCache(persistence=Persistence(PostgresStore(postgres_url), PersistConfig(preload=True))) as cold:
        assert len(cold) == 2
        assert cold.get(sids[2]) == {"n": 2, "b": b"\x00"}
        assert cold.get(sids[1]) is None


def test_refused_rows_are_named_and_do_not_block_the_rest(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from memsession import SessionCache, StoreRejected, new_id
    from persist.persistence import PersistConfig

    store = PostgresStore(postgres_url, create_table=True)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("""ALTER TABLE memsession ADD CONSTRAINT no_poison CHECK (sess::text NOT LIKE '%poison%')""")
    with pytest.raises(StoreRejected) as info:
        store.save([make_test_record("one", {"poison": "secret-value"})])
    assert info.value.keys == ["one"] and "secret-value" not in str(info.value)
    with pytest.raises(StoreRejected) as info:
        store.save([make_test_record("a", {"poison": 1}), make_test_record("b")])
    assert info.value.keys is None and store.load("b") is None
    with SessionCache(persistence=Persistence(store, PersistConfig(flush_interval=3600.0))) as cache:
        sids = [new_id() for _ in range(30)]
        for i, sid in enumerate(sids):
            cache.set(sid, {"poison": "secret-value"} if i == 11 else {"i": i})
        assert cache.persistence is not None
        cache.persistence.flush()
        assert cache.stats()["persistence"]["rejected"] == 1
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT count(*) FROM memsession").fetchone() == (29,)
    assert "secret-value" not in caplog.text


def test_statement_timeout_is_set_on_the_stores_connections(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, statement_timeout=2.5)
    try:
        with store.pool.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("2500ms",)
    finally:
        store.close()


# -- clear: the watermark row ---------------------------------------------------------


def _waiting_on_locks(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
        assert row is not None
        return int(row[0])


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_watermark_is_one_reserved_row(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, create_table=True)
    try:
        store.save([make_test_record("k", version=300)])
        store.clear(200)
        store.clear(100)
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute("SELECT sid, version, expire, deleted, sess::text FROM memsession ORDER BY sid").fetchall()
        assert rows == [("k", 300, T0 + 3600, False, '{"user":"k"}'), (WATERMARK_KEY, 200, math.inf, True, "{}")]
        assert not is_valid_sid(WATERMARK_KEY)
        assert [r.key for r in store.load_all(0.0)] == ["k"]
        assert store.load(WATERMARK_KEY) is None
        assert store.delete([WATERMARK_KEY]) == 0
        assert store.purge(math.inf) == 1  # the session; the row has expire = Infinity too
        assert store.save([make_test_record("late", version=200)]) == 0
    finally:
        store.close()


def test_watermark_survives_a_server_restart(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> None:
    own = PostgresServer("clear")
    request.addfinalizer(own.stop)
    own.start()
    store = PostgresStore(own.url, create_table=True)
    try:
        store.save([make_test_record("old", version=100)])
        assert store.clear(200) == 1
        own.restart()
        assert store.save([make_test_record("old", version=150)]) == 0
        assert store.load("old") is None
    finally:
        store.close()


def test_live_rows_below_the_watermark_are_never_read(postgres_url: str) -> None:
    """Belt and braces: a live row a guard-less writer slipped in stays invisible; the next higher clear removes it.

    A tombstone below the watermark is read as usual, and no clear removes it.
    """
    store = PostgresStore(postgres_url, create_table=True)
    try:
        store.clear(200)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO memsession VALUES ('sneaky', '{}', 150, 1, 0, 0, 'Infinity', false),"
                " ('tomb', '{}', 150, 1, 0, 0, 'Infinity', true)"
            )
        assert store.load("sneaky") is None
        tomb = store.load("tomb")
        assert tomb is not None and tomb.deleted and tomb.version == 150
        assert list(store.load_all(0.0)) == [tomb]
        assert store.clear(200) == 0  # already covered: no lock, no scan
        assert store.clear(250) == 1
        assert store.load("tomb") == tomb
    finally:
        store.close()


def test_clear_waits_for_a_save_in_flight_and_removes_its_live_rows(postgres_url: str) -> None:
    """A save that read the old watermark commits after the clear began: the clear still removes its live rows.

    The tombstones the save wrote stay.
    """
    store = PostgresStore(postgres_url, create_table=True, max_size=4)
    try:
        store.save([make_test_record("held", version=50)])
        old = [make_test_record(f"old{i}", version=100 + i) for i in range(50)]
        tombs = [make_test_record(f"tomb{i}", version=100 + i, deleted=True) for i in range(5)]
        with psycopg.connect(postgres_url) as holder:
            # The save blocks on this row lock after it has inserted its new rows, uncommitted.
            holder.execute("SELECT 1 FROM memsession WHERE sid = 'held' FOR UPDATE")
            saving, saved = _in_thread(lambda: store.save([*old, *tombs, make_test_record("held", version=60)]))
            _wait_for(lambda: _waiting_on_locks(postgres_url) == 1)
            clearing, cleared = _in_thread(lambda: store.clear(200))
            _wait_for(lambda: _waiting_on_locks(postgres_url) == 2)
            holder.commit()
            saving.join(20)
            clearing.join(20)
        assert saved == [56] and cleared == [51]
        assert sorted(store.load_all(0.0), key=lambda r: r.key) == tombs
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT count(*) FROM memsession WHERE version <= 200").fetchone() == (6,)
            assert conn.execute(
                "SELECT count(*) FROM memsession WHERE version <= 200 AND NOT deleted"
            ).fetchone() == (0,)
    finally:
        store.close()


def test_saves_during_a_clear_wait_and_see_the_new_watermark(postgres_url: str) -> None:
    """Live records below the new watermark are ignored; tombstones below it are written, batched or one."""
    store = PostgresStore(postgres_url, create_table=True, max_size=5)
    try:
        store.save([make_test_record("held", version=50)])
        with psycopg.connect(postgres_url) as holder:
            # The clear blocks on this row in its DELETE, holding its table lock.
            holder.execute("SELECT 1 FROM memsession WHERE sid = 'held' FOR UPDATE")
            clearing, cleared = _in_thread(lambda: store.clear(200))
            _wait_for(lambda: _waiting_on_locks(postgres_url) == 1)
            # Reads don't wait for the clear (which has not committed: they see the old state).
            reading, read = _in_thread(lambda: (store.load("held"), [r.key for r in store.load_all(0.0)]))
            reading.join(10)
            assert not reading.is_alive() and read[0][0] is not None and read[0][1] == ["held"]
            batch = [make_test_record(f"old{i}", version=100 + i) for i in range(20)]
            batch.append(make_test_record("batch-tomb", version=120, deleted=True))
            saving, saved = _in_thread(lambda: store.save(batch))
            one, saved_one = _in_thread(lambda: store.save([make_test_record("one", version=199)]))
            tomb, saved_tomb = _in_thread(lambda: store.save([make_test_record("tomb", version=150, deleted=True)]))
            newer, saved_newer = _in_thread(lambda: store.save([make_test_record("newer", version=201)]))
            _wait_for(lambda: _waiting_on_locks(postgres_url) == 5)
            holder.commit()
            for thread in (clearing, saving, one, tomb, newer):
                thread.join(20)
        assert cleared == [1] and saved == [1] and saved_one == [0] and saved_tomb == [1] and saved_newer == [1]
        assert sorted(r.key for r in store.load_all(0.0)) == ["batch-tomb", "newer", "tomb"]
    finally:
        store.close()


def test_concurrent_clears_and_late_saves_leave_nothing_cleared(postgres_url: str) -> None:
    """Two stores on one table, one saving old records while the other clears: no error, no deadlock.

    No live record below the last watermark is left, and every tombstone is. A
    smoke test: the two tests above pin the interleavings themselves.
    """
    saver = PostgresStore(postgres_url, create_table=True)
    clearer = PostgresStore(postgres_url, create_table=True)
    stop = threading.Event()
    errors: list[BaseException] = []
    tombstones = 0

    def save_old() -> None:
        nonlocal tombstones
        n = 0
        try:
            while not stop.is_set():
                saver.save(
                    [
                        make_test_record(f"k{n}-{i}", version=1 + (n * 7 + i) % 1000, deleted=i % 10 == 0)
                        for i in range(200)
                    ]
                )
                tombstones += 20
                n += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=save_old)
    thread.start()
    try:
        for watermark in range(100, 1100, 100):
            clearer.clear(watermark)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert tombstones
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM memsession WHERE version <= 1000 AND NOT deleted"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM memsession WHERE deleted AND sid <> %s", [WATERMARK_KEY]
        ).fetchone() == (tombstones,)
    saver.close()
    clearer.close()


def test_bad_clear_version_is_a_config_error(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, create_table=True)
    try:
        with pytest.raises(ConfigError) as info:
            store.clear(-5)
        assert info.value.option == "version" and "postgres" in str(info.value)
    finally:
        store.close()


def test_a_repeated_clear_takes_no_lock(postgres_url: str) -> None:
    """Every replica repeats a clear: once the watermark covers it, writers are not held up."""
    # A clear that waited for the lock would time out (StoreUnavailable) within seconds.
    store = PostgresStore(postgres_url, create_table=True, max_size=1, statement_timeout=1.0)
    try:
        store.clear(200)
        with psycopg.connect(postgres_url) as writer:
            writer.execute("INSERT INTO memsession VALUES ('w', '{}', 300, 1, 0, 0, 'Infinity', false)")
            # The writer's transaction holds ROW EXCLUSIVE: a clear that locked would wait.
            assert store.clear(200) == 0 and store.clear(150) == 0
            writer.rollback()
    finally:
        store.close()
