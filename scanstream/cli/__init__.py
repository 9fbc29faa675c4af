"""The ``scanstream`` command: one sub-command module per job, dispatched from here."""
from __future__ import annotations

import argparse
import sqlite3
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata

from scanstream.cli import (alerts, api, audit, codes, dashboard, demo, dev, exits, export, init, query, registry, run,
                            segments, state, worker)
from scanstream.cli.common import config_option
from scanstream.cli.run import StateMismatch
from scanstream.engine.config import ConfigError
from scanstream.engine.errors import PermanentError, is_transient
from scanstream.engine.registry import RegistryError
from scanstream.engine.state import StateUnavailable
from scanstream.engine.state.embedded import StateInUse
from scanstream.sinks.exceptions import SinkError

#: The distribution whose version ``--version`` prints.
DISTRIBUTION = "scanstream"
COMMANDS = (init, demo, dev, run, worker, api, query, export, dashboard, audit, registry, codes, segments, alerts,
            state)


def _version() -> str:
    """The installed distribution's version (pyproject.toml), as ``pip show scanstream`` reports it."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # a source tree on sys.path without `pip install -e .`
        return "unknown (not installed)"


def _exit_statuses() -> str:
    """The epilog of ``scanstream --help``: every exit status and what it means."""
    return "exit statuses:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in exits.MEANINGS.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scanstream", parents=[config_option()],
        description="Streaming engine for one-item-one-code programs: verdicts, prizes, alerts, dashboards.",
        epilog=_exit_statuses(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scanstream`` console script; returns the exit status (``exits``)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage error exits here with exits.USAGE (argparse's 2)
    try:
        return int(args.handler(args) or exits.OK)
    except ConfigError as exc:
        print(f"scanstream: configuration error: {exc}", file=sys.stderr)
        return exits.CONFIG
    except RegistryError as exc:
        print(f"scanstream: registry error: {exc}", file=sys.stderr)
        return exits.DATA
    except (StateMismatch, PermanentError) as exc:  # InputChanged, a state file of another format
        print(f"scanstream: {exc}", file=sys.stderr)
        return exits.DATA
    except SinkError as exc:
        print(f"scanstream: ClickHouse error: {exc}; the state is consistent up to the last stored batch, and "
              f"the same command continues from there", file=sys.stderr)
        # a server down or out of disk can pass; a statement or schema it rejects will not
        return exits.UNAVAILABLE if exc.transient else exits.DATA
    except StateUnavailable as exc:  # Redis down, the embedded state held by another process or its disk failing
        print(f"scanstream: state error: {exc}", file=sys.stderr)
        # the embedded state's own SQLite file failing (disk full, read-only) is the local disk, not a service
        local_disk = isinstance(exc.__cause__, sqlite3.Error) and not isinstance(exc, StateInUse)
        return exits.IO_ERROR if local_disk else exits.UNAVAILABLE
    except BrokenPipeError:  # e.g. `scanstream codes mint ... | head`: the reader has all it wants
        return exits.OK
    except (ConnectionError, TimeoutError) as exc:  # OSErrors too, but a service's, not the disk's
        print(f"scanstream: service unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exits.UNAVAILABLE
    except OSError as exc:  # the results file or the state's disk (full, read-only, gone)
        print(f"scanstream: cannot write {exc.filename or 'a file'}: {exc.strerror or exc}; the state is "
              f"consistent up to the last stored batch, and the same command continues from there", file=sys.stderr)
        return exits.IO_ERROR
    except KeyboardInterrupt:
        print("scanstream: interrupted; the state is consistent up to the last stored batch, and the same "
              "command continues from there", file=sys.stderr)
        return exits.INTERRUPTED
    except Exception as exc:
        if is_transient(exc):  # a client library's own connection or timeout error (Kafka, Redis)
            print(f"scanstream: service unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
            return exits.UNAVAILABLE
        traceback.print_exc()
        print(f"scanstream: internal error ({type(exc).__name__}); please report it with the traceback above",
              file=sys.stderr)
        return exits.SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
