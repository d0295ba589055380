"""The reading side of a cache core that changes nothing: presence, peeks, iteration, length and sizes.

``ExpiringCache`` (``memsession.expiring``) sets the state these read and
holds the side that changes entries (reads that count as an access, writes,
removals, the expiry sweep); the two are apart to keep each module to one
job. Every entry is a ``Node`` in one of the ``_primary`` orders; without
timeouts ``_inserted`` keeps first-insertion order for iteration, as every
cachetools cache iterates.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from cachetools import Cache

from .deadlines import Node

__all__ = ["ExpiringViews"]

_INF = float("inf")


class ExpiringViews(Cache):
    """What a cache core answers without counting an access (the state is ``ExpiringCache``'s)."""

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

    # Set by ``ExpiringCache.__init__``.
    _timed: bool
    _timer: Callable[[], float]
    _idle_or_inf: float
    _max_age: float | None
    _maxsize: float
    _currsize: float
    #: Orders that hold every entry exactly once between them.
    _primary: tuple[OrderedDict[Any, Node], ...]
    _inserted: dict[Any, None] | None

    @abstractmethod
    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        """Remove expired entries; return the removed ``(key, value)`` pairs."""

    @abstractmethod
    def lookup(self, key: Any, now: float, default: Any = None) -> Any:
        """Read ``key`` at time ``now`` (counting an access); ``default`` if absent or expired."""

    def get(self, key: Any, default: Any = None) -> Any:
        """The live value for ``key`` (counting an access), or ``default``."""
        return self.lookup(key, self._timer() if self._timed else 0.0, default)

    def __contains__(self, key: object) -> bool:
        node = self._find(key)
        if node is None:
            return False
        return not self._timed or self._timer() < node.expires

    def __iter__(self) -> Iterator[Any]:
        inserted = self._inserted
        if inserted is not None:
            yield from inserted
            return
        find = self._find
        for key in self.held_keys():
            node = find(key)
            if node is not None and self._timer() < node.expires:
                yield key

    def held_keys(self) -> list[Any]:
        """Every key held, expired ones not yet removed included (a snapshot; no sweep)."""
        if self._inserted is not None:
            return list(self._inserted)
        return [key for order in self._primary for key in order]

    def held_count(self) -> int:
        """How many entries are held, expired ones not yet removed included (no sweep)."""
        return sum(len(order) for order in self._primary)

    def __len__(self) -> int:
        if self._timed:
            self.expire()
        return self.held_count()

    def __repr__(self) -> str:
        if self._timed:
            self.expire()
        find = self._find
        items = {key: find(key).value for key in self.held_keys()}  # type: ignore[union-attr]
        return f"{type(self).__name__}({items!r}, maxsize={self._maxsize!r}, currsize={self._currsize!r})"

    @property
    def currsize(self) -> float:
        if self._timed:
            self.expire()
        return self._currsize

    def peek(self, key: Any, default: Any = None, *, now: float | None = None) -> Any:
        """The live value for ``key`` without counting it as an access; ``now``: the caller's clock reading."""
        hot = self._hot
        node = hot(key)
        if node is None and self._cold is not None:
            cold = self._cold
            node = cold(key)
        if node is None:
            return default
        if self._timed and (self._timer() if now is None else now) >= node.expires:
            return default
        return node.value

    def expires_at(self, key: Any) -> float | None:
        """Timer value at which ``key`` expires (``inf`` if never), or None if absent."""
        node = self._find(key)
        return None if node is None else node.expires

    # -- properties --------------------------------------------------------

    @property
    def idle_timeout(self) -> float | None:
        return None if self._idle_or_inf == _INF else self._idle_or_inf

    @property
    def max_age(self) -> float | None:
        return self._max_age

    @property
    def timer(self) -> Callable[[], float]:
        return self._timer
