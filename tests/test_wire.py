"""The wire format: every op round-trips, and nothing but WireError comes out of bad frames."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession import wire
from memsession.errors import WireError
from memsession.partitions import PARTITIONS, mask_of
from memsession.session import Record, is_flat

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20), st.binary(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
datas = st.dictionaries(st.text(max_size=10), json_values, max_size=6)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
u64 = st.integers(0, 2**64 - 1)
versions = st.integers(1, 2**63 - 1)  # what every store can keep (0 is no write's)
keys = st.text(min_size=1, max_size=64).filter(str.isprintable)  # the record rule's keys


origins = st.integers(-(2**63), 2**64 - 1)


@st.composite
def records(draw, deleted=None):
    """Any record in the form ``changes`` makes: stamps None unless some differ from the record's own or a
    key was removed, seen None unless it names more than the record's own change."""
    dead = draw(st.booleans()) if deleted is None else deleted
    data = {} if dead else draw(datas)
    size = 0 if dead else len(msgpack.packb(data, use_bin_type=True))
    version, origin = draw(versions), draw(st.integers(1, 2**63 - 1))
    stamps = seen = None
    partial = False
    if not dead:
        own = (version, origin)
        older = st.tuples(st.integers(1, version), origins)
        stamps = {name: draw(st.one_of(st.just(own), older)) for name in data}
        stamps.update(draw(st.dictionaries(st.text(max_size=10).filter(lambda n: n not in data), older, max_size=3)))
        if all(stamp == own for stamp in stamps.values()) and len(stamps) == len(data):
            stamps = None
        seen = draw(st.none() | st.dictionaries(origins, st.integers(1, version), min_size=1, max_size=4))
        partial = draw(st.booleans())
    return Record(draw(keys), data, version, origin, draw(times), draw(times), draw(times), dead, is_flat(data),
                  size, stamps, seen, partial)


def same(a: Record, b: Record) -> bool:
    return a == b and a.flat == b.flat and a.size == b.size


header = st.tuples(st.integers(1, 2**63 - 1), u64, st.integers(1, 2**64 - 1), u64)


@given(records(deleted=False), header)
def test_set_round_trips(record, h):
    msg = wire.decode(wire.encode_set(record, *h))
    assert (msg.op, msg.origin, msg.epoch, msg.seq, msg.sent_us) == (wire.SET, *h)
    assert same(msg.body, record)


@given(records(deleted=True), header)
def test_destroy_round_trips(record, h):
    msg = wire.decode(wire.encode_record_message(record, *h))
    assert msg.op == wire.DESTROY and same(msg.body, record)


@given(records(deleted=False), header)
def test_touch_and_invalidate_carry_key_version_origin(record, h):
    touch = wire.decode(wire.encode_touch(record, *h))
    assert touch.body == (record.key, record.version, record.origin, record.accessed, record.expires)
    inval = wire.decode(wire.encode_invalidate(record, *h))
    assert inval.body == (record.key, record.version, record.origin, False)


@given(header, st.sets(st.integers(0, PARTITIONS - 1), max_size=PARTITIONS))
def test_a_hub_beat_carries_the_partitions_it_cannot_vouch_for(h, partitions):
    mask = mask_of(partitions)
    assert wire.decode(wire.encode_heartbeat(*h, hub=True, suspect=mask)).body == mask
    assert wire.decode(wire.encode_heartbeat(*h, suspect=mask)).body is None  # only a hub's beat says it


@given(header, st.sets(st.integers(0, PARTITIONS - 1), min_size=1, max_size=PARTITIONS))
def test_drop_names_the_partitions_whose_copies_go(h, partitions):
    message = wire.decode(wire.encode_drop(mask_of(partitions), *h))
    assert message.op == wire.DROP and message.body == mask_of(partitions) and message.seq == h[2]
    batch = wire.decode(wire.encode_batch([(wire.DROP, [mask_of(partitions).to_bytes(32, "big")])], *h))
    assert batch.body == [(wire.DROP, mask_of(partitions))]


