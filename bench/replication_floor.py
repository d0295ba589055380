"""What a change costs in each process with no socket at all: the floor under the replication figures.

Part of ``python -m bench.replication`` (``--only floor``). The same stream of
1 KB changes as the throughput run, made by a ``SessionCache`` and encoded
by its replicator, is decoded and merged in-process: by a ``HubState`` (what
the hub does with every change) and by a receiving ``Replicator`` into a
``SessionCache`` (what every worker does), once as single messages and once
as BATCHes of 256; raw pyzmq's sender and receiver pack and unpack the same
payload with msgpack. CPU time (``time.process_time``), best of three.

Whatever the transport does, a change costs at least its encoding in the
sender and its decoding and merging in the hub and in every receiver; those
processes share the machine's cores, so ``cores / (sum of the three)`` bounds
the changes a second one machine can carry, sockets and wake-ups not counted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import msgpack

__all__ = ["FLOOR_HEADER", "ceiling", "cpu_count", "floor", "floor_rows"]

_CHANGES = 4096
_BATCH = 256


def _best(run: Callable[[], object], changes: int) -> float:
    """Best of three CPU microseconds per change of ``run()``."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time_ns()
        run()
        best = min(best, (time.process_time_ns() - start) / changes / 1000)
    return best


def floor(changes: int = _CHANGES) -> dict[str, float]:
    """CPU microseconds per change of each step, for single messages and for BATCHes."""
    from memsession import SessionCache
    from memsession.bus import BusConfig, Replicator
    from memsession.hub import HubState
    from memsession.session import new_id

    config = BusConfig(publish="inproc://floor", subscribe="inproc://floor", requests="inproc://floor")
    sender = SessionCache()
    sids = [new_id() for _ in range(1000)]
    text = "x" * 960
    made = [sender.set(sids[i % 1000], {"i": i, "t": i, "run": 1, "pad": text}) for i in range(changes)]
    items = [(r, msgpack.packb(r.data, use_bin_type=True)) for r in made]
    out: dict[str, float] = {}

    def encoded(batched: bool) -> list[list[bytes]]:
        rep = Replicator(SessionCache(), config)
        if batched:
            return [rep.outgoing_batch(items[i:i + _BATCH]) for i in range(0, changes, _BATCH)]
        return [rep.outgoing(item) for item in items]

    for name, batched in (("single", False), ("batch", True)):
        frames = encoded(batched)
        out[f"encode {name}"] = _best(lambda: encoded(batched), changes)  # noqa: B023 - run at once

        def hub(frames: list[list[bytes]] = frames) -> None:
            state = HubState()
            for message in frames:
                state.on_bus(message)

        def worker(frames: list[list[bytes]] = frames) -> None:
            cache = SessionCache()
            rep = Replicator(cache, config)
            rep.install_snapshot([], {}, 1)
            for i in range(0, len(frames), 64):  # as the receiver drains them
                rep.receive_many(frames[i:i + 64])
            cache.close()

        out[f"hub {name}"] = _best(hub, changes)
        out[f"worker {name}"] = _best(worker, changes)
    payload = [os.urandom(8) + text.encode() for _ in range(changes)]
    packed = [msgpack.packb([b"raw", p]) for p in payload]
    out["raw pack"] = _best(lambda: [msgpack.packb([b"raw", p]) for p in payload], changes)
    out["raw unpack"] = _best(lambda: [msgpack.unpackb(p) for p in packed], changes)
    sender.close()
    return out


def ceiling(costs: dict[str, float], cores: int) -> float:
    """The most changes a second ``cores`` cores carry at the floor's cost, travelling in BATCHes."""
    return cores * 1e6 / (costs["encode batch"] + costs["hub batch"] + costs["worker batch"])


def floor_rows(costs: dict[str, float], cores: int) -> list[list[object]]:
    """Table rows: each step's CPU per change, and the changes a second ``cores`` cores allow at most."""
    rows: list[list[object]] = []
    for name in ("single", "batch"):
        total = costs[f"encode {name}"] + costs[f"hub {name}"] + costs[f"worker {name}"]
        rows.append([f"memsession, {'one change a message' if name == 'single' else f'BATCHes of {_BATCH}'}",
                     costs[f"encode {name}"], costs[f"hub {name}"], costs[f"worker {name}"], total,
                     cores * 1e6 / total])
    raw = costs["raw pack"] + costs["raw unpack"]
    rows.append(["raw pyzmq (msgpack of the payload)", costs["raw pack"], "-", costs["raw unpack"], raw,
                 cores * 1e6 / raw])
    return rows


FLOOR_HEADER = ["CPU us per change, no sockets", "sender: encode", "hub: decode + merge",
                "receiver: decode + merge", "sum", "changes/s on all cores, at most"]


def cpu_count() -> int:
    """The cores this process may run on (what the sender, hub and receiver share)."""
    return len(os.sched_getaffinity(0))
