"""Several hosts, one sidecar each, joined through one real database: the promise holds across hosts.

Three "hosts", each a real ``memsession sidecar --host-name`` process on its
own runtime dir with two workers (``tests.federated``), share one database:
a real PostgreSQL (each sidecar logs its writes in the save's transaction
and follows the others' log: LISTEN/NOTIFY and a poll every heartbeat) or a
real CouchDB-API server (each follows the database's ``_changes``); every
test of both runs on each. A session written on one host is read on another
(through the store, with the writer's version: read-your-writes); a change
made on one host drops every older copy on the others; a destroy beats a
late write made on another host with the copy from before it (no
resurrection, in every host and in the store); a clear reaches every host;
a sidecar restarted resumes following. PostgreSQL only: a sidecar killed
and restarted replays its log from where it stood, and a gap past the pruned
log drops only the partitions it missed (CouchDB's own cases are in
``test_hosts_federated_couch``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from memsession import new_id
from memsession.errors import SessionDestroyed
from tests.federated import CROSS_HOST, Host, everywhere, stored, three_hosts
from tests.sidecars import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.zmq, pytest.mark.timeout(180)]


@pytest.fixture(params=["postgres", "couchdb"])
def store_url(request: pytest.FixtureRequest) -> str:
    """One database the hosts share: PostgreSQL (its change log) or CouchDB (its ``_changes``)."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"{request.getfixturevalue('couch_url')}/{request.getfixturevalue('unique_name')('hosts')}"


@pytest.fixture
def hosts(store_url: str) -> Iterator[list[Host]]:
    with three_hosts(store_url) as made:
        yield made


@pytest.fixture
def pg_hosts(postgres_url: str) -> Iterator[list[Host]]:
    with three_hosts(postgres_url) as made:
        yield made


def test_a_session_written_on_one_host_is_read_on_every_other(hosts: list[Host]) -> None:
    a, b, c = hosts
    sid = new_id()
    record = a.workers[0].set(sid, {"user": "ada"})
    # Read-your-writes on another host: the version from the cookie is waited for, then read through.
    got = b.workers[1].wait_for(sid, record.version, 5.0, record.origin)
    assert got is not None and got.data == {"user": "ada"}
    everywhere(hosts, sid, {"user": "ada"}, "the new session")
    wait_until(lambda: all(h.sidecar.stats()["remote_changes"] >= 1 for h in (b, c)), CROSS_HOST,
               "the write in the other hosts' feeds")


def test_a_change_on_one_host_drops_the_older_copies_on_the_others(hosts: list[Host]) -> None:
    a, b, c = hosts
    sid = new_id()
    a.workers[0].set(sid, {"n": 1})
    everywhere(hosts, sid, {"n": 1}, "the first version")
    record = c.workers[1].set(sid, {"n": 2, "by": "c"})
    everywhere(hosts, sid, {"n": 2, "by": "c"}, "the change made on host c")
    got = a.workers[1].wait_for(sid, record.version, 5.0, record.origin)
    assert got is not None and got.data == {"n": 2, "by": "c"}
    assert a.sidecar.stats()["remote_invalidated"] >= 1


def test_a_destroy_beats_a_late_write_on_another_host(hosts: list[Host], store_url: str) -> None:
    a, b, _ = hosts
    sid = new_id()
    a.workers[0].set(sid, {"cart": 1})
    everywhere(hosts, sid, {"cart": 1}, "the session")
    a.workers[0].destroy(sid)
    # Host b still writes with the copy it had (a request that began before the destroy reached it).
    with contextlib.suppress(SessionDestroyed):  # the destroy got there first: refused outright
        b.workers[0].set(sid, {"cart": 2})
    everywhere(hosts, sid, None, "the destroy")
    time.sleep(1.0)  # a late write would have been flushed and relayed by now
    everywhere(hosts, sid, None, "the destroy, still")
    assert stored(store_url, sid) in (None, True)


