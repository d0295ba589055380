"""The refusal of private sessions in one of several workers, for any WSGI server (``wsgi.multiprocess``).

The real servers (gunicorn, uvicorn) are in ``test_workers_shared_e2e``; here
a WSGI server that says it runs the app in several processes (PEP 3333's
``wsgi.multiprocess``) is played by werkzeug's test client.
"""

from __future__ import annotations

import logging

import pytest
from werkzeug.test import Client

from memsession import ConfigError, SessionCache
from memsession.bus import MemoryBus, MemoryHub
from memsession.contrib.workers import allow_unshared, sibling_workers
from memsession.contrib.wsgi import SessionMiddleware, get_session


def inner(environ, start_response):
    get_session(environ)["user"] = "ada"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_outside_any_server_nothing_is_refused() -> None:
    assert sibling_workers() is None and sibling_workers(False) is None
    assert sibling_workers(True) == ("a WSGI server with several processes", 0)


def test_private_sessions_under_a_multiprocess_wsgi_server_are_refused(caplog) -> None:
    single = Client(SessionMiddleware(inner, secret_keys=["k"], cache=SessionCache()))
    assert single.get("/", environ_overrides={"wsgi.multiprocess": False}).status_code == 200
    client = Client(SessionMiddleware(inner, secret_keys=["k"], cache=SessionCache()))
    caplog.set_level(logging.ERROR, logger="memsession.web")
    for _ in range(2):  # every request, not only the first
        with pytest.raises(ConfigError, match="would keep its own sessions"):
            client.get("/", environ_overrides={"wsgi.multiprocess": True})
    assert "several worker processes" in caplog.text


def test_shared_sessions_and_a_cache_private_on_purpose_are_served() -> None:
    hub = MemoryHub()
    with SessionCache(bus=MemoryBus(hub)) as shared, SessionCache() as private:
        allow_unshared(private)
        for cache in (shared, private):
            client = Client(SessionMiddleware(inner, secret_keys=["k"], cache=cache))
            assert client.get("/", environ_overrides={"wsgi.multiprocess": True}).status_code == 200
