"""``memsession sidecar`` and gunicorn-with-hooks processes for the sidecar, gunicorn and failure tests.

Everything listens on 127.0.0.1 or private ipc sockets, is started in its own
process group, and is stopped (or killed) by the pid we started it with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx

from memsession.errors import BusError
from memsession.hub import HubConfig, query_stats
from tests.servers import free_port, untrack
from tests.webservers import Process

T = TypeVar("T")
POLL = 0.02


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(POLL)


class SidecarProcess(Process):
    """``python -m memsession sidecar`` on ipc sockets in a private runtime dir."""

    def __init__(self, store: str, *args: str, runtime_dir: str | None = None) -> None:
        self.owns_dir = runtime_dir is None
        self.runtime_dir = runtime_dir or tempfile.mkdtemp(prefix="ms-sc-")
        self.store = store
        self.args = list(args)
        self.requests = HubConfig(runtime_dir=self.runtime_dir).endpoints()[2]
        super().__init__(self._argv(), name="sidecar")

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "memsession", "sidecar", "--store", self.store,
                "--runtime-dir", self.runtime_dir, "--log-level", "INFO", *self.args]

    def start(self, timeout: float = 30.0) -> SidecarProcess:
        self.argv = self._argv()
        super().start()
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with contextlib.suppress(BusError):
                query_stats(self.requests, timeout=0.3)
                return self
            if time.monotonic() >= deadline:
                self.stop()
                raise self.fail(f"did not answer within {timeout:.0f} s")

    def stats(self, timeout: float = 2.0) -> dict[str, Any]:
        return query_stats(self.requests, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, no flush; the process object can be started again."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        untrack(self)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; return the exit code (the log stays for inspection)."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        untrack(self)
        os.kill(proc.pid, signal.SIGTERM)
        return proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        with contextlib.suppress(OSError):
            self.log.unlink()
        if self.owns_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


class Gunicorn(Process):
    """gunicorn with a config file, on a free 127.0.0.1 port; ready once ``probe`` answers."""

    def __init__(self, config: str, target: str, *extra: str, env: dict[str, str] | None = None,
                 probe: str = "/me") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.probe = probe
        argv = [sys.executable, "-m", "gunicorn", "-c", config, "--bind", f"127.0.0.1:{self.port}",
                "--graceful-timeout", "5", "--log-level", "info", *extra, target]
        super().__init__(argv, env=env, name="gunicorn")

    def start(self, timeout: float = 60.0) -> Gunicorn:
        super().start()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.TransportError):
                    if client.get(self.probe).status_code < 500:
                        return self
                time.sleep(0.05)
        self.stop()
        raise self.fail(f"did not answer within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        with contextlib.suppress(OSError):
            self.log.unlink()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> list[int]:
        """Pids of the master's direct children (workers and the embedded sidecar), from every thread."""
        out: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return out
        for task in tasks:
            with contextlib.suppress(OSError), open(f"/proc/{self.pid}/task/{task}/children") as f:
                out.extend(int(p) for p in f.read().split())
        return sorted(set(out))

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        proc, self.proc = self.proc, None
        untrack(self)
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group that outlived it
        return code


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def client(base_url: str, cookies: Sequence[tuple[str, str]] = ()) -> httpx.Client:
    """A client that opens a fresh connection per request, so requests spread over workers."""
    c = httpx.Client(base_url=base_url, timeout=10.0, trust_env=False,
                     limits=httpx.Limits(max_keepalive_connections=0))
    for name, value in cookies:
        c.cookies.set(name, value)
    return c


def http_port() -> int:
    return free_port()


class Readers:
    """Parallel GETs with a session cookie over fresh connections, from a few long-lived clients.

    Making an httpx client costs milliseconds (TLS context); reusing a few
    without keep-alive still spreads requests over the workers.
    """

    def __init__(self, base_url: str, threads: int = 8, cookie_name: str = "session") -> None:
        import queue
        from concurrent.futures import ThreadPoolExecutor

        self.cookie_name = cookie_name
        self._clients: queue.SimpleQueue[httpx.Client] = queue.SimpleQueue()
        self._all = [client(base_url) for _ in range(threads)]
        for c in self._all:
            self._clients.put(c)
        self._pool = ThreadPoolExecutor(threads)

    def _get(self, path: str, cookie: str) -> dict[str, Any]:
        c = self._clients.get()
        try:
            c.cookies.clear()
            response = c.get(path, headers={"Cookie": f"{self.cookie_name}={cookie}"})
            assert response.status_code == 200, response.text
            return response.json()  # type: ignore[no-any-return]
        finally:
            c.cookies.clear()
            self._clients.put(c)

    def many(self, path: str, cookie: str, n: int) -> list[dict[str, Any]]:
        return list(self._pool.map(lambda _: self._get(path, cookie), range(n)))

    def close(self) -> None:
        self._pool.shutdown()
        for c in self._all:
            c.close()

    def __enter__(self) -> Readers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
