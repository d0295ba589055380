"""The in-memory twin of the ZeroMQ bus: same frames, same protocol objects, no sockets.

``MemoryHub`` plays the hub (a ``HubState``) and the proxy; every
``MemoryBus`` attached to it plays one process. Delivery is synchronous, in
publish order, so tests are deterministic; ``hold``/``release`` delay it
(what bus latency does: requests on two workers each save before either
hears of the other's change). ``partition``/``heal`` cut a bus
off (its messages and everyone's messages to it are lost) to exercise gap
detection and repair; ``beat`` sends heartbeats, which real buses send on a
timer. ``hold_repairs`` keeps a detected repair pending until ``run_repairs``,
to observe what a process serves while a real one waits for its snapshot.
Single-process apps can use one hub and one bus per cache.
"""

from __future__ import annotations

import threading
from typing import Any

from .. import wire
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import BusError
from ..session import Record
from .base import REPAIR, RESYNC, BusConfig, Clear, ReplicaTarget, Replicator
from .pushes import push_fields, sendable

__all__ = ["MemoryBus", "MemoryHub"]


class MemoryHub:
    """An in-process hub: replica, snapshots and fan-out to every attached ``MemoryBus``."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, state: Any = None) -> None:
        from ..hub import HubState

        self.clock = clock
        self.state = state if state is not None else HubState(clock=clock)
        self.buses: list[MemoryBus] = []
        self.cut: set[int] = set()
        #: Messages published while delivery is held (``hold``), in publish order; None: not held.
        self.held: list[tuple[list[bytes], MemoryBus | None]] | None = None
        self._lock = threading.RLock()

    def deliver(self, frames: list[bytes], sender: MemoryBus | None = None) -> None:
        """Forward one message as the proxy would: to the replica, then to every subscriber."""
        with self._lock:
            if sender is not None and id(sender) in self.cut:
                return
            if self.held is not None:
                self.held.append((frames, sender))
                return
            follow_up = self.state.on_bus(frames)
            for bus in list(self.buses):
                if id(bus) not in self.cut:
                    bus.receive(frames)
            for extra in follow_up:
                self.deliver(extra)

    def request(self, frames: list[bytes]) -> list[wire.Reply]:
        """One request to the hub's ROUTER; relays it triggers are delivered first."""
        with self._lock:
            replies, publish = self.state.on_request(frames)
            for extra in publish:
                self.deliver(extra)
            return [wire.decode_reply(r) for r in replies]

    def beat(self) -> None:
        """Every bus and the hub send one heartbeat."""
        with self._lock:
            self.deliver(self.state.heartbeat())
            for frames in self.state.owed_resyncs():
                self.deliver(frames)
            for bus in list(self.buses):
                bus.beat()

    def restart(self) -> None:
        """Lose the replica and start over with a new epoch, as a restarted hub process would."""
        from ..hub import HubState

        with self._lock:
            # A new hub id and an epoch from the clock, whatever the clock did meanwhile:
            # workers tell a restart by the id.
            self.state = HubState(clock=self.clock)

    def hold(self) -> None:
        """Keep what is published from now on until ``release`` (hub and subscribers hear nothing meanwhile)."""
        with self._lock:
            if self.held is None:
                self.held = []

    def release(self, *, reverse: bool = False) -> None:
        """Deliver what was held, in publish order (or the reverse: every publisher's stream then has a gap)."""
        with self._lock:
            held, self.held = self.held or [], None
            for frames, sender in reversed(held) if reverse else held:
                self.deliver(frames, sender)

    def partition(self, bus: MemoryBus) -> None:
        self.cut.add(id(bus))

    def heal(self, bus: MemoryBus) -> None:
        self.cut.discard(id(bus))


