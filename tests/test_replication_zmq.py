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
from memsession.session import new_id, session_key
from tests.pipe_workers import PipeWorker

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
            elif cmd == "clear":
                cache.clear()
                conn.send(("clear", cache.cleared))
            elif cmd == "cleared":
                conn.send(("cleared", cache.cleared))
            elif cmd == "wait_for":
                sid, version = arg
                record = cache.wait_for(sid, version, timeout=0.05)
                conn.send(("wait_for", None if record is None else record.data))
            elif cmd == "state":
                conn.send(("state", _state(cache.records())))
            elif cmd == "stats":
                conn.send(("stats", cache.stats()))
            elif cmd == "stop":
                break
    finally:
        cache.close()
        conn.send(("bye", None))


class Worker(PipeWorker):
    """A worker process with its own SessionCache on the bus, driven over a pipe."""

    def __init__(self, bus_options: dict[str, Any], sids: list[str], seed: int) -> None:
        super().__init__(_worker, bus_options, sids, seed)
        self.origin = self.hello


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
        return query_stats(self.requests, keys=self.keys, timeout=10.0)

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
        def __init__(self) -> None:
            self.sids = [new_id() for _ in range(60)]
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
            detail = {k: [s.get(k, (None,))[:3] for s in states] for k in diff[:3]}
            for w in workers:  # shown with the failure: what each replica saw
                print(f"worker {w.origin:x}:", w.call(("stats", None)), file=sys.stderr)
            if hub is not None:
                print("hub:", hub.stats(), file=sys.stderr)
            raise AssertionError(f"replicas still differ on {len(diff)} keys after {timeout}s: {detail}")
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


def test_a_clear_among_concurrent_writes_converges_everywhere(cluster):
    workers = cluster.spawn(4, fault_drop_rate=0.05)
    run_ops(workers, 150)
    for w in workers[1:]:
        w.conn.send(("ops", 150))  # the others keep writing while one clears
    watermark = workers[0].call(("clear", None))
    for w in workers[1:]:
        w.call(None, timeout=60)
    run_ops(workers, 50)
    state = wait_converged(workers, cluster.hub)
    assert all(version > watermark for version, _, deleted, _ in state.values() if not deleted)
    deadline = time.monotonic() + 10
    while [w.call(("cleared", None)) for w in workers] != [watermark] * 4:
        assert time.monotonic() < deadline, "a worker never learned the clear"
        time.sleep(0.05)
    assert cluster.hub.stats()["cleared"] == watermark


def test_a_restarted_hub_learns_the_clear_from_the_workers(cluster):
    workers = cluster.spawn(2)
    run_ops(workers, 100)
    watermark = workers[1].call(("clear", None))
    wait_converged(workers, cluster.hub)
    cluster.hub.kill()
    cluster.hub.start()
    deadline = time.monotonic() + 15
    while cluster.hub.stats()["cleared"] != watermark:
        assert time.monotonic() < deadline, "the new hub never learned the clear"
        time.sleep(0.1)
    run_ops(workers, 50)
    state = wait_converged(workers, cluster.hub)
    assert all(version > watermark for version, _, deleted, _ in state.values() if not deleted)


