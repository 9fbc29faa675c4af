"""``scanstream export`` and ``scanstream query --format``, as real processes over a demo's tables.

One ``scanstream demo --scans 3000`` fills a chdb folder (its scans fall on 2026-11-20, 08:00 to
22:00 China time), ``segments snapshot`` stores two days of segment sizes, and every export is
checked against ``scanstream query`` over the same range, written here in SQL of its own (the
bounds as ClickHouse reads a wall-clock time in a zone), so the expected rows are the demo's real
outcomes, never numbers copied into the test.  Subprocesses only: chdb lets one process open one
data path, and importing it changes the working directory.  Argument errors are checked in this
process (``scanstream.cli.main``): they stop before ClickHouse is opened, which each test checks.
"""
from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
import pickle
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from scanstream.cli import export as export_module
from scanstream.cli import main as cli_main
from scanstream.cli.export import parse_zone
from scanstream.engine.outcomes import payout_keys
from test_cli_e2e import SCANSTREAM, ok, sh, write_config

pytestmark = [
    pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("chdb") is None, reason="the embedded ClickHouse is not installed"),
]

DEMO_SCANS = 3000
DAY = "2026-11-20"  # the demo's scans are all on this day, China time
SNAPSHOT_DAYS = ("2026-11-20", "2026-11-21")  # an export of the 20th alone leaves the 21st out
CHINA = timezone(timedelta(hours=8))  # config/local.toml's campaign: utc_offset_minutes = 480
BOM = "\ufeff"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Each kind's file order (scanstream/cli/export.py SOURCES), for the expected query.
ORDER = {"awards": "ts, tenant, campaign, kind, batch, serial", "alerts": "ts, tenant, alert_id",
         "segments": "date, tenant, segment"}
TIME_COLUMNS = {"awards": ("ts",), "alerts": ("ts", "window_start", "window_end"), "segments": ("taken_at",)}
INT_COLUMNS = {"tenant", "kind", "batch", "serial", "prize_cents", "count", "users"}


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A demo's chdb tables, with segment snapshots of two days; the config and a working folder."""
    home = tmp_path_factory.mktemp("export")
    config = write_config(home / "cfg" / "scanstream.toml", "../data/registry", "../data/chdb")
    cwd = home / "out"
    cwd.mkdir()
    ok(sh("demo", "--config", str(config), "--scans", str(DEMO_SCANS), cwd=cwd))
    for day in SNAPSHOT_DAYS:
        ok(sh("segments", "snapshot", "--config", str(config), "--as-of", day, cwd=cwd))
    return {"config": config, "cwd": cwd}


def query_jsonl(world: dict, sql: str) -> list[dict]:
    """The rows of ``scanstream query --format jsonl``."""
    out = ok(sh("query", "--config", str(world["config"]), "--format", "jsonl", sql, cwd=world["cwd"])).stdout
    return [json.loads(line) for line in out.splitlines()]


