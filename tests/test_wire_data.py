"""Session data on the wire: decoding proves from the bytes what it can, and refuses exactly what the walk refuses.

``memsession.wire.records`` skips the walk over decoded data (``scan_data``)
when the bytes alone prove the data obeys the data rule (``_bounded``). The
decoder as it was, walking every record, is the reference model
(``tests.data_rule_reference.wire_data``): on generated valid, hostile and
mutated blobs the two must give the same data, size and flatness, or refuse
with the same reason. The same for the payload budget, now left out for
frames too small to run it out (``wire_unpack``).
"""

from __future__ import annotations

import importlib
import math
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from memsession.admission import MAX_DEPTH, MAX_ITEMS, scan_data
from memsession.errors import SessionDataError, WireError
from memsession.wire import Limits
from tests import data_rule_reference as reference

records = importlib.import_module("memsession.wire.records")
decoder = importlib.import_module("memsession.wire.decode")

_INT_MIN = -(1 << 63)
_U64 = (1 << 64) - 1
MANY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(decode: Any, blob: Any, limits: Limits) -> tuple[str, Any]:
    try:
        data, size, flat = decode(blob, limits)
    except WireError as exc:
        return "refused", exc.reason
    return "taken", (data, size, flat)


def same_as_the_walk(blob: Any, limits: Limits) -> tuple[str, Any]:
    got = outcome(records._data, blob, limits)
    want = outcome(reference.wire_data, blob, limits)
    assert got == want
    if got[0] == "taken":
        assert type(got[1][0]) is dict
    return got


# -- generated data, valid and hostile ----------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(_INT_MIN, _U64), st.sampled_from([0, -1, 127, 128, 255, 256, -33, _INT_MIN, _U64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, -math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 1.5]),
    st.text(max_size=12), st.sampled_from(["", "é", "€", "日本", "\x00", "\u0100", "Łódź"]),
    st.binary(max_size=6), st.just(b""),
)
keys = st.one_of(st.text(max_size=8), st.sampled_from(["", "k", "\u0100"]),
                 st.binary(max_size=3), st.integers(-3, 300), st.none(), st.booleans())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=5),
    st.dictionaries(keys, inner, max_size=3)), max_leaves=40)
tops = st.one_of(st.dictionaries(st.text(max_size=8), values, max_size=8),
                 st.dictionaries(keys, values, max_size=4), values)
small_limits = st.builds(lambda depth, items: Limits(max_depth=depth, max_items=items),
                         st.integers(0, 8), st.integers(0, 400))
limits = st.one_of(st.just(Limits()), small_limits)


def pack(value: Any, single_float: bool, bin_type: bool) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=bin_type, use_single_float=single_float)
    except (OverflowError, TypeError, ValueError):
        return None


@MANY
@given(tops, st.booleans(), st.booleans(), limits)
def test_generated_data_is_taken_or_refused_as_the_walk_does(value: Any, single: bool, bin_type: bool,
                                                              bounds: Limits) -> None:
    blob = pack(value, single, bin_type)
    assume(blob is not None)
    same_as_the_walk(blob, bounds)


@MANY
@given(tops, st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4), limits)
def test_mutated_blobs_are_taken_or_refused_as_the_walk_does(value: Any, edits: list[tuple[int, int]],
                                                             bounds: Limits) -> None:
    blob = pack(value, False, True)
    assume(blob is not None and len(blob) > 0)
    assert blob is not None
    raw = bytearray(blob)
    for at, byte in edits:
        raw[at % len(raw)] = byte
    same_as_the_walk(bytes(raw), bounds)


def nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if kind == "list" or (kind == "mixed" and i % 2) else {"k": value}
    return value


@given(st.integers(0, 40), st.sampled_from(["list", "dict", "mixed"]), st.integers(1, 40))
@example(MAX_DEPTH - 1, "list", MAX_DEPTH)
@example(MAX_DEPTH, "list", MAX_DEPTH)
@example(MAX_DEPTH - 1, "dict", MAX_DEPTH)
@example(MAX_DEPTH, "mixed", MAX_DEPTH)
def test_depth_is_refused_past_max_depth_and_only_there(depth: int, kind: str, max_depth: int) -> None:
    blob = msgpack.packb({"top": nested(depth, kind)})
    verdict, _ = same_as_the_walk(blob, Limits(max_depth=max_depth))
    assert (verdict == "taken") == (depth < max_depth)  # the top map is depth 0, ``top``'s value depth 1


