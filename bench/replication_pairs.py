"""One sender process and one receiver process through a running hub: the measurement of ``bench.replication``.

``run_pair(kind, target, n, rate)`` spawns both, warms the path up (slow
joiners), sends ``n`` messages of ~1 KB (paced at ``rate`` a second by
sleeping, as a server idles between requests, or flat out) and returns what
the receiver saw: one-way latencies (CLOCK_MONOTONIC is system-wide on Linux,
so send and receive times compare across processes), first and last receipt,
the CPU time each process spent (``time.process_time``: every thread of the
process) and, given its pid, the hub's (``/proc/PID/task/*/schedstat``), and
how often the threads of each went to sleep and were woken again (voluntary
context switches, ``/proc/PID/task/*/status``): the wake-ups a message costs.

Kinds: ``memsession`` (a ``SessionCache`` with a ``ZmqBus`` on each side; the
receive time is when the change is merged into the receiver's cache),
``zmq`` (raw pyzmq PUB/SUB through the same hub proxy) and ``redis``
(redis-py ``publish`` / ``pubsub``).
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import time
from pathlib import Path
from typing import Any

__all__ = ["PAYLOAD", "cpu_ns_of", "pct", "run_pair", "wakeups_of"]

SPAWN = multiprocessing.get_context("spawn")
PAYLOAD = 1000
_STAMP = struct.Struct("<qq")  # index, send time (ns)


def cpu_ns_of(pid: int) -> int:
    """CPU time (ns) the live threads of process ``pid`` have run, from the scheduler's own counters."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total


def wakeups_of(pid: int) -> int:
    """How many times the live threads of process ``pid`` have blocked and been woken again."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def pct(values: list[int], p: float) -> float:
    """The ``p``th percentile of ``values`` (ns) in microseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] / 1000.0


# -- receivers -----------------------------------------------------------------------


def _collect(conn: Any, n: int, poll: Any, extra: Any = dict) -> None:
    """Drive ``poll() -> [(index, sent_ns[, received_ns])]`` until n arrived or 3 s pass without progress."""
    lat: list[int] = []
    seen = 0
    warm_told = False
    first = last = 0
    cpu_start = woken_start = 0
    idle_deadline = time.monotonic() + 30
    conn.send("ready")
    while seen < n and time.monotonic() < idle_deadline:
        for index, sent, *at in poll():
            now = at[0] if at else time.monotonic_ns()
            if index < 0:
                if not warm_told:
                    conn.send("warm")
                    warm_told = True
                    cpu_start = time.process_time_ns()
                    woken_start = wakeups_of(os.getpid())
                continue
            if not first:
                first = now
            last = now
            seen += 1
            lat.append(now - sent)
            idle_deadline = time.monotonic() + 3
    cpu = time.process_time_ns() - cpu_start
    woken = wakeups_of(os.getpid()) - woken_start
    conn.send({"latency_ns": lat, "received": seen, "first": first, "last": last, "receiver_cpu_ns": cpu,
               "receiver_wakeups": woken, **extra()})


def _receiver(kind: str, conn: Any, target: str, n: int, run: int) -> None:
    if kind == "memsession":
        from memsession import SessionCache, ZmqBus

        arrived: list[tuple[int, int, int]] = []  # index, sent, applied (ns)

        class Probe(SessionCache):
            # The one funnel of apply() and apply_many(): the moment a change is merged here.
            def _apply_locked(self, record: Any, now: float, wall: float) -> bool:
                changed = super()._apply_locked(record, now, wall)
                if changed and record.data.get("run") == run:  # not what the join snapshot brought
                    arrived.append((record.data["i"], record.data["t"], time.monotonic_ns()))
                return changed

        cache = Probe(bus=ZmqBus(runtime_dir=target))

        def poll() -> list[tuple[int, int, int]]:
            # Arrivals are timed where they are merged; this thread only collects them, seldom,
            # so that it takes the receiver's GIL as little as possible.
            time.sleep(0.005)
            out = arrived[:]
            del arrived[: len(out)]
            return out

        def extra() -> dict[str, Any]:
            rep = cache.stats()["replication"]
            return {k: rep[k] for k in ("gaps", "repairs", "snapshot_records", "dropped")}

        try:
            _collect(conn, n, poll, extra)
        finally:
            cache.close()
    elif kind == "zmq":
        import zmq

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.rcvhwm = 100_000
        sub.setsockopt(zmq.SUBSCRIBE, b"raw")
        sub.connect(f"ipc://{target}/sub.sock")

        def poll() -> list[tuple[int, int]]:
            out = []
            if sub.poll(50):
                while True:
                    try:
                        _, body = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    out.append(_STAMP.unpack_from(body))
            return out

        try:
            _collect(conn, n, poll)
        finally:
            sub.close(linger=0)
            ctx.term()
    else:
        import redis

        client = redis.Redis.from_url(target)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("bench")

        def poll() -> list[tuple[int, int]]:
            out = []
            msg = pubsub.get_message(timeout=0.05)
            while msg is not None:
                out.append(_STAMP.unpack_from(msg["data"]))
                msg = pubsub.get_message(timeout=0)
            return out

        try:
            _collect(conn, n, poll)
        finally:
            pubsub.close()
            client.close()


