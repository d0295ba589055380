"""The SQL of PostgresStore, rendered once per table: the version guard and the clear watermark in SQL.

Writes are one statement per batch (``INSERT ... SELECT FROM
json_to_recordset(<the batch as one JSON array>) WHERE <not cleared>
ON CONFLICT DO UPDATE ... WHERE <guard>``): the guard is ``persist.base.supersedes``
in SQL, so a stale writer never overwrites a newer session.

The clear watermark lives in the same table, in one reserved row (key
``persist.base.WATERMARK_KEY``, which no session id can be): ``version`` holds
the watermark, ``expires`` is infinite and ``deleted`` true, and every
statement here leaves the row out of what it reads, deletes or purges. One
table keeps the DDL users run unchanged; the row appears at the first clear.
Every save compares its records with the row in the same statement
(``persist.base.cleared_by`` in SQL: ``NOT deleted AND version <= watermark``;
tombstones always pass), and ``clear`` raises the row and deletes the live rows
it covers under a table lock that waits for saves in flight (see ``clear_lock``
in ``statements_for``), so no save can slip a cleared live record in.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from ..base import WATERMARK_KEY
from .table import FIELDS, TableNames

__all__ = ["Statements", "statements_for"]


@dataclass(frozen=True)
class Statements:
    """Every statement the store runs, as SQL text with ``%s`` placeholders."""

    upsert: str
    upsert_one: str
    load: str
    page: str
    delete: str
    purge: str
    clear_lock: str
    watermark: str
    clear_raise: str
    clear_delete: str


def statements_for(names: TableNames) -> Statements:
    """The statements for the table ``names`` describes, each rendered to text."""
    c = names.col
    t = names.table_ident
    cols = sql.SQL(", ").join(c(f) for f in FIELDS)
    select_cols = sql.SQL(", ").join(
        sql.SQL("{}::text").format(c(f)) if f == "data" else c(f) for f in FIELDS
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

    def sc(f: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(s, c(f))

    def ec(f: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(e, c(f))

    guard = sql.SQL(
        "CASE WHEN {sd} AND NOT {ed} THEN {sx} <= {ea}"
        " WHEN {ed} <> {sd} THEN {ed}"
        " ELSE ({ev}, {eo}) > ({sv}, {so})"
        " OR (({ev}, {eo}) = ({sv}, {so}) AND {ea} > {sa}) END"
    ).format(
        sd=sc("deleted"), ed=ec("deleted"), sx=sc("expires"), ea=ec("accessed"), sa=sc("accessed"),
        ev=ec("version"), eo=ec("origin"), sv=sc("version"), so=sc("origin"),
    )
    # The batch travels as one JSON array (orjson on our side, one parse on the
    # server's): far cheaper than binding eight arrays value by value. Data
    # rides as a string of JSON, so escapes like \u0000 reach the column as
    # written (the server refuses to de-escape them).
    # The version guard, shared by the batch and the single-record statement.
    on_conflict = sql.SQL(" ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {guard}").format(
        key=c("key"),
        sets=sql.SQL(", ").join(sql.SQL("{} = {}").format(c(f), ec(f)) for f in FIELDS if f != "key"),
        guard=guard,
    )
    # Live records at or below the watermark are left out by the statement itself
    # (the batch is coalesced first, as ``save`` documents); tombstones never are.
    upsert = sql.SQL(
        "INSERT INTO {t} AS s ({cols})"
        " SELECT b.k, b.d, b.v, b.o, b.c, b.a, coalesce(b.e, 'Infinity'::float8), b.x"
        " FROM json_to_recordset(%s::json)"
        " AS b(k text, d json, v bigint, o bigint, c float8, a float8, e float8, x boolean)"
        " WHERE NOT {cleared}{on_conflict}"
    ).format(t=t, cols=cols, cleared=cleared(sql.SQL("b.x"), sql.SQL("b.v")), on_conflict=on_conflict)
    # One record (write-through): plain parameters, no JSON batch to unpack; deleted
    # and version come twice, the second time for the watermark test.
    upsert_one = sql.SQL(
        "INSERT INTO {t} AS s ({cols}) SELECT %s, %s::text::json, %s, %s, %s, %s, %s, %s"
        " WHERE NOT {cleared}{on_conflict}"
    ).format(
        t=t,
        cols=cols,
        cleared=cleared(sql.SQL("%s::boolean"), sql.SQL("%s::bigint")),
        on_conflict=on_conflict,
    )
    # Reads leave out the live rows a clear covers (belt and braces: saves already
    # do) and the reserved row, a tombstone-shaped row that is no session.
    not_cleared = sql.SQL("NOT {}").format(cleared(c("deleted"), c("version")))
    load = sql.SQL("SELECT {cols} FROM {t} WHERE {key} = %s AND {key} <> {r} AND {nc}").format(
        cols=select_cols, t=t, key=c("key"), r=reserved, nc=not_cleared
    )
    page = sql.SQL(
        "SELECT {cols} FROM {t} WHERE {key} > %s AND {exp} > %s AND {key} <> {r} AND {nc}"
        " ORDER BY {key} LIMIT %s"
    ).format(cols=select_cols, t=t, key=c("key"), exp=c("expires"), r=reserved, nc=not_cleared)
    delete = sql.SQL("DELETE FROM {t} WHERE {key} = ANY(%s) AND {key} <> {r}").format(
        t=t, key=c("key"), r=reserved
    )
    purge = sql.SQL(
        "DELETE FROM {t} WHERE {key} IN (SELECT {key} FROM {t} WHERE {exp} <= %s AND {key} <> {r}"
        " LIMIT %s FOR UPDATE SKIP LOCKED)"
    ).format(t=t, key=c("key"), exp=c("expires"), r=reserved)
    # SHARE ROW EXCLUSIVE conflicts with every INSERT/UPDATE/DELETE (and itself), not
    # with reads. A save's watermark subquery sees the snapshot its statement started
    # with; without the lock, a save that started before a clear committed could
    # insert a cleared live record after the clear's DELETE had looked. With it, the clear
    # waits for saves in flight (its DELETE then sees their rows), and saves that come
    # later wait for the clear and take their snapshot after it committed.
    clear_lock = sql.SQL("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").format(t=t)
    select_watermark = sql.SQL("SELECT {watermark}").format(watermark=watermark)
    now = sql.SQL("extract(epoch FROM clock_timestamp())::float8")
    clear_raise = sql.SQL(
        "INSERT INTO {t} AS s ({cols}) VALUES ({r}, '{{}}', %s, 0, {now}, {now}, 'Infinity', true)"
        " ON CONFLICT ({key}) DO UPDATE SET {v} = greatest({sv}, {ev}),"
        " {a} = CASE WHEN {ev} > {sv} THEN {ea} ELSE {sa} END"
        " RETURNING {v}"
    ).format(
        t=t, cols=cols, r=reserved, now=now, key=c("key"), v=c("version"),
        sv=sc("version"), ev=ec("version"), a=c("accessed"), ea=ec("accessed"), sa=sc("accessed"),
    )
    # Live rows only: a tombstone at or below the watermark may have beaten a live
    # write above it, which would come back without it.
    clear_delete = sql.SQL(
        "DELETE FROM {t} WHERE NOT {d} AND {v} <= %s AND {key} <> {r}"
    ).format(t=t, d=c("deleted"), v=c("version"), key=c("key"), r=reserved)
    # Rendered once: composing identifiers on every call costs more than the query.
    return Statements(
        upsert=upsert.as_string(None),
        upsert_one=upsert_one.as_string(None),
        load=load.as_string(None),
        page=page.as_string(None),
        delete=delete.as_string(None),
        purge=purge.as_string(None),
        clear_lock=clear_lock.as_string(None),
        watermark=select_watermark.as_string(None),
        clear_raise=clear_raise.as_string(None),
        clear_delete=clear_delete.as_string(None),
    )
