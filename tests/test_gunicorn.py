"""The gunicorn hooks with real gunicorn: embedded sidecar, 4 workers sharing sessions, restarts.

The config under test is the shipped example (``examples/sidecar/gunicorn.conf.py``).
Servers listen on 127.0.0.1, are bounded in time, and are stopped by the pid
they were started with.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from memsession.errors import ConfigError
from memsession.hub import HubConfig, query_stats
from memsession.service.gunicorn import GunicornHooks, session_cache
from memsession.session import session_key
from persist.jsonfile import read_snapshot
from tests.sidecars import Gunicorn, Readers, client, cmdline, wait_until
from tests.webservers import ProcessError

pytestmark = [pytest.mark.e2e, pytest.mark.zmq, pytest.mark.timeout(180)]

CONFIG = "examples/sidecar/gunicorn.conf.py"
APP = "examples.sidecar.app:app"
COOKIE = "session"


def gunicorn(store: Path, *extra: str, app: str = APP, workers: int = 4) -> Gunicorn:
    """An unstarted server (``with`` starts and stops it)."""
    return Gunicorn(CONFIG, app, *extra, env={"MEMSESSION_STORE": str(store), "WORKERS": str(workers)})


def login(url: str, user: str) -> str:
    with client(url) as c:
        response = c.post("/login", params={"user": user})
        assert response.status_code == 200
        return response.cookies[COOKIE]


def me(url: str, cookie: str) -> dict:
    with client(url, [(COOKIE, cookie)]) as c:
        response = c.get("/me")
        assert response.status_code == 200, response.text
        return response.json()


def workers_seen(url: str, cookie: str, want: int, expect: dict, timeout: float = 30.0) -> set[int]:
    """Read the session from many connections at once until ``want`` workers answered; all must agree."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    with Readers(url) as readers:
        while len(seen) < want and time.monotonic() < deadline:
            for body in readers.many("/me", cookie, 16):
                assert body["session"] == expect, body
                seen.add(body.get("worker") or body["pid"])
    return seen


def test_hooks_check_their_options() -> None:
    with pytest.raises(ConfigError):
        GunicornHooks(store="redis://localhost")
    with pytest.raises(ConfigError):
        GunicornHooks(store="x.json", bus={"runtime_dir": "/tmp/x"})
    namespace: dict = {"post_fork": lambda server, worker: calls.append("theirs")}
    calls: list[str] = []
    hooks = GunicornHooks(bus={"runtime_dir": "/nonexistent"}).install(namespace)
    assert {"on_starting", "post_fork", "post_worker_init", "worker_exit", "on_exit"} <= set(namespace)
    assert namespace["on_exit"] == hooks.on_exit


def test_session_cache_outside_gunicorn_is_plain_and_shared() -> None:
    cache = session_cache()
    try:
        assert cache.bus is None
        assert session_cache() is cache
        with pytest.raises(ConfigError):
            session_cache(maxsize=7)
    finally:
        cache.close()
        from memsession.contrib import process

        process.take_all()


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_embedded_four_workers_share_one_session_and_keep_it_across_restarts(tmp_path: Path, preload: bool) -> None:
    store = tmp_path / "sessions.json"
    extra = ("--preload",) if preload else ()
    with gunicorn(store, *extra) as server:
        children = wait_until(lambda: len(server.children()) == 5 and server.children(), 30, "4 workers + sidecar")
        sidecars = [pid for pid in children if "memsession sidecar" in cmdline(pid)]
        assert len(sidecars) == 1, [cmdline(p) for p in children]

        # Writes from whichever worker, read back by every worker (read-your-writes over the cookie).
        with client(server.url) as c:
            assert c.post("/login", params={"user": "alice"}).status_code == 200
            assert len(workers_seen(server.url, c.cookies[COOKIE], 4, {"user": "alice"})) == 4
            writers = set()
            for i in range(30):
                response = c.post("/set", params={"key": f"k{i}", "value": str(i)})
                assert response.status_code == 200
                writers.add(response.json()["worker"])
                body = c.get("/me").json()
                assert body["session"].get(f"k{i}") == str(i), (response.json(), body, server.tail(30))
            cookie = c.cookies[COOKIE]
        expect = {"user": "alice", **{f"k{i}": str(i) for i in range(30)}}
        assert len(workers_seen(server.url, cookie, 4, expect)) == 4
        assert server.terminate() == 0

    # Stopped: the sidecar flushed the file; a new server serves the same session.
    saved = [r for r in read_snapshot(str(store), time.time()) if not r.deleted and r.data.get("user") == "alice"]
    assert [r.data for r in saved] == [expect]
    with gunicorn(store, *extra) as server:
        assert me(server.url, cookie)["session"] == expect
        server.terminate()


