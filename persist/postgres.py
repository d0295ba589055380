"""PostgresStore: one row per session in PostgreSQL, via psycopg 3 and a connection pool.

The table (names configurable, identifiers quoted with ``psycopg.sql``)::

    key       text PRIMARY KEY     session id (or its hash)
    data      json                 session data, ``persist.base.encode_data``
    version   bigint               hybrid-logical-clock version
    origin    bigint               writer id, breaks version ties
    created   double precision     wall seconds
    accessed  double precision     wall seconds
    expires   double precision     wall seconds; 'Infinity' when it never expires
    deleted   boolean              tombstone

plus an index on ``expires`` for purging. Times are stored as float8 so they
come back bit for bit; ``json`` (not ``jsonb``) keeps the text as written.

Writes are one statement per batch (``INSERT ... SELECT FROM
json_to_recordset(<the batch as one JSON array>) WHERE <not cleared>
ON CONFLICT DO UPDATE ... WHERE <guard>``): the guard is ``persist.base.supersedes``
in SQL, so a stale writer never overwrites a newer session. Every operation is
idempotent, so one that fails on a connection broken by a server restart is
retried on the next pooled connection; if the server stays down the call raises
``StoreUnavailable`` and the caller's queue keeps the write.

The clear watermark lives in the same table, in one reserved row (key
``persist.base.WATERMARK_KEY``, which no session id can be): ``version`` holds
the watermark, ``expires`` is infinite and ``deleted`` true, and every
statement here leaves the row out of what it reads, deletes or purges. One
table keeps the DDL users run unchanged; the row appears at the first clear.
Every save compares its records with the row in the same statement
(``persist.base.cleared_by`` in SQL: ``NOT deleted AND version <= watermark``;
tombstones always pass), and ``clear`` raises the row and deletes the live rows
it covers under a table lock that waits for saves in flight (see ``clear``), so
no save can slip a cleared live record in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import orjson

from memsession.errors import ConfigError, StoreError, StoreRejected, StoreUnavailable
from memsession.session import Record

from .base import (
    WATERMARK_KEY,
    check_clear_version,
    check_open,
    coalesce,
    decode_data,
    encode_data,
    make_record,
    record_to_dict,
)

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("PostgresStore needs psycopg 3 and psycopg-pool: pip install 'memsession[postgres]'") from exc

__all__ = ["DEFAULT_COLUMNS", "PostgresStore", "TableNames", "ddl"]

log = logging.getLogger("memsession.persist")

_NAME = "postgres"
T = TypeVar("T")

#: Column names by field; pass ``columns={"key": "sid", ...}`` to rename any of them.
DEFAULT_COLUMNS: Mapping[str, str] = MappingProxyType({
    "key": "sid",
    "data": "sess",
    "version": "version",
    "origin": "origin",
    "created": "created",
    "accessed": "accessed",
    "expires": "expire",
    "deleted": "deleted",
})
_FIELDS = tuple(DEFAULT_COLUMNS)


@dataclass(frozen=True)
class TableNames:
    """Where the sessions live: schema (None: the search path), table, column names."""

    schema: str | None = None
    table: str = "memsession"
    columns: Mapping[str, str] = field(default_factory=lambda: DEFAULT_COLUMNS)

    @classmethod
    def build(
        cls, schema: str | None, table: str, columns: Mapping[str, str] | None
    ) -> TableNames:
        if not isinstance(table, str) or not table:
            raise ConfigError("table", table, "must be a non-empty string")
        if schema is not None and (not isinstance(schema, str) or not schema):
            raise ConfigError("schema", schema, "must be a non-empty string or None")
        merged = dict(DEFAULT_COLUMNS)
        for name_of, name in (columns or {}).items():
            if name_of not in DEFAULT_COLUMNS:
                raise ConfigError("columns", columns, f"unknown field {name_of!r}; known: {', '.join(_FIELDS)}")
            if not isinstance(name, str) or not name:
                raise ConfigError("columns", columns, f"column for {name_of!r} must be a non-empty string")
            merged[name_of] = name
        if len(set(merged.values())) != len(merged):
            raise ConfigError("columns", columns, "two fields map to the same column")
        for name in (table, schema or "", *merged.values()):
            if len(name.encode()) > 63 or "\x00" in name:
                raise ConfigError("columns", name, "PostgreSQL identifiers are at most 63 bytes, no NUL")
        return cls(schema, table, MappingProxyType(merged))

    @property
    def table_ident(self) -> sql.Composable:
        if self.schema is None:
            return sql.Identifier(self.table)
        return sql.Identifier(self.schema, self.table)

    @property
    def index_name(self) -> str:
        return (self.table + "_" + self.columns["expires"] + "_idx")[:63]

    def col(self, field: str) -> sql.Identifier:
        return sql.Identifier(self.columns[field])


def _ddl_statements(names: TableNames) -> list[sql.Composed]:
    c = names.col
    out = []
    if names.schema is not None:
        out.append(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(names.schema)))
    out.append(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} (\n"
            '    {key} text COLLATE "C" PRIMARY KEY,\n'
            "    {data} json NOT NULL,\n"
            "    {version} bigint NOT NULL,\n"
            "    {origin} bigint NOT NULL,\n"
            "    {created} double precision NOT NULL,\n"
            "    {accessed} double precision NOT NULL,\n"
            "    {expires} double precision NOT NULL,\n"
            "    {deleted} boolean NOT NULL DEFAULT false\n"
            ")"
        ).format(t=names.table_ident, **{f: c(f) for f in _FIELDS})
    )
    out.append(
        sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} ({e})").format(
            i=sql.Identifier(names.index_name), t=names.table_ident, e=c("expires")
        )
    )
    return out


def ddl(schema: str | None = None, table: str = "memsession", columns: Mapping[str, str] | None = None) -> str:
    """The DDL that ``create_table=True`` runs, as SQL text (also shipped as ``persist/schema.sql``)."""
    names = TableNames.build(schema, table, columns)
    return "".join(stmt.as_string(None) + ";\n" for stmt in _ddl_statements(names))


def _reason(exc: psycopg.Error) -> str:
    """The error's primary message: its DETAIL may quote a whole row, session data included."""
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    return primary or str(exc).split("\n", 1)[0]