@pytest.mark.parametrize("count", [MAX_ITEMS - 1, MAX_ITEMS, MAX_ITEMS + 1])
def test_items_are_counted_at_every_depth(count: int) -> None:
    bounds = Limits(max_items=MAX_ITEMS)
    blob = msgpack.packb({"a": [[0] * (count - 2)]})  # count values: the list, the inner list, its items
    verdict, _ = same_as_the_walk(blob, bounds)
    assert (verdict == "taken") == (count <= MAX_ITEMS)


@pytest.mark.parametrize("max_items", [1, 2, 5, 13, 14, 15, 16, 100])
def test_the_densest_blobs_are_counted_right_at_the_item_limit(max_items: int) -> None:
    # One byte per value: small ints in one list under a one-byte key, as dense as msgpack gets.
    for count in range(max(1, max_items - 3), max_items + 4):
        blob = msgpack.packb({"": [0] * (count - 1)})
        verdict, _ = same_as_the_walk(blob, Limits(max_items=max_items))
        assert (verdict == "taken") == (count <= max_items)


def _f64(value: float) -> bytes:
    return b"\xcb" + struct.pack(">d", value)


def _f32(value: float) -> bytes:
    return b"\xca" + struct.pack(">f", value)


#: Hand-made blobs: each thing the bytes must not let through, in every encoding msgpack accepts.
HOSTILE = {
    "NaN float64": b"\x81\xa1a" + _f64(math.nan),
    "infinity float64": b"\x81\xa1a" + _f64(math.inf),
    "-infinity float64": b"\x81\xa1a" + _f64(-math.inf),
    "NaN float32": b"\x81\xa1a" + _f32(math.nan),
    "-infinity float32": b"\x81\xa1a" + _f32(-math.inf),
    "NaN nested": b"\x81\xa1a\x91\x81\xa1b" + _f64(math.nan),
    "empty bin8 key": b"\x81\xc4\x00\x01",
    "empty bin16 key": b"\x81\xc5\x00\x00\x01",
    "empty bin32 key": b"\x81\xc6\x00\x00\x00\x00\x01",
    "bin key": b"\x81\xc4\x01k\x01",
    "empty bin key nested": b"\x81\xa1a\x81\xc4\x00\x01",
    "int key": b"\x81\x01\x01",
    "nil key": b"\x81\xc0\x01",
    "array key": b"\x81\x90\x01",
    "empty ext": b"\x81\xa1a\xc7\x00\x05",
    "fixext": b"\x81\xa1a\xd4\x05\x00",
    "timestamp": b"\x81\xa1a\xd6\xff\x00\x00\x00\x01",
    "empty timestamp ext": b"\x81\xa1a\xc7\x00\xff",
    "not a map": b"\x91\x01",
    "nil": b"\xc0",
    "trailing bytes": b"\x80\x00",
    "truncated": b"\x82\xa1a\x01",
    "bad utf-8": b"\x81\xa1a\xa1\xff",
    "map16 nesting too deep": b"\xde\x00\x01\xa1a" + b"\xdc\x00\x01" * 33 + b"\x01",
}

