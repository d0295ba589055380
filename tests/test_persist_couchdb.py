"""CouchStore against a real CouchDB-API server (pouchdb-server): the store contract and more."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import httpx
import pytest

from memsession import SessionCache
from memsession.errors import ConfigError, StoreError, StoreUnavailable
from memsession.session import Record, is_valid_sid, new_id, session_key
from persist import Persistence
from persist.base import WATERMARK_KEY
from persist.couchdb import CouchFollower, CouchStore
from persist.persistence import PersistConfig
from persist.testing import T0, StoreContract, make_test_record
from tests.servers import CouchServer, free_port


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def db_url(couch_url: str, unique_name: Callable[..., str]) -> str:
    return f"{couch_url}/{unique_name('sessions')}"


def open_store(url: str, **options) -> CouchStore:
    return CouchStore(url, trust_env=False, **options)


class TestCouchContract(StoreContract):
    @pytest.fixture
    def make_store(self, db_url: str):
        return lambda: open_store(db_url)


class TestCouchSmallPagesContract(StoreContract):
    """Pages and purge batches far smaller than the data, so every loop turns."""

    batch_size = 1500

    @pytest.fixture
    def make_store(self, db_url: str):
        return lambda: open_store(db_url, page_size=64, purge_batch=50, prefix="session/")


def test_credentials_go_to_basic_auth_and_stay_hidden(couch_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = couch_url.replace("http://", "http://admin:s3cret-pw@") + "/creds"
    store = open_store(url, create=False)
    try:
        request = store.client.build_request("GET", "")
        assert "s3cret" not in str(request.url) and "admin" not in str(request.url)
        assert isinstance(store.client.auth, httpx.BasicAuth)
        assert "s3cret" not in repr(store) and "s3cret" not in store.url
        # The server knows no such user: the refusal proves the credentials were sent.
        with pytest.raises(StoreError) as info:
            store.load("k")
        assert "401" in str(info.value) and "s3cret" not in str(info.value)
        assert not isinstance(info.value, StoreUnavailable)
        assert "s3cret" not in caplog.text
    finally:
        store.close()


def test_passed_client_is_used_and_left_open(db_url: str) -> None:
    with httpx.Client(base_url=db_url + "/", trust_env=False) as client:
        store = CouchStore(client=client)
        store.save([make_test_record("k")])
        store.close()
        assert not client.is_closed
        assert client.get("s%3Ak").json()["type"] == "memsession"


def test_documents_are_readable_json(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.save([make_test_record("k", {"user": "ada", "big": 1 << 60}, version=(1 << 62) + 1)])
        doc = store.client.get("s%3Ak").json()
        assert doc["data"] == {"user": "ada", "big": {"$int": str(1 << 60)}}
        assert doc["version"] == str((1 << 62) + 1)
        assert doc["expires"] == T0 + 3600
    finally:
        store.close()


def test_purge_uses_the_expires_index(db_url: str) -> None:
    store = open_store(db_url)
    try:
        explain = store.client.post(
            "_explain", json={"selector": {"expires": {"$gte": 0, "$lte": T0}}, "use_index": ["memsession", "expires"]}
        ).json()
        assert explain["index"]["ddoc"] == "_design/memsession"
    finally:
        store.close()


def test_conflicting_writers_keep_the_newest(db_url: str) -> None:
    a, b = open_store(db_url), open_store(db_url)
    try:
        a.save([make_test_record("k", {"w": 1}, version=1)])
        # b's view of the revision goes stale between its read and its write:
        # a real conflict on _bulk_docs, resolved by re-reading.
        original = b._current
        calls = []

        def stale_then_fresh(op, ids, include_docs):
            current = original(op, ids, include_docs)
            if not calls:
                a.save([make_test_record("k", {"w": 2}, version=2)])
            calls.append(op)
            return current

        b._current = stale_then_fresh  # type: ignore[method-assign]
        assert b.save([make_test_record("k", {"w": 3}, version=3)]) == 1
        assert len(calls) == 2
        loaded = a.load("k")
        assert loaded is not None and loaded.data == {"w": 3}
        calls.clear()
        assert b.save([make_test_record("k", {"w": 0}, version=0)]) == 0
    finally:
        a.close()
        b.close()


def test_unreachable_server() -> None:
    with pytest.raises(StoreUnavailable):
        open_store(f"http://127.0.0.1:{free_port()}/db", timeout=1.0)


def test_foreign_document_is_a_store_error(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.client.put("s%3Aforeign", json={"hello": "world"})
        with pytest.raises(StoreError, match="not a session"):
            store.load("foreign")
    finally:
        store.close()


def test_response_size_limit(db_url: str) -> None:
    store = open_store(db_url, max_response_bytes=2000)
    try:
        store.save([make_test_record("big", {"x": "y" * 3000})])
        with pytest.raises(StoreError, match="larger than 2000 bytes"):
            store.load("big")
        with pytest.raises(StoreError, match="larger than 2000 bytes"):
            store.save([make_test_record("big", {"x": "z"}, version=2 << 40)])
    finally:
        store.close()


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"url": "ftp://host/db"},
        {"url": "http://127.0.0.1:5984/"},
        {"url": "http://127.0.0.1:5984/db", "prefix": "_x"},
        {"url": "http://127.0.0.1:5984/db", "page_size": 0},
        {"url": "http://127.0.0.1:5984/db", "prefix": "memsession:"},
        {"url": "http://127.0.0.1:5984/db", "prefix": "m"},
    ],
)
def test_bad_options(args: dict) -> None:
    with pytest.raises(ConfigError):
        CouchStore(create=False, **args)


def test_follower_feeds_other_hosts_writes_into_the_cache(db_url: str) -> None:
    here = SessionCache(persistence=Persistence(open_store(db_url), PersistConfig(mode="write_through")))
    there = SessionCache(persistence=Persistence(open_store(db_url), PersistConfig(mode="write_through")))
    assert here.persistence is not None
    follower = CouchFollower(here.persistence.store, here.apply, heartbeat=0.2).start()  # type: ignore[arg-type]
    try:
        assert follower.connected.wait(10)
        sid = new_id()
        there.set(sid, {"from": "there"})
        wait_until(lambda: sid in here)
        assert here.get(sid) == {"from": "there"}
        there.set(sid, {"from": "there", "n": 2})
        wait_until(lambda: here.get(sid) == {"from": "there", "n": 2})
        there.destroy(sid)
        wait_until(lambda: sid not in here)
        assert here.get(sid) is None
        record = here.record(sid)
        assert record is not None and record.deleted
    finally:
        follower.stop()
        here.close()
        there.close()


def test_follower_evicts_documents_deleted_in_couchdb(db_url: str) -> None:
    store = open_store(db_url)
    cache = SessionCache(persistence=Persistence(store))
    follower = CouchFollower(store, cache.apply, heartbeat=0.2).start()
    try:
        assert follower.connected.wait(10)
        sid = new_id()
        cache.set(sid, {"a": 1})
        assert cache.persistence is not None
        cache.persistence.flush()
        other = open_store(db_url)
        try:
            assert other.delete([session_key(sid)]) == 1
        finally:
            other.close()
        wait_until(lambda: sid not in cache)
        assert follower.counts["deletions"] == 1
        cache.set(sid, {"again": True})  # the eviction does not block the id
    finally:
        follower.stop()
        cache.close()


def test_follower_survives_bad_records_and_keeps_its_place(db_url: str) -> None:
    store = open_store(db_url)
    seen: list[Record] = []

    def on_record(record: Record) -> None:
        if record.key == "boom":
            raise RuntimeError("application error")
        seen.append(record)

    follower = CouchFollower(store, on_record, heartbeat=0.2).start()
    try:
        assert follower.connected.wait(10)
        store.save([make_test_record("boom")])
        store.client.put("s%3Aforeign", json={"not": "a session"})
        store.save([make_test_record("fine")])
        wait_until(lambda: [r.key for r in seen] == ["fine"])
        assert follower.counts["errors"] == 2
        since = follower.since
        assert since != "now"
    finally:
        follower.stop()
    restarted = CouchFollower(store, on_record, since=since, heartbeat=0.2).start()
    try:
        store.save([make_test_record("later")])
        wait_until(lambda: [r.key for r in seen] == ["fine", "later"])
    finally:
        restarted.stop()
        store.close()


def test_follower_reconnects_after_server_restart(
    couch_server: CouchServer, unique_name: Callable[..., str], request: pytest.FixtureRequest
) -> None:
    """pouchdb-server runs in memory, so a restart loses the data: the follower must come back anyway.

    A server of this test's own (restarting the shared one would wipe other tests' databases).
    """
    own = CouchServer()
    request.addfinalizer(own.stop)
    own.start()
    url = f"{own.url}/{unique_name('restart')}"
    store = open_store(url)
    seen: list[str] = []
    follower = CouchFollower(store, lambda r: seen.append(r.key), heartbeat=0.2, retry_min=0.05, retry_max=0.2)
    follower.start()
    try:
        assert follower.connected.wait(10)
        own.restart()
        wait_until(lambda: follower.counts["errors"] + follower.counts["reconnects"] >= 1)
        store.create()
        follower.since = 0
        wait_until(lambda: follower.connected.is_set())
        store.save([make_test_record("after-restart")])
        wait_until(lambda: "after-restart" in seen)
    finally:
        follower.stop()
        store.close()


def test_https_url_with_credentials_is_accepted() -> None:
    store = CouchStore("https://user:pa%40ss@couch.example.invalid:6984/my%20sessions", create=False)
    try:
        assert store.url == "https://couch.example.invalid:6984/my%20sessions/"
        request = store.client.build_request("GET", "")
        sent = next(store.client.auth.auth_flow(request))
        assert sent.headers["authorization"] == httpx.BasicAuth("user", "pa@ss")._auth_header
        assert "pa" not in repr(store) and "pa" not in str(sent.url)
    finally:
        store.close()


def test_documents_the_server_refuses_are_named(db_url: str) -> None:
    """A validate_doc_update function refuses some documents; the others are written."""
    from memsession import StoreRejected

    store = open_store(db_url)
    try:
        validate = "function (doc) { if (doc.data && doc.data.poison) { throw({forbidden: 'no poison'}); } }"
        response = store.client.put("_design/guard", json={"validate_doc_update": validate})
        assert response.status_code in (201, 202), response.text
        good = [make_test_record(f"g{i}") for i in range(5)]
        bad = make_test_record("bad", {"poison": True})
        with pytest.raises(StoreRejected) as info:
            store.save([*good[:2], bad, *good[2:]])
        assert info.value.keys == ["bad"]
        assert all(store.load(r.key) == r for r in good)
        assert store.load("bad") is None
    finally:
        store.close()


def test_opening_an_existing_database_only_reads(db_url: str) -> None:
    """A database member (not admin) can open an existing store: nothing is created twice."""
    open_store(db_url).close()
    base = httpx.URL(db_url + "/").path
    seen: list[tuple[str, str]] = []
    hooks = {"request": [lambda request: seen.append((request.method, request.url.path.removeprefix(base)))]}
    with httpx.Client(base_url=db_url + "/", trust_env=False, event_hooks=hooks) as client:
        CouchStore(client=client).close()
    # The database, its index, and the mark that its documents are keyed by digests: nothing to move.
    assert seen == [("GET", ""), ("GET", "_index"), ("GET", "_local/memsession-keys")]


# -- clear: the watermark document ---------------------------------------------------

WATERMARK_PATH = "memsession%3Acleared"


def test_watermark_document_is_outside_the_sessions(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.save([make_test_record("old", version=100), make_test_record("new", version=300)])
        assert store.clear(200) == 1
        doc = store.client.get(WATERMARK_PATH).json()
        assert {k: doc[k] for k in ("_id", "type", "version", "swept")} == {
            "_id": WATERMARK_KEY,
            "type": "memsession-watermark",
            "version": "200",
            "swept": "200",
        }
        assert "expires" not in doc and not doc["_id"].startswith(store.prefix)
        assert not is_valid_sid(WATERMARK_KEY)
        assert [r.key for r in store.load_all(0.0)] == ["new"]
        assert store.purge(T0 + 10**9) == 1
        assert store.client.get(WATERMARK_PATH).status_code == 200
    finally:
        store.close()


def test_live_documents_below_the_watermark_are_never_read(db_url: str) -> None:
    """Belt and braces: a live document another writer slipped in stays invisible; a tombstone is read and kept."""
    store = open_store(db_url)
    try:
        store.clear(200)
        sneaky = store._doc(make_test_record("sneaky", version=150))
        assert store.client.put("s%3Asneaky", json=sneaky).status_code == 201
        tomb = make_test_record("tomb", version=150, deleted=True)
        assert store.client.put("s%3Atomb", json=store._doc(tomb)).status_code == 201
        assert store.load("sneaky") is None
        assert list(store.load_all(0.0)) == [tomb]
        assert store.clear(250) == 1
        assert store.load("tomb") == tomb
    finally:
        store.close()


def test_a_save_that_raced_a_clear_takes_back_what_it_wrote(db_url: str) -> None:
    """The watermark rises between a save's read and its write: the save deletes its late documents."""
    saver, clearer = open_store(db_url), open_store(db_url)
    try:
        saver.save([make_test_record("existing", version=50)])
        original = saver._current
        calls: list[str] = []

        def clear_after_reading(op: str, ids: list[str], include_docs: bool) -> dict:
            current = original(op, ids, include_docs)
            if op == "save" and not calls:
                calls.append(op)
                # Deletes "existing" and finds nothing else: the new documents aren't written yet.
                assert clearer.clear(200) == 1
            return current

        saver._current = clear_after_reading  # type: ignore[method-assign]
        late = [make_test_record("late", version=150), make_test_record("existing", version=60)]
        fresh = make_test_record("fresh", version=250)
        late_tomb = make_test_record("late-tomb", version=150, deleted=True)
        assert saver.save([*late, fresh, late_tomb]) == 2
        assert saver.client.get("s%3Alate").status_code == 404
        assert saver.client.get("s%3Aexisting").status_code == 404
        assert clearer.load("fresh") == fresh
        assert clearer.load("late-tomb") == late_tomb  # a tombstone is never taken back
    finally:
        saver.close()
        clearer.close()


