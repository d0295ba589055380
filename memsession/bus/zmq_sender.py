"""The sending half of the ZeroMQ bus: one PUB, shared by the calling threads and the sender thread.

A change made while the bus is quiet is sent by the thread that made it, at
once: ``publish`` takes the send lock without waiting, numbers the change,
encodes it and hands it to ZeroMQ, whose own I/O thread writes it, so a
change made alone wakes no thread of ours on its way out. Otherwise (the lock
is held, changes are already waiting, or one went out less than ``_QUIET``
ago) the change is queued and the sender thread sends what waits, up to 256
changes in one BATCH message: under a stream of changes one wake-up of that
thread carries many, and each costs every hop less than a message of its own.
Batching only what already waits never delays a change beyond that thread's
wake-up. The sender thread also sends the heartbeats and hellos, and in
``invalidate`` mode every change (its WRITE waits for the hub's ACK, which a
request must not).

Order and numbers. A change goes out directly only if nothing is queued while
the lock is held, and the queue is drained only under the lock, so a change
leaves after every change queued before it; numbers are taken, and heartbeats
(which carry the last one) sent, under the lock, so the stream stays gapless
whichever thread sends. The PUB is made in the sender thread and used by the
calling threads only under the lock: ZeroMQ sockets are not thread-safe, but
may pass between threads with a full memory barrier, which taking and
releasing a lock is.

Closing flushes: the sender thread sends what is queued, then closes the PUB
with a linger, so what is already in its pipe still reaches the hub.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import wire
from ..refusals import log_refusal
from ..session import Record
from .base import BusConfig, Replicator
from .contract import Outgoing
from .replies import Requests

if TYPE_CHECKING:
    from ..hub.runtime_dir import HubAddresses

__all__ = ["Sender"]

log = logging.getLogger("memsession.bus")

#: Most changes in one BATCH message (1 KB sessions: ~256 KB, well inside ``Limits.max_frame``).
_SEND_BATCH = 256
#: A change that follows the last one sent by less than this (seconds) is queued for the sender thread.
_QUIET = 50e-6


class Sender:
    """The queue, the send lock and the PUB of one bus in one process; ``run`` is the sender thread's body.

    Made with the bus (changes published before it starts wait in the queue)
    and again in a forked child, whose parent's lock may have been held by
    one of the parent's threads.
    """

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.queue: deque[Outgoing] = deque()
        #: Whoever holds it may number changes and send on the PUB.
        self.lock = threading.Lock()
        self._wake = threading.Event()
        #: The sender thread's PUB while calling threads may send on it (under ``lock``); else None.
        self._pub: Any = None
        self._joinable: Any = None
        #: When (monotonic) a change last went out.
        self._last_sent = 0.0
        self._sent_hello = 0.0
        self._drop_rate = config.fault_drop_rate
        self._rng = random.Random()  # fault injection only
        self._zmq: Any = None
        self._replicator: Replicator | None = None
        self._requests: Requests | None = None
        self.dropped = 0
        self.errors = 0
        #: Changes the sender thread sent; the others went out from the thread that made them.
        self.queued_sends = 0

    def wake(self) -> None:
        self._wake.set()

    def open_direct(self) -> None:
        """The bus has joined (called before ``attach`` returns): from now on a change made while the
        bus is quiet goes out from the thread that made it; what was queued before goes first."""
        with self.lock:
            if self._joinable is not None:
                self._pub = self._joinable
        self._wake.set()

    def publish(self, item: Outgoing) -> None:
        """Send ``item`` now if the bus is quiet, else queue it for the sender thread; never blocks or raises."""
        queue = self.queue
        lock = self.lock
        now = time.monotonic()
        if not queue and now - self._last_sent >= _QUIET and lock.acquire(blocking=False):
            try:
                pub = self._pub
                if pub is not None and not queue:  # nothing waits to go before it: send it now
                    self._last_sent = now
                    self._send_now(pub, item)
                    return
            finally:
                lock.release()
        if len(queue) >= self.config.queue_size:
            # Dropped before it is numbered (no receiver sees a gap): it stays here and in our store.
            self.dropped += 1
            log_refusal(log, "bus send queue full: a change was not sent", self.dropped,
                        f"queue_size={self.config.queue_size}")
            return
        queue.append(item)
        if len(queue) == 1:
            # Only the first change after the sender drained needs to wake it; later ones
            # join the batch it is about to take (it re-checks the queue before waiting).
            self._wake.set()

    def _send_now(self, pub: Any, item: Outgoing) -> None:
        """Number, encode and send one change from the calling thread (lock held); never raises.

        A change that fails here was numbered: receivers see the gap, and the
        hub's resync request brings it from this process's state.
        """
        rep = self._replicator
        assert rep is not None
        try:
            frames = rep.outgoing(item)
        except Exception:  # a bug, not the bus's trouble: the request that made the change must not fail
            self.errors += 1
            log.exception("a change could not be encoded for the bus")
            return
        if self._drop_rate and self._rng.random() < self._drop_rate:
            return  # fault injection: numbered, then lost
        zmq = self._zmq
        topic, payload = frames
        try:
            # Two sends rather than send_multipart, whose checks cost a paced caller as much again;
            # a PUB past its high-water mark drops (a gap the receivers repair), it never blocks.
            pub.send(topic, zmq.SNDMORE | zmq.NOBLOCK)
            pub.send(payload, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.errors += 1
            log_refusal(log, "a change could not be sent on the bus", self.errors, exc)

    def run(self, *, replicator: Replicator, make_socket: Callable[[int], Any], addresses: HubAddresses,
            requests: Requests, stop: threading.Event, joined: threading.Event) -> None:
        """The sender thread: makes the PUB, sends what is queued, the hellos and the heartbeats, until ``stop``."""
        import zmq

        self._zmq = zmq
        self._replicator = rep = replicator
        self._requests = requests
        pub = make_socket(zmq.PUB)
        pub.sndhwm = self.config.sndhwm
        # Copy batches into ZeroMQ (a memcpy) rather than lend them zero-copy: lending a large
        # frame starts pyzmq's garbage thread, which competes with the request threads.
        pub.copy_threshold = self.config.limits.max_frame
        writer = make_socket(zmq.DEALER) if self.config.mode == "invalidate" else None
        queue = self.queue
        wake = self._wake
        lock = self.lock
        heartbeat = self.config.heartbeat
        try:
            pub.connect(addresses.publish)
            if writer is not None:
                writer.connect(addresses.requests)  # every change goes through this thread (its WRITE)
            else:
                with lock:
                    self._joinable = pub  # calling threads may send on it once the bus joins (``open_direct``)
            next_beat = time.monotonic()
            while True:
                # Changes wait for the join: until our hello has come back, the hub's subscription
                # may not have reached our PUB, which then drops what it is given (a change made
                # right after a fork would be lost with no one to see the gap).
                is_joined = joined.is_set()
                if queue and (is_joined or stop.is_set()):
                    with lock:
                        self._send_queued(pub, writer)
                if stop.is_set():
                    break
                now = time.monotonic()
                hello = not is_joined and now - self._sent_hello >= 0.02
                if hello or now >= next_beat:
                    with lock:  # after every change numbered before it: a beat carries the last number
                        if hello:
                            self._sent_hello = now
                            pub.send_multipart(rep.hello())
                        if now >= next_beat:
                            pub.send_multipart(rep.heartbeat())
                            next_beat = now + heartbeat
                wake.wait(0.02 if not is_joined else max(0.0, next_beat - now))
                wake.clear()
        except zmq.ZMQError as exc:
            log.error("bus sender stopped: %s", exc)
        finally:
            with lock:
                self._pub = self._joinable = None  # no calling thread sends on it any more; what comes later is queued
            # An orderly close flushes what is already in the PUB's pipe; a dead hub costs at most this.
            pub.close(linger=500)
            if writer is not None:
                writer.close(linger=0)

    def _send_queued(self, pub: Any, writer: Any) -> None:
        """Everything queued by now goes out, up to ``_SEND_BATCH`` changes a message (lock held)."""
        rep = self._replicator
        assert rep is not None
        queue = self.queue
        send = pub.send_multipart
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), _SEND_BATCH))]
            self.queued_sends += len(batch)
            self._last_sent = time.monotonic()
            written = self._write(writer, batch) if writer is not None else False
            if self._drop_rate:  # fault injection: one change a message, so each can be lost alone
                for item in batch:
                    frames = rep.outgoing(item, full=not written)
                    if self._rng.random() >= self._drop_rate:
                        send(frames)
                continue
            send(rep.outgoing_batch(batch, full=not written))

    def _write(self, writer: Any, batch: list[Outgoing]) -> bool:
        """``invalidate`` mode: hand new values to the hub and wait for its ACK before announcing them."""
        rep = self._replicator
        requests = self._requests
        assert rep is not None and requests is not None
        records = [item[0] if type(item) is tuple else item for item in batch]
        values = [wire.record_to_list(r) for r in records if type(r) is Record and rep.needs_write(r)]
        if not values:
            return True
        rid = requests.next_rid()
        writer.send_multipart(wire.encode_request(wire.WRITE, rid, values))
        if requests.collect(writer, rid, wire.ACK, time.monotonic() + self.config.request_timeout) is None:
            rep.counts["write_failures"] += 1
            log.warning("hub did not acknowledge %d writes; sending the values on the bus instead", len(values))
            return False
        return True
