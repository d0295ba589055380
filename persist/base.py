"""The store protocol every persistence adapter implements, and what they share.

A store keeps ``Record``s by key. Seven methods, each with the semantics below;
``persist.testing.StoreContract`` checks them for any implementation.

Saving merges. A store writes a record into the stored one of its key with the
one merge of every replica, ``memsession.changes.merge_records`` (``merge_row``
says what a store writes): per top-level key the change with the higher stamp
wins, its value or its removal, so a delta (``partial``: only the keys one
change touched) keeps the row's other keys, and two writers that save changes
of different keys of one session at the same moment both survive, provided the
store reads, merges and writes a key as one step (a transaction that holds the
key, a compare-and-set that is retried). Per session
``memsession.session.supersedes`` (re-exported here) decides first: a
tombstone beats every key of a live record, except a tombstone that was
already dead when the live record was written (its ``expires`` at or before
the new record's ``accessed``), which the new record replaces as it would in
a cache where the dead tombstone is long swept away; a later ``accessed``
slides the expiry, so sliding expiry survives a restart. A delta for a key
with no stored record is stored as the record (all that is known of it).
Whatever a store loads is a whole record: the ``partial`` flag is not kept,
while ``stamps`` and ``seen`` are, exactly (records stored before they existed
load with None: every key at the record's own version).

Session data is JSON-like plus ``bytes``. Stores that keep JSON use
``encode_data`` / ``decode_data``: bytes become ``{"$bytes": "<base64>"}``
and a user dict that would read as such a tag is wrapped as ``{"$dict": ...}``,
so every value round-trips exactly; stamps and ``seen`` have
``persist.jsonstamps``.

A clear (``Store.clear``) leaves a watermark behind: the version at or below
which every live record is gone. Saves of live records at or below it are
ignored, so a clear and a late batch from another writer give the same result
in either order: the clear commutes with every save, and a cleared session
never comes back. The keys it covers inside a newer live record (stamped at or
below it, written before the clear) are gone too: saves merge with the
watermark, and reads leave out such keys of a record stored before the clear
(``after_clear``). Tombstones are outside the watermark's reach, whatever their
version: a tombstone beats any live version, so one at or below the watermark
may already have beaten a live record above it, and removing it would bring
that session back. They stay (and are saved) as usual until they lapse and
``purge`` removes them. ``cleared_by`` is the one comparison every store makes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import orjson
from msgpack import packb as _packb

from memsession.admission import MAX_DEPTH, field_fault, scan_data, stamps_fault
from memsession.changes import after_clear, completed, merge_records
from memsession.errors import ConfigError, RecordRefused, SessionDataError, StoreClosed, StoreCorrupt
from memsession.refusals import log_refusal
from memsession.session import MAX_VERSION, Record, SessionData, cleared_by, supersedes

from .jsondata import STORE_MAX_ITEMS, decode_data, encode_data, json_default, jsonable_data
from .jsonstamps import seen_from_json, seen_to_json, stamps_from_json, stamps_to_json

__all__ = [
    "MAX_VERSION",
    "STORE_MAX_ITEMS",
    "WATERMARK_KEY",
    "RefusedRecords",
    "Store",
    "after_clear",
    "check_clear_version",
    "cleared_by",
    "coalesce",
    "decode_data",
    "encode_data",
    "json_default",
    "jsonable_data",
    "make_record",
    "merge_row",
    "record_from_dict",
    "record_from_json",
    "record_to_dict",
    "record_to_json",
    "supersedes",
]


@runtime_checkable
class Store(Protocol):
    """Where sessions outlive processes. Implementations must be thread-safe.

    Every method raises ``StoreClosed`` after ``close()``, ``StoreUnavailable``
    when the backing server can't be reached (the call may be retried), and
    other ``StoreError`` subclasses for anything else; nothing else escapes.
    """

    #: Short adapter name used in errors, logs and counters (``"postgres"``).
    name: str

    def load(self, key: str) -> Record | None:
        """The stored record for ``key`` (a tombstone included), or None.

        None too for a live record the watermark covers (see ``clear``).

        Returns what was stored, even if it has expired: the caller decides
        with its own clock.
        """

    def load_all(self, now: float) -> Iterator[Record]:
        """Every record (tombstones included) whose ``expires`` is after ``now``.

        Live records the watermark covers are left out (see ``clear``).
        Streamed in pages: memory use does not grow with the store's size.
        Order is unspecified.
        """

    def save(self, records: Sequence[Record]) -> int:
        """Merge a batch into the stored records; return how many stored records it created or changed.

        Per key the stored record becomes ``merge_row(stored, merged batch
        records of the key, cleared=the watermark)`` (the module docstring):
        keys of the stored record the batch does not touch are kept, and a
        record that changes nothing (older on every key, nothing new seen,
        no later access) writes nothing and is not counted. Reading, merging
        and writing a key is one step against every other writer of the
        store, in this process or another: saves of different keys of one
        session at the same moment both survive, whatever order batches from
        several writers land in. A batch that raised may be retried as is:
        merging is idempotent. ``StoreRejected`` means the store refused
        records themselves (``keys`` says which, if it can; the others may
        have been written): retrying those won't help.
        """

    def delete(self, keys: Iterable[str]) -> int:
        """Remove records outright (no tombstone); return how many existed."""

    def purge(self, now: float) -> int:
        """Remove records (tombstones included) whose ``expires`` is at or before ``now``.

        Returns how many went. Works in bounded batches so a large purge never
        holds a lock on the whole store; a store that expires records on its
        own may return 0.
        """

    def clear(self, version: int) -> int:
        """Remove every live record (not a tombstone) whose ``version`` is at or below ``version``.

        Returns how many went. Tombstones stay, whatever their version, until
        they lapse and ``purge`` removes them: a tombstone beats any live
        version, so one at or below ``version`` may have beaten a live record
        above it, which would come back without it. Also records ``version``
        as the store's watermark, durably (it survives ``close()`` and a server
        restart) and only ever raised (a lower one keeps the higher), so that
        from then on (``cleared_by`` says which records it covers):

        * ``save`` ignores, and does not count, any live record at or below
          the watermark, whether its key is stored or not: a clear and a late
          batch land in the same state in either order; a newer record is
          merged without the keys the watermark covers. A tombstone is
          merged as usual, whatever its version;
        * ``load`` and ``load_all`` never return such a live record, nor the
          keys the watermark covers in a newer one stored before the clear
          (``after_clear``); they return tombstones as usual;
        * ``purge`` and ``delete`` never remove the watermark, and nothing
          that counts sessions counts it.

        ``version`` must be an int in ``[0, MAX_VERSION]`` (``check_clear_version``;
        ``ConfigError``, a ``ValueError``, otherwise). A clear that raised may be
        retried as is.
        """

    def close(self) -> None:
        """Release connections and files; write what is pending. Idempotent."""


#: Highest version a store must keep: versions are signed 64-bit (``HybridClock``).

#: Key (or document id) of the watermark where a store keeps it among the records.
#: The colon keeps it out of the session ids memsession issues (base64url).
WATERMARK_KEY = "memsession:cleared"


def check_clear_version(version: object, store: str = "") -> int:
    """``version`` if it can be a clear's watermark, else ``ConfigError`` naming the store."""
    if type(version) is not int or not 0 <= version <= MAX_VERSION:
        where = f" ({store} store)" if store else ""
        raise ConfigError("version", version, f"must be an int in [0, 2**63 - 1]{where}")
    return version


