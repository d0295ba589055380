"""persist.base: the merge every store applies, the watermark, and the JSON encoding of records."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgpack import packb

from memsession.changes import reflects, stamps_of
from memsession.errors import ConfigError, RecordRefused
from memsession.session import Record, prepare_data
from memsession.testing import session_data
from persist.base import (
    MAX_VERSION,
    after_clear,
    check_clear_version,
    cleared_by,
    coalesce,
    decode_data,
    encode_data,
    json_default,
    jsonable_data,
    make_record,
    merge_row,
    record_from_json,
    record_to_json,
    supersedes,
)
from persist.testing import T0, make_test_delta, make_test_record

records = st.builds(
    make_test_record,
    key=st.just("k"),
    version=st.integers(1, 5),
    origin=st.integers(1, 3),
    accessed=st.floats(T0, T0 + 5, allow_nan=False),
    expires=st.floats(T0 + 1, T0 + 9, allow_nan=False),
    deleted=st.booleans(),
)


@given(session_data())
def test_data_round_trips_through_json(data: dict) -> None:
    copy, _, flat = prepare_data(data, 1 << 24)
    assert decode_data(orjson.loads(encode_data(copy, flat))) == copy
    raw = encode_data(copy, flat)
    assert decode_data(orjson.loads(raw), raw) == copy


@given(session_data())
def test_data_round_trips_through_a_javascript_number_model(data: dict) -> None:
    """With safe_ints, nothing depends on JSON numbers beyond what a double holds exactly."""
    copy, _, flat = prepare_data(data, 1 << 24)
    text = orjson.dumps(jsonable_data(copy, flat, safe_ints=True), default=json_default)

    def as_double(value):
        if isinstance(value, dict):
            return {k: as_double(v) for k, v in value.items()}
        if isinstance(value, list):
            return [as_double(v) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
            return int(number) if number.is_integer() else number  # what JSON.stringify writes back
        return value

    assert decode_data(as_double(orjson.loads(text))) == copy


def test_tag_like_user_data_is_not_mistaken_for_tags() -> None:
    for data in ({"$bytes": "AAAA"}, {"x": {"$dict": {}}}, {"$int": "1"}, {"x": [{"$float": "1.0"}]}):
        for safe in (False, True):
            text = orjson.dumps(jsonable_data(data, safe_ints=safe), default=json_default)
            assert decode_data(orjson.loads(text)) == data


@pytest.mark.parametrize("bad", [{"$bytes": "!!"}, {"$dict": 3}, {"$int": "x"}, [1]])
def test_bad_tags_are_value_errors(bad) -> None:
    with pytest.raises(ValueError):
        decode_data({"v": bad} if isinstance(bad, dict) else bad)


@given(records, records)
def test_supersedes_is_antisymmetric(a: Record, b: Record) -> None:
    assert not (supersedes(a, b) and supersedes(b, a)) or a.deleted != b.deleted


def _change(key: str, version: int, origin: int, accessed: float, deleted: bool, fields: list[str],
            partial: bool) -> Record:
    """A record whose values follow from its stamp (one stamp, one change) and whose expiry from its access."""
    data = {name: f"{name}{version}.{origin}" for name in fields}
    if partial and not deleted:
        return make_test_delta(key, data, version=version, origin=origin, accessed=accessed)
    return make_test_record(key, data, version=version, origin=origin, accessed=accessed,
                            expires=accessed + 3600.0, deleted=deleted)


changes = st.builds(
    _change,
    key=st.just("k"),
    version=st.integers(1, 5),
    origin=st.integers(1, 3),
    accessed=st.sampled_from([T0, T0 + 1, T0 + 2]),
    deleted=st.booleans(),
    fields=st.lists(st.sampled_from("abc"), unique=True, max_size=3),
    partial=st.booleans(),
)


@given(st.lists(changes, max_size=8), st.randoms())
def test_coalesce_merges_a_batch_in_any_order_while_no_tombstone_is_dead(batch: list[Record], rnd) -> None:
    """Without a tombstone that died before a later write, the merge of a batch doesn't depend on order.

    (A dead tombstone lets the next live write through, whatever came before it:
    the same happens to a cache once the tombstone is swept.)
    """
    dead = any(t.deleted and any(t.expires <= r.accessed for r in batch) for t in batch)
    if not batch or dead:
        return
    shuffled = list(batch)
    rnd.shuffle(shuffled)
    merged = coalesce(batch)["k"]
    assert merge_row(None, coalesce(shuffled)["k"]) == merge_row(None, merged)
    if not merged.deleted:
        # Every change of the batch is in it: each key holds the value of its highest stamp.
        for record in batch:
            assert reflects(merged, record.version, record.origin)
            for name, stamp in stamps_of(record).items():
                assert stamps_of(merged)[name] >= stamp
    assert merge_row(None, merged) is not None and not merge_row(None, merged).partial


def test_merge_row_ignores_what_the_watermark_covers() -> None:
    old = make_test_record("k", {"user": "ada"}, version=100)
    assert merge_row(None, old, cleared=100) is None
    assert merge_row(old, make_test_delta("k", {"cart": 1}, version=150), cleared=200) is None
    tomb = make_test_record("k", version=50, deleted=True)
    assert merge_row(old, tomb, cleared=200) == tomb  # a tombstone passes, whatever its version
    row = merge_row(old, make_test_delta("k", {"cart": 1}, version=300), cleared=200)
    assert row is not None and row.data == {"cart": 1} and row.stamps is None and not row.partial
    # A stored live record the watermark covers (slipped in) counts as nothing stored.
    assert merge_row(old, make_test_delta("k", {"n": 1}, version=300), cleared=100) == merge_row(
        None, make_test_delta("k", {"n": 1}, version=300)
    )


def test_after_clear_drops_the_keys_a_watermark_covers() -> None:
    whole = make_test_record("k", {"user": "ada"}, version=100)
    merged = merge_row(merge_row(None, whole), make_test_delta("k", {"cart": 1}, removed=["x"], version=300))
    assert merged is not None
    assert after_clear(merged, 0) is merged and after_clear(merged, 99) is merged
    kept = after_clear(merged, 100)
    assert kept is not None and kept.data == {"cart": 1} and kept.stamps == {"cart": (300, 7), "x": (300, 7)}
    assert kept.size == len(packb({"cart": 1})) and kept.flat
    assert after_clear(merged, 300) is None
    assert after_clear(whole, 50) is whole  # no stamps: every key at the record's version
    tomb = make_test_record("k", version=5, deleted=True)
    assert after_clear(tomb, 100) is tomb


def test_record_json_round_trip_keeps_infinity_and_bytes() -> None:
    record = make_test_record("k", {"b": b"\x00\xff"}, expires=math.inf)
    again = record_from_json(record_to_json(record))
    assert again == record and again.size == record.size and again.flat


@pytest.mark.parametrize(
    "fields",
    [
        ("", {}, 1, 1, 0.0, 0.0, 1.0, False),
        ("k", {}, "1", 1, 0.0, 0.0, 1.0, False),
        ("k", {}, 1, 1, "now", 0.0, 1.0, False),
        ("k", {}, 1, 1, 0.0, 0.0, 1.0, "no"),
    ],
)
def test_make_record_checks_stored_fields(fields) -> None:
    with pytest.raises(ValueError):
        make_record(*fields)


def test_cleared_by_covers_live_records_up_to_the_watermark_itself() -> None:
    assert cleared_by(make_test_record("k", version=5), 5)
    assert cleared_by(make_test_record("k", version=4), 5)
    assert not cleared_by(make_test_record("k", version=6), 5)
    assert not cleared_by(make_test_record("k", version=1), 0)  # 0: never cleared


@pytest.mark.parametrize("version", [1, 5, 6])
def test_cleared_by_never_covers_a_tombstone(version: int) -> None:
    """A tombstone beats any live version, so one at or below a clear may guard a session above it."""
    assert not cleared_by(make_test_record("k", version=version, deleted=True), 5)


@pytest.mark.parametrize("good", [0, 1, 1 << 40, MAX_VERSION])
def test_clear_versions_in_range_pass(good: int) -> None:
    assert check_clear_version(good) == good


@pytest.mark.parametrize("bad", [-1, MAX_VERSION + 1, True, False, 1.0, "1", None])
def test_clear_versions_out_of_range_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        check_clear_version(bad, "mine")
    assert info.value.option == "version" and "mine" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_stamps_and_seen_round_trip_through_record_json_and_partial_is_not_kept() -> None:
    row = merge_row(make_test_record("k", {"a": 1}, version=100, origin=1),
                    make_test_delta("k", {"b": 2}, removed=["c"], version=200, origin=2))
    assert row is not None and row.stamps is not None and row.seen is not None
    assert record_from_json(record_to_json(row)) == row
    delta = make_test_delta("k", {"b": 2}, version=200)
    again = record_from_json(record_to_json(delta))
    assert again.partial is False and again.data == delta.data and again.stamps is None
    assert b'"s"' not in record_to_json(make_test_record("k")) and b'"w"' not in record_to_json(make_test_record("k"))


@pytest.mark.parametrize(
    ("stamps", "seen"),
    [
        ({"a": (101, 1)}, None),  # later than the record
        ({}, None),  # a key of data without a stamp
        (None, {1: 101}),
        (None, {1: 0}),  # no change has version 0
    ],
)
def test_make_record_runs_the_stamps_rule_on_live_records(stamps, seen) -> None:
    with pytest.raises(RecordRefused):
        make_record("k", {"a": 1}, 100, 1, T0, T0, T0 + 1, False, stamps, seen)
    # A tombstone's stamps take part in no merge: it loads as stored.
    tomb = make_record("k", {}, 100, 1, T0, T0, T0 + 1, True, stamps, seen)
    assert (tomb.stamps, tomb.seen) == (stamps, seen)
