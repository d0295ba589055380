"""Cache core and SessionCache next to dict, cachetools and Redis, in one run.

``python -m bench.core [--sizes 10000,1000000] [--quick]``

Prints ns/op for get-hit, get-miss, set and touch at each size, the ratios
the targets are stated in with the floors that bound them, memory per session
against a plain dict holding the same sessions (and where the bytes go), and
the longest single call while a million entries expire.

In-process loops are timed in thread CPU time, best of several rounds that
each run every subject once: a process descheduled on a shared machine then
costs nothing, and every ratio compares figures from the same rounds. A
redis-py GET is timed in wall time, since its cost is the round trip.
"""

from __future__ import annotations

import argparse
import gc
import random
import secrets
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from cachetools import LRUCache, TTLCache

from memsession import ExpiringLRUCache, SegmentedLRUCache, SessionCache, new_id, session_key
from memsession.session import Record
from memsession.testing import FakeClock

from .core_floors import Loop, clock_reads, get_floor, set_floors
from .table import render, verdict

IDLE, MAX_AGE = 1800.0, 43200.0
_INF = float("inf")


def session_data(i: int) -> dict[str, Any]:
    """A minimal logged-in session: user id, CSRF token, a couple of small values."""
    return {"user_id": i, "csrf": secrets.token_urlsafe(32), "theme": "dark", "roles": ["member"]}


def flask_login_session(i: int) -> dict[str, Any]:
    """What Flask-Login and Flask-WTF keep for a logged-in user."""
    return {"_user_id": str(i), "_fresh": True, "_id": secrets.token_hex(64), "csrf_token": secrets.token_hex(20)}


