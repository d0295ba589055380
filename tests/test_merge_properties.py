"""The record merge with N replicas of one session: they converge, nothing acknowledged is lost, a join.

Replicas of one session key (workers) make changes with ``record_change`` and
send each other the deltas; destroys send tombstones, clears send
watermarks; messages arrive in any order, twice, or not at all (a lost record
is repaired by merging a whole held record, as a snapshot or a hub read does;
every clear arrives in the end). Each replica receives by the workers' rule:
a live record the watermark covers is refused whole (``cleared_by``), a delta
is merged only into a live copy, everything else by
``merge_records(held, incoming, cleared=watermark)``; a clear drops the copy
it covers whole and leaves a newer one as it is, for the merge to drop the
keys it covers.
Versions come from one clock per replica that has observed every version it
was sent (a hybrid logical clock: the next version is one above the highest
seen), so two replicas may issue the same version and the origin breaks the
tie. Values name the change that set them, so the final data says which
change won each key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession.changes import merge_records, record_change, reflects, seen_of, stamps_of
from memsession.fields import Stamp
from memsession.session import Record, cleared_by, prepare_data

KEY = "5e" * 32
NAMES = "abcd"
IDLE_TIMEOUT = 600.0
MAX_BYTES = 1 << 16
#: A destroy's tombstone outlives the run: it beats every live copy however late that arrives.
TOMBSTONE_LIFE = 1e9
_settings = settings(max_examples=300, deadline=None)


def state(record: Record | None) -> tuple[Any, ...] | None:
    """Everything a replica holds of the session, the short forms of ``stamps`` and ``seen`` spelled out."""
    if record is None:
        return None
    return (
        record.key, record.data, record.version, record.origin, record.created, record.accessed,
        record.expires, record.deleted, dict(stamps_of(record)), dict(seen_of(record)), record.partial,
    )


def merged(old: Record | None, new: Record, cleared: int = 0) -> Record | None:
    """``merge_records`` with None read as "``old`` stays as it is"."""
    result = merge_records(old, new, cleared=cleared)
    return old if result is None else result


def joined(old: Record, new: Record, cleared: int = 0) -> Record:
    """``merged`` of a copy: a copy stays a copy."""
    result = merge_records(old, new, cleared=cleared)
    return old if result is None else result


# -- the examples ---------------------------------------------------------------------------------------


def write_on(
    base: Record | None, version: int, values: dict[str, str], removed: tuple[str, ...] = (), origin: int = 1
) -> tuple[Record, Record]:
    """A change on ``base`` at ``(version, origin)``, at wall time ``version``: (held, delta)."""
    data = {**(base.data if base is not None else {}), **values}
    for name in removed:
        data.pop(name, None)
    copy, size, flat = prepare_data(data, MAX_BYTES)
    return record_change(base, KEY, copy, values, removed, version=version, origin=origin, wall=float(version),
                         idle_timeout=IDLE_TIMEOUT, max_age=None, flat=flat, size=size)


def test_two_replicas_set_different_keys_concurrently_and_both_keep_both() -> None:
    base, _ = write_on(None, 1, {"user": "ann"})
    one, one_delta = write_on(base, 2, {"cart": "1"})
    two, two_delta = write_on(base, 2, {"theme": "dark"}, origin=2)
    assert two_delta.partial and one_delta.partial
    after_one, after_two = merged(one, two_delta), merged(two, one_delta)
    assert after_one is not None and after_one.data == {"user": "ann", "cart": "1", "theme": "dark"}
    assert state(after_one) == state(after_two)


def test_a_copy_kept_through_a_clear_ends_as_one_that_never_held_what_the_clear_covers() -> None:
    """Origin 1 sets ``a`` at 2 and ``b`` at 3; a clear at 2 comes from a replica that saw only version 1.

    The writer keeps its copy through the clear (its newest change, 3, is newer); another replica
    merged the change at 3 and refused the one at 2 (the clear covers it). Each merging the other's
    copy ends with the same session, without ``a``, and so does a replica that had no copy: the
    clear drops what it covers from the copy merged into, even when what arrives brings nothing
    newer, as much as from what arrives.
    """
    created, _ = write_on(None, 1, {})
    with_a, _ = write_on(created, 2, {"a": "a=2.1"})
    writer, delta_b = write_on(with_a, 3, {"b": "b=3.1"})
    other = merged(created, delta_b)
    assert other is not None and other.data == {"b": "b=3.1"}
    watermark = 2
    assert not cleared_by(writer, watermark) and not cleared_by(other, watermark)
    from_other = merged(writer, other, watermark)
    from_writer = merged(other, writer, watermark)
    fresh = merged(None, writer, watermark)
    assert from_other is not None and from_writer is not None and fresh is not None
    assert from_other.data == from_writer.data == fresh.data == {"b": "b=3.1"}
    assert state(from_other) == state(from_writer) == state(fresh)
    assert from_other.size == len(msgpack.packb(from_other.data))


def test_a_clear_drops_a_covered_key_tombstone_from_a_copy_that_brings_nothing_newer() -> None:
    created, _ = write_on(None, 1, {"a": "a=1.1"})
    removed, _ = write_on(created, 2, {}, ("a",))
    held, delta = write_on(removed, 3, {})
    assert dict(stamps_of(held)) == {"a": (2, 1)}
    other = merged(created, delta)
    assert other is not None
    cleaned = merged(held, other, 2)
    assert cleaned is not None and dict(stamps_of(cleaned)) == {}
    assert state(cleaned) == state(merged(other, held, 2))


# -- the model: replicas, messages, and what happened ------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One request's change as the test remembers it: what the final data is checked against."""

    stamp: Stamp
    changed: dict[str, str]
    removed: frozenset[str]

    @property
    def keys(self) -> frozenset[str]:
        return self.removed | self.changed.keys()


