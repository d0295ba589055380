"""A throwaway Redis for the benchmarks that compare with it: the test suite's server, or redis-server on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

__all__ = ["start_redis", "stop_redis"]


def start_redis() -> tuple[Any, str]:
    """``(server, url)``: a Redis listening on 127.0.0.1 only, started for this run."""
    try:
        from tests.servers import RedisServer
    except ImportError:
        RedisServer = None
    if RedisServer is not None:
        server = RedisServer().start()
        return server, server.url
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found (apt-get install -y redis-server)")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", ""],
                            stdout=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"



def stop_redis(server: Any) -> None:
    """Stop what ``start_redis`` started."""
    if hasattr(server, "stop"):
        server.stop()
    else:
        server.terminate()
        server.wait(10)
