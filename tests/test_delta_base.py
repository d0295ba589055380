"""A delta names its change as merged only in a copy that holds what it was made on (``Record.base``).

The user changes ``b`` on one worker, then ``c`` on another, which held
``b`` when it made the change: its delta carries ``c`` alone. A copy that
missed ``b`` and merges that delta must not name the user's change ``c`` in
``seen``, or a request with the user's cookie is served it as the newest
while it lacks ``b``. The pure rule first (``changes``, ``persist.base``),
then a door where it mattered: a hub that evicted the session.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from memsession import wire
from memsession.changes import completed, merge_records, record_change, reflects
from memsession.hub import HubState
from memsession.session import Record, prepare_packed
from memsession.testing import FakeClock
from persist.base import merge_row

KEY = "k" * 64
A, B, C = 11, 22, 33  # three workers' origins
V = 1 << 40
NOW = 1_800_000_000.0


def change(base: Record | None, data: dict[str, Any], changed: list[str], *, version: int,
           origin: int) -> tuple[Record, Record]:
    copy, packed, flat = prepare_packed(data, 65536)
    return record_change(base, KEY, copy, changed, (), version=version, origin=origin, wall=NOW,
                         idle_timeout=1800.0, max_age=None, flat=flat, size=len(packed))


def history() -> tuple[Record, Record, Record, Record]:
    """``(first, b_delta, on_b, c_delta)``: ``a`` made on A, ``b`` on B, then ``c`` on C, which held ``b``."""
    first, _ = change(None, {"a": 1}, ["a"], version=V, origin=A)
    on_b, b_delta = change(first, {"a": 1, "b": 2}, ["b"], version=V + 1, origin=B)
    on_c = merge_records(first, b_delta)
    assert on_c is not None and reflects(on_c, V + 1, B)
    _, c_delta = change(on_c, {"a": 1, "b": 2, "c": 3}, ["c"], version=V + 2, origin=C)
    return first, b_delta, on_b, c_delta


def test_a_delta_carries_the_seen_of_the_copy_it_was_made_on() -> None:
    _, b_delta, _, c_delta = history()
    assert b_delta.partial and b_delta.base == {A: V}
    assert c_delta.partial and c_delta.data == {"c": 3} and c_delta.base == {A: V, B: V + 1}


def test_a_copy_that_missed_a_change_does_not_name_a_later_delta_as_merged() -> None:
    first, _, _, c_delta = history()
    merged = merge_records(first, c_delta)  # this copy never had b
    assert merged is not None and merged.data == {"a": 1, "c": 3}
    assert not reflects(merged, V + 2, C), "a copy lacking b passes for the user's newest"
    assert reflects(merged, V, A)  # what it did hold it still names


def test_a_copy_that_holds_the_base_names_the_delta() -> None:
    first, b_delta, _, c_delta = history()
    with_b = merge_records(first, b_delta)
    merged = merge_records(with_b, c_delta)
    assert merged is not None and merged.data == {"a": 1, "b": 2, "c": 3} and reflects(merged, V + 2, C)


def test_the_missed_change_arriving_late_leaves_the_copy_complete_and_a_whole_record_names_it() -> None:
    first, b_delta, _, c_delta = history()
    late = merge_records(merge_records(first, c_delta), b_delta)
    assert late is not None and late.data == {"a": 1, "b": 2, "c": 3}
    assert not reflects(late, V + 2, C)  # it lags: a read for c asks on instead of trusting it
    whole, _ = change(merge_records(merge_records(first, b_delta), c_delta), {"a": 1, "b": 2, "c": 3, "d": 4}, ["d"],
                      version=V + 3, origin=C)
    caught_up = merge_records(late, whole)
    assert caught_up is not None and reflects(caught_up, V + 2, C) and reflects(caught_up, V + 3, C)


def test_a_delta_completed_alone_names_no_change() -> None:
    _, _, _, c_delta = history()
    alone = completed(c_delta)
    assert not alone.partial and alone.base is None and alone.data == {"c": 3}
    assert not reflects(alone, V + 2, C) and not reflects(alone, V, A)
    stored = merge_row(None, c_delta)  # a store with nothing of the session
    assert stored is not None and not stored.partial and not reflects(stored, V + 2, C)


def test_a_store_row_that_lost_a_change_does_not_name_a_later_delta() -> None:
    first, _, _, c_delta = history()
    stored = merge_row(first, c_delta)
    assert stored is not None and stored.data == {"a": 1, "c": 3} and not reflects(stored, V + 2, C)


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_deltas_queued_together_need_only_what_the_first_stood_on(order: str) -> None:
    """Two deltas of one writer merged in a queue: the second stands on the first, which they carry."""
    first, b_delta, on_b, _ = history()
    _, b2_delta = change(on_b, {"a": 1, "b": 5}, ["b"], version=V + 5, origin=B)
    pair = (b_delta, b2_delta) if order == "forward" else (b2_delta, b_delta)
    queued = merge_records(*pair)
    assert queued is not None and queued.partial and queued.base == {A: V}
    stored = merge_row(first, queued)
    assert stored is not None and stored.data == {"a": 1, "b": 5} and reflects(stored, V + 5, B)
    assert not reflects(merge_row(None, queued), V + 5, B)  # without ``a``, it can't vouch for them


def test_deltas_of_two_writers_queued_together_keep_each_ones_base() -> None:
    first, b_delta, _, c_delta = history()
    queued = merge_records(b_delta, c_delta)
    assert queued is not None and queued.base == {A: V}  # c's need of b is met by b's delta itself
    stored = merge_row(first, queued)
    assert stored is not None and stored.data == {"a": 1, "b": 2, "c": 3}
    assert reflects(stored, V + 2, C) and reflects(stored, V + 1, B)


# -- a door where it mattered: a hub that evicted the session -------------------------------------


def test_a_hub_that_evicted_a_session_answers_its_last_delta_without_naming_it() -> None:
    """The hub holds one session; the user's next change after its eviction reaches it as a delta alone.

    Asked for the session, a plain hub answers what it has, the delta taken
    as complete: a worker without a copy (one that has just joined) would be
    served it, ``c`` alone, as the user's newest session.
    """
    hub = HubState(clock=FakeClock(wall=NOW), maxsize=1)
    first, b_delta, _, c_delta = history()
    for record in (first, b_delta):
        assert hub.merge(record)
    other, _ = change(None, {"x": 1}, ["x"], version=V + 1, origin=A)
    assert hub.merge(replace(other, key="o" * 64))  # the user's session is evicted
    assert KEY not in hub.replica
    assert hub.merge(c_delta)
    answered = wire.decode_reply(hub.answer_get(1, KEY)).body[0]
    assert answered is not None and not answered.partial and answered.data == {"c": 3}
    assert not reflects(answered, V + 2, C), "the hub's part of the session passes for the user's newest"
    # The workers holding the session push it (a resync): then the hub names the change again.
    whole = merge_records(merge_records(first, b_delta), c_delta)
    assert whole is not None and hub.merge(whole)
    answered = wire.decode_reply(hub.answer_get(2, KEY)).body[0]
    assert answered.data == {"a": 1, "b": 2, "c": 3} and reflects(answered, V + 2, C)
