"""The hub merges key by key (``changes.merge_records``), and holds a delta it can't place as a partial record.

A partial record is never answered as the session while the store could
complete it; once the store was read, or when there is none, it is what
there is of the session and is answered complete.
"""

from __future__ import annotations

from typing import Any

from memsession import wire
from memsession.changes import merge_records, record_change
from memsession.clock import COUNTER_BITS
from memsession.hub import HubState
from memsession.session import Record, new_id, prepare_packed, session_key
from memsession.testing import FakeClock

NOW = 1_700_000_000.0
V = int(NOW * 1000) << COUNTER_BITS  # an HLC version of NOW
ME, OTHER = 7, 9


def change(base: Record | None, key: str, data: dict[str, Any], changed: list[str], removed: tuple[str, ...] = (),
           *, version: int, origin: int = ME) -> tuple[Record, Record]:
    """``(held, delta)`` of a request's change, as a worker makes them."""
    copy, packed, flat = prepare_packed(data, 65536)
    return record_change(base, key, copy, changed, removed, version=version, origin=origin, wall=NOW,
                         idle_timeout=1800.0, max_age=None, flat=flat, size=len(packed))


class Reads:
    """What a ``HubState`` asked its store to read (``read_back``)."""

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, int, str]] = []

    def __call__(self, sender: bytes, rid: int, key: str) -> bool:
        self.asked.append((sender, rid, key))
        return True


class Streams:
    """Bus messages of several origins, each numbered in its own stream."""

    def __init__(self) -> None:
        self.seq: dict[int, int] = {}

    def set(self, record: Record, origin: int) -> list[bytes]:
        self.seq[origin] = self.seq.get(origin, 0) + 1
        return wire.encode_set(record, origin, 1, self.seq[origin], int(NOW * 1e6))


def get(state: HubState, key: str, rid: int = 1, sender: bytes = b"worker") -> list[list[bytes]]:
    replies, _ = state.on_request(wire.encode_request(wire.GET, rid, key), sender)
    return replies


def answered(reply: list[bytes]) -> Record | None:
    decoded = wire.decode_reply(reply)
    assert decoded.op == wire.RECORD
    return decoded.body[0]  # type: ignore[no-any-return]


# -- per key ---------------------------------------------------------------------------------


def test_two_deltas_of_different_keys_from_two_origins_merge_to_one_record_in_either_order() -> None:
    key = session_key(new_id())
    base, _ = change(None, key, {"a": 0, "b": 0}, ["a", "b"], version=V)
    _, set_a = change(base, key, {"a": 1, "b": 0}, ["a"], version=V + 1, origin=ME)
    _, set_b = change(base, key, {"a": 0, "b": 2}, ["b"], version=V + 2, origin=OTHER)
    held = []
    for order in ((set_a, set_b), (set_b, set_a)):
        changes: list[Record] = []
        state = HubState(clock=FakeClock(wall=NOW), on_change=changes.append)
        streams = Streams()
        for record in (base, *order):
            assert state.on_bus(streams.set(record, record.origin)) == []
        assert state.counts["applied"] == 3
        assert changes == [base, *order]  # the store's queue gets what arrived, and merges it itself
        held.append(state.replica[key])
    assert held[0] == held[1]
    assert held[0].data == {"a": 1, "b": 2} and not held[0].partial
    assert held[0].stamps == {"a": (V + 1, ME), "b": (V + 2, OTHER)}
    assert held[0].seen == {ME: V + 1, OTHER: V + 2}


def test_a_removed_key_stays_removed_whatever_arrives_later() -> None:
    key = session_key(new_id())
    base, _ = change(None, key, {"a": 0, "b": 0}, ["a", "b"], version=V)
    _, drop_b = change(base, key, {"a": 0}, [], ("b",), version=V + 2, origin=OTHER)
    _, set_b = change(base, key, {"a": 0, "b": 1}, ["b"], version=V + 1)  # older, arriving later
    state = HubState(clock=FakeClock(wall=NOW))
    for record in (base, drop_b, set_b):
        assert state.merge(record)  # the last one only as seen: its key lost to the removal
    held = state.replica[key]
    assert held.data == {"a": 0} and held.stamps == {"a": (V, ME), "b": (V + 2, OTHER)}
    assert held.seen == {ME: V + 1, OTHER: V + 2}


