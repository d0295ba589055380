"""persist.jsonstamps: per-key stamps and seen as JSON, exact both ways, and what stored JSON may not be."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsession.errors import RecordRefused
from persist.jsonstamps import seen_from_json, seen_to_json, stamps_from_json, stamps_to_json

ints = st.integers(-(1 << 63), (1 << 64) - 1)
stamps = st.none() | st.dictionaries(st.text(max_size=8), st.tuples(ints, ints), max_size=6)
seens = st.none() | st.dictionaries(ints, ints, max_size=6)


@given(stamps, st.booleans())
def test_stamps_round_trip_through_json_text(value: dict[str, tuple[int, int]] | None, text: bool) -> None:
    again = stamps_from_json(orjson.loads(orjson.dumps(stamps_to_json(value, text=text))))
    assert again == value
    assert again is None or all(type(stamp) is tuple for stamp in again.values())


@given(seens, st.booleans())
def test_seen_round_trips_through_json_text(value: dict[int, int] | None, text: bool) -> None:
    assert seen_from_json(orjson.loads(orjson.dumps(seen_to_json(value, text=text)))) == value


def test_text_writes_every_number_as_a_decimal_string() -> None:
    assert stamps_to_json({"a": (1 << 62, -5)}, text=True) == {"a": [str(1 << 62), "-5"]}
    assert seen_to_json({-5: 1 << 62}, text=True) == {"-5": str(1 << 62)}
    assert stamps_to_json({"a": (1, 2)}) == {"a": [1, 2]} and seen_to_json({3: 4}) == {"3": 4}


@pytest.mark.parametrize(
    "bad",
    [[], "x", {"a": [1]}, {"a": [1, 2, 3]}, {"a": (1, 2)}, {"a": [1.0, 2]}, {"a": [True, 2]}, {"a": ["01", 2]},
     {"a": [1, "2x"]}, {"a": ["1" * 21, 2]}, {"a": {"v": 1}}],
)
def test_stamps_that_are_not_stamps_are_refused(bad: Any) -> None:
    with pytest.raises(RecordRefused):
        stamps_from_json(bad)


@pytest.mark.parametrize("bad", [[], 3, {"x": 1}, {"01": 1}, {"-0": 1}, {"1": 1.5}, {"1": None}, {"1": "x"}])
def test_seen_that_is_not_seen_is_refused(bad: Any) -> None:
    with pytest.raises(RecordRefused):
        seen_from_json(bad)
