"""Origin churn against a real hub process: state and snapshots follow the live processes only.

Every worker start is a new publisher origin. A child process plays
100,000 worker lifetimes: each publishes one change from its own origin over
a real PUB socket and is never heard again. Once ``--forget-after`` has
passed, the hub tracks the same number of streams and serves a snapshot of
the same size as after 10 lifetimes, so a new worker joins as cheaply; what
the lifetimes wrote stays merged.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from typing import Any

import pytest

from memsession import wire
from memsession.changes import MAX_SEEN
from memsession.session import new_id, session_key
from tests.test_replication_zmq import FAST, SPAWN, HubProcess, Worker, _poll, wait_converged

pytestmark = pytest.mark.zmq

FORGET_AFTER = 2.0
SESSIONS = 10


def _lifetimes(runtime_dir: str, sids: list[str], count: int) -> None:
    """Publish one change from each of ``count`` fresh origins, as that many short-lived workers would.

    Each change is keyed, as a worker's would be, by ``session_key`` of one of ``sids``.
    """
    import zmq

    from memsession.bus.streams import new_epoch
    from memsession.clock import HybridClock
    from memsession.session import Record

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    pub.sndhwm = 0  # every lifetime's change must leave; the hub's queues are the ones under test
    pub.connect(f"ipc://{runtime_dir}/pub.sock")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"ipc://{runtime_dir}/sub.sock")
    probe, nonce = random.getrandbits(63) or 1, random.getrandbits(62)
    hello = wire.encode_hello(probe, new_epoch(), nonce, 0)
    deadline = time.monotonic() + 20
    while True:  # our own hello coming back proves the path through the proxy is live
        assert time.monotonic() < deadline, "the hub never relayed our hello"
        pub.send_multipart(hello)
        if sub.poll(100) and sub.recv_multipart() == hello:
            break
    sub.close(linger=0)
    hlc = HybridClock()
    for i in range(count):
        wall = time.time()
        record = Record(session_key(sids[i % len(sids)]), {"lifetime": i}, hlc.now(), random.getrandbits(63) or 1,
                        wall, wall, wall + 3600.0)
        pub.send_multipart(wire.encode_set(record, record.origin, new_epoch(), 1, int(wall * 1e6)))
    pub.close()  # linger: everything queued is delivered before the context ends
    ctx.term()


def snapshot_reply(requests: str) -> tuple[int, dict[int, tuple[int, int]]]:
    """The hub's snapshot reply as a joining worker receives it: ``(bytes, its sequence vector)``."""
    import zmq

    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    try:
        dealer.linger = 0
        dealer.connect(requests)
        dealer.send_multipart(wire.encode_request(wire.SNAPSHOT, 1))
        size = 0
        while True:
            assert dealer.poll(10_000), "no snapshot reply"
            frames = dealer.recv_multipart()
            size += sum(len(f) for f in frames)
            reply = wire.decode_reply(frames)
            if reply.op == wire.END:
                return size, reply.body[1]
    finally:
        dealer.close(linger=0)
        ctx.term()


def churn(lifetimes: int) -> dict[str, Any]:
    """Run ``lifetimes`` publisher lifetimes past a hub with one live worker; what a joiner then costs."""
    with tempfile.TemporaryDirectory(prefix="ms-churn-") as tmp:
        runtime_dir = os.path.join(tmp, "rt")
        requests = f"ipc://{runtime_dir}/req.sock"
        hub = HubProcess(["--runtime-dir", runtime_dir, "--forget-after", str(FORGET_AFTER)], requests)
        options = {"runtime_dir": runtime_dir, **FAST, "forget_after": FORGET_AFTER}
        sids = [new_id() for _ in range(SESSIONS)]
        workers: list[Worker] = []
        hub.start()
        try:
            workers.append(Worker(options, sids, 1))
            _poll(lambda: hub.stats()["streams"] == 1, 10, "the live worker's stream at the hub")
            child = SPAWN.Process(target=_lifetimes, args=(runtime_dir, sids, lifetimes))
            child.start()
            child.join(120)
            assert child.exitcode == 0, f"the lifetimes' publisher exited with {child.exitcode}"
            stats = _poll(lambda: (s := hub.stats())["received"] >= lifetimes and s, 60,
                          "the hub to receive every lifetime's change")
            assert stats["gaps"] == 0 and stats["dropped"] == {}
            # Every lifetime's stream was tracked, then forgotten; only the live worker's remains.
            stats = _poll(lambda: (s := hub.stats())["streams"] == 1 and s, 60,
                          "the hub to forget the silent publishers")
            snapshot_bytes, vector = snapshot_reply(requests)
            workers.append(Worker(options, sids, 2))
            state = wait_converged(workers, hub)
            joined = workers[1].call(("stats", None))["replication"]
            live = _poll(lambda: (s := workers[0].call(("stats", None))["replication"])["streams"] <= 3 and s,
                         30, "the live worker to forget the silent publishers")
            return {"state": state, "sids": sids, "hub_streams": stats["streams"], "forgotten": stats["forgotten"],
                    "snapshot_bytes": snapshot_bytes, "vector": len(vector), "joined": joined, "live": live}
        finally:
            for worker in workers:
                worker.stop()
            hub.stop()


def test_100000_worker_lifetimes_leave_the_hub_as_small_as_10() -> None:
    few, many = churn(10), churn(100_000)
    for run, lifetimes in ((few, 10), (many, 100_000)):
        # What the lifetimes wrote stays merged: every session holds its last lifetime's write.
        keys = [session_key(sid) for sid in run["sids"]]  # what the hub and the workers hold
        assert sorted(run["state"]) == sorted(keys)
        last = {key: max(i for i in range(lifetimes) if i % SESSIONS == n) for n, key in enumerate(keys)}
        assert {key: value[3] for key, value in run["state"].items()} == {
            key: {"lifetime": i} for key, i in last.items()
        }
        assert run["forgotten"] >= lifetimes
        assert run["joined"]["repairs"] >= 1 and run["joined"]["snapshot_records"] >= SESSIONS
    # Hub memory and the snapshot a joiner receives follow the live processes, not the history.
    assert many["hub_streams"] == few["hub_streams"] == 1
    assert many["vector"] == few["vector"] == 2  # the live worker and the hub itself
    # Only the larger counters, and per session the writers ``seen`` remembers: at most MAX_SEEN of
    # them however many wrote, each an [origin, version] of at most 19 bytes.
    assert many["snapshot_bytes"] <= few["snapshot_bytes"] + (10 + MAX_SEEN * 19) * SESSIONS
    assert many["joined"]["streams"] <= few["joined"]["streams"] + 1
    print(f"\n10 lifetimes: {few['hub_streams']} streams, snapshot {few['snapshot_bytes']} bytes; "
          f"100,000 lifetimes: {many['hub_streams']} streams, snapshot {many['snapshot_bytes']} bytes")
