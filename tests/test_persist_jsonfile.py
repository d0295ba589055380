"""JsonFileStore: the store contract, plus snapshot format, atomicity and damaged files."""

from __future__ import annotations

import math
import os
import stat
import time
from pathlib import Path

import orjson
import pytest

from memsession.errors import ConfigError, StoreCorrupt
from persist.base import merge_row
from persist.jsonfile import (
    FORMAT,
    FORMAT_VERSION,
    JsonFileStore,
    open_snapshot,
    read_snapshot,
    write_snapshot,
)
from persist.testing import T0, StoreContract, make_test_delta, make_test_record


class FakeClock:
    def __init__(self, wall: float = T0) -> None:
        self.now = wall

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


class TestJsonFileContract(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path):
        clock = FakeClock(0.0)
        return lambda: JsonFileStore(tmp_path / "sessions.jsonl", save_interval=None, clock=clock, fsync=False)


def _write(path: Path, n: int = 3) -> list:
    records = [make_test_record(f"k{i}", {"i": i, "b": b"\x00"}) for i in range(n)]
    write_snapshot(str(path), records, T0)
    return records


def test_file_format_is_versioned_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    _write(path, 2)
    lines = path.read_bytes().splitlines()
    header = orjson.loads(lines[0])
    assert header["format"] == FORMAT and header["version"] == FORMAT_VERSION and header["count"] == 2
    assert orjson.loads(lines[-1]) == {"end": 2}
    assert len(lines) == 4


