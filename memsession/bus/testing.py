"""The bus contract suite: every transport, ours or yours, passes the same tests.

A transport is tested through a ``BusNetwork``: caches joined through one hub
of that transport, plus the few operations the suite needs that differ per
transport (waiting for delivery, losing messages, restarting the hub,
putting raw frames on the bus). Subclass ``BusContract`` in a pytest module
and provide one fixture, ``make_network``, returning a new network with a
fresh hub each time it is called::

    import pytest
    from memsession.bus.testing import BusContract, BusNetwork

    class MyNetwork(BusNetwork):
        ...  # join, wait_until, heartbeat, inject, request, losing, unreachable, restart_hub, close

    class TestMyBus(BusContract):
        @pytest.fixture
        def make_network(self):
            return MyNetwork

The suite closes every network it makes at the end of each test, and the
network closes every cache it joined. ``tests/test_bus_contract.py`` holds the
networks of the in-memory twin and of ZeroMQ, as examples.

What it checks: sets, destroys, touches and clears reach every other cache
and the hub; concurrent writes end on one winner everywhere; no late write
brings a destroyed session back; a joining cache holds the hub's sessions
when ``attach`` returns and, joining a busy bus, misses nothing and counts no
gap; a lost message is found at the next message or heartbeat and repaired
(``gaps`` and ``repairs`` move); a restarted hub gets every cache's state
back, the clear watermark included; ``invalidate`` mode drops copies and
reads through the hub; ``lookup`` tells "unknown" from "no answer";
``publish`` neither raises nor waits while the hub is unreachable;
``close()`` is idempotent; ``stats()`` has the documented keys; malformed
frames are dropped and counted.

What a network promises: ``inject`` delivers in order to the hub and to
every cache joined so far (a network over sockets first makes sure its
publisher is connected); ``request`` frames are ``wire.encode_request``
pairs. Bad frames in the suite all carry this protocol's topic prefix,
since a transport may filter others out before any cache sees them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from .. import wire
from ..clock import COUNTER_BITS
from ..errors import SessionDestroyed
from ..session import Record, new_id, session_key
from ..session_cache import SessionCache
from ._testing_network import (
    DOCUMENTED_STATS,
    BusNetwork,
    ForgedStream,
    bus_of,
    forged_record,
    split_options,
    state_of,
)
from ._testing_repair import RepairContract
from .base import Bus

__all__ = ["DOCUMENTED_STATS", "BusContract", "BusNetwork", "ForgedStream", "bus_of", "forged_record",
           "split_options", "state_of"]


class BusContract(RepairContract):
    """What every ``Bus`` transport must do. Subclasses provide ``make_network``."""

    @pytest.fixture
    def make_network(self) -> Callable[[], BusNetwork]:
        raise NotImplementedError("subclasses provide a make_network fixture")

    @pytest.fixture
    def network(self, make_network: Callable[[], BusNetwork]) -> Iterator[BusNetwork]:
        made = make_network()
        try:
            yield made
        finally:
            made.close()

    # -- the protocol ---------------------------------------------------------------------

    def test_is_a_bus(self, network: BusNetwork) -> None:
        update, invalidate = network.join(), network.join(mode="invalidate")
        assert isinstance(update.bus, Bus) and isinstance(invalidate.bus, Bus)
        assert bus_of(update).reads_through is False and bus_of(invalidate).reads_through is True

    def test_stats_have_the_documented_keys_and_a_fresh_dict_each_time(self, network: BusNetwork) -> None:
        a, b = network.join(), network.join()
        stats = bus_of(a).stats()
        assert set(DOCUMENTED_STATS) <= set(stats), sorted(set(DOCUMENTED_STATS) - set(stats))
        assert isinstance(stats["dropped"], dict)
        assert stats["repairs"] == 1 and stats["gaps"] == 0  # the join snapshot, nothing lost
        assert a.stats()["replication"].keys() == stats.keys()
        stats["published"] = -1
        stats["dropped"]["made up"] = 1
        assert bus_of(a).stats()["published"] >= 0 and "made up" not in bus_of(a).stats()["dropped"]
        published, received = bus_of(a).stats()["published"], bus_of(b).stats()["received"]
        a.set(new_id(), {"n": 1})
        network.wait_until(lambda: bus_of(a).stats()["published"] == published + 1, "the change to be counted as sent")
        network.wait_until(lambda: bus_of(b).stats()["received"] == received + 1,
                           "the change to be counted as received")
        lag = bus_of(b).stats()
        assert lag["lag_ms_p50"] is not None and lag["lag_ms_p99"] is not None

    def test_close_is_idempotent_and_a_closed_bus_never_raises(self, network: BusNetwork) -> None:
        a, b, c = network.join(), network.join(), network.join()
        bus = bus_of(b)
        bus.close()
        bus.close()
        b.close()
        b.close()
        late = forged_record(new_id(), {"n": 1}, version=a.hlc.now(), origin=b.origin, clock=network.clock)
        bus.publish(late)  # after close: dropped, never raised
        assert set(DOCUMENTED_STATS) <= set(bus.stats())
        sid = new_id()
        a.set(sid, {"still": "replicating"})
        network.wait_until(lambda: c.get(sid) == {"still": "replicating"}, "the others to go on replicating")

    # -- changes reach every other cache --------------------------------------------------

    def test_a_set_reaches_every_other_cache_and_the_hub(self, network: BusNetwork) -> None:
        a, b, c = network.join(), network.join(), network.join()
        sid = new_id()
        a.set(sid, {"n": 1, "nested": {"list": [1, "two", None]}})
        network.wait_until(lambda: b.get(sid) == c.get(sid) == {"n": 1, "nested": {"list": [1, "two", None]}},
                           "the set to reach b and c")
        b.set(sid, {"n": 2})
        network.wait_until(lambda: a.get(sid) == c.get(sid) == {"n": 2}, "b's set to reach a and c")
        network.settle([a, b, c])

    def test_a_destroy_reaches_every_other_cache_and_stays(self, network: BusNetwork) -> None:
        a, b, c = network.join(), network.join(), network.join()
        sid = new_id()
        a.set(sid, {"n": 1})
        network.wait_until(lambda: b.get(sid) == c.get(sid) == {"n": 1}, "the set to arrive")
        c.destroy(sid)
        network.wait_until(lambda: all((r := x.record(sid)) is not None and r.deleted for x in (a, b)),
                           "the tombstone to reach a and b")
        assert a.get(sid) is None and b.get(sid) is None
        for cache in (a, b):
            with pytest.raises(SessionDestroyed):
                cache.set(sid, {"n": 2})
        state = network.settle([a, b, c])
        assert state[session_key(sid)][2]  # a tombstone everywhere, the hub included

    def test_a_touch_reaches_every_other_cache_without_a_new_version(self, network: BusNetwork) -> None:
        a, b = network.join(touch_interval=0.05), network.join(touch_interval=0.05)
        sid = new_id()
        record = a.set(sid, {"n": 1})
        network.wait_until(lambda: b.record(sid) is not None, "the set to arrive")
        network.pass_time(1.0)
        network.wait_until(lambda: a.touch(sid) and (r := b.record(sid)) is not None and r.accessed > record.accessed,
                           "the touch to reach b")
        remote = b.record(sid)
        assert remote is not None and (remote.version, remote.origin) == (record.version, record.origin)
        assert remote.expires > record.expires  # the idle timeout slid there too

    def test_a_clear_reaches_every_other_cache_and_the_hub(self, network: BusNetwork) -> None:
        a, b, c = network.join(), network.join(), network.join()
        sids = [new_id() for _ in range(6)]
        for i, sid in enumerate(sids):
            (a, b, c)[i % 3].set(sid, {"i": i})
        b.destroy(sids[0])
        network.settle([a, b, c])
        b.clear()
        network.wait_until(lambda: all(x.cleared == b.cleared and len(x) == 0 for x in (a, c)),
                           "the clear to reach a and c")
        for cache in (a, b, c):
            assert [r.key for r in cache.records()] == [session_key(sids[0])]  # the tombstone stays
        network.wait_until(lambda: network.hub_stats()["cleared"] == b.cleared, "the hub to learn the clear")
        a.set(sids[1], {"after": True})  # after the clear: an ordinary write
        network.wait_until(lambda: c.get(sids[1]) == {"after": True}, "a write after the clear to arrive")
        network.settle([a, b, c])

    # -- the merge rule holds across the bus ------------------------------------------------

    def test_concurrent_writes_converge_on_the_same_winner_everywhere(self, network: BusNetwork) -> None:
        caches = [network.join() for _ in range(3)]
        sid = new_id()
        written: list[Record] = []
        start = threading.Barrier(len(caches))

        def writer(cache: SessionCache, who: int) -> None:
            start.wait(10)
            for n in range(20):
                written.append(cache.set(sid, {"by": who, "n": n}))

        threads = [threading.Thread(target=writer, args=(c, i)) for i, c in enumerate(caches)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(written) == 60
        winner = max(written, key=lambda r: (r.version, r.origin))
        expected = (winner.version, winner.origin, False, winner.data)
        state = network.settle(caches, "every replica to hold the same winner")
        assert state[session_key(sid)] == expected

    def test_a_destroy_racing_a_write_wins_everywhere(self, network: BusNetwork) -> None:
        a, b = network.join(), network.join()
        sid = new_id()
        a.set(sid, {"n": 1})
        network.settle([a, b])
        a.set(sid, {"n": 2})  # neither waits for the other's message
        b.destroy(sid)
        state = network.settle([a, b])
        assert state[session_key(sid)][2] and a.get(sid) is None and b.get(sid) is None

    def test_a_late_write_never_resurrects_a_destroyed_session(self, network: BusNetwork) -> None:
        a, b = network.join(), network.join()
        sid = new_id()
        a.set(sid, {"n": 1})
        network.wait_until(lambda: b.record(sid) is not None, "the set to arrive")
        b.destroy(sid)
        network.wait_until(lambda: (r := a.record(sid)) is not None and r.deleted, "the tombstone to arrive")
        tomb = b.record(sid)
        assert tomb is not None
        ignored = [bus_of(x).stats()["ignored"] for x in (a, b)]
        late = network.stream()  # a slow process whose writes arrive after the destroy
        older = forged_record(sid, {"late": "older"}, version=tomb.version - 1, origin=late.origin,
                              clock=network.clock)
        newer = forged_record(sid, {"late": "newer"}, version=tomb.version + (60_000 << COUNTER_BITS), origin=late.origin,
                              clock=network.clock)
        network.inject(late.record(older))
        network.inject(late.record(newer))
        network.wait_until(
            lambda: all(bus_of(x).stats()["ignored"] >= n + 2 for x, n in zip((a, b), ignored)),
            "both late writes to arrive (and be refused)",
        )
        assert a.get(sid) is None and b.get(sid) is None
        hub = network.hub_get(session_key(sid))
        assert hub is not None and hub.deleted

    # -- joining ----------------------------------------------------------------------------

    def test_a_joining_cache_has_the_hubs_sessions_when_attach_returns(self, network: BusNetwork) -> None:
        a = network.join()
        a.set(new_id(), {"before": "the clear"})
        a.clear()
        sids = [new_id() for _ in range(5)]
        for i, sid in enumerate(sids):
            a.set(sid, {"i": i})
        a.destroy(sids[0])
        network.settle([a], "the hub to hold a's sessions")
        late = network.join()
        # No waiting: the snapshot is in before the constructor (attach) returns.
        assert state_of(late.records()) == state_of(a.records())
        assert late.cleared == a.cleared and late.get(sids[1]) == {"i": 1} and late.get(sids[0]) is None
        assert bus_of(late).stats()["repairs"] == 1

    def test_a_cache_joining_while_others_write_misses_nothing_and_counts_no_gap(self, network: BusNetwork) -> None:
        writers = [network.join(), network.join()]
        sids = [new_id() for _ in range(20)]
        stop = threading.Event()
        flowing = [threading.Event() for _ in writers]

        def write(cache: SessionCache, who: int) -> None:
            n = 0
            while not stop.wait(0.0005):  # paced, so the bus stays busy for the whole join
                n += 1
                cache.set(sids[n % len(sids)], {"by": who, "n": n})
                if n == len(sids):
                    flowing[who].set()

        threads = [threading.Thread(target=write, args=(c, i)) for i, c in enumerate(writers)]
        for t in threads:
            t.start()
        try:
            assert all(f.wait(30) for f in flowing), "the writers never got going"
            late = network.join()
            at_join = bus_of(late).stats()
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        network.settle([*writers, late], "the late cache to catch up with every write")
        # Messages that arrive while joining are covered by the join snapshot or follow it: none is lost.
        gaps = (at_join["gaps"], bus_of(late).stats()["gaps"])
        assert gaps == (0, 0), f"gaps counted though nothing was lost: {gaps[0]} when attach returned, {gaps[1]} now"

    # -- bad frames -------------------------------------------------------------------------

    def test_malformed_frames_are_dropped_counted_and_change_nothing(self, network: BusNetwork) -> None:
        a, b = network.join(), network.join()
        sid = new_id()
        a.set(sid, {"n": 1})
        network.settle([a, b])
        before = state_of(b.records())
        counted = bus_of(b).stats()["dropped"].get("malformed", 0)
        bad = _malformed_frames(network)
        for frames in bad:
            network.inject(frames)  # never raises, whatever the frames
        network.wait_until(lambda: bus_of(b).stats()["dropped"].get("malformed", 0) == counted + len(bad),
                           f"all {len(bad)} bad frames to be counted")
        assert state_of(b.records()) == before
        other = new_id()
        a.set(other, {"n": 2})
        network.wait_until(lambda: b.get(other) == {"n": 2}, "the bus to go on delivering")


def _malformed_frames(network: BusNetwork) -> list[list[bytes]]:
    """Frames every receiver must drop: each is wrong in one way, all carry this protocol's topic prefix.

    (Frames of another protocol or version may never reach a cache at all: a
    transport may filter them by topic, as ZeroMQ subscriptions do.)
    """
    stream = network.stream()
    clock = network.clock
    good = forged_record(new_id(), {"n": 1}, version=1 << 50, origin=stream.origin, clock=clock)
    header = [stream.origin, stream.epoch, 1, 0]
    fields = wire.set_fields(good)
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"d": deep}

    def payload(*items: Any) -> bytes:
        return msgpack.packb([*items], use_bin_type=True)

    topic = wire.encode_set(good, stream.origin, stream.epoch, 1, 0)[0]
    valid = wire.encode_set(good, stream.origin, stream.epoch, 1, 0)[1]
    return [
        [topic, b"\x00garbage"],  # not msgpack
        [topic],  # one frame
        [topic, valid, valid],  # three frames
        [wire.PROTOCOL + b"?", valid],  # unknown op
        [wire.PROTOCOL + b"S", valid],  # a request op on the bus
        [topic, valid[: len(valid) // 2]],  # truncated
        [topic, payload(*header, "x" * 300, *fields[1:])],  # key over max_key
        [topic, payload(*header, *fields[:6], msgpack.packb(deep, use_bin_type=True), *fields[7:])],  # too deep
        [topic, payload(*header, *fields[:7], {"n": [1 << 63, 1]}, *fields[8:])],  # a stamp past every version
        [topic, payload(*header, *fields[:8], [[1, 1]] * 2, *fields[9:])],  # seen names a writer twice
        [topic, payload(*header, fields[0], "1", *fields[2:])],  # version not an int
        [wire.PROTOCOL + b"b", payload(*header, [["z", 1]])],  # batch item with an unknown op
        [wire.PROTOCOL + b"h", payload(*header, "extra")],  # heartbeat with fields
        [wire.PROTOCOL + b"c", payload(*header, 0)],  # clear at version 0
    ]
