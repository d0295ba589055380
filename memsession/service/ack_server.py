"""The sidecar's half of acknowledged mode: who waits for which records, and the thread that answers.

The frames are documented in ``memsession.service.ack``. A wanted record is
settled when ``settled(key, version, origin)`` says so (the sidecar asks its
write-behind queue and its replica, see ``Sidecar.ack_settled``). ``AckBook``
is the waiting without sockets; ``serve_acks`` runs it in a sidecar thread,
woken by the writer after every batch (a wake-up carries nothing: no summary
of the batch is built).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from persist.writer import Writer

from ..refusals import log_refusal
from ..session import MAX_VERSION
from ..wire import DEFAULT_LIMITS, Limits

__all__ = ["MAX_WAIT_MS", "AckBook", "Settled", "parse_request", "serve_acks"]

log = logging.getLogger("memsession.ack")

Want = tuple[str, int, int, float]
#: ``settled(key, version, origin)``: True stored, False not yet, None refused by the store.
Settled = Callable[[str, int, int], "bool | None"]
#: The longest wait a request may ask for.
MAX_WAIT_MS = 60_000


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
               writer: Writer, secure: Any = None, errors: list[BaseException] | None = None,
               settled: Settled | None = None, *, book: AckBook | None = None,
               limits: Limits = DEFAULT_LIMITS) -> None:
    """The sidecar's ack thread: answers ack requests as the writer reports batches stored.

    ``settled`` defaults to ``writer.settled`` (the queue alone). ``book`` holds the
    waiters and the counters (the caller's, to show in its stats). A malformed request
    gets no reply (the protocol has none for it): it is counted as ``malformed``, logged,
    and dropped; a frame over ``limits.max_frame`` is refused by ZeroMQ before it is
    read (the sender's connection is cut).
    """
    import zmq

    book = book if book is not None else AckBook()
    router = ctx.socket(zmq.ROUTER)
    wake = ctx.socket(zmq.PULL)
    settled = settled or writer.settled
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
