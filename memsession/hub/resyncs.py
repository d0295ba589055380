"""When the hub asks an origin to resync: at most once per spacing, again until it pushes, and what is owed.

A gap in an origin's stream makes the hub ask it to push its state. The
push takes a moment to arrive and more gaps may show meanwhile, so one origin
is asked at most once per ``RESYNC_SPACING``; a gap inside the spacing is not
forgotten but owed (the push may have been cut before that loss) and asked
for once the spacing has passed. The request is published on the bus, and
one published before the origin's subscription reached this hub (a hub that
has just started) is dropped: an origin whose push has not come within
``RESYNC_RETRY`` is asked again, up to ``RESYNC_ATTEMPTS`` times for one gap.
A push names its origin's stream up to where it was taken (``pushed``). It
ends the asking only if it covers the last gap seen: one taken before a
later loss (the second gap came while the first push was on its way) leaves
that gap owed. One that names no stream (a worker of an older version) ends
nothing, and its origin is asked until the attempts run out. No I/O:
``HubState`` builds the frames.
"""

from __future__ import annotations

import logging

from ..clock import Clock

__all__ = ["RESYNC_ATTEMPTS", "RESYNC_RETRY", "RESYNC_SPACING", "Resyncs"]

log = logging.getLogger("memsession.hub")

#: Seconds between two resync requests to one origin (its push takes a moment to arrive).
RESYNC_SPACING = 0.5
#: Seconds without the origin's push after which a request is sent again.
RESYNC_RETRY = 1.0
#: Requests sent for one gap before the hub stops asking.
RESYNC_ATTEMPTS = 5


class Resyncs:
    """Which origins to ask for a resync now, and which are owed one; counts ``resyncs_sent`` into ``counts``."""

    def __init__(self, clock: Clock, counts: dict[str, int]) -> None:
        self.clock = clock
        self.counts = counts
        self._last: dict[int, float] = {}
        self._owed: set[int] = set()
        #: Origins asked whose push has not come yet: how many requests each was sent.
        self._waiting: dict[int, int] = {}
        #: The stream position ``(epoch, seq)`` each origin's push must reach: its last gap was at or below it.
        self._needed: dict[int, tuple[int, int]] = {}

    def ask_now(self, origin: int, gap: tuple[int, int] | None = None) -> bool:
        """Whether to ask ``origin`` to resync now (counted); if not, the request is owed.

        ``gap`` is the origin's stream position when a gap showed (``(epoch,
        seq)``, what was lost lies at or below it): the push that ends the
        asking must have been taken there or later.
        """
        if gap is not None:
            needed = self._needed.get(origin)
            if needed is None or needed[0] != gap[0] or needed[1] < gap[1]:
                self._needed[origin] = gap
        now = self.clock.monotonic()
        if now - self._last.get(origin, -1e9) < RESYNC_SPACING:
            self._owed.add(origin)
            return False
        self._owed.discard(origin)
        self._last[origin] = now
        self.counts["resyncs_sent"] += 1
        asked = self._waiting.get(origin, 0)
        self._waiting[origin] = asked + 1
        if asked:
            log.info("no push from origin %x since asking it to resync; asking again", origin)
        else:
            log.info("gap in the stream of origin %x; asking it to resync", origin)
        return True

    def due(self) -> list[int]:
        """The origins to ask now: owed ones whose spacing has passed, and asked ones whose push is late."""
        if not self._owed and not self._waiting:
            return []
        now = self.clock.monotonic()
        due = [o for o in self._owed if now - self._last.get(o, -1e9) >= RESYNC_SPACING]
        for origin, asked in list(self._waiting.items()):
            if origin in self._owed or now - self._last.get(origin, -1e9) < RESYNC_RETRY:
                continue
            if asked >= RESYNC_ATTEMPTS:
                del self._waiting[origin]
                log.warning("origin %x did not push its state after %d resync requests; "
                            "its next gap asks again", origin, asked)
                continue
            due.append(origin)
        return due

    def pushed(self, origin: int, epoch: int, seq: int) -> None:
        """``origin``'s push, taken at ``seq`` of its stream ``epoch``, arrived.

        If it covers the last gap seen (or the origin restarted into another
        epoch since: its push is all of the new process) nothing is owed any
        more; if it was taken before that gap, the gap stays owed and is asked
        for once the spacing allows.
        """
        needed = self._needed.get(origin)
        if needed is not None and needed[0] == epoch and seq < needed[1]:
            self._owed.add(origin)
            return
        self._needed.pop(origin, None)
        self._waiting.pop(origin, None)
        self._owed.discard(origin)

    def forget(self, origin: int) -> None:
        """``origin`` went silent and is forgotten: nothing more is owed to it."""
        self._last.pop(origin, None)
        self._owed.discard(origin)
        self._waiting.pop(origin, None)
        self._needed.pop(origin, None)
