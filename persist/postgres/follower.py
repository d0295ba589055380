"""PostgresChangeFeed: other hosts' changes from a sessions table's change log, as they commit.

The log, its numbering and its notifications are ``persist.postgres.changelog``'s.
The feed runs one thread with one connection of its own (never the store's
pool: it sits in ``LISTEN`` between reads):

1. connect, ``LISTEN`` on the log's channel, and only then read: a change
   that commits after the read still wakes the feed;
2. read the changes after its positions (``read_statement``), ``batch`` log
   rows (each up to ``ROW_CHANGES`` records) at a time until it has them
   all, and hand them to ``on_changes`` in host/seq order, after ``on_gap``
   for any host whose numbering skipped
   (with the partitions pruning took there, ``persist.postgres.pruned``);
3. wait for a notification that may bring news (its own host's, and a
   ``host:seq`` at or below where it stands, bring none), ``stop()``, or
   ``poll_interval``; then read again. The poll is what makes the feed whole:
   a notification sent while the feed was reconnecting is lost, the rows are
   not.

Any failure is logged (``memsession.persist``), counted, and followed by a
reconnect after a backoff (``retry_min`` doubling up to ``retry_max``; each
reconnect waits at most ``reconnect_timeout``, so a network that comes back
is used within seconds), from
the positions it had: nothing is replayed or lost. Rows are checked as they
are read (``persist.postgres.logrows``): a record that breaks the rule
(``persist.feed.change_fault``) is skipped, a row that can't be read at all
is a gap (every partition) over its seqs; either is counted as ``refused``
and logged without its key (``memsession.refusals``: a flood costs a few
warnings); the position moves past it all the same, or the feed would read
it forever.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import psycopg

from memsession.errors import ConfigError, StoreError, StoreUnavailable
from memsession.record_shape import MAX_VERSION
from memsession.refusals import log_refusal
from memsession.validate import check_int, check_number

from ..feed import Change, host_fault
from .changelog import ends_statement, listen_statement, read_statement
from .connect import dead_peer_options, is_auth_failure
from .logrows import read_row
from .pruned import PrunedSummary
from .store import PostgresStore
from .table import TableNames

__all__ = ["PostgresChangeFeed"]

log = logging.getLogger("memsession.persist")

_NAME = "postgres"
_COUNTERS = ("changes", "clears", "gaps", "refused", "errors", "callback_errors", "reconnects", "reads",
             "notifies", "wakes")
OnChanges = Callable[[list[Change]], Any]
OnGap = Callable[[str, int, int, int | None], Any]


def _translated(exc: BaseException) -> StoreError:
    """A psycopg error as the project's (``StoreUnavailable`` when retrying may help); others as they are."""
    if isinstance(exc, StoreError):
        return exc
    if not isinstance(exc, psycopg.Error):
        return StoreError(f"following the change log failed: {type(exc).__name__}: {exc}",
                          store=_NAME, op="changes")
    diag = getattr(exc, "diag", None)
    reason = (diag.message_primary if diag is not None else None) or str(exc).split("\n", 1)[0]
    if isinstance(exc, psycopg.errors.UndefinedTable):
        reason += " (the change log's tables: PostgresStore(change_log=True, create_table=True) makes them)"
    if isinstance(exc, psycopg.OperationalError) and not is_auth_failure(exc):
        return StoreUnavailable(f"PostgreSQL change feed: {reason}", store=_NAME, op="changes")
    return StoreError(f"PostgreSQL change feed: {reason}", store=_NAME, op="changes")


def _checked_positions(positions: Mapping[str, int] | None) -> dict[str, int] | None:
    if positions is None:
        return None
    if not isinstance(positions, Mapping):
        raise ConfigError("positions", positions, "must be a mapping of host -> last seq applied")
    for host, seq in positions.items():
        if host_fault(host) is not None or type(seq) is not int or not 0 <= seq <= MAX_VERSION:
            raise ConfigError("positions", positions, "must map host names to ints in [0, 2**63 - 1]")
    return dict(positions)


