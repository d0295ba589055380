"""Bytes on the bus per change, as sent: memsession's SET frames against raw pyzmq for the same value.

Part of ``python -m bench.replication`` (``--bytes`` runs only this). A worker
holds a ~1 KB session; each change sets one key, as a web request that
changes one value does, and the bus sends the delta of that change
(``changes.record_change``: the changed key alone) through its own send
path. A SUB socket on the hub's XPUB captures every frame the worker sent:
the bytes counted are topic plus payload as they left. Raw pyzmq sends the
same changed value (``msgpack`` of ``{name: value}``, and the whole session
for comparison) on a topic of its own through the same hub.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import mean
from typing import Any

import msgpack

__all__ = ["TARGET_BYTES", "bus_bytes", "bus_bytes_rows"]

#: Bytes on the bus for a one-key change of a 1 KB session: the target.
TARGET_BYTES = 200
_RAW = b"raw"


def _session(i: int) -> dict[str, Any]:
    return {"user": 42, "cart": [1, 2, 3], "csrf": "c" * 43, "step": i, "pad": "x" * 900}


def bus_bytes(runtime_dir: str, changes: int = 200) -> dict[str, float]:
    """Mean bytes per frame of each kind: ``delta``, ``whole`` (memsession), ``raw_value``, ``raw_whole``."""
    import zmq

    from memsession import SessionCache, ZmqBus, wire
    from memsession.changes import record_change
    from memsession.session import new_id, prepare_packed, session_key

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    pub = ctx.socket(zmq.PUB)
    sub.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL + wire.SET.encode())
    sub.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL + wire.BATCH.encode())
    sub.setsockopt(zmq.SUBSCRIBE, _RAW)
    sub.connect(f"ipc://{runtime_dir}/sub.sock")
    pub.connect(f"ipc://{runtime_dir}/pub.sock")
    sizes: dict[str, list[int]] = {"delta": [], "whole": [], "raw_value": [], "raw_whole": []}
    try:
        _await_path(pub, sub)
        bus = ZmqBus(runtime_dir=runtime_dir)
        with SessionCache(bus=bus) as cache:
            assert bus.replicator is not None  # attached
            own = wire.own_prefix(cache.origin, bus.replicator.epoch)

            def sent_by_worker() -> list[bytes]:
                while True:
                    frames = sub.recv_multipart()
                    if frames[0] != _RAW and wire.is_own(frames, own):
                        return frames

            for i in range(changes):
                sid = new_id()
                whole = _session(i)
                cache.set(sid, whole)  # a new session's first write: the whole of it
                sizes["whole"].append(_size(sent_by_worker()))
                held = cache.record(sid)
                assert held is not None
                after = {**whole, "step": i + 1}
                copy, packed, flat = prepare_packed(after, cache.config.max_session_bytes)
                wall = cache.clock.wall()
                _, delta = record_change(
                    held, session_key(sid), copy, ["step"], (), version=cache.hlc.now(), origin=cache.origin,
                    wall=wall, idle_timeout=cache.config.idle_timeout, max_age=cache.config.max_age, flat=flat,
                    size=len(packed),
                )
                bus.publish(delta, msgpack.packb(delta.data, use_bin_type=True))
                sizes["delta"].append(_size(sent_by_worker()))
                sizes["raw_value"].append(_raw(pub, sub, {"step": i + 1}))
                sizes["raw_whole"].append(_raw(pub, sub, after))
    finally:
        sub.close(linger=0)
        pub.close(linger=0)
        ctx.term()
    return {kind: mean(values) for kind, values in sizes.items()}


def _size(frames: list[bytes]) -> int:
    return sum(len(frame) for frame in frames)


def _raw(pub: Any, sub: Any, value: dict[str, Any]) -> int:
    """Bytes of raw pyzmq's message carrying ``value``, as it came through the hub."""
    pub.send_multipart([_RAW, msgpack.packb(value, use_bin_type=True)])
    while True:
        frames = sub.recv_multipart()
        if frames[0] == _RAW and frames[1] != b"":
            return _size(frames)


def _await_path(pub: Any, sub: Any, timeout: float = 20.0) -> None:
    """Until a probe comes back: the SUB's subscription has reached the hub (slow joiner)."""
    deadline = time.monotonic() + timeout
    while True:
        pub.send_multipart([_RAW, b""])
        if sub.poll(50):
            sub.recv_multipart()
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the hub never forwarded the probe")
    while sub.poll(200):  # probes still on their way
        sub.recv_multipart()


def bus_bytes_rows(sizes: dict[str, float],
                   verdict: Callable[[bool], str]) -> tuple[list[list[object]], list[object]]:
    """Table rows for ``sizes`` and the target row."""
    rows: list[list[object]] = [
        ["memsession SET, one-key change (delta)", round(sizes["delta"]), "raw pyzmq, the changed value",
         round(sizes["raw_value"])],
        ["memsession SET, the whole session", round(sizes["whole"]), "raw pyzmq, the whole session",
         round(sizes["raw_whole"])],
    ]
    target: list[object] = ["bus bytes per one-key change, 1 KB session", f"{sizes['delta']:.0f}",
                            f"<= {TARGET_BYTES}", verdict(sizes["delta"] <= TARGET_BYTES)]
    return rows, target
