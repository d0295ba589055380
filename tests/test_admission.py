"""The record rule at every door (memsession.admission): each finding of a hostile record, refused."""

from __future__ import annotations

import math
import os
import tracemalloc
from pathlib import Path

import msgpack
import orjson
import pytest

from memsession import SessionCache, new_id, wire
from memsession.admission import MAX_VERSION, RecordRules, max_version_at, scan_data
from memsession.bus.memory import MemoryBus, MemoryHub
from memsession.clock import HybridClock
from memsession.errors import RecordRefused, SessionDataError, WireError
from memsession.hub import HubState
from memsession.session import Record, prepare_data, session_key
from memsession.testing import FakeClock
from persist import Persistence
from persist.base import make_record, record_from_json, record_to_json
from persist.jsonfile import JsonFileStore
from persist.jsonfile.snapshot import write_snapshot

WALL = 1_700_000_000.0


def record(sid: str | None = None, data: dict | None = None, *, version: int | None = None, origin: int = 9,
           created: float = WALL, accessed: float | None = None, expires: float | None = None,
           deleted: bool = False) -> Record:
    data = {} if deleted else ({"user": "u"} if data is None else data)
    copy, size, flat = prepare_data(data, 1 << 24)
    accessed = created if accessed is None else accessed
    version = (int(accessed * 1000) << 16) + 1 if version is None else version
    # Keyed as the cache keys session ``sid``: by its digest.
    return Record(session_key(sid or new_id()), copy, version, origin, created, accessed,
                  accessed + 60.0 if expires is None else expires, deleted, flat, size)


def cache(**options) -> tuple[SessionCache, FakeClock]:
    clock = FakeClock(wall=WALL)
    return SessionCache(clock=clock, **options), clock


# -- the version clock has an upper bound ---------------------------------------------------


def test_a_record_at_the_largest_version_is_refused_and_the_clock_stays() -> None:
    c, _ = cache()
    before = c.hlc.last
    assert not c.apply(record(version=MAX_VERSION))
    assert c.hlc.last == before
    sid = new_id()
    assert c.set(sid, {"a": 1}).version < max_version_at(WALL, 60.0)
    assert c.stats()["refused"] == 1


def test_a_version_within_the_skew_is_taken_and_moves_the_clock() -> None:
    c, _ = cache()
    ahead = (int((WALL + 30) * 1000) << 16) + 5
    assert c.apply(record(version=ahead))
    assert c.set(new_id(), {}).version > ahead


def test_the_hybrid_clock_refuses_to_observe_past_the_skew() -> None:
    clock = FakeClock(wall=WALL)
    hlc = HybridClock(clock, max_skew=60.0)
    assert not hlc.observe(MAX_VERSION)
    assert not hlc.observe((int((WALL + 61) * 1000) << 16))
    assert hlc.last == 0
    assert hlc.observe((int((WALL + 59) * 1000) << 16))


def test_a_clear_far_ahead_is_refused_by_cache_and_hub() -> None:
    c, _ = cache()
    sid = new_id()
    c.set(sid, {"a": 1})
    assert not c.apply_clear(MAX_VERSION)
    assert c.get(sid) == {"a": 1} and c.cleared == 0
    hub = HubState(clock=FakeClock(wall=WALL))
    assert not hub.clear(MAX_VERSION) and hub.cleared == 0 and hub.counts["refused"] == 1


def test_a_bus_message_at_the_largest_version_changes_no_process() -> None:
    clock = FakeClock(wall=WALL)
    hub = MemoryHub(clock=clock)
    a = SessionCache(clock=clock, bus=MemoryBus(hub))
    b = SessionCache(clock=clock, bus=MemoryBus(hub))
    sid = new_id()
    forged = record(sid, {"x": 1}, version=MAX_VERSION)
    hub.deliver(wire.encode_set(forged, 77, 1, 1, 0))
    assert b.get(sid) is None and hub.state.replica.get(session_key(sid)) is None
    assert b.stats()["refused"] == 1 and hub.state.counts["refused"] == 1
    a.set(sid, {"x": 2})  # a later write still reaches every copy
    assert b.get(sid) == {"x": 2} and hub.state.replica[session_key(sid)].data == {"x": 2}


def test_a_version_beyond_63_bits_in_a_file_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    good, bad = record(), record(version=(int(WALL * 1000) << 16) + 7)
    write_snapshot(str(path), [good, bad], WALL)
    raw = path.read_bytes().replace(b'"v":%d' % bad.version, b'"v":%d' % ((1 << 64) - 1))
    path.write_bytes(raw)
    store = JsonFileStore(path, save_interval=None, clock=FakeClock(wall=WALL))
    try:
        assert store.load(good.key) == good and store.load(bad.key) is None
        assert store.stats()["refused"] == 1
    finally:
        store.close()


