"""Helpers every end of a stream shares, the workers' replicators and the hub alike.

``new_epoch`` names a stream when its process starts; ``percentiles`` sums up
the delivery lag of what it received, for ``stats``; ``is_touch`` tells a
coalesced access from a write.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from ..clock import SYSTEM_CLOCK, Clock, version_wall_ms
from ..session import Record

__all__ = ["is_touch", "new_epoch", "percentiles"]


def is_touch(record: Record) -> bool:
    """A coalesced touch: same version as the write, access time well after it.

    A set's version is issued after its access time is read, so it is never
    older than it; misreading a touch as a set only costs bandwidth.
    """
    return not record.deleted and version_wall_ms(record.version) < int(record.accessed * 1000) - 1


def new_epoch(clock: Clock = SYSTEM_CLOCK) -> int:
    """A stream epoch: start time in ms with 12 random low bits.

    It names a stream; nothing relies on its order, since the wall clock can
    step back or two starts share a millisecond (receivers tell restarts by
    the new epoch or the hub's new id).
    """
    return (int(clock.wall() * 1000) << 12) | secrets.randbits(12)


def percentiles(samples: Iterable[float], points: Iterable[float] = (50, 99)) -> dict[str, float | None]:
    ordered = sorted(samples)
    out: dict[str, float | None] = {}
    for p in points:
        key = f"p{p:g}"
        if not ordered:
            out[key] = None
        else:
            out[key] = ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]
    return out
