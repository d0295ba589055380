"""CouchChangeFeed: the pure reading of documents and sequences, then the feed on a real pouchdb-server."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from memsession.errors import ConfigError, RecordRefused, StoreError
from memsession.record_shape import MAX_SEEN_ENTRIES
from memsession.session import new_id, session_key
from persist.couchdb import CouchChangeFeed, CouchStore
from persist.couchdb.changes import seq_fault
from persist.couchdb.feed import FEED_HOST, SINCE, doc_changes, seq_number, since_lost
from persist.feed import MAX_CURSOR, Change, ChangeFeed
from persist.testing import make_test_record

# -- documents and sequences, without a server ------------------------------------------------


def test_a_live_document_reflects_each_writer_it_names_its_own_newest_write_last() -> None:
    doc = {"version": "30", "origin": "7", "deleted": False, "seen": {"9": "20", "7": "30", "-4": "5"}}
    assert doc_changes(doc) == (False, [(20, 9), (5, -4), (30, 7)])
    assert doc_changes({"version": "30", "origin": "7"}) == (False, [(30, 7)])  # no seen: its own write alone


def test_a_tombstone_is_its_own_write_alone() -> None:
    doc = {"version": "30", "origin": "7", "deleted": True, "seen": {"9": "20"}}
    assert doc_changes(doc) == (True, [(30, 7)])


@pytest.mark.parametrize("doc", [
    None,
    ["not", "a", "document"],
    {"version": 30, "origin": "7"},  # numbers as text only: JSON numbers may be doubles
    {"version": "030", "origin": "7"},
    {"version": "30", "origin": "seven"},
    {"version": "30", "origin": "7", "deleted": "no"},
    {"version": "30", "origin": "7", "seen": ["7", "30"]},
    {"version": "30", "origin": "7", "seen": {"7": "31"}},  # later than the record itself
    {"version": "30", "origin": "7", "seen": {str(n): "1" for n in range(MAX_SEEN_ENTRIES + 1)}},
])
def test_a_document_that_is_no_session_is_refused(doc: object) -> None:
    with pytest.raises(RecordRefused):
        doc_changes(doc)


def test_sequences_compare_by_the_count_they_start_with() -> None:
    assert seq_number(12) == 12
    assert seq_number("12") == 12
    assert seq_number("12-g1AAAAFTeJzLYWBg") == 12
    assert seq_number("garbage") is None and seq_number("12x") is None
    assert not since_lost("12-abc", "12-def") and not since_lost(3, 12) and not since_lost("3", 12)
    assert since_lost(13, 12) and since_lost("13-abc", "12-def")  # ahead: the database was made anew
    assert since_lost("garbage", 12)  # PouchDB would follow from it without a word, and hand nothing over
    assert not since_lost("garbage", "opaque")  # nothing to compare: the server is the judge


def test_what_a_server_may_send_as_a_sequence() -> None:
    assert seq_fault(0) is None and seq_fault("12-g1AAAA") is None
    for bad in (-1, True, None, 1.5, "", "a\nb", "\u00e9", "x" * (MAX_CURSOR + 1), ["12"]):
        assert seq_fault(bad) is not None, bad


def test_positions_it_can_not_follow_from_are_refused_when_made() -> None:
    store = CouchStore("http://127.0.0.1:9/db", create=False, trust_env=False)
    try:
        for bad in ({FEED_HOST: "3"}, {SINCE: 12}, {FEED_HOST: -1}, {"": 3}, {SINCE: ""}, ["couchdb", 3]):
            with pytest.raises(ConfigError):
                CouchChangeFeed(store, positions=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            CouchChangeFeed(store, heartbeat=0)
        feed = CouchChangeFeed(store, positions={FEED_HOST: 3, SINCE: "12", "host-a": 5})
        assert feed.positions() == {FEED_HOST: 3, SINCE: "12"}  # another store's entries are not its
        assert isinstance(feed, ChangeFeed)
        with pytest.raises(ConfigError):
            CouchChangeFeed("http://127.0.0.1:9/db")  # type: ignore[arg-type]
    finally:
        store.close()


# -- on a real CouchDB-API server -----------------------------------------------------------------


class Taken:
    """What a feed handed over, gathered from its thread."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.gaps: list[tuple[str, int, int, int | None]] = []
        self._lock = threading.Lock()

    def on_changes(self, changes: list[Change]) -> None:
        with self._lock:
            self.changes.extend(changes)

    def on_gap(self, host: str, expected: int, got: int, partitions: int | None) -> None:
        with self._lock:
            self.gaps.append((host, expected, got, partitions))

    def keys(self) -> list[str]:
        with self._lock:
            return [change.key for change in self.changes]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def store(couch_url: str, unique_name: Callable[..., str]) -> Iterator[CouchStore]:
    made = CouchStore(f"{couch_url}/{unique_name('feed')}", trust_env=False)
    yield made
    made.close()


