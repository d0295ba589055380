"""Replication semantics through the in-memory twin (same frames and protocol objects as ZeroMQ)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession import SessionCache, wire
from memsession.bus import BusConfig, MemoryBus, MemoryHub
from memsession.bus.base import is_touch
from memsession.errors import ConfigError, SessionDestroyed, SessionUnavailable
from memsession.replica import RECENT_WRITE
from memsession.session import Record, new_id, session_key
from memsession.testing import FakeClock
from persist import Persistence


def state(records: list[Record]) -> dict[str, Any]:
    return {r.key: (r.version, r.origin, r.deleted, r.data) for r in records}


def hub_state(hub: MemoryHub) -> dict[str, Any]:
    return state(list(hub.state.replica.values()))


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def hub(clock):
    return MemoryHub(clock=clock)


def cache(hub: MemoryHub, clock: FakeClock, **options: Any) -> SessionCache:
    bus_options = {k: options.pop(k) for k in list(options) if k in ("mode",)}
    return SessionCache(clock=clock, bus=MemoryBus(hub, **bus_options), **options)


def test_sets_and_destroys_reach_every_replica_and_the_hub(hub, clock):
    a, b, c = (cache(hub, clock) for _ in range(3))
    sid = new_id()
    a.set(sid, {"n": 1})
    assert b.get(sid) == {"n": 1} and c.get(sid) == {"n": 1}
    b.set(sid, {"n": 2})
    assert a.get(sid) == {"n": 2}
    c.destroy(sid)
    assert a.get(sid) is None and b.get(sid) is None
    with pytest.raises(SessionDestroyed):
        a.set(sid, {"n": 3})
    assert hub.state.replica[session_key(sid)].deleted
    assert state(a.records()) == state(b.records()) == state(c.records()) == hub_state(hub)


def test_a_late_update_never_undoes_a_destroy(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    sid = new_id()
    old = a.set(sid, {"n": 1})
    b.destroy(sid)
    late = Record(session_key(sid), {"n": 9}, old.version + 10**9, 12345, old.created, old.accessed, old.expires + 100)
    b.bus.receive(wire.encode_set(late, 12345, 1, 1, 0))
    hub.deliver(wire.encode_set(late, 12345, 1, 2, 0))
    assert a.get(sid) is None and b.get(sid) is None and hub.state.replica[session_key(sid)].deleted


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=2, max_size=12))
def test_concurrent_writes_converge_whatever_the_delivery_order(writes):
    """Each replica receives the same writes in its own order; all end on the same winner."""
    clock = FakeClock()
    sid = new_id()
    records = []
    used = set()
    for i, (writer, tick) in enumerate(writes):
        clock.advance(tick * 0.0005)
        if (int(clock.wall() * 1000), tick, writer) in used:
            continue  # a writer never issues the same version twice
        used.add((int(clock.wall() * 1000), tick, writer))
        records.append(Record(session_key(sid), {"w": writer, "i": i}, (int(clock.wall() * 1000) << 16) + tick,
                              writer + 1, clock.wall(), clock.wall(), clock.wall() + 3600))
    replicas = [SessionCache(clock=clock) for _ in range(3)]
    orders = [records, list(reversed(records)), records[1::2] + records[::2]]
    for replica, order in zip(replicas, orders):
        for r in order:
            replica.apply(r)
    winner = max(records, key=lambda r: (r.version, r.origin))
    assert all(r.record(sid).data == winner.data for r in replicas)


ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "get", "destroy", "cut", "heal", "advance", "clear"]),
        st.integers(0, 2),  # which replica
        st.integers(0, 4),  # which session
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_replicas_converge_after_partitions_heal(steps):
    clock = FakeClock()
    hub = MemoryHub(clock=clock)
    caches = [SessionCache(clock=clock, bus=MemoryBus(hub), touch_interval=5) for _ in range(3)]
    sids = [new_id() for _ in range(5)]
    for step, (op, who, which) in enumerate(steps):
        c, sid = caches[who], sids[which]
        if op == "set":
            try:
                c.set(sid, {"step": step, "by": who})
            except SessionDestroyed:
                pass
        elif op == "get":
            c.get(sid)
        elif op == "destroy":
            c.destroy(sid)
        elif op == "cut":
            hub.partition(c.bus)
        elif op == "heal":
            hub.heal(c.bus)
        elif op == "clear":
            c.clear()
        else:
            clock.advance(3)
    for c in caches:
        hub.heal(c.bus)
    hub.beat()
    clock.advance(1)  # past the hub's spacing between two resync requests to one worker
    hub.beat()
    expected = hub_state(hub)
    for c in caches:
        assert state(c.records()) == expected
        assert c.cleared == hub.state.cleared


def test_touches_are_coalesced_and_slide_remote_expiry(hub, clock):
    a, b = cache(hub, clock, touch_interval=60), cache(hub, clock, touch_interval=60)
    sid = new_id()
    a.set(sid, {"n": 1})
    published = a.bus.stats()["published"]
    for _ in range(50):
        clock.advance(1)
        a.get(sid)
    assert a.bus.stats()["published"] == published  # 50 reads inside the interval: no traffic
    clock.advance(15)
    a.get(sid)
    assert a.bus.stats()["published"] == published + 1
    assert b.record(sid).accessed == a.record(sid).accessed == clock.wall()
    assert b.record(sid).version == a.record(sid).version
    assert hub.state.replica[session_key(sid)].accessed == clock.wall()


def test_is_touch_tells_sets_from_touches(clock):
    c = SessionCache(clock=clock, touch_interval=1)
    sid = new_id()
    record = c.set(sid, {})
    assert not is_touch(record)
    clock.advance(2)
    c.get(sid)
    assert is_touch(c.record(sid))


def test_a_joining_replica_starts_from_the_hub_snapshot(hub, clock):
    a = cache(hub, clock)
    sids = [new_id() for _ in range(5)]
    for i, sid in enumerate(sids):
        a.set(sid, {"i": i})
    a.destroy(sids[0])
    late = cache(hub, clock)
    assert state(late.records()) == state(a.records())
    assert late.stats()["replication"]["repairs"] == 1


def test_a_partitioned_replica_detects_the_gap_at_the_next_heartbeat_and_repairs(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    sid = new_id()
    hub.partition(b.bus)
    a.set(sid, {"missed": True})
    hub.heal(b.bus)
    assert b.get(sid) is None  # not yet known: nothing arrived
    hub.beat()
    assert b.get(sid) == {"missed": True}
    stats = b.stats()["replication"]
    assert stats["gaps"] == 1 and stats["repairs"] == 2


def test_the_hub_asks_for_a_resync_when_it_lost_a_message(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    lost, later = new_id(), new_id()
    record = a.set(lost, {"n": 1})
    # Simulate the hub's capture queue losing message 2 of a's stream: b gets it, the hub does not.
    record = Record(session_key(lost), {"n": 2}, record.version + 1, a.origin, record.created, record.accessed, record.expires)
    a.apply(record)
    b.bus.receive(a.bus.replicator.outgoing(record))
    assert hub.state.replica[session_key(lost)].data == {"n": 1}
    a.set(later, {"n": 3})  # seq 3: the hub sees the gap, asks a to resync, a pushes, the hub relays
    assert hub.state.replica[session_key(lost)].data == {"n": 2}
    assert hub.state.counts["resyncs_sent"] == 1 and a.bus.stats()["resyncs"] == 1
    assert state(a.records()) == state(b.records()) == hub_state(hub)


def test_hub_restart_new_epoch_workers_push_and_resnapshot(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    sids = [new_id() for _ in range(4)]
    for sid in sids:
        a.set(sid, {"by": "a"})
    hub.restart()
    assert hub.state.replica == {}
    b.set(sids[0], {"by": "b"})  # made while the new hub knows nothing yet
    hub.beat()
    assert {sid: hub.state.replica[session_key(sid)].data["by"] for sid in sids} == {
        sids[0]: "b", sids[1]: "a", sids[2]: "a", sids[3]: "a"
    }
    assert state(a.records()) == state(b.records()) == hub_state(hub)
    assert a.bus.stats()["hub_restarts"] == 1


@pytest.mark.parametrize(
    "frames",
    [
        [b"ms5s", b"\x00garbage"],
        [b"ms5s", b"\x90"],
        [b"ms5s"],
        [b"nope", b"nope"],
        wire.encode_set(Record("k", {"a": 1}, 1, 1, 1.0, 1.0, 2.0), 1, 1, 1, 1)[:1] + [b"\x95\x01"],
    ],
)
def test_bad_frames_are_dropped_counted_and_change_nothing(hub, clock, frames):
    a = cache(hub, clock)
    sid = new_id()
    a.set(sid, {"n": 1})
    before = state(a.records())
    assert a.bus.receive(frames) == "dropped"
    hub.deliver(frames)
    assert state(a.records()) == before
    assert a.stats()["replication"]["dropped"] == {"malformed": 2}  # once direct, once via the hub
    assert hub.state.dropped == {"malformed": 1}


def test_a_version_2_frame_is_refused_whole_and_counted_as_another_version(hub, clock):
    a = cache(hub, clock)
    sid = new_id()
    a.set(sid, {"n": 1, "m": 1})
    before = state(a.records())
    record = a.record(sid)
    # What a version-2 process sends for a newer write: the whole session, no stamps.
    payload = msgpack.packb([77, 1, 1, 0, record.key, record.version + 1, 77, record.created, record.accessed,
                             record.expires, msgpack.packb({"n": 2})], use_bin_type=True)
    assert a.bus.receive([b"ms2s", payload]) == "dropped"
    hub.deliver([b"ms2s", payload])
    assert state(a.records()) == before and hub_state(hub) == before
    assert a.stats()["replication"]["dropped"] == {"other version": 2}  # once direct, once via the hub
    assert hub.state.dropped == {"other version": 1}


def test_fetch_reads_through_the_hub(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    sid = new_id()
    a.set(sid, {"n": 1})
    assert b.bus.fetch(session_key(sid)).data == {"n": 1}
    assert b.bus.fetch(session_key(new_id())) is None


def test_wait_for_returns_a_recent_enough_copy_or_refuses_to_guess(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock, outage_budget=0.05)
    sid = new_id()
    record = a.set(sid, {"n": 1})
    assert b.wait_for(sid, record.version, timeout=0).data == {"n": 1}
    hub.partition(b.bus)
    newer = a.set(sid, {"n": 2})
    with pytest.raises(SessionUnavailable):  # never stale, never "unknown": the hub could not be asked
        b.wait_for(sid, newer.version, timeout=0.01)
    assert b.stats()["unavailable"] == 1
    hub.heal(b.bus)
    assert b.wait_for(sid, newer.version, timeout=0).data == {"n": 2}  # read through the hub


def test_wait_for_a_write_the_hub_never_got_serves_the_newest_copy_once_it_is_old(hub, clock):
    # The hub answers, but without the cookie's write (its writer and the hub died with it).
    a, b = cache(hub, clock), cache(hub, clock, outage_budget=0.05)
    sid = new_id()
    a.set(sid, {"n": 1})
    hub.partition(a.bus)
    lost = a.set(sid, {"n": 2})
    # Recent: it may still be on its way, so B keeps asking for the budget, then serves what is left.
    assert b.wait_for(sid, lost.version, timeout=0).data == {"n": 1}
    assert b.stats()["lost_writes"] == 1
    # Old: nothing can still be on its way; the hub's answer stands (and the loss is counted again).
    clock.advance(RECENT_WRITE + 1)
    assert b.wait_for(sid, lost.version, timeout=0).data == {"n": 1}
    assert b.stats()["lost_writes"] == 2
    assert b.wait_for(new_id(), lost.version, timeout=0) is None  # unknown to the hub: no session


def test_wait_for_wakes_when_the_version_is_merged_not_at_its_timeout(hub, clock):
    import threading
    import time

    a, b = cache(hub, clock), cache(hub, clock)
    sid = new_id()
    a.set(sid, {"n": 1})
    hub.partition(b.bus)
    newer = a.set(sid, {"n": 2})
    hub.heal(b.bus)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(b.wait_for(sid, newer.version, timeout=60)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.05)
    assert not got  # still waiting: nothing brought the new version yet
    b.apply(newer)  # as the bus would
    waiter.join(30)
    assert got and got[0].data == {"n": 2}
    assert time.monotonic() - started < 30  # woken by the merge, long before its 60 s


def test_wait_for_reads_the_store_when_the_hub_has_nothing(hub, clock, tmp_path):
    from persist.jsonfile import JsonFileStore

    store = JsonFileStore(str(tmp_path / "s.json"), save_interval=None, clock=clock)
    sid = new_id()
    writer = SessionCache(clock=clock, persistence=Persistence(store))
    newer = writer.set(sid, {"n": 9})
    writer.persistence.flush()
    reader = SessionCache(clock=clock, persistence=Persistence(store), bus=MemoryBus(hub))  # the hub never saw it
    assert reader.wait_for(sid, newer.version, timeout=0).data == {"n": 9}
    assert reader.wait_for(new_id(), 1, timeout=0) is None
    writer.close()
    reader.close()


def test_bus_config_is_checked_at_construction():
    with pytest.raises(ConfigError):
        BusConfig(mode="sometimes")
    with pytest.raises(ConfigError):
        BusConfig(heartbeat=1.0, silence=0.5)
    with pytest.raises(ConfigError):
        BusConfig(queue_size=0)
    with pytest.raises(ConfigError):
        BusConfig(fault_drop_rate=1.0)


def test_closing_the_cache_closes_the_bus(hub, clock):
    a = cache(hub, clock)
    a.close()
    assert a.bus not in hub.buses


def test_invalidate_mode_sends_key_and_version_and_reads_through_the_hub(hub, clock):
    a, b = cache(hub, clock, mode="invalidate"), cache(hub, clock, mode="invalidate")
    sid = new_id()
    a.set(sid, {"n": 1})
    assert b.record(sid) is None  # only the key and version travelled
    assert hub.state.replica[session_key(sid)].data == {"n": 1}  # the value went to the hub first
    assert b.get(sid) == {"n": 1}  # read through on first use
    a.set(sid, {"n": 2})
    assert b.record(sid) is None  # the older copy was dropped, not updated
    assert b.get(sid) == {"n": 2}
    assert b.stats()["misses"] == 2
    a.destroy(sid)  # tombstones always travel whole: a destroy is never read through
    assert b.record(sid).deleted and b.get(sid) is None


def test_invalidate_mode_sends_the_value_when_the_hub_cannot_take_it(hub, clock):
    a, b = cache(hub, clock, mode="invalidate"), cache(hub, clock, mode="invalidate")
    sid = new_id()
    hub.partition(a.bus)
    a.set(sid, {"n": 1})
    assert a.bus.stats()["write_failures"] == 1
    hub.heal(a.bus)
    hub.beat()  # b sees a's stream jump; repair brings what the hub has (a pushes on resync)
    assert b.get(sid) == {"n": 1}


def test_own_messages_come_back_and_are_skipped_undecoded(clock, monkeypatch):
    from memsession.bus.base import OWN, Replicator

    c = SessionCache(clock=clock)
    rep = Replicator(c, BusConfig())
    records = [c.set(new_id(), {"n": i}) for i in range(3)]
    frames = [rep.outgoing(records[0]), rep.outgoing_batch(records[1:]), rep.heartbeat()]
    decoded: list[Any] = []
    real_decode = wire.decode
    monkeypatch.setattr(wire, "decode", lambda *a, **k: decoded.append(a) or real_decode(*a, **k))
    assert [rep.receive(f) for f in frames] == [OWN, OWN, OWN]
    assert decoded == [] and rep.counts["received"] == 0
    other = Replicator(SessionCache(clock=clock), BusConfig())
    assert rep.receive(other.outgoing(records[0])) != OWN and len(decoded) == 1


def test_invalidate_mode_frames(clock):
    c = SessionCache(clock=clock)
    rep = __import__("memsession.bus.base", fromlist=["Replicator"]).Replicator(c, BusConfig(mode="invalidate"))
    record = c.set(new_id(), {"n": 1})
    assert rep.needs_write(record)
    assert wire.decode(rep.outgoing(record)).op == wire.INVALIDATE
    assert wire.decode(rep.outgoing(record, full=True)).op == wire.SET


# -- clear ------------------------------------------------------------------------------------


def test_clear_ends_every_session_on_every_replica_and_the_hub(hub, clock):
    a, b, c = (cache(hub, clock) for _ in range(3))
    sids = [new_id() for _ in range(6)]
    for i, sid in enumerate(sids):
        (a, b, c)[i % 3].set(sid, {"i": i})
    b.destroy(sids[0])
    b.clear()
    for replica in (a, b, c):
        assert len(replica) == 0 and replica.cleared == b.cleared
        assert [r.key for r in replica.records()] == [session_key(sids[0])]  # the tombstone stays
    assert list(hub.state.replica) == [session_key(sids[0])] and hub.state.cleared == b.cleared
    clock.advance(1)
    a.set(sids[1], {"after": True})  # a write after the clear is an ordinary write
    assert c.get(sids[1]) == {"after": True}
    assert state(a.records()) == state(b.records()) == state(c.records()) == hub_state(hub)


def test_a_clear_from_the_bus_reaches_a_replicas_store_without_holding_the_bus(hub, clock, tmp_path):
    import threading

    from persist.jsonfile import JsonFileStore

    class SlowClearStore(JsonFileStore):
        """Its clear() waits for the test, as a DELETE over a big table would."""

        gate = threading.Event()

        def clear(self, version: int) -> int:
            assert self.gate.wait(30)
            return super().clear(version)

    store = SlowClearStore(str(tmp_path / "b.json"), save_interval=None, clock=clock)
    a = cache(hub, clock)
    b = SessionCache(clock=clock, persistence=Persistence(store), bus=MemoryBus(hub))
    sid = new_id()
    b.set(sid, {"n": 1})  # b's own write: b persists it
    b.persistence.flush()
    assert store.load(session_key(sid)) is not None and a.get(sid) == {"n": 1}
    # The hub delivers to b on this very thread: were b's store cleared there, this would wait.
    clearing = threading.Thread(target=a.clear)
    clearing.start()
    clearing.join(5)
    assert not clearing.is_alive()
    assert b.get(sid) is None and b.cleared == a.cleared
    SlowClearStore.gate.set()
    b.persistence.flush()  # the writer thread owes the store that clear
    assert store.load(session_key(sid)) is None and store.stats()["cleared"] == a.cleared
    a.close()
    b.close()


def test_evict_all_forgets_here_only(hub, clock, tmp_path):
    from persist.jsonfile import JsonFileStore

    sid = new_id()
    # update mode: other replicas keep theirs; this one has it back with the next write
    a, b = cache(hub, clock), cache(hub, clock)
    a.set(sid, {"n": 1})
    a.evict_all()
    assert b.get(sid) == {"n": 1} and hub.state.replica[session_key(sid)].data == {"n": 1}
    assert a.get(sid) is None
    b.set(sid, {"n": 2})
    assert a.get(sid) == {"n": 2}
    # invalidate mode: a read brings it back from the hub
    c, d = cache(hub, clock, mode="invalidate"), cache(hub, clock, mode="invalidate")
    other = new_id()
    c.set(other, {"n": 3})
    c.evict_all()
    assert c.get(other) == {"n": 3} and d.get(other) == {"n": 3}
    # with a store: a read brings it back from the store
    store = JsonFileStore(str(tmp_path / "s.json"), save_interval=None, clock=clock)
    e = SessionCache(clock=clock, persistence=Persistence(store), bus=MemoryBus(hub))
    third = new_id()
    e.set(third, {"n": 4})
    e.persistence.flush()
    e.evict_all()
    assert e.get(third) == {"n": 4}
    for replica in (a, b, c, d, e):
        replica.close()


def test_a_write_from_before_the_clear_arriving_after_it_stays_out(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    sid = new_id()
    early = Record(session_key(sid), {"early": 1}, a.hlc.now(), 4242, clock.wall(), clock.wall(), clock.wall() + 60)
    clock.advance(1)
    b.clear()
    hub.deliver(wire.encode_set(early, 4242, 1, 1, 0))  # written before the clear, delivered after it
    assert a.get(sid) is None and b.get(sid) is None and sid not in hub.state.replica


def test_a_replica_that_missed_the_clear_catches_up_through_the_snapshot(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    sid = new_id()
    a.set(sid, {"n": 1})
    hub.partition(b.bus)
    a.clear()
    assert b.get(sid) == {"n": 1}  # b has not heard yet
    hub.heal(b.bus)
    hub.beat()  # a's heartbeat shows b the gap; the snapshot carries the watermark
    assert b.get(sid) is None and b.cleared == a.cleared


def test_a_restarted_hub_learns_the_clear_back_from_the_workers(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    kept = new_id()
    a.set(new_id(), {"n": 1})
    a.clear()
    clock.advance(1)
    b.set(kept, {"n": 2})
    hub.restart()
    hub.beat()
    assert hub.state.cleared == a.cleared
    assert hub_state(hub) == state(a.records()) == state(b.records())
    assert list(hub.state.replica) == [session_key(kept)]


# -- reads while a gap is repaired --------------------------------------------------------------


def test_while_a_gap_is_repaired_reads_are_checked_with_the_hub(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    changed, ended, quiet = new_id(), new_id(), new_id()
    for sid in (changed, ended, quiet):
        a.set(sid, {"v": 1})
    b.bus.hold_repairs = True
    hub.partition(b.bus)
    a.set(changed, {"v": 2})
    a.destroy(ended)
    hub.heal(b.bus)
    assert b.get(changed) == {"v": 1}  # nothing says anything is missing yet: unavoidable
    hub.beat()  # the gap is known; the snapshot has not landed
    rep = b.stats()["replication"]
    assert rep["repair_due"] and rep["gaps"] == 1
    assert b.get(changed) == {"v": 2}
    assert b.get(ended) is None
    assert b.get(quiet) == {"v": 1}
    stats = b.stats()
    assert stats["revalidated"] == 3 and stats["unverified"] == 0
    b.get(changed)
    assert b.stats()["revalidated"] == 3  # checked once per repair
    b.bus.run_repairs()
    b.get(quiet)
    assert b.stats()["revalidated"] == 3  # repaired: local reads again
    assert state(a.records()) == state(b.records()) == hub_state(hub)


def test_if_the_hub_does_not_answer_during_a_repair_local_copies_are_served_and_counted(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    sid = new_id()
    a.set(sid, {"v": 1})
    b.bus.hold_repairs = True
    hub.partition(b.bus)
    a.set(new_id(), {"v": 1})
    hub.heal(b.bus)
    hub.beat()
    hub.partition(b.bus)  # the hub is unreachable before the repair could run
    assert b.get(sid) == {"v": 1} and b.get(sid) == {"v": 1}
    assert b.stats()["unverified"] == 2 and b.stats()["revalidated"] == 0


# -- batches ------------------------------------------------------------------------------------


def test_a_batch_is_numbered_like_the_messages_it_holds(hub, clock):
    a, b = cache(hub, clock), cache(hub, clock)
    sender = a.bus.replicator
    records = [Record(new_id(), {"i": i}, a.hlc.now(), a.origin, clock.wall(), clock.wall(), clock.wall() + 60)
               for i in range(5)]
    frames = sender.outgoing_batch(records)
    assert wire.decode(frames).op == wire.BATCH and sender.seq == 5
    assert b.bus.receive(frames) == "applied"
    assert all(b.held(r.key).data == r.data for r in records)
    assert b.bus.receive(frames) == "skipped"  # every item already seen
    stats = b.stats()["replication"]
    assert stats["received"] == 5 and stats["duplicates"] == 5 and stats["gaps"] == 0
    sender.outgoing(records[0])  # seq 6, lost
    later = sender.outgoing_batch(records[:2])  # seq 7-8: the gap shows in the batch
    b.bus.receive(later)  # the twin repairs at once
    assert b.stats()["replication"]["gaps"] == 1


def test_the_hub_merges_every_item_of_a_batch(hub, clock):
    a = cache(hub, clock)
    records = [Record(new_id(), {"i": i}, a.hlc.now(), a.origin, clock.wall(), clock.wall(), clock.wall() + 60)
               for i in range(3)]
    r0 = records[0]
    tomb = Record(r0.key, {}, a.hlc.now(), a.origin, r0.created, clock.wall(), clock.wall() + 60, True)
    hub.deliver(a.bus.replicator.outgoing_batch([*records, tomb]))
    assert sorted(hub.state.replica) == sorted(r.key for r in records)
    assert hub.state.replica[records[0].key].deleted and hub.state.counts["received"] == 4
