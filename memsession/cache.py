"""The cache core: LRU by ``maxsize``, sliding idle timeout, absolute max age.

Pure: no I/O, threads or locks; time comes from the injected ``timer`` and
each operation reads it once. The facade (``SessionCache``) locks around it
and publishes or persists what ``expire`` and ``insert`` report.

An entry expires when ``now >= min(accessed + idle_timeout, created + max_age)``.
Expired entries are invisible at once (``in``, ``[]``, ``get``, iteration) and
are removed by ``expire()``, which also runs before every insert, as in
``cachetools.TTLCache``. With neither timeout set the class behaves exactly
like ``cachetools.LRUCache``.

Expiry bookkeeping is amortised O(1) per operation:

* idle: the LRU order is the access order, so idle-expired entries sit at the
  LRU end and a sweep stops at the first live one;
* max age: entries are chained in deadline order; local inserts append;
  entries arriving from elsewhere with an older ``created`` are slotted in by
  a short walk back, or, past that, kept in a heap;
* entries arriving with an ``accessed`` older than the newest access sit in
  the LRU order where the idle sweep can't see them, so they are also kept in
  a heap until they are next touched.

Heap entries are checked against the live entry when popped, and the heaps
are rebuilt when stale entries outnumber live ones (amortised O(1)).
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, NamedTuple, TypeVar

from cachetools import Cache

from .validate import check_number

__all__ = ["EVICTED_IDLE", "EVICTED_MAX_AGE", "EVICTED_SIZE", "Eviction", "ExpiringLRUCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

EVICTED_IDLE = "idle"
EVICTED_MAX_AGE = "max_age"
EVICTED_SIZE = "size"

_INF = float("inf")
#: How far back an out-of-order max-age deadline is walked into place before it goes to the heap.
_WALK_LIMIT = 16
_MISSING = object()


class Eviction(NamedTuple):
    """One entry the cache removed on its own, and why (``idle``, ``max_age``, ``size``)."""

    key: Any
    value: Any
    cause: str


class _Node:
    """Per-entry value and timing; ``prev``/``next`` chain entries by max-age deadline."""

    __slots__ = ("deadline", "expires", "key", "next", "prev", "value")

    def __init__(self, key: Any, value: Any, deadline: float, expires: float) -> None:
        self.key = key
        self.value = value  # also in the Cache mapping; kept here so a read is one lookup
        self.deadline = deadline  # created + max_age
        self.expires = expires  # min(accessed + idle_timeout, deadline)
        self.prev: _Node | None = None
        self.next: _Node | None = None



class ExpiringLRUCache(Cache):
    """LRU cache whose entries also expire when idle and at an absolute age.

    ``ExpiringLRUCache(maxsize, idle_timeout=None, max_age=None,
    timer=time.monotonic, getsizeof=None)``: ``maxsize`` and ``getsizeof`` as
    in every cachetools cache; timeouts in the timer's unit.
    """

    def __init__(
        self,
        maxsize: float,
        idle_timeout: float | None = None,
        max_age: float | None = None,
        timer: Callable[[], float] = time.monotonic,
        getsizeof: Callable[[Any], float] | None = None,
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
        self.__nodes: OrderedDict[Any, _Node] = OrderedDict()  # LRU first
        root = _Node(None, None, _INF, _INF)
        root.prev = root.next = root
        self.__root = root  # max-age chain, earliest deadline first
        self.__late_deadlines: list[tuple[float, int, _Node]] = []
        self.__late_idle: list[tuple[float, int, float, _Node]] = []  # (idle end, tiebreak, expires, node)
        self.__newest_access = -_INF
        self.__tiebreak = 0
        self.__evicting: list[Eviction] | None = None

    # -- reading -----------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        try:
            node = self.__nodes[key]
        except KeyError:
            return self.__missing__(key)
        timer = self.__read_timer
        if timer is not None:
            now = timer()
            if now >= node.expires:
                return self.__missing__(key)
            end = now + self.__idle_or_inf
            node.expires = min(node.deadline, end)
            self.__newest_access = now
        self.__nodes.move_to_end(key)
        return node.value

    def lookup(self, key: Any, now: float, default: Any = None) -> Any:
        """Read ``key`` at time ``now`` (counting an access); ``default`` if absent or expired.

        The facade's read path: no exception on a miss, and the caller's
        clock reading is reused.
        """
        node = self.__nodes.get(key)
        if node is None or now >= node.expires:
            return default
        if self.__timed:
            end = now + self.__idle_or_inf
            node.expires = min(node.deadline, end)
            self.__newest_access = max(self.__newest_access, now)
        self.__nodes.move_to_end(key)
        return node.value

    def __contains__(self, key: object) -> bool:
        node = self.__nodes.get(key)
        if node is None:
            return False
        return not self.__timed or self.__timer() < node.expires

    def __iter__(self) -> Iterator[Any]:
        if not self.__timed:
            yield from Cache.__iter__(self)
            return
        nodes = self.__nodes
        for key in list(Cache.__iter__(self)):
            node = nodes.get(key)
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
        node = self.__nodes.get(key)
        if node is None or (self.__timed and self.__timer() >= node.expires):
            return default
        return node.value

    def expires_at(self, key: Any) -> float | None:
        """Timer value at which ``key`` expires (``inf`` if never), or None if absent."""
        node = self.__nodes.get(key)
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
        nodes = self.__nodes
        node = nodes.get(key)
        self.__evicting = removed
        try:
            Cache.__setitem__(self, key, value)
        finally:
            self.__evicting = None
        if node is not None and nodes.get(key) is not node:
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
            node = _Node(key, value, deadline, expires)
            nodes[key] = node
            if deadline != _INF:
                self.__chain(node)
        else:
            nodes.move_to_end(key)
            node.value = value
            if node.deadline != deadline:
                self.__unchain(node)
                node.deadline = deadline
                self.__chain(node)
            node.expires = expires
        if accessed >= self.__newest_access:
            self.__newest_access = accessed
        elif idle_end < deadline:
            # Older than entries already at the MRU end: the idle sweep from the
            # LRU end can't be relied on to reach it in time, so the heap does.
            self.__tiebreak += 1
            heapq.heappush(self.__late_idle, (idle_end, self.__tiebreak, expires, node))
            self.__compact()
        return removed

    def __delitem__(self, key: Any) -> None:
        Cache.__delitem__(self, key)
        self.__unchain(self.__nodes.pop(key))

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its live value (or ``default``)."""
        if key in self:
            value = Cache.__getitem__(self, key)
            del self[key]
            return value
        if key in self.__nodes:
            del self[key]  # expired: gone either way
        if default is _MISSING:
            raise KeyError(key)
        return default

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return default

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the least recently used ``(key, value)`` pair."""
        try:
            key = next(iter(self.__nodes))
        except StopIteration:
            raise KeyError(f"{type(self).__name__} is empty") from None
        value = Cache.__getitem__(self, key)
        del self[key]
        if self.__evicting is not None:
            self.__evicting.append(Eviction(key, value, EVICTED_SIZE))
        return (key, value)

    def clear(self) -> None:
        Cache.clear(self)
        self.__nodes.clear()
        root = self.__root
        root.prev = root.next = root
        self.__late_deadlines.clear()
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
        nodes = self.__nodes
        # idle: least recently used first; stop at the first live entry
        while nodes:
            first = next(iter(nodes))
            node = nodes[first]
            if now < node.expires:
                break
            out.append(self.__drop(node, now))
        root = self.__root
        head = root.next
        while head is not None and head is not root and head.deadline <= now:
            out.append(self.__drop(head, now))
            head = root.next
        late = self.__late_deadlines
        while late and late[0][0] <= now:
            node = heapq.heappop(late)[2]
            if nodes.get(node.key) is node and node.deadline <= now:
                out.append(self.__drop(node, now))
        late_idle = self.__late_idle
        while late_idle and late_idle[0][0] <= now:
            node = heapq.heappop(late_idle)[3]
            if nodes.get(node.key) is node and node.expires <= now:
                out.append(self.__drop(node, now))
        return out

    def __drop(self, node: _Node, now: float) -> Eviction:
        key = node.key
        Cache.__delitem__(self, key)
        del self.__nodes[key]
        self.__unchain(node)
        return Eviction(key, node.value, EVICTED_MAX_AGE if node.deadline <= now else EVICTED_IDLE)

    # -- the max-age chain -------------------------------------------------

    def __chain(self, node: _Node) -> None:
        """Link ``node`` into the deadline chain, or the heap if it lands too far back."""
        root = self.__root
        after = root.prev
        steps = 0
        while after is not None and after is not root and after.deadline > node.deadline:
            steps += 1
            if steps > _WALK_LIMIT:
                node.prev = node.next = None
                self.__tiebreak += 1
                heapq.heappush(self.__late_deadlines, (node.deadline, self.__tiebreak, node))
                self.__compact()
                return
            after = after.prev
        assert after is not None and after.next is not None  # the chain is a closed ring
        node.prev = after
        node.next = after.next
        after.next.prev = node
        after.next = node

    @staticmethod
    def __unchain(node: _Node) -> None:
        prev, nxt = node.prev, node.next
        if prev is not None and nxt is not None:
            prev.next = nxt
            nxt.prev = prev
            node.prev = node.next = None

    def __compact(self) -> None:
        """Drop stale heap entries once they outnumber live entries."""
        limit = 2 * len(self.__nodes) + 1024
        nodes = self.__nodes
        if len(self.__late_deadlines) > limit:
            self.__late_deadlines = [
                e
                for e in self.__late_deadlines
                if nodes.get(e[2].key) is e[2] and e[2].prev is None and e[0] == e[2].deadline
            ]
            heapq.heapify(self.__late_deadlines)
        if len(self.__late_idle) > limit:
            self.__late_idle = [
                e for e in self.__late_idle if nodes.get(e[3].key) is e[3] and e[3].expires == e[2]
            ]
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
