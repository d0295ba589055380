"""The sidecar: a hub that also owns persistence (``memsession sidecar --store URL``).

One long-lived process per host (or a few for several hosts). It is a hub
(proxy, replica, snapshots and key reads; ``memsession.hub``) whose replica
is loaded from the store before it answers anything, and whose every applied
change is written behind to the store::

    bus ──> hub thread: SidecarState.merge ──> WriteQueue (coalesced by key, bounded)
                                                   │ every flush_interval, or at batch_size keys
                                                   v
                                    writer thread: store.save(batch) ── retry with backoff
                                                   └─ store.purge(now) every prune_interval

``SidecarState`` is the protocol (the hub's state plus the queue and the
counters); ``Sidecar`` is the runner that owns the threads, signals and the
optional HTTP endpoint. Durability: a change is in the store at most
``flush_interval`` (plus one batch write) after the hub applied it; a
sidecar killed with SIGKILL loses that window from the store, but not from
the workers, which push their state to the restarted sidecar (a new hub epoch
makes them repair), so the store catches up as long as one worker holds the
session. SIGTERM/SIGINT stop the hub, then write everything queued (retrying
for up to ``close_timeout``), then close the store; what could not be written
is logged with its count.

The sidecar is the one process that prunes the store: workers never purge,
so N workers don't start N purges (connect-pg-simple issue #160).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from memsession.clock import SYSTEM_CLOCK, Clock
from memsession.errors import BusError, ConfigError, MemsessionError, StoreError
from memsession.hub import HubConfig, HubState, merge_into, run_hub
from memsession.session import Record
from memsession.validate import check_int, check_number

from .base import Store
from .batching import WriteQueue

__all__ = ["Sidecar", "SidecarConfig", "SidecarState", "parse_http", "prometheus_text"]

log = logging.getLogger("memsession.sidecar")


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarConfig:
    """Persistence options of a sidecar. Times are seconds."""

    #: Longest a change waits before it is written (the write-behind loss window).
    flush_interval: float = 0.1
    #: Records per ``store.save`` call; a batch is written early once this many keys wait.
    batch_size: int = 2000
    #: Most keys waiting for the store; beyond, live ones are rewritten from the replica later.
    queue_limit: int = 1_000_000
    #: Purge expired sessions from the store this often; None never purges.
    prune_interval: float | None = 60.0
    #: On SIGTERM, keep retrying queued writes this long before giving up (and saying how many).
    close_timeout: float = 10.0
    #: Pause between retries while the store fails: doubles from ``retry_min`` up to ``retry_max``.
    retry_min: float = 0.1
    retry_max: float = 2.0
    #: ``"127.0.0.1:PORT"``: serve ``/health`` (JSON) and ``/metrics`` (Prometheus) there.
    http: str | None = None
    #: Exit (flushing) when this process is no longer our parent (the gunicorn master died).
    parent_pid: int | None = None
    #: With ``parent_pid``: on exiting because the parent died, remove the hub's ``runtime_dir``
    #: (a temp dir the parent made for us and can no longer remove itself).
    remove_runtime_dir: bool = False
    #: Acknowledged mode's endpoint (``persist.ack``): "" = ``ack.sock`` next to ipc endpoints
    #: (none for tcp unless given), None = off.
    ack: str | None = ""

    def __post_init__(self) -> None:
        check_number("flush_interval", self.flush_interval)
        check_number("prune_interval", self.prune_interval, allow_none=True)
        check_number("close_timeout", self.close_timeout, allow_zero=True)
        check_number("retry_min", self.retry_min)
        check_number("retry_max", self.retry_max)
        for name in ("batch_size", "queue_limit"):
            check_int(name, getattr(self, name))
        if self.retry_max < self.retry_min:
            raise ConfigError("retry_max", self.retry_max, "must be >= retry_min")
        if self.remove_runtime_dir and self.parent_pid is None:
            raise ConfigError("remove_runtime_dir", True, "only with parent_pid (the dir's owner)")
        if self.http is not None:
            parse_http(self.http)


def parse_http(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` (or ``":9108"``) as ``(host, port)``; loopback only unless a host is given."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("http", value, "must be HOST:PORT, e.g. 127.0.0.1:9108")
    return host or "127.0.0.1", int(port)


class SidecarState(HubState):
    """The hub's state whose every applied change is queued for the store.

    ``merge`` runs in the hub thread; the writer thread takes batches. Both go
    through ``lock``, which guards the queue and the persistence counters.
    """

    def __init__(self, *, store_name: str, queue_limit: int = 1_000_000, batch_size: int = 2000,
                 clock: Clock = SYSTEM_CLOCK, **options: Any) -> None:
        super().__init__(clock=clock, **options)
        self.store_name = store_name
        self.queue = WriteQueue(queue_limit)
        self.batch_size = batch_size
        self.lock = threading.Lock()
        #: Set when a batch is worth writing now (the writer waits on it).
        self.wake = threading.Event()
        #: Wall time the oldest unwritten change was queued; None when all is written.
        self.dirty_since: float | None = None
        self.last_flush: float | None = None
        self.last_error = ""
        self.failing = False
        #: ``stats()`` as of the last second, computed in the hub thread when ``publish_stats`` is set
        #: (the HTTP endpoint serves it; stats cost O(sessions), so only when someone reads them).
        self.publish_stats = False
        self.published_stats: dict[str, Any] | None = None
        self.persist_counts = dict.fromkeys(
            ("warm_loaded", "write_errors", "rewrites", "rewritten", "purged", "purge_errors",
             "unwritten_at_exit", "clears"),
            0,
        )

    def warm(self, records: Any) -> int:
        """Load the store's records into the replica (nothing is queued); return how many."""
        wall = self.clock.wall()
        count = 0
        for record in records:
            merge_into(self.replica, record, wall)
            count += 1
        self.recount()
        self.persist_counts["warm_loaded"] += count
        return count

    def merge(self, record: Record) -> bool:
        changed = super().merge(record)
        if changed:
            with self.lock:
                if self.dirty_since is None:
                    self.dirty_since = self.clock.wall()
                if self.queue.add(record):
                    log.error(
                        "write-behind queue overflowed (%d keys, store %s failing); live sessions "
                        "will be rewritten from memory when the store is back",
                        self.queue.limit, self.store_name,
                    )
                full = len(self.queue) >= self.batch_size
            if full:
                self.wake.set()
        return changed

    def clear(self, version: int) -> bool:
        raised = super().clear(version)
        if raised:
            with self.lock:
                self.queue.clear(version)
                if self.dirty_since is None:
                    self.dirty_since = self.clock.wall()
            self.wake.set()
        return raised

    def persistence_stats(self) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = dict(self.persist_counts)
            out.update(self.queue.stats())
            wall = self.clock.wall()
            out["failing"] = self.failing
            out["last_flush_age_s"] = -1.0 if self.last_flush is None else round(wall - self.last_flush, 3)
            out["unwritten_age_s"] = 0.0 if self.dirty_since is None else round(wall - self.dirty_since, 3)
            out["last_error"] = self.last_error
        return out

    def prune(self) -> int:
        """The hub thread's once-a-second chore; also refreshes ``published_stats`` for other threads."""
        pruned = super().prune()
        if self.publish_stats:
            self.published_stats = self.stats()
        return pruned

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["role"] = "sidecar"
        out["store"] = self.store_name
        out["persist"] = self.persistence_stats()
        return out


