"""SessionCache: the thread-safe facade over the cache core.

It owns the lock, the clocks, versions, tombstones and counters; the core
(``ExpiringLRUCache``) decides what is live and returns what it evicted.
Every local change funnels through ``_emit`` and every remote one through
``apply``: the seams where replication and persistence plug in.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from cachetools import Cache

from .cache import EVICTED_IDLE, EVICTED_MAX_AGE, EVICTED_SIZE, Eviction, ExpiringLRUCache
from .clock import SYSTEM_CLOCK, Clock, HybridClock
from .config import Config
from .errors import CacheClosed, ConfigError, SessionDestroyed
from .session import (
    Record,
    SessionData,
    check_sid,
    cleared_by,
    compute_expires,
    copy_data,
    is_valid_sid,
    prepare_packed,
    supersedes,
)

if TYPE_CHECKING:
    from .backing import Backing
    from .bus.base import Bus

__all__ = ["SessionCache"]

log = logging.getLogger("memsession")

#: How often (monotonic seconds) reads sweep expired sessions and tombstones.
_SWEEP_EVERY = 1.0
#: How long a read waits for the hub while a gap is repaired (the hub is up; a GET takes well under 1 ms).
_REVALIDATE_TIMEOUT = 0.25


class SessionCache:
    """Sessions held in this process's memory, with express-session Store parity.

    ``SessionCache(config=None, *, clock=SYSTEM_CLOCK, origin=None, **options)``:
    options are ``Config`` fields (``maxsize``, ``idle_timeout``, ``max_age``,
    ``touch_interval``, ``tombstone_ttl``, ``max_session_bytes``) and override
    ``config``. Safe to share between threads.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        origin: int | None = None,
        bus: Bus | None = None,
        persistence: Backing | None = None,
        **options: Any,
    ) -> None:
        if "store" in options:
            raise ConfigError("store", options["store"], "give persistence=persist.Persistence(store, ...) instead")
        self.config = cfg = Config.from_options(config, **options)
        self.clock = clock
        self.origin = origin if origin is not None else secrets.randbits(63) or 1
        self.hlc = HybridClock(clock)
        self._core = ExpiringLRUCache(
            cfg.maxsize, cfg.idle_timeout, cfg.max_age, timer=clock.monotonic
        )
        self._lock = threading.Lock()
        #: Notified when a merged record may be what a ``wait_for`` is waiting for.
        self._arrived = threading.Condition(self._lock)
        self._waiters = 0
        self._tombstones: OrderedDict[str, tuple[Record, float]] = OrderedDict()
        self._next_sweep = clock.monotonic() + _SWEEP_EVERY
        self._closed = False
        self._bytes = 0
        self._touch_interval = cfg.touch_interval
        self._hits = self._misses = 0  # attributes, not dict items: they are on the read path
        self._counts = dict.fromkeys(
            ("invalid_ids", "sets", "touches", "destroys", "applied", "ignored", "clears",
             "revalidated", "unverified"),
            0,
        )
        #: The clear watermark: no live session written at or before this version is held or accepted.
        self.cleared = 0
        #: Set while the bus repairs a gap: a hit is checked with the hub before it is served.
        self._repairing = False
        self._verified: set[str] = set()
        self._hub_unreachable = False
        self._evicted = dict.fromkeys((EVICTED_IDLE, EVICTED_MAX_AGE, EVICTED_SIZE), 0)
        #: Read-through and write-through/behind to a store (``persist.Persistence``); None without one.
        self.persistence: Backing | None = None
        #: Replication transport (``memsession.bus``); joins the bus before the constructor returns.
        self.bus: Bus | None = None
        #: ``invalidate`` mode: receivers drop copies, so a miss is read through the hub.
        self._bus_reads = False
        self.connect(bus=bus, persistence=persistence)

    def connect(self, *, bus: Bus | None = None, persistence: Backing | None = None,
                new_origin: bool = False) -> None:
        """Give this cache a store and/or a bus it was made without (each at most once).

        The store comes first, so a preload lands before the bus asks for a
        snapshot. ``new_origin``: take a fresh writer id first, as a cache made
        before a fork must (forked copies must never share one).
        """
        if persistence is not None:
            if self.persistence is not None:
                raise ConfigError("persistence", persistence, "this cache already has a store")
            self.persistence = persistence
            persistence.attach(self)
        if bus is not None:
            if self.bus is not None:
                raise ConfigError("bus", bus, "this cache already has a bus")
            if new_origin:
                self.origin = secrets.randbits(63) or 1
            self.bus = bus
            self._bus_reads = bool(getattr(bus, "reads_through", False))
            bus.attach(self)

    # -- express-session Store parity ----------------------------------------

    def get(self, sid: str) -> SessionData | None:
        """The session's data (a copy), or None if unknown, expired or destroyed.

        A malformed id is a miss, counted as ``invalid_ids``: cookies come
        from outside and a bad one must not raise.
        """
        if type(sid) is not str:
            self._counts["invalid_ids"] += 1
            return None
        touched = None
        with self._lock:
            if self._closed:
                raise CacheClosed("SessionCache is closed")
            now = self.clock.monotonic()
            # Only valid ids are ever stored, so a hit needs no validation.
            record: Record | None = self._core.lookup(sid, now)
            if now >= self._next_sweep:
                self._sweep_locked(now)
            if record is None:
                if not is_valid_sid(sid):
                    self._counts["invalid_ids"] += 1
                    return None
                self._misses += 1
                if (self.persistence is None and not self._bus_reads) or self._tombstone_locked(
                    sid, now
                ) is not None:
                    return None
            else:
                self._hits += 1
                wall = self.clock.wall()
                if wall - record.accessed >= self._touch_interval:
                    touched = self._touch_locked(record, wall)
        if record is None:
            record = self._read_through(sid)
            if record is None:
                return None
        elif self._repairing and sid not in self._verified:
            record = self._revalidate(sid, record)
            if record is None:
                return None
        if touched is not None:
            self._emit(touched, touch=True)
        return dict(record.data) if record.flat else copy_data(record)

    def set(self, sid: str, data: Mapping[str, Any]) -> Record:
        """Store ``data`` as the session's new value; return the new record.

        Raises ``InvalidSessionId``, ``SessionDataError`` (a ``TypeError``
        naming the bad value's key path), ``SessionTooLarge``, or
        ``SessionDestroyed`` if the id was destroyed and its tombstone lives.
        """
        check_sid(sid)
        copy, packed, flat = prepare_packed(data, self.config.max_session_bytes)
        with self._lock:
            self._check_open()
            now = self.clock.monotonic()
            if self._tombstone_locked(sid, now) is not None:
                raise SessionDestroyed(sid)
            wall = self.clock.wall()
            old: Record | None = self._core.peek(sid)
            created = old.created if old is not None else wall
            record = Record(
                sid,
                copy,
                self.hlc.now(),
                self.origin,
                created,
                wall,
                compute_expires(created, wall, self.config.idle_timeout, self.config.max_age),
                False,
                flat,
                len(packed),
            )
            self._store_locked(record, old, now)
            self._counts["sets"] += 1
        self._emit(record, packed=packed)
        return record

    def touch(self, sid: str) -> bool:
        """Mark the session used now (sliding its idle timeout); False if unknown.

        The new access time is propagated at most once per ``touch_interval``.
        """
        check_sid(sid)
        touched = None
        with self._lock:
            self._check_open()
            try:
                record = self._core[sid]
            except KeyError:
                if (self.persistence is None and not self._bus_reads) or self._tombstone_locked(
                    sid, self.clock.monotonic()
                ):
                    return False
                record = None
            else:
                wall = self.clock.wall()
                if wall - record.accessed >= self.config.touch_interval:
                    touched = self._touch_locked(record, wall)
        if record is None:
            return self._read_through(sid) is not None and self.touch(sid)
        if touched is not None:
            self._emit(touched, touch=True)
        return True

    def destroy(self, sid: str) -> bool:
        """End the session everywhere; True if it was live here.

        Leaves a tombstone for ``tombstone_ttl`` seconds, so no write of this
        id (local or remote, however late) brings it back.
        """
        check_sid(sid)
        with self._lock:
            self._check_open()
            now = self.clock.monotonic()
            wall = self.clock.wall()
            old: Record | None = self._core.peek(sid)
            existed = old is not None
            if old is not None:
                self._remove_locked(sid, old)
            tombstone = Record(
                sid,
                {},
                self.hlc.now(),
                self.origin,
                old.created if old is not None else wall,
                wall,
                wall + self.config.tombstone_ttl,
                True,
            )
            self._bury_locked(tombstone, now)
            self._counts["destroys"] += 1
        self._emit(tombstone)
        return existed

    def all(self) -> dict[str, SessionData]:
        """Every live session held here: ``{sid: data}`` (copies)."""
        with self._lock:
            self._check_open()
            self._sweep_locked(self.clock.monotonic())
            return {sid: copy_data(self._core.peek(sid)) for sid in iter(self._core)}

    def length(self) -> int:
        """How many live sessions this process holds."""
        with self._lock:
            self._check_open()
            self._sweep_locked(self.clock.monotonic())
            return self._count_locked()

    __len__ = length

    def __contains__(self, sid: object) -> bool:
        with self._lock:
            return is_valid_sid(sid) and sid in self._core

    def __iter__(self) -> Iterator[str]:
        """Ids of the live sessions held here (a snapshot)."""
        with self._lock:
            self._sweep_locked(self.clock.monotonic())
            return iter([sid for sid in iter(self._core)])

    def clear(self) -> None:
        """End every session everywhere: here, on every replica and in the store.

        What goes is every session last written at or before this moment's
        version; that version stays behind as a watermark, so no late write
        from before the clear brings a session back. Sessions written after
        the clear, anywhere, are kept. Tombstones stay until they lapse:
        destroyed stays destroyed.
        """
        with self._lock:
            self._check_open()
            version = self.hlc.now()
            self._clear_locked(version)
        self._emit_clear(version)

    def evict_all(self) -> None:
        """Drop every session from this process's memory only (tombstones stay).

        Nothing is ended: other replicas and the store keep their copies, and
        a read brings a session back through the store or the hub.
        """
        with self._lock:
            self._check_open()
            self._core.clear()
            self._bytes = 0

    def prune(self) -> int:
        """Drop expired sessions and tombstones now; return how many sessions went."""
        with self._lock:
            self._check_open()
            return self._sweep_locked(self.clock.monotonic())

    def close(self) -> None:
        """Stop accepting operations (and close the bus). Idempotent."""
        if self.bus is not None:
            self.bus.close()
        with self._lock:
            self._closed = True
        if self.persistence is not None:
            self.persistence.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SessionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters since construction and current sizes (a fresh dict)."""
        with self._lock:
            out: dict[str, Any] = {"hits": self._hits, "misses": self._misses, **self._counts}
            out["evicted"] = dict(self._evicted)
            out["expired"] = self._evicted[EVICTED_IDLE] + self._evicted[EVICTED_MAX_AGE]
            self._sweep_locked(self.clock.monotonic())
            out["sessions"] = self._count_locked()
            out["tombstones"] = len(self._tombstones)
            out["bytes"] = self._bytes
            out["maxsize"] = self.config.maxsize
        if self.bus is not None:
            out["replication"] = self.bus.stats()
        if self.persistence is not None:
            out["persistence"] = self.persistence.stats()
        return out

    # -- records from elsewhere ----------------------------------------------

    def record(self, sid: str) -> Record | None:
        """The live record for ``sid`` (or its tombstone) without counting an access."""
        with self._lock:
            tomb = self._tombstone_locked(sid, self.clock.monotonic())
            return tomb if tomb is not None else self._core.peek(sid)

    def apply(self, record: Record) -> bool:
        """Merge a record that came from elsewhere; True if it changed what this process holds.

        The same rule on every replica (``session.supersedes``): a tombstone beats
        any live version, otherwise the higher ``(version, origin)`` wins; an
        equal version with a later access time is a touch. A record that has
        already expired removes an older copy and is not kept. Nothing is
        emitted: the sender already published it.
        """
        with self._lock:
            self._check_open()
            self.hlc.observe(record.version)
            return self._apply_locked(record, self.clock.monotonic(), self.clock.wall())

    def apply_many(self, records: list[Record]) -> int:
        """``apply`` for a run of records under one lock and one clock reading; how many changed."""
        if not records:
            return 0
        with self._lock:
            self._check_open()
            self.hlc.observe(max(r.version for r in records))
            now = self.clock.monotonic()
            wall = self.clock.wall()
            apply = self._apply_locked
            return sum(1 for r in records if apply(r, now, wall))

    def _apply_locked(self, record: Record, now: float, wall: float) -> bool:
        if cleared_by(record, self.cleared):
            self._counts["ignored"] += 1
            return False
        sid = record.key
        tomb = self._tombstone_locked(sid, now) if self._tombstones else None
        old: Record | None = tomb if tomb is not None else self._core.peek(sid)
        if not supersedes(record, old):
            self._counts["ignored"] += 1
            return False
        live = old if tomb is None else None
        if record.deleted:
            if live is not None:
                self._remove_locked(sid, live)
            self._bury_locked(record, now)
        else:
            if tomb is not None:  # a tombstone already dead when this was written
                del self._tombstones[sid]
            if record.expires <= wall:
                if live is not None:
                    self._remove_locked(sid, live)
                self._counts["ignored"] += 1
                return live is not None
            self._store_locked(
                record,
                live,
                now,
                # the same creation keeps the same deadline: recomputing it would drift by rounding
                created=None if live is not None and live.created == record.created else now - (wall - record.created),
                accessed=now - (wall - record.accessed),
            )
        self._counts["applied"] += 1
        if self._waiters:
            self._arrived.notify_all()
        return True

    # -- internals (call with the lock held) -----------------------------------

    def records(self) -> list[Record]:
        """Every live record and live tombstone held here (for replication repair)."""
        with self._lock:
            now = self.clock.monotonic()
            self._sweep_locked(now)
            core = self._core
            out = [core.peek(sid) for sid in list(core)]
            out.extend(tomb for tomb, until in self._tombstones.values() if until > now)
            return [r for r in out if r is not None]

    def discard(self, sid: str, version: int, origin: int) -> bool:
        """Drop the live copy of ``sid`` if it is older than ``(version, origin)``; True if dropped.

        The ``invalidate`` replication mode: the newer value is read through on next use.
        """
        with self._lock:
            self._check_open()
            self.hlc.observe(version)
            old: Record | None = self._core.peek(sid)
            if old is None or (old.version, old.origin) >= (version, origin):
                return False
            self._remove_locked(sid, old)
            self._counts["applied"] += 1
            return True

    def apply_clear(self, version: int) -> bool:
        """Merge a clear that came from elsewhere; True if it raised the watermark.

        Drops every live session at or below ``version`` and tells
        the store (if any) to do the same: clearing is idempotent, so every
        replica repeating it costs little and survives the clearing process dying.
        """
        with self._lock:
            self._check_open()
            self.hlc.observe(version)
            if version <= self.cleared:
                return False
            self._clear_locked(version)
        if self.persistence is not None:
            self.persistence.clear(version, wait=False)  # on the bus thread: the writer does it
        return True

    def begin_repair(self) -> None:
        """The bus lost messages: check each entry with the hub before serving it, until ``end_repair``."""
        with self._lock:
            self._verified = set()
            self._hub_unreachable = False
            self._repairing = True

    def end_repair(self) -> None:
        """The bus spliced in a snapshot: what is held here is as fresh as the hub's."""
        with self._lock:
            self._repairing = False
            self._verified = set()

    def wait_for(self, sid: str, version: int, timeout: float = 0.05) -> Record | None:
        """Read-your-writes: the record for ``sid`` once it is at least ``version``.

        Waits up to ``timeout`` seconds for the bus to bring it (woken the
        moment it is merged), then reads it through the hub, then the store.
        Returns None if no copy that recent could be found (the caller then
        treats the session as unknown, never as stale).
        """
        # A real wait for real I/O, whatever clock versions are taken from.
        deadline = time.monotonic() + (timeout if self.bus is not None else 0.0)
        with self._lock:
            self._waiters += 1
            try:
                while True:
                    record = self._recent_locked(sid, version)
                    if record is not None:
                        return record
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._arrived.wait(remaining)
            finally:
                self._waiters -= 1
        for source in (self.bus.fetch if self.bus is not None else None,
                       self.persistence.read if self.persistence is not None else None):
            fetched = source(sid) if source is not None else None
            if fetched is None:
                continue
            self.apply(fetched)
            with self._lock:
                record = self._recent_locked(sid, version)
            if record is not None:
                return record
        return None

    def _recent_locked(self, sid: str, version: int) -> Record | None:
        """The record or tombstone for ``sid`` if it is at least ``version`` (a tombstone always is)."""
        record = self._tombstone_locked(sid, self.clock.monotonic()) or self._core.peek(sid)
        if record is not None and (record.deleted or record.version >= version):
            return record
        return None

    def _emit(self, record: Record, touch: bool = False, packed: bytes | None = None) -> None:
        """Hand a local change to replication and persistence (none in a bare cache).

        ``touch`` marks a coalesced access: persisted behind even in write-through.
        ``packed`` is ``record.data`` already serialized (the bus need not do it again).
        """
        bus = self.bus
        if bus is not None:
            bus.publish(record, packed)
        if self.persistence is not None:
            self.persistence.emit(record, touch=touch)

    def _emit_clear(self, version: int) -> None:
        bus = self.bus
        if bus is not None:
            from .bus.base import Clear

            bus.publish(Clear(version))
        if self.persistence is not None:
            self.persistence.clear(version)

    def _revalidate(self, sid: str, record: Record) -> Record | None:
        """During a gap repair: bring ``sid`` up to the hub's copy before serving it.

        The lost messages may have changed or ended this session. If the hub
        does not answer, the local copy is served and counted as
        ``unverified`` (logged once per repair); later reads in the same
        repair don't wait again.
        """
        bus = self.bus
        if bus is None or self._hub_unreachable:
            self._counts["unverified"] += 1
            return record
        answered, fetched = bus.lookup(sid, timeout=_REVALIDATE_TIMEOUT)
        if not answered:
            with self._lock:
                if not self._hub_unreachable:
                    self._hub_unreachable = True
                    log.warning("hub did not answer a revalidation during a repair; serving local copies")
                self._counts["unverified"] += 1
            return record
        if fetched is not None:
            self.apply(fetched)
        with self._lock:
            self._verified.add(sid)
            self._counts["revalidated"] += 1
            current: Record | None = self._core.lookup(sid, self.clock.monotonic())
        return current if current is not None and not current.deleted else None

    def _read_through(self, sid: str) -> Record | None:
        """Bring ``sid`` from the hub (invalidate mode) or the store into memory; the live record, or None."""
        found = self.bus.fetch(sid) if self._bus_reads and self.bus is not None else None
        if found is None and self.persistence is not None:
            found = self.persistence.read(sid)
        if found is None:
            return None
        self.apply(found)
        with self._lock:
            record = self._core.lookup(sid, self.clock.monotonic())
        return record if record is not None and not record.deleted else None

    def _clear_locked(self, version: int) -> None:
        """Raise the watermark and drop the live sessions it covers; tombstones stay until they lapse."""
        self.cleared = version
        self._counts["clears"] += 1
        core = self._core
        doomed = [(sid, r) for sid in list(core) if (r := core.peek(sid)) is not None and cleared_by(r, version)]
        for sid, old in doomed:
            self._remove_locked(sid, old)

    def _count_locked(self) -> int:
        # The core's own len() sweeps and would drop what it evicts unreported;
        # callers sweep first, so the raw count is the live count.
        return Cache.__len__(self._core)

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosed("SessionCache is closed")

    def _store_locked(
        self,
        record: Record,
        old: Record | None,
        now: float,
        *,
        created: float | None = None,
        accessed: float | None = None,
    ) -> None:
        evicted = self._core.insert(record.key, record, created=created, accessed=accessed, now=now)
        self._bytes += record.size - (old.size if old is not None else 0)
        self._account(evicted, replaced=old)

    def _touch_locked(self, record: Record, wall: float) -> Record:
        touched = record.touched(
            wall, compute_expires(record.created, wall, self.config.idle_timeout, self.config.max_age)
        )
        self._account(self._core.insert(record.key, touched), replaced=record)
        self._counts["touches"] += 1
        return touched

    def _remove_locked(self, sid: str, old: Record) -> None:
        del self._core[sid]
        self._bytes -= old.size

    def _tombstone_locked(self, sid: str, now: float) -> Record | None:
        """The live tombstone for ``sid``, if any (an outlived one is forgotten)."""
        entry = self._tombstones.get(sid)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._tombstones[sid]
            return None
        return entry[0]

    def _bury_locked(self, tombstone: Record, now: float) -> None:
        wall = self.clock.wall()
        until = now + max(0.0, tombstone.expires - wall)
        self._tombstones[tombstone.key] = (tombstone, until)
        self._tombstones.move_to_end(tombstone.key)

    def _account(self, evicted: list[Eviction], replaced: Record | None = None) -> None:
        for key, value, cause in evicted:
            if value is replaced:
                continue  # replaced records were already subtracted by the caller
            self._evicted[cause] += 1
            self._bytes -= value.size

    def _sweep_locked(self, now: float) -> int:
        self._next_sweep = now + _SWEEP_EVERY
        evicted = self._core.evict_expired(now)
        self._account(evicted)
        tombstones = self._tombstones
        while tombstones:
            sid, (_, until) = next(iter(tombstones.items()))
            if until > now:
                break
            del tombstones[sid]
        return len(evicted)

