"""``scanstream export awards|alerts|segments``: a time range of an outcome table as CSV or xlsx.

The files ops and finance ask for, read from the configured ClickHouse through the same
read-only connection as ``scanstream query`` (``query.open_readonly``: nothing is created, the
SQL runs with ``readonly = 2``).  The columns are the table's own (``engine/outcomes.py``,
``config/clickhouse/``), read with ``FINAL`` so each award, alert or snapshot row is there once:

* ``awards``: every column of ``awards`` (its ``payout_key`` is the idempotency key DESIGN.md
  "Outputs" asks a payment service to pass on as its out_trade_no), then ``prize_yuan`` (the
  cents as yuan, exact to the fen);
* ``alerts``: every column of ``alerts``;
* ``segments``: the rows of ``segment_snapshots`` (what ``scanstream segments snapshot`` stores:
  the users of every segment per tenant and day).  ``segments export`` stays as it is: it writes
  a different thing, the user ids of one segment as of a day, one per line and no header, the
  crowd list a targeting tool takes; this command exports the sizes over days.

Time range.  ``--from``/``--to`` are ISO 8601 dates or date-times; the range is half-open,
[from, to).  A date stands for its whole day on either side: ``--from 2026-11-01 --to
2026-11-30`` is all of November (it ends at 2026-12-01 00:00, excluded); a date-time is an
instant (``--to 2026-11-20T10:00`` leaves out a row at exactly 10:00).  The wall clock is that
of ``--tz`` (an IANA name such as ``Asia/Shanghai``, or an offset such as ``+08:00``); a
date-time with an offset of its own keeps it.  Without ``--tz``: the UTC offset of the configured
campaigns (``utc_offset_minutes``, the offset that ends their prize days, so a day here is the
campaigns' day), China time when none is configured; campaigns in different offsets need
``--tz``.  Times in the file are written in that zone: CSV as ISO 8601 with the offset, xlsx as
the wall-clock time (a spreadsheet cell has no zone; the ``export`` sheet names it).  Segments
are daily rows whose days are already ``[segments] utc_offset_minutes`` days: their range takes
dates only, and ``--tz`` does not apply.

Memory.  Rows are read in pages of ``--page-rows`` (keyset pagination on each table's unique
order, so a page never repeats or skips a row and no page scans past the previous one's last
key) and written as they come: CSV line by line, xlsx with XlsxWriter's ``constant_memory``.
A year of awards is never in memory at once.  The file is written beside its final name and
renamed into place at the end, so a reader never sees half an export.

CSV is UTF-8 with a byte order mark by default: Excel, as finance in China opens a CSV, reads a
file without one in the ANSI code page (GBK), and every Chinese prize tier or city turns into
mojibake.  ``--no-bom`` drops it for programs that do not skip one.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config
from scanstream.cli.query import exit_status, open_readonly, text_value
from scanstream.engine import segments as seg
from scanstream.engine.config import UTC_OFFSET_MAX, UTC_OFFSET_MIN, Config
from scanstream.engine.lottery import Campaign
from scanstream.engine.outcomes import ALERT_COLUMNS, AWARD_COLUMNS
from scanstream.sinks.exceptions import SinkError

KINDS = ("awards", "alerts", "segments")
FORMATS = ("csv", "xlsx")
#: Rows per query.  A page of awards is a few MB of Python objects; fewer, larger pages save
#: round trips, smaller ones memory.  Each page re-reads the range up to its key, so a range of
#: N rows costs about N / PAGE_ROWS sorted reads of it.
PAGE_ROWS = 20_000
#: The campaigns' own default offset (``engine/lottery.py``, China time), the zone when the
#: configuration names no campaign.
DEFAULT_OFFSET_MINUTES: int = next(f.default for f in fields(Campaign) if f.name == "utc_offset_minutes")
#: Offsets of a zone are whole quarter hours (as ``engine/config.py`` checks them).
OFFSET_STEP_MINUTES = 15
#: ``--tz`` as an offset: ``+08:00``, ``+0800``, ``UTC+08:00``, ``-05:30``.
_OFFSET = re.compile(r"(?:UTC|GMT)?([+-])(\d{2}):?(\d{2})", re.IGNORECASE)
#: What the help and the errors say a bound looks like.
BOUND_FORMS = "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS[.fff]][+HH:MM]"

#: Excel's limit of rows per worksheet, the header row included; longer exports go on to a
#: second sheet (``awards 2``), each with the header.
XLSX_MAX_ROWS = 1_048_576
#: The pip extra that installs XlsxWriter (pyproject.toml).
XLSX_EXTRA = "pip install 'scanstream[xlsx]'"
XLSX_TIME_FORMAT = "yyyy-mm-dd hh:mm:ss.000"
XLSX_DATE_FORMAT = "yyyy-mm-dd"
XLSX_YUAN_FORMAT = "0.00"
#: The sheet that says what an xlsx export holds (its data sheets carry only the table's columns).
XLSX_ABOUT_SHEET = "export"

#: Fen per yuan: amounts are stored in cents (fen).
CENTS_PER_YUAN = 100

#: Cell types of an exported column: how CSV and xlsx write it.
TEXT, INT, TIME, DAY, YUAN = "text", "int", "time", "date", "yuan"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_US = timedelta(microseconds=1)


class UsageError(ValueError):
    """Options that do not fit together or with the configuration (exit status ``exits.USAGE``)."""


# --------------------------------------------------------------------------- what is exported


def yuan(cents: int) -> Decimal:
    """An amount in cents as yuan, exact (880 -> Decimal('8.80'))."""
    return (Decimal(int(cents)) / CENTS_PER_YUAN).quantize(Decimal(1) / CENTS_PER_YUAN)


@dataclass(frozen=True)
class Source:
    """One exportable table: its columns, its order and what a row of the file adds."""

    table: str
    columns: tuple[tuple[str, str], ...]  # (name, ClickHouse type) as the table has them
    key: tuple[str, ...]  # the order of the file; unique per row after FINAL, so pages can follow it
    range_column: str  # the column --from/--to select on
    daily: bool  # the range column is a Date (segments): bounds are days, no zone
    extra: tuple[tuple[str, str], ...] = ()  # (name, cell type) of computed columns, after the table's
    derive: Callable[[dict[str, Any]], list[Any]] | None = None  # values of ``extra`` from a row

    def cell_types(self) -> list[str]:
        """The cell type of every column of the file."""
        return [_cell_type(t) for _, t in self.columns] + [t for _, t in self.extra]

    def header(self) -> list[str]:
        """The file's column names: the table's, then the computed ones."""
        return [n for n, _ in self.columns] + [n for n, _ in self.extra]


def _cell_type(clickhouse_type: str) -> str:
    if clickhouse_type.startswith("DateTime"):
        return TIME
    if clickhouse_type == "Date":
        return DAY
    if re.match(r"U?Int\d+$", clickhouse_type):
        return INT
    return TEXT


def _award_extra(row: dict[str, Any]) -> list[Any]:
    return [yuan(row["prize_cents"])]


SOURCES: dict[str, Source] = {
    "awards": Source(
        table="awards", columns=tuple((n, t) for n, _, t in AWARD_COLUMNS),
        # time first (finance reads a day in order), then the table's key: one award per code
        key=("ts", "tenant", "campaign", "kind", "batch", "serial", "beneficiary"), range_column="ts", daily=False,
        extra=(("prize_yuan", YUAN),), derive=_award_extra),
    "alerts": Source(
        table="alerts", columns=tuple((n, t) for n, _, t in ALERT_COLUMNS),
        key=("ts", "tenant", "alert_id"), range_column="ts", daily=False),
    "segments": Source(
        table=seg.SNAPSHOT_TABLE,
        # the columns the snapshot writes, then its version column (config/clickhouse/310_segment_snapshots.sql)
        columns=tuple((n, t) for n, _, t in seg.SNAPSHOT_COLUMNS) + (("taken_at", "DateTime64(3, 'UTC')"),),
        key=("date", "tenant", "segment"), range_column="date", daily=True),
}


# --------------------------------------------------------------------------- options


def parse_bound(text: str) -> date | datetime:
    """``--from``/``--to``: an ISO 8601 date, or a date-time (naive, or with its own offset)."""
    value = text.strip()
    try:
        return date.fromisoformat(value)  # a date only: "2026-11-20" (a date-time fails here)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or date-time; expected ISO 8601, "
                                         f"{BOUND_FORMS}") from None


def parse_zone(text: str) -> tzinfo:
    """``--tz``: an IANA zone name (``Asia/Shanghai``), ``UTC``, or an offset (``+08:00``)."""
    value = text.strip()
    if value.upper() in ("UTC", "Z"):
        return UTC
    found = _OFFSET.fullmatch(value)
    if found:
        sign, hours, minutes = found.groups()
        total = (-1 if sign == "-" else 1) * (int(hours) * 60 + int(minutes))
        if int(minutes) >= 60 or total % OFFSET_STEP_MINUTES or not UTC_OFFSET_MIN <= total <= UTC_OFFSET_MAX:
            raise argparse.ArgumentTypeError(
                f"{text!r} is no zone's offset; expected whole quarter hours from -12:00 to +14:00")
        return timezone(timedelta(minutes=total))
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time zone; expected an IANA name such as "
                                         "Asia/Shanghai, UTC, or an offset such as +08:00") from None


def _page_rows(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a row count; expected a whole number of at least 1")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``scanstream`` command."""
    p = sub.add_parser(
        "export", parents=[config_option()],
        help="write awards, alerts or segment sizes of a time range as CSV or xlsx (for ops and finance)",
        description="Write a time range of an outcome table as CSV or xlsx. The range is [--from, --to): a date "
                    "stands for its whole day (--from 2026-11-01 --to 2026-11-30 is November), a date-time is an "
                    "instant and a row at exactly --to is left out.")
    p.add_argument("kind", choices=KINDS, help="awards (with yuan and the payout key), alerts, or segments "
                                               "(the daily sizes `segments snapshot` stored)")
    p.add_argument("--format", choices=FORMATS, default=FORMATS[0], help="csv (default) or xlsx "
                                                                         f"(needs {XLSX_EXTRA})")
    p.add_argument("--from", dest="start", required=True, type=parse_bound, metavar="WHEN",
                   help=f"start of the range, included: {BOUND_FORMS}")
    p.add_argument("--to", dest="end", required=True, type=parse_bound, metavar="WHEN",
                   help="end of the range: a date includes its whole day; a date-time is excluded")
    p.add_argument("--tz", type=parse_zone, metavar="ZONE",
                   help="the wall clock of --from, --to and the times in the file: an IANA name (Asia/Shanghai) or "
                        "an offset (+08:00); default: the configured campaigns' utc_offset_minutes (China time "
                        "without campaigns). Not for segments, whose days are [segments] days")
    p.add_argument("--output", metavar="FILE",
                   help="the file to write (default: KIND_FROM_TO.FORMAT in the current folder; '-' for standard "
                        "output, CSV only)")
    p.add_argument("--no-bom", dest="bom", action="store_false",
                   help="CSV without the UTF-8 byte order mark (Excel needs it to read Chinese text as UTF-8)")
    p.add_argument("--page-rows", type=_page_rows, default=PAGE_ROWS, metavar="N",
                   help=f"rows read per query (default {PAGE_ROWS:,}); bounds the memory an export takes")
    p.set_defaults(handler=main)


