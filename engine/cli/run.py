"""``scanstream run``: the local driver over a file or stdin, on the configured backends."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.common import config_option, load_config, open_clickhouse
from engine.cli.dashboard import add_writer_options, writer_dashboard
from engine.config import Config
from engine.summary import Summary
from engine.wiring import build_alerting, build_pipeline, build_registry, build_state
from sinks.outputs import Outputs, ResultsFile
from streams.local import Progress, run as drive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", parents=[config_option()], help="run scans (JSON lines) through the pipeline")
    p.add_argument("--input", required=True, metavar="FILE", help="JSON lines, one scan event each; - for stdin")
    p.add_argument("--results", metavar="FILE", help="write one JSON outcome per input line, in input order")
    add_writer_options(p)
    p.set_defaults(handler=main)


def execute(config: Config, source, source_name: str, results: Path | None, progress_total: int | None = None,
            out=sys.stdout, dashboard=None) -> Summary:
    """Run ``source`` through a pipeline built from ``config``; prints and returns the summary.

    ``dashboard`` (an ``engine.cli.dashboard.WriterDashboard``) is given the ClickHouse sink as
    soon as it is open, reads through it while the run writes, and closes it itself.
    """
    registry = build_registry(config)
    state = build_state(config)
    pipeline = build_pipeline(config, registry, state)
    results_file = ResultsFile(results) if results else None  # fails here, before anything is written
    clickhouse = open_clickhouse(config)
    if clickhouse is not None:
        from sinks.registry_tables import publish_registry
        publish_registry(clickhouse, registry)
        if dashboard is not None:
            dashboard.attach(clickhouse)  # from here on the dashboard closes it
    outputs = Outputs(results_file, clickhouse, build_alerting(config, registry, clickhouse))
    try:
        summary = drive(pipeline, source, outputs, config.engine.batch_size, source_name,
                        Progress(progress_total))
    finally:
        outputs.close()
        if clickhouse is not None and dashboard is None:
            clickhouse.close()
    print(summary.render(state, config.campaigns), file=out)
    return summary


def main(args: argparse.Namespace) -> int:
    config = load_config(args)
    results = Path(args.results) if args.results else None
    if results is not None and not results.parent.is_dir():
        print(f"scanstream: cannot write --results {args.results!r}: folder {str(results.parent)!r} does not exist",
              file=sys.stderr)
        return 2
    if args.input == "-":
        source, name = sys.stdin.buffer, "stdin"
    else:
        try:
            source, name = open(args.input, "rb"), Path(args.input).name
        except OSError as exc:
            print(f"scanstream: cannot read --input {args.input!r}: {exc.strerror}", file=sys.stderr)
            return 2
    dashboard = None
    try:
        with source:
            dashboard = writer_dashboard(args, config)
            execute(config, source, name, results, dashboard=dashboard)
        if dashboard is not None:
            dashboard.serve_until_stopped()
    finally:
        if dashboard is not None:
            dashboard.close()
    return 0
