"""Read-your-writes across a hub restart: a copy that missed changes never passes for the newest.

While the hub is away, a worker's writes reach nobody. When a new hub comes,
a worker that missed the changes made meanwhile may merge the writer's next
change into its older copy; were that copy to name the writer's newest change
(``changes.reflects``) while it still lacks the ones in between, it would be
served as the newest (deltas carry their base to prevent it, and after a hub
restart changes travel whole to complete such copies). Until the new hub has
gathered what every worker holds (each pushes its state when it notices the new hub), neither
that copy nor the hub's can prove it is the newest: a request carrying the
user's cookie waits, and is served the whole session or refused (503),
never the older copy.

On the in-memory bus, with the delivery the scenario needs spelled out, and
on a fake clock (the waits themselves are real and bounded by a short
``outage_budget``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memsession import SessionCache, new_id
from memsession.bus import MemoryBus, MemoryHub
from memsession.contrib.core import SessionManager, WebConfig
from memsession.errors import SessionUnavailable
from memsession.testing import FakeClock

SECRET = "s" * 32
BUDGET = 0.3


@pytest.fixture
def world() -> Iterator[tuple[MemoryHub, SessionCache, SessionCache, SessionManager, SessionManager]]:
    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    writer = SessionCache(clock=clock, bus=MemoryBus(hub), outage_budget=BUDGET)
    reader = SessionCache(clock=clock, bus=MemoryBus(hub), outage_budget=BUDGET)
    config = WebConfig(secret_keys=[SECRET], consistency_timeout=0.01)
    yield hub, writer, reader, SessionManager(writer, config), SessionManager(reader, config)
    writer.close()
    reader.close()


def _write(manager: SessionManager, cookie: str | None, **values: str) -> str:
    session = manager.open(cookie)
    session.update(values)
    saved = manager.save(session)
    assert saved is not None
    return saved.value


def _restart_while_the_writer_writes(world) -> tuple[str, str]:
    """The writer's user writes ``a``, then ``b`` while the hub is away, then ``c`` to a new hub.

    The new hub sees the writer's stream mid-way and asks it to resync; the
    writer's push of what it holds takes a while on a real bus, so here it
    waits until the test runs it (``_push``): requests reach the reader first.
    """
    hub, writer, reader, on_writer, _ = world
    cookie = _write(on_writer, None, a="1")
    sid = on_writer.verify(cookie)[0]
    assert reader.get(sid) == {"a": "1"}
    hub.partition(writer.bus)  # the hub is away for the writer: what it sends is lost
    hub.clock.advance(5.0)  # for a while: no hub beat reaches it
    cookie = _write(on_writer, cookie, b="2")
    hub.restart()  # a new hub, holding nothing
    hub.heal(writer.bus)
    writer.bus.hold_repairs = True
    writer.bus.push_state = lambda: None  # its push is still on its way
    cookie = _write(on_writer, cookie, c="3")
    assert writer.get(sid) == {"a": "1", "b": "2", "c": "3"}
    return sid, cookie


def _push(writer: SessionCache) -> None:
    """The writer's push arrives: what it holds reaches the new hub and, relayed, every worker."""
    del writer.bus.push_state
    writer.bus.hold_repairs = False
    writer.bus.push_state()
    writer.bus.run_repairs()


def test_a_copy_that_missed_a_change_is_not_served_after_a_delta_from_a_new_hub(world) -> None:
    _hub, _writer, _reader, _, on_reader = world
    _sid, cookie = _restart_while_the_writer_writes(world)
    try:
        session = on_reader.open(cookie)
    except SessionUnavailable:
        return  # refused while the new hub gathers: allowed
    assert dict(session) == {"a": "1", "b": "2", "c": "3"}, "an older copy was served as the newest"


