"""The per-key merge rule: higher stamp wins per top-level key, replicas converge, clears and compaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession.fields import (
    EMPTY,
    Fields,
    Stamp,
    change,
    clear_covered,
    compact,
    includes,
    is_empty,
    latest_version,
    merge,
)

KEYS = st.sampled_from("abcde")
VALUES = st.one_of(st.integers(-3, 3), st.text("xyz", max_size=2), st.lists(st.integers(0, 2), max_size=2))
_settings = settings(deadline=None, max_examples=150)


@dataclass(frozen=True)
class Change:
    """One request's change as the test remembers it: the ground truth replicas are checked against."""

    stamp: Stamp
    changed: dict[str, Any]
    removed: frozenset[str]
    delta: Fields

    @property
    def keys(self) -> set[str]:
        return set(self.changed) | self.removed


@dataclass
class Replica:
    """A worker's copy and, kept beside it by the test, the changes it has merged (directly or in a state)."""

    origin: int
    state: Fields
    known: set[int] = field(default_factory=set)


@st.composite
def edits(draw: st.DrawFn) -> tuple[dict[str, Any], frozenset[str]]:
    changed = draw(st.dictionaries(KEYS, VALUES, max_size=3))
    removed = frozenset(draw(st.sets(KEYS, max_size=2))) - changed.keys()
    return changed, removed


def write(draw: Callable[..., Any], replica: Replica, changes: list[Change], floor: int = 0) -> Change:
    """``replica`` makes a change with a stamp from a clock that has observed its copy (and ``floor``)."""
    changed, removed = draw(edits())
    version = max(latest_version(replica.state), floor) + draw(st.integers(1, 2))
    stamp = (version, replica.origin)
    replica.state, delta = change(replica.state, changed, removed, stamp)
    made = Change(stamp, changed, removed, delta)
    changes.append(made)
    replica.known.add(len(changes) - 1)
    return made


@st.composite
def histories(
    draw: st.DrawFn, writers: int = 3, floor: int = 0, first_origin: int = 1
) -> tuple[list[Replica], list[Change]]:
    """Writers that change their copies and merge each other's, so the copies share some changes, not all."""
    replicas = [Replica(origin, EMPTY) for origin in range(first_origin, first_origin + writers)]
    changes: list[Change] = []
    for _ in range(draw(st.integers(0, 14))):
        replica = draw(st.sampled_from(replicas))
        if draw(st.booleans()):
            write(draw, replica, changes, floor)
        else:
            other = draw(st.sampled_from(replicas))
            replica.state = merge(replica.state, other.state)
            replica.known |= other.known
    return replicas, changes


@st.composite
def states(draw: st.DrawFn, count: int) -> list[Replica]:
    """``count`` writers' copies from one history (so stamps of distinct changes stay distinct)."""
    replicas, _ = draw(histories())
    return [draw(st.sampled_from(replicas)) for _ in range(count)]


def copy(replica: Replica) -> Replica:
    """A writer that goes on from ``replica``'s copy as ``replica`` (its origin's versions keep growing)."""
    return Replica(replica.origin, replica.state, set(replica.known))


def reflects(state: Fields, made: Change) -> bool:
    """Every key the change touched is at its stamp or a later one."""
    return all(state.stamps.get(key, (0, 0)) >= made.stamp for key in made.keys)


def expected(base: Fields, changes: Sequence[Change]) -> tuple[dict[str, Any], dict[str, Stamp]]:
    """Per key, the highest-stamped change (or the base): its value, or absence for a removal."""
    values, stamps = dict(base.values), dict(base.stamps)
    for made in sorted(changes, key=lambda c: c.stamp):
        for key in made.keys:
            if stamps.get(key, (0, 0)) < made.stamp:
                stamps[key] = made.stamp
                if key in made.changed:
                    values[key] = made.changed[key]
                else:
                    values.pop(key, None)
    return values, stamps


