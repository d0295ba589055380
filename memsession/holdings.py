"""What one SessionCache holds: live records, tombstones, the clear watermark and their accounting.

The cache core decides which records are live and which a full cache
evicts: ``SegmentedLRUCache`` (sessions used more than once outlast floods of
new ones), or ``ExpiringLRUCache`` with ``protected_fraction=0``. This
object keeps what the core does not know about: the tombstones of destroyed
sessions, the clear watermark, the bytes held, evictions by cause and the
operation counters; and it applies the one merge (``changes.merge_records``:
destroy first, then key by key) to records that came from elsewhere.

No lock and no I/O: ``SessionCache`` calls every method with its lock held
and publishes or persists what they return. ``core`` and ``counts`` are
never rebound, so the cache may keep references to them for its read path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .cache import EVICTED_IDLE, EVICTED_MAX_AGE, EVICTED_SIZE, Eviction, ExpiringLRUCache
from .changes import after_clear, merge_records, reflects
from .clock import Clock
from .config import Config
from .expiring import ExpiringCache
from .segmented import SegmentedLRUCache
from .session import Record, cleared_by, compute_expires

__all__ = ["ORPHANS_MAX", "Holdings", "core_for"]

#: How often (monotonic seconds) reads sweep expired sessions and tombstones.
_SWEEP_EVERY = 1.0
#: Most deltas of sessions not held here kept for when their whole session arrives.
ORPHANS_MAX = 10_000


def core_for(config: Config, clock: Clock) -> ExpiringCache:
    """The cache core ``config`` asks for: segmented LRU, or plain LRU when nothing is protected.

    Every read hit (``lookup``, ``[]``) and every insert of a key already held
    (a local write or touch, or a change from elsewhere) counts as a use.
    """
    if config.protected_fraction:
        return SegmentedLRUCache(config.maxsize, config.idle_timeout, config.max_age, timer=clock.monotonic,
                                 protected_fraction=config.protected_fraction)
    return ExpiringLRUCache(config.maxsize, config.idle_timeout, config.max_age, timer=clock.monotonic)


class Holdings:
    """The sessions and tombstones of one cache, with their byte and eviction accounting."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.core = core_for(config, clock)
        #: Destroyed sessions in burial order: ``{key: (tombstone, monotonic time it lapses)}``.
        self.tombstones: OrderedDict[str, tuple[Record, float]] = OrderedDict()
        #: Deltas of sessions not held here, merged (oldest first, at most ``ORPHANS_MAX``): each
        #: publisher's messages arrive in order, but not across publishers, so the change a second
        #: worker made may come before the first worker's whole new session. Never served; merged
        #: into the session when it arrives (by the bus or read through).
        self.orphans: OrderedDict[str, Record] = OrderedDict()
        #: The clear watermark: no live session written at or before this version is held or accepted.
        self.cleared = 0
        #: Serialized size of the live records held.
        self.bytes = 0
        #: What the core evicted on its own, by cause.
        self.evicted = dict.fromkeys((EVICTED_IDLE, EVICTED_MAX_AGE, EVICTED_SIZE), 0)
        self.counts = dict.fromkeys(
            ("invalid_ids", "sets", "touches", "destroys", "applied", "ignored", "clears",
             "revalidated", "unverified", "unavailable", "lost_writes", "refused"),
            0,
        )
        #: When (monotonic) the next read sweeps.
        self.next_sweep = clock.monotonic() + _SWEEP_EVERY

    # -- one key ----------------------------------------------------------------

    def tombstone(self, key: str, now: float) -> Record | None:
        """The live tombstone for ``key``, if any (an outlived one is forgotten)."""
        entry = self.tombstones.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self.tombstones[key]
            return None
        return entry[0]

    def record(self, key: str, now: float) -> Record | None:
        """The live record for ``key`` or its tombstone, without counting an access."""
        tomb = self.tombstone(key, now)
        return tomb if tomb is not None else self.core.peek(key)

    def recent(self, key: str, version: int, origin: int, now: float) -> Record | None:
        """The record or tombstone for ``key`` if it reflects the change ``(version, origin)`` (``changes.reflects``)."""
        record = self.tombstone(key, now) or self.core.peek(key)
        if record is not None and reflects(record, version, origin):
            return record
        return None

    def store(
        self,
        record: Record,
        old: Record | None,
        now: float,
        *,
        created: float | None = None,
        accessed: float | None = None,
    ) -> None:
        """Hold ``record`` in place of ``old`` (the live copy it replaces, if any)."""
        evicted = self.core.insert(record.key, record, created=created, accessed=accessed, now=now)
        self.bytes += record.size - (old.size if old is not None else 0)
        if evicted:
            self._account(evicted, replaced=old)

    def touch(self, record: Record, wall: float) -> Record:
        """Hold ``record`` as accessed at ``wall`` (its expiry slid); return the touched copy."""
        touched = record.touched(
            wall, compute_expires(record.created, wall, self.config.idle_timeout, self.config.max_age)
        )
        self._account(self.core.insert(record.key, touched), replaced=record)
        self.counts["touches"] += 1
        return touched

    def remove(self, key: str, old: Record) -> None:
        """Drop the live copy ``old`` of ``key``."""
        del self.core[key]
        self.bytes -= old.size

    def destroy(self, key: str, version: int, origin: int, now: float, wall: float) -> tuple[Record, bool]:
        """End ``key`` by the change ``(version, origin)``: ``(its tombstone, whether a live copy was held)``.

        The tombstone keeps the session's ``created`` and lives ``tombstone_ttl``.
        """
        old: Record | None = self.core.peek(key, now=now)
        if old is not None:
            self.remove(key, old)
        created = old.created if old is not None else wall
        tombstone = Record(key, {}, version, origin, created, wall, wall + self.config.tombstone_ttl, True)
        self.bury(tombstone, now)
        return tombstone, old is not None

    def bury(self, tombstone: Record, now: float) -> None:
        """Keep ``tombstone`` until its ``expires`` (wall time) has passed."""
        wall = self.clock.wall()
        until = now + max(0.0, tombstone.expires - wall)
        self.tombstones[tombstone.key] = (tombstone, until)
        self.tombstones.move_to_end(tombstone.key)

    # -- records from elsewhere ---------------------------------------------------

    def merge(self, record: Record, now: float, wall: float) -> bool:
        """Merge a record that came from elsewhere by the one rule; True if it changed what is held.

        ``changes.merge_records``: a tombstone beats any live version,
        otherwise key by key the later change wins; nothing the clear
        watermark covers is taken in. A delta (``partial``) is merged only
        into a live copy held here: a session this process does not hold is
        read whole from the hub or store when a request asks for it. A
        result that has already expired removes the copy and is not kept.
        """
        if cleared_by(record, self.cleared):
            self.counts["ignored"] += 1
            return False
        key = record.key
        tomb = self.tombstone(key, now) if self.tombstones else None
        old: Record | None = tomb if tomb is not None else self.core.peek(key)
        if record.partial and old is None:
            self._keep_orphan(record, wall)
            self.counts["ignored"] += 1
            return False
        merged = merge_records(old, record, cleared=self.cleared)
        if merged is not None and not merged.deleted and self.orphans:
            orphan = self.orphans.pop(key, None)
            if orphan is not None:
                merged = merge_records(merged, orphan, cleared=self.cleared) or merged
        if merged is None or merged.partial:
            self.counts["ignored"] += 1
            return False
        live = old if tomb is None else None
        if merged.deleted:
            if live is not None:
                self.remove(key, live)
            self.orphans.pop(key, None)
            self.bury(merged, now)
        else:
            if tomb is not None:  # a tombstone already dead when this was written
                del self.tombstones[key]
            if merged.expires <= wall:
                if live is not None:
                    self.remove(key, live)
                self.counts["ignored"] += 1
                return live is not None
            self.store(
                merged,
                live,
                now,
                # the same creation keeps the same deadline: recomputing it would drift by rounding
                created=None if live is not None and live.created == merged.created else now - (wall - merged.created),
                accessed=now - (wall - merged.accessed),
            )
        self.counts["applied"] += 1
        return True

    def _keep_orphan(self, delta: Record, wall: float) -> None:
        """Keep a delta of a session not held here until the session arrives (merged with earlier ones)."""
        orphans = self.orphans
        earlier = orphans.pop(delta.key, None)
        kept = delta if earlier is None else (merge_records(earlier, delta, cleared=self.cleared) or earlier)
        if kept is not None and kept.expires > wall:
            orphans[delta.key] = kept
            while len(orphans) > ORPHANS_MAX:
                orphans.popitem(last=False)

    def discard(self, key: str, version: int, origin: int) -> bool:
        """Drop the live copy of ``key`` unless it already reflects the change ``(version, origin)``; True if dropped.

        Not "if older": a copy holding a later change of another writer can
        still lack this one (changes merge key by key).
        """
        old: Record | None = self.core.peek(key)
        if old is None or reflects(old, version, origin):
            return False
        self.remove(key, old)
        self.counts["applied"] += 1
        return True

    def clear(self, version: int) -> None:
        """Raise the watermark and drop what it covers (``changes.after_clear``); tombstones stay until they lapse."""
        self.cleared = version
        self.counts["clears"] += 1
        core = self.core
        now, wall = self.clock.monotonic(), self.clock.wall()
        for key in list(core):
            old = core.peek(key)
            if old is None:
                continue
            kept = after_clear(old, version)
            if kept is None:
                self.remove(key, old)
            elif kept is not old:  # a newer session keeps only the keys changed after the clear
                self.store(kept, old, now, accessed=now - (wall - kept.accessed))  # its expiry unchanged
        for key, orphan in list(self.orphans.items()):
            kept = after_clear(orphan, version)
            if kept is None:
                del self.orphans[key]
            else:
                self.orphans[key] = kept

    # -- everything held ------------------------------------------------------------

    def records(self, now: float) -> list[Record]:
        """Every live record and live tombstone (after a sweep)."""
        self.sweep(now)
        core = self.core
        out = [core.peek(key) for key in list(core)]
        out.extend(tomb for tomb, until in self.tombstones.values() if until > now)
        return [r for r in out if r is not None]

    def drop_live(self) -> None:
        """Forget every live record (tombstones and the watermark stay)."""
        self.core.clear()
        self.orphans.clear()
        self.bytes = 0

    def forget_live(self, goes: Callable[[Record], bool]) -> int:
        """Forget the live records (and orphan deltas) ``goes`` picks; tombstones and the watermark stay.

        How many live records went. Their sessions are read through when next used.
        """
        core = self.core
        dropped = 0
        for key in list(core):
            old = core.peek(key)
            if old is not None and goes(old):
                self.remove(key, old)
                dropped += 1
        for key in [key for key, orphan in self.orphans.items() if goes(orphan)]:
            del self.orphans[key]
        return dropped

    def count(self) -> int:
        """How many live records are held; exact right after a sweep."""
        # The core's own len() sweeps and would drop what it evicts unreported;
        # callers sweep first, so the raw count is the live count.
        return self.core.held_count()

    def sweep(self, now: float) -> int:
        """Drop expired sessions and lapsed tombstones; return how many sessions went."""
        self.next_sweep = now + _SWEEP_EVERY
        evicted = self.core.evict_expired(now)
        self._account(evicted)
        tombstones = self.tombstones
        while tombstones:
            key, (_, until) = next(iter(tombstones.items()))
            if until > now:
                break
            del tombstones[key]
        return len(evicted)

    def stats(self, now: float) -> dict[str, Any]:
        """Counters, evictions so far, then (after a sweep) current sizes (a fresh dict)."""
        out: dict[str, Any] = dict(self.counts)
        out["evicted"] = dict(self.evicted)
        out["expired"] = self.evicted[EVICTED_IDLE] + self.evicted[EVICTED_MAX_AGE]
        self.sweep(now)
        out["sessions"] = self.count()
        out["tombstones"] = len(self.tombstones)
        out["bytes"] = self.bytes
        out["maxsize"] = self.config.maxsize
        return out

    def _account(self, evicted: list[Eviction], replaced: Record | None = None) -> None:
        for _key, value, cause in evicted:
            if value is replaced:
                continue  # replaced records were already subtracted by the caller
            self.evicted[cause] += 1
            self.bytes -= value.size
