"""SessionCache: the thread-safe facade over the cache core, with express-session Store parity.

What it holds, the lock, the clocks and the merging of changes made
elsewhere come from its base, ``Replica``; this class adds the local
operations. Every local change funnels through ``_emit`` and every remote one
through ``apply``: the seams where replication and persistence plug in.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from .changes import record_change, record_set
from .clock import SYSTEM_CLOCK, Clock
from .config import Config
from .errors import CacheClosed, ConfigError, InvalidSessionId, SessionDestroyed
from .replica import Replica
from .session import (
    SID_LENGTH,
    Record,
    SessionData,
    checked_key,
    copy_data,
    copy_tree,
    is_session_key,
    is_valid_sid,
    pack_data,
    prepare_packed,
    session_key,
)

if TYPE_CHECKING:
    from .backing import Backing
    from .bus.base import Bus

__all__ = ["SessionCache"]

#: Seconds a change waits for the hub or store to hand back a copy this process no longer holds.
BRING_BACK_TIMEOUT = 1.0


class SessionCache(Replica):
    """Sessions held in this process's memory, with express-session Store parity.

    Methods that take a session id (``get``, ``set``, ``touch``, ``destroy``,
    ``record``, ``wait_for``, ``in``) hash it first: the cache holds each
    session under its key, ``session_key(sid)`` (SHA-256), and so does every
    record it publishes or persists (``Record.key``). What it lists (``all``,
    iteration) are those keys: the ids are nowhere to list.

    ``SessionCache(config=None, *, clock=SYSTEM_CLOCK, origin=None, **options)``:
    options are ``Config`` fields (``maxsize``, ``protected_fraction``, ``idle_timeout``, ``max_age``,
    ``touch_interval``, ``tombstone_ttl``, ``max_session_bytes``,
    ``max_session_items``, ``max_skew``, ``outage_budget``) and override
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
        cfg = Config.from_options(config, **options)
        super().__init__(cfg, clock, origin)
        self._touch_interval = cfg.touch_interval
        self._hits = self._misses = 0  # attributes, not dict items: they are on the read path
        # The read path calls these through locals (bound once; neither the clock nor the core is rebound).
        self._monotonic = self.clock.monotonic
        self._wall = self.clock.wall
        self._lookup = self._core.lookup
        # Joins the bus before the constructor returns.
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
        if type(sid) is not str or len(sid) != SID_LENGTH or not sid.isascii():
            self._counts["invalid_ids"] += 1
            return None
        # ``session_key(sid)`` spelled out: an ASCII str encodes to the same bytes either way.
        key = sha256(sid.encode()).hexdigest()
        touched = None
        lock = self._lock
        lock.acquire()  # not ``with``: the pair of calls costs half as much on this path
        try:
            if self._closed:
                raise CacheClosed("SessionCache is closed")
            monotonic = self._monotonic
            now = monotonic()
            # Only valid ids are ever stored, so a hit needs no validation.
            lookup = self._lookup
            record: Record | None = lookup(key, now)
            held = self._held
            if now >= held.next_sweep:
                held.sweep(now)
            if record is None:
                if not is_valid_sid(sid):
                    self._counts["invalid_ids"] += 1
                    return None
                self._misses += 1
                if (self.persistence is None and not self._bus_reads) or held.tombstone(key, now) is not None:
                    return None
            else:
                self._hits += 1
                wall = self._wall
                wall_now = wall()
                if wall_now - record.accessed >= self._touch_interval:
                    touched = held.touch(record, wall_now)
        finally:
            lock.release()
        if record is None:
            record = self._read_through(sid, key)
            if record is None:
                return None
        elif self._repairing or self._suspect:
            record = self._checked_hit(sid, key, record)
            if record is None:
                return None
        if touched is not None:
            self._emit(touched, touch=True)
        return record.data.copy() if record.flat else copy_tree(record.data)

    def set(self, sid: str, data: Mapping[str, Any]) -> Record:
        """Store ``data`` as the session's new value; return the new record.

        Every key of ``data`` is set and every other key the copy held here
        is removed, by one change: a key another worker set meanwhile, which
        this copy never held, is kept (``changes``). Raises
        ``InvalidSessionId``, ``SessionDataError`` (a ``TypeError`` naming the
        bad value's key path), ``SessionTooLarge``, or ``SessionDestroyed``
        if the id was destroyed and its tombstone lives.
        """
        key = checked_key(sid)
        config = self.config
        copy, packed, flat = prepare_packed(data, config.max_session_bytes, config.max_session_items)
        lock = self._lock
        lock.acquire()
        try:
            monotonic = self._monotonic
            now = monotonic()
            old = self._base_for(key, sid, now)
            # The access time is read before the version is issued, as in ``_change_locked``.
            wall = self._wall
            wall_now = wall()
            record = record_set(old, key, copy, version=self.hlc.now(), origin=self.origin, wall=wall_now,
                                idle_timeout=config.idle_timeout, max_age=config.max_age,
                                flat=flat, size=len(packed))
            self._held.store(record, old, now)
            self._counts["sets"] += 1
        finally:
            lock.release()
        # The whole session travels: a receiver that does not hold it can take it as it is.
        self._emit(record, packed=packed)
        return record

    def change(self, sid: str, changed: Mapping[str, Any], removed: Iterable[str] = ()) -> Record:
        """Set the keys of ``changed`` and remove those of ``removed``, leaving every other key; return the new record.

        What a request's save does: only this change is published and
        persisted (a delta), and every replica and store merges it key by
        key, so two requests of one user that change different keys, on
        any workers, both survive; of two that change the same key, the
        later one wins everywhere (``changes``). Removing every key leaves
        an empty live session (``destroy`` ends one). The same errors as
        ``set``, measured on the whole session after the change.
        """
        key = checked_key(sid)
        gone = tuple(dict.fromkeys(removed))
        both = changed.keys() & set(gone)
        if both:
            raise ValueError(f"keys both set and removed: {sorted(both)!r}")
        self._bring_back(key)
        with self._lock:
            old = self._base_for(key, sid, self.clock.monotonic())
            merged = dict(old.data) if old is not None else {}
            merged.update(changed)
            for name in gone:
                merged.pop(name, None)
            copy, packed, flat = prepare_packed(merged, self.config.max_session_bytes,
                                                self.config.max_session_items)
            # Packed once here: its size goes into the delta and the bus sends these very bytes.
            delta_packed = pack_data({name: copy[name] for name in changed})
            record, delta = self._change_locked(key, old, copy, changed, gone, flat, len(packed),
                                                len(delta_packed))
        self._emit(delta, packed=packed if delta is record else delta_packed)
        return record

    def _bring_back(self, key: str) -> None:
        """Before a change: if no copy is held here (evicted since the request read it), fetch the whole one.

        Otherwise the change would be made on nothing, and this process would
        hold the changed keys alone as the session.
        """
        with self._lock:
            held = key in self._core or self._held.tombstone(key, self.clock.monotonic()) is not None
        if not held and (self.bus is not None or self.persistence is not None):
            self._ask_elsewhere(key, 0, time.monotonic() + BRING_BACK_TIMEOUT)

    def _base_for(self, key: str, sid: str, now: float) -> Record | None:
        """The live copy a change is made on (lock held; ``now`` read under it).

        ``SessionDestroyed`` if a tombstone lives.
        """
        if self._closed:
            raise CacheClosed("SessionCache is closed")
        held = self._held
        if held.tombstones and held.tombstone(key, now) is not None:
            raise SessionDestroyed(sid)
        base: Record | None = self._core.peek(key, now=now)
        return base

    def _change_locked(self, key: str, old: Record | None, data: SessionData, changed: Iterable[str],
                       removed: Iterable[str], flat: bool, size: int,
                       delta_size: int | None = None) -> tuple[Record, Record]:
        """Make and hold the change (lock held): ``(record held, delta)`` from ``changes.record_change``."""
        config = self.config
        # The access time is read before the version is issued, so a write never looks like a touch
        # (``bus.streams.is_touch``: a version older than its access time) and is never sent as one.
        wall = self.clock.wall()
        record, delta = record_change(
            old, key, data, changed, removed, version=self.hlc.now(), origin=self.origin,
            wall=wall, idle_timeout=config.idle_timeout, max_age=config.max_age,
            flat=flat, size=size, delta_size=delta_size,
        )
        self._held.store(record, old, self.clock.monotonic())
        self._counts["sets"] += 1
        return record, delta

    def touch(self, sid: str) -> bool:
        """Mark the session used now (sliding its idle timeout); False if unknown.

        The new access time is propagated at most once per ``touch_interval``.
        """
        key = checked_key(sid)
        touched = None
        with self._lock:
            self._check_open()
            try:
                record = self._core[key]
            except KeyError:
                if (self.persistence is None and not self._bus_reads) or self._held.tombstone(
                    key, self.clock.monotonic()
                ):
                    return False
                record = None
            else:
                wall = self.clock.wall()
                if wall - record.accessed >= self.config.touch_interval:
                    touched = self._held.touch(record, wall)
        if record is None:
            return self._read_through(sid, key) is not None and self.touch(sid)
        if touched is not None:
            self._emit(touched, touch=True)
        return True

    def destroy(self, sid: str) -> bool:
        """End the session everywhere; True if it was live here.

        Leaves a tombstone for ``tombstone_ttl`` seconds, so no write of this
        id (local or remote, however late) brings it back.
        """
        return self.destroy_key(checked_key(sid))

    def destroy_key(self, key: str) -> bool:
        """``destroy`` by key (``session_key(sid)``, what ``all()``, iteration and the stores show)."""
        if not is_session_key(key):
            raise InvalidSessionId(key)
        with self._lock:
            self._check_open()
            now, wall = self.clock.monotonic(), self.clock.wall()  # the access time before the version
            tombstone, existed = self._held.destroy(key, self.hlc.now(), self.origin, now, wall)
            self._counts["destroys"] += 1
        self._emit(tombstone)
        return existed

    def all(self) -> dict[str, SessionData]:
        """Every live session held here: ``{key: data}`` (copies), keyed by ``session_key(sid)``, not by id."""
        with self._lock:
            self._check_open()
            self._held.sweep(self.clock.monotonic())
            return {key: copy_data(self._core.peek(key)) for key in iter(self._core)}

    def length(self) -> int:
        """How many live sessions this process holds."""
        with self._lock:
            self._check_open()
            self._held.sweep(self.clock.monotonic())
            return self._held.count()

    __len__ = length

    def __contains__(self, sid: object) -> bool:
        """Whether the session of id ``sid`` is live here (an id, as ``get`` takes, not a key)."""
        if not is_valid_sid(sid):
            return False
        key = session_key(sid)  # type: ignore[arg-type]
        with self._lock:
            return key in self._core

    def __iter__(self) -> Iterator[str]:
        """Keys (``session_key(sid)``) of the live sessions held here (a snapshot)."""
        with self._lock:
            self._held.sweep(self.clock.monotonic())
            return iter(list(self._core))

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
            self._held.clear(version)
        self._emit_clear(version)

    def evict_all(self) -> None:
        """Drop every session from this process's memory only (tombstones stay).

        Nothing is ended: other replicas and the store keep their copies, and
        a read brings a session back through the store or the hub.
        """
        with self._lock:
            self._check_open()
            self._held.drop_live()

    def prune(self) -> int:
        """Drop expired sessions and tombstones now; return how many sessions went."""
        with self._lock:
            self._check_open()
            return self._held.sweep(self.clock.monotonic())

    def __enter__(self) -> SessionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters since construction and current sizes (a fresh dict)."""
        with self._lock:
            out: dict[str, Any] = {"hits": self._hits, "misses": self._misses,
                                   **self._held.stats(self.clock.monotonic())}
        if self.bus is not None:
            out["replication"] = self.bus.stats()
        if self.persistence is not None:
            out["persistence"] = self.persistence.stats()
        return out

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