# -- the documented examples -----------------------------------------------------------------------


def test_two_workers_set_different_keys_concurrently_and_both_are_kept() -> None:
    base, _ = change(EMPTY, {"user": "ann"}, (), (10, 1))
    one, delta_one = change(base, {"cart": [1]}, (), (20, 1))
    two, delta_two = change(base, {"theme": "dark"}, (), (20, 2))
    expected_values = {"user": "ann", "cart": [1], "theme": "dark"}
    assert dict(merge(one, delta_two).values) == dict(merge(two, delta_one).values) == expected_values
    assert merge(one, delta_two) == merge(two, delta_one)


def test_a_delete_beats_an_older_concurrent_set_and_stays_deleted() -> None:
    base, _ = change(EMPTY, {"flash": "hi"}, (), (10, 1))
    deleting, delete = change(base, {}, ["flash"], (30, 1))
    _setting, late_set = change(base, {"flash": "again"}, (), (20, 2))
    assert "flash" not in merge(deleting, late_set).values
    assert deleting.removed == {"flash"}
    receiver = merge(merge(base, late_set), delete)
    assert "flash" not in receiver.values
    assert merge(receiver, late_set) == receiver


def test_the_same_key_ends_with_the_higher_stamp_on_every_replica() -> None:
    base, _ = change(EMPTY, {"n": 0}, (), (10, 3))
    _, low = change(base, {"n": 1}, (), (20, 1))
    _, high = change(base, {"n": 2}, (), (20, 2))  # same version: the origin breaks the tie
    replicas = [merge(merge(base, low), high), merge(merge(base, high), low), merge(base, merge(high, low))]
    assert all(r.values["n"] == 2 and r.stamps["n"] == (20, 2) for r in replicas)


def test_a_delta_holds_only_what_the_request_changed() -> None:
    base, _ = change(EMPTY, {"a": 1, "b": 2}, (), (10, 1))
    new, delta = change(base, {"a": 5}, ["c"], (11, 2))
    assert dict(delta.values) == {"a": 5}
    assert dict(delta.stamps) == {"a": (11, 2), "c": (11, 2)}
    assert dict(delta.seen) == {2: 11}
    assert new == merge(base, delta)
    assert dict(new.values) == {"a": 5, "b": 2} and new.removed == {"c"}


@pytest.mark.parametrize(
    ("changed", "removed", "stamp", "message"),
    [
        ({"a": 1}, ["a"], (20, 2), "both set and removed"),
        ({"x": 1}, (), (0, 2), "versions start at 1"),
        ({"x": 1}, (), (10, 1), "already merged version 10"),
        ({"a": 1}, (), (9, 2), r"not later than the stamps of \['a'\]"),
        ({}, ["a"], (10, 0), r"not later than the stamps of \['a'\]"),
    ],
)
def test_a_change_that_could_not_win_on_its_own_worker_is_refused(
    changed: dict[str, Any], removed: Sequence[str], stamp: Stamp, message: str
) -> None:
    base, _ = change(EMPTY, {"a": 0}, (), (10, 1))
    with pytest.raises(ValueError, match=message):
        change(base, changed, removed, stamp)


def test_a_value_needs_a_stamp_and_states_are_read_only() -> None:
    with pytest.raises(ValueError, match="without a stamp"):
        Fields({"a": 1}, {}, {})
    source = {"a": 1}
    state = Fields(source, {"a": (1, 1)}, {1: 1})
    source["a"] = 2
    assert state.values["a"] == 1
    with pytest.raises(TypeError):
        state.values["a"] = 3  # type: ignore[index]


