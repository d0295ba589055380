"""A DEALER to the sidecar that notices when the sidecar goes away (acknowledged mode's client sockets).

A request sent to a sidecar that then dies is lost without a word: the
DEALER reconnects by itself, but nothing it had handed the dead process comes
back. ``Link`` watches its socket with a ZeroMQ socket monitor, so a dropped
connection is seen at once (``PeerGone``) and the caller can send again on the
same socket. The resend waits in the socket's pipe until ZeroMQ has
reconnected, and ZeroMQ paces those reconnects (``reconnect_ivl`` doubling to
``reconnect_ivl_max``): no retry loop of our own. A peer that stops
answering without closing the connection (a host gone, a frozen process) is
dropped by ZMTP heartbeats and shows up the same way.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..hub.runtime_dir import socket_address

__all__ = ["Link", "PeerGone"]

log = logging.getLogger("memsession.ack")

#: ZeroMQ's reconnect pacing for a lost sidecar (ms): first retry, and the doubling's ceiling.
RECONNECT_MS = 100
RECONNECT_MAX_MS = 1000
#: ZMTP heartbeats (ms): a peer silent past the timeout is treated as gone.
HEARTBEAT_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000


class PeerGone(Exception):
    """The connection to the sidecar dropped: whatever was sent on it may be lost."""


class Link:
    """One DEALER connected to ``endpoint``, with a monitor that reports dropped connections."""

    def __init__(self, ctx: Any, endpoint: str, curve: Any = None) -> None:
        import zmq

        self.endpoint = endpoint
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.reconnect_ivl = RECONNECT_MS
        sock.reconnect_ivl_max = RECONNECT_MAX_MS
        sock.heartbeat_ivl = HEARTBEAT_MS
        sock.heartbeat_timeout = HEARTBEAT_TIMEOUT_MS
        if curve is not None:
            curve.client(sock)
        try:
            self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            sock.connect(socket_address(endpoint))  # an ipc one inside its checked directory
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock = sock
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def send(self, frames: list[bytes]) -> None:
        self._sock.send_multipart(frames)

    def receive(self, deadline: float) -> list[bytes] | None:
        """The next message; None once ``deadline`` (monotonic) passed; ``PeerGone`` if the connection dropped."""
        import zmq

        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            events = dict(self._poller.poll(max(1, int(left * 1000))))
            if self._monitor in events:
                self._monitor.recv_multipart(zmq.NOBLOCK)
                log.info("lost the sidecar at %s; sending again once it is back", self.endpoint)
                raise PeerGone(self.endpoint)
            if self._sock in events:
                return self._sock.recv_multipart(zmq.NOBLOCK)  # type: ignore[no-any-return]

    def check(self) -> None:
        """``PeerGone`` if the connection dropped since the last look (no wait)."""
        import zmq

        if self._monitor.poll(0, zmq.POLLIN):
            self._monitor.recv_multipart(zmq.NOBLOCK)
            log.info("lost the sidecar at %s; sending again once it is back", self.endpoint)
            raise PeerGone(self.endpoint)

    def close(self) -> None:
        import zmq

        try:
            self._sock.disable_monitor()
        except zmq.ZMQError as exc:
            log.debug("stopping the monitor of %s: %s", self.endpoint, exc)
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
