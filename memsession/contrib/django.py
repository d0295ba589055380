"""Django session engine: ``SESSION_ENGINE = "memsession.contrib.django"``.

Behaves like Django's built-in backends (the ``exists``/``create``/
``save(must_create)``/``delete``/``load`` contract, ``CreateError``,
``UpdateError`` for a session deleted elsewhere, ``cycle_key``, ``flush``,
``set_expiry``, async methods, ``clear_expired`` and ``clearsessions``), with
two differences that only make it safer:

- a save applies the keys this request set or deleted onto the newest copy
  of the session, so overlapping requests changing different keys both
  survive (Django's backends write the whole dict: the last one wins);
- new keys are 256-bit memsession ids.

Settings, read once when the first session is used in a process:
``MEMSESSION`` (a dict of cache ``Config`` fields: ``maxsize``,
``idle_timeout``, ``max_age``, ``touch_interval``, ``tombstone_ttl``,
``max_session_bytes``). ``idle_timeout`` defaults to ``SESSION_COOKIE_AGE``,
the lifetime Django gives a session from its last save; ``max_age`` to none.
``set_expiry()`` works as in Django, within the cache's own expiry.

One ``SessionCache`` per process, built from settings on first use;
``set_cache()`` installs another (one with a bus or a store, say).
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError

from ..clock import version_wall_ms
from ..errors import ConfigError, SessionDestroyed
from ..session import Record, copy_data, is_valid_sid, new_id
from ..session_cache import SessionCache
from .core import diff

__all__ = ["SessionStore", "get_cache", "set_cache"]

_setup_lock = threading.Lock()
# Serialises read-newest/merge/write between this process's threads.
_write_lock = threading.Lock()
_cache: SessionCache | None = None


def _cache_from_settings() -> SessionCache:
    options = getattr(settings, "MEMSESSION", None) or {}
    if not isinstance(options, dict):
        raise ConfigError("MEMSESSION", options, "must be a dict of memsession cache options")
    options = dict(options)
    options.setdefault("idle_timeout", settings.SESSION_COOKIE_AGE)
    options.setdefault("max_age", None)
    return SessionCache(**options)


def get_cache() -> SessionCache:
    """This process's session cache, built from settings the first time."""
    global _cache
    cache = _cache
    if cache is None:
        with _setup_lock:
            if _cache is None:
                _cache = _cache_from_settings()
            cache = _cache
    return cache


def set_cache(cache: SessionCache | None) -> SessionCache | None:
    """Use ``cache`` from now on (None: build from settings again); return the previous one."""
    global _cache
    with _setup_lock:
        previous, _cache = _cache, cache
    return previous


def _last_write(record: Record) -> datetime:
    return datetime.fromtimestamp(version_wall_ms(record.version) / 1000.0, tz=timezone.utc)


class SessionStore(SessionBase):
    """Django's ``request.session`` kept in memsession."""

    def __init__(self, session_key: str | None = None) -> None:
        self._cache = get_cache()
        # The data as loaded; a save writes only what differs from it.
        self._base: dict[str, Any] | None = None
        super().__init__(session_key)

    def _get_new_session_key(self) -> str:
        return new_id()

    async def _aget_new_session_key(self) -> str:
        return new_id()

    def load(self) -> dict[str, Any]:
        sid = self.session_key
        record = self._cache.record(sid) if sid else None
        if record is None or record.deleted:
            self._session_key = None
            return {}
        # set_expiry() counts from the last save, as Django's db backend does.
        if self._expired(record):
            self._cache.destroy(record.key)
            self._session_key = None
            return {}
        self._cache.touch(record.key)
        self._base = record.data
        return copy_data(record)

    def exists(self, session_key: str | None) -> bool:
        return bool(session_key) and session_key in self._cache

    def create(self) -> None:
        while True:
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            return self.create()
        sid = self.session_key
        data = self._get_session(no_load=must_create)
        cache = self._cache
        with _write_lock:
            newest = cache.record(sid)
            if must_create:
                if newest is not None:
                    raise CreateError
                value = data
            elif newest is None or newest.deleted:
                raise UpdateError
            elif self._base is None:
                value = data
            else:
                changed, removed = diff(self._base, data)
                value = copy_data(newest)
                value.update(changed)
                for key in removed:
                    value.pop(key, None)
            try:
                record = cache.set(sid, value)
            except SessionDestroyed as exc:
                raise (CreateError if must_create else UpdateError) from exc
        self._base = record.data

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        # A key memsession never issues (Django accepts any 8+ chars) has nothing stored.
        if is_valid_sid(session_key):
            self._cache.destroy(session_key)
        if session_key == self.session_key:
            self._base = None

    # Reads are memory lookups: no thread hop. Writes keep SessionBase's
    # sync_to_async, since a cache with a store may write through.
    async def aload(self) -> dict[str, Any]:
        return self.load()

    async def aexists(self, session_key: str | None) -> bool:
        return self.exists(session_key)

    def _expired(self, record: Record) -> bool:
        expiry = record.data.get("_session_expiry")
        if expiry is None:
            return False  # the cache's own idle/absolute expiry covers it
        return self.get_expiry_age(modification=_last_write(record), expiry=expiry) <= 0

    @classmethod
    def clear_expired(cls) -> None:
        """Drop sessions past the cache's expiry or their own ``set_expiry()``."""
        cache = get_cache()
        cache.prune()
        probe = cls()
        for sid in list(cache):
            record = cache.record(sid)
            if record is not None and not record.deleted and probe._expired(record):
                cache.destroy(sid)

    @classmethod
    async def aclear_expired(cls) -> None:
        cls.clear_expired()
