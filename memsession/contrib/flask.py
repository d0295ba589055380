"""Flask sessions kept in memsession: ``MemSession(app)`` and nothing else changes.

::

    from memsession.contrib.flask import MemSession
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "..."
    MemSession(app)            # or: ext = MemSession(); ext.init_app(app)

``flask.session`` stays a dict with ``modified``, ``permanent``, ``new`` and
``accessed``; it also gains ``regenerate()`` and ``destroy()``.
``session.clear()`` ends the session too once saved.

A login gives the session a new id (the data moves, the old id is destroyed
everywhere), so a cookie planted in the browser before the login is never the
one that is logged in (session fixation). With Flask-Login this happens by
itself: ``MemSession`` connects to its ``user_logged_in`` signal
(``login_user``) and to ``user_loaded_from_cookie`` (a "remember me" login
writes the user into whatever session the request brought, which may be the
planted one), for this app only. Without Flask-Login, call
``session.regenerate()`` in the login view; ``session.clear()`` alone (as in
Flask's tutorial) keeps the id.

A request whose session can't be resolved now (hub and store away past the
cache's ``outage_budget``) is answered 503 with ``Retry-After`` before any
view runs. A session that grows past ``max_session_bytes`` is not saved: the
response becomes a 500 (``core.too_large_reply``, one log line), the stored
session and the cookie stay as they were.

Settings read once from ``app.config`` (Flask's and Flask-Session's names):
``SECRET_KEY`` (+ ``SECRET_KEY_FALLBACKS`` for rotation), ``SESSION_COOKIE_NAME``,
``SESSION_COOKIE_DOMAIN``, ``SESSION_COOKIE_PATH`` (default
``APPLICATION_ROOT``), ``SESSION_COOKIE_HTTPONLY``, ``SESSION_COOKIE_SECURE``,
``SESSION_COOKIE_SAMESITE`` (default ``"Lax"``, safer than Flask's None),
``SESSION_COOKIE_PARTITIONED``,
``SESSION_PERMANENT`` (default True, as in Flask-Session),
``SESSION_REFRESH_EACH_REQUEST``, ``PERMANENT_SESSION_LIFETIME`` (the idle
timeout). memsession's own options are ``MEMSESSION_<NAME>`` for every cache
``Config`` field (``MEMSESSION_MAXSIZE``, ``MEMSESSION_MAX_AGE``, ...) and
``MEMSESSION_CONSISTENCY_TIMEOUT``.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from typing import Any

import flask
from flask import Flask, Request, Response
from flask import session as flask_session
from flask.sessions import SessionInterface, SessionMixin

from ..config import Config
from ..errors import ConfigError, SessionTooLarge
from ..session_cache import SessionCache
from .core import (
    UNAVAILABLE,
    Session,
    SessionManager,
    WebConfig,
    parse_cookie_header,
    too_large_reply,
    unavailable_reply,
)

__all__ = ["FlaskSession", "MemSession", "MemSessionInterface", "config_from_flask", "get_session"]


class FlaskSession(Session, SessionMixin):
    """``flask.session``: a memsession ``Session`` with Flask's ``permanent`` flag."""

    #: Why the request's session could not be resolved (then the request is answered 503).
    unavailable: BaseException | None = None


def get_session() -> FlaskSession:
    """``flask.session`` as memsession's session, typed: ``get_session().regenerate()``, ``.destroy()``.

    Flask types ``flask.session`` as its ``SessionMixin``, which has neither.
    Raises ``TypeError`` when this app's sessions are not memsession's
    (``MemSession(app)`` not set up) and ``RuntimeError`` outside a request.
    """
    current = flask_session._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(current, FlaskSession):
        raise TypeError(f"flask.session is a {type(current).__name__}, not memsession's: is MemSession(app) set up?")
    return current


def _refuse_unavailable() -> None:
    """``before_request``: a request whose session could not be resolved gets the fail-safe answer."""
    session = flask.session
    reason = getattr(session, "unavailable", None)
    if reason is not None:
        status, headers, body = unavailable_reply(reason)
        flask.abort(Response(body, status=status, headers=headers))


def _rotate_at_login(app: Flask, **_: Any) -> None:
    """Flask-Login logged a user into this request's session: it moves to a new id when saved."""
    session = flask.session
    if not isinstance(session, FlaskSession):
        # MemSession connected this handler for ``app``, so memsession's interface was replaced since.
        raise ConfigError("session_interface", type(app.session_interface).__name__,
                          "replaced after MemSession(app): the login could not give the session a new id")
    session.regenerate()


def _rotate_at_flask_login(app: Flask) -> None:
    """Rotate the session id at every Flask-Login login of ``app``, if Flask-Login is installed."""
    try:
        from flask_login import user_loaded_from_cookie, user_logged_in
    except ImportError:
        return  # logins are the app's own: its login view calls session.regenerate()
    # sender=app: another app in the process (perhaps with Flask's own sessions) is left alone.
    # Blinker holds the receiver weakly; a module-level function lives as long as the module.
    for signal in (user_logged_in, user_loaded_from_cookie):
        signal.connect(_rotate_at_login, sender=app)


