"""A session store for another database in a few dozen lines: SQLite.

The same shape fits any database with transactions or compare-and-set
(MongoDB, Redis with WATCH/MULTI, DynamoDB, ...): keep each record as one
JSON value, and in one transaction (or a compare-and-set that is retried)
read the stored record, write what ``merge_row`` makes of it, the new record
and the clear watermark (it ignores live records the watermark covers, never
tombstones), so two writers of one session never lose each other's keys;
hand reads through ``after_clear``; translate the driver's errors into
memsession's at the boundary. ``tests/test_persist_own_store.py`` proves it
with the public contract suite.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from memsession.errors import StoreClosed, StoreError
from memsession.session import Record
from persist.base import (
    after_clear,
    check_clear_version,
    coalesce,
    merge_row,
    record_from_json,
    record_to_json,
)

#: The clear watermark (none yet: 0).
WATERMARK = "(SELECT coalesce(max(version), 0) FROM watermark)"
#: Rows the clear watermark does not cover: ``cleared_by`` in SQL, negated.
#: Tombstones never are. Reads filter too, belt and braces.
NOT_CLEARED = f"NOT (NOT deleted AND version <= {WATERMARK})"


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()  # one connection: one thread (and transaction) at a time
        self._closed = False
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sessions"
            " (key TEXT PRIMARY KEY, record BLOB, expires REAL, version INTEGER, deleted INTEGER)"
        )
        self._add_clear_columns()
        self._db.execute("CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires)")
        # One row at most: the clear watermark.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS watermark (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER)"
        )

    def _add_clear_columns(self) -> None:
        """A table made before clears existed lacks ``version`` and ``deleted``: add and fill them."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        if {"version", "deleted"} <= columns:
            return
        with self._transaction("migrate"):
            for column in {"version", "deleted"} - columns:
                self._db.execute(f"ALTER TABLE sessions ADD COLUMN {column} INTEGER")
            for key, raw in self._db.execute("SELECT key, record FROM sessions").fetchall():
                record = record_from_json(raw)
                self._db.execute("UPDATE sessions SET version = ?, deleted = ? WHERE key = ?",
                                 [record.version, record.deleted, key])

    def _sql(self, op: str, query: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            if self._closed:
                raise StoreClosed("sqlite store is closed", store=self.name, op=op)
            try:
                return self._db.execute(query, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite {op} failed: {exc}", store=self.name, op=op) from exc

    @contextmanager
    def _transaction(self, op: str) -> Iterator[None]:
        with self._lock:  # read-compare-write in one transaction: no writer slips in between
            self._sql(op, "BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._sql(op, "ROLLBACK")
                raise
            self._sql(op, "COMMIT")

    def load(self, key: str) -> Record | None:
        rows = self._sql("load", f"SELECT record, {WATERMARK} FROM sessions WHERE key = ? AND {NOT_CLEARED}", [key])
        # Without the keys a clear covers in a record written before it.
        return after_clear(record_from_json(rows[0][0]), rows[0][1]) if rows else None

    def load_all(self, now: float) -> Iterator[Record]:
        self._sql("load_all", "SELECT 1")  # raises StoreClosed now, not at first next()
        return self._pages(now)

    def _pages(self, now: float) -> Iterator[Record]:
        after = ""
        while rows := self._sql(
            "load_all",
            f"SELECT key, record, {WATERMARK} FROM sessions WHERE key > ? AND expires > ? AND {NOT_CLEARED}"
            " ORDER BY key LIMIT 500",
            [after, now],
        ):
            for _, raw, watermark in rows:
                record = after_clear(record_from_json(raw), watermark)
                if record is not None:
                    yield record
            after = rows[-1][0]

    def save(self, records: Sequence[Record]) -> int:
        written = 0
        with self._transaction("save"):
            (cleared,) = self._sql("save", f"SELECT {WATERMARK}")[0]
            for record in coalesce(records).values():
                merged = merge_row(self.load(record.key), record, cleared)
                if merged is not None:
                    self._sql(
                        "save",
                        "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?)",
                        [merged.key, record_to_json(merged), merged.expires, merged.version, merged.deleted],
                    )
                    written += 1
        return written

    def clear(self, version: int) -> int:
        check_clear_version(version, self.name)
        with self._transaction("clear"):
            self._sql(
                "clear",
                "INSERT INTO watermark VALUES (0, ?)"
                " ON CONFLICT (id) DO UPDATE SET version = max(version, excluded.version)",
                [version],
            )
            # Live rows only: a tombstone may have beaten a live write above the watermark.
            return len(
                self._sql("clear", "DELETE FROM sessions WHERE NOT deleted AND version <= ? RETURNING 1", [version])
            )

    def delete(self, keys: Iterable[str]) -> int:
        return sum(len(self._sql("delete", "DELETE FROM sessions WHERE key = ? RETURNING 1", [k])) for k in set(keys))

    def purge(self, now: float) -> int:
        total = 0
        while batch := self._sql(
            "purge",
            "DELETE FROM sessions WHERE key IN (SELECT key FROM sessions WHERE expires <= ? LIMIT 1000) RETURNING 1",
            [now],
        ):
            total += len(batch)
        return total

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
