"""The README's "write your own store" example passes the public contract suite, clear included."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from memsession import SessionCache, new_id
from persist.testing import StoreContract

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "own_store"))
from sqlite_store import SqliteStore

from persist import Persistence


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path):
        return lambda: SqliteStore(str(tmp_path / "sessions.db"))


def test_it_plugs_into_a_session_cache(tmp_path: Path) -> None:
    sid = new_id()
    with SessionCache(persistence=Persistence(SqliteStore(str(tmp_path / "s.db")))) as cache:
        cache.set(sid, {"user": "ada"})
    with SessionCache(persistence=Persistence(SqliteStore(str(tmp_path / "s.db")))) as cold:
        assert cold.get(sid) == {"user": "ada"}


def test_a_clear_reaches_it(tmp_path: Path) -> None:
    ended, kept = new_id(), new_id()
    with SessionCache(persistence=Persistence(SqliteStore(str(tmp_path / "s.db")))) as cache:
        cache.set(ended, {"user": "ada"})
        assert cache.persistence is not None
        cache.persistence.flush()
        cache.clear()
        cache.set(kept, {"user": "grace"})
    with SessionCache(persistence=Persistence(SqliteStore(str(tmp_path / "s.db")))) as cold:
        assert cold.get(ended) is None
        assert cold.get(kept) == {"user": "grace"}


def test_a_table_from_before_clears_gets_its_columns(tmp_path: Path) -> None:
    import sqlite3

    from persist.base import record_to_json
    from persist.testing import make_test_record

    old = make_test_record("old", version=5)
    db = sqlite3.connect(str(tmp_path / "s.db"))
    db.execute("CREATE TABLE sessions (key TEXT PRIMARY KEY, record BLOB, expires REAL)")
    db.execute("INSERT INTO sessions VALUES (?, ?, ?)", ["old", record_to_json(old), old.expires])
    db.commit()
    db.close()
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        assert store.load("old") == old
        store.save([make_test_record("new", version=9)])
        assert store.clear(6) == 1  # the migrated row has the version a clear compares
        assert store.load("old") is None and store.load("new") is not None
    finally:
        store.close()