@pytest.mark.parametrize("mask", [b"\x00" * 32, b"\x01" * 31, b"\x01" * 33, 7, None])
def test_a_drop_naming_no_partition_or_malformed_is_refused(mask):
    frames = wire.encode_message(wire.DROP, 1, 2, 3, 4, [mask])
    with pytest.raises(WireError, match="DROP needs"):
        wire.decode(frames)


@pytest.mark.parametrize("extra", [b"\x01" * 31, b"\x01" * 33, 5, [b"\x00" * 32], None])
def test_a_hub_beat_with_a_malformed_mask_is_refused(extra):
    frames = wire.encode_heartbeat(1, 2, 3, 4, hub=True)
    payload = msgpack.packb([*msgpack.unpackb(frames[1]), extra])
    with pytest.raises(WireError, match="partition mask"):
        wire.decode([frames[0], payload])


@given(header, st.booleans())
def test_heartbeats_hello_and_resync(h, hub):
    beat = wire.decode(wire.encode_heartbeat(*h, hub=hub))
    assert beat.op == (wire.HUB_BEAT if hub else wire.HEARTBEAT) and beat.seq == h[2]
    assert beat.body == (0 if hub else None)  # a hub beat names the partitions it can't vouch for: none
    hello = wire.decode(wire.encode_hello(h[0], h[1], 42, h[3]))
    assert hello.op == wire.HELLO and hello.body == 42 and hello.seq == 0
    resync = wire.decode(wire.encode_resync(h[0], h[1], 7, h[3]))
    assert resync.op == wire.RESYNC and resync.body == 7


@given(st.lists(records(), max_size=5), st.integers(0, 2**32))
def test_chunks_pushes_and_records_round_trip(batch, rid):
    lists = [wire.record_to_list(r) for r in batch]
    stream = [rid | 1, rid + 2, rid + 3]
    for op, extra, body in ((wire.CHUNK, (), ()), (wire.PUSH, (rid + 1, stream), (rid + 1, tuple(stream))),
                            (wire.PUSH, (rid + 1, None), (rid + 1, None)),
                            (wire.PUSH, (rid + 1,), (rid + 1, None))):  # a worker that names no stream
        reply = wire.decode_reply(wire.encode_request(op, rid, lists, *extra))
        assert reply.op == op and reply.rid == rid
        assert all(same(a, b) for a, b in zip(reply.body[0], batch)) and len(reply.body[0]) == len(batch)
        assert reply.body[1:] == body
    if batch:
        got = wire.decode_reply(wire.encode_request(wire.RECORD, rid, lists[0])).body[0]
        assert same(got, batch[0])
    assert wire.decode_reply(wire.encode_request(wire.RECORD, rid, None)).body == (None,)


def test_end_get_ack_stats_round_trip():
    end = wire.decode_reply(wire.encode_request(wire.END, 3, 99, [[5, 6, 7], [8, 9, 10]], 2, 1500, 77))
    assert end.body == (99, {5: (6, 7), 8: (9, 10)}, 2, 1500, 77)
    assert wire.decode_reply(wire.encode_request(wire.GET, 4, "k")).body == ("k",)
    assert wire.decode_reply(wire.encode_request(wire.ACK, 5, 12)).body == (12,)
    assert wire.decode_reply(wire.encode_request(wire.SNAPSHOT, 6)).body == ()
    assert wire.decode_reply(wire.encode_request(wire.STATS_REPLY, 7, {"a": 1})).body == ({"a": 1},)


@given(header, st.integers(1, 2**63 - 1))
def test_clear_round_trips_as_a_numbered_data_message(h, version):
    msg = wire.decode(wire.encode_clear(version, *h))
    assert msg.op == wire.CLEAR and msg.op in wire.DATA_OPS
    assert (msg.origin, msg.epoch, msg.seq, msg.sent_us) == h and msg.body == version


@pytest.mark.parametrize("fields", [[], [0], [-1], ["7"], [1.5], [None], [1, 2], [True], [2**63]])
def test_clear_with_a_bad_version_is_refused(fields):
    payload = msgpack.packb([1, 1, 1, 1, *fields])
    bad([b"ms5c", payload])


