"""Shared by the web examples: run a multi-worker server, then serve or demo.

Every example's ``run.py`` calls ``main()``: it starts the server (under
gunicorn the hooks in its ``gunicorn.conf.py`` start the sidecar; for uvicorn
``main`` first starts ``memsession hub`` on private ipc sockets named by
``MEMSESSION_RUNTIME_DIR``; each worker joins when it imports the app), and either
serves until Ctrl-C or, with ``--demo``, runs a short client that shows one
session shared by every worker, and stops. Everything listens on 127.0.0.1
and is stopped by the pid it was started with.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # SIGTERM to the server alone: gunicorn's master stops its workers and the
    # sidecar itself (which flushes the store). The group is only swept after.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait(what: str, ready, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start within {timeout:.0f} s")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _hub_answers(runtime_dir: str) -> bool:
    from memsession import MemsessionError
    from memsession.hub import HubConfig, query_stats

    requests = HubConfig(runtime_dir=runtime_dir).endpoints()[2]
    if not os.path.exists(requests[len("ipc://"):]):
        return False
    try:
        return query_stats(requests, timeout=1.0) is not None
    except (MemsessionError, OSError):  # not up yet: the caller polls again until its deadline
        return False


def demo(base: str, workers: int) -> None:
    """Log in once, then read from many connections at once: every worker sees the login."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(urllib.request.Request(base + "/login?user=ada", method="POST")) as r:
        print("login served by worker", r.read().decode())
    header = "; ".join(f"{c.name}={c.value}" for c in jar)

    def read(_: int, cookie: str = header) -> str:
        req = urllib.request.Request(base + "/whoami", headers={"Cookie": cookie})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()

    by_worker: dict[str, int] = {}
    with ThreadPoolExecutor(8) as pool:
        # Workers that are still booting accept nothing yet: keep reading (a
        # bounded number of times) until the requests have reached several.
        for _ in range(50):
            for answer in pool.map(read, range(40)):
                by_worker[answer] = by_worker.get(answer, 0) + 1
            if len(by_worker) >= workers:
                break
    for answer, count in sorted(by_worker.items()):
        print(f"{count:3d} requests answered: {answer}")
    print(f"{sum(by_worker.values())} requests in all, on {len(by_worker)} workers")
    with opener.open(urllib.request.Request(base + "/logout", method="POST")) as r:
        print("logout served by worker", r.read().decode())
    print("after logout the browser's next request:", read(0, "; ".join(f"{c.name}={c.value}" for c in jar)))


def main(
    server_argv: Sequence[str],
    *,
    workers: int,
    hub: bool = True,
    probe: str = "/whoami",
    argv: Sequence[str] | None = None,
) -> int:
    """Run ``server_argv`` (``{port}`` filled in), next to a hub unless the server brings its own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", action="store_true", help="run the demo client, then stop")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    port = args.port or _free_port()
    runtime_dir = tempfile.mkdtemp(prefix="memsession-example-")
    env = {
        **os.environ,
        "MEMSESSION_RUNTIME_DIR": runtime_dir,
        "MEMSESSION_STORE": os.path.join(runtime_dir, "sessions.json"),
        "BIND": f"127.0.0.1:{port}",
        "PYTHONPATH": str(ROOT),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if hub:
            hub_proc = subprocess.Popen(
                [sys.executable, "-m", "memsession", "hub", "--runtime-dir", runtime_dir,
                 "--log-level", "WARNING"],
                env=env, start_new_session=True,
            )
            procs.append(hub_proc)
            _wait("hub", lambda: _hub_answers(runtime_dir), hub_proc)
        server = subprocess.Popen(
            [part.format(port=port) for part in server_argv], env=env, start_new_session=True,
            cwd=Path(sys.argv[0]).resolve().parent,
        )
        procs.append(server)
        base = f"http://127.0.0.1:{port}"
        _wait("server", lambda: _answers(base + probe), server)
        if args.demo:
            demo(base, workers)
            return 0
        print(f"serving on {base} (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
        return 0
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(runtime_dir, ignore_errors=True)