def test_a_stopped_subscriber_overflows_its_queue_and_recovers(runtime_dir):
    hub = HubProcess(["--runtime-dir", runtime_dir, "--sndhwm", "20"], f"ipc://{runtime_dir}/req.sock").start()
    sids = [new_id() for _ in range(300)]
    opts = {"runtime_dir": runtime_dir, **FAST, "rcvhwm": 20}
    workers = [Worker(opts, sids, seed) for seed in range(3)]
    try:
        sleeper = workers[2]
        os.kill(sleeper.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(60):  # in rounds: changes queued together travel as one message
                run_ops(workers[:2], 25)
            # Then more bytes than the kernel's socket buffers hold on top of the high-water
            # marks (a few hundred KiB each side), so the overflow does not depend on how the
            # rounds above happened to batch.
            for i in range(1500):
                workers[i % 2].call(("set", (new_id(), {"pad": "y" * 4000, "i": i})))
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
    sids = [new_id() for _ in range(60)]
    workers = [Worker(opts, sids, seed) for seed in range(4)]
    try:
        run_ops(workers, 200)
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


def _poll(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_random_and_mutated_frames_never_crash_a_worker_or_change_its_data(cluster, runtime_dir):
    import zmq

    from memsession import wire
    from memsession.session import Record

    (worker,) = cluster.spawn(1)
    run_ops([worker], 100)
    before = worker.call(("state", None))
    rng = random.Random(7)
    foreign = [Record(new_id(), {"x": i, "l": [i, "s"]}, 10**17 + i, 5, 1.0, 1.0, 4e9) for i in range(20)]
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    try:
        pub.connect(f"ipc://{runtime_dir}/pub.sock")

        def garbage_dropped() -> bool:
            pub.send_multipart([b"ms5s", b"\xc1 not msgpack"])
            return bool(worker.call(("stats", None))["replication"]["dropped"].get("malformed"))

        def valid(i: int) -> list[bytes]:
            if i % 2:
                return wire.encode_record_message(rng.choice(foreign), 77, 1, i + 1, 0)
            items = [("s", wire.set_fields(r)) for r in rng.sample(foreign, 3)]
            return wire.encode_batch(items, 77, 1, i + 1, 0)

        _poll(garbage_dropped, 10, "the worker to see injected frames")
        for i in range(1500):
            kind = i % 5
            if kind == 0:
                frames = [rng.randbytes(rng.randrange(6)), rng.randbytes(rng.randrange(300))]
            elif kind == 1:
                frames = [b"ms5" + bytes([rng.choice(b"sdtihHyrcb")]), rng.randbytes(rng.randrange(300))]
            elif kind == 2:
                topic, payload = valid(i)
                frames = [topic, payload[: rng.randrange(len(payload))]]
            elif kind == 3:
                topic, payload = valid(i)
                mutated = bytearray(payload)
                for _ in range(rng.randrange(1, 4)):
                    mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                frames = [topic, bytes(mutated)]
            else:
                frames = [b"ms5s"] * rng.randrange(0, 5)
            if frames:
                pub.send_multipart(frames)
    finally:
        pub.close(linger=0)
        ctx.term()
    stats = _poll(lambda: (s := worker.call(("stats", None))["replication"])["dropped"]["malformed"] > 300 and s,
                  10, "the frames to be dropped")
    after = worker.call(("state", None))
    assert {k: after[k] for k in before} == before
    assert worker.proc.is_alive() and stats["dropped"]["malformed"] > 300
    assert cluster.hub.stats()["dropped"]["malformed"] > 300
    run_ops([worker], 10)  # still serving


def test_a_publisher_without_the_right_curve_key_never_reaches_the_cache(tmp_path):
    import zmq

    from memsession import wire
    from memsession.security import generate_keys
    from memsession.session import Record

    keys, rogue_keys = str(tmp_path / "keys"), str(tmp_path / "rogue")
    generate_keys(keys)
    generate_keys(rogue_keys)
    eps = [f"tcp://127.0.0.1:{p}" for p in _free_ports(3)]
    hub = HubProcess(["--publish", eps[0], "--subscribe", eps[1], "--requests", eps[2], "--keys", keys],
                     eps[2], keys=keys).start()
    opts = {"publish": eps[0], "subscribe": eps[1], "requests": eps[2], "keys": keys, **FAST}
    worker = Worker(opts, [new_id()], 1)
    forged_sid = new_id()  # a session the rogue publishers try to plant, keyed as a worker would key it
    forged = Record(session_key(forged_sid), {"admin": True}, 10**17, 5, 1.0, 1.0, 4e9)
    ctx = zmq.Context()
    from memsession.security import CurveClient

    rogues = []
    try:
        plain = ctx.socket(zmq.PUB)
        wrong = ctx.socket(zmq.PUB)
        CurveClient(rogue_keys).client(wrong)  # a real key pair, just not an allowed one
        rogues = [plain, wrong]
        for sock in rogues:
            sock.connect(eps[0])
        legit = new_id()
        worker.call(("set", (legit, {"ok": 1})))
        deadline = time.monotonic() + 1.5
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            for sock in rogues:
                sock.send_multipart(wire.encode_set(forged, 5, 1, seq, 0))
            time.sleep(0.01)
        assert worker.call(("get", forged_sid)) is None
        assert forged.key not in hub.snapshot() and session_key(legit) in hub.snapshot()
    finally:
        for sock in rogues:
            sock.close(linger=0)
        ctx.term()
        worker.stop()
        hub.stop()


def _fork_main(conn: Any, runtime_dir: str, sid_parent: str, sid_child: str) -> None:
    from memsession import SessionCache, ZmqBus

    cache = SessionCache(bus=ZmqBus(runtime_dir=runtime_dir, **FAST))
    cache.set(sid_parent, {"who": "parent"})
    parent_origin = cache.origin
    pid = os.fork()
    if pid == 0:  # child: same cache object, fresh bus
        ok = cache.origin != parent_origin
        cache.set(sid_child, {"who": "child"})
        deadline = time.monotonic() + 10
        while cache.bus.stats()["queued"] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # let the PUB flush its pipe before the process goes (linger is 0)
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 10
    while cache.get(sid_child) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    _, status = os.waitpid(pid, 0)
    conn.send((cache.get(sid_child), os.waitstatus_to_exitcode(status)))
    cache.close()


def test_a_process_forked_after_using_the_bus_gets_a_fresh_one(cluster, runtime_dir):
    conn, child = SPAWN.Pipe()
    proc = SPAWN.Process(target=_fork_main, args=(child, runtime_dir, new_id(), new_id()))
    proc.start()
    child.close()
    try:
        assert conn.poll(30), "forking process did not report"
        data, code = conn.recv()
        assert code == 0 and data == {"who": "child"}
    finally:
        proc.join(10)
        conn.close()


def test_invalidate_mode_between_processes_reads_the_newest_value_through_the_hub(cluster):
    a, b = cluster.spawn(2, mode="invalidate")
    sid = new_id()
    for n in range(1, 6):
        a.call(("set", (sid, {"n": n})))
        # Each INVALIDATE is published only after the hub acknowledged the value:
        # once b has dropped its copy, its next read must see n or later, never older.
        got = _poll(lambda n=n: (v := b.call(("get", sid))) is not None and v["n"] >= n and v, 5, f"value {n}")
        assert got["n"] == n
    stats = b.call(("stats", None))
    assert stats["misses"] >= 1 and stats["replication"]["mode"] == "invalidate"
    assert cluster.hub.stats()["writes"] == 5


def test_read_your_writes_in_another_process(cluster):
    a, b = cluster.spawn(2)
    sid = new_id()
    version = a.call(("set", (sid, {"cart": 3})))
    # b either already has it from the bus or reads it through the hub: never an older copy.
    assert b.call(("wait_for", (sid, version))) == {"cart": 3}
    # Nothing that recent exists anywhere: after asking for the outage budget (the write might
    # have been on its way), the newest copy left is served and the loss counted, never None.
    assert b.call(("wait_for", (sid, version + 1))) == {"cart": 3}
    assert b.call(("stats", None))["lost_writes"] == 1


def test_a_worker_closed_while_the_hub_is_away_hands_its_writes_to_the_next_hub(cluster):
    # A worker recycled (max_requests) during a sidecar restart holds the only copy of what it
    # wrote while the hub was away: its close waits for the new hub and pushes it there.
    (a,) = cluster.spawn(1)
    before = new_id()
    a.call(("set", (before, {"n": 1})))
    wait_converged([a], cluster.hub)
    cluster.hub.kill()
    during = new_id()
    a.call(("set", (during, {"written": "while the hub was away"})))
    a.conn.send(("stop", None))  # close() now: the hub is away
    time.sleep(0.5)  # (the restart takes about this long; close must still be waiting)
    cluster.hub.start()
    assert a.call(None, timeout=20) is None  # "bye": closed once the new hub took its sessions
    a.proc.join(10)
    (b,) = cluster.spawn(1)
    state = b.call(("state", None))
    held = state.get(session_key(during))  # the joiner got it in the new hub's snapshot
    assert held is not None and held[3] == {"written": "while the hub was away"}
    assert session_key(before) in state
