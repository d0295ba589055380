"""Small apps that the end-to-end tests run under real gunicorn and uvicorn workers.

Each builds its ``SessionCache`` when a worker imports it, joined to the hub
named by ``MEMSESSION_RUNTIME_DIR`` when that is set (sockets are born in
the worker that uses them, never before a fork).
"""

from __future__ import annotations

import os

from memsession import SessionCache


def worker_cache() -> SessionCache:
    runtime_dir = os.environ.get("MEMSESSION_RUNTIME_DIR")
    if not runtime_dir:
        return SessionCache()
    from memsession.bus import ZmqBus

    return SessionCache(bus=ZmqBus(runtime_dir=runtime_dir))