# -- an empty msgpack ext value never gets in ---------------------------------------------


def test_an_empty_ext_value_in_data_is_refused_by_the_decoder() -> None:
    blob = msgpack.packb({"x": msgpack.ExtType(1, b"")})
    payload = msgpack.packb([5, 1, 1, 0, new_id(), 1 << 40, 5, WALL, WALL, WALL + 60, blob, {}, None, False])
    with pytest.raises(WireError):
        wire.decode([wire.PROTOCOL + b"s", payload])


def test_an_empty_ext_frame_leaves_the_file_store_saving(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "s.jsonl", save_interval=None)
    hub = HubState(clock=FakeClock(wall=WALL), on_change=lambda r: store.save([r]))
    sid = new_id()
    blob = msgpack.packb({"x": msgpack.ExtType(1, b"")})
    hub.on_bus([wire.PROTOCOL + b"s", msgpack.packb([5, 1, 1, 0, sid, 1 << 40, 5, WALL, WALL, WALL + 60, blob])])
    hub.on_bus(wire.encode_set(record(new_id()), 5, 1, 2, 0))
    assert sid not in hub.replica
    assert store.snapshot() == 0 or store.stats()["snapshot_errors"] == 0
    store.close()
    assert store.stats()["snapshot_errors"] == 0


# -- only documented errors from the shared store decoding ----------------------------------


@pytest.mark.parametrize("data", [
    b'{"$int":"5"}', b'{"$int":"%d"}' % (1 << 70), b'{"a":{"$int":"%d"}}' % (1 << 70), b'{"a":{"$int":5}}',
    b'{"a":{"$float":"nan"}}', b'{"a":{"$float":"1e999"}}', b'{"a":{"$bytes":7}}', b'{"a":{"$bytes":"!!"}}',
    b'{"$bytes":"AA=="}', b'{"a":{"$int":"' + b"9" * 5000 + b'"}}',
])
def test_bad_tags_raise_value_errors_only(data: bytes) -> None:
    good = record_to_json(record())
    raw = good[: good.index(b'"d":') + 4] + data + b"}"
    with pytest.raises(ValueError):
        record_from_json(raw)


def test_a_refused_record_is_a_record_refused() -> None:
    with pytest.raises(RecordRefused):
        make_record("k" * 300, {}, 1, 1, WALL, WALL, WALL, False)
    with pytest.raises(RecordRefused):
        make_record("k", {"a": float("nan")}, 1, 1, WALL, WALL, WALL, False)
    with pytest.raises(RecordRefused):
        make_record("k", {}, 1 << 64, 1, WALL, WALL, WALL, False)


