"""The change log of a sessions table: what each save changed, numbered per host, in the save's transaction.

Three tables next to the sessions table (same schema), made by
``create_table=True`` when ``PostgresStore(change_log=True)``, or by the DDL
``change_log_ddl`` renders::

    <table>_changes        a row per save of up to ``ROW_CHANGES`` records (more take more), a row per clear
      host      text       the writing host (``PostgresStore(host=)``)
      seq       bigint     the last seq the row numbers: 1, 2, 3, ... per host,  PRIMARY KEY (host, seq)
      first_seq bigint     and its first: the row's records are first_seq .. seq, no gaps between rows
      keys      text       the session keys, in seq order, one per line (empty for a clear)
      versions  bigint[]   the stored records' (version, origin) after the save
      origins   bigint[]
      deleted   boolean[]  tombstones
      cleared   bigint     a clear's watermark (0 for records)
      at        float8     the server's wall clock when the seqs were taken: pruning goes by it

    <table>_changes_hosts  per host, the last seq it took
      host      text PRIMARY KEY
      seq       bigint

    <table>_changes_pruned per host and partition, the highest seq pruning deleted (``pruned``)

No session data goes in the log: a follower reads what it needs from the
sessions table. Every record still has its own seq (a follower's position
and a gap are counted in records), but the records of one save share one
row: a row per record cost an insert of a few microseconds per record
(heap tuple, index entry), the most of the log's share of a save. The keys
are one text, a key a line (the shape rule allows only printable keys, so
none holds a newline): PostgreSQL took longer to parse a ``text[]`` of a
thousand keys than to write the rest of the row. The four columns are stored
uncompressed out of line (``STORAGE EXTERNAL``): compressing them cost a save
more than the bytes it saved (``python -m bench.changelog``).

**Numbering.** A row bumps the host's row in ``_changes_hosts`` by its
size and is numbered below the new value, in one statement that inserts it
too (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``, in the round trip of
the commit). The bump locks the host's counter row until commit, so two
processes of one host take turns there: the second one's bump waits, then
reads the first one's value (or, if it rolled back, the old one, so a
failed save leaves no hole), and a host's seqs commit in order: a reader
that sees seq n of a host sees every retained seq below it. The bump comes
last in a save, after the table lock and the key locks every save takes in
one order (``statements``; a clear takes the table lock before it too), so
batches still never deadlock, and the counter row, the one lock every batch
of a host needs, is held only for a save's last steps. Two writers of one
host that commit to fsync'd disks take turns at their commits: a host's
write-behind batches are large, so it costs little.

**Notification.** The bump's statement calls ``pg_notify(channel, 'host:seq')``
with the row's last seq. PostgreSQL delivers a notification when its
transaction commits, and drops it if it rolls back, so a notification never
runs ahead of the rows it announces. The channel is the log table's name,
schema-qualified as ``schema.table_changes`` when a schema is named
(``channel_name``); ``LISTEN`` takes it quoted (``quote_ident``).

**Reading.** ``read_statement`` reads the rows after a follower's positions
and ``ends_statement`` where the log ends (``persist.postgres.follower``).
A row with more than ``ROW_CHANGES`` records, or keys longer than that many
digests take, or arrays of unequal lengths, comes without its keys and
arrays: a follower takes it for a gap.

**Pruning.** ``prune`` deletes rows whose ``at`` is older than the store's
``log_retention``, ``PRUNE_ROWS`` a statement; ``_changes_hosts`` is kept, so a
follower that stood below a pruned row learns that it has missed changes
(``persist.postgres.follower``). Each statement notes in ``_changes_pruned``,
in the same statement, the partitions it took, so a follower can say which
(``persist.postgres.pruned``).

**An older layout** (one row per record, columns ``key``, ``version``, ...)
is refused at open (``check_tables``); the log only holds the last
``log_retention`` of changes, so dropping ``<table>_changes`` and opening the
store with ``create_table=True`` makes it anew (followers then repair every
partition once).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memsession.config import Config
from memsession.errors import ConfigError, StoreError
from memsession.session import Record
from memsession.validate import check_number

from ..feed import host_fault
from .pruned import prune_statement, pruned_ddl, pruned_table
from .table import TableNames, quote_ident

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = [
    "LOG_RETENTION",
    "MIN_LOG_RETENTION",
    "PRUNE_ROWS",
    "ROW_CHANGES",
    "ChangeLog",
    "channel_name",
    "change_log_ddl",
    "ends_statement",
    "hosts_table",
    "listen_statement",
    "log_table",
    "read_statement",
]

#: How long log rows stay by default (seconds): a follower away for longer has a gap.
LOG_RETENTION = 3600.0
#: The shortest retention allowed: memsession's default ``tombstone_ttl``. A follower that
#: reads the log again within that long still hears of every destroy whose tombstone still
#: counts; set ``log_retention`` above your own ``tombstone_ttl`` if you raised it.
MIN_LOG_RETENTION = Config().tombstone_ttl
#: The most records one log row holds: a save of more takes more rows. A follower reads no
#: larger row (one read of ``batch`` rows stays bounded); a larger one is a gap to it.
ROW_CHANGES = 1000
#: How many log rows one pruning statement deletes at most (each up to ``ROW_CHANGES`` records).
PRUNE_ROWS = 100
#: How the store runs one statement on a pooled connection (``PostgresStore._run``).
Run = Callable[[str, Callable[["psycopg.Connection[Any]"], int]], int]
#: The longest name PostgreSQL keeps whole (identifiers, notification channels).
_NAME_BYTES = 63


def log_table(names: TableNames) -> str:
    return names.table + "_changes"


def hosts_table(names: TableNames) -> str:
    return names.table + "_changes_hosts"


def _qualified(names: TableNames, table: str) -> str:
    return quote_ident(table) if names.schema is None else quote_ident(names.schema, table)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def channel_name(names: TableNames) -> str:
    """The notification channel of the table's log: the log table's (schema-qualified) name, unquoted.

    Channels are per database, not per schema, hence the schema in it. A
    name longer than PostgreSQL keeps becomes a digest of it: ``LISTEN``
    would cut it, and then no longer match what ``pg_notify`` sends to.
    """
    name = log_table(names) if names.schema is None else f"{names.schema}.{log_table(names)}"
    if len(name.encode()) <= _NAME_BYTES:
        return name
    return "memsession_changes_" + hashlib.sha256(name.encode()).hexdigest()[:32]


def check_names(names: TableNames) -> None:
    """``ConfigError`` if the log's table names would be cut by PostgreSQL (and two could become one)."""
    for table in (log_table(names), hosts_table(names), pruned_table(names)):
        if len(table.encode()) > _NAME_BYTES:
            raise ConfigError("table", names.table,
                              f"with change_log=True, {table!r} is over {_NAME_BYTES} bytes")


