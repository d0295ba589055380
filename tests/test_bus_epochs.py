"""Hub epochs: a beat from a replaced hub is a straggler, not another restart."""

from __future__ import annotations

from memsession import SessionCache, wire
from memsession.bus.base import BusConfig, Replicator
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
