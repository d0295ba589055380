"""Contract: a save merges per top-level key, so concurrent changes of one session's keys all survive."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import replace

from memsession.changes import reflects, seen_of, stamps_of
from memsession.errors import StoreUnavailable
from memsession.session import Record

from ..base import Store, merge_row
from .records import T0, _key, make_test_delta, make_test_record

__all__ = ["PerKeyContract"]


def _merged(*records: Record) -> Record:
    """What a store holds after saving ``records`` one by one onto nothing (``merge_row`` folded)."""
    stored: Record | None = None
    for record in records:
        stored = merge_row(stored, record) or stored
    assert stored is not None
    return stored


#: How often ``_save_retrying`` tries a batch that raised ``StoreUnavailable``.
_SAVE_TRIES = 20


def _save_retrying(store: Store, batch: list[Record]) -> int:
    """``store.save(batch)``, tried again on ``StoreUnavailable`` (up to ``_SAVE_TRIES`` times, then raised)."""
    for _ in range(_SAVE_TRIES - 1):
        try:
            return store.save(batch)
        except StoreUnavailable:
            continue
    return store.save(batch)


class PerKeyContract:
    """Saves merge with ``memsession.changes.merge_records``: per key the later change wins, nothing else is lost."""

    #: Threads and rounds in the concurrent-deltas test.
    delta_threads = 4
    delta_rounds = 40

    def test_a_delta_onto_a_record_keeps_its_other_keys(self, store: Store) -> None:
        whole = make_test_record(_key(1), {"user": "ada", "cart": [1]}, version=100)
        delta = make_test_delta(_key(1), {"cart": [1, 2]}, version=200)
        store.save([whole])
        assert store.save([delta]) == 1
        loaded = store.load(whole.key)
        assert loaded is not None and loaded.data == {"user": "ada", "cart": [1, 2]}
        assert dict(stamps_of(loaded)) == {"user": (100, 7), "cart": (200, 7)}
        assert (loaded.version, loaded.origin, loaded.partial) == (200, 7, False)
        assert loaded == _merged(whole, delta)
        assert store.save([delta]) == 0  # merging is idempotent

    def test_deltas_of_different_keys_both_survive_in_either_order(self, store: Store) -> None:
        def pair(name: str) -> tuple[Record, Record, Record]:
            key = _key(name)
            return (
                make_test_record(key, {"user": "ada"}, version=100, origin=1),
                make_test_delta(key, {"a": 1}, version=200, origin=1),
                make_test_delta(key, {"b": 2}, version=201, origin=2),
            )

        base, a, b = pair("ab")
        store.save([base])
        assert store.save([a]) == 1 and store.save([b]) == 1
        base_ba, a_ba, b_ba = pair("ba")
        store.save([base_ba])
        assert store.save([b_ba]) == 1 and store.save([a_ba]) == 1
        base_batch, a_batch, b_batch = pair("batch")
        assert store.save([base_batch, b_batch, a_batch]) == 1
        for key in (_key("ab"), _key("ba"), _key("batch")):
            loaded = store.load(key)
            assert loaded is not None and loaded.data == {"user": "ada", "a": 1, "b": 2}, key
            assert dict(seen_of(loaded)) == {1: 200, 2: 201}
            assert (loaded.version, loaded.origin) == (201, 2)
        assert store.load(base.key) == _merged(base, a, b)

    def test_deltas_of_different_keys_with_nothing_stored_both_survive(self, store: Store) -> None:
        a = make_test_delta(_key(1), {"a": 1}, version=200, origin=1)
        b = make_test_delta(_key(1), {"b": 2}, version=150, origin=2)
        assert store.save([a]) == 1 and store.save([b]) == 1
        loaded = store.load(a.key)
        assert loaded is not None and loaded.data == {"a": 1, "b": 2} and not loaded.partial
        assert (loaded.version, loaded.origin) == (200, 1)  # the older change added a key, not its stamp

    def test_one_key_takes_the_higher_stamp_in_either_order(self, store: Store) -> None:
        older = make_test_delta(_key("older-first"), {"cart": "old"}, version=300, origin=2)
        newer = make_test_delta(_key("older-first"), {"cart": "new"}, version=300, origin=3)
        store.save([make_test_record(older.key, {"user": "ada"}, version=100)])
        store.save([older])
        assert store.save([newer]) == 1
        first = store.load(older.key)
        store.save([make_test_record(_key("newer-first"), {"user": "ada"}, version=100)])
        store.save([make_test_delta(_key("newer-first"), {"cart": "new"}, version=300, origin=3)])
        # The older change loses its key, but the record now reflects it (seen): a change.
        assert store.save([make_test_delta(_key("newer-first"), {"cart": "old"}, version=300, origin=2)]) == 1
        second = store.load(_key("newer-first"))
        for loaded in (first, second):
            assert loaded is not None and loaded.data == {"user": "ada", "cart": "new"}
            assert stamps_of(loaded)["cart"] == (300, 3)
            assert dict(seen_of(loaded)) == {7: 100, 2: 300, 3: 300}

    def test_a_removed_key_stays_removed_against_an_older_concurrent_set(self, store: Store) -> None:
        for name, order in (("removal-first", (0, 1)), ("set-first", (1, 0))):
            key = _key(name)
            store.save([make_test_record(key, {"user": "ada", "cart": [1]}, version=100)])
            changes = (
                make_test_delta(key, {}, removed=["cart"], version=300, origin=1),
                make_test_delta(key, {"cart": [1, 2]}, version=250, origin=2),
            )
            for index in order:
                store.save([changes[index]])
            loaded = store.load(key)
            assert loaded is not None and loaded.data == {"user": "ada"}, name
            assert stamps_of(loaded)["cart"] == (300, 1)  # a key tombstone
        later = make_test_delta(_key("set-first"), {"cart": [3]}, version=350, origin=2)
        assert store.save([later]) == 1
        again = store.load(later.key)
        assert again is not None and again.data == {"user": "ada", "cart": [3]}

    def test_a_session_tombstone_beats_every_key(self, store: Store) -> None:
        base = make_test_record(_key(1), {"user": "ada"}, version=100)
        delta = make_test_delta(_key(1), {"cart": [1]}, version=200)
        tomb = make_test_record(_key(1), version=150, deleted=True, accessed=T0 + 1, expires=T0 + 600)
        store.save([base, delta])
        assert store.save([tomb]) == 1
        assert store.load(base.key) == tomb
        late = make_test_delta(_key(1), {"late": True}, version=400, accessed=T0 + 2)
        assert store.save([late]) == 0
        assert store.load(base.key) == tomb
        lone = make_test_delta(_key(2), {"x": 1}, version=500, accessed=T0 + 2)
        lone_tomb = make_test_record(_key(2), version=120, deleted=True, accessed=T0 + 1, expires=T0 + 600)
        assert store.save([lone, lone_tomb]) == 1  # in one batch too
        assert store.load(lone.key) == lone_tomb

    def test_a_delta_with_nothing_stored_is_stored_as_the_whole_record(
        self, store: Store, reopen: Callable[[Store], Store]
    ) -> None:
        delta = make_test_delta(_key(1), {"cart": [1]}, removed=["coupon"], version=200)
        assert store.save([delta]) == 1
        expected = _merged(delta)
        assert not expected.partial and expected.stamps == {"cart": (200, 7), "coupon": (200, 7)}
        assert store.load(delta.key) == expected
        assert list(reopen(store).load_all(0.0)) == [expected]

    def test_a_delta_stored_without_its_base_names_no_change(
        self, store: Store, reopen: Callable[[Store], Store]
    ) -> None:
        """A row that lacks what a delta was made on must not read as reflecting the delta's change."""
        made_on = {7: 150, 8: 160}  # its writer's copy had origin 8's change 160, which no row has
        lone = make_test_delta(_key(1), {"cart": [1]}, version=200, base=made_on)
        behind = make_test_record(_key(2), {"user": "ada"}, version=150)
        late = make_test_delta(behind.key, {"cart": [2]}, version=200, base=made_on)
        store.save([behind])
        assert store.save([lone, late]) == 2
        for reopened in (False, True):
            if reopened:
                store = reopen(store)
            alone, merged = store.load(lone.key), store.load(behind.key)
            assert alone is not None and alone.data == {"cart": [1]} and not alone.partial
            assert not reflects(alone, 200, 7), "a delta stored alone names its change"
            assert merged is not None and merged.data == {"user": "ada", "cart": [2]}
            assert not reflects(merged, 200, 7) and reflects(merged, 150, 7)
        # What the delta stood on arrives: the row names it, and the delta's change once its writer's
        # whole copy comes (until then the row lags behind what it holds: reads ask on, never served less).
        store.save([make_test_record(behind.key, {"user": "ada", "theme": "dark"}, version=160, origin=8)])
        lagging = store.load(behind.key)
        assert lagging is not None and reflects(lagging, 160, 8) and not reflects(lagging, 200, 7)
        holds = {"user": "ada", "theme": "dark", "cart": [3]}
        writers_copy = replace(make_test_record(behind.key, holds, version=300),
                               stamps={"user": (150, 7), "theme": (160, 8), "cart": (300, 7)},
                               seen={7: 300, 8: 160})
        store.save([writers_copy])
        caught_up = store.load(behind.key)
        assert caught_up is not None and caught_up.data == {"user": "ada", "theme": "dark", "cart": [3]}
        assert reflects(caught_up, 300, 7) and reflects(caught_up, 200, 7) and reflects(caught_up, 160, 8)

    def test_a_batch_merges_every_record_of_a_key(self, store: Store) -> None:
        base = make_test_record(_key(1), {"user": "ada"}, version=100)
        store.save([base])
        deltas = [make_test_delta(base.key, {f"k{i}": i}, version=200 + i, origin=i + 1) for i in range(5)]
        assert store.save(deltas[::-1]) == 1
        loaded = store.load(base.key)
        assert loaded is not None and loaded.data == {"user": "ada", **{f"k{i}": i for i in range(5)}}
        assert loaded == _merged(base, *deltas)

    def test_stamps_and_seen_round_trip_exactly(self, store: Store, reopen: Callable[[Store], Store]) -> None:
        # Beyond what a double holds, and the ends of the signed 64-bit range stores keep.
        version, top = (1 << 62) + 12345, (1 << 63) - 1
        record = Record(
            _key(1), {"user": "ada", "big": 1 << 60, "line\nbreak": 1}, version, top, T0, T0 + 1,
            T0 + 3600, False, True, 0,
            {"user": (1, -(1 << 63)), "big": (version, top), "line\nbreak": (1 << 53, 0),
             "removed": ((1 << 53) + 1, 5)},
            {top: version, -(1 << 63): 1, 0: (1 << 53) + 1, 5: (1 << 53) + 1},
        )
        old_style = make_test_record(_key(2), {"user": "grace"}, version=100)
        assert old_style.stamps is None and old_style.seen is None
        store.save([record, old_style])
        for reopened in (False, True):
            candidate = reopen(store) if reopened else store
            loaded = candidate.load(record.key)
            assert loaded == record
            assert loaded is not None and loaded.stamps is not None and loaded.seen == record.seen
            assert loaded.stamps == record.stamps and all(type(stamp) is tuple for stamp in loaded.stamps.values())
            plain = candidate.load(old_style.key)
            assert plain is not None and plain.stamps is None and plain.seen is None
            assert sorted(candidate.load_all(0.0), key=lambda r: r.key) == [record, old_style]

    def test_a_clear_ends_the_keys_it_covers_whether_saved_before_or_after(
        self, store: Store, reopen: Callable[[Store], Store]
    ) -> None:
        def changes(name: str) -> list[Record]:
            key = _key(name)
            return [
                make_test_record(key, {"user": "ada", "old": 1}, version=100),
                make_test_delta(key, {}, removed=["gone"], version=150),
                make_test_delta(key, {"cart": [1]}, version=300),
            ]

        before = changes("before")
        for record in before:
            store.save([record])
        assert store.clear(200) == 0  # the record is newer than the clear: it stays, less what it covers
        after = changes("after")
        assert store.save(after[:1]) == 0  # covered whole
        assert store.save(after[1:]) == 1
        # A record saved after the clear with keys it covers, onto nothing.
        carrying = _merged(*changes("carrying"))
        assert store.save([carrying]) == 1
        for reopened in (False, True):
            candidate = reopen(store) if reopened else store
            for name in ("before", "after", "carrying"):
                loaded = candidate.load(_key(name))
                assert loaded is not None and loaded.data == {"cart": [1]}, name
                assert dict(stamps_of(loaded)) == {"cart": (300, 7)}, name
            assert sorted(r.data["cart"][0] for r in candidate.load_all(0.0)) == [1, 1, 1]

    def test_concurrent_deltas_of_one_session_lose_no_key(self, store: Store) -> None:
        """Writers save deltas of their own keys of the same sessions at once: every key is stored.

        A store that merges optimistically (compare-and-set) may give up on a
        batch that other writers kept changing under it, with
        ``StoreUnavailable``, which says the batch may be retried: the writers
        here retry it as the write-behind engine does, a bounded number of times.
        """
        sessions = [_key(f"shared-{n}") for n in range(3)]
        start = threading.Barrier(self.delta_threads)
        errors: list[BaseException] = []

        def writer(origin: int) -> None:
            rng = random.Random(origin)
            try:
                start.wait()
                for n in range(self.delta_rounds):
                    batch = [
                        make_test_delta(key, {f"w{origin}-{n}": n}, version=1000 + n, origin=origin)
                        for key in rng.sample(sessions, len(sessions))
                    ]
                    _save_retrying(store, batch[: rng.randrange(1, len(batch) + 1)] if n % 2 else batch)
            except BaseException as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(o,)) for o in range(1, self.delta_threads + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        expected: dict[str, set[str]] = {key: set() for key in sessions}
        for origin in range(1, self.delta_threads + 1):
            rng = random.Random(origin)
            for n in range(self.delta_rounds):
                keys = rng.sample(sessions, len(sessions))
                if n % 2:
                    keys = keys[: rng.randrange(1, len(keys) + 1)]
                for key in keys:
                    expected[key].add(f"w{origin}-{n}")
        for key, names in expected.items():
            loaded = store.load(key)
            assert loaded is not None
            assert set(loaded.data) == names, sorted(names - set(loaded.data))
