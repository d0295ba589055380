"""Messages drained together (``Replicator.receive_many``) end as they would one by one (``receive``).

A transport that wakes up to many waiting messages hands them over at once,
and their sets and destroys are merged under one lock. Whatever the messages
(sets, destroys, touches, clears, batches, heartbeats, duplicates, losses,
garbage) and however they are cut into drains, the replica and its counters
end exactly as if each had been received alone; and one message that fails
costs only itself.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from memsession import SessionCache, wire
from memsession.bus import BusConfig, Clear, Replicator
from memsession.bus.base import HELLO, RESYNC
from memsession.session import Record, new_id, session_key
from memsession.testing import FakeClock

COUNTED = ("received", "applied", "ignored", "duplicates", "gaps", "resyncs")

op = st.tuples(
    st.sampled_from(["set", "set", "set", "destroy", "touch", "clear", "beat", "advance", "garbage"]),
    st.integers(0, 2),  # publisher
    st.integers(0, 5),  # session
    st.integers(0, 1000),  # value
    st.sampled_from(["send", "send", "send", "batch", "lose", "twice"]),
)


class Publisher:
    """One process's stream, made with its own replicator (no bus): what it would send."""

    def __init__(self, clock: FakeClock) -> None:
        self.cache = SessionCache(clock=clock)
        self.rep = Replicator(self.cache, BusConfig())
        self.clock = clock
        self.live: dict[str, Record] = {}
        self.pending: list[Any] = []

    def record(self, kind: str, key: str, value: int) -> Any:
        wall = self.clock.wall()
        if kind == "clear":
            return Clear(self.cache.hlc.now())
        if kind == "touch":
            held = self.live.get(key)
            return None if held is None else held.touched(wall, wall + 600)
        version = self.cache.hlc.now()
        if kind == "destroy":
            self.live.pop(key, None)
            return Record(key, {}, version, self.rep.origin, wall, wall, wall + 600, True)
        record = Record(key, {"v": value}, version, self.rep.origin, wall, wall, wall + 600)
        self.live[key] = record
        return record


def _messages(ops: list[tuple[str, int, int, int, str]], clock: FakeClock) -> list[list[bytes]]:
    publishers = [Publisher(clock) for _ in range(3)]
    keys = [session_key(new_id()) for _ in range(6)]
    out: list[list[bytes]] = []

    def deliver(frames: list[bytes], how: str) -> None:
        if how != "lose":
            out.extend([frames, frames] if how == "twice" else [frames])

    for kind, who, session, value, how in ops:
        pub = publishers[who]
        if kind == "advance":
            clock.advance(value / 100)
            continue
        if kind == "garbage":
            deliver([wire.PROTOCOL + b"s", bytes([value % 256]) * 7], how)
            continue
        if kind == "beat":
            deliver(pub.rep.heartbeat(), how)
            continue
        item = pub.record(kind, keys[session], value)
        if item is None:
            continue
        pub.pending.append(item)
        if how != "batch" or len(pub.pending) >= 4:
            deliver(pub.rep.outgoing_batch(pub.pending), how)
            pub.pending = []
    for pub in publishers:
        if pub.pending:
            out.append(pub.rep.outgoing_batch(pub.pending))
    return out


def _receiver(clock: FakeClock) -> tuple[SessionCache, Replicator]:
    cache = SessionCache(clock=clock)
    rep = Replicator(cache, BusConfig())
    rep.install_snapshot([], {}, 1)  # joined: from now on a gap is a gap
    return cache, rep


def _seen(cache: SessionCache, rep: Replicator) -> tuple[Any, ...]:
    records = {r.key: (r.version, r.origin, r.deleted, r.data, r.accessed, r.expires) for r in cache.records()}
    return records, cache.cleared, {k: rep.counts[k] for k in COUNTED}, rep.dropped, rep.repair_due


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=60), st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_drained_messages_end_as_if_received_one_by_one(ops, cuts):
    clock = FakeClock()
    frames = _messages(ops, clock)
    one, one_rep = _receiver(clock)
    for message in frames:
        one_rep.receive(message)
    many, many_rep = _receiver(clock)
    start = 0
    i = 0
    while start < len(frames):
        size = cuts[i % len(cuts)]
        many_rep.receive_many(frames[start:start + size])
        start += size
        i += 1
    assert _seen(many, many_rep) == _seen(one, one_rep)


def test_what_to_act_on_is_told_whatever_else_was_drained_with_it():
    clock = FakeClock()
    cache, rep = _receiver(clock)
    other = Publisher(clock)
    hello = rep.hello()
    resync = wire.encode_resync(99, 1, rep.origin, 0)
    sets = [other.rep.outgoing(other.record("set", session_key(new_id()), n)) for n in range(3)]
    assert rep.receive_many([sets[0], hello, sets[1], resync, sets[2]]) >= {HELLO, RESYNC}
    assert rep.counts["received"] == 3 and len(cache.records()) == 3


class Poisoned(SessionCache):
    """A cache that fails on one key: what a bug in merging one record would do."""

    poison = ""

    def apply(self, record: Record) -> bool:
        if record.key == self.poison:
            raise RuntimeError("cannot merge this one")
        return super().apply(record)

    def apply_many(self, records: list[Record]) -> int:
        if any(r.key == self.poison for r in records):
            raise RuntimeError("cannot merge these")
        return super().apply_many(records)


def test_a_message_that_fails_costs_only_itself():
    clock = FakeClock()
    cache = Poisoned(clock=clock)
    rep = Replicator(cache, BusConfig())
    rep.install_snapshot([], {}, 1)
    other = Publisher(clock)
    keys = [session_key(new_id()) for _ in range(4)]
    cache.poison = keys[1]
    frames = [other.rep.outgoing(other.record("set", key, n)) for n, key in enumerate(keys)]
    garbage = [wire.PROTOCOL + b"s", b"\xc1 not msgpack"]
    rep.receive_many([frames[0], garbage, frames[1], frames[2]])
    rep.receive_many([frames[3]])
    assert sorted(r.key for r in cache.records()) == sorted([keys[0], keys[2], keys[3]])
    assert rep.dropped == {"malformed": 1, "error": 1}
    assert rep.counts["received"] == 4 and rep.counts["gaps"] == 0
