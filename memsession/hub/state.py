"""The hub's protocol without sockets: its replica of every session and what it answers.

``HubState`` merges bus messages into the replica (``merge_into``: one
``supersedes`` rule, nothing expired kept), answers snapshot, key read, push,
write and stats requests, and says what to publish in return: relays of what
a push brought, resync requests to an origin whose stream has a gap, and its
own heartbeats. It owns no socket, thread or clock of its own, so tests and
the in-memory bus drive it directly; ``runner`` moves its frames.
"""

from __future__ import annotations

import heapq
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import wire
from ..admission import DEFAULT_MAX_SKEW, RecordRules
from ..bus.sequence import GAP, SequenceTracker
from ..bus.streams import new_epoch, percentiles
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import RecordRefused, WireError
from ..refusals import log_refusal
from ..session import Record, cleared_by, supersedes, touched_copy

__all__ = ["CHUNK_RECORDS", "HubState", "merge_into"]

log = logging.getLogger("memsession.hub")

CHUNK_RECORDS = 1000
#: Seconds between two resync requests to one origin (its push takes a moment to arrive).
_RESYNC_SPACING = 0.5


def merge_into(replica: dict[str, Record], record: Record, wall: float) -> bool:
    """Merge ``record`` into ``replica`` by ``supersedes``; True if ``replica`` changed.

    A winner that has already expired is not kept; it only removes the live copy it beat.
    """
    key = record.key
    old = replica.get(key)
    if not supersedes(record, old):
        return False
    if record.expires <= wall:
        if old is not None and not old.deleted:
            del replica[key]
            return True
        return False
    replica[key] = record
    return True


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
        max_skew: float = DEFAULT_MAX_SKEW,
    ) -> None:
        #: Publishers silent this long (seconds) are forgotten: hub state follows the live ones.
        self.forget_after = forget_after
        self.on_change = on_change
        self.extra_stats = extra_stats
        self.on_clear = on_clear
        self.clock = clock
        self.hub_id = hub_id if hub_id is not None else secrets.randbits(63) or 1
        self.epoch = epoch if epoch is not None else new_epoch(clock)
        self.limits = limits
        #: The record rule every record passes before it is merged: bus, pushes, writes, the store's load.
        self.rules = RecordRules.for_hub(limits, max_skew)
        self.replica: dict[str, Record] = {}
        #: ``(expires, key)`` heap over the replica (see ``_track_expiry``).
        self._expiry: list[tuple[float, str]] = []
        self._expiry_compaction_slack = 1024
        self._tombstone_count = 0
        #: Clear watermark: no live session written at or before this version is kept or accepted.
        self.cleared = 0
        # Strict: a stream first seen past seq 1 had messages the hub never got (it may have
        # just restarted); asking that origin to resync costs one push and closes the hole.
        self.tracker = SequenceTracker(strict=True)
        self.seq = 0
        self.started = clock.wall()
        self.counts = dict.fromkeys(
            ("received", "applied", "ignored", "duplicates", "gaps", "resyncs_sent", "snapshots",
             "gets", "pushes", "pushed_records", "writes", "relayed", "pruned", "clears", "forgotten", "refused"),
            0,
        )
        self.dropped: dict[str, int] = {}
        self.lag_ms: list[float] = []
        self._last_resync: dict[int, float] = {}
        self._owed: set[int] = set()

    def _drop(self, reason: str, exc: Exception) -> None:
        count = self.dropped[reason] = self.dropped.get(reason, 0) + 1
        log_refusal(log, f"hub dropped a frame ({reason})", count, exc)

    def _now_us(self) -> int:
        return int(self.clock.wall() * 1_000_000)

    def _admit(self, record: Record, wall: float) -> Record | None:
        """``record`` if the record rule lets it in, else None (counted as ``refused`` and logged without its id)."""
        try:
            return self.rules.admit(record, wall)
        except RecordRefused as exc:
            self._refused(exc.reason)
            return None

    def _refused(self, reason: str) -> None:
        self.counts["refused"] += 1
        log_refusal(log, "hub refused a record", self.counts["refused"], reason)

    def merge(self, record: Record) -> bool:
        """Merge a record from the bus or a request, if the record rule admits it; True if the replica changed."""
        admitted = self._admit(record, self.clock.wall())
        if admitted is None:
            return False
        record = admitted
        replica = self.replica
        old = replica.get(record.key)
        changed = not cleared_by(record, self.cleared) and merge_into(replica, record, self.clock.wall())
        self.counts["applied" if changed else "ignored"] += 1
        if changed:
            new = replica.get(record.key)
            # kept as a count: stats() is asked for every second by the sidecar's HTTP endpoint
            self._tombstone_count += (new is not None and new.deleted) - (old is not None and old.deleted)
            if new is not None:  # merge_into drops a record that arrives already expired
                self._track_expiry(new)
            if self.on_change is not None:
                self.on_change(record)
        return changed

    def warm(self, records: Iterable[Record]) -> int:
        """Fill the replica from a store before serving (no hooks run: the store has these); how many."""
        wall = self.clock.wall()
        count = 0
        admit = self._admit
        for record in records:
            admitted = admit(record, wall)
            if admitted is not None and not cleared_by(admitted, self.cleared):
                merge_into(self.replica, admitted, wall)
            count += 1
        self.recount()
        return count

    def recount(self) -> None:
        """Recount tombstones and rebuild the expiry heap (after filling ``replica`` directly)."""
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

    def clear(self, version: int) -> bool:
        """Raise the clear watermark to ``version``, dropping the live sessions at or below it; True if raised.

        A watermark beyond the skew bound of the record rule is refused (counted): it would clear
        every session written for as long as the clock takes to catch up.
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
        for key in [k for k, r in replica.items() if cleared_by(r, version)]:
            del replica[key]
        self._rebuild_expiry()
        if self.on_clear is not None:
            self.on_clear(version)
        return True

    def _resync(self, origin: int) -> list[list[bytes]]:
        now = self.clock.monotonic()
        if now - self._last_resync.get(origin, -1e9) < _RESYNC_SPACING:
            # A push is probably on its way, but it may have been cut before this loss:
            # owe the origin another request once the spacing has passed (``owed_resyncs``).
            self._owed.add(origin)
            return []
        self._owed.discard(origin)
        self._last_resync[origin] = now
        self.counts["resyncs_sent"] += 1
        log.info("gap in the stream of origin %x; asking it to resync", origin)
        return [wire.encode_resync(self.hub_id, self.epoch, origin, self._now_us())]

    def owed_resyncs(self) -> list[list[bytes]]:
        """Resync requests held back by the spacing whose time has come (the runner polls this)."""
        if not self._owed:
            return []
        now = self.clock.monotonic()
        due = [o for o in self._owed if now - self._last_resync.get(o, -1e9) >= _RESYNC_SPACING]
        return [frames for origin in due for frames in self._resync(origin)]

    def on_bus(self, frames: list[bytes]) -> list[list[bytes]]:
        """One message from the capture socket; returns frames to publish."""
        try:
            msg = wire.decode(frames, self.limits)
        except WireError as exc:
            self._drop("malformed", exc)
            return []
        op = msg.op
        if msg.origin == self.hub_id or op in (wire.HELLO, wire.RESYNC, wire.HUB_BEAT):
            return []
        self.tracker.heard(msg.origin, self.clock.monotonic())
        if op == wire.HEARTBEAT:
            if self.tracker.heartbeat(msg.origin, msg.epoch, msg.seq) == GAP:
                self.counts["gaps"] += 1
                return self._resync(msg.origin)
            return []
        items = msg.body if op == wire.BATCH else ((op, msg.body),)
        if len(self.lag_ms) >= 4096:
            del self.lag_ms[:2048]
        lag = self.clock.wall() * 1000 - msg.sent_us / 1000
        fresh, gap_at = self.tracker.accept(msg.origin, msg.epoch, msg.seq, items)
        self.counts["duplicates"] += len(items) - len(fresh)
        self.counts["received"] += len(fresh)
        self.lag_ms.extend([lag] * len(fresh))
        for item_op, body in fresh:
            self._apply(item_op, body)
        if gap_at:
            self.counts["gaps"] += 1
            return self._resync(msg.origin)
        return []

    def _apply(self, op: str, body: Any) -> None:
        if op == wire.SET or op == wire.DESTROY:
            self.merge(body)
        elif op == wire.TOUCH:
            key, version, origin, accessed, expires = body
            touched = touched_copy(self.replica.get(key), version, origin, accessed, expires)
            if touched is not None:
                self.merge(touched)
            else:
                self.counts["ignored"] += 1
        elif op == wire.CLEAR:
            self.clear(body)
        else:  # INVALIDATE: the value came by WRITE, acknowledged before this was sent
            self.counts["ignored"] += 1

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
        return wire.encode_heartbeat(self.hub_id, self.epoch, self.seq, self._now_us(), hub=True)

    def snapshot(self, rid: int) -> Iterator[list[bytes]]:
        """CHUNK frames then END, cut from the replica as it is now."""
        wall = self.clock.wall()
        vector = [[o, e, s] for o, (e, s) in self.tracker.vector().items()]
        vector.append([self.hub_id, self.epoch, self.seq])
        live = [r for r in self.replica.values() if r.expires > wall]
        self.counts["snapshots"] += 1
        chunks = 0
        for start in range(0, len(live), CHUNK_RECORDS):
            chunks += 1
            yield wire.encode_request(
                wire.CHUNK, rid, [wire.record_to_list(r) for r in live[start:start + CHUNK_RECORDS]]
            )
        yield wire.encode_request(wire.END, rid, self.epoch, vector, chunks, len(live), self.cleared)

    def on_request(self, frames: list[bytes]) -> tuple[list[list[bytes]], list[list[bytes]]]:
        """One request; returns ``(replies, frames to publish)``."""
        try:
            req = wire.decode_reply(frames, self.limits)
        except WireError as exc:
            self._drop("malformed request", exc)
            return [], []
        if req.refused:
            self.counts["refused"] += req.refused
            log_refusal(log, "hub refused records of a request", self.counts["refused"], f"{req.refused} in one")
        if req.op == wire.SNAPSHOT:
            return list(self.snapshot(req.rid)), []
        if req.op == wire.GET:
            self.counts["gets"] += 1
            record = self.replica.get(req.body[0])
            if record is not None and record.expires <= self.clock.wall():
                record = None
            body = None if record is None else wire.record_to_list(record)
            return [wire.encode_request(wire.RECORD, req.rid, body)], []
        if req.op == wire.PUSH:
            self.counts["pushes"] += 1
            relays = []
            records, cleared = req.body
            if self.clear(cleared):
                # A clear this hub never saw (it restarted since): others may have missed it too.
                relays.append(self.relay_clear(cleared))
            for record in records:
                self.counts["pushed_records"] += 1
                if self.merge(record):
                    relays.append(self.relay(record))
            return [wire.encode_request(wire.ACK, req.rid, len(relays))], relays
        if req.op == wire.WRITE:
            self.counts["writes"] += 1
            changed = sum(1 for record in req.body[0] if self.merge(record))
            return [wire.encode_request(wire.ACK, req.rid, changed)], []
        if req.op == wire.STATS:
            return [wire.encode_request(wire.STATS_REPLY, req.rid, self.stats())], []
        self._drop("not a request", WireError(req.op))
        return [], []

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
                pruned += 1
                self._tombstone_count -= record.deleted
        self.counts["pruned"] += pruned
        for origin in self.tracker.forget_silent(self.clock.monotonic(), self.forget_after):
            self._last_resync.pop(origin, None)
            self._owed.discard(origin)
            self.counts["forgotten"] += 1
        return pruned

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["dropped"] = dict(self.dropped)
        out["sessions"] = len(self.replica) - self._tombstone_count
        out["tombstones"] = self._tombstone_count
        out["streams"] = len(self.tracker)
        out["cleared"] = self.cleared
        out["epoch"] = self.epoch
        out["uptime"] = round(self.clock.wall() - self.started, 3)
        lag = percentiles(self.lag_ms)
        out["lag_ms_p50"] = lag["p50"]
        out["lag_ms_p99"] = lag["p99"]
        if self.extra_stats is not None:
            out.update(self.extra_stats())
        return out
