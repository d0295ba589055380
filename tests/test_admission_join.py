"""A real sidecar process whose store holds records the wire refuses: workers still join, the rest is served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from memsession import SessionCache, ZmqBus
from memsession.session import new_id
from persist.jsonfile.snapshot import write_snapshot
from persist.testing import make_test_record
from tests.sidecars import SidecarProcess, http_port, wait_until

FAST_BUS = {"heartbeat": 0.2, "silence": 0.7, "request_timeout": 3.0}


def _poisoned_file(path: Path, now: float) -> str:
    """A snapshot with one good session and four records the record rule refuses; returns the good id."""
    good = new_id()
    version = int(now * 1000) << 16
    records = [make_test_record(good, {"user": "ada"}, version=version, created=now, expires=now + 3600)]
    records += [make_test_record(new_id(), {"n": i}, version=version + 1 + i, created=now, expires=now + 3600)
                for i in range(4)]
    write_snapshot(str(path), records, now)
    lines = path.read_bytes().split(b"\n")
    bad = [orjson.loads(line) for line in lines[2:6]]
    bad[0]["v"] = (1 << 64) - 1  # a version above what anything keeps
    bad[1]["d"] = {"x": {"$float": "nan"}}  # a NaN through the $float tag
    bad[2]["k"] = "k" * 300  # a key longer than the wire's 256
    nested: object = 1
    for _ in range(40):
        nested = [nested]
    bad[3]["d"] = {"deep": nested}  # data nested 40 deep
    lines[2:6] = [orjson.dumps(obj) for obj in bad]
    path.write_bytes(b"\n".join(lines))
    return good


@pytest.mark.zmq
def test_one_stored_record_does_not_block_every_join(tmp_path: Path) -> None:
    import time

    path = tmp_path / "sessions.json"
    good = _poisoned_file(path, time.time())
    port = http_port()
    sidecar = SidecarProcess(f"file://{path}", "--http", f"127.0.0.1:{port}")
    with sidecar:
        worker = SessionCache(bus=ZmqBus(runtime_dir=sidecar.runtime_dir, **FAST_BUS))
        try:
            assert worker.bus is not None and worker.bus.wait_joined(10)  # type: ignore[attr-defined]
            assert worker.get(good) == {"user": "ada"}
            stats = sidecar.stats()
            assert stats["persist"]["store_refused"] == 4
            assert stats["sessions"] == 1
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as http:
                # Every family is there from the start: wait for the count (the hub thread publishes it).
                wait_until(lambda: "memsession_persist_store_refused_total 4" in http.get("/metrics").text.splitlines(),
                           10, "/metrics to show the refused records")
            status = subprocess.run(
                [sys.executable, "-m", "memsession", "status", "--runtime-dir", sidecar.runtime_dir],
                capture_output=True, text=True, timeout=30,
            )
            assert "4 stored records" in status.stdout, status.stdout + status.stderr
        finally:
            worker.close()
