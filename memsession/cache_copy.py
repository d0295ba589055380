"""Copies of a cache core that share no state with the original.

``cachetools`` caches copy independently since 8.0 (``copy.copy`` of an
``LRUCache`` gives it its own order): a change to the copy never reaches the
original. A core keeps its entries in ordered dicts of nodes, a deadline
order and heaps, all linked to each other, so the copy rebuilds every one of
them (``deepcopy`` of the core's own state) while the values themselves are
shared, as a shallow copy's are, and the clock is always shared.
"""

from __future__ import annotations

from copy import deepcopy
from types import BuiltinMethodType
from typing import Any, TypeVar

__all__ = ["clone", "shared"]

_T = TypeVar("_T")


def clone(cache: _T, memo: dict[int, Any]) -> _T:
    """A copy of ``cache`` whose state is copied; objects already in ``memo`` are shared as they are."""
    copied = object.__new__(type(cache))
    memo[id(cache)] = copied
    state = vars(copied)
    for name, value in vars(cache).items():
        state[name] = deepcopy(value, memo)
    # A bound C method (the read path's hooks: an order's ``get``, ``move_to_end``) is atomic to
    # ``deepcopy``: it would still act on the original's dict. Bind it again to that dict's copy.
    for name, value in state.items():
        owner = getattr(value, "__self__", None)
        if isinstance(value, BuiltinMethodType) and owner is not None and memo.get(id(owner), owner) is not owner:
            state[name] = getattr(memo[id(owner)], value.__name__)
    return copied


def shared(*objects: Any) -> dict[int, Any]:
    """A ``deepcopy`` memo that keeps ``objects`` (and the objects their bound methods belong to) as they are."""
    memo: dict[int, Any] = {}
    for obj in objects:
        if obj is None:
            continue
        memo[id(obj)] = obj
        owner = getattr(obj, "__self__", None)
        if owner is not None:
            memo[id(owner)] = owner
    return memo
