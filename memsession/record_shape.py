"""The shape of a record's fields, the part of the record rule (``admission``) that needs no data scan.

The key, version, origin and times (``field_fault``) and the merge's fields:
per-key ``stamps``, the writers ``seen`` and a delta's ``base``
(``stamps_fault``). Every door runs these as it builds a record: the wire
decoder, the shared store decoding, ``RecordRules.admit``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "I64_MIN",
    "MAX_ITEMS",
    "MAX_KEY",
    "MAX_KEY_TOMBSTONES",
    "MAX_SEEN_ENTRIES",
    "MAX_VERSION",
    "U64",
    "field_fault",
    "stamps_fault",
]

#: Longest key (characters).
MAX_KEY = 256
#: The largest version (and clear watermark) anything accepts: a signed 64-bit int, as stores keep it.
MAX_VERSION = (1 << 63) - 1
#: Most values (scalars and containers, at every depth) in one session's data, locally.
MAX_ITEMS = 8192

#: The range of an origin (and of an int in session data): a signed or an unsigned 64-bit int.
I64_MIN = -(1 << 63)
U64 = (1 << 64) - 1


def field_fault(
    key: Any, version: Any, origin: Any, created: Any, accessed: Any, expires: Any, deleted: bool,
    max_key: int = MAX_KEY,
) -> str | None:
    """What is wrong with a record's fields (never quoting the key), or None: the shape rule."""
    if (  # every door runs this for every record: one expression for the common case first
        type(key) is str and 0 < len(key) <= max_key
        and type(version) is int and 0 < version <= MAX_VERSION
        and type(origin) is int and I64_MIN <= origin <= U64
        and type(created) is float and created - created == 0.0  # false for inf and nan
        and type(accessed) is float and accessed - accessed == 0.0
        and type(expires) is float and expires <= math.inf  # false for nan
        and key.isprintable()
    ):
        return None
    if type(key) is not str or not 0 < len(key) <= max_key or not key.isprintable():
        return f"key is not a printable str of 1 to {max_key} characters"
    if type(version) is not int or not (0 < version <= MAX_VERSION or (version == 0 and deleted)):
        return "version is not an int in (0, 2**63 - 1]"
    if type(origin) is not int or not I64_MIN <= origin <= U64:
        return "origin is not a 64-bit int"
    for name, value in (("created", created), ("accessed", accessed)):
        if type(value) is not float or not math.isfinite(value):
            return f"{name} is not a finite float"
    if type(expires) is not float or expires != expires:
        return "expires is not a float"
    return None


#: Most writers a record's ``seen`` may name (``changes.MAX_SEEN`` keeps far fewer).
MAX_SEEN_ENTRIES = 64
#: Most key tombstones (removed keys) a record keeps, beyond its live values (``changes``).
MAX_KEY_TOMBSTONES = 1024


def stamps_fault(
    data: Any, stamps: Any, seen: Any, version: int, partial: Any, max_items: int = MAX_ITEMS, base: Any = None
) -> str | None:
    """What is wrong with a live record's per-key stamps, ``seen``, ``partial`` flag or ``base``, or None (the shape rule).

    Every key of ``data`` needs a stamp, no stamp, ``seen`` or ``base`` entry
    may be later than the record's own ``version`` (the record is its newest
    change), there are at most ``max_items + MAX_KEY_TOMBSTONES`` stamps (live
    keys and key tombstones) and ``MAX_SEEN_ENTRIES`` writers in ``seen`` and
    in ``base``, and only a delta (``partial``) has a ``base``.
    """
    if type(partial) is not bool:
        return "partial is not a bool"
    if stamps is not None:
        if type(stamps) is not dict:
            return "stamps is not a map"
        if len(stamps) > max_items + MAX_KEY_TOMBSTONES:
            return f"more than {max_items + MAX_KEY_TOMBSTONES} stamped keys"
        for name, stamp in stamps.items():
            if type(name) is not str:
                return "a stamped key is not a str"
            if type(stamp) is not tuple or len(stamp) != 2:
                return "a stamp is not (version, origin)"
            stamp_version, stamp_origin = stamp
            if type(stamp_version) is not int or not 0 < stamp_version <= version:
                return "a key's stamp is not in (0, the record's version]"
            if type(stamp_origin) is not int or not I64_MIN <= stamp_origin <= U64:
                return "a key's stamp origin is not a 64-bit int"
        if type(data) is dict and any(name not in stamps for name in data):
            return "a key of data has no stamp"
    if seen is not None:
        fault = _writers_fault(seen, version, "seen")
        if fault is not None:
            return fault
    if base is not None:
        if not partial:
            return "a whole record carries a base"
        return _writers_fault(base, version, "base")
    return None


def _writers_fault(writers: Any, version: int, what: str) -> str | None:
    """What is wrong with a map of writer origin -> version (``seen`` or ``base``), or None."""
    if type(writers) is not dict:
        return f"{what} is not a map"
    if len(writers) > MAX_SEEN_ENTRIES:
        return f"{what} names more than {MAX_SEEN_ENTRIES} writers"
    for writer, writer_version in writers.items():
        if type(writer) is not int or not I64_MIN <= writer <= U64:
            return f"a {what} origin is not a 64-bit int"
        if type(writer_version) is not int or not 0 < writer_version <= version:
            return f"a {what} version is not in (0, the record's version]"
    return None


