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

Django's ``login()`` cycles the session key (``cycle_key``, or ``flush`` when
another user was logged in): the data moves to a new key and the old one is
destroyed everywhere (every worker, the store), so a planted session cookie is
never the one logged in.

Settings, read when the first session is used in a process:
``MEMSESSION`` (a dict of cache ``Config`` fields: ``maxsize``, ``protected_fraction``,
``idle_timeout``, ``max_age``, ``touch_interval``, ``tombstone_ttl``,
``max_session_bytes``, ``max_session_items``, ``max_skew``, ``outage_budget``;
plus ``consistency_timeout``). ``idle_timeout`` defaults to ``SESSION_COOKIE_AGE``,
the lifetime Django gives a session from its last save; ``max_age`` to none.
``set_expiry()`` works as in Django, within the cache's own expiry.

One ``SessionCache`` per process, built from settings on first use with
``memsession.contrib.process.session_cache`` (so under ``GunicornHooks`` it
replicates: call ``get_cache()`` in ``wsgi.py`` to build it as the worker
starts); ``set_cache()`` installs another (one with its own bus or store).

Read-your-writes across workers: replace Django's
``django.contrib.sessions.middleware.SessionMiddleware`` with
``memsession.contrib.django.SessionMiddleware``. It behaves the same and adds
a signed companion cookie (``<SESSION_COOKIE_NAME>_v``) carrying the version
of the session's last write, so a worker whose copy is older waits (up to
``MEMSESSION["consistency_timeout"]`` seconds, default 0.1) for it. The
session cookie itself stays the bare session key, as Django apps expect.
The middleware also resolves the session before the view: one that can't be
resolved now (hub and store away past ``outage_budget``) is answered 503 with
``Retry-After``, never replaced by a new empty session. A session that grows
past ``max_session_bytes`` is not saved: the middleware answers 500
(``core.too_large_reply``, one log line) and the stored session and the
cookies stay as they were (with Django's own middleware the
``SessionTooLarge`` propagates as any error in a view would).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.http import HttpResponse
from django.utils.timezone import now as django_now

from ..clock import version_wall_ms
from ..cookies import CookieSigner
from ..errors import ConfigError, SessionDestroyed, SessionTooLarge, SignatureError
from ..session import Record, copy_data, is_valid_sid, new_id
from ..session_cache import SessionCache
from .core import (
    UNAVAILABLE,
    WebConfig,
    catch_up,
    current_record,
    diff,
    is_stale,
    too_large_reply,
    unavailable_reply,
)
from .workers import refuse_unshared

__all__ = ["SessionMiddleware", "SessionStore", "get_cache", "set_cache"]

_INF = float("inf")
_setup_lock = threading.Lock()
# Serialises read-newest/merge/write between this process's threads.
_write_lock = threading.Lock()
_cache: SessionCache | None = None
#: This process's cache was checked to be shared when other workers serve the app (``workers``).
_shared_checked = False


def _settings() -> tuple[dict[str, Any], float]:
    """``(cache options, consistency_timeout)`` from ``settings.MEMSESSION``."""
    options = getattr(settings, "MEMSESSION", None) or {}
    if not isinstance(options, dict):
        raise ConfigError("MEMSESSION", options, "must be a dict of memsession cache options")
    options = dict(options)
    timeout = options.pop("consistency_timeout", 0.1)
    # Checked the same way as the other integrations' option.
    WebConfig(secret_keys=("-",), consistency_timeout=timeout)
    options.setdefault("idle_timeout", settings.SESSION_COOKIE_AGE)
    options.setdefault("max_age", None)
    return options, timeout


def _cache_from_settings() -> SessionCache:
    # The process's shared cache: under memsession's gunicorn hooks it joins
    # the hub (every worker sees every session); elsewhere it is in-process.
    from .process import session_cache

    return session_cache(**_settings()[0])


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
    global _cache, _shared_checked
    with _setup_lock:
        previous, _cache = _cache, cache
        _shared_checked = False
    return previous


def _last_write(record: Record) -> datetime:
    """When ``record`` was written, as Django's ``timezone.now()`` gives times: aware only with ``USE_TZ``."""
    seconds = version_wall_ms(record.version) / 1000.0
    return datetime.fromtimestamp(seconds, tz=timezone.utc) if settings.USE_TZ else datetime.fromtimestamp(seconds)


