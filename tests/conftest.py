"""Fixtures for tests that need real servers (see tests/servers.py).

- ``postgres_server`` / ``couch_server``: one throwaway server per test session.
- ``postgres_url``: a new, empty database on that server for each test.
- ``couch_url``: the CouchDB-API server's URL; name databases with ``unique_name()``.

A server that cannot start skips the tests that need it, saying why; with
``CI=true`` those tests fail instead, so CI never passes by skipping them.
Tests that use these fixtures get the ``postgres`` / ``couchdb`` marker
automatically, so ``-m "not postgres"`` leaves them out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest

from tests.servers import CouchServer, PostgresServer, RedisServer, Server, ServerError, unique_name

_MARKERS = {
    "postgres": ("postgres_server", "postgres_url"),
    "couchdb": ("couch_server", "couch_url"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _MARKERS.items():
            if names.intersection(fixtures) and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _started(request: pytest.FixtureRequest, factory: Callable[[], Server]) -> Server:
    try:
        server = factory()
    except ServerError as exc:
        _unavailable(str(exc))
    request.addfinalizer(server.stop)
    try:
        server.start()
    except ServerError as exc:
        _unavailable(str(exc))
    return server


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    server = _started(request, PostgresServer)
    assert isinstance(server, PostgresServer)
    return server


@pytest.fixture(scope="session")
def couch_server(request: pytest.FixtureRequest) -> CouchServer:
    server = _started(request, CouchServer)
    assert isinstance(server, CouchServer)
    return server


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    """Redis, for comparisons with Redis-backed session stores."""
    server = _started(request, RedisServer)
    assert isinstance(server, RedisServer)
    return server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a database created for this test alone, dropped afterwards."""
    import psycopg

    name = unique_name("test")
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.url_for(name)
    if postgres_server.running:
        # FORCE: a test that leaks a connection must not break the next one.
        with psycopg.connect(postgres_server.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def couch_url(couch_server: CouchServer) -> str:
    """URL of the CouchDB-API server; create databases under names from ``unique_name()``."""
    return couch_server.url


@pytest.fixture(name="unique_name")
def unique_name_fixture() -> Callable[..., str]:
    """The ``tests.servers.unique_name`` helper, for tests that prefer a fixture to an import."""
    return unique_name


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of Prometheus' ``promtool`` (Debian's ``prometheus`` package; scripts/bootstrap installs it)."""
    import shutil

    path = shutil.which("promtool")
    if path is None:
        _unavailable("promtool is not installed (apt-get install prometheus, or run scripts/bootstrap)")
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium binary (Debian's ``chromium`` package; scripts/bootstrap installs it)."""
    from tests.browser import chromium_binary

    path = chromium_binary()
    if path is None:
        _unavailable("chromium is not installed (apt-get install chromium, or run scripts/bootstrap)")
    return path
