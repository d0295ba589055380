"""The throwaway servers and their fixtures work as the other tests rely on."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import redis

from tests.servers import CouchServer, PostgresServer, RedisServer, ServerError, unique_name


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _client(url: str) -> httpx.Client:
    # trust_env=False: straight to 127.0.0.1 even where http_proxy is set.
    return httpx.Client(base_url=url, timeout=10, trust_env=False)


# --- PostgreSQL ---------------------------------------------------------------------------


def test_postgres_url_is_a_fresh_database(postgres_url: str) -> None:
    name = urlsplit(postgres_url).path.lstrip("/")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (k text PRIMARY KEY, v jsonb)")
        conn.execute("INSERT INTO t VALUES ('a', '{\"n\": 1}')")
        assert conn.execute("SELECT v FROM t WHERE k = 'a'").fetchone() == ({"n": 1},)


def test_postgres_url_differs_per_test(postgres_url: str, postgres_server: PostgresServer) -> None:
    # The previous test's table must not be here.
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('public.t')").fetchone() == (None,)
    assert postgres_url != postgres_server.url


def test_postgres_restart_keeps_port_and_data(postgres_server: PostgresServer) -> None:
    url, old_pid = postgres_server.url, postgres_server.pid
    table = unique_name("restart")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (n int)")
        conn.execute(f"INSERT INTO {table} VALUES (42)")
        postgres_server.restart()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert postgres_server.url == url
    assert postgres_server.pid != old_pid
    with psycopg.connect(url) as conn:
        assert conn.execute(f"SELECT n FROM {table}").fetchone() == (42,)
        conn.execute(f"DROP TABLE {table}")


def test_postgres_stop_ends_server_and_removes_files(postgres_server: PostgresServer) -> None:
    # (postgres_server: skip or fail the way the fixtures do when PostgreSQL is missing)
    with PostgresServer(database="other") as server:
        pid, tmpdir = server.pid, server.tmpdir
        assert pid is not None and tmpdir is not None
        assert len(str(tmpdir / ".s.PGSQL.65535")) < 107
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("other",)
    assert _gone(pid)
    assert not tmpdir.exists()
    assert not server.running


def test_postgres_missing_binaries_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_BIN", "/nonexistent/postgresql/bin")
    server = PostgresServer()
    with pytest.raises(ServerError, match="initdb"):
        server.start()
    assert server.tmpdir is None


# --- CouchDB API ---------------------------------------------------------------------------------


def test_couch_database_and_document(couch_url: str) -> None:
    db = unique_name("docs")
    with _client(couch_url) as client:
        assert client.get("/").json()["version"]
        assert client.put(f"/{db}").status_code == 201
        created = client.put(f"/{db}/sess1", json={"data": {"user": "ann"}, "expires": 123})
        assert created.status_code == 201
        doc = client.get(f"/{db}/sess1").json()
        assert doc["data"] == {"user": "ann"}
        assert doc["_rev"] == created.json()["rev"]


def test_couch_continuous_changes_feed(couch_url: str) -> None:
    db = unique_name("feed")
    with _client(couch_url) as client, _client(couch_url) as writer:
        assert client.put(f"/{db}").status_code == 201
        since = client.get(f"/{db}").json()["update_seq"]
        assert writer.put(f"/{db}/first", json={"n": 1}).status_code == 201
        seen: list[str] = []
        with client.stream(
            "GET",
            f"/{db}/_changes",
            params={"feed": "continuous", "since": since, "heartbeat": 1000},
            # The server gzips when allowed, and then the feed never arrives.
            headers={"Accept-Encoding": "identity"},
        ) as feed:
            assert feed.status_code == 200
            assert "content-encoding" not in feed.headers
            for line in feed.iter_lines():
                if not line.strip():
                    continue  # heartbeat
                seen.append(json.loads(line)["id"])
                if seen == ["first"]:
                    # The feed is live: a write made now arrives on it too.
                    assert writer.put(f"/{db}/second", json={"n": 2}).status_code == 201
                if "second" in seen:
                    break
    assert seen == ["first", "second"]


def test_couch_restart_keeps_url(couch_server: CouchServer) -> None:
    url, old_pid = couch_server.url, couch_server.pid
    couch_server.restart()
    assert couch_server.url == url
    assert old_pid is not None and _gone(old_pid)
    with _client(url) as client:
        assert client.get("/").status_code == 200


def test_couch_start_failure_names_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMSESSION_POUCHDB_SERVER", "/bin/false")
    server = CouchServer()
    with pytest.raises(ServerError, match=r"couchdb on 127\.0\.0\.1:\d+: exited with code 1"):
        server.start()
    assert server.tmpdir is None


# --- Redis -----------------------------------------------------------------------------------------


def test_redis_ping(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping() is True
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()


def test_redis_stop_ends_server(redis_server: RedisServer) -> None:
    # (redis_server: skip or fail the way the fixtures do when Redis is missing)
    with RedisServer() as server:
        pid, tmpdir = server.pid, server.tmpdir
        assert server.port != redis_server.port
    assert pid is not None and _gone(pid)
    assert tmpdir is not None and not tmpdir.exists()


def test_unique_names_are_valid_and_distinct() -> None:
    names = {unique_name("x") for _ in range(100)}
    assert len(names) == 100
    assert all(n.replace("_", "").isalnum() and n == n.lower() for n in names)


def test_child_processes_are_stopped_when_the_test_run_is_killed(tmp_path):
    """A harness process lives in its own session; a SIGTERM to the test run must still end it."""
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "from tests.webservers import Process\n"
        "p = Process([sys.executable, '-c', 'import time; time.sleep(120)'], name='orphan').start()\n"
        "print(p.proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    runner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=str(Path(__file__).resolve().parent.parent),
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        child = int(runner.stdout.readline())
        assert _alive(child)
        runner.terminate()  # SIGTERM, as a CI timeout or a Ctrl-C'd shell would send
        runner.wait(20)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the harness child outlived the killed test run"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        runner.stdout.close()


def _alive(pid: int) -> bool:
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    finally:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
