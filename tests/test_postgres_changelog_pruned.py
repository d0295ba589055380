"""The pruned summary: per host and partition the highest seq pruning took, and the gaps that name it.

``gap_mask`` first, on rows made here; then a real PostgreSQL (``postgres_url``):
pruning notes what it deleted in ``<table>_changes_pruned``, and a follower
that stood below the pruned rows gets ``on_gap`` with exactly the partitions
of that host's pruned changes, or None when they can't be named. Rows are
aged by setting their ``at``, so which ones a prune takes is chosen, not timed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from memsession.errors import StoreError
from memsession.partitions import mask_of
from persist.postgres import PostgresChangeFeed, PostgresStore
from persist.postgres.changelog import change_log_ddl
from persist.postgres.pruned import CLEARS, FLOOR, gap_mask
from persist.postgres.table import TableNames
from persist.testing import make_test_record
from tests.test_postgres_changelog_feed import Sink, started, wait_for


def key_in(part: int, i: int = 0) -> str:
    """A session key (64 hex digits) in partition ``part``."""
    return f"{part:02x}" + hashlib.sha256(f"{part}/{i}".encode()).hexdigest()[2:]


def summary(url: str) -> dict[tuple[str, int], int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT host, part, seq FROM memsession_changes_pruned").fetchall()
    return {(host, part): seq for host, part, seq in rows}


def age(url: str, host: str, seqs: Iterable[int]) -> None:
    """Make rows of ``host`` older than any retention: the next prune takes them, and only them."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE memsession_changes SET at = 0 WHERE host = %s AND seq = ANY(%s)", [host, list(seqs)])


def prune(store: PostgresStore) -> int:
    return store.prune_changes(time.time())


def save_each(store: PostgresStore, keys: Iterable[str]) -> None:
    """One save per key: the host's seqs follow ``keys``."""
    for k in keys:
        store.save([make_test_record(k)])


@pytest.fixture
def stores(postgres_url: str) -> Iterator[Callable[[str], PostgresStore]]:
    made: list[PostgresStore] = []

    def make(host: str) -> PostgresStore:
        made.append(PostgresStore(postgres_url, create_table=True, change_log=True, host=host))
        return made[-1]

    yield make
    for store in made:
        store.close()


@pytest.fixture
def follow(postgres_url: str) -> Iterator[Callable[[dict[str, int]], Sink]]:
    """Starts a feed of host "b" at the positions given; stops every one at the end."""
    made: list[PostgresChangeFeed] = []

    def make(positions: dict[str, int]) -> Sink:
        sink = Sink()
        made.append(started(PostgresChangeFeed(postgres_url, host="b", positions=positions), sink))
        return sink

    yield make
    for feed in made:
        feed.stop()


# -- gap_mask ---------------------------------------------------------------------------------------


def test_a_gap_names_the_partitions_pruned_at_or_above_where_it_starts() -> None:
    rows = [(FLOOR, 1), (3, 1), (7, 4), (200, 5), (9, 2)]
    assert gap_mask(rows, 1, 6) == mask_of([3, 7, 200, 9])
    assert gap_mask(rows, 3, 6) == mask_of([7, 200])  # seqs 1 and 2 came before the gap
    assert gap_mask(rows, 5, 6) == mask_of([200])


@pytest.mark.parametrize(("rows", "expected", "got"), [
    ([(FLOOR, 1), (3, 5), (CLEARS, 4)], 2, 6),  # a clear in the gap: every partition
    ([(FLOOR, 1), (3, 5)], 7, 7),  # the counter is below the position: the log was made anew
    ([(FLOOR, 1), (3, 5)], 9, 2),
    ([(3, 5)], 1, 6),  # no floor: nothing pruned under the summary
    ([(FLOOR, 3), (3, 5)], 2, 6),  # seq 2 went before the summary was made
    ([(FLOOR, 1), (3, 5)], 2, 8),  # seqs 6 and 7 went by other means than pruning
    ([], 1, 2),
    ([(FLOOR, 1), (300, 5)], 2, 6),  # a row made by hand
    ([(FLOOR, 1), ("3", 5)], 2, 6),
])
def test_a_gap_whose_partitions_the_summary_cannot_name_is_none(
        rows: list[tuple[Any, Any]], expected: int, got: int) -> None:
    assert gap_mask(rows, expected, got) is None