@pytest.mark.parametrize(
    "op, fields",
    [
        (wire.PUSH, [[]]),  # the watermark is not optional
        (wire.PUSH, [[], -1]),
        (wire.PUSH, [[], "0"]),
        (wire.END, [1, [], 0, 0]),
        (wire.END, [1, [], 0, 0, None]),
        (wire.PUSH, [[], 2**63]),  # beyond what a store can keep: it would refuse the clear forever
        (wire.PUSH, [[], 0, [1, 2]]),  # the pusher's stream is [origin, epoch, seq]
        (wire.PUSH, [[], 0, [1, 2, -3]]),
        (wire.PUSH, [[], 0, [1, "2", 3]]),
        (wire.PUSH, [[], 0, {"origin": 1}]),
        (wire.PUSH, [[], 0, None, None]),
        (wire.END, [1, [], 0, 0, 2**63]),
    ],
)
def test_push_and_end_without_a_proper_watermark_are_refused(op, fields):
    with pytest.raises(WireError):
        wire.decode_reply(wire.encode_request(op, 1, *fields))


def test_a_version_beyond_what_stores_keep_is_refused():
    record = Record("k", {}, 2**63, 1, 1.0, 1.0, 2.0, True, True, 0)
    for frames in (wire.encode_record_message(record, 1, 1, 1, 1), wire.encode_touch(record, 1, 1, 1, 1),
                   wire.encode_invalidate(record, 1, 1, 1, 1)):
        bad(frames)


def _items(records):
    return [("d", wire.destroy_fields(r)) if r.deleted else ("s", wire.set_fields(r)) for r in records]


batch_header = st.tuples(st.integers(1, 2**63 - 1), u64, st.integers(1, 2**64 - 8), u64)


@given(st.lists(records(), min_size=1, max_size=6), batch_header)
def test_batch_round_trips_every_item_in_order(batch, h):
    msg = wire.decode(wire.encode_batch(_items(batch) + [("c", [9])], *h))
    assert msg.op == wire.BATCH and (msg.origin, msg.epoch, msg.seq, msg.sent_us) == h
    *changes, (last_op, last_body) = msg.body
    assert [op for op, _ in changes] == [wire.DESTROY if r.deleted else wire.SET for r in batch]
    assert all(same(body, r) for (_, body), r in zip(changes, batch))
    assert (last_op, last_body) == (wire.CLEAR, 9)


def test_tuples_come_back_as_lists_and_nested_data_is_not_flat():
    record = Record("k", {"t": [1, 2], "d": {"x": None}}, 5, 1, 1.0, 1.0, 2.0, False, False, 0)
    body = wire.decode(wire.encode_set(record, 1, 1, 1, 1)).body
    assert body.data == {"t": [1, 2], "d": {"x": None}} and body.flat is False


# -- what must be refused -------------------------------------------------------------------

GOOD = Record("key", {"a": 1}, 10, 2, 1.0, 1.0, 5.0, False, True, 0)


def bad(frames, limits=wire.DEFAULT_LIMITS):
    with pytest.raises(WireError):
        wire.decode(frames, limits)


def test_wrong_frame_counts_and_types():
    topic, payload = wire.encode_set(GOOD, 1, 1, 1, 1)
    bad([topic])
    bad([topic, payload, b""])
    bad([])
    bad(["ms5s", payload])


def test_other_protocol_version_or_unknown_op():
    _, payload = wire.encode_set(GOOD, 1, 1, 1, 1)
    bad([b"ms1s", payload])  # version 1: memsession 0.1
    bad([b"ms5?", payload])
    bad([b"xx", payload])


def test_a_version_2_frame_is_refused_whole_as_another_version():
    """Version 2 sent the whole session without stamps: merged as a delta it would lose every other key."""
    version_2_set = [b"ms2s", pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, msgpack.packb({"a": 1}))]
    for decoder in (wire.decode, wire.decode_reply):
        with pytest.raises(WireError) as info:
            decoder(version_2_set)
        assert info.value.kind == "other version" and "protocol version 2, not 5" in str(info.value)
    assert wire.PROTOCOL == b"ms5"


