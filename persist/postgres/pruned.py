"""What pruning took from a change log, per host and partition: the partitions a follower's gap affected.

One more table next to the log's two (``persist.postgres.changelog``), made
with them::

    <table>_changes_pruned  per host and partition, the highest seq pruning deleted
      host      text
      part      smallint   a partition of the keys (0 to 255, ``memsession.partitions``), or a marker:
                           -1 (``CLEARS``) clears, and rows whose key names no partition;
                           -2 (``FLOOR``) the lowest seq of the host pruned, not the highest
      seq       bigint                                            PRIMARY KEY (host, part)

**Writing.** ``prune_statement`` deletes a batch of old log rows and, in the
same statement, upserts what it deleted: per (host, partition of the key's
first two hex digits) the highest seq of a key (``GREATEST``), per host the lowest
(``LEAST``, under ``FLOOR``). It upserts in (host, part) order, so
hosts pruning at once never deadlock on them. Saves never touch the table;
it holds at most 258 rows per host.

**Reading.** A follower whose numbering skips from ``expected`` to ``got``
(changes ``expected`` to ``got - 1`` are gone) asks ``gap_mask``: the
partitions with a pruned seq at or above ``expected``. None when they can't
be named: a pruned clear among them (a clear touches every partition), a
counter below the follower's position (the log was made anew), no
summary, or a summary that does not account for the gap's ends (the rows went
before the summary was made, or by other means than pruning).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memsession.partitions import PARTITIONS

from .table import TableNames, quote_ident

if TYPE_CHECKING:
    import psycopg

__all__ = ["CLEARS", "FLOOR", "PrunedSummary", "gap_mask", "prune_statement", "pruned_ddl", "pruned_table"]

log = logging.getLogger("memsession.persist")

#: The marker part of pruned clears (and of rows whose key names no partition).
CLEARS = -1
#: The marker part of a host's lowest pruned seq.
FLOOR = -2


def pruned_table(names: TableNames) -> str:
    return names.table + "_changes_pruned"


def _qualified(names: TableNames, table: str) -> str:
    return quote_ident(table) if names.schema is None else quote_ident(names.schema, table)


def pruned_ddl(names: TableNames) -> str:
    """The statement creating the summary table (if missing)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {_qualified(names, pruned_table(names))} (\n"
        '    "host" text COLLATE "C" NOT NULL,\n'
        '    "part" smallint NOT NULL,\n'
        '    "seq" bigint NOT NULL,\n'
        '    PRIMARY KEY ("host", "part")\n'
        ")"
    )


def prune_statement(names: TableNames, log_table: str) -> str:
    """Delete up to ``%s`` (2nd) log rows older than ``%s`` (1st), noted in the summary: how many went.

    A row's records are numbered ``first_seq`` on (``persist.postgres.changelog``); a clear, or a
    row whose keys don't match its seqs, counts under ``CLEARS``.
    """
    log_name, pruned = _qualified(names, log_table), _qualified(names, pruned_table(names))
    return (
        "WITH gone AS ("
        f" DELETE FROM {log_name} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {log_name} WHERE at < %s LIMIT %s))"
        " RETURNING host, seq, first_seq, string_to_array(keys, E'\\n') AS keys, cleared"
        "), parts AS ("
        " SELECT g.host, g.first_seq + k.i - 1 AS seq,"
        " CASE WHEN k.key ~ '^[0-9a-f][0-9a-f]' THEN ('x' || left(k.key, 2))::bit(8)::int"
        f" ELSE {CLEARS} END AS part"
        " FROM gone AS g, unnest(g.keys) WITH ORDINALITY AS k(key, i)"
        " WHERE g.cleared = 0 AND cardinality(g.keys) = g.seq - g.first_seq + 1"
        f" UNION ALL SELECT host, seq, {CLEARS} FROM gone"
        " WHERE cleared <> 0 OR coalesce(cardinality(keys), 0) <> seq - first_seq + 1"
        f"), noted AS (INSERT INTO {pruned} AS p (host, part, seq)"
        " SELECT host, part, seq FROM ("
        " SELECT host, part, max(seq) AS seq FROM parts GROUP BY host, part"
        f" UNION ALL SELECT host, {FLOOR}, min(first_seq) FROM gone GROUP BY host) AS s ORDER BY host, part"
        " ON CONFLICT (host, part) DO UPDATE SET seq ="
        f" CASE WHEN p.part = {FLOOR} THEN least(p.seq, excluded.seq) ELSE greatest(p.seq, excluded.seq) END"
        ") SELECT count(*) FROM gone"
    )


def gap_mask(rows: Iterable[tuple[Any, Any]], expected: int, got: int) -> int | None:
    """The mask of the partitions whose changes ``expected`` to ``got - 1`` were pruned; None: every one.

    ``rows`` are the host's ``(part, seq)`` rows of the summary (any; those
    below ``expected`` but ``FLOOR``'s count for nothing).
    """
    if got <= expected:  # the host's counter is below the position: the log was made anew
        return None
    mask, top, floor = 0, 0, None
    for part, seq in rows:
        if type(part) is not int or type(seq) is not int:
            return None
        if part == FLOOR:
            floor = seq
        elif seq < expected:
            continue
        elif not 0 <= part < PARTITIONS:  # a clear (or a key of no partition), or a row made by hand
            return None
        else:
            mask |= 1 << part
            top = max(top, seq)
    # Pruning deletes a host's oldest rows: if it went past ``got - 1`` and started at or
    # below ``expected``, the rows in between went through it.
    if floor is None or floor > expected or top < got - 1:
        return None
    return mask


@dataclass(frozen=True)
class PrunedSummary:
    """How a follower reads the summary of one log (``read``: a host's rows, ``exists``: is it there)."""

    exists: str
    read: str

    @classmethod
    def of(cls, names: TableNames) -> PrunedSummary:
        from psycopg import sql

        table = _qualified(names, pruned_table(names))
        return cls(
            exists=f"SELECT to_regclass({sql.Literal(table).as_string(None)}) IS NOT NULL",
            read=f"SELECT part, seq FROM {table} WHERE host = %s AND (seq >= %s OR part = {FLOOR})",
        )

    def partitions(self, conn: psycopg.Connection[Any], host: str, expected: int, got: int) -> int | None:
        """``gap_mask`` from the summary (an autocommit ``conn``); None if it is missing or can't be read.

        A broken connection raises (the follower reads again after its reconnect).
        """
        import psycopg

        if got <= expected:
            return None
        try:
            row = conn.execute(self.exists).fetchone()
            if not (row and row[0]):
                return None
            rows = conn.execute(self.read, [host, expected]).fetchall()
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            log.warning("could not read what the change log's pruning took (%s); the gap of host %r counts"
                        " for every partition", str(exc).split("\n", 1)[0], host)
            return None
        return gap_mask(rows, expected, got)