class PostgresStore:
    """Sessions in a PostgreSQL table (connect-pg-simple / express-pg-session's counterpart).

    Connection: ``pool`` (a ``psycopg_pool.ConnectionPool`` you own and
    close; its connections must be in autocommit mode), else ``conninfo`` (a
    URL or key=value string), else the ``DATABASE_URL`` environment variable.
    The store makes its own pool (``min_size``/``max_size``) for a conninfo and
    closes it on ``close()``; it waits up to ``connect_timeout`` seconds at
    start and raises ``StoreUnavailable`` if the server can't be reached.

    ``schema``/``table``/``columns`` name the table (connect-pg-simple's
    schemaName/tableName); ``create_table=True`` creates schema, table and
    index if missing (connect-pg-simple's createTableIfMissing).
    ``purge_batch`` bounds how many rows one purge statement deletes.
    ``timeout`` bounds the wait for a pooled connection per operation and
    ``statement_timeout`` (seconds, None: the server's setting) every
    statement on the store's own connections, so a stuck server can't stall
    the writer forever.
    """

    name = _NAME

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: ConnectionPool | None = None,
        schema: str | None = None,
        table: str = "memsession",
        columns: Mapping[str, str] | None = None,
        create_table: bool = False,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = 10.0,
        timeout: float = 5.0,
        statement_timeout: float | None = 30.0,
        page_size: int = 1000,
        purge_batch: int = 1000,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.names = TableNames.build(schema, table, columns)
        for option, value in (("page_size", page_size), ("purge_batch", purge_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(option, value, "must be an int >= 1")
        self.page_size = page_size
        self.purge_batch = purge_batch
        self._closed = False
        self._owns_pool = pool is None
        if pool is None:
            if conninfo is None:
                conninfo = (os.environ if environ is None else environ).get("DATABASE_URL")
            if not conninfo:
                raise ConfigError("conninfo", None, "pass conninfo or pool, or set DATABASE_URL")
            configure = None
            if statement_timeout is not None:
                milliseconds = max(1, int(statement_timeout * 1000))

                def configure(conn: psycopg.Connection[Any]) -> None:
                    conn.execute(f"SET statement_timeout = {milliseconds}")

            pool = ConnectionPool(
                conninfo,
                min_size=min_size,
                max_size=max_size,
                kwargs={"autocommit": True},
                configure=configure,
                timeout=timeout,
                name="memsession",
                open=False,
            )
            try:
                pool.open(wait=True, timeout=connect_timeout)
            except PoolTimeout as exc:
                pool.close()
                raise StoreUnavailable(
                    f"PostgreSQL not reachable within {connect_timeout}s", store=_NAME, op="connect"
                ) from exc
        self.pool = pool
        self._prepare_sql()
        if create_table:
            try:
                self.create_table()
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        return f"PostgresStore(table={self.names.table!r}, schema={self.names.schema!r})"

    # -- SQL ---------------------------------------------------------------------

    def _prepare_sql(self) -> None:
        n = self.names
        c = n.col
        t = n.table_ident
        cols = sql.SQL(", ").join(c(f) for f in _FIELDS)
        select_cols = sql.SQL(", ").join(
            sql.SQL("{}::text").format(c(f)) if f == "data" else c(f) for f in _FIELDS
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
            sets=sql.SQL(", ").join(sql.SQL("{} = {}").format(c(f), ec(f)) for f in _FIELDS if f != "key"),
            guard=guard,
        )
        # Live records at or below the watermark are left out by the statement itself
        # (the batch is coalesced first, as ``save`` documents); tombstones never are.
        self._sql_upsert = sql.SQL(
            "INSERT INTO {t} AS s ({cols})"
            " SELECT b.k, b.d::json, b.v, b.o, b.c, b.a, coalesce(b.e, 'Infinity'::float8), b.x"
            " FROM json_to_recordset(%s::json)"
            " AS b(k text, d text, v bigint, o bigint, c float8, a float8, e float8, x boolean)"
            " WHERE NOT {cleared}{on_conflict}"
        ).format(t=t, cols=cols, cleared=cleared(sql.SQL("b.x"), sql.SQL("b.v")), on_conflict=on_conflict)
        # One record (write-through): plain parameters, no JSON batch to unpack; deleted
        # and version come twice, the second time for the watermark test.
        self._sql_upsert_one = sql.SQL(
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
        self._sql_load = sql.SQL("SELECT {cols} FROM {t} WHERE {key} = %s AND {key} <> {r} AND {nc}").format(
            cols=select_cols, t=t, key=c("key"), r=reserved, nc=not_cleared
        )
        self._sql_page = sql.SQL(
            "SELECT {cols} FROM {t} WHERE {key} > %s AND {exp} > %s AND {key} <> {r} AND {nc}"
            " ORDER BY {key} LIMIT %s"
        ).format(cols=select_cols, t=t, key=c("key"), exp=c("expires"), r=reserved, nc=not_cleared)
        self._sql_delete = sql.SQL("DELETE FROM {t} WHERE {key} = ANY(%s) AND {key} <> {r}").format(
            t=t, key=c("key"), r=reserved
        )
        self._sql_purge = sql.SQL(
            "DELETE FROM {t} WHERE {key} IN (SELECT {key} FROM {t} WHERE {exp} <= %s AND {key} <> {r}"
            " LIMIT %s FOR UPDATE SKIP LOCKED)"
        ).format(t=t, key=c("key"), exp=c("expires"), r=reserved)
        # SHARE ROW EXCLUSIVE conflicts with every INSERT/UPDATE/DELETE (and itself), not
        # with reads. A save's watermark subquery sees the snapshot its statement started
        # with; without the lock, a save that started before a clear committed could
        # insert a cleared live record after the clear's DELETE had looked. With it, the clear
        # waits for saves in flight (its DELETE then sees their rows), and saves that come
        # later wait for the clear and take their snapshot after it committed.
        self._sql_clear_lock = sql.SQL("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").format(t=t)
        self._sql_watermark = sql.SQL("SELECT {watermark}").format(watermark=watermark)
        now = sql.SQL("extract(epoch FROM clock_timestamp())::float8")
        self._sql_clear_raise = sql.SQL(
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
        self._sql_clear_delete = sql.SQL(
            "DELETE FROM {t} WHERE NOT {d} AND {v} <= %s AND {key} <> {r}"
        ).format(t=t, d=c("deleted"), v=c("version"), key=c("key"), r=reserved)
        # Rendered once: composing identifiers on every call costs more than the query.
        for name in (
            "_sql_upsert", "_sql_upsert_one", "_sql_load", "_sql_page", "_sql_delete", "_sql_purge",
            "_sql_clear_lock", "_sql_watermark", "_sql_clear_raise", "_sql_clear_delete",
        ):
            setattr(self, name, getattr(self, name).as_string(None))

    def _run(self, op: str, work: Callable[[psycopg.Connection[Any]], T], keys: list[str] | None = None) -> T:
        """Run ``work`` on a pooled connection; on a broken one, again on the next.

        Connections are not checked before use (that would cost a round trip
        per operation); after a server restart each pooled connection fails
        once, the pool discards it, and the operation (idempotent) is retried:
        at most ``max_size`` + 1 attempts, so a restart costs no error.
        """
        check_open(self._closed, _NAME, op)
        attempts = self.pool.max_size + 1
        for attempt in range(1, attempts + 1):
            try:
                with self.pool.connection() as conn:
                    return work(conn)
            except PoolTimeout as exc:
                raise StoreUnavailable(f"no PostgreSQL connection available for {op}", store=_NAME, op=op) from exc
            except psycopg.OperationalError as exc:
                if attempt < attempts and not self._closed:
                    log.info("PostgreSQL %s failed on a broken connection; retrying on another", op)
                    continue
                raise StoreUnavailable(f"PostgreSQL {op} failed: {_reason(exc)}", store=_NAME, op=op) from exc
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                # The rows themselves were refused (a constraint, a value): retrying won't help.
                raise StoreRejected(
                    f"PostgreSQL refused the {op}: {_reason(exc)}", keys=keys, store=_NAME, op=op
                ) from exc
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL {op} failed: {_reason(exc)}", store=_NAME, op=op) from exc
        raise AssertionError("unreachable")

    def create_table(self) -> None:
        """Create schema, table and expiry index if missing (safe to run from many processes at once)."""
        statements = _ddl_statements(self.names)

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["memsession.create_table"])
                for stmt in statements:
                    conn.execute(stmt)

        self._run("create_table", work)

    # -- the Store protocol ---------------------------------------------------------

    @staticmethod
    def _record(row: tuple[Any, ...]) -> Record:
        key, text, version, origin, created, accessed, expires, deleted = row
        try:
            return make_record(
                key, decode_data(orjson.loads(text), text), version, origin, created, accessed, expires, deleted
            )
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            # No key in the message: session ids must not reach logs.
            raise StoreError(f"a stored row can't be read: {exc}", store=_NAME, op="load") from exc

    def load(self, key: str) -> Record | None:
        def work(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            return conn.execute(self._sql_load, [key]).fetchone()

        row = self._run("load", work)
        return None if row is None else self._record(row)

    def load_all(self, now: float) -> Iterator[Record]:
        check_open(self._closed, _NAME, "load_all")
        return self._pages(now)

    def _pages(self, now: float) -> Iterator[Record]:
        after = ""
        while True:
            def work(conn: psycopg.Connection[Any], after: str = after) -> list[tuple[Any, ...]]:
                return conn.execute(self._sql_page, [after, now, self.page_size]).fetchall()

            rows = self._run("load_all", work)
            for row in rows:
                yield self._record(row)
            if len(rows) < self.page_size:
                return
            after = rows[-1][0]

    def save(self, records: Sequence[Record]) -> int:
        check_open(self._closed, _NAME, "save")
        if not records:
            return 0
        if len(records) == 1:
            r = records[0]
            one = [
                r.key, encode_data(r.data, r.flat).decode(), r.version, r.origin,
                r.created, r.accessed, r.expires, r.deleted, r.deleted, r.version,
            ]

            def work_one(conn: psycopg.Connection[Any]) -> int:
                return conn.execute(self._sql_upsert_one, one).rowcount

            return self._run("save", work_one, keys=[r.key])
        rows = []
        for record in coalesce(records).values():
            row = record_to_dict(record)
            row["d"] = encode_data(record.data, record.flat).decode()
            rows.append(row)
        params = [orjson.dumps(rows).decode()]

        def work(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(self._sql_upsert, params).rowcount

        return self._run("save", work)

    def delete(self, keys: Iterable[str]) -> int:
        check_open(self._closed, _NAME, "delete")
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return 0

        def work(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(self._sql_delete, [wanted]).rowcount

        return self._run("delete", work)

    def purge(self, now: float) -> int:
        check_open(self._closed, _NAME, "purge")
        total = 0
        while True:
            def work(conn: psycopg.Connection[Any]) -> int:
                return conn.execute(self._sql_purge, [now, self.purge_batch]).rowcount

            count = self._run("purge", work)
            total += count
            if count < self.purge_batch:
                return total

    def clear(self, version: int) -> int:
        """Raise the watermark row and delete the live rows it covers, in one transaction.

        Tombstones stay, whatever their version, until a purge removes them.

        The table lock (see ``_prepare_sql``) holds every write, not reads,
        until the transaction ends: a clear of a large table pauses saves for
        as long as its DELETE takes. A clear the stored watermark already
        covers returns 0 after one read, without the lock: every replica
        repeats a clear, and the first one did the work (atomically).
        """
        check_open(self._closed, _NAME, "clear")
        version = check_clear_version(version, _NAME)

        def work(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                return self._clear_in(conn, version)

        return self._run("clear", work)

    def _clear_in(self, conn: psycopg.Connection[Any], version: int) -> int:
        """The clear's statements, in the caller's transaction on ``conn``."""
        if self._watermark_in(conn) >= version:
            return 0
        conn.execute(self._sql_clear_lock)
        # Again under the lock: another clear may have got there while this one waited.
        if self._watermark_in(conn) >= version:
            return 0
        row = conn.execute(self._sql_clear_raise, [version]).fetchone()
        assert row is not None
        # The stored watermark, which may be higher than ``version``: any live row at
        # or below it that a writer without the guard slipped in goes too.
        return conn.execute(self._sql_clear_delete, [row[0]]).rowcount

    def _watermark_in(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(self._sql_watermark).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        """Close the pool the store made (a pool passed in stays open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_pool:
            self.pool.close()