@dataclass(frozen=True)
class Clear:
    """A clear's message: its watermark."""

    watermark: int


Message = Record | Clear


@dataclass
class Replica:
    """A worker's copy of the session, its clear watermark, and the highest version its clock has observed."""

    origin: int
    held: Record | None = None
    cleared: int = 0
    clock: int = 0

    def next_version(self) -> int:
        self.clock += 1
        return self.clock

    @property
    def live(self) -> bool:
        return self.held is not None and not self.held.deleted

    def receive(self, record: Record) -> None:
        """The workers' rule for a record that came from elsewhere."""
        self.clock = max(self.clock, record.version)
        if cleared_by(record, self.cleared):
            return
        if record.partial and not self.live:
            return  # no copy to complete: the whole record comes later, by a repair
        self.held = merged(self.held, record, self.cleared)
        assert self.held is not None and not self.held.partial  # a worker never holds a delta

    def receive_clear(self, watermark: int) -> None:
        """Raise the watermark and drop the copy it covers whole (a newer copy stays)."""
        self.clock = max(self.clock, watermark)
        if watermark <= self.cleared:
            return
        self.cleared = watermark
        if self.held is not None and cleared_by(self.held, watermark):
            self.held = None

    def receive_message(self, message: Message) -> None:
        if isinstance(message, Clear):
            self.receive_clear(message.watermark)
        else:
            self.receive(message)