def test_clear_sweeps_in_batches_and_a_repeat_does_not_scan(db_url: str) -> None:
    requests: list[str] = []
    hooks = {"request": [lambda request: requests.append(f"{request.method} {request.url.path}")]}
    with httpx.Client(base_url=db_url + "/", trust_env=False, event_hooks=hooks) as client:
        # One database, so one watermark: the second round works above the first.
        for batch, base in ((1, 100), (7, 200)):
            store = CouchStore(client=client, purge_batch=batch, prefix=f"b{batch}/")
            records = [make_test_record(f"k{i:03}", version=base + i) for i in range(40)]
            store.save(records)
            assert store.clear(base + 24) == 25
            assert sorted(r.version for r in store.load_all(0.0)) == list(range(base + 25, base + 40))
        requests.clear()
        assert store.clear(150) == 0
        assert requests == [f"GET {store.client.base_url.path}{WATERMARK_KEY}"]


def test_clear_sweep_leaves_tombstones_even_one_that_replaced_a_document_it_read(db_url: str) -> None:
    """A tombstone written between the sweep's read and its delete makes the delete conflict: it stays."""
    clearer, writer = open_store(db_url), open_store(db_url)
    try:
        kept = make_test_record("kept", version=100, deleted=True)
        clearer.save([make_test_record(k, version=100) for k in ("a", "b", "racing")] + [kept])
        racing_tomb = make_test_record("racing", version=110, deleted=True)
        original = clearer._remove

        def destroy_before_deleting(op: str, revs: dict[str, str]) -> int:
            if op == "clear" and "s:racing" in revs and writer.load("racing") != racing_tomb:
                assert writer.save([racing_tomb]) == 1
            return original(op, revs)

        clearer._remove = destroy_before_deleting  # type: ignore[method-assign]
        assert clearer.clear(200) == 2
        assert writer.load("a") is None and writer.load("b") is None
        assert writer.load("racing") == racing_tomb and writer.load("kept") == kept
        assert sorted(r.key for r in writer.load_all(0.0)) == ["kept", "racing"]
    finally:
        clearer.close()
        writer.close()


