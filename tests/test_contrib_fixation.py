"""Session fixation: the cookie a session had before login is never the one that is logged in.

The attack: someone gets a session cookie of their own from the site (any
request that stores a session), plants it in the victim's browser, and waits
for the victim to log in. If the login keeps the session's id, the planted
cookie is now logged in as the victim. So in every integration a login moves
the session to a new id, and the old id is destroyed everywhere: on the
worker that served the login, on another worker (the two share an in-memory
hub, the bus's twin: same frames, same protocol) and in the store (a worker
started afresh on it finds nothing under the old id, and the new one).

Flask rotates by itself when Flask-Login logs a user in (``login_user`` or a
"remember me" cookie); without Flask-Login, as in Starlette and plain WSGI,
the login view calls ``session.regenerate()``. Django's ``login()`` cycles
the key itself: its test is in tests/test_contrib_django.py, where Django's
settings are configured.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask, request, session
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from werkzeug.test import Client as WsgiClient

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 package; its test client works the same with httpx.
    warnings.filterwarnings("ignore", message=".*install `httpx2`", category=UserWarning)
    from starlette.testclient import TestClient

from memsession import ConfigError, SessionCache
from memsession.bus import MemoryBus, MemoryHub
from memsession.contrib.asgi import SessionMiddleware as AsgiSessionMiddleware
from memsession.contrib.flask import MemSession
from memsession.contrib.wsgi import SessionMiddleware as WsgiSessionMiddleware
from memsession.contrib.wsgi import get_session
from persist import JsonFileStore, PersistConfig, Persistence

SECRET = "fixation-test-secret"


@dataclass
class Workers:
    """Worker ``a`` writes through to a JSON file, ``b`` only replicates; ``restarted()`` is ``a`` started again."""

    a: SessionCache
    b: SessionCache
    store: Path

    def restarted(self) -> SessionCache:
        return SessionCache(persistence=Persistence(JsonFileStore(self.store)))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    hub = MemoryHub()
    store = tmp_path / "sessions.json"
    a = SessionCache(bus=MemoryBus(hub),
                     persistence=Persistence(JsonFileStore(store), PersistConfig(mode="write_through")))
    b = SessionCache(bus=MemoryBus(hub))
    yield Workers(a, b, store)
    a.close()
    b.close()


def sid_of(cookie: str) -> str:
    """The session id a signed cookie value names (the part before the signature)."""
    return cookie.split(".")[0]


#: What a request with a given cookie sees on a worker: ``(logged-in user or None, session data)``.
Seen = Callable[[SessionCache, str], tuple[str | None, dict]]


def check_rotated(planted: str, new: str | None, seen: Seen, workers: Workers) -> None:
    """The login gave a new id; the planted session is gone everywhere, the new one is logged in everywhere."""
    assert new is not None and sid_of(new) != sid_of(planted)
    for cache in (workers.a, workers.b):
        assert seen(cache, new)[0] == "ada"
        assert seen(cache, planted) == (None, {})
    workers.a.close()  # the file has one owner at a time: worker a restarts
    restarted = workers.restarted()
    try:
        assert seen(restarted, new)[0] == "ada"
        assert seen(restarted, planted) == (None, {})
    finally:
        restarted.close()


# -- Flask with Flask-Login: rotation comes with the login ---------------------------------------


class User(UserMixin):
    def __init__(self, uid: str) -> None:
        self.id = uid


def flask_app(cache: SessionCache) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    MemSession(app, cache=cache)
    LoginManager(app).user_loader(User)

    @app.post("/cart")
    def cart() -> str:
        session["cart"] = ["apple"]
        return "ok"

    @app.post("/login")
    def login() -> str:
        # A login view as Flask-Login's documentation writes it: nothing about the session id.
        login_user(User(request.args["uid"]), remember="remember" in request.args)
        return "ok"

    @app.get("/me")
    @login_required
    def me() -> str:
        return str(current_user.id)

    @app.get("/session")
    def data() -> dict:
        return dict(session)

    return app


def flask_seen(cache: SessionCache, cookie: str) -> tuple[str | None, dict]:
    client = flask_app(cache).test_client()
    client.set_cookie("session", cookie)
    response = client.get("/me")
    assert response.status_code in (200, 401), response.status_code
    return (response.text if response.status_code == 200 else None), client.get("/session").json


def planted_flask_cookie(cache: SessionCache) -> str:
    """The attacker's own session cookie, from a request that stores a session."""
    attacker = flask_app(cache).test_client()
    attacker.post("/cart")
    cookie = attacker.get_cookie("session")
    assert cookie is not None
    return cookie.value


def test_flask_login_user_rotates_the_planted_id(workers: Workers) -> None:
    planted = planted_flask_cookie(workers.a)
    victim = flask_app(workers.a).test_client()
    victim.set_cookie("session", planted)
    assert victim.post("/login?uid=ada").status_code == 200
    cookie = victim.get_cookie("session")
    assert victim.get("/me").text == "ada"  # before check_rotated closes worker a
    check_rotated(planted, cookie and cookie.value, flask_seen, workers)


def test_flask_login_from_a_remember_cookie_rotates_the_planted_id(workers: Workers) -> None:
    # A "remember me" login is a login too: Flask-Login writes the user into whatever
    # session the request brought, here the attacker's.
    victim = flask_app(workers.a).test_client()
    victim.post("/login?uid=ada&remember=1")
    remember = victim.get_cookie("remember_token")
    assert remember is not None
    planted = planted_flask_cookie(workers.a)
    victim.set_cookie("session", planted)
    assert victim.get("/me").text == "ada"  # logged in again from the remember cookie
    cookie = victim.get_cookie("session")
    check_rotated(planted, cookie and cookie.value, flask_seen, workers)


