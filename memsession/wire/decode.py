"""Decoding bus frames, checking every size and field under ``Limits`` before trusting them.

The frames are documented one by one in ``memsession.wire.format``, whose last
paragraph says what decoding checks and what it raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ..admission import MAX_ITEMS, field_fault, scan_data
from ..errors import SessionDataError, WireError
from ..session import MAX_VERSION, Record
from .format import (
    _OPS,
    _TOPICS,
    ACK,
    BATCH,
    BUS_OPS,
    CHUNK,
    CLEAR,
    DATA_OPS,
    DESTROY,
    END,
    GET,
    HEARTBEAT,
    HELLO,
    HUB_BEAT,
    INVALIDATE,
    PUSH,
    RECORD,
    REPLY_OPS,
    REQUEST_OPS,
    SET,
    SNAPSHOT,
    STATS,
    STATS_REPLY,
    TOUCH,
    WRITE,
    Message,
    Reply,
    topic_refusal,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "decode",
    "decode_reply",
    "is_own",
    "own_prefix",
    "record_from_list",
]

_U64 = (1 << 64) - 1
_I64_MIN = -(1 << 63)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Upper bounds the decoder enforces before it trusts a frame."""

    #: Largest payload frame (bytes); snapshot chunks and pushes included.
    max_frame: int = 16 * 1024 * 1024
    #: Largest serialized session data (bytes).
    max_data: int = 1024 * 1024
    #: Longest key (characters).
    max_key: int = 256
    #: Most records in one chunk or push.
    max_records: int = 10_000
    #: Deepest nesting inside session data.
    max_depth: int = 32
    #: Most values in one session's data (``admission``): bounds the objects decoding a record builds.
    max_items: int = 8 * MAX_ITEMS
    #: Most changes in one BATCH message (senders put 256 in one).
    max_batch: int = 1024


DEFAULT_LIMITS = Limits()

_packb = msgpack.packb
_unpackb = msgpack.unpackb


def own_prefix(origin: int, epoch: int) -> bytes:
    """What every payload of stream ``(origin, epoch)`` starts with after its array header."""
    return _packb(origin) + _packb(epoch)


def is_own(frames: Sequence[bytes], prefix: bytes) -> bool:
    """True for a message of our own stream (``own_prefix``) other than HELLO, without decoding it.

    A subscriber gets its own messages back from the hub; skipping them here
    saves decoding every change this process made. Every bus payload is an
    array of at most 15 items, so its header is one fixarray byte.
    """
    if len(frames) != 2 or frames[0] == _TOPICS[HELLO]:
        return False
    payload = frames[1]
    return bool(payload) and payload[0] & 0xF0 == 0x90 and payload.startswith(prefix, 1)


def _refuse_ext(code: int, data: bytes) -> Any:
    # No ext type is in the format; an empty one passes max_ext_len and would fail every store later.
    raise ValueError(f"ext type {code}")


class _ArrayBudget:
    """``list_hook`` that stops decoding once a frame built more arrays or items than its op allows.

    msgpack builds one object per byte of ``[[], [], ...]``: without it a
    16 MiB frame of empty arrays costs a gigabyte before any check runs.
    """

    __slots__ = ("left",)

    def __init__(self, items: int) -> None:
        self.left = items

    def __call__(self, value: Any) -> Any:
        self.left -= len(value) + 1
        if self.left < 0:
            raise ValueError("more arrays, maps or items than the op carries")
        return value


def _unpack(frame: bytes, limits: Limits, items: int, maps: int = 0) -> list[Any]:
    """The payload array of ``frame``: at most ``items`` array elements in all and ``maps`` map entries."""
    if len(frame) > limits.max_frame:
        raise WireError(f"frame of {len(frame)} bytes exceeds {limits.max_frame}")
    budget = _ArrayBudget(items)
    try:
        value = _unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            max_bin_len=limits.max_data,
            max_str_len=max(4 * limits.max_key, 1024) if not maps else limits.max_data,
            max_array_len=items,
            max_map_len=maps,
            max_ext_len=0,
            ext_hook=_refuse_ext,
            list_hook=budget,
            object_hook=budget if maps else None,
        )
    except Exception as exc:  # msgpack raises many types for bad input; all mean the same here
        raise WireError(f"undecodable payload ({type(exc).__name__})") from exc
    if type(value) is not list:
        raise WireError("payload is not an array")
    return value