class MemoryBus:
    """One process's connection to a ``MemoryHub``."""

    def __init__(self, hub: MemoryHub, config: BusConfig | None = None, **options: Any) -> None:
        self.hub = hub
        self.config = config or BusConfig(publish="inproc://memory", subscribe="inproc://memory",
                                          requests="inproc://memory", **options)
        self.replicator: Replicator | None = None
        self._cache: ReplicaTarget | None = None
        self._closed = False
        self._lock = threading.RLock()
        self.reads_through = self.config.mode == "invalidate" or self.config.read_through
        #: Leave detected repairs pending (``run_repairs`` runs them), as a snapshot in flight would.
        self.hold_repairs = False

    def attach(self, cache: ReplicaTarget) -> None:
        if self._cache is not None:
            raise BusError("bus is already attached")
        self._cache = cache
        self.replicator = Replicator(cache, self.config, clock=getattr(cache, "clock", SYSTEM_CLOCK))
        with self.hub._lock:
            self.hub.buses.append(self)
            self.hub.deliver(self.replicator.hello(), self)
            self.repair()

    def publish(self, record: Record | Clear, packed: bytes | None = None) -> None:
        if self._closed or self.replicator is None:
            return
        rep = self.replicator
        if type(record) is Record and record.partial:
            record, packed = sendable(rep, record, packed)
        written = True
        if type(record) is Record and rep.needs_write(record):
            written = id(self) not in self.hub.cut
            if written:
                self.hub.request(wire.encode_request(wire.WRITE, 1, [wire.record_to_list(record)]))
            else:
                rep.counts["write_failures"] += 1
        with self._lock:
            frames = rep.outgoing(record, full=not written)
        self.hub.deliver(frames, self)

    def beat(self) -> None:
        if not self._closed and self.replicator is not None:
            self.hub.deliver(self.replicator.heartbeat(), self)

    def receive(self, frames: list[bytes]) -> str:
        rep = self.replicator
        if self._closed or rep is None:
            return "closed"
        verdict = rep.receive(frames)
        if verdict == REPAIR and not self.hold_repairs:
            self.run_repairs()
        elif verdict == RESYNC:
            self.push_state()
        return verdict

    def run_repairs(self) -> None:
        """Run the repair the replicator asked for, if any."""
        rep = self.replicator
        if rep is not None and rep.repair_due:
            self.repair(push=rep.push_due)

    def repair(self, *, push: bool = False) -> None:
        rep = self.replicator
        assert rep is not None
        if id(self) in self.hub.cut:
            return  # unreachable hub: the gap stays flagged until we can reach it
        if push:
            self.push_state()
        replies = self.hub.request(wire.encode_request(wire.SNAPSHOT, 1))
        end = replies[-1]
        hub_epoch, vector, _chunks, _count, cleared = end.body
        rep.install_snapshot(rep.snapshot_records(replies[:-1])[0], vector, hub_epoch, cleared)
        if rep.push_due and not push:  # the snapshot came from a restarted hub
            self.repair(push=True)

    def push_state(self) -> None:
        rep = self.replicator
        assert rep is not None
        for fields in push_fields(rep):
            self.hub.request(wire.encode_request(wire.PUSH, 1, *fields))
        rep.push_due = False

    def fetch(self, key: str, timeout: float | None = None) -> Record | None:
        return self.lookup(key, timeout)[1]

    def lookup(self, key: str, timeout: float | None = None) -> tuple[bool, Record | None]:
        if id(self) in self.hub.cut:
            return False, None
        (reply,) = self.hub.request(wire.encode_request(wire.GET, 1, key))
        return True, reply.body[0]

    def hub_settled(self, gather: float) -> bool:
        # Pushes to a restarted in-memory hub happen at once, in the repair itself: nothing to gather.
        rep = self.replicator
        return rep is not None and not rep.repair_due and id(self) not in self.hub.cut

    def stats(self) -> dict[str, Any]:
        return self.replicator.stats() if self.replicator is not None else {}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self.hub._lock:
            if self in self.hub.buses:
                self.hub.buses.remove(self)
