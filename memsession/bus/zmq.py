"""The ZeroMQ bus: PUB to the hub's XSUB, SUB from its XPUB, DEALER to its ROUTER.

Sending. A change is sent by the thread that made it, at once: ``publish``
takes the send lock without waiting, numbers the change, encodes it and
hands it to ZeroMQ, whose own I/O thread writes it, so a change made alone
wakes no thread of ours on its way out. When the lock is held (another
thread is sending) or changes are already waiting, the change is queued
instead, and the sender thread sends what waits, up to 256 changes in one
BATCH message: batching only what already waits never delays a change. The
sender thread also sends the heartbeats and hellos, and in ``invalidate`` mode
every change (its WRITE waits for the hub's ACK, which a request must not).

Order and numbers. A change goes out directly only if nothing is queued while
the lock is held, and the queue is drained only under the lock, so a change
leaves after every change queued before it; numbers are taken under the lock,
so the stream stays gapless whichever thread sends. The PUB is made in the
sender thread and used by the calling threads only under the lock: ZeroMQ
sockets are not thread-safe, but may pass between threads with a full memory
barrier, which taking and releasing a lock is.

Receiving (``zmq_receiver``): the receiver thread reads the SUB, merges remote
changes into the cache, and runs repairs over the DEALER (snapshot, push of
local state).

Joining: the receiver subscribes, waits until its own hello comes back
(proof that the subscription is live at the hub), then takes a snapshot; only
then does ``attach`` return. If the hub is not there, ``attach`` returns after
``request_timeout`` and the receiver keeps trying in the background.

Fork safety: nothing ZeroMQ exists until ``attach``. A child forked after that
gets a fresh context, fresh threads, locks and queue, a new origin id and a
new stream; the parent's sockets are left untouched in the child.

Closing flushes: the sender thread sends what is queued, then closes the PUB
with a linger, so what is already in its pipe still reaches the hub.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import threading
import time
import weakref
from collections import deque
from typing import Any

from .. import security, wire
from ..clock import SYSTEM_CLOCK
from ..errors import BusError, ConfigError
from ..refusals import log_refusal
from ..session import Record
from .base import BusConfig, Clear, ReplicaTarget, Replicator
from .contract import Outgoing
from .replies import Requests
from .zmq_receiver import Receiver

__all__ = ["ZmqBus"]

log = logging.getLogger("memsession.bus")

_INHERITED: list[Any] = []  # objects inherited across fork: never closed or collected in the child
#: Most changes in one BATCH message (1 KB sessions: ~256 KB, well inside ``Limits.max_frame``).
_SEND_BATCH = 256


class ZmqBus:
    """Replication over a memsession hub. ``ZmqBus(config=None, **BusConfig options)``."""

    def __init__(self, config: BusConfig | None = None, **options: Any) -> None:
        if config is None:
            if not options.get("publish"):
                from ..hub import HubConfig

                pub, sub, req = HubConfig(runtime_dir=options.pop("runtime_dir", "")).endpoints()
                options.setdefault("publish", pub)
                options.setdefault("subscribe", sub)
                options.setdefault("requests", req)
            config = BusConfig(**options)
        elif options:
            raise ConfigError("options", sorted(options), "give a BusConfig or options, not both")
        if not (config.publish and config.subscribe and config.requests):
            raise ConfigError("publish", config.publish, "the bus needs all three hub endpoints")
        self.config = config
        self._curve = security.client_policy(config, (config.publish, config.subscribe, config.requests))
        self._at = config.addresses()  # ipc endpoints inside their directory, checked here and held
        self._cache: ReplicaTarget | None = None
        self.replicator: Replicator | None = None
        self._pid = 0
        self._ctx: Any = None
        self._zmq: Any = None  # the pyzmq module, once attached (nothing imports it before)
        self._new_sending_state()
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._requests: Requests | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._queue_dropped = 0
        self._send_errors = 0
        self._queued_sends = 0
        self._sent_hello = 0.0
        self._drop_rate = config.fault_drop_rate
        self._rng = random.Random()  # fault injection only
        self.reads_through = config.mode == "invalidate"
        ref = weakref.ref(self)

        def after_fork_in_child() -> None:
            bus = ref()
            if bus is not None:
                bus._after_fork()

        os.register_at_fork(after_in_child=after_fork_in_child)

    # -- Bus protocol ---------------------------------------------------------------

    def attach(self, cache: ReplicaTarget) -> None:
        if self._cache is not None and self._cache is not cache:
            raise BusError("bus is already attached to another cache")
        self._cache = cache
        self._start()
        if not self._joined.wait(self.config.request_timeout):
            log.warning("no hub answered at %s within %.1fs; replicating once it does",
                        self.config.requests, self.config.request_timeout)

    def publish(self, record: Record | Clear, packed: bytes | None = None) -> None:
        if self._closed:
            return
        # No getpid() check here (a system call per change): a fork runs _after_fork in the child.
        item: Outgoing = (record, packed) if packed is not None and isinstance(record, Record) else record
        queue = self._queue
        lock = self._send_lock
        if not queue and lock.acquire(blocking=False):
            try:
                pub = self._pub
                if pub is not None and not queue:  # nothing waits to go before it: send it now
                    self._send_now(pub, item)
                    return
            finally:
                lock.release()
        if len(queue) >= self.config.queue_size:
            # Dropped before it is numbered (no receiver sees a gap): it stays here and in our store.
            self._queue_dropped += 1
            log_refusal(log, "bus send queue full: a change was not sent", self._queue_dropped,
                        f"queue_size={self.config.queue_size}")
            return
        queue.append(item)
        if len(queue) == 1:
            # Only the first change after the sender drained needs to wake it; later ones
            # join the batch it is about to take (it re-checks the queue before waiting).
            self._wake.set()

    def _send_now(self, pub: Any, item: Outgoing) -> None:
        """Number, encode and send one change from the calling thread (send lock held); never raises.

        A change that fails here was numbered: receivers see the gap, and the
        hub's resync request brings it from this process's state.
        """
        rep = self.replicator
        assert rep is not None
        zmq = self._zmq
        try:
            frames = rep.outgoing(item)
        except Exception:  # a bug, not the bus's trouble: the request that made the change must not fail
            self._send_errors += 1
            log.exception("a change could not be encoded for the bus")
            return
        if self._drop_rate and self._rng.random() < self._drop_rate:
            return  # fault injection: numbered, then lost
        try:
            pub.send_multipart(frames, zmq.NOBLOCK)  # a PUB past its high-water mark drops: a gap
        except zmq.ZMQError as exc:
            self._send_errors += 1
            log_refusal(log, "a change could not be sent on the bus", self._send_errors, exc)

    def fetch(self, key: str, timeout: float | None = None) -> Record | None:
        return self.lookup(key, timeout)[1]

    def lookup(self, key: str, timeout: float | None = None) -> tuple[bool, Record | None]:
        reply = self._request(wire.GET, key, timeout=timeout)
        if reply is None:
            return False, None
        return True, reply[0].body[0]

    def hub_stats(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The hub's own counters, or None if it does not answer."""
        reply = self._request(wire.STATS, timeout=timeout)
        return None if reply is None else reply[0].body[0]

    def hub_settled(self, gather: float) -> bool:
        rep = self.replicator
        return rep is not None and rep.hub_settled(gather)

    def stats(self) -> dict[str, Any]:
        rep = self.replicator
        out: dict[str, Any] = rep.stats() if rep is not None else {}
        out["queue_dropped"] = self._queue_dropped
        out["send_errors"] = self._send_errors
        out["queued_sends"] = self._queued_sends  # changes the sender thread sent; the others went at once
        out["queued"] = len(self._queue)
        out["joined"] = self._joined.is_set()
        return out

    def wait_joined(self, timeout: float) -> bool:
        return self._joined.wait(timeout)

    def close(self) -> None:
        if not self._closed:
            self._hand_over()
            self._closed = True
            self._shutdown()

    def _hand_over(self) -> None:
        """Wait up to ``close_timeout`` for a hub to take what may exist only here (``holds_only_copy``)."""
        rep = self.replicator
        if rep is None or self._pid != os.getpid() or not rep.holds_only_copy():
            return  # (the receiver's repair pushes our state to a new hub)
        if not self._joined.is_set():
            log.warning("closing before any hub answered: what was written here is only where it was persisted")
            return
        deadline = time.monotonic() + self.config.close_timeout
        (log.info if rep.repair_due else log.debug)(
            "waiting up to %.1fs at close for a hub to take this process's changes", self.config.close_timeout)
        while rep.holds_only_copy() and time.monotonic() < deadline and all(t.is_alive() for t in self._threads):
            time.sleep(0.05)
        if rep.holds_only_copy():
            log.warning("closed with no hub to hand over to: what was written since is only where it was persisted")

    def __repr__(self) -> str:
        return f"ZmqBus(publish={self.config.publish!r}, mode={self.config.mode!r})"

    # -- lifecycle --------------------------------------------------------------------

    def _start(self) -> None:
        import zmq

        if self._cache is None:
            raise BusError("bus is not attached to a cache")
        self._pid = os.getpid()
        self._zmq = zmq
        self._ctx = zmq.Context()
        self.replicator = rep = Replicator(self._cache, self.config,
                                           clock=getattr(self._cache, "clock", SYSTEM_CLOCK))
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._requests = Requests(self._stop, self.config.limits, malformed=rep.drop)
        receiver = Receiver(config=self.config, replicator=rep, cache=self._cache, addresses=self._at,
                            make_socket=self._socket, requests=self._requests, stop=self._stop,
                            joined=self._joined, on_join=self._wake.set)
        self._threads = [
            threading.Thread(target=self._sender, name="memsession-bus-send", daemon=True),
            threading.Thread(target=receiver.run, name="memsession-bus-recv", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(10)
        self._threads = []
        if self._ctx is not None and self._pid == os.getpid():
            self._ctx.term()
        self._ctx = None

    def _after_fork(self) -> None:
        if self._ctx is None or self._closed:
            return
        # The parent's context and sockets belong to the parent: keep them alive, unused.
        _INHERITED.append(self._ctx)
        self._ctx = None
        self._threads = []
        self._new_sending_state()  # the parent's lock may have been held by one of its threads
        cache = self._cache
        if cache is not None:
            cache.origin = secrets.randbits(63) or 1  # two processes must never share an origin
            self._start()

    # -- threads ------------------------------------------------------------------------

    def _new_sending_state(self) -> None:
        """The queue, the send lock and the sender's wake-up, fresh (at construction and in a forked child)."""
        self._queue: deque[Outgoing] = deque()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        #: The sender thread's PUB while calling threads may send on it (under ``_send_lock``); else None.
        self._pub: Any = None

    def _socket(self, kind: int) -> Any:
        sock = self._ctx.socket(kind)
        sock.linger = 0
        if self._curve is not None:
            self._curve.client(sock)
        return sock

    def _sender(self) -> None:
        import zmq

        pub = self._socket(zmq.PUB)
        pub.sndhwm = self.config.sndhwm
        # Copy batches into ZeroMQ (a memcpy) rather than lend them zero-copy: lending a large
        # frame starts pyzmq's garbage thread, which competes with the request threads.
        pub.copy_threshold = self.config.limits.max_frame
        writer = self._socket(zmq.DEALER) if self.config.mode == "invalidate" else None
        rep = self.replicator
        assert rep is not None
        queue = self._queue
        wake = self._wake
        stop = self._stop
        lock = self._send_lock
        heartbeat = self.config.heartbeat
        try:
            pub.connect(self._at.publish)
            if writer is not None:
                writer.connect(self._at.requests)  # every change goes through this thread (its WRITE)
            else:
                with lock:
                    self._pub = pub  # from now on a change may go out from the thread that made it
            next_beat = time.monotonic()
            while True:
                if queue:
                    with lock:
                        self._send_queued(pub, writer)
                if stop.is_set():
                    break
                now = time.monotonic()
                joined = self._joined.is_set()
                hello = not joined and now - self._sent_hello >= 0.02
                if hello or now >= next_beat:
                    with lock:  # after every change numbered before it: a beat carries the last number
                        if hello:
                            self._sent_hello = now
                            pub.send_multipart(rep.hello())
                        if now >= next_beat:
                            pub.send_multipart(rep.heartbeat())
                            next_beat = now + heartbeat
                wake.wait(0.02 if not joined else max(0.0, next_beat - now))
                wake.clear()
        except zmq.ZMQError as exc:
            log.error("bus sender stopped: %s", exc)
        finally:
            with lock:
                self._pub = None  # no calling thread sends on it any more; what comes later is queued
            # An orderly close flushes what is already in the PUB's pipe; a dead hub costs at most this.
            pub.close(linger=500)
            if writer is not None:
                writer.close(linger=0)

    def _send_queued(self, pub: Any, writer: Any) -> None:
        """Everything queued by now goes out, up to ``_SEND_BATCH`` changes a message (send lock held)."""
        rep = self.replicator
        assert rep is not None
        queue = self._queue
        send = pub.send_multipart
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), _SEND_BATCH))]
            self._queued_sends += len(batch)
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
        rep = self.replicator
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

    # -- requests ---------------------------------------------------------------------

    def _request(self, op: str, *fields: Any, timeout: float | None = None) -> list[wire.Reply] | None:
        """One request/reply from the calling thread over a short-lived DEALER."""
        import zmq

        requests = self._requests
        if self._closed or self._ctx is None or self._pid != os.getpid() or requests is None:
            return None
        until = {wire.GET: wire.RECORD, wire.STATS: wire.STATS_REPLY}[op]
        rid = requests.next_rid()
        dealer = self._socket(zmq.DEALER)
        try:
            dealer.connect(self._at.requests)
            dealer.send_multipart(wire.encode_request(op, rid, *fields))
            wait = self.config.request_timeout if timeout is None else timeout
            return requests.collect(dealer, rid, until, time.monotonic() + wait)
        except zmq.ZMQError as exc:
            log.warning("hub request failed: %s", exc)
            return None
        finally:
            dealer.close(linger=0)
