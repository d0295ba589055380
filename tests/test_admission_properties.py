"""Random and mutated records through every door: only documented errors, and nothing refused gets in.

Each door either takes a record that obeys the record rule (``memsession.admission``)
or refuses it in its documented way: ``WireError`` from the decoder, a skip
counted as ``refused`` by caches, hubs and stores, ``StoreCorrupt`` for a file
that is not a snapshot, ``StoreError`` for a document that is not a session.
A refused record changes nothing: not what is held, not the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsession import SessionCache, new_id, wire
from memsession.admission import field_fault, max_version_at, scan_data
from memsession.bus.memory import MemoryBus, MemoryHub
from memsession.errors import StoreCorrupt, StoreError, WireError
from memsession.session import Record, session_key
from memsession.testing import FakeClock
from persist.base import WATERMARK_KEY
from persist.couchdb import CouchFollower, CouchStore
from persist.jsonfile import JsonFileStore
from persist.postgres import PostgresStore

WALL = 1_700_000_000.0
VERSION = int(WALL * 1000) << 16
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FAST = settings(max_examples=200, deadline=None)


def obeys_the_rule(record: Record) -> bool:
    """What every door may hand on: the shape of the record rule."""
    if field_fault(record.key, record.version, record.origin, record.created, record.accessed,
                   record.expires, record.deleted, 256) is not None:
        return False
    scan_data(record.data, 32, 1 << 16)  # raises if not
    return True


def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


hostile_scalars = st.sampled_from([
    None, True, -1, 0, 1, VERSION, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, 1 << 70, -(1 << 64),
    0.5, -0.0, 1e308, WALL, WALL + 1e9, "", "x", "k" * 300, "a\nb", [], {}, [1], {"a": 1},
])
hostile_data = st.sampled_from([
    {}, {"a": 1}, {"$int": "5"}, {"a": {"$int": "5"}}, {"a": {"$int": str(1 << 70)}}, {"a": {"$int": 5}},
    {"a": {"$float": "nan"}}, {"a": {"$float": "inf"}}, {"a": {"$float": "1.5"}}, {"a": {"$bytes": 7}},
    {"a": {"$bytes": "AA=="}}, {"a": {"$bytes": "!"}}, {"$bytes": "AA=="}, {"a": {"$dict": 3}},
    {"a": {"$dict": {"$int": "1"}}}, {"deep": _deep(40)}, {"deep": _deep(31)}, {"many": [0] * 70_000},
    {"a": "x" * 100}, [1, 2], "text", None, 5,
])
FIELDS = ("k", "v", "o", "c", "a", "e", "x", "d")


@st.composite
def stored_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A stored record's JSON object (persist.base.record_to_dict's form), some fields mutated."""
    deleted = draw(st.booleans())
    obj: dict[str, Any] = {"k": new_id(), "v": VERSION + draw(st.integers(1, 1000)), "o": 7, "c": WALL,
                           "a": WALL, "e": WALL + 60.0, "x": deleted, "d": {} if deleted else {"user": "u"}}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        obj[name] = draw(hostile_data if name == "d" else hostile_scalars)
    return obj


# -- wire decode -----------------------------------------------------------------------


def _wire_value(value: Any) -> Any:
    return msgpack.packb(value) if isinstance(value, dict) else value


@FAST
@given(stored_objects())
def test_wire_records_are_refused_with_wire_error_only(obj: dict[str, Any]) -> None:
    fields = [obj["k"], obj["v"], obj["o"], obj["c"], obj["a"], obj["e"], obj["x"], _wire_value(obj["d"])]
    try:
        payload = msgpack.packb([1, fields])
    except (OverflowError, TypeError):
        return  # not even msgpack: no frame can carry it
    try:
        reply = wire.decode_reply([wire.PROTOCOL + b"R", payload])
    except WireError:
        return
    got = reply.body[0]
    assert got is not None and obeys_the_rule(got)


# -- cache.apply and snapshot install ------------------------------------------------------


