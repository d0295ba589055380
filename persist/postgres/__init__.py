"""The PostgreSQL adapter: one row per session, via psycopg 3 and a connection pool.

``PostgresStore`` (``store``) runs the statements of ``statements`` (the key
locks of a save's read-merge-write and the clear watermark in SQL) on the
table that ``table`` names, creates and upgrades (``ddl``; for the default
names also shipped as ``persist/schema.sql``).
"""

from __future__ import annotations

try:
    import psycopg  # noqa: F401  (checked here, before any part of the adapter needs them)
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("PostgresStore needs psycopg 3 and psycopg-pool: pip install 'memsession[postgres]'") from exc

from .store import PostgresStore
from .table import DEFAULT_COLUMNS, TableNames, ddl

__all__ = ["DEFAULT_COLUMNS", "PostgresStore", "TableNames", "ddl"]
