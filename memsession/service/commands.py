"""The ``memsession sidecar`` and ``memsession status`` subcommands (registered by ``memsession.service.cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from typing import Any

from ..errors import ConfigError

__all__ = ["COMMANDS", "endpoint_arguments", "format_status", "log_level_argument", "maxsize_argument"]


def endpoint_arguments(p: argparse.ArgumentParser, *, serving: bool = True) -> None:
    """The hub's endpoints and keys, as a command that serves a hub takes them.

    ``serving=False``: what a command that only asks a running hub uses (its
    runtime dir, or its requests endpoint, and keys).
    """
    p.add_argument("--runtime-dir", default="", help="directory of the ipc sockets (0700; default "
                   "$XDG_RUNTIME_DIR/memsession or /tmp/memsession-UID)")
    if serving:
        p.add_argument("--publish", default="", help="endpoint publishers connect to (XSUB), e.g. tcp://0.0.0.0:5561")
        p.add_argument("--subscribe", default="", help="endpoint subscribers connect to (XPUB)")
        p.add_argument("--requests", default="", help="endpoint for snapshots, reads and stats (ROUTER)")
    else:
        p.add_argument("--requests", default="", help="the hub's requests endpoint (ROUTER), e.g. "
                       "tcp://10.0.0.5:5563, instead of --runtime-dir")
    p.add_argument("--keys", default=None, help="CURVE keys directory (required for tcp)")
    p.add_argument("--insecure", action="store_true", help="allow tcp without CURVE (logs a warning)")


def log_level_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")


def maxsize_argument(p: argparse.ArgumentParser) -> None:
    """``--maxsize``: the bound on the hub's replica (``HubConfig.maxsize``)."""
    from ..hub.config import DEFAULT_MAXSIZE

    p.add_argument("--maxsize", type=int, default=DEFAULT_MAXSIZE,
                   help="most live sessions the hub holds; past it the least recently used is evicted "
                        "(a sidecar reads it back from the store when asked for)")


def _sidecar_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="file:///path/sessions.json, postgresql://..., couchdb://...")
    endpoint_arguments(p)
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between hub heartbeats")
    p.add_argument("--forget-after", type=float, default=60.0,
                   help="seconds after which a silent publisher's stream bookkeeping is dropped")
    maxsize_argument(p)
    p.add_argument("--flush-interval", type=float, default=0.1,
                   help="longest a change waits before it is written (the write-behind loss window)")
    p.add_argument("--batch-size", type=int, default=2000, help="records per store write")
    p.add_argument("--queue-limit", type=int, default=1_000_000,
                   help="most keys waiting for the store while it is down")
    p.add_argument("--prune-interval", type=float, default=60.0,
                   help="seconds between purges of expired sessions from the store (0: never)")
    p.add_argument("--retry-min", type=float, default=0.1, help="first pause between retries while the store fails")
    p.add_argument("--retry-max", type=float, default=2.0, help="longest pause between retries (doubling)")
    p.add_argument("--close-timeout", type=float, default=10.0,
                   help="on SIGTERM, keep retrying queued writes this long")
    p.add_argument("--save-interval", type=float, default=1.0,
                   help="file store only: seconds between snapshots of the JSON file")
    p.add_argument("--table", default=None, help="PostgreSQL: table name (default: memsession)")
    p.add_argument("--schema", default=None, help="PostgreSQL: schema name (default: the search path)")
    p.add_argument("--no-create-table", action="store_true", help="PostgreSQL: don't create the table if missing")
    p.add_argument("--host-name", default=None, metavar="NAME",
                   help="PostgreSQL or CouchDB: join the other hosts' sidecars through the store under this "
                        "host name (PostgreSQL: log every write, follow the others' log; CouchDB: follow "
                        "_changes; see 'Several hosts')")
    p.add_argument("--log-retention", type=float, default=None,
                   help="PostgreSQL with --host-name: seconds change log rows are kept (default 3600)")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="serve /health (JSON), /metrics (Prometheus) and a status page (/) here, "
                        "e.g. 127.0.0.1:9108")
    p.add_argument("--http-timeout", type=float, default=10.0,
                   help="seconds an HTTP connection has, in all, to send its request and take the answer")
    p.add_argument("--http-max-connections", type=int, default=32,
                   help="HTTP connections served at once; more are answered 503 and closed")
    p.add_argument("--ack", default="", metavar="ENDPOINT",
                   help="acknowledged-writes endpoint (default: ack.sock next to ipc sockets; none for tcp)")
    p.add_argument("--no-ack", action="store_true", help="don't serve acknowledged writes")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit (after flushing) when this process is no longer the parent")
    p.add_argument("--remove-runtime-dir", action="store_true",
                   help="with --parent-pid: remove --runtime-dir when exiting because the parent is gone")
    p.add_argument("--ready-file", default=None, help="write this file once the sidecar serves requests")
    log_level_argument(p)


