"""Processes die under load; sessions don't. Real gunicorn, real sidecar, real PostgreSQL.

* a worker killed with SIGKILL: the others keep serving every session and the
  replacement joins with a snapshot and serves the same data;
* the sidecar killed with SIGKILL and restarted (as gunicorn's master does):
  no request fails, no user gets a new session, no read is stale; a new
  sidecar reloads from PostgreSQL, the workers repair it, and workers,
  sidecar and database end up agreeing;
* the sidecar away longer than the outage budget: a worker that can't tell
  whether it has the newest copy answers 503 with Retry-After, never a new
  empty session and never an older copy;
* PostgreSQL stopped for 10 s: no request fails, the write queue stays within
  its limit, and once the server is back the database catches up completely.

Load comes from a few client threads, each owning its sessions and keeping a
model of what it last wrote; every load loop is bounded in count and time.
Everything listens on 127.0.0.1; we kill only pids we started.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from memsession.config import Config
from memsession.session import session_key
from persist.postgres import PostgresStore
from tests.servers import PostgresServer
from tests.sidecars import Gunicorn, Readers, SidecarProcess, client, cmdline, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.zmq, pytest.mark.slow, pytest.mark.timeout(240)]

APP = "examples.sidecar.app:app"
EMBEDDED = "examples/sidecar/gunicorn.conf.py"
EXTERNAL = "examples/sidecar/gunicorn.external.conf.py"
COOKIE = "session"
#: The cache's default ``outage_budget`` (seconds), which the example app keeps.
OUTAGE_BUDGET = Config().outage_budget


@dataclass
class Load:
    """Client threads writing to their own sessions until stopped; counts every failure.

    ``model`` maps each client's current session id to what the server said
    the session holds after that client's last write. A read that disagrees
    with it (on another worker) is a stale read, and a session that changed
    id or vanished is a replaced one (the user was logged out): both are
    always errors. A 503 is an error unless ``tolerate_unavailable`` (then
    counted in ``unavailable``; it must carry Retry-After).
    """

    url: str
    threads: int = 4
    sessions_per_thread: int = 5
    max_requests: int = 3000
    model: dict[str, dict[str, str]] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    replaced: int = 0
    unavailable: int = 0
    resets: int = 0
    tolerate_resets: bool = False
    tolerate_unavailable: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        self._workers = [threading.Thread(target=self._thread, args=(n,), daemon=True) for n in range(self.threads)]
        for t in self._workers:
            t.start()

    def _thread(self, n: int) -> None:
        clients = [client(self.url) for _ in range(self.sessions_per_thread)]
        current: list[str | None] = [None] * len(clients)
        # Each client's last writes (step, key, worker, seconds since the load began): a stale
        # read's report shows which worker wrote what when, for the one that missed it.
        history: list[deque[tuple[int, str, object, float]]] = [deque(maxlen=8) for _ in clients]
        began = time.monotonic()
        try:
            step = 0
            while not self.stop.is_set() and self.requests < self.max_requests:
                step += 1
                i = step % len(clients)
                c = clients[i]
                key = f"k{step % 7}"
                wrote = self._call(c, "post", "/set", {"key": key, "value": str(step)})
                if wrote is None:
                    continue
                history[i].append((step, key, wrote["worker"], round(time.monotonic() - began, 3)))
                seen = self._call(c, "get", "/me", None)
                if seen is None:
                    continue
                sid = seen["sid"]
                cookie = c.cookies.get(COOKIE)
                with self.lock:
                    if sid is None or cookie is None or (current[i] is not None and current[i] != sid):
                        # A worker that could not find the session started a new one: a logout.
                        self.replaced += 1
                        self.errors.append(f"session {current[i]} replaced by {sid} on {seen['worker']}")
                        if sid is None or cookie is None:
                            continue
                        self.model.pop(current[i], None)
                        self.cookies.pop(current[i], None)
                    current[i] = sid
                    self.model[sid] = wrote["session"]
                    self.cookies[sid] = cookie
                    if seen["session"] != wrote["session"]:
                        self.errors.append(f"stale read on {seen['worker']}: {seen['session']} "
                                           f"!= {wrote['session']} written by {wrote['worker']}; "
                                           f"this client's last writes (step, key, worker, s): {list(history[i])}")
        finally:
            for c in clients:
                c.close()

    def _call(self, c: httpx.Client, method: str, path: str, params: dict | None) -> dict | None:
        with self.lock:
            self.requests += 1
        try:
            response = c.request(method.upper(), path, params=params)
        except httpx.TransportError as exc:
            with self.lock:
                if self.tolerate_resets:
                    self.resets += 1
                else:
                    self.errors.append(f"{method} {path}: {exc!r}")
            return None
        if response.status_code == 503 and self.tolerate_unavailable:
            with self.lock:
                self.unavailable += 1
                if not response.headers.get("retry-after", "").isdigit():
                    self.errors.append(f"{method} {path}: 503 without Retry-After")
            return None
        if response.status_code != 200:
            with self.lock:
                self.errors.append(f"{method} {path}: HTTP {response.status_code}")
            return None
        return response.json()

    def finish(self) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(30)
            assert not t.is_alive(), "a load thread did not stop"


def read_everywhere(readers: Readers, cookie: str, reads: int = 16) -> tuple[set[int], list[dict]]:
    """Read one session over many parallel connections: the workers that answered and what they said."""
    bodies = readers.many("/me", cookie, reads)
    return {b["worker"] for b in bodies}, [b["session"] for b in bodies]


def workers_of(server: Gunicorn) -> list[int]:
    return [p for p in server.children() if "memsession sidecar" not in cmdline(p)]


def stored(url: str) -> dict[str, dict]:
    """The live sessions in the database, by key (``session_key`` of the id the load knows them by)."""
    store = PostgresStore(url)
    try:
        return {r.key: r.data for r in store.load_all(time.time()) if not r.deleted}
    finally:
        store.close()


# -- a worker dies ----------------------------------------------------------------------


def test_sigkill_a_worker_under_load(tmp_path: Path) -> None:
    server = Gunicorn(EMBEDDED, APP, env={"MEMSESSION_STORE": str(tmp_path / "s.json"), "WORKERS": "4"})
    with server:
        wait_until(lambda: len(workers_of(server)) == 4, 30, "4 workers")
        load = Load(server.url, tolerate_resets=True)  # the request the victim was serving is cut off
        load.run()
        wait_until(lambda: load.requests > 200, 30, "load to get going")
        before = workers_of(server)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        replacement = wait_until(lambda: [p for p in workers_of(server) if p not in before], 30,
                                 "gunicorn to start a replacement worker")[0]
        served = load.requests
        wait_until(lambda: load.requests > served + 200, 30, "load to go on after the kill")
        load.finish()
        assert not load.errors, load.errors[:5]
        assert load.resets <= load.threads  # at most the requests in flight on the victim

        # Every session, read from every worker (the replacement included), is what its owner last wrote.
        seen_replacement = False
        with Readers(server.url) as readers:
            for sid, data in load.model.items():
                workers, answers = read_everywhere(readers, load.cookies[sid])
                assert all(a == data for a in answers), (sid, data, answers)
                seen_replacement |= replacement in workers
            if not seen_replacement:  # it may simply not have been picked: ask until it is
                sid = next(iter(load.model))
                wait_until(lambda: replacement in read_everywhere(readers, load.cookies[sid])[0], 30,
                           "the replacement worker to answer")
        assert victim not in workers_of(server)


# -- the sidecar dies, or its database goes away ----------------------------------------------


@pytest.fixture
def sidecar(postgres_url: str) -> Iterator[SidecarProcess]:
    with SidecarProcess(postgres_url, "--heartbeat", "0.2", "--flush-interval", "0.05",
                        "--queue-limit", "8", "--batch-size", "4") as running:
        yield running


@pytest.fixture
def web(sidecar: SidecarProcess) -> Iterator[Gunicorn]:
    env = {"MEMSESSION_RUNTIME_DIR": sidecar.runtime_dir, "WORKERS": "3"}
    with Gunicorn(EXTERNAL, APP, env=env) as server:
        wait_until(lambda: len(workers_of(server)) == 3, 30, "3 workers")
        yield server


def quiesced(sidecar: SidecarProcess, load: Load, postgres_url: str) -> None:
    """Workers, sidecar and database agree on every session the load wrote."""
    def sidecar_done() -> bool:
        p = sidecar.stats()["persist"]
        return p["depth"] == 0 and not p["failing"] and not p["rewrite_due"]

    try:
        wait_until(sidecar_done, 60, "the sidecar to write everything")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{sidecar.stats()['persist']}\n{sidecar.tail(30)}") from None
    def differences() -> dict:
        rows = stored(postgres_url)
        found = {s: rows.get(session_key(s)) for s in load.model}
        return {s: (d, found[s]) for s, d in load.model.items() if found[s] != d}

    left = differences()
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = differences()
    assert not left, (f"{len(left)} sessions differ in the database: {list(left.items())[:3]}\n"
                      f"{sidecar.stats()['persist']}\n{sidecar.tail(30)}")
    with Readers(load.url) as readers:
        for sid, data in load.model.items():
            _, answers = read_everywhere(readers, load.cookies[sid], reads=9)
            assert all(a == data for a in answers), (sid, data, answers)


def test_sigkill_the_sidecar_under_load(sidecar: SidecarProcess, web: Gunicorn, postgres_url: str) -> None:
    load = Load(web.url)
    load.run()
    wait_until(lambda: load.requests > 200, 30, "load to get going")
    assert not load.errors, load.errors[:5]
    sidecar.kill()
    sidecar.start()  # at once, as gunicorn's master restarts the sidecar it spawned
    assert sidecar.stats()["persist"]["warm_loaded"] > 0  # it reloaded what it had written
    # Every worker notices the new hub and repairs: it pushes its state and takes a snapshot.
    try:
        wait_until(lambda: sidecar.stats()["pushes"] >= 3, 60, "the 3 workers to push their sessions")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{sidecar.stats()}\n{web.tail(60)}") from None
    repaired_at = load.requests
    wait_until(lambda: load.requests > repaired_at + 200, 30, "load to go on after the repair")
    load.finish()
    # No request failed, no user got a new session, no read was stale: a worker that had not
    # received the newest write waited for the new hub rather than guess.
    assert not load.errors, load.errors[:5]
    assert load.replaced == 0
    quiesced(sidecar, load, postgres_url)
    assert sidecar.stats()["sessions"] >= len(load.model)


def test_a_sidecar_outage_past_the_budget_answers_503_never_a_new_session(
    sidecar: SidecarProcess, web: Gunicorn, postgres_url: str
) -> None:
    load = Load(web.url, tolerate_unavailable=True, max_requests=20_000)
    load.run()
    wait_until(lambda: load.requests > 200, 30, "load to get going")
    sidecar.kill()
    down_until = time.monotonic() + OUTAGE_BUDGET + 4
    wait_until(lambda: time.monotonic() > down_until and load.unavailable > 0, 60,
               "a worker lacking the newest write to answer 503")
    assert not load.errors, load.errors[:5]  # no logout and no stale read while the hub is away
    sidecar.start()
    served = load.requests
    wait_until(lambda: load.requests > served + 200, 60, "load to go on after the sidecar returned")
    load.finish()
    assert not load.errors, load.errors[:5]
    assert load.replaced == 0 and load.unavailable > 0
    quiesced(sidecar, load, postgres_url)


def test_postgres_down_for_ten_seconds_under_load(
    sidecar: SidecarProcess, web: Gunicorn, postgres_server: PostgresServer, postgres_url: str
) -> None:
    load = Load(web.url, max_requests=20_000)
    load.run()
    wait_until(lambda: load.requests > 200, 30, "load to get going")
    depths: list[int] = []
    # Halt and relaunch the same cluster (same port, same data); stop()/start() would make a new one.
    postgres_server._halt()
    postgres_server._running = False
    try:
        down_until = time.monotonic() + 10
        while time.monotonic() < down_until:
            persist = sidecar.stats()["persist"]
            depths.append(persist["depth"])
            assert persist["depth"] <= persist["limit"]  # bounded, whatever the load
            time.sleep(0.2)
        assert sidecar.stats()["persist"]["failing"]
    finally:
        postgres_server._launch()
        postgres_server._running = True
    served = load.requests
    wait_until(lambda: load.requests > served + 200, 30, "load to go on after the database returned")
    load.finish()
    assert not load.errors, load.errors[:5]
    assert sidecar.stats()["persist"]["overflows"] >= 1  # 20 sessions > a queue of 8 keys
    quiesced(sidecar, load, postgres_url)
    assert sidecar.stats()["persist"]["rewrites"] >= 1
