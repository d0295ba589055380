"""The public names of the persist package are pinned."""

from __future__ import annotations

import persist


def test_all_is_pinned_and_importable() -> None:
    assert persist.__all__ == [
        "CouchFollower",
        "CouchStore",
        "JsonFileStore",
        "PersistConfig",
        "Persistence",
        "PostgresStore",
        "Store",
        "WriteQueue",
        "Writer",
        "WriterConfig",
        "after_clear",
        "merge_row",
        "rekey_store",
        "supersedes",
    ]
    for name in persist.__all__:
        assert getattr(persist, name) is not None


def test_adapters_are_stores(tmp_path) -> None:
    for name in ("JsonFileStore", "PostgresStore", "CouchStore"):
        cls = getattr(persist, name)
        assert all(callable(getattr(cls, m)) for m in ("load", "load_all", "save", "delete", "purge", "clear", "close"))
    store = persist.JsonFileStore(tmp_path / "s.jsonl", save_interval=None)
    try:
        assert isinstance(store, persist.Store)
    finally:
        store.close()