# -- senders ------------------------------------------------------------------------------


def _sender(kind: str, conn: Any, target: str, n: int, rate: float | None, run: int) -> None:
    pad = b"x" * (PAYLOAD - _STAMP.size)
    cleanup: list[Any] = []
    if kind == "memsession":
        from memsession import SessionCache, ZmqBus
        from memsession.session import new_id

        cache = SessionCache(bus=ZmqBus(runtime_dir=target))
        cleanup.append(cache.close)
        sids = [new_id() for _ in range(1000)]
        text = "x" * (PAYLOAD - 40)

        def send(i: int) -> None:
            cache.set(sids[i % 1000], {"i": i, "t": time.monotonic_ns(), "run": run, "pad": text})

        def drain() -> None:
            deadline = time.monotonic() + 30
            while cache.bus.stats()["queued"] and time.monotonic() < deadline:
                time.sleep(0.001)
    elif kind == "zmq":
        import zmq

        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.sndhwm = 100_000
        pub.connect(f"ipc://{target}/pub.sock")
        cleanup += [lambda: pub.close(linger=1000), ctx.term]

        def send(i: int) -> None:
            pub.send_multipart([b"raw", _STAMP.pack(i, time.monotonic_ns()) + pad])

        def drain() -> None:
            pass
    else:
        import redis

        client = redis.Redis.from_url(target)
        cleanup.append(client.close)

        def send(i: int) -> None:
            client.publish("bench", _STAMP.pack(i, time.monotonic_ns()) + pad)

        def drain() -> None:
            pass

    try:
        conn.send("ready")
        while not conn.poll(0.01):
            send(-1)  # warm-up until the receiver has seen one (slow joiners)
        conn.recv()
        cpu_start = time.process_time_ns()
        woken_start = wakeups_of(os.getpid())
        start = time.perf_counter_ns()
        if rate is None:
            for i in range(n):
                send(i)
        else:
            gap = 1e9 / rate
            t0 = time.perf_counter_ns()
            for i in range(n):
                target_ns = t0 + i * gap
                delay = target_ns - time.perf_counter_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)  # idle like a server between requests; late sends go at once
                send(i)
        call_ns = (time.perf_counter_ns() - start) / n
        drain()
        conn.send({"call_ns": call_ns, "sender_cpu_ns": time.process_time_ns() - cpu_start,
                   "sender_wakeups": wakeups_of(os.getpid()) - woken_start})
    finally:
        for fn in reversed(cleanup):
            fn()


def run_pair(kind: str, target: str, n: int, rate: float | None, hub_pid: int | None = None) -> dict[str, Any]:
    """One run: what the receiver saw, the sender's call time, and CPU per process (``*_cpu_ns``)."""
    rconn, rchild = SPAWN.Pipe()
    sconn, schild = SPAWN.Pipe()
    run = int.from_bytes(os.urandom(6), "big")
    receiver = SPAWN.Process(target=_receiver, args=(kind, rchild, target, n, run))
    sender = SPAWN.Process(target=_sender, args=(kind, schild, target, n, rate, run))
    receiver.start()
    try:
        assert rconn.poll(60) and rconn.recv() == "ready"
        sender.start()
        assert sconn.poll(60) and sconn.recv() == "ready"
        assert rconn.poll(60) and rconn.recv() == "warm"
        hub_before = cpu_ns_of(hub_pid) if hub_pid is not None else 0
        hub_woken = wakeups_of(hub_pid) if hub_pid is not None else 0
        sconn.send("go")
        assert rconn.poll(300), f"{kind} receiver did not finish"
        result: dict[str, Any] = rconn.recv()
        if hub_pid is not None:
            result["hub_cpu_ns"] = cpu_ns_of(hub_pid) - hub_before
            result["hub_wakeups"] = wakeups_of(hub_pid) - hub_woken
        assert sconn.poll(60)
        result.update(sconn.recv())
        return result
    finally:
        for proc in (sender, receiver):
            if proc.pid is not None:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
