"""The ``scanstream`` command: one sub-command module per job, dispatched from here."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.cli import audit, codes, dashboard, demo, query, registry, run, segments, worker
from engine.cli.common import config_option
from engine.config import ConfigError
from engine.registry import RegistryError
from sinks.exceptions import SinkError

COMMANDS = (demo, run, worker, query, dashboard, audit, registry, codes, segments)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanstream", parents=[config_option()],
        description="Streaming engine for one-item-one-code programs: verdicts, prizes, alerts, dashboards.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scanstream`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"scanstream: configuration error: {exc}", file=sys.stderr)
        return 2
    except RegistryError as exc:
        print(f"scanstream: registry error: {exc}", file=sys.stderr)
        return 2
    except SinkError as exc:
        print(f"scanstream: ClickHouse error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `scanstream codes mint ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
