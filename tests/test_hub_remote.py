"""Other hosts' changes applied to a hub: dropped unless reflected, tombstones and clears kept, not echoed."""

from __future__ import annotations

from dataclasses import dataclass

from memsession import wire
from memsession.hub import HubState
from memsession.hub.remote import (
    after_read_back,
    apply_remote,
    drop_partitions,
    invalidate_all,
    suspect_all,
    trust_again,
)
from memsession.partitions import ALL, mask_of, partition_of
from memsession.session import Record, session_key
from memsession.testing import FakeClock

TTL = 600.0


@dataclass(frozen=True)
class Change:
    key: str
    version: int
    origin: int
    deleted: bool = False
    cleared: int = 0


def _hub() -> tuple[HubState, list[Record], list[int]]:
    changed: list[Record] = []
    clears: list[int] = []
    clock = FakeClock()
    state = HubState(clock=clock, on_change=changed.append, on_clear=clears.append)
    return state, changed, clears


def _held(state: HubState, key: str, version: int, origin: int = 7) -> Record:
    wall = state.clock.wall()
    record = Record(key, {"a": 1}, version, origin, wall, wall, wall + 3600, False)
    assert state.merge(record)
    return record


def _ops(frames: list[list[bytes]]) -> list[tuple[str, object]]:
    return [(m.op, m.body) for m in map(wire.decode, frames)]


def test_a_live_change_drops_an_older_copy_and_invalidates_the_workers() -> None:
    state, changed, _ = _hub()
    key = session_key("x" * 43)
    _held(state, key, 100)
    changed.clear()
    frames = apply_remote(state, [Change(key, 200, 9)], TTL)
    assert key not in state.replica and not state.holds_all
    assert _ops(frames) == [(wire.INVALIDATE, (key, 200, 9, False))]
    assert state.stats()["remote_invalidated"] == 1 and changed == []
    # A copy that already reflects the change stays.
    other = session_key("w" * 43)
    _held(state, other, 100)
    apply_remote(state, [Change(other, 100, 7)], TTL)
    assert other in state.replica and other not in state.remote_floor


def test_a_remote_destroy_is_a_tombstone_here_and_is_not_written_again() -> None:
    state, changed, _ = _hub()
    key = session_key("y" * 43)
    _held(state, key, 100)
    changed.clear()
    frames = apply_remote(state, [Change(key, 300, 9, deleted=True)], TTL)
    assert state.replica[key].deleted and state.replica[key].expires == state.clock.wall() + TTL
    assert [op for op, _ in _ops(frames)] == [wire.DESTROY]
    assert changed == []  # it came from the store: no echo to it


def test_a_remote_clear_raises_the_watermark_without_clearing_the_store_again() -> None:
    state, _, clears = _hub()
    key = session_key("z" * 43)
    _held(state, key, 100)
    frames = apply_remote(state, [Change("", 0, 0, cleared=150)], TTL)
    assert state.cleared == 150 and key not in state.replica
    assert _ops(frames) == [(wire.CLEAR, 150)]
    assert clears == []


def test_a_gap_drops_every_live_copy_here_and_on_the_workers_but_keeps_tombstones() -> None:
    state, _, _ = _hub()
    live, gone = session_key("l" * 43), session_key("g" * 43)
    _held(state, live, 100)
    apply_remote(state, [Change(gone, 100, 9, deleted=True)], TTL)
    frames = invalidate_all(state)
    assert live not in state.replica and state.replica[gone].deleted
    assert _ops(frames) == [(wire.DROP, ALL)]  # one frame, whatever the number of sessions


def test_a_gap_that_names_its_partitions_drops_only_the_copies_there() -> None:
    state, _, _ = _hub()
    keys = {}
    for c in "abcdefghij":
        key = session_key(c * 43)
        keys[partition_of(key)] = key
        _held(state, key, 100)
    dropped, kept = sorted(keys)[:3], sorted(keys)[3:]
    frames = drop_partitions(state, mask_of(dropped))
    assert _ops(frames) == [(wire.DROP, mask_of(dropped))]
    assert all(keys[p] not in state.replica for p in dropped)
    assert all(keys[p] in state.replica for p in kept)
    assert state.counts["remote_invalidated"] == len(dropped)


