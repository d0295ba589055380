"""Cache core and SessionCache next to dict, cachetools and Redis, in one run.

``python -m bench.core [--sizes 10000,1000000] [--quick]``

Prints ns/op for get-hit, get-miss, set and touch at each size, the ratios
the targets are stated in, memory per session against a plain dict holding
the same data, and the longest single call while a million entries expire.
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
from typing import Any

from cachetools import LRUCache, TTLCache

from memsession import ExpiringLRUCache, SessionCache, new_id, session_key
from memsession.testing import FakeClock

from .table import ns_per_op, render, verdict

IDLE, MAX_AGE = 1800.0, 43200.0


def session_data(i: int) -> dict[str, Any]:
    """A minimal logged-in session: user id, CSRF token, a couple of small values."""
    return {"user_id": i, "csrf": secrets.token_urlsafe(32), "theme": "dark", "roles": ["member"]}


def flask_login_session(i: int) -> dict[str, Any]:
    """What Flask-Login and Flask-WTF keep for a logged-in user."""
    return {"_user_id": str(i), "_fresh": True, "_id": secrets.token_hex(64), "csrf_token": secrets.token_hex(20)}


def _lookups(keys: Sequence[str], count: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [keys[rnd.randrange(len(keys))] for _ in range(count)]


Loop = Callable[[Sequence[str]], None]


def facade_loops(facade: SessionCache, value: Any) -> tuple[Loop, Loop, Loop]:
    """Timing loops over ``facade``'s get, set (of ``value``) and touch, its methods bound once."""

    def f_get(ks: Sequence[str], get: Any = facade.get) -> None:
        for k in ks:
            get(k)

    def f_set(ks: Sequence[str], put: Any = facade.set, v: Any = value) -> None:
        for k in ks:
            put(k, v)

    def f_touch(ks: Sequence[str], touch: Any = facade.touch) -> None:
        for k in ks:
            touch(k)

    return f_get, f_set, f_touch


