"""The sessions table: its names (schema, table, columns) and its DDL.

The table (names configurable, identifiers quoted as PostgreSQL quotes them)::

    key       text PRIMARY KEY     session key: SHA-256 of the session id, hex (never the id)
    data      json                 session data, ``persist.base.encode_data``
    version   bigint               hybrid-logical-clock version
    origin    bigint               writer id, breaks version ties
    created   double precision     wall seconds
    accessed  double precision     wall seconds
    expires   double precision     wall seconds; 'Infinity' when it never expires
    deleted   boolean              tombstone
    stamps    json (null)          per-key stamps, ``persist.jsonstamps``; null: every key at version
    seen      json (null)          per writer, its newest change merged in; null: only origin's

plus an index on ``expires`` for purging and a comment on the key column
(``KEY_COMMENT``) that says what it holds and marks the table as keyed by
digests (``persist.rekey``: a 0.1 table without it is moved when a store
opens). Times are stored as float8 so they come back bit for bit; ``json``
(not ``jsonb``) keeps the text as written. ``stamps`` and ``seen`` came with
per-key merging: a table made before lacks them, and the store adds them when
it opens (``upgrade_statement``; its rows read back with null, as they were
written). ``ddl()`` renders the statements ``create_table=True`` runs and that
upgrade; for the default names they are shipped as ``persist/schema.sql``.

The DDL is plain text made here (``quote_ident``), without psycopg: ``memsession
ddl`` prints it on a machine that only prepares the database. The statements
the store runs on rows take ``table_ident`` and ``col``, which are psycopg's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from memsession.errors import ConfigError

if TYPE_CHECKING:
    from psycopg import sql

__all__ = [
    "DEFAULT_COLUMNS",
    "FIELDS",
    "KEY_COMMENT",
    "MERGE_FIELDS",
    "TableNames",
    "comment_statement",
    "ddl",
    "ddl_statements",
    "quote_ident",
    "upgrade_statement",
]

#: Column names by field; pass ``columns={"key": "sid", ...}`` to rename any of them.
DEFAULT_COLUMNS: Mapping[str, str] = MappingProxyType({
    "key": "sid",
    "data": "sess",
    "version": "version",
    "origin": "origin",
    "created": "created",
    "accessed": "accessed",
    "expires": "expire",
    "deleted": "deleted",
    "stamps": "stamps",
    "seen": "seen",
})
FIELDS = tuple(DEFAULT_COLUMNS)
#: The columns per-key merging added, which a table made before lacks.
MERGE_FIELDS = ("stamps", "seen")
#: The key column's comment: what it holds, and the mark of a table whose keys are digests.
KEY_COMMENT = "memsession session key: SHA-256 (hex) of the session id; the id itself is never stored"


def quote_ident(*names: str) -> str:
    """A (schema-qualified) identifier quoted as PostgreSQL reads it: in double quotes, each ``"`` doubled.

    The same text as ``psycopg.sql.Identifier(*names).as_string()``; names hold no NUL
    (``TableNames.build`` refuses it), the one character quoting can't carry.
    """
    return ".".join('"' + name.replace('"', '""') + '"' for name in names)


def _quote_literal(text: str) -> str:
    """A string constant, read the same whatever ``standard_conforming_strings`` says (as psycopg writes one)."""
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class TableNames:
    """Where the sessions live: schema (None: the search path), table, column names."""

    schema: str | None = None
    table: str = "memsession"
    columns: Mapping[str, str] = field(default_factory=lambda: DEFAULT_COLUMNS)

    @classmethod
    def build(
        cls, schema: str | None, table: str, columns: Mapping[str, str] | None
    ) -> TableNames:
        if not isinstance(table, str) or not table:
            raise ConfigError("table", table, "must be a non-empty string")
        if schema is not None and (not isinstance(schema, str) or not schema):
            raise ConfigError("schema", schema, "must be a non-empty string or None")
        merged = dict(DEFAULT_COLUMNS)
        for name_of, name in (columns or {}).items():
            if name_of not in DEFAULT_COLUMNS:
                raise ConfigError("columns", columns, f"unknown field {name_of!r}; known: {', '.join(FIELDS)}")
            if not isinstance(name, str) or not name:
                raise ConfigError("columns", columns, f"column for {name_of!r} must be a non-empty string")
            merged[name_of] = name
        if len(set(merged.values())) != len(merged):
            raise ConfigError("columns", columns, "two fields map to the same column")
        for name in (table, schema or "", *merged.values()):
            if len(name.encode()) > 63 or "\x00" in name:
                raise ConfigError("columns", name, "PostgreSQL identifiers are at most 63 bytes, no NUL")
        return cls(schema, table, MappingProxyType(merged))

    @property
    def qualified(self) -> str:
        """The table, schema-qualified if a schema is named, quoted (``quote_ident``)."""
        return quote_ident(self.table) if self.schema is None else quote_ident(self.schema, self.table)

    def quoted(self, field: str) -> str:
        return quote_ident(self.columns[field])

    @property
    def table_ident(self) -> sql.Composable:
        from psycopg import sql

        if self.schema is None:
            return sql.Identifier(self.table)
        return sql.Identifier(self.schema, self.table)

    @property
    def index_name(self) -> str:
        return (self.table + "_" + self.columns["expires"] + "_idx")[:63]

    def col(self, field: str) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.columns[field])


def ddl_statements(names: TableNames) -> list[str]:
    c = {f: names.quoted(f) for f in FIELDS}
    out = []
    if names.schema is not None:
        out.append(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(names.schema)}")
    out.append(
        f"CREATE TABLE IF NOT EXISTS {names.qualified} (\n"
        f'    {c["key"]} text COLLATE "C" PRIMARY KEY,\n'
        f"    {c['data']} json NOT NULL,\n"
        f"    {c['version']} bigint NOT NULL,\n"
        f"    {c['origin']} bigint NOT NULL,\n"
        f"    {c['created']} double precision NOT NULL,\n"
        f"    {c['accessed']} double precision NOT NULL,\n"
        f"    {c['expires']} double precision NOT NULL,\n"
        f"    {c['deleted']} boolean NOT NULL DEFAULT false,\n"
        f"    {c['stamps']} json,\n"
        f"    {c['seen']} json\n"
        ")"
    )
    out.append(f"CREATE INDEX IF NOT EXISTS {quote_ident(names.index_name)} ON {names.qualified} ({c['expires']})")
    return out


def upgrade_statement(names: TableNames) -> str:
    """``ALTER TABLE`` adding what a table made before per-key merging lacks (nothing if it has it).

    It takes the table's strongest lock, however briefly, and needs its owner:
    the store runs it only when the catalog says a column is missing.
    """
    columns = ", ".join(f"ADD COLUMN IF NOT EXISTS {names.quoted(f)} json" for f in MERGE_FIELDS)
    return f"ALTER TABLE {names.qualified} {columns}"


def comment_statement(names: TableNames) -> str:
    """``COMMENT ON COLUMN`` for the key column (``KEY_COMMENT``): run apart, as only the owner may."""
    return f"COMMENT ON COLUMN {names.qualified}.{names.quoted('key')} IS {_quote_literal(KEY_COMMENT)}"


def ddl(schema: str | None = None, table: str = "memsession", columns: Mapping[str, str] | None = None,
        change_log: bool = False) -> str:
    """The DDL that ``create_table=True`` runs, and the upgrade of an older table, as SQL text.

    Also shipped as ``persist/schema.sql``; running it over a table made
    before per-key merging adds the columns it lacks. ``change_log=True``
    adds the tables of ``PostgresStore(change_log=True)`` (``changelog``).
    """
    from .changelog import change_log_ddl, check_names

    names = TableNames.build(schema, table, columns)
    if change_log:
        check_names(names)
    logged = change_log_ddl(names) if change_log else []
    statements = (*ddl_statements(names), *logged, upgrade_statement(names), comment_statement(names))
    return "".join(stmt + ";\n" for stmt in statements)
