"""Helpers for testing code that uses memsession, and memsession itself.

* ``FakeClock``: both clocks, moved by hand; pass it as ``clock=`` to a
  ``SessionCache`` or as ``timer=`` to an ``ExpiringLRUCache`` or
  ``SegmentedLRUCache``.
* ``EvictionModel``: a slow, obviously-right reference of what an
  idle + max-age cache must hold, evicting by plain LRU or by segmented LRU.
* ``session_data()`` / ``session_ids()``: hypothesis strategies.
* ``eviction_machine(...)``: a hypothesis ``RuleBasedStateMachine`` that
  drives a cache with your settings against the model::

      from memsession.testing import eviction_machine
      TestEviction = eviction_machine(maxsize=50, idle_timeout=30, max_age=300).TestCase
      TestSegmented = eviction_machine(maxsize=50, idle_timeout=30, max_age=300,
                                       protected_fraction=0.8).TestCase

hypothesis is needed only by the last two (``pip install memsession[test]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .cache import EVICTED_IDLE, EVICTED_MAX_AGE, EVICTED_SIZE, Eviction, ExpiringLRUCache
from .expiring import ExpiringCache
from .segmented import SegmentedLRUCache

if TYPE_CHECKING:
    from hypothesis.stateful import RuleBasedStateMachine
    from hypothesis.strategies import SearchStrategy

__all__ = ["EvictionModel", "FakeClock", "eviction_machine", "session_data", "session_ids"]

_MISSING: Any = object()


class FakeClock:
    """Monotonic and wall time that move only when told to.

    Calling the clock returns monotonic time, so it also serves as a
    cachetools-style ``timer``.
    """

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._monotonic = float(monotonic)
        self._wall = float(wall)

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    __call__ = monotonic

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on both clocks."""
        if seconds < 0:
            raise ValueError("monotonic time can't go back; use step_wall() for wall-clock jumps")
        self._monotonic += seconds
        self._wall += seconds

    def step_wall(self, seconds: float) -> None:
        """Step the wall clock alone (NTP correction, DST mistakes); may be negative."""
        self._wall += seconds

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._monotonic!r}, wall={self._wall!r})"


@dataclass
class _Entry:
    value: Any
    deadline: float
    accessed: float


