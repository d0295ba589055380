"""Forged sequence numbers: a jump past ``max_seq_jump`` is repaired, never adopted; nobody is silenced.

A frame that claims ``seq 2**64 - 1`` for another process's stream (its origin
and epoch copied from its traffic) used to become that stream's last number at
the hub and every worker, so all the victim's later writes, and its logouts,
were dropped as duplicates; a forged heartbeat with a new epoch ("it restarted")
did the same. The tracker tests drive ``SequenceTracker`` with
hypothesis; the others inject forged frames with a raw PUB socket into a real
hub process and check what two real worker processes still exchange.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession import SessionCache, wire
from memsession.bus.base import BusConfig, Replicator
from memsession.bus.sequence import DUP, GAP, JUMP, OK, SequenceTracker
from memsession.errors import ConfigError
from memsession.hub import HubConfig, HubState
from memsession.session import Record, new_id, session_key
from memsession.testing import FakeClock
from tests.pipe_workers import PipeWorker
from tests.test_replication_zmq import FAST, HubProcess

LARGEST_SEQ = 2**64 - 1
BOUND = 100  # a small bound keeps the hypothesis cases short
HOLD = 5.0

# -- the tracker --------------------------------------------------------------------------------------


def _tracker() -> SequenceTracker:
    return SequenceTracker(max_jump=BOUND, hold=HOLD)


def _started(t: SequenceTracker, last: int) -> None:
    """A stream of origin 1, epoch 9 seen in order up to ``last``."""
    t.heard(1, 0.0)
    for seq in range(1, last + 1):
        t.observe(1, 9, seq)


def test_a_jump_up_to_the_bound_is_a_gap_and_one_past_it_is_kept_out() -> None:
    t = _tracker()
    _started(t, 5)
    assert t.observe(1, 9, 5 + BOUND + 1) == JUMP
    assert t.heartbeat(1, 9, 5 + BOUND + 1) == JUMP
    assert t.vector() == {1: (9, 5)}
    assert t.observe(1, 9, 5 + BOUND) == GAP
    assert t.heartbeat(1, 9, 5 + 2 * BOUND) == GAP
    assert t.vector() == {1: (9, 5 + 2 * BOUND)}


# What a forger sends: a heartbeat, a data message or a BATCH, numbered past the bound.
forged_frames = st.tuples(
    st.sampled_from(["heartbeat", "data", "batch"]),
    st.integers(BOUND + 1, LARGEST_SEQ - 10),  # how far past the stream's last number
    st.integers(2, 10),  # BATCH length
)


def _send_forged(t: SequenceTracker, last: int, frame: tuple[str, int, int]) -> str:
    kind, ahead, items = frame
    seq = min(last + ahead, LARGEST_SEQ - items)
    if kind == "heartbeat":
        return t.heartbeat(1, 9, seq)
    if kind == "data":
        return t.observe(1, 9, seq)
    fresh, gap_at, jumped = t.accept(1, 9, seq, list(range(items)))
    assert fresh == [] and gap_at == 0
    return JUMP if jumped else "taken"


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 50),
    st.lists(st.tuples(st.integers(0, 20), forged_frames, st.floats(0.0, HOLD / 4)), min_size=1, max_size=20),
)
def test_forged_frames_between_heartbeats_never_silence_the_publisher(start: int, steps: Any) -> None:
    """However many forged frames arrive, the publisher's own messages keep being taken.

    Each step: the publisher sends a few messages and its heartbeat, a forger some
    frames, time passes (less than the hold between two heartbeats of the publisher).
    """
    t = _tracker()
    _started(t, start)
    last, now = start, 0.0
    for sent, forged, pause in steps:
        for _ in range(sent):
            last += 1
            t.heard(1, now)
            assert t.observe(1, 9, last) == OK
        t.heard(1, now)
        assert t.heartbeat(1, 9, last) == OK
        for _ in range(3):
            t.heard(1, now)
            assert _send_forged(t, last, forged) == JUMP
            now += pause
        assert t.vector() == {1: (9, last)}
    t.heard(1, now)
    assert t.observe(1, 9, last + 1) == OK


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.integers(BOUND + 1, 10**9), st.integers(1, 8))
def test_a_real_loss_past_the_bound_is_taken_up_after_the_hold(start: int, lost: int, beats: int) -> None:
    """A publisher whose receiver lost more than the bound: every frame is kept out until the hold passed."""
    t = _tracker()
    _started(t, start)
    real = start + lost
    now = 0.0
    step = HOLD / beats
    for _ in range(beats):
        t.heard(1, now)
        assert t.heartbeat(1, 9, real) == JUMP
        now += step * 0.999
    now = HOLD
    t.heard(1, now)
    assert t.observe(1, 9, real + 1) == GAP  # believed: taken up from here, and repaired
    assert t.observe(1, 9, real + 2) == OK
    assert t.vector() == {1: (9, real + 2)}


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.integers(2, BOUND), st.integers(1, 3 * BOUND))
def test_a_forged_claim_within_the_bound_costs_at_most_the_bound(start: int, ahead: int, sent: int) -> None:
    """The residual risk: a claim within the bound is a gap, and hides at most ``ahead`` numbers.

    The publisher's messages up to the claimed number are taken as duplicates;
    from the one after it on, everything is taken again.
    """
    t = _tracker()
    _started(t, start)
    assert t.heartbeat(1, 9, start + ahead) == GAP
    verdicts = [t.observe(1, 9, start + i) for i in range(1, sent + 1)]
    hidden = min(ahead, sent)
    assert verdicts == [DUP] * hidden + [OK] * (sent - hidden)


def test_a_forged_restart_is_undone_when_the_replaced_epoch_still_speaks_after_the_hold() -> None:
    t = _tracker()
    _started(t, 3)
    assert t.heartbeat(1, 10, 1) == GAP  # "origin 1 restarted in epoch 10": believed at once
    t.heard(1, HOLD * 0.99)
    assert t.observe(1, 9, 4) == DUP  # within the hold: a straggler, as after a real restart
    t.heard(1, HOLD)
    assert t.observe(1, 9, 5) == GAP  # still speaking: alive, taken back, repaired
    assert t.observe(1, 9, 6) == OK and t.vector() == {1: (9, 6)}
    assert t.heartbeat(1, 10, 1) == DUP  # the false epoch is the straggler now
    t.heard(1, 2 * HOLD)
    assert t.observe(1, 9, 7) == OK


def test_a_batch_that_stood_the_hold_is_taken_whole_and_marks_the_gap() -> None:
    t = _tracker()
    _started(t, 3)
    assert t.accept(1, 9, 1000, ["a", "b"]) == ([], 0, True)
    t.heard(1, HOLD)
    assert t.accept(1, 9, 1002, ["c", "d"]) == (["c", "d"], 1002, False)
    assert t.observe(1, 9, 1004) == OK and t.observe(1, 9, 1003) == DUP


def test_a_snapshot_vector_is_taken_however_far_ahead_and_clears_a_claim() -> None:
    t = _tracker()
    _started(t, 3)
    assert t.heartbeat(1, 9, 10**6) == JUMP
    t.splice({1: (9, 10**6)})  # the hub saw the messages we lost
    assert t.observe(1, 9, 10**6 + 1) == OK


def test_the_bound_and_its_hold_are_options_checked_at_construction() -> None:
    assert BusConfig().max_seq_jump == HubConfig().max_seq_jump == 10_000
    with pytest.raises(ConfigError):
        BusConfig(max_seq_jump=0)
    with pytest.raises(ConfigError):
        BusConfig(heartbeat=1.0, silence=3.0, seq_jump_hold=1.0)
    with pytest.raises(ConfigError):
        HubConfig(seq_jump_hold=0)
    with pytest.raises(ConfigError):
        HubConfig(max_seq_jump=-1)


# -- the replicator and the hub, without sockets ------------------------------------------------


def _record(key: str, data: dict[str, Any], origin: int, now: float | None = None) -> Record:
    now = time.time() if now is None else now
    return Record(key, data, int(now * 1000) << 16, origin, now, now, now + 600)


def test_a_forged_heartbeat_costs_a_worker_one_repair_and_the_victims_writes_go_on() -> None:
    clock = FakeClock(wall=time.time())
    cache = SessionCache(clock=clock)
    try:
        replicator = Replicator(cache, BusConfig(), clock=clock)
        replicator.install_snapshot([], {}, 1 << 12)
        victim, epoch = 42, 7 << 12
        first = _record("a" * 32, {"n": 1}, victim)
        replicator.receive(wire.encode_record_message(first, victim, epoch, 1, 0))
        assert replicator.receive(wire.encode_heartbeat(victim, epoch, LARGEST_SEQ, 0)) == "repair"
        assert replicator.dropped == {"seq jump": 1}
        replicator.install_snapshot([], {victim: (epoch, 1)}, 1 << 12)  # the hub never took the claim
        later = new_id()
        message = wire.encode_record_message(_record(session_key(later), {"n": 2}, victim), victim, epoch, 2, 0)
        assert replicator.receive(message) == "applied"
        assert cache.get(later) == {"n": 2}
    finally:
        cache.close()


def test_a_forged_data_frame_is_kept_out_of_the_hub_which_asks_the_victim_to_resync() -> None:
    state = HubState(clock=FakeClock(wall=time.time()))
    victim, epoch = 42, 7 << 12
    state.on_bus(wire.encode_record_message(_record("a" * 32, {"n": 1}, victim), victim, epoch, 1, 0))
    forged = _record("f" * 32, {"forged": True}, victim)
    published = state.on_bus(wire.encode_record_message(forged, victim, epoch, LARGEST_SEQ, 0))
    assert [wire.decode(f).op for f in published] == [wire.RESYNC]
    assert "f" * 32 not in state.replica and state.stats()["dropped"] == {"seq jump": 1}
    state.on_bus(wire.encode_record_message(_record("b" * 32, {"n": 2}, victim), victim, epoch, 2, 0))
    assert "b" * 32 in state.replica and state.tracker.vector()[victim] == (epoch, 2)


# -- real processes over real ZeroMQ ---------------------------------------------------------------


def _worker(conn: Any, bus_options: dict[str, Any]) -> None:
    from memsession import SessionCache, ZmqBus

    bus = ZmqBus(**bus_options)
    cache = SessionCache(bus=bus, touch_interval=3600)
    try:
        joined = bus.wait_joined(20)
        conn.send(("ready", (cache.origin, joined)))
        while True:
            cmd, arg = conn.recv()
            if cmd == "set":
                cache.set(arg[0], arg[1])
                conn.send(("set", None))
            elif cmd == "get":
                conn.send(("get", cache.get(arg)))
            elif cmd == "destroy":
                cache.destroy(arg)
                conn.send(("destroy", None))
            elif cmd == "stats":
                conn.send(("stats", cache.stats()["replication"]))
            elif cmd == "stop":
                break
    finally:
        cache.close()
        conn.send(("bye", None))


class Worker(PipeWorker):
    """A worker process with its own SessionCache on the bus, driven over a pipe."""

    def __init__(self, bus_options: dict[str, Any]) -> None:
        super().__init__(_worker, bus_options)
        self.origin, joined = self.hello
        assert joined, "worker did not join the bus"


def _poll(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Bus:
    """A hub process and raw sockets on its endpoints: one listens, one forges."""

    def __init__(self, runtime_dir: str) -> None:
        import zmq

        self.runtime_dir = runtime_dir
        self.hub = HubProcess(["--runtime-dir", runtime_dir], f"ipc://{runtime_dir}/req.sock").start()
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL + wire.HEARTBEAT.encode())
        self.sub.connect(f"ipc://{runtime_dir}/sub.sock")
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.connect(f"ipc://{runtime_dir}/pub.sock")
        self.workers: list[Worker] = []

    def spawn(self) -> Worker:
        worker = Worker({"runtime_dir": self.runtime_dir, **FAST})
        self.workers.append(worker)
        return worker

    def stream_of(self, origin: int) -> tuple[int, int]:
        """``(epoch, seq)`` of ``origin``'s stream, read off its heartbeats as anyone on the bus can."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.sub.poll(100):
                msg = wire.decode(self.sub.recv_multipart())
                if msg.origin == origin:
                    return msg.epoch, msg.seq
        raise AssertionError(f"no heartbeat of origin {origin:x} heard")

    def forge(self, messages: list[list[bytes]]) -> None:
        """Publish ``messages`` once, after proving our PUB reaches the hub (the hub counts garbage)."""
        def garbage_counted() -> bool:
            self.pub.send_multipart([b"ms5s", b"\xc1 not msgpack"])
            return bool(self.hub.stats()["dropped"].get("malformed"))

        _poll(garbage_counted, 10, "the hub to see injected frames")
        for frames in messages:
            self.pub.send_multipart(frames)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.sub.close(linger=0)
        self.pub.close(linger=0)
        self.ctx.term()
        self.hub.stop()