def test_a_version_4_frame_is_refused_whole_as_another_version():
    """Version 4 workers know neither DROP nor a hub beat's partitions: they would serve what they can't vouch for."""
    version_4_beat = [b"ms4H", pack(1, 1, 0, 1)]
    with pytest.raises(WireError) as info:
        wire.decode(version_4_beat)
    assert info.value.kind == "other version" and "protocol version 4, not 5" in str(info.value)


def test_a_version_3_delta_is_refused_whole_as_another_version():
    """Version 3 deltas carry no base: merged, they could make a copy that missed a change pass for the newest."""
    version_3_set = [b"ms3s", pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, msgpack.packb({"a": 1}), {}, None, True)]
    with pytest.raises(WireError) as info:
        wire.decode(version_3_set)
    assert info.value.kind == "other version" and "protocol version 3, not 5" in str(info.value)


def test_truncated_payloads_are_refused():
    topic, payload = wire.encode_set(GOOD, 1, 1, 1, 1)
    for cut in range(len(payload)):
        bad([topic, payload[:cut]])


def test_oversized_frames_and_data_are_refused():
    big = Record("key", {"a": "x" * 5000}, 10, 2, 1.0, 1.0, 5.0, False, True, 0)
    frames = wire.encode_set(big, 1, 1, 1, 1)
    bad(frames, wire.Limits(max_frame=1000))
    bad(frames, wire.Limits(max_data=1000))
    long_key = Record("k" * 300, {}, 10, 2, 1.0, 1.0, 5.0, False, True, 0)
    bad(wire.encode_set(long_key, 1, 1, 1, 1))


def pack(*items):
    return msgpack.packb(list(items), use_bin_type=True)


DATA = msgpack.packb({"a": 1})
#: What follows ``data`` in a SET of a whole record whose keys all carry its own stamp.
TAIL = ({}, None, False)


@pytest.mark.parametrize(
    "payload",
    [
        pack(1, 1, 0, 1, "key", 10, 2, 1.0, 1.0, 5.0, DATA, *TAIL),  # data message without a seq
        pack(1, 1, 1, 1, "key", -10, 2, 1.0, 1.0, 5.0, DATA, *TAIL),  # negative version
        pack(1, 1, 1, 1, "key", 10, 2, "1.0", 1.0, 5.0, DATA, *TAIL),  # time as str
        pack(1, 1, 1, 1, "key", 10, 2, float("nan"), 1.0, 5.0, DATA, *TAIL),  # NaN time
        pack(1, 1, 1, 1, 5, 10, 2, 1.0, 1.0, 5.0, DATA, *TAIL),  # key not str
        pack(1, 1, 1, 1, "", 10, 2, 1.0, 1.0, 5.0, DATA, *TAIL),  # empty key
        pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, {"a": 1}, *TAIL),  # data not bin
        pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, msgpack.packb([1]), *TAIL),  # data not a map
        pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, b"\xc1", *TAIL),  # data undecodable
        pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, msgpack.packb({"a": float("inf")}), *TAIL),
        pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, msgpack.packb({"a": {"b": float("nan")}}), *TAIL),
        pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, msgpack.packb({1: 2}, strict_types=False), *TAIL),
        pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, msgpack.packb({"a": msgpack.ExtType(1, b"x")}), *TAIL),
        pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0),  # too few fields
        pack(1, 1, 1),  # truncated header
        msgpack.packb({"not": "an array"}),
        msgpack.packb(msgpack.ExtType(5, b"pickle-ish")),
        b"\x93\x01",  # array header promising more than there is
    ],
)
def test_malformed_set_payloads_are_refused(payload):
    bad([b"ms5s", payload])