def _seconds(option: str, value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(option, value, "must be a timedelta or a number of seconds")


def config_from_flask(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(WebConfig options, cache Config options)`` from a Flask ``app.config``."""
    secret = config.get("SECRET_KEY")
    if not secret:
        raise ConfigError("SECRET_KEY", secret, "memsession signs its cookie with SECRET_KEY; set it")
    fallbacks = config.get("SECRET_KEY_FALLBACKS") or []
    web: dict[str, Any] = {
        "secret_keys": (secret, *fallbacks),
        "cookie_name": config.get("SESSION_COOKIE_NAME", "session"),
        "cookie_domain": config.get("SESSION_COOKIE_DOMAIN") or None,
        "cookie_path": config.get("SESSION_COOKIE_PATH") or config.get("APPLICATION_ROOT") or "/",
        "cookie_httponly": bool(config.get("SESSION_COOKIE_HTTPONLY", True)),
        "cookie_secure": bool(config.get("SESSION_COOKIE_SECURE", False)),
        "cookie_samesite": config.get("SESSION_COOKIE_SAMESITE") or "Lax",
        "cookie_partitioned": bool(config.get("SESSION_COOKIE_PARTITIONED", False)),
        "permanent": bool(config.get("SESSION_PERMANENT", True)),
        "refresh_each_request": bool(config.get("SESSION_REFRESH_EACH_REQUEST", True)),
    }
    if "MEMSESSION_CONSISTENCY_TIMEOUT" in config:
        web["consistency_timeout"] = config["MEMSESSION_CONSISTENCY_TIMEOUT"]
    cache: dict[str, Any] = {}
    lifetime = config.get("PERMANENT_SESSION_LIFETIME")
    if lifetime is not None:
        # Flask's lifetime is re-counted on every request: an idle timeout.
        cache["idle_timeout"] = _seconds("PERMANENT_SESSION_LIFETIME", lifetime)
    for field in fields(Config):
        name = "MEMSESSION_" + field.name.upper()
        if name in config:
            cache[field.name] = config[name]
    return web, cache


class MemSessionInterface(SessionInterface):
    """The ``app.session_interface`` that ``MemSession`` installs."""

    session_class = FlaskSession

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    def open_session(self, app: Flask, request: Request) -> FlaskSession:
        # The Cookie header itself, not request.cookies: that parses every cookie
        # into a MultiDict, on every request, to find this one.
        self.manager.check_shared("memsession.contrib.flask", request.environ.get("wsgi.multiprocess"))
        header = request.environ.get("HTTP_COOKIE")
        values = parse_cookie_header(header, self.manager.config.cookie_name) if header else None
        try:
            return self.manager.open(values, FlaskSession)  # type: ignore[return-value]
        except UNAVAILABLE as exc:
            # Flask opens the session before any handler can answer: the
            # before_request hook MemSession installs answers 503 instead.
            session = FlaskSession(had_cookie=True)
            session.unavailable = exc
            return session

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, FlaskSession)
        if session.unavailable is not None:
            return  # never resolved: nothing to save, and the cookie stays as it was
        manager = self.manager
        try:
            cookie = manager.save(session)
        except SessionTooLarge as exc:
            # Raising here would make Flask log a traceback, render its error page and save
            # (and raise) again on the way out: the response is replaced instead.
            _replace_response(response, *too_large_reply(exc))
            return
        if session.accessed:
            _vary_on_cookie(response)
        if cookie is None:
            return
        # Built here rather than by response.set_cookie: the attributes that never
        # change are joined once per app, and the header is the WSGI and ASGI
        # integrations' own, byte for byte.
        permanent = manager.config.permanent or session.permanent
        response.headers.add("Set-Cookie", manager.set_cookie_header(cookie, permanent=permanent))


def _vary_on_cookie(response: Response) -> None:
    """``Vary: Cookie`` (a cached response must not serve one user's session to another)."""
    if "Vary" in response.headers:
        response.vary.add("Cookie")  # merged with what the view said it varies on
    else:
        # response.vary parses and re-joins the header each time it is touched.
        response.headers["Vary"] = "Cookie"


def _replace_response(response: Response, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    """Turn the view's response into this one: its headers (cookies included) go too."""
    response.status_code = status
    response.headers.clear()
    for name, value in headers:
        response.headers[name] = value
    response.set_data(body)


class MemSession:
    """Flask extension: ``MemSession(app, cache=None)`` or ``init_app`` later.

    Without ``cache=``, each app gets a ``SessionCache`` built from its
    config. Pass one to share it between apps or to give it a bus or store.
    """

    def __init__(self, app: Flask | None = None, *, cache: SessionCache | None = None) -> None:
        self.cache = cache
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> SessionManager:
        web, cache_opts = config_from_flask(app.config)
        if self.cache is not None:
            manager = SessionManager(self.cache, WebConfig(**web))
        else:
            manager = SessionManager(SessionCache(**cache_opts), WebConfig(**web))
        app.session_interface = MemSessionInterface(manager)
        app.before_request_funcs.setdefault(None, []).insert(0, _refuse_unavailable)
        _rotate_at_flask_login(app)
        app.extensions["memsession"] = manager
        return manager
