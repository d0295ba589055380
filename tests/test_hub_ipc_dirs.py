"""What a hub or sidecar process leaves behind (memsession.hub.ipc_dirs, memsession.lockfile).

Real ``python -m memsession hub|sidecar`` processes in temp dirs, stopped by
the pid they were started with: a clean stop (SIGTERM, SIGINT) removes the
socket files, ``hub.lock`` and the JSON store's lock file, and logs one line;
a SIGKILL leaves them, and the next start copes; a second hub is refused
without touching the first one's files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from memsession.hub import HubConfig, query_stats
from tests.servers import untrack
from tests.sidecars import SidecarProcess, wait_until
from tests.webservers import Process

pytestmark = [pytest.mark.zmq, pytest.mark.timeout(120)]

HUB_FILES = {"hub.lock", "pub.sock", "sub.sock", "req.sock"}


class HubProcess(Process):
    """``python -m memsession hub`` in ``runtime_dir``, logging at INFO."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.requests = HubConfig(runtime_dir=str(runtime_dir)).endpoints()[2]
        super().__init__([sys.executable, "-m", "memsession", "hub", "--runtime-dir", str(runtime_dir),
                          "--log-level", "INFO"], name="hub")

    def start(self) -> HubProcess:
        super().start()

        def answers() -> bool:
            self.check_alive()
            try:
                return query_stats(self.requests, timeout=0.3) is not None
            except Exception:
                return False

        wait_until(answers, 30, "the hub to answer")
        return self

    def signal(self, sig: int) -> int:
        """Send ``sig`` and wait for the exit; the exit code (the log stays until ``stop``)."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        untrack(self)
        os.kill(proc.pid, sig)
        return proc.wait(30)

    def logged(self, pattern: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if re.search(pattern, line)]


def files(path: Path) -> set[str]:
    return set(os.listdir(path))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_hub_stopped_by_a_signal_removes_its_files_and_says_it_stopped(tmp_path: Path, sig: int) -> None:
    runtime_dir = tmp_path / "rt"
    hub = HubProcess(runtime_dir).start()
    try:
        assert files(runtime_dir) == HUB_FILES
        assert hub.signal(sig) == 0
        assert files(runtime_dir) == set()
        stopped = hub.logged(r"memsession\.hub INFO hub [0-9a-f]+ stopped")
        assert len(stopped) == 1, hub.tail()
        assert re.search(r"stopped, up \d+s; sessions=0 tombstones=0 received=\d+ applied=0$", stopped[0])
    finally:
        hub.stop()


def test_a_killed_hub_leaves_its_files_and_the_next_one_takes_them_over(tmp_path: Path) -> None:
    runtime_dir = tmp_path / "rt"
    first = HubProcess(runtime_dir).start()
    try:
        assert first.signal(signal.SIGKILL) == -signal.SIGKILL
        assert files(runtime_dir) == HUB_FILES  # nobody to clean up after a SIGKILL
        assert not first.logged("stopped")
    finally:
        first.stop()
    second = HubProcess(runtime_dir).start()  # stale sockets and lock file: taken over
    try:
        assert query_stats(second.requests, timeout=2)["sessions"] == 0
        assert second.signal(signal.SIGTERM) == 0
        assert files(runtime_dir) == set()
    finally:
        second.stop()


def test_a_second_hub_is_refused_and_leaves_the_first_ones_files_alone(tmp_path: Path) -> None:
    runtime_dir = tmp_path / "rt"
    first = HubProcess(runtime_dir).start()
    try:
        before = {name: os.stat(runtime_dir / name).st_ino for name in HUB_FILES}
        second = subprocess.run([sys.executable, "-m", "memsession", "hub", "--runtime-dir", str(runtime_dir)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert "another hub is running" in second.stderr
        assert {name: os.stat(runtime_dir / name).st_ino for name in HUB_FILES} == before
        assert query_stats(first.requests, timeout=2) is not None
    finally:
        first.stop()


def test_a_sidecar_stopped_by_sigterm_removes_its_sockets_and_the_store_lock(tmp_path: Path) -> None:
    runtime_dir, data = tmp_path / "rt", tmp_path / "data"
    data.mkdir()
    sidecar = SidecarProcess(f"file://{data}/sessions.json", runtime_dir=str(runtime_dir)).start()
    try:
        assert files(runtime_dir) == HUB_FILES | {"ack.sock"}
        assert files(data) == {".sessions.json.lock"}
        assert sidecar.terminate() == 0
        assert files(runtime_dir) == set()
        assert files(data) == set()  # no session was written, so no snapshot either
        stopped = [line for line in sidecar.log.read_text().splitlines() if " stopped" in line]
        assert len(stopped) == 1 and "memsession.sidecar INFO sidecar stopped, up" in stopped[0], sidecar.tail()
    finally:
        sidecar.stop()


def test_a_second_sidecar_is_refused_before_it_binds_the_first_ones_ack_socket(tmp_path: Path) -> None:
    runtime_dir = tmp_path / "rt"
    first = SidecarProcess(f"file://{tmp_path}/a.json", runtime_dir=str(runtime_dir)).start()
    try:
        ack = os.stat(runtime_dir / "ack.sock").st_ino
        second = subprocess.run(
            [sys.executable, "-m", "memsession", "sidecar", "--store", f"file://{tmp_path}/b.json",
             "--runtime-dir", str(runtime_dir)], capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 2 and "another hub is running" in second.stderr
        assert os.stat(runtime_dir / "ack.sock").st_ino == ack  # not bound again over the first one's
        assert files(runtime_dir) == HUB_FILES | {"ack.sock"}
        assert not (tmp_path / ".b.json.lock").exists()
    finally:
        first.stop()
