"""The sidecar's write-behind queue, driven by hypothesis against a model (no sockets, no store)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memsession.changes import merge_records
from memsession.errors import ConfigError
from memsession.session import Record
from persist.base import merge_row, supersedes
from persist.queue import WriteQueue

KEYS = [f"k{i}" for i in range(8)]


def rec(key: str, version: int, *, deleted: bool = False, accessed: float | None = None) -> Record:
    return Record(key, {} if deleted else {"v": version}, version, 1, 0.0,
                  float(version) if accessed is None else accessed, 1e12, deleted)


def test_coalesces_by_key_newest_wins() -> None:
    q = WriteQueue(limit=10)
    q.add(rec("a", 1))
    q.add(rec("a", 3))
    q.add(rec("a", 2))  # late and older: ignored
    q.add(rec("b", 1))
    assert len(q) == 2
    assert q.get("a") == rec("a", 3)
    assert q.counts["coalesced"] == 1 and q.counts["stale"] == 1
    assert [r.key for r in q.take(10)] == ["a", "b"]  # oldest key first


def test_clear_drops_what_it_covers_and_is_owed_to_the_store() -> None:
    q = WriteQueue()
    for key, version in (("a", 1), ("b", 5), ("c", 9)):
        q.add(rec(key, version))
    q.add(rec("d", 2, deleted=True))
    q.clear(5)
    assert [r.key for r in q.take(10)] == ["c", "d"]  # a tombstone is still owed to the store
    assert q.clear_due == 5 and q.counts["cleared"] == 2
    q.clear(3)  # an older clear lowers nothing
    assert q.clear_due == 5
    q.clear(7)
    q.clear_done(5)  # the store took 5 while 7 arrived: 7 is still owed
    assert q.clear_due == 7 and q.stats()["clear_due"] == 7
    q.clear_done(7)
    assert q.clear_due == 0


def test_touch_replaces_same_version() -> None:
    q = WriteQueue()
    q.add(rec("a", 5, accessed=5.0))
    q.add(rec("a", 5, accessed=9.0))
    assert q.get("a").accessed == 9.0  # type: ignore[union-attr]


def test_failed_batch_goes_back_in_front_unless_superseded() -> None:
    q = WriteQueue()
    for key in ("a", "b", "c"):
        q.add(rec(key, 1))
    batch = q.take(2)
    q.add(rec("a", 2))  # arrives while the batch is being written
    q.failed(batch)
    assert q.get("a") == rec("a", 2)
    assert q.get("b") == rec("b", 1)
    assert [r.key for r in q.take(3)] == ["b", "c", "a"]


def test_failed_batch_taken_before_a_clear_brings_back_only_what_it_did_not_cover() -> None:
    q = WriteQueue()
    q.add(rec("a", 3))
    q.add(rec("b", 9))
    q.add(rec("c", 4, deleted=True))
    batch = q.take(3)
    q.clear(5)  # arrives while the batch is being written, which then fails
    q.failed(batch)
    assert sorted(r.key for r in q.take(10)) == ["b", "c"]  # the tombstone is still owed


def test_overflow_keeps_tombstones_and_asks_for_a_rewrite() -> None:
    q = WriteQueue(limit=3)
    q.add(rec("a", 1))
    q.add(rec("t", 1, deleted=True))
    q.add(rec("b", 1))
    assert not q.rewrite_due
    assert q.add(rec("c", 1)) is True  # this one overflows
    assert q.rewrite_due
    assert len(q) == 1 and q.get("t") is not None
    assert q.counts["overflowed"] == 2 and q.counts["deferred"] == 1
    assert q.add(rec("d", 1)) is False  # covered by the coming rewrite, not queued
    assert q.add(rec("u", 1, deleted=True)) is False  # tombstones still queue
    assert q.get("u") is not None
    q.start_rewrite()
    assert not q.rewrite_due


def test_a_change_arriving_while_the_rewrite_runs_is_queued() -> None:
    # The rewrite read memory when it started; a change merged after that is not in what it
    # writes, so it must be queued (deferring it lost it from the store under load).
    q = WriteQueue(limit=1)
    q.add(rec("a", 1))
    q.add(rec("b", 1))  # overflows
    q.start_rewrite()
    q.add(rec("a", 2))
    assert q.get("a") is not None and q.get("a").version == 2
    assert not q.settled("a", 2, 1)
    q.end_rewrite(True)
    assert [r.key for r in q.take(10)] == ["a"]


def test_only_tombstones_beyond_the_limit_are_lost() -> None:
    q = WriteQueue(limit=2)
    for i in range(4):
        q.add(rec(f"t{i}", 1, deleted=True))
    assert len(q) == 2
    assert q.counts["lost"] == 2
    assert q.get("t3") is not None  # the newest stay


def delta(key: str, version: int, values: dict[str, int], removed: tuple[str, ...] = (), origin: int = 1) -> Record:
    """A request's delta: only the keys it touched, stamped with its own ``(version, origin)``."""
    stamps = dict.fromkeys((*values, *removed), (version, origin)) if removed else None
    return Record(key, values, version, origin, 0.0, float(version), 1e12, False, stamps=stamps, partial=True)


