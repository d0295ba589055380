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
in at least one of their ``orders`` (``OrderedDict``s, least recently used
first), which the idle sweep walks.

Expiry bookkeeping is amortised O(1) per operation:

* idle: each order is kept in access order, so idle-expired entries sit at
  its LRU end and a sweep stops at the first live one;
* max age: entries are kept in deadline order (``memsession.deadlines``);
  local inserts append, entries arriving from elsewhere with an older
  ``created`` are slotted in by a short walk back, or, past that, kept in a heap;
* an entry placed behind the newest access (it arrived with an older
  ``accessed``, or a subclass moved it between orders) sits where the idle
  sweep can't see it, so a heap keeps it until it is next touched.

Heap entries are checked against the live entry when popped, and the heaps
are rebuilt when stale entries outnumber live ones (amortised O(1)).
"""

from __future__ import annotations

import heapq
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from cachetools import Cache

from .deadlines import DeadlineOrder, Node
from .validate import check_number

__all__ = ["EVICTED_IDLE", "EVICTED_MAX_AGE", "EVICTED_SIZE", "Eviction", "ExpiringCache", "Node"]

EVICTED_IDLE = "idle"
EVICTED_MAX_AGE = "max_age"
EVICTED_SIZE = "size"

_INF = float("inf")
_MISSING = object()


class Eviction(NamedTuple):
    """One entry the cache removed on its own, and why (``idle``, ``max_age``, ``size``)."""

    key: Any
    value: Any
    cause: str


class ExpiringCache(Cache):
    """A cachetools cache whose entries also expire when idle and at an absolute age.

    ``maxsize`` and ``getsizeof`` as in every cachetools cache; timeouts in the
    timer's unit. Subclasses choose which entry a full cache evicts.
    """

    #: The node for a key, or None. Set by each subclass; on the read path: a bound C method if it can be.
    _find: Callable[[Any], Node | None]
    #: A read hit on a held key: what it does to the eviction order. Set by each subclass, like ``_find``.
    _used: Callable[[Any], None]

    def __init__(
        self,
        maxsize: float,
        idle_timeout: float | None,
        max_age: float | None,
        timer: Callable[[], float],
        getsizeof: Callable[[Any], float] | None,
        *,
        orders: tuple[OrderedDict[Any, Node], ...],
    ) -> None:
        Cache.__init__(self, maxsize, getsizeof)
        check_number("idle_timeout", idle_timeout, allow_none=True)
        check_number("max_age", max_age, allow_none=True)
        self.__idle = idle_timeout
        self.__idle_or_inf = _INF if idle_timeout is None else float(idle_timeout)
        self.__max_age = max_age
        self.__timed = idle_timeout is not None or max_age is not None
        self.__timer = timer
        # None when nothing expires: reads then never consult the clock, as in LRUCache
        self.__read_timer = timer if self.__timed else None
        #: Every held node is in at least one order; the idle sweep walks each from its LRU end.
        self._orders = orders
        self.__deadlines = DeadlineOrder()
        self.__is_held = self.__held  # bound once: every sweep passes it
        self.__late_idle: list[tuple[float, int, Node]] = []  # (expires when pushed, tiebreak, node)
        self.__newest_access = -_INF
        self.__tiebreak = 0
        self.__evicting: list[Eviction] | None = None

    # -- the eviction order: what each subclass decides -------------------------------

    @abstractmethod
    def _added(self, key: Any, node: Node) -> None:
        """A new entry: put ``node`` in an order."""

    @abstractmethod
    def _rewritten(self, key: Any, node: Node) -> None:
        """A held entry was written again (``node.value`` is the new value)."""

    @abstractmethod
    def _discard(self, key: Any) -> Node:
        """Take ``key`` out of its order; its node."""

    @abstractmethod
    def _victim(self) -> Any:
        """The key a full cache evicts next; ``StopIteration`` when nothing is held."""

    def _out_of_order(self, node: Node) -> None:
        """``node`` sits in an order behind entries accessed after it: the idle heap finds it in time."""
        if node.expires < node.deadline:  # else the deadline order finds it
            self.__tiebreak += 1
            heapq.heappush(self.__late_idle, (node.expires, self.__tiebreak, node))
            self.__compact()

    # -- reading -----------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        node = self._find(key)
        if node is None:
            return self.__missing__(key)
        timer = self.__read_timer
        if timer is not None:
            now = timer()
            if now >= node.expires:
                return self.__missing__(key)
            end = now + self.__idle_or_inf
            node.expires = min(node.deadline, end)
            self.__newest_access = now
        self._used(key)
        return node.value

    def lookup(self, key: Any, now: float, default: Any = None) -> Any:
        """Read ``key`` at time ``now`` (counting an access); ``default`` if absent or expired.

        The facade's read path: no exception on a miss, and the caller's
        clock reading is reused.
        """
        node = self._find(key)
        if node is None or now >= node.expires:
            return default
        if self.__timed:
            end = now + self.__idle_or_inf
            node.expires = min(node.deadline, end)
            self.__newest_access = max(self.__newest_access, now)
        self._used(key)
        return node.value

    def __contains__(self, key: object) -> bool:
        node = self._find(key)
        if node is None:
            return False
        return not self.__timed or self.__timer() < node.expires

    def __iter__(self) -> Iterator[Any]:
        if not self.__timed:
            yield from Cache.__iter__(self)
            return
        find = self._find
        for key in list(Cache.__iter__(self)):
            node = find(key)
            if node is not None and self.__timer() < node.expires:
                yield key

    def __len__(self) -> int:
        if self.__timed:
            self.expire()
        return Cache.__len__(self)

    def __repr__(self) -> str:
        if self.__timed:
            self.expire()
        return Cache.__repr__(self)

    @property
    def currsize(self) -> float:
        if self.__timed:
            self.expire()
        return Cache.currsize.fget(self)  # type: ignore[attr-defined]

    def peek(self, key: Any, default: Any = None) -> Any:
        """The live value for ``key`` without counting it as an access."""
        node = self._find(key)
        if node is None or (self.__timed and self.__timer() >= node.expires):
            return default
        return node.value

    def expires_at(self, key: Any) -> float | None:
        """Timer value at which ``key`` expires (``inf`` if never), or None if absent."""
        node = self._find(key)
        return None if node is None else node.expires

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
        given. ``accessed`` later than now counts as now.
        """
        if now is None:
            now = self.__timer()
        removed = self.evict_expired(now) if self.__timed else []
        node = self._find(key)
        self.__evicting = removed
        try:
            Cache.__setitem__(self, key, value)
        finally:
            self.__evicting = None
        if node is not None and self._find(key) is not node:
            node = None  # evicted by the size check while making room
        if accessed is None or accessed > now:
            accessed = now
        max_age = self.__max_age
        if max_age is None:
            deadline = _INF
        elif created is None and node is not None:
            deadline = node.deadline  # a replaced entry keeps its age
        else:
            deadline = (accessed if created is None or created > accessed else created) + max_age
        idle_end = accessed + self.__idle_or_inf
        expires = min(deadline, idle_end)
        if node is None:
            node = Node(key, value, deadline, expires)
            self._added(key, node)
            if deadline != _INF:
                self.__link(node)
        else:
            node.value = value
            if node.deadline != deadline:
                DeadlineOrder.unlink(node)
                node.deadline = deadline
                self.__link(node)
            node.expires = expires
            self._rewritten(key, node)
        if accessed >= self.__newest_access:
            self.__newest_access = accessed
        else:
            # Older than entries already at the MRU end: the idle sweep from the
            # LRU end can't be relied on to reach it in time.
            self._out_of_order(node)
        return removed

    def __delitem__(self, key: Any) -> None:
        Cache.__delitem__(self, key)
        DeadlineOrder.unlink(self._discard(key))

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its live value (or ``default``)."""
        if key in self:
            value = Cache.__getitem__(self, key)
            del self[key]
            return value
        if self._find(key) is not None:
            del self[key]  # expired: gone either way
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the ``(key, value)`` pair the eviction order gives up first."""
        try:
            key = self._victim()
        except StopIteration:
            raise KeyError(f"{type(self).__name__} is empty") from None
        value = Cache.__getitem__(self, key)
        del self[key]
        if self.__evicting is not None:
            self.__evicting.append(Eviction(key, value, EVICTED_SIZE))
        return (key, value)

    def clear(self) -> None:
        Cache.clear(self)
        for order in self._orders:
            order.clear()
        self.__deadlines.clear()
        self.__late_idle.clear()

    # -- expiry ------------------------------------------------------------

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        """Remove expired entries; return the removed ``(key, value)`` pairs."""
        return [(e.key, e.value) for e in self.evict_expired(time)]

    def evict_expired(self, now: float | None = None) -> list[Eviction]:
        """Remove expired entries; return them with the cause of each."""
        if not self.__timed:
            return []
        if now is None:
            now = self.__timer()
        out: list[Eviction] = []
        # idle: least recently used first; stop at the first live entry
        for order in self._orders:
            while order:
                node = order[next(iter(order))]
                if now < node.expires:
                    break
                out.append(self.__drop(node, now))
        deadlines, held = self.__deadlines, self.__is_held
        while (due := deadlines.first_due(now, held)) is not None:
            out.append(self.__drop(due, now))
        find = self._find
        late_idle = self.__late_idle
        while late_idle and late_idle[0][0] <= now:
            node = heapq.heappop(late_idle)[2]
            if find(node.key) is node and node.expires <= now:
                out.append(self.__drop(node, now))
        return out

    def __drop(self, node: Node, now: float) -> Eviction:
        key = node.key
        Cache.__delitem__(self, key)
        self._discard(key)
        DeadlineOrder.unlink(node)
        return Eviction(key, node.value, EVICTED_MAX_AGE if node.deadline <= now else EVICTED_IDLE)

    def __link(self, node: Node) -> None:
        if self.__deadlines.link(node):
            self.__compact()

    def __held(self, node: Node) -> bool:
        return self._find(node.key) is node

    def __compact(self) -> None:
        """Drop stale heap entries once they outnumber live entries."""
        limit = 2 * Cache.__len__(self) + 1024
        self.__deadlines.compact(limit, self.__is_held)
        if len(self.__late_idle) > limit:
            held = self.__held
            self.__late_idle = [e for e in self.__late_idle if held(e[2]) and e[2].expires == e[0]]
            heapq.heapify(self.__late_idle)

    # -- properties --------------------------------------------------------

    @property
    def idle_timeout(self) -> float | None:
        return self.__idle

    @property
    def max_age(self) -> float | None:
        return self.__max_age

    @property
    def timer(self) -> Callable[[], float]:
        return self.__timer