def time_ops(size: int, lookups: int) -> dict[str, dict[str, float]]:
    """ns/op per operation per subject, all filled to ``size`` entries."""
    keys = [new_id() for _ in range(size)]
    hits = _lookups(keys, lookups, 1)
    misses = [new_id() for _ in range(min(lookups, 100_000))]
    value = session_data(1)
    results: dict[str, dict[str, float]] = {}

    plain: dict[str, Any] = {k: value for k in keys}

    def d_get(ks: Sequence[str], d: dict[str, Any] = plain) -> None:
        for k in ks:
            d[k]

    def d_miss(ks: Sequence[str], d: dict[str, Any] = plain) -> None:
        for k in ks:
            d.get(k)

    def d_set(ks: Sequence[str], d: dict[str, Any] = plain, v: Any = value) -> None:
        for k in ks:
            d[k] = v

    results["dict"] = {
        "get-hit": ns_per_op(d_get, hits),
        "get-miss": ns_per_op(d_miss, misses),
        "set": ns_per_op(d_set, hits),
        "touch": float("nan"),
    }
    del plain

    lru = LRUCache(size)
    ttl = TTLCache(size, ttl=IDLE)
    core = ExpiringLRUCache(size, idle_timeout=IDLE, max_age=MAX_AGE)
    for cache in (lru, ttl, core):
        for k in keys:
            cache[k] = value

    def cache_ops(cache: Any, touch: Callable[[Sequence[str]], None]) -> dict[str, float]:
        def get_hit(ks: Sequence[str], c: Any = cache) -> None:
            for k in ks:
                c[k]

        def get_miss(ks: Sequence[str], c: Any = cache) -> None:
            for k in ks:
                c.get(k)

        def put(ks: Sequence[str], c: Any = cache, v: Any = value) -> None:
            for k in ks:
                c[k] = v

        return {
            "get-hit": ns_per_op(get_hit, hits),
            "get-miss": ns_per_op(get_miss, misses),
            "set": ns_per_op(put, hits),
            "touch": ns_per_op(touch, hits),
        }

    def lru_touch(ks: Sequence[str], c: Any = lru) -> None:
        for k in ks:
            c[k]  # moving to the MRU end is all a touch means here

    def ttl_touch(ks: Sequence[str], c: Any = ttl) -> None:
        for k in ks:
            c[k] = c[k]  # TTLCache resets a TTL only by writing

    def core_touch(ks: Sequence[str], c: Any = core) -> None:
        for k in ks:
            c[k]  # every read slides the idle timeout

    results["LRUCache"] = cache_ops(lru, lru_touch)
    del lru
    results["TTLCache"] = cache_ops(ttl, ttl_touch)
    del ttl
    results["ExpiringLRUCache"] = cache_ops(core, core_touch)
    del core
    gc.collect()

    facade = SessionCache(maxsize=size, idle_timeout=IDLE, max_age=MAX_AGE, touch_interval=60.0)
    for k in keys:
        facade.set(k, value)

    f_get, f_set, f_touch = facade_loops(facade, value)

    def hash_ids(ks: Sequence[str], key: Any = session_key) -> None:
        for k in ks:
            key(k)

    few = hits[: max(1, len(hits) // 4)]  # set copies and validates the data: fewer rounds suffice
    # What every id-taking call now pays first (the cache holds SHA-256 digests, not ids).
    results["session_key"] = {"get-hit": ns_per_op(hash_ids, hits)}
    results["SessionCache"] = {
        "get-hit": ns_per_op(f_get, hits),
        "get-miss": ns_per_op(f_get, misses),
        "set": ns_per_op(f_set, few, repeat=3),
        "touch": ns_per_op(f_touch, hits),
    }
    facade.close()
    del facade
    gc.collect()
    return results


def redis_get_ns(count: int) -> float | None:
    """ns per redis-py GET of a small value on loopback, or None without a redis-server."""
    try:
        import redis

        from tests.servers import RedisServer
    except ImportError:
        return None
    try:
        server = RedisServer()
        server.start()
    except Exception as exc:  # the table says why it is missing
        print(f"redis: not measured ({exc})", file=sys.stderr)
        return None
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", b"x" * 200)
        keys = ["k"] * count

        def run(ks: Sequence[str], get: Any = client.get) -> None:
            for k in ks:
                get(k)

        result = ns_per_op(run, keys, repeat=3)
        client.close()
        return result
    finally:
        server.stop()


def memory_per_session(count: int, make: Callable[[int], dict[str, Any]] = session_data) -> dict[str, float]:
    """Bytes retained per session: plain dict of the data, the core, and SessionCache."""
    keys = [new_id() for _ in range(count)]

    def measure(build: Callable[[], Any]) -> float:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        held = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del held
        return (after - before) / count

    def plain() -> dict[str, Any]:
        return {k: make(i) for i, k in enumerate(keys)}

    def core() -> ExpiringLRUCache:
        cache = ExpiringLRUCache(count, idle_timeout=IDLE, max_age=MAX_AGE)
        for i, k in enumerate(keys):
            cache[k] = make(i)
        return cache

    def facade() -> SessionCache:
        cache = SessionCache(maxsize=count, idle_timeout=IDLE, max_age=MAX_AGE)
        for i, k in enumerate(keys):
            cache.set(k, make(i))
        return cache

    return {"dict": measure(plain), "ExpiringLRUCache": measure(core), "SessionCache": measure(facade)}


def expiry_pauses(count: int) -> dict[str, float]:
    """Longest and p99.9 single-insert time while ``count`` entries expire over time.

    Entries are created one simulated millisecond apart, then time moves
    10 ms per insert until all have expired, so each call sweeps what
    expired since the last. GC is off so its own pauses aren't counted.
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
            start = time.perf_counter_ns()
            cache[("new", n)] = n
            durations.append(time.perf_counter_ns() - start)
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
    lookups = 50_000 if args.quick else 200_000

    redis_ns = redis_get_ns(5_000 if args.quick else 20_000)
    for size in sizes:
        res = time_ops(size, lookups)
        ops = ["get-hit", "get-miss", "set", "touch"]
        hashing = res.pop("session_key")["get-hit"]
        print(render(f"\nns/op with {size:,} entries (best of 5, loop cost removed)",
                     ["subject", *ops], [[name, *(res[name][op] for op in ops)] for name in res]))
        core, lru, ttl, fac = res["ExpiringLRUCache"], res["LRUCache"], res["TTLCache"], res["SessionCache"]
        rows = [
            ["core get-hit / LRUCache get-hit", core["get-hit"] / lru["get-hit"], "<= 1.25",
             verdict(core["get-hit"] <= 1.25 * lru["get-hit"])],
            ["core get-hit / TTLCache get-hit", core["get-hit"] / ttl["get-hit"], "<= 0.50",
             verdict(core["get-hit"] <= 0.5 * ttl["get-hit"])],
            ["core set / TTLCache set", core["set"] / ttl["set"], "<= 1.00", verdict(core["set"] <= ttl["set"])],
            ["SessionCache get-hit, ns", fac["get-hit"], "< 2000", verdict(fac["get-hit"] < 2000)],
            # A web request hashes its id 1-4 times (read; touch, read newest and set when it writes).
            ["session_key (SHA-256 of an id), ns", hashing, "", ""],
            ["session_key / SessionCache get-hit", hashing / fac["get-hit"], "", ""],
        ]
        if redis_ns is not None:
            rows.append(["redis GET / SessionCache get-hit", redis_ns / fac["get-hit"], ">= 50",
                         verdict(redis_ns >= 50 * fac["get-hit"])])
        print(render(f"\ntargets at {size:,} entries", ["ratio", "measured", "target", ""], rows))
    if redis_ns is None:
        print("\nredis GET: not measured (redis-server or redis-py missing)")
    else:
        print(f"\nredis-py GET on loopback: {redis_ns:,.0f} ns/op")

    count = 20_000 if args.quick else 100_000
    for label, make in (("minimal 4-key session", session_data), ("Flask-Login session", flask_login_session)):
        mem = memory_per_session(count, make)
        print(render(f"\nbytes per session, {label} (tracemalloc, {count:,} sessions)", ["subject", "bytes", "x dict"],
                     [[name, b, b / mem["dict"]] for name, b in mem.items()]))
        print(f"target: SessionCache <= 2x dict: {verdict(mem['SessionCache'] <= 2 * mem['dict'])}")

    pauses = expiry_pauses(100_000 if args.quick else 1_000_000)
    print(render("\nsingle-call time while entries expire over time",
                 ["entries", "max ms", "p99.9 ms", "median us", "not yet expired"],
                 [[f"{100_000 if args.quick else 1_000_000:,}", pauses["max_ms"], pauses["p999_ms"],
                   pauses["median_us"], int(pauses["left"])]]))
    print(f"target: no pause over a few ms: {verdict(pauses['max_ms'] <= 5.0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