def coalesce(records: Iterable[Record], cleared: int = 0) -> dict[str, Record]:
    """The records of a batch merged per key (``merge_records``), in the order keys first appear.

    ``cleared``: the merging side's clear watermark (``merge_records``).
    Live records it covers are kept here: ``merge_row`` refuses them.
    """
    out: dict[str, Record] = {}
    for record in records:
        old = out.get(record.key)
        merged = merge_records(old, record, cleared=cleared)
        if merged is not None:
            out[record.key] = merged
    return out


def merge_row(stored: Record | None, record: Record, cleared: int = 0) -> Record | None:
    """What a store writes when it saves ``record`` over its stored record ``stored``; None: nothing.

    ``cleared`` is the store's clear watermark: a live ``record`` it covers
    is ignored, and so is a stored live one (a store never keeps such a
    record; if one slipped in, it is as good as absent). The result is
    ``merge_records(stored, record, cleared=cleared)`` without the keys the
    watermark covers and never ``partial``: a delta with nothing stored
    becomes the stored record, all that is known of the session
    (``changes.completed``).
    """
    if cleared_by(record, cleared):
        return None
    if stored is not None and cleared_by(stored, cleared):
        stored = None
    merged = merge_records(stored, record, cleared=cleared)
    if merged is None:
        return None
    kept = after_clear(merged, cleared)
    assert kept is not None  # the merge is at least as new as ``record``, which the watermark does not cover
    return completed(kept)


def _time_out(value: float) -> float | None:
    return None if value == math.inf else value


def _time_in(value: Any) -> float:
    if value is None:
        return math.inf
    if type(value) is int:
        return float(value)
    if type(value) is not float:
        raise ValueError(f"time {value!r} is not a number")
    return value