def test_an_interrupted_clear_is_finished_by_the_next(db_url: str) -> None:
    """The watermark rose but the sweep never ran (the process died): a repeat sweeps."""
    store = open_store(db_url)
    try:
        store.save([make_test_record("old", version=100)])
        store._raise_watermark(200, "version")  # the first step of a clear, alone
        assert store.load("old") is None
        assert store.client.get("s%3Aold").status_code == 200
        assert store.clear(150) == 1
        assert store.client.get("s%3Aold").status_code == 404
        assert store.clear(200) == 0
    finally:
        store.close()


def test_follower_hands_clears_to_on_clear_never_as_sessions(db_url: str) -> None:
    store = open_store(db_url)
    seen: list[Record] = []
    clears: list[int] = []
    follower = CouchFollower(store, seen.append, on_clear=clears.append, heartbeat=0.2).start()
    try:
        assert follower.connected.wait(10)
        store.save([make_test_record("before", version=100)])
        store.clear(200)
        late_tomb = make_test_record("late-tomb", version=150, deleted=True)
        store.save([late_tomb])
        # A live document another writer slipped in below the watermark is not handed over.
        sneaky = store._doc(make_test_record("sneaky", version=150))
        assert store.client.put("s%3Asneaky", json=sneaky).status_code == 201
        store.save([make_test_record("after", version=300)])
        wait_until(lambda: [r.key for r in seen] == ["before", "before", "late-tomb", "after"])
        assert [r.deleted for r in seen] == [False, True, True, False]
        # once, though the watermark document changes twice (raised, then swept)
        assert clears == [200]
        assert follower.watermark == 200 and follower.counts["clears"] == 1
        # The eviction of a swept document sits below every real write: it never outranks a tombstone.
        assert (seen[1].version, seen[1].origin) == (0, 0)
        # A tombstone below the watermark is handed over as stored.
        assert seen[2] == late_tomb
    finally:
        follower.stop()
        store.close()


