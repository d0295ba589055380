"""This process's shared ``SessionCache``, for servers that fork workers.

``session_cache(**options)`` returns the process's one cache, made on first
call; every integration (Flask, Django, Starlette, plain WSGI) can take it.
Outside a server integration it is a plain in-process cache. A server
integration (``memsession.service.gunicorn``) calls ``set_factory`` in each
worker so that caches made from then on join the hub, and connects the ones
made before the fork (``--preload``) itself: this module knows nothing of
buses or stores, only how the process's caches are made and found.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..session_cache import SessionCache

__all__ = ["caches", "register", "session_cache", "set_factory", "take_all"]

#: Makes this process's cache from its options; None: a plain in-process cache.
_factory: Callable[[Config], SessionCache] | None = None
_caches: list[SessionCache] = []
_lock = threading.Lock()


def session_cache(config: Config | None = None, **options: Any) -> SessionCache:
    """This process's shared ``SessionCache`` (made on first call; options must not change)."""
    wanted = Config.from_options(config, **options)
    with _lock:
        if _caches:
            cache = _caches[0]
            if cache.config != wanted:
                raise ConfigError("session_cache", options, "this process's cache was made with other options")
            return cache
        cache = _factory(wanted) if _factory is not None else SessionCache(wanted)
        _caches.append(cache)
        return cache


def set_factory(factory: Callable[[Config], SessionCache] | None) -> list[SessionCache]:
    """Make this process's caches with ``factory`` from now on; return the ones made before."""
    global _factory
    with _lock:
        _factory = factory
        return list(_caches)


def register(cache: SessionCache) -> None:
    """Count an application's own cache (e.g. one ``MemSession(app)`` made) as this process's."""
    with _lock:
        if cache not in _caches:
            _caches.append(cache)


def caches() -> list[SessionCache]:
    """The caches of this process, oldest first."""
    with _lock:
        return list(_caches)


def take_all() -> list[SessionCache]:
    """Forget this process's caches and return them (a worker that exits closes them)."""
    with _lock:
        out = list(_caches)
        _caches.clear()
        return out
