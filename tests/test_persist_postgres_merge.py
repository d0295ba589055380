"""PostgresStore merging per key: tables made before it, what its merge columns hold, how a save is sent."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from memsession.errors import StoreError, StoreUnavailable
from persist.postgres import PostgresStore, ddl
from persist.postgres.table import KEY_COMMENT
from persist.testing import T0, make_test_delta, make_test_record
from tests.servers import unique_name

#: The table as ``memsession ddl`` made it before records carried stamps and ``seen``.
OLD_TABLE = f"""
CREATE TABLE "memsession" (
    "sid" text COLLATE "C" PRIMARY KEY,
    "sess" json NOT NULL,
    "version" bigint NOT NULL,
    "origin" bigint NOT NULL,
    "created" double precision NOT NULL,
    "accessed" double precision NOT NULL,
    "expire" double precision NOT NULL,
    "deleted" boolean NOT NULL DEFAULT false
);
CREATE INDEX "memsession_expire_idx" ON "memsession" ("expire");
COMMENT ON COLUMN "memsession"."sid" IS '{KEY_COMMENT}';
INSERT INTO "memsession" VALUES ('old', '{{"user":"ada","cart":[1]}}', 100, 7, {T0}, {T0}, 'Infinity', false);
"""


def _columns(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'memsession' ORDER BY ordinal_position"
        ).fetchall()
    return [name for (name,) in rows]


@pytest.fixture
def old_table(postgres_url: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(OLD_TABLE)
    return postgres_url


@pytest.mark.parametrize("create_table", [False, True])
def test_opening_an_old_table_adds_the_merge_columns_and_its_rows_load_whole(old_table: str, create_table: bool) -> None:
    store = PostgresStore(old_table, create_table=create_table)
    try:
        assert _columns(old_table)[-2:] == ["stamps", "seen"]
        old = store.load("old")
        assert old is not None and old.data == {"user": "ada", "cart": [1]}
        assert old.stamps is None and old.seen is None  # every key at the row's own version
        assert store.save([make_test_delta("old", {"cart": [1, 2]}, version=200, origin=9)]) == 1
        merged = store.load("old")
        assert merged is not None and merged.data == {"user": "ada", "cart": [1, 2]}
        assert merged.stamps == {"user": (100, 7), "cart": (200, 9)} and merged.seen == {7: 100, 9: 200}
    finally:
        store.close()


def test_a_table_that_has_the_columns_is_not_altered_again(old_table: str) -> None:
    """The upgrade takes the table's strongest lock: a store opened later must not, or it waits for readers."""
    PostgresStore(old_table).close()
    with psycopg.connect(old_table) as reader:
        reader.execute("SELECT count(*) FROM memsession").fetchone()  # holds ACCESS SHARE until rollback
        store = PostgresStore(old_table, statement_timeout=1.0, create_table=True)
        try:
            assert store.load("old") is not None
        finally:
            store.close()
        reader.rollback()


def test_the_shipped_ddl_upgrades_an_old_table(old_table: str) -> None:
    with psycopg.connect(old_table, autocommit=True) as conn:
        conn.execute(ddl())
        conn.execute(ddl())  # and runs again as it is
    assert _columns(old_table)[-2:] == ["stamps", "seen"]


@pytest.fixture
def dml_role(postgres_url: str) -> Iterator[str]:
    """A role that may read and write the table but does not own it."""
    role = unique_name("dml")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "memsession" TO "{role}"')
    yield role
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def test_a_role_that_does_not_own_an_old_table_is_told_to_run_the_ddl(old_table: str, dml_role: str) -> None:
    url = old_table.replace("postgresql://postgres@", f"postgresql://{dml_role}@", 1)
    with pytest.raises(StoreError, match="memsession ddl") as info:
        PostgresStore(url)
    assert info.value.op == "upgrade" and not isinstance(info.value, StoreUnavailable)
    with psycopg.connect(old_table, autocommit=True) as conn:
        conn.execute(ddl())  # what the owner runs
    store = PostgresStore(url)
    try:
        assert store.save([make_test_delta("old", {"n": 1}, version=300)]) == 1
    finally:
        store.close()


def test_the_merge_columns_hold_stamps_and_seen_as_json(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, create_table=True)
    try:
        store.save([make_test_record("k", {"a": 1}, version=100, origin=1), make_test_record("plain", version=5)])
        store.save([make_test_delta("k", {"b": 2}, removed=["c"], version=200, origin=2)])
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT sid, stamps::text, seen::text FROM memsession ORDER BY sid").fetchall()
    assert rows == [
        ("k", '{"a":[100,1],"b":[200,2],"c":[200,2]}', '{"1":100,"2":200}'),
        ("plain", None, None),
    ]


def test_nul_escapes_in_values_and_keys_survive_a_batch(postgres_url: str) -> None:
    """The server can't de-escape \\u0000 into a json value: data and stamps travel as strings of JSON."""
    store = PostgresStore(postgres_url, create_table=True)
    try:
        records = [
            make_test_record("a", {"nul\x00key": "nul\x00value"}, version=100),
            make_test_delta("b", {"x": 1}, removed=["gone\x00key"], version=100),
        ]
        assert store.save(records) == 2
        loaded = store.load("b")
        assert store.load("a") == records[0]
        assert loaded is not None and loaded.stamps == {"x": (100, 7), "gone\x00key": (100, 7)}
    finally:
        store.close()


def test_saves_merge_without_pipeline_mode_too(postgres_url: str) -> None:
    """With a libpq before 14 (no pipeline mode) a save sends its statements one by one: the same merge."""
    store = PostgresStore(postgres_url, create_table=True)
    store.pipelined = False
    try:
        store.save([make_test_record("k", {"user": "ada"}, version=100)])
        assert store.save([make_test_delta("k", {"cart": [1]}, version=200), make_test_record("n", version=5)]) == 2
        loaded = store.load("k")
        assert loaded is not None and loaded.data == {"user": "ada", "cart": [1]}
        assert store.save([make_test_delta("k", {"cart": [1]}, version=200)]) == 0
    finally:
        store.close()
