"""When the hub asks an origin to resync: at most once per spacing, and the request held back is owed.

A gap in an origin's stream makes the hub ask it to push its state. The
push takes a moment to arrive and more gaps may show meanwhile, so one origin
is asked at most once per ``RESYNC_SPACING``; a gap inside the spacing is not
forgotten but owed (the push may have been cut before that loss) and asked
for once the spacing has passed. No I/O: ``HubState`` builds the frames.
"""

from __future__ import annotations

import logging

from ..clock import Clock

__all__ = ["RESYNC_SPACING", "Resyncs"]

log = logging.getLogger("memsession.hub")

#: Seconds between two resync requests to one origin (its push takes a moment to arrive).
RESYNC_SPACING = 0.5


class Resyncs:
    """Which origins to ask for a resync now, and which are owed one; counts ``resyncs_sent`` into ``counts``."""

    def __init__(self, clock: Clock, counts: dict[str, int]) -> None:
        self.clock = clock
        self.counts = counts
        self._last: dict[int, float] = {}
        self._owed: set[int] = set()

    def ask_now(self, origin: int) -> bool:
        """Whether to ask ``origin`` to resync now (counted); if not, the request is owed."""
        now = self.clock.monotonic()
        if now - self._last.get(origin, -1e9) < RESYNC_SPACING:
            self._owed.add(origin)
            return False
        self._owed.discard(origin)
        self._last[origin] = now
        self.counts["resyncs_sent"] += 1
        log.info("gap in the stream of origin %x; asking it to resync", origin)
        return True

    def due(self) -> list[int]:
        """The owed origins whose spacing has passed (each is then asked: ``ask_now``)."""
        if not self._owed:
            return []
        now = self.clock.monotonic()
        return [o for o in self._owed if now - self._last.get(o, -1e9) >= RESYNC_SPACING]

    def forget(self, origin: int) -> None:
        """``origin`` went silent and is forgotten: nothing more is owed to it."""
        self._last.pop(origin, None)
        self._owed.discard(origin)
