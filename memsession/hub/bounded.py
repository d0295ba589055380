"""What the hub's replica holds: the merge, the bound on live sessions, and the warm start's choice.

The replica is a plain ``dict`` (other threads of a sidecar read it with one
C-level call); ``Recency`` keeps the access order of its live records beside
it and says which to evict once there are more than ``maxsize``. Access is
every read (GET) and every change (bus write, push, touch, read-back). The
policy is the workers' (``SegmentedLRUCache``): a session's first record
puts it on probation and its next access protects it, so a flood of new
sessions churns through probation and can't push out sessions in use.

Only live records count and only they are evicted. Tombstones and the clear
watermark keep their own rules: a tombstone stays until it lapses, the
watermark only rises. Evicting a tombstone could bring its session back: a
worker that missed the destroy (it repairs after a gap, or pushes what it
holds to a restarted hub) hands the hub its older live copy, which nothing
would then beat, and the hub would relay it to every worker. Tombstones are
bounded by how many sessions are destroyed within their lifetime instead.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from ..changes import merge_records
from ..segmented import SegmentedLRUCache
from ..session import Record, cleared_by

__all__ = ["Recency", "merge_into", "warm_fill"]


def merge_into(replica: dict[str, Record], record: Record, wall: float, cleared: int = 0) -> bool:
    """Merge ``record`` into ``replica`` by ``changes.merge_records``; True if ``replica`` changed.

    ``cleared`` is the clear watermark (the caller refuses a live record it
    covers whole, ``session.cleared_by``; within a newer one it drops the
    keys it covers). A result that has already expired is not kept; it only
    removes the live copy it replaced.
    """
    key = record.key
    old = replica.get(key)
    merged = merge_records(old, record, cleared=cleared)
    if merged is None:
        return False
    if merged.expires <= wall:
        if old is not None and not old.deleted:
            del replica[key]
            return True
        return False
    replica[key] = merged
    return True


class Recency:
    """The access order of the replica's live records and the bound on their number (no I/O)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        # Without timeouts the cache core is just its eviction order: the one home of that rule.
        self._order = SegmentedLRUCache(maxsize)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def hold(self, record: Record) -> list[str]:
        """``record`` is held live (a change counts as an access); the keys evicted to make room."""
        return [e.key for e in self._order.insert(record.key, record, now=0.0)]

    def used(self, key: str) -> None:
        """``key`` was read: it moves to the most recently used end."""
        self._order.lookup(key, 0.0)

    def release(self, key: str) -> None:
        """``key`` is no longer held live (destroyed, expired, cleared, evicted)."""
        self._order.pop(key, None)

    def reset(self, records: Iterable[Record]) -> list[str]:
        """Start over with ``records``, least recently used first; the keys that did not fit."""
        self._order.clear()
        return [key for record in records for key in self.hold(record)]


def warm_fill(replica: dict[str, Record], records: Iterable[Record], *, maxsize: int, wall: float,
              cleared: int) -> tuple[int, int]:
    """Merge a store's records into ``replica``: every tombstone, at most ``maxsize`` live ones.

    The live records kept are the most recently accessed, whatever order the
    store streams them in (a heap of what is held; memory stays near
    ``maxsize``). Returns ``(records read, live records left out)``.
    """
    by_access: list[tuple[float, int, str]] = []  # live records held, least recently accessed on top
    live = read = left_out = 0
    for record in records:
        read += 1
        if cleared_by(record, cleared):
            continue
        key = record.key
        old = replica.get(key)
        if not merge_into(replica, record, wall, cleared):
            continue
        new = replica.get(key)
        live += (new is not None and not new.deleted) - (old is not None and not old.deleted)
        if new is not None and not new.deleted:
            heapq.heappush(by_access, (new.accessed, read, key))
        while live > maxsize:
            accessed, _, oldest = heapq.heappop(by_access)
            held = replica.get(oldest)
            if held is not None and not held.deleted and held.accessed == accessed:  # else a stale entry
                del replica[oldest]
                live -= 1
                left_out += 1
    return read, left_out
