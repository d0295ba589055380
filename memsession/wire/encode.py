"""Building bus frames: every message and request of the wire format.

The frames themselves are documented one by one in ``memsession.wire.format``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgpack

from ..partitions import MASK_BYTES
from ..session import Record
from .format import (
    _TOPICS,
    BATCH,
    CLEAR,
    DESTROY,
    DROP,
    HEARTBEAT,
    HELLO,
    HUB_BEAT,
    INVALIDATE,
    REPLY_OPS,
    REQUEST_OPS,
    RESYNC,
    SET,
    TOUCH,
)
from .limits import DEFAULT_LIMITS

__all__ = [
    "destroy_fields",
    "encode_batch",
    "encode_clear",
    "encode_destroy",
    "encode_drop",
    "encode_heartbeat",
    "encode_hello",
    "encode_invalidate",
    "encode_message",
    "encode_record_message",
    "encode_request",
    "encode_resync",
    "encode_set",
    "encode_touch",
    "invalidate_fields",
    "record_lists",
    "record_to_list",
    "set_fields",
    "touch_fields",
]

_packb = msgpack.packb
_EMPTY_MAP = _packb({})


def _pack_data(data: dict[str, Any]) -> bytes:
    return _packb(data, use_bin_type=True)


def _wire_stamps(record: Record) -> dict[str, list[int]]:
    """The stamps that differ from the record's own, and every removed key: what the receiver can't infer."""
    stamps = record.stamps
    if not stamps:
        return {}
    own = (record.version, record.origin)
    data = record.data
    return {name: [stamp[0], stamp[1]] for name, stamp in stamps.items() if stamp != own or name not in data}


def _wire_seen(record: Record) -> list[list[int]] | None:
    seen = record.seen
    return None if seen is None else [[origin, version] for origin, version in seen.items()]


def _wire_partial(record: Record) -> bool | list[list[int]]:
    """``false`` for a whole record; a delta's ``base`` as ``[[origin, version], ...]`` (maybe empty)."""
    if not record.partial:
        return False
    base = record.base
    return [] if base is None else [[origin, version] for origin, version in base.items()]


def record_to_list(record: Record) -> list[Any]:
    if record.deleted:  # as a DESTROY: a tombstone ends every key at once
        return [record.key, record.version, record.origin, record.created, record.accessed, record.expires,
                True, _EMPTY_MAP, {}, None, False]
    return [
        record.key,
        record.version,
        record.origin,
        record.created,
        record.accessed,
        record.expires,
        False,
        _pack_data(record.data),
        _wire_stamps(record),
        _wire_seen(record),
        _wire_partial(record),
    ]


def record_lists(records: Sequence[Record], max_records: int,
                 max_stamps: int = DEFAULT_LIMITS.max_stamps) -> Iterator[list[list[Any]]]:
    """``records`` as record lists (``record_to_list``), each one frame's worth.

    A list holds at most ``max_records`` records and ``max_stamps`` stamps,
    ``seen`` and ``base`` entries in all (what the receiver's ``Limits`` let one frame
    build); a record with more than that goes alone.
    """
    chunk: list[list[Any]] = []
    entries = 0
    for record in records:
        item = record_to_list(record)
        # stamps, seen and a delta's base as sent
        count = len(item[8]) + (len(item[9]) if item[9] is not None else 0) + (len(item[10]) if item[10] else 0)
        if chunk and (len(chunk) >= max_records or entries + count > max_stamps):
            yield chunk
            chunk, entries = [], 0
        chunk.append(item)
        entries += count
    if chunk:
        yield chunk


def set_fields(record: Record, packed: bytes | None = None) -> list[Any]:
    """``packed``: ``record.data`` already serialized by the writer, if it has it."""
    return [record.key, record.version, record.origin, record.created, record.accessed, record.expires,
            _pack_data(record.data) if packed is None else packed, _wire_stamps(record), _wire_seen(record),
            _wire_partial(record)]


def destroy_fields(record: Record) -> list[Any]:
    return [record.key, record.version, record.origin, record.created, record.accessed, record.expires]