def test_a_clear_pruned_before_the_gap_names_nothing() -> None:
    assert gap_mask([(FLOOR, 1), (CLEARS, 1), (3, 5)], 2, 6) == mask_of([3])


# -- the summary pruning writes ---------------------------------------------------------------------


def test_pruning_notes_each_partition_from_the_keys_first_two_hex_digits(
        stores: Callable[[str], PostgresStore], postgres_url: str) -> None:
    store = stores("a")
    row = "INSERT INTO memsession_changes VALUES ('z', %s, %s, %s, %s, %s, %s, %s, 0)"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO memsession_changes_hosts VALUES ('z', 260)")
        every = "\n".join(key_in(part) for part in range(256))
        conn.execute(row, [256, 1, every, [1] * 256, [1] * 256, [False] * 256, 0])
        conn.execute(row, [257, 257, "k" * 64, [1], [1], [False], 0])  # a key of no partition
        conn.execute(row, [258, 258, "", [], [], [], 5])  # a clear
        conn.execute(row, [260, 259, key_in(7), [1], [1], [False], 0])  # two seqs, one key: can't say
    assert store.changes is not None
    assert store.changes.prune(store._run, time.time(), rows=3) == 4  # two statements, each noting what it took
    noted = summary(postgres_url)
    assert noted == {**{("z", part): part + 1 for part in range(256)}, ("z", CLEARS): 260, ("z", FLOOR): 1}


def test_the_summary_keeps_the_highest_seq_across_prunes(stores: Callable[[str], PostgresStore],
                                                         postgres_url: str) -> None:
    store = stores("a")
    save_each(store, [key_in(5, 1), key_in(5, 2), key_in(5, 3), key_in(9)])
    age(postgres_url, "a", [3])
    assert prune(store) == 1
    assert summary(postgres_url) == {("a", 5): 3, ("a", FLOOR): 3}
    age(postgres_url, "a", [1])  # a lower seq of the same partition, pruned later
    assert prune(store) == 1
    assert summary(postgres_url) == {("a", 5): 3, ("a", FLOOR): 1}
    age(postgres_url, "a", [2, 4])
    assert prune(store) == 2
    assert summary(postgres_url) == {("a", 5): 3, ("a", 9): 4, ("a", FLOOR): 1}
    assert prune(store) == 0
    assert summary(postgres_url) == {("a", 5): 3, ("a", 9): 4, ("a", FLOOR): 1}
    store.save([make_test_record(key_in(5, 1))])  # a save does not touch the summary
    assert summary(postgres_url) == {("a", 5): 3, ("a", 9): 4, ("a", FLOOR): 1}


# -- gaps ---------------------------------------------------------------------------------------------


def test_a_gap_names_exactly_the_pruned_partitions_of_its_host(
        stores: Callable[[str], PostgresStore], postgres_url: str,
        follow: Callable[[dict[str, int]], Sink]) -> None:
    a, c = stores("a"), stores("c")
    save_each(a, [key_in(p) for p in (1, 2, 3, 40, 41, 42)])
    save_each(c, [key_in(200), key_in(201), key_in(202), key_in(3, 1)])
    age(postgres_url, "a", [1, 2, 3])
    age(postgres_url, "c", [1, 2])
    assert prune(a) == 5
    sink = follow({"a": 0, "c": 0})
    wait_for(lambda: len(sink.changes) == 5)
    assert sink.gaps == [("a", 1, 4, mask_of([1, 2, 3])), ("c", 1, 3, mask_of([200, 201]))]
    # The partitions not pruned still come as changes, after the gaps.
    assert [(ch.host, ch.seq, ch.key) for ch in sink.changes] == [
        ("a", 4, key_in(40)), ("a", 5, key_in(41)), ("a", 6, key_in(42)), ("c", 3, key_in(202)),
        ("c", 4, key_in(3, 1)),
    ]
    assert sink.events[:3] == ["gap a:1-4", "gap c:1-3", "a:4"]
    later = follow({"a": 1, "c": 4})  # it had seq 1 of "a": partition 1 missed nothing
    wait_for(lambda: len(later.changes) == 3)
    assert later.gaps == [("a", 2, 4, mask_of([2, 3]))]


