"""Collecting the hub's replies to one request on a DEALER: the one loop every request uses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .. import wire
from ..errors import WireError

__all__ = ["Requests", "collect_replies"]


def collect_replies(
    dealer: Any, rid: int, until: str, deadline: float, *, stop: threading.Event, limits: wire.Limits,
    malformed: Callable[[str, Exception], object] | None = None,
) -> list[wire.Reply] | None:
    """Replies to ``rid`` up to the one with op ``until``; None on timeout or ``stop``.

    A reply that does not decode is handed to ``malformed`` (counted as
    ``malformed reply``) and skipped; one to another request (that already
    timed out) is skipped.
    """
    import zmq

    out: list[wire.Reply] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stop.is_set():
            return None
        if not dealer.poll(int(min(remaining, 0.1) * 1000) + 1, zmq.POLLIN):
            continue
        try:
            reply = wire.decode_reply(dealer.recv_multipart(), limits)
        except WireError as exc:
            if malformed is not None:
                malformed("malformed reply", exc)
            continue
        if reply.rid != rid:
            continue
        out.append(reply)
        if reply.op == until:
            return out


class Requests:
    """Request ids and reply collection for one bus client, shared by its threads."""

    def __init__(self, stop: threading.Event, limits: wire.Limits,
                 malformed: Callable[[str, Exception], object] | None = None) -> None:
        self._stop = stop
        self._limits = limits
        self._malformed = malformed
        self._rid = 0
        self._lock = threading.Lock()

    def next_rid(self) -> int:
        with self._lock:
            self._rid += 1
            return self._rid

    def collect(self, dealer: Any, rid: int, until: str, deadline: float) -> list[wire.Reply] | None:
        """Replies to ``rid`` up to the one with op ``until``; None on timeout (``collect_replies``)."""
        return collect_replies(dealer, rid, until, deadline, stop=self._stop, limits=self._limits,
                               malformed=self._malformed)
