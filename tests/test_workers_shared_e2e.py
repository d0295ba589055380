"""A multi-worker server never runs with sessions each worker keeps to itself.

Real servers on 127.0.0.1: ``uvicorn --workers 2``, gunicorn with sync
workers (Flask, Django) and with ``uvicorn.workers.UvicornWorker``
(Starlette). With a cache that has no bus, each worker would keep its own
sessions: a user logged in on one worker is a stranger to the next, and
nothing says so. Every integration refuses instead (a 500 on every request
and the reason in the log) until the workers share their sessions. The two
production shapes for ASGI apps then share them: gunicorn's
``UvicornWorker`` with ``GunicornHooks``, and ``uvicorn --workers N`` joined
to a hub started for them.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.webservers import Hub, Process, WebServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.zmq, pytest.mark.timeout(180)]

REFUSAL = "would keep its own sessions"

#: name: (argv after the interpreter, session cookie name)
PRIVATE = {
    "uvicorn --workers 2, Starlette": (["-m", "uvicorn", "--workers", "2"], "tests.e2e_apps.starlette_app:app", "session"),
    "gunicorn -w 2, Flask": (["-m", "gunicorn", "-w", "2"], "tests.e2e_apps.flask_app:app", "session"),
    "gunicorn -w 2, Django": (["-m", "gunicorn", "-w", "2"], "tests.e2e_apps.django_app:application", "sessionid"),
    "gunicorn -k UvicornWorker -w 2, Starlette": (
        ["-m", "gunicorn", "-w", "2", "-k", "uvicorn.workers.UvicornWorker"], "tests.e2e_apps.starlette_app:app",
        "session"),
}


def _argv(prefix: list[str], target: str, port: int) -> list[str]:
    if "uvicorn" in prefix[1]:
        return [sys.executable, *prefix, "--host", "127.0.0.1", "--port", str(port), "--no-access-log", target]
    return [sys.executable, *prefix, "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "3", target]


def _answering(url: str, proc: Process, timeout: float = 30.0) -> None:
    """Wait until the server answers anything at all (a refusal is an answer)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            proc.check_alive()
            with contextlib.suppress(httpx.TransportError):
                client.get(url + "/me")
                return
            time.sleep(0.05)
    raise proc.fail(f"did not answer within {timeout:.0f} s")


def _reads(url: str, cookie_name: str, count: int) -> tuple[list[int], list[dict]]:
    """Log in, then read ``count`` times on fresh connections; the statuses and the sessions read."""
    statuses: list[int] = []
    sessions: list[dict] = []
    limits = httpx.Limits(max_keepalive_connections=0)  # a new connection each time: requests spread over workers
    with httpx.Client(base_url=url, timeout=10.0, trust_env=False, limits=limits) as client:
        response = client.post("/login", params={"user": "ada"})
        statuses.append(response.status_code)
        cookie = response.cookies.get(cookie_name)
        for _ in range(count):
            if cookie is not None:
                client.cookies.set(cookie_name, cookie)
            response = client.get("/me")
            statuses.append(response.status_code)
            if response.status_code == 200:
                sessions.append(response.json()["session"])
    return statuses, sessions


@pytest.mark.parametrize("name", sorted(PRIVATE))
def test_private_sessions_under_several_workers_are_refused_never_served(name: str) -> None:
    from tests.servers import free_port

    prefix, target, cookie_name = PRIVATE[name]
    port = free_port()
    # No MEMSESSION_RUNTIME_DIR: the apps build a SessionCache with no bus.
    with Process(_argv(prefix, target, port), name="private", env={"MEMSESSION_RUNTIME_DIR": ""}) as proc:
        url = f"http://127.0.0.1:{port}"
        _answering(url, proc)
        statuses, sessions = _reads(url, cookie_name, 30)
        time.sleep(0.2)  # the log lines of the last requests
        log = proc.log.read_text(errors="replace")
    # Never a session served as if it were the user's while another worker holds the real one.
    assert sessions == [] and set(statuses) == {500}, (statuses, sessions)
    assert REFUSAL in log and "GunicornHooks" in log


@pytest.fixture
def hub() -> Iterator[Hub]:
    with Hub() as running:
        yield running


def _all_see_the_login(url: str, cookie_name: str) -> set[int]:
    limits = httpx.Limits(max_keepalive_connections=0)
    pids: set[int] = set()
    with httpx.Client(base_url=url, timeout=10.0, trust_env=False, limits=limits) as client:
        response = client.post("/login", params={"user": "ada"})
        assert response.status_code == 200
        cookie = response.cookies[cookie_name]
        # Until both workers have answered: a worker still booting (joining the bus) accepts nothing
        # meanwhile, and an idle event loop may win every accept until the other is up.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            client.cookies.set(cookie_name, cookie)
            body = client.get("/me").json()
            assert body["session"] == {"user": "ada"}
            pids.add(body["pid"])
            if len(pids) == 2:
                break
    return pids


def test_uvicorn_workers_joined_to_a_hub_share_sessions(hub: Hub) -> None:
    with WebServer("uvicorn", "tests.e2e_apps.starlette_app:app", workers=2,
                   env={"MEMSESSION_RUNTIME_DIR": hub.runtime_dir}) as server:
        assert len(_all_see_the_login(server.url, "session")) == 2


def test_gunicorn_uvicorn_workers_with_the_hooks_share_sessions(tmp_path) -> None:
    server = WebServer("gunicorn", "tests.e2e_apps.starlette_embedded:app", workers=2,
                       env={"MEMSESSION_STORE": str(tmp_path / "sessions.json"),
                            "GUNICORN_CMD_ARGS": "--worker-class uvicorn.workers.UvicornWorker"},
                       config="tests/e2e_apps/gunicorn_embedded.conf.py")
    with server:
        assert len(_all_see_the_login(server.url, "session")) == 2
