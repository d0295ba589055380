"""The hub's protocol without sockets: its replica of every session and what it answers.

``HubState`` merges bus messages into the replica (``merge_into``: the one
merge of every replica, ``changes.merge_records``, key by key; nothing
expired kept), answers snapshot, key read, push, write and stats requests,
and says what to publish in return: relays of what a push brought, resync
requests to an origin whose stream has a gap, and its own heartbeats. It owns
no socket, thread or clock of its own, so tests and the in-memory bus drive
it directly; ``runner`` moves its frames. The replica holds at most ``maxsize``
live sessions (``bounded``); a sidecar reads what it evicted back from its
store when asked for (``misses``), and applies other hosts' changes (``remote``).

**Partial records.** A delta for a session the hub does not hold (it restarted,
or evicted it) is held partial. A GET of it waits for a store read like a miss
(the row completes it); after that read, or at once without a store, it is all
there is: marked complete and answered. A push completes it.
"""

from __future__ import annotations

import heapq
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import wire
from ..admission import DEFAULT_MAX_SKEW, RecordRules
from ..bus.sequence import DEFAULT_JUMP_HOLD, DEFAULT_MAX_JUMP, GAP, JUMP, SequenceTracker
from ..bus.streams import LagWindow, new_epoch
from ..changes import after_clear, completed
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import WireError
from ..partitions import covers
from ..refusals import log_refusal
from ..session import Record, cleared_by, touched_copy
from .bounded import Recency, merge_into, warm_fill
from .config import DEFAULT_MAXSIZE
from .misses import ReadBack, StoreMisses
from .remote import below_floor
from .requests import CHUNK_RECORDS, answer_request, snapshot_frames
from .resyncs import Resyncs

__all__ = ["CHUNK_RECORDS", "HubState", "merge_into"]

log = logging.getLogger("memsession.hub")


