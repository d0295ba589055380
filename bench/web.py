"""End-to-end web benchmark: the same tiny app under gunicorn (2 workers), several session backends.

``python -m bench.web [--duration 2] [--rounds 5] [--connections 16] [--chart bench/web.png] [--quick]``

Flask with memsession (the embedded default: gunicorn hooks run a sidecar with
a JSON file store, each worker's cache joins it),
Flask's signed-cookie sessions, Flask-Session on Redis (a redis-server this
benchmark starts) and no session at all; Django with memsession and with
Django's ``cached_db`` (local-memory cache over SQLite). Each app serves a
session-read route and a session-write route; wrk drives each one for a
fixed time from 127.0.0.1 with a logged-in cookie, in interleaved rounds.
Prints req/s (best and median round), p50/p99 latency and the CPU time a
request cost across every process that serves it (gunicorn master and workers,
the sidecar, redis-server; not wrk: ``bench.web_cpu``), split by role; the
ratios the targets are stated in are taken within each round (variants
measured seconds apart, under the same outside load) and their median is
judged, and draws a PNG chart. Progress goes to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.table import render, verdict
from bench.web_cpu import ROLES, CpuMeter, machine_sample, outside_share
from tests.servers import RedisServer
from tests.webservers import WebServer

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2

FLOOR = "unreplicated (floor)"
#: (label, framework, BENCH_SESSION, gunicorn target)
VARIANTS = [
    ("memsession", "flask", "memsession", "bench.web_flask:app"),
    # Not a deployment: what a memsession request costs without replication (bench.web_flask).
    (FLOOR, "flask", "unreplicated", "bench.web_flask:app"),
    ("flask cookie", "flask", "cookie", "bench.web_flask:app"),
    ("flask-session redis", "flask", "redis", "bench.web_flask:app"),
    ("no session", "flask", "none", "bench.web_flask:app"),
    ("django memsession", "django", "memsession", "bench.web_django:application"),
    ("django cached_db", "django", "cached_db", "bench.web_django:application"),
]
ROUTES = ("read", "write")


@dataclass
class Result:
    """One wrk run of one variant's route in one round."""

    label: str
    route: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    #: CPU microseconds per request of each role (``bench.web_cpu.ROLES``) and their ``"total"``.
    cpu: dict[str, float]
    round: int = 1
    #: Share of the machine's CPU that other work (not this run) used meanwhile.
    outside: float = float("nan")

    @property
    def cpu_us(self) -> float:
        """CPU microseconds per request, summed over the processes serving it."""
        return self.cpu["total"]


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run measured."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    #: non-2xx/3xx responses plus socket errors
    errors: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def progress(message: str) -> None:
    print(f"[web] {message}", file=sys.stderr, flush=True)


def parse_wrk(out: str) -> WrkRun:
    """The figures of wrk's ``--latency`` report."""
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return WrkRun(requests, rps, p50, p99, errors)


def run_wrk(url: str, cookie: str | None, duration: float, connections: int) -> WrkRun:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s", url]
    if cookie:
        argv[1:1] = ["-H", f"Cookie: {cookie}"]
    return parse_wrk(subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=True).stdout)


def logged_in_cookie(base: str, kind: str) -> str | None:
    """One write, to get the session cookie every request then carries (the floor's: its own)."""
    with httpx.Client(base_url=base, timeout=10, trust_env=False) as client:
        if kind == "unreplicated":
            response = client.get("/floor-cookie")
            response.raise_for_status()
            return f"session={response.text}"
        response = client.get("/write")
        response.raise_for_status()
        jar = [f"{name}={value}" for name, value in client.cookies.items()]
    return "; ".join(jar) or None