def _record_of(obj: dict[str, Any]) -> Record:
    """A Record built without any check, as a bug or a foreign library might hand one over."""
    data = obj["d"]
    return Record(obj["k"], data, obj["v"], obj["o"], obj["c"], obj["a"], obj["e"], obj["x"], False, 10)


@FAST
@given(st.lists(stored_objects(), min_size=1, max_size=4))
def test_cache_apply_changes_nothing_for_a_refused_record(objs: list[dict[str, Any]]) -> None:
    cache = SessionCache(clock=FakeClock(wall=WALL))
    for obj in objs:
        record = _record_of(obj)
        clock_before, refused_before = cache.hlc.last, cache.stats()["refused"]
        try:
            held_before = cache.held(record.key) if isinstance(record.key, str) else None
        except TypeError:
            held_before = None
        cache.apply(record)
        if cache.stats()["refused"] > refused_before:
            assert cache.hlc.last == clock_before
            if isinstance(record.key, str):
                assert cache.held(record.key) == held_before
        else:
            held = cache.held(record.key)
            assert held is None or obeys_the_rule(held)


@FAST
@given(st.lists(stored_objects(), min_size=1, max_size=6))
def test_snapshot_install_takes_only_what_the_rule_admits(objs: list[dict[str, Any]]) -> None:
    clock = FakeClock(wall=WALL)
    cache = SessionCache(clock=clock, bus=MemoryBus(MemoryHub(clock=clock)))
    rep = cache.bus.replicator  # type: ignore[union-attr]
    lists = []
    for obj in objs:
        fields = [obj["k"], obj["v"], obj["o"], obj["c"], obj["a"], obj["e"], obj["x"], _wire_value(obj["d"])]
        try:
            msgpack.packb(fields)
        except (OverflowError, TypeError):
            continue  # no hub could send it
        lists.append(fields)
    reply = wire.decode_reply(wire.encode_request(wire.CHUNK, 1, lists))  # one bad record never fails the chunk
    records, refused = rep.snapshot_records([reply])
    assert len(records) + refused == len(lists)
    rep.install_snapshot(records, {}, 0)
    for record in cache.records():
        assert obeys_the_rule(record)
    assert cache.hlc.last <= max_version_at(WALL, 60.0)  # nothing refused moved the clock


# -- the JSON file ---------------------------------------------------------------------------


@SLOW
@given(st.lists(stored_objects(), min_size=1, max_size=5))
def test_a_snapshot_file_loads_what_obeys_the_rule_or_is_corrupt(tmp_path: Path, objs: list[dict[str, Any]]) -> None:
    path = tmp_path / f"{new_id()}.jsonl"
    header = {"format": "memsession-sessions", "version": 1, "count": len(objs), "written": WALL, "cleared": 0}
    try:
        lines = [orjson.dumps(header), *(orjson.dumps(obj) for obj in objs), orjson.dumps({"end": len(objs)})]
    except orjson.JSONEncodeError:
        return  # not JSON: no file holds it
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        store = JsonFileStore(path, save_interval=None, clock=FakeClock(wall=WALL))
    except StoreCorrupt:
        return
    try:
        loaded = list(store.load_all(0.0))
        assert all(obeys_the_rule(r) for r in loaded)
        assert len({r.key for r in loaded}) + store.stats()["refused"] <= len(objs)
        store.snapshot()  # what was loaded can always be written back
    finally:
        store.close()


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture
def pg(postgres_url: str) -> Any:
    store = PostgresStore(postgres_url, create_table=True)
    yield store, postgres_url
    store.close()


@SLOW
@given(stored_objects())
def test_postgres_rows_load_as_valid_records_or_not_at_all(pg: Any, obj: dict[str, Any]) -> None:
    store, url = pg
    key = obj["k"] if isinstance(obj["k"], str) and "\x00" not in obj["k"] else new_id()
    row = [key, orjson.dumps(obj["d"]).decode(), obj["v"], obj["o"], obj["c"], obj["a"], obj["e"], obj["x"]]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO memsession (sid, sess, version, origin, created, accessed, expires, deleted)"
                         " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", row)
    except (psycopg.Error, OverflowError, TypeError):
        return  # the table's types keep it out
    try:
        loaded = store.load(key)
        everything = list(store.load_all(0.0))
    except StoreError:
        return
    assert loaded is None or obeys_the_rule(loaded)
    assert all(obeys_the_rule(r) for r in everything)


