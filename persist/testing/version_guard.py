"""Contract: whole records merged (the newer wins), tombstones, expiry (load_all, delete, purge)."""

from __future__ import annotations

import math
import random

from memsession.changes import seen_of
from memsession.session import Record

from ..base import Store, merge_row
from .records import T0, _key, make_test_delta, make_test_record

__all__ = ["VersionGuardContract"]


class VersionGuardContract:
    """A save merges with ``merge_row``: of whole records of the same keys the newer wins; expired ones go."""

    # -- whole records -------------------------------------------------------------

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
        # The lower change loses its key; the record now reflects it (``seen``), a change to keep.
        assert store.save([low]) == 1
        loaded = store.load(_key(1))
        assert loaded is not None and loaded.data == {"o": "high"}
        assert (loaded.version, loaded.origin) == (100, 2) and dict(seen_of(loaded)) == {1: 100, 2: 100}
        assert store.save([low]) == 0 and store.save([high]) == 0

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

    def test_saves_match_merge_row(self, store: Store) -> None:
        """Random whole records and deltas of a few keys: the store holds what ``merge_row`` makes, one by one."""
        rng = random.Random(4)
        stored: dict[str, Record] = {}
        for i in range(300):
            key = _key(rng.randrange(8))
            version, origin = rng.randrange(1, 6), rng.randrange(1, 3)
            # A key's value follows from its stamp: two records with one stamp are one change.
            fields = {name: f"{name}{version}.{origin}" for name in rng.sample("abc", rng.randrange(0, 3))}
            if rng.random() < 0.4:
                removed = [name for name in "abc" if name not in fields and rng.random() < 0.3]
                record = make_test_delta(key, fields, removed=removed, version=version, origin=origin,
                                         accessed=T0 + rng.randrange(0, 5))
            else:
                record = make_test_record(
                    key, {"i": f"{version}.{origin}", **fields}, version=version, origin=origin,
                    accessed=T0 + rng.randrange(0, 5), expires=T0 + rng.randrange(3, 9),
                    deleted=rng.random() < 0.2,
                )
            expected = merge_row(stored.get(key), record)
            assert store.save([record]) == int(expected is not None), (i, record, stored.get(key))
            if expected is not None:
                stored[key] = expected
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
