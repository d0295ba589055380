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

With a change log (``persist.postgres.changelog``), either way appends the
batch's log row (one per ``ROW_CHANGES`` records) after the rows themselves,
in the round trip of the commit: the log's per-host counter is the one lock
all of a host's batches share, so it is taken last and held the shortest.
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
from .changelog import ChangeLog
from .statements import COPY_TYPES, Statements, copy_row, keys_param, upsert_row

__all__ = ["COPY_ROWS", "save_batch"]

log = logging.getLogger("memsession.persist")

#: A save of at least this many records copies the rows of new keys (``PostgresStore(copy_rows=)``).
COPY_ROWS = 200

#: The record of a stored row read back under the locks (None: it can't be read, or a clear covers it).
StoredRecord = Callable[[Sequence[Any], int], Record | None]


def save_batch(conn: psycopg.Connection[Any], sql: Statements, batch: dict[str, Record], *,
               stored: StoredRecord, pipelined: bool, copy_rows: int = COPY_ROWS,
               changes: ChangeLog | None = None) -> int:
    """Merge ``batch`` (one record per key) into the table on ``conn``; how many rows were written.

    A batch of at least ``copy_rows`` records copies the rows of new keys.
    ``changes``: the log that gets the records written, in the same transaction.
    """
    keys = keys_param(list(batch))
    if len(batch) < copy_rows:
        return _upserting(conn, sql, batch, keys, stored, pipelined, changes)
    try:
        return _copying(conn, sql, batch, keys, stored, pipelined, changes)
    except psycopg.errors.UniqueViolation:
        log.info("PostgreSQL save: a key the batch was copying was written meanwhile; saving it again by upserts")
        return _upserting(conn, sql, batch, keys, stored, pipelined, changes)


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
               stored: StoredRecord, pipelined: bool, changes: ChangeLog | None) -> int:
    # Pipelined: the transaction, its locks and the read go in one round trip, the
    # write (and its log rows) and the commit in another (the server still runs them
    # one after another).
    with conn.pipeline() if pipelined else contextlib.nullcontext(), conn.transaction():
        watermark, held = _read_locked(conn, sql, keys, stored)
        merged = [
            row for key, record in batch.items()
            if (row := merge_row(held.get(key), record, watermark)) is not None
        ]
        if not merged:
            return 0
        written = conn.execute(sql.upsert, [orjson.dumps([upsert_row(row) for row in merged]).decode()])
        if changes is not None:
            changes.record_rows(conn, merged)
    return written.rowcount


def _copying(conn: psycopg.Connection[Any], sql: Statements, batch: dict[str, Record], keys: str,
             stored: StoredRecord, pipelined: bool, changes: ChangeLog | None) -> int:
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
        written: list[Record] = []
        for key, record in batch.items():
            merged = merge_row(held.get(key), record, watermark)
            if merged is None:
                continue
            written.append(merged)
            if key in held:
                rows.append(upsert_row(merged))
            else:
                fresh.append(copy_row(merged))
        if fresh:
            try:
                with conn.cursor() as cur, cur.copy(sql.copy) as copy:
                    copy.set_types(COPY_TYPES)
                    for row in fresh:
                        copy.write_row(row)
            except OverflowError as exc:
                # An int the column can't hold (an origin above 2**63 - 1), refused here by the
                # binary dumper, not by the server: the same refusal as the upsert's.
                raise psycopg.DataError(f"a value is out of range for its column: {exc}") from exc
        with pipeline():
            upserted = conn.execute(sql.upsert, [orjson.dumps(rows).decode()]) if rows else None
            if changes is not None:
                changes.record_rows(conn, written)
            conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    return len(fresh) + (upserted.rowcount if upserted is not None else 0)
