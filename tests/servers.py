"""Throwaway PostgreSQL, CouchDB-API and Redis servers on 127.0.0.1 for tests and benchmarks.

Each server gets a free port and a temporary directory, and is managed by one
object::

    with PostgresServer() as pg:
        connect(pg.url)
        pg.restart()          # same port, same data: clients can reconnect

``start()`` polls until the server answers, with a deadline, and raises
:class:`ServerError` naming what failed and the tail of the server's log.
``stop()`` ends only the processes this object started (by pid) and removes its
temporary directory. Servers still running when the interpreter exits, or when
it gets SIGTERM or SIGHUP, are stopped too.

The software comes from ``scripts/bootstrap``: PostgreSQL from Debian's
versioned bin folder (or ``PG_BIN``, or PATH), pouchdb-server from the bootstrap
cache (or ``MEMSESSION_POUCHDB_SERVER``, or PATH), redis-server from PATH.

Uses only the standard library, so that benchmarks can import it too.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CouchServer",
    "PostgresServer",
    "RedisServer",
    "Server",
    "ServerError",
    "stop_all",
    "unique_name",
]

POUCHDB_SERVER_VERSION = "4.2.0"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_POLL = 0.05
_LOG_TAIL = 40


class ServerError(RuntimeError):
    """A server could not be found, started or stopped; the message says which and why."""


def unique_name(prefix: str = "test") -> str:
    """A fresh database name, valid for both PostgreSQL and CouchDB (lowercase, digits, underscore)."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = _LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes (its parent will reap it).
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True


def _tmp_base() -> str | None:
    """Where temp dirs go: the default, unless another user must traverse it or it is too long."""
    base = tempfile.gettempdir()
    if os.geteuid() == 0 or len(base) > 40:
        # postgres (a different user) must traverse every parent: not /root;
        # unix socket paths must stay under 107 bytes.
        return "/tmp"
    return None


# --- registry of running servers, for the exit/signal safety net ---------------------------

_live: set[Any] = set()  # anything with stop() and _owner_pid: servers, and tests.webservers.Process
_live_lock = threading.RLock()  # RLock: the signal handler may run while the main thread holds it
_handlers_installed = False


def stop_all() -> None:
    """Stop every server started in this process and not yet stopped.

    A process forked from the one that started a server (multiprocessing, a
    test's worker) inherits the registry but does not own the servers: there it
    does nothing.
    """
    with _live_lock:
        servers = [s for s in _live if s._owner_pid == os.getpid()]
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


def track(thing: Any) -> None:
    """Put a child process holder (``stop()``, ``_owner_pid``) under the exit/signal safety net."""
    _install_safety_net()
    with _live_lock:
        _live.add(thing)


def untrack(thing: Any) -> None:
    with _live_lock:
        _live.discard(thing)


def _on_signal(signum: int, frame: Any) -> None:
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_safety_net() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # Leave alone any handler someone else chose.
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_signal)