def test_keys_a_clear_covers_are_dropped_from_a_newer_record() -> None:
    key = session_key(new_id())
    old, _ = change(None, key, {"old": 1}, ["old"], version=V)
    _, theirs = change(old, key, {"old": 1, "new": 2}, ["new"], version=V + 10, origin=OTHER)
    _, mine = change(old, key, {"old": 1, "mine": 3}, ["mine"], version=V + 11)
    whole = merge_records(old, mine)
    assert whole is not None and whole.data == {"old": 1, "mine": 3} and not whole.partial
    state = HubState(clock=FakeClock(wall=NOW))
    assert state.merge(theirs)
    assert state.clear(V + 5) and key in state.replica  # newer than the clear: kept
    assert state.merge(whole)
    assert state.replica[key].data == {"new": 2, "mine": 3}  # "old" was written before the clear
    assert not state.merge(old)  # covered whole: refused


def test_a_clear_drops_the_keys_it_covers_from_a_newer_record_the_hub_already_holds() -> None:
    key = session_key(new_id())
    old, _ = change(None, key, {"old": 1}, ["old"], version=V)
    held, _ = change(old, key, {"old": 1, "new": 2}, ["new"], version=V + 10)
    state = HubState(clock=FakeClock(wall=NOW))
    assert state.merge(held)
    assert state.clear(V + 5)
    assert state.replica[key].data == {"new": 2}  # as a copy merged after the clear would be


# -- partial records -------------------------------------------------------------------------------


def _held_partial(state: HubState) -> tuple[str, Record, Record]:
    """A session the store holds whole and the hub hears only a delta of: ``(key, stored, delta)``."""
    key = session_key(new_id())
    stored, _ = change(None, key, {"user": 42, "cart": [1, 2]}, ["user", "cart"], version=V)
    _, delta = change(stored, key, {"user": 42, "cart": [1, 2, 3]}, ["cart"], version=V + 1)
    assert delta.partial and delta.data == {"cart": [1, 2, 3]}
    assert state.on_bus(Streams().set(delta, ME)) == []
    assert state.replica[key].partial and state.replica[key].data == {"cart": [1, 2, 3]}
    return key, stored, delta


def test_a_delta_for_a_session_not_held_is_held_partial_and_completed_by_the_store_before_it_is_answered() -> None:
    reads = Reads()
    changes: list[Record] = []
    state = HubState(clock=FakeClock(wall=NOW), read_back=reads, on_change=changes.append)
    assert state.holds_all  # nothing evicted: it is the delta that needs the store
    key, stored, delta = _held_partial(state)
    assert changes == [delta]
    assert get(state, key, rid=7) == []  # not answered yet: the store is asked
    assert reads.asked == [(b"worker", 7, key)]
    state.read_back_done(key, stored, True)
    record = answered(state.answer_get(7, key))
    assert record is not None and record.data == {"user": 42, "cart": [1, 2, 3]} and not record.partial
    assert record.stamps == {"user": (V, ME), "cart": (V + 1, ME)}
    assert state.replica[key] == record and changes == [delta]  # what the store had is not queued again
    assert answered(get(state, key)[0]) == record and len(reads.asked) == 1  # complete: answered at once


def test_a_partial_record_the_store_does_not_have_is_answered_complete_after_the_read() -> None:
    reads = Reads()
    state = HubState(clock=FakeClock(wall=NOW), read_back=reads)
    key, _, delta = _held_partial(state)
    assert get(state, key, rid=3) == []
    state.read_back_done(key, None, True)
    record = answered(state.answer_get(3, key))
    assert record is not None and record.data == delta.data and not record.partial
    assert not state.replica[key].partial


def test_without_a_store_a_partial_record_is_answered_complete_at_once() -> None:
    state = HubState(clock=FakeClock(wall=NOW))
    key, _, delta = _held_partial(state)
    (reply,) = get(state, key)
    record = answered(reply)
    assert record is not None and record.data == delta.data and not record.partial
    assert not state.replica[key].partial


def test_a_pushed_whole_record_completes_a_partial_one_and_is_relayed() -> None:
    reads = Reads()
    state = HubState(clock=FakeClock(wall=NOW), read_back=reads)
    key, stored, _ = _held_partial(state)
    replies, relays = state.on_request(wire.encode_request(wire.PUSH, 2, [wire.record_to_list(stored)], 0))
    assert wire.decode_reply(replies[0]).body == (1,) and len(relays) == 1
    assert wire.decode(relays[0]).body == stored  # the relay is what was pushed
    held = state.replica[key]
    assert not held.partial and held.data == {"user": 42, "cart": [1, 2, 3]}
    assert answered(get(state, key)[0]) == held and reads.asked == []


def test_a_snapshot_carries_a_partial_record_as_it_is() -> None:
    state = HubState(clock=FakeClock(wall=NOW))
    key, _, delta = _held_partial(state)
    *chunks, end = state.snapshot(1)
    records = [r for chunk in chunks for r in wire.decode_reply(chunk).body[0]]
    assert records == [state.replica[key]] and records[0].partial and records[0].data == delta.data
    assert wire.decode_reply(end).body[3] == 1
