"""``scanstream query "SQL" [--format table|csv|jsonl]``: run SQL against the configured ClickHouse.

``table`` (the default) is for a person at a terminal: cells are cut at ``MAX_CELL`` characters.
``csv`` and ``jsonl`` are for programs: every value whole, one row per line, the same text for a
value in both (``text_value``, ``json_value``).  The whole answer is one query's result; for
large ranges of the outcome tables ``scanstream export`` reads in pages instead.

Reading only: the database is opened without the schema step of the other commands (no
CREATE, no campaigns row), a database that does not exist yet is an error rather than
created, and the SQL runs with ClickHouse's ``readonly = 2``, so a query cannot write either.
A query therefore works on a full disk and leaves the data folder as it was.
"""
from __future__ import annotations

import argparse
import csv
import ipaddress
import re
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TextIO

import orjson

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config
from scanstream.engine.config import Config, ConfigError
from scanstream.sinks.exceptions import SinkError

#: Cells wider than this are cut, so one long `raw` value does not wreck the table.
MAX_CELL = 60
#: ClickHouse's READONLY error.  A writer's sink retries it (a replica reconnecting to Keeper);
#: in this command's own read-only session it means the statement writes, which no retry cures.
READONLY_CODE = 164
_READONLY = re.compile(rf"\bCode: {READONLY_CODE}\b")
#: Output formats of ``--format``; the first is the default.
FORMATS = ("table", "csv", "jsonl")
#: Integers JSON readers take exactly: ClickHouse's Int64 and UInt64.  Wider ones (Int128,
#: UInt256) are written as strings, since most JSON readers turn big numbers into floats.
JSON_INT_MIN, JSON_INT_MAX = -(2 ** 63), 2 ** 64 - 1


def exit_status(exc: SinkError) -> int:
    """The exit status of a failed query: ``exits.DATA`` for a statement the server refuses (a
    write included), ``exits.UNAVAILABLE`` for a server that may answer when asked again."""
    if _READONLY.search(str(exc)):
        return exits.DATA
    return exits.UNAVAILABLE if exc.transient else exits.DATA


def render(names: list[str], rows: list[tuple]) -> str:
    cells = [[str(v) if len(str(v)) <= MAX_CELL else str(v)[:MAX_CELL - 1] + "…" for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = "  ".join(n.ljust(w) for n, w in zip(names, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body, f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).isdigit()


def text_value(value: Any) -> str:
    """A cell as CSV text: the value whole, ``""`` for NULL, dates and times in ISO 8601 (as the
    client library returns them: a ``DateTime`` column without a zone of its own is naive),
    Decimals exactly, arrays, tuples and maps as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: a bool is an int to Python
        return "true" if value else "false"
    if isinstance(value, (date, datetime, time)):
        return value.isoformat()
    if isinstance(value, (list, tuple, dict)):
        return orjson.dumps(json_value(value)).decode()
    if isinstance(value, bytes):  # a FixedString or a String that is not UTF-8
        return value.decode("utf-8", "replace")
    return str(value)  # int, float (shortest exact form), Decimal, UUID, IP address


def json_value(value: Any) -> Any:
    """A value as JSON can hold it: dates and times as ISO 8601 text (the same text as in CSV),
    Decimals as text (exact), integers wider than 64 bits as text, tuples as arrays, map keys as
    text, UUIDs and IP addresses as text."""
    if value is None or isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, int):
        return value if JSON_INT_MIN <= value <= JSON_INT_MAX else str(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {text_value(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (date, datetime, time, Decimal, uuid.UUID, bytes,
                          ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return text_value(value)
    return str(value)


def write_csv(out: TextIO, names: Sequence[str], rows: Iterable[Sequence[Any]], *, line_end: str = "\n") -> int:
    """The header and ``rows`` as CSV (RFC 4180 quoting); returns the rows written.

    ``line_end`` is ``\\n`` for standard output, which a text stream already translates to the
    platform's line end; a file opened with ``newline=""`` may ask for RFC 4180's ``\\r\\n``."""
    writer = csv.writer(out, lineterminator=line_end)
    writer.writerow(names)
    n = 0
    for row in rows:
        writer.writerow([text_value(v) for v in row])
        n += 1
    return n


def write_jsonl(out: TextIO, names: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """One JSON object per row, keys in column order; returns the rows written."""
    n = 0
    for row in rows:
        out.write(orjson.dumps({name: json_value(v) for name, v in zip(names, row)}).decode() + "\n")
        n += 1
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("query", parents=[config_option()], help="run SQL against the configured ClickHouse")
    p.add_argument("sql", help='e.g. "SELECT verdict, count() FROM scan_events FINAL GROUP BY verdict"')
    p.add_argument("--format", choices=FORMATS, default=FORMATS[0],
                   help="table: aligned, long cells cut (default); csv: a header row, then every value whole "
                        "(no BOM: for programs; `scanstream export` writes Excel's CSV); jsonl: one JSON object a row")
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
        return exit_status(exc)
    finally:
        sink.close()
    fmt = getattr(args, "format", FORMATS[0])
    if fmt == "csv":
        write_csv(sys.stdout, names, rows)
    elif fmt == "jsonl":
        write_jsonl(sys.stdout, names, rows)
    else:
        print(render(names, rows))
    return exits.OK