def test_the_whole_session_is_served_once_the_new_hub_has_gathered(world) -> None:
    hub, _writer, _reader, _, on_reader = world
    sid, cookie = _restart_while_the_writer_writes(world)
    hub.beat()  # every worker notices the new hub
    _push(_writer)
    hub.clock.advance(3.0)  # past the gathering time
    hub.beat()
    assert dict(on_reader.open(cookie)) == {"a": "1", "b": "2", "c": "3"}


def test_a_worker_that_holds_no_copy_is_not_served_the_new_hubs_part_of_it(world) -> None:
    hub, writer, _reader, _, _ = world
    sid, cookie = _restart_while_the_writer_writes(world)
    late = SessionCache(clock=hub.clock, bus=MemoryBus(hub), outage_budget=BUDGET)
    try:
        on_late = SessionManager(late, WebConfig(secret_keys=[SECRET], consistency_timeout=0.01))
        try:
            session = on_late.open(cookie)
        except SessionUnavailable:
            return
        assert dict(session) == {"a": "1", "b": "2", "c": "3"}, "part of a session was served as the newest"
    finally:
        late.close()


def test_deltas_travel_as_deltas_while_the_hub_has_everything_and_whole_after_an_outage(world) -> None:
    hub, writer, reader, on_writer, _ = world
    cookie = _write(on_writer, None, a="1")
    for n in range(5):
        hub.beat()
        cookie = _write(on_writer, cookie, b=str(n))
    assert writer.bus.stats()["sent_whole"] == 0
    hub.clock.advance(5.0)  # the hub is late
    cookie = _write(on_writer, cookie, c="3")
    assert writer.bus.stats()["sent_whole"] == 1
    sid = on_writer.verify(cookie)[0]
    assert reader.get(sid) == {"a": "1", "b": "4", "c": "3"}


def test_a_worker_that_has_just_joined_sends_its_changes_as_deltas() -> None:
    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    writer = SessionCache(clock=clock, bus=MemoryBus(hub))  # joined by its snapshot, no hub beat heard yet
    try:
        sid = new_id()
        writer.set(sid, {"a": "1"})
        writer.change(sid, {"b": "2"})
        assert writer.bus.stats()["sent_whole"] == 0
    finally:
        writer.close()


def test_a_delta_right_after_a_hub_restart_never_makes_an_older_copy_pass_for_the_newest() -> None:
    """Another worker's change must not complete a copy that lacks a change the new hub is still gathering.

    The user writes ``b`` on one worker while the hub is away, then ``c`` on a
    second worker once a new hub has the first one's push. A third worker
    that has not noticed the new hub yet (its beat, and the relay of that
    push, are still on their way) merges the second worker's change: as a
    delta, its copy would name the user's newest change while lacking ``b``,
    and be served as the newest.
    """
    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    caches = [SessionCache(clock=clock, bus=MemoryBus(hub), outage_budget=BUDGET) for _ in range(3)]
    first, second, reader = caches
    config = WebConfig(secret_keys=[SECRET], consistency_timeout=0.01)
    on_first, on_second, on_reader = (SessionManager(cache, config) for cache in caches)
    try:
        cookie = _write(on_first, None, a="1")
        hub.partition(first.bus)  # the hub is away for the first worker: its next change reaches nobody
        clock.advance(5.0)
        cookie = _write(on_first, cookie, b="2")
        hub.restart()
        hub.heal(first.bus)
        hub.partition(reader.bus)
        hub.beat()  # the two writers notice the new hub and repair: the first one's push brings b
        hub.heal(reader.bus)
        cookie = _write(on_second, cookie, c="3")  # the second worker had b from the new hub's snapshot
        sid = on_second.verify(cookie)[0]
        assert second.get(sid) == {"a": "1", "b": "2", "c": "3"}
        try:
            session = on_reader.open(cookie)
        except SessionUnavailable:
            return  # refused while the new hub gathers: allowed
        assert dict(session) == {"a": "1", "b": "2", "c": "3"}, "an older copy was served as the newest"
    finally:
        for cache in caches:
            cache.close()
