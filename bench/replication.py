"""Replication benchmark: memsession's bus against raw pyzmq and Redis pub/sub, in one run.

``python -m bench.replication [--quick] [--runs N] [--only PART ...] [--bytes]``

Two processes (a sender and a receiver, ``bench.replication_pairs``) and, for
the ZeroMQ rows, one ``memsession hub`` process whose XSUB/XPUB proxy carries
both memsession's messages and the raw pyzmq baseline. Redis is a
``redis-server`` started on 127.0.0.1 for the run, driven with redis-py
``publish`` / ``pubsub``. Every message carries a 1 KB payload and its send time.

* latency: one-way publish -> applied/received, p50 and p99, paced at 1k and
  10k messages/s; the 10k/s case runs ``--runs`` times (5), memsession and raw
  pyzmq in turn, and every run is shown;
* throughput: the sender goes flat out; delivered messages per second from the
  first send to the last receipt (losses are shown, not hidden);
* CPU per message of the sender, the hub (or redis-server) and the receiver,
  every thread counted, for every row;
* set cost: ``SessionCache.set`` on the sender with the bus attached against a
  cache with no bus, back to back (changes queue and travel in batches) and
  1 ms apart (each change is sent by the calling thread at once);
* bytes on the bus per one-key change of a 1 KB session, as sent, against raw
  pyzmq's bytes for the same value (``bench.bus_bytes``; ``--bytes`` runs only this);
* the floor: CPU per change of encoding, and of decoding and merging in the hub
  and a receiver, with no socket at all, and the changes a second the machine's
  cores allow at that cost (``bench.replication_floor``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.bus_bytes import bus_bytes, bus_bytes_rows
from bench.redis_server import start_redis, stop_redis
from bench.replication_floor import FLOOR_HEADER, ceiling, cpu_count, floor, floor_rows
from bench.replication_pairs import pct, run_pair
from bench.table import render, verdict

PARTS = ("bytes", "latency", "throughput", "floor", "set")
KINDS = ("memsession", "zmq", "redis")
#: The issue's targets.
MIN_THROUGHPUT_RATIO = 0.6
MAX_P99_US = 1000.0
MAX_P50_RATIO = 2.0
MAX_PACED_SET_US = 15.0


def progress(text: str) -> None:
    print(f"[replication] {text}", file=sys.stderr, flush=True)


_PROCESSES = ("sender", "hub", "receiver")


def _per_message(result: dict[str, Any], measure: str, scale: float, digits: int) -> str:
    """``sender / hub / receiver`` of ``measure`` (``cpu_ns``, ``wakeups``) per message received."""
    received = result["received"]
    values = [result.get(f"{who}_{measure}") for who in _PROCESSES]
    return " / ".join("-" if v is None or not received else f"{v / received / scale:.{digits}f}" for v in values)


def _row(label: str, result: dict[str, Any], sent: int) -> list[object]:
    lat = result["latency_ns"]
    return [label, result["received"], sent, pct(lat, 50), pct(lat, 99), _per_message(result, "cpu_ns", 1000, 1),
            _per_message(result, "wakeups", 1, 2), result.get("gaps", "-"), result.get("repairs", "-")]


_PER_MESSAGE = ["CPU us/msg: sender / hub / receiver", "wake-ups/msg: s / h / r"]
_LATENCY_HEADER = ["sender -> receiver", "received", "sent", "p50 us", "p99 us", *_PER_MESSAGE, "gaps", "repairs"]


def paced_set_cost(runtime_dir: str, n: int) -> tuple[float, float]:
    """Median nanoseconds of one ``set`` 1 ms after the last, without and with the bus.

    Between calls the process sleeps, as a server does between requests, so
    each call starts with cold CPU caches.
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


