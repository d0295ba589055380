"""Overlapping requests of one user on two workers lose nothing, in every web integration.

Two workers are two ``SessionCache`` objects on one in-process hub
(``MemoryHub``: the same frames and hub state as the ZeroMQ bus). Each pair
of requests loads the session on both workers before either saves (a
barrier inside the views), which is the race the whole-session save lost:
the later save carried the other request's key at its old value.
"""

from __future__ import annotations

import threading
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
ROUNDS = 20


@pytest.fixture
def workers() -> Iterator[tuple[SessionCache, SessionCache]]:
    hub = MemoryHub()
    a, b = SessionCache(bus=MemoryBus(hub)), SessionCache(bus=MemoryBus(hub))
    yield a, b
    a.close()
    b.close()


def overlap(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at once, one thread each; the views meet at ``gate`` so all have loaded before any saves."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results


class Gate:
    """A barrier the views of one round wait at, after their session was loaded."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=10)

    def wait(self) -> None:
        self.barrier.wait()


def held_everywhere(workers: tuple[SessionCache, ...], sid: str) -> list[dict | None]:
    return [cache.get(sid) for cache in workers]


# -- Flask -------------------------------------------------------------------------------


def flask_app(cache: SessionCache, gate: Gate) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    MemSession(app, cache=cache)

    @app.post("/login")
    def login() -> str:
        session["user"] = "ada"
        return "ok"

    @app.post("/set")
    def set_key() -> str:
        gate.wait()
        session[request.args["key"]] = request.args["value"]
        return "ok"

    @app.post("/delete")
    def delete_key() -> str:
        gate.wait()
        session.pop(request.args["key"], None)
        return "ok"

    return app


def test_flask_two_workers_setting_different_keys_both_survive(workers) -> None:
    gate = Gate()
    app_a, app_b = flask_app(workers[0], gate), flask_app(workers[1], gate)
    for round_ in range(ROUNDS):
        client = app_a.test_client()
        client.post("/login")
        cookie = client.get_cookie("session").value
        one, other = app_a.test_client(), app_b.test_client()
        one.set_cookie("session", cookie)
        other.set_cookie("session", cookie)
        overlap(lambda: one.post(f"/set?key=a&value={round_}"), lambda: other.post(f"/set?key=b&value={round_}"))
        sid = cookie.split(".")[0]
        expected = {"user": "ada", "a": str(round_), "b": str(round_)}
        assert held_everywhere(workers, sid) == [expected, expected]


def test_flask_a_set_racing_a_delete_of_another_key_keeps_both_changes(workers) -> None:
    gate = Gate()
    app_a, app_b = flask_app(workers[0], gate), flask_app(workers[1], gate)
    client = app_a.test_client()
    client.post("/login")
    cookie = client.get_cookie("session").value
    sid = cookie.split(".")[0]
    workers[0].change(sid, {"x": 1, "y": 2})
    one, other = app_a.test_client(), app_b.test_client()
    one.set_cookie("session", cookie)
    other.set_cookie("session", cookie)
    overlap(lambda: one.post("/set?key=a&value=1"), lambda: other.post("/delete?key=x"))
    expected = {"user": "ada", "y": 2, "a": "1"}
    assert held_everywhere(workers, sid) == [expected, expected]


# -- plain WSGI ------------------------------------------------------------------------------


def wsgi_app(cache: SessionCache, gate: Gate | None) -> WsgiSessionMiddleware:
    def app(environ: dict, start_response: Any) -> list[bytes]:
        data = get_session(environ)
        query = dict(pair.split("=") for pair in environ["QUERY_STRING"].split("&") if pair)
        if "key" in query:
            assert gate is not None
            gate.wait()
            data[query["key"]] = query["value"]
        else:
            data["user"] = "ada"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return WsgiSessionMiddleware(app, cache=cache, secret_keys=[SECRET])


def test_wsgi_two_workers_setting_different_keys_both_survive(workers) -> None:
    gate = Gate()
    app_a, app_b = wsgi_app(workers[0], gate), wsgi_app(workers[1], gate)
    for round_ in range(ROUNDS):
        first = WsgiClient(wsgi_app(workers[0], None))
        first.get("/")
        cookie = first.get_cookie("session").value
        one, other = WsgiClient(app_a), WsgiClient(app_b)
        one.set_cookie("session", cookie)
        other.set_cookie("session", cookie)
        overlap(lambda: one.get(f"/?key=a&value={round_}"), lambda: other.get(f"/?key=b&value={round_}"))
        expected = {"user": "ada", "a": str(round_), "b": str(round_)}
        assert held_everywhere(workers, cookie.split(".")[0]) == [expected, expected]


# -- Starlette / ASGI ------------------------------------------------------------------------------


def starlette_app(cache: SessionCache, gate: Gate) -> Starlette:
    async def login(request: Request) -> PlainTextResponse:
        request.session["user"] = "ada"
        return PlainTextResponse("ok")

    def set_key(request: Request) -> PlainTextResponse:  # sync: Starlette runs it in a thread, so it may block
        gate.wait()
        request.session[request.query_params["key"]] = request.query_params["value"]
        return PlainTextResponse("ok")

    routes = [Route("/login", login, methods=["POST"]), Route("/set", set_key, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(AsgiSessionMiddleware, secret_key=SECRET, cache=cache)])


def test_starlette_two_workers_setting_different_keys_both_survive(workers) -> None:
    gate = Gate()
    with TestClient(starlette_app(workers[0], gate)) as one, TestClient(starlette_app(workers[1], gate)) as other:
        for round_ in range(ROUNDS):
            one.cookies.clear()
            one.post("/login")
            cookie = one.cookies["session"]
            other.cookies.clear()
            other.cookies.set("session", cookie)
            overlap(lambda: one.post(f"/set?key=a&value={round_}"), lambda: other.post(f"/set?key=b&value={round_}"))
            expected = {"user": "ada", "a": str(round_), "b": str(round_)}
            assert held_everywhere(workers, cookie.split(".")[0]) == [expected, expected]