def record_to_dict(record: Record) -> dict[str, Any]:
    """A record as a JSON object with short keys; ``data`` still needs ``encode_data``.

    Infinite ``expires`` (no timeouts) is ``null``. ``s`` (stamps) and ``w``
    (writers seen) are there only when the record has them
    (``persist.jsonstamps``); ``partial`` is never kept.
    """
    obj = {
        "k": record.key,
        "v": record.version,
        "o": record.origin,
        "c": record.created,
        "a": record.accessed,
        "e": _time_out(record.expires),
        "x": record.deleted,
    }
    if record.stamps is not None:
        obj["s"] = stamps_to_json(record.stamps)
    if record.seen is not None:
        obj["w"] = seen_to_json(record.seen)
    return obj


def make_record(
    key: Any,
    data: SessionData,
    version: Any,
    origin: Any,
    created: Any,
    accessed: Any,
    expires: Any,
    deleted: bool,
    stamps: dict[str, tuple[int, int]] | None = None,
    seen: dict[int, int] | None = None,
) -> Record:
    """A Record from stored fields (stored data is untrusted); ``stamps`` and ``seen`` already decoded.

    ``ValueError`` if a field has the wrong type (the row or document is not
    a stored record); ``RecordRefused`` (also a ``ValueError``) if it is one
    but breaks the shape of the record rule (``memsession.admission``: key,
    version and origin ranges, finite times, the data rule, and for a live
    record its stamps and ``seen``): callers that read many records skip
    those, counted, and go on. The record is never ``partial``.
    """
    if type(key) is not str or not key:
        raise ValueError(f"bad key of type {type(key).__name__}")
    if type(version) is not int or type(origin) is not int:
        raise ValueError("version and origin must be integers")
    if type(deleted) is not bool:
        raise ValueError("deleted must be a boolean")
    if type(data) is not dict:
        raise ValueError("session data is not an object")
    created, accessed, expires = _time_in(created), _time_in(accessed), _time_in(expires)
    fault = field_fault(key, version, origin, created, accessed, expires, deleted)
    if fault is None and not deleted:
        # As ``RecordRules.admit``: a tombstone's stamps take part in no merge.
        fault = stamps_fault(data, stamps, seen, version, False, STORE_MAX_ITEMS)
    if fault is not None:
        raise RecordRefused(fault)
    if deleted and data:
        raise RecordRefused("a tombstone carries data")
    try:
        flat = scan_data(data, MAX_DEPTH, STORE_MAX_ITEMS)
    except SessionDataError as exc:
        raise RecordRefused(f"data: {exc.reason}") from None
    return Record(
        key, data, version, origin, created, accessed, expires, deleted, flat,
        len(_packb(data, use_bin_type=True)), stamps, seen,
    )


def record_from_dict(obj: Any, data: SessionData) -> Record:
    """Inverse of ``record_to_dict`` given the decoded data."""
    if type(obj) is not dict:
        raise ValueError("record is not a JSON object")
    return make_record(
        obj.get("k"),
        data,
        obj.get("v"),
        obj.get("o"),
        obj.get("c"),
        obj.get("a"),
        obj.get("e"),
        obj.get("x", False),
        stamps_from_json(obj.get("s")),
        seen_from_json(obj.get("w")),
    )


def record_to_json(record: Record) -> bytes:
    """One record as one JSON object (bytes): for stores that keep a record in one value."""
    obj = record_to_dict(record)
    obj["d"] = jsonable_data(record.data, record.flat)
    return orjson.dumps(obj, default=json_default)


def record_from_json(raw: bytes | str) -> Record:
    """Inverse of ``record_to_json``; ``ValueError`` if ``raw`` is not one."""
    try:
        obj = orjson.loads(raw)
        return record_from_dict(obj, decode_data(obj["d"], raw))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a stored record: {exc}") from exc


class RefusedRecords:
    """Counts and logs the stored records one store refused to hand over (``make_record``'s ``RecordRefused``).

    A refused record is skipped: ``load`` answers None for it, ``load_all``
    goes on with the next one. The log says why, never which session.
    """

    def __init__(self, store: str) -> None:
        self.store = store
        self.count = 0
        self._log = logging.getLogger("memsession.persist")

    def skip(self, exc: Exception) -> None:
        self.count += 1
        log_refusal(self._log, f"{self.store} store skipped a stored record", self.count, exc)


def check_open(closed: bool, store: str, op: str) -> None:
    if closed:
        raise StoreClosed(f"{store} store is closed", store=store, op=op)


def corrupt(path: str, reason: str, store: str) -> StoreCorrupt:
    return StoreCorrupt(path, reason, store=store)
