"""gunicorn hooks: every worker shares every session, and nothing is lost on restart.

In ``gunicorn.conf.py``::

    from memsession.service.gunicorn import GunicornHooks

    workers = 4
    GunicornHooks(store="file:///var/lib/myapp/sessions.json").install(globals())

and in the app, take the process's cache from the helper (with Flask,
``MemSession(app)`` alone also works: the hooks find its cache)::

    from memsession.contrib.process import session_cache
    MemSession(app, cache=session_cache())

Two shapes:

* **Embedded** (the default): ``on_starting`` spawns ``memsession sidecar``
  (a hub that loads, writes behind and prunes the store; a JSON file unless
  ``store=`` says otherwise) as a child of the master, on ipc sockets in a
  fresh private directory, and waits until it answers. A watchdog thread in
  the master restarts it if it dies; ``on_exit`` stops it with SIGTERM (it
  flushes the store) and removes the directory. The sidecar also exits by
  itself if the master disappears.
* **External sidecar**: ``GunicornHooks(bus={"runtime_dir": ...})`` (or
  ``publish``/``subscribe``/``requests``/``keys`` for tcp + CURVE) connects
  the workers to a sidecar started on its own (systemd, another host).

In each worker: ``post_fork`` gives caches made before the fork (``--preload``)
a fresh origin id and their own bus, and lets caches made after it
(``session_cache()`` at import time, the default without ``--preload``) be
born with one. ``post_worker_init`` blocks until every cache has applied its
hub snapshot (at most ``join_timeout`` seconds; past that it logs an error and
serves from memory while the bus keeps trying), so a worker takes requests
only once it holds the same sessions as the others. ``worker_exit`` lets the
bus send what is queued and closes the caches. ``--reload`` re-forks workers
from the same master, so the same hooks apply.

Outside gunicorn (tests, the Flask dev server) ``session_cache()`` returns a
plain in-process ``SessionCache``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from ..config import Config
from ..contrib import process
from ..contrib.process import session_cache
from ..errors import BusError, ConfigError, MemsessionError
from ..hub import wait_ready
from ..session_cache import SessionCache
from .ack import DEFAULT_TIMEOUT as ACK_TIMEOUT

__all__ = ["GunicornHooks", "session_cache"]

log = logging.getLogger("memsession.gunicorn")

HOOKS = ("on_starting", "post_fork", "post_worker_init", "worker_exit", "on_exit")

#: The embedded sidecar of this master, once ``on_starting`` ran (kept across SIGHUP reloads).
_embedded: _EmbeddedSidecar | None = None


class _WorkerWiring:
    """How caches in this worker join the sidecar: a bus each, and the ack store in acknowledged mode."""

    def __init__(self, bus_options: dict[str, Any], ack_options: dict[str, Any] | None) -> None:
        self.bus_options = bus_options
        self.ack_options = ack_options

    def _bus(self) -> Any:
        from ..bus import ZmqBus

        return ZmqBus(**self.bus_options)

    def _persistence(self) -> Any:
        if self.ack_options is None:
            return None
        from persist.persistence import Persistence

        from .ack import SidecarAckStore

        return Persistence(SidecarAckStore(**self.ack_options), mode="write_through")

    def make(self, config: Config) -> SessionCache:
        """A new cache of this worker (``process.session_cache`` calls it)."""
        return SessionCache(config, bus=self._bus(), persistence=self._persistence())

    def connect(self, cache: SessionCache) -> None:
        """Join a cache made before the fork: its own writer id, bus and (acknowledged mode) store."""
        if cache.bus is not None:
            return
        persistence = self._persistence() if cache.persistence is None else None
        cache.connect(bus=self._bus(), persistence=persistence, new_origin=True)


class _EmbeddedSidecar:
    """The sidecar process spawned by the master, and its watchdog."""

    def __init__(self, argv: list[str], requests: str, runtime_dir: str, owns_dir: bool,
                 start_timeout: float, stop_timeout: float) -> None:
        self.argv = argv
        self.requests = requests
        self.runtime_dir = runtime_dir
        self.owns_dir = owns_dir
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name="memsession-sidecar-watchdog", daemon=True)
        self._watchdog.start()

    def _spawn(self) -> None:
        with self._lock:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
            proc = self.proc
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                raise BusError(f"memsession sidecar exited with code {proc.returncode} at start "
                               f"({' '.join(self.argv)})", endpoint=self.requests)
            try:
                wait_ready(self.requests, min(0.5, max(0.05, deadline - time.monotonic())))
                break
            except BusError:
                if time.monotonic() >= deadline:
                    self._terminate(proc)
                    raise BusError(f"memsession sidecar did not answer within {self.start_timeout:.0f}s",
                                   endpoint=self.requests) from None
        log.info("memsession sidecar pid %d serving at %s", proc.pid, self.requests)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            if self._stop.is_set():
                return
            self.restarts += 1
            log.error("memsession sidecar pid %d died (code %s); restarting it", proc.pid, proc.returncode)
            try:
                self._spawn()
            except BusError as exc:
                log.error("restarting the memsession sidecar failed: %s; retrying", exc)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.error("memsession sidecar pid %d did not stop in %.0fs; killing it", proc.pid, self.stop_timeout)
                proc.kill()
                proc.wait(5)

    def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(self.start_timeout + 5)
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is not None:
            self._terminate(proc)
        if self.owns_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


class GunicornHooks:
    """Server hooks for ``gunicorn.conf.py``; ``install(globals())`` puts them in place.

    ``store``: where the embedded sidecar keeps sessions (a URL, see
    ``persist.url``; default ``sessions.json`` in the working directory).
    ``bus``: options of an external sidecar's endpoints (``runtime_dir``, or
    ``publish``/``subscribe``/``requests`` with ``keys``); when given,
    nothing is spawned. ``sidecar_args``: extra ``memsession sidecar``
    arguments (``["--flush-interval", "0.05", "--http", "127.0.0.1:9108"]``).
    ``bus_options``: extra ``BusConfig`` options for the workers' buses.
    ``acknowledged=True``: a save returns only once the sidecar has stored it
    (``memsession.service.ack``; over tcp give the sidecar's ``ack_endpoint``);
    ``ack_timeout``: its deadline, resends to a restarted sidecar included (15 s).
    """

    def __init__(
        self,
        store: str | None = None,
        *,
        bus: dict[str, Any] | None = None,
        runtime_dir: str | None = None,
        sidecar_args: Sequence[str] = (),
        bus_options: dict[str, Any] | None = None,
        join_timeout: float = 10.0,
        start_timeout: float = 30.0,
        stop_timeout: float = 20.0,
        acknowledged: bool = False,
        ack_endpoint: str | None = None,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        if bus is not None and (store is not None or runtime_dir is not None or sidecar_args):
            raise ConfigError("bus", bus, "an external sidecar is configured on its own; drop store/runtime_dir")
        self.store = store or "sessions.json"
        self.external = bus
        self.runtime_dir = runtime_dir
        self.sidecar_args = list(sidecar_args)
        self.bus_options = dict(bus_options or {})
        self.join_timeout = join_timeout
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.acknowledged = acknowledged
        self.ack_endpoint = ack_endpoint
        self.ack_timeout = ack_timeout
        if acknowledged and bus is not None and not bus.get("runtime_dir") and not ack_endpoint:
            raise ConfigError("ack_endpoint", ack_endpoint, "acknowledged mode over tcp needs the sidecar's ack endpoint")
        if bus is None:
            from persist.url import store_kind

            store_kind(self.store)  # an unknown scheme fails now, not at on_starting

    def install(self, namespace: MutableMapping[str, Any]) -> GunicornHooks:
        """Define the hooks in a config module's namespace, running any hook already there first."""
        for name in HOOKS:
            ours = getattr(self, name)
            theirs = namespace.get(name)
            namespace[name] = ours if theirs is None else _chain(theirs, ours)
        return self

    # -- master ---------------------------------------------------------------------------

    def _sidecar_argv(self, runtime_dir: str, owns_dir: bool) -> list[str]:
        from persist.url import file_path, store_kind

        store = self.store
        if store_kind(store) == "file":
            store = "file://" + file_path(store)  # the sidecar may not share our cwd forever
        # A master killed outright never runs on_exit: the sidecar then removes our temp dir.
        cleanup = ["--remove-runtime-dir"] if owns_dir else []
        return [sys.executable, "-m", "memsession", "sidecar", "--store", store, "--runtime-dir", runtime_dir,
                "--parent-pid", str(os.getpid()), *cleanup, *self.sidecar_args]

    def on_starting(self, server: Any) -> None:
        if self.external is not None:
            self._check_external({**self.bus_options, **self.external})
            return
        try:
            self._start_embedded()
        except MemsessionError as exc:
            # gunicorn calls on_starting outside its own error handling: an exception would end the master
            # with a traceback through gunicorn's internals. A refusal to start is one line and an exit code.
            pidfile = getattr(server, "pidfile", None)  # made just before this hook; nothing else removes it
            if pidfile is not None:
                pidfile.unlink()
            raise SystemExit(f"memsession: gunicorn not started: {exc}") from None

    def _start_embedded(self) -> None:
        global _embedded
        from persist.url import check_store

        from ..hub import HubConfig

        if _embedded is not None:
            return  # already running (a second on_starting never happens; be safe)
        check_store(self.store)  # before a sidecar is spawned only to say it
        owns_dir = self.runtime_dir is None
        runtime_dir = self.runtime_dir or tempfile.mkdtemp(prefix="memsession-")
        requests = HubConfig(runtime_dir=runtime_dir).endpoints()[2]
        sidecar = _EmbeddedSidecar(self._sidecar_argv(runtime_dir, owns_dir), requests, runtime_dir, owns_dir,
                                   self.start_timeout, self.stop_timeout)
        try:
            sidecar.start()
        except BaseException:
            if owns_dir:
                shutil.rmtree(runtime_dir, ignore_errors=True)
            raise
        _embedded = sidecar

    def _check_external(self, bus_options: dict[str, Any]) -> None:
        from ..bus import ZmqBus

        config = ZmqBus(**bus_options).config  # resolves a runtime_dir into endpoints; opens no socket
        try:
            wait_ready(config.requests, self.join_timeout, keys=config.keys, insecure=config.insecure)
        except BusError as exc:
            log.error("memsession sidecar not reachable (%s); workers serve from memory and join once it is", exc)

    def on_exit(self, server: Any) -> None:
        global _embedded
        sidecar, _embedded = _embedded, None
        if sidecar is not None:
            sidecar.stop()

    # -- workers --------------------------------------------------------------------------

    def _worker_bus_options(self) -> dict[str, Any]:
        if self.external is not None:
            return {**self.bus_options, **self.external}
        if _embedded is None:
            raise BusError("the memsession sidecar is not running (on_starting did not run?)")
        # A sidecar that follows other hosts: a miss may be a session one of them wrote, in the store.
        federated = {"read_through": True} if "--host-name" in self.sidecar_args else {}
        return {**federated, **self.bus_options, "runtime_dir": _embedded.runtime_dir}

    def _worker_ack_options(self, bus: dict[str, Any]) -> dict[str, Any] | None:
        if not self.acknowledged:
            return None
        options: dict[str, Any] = {"timeout": self.ack_timeout, "keys": bus.get("keys"),
                                   "insecure": bool(bus.get("insecure", False))}
        if bus.get("runtime_dir"):
            options["runtime_dir"] = bus["runtime_dir"]
        else:
            options["requests"] = bus["requests"]
        if self.ack_endpoint:
            options["ack"] = self.ack_endpoint
        return options

    def post_fork(self, server: Any, worker: Any) -> None:
        global _embedded
        bus_options = self._worker_bus_options()
        wiring = _WorkerWiring(bus_options, self._worker_ack_options(bus_options))
        _embedded = None  # the master's; never stop it from a worker
        for cache in process.set_factory(wiring.make):
            wiring.connect(cache)
        self._wiring = wiring

    def post_worker_init(self, worker: Any) -> None:
        caches = process.caches()
        if not caches:
            found = _flask_cache(getattr(worker, "wsgi", None))
            if found is not None:
                wiring = getattr(self, "_wiring", None)
                if wiring is not None:
                    wiring.connect(found)
                process.register(found)
                caches = [found]
        if not caches:
            log.warning("no memsession cache found in this worker: call "
                        "memsession.contrib.process.session_cache() in the app")
            return
        deadline = time.monotonic() + self.join_timeout
        for cache in caches:
            bus = cache.bus
            wait = getattr(bus, "wait_joined", None)
            if wait is not None and not wait(max(0.0, deadline - time.monotonic())):
                log.error("worker %d: no hub snapshot within %.0fs; serving from memory while the bus retries",
                          os.getpid(), self.join_timeout)

    def worker_exit(self, server: Any, worker: Any) -> None:
        for cache in process.take_all():
            bus = cache.bus
            if bus is not None:
                deadline = time.monotonic() + 2.0
                while bus.stats().get("queued", 0) and time.monotonic() < deadline:
                    time.sleep(0.005)  # the sender thread drains the queue; a short bounded wait
            cache.close()


def _chain(first: Callable[..., Any], second: Callable[..., Any]) -> Callable[..., Any]:
    def hook(*args: Any) -> None:
        first(*args)
        second(*args)

    hook.__name__ = getattr(second, "__name__", "hook")
    return hook


def _flask_cache(app: Any) -> SessionCache | None:
    """The cache of a Flask app set up with ``MemSession(app)``, if that is what ``app`` is."""
    extensions = getattr(app, "extensions", None)
    if not isinstance(extensions, dict):
        return None
    manager = extensions.get("memsession")
    cache = getattr(manager, "cache", None)
    return cache if isinstance(cache, SessionCache) else None
