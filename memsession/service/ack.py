"""Acknowledged mode: a save returns once the sidecar says the version is in the store.

Use it as the store of a write-through ``SessionCache``; the value still
travels over the bus as usual, and ``set()`` / ``destroy()`` return only
when the sidecar has written that version (or a newer one) to its store::

    cache = SessionCache(bus=ZmqBus(runtime_dir=d),
                         persistence=Persistence(SidecarAckStore(runtime_dir=d), mode="write_through"))

``SidecarAckStore.save`` first hands the records to the hub (a PUSH request,
so they are queued for writing even if the bus dropped a message), then asks
the sidecar's ack socket to answer once every one is durable. A record the
sidecar's store refused raises ``StoreRejected``.

A sidecar restart (killed, then started again by the gunicorn master) is
ridden out: when the connection to the sidecar drops while a save is in
flight (``memsession.service.ack_link``), the PUSH and the ack request are
both sent again, to the sidecar that replaces it, and the save succeeds once
that one has stored the records. ``timeout`` (``DEFAULT_TIMEOUT``, 15 s) is
the deadline of the whole call, resends included. Past it ``StoreUnavailable``
is raised: the write-through caller (the request) sees the error, the value
is already in memory and on the bus, and the persistence layer queues the
record and keeps saving it in the background (``Writer.save_now``) until a
sidecar confirms it.

Ack socket frames (DEALER -> sidecar ROUTER, one msgpack frame each way)::

    request  [rid, [[key, version, origin, accessed], ...], timeout_ms]
    reply    [rid, [key, ...], [key, ...]]   not durable within timeout_ms; refused by the store

A wanted record is durable once the sidecar's write-behind queue holds
nothing of its key, no rewrite is pending (``WriteQueue.settled``) and the
sidecar's replica holds that version or a newer one (a sidecar that never got
the PUSH, because the one before it took it and died, holds only what its
store holds). The sidecar's half is ``memsession.service.ack_server``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgpack

from persist.base import check_clear_version

from ..errors import BusError, ConfigError, StoreClosed, StoreError, StoreRejected, StoreUnavailable
from ..session import Record
from ..validate import check_number
from .ack_link import Link, PeerGone
from .ack_server import MAX_WAIT_MS

__all__ = ["DEFAULT_TIMEOUT", "SidecarAckStore", "default_ack_endpoint"]

log = logging.getLogger("memsession.ack")

#: A client's deadline per call, resends included (``SidecarAckStore(timeout=...)``): a sidecar
#: restart (the gunicorn master notices within 0.5 s, a new one loads the store) fits with margin,
#: and it stays well below gunicorn's 30 s worker timeout.
DEFAULT_TIMEOUT = 15.0
#: How long past its deadline a client waits for the sidecar's own "not stored in time" answer.
ACK_GRACE = 1.0
#: How often a client waiting for an ack looks at the hub socket's connection.
WATCH_SLICE = 0.1


def default_ack_endpoint(runtime_dir: str) -> str:
    return f"ipc://{os.path.join(runtime_dir, 'ack.sock')}"


class SidecarAckStore:
    """A "store" that is the sidecar: save returns once the sidecar stored the records.

    ``runtime_dir`` (ipc), or ``requests`` (the hub's ROUTER) and ``ack``
    (the sidecar's ack endpoint) with ``keys`` for tcp + CURVE. ``load``
    reads through the hub; ``purge`` is the sidecar's job (returns 0).
    ``timeout``: the deadline of one call, resends included (see the module docstring).
    """

    name = "sidecar"

    def __init__(self, runtime_dir: str | None = None, *, requests: str | None = None, ack: str | None = None,
                 keys: str | None = None, insecure: bool = False, timeout: float = DEFAULT_TIMEOUT) -> None:
        from ..hub import HubConfig

        if runtime_dir is not None:
            requests = requests or HubConfig(runtime_dir=runtime_dir).endpoints()[2]
            ack = ack or default_ack_endpoint(runtime_dir)
        if not requests or not ack:
            raise ConfigError("ack", ack, "give runtime_dir, or both requests and ack endpoints")
        check_number("timeout", timeout)
        if timeout * 1000 > MAX_WAIT_MS:
            raise ConfigError("timeout", timeout, f"at most {MAX_WAIT_MS // 1000} s (what a sidecar waits for)")
        self.requests = requests
        self.ack = ack
        self.keys = keys
        self.insecure = insecure
        self.timeout = timeout
        from .. import security

        config = HubConfig(publish=requests, subscribe=requests, requests=requests, keys=keys, insecure=insecure)
        self._curve = security.client_policy(config, (requests, ack))
        from ..hub.runtime_dir import socket_address

        for endpoint in (requests, ack):
            socket_address(endpoint)  # an ipc directory that fails its checks fails here, not at a save
        self._ctx: Any = None
        self._pid = 0
        self._lock = threading.Lock()
        self._rid = 0
        self._closed = False
        #: Requests sent again because the sidecar went away while they were in flight.
        self.resent = 0

    def __repr__(self) -> str:
        return f"SidecarAckStore(ack={self.ack!r})"

    def _context(self) -> Any:
        import zmq

        with self._lock:
            if self._closed:
                raise StoreClosed("sidecar ack store is closed", store=self.name)
            if self._ctx is None or self._pid != os.getpid():
                self._ctx = zmq.Context()  # a fresh one after fork; the parent's is left alone
                self._pid = os.getpid()
            return self._ctx

    def _next_rid(self) -> int:
        with self._lock:
            self._rid += 1
            return self._rid

    def _lost(self, op: str, endpoint: str, deadline: float) -> None:
        """The sidecar went away mid-request: count the resend, or give up past the deadline."""
        with self._lock:
            self.resent += 1
        if time.monotonic() >= deadline:
            raise StoreUnavailable(f"the sidecar at {endpoint} went away and no new one answered within "
                                   f"{self.timeout}s", store=self.name, op=op)

    def _exchange(self, hub: Link, op: str, fields: Sequence[Any], until: str, deadline: float) -> list[Any]:
        """One request on ``hub`` and its replies up to ``until``; ``PeerGone`` if the sidecar went away."""
        from .. import wire
        from ..errors import WireError

        rid = self._next_rid()
        hub.send(wire.encode_request(op, rid, *fields))
        replies = []
        while True:
            frames = hub.receive(deadline)
            if frames is None:
                raise StoreUnavailable(f"no answer from the sidecar at {self.requests} within {self.timeout}s",
                                       store=self.name, op=op)
            try:
                reply = wire.decode_reply(frames)
            except WireError:
                continue
            if reply.rid == rid:
                replies.append(reply)
                if reply.op == until:
                    return replies

    def _hub(self, op: str, *fields: Any, until: str) -> list[Any]:
        """A hub request, sent again to the next sidecar if this one goes away, until ``timeout``."""
        deadline = time.monotonic() + self.timeout
        with Link(self._context(), self.requests, self._curve) as hub:
            while True:
                try:
                    return self._exchange(hub, op, fields, until, deadline)
                except PeerGone:
                    self._lost(op, self.requests, deadline)

    def save(self, records: Sequence[Record]) -> int:
        """Hand ``records`` to the hub, then wait for the sidecar to say they are stored.

        If the sidecar goes away on the way, both steps are done again with
        the one that replaces it, until ``timeout``.
        """
        from .. import wire

        if not records:
            return 0
        values = [wire.record_to_list(r) for r in records]
        wants = [[r.key, r.version, r.origin, r.accessed] for r in records]
        deadline = time.monotonic() + self.timeout
        ctx = self._context()
        with Link(ctx, self.requests, self._curve) as hub, Link(ctx, self.ack, self._curve) as ack:
            while True:
                try:
                    self._exchange(hub, wire.PUSH, (values, 0), wire.ACK, deadline)
                    return self._confirmed(hub, ack, wants, deadline)
                except PeerGone as gone:
                    self._lost("save", str(gone), deadline)

    def _confirmed(self, hub: Link, ack: Link, wants: list[list[Any]], deadline: float) -> int:
        """Ask the ack socket to answer once ``wants`` are stored; ``PeerGone`` if either socket lost the sidecar."""
        rid = self._next_rid()
        wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
        ack.send([msgpack.packb([rid, wants, wait_ms])])
        give_up = deadline + ACK_GRACE
        while True:
            # The hub socket is watched too: a sidecar that took the PUSH and died before the
            # ack socket reached it is seen there, and the PUSH goes to the next one.
            hub.check()
            frames = ack.receive(min(give_up, time.monotonic() + WATCH_SLICE))
            if frames is None:
                if time.monotonic() < give_up:
                    continue
                raise StoreUnavailable(f"the sidecar at {self.ack} did not confirm in {self.timeout}s",
                                       store=self.name, op="save")
            got_rid, missing, refused = msgpack.unpackb(frames[-1], raw=False)
            if got_rid != rid:
                continue
            if refused:
                raise StoreRejected(f"the sidecar's store refused {len(refused)} records", keys=refused,
                                    store=self.name, op="save")
            if missing:
                raise StoreUnavailable(f"the sidecar could not store {len(missing)} records in "
                                       f"{self.timeout}s (is its database down?)", store=self.name, op="save")
            return len(wants)

    def load(self, key: str) -> Record | None:
        from .. import wire

        return self._hub(wire.GET, key, until=wire.RECORD)[-1].body[0]  # type: ignore[no-any-return]

    def load_all(self, now: float) -> Iterator[Record]:
        from ..hub import query_snapshot

        try:
            records = query_snapshot(self.requests, keys=self.keys, insecure=self.insecure, timeout=self.timeout)
        except BusError as exc:
            raise StoreUnavailable(str(exc), store=self.name, op="load_all") from exc
        return (r for r in records if r.expires > now)

    def delete(self, keys: Iterable[str]) -> int:
        raise StoreError("the sidecar's store is written by the sidecar; destroy sessions instead",
                         store=self.name, op="delete")

    def purge(self, now: float) -> int:
        return 0  # the sidecar prunes

    def clear(self, version: int) -> int:
        """Hand the clear to the sidecar (a PUSH carrying only the watermark); returns once it took it.

        The sidecar's writer applies it to its store; how many rows that removes
        is not known here, so this returns 0.
        """
        from .. import wire

        self._hub(wire.PUSH, [], check_clear_version(version, self.name), until=wire.ACK)
        return 0

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ctx, self._ctx = self._ctx, None
        if ctx is not None and self._pid == os.getpid():
            ctx.term()
