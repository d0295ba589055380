"""The PostgreSQL adapter: one row per session, via psycopg 3 and a connection pool.

``PostgresStore`` (``store``) runs the statements of ``statements`` (the key
locks of a save's read-merge-write and the clear watermark in SQL) on the
table that ``table`` names, creates and upgrades (``ddl``; for the default
names also shipped as ``persist/schema.sql``). With ``change_log=True`` it
also logs what each save changed, in the save's transaction (``changelog``),
and ``PostgresChangeFeed`` (``follower``) hands other hosts' changes over as
they commit.

The table's names and DDL need no psycopg (``memsession ddl`` prints the SQL
where only the database is being prepared); ``PostgresStore`` and
``PostgresChangeFeed`` are imported on first use, and say which extra they
need when psycopg is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .table import DEFAULT_COLUMNS, TableNames, ddl

if TYPE_CHECKING:
    from .follower import PostgresChangeFeed
    from .store import PostgresStore

__all__ = ["DEFAULT_COLUMNS", "PostgresChangeFeed", "PostgresStore", "TableNames", "ddl"]

_LAZY = {"PostgresStore": ".store", "PostgresChangeFeed": ".follower"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'persist.postgres' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