def test_a_clear_reaches_every_host(hosts: list[Host]) -> None:
    a, b, c = hosts
    sids = [new_id() for _ in range(3)]
    for host, sid in zip(hosts, sids):
        host.workers[0].set(sid, {"on": host.name})
    for sid, host in zip(sids, hosts):
        everywhere(hosts, sid, {"on": host.name}, "each host's session")
    b.workers[1].clear()
    for sid in sids:
        everywhere(hosts, sid, None, "the clear")
    after = new_id()
    c.workers[0].set(after, {"new": True})
    everywhere(hosts, after, {"new": True}, "a session made after the clear")


def test_a_restarted_sidecar_follows_again(hosts: list[Host]) -> None:
    a, b, _ = hosts
    sid = new_id()
    a.workers[0].set(sid, {"v": 1})
    everywhere(hosts, sid, {"v": 1}, "the session")
    b.sidecar.terminate()
    b.sidecar.start()
    for worker in b.workers:
        wait_until(lambda w=worker: not w.bus.stats()["repair_due"], 30, "host b's workers to repair")
    record = a.workers[1].set(sid, {"v": 2})
    got = b.workers[0].wait_for(sid, record.version, 5.0, record.origin)
    assert got is not None and got.data == {"v": 2}
    everywhere(hosts, sid, {"v": 2}, "the change made after host b's restart")


def test_a_sidecar_killed_and_restarted_resumes_the_feed_where_it_stood(pg_hosts: list[Host]) -> None:
    hosts = pg_hosts
    a, b, _ = hosts
    sid = new_id()
    a.workers[0].set(sid, {"v": 1})
    everywhere(hosts, sid, {"v": 1}, "the session")
    time.sleep(1.2)  # where host b's feed stood is on disk by now (written at most once a second)
    b.sidecar.kill()
    made = [new_id() for _ in range(5)]
    for n, other in enumerate(made):
        a.workers[1].set(other, {"while": n})
    changed = a.workers[0].set(sid, {"v": 2})
    time.sleep(0.5)  # flushed to the store and logged while host b is away
    b.sidecar.start()
    # The changes made while it was away come from the log, not from a start at its end.
    wait_until(lambda: b.sidecar.stats()["federation"]["changes"] >= len(made) + 1, CROSS_HOST,
               "host b's feed to replay what was written while it was away")
    got = b.workers[0].wait_for(sid, changed.version, 5.0, changed.origin)
    assert got is not None and got.data == {"v": 2}
    everywhere([b], sid, {"v": 2}, "the change made while host b was away")


def test_a_gap_past_the_pruned_log_drops_only_the_partitions_it_missed(
        pg_hosts: list[Host], postgres_url: str) -> None:
    from memsession import session_key
    from memsession.partitions import partition_of
    from persist.postgres import PostgresStore

    a, b, _ = pg_hosts
    kept = [new_id() for _ in range(8)]
    missed = new_id()
    while partition_of(session_key(missed)) in {partition_of(session_key(s)) for s in kept}:
        missed = new_id()
    victim = new_id()  # held on host b, in the partition of the change host b will miss
    while partition_of(session_key(victim)) != partition_of(session_key(missed)):
        victim = new_id()
    for sid in [*kept, victim]:
        a.workers[0].set(sid, {"kept": True})
    for sid in [*kept, victim]:
        wait_until(lambda s=sid: b.workers[0].get(s) == {"kept": True}, CROSS_HOST, "the session on host b")
    time.sleep(1.2)  # where host b's feed stood is on disk
    b.sidecar.kill()
    a.workers[0].set(missed, {"v": 1})
    wait_until(lambda: stored(postgres_url, missed) is False, CROSS_HOST, "the write in the store")
    # Host a's log is pruned past where host b stood, as after a long absence.
    store = PostgresStore(postgres_url, change_log=True, host="host-a")
    try:
        assert store.prune_changes(time.time() + 10 * 24 * 3600) > 0
    finally:
        store.close()
    b.sidecar.start()
    wait_until(lambda: b.workers[0].record(victim) is None, CROSS_HOST, "the missed partition to be dropped")
    assert b.sidecar.stats()["federation"]["gaps"] >= 1
    # Only that partition: the others are still held, and the missed change is read through.
    for sid in kept:
        assert b.workers[0].record(sid) is not None, "a copy outside the missed partition was dropped"
    assert b.workers[0].get(missed) == {"v": 1}
    assert b.workers[0].get(victim) == {"kept": True}
