"""PostgresStore saves the rows of new keys by COPY in a large batch: the same contract, and nothing lost to a race.

``copy_rows=1`` sends every save through the copying path
(``persist.postgres.saving``), so the whole store contract runs on it; the
other tests check the batches it is meant for and the one way a copy can
fail, a key that something else wrote meanwhile without the key locks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
import pytest

from memsession.changes import merge_records
from persist.postgres import PostgresStore
from persist.postgres.saving import COPY_ROWS
from persist.testing import T0, StoreContract, make_test_delta, make_test_record

V = 1 << 40


class TestPostgresCopyingContract(StoreContract):
    batch_size = 2000

    @pytest.fixture
    def make_store(self, postgres_url: str):
        return lambda: PostgresStore(postgres_url, create_table=True, max_size=4, copy_rows=1)


@pytest.fixture
def store(postgres_url: str):
    store = PostgresStore(postgres_url, create_table=True)
    yield store
    store.close()


def test_a_large_batch_of_new_and_stored_keys_is_merged_as_single_saves_would_be(store: PostgresStore) -> None:
    stored = [make_test_record(f"k{i}", {"a": i, "shared": "old"}, version=V + i) for i in range(0, 2 * COPY_ROWS, 2)]
    assert store.save(stored) == len(stored)
    batch = [make_test_delta(f"k{i}", {"b": i, "shared": "new"}, version=V + 10_000 + i) for i in range(2 * COPY_ROWS)]
    assert store.save(batch) == len(batch)
    held = {r.key: r for r in stored}
    for delta in batch:
        want = merge_records(held.get(delta.key), delta)
        assert want is not None
        got = store.load(delta.key)
        assert got is not None and got.data == want.data and got.stamps == want.stamps
        assert (got.version, got.origin, got.expires) == (want.version, want.origin, want.expires)


def test_a_copied_batch_keeps_what_json_escapes_and_binary_floats_must_keep(store: PostgresStore) -> None:
    odd = {"nul": "a\x00b", "tab\tkey": "line\nbreak", "back\\slash": "\\N", "bytes": b"\x00\xff", "f": 0.1,
           "neg0": -0.0, "tiny": 5e-324, "quote": '"', "emoji": "\U0001f600", "u64": (1 << 64) - 1}
    records = [make_test_record(f"odd{i}", {**odd, "i": i}, created=T0 + i / 7, expires=float("inf") if i % 2 else None)
               for i in range(COPY_ROWS)]
    assert store.save(records) == COPY_ROWS
    for record in records:
        assert store.load(record.key) == record


def _backend_waits_on_a_lock(url: str, application: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = %s",
            [application],
        ).fetchone()
    return bool(row and row[0])


def test_a_key_written_meanwhile_without_the_locks_is_merged_not_lost(postgres_url: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    application = "memsession-copy-race"
    store = PostgresStore(f"{postgres_url}?application_name={application}", create_table=True, copy_rows=1)
    try:
        ours = make_test_delta("raced", {"ours": 1}, version=V + 2)
        with psycopg.connect(postgres_url) as foreign:  # a transaction of its own, no key locks
            foreign.execute(
                "INSERT INTO memsession (sid, sess, version, origin, created, accessed, expire, deleted)"
                " VALUES (%s, %s, %s, 9, %s, %s, %s, false)",
                ["raced", '{"theirs": 2}', V + 1, T0, T0, T0 + 3600.0],
            )
            saved: list[Any] = []
            errors: list[BaseException] = []

            def save() -> None:
                try:
                    saved.append(store.save([ours]))
                except BaseException as exc:  # noqa: BLE001 (handed to the test thread, which fails on it)
                    errors.append(exc)

            saver = threading.Thread(target=save)
            with caplog.at_level(logging.INFO, logger="memsession.persist"):
                saver.start()
                deadline = time.monotonic() + 30
                while not _backend_waits_on_a_lock(postgres_url, application):  # the copy waits on the key
                    assert time.monotonic() < deadline, "the copy never waited for the other transaction"
                    time.sleep(0.02)
                foreign.commit()
                saver.join(30)
        assert not saver.is_alive() and not errors and saved == [1]
        got = store.load("raced")
        assert got is not None and got.data == {"ours": 1, "theirs": 2}
        assert "saving it again by upserts" in caplog.text
    finally:
        store.close()
