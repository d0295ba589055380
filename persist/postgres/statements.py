"""The SQL of PostgresStore, rendered once per table: the key locks of a save and the clear watermark in SQL.

A save merges in Python (``persist.base.merge_row``, the one merge of every
replica), so it is a read-merge-write in one transaction, one statement per
step for the whole batch:

1. ``save_lock``: the table in ROW EXCLUSIVE mode, which writers share and a
   clear's lock waits for (see ``clear_lock`` below), so the watermark the
   save reads next holds until it commits;
2. ``key_locks``: a transaction-level advisory lock per key of the batch
   (on the key's hash, per table), taken in one order by every save, so two
   saves of one key, in this process or another, take turns and two batches
   never deadlock;
3. ``save_read``: the watermark and the stored rows of the batch's keys, read
   after the locks are held (in a statement of its own: a statement's snapshot
   is taken before it runs, so one that took the locks too could read rows
   older than the writer it waited for);
4. ``upsert``: the merged rows, one ``INSERT ... SELECT FROM
   json_to_recordset(<the batch as one JSON array>) ... ON CONFLICT DO
   UPDATE`` that writes them as they are; in a large batch, the rows of keys
   step 3 did not find by ``copy`` first (``persist.postgres.saving``).

The SQL version guard of a whole-record upsert (``WHERE`` the stored
``(version, origin)`` is older) no longer decides: a merged row may keep the
stored ``(version, origin)`` with a newer key from an older change of another
writer, and an older change may add to ``seen``. The key locks make the read
and the write one step, the merge decides what is written, and ``upsert``
only keeps its watermark test, belt and braces.

The clear watermark lives in the same table, in one reserved row (key
``persist.base.WATERMARK_KEY``, which no session id can be): ``version`` holds
the watermark, ``expires`` is infinite and ``deleted`` true, and every
statement here leaves the row out of what it reads, deletes or purges. One
table keeps the DDL users run unchanged; the row appears at the first clear.
Reads return the watermark with the rows, for ``persist.base.after_clear``,
and leave out the live rows it covers (``persist.base.cleared_by`` in SQL:
``NOT deleted AND version <= watermark``; tombstones always pass); ``clear``
raises the row and deletes the live rows it covers under a table lock that
waits for saves in flight, so no save can slip a cleared live record in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import sql

from memsession.session import Record

from ..base import WATERMARK_KEY, encode_data, record_to_dict
from ..jsonstamps import seen_to_json, stamps_to_json
from .table import FIELDS, TableNames

#: The columns of type json, read as text.
JSON_FIELDS = ("data", "stamps", "seen")

__all__ = ["COPY_TYPES", "Statements", "copy_row", "keys_param", "statements_for", "upsert_row"]


@dataclass(frozen=True)
class Statements:
    """Every statement the store runs, as SQL text with ``%s`` placeholders."""

    save_lock: str
    key_locks: str
    save_read: str
    upsert: str
    copy: str
    load: str
    page: str
    delete: str
    purge: str
    clear_lock: str
    watermark: str
    clear_raise: str
    clear_delete: str


def upsert_row(record: Record) -> dict[str, Any]:
    """A record as one element of ``upsert``'s JSON batch: the json columns as strings of JSON (see there)."""
    row = record_to_dict(record)
    row["d"] = encode_data(record.data, record.flat).decode()
    for name in ("s", "w"):
        if name in row:
            row[name] = orjson.dumps(row[name]).decode()
    return row


#: How ``copy`` sends each column, in ``FIELDS`` order (``table``'s DDL). The json columns go as
#: text: their binary form is the JSON text itself, which ``copy_row`` encoded already (a json
#: dumper would encode that str once more, into a JSON string).
COPY_TYPES = ("text", "text", "int8", "int8", "float8", "float8", "float8", "bool", "text", "text")


def copy_row(record: Record) -> tuple[Any, ...]:
    """A record as one row of ``copy``, the columns in ``FIELDS`` order (json ones as JSON text)."""
    stamps, seen = stamps_to_json(record.stamps), seen_to_json(record.seen)
    return (
        record.key, encode_data(record.data, record.flat).decode(), record.version, record.origin,
        record.created, record.accessed, record.expires, record.deleted,
        None if stamps is None else orjson.dumps(stamps).decode(),
        None if seen is None else orjson.dumps(seen).decode(),
    )


