"""The sidecar's write-behind queue: coalesced by key, bounded, without I/O.

``WriteQueue`` holds the changes the hub has applied but the store has not
taken yet. It has no lock, thread or clock: the sidecar's runner serialises
calls and moves batches to the store. Rules:

* **Coalescing.** One entry per key: a newer record (``persist.base.supersedes``)
  replaces the queued one, so N updates of one session cost one write.
* **Order.** Batches come out oldest key first; a key re-queued after a failed
  batch keeps its place unless something newer arrived meanwhile.
* **Bound.** At most ``limit`` keys wait. When a new key would exceed it (the
  store has been down a while) the queue *overflows*: live records are dropped
  from it and counted as ``overflowed``; ``rewrite_due`` tells the runner to
  write the whole replica once the store is back (the replica holds the newest
  value of every live session, so nothing live is lost). Tombstones are kept:
  the replica forgets them when they lapse, and a lapsed tombstone that never
  reached the store would let the old session come back from it. While
  ``rewrite_due`` is set, live records are not queued (``deferred``); only if
  tombstones alone fill the queue is the oldest one dropped, counted as
  ``lost``.
* **Clear.** ``clear(version)`` drops queued live records at or below
  ``version`` (the store's own clear removes and refuses them anyway; writing
  them first would only be wasted work) and remembers the highest clear the
  store has not taken yet, which the runner applies before the next batch.
  Queued tombstones stay: a clear never ends a tombstone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from memsession.errors import ConfigError
from memsession.session import Record, cleared_by

from .base import supersedes

__all__ = ["WriteQueue"]


class WriteQueue:
    """Records waiting for the store, at most one per key and at most ``limit`` keys."""

    def __init__(self, limit: int = 1_000_000) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError("queue_limit", limit, "must be an int >= 1")
        self.limit = limit
        self._pending: OrderedDict[str, Record] = OrderedDict()
        #: Set by an overflow; cleared by ``start_rewrite``.
        self.rewrite_due = False
        #: The highest clear seen: a failed batch taken before it must not bring back what it covers.
        self.cleared = 0
        #: The highest clear the store confirmed.
        self.store_cleared = 0
        self.counts = dict.fromkeys(
            ("queued", "coalesced", "stale", "overflows", "overflowed", "deferred", "lost",
             "saved", "batches", "failed_batches", "cleared"),
            0,
        )

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    def get(self, key: str) -> Record | None:
        return self._pending.get(key)

    def add(self, record: Record) -> bool:
        """Queue ``record``; True if this call made the queue overflow (log it once)."""
        key = record.key
        old = self._pending.get(key)
        if old is not None:
            if supersedes(record, old):
                self._pending[key] = record
                self.counts["coalesced"] += 1
            else:
                self.counts["stale"] += 1
            return False
        if self.rewrite_due and not record.deleted:
            self.counts["deferred"] += 1
            return False
        overflowed = False
        if len(self._pending) >= self.limit:
            if not self.rewrite_due:
                self._overflow()
                overflowed = True
                if not record.deleted:
                    self.counts["deferred"] += 1
                    return True
            while len(self._pending) >= self.limit:
                self._pending.popitem(last=False)
                self.counts["lost"] += 1
        self._pending[key] = record
        self.counts["queued"] += 1
        return overflowed

    def _overflow(self) -> None:
        live = [k for k, r in self._pending.items() if not r.deleted]
        for key in live:
            del self._pending[key]
        self.rewrite_due = True
        self.counts["overflows"] += 1
        self.counts["overflowed"] += len(live)

    def take(self, n: int) -> list[Record]:
        """Remove and return up to ``n`` records, oldest first."""
        pending = self._pending
        out: list[Record] = []
        while pending and len(out) < n:
            out.append(pending.popitem(last=False)[1])
        return out

    def done(self, batch: Iterable[Record]) -> None:
        """The store took ``batch``."""
        size = sum(1 for _ in batch)
        self.counts["saved"] += size
        self.counts["batches"] += 1

    def failed(self, batch: list[Record]) -> None:
        """The store refused ``batch``: put it back in front, unless newer records arrived meanwhile."""
        self.counts["failed_batches"] += 1
        pending = self._pending
        for record in reversed(batch):
            if cleared_by(record, self.cleared):
                continue
            newer = pending.get(record.key)
            if newer is not None and not supersedes(record, newer):
                continue
            if newer is None and len(pending) >= self.limit:
                if not record.deleted:
                    if not self.rewrite_due:
                        self._overflow()
                    self.counts["deferred"] += 1
                    continue
                self.counts["lost"] += 1
                continue
            pending[record.key] = record
            pending.move_to_end(record.key, last=False)

    def clear(self, version: int) -> None:
        """A clear at ``version``: drop what it covers and owe the store that clear."""
        pending = self._pending
        covered = [k for k, r in pending.items() if cleared_by(r, version)]
        for key in covered:
            del pending[key]
        self.counts["cleared"] += len(covered)
        self.cleared = max(self.cleared, version)

    @property
    def clear_due(self) -> int:
        """The highest clear watermark the store has not confirmed yet (0: none)."""
        return self.cleared if self.cleared > self.store_cleared else 0

    def clear_done(self, version: int) -> None:
        """The store took the clear at ``version`` (a higher one may have arrived meanwhile)."""
        self.store_cleared = max(self.store_cleared, version)

    def start_rewrite(self) -> None:
        """The runner is about to write the whole replica: new changes queue normally again."""
        self.rewrite_due = False

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["depth"] = len(self._pending)
        out["limit"] = self.limit
        out["rewrite_due"] = self.rewrite_due
        out["clear_due"] = self.clear_due
        return out
