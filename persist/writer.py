"""The write-behind runner: one thread that moves ``WriteQueue`` batches into a store.

``Writer`` is the I/O half of the one write-behind engine (``persist.queue``
is the pure half). A worker's ``Persistence`` and the sidecar each own one::

    add(record) ──> WriteQueue (merged per key, bounded)
                        │ every flush_interval, or at once when batch_size keys wait
                        v
    writer thread: owed clear ─> store.save(batch) ─> refused records isolated
                        │ store failing: retry with backoff (retry_min doubling to retry_max)
                        └─ store.purge(now) every prune_interval (one pruner per store)

* A store outage is logged twice: once when it starts, once when it ends;
  the errors in between are counted (``write_errors``) and retried.
* A record the store refuses as such (``StoreRejected``: a constraint, a
  size) is left out of its batch (named by the store, or found by halving the
  batch), logged and counted as ``rejected``; the rest of the batch is written.
* After the queue overflowed, the runner writes everything ``rewrite_source``
  holds (the sidecar's replica, a worker's sessions in memory).
* ``close()`` keeps retrying for ``close_timeout`` seconds, then logs how many
  changes it could not write (``lost``).
* ``on_written`` runs after every batch, rewrite page or clear the store took.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from memsession.clock import SYSTEM_CLOCK, Clock
from memsession.errors import ConfigError, StoreError, StoreRejected
from memsession.session import Record
from memsession.validate import check_int, check_number

from .base import Store
from .queue import WriteQueue

__all__ = ["Writer", "WriterConfig"]

log = logging.getLogger("memsession.persist")


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterConfig:
    """Options of the write-behind engine (a worker's ``PersistConfig`` and the sidecar's share them). Seconds."""

    #: Longest a change waits before it is written (the write-behind loss window).
    flush_interval: float = 0.1
    #: Records per ``store.save``; a batch is written at once when this many keys wait.
    batch_size: int = 2000
    #: Most keys waiting for the store; beyond, live changes are rewritten from memory later.
    queue_limit: int = 1_000_000
    #: First and longest pause between retries while the store fails (doubling).
    retry_min: float = 0.1
    retry_max: float = 2.0
    #: Purge expired sessions from the store this often; None leaves it to another process.
    prune_interval: float | None = None
    #: ``close()`` keeps retrying queued writes this long before giving up (and saying how many).
    close_timeout: float = 10.0

    def __post_init__(self) -> None:
        check_number("flush_interval", self.flush_interval)
        check_int("batch_size", self.batch_size)
        check_int("queue_limit", self.queue_limit)
        check_number("retry_min", self.retry_min)
        check_number("retry_max", self.retry_max)
        check_number("prune_interval", self.prune_interval, allow_none=True)
        check_number("close_timeout", self.close_timeout, allow_zero=True)
        if self.retry_max < self.retry_min:
            raise ConfigError("retry_max", self.retry_max, "must be >= retry_min")


class Writer:
    """A ``WriteQueue`` and the thread that writes it to ``store``. Thread-safe.

    ``clock`` gives wall time for purges and ages; the thread waits in real time.
    """

    def __init__(
        self,
        store: Store,
        config: WriterConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rewrite_source: Callable[[], Iterable[Record]] | None = None,
        on_written: Callable[[], None] | None = None,
        thread_name: str = "memsession-writer",
        unwritten_note: str = "they are lost",
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.rewrite_source = rewrite_source
        self.on_written = on_written
        self.unwritten_note = unwritten_note  # what becomes of changes unwritten at close, for the log
        self.queue = WriteQueue(config.queue_limit)
        self._batch_size = config.batch_size
        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)
        self._settled = threading.Condition(self.lock)
        self._clearing = False  # one store.clear at a time: a repeat could scan a whole database again
        self._stopping = False
        self.failing = False
        self.last_error = ""
        #: Wall time the oldest unwritten change was queued; None when all is written.
        self.dirty_since: float | None = None
        self.last_flush: float | None = None
        self.counts = dict.fromkeys(
            ("write_errors", "clears", "clear_errors", "purged", "purge_errors", "rewrites", "rewritten",
             "unwritten_at_exit"),
            0,
        )
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    # -- feeding ---------------------------------------------------------------------

    def add(self, record: Record) -> None:
        """Queue a change; the thread writes it within ``flush_interval`` (on the request path: kept lean)."""
        queue = self.queue
        with self.lock:
            if queue.add(record):
                log.error("write-behind queue overflowed (%d keys, store %s failing); live sessions "
                          "will be rewritten from memory when the store is back", queue.limit, self.store.name)
            depth = len(queue)
            if self.dirty_since is None and depth:
                self.dirty_since = self.clock.wall()
            if depth >= self._batch_size:
                self._wake.notify()

    def get(self, key: str) -> Record | None:
        """The newest unwritten record of ``key`` (queued or being written), if any."""
        with self.lock:
            return self.queue.get(key)

    def settled(self, key: str, version: int, origin: int) -> bool | None:
        """``WriteQueue.settled`` under the lock: True stored, False not yet, None refused by the store."""
        with self.lock:
            return self.queue.settled(key, version, origin)

    def wake(self) -> None:
        """Write now rather than at the next flush interval."""
        with self.lock:
            self._wake.notify()

    def clear(self, version: int, *, wait: bool) -> bool:
        """Make a clear at ``version`` stick in the store; True if it was new here.

        Drops queued live records it covers. ``wait``: apply it to the store in
        this thread now; else the writer thread applies it before its next
        batch. Store trouble is never raised: it is logged and counted
        (``clear_errors``) and the clear stays owed, so the thread retries it.
        """
        with self.lock:
            if not self.queue.clear(version):
                return False
            if self.dirty_since is None:
                self.dirty_since = self.clock.wall()
            self._wake.notify()
        if wait:
            with contextlib.suppress(StoreError):  # counted and logged by _apply_clear; retried
                self._apply_clear()
        return True

    def save_now(self, record: Record) -> None:
        """Write one record in this thread (write-through); on failure it is queued and the error raised."""
        try:
            self.store.save([record])
        except StoreRejected:
            with self.lock:
                self.queue.rejected([record])
            raise
        except StoreError as exc:
            self._failed("save", exc)
            self.add(record)
            self.wake()
            raise
        with self.lock:
            self.queue.counts["saved"] += 1
        self._recovered()

    # -- writing ---------------------------------------------------------------------

    def flush(self) -> int:
        """Write everything queued now, in this thread (a clear the store owes first); how many were taken.

        Returns once nothing is queued or in flight (a batch the writer thread
        is saving is waited for). Raises the store's error if it fails (what
        failed, and the clear, stay queued).
        """
        self._apply_clear()
        written = 0
        while True:
            with self.lock:
                batch = self.queue.take(self.config.batch_size)
                if not batch:
                    while self.queue.inflight and not len(self.queue):
                        self._settled.wait()
                    if len(self.queue):
                        continue
                    self.dirty_since = None
                    return written
            self._save(batch)
            written += len(batch)

    def _save(self, batch: list[Record]) -> None:
        refused: set[str] = set()
        try:
            self._save_isolating(batch, refused)
        except BaseException as exc:
            with self.lock:
                self.queue.failed(batch, refused)
                self._settled.notify_all()
            self._failed("save", exc)
            raise
        with self.lock:
            self.queue.done(batch, refused)
            self.last_flush = self.clock.wall()
            self._settled.notify_all()
        self._written()

    def _save_isolating(self, batch: list[Record], refused: set[str]) -> None:
        """Save ``batch``; records the store refuses are left out (into ``refused``), the rest written.

        When the store names the refused keys they are dropped at once,
        otherwise the batch is halved until they are found.
        """
        try:
            self.store.save(batch)
            return
        except StoreRejected as exc:
            named = set(exc.keys or ()) & {r.key for r in batch}
            if named or len(batch) == 1:
                dropped = named or {batch[0].key}
                refused |= dropped
                log.error("session store %s refused %d session record(s); dropped: %s",
                          self.store.name, len(dropped), exc)
                rest = [r for r in batch if r.key not in dropped]
                if rest:
                    self._save_isolating(rest, refused)
                return
        middle = len(batch) // 2
        self._save_isolating(batch[:middle], refused)
        self._save_isolating(batch[middle:], refused)

    def _apply_clear(self) -> None:
        """Hand the store the clear it owes, if any; raise its error (the clear stays owed)."""
        with self.lock:
            while self._clearing:
                self._settled.wait()
            version = self.queue.clear_due
            if not version:
                return
            self._clearing = True
        try:
            removed = self.store.clear(version)
        except BaseException as exc:
            with self.lock:
                self.counts["clear_errors"] += 1
            self._failed("clear", exc)
            raise
        else:
            with self.lock:
                self.counts["clears"] += 1
                self.queue.clear_done(version)
        finally:
            with self.lock:
                self._clearing = False
                self._settled.notify_all()
        log.info("cleared %d sessions from %s (watermark %d)", removed, self.store.name, version)
        self._written()

    def _rewrite(self) -> None:
        """After an overflow: write everything the owner holds in memory (the store's merge skips what it has)."""
        source = self.rewrite_source
        with self.lock:
            self.queue.start_rewrite()
            self.counts["rewrites"] += 1
        ok = False
        try:
            records = list(source()) if source is not None else []
            log.warning("rewriting %d sessions from memory to %s after a queue overflow",
                        len(records), self.store.name)
            size = self.config.batch_size
            for start in range(0, len(records), size):
                page = records[start:start + size]
                refused: set[str] = set()
                try:
                    self._save_isolating(page, refused)
                except BaseException as exc:
                    self._failed("rewrite", exc)
                    raise
                with self.lock:
                    self.queue.rejected(r for r in page if r.key in refused)
                    self.counts["rewritten"] += len(page) - len(refused)
                self._written()
            ok = True
        finally:
            with self.lock:
                self.queue.end_rewrite(ok)

    def _written(self) -> None:
        self._recovered()
        if self.on_written is not None:  # e.g. the acknowledgement thread rechecks its waiters
            self.on_written()

    def _failed(self, op: str, exc: BaseException) -> None:
        with self.lock:
            if op != "clear":  # a failed clear is counted as clear_errors
                self.counts["write_errors"] += 1
            self.last_error = f"{op}: {exc}"[:300]
            was_failing, self.failing = self.failing, True
        if not isinstance(exc, Exception):
            return
        if not isinstance(exc, StoreError):
            log.error("unexpected error writing to %s; retrying", self.store.name, exc_info=exc)
        elif not was_failing:
            log.warning("session store %s failing (%s); changes stay queued and are retried", self.store.name, exc)
        else:
            log.debug("session store %s still failing: %s", self.store.name, exc)

    def _recovered(self) -> None:
        with self.lock:
            was_failing, self.failing = self.failing, False
            depth = len(self.queue)
        if was_failing:
            log.warning("session store %s is back; %d keys still queued", self.store.name, depth)

    def _prune(self) -> None:
        try:
            purged = self.store.purge(self.clock.wall())
        except Exception as exc:  # noqa: BLE001 (logged and counted; pruning retries next interval)
            with self.lock:
                self.counts["purge_errors"] += 1
            log.warning("purging expired sessions from %s failed: %s", self.store.name, exc)
            return
        with self.lock:
            self.counts["purged"] += purged
        if purged:
            log.info("purged %d expired sessions from %s", purged, self.store.name)

    def _run(self) -> None:
        cfg = self.config
        backoff = 0.0
        next_prune = None if cfg.prune_interval is None else self.clock.monotonic() + cfg.prune_interval
        deadline: float | None = None
        while True:
            with self.lock:
                stopping = self._stopping
                if stopping and deadline is None:
                    deadline = time.monotonic() + cfg.close_timeout
                if backoff:
                    wait = backoff if deadline is None else min(backoff, max(0.0, deadline - time.monotonic()))
                    self._wake.wait(wait)
                elif not stopping and len(self.queue) < cfg.batch_size:
                    self._wake.wait(cfg.flush_interval)
            try:
                self.flush()
                if self.queue.rewrite_due:
                    self._rewrite()
                    self.flush()
            except Exception:  # noqa: BLE001 (logged and counted in _failed; the writer never dies)
                backoff = min(max(backoff * 2, cfg.retry_min), cfg.retry_max)
                if deadline is not None and time.monotonic() >= deadline:
                    break
                continue
            backoff = 0.0
            if stopping:
                with self.lock:
                    if self.queue.idle and not self.queue.clear_due:
                        break
                continue
            if next_prune is not None and self.clock.monotonic() >= next_prune:
                self._prune()
                next_prune = self.clock.monotonic() + cfg.prune_interval  # type: ignore[operator]

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> int:
        """Stop the thread after it wrote what is queued (within ``close_timeout``); return how many it could not."""
        with self.lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread.is_alive():
            # Bounded: a store call that hangs must not hang the process's shutdown.
            self._thread.join(self.config.close_timeout + 5.0)
            if self._thread.is_alive():
                log.error("session writer still busy with the store %s after close_timeout", self.store.name)
        with self.lock:
            left = len(self.queue) + len(self.queue.inflight)
            owed = self.queue.clear_due
            self.counts["unwritten_at_exit"] = left
        if left:
            log.error("stopping with %d session changes the store %s did not take; %s",
                      left, self.store.name, self.unwritten_note)
        if owed:
            log.error("stopping before the store %s took the clear at watermark %d; it may still return "
                      "sessions that clear ended", self.store.name, owed)
        return left

    def stats(self) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = dict(self.counts)
            out.update(self.queue.stats())
            wall = self.clock.wall()
            # Wall times (None: never / nothing unwritten) besides the ages, for /metrics' timestamps.
            out.update(store=self.store.name, failing=self.failing, last_error=self.last_error,
                       cleared=self.queue.cleared, last_flush_at=self.last_flush, unwritten_since=self.dirty_since)
            out["last_flush_age_s"] = -1.0 if self.last_flush is None else round(wall - self.last_flush, 3)
            out["unwritten_age_s"] = 0.0 if self.dirty_since is None else round(wall - self.dirty_since, 3)
        return out