def test_postgres_tags_that_used_to_raise_foreign_errors_are_misses(postgres_url: str) -> None:
    from persist import Persistence

    store = PostgresStore(postgres_url, create_table=True)
    sids = [new_id(), new_id()]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for sid, data in zip(sids, ['{"$int": "5"}', '{"a": {"$int": "%d"}}' % (1 << 70)]):
            conn.execute("INSERT INTO memsession VALUES (%s, %s, %s, 7, %s, %s, %s, false)",
                         [session_key(sid), data, VERSION, WALL, WALL, 4e9])
    with SessionCache(persistence=Persistence(store)) as cache:
        assert [cache.get(sid) for sid in sids] == [None, None]
        assert cache.stats()["persistence"]["store_refused"] == 2


# -- CouchDB and its follower -----------------------------------------------------------------


@pytest.fixture
def couch(couch_url: str, unique_name: Callable[..., str]) -> Any:
    store = CouchStore(f"{couch_url}/{unique_name('adm')}", trust_env=False)
    yield store
    store.close()


def _doc(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    doc = {"_id": prefix + (obj["k"] if isinstance(obj["k"], str) else new_id()), "type": "memsession",
           "data": obj["d"], "version": str(obj["v"]) if isinstance(obj["v"], int) else obj["v"],
           "origin": str(obj["o"]) if isinstance(obj["o"], int) else obj["o"],
           "created": obj["c"], "accessed": obj["a"], "deleted": obj["x"]}
    if obj["e"] is not None:
        doc["expires"] = obj["e"]
    return doc


@SLOW
@given(stored_objects())
def test_couch_documents_load_as_valid_records_or_not_at_all(couch: CouchStore, obj: dict[str, Any]) -> None:
    doc = _doc(obj, couch.prefix)
    try:
        body = orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return
    response = couch.client.post("", content=body, headers={"Content-Type": "application/json"})
    if response.status_code >= 400:
        return  # CouchDB kept it out (a bad id)
    key = doc["_id"][len(couch.prefix):]
    try:
        loaded = couch.load(key)
    except StoreError:
        loaded = None
    assert loaded is None or obeys_the_rule(loaded)
    assert all(obeys_the_rule(r) for r in couch.load_all(0.0))  # never raises: bad documents are skipped


def test_couch_tags_that_used_to_raise_foreign_errors_are_skipped(couch: CouchStore) -> None:
    for data in ({"$int": "5"}, {"a": {"$int": str(1 << 70)}}):
        doc = _doc({"k": new_id(), "v": VERSION, "o": 7, "c": WALL, "a": WALL, "e": 4e9, "x": False, "d": data},
                   couch.prefix)
        couch.client.put(httpx.URL(doc["_id"]).raw_path.decode(), json=doc)
    assert list(couch.load_all(0.0)) == []
    assert couch.refused.count == 2


@SLOW
@given(st.lists(stored_objects(), min_size=1, max_size=4))
def test_the_follower_hands_on_only_what_the_rule_admits(couch: CouchStore, objs: list[dict[str, Any]]) -> None:
    cache = SessionCache(clock=FakeClock(wall=WALL))
    follower = CouchFollower(couch, cache.apply)
    for seq, obj in enumerate(objs):
        follower._handle({"id": couch.prefix + str(obj["k"]), "seq": seq, "doc": _doc(obj, couch.prefix)})
    follower._handle({"id": WATERMARK_KEY, "seq": 99, "doc": {"_id": WATERMARK_KEY, "version": "x"}})
    for record in cache.records():
        assert obeys_the_rule(record)
        assert not math.isinf(record.created)
