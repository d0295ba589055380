"""Hub restarts: told by the hub's id, whatever the wall clock did; a replaced hub's beat is a straggler."""

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