def test_follower_eviction_after_a_clear_reaches_the_cache(db_url: str) -> None:
    store = open_store(db_url)
    store.clear(1)  # a clear made before this process started
    cache = SessionCache(persistence=Persistence(store))
    clears: list[int] = []
    follower = CouchFollower(store, cache.apply, on_clear=clears.append, heartbeat=0.2).start()
    try:
        assert follower.connected.wait(10)
        assert follower.watermark == 1 and clears == [1]  # read at connect, handed on
        sid = new_id()
        cache.set(sid, {"a": 1})
        assert cache.persistence is not None
        cache.persistence.flush()
        other = open_store(db_url)
        try:
            assert other.delete([session_key(sid)]) == 1
        finally:
            other.close()
        wait_until(lambda: sid not in cache)
    finally:
        follower.stop()
        cache.close()


def test_follower_eviction_never_replaces_a_tombstone_a_clear_kept(db_url: str) -> None:
    """A destroy from before a clear keeps blocking a late live write, even once CouchDB drops the document."""
    store = open_store(db_url)
    cache = SessionCache(persistence=Persistence(store))
    follower = CouchFollower(store, cache.apply, on_clear=cache.apply_clear, heartbeat=0.2).start()
    try:
        assert follower.connected.wait(10)
        assert cache.persistence is not None
        sid = new_id()
        cache.set(sid, {"a": 1})
        live = cache.record(sid)
        cache.destroy(sid)
        tomb = cache.record(sid)
        assert live is not None and tomb is not None and tomb.deleted
        cache.persistence.flush()
        cache.clear()
        assert cache.record(sid) == tomb
        assert store.load(session_key(sid)) == tomb  # the store's clear kept it too
        other = open_store(db_url)
        try:
            assert other.delete([session_key(sid)]) == 1
        finally:
            other.close()
        wait_until(lambda: follower.counts["deletions"] == 1)
        assert cache.record(sid) == tomb
        # A write that lost to the destroy arrives late, above the clear's watermark.
        late = dataclasses.replace(live, data={"late": True}, version=cache.cleared + 1)
        assert not cache.apply(late)
        assert sid not in cache and cache.get(sid) is None
    finally:
        follower.stop()
        cache.close()
