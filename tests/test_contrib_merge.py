"""Overlapping requests of one user on two workers lose nothing, in every web integration.

Two workers are two ``SessionCache`` objects on one in-process hub
(``MemoryHub``: the same frames and hub state as the ZeroMQ bus). The bus is
held (``MemoryHub.hold``) while both workers serve one request each with the
same cookie, so each saves before it hears of the other's change, as bus
latency makes happen between real workers; then the held messages are
delivered, in either order. The whole-session save lost one of the two
changes here every time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, request, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from werkzeug.test import Client as WsgiClient

from memsession import SessionCache
from memsession.bus import MemoryBus, MemoryHub
from memsession.contrib.asgi import SessionMiddleware as AsgiSessionMiddleware
from memsession.contrib.flask import MemSession
from memsession.contrib.wsgi import SessionMiddleware as WsgiSessionMiddleware
from memsession.contrib.wsgi import get_session

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 package; its test client works the same with httpx.
    warnings.filterwarnings("ignore", message=".*install `httpx2`", category=UserWarning)
    from starlette.testclient import TestClient

SECRET = "merge-test-secret"
ROUNDS = 10


class Workers:
    """Two workers' caches on one in-process hub."""

    def __init__(self) -> None:
        self.hub = MemoryHub()
        self.a = SessionCache(bus=MemoryBus(self.hub))
        self.b = SessionCache(bus=MemoryBus(self.hub))

    def at_once(self, *requests: Callable[[], Any], reverse: bool = False) -> None:
        """Serve ``requests`` one after another while the bus is held, then deliver what they published."""
        self.hub.hold()
        for call in requests:
            call()
        self.hub.release(reverse=reverse)

    def held(self, sid: str) -> list[dict | None]:
        return [self.a.get(sid), self.b.get(sid)]


@pytest.fixture
def workers() -> Iterator[Workers]:
    pair = Workers()
    yield pair
    pair.a.close()
    pair.b.close()


# -- Flask -------------------------------------------------------------------------------


def flask_app(cache: SessionCache) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    MemSession(app, cache=cache)

    @app.post("/login")
    def login() -> str:
        session["user"] = "ada"
        return "ok"

    @app.post("/set")
    def set_key() -> str:
        session[request.args["key"]] = request.args["value"]
        return "ok"

    @app.post("/delete")
    def delete_key() -> str:
        session.pop(request.args["key"], None)
        return "ok"

    return app


def test_flask_two_workers_setting_different_keys_both_survive(workers) -> None:
    app_a, app_b = flask_app(workers.a), flask_app(workers.b)
    for round_ in range(ROUNDS):
        client = app_a.test_client()
        client.post("/login")
        cookie = client.get_cookie("session").value
        one, other = app_a.test_client(), app_b.test_client()
        one.set_cookie("session", cookie)
        other.set_cookie("session", cookie)
        workers.at_once(lambda: one.post(f"/set?key=a&value={round_}"),
                        lambda: other.post(f"/set?key=b&value={round_}"), reverse=round_ % 2 == 1)
        expected = {"user": "ada", "a": str(round_), "b": str(round_)}
        assert workers.held(cookie.split(".")[0]) == [expected, expected]


def test_flask_a_set_racing_a_delete_of_another_key_keeps_both_changes(workers) -> None:
    app_a, app_b = flask_app(workers.a), flask_app(workers.b)
    client = app_a.test_client()
    client.post("/login")
    cookie = client.get_cookie("session").value
    sid = cookie.split(".")[0]
    workers.a.change(sid, {"x": 1, "y": 2})
    one, other = app_a.test_client(), app_b.test_client()
    one.set_cookie("session", cookie)
    other.set_cookie("session", cookie)
    workers.at_once(lambda: one.post("/set?key=a&value=1"), lambda: other.post("/delete?key=x"))
    expected = {"user": "ada", "y": 2, "a": "1"}
    assert workers.held(sid) == [expected, expected]


# -- plain WSGI ------------------------------------------------------------------------------


def wsgi_app(cache: SessionCache) -> WsgiSessionMiddleware:
    def app(environ: dict, start_response: Any) -> list[bytes]:
        data = get_session(environ)
        query = dict(pair.split("=") for pair in environ["QUERY_STRING"].split("&") if pair)
        if "key" in query:
            data[query["key"]] = query["value"]
        else:
            data["user"] = "ada"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return WsgiSessionMiddleware(app, cache=cache, secret_keys=[SECRET])


def test_wsgi_two_workers_setting_different_keys_both_survive(workers) -> None:
    app_a, app_b = wsgi_app(workers.a), wsgi_app(workers.b)
    for round_ in range(ROUNDS):
        first = WsgiClient(app_a)
        first.get("/")
        cookie = first.get_cookie("session").value
        one, other = WsgiClient(app_a), WsgiClient(app_b)
        one.set_cookie("session", cookie)
        other.set_cookie("session", cookie)
        workers.at_once(lambda: one.get(f"/?key=a&value={round_}"),
                        lambda: other.get(f"/?key=b&value={round_}"), reverse=round_ % 2 == 1)
        expected = {"user": "ada", "a": str(round_), "b": str(round_)}
        assert workers.held(cookie.split(".")[0]) == [expected, expected]


# -- Starlette / ASGI ------------------------------------------------------------------------------


def starlette_app(cache: SessionCache) -> Starlette:
    async def login(request: Request) -> PlainTextResponse:
        request.session["user"] = "ada"
        return PlainTextResponse("ok")

    async def set_key(request: Request) -> PlainTextResponse:
        request.session[request.query_params["key"]] = request.query_params["value"]
        return PlainTextResponse("ok")

    routes = [Route("/login", login, methods=["POST"]), Route("/set", set_key, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(AsgiSessionMiddleware, secret_key=SECRET, cache=cache)])


def test_starlette_two_workers_setting_different_keys_both_survive(workers) -> None:
    with TestClient(starlette_app(workers.a)) as one, TestClient(starlette_app(workers.b)) as other:
        for round_ in range(ROUNDS):
            one.cookies.clear()
            one.post("/login")
            cookie = one.cookies["session"]
            other.cookies.clear()
            other.cookies.set("session", cookie)
            workers.at_once(lambda: one.post(f"/set?key=a&value={round_}"),
                            lambda: other.post(f"/set?key=b&value={round_}"), reverse=round_ % 2 == 1)
            expected = {"user": "ada", "a": str(round_), "b": str(round_)}
            assert workers.held(cookie.split(".")[0]) == [expected, expected]


# -- invalidate mode: copies are dropped and read back from the hub ----------------------------------


def test_invalidate_mode_drops_a_copy_that_lacks_a_change_even_if_it_holds_a_later_one() -> None:
    hub = MemoryHub()
    a = SessionCache(bus=MemoryBus(hub, mode="invalidate"))
    b = SessionCache(bus=MemoryBus(hub, mode="invalidate"))
    try:
        sid = "s" * 43
        a.set(sid, {"user": "ada"})
        assert b.get(sid) == {"user": "ada"}  # read through the hub: b holds a copy now
        hub.hold()
        a.change(sid, {"x": 1})
        b.change(sid, {"y": 2})  # later than a's change, and without it
        hub.release()
        assert a.get(sid) == b.get(sid) == {"user": "ada", "x": 1, "y": 2}
    finally:
        a.close()
        b.close()
