"""The store contract suite: every adapter, ours or yours, passes the same tests.

Subclass ``StoreContract`` in a pytest module and provide one fixture,
``make_store``: a callable returning a new store over the same backing data
each time it is called within a test, with that data empty at the start of
each test (a fresh file, table or database)::

    import pytest
    from persist.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def make_store(self, tmp_path):
            return lambda: MyStore(tmp_path / "sessions.db")

Stores the suite makes are closed at the end of each test. Reopening (for
the durability checks, ``clear``'s watermark among them) closes a store and
calls ``make_store`` again.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from memsession.errors import StoreClosed
from memsession.session import Record, is_flat, prepare_data

from .base import Store, supersedes

__all__ = ["StoreContract", "make_test_record"]

#: A wall time with more digits than a microsecond timestamp keeps.
T0 = 1_763_900_000.123_456_7


def make_test_record(
    key: str,
    data: dict[str, Any] | None = None,
    *,
    version: int = 1 << 40,
    origin: int = 7,
    created: float = T0,
    accessed: float | None = None,
    expires: float | None = None,
    deleted: bool = False,
) -> Record:
    """A valid record with sensible defaults (expires an hour after ``T0``)."""
    data = {} if deleted else ({"user": key} if data is None else data)
    copy, size, flat = prepare_data(data, 1 << 24)
    accessed = created if accessed is None else accessed
    return Record(
        key,
        copy,
        version,
        origin,
        created,
        accessed,
        created + 3600.0 if expires is None else expires,
        deleted,
        flat,
        size,
    )


def _key(n: int | str) -> str:
    return f"sid-{n}"


class StoreContract:
    """What every ``persist.base.Store`` must do. Subclasses provide ``make_store``."""

    #: Records in the large-batch test.
    batch_size = 10_000
    #: Threads and rounds in the concurrent-writers test.
    writer_threads = 4
    writer_rounds = 60

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        raise NotImplementedError("subclasses provide a make_store fixture")

    @pytest.fixture
    def _opened(self, make_store: Callable[[], Store]) -> Iterator[Callable[[], Store]]:
        made: list[Store] = []

        def opener() -> Store:
            store = make_store()
            made.append(store)
            return store

        yield opener
        for store in made:
            store.close()

    @pytest.fixture
    def store(self, _opened: Callable[[], Store]) -> Store:
        return _opened()

    @pytest.fixture
    def reopen(self, _opened: Callable[[], Store]) -> Callable[[Store], Store]:
        """Close a store and open a new one over the same data."""

        def reopen(store: Store) -> Store:
            store.close()
            return _opened()

        return reopen

    # -- basics ------------------------------------------------------------------

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

    # -- the version guard -------------------------------------------------------

    def test_older_write_after_newer_loses(self, store: Store) -> None:
        new = make_test_record(_key(1), {"v": "new"}, version=200)
        old = make_test_record(_key(1), {"v": "old"}, version=100)
        assert store.save([new]) == 1
        assert store.save([old]) == 0
        assert store.load(_key(1)) == new

    def test_newer_write_replaces(self, store: Store) -> None:
        old = make_test_record(_key(1), {"v": "old"}, version=100)
        new = make_test_record(_key(1), {"v": "new"}, version=200, accessed=T0 + 5)
        store.save([old])
        assert store.save([new]) == 1
        assert store.load(_key(1)) == new

    def test_origin_breaks_version_ties(self, store: Store) -> None:
        low = make_test_record(_key(1), {"o": "low"}, version=100, origin=1)
        high = make_test_record(_key(1), {"o": "high"}, version=100, origin=2)
        store.save([high])
        assert store.save([low]) == 0
        assert store.load(_key(1)) == high

    def test_touch_with_same_version_slides_expiry(self, store: Store) -> None:
        first = make_test_record(_key(1), version=100)
        touched = first.touched(T0 + 60, T0 + 60 + 3600)
        store.save([first])
        assert store.save([touched]) == 1
        assert store.load(_key(1)) == touched
        assert store.save([first]) == 0
        assert store.load(_key(1)) == touched

    def test_same_record_twice_writes_once(self, store: Store) -> None:
        record = make_test_record(_key(1))
        assert store.save([record]) == 1
        assert store.save([record]) == 0

    def test_tombstone_beats_newer_live_version(self, store: Store) -> None:
        tomb = make_test_record(_key(1), version=100, deleted=True, accessed=T0, expires=T0 + 600)
        late = make_test_record(_key(1), {"late": True}, version=500, accessed=T0 + 1)
        store.save([tomb])
        assert store.save([late]) == 0
        assert store.load(_key(1)) == tomb

    def test_tombstone_replaces_live(self, store: Store) -> None:
        live = make_test_record(_key(1), version=500)
        tomb = make_test_record(_key(1), version=100, deleted=True, expires=T0 + 600)
        store.save([live])
        assert store.save([tomb]) == 1
        loaded = store.load(_key(1))
        assert loaded == tomb and loaded is not None and loaded.deleted and loaded.data == {}

    def test_live_write_after_dead_tombstone_wins(self, store: Store) -> None:
        tomb = make_test_record(_key(1), version=100, deleted=True, expires=T0 + 600)
        reborn = make_test_record(_key(1), version=50, created=T0 + 601)
        store.save([tomb])
        assert store.save([reborn]) == 1
        assert store.load(_key(1)) == reborn

    def test_batch_keeps_the_winner_per_key(self, store: Store) -> None:
        versions = [make_test_record(_key(1), {"v": v}, version=v) for v in (3, 9, 1, 7)]
        store.save(versions)
        loaded = store.load(_key(1))
        assert loaded is not None and loaded.data == {"v": 9}

    def test_guard_matches_supersedes(self, store: Store) -> None:
        rng = random.Random(4)
        stored: dict[str, Record | None] = {}
        for i in range(300):
            key = _key(rng.randrange(8))
            record = make_test_record(
                key,
                {"i": i},
                version=rng.randrange(1, 6),
                origin=rng.randrange(1, 3),
                accessed=T0 + rng.randrange(0, 5),
                expires=T0 + rng.randrange(3, 9),
                deleted=rng.random() < 0.2,
            )
            expected = supersedes(record, stored.get(key))
            assert store.save([record]) == int(expected), (i, record, stored.get(key))
            if expected:
                stored[key] = record
        for key, kept in stored.items():
            assert store.load(key) == kept

    # -- load_all, delete, purge ------------------------------------------------

    def test_load_all_streams_unexpired_records_and_tombstones(self, store: Store) -> None:
        live = make_test_record(_key("live"), expires=T0 + 100)
        dead = make_test_record(_key("dead"), expires=T0 + 10)
        tomb = make_test_record(_key("tomb"), deleted=True, expires=T0 + 100)
        forever = make_test_record(_key("forever"), expires=math.inf)
        store.save([live, dead, tomb, forever])
        stream = store.load_all(T0 + 50)
        assert iter(stream) is stream
        assert sorted(stream, key=lambda r: r.key) == sorted([live, tomb, forever], key=lambda r: r.key)
        assert {r.key for r in store.load_all(T0 + 10)} == {live.key, tomb.key, forever.key}

    def test_delete_removes_outright(self, store: Store) -> None:
        records = [make_test_record(_key(i)) for i in range(3)]
        store.save(records)
        assert store.delete([_key(0), _key(2), _key("absent")]) == 2
        assert store.load(_key(0)) is None and store.load(_key(2)) is None
        assert store.load(_key(1)) == records[1]
        assert store.delete([]) == 0
        assert store.save([records[0]]) == 1

    def test_purge_removes_expired_records_and_tombstones(self, store: Store) -> None:
        store.save(
            [
                make_test_record(_key("a"), expires=T0 + 10),
                make_test_record(_key("b"), expires=T0 + 20),
                make_test_record(_key("t"), deleted=True, expires=T0 + 10),
                make_test_record(_key("c"), expires=T0 + 30),
                make_test_record(_key("inf"), expires=math.inf),
            ]
        )
        assert store.purge(T0 + 20) == 3
        assert store.load(_key("a")) is None and store.load(_key("t")) is None
        assert store.load(_key("b")) is None
        assert store.load(_key("c")) is not None and store.load(_key("inf")) is not None
        assert store.purge(T0 + 20) == 0
        assert {r.key for r in store.load_all(0.0)} == {_key("c"), _key("inf")}

    def test_large_batch(self, store: Store, reopen: Callable[[Store], Store]) -> None:
        n = self.batch_size
        records = [
            make_test_record(_key(i), {"user": i, "roles": ["a", "b"], "blob": b"x" * (i % 7)}, expires=T0 + i)
            for i in range(n)
        ]
        assert store.save(records) == n
        assert store.save(records) == 0
        again = reopen(store)
        assert sum(1 for _ in again.load_all(T0 + n // 2 - 0.5)) == n - n // 2
        for i in (0, n // 3, n - 1):
            assert again.load(_key(i)) == records[i]
        assert again.purge(T0 + n // 2 - 0.5) == n // 2
        assert sum(1 for _ in again.load_all(0.0)) == n - n // 2

    def test_concurrent_writers_keep_the_newest(self, store: Store) -> None:
        keys = [_key(i) for i in range(20)]
        errors: list[BaseException] = []
        start = threading.Barrier(self.writer_threads)

        def writer(origin: int) -> None:
            rng = random.Random(origin)
            try:
                start.wait()
                for _ in range(self.writer_rounds):
                    batch = [
                        make_test_record(k, {"by": origin, "v": v}, version=v, origin=origin)
                        for k in rng.sample(keys, 5)
                        for v in [rng.randrange(1, 1000)]
                    ]
                    store.save(batch)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(o,)) for o in range(1, self.writer_threads + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        best: dict[str, tuple[int, int]] = {}
        for origin in range(1, self.writer_threads + 1):
            rng = random.Random(origin)
            for _ in range(self.writer_rounds):
                for k in rng.sample(keys, 5):
                    v = rng.randrange(1, 1000)
                    best[k] = max(best.get(k, (0, 0)), (v, origin))
        for key, (version, origin) in best.items():
            loaded = store.load(key)
            assert loaded is not None
            assert (loaded.version, loaded.origin) == (version, origin)
            assert loaded.data == {"by": origin, "v": version}

    # -- lifecycle ---------------------------------------------------------------

    def test_data_survives_reopen(self, store: Store, reopen: Callable[[Store], Store]) -> None:
        records = [make_test_record(_key(i)) for i in range(5)]
        store.save(records)
        again = reopen(store)
        assert sorted(again.load_all(0.0), key=lambda r: r.key) == sorted(records, key=lambda r: r.key)

    def test_closed_store_raises_store_closed(self, store: Store) -> None:
        record = make_test_record(_key(1))
        store.save([record])
        store.close()
        store.close()
        for call in (
            lambda: store.load(record.key),
            lambda: list(store.load_all(0.0)),
            lambda: store.save([record]),
            lambda: store.delete([record.key]),
            lambda: store.purge(T0),
            lambda: store.clear(1),
        ):
            with pytest.raises(StoreClosed) as info:
                call()
            assert info.value.store == store.name

    # -- clear: the watermark ------------------------------------------------------

    def test_clear_removes_live_records_at_or_below_the_version_and_keeps_tombstones(self, store: Store) -> None:
        below = make_test_record(_key("below"), version=100)
        at = make_test_record(_key("at"), version=200)
        tomb = make_test_record(_key("tomb"), version=150, deleted=True)
        tomb_at = make_test_record(_key("tomb-at"), version=200, deleted=True)
        above = make_test_record(_key("above"), version=201)
        tomb_above = make_test_record(_key("tomb-above"), version=300, deleted=True)
        forever = make_test_record(_key("forever"), version=50, expires=math.inf)
        store.save([below, at, tomb, tomb_at, above, tomb_above, forever])
        assert store.clear(200) == 3
        for gone in (below, at, forever):
            assert store.load(gone.key) is None
        for kept in (tomb, tomb_at, above, tomb_above):
            assert store.load(kept.key) == kept
        assert sorted(r.key for r in store.load_all(0.0)) == sorted(
            r.key for r in (tomb, tomb_at, above, tomb_above)
        )
        assert store.clear(200) == 0

    def test_clear_of_an_empty_store(self, store: Store) -> None:
        assert store.clear(0) == 0
        assert store.clear(500) == 0
        assert list(store.load_all(0.0)) == []

    def test_clear_at_zero_clears_nothing(self, store: Store) -> None:
        record = make_test_record(_key(1), version=1)
        store.save([record])
        assert store.clear(0) == 0
        assert store.load(record.key) == record
        assert store.save([make_test_record(_key(2), version=1)]) == 1

    def test_a_tombstone_a_clear_kept_still_beats_a_later_live_record_above_it(self, store: Store) -> None:
        """The destroy beat a newer live write before the clear; the clear must not undo that."""
        beaten = make_test_record(_key("beaten"), {"n": 300}, version=300)
        tomb = make_test_record(_key("beaten"), version=120, deleted=True, accessed=T0, expires=T0 + 600)
        store.save([beaten])
        assert store.save([tomb]) == 1
        lone = make_test_record(_key("lone"), version=150, deleted=True, accessed=T0, expires=T0 + 600)
        store.save([lone])
        assert store.clear(200) == 0
        # Late copies of live writes above the watermark: a retried batch, another writer.
        assert store.save([beaten]) == 0
        assert store.save([make_test_record(_key("lone"), version=250, accessed=T0 + 1)]) == 0
        assert store.load(tomb.key) == tomb and store.load(lone.key) == lone
        assert sorted(r.key for r in store.load_all(0.0)) == sorted([tomb.key, lone.key])

    def test_save_after_clear_writes_tombstones_at_or_below_the_watermark(self, store: Store) -> None:
        above = make_test_record(_key("above"), {"v": 300}, version=300)
        store.save([above, make_test_record(_key("old"), version=100)])
        store.clear(200)
        # A destroy from before the clear that arrives late beats the live record above it.
        late_tomb = make_test_record(_key("above"), version=120, deleted=True, expires=T0 + 600)
        assert store.save([late_tomb]) == 1
        assert store.load(above.key) == late_tomb
        assert store.save([above]) == 0
        assert store.load(above.key) == late_tomb
        # New keys, the watermark itself, a key whose live record the clear removed.
        tombs = [
            make_test_record(_key("new"), version=150, deleted=True, expires=T0 + 600),
            make_test_record(_key("at"), version=200, deleted=True, expires=T0 + 600),
            make_test_record(_key("old"), version=90, deleted=True, expires=T0 + 600),
        ]
        assert store.save(tombs) == 3
        for tomb in tombs:
            assert store.load(tomb.key) == tomb
        # Tombstones among themselves: the usual version guard.
        assert store.save([make_test_record(_key("new"), version=140, deleted=True, expires=T0 + 900)]) == 0
        newer = make_test_record(_key("new"), version=160, deleted=True, expires=T0 + 900)
        assert store.save([newer]) == 1
        assert store.load(newer.key) == newer
        assert sorted(r.key for r in store.load_all(0.0)) == sorted(_key(k) for k in ("above", "new", "at", "old"))

    def test_save_after_clear_ignores_live_records_at_or_below_the_watermark(self, store: Store) -> None:
        kept = make_test_record(_key("kept"), {"v": 300}, version=300)
        store.save([kept, make_test_record(_key("old"), version=100)])
        store.clear(200)
        late_new_key = make_test_record(_key("new"), version=150)
        late_at = make_test_record(_key("at"), version=200)
        late_old_key = make_test_record(_key("old"), version=180)
        assert store.save([late_new_key]) == 0
        assert store.save([late_at, late_old_key]) == 0
        for key in (late_new_key.key, late_at.key, late_old_key.key):
            assert store.load(key) is None
        assert store.load(kept.key) == kept
        fresh = make_test_record(_key("old"), {"v": 201}, version=201)
        mixed = [make_test_record(_key("mixed-old"), version=199), fresh]
        assert store.save(mixed) == 1
        assert store.load(_key("mixed-old")) is None and store.load(fresh.key) == fresh
        assert sorted(r.key for r in store.load_all(0.0)) == sorted([kept.key, fresh.key])

    def test_touch_of_a_cleared_session_does_not_bring_it_back(self, store: Store) -> None:
        record = make_test_record(_key(1), version=100)
        store.save([record])
        store.clear(100)
        assert store.save([record.touched(T0 + 60, T0 + 3660)]) == 0
        assert store.load(record.key) is None

    def test_clear_and_a_late_batch_commute(self, store: Store) -> None:
        """The same batch saved before or after a clear leaves the same records."""

        def batch(side: str) -> list[Record]:
            def make(name: str, version: int, n: int = 0, deleted: bool = False) -> Record:
                return make_test_record(_key(f"{side}-{name}"), {"n": n}, version=version, deleted=deleted)

            return [
                make("old", 90),
                make("new", 110),
                make("dup", 80, 1),
                make("dup", 120, 2),
                # The batch's winner for "mixed" is the tombstone: kept whichever way.
                make("mixed", 130),
                make("mixed", 95, deleted=True),
                make("tomb", 105, deleted=True),
                make("tomb-low", 85, deleted=True),
            ]

        store.save(batch("before"))
        assert store.clear(100) == 1  # "old"
        store.save(batch("after"))
        before = {r.key.replace("before-", ""): r for r in store.load_all(0.0) if "before-" in r.key}
        after = {r.key.replace("after-", ""): r for r in store.load_all(0.0) if "after-" in r.key}
        assert sorted(before) == sorted(after) == sorted(_key(n) for n in ("new", "dup", "mixed", "tomb", "tomb-low"))
        for key, record in before.items():
            assert (record.version, record.data, record.deleted) == (
                after[key].version,
                after[key].data,
                after[key].deleted,
            )

    def test_watermark_only_rises(self, store: Store) -> None:
        store.save([make_test_record(_key("a"), version=250)])
        assert store.clear(300) == 1
        store.save([make_test_record(_key("b"), version=150)])
        assert store.clear(100) == 0
        assert store.save([make_test_record(_key("c"), version=200)]) == 0
        assert store.save([make_test_record(_key("d"), version=300)]) == 0
        assert store.save([make_test_record(_key("e"), version=301)]) == 1
        assert store.save([make_test_record(_key("f"), version=200, deleted=True)]) == 1
        assert sorted(r.key for r in store.load_all(0.0)) == [_key("e"), _key("f")]

    def test_watermark_survives_reopen(self, store: Store, reopen: Callable[[Store], Store]) -> None:
        kept = make_test_record(_key("kept"), version=500)
        tomb = make_test_record(_key("tomb"), version=100, deleted=True)
        store.save([make_test_record(_key("old"), version=100), kept, tomb])
        store.clear(200)
        again = reopen(store)
        assert again.load(_key("old")) is None and again.load(tomb.key) == tomb
        assert again.save([make_test_record(_key("old"), version=150)]) == 0
        assert again.save([make_test_record(_key("late"), version=200)]) == 0
        assert again.load(_key("old")) is None and again.load(_key("late")) is None
        assert again.save([make_test_record(tomb.key, version=300)]) == 0  # the tombstone still wins
        assert sorted(r.key for r in again.load_all(0.0)) == sorted([kept.key, tomb.key])
        assert again.clear(100) == 0
        third = reopen(again)
        assert third.load(tomb.key) == tomb
        assert third.save([make_test_record(_key("late"), version=199)]) == 0
        late_tomb = make_test_record(_key("old"), version=150, deleted=True)
        assert third.save([late_tomb]) == 1
        assert third.save([make_test_record(_key("late"), version=201)]) == 1
        assert reopen(third).load(late_tomb.key) == late_tomb

    def test_purge_and_delete_keep_the_watermark(self, store: Store) -> None:
        store.save([make_test_record(_key("a"), version=100)])
        store.clear(200)
        store.save([make_test_record(_key(i), version=300, expires=T0 + i) for i in range(3)])
        # Far in the future: every record is expired, the watermark is not a record.
        assert store.purge(T0 + 10**9) == 3
        assert store.purge(T0 + 10**9) == 0
        assert list(store.load_all(0.0)) == []
        assert store.save([make_test_record(_key("b"), version=150)]) == 0
        store.save([make_test_record(_key("c"), version=300)])
        assert store.delete([_key("c"), _key("b")]) == 1
        assert store.save([make_test_record(_key("c"), version=190)]) == 0
        assert list(store.load_all(0.0)) == []

    def test_purge_removes_lapsed_tombstones_a_clear_kept_and_the_watermark_stays(self, store: Store) -> None:
        lapsing = make_test_record(_key("lapsing"), version=100, deleted=True, expires=T0 + 10)
        lasting = make_test_record(_key("lasting"), version=120, deleted=True, expires=T0 + 1000)
        store.save([lapsing, lasting, make_test_record(_key("live"), version=150)])
        assert store.clear(200) == 1
        assert store.load(lapsing.key) == lapsing
        assert store.purge(T0 + 10) == 1
        assert store.load(lapsing.key) is None and store.load(lasting.key) == lasting
        # The watermark outlives the tombstone: a late live write at or below it stays out.
        assert store.save([make_test_record(_key("lapsing"), version=150, created=T0 + 20)]) == 0
        assert store.load(lapsing.key) is None
        assert [r.key for r in store.load_all(0.0)] == [lasting.key]
        assert store.purge(T0 + 1000) == 1
        assert list(store.load_all(0.0)) == []
        assert store.save([make_test_record(_key("live"), version=200)]) == 0
        assert store.save([make_test_record(_key("live"), version=201)]) == 1

    @pytest.mark.parametrize("bad", [-1, True, 1.0, "7", None, 1 << 63])
    def test_clear_refuses_a_bad_version(self, store: Store, bad: Any) -> None:
        record = make_test_record(_key(1), version=100)
        store.save([record])
        with pytest.raises(ValueError):
            store.clear(bad)
        assert store.load(record.key) == record