def _start_hub(runtime_dir: str) -> subprocess.Popen[bytes]:
    from memsession.hub import query_stats

    hub = subprocess.Popen([sys.executable, "-m", "memsession", "hub", "--runtime-dir", runtime_dir,
                            "--log-level", "WARNING"])
    deadline = time.monotonic() + 20
    while True:
        try:
            query_stats(f"ipc://{runtime_dir}/req.sock", timeout=0.5)
            return hub
        except Exception:
            if time.monotonic() > deadline:
                hub.terminate()
                raise


def _redis_pid(url: str) -> int | None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def latency(targets: dict[str, str], pids: dict[str, int | None], n_paced: dict[int, int],
            runs: int) -> tuple[list[list[object]], list[list[object]]]:
    """Rows of the propagation table and the target rows it decides (p99 in every run, p50 ratio)."""
    rows: list[list[object]] = []
    for kind in KINDS:
        progress(f"{kind} @ 1,000/s")
        rows.append(_row(f"{kind} @ 1,000/s", run_pair(kind, targets[kind], n_paced[1000], 1000, pids[kind]),
                         n_paced[1000]))
    p99s: list[float] = []
    ratios: list[float] = []
    for i in range(runs):
        got: dict[str, dict[str, Any]] = {}
        for kind in ("memsession", "zmq"):
            progress(f"{kind} @ 10,000/s, run {i + 1} of {runs}")
            got[kind] = run_pair(kind, targets[kind], n_paced[10_000], 10_000, pids[kind])
            rows.append(_row(f"{kind} @ 10,000/s, run {i + 1}", got[kind], n_paced[10_000]))
        ms, raw = got["memsession"], got["zmq"]
        complete = ms["received"] == n_paced[10_000]
        p99s.append(pct(ms["latency_ns"], 99) if complete else float("inf"))
        ratios.append(pct(ms["latency_ns"], 50) / pct(raw["latency_ns"], 50))
    progress("redis @ 10,000/s")
    rows.append(_row("redis @ 10,000/s", run_pair("redis", targets["redis"], n_paced[10_000], 10_000, pids["redis"]),
                     n_paced[10_000]))
    within = sum(p99 <= MAX_P99_US for p99 in p99s)
    ratio = statistics.median(ratios)
    targets_rows: list[list[object]] = [
        ["propagation p99 @ 10k/s (us), each run", ", ".join(f"{p:,.0f}" for p in p99s),
         f"<= {MAX_P99_US:,.0f} in {runs} of {runs}", f"{within} of {runs} {verdict(within == runs)}"],
        ["propagation p50 @ 10k/s / raw pyzmq, median of runs", f"{ratio:.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})",
         f"<= {MAX_P50_RATIO:g}x", verdict(ratio <= MAX_P50_RATIO)],
    ]
    return rows, targets_rows


