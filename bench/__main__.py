"""``python -m bench [NAME ...] [--quick]``: run the named benchmarks (default: all)."""

from __future__ import annotations

import argparse
import importlib
import sys

SUITES = ["core", "replication", "persistence", "sidecar", "web"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"which benchmarks ({', '.join(SUITES)}); default all")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    names = args.names or SUITES
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
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
        status |= module.main(["--quick"] if args.quick else [])
    return status


if __name__ == "__main__":
    sys.exit(main())
