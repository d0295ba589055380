"""Contract: ``clear`` and its watermark, which later saves, purges and reopening respect."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from memsession.session import Record

from ..base import Store
from .records import T0, _key, make_test_record

__all__ = ["ClearContract"]


class ClearContract:
    """``clear(version)`` removes live records at or below it and keeps them out for good."""

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
        # Tombstones among themselves: the usual merge (the newer wins).
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
