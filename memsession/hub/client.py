"""Asking a running hub over its ROUTER: its counters, its whole replica, whether it is up yet.

Each query opens its own ZeroMQ context and DEALER socket (CURVE on tcp unless
``insecure``), sends one request and closes everything again; a hub that
does not answer in time is a ``BusError``. An ipc endpoint's directory is
checked as for the hub's own sockets (``runtime_dir``), and never made.
"""

from __future__ import annotations

import time
from typing import Any

from .. import wire
from ..errors import BusError, WireError
from ..session import Record
from .config import HubConfig
from .runtime_dir import socket_address

__all__ = ["query_snapshot", "query_stats", "wait_ready"]


def _query(requests: str, op: str, until: str, keys: str | None, insecure: bool,
           timeout: float) -> list[wire.Reply]:
    import zmq

    from .. import security

    curve = security.client_policy(HubConfig(keys=keys, insecure=insecure, publish=requests,
                                             subscribe=requests, requests=requests), (requests,))
    address = socket_address(requests, create=False)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.linger = 0
        if curve is not None:
            curve.client(sock)
        sock.connect(address)
        sock.send_multipart(wire.encode_request(op, 1))
        deadline = time.monotonic() + timeout
        replies = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                raise BusError(f"no hub answered at {requests} within {timeout}s", endpoint=requests)
            try:
                reply = wire.decode_reply(sock.recv_multipart())
            except WireError:
                continue
            if reply.rid == 1:
                replies.append(reply)
                if reply.op == until:
                    return replies
    finally:
        sock.close(linger=0)
        ctx.term()


def query_stats(
    requests: str, *, keys: str | None = None, insecure: bool = False, timeout: float = 2.0
) -> dict[str, Any]:
    """Ask a running hub for its counters over its ROUTER; ``BusError`` if it does not answer."""
    return _query(requests, wire.STATS, wire.STATS_REPLY, keys, insecure, timeout)[-1].body[0]


def wait_ready(requests: str, timeout: float, *, keys: str | None = None, insecure: bool = False) -> dict[str, Any]:
    """Ask a hub for its stats until it answers; ``BusError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return query_stats(requests, keys=keys, insecure=insecure, timeout=max(0.05, min(0.5, left)))
        except BusError:
            if time.monotonic() >= deadline:
                raise


def query_snapshot(
    requests: str, *, keys: str | None = None, insecure: bool = False, timeout: float = 5.0
) -> list[Record]:
    """Every record a running hub holds (live sessions and tombstones)."""
    replies = _query(requests, wire.SNAPSHOT, wire.END, keys, insecure, timeout)
    return [r for reply in replies[:-1] for r in reply.body[0]]
