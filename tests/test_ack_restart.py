"""A sidecar restart under load, with real gunicorn, a real sidecar and real stores, in both modes.

Clients each write their own session over fresh connections while the
embedded sidecar is SIGKILLed; the gunicorn master starts a new one. No
request fails and no user is given a new session: a worker that had not yet
received a user's newest write waits for the new hub rather than guess.
Acknowledged: saves in flight when the sidecar died are resent to the new one,
and every write answered 200 is in the store (read directly, not through the
sidecar). Write-behind: every write answered 200 reaches the store soon after.
Either way it is readable afterwards. The load is a fixed number of requests.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from memsession.hub import HubConfig, query_stats
from memsession.session import Record
from persist.jsonfile import read_snapshot
from tests.sidecars import Gunicorn, cmdline, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.zmq, pytest.mark.timeout(300)]

CONFIG = "examples/sidecar/gunicorn.conf.py"
APP = "examples.sidecar.app:app"
COOKIE = "session"
CLIENTS = 8
WRITES = 40
KILLS = 2
#: Answers between kills: each kill lands while the load is running, well before it ends.
KILL_EVERY = 60


@dataclass
class Load:
    """What the clients saw: the writes answered 200 per user, the rest as failures."""

    acknowledged: dict[str, dict[str, str]] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, started: float) -> None:
        with self.lock:
            self.answered += 1
            self.latencies.append(time.monotonic() - started)


def http_client(url: str) -> httpx.Client:
    # Fresh connection per request (requests spread over the workers); the timeout is above
    # the ack deadline so a slow save shows as a slow 200 or a 5xx, never as a client timeout.
    return httpx.Client(base_url=url, timeout=60.0, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0))


def one_client(url: str, user: str, load: Load) -> None:
    with http_client(url) as c:
        started = time.monotonic()
        try:
            response = c.post("/login", params={"user": user})
        except httpx.HTTPError as exc:
            load.failures.append(f"{user} login: {exc!r}")
            return
        load.count(started)
        if response.status_code != 200:
            load.failures.append(f"{user} login: {response.status_code} {response.text[:200]}")
            return
        written = {"user": user}
        load.cookies[user] = response.cookies[COOKIE]
        load.acknowledged[user] = dict(written)
        for i in range(WRITES):
            started = time.monotonic()
            try:
                response = c.post("/set", params={"key": f"k{i}", "value": str(i)})
            except httpx.HTTPError as exc:
                load.failures.append(f"{user} k{i}: {exc!r}")
                continue
            load.count(started)
            if response.status_code == 200:
                written[f"k{i}"] = str(i)
                load.acknowledged[user] = dict(written)
                # What the browser sends next: the newest cookie, whose version asks any worker
                # for this write (read-your-writes), whether or not replication has settled.
                load.cookies[user] = c.cookies.get(COOKIE) or load.cookies[user]
            else:
                load.failures.append(f"{user} k{i}: {response.status_code} {response.text[:200]}")


def sidecar_pid(server: Gunicorn, not_this: int = 0) -> int:
    pids = [p for p in server.children() if p != not_this and "memsession sidecar" in cmdline(p)]
    return pids[0] if pids else 0


def serving(pid: int) -> bool:
    args = cmdline(pid).split()
    if "--runtime-dir" not in args:
        return False
    try:
        query_stats(HubConfig(runtime_dir=args[args.index("--runtime-dir") + 1]).endpoints()[2], timeout=0.3)
    except Exception:  # noqa: BLE001 (not answering yet; polled again)
        return False
    return True


def run_load_with_kills(server: Gunicorn) -> Load:
    """CLIENTS clients write WRITES values each; the sidecar is SIGKILLed KILLS times meanwhile."""
    load = Load()
    wait_until(lambda: len(server.children()) == 5, 30, "4 workers + sidecar")
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(one_client, server.url, f"user{n}", load) for n in range(CLIENTS)]
        for kill in range(KILLS):
            target = (kill + 1) * KILL_EVERY
            wait_until(lambda: load.answered >= target, 120, f"{target} answers before kill {kill + 1}")
            victim = wait_until(lambda: sidecar_pid(server), 30, "the sidecar")
            wait_until(lambda: serving(victim), 30, "the sidecar to serve")
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: sidecar_pid(server, victim), 30, "the master to start a new sidecar")
        for future in futures:
            future.result()
    return load


#: What a worker logs when it serves the copy before a write it could not find anywhere.
LOST_WRITE = "was not found anywhere"


def check_readable(server: Gunicorn, load: Load) -> None:
    # Every writer lived: no write may have been given up on as lost (and the copy before it served).
    log = server.tail(1_000_000)
    assert LOST_WRITE not in log, "\n".join(line for line in log.splitlines() if LOST_WRITE in line)
    with http_client(server.url) as c:
        for user, expect in load.acknowledged.items():
            c.cookies.clear()
            c.cookies.set(COOKIE, load.cookies[user])
            response = c.get("/me")
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["session"] == expect, (user, answer["worker"], server.tail(150))


def check_stored(records: list[Record], load: Load) -> None:
    stored = {r.data.get("user"): r.data for r in records if not r.deleted}
    for user, expect in load.acknowledged.items():
        assert stored.get(user) == expect, (user, expect, stored.get(user))


def summary(load: Load, what: str) -> str:
    worst = max(load.latencies, default=0.0)
    return (f"{what}: {load.answered} requests, {KILLS} sidecar kills, {len(load.failures)} failed, "
            f"max latency {worst:.2f}s")


def sidecar_gunicorn(store: str, acknowledged: bool) -> Gunicorn:
    env = {"MEMSESSION_STORE": store, "WORKERS": "4"}
    if acknowledged:
        env["MEMSESSION_ACKNOWLEDGED"] = "1"
    return Gunicorn(CONFIG, APP, env=env)


MODES = [pytest.param(True, id="acknowledged"), pytest.param(False, id="write-behind")]


@pytest.mark.parametrize("acknowledged", MODES)
def test_postgres_writes_survive_sidecar_kills(postgres_url: str, acknowledged: bool) -> None:
    from persist.postgres import PostgresStore

    with sidecar_gunicorn(postgres_url, acknowledged) as server:
        load = run_load_with_kills(server)
        print(summary(load, f"postgres {'acknowledged' if acknowledged else 'write-behind'}"))
        # No failed request and (checked by the reads below) no user given a new session.
        assert load.failures == [], (load.failures, server.tail(60))
        assert len(load.acknowledged) == CLIENTS
        check_readable(server, load)
        # Read PostgreSQL directly while the server still runs. Acknowledged: a 200 meant "in
        # the database". Write-behind: the sidecar writes it soon after, even across its restarts.
        store = PostgresStore(postgres_url)
        try:
            if acknowledged:
                check_stored(list(store.load_all(time.time())), load)
            else:
                wait_until(lambda: _stored_matches(list(store.load_all(time.time())), load), 30,
                           "the sidecar to write every session")
        finally:
            store.close()
        assert server.terminate() == 0


def _stored_matches(records: list[Record], load: Load) -> bool:
    try:
        check_stored(records, load)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("acknowledged", MODES)
def test_jsonfile_writes_survive_sidecar_kills(tmp_path: Path, acknowledged: bool) -> None:
    path = tmp_path / "sessions.json"
    with sidecar_gunicorn(str(path), acknowledged) as server:
        load = run_load_with_kills(server)
        print(summary(load, f"jsonfile {'acknowledged' if acknowledged else 'write-behind'}"))
        assert load.failures == [], (load.failures, server.tail(60))
        assert len(load.acknowledged) == CLIENTS
        check_readable(server, load)
        assert server.terminate() == 0
    # The JSON store is durable as of its snapshot; the sidecar writes one when it stops.
    check_stored(list(read_snapshot(str(path), time.time())), load)