def test_a_pruned_clear_makes_the_gap_name_every_partition(
        stores: Callable[[str], PostgresStore], postgres_url: str,
        follow: Callable[[dict[str, int]], Sink]) -> None:
    a = stores("a")
    a.save([make_test_record(key_in(1))])
    a.clear(2)  # seq 2
    save_each(a, [key_in(2), key_in(3), key_in(4)])
    age(postgres_url, "a", [1, 2, 3, 4])
    assert prune(a) == 4
    below = follow({"a": 0})
    wait_for(lambda: [ch.seq for ch in below.changes] == [5])
    assert below.gaps == [("a", 1, 5, None)]
    past = follow({"a": 2})  # it had the clear: the gap names only what came after it
    wait_for(lambda: [ch.seq for ch in past.changes] == [5])
    assert past.gaps == [("a", 3, 5, mask_of([2, 3]))]


def test_rows_gone_before_the_summary_was_made_make_a_gap_below_them_name_every_partition(
        stores: Callable[[str], PostgresStore], postgres_url: str,
        follow: Callable[[dict[str, int]], Sink]) -> None:
    a = stores("a")
    save_each(a, [key_in(p) for p in (1, 2, 3, 4, 5)])
    age(postgres_url, "a", [1, 2])
    assert prune(a) == 2
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # as if pruned by an older memsession
        conn.execute("DELETE FROM memsession_changes_pruned")
    age(postgres_url, "a", [3, 4])
    assert prune(a) == 2
    below = follow({"a": 1})
    after = follow({"a": 2})
    wait_for(lambda: [ch.seq for ch in below.changes] == [5] and [ch.seq for ch in after.changes] == [5])
    assert below.gaps == [("a", 2, 5, None)]
    assert after.gaps == [("a", 3, 5, mask_of([3, 4]))]


def test_a_log_without_the_summary_gives_none_and_the_feed_goes_on(
        stores: Callable[[str], PostgresStore], postgres_url: str,
        follow: Callable[[dict[str, int]], Sink]) -> None:
    a = stores("a")
    save_each(a, [key_in(p) for p in (1, 2, 3)])
    age(postgres_url, "a", [1])
    assert prune(a) == 1
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE memsession_changes_pruned")
    sink = follow({"a": 0})
    wait_for(lambda: [ch.seq for ch in sink.changes] == [2, 3])
    assert sink.gaps == [("a", 1, 2, None)]


# -- the table ----------------------------------------------------------------------------------------


def test_a_store_opened_on_a_log_without_the_summary_fails_until_create_table_makes_it(
        stores: Callable[[str], PostgresStore], postgres_url: str) -> None:
    stores("a")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE memsession_changes_pruned")
    with pytest.raises(StoreError, match="memsession_changes_pruned"):
        PostgresStore(postgres_url, change_log=True, host="a")
    stores("a")  # create_table=True
    assert summary(postgres_url) == {}


def test_schema_sql_ships_the_change_logs_ddl_as_its_comment() -> None:
    shipped = (Path(__file__).parent.parent / "persist" / "schema.sql").read_text().splitlines()
    first = shipped.index('-- CREATE TABLE IF NOT EXISTS "memsession_changes" (')
    commented = "".join(line.removeprefix("-- ") + "\n" for line in shipped[first:])
    assert commented == "".join(stmt + ";\n" for stmt in change_log_ddl(TableNames.build(None, "memsession", None)))
