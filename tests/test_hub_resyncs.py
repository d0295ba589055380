"""When the hub asks an origin to resync: spaced, asked again until its push comes, and bounded."""

from __future__ import annotations

import logging

import pytest

from memsession.hub.resyncs import RESYNC_ATTEMPTS, RESYNC_RETRY, RESYNC_SPACING, Resyncs
from memsession.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _resyncs(clock: FakeClock) -> tuple[Resyncs, dict[str, int]]:
    counts = {"resyncs_sent": 0}
    return Resyncs(clock, counts), counts


def test_a_gap_inside_the_spacing_is_owed_and_asked_once_it_has_passed(clock):
    resyncs, counts = _resyncs(clock)
    assert resyncs.ask_now(7)
    assert not resyncs.ask_now(7)
    assert resyncs.due() == []
    clock.advance(RESYNC_SPACING)
    assert resyncs.due() == [7]
    assert resyncs.ask_now(7) and counts["resyncs_sent"] == 2


def test_an_origin_whose_push_does_not_come_is_asked_again(clock):
    resyncs, counts = _resyncs(clock)
    assert resyncs.ask_now(7)
    clock.advance(RESYNC_RETRY / 2)
    assert resyncs.due() == []
    clock.advance(RESYNC_RETRY / 2)
    assert resyncs.due() == [7]
    assert resyncs.ask_now(7)
    resyncs.pushed(7, 1, 1)
    clock.advance(RESYNC_RETRY * 3)
    assert resyncs.due() == [] and counts["resyncs_sent"] == 2


def test_asking_again_stops_after_the_attempts_and_says_so(clock, caplog):
    resyncs, counts = _resyncs(clock)
    for _ in range(RESYNC_ATTEMPTS):
        assert resyncs.ask_now(7)
        clock.advance(RESYNC_RETRY)
    with caplog.at_level(logging.WARNING, "memsession.hub"):
        assert resyncs.due() == []
    assert counts["resyncs_sent"] == RESYNC_ATTEMPTS
    assert "did not push its state" in caplog.text
    assert resyncs.ask_now(7)  # a later gap asks afresh


def test_a_forgotten_origin_is_owed_nothing(clock):
    resyncs, _ = _resyncs(clock)
    resyncs.ask_now(7)
    resyncs.ask_now(7)
    resyncs.forget(7)
    clock.advance(RESYNC_RETRY * 2)
    assert resyncs.due() == []


def test_a_push_taken_before_the_last_gap_leaves_it_owed(clock):
    resyncs, counts = _resyncs(clock)
    assert resyncs.ask_now(7, (1, 10))
    assert not resyncs.ask_now(7, (1, 20))  # a later loss while the push is on its way
    resyncs.pushed(7, 1, 15)  # taken before change 20: the second loss is not in it
    clock.advance(RESYNC_SPACING)
    assert resyncs.due() == [7]
    assert resyncs.ask_now(7)
    resyncs.pushed(7, 1, 20)
    clock.advance(RESYNC_RETRY * 3)
    assert resyncs.due() == [] and counts["resyncs_sent"] == 2


def test_a_push_of_a_new_epoch_ends_what_the_old_stream_owed(clock):
    resyncs, _ = _resyncs(clock)
    resyncs.ask_now(7, (1, 10))
    resyncs.pushed(7, 2, 3)  # the origin restarted: its push is all of the new process
    clock.advance(RESYNC_RETRY * 3)
    assert resyncs.due() == []
