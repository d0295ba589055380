"""``python -m bench [NAME ...] [--quick] [OPTION ...]``: run the named benchmarks.

Without names: every suite except the long-running ones (``soak``), which run only when named.
Options the runner does not know (``--help`` included) go to the benchmark, when exactly one
is named (``python -m bench soak --duration 120 --acknowledged``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUITES = ["core", "eviction", "wire", "replication", "persistence", "sidecar", "web"]
#: Run only when named: minutes of load, not a comparison.
LONG_RUNNING = ["soak"]


def main(argv: list[str] | None = None) -> int:
    known = SUITES + LONG_RUNNING
    # No -h of its own: with one benchmark named, --help is that benchmark's.
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("names", nargs="*",
                        help=f"which benchmarks ({', '.join(known)}); default all but {', '.join(LONG_RUNNING)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
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
    status = 0
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            print(f"[{name}] not available in this checkout", file=sys.stderr)
            continue
        print(f"\n=== {name} ===", flush=True)
        status |= module.main((["--quick"] if args.quick else []) + extra)
    return status


if __name__ == "__main__":
    sys.exit(main())
