"""``python -m bench [NAME ...] [--quick] [OPTION ...]``: run the named benchmarks.

Without names: every suite except the long-running ones (``soak``), which run only when named.
Options the runner does not know (``--help`` included) go to the benchmark, when exactly one
is named (``python -m bench soak --duration 120 --acknowledged``).

What the suites print is also written to ``bench/results/<UTC date-time>-<suites>.txt``
(headed by the date, CPU, Python and commit); a full run also updates
``bench/results/latest.md`` (``bench.results_file``). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

from bench.results_file import RESULTS, ResultsLog, load_average, this_machine

SUITES = ["core", "eviction", "wire", "replication", "persistence", "sidecar", "web"]
#: Run only when named: minutes of load, not a comparison.
LONG_RUNNING = ["soak"]


def _run_suite(module: ModuleType, name: str, options: list[str]) -> int:
    print(f"\n=== {name} ===", flush=True)
    return int(module.main(options))


def main(argv: list[str] | None = None,
         import_suite: Callable[[str], ModuleType] = importlib.import_module) -> int:
    """Run the suites ``argv`` names; ``import_suite`` finds a suite's module by its dotted name."""
    known = SUITES + LONG_RUNNING
    # No -h of its own: with one benchmark named, --help is that benchmark's.
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("names", nargs="*",
                        help=f"which benchmarks ({', '.join(known)}); default all but {', '.join(LONG_RUNNING)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help=f"where the results files go (default {RESULTS})")
    parser.add_argument("--no-results", action="store_true", help="print only; write no results file")
    args, extra = parser.parse_known_args(argv)
    if not args.names and {"-h", "--help"} & set(extra):
        parser.print_help()
        return 0
    names = args.names or SUITES
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    if extra and len(names) != 1:
        parser.error(f"options {' '.join(extra)} need exactly one benchmark named")
    log = None
    # A benchmark's --help measures nothing: no results file for it.
    if not args.no_results and not {"-h", "--help"} & set(extra):
        command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
        log = ResultsLog(args.results_dir, names, quick=args.quick, command=command, order=known,
                         when=datetime.now(timezone.utc), machine=this_machine(), load=load_average())
        print(f"[bench] results go to {log.path}", file=sys.stderr, flush=True)
    status = 0
    try:
        for number, name in enumerate(names, 1):
            try:
                module = import_suite(f"bench.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"bench.{name}":
                    raise
                print(f"[{name}] not available in this checkout", file=sys.stderr)
                continue
            print(f"[bench] {name} ({number}/{len(names)}) starting", file=sys.stderr, flush=True)
            started = time.monotonic()
            run = functools.partial(_run_suite, module, name, (["--quick"] if args.quick else []) + extra)
            code = log.run(name, run) if log is not None else run()
            status |= code
            print(f"[bench] {name} done in {time.monotonic() - started:.0f} s"
                  + (f" (exit status {code})" if code else ""), file=sys.stderr, flush=True)
    finally:
        if log is not None:
            latest = log.finish()
            print(f"[bench] tables written to {log.path}" + (f" and {latest}" if latest else ""),
                  file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