# --------------------------------------------------------------------------- the range


@dataclass(frozen=True)
class Window:
    """The half-open range [start, end) of an export, and the zone its times are written in."""

    start: datetime | date  # an aware instant, or a day (segments)
    end: datetime | date  # excluded
    zone: tzinfo

    def describe(self) -> str:
        """The range in words, for the command's last line."""
        return f"{self.start.isoformat()} to {self.end.isoformat()}, end excluded"


def default_zone(config: Config) -> tzinfo:
    """The campaigns' UTC offset (module docstring); a ``UsageError`` when they differ."""
    offsets = sorted({c.utc_offset_minutes for c in config.campaigns})
    if len(offsets) > 1:
        named = ", ".join(f"{c.id}: {c.utc_offset_minutes}" for c in config.campaigns)
        raise UsageError(f"the campaigns end their days at different UTC offsets (utc_offset_minutes {named}); "
                         "expected --tz to say which wall clock the range and the times are in")
    return timezone(timedelta(minutes=offsets[0] if offsets else DEFAULT_OFFSET_MINUTES))


def _instant(bound: date | datetime, zone: tzinfo, *, end: bool) -> datetime:
    if isinstance(bound, datetime):
        return bound if bound.tzinfo is not None else bound.replace(tzinfo=zone)
    day = bound + timedelta(days=1) if end else bound  # a date's whole day is inside the range
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def window(source: Source, start: date | datetime, end: date | datetime, zone: tzinfo | None,
           config: Config) -> Window:
    """The range of ``--from``/``--to`` for ``source``; a ``UsageError`` naming the bad option."""
    if source.daily:
        if zone is not None:
            raise UsageError(f"--tz: {source.table} rows are days in [segments] utc_offset_minutes "
                             f"({config.segments.utc_offset_minutes}); expected no --tz for segments")
        for option, bound in (("--from", start), ("--to", end)):
            if isinstance(bound, datetime):
                raise UsageError(f"{option} {bound.isoformat()}: segment snapshots are daily; expected a date, "
                                 "YYYY-MM-DD")
        first, after = start, end + timedelta(days=1)
        if after <= first:
            raise UsageError(f"--to {end.isoformat()} is before --from {start.isoformat()}; expected a range "
                             "that ends on or after the day it starts")
        return Window(first, after, timezone(timedelta(minutes=config.segments.utc_offset_minutes)))
    zone = zone if zone is not None else default_zone(config)
    lo, hi = _instant(start, zone, end=False), _instant(end, zone, end=True)
    if hi <= lo:
        raise UsageError(f"--to {end.isoformat()} ({hi.isoformat()}) is not after --from {start.isoformat()} "
                         f"({lo.isoformat()}); expected a non-empty range [from, to)")
    return Window(lo, hi, zone)


