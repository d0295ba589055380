"""Work other threads hand the hub thread, and the doorbell that wakes its poller for it.

The hub's replica and its sockets belong to the hub thread. A thread that
has something for it (a store read finished, changes another host made)
appends it here and rings a doorbell, one end of a socket pair the hub's
poller watches; the hub thread ``take``s what is waiting and acts on it.
Items cross threads as Python objects, never through the wire format.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Generic, TypeVar

__all__ = ["Doorbell", "Inbox"]

T = TypeVar("T")


class Doorbell:
    """A socket pair: ``ring`` from any thread, the hub's poller watches ``fileno``, ``drain`` rearms it."""

    def __init__(self) -> None:
        self._in: socket.socket | None = None
        self._out: socket.socket | None = None

    def open(self) -> None:
        self._in, self._out = socket.socketpair()
        self._in.setblocking(False)
        self._out.setblocking(False)

    def fileno(self) -> int:
        assert self._in is not None, "open() the doorbell first"
        return self._in.fileno()

    def ring(self) -> None:
        assert self._out is not None, "open() the doorbell first"
        with contextlib.suppress(BlockingIOError):  # the bell is already full: it rings anyway
            self._out.send(b"\0")

    def drain(self) -> None:
        assert self._in is not None, "open() the doorbell first"
        with contextlib.suppress(BlockingIOError):  # drained: it rings again for what comes next
            while self._in.recv(4096):
                pass

    def close(self) -> None:
        for end in (self._in, self._out):
            if end is not None:
                end.close()
        self._in = self._out = None


class Inbox(Generic[T]):
    """Items for the hub thread, in the order they were put, at most ``limit`` waiting.

    ``put`` waits while the inbox is full (the hub thread is that far
    behind): the thread that hands work over is held back rather than any of
    it dropped. It returns False if ``timeout`` passed first; the caller still
    holds the items and tries again (or stops).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._items: list[T] = []
        self.bell = Doorbell()

    def open(self) -> Inbox[T]:
        self.bell.open()
        return self

    def fileno(self) -> int:
        return self.bell.fileno()

    def put(self, items: list[T], timeout: float | None = None) -> bool:
        with self._room:
            if not self._room.wait_for(lambda: len(self._items) < self.limit, timeout):
                return False
            self._items.extend(items)
        self.bell.ring()
        return True

    def take(self) -> list[T]:
        """What waits, in order (the hub thread, when the doorbell rang)."""
        self.bell.drain()
        with self._room:
            items, self._items = self._items, []
            self._room.notify_all()
        return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        self.bell.close()