class SessionStore(SessionBase):
    """Django's ``request.session`` kept in memsession."""

    def __init__(self, session_key: str | None = None) -> None:
        global _shared_checked
        self._cache = get_cache()
        if not _shared_checked:
            refuse_unshared(self._cache, "memsession.contrib.django")
            _shared_checked = True
        # The data as loaded; a save writes only what differs from it.
        self._base: dict[str, Any] | None = None
        #: Stamp (version, writer origin) of the user's last write, from the companion cookie (0: unknown).
        self.min_version = 0
        self.min_origin = 0
        #: The record this request's last save wrote.
        #: The last save: the session id it was made under and its record (whose key is the id's digest).
        self.written: tuple[str, Record] | None = None
        #: ``(sid, record)`` found by ``resolve`` before the view, used by the first load.
        self._resolved: tuple[str, Record | None] | None = None
        #: ``(sid, record)`` the last load found.
        self._loaded: tuple[str, Record] | None = None
        super().__init__(session_key)

    def _current(self, sid: str) -> Record | None:
        resolved, self._resolved = self._resolved, None
        if resolved is not None and resolved[0] == sid:
            return resolved[1]
        if not is_valid_sid(sid):
            return None
        record = current_record(self._cache, sid)
        # Without the companion cookie the version is unknown: any write since the last clear.
        version = self.min_version or self._cache.cleared + 1
        origin = self.min_origin if self.min_version else 0
        if is_stale(record, version, origin):
            # Not here (or without the change the companion cookie names): the hub or store may
            # have it. ``catch_up`` raises SessionUnavailable rather than guess "no session".
            record = catch_up(self._cache, sid, version, _settings()[1], origin)
        return record

    def resolve(self) -> None:
        """Find the session's record now, without marking the session accessed.

        The middleware calls it before the view, so a session that can't be
        resolved (``UNAVAILABLE``) is answered 503 rather than failing in the view.
        """
        sid = self.session_key
        if sid:
            self._resolved = (sid, self._current(sid))

    def _get_new_session_key(self) -> str:
        return new_id()

    async def _aget_new_session_key(self) -> str:
        return new_id()

    def load(self) -> dict[str, Any]:
        sid = self.session_key
        record = self._current(sid) if sid else None
        if record is None or record.deleted:
            self._session_key = None
            return {}
        # set_expiry() counts from the last save, as Django's db backend does.
        if self._expired(record):
            self._cache.destroy(sid)
            self._session_key = None
            return {}
        self._cache.touch(sid)
        self._base = record.data
        self._loaded = (sid, record)
        return copy_data(record)

    def exists(self, session_key: str | None) -> bool:
        return bool(session_key) and session_key in self._cache

    def create(self) -> None:
        while True:
            self._session_key = self._get_new_session_key()  # type: ignore[assignment]
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
        try:
            if must_create:
                with _write_lock:  # two creates of one new key: the second is told so
                    if cache.record(sid) is not None:
                        raise CreateError
                    record = cache.set(sid, data)
            else:
                newest = cache.record(sid)
                if newest is None or newest.deleted:
                    raise UpdateError
                if self._base is None:
                    record = cache.set(sid, data)
                else:
                    # Only what this request changed: merged key by key with what others changed.
                    changed, removed = diff(self._base, data)
                    record = cache.change(sid, changed, removed)
        except SessionDestroyed as exc:
            raise (CreateError if must_create else UpdateError) from exc
        self._base = record.data
        self.written = (sid, record)

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
        sid = self.session_key
        if sid and is_stale(self._cache.record(sid), self.min_version):
            # A wait for a newer copy or a read through the store: not on the event loop.
            return await sync_to_async(self.load)()
        return self.load()

    async def aexists(self, session_key: str | None) -> bool:
        return self.exists(session_key)

    # The cookie's lifetime: Django's (``SESSION_COOKIE_AGE`` or ``set_expiry``), never past
    # the moment the session ends here (its idle timeout or the cache's ``max_age``).
    def get_expiry_age(self, **kwargs: Any) -> int:
        age: int = super().get_expiry_age(**kwargs)
        left = None if kwargs else self._seconds_left()
        return age if left is None else min(age, left)

    def get_expiry_date(self, **kwargs: Any) -> datetime:
        date: datetime = super().get_expiry_date(**kwargs)
        left = None if kwargs else self._seconds_left()
        if left is None:
            return date
        return min(date, django_now() + timedelta(seconds=left))

    def _seconds_left(self) -> int | None:
        """Whole seconds the session has left in the cache if it is saved now; None if it never ends.

        Django asks before it saves: a save counts as a use (the idle timeout
        starts again), while the absolute end stays where the session's
        creation put it (now, for a session not stored yet).
        """
        config = self._cache.config
        now = self._cache.clock.wall()
        created = now
        sid = self.session_key
        for known in (self.written, self._loaded):
            if known is not None and known[0] == sid:
                created = known[1].created
                break
        ends = min(now + config.idle_timeout if config.idle_timeout is not None else _INF,
                   created + config.max_age if config.max_age is not None else _INF)
        return None if ends == _INF else max(0, int(ends - now))

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
        for key in list(cache):  # keys: the ids are not kept
            record = cache.held(key)
            if record is not None and not record.deleted and probe._expired(record):
                cache.destroy_key(key)

    @classmethod
    async def aclear_expired(cls) -> None:
        cls.clear_expired()


