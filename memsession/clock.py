"""Time sources and the hybrid logical clock that versions every write.

Two clocks, never mixed: ``monotonic()`` for local decisions (idle, LRU,
coalescing), ``wall()`` for what goes on the wire or to disk (``expires``).
Anything that needs time takes a ``Clock`` so tests can pass a fake one.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "HybridClock", "SystemClock", "version_wall_ms"]

#: Bits of a version given to the logical counter; the rest is wall milliseconds.
COUNTER_BITS = 16
_COUNTER_MASK = (1 << COUNTER_BITS) - 1


@runtime_checkable
class Clock(Protocol):
    """A pair of time sources, both in seconds as floats."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""

    def wall(self) -> float:
        """Seconds since the Unix epoch; may jump."""


class SystemClock:
    """The real clocks: ``time.monotonic`` and ``time.time``."""

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


def version_wall_ms(version: int) -> int:
    """The wall-clock milliseconds a version was issued at."""
    return version >> COUNTER_BITS


class HybridClock:
    """Hybrid logical clock: versions that follow wall time yet never go back.

    A version is one int, ``wall_ms << 16 | counter``: it orders like the wall
    time of the write, stays strictly increasing in this process even if the
    wall clock steps back, and after ``observe(remote)`` every later local
    version is greater than ``remote`` (so causally later writes win LWW).
    Ties between processes are broken by origin id outside this class.
    Fits a signed 64-bit column until the year 6429.

    ``observe`` refuses a version issued more than ``max_skew`` seconds ahead
    of this wall clock: one forged or corrupt record must not push every later
    local version past the largest one anything accepts. The record rule
    (``memsession.admission``) refuses such records before they are merged;
    this is the second line.
    """

    __slots__ = ("_clock", "_last", "_lock", "_skew_ms")

    def __init__(self, clock: Clock = SYSTEM_CLOCK, max_skew: float = 60.0) -> None:
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()
        self._skew_ms = int(max_skew * 1000)

    def now(self) -> int:
        """A new version, greater than every version issued or observed here."""
        physical = int(self._clock.wall() * 1000) << COUNTER_BITS
        with self._lock:
            self._last = physical if physical > self._last else self._last + 1
            return self._last

    def observe(self, version: int) -> bool:
        """Move past a version seen from elsewhere; False (and no move) if it is beyond the skew bound."""
        if version >> COUNTER_BITS > int(self._clock.wall() * 1000) + self._skew_ms:
            return False
        with self._lock:
            if version > self._last:
                self._last = version
        return True

    @property
    def last(self) -> int:
        return self._last
