"""Decoding bus frames, checking every size and field under ``Limits`` before trusting them.

The frames are documented one by one in ``memsession.wire.format``, whose last
paragraph says what decoding checks and what it raises; the records they carry
are decoded by ``memsession.wire.records``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgpack

from ..errors import WireError
from ..partitions import MASK_BYTES
from ..record_shape import I64_MIN as _I64_MIN
from ..record_shape import U64 as _U64
from ..session import MAX_VERSION
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
    DROP,
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
from .limits import DEFAULT_LIMITS, Limits
from .records import live_record, record_from_list, records_from_list, refuse_ext, tombstone

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "decode",
    "decode_reply",
    "is_own",
    "own_prefix",
    "record_from_list",
]

#: Array items a record of a record list or a change of a BATCH builds besides its stamps: its own
#: array (11 items) and an empty stamps map.
_RECORD_ITEMS = 13
#: Array items a stamp or ``seen`` entry builds: its map slot and its two-int array (``_ArrayBudget``).
_STAMP_ITEMS = 4

_packb = msgpack.packb
_unpackb = msgpack.unpackb


def own_prefix(origin: int, epoch: int) -> bytes:
    """What every payload of stream ``(origin, epoch)`` starts with after its array header."""
    return _packb(origin) + _packb(epoch)


def is_own(frames: Sequence[bytes], prefix: bytes) -> bool:
    """True for a message of our own stream (``own_prefix``) other than HELLO, without decoding it.

    A subscriber gets its own messages back from the hub; skipping them here
    saves decoding every change this process made. Every bus payload is an
    array of at most 15 items (a SET, the longest, has 14), so its header is
    one fixarray byte.
    """
    if len(frames) != 2 or frames[0] == _TOPICS[HELLO]:
        return False
    payload = frames[1]
    return bool(payload) and payload[0] & 0xF0 == 0x90 and payload.startswith(prefix, 1)


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
    # Each array or map costs the budget its length + 1: less than two per byte of the frame in all
    # (every value takes a byte), so a frame of at most half the budget can't run it out.
    budget = _ArrayBudget(items) if 2 * len(frame) > items else None
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
            ext_hook=refuse_ext,
            list_hook=budget,
            object_hook=budget if maps and budget else None,
        )
    except Exception as exc:  # msgpack raises many types for bad input; all mean the same here
        raise WireError(f"undecodable payload ({type(exc).__name__})") from exc
    if type(value) is not list:
        raise WireError("payload is not an array")
    return value


def _stamp_items(limits: Limits) -> int:
    """Array items the stamps and ``seen`` entries of one frame may build in all."""
    return _STAMP_ITEMS * limits.max_stamps


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


def decode(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> Message:
    """A bus message from its two frames, or ``WireError``."""
    op, payload = _split(frames)
    if op not in BUS_OPS:
        raise WireError("not a bus op")
    # What each op can carry, counted in array items: a SET one change with its stamps, a BATCH its
    # changes and at most ``max_stamps`` stamps over them all; the other ops a few fields.
    if op == BATCH:
        items = _unpack(payload, limits, 16 + _RECORD_ITEMS * limits.max_batch + _stamp_items(limits),
                        maps=limits.max_items)
    elif op == SET:
        items = _unpack(payload, limits, 16 + _stamp_items(limits), maps=limits.max_items)
    else:
        items = _unpack(payload, limits, 16)
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
        if n != 10:
            raise WireError("SET needs 10 fields")
        return live_record(rest[:6], rest[6], rest[7], rest[8], rest[9], limits)
    if op == DESTROY:
        if n != 6:
            raise WireError("DESTROY needs 6 fields")
        return tombstone(rest, limits)
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
    if op == DROP:
        if n != 1 or type(rest[0]) is not bytes or len(rest[0]) != MASK_BYTES or not any(rest[0]):
            raise WireError(f"DROP needs a {MASK_BYTES}-byte partition mask naming at least one")
        return int.from_bytes(rest[0], "big")
    if op == HEARTBEAT:
        if n:
            raise WireError("heartbeat carries no fields")
        return None
    if op == HUB_BEAT:  # the partitions the hub can't vouch for: none, or a mask
        if not n:
            return 0
        if n != 1 or type(rest[0]) is not bytes or len(rest[0]) != MASK_BYTES:
            raise WireError(f"a hub beat carries nothing or a {MASK_BYTES}-byte partition mask")
        return int.from_bytes(rest[0], "big")
    # HELLO, RESYNC
    if n != 1:
        raise WireError(f"{op} needs 1 field")
    return _int(rest[0], "nonce" if op == HELLO else "target", _I64_MIN, _U64)


def _stream(value: Any) -> tuple[int, int, int] | None:
    """A PUSH's ``[origin, epoch, seq]`` (the pusher's stream when it took its state), or nil."""
    if value is None:
        return None
    if type(value) is not list or len(value) != 3:
        raise WireError("a pushed stream is [origin, epoch, seq]")
    return _int(value[0], "origin", _I64_MIN, _U64), _int(value[1], "epoch"), _int(value[2], "seq")


def decode_reply(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> Reply:
    """A request or reply from its two frames (ROUTER identities already removed)."""
    op, payload = _split(frames)
    if op not in REQUEST_OPS and op not in REPLY_OPS:
        raise WireError("not a request/reply op")
    if op in (CHUNK, WRITE, PUSH, END):  # record lists (11 fields a record) or the sequence vector
        # Maps (the stamps) within the same budget: a record whose other field is one is left out,
        # not the whole list.
        items = _unpack(payload, limits, 16 + _RECORD_ITEMS * limits.max_records + _stamp_items(limits),
                        maps=max(limits.max_records, limits.max_items))
    elif op == RECORD:
        items = _unpack(payload, limits, 16 + _stamp_items(limits), maps=limits.max_items)
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
        records, refused = records_from_list(rest[0], limits)
        body = (records,)
    elif op == PUSH:
        if n not in (2, 3):
            raise WireError("PUSH needs a record list, a clear watermark and the pusher's stream or nil")
        records, refused = records_from_list(rest[0], limits)
        body = (records, _int(rest[1], "cleared", 0, MAX_VERSION), _stream(rest[2] if n == 3 else None))
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
