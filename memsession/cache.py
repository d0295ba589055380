"""The cache core: LRU by ``maxsize``, sliding idle timeout, absolute max age.

Pure: no I/O, threads or locks; time comes from the injected ``timer`` and
each operation reads it once. The expiry rules and their amortised O(1)
bookkeeping live in ``memsession.expiring`` (shared with
``SegmentedLRUCache``); this class adds the one LRU order. With neither
timeout set it behaves exactly like ``cachetools.LRUCache``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .expiring import EVICTED_IDLE, EVICTED_MAX_AGE, EVICTED_SIZE, Eviction, ExpiringCache, Node

__all__ = ["EVICTED_IDLE", "EVICTED_MAX_AGE", "EVICTED_SIZE", "Eviction", "ExpiringLRUCache"]


class ExpiringLRUCache(ExpiringCache):
    """LRU cache whose entries also expire when idle and at an absolute age.

    ``ExpiringLRUCache(maxsize, idle_timeout=None, max_age=None,
    timer=time.monotonic, getsizeof=None)``: ``maxsize`` and ``getsizeof`` as
    in every cachetools cache; timeouts in the timer's unit. A full cache
    evicts the least recently used entry (read or written).
    """

    def __init__(
        self,
        maxsize: float,
        idle_timeout: float | None = None,
        max_age: float | None = None,
        timer: Callable[[], float] = time.monotonic,
        getsizeof: Callable[[Any], float] | None = None,
    ) -> None:
        order: OrderedDict[Any, Node] = OrderedDict()  # least recently used first
        super().__init__(maxsize, idle_timeout, max_age, timer, getsizeof, orders=(order,), primary=(order,))
        self.__order = order
        # The read path calls these bound C methods directly.
        self._hot = self._find = order.get
        self._reuse = order.move_to_end
        self._cold = None

    def _added(self, key: Any, node: Node) -> None:
        self.__order[key] = node

    def _rewritten(self, key: Any, node: Node, old_size: float) -> None:
        self.__order.move_to_end(key)

    def _discard(self, key: Any) -> Node:
        return self.__order.pop(key)

    def _victim(self) -> Any:
        return next(iter(self.__order))