@dataclass
class Run:
    """Replicas of one session and everything that happened to it: the ground truth of the checks."""

    replicas: list[Replica]
    wall: float = 1_700_000_000.0
    changes: list[Change] = field(default_factory=list)
    destroys: list[Stamp] = field(default_factory=list)
    clears: list[int] = field(default_factory=list)
    #: (sender, receiver, message) sent and not yet delivered or lost.
    pending: list[tuple[int, int, Message]] = field(default_factory=list)
    #: (receiver, message) delivered at least once, to be delivered again.
    delivered: list[tuple[int, Message]] = field(default_factory=list)
    #: Per change, the stamp of every key of its writer's copy just after it: what naming it vouches for.
    made_on: dict[Stamp, dict[str, Stamp]] = field(default_factory=dict)

    @classmethod
    def of(cls, count: int) -> Run:
        return cls([Replica(origin) for origin in range(1, count + 1)])

    def tick(self, draw: Callable[..., Any]) -> float:
        """Wall time goes on by 0 to 2 seconds: accesses may tie."""
        self.wall += draw(st.integers(0, 2))
        return self.wall

    def send(self, sender: int, message: Message) -> None:
        self.pending += [(sender, receiver, message) for receiver in range(len(self.replicas)) if receiver != sender]

    def write(self, draw: Callable[..., Any], writer: int) -> Record:
        """``writer`` sets some keys to new values and removes some, on its copy; returns the delta (also sent)."""
        replica = self.replicas[writer]
        base = replica.held if replica.live else None
        setting = draw(st.sets(st.sampled_from(NAMES), max_size=3))
        removing = draw(st.sets(st.sampled_from(NAMES), max_size=2)) - setting
        version = replica.next_version()
        values = {name: f"{name}={version}.{replica.origin}" for name in sorted(setting)}
        data = dict(base.data) if base is not None else {}
        data.update(values)
        for name in removing:
            data.pop(name, None)
        copy, size, flat = prepare_data(data, MAX_BYTES)
        replica.held, delta = record_change(
            base, KEY, copy, values, sorted(removing), version=version, origin=replica.origin,
            wall=self.tick(draw), idle_timeout=IDLE_TIMEOUT, max_age=None, flat=flat, size=size,
        )
        self.changes.append(Change((version, replica.origin), values, frozenset(removing)))
        self.made_on[(version, replica.origin)] = dict(stamps_of(replica.held))
        self.send(writer, delta)
        return delta

    def destroy(self, draw: Callable[..., Any], destroyer: int) -> None:
        replica = self.replicas[destroyer]
        version = replica.next_version()
        wall = self.tick(draw)
        created = replica.held.created if replica.held is not None else wall
        tombstone = Record(KEY, {}, version, replica.origin, created, wall, wall + TOMBSTONE_LIFE, True)
        replica.receive(tombstone)
        assert replica.held is tombstone
        self.destroys.append((version, replica.origin))
        self.send(destroyer, tombstone)

    def clear(self, clearer: int) -> None:
        replica = self.replicas[clearer]
        watermark = replica.next_version()
        replica.receive_clear(watermark)
        self.clears.append(watermark)
        self.send(clearer, Clear(watermark))

    def repair(self, source: int, target: int) -> None:
        """``target`` merges ``source``'s whole copy: a snapshot, or a read from the hub."""
        held = self.replicas[source].held
        if held is not None and source != target:
            self.replicas[target].receive(held)

    def deliver(self, index: int) -> None:
        _sender, receiver, message = self.pending.pop(index)
        self.replicas[receiver].receive_message(message)
        self.delivered.append((receiver, message))

    def losable(self) -> list[int]:
        """The pending records: only records are lost here (a clear's delivery is the bus's business)."""
        return [index for index, (_s, _r, message) in enumerate(self.pending) if isinstance(message, Record)]

    def lose(self, index: int) -> None:
        """A lost record: the receiver sees the gap and repairs it from the sender's copy."""
        sender, receiver, _message = self.pending.pop(index)
        self.repair(sender, receiver)

    def settle(self, order: Iterable[int]) -> None:
        """Deliver what is pending (in ``order``), then repair every replica from every other until stable."""
        for _sender, receiver, message in [self.pending[index] for index in order]:
            self.replicas[receiver].receive_message(message)
        self.pending.clear()
        count = len(self.replicas)
        for _ in range(2 * count):
            before = [state(replica.held) for replica in self.replicas]
            for source in range(count):
                for target in range(count):
                    self.repair(source, target)
            if [state(replica.held) for replica in self.replicas] == before:
                return
        raise AssertionError(f"repairs did not settle: {[replica.held for replica in self.replicas]}")


STEPS = ["write", "write", "deliver", "deliver", "duplicate", "lose", "repair", "clear", "destroy"]


