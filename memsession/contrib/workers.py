"""Whether this process is one of several workers of one server: private sessions are refused there.

A ``SessionCache`` with no bus keeps its sessions to itself. Under a server
that runs several worker processes, each worker would then keep its own
sessions and a user would be logged in on one worker and not on the next,
with nothing logged. The web integrations ask ``refuse_unshared`` once, on
their first request (after a server integration such as ``GunicornHooks``
has connected the caches made at import), and refuse to serve instead.

Servers are recognised from what they leave in the worker process:

- gunicorn (sync, gthread, ``uvicorn.workers.UvicornWorker``): its ``Worker``
  (or, with ``--preload``, its ``Arbiter``) on the main thread's stack, whose
  configuration gives the number of workers;
- ``uvicorn --workers N``: each worker is a spawned ``multiprocessing`` process
  started with uvicorn's ``Config`` (``--reload`` runs one worker at a time);
- any WSGI server: ``environ["wsgi.multiprocess"]`` (PEP 3333: "an equivalent
  application object may be simultaneously invoked by another process").
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
import weakref
from types import FrameType
from typing import Any

from ..errors import ConfigError

__all__ = ["allow_unshared", "refuse_unshared", "sibling_workers"]

log = logging.getLogger("memsession.web")

#: How far up the main thread's stack to look for the server's own objects.
_MAX_FRAMES = 200
_unshared_on_purpose: weakref.WeakSet[Any] = weakref.WeakSet()


def allow_unshared(cache: Any) -> None:
    """Let ``cache`` keep private sessions even in one of several workers.

    For measurements that compare against an unreplicated cache on purpose
    (the web benchmark's floor), never for an application: its users would
    be logged out as their requests move between workers.
    """
    _unshared_on_purpose.add(cache)


def _main_thread_frame() -> FrameType | None:
    main = threading.main_thread()
    if main is threading.current_thread():
        return sys._getframe(1)
    return sys._current_frames().get(main.ident or 0)


def _gunicorn_workers() -> int | None:
    """The number of workers of the gunicorn this process serves under, if it does."""
    if "gunicorn.arbiter" not in sys.modules:
        return None
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

    frame = _main_thread_frame()
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, (Worker, Arbiter)):
            return int(owner.cfg.workers)
        frame = frame.f_back
    return None


def _uvicorn_workers() -> int | None:
    """The number of workers of ``uvicorn --workers N`` if this process is one of them."""
    if multiprocessing.parent_process() is None or "uvicorn" not in sys.modules:
        return None
    # uvicorn starts each worker as ``spawn.Process(target=subprocess_started, kwargs={"config": ...})``.
    kwargs: Any = getattr(multiprocessing.current_process(), "_kwargs", None)
    config = kwargs.get("config") if isinstance(kwargs, dict) else None
    if type(config).__module__ != "uvicorn.config":
        return None
    if getattr(config, "reload", False):
        return 1  # the reloader runs one worker at a time
    return int(getattr(config, "workers", 1) or 1)


def sibling_workers(multiprocess: object = None) -> tuple[str, int] | None:
    """``(server, workers)`` when other processes serve the same app (``workers`` 0: unknown); else None.

    ``multiprocess``: the request's ``environ["wsgi.multiprocess"]``, if there is one.
    """
    for server, count in (("gunicorn", _gunicorn_workers()), ("uvicorn", _uvicorn_workers())):
        if count is not None:
            return (server, count) if count > 1 else None
    if multiprocess:
        return ("a WSGI server with several processes", 0)
    return None


def refuse_unshared(cache: Any, integration: str, multiprocess: object = None) -> None:
    """Raise ``ConfigError`` if ``cache`` keeps private sessions in one of several workers."""
    if getattr(cache, "bus", None) is not None or cache in _unshared_on_purpose:
        return
    found = sibling_workers(multiprocess)
    if found is None:
        return
    server, count = found
    workers = f"{count} workers" if count else "several worker processes"
    reason = (
        f"{integration} runs in one of {workers} ({server}) with a SessionCache that has no bus: each worker "
        "would keep its own sessions and users would be logged out from one request to the next. "
        "Under gunicorn, install memsession.service.gunicorn.GunicornHooks in gunicorn.conf.py and build the "
        "cache with memsession.contrib.process.session_cache(); under uvicorn --workers N, start a hub "
        "(memsession sidecar or memsession hub) and pass cache=SessionCache(bus=ZmqBus(runtime_dir=...)); "
        "or run a single worker"
    )
    log.error("%s", reason)
    raise ConfigError("cache", "SessionCache(bus=None)", reason)
