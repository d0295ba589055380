"""A sidecar whose store refuses one record: it stores the rest, counts the refusal, and goes on.

A record the store refuses as such (``StoreRejected``: a constraint, a value)
is never going to be taken, so retrying its batch would hold back every change
queued behind it. The sidecar leaves it out (as the worker-side writer does),
counts it as ``rejected`` and keeps writing; a refused record is not an outage,
so ``/health`` stays 200. Real processes: a ``memsession sidecar`` command, a
worker cache in this process on the sidecar's hub, a real PostgreSQL whose
CHECK constraint does the refusing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from memsession import SessionCache, ZmqBus
from memsession.session import new_id, session_key
from persist.postgres import PostgresStore
from tests.sidecars import SidecarProcess, http_port, wait_until

pytestmark = [pytest.mark.zmq, pytest.mark.timeout(120)]

#: The worker's side of the bus; the sidecar's hub beats at the same ``HEARTBEAT`` (under ``silence``).
HEARTBEAT = 0.2
FAST_BUS: dict[str, Any] = {"heartbeat": HEARTBEAT, "silence": 0.7, "request_timeout": 3.0}
POISON = "poison"
#: Generous: a sidecar that works stores these within a few flush intervals.
LANDING_TIMEOUT = 20.0


def _refusing_table(url: str) -> None:
    """The sessions table, with a constraint that refuses any session whose data mentions POISON."""
    import psycopg

    PostgresStore(url, create_table=True).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"ALTER TABLE memsession ADD CONSTRAINT no_poison CHECK (sess::text NOT LIKE '%{POISON}%')"
        )


def _stored_keys(url: str) -> set[str]:
    """The keys in the table: ``session_key`` of each session's id."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return {key for (key,) in conn.execute("SELECT sid FROM memsession").fetchall()}


def _missing_after_polling(url: str, wanted: set[str], timeout: float) -> set[str]:
    """Poll the table until it holds the session of every id in ``wanted``; return the ids still missing."""
    deadline = time.monotonic() + timeout
    while True:
        stored = _stored_keys(url)
        missing = {sid for sid in wanted if session_key(sid) not in stored}
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.05)


def _status(runtime_dir: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memsession", "status", "--runtime-dir", runtime_dir, *extra],
        check=False, capture_output=True, text=True, timeout=30,
    )


def _write(cache: SessionCache, count: int, label: str) -> set[str]:
    sids = [new_id() for _ in range(count)]
    for i, sid in enumerate(sids):
        cache.set(sid, {"batch": label, "n": i})
    return set(sids)


# One batch: the refused record travels with every good one. Many: good batches go before and after its own.
@pytest.mark.parametrize("batch_size", [2000, 16], ids=["one-batch", "many-batches"])
def test_a_refused_record_is_counted_and_holds_back_nothing(postgres_url: str, batch_size: int) -> None:
    _refusing_table(postgres_url)
    port = http_port()
    # A long flush interval gathers the 201 writes into as few batches as batch_size allows.
    sidecar = SidecarProcess(postgres_url, "--flush-interval", "0.5", "--batch-size", str(batch_size),
                             "--heartbeat", str(HEARTBEAT), "--http", f"127.0.0.1:{port}",
                             "--prune-interval", "0")
    with sidecar, SessionCache(bus=ZmqBus(runtime_dir=sidecar.runtime_dir, **FAST_BUS),
                               touch_interval=3600) as cache, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as http:
        assert cache.bus.wait_joined(5)  # type: ignore[union-attr]
        good = _write(cache, 100, "before")
        poison = new_id()
        cache.set(poison, {"note": f"this one is {POISON}"})
        good |= _write(cache, 100, "after")

        missing = _missing_after_polling(postgres_url, good, LANDING_TIMEOUT)
        assert not missing, f"{len(missing)} of {len(good)} good sessions never reached PostgreSQL"
        assert session_key(poison) not in _stored_keys(postgres_url)

        def rejected_on_health() -> Any:
            return http.get("/health").json().get("persist", {}).get("rejected")

        # /health serves what the hub thread published (refreshed every second).
        wait_until(lambda: rejected_on_health() == 1, 10, "/health to count one rejected record")
        health = http.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["persist"]["rejected"] == 1
        assert health.json()["ok"] is True

        metrics = http.get("/metrics").text.splitlines()
        assert "memsession_persist_rejected_total 1" in metrics, [m for m in metrics if "persist" in m]

        raw = _status(sidecar.runtime_dir, "--json")
        assert raw.returncode == 0, raw.stderr
        assert json.loads(raw.stdout)["persist"]["rejected"] == 1
        human = _status(sidecar.runtime_dir)
        assert human.returncode == 0, human.stderr
        assert re.search(r"(?<!\d)1 rejected\b", human.stdout), human.stdout

        # The sidecar never stalls: later writes keep landing, and the refusal stays counted once.
        later = _write(cache, 10, "later")
        missing = _missing_after_polling(postgres_url, later, LANDING_TIMEOUT)
        assert not missing, f"{len(missing)} of {len(later)} later sessions never reached PostgreSQL"
        final = http.get("/health")
        assert final.status_code == 200, final.text
        body: dict[str, Any] = final.json()
        assert body["persist"]["rejected"] == 1
        assert session_key(poison) not in _stored_keys(postgres_url)
