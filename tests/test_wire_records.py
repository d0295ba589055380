"""Records on the wire (version 3): per-key stamps, seen and the partial flag, and the bounds on them."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from memsession import wire
from memsession.admission import MAX_SEEN_ENTRIES
from memsession.changes import merge_records, record_change
from memsession.errors import WireError
from memsession.session import Record, prepare_packed, session_key

NOW = 1_700_000_000.0
KEY = session_key("x" * 43)
V = 1 << 40  # a version well above the stamps below it
ME, OTHER = 7, 9


def change(base: Record | None, data: dict[str, Any], changed: list[str], removed: tuple[str, ...] = (),
           *, version: int, origin: int = ME) -> tuple[Record, Record]:
    copy, packed, flat = prepare_packed(data, 65536)
    return record_change(base, KEY, copy, changed, removed, version=version, origin=origin, wall=NOW,
                         idle_timeout=1800.0, max_age=None, flat=flat, size=len(packed))


def merged(old: Record, new: Record) -> Record:
    record = merge_records(old, new)
    assert record is not None
    return record


def same(a: Record, b: Record) -> bool:
    return a == b and a.flat == b.flat and a.size == b.size


def via_set(record: Record) -> Record:
    body = wire.decode(wire.encode_set(record, ME, 1, 1, 0)).body
    assert isinstance(body, Record)
    return body


def via_list(record: Record) -> Record:
    return wire.record_from_list(msgpack.unpackb(msgpack.packb(wire.record_to_list(record), use_bin_type=True),
                                                 raw=False))


def set_payload(record: Record) -> list[Any]:
    """The fields of ``record``'s SET after the header, as they travel."""
    return msgpack.unpackb(wire.encode_set(record, ME, 1, 1, 0)[1], raw=False)[4:]


# -- what travels ------------------------------------------------------------------------------


def test_a_one_key_delta_round_trips_with_an_empty_stamps_map() -> None:
    held, _ = change(None, {"user": 42, "pad": "x" * 960}, ["user", "pad"], version=V)
    _, delta = change(held, {"user": 43, "pad": "x" * 960}, ["user"], version=V + 1)
    assert delta.partial and delta.data == {"user": 43} and delta.stamps is None
    for decoded in (via_set(delta), via_list(delta)):
        assert same(decoded, delta)
    *_, data, stamps, seen, partial = set_payload(delta)
    assert msgpack.unpackb(data) == {"user": 43} and (stamps, seen) == ({}, None)
    assert partial == [[ME, V]]  # its base: the copy it was made on had the writer's first change


def test_a_delta_that_removes_a_key_carries_the_key_tombstone_alone() -> None:
    held, _ = change(None, {"a": 1, "b": 2}, ["a", "b"], version=V)
    _, delta = change(held, {"a": 5}, ["a"], ("b",), version=V + 1)
    assert delta.stamps == {"a": (V + 1, ME), "b": (V + 1, ME)}
    assert set_payload(delta)[7] == {"b": [V + 1, ME]}  # "a" carries the record's own stamp: left out
    for decoded in (via_set(delta), via_list(delta)):
        assert same(decoded, delta)


def test_a_whole_record_merged_from_two_writers_round_trips() -> None:
    held, _ = change(None, {"a": 1, "b": 2, "c": 3}, ["a", "b", "c"], version=V)
    _, mine = change(held, {"a": 10, "b": 2, "c": 3}, ["a"], version=V + 1)
    _, theirs = change(held, {"a": 1, "b": 2}, [], ("c",), version=V + 2, origin=OTHER)
    both = merged(merged(held, mine), theirs)
    assert both.data == {"a": 10, "b": 2} and not both.partial
    assert both.stamps == {"a": (V + 1, ME), "b": (V, ME), "c": (V + 2, OTHER)}
    assert both.seen == {ME: V + 1, OTHER: V + 2}
    # The record's own stamp is (V + 2, OTHER): every key travels, "c" as a key tombstone.
    assert set_payload(both)[7] == {"a": [V + 1, ME], "b": [V, ME], "c": [V + 2, OTHER]}
    assert sorted(map(tuple, set_payload(both)[8])) == [(ME, V + 1), (OTHER, V + 2)]
    for decoded in (via_set(both), via_list(both)):
        assert same(decoded, both)
    # In a chunk and in a batch alike.
    (chunk,) = wire.record_lists([both, held], 10)
    reply = wire.decode_reply(wire.encode_request(wire.CHUNK, 1, chunk))
    assert all(same(a, b) for a, b in zip(reply.body[0], [both, held], strict=True))
    batch = wire.decode(wire.encode_batch([("s", wire.set_fields(both)), ("s", wire.set_fields(held))],
                                          ME, 1, 1, 0))
    assert all(same(body, r) for (_, body), r in zip(batch.body, [both, held], strict=True))