def play(draw: Callable[..., Any], run: Run, steps: int, *, clears: bool = True, destroys: bool = True) -> None:
    """``steps`` random steps; replica 0 creates the session first (only a live copy is written to)."""
    run.write(draw, 0)
    allowed = [step for step in STEPS if (clears or step != "clear") and (destroys or step != "destroy")]
    count = len(run.replicas)
    for _ in range(steps):
        step = draw(st.sampled_from(allowed))
        writers = [index for index, replica in enumerate(run.replicas) if replica.live]
        if step == "write" and writers:
            run.write(draw, draw(st.sampled_from(writers)))
        elif step == "destroy":
            run.destroy(draw, draw(st.integers(0, count - 1)))
        elif step == "clear":
            run.clear(draw(st.integers(0, count - 1)))
        elif step == "deliver" and run.pending:
            run.deliver(draw(st.integers(0, len(run.pending) - 1)))
        elif step == "duplicate" and run.delivered:
            receiver, message = draw(st.sampled_from(run.delivered))
            run.replicas[receiver].receive_message(message)
        elif step == "lose" and run.losable():
            run.lose(draw(st.sampled_from(run.losable())))
        elif step == "repair":
            run.repair(draw(st.integers(0, count - 1)), draw(st.integers(0, count - 1)))


def expected_keys(changes: Iterable[Change], watermark: int) -> tuple[dict[str, str], dict[str, Stamp]]:
    """Per key the highest-stamped change, its value or its removal, unless a clear covers that change."""
    values: dict[str, str] = {}
    stamps: dict[str, Stamp] = {}
    for made in sorted(changes, key=lambda made: made.stamp):
        for name in made.keys:
            stamps[name] = made.stamp
            if name in made.changed:
                values[name] = made.changed[name]
            else:
                values.pop(name, None)
    covered = [name for name, (version, _origin) in stamps.items() if version <= watermark]
    for name in covered:
        del stamps[name]
        values.pop(name, None)
    return values, stamps


# -- N replicas -----------------------------------------------------------------------------------------


@_settings
@given(st.integers(2, 4), st.integers(1, 40), st.booleans(), st.data())
def test_replicas_converge_and_lose_no_acknowledged_change(
    count: int, steps: int, destroys: bool, data: st.DataObject
) -> None:
    run = Run.of(count)
    play(data.draw, run, steps, destroys=destroys)  # without destroys as often: one ends the story
    run.settle(data.draw(st.permutations(range(len(run.pending)))))

    final = run.replicas[0].held
    assert all(state(replica.held) == state(final) for replica in run.replicas)
    assert all(replica.held == final for replica in run.replicas)  # the short forms too
    watermark = max(run.clears, default=0)
    assert all(replica.cleared == watermark for replica in run.replicas)
    if run.destroys:
        # Destroy is final: the latest tombstone, whatever was written after it anywhere.
        assert final is not None and final.deleted and (final.version, final.origin) == max(run.destroys)
        return
    data_now = final.data if final is not None else {}
    for made in run.changes:
        for name, value in made.changed.items():
            overwritten = any(later.stamp > made.stamp and name in later.keys for later in run.changes)
            if not overwritten and made.stamp[0] > watermark:
                assert data_now.get(name) == value, (name, made.stamp, final)


