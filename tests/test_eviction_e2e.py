"""A full cache under a flood of new sessions, with real gunicorn: a logged-in user stays logged in.

One gunicorn worker (its own cache, no hub, no store) serving the Flask test
app with room for ``MAXSIZE`` sessions. Nothing else holds a copy, so a
session the cache evicts is gone: its user is logged out. The server listens
on 127.0.0.1, is bounded in time, and is stopped by the pid it was started with.
"""

from __future__ import annotations

import httpx
import pytest

from tests.webservers import WebServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MAXSIZE = 200
FLOOD = 1000
COOKIE = "session"


def browser(server: WebServer) -> httpx.Client:
    """A client that keeps its cookies, as a browser does."""
    return httpx.Client(base_url=server.url, timeout=10.0, trust_env=False)


def test_a_flood_of_cookie_less_writes_does_not_log_out_a_returning_user() -> None:
    env = {"MEMSESSION_MAXSIZE": str(MAXSIZE)}
    with WebServer("gunicorn", "tests.e2e_apps.flask_app:app", env=env) as server, \
            browser(server) as user, browser(server) as flood:
        assert user.post("/login", params={"user": "alice"}).status_code == 200
        assert user.get("/me").json()["session"] == {"user": "alice"}  # she comes back

        visitors = []
        for i in range(FLOOD):
            flood.cookies.clear()  # a new visitor, whose request writes to its new session
            response = flood.post("/write", params={"key": "visit", "value": str(i)})
            assert response.status_code == 200
            visitors.append(response.cookies[COOKIE])

        assert user.get("/me").json()["session"] == {"user": "alice"}
        # The flood did overflow the cache: the first visitors' sessions were evicted.
        flood.cookies.clear()
        flood.cookies.set(COOKIE, visitors[0])
        assert flood.get("/me").json()["session"] == {}
        flood.cookies.set(COOKIE, visitors[-1])
        assert flood.get("/me").json()["session"] == {"visit": str(FLOOD - 1)}
