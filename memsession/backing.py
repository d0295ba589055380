"""What a SessionCache needs from a durable store behind it: the persistence seam.

The cache core never imports the persistence layer; it talks to whatever is
handed to it as ``SessionCache(persistence=...)`` through this protocol, as it
talks to a bus through ``memsession.bus.Bus``. ``persist.Persistence`` (read-
through plus the write-behind engine) is the implementation memsession ships.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .session import Record

if TYPE_CHECKING:
    from .session_cache import SessionCache

__all__ = ["Backing"]


@runtime_checkable
class Backing(Protocol):
    """A store behind one cache. ``emit`` and ``read`` are called on the request path."""

    def attach(self, cache: SessionCache) -> None:
        """Serve ``cache`` from now on (called once, by the cache, before it is used)."""

    def emit(self, record: Record, *, touch: bool = False) -> None:
        """Persist a local change (``touch``: a coalesced access, never worth waiting for)."""

    def read(self, key: str) -> Record | None:
        """The newest record of ``key`` outside memory, or None if there is none (or it lapsed)."""

    def clear(self, version: int, *, wait: bool = True) -> None:
        """Make a clear at ``version`` stick (``wait``: now, in this thread; else in the background)."""

    def close(self) -> None:
        """Write what is pending and release the store. Idempotent."""

    def stats(self) -> dict[str, Any]:
        """Counters (a fresh dict)."""