def sink_query(world: dict, sql: str) -> tuple[list[str], list[tuple]]:
    """(names, rows) of the sink's own query, in a process of its own, values as Python made them."""
    script = ("import base64, pickle, sys\n"
              "from scanstream.cli.query import open_readonly\n"
              "from scanstream.engine.config import load\n"
              "sink = open_readonly(load(sys.argv[1]))\n"
              "sys.stdout.write(base64.b64encode(pickle.dumps(sink.query(sys.argv[2]))).decode())\n"
              "sink.close()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(world["config"]), sql], cwd=world["cwd"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return pickle.loads(base64.b64decode(proc.stdout))


def wall(text: str) -> str:
    """A bound as ClickHouse reads a wall-clock time: 'YYYY-MM-DD hh:mm:ss[.fff]'."""
    return text.replace("T", " ")


@pytest.fixture(scope="module")
def tables(world) -> dict[str, list[dict]]:
    """Every row of the three tables (``scanstream query``, ``FINAL``), in each file's order, times
    also as epoch milliseconds (``<column>_ms``): read once, a range picks its rows from them."""
    out = {}
    for kind, table in (("awards", "awards"), ("alerts", "alerts"), ("segments", "segment_snapshots")):
        times = ", ".join(f"toUnixTimestamp64Milli({c}) AS {c}_ms" for c in TIME_COLUMNS[kind])
        out[kind] = query_jsonl(world, f"SELECT *, {times} FROM {table} FINAL ORDER BY {ORDER[kind]}")
    return out


def instants(world: dict, zone: str, *walls: str) -> list[int]:
    """Epoch milliseconds of wall-clock times in ``zone``, as ClickHouse computes them (not this
    module's arithmetic nor the exporter's)."""
    sql = "SELECT " + ", ".join(f"toUnixTimestamp64Milli(toDateTime64('{wall(w)}', 3, '{zone}')) AS t{i}"
                                for i, w in enumerate(walls))
    row = query_jsonl(world, sql)[0]
    return [row[f"t{i}"] for i in range(len(walls))]


def expected(world: dict, tables: dict, kind: str, lo: str, hi: str, zone: str = "Asia/Shanghai") -> list[dict]:
    """The rows of ``kind`` in [lo, hi): wall-clock times in ``zone``, or days for segments."""
    if kind == "segments":
        first, after = date.fromisoformat(lo), date.fromisoformat(hi)
        return [r for r in tables[kind] if first <= date.fromisoformat(r["date"]) < after]
    lo_ms, hi_ms = instants(world, zone, lo, hi)
    return [r for r in tables[kind] if lo_ms <= r["ts_ms"] < hi_ms]


def export(world: dict, kind: str, *args: str, fmt: str = "csv", name: str | None = None) -> Path:
    """``scanstream export KIND --format FMT ARGS --output FILE``; the file."""
    out = world["cwd"] / (name or f"{kind}-{len(list(world['cwd'].iterdir()))}.{fmt}")
    proc = ok(sh("export", kind, "--config", str(world["config"]), "--format", fmt, *args, "--output", str(out),
                 cwd=world["cwd"]))
    assert f"to {out}" in proc.stdout, proc.stdout
    return out


def read_csv(path: Path, bom: bool = True) -> tuple[list[str], list[dict]]:
    """(header, rows) of an exported CSV; checks the byte order mark is there (or not)."""
    text = path.read_bytes().decode("utf-8")
    assert text.startswith(BOM) == bom, text[:20]
    reader = csv.reader(io.StringIO(text.removeprefix(BOM), newline=""))
    header = next(reader)
    return header, [dict(zip(header, row, strict=True)) for row in reader]


def read_xlsx(path: Path, kind: str) -> tuple[list[str], list[dict]]:
    """(header, rows) of an exported workbook's data sheet, cells as openpyxl reads them."""
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.load_workbook(path, read_only=True)
    assert book.sheetnames == [kind, "export"], book.sheetnames
    rows = [list(r) for r in book[kind].iter_rows(values_only=True)]
    header = rows[0]
    return header, [dict(zip(header, ["" if v is None else v for v in row], strict=True)) for row in rows[1:]]


def ms_of_text(text: str, zone: timezone) -> int:
    """Epoch milliseconds of a CSV time; the time must carry ``zone``'s offset."""
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == zone.utcoffset(None), text
    return (moment - EPOCH) // timedelta(milliseconds=1)


def ms_of_cell(value: datetime, zone: timezone) -> int:
    """Epoch milliseconds of an xlsx time (a wall-clock time in ``zone``), to the nearest millisecond."""
    return round((value.replace(tzinfo=zone) - EPOCH) / timedelta(milliseconds=1))


def check_rows(kind: str, header: list[str], got: list[dict], want: list[dict], zone: timezone, xlsx: bool) -> None:
    """Every exported row equals the query's row, column by column."""
    assert want, "no expected rows: the comparison would prove nothing"
    table_columns = [c for c in want[0] if not c.endswith("_ms")]
    assert header == table_columns + (["prize_yuan"] if kind == "awards" else [])
    assert len(got) == len(want)
    for row, ref in zip(got, want):
        for column in table_columns:
            value = row[column]
            if column in TIME_COLUMNS[kind]:
                value = ms_of_cell(value, zone) if xlsx else ms_of_text(value, zone)
                assert value == ref[f"{column}_ms"], (column, row, ref)
            elif column == "date":
                assert (value.date() if xlsx else date.fromisoformat(value)) == date.fromisoformat(ref["date"])
            elif column in INT_COLUMNS:
                assert int(value) == ref[column], (column, row, ref)
            else:
                assert value == ref[column], (column, row, ref)
        if kind == "awards":
            if xlsx:
                assert round(row["prize_yuan"] * 100) == ref["prize_cents"]
            else:
                assert Decimal(row["prize_yuan"]) * 100 == ref["prize_cents"]
                assert len(row["prize_yuan"].split(".")[1]) == 2, row["prize_yuan"]
            assert row["payout_key"] == key_of(ref["tenant"], ref["campaign"], ref["kind"], ref["batch"],
                                               ref["serial"], ref["beneficiary"])


# --------------------------------------------------------------------------- exports equal the query


@pytest.fixture(scope="module")
def day_awards(world) -> list[dict]:
    """The CSV rows of ``export awards --from DAY --to DAY`` (the demo's whole day), read once."""
    return read_csv(export(world, "awards", "--from", DAY, "--to", DAY))[1]


@pytest.mark.parametrize("kind, fmt, lo, hi, args", [
    # a date stands for its whole day: the demo's whole day
    ("awards", "xlsx", f"{DAY}T00:00:00", "2026-11-21T00:00:00", ("--from", DAY, "--to", DAY)),
    ("alerts", "csv", f"{DAY}T00:00:00", "2026-11-21T00:00:00", ("--from", DAY, "--to", DAY)),
    ("alerts", "xlsx", f"{DAY}T00:00:00", "2026-11-21T00:00:00", ("--from", DAY, "--to", DAY)),
    # date-times: a part of the day, in small pages, so the rows come in several queries
    ("awards", "csv", f"{DAY}T12:00:00", f"{DAY}T15:30:00",
     ("--from", f"{DAY}T12:00", "--to", f"{DAY}T15:30", "--page-rows", "17")),
    ("alerts", "csv", f"{DAY}T09:15:00", f"{DAY}T20:00:00",
     ("--from", f"{DAY}T09:15", "--to", f"{DAY}T20:00", "--page-rows", "3")),
    # segments: days, the --to day included, the next day's snapshot left out
    ("segments", "csv", SNAPSHOT_DAYS[0], SNAPSHOT_DAYS[1], ("--from", SNAPSHOT_DAYS[0], "--to", SNAPSHOT_DAYS[0],
                                                             "--page-rows", "5")),
    ("segments", "xlsx", SNAPSHOT_DAYS[0], SNAPSHOT_DAYS[1], ("--from", SNAPSHOT_DAYS[0], "--to", SNAPSHOT_DAYS[0])),
])
def test_export_equals_the_query(world, tables, kind, fmt, lo, hi, args) -> None:
    want = expected(world, tables, kind, lo, hi)
    path = export(world, kind, *args, fmt=fmt)
    header, got = read_xlsx(path, kind) if fmt == "xlsx" else read_csv(path)
    check_rows(kind, header, got, want, CHINA, fmt == "xlsx")
    if kind == "segments":
        assert {r["date"] for r in want} == {SNAPSHOT_DAYS[0]} and len(tables[kind]) > len(want)


def test_the_whole_day_as_csv_is_every_award(world, tables, day_awards) -> None:
    header = list(tables["awards"][0])
    header = [c for c in header if not c.endswith("_ms")] + ["prize_yuan"]
    check_rows("awards", header, day_awards, expected(world, tables, "awards", f"{DAY}T00:00:00",
                                                      "2026-11-21T00:00:00"), CHINA, xlsx=False)
    assert len(day_awards) == len(tables["awards"]) > 0  # the demo paid on that day only


def test_payout_keys_are_distinct_and_fit_out_trade_no(day_awards) -> None:
    keys = [r["payout_key"] for r in day_awards]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)
    # the beneficiary is part of the key: the same code's guide commission is another payment;
    # the scanner is not: the code pays its consumer prize once, whoever scanned it
    # trade: the demo's 开箱有礼; guide: its guides' commissions
    assert {r["beneficiary"] for r in day_awards} == {"consumer", "trade", "guide"}
    r = next(r for r in day_awards if r["beneficiary"] == "consumer")
    assert key_of(int(r["tenant"]), r["campaign"], int(r["kind"]), int(r["batch"]), int(r["serial"]),
                  "guide") != r["payout_key"]