@_settings
@given(st.integers(2, 4), st.integers(1, 40), st.data())
def test_every_key_ends_as_its_latest_change_left_it_and_a_clear_ends_what_it_covers(
    count: int, steps: int, data: st.DataObject
) -> None:
    """The exact outcome: per key the highest stamp's value or removal, nothing a clear covers survives."""
    run = Run.of(count)
    play(data.draw, run, steps, destroys=False)
    run.settle(data.draw(st.permutations(range(len(run.pending)))))

    final = run.replicas[0].held
    assert all(state(replica.held) == state(final) for replica in run.replicas)
    watermark = max(run.clears, default=0)
    values, stamps = expected_keys(run.changes, watermark)
    assert (final.data if final is not None else {}) == values
    assert (dict(stamps_of(final)) if final is not None else {}) == stamps
    if final is not None:
        # The newest change wins the session's own stamp; ``seen`` reflects every writer's newest change
        # the clear spared (a change it covered may have gone with a copy it dropped whole).
        assert (final.version, final.origin) == max(made.stamp for made in run.changes)
        newest: dict[int, int] = {}
        for version, origin in (made.stamp for made in run.changes):
            newest[origin] = max(newest.get(origin, 0), version)
        seen = seen_of(final)
        assert seen.keys() <= newest.keys()
        for origin, version in newest.items():
            assert seen.get(origin, 0) == version if version > watermark else seen.get(origin, 0) <= version


@_settings
@given(st.integers(2, 4), st.integers(1, 40), st.data())
def test_a_copy_names_a_change_only_once_it_holds_what_its_writer_held(
    count: int, steps: int, data: st.DataObject
) -> None:
    """Read-your-writes trusts ``seen``: a copy that names a change holds, key by key, at least what the
    writer's copy held when it made it, whatever was lost, duplicated or delivered out of order."""
    run = Run.of(count)
    play(data.draw, run, steps, clears=False, destroys=False)
    for replica in run.replicas:
        held = replica.held
        if held is None or held.deleted:
            continue
        stamps = stamps_of(held)
        for (version, origin), made_on in run.made_on.items():
            if reflects(held, version, origin):
                for name, stamp in made_on.items():
                    assert stamps.get(name, (0, 0)) >= stamp, (
                        f"replica {replica.origin} names change {(version, origin)} but lacks {name} at {stamp}")


# -- the merge is a join ------------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> Run:
    """Writers that change their copies and repair each other's, so copies share some changes, not all."""
    run = Run.of(draw(st.integers(2, 4)))
    play(draw, run, draw(st.integers(0, 20)), clears=False, destroys=False)
    return run


def live_copies(run: Run) -> list[Record]:
    return [replica.held for replica in run.replicas if replica.held is not None and not replica.held.deleted]


@_settings
@given(st.data())
def test_merge_is_commutative_associative_and_idempotent(data: st.DataObject) -> None:
    copies = live_copies(data.draw(histories()))
    a, b, c = (data.draw(st.sampled_from(copies)) for _ in range(3))
    assert state(joined(a, b)) == state(joined(b, a))
    assert state(joined(joined(a, b), c)) == state(joined(a, joined(b, c)))
    assert merge_records(a, a) is None
    assert state(joined(joined(a, b), b)) == state(joined(a, b)) == state(joined(a, joined(a, b)))


@_settings
@given(st.data())
def test_a_clear_inside_a_merge_commutes_and_leaves_nothing_it_covers(data: st.DataObject) -> None:
    copies = live_copies(data.draw(histories()))
    a, b = (data.draw(st.sampled_from(copies)) for _ in range(2))
    # A watermark below both copies' newest change: neither is refused whole, keys at or below it go.
    watermark = data.draw(st.integers(0, min(a.version, b.version) - 1))
    result = joined(a, b, watermark)
    assert state(result) == state(joined(b, a, watermark))
    assert all(version > watermark for version, _origin in stamps_of(result).values())
    assert state(joined(result, a, watermark)) == state(result)


@_settings
@given(st.data())
def test_a_delta_into_a_copy_that_contains_its_base_equals_the_held_record(data: st.DataObject) -> None:
    run = data.draw(histories())
    writers = [index for index, replica in enumerate(run.replicas) if replica.live]
    writer = data.draw(st.sampled_from(writers))
    base = run.replicas[writer].held
    assert base is not None
    receiver = joined(data.draw(st.sampled_from(live_copies(run))), base)
    assert state(joined(receiver, base)) == state(receiver)
    delta = run.write(data.draw, writer)
    held = run.replicas[writer].held
    assert held is not None and delta.partial
    assert state(joined(receiver, delta)) == state(joined(receiver, held))