def _lookups(keys: Sequence[str], count: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [keys[rnd.randrange(len(keys))] for _ in range(count)]


def _empty(items: Sequence[str]) -> None:
    for _ in items:
        pass


def _cpu_ns(run: Loop, items: Sequence[str]) -> float:
    """Thread CPU nanoseconds per item of one ``run(items)``, the collector off."""
    gc.disable()
    try:
        start = time.thread_time_ns()
        run(items)
        return (time.thread_time_ns() - start) / len(items)
    finally:
        gc.enable()


def best_of(jobs: dict[str, tuple[Loop, Sequence[str]]], rounds: int) -> dict[str, float]:
    """ns per item of each job, best of ``rounds`` rounds that run every job in turn, the bare loop's cost removed."""
    best = dict.fromkeys(jobs, _INF)
    bare = _INF
    for _ in range(rounds):
        for name, (run, items) in jobs.items():
            best[name] = min(best[name], _cpu_ns(run, items))
        bare = min(bare, _cpu_ns(_empty, next(iter(jobs.values()))[1]))
    return {name: max(ns - bare, 0.0) for name, ns in best.items()}


def _getter(cache: Any) -> Loop:
    def run(ks: Sequence[str], c: Any = cache) -> None:
        for k in ks:
            c[k]

    return run


def _misser(cache: Any) -> Loop:
    def run(ks: Sequence[str], get: Any = cache.get) -> None:
        for k in ks:
            get(k)

    return run


def _setter(cache: Any, value: Any) -> Loop:
    def run(ks: Sequence[str], c: Any = cache, v: Any = value) -> None:
        for k in ks:
            c[k] = v

    return run


def _caller(method: Callable[..., Any], *args: Any) -> Loop:
    """A loop calling ``method(key, *args)`` for each key, the method bound once."""
    if args:
        (value,) = args

        def run_with(ks: Sequence[str], m: Any = method, v: Any = value) -> None:
            for k in ks:
                m(k, v)

        return run_with

    def run(ks: Sequence[str], m: Any = method) -> None:
        for k in ks:
            m(k)

    return run


def time_ops(size: int, lookups: int, rounds: int) -> dict[str, dict[str, float]]:
    """ns/op per operation per subject, all filled to ``size`` entries, timed in the same rounds."""
    keys = [new_id() for _ in range(size)]
    hits = _lookups(keys, lookups, 1)
    misses = [new_id() for _ in range(min(lookups, 100_000))]
    writes = hits[: max(1, len(hits) // 4)]  # set copies and validates the data: fewer calls suffice
    value = session_data(1)
    login = flask_login_session(1)

    plain: dict[str, Any] = dict.fromkeys(keys, value)
    lru: LRUCache[str, Any] = LRUCache(size)
    ttl: TTLCache[str, Any] = TTLCache(size, ttl=IDLE)
    core = ExpiringLRUCache(size, idle_timeout=IDLE, max_age=MAX_AGE)
    for cache in (lru, ttl, core):
        for k in keys:
            cache[k] = value
    facade = SessionCache(maxsize=size, idle_timeout=IDLE, max_age=MAX_AGE, touch_interval=60.0)
    login_facade = SessionCache(maxsize=size, idle_timeout=IDLE, max_age=MAX_AGE, touch_interval=60.0)
    for k in keys:
        facade.set(k, value)
        login_facade.set(k, login)
    held = {session_key(k): facade.record(k) for k in keys}
    login_held = {session_key(k): login_facade.record(k) for k in keys}

    def ttl_touch(ks: Sequence[str], c: Any = ttl) -> None:
        for k in ks:
            c[k] = c[k]  # TTLCache resets a TTL only by writing

    jobs: dict[str, tuple[Loop, Sequence[str]]] = {
        "dict get-hit": (_caller(plain.__getitem__), hits),
        "dict get-miss": (_misser(plain), misses),
        "dict set": (_setter(plain, value), hits),
        "session_key": (_caller(session_key), hits),
        "floor": (get_floor(held), hits),
        "floor login": (get_floor(login_held), hits),
        "clock": (clock_reads, hits),
        "SessionCache get-hit": (_caller(facade.get), hits),
        "SessionCache get-miss": (_caller(facade.get), misses),
        "SessionCache set": (_caller(facade.set, value), writes),
        "SessionCache touch": (_caller(facade.touch), hits),
        "login get-hit": (_caller(login_facade.get), hits),
        "login set": (_caller(login_facade.set, login), writes),
    }
    for name, cache in (("LRUCache", lru), ("TTLCache", ttl), ("ExpiringLRUCache", core)):
        jobs[f"{name} get-hit"] = (_getter(cache), hits)
        jobs[f"{name} get-miss"] = (_misser(cache), misses)
        jobs[f"{name} set"] = (_setter(cache, value), hits)
    # Moving to the MRU end is all a touch means for LRUCache; every read slides the core's idle timeout.
    jobs["LRUCache touch"] = (_getter(lru), hits)
    jobs["TTLCache touch"] = (ttl_touch, hits)
    jobs["ExpiringLRUCache touch"] = (_getter(core), hits)
    for name, run in set_floors(login, facade.config.max_session_bytes, facade.config.max_session_items).items():
        jobs[name] = (run, writes)
    ns = best_of(jobs, rounds)
    facade.close()
    login_facade.close()

    ops = ("get-hit", "get-miss", "set", "touch")
    results: dict[str, dict[str, float]] = {}
    for subject in ("dict", "LRUCache", "TTLCache", "ExpiringLRUCache", "SessionCache"):
        results[subject] = {op: ns.get(f"{subject} {op}", float("nan")) for op in ops}
    results["SessionCache, Flask-Login session"] = {
        "get-hit": ns["login get-hit"], "get-miss": float("nan"), "set": ns["login set"], "touch": float("nan"),
    }
    results["floors"] = {"session_key": ns["session_key"], "get": ns["floor"], "get login": ns["floor login"],
                         "clock": ns["clock"], "set id": ns["set id"], "set pack": ns["set pack"]}
    return results


def redis_get_ns(count: int) -> float | None:
    """ns per redis-py GET of a small value on loopback (wall time), or None without a redis-server."""
    try:
        import redis

        from .redis_server import start_redis, stop_redis
    except ImportError:
        return None
    try:
        server, url = start_redis()
    except (Exception, SystemExit) as exc:  # the table says why it is missing
        print(f"redis: not measured ({exc})", file=sys.stderr)
        return None
    try:
        client = redis.Redis.from_url(url)
        client.set("k", b"x" * 200)
        keys = ["k"] * count
        best = _INF
        for _ in range(3):
            start = time.perf_counter_ns()
            for k in keys:
                client.get(k)
            best = min(best, (time.perf_counter_ns() - start) / count)
        client.close()
        return best
    finally:
        stop_redis(server)


def target_rows(res: dict[str, dict[str, float]], redis_ns: float | None) -> list[list[object]]:
    """The issue's targets for the read and write path, each with its measurement and verdict."""
    core, lru, ttl = res["ExpiringLRUCache"], res["LRUCache"], res["TTLCache"]
    fac, login, floors = res["SessionCache"], res["SessionCache, Flask-Login session"], res["floors"]
    get_ratio = fac["get-hit"] / lru["get-hit"]
    rows: list[list[object]] = [
        ["core get-hit / LRUCache get-hit", core["get-hit"] / lru["get-hit"], "<= 1.25",
         verdict(core["get-hit"] <= 1.25 * lru["get-hit"])],
        ["core get-hit / TTLCache get-hit", core["get-hit"] / ttl["get-hit"], "<= 0.50",
         verdict(core["get-hit"] <= 0.5 * ttl["get-hit"])],
        ["  floor part: one clock reading / LRUCache get-hit", floors["clock"] / lru["get-hit"], "", ""],
        ["SessionCache get-hit / LRUCache get-hit", get_ratio, "<= 4", verdict(get_ratio <= 4)],
        ["  floor: session_key alone / LRUCache get-hit", floors["session_key"] / lru["get-hit"], "", ""],
        ["  floor: session_key + dict lookup + copy / LRUCache", floors["get"] / lru["get-hit"], "", ""],
        ["  same floor, Flask-Login session", floors["get login"] / lru["get-hit"], "", ""],
        ["  SessionCache get-hit, Flask-Login session / LRUCache", login["get-hit"] / lru["get-hit"], "", ""],
        ["SessionCache set, Flask-Login session, ns", login["set"], "<= 3000", verdict(login["set"] <= 3000)],
        ["  floor part: id checked and hashed, ns", floors["set id"], "", ""],
        ["  floor part: data checked, copied and packed, ns", floors["set pack"], "", ""],
        ["  SessionCache set, minimal 4-key session, ns", fac["set"], "", ""],
    ]
    if redis_ns is not None:
        rows.insert(4, ["redis GET / SessionCache get-hit", redis_ns / fac["get-hit"], ">= 90",
                        verdict(redis_ns >= 90 * fac["get-hit"])])
    return rows


def _traced_bytes(build: Callable[[], Any], count: int) -> float:
    """Bytes ``build()`` leaves allocated per item (tracemalloc), what it returns kept alive meanwhile."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    return (after - before) / count


def memory_per_session(count: int, make: Callable[[int], dict[str, Any]] = session_data) -> dict[str, float]:
    """Bytes retained per session by a plain dict of id to data (its id strings counted), the core, SessionCache.

    Each subject is charged what it holds: the dict its id strings (copies,
    so the list of ids used to build them is not counted), the caches their
    keys too (SessionCache makes them: SHA-256 hex digests).
    """
    ids = [new_id() for _ in range(count)]

    def plain() -> dict[str, Any]:
        return {sid.encode().decode(): make(i) for i, sid in enumerate(ids)}

    def core() -> SegmentedLRUCache:
        cache = SegmentedLRUCache(count, idle_timeout=IDLE, max_age=MAX_AGE)
        for i, sid in enumerate(ids):
            cache[sid.encode().decode()] = make(i)
        return cache

    def facade() -> SessionCache:
        cache = SessionCache(maxsize=count, idle_timeout=IDLE, max_age=MAX_AGE)
        for i, sid in enumerate(ids):
            cache.set(sid, make(i))
        return cache

    return {"dict": _traced_bytes(plain, count), "SegmentedLRUCache": _traced_bytes(core, count),
            "SessionCache": _traced_bytes(facade, count)}


def memory_breakdown(count: int, make: Callable[[int], dict[str, Any]] = session_data) -> list[list[object]]:
    """What one SessionCache session costs, part by part, each built alone the way the cache builds it."""
    ids = [new_id() for _ in range(count)]
    keys = [session_key(sid) for sid in ids]
    datas = [make(i) for i in range(count)]
    slot = 8  # a list slot per item
    key = _traced_bytes(lambda: [session_key(sid) for sid in ids], count) - slot
    data = _traced_bytes(lambda: [make(i) for i in range(count)], count) - slot
    wall, version = time.time(), time.time_ns() << 16

    def records() -> list[Record]:
        out = []
        for i, k in enumerate(keys):
            accessed = wall + i * 1e-6  # created is the same float in a new session
            out.append(Record(k, datas[i], version + i, 1, accessed, accessed, accessed + IDLE, False, True, 90))
        return out

    record = _traced_bytes(records, count) - slot

    def core() -> SegmentedLRUCache:
        cache = SegmentedLRUCache(count, idle_timeout=IDLE, max_age=MAX_AGE)
        for k, d in zip(keys, datas):
            cache[k] = d
        return cache

    entry = _traced_bytes(core, count)
    total = key + data + record + entry
    return [
        ["key: SHA-256 hex of the id (a 64-character str)", key, key / total],
        ["the session's data (the same objects a dict holds)", data, data / total],
        [f"Record: {len(fields(Record))} slots, version, accessed/expires floats", record, record / total],
        ["core entry: node, deadline/expires floats, order slot", entry, entry / total],
        ["sum", total, 1.0],
    ]


def expiry_pauses(count: int) -> dict[str, float]:
    """Longest and p99.9 single-insert time while ``count`` entries expire over time.

    Entries are created one simulated millisecond apart, then time moves
    10 ms per insert until all have expired, so each call sweeps what
    expired since the last. GC is off so its own pauses aren't counted, and
    each call is timed in thread CPU time, so neither is a preemption.
    """
    clock = FakeClock()
    cache = ExpiringLRUCache(count * 2, idle_timeout=600.0, max_age=900.0, timer=clock)
    for i in range(count):
        cache[i] = i
        clock.advance(0.001)
    durations = []
    steps = int((600.0 + count * 0.001) / 0.010) + 10
    gc.disable()
    try:
        for n in range(steps):
            clock.advance(0.010)
            start = time.thread_time_ns()
            cache[("new", n)] = n
            durations.append(time.thread_time_ns() - start)
    finally:
        gc.enable()
    leftover = sum(1 for k in iter(cache) if not isinstance(k, tuple))
    durations.sort()
    return {
        "max_ms": durations[-1] / 1e6,
        "p999_ms": durations[int(len(durations) * 0.999)] / 1e6,
        "median_us": durations[len(durations) // 2] / 1e3,
        "left": float(leftover),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__)
    parser.add_argument("--sizes", default="10000,1000000", help="comma-separated entry counts")
    parser.add_argument("--quick", action="store_true", help="10k entries only, fewer lookups")
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    lookups, rounds = (20_000, 5) if args.quick else (100_000, 7)

    print("redis GET ...", file=sys.stderr, flush=True)
    redis_ns = redis_get_ns(5_000 if args.quick else 20_000)
    for size in sizes:
        print(f"timing {size:,} entries ...", file=sys.stderr, flush=True)
        res = time_ops(size, lookups, rounds)
        ops = ["get-hit", "get-miss", "set", "touch"]
        print(render(f"\nns/op with {size:,} entries (thread CPU time, best of {rounds} rounds, loop cost removed)",
                     ["subject", *ops], [[name, *(res[name][op] for op in ops)] for name in res if name != "floors"]))
        print(render(f"\ntargets at {size:,} entries", ["figure", "measured", "target", ""],
                     target_rows(res, redis_ns)))
    if redis_ns is None:
        print("\nredis GET: not measured (redis-server or redis-py missing)")
    else:
        print(f"\nredis-py GET on loopback (wall time): {redis_ns:,.0f} ns/op")

    count = 20_000 if args.quick else 100_000
    print("memory ...", file=sys.stderr, flush=True)
    for label, make in (("minimal 4-key session", session_data), ("Flask-Login session", flask_login_session)):
        mem = memory_per_session(count, make)
        print(render(f"\nbytes per session, {label} (tracemalloc, {count:,} sessions, keys counted)",
                     ["subject", "bytes", "x dict"], [[name, b, b / mem["dict"]] for name, b in mem.items()]))
        ratio = mem["SessionCache"] / mem["dict"]
        print(f"target: SessionCache <= 1.6x dict: {ratio:.2f}x {verdict(ratio <= 1.6)}")
        print(render(f"where a SessionCache session's bytes go, {label}", ["part", "bytes", "share"],
                     memory_breakdown(count, make)))

    pauses = expiry_pauses(100_000 if args.quick else 1_000_000)
    print(render("\nsingle-call time while entries expire over time",
                 ["entries", "max ms", "p99.9 ms", "median us", "not yet expired"],
                 [[f"{100_000 if args.quick else 1_000_000:,}", pauses["max_ms"], pauses["p999_ms"],
                   pauses["median_us"], int(pauses["left"])]]))
    print(f"target: no pause over a few ms: {verdict(pauses['max_ms'] <= 5.0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