def _hub_config(args: argparse.Namespace, **extra: Any) -> Any:
    from ..hub import HubConfig

    return HubConfig(
        publish=args.publish, subscribe=args.subscribe, requests=args.requests,
        runtime_dir=args.runtime_dir, keys=args.keys, insecure=args.insecure, **extra,
    )


def store_options(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    if kind == "file":
        return {"save_interval": args.save_interval or None}
    if kind == "postgres":
        out: dict[str, Any] = {"create_table": not args.no_create_table}
        if args.table:
            out["table"] = args.table
        if args.schema:
            out["schema"] = args.schema
        if getattr(args, "host_name", None):
            out.update(change_log=True, host=args.host_name)
            if args.log_retention is not None:
                out["log_retention"] = args.log_retention
        return out
    return {}


def _sidecar(args: argparse.Namespace) -> int:
    from persist.url import check_store, open_store, redact, store_kind

    from .sidecar import Sidecar, SidecarConfig

    check_store(args.store)  # a store it can't keep is said before anything (the runtime dir) is made
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log = logging.getLogger("memsession.sidecar")
    config = SidecarConfig(
        flush_interval=args.flush_interval, batch_size=args.batch_size, queue_limit=args.queue_limit,
        retry_min=args.retry_min, retry_max=args.retry_max,
        prune_interval=args.prune_interval or None, close_timeout=args.close_timeout,
        http=args.http, http_timeout=args.http_timeout, http_max_connections=args.http_max_connections,
        parent_pid=args.parent_pid,
        remove_runtime_dir=args.remove_runtime_dir, ack=None if args.no_ack else args.ack,
    )
    hub = _hub_config(args, heartbeat=args.heartbeat, forget_after=args.forget_after, maxsize=args.maxsize)
    pub, sub, req = hub.endpoints()  # a bad endpoint or runtime dir fails here, before the store opens
    kind = store_kind(args.store)
    if args.host_name and kind not in ("postgres", "couchdb"):
        raise ConfigError("--host-name", args.host_name,
                          "joins hosts through a PostgreSQL or CouchDB store only")
    if args.log_retention is not None and kind != "postgres":
        raise ConfigError("--log-retention", args.log_retention,
                          "is how long PostgreSQL keeps its change log; other stores keep none of ours")
    store = open_store(args.store, **store_options(kind, args))
    sidecar = Sidecar(store, hub, config, federation=_federation(store, kind, args))
    stop = threading.Event()
    sidecar.install_signal_handlers(stop)
    ready = threading.Event()
    log.info("store=%s publish=%s subscribe=%s requests=%s", redact(args.store), pub, sub, req)
    if args.ready_file:
        def announce() -> None:
            while not ready.wait(0.1):
                if stop.is_set():
                    return
            with open(args.ready_file, "w") as f:
                f.write(json.dumps({"requests": req, "http": sidecar.http_address}))

        threading.Thread(target=announce, daemon=True).start()
    sidecar.run(stop, ready)
    return 0


def _federation(store: Any, kind: str, args: argparse.Namespace) -> Any:
    """The other hosts' change feed for ``--host-name`` (None without it), at the sidecar's heartbeat.

    PostgreSQL's log is polled every heartbeat; CouchDB's ``_changes`` beats at it.
    """
    if not args.host_name:
        return None
    import os

    from ..config import Config
    from .federation import POSITIONS_FILE, Federation, load_positions

    # Kept beside the sockets: a sidecar restarted in the same runtime dir resumes where it stood.
    path = os.path.join(args.runtime_dir, POSITIONS_FILE) if args.runtime_dir else None
    positions, ok = load_positions(path) if path else (None, True)
    feed: Any
    if kind == "couchdb":
        from persist.couchdb import CouchChangeFeed

        feed = CouchChangeFeed(store, positions=positions, heartbeat=args.heartbeat)
    else:
        from persist.postgres import PostgresChangeFeed

        if positions is not None and any(type(seq) is not int for seq in positions.values()):
            # Kept by another store's feed (a CouchDB cursor): where this log stood is unknown.
            positions, ok = None, False
        feed = PostgresChangeFeed(store, poll_interval=args.heartbeat, positions=positions)
    return Federation(feed, tombstone_ttl=Config().tombstone_ttl, positions_file=path, resumed=ok)


def _status_arguments(p: argparse.ArgumentParser) -> None:
    endpoint_arguments(p, serving=False)
    p.add_argument("--json", action="store_true", help="print the raw counters as JSON")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer")


def _age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "never"
    return f"{seconds:.1f}s ago"


def _ms(value: Any) -> str:
    return f"{value:.3f} ms" if isinstance(value, (int, float)) else "-"


def _n(count: Any, noun: str, plural: str = "") -> str:
    """``count`` and ``noun``, plural unless it is one: "1 tombstone", "2 tombstones", "0 batches"."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def format_status(stats: dict[str, Any], requests: str) -> str:
    """A hub's or sidecar's counters as a short human-readable report (numbers as the JSON has them)."""
    role = stats.get("role", "hub")
    get = stats.get
    lines = [
        f"{role} at {requests}",
        f"  epoch        {get('epoch', 0)}   up {get('uptime', 0):.0f}s",
        f"  peers seen   {_n(get('streams', 0), 'publisher stream')}",
        f"  sessions     {get('sessions', 0)} live, {_n(get('tombstones', 0), 'tombstone')}",
        (f"  bound        maxsize {get('maxsize', '?')}, {get('evicted', 0)} evicted, "
         f"{get('read_backs', 0)} read back from the store"),
        (f"  bus          {get('received', 0)} received, {get('applied', 0)} applied, "
         f"{_n(get('gaps', 0), 'gap')}, lag p50 {_ms(get('lag_ms_p50'))} / p99 {_ms(get('lag_ms_p99'))}"),
    ]
    persist_stats = get("persist")
    store_refused = persist_stats.get("store_refused", 0) if isinstance(persist_stats, dict) else 0
    if get("refused") or store_refused:
        # Records the record rule kept out (memsession.admission): each was skipped, the others went on.
        lines.append(f"  refused      {_n(get('refused', 0), 'record')} from the bus or workers, "
                     f"{_n(store_refused, 'stored record')}")
    if get("cleared"):
        lines.append(f"  cleared      every session at or below version {stats['cleared']}")
    dropped = get("dropped") or {}
    if dropped:
        lines.append("  dropped      " + ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())))
    persist = get("persist")
    if isinstance(persist, dict):
        state = "FAILING" if persist.get("failing") else "ok"
        lines += [
            f"  store        {get('store', '?')}: {state}",
            (f"  queue        {_n(persist.get('depth', 0), 'key')} waiting (limit {persist.get('limit', 0)}), "
             f"oldest unwritten change {persist.get('unwritten_age_s', 0):.2f}s old"),
            (f"  last flush   {_age(persist.get('last_flush_age_s'))}; {_n(persist.get('saved', 0), 'record')} in "
             f"{_n(persist.get('batches', 0), 'batch', 'batches')}, {persist.get('coalesced', 0)} coalesced"),
            (f"  errors       {persist.get('write_errors', 0)} write, {persist.get('purge_errors', 0)} purge, "
             f"{persist.get('rejected', 0)} rejected, {_n(persist.get('overflows', 0), 'overflow')}, "
             f"{persist.get('lost', 0)} lost"),
        ]
        clears, due = persist.get("clears", 0), persist.get("clear_due", 0)
        if clears or due:
            # An owed clear means the store may still hand back sessions a clear ended.
            owed = f"; one owed, watermark {due}" if due else ""
            lines.append(f"  clears       {_n(clears, 'clear')} applied to the store{owed}")
        if persist.get("last_error"):
            lines.append(f"  last error   {persist['last_error']}")
        lines.append(f"  pruned       {_n(persist.get('purged', 0), 'expired session')} from the store")
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    from ..errors import BusError
    from ..hub import HubConfig, query_stats

    try:
        # Only the ROUTER is asked: --requests alone is enough (tcp, another host).
        requests = args.requests or HubConfig(runtime_dir=args.runtime_dir).query_endpoint()
        stats = query_stats(requests, keys=args.keys, insecure=args.insecure, timeout=args.timeout)
    except BusError as exc:
        print(f"memsession status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(format_status(stats, requests))
    persist = stats.get("persist")
    return 3 if isinstance(persist, dict) and persist.get("failing") else 0


COMMANDS = [
    ("sidecar", "run a sidecar: a hub that loads, writes behind and prunes a session store",
     _sidecar_arguments, _sidecar),
    ("status", "print a running hub's or sidecar's state (epoch, peers, sessions, queue, errors)",
     _status_arguments, _status),
]
