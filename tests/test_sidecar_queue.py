"""The sidecar's write-behind queue, driven by hypothesis against a model (no sockets, no store)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memsession.errors import ConfigError
from memsession.session import Record
from persist.base import supersedes
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


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
def test_limit_is_checked(limit: object) -> None:
    with pytest.raises(ConfigError):
        WriteQueue(limit)  # type: ignore[arg-type]


class QueueMachine(RuleBasedStateMachine):
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
