"""Hub options, and where the hub's sockets live when no endpoint is given.

``HubConfig`` is the frozen set of hub options, checked at construction. With
no endpoints it means three ipc sockets in a private runtime directory
(``default_runtime_dir``), created mode 0700 and refused if it is a symlink,
another user owns it, others can reach it or its parent lets others replace
it; given ipc endpoints get the same check of their directory
(``runtime_dir``, which also says how sockets stay inside what was checked).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from .. import wire
from ..bus.sequence import DEFAULT_JUMP_HOLD, DEFAULT_MAX_JUMP
from ..errors import BusError, ConfigError
from ..validate import check_int, check_number
from .runtime_dir import ensure_private_dir, ipc_path

__all__ = ["DEFAULT_MAXSIZE", "MAX_IPC_PATH", "HubConfig", "default_runtime_dir", "ensure_private_dir", "ipc_endpoints"]

#: ipc socket paths longer than this are refused by the OS.
MAX_IPC_PATH = 107
#: ``HubConfig.maxsize``'s default: ten times a worker's default ``maxsize``, as the hub holds the
#: union of what the workers hold.
DEFAULT_MAXSIZE = 1_000_000


def default_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/memsession`` if set, else ``<tmp>/memsession-<uid>``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "memsession")
    return os.path.join(tempfile.gettempdir(), f"memsession-{os.getuid()}")


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
    #: Publishers not heard for this long (seconds) are forgotten: what they wrote stays merged, their
    #: stream bookkeeping goes, so state and snapshots follow the live processes, not every one that lived.
    forget_after: float = 60.0
    #: How far a publisher's message or heartbeat may run ahead of the last number the hub saw from its
    #: stream and still count as a gap (see ``BusConfig.max_seq_jump``): past it the frame is kept out,
    #: counted (``dropped["seq jump"]``) and the publisher asked to resync.
    max_seq_jump: int = DEFAULT_MAX_JUMP
    #: Seconds a jump past ``max_seq_jump`` must stand before the hub believes it; must exceed the
    #: workers' heartbeat.
    seq_jump_hold: float = DEFAULT_JUMP_HOLD
    #: Most live sessions the hub's replica holds; past it the least recently used (read or
    #: written) is evicted. Tombstones and the clear watermark are not counted (see ``HubState``).
    #: A sidecar reads an evicted session back from its store when it is next asked for; a plain
    #: hub forgets it (processes that hold it keep it, and a worker with a store reads it there).
    maxsize: int = DEFAULT_MAXSIZE
    #: Seconds a record's version, created or accessed may be ahead of the hub's clock (``admission``).
    max_skew: float = 60.0
    #: Seconds between two reads of the proxy's capture feed into the replica (``runner``). The
    #: replica is on no message's way to the workers and is brought up to date before every request
    #: is answered, so a busy hub merges changes in batches instead of waking for each one.
    merge_interval: float = 0.005

    def __post_init__(self) -> None:
        check_number("heartbeat", self.heartbeat)
        check_number("seq_jump_hold", self.seq_jump_hold)
        check_number("max_skew", self.max_skew)
        check_number("forget_after", self.forget_after)
        check_number("merge_interval", self.merge_interval, allow_zero=True)
        if self.forget_after <= 3 * self.heartbeat:
            raise ConfigError("forget_after", self.forget_after, "must exceed three heartbeats")
        for name in ("sndhwm", "capture_hwm", "max_seq_jump", "maxsize"):
            check_int(name, getattr(self, name))
        given = (self.publish, self.subscribe, self.requests)
        if any(given) and not all(given):
            raise ConfigError("publish", given, "give all three endpoints or none")
        for name, endpoint in zip(("publish", "subscribe", "requests"), given):
            if endpoint and not endpoint.startswith(("ipc://", "tcp://", "inproc://")):
                raise ConfigError(name, endpoint, "must be an ipc://, tcp:// or inproc:// endpoint")

    def endpoints(self) -> tuple[str, str, str]:
        """``(publish, subscribe, requests)``; creates (or checks) the private directory of ipc ones.

        Paths, as given or made from ``runtime_dir``: what sockets are given
        is ``runtime_dir.socket_address`` of these.
        """
        if self.publish:
            for endpoint in (self.publish, self.subscribe, self.requests):
                path = ipc_path(endpoint)
                if path is not None:
                    ensure_private_dir(os.path.dirname(path) or ".")
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

