"""Acknowledged mode: a save returns once the sidecar says the version is in the store.

Use it as the store of a write-through ``SessionCache``; the value still
travels over the bus as usual, and ``set()`` / ``destroy()`` return only
when the sidecar has written that version (or a newer one) to its store::

    cache = SessionCache(bus=ZmqBus(runtime_dir=d), store=SidecarAckStore(runtime_dir=d),
                         persistence=PersistConfig(mode="write_through"))

``SidecarAckStore.save`` first hands the records to the hub (a PUSH request,
so they are queued for writing even if the bus dropped a message), then asks
the sidecar's ack socket to answer once every one is durable. No answer within
``timeout`` raises ``StoreUnavailable``: the write-through caller sees the
error, and the persistence layer keeps retrying the record.

Ack socket frames (DEALER -> sidecar ROUTER, one msgpack frame each way)::

    request  [rid, [[key, version, origin, accessed], ...], timeout_ms]
    reply    [rid, [key, ...]]      keys not durable within timeout_ms; [] = all stored

A wanted record is durable when the store took the same ``(version,
origin)`` with an ``accessed`` at least as late, a newer version, or a
tombstone of the key. ``AckBook`` is that bookkeeping without sockets;
``serve_acks`` runs it in a sidecar thread, fed by the writer thread with
what each successful batch stored.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from memsession.errors import BusError, ConfigError, StoreClosed, StoreError, StoreUnavailable
from memsession.session import Record

from .base import check_clear_version

__all__ = ["AckBook", "SidecarAckStore", "default_ack_endpoint", "serve_acks"]

log = logging.getLogger("memsession.ack")

#: ``(version, origin, accessed, deleted)`` of what the store holds for a key.
Stored = tuple[int, int, float, bool]
Want = tuple[str, int, int, float]


def default_ack_endpoint(runtime_dir: str) -> str:
    return f"ipc://{os.path.join(runtime_dir, 'ack.sock')}"


def durable(stored: Stored | None, version: int, origin: int, accessed: float) -> bool:
    """Whether what the store holds covers the wanted version."""
    if stored is None:
        return False
    s_version, s_origin, s_accessed, s_deleted = stored
    if s_deleted:
        return True
    return (s_version, s_origin) > (version, origin) or (
        (s_version, s_origin) == (version, origin) and s_accessed >= accessed
    )


@dataclass
class _Waiter:
    ident: bytes
    rid: int
    deadline: float
    missing: dict[str, Want] = field(default_factory=dict)


class AckBook:
    """Who waits for which key, and what the store holds (the newest ``capacity`` keys). No I/O, no lock."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self.stored: OrderedDict[str, Stored] = OrderedDict()
        self._by_key: dict[str, list[_Waiter]] = {}
        self._waiters: list[_Waiter] = []
        self.counts = dict.fromkeys(("asked", "acked", "timed_out"), 0)

    def record_stored(self, items: Iterable[Sequence[Any]]) -> list[tuple[bytes, int]]:
        """``[key, version, origin, accessed, deleted]`` items the store just took; returns waiters now done."""
        done: list[tuple[bytes, int]] = []
        for key, version, origin, accessed, deleted in items:
            old = self.stored.get(key)
            new = (version, origin, accessed, deleted)
            if old is None or durable(new, old[0], old[1], old[2]):
                self.stored[key] = new
                self.stored.move_to_end(key)
                if len(self.stored) > self.capacity:
                    self.stored.popitem(last=False)
            waiters = self._by_key.get(key)
            if not waiters:
                continue
            current = self.stored[key]
            for waiter in list(waiters):
                want = waiter.missing.get(key)
                if want is not None and durable(current, want[1], want[2], want[3]):
                    del waiter.missing[key]
                    waiters.remove(waiter)
                    if not waiter.missing:
                        done.append((waiter.ident, waiter.rid))
                        self._waiters.remove(waiter)
                        self.counts["acked"] += 1
            if not waiters:
                del self._by_key[key]
        return done

    def ask(self, ident: bytes, rid: int, wants: Sequence[Want], deadline: float) -> bool:
        """Register a request; True if everything is already durable (answer now)."""
        self.counts["asked"] += 1
        waiter = _Waiter(ident, rid, deadline)
        for want in wants:
            if not durable(self.stored.get(want[0]), want[1], want[2], want[3]):
                waiter.missing[want[0]] = want
        if not waiter.missing:
            self.counts["acked"] += 1
            return True
        self._waiters.append(waiter)
        for key in waiter.missing:
            self._by_key.setdefault(key, []).append(waiter)
        return False

    def expire(self, now: float) -> list[tuple[bytes, int, list[str]]]:
        """Waiters past their deadline, with the keys that never became durable."""
        out = []
        for waiter in [w for w in self._waiters if w.deadline <= now]:
            self._waiters.remove(waiter)
            for key in waiter.missing:
                waiters = self._by_key.get(key)
                if waiters is not None:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._by_key[key]
            out.append((waiter.ident, waiter.rid, sorted(waiter.missing)))
            self.counts["timed_out"] += 1
        return out

    def __len__(self) -> int:
        return len(self._waiters)


