"""Epochs whatever the wall clock does: stepped back, slewed, or two starts in the same millisecond.

Epochs are drawn from the wall clock, so nothing may rely on their order: a
hub restart is told by the hub's id, a publisher restart by a new epoch of its
origin (the replaced one's stragglers are duplicates), and the hub is found in
its own snapshot vector by place, not by its epoch alone.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from memsession import Hub, SessionCache, ZmqBus
from memsession.bus.base import BusConfig, Replicator
from memsession.bus.sequence import DUP, GAP, NEW, OK, SequenceTracker
from memsession.hub import HubState
from memsession.session import new_id, session_key
from memsession.testing import FakeClock


class ShiftedClock:
    """The system clocks, with the wall clock ``offset`` seconds off and running at ``rate`` (a slew)."""

    def __init__(self, offset: float, rate: float = 1.0) -> None:
        self.offset = offset
        self.rate = rate
        self._start_wall = time.time()
        self._start = time.monotonic()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return self._start_wall + self.offset + (time.monotonic() - self._start) * self.rate


# -- the protocol objects ----------------------------------------------------------------


def test_a_publisher_restarted_with_an_older_epoch_starts_a_new_stream() -> None:
    t = SequenceTracker()
    assert [t.observe(1, 2000, s) for s in (1, 2)] == [NEW, OK]
    assert t.observe(1, 1000, 1) == NEW  # the same origin again, after the clock stepped back
    assert t.observe(1, 1000, 2) == OK
    assert t.observe(1, 2000, 3) == DUP  # a straggler of the stream it replaced
    assert t.heartbeat(1, 2000, 9) == DUP
    t.splice({1: (2000, 7)})  # a snapshot cut before the restart reached the hub
    assert t.vector() == {1: (1000, 2)}
    assert t.observe(1, 1000, 4) == GAP


def test_replaced_epochs_kept_per_origin_are_bounded_and_forgotten_with_the_origin() -> None:
    t = SequenceTracker()
    for epoch in range(100, 0, -1):  # a hundred restarts, each with an older epoch
        assert t.observe(1, epoch, 1) == NEW
    assert t.observe(1, 2, 2) == DUP and t.observe(1, 3, 2) == DUP  # the latest replaced ones
    t.forget([1])
    assert t.observe(1, 2, 1) == NEW and len(t) == 1


def _hub_beat(hub: int, epoch: int, seq: int = 0) -> list[bytes]:
    from memsession import wire

    return wire.encode_heartbeat(hub, epoch, seq, 0, hub=True)


def test_a_worker_sharing_the_hubs_epoch_is_not_taken_for_the_hub_in_its_snapshot() -> None:
    """Started in the hub's millisecond, a worker's epoch may equal the hub's: the hub's stream comes last."""
    clock = FakeClock()
    cache = SessionCache(clock=clock)
    replicator = Replicator(cache, BusConfig(), clock=clock)
    epoch = 1_764_000_000_000 << 12
    replicator.receive(_hub_beat(7, epoch))
    replicator.install_snapshot([], {5: (epoch, 3), 7: (epoch, 1)}, epoch)
    assert replicator.hub_id == 7 and not replicator.repair_due
    assert replicator.counts["hub_restarts"] == 0
    replicator.receive(_hub_beat(7, epoch, 1))
    assert replicator.counts["stale_hub_beats"] == 0 and not replicator.repair_due
    cache.close()


def test_two_hubs_started_in_the_same_millisecond_have_their_own_ids_and_streams() -> None:
    clock = FakeClock()
    first, second = HubState(clock=clock), HubState(clock=clock)
    assert first.hub_id != second.hub_id
    assert first.epoch >> 12 == second.epoch >> 12  # same millisecond: only the random bits differ


# -- real sockets -------------------------------------------------------------------------------


def _until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def runtime_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ms-clk-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _restart_keeps_sessions(runtime_dir: str, second_state: Callable[[Hub, SessionCache], HubState]) -> None:
    """A worker writes, its hub is replaced by ``second_state``'s; a joiner must see the session."""
    fast = {"runtime_dir": runtime_dir, "heartbeat": 0.1, "silence": 0.5}
    first = Hub(runtime_dir=runtime_dir, heartbeat=0.1).start()
    caches: list[SessionCache] = []
    try:
        writer = SessionCache(bus=ZmqBus(**fast))
        caches.append(writer)
        assert writer.bus is not None and writer.bus.wait_joined(10)  # type: ignore[attr-defined]
        sid = new_id()
        writer.set(sid, {"user": "ada"})
        _until(lambda: session_key(sid) in first.state.replica, 10, "the first hub to hold the session")
        first.stop()
        second = Hub(runtime_dir=runtime_dir, heartbeat=0.1)
        second.state = second_state(first, writer)
        second.start()
        try:
            _until(lambda: session_key(sid) in second.state.replica, 10, "the worker to push its session to the new hub")
            joiner = SessionCache(bus=ZmqBus(**fast))
            caches.append(joiner)
            assert joiner.bus is not None and joiner.bus.wait_joined(10)  # type: ignore[attr-defined]
            assert joiner.get(sid) == {"user": "ada"}
            # The new hub's resync request may have fetched the push before its first beat arrived.
            _until(lambda: writer.stats()["replication"]["hub_restarts"] == 1, 10, "the worker to see the restart")
            _until(lambda: not writer.stats()["replication"]["repair_due"], 10, "the worker's repair to finish")
            # The new hub is followed from here on: no beat of it is taken for a straggler.
            stats = writer.stats()["replication"]
            assert stats["hub_restarts"] == 1 and stats["stale_hub_beats"] == 0
        finally:
            for cache in caches:
                cache.close()
            second.stop()
    finally:
        first.stop()