def test_deltas_of_one_session_merge_into_one_entry() -> None:
    q = WriteQueue()
    q.add(delta("a", 1, {"x": 1}, origin=1))
    q.add(delta("a", 2, {"y": 2}, origin=2))
    q.add(delta("a", 1, {"x": 1}, origin=1))  # again: adds nothing
    queued = q.get("a")
    assert queued is not None and queued.data == {"x": 1, "y": 2} and queued.partial
    assert queued.seen == {1: 1, 2: 2}
    assert q.counts["coalesced"] == 1 and q.counts["stale"] == 1 and len(q) == 1
    q.add(rec("a", 3))  # a whole record completes it
    whole = q.get("a")
    assert whole is not None and not whole.partial and whole.data == {"x": 1, "y": 2, "v": 3}


def test_reads_see_in_flight_and_queued_deltas_merged() -> None:
    q = WriteQueue()
    q.add(delta("a", 1, {"x": 1}))
    flying = q.take(1)
    q.add(delta("a", 2, {"y": 2}))
    read = q.get("a")
    assert read is not None and read.data == {"x": 1, "y": 2}
    q.failed(flying)  # the in-flight one goes back, merged with what came meanwhile
    assert len(q) == 1 and q.get("a") == read
    assert [r.data for r in q.take(5)] == [{"x": 1, "y": 2}]


def test_a_failed_delta_already_in_what_was_queued_since_is_not_requeued_twice() -> None:
    q = WriteQueue()
    for key in ("a", "b"):
        q.add(delta(key, 1, {"x": 1}))
    batch = q.take(2)
    q.add(delta("a", 2, {"x": 2}))  # the same key, newer: the failed one adds nothing
    q.failed(batch)
    assert [(r.key, r.data) for r in q.take(5)] == [("b", {"x": 1}), ("a", {"x": 2})]


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
def test_limit_is_checked(limit: object) -> None:
    with pytest.raises(ConfigError):
        WriteQueue(limit)  # type: ignore[arg-type]


class _QueueRules(RuleBasedStateMachine):
    """The store's side, shared by the machines below: take a batch, store or fail it, rewrite after an overflow."""

    q: WriteQueue
    inflight: list[Record]
    latest: dict[str, Record]
    _save: Callable[[list[Record]], None]  # each machine's store

    @precondition(lambda self: not self.inflight)
    @rule(n=st.integers(1, 5))
    def take(self, n: int) -> None:
        self.inflight = self.q.take(n)

    @precondition(lambda self: bool(self.inflight))
    @rule()
    def store_takes_batch(self) -> None:
        self._save(self.inflight)
        self.q.done(self.inflight)
        self.inflight = []

    @precondition(lambda self: bool(self.inflight))
    @rule()
    def store_fails(self) -> None:
        self.q.failed(self.inflight)
        self.inflight = []

    @precondition(lambda self: self.q.rewrite_due and not self.inflight)
    @rule()
    def rewrite(self) -> None:
        self.q.start_rewrite()
        self._save(list(self.latest.values()))
        self.q.end_rewrite(True)