def test_flask_login_in_another_app_without_memsession_is_left_alone() -> None:
    # The rotation is connected per app: an app with Flask's own cookie session that
    # logs users in through the same Flask-Login signals never reaches memsession's handler.
    memsession_app = flask_app(SessionCache())
    plain = Flask(__name__)
    plain.config["SECRET_KEY"] = SECRET
    LoginManager(plain).user_loader(User)
    plain.add_url_rule("/login", "login", lambda: login_user(User("bob")) and "ok", methods=["POST"])
    plain.add_url_rule("/me", "me", login_required(lambda: str(current_user.id)))
    client = plain.test_client()
    assert client.post("/login").status_code == 200
    assert client.get("/me").text == "bob"
    assert memsession_app.extensions["memsession"].cache.length() == 0


def test_flask_login_after_memsessions_interface_was_replaced_is_an_error_not_a_silent_keep() -> None:
    from flask.sessions import SecureCookieSessionInterface

    app = flask_app(SessionCache())
    app.session_interface = SecureCookieSessionInterface()  # another extension took over after MemSession
    app.testing = True  # the error reaches the test rather than becoming a 500
    with pytest.raises(ConfigError, match="session_interface"):
        app.test_client().post("/login?uid=ada")


def plain_flask_app(cache: SessionCache) -> Flask:
    """A Flask app without Flask-Login: its login view asks for the new id itself."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    MemSession(app, cache=cache)

    @app.post("/cart")
    def cart() -> str:
        session["cart"] = ["apple"]
        return "ok"

    @app.post("/login")
    def login() -> str:
        session.regenerate()
        session["user"] = "ada"
        return "ok"

    @app.get("/me")
    def me() -> dict:
        return dict(session)

    return app


def plain_flask_seen(cache: SessionCache, cookie: str) -> tuple[str | None, dict]:
    client = plain_flask_app(cache).test_client()
    client.set_cookie("session", cookie)
    data = client.get("/me").json
    return data.get("user"), data


def test_flask_without_flask_login_installed_rotates_where_the_login_view_says(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "flask_login", None)  # import flask_login now raises ImportError
    attacker = plain_flask_app(workers.a).test_client()
    attacker.post("/cart")
    planted = attacker.get_cookie("session")
    assert planted is not None
    victim = plain_flask_app(workers.a).test_client()
    victim.set_cookie("session", planted.value)
    victim.post("/login")
    new = victim.get_cookie("session")
    check_rotated(planted.value, new and new.value, plain_flask_seen, workers)


# -- Starlette / ASGI: the login view calls request.session.regenerate() ---------------------------


def starlette_app(cache: SessionCache) -> Starlette:
    async def cart(request: Request) -> PlainTextResponse:
        request.session["cart"] = ["apple"]
        return PlainTextResponse("ok")

    async def login(request: Request) -> PlainTextResponse:
        request.session.regenerate()
        request.session["user"] = request.query_params["user"]
        return PlainTextResponse("ok")

    async def me(request: Request) -> JSONResponse:
        return JSONResponse(dict(request.session))

    routes = [Route("/cart", cart, methods=["POST"]), Route("/login", login, methods=["POST"]), Route("/me", me)]
    return Starlette(routes=routes, middleware=[Middleware(AsgiSessionMiddleware, secret_key=SECRET, cache=cache)])


def starlette_seen(cache: SessionCache, cookie: str) -> tuple[str | None, dict]:
    with TestClient(starlette_app(cache)) as client:
        client.cookies.set("session", cookie)
        data = client.get("/me").json()
        return data.get("user"), data


def test_starlette_regenerate_rotates_the_planted_id(workers: Workers) -> None:
    with TestClient(starlette_app(workers.a)) as attacker:
        planted = attacker.post("/cart").cookies["session"]
    with TestClient(starlette_app(workers.a)) as victim:
        victim.cookies.set("session", planted)
        new = victim.post("/login?user=ada").cookies.get("session")
    check_rotated(planted, new, starlette_seen, workers)


# -- plain WSGI: the login view calls session.regenerate() -----------------------------------------


def wsgi_app(cache: SessionCache) -> WsgiSessionMiddleware:
    def app(environ: dict, start_response) -> list[bytes]:
        current = get_session(environ)
        path = environ["PATH_INFO"]
        if path == "/cart":
            current["cart"] = ["apple"]
        elif path == "/login":
            current.regenerate()
            current["user"] = "ada"
        body = json.dumps(dict(current)).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return WsgiSessionMiddleware(app, cache=cache, secret_keys=[SECRET])


def wsgi_seen(cache: SessionCache, cookie: str) -> tuple[str | None, dict]:
    client = WsgiClient(wsgi_app(cache))
    client.set_cookie("session", cookie)
    data = json.loads(client.get("/me").get_data())
    return data.get("user"), data


def test_plain_wsgi_regenerate_rotates_the_planted_id(workers: Workers) -> None:
    attacker = WsgiClient(wsgi_app(workers.a))
    attacker.post("/cart")
    planted = attacker.get_cookie("session")
    assert planted is not None
    victim = WsgiClient(wsgi_app(workers.a))
    victim.set_cookie("session", planted.value)
    victim.post("/login")
    new = victim.get_cookie("session")
    check_rotated(planted.value, new and new.value, wsgi_seen, workers)