def serve_acks(ctx: Any, endpoint: str, done_endpoint: str, stop: threading.Event, ready: threading.Event,
               wake: threading.Event, secure: Any = None, book: AckBook | None = None,
               errors: list[BaseException] | None = None) -> None:
    """The sidecar's ack thread: answers ack requests as the writer reports stored batches."""
    import zmq

    book = book or AckBook()
    router = ctx.socket(zmq.ROUTER)
    done = ctx.socket(zmq.PULL)
    try:
        router.linger = 0
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if secure is not None:
            secure.server(router)
        router.bind(endpoint)
        done.bind(done_endpoint)
        ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(done, zmq.POLLIN)

        def reply(ident: bytes, rid: int, missing: list[str]) -> None:
            try:
                router.send_multipart([ident, msgpack.packb([rid, missing])])
            except zmq.ZMQError as exc:
                log.debug("ack not delivered: %s", exc)

        while not stop.is_set():
            events = dict(poller.poll(50))
            if router in events:
                while True:
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        ident, payload = frames
                        rid, wants, timeout_ms = msgpack.unpackb(payload, raw=False)
                        parsed = [(str(k), int(v), int(o), float(a)) for k, v, o, a in wants]
                    except (ValueError, TypeError, msgpack.UnpackException) as exc:
                        log.warning("malformed ack request dropped: %s", exc)
                        continue
                    if book.ask(ident, rid, parsed, time.monotonic() + min(float(timeout_ms), 60_000) / 1000):
                        reply(ident, rid, [])
                    else:
                        wake.set()  # write now rather than at the next flush interval
            if done in events:
                while True:
                    try:
                        items = msgpack.unpackb(done.recv(zmq.NOBLOCK), raw=False)
                    except zmq.Again:
                        break
                    for ident, rid in book.record_stored(items):
                        reply(ident, rid, [])
            for ident, rid, missing in book.expire(time.monotonic()):
                reply(ident, rid, missing)
    except zmq.ZMQError as exc:
        if errors is not None:
            errors.append(exc)
        if not stop.is_set():
            log.error("ack socket %s failed: %s", endpoint, exc)
        ready.set()
    finally:
        router.close(linger=0)
        done.close(linger=0)


class SidecarAckStore:
    """A "store" that is the sidecar: save returns once the sidecar stored the records.

    ``runtime_dir`` (ipc), or ``requests`` (the hub's ROUTER) and ``ack``
    (the sidecar's ack endpoint) with ``keys`` for tcp + CURVE. ``load``
    reads through the hub; ``purge`` is the sidecar's job (returns 0).
    """

    name = "sidecar"

    def __init__(self, runtime_dir: str | None = None, *, requests: str | None = None, ack: str | None = None,
                 keys: str | None = None, insecure: bool = False, timeout: float = 5.0) -> None:
        from memsession.hub import HubConfig

        if runtime_dir is not None:
            requests = requests or HubConfig(runtime_dir=runtime_dir).endpoints()[2]
            ack = ack or default_ack_endpoint(runtime_dir)
        if not requests or not ack:
            raise ConfigError("ack", ack, "give runtime_dir, or both requests and ack endpoints")
        if not timeout > 0:
            raise ConfigError("timeout", timeout, "must be > 0 seconds")
        self.requests = requests
        self.ack = ack
        self.keys = keys
        self.insecure = insecure
        self.timeout = timeout
        from memsession import security

        config = HubConfig(publish=requests, subscribe=requests, requests=requests, keys=keys, insecure=insecure)
        self._curve = security.client_policy(config, (requests, ack))
        self._ctx: Any = None
        self._pid = 0
        self._lock = threading.Lock()
        self._rid = 0
        self._closed = False

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
            self._rid += 1
            return self._ctx, self._rid

    def _socket(self, ctx: Any, endpoint: str) -> Any:
        import zmq

        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        if self._curve is not None:
            self._curve.client(sock)
        sock.connect(endpoint)
        return sock

    def _hub(self, op: str, *fields: Any, until: str) -> list[Any]:
        from memsession import wire
        from memsession.errors import WireError

        ctx, rid = self._context()
        sock = self._socket(ctx, self.requests)
        try:
            sock.send_multipart(wire.encode_request(op, rid, *fields))
            deadline = time.monotonic() + self.timeout
            replies = []
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(left * 1000):
                    raise StoreUnavailable(f"no answer from the sidecar at {self.requests}", store=self.name, op=op)
                try:
                    reply = wire.decode_reply(sock.recv_multipart())
                except WireError:
                    continue
                if reply.rid == rid:
                    replies.append(reply)
                    if reply.op == until:
                        return replies
        finally:
            sock.close(linger=0)

    def save(self, records: Sequence[Record]) -> int:
        from memsession import wire

        if not records:
            return 0
        self._hub(wire.PUSH, [wire.record_to_list(r) for r in records], 0, until=wire.ACK)
        ctx, rid = self._context()
        sock = self._socket(ctx, self.ack)
        try:
            wants = [[r.key, r.version, r.origin, r.accessed] for r in records]
            sock.send(msgpack.packb([rid, wants, int(self.timeout * 1000)]))
            deadline = time.monotonic() + self.timeout + 1.0
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(left * 1000):
                    raise StoreUnavailable(f"the sidecar at {self.ack} did not confirm in {self.timeout}s",
                                           store=self.name, op="save")
                got_rid, missing = msgpack.unpackb(sock.recv(), raw=False)
                if got_rid != rid:
                    continue
                if missing:
                    raise StoreUnavailable(f"the sidecar could not store {len(missing)} records in "
                                           f"{self.timeout}s (is its database down?)", store=self.name, op="save")
                return len(records)
        finally:
            sock.close(linger=0)

    def load(self, key: str) -> Record | None:
        from memsession import wire

        return self._hub(wire.GET, key, until=wire.RECORD)[-1].body[0]  # type: ignore[no-any-return]

    def load_all(self, now: float) -> Iterator[Record]:
        from memsession.hub import query_snapshot

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
        from memsession import wire

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