def change_log_ddl(names: TableNames) -> list[str]:
    """The statements creating the log's three tables (if missing); the sessions table's schema must exist."""
    log = _qualified(names, log_table(names))
    return [
        f"CREATE TABLE IF NOT EXISTS {log} (\n"
        '    "host" text COLLATE "C" NOT NULL,\n'
        '    "seq" bigint NOT NULL,\n'
        '    "first_seq" bigint NOT NULL,\n'
        '    "keys" text COLLATE "C" NOT NULL,\n'
        '    "versions" bigint[] NOT NULL,\n'
        '    "origins" bigint[] NOT NULL,\n'
        '    "deleted" boolean[] NOT NULL,\n'
        '    "cleared" bigint NOT NULL DEFAULT 0,\n'
        '    "at" double precision NOT NULL,\n'
        '    PRIMARY KEY ("host", "seq")\n'
        ")",
        # Once, not at every open: changing a column's storage locks the table. An older
        # layout (no keys column) is left to ``check_tables`` to refuse.
        "DO $$ BEGIN\n"
        f"    IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass({_literal(log)})"
        " AND attname = 'keys')\n"
        f"       AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass({_literal(log)})\n"
        "                   AND attname IN ('keys', 'versions', 'origins', 'deleted')\n"
        "                   AND attstorage <> 'e') THEN\n"
        f"        ALTER TABLE {log}\n"
        '            ALTER COLUMN "keys" SET STORAGE EXTERNAL,\n'
        '            ALTER COLUMN "versions" SET STORAGE EXTERNAL,\n'
        '            ALTER COLUMN "origins" SET STORAGE EXTERNAL,\n'
        '            ALTER COLUMN "deleted" SET STORAGE EXTERNAL;\n'
        "    END IF;\n"
        "END $$",
        f"CREATE TABLE IF NOT EXISTS {_qualified(names, hosts_table(names))} (\n"
        '    "host" text COLLATE "C" PRIMARY KEY,\n'
        '    "seq" bigint NOT NULL\n'
        ")",
        pruned_ddl(names),
    ]


def _ident(names: TableNames, table: str) -> sql.Identifier:
    from psycopg import sql

    return sql.Identifier(table) if names.schema is None else sql.Identifier(names.schema, table)