def test_a_clear_drops_what_it_covers_and_refuses_an_older_set_that_arrives_late() -> None:
    base, _ = change(EMPTY, {"a": 1, "b": 2}, (), (10, 1))
    deleted, _ = change(base, {}, ["a"], (20, 1))
    _, late = change(base, {"a": 9}, (), (15, 2))
    newer, _ = change(deleted, {"c": 3}, (), (40, 1))
    cleared = clear_covered(newer, 30)
    assert dict(cleared.values) == {"c": 3} and cleared.removed == frozenset()
    assert dict(cleared.seen) == dict(newer.seen)
    # A replica that applied the watermark applies it to what it merges after: the tombstone isn't missed.
    after = clear_covered(merge(cleared, late), 30)
    assert after.values == cleared.values and after.stamps == cleared.stamps
    assert includes(after, (15, 2))  # merged, and ended by the clear like every change it covers
    assert not is_empty(cleared) and is_empty(clear_covered(newer, 40))


def test_compaction_drops_stable_tombstones_and_the_oldest_writers() -> None:
    state = Fields({"a": 1}, {"a": (5, 1), "gone": (6, 2), "recent": (50, 3)}, {1: 5, 2: 60, 3: 50, 4: 7})
    compacted = compact(state, max_seen=2, tombstone_floor=10)
    assert dict(compacted.stamps) == {"a": (5, 1), "recent": (50, 3)}
    assert dict(compacted.seen) == {2: 60, 3: 50}
    assert dict(compact(Fields(seen={1: 9, 2: 9}), max_seen=1, tombstone_floor=0).seen) == {2: 9}
    assert compact(compacted, max_seen=2, tombstone_floor=10) is compacted
    with pytest.raises(ValueError, match="max_seen"):
        compact(state, max_seen=-1, tombstone_floor=0)


def test_latest_version_is_what_a_writer_clock_must_observe() -> None:
    assert latest_version(EMPTY) == 0
    assert latest_version(Fields({}, {"a": (7, 1)}, {2: 9})) == 9
    assert latest_version(Fields({}, {"a": (12, 1)}, {2: 9})) == 12


# -- 1. merge is a semilattice join -----------------------------------------------------------------


@_settings
@given(states(3))
def test_merge_is_commutative_associative_and_idempotent(three: list[Replica]) -> None:
    a, b, c = (replica.state for replica in three)
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert merge(a, EMPTY) == a == merge(EMPTY, a)


@_settings
@given(st.data())
def test_a_delta_into_a_state_containing_its_base_equals_the_full_state(data: st.DataObject) -> None:
    replicas, _ = data.draw(histories())
    writer = copy(data.draw(st.sampled_from(replicas)))
    base = writer.state
    receiver = merge(data.draw(st.sampled_from(replicas)).state, base)
    made = write(data.draw, writer, [])
    assert merge(receiver, made.delta) == merge(receiver, writer.state)


# -- 2. replicas converge under reordering, duplication and loss ------------------------------------


@_settings
@given(st.integers(2, 5), st.data())
def test_replicas_converge_on_the_highest_stamp_of_every_key(count: int, data: st.DataObject) -> None:
    base, _ = change(EMPTY, data.draw(st.dictionaries(KEYS, VALUES, max_size=3)), (), (1, 99))
    replicas = [Replica(origin, base) for origin in range(1, count + 1)]
    changes: list[Change] = []
    pending: list[tuple[int, int]] = []  # (receiver index, change index) not yet delivered
    delivered: list[tuple[int, int]] = []
    for _ in range(data.draw(st.integers(1, 40))):
        action = data.draw(st.sampled_from(["write", "deliver", "duplicate", "lose"]))
        if action == "write":
            writer = data.draw(st.integers(0, count - 1))
            write(data.draw, replicas[writer], changes)
            pending += [(r, len(changes) - 1) for r in range(count) if r != writer]
        elif action == "duplicate" and delivered:
            receiver, index = data.draw(st.sampled_from(delivered))
            replicas[receiver].state = merge(replicas[receiver].state, changes[index].delta)
        elif action in ("deliver", "lose") and pending:
            receiver, index = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
            replica = replicas[receiver]
            if action == "deliver":
                replica.state = merge(replica.state, changes[index].delta)
                replica.known.add(index)
                delivered.append((receiver, index))
            else:  # lost: a snapshot repair from a replica that has the change
                source = data.draw(st.sampled_from([r for r in replicas if index in r.known]))
                replica.state = merge(replica.state, source.state)
                replica.known |= source.known
    for receiver, index in data.draw(st.permutations(pending)):
        replicas[receiver].state = merge(replicas[receiver].state, changes[index].delta)
    first = replicas[0].state
    assert all(r.state == first for r in replicas)
    values, stamps = expected(base, changes)
    assert dict(first.values) == values
    assert dict(first.stamps) == stamps
    assert all(includes(first, made.stamp) for made in changes)


