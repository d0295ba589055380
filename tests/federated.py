"""Hosts for the several-hosts tests: a real ``memsession sidecar --host-name`` and two workers each.

Each host is a sidecar process on a runtime dir of its own, with two
``SessionCache`` workers on a ``ZmqBus`` to it that read through it on a
miss; nothing but the store joins the hosts. ``stored`` reads what the store
itself holds, PostgreSQL or CouchDB.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from memsession import SessionCache, session_key
from memsession.bus import ZmqBus
from tests.sidecars import SidecarProcess, wait_until

FAST_BUS = {"heartbeat": 0.2, "silence": 0.7, "request_timeout": 2.0}
#: How long a change may take to reach another host: a flush, the feed, a read-back, generously.
CROSS_HOST = 10.0
HOST_NAMES = ("host-a", "host-b", "host-c")


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


#: The sidecar options of every host here: beats and flushes fast enough for tests.
FAST_SIDECAR = ("--heartbeat", "0.2", "--flush-interval", "0.05")


def workers_of(runtime_dir: str, n: int = 2) -> list[SessionCache]:
    """``n`` workers on the sidecar of ``runtime_dir``, reading through it on a miss."""
    return [SessionCache(bus=ZmqBus(runtime_dir=runtime_dir, read_through=True, **FAST_BUS),
                         touch_interval=3600) for _ in range(n)]


def start_host(url: str, name: str) -> Host:
    sidecar = SidecarProcess(url, "--host-name", name, *FAST_SIDECAR)
    sidecar.start()
    return Host(name, sidecar, workers_of(sidecar.runtime_dir))


@contextlib.contextmanager
def three_hosts(url: str) -> Iterator[list[Host]]:
    made: list[Host] = []
    try:
        for name in HOST_NAMES:
            made.append(start_host(url, name))
        yield made
    finally:
        for host in made:
            host.close()


def everywhere(hosts: list[Host], sid: str, expected: object, what: str) -> None:
    """Wait until every worker of every host reads ``expected`` for ``sid``."""
    for host in hosts:
        for worker in host.workers:
            wait_until(lambda w=worker: w.get(sid) == expected, CROSS_HOST, f"{what} on {host.name}")


def stored(url: str, sid: str) -> bool | None:
    """Whether the store holds the session as a tombstone (True), live (False), or not at all (None)."""
    key = session_key(sid)
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT deleted FROM memsession WHERE sid = %s", (key,)).fetchone()
        return None if row is None else bool(row[0])
    from persist.couchdb import CouchStore

    store = CouchStore(url, create=False, trust_env=False)
    try:
        record = store.load(key)
    finally:
        store.close()
    return None if record is None else record.deleted