def touch_fields(record: Record) -> list[Any]:
    return [record.key, record.version, record.origin, record.accessed, record.expires]


def invalidate_fields(record: Record) -> list[Any]:
    return [record.key, record.version, record.origin, record.deleted]


def encode_message(op: str, origin: int, epoch: int, seq: int, sent_us: int, fields: list[Any]) -> list[bytes]:
    """A bus message from its op and the fields after the header (``set_fields`` and friends)."""
    return [_TOPICS[op], _packb([origin, epoch, seq, sent_us, *fields], use_bin_type=True)]


def encode_set(record: Record, origin: int, epoch: int, seq: int, sent_us: int) -> list[bytes]:
    return encode_message(SET, origin, epoch, seq, sent_us, set_fields(record))


def encode_destroy(record: Record, origin: int, epoch: int, seq: int, sent_us: int) -> list[bytes]:
    return encode_message(DESTROY, origin, epoch, seq, sent_us, destroy_fields(record))


def encode_touch(record: Record, origin: int, epoch: int, seq: int, sent_us: int) -> list[bytes]:
    return encode_message(TOUCH, origin, epoch, seq, sent_us, touch_fields(record))


def encode_invalidate(record: Record, origin: int, epoch: int, seq: int, sent_us: int) -> list[bytes]:
    return encode_message(INVALIDATE, origin, epoch, seq, sent_us, invalidate_fields(record))


def encode_clear(version: int, origin: int, epoch: int, seq: int, sent_us: int) -> list[bytes]:
    return encode_message(CLEAR, origin, epoch, seq, sent_us, [version])


def encode_drop(partitions: int, origin: int, epoch: int, seq: int, sent_us: int) -> list[bytes]:
    """DROP: every live copy in ``partitions`` (a ``memsession.partitions`` mask) is to be forgotten."""
    return encode_message(DROP, origin, epoch, seq, sent_us, [partitions.to_bytes(MASK_BYTES, "big")])


def encode_batch(items: Sequence[tuple[str, list[Any]]], origin: int, epoch: int, seq: int,
                 sent_us: int) -> list[bytes]:
    """One BATCH message: ``items`` are ``(op, fields)`` numbered ``seq``, ``seq + 1``, ..."""
    return encode_message(BATCH, origin, epoch, seq, sent_us, [[[op, *fields] for op, fields in items]])


def encode_record_message(record: Record, origin: int, epoch: int, seq: int, sent_us: int) -> list[bytes]:
    """SET for a live record, DESTROY for a tombstone."""
    if record.deleted:
        return encode_destroy(record, origin, epoch, seq, sent_us)
    return encode_set(record, origin, epoch, seq, sent_us)


def encode_heartbeat(
    origin: int, epoch: int, seq: int, sent_us: int, *, hub: bool = False, suspect: int = 0
) -> list[bytes]:
    """A HEARTBEAT, or with ``hub`` a HUB BEAT naming the partitions it can't vouch for (``suspect``)."""
    fields: list[Any] = [origin, epoch, seq, sent_us]
    if hub and suspect:
        fields.append(suspect.to_bytes(MASK_BYTES, "big"))
    return [_TOPICS[HUB_BEAT if hub else HEARTBEAT], _packb(fields)]


def encode_hello(origin: int, epoch: int, nonce: int, sent_us: int) -> list[bytes]:
    return [_TOPICS[HELLO], _packb([origin, epoch, 0, sent_us, nonce])]


def encode_resync(origin: int, epoch: int, target: int, sent_us: int) -> list[bytes]:
    return [_TOPICS[RESYNC], _packb([origin, epoch, 0, sent_us, target])]


def encode_request(op: str, rid: int, *fields: Any) -> list[bytes]:
    """A request or reply frame pair: ``op`` is one of S C E G R P W A Q T."""
    if op not in REQUEST_OPS and op not in REPLY_OPS:
        raise ValueError(f"not a request/reply op: {op!r}")
    return [_TOPICS[op], _packb([rid, *fields], use_bin_type=True)]
