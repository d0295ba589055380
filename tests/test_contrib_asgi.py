"""ASGI middleware: a real Starlette app through Starlette's TestClient."""

from __future__ import annotations

import logging
import threading
import warnings

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 package; its test client works the same with httpx.
    warnings.filterwarnings("ignore", message=".*install `httpx2`", category=UserWarning)
    from starlette.testclient import TestClient

from memsession import ConfigError, SessionCache
from memsession.contrib.asgi import SessionMiddleware
from memsession.session import Record

SECRET = "asgi-test-secret"

loop_threads: list[threading.Thread] = []


async def read(request: Request) -> JSONResponse:
    loop_threads.append(threading.current_thread())
    return JSONResponse(dict(request.session))


async def set_values(request: Request) -> PlainTextResponse:
    request.session.update(await request.json())
    return PlainTextResponse("ok")


async def logout(request: Request) -> PlainTextResponse:
    request.session.clear()
    return PlainTextResponse("ok")


async def replace(request: Request) -> PlainTextResponse:
    request.scope["session"] = {"replaced": True}
    return PlainTextResponse("ok")


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(dict(websocket.session))
    await websocket.close()


routes = [
    Route("/", read),
    Route("/set", set_values, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/replace", replace, methods=["POST"]),
    WebSocketRoute("/ws", ws),
]


def make_app(**options: object) -> Starlette:
    return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, **options)])


@pytest.fixture
def client():
    with TestClient(make_app(secret_key=SECRET)) as client:
        yield client


def test_starlette_arguments_map_onto_memsession_options() -> None:
    middleware = SessionMiddleware(
        read, secret_key=SECRET, session_cookie="sid", max_age=600, path="/app", same_site="strict",
        https_only=True, domain="example.org", partitioned=True,
    )
    cfg = middleware.manager.config
    assert cfg.cookie_partitioned
    assert (cfg.cookie_name, cfg.cookie_path, cfg.cookie_samesite, cfg.cookie_secure, cfg.cookie_domain) == (
        "sid", "/app", "Strict", True, "example.org",
    )
    assert middleware.manager.cache.config.idle_timeout == 600
    assert SessionMiddleware(read, secret_key=SECRET, max_age=None).manager.config.permanent is False


def test_anonymous_requests_set_no_cookie(client) -> None:
    response = client.get("/")
    assert response.json() == {} and "set-cookie" not in response.headers


def test_write_then_read(client) -> None:
    response = client.post("/set", json={"user": "ada"})
    header = response.headers["set-cookie"]
    # Starlette's max_age (14 days) slides; memsession's absolute max_age (12 h) caps it.
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Max-Age=43200" in header
    response = client.get("/")
    assert response.json() == {"user": "ada"} and response.headers["vary"] == "Cookie"


def test_logout_clears_and_the_old_cookie_is_dead(client) -> None:
    client.post("/set", json={"user": "ada"})
    old = client.cookies["session"]
    response = client.post("/logout")
    assert "Max-Age=0" in response.headers["set-cookie"]
    client.cookies.clear()
    client.cookies["session"] = old
    assert client.get("/").json() == {}


def test_replacing_the_session_dict_is_saved(client) -> None:
    client.post("/set", json={"user": "ada"})
    client.post("/replace")
    assert client.get("/").json() == {"replaced": True}


@pytest.mark.parametrize("bad", ["junk", "a" * 5000, "a.b.c"])
def test_bad_cookie_is_a_fresh_session(client, bad) -> None:
    client.post("/set", json={"user": "ada"})
    client.cookies.clear()
    response = client.get("/", headers={"cookie": f"session={bad}"})
    assert response.status_code == 200 and response.json() == {}


def test_websocket_sees_the_session(client) -> None:
    client.post("/set", json={"user": "ada"})
    with client.websocket_connect("/ws") as websocket:
        assert websocket.receive_json() == {"user": "ada"}


class SlowReplica(SessionCache):
    """Records the thread ``wait_for`` ran in and delivers the record from a peer."""

    def __init__(self, peer: SessionCache) -> None:
        super().__init__()
        self.peer = peer
        self.wait_threads: list[threading.Thread] = []

    def wait_for(self, sid: str, version: int, timeout: float, origin: int = 0) -> Record | None:
        self.wait_threads.append(threading.current_thread())
        remote = self.peer.record(sid)
        if remote is not None:
            self.apply(remote)
        return self.record(sid)