def test_a_store_read_from_before_a_remote_change_is_answered_but_not_kept() -> None:
    state, _, _ = _hub()
    key = session_key("r" * 43)
    apply_remote(state, [Change(key, 200, 9)], TTL)  # a read of the key was already under way
    wall = state.clock.wall()
    before = Record(key, {"a": 1}, 100, 7, wall, wall, wall + 3600, False)
    state.read_back_done(key, before, True)
    assert key in state.replica  # what the waiting GETs are answered with
    after_read_back(state, key)
    assert key not in state.replica and state.stats()["remote_stale_reads"] == 1
    fresh = Record(key, {"a": 2}, 200, 9, wall, wall, wall + 3600, False)
    state.read_back_done(key, fresh, True)
    after_read_back(state, key)
    assert state.replica[key].data == {"a": 2} and key not in state.remote_floor


def test_a_copy_from_before_a_remote_change_pushed_here_is_stored_but_not_kept() -> None:
    state, changed, _ = _hub()
    key = session_key("p" * 43)
    _held(state, key, 100)
    apply_remote(state, [Change(key, 200, 9)], TTL)
    wall = state.clock.wall()
    pushed = Record(key, {"a": 1, "b": 2}, 150, 7, wall, wall, wall + 3600, False)  # a worker's older copy
    changed.clear()
    assert state.merge(pushed)
    assert changed == [pushed]  # written behind: the store merges it with the newer row
    assert key not in state.replica
    assert _ops(state.outbox) == [(wire.INVALIDATE, (key, 200, 9, False))]
    # Once a copy reflecting the change is here, the floor has done its work.
    state.outbox.clear()
    assert state.merge(Record(key, {"a": 3}, 200, 9, wall, wall, wall + 3600, False))
    assert key in state.replica and key not in state.remote_floor and state.outbox == []


def test_a_copy_kept_out_is_read_back_and_the_stores_copy_relayed() -> None:
    asked: list[str] = []
    state = HubState(clock=FakeClock(), read_back=lambda sender, rid, key: asked.append(key) is None)
    key = session_key("q" * 43)
    apply_remote(state, [Change(key, 200, 9)], TTL)
    wall = state.clock.wall()
    assert state.merge(Record(key, {"a": 1}, 150, 7, wall, wall, wall + 3600, False))  # a stale push
    assert asked == [key] and key not in state.replica
    state.outbox.clear()
    stored = Record(key, {"a": 1, "b": 2}, 200, 9, wall, wall, wall + 3600, False)  # the store's merged row
    state.read_back_done(key, stored, True)
    after_read_back(state, key)
    assert [m.op for m in map(wire.decode, state.outbox)] == [wire.SET]
    assert state.replica[key].data == {"a": 1, "b": 2} and key not in state.remote_floor


def test_where_the_feed_stood_is_read_back_or_said_unknown(tmp_path) -> None:
    import json

    from memsession.service.federation import load_positions
    from persist.feed import MAX_CURSOR

    path = tmp_path / "feed-positions.json"
    assert load_positions(str(path)) == (None, True)  # none yet: start at the log's end
    path.write_text('{"host-a": 12, "host-b": 0}')
    assert load_positions(str(path)) == ({"host-a": 12, "host-b": 0}, True)
    path.write_text('{"couchdb": 3, "couchdb:since": "17-g1AAAAB"}')  # a store's own cursor, as text
    assert load_positions(str(path)) == ({"couchdb": 3, "couchdb:since": "17-g1AAAAB"}, True)
    too_long = json.dumps({"couchdb:since": "x" * (MAX_CURSOR + 1)})
    for bad in ("{not json", '["host-a", 12]', '{"host-a": -1}', '{"host-a": ""}', '{"host-a": "a\\nb"}',
                '{"host-a": 1.5}', '{"host-a": null}', too_long, '{"": 3}'):
        path.write_text(bad)
        assert load_positions(str(path)) == (None, False), bad  # unknown: every copy is read again


def test_while_the_feed_is_silent_every_get_is_read_from_the_store_and_the_workers_are_told() -> None:
    asked: list[str] = []
    state = HubState(clock=FakeClock(), read_back=lambda sender, rid, key: asked.append(key) is None)
    key = session_key("s" * 43)
    _held(state, key, 100)
    assert not state.needs_read_back(key)
    (beat,) = suspect_all(state)
    assert wire.decode(beat).op == wire.HUB_BEAT and wire.decode(beat).body == ALL
    assert wire.decode(state.heartbeat()).body == ALL  # every beat says so until the feed is back
    assert state.needs_read_back(key)  # held, but perhaps older than the store's copy
    replies, _ = state.on_request(wire.encode_request(wire.GET, 1, key), sender=b"w1")
    assert replies == [] and asked == [key]  # answered once the store was read
    (beat,) = trust_again(state)
    assert wire.decode(beat).body == 0 and not state.needs_read_back(key)

