"""Per-origin sequence tracking: the pure logic that turns lost messages into detected gaps.

Every publisher numbers its data messages 1, 2, 3... within an ``(origin,
epoch)`` stream. Epochs are taken from the wall clock at start, which can step
back or repeat, so a tracker does not trust their order: a new epoch of a known
origin is a restart, and the epoch it replaced is remembered so that its
stragglers are duplicates, not another restart (for ``hold`` seconds: one
still heard after that was never replaced, see ``_straggles``). A tracker
remembers the last number seen per origin and classifies each new one. It never touches a socket
or a clock (the caller reports when each origin was heard), so hypothesis
drives it directly.

A number more than ``max_jump`` past the last one of its stream is a JUMP, not
the new normal: anyone who can put one frame on the bus could otherwise claim
``2**64 - 1`` for a stream and have every later message of its publisher
taken as a duplicate. A jump is kept out and repaired like a gap; it is only
believed once it has stood for ``hold`` seconds with no frame of that stream
within the bound contradicting it. A live publisher contradicts a false claim
with its next heartbeat (it carries the stream's real last number), so one
forged frame, or a burst of them, costs a repair and never silences it; after
a real loss of more than ``max_jump`` numbers the stream is taken up again
once ``hold`` has passed (a subscriber's repair snapshot usually settles it
sooner).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

__all__ = ["DEFAULT_JUMP_HOLD", "DEFAULT_MAX_JUMP", "DUP", "GAP", "JUMP", "NEW", "OK", "SequenceTracker"]

T = TypeVar("T")

#: Replaced epochs remembered per origin: more restarts than this while the earliest one's
#: stragglers are still in flight is not plausible.
REPLACED_KEPT = 4

#: The next number in a known stream.
OK = "ok"
#: Already seen (or covered by a snapshot): skip it.
DUP = "dup"
#: Numbers were skipped: something was lost; repair before trusting the data.
GAP = "gap"
#: First message of a stream this tracker had no baseline for, starting at 1.
NEW = "new"
#: Further past the last number than ``max_jump``, and not yet believed: keep it out and repair.
JUMP = "jump"

#: How far past the last number of its stream a message may be and still be taken as a gap.
#: Only lost numbers make a stream jump; a receiver that lost more than this repairs anyway.
DEFAULT_MAX_JUMP = 10_000
#: Seconds a jump must stand uncontradicted before it is believed; more than any publisher's heartbeat.
DEFAULT_JUMP_HOLD = 5.0


class SequenceTracker:
    """Last sequence number seen per origin, with the epoch it belongs to.

    ``strict`` decides what a first sighting that does not start at 1 means:
    a gap for a subscriber that joined through a snapshot (the snapshot should
    have covered that stream, so earlier messages were lost), a fresh baseline
    for the hub right after it started (it cannot know what came before).

    ``max_jump`` and ``hold`` bound how far a known stream may jump (see the
    module docstring). The hold is measured on the times given to ``heard``,
    which the caller reports for each frame before classifying it. A first
    sighting has no baseline to bound: it is taken as it comes.
    """

    __slots__ = ("_claims", "_heard", "_last", "_replaced", "hold", "max_jump", "strict")

    def __init__(
        self, *, strict: bool = True, max_jump: int = DEFAULT_MAX_JUMP, hold: float = DEFAULT_JUMP_HOLD
    ) -> None:
        self._last: dict[int, tuple[int, int]] = {}
        #: Streams whose frames jump past the bound: ``{origin: (epoch, when the first one was heard)}``.
        self._claims: dict[int, tuple[int, float]] = {}
        #: Epochs each origin has restarted away from, with when: what still arrives in them is a
        #: straggler, for ``hold`` seconds (see ``_straggles``).
        self._replaced: dict[int, tuple[tuple[int, float], ...]] = {}
        #: When each origin was last heard (the caller's monotonic time), for ``forget_silent``.
        self._heard: dict[int, float] = {}
        self.strict = strict
        self.max_jump = max_jump
        self.hold = hold

    def observe(self, origin: int, epoch: int, seq: int) -> str:
        """Classify data message ``seq`` of ``(origin, epoch)`` and record it."""
        known = self._last.get(origin)
        if known is None or known[0] != epoch:
            if self._straggles(origin, epoch):
                return DUP  # a straggler of a stream the origin has since restarted
            self._start(origin, epoch, seq, known)
            if seq == 1:
                return NEW
            return GAP if self.strict or known is not None else NEW
        last = known[1]
        # (the call is skipped on the hot path: no claim pending and the number within the bound)
        if (self._claims or seq - last > self.max_jump) and self._jumps(origin, epoch, last, seq):
            return JUMP
        if seq == last + 1:
            self._last[origin] = (epoch, seq)
            return OK
        if seq <= last:
            return DUP
        self._last[origin] = (epoch, seq)
        return GAP

    def accept(self, origin: int, epoch: int, first: int, items: Sequence[T]) -> tuple[list[T], int, bool]:
        """The items of a message numbered ``first, first + 1, ...`` that are not duplicates.

        Returns ``(fresh items in order, the number of the last one that
        followed a gap, or 0, True if the whole message was kept out as a
        JUMP)``: a BATCH is a run of numbered messages, and the hub and every
        subscriber walk it the same way. The bound applies to the message, not
        to each item, so a forged BATCH is one claim, however long.
        """
        known = self._last.get(origin)
        believed_jump = False
        if known is not None and known[0] == epoch and first - known[1] > self.max_jump:
            if self._jumps(origin, epoch, known[1], first):
                return [], 0, True
            self._last[origin] = (epoch, first - 1)  # the jump stood its hold: take the stream up from here
            believed_jump = True
        observe = self.observe
        fresh: list[T] = []
        gap_at = 0
        for i, item in enumerate(items):
            verdict = observe(origin, epoch, first + i)
            if verdict == DUP:
                continue
            if verdict == GAP:
                gap_at = first + i
            fresh.append(item)
        return fresh, gap_at or (first if believed_jump else 0), False

    def heartbeat(self, origin: int, epoch: int, seq: int) -> str:
        """A heartbeat says the stream's last data seq is ``seq``: GAP if we saw less."""
        known = self._last.get(origin)
        if known is None or known[0] != epoch:
            if self._straggles(origin, epoch):
                return DUP
            self._start(origin, epoch, seq, known)
            if seq == 0:
                return NEW
            return GAP if self.strict or known is not None else NEW
        if (self._claims or seq - known[1] > self.max_jump) and self._jumps(origin, epoch, known[1], seq):
            return JUMP
        if seq > known[1]:
            self._last[origin] = (epoch, seq)
            return GAP
        return OK

    def _jumps(self, origin: int, epoch: int, last: int, seq: int) -> bool:
        """True if ``seq`` of a known stream is too far past ``last`` to be believed yet (a JUMP).

        A frame within the bound contradicts any claim of a jump in that
        stream; one past it is believed only once such frames have kept
        coming for ``hold`` seconds with none within the bound in between.
        """
        claims = self._claims
        if seq - last <= self.max_jump:
            if claims:
                claims.pop(origin, None)
            return False
        now = self._heard.get(origin, 0.0)
        claim = claims.get(origin)
        if claim is None or claim[0] != epoch:
            claims[origin] = (epoch, now)
        elif now - claim[1] >= self.hold:
            del claims[origin]
            return False
        return True

    def _stale(self, origin: int, epoch: int) -> bool:
        return any(old == epoch for old, _ in self._replaced.get(origin, ()))

    def _straggles(self, origin: int, epoch: int) -> bool:
        """True for a frame of an epoch ``origin`` restarted away from less than ``hold`` ago.

        A process that restarted is gone, and what it sent before arrives right
        behind. An epoch still heard after the hold is alive: two processes
        never share an origin, so the restart was a false claim (one forged
        frame with a new epoch). It is taken back as the origin's stream, as a
        restart, and repaired; the false epoch is a straggler from then on.
        """
        replaced = self._replaced.get(origin, ())
        for old, at in replaced:
            if old == epoch:
                if self._heard.get(origin, 0.0) - at < self.hold:
                    return True
                self._replaced[origin] = tuple(r for r in replaced if r[0] != epoch)
                return False
        return False

    def _start(self, origin: int, epoch: int, seq: int, known: tuple[int, int] | None) -> None:
        """``origin`` restarted (or is new): its stream is ``epoch`` from ``seq`` on, the old one replaced."""
        if known is not None:
            now = self._heard.get(origin, 0.0)
            self._replaced[origin] = (*self._replaced.get(origin, ())[1 - REPLACED_KEPT:], (known[0], now))
        self._last[origin] = (epoch, seq)
        self._claims.pop(origin, None)

    def covered(self, origin: int, epoch: int, seq: int) -> bool:
        """True if message ``seq`` is at or below what we already hold for that stream."""
        known = self._last.get(origin)
        return known is not None and known[0] == epoch and seq <= known[1]

    def pushed(self, origin: int, epoch: int, seq: int) -> None:
        """A push of ``origin``'s state taken at ``seq`` of its stream ``epoch`` arrived: it holds those changes.

        A stream known in that epoch moves up to ``seq`` (what the push covers
        is no gap, and comes again as duplicates), within ``max_jump`` as a
        frame would; an unknown one, or a new epoch (the origin restarted),
        is taken up from ``seq``, so a change numbered after it and lost on the
        way shows as a gap at the stream's next number or heartbeat. An
        epoch seen replaced is ignored.
        """
        if self._stale(origin, epoch):
            return
        known = self._last.get(origin)
        if known is None or known[0] != epoch:
            self._start(origin, epoch, seq, known)
        elif known[1] < seq <= known[1] + self.max_jump:
            self._last[origin] = (epoch, seq)

    def splice(self, vector: Mapping[int, tuple[int, int]]) -> None:
        """Adopt a snapshot's vector: afterwards everything it covers counts as seen.

        For a stream known in the same epoch the higher number stays (messages
        we applied after the hub cut the snapshot are not forgotten); an epoch
        we saw replaced is ignored. Of two other epochs the larger is taken as
        the newer: if the wall clock misled that guess, the stream's next
        message is a restart seen mid-way, a gap, and the repair settles it.
        The hub bounds jumps as we do, so its vector is taken however far
        ahead it is: that is how a receiver that lost many messages catches up.
        """
        last = self._last
        for origin, (epoch, seq) in vector.items():
            if self._stale(origin, epoch):
                continue
            known = last.get(origin)
            if known is None or epoch > known[0] or (epoch == known[0] and seq > known[1]):
                last[origin] = (epoch, seq)
                self._claims.pop(origin, None)

    def forget(self, origins: Iterable[int]) -> None:
        for origin in origins:
            self._last.pop(origin, None)
            self._heard.pop(origin, None)
            self._replaced.pop(origin, None)
            self._claims.pop(origin, None)

    def heard(self, origin: int, now: float) -> None:
        """``origin`` sent something at ``now`` (any message, heartbeats included)."""
        self._heard[origin] = now

    def forget_silent(self, now: float, after: float) -> list[int]:
        """Forget the streams not heard for ``after`` seconds (publishers that stopped); return them.

        What they wrote stays merged; only the bookkeeping goes, so memory and
        snapshot vectors follow the live publishers, not every one that ever
        lived. One that comes back starts a stream seen mid-way: a gap, repaired.
        """
        cutoff = now - after
        gone = [origin for origin, at in self._heard.items() if at < cutoff]
        self.forget(gone)
        return gone

    def last(self, origin: int) -> tuple[int, int] | None:
        """``(epoch, last_seq)`` of ``origin``'s stream, or None if it is not known."""
        return self._last.get(origin)

    def vector(self) -> dict[int, tuple[int, int]]:
        """``{origin: (epoch, last_seq)}``, a copy."""
        return dict(self._last)

    def __len__(self) -> int:
        return len(self._last)
