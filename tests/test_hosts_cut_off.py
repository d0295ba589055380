"""A host cut off from the database for 30 s: it refuses what it can't vouch for, and catches up after.

Two "hosts" share one real PostgreSQL. Host A's sidecar runs in a network
namespace of its own, whose only way to the database is a veth pair; host
B's runs beside the database. With the link cut, A's sidecar can neither
follow the other host's changes nor read the store, while B destroys and
changes sessions A's workers hold. A ground-truth log records when each of
B's changes was committed (seen in the store). No read on A may return a
copy older than a change committed before the read began, beyond the time a
sidecar takes to notice its feed has gone silent: a read is served the
newest state or refused (503), never the ended or older session. After the
link is healed, A's workers converge on the store's state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from memsession import SessionCache, new_id, session_key
from memsession.errors import SessionUnavailable
from memsession.service.federation import DEFAULT_SILENCE
from tests.federated import FAST_SIDECAR, workers_of
from tests.netns import Netns, TcpForwarder, unavailable
from tests.sidecars import SidecarProcess, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.zmq, pytest.mark.timeout(240)]

CUT_FOR = 30.0
#: A read may miss a change committed this shortly before it began: the sidecar notices its feed has
#: gone silent within ``DEFAULT_SILENCE`` (plus a poll and a beat) and vouches for nothing from then on.
NOTICE = DEFAULT_SILENCE + 1.5
SESSIONS = 10


class NetnsSidecar(SidecarProcess):
    """``memsession sidecar`` inside a namespace (the same pid: ``ip netns exec`` execs it)."""

    def __init__(self, ns: Netns, store: str, *args: str) -> None:
        self.ns = ns
        super().__init__(store, *args)

    def _argv(self) -> list[str]:
        return [*self.ns.prefix(), *super()._argv()]


@dataclass
class Truth:
    """Per session, the states committed to the store, with when each was seen there."""

    log: dict[str, list[tuple[float, object]]] = field(default_factory=dict)

    def committed(self, sid: str, state: object, at: float) -> None:
        self.log.setdefault(sid, []).append((at, state))

    def due(self, sid: str, began: float) -> list[object]:
        """The states a read that began at ``began`` may return: the newest one committed ``NOTICE`` before, or later."""
        states = self.log[sid]
        settled = max((i for i, (at, _) in enumerate(states) if at + NOTICE < began), default=0)
        return [state for _, state in states[settled:]]


def _state(worker: SessionCache, sid: str) -> object:
    data = worker.get(sid)
    return None if data is None else data.get("n")


def _in_store(url: str, sid: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT deleted, sess FROM memsession WHERE sid = %s", (session_key(sid),)).fetchone()
    if row is None or row[0]:
        return None
    data = row[1]
    return data.get("n") if isinstance(data, dict) else data


@pytest.fixture
def namespace() -> Iterator[Netns]:
    why = unavailable()
    if why is not None:
        pytest.skip(why)
    ns = Netns(1).create()
    try:
        yield ns
    finally:
        ns.remove()


def test_a_host_cut_off_from_the_database_serves_nothing_stale_and_converges_after(
        namespace: Netns, postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    forwarder = TcpForwarder(namespace.host_addr, (parts.hostname or "127.0.0.1", parts.port or 5432)).start()
    host, port = forwarder.address
    user = f"{parts.username}@" if parts.username else ""
    via_link = urlunsplit((parts.scheme, f"{user}{host}:{port}", parts.path, parts.query, ""))
    b_side = SidecarProcess(postgres_url, "--host-name", "host-b", *FAST_SIDECAR).start()
    a_side = NetnsSidecar(namespace, via_link, "--host-name", "host-a", *FAST_SIDECAR).start()
    a, b = workers_of(a_side.runtime_dir), workers_of(b_side.runtime_dir)
    truth = Truth()
    stop = threading.Event()
    stale: list[str] = []
    served = refused = 0
    try:
        sids = [new_id() for _ in range(SESSIONS)]
        for sid in sids:
            b[0].set(sid, {"n": 1})
            truth.committed(sid, 1, 0.0)
            wait_until(lambda s=sid: _in_store(postgres_url, s) == 1, 10, "the session in the store")
        for sid in sids:  # every session held on host a
            for worker in a:
                wait_until(lambda w=worker, s=sid: _state(w, s) == 1, 10, "the session on host a")

        def read_on_a() -> None:
            nonlocal served, refused
            while not stop.is_set():
                for i, sid in enumerate(sids):
                    began = time.monotonic()
                    try:
                        got = _state(a[i % 2], sid)
                    except SessionUnavailable:
                        refused += 1
                        continue
                    served += 1
                    if got not in truth.due(sid, began):
                        stale.append(f"{sid[:8]}: read {got!r} at {began:.2f}, due {truth.due(sid, began)}")
                time.sleep(0.02)

        reader = threading.Thread(target=read_on_a, daemon=True)
        reader.start()
        namespace.cut()
        cut_at = time.monotonic()
        # Host b ends half of the sessions and changes the rest, spread over the cut.
        for i, sid in enumerate(sids):
            time.sleep(CUT_FOR / (SESSIONS + 2))
            if i % 2:
                b[i % 2].destroy(sid)
                new: object = None
            else:
                b[i % 2].set(sid, {"n": 2})
                new = 2
            wait_until(lambda s=sid, v=new: _in_store(postgres_url, s) == v, 10, "host b's change in the store")
            truth.committed(sid, new, time.monotonic())
        time.sleep(max(0.0, CUT_FOR - (time.monotonic() - cut_at)))
        assert a_side.stats()["federation"]["silent"] == 1
        namespace.heal()
        healed = time.monotonic()
        expected = {sid: truth.log[sid][-1][1] for sid in sids}

        def converged() -> bool:
            try:
                return all(_state(w, sid) == expected[sid] for w in a for sid in sids)
            except SessionUnavailable:
                return False

        wait_until(converged, 30, "host a's workers to converge after the link was healed")
        took = time.monotonic() - healed
        wait_until(lambda: a_side.stats()["federation"]["silent"] == 0, 30, "host a's feed to catch up")
        trusted = time.monotonic() - healed
        stop.set()
        reader.join(10)
        print(f"cut {CUT_FOR:.0f}s: {served} reads served, {refused} refused on host a; converged "
              f"{took:.1f}s after healing, hits served from memory again after {trusted:.1f}s")
        assert not stale, f"{len(stale)} stale reads on host a, e.g. {stale[:3]}"
        assert refused > 0, "host a never refused: it served copies it could not vouch for"
    finally:
        stop.set()
        for worker in a + b:
            worker.close()
        a_side.stop()
        b_side.stop()
        forwarder.stop()