class EvictionModel:
    """Reference semantics of ``ExpiringLRUCache`` and ``SegmentedLRUCache``, written for clarity not speed.

    An entry expires when ``now >= min(accessed + idle_timeout, created +
    max_age)``. Reads of an expired entry miss; ``expire(now)`` removes every
    expired entry; inserts expire first, then evict while the new value does
    not fit. Sizes are ``getsizeof(value)``, 1 per entry by default.

    Which entry a full cache evicts:

    * ``protected_fraction=None`` (plain LRU, ``ExpiringLRUCache``): every read
      or write moves an entry to the most recent end; the least recently used
      goes first.
    * a fraction (segmented LRU, ``SegmentedLRUCache``): a new entry joins
      probation; a read or write of a held entry moves it to protected's most
      recent end; while protected's sizes add up to more than ``fraction *
      maxsize`` (or it holds anything when that share is 0), protected's least
      recently used moves to probation's most recent end. Probation's least
      recently used goes first, protected's only when probation is empty.
    """

    def __init__(
        self,
        maxsize: float,
        idle_timeout: float | None = None,
        max_age: float | None = None,
        *,
        protected_fraction: float | None = None,
        getsizeof: Callable[[Any], float] | None = None,
    ) -> None:
        self.maxsize = maxsize
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.protected_fraction = protected_fraction
        self.getsizeof = getsizeof or (lambda value: 1)
        self.entries: dict[Hashable, _Entry] = {}
        #: Least recently used first. Under plain LRU, the one order.
        self.probation: list[Hashable] = []
        self.protected: list[Hashable] = []

    @property
    def order(self) -> list[Hashable]:
        """Every held key, the next to be evicted first."""
        return self.probation + self.protected

    def size_of(self, keys: list[Hashable]) -> float:
        return sum(self.getsizeof(self.entries[key].value) for key in keys)

    def _expires(self, entry: _Entry) -> float:
        idle_end = entry.accessed + self.idle_timeout if self.idle_timeout is not None else math.inf
        return min(idle_end, entry.deadline)

    def _use(self, key: Hashable) -> None:
        """A read or a write of the held ``key``."""
        if self.protected_fraction is None:
            self.probation.remove(key)
            self.probation.append(key)
            return
        if key in self.probation:
            self.probation.remove(key)
        else:
            self.protected.remove(key)
        self.protected.append(key)
        share = self.protected_fraction * self.maxsize
        while self.protected and (self.size_of(self.protected) > share or share == 0):
            self.probation.append(self.protected.pop(0))

    def is_live(self, key: Hashable, now: float) -> bool:
        entry = self.entries.get(key)
        return entry is not None and now < self._expires(entry)

    def get(self, key: Hashable, now: float) -> Any:
        """The live value (counting an access), or ``MISSING``."""
        if not self.is_live(key, now):
            return _MISSING
        entry = self.entries[key]
        if self.idle_timeout is not None:
            entry.accessed = now
        self._use(key)
        return entry.value

    def insert(
        self, key: Hashable, value: Any, now: float, created: float | None = None, accessed: float | None = None
    ) -> list[Eviction]:
        """What the cache's ``insert`` returns; ``ValueError`` if the value alone is over ``maxsize``."""
        removed = self.expire(now)
        accessed = now if accessed is None or accessed > now else accessed
        old = self.entries.get(key)
        if self.max_age is None:
            deadline = math.inf
        elif created is None and old is not None:
            deadline = old.deadline
        else:
            deadline = (accessed if created is None or created > accessed else created) + self.max_age
        size = self.getsizeof(value)
        if size > self.maxsize:
            raise ValueError("value too large")
        # Evict until the new value fits in place of the old one (which may itself be evicted).
        while self.size_of([k for k in self.order if k != key]) + size > self.maxsize:
            victim = self.order[0]
            removed.append(Eviction(victim, self.entries[victim].value, EVICTED_SIZE))
            self.delete(victim)
        held = key in self.entries
        self.entries[key] = _Entry(value, deadline, accessed)
        if held:
            self._use(key)
        else:
            self.probation.append(key)
        return removed

    def delete(self, key: Hashable) -> None:
        del self.entries[key]
        (self.probation if key in self.probation else self.protected).remove(key)

    def popitem(self) -> tuple[Hashable, Any]:
        """Remove the next entry to be evicted, live or not; ``KeyError`` if empty."""
        if not self.entries:
            raise KeyError("empty")
        key = self.order[0]
        value = self.entries[key].value
        self.delete(key)
        return (key, value)

    def expire(self, now: float) -> list[Eviction]:
        out = []
        for key in self.order:
            entry = self.entries[key]
            if now >= self._expires(entry):
                cause = EVICTED_MAX_AGE if now >= entry.deadline else EVICTED_IDLE
                out.append(Eviction(key, entry.value, cause))
                self.delete(key)
        return out

    def live(self, now: float) -> dict[Hashable, Any]:
        return {k: e.value for k, e in self.entries.items() if now < self._expires(e)}


EvictionModel.MISSING = _MISSING  # type: ignore[attr-defined]


def session_ids() -> SearchStrategy[str]:
    """Valid session ids (43 URL-safe characters, as ``new_id()`` makes)."""
    from hypothesis import strategies as st

    return st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=43, max_size=43
    )


def session_data(max_leaves: int = 20) -> SearchStrategy[dict[str, Any]]:
    """Session data of every allowed kind: str, int (64-bit), finite float, bool, None, bytes, lists, dicts."""
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40)
        | st.binary(max_size=40)
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
        max_leaves=max_leaves,
    )
    return st.dictionaries(st.text(max_size=20), values, max_size=8)


def _outcome(operation: Callable[[], Any]) -> Any:
    """What ``operation`` returned (evictions sorted), or the type of the KeyError/ValueError it raised."""
    try:
        result = operation()
    except (KeyError, ValueError) as exc:
        return type(exc)
    return sorted(result) if isinstance(result, list) else result


