"""Every store's save states one rule: ``persist.base.merge_row`` (``memsession.changes.merge_records``).

PostgreSQL merges under its key locks, CouchDB around ``_rev`` conflicts, the
JSON file and the SQLite example in Python. For pairs ``(old, new)`` of one
key, covering every case of the rule (live or tombstone on either side, equal
and different versions and origins, touches with a later, equal or earlier
``accessed``, a tombstone that was already dead when the new record was
written, and one that was not, whole records and deltas of other keys), a real
store must end up holding what ``merge_row`` makes of them: whether the two
arrive in separate batches, one record per batch, or together in one batch.

Each example saves a few hundred pairs in a handful of batches under fresh
keys, so one store serves every example of a test. Versions stay above the
clear watermark (no test here clears) and every time lies far in the future,
so nothing has expired when it is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memsession.session import Record
from persist.base import Store, coalesce, merge_row
from persist.couchdb import CouchStore
from persist.jsonfile import JsonFileStore
from persist.postgres import PostgresStore
from persist.testing import make_test_delta, make_test_record

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "own_store"))
from sqlite_store import SqliteStore

#: Far in the future (2096), with more digits than a microsecond clock keeps.
BASE_TIME = 4_000_000_000.123_456_7
#: Above the clear watermark, which stays 0 here (never cleared).
BASE_VERSION = 1 << 40
#: Pairs per example: each phase of ``check_merges`` saves them in one or two batches.
PAIRS = 200
#: Pairs per example also saved one record per batch (a store may have a path for that).
ALONE = 16

#: Lifetimes (``expires - accessed``): zero, short, long and never, so that an old
#: tombstone's ``expires`` falls before, at and after the new record's ``accessed``.
LIFETIMES = (0.0, 1.0, 2.0, 4.0, math.inf)


def spec(
    *,
    deleted: bool = False,
    version: int = 0,
    origin: int = 1,
    accessed: int = 0,
    lifetime: float = 4.0,
    fields: Sequence[str] = (),
    partial: bool = False,
) -> Record:
    """A record of the placeholder key ``"k"``; ``version`` and ``accessed`` count from the bases.

    Values follow from the stamp (one stamp, one change): a whole record
    holds ``"from"`` and ``fields``, a delta (``partial``) only ``fields``.
    """
    start = BASE_TIME + accessed
    version += BASE_VERSION
    values = {name: f"{name}@{version}.{origin}" for name in fields}
    if partial and not deleted:
        delta = make_test_delta("k", values, version=version, origin=origin, created=BASE_TIME, accessed=start)
        return dataclasses.replace(delta, expires=start + lifetime)
    return make_test_record(
        "k",
        {"from": f"{version}.{origin}", **values},
        version=version,
        origin=origin,
        created=BASE_TIME,
        accessed=start,
        expires=start + lifetime,
        deleted=deleted,
    )


#: Records from a small grid, so equal versions, origins and times come up often.
records = st.builds(
    spec,
    deleted=st.booleans(),
    version=st.integers(0, 2),
    origin=st.integers(1, 2),
    accessed=st.integers(0, 3),
    lifetime=st.sampled_from(LIFETIMES),
    fields=st.lists(st.sampled_from("ab"), unique=True, max_size=2),
    partial=st.booleans(),
)

pairs = st.tuples(records, records)

#: One pair per case of the rule, so every example run covers all of them.
EVERY_CASE: list[tuple[Record, Record]] = [
    # Live over live: (version, origin) decides per key, then a later ``accessed`` (a touch).
    (spec(), spec(version=1)),
    (spec(version=1), spec()),
    (spec(origin=1), spec(origin=2)),
    (spec(origin=2), spec(origin=1)),
    (spec(), spec(accessed=1)),
    (spec(), spec()),
    (spec(accessed=1), spec()),
    # Deltas: other keys are kept, whichever change is newer.
    (spec(fields="a"), spec(version=1, fields="b", partial=True)),
    (spec(version=2, fields="a"), spec(version=1, fields="b", partial=True)),
    (spec(version=1, fields="a", partial=True), spec(origin=2, fields="ab", partial=True)),
    (spec(fields="ab", partial=True), spec(version=2, fields="a")),
    # A tombstone replaces a live record, whatever the versions.
    (spec(version=2), spec(deleted=True)),
    (spec(fields="a", partial=True), spec(version=2, deleted=True)),
    # A live record after a tombstone: only if the tombstone was dead by then.
    (spec(deleted=True, lifetime=4.0), spec(version=2, accessed=1)),
    (spec(deleted=True, lifetime=1.0), spec(accessed=1, fields="a", partial=True)),
    (spec(deleted=True, lifetime=0.0), spec(accessed=1)),
    (spec(deleted=True, accessed=2, lifetime=0.0), spec(version=2, accessed=1)),
    (spec(deleted=True, lifetime=math.inf), spec(version=2, accessed=3)),
    # Tombstone over tombstone: as live over live, dead or not.
    (spec(deleted=True), spec(version=1, deleted=True)),
    (spec(version=1, deleted=True), spec(deleted=True)),
    (spec(deleted=True, origin=2), spec(deleted=True, origin=1)),
    (spec(deleted=True), spec(deleted=True, accessed=1, lifetime=1.0)),
    (spec(deleted=True, accessed=1), spec(deleted=True)),
    (spec(deleted=True, lifetime=0.0), spec(version=1, deleted=True, accessed=3)),
    (spec(version=1, deleted=True, lifetime=0.0), spec(deleted=True, accessed=3)),
]


def keyed(pair: tuple[Record, Record], key: str) -> tuple[Record, Record]:
    old, new = pair
    return dataclasses.replace(old, key=key), dataclasses.replace(new, key=key)


def saved_apart(old: Record, new: Record) -> tuple[Record, bool]:
    """What a store holds after saving ``old`` then ``new`` onto nothing, and whether ``new`` changed it."""
    first = merge_row(None, old)
    assert first is not None
    second = merge_row(first, new)
    return (first, False) if second is None else (second, True)


def saved_together(old: Record, new: Record) -> Record:
    """What a store holds after saving ``[old, new]`` in one batch onto nothing."""
    merged = merge_row(None, coalesce([old, new])[old.key])
    assert merged is not None
    return merged


def check_merges(store: Store, drawn: list[tuple[Record, Record]]) -> None:
    """Save each pair three ways under fresh keys; every key must hold what ``merge_row`` makes."""
    run = uuid.uuid4().hex[:12]  # the store outlives the example: keys must not repeat
    apart = [keyed(pair, f"{run}-apart-{i}") for i, pair in enumerate(drawn)]
    alone = [keyed(pair, f"{run}-alone-{i}") for i, pair in enumerate(drawn[:ALONE])]
    together = [keyed(pair, f"{run}-together-{i}") for i, pair in enumerate(drawn)]

    assert store.save([old for old, _ in apart]) == len(apart)
    changed = store.save([new for _, new in apart])
    changed_alone = 0
    for old, new in alone:
        assert store.save([old]) == 1
        changed_alone += store.save([new])
    created = store.save([record for pair in together for record in pair])

    wrong = [
        (how, old, new, stored)
        for how, group, expect in (
            ("apart", apart, lambda o, n: saved_apart(o, n)[0]),
            ("alone", alone, lambda o, n: saved_apart(o, n)[0]),
            ("together", together, saved_together),
        )
        for old, new in group
        if (stored := store.load(old.key)) != expect(old, new)
    ]
    assert not wrong, "stored record is not what merge_row makes (how, old, new, stored):\n" + "\n".join(
        map(repr, wrong)
    )
    # What each save says it wrote agrees too.
    assert changed == sum(saved_apart(old, new)[1] for old, new in apart)
    assert changed_alone == sum(saved_apart(old, new)[1] for old, new in alone)
    assert created == len(together)


_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    # The store fixture is made once per test on purpose: examples use fresh keys.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture
def couch_db_url(couch_url: str, unique_name: Callable[..., str]) -> str:
    return f"{couch_url}/{unique_name('guards')}"


def open_postgres(request: pytest.FixtureRequest) -> Store:
    return PostgresStore(request.getfixturevalue("postgres_url"), create_table=True)


def open_couch(request: pytest.FixtureRequest) -> Store:
    return CouchStore(request.getfixturevalue("couch_db_url"), trust_env=False)


def open_jsonfile(request: pytest.FixtureRequest) -> Store:
    folder = request.getfixturevalue("tmp_path")
    return JsonFileStore(folder / "sessions.jsonl", save_interval=None, fsync=False)


def open_sqlite(request: pytest.FixtureRequest) -> Store:
    return SqliteStore(str(request.getfixturevalue("tmp_path") / "sessions.db"))


@pytest.fixture(
    params=[
        pytest.param(open_postgres, id="postgres", marks=pytest.mark.postgres),
        pytest.param(open_couch, id="couchdb", marks=pytest.mark.couchdb),
        pytest.param(open_jsonfile, id="jsonfile"),
        pytest.param(open_sqlite, id="sqlite"),
    ]
)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """One real store, open for the whole test: its examples use fresh keys."""
    store = request.param(request)
    yield store
    store.close()


@_SETTINGS
@given(drawn=st.lists(pairs, min_size=PAIRS // 2, max_size=PAIRS))
@example(drawn=EVERY_CASE)
def test_the_stored_record_is_what_merge_row_makes(store: Store, drawn: list[tuple[Record, Record]]) -> None:
    check_merges(store, drawn)


@_SETTINGS
@given(drawn=st.lists(pairs, min_size=PAIRS // 2, max_size=PAIRS))
@example(drawn=EVERY_CASE)
def test_couch_merges_again_after_a_rev_conflict(couch_db_url: str, drawn: list[tuple[Record, Record]]) -> None:
    """A writer whose batch meets ``_rev`` conflicts reads again and merges again.

    Just before the store's first ``_bulk_docs`` request, another writer saves
    every ``old``: the store merged into documents that no longer are what it
    read (or did not exist), every document conflicts, and the store must
    merge again, into ``old``.
    """
    run = uuid.uuid4().hex[:12]
    batch = [keyed(pair, f"{run}-{i}") for i, pair in enumerate(drawn)]
    rival = CouchStore(couch_db_url, trust_env=False)
    raced: list[bool] = []

    def race(request: httpx.Request) -> None:
        if request.url.path.endswith("/_bulk_docs") and not raced:
            raced.append(True)
            assert rival.save([old for old, _ in batch]) == len(batch)

    client = httpx.Client(base_url=couch_db_url + "/", trust_env=False, event_hooks={"request": [race]})
    store = CouchStore(client=client)
    try:
        written = store.save([new for _, new in batch])
        assert raced
        wrong = [
            (old, new, stored) for old, new in batch if (stored := store.load(old.key)) != saved_apart(old, new)[0]
        ]
        assert not wrong, "stored record is not what merge_row makes (old, new, stored):\n" + "\n".join(
            map(repr, wrong)
        )
        assert written == sum(saved_apart(old, new)[1] for old, new in batch)
    finally:
        store.close()
        client.close()
        rival.close()
