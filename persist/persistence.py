"""A store behind a worker's SessionCache: read-through, write-through, write-behind.

``SessionCache(persistence=Persistence(store, ...))``: the cache hands every
local change to ``emit`` and every miss to ``read``. Writes go through the one
write-behind engine (``persist.writer.Writer`` over ``persist.queue.WriteQueue``),
the same one the sidecar runs.

Durability of each mode:

* ``write_through``: ``set()`` and ``destroy()`` return only after the store
  accepted the record. If the store fails, they raise the ``StoreError``
  (the new value is already in memory and replicated) and the record is
  queued and retried until the store takes it. Touches (sliding expiry) are
  always written behind: a read never waits for, or fails on, the store.
* ``write_behind``: every change is queued and written in batches every
  ``flush_interval`` seconds, or as soon as ``batch_size`` keys wait. A
  process that dies loses at most what was queued; ``close()`` flushes.

Either way a store outage is logged once when it starts and once when it
ends, counted, and retried with backoff (see ``persist.writer``). A record the
store refuses as such (``StoreRejected``) is dropped, logged and counted as
``rejected``, so it can't hold back the sessions queued behind it.

Reads: a key memory doesn't hold is looked up in the queue, then in the store
(one ``load``, a primary-key read); a queue that holds only deltas of the
key is merged into what the store has. Unknown keys are remembered for
``negative_ttl`` seconds so a flood of bogus ids doesn't reach the store.
Reads and preloads never hand back a live record a clear covers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any, Final, Literal, Protocol

from memsession.clock import SYSTEM_CLOCK, Clock
from memsession.config import Config
from memsession.errors import ConfigError, StoreError
from memsession.session import Record, cleared_by
from memsession.validate import check_choice, check_int, check_number

from .base import Store, check_clear_version, merge_row
from .writer import Writer, WriterConfig

__all__ = ["PersistConfig", "Persistence"]

log = logging.getLogger("memsession.persist")

WRITE_THROUGH: Final = "write_through"
WRITE_BEHIND: Final = "write_behind"
_METHODS = ("load", "load_all", "save", "delete", "purge", "clear", "close")


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistConfig(WriterConfig):
    """How a SessionCache uses its store: the write-behind engine's options plus these. Seconds."""

    #: ``"write_through"`` (durable when set/destroy return) or ``"write_behind"`` (batched).
    mode: Literal["write_through", "write_behind"] = WRITE_BEHIND
    #: How long an id the store doesn't know is answered "unknown" without asking again; 0 disables.
    negative_ttl: float = 1.0
    #: Most ids remembered as unknown (oldest forgotten first).
    negative_max: int = 10_000
    #: A miss memory can't serve while the store is down: ``"raise"`` the StoreError, or ``"miss"`` (None).
    on_read_error: Literal["raise", "miss"] = "raise"
    #: Load every live session from the store when the cache starts (up to its ``maxsize``).
    preload: bool = False
    #: Close the store when the cache closes.
    close_store: bool = True

    def __post_init__(self) -> None:
        WriterConfig.__post_init__(self)
        check_choice("mode", self.mode, (WRITE_THROUGH, WRITE_BEHIND))
        check_number("negative_ttl", self.negative_ttl, allow_zero=True)
        check_int("negative_max", self.negative_max)
        check_choice("on_read_error", self.on_read_error, ("raise", "miss"))


class BackedCache(Protocol):
    """What ``Persistence.attach`` needs from the cache (``SessionCache`` provides it)."""

    clock: Clock
    config: Config

    def apply(self, record: Record) -> bool: ...

    def records(self) -> list[Record]: ...


