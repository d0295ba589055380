"""A worker SIGKILLed mid-load, with a real hub process and real worker processes.

The others and the hub keep serving; what the killed worker had published
stays with them; a replacement joins and sees every session; the dead
worker's origin is forgotten once ``--forget-after`` has passed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from memsession.session import new_id, session_key
from tests.test_origin_churn import snapshot_reply
from tests.test_replication_zmq import FAST, HubProcess, Worker, _poll, run_ops, wait_converged

pytestmark = pytest.mark.zmq

FORGET_AFTER = 2.0


@pytest.fixture
def cluster() -> Iterator[tuple[HubProcess, dict[str, Any], list[Worker]]]:
    with tempfile.TemporaryDirectory(prefix="ms-kill-") as tmp:
        runtime_dir = os.path.join(tmp, "rt")
        hub = HubProcess(["--runtime-dir", runtime_dir, "--forget-after", str(FORGET_AFTER)],
                         f"ipc://{runtime_dir}/req.sock")
        workers: list[Worker] = []
        hub.start()
        try:
            yield hub, {"runtime_dir": runtime_dir, **FAST, "forget_after": FORGET_AFTER}, workers
        finally:
            for worker in workers:
                worker.stop()
            hub.stop()


def _not_older(final: dict[str, tuple[Any, ...]], seen: dict[str, tuple[Any, ...]], origin: int) -> list[str]:
    """Keys whose record by ``origin`` in ``seen`` is missing from ``final`` or newer than what it holds."""
    return [key for key, (version, by, *_rest) in seen.items()
            if by == origin and (key not in final or final[key][:2] < (version, by))]


def test_a_worker_killed_mid_load_loses_nothing_it_published_and_its_origin_is_forgotten(cluster) -> None:
    hub, options, workers = cluster
    shared = [new_id() for _ in range(60)]
    for seed in range(3):
        workers.append(Worker(options, shared, seed))
    victim, survivors = workers[0], workers[1:]
    run_ops(workers, 200)
    # Sessions only the victim writes: once the others hold them, they were published.
    own = [new_id() for _ in range(20)]
    for n, sid in enumerate(own):
        victim.call(("set", (sid, {"only": "victim", "n": n})))
    own_keys = [session_key(sid) for sid in own]  # what the hub and the workers hold them by
    _poll(lambda: all(key in s for s in [hub.snapshot()] + [w.call(("state", None)) for w in survivors]
                      for key in own_keys), 20, "the victim's sessions at the hub and the others")
    before = hub.snapshot()
    # The hub lists its own stream last in its vector.
    hub_id = list(snapshot_reply(hub.requests)[1])[-1]

    # Mid-load: everyone is writing when the victim dies.
    for worker in workers:
        worker.conn.send(("ops", 100_000 if worker is victim else 400))
    _poll(lambda: any(by == victim.origin and key in before and version > before[key][0]
                      for key, (version, by, *_rest) in hub.snapshot().items()),
          20, "the victim's load to reach the hub")
    workers.remove(victim)
    victim.kill()
    at_kill = hub.snapshot()
    for worker in survivors:
        worker.call(None, timeout=60)  # their load finished: the bus did not stall on the dead peer
    held = [w.call(("state", None)) for w in survivors]
    assert hub.stats()["sessions"] > 0

    run_ops(survivors, 100)
    workers.append(Worker(options, shared, 99))
    final = wait_converged(workers, hub, timeout=30)
    for key, n in zip(own_keys, range(len(own))):
        assert final[key][3] == {"only": "victim", "n": n}
    # Whatever of the victim's the hub or a survivor had is still there, or superseded by a later write.
    for seen in (before, at_kill, *held):
        assert _not_older(final, seen, victim.origin) == []
    assert any(by == victim.origin for _version, by, *_rest in final.values())

    # The dead origin's bookkeeping goes, at the hub and in every worker; the live ones stay.
    live = {w.origin for w in workers}
    _poll(lambda: set(snapshot_reply(hub.requests)[1]) == {*live, hub_id}, 30, "the hub to forget the killed worker")
    stats = hub.stats()
    assert stats["streams"] == len(live) and stats["forgotten"] >= 1
    for worker in workers:
        _poll(lambda w=worker: w.call(("stats", None))["replication"]["streams"] == 3, 30,
              "a worker to forget the killed one")  # the two other workers and the hub
    assert wait_converged(workers, hub) == final