def test_a_tombstone_in_a_list_carries_no_stamps() -> None:
    tomb = Record(KEY, {}, V, ME, NOW, NOW, NOW + 60, True, True, 0)
    assert wire.record_to_list(tomb)[7:] == [b"\x80", {}, None, False]
    assert same(via_list(tomb), tomb)


def test_the_bus_sends_the_data_the_writer_packed() -> None:
    _, delta = change(*change(None, {"a": 1}, ["a"], version=V)[:1], {"a": 2, "b": 3}, ["b"], version=V + 1)
    packed = msgpack.packb({"b": 3}, use_bin_type=True)
    assert wire.set_fields(delta, packed)[6] is packed


# -- what is refused ------------------------------------------------------------------------------

GOOD_HEAD = [1, 1, 1, 1, KEY, V, ME, NOW, NOW, NOW + 60, msgpack.packb({"a": 1})]


def pack(*items: Any) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


def test_the_payload_the_refused_ones_start_from_decodes() -> None:
    body = wire.decode([b"ms5s", pack(*GOOD_HEAD, {"gone": [V - 1, OTHER]}, [[ME, V], [OTHER, V - 1]],
                                      [[OTHER, V - 1]])]).body
    assert body.stamps == {"a": (V, ME), "gone": (V - 1, OTHER)} and body.seen == {ME: V, OTHER: V - 1}
    assert body.partial and body.base == {OTHER: V - 1}
    empty_base = wire.decode([b"ms5s", pack(*GOOD_HEAD, {}, None, [])]).body
    assert empty_base.partial and empty_base.base is None


@pytest.mark.parametrize(
    "stamps, seen, partial",
    [
        ([], None, False),  # stamps not a map
        (None, None, False),
        ({"a": [V]}, None, False),  # a stamp of one int
        ({"a": [V, ME, 1]}, None, False),
        ({"a": {"v": V}}, None, False),  # a stamp that is a map
        ({"a": [0, ME]}, None, False),  # version 0 is no change's
        ({"a": [2**63, ME]}, None, False),  # beyond every store
        ({"a": ["1", ME]}, None, False),
        ({"a": [V, "7"]}, None, False),
        ({"a": [V, 1.5]}, None, False),
        ({b"a": [V, ME]}, None, False),  # a stamped key that is bin
        ({}, {}, False),  # seen as a map
        ({}, [[ME, V]] * 65, False),  # more writers than MAX_SEEN_ENTRIES
        ({}, [[ME]], False),
        ({}, [[ME, V, 1]], False),
        ({}, [[ME, 0]], False),
        ({}, [[None, V]], False),
        ({}, [[ME, V], [ME, V - 1]], False),  # one writer twice
        ({}, None, None),  # partial neither false nor a base
        ({}, None, 1),
        ({}, None, True),  # a delta without its base (version 3)
        ({}, None, [[ME]]),
        ({}, None, [[ME, 0]]),
        ({}, None, [[ME, V], [ME, V - 1]]),
        ({}, None, [[ME, V]] * 65),
    ],
)
def test_bad_stamps_seen_or_partial_fields_are_refused(stamps: Any, seen: Any, partial: Any) -> None:
    assert wire.decode([b"ms5s", pack(*GOOD_HEAD, {}, None, False)]).body.data == {"a": 1}
    with pytest.raises(WireError):
        wire.decode([b"ms5s", pack(*GOOD_HEAD, stamps, seen, partial)])
    good = [*GOOD_HEAD[4:10], False, GOOD_HEAD[10], {}, None, False]
    reply = wire.decode_reply([b"ms5C", pack(1, [good, [*good[:8], stamps, seen, partial]])])
    assert len(reply.body[0]) == 1 and reply.refused == 1  # left out of its list, which is taken


