"""The data rule, field rule and data decoding as they were before the bytes of a record could prove anything.

Kept as the reference model of ``tests/test_wire_data.py`` and
``tests/test_admission_walk.py``: the faster code must take and refuse
exactly what these take and refuse, with the same reasons. Copied from
``memsession.admission`` and ``memsession.wire`` (decode, records) as they
stood, and never changed since.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack

from memsession.errors import SessionDataError, WireError
from memsession.wire import Limits

__all__ = ["ArrayBudget", "field_fault", "refuse_ext", "scan_data", "wire_data", "wire_unpack"]

MAX_VERSION = (1 << 63) - 1
MAX_KEY = 256
MAX_DEPTH = 32
MAX_ITEMS = 8192
_INT_MIN = -(1 << 63)
_U64 = (1 << 64) - 1


def _count(value: Any, depth: int, max_depth: int) -> int:
    """How many values ``value`` is (itself included), or -1 if it is not allowed: the fast walk."""
    kind = type(value)
    if kind is str or kind is bool or value is None or kind is bytes:
        return 1
    if kind is int:
        return 1 if _INT_MIN <= value <= _U64 else -1
    if kind is float:
        return 1 if value - value == 0.0 else -1  # false for inf and nan
    if depth >= max_depth:
        return -1
    n = 1
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return -1
            c = _count(item, depth + 1, max_depth)
            if c < 0:
                return -1
            n += c
        return n
    if kind is list or kind is tuple:
        for item in value:
            c = _count(item, depth + 1, max_depth)
            if c < 0:
                return -1
            n += c
        return n
    return -1


def _fault(value: Any, path: str, depth: int, max_depth: int) -> SessionDataError | None:
    """The first disallowed value under ``value`` with its path: the slow walk, run only on failure."""
    kind = type(value)
    if kind is str or kind is bool or value is None or kind is bytes:
        return None
    if kind is int:
        return None if _INT_MIN <= value <= _U64 else SessionDataError(path, value, "integer outside the 64-bit range")
    if kind is float:
        return None if math.isfinite(value) else SessionDataError(path, value, f"{value!r} is not JSON-compatible")
    if depth >= max_depth:
        return SessionDataError(path, value, f"nested deeper than {max_depth} levels")
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return SessionDataError(f"{path}[{key!r}]", key, "dict keys must be str")
            fault = _fault(item, f"{path}[{key!r}]", depth + 1, max_depth)
            if fault is not None:
                return fault
        return None
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            fault = _fault(item, f"{path}[{index}]", depth + 1, max_depth)
            if fault is not None:
                return fault
        return None
    return SessionDataError(path, value, "only str, int, float, bool, None, bytes, list, tuple and dict are allowed")


def scan_data(data: Mapping[str, Any], max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> bool:
    """Check session data against the data rule; return whether it is flat (no container values).

    Raises ``SessionDataError`` naming the path of the first bad value (or
    the item count). One pass over the top level for the common flat
    session; containers get the recursive walk, and only a failure the slow
    one that names the path. Every door uses it: ``set()`` (through
    ``session.prepare_packed``), the wire decoder and the stores.
    """
    if len(data) > max_items:
        raise SessionDataError("session", data, f"holds more than {max_items} values")
    flat = True
    items = 0
    for key, value in data.items():
        if type(key) is not str:
            raise SessionDataError(f"session[{key!r}]", key, "keys must be str")
        kind = type(value)
        if kind is str or kind is bool or value is None or kind is bytes:
            items += 1
            continue
        if kind is dict or kind is list or kind is tuple:
            flat = False
        c = _count(value, 1, max_depth)
        if c < 0:
            fault = _fault(value, f"session[{key!r}]", 1, max_depth)
            assert fault is not None  # the two walks apply the same rule
            raise fault
        items += c
    if items > max_items:
        raise SessionDataError("session", data, f"holds {items} values; the limit is {max_items}")
    return flat


def field_fault(
    key: Any, version: Any, origin: Any, created: Any, accessed: Any, expires: Any, deleted: bool,
    max_key: int = MAX_KEY,
) -> str | None:
    """What is wrong with a record's fields (never quoting the key), or None: the shape rule."""
    if type(key) is not str or not 0 < len(key) <= max_key or not key.isprintable():
        return f"key is not a printable str of 1 to {max_key} characters"
    if type(version) is not int or not (0 < version <= MAX_VERSION or (version == 0 and deleted)):
        return "version is not an int in (0, 2**63 - 1]"
    if type(origin) is not int or not _INT_MIN <= origin <= _U64:
        return "origin is not a 64-bit int"
    for name, value in (("created", created), ("accessed", accessed)):
        if type(value) is not float or not math.isfinite(value):
            return f"{name} is not a finite float"
    if type(expires) is not float or expires != expires:
        return "expires is not a float"
    return None


def refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"ext type {code}")


def wire_data(blob: Any, limits: Limits) -> tuple[dict[str, Any], int, bool]:
    """The data of a SET as ``memsession.wire.records._data`` decoded it: unpack, then walk."""
    if type(blob) is not bytes:
        raise WireError("data must be bin")
    if len(blob) > limits.max_data:
        raise WireError("data exceeds max_data")
    try:
        data = msgpack.unpackb(blob, raw=False, strict_map_key=True, max_ext_len=0, ext_hook=refuse_ext)
    except Exception as exc:
        raise WireError(f"undecodable data ({type(exc).__name__})") from exc
    if type(data) is not dict:
        raise WireError("data must be a map")
    # One pass takes the common flat session (msgpack ints are 64-bit, keys str or bytes);
    # anything else is the record rule's to judge (``admission.scan_data``).
    if len(data) <= limits.max_items:
        for k, v in data.items():
            kind = type(v)
            if type(k) is not str or not (
                kind is str or kind is int or kind is bool or kind is bytes or v is None
                or (kind is float and v - v == 0.0)  # inf - inf and nan - nan are nan
            ):
                break
        else:
            return data, len(blob), True
    try:
        flat = scan_data(data, limits.max_depth, limits.max_items)
    except SessionDataError as exc:
        raise WireError(f"data: {exc.reason}") from None
    return data, len(blob), flat


class ArrayBudget:
    """``decode._ArrayBudget`` as it was."""

    __slots__ = ("left",)

    def __init__(self, items: int) -> None:
        self.left = items

    def __call__(self, value: Any) -> Any:
        self.left -= len(value) + 1
        if self.left < 0:
            raise ValueError("more arrays, maps or items than the op carries")
        return value


def wire_unpack(frame: bytes, limits: Limits, items: int, maps: int = 0) -> list[Any]:
    """A payload as ``memsession.wire.decode._unpack`` decoded it: the budget counting, whatever the frame's size."""
    if len(frame) > limits.max_frame:
        raise WireError(f"frame of {len(frame)} bytes exceeds {limits.max_frame}")
    budget = ArrayBudget(items)
    try:
        value = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_bin_len=limits.max_data,
            max_str_len=max(4 * limits.max_key, 1024) if not maps else limits.max_data,
            max_array_len=items,
            max_map_len=maps,
            max_ext_len=0,
            ext_hook=refuse_ext,
            list_hook=budget,
            object_hook=budget if maps else None,
        )
    except Exception as exc:  # msgpack raises many types for bad input; all mean the same here
        raise WireError(f"undecodable payload ({type(exc).__name__})") from exc
    if type(value) is not list:
        raise WireError("payload is not an array")
    return value