def _split(frames: Sequence[bytes]) -> tuple[str, bytes]:
    if len(frames) != 2:
        raise WireError(f"expected 2 frames, got {len(frames)}")
    topic, payload = frames
    if not isinstance(topic, (bytes, bytearray, memoryview)) or not isinstance(
        payload, (bytes, bytearray, memoryview)
    ):
        raise WireError("frames must be bytes")
    topic = bytes(topic)
    op = _OPS.get(topic)
    if op is None:
        raise topic_refusal(topic)
    return op, payload


def _int(value: Any, what: str, lo: int = 0, hi: int = _U64) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise WireError(f"{what} must be an int in [{lo}, {hi}]")
    return value


def _time(value: Any, what: str) -> float:
    kind = type(value)
    if kind is float:
        if math.isnan(value):
            raise WireError(f"{what} is NaN")
        return value
    if kind is int:
        return float(value)
    raise WireError(f"{what} must be a number")


def _key(value: Any, limits: Limits) -> str:
    if type(value) is not str or not 0 < len(value) <= limits.max_key:
        raise WireError("key must be a non-empty str within max_key")
    return value


def _data(blob: Any, limits: Limits) -> tuple[dict[str, Any], int, bool]:
    if type(blob) is not bytes:
        raise WireError("data must be bin")
    if len(blob) > limits.max_data:
        raise WireError("data exceeds max_data")
    try:
        data = _unpackb(blob, raw=False, strict_map_key=True, max_ext_len=0, ext_hook=_refuse_ext)
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


def _record(fields: Sequence[Any], deleted: bool, blob: Any, limits: Limits) -> Record:
    key, version, rorigin, created, accessed, expires = fields
    # Inline checks: this runs for every change on every hop; the record rule names what is wrong.
    if (
        type(key) is not str or not 0 < len(key) <= limits.max_key
        or type(version) is not int or not 0 < version <= MAX_VERSION
        or type(rorigin) is not int or not _I64_MIN <= rorigin <= _U64
        or type(created) is not float or type(accessed) is not float or type(expires) is not float
        or created - created != 0.0 or accessed - accessed != 0.0 or expires != expires  # inf, NaN
        or not key.isprintable()
    ):
        created, accessed, expires = (float(t) if type(t) is int else t for t in (created, accessed, expires))
        fault = field_fault(key, version, rorigin, created, accessed, expires, deleted, limits.max_key)
        if fault is not None:
            raise WireError(fault)
    if deleted:
        if blob is not None and blob != b"\x80":
            raise WireError("tombstone carries data")
        return Record(key, {}, version, rorigin, created, accessed, expires, True, True, 0)
    data, size, flat = _data(blob, limits)
    return Record(key, data, version, rorigin, created, accessed, expires, False, flat, size)


def record_from_list(value: Any, limits: Limits = DEFAULT_LIMITS) -> Record:
    """The record of a snapshot chunk, push or get reply."""
    if type(value) is not list or len(value) != 8:
        raise WireError("record must be an array of 8")
    deleted = value[6]
    if type(deleted) is not bool:
        raise WireError("deleted must be a bool")
    return _record(value[:6], deleted, value[7], limits)