def keys_param(keys: list[str]) -> str:
    """The keys of a save as ``key_locks`` and ``save_read`` take them: one JSON array."""
    return orjson.dumps(keys).decode()


def _lock_space(table: str) -> int:
    """The first key of the advisory locks on a table's keys: a 32-bit hash of its qualified name."""
    return int.from_bytes(hashlib.sha256(table.encode()).digest()[:4], "big", signed=True)


def statements_for(names: TableNames) -> Statements:
    """The statements for the table ``names`` describes, each rendered to text."""
    c = names.col
    t = names.table_ident
    cols = sql.SQL(", ").join(c(f) for f in FIELDS)

    def read_cols(alias: sql.Composable | None) -> sql.Composed:
        """Every column, the json ones as text (parsed once, by orjson), optionally qualified."""
        def col(f: str) -> sql.Composable:
            return c(f) if alias is None else sql.SQL("{}.{}").format(alias, c(f))

        return sql.SQL(", ").join(
            sql.SQL("{}::text").format(col(f)) if f in JSON_FIELDS else col(f) for f in FIELDS
        )

    s = sql.Identifier("s")
    e = sql.Identifier("excluded")
    reserved = sql.Literal(WATERMARK_KEY)
    # No reserved row yet: never cleared. Read once per statement (an InitPlan).
    watermark = sql.SQL("coalesce((SELECT {v} FROM {t} WHERE {key} = {r}), 0)").format(
        v=c("version"), t=t, key=c("key"), r=reserved
    )

    def cleared(deleted: sql.Composable, version: sql.Composable) -> sql.Composed:
        """``persist.base.cleared_by`` in SQL: live and at or below the watermark."""
        return sql.SQL("(NOT {d} AND {v} <= {w})").format(d=deleted, v=version, w=watermark)

    # Shared with saves (and purges), exclusive of a clear's SHARE ROW EXCLUSIVE.
    save_lock = sql.SQL("LOCK TABLE {t} IN ROW EXCLUSIVE MODE").format(t=t)
    # Sorted in a subquery of its own (which the planner does not flatten), so every
    # save takes its locks in one order. The table's name keeps tables apart.
    # The keys travel as one JSON array of strings (``keys_param``), as the rows do.
    key_locks = sql.SQL(
        "SELECT pg_advisory_xact_lock({space}, h)"
        " FROM (SELECT DISTINCT hashtext(k) AS h FROM json_array_elements_text(%s::json) AS k ORDER BY h) AS sorted"
    ).format(space=sql.Literal(_lock_space(t.as_string(None))))
    # At least one row, the watermark's; one more per stored row of the keys.
    save_read = sql.SQL(
        "SELECT w.v, {cols} FROM (SELECT {watermark} AS v) AS w"
        " LEFT JOIN {t} AS s ON {sk} = ANY(ARRAY(SELECT json_array_elements_text(%s::json))) AND {sk} <> {r}"
    ).format(cols=read_cols(s), watermark=watermark, t=t, sk=sql.SQL("s.{}").format(c("key")), r=reserved)
    # The batch travels as one JSON array (orjson on our side, one parse on the
    # server's): far cheaper than binding ten arrays value by value. Data, stamps
    # and seen ride as strings of JSON, so escapes like \u0000 (in a value or a
    # key) reach the columns as written: the server refuses to de-escape them
    # into a nested json value.
    upsert = sql.SQL(
        "INSERT INTO {t} AS s ({cols})"
        " SELECT b.k, b.d::json, b.v, b.o, b.c, b.a, coalesce(b.e, 'Infinity'::float8), b.x, b.s::json, b.w::json"
        " FROM json_to_recordset(%s::json)"
        " AS b(k text, d text, v bigint, o bigint, c float8, a float8, e float8, x boolean, s text, w text)"
        " WHERE NOT {cleared}"
        " ON CONFLICT ({key}) DO UPDATE SET {sets}"
    ).format(
        t=t, cols=cols, cleared=cleared(sql.SQL("b.x"), sql.SQL("b.v")), key=c("key"),
        sets=sql.SQL(", ").join(sql.SQL("{} = {}.{}").format(c(f), e, c(f)) for f in FIELDS if f != "key"),
    )
    # The rows of keys the table does not hold, in FIELDS order (``copy_row``), in binary: the
    # times go as they are, no float is formatted or parsed (``COPY_TYPES``).
    copy = sql.SQL("COPY {t} ({cols}) FROM STDIN (FORMAT BINARY)").format(t=t, cols=cols)
    # Reads leave out the live rows a clear covers (belt and braces: saves already
    # do) and the reserved row, a tombstone-shaped row that is no session; the
    # watermark comes along for the keys it covers inside newer rows.
    not_cleared = sql.SQL("NOT {}").format(cleared(c("deleted"), c("version")))
    load = sql.SQL("SELECT {cols}, {w} FROM {t} WHERE {key} = %s AND {key} <> {r} AND {nc}").format(
        cols=read_cols(None), w=watermark, t=t, key=c("key"), r=reserved, nc=not_cleared
    )
    page = sql.SQL(
        "SELECT {cols}, {w} FROM {t} WHERE {key} > %s AND {exp} > %s AND {key} <> {r} AND {nc}"
        " ORDER BY {key} LIMIT %s"
    ).format(cols=read_cols(None), w=watermark, t=t, key=c("key"), exp=c("expires"), r=reserved, nc=not_cleared)
    delete = sql.SQL("DELETE FROM {t} WHERE {key} = ANY(%s) AND {key} <> {r}").format(
        t=t, key=c("key"), r=reserved
    )
    purge = sql.SQL(
        "DELETE FROM {t} WHERE {key} IN (SELECT {key} FROM {t} WHERE {exp} <= %s AND {key} <> {r}"
        " LIMIT %s FOR UPDATE SKIP LOCKED)"
    ).format(t=t, key=c("key"), exp=c("expires"), r=reserved)
    # SHARE ROW EXCLUSIVE conflicts with every INSERT/UPDATE/DELETE and with a
    # save's ROW EXCLUSIVE (and itself), not with reads. A save reads the
    # watermark before it writes; without the lock, a save that read it before a
    # clear committed could write a cleared live record after the clear's DELETE
    # had looked. With it, the clear waits for saves in flight (its DELETE then
    # sees their rows), and saves that come later wait for the clear and read the
    # watermark it raised.
    clear_lock = sql.SQL("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").format(t=t)
    select_watermark = sql.SQL("SELECT {watermark}").format(watermark=watermark)
    now = sql.SQL("extract(epoch FROM clock_timestamp())::float8")
    clear_raise = sql.SQL(
        "INSERT INTO {t} AS s ({cols}) VALUES ({r}, '{{}}', %s, 0, {now}, {now}, 'Infinity', true, NULL, NULL)"
        " ON CONFLICT ({key}) DO UPDATE SET {v} = greatest({sv}, {ev}),"
        " {a} = CASE WHEN {ev} > {sv} THEN {ea} ELSE {sa} END"
        " RETURNING {v}"
    ).format(
        t=t, cols=cols, r=reserved, now=now, key=c("key"), v=c("version"),
        sv=sql.SQL("s.{}").format(c("version")), ev=sql.SQL("excluded.{}").format(c("version")),
        a=c("accessed"), ea=sql.SQL("excluded.{}").format(c("accessed")),
        sa=sql.SQL("s.{}").format(c("accessed")),
    )
    # Live rows only: a tombstone at or below the watermark may have beaten a live
    # write above it, which would come back without it.
    clear_delete = sql.SQL(
        "DELETE FROM {t} WHERE NOT {d} AND {v} <= %s AND {key} <> {r}"
    ).format(t=t, d=c("deleted"), v=c("version"), key=c("key"), r=reserved)
    # Rendered once: composing identifiers on every call costs more than the query.
    return Statements(
        save_lock=save_lock.as_string(None),
        key_locks=key_locks.as_string(None),
        save_read=save_read.as_string(None),
        upsert=upsert.as_string(None),
        copy=copy.as_string(None),
        load=load.as_string(None),
        page=page.as_string(None),
        delete=delete.as_string(None),
        purge=purge.as_string(None),
        clear_lock=clear_lock.as_string(None),
        watermark=select_watermark.as_string(None),
        clear_raise=clear_raise.as_string(None),
        clear_delete=clear_delete.as_string(None),
    )
