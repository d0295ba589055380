"""Helpers every end of a stream shares, the workers' replicators and the hub alike.

``new_epoch`` names a stream when its process starts; ``percentiles`` (and
``LagWindow``, which keeps the samples) sums up the delivery lag of what it
received, for ``stats``; ``is_touch`` tells a coalesced access from a write.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from ..clock import SYSTEM_CLOCK, Clock, version_wall_ms
from ..session import Record

__all__ = ["LagWindow", "is_touch", "new_epoch", "percentiles"]


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


class LagWindow:
    """Delivery lags in milliseconds: the recent ones for percentiles, and the sum of all of them.

    The window keeps between ``size / 2`` and ``size`` of the latest samples (it
    sheds the older half at once, cheaper than a sample at a time); the sum
    never forgets, so that with the count of changes received the lag is a
    Prometheus summary (``rate(sum) / rate(count)`` is the mean over any range).
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.samples: list[float] = []
        self.total_ms = 0.0

    def add(self, lag_ms: float, count: int) -> None:
        """``count`` items that each waited ``lag_ms`` (they came in one message)."""
        if len(self.samples) >= self.size:
            del self.samples[: self.size // 2]
        self.samples.extend([lag_ms] * count)
        self.total_ms += lag_ms * count

    def stats(self) -> dict[str, float | None]:
        """``lag_ms_p50`` and ``lag_ms_p99`` of the window (None while it is empty) and ``lag_ms_sum``."""
        lag = percentiles(self.samples)
        return {"lag_ms_p50": lag["p50"], "lag_ms_p99": lag["p99"], "lag_ms_sum": self.total_ms}
