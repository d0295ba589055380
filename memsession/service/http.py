"""The sidecar's HTTP status server: ``/health`` (JSON), ``/metrics`` (Prometheus text, ``metrics``)
and ``/``, a status page (``status_page``) that reads ``/health`` in the browser.

It serves whatever ``stats()`` callable it is given, answering 503 while the
store fails (``persist.failing``) or before the first stats are published.
A malformed or unknown request gets its error status, is counted (``http.malformed``
in the sidecar's stats) and logged; the server goes on.

What a client can hold is bounded:

- a connection carries one request (HTTP/1.0) and has ``timeout`` seconds
  (``REQUEST_TIMEOUT``) in all to send it and take the answer: every socket
  read and write waits only for what is left of that, so a client trickling a
  header byte a second is cut off like an idle one (counted as malformed);
- at most ``max_connections`` (``MAX_CONNECTIONS``) are served at once, one
  thread each; a connection beyond that is answered 503 at once, without a
  thread, closed and counted (``http.over_capacity``);
- a client that goes away mid-request is counted and logged, never a
  traceback on stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import ConfigError, MemsessionError
from ..refusals import log_refusal
from .metrics import prometheus_text
from .status_page import status_page

__all__ = ["MAX_CONNECTIONS", "REQUEST_TIMEOUT", "StatusServer", "parse_http", "prometheus_text", "serve_http"]

log = logging.getLogger("memsession.sidecar")

#: Seconds a connection may take, in all, to send its request and take the answer before it is closed.
REQUEST_TIMEOUT = 10.0
#: Connections served at once (a thread each); more are answered 503 and closed.
MAX_CONNECTIONS = 32

_BUSY_BODY = b"too many connections; retry\n"
_BUSY_REPLY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def parse_http(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` (or ``":9108"``) as ``(host, port)``; loopback only unless a host is given."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("http", value, "must be HOST:PORT, e.g. 127.0.0.1:9108")
    return host or "127.0.0.1", int(port)


class _DeadlineSocket(io.RawIOBase):
    """A connection's socket as a file whose every read and write waits only until ``deadline``.

    A socket timeout alone bounds each ``recv``: a client sending one byte
    every few seconds would never trip it.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def _wait_left(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the connection used up its time")
        self._sock.settimeout(left)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._wait_left()
        return self._sock.recv_into(buffer)

    def write(self, data: Any) -> int:
        self._wait_left()
        self._sock.sendall(data)
        return len(data)


class StatusServer(ThreadingHTTPServer):
    """The status server, with its own counters: ``served`` requests, ``malformed`` ones refused and
    connections turned away ``over_capacity``.

    A malformed request (garbage request line, unknown method or path, oversized
    line or headers, a request not sent in time, a client gone mid-request) gets
    its error status where it can still be sent, is counted and logged
    (``log_refusal``), and the server goes on. At most ``max_connections`` are
    served at once; the accepting thread answers any more 503 itself and closes them.
    """

    daemon_threads = True
    #: The listen backlog (socketserver's default is 5): a burst of connections waits in the kernel
    #: for the accepting thread instead of having its SYNs dropped and resent a second later.
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, max_connections: int
    ) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._open = 0
        self._counts = dict.fromkeys(("served", "malformed", "over_capacity"), 0)

    def count(self, what: str) -> int:
        with self._lock:
            self._counts[what] += 1
            return self._counts[what]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def refused(self, detail: object) -> None:
        log_refusal(log, "http request refused", self.count("malformed"), detail)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr for every broken connection.
        self.refused(f"{client_address}: {sys.exc_info()[1]!r}")

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = self._open >= self.max_connections
            if not full:
                self._open += 1
        if full:
            self._turn_away(request, client_address)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._closed_one()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed_one()

    def _closed_one(self) -> None:
        with self._lock:
            self._open -= 1

    def _turn_away(self, request: socket.socket, client_address: Any) -> None:
        """503 and close, from the accepting thread: never blocks, never starts a thread."""
        count = self.count("over_capacity")
        log_refusal(log, f"http connection refused: {self.max_connections} already open", count, client_address[0])
        try:
            request.setblocking(False)
            request.send(_BUSY_REPLY)  # a fresh socket's send buffer takes it whole
        except OSError as exc:
            log.debug("http connection turned away without its 503 (%r)", exc)
        else:
            # Read what the client sent already: closing with it unread would reset the 503.
            # Nothing sent yet (BlockingIOError) or a client gone: nothing to read, so nothing lost.
            with contextlib.suppress(OSError):
                request.recv(65536)
        self.shutdown_request(request)


def serve_http(
    host: str,
    port: int,
    stats: Callable[[], dict[str, Any]],
    *,
    timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> StatusServer:
    """A tiny HTTP server in a daemon thread: ``/health`` (JSON), ``/metrics`` (Prometheus text), ``/`` (HTML).

    What ``http.server`` accepts is bounded there (a request line or header line of
    64 KiB, 100 headers; no body is read); a connection gets ``timeout`` seconds in
    all and at most ``max_connections`` are served at once (see the module docstring).
    """

    page, page_headers = status_page()  # read once, here: a broken package fails at start

    class Handler(BaseHTTPRequestHandler):
        server: StatusServer

        def setup(self) -> None:
            # StreamRequestHandler's files, on a socket that counts down the connection's time.
            self.connection = self.request
            connection = _DeadlineSocket(self.request, time.monotonic() + timeout)
            self.rfile = io.BufferedReader(connection)
            self.wfile = connection  # type: ignore[assignment]

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in ("/health", "/metrics", "/"):
                self.log_error("unknown path %r", path)
                self._reply(404, "text/plain", b"not found\n")
                return
            self.server.count("served")
            if path == "/":
                # Static: the page asks /health itself, so it loads even while the stats are not served yet.
                self._reply(200, "text/html; charset=utf-8", page, page_headers)
                return
            try:
                current = stats()
            except MemsessionError as exc:
                body = json.dumps({"ok": False, "error": str(exc)}).encode()
                self._reply(503, "application/json", body)
                return
            if path == "/metrics":
                self._reply(200, "text/plain; version=0.0.4; charset=utf-8", prometheus_text(current).encode())
                return
            healthy = not current.get("persist", {}).get("failing", False)
            body = json.dumps({"ok": healthy, **current}, sort_keys=True).encode()
            self._reply(200 if healthy else 503, "application/json", body)

        def log_error(self, format: str, *args: Any) -> None:
            # http.server calls this for every error status it sends (400, 414, 431, 501, ...) and
            # for a request that timed out: each is a refusal.
            self.server.refused(f"{self.client_address[0]}: {format % args}")

        def _reply(self, code: int, kind: str, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http %s", format % args)

    server = StatusServer((host, port), Handler, max_connections=max_connections)
    threading.Thread(target=server.serve_forever, name="memsession-sidecar-http", daemon=True).start()
    return server