def bench_all(env: dict[str, str], tmp: str, duration: float, connections: int, rounds: int,
              redis_pid: int) -> list[Result]:
    """Every variant's server up at once; every round runs each route of each variant once.

    The machine is shared: interleaving spreads other load over all variants
    alike, and every other round runs them in the reverse order, so a variant
    is not always measured just after the same neighbour. Returns every run.
    """
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        servers = []
        for number, (label, framework, kind, target) in enumerate(VARIANTS, 1):
            progress(f"starting {label} ({framework}, gunicorn, {WORKERS} workers) [{number}/{len(VARIANTS)}]")
            server_env = {**env, "BENCH_SESSION": kind}
            config = None
            if kind == "memsession":
                # The embedded default, a sidecar per app (so one app's writes
                # never reach the other's workers), its store in a temp dir.
                server_env["MEMSESSION_STORE"] = os.path.join(tmp, f"{framework}-sessions.json")
                config = str(ROOT / "bench" / "web_gunicorn.py")
            elif kind == "unreplicated":
                # The app, and the session it makes, exist before the fork: both workers hold it.
                server_env["GUNICORN_CMD_ARGS"] = "--preload"
            server = WebServer("gunicorn", target, workers=WORKERS, env=server_env, probe="/read", config=config)
            stack.enter_context(server)
            cookie = logged_in_cookie(server.url, kind)
            # A short warm-up so every worker has imported, joined and served once.
            run_wrk(server.url + "/read", cookie, 1, connections)
            assert server.proc is not None
            # The gunicorn master's tree holds its workers and the sidecar its hooks spawned.
            meter = CpuMeter(server.proc.pid, redis_pid if kind == "redis" else None)
            for route in ROUTES:
                servers.append((label, route, server, cookie, meter))
        for round_ in range(1, rounds + 1):
            progress(f"round {round_}/{rounds}: {len(servers)} runs of {duration:g} s")
            for label, route, server, cookie, meter in servers if round_ % 2 else servers[::-1]:
                machine, before = machine_sample(), meter.sample()
                run = run_wrk(f"{server.url}/{route}", cookie, duration, connections)
                after = meter.sample()
                outside = outside_share(machine, machine_sample(), sum(after.values()) - sum(before.values()))
                cpu = meter.us_per(before, after, run.requests)
                progress(f"round {round_}  {label:20s} {route:5s} {run.rps:8.0f} req/s  "
                         f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  {cpu['total']:5.0f} us CPU/req"
                         f"  other work {outside:4.0%}" + (f"  ERRORS {run.errors}" if run.errors else ""))
                results.append(Result(label, route, run.rps, run.p50_ms, run.p99_ms, run.errors, cpu, round_,
                                      outside))
    return results


def migrate(env: dict[str, str]) -> None:
    code = "import bench.web_django; from django.core.management import call_command; call_command('migrate', verbosity=0)"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env, "PYTHONPATH": str(ROOT),
                   "BENCH_SESSION": "cached_db"}, check=True, timeout=120, cwd=ROOT)


#: The issue's targets: (name, numerator variant, denominator variant, route, at least); None: shown only.
CHECKS: list[tuple[str, str, str, str, float | None]] = [
    ("read: memsession / no session", "memsession", "no session", "read", 0.95),
    ("read: memsession / flask-session redis", "memsession", "flask-session redis", "read", 1.7),
    ("write: memsession / flask-session redis", "memsession", "flask-session redis", "write", 1.3),
    ("write: memsession / flask cookie", "memsession", "flask cookie", "write", 0.85),
    ("read: django memsession / cached_db", "django memsession", "django cached_db", "read", 1.0),
    ("read: memsession / flask cookie", "memsession", "flask cookie", "read", None),
    ("write: memsession / no session", "memsession", "no session", "write", None),
    ("write floor: unreplicated / flask cookie", FLOOR, "flask cookie", "write", None),
    ("write floor: unreplicated / flask-session redis", FLOOR, "flask-session redis", "write", None),
    ("write: memsession / unreplicated floor", "memsession", FLOOR, "write", None),
    ("write: django memsession / cached_db", "django memsession", "django cached_db", "write", None),
]


def best_runs(results: list[Result]) -> list[Result]:
    """The fastest round of each variant's route, in ``VARIANTS`` order."""
    best: dict[tuple[str, str], Result] = {}
    for r in results:
        key = (r.label, r.route)
        if key not in best or r.rps > best[key].rps:
            best[key] = r
    return [best[(label, route)] for label, *_ in VARIANTS for route in ROUTES if (label, route) in best]


