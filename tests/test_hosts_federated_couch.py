"""Several hosts joined through one real CouchDB-API server: where its ``_changes`` feed stood is kept.

The cases every store shares run in ``test_hosts_federated`` on CouchDB too.
Here, CouchDB's own: a sidecar killed and restarted resumes the feed from the
``since`` it kept, and one whose kept since the database can't have given
reads every session again instead of missing what changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from memsession import new_id
from persist.couchdb.feed import FEED_HOST, SINCE
from tests.federated import CROSS_HOST, Host, everywhere, three_hosts
from tests.sidecars import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.zmq, pytest.mark.timeout(180)]


@pytest.fixture
def hosts(couch_url: str, unique_name: Callable[..., str]) -> Iterator[list[Host]]:
    with three_hosts(f"{couch_url}/{unique_name('hosts')}") as made:
        yield made


def _kept(host: Host) -> dict[str, object]:
    with open(host.positions_file) as f:
        kept = json.load(f)
    assert isinstance(kept, dict)
    return kept


def test_a_sidecar_killed_and_restarted_resumes_the_feed_from_the_since_it_kept(hosts: list[Host]) -> None:
    a, b, _ = hosts
    sid = new_id()
    a.workers[0].set(sid, {"v": 1})
    everywhere(hosts, sid, {"v": 1}, "the session")
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
    everywhere([b], sid, {"v": 2}, "the change made while host b was away")
    got = b.workers[0].wait_for(sid, changed.version, 5.0, changed.origin)
    assert got is not None and got.data == {"v": 2}


def test_a_kept_since_the_database_can_not_have_given_is_a_gap_not_a_loss(hosts: list[Host]) -> None:
    a, b, _ = hosts
    sid = new_id()
    a.workers[0].set(sid, {"v": 1})
    everywhere(hosts, sid, {"v": 1}, "the session")
    assert b.sidecar.terminate() == 0
    kept = _kept(b)
    kept[SINCE] = "99999999"  # ahead of the database: PouchDB would follow from it and hand nothing over
    with open(b.positions_file, "w") as f:
        json.dump(kept, f)
    a.workers[0].set(sid, {"v": 2})
    time.sleep(0.5)  # flushed while host b is away
    b.sidecar.start()
    wait_until(lambda: b.sidecar.stats()["federation"]["gaps"] >= 1, CROSS_HOST, "host b to report the gap")
    everywhere([b], sid, {"v": 2}, "the change made while host b was away, read again")
    after = new_id()
    a.workers[1].set(after, {"after": True})
    everywhere([b], after, {"after": True}, "a session written once host b follows again")
    wait_until(lambda: _kept(b)[SINCE] != "99999999", CROSS_HOST, "host b to keep where it follows from now")