# -- 3. clears ----------------------------------------------------------------------------------------


@_settings
@given(st.data())
def test_clear_commutes_with_merge_and_spares_newer_changes(data: st.DataObject) -> None:
    first, second = data.draw(states(2))
    a, b = first.state, second.state
    watermark = data.draw(st.integers(0, max(latest_version(merge(a, b)), 1)))
    cleared = clear_covered(merge(a, b), watermark)
    assert cleared == merge(clear_covered(a, watermark), clear_covered(b, watermark))
    assert clear_covered(cleared, watermark) == cleared
    assert all(stamp[0] > watermark for stamp in cleared.stamps.values())
    writer = Replica(first.origin, merge(a, b))
    made = write(data.draw, writer, [], floor=watermark)
    survived = merge(clear_covered(b, watermark), clear_covered(writer.state, watermark))
    assert reflects(survived, made)
    assert all(survived.values[key] == value for key, value in made.changed.items())


# -- 4. read-your-writes --------------------------------------------------------------------------------


@_settings
@given(st.data())
def test_includes_holds_for_own_changes_and_stays_true_under_merge(data: st.DataObject) -> None:
    replicas, changes = data.draw(histories())
    a, b = (data.draw(st.sampled_from(replicas)).state for _ in range(2))
    merged = merge(a, b)
    for made in changes:
        if includes(a, made.stamp) or includes(b, made.stamp):
            assert includes(merged, made.stamp)
    writer = data.draw(st.sampled_from(replicas))
    made = write(data.draw, writer, changes)
    assert includes(writer.state, made.stamp) and includes(made.delta, made.stamp)
    assert includes(merge(b, writer.state), made.stamp)


@_settings
@given(st.integers(2, 4), st.data())
def test_includes_never_claims_a_missing_change_when_each_origin_arrives_in_order(count: int, data: st.DataObject) -> None:
    """Per-origin order (the bus's sequence numbers; a gap is repaired by a full state) makes ``includes`` sound."""
    replicas = [Replica(origin, EMPTY) for origin in range(1, count + 1)]
    changes: list[Change] = []
    channels: dict[tuple[int, int], list[int]] = {(s, r): [] for s in range(count) for r in range(count) if s != r}
    delivered: list[tuple[int, int]] = []
    for _ in range(data.draw(st.integers(1, 40))):
        action = data.draw(st.sampled_from(["write", "deliver", "duplicate", "lose"]))
        busy = [channel for channel, queue in channels.items() if queue]
        if action == "write":
            sender = data.draw(st.integers(0, count - 1))
            write(data.draw, replicas[sender], changes)
            for (s, _r), queue in channels.items():
                if s == sender:
                    queue.append(len(changes) - 1)
        elif action == "duplicate" and delivered:
            receiver, index = data.draw(st.sampled_from(delivered))
            replicas[receiver].state = merge(replicas[receiver].state, changes[index].delta)
        elif action in ("deliver", "lose") and busy:
            sender, receiver = data.draw(st.sampled_from(busy))
            index = channels[sender, receiver].pop(0)
            if action == "deliver":
                replicas[receiver].state = merge(replicas[receiver].state, changes[index].delta)
                delivered.append((receiver, index))
            else:  # the gap is seen at once and repaired from the sender's state
                replicas[receiver].state = merge(replicas[receiver].state, replicas[sender].state)
        for replica in replicas:
            for made in changes:
                if includes(replica.state, made.stamp):
                    assert reflects(replica.state, made), (replica.origin, made.stamp)


