"""Both transports pass the bus contract suite (``memsession.bus.testing``).

``MemoryNetwork`` runs caches on the in-memory twin under a fake clock:
delivery is synchronous, so every wait is a single check. ``ZmqNetwork``
runs them on real ZeroMQ sockets through a hub thread bound to ipc sockets
in a private temporary runtime dir, and waits by polling with a deadline.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from memsession import SessionCache, wire
from memsession.bus import MemoryBus, MemoryHub, ZmqBus
from memsession.bus.base import new_epoch
from memsession.bus.testing import BusContract, BusNetwork, split_options
from memsession.hub import Hub, HubConfig
from memsession.testing import FakeClock

T = TypeVar("T")


class MemoryNetwork(BusNetwork):
    def __init__(self) -> None:
        self.fake_clock = FakeClock()
        self.clock = self.fake_clock
        self.hub = MemoryHub(clock=self.fake_clock)
        self.caches: list[SessionCache] = []

    def join(self, *, lossy: bool = False, **options: Any) -> SessionCache:
        cache_options, bus_options = split_options(options)
        cache = SessionCache(clock=self.clock, bus=MemoryBus(self.hub, **bus_options), **cache_options)
        self.caches.append(cache)
        return cache

    def wait_until(self, predicate: Callable[[], T], what: str, timeout: float | None = None) -> T:
        value = predicate()
        if not value:
            raise AssertionError(f"{what}: not so once the calls returned, and this bus delivers synchronously")
        return value

    def heartbeat(self) -> None:
        self.hub.beat()

    def pass_time(self, seconds: float) -> None:
        self.fake_clock.advance(seconds)

    def inject(self, frames: list[bytes]) -> None:
        self.hub.deliver(frames)

    def request(self, frames: list[bytes]) -> list[wire.Reply]:
        return self.hub.request(frames)

    @contextmanager
    def losing(self, sender: SessionCache, receiver: SessionCache) -> Iterator[None]:
        assert isinstance(receiver.bus, MemoryBus)
        self.hub.partition(receiver.bus)
        try:
            yield
        finally:
            self.hub.heal(receiver.bus)

    @contextmanager
    def unreachable(self, cache: SessionCache) -> Iterator[None]:
        assert isinstance(cache.bus, MemoryBus)
        self.hub.partition(cache.bus)
        try:
            yield
        finally:
            self.hub.heal(cache.bus)

    def restart_hub(self) -> None:
        self.hub.restart()

    def close(self) -> None:
        for cache in self.caches:
            cache.close()


class TestMemoryBus(BusContract):
    @pytest.fixture
    def make_network(self) -> Callable[[], BusNetwork]:
        return MemoryNetwork


#: Heartbeats and timeouts short enough for tests, long enough for a loaded 2-core machine.
FAST_BUS = {"heartbeat": 0.2, "silence": 0.7, "request_timeout": 2.0}
HUB_HEARTBEAT = 0.2
WAIT = 15.0
#: Reply ops that end a request's answer (a snapshot's CHUNKs come before its END).
_LAST_REPLY = frozenset((wire.END, wire.RECORD, wire.ACK, wire.STATS_REPLY))


class ZmqNetwork(BusNetwork):
    """Caches on ``ZmqBus`` through a ``Hub`` thread; raw frames go in through a PUB of the test's own."""

    def __init__(self, runtime_dir: str) -> None:
        import zmq

        self.runtime_dir = runtime_dir
        self.hub_config = HubConfig(runtime_dir=runtime_dir, heartbeat=HUB_HEARTBEAT)
        self.publish, _, self.requests = self.hub_config.endpoints()
        self.hub = Hub(self.hub_config).start()
        self.caches: list[SessionCache] = []
        self.ctx = zmq.Context()
        self._pub: Any = None
        self._pub_live = False
        # The test's PUB proves its subscription is live with heartbeats of a stream of its own.
        self._probe = (secrets.randbits(62) | 1, new_epoch())

    def join(self, *, lossy: bool = False, **options: Any) -> SessionCache:
        cache_options, bus_options = split_options(options)
        if lossy:
            bus_options.setdefault("fault_drop_rate", 0.5)
        bus = ZmqBus(runtime_dir=self.runtime_dir, **{**FAST_BUS, **bus_options})
        cache = SessionCache(bus=bus, **cache_options)
        self.caches.append(cache)
        return cache

    def wait_until(self, predicate: Callable[[], T], what: str, timeout: float | None = None) -> T:
        deadline = time.monotonic() + (WAIT if timeout is None else timeout)
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {WAIT if timeout is None else timeout}s waiting for {what}")
            time.sleep(0.01)

    def heartbeat(self) -> None:
        """Buses and hub beat on their own timers; the wait that follows covers several beats."""

    def inject(self, frames: list[bytes]) -> None:
        self._publisher().send_multipart(frames)

    def _publisher(self) -> Any:
        """A PUB whose messages the hub's XSUB forwards: a PUB drops what it sends before that."""
        import zmq

        if self._pub is None:
            self._pub = self.ctx.socket(zmq.PUB)
            self._pub.linger = 0
            self._pub.connect(self.publish)
        if not self._pub_live:
            origin, epoch = self._probe

            def probe_seen() -> bool:
                self._pub.send_multipart(wire.encode_heartbeat(origin, epoch, 0, 0))
                end = self.request(wire.encode_request(wire.SNAPSHOT, 1))[-1]
                return origin in end.body[1]

            self.wait_until(probe_seen, "the test's publisher to reach the hub")
            self._pub_live = True
        return self._pub

    def request(self, frames: list[bytes]) -> list[wire.Reply]:
        import zmq

        dealer = self.ctx.socket(zmq.DEALER)
        try:
            dealer.linger = 0
            dealer.connect(self.requests)
            dealer.send_multipart(frames)
            replies: list[wire.Reply] = []
            deadline = time.monotonic() + 5.0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not dealer.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                    raise AssertionError(f"the hub did not answer {frames[0]!r}")
                reply = wire.decode_reply(dealer.recv_multipart())
                replies.append(reply)
                if reply.op in _LAST_REPLY:
                    return replies
        finally:
            dealer.close()

    @contextmanager
    def losing(self, sender: SessionCache, receiver: SessionCache) -> Iterator[None]:
        # Real sockets cannot lose one chosen message to one subscriber; the sender's
        # fault injection loses about half of its data messages, the hub's copy included.
        assert isinstance(sender.bus, ZmqBus) and sender.bus.config.fault_drop_rate > 0, "join the sender lossy"
        yield

    @contextmanager
    def unreachable(self, cache: SessionCache) -> Iterator[None]:
        self._stop_hub()
        try:
            yield
        finally:
            self._start_hub()

    def restart_hub(self) -> None:
        self._stop_hub()
        self._start_hub()

    def _stop_hub(self) -> None:
        self.hub.stop()
        self._pub_live = False  # a new hub's XSUB must see the test's PUB subscribe again

    def _start_hub(self) -> None:
        self.hub = Hub(self.hub_config).start()

    def close(self) -> None:
        try:
            for cache in self.caches:
                cache.close()
            if self._pub is not None:
                self._pub.close()
            self.ctx.term()
        finally:
            self.hub.stop()


@pytest.mark.zmq
class TestZmqBus(BusContract):
    @pytest.fixture
    def make_network(self) -> Iterator[Callable[[], BusNetwork]]:
        # tmp_path can be too long for an ipc socket path; the runtime dir itself is made 0700.
        with tempfile.TemporaryDirectory(prefix="ms-") as tmp:
            yield lambda: ZmqNetwork(os.path.join(tmp, "rt"))

    def test_wait_joined_and_stats_say_joined_once_attach_returns(self, network: BusNetwork) -> None:
        cache = network.join()
        assert isinstance(cache.bus, ZmqBus)
        assert cache.bus.wait_joined(0) and cache.bus.stats()["joined"]
