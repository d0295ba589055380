"""Persistence behind a SessionCache: read-through, write-through, write-behind.

``Persistence`` is what ``SessionCache(store=...)`` builds. It owns one
writer thread and a queue of records not yet stored, coalesced by key (only
the newest record of a key waits; ``persist.base.supersedes`` decides).

Durability of each mode:

* ``write_through``: ``set()`` and ``destroy()`` return only after the store
  accepted the record. If the store fails, they raise the ``StoreError``
  (the new value is already in memory and replicated) and the record stays
  queued and is retried until the store takes it. Touches (sliding expiry)
  are always written behind: a read never waits for, or fails on, the store.
* ``write_behind``: every change is queued and written in batches every
  ``flush_interval`` seconds, or as soon as ``flush_records`` keys wait. A
  process that dies loses at most what was queued; ``close()`` flushes.

Either way a store outage is logged (once when it starts, once when it ends),
counted in ``stats()``, and retried with backoff; queued writes are never
dropped while the process lives (``close()`` gives up after
``close_timeout`` and logs how many records it could not write). The one
exception: a record the store refuses as such (``StoreRejected``: too
large, failing a constraint) is dropped, logged and counted as
``rejected``, so it can't hold back the sessions queued behind it.

Reads: a key that memory doesn't hold is looked up in the queue, then in the
store (one ``load``, a primary-key read). Unknown keys are remembered for
``negative_ttl`` seconds so a flood of bogus ids doesn't reach the store.

Clears (``clear``, after the cache's own): queued live records the clear
covers are dropped (``cleared_by``); queued tombstones stay and are written,
whatever their version, since a clear never removes a tombstone. The store is
told at once (``Store.clear``), and if it fails the writer thread retries
before its next batch, as for saves; ``close()`` too. Reads and preloads never
hand back a live record the clear covers, even one a batch in flight still
holds. Since the store's clear commutes with saves, what was in flight needs
nothing more. The negative cache needs nothing either: an id the store didn't
know is not brought back by a clear.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final, Literal

from memsession.clock import SYSTEM_CLOCK, Clock
from memsession.errors import ConfigError, StoreError, StoreRejected
from memsession.session import Record

from .base import Store, check_clear_version, cleared_by, supersedes

__all__ = ["PersistConfig", "Persistence"]

log = logging.getLogger("memsession.persist")

WRITE_THROUGH: Final = "write_through"
WRITE_BEHIND: Final = "write_behind"
_METHODS = ("load", "load_all", "save", "delete", "purge", "clear", "close")


def _number(option: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(option, value, "must be a number")
    if value < 0 or (value == 0 and not allow_zero) or value == float("inf"):
        raise ConfigError(option, value, "must be finite and > 0" + (" (or 0)" if allow_zero else ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistConfig:
    """How a SessionCache uses its store. Times are seconds."""

    #: ``"write_through"`` (durable when set/destroy return) or ``"write_behind"`` (batched).
    mode: Literal["write_through", "write_behind"] = WRITE_BEHIND
    #: Write-behind: longest a change waits in the queue.
    flush_interval: float = 0.05
    #: Write-behind: write as soon as this many keys wait; also the largest batch.
    flush_records: int = 1000
    #: How long an id the store doesn't know is answered "unknown" without asking again; 0 disables.
    negative_ttl: float = 1.0
    #: Most ids remembered as unknown (oldest forgotten first).
    negative_max: int = 10_000
    #: First and longest pause between retries while the store is failing.
    retry_min: float = 0.1
    retry_max: float = 5.0
    #: Purge expired sessions from the store this often (connect-pg-simple's pruneSessionInterval);
    #: None leaves pruning to someone else (one pruner per store is enough).
    prune_interval: float | None = None
    #: ``close()`` keeps retrying queued writes this long before giving up.
    close_timeout: float = 10.0
    #: A miss memory can't serve while the store is down: ``"raise"`` the StoreError, or ``"miss"`` (None).
    on_read_error: Literal["raise", "miss"] = "raise"
    #: Load every live session from the store when the cache starts (up to ``maxsize``).
    preload: bool = False
    #: Close the store when the cache closes.
    close_store: bool = True

    def __post_init__(self) -> None:
        if self.mode not in (WRITE_THROUGH, WRITE_BEHIND):
            raise ConfigError("mode", self.mode, "must be 'write_through' or 'write_behind'")
        _number("flush_interval", self.flush_interval)
        _number("negative_ttl", self.negative_ttl, allow_zero=True)
        _number("retry_min", self.retry_min)
        _number("retry_max", self.retry_max)
        _number("prune_interval", self.prune_interval, allow_none=True)
        _number("close_timeout", self.close_timeout, allow_zero=True)
        for option in ("flush_records", "negative_max"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(option, value, "must be an int >= 1")
        if self.retry_max < self.retry_min:
            raise ConfigError("retry_max", self.retry_max, "must be >= retry_min")
        if self.on_read_error not in ("raise", "miss"):
            raise ConfigError("on_read_error", self.on_read_error, "must be 'raise' or 'miss'")


class Persistence:
    """Queue, writer thread and read-through for one store. Thread-safe.

    ``clock`` drives the negative cache and pruning (wall time for purge);
    the writer thread waits in real time.
    """

    def __init__(self, store: Store, config: PersistConfig | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        if not isinstance(store, Store):
            # Name what is missing: a store written before a method was added fails here, at start.
            missing = ", ".join(m for m in ("name", *_METHODS) if not hasattr(store, m))
            reason = "must implement persist.base.Store"
            raise ConfigError("store", store, f"{reason}; missing: {missing}" if missing else reason)
        self.store = store
        self.config = cfg = config if config is not None else PersistConfig()
        self.clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._settled = threading.Condition(self._lock)
        self._pending: dict[str, Record] = {}
        self._inflight: dict[str, Record] = {}
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._stopping = False
        self._closed = False
        self._failing = False
        #: The highest clear this process knows of: no live record at or below it is queued or read back.
        self._cleared = 0
        #: The highest clear the store confirmed; the store owes ``_cleared`` while it is lower.
        self._store_cleared = 0
        self._clearing = False  # one store.clear at a time: a repeat could scan a whole database again
        self._next_prune = clock.monotonic() + cfg.prune_interval if cfg.prune_interval else None
        self._counts = dict.fromkeys(
            (
                "saved",
                "batches",
                "write_through",
                "write_errors",
                "read_through",
                "read_hits",
                "read_misses",
                "negative_hits",
                "read_errors",
                "purged",
                "purge_errors",
                "clears",
                "clear_errors",
                "rejected",
                "lost",
            ),
            0,
        )
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="memsession-writer", daemon=True)
        self._thread.start()

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
        key = record.key
        if self._closed:
            with self._lock:
                self._counts["lost"] += 1
            log.error("session change after the store was closed is not persisted")
            return
        if self.config.mode == WRITE_BEHIND or touch:
            with self._lock:
                self._negative.pop(key, None)
                self._enqueue_locked(record)
                if len(self._pending) >= self.config.flush_records:
                    self._wake.notify()
            return
        with self._lock:
            self._negative.pop(key, None)
        try:
            self.store.save([record])
        except StoreRejected:
            with self._lock:
                self._counts["rejected"] += 1
            raise
        except StoreError as exc:
            with self._lock:
                self._counts["write_errors"] += 1
                self._enqueue_locked(record)
                self._wake.notify()
            self._outage(exc)
            raise
        with self._lock:
            self._counts["write_through"] += 1
            self._counts["saved"] += 1

    def _enqueue_locked(self, record: Record) -> None:
        if cleared_by(record, self._cleared):
            return  # a live record the store would ignore anyway; tombstones go on
        old = self._pending.get(record.key)
        if old is None or supersedes(record, old):
            self._pending[record.key] = record

    def clear(self, version: int, *, wait: bool = True) -> None:
        """Make a clear at ``version`` (an HLC version) stick in the store; the cache has cleared itself.

        Drops queued live records at or below ``version`` (queued tombstones
        are still written) and calls ``store.clear(version)``: now with ``wait``
        (the process that cleared), else on the writer thread (a clear that came
        over the bus: the bus thread must not wait for a database). Store
        trouble is logged, counted (``clear_errors``) and never raised: the
        writer thread retries the highest clear still owed before its next
        batch. A clear the store already took, or already owes, costs nothing.
        ``ConfigError`` if ``version`` is not an int in ``[0, 2**63 - 1]``.
        """
        version = check_clear_version(version, self.store.name)
        self._check_process("clear")
        with self._lock:
            if self._closed:
                self._counts["clear_errors"] += 1
                log.error("clear (watermark %d) after the store %s was closed is not persisted",
                          version, self.store.name)
                return
            if version <= self._cleared:
                return  # known already: the store took it, or owes it and the writer retries it
            self._cleared = version
            for key in [k for k, r in self._pending.items() if cleared_by(r, version)]:
                del self._pending[key]
            if not wait:
                self._wake.notify()
                return
        try:
            self._apply_clear()
        except StoreError:
            with self._lock:
                self._wake.notify()

    def _apply_clear(self) -> None:
        """Hand the store the clear it owes, if any; raise its error (the clear stays owed)."""
        with self._lock:
            while self._clearing:
                self._settled.wait()
            version = self._owed_clear()
            if not version:
                return
            self._clearing = True
        try:
            removed = self.store.clear(version)
        except StoreError as exc:
            with self._lock:
                self._counts["clear_errors"] += 1
            self._outage(exc)
            raise
        else:
            with self._lock:
                self._counts["clears"] += 1
                self._store_cleared = max(self._store_cleared, version)
        finally:
            with self._lock:
                self._clearing = False
                self._settled.notify_all()
        log.info("cleared %d sessions from %s (watermark %d)", removed, self.store.name, version)
        self._recovered()

    def _owed_clear(self) -> int:
        """The clear the store has not taken yet, or 0 (call with the lock held)."""
        return self._cleared if self._cleared > self._store_cleared else 0

    def flush(self) -> int:
        """Write everything queued now (a clear the store owes first); return how many records it wrote.

        Returns once nothing is queued or in flight (a batch the writer thread
        is saving is waited for). Raises the store's error if it fails (the
        records, and the clear, stay queued).
        """
        self._apply_clear()
        written = 0
        while True:
            batch = self._take()
            if batch:
                self._save(batch)
                written += len(batch)
                continue
            with self._lock:
                while self._inflight and not self._pending:
                    self._settled.wait()
                if not self._pending:
                    return written

    def _take(self) -> list[Record]:
        with self._lock:
            if not self._pending:
                return []
            keys = list(islice(self._pending, self.config.flush_records))
            batch = [self._pending.pop(k) for k in keys]
            for record in batch:
                self._inflight[record.key] = record
            return batch

    def _save_isolating(self, batch: list[Record], refused: set[str]) -> None:
        """Save ``batch``; records the store refuses are left out (into ``refused``), the rest written.

        One refused record must not hold back every session queued behind it:
        when the store names them they are dropped, otherwise the batch is
        split in halves until they are found.
        """
        try:
            self.store.save(batch)
            return
        except StoreRejected as exc:
            named = set(exc.keys or ()) & {r.key for r in batch}
            if named or len(batch) == 1:
                dropped = named or {batch[0].key}
                refused |= dropped
                log.error(
                    "session store %s refused %d session record(s); dropped: %s", self.store.name, len(dropped), exc
                )
                rest = [r for r in batch if r.key not in dropped]
                if rest:
                    self._save_isolating(rest, refused)
                return
        middle = len(batch) // 2
        self._save_isolating(batch[:middle], refused)
        self._save_isolating(batch[middle:], refused)

    def _save(self, batch: list[Record]) -> None:
        refused: set[str] = set()
        try:
            self._save_isolating(batch, refused)
        except BaseException as exc:
            with self._lock:
                self._counts["rejected"] += len(refused)
                for record in batch:
                    if self._inflight.get(record.key) is record:
                        del self._inflight[record.key]
                    if record.key not in refused:
                        self._enqueue_locked(record)
                if isinstance(exc, StoreError):
                    self._counts["write_errors"] += 1
                self._settled.notify_all()
            raise
        with self._lock:
            for record in batch:
                if self._inflight.get(record.key) is record:
                    del self._inflight[record.key]
            self._counts["rejected"] += len(refused)
            self._counts["saved"] += len(batch) - len(refused)
            self._counts["batches"] += 1
            self._settled.notify_all()
        self._recovered()

    def _outage(self, exc: StoreError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("session store %s failing (%s); changes are queued and retried", self.store.name, exc)
        else:
            log.debug("session store %s still failing: %s", self.store.name, exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("session store %s is back; %d records still queued", self.store.name, len(self._pending))

    def _run(self) -> None:
        cfg = self.config
        backoff = cfg.retry_min
        deadline: float | None = None
        while True:
            with self._lock:
                if not self._stopping and len(self._pending) < cfg.flush_records:
                    self._wake.wait(cfg.flush_interval)
                stopping = self._stopping
                if stopping and deadline is None:
                    deadline = time.monotonic() + cfg.close_timeout
            try:
                self.flush()
                backoff = cfg.retry_min
            except StoreError as exc:
                self._outage(exc)
                if stopping and deadline is not None and time.monotonic() >= deadline:
                    break
                with self._lock:
                    self._wake.wait(backoff)
                backoff = min(backoff * 2, cfg.retry_max)
                continue
            except Exception:
                log.exception("session writer failed unexpectedly; retrying")
                with self._lock:
                    self._wake.wait(backoff)
                backoff = min(backoff * 2, cfg.retry_max)
                continue
            if stopping:
                with self._lock:
                    if not self._pending and not self._owed_clear():
                        break
                continue
            self._maybe_prune()

    def _maybe_prune(self) -> None:
        if self._next_prune is None or self.clock.monotonic() < self._next_prune:
            return
        assert self.config.prune_interval is not None
        self._next_prune = self.clock.monotonic() + self.config.prune_interval
        try:
            purged = self.store.purge(self.clock.wall())
        except StoreError as exc:
            with self._lock:
                self._counts["purge_errors"] += 1
            log.warning("purging expired sessions from %s failed: %s", self.store.name, exc)
            return
        with self._lock:
            self._counts["purged"] += purged

    # -- reads -------------------------------------------------------------------

    def read(self, key: str) -> Record | None:
        """The newest record of ``key`` outside memory: queued, in flight, or stored.

        None when the store doesn't know it or holds only an expired copy (remembered ``negative_ttl``
        seconds). A store failure is raised, or answered None when
        ``on_read_error="miss"``; either way it is logged and counted.
        """
        self._check_process("load")
        cfg = self.config
        with self._lock:
            self._counts["read_through"] += 1
            queued = self._pending.get(key) or self._inflight.get(key)
            # A batch in flight may still hold a live record a clear covers: ask the store instead.
            if queued is not None and not cleared_by(queued, self._cleared):
                self._counts["read_hits"] += 1
                return queued
            until = self._negative.get(key)
            if until is not None:
                if until > self.clock.monotonic():
                    self._counts["negative_hits"] += 1
                    return None
                del self._negative[key]
        try:
            record = self.store.load(key)
        except StoreError as exc:
            with self._lock:
                self._counts["read_errors"] += 1
            log.warning("reading session from %s failed: %s", self.store.name, exc)
            if cfg.on_read_error == "raise":
                raise
            return None
        if record is not None and (record.expires <= self.clock.wall() or cleared_by(record, self._cleared)):
            # Expired but not purged yet, or read just before a clear reached the store:
            # as good as unknown, and remembered as such.
            record = None
        with self._lock:
            if record is None:
                self._counts["read_misses"] += 1
                if cfg.negative_ttl:
                    self._negative[key] = self.clock.monotonic() + cfg.negative_ttl
                    self._negative.move_to_end(key)
                    while len(self._negative) > cfg.negative_max:
                        self._negative.popitem(last=False)
            else:
                self._counts["read_hits"] += 1
        return record

    def forget(self, key: str) -> None:
        """Drop ``key`` from the negative cache (it was written elsewhere)."""
        with self._lock:
            self._negative.pop(key, None)

    def preload(self, apply: Callable[[Record], Any], limit: int) -> int:
        """Feed up to ``limit`` live records from the store to ``apply``; return how many."""
        count = 0
        stream = self.store.load_all(self.clock.wall())
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
            self._stopping = True
            self._wake.notify_all()
        # Bounded: a store call that hangs must not hang the process's shutdown.
        self._thread.join(self.config.close_timeout + 5.0)
        if self._thread.is_alive():
            log.error("session writer still busy with the store %s after close_timeout", self.store.name)
        with self._lock:
            lost = len(self._pending) + len(self._inflight)
            self._counts["lost"] += lost
            clear_due = self._owed_clear()
        if clear_due:
            log.error(
                "closing before the store %s took the clear at watermark %d; "
                "it may still return sessions that clear ended",
                self.store.name,
                clear_due,
            )
        if lost:
            log.error(
                "closing with %d session changes the store %s did not accept; they are lost",
                lost,
                self.store.name,
            )
        if self.config.close_store:
            self.store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["store"] = self.store.name
            out["mode"] = self.config.mode
            out["queued"] = len(self._pending) + len(self._inflight)
            out["failing"] = self._failing
            out["negative"] = len(self._negative)
            out["cleared"] = self._cleared
            out["clear_due"] = self._owed_clear()
            return out
