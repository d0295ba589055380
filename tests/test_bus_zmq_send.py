"""Sending on the ZeroMQ bus: a change goes out from the thread that made it, or queued behind others.

A real hub in a thread and a listening SUB on its XPUB see every frame a
``ZmqBus`` sends. Whichever thread sends a change (the caller, at once, or the
sender thread, batched), the stream stays numbered without a gap, each
caller's changes leave in the order it made them, and closing the bus sends
everything already made.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from memsession import SessionCache, ZmqBus, wire
from memsession.hub import Hub
from memsession.session import Record, new_id

pytestmark = pytest.mark.zmq

_PROBE = b"probe"
#: Heartbeats far apart: after joining, only the test's own changes take the send lock.
QUIET = {"heartbeat": 30.0, "silence": 60.0, "seq_jump_hold": 61.0, "forget_after": 120.0}


class Listener:
    """A SUB on the hub's XPUB keeping every bus message, its subscription proven live first."""

    def __init__(self, runtime_dir: str) -> None:
        import zmq

        self.ctx = zmq.Context()
        #: BATCH messages seen by ``changes``.
        self.batches = 0
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL)
        self.sub.setsockopt(zmq.SUBSCRIBE, _PROBE)
        self.sub.connect(f"ipc://{runtime_dir}/sub.sock")
        probe = self.ctx.socket(zmq.PUB)
        try:
            probe.connect(f"ipc://{runtime_dir}/pub.sock")
            deadline = time.monotonic() + 10
            while not self.sub.poll(20):
                assert time.monotonic() < deadline, "the hub never forwarded a probe"
                probe.send_multipart([_PROBE, b""])
        finally:
            probe.close(linger=0)

    def changes(self, origin: int, epoch: int, count: int, timeout: float = 20.0) -> list[tuple[int, Record]]:
        """``(seq, record)`` of the first ``count`` changes of stream ``(origin, epoch)``, in arrival order."""
        out: list[tuple[int, Record]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            assert time.monotonic() < deadline, f"{len(out)} of {count} changes arrived"
            if not self.sub.poll(50):
                continue
            frames = self.sub.recv_multipart()
            if frames[0] == _PROBE:
                continue
            msg = wire.decode(frames)
            if (msg.origin, msg.epoch) != (origin, epoch) or msg.op not in (wire.SET, wire.BATCH):
                continue
            items = msg.body if msg.op == wire.BATCH else [(msg.op, msg.body)]
            self.batches += msg.op == wire.BATCH
            out += [(msg.seq + i, record) for i, (_, record) in enumerate(items)]
        return out

    def close(self) -> None:
        self.sub.close(linger=0)
        self.ctx.term()


@pytest.fixture
def hub(tmp_path: Any) -> Any:
    runtime_dir = str(tmp_path / "rt")
    with Hub(runtime_dir=runtime_dir):
        listener = Listener(runtime_dir)
        try:
            yield runtime_dir, listener
        finally:
            listener.close()


def _stream(bus: ZmqBus) -> tuple[int, int]:
    assert bus.replicator is not None
    return bus.replicator.origin, bus.replicator.epoch


def test_changes_of_concurrent_callers_are_numbered_without_a_gap_each_in_order_and_all_sent_by_close(hub):
    runtime_dir, listener = hub
    bus = ZmqBus(runtime_dir=runtime_dir)
    cache = SessionCache(bus=bus)
    callers, each = 8, 250
    start = threading.Barrier(callers)

    def write(caller: int) -> None:
        sids = [new_id() for _ in range(10)]
        start.wait()
        for n in range(each):
            cache.set(sids[n % 10], {"caller": caller, "n": n})

    threads = [threading.Thread(target=write, args=(c,)) for c in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    origin, epoch = _stream(bus)
    cache.close()  # at once: what is still queued must go out all the same
    changes = listener.changes(origin, epoch, callers * each)
    assert [seq for seq, _ in changes] == list(range(1, callers * each + 1))
    for caller in range(callers):
        assert [r.data["n"] for _, r in changes if r.data["caller"] == caller] == list(range(each))


def test_a_change_goes_out_at_once_unless_others_wait_and_then_leaves_behind_them(hub):
    runtime_dir, listener = hub
    bus = ZmqBus(runtime_dir=runtime_dir, **QUIET)
    cache = SessionCache(bus=bus)
    sid = new_id()
    deadline = time.monotonic() + 10
    while bus._sending.lock.locked():  # a last hello of the join may still be on its way
        assert time.monotonic() < deadline
        time.sleep(0.001)
    cache.set(sid, {"n": 0})
    assert bus.stats()["queued_sends"] == 0  # sent by this thread: the sender thread had nothing to do
    with bus._sending.lock:  # another thread sending: these wait for the sender thread
        for n in range(1, 6):
            cache.set(sid, {"n": n})
        assert bus.stats()["queued"] == 5
    cache.set(sid, {"n": 6})  # never ahead of what is still queued
    origin, epoch = _stream(bus)
    cache.close()
    changes = listener.changes(origin, epoch, 7)
    assert [(seq, r.data["n"]) for seq, r in changes] == [(n + 1, n) for n in range(7)]
    assert bus.stats()["queued_sends"] >= 5


def test_heartbeats_carry_the_last_number_sent_whichever_thread_sent_it(hub):
    runtime_dir, listener = hub
    bus = ZmqBus(runtime_dir=runtime_dir, heartbeat=0.05, silence=0.5)
    cache = SessionCache(bus=bus)
    sids = [new_id() for _ in range(20)]
    for n in range(200):
        cache.set(sids[n % 20], {"n": n})
    origin, epoch = _stream(bus)
    listener.changes(origin, epoch, 200)
    deadline = time.monotonic() + 10
    while True:  # a beat after the last change says 200: never more than was sent
        assert time.monotonic() < deadline, "no heartbeat after the changes"
        if not listener.sub.poll(50):
            continue
        frames = listener.sub.recv_multipart()
        if frames[0] == _PROBE:
            continue
        msg = wire.decode(frames)
        if msg.op == wire.HEARTBEAT and (msg.origin, msg.epoch) == (origin, epoch):
            assert msg.seq == 200
            break
    cache.close()


def test_a_stream_of_changes_travels_in_batches_numbered_as_its_changes(hub, monkeypatch):
    from memsession.bus import zmq_sender

    runtime_dir, listener = hub
    monkeypatch.setattr(zmq_sender, "_QUIET", 3600.0)  # every change after the first follows it closely
    bus = ZmqBus(runtime_dir=runtime_dir)
    cache = SessionCache(bus=bus)
    sid = new_id()
    for n in range(600):
        cache.set(sid, {"n": n})
    origin, epoch = _stream(bus)
    cache.close()
    changes = listener.changes(origin, epoch, 600)
    assert [(seq, r.data["n"]) for seq, r in changes] == [(n + 1, n) for n in range(600)]
    assert bus.stats()["queued_sends"] >= 599  # (the first may have gone at once)
    assert listener.batches > 0  # the sender thread's wake-ups carried several changes each
