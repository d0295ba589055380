"""The one record rule: what a record from elsewhere must be before anything merges it.

Records reach a process through many doors: bus messages, hub requests and
pushes, snapshot chunks, every store's ``load``/``load_all``/preload, the
CouchDB changes feed, the JSON snapshot file. Every door applies the same two
checks from this module, so one bad record is refused the same way wherever
it comes from, and never more than that one record is lost:

* **shape** (``record_shape.field_fault`` and ``stamps_fault``, ``scan_data``), which needs no clock and no
  local option: the key is a printable str of 1..``max_key`` characters; the
  version an int in ``(0, MAX_VERSION]`` (0 only for a tombstone: the CouchDB
  follower's evictions outrank no real write); the origin a 64-bit int;
  ``created`` and ``accessed`` finite; ``expires`` a number, not NaN; data a
  dict with str keys holding only str, int (64-bit), finite float, bool,
  None, bytes, list and dict, nested at most ``max_depth`` deep and at most
  ``max_items`` values in all. The wire decoder and the shared store decoding
  (``persist.base.make_record``) run it as they build records.
* **local rules** (``RecordRules.admit``), from this process's options and
  wall clock: the version at most ``max_skew`` seconds ahead of this clock
  (an HLC version is wall milliseconds and a counter), ``created`` and
  ``accessed`` not ahead of it beyond the skew either, serialized data within
  ``max_bytes`` (a worker's ``max_session_bytes``, what its own ``set()``
  allows), and ``expires`` clamped to what this process's ``idle_timeout`` /
  ``max_age`` allow from ``created``/``accessed`` (a tombstone's to
  ``accessed + tombstone_ttl``). A worker's ``Replica.apply`` and the hub's
  merge run it before the merge rule.

**Memory.** ``max_items`` bounds what Python holds for one session's data,
which ``max_session_bytes`` alone does not (64 KiB of msgpack empty arrays
are 64K list objects, about 4 MiB). Every value costs at most about 200
bytes of objects (an empty dict, 64 bytes, in a dict slot with its key str)
plus its own bytes, so one session holds at most about
``max_items * 200 + 2 * max_bytes``: 1.7 MiB at the defaults (8192 items,
64 KiB), typically far less.

A refused record is skipped and counted (``refused`` in the stats of the
cache, hub, store or follower that refused it) and logged through
``refusals.log_refusal``, with the reason and never the session id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .clock import COUNTER_BITS
from .errors import RecordRefused, SessionDataError
from .record_shape import (
    I64_MIN,
    MAX_ITEMS,
    MAX_KEY,
    MAX_KEY_TOMBSTONES,
    MAX_SEEN_ENTRIES,
    MAX_VERSION,
    U64,
    field_fault,
    stamps_fault,
)

if TYPE_CHECKING:
    from .config import Config
    from .session import Record

__all__ = [
    "DEFAULT_MAX_SKEW",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_KEY",
    "MAX_KEY_TOMBSTONES",
    "MAX_SEEN_ENTRIES",
    "MAX_VERSION",
    "RecordRules",
    "field_fault",
    "max_version_at",
    "scan_data",
    "stamps_fault",
]

#: Seconds a record's version or times may be ahead of this process's wall clock (clock drift between hosts).
DEFAULT_MAX_SKEW = 60.0
#: Deepest nesting of session data (the top-level dict is depth 0).
MAX_DEPTH = 32


# -- data ---------------------------------------------------------------------------


def _inside_dict(value: dict[Any, Any], depth: int, max_depth: int) -> int:
    """How many values the dict ``value`` (at ``depth``) holds at every depth, or -1 if one is not allowed.

    The fast walk: scalars are checked in the loop, only containers cost a call.
    """
    n = len(value)
    for key, item in value.items():
        if type(key) is not str:
            return -1
        kind = type(item)
        if kind is str or kind is bool or item is None or kind is bytes:
            continue
        if kind is int:
            if I64_MIN <= item <= U64:
                continue
            return -1
        if kind is float:
            if item - item == 0.0:  # false for inf and nan
                continue
            return -1
        if depth + 1 >= max_depth:
            return -1
        if kind is dict:
            c = _inside_dict(item, depth + 1, max_depth)
        elif kind is list or kind is tuple:
            c = _inside_list(item, depth + 1, max_depth)
        else:
            return -1
        if c < 0:
            return -1
        n += c
    return n


def _inside_list(value: list[Any] | tuple[Any, ...], depth: int, max_depth: int) -> int:
    """``_inside_dict`` for a list or tuple."""
    n = len(value)
    for item in value:
        kind = type(item)
        if kind is str or kind is bool or item is None or kind is bytes:
            continue
        if kind is int:
            if I64_MIN <= item <= U64:
                continue
            return -1
        if kind is float:
            if item - item == 0.0:
                continue
            return -1
        if depth + 1 >= max_depth:
            return -1
        if kind is dict:
            c = _inside_dict(item, depth + 1, max_depth)
        elif kind is list or kind is tuple:
            c = _inside_list(item, depth + 1, max_depth)
        else:
            return -1
        if c < 0:
            return -1
        n += c
    return n


def _fault(value: Any, path: str, depth: int, max_depth: int) -> SessionDataError | None:
    """The first disallowed value under ``value`` with its path: the slow walk, run only on failure."""
    kind = type(value)
    if kind is str or kind is bool or value is None or kind is bytes:
        return None
    if kind is int:
        return None if I64_MIN <= value <= U64 else SessionDataError(path, value, "integer outside the 64-bit range")
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
    items = len(data)
    for key, value in data.items():
        if type(key) is not str:
            raise SessionDataError(f"session[{key!r}]", key, "keys must be str")
        kind = type(value)
        if kind is str or kind is bool or value is None or kind is bytes:
            continue
        if kind is int:
            if I64_MIN <= value <= U64:
                continue
            inside = -1
        elif kind is float:
            if value - value == 0.0:
                continue
            inside = -1
        elif 1 >= max_depth:
            inside = -1
        elif kind is dict:
            flat = False
            inside = _inside_dict(value, 1, max_depth)
        elif kind is list or kind is tuple:
            flat = False
            inside = _inside_list(value, 1, max_depth)
        else:
            inside = -1
        if inside < 0:
            fault = _fault(value, f"session[{key!r}]", 1, max_depth)
            assert fault is not None  # the two walks apply the same rule
            raise fault
        items += inside
    if items > max_items:
        raise SessionDataError("session", data, f"holds {items} values; the limit is {max_items}")
    return flat


def max_version_at(wall: float, max_skew: float) -> int:
    """The highest version accepted at wall time ``wall``: issued at most ``max_skew`` seconds ahead."""
    return min(MAX_VERSION, (int((wall + max_skew) * 1000) << COUNTER_BITS) | ((1 << COUNTER_BITS) - 1))


# -- local rules ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordRules:
    """The record rule of one process: the shape bounds plus its own options (see the module docstring)."""

    #: Longest key (characters).
    max_key: int = MAX_KEY
    #: Deepest nesting of data.
    max_depth: int = MAX_DEPTH
    #: Most values in one session's data.
    max_items: int = MAX_ITEMS
    #: Largest serialized data (msgpack bytes).
    max_bytes: int = 64 * 1024
    #: Seconds a version, ``created`` or ``accessed`` may be ahead of the wall clock.
    max_skew: float = DEFAULT_MAX_SKEW
    #: This process's session timeouts (None: off); ``expires`` is clamped to them.
    idle_timeout: float | None = None
    max_age: float | None = None
    #: How long this process keeps a tombstone (None: a tombstone's ``expires`` is not clamped).
    tombstone_ttl: float | None = None
    #: ``session.compute_expires``, looked up once: a lookup per record cost more than the rest of ``admit``.
    _expiry_bound: Callable[[float, float, float | None, float | None], float] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from .session import compute_expires  # session imports this module for the data rule

        object.__setattr__(self, "_expiry_bound", compute_expires)

    @classmethod
    def for_cache(cls, config: Config) -> RecordRules:
        """A worker's rules: its ``Config`` (timeouts, ``max_session_bytes``, items, skew)."""
        return cls(
            max_items=config.max_session_items,
            max_bytes=config.max_session_bytes,
            max_skew=config.max_skew,
            idle_timeout=config.idle_timeout,
            max_age=config.max_age,
            tombstone_ttl=config.tombstone_ttl,
        )

    @classmethod
    def for_hub(cls, limits: Any, max_skew: float = DEFAULT_MAX_SKEW) -> RecordRules:
        """A hub's rules: its ``wire.Limits`` (the hub knows no session timeouts, so nothing is clamped)."""
        return cls(
            max_key=limits.max_key, max_depth=limits.max_depth, max_items=limits.max_items,
            max_bytes=limits.max_data, max_skew=max_skew,
        )

    def admit(self, record: Record, wall: float) -> Record:
        """``record`` as this process may hold it (``expires`` clamped), or ``RecordRefused``."""
        created, accessed, expires, deleted = record.created, record.accessed, record.expires, record.deleted
        fault = field_fault(record.key, record.version, record.origin, created, accessed, expires, deleted,
                            self.max_key)
        if fault is not None:
            raise RecordRefused(fault)
        ahead = wall + self.max_skew
        if record.version > max_version_at(wall, self.max_skew):
            raise RecordRefused(f"version is more than {self.max_skew:g}s ahead of this clock")
        if created > ahead or accessed > ahead:
            raise RecordRefused(f"created or accessed is more than {self.max_skew:g}s ahead of this clock")
        data = record.data
        if type(data) is not dict:
            raise RecordRefused("data is not a dict")
        if deleted:
            if data:
                raise RecordRefused("a tombstone carries data")
            if self.tombstone_ttl is not None and expires > accessed + self.tombstone_ttl:
                return replace(record, expires=accessed + self.tombstone_ttl)
            return record
        if (record.stamps is not None or record.seen is not None or record.base is not None
                or type(record.partial) is not bool):
            fault = stamps_fault(data, record.stamps, record.seen, record.version, record.partial, self.max_items,
                                 record.base)
            if fault is not None:
                raise RecordRefused(fault)
        if record.size > self.max_bytes:
            raise RecordRefused(f"data is {record.size} bytes serialized; the limit is {self.max_bytes}")
        try:
            scan_data(data, self.max_depth, self.max_items)
        except SessionDataError as exc:
            raise RecordRefused(f"data: {exc.reason}") from None
        if self.idle_timeout is None and self.max_age is None:
            return record
        bound = self._expiry_bound(created, accessed, self.idle_timeout, self.max_age)
        if expires > bound:
            return replace(record, expires=bound)
        return record

    def admitted(self, record: Record, wall: float, refused: Callable[[str], object]) -> Record | None:
        """``admit``, with a refusal's reason handed to ``refused`` (which counts and logs it) instead of raised."""
        try:
            return self.admit(record, wall)
        except RecordRefused as exc:
            refused(exc.reason)
            return None

    def clear_fault(self, version: Any, wall: float) -> str | None:
        """What is wrong with a clear watermark from elsewhere, or None."""
        if type(version) is not int or not 0 <= version <= MAX_VERSION:
            return "clear watermark is not an int in [0, 2**63 - 1]"
        if version > max_version_at(wall, self.max_skew):
            return f"clear watermark is more than {self.max_skew:g}s ahead of this clock"
        return None
