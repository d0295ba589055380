"""The PostgreSQL adapter: one row per session, via psycopg 3 and a connection pool.

``PostgresStore`` (``store``) runs the statements of ``statements`` (the key
locks of a save's read-merge-write and the clear watermark in SQL) on the
table that ``table`` names, creates and upgrades (``ddl``; for the default
names also shipped as ``persist/schema.sql``).

The table's names and DDL need no psycopg (``memsession ddl`` prints the SQL
where only the database is being prepared); ``PostgresStore`` is imported on
first use, and says which extra it needs when psycopg is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .table import DEFAULT_COLUMNS, TableNames, ddl

if TYPE_CHECKING:
    from .store import PostgresStore

__all__ = ["DEFAULT_COLUMNS", "PostgresStore", "TableNames", "ddl"]


def __getattr__(name: str) -> Any:
    if name != "PostgresStore":
        raise AttributeError(f"module 'persist.postgres' has no attribute {name!r}")
    from .store import PostgresStore

    globals()[name] = PostgresStore
    return PostgresStore
