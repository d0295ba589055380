"""The hub: XSUB/XPUB proxy, a replica of every session, and a snapshot server.

Topology (endpoints are ``HubConfig`` fields; ipc sockets by default)::

    worker PUB ──connect──> [publish]  XSUB ┐
                                            zmq.proxy (C) ──capture──> replica
    worker SUB <──connect── [subscribe] XPUB ┘                           │
    worker DEALER ─connect─> [requests] ROUTER <── snapshots, gets, pushes, stats

``HubState`` is the protocol without I/O: it merges bus messages into the
replica, answers requests and says what to publish (relays, resync requests,
heartbeats). ``run_hub`` owns the sockets and the loop; ``Hub`` runs it in a
thread for embedding and tests; ``memsession hub`` runs it as a process.

The replica is fed from the proxy's capture socket, so it sees messages in the
order the proxy forwarded them. Before it cuts a snapshot it drains the
capture queue: anything a subscriber could have missed before its
subscription took effect is then in the snapshot or behind it in the stream.
"""

from __future__ import annotations

import heapq
import logging
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import wire
from .bus.base import new_epoch, percentiles
from .bus.sequence import GAP, SequenceTracker
from .clock import SYSTEM_CLOCK, Clock
from .errors import BusError, ConfigError, WireError
from .session import Record, cleared_by, supersedes, touched_copy
from .validate import check_int, check_number

__all__ = ["Hub", "HubConfig", "HubState", "default_runtime_dir", "query_snapshot", "query_stats", "run_hub",
           "wait_ready"]

log = logging.getLogger("memsession.hub")

CHUNK_RECORDS = 1000
#: Seconds between two resync requests to one origin (its push takes a moment to arrive).
_RESYNC_SPACING = 0.5
#: ipc socket paths longer than this are refused by the OS.
MAX_IPC_PATH = 107


def default_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/memsession`` if set, else ``<tmp>/memsession-<uid>``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "memsession")
    return os.path.join(tempfile.gettempdir(), f"memsession-{os.getuid()}")


