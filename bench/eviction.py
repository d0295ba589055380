"""Floods of new sessions against a full SessionCache: who is logged out under each eviction policy.

``python -m bench.eviction [--writes 1000000] [--quick] [--budget 600]``

A ``SessionCache`` with room for 10,000 sessions; 1,000 users who logged in
and came back once, then each read their session every second; and a flood
of cookie-less writing requests (each makes a new session, written once) at
20,000 a second, interleaved with the reads: 20 flood writes, one user's
read, 20 writes, the next user's read... A ``FakeClock`` moves by one
21,000th of a second per operation, so "every second" is exact and a
simulated second takes as long as the cache needs. The flood is faster than
the cache is large, so under plain LRU a session read once a second is pushed
out between two reads.

Each policy (segmented LRU, the default; plain LRU, ``protected_fraction=0``)
runs without a store (an evicted session is gone: its user is logged out,
counted, and logs in again) and with one (``Persistence`` over a
``JsonFileStore``, write-through: an evicted session is read back, counted).
Then nanoseconds per get and set for the cores (``SegmentedLRUCache``,
``ExpiringLRUCache``, ``cachetools.LRUCache``) and for ``SessionCache`` on
each core: hits over every key (a fifth of them promote an entry from
probation, the segmented policy's worst case) and over the newest half (the
users who keep coming back, all in protected). ``--budget`` bounds the wall time of the four flood runs: a run
past its share stops early and says how far it got.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from memsession import Config, ExpiringLRUCache, SegmentedLRUCache, SessionCache, new_id
from memsession.testing import FakeClock
from persist.jsonfile import JsonFileStore
from persist.persistence import PersistConfig, Persistence

from .table import ns_per_op, render, verdict

MAXSIZE = 10_000
USERS = 1_000
FLOOD_PER_SECOND = 20_000
IDLE, MAX_AGE = 1800.0, 43200.0
Loop = Callable[[Sequence[str]], None]
POLICIES = (("segmented LRU", Config().protected_fraction), ("plain LRU", 0.0))



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


@dataclass
class Flood:
    """What one flood run did."""

    policy: str
    store: bool
    writes: int
    simulated: float  # seconds
    wall: float  # seconds
    users_lost: int  # users logged out at least once
    logouts: int
    read_backs: int  # sessions the store gave back after an eviction
    evicted: int  # sessions the cache evicted to make room
    complete: bool


def flood(policy: str, fraction: float, writes: int, store_dir: str | None, budget: float) -> Flood:
    """One run: log the users in, then flood while each reads once a simulated second."""
    clock = FakeClock()
    persistence = None
    if store_dir is not None:
        path = os.path.join(store_dir, f"{fraction}.json")
        store = JsonFileStore(path, save_interval=None, fsync=False, clock=clock)
        persistence = Persistence(store, PersistConfig(mode="write_through"))
    cache = SessionCache(clock=clock, maxsize=MAXSIZE, idle_timeout=IDLE, max_age=MAX_AGE,
                         protected_fraction=fraction, persistence=persistence)
    try:
        sessions = [new_id() for _ in range(USERS)]
        for user, sid in enumerate(sessions):
            cache.set(sid, {"user": user})  # log in
        clock.advance(0.5)
        assert all(cache.get(sid) is not None for sid in sessions)  # and come back once
        clock.advance(0.5)
        per_read = FLOOD_PER_SECOND // USERS
        step = 1.0 / (FLOOD_PER_SECOND + USERS)
        lost: set[int] = set()
        logouts = written = 0
        started = time.perf_counter()
        give_up = started + budget
        complete = True
        while written < writes:
            if time.perf_counter() > give_up:
                complete = False
                break
            for user in range(USERS):
                for _ in range(min(per_read, writes - written)):
                    cache.set(new_id(), {"visit": written})
                    written += 1
                    clock.advance(step)
                if cache.get(sessions[user]) is None:
                    logouts += 1
                    lost.add(user)
                    sessions[user] = new_id()
                    cache.set(sessions[user], {"user": user})  # logs in again
                clock.advance(step)
                if written >= writes:
                    break
        wall = time.perf_counter() - started
        stats = cache.stats()
        read_backs = stats["persistence"]["read_hits"] if persistence is not None else 0
        return Flood(policy, persistence is not None, written, written / FLOOD_PER_SECOND, wall, len(lost),
                     logouts, read_backs, stats["evicted"]["size"], complete)
    finally:
        cache.close()


def fresh_sets_ns(cache: Any, pool: Sequence[str], chunk: int, value: Any) -> float:
    """Best-of ns per insert of a key not held (a full cache evicts one each time), minus the loop's cost."""

    def empty(keys: Sequence[str]) -> None:
        for _ in keys:
            pass

    best = float("inf")
    bare = float("inf")
    for start in range(0, len(pool) - chunk + 1, chunk):
        keys = pool[start:start + chunk]
        gc.disable()
        t = time.perf_counter_ns()
        for k in keys:
            cache[k] = value
        elapsed = time.perf_counter_ns() - t
        t = time.perf_counter_ns()
        empty(keys)
        loop = time.perf_counter_ns() - t
        gc.enable()
        best, bare = min(best, elapsed / chunk), min(bare, loop / chunk)
    return max(best - bare, 0.0)