class SessionMiddleware(DjangoSessionMiddleware):
    """Django's ``SessionMiddleware`` plus read-your-writes across workers.

    A signed companion cookie carries the session id and the version of its
    last write; a worker whose copy is older waits for that write before the
    view reads the session. A bad or foreign companion cookie is ignored.
    """

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        self.version_cookie = settings.SESSION_COOKIE_NAME + "_v"
        secrets = (settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ()))
        self.signer = CookieSigner(secrets, salt="memsession.django.version")

    def process_request(self, request: Any) -> Any:
        super().process_request(request)
        self._read_version(request)
        return self._resolve(request)

    def _read_version(self, request: Any) -> None:
        session = request.session
        value = request.COOKIES.get(self.version_cookie)
        if not value or not isinstance(session, SessionStore) or not session.session_key:
            return
        try:
            sid, version, origin = self.signer.unsign_stamp(value)
        except SignatureError:
            return
        if sid == session.session_key:
            session.min_version, session.min_origin = version, origin

    def _resolve(self, request: Any) -> Any:
        """503 with Retry-After if the request's session can't be resolved now; else None."""
        session = request.session
        if not isinstance(session, SessionStore) or not session.session_key:
            return None
        try:
            session.resolve()
        except UNAVAILABLE as exc:
            status, headers, body = unavailable_reply(exc)
            return HttpResponse(body, status=status, headers=dict(headers))
        return None

    def process_response(self, request: Any, response: Any) -> Any:
        try:
            response = super().process_response(request, response)
        except SessionTooLarge as exc:
            status, headers, body = too_large_reply(exc)
            refused = HttpResponse(body, status=status, headers=dict(headers))
            # too_large_reply logged it: Django's own marker keeps django.request from adding a
            # second, generic "Internal Server Error" line for this response.
            refused._has_been_logged = True  # type: ignore[attr-defined]
            return refused
        session = getattr(request, "session", None)
        name = settings.SESSION_COOKIE_NAME
        if not isinstance(session, SessionStore) or name not in response.cookies:
            return response
        morsel = response.cookies[name]
        if not morsel.value:
            response.delete_cookie(
                self.version_cookie, path=settings.SESSION_COOKIE_PATH,
                domain=settings.SESSION_COOKIE_DOMAIN, samesite=settings.SESSION_COOKIE_SAMESITE,
            )
        elif session.written is not None and session.written[0] == morsel.value:
            max_age = morsel["max-age"]
            written_sid, written = session.written
            response.set_cookie(
                self.version_cookie,
                self.signer.sign(written_sid, written.version, written.origin),
                max_age=int(max_age) if max_age != "" else None,
                path=settings.SESSION_COOKIE_PATH,
                domain=settings.SESSION_COOKIE_DOMAIN,
                secure=settings.SESSION_COOKIE_SECURE,
                httponly=True,
                samesite=settings.SESSION_COOKIE_SAMESITE,
            )
        return response
