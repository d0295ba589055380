"""Persistence for memsession: one store protocol, three adapters, the sidecar.

``Store`` is the protocol (``persist.base``), ``StoreContract`` in
``persist.testing`` the test suite every adapter passes. Adapters:
``JsonFileStore``, ``PostgresStore`` (needs ``memsession[postgres]``),
``CouchStore`` and ``CouchFollower`` (need ``memsession[couchdb]``); the last
three are imported on first use so a missing extra only fails when asked for.
A store's ``save`` merges each record into its row with ``merge_row``
(per key, ``memsession.changes.merge_records``) and hands what it reads
through ``after_clear``. ``Persistence(store, ...)`` puts a store behind a cache
(``SessionCache(persistence=Persistence(store))``); ``PersistConfig`` holds its
options. ``WriteQueue`` and ``Writer`` are the one write-behind engine, which the
sidecar runs too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Store, after_clear, merge_row, supersedes
from .jsonfile import JsonFileStore
from .persistence import PersistConfig, Persistence
from .queue import WriteQueue
from .rekey import rekey_store
from .writer import Writer, WriterConfig

if TYPE_CHECKING:
    from .couchdb import CouchFollower, CouchStore
    from .postgres import PostgresStore

__all__ = [
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

_LAZY = {"PostgresStore": ".postgres", "CouchStore": ".couchdb", "CouchFollower": ".couchdb"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'persist' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