def _median(values: list[float]) -> float:
    """The median of the finite values (a run that served nothing has NaN CPU per request)."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


def round_ratios(results: list[Result], numerator: str, denominator: str, route: str) -> list[tuple[float, float]]:
    """``(req/s ratio, CPU/req ratio)`` of two variants' route within each round both served in.

    A run that completed no request (a server stalled for the whole run: wrk
    counts a request only once answered) leaves its round out.
    """
    by_round: dict[int, dict[str, Result]] = {}
    for r in results:
        if r.route == route and r.label in (numerator, denominator) and r.rps > 0:
            by_round.setdefault(r.round, {})[r.label] = r
    return [(pair[numerator].rps / pair[denominator].rps, pair[numerator].cpu_us / pair[denominator].cpu_us)
            for _, pair in sorted(by_round.items()) if len(pair) == 2]


def draw(results: list[Result], path: Path) -> None:
    """Two panels: best req/s (higher is better) and median CPU per request across the serving processes (lower)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_runs(results)
    labels = [v[0] for v in VARIANTS if any(r.label == v[0] for r in best)]

    def rate(label: str, route: str) -> float:
        return next((r.rps for r in best if r.label == label and r.route == route), 0.0)

    def cpu(label: str, route: str) -> float:
        return _median([r.cpu_us for r in results if r.label == label and r.route == route])

    fig, (rate_ax, cpu_ax) = plt.subplots(1, 2, figsize=(14, 4.8))
    width = 0.38
    panels = [(rate_ax, rate, "requests/s, best round (higher is better)"),
              (cpu_ax, cpu, "CPU us per request, all serving processes, median (lower is better)")]
    for ax, value, ylabel in panels:
        for i, route in enumerate(ROUTES):
            xs = [x + (i - 0.5) * width for x in range(len(labels))]
            bars = ax.bar(xs, [value(label, route) for label in labels], width, label=f"session {route}")
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.margins(y=0.15)  # room above the tallest bar for its label and the legend
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Same app under gunicorn, {WORKERS} sync workers, wrk on 127.0.0.1")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results: list[Result]) -> str:
    rounds = len({r.round for r in results})
    rows = []
    for best in best_runs(results):
        runs = [r for r in results if r.label == best.label and r.route == best.route]
        rows.append([best.label, best.route, best.rps, _median([r.rps for r in runs]), best.p50_ms, best.p99_ms,
                     _median([r.cpu_us for r in runs]), sum(r.errors for r in runs)])
    table = render(f"web benchmark ({rounds} interleaved rounds; p50/p99 of the best round)",
                   ["backend", "route", "req/s best", "req/s median", "p50 ms", "p99 ms", "CPU us/req median",
                    "errors"], rows)
    ratio_rows = []
    for name, numerator, denominator, route, target in CHECKS:
        pairs = round_ratios(results, numerator, denominator, route)
        rate = _median([p[0] for p in pairs])
        spread = f"{min(p[0] for p in pairs):.2f}-{max(p[0] for p in pairs):.2f}" if pairs else ""
        ratio_rows.append([name, rate, spread, "" if target is None else f">= {target}",
                           "" if target is None else verdict(rate >= target), _median([p[1] for p in pairs])])
    ratios = render("ratios within each round (same run): median, and the rounds' range",
                    ["req/s ratio", "median", "range", "target", "", "CPU/req ratio median"], ratio_rows)
    # Only the roles some variant used: a column of zeros says nothing.
    used = [role for role in ROLES if any(r.cpu[role] >= 0.5 for r in results)]
    split_rows = []
    for best in best_runs(results):
        runs = [r for r in results if r.label == best.label and r.route == best.route]
        split_rows.append([best.label, best.route, *(_median([r.cpu[role] for r in runs]) for role in used),
                           _median([r.cpu_us for r in runs])])
    split = render("CPU us per request by role (median over rounds)", ["backend", "route", *used, "total"],
                   split_rows)
    return table + "\n\n" + ratios + "\n\n" + split


#: Above this median share of the CPU taken by other work, the report says the machine was busy.
BUSY = 0.15


def busy_note(results: list[Result]) -> str:
    """How much of the machine other work used during the runs, and a warning when it was a lot."""
    shares = [r.outside for r in results if math.isfinite(r.outside)]
    if not shares:
        return "other work on the machine: not measured"
    median = statistics.median(shares)
    line = f"other work on the machine used {median:.0%} of its CPU (median over runs, up to {max(shares):.0%})"
    if median > BUSY:
        line += ("\nNOTE: the machine was busy: rates and their ratios swing with the other work far more"
                 " than the targets' margins; the CPU per request is steadier, and a quiet machine is the test")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of load per route and round (default 2)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds; ratios are the median of the rounds' (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--chart", type=Path, default=ROOT / "bench" / "web.png", help="PNG output")
    parser.add_argument("--quick", action="store_true", help="one round of 1 s per route")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: scripts/bench installs it (scripts/bootstrap --bench; Debian: apt-get install wrk)",
              file=sys.stderr)
        return 2
    duration = 1.0 if args.quick else args.duration
    results: list[Result] = []
    tmp = tempfile.mkdtemp(prefix="ms-bench-web-")
    try:
        progress("starting redis-server and migrating the Django database")
        with RedisServer() as redis_server:
            assert redis_server.pid is not None
            env = {"BENCH_REDIS_URL": redis_server.url, "BENCH_DB": os.path.join(tmp, "db.sqlite3")}
            migrate(env)
            results = bench_all(env, tmp, duration, args.connections, 1 if args.quick else args.rounds,
                                redis_server.pid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(busy_note(results))
    print(report(results))
    draw(results, args.chart)
    print(f"\nchart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
