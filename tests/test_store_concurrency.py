"""Two writers with their own store (own connections) save deltas of one session at the same moment: nothing is lost.

Two requests of one user on two workers change different keys of the
session; each worker's write-behind saves its delta through its own store
object, so through its own PostgreSQL connections or HTTP client. The store
must make the read, the merge and the write of a key one step against the
other writer: a save that merged into a row another writer replaced
meanwhile would drop that writer's key for good. Every round both writers
start together (a barrier) and each sets a key no one else sets, so at the
end the session must hold every key of every round.

CouchDB merges optimistically: a save that other writers kept changing
under it for ``conflict_retries`` tries gives up with ``StoreUnavailable``,
which says the batch may be retried, as the write-behind engine does; the
writers here retry it too, a bounded number of times (PostgreSQL's key locks
never need it).

Records are built here as a worker makes them (``Record`` with
``partial=True``): the file does not depend on the contract suite's helpers.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from memsession.errors import StoreUnavailable
from memsession.session import Record, prepare_data
from persist.base import Store
from persist.couchdb import CouchStore
from persist.postgres import PostgresStore

#: Wall time of every record (2096: nothing expires while a test runs).
WALL = 4_000_000_000.5
#: Rounds per test: each one a moment at which every writer saves at once.
ROUNDS = 60
#: How often a writer tries a batch that raised ``StoreUnavailable``.
TRIES = 20


def save(store: Store, batch: list[Record]) -> None:
    """``store.save(batch)``, tried again on ``StoreUnavailable`` (up to ``TRIES`` times, then raised)."""
    for _ in range(TRIES - 1):
        try:
            store.save(batch)
            return
        except StoreUnavailable:
            continue
    store.save(batch)


def delta(key: str, values: dict[str, Any], version: int, origin: int) -> Record:
    """A request's delta: only the keys it set, stamped with its own ``(version, origin)``."""
    data, size, flat = prepare_data(values, 1 << 20)
    return Record(key, data, version, origin, WALL, WALL, WALL + 3600, False, flat, size, None, None, True)


def open_postgres(request: pytest.FixtureRequest) -> Callable[[], Store]:
    url = request.getfixturevalue("postgres_url")
    PostgresStore(url, create_table=True).close()
    return lambda: PostgresStore(url, max_size=2)


def open_couch(request: pytest.FixtureRequest) -> Callable[[], Store]:
    url = f"{request.getfixturevalue('couch_url')}/{request.getfixturevalue('unique_name')('concurrent')}"
    CouchStore(url, trust_env=False).close()
    return lambda: CouchStore(url, trust_env=False, create=False)


@pytest.fixture(
    params=[
        pytest.param(open_postgres, id="postgres", marks=pytest.mark.postgres),
        pytest.param(open_couch, id="couchdb", marks=pytest.mark.couchdb),
    ]
)
def open_store(request: pytest.FixtureRequest) -> Iterator[Callable[[], Store]]:
    """Opens another store over one shared, empty table or database; closes them all at the end."""
    make = request.param(request)
    opened: list[Store] = []

    def opener() -> Store:
        store = make()
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


def run_writers(writers: list[Callable[[int], None]], rounds: int) -> None:
    """Run each writer's rounds in a thread of its own, all writers starting each round together."""
    start = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def run(write: Callable[[int], None]) -> None:
        try:
            for n in range(rounds):
                start.wait(timeout=60)
                write(n)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=run, args=(write,)) for write in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not [t for t in threads if t.is_alive()], "a writer is stuck"
    assert not errors, errors


def test_two_writers_saving_deltas_of_one_session_at_once_lose_no_key(open_store: Callable[[], Store]) -> None:
    first, second = open_store(), open_store()
    session = "a" * 64
    first.save([delta(session, {"user": "ada"}, 1 << 40, 1)])

    def writer(store: Store, origin: int) -> Callable[[int], None]:
        def write(n: int) -> None:
            save(store, [delta(session, {f"w{origin}-{n}": n}, (1 << 40) + 1 + n, origin)])

        return write

    run_writers([writer(first, 1), writer(second, 2)], ROUNDS)
    loaded = first.load(session)
    assert loaded is not None
    expected = {"user", *(f"w{origin}-{n}" for origin in (1, 2) for n in range(ROUNDS))}
    assert set(loaded.data) == expected, f"lost: {sorted(expected - set(loaded.data))}"
    assert loaded.data[f"w2-{ROUNDS - 1}"] == ROUNDS - 1
    assert loaded.seen == {1: (1 << 40) + ROUNDS, 2: (1 << 40) + ROUNDS}


def test_writers_saving_batches_of_shared_sessions_in_any_order_lose_no_key(open_store: Callable[[], Store]) -> None:
    """Batches of deltas over the same sessions, each writer's in its own order: no key lost, no deadlock."""
    stores = [open_store() for _ in range(3)]
    sessions = [f"{n:064x}" for n in range(8)]
    written: dict[str, set[str]] = {key: set() for key in sessions}

    def writer(store: Store, origin: int) -> Callable[[int], None]:
        rng = random.Random(origin)

        def write(n: int) -> None:
            keys = rng.sample(sessions, rng.randrange(2, len(sessions) + 1))
            save(store, [delta(key, {f"w{origin}-{n}": n}, (1 << 40) + n, origin) for key in keys])
            for key in keys:
                written[key].add(f"w{origin}-{n}")

        return write

    run_writers([writer(store, origin) for origin, store in enumerate(stores, 1)], ROUNDS // 2)
    for key, names in written.items():
        loaded = stores[0].load(key)
        assert loaded is not None
        assert set(loaded.data) == names, f"lost: {sorted(names - set(loaded.data))}"