def _bump(names: TableNames) -> sql.Composed:
    """The CTE that takes a row's seqs: the host's counter raised by ``n``, its new value and the time."""
    from psycopg import sql

    # ``at`` is taken once, after the bump got the counter's lock: in a host's seq order.
    return sql.SQL(
        "WITH bump AS ("
        " INSERT INTO {hosts} AS h (host, seq) VALUES (%(host)s::text, %(n)s::bigint)"
        " ON CONFLICT (host) DO UPDATE SET seq = h.seq + excluded.seq"
        " RETURNING h.seq AS last, extract(epoch FROM clock_timestamp())::float8 AS at)"
    ).format(hosts=_ident(names, hosts_table(names)))


def _append_statement(names: TableNames) -> str:
    """Bump the host's counter, insert the row numbered below it, notify: one statement (see the module)."""
    from psycopg import sql

    return sql.SQL(
        "{bump}, logged AS ("
        " INSERT INTO {log} (host, seq, first_seq, keys, versions, origins, deleted, cleared, at)"
        " SELECT %(host)s::text, bump.last, bump.last - %(n)s::bigint + 1, %(k)s::text, %(v)s::bigint[],"
        " %(o)s::bigint[], %(x)s::boolean[], %(cleared)s::bigint, bump.at FROM bump"
        ")"
        " SELECT pg_notify({channel}, %(host)s::text || ':' || bump.last) FROM bump"
    ).format(
        bump=_bump(names), log=_ident(names, log_table(names)), channel=sql.Literal(channel_name(names))
    ).as_string(None)


def read_statement(names: TableNames) -> str:
    """Rows after a follower's positions, as ``(host, last, seq, first_seq, keys, versions, origins, deleted,
    cleared)``.

    Parameters: ``at`` (the positions, a JSON object host -> seq; a host it
    lacks is at 0), ``own`` (the follower's host, left out) and ``limit``
    (rows). In host/seq order, only for hosts whose counter moved from their
    position: ``_changes_hosts`` is small, so an idle host costs no look into
    the log. ``last`` is the host's counter in the same snapshot; a host
    whose rows after its position were all pruned comes as one row with seq
    NULL (and so does a host whose counter is below the position: the log was
    made anew). A row of more than ``ROW_CHANGES`` records (or keys, at 64
    characters and a newline each), or whose arrays differ in length, comes
    with NULL keys and arrays: the server never sends it whole.
    """
    from psycopg import sql

    position = sql.SQL("coalesce((%(at)s::jsonb ->> h.host)::bigint, 0)")
    fits = sql.SQL(
        "coalesce(octet_length(l.keys) < {bytes} AND cardinality(l.versions) <= {most}"
        " AND cardinality(l.origins) = cardinality(l.versions)"
        " AND cardinality(l.deleted) = cardinality(l.versions),"
        " false)"
    ).format(most=sql.Literal(ROW_CHANGES), bytes=sql.Literal(ROW_CHANGES * 65))
    return sql.SQL(
        "SELECT h.host, h.seq, c.seq, c.first_seq, c.keys, c.versions, c.origins, c.deleted, c.cleared"
        " FROM {hosts} AS h"
        " LEFT JOIN LATERAL (SELECT l.seq, l.first_seq, l.cleared,"
        " CASE WHEN f.fits THEN l.keys END AS keys, CASE WHEN f.fits THEN l.versions END AS versions,"
        " CASE WHEN f.fits THEN l.origins END AS origins, CASE WHEN f.fits THEN l.deleted END AS deleted"
        " FROM {log} AS l, LATERAL (SELECT {fits} AS fits) AS f"
        " WHERE l.host = h.host AND l.seq > {position} ORDER BY l.seq LIMIT %(limit)s) AS c ON true"
        " WHERE h.host <> %(own)s::text AND h.seq <> {position}"
        " ORDER BY h.host, c.seq LIMIT %(limit)s"
    ).format(
        hosts=_ident(names, hosts_table(names)), log=_ident(names, log_table(names)), position=position,
        fits=fits,
    ).as_string(None)


def ends_statement(names: TableNames) -> str:
    """Every host's last seq but ``%s``'s: where a follower that starts at the end of the log stands."""
    from psycopg import sql

    return sql.SQL("SELECT host, seq FROM {hosts} WHERE host <> %s").format(
        hosts=_ident(names, hosts_table(names))
    ).as_string(None)


def listen_statement(names: TableNames) -> str:
    return "LISTEN " + quote_ident(channel_name(names))


