"""``scanstream query "SQL"``: run SQL against the configured ClickHouse and print a table.

Reading only: the database is opened without the schema step of the other commands (no
CREATE, no campaigns row), a database that does not exist yet is an error rather than
created, and the SQL runs with ClickHouse's ``readonly = 2``, so a query cannot write either.
A query therefore works on a full disk and leaves the data folder as it was.
"""
from __future__ import annotations

import argparse
import sys

from scanstream.cli.common import config_option, load_config
from scanstream.engine.config import Config, ConfigError
from scanstream.sinks.exceptions import SinkError

#: Cells wider than this are cut, so one long `raw` value does not wreck the table.
MAX_CELL = 60


def render(names: list[str], rows: list[tuple]) -> str:
    cells = [[str(v) if len(str(v)) <= MAX_CELL else str(v)[:MAX_CELL - 1] + "…" for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = "  ".join(n.ljust(w) for n, w in zip(names, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body, f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).isdigit()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("query", parents=[config_option()], help="run SQL against the configured ClickHouse")
    p.add_argument("sql", help='e.g. "SELECT verdict, count() FROM scan_events FINAL GROUP BY verdict"')
    p.set_defaults(handler=main)


def open_readonly(config: Config):
    """The configured ClickHouse, opened to read only (``sinks.clickhouse.connect_readonly``)."""
    if not config.clickhouse:
        raise ConfigError("sink.clickhouse: no ClickHouse is configured (e.g. clickhouse = \"chdb:../data/chdb\")")
    from scanstream.sinks.clickhouse import ClickHouseSink, connect_readonly
    return ClickHouseSink(connect_readonly(config.clickhouse, database=config.database))


def main(args: argparse.Namespace) -> int:
    sink = open_readonly(load_config(args))
    try:
        names, rows = sink.query(args.sql)
    except SinkError as exc:
        print(f"scanstream: {exc}", file=sys.stderr)
        return 1
    finally:
        sink.close()
    print(render(names, rows))
    return 0
