"""The ZeroMQ bus: PUB to the hub's XSUB, SUB from its XPUB, DEALER to its ROUTER.

Two background threads per process, each owning its sockets:

* sender: drains the bounded queue of local changes into the PUB (the request
  thread only appends and signals), sends heartbeats and hellos;
* receiver: reads the SUB, merges remote changes into the cache, and runs
  repairs over the DEALER (snapshot, push of local state).

Joining: the receiver subscribes, waits until its own hello comes back
(proof that the subscription is live at the hub), then takes a snapshot; only
then does ``attach`` return. If the hub is not there, ``attach`` returns after
``request_timeout`` and the receiver keeps trying in the background.

Fork safety: nothing ZeroMQ exists until ``attach``. A child forked after that
gets a fresh context, fresh threads, a new origin id and a new stream; the
parent's sockets are left untouched in the child.
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
from .base import HELLO, RESYNC, BusConfig, Clear, ReplicaTarget, Replicator
from .replies import collect_replies

__all__ = ["ZmqBus"]

log = logging.getLogger("memsession.bus")

_INHERITED: list[Any] = []  # objects inherited across fork: never closed or collected in the child
_PUSH_BATCH = 1000
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
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._queue_dropped = 0
        self._rid = 0
        self._rid_lock = threading.Lock()
        self._sent_hello = 0.0
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
        queue = self._queue
        if len(queue) >= self.config.queue_size:
            # Dropped before it is numbered (no receiver sees a gap): it stays here and in our store.
            self._queue_dropped += 1
            log_refusal(log, "bus send queue full: a change was not sent", self._queue_dropped,
                        f"queue_size={self.config.queue_size}")
            return
        queue.append(record if packed is None else (record, packed))
        if len(queue) == 1:
            # Only the first change after the sender drained needs to wake it; later ones
            # join the batch it is about to take (it re-checks the queue before waiting).
            self._wake.set()

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
        self._ctx = zmq.Context()
        self.replicator = Replicator(self._cache, self.config, clock=getattr(self._cache, "clock", SYSTEM_CLOCK))
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._threads = [
            threading.Thread(target=self._sender, name="memsession-bus-send", daemon=True),
            threading.Thread(target=self._receiver, name="memsession-bus-recv", daemon=True),
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
        self._queue = deque()
        self._wake = threading.Event()
        cache = self._cache
        if cache is not None:
            cache.origin = secrets.randbits(63) or 1  # two processes must never share an origin
            self._start()

    # -- threads ------------------------------------------------------------------------

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
        send = pub.send_multipart
        drop_rate = self.config.fault_drop_rate
        rng = random.Random()
        heartbeat = self.config.heartbeat
        try:
            pub.connect(self._at.publish)
            if writer is not None:
                writer.connect(self._at.requests)
            next_beat = time.monotonic()
            while True:
                while queue:
                    # Everything queued by now goes out, up to _SEND_BATCH changes a message:
                    # batching only what is already waiting never delays a change.
                    batch = [queue.popleft() for _ in range(min(len(queue), _SEND_BATCH))]
                    written = self._write(writer, batch) if writer is not None else False
                    if drop_rate:  # fault injection: one change a message, so each can be lost alone
                        for item in batch:
                            frames = rep.outgoing(item, full=not written)
                            if rng.random() >= drop_rate:
                                send(frames)
                        continue
                    send(rep.outgoing_batch(batch, full=not written))
                if stop.is_set():
                    break
                now = time.monotonic()
                if not self._joined.is_set() and now - self._sent_hello >= 0.02:
                    self._sent_hello = now
                    send(rep.hello())
                if now >= next_beat:
                    send(rep.heartbeat())
                    next_beat = now + heartbeat
                wake.wait(0.02 if not self._joined.is_set() else max(0.0, next_beat - now))
                wake.clear()
        except zmq.ZMQError as exc:
            log.error("bus sender stopped: %s", exc)
        finally:
            # An orderly close flushes what is already in the PUB's pipe; a dead hub costs at most this.
            pub.close(linger=500)
            if writer is not None:
                writer.close(linger=0)

    def _write(self, writer: Any, batch: list[Any]) -> bool:
        """``invalidate`` mode: hand new values to the hub and wait for its ACK before announcing them."""
        rep = self.replicator
        assert rep is not None
        records = [item[0] if type(item) is tuple else item for item in batch]
        values = [wire.record_to_list(r) for r in records if type(r) is Record and rep.needs_write(r)]
        if not values:
            return True
        rid = self._next_rid()
        writer.send_multipart(wire.encode_request(wire.WRITE, rid, values))
        if self._collect(writer, rid, wire.ACK, time.monotonic() + self.config.request_timeout) is None:
            rep.counts["write_failures"] += 1
            log.warning("hub did not acknowledge %d writes; sending the values on the bus instead", len(values))
            return False
        return True

    def _receiver(self) -> None:
        import zmq

        sub = self._socket(zmq.SUB)
        sub.rcvhwm = self.config.rcvhwm
        sub.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL_FAMILY)
        dealer = self._socket(zmq.DEALER)
        rep = self.replicator
        assert rep is not None
        stop = self._stop
        try:
            sub.connect(self._at.subscribe)
            dealer.connect(self._at.requests)
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            recv = sub.recv_multipart
            receive = rep.receive
            hello_seen = False
            while not stop.is_set():
                if not self._joined.is_set() and hello_seen:
                    if self._repair(dealer, push=False):
                        self._joined.set()
                        log.info("joined the bus (%s)", self.config.subscribe)
                        self._wake.set()
                    else:
                        hello_seen = False  # hub not answering yet: prove the path again later
                elif rep.repair_due and self._joined.is_set() and not rep.silent():
                    push = rep.repair_reason in ("hub restart", "silence")
                    self._repair(dealer, push=push)
                if not poller.poll(50):  # no hub heard lately, or ever: its directory may be a new one
                    self._at.follow_if(rep.silent() or rep.last_hub_beat is None, time.monotonic())
                    continue
                for _ in range(1000):
                    try:
                        frames = recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        verdict = receive(frames)
                    except Exception as exc:  # replication is best-effort: never lose the receiver
                        log.exception("failed to apply a bus message")
                        rep.drop("error", exc)
                        continue
                    if verdict == HELLO:
                        hello_seen = True
                    elif verdict == RESYNC:
                        self._push_state(dealer)
        except zmq.ZMQError as exc:
            if not stop.is_set():
                log.error("bus receiver stopped: %s", exc)
        finally:
            sub.close(linger=0)
            dealer.close(linger=0)

    # -- requests ---------------------------------------------------------------------

    def _next_rid(self) -> int:
        with self._rid_lock:
            self._rid += 1
            return self._rid

    def _collect(self, dealer: Any, rid: int, until: str, deadline: float) -> list[wire.Reply] | None:
        """Replies to ``rid`` up to the one with op ``until``; None on timeout."""
        rep = self.replicator
        return collect_replies(dealer, rid, until, deadline, stop=self._stop, limits=self.config.limits,
                               malformed=rep.drop if rep is not None else None)

    def _repair(self, dealer: Any, *, push: bool) -> bool:
        """Push our state if the hub may have lost it, then splice in a fresh snapshot."""
        rep = self.replicator
        assert rep is not None
        if push and not self._push_state(dealer):
            return False
        rid = self._next_rid()
        dealer.send_multipart(wire.encode_request(wire.SNAPSHOT, rid))
        replies = self._collect(dealer, rid, wire.END, time.monotonic() + self.config.request_timeout)
        if replies is None:
            log.warning("snapshot request to %s timed out", self.config.requests)
            return False
        end = replies[-1]
        hub_epoch, vector, chunks, count, cleared = end.body
        records, refused = rep.snapshot_records(replies[:-1])
        if len(replies) - 1 != chunks or len(records) + refused != count:
            rep.drop("incomplete snapshot")
            return False
        changed = rep.install_snapshot(records, vector, hub_epoch, cleared)
        log.info("snapshot of %d sessions from hub %x applied (%d changed here)", count, hub_epoch, changed)
        return True

    def _push_state(self, dealer: Any) -> bool:
        """Hand the hub every record we hold (after a hub restart or a resync request)."""
        cache = self._cache
        assert cache is not None
        records = cache.records()
        # One push even of nothing: it carries the clear watermark.
        for batch in list(wire.record_lists(records, _PUSH_BATCH, self.config.limits.max_stamps)) or [[]]:
            rid = self._next_rid()
            dealer.send_multipart(wire.encode_request(wire.PUSH, rid, batch, cache.cleared))
            if self._collect(dealer, rid, wire.ACK, time.monotonic() + self.config.request_timeout) is None:
                log.warning("push of local state to %s timed out", self.config.requests)
                return False
        return True

    def _request(self, op: str, *fields: Any, timeout: float | None = None) -> list[wire.Reply] | None:
        """One request/reply from the calling thread over a short-lived DEALER."""
        import zmq

        if self._closed or self._ctx is None or self._pid != os.getpid():
            return None
        until = {wire.GET: wire.RECORD, wire.STATS: wire.STATS_REPLY}[op]
        rid = self._next_rid()
        dealer = self._socket(zmq.DEALER)
        try:
            dealer.connect(self._at.requests)
            dealer.send_multipart(wire.encode_request(op, rid, *fields))
            wait = self.config.request_timeout if timeout is None else timeout
            return self._collect(dealer, rid, until, time.monotonic() + wait)
        except zmq.ZMQError as exc:
            log.warning("hub request failed: %s", exc)
            return None
        finally:
            dealer.close(linger=0)