def eviction_machine(
    *,
    maxsize: int = 8,
    idle_timeout: float | None = 10.0,
    max_age: float | None = 25.0,
    protected_fraction: float | None = None,
    getsizeof: Callable[[int], float] | None = None,
    factory: Callable[[int, float | None, float | None, FakeClock], ExpiringCache] | None = None,
) -> type[RuleBasedStateMachine]:
    """A state machine checking a cache with these settings against ``EvictionModel``.

    ``protected_fraction=None`` checks plain LRU (default cache:
    ``ExpiringLRUCache(..., timer=clock)``); a fraction checks segmented LRU
    (``SegmentedLRUCache(..., protected_fraction=...)``). ``getsizeof`` sizes
    the int values the machine stores (default 1 each). ``factory(maxsize,
    idle_timeout, max_age, clock)`` builds the cache under test instead; use
    it to check a subclass of your own. Run it with ``.TestCase`` under
    pytest/unittest.
    """
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

    def default_build(m: int, i: float | None, a: float | None, clock: FakeClock) -> ExpiringCache:
        if protected_fraction is None:
            return ExpiringLRUCache(m, i, a, timer=clock, getsizeof=getsizeof)
        return SegmentedLRUCache(m, i, a, timer=clock, getsizeof=getsizeof,
                                 protected_fraction=protected_fraction)

    build = factory or default_build
    keys = st.integers(min_value=0, max_value=maxsize * 2)
    step = max(idle_timeout or 0.0, max_age or 0.0, 1.0) / 8

    class EvictionMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = FakeClock()
            self.cache = build(maxsize, idle_timeout, max_age, self.clock)
            self.model = EvictionModel(
                maxsize, idle_timeout, max_age, protected_fraction=protected_fraction, getsizeof=getsizeof
            )

        @rule(key=keys, value=st.integers())
        def insert(self, key: int, value: int) -> None:
            now = self.clock()
            expected = _outcome(lambda: self.model.insert(key, value, now))
            assert _outcome(lambda: self.cache.insert(key, value)) == expected

        @rule(
            key=keys,
            value=st.integers(),
            created_ago=st.floats(0, 4 * step),
            accessed_ago=st.floats(-step, 4 * step),
        )
        def insert_from_elsewhere(self, key: int, value: int, created_ago: float, accessed_ago: float) -> None:
            now = self.clock()
            created, accessed = now - created_ago, now - accessed_ago
            expected = _outcome(lambda: self.model.insert(key, value, now, created, accessed))
            got = _outcome(lambda: self.cache.insert(key, value, created=created, accessed=accessed))
            assert got == expected

        def check_read(self, key: Hashable) -> None:
            expected = self.model.get(key, self.clock())
            if expected is _MISSING:
                assert key not in self.cache
                assert self.cache.get(key, _MISSING) is _MISSING
            else:
                assert self.cache[key] == expected

        @rule(key=keys)
        def read(self, key: int) -> None:
            self.check_read(key)

        @precondition(lambda self: bool(self.model.entries))
        @rule(data=st.data())
        def read_held(self, data: st.DataObject) -> None:
            # Hits are what move entries between orders: don't leave them to chance.
            self.check_read(data.draw(st.sampled_from(list(self.model.entries))))

        @rule(key=keys)
        def lookup(self, key: int) -> None:
            now = self.clock()
            assert self.cache.lookup(key, now, _MISSING) == self.model.get(key, now)

        @rule(key=keys)
        def delete(self, key: int) -> None:
            if key in self.model.entries:
                self.model.delete(key)
                del self.cache[key]

        @rule()
        def popitem(self) -> None:
            assert _outcome(self.cache.popitem) == _outcome(self.model.popitem)

        # 7 steps: nearly a whole timeout when the idle timeout is the longer, so some entries
        # expire while others written a little later do not.
        @rule(seconds=st.sampled_from([0.0, step / 4, step, 2 * step, 7 * step, 10 * step]))
        def wait(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @rule()
        def expire(self) -> None:
            now = self.clock()
            assert sorted(self.cache.evict_expired(now)) == sorted(self.model.expire(now))

        @invariant()
        def same_live_entries(self) -> None:
            now = self.clock()
            live = {k: self.cache.peek(k) for k in iter(self.cache)}  # list() would call len(), which sweeps
            assert live == self.model.live(now)

        @invariant()
        def same_entries_held_expired_or_not(self) -> None:
            # No expiry filter and no sweep (the model removes only when told to).
            assert set(self.cache.held_keys()) == set(self.model.entries)

        @invariant()
        def same_protected_size(self) -> None:
            if isinstance(self.cache, SegmentedLRUCache):
                assert self.cache.protected_size == self.model.size_of(self.model.protected)

    EvictionMachine.__name__ = EvictionMachine.__qualname__ = "EvictionMachine"
    return EvictionMachine