# -- 5. compaction ----------------------------------------------------------------------------------------


@_settings
@given(st.data())
def test_compaction_changes_no_merge_of_changes_newer_than_the_floor(data: st.DataObject) -> None:
    state = data.draw(states(1))[0].state
    floor = data.draw(st.integers(0, latest_version(state)))
    max_seen = data.draw(st.integers(0, 4))
    # Other writers (their own origins), every change newer than the floor, concurrent with some of state's.
    newer_replicas, _ = data.draw(histories(floor=floor, first_origin=10))
    newer = data.draw(st.sampled_from(newer_replicas)).state
    assert all(stamp[0] > floor for stamp in newer.stamps.values())
    compacted = compact(state, max_seen=max_seen, tombstone_floor=floor)
    assert compacted.values == state.values
    assert merge(compacted, newer).values == merge(state, newer).values
    assert compact(merge(compacted, newer), max_seen=max_seen, tombstone_floor=floor) == compact(
        merge(state, newer), max_seen=max_seen, tombstone_floor=floor
    )


@_settings
@given(st.data())
def test_compaction_of_seen_commutes_with_any_merge_and_only_forgets(data: st.DataObject) -> None:
    a, b = (replica.state for replica in data.draw(states(2)))
    max_seen = data.draw(st.integers(0, 4))
    assert compact(merge(compact(a, max_seen=max_seen, tombstone_floor=0), b), max_seen=max_seen,
                   tombstone_floor=0) == compact(merge(a, b), max_seen=max_seen, tombstone_floor=0)
    floor = data.draw(st.integers(0, max(latest_version(a), 1)))
    compacted = compact(a, max_seen=max_seen, tombstone_floor=floor)
    assert len(compacted.seen) == min(len(a.seen), max_seen)
    forgotten = a.seen.keys() - compacted.seen.keys()
    assert all((a.seen[o], o) < (v, kept) for o in forgotten for kept, v in compacted.seen.items())
    for origin, version in a.seen.items():
        for stamp in ((version, origin), (version - 1, origin)):
            assert includes(a, stamp) or not includes(compacted, stamp)


@_settings
@given(st.integers(2, 4), st.data())
def test_replicas_that_compact_at_a_stable_floor_at_different_times_still_converge(count: int, data: st.DataObject) -> None:
    """After quiescence every change so far is stable; some replicas compact, then writing goes on."""
    replicas_, changes = data.draw(histories(writers=count))
    everything = EMPTY
    for replica in replicas_:
        everything = merge(everything, replica.state)
    floor = latest_version(everything)
    kept = [Replica(r.origin, everything) for r in replicas_]
    compacting = [Replica(r.origin, everything) for r in replicas_]
    for _ in range(data.draw(st.integers(0, 10))):
        writer = data.draw(st.integers(0, count - 1))
        if data.draw(st.booleans()):
            chosen = compacting[data.draw(st.integers(0, count - 1))]
            chosen.state = compact(chosen.state, max_seen=count, tombstone_floor=floor)
        made = write(data.draw, kept[writer], changes, floor)
        compacting[writer].state, _ = change(compacting[writer].state, made.changed, made.removed, made.stamp)
        for others in (kept, compacting):
            for replica in others:
                replica.state = merge(replica.state, made.delta)
    for plain, compacted in zip(kept, compacting):
        assert compacted.state.values == plain.state.values
        assert compact(compacted.state, max_seen=count, tombstone_floor=floor) == compact(
            plain.state, max_seen=count, tombstone_floor=floor
        )
