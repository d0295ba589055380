"""Replication benchmark: memsession's bus against raw pyzmq and Redis pub/sub, in one run.

``python -m bench.replication [--quick]``

Two processes (a sender and a receiver) and, for the ZeroMQ rows, one
``memsession hub`` process whose XSUB/XPUB proxy carries both memsession's
messages and the raw pyzmq baseline. Redis is a ``redis-server`` started on
127.0.0.1 for the run, driven with redis-py ``publish`` / ``pubsub``.

Every message carries a 1 KB payload and its send time (CLOCK_MONOTONIC is
system-wide on Linux, so send and receive times compare across processes).

* latency: one-way publish -> applied/received, p50 and p99, paced at 1k and
  10k messages/s;
* throughput: the sender goes flat out; delivered messages per second from the
  first send to the last receipt (losses are shown, not hidden);
* set cost: ``SessionCache.set`` on the sender with the bus attached against a
  cache with no bus, back to back (changes queue and travel in batches) and
  1 ms apart (each change is sent by the calling thread at once);
* bytes on the bus per one-key change of a 1 KB session, as sent, against raw
  pyzmq's bytes for the same value (``bench.bus_bytes``; ``--bytes`` runs only this).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.bus_bytes import bus_bytes, bus_bytes_rows
from bench.redis_server import start_redis, stop_redis
from bench.table import render, verdict

SPAWN = multiprocessing.get_context("spawn")
PAYLOAD = 1000
_STAMP = struct.Struct("<qq")  # index, send time (ns)


# -- receivers -----------------------------------------------------------------------


def _collect(conn: Any, n: int, poll: Any, extra: Any = dict) -> None:
    """Drive ``poll() -> [(index, sent_ns[, received_ns])]`` until n arrived or 3 s pass without progress."""
    lat: list[int] = []
    seen = 0
    warm_told = False
    first = last = 0
    idle_deadline = time.monotonic() + 30
    conn.send("ready")
    while seen < n and time.monotonic() < idle_deadline:
        for index, sent, *at in poll():
            now = at[0] if at else time.monotonic_ns()
            if index < 0:
                if not warm_told:
                    conn.send("warm")
                    warm_told = True
                continue
            if not first:
                first = now
            last = now
            seen += 1
            lat.append(now - sent)
            idle_deadline = time.monotonic() + 3
    conn.send({"latency_ns": lat, "received": seen, "first": first, "last": last, **extra()})


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
            time.sleep(0.0002)
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
        conn.send({"call_ns": call_ns})
    finally:
        for fn in reversed(cleanup):
            fn()


def run_pair(kind: str, target: str, n: int, rate: float | None) -> dict[str, Any]:
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
        sconn.send("go")
        assert rconn.poll(300), f"{kind} receiver did not finish"
        result = rconn.recv()
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


def pct(values: list[int], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] / 1000.0


def paced_set_cost(runtime_dir: str, n: int) -> tuple[float, float]:
    """Median nanoseconds of one ``set`` 1 ms after the last, without and with the bus.

    Between calls the process sleeps, as a server does between requests, so
    each call starts with cold CPU caches and (with the bus) wakes the sender.
    """
    from memsession import SessionCache, ZmqBus
    from memsession.session import new_id

    sids = [new_id() for _ in range(100)]
    data = {"user": 42, "pad": "x" * 960}

    def median(cache: SessionCache) -> float:
        took = []
        for i in range(n):
            time.sleep(0.001)
            start = time.perf_counter_ns()
            cache.set(sids[i % 100], data)
            took.append(time.perf_counter_ns() - start)
        took.sort()
        return took[len(took) // 2]

    with SessionCache() as plain:
        bare = median(plain)
    with SessionCache(bus=ZmqBus(runtime_dir=runtime_dir)) as replicated:
        wired = median(replicated)
    return bare, wired


def set_cost(runtime_dir: str, n: int) -> tuple[float, float]:
    """Nanoseconds per ``set`` without a bus and with one attached (this process, real hub)."""
    from memsession import SessionCache, ZmqBus
    from memsession.session import new_id

    sids = [new_id() for _ in range(1000)]
    data = {"user": 42, "pad": "x" * 960}

    def per_set(cache: SessionCache) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter_ns()
            for i in range(n):
                cache.set(sids[i % 1000], data)
            best = min(best, (time.perf_counter_ns() - start) / n)
            deadline = time.monotonic() + 30
            while cache.bus is not None and cache.bus.stats()["queued"] and time.monotonic() < deadline:
                time.sleep(0.001)
        return best

    plain = SessionCache()
    bare = per_set(plain)
    plain.close()
    with SessionCache(bus=ZmqBus(runtime_dir=runtime_dir)) as replicated:
        wired = per_set(replicated)
    return bare, wired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages")
    parser.add_argument("--bytes", action="store_true", help="only the bytes on the bus per change (no Redis)")
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    n_paced = {1000: int(3000 * scale), 10_000: int(20_000 * scale)}
    n_blast = int(50_000 * scale)

    tmp = tempfile.mkdtemp(prefix="msb-")
    runtime_dir = os.path.join(tmp, "rt")
    hub = subprocess.Popen([sys.executable, "-m", "memsession", "hub", "--runtime-dir", runtime_dir,
                            "--log-level", "WARNING"])
    redis_server, redis_url = (None, "") if args.bytes else start_redis()
    try:
        from memsession.hub import query_stats

        deadline = time.monotonic() + 20
        while True:
            try:
                query_stats(f"ipc://{runtime_dir}/req.sock", timeout=0.5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        byte_rows, byte_target = bus_bytes_rows(bus_bytes(runtime_dir, int(200 * scale)), verdict)
        print(render("Bytes on the bus per change, ~1 KB session (topic + payload, as sent)",
                     ["memsession", "bytes", "raw pyzmq, same value", "bytes"], byte_rows))
        if args.bytes:
            print()
            print(render("Target", ["measure", "value", "target", ""], [byte_target]))
            return 0
        targets = {"memsession": runtime_dir, "zmq": runtime_dir, "redis": redis_url}
        kinds = ["memsession", "zmq", "redis"]
        lat_rows = []
        results: dict[tuple[str, Any], dict[str, Any]] = {}
        for rate, n in n_paced.items():
            for kind in kinds:
                r = run_pair(kind, targets[kind], n, rate)
                results[kind, rate] = r
                lat_rows.append([f"{kind} @ {rate:,}/s", r["received"], n,
                                 pct(r["latency_ns"], 50), pct(r["latency_ns"], 99), r.get("gaps", "-"),
                                 r.get("repairs", "-")])
        print(render("One-way propagation, 1 KB payload (microseconds)",
                     ["sender -> receiver", "received", "sent", "p50 us", "p99 us", "gaps", "repairs"],
                     lat_rows))
        thr_rows = []
        for kind in kinds:
            r = run_pair(kind, targets[kind], n_blast, None)
            span = max(r["last"] - r["first"], 1) / 1e9
            r["per_s"] = r["received"] / span if r["received"] > 1 else 0.0
            results[kind, None] = r
            thr_rows.append([kind, r["received"], n_blast, r["per_s"], r["call_ns"] / 1000, r.get("gaps", "-"),
                             r.get("repairs", "-")])
        print()
        print(render("Sustained throughput, 1 KB payload, sender flat out",
                     ["system", "received", "sent", "delivered/s", "send call us", "gaps", "repairs"],
                     thr_rows))
        bare, wired = set_cost(runtime_dir, int(20_000 * scale))
        paced_bare, paced = paced_set_cost(runtime_dir, int(2000 * scale))
        ms, raw, red = (results[k, None]["per_s"] for k in kinds)
        p50 = {k: pct(results[k, 10_000]["latency_ns"], 50) for k in kinds}
        p99_ms = pct(results["memsession", 10_000]["latency_ns"], 99)
        rows: list[list[object]] = [
            ["throughput vs raw pyzmq", f"{ms / raw:.2f}x" if raw else "n/a", ">= 0.50x",
             verdict(bool(raw) and ms / raw >= 0.5)],
            ["throughput vs Redis pub/sub", f"{ms / red:.2f}x" if red else "n/a", ">= 5x",
             verdict(bool(red) and ms / red >= 5)],
            ["p99 @ 10k/s (us)", f"{p99_ms:.0f}", "< 1000", verdict(p99_ms < 1000)],
            ["p50 @ 10k/s vs raw pyzmq", f"{p50['memsession'] / p50['zmq']:.2f}x", "<= 2x",
             verdict(p50["memsession"] <= 2 * p50["zmq"])],
            ["set() with bus, back to back (us)", f"{wired / 1000:.2f} (no bus {bare / 1000:.2f})", "< 10",
             verdict(wired < 10_000)],
            ["set() with bus, 1 ms apart (us, median)", f"{paced / 1000:.2f} (no bus {paced_bare / 1000:.2f})",
             "< 10", verdict(paced < 10_000)],
            byte_target,
        ]
        print()
        print(render("Targets", ["measure", "value", "target", ""], rows))
    finally:
        hub.terminate()
        hub.wait(10)
        if redis_server is not None:  # --bytes starts none
            stop_redis(redis_server)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