class Persistence:
    """Read-through and write-through/behind to one store for one cache. Thread-safe.

    ``Persistence(store, config=None, **options)``: options are ``PersistConfig``
    fields and override ``config``. The cache it is attached to lends it its clock.
    """

    def __init__(self, store: Store, config: PersistConfig | None = None, *, clock: Clock | None = None,
                 **options: Any) -> None:
        if not isinstance(store, Store):
            # Name what is missing: a store written before a method was added fails here, at start.
            missing = ", ".join(m for m in ("name", *_METHODS) if not hasattr(store, m))
            reason = "must implement persist.base.Store"
            raise ConfigError("store", store, f"{reason}; missing: {missing}" if missing else reason)
        known = {f.name for f in fields(PersistConfig)}
        for name, value in options.items():
            if name not in known:
                raise ConfigError(name, value, f"unknown option; known: {', '.join(sorted(known))}")
        self.store = store
        self.config = cfg = replace(config or PersistConfig(), **options)
        self._own_clock = clock is not None
        self.clock = clock or SYSTEM_CLOCK
        self._writer = Writer(store, cfg, clock=self.clock).start()
        #: Guards the negative cache and the read counters (request threads share them).
        self._lock = threading.Lock()
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._attached = False
        self._closed = False
        self._counts = dict.fromkeys(
            ("write_through", "read_through", "read_hits", "read_misses", "negative_hits", "read_errors", "lost"),
            0,
        )
        self._pid = os.getpid()

    def attach(self, cache: BackedCache) -> None:
        """Serve ``cache``: take its clock, rewrite from its sessions after an overflow, preload it if asked."""
        if self._attached:
            raise ConfigError("persistence", self, "already serves a cache; give each cache its own")
        self._attached = True
        if not self._own_clock:
            self.clock = self._writer.clock = cache.clock
        self._writer.rewrite_source = cache.records
        if self.config.preload:
            self.preload(cache.apply, cache.config.maxsize)

    def _check_process(self, op: str) -> None:
        # A forked child has no writer thread and shares the parent's connections.
        if os.getpid() != self._pid:
            raise StoreError(
                "this SessionCache's store was opened before a fork; make the cache (and its store) "
                "in the process that uses it, e.g. in gunicorn's post_fork",
                store=self.store.name,
                op=op,
            )

    # -- writes ------------------------------------------------------------------

    def emit(self, record: Record, *, touch: bool = False) -> None:
        """Persist a local change according to the mode (see the module docstring)."""
        self._check_process("save")
        if self._closed:
            with self._lock:
                self._counts["lost"] += 1
            log.error("session change after the store was closed is not persisted")
            return
        if self._negative:  # on the request path: take the lock only when there is something to forget
            with self._lock:
                self._negative.pop(record.key, None)
        if self.config.mode == WRITE_BEHIND or touch:
            self._writer.add(record)
            return
        self._writer.save_now(record)
        with self._lock:
            self._counts["write_through"] += 1

    def clear(self, version: int, *, wait: bool = True) -> None:
        """Make a clear at ``version`` (an HLC version) stick in the store; the cache has cleared itself.

        Queued live records it covers are dropped (queued tombstones are still
        written). ``wait``: the store is told now (the process that cleared);
        else on the writer thread (a clear that came over the bus: the bus
        thread must not wait for a database). Store trouble is logged, counted
        (``clear_errors``) and never raised: the writer retries the highest
        clear still owed before its next batch. ``ConfigError`` if ``version``
        is not an int in ``[0, 2**63 - 1]``.
        """
        version = check_clear_version(version, self.store.name)
        self._check_process("clear")
        if self._closed:
            self._writer.counts["clear_errors"] += 1
            log.error("clear (watermark %d) after the store %s was closed is not persisted", version, self.store.name)
            return
        self._writer.clear(version, wait=wait)

    def flush(self) -> int:
        """Write everything queued now; return how many records were taken. Raises the store's error."""
        return self._writer.flush()

    # -- reads -------------------------------------------------------------------

    def read(self, key: str) -> Record | None:
        """The newest record of ``key`` outside memory: what is queued or in flight merged into the stored record.

        Never a delta alone, and never a queued record alone either: even a
        whole one is only what this process held, and the store may have keys
        other workers wrote (a delta with nothing stored stands for the
        session, as the store will keep it). None when neither knows it
        or the store holds only an expired copy (remembered ``negative_ttl``
        seconds). A store failure is raised, or answered None when
        ``on_read_error="miss"``; either way logged and counted.
        """
        self._check_process("load")
        cfg = self.config
        counts = self._counts
        queued = self._writer.get(key)
        with self._lock:
            counts["read_through"] += 1
            until = self._negative.get(key) if queued is None else None
            if until is not None:
                if until > self.clock.monotonic():
                    counts["negative_hits"] += 1
                    return None
                del self._negative[key]
        try:
            record = self.store.load(key)
        except StoreError as exc:
            with self._lock:
                counts["read_errors"] += 1
            log.warning("reading session from %s failed: %s", self.store.name, exc)
            if cfg.on_read_error == "raise":
                raise
            return None
        if queued is not None:
            record = merge_row(record, queued, self._cleared) or record
        if record is not None and (record.expires <= self.clock.wall() or cleared_by(record, self._cleared)):
            # Expired but not purged yet, or read just before a clear reached the store:
            # as good as unknown, and remembered as such.
            record = None
        with self._lock:
            if record is None:
                counts["read_misses"] += 1
                if cfg.negative_ttl:
                    self._negative[key] = self.clock.monotonic() + cfg.negative_ttl
                    self._negative.move_to_end(key)
                    while len(self._negative) > cfg.negative_max:
                        self._negative.popitem(last=False)
            else:
                counts["read_hits"] += 1
        return record

    @property
    def _cleared(self) -> int:
        return self._writer.queue.cleared

    def forget(self, key: str) -> None:
        """Drop ``key`` from the negative cache (it was written elsewhere)."""
        with self._lock:
            self._negative.pop(key, None)

    def preload(self, apply: Callable[[Record], Any], limit: int) -> int:
        """Feed up to ``limit`` live records from the store to ``apply``; return how many."""
        count = 0
        stream: Iterable[Record] = self.store.load_all(self.clock.wall())
        try:
            for record in stream:
                if count >= limit:
                    break
                if cleared_by(record, self._cleared):
                    continue
                apply(record)
                count += 1
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return count

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Flush the queue (retrying up to ``close_timeout``), stop the writer, close the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        lost = self._writer.close()
        with self._lock:
            self._counts["lost"] += lost
        if self.config.close_store:
            self.store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        out = self._writer.stats()
        with self._lock:
            out.update(self._counts)
            out["negative"] = len(self._negative)
        refused = getattr(self.store, "refused", None)  # the adapters' ``RefusedRecords``; own stores may lack it
        out["store_refused"] = getattr(refused, "count", 0)
        out["mode"] = self.config.mode
        out["queued"] = out["depth"] + out["inflight"]
        return out
