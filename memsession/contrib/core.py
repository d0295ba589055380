"""What every web integration shares: options, the session object, load and save.

A request's life, whatever the framework:

1. ``SessionManager.open(cookie_value)`` verifies the signed cookie and hands
   out a ``Session`` (a dict) holding a private copy of the data. A missing,
   tampered, truncated, oversized or replayed cookie gives a fresh empty
   session, never an error and never anyone else's data. If the cookie says
   the user's last write is newer than this process's copy, the manager waits
   up to ``consistency_timeout`` for it (read-your-writes across workers).
2. The application reads and writes the dict.
3. ``SessionManager.save(session)`` works out what the request changed (keys
   set and keys deleted, nested mutations included, by comparing with the
   copy it started from) and saves only that change (``SessionCache.change``):
   every worker, the hub and the store merge it key by key, so overlapping
   requests that change different keys both survive, on one worker or on
   several, and a session destroyed meanwhile stays destroyed. It returns
   what to do with the cookie (``None``: leave it alone), which names the
   change (its version and writer) for read-your-writes.

Nothing is stored for a session that never held data, so cookie-less traffic
can't flood the LRU.

The pieces live in modules of their own and are re-exported here, so an
integration imports from this one place: ``WebConfig`` in ``config``, the
``Session`` dict and ``diff`` in ``session``, ``Cookie`` and the cookie
headers in ``cookie``. This module keeps the ``SessionManager`` and the
read-your-writes helpers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from ..changes import reflects
from ..clock import version_wall_ms
from ..cookies import CookieSigner
from ..errors import (
    ConfigError,
    SessionDestroyed,
    SessionTooLarge,
    SessionUnavailable,
    SignatureError,
    StoreUnavailable,
)
from ..replica import RECENT_WRITE
from ..session import Record, SessionData, copy_data, new_id
from ..session_cache import SessionCache
from .config import WebConfig
from .cookie import Cookie, HttpDates, cookie_attributes, parse_cookie_header, set_cookie_header
from .session import Session, diff
from .workers import refuse_unshared

__all__ = [
    "UNAVAILABLE", "Cookie", "Session", "SessionManager", "WebConfig", "catch_up", "current_record", "diff",
    "is_stale", "parse_cookie_header", "too_large_reply", "unavailable_reply",
]

log = logging.getLogger("memsession.web")


def is_stale(record: Record | None, version: int, origin: int = 0) -> bool:
    """Whether ``record`` lacks the change ``(version, origin)`` (``changes.reflects``; a tombstone never does)."""
    return record is None or not reflects(record, version, origin)


def current_record(cache: SessionCache, sid: str) -> Record | None:
    """The record this process holds for ``sid``, read through on a miss.

    ``record`` only peeks at memory; on a miss ``get`` reads through the
    cache's store (or the hub, in ``invalidate`` mode) when it has one, so a
    restarted process still finds sessions its store holds.
    """
    checked = getattr(cache, "checked_record", None)  # checked with the hub during a repair
    record = checked(sid) if checked is not None else cache.record(sid)
    if record is None and cache.get(sid) is not None:
        record = cache.record(sid)
    return record


def catch_up(cache: SessionCache, sid: str, version: int, timeout: float, origin: int = 0) -> Record | None:
    """The newest record of ``sid`` this process can get, waiting up to ``timeout`` for change ``(version, origin)``.

    Uses ``cache.wait_for`` (a replicated cache: wait for the bus, then read
    through the hub or store); a cache without it can't learn of newer writes.
    Raises ``SessionUnavailable`` when neither hub nor store answered within
    the cache's ``outage_budget``: see ``unavailable_reply``.
    """
    wait_for = getattr(cache, "wait_for", None)
    if wait_for is None:
        return cache.record(sid)
    if cache.clock.wall() - version_wall_ms(version) / 1000.0 > RECENT_WRITE:
        # Replication has long had its chance: read through now. An old
        # cookie replayed in a loop thus never holds a worker for the timeout.
        timeout = 0.0
    record: Record | None = wait_for(sid, version, timeout, origin)
    return record


#: What a request can't be served through: nothing could say whether its session exists
#: (``SessionUnavailable``), or a store it must read or write through is down.
UNAVAILABLE = (SessionUnavailable, StoreUnavailable)
_UNAVAILABLE_BODY = b"The session service is briefly unavailable; please retry.\n"


def unavailable_reply(exc: BaseException) -> tuple[int, list[tuple[str, str]], bytes]:
    """The fail-safe answer to a request ``UNAVAILABLE`` stopped: 503, ``Retry-After``, nothing cached.

    Never a new empty session (that would log the user out) and never an
    older copy passed off as the newest.
    """
    retry_after = getattr(exc, "retry_after", 1)
    headers = [("Retry-After", str(retry_after)), ("Content-Type", "text/plain; charset=utf-8"),
               ("Cache-Control", "no-store")]
    return 503, headers, _UNAVAILABLE_BODY


_TOO_LARGE_BODY = b"The session grew past its size limit; this request's changes to it were not saved.\n"


def too_large_reply(exc: SessionTooLarge) -> tuple[int, list[tuple[str, str]], bytes]:
    """Log a save refused by ``max_session_bytes`` once, and give the answer that replaces the response.

    ``cache.set`` refuses the data before it changes anything, so the stored
    session (if any) is the one the request started from and the cookie is
    left as it was. 500 rather than 413: the request itself may be small
    (a session that grew over many requests); the limit is the server's.
    The log line names the size and the limit, never the session id or data.
    """
    log.error(
        "session not saved: its data is %d bytes serialized, over max_session_bytes=%d; "
        "the stored session is unchanged", exc.size, exc.limit,
    )
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    return 500, headers, _TOO_LARGE_BODY


_DELETE = Cookie(None)


class SessionManager:
    """Loads and saves sessions of one ``SessionCache`` for web requests. Thread-safe.

    ``SessionManager(cache, config)``, or ``SessionManager.build(cache=None,
    **options)`` where options are ``WebConfig`` and cache ``Config`` fields.

    Read-your-writes: when the cookie's version is newer than this process's
    copy, ``open`` calls ``cache.wait_for(sid, version, timeout)`` if the cache
    has it (a replicated cache: wait for the bus, then read through the hub or
    store) and expects the newest record it could get, or None. A cache that
    replicates nothing has no such method: nothing newer can arrive.
    """

    def __init__(self, cache: SessionCache, config: WebConfig) -> None:
        self.cache = cache
        self.config = config
        self.signer = CookieSigner(config.secret_keys, salt=config.salt)
        # What every Set-Cookie shares, joined once; Expires formatted once a second.
        self._cookie_attributes = cookie_attributes(config)
        self._http_dates = HttpDates()
        self._wait_for = getattr(cache, "wait_for", None)
        self._counts = dict.fromkeys(("bad_cookies", "stale_reads", "waits"), 0)
        self._shared_checked = False

    @classmethod
    def build(cls, cache: SessionCache | None = None, **options: Any) -> SessionManager:
        """A manager over ``cache``, or over a new cache made from the cache options."""
        web, cache_opts = WebConfig.split_options(options)
        if cache is not None and cache_opts:
            name = next(iter(cache_opts))
            raise ConfigError(name, cache_opts[name], "cache options can't be combined with cache=")
        if cache is None:
            cache = SessionCache(**cache_opts)
        return cls(cache, WebConfig(**web))

    def check_shared(self, integration: str, multiprocess: object = None) -> None:
        """Refuse (``ConfigError``) to serve private sessions in one of several workers; checked until it passes.

        Integrations call it on each request before ``open`` (a flag test once
        it has passed): at their first request a server integration has
        connected the caches made at import. ``multiprocess``: the WSGI
        environ's ``wsgi.multiprocess``.
        """
        if not self._shared_checked:
            refuse_unshared(self.cache, integration, multiprocess)
            self._shared_checked = True

    def stats(self) -> dict[str, int]:
        return dict(self._counts)

    # -- load -------------------------------------------------------------------

    def open(
        self, cookie_value: str | Sequence[str] | None, session_class: type[Session] = Session
    ) -> Session:
        """The session a request's cookie value (or values) points to, or a fresh empty one.

        Raises one of ``UNAVAILABLE`` when that can't be told now (hub and
        store away past the outage budget): answer with ``unavailable_reply``.
        """
        if not cookie_value:
            return session_class()
        verified = self.verify(cookie_value)
        if verified is None:
            return session_class(had_cookie=True)
        sid, version, origin = verified
        record = current_record(self.cache, sid)
        if is_stale(record, version, origin):
            record = self._catch_up(sid, version, origin)
        return self._session_from(sid, record, version, origin, session_class)

    def verify(self, cookie_value: str | Sequence[str]) -> tuple[str, int, int] | None:
        """``(sid, version, origin)`` from the first value that verifies, or None (counted)."""
        values = (cookie_value,) if isinstance(cookie_value, str) else cookie_value
        reason = "no value"
        for value in values:
            try:
                return self.signer.unsign_stamp(value)
            except SignatureError as exc:
                reason = exc.reason
        self._counts["bad_cookies"] += 1
        log.debug("session cookie refused: %s", reason)
        return None

    def needs_catch_up(self, cookie_value: str | Sequence[str] | None) -> bool:
        """Whether ``open`` may wait or do I/O (a newer copy, a read through): async callers then use a thread."""
        if not cookie_value:
            return False
        values = (cookie_value,) if isinstance(cookie_value, str) else cookie_value
        for value in values:
            try:
                sid, version, origin = self.signer.unsign_stamp(value)
            except SignatureError:
                continue
            return is_stale(self.cache.record(sid), version, origin)
        return False

    def _catch_up(self, sid: str, version: int, origin: int) -> Record | None:
        if self._wait_for is None:
            return self.cache.record(sid)
        self._counts["waits"] += 1
        record = catch_up(self.cache, sid, version, self.config.consistency_timeout, origin)
        if is_stale(record, version, origin) and record is not None:
            self._counts["stale_reads"] += 1
        return record

    def _session_from(
        self, sid: str, record: Record | None, version: int, origin: int, session_class: type[Session]
    ) -> Session:
        if record is None or record.deleted:
            # Unknown, expired or destroyed (a replayed cookie): a fresh session,
            # which gets a new id if it is ever stored. The old id is never reused.
            return session_class(had_cookie=True)
        # Every request that brings the cookie is a use, so a full cache keeps
        # this session through floods of new ones. ``touch`` propagates the
        # access (sliding the idle expiry everywhere) at most once per
        # touch_interval; the cookie's expiry is refreshed when one is due.
        refresh = self.cache.clock.wall() - record.accessed >= self.cache.config.touch_interval
        if not self.cache.touch(sid):
            return session_class(had_cookie=True)  # ended since it was looked up
        refresh = refresh and self.config.refresh_each_request
        session = session_class(
            copy_data(record), sid=sid, version=version if origin else record.version, base=record.data,
            had_cookie=True, refresh=refresh,
        )
        # The user's last change, re-signed if the cookie is only refreshed: the newest change of the
        # copy may be another writer's, and a copy holding that one can still lack the user's own.
        session.origin = origin or record.origin
        return session

    # -- save -------------------------------------------------------------------

    def save(self, session: Session) -> Cookie | None:
        """Store what the request changed; return the cookie to send, or None to leave it.

        Raises ``SessionTooLarge`` (nothing stored, the old copy intact) when the
        result is over ``max_session_bytes``: answer with ``too_large_reply``.
        """
        cache = self.cache
        sid = session.sid
        if session._destroy:
            if sid is not None:
                cache.destroy(sid)
            return _DELETE if session.had_cookie else None
        if sid is not None and session._regenerate:
            # The new id is stored first: if that is refused (too large), the old session
            # and its cookie still stand, rather than a logout.
            old = sid
            session.sid = None
            try:
                cookie = self._store_new(session) if session else _DELETE
            except BaseException:
                session.sid = old
                raise
            cache.destroy(old)
            return cookie
        if sid is None:
            if not session:
                # Never stored: nothing to keep for an empty session. A bad or
                # dead cookie is removed so the browser stops sending it.
                return _DELETE if session.had_cookie else None
            return self._store_new(session)
        if session._cleared:
            record = self._replace(sid, dict(session))
        else:
            changed, removed = session.changes()
            if not changed and not removed:
                if session.modified or session._refresh:
                    return self._cookie_for(sid, cache.record(sid), session)
                return None
            record = self._merge(sid, changed, removed)
        if record is None:
            return _DELETE
        session.version, session.origin = record.version, record.origin
        session._base = record.data
        return self._cookie(sid, record)

    def _store_new(self, session: Session) -> Cookie:
        sid = new_id()
        record = self.cache.set(sid, session)
        session.sid = sid
        session.new = True
        session.version, session.origin = record.version, record.origin
        session._base = record.data
        return self._cookie(sid, record)

    def _replace(self, sid: str, data: SessionData) -> Record | None:
        """Write the request's whole view; None if that ended the session."""
        try:
            if not data:
                self.cache.destroy(sid)
                return None
            return self.cache.set(sid, data)
        except SessionDestroyed:
            return None

    def _merge(self, sid: str, changed: dict[str, Any], removed: Iterable[str]) -> Record | None:
        """Save the request's own changes (``SessionCache.change``); None if the session ended meanwhile.

        Only the change travels, so it merges key by key with whatever other
        requests changed, here or on other workers. A request that removes
        every key leaves an empty session rather than ending it: ending it
        would beat a key another request sets at the same moment
        (``session.clear()`` ends a session).
        """
        try:
            return self.cache.change(sid, changed, removed)
        except SessionDestroyed:
            return None  # destroyed meanwhile: a late save must not resurrect it

    def _cookie_for(self, sid: str, record: Record | None, session: Session) -> Cookie | None:
        """A refreshed cookie: ``record``'s expiry, the stamp of the user's last change kept."""
        if record is None:
            return None
        if record.deleted:
            return _DELETE
        return self._cookie(sid, record, (session.version, session.origin))

    def _cookie(self, sid: str, record: Record, stamp: tuple[int, int] | None = None) -> Cookie:
        """The cookie for session ``sid`` at ``record``: the id, never the key, goes to the browser.

        It names ``stamp`` (the user's last change), or the change that made ``record``.
        """
        expires = record.expires if math.isfinite(record.expires) else None
        version, origin = stamp if stamp is not None else (record.version, record.origin)
        return Cookie(self.signer.sign(sid, version, origin), expires)

    # -- headers, for integrations that write them themselves ----------------------

    def set_cookie_header(self, cookie: Cookie, *, permanent: bool | None = None) -> str:
        """The ``Set-Cookie`` header value for ``cookie``; ``permanent`` overrides the config."""
        return set_cookie_header(self.config, cookie, self.cache.clock.wall, permanent=permanent,
                                 attributes=self._cookie_attributes, http_date=self._http_dates)

    def max_age(self, cookie: Cookie) -> int | None:
        """Seconds until ``cookie`` expires, for frameworks that take Max-Age."""
        if cookie.expires is None:
            return None
        return max(0, round(cookie.expires - self.cache.clock.wall()))
