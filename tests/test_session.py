"""Session ids, data rules, the expiry rule and the merge rule."""

from __future__ import annotations

import math
import re

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession import wire
from memsession.admission import scan_data
from memsession.errors import InvalidSessionId, SessionDataError, SessionTooLarge
from memsession.session import (
    SID_LENGTH,
    Record,
    check_sid,
    checked_key,
    compute_expires,
    copy_data,
    copy_tree,
    is_session_key,
    is_valid_sid,
    new_id,
    pack_data,
    prepare_data,
    prepare_packed,
    session_key,
    supersedes,
)
from memsession.testing import session_data


def test_new_ids_carry_256_bits_and_never_repeat():
    ids = {new_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == SID_LENGTH == 43 and is_valid_sid(i) for i in ids)


@pytest.mark.parametrize(
    "bad", ["", "short", "x" * 42, "x" * 44, "!" * 43, "é" * 43, None, 42, b"x" * 43, "a" * 42 + "\n"]
)
def test_malformed_ids_are_rejected(bad):
    assert not is_valid_sid(bad)
    with pytest.raises(InvalidSessionId):
        check_sid(bad)


# What an id and a key are, stated as the regular expressions the exact checks replace.
_SID = re.compile(r"[A-Za-z0-9_-]{43}")
_KEY = re.compile(r"[0-9a-f]{64}")
# Mostly the right alphabet, with the wrong characters that sit next to it in ASCII and beyond.
_near_id = st.text(alphabet="AZaz09_-+/=.~ \n\x00\x7f\x80é\ud800G", min_size=40, max_size=46) | st.text(max_size=50)
_near_key = st.text(alphabet="0123456789abcdefABCDEFg \x00é", min_size=62, max_size=66) | st.text(max_size=70)


@settings(deadline=None)  # no time limit per example: a loaded machine must not fail the test
@given(_near_id)
def test_the_id_check_accepts_exactly_43_characters_of_the_base64url_alphabet(text):
    valid = _SID.fullmatch(text) is not None
    assert is_valid_sid(text) is valid
    if valid:
        assert check_sid(text) == text and checked_key(text) == session_key(text)
    else:
        with pytest.raises(InvalidSessionId):
            check_sid(text)
        with pytest.raises(InvalidSessionId):
            checked_key(text)


@settings(deadline=None)  # no time limit per example: a loaded machine must not fail the test
@given(_near_key)
def test_the_key_check_accepts_exactly_64_lowercase_hex_digits(text):
    assert is_session_key(text) is (_KEY.fullmatch(text) is not None)


def test_keys_of_issued_ids_pass_the_key_check_and_are_never_ids():
    for sid in (new_id() for _ in range(200)):
        key = checked_key(sid)
        assert key == session_key(sid) and is_session_key(key) and not is_valid_sid(key)


@settings(deadline=None)  # no time limit per example: a loaded machine must not fail the test
@given(session_data())
def test_the_reused_packer_packs_as_packb_does(data):
    assert pack_data(data) == msgpack.packb(data, use_bin_type=True)


def test_a_failed_pack_leaves_nothing_behind_for_the_next():
    with pytest.raises(TypeError):
        pack_data({"a": [1, 2, object()]})
    assert pack_data({"b": 1}) == msgpack.packb({"b": 1}, use_bin_type=True)


class _Text(str):
    pass


_odd_values = st.one_of(st.integers(-(2**64), 2**65), st.floats(), st.builds(_Text, st.text(max_size=3)),
                        st.sets(st.integers(0, 2), max_size=1), st.lists(st.none(), max_size=2))
_odd_data = st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 2), st.builds(_Text, st.text(max_size=2))),
                            st.one_of(st.text(max_size=3), st.booleans(), st.none(), st.binary(max_size=3), _odd_values),
                            max_size=6)


@settings(deadline=None)  # no time limit per example: a loaded machine must not fail the test
@given(_odd_data | session_data(), st.integers(1, 8))
def test_set_takes_and_refuses_exactly_what_the_data_rule_does(data, max_items):
    """The set() door applies the data rule itself: the same data taken, the same refused at the same path."""
    try:
        expected = scan_data(data, 32, max_items)
    except SessionDataError as exc:
        with pytest.raises(SessionDataError) as info:
            prepare_packed(data, 1 << 20, max_items)
        assert info.value.path == exc.path
    else:
        _, _, flat = prepare_packed(data, 1 << 20, max_items)
        assert flat is expected


def _containers(value, out):
    if type(value) in (dict, list):
        out.append(value)
        for item in value.values() if type(value) is dict else value:
            _containers(item, out)
    return out


@settings(deadline=None)  # no time limit per example: a loaded machine must not fail the test
@given(session_data())
def test_a_tree_copy_equals_the_data_and_shares_no_container_with_it(data):
    copy, _, _ = prepare_data(data, 1 << 20)  # as records hold data: tuples already lists
    out = copy_tree(copy)
    assert out == copy
    held = {id(c) for c in _containers(copy, [])}
    assert not any(id(c) in held for c in _containers(out, []))