#: Hand-made blobs the rule allows, some in encodings our packer never writes.
ALLOWED = {
    "empty map": b"\x80",
    "empty bin value": b"\x81\xa1a\xc4\x00",
    "bin value": b"\x81\xa1a\xc4\x02hi",
    "bin16 value": b"\x81\xa1a\xc5\x00\x01h",
    "big finite float64": b"\x81\xa1a" + _f64(1e308),
    "negative big float64": b"\x81\xa1a" + _f64(-1e308),
    "float32": b"\x81\xa1a" + _f32(1.5),
    "str8 key": b"\x81\xd9\x01k\x01",
    "map16": b"\xde\x00\x01\xa1a\x01",
    "array32": b"\x81\xa1a\xdd\x00\x00\x00\x01\x01",
    "duplicate keys": b"\x82\xa1a\x01\xa1a\x02",
    "a float whose bytes hold a bin marker": b"\x81\xa1a\xcb\x40\x23\xc4\x00\x00\x00\x00\x01",
    "nesting at the limit": b"\x81\xa1a" + b"\x91" * (MAX_DEPTH - 2) + b"\x01",
    "u64 and i64": b"\x82\xa1a\xcf" + b"\xff" * 8 + b"\xa1b\xd3\x80" + b"\x00" * 7,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_data_is_refused(name: str) -> None:
    verdict, _ = same_as_the_walk(HOSTILE[name], Limits())
    assert verdict == "refused"


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_allowed_data_is_taken_whatever_its_encoding(name: str) -> None:
    verdict, _ = same_as_the_walk(ALLOWED[name], Limits())
    assert verdict == "taken"


def test_oversized_and_non_bin_data_are_refused_before_decoding() -> None:
    too_long = msgpack.packb({"a": "x" * 100})
    assert same_as_the_walk(too_long, Limits(max_data=50)) == ("refused", "data exceeds max_data")
    assert same_as_the_walk("not bytes", Limits()) == ("refused", "data must be bin")


# -- the proof is taken where it should be --------------------------------------------------------


def shopper() -> dict[str, Any]:
    return {"user": {"id": 7, "name": "Ada", "roles": ["admin", "editor"], "score": 98.5, "manager": None},
            "cart": [{"sku": f"S{i}", "qty": i, "price": 9.99 + i, "gift": i % 2 == 0} for i in range(8)],
            "csrf": "x" * 40, "last": 1_700_000_000.25}


def test_a_nested_session_is_proved_by_its_bytes_without_the_walk() -> None:
    blob = msgpack.packb(shopper(), use_bin_type=True)
    assert records._bounded(blob, Limits())
    assert same_as_the_walk(blob, Limits()) == ("taken", (shopper(), len(blob), False))


@pytest.mark.parametrize("bounds", [Limits(max_depth=2), Limits(max_items=50)])
def test_tighter_limits_send_the_same_session_to_the_walk(bounds: Limits) -> None:
    blob = msgpack.packb(shopper(), use_bin_type=True)
    assert not records._bounded(blob, bounds)
    same_as_the_walk(blob, bounds)


@pytest.mark.parametrize("name", ["NaN nested", "empty bin key nested", "map16 nesting too deep"])
def test_no_hostile_blob_passes_the_proof(name: str) -> None:
    blob = HOSTILE[name]
    assert records._unpack_without_bin(blob) is None or not records._bounded(blob, Limits())


def test_data_with_bytes_values_is_decoded_in_full_and_walked() -> None:
    blob = msgpack.packb({"token": b"\x00\x01", "cart": [1, 2]}, use_bin_type=True)
    assert records._unpack_without_bin(blob) is None
    assert same_as_the_walk(blob, Limits()) == ("taken", ({"token": b"\x00\x01", "cart": [1, 2]}, len(blob), False))


# -- the payload budget -------------------------------------------------------------------------


frames_of_containers: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.integers(0, 3), st.just([]), st.just({})),
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.integers(0, 9).map(str), inner,
                                                                          max_size=4)),
    max_leaves=60,
)


@MANY
@given(st.lists(frames_of_containers, max_size=12), st.integers(1, 120), st.integers(0, 40))
def test_the_budget_refuses_what_it_refused_with_or_without_its_hooks(value: list[Any], items: int,
                                                                       maps: int) -> None:
    frame = msgpack.packb(value)
    got: Any
    want: Any
    try:
        got = decoder._unpack(frame, Limits(), items, maps)
    except WireError as exc:
        got = exc.reason
    try:
        want = reference.wire_unpack(frame, Limits(), items, maps)
    except WireError as exc:
        want = exc.reason
    assert got == want


def test_a_frame_of_empty_arrays_at_half_the_budget_is_taken_and_past_it_refused() -> None:
    # [[], [], ...]: every empty array costs the budget 1, the outer array its length + 1.
    for count in range(1, 40):
        frame = msgpack.packb([[]] * count)
        items = 2 * count + 1
        assert decoder._unpack(frame, Limits(), items) == [[]] * count
        with pytest.raises(WireError):
            decoder._unpack(frame, Limits(), items - 1)
        with pytest.raises(WireError):
            reference.wire_unpack(frame, Limits(), items - 1)


def test_the_walk_still_names_the_path_of_what_it_refuses() -> None:
    blob = msgpack.packb({"a": {"b": [1, math.inf]}})
    with pytest.raises(WireError, match=r"data: inf is not JSON-compatible"):
        records._data(blob, Limits())
    with pytest.raises(SessionDataError, match=r"session\['a'\]\['b'\]\[1\]"):
        scan_data(msgpack.unpackb(blob), MAX_DEPTH, MAX_ITEMS)
