"""Small apps that the end-to-end tests run under real gunicorn and uvicorn workers.

Each builds its ``SessionCache`` when a worker imports it, joined to the hub
named by ``MEMSESSION_RUNTIME_DIR`` when that is set (sockets are born in
the worker that uses them, never before a fork), holding at most
``MEMSESSION_MAXSIZE`` sessions when that is set (a test fills it with a few
hundred requests).
"""

from __future__ import annotations

import os

from memsession import SessionCache


def worker_cache() -> SessionCache:
    maxsize = os.environ.get("MEMSESSION_MAXSIZE")
    options = {"maxsize": int(maxsize)} if maxsize else {}
    runtime_dir = os.environ.get("MEMSESSION_RUNTIME_DIR")
    if not runtime_dir:
        return SessionCache(**options)
    from memsession.bus import ZmqBus

    return SessionCache(bus=ZmqBus(runtime_dir=runtime_dir), **options)
