"""The ZeroMQ bus: PUB to the hub's XSUB, SUB from its XPUB, DEALER to its ROUTER.

Sending (``zmq_sender``): a change made while the bus is quiet goes out from
the thread that made it, at once, under the send lock, so a change made
alone wakes no thread of ours; under a stream of changes (or while another
thread sends) they are queued, and the sender thread sends what waits in
BATCH messages. The sender thread also sends heartbeats and hellos. Numbers
are taken under the lock: the stream stays gapless whichever thread sends.

Receiving (``zmq_receiver``): the receiver thread reads the SUB, merges remote
changes into the cache, and runs repairs over the DEALER (snapshot, push of
local state).

Joining: the receiver subscribes, waits until its own hello comes back
(proof that the subscription is live at the hub), then takes a snapshot; only
then does ``attach`` return. If the hub is not there, ``attach`` returns after
``request_timeout`` and the receiver keeps trying in the background. Changes
made before the join (in a child right after a fork, or while no hub is
there) wait in the send queue until it: a PUB the hub's subscription has not
reached yet drops what it is given.

Fork safety: nothing ZeroMQ exists until ``attach``. A child forked after that
gets a fresh context, fresh threads, locks and queue, a new origin id and a
new stream; the parent's sockets are left untouched in the child.

Closing flushes: the sender thread sends what is queued, then closes the PUB
with a linger, so what is already in its pipe still reaches the hub.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import weakref
from typing import Any

from .. import security, wire
from ..clock import SYSTEM_CLOCK
from ..errors import BusError, ConfigError
from ..session import Record
from .base import BusConfig, Clear, ReplicaTarget, Replicator
from .pushes import sendable
from .replies import Requests
from .zmq_receiver import Receiver
from .zmq_sender import Sender

__all__ = ["ZmqBus"]

log = logging.getLogger("memsession.bus")

_INHERITED: list[Any] = []  # objects inherited across fork: never closed or collected in the child


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
        self._sending = Sender(config)
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._requests: Requests | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.reads_through = config.mode == "invalidate" or config.read_through
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
        if isinstance(record, Record):
            rep = self.replicator
            if record.partial and rep is not None:
                record, packed = sendable(rep, record, packed)
            self._sending.publish((record, packed) if packed is not None else record)
        else:
            self._sending.publish(record)

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
        sending = self._sending
        out["queue_dropped"] = sending.dropped
        out["send_errors"] = sending.errors
        out["queued_sends"] = sending.queued_sends  # changes the sender thread sent; the others went at once
        out["queued"] = len(sending.queue)
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
        self.replicator = rep = Replicator(self._cache, self.config,
                                           clock=getattr(self._cache, "clock", SYSTEM_CLOCK))
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._requests = Requests(self._stop, self.config.limits, malformed=rep.drop)
        receiver = Receiver(config=self.config, replicator=rep, cache=self._cache, addresses=self._at,
                            make_socket=self._socket, requests=self._requests, stop=self._stop,
                            joined=self._joined, on_join=self._sending.open_direct)
        sending = {"replicator": rep, "make_socket": self._socket, "addresses": self._at,
                   "requests": self._requests, "stop": self._stop, "joined": self._joined}
        self._threads = [
            threading.Thread(target=self._sending.run, kwargs=sending, name="memsession-bus-send", daemon=True),
            threading.Thread(target=receiver.run, name="memsession-bus-recv", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _shutdown(self) -> None:
        self._stop.set()
        self._sending.wake()
        for thread in self._threads:
            thread.join(10)
        self._threads = []
        if self._sending.queue:  # made by a thread racing close(), after the sender's last look
            log.warning("%d changes made while the bus closed were not sent", len(self._sending.queue))
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
        self._sending = Sender(self.config)  # the parent's lock may have been held by one of its threads
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
