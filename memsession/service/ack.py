"""Acknowledged mode: a save returns once the sidecar says the version is in the store.

Use it as the store of a write-through ``SessionCache``; the value still
travels over the bus as usual, and ``set()`` / ``destroy()`` return only
when the sidecar has written that version (or a newer one) to its store::

    cache = SessionCache(bus=ZmqBus(runtime_dir=d),
                         persistence=Persistence(SidecarAckStore(runtime_dir=d), mode="write_through"))

``SidecarAckStore.save`` first hands the records to the hub (a PUSH request,
so they are queued for writing even if the bus dropped a message), then asks
the sidecar's ack socket to answer once every one is durable. No answer within
``timeout`` raises ``StoreUnavailable``: the write-through caller sees the
error, and the persistence layer keeps retrying the record. A record the
sidecar's store refused raises ``StoreRejected``.

Ack socket frames (DEALER -> sidecar ROUTER, one msgpack frame each way)::

    request  [rid, [[key, version, origin, accessed], ...], timeout_ms]
    reply    [rid, [key, ...], [key, ...]]   not durable within timeout_ms; refused by the store

A wanted record is durable once the sidecar's write-behind queue holds
nothing of its key and no rewrite is pending (``WriteQueue.settled``): the
hub merged it before it answered the PUSH, so it was written, or something
that supersedes it was. ``AckBook`` is the waiting without sockets;
``serve_acks`` runs it in a sidecar thread, woken by the writer after every
batch (a wake-up carries nothing: no summary of the batch is built).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from persist.base import check_clear_version
from persist.writer import Writer

from ..errors import BusError, ConfigError, StoreClosed, StoreError, StoreRejected, StoreUnavailable
from ..refusals import log_refusal
from ..session import MAX_VERSION, Record
from ..validate import check_number
from ..wire import DEFAULT_LIMITS, Limits

__all__ = ["AckBook", "SidecarAckStore", "default_ack_endpoint", "serve_acks"]

log = logging.getLogger("memsession.ack")

Want = tuple[str, int, int, float]
#: ``settled(key, version, origin)``: True stored, False not yet, None refused by the store.
Settled = Callable[[str, int, int], "bool | None"]
#: The longest wait a request may ask for.
MAX_WAIT_MS = 60_000


def default_ack_endpoint(runtime_dir: str) -> str:
    return f"ipc://{os.path.join(runtime_dir, 'ack.sock')}"


@dataclass
class _Waiter:
    ident: bytes
    rid: int
    deadline: float
    missing: list[Want] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


class AckBook:
    """Who waits for which records, checked against ``settled``. No I/O, no lock."""

    def __init__(self) -> None:
        self._waiters: list[_Waiter] = []
        #: ``malformed``: requests refused unread (``serve_acks`` counts them; the sidecar's stats show them).
        self.counts = dict.fromkeys(("asked", "acked", "refused", "timed_out", "malformed"), 0)

    @staticmethod
    def _check(waiter: _Waiter, settled: Settled) -> bool:
        """Drop what is settled now; True if nothing is missing any more."""
        still = []
        for want in waiter.missing:
            verdict = settled(want[0], want[1], want[2])
            if verdict is None:
                waiter.refused.append(want[0])
            elif not verdict:
                still.append(want)
        waiter.missing = still
        return not still

    def ask(self, ident: bytes, rid: int, wants: Sequence[Want], deadline: float,
            settled: Settled) -> tuple[bytes, int, list[str], list[str]] | None:
        """Register a request; its reply if it can be answered now, else None (it waits)."""
        self.counts["asked"] += 1
        waiter = _Waiter(ident, rid, deadline, list(wants))
        if self._check(waiter, settled):
            return self._answer(waiter)
        self._waiters.append(waiter)
        return None

    def recheck(self, settled: Settled) -> list[tuple[bytes, int, list[str], list[str]]]:
        """After the store took something: the replies of waiters now answered."""
        done = [w for w in self._waiters if self._check(w, settled)]
        for waiter in done:
            self._waiters.remove(waiter)
        return [self._answer(w) for w in done]

    def _answer(self, waiter: _Waiter) -> tuple[bytes, int, list[str], list[str]]:
        self.counts["refused" if waiter.refused else "acked"] += 1
        return waiter.ident, waiter.rid, [], sorted(waiter.refused)

    def expire(self, now: float) -> list[tuple[bytes, int, list[str], list[str]]]:
        """Waiters past their deadline, with the keys that never became durable."""
        out = []
        for waiter in [w for w in self._waiters if w.deadline <= now]:
            self._waiters.remove(waiter)
            out.append((waiter.ident, waiter.rid, sorted(w[0] for w in waiter.missing), sorted(waiter.refused)))
            self.counts["timed_out"] += 1
        return out

    def __len__(self) -> int:
        return len(self._waiters)


def parse_request(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[int, list[Want], float]:
    """``(rid, wants, timeout in seconds)`` of an ack request; ``ValueError`` for anything malformed.

    Every field must have its type exactly (a string is not a version), within ``limits``.
    """
    try:
        rid, wants, timeout_ms = msgpack.unpackb(
            payload, raw=False, max_bin_len=0, max_ext_len=0,
            max_array_len=limits.max_records, max_map_len=0,
        )
        parsed = [_want(want, limits) for want in wants]
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed ack request: {exc}") from None
    if type(rid) is not int or type(timeout_ms) not in (int, float) or not 0 <= timeout_ms <= MAX_WAIT_MS:
        raise ValueError(f"malformed ack request: rid must be an int and timeout_ms in [0, {MAX_WAIT_MS}]")
    return rid, parsed, timeout_ms / 1000


def _want(want: Any, limits: Limits) -> Want:
    if type(want) is not list or len(want) != 4:
        raise ValueError("a wanted record is [key, version, origin, accessed]")
    key, version, origin, accessed = want
    if type(key) is not str or not 0 < len(key) <= limits.max_key:
        raise ValueError("key must be a non-empty str within max_key")
    if type(version) is not int or not 0 <= version <= MAX_VERSION or type(origin) is not int:
        raise ValueError(f"version must be an int in [0, {MAX_VERSION}], origin an int")
    if type(accessed) not in (int, float) or accessed != accessed:
        raise ValueError("accessed must be a number")
    return key, version, origin, float(accessed)


def serve_acks(ctx: Any, endpoint: str, wake_endpoint: str, stop: threading.Event, ready: threading.Event,
               writer: Writer, secure: Any = None, errors: list[BaseException] | None = None, *,
               book: AckBook | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
    """The sidecar's ack thread: answers ack requests as the writer reports batches stored.

    ``book`` holds the waiters and the counters (the caller's, to show in its stats). A
    malformed request gets no reply (the protocol has none for it): it is counted as
    ``malformed``, logged, and dropped; a frame over ``limits.max_frame`` is refused by
    ZeroMQ before it is read (the sender's connection is cut).
    """
    import zmq

    book = book if book is not None else AckBook()
    router = ctx.socket(zmq.ROUTER)
    wake = ctx.socket(zmq.PULL)
    settled = writer.settled
    try:
        router.linger = 0
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.maxmsgsize = limits.max_frame
        if secure is not None:
            secure.server(router)
        router.bind(endpoint)
        wake.bind(wake_endpoint)
        ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)

        def reply(ident: bytes, rid: int, missing: list[str], refused: list[str]) -> None:
            try:
                router.send_multipart([ident, msgpack.packb([rid, missing, refused])])
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
                        if len(frames) != 2:
                            raise ValueError(f"malformed ack request: {len(frames)} frames")
                        rid, wants, wait = parse_request(frames[1], limits)
                    except ValueError as exc:
                        book.counts["malformed"] += 1
                        log_refusal(log, "ack request dropped", book.counts["malformed"], exc)
                        continue
                    answer = book.ask(frames[0], rid, wants, time.monotonic() + wait, settled)
                    if answer is not None:
                        reply(*answer)
                    else:
                        writer.wake()  # write now rather than at the next flush interval
            if wake in events:
                while True:
                    try:
                        wake.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                for answer in book.recheck(settled):
                    reply(*answer)
            for answer in book.expire(time.monotonic()):
                reply(*answer)
    except zmq.ZMQError as exc:
        if errors is not None:
            errors.append(exc)
        if not stop.is_set():
            log.error("ack socket %s failed: %s", endpoint, exc)
        ready.set()
    finally:
        router.close(linger=0)
        wake.close(linger=0)


class SidecarAckStore:
    """A "store" that is the sidecar: save returns once the sidecar stored the records.

    ``runtime_dir`` (ipc), or ``requests`` (the hub's ROUTER) and ``ack``
    (the sidecar's ack endpoint) with ``keys`` for tcp + CURVE. ``load``
    reads through the hub; ``purge`` is the sidecar's job (returns 0).
    """

    name = "sidecar"

    def __init__(self, runtime_dir: str | None = None, *, requests: str | None = None, ack: str | None = None,
                 keys: str | None = None, insecure: bool = False, timeout: float = 5.0) -> None:
        from ..hub import HubConfig

        if runtime_dir is not None:
            requests = requests or HubConfig(runtime_dir=runtime_dir).endpoints()[2]
            ack = ack or default_ack_endpoint(runtime_dir)
        if not requests or not ack:
            raise ConfigError("ack", ack, "give runtime_dir, or both requests and ack endpoints")
        check_number("timeout", timeout)
        self.requests = requests
        self.ack = ack
        self.keys = keys
        self.insecure = insecure
        self.timeout = timeout
        from .. import security

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
        from .. import wire
        from ..errors import WireError

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
        from .. import wire

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
                got_rid, missing, refused = msgpack.unpackb(sock.recv(), raw=False)
                if got_rid != rid:
                    continue
                if refused:
                    raise StoreRejected(f"the sidecar's store refused {len(refused)} records", keys=refused,
                                        store=self.name, op="save")
                if missing:
                    raise StoreUnavailable(f"the sidecar could not store {len(missing)} records in "
                                           f"{self.timeout}s (is its database down?)", store=self.name, op="save")
                return len(records)
        finally:
            sock.close(linger=0)

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