class PostgresChangeFeed:
    """Follows the change log of a ``PostgresStore(change_log=True)``: ``persist.feed``'s ``ChangeFeed``.

    ``source`` is a ``PostgresStore`` (its table, its pool's conninfo, and by
    default its log's host) or a conninfo string (then ``schema``/``table``
    name the sessions table). ``host`` is this feed's own host: its rows are
    never handed over. By default the feed starts at the end of the log as
    ``start()`` finds it; ``positions`` (from ``positions()`` of an earlier
    feed) resumes where that one stood. ``batch`` bounds the log rows one read
    (and one ``on_changes`` call) carries, each up to ``ROW_CHANGES``
    records; ``statement_timeout`` bounds each read, so a stuck server can't
    hold the feed.
    """

    def __init__(
        self,
        source: str | PostgresStore,
        *,
        host: str | None = None,
        schema: str | None = None,
        table: str | None = None,
        poll_interval: float = 1.0,
        batch: int = 50,
        positions: Mapping[str, int] | None = None,
        retry_min: float = 0.1,
        retry_max: float = 1.0,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 2.0,
        statement_timeout: float | None = 30.0,
        application_name: str = "memsession-changes",
    ) -> None:
        if isinstance(source, PostgresStore):
            if schema is not None or table is not None:
                raise ConfigError("table", table or schema,
                                  "comes from the store; pass schema/table with a conninfo")
            names = source.names
            # A pool may take them as callables, asked at each connect: so does the feed.
            self._conninfo: str | Callable[[], str] = source.pool.conninfo
            self._kwargs: dict[str, Any] | Callable[[], dict[str, Any]] | None = source.pool.kwargs
            if host is None and source.changes is not None:
                host = source.changes.host
        elif isinstance(source, str) and source:
            names = TableNames.build(schema, table or "memsession", None)
            self._conninfo, self._kwargs = source, None
        else:
            raise ConfigError("source", source, "must be a PostgresStore or a conninfo string")
        fault = host_fault(host)
        if fault is not None:
            raise ConfigError("host", host, fault.removeprefix("host is ") + " (this feed's own host)")
        assert isinstance(host, str)
        for option, value in (("poll_interval", poll_interval), ("retry_min", retry_min),
                              ("retry_max", retry_max), ("connect_timeout", connect_timeout),
                              ("reconnect_timeout", reconnect_timeout)):
            check_number(option, value)
        check_number("statement_timeout", statement_timeout, allow_none=True)
        check_int("batch", batch)
        self.names = names
        self.host = host
        self.poll_interval = float(poll_interval)
        self.batch = batch
        self.retry_min = float(retry_min)
        self.retry_max = max(float(retry_max), self.retry_min)
        self.connect_timeout = float(connect_timeout)
        self.reconnect_timeout = float(reconnect_timeout)
        self.statement_timeout = statement_timeout
        self.application_name = application_name
        self._read = read_statement(names)
        self._ends = ends_statement(names)
        self._listen = listen_statement(names)
        self._pruned = PrunedSummary.of(names)
        self._positions = _checked_positions(positions)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._waker: tuple[socket.socket, socket.socket] | None = None
        self._heard = False
        self._caught_up: float | None = None
        self._on_changes: OnChanges = lambda changes: None
        self._on_gap: OnGap = lambda host, expected, got, partitions: None

    def __repr__(self) -> str:
        return f"PostgresChangeFeed(table={self.names.table!r}, host={self.host!r})"

    # -- the ChangeFeed protocol ----------------------------------------------------

    def start(self, on_changes: OnChanges, on_gap: OnGap) -> None:
        """Connect, listen, take the starting positions, then follow in a thread; raise if that fails.

        When it returns, every change committed from then on will be handed
        over. A first connect that fails raises (``StoreUnavailable``: the
        server can't be reached; ``StoreError``: it refused the login, or the
        log's tables are missing): a feed that can't work says so at start.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the change feed is already running")
        self._on_changes, self._on_gap = on_changes, on_gap
        self._stopping.clear()
        # stop() writes to one end to wake the thread out of its select on the other.
        self._waker = waker = socket.socketpair()
        ready: list[StoreError | None] = []
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(waker, ready, started),
                                        name="memsession-pg-changes", daemon=True)
        self._thread.start()
        # The connect, the LISTEN and one short read: each bounded by its own timeout.
        limit = self.connect_timeout + 2 * (self.statement_timeout or 30.0) + 5
        if not started.wait(limit):
            self.stop()
            raise StoreUnavailable(f"the change feed did not start within {limit:.0f}s",
                                   store=_NAME, op="changes")
        if ready[0] is not None:
            self.stop()
            raise ready[0]

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop following; wakes the thread out of its wait and closes its connection. Idempotent."""
        self._stopping.set()
        waker = self._waker
        if waker is not None:
            with contextlib.suppress(OSError):
                waker[1].send(b"\0")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def positions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._positions or {})

    def caught_up_at(self) -> float | None:
        return self._caught_up

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "hosts": len(self._positions or {})}

    # -- the thread -----------------------------------------------------------------

    def _run(self, waker: tuple[socket.socket, socket.socket], ready: list[StoreError | None],
             started: threading.Event) -> None:
        """Connect, follow, and on any failure log, back off and connect again, until ``stop()``.

        The first connect's outcome goes to ``start()`` through ``ready``: a
        feed that never got going raises there instead of retrying here.
        """
        backoff = self.retry_min
        try:
            while not self._stopping.is_set():
                conn: psycopg.Connection[Any] | None = None
                try:
                    conn = self._connect(self.reconnect_timeout if started.is_set() else self.connect_timeout)
                    if not started.is_set():
                        ready.append(None)
                        started.set()
                    else:
                        self._count("reconnects")
                    backoff = self.retry_min
                    self._follow(conn, waker[0])
                except Exception as exc:
                    error = _translated(exc)
                    if not started.is_set():
                        ready.append(error)
                        started.set()
                        return
                    if self._stopping.is_set():
                        return
                    self._count("errors")
                    log.warning("following the PostgreSQL change log failed (%s: %s); reconnecting in %.1fs",
                                type(error).__name__, error, backoff)
                    self._sleep(backoff, waker[0])
                    backoff = min(backoff * 2, self.retry_max)
                finally:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
        finally:
            if not started.is_set():
                ready.append(StoreError("the change feed stopped before it started",
                                        store=_NAME, op="changes"))
                started.set()
            for end in waker:
                end.close()

    def _connect(self, timeout: float) -> psycopg.Connection[Any]:
        """A connection listening on the log's channel, at known positions (the log's end, the first time)."""
        conninfo = self._conninfo() if callable(self._conninfo) else self._conninfo
        kwargs = (self._kwargs() if callable(self._kwargs) else self._kwargs) or {}
        # libpq takes whole seconds and treats anything below 2 as 2.
        conn = psycopg.connect(conninfo, **{
            **dead_peer_options(conninfo), **kwargs, "autocommit": True,
            "connect_timeout": max(2, math.ceil(timeout)), "application_name": self.application_name,
        })
        try:
            if self.statement_timeout is not None:
                conn.execute(f"SET statement_timeout = {max(1, int(self.statement_timeout * 1000))}")
            conn.add_notify_handler(lambda notify: self._notified(notify.payload))
            conn.execute(self._listen)
            if self._positions is None:
                ends = {host: seq for host, seq in conn.execute(self._ends, [self.host]).fetchall()}
                with self._lock:
                    self._positions = ends
        except BaseException:
            conn.close()
            raise
        return conn

    def _follow(self, conn: psycopg.Connection[Any], wake: socket.socket) -> None:
        while not self._stopping.is_set():
            self._catch_up(conn)
            self._wait(conn, wake)

    def _catch_up(self, conn: psycopg.Connection[Any]) -> None:
        """Read and hand over every change after the positions, ``batch`` rows at a time."""
        while not self._stopping.is_set():
            self._heard = False  # what was heard until now, this read covers
            at = orjson.dumps(self.positions()).decode()
            rows = conn.execute(self._read, {"at": at, "own": self.host, "limit": self.batch}).fetchall()
            self._caught_up = time.monotonic()  # the log was read: late perhaps, not silent
            self._count("reads")
            self._hand_over(rows, conn)
            if len(rows) < self.batch:
                return

    def _hand_over(self, rows: Sequence[tuple[Any, ...]], conn: psycopg.Connection[Any]) -> None:
        """Check the rows, report gaps (and what they took), hand the good ones over, then move past them."""
        moved = self.positions()
        gaps: list[tuple[str, int, int]] = []
        unread: list[tuple[str, int, int]] = []  # the seqs of rows that can't be read: every partition
        changes: list[Change] = []
        faults: list[str] = []
        for host, last, seq, first, keys, versions, origins, deleted, cleared in rows:
            if type(host) is not str or type(last) is not int or not (seq is None or type(seq) is int):
                raise StoreError("the change log's tables have unexpected column types",
                                 store=_NAME, op="changes")
            at = moved.get(host, 0)
            valid = host_fault(host) is None
            if seq is None:  # nothing kept after ``at``: pruned, or the log was made anew
                if valid:
                    gaps.append((host, at + 1, last + 1))
                moved[host] = last
                continue
            moved[host] = seq
            row = read_row(host, seq, first, keys, versions, origins, deleted, cleared)
            if isinstance(row, str):
                faults.append(row)
                if valid:
                    unread.append((host, at + 1, seq + 1))
                continue
            if row.first > at + 1 and valid:
                gaps.append((host, at + 1, row.first))
            # A position inside a row (set by hand) takes the rest of it.
            changes.extend(row.changes if row.first > at else [c for c in row.changes if c.seq > at])
            faults.extend(row.faults)
        for fault in faults:
            with self._lock:
                self._counts["refused"] += 1
                refused = self._counts["refused"]
            # A flood of bad rows costs a handful of warnings; the fault never quotes the key.
            log_refusal(log, "the PostgreSQL change feed skipped a change from the log", refused, fault)
        # Before any callback: a connection that breaks here leaves nothing reported yet, to be read again.
        named = [(*gap, self._pruned.partitions(conn, *gap)) for gap in gaps]
        named += [(*gap, None) for gap in unread]
        for host, expected, got, partitions in named:
            log.warning("the PostgreSQL change log skips from seq %d to %d of host %r (%s)", expected, got,
                        host, "every partition" if partitions is None else f"partitions {partitions:#x}")
            self._call(self._on_gap, host, expected, got, partitions)
        if changes:
            self._call(self._on_changes, changes)
        with self._lock:
            self._positions = moved
            self._counts["changes"] += len(changes)
            self._counts["clears"] += sum(1 for change in changes if change.is_clear)
            self._counts["gaps"] += len(named)

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            self._count("callback_errors")
            log.exception("a change feed callback failed; going on")

    def _wait(self, conn: psycopg.Connection[Any], wake: socket.socket) -> None:
        """Until a notification that may bring news, ``stop()``, or ``poll_interval`` (then it polls)."""
        deadline = time.monotonic() + self.poll_interval
        pgconn = conn.pgconn
        while not self._stopping.is_set():
            # Notifications libpq already holds (read with a query's results) first: select won't see them.
            pgconn.consume_input()  # raises OperationalError on a broken connection
            while (notify := pgconn.notifies()) is not None:
                self._notified(notify.extra.decode("utf-8", "replace"))
            if self._heard:
                self._count("wakes")
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            readable, _, _ = select.select([conn.fileno(), wake.fileno()], [], [], remaining)
            if wake.fileno() in readable:
                return

    def _notified(self, payload: str) -> None:
        """A notification heard (while waiting, or during a read): does it bring news for this feed?"""
        self._count("notifies")
        host, _, seq = payload.rpartition(":")
        if host == self.host:
            return
        with self._lock:
            at = (self._positions or {}).get(host, 0)
        # One it can't read may bring news too: it reads.
        if not (seq.isascii() and seq.isdigit()) or int(seq) > at:
            self._heard = True

    def _sleep(self, seconds: float, wake: socket.socket) -> None:
        """Wait ``seconds``, or until ``stop()``."""
        with contextlib.suppress(OSError, ValueError):
            select.select([wake], [], [], seconds)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1
