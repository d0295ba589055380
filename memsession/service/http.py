"""The sidecar's HTTP status server: ``/health`` (JSON) and ``/metrics`` (Prometheus text).

It serves whatever ``stats()`` callable it is given, answering 503 while the
store fails (``persist.failing``) or before the first stats are published.
A malformed or unknown request gets its error status; the server goes on.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import ConfigError, MemsessionError

__all__ = ["parse_http", "prometheus_text", "serve_http"]

log = logging.getLogger("memsession.sidecar")


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


def serve_http(host: str, port: int, stats: Callable[[], dict[str, Any]]) -> ThreadingHTTPServer:
    """A tiny HTTP server in a daemon thread: ``/health`` (JSON) and ``/metrics`` (Prometheus text)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in ("/health", "/metrics", "/"):
                self._reply(404, "text/plain", b"not found\n")
                return
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

        def _reply(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http %s", format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="memsession-sidecar-http", daemon=True).start()
    return server
