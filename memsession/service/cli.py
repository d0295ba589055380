"""The ``memsession`` command: ``hub``, ``keys``, ``ddl`` here; ``sidecar`` and ``status`` in ``commands``.

Subcommands register themselves in ``COMMANDS``-style lists so other ones
slot in next to them. What ``--help`` shows is ``DESCRIPTION`` (plain text,
not this docstring) and each option's default where it says something
(``HelpFormatter``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from ..errors import ConfigError, MemsessionError

__all__ = ["DESCRIPTION", "HelpFormatter", "build_parser", "main"]

#: ``(name, help, add_arguments, run)`` for every subcommand.
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

DESCRIPTION = ("Sessions kept in every worker's memory, replicated through a hub, persisted by a sidecar. "
               "Run 'memsession COMMAND --help' for a command's options.")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it tells something: not for flags, unset options, nor where the help
    already says in words what happens by default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default in ("", []) or "(default" in text:
            return text
        return super()._get_help_string(action)


def _hub_arguments(p: argparse.ArgumentParser) -> None:
    from .commands import endpoint_arguments, log_level_argument, maxsize_argument

    endpoint_arguments(p)
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument("--sndhwm", type=int, default=100_000, help="per-subscriber queue, in messages")
    p.add_argument("--forget-after", type=float, default=60.0,
                   help="seconds after which a silent publisher's stream bookkeeping is dropped")
    maxsize_argument(p)
    p.add_argument("--stats", action="store_true", help="print a running hub's counters as JSON and exit")
    log_level_argument(p)


def _hub(args: argparse.Namespace) -> int:
    from ..hub import HubConfig, query_stats, run_hub

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = HubConfig(
        publish=args.publish, subscribe=args.subscribe, requests=args.requests,
        runtime_dir=args.runtime_dir, keys=args.keys, insecure=args.insecure,
        heartbeat=args.heartbeat, sndhwm=args.sndhwm, forget_after=args.forget_after, maxsize=args.maxsize,
    )
    if args.stats:
        stats = query_stats(config.query_endpoint(), keys=args.keys, insecure=args.insecure)
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pub, sub, req = config.endpoints()
    logging.getLogger("memsession.hub").info("publish=%s subscribe=%s requests=%s", pub, sub, req)
    run_hub(config, stop=stop)
    return 0


def _keys_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="where to write server/client key pairs and clients/")
    p.add_argument("--force", action="store_true", help="replace existing keys")


def _keys(args: argparse.Namespace) -> int:
    from ..security import generate_keys

    paths = generate_keys(args.directory, overwrite=args.force)
    for name in sorted(paths):
        print(f"{name}: {paths[name]}")
    return 0


def _ddl_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schema", default=None, help="schema of the sessions table (default: the search path)")
    p.add_argument("--table", default="memsession", help="table name")
    p.add_argument("--column", action="append", default=[], metavar="FIELD=NAME",
                   help="rename a column, e.g. --column key=session_id (fields: key data version origin "
                        "created accessed expires deleted); repeatable")
    p.add_argument("--change-log", action="store_true",
                   help="also the change log's tables, for sidecars run with --host-name "
                        "(see 'Several hosts')")


def _ddl(args: argparse.Namespace) -> int:
    from persist.postgres import ddl

    columns = {}
    for item in args.column:
        field, sep, name = item.partition("=")
        if not sep:
            raise ConfigError("--column", item, "expected FIELD=NAME")
        columns[field] = name
    sys.stdout.write(ddl(args.schema, args.table, columns, change_log=args.change_log))
    return 0


COMMANDS: list[Command] = [
    ("hub", "run a hub: XSUB/XPUB proxy, replica and snapshot server", _hub_arguments, _hub),
    ("keys", "generate CURVE key pairs for tcp endpoints", _keys_arguments, _keys),
    ("ddl", "print the PostgreSQL DDL of the sessions table", _ddl_arguments, _ddl),
]


def _sidecar_commands() -> list[Command]:
    from .commands import COMMANDS as sidecar_commands

    return list(sidecar_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memsession", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for name, help_text, add_arguments, run in [*COMMANDS, *_sidecar_commands()]:
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                           formatter_class=HelpFormatter)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MemsessionError as exc:
        print(f"memsession {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
