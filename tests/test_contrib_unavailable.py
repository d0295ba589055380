"""The fail-safe of every integration: a session no one can resolve is answered 503, never replaced.

Two workers share an in-memory hub (the bus's twin: same frames, same
protocol). Worker B is cut off from it, so a cookie written on A names a
session B neither holds nor can ask about. Within its ``outage_budget`` B
answers 503 with ``Retry-After``, without running the application and
without touching the cookie; once the hub is back, the same cookie is served.
(Django's middleware has its own test in tests/test_contrib_django.py; the
real-process version, gunicorn and a SIGKILLed sidecar, is in
tests/test_failures.py.)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from werkzeug.test import Client as WsgiClient

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*install `httpx2`", category=UserWarning)
    from starlette.testclient import TestClient

from memsession import SessionCache
from memsession.bus import MemoryBus, MemoryHub
from memsession.contrib.asgi import SessionMiddleware as AsgiSessionMiddleware
from memsession.contrib.flask import MemSession
from memsession.contrib.wsgi import SessionMiddleware as WsgiSessionMiddleware
from memsession.contrib.wsgi import get_session

SECRET = "unavailable-test-secret"


@dataclass
class Workers:
    hub: MemoryHub
    a: SessionCache
    b: SessionCache
    calls: list[str]


@pytest.fixture
def workers() -> Iterator[Workers]:
    hub = MemoryHub()
    a = SessionCache(bus=MemoryBus(hub))
    b = SessionCache(bus=MemoryBus(hub), outage_budget=0.05)
    hub.partition(b.bus)
    yield Workers(hub, a, b, [])
    a.close()
    b.close()


def check_refused(status: int, headers: dict[str, str], workers: Workers) -> None:
    assert status == 503
    assert headers["retry-after"] == "1" and headers["cache-control"] == "no-store"
    assert "set-cookie" not in headers  # the user's cookie is left alone
    assert workers.calls == []  # the application never ran
    assert workers.b.stats()["unavailable"] == 1


# -- Flask ---------------------------------------------------------------------------------


def flask_app(cache: SessionCache, calls: list[str]) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    MemSession(app, cache=cache)

    @app.post("/login")
    def login() -> str:
        session["user"] = "ada"
        return "ok"

    @app.get("/me")
    def me() -> dict:
        calls.append("me")
        return dict(session)

    return app


def test_flask(workers: Workers) -> None:
    client_a = flask_app(workers.a, []).test_client()
    client_b = flask_app(workers.b, workers.calls).test_client()
    cookie = client_a.post("/login").headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    client_b.set_cookie("session", cookie)
    response = client_b.get("/me")
    check_refused(response.status_code, {k.lower(): v for k, v in response.headers.items()}, workers)
    workers.hub.heal(workers.b.bus)
    assert client_b.get("/me").json == {"user": "ada"}


# -- Starlette / ASGI ------------------------------------------------------------------------


def starlette_app(cache: SessionCache, calls: list[str]) -> Starlette:
    async def login(request: Request) -> JSONResponse:
        request.session["user"] = "ada"
        return JSONResponse({})

    async def me(request: Request) -> JSONResponse:
        calls.append("me")
        return JSONResponse(dict(request.session))

    async def socket(websocket: WebSocket) -> None:
        calls.append("socket")
        await websocket.accept()
        await websocket.send_json(dict(websocket.session))
        await websocket.close()

    routes = [Route("/login", login, methods=["POST"]), Route("/me", me), WebSocketRoute("/ws", socket)]
    return Starlette(routes=routes, middleware=[Middleware(AsgiSessionMiddleware, secret_key=SECRET, cache=cache)])


def test_starlette(workers: Workers) -> None:
    with TestClient(starlette_app(workers.a, [])) as client_a:
        cookie = client_a.post("/login").cookies["session"]
    with TestClient(starlette_app(workers.b, workers.calls)) as client_b:
        client_b.cookies.set("session", cookie)
        response = client_b.get("/me")
        check_refused(response.status_code, dict(response.headers), workers)
        with client_b.websocket_connect("/ws") as ws, pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1013 and workers.calls == []  # "try again later", after the accept
        workers.hub.heal(workers.b.bus)
        assert client_b.get("/me").json() == {"user": "ada"}
        with client_b.websocket_connect("/ws") as ws:
            assert ws.receive_json() == {"user": "ada"}


# -- plain WSGI --------------------------------------------------------------------------------


def wsgi_app(cache: SessionCache, calls: list[str]) -> WsgiSessionMiddleware:
    def app(environ: dict, start_response) -> list[bytes]:
        current = get_session(environ)
        if environ["PATH_INFO"] == "/login":
            current["user"] = "ada"
        else:
            calls.append("me")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(dict(current)).encode()]

    return WsgiSessionMiddleware(app, cache=cache, secret_keys=[SECRET])


def test_plain_wsgi(workers: Workers) -> None:
    response = WsgiClient(wsgi_app(workers.a, [])).post("/login")
    cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    client_b = WsgiClient(wsgi_app(workers.b, workers.calls))
    client_b.set_cookie("session", cookie)
    response = client_b.get("/me")
    check_refused(response.status_code, {k.lower(): v for k, v in response.headers.items()}, workers)
    workers.hub.heal(workers.b.bus)
    assert client_b.get("/me").get_data() == repr({"user": "ada"}).encode()