def key_of(tenant: int, campaign: str, kind: int, batch: int, serial: int, beneficiary: str) -> str:
    """The payout key of one award, through the engine's one derivation."""
    return payout_keys(np.array([tenant]), np.array([campaign], object), np.array([kind]), np.array([batch]),
                       np.array([serial]), np.array([beneficiary], object))[0]


# --------------------------------------------------------------------------- the range


def test_a_row_at_exactly_to_is_excluded_and_at_from_included(world, tables) -> None:
    rows = tables["awards"]
    pivot = rows[len(rows) // 2]
    at = (EPOCH + timedelta(milliseconds=pivot["ts_ms"])).astimezone(CHINA).replace(tzinfo=None)
    at_text = at.isoformat(timespec="milliseconds")
    _, before = read_csv(export(world, "awards", "--from", DAY, "--to", at_text))
    _, after = read_csv(export(world, "awards", "--from", at_text, "--to", DAY))
    assert pivot["scan_id"] not in {r["scan_id"] for r in before}
    assert pivot["scan_id"] in {r["scan_id"] for r in after}
    assert all(ms_of_text(r["ts"], CHINA) < pivot["ts_ms"] for r in before)
    assert all(ms_of_text(r["ts"], CHINA) >= pivot["ts_ms"] for r in after)
    assert len(before) + len(after) == len(rows)  # [from, at) and [at, to) split the day, no row twice


def test_the_range_is_in_the_chosen_zone(world, tables) -> None:
    early = ("--from", f"{DAY}T00:00", "--to", f"{DAY}T02:00")
    # UTC: 00:00-02:00 UTC is 08:00-10:00 in China, inside the demo's day
    header, got = read_csv(export(world, "awards", *early, "--tz", "UTC"))
    check_rows("awards", header, got, expected(world, tables, "awards", f"{DAY}T00:00:00", f"{DAY}T02:00:00",
                                               zone="UTC"), UTC, xlsx=False)
    # the default, the campaign's +08:00: before 08:00 in China the demo had no scans
    header, none = read_csv(export(world, "awards", *early))
    assert none == [] and header[0] == "scan_id"
    # an IANA name: the same wall clock as the default (test_export_equals_the_query's 12:00-15:30)
    header, named = read_csv(export(world, "awards", "--from", f"{DAY}T12:00", "--to", f"{DAY}T15:30",
                                    "--tz", "Asia/Shanghai"))
    check_rows("awards", header, named, expected(world, tables, "awards", f"{DAY}T12:00:00", f"{DAY}T15:30:00"),
               CHINA, xlsx=False)


def test_zones_are_names_and_offsets() -> None:
    at = datetime(2026, 11, 20, tzinfo=UTC)
    for text, hours in (("+08:00", 8), ("UTC+0800", 8), ("-05:30", -5.5), ("UTC", 0), ("Asia/Shanghai", 8)):
        assert parse_zone(text).utcoffset(at) == timedelta(hours=hours), text


@pytest.mark.parametrize("kind, fmt", [("awards", "csv"), ("alerts", "csv"), ("segments", "csv"),
                                       ("awards", "xlsx")])
def test_an_empty_range_gives_the_header_only(world, tables, kind, fmt) -> None:
    path = export(world, kind, "--from", "2026-12-01", "--to", "2026-12-31", fmt=fmt)
    header, rows = read_xlsx(path, kind) if fmt == "xlsx" else read_csv(path)
    assert rows == []
    names = [c for c in tables[kind][0] if not c.endswith("_ms")]  # the table's columns, in order
    assert header == names + (["prize_yuan"] if kind == "awards" else [])


def test_no_bom_and_standard_output(world) -> None:
    _, with_bom = read_csv(export(world, "alerts", "--from", DAY, "--to", DAY))
    _, without = read_csv(export(world, "alerts", "--from", DAY, "--to", DAY, "--no-bom"), bom=False)
    assert with_bom == without
    proc = ok(sh("export", "alerts", "--config", str(world["config"]), "--from", DAY, "--to", DAY, "--output", "-",
                 cwd=world["cwd"]))
    assert proc.stdout.startswith(BOM)
    assert list(csv.DictReader(io.StringIO(proc.stdout.removeprefix(BOM)))) == with_bom
    assert f"{len(with_bom)} alerts" in proc.stderr


# --------------------------------------------------------------------------- bad arguments


def run_here(world: dict, *args: str, capsys, monkeypatch) -> tuple[int, str]:
    """``scanstream export ARGS`` in this process: (exit status, stderr).  Only for commands that
    stop before ClickHouse: opening it here fails the test (chdb must not open in this process)."""
    def never(config):
        raise AssertionError("an argument check opened ClickHouse")
    monkeypatch.setattr(export_module, "open_readonly", never)
    try:
        status = cli_main(["export", "--config", str(world["config"]), *args])
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (("payouts", "--from", DAY, "--to", DAY), "invalid choice: 'payouts'"),
    (("awards", "--from", "2026-13-01", "--to", DAY), "'2026-13-01' is not a date or date-time"),
    (("awards", "--from", "yesterday", "--to", DAY), "expected ISO 8601"),
    (("awards", "--from", DAY, "--to", "2026-11-19"), "is not after --from"),
    (("awards", "--from", f"{DAY}T10:00", "--to", f"{DAY}T10:00"), "expected a non-empty range"),
    (("awards", "--from", DAY, "--to", DAY, "--tz", "Mars/Olympus"), "'Mars/Olympus' is not a time zone"),
    (("awards", "--from", DAY, "--to", DAY, "--tz", "+08:10"), "'+08:10' is no zone's offset"),
    (("segments", "--from", f"{DAY}T10:00", "--to", DAY), "segment snapshots are daily; expected a date"),
    (("segments", "--from", DAY, "--to", DAY, "--tz", "UTC"), "expected no --tz for segments"),
    (("segments", "--from", "2026-11-21", "--to", DAY), "is before --from"),
    (("awards", "--from", DAY, "--to", DAY, "--format", "xlsx", "--output", "-"), "expected a file name"),
    (("awards", "--from", DAY, "--to", DAY, "--format", "pdf"), "invalid choice: 'pdf'"),
    (("awards", "--from", DAY, "--to", DAY, "--page-rows", "0"), "'0' is not a row count"),
    (("awards", "--from", DAY), "the following arguments are required: --to"),
])
def test_bad_arguments_exit_2_with_a_message(world, capsys, monkeypatch, args, message) -> None:
    status, err = run_here(world, *args, capsys=capsys, monkeypatch=monkeypatch)
    assert status == 2, (status, err)
    assert message in err, err
    assert err.startswith(("usage:", "scanstream: ")), err


