"""The ``scanstream`` command: one sub-command module per job, dispatched from here."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scanstream.cli import alerts, audit, codes, dashboard, demo, query, registry, run, segments, worker
from scanstream.cli.common import config_option
from scanstream.cli.run import StateMismatch
from scanstream.engine.config import ConfigError
from scanstream.engine.registry import RegistryError
from scanstream.engine.state import StateUnavailable
from scanstream.streams.local import InputChanged
from scanstream.sinks.exceptions import SinkError

COMMANDS = (demo, run, worker, query, dashboard, audit, registry, codes, segments, alerts)


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
    except (StateMismatch, InputChanged) as exc:
        print(f"scanstream: {exc}", file=sys.stderr)
        return 2
    except SinkError as exc:
        print(f"scanstream: ClickHouse error: {exc}; the state is consistent up to the last stored batch, and "
              f"the same command continues from there", file=sys.stderr)
        return 1
    except StateUnavailable as exc:
        print(f"scanstream: state error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the results file or the state's disk (full, read-only, gone)
        print(f"scanstream: cannot write {exc.filename or 'a file'}: {exc.strerror or exc}; the state is "
              f"consistent up to the last stored batch, and the same command continues from there", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scanstream: interrupted; the state is consistent up to the last stored batch, and the same "
              "command continues from there", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `scanstream codes mint ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