def test_a_tagged_scalar_in_a_file_is_skipped_not_a_foreign_error(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    good, bad = record(), record(version=(int(WALL * 1000) << 16) + 7)
    write_snapshot(str(path), [bad, good], WALL)
    raw = path.read_bytes()
    start = raw.index(b'"d":') + 4
    path.write_bytes(raw[:start] + b'{"$int":"5"}' + raw[raw.index(b"}", start) + 1:])
    store = JsonFileStore(path, save_interval=None, on_corrupt="move_aside", clock=FakeClock(wall=WALL))
    try:
        assert [r.key for r in store.load_all(0.0)] == [good.key] and store.stats()["refused"] == 1
    finally:
        store.close()


def test_move_aside_is_honoured_for_an_unreadable_record(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_snapshot(str(path), [record()], WALL)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"o":9', b'"o":"nine"'))
    store = JsonFileStore(path, save_interval=None, on_corrupt="move_aside", clock=FakeClock(wall=WALL))
    try:
        assert list(store.load_all(0.0)) == []
        assert any(p.startswith("s.jsonl.corrupt-") for p in os.listdir(tmp_path))
    finally:
        store.close()


# -- sessions are never extended from outside -------------------------------------------------


def test_expiry_is_clamped_to_local_timeouts() -> None:
    c, clock = cache(idle_timeout=60.0, max_age=120.0)
    sid = new_id()
    assert c.apply(record(sid, created=WALL - 100, accessed=WALL, expires=math.inf))
    assert c.record(sid).expires == WALL + 20  # type: ignore[union-attr]
    clock.advance(30)
    assert c.get(sid) is None


def test_far_future_times_are_refused() -> None:
    c, _ = cache()
    assert not c.apply(record(created=WALL + 1e9, accessed=WALL + 1e9, version=(int(WALL * 1000) << 16)))
    assert not c.apply(record(created=math.inf, version=(int(WALL * 1000) << 16)))
    assert c.stats()["refused"] == 2


def test_a_tombstone_lives_no_longer_than_the_local_tombstone_ttl() -> None:
    rules = RecordRules(tombstone_ttl=600.0)
    tomb = rules.admit(record(deleted=True, expires=WALL + 1e9), WALL)
    assert tomb.expires == WALL + 600.0


def test_a_file_record_is_not_served_past_the_local_max_age(tmp_path: Path) -> None:
    """Created 330 s ahead of this clock, it would live 450 s here under a 120 s max_age."""
    clock = FakeClock(wall=WALL)
    path = tmp_path / "s.jsonl"
    sid = new_id()
    ahead = record(sid, created=WALL + 330, accessed=WALL + 330, expires=WALL + 450,
                   version=(int(WALL * 1000) << 16) + 3)
    write_snapshot(str(path), [ahead], WALL)
    store = JsonFileStore(path, save_interval=None, clock=clock)
    c = SessionCache(clock=clock, max_age=120.0, idle_timeout=None, persistence=Persistence(store))
    try:
        clock.advance(200)
        assert c.get(sid) is None
        assert c.stats()["refused"] == 1
    finally:
        c.close()


# -- duplicate keys in a snapshot file --------------------------------------------------------


def test_a_repeated_key_in_a_file_resolves_by_the_merge_rule(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    sid = new_id()
    newer = record(sid, {"n": "newer"}, version=(int(WALL * 1000) << 16) + 9)
    older = record(sid, {"n": "older"}, version=(int(WALL * 1000) << 16) + 1)
    write_snapshot(str(path), [newer, older], WALL)  # the older one on the later line
    store = JsonFileStore(path, save_interval=None, clock=FakeClock(wall=WALL))
    try:
        assert store.load(newer.key) == newer
    finally:
        store.close()


# -- memory bounds that hold -------------------------------------------------------------------


def test_set_refuses_data_with_more_values_than_allowed() -> None:
    c, _ = cache()
    many = {"a": [[] for _ in range(20_000)]}  # 20 KB of msgpack, about 1.3 MB of lists
    with pytest.raises(SessionDataError, match="values"):
        c.set(new_id(), many)
    with pytest.raises(SessionDataError):
        scan_data(many, 32, 8192)


def _empty_arrays_frame() -> bytes:
    """16 MB of msgpack: an array of arrays of 10,000 empty arrays each (16 million lists once built)."""
    inner = b"\xdc" + (10_000).to_bytes(2, "big") + b"\x90" * 10_000
    return b"\x91\xdc" + (1600).to_bytes(2, "big") + inner * 1600


def test_a_frame_of_empty_arrays_is_refused_before_it_is_built() -> None:
    frame = _empty_arrays_frame()
    tracemalloc.start()
    try:
        for topic in (b"s", b"b"):
            with pytest.raises(WireError):
                wire.decode([wire.PROTOCOL + topic, frame])
        for topic in (b"C", b"P", b"E", b"S"):
            with pytest.raises(WireError):
                wire.decode_reply([wire.PROTOCOL + topic, frame])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # built before refusal: at most what one reply's records may be


def test_a_bus_record_larger_than_the_local_limit_is_refused() -> None:
    clock = FakeClock(wall=WALL)
    hub = MemoryHub(clock=clock)
    b = SessionCache(clock=clock, bus=MemoryBus(hub))
    sid = new_id()
    big = record(sid, {"x": b"\x00" * ((1 << 20) - 64)})  # within the wire's 1 MiB, 16x the local 64 KiB
    hub.deliver(wire.encode_set(big, 77, 1, 1, 0))
    assert b.get(sid) is None and b.stats()["refused"] == 1
    assert session_key(sid) in hub.state.replica  # the hub's own limit (Limits.max_data, 1 MiB) allows it


def test_the_decoder_counts_values_in_data() -> None:
    blob = msgpack.packb({"a": [0] * 70_000})
    payload = msgpack.packb([5, 1, 1, 0, new_id(), 1 << 40, 5, WALL, WALL, WALL + 60, blob, {}, None, False])
    with pytest.raises(WireError, match="values"):
        wire.decode([wire.PROTOCOL + b"s", payload])


def test_a_stored_record_of_too_many_values_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    good = record()
    write_snapshot(str(path), [good], WALL)
    lines = path.read_bytes().split(b"\n")
    obj = orjson.loads(lines[1])
    obj["k"] = session_key(new_id())
    obj["d"] = {"a": [0] * 70_000}
    lines.insert(2, orjson.dumps(obj))
    lines[0] = lines[0].replace(b'"count":1', b'"count":2')
    lines[-2] = b'{"end":2}'
    path.write_bytes(b"\n".join(lines))
    store = JsonFileStore(path, save_interval=None, clock=FakeClock(wall=WALL))
    try:
        assert [r.key for r in store.load_all(0.0)] == [good.key] and store.stats()["refused"] == 1
    finally:
        store.close()