def _ms_at_or_after(instant: datetime) -> int:
    """The first whole millisecond at or after ``instant`` (rows are stored to the millisecond:
    ``ts >= instant`` is ``ts_ms >= this`` and ``ts < instant`` is ``ts_ms < this``)."""
    micros = (instant - _EPOCH) // _US
    return -(-micros // 1000)


# --------------------------------------------------------------------------- SQL


def _literal(value: Any) -> str:
    """A key value of a page's last row as SQL (ints as they are, text quoted, days as Date)."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, date):
        return f"toDate('{value.isoformat()}')"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _expression(name: str, clickhouse_type: str) -> str:
    # times as epoch milliseconds: exact, and free of how the client library reads a zone
    return f"toUnixTimestamp64Milli(`{name}`)" if clickhouse_type.startswith("DateTime") else f"`{name}`"


def page_sql(source: Source, win: Window, after: Sequence[Any] | None, limit: int) -> str:
    """One page of ``source`` in ``win``: the rows after the key ``after`` (None: from the first),
    in key order, at most ``limit``."""
    types = dict(source.columns)
    exprs = ", ".join(_expression(n, t) for n, t in source.columns)
    key = ", ".join(_expression(n, types[n]) for n in source.key)
    column = f"`{source.range_column}`"
    if source.daily:
        where = [f"{column} >= {_literal(win.start)}", f"{column} < {_literal(win.end)}"]
    else:
        where = [f"{column} >= fromUnixTimestamp64Milli(toInt64({_ms_at_or_after(win.start)}), 'UTC')",
                 f"{column} < fromUnixTimestamp64Milli(toInt64({_ms_at_or_after(win.end)}), 'UTC')"]
    if after is not None:
        where.append(f"({key}) > ({', '.join(_literal(v) for v in after)})")
    return (f"SELECT {exprs}\nFROM `{source.table}` FINAL\nWHERE " + "\n  AND ".join(where)
            + f"\nORDER BY {key}\nLIMIT {int(limit)}")


def read_pages(sink, source: Source, win: Window, page_rows: int) -> Iterator[tuple[Any, ...]]:
    """Every row of ``source`` in ``win``, in key order, one page of ``page_rows`` in memory at a time."""
    names = [n for n, _ in source.columns]
    key_at = [names.index(n) for n in source.key]
    after = None
    while True:
        _, rows = sink.query(page_sql(source, win, after, page_rows))
        yield from rows
        if len(rows) < page_rows:
            return
        after = [rows[-1][i] for i in key_at]


def shape(source: Source, win: Window, row: Sequence[Any]) -> list[Any]:
    """A fetched row as the file's cells: times in the window's zone, the computed columns added."""
    out: list[Any] = []
    for (name, clickhouse_type), value in zip(source.columns, row):
        kind = _cell_type(clickhouse_type)
        if kind == TIME:
            value = (_EPOCH + int(value) * _MS).astimezone(win.zone)
        out.append(value)
    if source.derive is not None:
        out += source.derive({n: v for (n, _), v in zip(source.columns, row)})
    return out


# --------------------------------------------------------------------------- writers


def csv_cell(value: Any) -> str:
    """A cell as CSV text: times as ISO 8601 with milliseconds and the offset, the rest as
    ``scanstream query --format csv`` writes it."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    return text_value(value)


class CsvFile:
    """Rows to a CSV stream, one line at a time."""

    def __init__(self, out: TextIO, header: list[str]):
        self.out = out
        self.writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180, as Excel writes it
        self.writer.writerow(header)

    def row(self, values: list[Any]) -> None:
        """Write one row of cells."""
        self.writer.writerow([csv_cell(v) for v in values])

    def close(self) -> None:
        """Flush what is written (the caller owns the stream)."""
        self.out.flush()


class XlsxFile:
    """Rows to a workbook written row by row (``constant_memory``), typed cells, a new sheet
    with the header again when one reaches Excel's row limit."""

    def __init__(self, path: Path, kind: str, header: list[str], types: list[str]):
        import xlsxwriter  # checked by ``xlsx_available`` before anything is opened

        self.book = xlsxwriter.Workbook(str(path), {"constant_memory": True})
        self.formats = {TIME: self.book.add_format({"num_format": XLSX_TIME_FORMAT}),
                        DAY: self.book.add_format({"num_format": XLSX_DATE_FORMAT}),
                        YUAN: self.book.add_format({"num_format": XLSX_YUAN_FORMAT})}
        self.kind, self.header, self.types = kind, header, types
        self.sheets = 0
        self._new_sheet()

    def _new_sheet(self) -> None:
        self.sheets += 1
        self.sheet = self.book.add_worksheet(self.kind if self.sheets == 1 else f"{self.kind} {self.sheets}")
        for col, name in enumerate(self.header):
            self.sheet.write_string(0, col, name)
        self.next_row = 1

    def row(self, values: list[Any]) -> None:
        """Write one row of typed cells, on a new sheet when this one is full."""
        if self.next_row >= XLSX_MAX_ROWS:
            self._new_sheet()
        r, sheet = self.next_row, self.sheet
        for col, (kind, value) in enumerate(zip(self.types, values)):
            if value is None:
                continue
            if kind == TIME:  # a cell holds no zone: the wall clock of the export's zone
                sheet.write_datetime(r, col, value.replace(tzinfo=None), self.formats[TIME])
            elif kind == DAY:
                sheet.write_datetime(r, col, datetime(value.year, value.month, value.day), self.formats[DAY])
            elif kind == YUAN:
                sheet.write_number(r, col, float(value), self.formats[YUAN])
            elif kind == INT:
                sheet.write_number(r, col, int(value))
            else:  # as text, always: a user id of digits stays text, a value starting "=" is no formula
                sheet.write_string(r, col, text_value(value))
        self.next_row += 1

    def about(self, lines: list[tuple[str, str]]) -> None:
        """The sheet that says what the workbook holds (kind, range, zone, rows)."""
        sheet = self.book.add_worksheet(XLSX_ABOUT_SHEET)
        for r, (name, value) in enumerate(lines):
            sheet.write_string(r, 0, name)
            sheet.write_string(r, 1, value)

    def close(self) -> None:
        """Finish the workbook (XlsxWriter writes the file here)."""
        self.book.close()


def xlsx_available() -> bool:
    """Whether XlsxWriter (the ``xlsx`` extra) is installed."""
    try:
        importlib.import_module("xlsxwriter")
    except ImportError:
        return False
    return True


def zone_name(zone: tzinfo, at: datetime) -> str:
    """A zone as people read it: its IANA name, or ``UTC+08:00``."""
    if isinstance(zone, ZoneInfo):
        return zone.key
    offset = at.astimezone(zone).strftime("%z")
    return f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"


def default_output(kind: str, start: date | datetime, end: date | datetime, fmt: str) -> Path:
    """``KIND_FROM_TO.FORMAT`` in the current folder, without the characters a file name cannot
    hold everywhere (``:`` of a time): ``awards_2026-11-01_2026-11-30.csv``."""
    def part(bound: date | datetime) -> str:
        return re.sub(r"[^0-9A-Za-z.+-]", "", bound.isoformat())
    return Path(f"{kind}_{part(start)}_{part(end)}.{fmt}")


# --------------------------------------------------------------------------- the command


def main(args: argparse.Namespace) -> int:
    """``scanstream export``: returns the exit status (``exits``)."""
    source = SOURCES[args.kind]
    if args.format == "xlsx" and not xlsx_available():
        # the installation lacks an optional part: a setup error, fixed like a configuration's
        print(f"scanstream: --format xlsx needs the XlsxWriter package, which is not installed; "
              f"expected it installed: {XLSX_EXTRA}", file=sys.stderr)
        return exits.CONFIG
    to_stdout = args.output == "-"
    if to_stdout and args.format == "xlsx":
        print("scanstream: --output -: an xlsx workbook cannot be streamed to standard output; expected a file name",
              file=sys.stderr)
        return exits.USAGE
    config = load_config(args)
    try:
        win = window(source, args.start, args.end, args.tz, config)
    except UsageError as exc:
        print(f"scanstream: {exc}", file=sys.stderr)
        return exits.USAGE
    what = f"{args.kind} ({win.describe()}; times in {zone_name(win.zone, _as_datetime(win.start))})"
    try:
        if to_stdout:
            n = _to_stdout(config, source, win, args)
            print(f"{n} {what}", file=sys.stderr)  # standard output holds the CSV only
            return exits.OK
        out = Path(args.output) if args.output else default_output(args.kind, args.start, args.end, args.format)
        n = _to_file(config, source, win, args, out)
    except BrokenPipeError:  # `export ... --output - | head`: the reader has all it wants
        return exits.OK
    except SinkError as exc:  # the database missing, a server away, a statement refused
        print(f"scanstream: {exc}", file=sys.stderr)
        return exit_status(exc)
    except OSError as exc:
        print(f"scanstream: --output {args.output or out}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return exits.IO_ERROR
    print(f"wrote {n} {what} to {out}")
    return exits.OK


def _as_datetime(bound: date | datetime) -> datetime:
    return bound if isinstance(bound, datetime) else datetime(bound.year, bound.month, bound.day, tzinfo=UTC)


def _export(config: Config, source: Source, win: Window, page_rows: int, write: Callable[[list[Any]], None]) -> int:
    """Every row of the range through ``write``; returns the row count."""
    sink = open_readonly(config)
    n = 0
    try:
        for row in read_pages(sink, source, win, page_rows):
            write(shape(source, win, row))
            n += 1
    finally:
        sink.close()
    return n


def _to_stdout(config: Config, source: Source, win: Window, args: argparse.Namespace) -> int:
    # bytes through a UTF-8 text layer of our own: the terminal's encoding may not hold Chinese text
    stream = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8-sig" if args.bom else "utf-8", newline="")
    try:
        writer = CsvFile(stream, source.header())
        return _export(config, source, win, args.page_rows, writer.row)
    finally:
        stream.flush()
        stream.detach()  # sys.stdout keeps its buffer


def _to_file(config: Config, source: Source, win: Window, args: argparse.Namespace, out: Path) -> int:
    """The export written beside ``out`` and renamed to it when whole; returns the row count."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if args.format == "csv":
            with open(tmp, "w", encoding="utf-8-sig" if args.bom else "utf-8", newline="") as stream:
                n = _export(config, source, win, args.page_rows, CsvFile(stream, source.header()).row)
        else:
            book = XlsxFile(tmp, args.kind, source.header(), source.cell_types())
            try:
                n = _export(config, source, win, args.page_rows, book.row)
                book.about([("kind", args.kind), ("table", source.table), ("from", win.start.isoformat()),
                            ("to (excluded)", win.end.isoformat()),
                            ("times in", zone_name(win.zone, _as_datetime(win.start))), ("rows", str(n))])
            finally:
                book.close()
        os.replace(tmp, out)  # a reader never sees half an export
    finally:
        tmp.unlink(missing_ok=True)
    return n
