"""Hits checked with the hub before they are served: while it can't vouch for them, and on a miss.

A sidecar whose feed of other hosts' changes is silent says in its beats that
it can't vouch for any partition (``hub.remote.suspect_all``). A worker then
checks every hit there with it: the hub's answer is merged (another host may
have ended or changed the session), no answer refuses the read. A miss read
through a hub that does not answer is refused too, never taken for "no such
session". On the in-memory bus; the hub's state stands for the sidecar's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memsession import SessionCache, new_id, session_key
from memsession.bus import MemoryBus, MemoryHub
from memsession.errors import SessionUnavailable
from memsession.hub.remote import suspect_all, trust_again
from memsession.session import Record
from memsession.testing import FakeClock


@pytest.fixture
def world() -> Iterator[tuple[MemoryHub, SessionCache]]:
    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    cache = SessionCache(clock=clock, bus=MemoryBus(hub, read_through=True), outage_budget=0.3)
    yield hub, cache
    cache.close()


def _ended_elsewhere(hub: MemoryHub, sid: str) -> None:
    """The sidecar learns (as from the store) that another host ended the session; this worker has not."""
    key = session_key(sid)
    held = hub.state.replica[key]
    wall = hub.clock.wall()
    tombstone = Record(key, {}, held.version + 1, 99, wall, wall, wall + 600, True)
    assert hub.state.merge(tombstone, stored=True)


def _beat(hub: MemoryHub, frames: list[list[bytes]]) -> None:
    for frame in frames:
        hub.deliver(frame)


def test_a_hit_the_sidecar_cannot_vouch_for_is_checked_and_an_ended_session_is_not_served(world) -> None:
    hub, cache = world
    sid = new_id()
    cache.set(sid, {"n": 1})
    _ended_elsewhere(hub, sid)
    assert cache.get(sid) == {"n": 1}  # vouched for: served from memory, the hub not asked
    _beat(hub, suspect_all(hub.state))
    assert cache.stats()["replication"]["suspect_partitions"] == 256
    assert cache.get(sid) is None  # checked: the hub's tombstone wins
    assert cache.stats()["revalidated"] >= 1


def test_every_read_path_checks_while_the_sidecar_cannot_vouch(world) -> None:
    hub, cache = world
    sid, other = new_id(), new_id()
    record = cache.set(sid, {"n": 1})
    cache.set(other, {"n": 1})
    _ended_elsewhere(hub, sid)
    _ended_elsewhere(hub, other)
    _beat(hub, suspect_all(hub.state))
    got = cache.wait_for(sid, record.version, 0.01, record.origin)  # the cookie's version is held here
    assert got is not None and got.deleted
    checked = cache.checked_record(other)
    assert checked is not None and checked.deleted


def test_no_answer_from_a_sidecar_that_cannot_vouch_refuses_the_read(world) -> None:
    hub, cache = world
    sid = new_id()
    cache.set(sid, {"n": 1})
    _beat(hub, suspect_all(hub.state))
    hub.partition(cache.bus)
    with pytest.raises(SessionUnavailable):
        cache.get(sid)
    assert cache.stats()["unavailable"] == 1


def test_once_the_sidecar_vouches_again_hits_are_served_from_memory(world) -> None:
    hub, cache = world
    sid = new_id()
    cache.set(sid, {"n": 1})
    _beat(hub, suspect_all(hub.state))
    _beat(hub, trust_again(hub.state))
    gets = hub.state.counts["gets"]
    hub.partition(cache.bus)
    assert cache.get(sid) == {"n": 1} and hub.state.counts["gets"] == gets


def test_a_miss_read_through_a_hub_that_does_not_answer_is_refused_not_taken_for_no_session(world) -> None:
    hub, cache = world
    other = SessionCache(clock=hub.clock, bus=MemoryBus(hub, read_through=True))
    try:
        sid = new_id()
        record = other.set(sid, {"n": 1})
        assert cache.discard(session_key(sid), record.version + 1, 0)  # dropped here: read through next
        hub.partition(cache.bus)
        with pytest.raises(SessionUnavailable):
            cache.get(sid)
        hub.heal(cache.bus)
        assert cache.get(sid) == {"n": 1}
    finally:
        other.close()
