"""Soak: users write and read their sessions for minutes while workers recycle and the sidecar is SIGKILLed.

``python -m bench soak [--quick] [--duration 600] [--mode both|write-behind|acknowledged] [--acknowledged]
[--users 20] [--kill-interval 30] [--think 0.02] [--sample-interval 2]``

In one run, on 127.0.0.1, once per mode (both by default, one after the
other, each on a fresh database):

* a throwaway PostgreSQL (``tests.servers``);
* the web benchmark's Flask app (``bench.web_flask``, memsession on the
  embedded default) under real gunicorn: 4 sync workers, each recycled after
  200 requests (+ up to 50 jitter), ``GunicornHooks(store="postgresql://...")``
  so the master spawns the sidecar (``bench/soak_gunicorn.py``). Mode
  ``write-behind`` is the default (a save returns once the worker has
  published it; the sidecar stores it behind), ``acknowledged`` is
  ``GunicornHooks(acknowledged=True)`` (a save returns once the sidecar has
  stored it);
* the sidecar, found among the master's children, SIGKILLed every
  ``--kill-interval`` seconds (the master's watchdog starts a new one);
* ``--users`` users (threads, own cookie jar, a fresh connection per request)
  alternating ``/write`` (counter + 1) and ``/read`` for ``--duration``
  seconds (``--quick``: 60 s, a kill every 15 s).

Then the users stop, the sidecar is left to come back and drain, and every
user's last acknowledged counter is compared with its PostgreSQL row and with
a read through the app. Printed per mode: requests, failed requests,
replaced sessions, stale reads, lost acknowledged writes, and RSS slopes of
the sidecar, the master and the workers (``bench.soak_report``). The figures
are measured, not judged: known faults show as numbers, not as a failure.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.soak_clients import User
from bench.soak_procs import RssSampler, SidecarKiller, find_sidecar, hub_requests, wait_sidecar, worker_pids
from bench.soak_report import ModeResult, Verdict, render_results
from memsession.errors import BusError
from memsession.hub import query_stats
from tests.servers import PostgresServer, unique_name
from tests.sidecars import Gunicorn, wait_until

__all__ = ["main", "run_mode"]

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "bench" / "soak_gunicorn.py")
APP = "bench.web_flask:app"
WORKERS = 4  # as bench/soak_gunicorn.py sets
MODES = ("write-behind", "acknowledged")
SETTLE_TIMEOUT = 30.0


def fresh_database(pg: PostgresServer) -> str:
    import psycopg

    name = unique_name("soak")
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.url_for(name)


def stored_counters(url: str, sids: list[str]) -> dict[str, int | str]:
    """Each session's counter as its PostgreSQL row holds it, or why there is none."""
    import psycopg

    from persist.base import decode_data

    out: dict[str, int | str] = {sid: "no row" for sid in sids}
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT sid, sess, deleted FROM memsession WHERE sid = ANY(%s)", (sids,)).fetchall()
    for sid, sess, deleted in rows:
        out[sid] = "deleted" if deleted else int(decode_data(sess).get("n", 0))
    return out


def poll(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate`` came true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def drained(server: Gunicorn) -> bool:
    """Whether the sidecar answers and its write-behind queue is empty."""
    pid = find_sidecar(server)
    requests = hub_requests(pid) if pid is not None else None
    if requests is None:
        return False
    try:
        persist: dict[str, Any] = query_stats(requests, timeout=1.0).get("persist", {})
    except BusError:
        return False
    return persist.get("depth", 0) == 0 and persist.get("inflight", 0) == 0


def verdicts(users: list[User], stored: dict[str, int | str], answered: list[int | str]) -> list[Verdict]:
    out = []
    for user, app_value in zip(users, answered):
        sid, acked = user.ledger.sid, user.ledger.acked
        if sid is None:
            continue  # never got a write through: nothing was acknowledged
        out.append(Verdict(acked, stored[sid], app_value))
    return out


def error_lines(log: Path) -> list[str]:
    """The server log's ERROR / CRITICAL lines, and the exception line closing each traceback in it."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return [f"(server log unreadable: {exc})"]
    out = []
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and line and not line.startswith(" "):
            # A chained traceback prints its cause first: each block ends in its own exception line.
            out.append(f"raised {line}")
            in_traceback = False
        elif " ERROR " in line or "[ERROR]" in line or "CRITICAL" in line:
            out.append(line)
    return out


def run_mode(pg: PostgresServer, mode: str, args: argparse.Namespace) -> ModeResult:
    url = fresh_database(pg)
    env = {"BENCH_SESSION": "memsession", "MEMSESSION_STORE": url,
           "BENCH_SOAK_ACKNOWLEDGED": "1" if mode == "acknowledged" else "0"}
    print(f"[{mode}] {args.users} users for {args.duration:.0f} s, sidecar SIGKILLed every "
          f"{args.kill_interval:.0f} s", flush=True)
    server = Gunicorn(CONFIG, APP, env=env, probe="/read")
    with server:
        wait_until(lambda: len(worker_pids(server)) == WORKERS and find_sidecar(server), 60,
                   "every worker and the sidecar")
        stop = threading.Event()
        began = time.monotonic()
        sampler = RssSampler(server, args.sample_interval, began, WORKERS)
        killer = SidecarKiller(server, args.kill_interval, began)
        users = [User(i, server.url, stop, args.think, began) for i in range(args.users)]
        try:
            sampler.start()
            for user in users:
                user.start()
            killer.start()
            stop.wait(args.duration)
        finally:
            stop.set()
            for user in users:
                user.join()
            elapsed = time.monotonic() - began
            killer.stop()
            sampler.stop()
        # The last kill's successor must answer and store what it was sent before rows are compared.
        settled = wait_sidecar(server, SETTLE_TIMEOUT) is not None and poll(lambda: drained(server), SETTLE_TIMEOUT)
        sids = [u.ledger.sid for u in users if u.ledger.sid is not None]
        stored = stored_counters(url, sids)
        answered = [user.final_read() for user in users]
        errors = error_lines(server.log)
    return ModeResult(mode=mode, seconds=elapsed, users=len(users), kill_interval=args.kill_interval,
                      ledgers=[u.ledger for u in users], kills=killer.kills, sampler=sampler,
                      verdicts=verdicts(users, stored, answered), settled=settled, log_errors=errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 s per mode, a kill every 15 s, RSS every 1 s")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load per mode (default 600)")
    parser.add_argument("--mode", choices=("both", *MODES), default="both", help="which modes (default both)")
    parser.add_argument("--acknowledged", dest="mode", action="store_const", const="acknowledged",
                        help="only the acknowledged mode (same as --mode acknowledged)")
    parser.add_argument("--users", type=int, default=20, help="concurrent users (default 20)")
    parser.add_argument("--kill-interval", type=float, default=None, help="seconds between sidecar kills (default 30)")
    parser.add_argument("--think", type=float, default=0.02,
                        help="seconds each user waits between requests (default 0.02)")
    parser.add_argument("--sample-interval", type=float, default=None, help="seconds between RSS samples (default 2)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (60.0 if args.quick else 600.0)
    args.kill_interval = args.kill_interval or (15.0 if args.quick else 30.0)
    args.sample_interval = args.sample_interval or (1.0 if args.quick else 2.0)
    modes = MODES if args.mode == "both" else (args.mode,)
    with PostgresServer() as pg:
        results = [run_mode(pg, mode, args) for mode in modes]
    print()
    print(render_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
