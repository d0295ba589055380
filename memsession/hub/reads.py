"""Store reads for the hub, on threads of their own: the ROUTER loop never waits for a store.

A blocking read (a PostgreSQL round trip, a CouchDB request) in the hub
thread would stall every worker's snapshots, reads and pushes behind it. So
``HubState`` hands a key it can't answer to ``StoreReads.submit``, which
queues it (bounded: ``limit`` requests waiting; a GET for a key already
queued joins that read) for ``threads`` reader threads. They call ``load``
and ring a doorbell, a socket the hub's poller watches; the hub thread then
``take``s the results, merges them and sends the replies. Results cross
threads as Python objects, never through the wire format.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from ..session import Record
from .inbox import Doorbell

__all__ = ["READ_LIMIT", "READ_THREADS", "ReadResult", "StoreReads"]

log = logging.getLogger("memsession.hub")

#: Requests that may wait for a store read; past it a GET is left unanswered (the worker asks again).
READ_LIMIT = 1024
#: Reader threads: reads of different keys overlap (a store's connection pool serves them).
READ_THREADS = 2


class ReadResult(NamedTuple):
    """One finished read: what the store had (``ok`` False: it could not be read) and who waits for it."""

    key: str
    record: Record | None
    ok: bool
    waiters: list[tuple[bytes, int]]


class StoreReads:
    """A bounded queue of key reads served by ``threads`` threads calling ``load``. Thread-safe."""

    def __init__(self, load: Callable[[str], Record | None], *, limit: int = READ_LIMIT,
                 threads: int = READ_THREADS, name: str = "memsession-hub-read") -> None:
        self._load = load
        self.limit = limit
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._waiters: dict[str, list[tuple[bytes, int]]] = {}  # key -> (sender, rid), queued or being read
        self._todo: deque[str] = deque()
        self._waiting = 0
        self._done: list[ReadResult] = []
        self._stopping = False
        # Opened by ``start``: an object that never runs holds no file descriptors.
        self._bell = Doorbell()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True) for n in range(threads)]
        #: Bumped under the lock; read by the hub thread for its stats.
        self.counts = dict.fromkeys(("queued", "joined", "full", "loaded", "found", "errors"), 0)

    def fileno(self) -> int:
        """The doorbell the hub's poller watches: readable when results wait for ``take`` (after ``start``)."""
        return self._bell.fileno()

    def start(self) -> StoreReads:
        self._bell.open()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads (a read under way finishes first) and close the doorbell."""
        with self._lock:
            self._stopping = True
            self._work.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)
        self._bell.close()

    def submit(self, sender: bytes, rid: int, key: str) -> bool:
        """Queue a read of ``key`` for ``(sender, rid)``; False if ``limit`` requests already wait."""
        with self._lock:
            if self._waiting >= self.limit or self._stopping:
                self.counts["full"] += 1
                return False
            self._waiting += 1
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.append((sender, rid))
                self.counts["joined"] += 1
                return True
            self._waiters[key] = [(sender, rid)]
            self._todo.append(key)
            self.counts["queued"] += 1
            self._work.notify()
            return True

    def take(self) -> list[ReadResult]:
        """The reads finished since the last call (the hub thread, when the doorbell rang)."""
        self._bell.drain()
        with self._lock:
            done, self._done = self._done, []
        return done

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self.counts)
            out["waiting"] = self._waiting
        out["limit"] = self.limit
        return out

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._todo and not self._stopping:
                    self._work.wait()
                if self._stopping:
                    return
                key = self._todo.popleft()
            try:
                record, ok = self._load(key), True
            except Exception as exc:  # a reader thread that dies would leave every later miss unanswered
                log.error("reading a session back from the store failed: %s", exc)
                record, ok = None, False
            with self._lock:
                # Waiters that joined while the read was under way get this answer too: the replica
                # merges it with whatever reached the hub meanwhile before it replies.
                waiters = self._waiters.pop(key)
                self._waiting -= len(waiters)
                self.counts["loaded" if ok else "errors"] += 1
                self.counts["found"] += record is not None
                self._done.append(ReadResult(key, record, ok, waiters))
            self._bell.ring()  # threads run only after start() opened it
