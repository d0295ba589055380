"""Sessions for any WSGI application: the session is ``environ["memsession.session"]``.

::

    from memsession.contrib.wsgi import SessionMiddleware
    app = SessionMiddleware(app, secret_keys=["s3cret"], idle_timeout=1800)

At login, call ``session.regenerate()`` (before ``start_response``): the
data moves to a new id and the old id is destroyed everywhere, so a cookie
planted in the browser before the login is never the one logged in (session
fixation). WSGI has no login to hook, so the login view must ask for it.

A request whose session can't be resolved now (hub and store away past the
cache's ``outage_budget``) is answered 503 with ``Retry-After`` without
reaching the application. The session is saved when the application calls ``start_response`` (the
cookie must go out with the headers), so changes made while the response body
is being produced are not saved. A session that grows past
``max_session_bytes`` is not saved either: the response is replaced by a 500
(``core.too_large_reply``, one log line) and the stored session and the
cookie stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import SessionTooLarge
from ..session_cache import SessionCache
from .core import (
    UNAVAILABLE,
    Session,
    SessionManager,
    parse_cookie_header,
    too_large_reply,
    unavailable_reply,
)

__all__ = ["ENVIRON_KEY", "SessionMiddleware", "get_session"]

ENVIRON_KEY = "memsession.session"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict, StartResponse], Iterable[bytes]]


class SessionMiddleware:
    """WSGI middleware. Options are ``WebConfig`` and cache ``Config`` fields.

    Pass ``cache=`` to share a ``SessionCache`` (then no cache options), or
    ``manager=`` to share a whole ``SessionManager``.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        cache: SessionCache | None = None,
        manager: SessionManager | None = None,
        environ_key: str = ENVIRON_KEY,
        **options: Any,
    ) -> None:
        self.app = app
        self.manager = manager if manager is not None else SessionManager.build(cache, **options)
        self.environ_key = environ_key
        self._cookie_name = self.manager.config.cookie_name

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        manager = self.manager
        manager.check_shared("memsession.contrib.wsgi", environ.get("wsgi.multiprocess"))
        header = environ.get("HTTP_COOKIE", "")
        values = parse_cookie_header(header, self._cookie_name) if header else []
        try:
            session = manager.open(values)
        except UNAVAILABLE as exc:
            status, fail_headers, body = unavailable_reply(exc)
            start_response(f"{status} Service Unavailable", fail_headers)
            return [body]
        environ[self.environ_key] = session

        #: The body that replaces the application's once a save was refused (too large).
        refusal: list[bytes] = []
        started: list[bool] = []

        def session_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            started.append(True)
            try:
                cookie = manager.save(session)
            except SessionTooLarge as exc:
                code, headers, body = too_large_reply(exc)
                refusal.append(body)
                start_response(f"{code} Internal Server Error", headers, exc_info)
                return _discard  # what the application writes belongs to the refused response
            if cookie is not None:
                headers = list(headers)
                headers.append(("Set-Cookie", manager.set_cookie_header(cookie)))
            if session.accessed:
                headers = list(headers)
                headers.append(("Vary", "Cookie"))
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        result = self.app(environ, session_start_response)
        if refusal:
            _close(result)
            return refusal
        if started:
            return result
        # start_response not called yet: a generator application calls it before its first chunk.
        return _replaced_once_refused(result, refusal)


def _discard(data: bytes) -> None:
    """The ``write`` callable of a refused response: its body is ours."""


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _replaced_once_refused(result: Iterable[bytes], refusal: list[bytes]) -> Iterator[bytes]:
    try:
        for chunk in result:
            if refusal:
                break
            yield chunk
    finally:
        _close(result)
    yield from refusal


def get_session(environ: dict, key: str = ENVIRON_KEY) -> Session:
    """The request's session (``KeyError`` if the middleware is not installed)."""
    return environ[key]