def test_invalid_id_error_does_not_echo_huge_input():
    with pytest.raises(InvalidSessionId) as info:
        check_sid("A" * 10_000)
    assert len(str(info.value)) < 100


@given(session_data())
def test_allowed_data_round_trips_as_a_private_copy(data):
    copy, size, flat = prepare_data(data, 1 << 20)
    assert copy == msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False)
    assert size == len(msgpack.packb(data, use_bin_type=True))
    assert copy is not data
    record = Record("k", copy, 1, 1, 0.0, 0.0, 1.0, flat=flat, size=size)
    out = copy_data(record)
    assert out == copy and out is not copy
    # the bytes the size is measured on are the ones the bus sends for this copy
    _, packed, _ = prepare_packed(data, 1 << 20)
    assert len(packed) == size and packed == wire.set_fields(record)[6]


def test_tuples_come_back_as_lists_as_from_json():
    copy, _, flat = prepare_data({"flashes": [("info", "hi")]}, 1024)
    assert copy == {"flashes": [["info", "hi"]]} and not flat


def test_nested_values_are_copied_deeply_so_callers_cannot_mutate_the_cache():
    original = {"cart": [1, 2]}
    copy, size, flat = prepare_data(original, 1024)
    original["cart"].append(3)
    assert copy == {"cart": [1, 2]}
    record = Record("k", copy, 1, 1, 0.0, 0.0, 1.0, flat=flat, size=size)
    handed_out = copy_data(record)
    handed_out["cart"].append(4)
    assert record.data == {"cart": [1, 2]}


@pytest.mark.parametrize(
    "data, path",
    [
        ({"a": object()}, "session['a']"),
        ({"a": {"b": [1, {2: "x"}]}}, "session['a']['b'][1][2]"),
        ({"a": [1, 2, {3.5}]}, "session['a'][2]"),
        ({"a": float("nan")}, "session['a']"),
        ({"a": float("inf")}, "session['a']"),
        ({"a": 2**64}, "session['a']"),
        ({"a": -(2**63) - 1}, "session['a']"),
        ({1: "x"}, "session[1]"),
        ({"a": bytearray(b"x")}, "session['a']"),
    ],
)
def test_bad_values_are_a_type_error_naming_the_key_path(data, path):
    with pytest.raises(TypeError) as info:
        prepare_data(data, 1 << 20)
    assert isinstance(info.value, SessionDataError)
    assert info.value.path == path
    assert path in str(info.value)


def test_data_must_be_a_mapping():
    with pytest.raises(SessionDataError):
        prepare_data([("a", 1)], 1024)  # type: ignore[arg-type]


def test_too_deep_nesting_is_refused_clearly():
    value: object = 1
    for _ in range(40):
        value = [value]
    with pytest.raises(SessionDataError, match="deeper"):
        prepare_data({"a": value}, 1 << 20)


def test_size_limit_counts_serialized_bytes():
    prepare_data({"a": "x" * 1000}, 1010)
    with pytest.raises(SessionTooLarge) as info:
        prepare_data({"a": "x" * 2000}, 1010)
    assert info.value.limit == 1010 and info.value.size > 2000
    assert isinstance(info.value, ValueError)


def test_expiry_rule():
    assert compute_expires(100, 150, 30, 1000) == 180
    assert compute_expires(100, 1090, 30, 1000) == 1100
    assert compute_expires(100, 150, None, 1000) == 1100
    assert compute_expires(100, 150, 30, None) == 180
    assert compute_expires(100, 150, None, None) == math.inf


def rec(version, origin=1, deleted=False):
    return Record("k", {}, version, origin, 0.0, 0.0, 10.0, deleted)


def test_merge_rule_tombstone_beats_any_live_version():
    assert supersedes(rec(1, deleted=True), rec(99))
    assert not supersedes(rec(99), rec(1, deleted=True))


def test_merge_rule_higher_version_then_origin_wins():
    assert supersedes(rec(2), rec(1))
    assert not supersedes(rec(1), rec(2))
    assert supersedes(rec(1, origin=2), rec(1, origin=1))
    assert not supersedes(rec(1, origin=1), rec(1, origin=1))
    assert supersedes(rec(1), None)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.booleans()), min_size=1, max_size=8),
       st.randoms())
def test_merge_rule_converges_whatever_the_order(records, rnd):
    """Replicas that see the same records in any order end with the same winner."""
    recs = [rec(v, o, d) for v, o, d in records]

    def merge(order):
        held = None
        for r in order:
            if supersedes(r, held):
                held = r
        return held

    shuffled = list(recs)
    rnd.shuffle(shuffled)
    assert merge(recs) == merge(shuffled)
