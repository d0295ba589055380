"""What every cache core shares: the expiry rules, their bookkeeping, and the cachetools API.

Pure: no I/O, threads or locks; time comes from the injected ``timer`` and
each operation reads it once. The facade (``SessionCache``) locks around a
core and publishes or persists what ``evict_expired`` and ``insert`` report.

An entry expires when ``now >= min(accessed + idle_timeout, created + max_age)``.
Expired entries are invisible at once (``in``, ``[]``, ``get``, iteration) and
are removed by ``expire()``, which also runs before every insert, as in
``cachetools.TTLCache``.

Subclasses choose only the eviction order (``ExpiringLRUCache``: one LRU
order; ``SegmentedLRUCache``: probation and protected). They keep every entry
in at least one of their ``orders`` (``OrderedDict``s of key to ``Node``,
least recently used first), which the idle sweep walks. Those orders are the
only place entries live: ``cachetools.Cache``'s own dict is left empty, so an
entry costs one order slot and one ``Node`` (which holds the value).

Expiry bookkeeping is amortised O(1) per operation (``memsession.sweep``):
idle-expired entries sit at the LRU end of their order, the rest are found
through deadline order and a heap. A sweep leaves behind a lower bound on the
earliest expiry of anything held (``quiet_until``); reads only push expiries
later and inserts lower the bound, so until then a sweep, and the one before
every insert, costs one comparison.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cachetools import Cache

from .cache_copy import clone, shared
from .deadlines import Node
from .expiring_views import ExpiringViews
from .sweep import EVICTED_IDLE, EVICTED_MAX_AGE, EVICTED_SIZE, Eviction, ExpirySweep
from .validate import check_number

__all__ = ["EVICTED_IDLE", "EVICTED_MAX_AGE", "EVICTED_SIZE", "Eviction", "ExpiringCache", "Node"]

_INF = float("inf")
_MISSING = object()


class ExpiringCache(ExpiringViews):
    """A cachetools cache whose entries also expire when idle and at an absolute age.

    ``maxsize`` and ``getsizeof`` as in every cachetools cache; timeouts in the
    timer's unit. Subclasses choose which entry a full cache evicts.
    """

    def __init__(
        self,
        maxsize: float,
        idle_timeout: float | None,
        max_age: float | None,
        timer: Callable[[], float],
        getsizeof: Callable[[Any], float] | None,
        *,
        orders: tuple[OrderedDict[Any, Node], ...],
        primary: tuple[OrderedDict[Any, Node], ...],
    ) -> None:
        Cache.__init__(self, maxsize, getsizeof)
        check_number("idle_timeout", idle_timeout, allow_none=True)
        check_number("max_age", max_age, allow_none=True)
        self._maxsize = maxsize
        self.__sized = self.getsizeof is not Cache.getsizeof  # as cachetools tells them apart
        self._currsize: float = 0
        self._idle_or_inf = _INF if idle_timeout is None else idle_timeout
        self._max_age = max_age
        self._timed = idle_timeout is not None or max_age is not None
        self._timer = timer
        #: Every held node is in at least one order; the idle sweep walks each from its LRU end.
        self._orders = orders
        #: Orders that hold every entry exactly once between them.
        self._primary = primary
        #: Without timeouts iteration follows first insertion, as every cachetools cache's does.
        self._inserted: dict[Any, None] | None = None if self._timed else {}
        self.__sweep = ExpirySweep(self.__held, self.held_count)
        self.__newest_access = -_INF
        #: No held entry expires before this (a lower bound, set by each sweep, lowered by inserts).
        self.__quiet_until = _INF
        self.__evicting: list[Eviction] | None = None

    # -- the eviction order: what each subclass decides -------------------------------

    @abstractmethod
    def _added(self, key: Any, node: Node) -> None:
        """A new entry: put ``node`` in an order."""

    @abstractmethod
    def _rewritten(self, key: Any, node: Node, old_size: float) -> None:
        """A held entry was written again (``node.value`` and ``node.size`` are the new ones)."""

    @abstractmethod
    def _discard(self, key: Any) -> Node:
        """Take ``key`` out of its order; its node (``KeyError`` if not held)."""

    @abstractmethod
    def _victim(self) -> Any:
        """The key a full cache evicts next; ``StopIteration`` when nothing is held."""

    def _out_of_order(self, node: Node) -> None:
        """``node`` sits in an order behind entries accessed after it: the idle heap finds it in time."""
        self.__sweep.behind(node)

    # -- reading -----------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        # Hooks and the timer are read into locals before the call: an instance attribute
        # called as ``self.x()`` takes the interpreter's slow path for methods. A conditional
        # expression, not min(): a builtin call costs more than the rest of the hit.
        hot = self._hot
        node = hot(key)
        if node is None:
            if self._cold is None:
                return self.__missing__(key)
            timer = self._timer
            value = self.lookup(key, timer() if self._timed else 0.0, _MISSING)
            return self.__missing__(key) if value is _MISSING else value
        if self._timed:
            timer = self._timer
            now = timer()
            if now >= node.expires:
                return self.__missing__(key)
            end = now + self._idle_or_inf
            deadline = node.deadline
            node.expires = end if end < deadline else deadline
            self.__newest_access = now  # read from the timer, which never goes back
        reuse = self._reuse
        reuse(key)
        return node.value

    def lookup(self, key: Any, now: float, default: Any = None) -> Any:
        """Read ``key`` at time ``now`` (counting an access); ``default`` if absent or expired.

        The facade's read path: no exception on a miss, and the caller's
        clock reading is reused.
        """
        hot = self._hot
        node = hot(key)
        cold = node is None
        if node is None:
            find_cold = self._cold
            if find_cold is None:
                return default
            node = find_cold(key)
            if node is None:
                return default
        if now >= node.expires:
            return default
        if self._timed:
            end = now + self._idle_or_inf
            deadline = node.deadline
            node.expires = end if end < deadline else deadline
            if now >= self.__newest_access:
                self.__newest_access = now
            else:  # a read at a time before the newest access seen: it lands behind later ones
                self._out_of_order(node)
                if node.expires < self.__quiet_until:
                    self.__quiet_until = node.expires
        if cold:
            self._promote(key, node)
        else:
            reuse = self._reuse
            reuse(key)
        return node.value

    # -- copies --------------------------------------------------------------

    def __copy__(self) -> ExpiringCache:
        """A copy that shares the values and the clock, nothing else (as ``cachetools.LRUCache`` since 8.0).

        Changing, reading (which reorders) or expiring entries of one never
        touches the other; each entry keeps its age and idle deadline.
        """
        memo = shared(self._timer, self.getsizeof)
        for order in self._primary:
            for node in order.values():
                memo[id(node.value)] = node.value
        return clone(self, memo)

    def __deepcopy__(self, memo: dict[int, Any]) -> ExpiringCache:
        """A copy with copied values; the clock stays shared (a copy keeps the original's time)."""
        memo.update(shared(self._timer, self.getsizeof))
        return clone(self, memo)

    # -- writing -----------------------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        self.insert(key, value)

    def insert(
        self,
        key: Any,
        value: Any,
        *,
        created: float | None = None,
        accessed: float | None = None,
        now: float | None = None,
    ) -> list[Eviction]:
        """Store ``value``; return the entries removed to make room or found expired.

        ``created`` and ``accessed`` (timer values, default now) place an
        entry that began elsewhere: it expires exactly when it would have
        there. Replacing a live entry keeps its ``created`` unless one is
        given. ``accessed`` later than now counts as now. Sizes and their
        errors as in ``cachetools.Cache``.
        """
        if now is None:
            timer = self._timer
            now = timer()
        removed = self.evict_expired(now) if self._timed and now >= self.__quiet_until else []
        hot = self._hot
        node = hot(key)
        if node is None and self._cold is not None:
            cold = self._cold
            node = cold(key)
        if node is not None and created is None and accessed is None and not self.__sized:
            # A held entry written again, here and now (a local write or touch): its size, its
            # age and its place in deadline order stay; only its value and idle expiry change.
            end = now + self._idle_or_inf
            deadline = node.deadline
            expires = node.expires = end if end < deadline else deadline
            node.value = value
            self._rewritten(key, node, 1)
            if now >= self.__newest_access:
                self.__newest_access = now
            else:
                self._out_of_order(node)
            if expires < self.__quiet_until:
                self.__quiet_until = expires
            return removed
        maxsize = self._maxsize
        if self.__sized:
            size = self.getsizeof(value)
            if size > maxsize:
                raise ValueError("value too large")
            if size < 0:
                raise ValueError("value size must be non-negative")
        elif maxsize < 1:
            raise ValueError("value too large")
        else:
            size = 1
        grows = size - node.size if node is not None else size
        if self._currsize + grows > maxsize:
            self.__evicting = removed
            try:
                while self._currsize + grows > maxsize:
                    self.popitem()
                    if node is not None and self._find(key) is not node:
                        node, grows = None, size  # evicted itself while making room
            finally:
                self.__evicting = None
        if accessed is None or accessed > now:
            accessed = now
        max_age = self._max_age
        if max_age is None:
            deadline = _INF
        elif created is None and node is not None:
            deadline = node.deadline  # a replaced entry keeps its age
        else:
            deadline = (accessed if created is None or created > accessed else created) + max_age
        end = accessed + self._idle_or_inf
        expires = end if end < deadline else deadline
        if node is None:
            node = Node(key, value, deadline, expires)
            node.size = size
            self._added(key, node)
            if self._inserted is not None:
                self._inserted[key] = None
            if deadline != _INF:
                self.__sweep.link(node)
        else:
            old_size = node.size
            node.value = value
            node.size = size
            if node.deadline != deadline:
                ExpirySweep.unlink(node)
                node.deadline = deadline
                self.__sweep.link(node)
            node.expires = expires
            self._rewritten(key, node, old_size)
        self._currsize += grows
        if accessed >= self.__newest_access:
            self.__newest_access = accessed
        else:
            # Older than entries already at the MRU end: the idle sweep from the
            # LRU end can't be relied on to reach it in time.
            self._out_of_order(node)
        if expires < self.__quiet_until:
            self.__quiet_until = expires
        return removed

    def __delitem__(self, key: Any) -> None:
        self.__forget(self._discard(key))

    def __forget(self, node: Node) -> None:
        """``node`` has left its order: drop what else knows of it."""
        ExpirySweep.unlink(node)
        self._currsize -= node.size
        if self._inserted is not None:
            del self._inserted[node.key]

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its live value (or ``default``)."""
        node = self._find(key)
        if node is not None:
            del self[key]  # expired: gone either way
            if not self._timed or self._timer() < node.expires:
                return node.value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the ``(key, value)`` pair the eviction order gives up first."""
        try:
            key = self._victim()
        except StopIteration:
            raise KeyError(f"{type(self).__name__} is empty") from None
        node = self._discard(key)
        self.__forget(node)
        if self.__evicting is not None:
            self.__evicting.append(Eviction(key, node.value, EVICTED_SIZE))
        return (key, node.value)

    def clear(self) -> None:
        for order in self._orders:
            order.clear()
        if self._inserted is not None:
            self._inserted.clear()
        self._currsize = 0
        self.__sweep.clear()
        self.__quiet_until = _INF

    # -- expiry ------------------------------------------------------------

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        return [(e.key, e.value) for e in self.evict_expired(time)]

    def evict_expired(self, now: float | None = None) -> list[Eviction]:
        """Remove expired entries; return them with the cause of each."""
        if not self._timed:
            return []
        if now is None:
            now = self._timer()
        if now < self.__quiet_until:
            return []
        out = self.__sweep.run(now, self._orders, self.__drop)
        self.__quiet_until = self.__sweep.earliest(self._orders)
        return out

    def __drop(self, node: Node, now: float) -> Eviction:
        key = node.key
        self._discard(key)
        self.__forget(node)
        return Eviction(key, node.value, EVICTED_MAX_AGE if node.deadline <= now else EVICTED_IDLE)

    def __held(self, node: Node) -> bool:
        return self._find(node.key) is node