def test_xlsx_without_xlsxwriter_says_how_to_install(world, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "xlsxwriter", None)  # `import xlsxwriter` now raises ImportError
    out = world["cwd"] / "never.xlsx"
    status, err = run_here(world, "awards", "--from", DAY, "--to", DAY, "--format", "xlsx", "--output", str(out),
                           capsys=capsys, monkeypatch=monkeypatch)
    assert status == 3, err
    assert "pip install 'scanstream[xlsx]'" in err and not out.exists()


def test_an_unwritable_output_exits_6_and_leaves_nothing(world) -> None:
    missing = world["cwd"] / "no-such-folder" / "awards.csv"
    proc = sh("export", "awards", "--config", str(world["config"]), "--from", DAY, "--to", DAY,
              "--output", str(missing), cwd=world["cwd"])
    assert proc.returncode == 6, proc.stderr
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert not [p for p in world["cwd"].iterdir() if p.name.startswith(".")], "a temporary file was left"


# --------------------------------------------------------------------------- query --format


def parse_back(text: str, like):
    """A CSV cell read as the type of the sink's value ``like``."""
    if isinstance(like, datetime):
        return datetime.fromisoformat(text)
    if isinstance(like, bool):
        return text == "true"
    if isinstance(like, int):
        return int(text)
    if isinstance(like, Decimal):
        return Decimal(text)
    if isinstance(like, list):
        return json.loads(text)
    return text


