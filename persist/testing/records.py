"""Records the contract suite writes: a fixed wall time and a record maker with defaults."""

from __future__ import annotations

from typing import Any

from memsession.session import Record, prepare_data

__all__ = ["T0", "make_test_record"]

#: A wall time with more digits than a microsecond timestamp keeps.
T0 = 1_763_900_000.123_456_7


def make_test_record(
    key: str,
    data: dict[str, Any] | None = None,
    *,
    version: int = 1 << 40,
    origin: int = 7,
    created: float = T0,
    accessed: float | None = None,
    expires: float | None = None,
    deleted: bool = False,
) -> Record:
    """A valid record with sensible defaults (expires an hour after ``T0``)."""
    data = {} if deleted else ({"user": key} if data is None else data)
    copy, size, flat = prepare_data(data, 1 << 24)
    accessed = created if accessed is None else accessed
    return Record(
        key,
        copy,
        version,
        origin,
        created,
        accessed,
        created + 3600.0 if expires is None else expires,
        deleted,
        flat,
        size,
    )


def _key(n: int | str) -> str:
    return f"sid-{n}"