def test_finds_the_cache_of_a_plain_flask_app(tmp_path: Path) -> None:
    # tests.e2e_apps.flask_app builds MemSession(app, cache=SessionCache()) without a bus:
    # post_worker_init finds that cache and joins it to the embedded sidecar.
    with gunicorn(tmp_path / "s.json", app="tests.e2e_apps.flask_app:app", workers=3) as server:
        cookie = login(server.url, "bob")
        assert len(workers_seen(server.url, cookie, 3, {"user": "bob"})) == 3


def test_embedded_sidecar_is_restarted_when_it_dies(tmp_path: Path) -> None:
    import os
    import signal

    with gunicorn(tmp_path / "s.json", workers=2) as server:
        cookie = login(server.url, "carol")
        assert len(workers_seen(server.url, cookie, 2, {"user": "carol"})) == 2  # replicated before the kill
        sidecar = next(pid for pid in server.children() if "memsession sidecar" in cmdline(pid))
        os.kill(sidecar, signal.SIGKILL)
        # Workers keep serving from memory while the master brings a new sidecar up.
        assert me(server.url, cookie)["session"] == {"user": "carol"}
        wait_until(
            lambda: [p for p in server.children() if "memsession sidecar" in cmdline(p) and p != sidecar],
            15, "the master to start a new sidecar",
        )
        # The workers push their sessions to the new sidecar (a new hub epoch), which stores them.
        new = next(p for p in server.children() if "memsession sidecar" in cmdline(p) and p != sidecar)
        args = cmdline(new).split()
        requests = HubConfig(runtime_dir=args[args.index("--runtime-dir") + 1]).endpoints()[2]
        wait_until(lambda: query_stats(requests)["sessions"] >= 1, 15, "the workers to repair the new sidecar")
        assert server.terminate() == 0
    saved = [r.data for r in read_snapshot(str(tmp_path / "s.json"), time.time()) if not r.deleted]
    assert {"user": "carol"} in saved


def test_two_host_example_with_curve_keys() -> None:
    # examples/sidecar/two_hosts.py: a sidecar on tcp with CURVE, two gunicorns on "two hosts".
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "examples/sidecar/two_hosts.py", "--demo"], check=False, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "written on host A, read on host B" in result.stdout
    assert "{'cart': '3', 'user': 'alice'}" in result.stdout
    assert "sidecar at tcp://127.0.0.1:" in result.stdout


def test_acknowledged_mode_against_an_external_sidecar(postgres_url: str) -> None:
    # The sidecar flushes only every 30 s; in acknowledged mode a response means "in PostgreSQL".
    from persist.postgres import PostgresStore
    from tests.sidecars import SidecarProcess

    with SidecarProcess(postgres_url, "--flush-interval", "30") as sidecar:
        env = {"MEMSESSION_RUNTIME_DIR": sidecar.runtime_dir, "WORKERS": "2", "MEMSESSION_ACKNOWLEDGED": "1"}
        with Gunicorn("examples/sidecar/gunicorn.external.conf.py", APP, env=env) as server, \
                client(server.url) as c:
            store = PostgresStore(postgres_url)
            try:
                assert c.post("/login", params={"user": "dora"}).status_code == 200
                for i in range(5):
                    assert c.post("/set", params={"key": "step", "value": str(i)}).status_code == 200
                    sid = c.get("/me").json()["sid"]
                    # No polling: the response came after the acknowledgement.
                    stored = store.load(session_key(sid))
                    assert stored is not None and stored.data == {"user": "dora", "step": str(i)}
            finally:
                store.close()


def test_reload_replaces_workers_and_keeps_sessions(tmp_path: Path) -> None:
    import os
    import shutil

    shutil.copy("examples/sidecar/app.py", tmp_path / "reload_app.py")
    env = {"MEMSESSION_STORE": str(tmp_path / "s.json"), "WORKERS": "2"}
    server = Gunicorn(CONFIG, "reload_app:app", "--reload", "--pythonpath", str(tmp_path), env=env)
    with server:
        workers = wait_until(lambda: len(server.children()) == 3 and server.children(), 30, "2 workers + sidecar")
        old = {p for p in workers if "memsession sidecar" not in cmdline(p)}
        cookie = login(server.url, "erin")
        assert len(workers_seen(server.url, cookie, 2, {"user": "erin"})) == 2
        later = time.time() + 5
        os.utime(tmp_path / "reload_app.py", (later, later))  # the reloader sees a changed file
        wait_until(lambda: not old & set(server.children()) and len(server.children()) == 3, 60,
                   "every worker to be replaced")
        new = workers_seen(server.url, cookie, 2, {"user": "erin"})  # the new workers joined with a snapshot
        assert len(new) == 2 and not new & old


