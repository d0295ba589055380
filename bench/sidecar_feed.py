"""Bus frames straight into a sidecar: its ingest path from frame to PostgreSQL batch, with no publisher in front.

A feeder process sends ``count`` changes of sessions never written before
(the shape ``bench.sidecar.records`` makes, the rows ``PostgresStore.save`` is
timed with) as BATCH frames of 256 changes, what a publisher under load
sends, through a raw ZeroMQ PUB socket to the sidecar's hub, as fast as
ZeroMQ takes them. A SUB socket that never reads keeps the hub's proxy
forwarding (it forwards what its subscribers subscribe to; every worker
subscribes to everything). Measured, from the first frame sent: changes/s
until the hub received the last one, rows/s until the last row is written
(the write-behind queue empty and nothing in flight).

Two publishers calling ``set()`` flat out offer fewer changes a second than
the store can write, so the rate they get persisted measures them; the
feeder offers more than the sidecar takes, so this one measures the sidecar.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

__all__ = ["fed_rates", "feed"]

SPAWN = multiprocessing.get_context("spawn")
#: Changes per BATCH frame, as a publisher's sender cuts them.
PER_FRAME = 256


def _feeder(conn: Any, runtime_dir: str, count: int, origin: int) -> None:
    import zmq

    from memsession import wire
    from memsession.hub import HubConfig
    from memsession.hub.runtime_dir import socket_address
    from memsession.session import Record, new_id, session_key

    now = time.time()
    epoch = int(now * 1000)
    frames = []
    seq = 1
    for start in range(0, count, PER_FRAME):
        items = []
        for i in range(start, min(count, start + PER_FRAME)):
            record = Record(session_key(new_id()), {"n": i, "user": f"u{i % 997}", "csrf": "x" * 32},
                            (int(now * 1000) << 16) + i, origin, now, now, now + 3600)
            items.append((wire.SET, wire.set_fields(record)))
        frames.append(wire.encode_batch(items, origin, epoch, seq, int(now * 1_000_000)))
        seq += len(items)
    publish, subscribe, _ = HubConfig(runtime_dir=runtime_dir).endpoints()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.sndhwm = 0  # queue everything: a PUB at its high-water mark drops
    pub.connect(socket_address(publish))
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 1
    sub.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL)
    sub.connect(socket_address(subscribe))
    try:
        conn.send("ready")
        while not conn.poll(0.01):  # heartbeats until the hub has heard this stream
            pub.send_multipart(wire.encode_heartbeat(origin, epoch, 0, int(time.time() * 1_000_000)))
        conn.recv()
        start_s = time.perf_counter()
        for frames_of_batch in frames:
            pub.send_multipart(frames_of_batch)
        pub.send_multipart(wire.encode_heartbeat(origin, epoch, seq - 1, int(time.time() * 1_000_000)))
        conn.send(time.perf_counter() - start_s)
        conn.recv()
    finally:
        pub.close(linger=10_000)
        sub.close(linger=0)
        ctx.term()


def feed(sidecar: Any, count: int, origin: int, wait: Any) -> dict[str, float]:
    """Feed ``count`` fresh changes to the running ``SidecarProcess``; rates and what went missing."""
    parent, child = SPAWN.Pipe()
    proc = SPAWN.Process(target=_feeder, args=(child, sidecar.runtime_dir, count, origin), daemon=True)
    proc.start()
    try:
        if not parent.poll(120):
            raise RuntimeError("feeder did not start")
        parent.recv()
        streams = sidecar.stats(timeout=30)["streams"]

        def heard() -> bool:
            if not proc.is_alive():
                raise RuntimeError(f"the feeder exited ({proc.exitcode}) before the hub heard it")
            return sidecar.stats(timeout=30)["streams"] > streams

        wait(heard, 120, "the hub to hear the feeder")
        before = sidecar.stats(timeout=30)
        t0 = time.monotonic()
        parent.send("go")
        sent_s = parent.recv()
        wait(lambda: sidecar.stats(timeout=30)["received"] - before["received"] >= count, 300,
             "the sidecar to receive every change")
        received_s = time.monotonic() - t0

        def written() -> bool:
            persist = sidecar.stats(timeout=30)["persist"]
            return persist["depth"] == 0 and persist["inflight"] == 0

        wait(written, 300, "the queue to drain")
        persisted_s = time.monotonic() - t0
        after = sidecar.stats(timeout=30)
        parent.send("stop")
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    saved = after["persist"]["saved"] - before["persist"]["saved"]
    return {"offered": count / sent_s, "received": count / received_s, "persisted": saved / persisted_s,
            "saved": float(saved), "gaps": float(after["gaps"] - before["gaps"])}


def fed_rates(pg_url: str, count: int, wait: Any) -> list[dict[str, float]]:
    """Two runs of ``feed`` into one sidecar persisting to ``pg_url``."""
    from tests.sidecars import SidecarProcess

    with SidecarProcess(pg_url, "--log-level", "WARNING", "--prune-interval", "0") as sidecar:
        return [feed(sidecar, count, origin, wait) for origin in (1001, 1002)]