def started(store: CouchStore, taken: Taken, **options: Any) -> CouchChangeFeed:
    feed = CouchChangeFeed(store, heartbeat=0.2, retry_min=0.05, retry_max=0.2, **options)
    feed.start(taken.on_changes, taken.on_gap)
    return feed


def test_writes_destroys_and_clears_are_handed_over_as_changes_never_data(store: CouchStore) -> None:
    store.save([make_test_record(session_key(new_id()), version=5)])  # before the feed: not handed over
    taken = Taken()
    feed = started(store, taken)
    try:
        key = session_key(new_id())
        live = make_test_record(key, {"secret": "x"}, version=100, origin=7)
        store.save([live])
        wait_until(lambda: taken.keys() == [key])
        assert taken.changes == [Change(key, 100, 7, False, 0, FEED_HOST, 1)]
        store.save([dataclasses.replace(live, data={}, version=200, deleted=True)])
        store.clear(300)
        wait_until(lambda: len(taken.changes) == 3)
        assert taken.changes[1:] == [Change(key, 200, 7, True, 0, FEED_HOST, 2),
                                     Change("", 0, 0, False, 300, FEED_HOST, 3)]
        assert feed.positions()[FEED_HOST] == 3 and feed.stats()["clears"] == 1
        assert taken.gaps == []
    finally:
        feed.stop()


def test_a_document_another_writer_merged_over_names_both_writers(store: CouchStore) -> None:
    """The feed has each document's latest revision only: the writer merged over must still be named."""
    taken = Taken()
    feed = started(store, taken)
    try:
        key = session_key(new_id())
        store.save([make_test_record(key, {"a": 1}, version=100, origin=1)])
        store.save([make_test_record(key, {"b": 2}, version=200, origin=2)])
        wait_until(lambda: any(c.version == 200 for c in taken.changes))
        last = [(c.version, c.origin) for c in taken.changes][-2:]
        assert last == [(100, 1), (200, 2)]
    finally:
        feed.stop()


def test_what_is_no_session_is_skipped_or_refused_without_its_key(
    store: CouchStore, caplog: pytest.LogCaptureFixture
) -> None:
    taken = Taken()
    feed = started(store, taken)
    try:
        gone = session_key(new_id())
        store.save([make_test_record(gone)])
        assert store.delete([gone]) == 1  # deleted in CouchDB (a purge, a sweep): its end is known already
        assert store.client.put("other-app-doc", json={"x": 1}).status_code == 201
        assert store.client.put("s%3Anot-a-session", json={"not": "a session"}).status_code == 201
        with caplog.at_level(logging.DEBUG, "memsession.persist"):
            store.save([make_test_record("not-a-digest")])  # key is not a session key: refused
            after = session_key(new_id())
            store.save([make_test_record(after)])
            wait_until(lambda: after in taken.keys())
        assert feed.stats()["refused"] == 2 and feed.stats()["skipped"] >= 2
        assert "not-a-digest" not in caplog.text and "not-a-session" not in caplog.text
        assert [c.seq for c in taken.changes] == list(range(1, len(taken.changes) + 1))
    finally:
        feed.stop()


