"""Records the contract suite writes: a fixed wall time and a record maker with defaults."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from memsession.session import Record, prepare_data

__all__ = ["T0", "make_test_delta", "make_test_record"]

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


def make_test_delta(
    key: str,
    data: dict[str, Any],
    *,
    removed: Iterable[str] = (),
    version: int = 1 << 40,
    origin: int = 7,
    created: float = T0,
    accessed: float | None = None,
    base: dict[int, int] | None = None,
) -> Record:
    """A delta as a request's save makes one (``memsession.changes.record_change``): partial.

    ``data`` holds the keys the change set, ``removed`` the keys it removed;
    every one is stamped with ``(version, origin)`` (``stamps`` spelled out
    only when something was removed, as ``record_change`` does). ``base``:
    the ``seen`` of the copy it was made on (None: it needs nothing).
    """
    gone = tuple(removed)
    copy, size, flat = prepare_data(data, 1 << 24)
    accessed = created if accessed is None else accessed
    stamps = dict.fromkeys((*copy, *gone), (version, origin)) if gone else None
    return Record(key, copy, version, origin, created, accessed, accessed + 3600.0, False, flat, size,
                  stamps, None, True, base)


def _key(n: int | str) -> str:
    return f"sid-{n}"