class QueueMachine(_QueueRules):
    """Whatever the order of writes, failures and overflows, the store ends with the newest of every key.

    The model: ``latest`` is what the replica holds (the newest record of
    every key), ``store`` what the store holds. A live key is either stored,
    queued, in flight, or covered by the rewrite the queue asked for; a
    tombstone is stored, queued or in flight unless counted as lost.
    """

    def __init__(self) -> None:
        super().__init__()
        self.q = WriteQueue(limit=4)
        self.latest: dict[str, Record] = {}
        self.store: dict[str, Record] = {}
        self.inflight: list[Record] = []
        self.version = 0

    def _save(self, records: list[Record]) -> None:
        for r in records:
            if supersedes(r, self.store.get(r.key)):
                self.store[r.key] = r

    @rule(key=st.sampled_from(KEYS), kind=st.sampled_from(["set", "set", "set", "touch", "destroy"]))
    def change(self, key: str, kind: str) -> None:
        old = self.latest.get(key)
        if kind == "touch":
            if old is None or old.deleted:
                return
            new = old.touched(old.accessed + 1, old.expires)
        else:
            if old is not None and old.deleted:
                return  # a destroyed id is never written again while its tombstone lives
            self.version += 1
            new = rec(key, self.version, deleted=kind == "destroy", accessed=float(self.version))
        self.latest[key] = new
        self.q.add(new)


    @invariant()
    def bounded(self) -> None:
        assert len(self.q) <= self.q.limit

    @invariant()
    def nothing_unaccounted(self) -> None:
        inflight = {r.key: r for r in self.inflight}
        for key, newest in self.latest.items():
            stored = self.store.get(key)
            if stored is not None and not supersedes(newest, stored):
                continue
            if self.q.get(key) == newest or inflight.get(key) == newest:
                continue
            if not newest.deleted and self.q.rewrite_due:
                continue
            assert newest.deleted and self.q.counts["lost"] > 0, (key, newest, stored, self.q.get(key))

    def teardown(self) -> None:
        # Drain: once the store works, everything ends up stored.
        if self.inflight:
            self._save(self.inflight)
            self.q.done(self.inflight)
        if self.q.rewrite_due:
            self.q.start_rewrite()
            self._save(list(self.latest.values()))
            self.q.end_rewrite(True)
        self._save(self.q.take(10**6))
        if self.q.counts["lost"] == 0:
            for key, newest in self.latest.items():
                assert not supersedes(newest, self.store.get(key)), key


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class DeltaQueueMachine(_QueueRules):
    """Deltas of a few keys per session, from two writers, through failures and overflows: the store ends
    holding every change, exactly what merging them all gives (``merge_records``, ``merge_row``).

    The model: ``latest`` is what the replica holds (every change merged),
    ``store`` what the store holds (``merge_row`` of what it was given).
    """

    def __init__(self) -> None:
        super().__init__()
        self.q = WriteQueue(limit=3)
        self.latest: dict[str, Record] = {}
        self.store: dict[str, Record] = {}
        self.inflight: list[Record] = []
        self.version = 0

    def _save(self, records: list[Record]) -> None:
        for r in records:
            merged = merge_row(self.store.get(r.key), r)
            if merged is not None:
                self.store[r.key] = merged

    @rule(key=st.sampled_from(KEYS[:5]), field=st.sampled_from("xyz"), origin=st.integers(1, 2),
          kind=st.sampled_from(["set", "set", "remove", "destroy"]))
    def change(self, key: str, field: str, origin: int, kind: str) -> None:
        old = self.latest.get(key)
        if old is not None and old.deleted:
            return  # a destroyed id is never written again while its tombstone lives
        self.version += 1
        if kind == "destroy":
            new = rec(key, self.version, deleted=True, accessed=float(self.version))
        elif old is None:  # a new session: the first write is whole
            new = Record(key, {field: self.version}, self.version, origin, 0.0, float(self.version), 1e12)
        elif kind == "set":
            new = delta(key, self.version, {field: self.version}, origin=origin)
        else:
            new = delta(key, self.version, {}, removed=(field,), origin=origin)
        merged = merge_records(old, new)
        assert merged is not None
        self.latest[key] = merged
        self.q.add(new)


    @invariant()
    def never_partial_in_the_store(self) -> None:
        assert not any(r.partial for r in self.store.values())

    def teardown(self) -> None:
        if self.inflight:
            self._save(self.inflight)
            self.q.done(self.inflight)
        if self.q.rewrite_due:
            self.q.start_rewrite()
            self._save(list(self.latest.values()))
            self.q.end_rewrite(True)
        self._save(self.q.take(10**6))
        if self.q.counts["lost"] == 0:
            for key, held in self.latest.items():
                assert self.store.get(key) == held, key


TestDeltaQueueMachine = DeltaQueueMachine.TestCase
TestDeltaQueueMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
