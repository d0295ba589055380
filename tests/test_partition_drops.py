"""A sidecar that missed other hosts' changes to some partitions makes its workers forget their copies there.

The changes can't be named (the log was pruned past where the sidecar's feed
stood), so every live copy in those partitions goes: the sidecar's own, and
every worker's, those the sidecar had already evicted too (it can't name
them either). The other partitions keep theirs; tombstones stay. A copy that
went is read through the sidecar when next used. On the in-memory bus.
"""

from __future__ import annotations

from memsession import SessionCache, new_id, session_key
from memsession.bus import MemoryBus, MemoryHub
from memsession.bus.base import OWN_IN_FLIGHT
from memsession.hub.remote import drop_partitions
from memsession.partitions import mask_of, partition_of
from memsession.testing import FakeClock


def test_a_drop_forgets_the_copies_in_its_partitions_everywhere_and_only_there() -> None:
    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    cache = SessionCache(clock=clock, bus=MemoryBus(hub, read_through=True))
    try:
        sids = [new_id() for _ in range(40)]
        for sid in sids:
            cache.set(sid, {"sid": sid})
        ended = sids.pop()
        cache.destroy(ended)
        evicted = sids[0]
        del hub.state.replica[session_key(evicted)]  # the sidecar no longer holds it: only the worker does
        before = cache.record(sids[1])
        missed = {partition_of(session_key(sid)) for sid in sids[:5]} | {partition_of(session_key(ended))}
        for frames in drop_partitions(hub.state, mask_of(missed)):
            hub.deliver(frames)
        for sid in sids:
            held = cache.record(sid)
            if partition_of(session_key(sid)) in missed:
                assert held is None  # forgotten here: read through when next used
            else:
                assert held is not None and held.data == {"sid": sid}
        tombstone = cache.record(ended)
        assert tombstone is not None and tombstone.deleted  # the destroy still beats a late write
        assert before is not None and hub.state.merge(before, stored=True)  # what the store holds
        assert cache.get(sids[1]) == {"sid": sids[1]}  # read through the sidecar
        assert cache.stats()["replication"]["gaps"] == 0  # a DROP is a numbered change like any other
    finally:
        cache.close()


def test_a_worker_that_missed_the_drop_forgets_the_copies_its_repair_snapshot_leaves_out() -> None:
    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    writer = SessionCache(clock=clock, bus=MemoryBus(hub, read_through=True))
    reader = SessionCache(clock=clock, bus=MemoryBus(hub, read_through=True))
    try:
        stale, mine = new_id(), new_id()
        writer.set(stale, {"n": 1})
        assert reader.record(stale) is not None
        clock.advance(OWN_IN_FLIGHT + 1)  # the writer's change is long at the hub
        hub.partition(reader.bus)  # the reader misses the sidecar's drop of that partition
        for frames in drop_partitions(hub.state, mask_of([partition_of(session_key(stale))])):
            hub.deliver(frames)
        hub.heal(reader.bus)
        reader.set(mine, {"n": 1})  # the reader's own write, perhaps not at the hub yet
        del hub.state.replica[session_key(mine)]
        hub.beat()  # the hub's beat shows the reader the gap in the hub's stream; it repairs
        assert reader.stats()["replication"]["repairs"] >= 2  # the join and this repair
        assert reader.record(stale) is None  # not in the snapshot: its invalidation may have been lost
        assert reader.record(mine) is not None  # its own write, younger than OWN_IN_FLIGHT, stays
    finally:
        writer.close()
        reader.close()