class HubState:
    """The hub's replica and protocol, without sockets.

    ``on_bus`` and ``on_request`` return the frames to publish on the bus
    (relays, resync requests); ``on_request`` also returns the replies.
    ``on_change(record)`` is called (in the hub thread) with every record that
    changed the replica, ``on_clear(version)`` with every clear that raised its
    watermark: the sidecar queues them for its store. ``extra_stats()`` adds
    to what ``stats`` answers (the sidecar's role and persistence counters).
    """

    def __init__(
        self,
        *,
        hub_id: int | None = None,
        epoch: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
        limits: wire.Limits = wire.DEFAULT_LIMITS,
        on_change: Callable[[Record], None] | None = None,
        on_clear: Callable[[int], None] | None = None,
        extra_stats: Callable[[], dict[str, Any]] | None = None,
        forget_after: float = 60.0,
        max_seq_jump: int = DEFAULT_MAX_JUMP,
        seq_jump_hold: float = DEFAULT_JUMP_HOLD,
        maxsize: int = DEFAULT_MAXSIZE,
        read_back: ReadBack | None = None,
        max_skew: float = DEFAULT_MAX_SKEW,
    ) -> None:
        #: Publishers silent this long (seconds) are forgotten: hub state follows the live ones.
        self.forget_after = forget_after
        self.on_change, self.on_clear, self.extra_stats = on_change, on_clear, extra_stats
        self.clock = clock
        self.hub_id = hub_id if hub_id is not None else secrets.randbits(63) or 1
        self.epoch = epoch if epoch is not None else new_epoch(clock)
        self.limits = limits
        #: The record rule every record passes before it is merged: bus, pushes, writes, the store's load.
        self.rules = RecordRules.for_hub(limits, max_skew)
        self.replica: dict[str, Record] = {}
        self._recency = Recency(maxsize)  # access order of the live records in ``replica``
        #: False once a live session was evicted or left in the store at warm start: a miss may be stored.
        self.holds_all = True
        #: ``(expires, key)`` heap over the replica (see ``_track_expiry``).
        self._expiry: list[tuple[float, str]] = []
        self._expiry_compaction_slack = 1024
        self._tombstone_count = 0
        #: Clear watermark: no live session written at or before this version is kept or accepted.
        self.cleared = 0
        # Strict: a stream first seen past seq 1 had messages the hub never got (it may have
        # just restarted); asking that origin to resync costs one push and closes the hole.
        # A jump past ``max_seq_jump`` is kept out the same way (see ``SequenceTracker``).
        self.tracker = SequenceTracker(strict=True, max_jump=max_seq_jump, hold=seq_jump_hold)
        self.seq = 0
        self.started = clock.wall()
        self.counts = dict.fromkeys(
            ("received", "applied", "ignored", "duplicates", "gaps", "resyncs_sent", "snapshots",
             "gets", "pushes", "pushed_records", "writes", "relayed", "pruned", "clears", "forgotten", "evicted",
             "refused", "remote_changes", "remote_invalidated", "remote_stale_reads"),
            0)
        self.misses = StoreMisses(read_back, self.counts)
        self.dropped: dict[str, int] = {}
        self.lag = LagWindow()
        self._resyncs = Resyncs(clock, self.counts)
        #: Per key, the newest change another host made that no copy here reflected yet (``remote``).
        self.remote_floor: dict[str, tuple[int, int, bool]] = {}
        #: Frames to publish that no reply or bus message returned (``remote``); the runner sends them.
        self.outbox: list[list[bytes]] = []
        #: Partitions whose copies here may be older than the store's (``remote.suspect_all``): a GET reads it.
        self.suspect = 0

    def _drop(self, reason: str, exc: Exception) -> None:
        count = self.dropped[reason] = self.dropped.get(reason, 0) + 1
        log_refusal(log, f"hub dropped a frame ({reason})", count, exc)

    def _now_us(self) -> int:
        return int(self.clock.wall() * 1_000_000)

    @property
    def maxsize(self) -> int:
        return self._recency.maxsize

    def _admit(self, record: Record, wall: float) -> Record | None:
        """``record`` as the record rule lets it in, or None (counted as ``refused``, logged without its id)."""
        return self.rules.admitted(record, wall, self._refused)

    def _refused(self, reason: str) -> None:
        self.counts["refused"] += 1
        log_refusal(log, "hub refused a record", self.counts["refused"], reason)

    def merge(self, record: Record, *, stored: bool = False) -> bool:
        """Merge ``record`` if the record rule admits it; True if the replica changed.

        ``stored``: it came from the store (no ``on_change``).
        """
        admitted = self._admit(record, self.clock.wall())
        if admitted is None:
            return False
        record = admitted
        replica = self.replica
        key = record.key
        old = replica.get(key)
        changed = not cleared_by(record, self.cleared) and merge_into(replica, record, self.clock.wall(),
                                                                      self.cleared)
        self.counts["applied" if changed else "ignored"] += 1
        if changed:
            new = replica.get(key)
            # kept as a count: stats() is asked for every second by the sidecar's HTTP endpoint
            self._tombstone_count += (new is not None and new.deleted) - (old is not None and old.deleted)
            if new is None or new.deleted:
                self._recency.release(key)
            else:
                for evicted in self._recency.hold(new):
                    self._evict(evicted)
            if new is not None:  # merge_into drops a record that arrives already expired
                self._track_expiry(new)
            if self.on_change is not None and not stored:
                self.on_change(record)
            if key in self.remote_floor and not stored:
                below_floor(self, key)
        return changed

    def _evict(self, key: str) -> None:
        """The bound pushed ``key`` out (only live records are evicted; see ``bounded``)."""
        del self.replica[key]  # its expiry heap entry is skipped when it comes up
        self.counts["evicted"] += 1
        if self.holds_all:
            self.holds_all = False
            log.info("the hub's replica reached maxsize (%d live sessions): evicting those used once first",
                     self.maxsize)

    def warm(self, records: Iterable[Record]) -> int:
        """Fill the replica from a store before serving (no hooks run); how many read.

        Every tombstone, and the ``maxsize`` most recently accessed live
        records the record rule admits; the others stay in the store
        (counted as ``evicted``, or ``refused``).
        """
        wall = self.clock.wall()
        read = 0

        def admitted() -> Iterator[Record]:
            nonlocal read
            for record in records:
                read += 1
                kept = self._admit(record, wall)
                if kept is not None:
                    yield kept

        _, left_out = warm_fill(self.replica, admitted(), maxsize=self.maxsize, wall=wall, cleared=self.cleared)
        self.recount()
        if left_out:
            self.counts["evicted"] += left_out
            self.holds_all = False
            log.info("warm start: %d live sessions beyond maxsize (%d) left in the store", left_out, self.maxsize)
        return read

    def recount(self) -> None:
        """Recount tombstones, rebuild the access order (by ``accessed``) and the expiry heap.

        For after filling ``replica`` directly; past ``maxsize`` the least recently accessed are evicted.
        """
        live = sorted((r for r in self.replica.values() if not r.deleted), key=lambda r: r.accessed)
        for key in self._recency.reset(live):
            self._evict(key)
        self._tombstone_count = sum(1 for r in self.replica.values() if r.deleted)
        self._rebuild_expiry()

    def _track_expiry(self, record: Record) -> None:
        """Remember when ``record`` lapses, so ``prune`` finds it without scanning the replica.

        One heap entry per stored version; entries of replaced versions are
        skipped when they come up, and the heap is rebuilt from the replica
        when stale entries outnumber live ones (hot keys rewrite often).
        """
        expiry = self._expiry
        heapq.heappush(expiry, (record.expires, record.key))
        if len(expiry) > 2 * len(self.replica) + self._expiry_compaction_slack:
            self._rebuild_expiry()

    def _rebuild_expiry(self) -> None:
        self._expiry = [(r.expires, k) for k, r in self.replica.items()]
        heapq.heapify(self._expiry)

    def clear(self, version: int, *, stored: bool = False) -> bool:
        """Raise the clear watermark to ``version``, dropping what it covers (``changes.after_clear``); True if raised.

        ``stored``: the clear came from the store (another host's, ``hub.remote``): no ``on_clear``.

        A watermark beyond the skew bound is refused (counted): it would clear every session written until then.
        """
        if version <= self.cleared:
            return False
        fault = self.rules.clear_fault(version, self.clock.wall())
        if fault is not None:
            self._refused(fault)
            return False
        self.cleared = version
        self.counts["clears"] += 1
        replica = self.replica
        for key, record in list(replica.items()):
            kept = after_clear(record, version)  # a newer session keeps only the keys changed after it
            if kept is None:
                del replica[key]
                self._recency.release(key)
            elif kept is not record:
                replica[key] = kept
        self._rebuild_expiry()
        if self.on_clear is not None and not stored:
            self.on_clear(version)
        return True

    def _resync(self, origin: int, gap: bool = True) -> list[list[bytes]]:
        if not self._resyncs.ask_now(origin, self.tracker.last(origin) if gap else None):
            return []
        return [wire.encode_resync(self.hub_id, self.epoch, origin, self._now_us())]

    def owed_resyncs(self) -> list[list[bytes]]:
        """Resync requests held back by the spacing whose time has come (the runner polls this)."""
        return [frames for origin in self._resyncs.due() for frames in self._resync(origin, gap=False)]

    def on_bus(self, frames: list[bytes]) -> list[list[bytes]]:
        """One message from the capture socket; returns frames to publish."""
        try:
            msg = wire.decode(frames, self.limits)
        except WireError as exc:
            self._drop(exc.kind, exc)
            return []
        op = msg.op
        if msg.origin == self.hub_id or op in (wire.HELLO, wire.RESYNC, wire.HUB_BEAT):
            return []
        self.tracker.heard(msg.origin, self.clock.monotonic())
        if op == wire.HEARTBEAT:
            verdict = self.tracker.heartbeat(msg.origin, msg.epoch, msg.seq)
            if verdict == JUMP:
                return self._jump(msg)
            if verdict == GAP:
                self.counts["gaps"] += 1
                return self._resync(msg.origin)
            return []
        items = msg.body if op == wire.BATCH else ((op, msg.body),)
        lag = self.clock.wall() * 1000 - msg.sent_us / 1000
        fresh, gap_at, jumped = self.tracker.accept(msg.origin, msg.epoch, msg.seq, items)
        if jumped:
            return self._jump(msg)
        self.counts["duplicates"] += len(items) - len(fresh)
        self.counts["received"] += len(fresh)
        self.lag.add(lag, len(fresh))
        for item_op, body in fresh:
            self._apply(item_op, body)
        if gap_at:
            self.counts["gaps"] += 1
            return self._resync(msg.origin)
        return []

    def _jump(self, msg: wire.Message) -> list[list[bytes]]:
        """A seq past ``max_seq_jump``: kept out and repaired (a push if real; if forged, all it costs)."""
        self._drop("seq jump", WireError(f"seq {msg.seq} of origin {msg.origin:x} jumps past the bound"))
        self.counts["gaps"] += 1
        return self._resync(msg.origin)

    def _apply(self, op: str, body: Any) -> None:
        if op == wire.SET or op == wire.DESTROY:
            self.merge(body)
        elif op == wire.TOUCH:
            key = body[0]
            if key not in self.replica and self._may_be_stored(key):
                self.misses.hold_touch(key, body)
                return
            self._touch(body)
        elif op == wire.CLEAR:
            self.clear(body)
        else:  # INVALIDATE: the value came by WRITE, acknowledged before it; DROP: a hub's, not ours
            self.counts["ignored"] += 1

    def _touch(self, body: Any) -> None:
        key, version, origin, accessed, expires = body
        touched = touched_copy(self.replica.get(key), version, origin, accessed, expires)
        if touched is not None:
            self.merge(touched)
        else:
            self.counts["ignored"] += 1

    def _may_be_stored(self, key: str) -> bool:
        """A miss for ``key`` may be a session the store has, and there is a store to ask."""
        return self.misses.read_back is not None and not self.holds_all

    def needs_read_back(self, key: str) -> bool:
        """A GET of ``key`` waits for the store: nothing is held that the store may have, only a delta,
        or a copy this hub can't vouch for (``suspect``)."""
        held = self.replica.get(key)
        if held is None:
            return self._may_be_stored(key)
        return (held.partial or covers(self.suspect, key)) and self.misses.read_back is not None

    def read_back_done(self, key: str, record: Record | None, ok: bool) -> None:
        """The store was read for ``key`` (``ok``) or could not be: merge what it had, apply a held-back touch."""
        if record is not None:
            self.merge(record, stored=True)
        touch = self.misses.touch_due(key, ok)
        if touch is not None:
            self._touch(touch)

    def answer_get(self, rid: int, key: str) -> list[bytes]:
        """The RECORD reply to a GET of ``key``: the live record or tombstone held (a read counts as an access).

        A partial record held here is what there is of the session by now (the
        store was read, or there is none): it is taken as complete
        (``changes.completed``: naming no change it can't vouch for) and answered.
        """
        record = self.replica.get(key)
        if record is not None and record.expires <= self.clock.wall():
            record = None
        if record is not None and not record.deleted:
            self._recency.used(key)
            if record.partial:
                record = self.replica[key] = completed(record)
        body = None if record is None else wire.record_to_list(record)
        return wire.encode_request(wire.RECORD, rid, body)

    def relay(self, record: Record) -> list[bytes]:
        """Frames that republish ``record`` on the hub's own stream."""
        self.seq += 1
        self.counts["relayed"] += 1
        return wire.encode_record_message(record, self.hub_id, self.epoch, self.seq, self._now_us())

    def relay_clear(self, version: int) -> list[bytes]:
        """Frames that republish a clear on the hub's own stream."""
        self.seq += 1
        self.counts["relayed"] += 1
        return wire.encode_clear(version, self.hub_id, self.epoch, self.seq, self._now_us())

    def heartbeat(self) -> list[bytes]:
        return wire.encode_heartbeat(self.hub_id, self.epoch, self.seq, self._now_us(), hub=True,
                                     suspect=self.suspect)

    def snapshot(self, rid: int) -> Iterator[list[bytes]]:
        """CHUNK frames then END, cut from the replica as it is now."""
        return snapshot_frames(self, rid)

    def on_request(self, frames: list[bytes], sender: bytes = b"") -> tuple[list[list[bytes]], list[list[bytes]]]:
        """One request from ``sender``; returns ``(replies, frames to publish)`` (see ``requests``)."""
        return answer_request(self, frames, sender)

    def prune(self) -> int:
        """Drop expired sessions and lapsed tombstones from the replica (cost: what expired, not the replica)."""
        wall = self.clock.wall()
        expiry = self._expiry
        replica = self.replica
        pruned = 0
        while expiry and expiry[0][0] <= wall:
            _, key = heapq.heappop(expiry)
            record = replica.get(key)
            if record is not None and record.expires <= wall:  # else: replaced by a later version
                del replica[key]
                self._recency.release(key)
                pruned += 1
                self._tombstone_count -= record.deleted
        self.counts["pruned"] += pruned
        for origin in self.tracker.forget_silent(self.clock.monotonic(), self.forget_after):
            self._resyncs.forget(origin)
            self.counts["forgotten"] += 1
        return pruned

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out.update(dropped=dict(self.dropped), sessions=len(self.replica) - self._tombstone_count,
                   tombstones=self._tombstone_count, maxsize=self.maxsize, streams=len(self.tracker),
                   cleared=self.cleared, epoch=self.epoch, uptime=round(self.clock.wall() - self.started, 3),
                   started=self.started)  # Unix time; Prometheus wants it rather than the uptime
        out.update(self.lag.stats())
        if self.extra_stats is not None:
            out.update(self.extra_stats())
        return out
