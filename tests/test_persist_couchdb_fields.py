"""CouchStore merging per key against a real CouchDB-API server: documents, conflicts, old documents, the feed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from memsession.errors import StoreUnavailable
from memsession.session import Record
from persist.couchdb import CouchFollower, CouchStore
from persist.testing import T0, make_test_delta, make_test_record


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def db_url(couch_url: str, unique_name: Callable[..., str]) -> str:
    return f"{couch_url}/{unique_name('fields')}"


@pytest.fixture
def store(db_url: str) -> Any:
    store = CouchStore(db_url, trust_env=False)
    yield store
    store.close()


def test_documents_keep_stamps_and_seen_as_text_and_only_when_there_are_some(store: CouchStore) -> None:
    big = (1 << 62) + 1
    store.save([make_test_record("k", {"a": 1}, version=big, origin=1), make_test_record("plain", version=5)])
    store.save([make_test_delta("k", {"b": 2}, removed=["c"], version=big + 1, origin=(1 << 63) - 1)])
    doc = store.client.get("s%3Ak").json()
    top = str((1 << 63) - 1)
    assert doc["stamps"] == {"a": [str(big), "1"], "b": [str(big + 1), top], "c": [str(big + 1), top]}
    assert doc["seen"] == {"1": str(big), top: str(big + 1)}
    assert "partial" not in doc
    plain = store.client.get("s%3Aplain").json()
    assert "stamps" not in plain and "seen" not in plain


def test_a_document_written_before_stamps_loads_whole_and_takes_a_delta(store: CouchStore) -> None:
    old_doc = {
        "type": "memsession", "data": {"user": "ada", "cart": [1]}, "version": "100", "origin": "7",
        "created": T0, "accessed": T0, "expires": T0 + 3600, "deleted": False,
    }
    assert store.client.put("s%3Aold", json=old_doc).status_code == 201
    old = store.load("old")
    assert old is not None and old.data == {"user": "ada", "cart": [1]} and old.stamps is None and old.seen is None
    assert store.save([make_test_delta("old", {"cart": [1, 2]}, version=200, origin=9)]) == 1
    merged = store.load("old")
    assert merged is not None and merged.data == {"user": "ada", "cart": [1, 2]}
    assert merged.stamps == {"user": (100, 7), "cart": (200, 9)} and merged.seen == {7: 100, 9: 200}


@pytest.mark.parametrize("bad", [{"stamps": {"user": ["1", "x"]}}, {"stamps": {}}, {"seen": {"07": "1"}}])
def test_a_document_with_bad_stamps_is_refused_and_counted(store: CouchStore, bad: dict[str, Any]) -> None:
    doc = {"type": "memsession", "data": {"user": "ada"}, "version": "100", "origin": "7",
           "created": T0, "accessed": T0, "deleted": False, **bad}
    store.client.put("s%3Abad", json=doc)
    assert store.load("bad") is None
    assert list(store.load_all(0.0)) == []
    assert store.refused.count == 2


def test_a_conflict_merges_again_so_both_writers_keys_survive(db_url: str) -> None:
    """Another writer's delta lands between this save's read and its write: both keys are kept."""
    rival = CouchStore(db_url, trust_env=False)
    rival.save([make_test_record("k", {"user": "ada"}, version=100)])
    raced: list[bool] = []

    def race(request: httpx.Request) -> None:
        if request.url.path.endswith("/_bulk_docs") and not raced:
            raced.append(True)
            assert rival.save([make_test_delta("k", {"theirs": 1}, version=300, origin=2)]) == 1

    client = httpx.Client(base_url=db_url + "/", trust_env=False, event_hooks={"request": [race]})
    store = CouchStore(client=client)
    try:
        assert store.save([make_test_delta("k", {"mine": 1}, version=200, origin=1)]) == 1
        assert raced
        loaded = store.load("k")
        assert loaded is not None and loaded.data == {"user": "ada", "mine": 1, "theirs": 1}
    finally:
        store.close()
        client.close()
        rival.close()


def test_conflicts_on_every_try_end_in_an_error_that_says_so(db_url: str) -> None:
    rival = CouchStore(db_url, trust_env=False)
    version = [300]

    def race(request: httpx.Request) -> None:
        if request.url.path.endswith("/_bulk_docs"):
            version[0] += 1
            rival.save([make_test_delta("k", {f"r{version[0]}": 1}, version=version[0], origin=2)])

    client = httpx.Client(base_url=db_url + "/", trust_env=False, event_hooks={"request": [race]})
    store = CouchStore(client=client, conflict_retries=3)
    try:
        with pytest.raises(StoreUnavailable, match="changed by other writers each of the 3 times") as info:
            store.save([make_test_delta("k", {"mine": 1}, version=200, origin=1)])
        assert info.value.op == "save"
        loaded = rival.load("k")
        assert loaded is not None and "mine" not in loaded.data and len(loaded.data) == 3
    finally:
        store.close()
        client.close()
        rival.close()


def test_the_follower_hands_over_stamps_and_seen_less_what_a_clear_covers(store: CouchStore) -> None:
    seen: list[Record] = []
    follower = CouchFollower(store, seen.append, heartbeat=0.2).start()
    try:
        assert follower.connected.wait(10)
        store.save([make_test_record("k", {"old": 1}, version=100, origin=1)])
        store.save([make_test_delta("k", {"new": 2}, removed=["gone"], version=300)])
        wait_until(lambda: len(seen) == 2)
        assert seen[1].stamps == {"old": (100, 1), "new": (300, 7), "gone": (300, 7)}
        assert seen[1].seen == {1: 100, 7: 300} and not seen[1].partial
        store.clear(200)
        wait_until(lambda: follower.watermark == 200)
        store.save([make_test_delta("k", {"later": 3}, version=400)])
        wait_until(lambda: len(seen) == 3)
        assert seen[2].data == {"new": 2, "later": 3} and set(seen[2].stamps or ()) == {"new", "gone", "later"}
    finally:
        follower.stop()