def json_back(value, like):
    """A JSON value read as the type of the sink's value ``like``."""
    if isinstance(like, datetime):
        return datetime.fromisoformat(value)
    if isinstance(like, Decimal):
        return Decimal(value)
    return value


QUERY_SQL = ("SELECT alert_id, ts, count, detail, toDecimal64(count / 4, 2) AS quarter, [tenant, count] AS pair "
             "FROM alerts FINAL ORDER BY alert_id")


def test_query_csv_and_jsonl_parse_back_to_the_sink_values(world) -> None:
    names, rows = sink_query(world, QUERY_SQL)
    assert rows and any('"' in r[3] and "," in r[3] for r in rows)  # detail needs CSV quoting
    as_csv = ok(sh("query", "--config", str(world["config"]), "--format", "csv", QUERY_SQL, cwd=world["cwd"])).stdout
    assert not as_csv.startswith(BOM)  # for programs: no byte order mark
    reader = csv.reader(io.StringIO(as_csv))
    assert next(reader) == names
    got = [[parse_back(cell, like) for cell, like in zip(line, ref, strict=True)] for line, ref in zip(reader, rows)]
    assert got == [list(r) for r in rows]
    lines = query_jsonl(world, QUERY_SQL)
    assert [list(line) for line in lines] == [names] * len(rows)
    assert [[json_back(line[n], like) for n, like in zip(names, ref)] for line, ref in zip(lines, rows)] == \
        [list(r) for r in rows]
