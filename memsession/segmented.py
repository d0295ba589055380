"""The segmented-LRU cache core: an entry used once can't push out entries that keep being used.

Plain LRU lets any new entry push out the least recently used one, however
often that one was used before: 1,000 visitors without a cookie, each
writing once, push every logged-in user out of a 200-session cache. Here
entries live in two segments, each an LRU order:

* **probation**: where a new entry starts;
* **protected**: where an entry goes on its second use (a read hit, or a
  write to a key already held: a local one, or a change arriving from
  elsewhere, since a replicated touch means its user came back on another
  worker). A use of a protected entry moves it to protected's most recent end.

Protected holds at most ``protected_fraction * maxsize`` (in ``getsizeof``
units, 1 per entry by default; a share of 0 holds nothing); past that its
least recently used entry is demoted to probation's most recent end, where it
has to earn its place again. A full cache evicts probation's least recently
used entry, and a protected one only when probation is empty. So a flood of
new entries churns through probation while up to ``protected_fraction`` of
the cache stays with entries used more than once. ``protected_fraction=0`` is
plain LRU.

Expiry is exactly ``ExpiringLRUCache``'s (``memsession.expiring``): idle
timeout, max age, ``evict_expired``, ``insert(created=, accessed=)``. Pure:
no I/O, threads or locks; time from the injected ``timer``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .expiring import ExpiringCache, Node
from .validate import check_fraction

__all__ = ["DEFAULT_PROTECTED_FRACTION", "SegmentedLRUCache"]

#: Share of ``maxsize`` kept for entries used more than once, unless told otherwise.
DEFAULT_PROTECTED_FRACTION = 0.8


class SegmentedLRUCache(ExpiringCache):
    """Segmented-LRU cache (probation + protected) whose entries also expire when idle and at an absolute age.

    ``SegmentedLRUCache(maxsize, idle_timeout=None, max_age=None,
    timer=time.monotonic, getsizeof=None, protected_fraction=0.8)``: as
    ``ExpiringLRUCache``, plus the share of ``maxsize`` (``0 <= f < 1``) that
    entries used at least twice may hold.
    """

    def __init__(
        self,
        maxsize: float,
        idle_timeout: float | None = None,
        max_age: float | None = None,
        timer: Callable[[], float] = time.monotonic,
        getsizeof: Callable[[Any], float] | None = None,
        protected_fraction: float = DEFAULT_PROTECTED_FRACTION,
    ) -> None:
        probation: OrderedDict[Any, Node] = OrderedDict()  # least recently used first
        protected: OrderedDict[Any, Node] = OrderedDict()
        # The demoted entries still in probation, in the order they were demoted. Demotion
        # takes protected's least recently used, so they come in access order, though behind
        # newer entries in probation: the idle sweep walks this order to find them in time.
        demoted: OrderedDict[Any, Node] = OrderedDict()
        orders = (probation, protected, demoted)
        super().__init__(maxsize, idle_timeout, max_age, timer, getsizeof, orders=orders,
                         primary=(probation, protected))
        check_fraction("protected_fraction", protected_fraction)
        self.__probation = probation
        self.__protected = protected
        self.__demoted = demoted
        self.__track_demoted = idle_timeout is not None  # only the idle sweep needs them
        self.__fraction = protected_fraction
        self.__limit = protected_fraction * maxsize
        self.__protected_size: float = 0
        # The read path: protected first, that is where most hits land; bound C methods.
        self._hot = protected.get
        self._reuse = protected.move_to_end
        self._cold = probation.get

    # -- the segments ------------------------------------------------------------------------

    def _find(self, key: Any) -> Node | None:
        # Nodes are always truthy.
        return self.__protected.get(key) or self.__probation.get(key)

    def _promote(self, key: Any, node: Node) -> None:
        """``key`` (``node``) leaves probation on its second use."""
        del self.__probation[key]
        if self.__demoted:
            self.__demoted.pop(key, None)
        self.__protected[key] = node
        self.__protected_size += node.size
        if self.__protected_size > self.__limit or not self.__limit:
            self.__demote_overflow(node)

    def __demote_overflow(self, used: Node) -> None:
        """While protected is over its share, its least recently used goes to probation's most recent end."""
        protected, probation = self.__protected, self.__probation
        limit = self.__limit
        # A share of 0 holds nothing, not even entries ``getsizeof`` counts as 0: that is plain LRU.
        while protected and (self.__protected_size > limit or not limit):
            key, node = protected.popitem(last=False)
            self.__protected_size -= node.size
            probation[key] = node
            if node is not used and self.__track_demoted:  # ``used`` was accessed just now: in order
                self.__demoted[key] = node

    def _added(self, key: Any, node: Node) -> None:
        self.__probation[key] = node

    def _rewritten(self, key: Any, node: Node, old_size: float) -> None:
        protected = self.__protected
        if key in protected:
            self.__protected_size += node.size - old_size
            protected.move_to_end(key)
            if self.__protected_size > self.__limit or not self.__limit:
                self.__demote_overflow(node)
        else:
            self._promote(key, node)

    def _discard(self, key: Any) -> Node:
        node = self.__protected.pop(key, None)
        if node is None:
            if self.__demoted:
                self.__demoted.pop(key, None)
            return self.__probation.pop(key)
        self.__protected_size -= node.size
        return node

    def _victim(self) -> Any:
        return next(iter(self.__probation or self.__protected))

    def clear(self) -> None:
        super().clear()
        self.__protected_size = 0

    # -- properties ------------------------------------------------------------------------

    @property
    def protected_fraction(self) -> float:
        """Share of ``maxsize`` that entries used at least twice may hold."""
        return self.__fraction

    @property
    def protected_size(self) -> float:
        """How much of ``maxsize`` protected holds now (``getsizeof`` units; expired entries included)."""
        return self.__protected_size