def test_waiting_for_another_worker_runs_off_the_event_loop() -> None:
    worker_a = SessionCache()
    worker_b = SlowReplica(worker_a)
    with TestClient(make_app(secret_key=SECRET, cache=worker_a)) as a:
        a.post("/set", json={"user": "ada"})
        value = a.cookies["session"]
    loop_threads.clear()
    with TestClient(make_app(secret_key=SECRET, cache=worker_b)) as b:
        b.cookies["session"] = value
        assert b.get("/").json() == {"user": "ada"}
    assert len(worker_b.wait_threads) == 1
    assert worker_b.wait_threads[0] is not loop_threads[0]


def stored(cache: SessionCache) -> dict[str, tuple[int, dict]]:
    """Every session the cache holds: version and data by key."""
    return {key: (cache.held(key).version, cache.held(key).data) for key in cache}


def test_a_session_grown_past_the_limit_is_one_500_and_one_log_line_and_stays_as_it_was(caplog) -> None:
    cache = SessionCache(max_session_bytes=256)
    with TestClient(make_app(secret_key=SECRET, cache=cache)) as client:
        client.post("/set", json={"a": 1})
        before = stored(cache)
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        response = client.post("/set", json={"big": "x" * 1000})
        assert response.status_code == 500 and "set-cookie" not in response.headers
        assert "size limit" in response.text
        records = [r for r in caplog.records if r.name != "httpx"]  # the test client logs each request
        assert [r.levelname for r in records] == ["ERROR"], caplog.text
        assert "max_session_bytes=256" in records[0].getMessage()
        assert stored(cache) == before
        assert client.get("/").json() == {"a": 1}


def _app_with(**options) -> TestClient:
    return TestClient(Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, secret_key=SECRET, **options)]))


def test_with_cache_given_the_cookie_follows_the_caches_idle_timeout() -> None:
    cache = SessionCache(idle_timeout=60, max_age=None)
    for options in ({"cache": cache}, {"cache": cache, "max_age": 60}):  # left out, or the same
        with _app_with(**options) as client:
            assert "Max-Age=60" in client.post("/set", json={"user": "ada"}).headers["set-cookie"]


def test_a_max_age_the_given_cache_cannot_honour_is_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match=r"max_age=60: is the idle timeout.*idle_timeout=1800"):
        SessionMiddleware(read, secret_key=SECRET, max_age=60, cache=SessionCache())
    with pytest.raises(ConfigError, match="cache options can't be combined with cache="):
        SessionMiddleware(read, secret_key=SECRET, idle_timeout=60, cache=SessionCache())
    # A browser-session cookie is the cookie's business, not the cache's: allowed with any cache.
    assert SessionMiddleware(read, secret_key=SECRET, max_age=None, cache=SessionCache()).manager.config.permanent is False


def test_every_memsession_option_is_a_named_argument() -> None:
    from dataclasses import fields

    from memsession.config import Config
    from memsession.contrib.asgi import OWN_OPTIONS
    from memsession.contrib.config import WebConfig

    # Starlette's own arguments stand for these; the absolute max_age comes with cache=.
    through_starlette = {"cookie_name", "cookie_path", "cookie_samesite", "cookie_secure", "cookie_domain",
                         "cookie_partitioned", "permanent", "max_age"}
    every = {f.name for f in fields(WebConfig)} | {f.name for f in fields(Config)}
    assert set(OWN_OPTIONS) == every - through_starlette
    middleware = SessionMiddleware(read, secret_key=SECRET, maxsize=7, salt="s", cookie_httponly=False)
    assert middleware.manager.cache.config.maxsize == 7
    assert (middleware.manager.config.salt, middleware.manager.config.cookie_httponly) == ("s", False)


async def typed_logout(request: Request) -> PlainTextResponse:
    from memsession.contrib.asgi import get_session

    get_session(request).destroy()
    return PlainTextResponse("bye")


def test_get_session_is_the_requests_session_typed() -> None:
    from memsession.contrib.asgi import get_session

    app = Starlette(routes=[*routes, Route("/typed-logout", typed_logout, methods=["POST"])],
                    middleware=[Middleware(SessionMiddleware, secret_key=SECRET)])
    with TestClient(app) as client:
        client.post("/set", json={"user": "ada"})
        assert "Max-Age=0" in client.post("/typed-logout").headers["set-cookie"]
    with pytest.raises(TypeError, match="SessionMiddleware"):
        get_session({"type": "http", "session": {}})
