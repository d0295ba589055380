"""Session ids never rest or travel in clear: stores, the hub, snapshots and bus frames carry ``session_key(sid)``.

Before, the JSON file's ``"k"``, PostgreSQL's ``sid``, CouchDB's ``_id``, every
bus frame and the hub held the id itself, and with Django (whose cookie is the
bare id) a copied row was a working login. Each test here writes through the
real component and looks at what it holds; the end-to-end ones take a key out of
a real gunicorn's store file and present it as a cookie. The migration tests
open stores as 0.1 left them (rows under raw ids).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import httpx
import psycopg
import pytest
import zmq

from memsession import SessionCache, wire
from memsession.bus import ZmqBus
from memsession.errors import WireError
from memsession.hub import HubConfig, query_snapshot, query_stats
from memsession.session import Record, is_valid_sid, legacy_key, new_id, prepare_data, session_key
from persist import Persistence
from persist.couchdb import CouchStore
from persist.jsonfile import JsonFileStore
from persist.jsonfile.snapshot import write_snapshot
from persist.postgres import PostgresStore
from tests.servers import unique_name
from tests.webservers import Hub, WebServer

WALL = time.time()


def _record(key: str, data: dict, *, version: int = 1 << 40, deleted: bool = False) -> Record:
    copy, size, flat = prepare_data({} if deleted else data, 1 << 20)
    return Record(key, copy, version, 7, WALL, WALL, WALL + 3600.0, deleted, flat, size)


# -- the key ---------------------------------------------------------------------------------------


def test_the_key_is_the_ids_sha256_and_can_never_pass_for_an_id() -> None:
    sid = new_id()
    key = session_key(sid)
    assert key == hashlib.sha256(sid.encode()).hexdigest()
    assert not is_valid_sid(key) and session_key(key) != key
    assert legacy_key(sid) == key and legacy_key(key) is None


def test_the_cache_holds_and_lists_keys_and_a_key_opens_nothing() -> None:
    with SessionCache() as cache:
        sid = new_id()
        record = cache.set(sid, {"user": "ann"})
        assert record.key == session_key(sid)
        assert list(cache) == [session_key(sid)] and cache.all() == {session_key(sid): {"user": "ann"}}
        assert sid in cache and cache.record(sid) == record and cache.held(record.key) == record
        assert cache.get(record.key) is None  # a key presented as an id is a miss
        assert cache.destroy_key(record.key) and cache.get(sid) is None


# -- at rest ---------------------------------------------------------------------------------------


def test_the_json_file_holds_digests_only(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    sid, gone = new_id(), new_id()
    with SessionCache(persistence=Persistence(JsonFileStore(path), mode="write_through")) as cache:
        cache.set(sid, {"user": "ann"})
        cache.set(gone, {"user": "bob"})
        cache.destroy(gone)
    text = path.read_text()
    assert sid not in text and gone not in text
    keys = {json.loads(line)["k"] for line in text.splitlines() if '"k"' in line}
    assert keys == {session_key(sid), session_key(gone)}


@pytest.mark.postgres
def test_postgres_rows_hold_digests_only(postgres_url: str) -> None:
    table = unique_name("hashed")
    sid = new_id()
    store = PostgresStore(postgres_url, table=table, create_table=True)
    with SessionCache(persistence=Persistence(store, mode="write_through")) as cache:
        cache.set(sid, {"user": "ann"})
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(f'SELECT sid, sess::text FROM "{table}"').fetchall()
    assert rows and all(sid not in key and sid not in data for key, data in rows)
    assert [key for key, _ in rows] == [session_key(sid)]


@pytest.mark.couchdb
def test_couchdb_documents_hold_digests_only(couch_url: str) -> None:
    url = f"{couch_url}/{unique_name('hashed')}"
    sid = new_id()
    store = CouchStore(url, trust_env=False)
    with SessionCache(persistence=Persistence(store, mode="write_through")) as cache:
        cache.set(sid, {"user": "ann"})
    listing = httpx.get(url + "/_all_docs", params={"include_docs": "true"}, timeout=10.0, trust_env=False).text
    assert sid not in listing and f"s:{session_key(sid)}" in listing


# -- on the bus and in the hub ---------------------------------------------------------------------


@pytest.mark.zmq
@pytest.mark.timeout(60)
def test_bus_frames_and_the_hubs_snapshot_carry_digests_only() -> None:
    with Hub() as hub:
        _, subscribe, requests = HubConfig(runtime_dir=hub.runtime_dir).endpoints()
        ctx = zmq.Context.instance()
        capture = ctx.socket(zmq.SUB)
        capture.setsockopt(zmq.SUBSCRIBE, b"")
        capture.connect(subscribe)
        frames: list[bytes] = []
        try:
            time.sleep(0.3)  # the subscription reaches the hub's XPUB
            sid, gone = new_id(), new_id()
            with SessionCache(bus=ZmqBus(runtime_dir=hub.runtime_dir), touch_interval=0.0) as cache:
                cache.set(sid, {"user": "ann"})
                cache.touch(sid)
                cache.set(gone, {"user": "bob"})
                cache.destroy(gone)
                wanted = {session_key(sid).encode(), session_key(gone).encode()}
                deadline = time.monotonic() + 20.0
                while wanted and time.monotonic() < deadline:
                    if capture.poll(200):
                        parts = capture.recv_multipart()
                        frames.extend(parts)
                        wanted = {k for k in wanted if not any(k in p for p in parts)}
                assert not wanted, "the hub never forwarded the writes"
                snapshot = query_snapshot(requests)
                answered, found = cache.bus.lookup(session_key(sid), timeout=5.0)  # the hub's key read
        finally:
            capture.close(linger=0)
    assert not any(sid.encode() in f or gone.encode() in f for f in frames)
    assert {r.key for r in snapshot} == {session_key(sid), session_key(gone)}
    assert all(sid not in str(r) and gone not in str(r) for r in snapshot)
    assert answered and found is not None and found.data == {"user": "ann"}


# -- a copied row is no login ----------------------------------------------------------------------


E2E = {
    "django": ("tests.e2e_apps.django_app:application", "sessionid"),
    "flask": ("tests.e2e_apps.flask_embedded:app", "session"),
}


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("framework", sorted(E2E))
def test_a_key_copied_from_the_store_file_is_no_login(framework: str, tmp_path: Path) -> None:
    target, cookie_name = E2E[framework]
    store = tmp_path / "sessions.json"

    def server() -> WebServer:
        return WebServer("gunicorn", target, workers=2, env={"MEMSESSION_STORE": str(store)},
                         config="tests/e2e_apps/gunicorn_embedded.conf.py")

    def me(cookie: str) -> dict:
        with httpx.Client(base_url=running.url, timeout=10.0, trust_env=False) as c:
            c.cookies.set(cookie_name, cookie)
            response = c.get("/me")
            assert response.status_code == 200, response.text
            return response.json()["session"]

    with server() as running:
        with httpx.Client(base_url=running.url, timeout=10.0, trust_env=False) as c:
            response = c.post("/login", params={"user": "victim"})
            assert response.status_code == 200
            cookie = response.cookies[cookie_name]
        assert me(cookie).get("user") == "victim"
    # Stopped: the sidecar wrote the file. What an attacker who copied it holds:
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    keys = [line["k"] for line in lines if "k" in line]
    assert keys and all(not is_valid_sid(k) for k in keys)
    with server() as running:
        assert me(cookie).get("user") == "victim"  # the session outlived the restart, under its key
        for key in keys:
            assert me(key) == {}
            if framework == "flask":  # Flask's cookie is signed: a key can't even be presented unsigned
                assert me(f"{key}.1.x") == {}


# -- stores written by 0.1 -------------------------------------------------------------------------


def test_a_0_1_json_file_moves_to_digests_and_its_sessions_stay(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    sid, gone = new_id(), new_id()
    write_snapshot(str(path), [_record(sid, {"user": "ann"}), _record(gone, {}, deleted=True)], WALL)
    assert sid in path.read_text()
    store = JsonFileStore(path, save_interval=None)
    text = path.read_text()  # rewritten as it opened
    assert sid not in text and gone not in text and session_key(sid) in text
    with SessionCache(persistence=Persistence(store)) as cache:
        assert cache.get(sid) == {"user": "ann"}
        assert cache.get(gone) is None and cache.record(gone) is not None and cache.record(gone).deleted


def _unmark(postgres_url: str, table: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'COMMENT ON COLUMN "{table}"."sid" IS NULL')


@pytest.mark.postgres
def test_a_0_1_postgres_table_moves_to_digests_and_the_newer_copy_wins(postgres_url: str) -> None:
    table = unique_name("legacy")
    sid, both, gone = new_id(), new_id(), new_id()
    with closing(PostgresStore(postgres_url, table=table, create_table=True)) as store:
        store.save([_record(sid, {"user": "ann"}), _record(gone, {}, deleted=True),
                    # a crash between moving and deleting left both: the newer copy (under the key) wins
                    _record(both, {"n": 1}), _record(session_key(both), {"n": 2}, version=(1 << 40) + 1)])
    _unmark(postgres_url, table)
    with closing(PostgresStore(postgres_url, table=table)) as store:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            keys = {k for (k,) in conn.execute(f'SELECT sid FROM "{table}"')}
            comment = conn.execute(
                "SELECT col_description(%s::regclass, 1)", [f'"{table}"']
            ).fetchone()
        assert keys == {session_key(sid), session_key(both), session_key(gone)}
        assert comment is not None and "SHA-256" in comment[0]
        with SessionCache(persistence=Persistence(store)) as cache:
            assert cache.get(sid) == {"user": "ann"} and cache.get(both) == {"n": 2}
            assert cache.get(gone) is None


@pytest.mark.couchdb
def test_a_0_1_couchdb_database_moves_to_digests(couch_url: str) -> None:
    url = f"{couch_url}/{unique_name('legacy')}"
    sid = new_id()
    with closing(CouchStore(url, trust_env=False)) as store:
        store.save([_record(sid, {"user": "ann"})])
    with httpx.Client(base_url=url + "/", trust_env=False, timeout=10.0) as http:
        mark = http.get("_local/memsession-keys").json()
        assert http.delete("_local/memsession-keys", params={"rev": mark["_rev"]}).status_code in (200, 202)
        ids = lambda: http.get("_all_docs").text  # noqa: E731
        with closing(CouchStore(url, trust_env=False, create=False)) as store:
            assert f"s:{sid}" in ids()  # create=False makes no request when made
            store.rekey_legacy()
        assert f"s:{sid}" not in ids() and f"s:{session_key(sid)}" in ids()
        with closing(CouchStore(url, trust_env=False)) as store, SessionCache(persistence=Persistence(store)) as cache:
            assert cache.get(sid) == {"user": "ann"}


def test_ddl_prints_the_key_columns_meaning() -> None:
    out = subprocess.run([sys.executable, "-m", "memsession", "ddl"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent).stdout
    assert 'COMMENT ON COLUMN "memsession"."sid" IS' in out and "SHA-256" in out


# -- a 0.1 process on the same hub -----------------------------------------------------------------


def test_a_frame_of_protocol_version_1_is_refused_as_another_version() -> None:
    payload = wire.encode_set(_record(session_key(new_id()), {"n": 1}), 5, 1, 1, 0)[1]
    with pytest.raises(WireError) as info:
        wire.decode([b"ms1s", payload])
    assert info.value.kind == "other version" and "another memsession release" in str(info.value)
    assert wire.decode([wire.PROTOCOL + b"s", payload]).op == wire.SET


@pytest.mark.zmq
@pytest.mark.timeout(60)
def test_a_0_1_process_on_the_hub_is_counted_not_silently_ignored() -> None:
    """A 0.1 publisher (raw ids, protocol version 1) reaches the hub and a worker, and both count it."""
    with Hub() as hub:
        publish, _, requests = HubConfig(runtime_dir=hub.runtime_dir).endpoints()
        old = zmq.Context.instance().socket(zmq.PUB)
        old.connect(publish)
        sid = new_id()
        frames = wire.encode_set(_record(sid, {"by": "0.1"}), 5, 1, 1, 0)
        try:
            with SessionCache(bus=ZmqBus(runtime_dir=hub.runtime_dir)) as worker:

                def counted() -> bool:
                    old.send_multipart([b"ms1" + frames[0][3:], frames[1]])
                    hub_dropped = query_stats(requests)["dropped"]
                    worker_dropped = worker.bus.stats()["dropped"]  # the hub's XPUB forwards what it hears
                    return bool(hub_dropped.get("other version") and worker_dropped.get("other version"))

                deadline = time.monotonic() + 20.0
                while not counted():
                    assert time.monotonic() < deadline, "the hub and the worker never counted the version-1 frame"
                    time.sleep(0.2)
                assert worker.get(sid) is None and worker.held(sid) is None
                assert query_snapshot(requests) == []
        finally:
            old.close(linger=0)
