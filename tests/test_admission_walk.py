"""The data rule's walk and the field rule, made faster, refuse exactly what they refused, with the same words.

``memsession.admission.scan_data`` checks scalars inside its loops and calls
itself only for containers; ``field_fault`` tests the usual fields in one
expression; ``RecordRules.admit`` skips the stamps check and the expiry
bound where they can't find anything. The code as it was is the reference
model (``tests.data_rule_reference``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memsession.admission import MAX_DEPTH, MAX_ITEMS, MAX_VERSION, RecordRules, field_fault, scan_data
from memsession.errors import RecordRefused, SessionDataError
from memsession.session import Record
from tests import data_rule_reference as reference

_INT_MIN = -(1 << 63)
_U64 = (1 << 64) - 1
MANY = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WALL = 1_700_000_000.0


class Text(str):
    pass


class Number(int):
    pass


class Mapping(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([_INT_MIN, _INT_MIN - 1, _U64, _U64 + 1, 1 << 70]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.binary(max_size=4),
    st.sampled_from([bytearray(b"x"), Text("t"), Number(3), frozenset(), {1, 2}, object(), 1j, math.nan]),
)
keys = st.one_of(st.text(max_size=5), st.sampled_from([1, None, b"k", (1,), Text("k"), 2.5, True]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.lists(inner, max_size=4).map(tuple), st.lists(inner, max_size=3).map(Items),
    st.dictionaries(st.text(max_size=5), inner, max_size=5), st.dictionaries(keys, inner, max_size=3),
    st.dictionaries(st.text(max_size=3), inner, max_size=3).map(Mapping),
), max_leaves=50)
sessions = st.one_of(st.dictionaries(st.text(max_size=6), values, max_size=8),
                     st.dictionaries(keys, values, max_size=4),
                     st.dictionaries(st.text(max_size=4), values, max_size=4).map(OrderedDict))


def verdict(scan: Any, data: Any, max_depth: int, max_items: int) -> tuple[str, Any]:
    try:
        return "flat" if scan(data, max_depth, max_items) else "nested", None
    except SessionDataError as exc:
        return "refused", (exc.path, exc.reason)


@MANY
@given(sessions, st.integers(0, 6) | st.just(MAX_DEPTH), st.integers(0, 60) | st.just(MAX_ITEMS))
def test_the_walk_takes_and_refuses_what_it_did_naming_the_same_path(data: Any, max_depth: int,
                                                                      max_items: int) -> None:
    assert verdict(scan_data, data, max_depth, max_items) == verdict(reference.scan_data, data, max_depth, max_items)


def chain(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {"k": value} if i % 3 == 0 else ([value] if i % 3 == 1 else (value,))
    return value


@given(st.integers(0, MAX_DEPTH + 3), st.sampled_from([1, math.inf, b"x", {1}, None]), st.integers(0, MAX_DEPTH + 2))
@example(MAX_DEPTH - 1, 1, MAX_DEPTH)
@example(MAX_DEPTH, 1, MAX_DEPTH)
@example(MAX_DEPTH - 1, math.nan, MAX_DEPTH)
def test_depth_limits_and_bad_leaves_deep_down_are_found_as_before(depth: int, leaf: Any, max_depth: int) -> None:
    data = {"top": chain(depth, leaf)}
    assert verdict(scan_data, data, max_depth, MAX_ITEMS) == verdict(reference.scan_data, data, max_depth, MAX_ITEMS)


@pytest.mark.parametrize("count", [MAX_ITEMS - 1, MAX_ITEMS, MAX_ITEMS + 1])
def test_values_are_counted_at_every_depth_as_before(count: int) -> None:
    for data in ({"a": [0] * (count - 1)}, {"a": [[0] * (count - 3), {}]}, {str(i): 0 for i in range(count)}):
        got = verdict(scan_data, data, MAX_DEPTH, MAX_ITEMS)
        assert got == verdict(reference.scan_data, data, MAX_DEPTH, MAX_ITEMS)
        assert (got[0] != "refused") == (count <= MAX_ITEMS)


# -- the field rule ---------------------------------------------------------------------------

texts = st.one_of(st.text(max_size=3), st.sampled_from(["k" * 256, "k" * 257, "a\nb", "", "é" * 10, "\x00"]),
                  st.sampled_from([b"k", None, 5, Text("k")]))
ints = st.one_of(st.integers(-3, 3), st.sampled_from([MAX_VERSION, MAX_VERSION + 1, _INT_MIN, _INT_MIN - 1, _U64,
                                                      _U64 + 1, True, False, Number(5), 1.0, None]))
times = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([WALL, 0, 1, None, "1", True]))


@MANY
@given(texts, ints, ints, times, times, times, st.booleans(), st.sampled_from([256, 3, 0]))
def test_the_field_rule_says_what_it_said(key: Any, version: Any, origin: Any, created: Any, accessed: Any,
                                          expires: Any, deleted: bool, max_key: int) -> None:
    args = (key, version, origin, created, accessed, expires, deleted, max_key)
    assert field_fault(*args) == reference.field_fault(*args)


GOOD_FIELDS: tuple[Any, ...] = ("k" * 64, 5, 3, WALL, WALL, WALL + 60.0, False, 256)
BAD_FIELDS: list[tuple[int, list[Any]]] = [
    (0, ["", "k" * 257, "a\nb", b"k", None, Text("k")]),
    (1, [0, -1, MAX_VERSION + 1, True, 1.0, Number(5)]),
    (2, [_INT_MIN - 1, _U64 + 1, None, False]),
    (3, [math.nan, math.inf, -math.inf, 1, None]),
    (4, [math.nan, math.inf, -math.inf, 1, "x"]),
    (5, [math.nan, -math.nan, 1, None]),
]


@pytest.mark.parametrize(("at", "bad"), [(at, bad) for at, bads in BAD_FIELDS for bad in bads])
def test_each_bad_field_alone_is_named_as_before(at: int, bad: Any) -> None:
    args: list[Any] = list(GOOD_FIELDS)
    args[at] = bad
    assert field_fault(*args) == reference.field_fault(*args) is not None


def test_infinite_expiry_and_a_version_0_tombstone_pass_as_before() -> None:
    never_expires = GOOD_FIELDS[:5] + (math.inf,) + GOOD_FIELDS[6:]
    version_0_tombstone = GOOD_FIELDS[:1] + (0,) + GOOD_FIELDS[2:6] + (True, 256)
    for args in (never_expires, version_0_tombstone):
        assert field_fault(*args) is None and reference.field_fault(*args) is None


# -- admit: the checks it leaves out could not have refused anything -----------------------------


def live(**fields: Any) -> Record:
    values: dict[str, Any] = {"key": "k" * 64, "data": {"a": 1}, "version": (int(WALL * 1000) << 16) + 1, "origin": 3,
                              "created": WALL, "accessed": WALL, "expires": WALL + 60.0}
    values.update(fields)
    return Record(**values)


@pytest.mark.parametrize("rules", [RecordRules(), RecordRules(idle_timeout=30.0), RecordRules(max_age=10.0),
                                   RecordRules(idle_timeout=30.0, max_age=90.0)])
def test_expiry_is_clamped_to_local_timeouts_and_only_when_there_are_some(rules: RecordRules) -> None:
    record = live(expires=WALL + 1e9)
    admitted = rules.admit(record, WALL)
    bounds = [WALL + t for t in (rules.idle_timeout, rules.max_age) if t is not None]
    assert admitted.expires == (min(bounds) if bounds else record.expires)


@pytest.mark.parametrize("fields", [
    {"stamps": {"a": (1 << 70, 3)}}, {"stamps": {"b": (1, 3)}}, {"seen": {3: 1 << 70}}, {"seen": []},
        {"base": {3: 1}}, {"partial": True, "base": {3: 1 << 70}}, {"partial": True, "base": [(3, 1)]},
    {"partial": 1}, {"partial": None}, {"data": {"a": {1: 2}}}, {"data": {"a": [math.nan]}},
    {"data": {"a": chain(MAX_DEPTH)}}, {"created": math.inf}, {"version": 0}, {"key": "a\tb"},
])
def test_admit_still_refuses_what_a_door_must_not_let_in(fields: dict[str, Any]) -> None:
    with pytest.raises(RecordRefused):
        RecordRules().admit(live(**fields), WALL)


def test_admit_takes_a_record_with_stamps_seen_and_a_partial_flag() -> None:
    version = (int(WALL * 1000) << 16) + 5
    record = live(version=version, stamps={"a": (version, 3), "gone": (version - 1, 4)},
                  seen={3: version, 4: version - 1}, partial=True)
    assert RecordRules().admit(record, WALL) is record