def test_a_feed_made_with_the_positions_of_another_resumes_where_it_stood(store: CouchStore) -> None:
    taken = Taken()
    feed = started(store, taken)
    first = session_key(new_id())
    store.save([make_test_record(first)])
    wait_until(lambda: taken.keys() == [first])
    feed.stop()
    kept = feed.positions()
    assert isinstance(kept[SINCE], str) and kept[FEED_HOST] == 1
    while_away = session_key(new_id())
    store.save([make_test_record(while_away)])
    again = Taken()
    resumed = started(store, again, positions=kept)
    try:
        wait_until(lambda: again.keys() == [while_away])  # neither replayed nor missed
        assert again.changes[0].seq == 2 and again.gaps == []
        wait_until(lambda: resumed.caught_up_at() is not None, 5.0)  # a heartbeat after the last change
    finally:
        resumed.stop()


@pytest.mark.parametrize("kept", [
    {FEED_HOST: 4, SINCE: "999999"},  # ahead of the database: it was made anew
    {FEED_HOST: 4, SINCE: "not-a-sequence"},  # PouchDB would follow from it, silently handing nothing over
    {FEED_HOST: 4},  # positions kept without a since
    {"host-a": 12},  # a PostgreSQL feed's
])
def test_a_since_it_can_not_follow_from_is_a_gap_then_it_follows_from_the_end(
    store: CouchStore, kept: dict[str, object]
) -> None:
    store.save([make_test_record(session_key(new_id()))])
    taken = Taken()
    feed = started(store, taken, positions=kept)
    try:
        wait_until(lambda: taken.gaps)
        skipped = kept.get(FEED_HOST, 0) + 1  # type: ignore[operator]
        assert taken.gaps == [(FEED_HOST, skipped, skipped + 1, None)] and feed.stats()["gaps"] == 1
        key = session_key(new_id())
        store.save([make_test_record(key)])
        wait_until(lambda: taken.keys() == [key])
        assert taken.changes[0].seq == skipped + 1
    finally:
        feed.stop()


def test_start_says_at_once_when_the_database_can_not_be_followed(couch_url: str) -> None:
    store = CouchStore(f"{couch_url}/missing-database", create=False, trust_env=False)
    try:
        with pytest.raises(StoreError):
            CouchChangeFeed(store).start(lambda changes: None, lambda *gap: None)
    finally:
        store.close()


def test_a_callback_that_fails_is_counted_and_the_feed_goes_on(store: CouchStore) -> None:
    taken = Taken()
    failed = threading.Event()

    def on_changes(changes: list[Change]) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("application error")
        taken.on_changes(changes)

    feed = CouchChangeFeed(store, heartbeat=0.2)
    feed.start(on_changes, taken.on_gap)
    try:
        store.save([make_test_record(session_key(new_id()))])
        wait_until(lambda: feed.stats()["callback_errors"] == 1)
        key = session_key(new_id())
        store.save([make_test_record(key)])
        wait_until(lambda: taken.keys() == [key])
    finally:
        stopping = time.monotonic()
        feed.stop()
    assert time.monotonic() - stopping < 2.0  # within about a heartbeat


def test_a_busy_feed_counts_as_caught_up_once_past_the_end_it_read(store: CouchStore) -> None:
    """No heartbeat comes while changes keep coming: the feed reads the database's end and gets past it."""
    taken = Taken()
    feed = CouchChangeFeed(store, heartbeat=3.0)
    feed.start(taken.on_changes, taken.on_gap)
    try:
        assert feed.caught_up_at() is None
        deadline = time.monotonic() + 1.5
        while feed.caught_up_at() is None and time.monotonic() < deadline:
            store.save([make_test_record(session_key(new_id()))])
            time.sleep(0.02)
        caught = feed.caught_up_at()
        assert caught is not None and time.monotonic() - caught < 1.5  # long before the first heartbeat
    finally:
        feed.stop()