def ensure_private_dir(path: str) -> str:
    """Create ``path`` mode 0700, or check that an existing one is ours and private."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError("runtime_dir", path, f"cannot create: {exc.strerror}") from exc
    if st.st_uid != os.getuid():
        raise ConfigError("runtime_dir", path, "owned by another user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError("runtime_dir", path, "must not be accessible to group or others (chmod 700)")
    return path


def ipc_endpoints(runtime_dir: str) -> tuple[str, str, str]:
    """The three default endpoints inside ``runtime_dir``."""
    names = ("pub", "sub", "req")
    out = []
    for name in names:
        path = os.path.join(runtime_dir, f"{name}.sock")
        if len(path) > MAX_IPC_PATH:
            raise ConfigError("runtime_dir", runtime_dir, f"ipc path {path!r} exceeds {MAX_IPC_PATH} bytes")
        out.append(f"ipc://{path}")
    return out[0], out[1], out[2]


@dataclass(frozen=True, slots=True, kw_only=True)
class HubConfig:
    """Hub options. Empty endpoints mean ipc sockets in ``runtime_dir``."""

    publish: str = ""
    subscribe: str = ""
    requests: str = ""
    runtime_dir: str = ""
    #: Seconds between hub heartbeats (they carry the hub's epoch).
    heartbeat: float = 1.0
    #: Per-subscriber queue on the XPUB (messages); a slower subscriber loses messages and repairs.
    sndhwm: int = 100_000
    #: Queue between proxy and replica (messages).
    capture_hwm: int = 1_000_000
    #: Directory with ``server.key_secret`` and the allowed clients' ``*.key`` (CURVE on tcp).
    keys: str | None = None
    insecure: bool = False
    limits: wire.Limits = wire.DEFAULT_LIMITS

    def __post_init__(self) -> None:
        check_number("heartbeat", self.heartbeat)
        for name in ("sndhwm", "capture_hwm"):
            check_int(name, getattr(self, name))
        given = (self.publish, self.subscribe, self.requests)
        if any(given) and not all(given):
            raise ConfigError("publish", given, "give all three endpoints or none")
        for name, endpoint in zip(("publish", "subscribe", "requests"), given):
            if endpoint and not endpoint.startswith(("ipc://", "tcp://", "inproc://")):
                raise ConfigError(name, endpoint, "must be an ipc://, tcp:// or inproc:// endpoint")

    def endpoints(self) -> tuple[str, str, str]:
        """``(publish, subscribe, requests)``; creates the private runtime dir for ipc."""
        if self.publish:
            for endpoint in (self.publish, self.subscribe, self.requests):
                if endpoint.startswith("ipc://"):
                    ensure_private_dir(os.path.dirname(endpoint[6:]) or ".")
            return self.publish, self.subscribe, self.requests
        return ipc_endpoints(ensure_private_dir(self.runtime_dir or default_runtime_dir()))

    def query_endpoint(self) -> str:
        """The requests endpoint for a query (stats, status); unlike ``endpoints`` it creates nothing.

        ``BusError`` if the runtime dir does not exist: no hub can be there.
        """
        if self.requests:
            return self.requests
        runtime_dir = self.runtime_dir or default_runtime_dir()
        if not os.path.isdir(runtime_dir):
            raise BusError(f"no hub answered: the runtime dir {runtime_dir} does not exist", endpoint=runtime_dir)
        return self.endpoints()[2]

    @property
    def uses_tcp(self) -> bool:
        return any(e.startswith("tcp://") for e in (self.publish, self.subscribe, self.requests))


def merge_into(replica: dict[str, Record], record: Record, wall: float) -> bool:
    """Merge ``record`` into ``replica`` by ``supersedes``; True if ``replica`` changed.

    A winner that has already expired is not kept; it only removes the live copy it beat.
    """
    key = record.key
    old = replica.get(key)
    if not supersedes(record, old):
        return False
    if record.expires <= wall:
        if old is not None and not old.deleted:
            del replica[key]
            return True
        return False
    replica[key] = record
    return True


class HubState:
    """The hub's replica and protocol, without sockets.

    ``on_bus`` and ``on_request`` return the frames to publish on the bus
    (relays, resync requests); ``on_request`` also returns the replies.
    ``on_change(record)`` is called (in the hub thread) with every record that
    changed the replica, ``on_clear(version)`` with every clear that raised its
    watermark: the sidecar queues them for its store. ``extra_stats()`` adds
    to what ``stats`` answers (the sidecar's role and persistence counters).
    """

    def __init__(
        self,
        *,
        hub_id: int | None = None,
        epoch: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
        limits: wire.Limits = wire.DEFAULT_LIMITS,
        on_change: Callable[[Record], None] | None = None,
        on_clear: Callable[[int], None] | None = None,
        extra_stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.on_change = on_change
        self.extra_stats = extra_stats
        self.on_clear = on_clear
        self.clock = clock
        self.hub_id = hub_id if hub_id is not None else secrets.randbits(63) or 1
        self.epoch = epoch if epoch is not None else new_epoch(clock)
        self.limits = limits
        self.replica: dict[str, Record] = {}
        #: ``(expires, key)`` heap over the replica (see ``_track_expiry``).
        self._expiry: list[tuple[float, str]] = []
        self._expiry_compaction_slack = 1024
        self._tombstone_count = 0
        #: Clear watermark: no live session written at or before this version is kept or accepted.
        self.cleared = 0
        # Strict: a stream first seen past seq 1 had messages the hub never got (it may have
        # just restarted); asking that origin to resync costs one push and closes the hole.
        self.tracker = SequenceTracker(strict=True)
        self.seq = 0
        self.started = clock.wall()
        self.counts = dict.fromkeys(
            ("received", "applied", "ignored", "duplicates", "gaps", "resyncs_sent", "snapshots",
             "gets", "pushes", "pushed_records", "writes", "relayed", "pruned", "clears"),
            0,
        )
        self.dropped: dict[str, int] = {}
        self.lag_ms: list[float] = []
        self._last_resync: dict[int, float] = {}
        self._owed: set[int] = set()

    def _drop(self, reason: str, exc: Exception) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        log.debug("hub dropped a frame (%s): %s", reason, exc)

    def _now_us(self) -> int:
        return int(self.clock.wall() * 1_000_000)

    def merge(self, record: Record) -> bool:
        replica = self.replica
        old = replica.get(record.key)
        changed = not cleared_by(record, self.cleared) and merge_into(replica, record, self.clock.wall())
        self.counts["applied" if changed else "ignored"] += 1
        if changed:
            new = replica.get(record.key)
            # kept as a count: stats() is asked for every second by the sidecar's HTTP endpoint
            self._tombstone_count += (new is not None and new.deleted) - (old is not None and old.deleted)
            if new is not None:  # merge_into drops a record that arrives already expired
                self._track_expiry(new)
            if self.on_change is not None:
                self.on_change(record)
        return changed

    def warm(self, records: Iterable[Record]) -> int:
        """Fill the replica from a store before serving (no hooks run: the store has these); how many."""
        wall = self.clock.wall()
        count = 0
        for record in records:
            if not cleared_by(record, self.cleared):
                merge_into(self.replica, record, wall)
            count += 1
        self.recount()
        return count

    def recount(self) -> None:
        """Recount tombstones and rebuild the expiry heap (after filling ``replica`` directly)."""
        self._tombstone_count = sum(1 for r in self.replica.values() if r.deleted)
        self._rebuild_expiry()

    def _track_expiry(self, record: Record) -> None:
        """Remember when ``record`` lapses, so ``prune`` finds it without scanning the replica.

        One heap entry per stored version; entries of replaced versions are
        skipped when they come up, and the heap is rebuilt from the replica
        when stale entries outnumber live ones (hot keys rewrite often).
        """
        expiry = self._expiry
        heapq.heappush(expiry, (record.expires, record.key))
        if len(expiry) > 2 * len(self.replica) + self._expiry_compaction_slack:
            self._rebuild_expiry()

    def _rebuild_expiry(self) -> None:
        self._expiry = [(r.expires, k) for k, r in self.replica.items()]
        heapq.heapify(self._expiry)

    def clear(self, version: int) -> bool:
        """Raise the clear watermark to ``version``, dropping the live sessions at or below it; True if raised."""
        if version <= self.cleared:
            return False
        self.cleared = version
        self.counts["clears"] += 1
        replica = self.replica
        for key in [k for k, r in replica.items() if cleared_by(r, version)]:
            del replica[key]
        self._rebuild_expiry()
        if self.on_clear is not None:
            self.on_clear(version)
        return True

    def _resync(self, origin: int) -> list[list[bytes]]:
        now = self.clock.monotonic()
        if now - self._last_resync.get(origin, -1e9) < _RESYNC_SPACING:
            # A push is probably on its way, but it may have been cut before this loss:
            # owe the origin another request once the spacing has passed (``owed_resyncs``).
            self._owed.add(origin)
            return []
        self._owed.discard(origin)
        self._last_resync[origin] = now
        self.counts["resyncs_sent"] += 1
        log.info("gap in the stream of origin %x; asking it to resync", origin)
        return [wire.encode_resync(self.hub_id, self.epoch, origin, self._now_us())]

    def owed_resyncs(self) -> list[list[bytes]]:
        """Resync requests held back by the spacing whose time has come (the runner polls this)."""
        if not self._owed:
            return []
        now = self.clock.monotonic()
        due = [o for o in self._owed if now - self._last_resync.get(o, -1e9) >= _RESYNC_SPACING]
        return [frames for origin in due for frames in self._resync(origin)]

    def on_bus(self, frames: list[bytes]) -> list[list[bytes]]:
        """One message from the capture socket; returns frames to publish."""
        try:
            msg = wire.decode(frames, self.limits)
        except WireError as exc:
            self._drop("malformed", exc)
            return []
        op = msg.op
        if msg.origin == self.hub_id or op in (wire.HELLO, wire.RESYNC, wire.HUB_BEAT):
            return []
        if op == wire.HEARTBEAT:
            if self.tracker.heartbeat(msg.origin, msg.epoch, msg.seq) == GAP:
                self.counts["gaps"] += 1
                return self._resync(msg.origin)
            return []
        items = msg.body if op == wire.BATCH else ((op, msg.body),)
        if len(self.lag_ms) >= 4096:
            del self.lag_ms[:2048]
        lag = self.clock.wall() * 1000 - msg.sent_us / 1000
        fresh, gap_at = self.tracker.accept(msg.origin, msg.epoch, msg.seq, items)
        self.counts["duplicates"] += len(items) - len(fresh)
        self.counts["received"] += len(fresh)
        self.lag_ms.extend([lag] * len(fresh))
        for item_op, body in fresh:
            self._apply(item_op, body)
        if gap_at:
            self.counts["gaps"] += 1
            return self._resync(msg.origin)
        return []

    def _apply(self, op: str, body: Any) -> None:
        if op == wire.SET or op == wire.DESTROY:
            self.merge(body)
        elif op == wire.TOUCH:
            key, version, origin, accessed, expires = body
            touched = touched_copy(self.replica.get(key), version, origin, accessed, expires)
            if touched is not None:
                self.merge(touched)
            else:
                self.counts["ignored"] += 1
        elif op == wire.CLEAR:
            self.clear(body)
        else:  # INVALIDATE: the value came by WRITE, acknowledged before this was sent
            self.counts["ignored"] += 1

    def relay(self, record: Record) -> list[bytes]:
        """Frames that republish ``record`` on the hub's own stream."""
        self.seq += 1
        self.counts["relayed"] += 1
        return wire.encode_record_message(record, self.hub_id, self.epoch, self.seq, self._now_us())

    def relay_clear(self, version: int) -> list[bytes]:
        """Frames that republish a clear on the hub's own stream."""
        self.seq += 1
        self.counts["relayed"] += 1
        return wire.encode_clear(version, self.hub_id, self.epoch, self.seq, self._now_us())

    def heartbeat(self) -> list[bytes]:
        return wire.encode_heartbeat(self.hub_id, self.epoch, self.seq, self._now_us(), hub=True)

    def snapshot(self, rid: int) -> Iterator[list[bytes]]:
        """CHUNK frames then END, cut from the replica as it is now."""
        wall = self.clock.wall()
        vector = [[o, e, s] for o, (e, s) in self.tracker.vector().items()]
        vector.append([self.hub_id, self.epoch, self.seq])
        live = [r for r in self.replica.values() if r.expires > wall]
        self.counts["snapshots"] += 1
        chunks = 0
        for start in range(0, len(live), CHUNK_RECORDS):
            chunks += 1
            yield wire.encode_request(
                wire.CHUNK, rid, [wire.record_to_list(r) for r in live[start:start + CHUNK_RECORDS]]
            )
        yield wire.encode_request(wire.END, rid, self.epoch, vector, chunks, len(live), self.cleared)

    def on_request(self, frames: list[bytes]) -> tuple[list[list[bytes]], list[list[bytes]]]:
        """One request; returns ``(replies, frames to publish)``."""
        try:
            req = wire.decode_reply(frames, self.limits)
        except WireError as exc:
            self._drop("malformed request", exc)
            return [], []
        if req.op == wire.SNAPSHOT:
            return list(self.snapshot(req.rid)), []
        if req.op == wire.GET:
            self.counts["gets"] += 1
            record = self.replica.get(req.body[0])
            if record is not None and record.expires <= self.clock.wall():
                record = None
            body = None if record is None else wire.record_to_list(record)
            return [wire.encode_request(wire.RECORD, req.rid, body)], []
        if req.op == wire.PUSH:
            self.counts["pushes"] += 1
            relays = []
            records, cleared = req.body
            if self.clear(cleared):
                # A clear this hub never saw (it restarted since): others may have missed it too.
                relays.append(self.relay_clear(cleared))
            for record in records:
                self.counts["pushed_records"] += 1
                if self.merge(record):
                    relays.append(self.relay(record))
            return [wire.encode_request(wire.ACK, req.rid, len(relays))], relays
        if req.op == wire.WRITE:
            self.counts["writes"] += 1
            changed = sum(1 for record in req.body[0] if self.merge(record))
            return [wire.encode_request(wire.ACK, req.rid, changed)], []
        if req.op == wire.STATS:
            return [wire.encode_request(wire.STATS_REPLY, req.rid, self.stats())], []
        self._drop("not a request", WireError(req.op))
        return [], []

    def prune(self) -> int:
        """Drop expired sessions and lapsed tombstones from the replica (cost: what expired, not the replica)."""
        wall = self.clock.wall()
        expiry = self._expiry
        replica = self.replica
        pruned = 0
        while expiry and expiry[0][0] <= wall:
            _, key = heapq.heappop(expiry)
            record = replica.get(key)
            if record is not None and record.expires <= wall:  # else: replaced by a later version
                del replica[key]
                pruned += 1
                self._tombstone_count -= record.deleted
        self.counts["pruned"] += pruned
        return pruned

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["dropped"] = dict(self.dropped)
        out["sessions"] = len(self.replica) - self._tombstone_count
        out["tombstones"] = self._tombstone_count
        out["streams"] = len(self.tracker)
        out["cleared"] = self.cleared
        out["epoch"] = self.epoch
        out["uptime"] = round(self.clock.wall() - self.started, 3)
        lag = percentiles(self.lag_ms)
        out["lag_ms_p50"] = lag["p50"]
        out["lag_ms_p99"] = lag["p99"]
        if self.extra_stats is not None:
            out.update(self.extra_stats())
        return out


def run_hub(
    config: HubConfig,
    *,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    state: HubState | None = None,
    every_second: Callable[[], None] | None = None,
) -> HubState:
    """Run a hub in this thread until ``stop`` is set; return its final state.

    Creates its own context and sockets, binds the three endpoints (raising
    ``BusError`` if one is taken) and closes everything on the way out.
    ``every_second`` runs in the hub thread after each once-a-second prune
    (the sidecar publishes its stats there).
    """

    from . import security

    stop = stop or threading.Event()
    state = state or HubState(limits=config.limits)
    pub_ep, sub_ep, req_ep = config.endpoints()
    secure = security.server_policy(config, (pub_ep, sub_ep, req_ep))
    lock = _lock_ipc_dirs((pub_ep, sub_ep, req_ep))
    try:
        _run(config, stop, ready, state, pub_ep, sub_ep, req_ep, secure, every_second)
    finally:
        for fd in lock:
            os.close(fd)
    return state


def _lock_ipc_dirs(endpoints: tuple[str, ...]) -> list[int]:
    """Hold ``hub.lock`` in every ipc directory: binding ipc would silently steal a live hub's sockets."""
    import fcntl

    fds: list[int] = []
    for directory in sorted({os.path.dirname(e[6:]) or "." for e in endpoints if e.startswith("ipc://")}):
        fd = os.open(os.path.join(directory, "hub.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            for held in fds:
                os.close(held)
            raise BusError(f"another hub is running in {directory}", endpoint=endpoints[0]) from exc
        fds.append(fd)
    return fds


def _run(config: HubConfig, stop: threading.Event, ready: threading.Event | None, state: HubState,
         pub_ep: str, sub_ep: str, req_ep: str, secure: Any, every_second: Callable[[], None] | None) -> None:
    import zmq

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
            xsub.bind(pub_ep)
            xsub.bind(internal_ep)
            xpub.bind(sub_ep)
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
            feed.setsockopt(zmq.SUBSCRIBE, wire.PROTOCOL)
            feed.connect(capture_ep)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.sndhwm = 0
            if secure is not None:
                secure.server(router)
                secure.client(out)
            try:
                router.bind(req_ep)
            except zmq.ZMQError as exc:
                raise BusError(f"hub cannot bind {req_ep}: {exc}", endpoint=req_ep) from exc
            out.sndhwm = config.capture_hwm
            out.connect(internal_ep)
            _serve(state, config, stop, ready, feed, router, out, every_second)
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
           feed: Any, router: Any, out: Any, every_second: Callable[[], None] | None) -> None:
    import zmq

    poller = zmq.Poller()
    poller.register(feed, zmq.POLLIN)
    poller.register(router, zmq.POLLIN)
    next_beat = time.monotonic()
    next_prune = time.monotonic() + 1.0
    recv_feed = feed.recv_multipart

    def on_bus(frames: list[bytes]) -> list[list[bytes]]:
        try:
            return state.on_bus(frames)
        except Exception as exc:  # a hub that dies on one message takes every worker's repairs with it
            log.exception("hub failed on a bus message")
            state._drop("error", exc)
            return []

    send = out.send_multipart
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
        timeout = max(0.0, min(next_beat, next_prune) - time.monotonic())
        events = dict(poller.poll(int(min(timeout, 0.2) * 1000)))
        if feed in events:
            for _ in range(1000):  # bounded batch, then look at requests again
                try:
                    frames = recv_feed(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for outgoing in on_bus(frames):
                    send(outgoing)
        if router in events:
            while True:
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(frames) < 2:
                    continue
                ident, body = frames[0], frames[1:]
                if body[:1] == [wire._TOPICS[wire.SNAPSHOT]]:
                    # Everything the proxy forwarded before this request must be in the snapshot.
                    while True:
                        try:
                            for outgoing in on_bus(recv_feed(zmq.NOBLOCK)):
                                send(outgoing)
                        except zmq.Again:
                            break
                try:
                    replies, publish = state.on_request(body)
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


class Hub:
    """A hub running in a background thread of this process (embedding, tests)."""

    def __init__(self, config: HubConfig | None = None, **options: Any) -> None:
        self.config = config or HubConfig(**options)
        self.state = HubState(limits=self.config.limits)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 5.0) -> Hub:
        def target() -> None:
            try:
                run_hub(self.config, stop=self._stop, ready=self._ready, state=self.state)
            except Exception as exc:  # noqa: BLE001 - handed to start(), which raises it in the caller
                self._error.append(exc)
                self._ready.set()

        self._thread = threading.Thread(target=target, name="memsession-hub", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BusError("hub did not start in time")
        if self._error:
            raise self._error[0]
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



def _query(requests: str, op: str, until: str, keys: str | None, insecure: bool,
           timeout: float) -> list[wire.Reply]:
    import zmq

    from . import security

    curve = security.client_policy(HubConfig(keys=keys, insecure=insecure, publish=requests,
                                             subscribe=requests, requests=requests), (requests,))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.linger = 0
        if curve is not None:
            curve.client(sock)
        sock.connect(requests)
        sock.send_multipart(wire.encode_request(op, 1))
        deadline = time.monotonic() + timeout
        replies = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                raise BusError(f"no hub answered at {requests} within {timeout}s", endpoint=requests)
            try:
                reply = wire.decode_reply(sock.recv_multipart())
            except WireError:
                continue
            if reply.rid == 1:
                replies.append(reply)
                if reply.op == until:
                    return replies
    finally:
        sock.close(linger=0)
        ctx.term()


def query_stats(
    requests: str, *, keys: str | None = None, insecure: bool = False, timeout: float = 2.0
) -> dict[str, Any]:
    """Ask a running hub for its counters over its ROUTER; ``BusError`` if it does not answer."""
    return _query(requests, wire.STATS, wire.STATS_REPLY, keys, insecure, timeout)[-1].body[0]


def wait_ready(requests: str, timeout: float, *, keys: str | None = None, insecure: bool = False) -> dict[str, Any]:
    """Ask a hub for its stats until it answers; ``BusError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return query_stats(requests, keys=keys, insecure=insecure, timeout=max(0.05, min(0.5, left)))
        except BusError:
            if time.monotonic() >= deadline:
                raise


def query_snapshot(
    requests: str, *, keys: str | None = None, insecure: bool = False, timeout: float = 5.0
) -> list[Record]:
    """Every record a running hub holds (live sessions and tombstones)."""
    replies = _query(requests, wire.SNAPSHOT, wire.END, keys, insecure, timeout)
    return [r for reply in replies[:-1] for r in reply.body[0]]
