"""ASGI middleware: the session in ``scope["session"]``, as Starlette's ``request.session``.

::

    from starlette.middleware import Middleware
    from memsession.contrib.asgi import SessionMiddleware
    app = Starlette(routes=..., middleware=[Middleware(SessionMiddleware, secret_key="...")])

It takes Starlette's ``SessionMiddleware`` arguments (``secret_key``,
``session_cookie``, ``max_age``, ``path``, ``same_site``, ``https_only``,
``domain``, ``partitioned``) and memsession's own (``WebConfig`` and cache ``Config`` fields,
``cache=``, ``manager=``). ``max_age`` becomes the idle timeout (Starlette's
default, 14 days, when it is not given); with ``cache=`` the cache's own idle
timeout counts and a different ``max_age`` is refused (``ConfigError``), since
the cookie could not honour it. ``None`` makes the cookie a browser-session
cookie.

At login, call ``request.session.regenerate()``: the session's data moves to
a new id when the response starts and the old id is destroyed everywhere, so a
cookie planted in the browser before the login is never the one logged in
(session fixation). Starlette has no login of its own to hook, and its own
cookie sessions need no rotation (the data is the cookie): with sessions kept
on the server, the login view asks for it.

A request whose session can't be resolved now (hub and store away past the
cache's ``outage_budget``) is answered 503 with ``Retry-After`` (a WebSocket
is closed with code 1013) without reaching the application. A session that
grows past ``max_session_bytes`` is not saved: the response is replaced by a
500 (``core.too_large_reply``, one log line), the stored session and the
cookie stay as they were.

The event loop never waits: reading a fresh session is a dict lookup done in
place; waiting for a newer copy from another worker and writing (which may
reach a store) run in a worker thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import anyio.to_thread

from ..errors import ConfigError, SessionTooLarge
from ..session_cache import SessionCache
from .core import (
    UNAVAILABLE,
    Session,
    SessionManager,
    parse_cookie_header,
    too_large_reply,
    unavailable_reply,
)

__all__ = ["SessionMiddleware", "get_session"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_STARLETTE_DEFAULT_MAX_AGE = 14 * 24 * 3600
#: ``max_age`` not given: Starlette's default, or the idle timeout of the ``cache=`` given.
_DEFAULT: Any = object()
#: memsession's options the middleware takes by name, besides Starlette's (``WebConfig`` and cache
#: ``Config`` fields; the cache's absolute ``max_age`` needs ``cache=``: Starlette's ``max_age`` is
#: the idle timeout).
OWN_OPTIONS = ("secret_keys", "cookie_httponly", "refresh_each_request", "consistency_timeout", "salt",
               "maxsize", "protected_fraction", "idle_timeout", "touch_interval", "tombstone_ttl",
               "max_session_bytes", "max_session_items", "max_skew", "outage_budget")
#: WebSocket close code "try again later" (RFC 6455 registry).
_TRY_AGAIN_LATER = 1013


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: BaseException) -> None:
    """The fail-safe: 503 with Retry-After (a WebSocket is closed with 1013, try again later).

    The WebSocket is accepted first: closed before that, the client would see
    only a 403 handshake rejection, never the code.
    """
    if scope["type"] == "websocket":
        if (await receive()).get("type") == "websocket.connect":
            await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": _TRY_AGAIN_LATER})
        return
    status, headers, body = unavailable_reply(exc)
    await send({"type": "http.response.start", "status": status, "headers": _raw(headers)})
    await send({"type": "http.response.body", "body": body})


def get_session(connection: Any) -> Session:
    """The request's (or WebSocket's, or scope's) session, typed: ``get_session(request).regenerate()``.

    Starlette types ``request.session`` as a plain ``dict``, which has no
    ``regenerate()`` or ``destroy()``. Raises ``TypeError`` when the session
    is not memsession's (``SessionMiddleware`` not installed).
    """
    scope = getattr(connection, "scope", connection)
    current = scope.get("session") if isinstance(scope, MutableMapping) else None
    if not isinstance(current, Session):
        raise TypeError("no memsession session on this connection: is memsession.contrib.asgi.SessionMiddleware "
                        "in the app's middleware?")
    return current


class SessionMiddleware:
    """Starlette-compatible session middleware backed by a ``SessionCache``."""

    def __init__(
        self,
        app: ASGIApp,
        secret_key: str | bytes | None = None,
        session_cookie: str = "session",
        max_age: int | None = _DEFAULT,  # Starlette's 14 days, or the cache='s idle timeout
        path: str = "/",
        same_site: str = "lax",
        https_only: bool = False,
        domain: str | None = None,
        partitioned: bool = False,
        *,
        cache: SessionCache | None = None,
        manager: SessionManager | None = None,
        # memsession's own options, named (not ``**options``) so that type checkers can follow
        # ``Middleware(SessionMiddleware, ...)``; the cache ones only without ``cache=``.
        secret_keys: Sequence[str | bytes] = _DEFAULT,
        cookie_httponly: bool = _DEFAULT,
        refresh_each_request: bool = _DEFAULT,
        consistency_timeout: float = _DEFAULT,
        salt: str = _DEFAULT,
        maxsize: int = _DEFAULT,
        protected_fraction: float = _DEFAULT,
        idle_timeout: float | None = _DEFAULT,
        touch_interval: float = _DEFAULT,
        tombstone_ttl: float = _DEFAULT,
        max_session_bytes: int = _DEFAULT,
        max_session_items: int = _DEFAULT,
        max_skew: float = _DEFAULT,
        outage_budget: float = _DEFAULT,
    ) -> None:
        self.app = app
        given = locals()
        options: dict[str, Any] = {name: given[name] for name in OWN_OPTIONS if given[name] is not _DEFAULT}
        if manager is None:
            if secret_key is not None:
                options.setdefault("secret_keys", (str(secret_key),) if not isinstance(secret_key, bytes) else (secret_key,))
            options.setdefault("cookie_name", session_cookie)
            options.setdefault("cookie_path", path)
            options.setdefault("cookie_samesite", same_site)
            options.setdefault("cookie_secure", https_only)
            options.setdefault("cookie_domain", domain)
            options.setdefault("cookie_partitioned", partitioned)
            if max_age is None:
                options.setdefault("permanent", False)
            elif cache is None:
                options.setdefault("idle_timeout", _STARLETTE_DEFAULT_MAX_AGE if max_age is _DEFAULT else max_age)
            elif max_age is not _DEFAULT and max_age != cache.config.idle_timeout:
                # The cache decides when its sessions end, and the cookie says what it decided:
                # a max_age it can't honour would be ignored without a word.
                raise ConfigError("max_age", max_age, f"is the idle timeout, and the cache= given has its own "
                                  f"(idle_timeout={cache.config.idle_timeout!r}): build that cache with "
                                  f"SessionCache(idle_timeout={max_age!r}, ...) or leave max_age out")
            manager = SessionManager.build(cache, **options)
        self.manager = manager
        self._cookie_name = manager.config.cookie_name.encode("latin-1")

    def _cookie_values(self, scope: Scope) -> list[str]:
        values: list[str] = []
        name = self.manager.config.cookie_name
        for key, value in scope.get("headers") or ():
            if key == b"cookie" and self._cookie_name in value:
                values.extend(parse_cookie_header(value.decode("latin-1"), name))
        return values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        manager = self.manager
        # On each request until it passes, not when built: a middleware made before a fork
        # (--preload) gets its cache connected by the server's hooks afterwards.
        manager.check_shared("memsession.contrib.asgi")
        values = self._cookie_values(scope)
        try:
            if values and manager.needs_catch_up(values):
                session: Session = await anyio.to_thread.run_sync(manager.open, values)
            else:
                session = manager.open(values)
        except UNAVAILABLE as exc:
            await _refuse(scope, receive, send, exc)
            return
        scope["session"] = session

        refused = False

        async def send_with_cookie(message: Message) -> None:
            nonlocal refused
            if refused:
                return  # the application's body of a response that was replaced
            if message["type"] == "http.response.start":
                current = scope["session"]
                if current is not session:
                    # The app replaced the dict: save its content as this session's.
                    session.clear()
                    session.update(current)
                try:
                    if session.needs_write():
                        cookie = await anyio.to_thread.run_sync(manager.save, session)
                    else:
                        cookie = manager.save(session)
                except SessionTooLarge as exc:
                    refused = True
                    status, reply_headers, body = too_large_reply(exc)
                    await send({"type": "http.response.start", "status": status, "headers": _raw(reply_headers)})
                    await send({"type": "http.response.body", "body": body})
                    return
                headers = list(message.get("headers") or ())
                if cookie is not None:
                    headers.append((b"set-cookie", manager.set_cookie_header(cookie).encode("latin-1")))
                if session.accessed:
                    headers.append((b"vary", b"Cookie"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cookie)
