"""Real gunicorn / uvicorn / hub processes on 127.0.0.1 for end-to-end tests and the web benchmark.

Each process runs in its own process group (so a Ctrl-C meant for pytest
doesn't hit it, and stopping it also ends the workers it forked) and is
stopped by the pid we started it with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.servers import free_port, track, untrack

ROOT = Path(__file__).resolve().parent.parent
_POLL = 0.05


class ProcessError(RuntimeError):
    """A process did not start or answer in time; the message carries its log tail."""


class Process:
    """A child process with a log file, stopped by its pid's process group."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None, name: str = "proc") -> None:
        self.argv = list(argv)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"ms-{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        # In its own session it would outlive a pytest killed from outside: the
        # safety net stops it on exit and on SIGTERM/SIGHUP.
        self._owner_pid = os.getpid()
        track(self)
        return self

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def fail(self, what: str) -> ProcessError:
        return ProcessError(f"{self.name}: {what}\n--- log tail ---\n{self.tail()}")

    def check_alive(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise self.fail(f"exited with code {code}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        untrack(self)
        if proc is None:
            return
        if proc.poll() is None:
            # SIGTERM to the process alone: a gunicorn master stops its workers
            # and its hooks' sidecar itself. The group is swept after.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        # Workers the server forked into its group, should any outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.log.unlink()

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Hub(Process):
    """``memsession hub`` on ipc sockets in a private runtime dir."""

    def __init__(self) -> None:
        self.runtime_dir = tempfile.mkdtemp(prefix="ms-rt-")
        super().__init__(
            [sys.executable, "-m", "memsession", "hub", "--runtime-dir", self.runtime_dir, "--log-level", "WARNING"],
            name="hub",
        )

    def start(self, timeout: float = 15.0) -> Hub:
        super().start()
        from memsession.hub import HubConfig, query_stats

        requests = HubConfig(runtime_dir=self.runtime_dir).endpoints()[2]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if os.path.exists(requests[len("ipc://"):]):
                with contextlib.suppress(Exception):
                    if query_stats(requests, timeout=1.0) is not None:
                        return self
            time.sleep(_POLL)
        self.stop()
        raise self.fail(f"did not answer within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


class WebServer(Process):
    """A WSGI/ASGI server on a free 127.0.0.1 port, ready once ``probe`` answers."""

    def __init__(self, kind: str, target: str, *, workers: int = 1, threads: int = 1,
                 env: dict[str, str] | None = None, probe: str = "/me", config: str | None = None) -> None:
        self.port = free_port()
        self.probe = probe
        bind = f"127.0.0.1:{self.port}"
        if kind == "gunicorn":
            argv = [sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers),
                    "--threads", str(threads), "--graceful-timeout", "3", "--log-level", "warning",
                    *(["--config", config] if config else []), target]
        elif kind == "uvicorn":
            argv = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", str(workers), "--log-level", "warning", "--no-access-log", target]
        else:
            raise ValueError(kind)
        super().__init__(argv, env=env, name=f"{kind}-{target}")
        self.url = f"http://{bind}"
        self.workers = workers

    def start(self, timeout: float = 30.0) -> WebServer:
        super().start()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.TransportError):
                    if client.get(self.probe).status_code < 500:
                        return self
                time.sleep(_POLL)
        self.stop()
        raise self.fail(f"did not answer within {timeout:.0f} s")
