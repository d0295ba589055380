"""The hub merges what its proxy captured in batches, and always before it answers a request.

A hub that read its capture feed only when asked (``merge_interval`` of an
hour) still answers every request from a replica holding every change the
proxy forwarded before the request, and merges what was captured before it
stops. A real hub in a thread; a fake worker publishes numbered changes on
the hub's XSUB and a SUB on its XPUB proves they went through the proxy.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from memsession import SessionCache, wire
from memsession.hub import Hub, query_snapshot, query_stats
from memsession.session import Record, new_id

pytestmark = pytest.mark.zmq


class FakeWorker:
    """Publishes numbered SETs as one stream, and sees them come out of the proxy."""

    def __init__(self, runtime_dir: str) -> None:
        import zmq

        self.zmq = zmq
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL)
        self.sub.connect(f"ipc://{runtime_dir}/sub.sock")
        self.pub.connect(f"ipc://{runtime_dir}/pub.sock")
        self.cache = SessionCache()  # makes valid records
        self.seq = 0
        deadline = time.monotonic() + 10
        while not self.sub.poll(20):  # heartbeats until the subscription is live (slow joiner)
            assert time.monotonic() < deadline, "the hub never forwarded a heartbeat"
            self.pub.send_multipart(wire.encode_heartbeat(7, 1, self.seq, 0))
        while self.sub.poll(100):
            self.sub.recv_multipart()

    def publish(self) -> Record:
        """One change, returned once it has come out of the proxy (so the capture feed has it too)."""
        record = self.cache.set(new_id(), {"n": self.seq})
        self.seq += 1
        frames = wire.encode_set(record, 7, 1, self.seq, 0)
        self.pub.send_multipart(frames)
        deadline = time.monotonic() + 10
        while True:
            assert self.sub.poll(int(max(deadline - time.monotonic(), 0) * 1000) + 1), "never forwarded"
            if self.sub.recv_multipart() == frames:
                return record

    def close(self) -> None:
        self.pub.close(linger=0)
        self.sub.close(linger=0)
        self.ctx.term()
        self.cache.close()


@pytest.fixture
def lazy_hub(tmp_path: Any) -> Any:
    """A hub that reads its capture feed only when a request comes (or once it stops)."""
    runtime_dir = str(tmp_path / "rt")
    hub = Hub(runtime_dir=runtime_dir, merge_interval=3600.0).start()
    worker = FakeWorker(runtime_dir)
    try:
        yield hub, worker
    finally:
        worker.close()
        hub.stop()


def test_every_request_is_answered_after_what_the_proxy_forwarded_before_it(lazy_hub):
    hub, worker = lazy_hub
    requests = hub.endpoints[2]
    query_stats(requests)  # the feed was just read: the next read is an hour away
    first = worker.publish()
    assert query_stats(requests)["received"] == 1
    second = worker.publish()
    third = worker.publish()
    assert {r.key for r in query_snapshot(requests)} == {first.key, second.key, third.key}


def test_what_was_captured_is_merged_when_the_hub_stops(lazy_hub):
    hub, worker = lazy_hub
    query_stats(hub.endpoints[2])
    records = [worker.publish() for _ in range(5)]
    hub.stop()
    assert all(r.key in hub.state.replica for r in records)
    assert hub.state.counts["received"] == 5


def test_merge_interval_is_checked():
    from memsession.errors import ConfigError
    from memsession.hub import HubConfig

    assert HubConfig(merge_interval=0).merge_interval == 0
    with pytest.raises(ConfigError):
        HubConfig(merge_interval=-1.0)
