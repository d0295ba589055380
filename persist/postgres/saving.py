"""``PostgresStore.save``: lock the batch's keys, read what is stored, merge in Python, write, in one transaction.

The statements are ``persist.postgres.statements``'s (their docstring says
why each lock is taken). A batch is written one of two ways:

* ``upsert``: every merged row in one ``INSERT ... ON CONFLICT DO UPDATE``
  from one JSON array; pipelined, the whole save is two round trips.
* for a batch of at least ``copy_rows`` records (``COPY_ROWS``), the rows of keys the table
  does not hold go in by ``COPY`` and only the others by ``upsert``: a plain
  insert costs the server far less than the speculative insert of an upsert,
  and the rows skip the JSON array. COPY does not run in pipeline mode, so
  this takes a few more round trips, which only a large batch makes up for.

Copying a key the read did not find is safe: every save of that key waits
for this one's key lock, and the watermark that kept cleared records out of
the merge holds until commit (``save_lock``). Something else that writes the
table without the locks could still add the key meanwhile; the copy then
fails on the key and the batch is saved again, by upserts alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import psycopg

from memsession.session import Record

from ..base import merge_row
from .statements import COPY_TYPES, Statements, copy_row, keys_param, upsert_row

__all__ = ["COPY_ROWS", "save_batch"]

log = logging.getLogger("memsession.persist")

#: A save of at least this many records copies the rows of new keys (``PostgresStore(copy_rows=)``).
COPY_ROWS = 200

#: The record of a stored row read back under the locks (None: it can't be read, or a clear covers it).
StoredRecord = Callable[[Sequence[Any], int], Record | None]


def save_batch(conn: psycopg.Connection[Any], sql: Statements, batch: dict[str, Record], *,
               stored: StoredRecord, pipelined: bool, copy_rows: int = COPY_ROWS) -> int:
    """Merge ``batch`` (one record per key) into the table on ``conn``; how many rows were written.

    A batch of at least ``copy_rows`` records copies the rows of new keys.
    """
    keys = keys_param(list(batch))
    if len(batch) < copy_rows:
        return _upserting(conn, sql, batch, keys, stored, pipelined)
    try:
        return _copying(conn, sql, batch, keys, stored, pipelined)
    except psycopg.errors.UniqueViolation:
        log.info("PostgreSQL save: a key the batch was copying was written meanwhile; saving it again by upserts")
        return _upserting(conn, sql, batch, keys, stored, pipelined)


def _read_locked(conn: psycopg.Connection[Any], sql: Statements, keys: str,
                 stored: StoredRecord) -> tuple[int, dict[str, Record | None]]:
    """The watermark and, by key, every row the table holds of ``keys``, read under the locks.

    A row that can't be read or that a clear covers is there all the same: None.
    """
    conn.execute(sql.save_lock)
    conn.execute(sql.key_locks, [keys])
    found = conn.execute(sql.save_read, [keys]).fetchall()
    watermark = int(found[0][0])
    return watermark, {row[1]: stored(row[1:], watermark) for row in found if row[1] is not None}


def _upserting(conn: psycopg.Connection[Any], sql: Statements, batch: dict[str, Record], keys: str,
               stored: StoredRecord, pipelined: bool) -> int:
    # Pipelined: the transaction, its locks and the read go in one round trip, the
    # write and the commit in another (the server still runs them one after another).
    with conn.pipeline() if pipelined else contextlib.nullcontext(), conn.transaction():
        watermark, held = _read_locked(conn, sql, keys, stored)
        rows = [
            upsert_row(merged) for key, record in batch.items()
            if (merged := merge_row(held.get(key), record, watermark)) is not None
        ]
        if not rows:
            return 0
        written = conn.execute(sql.upsert, [orjson.dumps(rows).decode()])
    return written.rowcount


def _copying(conn: psycopg.Connection[Any], sql: Statements, batch: dict[str, Record], keys: str,
             stored: StoredRecord, pipelined: bool) -> int:
    # BEGIN goes with the read and COMMIT with the upsert, so the COPY (which can't be
    # pipelined) adds two round trips, not five: in the sidecar each costs the writer a wait
    # for the interpreter lock.
    pipeline = conn.pipeline if pipelined else contextlib.nullcontext
    try:
        with pipeline():
            conn.execute("BEGIN")
            watermark, held = _read_locked(conn, sql, keys, stored)
        fresh: list[tuple[Any, ...]] = []
        rows: list[dict[str, Any]] = []
        for key, record in batch.items():
            merged = merge_row(held.get(key), record, watermark)
            if merged is None:
                continue
            if key in held:
                rows.append(upsert_row(merged))
            else:
                fresh.append(copy_row(merged))
        if fresh:
            with conn.cursor() as cur, cur.copy(sql.copy) as copy:
                copy.set_types(COPY_TYPES)
                for row in fresh:
                    copy.write_row(row)
        with pipeline():
            upserted = conn.execute(sql.upsert, [orjson.dumps(rows).decode()]) if rows else None
            conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return len(fresh) + (upserted.rowcount if upserted is not None else 0)