def op_costs(lookups: int) -> dict[str, dict[str, float]]:
    """ns per get-hit (any key; the newest half), set of a held key and of a new one, at ``MAXSIZE``."""
    keys = [new_id() for _ in range(MAXSIZE)]
    rnd = random.Random(7)
    hits = [keys[rnd.randrange(MAXSIZE)] for _ in range(lookups)]
    # The users who keep coming back: the most recently written half, which fits in protected.
    hot = [keys[MAXSIZE // 2 + rnd.randrange(MAXSIZE // 2)] for _ in range(lookups)]
    chunk = max(1000, lookups // 10)
    pool = [new_id() for _ in range(chunk * 5)]
    value = {"user": 1}
    subjects: dict[str, Callable[[], Any]] = {
        "SegmentedLRUCache": lambda: SegmentedLRUCache(MAXSIZE, IDLE, MAX_AGE),
        "ExpiringLRUCache": lambda: ExpiringLRUCache(MAXSIZE, IDLE, MAX_AGE),
        "cachetools.LRUCache": lambda: LRUCache(MAXSIZE),
    }
    results: dict[str, dict[str, float]] = {}
    for name, make in subjects.items():
        cache = make()
        for k in keys:
            cache[k] = value

        def get_hit(ks: Sequence[str], c: Any = cache) -> None:
            for k in ks:
                c[k]

        def put(ks: Sequence[str], c: Any = cache, v: Any = value) -> None:
            for k in ks:
                c[k] = v

        results[name] = {"get-hit": ns_per_op(get_hit, hits), "get-hot": ns_per_op(get_hit, hot),
                         "set": ns_per_op(put, hits), "set-new": fresh_sets_ns(cache, pool, chunk, value)}
        del cache
        gc.collect()
    few = hits[: max(1, len(hits) // 4)]  # set copies and validates the data: fewer rounds suffice
    for policy, fraction in POLICIES:
        facade = SessionCache(maxsize=MAXSIZE, idle_timeout=IDLE, max_age=MAX_AGE,
                              protected_fraction=fraction)
        for k in keys:
            facade.set(k, value)

        f_get, f_set, _ = facade_loops(facade, value)

        results[f"SessionCache, {policy}"] = {
            "get-hit": ns_per_op(f_get, hits),
            "get-hot": ns_per_op(f_get, hot),
            "set": ns_per_op(f_set, few, repeat=3),
            "set-new": float("nan"),
        }
        facade.close()
        del facade
        gc.collect()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eviction", description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=1_000_000, help="flood writes per run")
    parser.add_argument("--quick", action="store_true", help="100,000 writes per run, fewer lookups")
    parser.add_argument("--budget", type=float, default=600.0,
                        help="wall seconds for the four flood runs together (each gets a quarter)")
    args = parser.parse_args(argv)
    writes = 100_000 if args.quick else args.writes
    lookups = 50_000 if args.quick else 200_000

    print(f"{MAXSIZE:,}-session cache, {USERS:,} users reading once a second, "
          f"{writes:,} cookie-less writes at {FLOOD_PER_SECOND:,}/s (simulated clock)")
    runs: list[Flood] = []
    store_dir = tempfile.mkdtemp(prefix="msb-evict-")
    try:
        for with_store in (False, True):
            for policy, fraction in POLICIES:
                store = store_dir if with_store else None
                runs.append(flood(policy, fraction, writes, store, args.budget / 4))
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    print(render(
        "\nusers logged out by the flood",
        ["policy", "store", "writes", "sim s", "wall s", "users lost", "logouts", "read back", "evicted"],
        [[r.policy, "JsonFileStore" if r.store else "none",
          f"{r.writes:,}" + ("" if r.complete else " (budget)"),
          r.simulated, r.wall, r.users_lost, r.logouts, r.read_backs, r.evicted] for r in runs],
    ))
    by = {(r.policy, r.store): r for r in runs}
    segmented, lru = POLICIES[0][0], POLICIES[1][0]
    rows = [
        ["segmented, no store: users logged out", by[segmented, False].users_lost, "0",
         verdict(by[segmented, False].users_lost == 0)],
        ["plain LRU, no store: users logged out", by[lru, False].users_lost, "> 0 (the finding)",
         verdict(by[lru, False].users_lost > 0)],
        ["segmented, store: users logged out", by[segmented, True].users_lost, "0",
         verdict(by[segmented, True].users_lost == 0)],
        ["segmented, store: sessions read back", by[segmented, True].read_backs, "0",
         verdict(by[segmented, True].read_backs == 0)],
    ]
    print(render("\ntargets", ["what", "measured", "target", ""], rows))

    costs = op_costs(lookups)
    ops = ["get-hit", "get-hot", "set", "set-new"]
    print(render(f"\nns/op with {MAXSIZE:,} entries (best of 5, loop cost removed): get-hit and set over "
                 "every key, get-hot over the newest half, set-new evicts one",
                 ["subject", *ops], [[name, *(costs[name][op] for op in ops)] for name in costs]))
    seg, plain = costs["SegmentedLRUCache"], costs["ExpiringLRUCache"]
    print("segmented / ExpiringLRUCache: " + ", ".join(f"{op} {seg[op] / plain[op]:.2f}x" for op in ops))
    failed = by[segmented, False].users_lost or by[segmented, True].users_lost
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
