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

``config`` holds ``HubConfig`` and the runtime dir of the default ipc
endpoints; ``runtime_dir`` checks that directory (and any ipc endpoint's)
and keeps every socket inside the directory it checked; ``state`` the
protocol; ``runner`` the sockets and loops;
``client`` the queries a process sends to a running hub. The names callers
use are re-exported here, so they import from ``memsession.hub``.
"""

from __future__ import annotations

from .client import query_snapshot, query_stats, wait_ready
from .config import HubConfig, default_runtime_dir
from .runner import Hub, run_hub
from .state import HubState

# Not in ``__all__``, but importable from here: the replica's merge rule, tested on its own.
from .state import merge_into as merge_into

__all__ = ["Hub", "HubConfig", "HubState", "default_runtime_dir", "query_snapshot", "query_stats", "run_hub",
           "wait_ready"]
