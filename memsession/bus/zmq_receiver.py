"""The receiving thread of the ZeroMQ bus: SUB from the hub's XPUB, DEALER to its ROUTER.

It merges what other processes changed and runs the repairs: the join (its
own hello coming back proves the subscription is live at the hub, then a
snapshot), a snapshot after a gap, a hub restart or a silence, and pushes of
this process's state to a hub that may lack it.

Each wake-up takes every message already waiting (up to ``_DRAIN_MESSAGES``
and ``_DRAIN_BYTES``) and hands them to ``Replicator.receive_many``, which
merges their sets and destroys under one lock acquisition: a burst costs one
wake-up and one lock round, a message arriving alone what it always did.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import wire
from .base import HELLO, RESYNC, BusConfig, ReplicaTarget, Replicator
from .pushes import push_fields
from .replies import Requests

if TYPE_CHECKING:
    from ..hub.runtime_dir import HubAddresses

__all__ = ["Receiver"]

log = logging.getLogger("memsession.bus")

#: Most messages, and bytes, taken per wake-up before the loop looks at its repairs again.
_DRAIN_MESSAGES = 1000
_DRAIN_BYTES = 4 << 20


class Receiver:
    """The body of a bus's receiving thread (``run``) and the repairs it runs there."""

    def __init__(self, *, config: BusConfig, replicator: Replicator, cache: ReplicaTarget,
                 addresses: HubAddresses, make_socket: Callable[[int], Any], requests: Requests,
                 stop: threading.Event, joined: threading.Event, on_join: Callable[[], None]) -> None:
        self.config = config
        self.replicator = replicator
        self.cache = cache
        self._at = addresses
        self._socket = make_socket
        self._requests = requests
        self._stop = stop
        self._joined = joined
        self._on_join = on_join

    def run(self) -> None:
        import zmq

        sub = self._socket(zmq.SUB)
        sub.rcvhwm = self.config.rcvhwm
        sub.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL_FAMILY)
        dealer = self._socket(zmq.DEALER)
        rep = self.replicator
        stop = self._stop
        joined = self._joined
        try:
            sub.connect(self._at.subscribe)
            dealer.connect(self._at.requests)
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            poll = poller.poll
            recv = sub.recv_multipart
            receive_many = rep.receive_many
            hello_seen = False
            while not stop.is_set():
                if not joined.is_set() and hello_seen:
                    if self.repair(dealer, push=False):
                        self._on_join()  # before ``attach`` returns: its caller's first change goes out at once
                        joined.set()
                        log.info("joined the bus (%s)", self.config.subscribe)
                    else:
                        hello_seen = False  # hub not answering yet: prove the path again later
                elif rep.repair_due and joined.is_set() and not rep.silent():
                    self.repair(dealer, push=rep.push_due)
                if not poll(50):  # no hub heard lately, or ever: its directory may be a new one
                    self._at.follow_if(rep.silent() or rep.last_hub_beat is None, time.monotonic())
                    continue
                drained: list[list[bytes]] = []
                size = 0
                # Whether more waits is asked of the poller: cheaper than a receive that raises Again,
                # which a message arriving alone would otherwise pay for every time.
                while len(drained) < _DRAIN_MESSAGES and size < _DRAIN_BYTES:
                    try:
                        frames = recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    drained.append(frames)
                    size += sum(len(frame) for frame in frames)
                    if not poll(0):
                        break
                verdicts = receive_many(drained)
                if HELLO in verdicts:
                    hello_seen = True
                if RESYNC in verdicts:
                    self.push_state(dealer)  # one push answers every request drained with it
        except zmq.ZMQError as exc:
            if not stop.is_set():
                log.error("bus receiver stopped: %s", exc)
        finally:
            sub.close(linger=0)
            dealer.close(linger=0)

    def repair(self, dealer: Any, *, push: bool) -> bool:
        """Push our state if the hub may have lost it, then splice in a fresh snapshot."""
        rep = self.replicator
        if push and not self.push_state(dealer):
            return False
        requests = self._requests
        rid = requests.next_rid()
        dealer.send_multipart(wire.encode_request(wire.SNAPSHOT, rid))
        replies = requests.collect(dealer, rid, wire.END, time.monotonic() + self.config.request_timeout)
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

    def push_state(self, dealer: Any) -> bool:
        """Hand the hub every record we hold (after a hub restart or a resync request)."""
        requests = self._requests
        for fields in push_fields(self.replicator):
            rid = requests.next_rid()
            dealer.send_multipart(wire.encode_request(wire.PUSH, rid, *fields))
            if requests.collect(dealer, rid, wire.ACK, time.monotonic() + self.config.request_timeout) is None:
                log.warning("push of local state to %s timed out", self.config.requests)
                return False
        self.replicator.push_due = False
        return True
