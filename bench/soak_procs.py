"""The soak benchmark's view of a gunicorn master: its sidecar and workers, their RSS, and the sidecar killer.

Pids come from ``/proc/<master>/task/*/children`` (the master's direct
children) and are told apart by command line: the embedded sidecar runs
``-m memsession sidecar``, workers carry gunicorn's own command line. The
killer SIGKILLs only the sidecar, by the pid it just found, after checking
that pid is still the master's sidecar child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from memsession.errors import BusError
from memsession.hub import HubConfig, wait_ready
from tests.sidecars import Gunicorn, cmdline

__all__ = ["Kill", "RssSampler", "SidecarKiller", "find_sidecar", "hub_requests", "slope_per_minute", "worker_pids"]

log = logging.getLogger("memsession.bench.soak")

SIDECAR_MARK = "-m memsession sidecar"


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def find_sidecar(server: Gunicorn) -> int | None:
    """The pid of the master's embedded sidecar, or None while there is none (between a kill and its restart)."""
    found = [pid for pid in server.children() if SIDECAR_MARK in cmdline(pid)]
    return found[0] if found else None


def worker_pids(server: Gunicorn) -> list[int]:
    return [pid for pid in server.children() if SIDECAR_MARK not in cmdline(pid) and "gunicorn" in cmdline(pid)]


def hub_requests(sidecar_pid: int) -> str | None:
    """The request endpoint of the sidecar, from the ``--runtime-dir`` on its command line."""
    args = cmdline(sidecar_pid).split()
    if "--runtime-dir" not in args:
        return None
    return HubConfig(runtime_dir=args[args.index("--runtime-dir") + 1]).endpoints()[2]


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(seconds, KiB)`` points in KiB/min; None with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 60.0


@dataclass
class RssSeries:
    """RSS samples of one role: per pid (one process lifetime each), and the sum over live pids.

    The sum is kept only for samples where all ``expected`` processes were
    alive: a sample taken while a worker is being replaced would otherwise
    drop by a whole worker and swamp any slope.
    """

    expected: int
    lifetimes: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    total: list[tuple[float, float]] = field(default_factory=list)

    def add(self, t: float, by_pid: dict[int, int]) -> None:
        for pid, kib in by_pid.items():
            self.lifetimes[pid].append((t, float(kib)))
        if len(by_pid) == self.expected:
            self.total.append((t, float(sum(by_pid.values()))))

    def lifetime_slopes(self) -> list[float]:
        return [s for s in (slope_per_minute(points) for points in self.lifetimes.values()) if s is not None]

    def last_of_each_lifetime(self) -> list[tuple[float, float]]:
        """The last sample of every lifetime, in time order: does each new process end up bigger?"""
        return sorted(points[-1] for points in self.lifetimes.values() if points)


class RssSampler(threading.Thread):
    """Samples VmRSS of the master, its sidecar and its workers every ``interval`` seconds."""

    def __init__(self, server: Gunicorn, interval: float, began: float, workers: int) -> None:
        super().__init__(name="soak-rss", daemon=True)
        self.server = server
        self.interval = interval
        self.master = RssSeries(expected=1)
        self.sidecar = RssSeries(expected=1)
        self.workers = RssSeries(expected=workers)
        self._done = threading.Event()
        self._began = began

    def sample(self) -> None:
        t = time.monotonic() - self._began
        master = rss_kib(self.server.pid)
        if master is not None:
            self.master.add(t, {self.server.pid: master})
        sidecar: dict[int, int] = {}
        workers: dict[int, int] = {}
        for pid in self.server.children():
            kib = rss_kib(pid)
            if kib is not None:
                (sidecar if SIDECAR_MARK in cmdline(pid) else workers)[pid] = kib
        self.sidecar.add(t, sidecar)
        self.workers.add(t, workers)

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join(self.interval + 5)


@dataclass
class Kill:
    at: float  # seconds since the run began
    pid: int
    back_after: float | None  # seconds until a new sidecar answered; None: not within the deadline


class SidecarKiller(threading.Thread):
    """SIGKILLs the master's sidecar every ``interval`` seconds and times how long until a new one answers."""

    def __init__(self, server: Gunicorn, interval: float, began: float, back_timeout: float = 30.0) -> None:
        super().__init__(name="soak-killer", daemon=True)
        self.server = server
        self.interval = interval
        self.back_timeout = back_timeout
        self.kills: list[Kill] = []
        self._done = threading.Event()
        self._began = began

    def run(self) -> None:
        while not self._done.wait(self.interval):
            pid = find_sidecar(self.server)
            if pid is None:
                log.warning("no sidecar to kill (the previous one is not back yet)")
                continue
            if not self._kill(pid):
                continue
            at = time.monotonic() - self._began
            self.kills.append(Kill(at, pid, wait_sidecar(self.server, self.back_timeout, not_pid=pid)))

    def _kill(self, pid: int) -> bool:
        # The pid is ours to kill only while it is still the master's sidecar child.
        if _ppid(pid) != self.server.pid or SIDECAR_MARK not in cmdline(pid):
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        self._done.set()
        self.join(self.back_timeout + 5)


def wait_sidecar(server: Gunicorn, timeout: float, not_pid: int | None = None) -> float | None:
    """Seconds until a sidecar (other than ``not_pid``) answers its hub requests; None past ``timeout``."""
    began = time.monotonic()
    deadline = began + timeout
    while time.monotonic() < deadline:
        pid = find_sidecar(server)
        requests = hub_requests(pid) if pid is not None and pid != not_pid else None
        if requests is not None:
            with contextlib.suppress(BusError):
                wait_ready(requests, max(0.05, min(1.0, deadline - time.monotonic())))
                return time.monotonic() - began
        time.sleep(0.05)
    return None
