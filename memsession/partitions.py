"""Partitions of the session keys: what a sidecar can say it can't vouch for, without naming sessions.

A session key is the SHA-256 of its id in hex (``session.session_key``), so
its first byte spreads the keys evenly over ``PARTITIONS`` partitions. A set
of partitions is an int bitmask (bit ``p`` for partition ``p``); on the bus
it travels as ``MASK_BYTES`` big-endian bytes (``wire``'s HUB BEAT).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

__all__ = ["ALL", "MASK_BYTES", "PARTITIONS", "covers", "mask_of", "partition_of"]

#: Partitions of the key space (one per value of a key's first byte).
PARTITIONS = 256
#: Bytes of a partition mask on the wire.
MASK_BYTES = PARTITIONS // 8
#: Every partition.
ALL = (1 << PARTITIONS) - 1


#: Partition by a key's first two hex digits (lowercase, as ``session_key`` writes them).
_BY_PREFIX = {f"{p:02x}": p for p in range(PARTITIONS)}


def partition_of(key: str) -> int:
    """The partition of session key ``key`` (64 hex digits; any other string still falls in one)."""
    partition = _BY_PREFIX.get(key[:2])
    if partition is None:  # not a session key (a store's or a peer's garbage): any fixed partition will do
        return zlib.crc32(key.encode("utf-8", "surrogatepass")) % PARTITIONS
    return partition


def covers(mask: int, key: str) -> bool:
    """True if ``key``'s partition is in ``mask``."""
    return bool(mask) and bool(mask >> partition_of(key) & 1)


def mask_of(partitions: Iterable[int]) -> int:
    """The mask of ``partitions`` (each in ``[0, PARTITIONS)``)."""
    mask = 0
    for partition in partitions:
        if not 0 <= partition < PARTITIONS:
            raise ValueError(f"partition {partition} is not in [0, {PARTITIONS})")
        mask |= 1 << partition
    return mask
