"""persist.base: the version guard and the JSON encoding of session data."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsession.errors import ConfigError
from memsession.session import Record, prepare_data
from memsession.testing import session_data
from persist.base import (
    MAX_VERSION,
    check_clear_version,
    cleared_by,
    coalesce,
    decode_data,
    encode_data,
    json_default,
    jsonable_data,
    make_record,
    record_from_json,
    record_to_json,
    supersedes,
)
from persist.testing import T0, make_test_record

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


@given(st.lists(records, max_size=8), st.randoms())
def test_coalesce_is_order_free_while_no_tombstone_is_dead(batch: list[Record], rnd) -> None:
    """Without a tombstone that died before a later write, the winner doesn't depend on order.

    (A dead tombstone lets the next live write through, whatever came before it:
    the same happens to a cache once the tombstone is swept.)
    """
    dead = any(t.deleted and any(t.expires <= r.accessed for r in batch) for t in batch)
    if not batch or dead:
        return
    shuffled = list(batch)
    rnd.shuffle(shuffled)

    def ident(r: Record) -> tuple:  # a real writer never issues two records with one identity
        return (r.version, r.origin, r.accessed, r.deleted)

    assert ident(coalesce(batch)["k"]) == ident(coalesce(shuffled)["k"])
    winner = coalesce(batch)["k"]
    assert winner in batch
    assert not any(supersedes(r, winner) for r in batch)


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