def test_deeply_nested_data_is_refused():
    nested: object = 1
    for _ in range(40):
        nested = [nested]
    bad([b"ms5s", pack(1, 1, 1, 1, "key", 10, 2, 1.0, 1.0, 5.0, msgpack.packb({"a": nested}), *TAIL)])


def test_a_bad_record_in_a_chunk_is_left_out_and_counted():
    reply = wire.decode_reply([b"ms5C", pack(1, [[1, 2, 3]])])
    assert reply.body == ([],) and reply.refused == 1


def test_bad_requests_are_refused():
    for frames in (
        [b"ms5S", pack()],
        [b"ms5S", pack("rid")],
        [b"ms5E", pack(1, 2, [[1, 2]], 0, 0)],
        [b"ms5R", pack(1, ["k", 1, 1, 1.0, 1.0, 1.0, "yes", b"\x80", {}, None, False])],
        [b"ms5s", pack(1)],
    ):
        with pytest.raises(WireError):
            wire.decode_reply(frames)
    with pytest.raises(WireError):
        wire.decode_reply([b"ms5C", pack(1, [wire.record_to_list(GOOD)] * 3)], wire.Limits(max_records=2))


@settings(max_examples=300)
@given(st.binary(max_size=4), st.binary(max_size=200))
def test_random_frames_raise_only_wire_error(topic, payload):
    for decoder in (wire.decode, wire.decode_reply):
        try:
            decoder([wire.PROTOCOL + topic[:1], payload])
            decoder([topic, payload])
        except WireError:
            pass


@settings(max_examples=300)
@given(records(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_frames_raise_only_wire_error_or_decode_cleanly(record, flips):
    for topic, payload in (wire.encode_record_message(record, 1, 2, 3, 4),
                           wire.encode_batch(_items([record, record]), 1, 2, 3, 4)):
        mutated = bytearray(payload)
        for pos, value in flips:
            mutated[pos % len(mutated)] = value
        try:
            msg = wire.decode([topic, bytes(mutated)])
        except WireError:
            continue
        bodies = [body for _, body in msg.body] if msg.op == wire.BATCH else [msg.body]
        assert all(isinstance(b, Record) and isinstance(b.data, dict) for b in bodies)


@pytest.mark.parametrize(
    "items",
    [
        [],  # nothing to number
        "s",
        [[]],
        [["x", 1]],  # unknown op
        [["h"]],  # a heartbeat is not a data message
        [[b"s", *wire.set_fields(GOOD)]],  # op must be a str
        [["s", *wire.set_fields(GOOD)[:-1]]],  # truncated item
        [["s", *wire.set_fields(GOOD)], ["c", 0]],  # one bad item spoils the batch
    ],
)
def test_malformed_batches_are_refused(items):
    bad([b"ms5b", msgpack.packb([1, 1, 1, 1, items], use_bin_type=True)])


def test_a_batch_without_a_sequence_number_or_past_the_last_one_is_refused():
    bad(wire.encode_batch(_items([GOOD]), 1, 1, 0, 1))
    bad(wire.encode_batch(_items([GOOD, GOOD]), 1, 1, 2**64 - 1, 1))


@given(records(), header)
def test_own_messages_are_recognised_without_decoding(record, h):
    origin, epoch, seq, sent = h
    mine = wire.own_prefix(origin, epoch)
    for frames in (
        wire.encode_record_message(record, origin, epoch, seq, sent),
        wire.encode_heartbeat(origin, epoch, seq, sent),
        wire.encode_clear(7, origin, epoch, seq, sent),
        wire.encode_batch(_items([record]), origin, epoch, 1, sent),
    ):
        assert wire.is_own(frames, mine)
        assert not wire.is_own(frames, wire.own_prefix(origin, epoch ^ 1))
        assert not wire.is_own(frames, wire.own_prefix(origin ^ 1, epoch))
    # a process waits for its own hello: that one is never skipped
    assert not wire.is_own(wire.encode_hello(origin, epoch, 5, sent), mine)
    assert not wire.is_own([b"ms5s", b""], mine) and not wire.is_own([b"ms5s"], mine)