@pytest.mark.parametrize("fields", [
    [msgpack.packb({}), {"a": [V, ME]}, None, False],
    [msgpack.packb({}), {}, [[ME, V]], False],
    [msgpack.packb({}), {}, None, True],
    [msgpack.packb({"a": 1}), {}, None, False],
])
def test_a_tombstone_with_stamps_seen_partial_or_data_is_refused(fields: list[Any]) -> None:
    good = [*GOOD_HEAD[4:10], True, msgpack.packb({}), {}, None, False]
    reply = wire.decode_reply([b"ms5C", pack(1, [good, [*good[:7], *fields]])])
    assert [r.deleted for r in reply.body[0]] == [True] and reply.refused == 1


def test_a_stamps_map_beyond_max_items_is_refused() -> None:
    limits = wire.Limits(max_items=4)
    fits = {f"k{i}": [V - 1, OTHER] for i in range(4)}
    assert wire.decode([b"ms5s", pack(*GOOD_HEAD, fits, None, False)], limits).body.stamps is not None
    with pytest.raises(WireError):
        wire.decode([b"ms5s", pack(*GOOD_HEAD, {**fits, "k4": [V - 1, OTHER]}, None, False)], limits)


def test_seen_beyond_max_seen_entries_is_refused() -> None:
    writers = [[origin, V] for origin in range(1, MAX_SEEN_ENTRIES + 1)]
    assert len(wire.decode([b"ms5s", pack(*GOOD_HEAD, {}, writers, False)]).body.seen) == MAX_SEEN_ENTRIES
    with pytest.raises(WireError):
        wire.decode([b"ms5s", pack(*GOOD_HEAD, {}, [*writers, [0, V]], False)])


def test_stamps_count_against_the_frame_budget_of_max_stamps() -> None:
    """Each op may build its own fields and about ``max_stamps`` stamps more, over all its records."""
    limits = wire.Limits(max_records=2, max_stamps=8)
    stamps = {f"k{i}": [V - 1, OTHER] for i in range(8)}
    assert wire.decode([b"ms5s", pack(*GOOD_HEAD, stamps, None, False)], limits).body.stamps is not None
    with pytest.raises(WireError):
        wire.decode([b"ms5s", pack(*GOOD_HEAD, {**stamps, "k8": [V - 1, OTHER], "k9": [V - 1, OTHER]}, None,
                                   False)], limits)
    record = [*GOOD_HEAD[4:10], False, GOOD_HEAD[10], stamps, None, False]
    assert wire.decode_reply([b"ms5C", pack(1, [record])], limits).body[0][0].stamps is not None
    with pytest.raises(WireError):
        wire.decode_reply([b"ms5C", pack(1, [record, record])], limits)  # 16 stamps in one chunk


def test_record_lists_cut_at_max_records_and_max_stamps() -> None:
    held, _ = change(None, {"a": 1, "b": 2}, ["a", "b"], version=V)
    _, delta = change(held, {"a": 1}, [], ("b",), version=V + 1)
    wide = merged(held, delta)  # two stamps on the wire: "a" older than the record, "b" removed
    assert len(set_payload(wide)[7]) == 2 and set_payload(held)[7] == {}
    assert [len(c) for c in wire.record_lists([held] * 5, 2)] == [2, 2, 1]
    assert [len(c) for c in wire.record_lists([wide, wide, held, wide], 10, max_stamps=4)] == [3, 1]
    assert [len(c) for c in wire.record_lists([wide, wide], 10, max_stamps=1)] == [1, 1]  # alone, whatever
    assert list(wire.record_lists([], 10)) == []
    # Lists cut so reach a receiver whose limits would refuse them whole.
    stamped = [merged(held, change(held, {"a": 1}, [], ("b",), version=V + 1 + i)[1]) for i in range(40)]
    limits = wire.Limits(max_records=40, max_stamps=4)
    with pytest.raises(WireError):
        wire.decode_reply(wire.encode_request(wire.CHUNK, 1, [wire.record_to_list(r) for r in stamped]), limits)
    got = [r for chunk in wire.record_lists(stamped, 40, limits.max_stamps)
           for r in wire.decode_reply(wire.encode_request(wire.CHUNK, 1, chunk), limits).body[0]]
    assert got == stamped
