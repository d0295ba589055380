"""Hub restarts: told by the hub's id, whatever the wall clock did; a replaced hub's beat is a straggler."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable

import pytest

from memsession import Hub, SessionCache, ZmqBus, wire
from memsession.bus.base import BusConfig, Replicator
from memsession.hub import HubState
from memsession.session import new_id
from memsession.testing import FakeClock


def beat(hub_origin: int, epoch: int, seq: int) -> list[bytes]:
    return wire.encode_heartbeat(hub_origin, epoch, seq, 0, hub=True)


def test_straggler_beat_from_the_old_hub_does_not_trigger_another_repair():
    clock = FakeClock()
    cache = SessionCache(clock=clock)
    replicator = Replicator(cache, BusConfig(), clock=clock)
    old, new = 1000 << 12, 2000 << 12
    replicator.receive(beat(7, old, 1))
    replicator.install_snapshot([], {}, old)
    assert not replicator.repair_due

    replicator.receive(beat(8, new, 1))  # the hub restarted
    assert replicator.repair_due and replicator.counts["hub_restarts"] == 1
    replicator.install_snapshot([], {}, new)
    assert not replicator.repair_due

    replicator.receive(beat(7, old, 2))  # late beat from the dead hub
    assert not replicator.repair_due
    assert replicator.hub_epoch == new
    assert replicator.counts["hub_restarts"] == 1 and replicator.counts["stale_hub_beats"] == 1

    replicator.install_snapshot([], {}, old)  # a snapshot cut by the old hub doesn't move us back
    assert replicator.hub_epoch == new and not replicator.repair_due
    cache.close()


def test_a_new_hub_with_an_older_or_equal_epoch_is_a_restart() -> None:
    """Epochs follow the wall clock, which can step back or repeat: the hub's id tells a restart."""
    clock = FakeClock()
    cache = SessionCache(clock=clock)
    replicator = Replicator(cache, BusConfig(), clock=clock)
    epoch = 1_764_000_000_000 << 12  # a wall-clock epoch (ms << 12)
    replicator.receive(beat(7, epoch, 1))
    replicator.install_snapshot([], {7: (epoch, 1)}, epoch)
    assert replicator.hub_id == 7 and not replicator.repair_due
    replicator.receive(beat(8, epoch - (3600_000 << 12), 1))  # restarted after the clock stepped back
    assert replicator.repair_due and replicator.counts["hub_restarts"] == 1
    replicator.install_snapshot([], {8: (epoch - (3600_000 << 12), 1)}, epoch - (3600_000 << 12))
    replicator.receive(beat(9, epoch - (3600_000 << 12), 1))  # and again in the same millisecond
    assert replicator.repair_due and replicator.counts["hub_restarts"] == 2
    replicator.receive(beat(7, epoch, 2))  # the first hub's straggler changes nothing
    assert replicator.hub_id == 9 and replicator.counts["stale_hub_beats"] == 1
    cache.close()


class SteppedBackClock:
    """The system clock with the wall clock an hour behind (a hub started after a step back)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time() - 3600.0


def _until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.zmq
def test_a_hub_restarted_after_the_wall_clock_stepped_back_gets_the_workers_sessions() -> None:
    runtime_dir = tempfile.mkdtemp(prefix="ms-ep-")
    fast = {"runtime_dir": runtime_dir, "heartbeat": 0.1, "silence": 0.5}
    first = Hub(runtime_dir=runtime_dir, heartbeat=0.1).start()
    caches: list[SessionCache] = []
    try:
        writer = SessionCache(bus=ZmqBus(**fast))
        caches.append(writer)
        assert writer.bus is not None and writer.bus.wait_joined(10)  # type: ignore[attr-defined]
        sid = new_id()
        writer.set(sid, {"user": "ada"})
        _until(lambda: sid in first.state.replica, 10, "the first hub to hold the session")
        old_epoch = first.state.epoch
        first.stop()

        second = Hub(runtime_dir=runtime_dir, heartbeat=0.1)
        # Its records' versions are an hour ahead of its clock: a skew it must be told to allow
        # (past ``max_skew`` the record rule refuses them, as any far-future record).
        second.state = HubState(clock=SteppedBackClock(), max_skew=7200.0)
        assert second.state.epoch < old_epoch  # what used to make workers take its beats as stale
        second.start()
        try:
            # The worker tells the new hub by its id, repairs and pushes what it holds.
            _until(lambda: sid in second.state.replica, 10, "the worker to push its session to the new hub")
            # The new hub's resync request may have fetched the push before its first beat arrived.
            _until(lambda: writer.stats()["replication"]["hub_restarts"] == 1, 10, "the worker to see the restart")
            joiner = SessionCache(bus=ZmqBus(**fast))
            caches.append(joiner)
            assert joiner.bus is not None and joiner.bus.wait_joined(10)  # type: ignore[attr-defined]
            assert joiner.get(sid) == {"user": "ada"}
        finally:
            for cache in caches:
                cache.close()
            second.stop()
    finally:
        first.stop()
        shutil.rmtree(runtime_dir, ignore_errors=True)
