"""The network a bus contract test runs on, and the helpers the suite's tests share.

``BusNetwork`` and the helpers are public through ``memsession.bus.testing``.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import fields
from typing import Any, TypeVar

from .. import wire
from ..clock import COUNTER_BITS, SYSTEM_CLOCK, Clock
from ..config import Config
from ..session import Record, session_key
from ..session_cache import SessionCache
from .base import Bus, BusConfig, new_epoch

__all__ = ["DOCUMENTED_STATS", "BusNetwork", "ForgedStream", "bus_of", "forged_record", "split_options", "state_of"]

T = TypeVar("T")

#: Keys of ``Bus.stats()`` the README documents; every transport reports them.
DOCUMENTED_STATS = ("published", "received", "applied", "dropped", "gaps", "repairs", "lag_ms_p50", "lag_ms_p99")

_CACHE_OPTIONS = frozenset(f.name for f in fields(Config))
_BUS_OPTIONS = frozenset(f.name for f in fields(BusConfig))


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``join`` options as ``(SessionCache options, BusConfig options)``; an unknown name raises ``TypeError``."""
    unknown = set(options) - _CACHE_OPTIONS - _BUS_OPTIONS
    if unknown:
        raise TypeError(f"not a SessionCache or BusConfig option: {', '.join(sorted(unknown))}")
    cache = {k: v for k, v in options.items() if k in _CACHE_OPTIONS}
    bus = {k: v for k, v in options.items() if k in _BUS_OPTIONS}
    return cache, bus


def state_of(records: list[Record]) -> dict[str, tuple[int, int, bool, dict[str, Any]]]:
    """What replicas must agree on, per key: version, origin, tombstone or not, data."""
    return {r.key: (r.version, r.origin, r.deleted, r.data) for r in records}


def bus_of(cache: SessionCache) -> Bus:
    """The bus of a cache ``BusNetwork.join`` made."""
    assert cache.bus is not None, "joined caches have a bus"
    return cache.bus


def forged_record(
    sid: str, data: dict[str, Any], *, version: int, origin: int, clock: Clock, deleted: bool = False
) -> Record:
    """A record of session ``sid`` as another process would have written it (live an hour, a tombstone ten minutes).

    Keyed, as every record is, by ``session_key(sid)``.
    """
    wall = clock.wall()
    return Record(session_key(sid), {} if deleted else data, version, origin, wall, wall, wall + (600.0 if deleted else 3600.0),
                  deleted)


class ForgedStream:
    """The numbered stream of a publisher the test plays, for frames handed to ``BusNetwork.inject``."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.origin = secrets.randbits(62) | 1
        self.epoch = new_epoch(clock)
        self.seq = 0
        self._version = 0

    def forge(self, sid: str, data: dict[str, Any]) -> Record:
        """A live record of session ``sid`` this publisher wrote now (versions as its hybrid clock would issue them)."""
        self._version = max(int(self.clock.wall() * 1000) << COUNTER_BITS, self._version + 1)
        return forged_record(sid, data, version=self._version, origin=self.origin, clock=self.clock)

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _sent_us(self) -> int:
        return int(self.clock.wall() * 1_000_000)

    def record(self, record: Record) -> list[bytes]:
        """The next data message: SET for a live record, DESTROY for a tombstone."""
        return wire.encode_record_message(record, self.origin, self.epoch, self._next(), self._sent_us())

    def lost(self) -> None:
        """Use up the next number, as a message that never reached the bus would."""
        self._next()

    def heartbeat(self) -> list[bytes]:
        return wire.encode_heartbeat(self.origin, self.epoch, self.seq, self._sent_us())


class BusNetwork(ABC):
    """Caches joined through one hub of the transport under test, and what the suite does to them.

    Abstract methods are what a transport must provide; the rest is built on them.
    """

    #: The clock every joined cache runs on (a transport on real time keeps the system clock).
    clock: Clock = SYSTEM_CLOCK

    @abstractmethod
    def join(self, *, lossy: bool = False, **options: Any) -> SessionCache:
        """A new ``SessionCache`` on a new bus joined to the hub; returns once ``attach`` has returned.

        ``options`` are ``SessionCache`` and ``BusConfig`` fields (``split_options``).
        ``lossy=True``: the cache may be the sender in ``losing``.
        """

    @abstractmethod
    def wait_until(self, predicate: Callable[[], T], what: str, timeout: float | None = None) -> T:
        """``predicate()`` once it is truthy; ``AssertionError`` naming ``what`` if it does not become so.

        A synchronous transport checks once; one over real sockets polls until a deadline.
        """

    @abstractmethod
    def heartbeat(self) -> None:
        """Let every bus and the hub send a heartbeat (a transport with timers lets the wait do it)."""

    def pass_time(self, seconds: float) -> None:
        """Move the caches' clock on by ``seconds``; on real time the following ``wait_until`` lets it pass."""

    @abstractmethod
    def inject(self, frames: list[bytes]) -> None:
        """Put ``frames`` on the bus as one more publisher would: the hub and every cache get them, in order."""

    @abstractmethod
    def request(self, frames: list[bytes]) -> list[wire.Reply]:
        """One request to the hub's request channel; its replies, up to the one that ends it."""

    @abstractmethod
    def losing(self, sender: SessionCache, receiver: SessionCache) -> AbstractContextManager[None]:
        """While the block runs, some of the data messages ``sender`` publishes never reach ``receiver``.

        Where loss can only be random, ``sender`` was joined ``lossy=True`` and loses
        about half of what it sends, the hub's copy included.
        """

    @abstractmethod
    def unreachable(self, cache: SessionCache) -> AbstractContextManager[None]:
        """While the block runs, ``cache``'s bus cannot reach the hub (others may not either).

        The hub is back when the block ends; it may have restarted (lost its state) meanwhile.
        """

    @abstractmethod
    def restart_hub(self) -> None:
        """Replace the hub with a new one (new epoch, nothing held), as a restarted hub process would be."""

    @abstractmethod
    def close(self) -> None:
        """Close every cache joined here and stop the hub."""

    # -- built on the above ---------------------------------------------------------------

    def stream(self) -> ForgedStream:
        return ForgedStream(self.clock)

    def hub_records(self) -> list[Record]:
        replies = self.request(wire.encode_request(wire.SNAPSHOT, 1))
        return [r for reply in replies if reply.op == wire.CHUNK for r in reply.body[0]]

    def hub_get(self, key: str) -> Record | None:
        (reply,) = self.request(wire.encode_request(wire.GET, 1, key))
        return reply.body[0]

    def hub_write(self, records: list[Record]) -> None:
        """Hand records to the hub alone, as an ``invalidate``-mode writer does (nothing is relayed)."""
        (reply,) = self.request(wire.encode_request(wire.WRITE, 1, [wire.record_to_list(r) for r in records]))
        assert reply.op == wire.ACK

    def hub_stats(self) -> dict[str, Any]:
        (reply,) = self.request(wire.encode_request(wire.STATS, 1))
        return reply.body[0]

    def settle(self, caches: list[SessionCache], what: str = "replicas to converge") -> dict[str, Any]:
        """Wait until every cache and the hub hold the same records; return that state."""

        def agreed() -> list[dict[str, Any]]:
            states = [state_of(c.records()) for c in caches]
            states.append(state_of(self.hub_records()))
            return states[:1] if all(s == states[0] for s in states[1:]) else []

        return self.wait_until(agreed, what)[0]
