"""A worker process driven over a pipe: the shared half of the multi-process bus tests.

The child runs ``target(conn, *args)``: it answers the first ``call(None)``
with what it announces on start, every command ``(name, argument)`` with
``(name, result)``, and ``("stop", None)`` with a last reply before it exits.
Spawned, never forked, so each child builds its own sockets and threads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["PipeWorker"]

SPAWN = multiprocessing.get_context("spawn")


class PipeWorker:
    """One spawned child process; ``call`` sends it a command and waits for the answer."""

    def __init__(self, target: Callable[..., None], *args: Any, start_timeout: float = 30.0) -> None:
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        #: What the child announced once it was ready.
        self.hello = self.call(None, timeout=start_timeout)

    def call(self, cmd: tuple[str, Any] | None, timeout: float = 30.0) -> Any:
        if cmd is not None:
            self.conn.send(cmd)
        if not self.conn.poll(timeout):
            raise AssertionError(f"worker {self.proc.pid} did not answer {cmd!r} in {timeout}s")
        return self.conn.recv()[1]

    def stop(self) -> None:
        """Ask the child to stop (SIGKILL if it doesn't within 10 s), then release the pipe."""
        if self.proc.is_alive():
            # Gone or stuck: the join and SIGKILL below settle it.
            with contextlib.suppress(AssertionError, OSError, EOFError):
                self.call(("stop", None), timeout=10)
            self.proc.join(10)
            if self.proc.is_alive() and self.proc.pid is not None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.join(5)
        self.conn.close()
        self.proc.close()

    def kill(self) -> None:
        """SIGKILL the child at once (a crash, no goodbye)."""
        assert self.proc.pid is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(5)
        self.conn.close()
        self.proc.close()
