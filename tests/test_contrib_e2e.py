"""End to end: real gunicorn and uvicorn workers sharing sessions through a real hub.

Every server listens on 127.0.0.1, is bounded in time, and is stopped by the
pid it was started with. Requests go out from several threads at once so the
kernel spreads them over the workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.webservers import Hub, WebServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.zmq, pytest.mark.timeout(180)]

SERVERS = {
    "gunicorn-flask": ("gunicorn", "tests.e2e_apps.flask_app:app", 4, "session"),
    "gunicorn-flask-embedded": ("gunicorn", "tests.e2e_apps.flask_embedded:app", 4, "session"),
    "gunicorn-django": ("gunicorn", "tests.e2e_apps.django_app:application", 4, "sessionid"),
    "gunicorn-django-embedded": ("gunicorn", "tests.e2e_apps.django_app:application", 4, "sessionid"),
    "uvicorn-starlette": ("uvicorn", "tests.e2e_apps.starlette_app:app", 3, "session"),
}


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with Hub() as running:
        yield running


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(
    request: pytest.FixtureRequest, hub: Hub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    kind, target, workers, cookie = SERVERS[request.param]
    if request.param.endswith("-embedded"):
        # The embedded default: gunicorn's hooks start and stop their own sidecar.
        store = tmp_path_factory.mktemp("store") / "sessions.json"
        server = WebServer(kind, target, workers=workers, env={"MEMSESSION_STORE": str(store)},
                           config="tests/e2e_apps/gunicorn_embedded.conf.py")
    else:
        server = WebServer(kind, target, workers=workers, env={"MEMSESSION_RUNTIME_DIR": hub.runtime_dir})
    with server as running:
        running.cookie_name = cookie  # type: ignore[attr-defined]
        yield running


def client(server: WebServer, cookie: str | None = None) -> httpx.Client:
    # A fresh connection per request (no keep-alive) so requests spread over workers.
    c = httpx.Client(
        base_url=server.url, timeout=10.0, trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )
    if cookie is not None:
        c.cookies.set(server.cookie_name, cookie)  # type: ignore[attr-defined]
    return c


def login(server: WebServer, user: str) -> str:
    with client(server) as c:
        response = c.post("/login", params={"user": user})
        assert response.status_code == 200
        return response.cookies[server.cookie_name]  # type: ignore[attr-defined]


def me(server: WebServer, cookie: str | None) -> dict:
    with client(server, cookie) as c:
        response = c.get("/me")
        assert response.status_code == 200, response.text
        return response.json()


def test_login_is_seen_by_every_worker(server: WebServer) -> None:
    cookie = login(server, "ada")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: me(server, cookie), range(300)))
    assert all(a["session"] == {"user": "ada"} for a in answers)
    assert len({a["pid"] for a in answers}) >= 2, "requests never reached a second worker"


def test_logout_is_seen_on_the_very_next_request(server: WebServer) -> None:
    for round_ in range(20):
        with client(server) as c:
            c.post("/login", params={"user": f"u{round_}"})
            assert c.get("/me").json()["session"] == {"user": f"u{round_}"}
            response = c.post("/logout")
            assert "Max-Age=0" in response.headers["set-cookie"].replace("max-age", "Max-Age")
            assert c.get("/me").json()["session"] == {}


def test_each_clients_writes_all_survive_across_workers(server: WebServer) -> None:
    # 10 clients x 100 sequential writes, all clients at once: 1,000 writes
    # landing on whichever worker accepts them. Each write must see the
    # client's previous one (the cookie carries its version), or a key is lost.
    def run_client(n: int) -> tuple[dict, set[int]]:
        pids = set()
        with client(server) as c:
            for i in range(100):
                response = c.post("/write", params={"key": f"k{i}", "value": str(i)})
                assert response.status_code == 200
                pids.add(response.json()["pid"])
            return c.get("/me").json()["session"], pids

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(run_client, range(10)))
    for session, _ in results:
        assert session == {f"k{i}": str(i) for i in range(100)}
    assert len(set().union(*(pids for _, pids in results))) >= 2


def test_a_replayed_cookie_after_logout_is_empty_everywhere(server: WebServer) -> None:
    with client(server) as c:
        c.post("/login", params={"user": "ada"})
        old = c.cookies[server.cookie_name]  # type: ignore[attr-defined]
        c.post("/logout")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: me(server, old), range(100)))
    # The logout reached every worker before a request arrived, or the request
    # read through to the hub: either way the session is gone.
    stale = [a for a in answers if a["session"]]
    assert len(stale) <= 1 and all(a["session"] == {} for a in answers[8:])


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"), id="tampered"),
        pytest.param(lambda v: v[: len(v) // 2], id="truncated"),
        pytest.param(lambda v: v + "A" * 3000, id="oversized"),
        pytest.param(lambda v: v.split(".")[0], id="unsigned-sid"),
    ],
)
def test_bad_cookies_get_a_fresh_empty_session(server: WebServer, mangle) -> None:
    cookie = login(server, "victim")
    if mangle(cookie) == cookie:
        pytest.skip("Django's session cookie is the bare 256-bit key, as in Django's own backends")
    for _ in range(10):
        answer = me(server, mangle(cookie))
        assert answer["session"] == {}
    assert me(server, cookie)["session"] == {"user": "victim"}
