"""The expiry sweep of a cache core: what it walks besides the eviction orders, and how far it has to look.

A core (``memsession.expiring``) keeps every entry in at least one order
(``OrderedDict``, least recently used first). Idle-expired entries sit at the
LRU end of their order, so the sweep walks each order from there and stops
at the first live entry. What that walk can't find is kept here:

* max age: entries with a finite deadline, in deadline order
  (``memsession.deadlines``: a ring, plus a heap for far-back arrivals);
* an entry placed in an order behind entries accessed after it (it arrived
  with an older ``accessed``, or was moved between orders) goes on the late
  idle heap until it is next touched.

Heap entries are checked against the live entry when popped, and the heaps
are rebuilt when stale entries outnumber live ones (amortised O(1)).

``earliest`` gives, after a sweep, a lower bound on the next expiry of
anything held: within an order, the entries the walk relies on expire no
earlier than its LRU end unless their deadline is sooner (the deadline order
has those), and every other entry is on a heap, whose top may be stale but
never late. Pure: no clock of its own, no I/O.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from .deadlines import DeadlineOrder, Node

__all__ = ["EVICTED_IDLE", "EVICTED_MAX_AGE", "EVICTED_SIZE", "Eviction", "ExpirySweep"]

EVICTED_IDLE = "idle"
EVICTED_MAX_AGE = "max_age"
EVICTED_SIZE = "size"


class Eviction(NamedTuple):
    """One entry a cache core removed on its own, and why (``idle``, ``max_age``, ``size``)."""

    key: Any
    value: Any
    cause: str

#: What the core's ``drop`` makes of each node the sweep removes (its ``Eviction``).
Dropped = TypeVar("Dropped")


class ExpirySweep:
    """The deadline order and late idle heap of one cache core.

    ``held(node)`` tells whether ``node`` is still the live entry of its key;
    ``count()`` how many entries are held (heaps are compacted beyond twice that).
    """

    def __init__(self, held: Callable[[Node], bool], count: Callable[[], int]) -> None:
        self.deadlines = DeadlineOrder()
        #: ``(expires when pushed, tiebreak, node)``, earliest first.
        self.late_idle: list[tuple[float, int, Node]] = []
        self._tiebreak = 0
        self._held = held
        self._count = count

    def link(self, node: Node) -> None:
        """Put ``node`` (a finite deadline) in deadline order."""
        if self.deadlines.link(node):
            self._compact()

    unlink = staticmethod(DeadlineOrder.unlink)

    def behind(self, node: Node) -> None:
        """``node`` sits in an order behind entries accessed after it: the late idle heap finds it in time."""
        if node.expires < node.deadline:  # else the deadline order finds it
            self._tiebreak += 1
            heapq.heappush(self.late_idle, (node.expires, self._tiebreak, node))
            self._compact()

    def run(
        self, now: float, orders: Iterable[OrderedDict[Any, Node]], drop: Callable[[Node, float], Dropped]
    ) -> list[Dropped]:
        """``drop(node, now)`` every node expired at ``now``; what the drops returned.

        ``drop`` must take the node out of its orders and out of deadline order.
        """
        out: list[Dropped] = []
        # idle: least recently used first; stop at the first live entry
        for order in orders:
            while order:
                node = order[next(iter(order))]
                if now < node.expires:
                    break
                out.append(drop(node, now))
        deadlines, held = self.deadlines, self._held
        while (due := deadlines.first_due(now, held)) is not None:
            out.append(drop(due, now))
        late_idle = self.late_idle
        while late_idle and late_idle[0][0] <= now:
            node = heapq.heappop(late_idle)[2]
            if held(node) and node.expires <= now:
                out.append(drop(node, now))
        return out

    def earliest(self, orders: Iterable[OrderedDict[Any, Node]]) -> float:
        """A lower bound on the next expiry of anything held (after a sweep, later than its ``now``)."""
        soonest = self.deadlines.earliest()
        if self.late_idle:
            soonest = min(soonest, self.late_idle[0][0])
        for order in orders:
            if order:
                soonest = min(soonest, order[next(iter(order))].expires)
        return soonest

    def clear(self) -> None:
        self.deadlines.clear()
        self.late_idle.clear()

    def _compact(self) -> None:
        """Drop stale heap entries once they outnumber live entries."""
        limit = 2 * self._count() + 1024
        held = self._held
        self.deadlines.compact(limit, held)
        if len(self.late_idle) > limit:
            self.late_idle = [e for e in self.late_idle if held(e[2]) and e[2].expires == e[0]]
            heapq.heapify(self.late_idle)
