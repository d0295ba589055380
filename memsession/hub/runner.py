"""The hub's sockets and loops: ``run_hub`` in this thread, ``Hub`` in a background one.

``run_hub`` creates its own ZeroMQ context, takes ``hub.lock`` in every ipc
directory (``ipc_dirs``: binding ipc would silently steal a live hub's
sockets), binds the XSUB/XPUB proxy, the replica's capture feed and the
ROUTER, and loops: it hands every bus message and request to a ``HubState``,
publishes what that returns, beats and prunes on time, and closes everything
on the way out, its socket files and lock files included.

The replica is fed from the proxy's capture socket, so it sees messages in the
order the proxy forwarded them. The proxy (``zmq.proxy_steerable``, no Python
on the way) forwards every message to the subscribers at once; the replica is
on no message's way, so the feed is read in batches, at most every
``HubConfig.merge_interval`` (5 ms) instead of waking this thread for each
message: a hub taking a change a millisecond wakes once for five of them.
Before it cuts a snapshot it drains the capture queue: anything a subscriber
could have missed before its subscription took effect is then in the
snapshot or behind it in the stream. Before any other request it merges what
waits, up to ``_FEED_BATCH`` messages: a key read sees what was forwarded
before it (all of it, unless a flood is running behind), and no request waits
for a flood to end. What else reads the replica (a sidecar's rewrite after an
overflow, its ack checks, which follow a push) needs it no newer; the resync
requests a gap calls for wait at most ``merge_interval``; and on the way out
the feed is drained, so a sidecar writes everything captured before it
stopped.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import wire
from ..errors import BusError, WireError
from .config import HubConfig
from .inbox import Inbox
from .ipc_dirs import IpcDirs
from .reads import StoreReads
from .remote import after_read_back
from .runtime_dir import socket_address
from .state import HubState

__all__ = ["Hub", "run_hub", "stop_summary"]

log = logging.getLogger("memsession.hub")

#: Work another thread hands the hub thread: run with the hub's state, it returns the frames to publish.
HubTask = Callable[[HubState], list[list[bytes]]]

#: Most captured messages merged in one go before the loop looks at requests again.
_FEED_BATCH = 1000


def run_hub(
    config: HubConfig,
    *,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    state: HubState | None = None,
    every_second: Callable[[], None] | None = None,
    reads: StoreReads | None = None,
    dirs: IpcDirs | None = None,
    inbox: Inbox[HubTask] | None = None,
) -> HubState:
    """Run a hub in this thread until ``stop`` is set; return its final state.

    Creates its own context and sockets, binds the three endpoints (raising
    ``BusError`` if one is taken) and closes everything on the way out.
    ``every_second`` runs in the hub thread after each once-a-second prune
    (the sidecar publishes its stats there). ``reads``: the store reads
    ``state`` asks for (its ``read_back``); their results are merged and
    answered in the hub thread. ``dirs``: the ipc directories, already held
    by a caller that binds more there (a sidecar's ack socket) and releases
    them, and says it stopped, itself; by default the hub holds them, and on
    a clean stop removes its files and logs one line. ``inbox``: tasks other
    threads hand the hub thread (a change feed's changes, ``hub.remote``); each
    runs with ``state`` and returns the frames to publish.
    """

    from .. import security

    stop = stop or threading.Event()
    state = state or HubState(
        limits=config.limits, forget_after=config.forget_after, max_seq_jump=config.max_seq_jump,
        seq_jump_hold=config.seq_jump_hold, maxsize=config.maxsize, max_skew=config.max_skew,
    )
    pub_ep, sub_ep, req_ep = config.endpoints()
    secure = security.server_policy(config, (pub_ep, sub_ep, req_ep))
    held = dirs if dirs is not None else IpcDirs((pub_ep, sub_ep, req_ep))
    try:
        _run(config, stop, ready, state, pub_ep, sub_ep, req_ep, secure, every_second, reads, inbox)
    finally:
        if dirs is None:
            held.release()
    if dirs is None:
        log.info("hub %x stopped, %s", state.hub_id, stop_summary(state))
    return state


def stop_summary(state: HubState) -> str:
    """What a stopping hub held and had seen, for its last log line."""
    stats = state.stats()
    return (f"up {stats['uptime']:.0f}s; sessions={stats['sessions']} tombstones={stats['tombstones']} "
            f"received={stats.get('received', 0)} applied={stats.get('applied', 0)}")


def _run(config: HubConfig, stop: threading.Event, ready: threading.Event | None, state: HubState,
         pub_ep: str, sub_ep: str, req_ep: str, secure: Any, every_second: Callable[[], None] | None,
         reads: StoreReads | None, inbox: Inbox[HubTask] | None) -> None:
    import zmq

    # What the sockets bind: ipc files inside the directories checked and held (``runtime_dir``).
    pub_at, sub_at, req_at = socket_address(pub_ep), socket_address(sub_ep), socket_address(req_ep)
    ctx = zmq.Context()
    auth = None
    tag = f"{os.getpid()}-{state.hub_id:x}"
    capture_ep = f"inproc://memsession-capture-{tag}"
    internal_ep = f"inproc://memsession-internal-{tag}"
    control_ep = f"inproc://memsession-control-{tag}"
    proxy_ready = threading.Event()
    proxy_error: list[BaseException] = []

    def proxy_thread() -> None:
        xsub = ctx.socket(zmq.XSUB)
        xpub = ctx.socket(zmq.XPUB)
        capture = ctx.socket(zmq.PUB)
        control = ctx.socket(zmq.PAIR)
        try:
            xpub.sndhwm = config.sndhwm
            capture.sndhwm = config.capture_hwm
            xsub.rcvhwm = config.capture_hwm
            if secure is not None:
                secure.server(xsub)
                secure.server(xpub)
            xsub.bind(pub_at)
            xsub.bind(internal_ep)
            xpub.bind(sub_at)
            capture.bind(capture_ep)
            control.bind(control_ep)
        except zmq.ZMQError as exc:
            proxy_error.append(BusError(f"hub cannot bind: {exc}", endpoint=pub_ep))
            for s in (xsub, xpub, capture, control):
                s.close(linger=0)
            proxy_ready.set()
            return
        proxy_ready.set()
        try:
            zmq.proxy_steerable(xsub, xpub, capture, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for s in (xsub, xpub, capture, control):
                s.close(linger=0)

    try:
        if secure is not None:
            auth = secure.start_authenticator(ctx)
        thread = threading.Thread(target=proxy_thread, name="memsession-hub-proxy", daemon=True)
        thread.start()
        proxy_ready.wait()
        if proxy_error:
            raise proxy_error[0]
        control = ctx.socket(zmq.PAIR)
        control.connect(control_ep)
        feed = ctx.socket(zmq.SUB)
        router = ctx.socket(zmq.ROUTER)
        out = ctx.socket(zmq.PUB)
        try:
            feed.rcvhwm = config.capture_hwm
            feed.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL_FAMILY)
            feed.connect(capture_ep)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.sndhwm = 0
            # A frame over the decoder's limit is refused by ZeroMQ before it is read into memory
            # (the sender's connection is cut); the decoder would only drop it after the fact.
            router.maxmsgsize = config.limits.max_frame
            if secure is not None:
                secure.server(router)
                secure.client(out)
            try:
                router.bind(req_at)
            except zmq.ZMQError as exc:
                raise BusError(f"hub cannot bind {req_ep}: {exc}", endpoint=req_ep) from exc
            out.sndhwm = config.capture_hwm
            out.connect(internal_ep)
            _serve(state, config, stop, ready, feed, router, out, every_second, reads, inbox)
        finally:
            control.send(b"TERMINATE")
            thread.join(5)
            for s in (feed, router, out, control):
                s.close(linger=0)
    finally:
        if auth is not None:
            auth.stop()
        ctx.term()


def _serve(state: HubState, config: HubConfig, stop: threading.Event, ready: threading.Event | None,
           feed: Any, router: Any, out: Any, every_second: Callable[[], None] | None,
           reads: StoreReads | None, inbox: Inbox[HubTask] | None) -> None:
    import zmq

    # The capture feed is read at most every merge_interval (every request drains it first):
    # see the module docstring. Requests and store reads wake the loop at once.
    everything = zmq.Poller()
    requests = zmq.Poller()
    everything.register(feed, zmq.POLLIN)
    for poller in (everything, requests):
        poller.register(router, zmq.POLLIN)
    doorbell = None if reads is None else reads.fileno()
    tasks = None if inbox is None else inbox.fileno()
    for bell in (doorbell, tasks):
        if bell is not None:
            for poller in (everything, requests):
                poller.register(bell, zmq.POLLIN)
    next_beat = time.monotonic()
    next_prune = time.monotonic() + 1.0
    next_feed = 0.0
    merge_interval = config.merge_interval
    recv_feed = feed.recv_multipart
    feed_poller = zmq.Poller()
    feed_poller.register(feed, zmq.POLLIN)
    feed_waits = feed_poller.poll
    send = out.send_multipart

    def drain_feed(most: int) -> int:
        """Merge up to ``most`` captured messages; how many there were. The feed is next due in
        ``merge_interval``, or at once if there may be more."""
        nonlocal next_feed
        for n in range(most):
            # Whether a message waits is asked of the poller: a receive raising Again costs more.
            if not feed_waits(0):
                next_feed = time.monotonic() + merge_interval
                return n
            try:
                frames = recv_feed(zmq.NOBLOCK)
            except zmq.Again:
                continue
            try:
                published = state.on_bus(frames)
            except Exception as exc:  # a hub that dies on one message takes every worker's repairs with it
                log.exception("hub failed on a bus message")
                state._drop("error", exc)
                continue
            for outgoing in published:
                send(outgoing)
        next_feed = time.monotonic()
        return most

    if ready is not None:
        ready.set()
    log.info("hub %x epoch %x serving", state.hub_id, state.epoch)
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_beat:
            send(state.heartbeat())
            next_beat = now + config.heartbeat
        if now >= next_prune:
            state.prune()
            if every_second is not None:
                every_second()
            next_prune = now + 1.0
        for outgoing in state.owed_resyncs():
            send(outgoing)
        feed_due = now >= next_feed
        wake_at = min(next_beat, next_prune) if feed_due else min(next_beat, next_prune, next_feed)
        timeout = max(0.0, wake_at - time.monotonic())
        events = dict((everything if feed_due else requests).poll(math.ceil(min(timeout, 0.2) * 1000)))
        if feed in events:
            drain_feed(_FEED_BATCH)  # a bounded batch, then requests again
        if router in events:
            while True:
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) < 2:
                    state._drop("malformed request", WireError(f"{len(frames) - 1} frames after the identity"))
                    continue
                ident, body = frames[0], frames[1:]
                if body[:1] == [wire._TOPICS[wire.SNAPSHOT]]:
                    # Everything the proxy forwarded before this request must be in the snapshot.
                    while drain_feed(_FEED_BATCH) == _FEED_BATCH:
                        pass
                else:
                    # What waits is merged first, up to a batch: a read sees what was forwarded before
                    # it, and under a flood a request is not held back until the flood ends.
                    drain_feed(_FEED_BATCH)
                try:
                    replies, publish = state.on_request(body, ident)
                except Exception as exc:
                    log.exception("hub failed on a request")
                    state._drop("error", exc)
                    continue
                for outgoing in publish:
                    send(outgoing)
                try:
                    for reply in replies:
                        router.send_multipart([ident, *reply])
                except zmq.ZMQError as exc:  # the requester went away
                    log.debug("hub reply not delivered: %s", exc)
        if reads is not None and doorbell in events:
            _answer_reads(state, reads, router)
        if inbox is not None and tasks in events:
            drain_feed(_FEED_BATCH)  # what this host's workers sent first, as for a request
            _run_tasks(state, inbox, send)
        if state.outbox:
            outbox, state.outbox = state.outbox, []
            for outgoing in outbox:
                send(outgoing)
    # What was captured before the stop is merged (a sidecar writes it behind before it closes); a
    # flood still coming in after the stop is cut off after a second.
    give_up = time.monotonic() + 1.0
    while drain_feed(_FEED_BATCH) == _FEED_BATCH and time.monotonic() < give_up:
        pass


def _run_tasks(state: HubState, inbox: Inbox[HubTask], send: Callable[[list[bytes]], Any]) -> None:
    """Run what other threads handed the hub thread, publishing what each returns."""
    for task in inbox.take():
        try:
            published = task(state)
        except Exception as exc:  # one bad task never stops the hub
            log.exception("hub failed on a task handed to it")
            state._drop("error", exc)
            continue
        for outgoing in published:
            send(outgoing)


def _answer_reads(state: HubState, reads: StoreReads, router: Any) -> None:
    """Merge what the store reads brought and answer the GETs that waited for them."""
    import zmq

    for key, record, ok, waiters in reads.take():
        try:
            state.read_back_done(key, record, ok)
        except Exception as exc:
            log.exception("hub failed on a store read")
            state._drop("error", exc)
            continue
        if not ok:
            continue  # no answer rather than a wrong "no such session": the workers ask again
        for sender, rid in waiters:
            if not sender:
                continue  # read for a held-back touch: nobody waits
            try:
                router.send_multipart([sender, *state.answer_get(rid, key)])
            except zmq.ZMQError as exc:  # the requester went away
                log.debug("hub reply not delivered: %s", exc)
        if state.remote_floor:
            after_read_back(state, key)


def start_in_thread(run: Callable[[], None], ready: threading.Event, errors: list[BaseException], *,
                    name: str, timeout: float) -> threading.Thread:
    """Run ``run`` (which sets ``ready`` once serving) in a daemon thread; return once it serves.

    An error before it serves is raised here, in the caller; one after it is
    kept in ``errors`` for whoever stops it.
    """

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # noqa: BLE001 (handed to the caller of start, or of stop)
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    if not ready.wait(timeout):
        raise BusError(f"{name} did not start within {timeout}s")
    if errors:
        raise errors[0]
    return thread


class Hub:
    """A hub running in a background thread of this process (embedding, tests)."""

    def __init__(self, config: HubConfig | None = None, **options: Any) -> None:
        self.config = config or HubConfig(**options)
        self.state = HubState(
            limits=self.config.limits, forget_after=self.config.forget_after,
            max_seq_jump=self.config.max_seq_jump, seq_jump_hold=self.config.seq_jump_hold,
            maxsize=self.config.maxsize, max_skew=self.config.max_skew,
        )
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 5.0) -> Hub:
        def run() -> None:
            run_hub(self.config, stop=self._stop, ready=self._ready, state=self.state)

        self._thread = start_in_thread(run, self._ready, self._error, name="memsession-hub", timeout=timeout)
        return self

    @property
    def endpoints(self) -> tuple[str, str, str]:
        return self.config.endpoints()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Hub:  # noqa: PYI034 - Hub is not meant to be subclassed
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
