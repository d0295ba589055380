"""Contract: what a store saves it loads back exactly, every value type, text and time included."""

from __future__ import annotations

import math
from collections.abc import Callable

from memsession.session import is_flat

from ..base import Store
from .records import T0, _key, make_test_record

__all__ = ["RoundTripContract"]


class RoundTripContract:
    """Saving, loading and reopening keep records and their data exactly."""

    def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert isinstance(store.name, str) and store.name

    def test_load_unknown_is_none(self, store: Store) -> None:
        assert store.load(_key("nobody")) is None

    def test_save_then_load(self, store: Store) -> None:
        record = make_test_record(_key(1), {"user": "ada", "n": 3})
        assert store.save([record]) == 1
        assert store.load(record.key) == record

    def test_empty_batch(self, store: Store) -> None:
        assert store.save([]) == 0

    def test_every_value_type_round_trips(self, store: Store, reopen: Callable[[Store], Store]) -> None:
        data = {
            "str": "plain",
            "empty": "",
            "int": 42,
            "neg": -7,
            "i64_min": -(1 << 63),
            "i64_max": (1 << 63) - 1,
            "u64_max": (1 << 64) - 1,
            "beyond_double": (1 << 53) + 1,
            "float": 0.1,
            "tiny": 5e-324,
            "huge": 1.7976931348623157e308,
            "third": 1 / 3,
            "whole_float": 2.0,
            "neg_zero": -0.0,
            "true": True,
            "false": False,
            "none": None,
            "bytes": b"\x00\xff\xfe binary \x80",
            "no_bytes": b"",
            "list": [1, "two", 3.5, None, [b"\x01"], {"k": b"v"}],
            "nested": {"a": {"b": {"c": [1, {"d": True}]}}},
            "empty_list": [],
            "empty_dict": {},
            "tag_like_bytes": {"$bytes": "AAAA"},
            "tag_like_dict": {"$dict": {"x": 1}},
            "tag_like_int": {"$int": "5"},
            "tag_like_float": {"$float": "1.0"},
            "dollar_keys": {"$set": 1, "$bytes": "x", "$dict": 2},
            "$top": "dollar key at top level",
        }
        flat = {"s": "x", "i": 1, "f": 2.5, "whole": 3.0, "b": b"\x00", "n": None, "big": (1 << 64) - 1}
        tag_top = {"$bytes": "not bytes"}
        records = [
            make_test_record(_key("nested"), data),
            make_test_record(_key("flat"), flat),
            make_test_record(_key("tagtop"), tag_top),
            make_test_record(_key("empty"), {}),
        ]
        assert store.save(records) == 4
        for candidate in (store, None):
            candidate = candidate or reopen(store)
            for record in records:
                loaded = candidate.load(record.key)
                assert loaded == record
                assert loaded is not None
                assert loaded.flat == is_flat(loaded.data)
                assert loaded.size == record.size
                for name, value in record.data.items():
                    assert type(loaded.data[name]) is type(value), name
                if "neg_zero" in record.data:
                    assert math.copysign(1.0, loaded.data["neg_zero"]) == -1.0

    def test_unicode_round_trips(self, store: Store, reopen: Callable[[Store], Store]) -> None:
        data = {
            "emoji": "😀🚀 family: 👨‍👩‍👧",
            "accents": "naïve café Ünïcödé",
            "cjk": "会话数据",
            "rtl": "שלום مرحبا",
            "controls": "tab\tnewline\nquote\"backslash\\nul\x00bell\x07",
            "surrogate_free_astral": "\U0001f600\U00010348",
            "ключ": "значение",
            "line\nbreak key": 1,
        }
        record = make_test_record(_key("unicode-ü"), data)
        store.save([record])
        assert store.load(record.key) == record
        assert reopen(store).load(record.key) == record

    def test_times_preserved_exactly(self, store: Store, reopen: Callable[[Store], Store]) -> None:
        created = T0
        accessed = T0 + 12.345_678_912_3
        records = [
            make_test_record(_key("t1"), created=created, accessed=accessed, expires=accessed + 1800.000_000_1),
            make_test_record(_key("t2"), created=created, accessed=accessed, expires=math.inf),
        ]
        store.save(records)
        again = reopen(store)
        for record in records:
            loaded = again.load(record.key)
            assert loaded is not None
            assert (loaded.created, loaded.accessed, loaded.expires) == (
                record.created,
                record.accessed,
                record.expires,
            )
        assert {r.key for r in again.load_all(T0 + 10**9)} == {_key("t2")}
