"""Replication between real processes over real ZeroMQ sockets.

A hub runs as ``python -m memsession hub``; workers are spawned processes,
each with its own SessionCache and ZmqBus, driven over a pipe. After random
writes, reads and destroys from every worker, the test waits (polling, with a
deadline) until every replica and the hub hold the same records.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

from memsession.hub import query_snapshot, query_stats
from memsession.session import new_id

pytestmark = pytest.mark.zmq

SPAWN = multiprocessing.get_context("spawn")
FAST = {"heartbeat": 0.2, "silence": 0.7, "request_timeout": 2.0}


# -- worker process -------------------------------------------------------------


def _state(records: Any) -> dict[str, tuple[Any, ...]]:
    return {r.key: (r.version, r.origin, r.deleted, r.data) for r in records}


def _worker(conn: Any, bus_options: dict[str, Any], sids: list[str], seed: int) -> None:
    from memsession import SessionCache, ZmqBus
    from memsession.errors import SessionDestroyed

    cache = SessionCache(bus=ZmqBus(**bus_options), touch_interval=3600)
    rng = random.Random(seed)
    conn.send(("ready", cache.origin))
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "ops":
                for _ in range(arg):
                    sid = rng.choice(sids)
                    roll = rng.random()
                    try:
                        if roll < 0.6:
                            cache.set(sid, {"by": cache.origin % 997, "n": rng.randrange(10**6),
                                            "pad": "x" * rng.randrange(200), "list": [1, {"a": roll}]})
                        elif roll < 0.92:
                            cache.get(sid)
                        else:
                            cache.destroy(sid)
                    except SessionDestroyed:
                        pass
                conn.send(("done", None))
            elif cmd == "set":
                sid, data = arg
                record = cache.set(sid, data)
                conn.send(("set", record.version))
            elif cmd == "get":
                conn.send(("get", cache.get(arg)))
            elif cmd == "state":
                conn.send(("state", _state(cache.records())))
            elif cmd == "stats":
                conn.send(("stats", cache.stats()))
            elif cmd == "stop":
                break
    finally:
        cache.close()
        conn.send(("bye", None))


class Worker:
    def __init__(self, bus_options: dict[str, Any], sids: list[str], seed: int) -> None:
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=_worker, args=(child, bus_options, sids, seed), daemon=True)
        self.proc.start()
        child.close()
        self.origin = self.call(None, timeout=30)

    def call(self, cmd: tuple[str, Any] | None, timeout: float = 30.0) -> Any:
        if cmd is not None:
            self.conn.send(cmd)
        if not self.conn.poll(timeout):
            raise AssertionError(f"worker {self.proc.pid} did not answer {cmd!r} in {timeout}s")
        return self.conn.recv()[1]

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.call(("stop", None), timeout=10)
            except (AssertionError, OSError, EOFError):
                pass
            self.proc.join(10)
            if self.proc.is_alive():
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.join(5)
        self.conn.close()
        self.proc.close()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(5)
        self.conn.close()
        self.proc.close()


# -- hub process ------------------------------------------------------------------


class HubProcess:
    def __init__(self, args: list[str], requests: str, keys: str | None = None) -> None:
        self.args = args
        self.requests = requests
        self.keys = keys
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HubProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memsession", "hub", "--heartbeat", "0.2", "--log-level", "WARNING",
             *self.args],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                query_stats(self.requests, keys=self.keys, timeout=0.5)
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
        return self

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        return _state(query_snapshot(self.requests, keys=self.keys))

    def stats(self) -> dict[str, Any]:
        return query_stats(self.requests, keys=self.keys)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def runtime_dir():
    with tempfile.TemporaryDirectory(prefix="ms-") as d:
        yield os.path.join(d, "rt")


@pytest.fixture
def cluster(runtime_dir):
    """Start a hub on ipc; yields a factory for workers; stops everything at the end."""
    hub = HubProcess(["--runtime-dir", runtime_dir], f"ipc://{runtime_dir}/req.sock")
    workers: list[Worker] = []

    class Cluster:
        sids = [new_id() for _ in range(60)]

        def __init__(self) -> None:
            self.hub = hub
            self.workers = workers
            self.options = {"runtime_dir": runtime_dir, **FAST}

        def spawn(self, n: int = 1, **options: Any) -> list[Worker]:
            made = [Worker({**self.options, **options}, self.sids, random.randrange(2**32)) for _ in range(n)]
            workers.extend(made)
            return made

    hub.start()
    try:
        yield Cluster()
    finally:
        for w in workers:
            w.stop()
        hub.stop()


def run_ops(workers: list[Worker], n: int) -> None:
    for w in workers:
        w.conn.send(("ops", n))
    for w in workers:
        w.call(None, timeout=60)


def wait_converged(workers: list[Worker], hub: HubProcess | None, timeout: float = 20.0) -> dict[str, Any]:
    """Poll until every worker (and the hub) holds identical records; return that state."""
    deadline = time.monotonic() + timeout
    while True:
        states = [w.call(("state", None)) for w in workers]
        if hub is not None:
            states.append(hub.snapshot())
        if all(s == states[0] for s in states[1:]):
            return states[0]
        if time.monotonic() > deadline:
            keys = set().union(*states)
            diff = [k for k in keys if len({repr(s.get(k)) for s in states}) > 1]
            raise AssertionError(f"replicas still differ on {len(diff)} keys after {timeout}s: {diff[:5]}")
        time.sleep(0.05)


# -- tests ------------------------------------------------------------------------------


def test_four_workers_converge_with_the_hub(cluster):
    workers = cluster.spawn(4)
    run_ops(workers, 300)
    state = wait_converged(workers, cluster.hub)
    assert len(state) > 10
    assert any(v[2] for v in state.values()) and any(not v[2] for v in state.values())
    stats = workers[0].call(("stats", None))["replication"]
    assert stats["received"] > 0 and stats["gaps"] == 0 and stats["dropped"] == {}


def test_a_write_is_visible_in_another_process(cluster):
    a, b = cluster.spawn(2)
    sid = new_id()
    a.call(("set", (sid, {"user": "ada"})))
    deadline = time.monotonic() + 5
    while b.call(("get", sid)) != {"user": "ada"}:
        assert time.monotonic() < deadline, "write never arrived"
        time.sleep(0.01)


def test_a_joining_worker_takes_a_snapshot_and_serves_the_same_data(cluster):
    first = cluster.spawn(2)
    run_ops(first, 200)
    wait_converged(first, cluster.hub)
    (late,) = cluster.spawn(1)
    # No further traffic: the late worker has only its join snapshot to go on.
    assert late.call(("state", None)) == first[0].call(("state", None))
    stats = late.call(("stats", None))["replication"]
    assert stats["repairs"] == 1 and stats["snapshot_records"] > 0


def test_injected_message_loss_is_detected_and_repaired(cluster):
    workers = cluster.spawn(3, fault_drop_rate=0.2)
    run_ops(workers, 300)
    wait_converged(workers, cluster.hub)
    gaps = sum(w.call(("stats", None))["replication"]["gaps"] for w in workers)
    assert gaps > 0
    assert cluster.hub.stats()["resyncs_sent"] > 0


def test_a_worker_killed_with_sigkill_is_replaced_and_everyone_converges(cluster):
    workers = cluster.spawn(4)
    run_ops(workers, 150)
    victim = workers.pop(1)
    cluster.workers.remove(victim)
    victim.kill()
    run_ops(workers, 100)
    workers += cluster.spawn(1)
    run_ops(workers, 100)
    wait_converged(workers, cluster.hub)


def test_hub_killed_and_restarted_workers_keep_serving_and_converge(cluster):
    workers = cluster.spawn(3)
    run_ops(workers, 150)
    wait_converged(workers, cluster.hub)
    cluster.hub.kill()
    run_ops(workers, 100)  # writes while the hub is down stay local for now
    cluster.hub.start()
    run_ops(workers, 20)
    state = wait_converged(workers, cluster.hub)
    assert state
    deadline = time.monotonic() + 5
    while True:  # every worker saw the new epoch (a hub beat) and repaired after it
        stats = [w.call(("stats", None))["replication"] for w in workers]
        if all(s["hub_restarts"] == 1 and s["repairs"] >= 2 for s in stats):
            break
        assert time.monotonic() < deadline, [(s["hub_restarts"], s["repairs"]) for s in stats]
        time.sleep(0.05)
    wait_converged(workers, cluster.hub)


@pytest.mark.slow
def test_a_stopped_subscriber_overflows_its_queue_and_recovers(runtime_dir):
    hub = HubProcess(["--runtime-dir", runtime_dir, "--sndhwm", "20"], f"ipc://{runtime_dir}/req.sock").start()
    sids = [new_id() for _ in range(300)]
    opts = {"runtime_dir": runtime_dir, **FAST, "rcvhwm": 20}
    workers = [Worker(opts, sids, seed) for seed in range(3)]
    try:
        sleeper = workers[2]
        os.kill(sleeper.proc.pid, signal.SIGSTOP)
        try:
            run_ops(workers[:2], 1500)
        finally:
            os.kill(sleeper.proc.pid, signal.SIGCONT)
        wait_converged(workers, hub)
        stats = sleeper.call(("stats", None))["replication"]
        assert stats["gaps"] > 0 and stats["repairs"] >= 2
    finally:
        for w in workers:
            w.stop()
        hub.stop()


def test_tcp_with_curve(tmp_path):
    from memsession.security import generate_keys

    keys = str(tmp_path / "keys")
    generate_keys(keys)
    ports = _free_ports(3)
    eps = [f"tcp://127.0.0.1:{p}" for p in ports]
    hub = HubProcess(["--publish", eps[0], "--subscribe", eps[1], "--requests", eps[2], "--keys", keys],
                     eps[2], keys=keys).start()
    opts = {"publish": eps[0], "subscribe": eps[1], "requests": eps[2], "keys": keys, **FAST}
    sids = [new_id() for _ in range(30)]
    workers = [Worker(opts, sids, seed) for seed in range(2)]
    try:
        run_ops(workers, 100)
        wait_converged(workers, hub)
    finally:
        for w in workers:
            w.stop()
        hub.stop()


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
