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

Expiry bookkeeping is amortised O(1) per operation:

* idle: each order is kept in access order, so idle-expired entries sit at
  its LRU end and a sweep stops at the first live one;
* max age: entries are kept in deadline order (``memsession.deadlines``);
  local inserts append, entries arriving from elsewhere with an older
  ``created`` are slotted in by a short walk back, or, past that, kept in a heap;
* an entry placed behind the newest access (it arrived with an older
  ``accessed``, or a subclass moved it between orders) sits where the idle
  sweep can't see it, so a heap keeps it until it is next touched;
* a sweep leaves behind a lower bound on the earliest expiry of anything
  held (``quiet_until``); reads only push expiries later and inserts lower the
  bound, so until then a sweep, and the one before every insert, costs one
  comparison.

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

    # The read path's hooks, set by each subclass to bound C methods where it can.
    #: The node for a key in the order most hits land in, or None.
    _hot: Callable[[Any], Node | None]
    #: A read hit on a key ``_hot`` found: what it does to the eviction order.
    _reuse: Callable[[Any], None]
    #: The node for a key ``_hot`` does not hold (another segment), or None; None when there is no other.
    _cold: Callable[[Any], Node | None] | None
    #: A read hit on a key ``_cold`` found: move it where ``_hot`` finds it (set with ``_cold``).
    _promote: Callable[[Any, Node], None]
    #: The node for any held key, or None.
    _find: Callable[[Any], Node | None]

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
        self.__maxsize = maxsize
        self.__sized = self.getsizeof is not Cache.getsizeof  # as cachetools tells them apart
        self.__currsize: float = 0
        self.__idle_or_inf = _INF if idle_timeout is None else idle_timeout
        self.__max_age = max_age
        self.__timed = idle_timeout is not None or max_age is not None
        self.__timer = timer
        #: Every held node is in at least one order; the idle sweep walks each from its LRU end.
        self._orders = orders
        #: Orders that hold every entry exactly once between them.
        self.__primary = primary
        #: Without timeouts iteration follows first insertion, as every cachetools cache's does.
        self.__inserted: dict[Any, None] | None = None if self.__timed else {}
        self.__deadlines = DeadlineOrder()
        self.__late_idle: list[tuple[float, int, Node]] = []  # (expires when pushed, tiebreak, node)
        self.__newest_access = -_INF
        #: No held entry expires before this (a lower bound, set by each sweep, lowered by inserts).
        self.__quiet_until = _INF
        self.__tiebreak = 0
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
        if node.expires < node.deadline:  # else the deadline order finds it
            self.__tiebreak += 1
            heapq.heappush(self.__late_idle, (node.expires, self.__tiebreak, node))
            self.__compact()

    # -- reading -----------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        # Hooks and the timer are read into locals before the call: an instance attribute
        # called as ``self.x()`` takes the interpreter's slow path for methods.
        hot = self._hot
        node = hot(key)
        if node is None:
            if self._cold is None:
                return self.__missing__(key)
            timer = self.__timer
            node = self.__use_cold(key, timer() if self.__timed else 0.0)
            return self.__missing__(key) if node is None else node.value
        if self.__timed:
            timer = self.__timer
            now = timer()
            if now >= node.expires:
                return self.__missing__(key)
            end = now + self.__idle_or_inf
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
        if node is None:
            if self._cold is None:
                return default
            node = self.__use_cold(key, now)
            return default if node is None else node.value
        if now >= node.expires:
            return default
        if self.__timed:
            end = now + self.__idle_or_inf
            deadline = node.deadline
            node.expires = end if end < deadline else deadline
            if now >= self.__newest_access:
                self.__newest_access = now
            else:
                self.__read_late(node)
        reuse = self._reuse
        reuse(key)
        return node.value

    def __use_cold(self, key: Any, now: float) -> Node | None:
        """A read at ``now`` of a key only ``_cold`` may hold: its live node (now used), or None."""
        cold = self._cold
        assert cold is not None
        node = cold(key)
        if node is None or now >= node.expires:
            return None
        if self.__timed:
            end = now + self.__idle_or_inf
            node.expires = min(end, node.deadline)
            if now >= self.__newest_access:
                self.__newest_access = now
            else:
                self.__read_late(node)
        promote = self._promote
        promote(key, node)
        return node

    def __read_late(self, node: Node) -> None:
        """A read at a time before the newest access seen: it lands behind later ones in its order."""
        self._out_of_order(node)
        if node.expires < self.__quiet_until:
            self.__quiet_until = node.expires

    def get(self, key: Any, default: Any = None) -> Any:
        """The live value for ``key`` (counting an access), or ``default``."""
        return self.lookup(key, self.__timer() if self.__timed else 0.0, default)

    def __contains__(self, key: object) -> bool:
        node = self._find(key)
        if node is None:
            return False
        return not self.__timed or self.__timer() < node.expires

    def __iter__(self) -> Iterator[Any]:
        inserted = self.__inserted
        if inserted is not None:
            yield from inserted
            return
        find = self._find
        for key in self.held_keys():
            node = find(key)
            if node is not None and self.__timer() < node.expires:
                yield key

    def held_keys(self) -> list[Any]:
        """Every key held, expired ones not yet removed included (a snapshot; no sweep)."""
        if self.__inserted is not None:
            return list(self.__inserted)
        return [key for order in self.__primary for key in order]

    def held_count(self) -> int:
        """How many entries are held, expired ones not yet removed included (no sweep)."""
        return sum(len(order) for order in self.__primary)

    def __len__(self) -> int:
        if self.__timed:
            self.expire()
        return self.held_count()

    def __repr__(self) -> str:
        if self.__timed:
            self.expire()
        find = self._find
        items = {key: find(key).value for key in self.held_keys()}  # type: ignore[union-attr]
        return f"{type(self).__name__}({items!r}, maxsize={self.__maxsize!r}, currsize={self.__currsize!r})"

    @property
    def currsize(self) -> float:
        if self.__timed:
            self.expire()
        return self.__currsize

    def peek(self, key: Any, default: Any = None, *, now: float | None = None) -> Any:
        """The live value for ``key`` without counting it as an access; ``now``: the caller's clock reading."""
        node = self._find(key)
        if node is None:
            return default
        if self.__timed and (self.__timer() if now is None else now) >= node.expires:
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
        given. ``accessed`` later than now counts as now. Sizes and their
        errors as in ``cachetools.Cache``.
        """
        if now is None:
            now = self.__timer()
        removed = self.evict_expired(now) if self.__timed and now >= self.__quiet_until else []
        maxsize = self.__maxsize
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
        node = self._find(key)
        grows = size - node.size if node is not None else size
        if self.__currsize + grows > maxsize:
            self.__evicting = removed
            try:
                while self.__currsize + grows > maxsize:
                    self.popitem()
                    if node is not None and self._find(key) is not node:
                        node, grows = None, size  # evicted itself while making room
            finally:
                self.__evicting = None
        if accessed is None or accessed > now:
            accessed = now
        max_age = self.__max_age
        if max_age is None:
            deadline = _INF
        elif created is None and node is not None:
            deadline = node.deadline  # a replaced entry keeps its age
        else:
            deadline = (accessed if created is None or created > accessed else created) + max_age
        end = accessed + self.__idle_or_inf
        expires = end if end < deadline else deadline
        if node is None:
            node = Node(key, value, deadline, expires)
            node.size = size
            self._added(key, node)
            if self.__inserted is not None:
                self.__inserted[key] = None
            if deadline != _INF:
                self.__link(node)
        else:
            old_size = node.size
            node.value = value
            node.size = size
            if node.deadline != deadline:
                DeadlineOrder.unlink(node)
                node.deadline = deadline
                self.__link(node)
            node.expires = expires
            self._rewritten(key, node, old_size)
        self.__currsize += grows
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
        DeadlineOrder.unlink(node)
        self.__currsize -= node.size
        if self.__inserted is not None:
            del self.__inserted[node.key]

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its live value (or ``default``)."""
        node = self._find(key)
        if node is not None:
            del self[key]  # expired: gone either way
            if not self.__timed or self.__timer() < node.expires:
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
        if self.__inserted is not None:
            self.__inserted.clear()
        self.__currsize = 0
        self.__deadlines.clear()
        self.__late_idle.clear()
        self.__quiet_until = _INF

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
        if now < self.__quiet_until:
            return []
        out: list[Eviction] = []
        # idle: least recently used first; stop at the first live entry
        for order in self._orders:
            while order:
                node = order[next(iter(order))]
                if now < node.expires:
                    break
                out.append(self.__drop(node, now))
        deadlines, held = self.__deadlines, self.__held
        while (due := deadlines.first_due(now, held)) is not None:
            out.append(self.__drop(due, now))
        find = self._find
        late_idle = self.__late_idle
        while late_idle and late_idle[0][0] <= now:
            node = heapq.heappop(late_idle)[2]
            if find(node.key) is node and node.expires <= now:
                out.append(self.__drop(node, now))
        self.__quiet_until = self.__earliest_expiry()
        return out

    def __earliest_expiry(self) -> float:
        """A lower bound on when the first held entry expires (after a sweep, every one is later than now).

        Within an order the entries the idle sweep relies on expire no earlier
        than its LRU end, unless their deadline is sooner (the deadline order
        has those); every other entry is in one of the heaps, whose tops may
        be stale but never late.
        """
        soonest = self.__deadlines.earliest()
        if self.__late_idle and self.__late_idle[0][0] < soonest:
            soonest = self.__late_idle[0][0]
        for order in self._orders:
            if order:
                expires = order[next(iter(order))].expires
                if expires < soonest:
                    soonest = expires
        return soonest

    def __drop(self, node: Node, now: float) -> Eviction:
        key = node.key
        self._discard(key)
        self.__forget(node)
        return Eviction(key, node.value, EVICTED_MAX_AGE if node.deadline <= now else EVICTED_IDLE)

    def __link(self, node: Node) -> None:
        if self.__deadlines.link(node):
            self.__compact()

    def __held(self, node: Node) -> bool:
        return self._find(node.key) is node

    def __compact(self) -> None:
        """Drop stale heap entries once they outnumber live entries."""
        limit = 2 * self.held_count() + 1024
        self.__deadlines.compact(limit, self.__held)
        if len(self.__late_idle) > limit:
            held = self.__held
            self.__late_idle = [e for e in self.__late_idle if held(e[2]) and e[2].expires == e[0]]
            heapq.heapify(self.__late_idle)

    # -- properties --------------------------------------------------------

    @property
    def idle_timeout(self) -> float | None:
        return None if self.__idle_or_inf == _INF else self.__idle_or_inf

    @property
    def max_age(self) -> float | None:
        return self.__max_age

    @property
    def timer(self) -> Callable[[], float]:
        return self.__timer