def test_sighup_reload_keeps_the_sidecar_and_the_sessions(tmp_path: Path) -> None:
    import os
    import signal

    with gunicorn(tmp_path / "s.json", workers=2) as server:
        wait_until(lambda: len(server.children()) == 3, 30, "2 workers + sidecar")
        sidecar = [p for p in server.children() if "memsession sidecar" in cmdline(p)]
        old = set(server.children()) - set(sidecar)
        cookie = login(server.url, "fay")
        assert len(workers_seen(server.url, cookie, 2, {"user": "fay"})) == 2
        os.kill(server.pid, signal.SIGHUP)  # gunicorn re-reads its config and replaces the workers
        wait_until(lambda: not old & set(server.children()) and len(server.children()) == 3, 60,
                   "new workers after SIGHUP")
        assert [p for p in server.children() if "memsession sidecar" in cmdline(p)] == sidecar
        assert len(workers_seen(server.url, cookie, 2, {"user": "fay"})) == 2


def test_master_killed_the_sidecar_flushes_and_exits(tmp_path: Path) -> None:
    import os
    import signal

    store = tmp_path / "s.json"
    with gunicorn(store, workers=2) as server:
        sidecar = wait_until(lambda: [p for p in server.children() if "memsession sidecar" in cmdline(p)], 30,
                             "the sidecar")[0]
        cookie = login(server.url, "gus")
        assert me(server.url, cookie)["session"] == {"user": "gus"}
        argv = cmdline(sidecar).split()
        runtime_dir = argv[argv.index("--runtime-dir") + 1]
        assert os.path.isdir(runtime_dir)
        os.kill(server.pid, signal.SIGKILL)  # no on_exit: the sidecar notices its parent is gone
        wait_until(lambda: not os.path.exists(f"/proc/{sidecar}") or "memsession" not in cmdline(sidecar), 30,
                   "the orphaned sidecar to exit")
        assert any(r.data == {"user": "gus"} for r in read_snapshot(str(store), time.time()))
        assert not os.path.exists(runtime_dir)  # the temp dir the dead master made is not left behind


def test_a_corrupt_session_file_stops_gunicorn_at_start(tmp_path: Path) -> None:
    store = tmp_path / "s.json"
    store.write_text('{"format": "memsession-sessions", "version": 1, "count": 1}\n{"k": broken\n')
    server = gunicorn(store)
    try:
        with pytest.raises(ProcessError) as failure:
            server.start(timeout=60)
        assert "exited" in str(failure.value)
        assert str(store) in server.tail(80)  # the error names the file
        assert store.read_text().endswith("broken\n")  # and leaves it alone
    finally:
        server.stop()


def test_a_store_in_a_missing_folder_stops_gunicorn_at_start_with_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    server = gunicorn(missing / "sessions.json")
    try:
        with pytest.raises(ProcessError, match="exited with code [1-9]"):
            server.start(timeout=60)
        log = server.tail(200)
        said = [line for line in log.splitlines() if f"the folder {missing} does not exist" in line]
        assert len(said) == 1 and "create it" in said[0], log
        assert "Traceback" not in log, log
        assert "memsession sidecar" not in log  # refused before one was started
        assert not missing.exists()
    finally:
        server.stop()


def test_stopping_gunicorn_leaves_no_sockets_and_no_lock_file_behind(tmp_path: Path) -> None:
    runtime_dir, data = tmp_path / "rt", tmp_path / "data"
    data.mkdir()
    runtime_dir.mkdir(mode=0o700)  # given, so the master does not remove it: what is left in it shows
    store = data / "s.json"
    server = Gunicorn(CONFIG, APP, env={"MEMSESSION_STORE": str(store), "WORKERS": "2",
                                        "MEMSESSION_RUNTIME_DIR": str(runtime_dir)})
    try:
        server.start()
        cookie = login(server.url, "ada")
        assert me(server.url, cookie)["session"] == {"user": "ada"}
        assert {"hub.lock", "req.sock", "ack.sock"} <= set(os.listdir(runtime_dir))
        assert server.terminate() == 0
        assert os.listdir(runtime_dir) == []
        assert os.listdir(data) == ["s.json"]  # the sessions, and no .s.json.lock
        assert any(r.data == {"user": "ada"} for r in read_snapshot(str(store), time.time()))
    finally:
        server.stop()
