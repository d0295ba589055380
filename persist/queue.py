"""The write-behind queue: records waiting for the store, coalesced by key, bounded, without I/O.

``WriteQueue`` is the pure half of the one write-behind engine (the runner,
``persist.writer.Writer``, is the other): a worker's ``Persistence`` and the
sidecar both queue through it. It has no lock, thread or clock; the runner
serialises calls. Rules:

* **Coalescing.** One entry per key: a record is merged into the queued one
  (``memsession.changes.merge_records``, the merge every store applies), so
  N changes of one session cost one write, and deltas of different keys all
  reach the store. A record that adds nothing is ``stale``.
* **In flight.** ``take`` moves a batch out of the queue into ``inflight``
  until the runner reports it ``done`` or ``failed``; reads (``get``) see
  both, merged.
* **Order.** Batches come out oldest key first; a batch that failed goes back
  in front, merged with what was queued for its keys meanwhile (a record
  that newer one already holds whole stays where that one is).
* **Refused records.** Records the store refused as such (``StoreRejected``)
  are never requeued: they are counted as ``rejected`` and remembered for a
  while (``refused``), so one bad record can't hold back the ones behind it.
* **Bound.** At most ``limit`` keys wait. When a new key would exceed it (the
  store has been down a while) the queue *overflows*: live records are dropped
  from it and counted as ``overflowed``; ``rewrite_due`` tells the runner to
  write everything its owner holds in memory once the store is back. While a
  rewrite is due, live records are not queued (``deferred``), since the rewrite
  brings them; once it runs they are queued again (it may have read memory
  before they arrived). Tombstones are always kept (one that lapses in
  memory before it reached the store would let the old session come back from
  it); only if tombstones alone fill the queue is the oldest dropped (``lost``).
* **Clear.** ``clear(version)`` drops queued live records at or below
  ``version`` (``cleared_by``: the store's clear removes and refuses them
  anyway) and remembers the highest clear the store has not taken yet
  (``clear_due``), which the runner applies before the next batch. Queued
  tombstones stay: a clear never ends a tombstone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from itertools import islice
from typing import Any

from memsession.changes import merge_records
from memsession.session import Record, cleared_by
from memsession.validate import check_int

__all__ = ["WriteQueue"]

#: How many refused keys are remembered (for acknowledgements and stats).
_REFUSED_KEPT = 10_000


class WriteQueue:
    """Records waiting for the store, at most one per key and at most ``limit`` keys."""

    def __init__(self, limit: int = 1_000_000) -> None:
        check_int("queue_limit", limit)
        self.limit = limit
        # A plain dict (insertion-ordered) is cheaper to add to than an OrderedDict on every
        # write; the one reordering, a failed batch going back in front, rebuilds it.
        self._pending: dict[str, Record] = {}
        #: Batches the runner is writing now, by key.
        self.inflight: dict[str, Record] = {}
        #: Set by an overflow until the runner starts rewriting; ``rewriting`` while it does.
        self.rewrite_due = False
        self.rewriting = False
        #: The highest clear seen: nothing live at or below it is queued again.
        self.cleared = 0
        #: The highest clear the store confirmed.
        self.store_cleared = 0
        #: ``(version, origin)`` of records the store refused, newest last.
        self.refused: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self.counts = dict.fromkeys(
            ("queued", "coalesced", "stale", "overflows", "overflowed", "deferred", "lost",
             "saved", "batches", "failed_batches", "rejected", "cleared"),
            0,
        )

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return not self._pending and not self.inflight

    def get(self, key: str) -> Record | None:
        """What of ``key`` is not yet stored (queued and in flight, merged), unless a clear covers it.

        ``partial`` when it is only deltas: the store holds the rest.
        """
        pending = self._pending.get(key)
        flying = self.inflight.get(key)
        if pending is None or flying is None:
            record = pending or flying
        else:
            record = merge_records(flying, pending, cleared=self.cleared) or flying
        return None if record is None or cleared_by(record, self.cleared) else record

    def add(self, record: Record) -> bool:
        """Queue ``record``; True if this call made the queue overflow (log it once)."""
        if cleared_by(record, self.cleared):
            self.counts["stale"] += 1
            return False
        key = record.key
        pending = self._pending
        old = pending.get(key)
        if old is not None:
            merged = merge_records(old, record, cleared=self.cleared)
            if merged is not None:
                pending[key] = merged
                self.counts["coalesced"] += 1
            else:
                self.counts["stale"] += 1
            return False
        if self.rewrite_due and not record.deleted:
            # The rewrite, when it starts, reads memory, which already holds this record. Once it
            # has started, records are queued again: it may have read memory before them.
            self.counts["deferred"] += 1
            return False
        overflowed = False
        if len(pending) >= self.limit:
            if not self.rewrite_due:
                self._overflow()
                overflowed = True
                if not record.deleted:
                    self.counts["deferred"] += 1
                    return True
            while len(pending) >= self.limit:
                del pending[next(iter(pending))]
                self.counts["lost"] += 1
        pending[key] = record
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
        """Move up to ``n`` records, oldest first, from the queue into flight."""
        pending = self._pending
        inflight = self.inflight
        out = [pending.pop(key) for key in list(islice(pending, n))]
        for record in out:
            inflight[record.key] = record
        return out

    def _land(self, batch: Iterable[Record]) -> None:
        inflight = self.inflight
        for record in batch:
            if inflight.get(record.key) is record:
                del inflight[record.key]

    def done(self, batch: list[Record], refused: Iterable[str] = ()) -> None:
        """The store took ``batch`` except the records of ``refused`` keys, which it refused as such."""
        self._land(batch)
        rejected = self._refuse(batch, set(refused))
        self.counts["saved"] += len(batch) - rejected
        self.counts["batches"] += 1

    def failed(self, batch: list[Record], refused: Iterable[str] = ()) -> None:
        """Writing ``batch`` failed: requeue it in front, merged with what was queued since, except what was refused."""
        self._land(batch)
        refused = set(refused)
        self._refuse(batch, refused)
        self.counts["failed_batches"] += 1
        pending = self._pending
        front: dict[str, Record] = {}
        room = self.limit - len(pending)
        for record in batch:
            if record.key in refused or cleared_by(record, self.cleared):
                continue
            newer = pending.get(record.key)
            if newer is not None:
                merged = merge_records(newer, record, cleared=self.cleared)
                if merged is None:
                    continue  # what was queued since holds all of it
                record = merged
            elif room <= 0:
                if not record.deleted:
                    if not self.rewrite_due:
                        self._overflow()
                    self.counts["deferred"] += 1
                else:
                    self.counts["lost"] += 1
                continue
            if newer is None:
                room -= 1
            front[record.key] = record
        if front:
            front.update((k, r) for k, r in self._pending.items() if k not in front)
            self._pending = front

    def _refuse(self, batch: Iterable[Record], keys: set[str]) -> int:
        if not keys:
            return 0
        count = 0
        for record in batch:
            if record.key in keys:
                self.refused[record.key] = (record.version, record.origin)
                self.refused.move_to_end(record.key)
                count += 1
        while len(self.refused) > _REFUSED_KEPT:
            self.refused.popitem(last=False)
        self.counts["rejected"] += count
        return count

    def rejected(self, records: Iterable[Record]) -> None:
        """The store refused ``records`` outside a queued batch (a write-through save)."""
        batch = list(records)
        self._refuse(batch, {r.key for r in batch})

    def settled(self, key: str, version: int, origin: int) -> bool | None:
        """Whether a record of ``key`` at ``(version, origin)`` that went through this queue is settled.

        True: the store has merged it (nothing of the key waits or is in
        flight, and no rewrite is due). False: not yet.
        None: the store refused it. Only meaningful for a record that was
        handed to ``add`` (or merged by the queue's owner) before the call.
        """
        if self.refused.get(key) == (version, origin):
            return None
        if key in self._pending or key in self.inflight:
            return False
        return not (self.rewrite_due or self.rewriting)

    def clear(self, version: int) -> bool:
        """A clear at ``version``: drop what it covers and owe the store that clear; True if it is new."""
        if version <= self.cleared:
            return False
        pending = self._pending
        covered = [k for k, r in pending.items() if cleared_by(r, version)]
        for key in covered:
            del pending[key]
        self.counts["cleared"] += len(covered)
        self.cleared = version
        return True

    @property
    def clear_due(self) -> int:
        """The highest clear watermark the store has not confirmed yet (0: none)."""
        return self.cleared if self.cleared > self.store_cleared else 0

    def clear_done(self, version: int) -> None:
        """The store took the clear at ``version`` (a higher one may have arrived meanwhile)."""
        self.store_cleared = max(self.store_cleared, version)

    def start_rewrite(self) -> None:
        """The runner starts writing everything held in memory."""
        self.rewrite_due = False
        self.rewriting = True

    def end_rewrite(self, ok: bool) -> None:
        """The rewrite finished (``ok``) or failed (it is due again)."""
        self.rewriting = False
        if not ok:
            self.rewrite_due = True

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["depth"] = len(self._pending)
        out["inflight"] = len(self.inflight)
        out["limit"] = self.limit
        out["rewrite_due"] = self.rewrite_due or self.rewriting
        out["clear_due"] = self.clear_due
        return out
