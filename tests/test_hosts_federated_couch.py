"""Several hosts, one sidecar each, joined through one real CouchDB-API server's ``_changes`` feed.

Three "hosts", each a real ``memsession sidecar --store http://.../db
--host-name`` process on its own runtime dir with two workers (``SessionCache``
on a ``ZmqBus`` to that sidecar, reading through on a miss), share one
database of a pouchdb-server. Nothing but the database joins them: each
sidecar follows its ``_changes`` feed (``persist.couchdb.CouchChangeFeed``).
A session written on one host is read on another; a change made on one host
drops every older copy on the others; a destroy beats a late write made on
another host (no resurrection, in every host and in the database); a clear
reaches every host; a sidecar killed and restarted resumes the feed from the
since it kept, and one whose kept since the database can't have given reads
every session again instead of missing what changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from memsession import SessionCache, new_id, session_key
from memsession.bus import ZmqBus
from memsession.errors import SessionDestroyed
from persist.couchdb import CouchStore
from persist.couchdb.feed import FEED_HOST, SINCE
from tests.sidecars import SidecarProcess, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.zmq, pytest.mark.timeout(180)]

FAST_BUS = {"heartbeat": 0.2, "silence": 0.7, "request_timeout": 2.0}
#: How long a change may take to reach another host: a flush, a feed line, a read-back, generously.
CROSS_HOST = 10.0


@dataclass
class Host:
    name: str
    sidecar: SidecarProcess
    workers: list[SessionCache]

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.sidecar.stop()

    @property
    def positions_file(self) -> str:
        return os.path.join(self.sidecar.runtime_dir, "feed-positions.json")


def _workers(runtime_dir: str, n: int = 2) -> list[SessionCache]:
    return [SessionCache(bus=ZmqBus(runtime_dir=runtime_dir, read_through=True, **FAST_BUS),
                         touch_interval=3600) for _ in range(n)]


def _host(url: str, name: str) -> Host:
    sidecar = SidecarProcess(url, "--host-name", name, "--heartbeat", "0.2", "--flush-interval", "0.05")
    sidecar.start()
    return Host(name, sidecar, _workers(sidecar.runtime_dir))


@pytest.fixture
def db_url(couch_url: str, unique_name: Callable[..., str]) -> str:
    return f"{couch_url}/{unique_name('hosts')}"


@pytest.fixture
def hosts(db_url: str) -> Iterator[list[Host]]:
    made: list[Host] = []
    try:
        for name in ("host-a", "host-b", "host-c"):
            made.append(_host(db_url, name))
        yield made
    finally:
        for host in made:
            host.close()


def _everywhere(hosts: list[Host], sid: str, expected: object, what: str) -> None:
    for host in hosts:
        for worker in host.workers:
            wait_until(lambda w=worker: w.get(sid) == expected, CROSS_HOST, f"{what} on {host.name}")


def _stored(url: str, sid: str) -> bool | None:
    """Whether the database holds the session as a tombstone (True), live (False), or not at all (None)."""
    store = CouchStore(url, create=False, trust_env=False)
    try:
        record = store.load(session_key(sid))
    finally:
        store.close()
    return None if record is None else record.deleted


def test_a_session_written_on_one_host_is_read_on_every_other(hosts: list[Host]) -> None:
    a, b, c = hosts
    sid = new_id()
    record = a.workers[0].set(sid, {"user": "ada"})
    got = b.workers[1].wait_for(sid, record.version, 5.0, record.origin)
    assert got is not None and got.data == {"user": "ada"}
    _everywhere(hosts, sid, {"user": "ada"}, "the new session")
    wait_until(lambda: all(h.sidecar.stats()["remote_changes"] >= 1 for h in (b, c)), CROSS_HOST,
               "the write in the other hosts' feeds")


def test_a_change_on_one_host_drops_the_older_copies_on_the_others(hosts: list[Host]) -> None:
    a, b, c = hosts
    sid = new_id()
    a.workers[0].set(sid, {"n": 1})
    _everywhere(hosts, sid, {"n": 1}, "the first version")
    record = c.workers[1].set(sid, {"n": 2, "by": "c"})
    # Every worker held the first version: only the feed can tell them it is stale.
    _everywhere(hosts, sid, {"n": 2, "by": "c"}, "the change made on host c")
    got = a.workers[1].wait_for(sid, record.version, 5.0, record.origin)
    assert got is not None and got.data == {"n": 2, "by": "c"}
    assert a.sidecar.stats()["remote_invalidated"] >= 1


def test_a_destroy_on_one_host_reaches_the_others_and_beats_a_late_write(hosts: list[Host], db_url: str) -> None:
    a, b, _ = hosts
    sid = new_id()
    a.workers[0].set(sid, {"cart": 1})
    _everywhere(hosts, sid, {"cart": 1}, "the session")
    a.workers[0].destroy(sid)
    # Host b still writes with the copy it had (a request that began before the destroy reached it).
    with contextlib.suppress(SessionDestroyed):  # the destroy got there first: refused outright
        b.workers[0].set(sid, {"cart": 2})
    _everywhere(hosts, sid, None, "the destroy")
    time.sleep(1.0)  # a late write would have been flushed and followed by now
    _everywhere(hosts, sid, None, "the destroy, still")
    assert _stored(db_url, sid) in (None, True)


def test_a_clear_reaches_every_host(hosts: list[Host]) -> None:
    a, b, c = hosts
    sids = [new_id() for _ in range(3)]
    for host, sid in zip(hosts, sids):
        host.workers[0].set(sid, {"on": host.name})
    for sid, host in zip(sids, hosts):
        _everywhere(hosts, sid, {"on": host.name}, "each host's session")
    b.workers[1].clear()
    for sid in sids:
        _everywhere(hosts, sid, None, "the clear")
    after = new_id()
    c.workers[0].set(after, {"new": True})
    _everywhere(hosts, after, {"new": True}, "a session made after the clear")


def _kept(host: Host) -> dict[str, object]:
    with open(host.positions_file) as f:
        kept = json.load(f)
    assert isinstance(kept, dict)
    return kept


def test_a_sidecar_killed_and_restarted_resumes_the_feed_from_the_since_it_kept(hosts: list[Host]) -> None:
    a, b, _ = hosts
    sid = new_id()
    a.workers[0].set(sid, {"v": 1})
    _everywhere(hosts, sid, {"v": 1}, "the session")
    time.sleep(1.2)  # where host b's feed stood is on disk by now (written at most once a second)
    kept = _kept(b)
    assert isinstance(kept[SINCE], str) and isinstance(kept[FEED_HOST], int)
    b.sidecar.kill()
    made = [new_id() for _ in range(5)]
    for n, other in enumerate(made):
        a.workers[1].set(other, {"while": n})
    changed = a.workers[0].set(sid, {"v": 2})
    time.sleep(0.5)  # flushed to the database while host b is away
    b.sidecar.start()
    # The changes made while it was away come from the since it kept, not from a start at the end.
    wait_until(lambda: b.sidecar.stats()["federation"]["changes"] >= len(made) + 1, CROSS_HOST,
               "host b's feed to replay what was written while it was away")
    assert b.sidecar.stats()["federation"]["gaps"] == 0
    _everywhere([b], sid, {"v": 2}, "the change made while host b was away")
    got = b.workers[0].wait_for(sid, changed.version, 5.0, changed.origin)
    assert got is not None and got.data == {"v": 2}


def test_a_kept_since_the_database_can_not_have_given_is_a_gap_not_a_loss(hosts: list[Host]) -> None:
    a, b, _ = hosts
    sid = new_id()
    a.workers[0].set(sid, {"v": 1})
    _everywhere(hosts, sid, {"v": 1}, "the session")
    assert b.sidecar.terminate() == 0
    kept = _kept(b)
    kept[SINCE] = "99999999"  # ahead of the database: PouchDB would follow from it and hand nothing over
    with open(b.positions_file, "w") as f:
        json.dump(kept, f)
    a.workers[0].set(sid, {"v": 2})
    time.sleep(0.5)  # flushed while host b is away
    b.sidecar.start()
    wait_until(lambda: b.sidecar.stats()["federation"]["gaps"] >= 1, CROSS_HOST, "host b to report the gap")
    _everywhere([b], sid, {"v": 2}, "the change made while host b was away, read again")
    after = new_id()
    a.workers[1].set(after, {"after": True})
    _everywhere([b], after, {"after": True}, "a session written once host b follows again")
    wait_until(lambda: _kept(b)[SINCE] != "99999999", CROSS_HOST, "host b to keep where it follows from now")
