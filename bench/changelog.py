"""The change log's cost: ``PostgresStore.save`` ingest with ``change_log`` off and on.

``python -m bench.changelog [--records 40000] [--rounds 5] [--quick] [--postgres-url URL]``

Without a URL it starts a throwaway PostgreSQL (the test harness's
``tests.servers``, fsync off) and stops it at the end. Each subject saves
``records`` new sessions (the rows ``bench.sidecar.records`` makes) in batches
of 2,000 (the write-behind batch, taking the COPY path) and of 100 (the
upsert path) into a table made afresh, then the same keys again (every row an
update). The log adds one row per save (the keys' digests, versions, origins and
tombstone flags), one counter update and one NOTIFY per batch. Target: with
the log, at least 0.85 of the rows/s without.

Two measures, the best of ``rounds`` interleaved runs each: rows/s (wall
time), and CPU per row, the bench process's plus every process of the
server's (read from ``/proc``; only for a server started here). A save runs
its client and server parts one after the other, so on a machine that other
work keeps busy the CPU ratio is the steadier estimate of the rows/s one.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from .sidecar import records
from .table import render, verdict

#: The least share of the rows/s without the log that the store keeps with it.
TARGET = 0.85
_TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds used so far by the server's processes (the postmaster and its children); 0 if unknown."""
    if postmaster is None:
        return 0.0
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(name) == postmaster or int(fields[1]) == postmaster:
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def _run(url: str, postmaster: int | None, rows: Sequence[Any], batch: int,
         change_log: bool) -> list[tuple[float, float]]:
    """Per wave (insert, update): rows/s and CPU microseconds per row."""
    import psycopg

    from persist.postgres import PostgresStore

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_log, bench_log_changes, bench_log_changes_hosts, "
                     "bench_log_changes_pruned")
    logged: dict[str, Any] = {"change_log": True, "host": "bench"} if change_log else {}
    store = PostgresStore(url, table="bench_log", create_table=True, **logged)
    try:
        out = []
        for wave in (rows, [replace(r, version=r.version + 1) for r in rows]):
            gc.collect()
            cpu0, server0, t0 = time.process_time(), server_cpu(postmaster), time.perf_counter()
            for start in range(0, len(wave), batch):
                store.save(wave[start:start + batch])
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - cpu0 + server_cpu(postmaster) - server0
            out.append((len(wave) / seconds, cpu / len(wave) * 1e6))
    finally:
        store.close()
    return out


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[tuple[str | None, int | None]]:
    if url is not None:
        yield url, None
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.servers import PostgresServer, ServerError

    try:
        server = PostgresServer("bench").start()
    except ServerError as exc:
        print(f"PostgreSQL unavailable, skipped: {exc}", file=sys.stderr)
        yield None, None
        return
    try:
        yield server.url, server.pid
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.changelog", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40_000, help="sessions saved per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per subject; the best counts")
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.rounds = 4000, 1
    status = 0
    with _server(args.postgres_url) as (url, postmaster):
        if url is None:
            return 0
        rows = records(args.records)
        table = []
        for batch in (2000, 100):
            rate: dict[tuple[bool, int], float] = {}
            cpu: dict[tuple[bool, int], float] = {}
            for _ in range(args.rounds):
                for change_log in (False, True):  # interleaved: drift in the machine's speed hits both
                    waves = _run(url, postmaster, rows, batch, change_log)
                    for wave, (got_rate, got_cpu) in enumerate(waves):
                        key = (change_log, wave)
                        rate[key] = max(rate.get(key, 0.0), got_rate)
                        cpu[key] = min(cpu.get(key, float("inf")), got_cpu)
            for wave, label in ((0, "insert"), (1, "update")):
                ratio = rate[True, wave] / rate[False, wave]
                cpu_ratio = cpu[False, wave] / cpu[True, wave] if postmaster is not None else float("nan")
                ok = ratio >= TARGET
                status |= int(not ok)
                table.append([f"{batch}-row batches, {label}", rate[False, wave], rate[True, wave],
                              f"{ratio:.2f}", verdict(ok), cpu[False, wave], cpu[True, wave],
                              f"{cpu_ratio:.2f}"])
        title = (f"PostgresStore.save, change log off vs on ({args.records} sessions,"
                 f" best of {args.rounds}; target on/off rows/s >= {TARGET})")
        header = ["subject", "off rows/s", "on rows/s", "on/off", "target", "off cpu us/row", "on cpu us/row",
                  "off/on cpu"]
        print(render(title, header, table))
    return status


if __name__ == "__main__":
    sys.exit(main())