def decode(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> Message:
    """A bus message from its two frames, or ``WireError``."""
    op, payload = _split(frames)
    if op not in BUS_OPS:
        raise WireError("not a bus op")
    # What each op can carry, counted in array items: a BATCH its changes of up to 8 fields each.
    items = _unpack(payload, limits, 16 + 10 * limits.max_batch if op == BATCH else 16)
    if len(items) < 4:
        raise WireError("truncated header")
    origin = _int(items[0], "origin", _I64_MIN, _U64)
    epoch = _int(items[1], "epoch")
    seq = _int(items[2], "seq")
    sent_us = _int(items[3], "sent_us")
    rest = items[4:]
    if op == BATCH:
        if len(rest) != 1 or type(rest[0]) is not list or not 0 < len(rest[0]) <= limits.max_batch:
            raise WireError("BATCH needs a non-empty list of at most max_batch items")
        if seq == 0:
            raise WireError("data message without a sequence number")
        body: Any = [_batch_item(item, limits) for item in rest[0]]
        if seq + len(body) - 1 > _U64:
            raise WireError("BATCH numbers run past the largest seq")
        return Message(op, origin, epoch, seq, sent_us, body)
    body = _body(op, rest, limits)
    if op in DATA_OPS and seq == 0:
        raise WireError("data message without a sequence number")
    return Message(op, origin, epoch, seq, sent_us, body)


def _batch_item(item: Any, limits: Limits) -> tuple[str, Any]:
    if type(item) is not list or not item:
        raise WireError("BATCH item must be a non-empty array")
    op = item[0]
    if type(op) is not str or op not in DATA_OPS:
        raise WireError("BATCH item has an unknown op")
    return op, _body(op, item[1:], limits)


def _body(op: str, rest: list[Any], limits: Limits) -> Any:
    """The decoded fields of one message after its header (see the table in ``format``)."""
    n = len(rest)
    if op == SET:
        if n != 7:
            raise WireError("SET needs 7 fields")
        return _record(rest[:6], False, rest[6], limits)
    if op == DESTROY:
        if n != 6:
            raise WireError("DESTROY needs 6 fields")
        return _record(rest, True, None, limits)
    if op == TOUCH:
        if n != 5:
            raise WireError("TOUCH needs 5 fields")
        return (
            _key(rest[0], limits),
            _int(rest[1], "version", 0, MAX_VERSION),
            _int(rest[2], "origin", _I64_MIN, _U64),
            _time(rest[3], "accessed"),
            _time(rest[4], "expires"),
        )
    if op == INVALIDATE:
        if n != 4 or type(rest[3]) is not bool:
            raise WireError("INVALIDATE needs key, version, origin, deleted")
        return (_key(rest[0], limits), _int(rest[1], "version", 0, MAX_VERSION),
                _int(rest[2], "origin", _I64_MIN, _U64), rest[3])
    if op == CLEAR:
        if n != 1:
            raise WireError("CLEAR needs a version")
        return _int(rest[0], "version", 1, MAX_VERSION)
    if op in (HEARTBEAT, HUB_BEAT):
        if n:
            raise WireError("heartbeat carries no fields")
        return None
    # HELLO, RESYNC
    if n != 1:
        raise WireError(f"{op} needs 1 field")
    return _int(rest[0], "nonce" if op == HELLO else "target", _I64_MIN, _U64)


def _records(value: Any, limits: Limits) -> tuple[list[Record], int]:
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


def decode_reply(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> Reply:
    """A request or reply from its two frames (ROUTER identities already removed)."""
    op, payload = _split(frames)
    if op not in REQUEST_OPS and op not in REPLY_OPS:
        raise WireError("not a request/reply op")
    if op in (CHUNK, WRITE, PUSH, END):  # record lists (8 fields a record) or the sequence vector
        # Maps too (within the same budget): a record whose field is one is left out, not the whole list.
        items = _unpack(payload, limits, 16 + 10 * limits.max_records, maps=limits.max_records)
    elif op == STATS_REPLY:
        items = _unpack(payload, limits, 16 + limits.max_records, maps=limits.max_records)
    else:
        items = _unpack(payload, limits, 16)
    if not items:
        raise WireError("missing request id")
    rid = _int(items[0], "rid")
    rest = items[1:]
    n = len(rest)
    refused = 0
    body: tuple[Any, ...]
    if op in (SNAPSHOT, STATS):
        if n:
            raise WireError(f"{op} carries no fields")
        body = ()
    elif op in (CHUNK, WRITE):
        if n != 1:
            raise WireError(f"{op} needs a record list")
        records, refused = _records(rest[0], limits)
        body = (records,)
    elif op == PUSH:
        if n != 2:
            raise WireError("PUSH needs a record list and a clear watermark")
        records, refused = _records(rest[0], limits)
        body = (records, _int(rest[1], "cleared", 0, MAX_VERSION))
    elif op == END:
        if n != 5:
            raise WireError("END needs hub_epoch, vector, chunks, records, cleared")
        vector = rest[1]
        if type(vector) is not list or len(vector) > limits.max_records:
            raise WireError("vector must be an array")
        vec: dict[int, tuple[int, int]] = {}
        for entry in vector:
            if type(entry) is not list or len(entry) != 3:
                raise WireError("vector entries are [origin, epoch, seq]")
            vec[_int(entry[0], "origin", _I64_MIN, _U64)] = (_int(entry[1], "epoch"), _int(entry[2], "seq"))
        body = (
            _int(rest[0], "hub_epoch"), vec, _int(rest[2], "chunks"), _int(rest[3], "records"),
            _int(rest[4], "cleared", 0, MAX_VERSION),
        )
    elif op == GET:
        if n != 1:
            raise WireError("GET needs a key")
        body = (_key(rest[0], limits),)
    elif op == RECORD:
        if n != 1:
            raise WireError("RECORD needs a record or nil")
        body = (None if rest[0] is None else record_from_list(rest[0], limits),)
    elif op == ACK:
        if n != 1:
            raise WireError("ACK needs a count")
        body = (_int(rest[0], "changed"),)
    else:  # STATS_REPLY
        if n != 1 or type(rest[0]) is not dict:
            raise WireError("STATS REPLY needs a map")
        body = (rest[0],)
    return Reply(op, rid, body, refused)
