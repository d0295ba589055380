"""PostgresStore: one row per session in PostgreSQL, via psycopg 3 and a connection pool.

The table and its DDL are ``persist.postgres.table``'s; the statements, with
the key locks of a save and the clear watermark in SQL,
``persist.postgres.statements``'s. A save reads the stored rows of its batch
under those locks, merges in Python (``persist.base.merge_row``) and writes
the merged rows, in one transaction (``persist.postgres.saving``). Every operation is idempotent, so one
that fails on a connection broken by a server restart is retried on the next
pooled connection; if the server stays down the call raises
``StoreUnavailable`` and the caller's queue keeps the write.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import orjson

try:
    import psycopg
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("PostgresStore needs psycopg 3 and psycopg-pool: pip install 'memsession[postgres]'") from exc

from memsession.errors import ConfigError, RecordRefused, StoreError, StoreRejected, StoreUnavailable
from memsession.session import Record
from memsession.validate import check_int

from ..base import (
    RefusedRecords,
    after_clear,
    check_clear_version,
    check_open,
    coalesce,
    decode_data,
    make_record,
)
from ..jsonstamps import seen_from_json, stamps_from_json
from ..rekey import rekey_store
from .changelog import LOG_RETENTION, ChangeLog
from .connect import open_pool
from .saving import COPY_ROWS, save_batch
from .statements import statements_for
from .table import KEY_COMMENT, MERGE_FIELDS, TableNames, comment_statement, ddl_statements, upgrade_statement

__all__ = ["PostgresStore"]

log = logging.getLogger("memsession.persist")

_NAME = "postgres"
T = TypeVar("T")


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
    start and raises ``StoreUnavailable`` if the server can't be reached, or
    at once ``StoreError`` (``op="connect"``) if it refuses the login: wrong
    password, unknown role (``persist.postgres.connect``).

    ``schema``/``table``/``columns`` name the table (connect-pg-simple's
    schemaName/tableName); ``create_table=True`` creates schema, table and
    index if missing (connect-pg-simple's createTableIfMissing).
    ``purge_batch`` bounds how many rows one purge statement deletes.
    A save of at least ``copy_rows`` records writes the rows of keys the
    table lacks by ``COPY`` (``persist.postgres.saving``).
    ``timeout`` bounds the wait for a pooled connection per operation and
    ``statement_timeout`` (seconds, None: the server's setting) every
    statement on the store's own connections, so a stuck server can't stall
    the writer forever.

    ``change_log=True`` logs each record written and each clear (no data) as ``host`` (default: the
    machine's name) in the save's transaction, for other hosts' ``PostgresChangeFeed``s
    (``persist.postgres.changelog``); ``purge`` prunes rows older than ``log_retention`` seconds.
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
        copy_rows: int = COPY_ROWS,
        environ: Mapping[str, str] | None = None,
        change_log: bool = False,
        host: str | None = None,
        log_retention: float = LOG_RETENTION,
    ) -> None:
        self.names = TableNames.build(schema, table, columns)
        #: The change log this store writes, None when it writes none.
        self.changes = ChangeLog.configure(self.names, change_log, host, log_retention)
        for option, value in (("page_size", page_size), ("purge_batch", purge_batch), ("copy_rows", copy_rows)):
            check_int(option, value)
        self.page_size = page_size
        self.copy_rows = copy_rows
        self.purge_batch = purge_batch
        #: Stored rows the record rule refused (skipped by ``load`` and ``load_all``).
        self.refused = RefusedRecords(_NAME)
        #: Saves send their statements in pipeline mode, fewer round trips (libpq 14 or later).
        self.pipelined = psycopg.Pipeline.is_supported()
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

            pool = open_pool(
                conninfo, min_size=min_size, max_size=max_size, timeout=timeout,
                connect_timeout=connect_timeout, configure=configure,
            )
        self.pool = pool
        self._sql = statements_for(self.names)
        try:
            if create_table:
                self.create_table()
            self._bring_up_to_date()
            if self.changes is not None:
                self._run("open", self.changes.check_tables)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore(table={self.names.table!r}, schema={self.names.schema!r})"

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
        statements = ddl_statements(self.names) + (self.changes.ddl() if self.changes is not None else [])

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["memsession.create_table"])
                created = conn.execute("SELECT to_regclass(%s) IS NULL", [self.names.qualified])
                fresh = created.fetchone() == (True,)
                for stmt in statements:
                    conn.execute(stmt)
                if fresh:  # a new table has no 0.1 rows: mark it done (its creator owns it)
                    conn.execute(comment_statement(self.names))

        self._run("create_table", work)

    def _bring_up_to_date(self) -> None:
        """Give a table made by an older memsession what this one needs: one catalog query when it has it.

        * Columns for stamps and ``seen`` (``upgrade_statement``), which need
          the table's owner: a store opened by another role on a table that
          lacks them fails here, saying so.
        * Rows keyed by raw ids (0.1) move to digests (``persist.rekey``),
          once: the key column's comment (``KEY_COMMENT``) marks a table that
          is done. Setting it needs the owner too: a store opened by another
          role moves the rows all the same and logs that the check will run
          again at the next open.

        A table that does not exist yet is left alone (it will be created
        with both).
        """
        names = self.names

        def state(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            return conn.execute(
                "SELECT col_description(c.oid, a.attnum),"
                " (SELECT count(*) FROM pg_attribute m WHERE m.attrelid = c.oid AND m.attname = ANY(%s)"
                " AND NOT m.attisdropped)"
                " FROM pg_attribute a JOIN (SELECT to_regclass(%s) AS oid) c ON a.attrelid = c.oid"
                " WHERE a.attname = %s",
                [[names.columns[f] for f in MERGE_FIELDS], names.qualified, names.columns["key"]],
            ).fetchone()

        found = self._run("open", state)
        if found is None:
            return
        comment, merge_columns = found
        if merge_columns < len(MERGE_FIELDS):
            self._add_merge_columns()
        if comment != KEY_COMMENT:
            self._rekey_legacy()

    def _add_merge_columns(self) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(upgrade_statement(self.names))

        try:
            self._run("upgrade", work)
        except StoreError as exc:
            raise StoreError(
                f"the sessions table lacks the columns for per-key stamps ({', '.join(MERGE_FIELDS)}) and "
                f"they could not be added ({exc}); run the output of `memsession ddl` as the table's owner",
                store=_NAME, op="upgrade",
            ) from exc
        log.info("added the columns %s to the sessions table", ", ".join(MERGE_FIELDS))

    def _rekey_legacy(self) -> None:
        """Move a 0.1 table's rows from raw ids to digests (``persist.rekey``) and mark it done."""
        rekey_store(self)

        def mark(conn: psycopg.Connection[Any]) -> None:
            conn.execute(comment_statement(self.names))

        try:
            self._run("rekey", mark)
        except StoreError as exc:
            log.warning("the sessions table is keyed by digests now, but could not be marked so (%s); "
                        "it will be checked again at the next open", exc)

    # -- the Store protocol ---------------------------------------------------------

    def _record(self, row: Sequence[Any], watermark: int) -> Record | None:
        """The row's record as the watermark leaves it; None (counted in ``refused``) if the record rule refuses it."""
        key, text, version, origin, created, accessed, expires, deleted, stamps, seen = row
        try:
            record = make_record(
                key, decode_data(orjson.loads(text), text), version, origin, created, accessed, expires, deleted,
                stamps_from_json(None if stamps is None else orjson.loads(stamps)),
                seen_from_json(None if seen is None else orjson.loads(seen)),
            )
        except RecordRefused as exc:
            self.refused.skip(exc)
            return None
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            # No key in the message: session ids must not reach logs.
            raise StoreError(f"a stored row can't be read: {exc}", store=_NAME, op="load") from exc
        return after_clear(record, watermark)

    def load(self, key: str) -> Record | None:
        def work(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            return conn.execute(self._sql.load, [key]).fetchone()

        row = self._run("load", work)
        return None if row is None else self._record(row[:-1], row[-1])

    def load_all(self, now: float) -> Iterator[Record]:
        check_open(self._closed, _NAME, "load_all")
        return self._pages(now)

    def _pages(self, now: float) -> Iterator[Record]:
        after = ""
        while True:
            def work(conn: psycopg.Connection[Any], after: str = after) -> list[tuple[Any, ...]]:
                return conn.execute(self._sql.page, [after, now, self.page_size]).fetchall()

            rows = self._run("load_all", work)
            for row in rows:
                try:
                    record = self._record(row[:-1], row[-1])
                except StoreError as exc:
                    # One unreadable row must not cost every other (a sidecar loads them all at start).
                    self.refused.skip(exc)
                    continue
                if record is not None:
                    yield record
            if len(rows) < self.page_size:
                return
            after = rows[-1][0]

    def save(self, records: Sequence[Record]) -> int:
        """Merge the batch into the stored rows, in one transaction (``persist.postgres.saving``)."""
        check_open(self._closed, _NAME, "save")
        if not records:
            return 0
        batch = coalesce(records)

        def work(conn: psycopg.Connection[Any]) -> int:
            return save_batch(conn, self._sql, batch, stored=self._stored, pipelined=self.pipelined,
                              copy_rows=self.copy_rows, changes=self.changes)

        return self._run("save", work, keys=list(batch) if len(batch) == 1 else None)

    def _stored(self, row: Sequence[Any], watermark: int) -> Record | None:
        """A stored row a save merges into; one that can't be read is as good as absent (and counted)."""
        try:
            return self._record(row, watermark)
        except StoreError as exc:
            self.refused.skip(exc)
            return None

    def delete(self, keys: Iterable[str]) -> int:
        check_open(self._closed, _NAME, "delete")
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return 0

        def work(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(self._sql.delete, [wanted]).rowcount

        return self._run("delete", work)

    def purge(self, now: float) -> int:
        """Remove the records that lapsed by ``now``; with a change log, prune it too (``prune_changes``)."""
        check_open(self._closed, _NAME, "purge")
        if self.changes is not None:
            self.prune_changes(now)
        total = 0
        while True:
            def work(conn: psycopg.Connection[Any]) -> int:
                return conn.execute(self._sql.purge, [now, self.purge_batch]).rowcount

            count = self._run("purge", work)
            total += count
            if count < self.purge_batch:
                return total

    def prune_changes(self, now: float) -> int:
        """Delete the change log's rows older than ``now - log_retention``; how many went (0: no log)."""
        check_open(self._closed, _NAME, "prune_changes")
        return 0 if self.changes is None else self.changes.prune(self._run, now)

    def clear(self, version: int) -> int:
        """Raise the watermark row and delete the live rows it covers, in one transaction.

        Tombstones stay, whatever their version, until a purge removes them.

        The table lock (see ``statements_for``) holds every write, not reads,
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
        conn.execute(self._sql.clear_lock)
        # Again under the lock: another clear may have got there while this one waited.
        if self._watermark_in(conn) >= version:
            return 0
        row = conn.execute(self._sql.clear_raise, [version]).fetchone()
        assert row is not None
        # The stored watermark, which may be higher than ``version``: any live row at
        # or below it that a writer without the guard slipped in goes too.
        deleted = conn.execute(self._sql.clear_delete, [row[0]]).rowcount
        if self.changes is not None:
            self.changes.clear_row(conn, int(row[0]))
        return deleted

    def _watermark_in(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(self._sql.watermark).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        """Close the pool the store made (a pool passed in stays open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_pool:
            self.pool.close()
