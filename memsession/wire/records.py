"""Decoding the records frames carry: SET and DESTROY bodies, and the records of CHUNK, PUSH, WRITE and RECORD.

The fields are laid out in ``memsession.wire.format``. Every field is checked
for its type and range before a ``Record`` is built; what is wrong raises
``WireError`` with a short reason. Session data is held to the data rule
(``admission.scan_data``): without walking it where its bytes prove it
obeys (``_bounded``), by the walk where they don't. Whether the stamps fit
the record (every key stamped, none later than the record) is the record
rule's to judge (``admission.stamps_fault``), which the merging side runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgpack

from ..admission import MAX_SEEN_ENTRIES, field_fault, scan_data
from ..errors import SessionDataError, WireError
from ..record_shape import I64_MIN, U64
from ..session import MAX_VERSION, Record
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "I64_MIN",
    "RECORD_FIELDS",
    "U64",
    "live_record",
    "record_from_list",
    "records_from_list",
    "refuse_ext",
    "tombstone",
]

#: Fields of a record in a list: ``key .. expires, deleted, data, stamps, seen, partial``.
RECORD_FIELDS = 11

_unpackb = msgpack.unpackb


def refuse_ext(code: int, data: bytes) -> Any:
    # No ext type is in the format; an empty one passes max_ext_len and would fail every store later.
    raise ValueError(f"ext type {code}")


#: Header bytes of msgpack containers (fixmap, fixarray, array 16/32, map 16/32): every container starts with one.
_HEADERS = bytes(range(0x80, 0xA0)) + b"\xdc\xdd\xde\xdf"
#: What ``_bounded`` looks at besides the headers: the float markers with the first byte of a
#: NaN's or infinity's exponent (7f, ff), and the bin markers with the zero of an empty bin's length.
_MARKERS = b"\xca\xcb\x7f\xff\xc4\xc5\xc6\x00"
_ALL_BUT_KEPT = bytes(b for b in range(256) if b not in _HEADERS + _MARKERS)
_ALL_BUT_HEADERS = bytes(b for b in range(256) if b not in _HEADERS)
#: In the kept bytes: a float whose encoding may be NaN or infinite, or an empty bin (a b"" key or value).
#: Bytes next to each other in the blob are next to each other in what is kept, so neither can hide.
_SUSPECT = re.compile(rb"[\xca\xcb][\x7f\xff]|[\xc4-\xc6]\x00")


def _unpack_data(blob: bytes) -> dict[str, Any]:
    try:
        data = _unpackb(blob, raw=False, strict_map_key=True, max_ext_len=0, ext_hook=refuse_ext)
    except Exception as exc:
        raise WireError(f"undecodable data ({type(exc).__name__})") from exc
    if type(data) is not dict:
        raise WireError("data must be a map")
    return data


def _unpack_without_bin(blob: bytes) -> Any:
    """``blob`` decoded as ``_unpack_data`` does, but None if it holds a non-empty bin (or is bad at all)."""
    try:
        return _unpackb(blob, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0, ext_hook=refuse_ext)
    except Exception:  # noqa: BLE001 (not lost: ``_unpack_data`` decodes it again and says what is wrong)
        return None


def _bounded(blob: bytes, limits: Limits) -> bool:
    """Whether the bytes of ``blob`` alone prove that its data (``_unpack_without_bin``) obeys the data rule.

    For data msgpack decoded from ``blob`` with no bin longer than 0 and no
    ext, everything the data rule asks holds by construction but three
    things: values are str, 64-bit int, float, bool, None, b"", list or dict,
    keys str or b"". The three, read off the bytes in C:

    * at most ``max_items`` values: each takes at least one byte;
    * no NaN or infinity and no b"" (key or value): neither can be encoded
      without a byte pair ``_SUSPECT`` finds;
    * nested at most ``max_depth`` deep: deeper takes more than
      ``max_depth`` containers (the top map is one), each starting with a
      header byte.

    False sends the data to the walk (``scan_data``): the proof only skips
    the walk where the walk could not refuse anything.
    """
    if len(blob) > limits.max_items:
        return False
    kept = blob.translate(None, _ALL_BUT_KEPT)
    return len(kept.translate(None, _ALL_BUT_HEADERS)) <= limits.max_depth and _SUSPECT.search(kept) is None


def _data(blob: Any, limits: Limits) -> tuple[dict[str, Any], int, bool]:
    if type(blob) is not bytes:
        raise WireError("data must be bin")
    if len(blob) > limits.max_data:
        raise WireError("data exceeds max_data")
    data = _unpack_without_bin(blob)
    binless = data is not None
    if not binless:
        data = _unpack_data(blob)
    elif type(data) is not dict:
        raise WireError("data must be a map")
    if len(data) <= limits.max_items:
        # One pass takes the common flat session (msgpack ints are 64-bit, keys str or bytes).
        for k, v in data.items():
            kind = type(v)
            if type(k) is not str or not (
                kind is str or kind is int or kind is bool or kind is bytes or v is None
                or (kind is float and v - v == 0.0)  # inf - inf and nan - nan are nan
            ):
                break
        else:
            return data, len(blob), True
        # It stopped at a container, unless at a NaN, an infinity or a b"" key, which ``_bounded`` refuses.
        if binless and _bounded(blob, limits):
            return data, len(blob), False
    # Anything else is the record rule's to judge (``admission.scan_data``).
    try:
        flat = scan_data(data, limits.max_depth, limits.max_items)
    except SessionDataError as exc:
        raise WireError(f"data: {exc.reason}") from None
    return data, len(blob), flat


def _stamps(value: Any, data: dict[str, Any], version: int, rorigin: int,
            limits: Limits) -> dict[str, tuple[int, int]] | None:
    """``Record.stamps`` from the wire's map of the stamps that differ from the record's own (and removed keys)."""
    if type(value) is not dict:
        raise WireError("stamps must be a map")
    if not value:
        return None
    if len(value) > limits.max_items:
        raise WireError("stamps map exceeds max_items")
    stamps = dict.fromkeys(data, (version, rorigin))
    for name, stamp in value.items():
        if type(name) is not str:
            raise WireError("a stamped key is not a str")
        if type(stamp) is not list or len(stamp) != 2:
            raise WireError("a stamp is not [version, origin]")
        stamp_version, stamp_origin = stamp
        if type(stamp_version) is not int or not 0 < stamp_version <= MAX_VERSION:
            raise WireError("a stamp's version is not an int in (0, 2**63 - 1]")
        if type(stamp_origin) is not int or not I64_MIN <= stamp_origin <= U64:
            raise WireError("a stamp's origin is not a 64-bit int")
        stamps[name] = (stamp_version, stamp_origin)
    return stamps


def _writers(value: Any, what: str) -> dict[int, int]:
    """A map of writer origin -> version (``Record.seen``, a delta's ``base``) from ``[[origin, version], ...]``."""
    if type(value) is not list or len(value) > MAX_SEEN_ENTRIES:
        raise WireError(f"{what} must be at most {MAX_SEEN_ENTRIES} [origin, version] pairs")
    writers: dict[int, int] = {}
    for entry in value:
        if type(entry) is not list or len(entry) != 2:
            raise WireError(f"a {what} entry is not [origin, version]")
        writer, version = entry
        if type(writer) is not int or not I64_MIN <= writer <= U64:
            raise WireError(f"a {what} origin is not a 64-bit int")
        if type(version) is not int or not 0 < version <= MAX_VERSION:
            raise WireError(f"a {what} version is not an int in (0, 2**63 - 1]")
        if writer in writers:
            raise WireError(f"{what} names a writer twice")
        writers[writer] = version
    return writers


def _seen(value: Any) -> dict[int, int] | None:
    """``Record.seen`` from nil or ``[[origin, version], ...]`` (empty: a record that names no change)."""
    return None if value is None else _writers(value, "seen")


def _partial(value: Any) -> tuple[bool, dict[int, int] | None]:
    """``(Record.partial, Record.base)`` from ``false`` or a delta's base ``[[origin, version], ...]``."""
    if value is False:
        return False, None
    if type(value) is not list:
        raise WireError("partial must be false or a delta's base")
    return True, _writers(value, "base") or None


def _check_fields(fields: Sequence[Any], deleted: bool, limits: Limits) -> tuple[Any, ...]:
    """``key, version, rorigin, created, accessed, expires`` once checked (int times as floats)."""
    key, version, rorigin, created, accessed, expires = fields
    # Inline checks: this runs for every change on every hop; the record rule names what is wrong.
    if (
        type(key) is not str or not 0 < len(key) <= limits.max_key
        or type(version) is not int or not 0 < version <= MAX_VERSION
        or type(rorigin) is not int or not I64_MIN <= rorigin <= U64
        or type(created) is not float or type(accessed) is not float or type(expires) is not float
        or created - created != 0.0 or accessed - accessed != 0.0 or expires != expires  # inf, NaN
        or not key.isprintable()
    ):
        created, accessed, expires = (float(t) if type(t) is int else t for t in (created, accessed, expires))
        fault = field_fault(key, version, rorigin, created, accessed, expires, deleted, limits.max_key)
        if fault is not None:
            raise WireError(fault)
    return key, version, rorigin, created, accessed, expires


def tombstone(fields: Sequence[Any], limits: Limits) -> Record:
    """The tombstone of a DESTROY (``key .. expires``)."""
    key, version, rorigin, created, accessed, expires = _check_fields(fields, True, limits)
    return Record(key, {}, version, rorigin, created, accessed, expires, True, True, 0)


def live_record(fields: Sequence[Any], blob: Any, stamps: Any, seen: Any, partial: Any,
                limits: Limits) -> Record:
    """The live record of a SET (``key .. expires``, then ``data, stamps, seen, partial``; see ``format``)."""
    key, version, rorigin, created, accessed, expires = _check_fields(fields, False, limits)
    data, size, flat = _data(blob, limits)
    is_partial, base = _partial(partial)
    return Record(key, data, version, rorigin, created, accessed, expires, False, flat, size,
                  None if stamps == {} else _stamps(stamps, data, version, rorigin, limits),
                  None if seen is None else _seen(seen), is_partial, base)


def record_from_list(value: Any, limits: Limits = DEFAULT_LIMITS) -> Record:
    """The record of a snapshot chunk, push, write or get reply."""
    if type(value) is not list or len(value) != RECORD_FIELDS:
        raise WireError(f"record must be an array of {RECORD_FIELDS}")
    deleted = value[6]
    if type(deleted) is not bool:
        raise WireError("deleted must be a bool")
    if not deleted:
        return live_record(value[:6], value[7], value[8], value[9], value[10], limits)
    blob, stamps, seen, partial = value[7:]
    if blob is not None and blob != b"\x80":
        raise WireError("tombstone carries data")
    if stamps != {} or seen is not None or partial is not False:
        raise WireError("tombstone carries stamps, seen or the partial flag")
    return tombstone(value[:6], limits)


def records_from_list(value: Any, limits: Limits) -> tuple[list[Record], int]:
    """The records of a list, skipping the ones the record rule refuses: ``(records, refused)``.

    One bad record must not cost the others: a snapshot chunk that carried
    one would otherwise fail every join.
    """
    if type(value) is not list or len(value) > limits.max_records:
        raise WireError("records must be an array within max_records")
    out = []
    for item in value:
        try:
            out.append(record_from_list(item, limits))
        except WireError:
            continue  # left out, and counted: ``refused`` below, ``Reply.refused`` for the caller
    return out, len(value) - len(out)