def test_snapshot_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    _write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_expired_records_are_not_written_or_loaded(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    records = [
        make_test_record("old", expires=T0 + 5),
        make_test_record("new", expires=T0 + 50),
        make_test_record("inf", expires=math.inf),
    ]
    assert write_snapshot(str(path), records, T0) == 3
    assert [r.key for r in read_snapshot(str(path), T0 + 10)] == ["new", "inf"]
    assert write_snapshot(str(path), records, T0 + 10) == 2
    store = JsonFileStore(path, save_interval=None, clock=FakeClock(T0 + 60))
    try:
        assert store.load("inf") is not None and store.load("new") is None
    finally:
        store.close()


def test_close_writes_a_snapshot_and_reload_keeps_expiry(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    clock = FakeClock()
    store = JsonFileStore(path, save_interval=None, clock=clock)
    record = make_test_record("a", accessed=T0 + 0.1, expires=T0 + 1800.123_456_789)
    store.save([record])
    assert not path.exists()
    store.close()
    again = JsonFileStore(path, save_interval=None, clock=clock)
    try:
        assert again.load("a") == record
    finally:
        again.close()


def test_periodic_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store = JsonFileStore(path, save_interval=0.05)
    try:
        store.save([make_test_record("a", expires=math.inf)])
        # The file is renamed into place just before the count goes up: wait for the count.
        deadline = time.monotonic() + 10
        while store.stats()["snapshots"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.stats()["snapshots"] >= 1
        assert [r.key for r in read_snapshot(str(path), 0.0)] == ["a"]
    finally:
        store.close()


def test_snapshot_without_changes_does_not_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store = JsonFileStore(path, save_interval=None, clock=FakeClock())
    try:
        store.save([make_test_record("a")])
        assert store.snapshot() == 1
        mtime = path.stat().st_mtime_ns
        assert store.snapshot() == 0
        assert path.stat().st_mtime_ns == mtime
    finally:
        store.close()


def test_no_temp_files_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store = JsonFileStore(path, save_interval=None, clock=FakeClock())
    store.save([make_test_record(f"k{i}") for i in range(100)])
    store.snapshot()
    store.save([make_test_record("more")])
    assert sorted(os.listdir(tmp_path)) == [".s.jsonl.lock", "s.jsonl"]
    store.close()
    assert sorted(os.listdir(tmp_path)) == ["s.jsonl"]  # the lock file goes with the lock


def test_failed_write_keeps_previous_file_and_changes(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    _write(path, 2)
    before = path.read_bytes()
    bad = make_test_record("ok")
    bad = type(bad)(bad.key, {"x": object()}, bad.version, bad.origin, bad.created, bad.accessed, bad.expires)
    with pytest.raises(TypeError):
        write_snapshot(str(path), [bad], T0)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["s.jsonl"]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda raw: raw[: len(raw) - 20], "truncated"),
        (lambda raw: raw[: raw.rindex(b'{"end"')], "truncated"),
        (lambda raw: b"", "empty"),
        (lambda raw: b"not json\n" + raw, "line 1"),
        (lambda raw: raw.replace(b'"version":1', b'"version":99'), "format version 99"),
        (lambda raw: raw.replace(b'"format":"memsession-sessions"', b'"format":"other"'), "not a memsession"),
        (lambda raw: raw.replace(b'"k":"k1"', b'"k":17'), "line 3: bad record"),
        (lambda raw: raw.replace(b'"v":', b'"v":"x",', 1), "line 2: bad record"),
        (lambda raw: raw.replace(b'{"end":3}', b'{"end":4}'), "trailer"),
        (lambda raw: raw + b"extra\n", "after the trailer"),
    ],
)
def test_damaged_file_is_refused_and_left_untouched(tmp_path: Path, damage, reason) -> None:
    path = tmp_path / "s.jsonl"
    _write(path)
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(StoreCorrupt) as info:
        JsonFileStore(path, save_interval=None)
    assert info.value.path == str(path)
    assert reason in str(info.value)
    assert str(path) in str(info.value)
    assert path.read_bytes() == damaged


def test_line_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_snapshot(str(path), [make_test_record("big", {"x": "y" * 5000})], T0)
    with pytest.raises(StoreCorrupt, match="longer than 1000 bytes"):
        JsonFileStore(path, save_interval=None, max_line_bytes=1000)


def test_move_aside_starts_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"garbage")
    store = JsonFileStore(path, save_interval=None, on_corrupt="move_aside")
    try:
        assert list(store.load_all(0.0)) == []
        aside = [p for p in os.listdir(tmp_path) if p.startswith("s.jsonl.corrupt-")]
        assert len(aside) == 1 and (tmp_path / aside[0]).read_bytes() == b"garbage"
        assert "moved it to" in caplog.text
    finally:
        store.close()


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        JsonFileStore(tmp_path / "s", save_interval=0)
    with pytest.raises(ConfigError):
        JsonFileStore(tmp_path / "s", on_corrupt="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        JsonFileStore(tmp_path / "missing-dir" / "s")


def test_one_store_per_file(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    first = JsonFileStore(path, save_interval=None)
    try:
        with pytest.raises(ConfigError, match="in use"):
            JsonFileStore(path, save_interval=None)
        with pytest.raises(ConfigError, match="in use"):  # the refused one took nothing of the first's
            JsonFileStore(path, save_interval=None)
    finally:
        first.close()
    second = JsonFileStore(path, save_interval=None)
    second.close()


def test_a_lock_file_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    (tmp_path / ".s.jsonl.lock").write_bytes(b"")  # what a SIGKILLed owner leaves: nobody holds it
    store = JsonFileStore(path, save_interval=None)
    store.close()
    assert os.listdir(tmp_path) == []


def test_refused_file_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"garbage")
    with pytest.raises(StoreCorrupt):
        JsonFileStore(path, save_interval=None)
    path.unlink()
    JsonFileStore(path, save_interval=None).close()


# -- clear: the watermark in the file -----------------------------------------------


def test_clear_writes_the_watermark_into_the_header_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store = JsonFileStore(path, save_interval=None, clock=FakeClock())
    try:
        store.save(
            [
                make_test_record("old", version=100),
                make_test_record("tomb", version=150, deleted=True),
                make_test_record("new", version=300),
            ]
        )
        assert store.clear(200) == 1
        header = orjson.loads(path.read_bytes().splitlines()[0])
        assert header["cleared"] == 200 and header["count"] == 2
        assert sorted(r.key for r in read_snapshot(str(path), T0)) == ["new", "tomb"]
        assert store.stats()["cleared"] == 200
        mtime = path.stat().st_mtime_ns
        assert store.clear(150) == 0
        assert path.stat().st_mtime_ns == mtime  # nothing changed: not rewritten
    finally:
        store.close()


def test_file_without_a_watermark_reads_as_never_cleared(tmp_path: Path) -> None:
    """Files written before clears existed have no "cleared" in the header."""
    path = tmp_path / "s.jsonl"
    records = _write(path, 2)
    lines = path.read_bytes().splitlines(keepends=True)
    header = orjson.loads(lines[0])
    del header["cleared"]
    path.write_bytes(orjson.dumps(header) + b"\n" + b"".join(lines[1:]))
    snapshot = open_snapshot(str(path), T0)
    assert snapshot.cleared == 0
    assert list(snapshot.records) == records
    store = JsonFileStore(path, save_interval=None, clock=FakeClock())
    try:
        assert store.stats()["cleared"] == 0
        assert store.load("k0") == records[0]
        assert store.save([make_test_record("low", version=1)]) == 1
    finally:
        store.close()


def test_live_records_below_the_watermark_in_the_file_are_not_loaded(tmp_path: Path) -> None:
    """Belt and braces: a hand-edited file can't bring a cleared session back; its tombstones still count."""
    path = tmp_path / "s.jsonl"
    old, new = make_test_record("old", version=100), make_test_record("new", version=300)
    tomb = make_test_record("tomb", version=150, deleted=True)
    write_snapshot(str(path), [old, tomb, new], T0)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"cleared":0', b'"cleared":200', 1))
    assert [r.key for r in read_snapshot(str(path), T0)] == ["tomb", "new"]
    store = JsonFileStore(path, save_interval=None, clock=FakeClock())
    try:
        assert store.load("old") is None and store.load("new") == new and store.load("tomb") == tomb
        assert store.save([old]) == 0
        assert store.save([make_test_record("tomb", version=300)]) == 0
    finally:
        store.close()


@pytest.mark.parametrize("bad", [b"-1", b"true", b"1.5", b'"200"', b"null"])
def test_bad_watermark_is_refused(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "s.jsonl"
    _write(path)
    path.write_bytes(path.read_bytes().replace(b'"cleared":0', b'"cleared":' + bad, 1))
    with pytest.raises(StoreCorrupt, match="line 1: clear watermark"):
        JsonFileStore(path, save_interval=None)


def test_write_snapshot_leaves_out_cleared_live_records_and_keeps_tombstones(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    records = [
        make_test_record("a", version=10),
        make_test_record("t", version=5, deleted=True),
        make_test_record("b", version=20),
    ]
    assert write_snapshot(str(path), records, T0, cleared=10) == 2
    snapshot = open_snapshot(str(path), T0)
    assert snapshot.cleared == 10 and [r.key for r in snapshot.records] == ["t", "b"]


def test_moved_aside_file_keeps_its_readable_watermark(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_snapshot(str(path), [make_test_record("a", version=300)], T0, cleared=200)
    path.write_bytes(path.read_bytes().replace(b'{"end":1}', b'{"end":5}'))
    store = JsonFileStore(path, save_interval=None, on_corrupt="move_aside", clock=FakeClock())
    try:
        assert store.load("a") is None
        assert store.save([make_test_record("b", version=150)]) == 0
        assert store.save([make_test_record("b", version=150, deleted=True)]) == 1
    finally:
        store.close()


# -- per-key stamps and seen in the file ------------------------------------------------


def test_stamps_and_seen_are_written_only_when_a_record_has_them(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    plain = make_test_record("plain", {"a": 1}, version=100)
    merged = merge_row(
        make_test_record("merged", {"a": 1}, version=100),
        make_test_delta("merged", {"b": 2}, removed=["c"], version=200, origin=9),
    )
    assert merged is not None
    write_snapshot(str(path), [plain, merged], T0)
    lines = {obj["k"]: obj for obj in map(orjson.loads, path.read_bytes().splitlines()[1:-1])}
    assert "s" not in lines["plain"] and "w" not in lines["plain"]
    assert lines["merged"]["s"] == {"a": [100, 7], "b": [200, 9], "c": [200, 9]}
    assert lines["merged"]["w"] == {"7": 100, "9": 200}
    assert "partial" not in lines["merged"] and set(lines["merged"]) == {*"kvocaexd", "s", "w"}
    assert list(read_snapshot(str(path), T0)) == [plain, merged]


def test_a_line_with_bad_stamps_is_skipped_and_counted_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    records = _write(path, 3)
    lines = path.read_bytes().splitlines(keepends=True)
    bad = [
        orjson.loads(lines[1]) | {"s": {"i": [1 << 40, "x"]}},  # not an origin
        orjson.loads(lines[2]) | {"s": {"b": [1 << 40, 7]}},  # a key of data without a stamp
    ]
    path.write_bytes(lines[0] + b"".join(orjson.dumps(obj) + b"\n" for obj in bad) + b"".join(lines[3:]))
    store = JsonFileStore(path, save_interval=None, clock=FakeClock())
    try:
        assert store.stats()["refused"] == 2
        assert store.load("k0") is None and store.load("k1") is None and store.load("k2") == records[2]
    finally:
        store.close()


def test_a_clear_drops_the_keys_it_covers_from_newer_records_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store = JsonFileStore(path, save_interval=None, clock=FakeClock(), fsync=False)
    try:
        store.save([make_test_record("k", {"old": 1}, version=100, origin=1)])
        store.save([make_test_delta("k", {"new": 2}, version=300)])
        assert store.clear(200) == 0
    finally:
        store.close()
    (line,) = path.read_bytes().splitlines()[1:-1]
    obj = orjson.loads(line)
    # The key it covers is gone and so is its stamp; what the record reflects stays.
    assert obj["d"] == {"new": 2} and "s" not in obj and obj["w"] == {"1": 100, "7": 300}