@dataclass(frozen=True)
class ChangeLog:
    """The log a ``PostgresStore(change_log=True)`` writes: its host, retention and statements."""

    names: TableNames
    host: str
    retention: float
    append: str
    prune_rows: str
    exists: str

    @classmethod
    def configure(
        cls, names: TableNames, change_log: Any, host: Any, retention: Any
    ) -> ChangeLog | None:
        """The log for the store's options, None when it is off; ``ConfigError`` for a bad option."""
        if type(change_log) is not bool:
            raise ConfigError("change_log", change_log, "must be True or False")
        if not change_log:
            if host is not None or retention != LOG_RETENTION:
                option, value = ("host", host) if host is not None else ("log_retention", retention)
                raise ConfigError(option, value, "only means something with change_log=True")
            return None
        if host is None:
            host = socket.gethostname()
        fault = host_fault(host)
        if fault is not None:
            raise ConfigError("host", host, fault.removeprefix("host is "))
        check_number("log_retention", retention)
        if retention < MIN_LOG_RETENTION:
            raise ConfigError("log_retention", retention,
                              f"must be at least {MIN_LOG_RETENTION:g} s, memsession's default tombstone_ttl")
        check_names(names)
        from psycopg import sql

        log = sql.Literal(_qualified(names, log_table(names)))
        return cls(
            names=names, host=host, retention=float(retention),
            append=_append_statement(names),
            prune_rows=prune_statement(names, log_table(names)),
            # The layout too: a log of one row per record (an older memsession's) can't be appended to.
            exists=sql.SQL(
                "SELECT to_regclass({log}) IS NOT NULL AND to_regclass({hosts}) IS NOT NULL"
                " AND to_regclass({pruned}) IS NOT NULL,"
                " EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass({log}) AND attname = 'keys'"
                " AND atttypid = 'text'::regtype AND NOT attisdropped)"
            ).format(
                log=log,
                hosts=sql.Literal(_qualified(names, hosts_table(names))),
                pruned=sql.Literal(_qualified(names, pruned_table(names))),
            ).as_string(None),
        )

    def ddl(self) -> list[str]:
        return change_log_ddl(self.names)

    def record_rows(self, conn: psycopg.Connection[Any], records: Sequence[Record]) -> None:
        """Log the records a save wrote, in the caller's transaction on ``conn`` (pipelined or not).

        One row per ``ROW_CHANGES`` records, each numbered by its own bump.
        """
        for start in range(0, len(records), ROW_CHANGES):
            rows = records[start:start + ROW_CHANGES]
            self._append(conn, [r.key for r in rows], [r.version for r in rows], [r.origin for r in rows],
                         [r.deleted for r in rows], 0)

    def clear_row(self, conn: psycopg.Connection[Any], watermark: int) -> None:
        """Log a clear that raised the watermark to ``watermark``, in the caller's transaction."""
        self._append(conn, [], [], [], [], watermark, n=1)

    def _append(self, conn: psycopg.Connection[Any], keys: list[str], versions: list[int], origins: list[int],
                deleted: list[bool], cleared: int, n: int | None = None) -> None:
        # Array literals made here: cheaper on both sides than a JSON array of objects, and for
        # the client than psycopg's element-by-element list dumping.
        conn.execute(self.append, {
            "host": self.host, "n": len(keys) if n is None else n, "cleared": cleared,
            "k": "\n".join(keys), "v": "{" + ",".join(map(str, versions)) + "}",
            "o": "{" + ",".join(map(str, origins)) + "}",
            "x": "{" + ",".join(["t" if x else "f" for x in deleted]) + "}",
        })

    def prune(self, run: Run, now: float, rows: int = PRUNE_ROWS) -> int:
        """Delete rows older than ``now - retention`` (wall seconds), ``rows`` a statement; how many went.

        ``run`` is the store's ``_run``: each statement on a pooled connection,
        retried on a broken one (a DELETE of old rows is idempotent, and so is
        the note of what it took in ``_changes_pruned``, made in the same statement).
        """
        cutoff = now - self.retention
        total = 0

        def work(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(self.prune_rows, [cutoff, rows]).fetchone()
            return int(row[0]) if row else 0

        while True:
            count = run("prune_changes", work)
            total += count
            if count < rows:
                return total

    def check_tables(self, conn: psycopg.Connection[Any]) -> None:
        """``StoreError`` unless its tables exist, laid out as this version writes them: a store that can't
        log fails at open, not at a save."""
        row = conn.execute(self.exists).fetchone()
        if not (row and row[0]):
            raise StoreError(
                f"the change log's tables ({log_table(self.names)}, {hosts_table(self.names)},"
                f" {pruned_table(self.names)}) are missing:"
                " pass create_table=True or run the statements of persist.postgres.changelog.change_log_ddl",
                store="postgres", op="open",
            )
        if not row[1]:
            raise StoreError(
                f"the change log {log_table(self.names)} has an older layout (one row per record): it holds"
                " only the last log_retention of changes, so drop it and open the store with"
                " create_table=True (or run change_log_ddl) to make it anew; followers then repair once",
                store="postgres", op="open",
            )