class Server:
    """Start/stop/restart protocol shared by the servers below."""

    name = "server"

    def __init__(self, *, start_timeout: float = START_TIMEOUT) -> None:
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.tmpdir: Path | None = None
        self.start_seconds: float | None = None
        self._running = False
        self._owner_pid = os.getpid()

    # subclasses implement these three
    def _launch(self) -> None:
        raise NotImplementedError

    def _halt(self) -> None:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "log.txt"

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> Self:
        """Start on a free port in a new temp dir and wait until the server answers."""
        if self._running:
            return self
        _install_safety_net()
        self._owner_pid = os.getpid()
        began = time.monotonic()
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"ms-{self.name}-", dir=_tmp_base()))
        self.port = free_port()
        with _live_lock:
            _live.add(self)
        try:
            self._prepare()
            self._start_on_port()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def _start_on_port(self) -> None:
        try:
            self._launch()
        except ServerError:
            # Another process may have taken the port between free_port() and bind:
            # try once more on a new one.
            if not self._port_taken():
                raise
            self._halt()
            self.port = free_port()
            self._launch()
        self._running = True

    def _port_taken(self) -> bool:
        log = _tail(self.log_path, 200).lower()
        return any(s in log for s in ("address already in use", "eaddrinuse", "could not bind"))

    def _prepare(self) -> None:
        """One-time setup in the temp dir (PostgreSQL's initdb)."""

    def stop(self) -> None:
        """Stop the processes this object started and remove its temp dir. Safe to call twice."""
        try:
            self._halt()
        finally:
            self._running = False
            with _live_lock:
                _live.discard(self)
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None

    def restart(self) -> None:
        """Stop and start again on the same port (and, where the server keeps any, the same data)."""
        if not self._running:
            raise ServerError(f"{self.name}: restart() before start()")
        self._halt()
        self._running = False
        self._launch()
        self._running = True

    def _fail(self, what: str) -> ServerError:
        tail = _tail(self.log_path) if self.tmpdir is not None else "(no temp dir)"
        return ServerError(f"{self.name} on 127.0.0.1:{self.port}: {what}\n--- log tail ---\n{tail}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<{type(self).__name__} {state} port={self.port}>"


class _ChildProcessServer(Server):
    """A server that runs in the foreground as our child, in its own process group."""

    def __init__(self, *, start_timeout: float = START_TIMEOUT) -> None:
        super().__init__(start_timeout=start_timeout)
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        raise NotImplementedError

    def _launch(self) -> None:
        assert self.tmpdir is not None
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.tmpdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C meant for pytest doesn't kill the
                # server under a running test, and stop() can end the whole group.
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._fail(f"exited with code {code} while starting")
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise self._fail(f"did not answer within {self.start_timeout:.0f} s")
            time.sleep(_POLL)

    def _halt(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Anything the server itself spawned into its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


# --- PostgreSQL ------------------------------------------------------------------------------


def _postgres_bindir() -> Path:
    env = os.environ.get("PG_BIN")
    if env:
        return Path(env)

    def version(path: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([\d.]+)/bin$", path)
        return tuple(int(p) for p in m.group(1).split(".")) if m else (0,)

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version)
    found = [d for d in found if os.access(os.path.join(d, "initdb"), os.X_OK)]
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServerError(
        "PostgreSQL not found: no /usr/lib/postgresql/*/bin/initdb, no PG_BIN, no initdb on PATH "
        "(scripts/bootstrap installs Debian's postgresql package)"
    )


class PostgresServer(Server):
    """A throwaway PostgreSQL cluster: trust auth, fsync off, one database.

    ``url`` is ``postgresql://postgres@127.0.0.1:PORT/<database>``; ``admin_url``
    points at the ``postgres`` maintenance database. As root, the cluster runs as
    the ``postgres`` user (PostgreSQL refuses to run as root).

    One role name, ``PASSWORD_ROLE``, must log in over TCP with a password
    (scram-sha-256): tests of authentication failures create it with
    ``CREATE ROLE ... LOGIN PASSWORD ...`` and connect with a wrong one.
    """

    name = "postgres"
    PASSWORD_ROLE = "memsession_password_auth"

    def __init__(self, database: str = "memsession_test", *, start_timeout: float = START_TIMEOUT) -> None:
        super().__init__(start_timeout=start_timeout)
        self.database = database
        self.user = "postgres"
        self.bindir = _postgres_bindir()
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def admin_url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def datadir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "data"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, while running."""
        with contextlib.suppress(OSError, ValueError, IndexError, AssertionError):
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        return None

    def _run(
        self, tool: str, *args: str, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = dict(os.environ, LC_ALL="C")
        try:
            result = subprocess.run(
                cmd,
                check=False,
                cwd=self.tmpdir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except FileNotFoundError as exc:
            raise ServerError(f"postgres: cannot run {cmd[0]}: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise self._fail(f"{tool} did not finish within {timeout:.0f} s") from exc
        if check and result.returncode != 0:
            raise self._fail(
                f"{tool} failed with code {result.returncode}:\n{result.stdout}{result.stderr}".rstrip()
            )
        return result

    def _prepare(self) -> None:
        assert self.tmpdir is not None
        if self._as_postgres:
            try:
                shutil.chown(self.tmpdir, user="postgres", group="postgres")
            except LookupError as exc:
                raise ServerError(
                    "postgres: no 'postgres' user to run the server as (is PostgreSQL installed?)"
                ) from exc
        self._run(
            "initdb",
            "-D", str(self.datadir),
            "-U", self.user,
            "--auth=trust",
            "-E", "UTF8",
            "--no-locale",
            "--no-sync",
            timeout=self.start_timeout,
        )  # fmt: skip
        # pg_hba.conf is read top down, first match wins: this line goes before initdb's trust lines.
        # Rewritten in place, so the file keeps the owner and mode initdb gave it.
        hba = self.datadir / "pg_hba.conf"
        rules = hba.read_text()
        hba.write_text(f"host all {self.PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n{rules}")

    def _launch(self) -> None:
        assert self.tmpdir is not None
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmpdir} -c fsync=off"
        self._run(
            "pg_ctl", "start",
            "-D", str(self.datadir),
            "-l", str(self.log_path),
            "-w", "-t", str(int(self.start_timeout)),
            "-o", options,
            timeout=self.start_timeout + 10,
        )  # fmt: skip
        self._wait_accepting()
        if not self._created:
            self._run(
                "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database,
                timeout=self.start_timeout,
            )  # fmt: skip
            self._created = True

    _created = False

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            result = self._run(
                "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                "-d", "postgres", timeout=self.start_timeout, check=False,
            )  # fmt: skip
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise self._fail(f"not accepting connections within {self.start_timeout:.0f} s")
            time.sleep(_POLL)

    def _halt(self) -> None:
        if self.tmpdir is None or not (self.datadir / "postmaster.pid").exists():
            return
        pid = self.pid
        result = self._run(
            "pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT)),
            timeout=STOP_TIMEOUT + 10, check=False,
        )  # fmt: skip
        if pid is not None and not _wait_gone(pid, STOP_TIMEOUT):
            # Only the postmaster we started; its backends die with it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, STOP_TIMEOUT)
        if result.returncode != 0 and pid is not None and _pid_alive(pid):
            raise self._fail(f"pg_ctl stop failed: {result.stdout}{result.stderr}")

    def stop(self) -> None:
        super().stop()
        self._created = False


# --- CouchDB API (pouchdb-server) ---------------------------------------------------------------


def _pouchdb_server_bin() -> str:
    env = os.environ.get("MEMSESSION_POUCHDB_SERVER")
    if env:
        return env
    cache = os.environ.get("MEMSESSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "memsession"
    )
    cached = (
        Path(cache) / f"pouchdb-server-{POUCHDB_SERVER_VERSION}" / "node_modules" / ".bin" / "pouchdb-server"
    )
    if os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which("pouchdb-server")
    if found:
        return found
    raise ServerError(
        f"pouchdb-server not found: not at {cached}, no MEMSESSION_POUCHDB_SERVER, not on PATH "
        "(scripts/bootstrap installs it)"
    )


# Straight to 127.0.0.1, whatever http_proxy says.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_ok(url: str) -> bool:
    try:
        with _direct.open(url, timeout=1) as response:
            response.read()
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class CouchServer(_ChildProcessServer):
    """pouchdb-server (CouchDB HTTP API) in memory. ``url`` is ``http://127.0.0.1:PORT``.

    Data lives in memory: ``restart()`` keeps the port but not the databases.
    """

    name = "couchdb"

    def __init__(self, *, start_timeout: float = START_TIMEOUT) -> None:
        super().__init__(start_timeout=start_timeout)
        self.executable = _pouchdb_server_bin()
        if shutil.which("node") is None:
            raise ServerError("couchdb: node not found on PATH (scripts/bootstrap installs Node.js)")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [self.executable, "--in-memory", "--host", "127.0.0.1", "--port", str(self.port)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # filter=_selector on _changes rejects a promise nobody handles; on
        # Node >= 15 that would kill the server mid-test.
        env["NODE_OPTIONS"] = (env.get("NODE_OPTIONS", "") + " --unhandled-rejections=warn").strip()
        return env

    def _ready(self) -> bool:
        return _http_ok(self.url + "/")


# --- Redis -------------------------------------------------------------------------------------------


class RedisServer(_ChildProcessServer):
    """redis-server without persistence. ``url`` is ``redis://127.0.0.1:PORT/0``."""

    name = "redis"

    def __init__(self, *, start_timeout: float = START_TIMEOUT) -> None:
        super().__init__(start_timeout=start_timeout)
        found = shutil.which("redis-server")
        if found is None:
            raise ServerError("redis: redis-server not found on PATH (scripts/bootstrap installs it)")
        self.executable = found

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        assert self.tmpdir is not None
        return [
            self.executable,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.tmpdir),
            "--daemonize", "no",
        ]  # fmt: skip

    def _ready(self) -> bool:
        assert self.port is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False
