"""The sidecar: a hub that also owns persistence (``memsession sidecar --store URL``).

One long-lived process per host (or a few for several hosts). It composes a
hub (``memsession.hub``: proxy, replica, snapshots and key reads) with the
one write-behind engine (``persist.writer``): the replica is loaded from the
store before it answers anything, and every change the hub applies reaches
the engine through the hub state's change hook::

    bus ──> hub thread: HubState.merge ──on_change──> Writer.add ──> WriteQueue
                                                          │ every flush_interval, or at batch_size keys
                                                          v
                                          writer thread: store.save(batch), refused records isolated,
                                          retries with backoff, store.purge(now) every prune_interval

Durability: a change is in the store at most ``flush_interval`` (plus one
batch write) after the hub applied it; a sidecar killed with SIGKILL loses
that window from the store, but not from the workers, which push their state
to the restarted sidecar (a new hub epoch makes them repair), so the store
catches up as long as one worker holds the session. SIGTERM/SIGINT stop the
hub, then write everything queued (retrying for up to ``close_timeout``),
then close the store; what could not be written is logged with its count.

The sidecar is the one process that prunes the store: workers never purge,
so N workers don't start N purges (connect-pg-simple issue #160).

The replica is bounded (``HubConfig.maxsize``): the warm start loads the most
recently accessed sessions up to it, and the hub evicts the least recently
used past it. A GET (or touch) for a session it does not hold is then read
back from the store on a reader thread (``hub.reads``: the newest of what the
write-behind queue still holds and what the store has), merged, and answered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from persist.base import Store, merge_row
from persist.writer import Writer, WriterConfig

from ..changes import reflects
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import BusError, ConfigError, MemsessionError
from ..hub import HubConfig, HubState, run_hub
from ..hub.ipc_dirs import IpcDirs
from ..hub.reads import StoreReads
from ..hub.runner import start_in_thread, stop_summary
from ..session import Record
from ..validate import check_int, check_number
from .ack_server import AckBook
from .federation import Federation
from .http import MAX_CONNECTIONS, REQUEST_TIMEOUT, StatusServer, parse_http, serve_http

__all__ = ["Sidecar", "SidecarConfig"]

log = logging.getLogger("memsession.sidecar")


@dataclass(frozen=True, slots=True, kw_only=True)
class SidecarConfig(WriterConfig):
    """A sidecar's options: the write-behind engine's (``WriterConfig``) plus these. Seconds."""

    #: The sidecar is the store's one pruner, so it purges every minute unless told otherwise.
    prune_interval: float | None = 60.0
    #: ``"127.0.0.1:PORT"``: serve ``/health`` (JSON), ``/metrics`` (Prometheus) and a status page (``/``) there.
    http: str | None = None
    #: Seconds an HTTP connection has, in all, to send its request and take the answer.
    http_timeout: float = REQUEST_TIMEOUT
    #: HTTP connections served at once (a thread each); more are answered 503 and closed.
    http_max_connections: int = MAX_CONNECTIONS
    #: Exit (flushing) when this process is no longer our parent (the gunicorn master died).
    parent_pid: int | None = None
    #: With ``parent_pid``: on exiting because the parent died, remove the hub's ``runtime_dir``
    #: (a temp dir the parent made for us and can no longer remove itself).
    remove_runtime_dir: bool = False
    #: Acknowledged mode's endpoint (``memsession.service.ack``): "" = ``ack.sock`` next to ipc
    #: endpoints (none for tcp unless given), None = off.
    ack: str | None = ""

    def __post_init__(self) -> None:
        WriterConfig.__post_init__(self)
        if self.remove_runtime_dir and self.parent_pid is None:
            raise ConfigError("remove_runtime_dir", True, "only with parent_pid (the dir's owner)")
        check_number("http_timeout", self.http_timeout)
        check_int("http_max_connections", self.http_max_connections)
        if self.http is not None:
            parse_http(self.http)


class Sidecar:
    """Runs a sidecar: warm start, hub, writer, pruner, optional HTTP endpoint and ack socket.

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
        federation: Federation | None = None,
    ) -> None:
        self.store = store
        self.federation = federation  # other hosts' changes to the shared store, or None
        self.hub_config = hub or HubConfig()
        self.config = config or SidecarConfig()
        if self.config.remove_runtime_dir and not self.hub_config.runtime_dir:
            raise ConfigError("remove_runtime_dir", True, "needs the hub's runtime_dir given explicitly")
        self.clock = clock
        self.writer = Writer(
            store, self.config, clock=clock, rewrite_source=self._replica_records, on_written=self._written,
            thread_name="memsession-sidecar-writer",
            unwritten_note="workers still hold them and push them to the next sidecar",
        )
        #: Reads of sessions the bounded replica does not hold, off the hub thread.
        self.reads = StoreReads(self._read_back, name="memsession-sidecar-read")
        self.state = HubState(
            clock=clock, limits=self.hub_config.limits, forget_after=self.hub_config.forget_after,
            max_seq_jump=self.hub_config.max_seq_jump, seq_jump_hold=self.hub_config.seq_jump_hold,
            max_skew=self.hub_config.max_skew,
            on_change=self.writer.add, on_clear=self._clear_store,
            extra_stats=self._persist_stats, maxsize=self.hub_config.maxsize, read_back=self.reads.submit,
        )
        self.warm_loaded = 0
        #: ``stats()`` as of the last second, computed in the hub thread when someone reads them
        #: (the HTTP endpoint): the hub's counters are the hub thread's to read.
        self._publish_stats = False
        self.published_stats: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._orphaned = False
        self._ready = threading.Event()
        self._error: list[BaseException] = []
        self._thread: threading.Thread | None = None
        self._http: StatusServer | None = None
        self.http_address: tuple[str, int] | None = None
        self.ack_endpoint = self._ack_endpoint()
        #: The ack thread's waiters and counters (``ack`` in the stats).
        self.ack_book = AckBook()
        self._ack_ctx: Any = None
        self._ack_auth: Any = None
        self._ack_stop = threading.Event()
        self._ack_thread: threading.Thread | None = None
        self._ack_done = f"inproc://memsession-ack-done-{id(self):x}"
        self._ack_push: Any = None
        self._ack_lock = threading.Lock()

    def _clear_store(self, version: int) -> None:
        """A clear raised the hub's watermark: the writer thread applies it before its next batch."""
        self.writer.clear(version, wait=False)

    def _read_back(self, key: str) -> Record | None:
        """The newest copy of ``key`` outside the replica (on a reader thread), never a delta.

        What the write-behind queue holds merged into what the store has, as
        the store will merge it (``persist.base.merge_row``): a record the
        queue no longer holds has landed in the store before it left the
        queue, so the two together have every write the hub applied.
        """
        pending = self.writer.get(key)
        stored = self.store.load(key)
        if pending is None:
            return stored
        return merge_row(stored, pending, self.writer.queue.cleared) or stored

    def _replica_records(self) -> list[Any]:
        return list(self.state.replica.values())  # one C-level copy; the hub thread keeps merging

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
        # Held from before the ack socket binds until after it closed, so a second sidecar in this
        # runtime dir is refused before it binds anything, and the files removed on the way out are ours.
        dirs: IpcDirs | None = None
        clean = False
        try:
            dirs = IpcDirs((*self.hub_config.endpoints(), *([self.ack_endpoint] if self.ack_endpoint else [])))
            if self.federation is not None:
                self.federation.start()  # from the log's end as it is now: the warm load reads what came before
            start = time.monotonic()
            stored = self.store.load_all(self.clock.wall())
            if self.federation is not None:  # hold what this host uses (read back), and every tombstone
                stored, self.state.holds_all = (r for r in stored if r.deleted), False
            self.warm_loaded = self.state.warm(stored)
            log.info("loaded %d sessions from %s in %.2fs (%d held)", self.warm_loaded, self.store.name,
                     time.monotonic() - start, len(self.state.replica))
            self.writer.start()
            self.reads.start()
            if cfg.http is not None:
                self._start_http(cfg.http)
            if self.ack_endpoint is not None:
                self._start_acks(self.ack_endpoint)
            if cfg.parent_pid is not None:
                threading.Thread(target=self._watch_parent, args=(stop,), name="memsession-sidecar-parent",
                                 daemon=True).start()
            run_hub(self.hub_config, stop=stop, ready=ready, state=self.state, every_second=self._tick,
                    reads=self.reads, dirs=dirs, inbox=None if self.federation is None else self.federation.inbox)
            clean = True
        finally:
            self._shutdown()
            if dirs is not None:
                dirs.release()
            if self._orphaned and cfg.remove_runtime_dir:
                self._remove_runtime_dir()
        if clean:
            log.info("sidecar stopped, %s; %d records written to %s", stop_summary(self.state),
                     self.writer.stats().get("saved", 0), self.store.name)

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
        if self.federation is not None:
            self.federation.stop()
        self.reads.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        left = self.writer.close()
        if not left and not self.writer.queue.clear_due:
            log.info("all changes written to %s", self.store.name)
        self._ack_stop.set()
        if self._ack_thread is not None:
            self._ack_thread.join(10)
            self._ack_thread = None
        with self._ack_lock:
            if self._ack_push is not None:
                self._ack_push.close(linger=0)
                self._ack_push = None
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
        self._thread = start_in_thread(lambda: self.run(self._stop, self._ready), self._ready, self._error,
                                       name="memsession-sidecar", timeout=timeout)
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

    def flush(self) -> int:
        """Write everything queued now (this thread); raises the store's error."""
        return self.writer.flush()

    # -- acknowledgements -------------------------------------------------------------------

    def _written(self) -> None:
        """The store took something: wake the ack thread to recheck its waiters (no summary is built)."""
        with self._ack_lock:
            push = self._ack_push
            if push is None:
                return
            import zmq

            with contextlib.suppress(zmq.Again):  # a wake-up already waits, and it rechecks everything
                push.send(b"", zmq.NOBLOCK)

    def ack_settled(self, key: str, version: int, origin: int) -> bool | None:
        """Whether ``(version, origin)`` of ``key`` is in the store: settled in the queue and held by the replica.

        The queue alone can't tell a record it never saw from one it wrote:
        after a restart, the PUSH may have gone to the sidecar before this one.
        The replica (loaded from the store, then merged with every change
        before it was queued) reflects that change (``changes.reflects``:
        merged in, possibly since overwritten) or a clear covers it, once
        this sidecar has it.
        """
        verdict = self.writer.settled(key, version, origin)
        if not verdict:
            return verdict
        held = self.state.replica.get(key)  # one C-level read; the hub thread keeps merging
        if held is not None and reflects(held, version, origin):
            return True
        return version <= self.state.cleared

    def _start_acks(self, endpoint: str) -> None:
        import zmq

        from .. import security
        from ..hub.runtime_dir import socket_address
        from .ack_server import serve_acks

        bind_at = socket_address(endpoint)  # an ipc one inside its checked directory (hub.runtime_dir)
        self._ack_ctx = zmq.Context()
        secure = security.server_policy(self.hub_config, (endpoint,))
        if secure is not None:
            self._ack_auth = secure.start_authenticator(self._ack_ctx)
        ready = threading.Event()
        errors: list[BaseException] = []
        self._ack_thread = threading.Thread(
            target=serve_acks, name="memsession-sidecar-ack",
            args=(self._ack_ctx, bind_at, self._ack_done, self._ack_stop, ready, self.writer, secure),
            kwargs={"errors": errors, "settled": self.ack_settled, "book": self.ack_book,
                    "limits": self.hub_config.limits}, daemon=True,
        )
        self._ack_thread.start()
        if not ready.wait(10) or errors:
            raise BusError(f"the ack socket could not bind {endpoint}: {errors[:1]}", endpoint=endpoint)
        push = self._ack_ctx.socket(zmq.PUSH)
        push.linger = 0
        push.sndhwm = 1
        push.connect(self._ack_done)
        with self._ack_lock:
            self._ack_push = push
        log.info("acknowledged writes on %s", endpoint)

    # -- stats and HTTP -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Hub counters plus ``role``, ``store``, ``persist`` (the write-behind engine's) and the
        counters of the ack socket (``ack``) and the HTTP status server (``http``) when they run."""
        return self.state.stats()

    def _persist_stats(self) -> dict[str, Any]:
        persist = self.writer.stats()
        persist["warm_loaded"] = self.warm_loaded
        refused = getattr(self.store, "refused", None)  # the adapters' ``RefusedRecords``; own stores may lack it
        persist["store_refused"] = getattr(refused, "count", 0)
        out: dict[str, Any] = {"role": "sidecar", "store": self.store.name, "persist": persist,
                               "read_back": self.reads.stats()}
        if self.federation is not None:
            out["federation"] = self.federation.stats()
        if self.ack_endpoint is not None:
            out["ack"] = dict(self.ack_book.counts)  # ints the ack thread bumps; its keys never change
        http = self._http
        if http is not None:
            out["http"] = http.counts()
        return out

    def _tick(self) -> None:
        if self._publish_stats:
            self.published_stats = self.stats()

    def current_stats(self) -> dict[str, Any]:
        """The counters as the hub thread last published them (at most a second old)."""
        stats = self.published_stats
        if stats is None:
            raise BusError("the sidecar is not serving yet")
        return stats

    def _start_http(self, address: str) -> None:
        host, port = parse_http(address)
        self._publish_stats = True
        try:
            self._http = serve_http(
                host, port, self.current_stats,
                timeout=self.config.http_timeout, max_connections=self.config.http_max_connections,
            )
        except OSError as exc:
            raise ConfigError("http", address, f"cannot listen: {exc.strerror}") from exc
        bound_host, bound_port = self._http.server_address[:2]
        self.http_address = (str(bound_host), int(bound_port))
        log.info("status page, health and metrics on http://%s:%d/ (/, /health, /metrics)", *self.http_address)
