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
        self.counts = dict.fromkeys(("asked", "acked", "refused", "timed_out"), 0)

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


def parse_request(payload: bytes) -> tuple[int, list[Want], float]:
    """``(rid, wants, timeout in seconds)`` of an ack request; ``ValueError`` for anything malformed."""
    try:
        rid, wants, timeout_ms = msgpack.unpackb(payload, raw=False)
        parsed = [(str(k), int(v), int(o), float(a)) for k, v, o, a in wants]
        wait_ms = float(timeout_ms)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed ack request: {exc}") from None
    if type(rid) is not int or not 0 <= wait_ms <= MAX_WAIT_MS:
        raise ValueError("malformed ack request: rid must be an int and timeout_ms in [0, 60000]")
    return rid, parsed, wait_ms / 1000


def serve_acks(ctx: Any, endpoint: str, wake_endpoint: str, stop: threading.Event, ready: threading.Event,
               writer: Writer, secure: Any = None, errors: list[BaseException] | None = None,
               settled: Settled | None = None) -> None:
    """The sidecar's ack thread: answers ack requests as the writer reports batches stored.

    ``settled`` defaults to ``writer.settled`` (the queue alone).
    """
    import zmq

    book = AckBook()
    router = ctx.socket(zmq.ROUTER)
    wake = ctx.socket(zmq.PULL)
    settled = settled or writer.settled
    try:
        router.linger = 0
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
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
                        rid, wants, wait = parse_request(frames[1])
                    except ValueError as exc:
                        book.counts["malformed"] = book.counts.get("malformed", 0) + 1
                        log.warning("%s; dropped", exc)
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