def throughput(targets: dict[str, str], pids: dict[str, int | None], n_blast: int,
               per_s: dict[str, float]) -> tuple[list[list[object]], list[list[object]]]:
    """Rows of the throughput table and its target rows; ``per_s`` gets each system's delivered/s."""
    rows: list[list[object]] = []
    for kind in KINDS:
        progress(f"{kind} flat out")
        r = run_pair(kind, targets[kind], n_blast, None, pids[kind])
        span = max(r["last"] - r["first"], 1) / 1e9
        per_s[kind] = r["received"] / span if r["received"] > 1 else 0.0
        rows.append([kind, r["received"], n_blast, per_s[kind], r["call_ns"] / 1000,
                     _per_message(r, "cpu_ns", 1000, 1), _per_message(r, "wakeups", 1, 2), r.get("gaps", "-"),
                     r.get("repairs", "-")])
    ms, raw, red = (per_s[k] for k in KINDS)
    return rows, [
        ["throughput / raw pyzmq through the same proxy", f"{ms / raw:.2f}x" if raw else "n/a",
         f">= {MIN_THROUGHPUT_RATIO:g}x", verdict(bool(raw) and ms / raw >= MIN_THROUGHPUT_RATIO)],
        ["throughput / Redis pub/sub", f"{ms / red:.2f}x" if red else "n/a", ">= 5x",
         verdict(bool(red) and ms / red >= 5)],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages (a smoke run)")
    parser.add_argument("--runs", type=int, default=5, help="runs of the 10k/s latency case (default 5)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), metavar="PART",
                        help=f"run only these parts ({', '.join(PARTS)})")
    parser.add_argument("--bytes", action="store_true", help="only the bytes on the bus per change (--only bytes)")
    args = parser.parse_args(argv)
    parts = {"bytes"} if args.bytes else set(args.only)
    scale = 0.2 if args.quick else 1.0
    n_paced = {1000: int(3000 * scale), 10_000: int(20_000 * scale)}
    n_blast = int(50_000 * scale)

    tmp = tempfile.mkdtemp(prefix="msb-")
    runtime_dir = os.path.join(tmp, "rt")
    hub = _start_hub(runtime_dir)
    redis_server, redis_url = start_redis() if parts & {"latency", "throughput"} else (None, "")
    targets_rows: list[list[object]] = []
    per_s: dict[str, float] = {}
    try:
        targets = {"memsession": runtime_dir, "zmq": runtime_dir, "redis": redis_url}
        pids = {"memsession": hub.pid, "zmq": hub.pid, "redis": _redis_pid(redis_url) if redis_url else None}
        if "bytes" in parts:
            progress("bytes per change")
            byte_rows, byte_target = bus_bytes_rows(bus_bytes(runtime_dir, int(200 * scale)), verdict)
            print(render("Bytes on the bus per change, ~1 KB session (topic + payload, as sent)",
                         ["memsession", "bytes", "raw pyzmq, same value", "bytes"], byte_rows))
            targets_rows.append(byte_target)
        if "latency" in parts:
            rows, decided = latency(targets, pids, n_paced, args.runs)
            print()
            print(render("One-way propagation, 1 KB payload (microseconds; CPU and wake-ups of every thread, per "
                         "message; hub: redis-server for Redis)", _LATENCY_HEADER, rows))
            targets_rows += decided
        if "throughput" in parts:
            rows, decided = throughput(targets, pids, n_blast, per_s)
            print()
            print(render("Sustained throughput, 1 KB payload, sender flat out",
                         ["system", "received", "sent", "delivered/s", "send call us", *_PER_MESSAGE, "gaps",
                          "repairs"], rows))
            targets_rows += decided
        if "floor" in parts:
            progress("floor (no sockets)")
            costs, cores = floor(), cpu_count()
            print()
            print(render(f"Floor: CPU per change with no socket at all, and the most changes a second "
                         f"{cores} cores allow at that cost", FLOOR_HEADER, floor_rows(costs, cores)))
            if per_s.get("zmq"):
                most = ceiling(costs, cores) / per_s["zmq"]
                targets_rows.append(["(floor) most changes/s these cores allow / raw pyzmq delivered",
                                     f"{most:.2f}x", f">= {MIN_THROUGHPUT_RATIO:g}x needed",
                                     "reachable" if most >= MIN_THROUGHPUT_RATIO else "out of reach"])
        if "set" in parts:
            progress("set() cost")
            bare, wired = set_cost(runtime_dir, int(20_000 * scale))
            paced_bare, paced = paced_set_cost(runtime_dir, int(2000 * scale))
            targets_rows += [
                ["set() with the bus, back to back (us)", f"{wired / 1000:.2f} (no bus {bare / 1000:.2f})", "< 10",
                 verdict(wired < 10_000)],
                ["set() with the bus attached, 1 ms apart (us, median)",
                 f"{paced / 1000:.2f} (no bus {paced_bare / 1000:.2f})", f"<= {MAX_PACED_SET_US:g}",
                 verdict(paced <= MAX_PACED_SET_US * 1000)],
            ]
        print()
        print(render("Targets", ["measure", "value", "target", ""], targets_rows))
    finally:
        hub.terminate()
        hub.wait(10)
        if redis_server is not None:
            stop_redis(redis_server)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
