"""PostgresChangeFeed: other hosts' changes, in order, once each, through notifications, polls and reconnects.

Every test runs a real PostgreSQL (``postgres_url``) and waits by polling
with timeouts. Timing is asserted only loosely: a feed that polls every 30 s
must hand a change over well within that, which only a notification can do.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from memsession.errors import ConfigError, StoreError, StoreUnavailable
from memsession.partitions import mask_of, partition_of
from persist.feed import Change, ChangeFeed
from persist.postgres import PostgresChangeFeed, PostgresStore
from persist.postgres.changelog import ROW_CHANGES
from persist.testing import make_test_record
from tests.test_postgres_changelog import V, key

WAIT = 15.0


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "the feed") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Sink:
    """What a feed handed over: the batches and the gaps, in the order they came."""

    def __init__(self) -> None:
        self.batches: list[list[Change]] = []
        self.gaps: list[tuple[str, int, int, int | None]] = []
        self.events: list[str] = []
        self._lock = threading.Lock()

    def on_changes(self, changes: list[Change]) -> None:
        with self._lock:
            self.batches.append(changes)
            self.events.extend(f"{c.host}:{c.seq}" for c in changes)

    def on_gap(self, host: str, expected: int, got: int, partitions: int | None) -> None:
        with self._lock:
            self.gaps.append((host, expected, got, partitions))
            self.events.append(f"gap {host}:{expected}-{got}")

    @property
    def changes(self) -> list[Change]:
        with self._lock:
            return [c for batch in self.batches for c in batch]

    def seqs(self, host: str) -> list[int]:
        return [c.seq for c in self.changes if c.host == host]


@pytest.fixture
def writer(postgres_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(postgres_url, create_table=True, change_log=True, host="a")
    yield store
    store.close()


@pytest.fixture
def feeds() -> Iterator[Callable[..., PostgresChangeFeed]]:
    """Makes feeds and stops every one at the end, also after a failed test."""
    made: list[PostgresChangeFeed] = []

    def make(source: Any, **options: Any) -> PostgresChangeFeed:
        if isinstance(source, str):  # a store's feed is its log's host by default
            options.setdefault("host", "b")
        feed = PostgresChangeFeed(source, **options)
        made.append(feed)
        return feed

    yield make
    for feed in made:
        feed.stop()


def started(feed: PostgresChangeFeed, sink: Sink) -> PostgresChangeFeed:
    feed.start(sink.on_changes, sink.on_gap)
    return feed


# -- what is handed over ---------------------------------------------------------------------------


def test_a_save_reaches_another_hosts_feed_with_the_right_fields_and_no_data(
        writer: PostgresStore, postgres_url: str, feeds: Callable[..., PostgresChangeFeed]) -> None:
    sink = Sink()
    feed = started(feeds(postgres_url), sink)
    assert isinstance(feed, ChangeFeed)
    writer.save([make_test_record(key(1), {"secret": 1}, version=V + 1, origin=3),
                 make_test_record(key(2), version=V + 2, origin=4, deleted=True)])
    writer.clear(V + 7)
    wait_for(lambda: len(sink.changes) == 3)
    assert sink.changes == [
        Change(key(1), V + 1, 3, False, 0, "a", 1), Change(key(2), V + 2, 4, True, 0, "a", 2),
        Change("", 0, 0, False, V + 7, "a", 3),
    ]
    assert [f.name for f in dataclasses.fields(Change)] == ["key", "version", "origin", "deleted", "cleared",
                                                             "host", "seq"]
    assert sink.changes[-1].is_clear and not sink.changes[0].is_clear
    assert sink.gaps == []
    assert feed.positions() == {"a": 3}
    stats = feed.stats()
    assert stats["changes"] == 3 and stats["clears"] == 1 and stats["hosts"] == 1 and stats["refused"] == 0


def test_its_own_hosts_changes_are_never_handed_over(writer: PostgresStore, postgres_url: str,
                                                     feeds: Callable[..., PostgresChangeFeed]) -> None:
    other = PostgresStore(postgres_url, change_log=True, host="c")
    try:
        sink = Sink()
        feed = started(feeds(writer), sink)  # the store's own host, "a"
        assert feed.host == "a"
        writer.save([make_test_record(key(1))])
        other.save([make_test_record(key(2))])
        writer.save([make_test_record(key(3))])
        other.save([make_test_record(key(4))])
        wait_for(lambda: len(sink.changes) == 2)
        time.sleep(0.2)  # room for a wrongly handed-over change of "a" to arrive
        assert [(c.host, c.key) for c in sink.changes] == [("c", key(2)), ("c", key(4))]
        assert feed.positions() == {"c": 2}
    finally:
        other.close()


def test_changes_come_in_host_and_seq_order_at_most_batch_log_rows_at_a_time(
        writer: PostgresStore, postgres_url: str, feeds: Callable[..., PostgresChangeFeed]) -> None:
    other = PostgresStore(postgres_url, change_log=True, host="c")
    try:
        for i in range(4):  # a row per save
            writer.save([make_test_record(key(i))])
        other.save([make_test_record(key(i), version=V + 1) for i in range(3)])
        sink = Sink()
        started(feeds(postgres_url, positions={}, batch=2), sink)  # from the log's start
        wait_for(lambda: len(sink.changes) == 7)
        assert [(c.host, c.seq) for c in sink.changes] == [("a", 1), ("a", 2), ("a", 3), ("a", 4),
                                                           ("c", 1), ("c", 2), ("c", 3)]
        # Two rows a read: a's four, then c's one row of three.
        assert [len(batch) for batch in sink.batches] == [2, 2, 3]
    finally:
        other.close()


# -- where a feed starts, and resuming ----------------------------------------------------------------


def test_a_feed_starts_at_the_end_and_a_restarted_one_resumes_without_replay_or_loss(
        writer: PostgresStore, postgres_url: str, feeds: Callable[..., PostgresChangeFeed]) -> None:
    writer.save([make_test_record(key(i)) for i in range(3)])  # before any feed: not handed over
    first = Sink()
    feed = started(feeds(postgres_url), first)
    assert feed.positions() == {"a": 3}
    writer.save([make_test_record(key(i), version=V + 1) for i in range(2)])
    wait_for(lambda: first.seqs("a") == [4, 5])
    feed.stop()
    stood = feed.positions()
    assert stood == {"a": 5}
    writer.save([make_test_record(key(i), version=V + 2) for i in range(3)])  # while no feed runs
    again = Sink()
    resumed = started(feeds(postgres_url, positions=stood), again)
    writer.save([make_test_record(key(9))])
    wait_for(lambda: again.seqs("a") == [6, 7, 8, 9])
    time.sleep(0.2)
    assert again.seqs("a") == [6, 7, 8, 9] and again.gaps == []
    assert resumed.positions() == {"a": 9}


# -- gaps ---------------------------------------------------------------------------------------------


def test_pruning_past_a_feeds_position_is_reported_as_a_gap(writer: PostgresStore, postgres_url: str,
                                                            feeds: Callable[..., PostgresChangeFeed]) -> None:
    writer.save([make_test_record(key(i)) for i in range(3)])
    assert writer.prune_changes(time.time() + writer.changes.retention + 60) == 1  # type: ignore[union-attr]
    writer.save([make_test_record(key(i), version=V + 1) for i in range(2)])  # seqs 4 and 5, kept
    sink = Sink()
    feed = started(feeds(postgres_url, positions={"a": 1}), sink)
    wait_for(lambda: sink.seqs("a") == [4, 5])
    assert sink.gaps == [("a", 2, 4, mask_of(partition_of(key(i)) for i in (1, 2)))]  # not seq 1's key(0)
    assert sink.events == ["gap a:2-4", "a:4", "a:5"]  # the gap first
    # Everything after the position pruned: the gap runs to the end of the host's numbering.
    writer.prune_changes(time.time() + 10 * 3600)
    late = Sink()
    started(feeds(postgres_url, positions={"a": 2}), late)
    wait_for(lambda: late.gaps == [("a", 3, 6, mask_of(partition_of(key(i)) for i in range(3)))])
    assert late.changes == []
    assert feed.stats()["gaps"] == 1


def test_a_skip_in_a_hosts_numbering_is_a_gap_and_the_feed_goes_on(
        writer: PostgresStore, postgres_url: str, feeds: Callable[..., PostgresChangeFeed]) -> None:
    for i in range(5):  # a row per save
        writer.save([make_test_record(key(i))])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DELETE FROM memsession_changes WHERE seq = 3")
    sink = Sink()
    feed = started(feeds(postgres_url, positions={"a": 1}), sink)
    wait_for(lambda: sink.seqs("a") == [2, 4, 5])
    assert sink.gaps == [("a", 3, 4, None)]  # not pruned: which partition, the log can't say
    assert feed.positions() == {"a": 5}


def test_a_log_made_anew_below_a_feeds_position_is_a_gap(writer: PostgresStore, postgres_url: str,
                                                         feeds: Callable[..., PostgresChangeFeed]) -> None:
    writer.save([make_test_record(key(1))])
    sink = Sink()
    started(feeds(postgres_url, positions={"a": 40}), sink)  # stood at 40 in a log since dropped
    wait_for(lambda: sink.gaps == [("a", 41, 2, None)])
    writer.save([make_test_record(key(2))])
    wait_for(lambda: sink.seqs("a") == [2])


# -- notifications, polls, reconnects --------------------------------------------------------------------


def test_a_notification_wakes_the_feed_long_before_its_poll(writer: PostgresStore, postgres_url: str,
                                                            feeds: Callable[..., PostgresChangeFeed]) -> None:
    sink = Sink()
    feed = started(feeds(postgres_url, poll_interval=30.0), sink)
    wait_for(lambda: feed.stats()["reads"] >= 1)  # the read after start is behind it: it waits now
    began = time.monotonic()
    writer.save([make_test_record(key(1))])
    wait_for(lambda: len(sink.changes) == 1, timeout=10.0)
    assert time.monotonic() - began < 10.0 < feed.poll_interval
    assert feed.stats()["wakes"] >= 1


def test_its_own_hosts_notifications_do_not_wake_it(writer: PostgresStore, postgres_url: str,
                                                    feeds: Callable[..., PostgresChangeFeed]) -> None:
    feed = started(feeds(writer, poll_interval=30.0), Sink())
    wait_for(lambda: feed.stats()["reads"] >= 1)
    writer.save([make_test_record(key(1))])
    wait_for(lambda: feed.stats()["notifies"] >= 1)
    time.sleep(0.1)
    assert feed.stats()["wakes"] == 0 and feed.stats()["reads"] == 1


def test_the_poll_finds_changes_no_notification_announced(postgres_url: str, writer: PostgresStore,
                                                          feeds: Callable[..., PostgresChangeFeed]) -> None:
    sink = Sink()
    feed = started(feeds(postgres_url, poll_interval=0.2), sink)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # a writer that does not notify
        conn.execute("INSERT INTO memsession_changes_hosts VALUES ('z', 1)")
        conn.execute("INSERT INTO memsession_changes VALUES ('z', 1, 1, %s, ARRAY[%s::bigint],"
                     " '{1}', '{f}', 0, 0)", [key(1), V])
    wait_for(lambda: sink.seqs("z") == [1])
    assert feed.stats()["wakes"] == 0


def test_a_terminated_connection_is_recovered_and_what_was_written_meanwhile_arrives(
        writer: PostgresStore, postgres_url: str, feeds: Callable[..., PostgresChangeFeed],
        caplog: pytest.LogCaptureFixture) -> None:
    application = f"feed-{uuid.uuid4().hex[:12]}"
    sink = Sink()
    # A poll too slow to help: what arrives does so through the read after the reconnect.
    feed = started(feeds(postgres_url, poll_interval=30.0, retry_min=1.0, application_name=application), sink)
    writer.save([make_test_record(key(1))])
    wait_for(lambda: sink.seqs("a") == [1])
    with caplog.at_level(logging.WARNING, logger="memsession.persist"):
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE application_name = %s", [application]).fetchall()
        assert killed == [(True,)]
        wait_for(lambda: feed.stats()["errors"] >= 1, what="the feed to see its connection go")
        writer.save([make_test_record(key(i), version=V + 1) for i in range(2, 5)])  # nobody listens now
        wait_for(lambda: sink.seqs("a") == [1, 2, 3, 4], timeout=20.0)
    assert feed.stats()["reconnects"] >= 1
    assert any("reconnecting" in r.getMessage() for r in caplog.records)
    assert sink.gaps == []


# -- what the feed refuses, and its errors ------------------------------------------------------------------


def test_records_that_break_the_rule_are_skipped_counted_and_logged(
        writer: PostgresStore, postgres_url: str, feeds: Callable[..., PostgresChangeFeed],
        caplog: pytest.LogCaptureFixture) -> None:
    secret = "k" * 64  # not hex: not a key as stored
    bad = [(secret, V, 1, False), (key(2), -5, 1, False), ("", 0, 0, True), (key(4).upper(), V, 1, False),
           (key(5), 0, 1, False)]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO memsession_changes_hosts VALUES ('a', 5)")
        keys, *arrays = (list(column) for column in zip(*bad))
        conn.execute("INSERT INTO memsession_changes VALUES ('a', 5, 1, %s, %s, %s, %s, 0, 0)",
                     ["\n".join(keys), *arrays])
    writer.save([make_test_record(key(6))])  # seq 6, good
    sink = Sink()
    with caplog.at_level(logging.DEBUG, logger="memsession.persist"):
        feed = started(feeds(postgres_url, positions={}), sink)
        wait_for(lambda: sink.seqs("a") == [6])
    assert feed.stats()["refused"] == len(bad)
    assert feed.positions() == {"a": 6} and sink.gaps == []
    messages = [r for r in caplog.records if "skipped a change" in r.getMessage()]
    assert len(messages) == len(bad) and not any(secret in r.getMessage() for r in messages)
    assert [r.levelno for r in messages] == [logging.WARNING] + [logging.DEBUG] * (len(bad) - 1)


def test_a_row_that_cant_be_read_whole_is_a_gap_over_its_seqs_for_every_partition(
        writer: PostgresStore, postgres_url: str, feeds: Callable[..., PostgresChangeFeed]) -> None:
    many = ROW_CHANGES + 1
    rows = [
        (2, 1, [key(1)] * 3, [V] * 3, [1] * 3, [False] * 3, 0),  # three records for two seqs
        (3, 3, [key(3)], [V, V], [1], [False], 0),  # arrays of unequal lengths: the server leaves them out
        (3 + many, 4, [key(4)] * many, [V] * many, [1] * many, [False] * many, 0),  # more than a row holds
        (4 + many, 4 + many, [key(5)], [V], [1], [False], V),  # a clear that lists a record
    ]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO memsession_changes_hosts VALUES ('z', %s)", [5 + many])
        for seq, first, keys, *rest in rows:
            conn.execute("INSERT INTO memsession_changes VALUES ('z', %s, %s, %s, %s, %s, %s, %s, 0)",
                         [seq, first, "\n".join(keys), *rest])
        conn.execute("INSERT INTO memsession_changes VALUES ('z', %s, %s, %s, %s, '{1}', '{f}', 0, 0)",
                     [5 + many, 5 + many, key(9), [V]])
    sink = Sink()
    feed = started(feeds(postgres_url, positions={}), sink)
    wait_for(lambda: sink.seqs("z") == [5 + many])
    assert sink.gaps == [("z", 1, 3, None), ("z", 3, 4, None), ("z", 4, 4 + many, None),
                         ("z", 4 + many, 5 + many, None)]
    assert feed.stats()["refused"] == 4 and feed.positions() == {"z": 5 + many}


def test_a_failing_callback_is_logged_and_the_feed_goes_on(writer: PostgresStore, postgres_url: str,
                                                           feeds: Callable[..., PostgresChangeFeed],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    got: list[Change] = []

    def on_changes(changes: list[Change]) -> None:
        if not got:
            got.append(changes[0])
            raise RuntimeError("the first batch fails")
        got.extend(changes)

    feed = feeds(postgres_url)
    with caplog.at_level(logging.ERROR, logger="memsession.persist"):
        feed.start(on_changes, lambda *gap: None)
        writer.save([make_test_record(key(1))])
        wait_for(lambda: len(got) == 1)
        writer.save([make_test_record(key(2))])
        wait_for(lambda: [c.seq for c in got] == [1, 2])
    assert feed.stats()["callback_errors"] == 1
    assert any("callback failed" in r.getMessage() for r in caplog.records)


def test_a_feed_whose_tables_are_missing_fails_at_start(postgres_url: str,
                                                        feeds: Callable[..., PostgresChangeFeed]) -> None:
    PostgresStore(postgres_url, create_table=True).close()  # no change log
    feed = feeds(postgres_url)
    with pytest.raises(StoreError, match="change_log=True") as raised:
        feed.start(Sink().on_changes, Sink().on_gap)
    assert not isinstance(raised.value, StoreUnavailable)


def test_a_feed_that_cannot_reach_the_server_fails_at_start(feeds: Callable[..., PostgresChangeFeed]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    feed = feeds(f"postgresql://postgres@127.0.0.1:{port}/none", connect_timeout=2.0)
    with pytest.raises(StoreUnavailable):
        feed.start(Sink().on_changes, Sink().on_gap)


def test_stop_is_prompt_and_idempotent(postgres_url: str, writer: PostgresStore,
                                       feeds: Callable[..., PostgresChangeFeed]) -> None:
    feed = started(feeds(postgres_url, poll_interval=30.0), Sink())
    wait_for(lambda: feed.stats()["reads"] >= 1)
    began = time.monotonic()
    feed.stop()
    assert time.monotonic() - began < 5.0
    feed.stop()
    with pytest.raises(RuntimeError):  # a running feed can't be started twice; a stopped one can
        started(feed, Sink())
        started(feed, Sink())


@pytest.mark.parametrize(("options", "option"), [
    ({"host": None}, "host"),
    ({"host": ""}, "host"),
    ({"poll_interval": 0}, "poll_interval"),
    ({"batch": 0}, "batch"),
    ({"retry_min": -1}, "retry_min"),
    ({"positions": {"a": -1}}, "positions"),
    ({"positions": {"a": True}}, "positions"),
    ({"positions": {"": 1}}, "positions"),
    ({"positions": [("a", 1)]}, "positions"),
])
def test_bad_feed_options_fail_at_construction(options: dict[str, Any], option: str) -> None:
    options = {"host": "b", **options}
    with pytest.raises(ConfigError) as raised:
        PostgresChangeFeed("postgresql://nobody@127.0.0.1:1/none", **options)
    assert raised.value.option == option


def test_a_feed_of_a_store_takes_its_table_from_the_store(writer: PostgresStore) -> None:
    with pytest.raises(ConfigError):
        PostgresChangeFeed(writer, table="other")
    with pytest.raises(ConfigError):
        PostgresChangeFeed(42)  # type: ignore[arg-type]
