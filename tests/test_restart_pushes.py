"""A restarted hub gets every worker's state, whatever else happens while it asks for it.

A hub killed with a worker's latest change (not yet relayed nor stored)
learns it only from that worker's push. Two ways lead a new hub to it: the
worker notices the restart (the new hub's heartbeat) and pushes, and the
new hub, hearing the worker's stream mid-way, asks it to resync. Either can
fail on a real bus: a gap noticed in the same breath as the restart must
not turn the repair into a snapshot alone, and a resync request published
before the worker's subscription reached the new hub is dropped, so the
hub asks again until that worker's push arrives. A push names the stream's
last number, so the hub does not take what the push covered for a gap and
ask for the same state twice.

Without these, the change is nowhere but in its writer: a read that needs
it elsewhere is told the write was lost after ``outage_budget`` and served
the copy before it, and the next change of that user is made on that copy.

On the in-memory bus, with the delivery each scenario needs spelled out, on a fake clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memsession import SessionCache, new_id, session_key
from memsession.bus import MemoryBus, MemoryHub
from memsession.bus._testing_network import ForgedStream
from memsession.hub.resyncs import RESYNC_SPACING
from memsession.testing import FakeClock


@pytest.fixture
def world() -> Iterator[tuple[FakeClock, MemoryHub, SessionCache, SessionCache]]:
    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    writer = SessionCache(clock=clock, bus=MemoryBus(hub))
    reader = SessionCache(clock=clock, bus=MemoryBus(hub))
    yield clock, hub, writer, reader
    writer.close()
    reader.close()


def _hub_dies_with_the_writers_change(hub: MemoryHub, writer: SessionCache) -> str:
    """The writer's next change reaches a hub that dies before relaying it; a new hub starts."""
    sid = new_id()
    hub.hold()
    writer.set(sid, {"n": 2})
    hub.held = None  # what the old hub had taken in dies with it
    hub.restart()
    return sid


def test_a_push_due_after_a_hub_restart_survives_a_gap_found_before_the_repair(world) -> None:
    clock, hub, writer, reader = world
    sid = _hub_dies_with_the_writers_change(hub, writer)
    writer.bus.hold_repairs = True  # the repair runs after the receiver took in the rest of what it drained
    hub.deliver(hub.state.heartbeat())  # the new hub's first beat: the writer notices the restart
    assert writer.bus.replicator.repair_due
    other = ForgedStream(clock)  # a stream seen with a gap in the same drain
    writer.bus.receive(other.record(other.forge(new_id(), {"x": 1})))
    other.lost()
    writer.bus.receive(other.record(other.forge(new_id(), {"x": 2})))
    writer.bus.run_repairs()
    assert session_key(sid) in hub.state.replica, "the writer's repair pushed nothing to the new hub"
    assert reader.get(sid) == {"n": 2}


def test_a_lost_resync_request_is_asked_again_until_the_worker_pushes(world) -> None:
    clock, hub, writer, reader = world
    sid = _hub_dies_with_the_writers_change(hub, writer)
    writer.bus.hold_repairs = True  # it has not heard the new hub's beat: only the hub's request can help
    # The new hub hears the writer's stream mid-way and asks it to resync; the request is lost.
    assert hub.state.on_bus(writer.bus.replicator.heartbeat())
    for _ in range(3):
        clock.advance(RESYNC_SPACING * 2)
        hub.beat()
    assert session_key(sid) in hub.state.replica, "the new hub never asked the writer again"
    assert reader.get(sid) == {"n": 2}


def test_a_push_covers_its_stream_so_the_new_hub_asks_for_no_second_one(world) -> None:
    clock, hub, writer, reader = world
    sid = _hub_dies_with_the_writers_change(hub, writer)
    hub.deliver(hub.state.heartbeat())  # both notice the restart and push
    pushes = hub.state.stats()["pushes"]
    for _ in range(3):
        clock.advance(RESYNC_SPACING * 2)
        hub.beat()
    writer.set(sid, {"n": 3})
    hub.beat()
    stats = hub.state.stats()
    assert stats["gaps"] == 0 and stats["pushes"] == pushes, stats
    assert reader.get(sid) == {"n": 3}
