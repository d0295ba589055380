"""Contract: large batches, concurrent writers, reopening, and errors once closed."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from memsession.errors import StoreClosed

from ..base import Store
from .records import T0, _key, make_test_record

__all__ = ["LifecycleContract"]


class LifecycleContract:
    """A store holds up under load and across reopening, and refuses calls once closed."""

    #: Records in the large-batch test.
    batch_size = 10_000
    #: Threads and rounds in the concurrent-writers test.
    writer_threads = 4
    writer_rounds = 60

    # -- batches and concurrency -------------------------------------------------

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
