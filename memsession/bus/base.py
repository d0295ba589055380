"""The replication logic every transport shares.

``Replicator`` is the pure part of a bus: it numbers outgoing messages (the
``OutgoingStream`` it builds on, in ``outgoing``), decodes incoming ones,
tracks sequences, merges records into the cache and says when a repair is due. It owns no socket, thread or clock of its own;
transports (``MemoryBus``, ``ZmqBus``) move its frames and run its repairs.

The contract it serves (``Bus``, ``ReplicaTarget``, ``Clear``) is in
``contract``, the options (``BusConfig``) in ``config``, and ``new_epoch`` and
``percentiles`` in ``streams``; all are re-exported here.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import wire
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import WireError
from ..refusals import log_refusal
from ..replica import GATHER
from ..session import Record, touched_copy
from .config import BusConfig
from .contract import Bus, Clear, ReplicaTarget
from .outgoing import OutgoingStream
from .sequence import GAP, JUMP, SequenceTracker
from .streams import is_touch, new_epoch, percentiles

__all__ = ["Bus", "BusConfig", "Clear", "ReplicaTarget", "Replicator", "is_touch", "new_epoch", "percentiles"]

log = logging.getLogger("memsession.bus")

# What ``Replicator.receive`` saw; transports act on REPAIR, RESYNC and HELLO.
APPLIED = "applied"
IGNORED = "ignored"
DROPPED = "dropped"
OWN = "own"
HELLO = "hello"
RESYNC = "resync"
REPAIR = "repair"
SKIPPED = "skipped"
#: (within ``Replicator``) a message whose changes were taken in, merged or waiting in a run
_DATA = "data"
#: Seconds our own writes may take to reach the hub: a near cache's repair keeps them though unlisted.
OWN_IN_FLIGHT = 5.0


class Replicator(OutgoingStream):
    """Replication protocol of one process, without I/O.

    ``outgoing`` numbers and encodes local changes (one caller thread at a
    time); ``receive`` classifies and merges incoming frames, ``receive_many``
    the frames a transport drained at once (one thread);
    ``install_snapshot`` splices a hub snapshot in. ``repair_due`` is set by a
    gap, a hub restart or a silence and cleared by a snapshot.
    """

    def __init__(
        self,
        cache: ReplicaTarget,
        config: BusConfig,
        *,
        epoch: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(cache.origin, config, epoch=epoch, clock=clock)
        self.cache = cache
        self._own = wire.own_prefix(self.origin, self.epoch)
        self.tracker = SequenceTracker(strict=True, max_jump=config.max_seq_jump, hold=config.seq_jump_hold)
        self.hub_epoch: int | None = None
        self.hub_id: int | None = None
        #: Hubs that have been replaced: what still arrives from them is a straggler. A restart is
        #: told by the hub's id, never by comparing epochs, which follow a wall clock that can step back.
        self._past_hubs: deque[int] = deque(maxlen=64)
        self.last_hub_beat: float | None = None
        #: When (monotonic) this process first heard the current hub.
        self.hub_seen: float | None = None
        #: When (monotonic) this process last saw the hub replaced by a restarted one; None: never.
        self.hub_restarted_at: float | None = None
        #: ``seq`` when the hub was last heard: what we published after may not have reached it yet.
        self.seq_at_beat = 0
        self.repair_due = False
        self.repair_reason = ""
        self.suspect = 0
        #: True from a hub restart or a silence until our state was pushed: the hub may lack it. Kept
        #: apart from ``repair_reason``, which a gap found before the repair runs would overwrite.
        self.push_due = False
        #: True until the join snapshot is installed: what arrives before it, gaps included, it covers.
        self.joining = True
        self.counts.update(dict.fromkeys(
            ("queue_dropped", "received", "applied", "ignored", "duplicates",
             "gaps", "repairs", "hub_restarts", "stale_hub_beats", "resyncs", "snapshot_records", "write_failures",
             "refused_records", "sent_whole"),
            0,
        ))
        self.dropped: dict[str, int] = {}
        self.lag_ms: deque[float] = deque(maxlen=4096)
        self._last_drop_log = 0.0

    # -- receiving --------------------------------------------------------------

    def drop(self, reason: str, exc: Exception | None = None) -> str:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        now = self.clock.monotonic()
        if now - self._last_drop_log >= 1.0:  # one line a second, the counters keep the rest
            self._last_drop_log = now
            log.warning("dropped a bus frame (%s): %s", reason, exc)
        return DROPPED

    def snapshot_records(self, chunks: Sequence[wire.Reply]) -> tuple[list[Record], int]:
        """The records of a snapshot's chunks and how many the decoder refused (counted and logged here)."""
        refused = sum(reply.refused for reply in chunks)
        if refused:
            self.counts["refused_records"] += refused
            log_refusal(log, "refused records in a snapshot", self.counts["refused_records"], f"{refused} in one")
        return [r for reply in chunks for r in reply.body[0]], refused

    def receive(self, frames: list[bytes]) -> str:
        """Handle one bus message; the return value tells the transport what to do."""
        run: list[Record] = []
        verdict, changed = self._take(frames, run)
        if run and self._merge_run(run):
            changed = True
        if verdict == _DATA:
            return APPLIED if changed else IGNORED
        return verdict

    def receive_many(self, messages: Iterable[list[bytes]]) -> set[str]:
        """``receive`` for the messages a transport drained at once; the verdicts it must act on.

        The sets and destroys of consecutive messages are merged under one
        lock (``ReplicaTarget.apply_many``), as a BATCH's are; any other change
        is merged after them, in stream order. A message that fails is logged,
        counted (``dropped["error"]``) and skipped; the others are not lost.
        """
        run: list[Record] = []
        verdicts: set[str] = set()
        for frames in messages:
            try:
                verdicts.add(self._take(frames, run)[0])
            except Exception as exc:  # replication is best-effort: one bad message never costs the rest
                log.exception("failed to apply a bus message")
                self.drop("error", exc)
        if run:
            self._merge_run(run)
        return verdicts

    def _take(self, frames: list[bytes], run: list[Record]) -> tuple[str, bool]:
        """Classify one message and merge its changes, its sets and destroys appended to ``run`` for the caller.

        ``(verdict, changed)``: ``_DATA`` for changes taken in, ``changed`` if
        those merged here (not the ones left in ``run``) changed the cache.
        """
        if wire.is_own(frames, self._own):
            return OWN, False
        try:
            msg = wire.decode(frames, self.config.limits)
        except WireError as exc:
            return self.drop(exc.kind, exc), False
        op = msg.op
        self.tracker.heard(msg.origin, self.clock.monotonic())
        if op == wire.HELLO:
            return (HELLO if msg.origin == self.origin and msg.body == self.nonce else SKIPPED), False
        if op == wire.HUB_BEAT:
            return self._hub_beat(msg), False
        if msg.origin == self.origin and msg.epoch == self.epoch:
            return OWN, False
        if op == wire.RESYNC:
            if msg.body == self.origin:
                self.counts["resyncs"] += 1
                return RESYNC, False
            return SKIPPED, False
        if op == wire.HEARTBEAT:
            verdict = self.tracker.heartbeat(msg.origin, msg.epoch, msg.seq)
            if verdict == JUMP:
                return self._jump(msg), False
            if verdict == GAP:
                return self._gap(f"heartbeat of origin {msg.origin:x}"), False
            return SKIPPED, False
        # A BATCH is a run of numbered messages; a single change is a run of one.
        items = msg.body if op == wire.BATCH else ((op, msg.body),)
        fresh, gap_at, jumped = self.tracker.accept(msg.origin, msg.epoch, msg.seq, items)
        if jumped:
            return self._jump(msg), False
        received = len(fresh)
        self.counts["duplicates"] += len(items) - received
        changed = False
        for item_op, body in fresh:
            if item_op == wire.SET or item_op == wire.DESTROY:
                run.append(body)
                continue
            if run and self._merge_run(run):  # what came before merges first: a touch needs the record
                changed = True
            run.clear()
            if self._merge(item_op, body):
                changed = True
        self.counts["received"] += received
        lag = self.clock.wall() * 1000 - msg.sent_us / 1000
        self.lag_ms.extend([lag] * received)  # every item waited since the message was sent
        if gap_at:
            return self._gap(f"seq {gap_at} of origin {msg.origin:x}"), changed
        return (_DATA if received else SKIPPED), changed

    def _merge(self, op: str, body: Any) -> bool:
        cache = self.cache
        if op == wire.SET or op == wire.DESTROY:
            changed = cache.apply(body)
        elif op == wire.TOUCH:
            key, version, origin, accessed, expires = body
            touched = touched_copy(cache.held(key), version, origin, accessed, expires)
            changed = touched is not None and cache.apply(touched)
        elif op == wire.CLEAR:
            changed = cache.apply_clear(body)
        elif op == wire.DROP:
            changed = cache.drop_partitions(body) > 0
        else:  # INVALIDATE
            key, version, origin, _deleted = body
            changed = cache.discard(key, version, origin)
        self.counts["applied" if changed else "ignored"] += 1
        return changed

    def _merge_run(self, records: list[Record]) -> bool:
        """Merge ``records`` under one lock; if that fails, one by one, so a bad one costs only itself."""
        try:
            changed = self.cache.apply_many(records)
        except Exception:
            log.exception("failed to merge %d changes together; merging them one by one", len(records))
            changed = 0
            for record in records:
                try:
                    changed += self.cache.apply(record)  # merging again what was merged changes nothing
                except Exception as exc:
                    log.exception("failed to apply a bus message")
                    self.drop("error", exc)
        self.counts["applied"] += changed
        self.counts["ignored"] += len(records) - changed
        return changed > 0

    def _jump(self, msg: wire.Message) -> str:
        """A frame whose seq runs past ``max_seq_jump``: kept out, counted, and repaired like a gap.

        Whatever it carried, the repair brings if it was real; if it was forged, the
        repair costs one snapshot and the stream goes on from the number we had.
        """
        self.drop("seq jump", WireError(f"seq {msg.seq} of origin {msg.origin:x} jumps past the bound"))
        return self._gap(f"seq jump of origin {msg.origin:x}")

    def _gap(self, where: str) -> str:
        if self.joining:
            return SKIPPED  # a stream first seen mid-way before the join snapshot: it covers the rest
        self.counts["gaps"] += 1
        log.info("replication gap detected (%s); repairing", where)
        return self._need_repair("gap")

    def _need_repair(self, reason: str) -> str:
        if self.joining:
            return SKIPPED  # the join snapshot is still to come
        self.repair_due = True
        self.repair_reason = reason
        if reason in ("hub restart", "silence"):
            self.push_due = True
        if reason == "gap":
            # Lost messages may have changed any key; the hub still has them, so reads
            # check with it until the snapshot lands. (After a hub restart or a silence
            # the hub is not the one to ask: it lost state or can't be reached.)
            self.cache.begin_repair()
        return REPAIR

    def _hub_beat(self, msg: wire.Message) -> str:
        if msg.origin in self._past_hubs:
            # A straggler from a hub that has since been replaced: taking it for another
            # restart would flip back and repair again.
            self.counts["stale_hub_beats"] += 1
            return SKIPPED
        if msg.body != self.suspect:  # the partitions the hub can't vouch for (its feed is silent)
            self.suspect = msg.body
            self.cache.suspect(msg.body)
        now = self.clock.monotonic()
        previous = self.last_hub_beat
        if self.hub_id is not None and msg.origin != self.hub_id:
            self._replaced_by(msg.origin, msg.epoch)
            verdict = self._need_repair("hub restart")
            self.last_hub_beat = now  # after the repair is due: never "a fresh beat and nothing due"
            return verdict
        self.seq_at_beat = self.seq
        self.last_hub_beat = now
        self.hub_epoch = msg.epoch
        if self.hub_id is None:
            self.hub_seen = now
        self.hub_id = msg.origin
        self.tracker.forget_silent(now, self.config.forget_after)  # once a beat: publishers that stopped
        if previous is not None and now - previous > self.config.silence:
            return self._need_repair("silence")
        verdict = self.tracker.heartbeat(msg.origin, msg.epoch, msg.seq)
        if verdict == JUMP:
            return self._jump(msg)
        if verdict == GAP:
            return self._gap("hub relay heartbeat")
        return SKIPPED

    def _replaced_by(self, hub_id: int, epoch: int) -> None:
        """Another hub serves now (a restart): the old one's messages are stragglers from here on."""
        self.counts["hub_restarts"] += 1
        log.warning("hub restarted (hub %x epoch %x -> hub %x epoch %x); repairing",
                    self.hub_id, self.hub_epoch or 0, hub_id, epoch)
        if self.hub_id is not None:
            self._past_hubs.append(self.hub_id)
        self.hub_id = hub_id
        self.hub_epoch = epoch
        self.hub_seen = self.hub_restarted_at = self.clock.monotonic()

    def hub_settled(self, gather: float) -> bool:
        """Whether the hub's "not found" can be believed: heard for ``gather`` seconds, no repair due
        (a hub that has just restarted is still gathering what the workers push as they notice it)."""
        seen = self.hub_seen
        return seen is not None and not self.repair_due and self.clock.monotonic() - seen >= gather

    def holds_only_copy(self) -> bool:
        """Whether changes published here may have reached no hub: ``hub_may_lack_ours``, or we
        published since we last heard it (a process closing then would take them along)."""
        return self.hub_may_lack_ours() or (self.seq > 0 and self.seq > self.seq_at_beat)

    def hub_may_lack_ours(self) -> bool:
        """Whether changes published here may not have reached the hub: a repair is due, or the hub
        is late (not heard for 1.5 heartbeats) or not heard yet. False before we published any."""
        if self.seq == 0:
            return False
        # A worker that has just joined heard the hub answer its snapshot, if no beat yet.
        last = self.last_hub_beat if self.last_hub_beat is not None else self.hub_seen
        return self.repair_due or last is None or self.clock.monotonic() - last > 1.5 * self.config.heartbeat

    def others_may_lack(self) -> bool:
        """``hub_may_lack_ours``, or the hub restarted less than ``GATHER`` ago and is still gathering the
        workers' pushes: a receiver may then lack changes made before ours elsewhere (``pushes.sendable``)."""
        if self.hub_may_lack_ours():
            return True
        restarted = self.hub_restarted_at
        return restarted is not None and self.clock.monotonic() - restarted < GATHER

    def silent(self) -> bool:
        """True when the hub has not been heard for ``silence`` seconds (checked by the transport)."""
        last = self.last_hub_beat
        if last is None or self.clock.monotonic() - last <= self.config.silence:
            return False
        if not self.repair_due:
            log.warning("no hub heartbeat for %.1fs; will repair when it returns", self.config.silence)
            self._need_repair("silence")
        return True

    # -- repair -----------------------------------------------------------------

    def install_snapshot(
        self, records: Iterable[Record], vector: Mapping[int, tuple[int, int]], hub_epoch: int, cleared: int = 0
    ) -> int:
        """Merge a hub snapshot and adopt its sequence vector; return how many records changed ours.

        The snapshot's clear watermark goes first: a clear we missed must not
        leave behind what it removed at the hub.
        """
        self.joining = False
        changed = 0
        if cleared and self.cache.apply_clear(cleared):
            changed += 1
        apply = self.cache.apply
        listed: set[str] | None = set() if self.config.read_through else None
        n = 0
        for record in records:
            n += 1
            if listed is not None:
                listed.add(record.key)
            if apply(record):
                changed += 1
        if listed is not None:  # a near cache: the invalidations lost name copies the snapshot can't
            changed += self.cache.forget_unlisted(listed, int((self.clock.wall() - OWN_IN_FLIGHT) * 1000))
        self.tracker.splice(vector)
        now = self.clock.monotonic()
        for origin in vector:
            self.tracker.heard(origin, now)  # live at the hub: forgotten only if silent from now on
        self.counts["snapshot_records"] += n
        self.counts["repairs"] += 1
        self.repair_due = False
        self.repair_reason = ""
        self.cache.end_repair()
        # The hub lists its own stream last in the vector, under its epoch. The last match counts:
        # a worker started in the hub's millisecond may share the epoch's time bits, and then its random ones.
        hub = None
        for origin, (epoch, _) in vector.items():
            if epoch == hub_epoch:
                hub = origin
        if hub is None:
            return changed
        if hub in self._past_hubs:
            return changed  # cut by a hub that has since been replaced: keep the newer one
        if self.hub_id is not None and hub != self.hub_id:
            # A snapshot from a hub we had not heard beat yet: it restarted and may lack our state.
            self._replaced_by(hub, hub_epoch)
            self._need_repair("hub restart")
        if self.hub_id is None:
            self.hub_seen = now
        self.hub_id = hub
        self.hub_epoch = hub_epoch
        return changed

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["dropped"] = dict(self.dropped)
        lag = percentiles(list(self.lag_ms))
        out["lag_ms_p50"] = lag["p50"]
        out["lag_ms_p99"] = lag["p99"]
        out["streams"] = len(self.tracker)
        out["repair_due"] = self.repair_due
        out["suspect_partitions"] = self.suspect.bit_count()
        out["mode"] = self.config.mode
        return out