def prometheus_text(stats: dict[str, Any], prefix: str = "memsession") -> str:
    """Numeric stats in the Prometheus text format; nested maps become labels."""
    lines: list[str] = []

    def emit(name: str, value: Any, labels: str = "") -> None:
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            return
        lines.append(f"{prefix}_{name}{labels} {value}")

    info_labels = []
    for key in sorted(stats):
        value = stats[key]
        if isinstance(value, dict):
            group = key
            nested = {k: v for k, v in value.items()}
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in nested.values()) \
                    and key in ("dropped",):
                for label in sorted(nested):
                    emit(group, nested[label], f'{{reason="{_escape(label)}"}}')
                continue
            for sub in sorted(nested):
                if isinstance(nested[sub], str):
                    continue
                emit(f"{group}_{sub}", nested[sub])
        elif isinstance(value, str):
            info_labels.append(f'{key}="{_escape(value)}"')
        elif value is None:
            continue
        else:
            emit(key, value)
    if info_labels:
        lines.append(f"{prefix}_info{{{','.join(info_labels)}}} 1")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Sidecar:
    """Runs a sidecar: warm start, hub, writer, pruner, optional HTTP endpoint.

    ``run(stop)`` blocks (the command); ``start()``/``stop()`` run it in a
    background thread (embedding, tests). The store is closed by the sidecar.
    """

    def __init__(
        self,
        store: Store,
        hub: HubConfig | None = None,
        config: SidecarConfig | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.hub_config = hub or HubConfig()
        self.config = config or SidecarConfig()
        if self.config.remove_runtime_dir and not self.hub_config.runtime_dir:
            raise ConfigError("remove_runtime_dir", True, "needs the hub's runtime_dir given explicitly")
        self.clock = clock
        self.state = SidecarState(
            store_name=store.name, queue_limit=self.config.queue_limit, batch_size=self.config.batch_size,
            clock=clock, limits=self.hub_config.limits,
        )
        self._stop = threading.Event()
        self._stopping = threading.Event()
        self._orphaned = False
        self._ready = threading.Event()
        self._error: list[BaseException] = []
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self.http_address: tuple[str, int] | None = None
        self.ack_endpoint = self._ack_endpoint()
        self._ack_ctx: Any = None
        self._ack_auth: Any = None
        self._ack_stop = threading.Event()
        self._ack_thread: threading.Thread | None = None
        self._ack_done = f"inproc://memsession-ack-done-{id(self):x}"
        self._ack_push: Any = None

    def _ack_endpoint(self) -> str | None:
        ack = self.config.ack
        if ack is None:
            return None
        if ack:
            return ack
        hub = self.hub_config
        if hub.publish and not hub.publish.startswith("ipc://"):
            return None
        from .ack import default_ack_endpoint

        requests = hub.endpoints()[2]
        return default_ack_endpoint(os.path.dirname(requests[len("ipc://"):]))

    # -- running ------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, ready: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set, then flush and close the store."""
        stop = stop or self._stop
        cfg = self.config
        try:
            start = time.monotonic()
            loaded = self.state.warm(self.store.load_all(self.clock.wall()))
            log.info("loaded %d sessions from %s in %.2fs", loaded, self.store.name, time.monotonic() - start)
            self._writer = threading.Thread(target=self._write_loop, name="memsession-sidecar-writer",
                                            daemon=True)
            self._writer.start()
            if cfg.http is not None:
                self._start_http(cfg.http)
            if self.ack_endpoint is not None:
                self._start_acks(self.ack_endpoint)
            if cfg.parent_pid is not None:
                threading.Thread(target=self._watch_parent, args=(stop,), name="memsession-sidecar-parent",
                                 daemon=True).start()
            run_hub(self.hub_config, stop=stop, ready=ready, state=self.state)
        finally:
            self._shutdown()
            if self._orphaned and cfg.remove_runtime_dir:
                self._remove_runtime_dir()

    def _remove_runtime_dir(self) -> None:
        path = self.hub_config.runtime_dir
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("removing the runtime dir %s failed: %s", path, exc)
        else:
            log.info("removed the runtime dir %s", path)

    def _shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self._stopping.set()
        self.state.wake.set()
        if self._writer is not None:
            self._writer.join(self.config.close_timeout + 30)
            self._writer = None
        self._ack_stop.set()
        if self._ack_thread is not None:
            self._ack_thread.join(10)
            self._ack_thread = None
        if self._ack_auth is not None:
            self._ack_auth.stop()
            self._ack_auth = None
        if self._ack_ctx is not None:
            self._ack_ctx.term()
            self._ack_ctx = None
        try:
            self.store.close()
        except MemsessionError as exc:
            log.error("closing the store %s failed: %s", self.store.name, exc)

    def start(self, timeout: float = 30.0) -> Sidecar:
        """Run in a background thread; return once the hub answers requests."""

        def target() -> None:
            try:
                self.run(self._stop, self._ready)
            except BaseException as exc:  # noqa: BLE001 (handed to the caller of start/stop)
                self._error.append(exc)
                self._ready.set()

        self._thread = threading.Thread(target=target, name="memsession-sidecar", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise BusError("sidecar did not start in time")
        if self._error:
            raise self._error[0]
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.close_timeout + 30)
            self._thread = None
        if self._error:
            raise self._error[0]

    def __enter__(self) -> Sidecar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def install_signal_handlers(self, stop: threading.Event) -> None:
        """SIGTERM and SIGINT stop the hub and flush (call from the main thread)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())

    def _watch_parent(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            if os.getppid() != self.config.parent_pid:
                log.warning("parent process %s is gone; stopping", self.config.parent_pid)
                self._orphaned = True
                stop.set()

    # -- writer ---------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write everything queued now (this thread); False if the store failed."""
        state = self.state
        if not self._clear_store():
            return False
        while True:
            with state.lock:
                batch = state.queue.take(self.config.batch_size)
                if not batch:
                    state.dirty_since = None
                    return True
            try:
                self.store.save(batch)
            except Exception as exc:  # noqa: BLE001 (logged, counted, retried: the writer never dies)
                with state.lock:
                    state.queue.failed(batch)
                self._failed("save", exc)
                return False
            with state.lock:
                state.queue.done(batch)
                state.last_flush = self.clock.wall()
                if not len(state.queue):
                    state.dirty_since = None
            self._stored(batch)
            self._recovered()

    def _clear_store(self) -> bool:
        """Apply a clear the store has not taken yet (before any batch written after it)."""
        state = self.state
        with state.lock:
            version = state.queue.clear_due
        if not version:
            return True
        try:
            removed = self.store.clear(version)
        except Exception as exc:  # noqa: BLE001 (logged, counted, retried: the writer never dies)
            self._failed("clear", exc)
            return False
        with state.lock:
            state.queue.clear_done(version)
            state.persist_counts["clears"] += 1
        log.info("cleared %d sessions from %s (watermark %d)", removed, state.store_name, version)
        self._recovered()
        return True

    def _rewrite(self) -> bool:
        """After an overflow: write every record the replica holds (the store's guard skips old ones)."""
        state = self.state
        with state.lock:
            state.queue.start_rewrite()
            state.persist_counts["rewrites"] += 1
        records = list(state.replica.values())  # one C-level copy; the hub thread keeps merging
        log.warning("rewriting %d sessions from memory to %s after a queue overflow", len(records), state.store_name)
        size = self.config.batch_size
        for start in range(0, len(records), size):
            try:
                self.store.save(records[start:start + size])
            except Exception as exc:  # noqa: BLE001 (logged, counted, retried)
                with state.lock:
                    state.queue.rewrite_due = True
                self._failed("rewrite", exc)
                return False
            with state.lock:
                state.persist_counts["rewritten"] += len(records[start:start + size])
            self._stored(records[start:start + size])
        return True

    def _stored(self, batch: Sequence[Record]) -> None:
        """Tell the ack thread what the store took (from the writer thread, over its own socket)."""
        if self._ack_ctx is None:
            return
        import msgpack
        import zmq

        if self._ack_push is None:
            self._ack_push = self._ack_ctx.socket(zmq.PUSH)
            self._ack_push.linger = 0
            self._ack_push.connect(self._ack_done)
        self._ack_push.send(msgpack.packb([[r.key, r.version, r.origin, r.accessed, r.deleted] for r in batch]))

    def _start_acks(self, endpoint: str) -> None:
        import zmq

        from memsession import security

        from .ack import serve_acks

        self._ack_ctx = zmq.Context()
        secure = security.server_policy(self.hub_config, (endpoint,))
        if secure is not None:
            self._ack_auth = secure.start_authenticator(self._ack_ctx)
        ready = threading.Event()
        errors: list[BaseException] = []
        self._ack_thread = threading.Thread(
            target=serve_acks, name="memsession-sidecar-ack",
            args=(self._ack_ctx, endpoint, self._ack_done, self._ack_stop, ready, self.state.wake, secure),
            kwargs={"errors": errors}, daemon=True,
        )
        self._ack_thread.start()
        if not ready.wait(10) or errors:
            raise BusError(f"the ack socket could not bind {endpoint}: {errors[:1]}", endpoint=endpoint)
        log.info("acknowledged writes on %s", endpoint)

    def _failed(self, op: str, exc: Exception) -> None:
        state = self.state
        with state.lock:
            state.persist_counts["write_errors"] += 1
            state.last_error = f"{op}: {exc}"[:300]
            was_failing, state.failing = state.failing, True
        if not isinstance(exc, StoreError):
            log.exception("unexpected error writing to %s; retrying", state.store_name, exc_info=exc)
        elif not was_failing:
            log.warning("store %s failing (%s); changes stay queued and are retried", state.store_name, exc)
        else:
            log.debug("store %s still failing: %s", state.store_name, exc)

    def _recovered(self) -> None:
        state = self.state
        with state.lock:
            was_failing, state.failing = state.failing, False
            depth = len(state.queue)
        if was_failing:
            log.warning("store %s is back; %d keys still queued", state.store_name, depth)

    def _prune(self) -> None:
        state = self.state
        try:
            purged = self.store.purge(self.clock.wall())
        except Exception as exc:  # noqa: BLE001 (logged and counted; pruning retries next interval)
            with state.lock:
                state.persist_counts["purge_errors"] += 1
            log.warning("purging expired sessions from %s failed: %s", state.store_name, exc)
            return
        with state.lock:
            state.persist_counts["purged"] += purged
        if purged:
            log.info("purged %d expired sessions from %s", purged, state.store_name)

    def _write_loop(self) -> None:
        cfg = self.config
        state = self.state
        backoff = 0.0
        next_prune = None if cfg.prune_interval is None else time.monotonic() + cfg.prune_interval
        deadline: float | None = None
        while True:
            stopping = self._stopping.is_set()
            if stopping and deadline is None:
                deadline = time.monotonic() + cfg.close_timeout
            if not stopping:
                state.wake.wait(backoff or cfg.flush_interval)
                state.wake.clear()
            elif backoff:
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))  # type: ignore[operator]
            ok = self.flush()
            if ok and state.queue.rewrite_due:
                ok = self._rewrite() and self.flush()
            backoff = 0.0 if ok else min(max(backoff * 2, cfg.retry_min), cfg.retry_max)
            if stopping:
                if ok or time.monotonic() >= deadline:  # type: ignore[operator]
                    break
                continue
            if next_prune is not None and ok and time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + cfg.prune_interval  # type: ignore[operator]
        if self._ack_push is not None:
            self._ack_push.close(linger=0)
            self._ack_push = None
        with state.lock:
            left = len(state.queue)
            owed = state.queue.clear_due
            state.persist_counts["unwritten_at_exit"] = left
        if left:
            log.error("stopping with %d session changes the store %s did not take; workers still hold "
                      "them and push them to the next sidecar", left, state.store_name)
        if owed:
            log.error("stopping with a clear (watermark %d) the store %s did not take; workers push their "
                      "watermark to the next sidecar, which applies it", owed, state.store_name)
        if not left and not owed:
            log.info("all changes written to %s", state.store_name)

    # -- HTTP ------------------------------------------------------------------------------

    def current_stats(self) -> dict[str, Any]:
        """The counters as the hub thread last published them (at most a second old)."""
        stats = self.state.published_stats
        if stats is None:
            raise BusError("the sidecar is not serving yet")
        return stats

    def _start_http(self, address: str) -> None:
        host, port = parse_http(address)
        self.state.publish_stats = True
        try:
            self._http = serve_http(host, port, self.current_stats)
        except OSError as exc:
            raise ConfigError("http", address, f"cannot listen: {exc.strerror}") from exc
        bound_host, bound_port = self._http.server_address[:2]
        self.http_address = (str(bound_host), int(bound_port))
        log.info("health and metrics on http://%s:%d/ (/health, /metrics)", *self.http_address)


def serve_http(host: str, port: int, stats: Callable[[], dict[str, Any]]) -> ThreadingHTTPServer:
    """A tiny HTTP server in a daemon thread: ``/health`` (JSON) and ``/metrics`` (Prometheus text)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in ("/health", "/metrics", "/"):
                self._reply(404, "text/plain", b"not found\n")
                return
            try:
                current = stats()
            except MemsessionError as exc:
                body = json.dumps({"ok": False, "error": str(exc)}).encode()
                self._reply(503, "application/json", body)
                return
            if path == "/metrics":
                self._reply(200, "text/plain; version=0.0.4", prometheus_text(current).encode())
                return
            healthy = not current.get("persist", {}).get("failing", False)
            body = json.dumps({"ok": healthy, **current}, sort_keys=True).encode()
            self._reply(200 if healthy else 503, "application/json", body)

        def _reply(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http %s", format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="memsession-sidecar-http", daemon=True).start()
    return server
