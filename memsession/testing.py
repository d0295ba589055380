"""Helpers for testing code that uses memsession, and memsession itself.

* ``FakeClock``: both clocks, moved by hand; pass it as ``clock=`` to a
  ``SessionCache`` or as ``timer=`` to an ``ExpiringLRUCache``.
* ``EvictionModel``: a slow, obviously-right reference of what an
  LRU + idle + max-age cache must hold.
* ``session_data()`` / ``session_ids()``: hypothesis strategies.
* ``eviction_machine(...)``: a hypothesis ``RuleBasedStateMachine`` that
  drives a cache with your settings against the model::

      from memsession.testing import eviction_machine
      TestEviction = eviction_machine(maxsize=50, idle_timeout=30, max_age=300).TestCase

hypothesis is needed only by the last two (``pip install memsession[test]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .cache import EVICTED_IDLE, EVICTED_MAX_AGE, EVICTED_SIZE, Eviction, ExpiringLRUCache

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
    """Reference semantics of ``ExpiringLRUCache``, written for clarity not speed.

    An entry expires when ``now >= min(accessed + idle_timeout, created +
    max_age)``. Reads of an expired entry miss; ``expire(now)`` removes every
    expired entry; inserts expire first, then evict least recently used
    entries while the cache is full. Sizes count 1 per entry.
    """

    def __init__(self, maxsize: int, idle_timeout: float | None = None, max_age: float | None = None) -> None:
        self.maxsize = maxsize
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.entries: dict[Hashable, _Entry] = {}
        self.order: list[Hashable] = []  # least recently used first

    def _expires(self, entry: _Entry) -> float:
        idle_end = entry.accessed + self.idle_timeout if self.idle_timeout is not None else math.inf
        return min(idle_end, entry.deadline)

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
        self.order.remove(key)
        self.order.append(key)
        return entry.value

    def insert(
        self, key: Hashable, value: Any, now: float, created: float | None = None, accessed: float | None = None
    ) -> list[Eviction]:
        removed = self.expire(now)
        accessed = now if accessed is None or accessed > now else accessed
        old = self.entries.get(key)
        if self.max_age is None:
            deadline = math.inf
        elif created is None and old is not None:
            deadline = old.deadline
        else:
            deadline = (accessed if created is None or created > accessed else created) + self.max_age
        if old is None:
            while len(self.entries) >= self.maxsize:
                lru = self.order.pop(0)
                removed.append(Eviction(lru, self.entries.pop(lru).value, EVICTED_SIZE))
        else:
            self.order.remove(key)
        self.entries[key] = _Entry(value, deadline, accessed)
        self.order.append(key)
        return removed

    def delete(self, key: Hashable) -> None:
        del self.entries[key]
        self.order.remove(key)

    def expire(self, now: float) -> list[Eviction]:
        out = []
        for key in list(self.order):
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


def eviction_machine(
    *,
    maxsize: int = 8,
    idle_timeout: float | None = 10.0,
    max_age: float | None = 25.0,
    factory: Callable[[int, float | None, float | None, FakeClock], ExpiringLRUCache] | None = None,
) -> type[RuleBasedStateMachine]:
    """A state machine checking a cache with these settings against ``EvictionModel``.

    ``factory(maxsize, idle_timeout, max_age, clock)`` builds the cache under
    test (default: ``ExpiringLRUCache(..., timer=clock)``); use it to check a
    subclass of your own. Run it with ``.TestCase`` under pytest/unittest.
    """
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

    build = factory or (lambda m, i, a, clock: ExpiringLRUCache(m, i, a, timer=clock))
    keys = st.integers(min_value=0, max_value=maxsize * 2)
    step = max(idle_timeout or 0.0, max_age or 0.0, 1.0) / 8

    class EvictionMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = FakeClock()
            self.cache = build(maxsize, idle_timeout, max_age, self.clock)
            self.model = EvictionModel(maxsize, idle_timeout, max_age)

        @rule(key=keys, value=st.integers())
        def insert(self, key: int, value: int) -> None:
            now = self.clock()
            got = self.cache.insert(key, value)
            assert sorted(got) == sorted(self.model.insert(key, value, now))

        @rule(
            key=keys,
            value=st.integers(),
            created_ago=st.floats(0, 4 * step),
            accessed_ago=st.floats(-step, 4 * step),
        )
        def insert_from_elsewhere(self, key: int, value: int, created_ago: float, accessed_ago: float) -> None:
            now = self.clock()
            created, accessed = now - created_ago, now - accessed_ago
            got = self.cache.insert(key, value, created=created, accessed=accessed)
            assert sorted(got) == sorted(self.model.insert(key, value, now, created, accessed))

        @rule(key=keys)
        def read(self, key: int) -> None:
            expected = self.model.get(key, self.clock())
            if expected is _MISSING:
                assert key not in self.cache
                assert self.cache.get(key, _MISSING) is _MISSING
            else:
                assert self.cache[key] == expected

        @rule(key=keys)
        def delete(self, key: int) -> None:
            if key in self.model.entries:
                self.model.delete(key)
                del self.cache[key]

        @rule(seconds=st.sampled_from([0.0, step / 4, step, 2 * step, 10 * step]))
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

    EvictionMachine.__name__ = EvictionMachine.__qualname__ = "EvictionMachine"
    return EvictionMachine
