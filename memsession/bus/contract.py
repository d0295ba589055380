"""The bus contract: what a ``SessionCache`` asks of its bus, and what a bus asks of its cache.

``Bus`` is the transport side (``MemoryBus``, ``ZmqBus``); ``ReplicaTarget``
the cache side (``SessionCache``); ``Clear`` a cluster-wide clear, published
like a record.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..session import Record

__all__ = ["Bus", "Clear", "Outgoing", "ReplicaTarget"]


class Clear(NamedTuple):
    """A cluster-wide clear: every live session last written at or before ``version`` is gone."""

    version: int


#: What a transport queues for sending: a record, a record with its data already packed, or a clear.
Outgoing = Record | tuple[Record, bytes] | Clear


class ReplicaTarget(Protocol):
    """What a bus needs from the cache it feeds (``SessionCache`` provides it)."""

    origin: int

    #: The clear watermark: no live session at or below this version is held or accepted (0: never cleared).
    cleared: int

    def apply(self, record: Record) -> bool: ...

    def apply_many(self, records: list[Record]) -> int: ...

    def apply_clear(self, version: int) -> bool: ...

    def held(self, key: str) -> Record | None:
        """The record held under ``key`` (``session_key`` of an id: the bus never sees ids)."""

    def records(self) -> list[Record]: ...

    def discard(self, key: str, version: int, origin: int) -> bool: ...

    def begin_repair(self) -> None:
        """Messages were lost: until ``end_repair``, check entries with the hub before serving them."""

    def end_repair(self) -> None:
        """A snapshot has been spliced in: local entries are trustworthy again."""

    def drop_partitions(self, mask: int) -> int:
        """Forget the live copies in these partitions (the hub missed changes to them); how many went."""

    def forget_unlisted(self, keys: set[str], own_since_ms: int) -> int:
        """After a repair of a bus that reads through the hub: forget the copies its snapshot left out."""

    def suspect(self, mask: int) -> None:
        """The hub can't vouch for the copies of these partitions (``memsession.partitions``): check each hit."""


@runtime_checkable
class Bus(Protocol):
    """A replication transport bound to one ``SessionCache``.

    ``publish`` is called on the request path after every local change: it
    must not block or raise for transport trouble (queue, count, log).
    """

    def attach(self, cache: ReplicaTarget) -> None:
        """Bind to the cache and start replicating (join: subscribe, snapshot)."""

    def publish(self, record: Record | Clear, packed: bytes | None = None) -> None:
        """Send a local change (or a ``Clear``) to every other replica; best-effort, never blocks.

        ``packed`` is the record's data already serialized with msgpack, if the caller has it.
        """

    #: True in ``invalidate`` mode: a miss in the cache is read through the hub with ``fetch``.
    reads_through: bool

    def fetch(self, key: str, timeout: float | None = None) -> Record | None:
        """Read ``key`` through the hub (read-your-writes, invalidate mode); None if unknown or unreachable."""

    def lookup(self, key: str, timeout: float | None = None) -> tuple[bool, Record | None]:
        """``(answered, record)``: like ``fetch``, but tells "the hub does not know it" from "no answer"."""

    def hub_settled(self, gather: float) -> bool:
        """Whether the hub's "not found" can be believed: no repair due, and the current hub heard
        for ``gather`` seconds (a restarted hub is still gathering what the workers push to it)."""

    def stats(self) -> dict[str, Any]:
        """Replication counters (a fresh dict)."""

    def close(self) -> None:
        """Stop threads and close sockets. Idempotent."""
