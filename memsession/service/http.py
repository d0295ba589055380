"""The sidecar's HTTP status server: ``/health`` (JSON) and ``/metrics`` (Prometheus text).

It serves whatever ``stats()`` callable it is given, answering 503 while the
store fails (``persist.failing``) or before the first stats are published.
A malformed or unknown request gets its error status, is counted (``http.malformed``
in the sidecar's stats) and logged; the server goes on.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import ConfigError, MemsessionError
from ..refusals import log_refusal

__all__ = ["REQUEST_TIMEOUT", "StatusServer", "parse_http", "prometheus_text", "serve_http"]

log = logging.getLogger("memsession.sidecar")

#: Seconds a connection may take to send its request (and to take the answer) before it is closed.
REQUEST_TIMEOUT = 10.0


def parse_http(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` (or ``":9108"``) as ``(host, port)``; loopback only unless a host is given."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("http", value, "must be HOST:PORT, e.g. 127.0.0.1:9108")
    return host or "127.0.0.1", int(port)


def prometheus_text(stats: dict[str, Any], prefix: str = "memsession") -> str:
    """Numeric stats in the Prometheus text format; nested maps become labels."""
    lines: list[str] = []

    def emit(name: str, value: Any, labels: str = "") -> None:
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            return
        lines.append(f"{prefix}_{name}{labels} {value}")

    info_labels = []
    for key in sorted(stats):
        value = stats[key]
        if isinstance(value, dict):
            group = key
            nested = {k: v for k, v in value.items()}
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nested.values()) \
                    and key in ("dropped",):
                for label in sorted(nested):
                    emit(group, nested[label], f'{{reason="{_escape(label)}"}}')
                continue
            for sub in sorted(nested):
                if isinstance(nested[sub], str):
                    continue
                emit(f"{group}_{sub}", nested[sub])
        elif isinstance(value, str):
            info_labels.append(f'{key}="{_escape(value)}"')
        elif value is None:
            continue
        else:
            emit(key, value)
    if info_labels:
        lines.append(f"{prefix}_info{{{','.join(info_labels)}}} 1")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class StatusServer(ThreadingHTTPServer):
    """The status server, with its own counters: ``served`` requests and ``malformed`` ones refused.

    A malformed request (garbage request line, unknown method or path, oversized
    line or headers, a client gone mid-request) gets its error status where it can
    still be sent, is counted and logged (``log_refusal``), and the server goes on.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("served", "malformed"), 0)

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


def serve_http(host: str, port: int, stats: Callable[[], dict[str, Any]]) -> StatusServer:
    """A tiny HTTP server in a daemon thread: ``/health`` (JSON) and ``/metrics`` (Prometheus text).

    What ``http.server`` accepts is bounded there (a request line or header line of
    64 KiB, 100 headers; no body is read); a connection idle for ``REQUEST_TIMEOUT``
    seconds is closed, so slow clients cannot hold its threads.
    """

    class Handler(BaseHTTPRequestHandler):
        server: StatusServer
        timeout = REQUEST_TIMEOUT

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in ("/health", "/metrics", "/"):
                self.log_error("unknown path %r", path)
                self._reply(404, "text/plain", b"not found\n")
                return
            self.server.count("served")
            try:
                current = stats()
            except MemsessionError as exc:
                body = json.dumps({"ok": False, "error": str(exc)}).encode()
                self._reply(503, "application/json", body)
                return
            if path == "/metrics":
                self._reply(200, "text/plain; version=0.0.4", prometheus_text(current).encode())
                return
            healthy = not current.get("persist", {}).get("failing", False)
            body = json.dumps({"ok": healthy, **current}, sort_keys=True).encode()
            self._reply(200 if healthy else 503, "application/json", body)

        def log_error(self, format: str, *args: Any) -> None:
            # http.server calls this for every error status it sends (400, 414, 431, 501, ...) and
            # for a request that timed out: each is a refusal.
            self.server.refused(f"{self.client_address[0]}: {format % args}")

        def _reply(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http %s", format % args)

    server = StatusServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="memsession-sidecar-http", daemon=True).start()
    return server
