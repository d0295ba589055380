"""The one write-behind engine: the same queue, runner, options and defaults for a worker and the sidecar."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import pytest

from memsession import SessionCache
from memsession.errors import ConfigError, StoreRejected
from memsession.hub import HubConfig
from memsession.service.sidecar import Sidecar, SidecarConfig
from memsession.session import Record, new_id
from persist import PersistConfig, Persistence, Writer, WriterConfig
from persist.jsonfile import JsonFileStore


class RefusingStore(JsonFileStore):
    """Refuses, without naming it, any batch holding a session whose data says ``poison``."""

    def save(self, records: Sequence[Record]) -> int:
        if any(r.data.get("poison") for r in records):
            raise StoreRejected("refused", store=self.name, op="save")
        return super().save(records)


def test_worker_and_sidecar_share_the_engine_options_and_defaults() -> None:
    shared = {f.name: f.default for f in fields(WriterConfig)}
    for config in (PersistConfig, SidecarConfig):
        assert issubclass(config, WriterConfig)
        mine = {f.name: f.default for f in fields(config) if f.name in shared}
        # The sidecar is the store's one pruner; every other default is the same.
        assert {k: v for k, v in mine.items() if k != "prune_interval"} == {
            k: v for k, v in shared.items() if k != "prune_interval"
        }
    assert PersistConfig().prune_interval is None and SidecarConfig().prune_interval == 60.0


@pytest.mark.parametrize("option", [{"flush_interval": 0}, {"batch_size": 0}, {"queue_limit": True},
                                    {"retry_min": 2.0, "retry_max": 1.0}, {"close_timeout": -1}])
def test_engine_options_are_checked_alike(option: dict[str, float]) -> None:
    for config in (WriterConfig, PersistConfig, SidecarConfig):
        with pytest.raises(ConfigError):
            config(**option)


def test_store_keyword_says_what_replaced_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="persistence=persist.Persistence"):
        SessionCache(store=JsonFileStore(tmp_path / "s.jsonl"))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="unknown option"):
        Persistence(JsonFileStore(tmp_path / "t.jsonl"), flush_records=10)


def _records(n: int) -> list[Record]:
    out = []
    for i in range(n):
        data = {"poison": True} if i == n // 2 else {"i": i}
        out.append(Record(new_id(), data, 10 + i, 1, 1.0, 1.0, 4e9))
    return out


def test_a_worker_writes_everything_but_the_refused_record(tmp_path: Path) -> None:
    store = RefusingStore(tmp_path / "w.jsonl", save_interval=None)
    persistence = Persistence(store, flush_interval=3600.0, close_store=False)
    records = _records(41)
    for record in records:
        persistence.emit(record)
    assert persistence.flush() == 41
    stats = persistence.stats()
    assert stats["rejected"] == 1 and stats["saved"] == 40 and stats["depth"] == 0 and not stats["failing"]
    assert [r.key for r in records if store.load(r.key) is None] == [records[20].key]
    persistence.close()
    store.close()


def test_the_sidecar_writes_everything_but_the_refused_record(tmp_path: Path) -> None:
    store = RefusingStore(tmp_path / "s.jsonl", save_interval=None)
    sidecar = Sidecar(store, HubConfig(runtime_dir=str(tmp_path / "rt")), SidecarConfig(flush_interval=3600.0))
    assert isinstance(sidecar.writer, Writer)
    try:
        records = _records(41)
        for record in records:
            assert sidecar.state.merge(record)  # the hub's change hook queues every applied change
        assert sidecar.flush() == 41
        persist = sidecar.stats()["persist"]
        assert persist["rejected"] == 1 and persist["saved"] == 40 and persist["depth"] == 0
        assert not persist["failing"]
        assert [r.key for r in records if store.load(r.key) is None] == [records[20].key]
        assert sidecar.writer.settled(records[20].key, records[20].version, 1) is None
        assert sidecar.writer.settled(records[0].key, records[0].version, 1) is True
    finally:
        sidecar.writer.close()
        store.close()