@pytest.mark.zmq
def test_a_hub_restarted_after_the_wall_clock_stepped_back_gets_the_workers_sessions(runtime_dir: str) -> None:
    """Its wall clock an hour behind: an older epoch, which used to make workers take its beats as stale."""

    def stepped_back(first: Hub, _writer: SessionCache) -> HubState:
        state = HubState(clock=ShiftedClock(-3600.0), max_skew=7200)  # told the skew it must allow
        assert state.epoch < first.state.epoch
        return state

    _restart_keeps_sessions(runtime_dir, stepped_back)


@pytest.mark.zmq
def test_a_hub_restarted_in_the_same_millisecond_with_the_same_epoch_is_a_restart(runtime_dir: str) -> None:
    """The worst case of one millisecond: the new hub draws the very epoch of the old one."""
    _restart_keeps_sessions(runtime_dir, lambda first, _: HubState(epoch=first.state.epoch))


@pytest.mark.zmq
def test_a_restarted_hub_whose_epoch_equals_a_workers_is_still_told_apart(runtime_dir: str) -> None:
    """Hub and worker started in the same millisecond with the same random bits share an epoch."""

    def same_as_the_worker(_first: Hub, writer: SessionCache) -> HubState:
        replicator = writer.bus.replicator  # type: ignore[union-attr]
        return HubState(epoch=replicator.epoch)

    _restart_keeps_sessions(runtime_dir, same_as_the_worker)


@pytest.mark.zmq
def test_a_hub_restarted_while_the_wall_clock_slews_back_gets_the_workers_sessions(runtime_dir: str) -> None:
    """Its clock half a second behind and running at half speed: its epoch is older, its beats look late."""
    _restart_keeps_sessions(runtime_dir, lambda first, _: HubState(clock=ShiftedClock(-0.5, rate=0.5)))


@pytest.mark.zmq
def test_a_worker_restarted_with_its_origin_after_the_clock_stepped_back_is_heard(runtime_dir: str) -> None:
    """Same origin, older epoch: the hub and the other workers take it as a new stream, not as stale."""
    fast = {"runtime_dir": runtime_dir, "heartbeat": 0.1, "silence": 0.5}
    hub = Hub(runtime_dir=runtime_dir, heartbeat=0.1).start()
    caches: list[SessionCache] = []
    try:
        reader = SessionCache(bus=ZmqBus(**fast))
        before = SessionCache(bus=ZmqBus(**fast))
        caches += [reader, before]
        for cache in caches:
            assert cache.bus is not None and cache.bus.wait_joined(10)  # type: ignore[attr-defined]
        first = new_id()
        before.set(first, {"n": 1})
        _until(lambda: reader.get(first) == {"n": 1}, 10, "the first life's write at the reader")
        origin, old_epoch = before.origin, before.bus.replicator.epoch  # type: ignore[union-attr]
        before.close()
        after = SessionCache(bus=ZmqBus(**fast), origin=origin, clock=ShiftedClock(-60.0))
        caches.append(after)
        assert after.bus is not None and after.bus.wait_joined(10)  # type: ignore[attr-defined]
        assert after.bus.replicator.epoch < old_epoch  # type: ignore[attr-defined]
        second = new_id()
        after.set(second, {"n": 2})
        _until(lambda: reader.get(second) == {"n": 2}, 10, "the second life's write at the reader")
        _until(lambda: session_key(second) in hub.state.replica, 10, "the second life's write at the hub")
    finally:
        for cache in caches:
            cache.close()
        hub.stop()
