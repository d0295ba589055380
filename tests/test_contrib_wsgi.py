"""Plain WSGI middleware, driven by werkzeug's WSGI test client."""

from __future__ import annotations

import json
import logging

import pytest
from werkzeug.test import Client

from memsession import SessionCache
from memsession.contrib.wsgi import ENVIRON_KEY, SessionMiddleware, get_session

SECRET = "wsgi-test-secret"


def inner_app(environ, start_response):
    session = get_session(environ)
    path = environ["PATH_INFO"]
    if path == "/set":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        session.update(json.loads(environ["wsgi.input"].read(length)))
    elif path == "/logout":
        session.destroy()
    elif path == "/login":
        session["user"] = "ada"
        session.regenerate()
    body = json.dumps(dict(session)).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def app() -> SessionMiddleware:
    return SessionMiddleware(inner_app, secret_keys=[SECRET], idle_timeout=600)


@pytest.fixture
def client(app) -> Client:
    return Client(app)


def set_cookies(response) -> list[str]:
    return response.headers.getlist("Set-Cookie")


def test_session_is_in_the_environ(app) -> None:
    seen = {}

    def probe(environ, start_response):
        seen["session"] = environ[ENVIRON_KEY]
        start_response("204 No Content", [])
        return []

    Client(SessionMiddleware(probe, cache=app.manager.cache, secret_keys=[SECRET])).get("/")
    assert seen["session"] == {} and seen["session"].new


def test_anonymous_request_sets_no_cookie(client, app) -> None:
    response = client.get("/")
    assert set_cookies(response) == [] and response.json == {}
    assert app.manager.cache.length() == 0


def test_write_then_read(client) -> None:
    response = client.post("/set", json={"user": "ada"})
    [header] = set_cookies(response)
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Max-Age=600" in header
    response = client.get("/")
    assert response.json == {"user": "ada"}
    assert response.headers["Vary"] == "Cookie" and set_cookies(response) == []


def test_logout_deletes_the_cookie_and_the_old_one_is_dead(client) -> None:
    client.post("/set", json={"user": "ada"})
    old = client.get_cookie("session").value
    [header] = set_cookies(client.get("/logout"))
    assert "Max-Age=0" in header
    client.set_cookie("session", old)
    assert client.get("/").json == {}


def test_login_regenerates(client) -> None:
    client.post("/set", json={"cart": [1]})
    before = client.get_cookie("session").value
    client.get("/login")
    after = client.get_cookie("session").value
    assert before.split(".")[0] != after.split(".")[0]
    assert client.get("/").json == {"cart": [1], "user": "ada"}


@pytest.mark.parametrize("bad", ["junk", "a" * 5000, "x.y.z"])
def test_bad_cookie_is_a_fresh_session(client, app, bad) -> None:
    client.post("/set", json={"user": "ada"})
    bare = Client(app, use_cookies=False)
    response = bare.get("/", environ_overrides={"HTTP_COOKIE": f"session={bad}"})
    assert response.status_code == 200 and response.json == {}


def test_several_cookies_of_the_same_name_pick_the_valid_one(client, app) -> None:
    client.post("/set", json={"user": "ada"})
    good = client.get_cookie("session").value
    bare = Client(app, use_cookies=False)
    response = bare.get("/", environ_overrides={"HTTP_COOKIE": f"session=junk; session={good}"})
    assert response.json == {"user": "ada"}


def test_shared_cache_and_options_conflict() -> None:
    from memsession import ConfigError

    with pytest.raises(ConfigError):
        SessionMiddleware(inner_app, cache=SessionCache(), secret_keys=[SECRET], maxsize=3)


def stored(middleware: SessionMiddleware) -> dict[str, tuple[int, dict]]:
    """Every session the middleware's cache holds: version and data by key."""
    cache = middleware.manager.cache
    return {key: (cache.held(key).version, cache.held(key).data) for key in cache}


def lazy_app(environ, start_response):
    """An application that calls start_response only when its body is first iterated."""
    get_session(environ)["big"] = "x" * 1000
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"the application's body"


def test_a_session_grown_past_the_limit_is_one_500_and_one_log_line_and_stays_as_it_was(caplog) -> None:
    middleware = SessionMiddleware(inner_app, secret_keys=[SECRET], max_session_bytes=256)
    client = Client(middleware)
    client.post("/set", data=json.dumps({"a": 1}))
    before = stored(middleware)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    response = client.post("/set", data=json.dumps({"big": "x" * 1000}))
    assert response.status_code == 500 and set_cookies(response) == []
    assert b"size limit" in response.data
    assert [r.levelname for r in caplog.records] == ["ERROR"], caplog.text
    assert "max_session_bytes=256" in caplog.records[0].getMessage()
    assert stored(middleware) == before
    assert json.loads(client.get("/").data) == {"a": 1}


def test_an_application_starting_its_response_late_gets_the_500_body_instead_of_its_own(caplog) -> None:
    middleware = SessionMiddleware(lazy_app, secret_keys=[SECRET], max_session_bytes=256)
    caplog.set_level(logging.DEBUG)
    response = Client(middleware).get("/")
    assert response.status_code == 500 and set_cookies(response) == []
    assert b"size limit" in response.data and b"application's body" not in response.data
    assert len(caplog.records) == 1, caplog.text
    assert stored(middleware) == {}
