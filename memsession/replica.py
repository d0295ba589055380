"""Replica: the sessions one process holds, kept in step with every other copy (the base of SessionCache).

It owns the lock, the clocks, the writer id (``origin``) and what is held (a
``Holdings``, changed only under the lock), and the slots for the bus and the
store. Changes made elsewhere come in through ``apply``, ``apply_many``,
``apply_clear`` and ``discard`` (what ``bus.ReplicaTarget`` asks for). After
lost messages, or while the hub can't vouch for a partition, a hit is checked
with the hub before it is served (``hit_checks``); ``wait_for`` gives read-your-writes; a
miss is read through the hub or the store. ``SessionCache`` adds the
express-session API on top: local changes, published as they are made.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING

from .admission import RecordRules
from .changes import reflects
from .clock import Clock, HybridClock, version_wall_ms
from .config import Config
from .errors import CacheClosed, SessionUnavailable, StoreUnavailable
from .hit_checks import HitChecks
from .holdings import Holdings
from .partitions import covers
from .refusals import log_refusal
from .session import Record, check_sid, session_key

if TYPE_CHECKING:
    from .backing import Backing
    from .bus.base import Bus

__all__ = ["RECENT_WRITE", "Replica"]

log = logging.getLogger("memsession")

#: A write younger than this (seconds) that hub and store don't have yet may still be on its way:
#: the bus delivers in milliseconds, a restarted hub gathers the workers' copies within a second or two.
RECENT_WRITE = 5.0
#: How long a restarted hub takes to gather what the workers hold (they push within a heartbeat or two).
GATHER = 2.0
#: While the hub or store is away, how often a read asks again, and how long one ask may take.
_ASK_AGAIN = 0.1
_ASK_TIMEOUT = 1.0


class Replica(HitChecks):
    """This process's copy of the sessions: merges what other processes changed, repairs gaps. Thread-safe."""

    def __init__(self, config: Config, clock: Clock, origin: int | None) -> None:
        self.config = config
        self.clock = clock
        self.origin = origin if origin is not None else secrets.randbits(63) or 1
        self.hlc = HybridClock(clock, config.max_skew)
        #: The record rule every record from elsewhere passes before it is merged (``admission``).
        self.rules = RecordRules.for_cache(config)
        #: Everything held here; changed only under ``_lock``.
        self._held = held = Holdings(config, clock)
        # The read path reaches these directly (``Holdings`` never rebinds them).
        self._core = held.core
        self._counts = held.counts
        self._lock = threading.Lock()
        #: Notified when a merged record may be what a ``wait_for`` is waiting for.
        self._arrived = threading.Condition(self._lock)
        self._waiters = 0
        self._closed = False
        self._init_checks()
        #: Read-through and write-through/behind to a store (``persist.Persistence``); None without one.
        self.persistence: Backing | None = None
        #: Replication transport (``memsession.bus``).
        self.bus: Bus | None = None
        #: ``invalidate`` mode: receivers drop copies, so a miss is read through the hub.
        self._bus_reads = False

    @property
    def cleared(self) -> int:
        """The clear watermark: no live session written at or before this version is held or accepted."""
        return self._held.cleared

    @cleared.setter
    def cleared(self, version: int) -> None:
        # Settable, as ``bus.ReplicaTarget`` declares it.
        self._held.cleared = version

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

    # -- records from elsewhere ----------------------------------------------

    def record(self, sid: str) -> Record | None:
        """The live record of the session of id ``sid`` (or its tombstone) without counting an access."""
        return self.held(session_key(check_sid(sid)))

    def checked_record(self, sid: str) -> Record | None:
        """``record``, checked with the hub first while lost messages are being repaired (as ``get`` does).

        A copy that missed changes may since have merged a later one, which
        makes it look as new as that change (``changes.reflects``) while it
        still lacks the ones before: until the repair is done, the hub's copy
        is merged in before it is trusted.
        """
        key = session_key(check_sid(sid))
        with self._lock:
            record = self._held.record(key, self.clock.monotonic())
        if record is not None and not record.deleted and (self._repairing or self._suspect):
            self._checked_hit(sid, key, record)
            with self._lock:
                record = self._held.record(key, self.clock.monotonic())
        return record

    def held(self, key: str) -> Record | None:
        """``record`` by key (``session_key(sid)``): what replication, which never sees ids, asks."""
        with self._lock:
            return self._held.record(key, self.clock.monotonic())

    def apply(self, record: Record) -> bool:
        """Merge a record that came from elsewhere; True if it changed what this process holds.

        The record passes the record rule first (``admission``: refused ones
        are counted as ``refused``, logged without their id, and change
        nothing, not even the clock). Then the same merge rule as on every
        replica (``changes.merge_records``): a tombstone beats any live version,
        otherwise key by key the later change wins; a later access time
        alone is a touch. A record that has already expired
        removes an older copy and is not kept. Nothing is emitted: the sender
        already published it.
        """
        with self._lock:
            self._check_open()
            wall = self.clock.wall()
            admitted = self._admit(record, wall)
            if admitted is None:
                return False
            self.hlc.observe(admitted.version)
            return self._apply_locked(admitted, self.clock.monotonic(), wall)

    def apply_many(self, records: list[Record]) -> int:
        """``apply`` for a run of records under one lock and one clock reading; how many changed."""
        if not records:
            return 0
        with self._lock:
            self._check_open()
            wall = self.clock.wall()
            admit = self._admit
            admitted = [a for r in records if (a := admit(r, wall)) is not None]
            if not admitted:
                return 0
            self.hlc.observe(max(r.version for r in admitted))
            now = self.clock.monotonic()
            apply = self._apply_locked
            return sum(1 for r in admitted if apply(r, now, wall))

    def _admit(self, record: Record, wall: float) -> Record | None:
        """``record`` as the record rule lets it in, or None (counted as ``refused``, logged without its id)."""
        return self.rules.admitted(record, wall, self._refused)

    def _refused(self, reason: str) -> None:
        counts = self._counts
        counts["refused"] += 1
        log_refusal(log, "refused a record from elsewhere", counts["refused"], reason)

    def _apply_locked(self, record: Record, now: float, wall: float) -> bool:
        """The one funnel of ``apply`` and ``apply_many``: merge, and wake ``wait_for`` if taken in."""
        changed = self._held.merge(record, now, wall)
        # One that arrived already expired at most removed a copy: nothing a waiter can use.
        if changed and self._waiters and (record.deleted or record.expires > wall):
            self._arrived.notify_all()
        return changed

    def records(self) -> list[Record]:
        """Every live record and live tombstone held here (for replication repair)."""
        with self._lock:
            return self._held.records(self.clock.monotonic())

    def discard(self, key: str, version: int, origin: int) -> bool:
        """Drop the live copy of ``key`` unless it reflects the change ``(version, origin)``; True if dropped.

        The ``invalidate`` replication mode: the merged value is read through the hub on next use.
        """
        with self._lock:
            self._check_open()
            if not self.hlc.observe(version):
                self._refused("invalidation version is beyond the skew bound")
                return False
            return self._held.discard(key, version, origin)

    def drop_partitions(self, mask: int) -> int:
        """The hub missed changes to these partitions (``hub.remote``): forget the live copies there; each is
        read through when next used. How many went."""
        with self._lock:
            self._check_open()
            return self._held.forget_live(lambda record: covers(mask, record.key))

    def forget_unlisted(self, keys: set[str], own_since_ms: int) -> int:
        """A near cache's repair: forget the live copies a hub snapshot did not list; how many went.

        The messages lost may have been the hub's invalidations of them (the
        hub holds only what its host uses, so its snapshot can't name what it
        dropped). This process's own writes since ``own_since_ms`` (wall ms)
        stay: they may not have reached the hub when it cut the snapshot.
        """
        origin = self.origin

        def goes(record: Record) -> bool:
            return record.key not in keys and not (
                record.origin == origin and version_wall_ms(record.version) >= own_since_ms)

        with self._lock:
            self._check_open()
            return self._held.forget_live(goes)

    def apply_clear(self, version: int) -> bool:
        """Merge a clear that came from elsewhere; True if it raised the watermark.

        Drops every live session at or below ``version`` and tells
        the store (if any) to do the same: clearing is idempotent, so every
        replica repeating it costs little and survives the clearing process dying.
        """
        with self._lock:
            self._check_open()
            fault = self.rules.clear_fault(version, self.clock.wall())
            if fault is not None:
                self._refused(fault)
                return False
            self.hlc.observe(version)
            if version <= self._held.cleared:
                return False
            self._held.clear(version)
        if self.persistence is not None:
            self.persistence.clear(version, wait=False)  # on the bus thread: the writer does it
        return True

    # -- gap repair, read-your-writes and read-through ---------------------------

    def wait_for(self, sid: str, version: int, timeout: float = 0.05, origin: int = 0) -> Record | None:
        """Read-your-writes: the newest record of ``sid``, waiting for one that reflects ``(version, origin)``.

        ``(version, origin)`` is the stamp of the user's last change (from the
        cookie); a copy reflects it once that change was merged in
        (``changes.reflects``; origin 0 compares versions only).

        Waits up to ``timeout`` seconds for the bus to bring it (woken the
        moment it is merged), then asks the hub and the store, and returns the
        record (or tombstone) once one that recent is found. "Not found" is
        believed only from a settled hub (``Bus.hub_settled``: a restarted hub
        is still gathering what the workers push) and only for a write older
        than ``RECENT_WRITE`` when the wait began (a younger one may be on its
        way); until then they are asked again, up to ``outage_budget`` (and at
        least ``GATHER`` seconds after the first answer). A believed answer
        gives the newest copy left (the write was lost: logged, counted
        ``lost_writes``) or None (no copy left). Otherwise
        ``SessionUnavailable``: "no answer" is never taken for "no session",
        and an older copy is never served while a newer one may still arrive.
        """
        key = session_key(check_sid(sid))
        record = self._await(key, version, origin, timeout if self.bus is not None else 0.0)
        if record is not None:
            if not record.deleted and (self._repairing or self._suspect):
                self._checked_hit(sid, key, record)
                return self.held(key)
            return record
        if self.cleared >= version:
            return None  # ended by a clear since
        started = time.monotonic()
        give_up = started + self.config.outage_budget
        # Judged once, as the wait begins: waiting must not age the write into "lost".
        on_its_way = self._may_be_on_its_way(version)
        first_answer: float | None = None
        while True:
            answered, newest = self._ask_elsewhere(key, version, give_up)
            if newest is not None and reflects(newest, version, origin):
                return newest
            settled = answered and self._hub_settled()
            if settled and not on_its_way:
                break
            if answered:
                if first_answer is None:
                    # A hub that answers only now may have just restarted: give the workers
                    # time to push what they hold to it, even if the budget ends sooner.
                    first_answer = time.monotonic()
                    give_up = max(give_up, first_answer + GATHER)
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                break
            record = self._await(key, version, origin, min(_ASK_AGAIN, remaining))
            if record is not None:
                return record
        waited = time.monotonic() - started
        if not settled:
            # No answer, or only from a hub still gathering: serving an older copy now could
            # overwrite the newer one a worker is about to push. Refuse instead.
            with self._lock:
                self._counts["unavailable"] += 1
            log.warning("could not tell within %.1fs whether a session has a newer copy (hub away or still "
                        "gathering); the request is refused", waited)
            raise SessionUnavailable(sid, waited)
        if newest is not None:
            # Older than a write that was made: that write is gone (its writer and the hub died with it).
            with self._lock:
                self._counts["lost_writes"] += 1
            log.warning("the latest write of a session was not found anywhere (asked for %.1fs); "
                        "serving the newest copy left", waited)
        return newest

    def _await(self, key: str, version: int, origin: int, timeout: float) -> Record | None:
        """The held record for ``key`` once it reflects ``(version, origin)``, waiting up to ``timeout`` for the bus."""
        # A real wait for real I/O, whatever clock versions are taken from.
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiters += 1
            try:
                while True:
                    record = self._held.recent(key, version, origin, self.clock.monotonic())
                    if record is not None:
                        return record
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._arrived.wait(remaining)
            finally:
                self._waiters -= 1

    def _ask_elsewhere(self, key: str, version: int, give_up: float) -> tuple[bool, Record | None]:
        """``(answered, newest)``: ask the hub, then the store; merge what they have.

        ``answered`` is False when neither could be reached; ``newest`` is
        what is held afterwards (its tombstone, or a copy older than asked).
        """
        bus, persistence = self.bus, self.persistence
        answered = bus is None and persistence is None  # nothing else to ask: what is held here is all
        if bus is not None:
            reached, fetched = bus.lookup(key, timeout=max(0.05, min(_ASK_TIMEOUT, give_up - time.monotonic())))
            if reached:
                answered = True
                if fetched is not None:
                    self.apply(fetched)
        if persistence is not None:
            try:
                fetched = persistence.read(key)
            except StoreUnavailable:
                fetched = None  # logged and counted by the persistence layer
            else:
                answered = True
            if fetched is not None:
                self.apply(fetched)
        with self._lock:
            now = self.clock.monotonic()
            return answered, self._held.tombstone(key, now) or self._core.peek(key)

    def _hub_settled(self) -> bool:
        bus = self.bus
        if bus is None:
            return True  # a store's answer is the answer
        hub_settled = getattr(bus, "hub_settled", None)  # a bus of one's own may lack it
        return hub_settled is None or bool(hub_settled(GATHER))

    def _may_be_on_its_way(self, version: int) -> bool:
        return self.clock.wall() - version_wall_ms(version) / 1000.0 < RECENT_WRITE

    def _read_through(self, sid: str, key: str) -> Record | None:
        """Bring ``key`` from the hub (a bus that reads through it) or the store; the live record, or None.

        "No answer" is never "no such session" (that would log the user out):
        a hub that does not answer, with no store to ask, refuses the read
        (``SessionUnavailable``); a store that can't be reached raises ``StoreUnavailable``.
        """
        found = None
        if self._bus_reads and self.bus is not None:
            started = time.monotonic()
            answered, found = self.bus.lookup(key)
            if not answered and self.persistence is None:
                with self._lock:
                    self._counts["unavailable"] += 1
                raise SessionUnavailable(sid, time.monotonic() - started)
        if found is None and self.persistence is not None:
            found = self.persistence.read(key)
        if found is None:
            return None
        self.apply(found)
        with self._lock:
            record = self._core.lookup(key, self.clock.monotonic())
        return record if record is not None and not record.deleted else None

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosed("SessionCache is closed")
