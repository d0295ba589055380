"""The half of the bus contract suite about trouble: lost messages, hub restarts, an unreachable hub.

``BusContract`` (``memsession.bus.testing``) inherits these tests; this
module is not meant to be used on its own.
"""

from __future__ import annotations

import threading

import pytest

from ..session import new_id, session_key
from ..session_cache import SessionCache
from ._testing_network import BusNetwork, bus_of, state_of

__all__ = ["RepairContract"]


def _counts(caches: list[SessionCache], *names: str) -> list[tuple[int, ...]]:
    return [tuple(bus_of(c).stats()[n] for n in names) for c in caches]


class RepairContract:
    """Gaps found and repaired, hub restarts survived, ``invalidate`` mode, and a hub that can't be reached."""

    # -- lost messages ----------------------------------------------------------------------

    def test_a_gap_is_found_at_the_next_message_and_repaired(self, network: BusNetwork) -> None:
        a, b = network.join(), network.join()
        other = network.stream()
        ids = [new_id() for _ in range(3)]
        first, lost, after = (other.forge(sid, {"n": n}) for sid, n in zip(ids, (1, 2, 3)))
        network.inject(other.record(first))
        network.wait_until(lambda: a.get(ids[0]) == b.get(ids[0]) == {"n": 1}, "the first message to arrive")
        before = _counts([a, b], "gaps", "repairs")
        network.hub_write([lost])  # the hub has the change; its message never reached the bus
        other.lost()
        network.inject(other.record(after))
        network.wait_until(lambda: all(c.get(ids[1]) == {"n": 2} and c.get(ids[2]) == {"n": 3} for c in (a, b)),
                           "the gap to be repaired from the hub")
        for (gaps, repairs), (gaps_now, repairs_now) in zip(before, _counts([a, b], "gaps", "repairs")):
            assert gaps_now > gaps and repairs_now > repairs

    def test_a_gap_is_found_at_the_next_heartbeat_and_repaired(self, network: BusNetwork) -> None:
        a, b = network.join(), network.join()
        other = network.stream()
        ids = [new_id() for _ in range(2)]
        first, lost = other.forge(ids[0], {"n": 1}), other.forge(ids[1], {"n": 2})
        network.inject(other.record(first))
        network.wait_until(lambda: a.get(ids[0]) == b.get(ids[0]) == {"n": 1}, "the first message to arrive")
        before = _counts([a, b], "gaps", "repairs")
        network.hub_write([lost])
        other.lost()  # the stream's last message: only its publisher's heartbeat can tell
        network.inject(other.heartbeat())
        network.wait_until(lambda: all(c.get(ids[1]) == {"n": 2} for c in (a, b)),
                           "the heartbeat to reveal the gap and the repair to bring the change")
        for (gaps, repairs), (gaps_now, repairs_now) in zip(before, _counts([a, b], "gaps", "repairs")):
            assert gaps_now > gaps and repairs_now > repairs

    def test_messages_a_cache_loses_are_found_and_repaired(self, network: BusNetwork) -> None:
        a, b = network.join(lossy=True), network.join()
        [(gaps, repairs)] = _counts([b], "gaps", "repairs")
        with network.losing(a, b):
            written = [a.set(new_id(), {"i": i}) for i in range(30)]
        network.heartbeat()
        state = network.settle([a, b], "b and the hub to get everything back")
        assert all(state[r.key][3] == r.data for r in written)
        [(gaps_now, repairs_now)] = _counts([b], "gaps", "repairs")
        assert gaps_now > gaps and repairs_now > repairs

    # -- hub restarts -----------------------------------------------------------------------

    def test_after_a_hub_restart_caches_push_their_state_and_a_new_cache_sees_it(self, network: BusNetwork) -> None:
        a, b = network.join(), network.join()
        sids = [new_id() for _ in range(4)]
        for sid in sids:
            a.set(sid, {"by": "a"})
        network.settle([a, b])
        network.restart_hub()
        b.set(sids[0], {"by": "b"})  # while the new hub knows nothing yet
        network.heartbeat()
        state = network.settle([a, b], "the new hub to get every cache's state")
        assert {sid: state[session_key(sid)][3]["by"] for sid in sids} == {sids[0]: "b", sids[1]: "a", sids[2]: "a", sids[3]: "a"}
        network.wait_until(lambda: all(restarts >= 1 and repairs >= 2
                                       for restarts, repairs in _counts([a, b], "hub_restarts", "repairs")),
                           "both caches to notice the restart and repair")
        late = network.join()
        assert state_of(late.records()) == state  # from the new hub's snapshot, before attach returned

    def test_a_restarted_hub_learns_the_clear_back_from_the_caches(self, network: BusNetwork) -> None:
        a, b = network.join(), network.join()
        a.set(new_id(), {"n": 1})
        a.clear()
        network.wait_until(lambda: b.cleared == a.cleared, "the clear to reach b")
        kept = new_id()
        b.set(kept, {"n": 2})
        network.settle([a, b])
        network.restart_hub()
        network.heartbeat()
        network.wait_until(lambda: network.hub_stats()["cleared"] == a.cleared, "the new hub to learn the clear")
        state = network.settle([a, b])
        assert list(state) == [session_key(kept)]

    # -- invalidate mode --------------------------------------------------------------------

    def test_invalidate_mode_drops_copies_and_reads_through_the_hub(self, network: BusNetwork) -> None:
        a, b = network.join(mode="invalidate"), network.join(mode="invalidate")
        sid = new_id()
        [(received,)] = _counts([b], "received")
        a.set(sid, {"n": 1})
        network.wait_until(lambda: bus_of(b).stats()["received"] > received, "the invalidation to arrive")
        assert b.record(sid) is None  # only the key and version travelled
        hub = network.hub_get(session_key(sid))
        assert hub is not None and hub.data == {"n": 1}  # the value went to the hub first
        assert b.get(sid) == {"n": 1}  # read through on first use
        assert b.record(sid) is not None
        a.set(sid, {"n": 2})
        network.wait_until(lambda: b.record(sid) is None, "b to drop its older copy")
        assert b.get(sid) == {"n": 2}
        assert b.stats()["misses"] >= 2 and bus_of(b).stats()["mode"] == "invalidate"
        a.destroy(sid)  # a tombstone travels whole: a destroy is never read through
        network.wait_until(lambda: (r := b.record(sid)) is not None and r.deleted, "the tombstone to arrive")
        assert b.get(sid) is None

    def test_lookup_tells_unknown_from_no_answer(self, network: BusNetwork) -> None:
        a, b = network.join(), network.join()
        sid, gone = new_id(), new_id()
        a.set(sid, {"n": 1})
        a.set(gone, {"n": 2})
        a.destroy(gone)
        network.settle([a, b])
        bus = bus_of(b)
        answered, record = bus.lookup(session_key(sid))
        assert answered and record is not None and record.data == {"n": 1}
        assert bus.lookup(session_key(new_id())) == (True, None)  # the hub answered: it does not know that id
        answered, record = bus.lookup(session_key(gone))
        assert answered and record is not None and record.deleted
        fetched = bus.fetch(session_key(sid))
        assert fetched is not None and fetched.data == {"n": 1}
        assert bus.fetch(session_key(new_id())) is None
        with network.unreachable(b):
            assert bus.lookup(session_key(sid), timeout=0.3) == (False, None)  # no answer: not "unknown"
            assert bus.fetch(session_key(sid), timeout=0.3) is None
        network.heartbeat()
        network.wait_until(lambda: (r := bus.lookup(session_key(sid), timeout=0.5)[1]) is not None and r.data == {"n": 1},
                           "the hub to answer again, with the state the caches hold")

    # -- an unreachable hub -----------------------------------------------------------------

    @pytest.mark.parametrize("mode", ["update", "invalidate"])
    def test_publish_never_raises_or_blocks_while_the_hub_is_unreachable(self, network: BusNetwork, mode: str) -> None:
        # A request timeout far above what the writes may take: waiting for the hub even once shows.
        patience = 20.0
        a, b = network.join(mode=mode, request_timeout=patience), network.join(mode=mode)
        sids = [new_id() for _ in range(20)]
        errors: list[Exception] = []

        def writes() -> None:
            try:
                a.clear()
                for i, sid in enumerate(sids):
                    a.set(sid, {"i": i})
                a.destroy(sids[0])
            except Exception as exc:  # noqa: BLE001 - handed to the test thread, which fails with it
                errors.append(exc)

        with network.unreachable(a):
            writer = threading.Thread(target=writes)
            writer.start()
            writer.join(patience / 2)
            assert not writer.is_alive(), "publishing waited for an unreachable hub"
            assert errors == []
        network.heartbeat()
        state = network.settle([a, b], "the writes to reach b once the hub is back")
        assert state[session_key(sids[0])][2] and all(state[session_key(sid)][3] == {"i": i} for i, sid in enumerate(sids) if i)

