"""Sequence tracking: every loss becomes a detected gap; nothing else does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memsession.bus.sequence import DUP, GAP, NEW, OK, SequenceTracker


def test_in_order_stream_is_new_then_ok():
    t = SequenceTracker()
    assert [t.observe(7, 1, s) for s in range(1, 5)] == [NEW, OK, OK, OK]
    assert t.heartbeat(7, 1, 4) == OK
    assert t.vector() == {7: (1, 4)}


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(1, n)))))
def test_a_gap_is_reported_exactly_where_numbers_are_missing(case):
    n, kept = case
    t = SequenceTracker()
    previous = 0
    for seq in sorted(kept):
        verdict = t.observe(1, 1, seq)
        if seq == previous + 1:
            assert verdict in (OK, NEW)
        else:
            assert verdict == GAP
        previous = seq
    # The heartbeat carries the last number sent: trailing losses show up there.
    assert (t.heartbeat(1, 1, n) == GAP) == (previous != n)
    # After a gap has been reported the stream is trusted again from there on.
    assert t.observe(1, 1, n + 1) == OK


@given(st.lists(st.integers(1, 30), max_size=60))
def test_replays_are_duplicates_and_never_gaps_twice(seqs):
    t = SequenceTracker()
    highest = 0
    for seq in seqs:
        verdict = t.observe(1, 1, seq)
        if seq <= highest:
            assert verdict == DUP
        highest = max(highest, seq)
    assert t.covered(1, 1, highest) or highest == 0


def test_a_restarted_publisher_starts_a_new_stream_and_old_epochs_are_stale():
    t = SequenceTracker()
    t.observe(1, 100, 1)
    t.observe(1, 100, 2)
    assert t.observe(1, 200, 1) == NEW
    assert t.observe(1, 100, 3) == DUP
    assert t.heartbeat(1, 100, 9) == DUP


def test_strict_subscriber_treats_a_late_first_sighting_as_a_gap_hub_does_not():
    assert SequenceTracker(strict=True).observe(1, 1, 57) == GAP
    assert SequenceTracker(strict=False).observe(1, 1, 57) == NEW
    assert SequenceTracker(strict=True).heartbeat(1, 1, 0) == NEW
    assert SequenceTracker(strict=True).heartbeat(1, 1, 3) == GAP


@given(
    st.dictionaries(st.integers(1, 5), st.tuples(st.integers(1, 3), st.integers(0, 20)), max_size=5),
    st.dictionaries(st.integers(1, 5), st.tuples(st.integers(1, 3), st.integers(0, 20)), max_size=5),
)
def test_splice_covers_the_snapshot_and_keeps_what_we_saw_later(seen, vector):
    t = SequenceTracker()
    for origin, (epoch, last) in seen.items():
        for seq in range(1, last + 1):
            t.observe(origin, epoch, seq)
    t.splice(vector)
    for origin, (epoch, seq) in vector.items():
        mine = seen.get(origin)
        if mine is None or epoch >= mine[0]:
            assert t.covered(origin, epoch, seq)
            expected_last = max(seq, mine[1]) if mine and mine[0] == epoch else seq
            # the next message after the covered range is in order
            assert t.observe(origin, epoch, expected_last + 1) == OK
    for origin, (epoch, last) in seen.items():
        if origin not in vector:
            assert last == 0 or t.vector()[origin] == (epoch, last)


def test_a_subscriber_forgets_publishers_that_stopped_at_the_next_hub_beat() -> None:
    from memsession import SessionCache, wire
    from memsession.bus.base import BusConfig, Replicator
    from memsession.testing import FakeClock

    clock = FakeClock()
    cache = SessionCache(clock=clock)
    replicator = Replicator(cache, BusConfig(forget_after=60.0), clock=clock)
    replicator.install_snapshot([], {1: (9 << 12, 0)}, 9 << 12)
    for origin in range(100, 110):
        replicator.receive(wire.encode_heartbeat(origin, 7 << 12, 0, 0))
    assert len(replicator.tracker) == 11
    clock.advance(30.0)
    replicator.receive(wire.encode_heartbeat(100, 7 << 12, 0, 0))  # one of them is still alive
    clock.advance(31.0)
    replicator.receive(wire.encode_heartbeat(1, 9 << 12, 0, 0, hub=True))
    assert sorted(replicator.tracker.vector()) == [1, 100]
    cache.close()


def test_a_push_covers_its_stream_up_to_the_number_it_names():
    t = SequenceTracker(strict=True)
    t.pushed(1, 1, 10)  # a stream first known through a push
    assert t.heartbeat(1, 1, 10) == OK
    assert t.observe(1, 1, 11) == OK
    assert t.observe(1, 1, 13) == GAP  # numbered after the push and lost: still a gap
    t.pushed(1, 1, 20)
    assert t.observe(1, 1, 18) == DUP  # in the push: not a gap, and not taken in twice
    assert t.observe(1, 1, 21) == OK
    t.pushed(1, 1, 5)  # an older push never moves the stream back
    assert t.observe(1, 1, 22) == OK


def test_a_push_claims_no_more_than_a_frame_may():
    t = SequenceTracker(strict=True, max_jump=100)
    assert t.observe(1, 1, 1) == NEW
    t.pushed(1, 1, 1_000)
    assert t.observe(1, 1, 2) == OK


def test_a_push_of_a_new_epoch_is_a_restart_and_the_old_epoch_a_straggler():
    t = SequenceTracker(strict=True)
    for seq in range(1, 6):
        t.observe(1, 1, seq)
    t.pushed(1, 2, 3)
    assert t.observe(1, 2, 4) == OK
    assert t.observe(1, 1, 6) == DUP
    t.pushed(1, 1, 9)  # the replaced epoch's push changes nothing
    assert t.observe(1, 2, 5) == OK
