"""A cache core's entries in max-age deadline order, so the expiry sweep finds the due ones in amortised O(1).

Local inserts arrive in deadline order and are appended to a ring. An entry
arriving from elsewhere with an older ``created`` is slotted in by a short
walk back from the newest end or, past ``WALK_LIMIT`` steps, kept in a heap.
Heap entries may go stale (the entry was removed, or given a new deadline):
they are checked when popped, and dropped by a rebuild once they outnumber
live entries.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["WALK_LIMIT", "DeadlineOrder", "Node"]

_INF = float("inf")
#: How far back an out-of-order deadline is walked into place before it goes to the heap.
WALK_LIMIT = 16


class Node:
    """One cache entry: its value and timing; ``prev``/``next`` link it in deadline order."""

    __slots__ = ("deadline", "expires", "key", "next", "prev", "size", "value")

    def __init__(self, key: Any, value: Any, deadline: float, expires: float) -> None:
        self.key = key
        self.value = value  # also in the Cache mapping; kept here so a read is one lookup
        self.deadline = deadline  # created + max_age
        self.expires = expires  # min(accessed + idle_timeout, deadline)
        self.size: float = 0  # what an eviction policy counted it as (``getsizeof``), if it counts
        self.prev: Node | None = None
        self.next: Node | None = None


class DeadlineOrder:
    """The entries with a finite deadline, earliest first: a ring, plus a heap for far-back arrivals."""

    def __init__(self) -> None:
        root = Node(None, None, _INF, _INF)
        root.prev = root.next = root
        self._root = root
        self._late: list[tuple[float, int, Node]] = []
        self._tiebreak = 0

    def link(self, node: Node) -> bool:
        """Put ``node`` in place; True if it went to the heap (the caller may then ``compact``)."""
        root = self._root
        after = root.prev
        steps = 0
        while after is not None and after is not root and after.deadline > node.deadline:
            steps += 1
            if steps > WALK_LIMIT:
                node.prev = node.next = None
                self._tiebreak += 1
                heapq.heappush(self._late, (node.deadline, self._tiebreak, node))
                return True
            after = after.prev
        assert after is not None and after.next is not None  # the ring is closed
        node.prev = after
        node.next = after.next
        after.next.prev = node
        after.next = node
        return False

    @staticmethod
    def unlink(node: Node) -> None:
        """Take ``node`` out of the ring (a heap entry of it goes stale)."""
        prev, nxt = node.prev, node.next
        if prev is not None and nxt is not None:
            prev.next = nxt
            nxt.prev = prev
            node.prev = node.next = None

    def first_due(self, now: float, held: Callable[[Node], bool]) -> Node | None:
        """A held node whose deadline has come (the ring's first, then the heap's), or None.

        Called until it returns None, removing (``unlink``) each node it gives.
        """
        root = self._root
        head = root.next
        if head is not None and head is not root and head.deadline <= now:
            return head
        late = self._late
        while late and late[0][0] <= now:
            node = heapq.heappop(late)[2]
            if held(node) and node.deadline <= now:
                return node
        return None

    def earliest(self) -> float:
        """No node here is due before this (``inf`` if none); a heap entry gone stale may make it early."""
        head = self._root.next
        soonest = head.deadline if head is not None else _INF  # the root's own is inf
        if self._late and self._late[0][0] < soonest:
            soonest = self._late[0][0]
        return soonest

    def compact(self, limit: int, held: Callable[[Node], bool]) -> None:
        """Drop stale heap entries once there are more than ``limit``."""
        if len(self._late) > limit:
            self._late = [e for e in self._late if held(e[2]) and e[2].prev is None and e[0] == e[2].deadline]
            heapq.heapify(self._late)

    def clear(self) -> None:
        root = self._root
        root.prev = root.next = root
        self._late.clear()