@pytest.fixture
def bus() -> Iterator[Bus]:
    with tempfile.TemporaryDirectory(prefix="ms-") as d:
        bus = Bus(os.path.join(d, "rt"))
        try:
            yield bus
        finally:
            bus.close()


def _forged_messages(kind: str, origin: int, epoch: int, key: str) -> list[list[bytes]]:
    """A forged heartbeat, data message or burst of heartbeats claiming the largest seq; or a restart."""
    if kind == "data":
        forged = _record(key, {"forged": True}, origin)
        return [wire.encode_record_message(forged, origin, epoch, LARGEST_SEQ, 0)]
    if kind == "restart":  # "origin restarted": a new epoch, already at seq 1
        return [wire.encode_heartbeat(origin, epoch ^ 1, 1, 0)]
    count = 50 if kind == "burst" else 1
    return [wire.encode_heartbeat(origin, epoch, LARGEST_SEQ - i, 0) for i in range(count)]


@pytest.mark.zmq
@pytest.mark.parametrize("kind", ["heartbeat", "data", "burst", "restart"])
def test_a_forged_frame_does_not_silence_a_worker(bus: Bus, kind: str) -> None:
    victim, other = bus.spawn(), bus.spawn()
    logged_in = new_id()
    victim.call(("set", (logged_in, {"user": "ada"})))
    _poll(lambda: other.call(("get", logged_in)) == {"user": "ada"}, 10, "the session to reach the other")
    epoch, _ = bus.stream_of(victim.origin)
    forged_sid = new_id()
    forged = _forged_messages(kind, victim.origin, epoch, session_key(forged_sid))
    gaps = other.call(("stats", None))["gaps"]
    bus.forge(forged)
    _poll(lambda: bus.hub.stats()["gaps"] >= 1, 10, "the hub to take the forged frame")
    _poll(lambda: other.call(("stats", None))["gaps"] > gaps, 10, "the other worker to take the forged frame")

    written = [new_id() for _ in range(5)]
    for n, sid in enumerate(written):
        victim.call(("set", (sid, {"n": n})))
    victim.call(("destroy", logged_in))  # a logout

    def arrived() -> int:
        return sum(other.call(("get", sid)) == {"n": n} for n, sid in enumerate(written))

    # A forged restart holds the victim's stream back for seq_jump_hold (5 s) at most, then a repair.
    deadline = time.monotonic() + 20
    while arrived() < len(written) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert arrived() == len(written), f"{arrived()} of {len(written)} writes of the victim got through"
    _poll(lambda: other.call(("get", logged_in)) is None, 10, "the logout to reach the other worker")
    at_hub = bus.hub.snapshot()  # {key: (version, origin, deleted, data)}
    assert all(session_key(sid) in at_hub for sid in written)
    assert at_hub.get(session_key(logged_in), (0, 0, True))[2]
    if kind == "restart":
        return
    # Every forged frame was kept out and counted (the last of a burst may still be on its way).
    _poll(lambda: bus.hub.stats()["dropped"].get("seq jump") == len(forged), 10, "the hub to count them")
    _poll(lambda: other.call(("stats", None))["dropped"].get("seq jump") == len(forged), 10,
          "the other worker to count them")
    if kind == "data":  # what the forged frame carried was kept out everywhere
        assert session_key(forged_sid) not in at_hub and other.call(("get", forged_sid)) is None
