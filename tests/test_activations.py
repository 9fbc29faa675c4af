"""空码赋值 (DESIGN.md "Reference data", activations.csv; "Verdicts" 7 ``not_activated``).

A hand-built world, every expectation worked out by hand from DESIGN.md:

* tenant 7, the DESIGN.md test key; batches 42 (unit, SKU-A, activated, size 10 000), 44 (unit,
  SKU-A, *not* activated, size 1 000) and case batch 42 (SKU-A-CASE, activated);
* activations.csv: batch 44 serials 100..199 bound to SKU-C "Porter" from T0
  (2026-11-20T08:00:00+08:00), batch 44 serial 300 alone bound to SKU-A from a day before T0,
  and activated batch 42 serials 500..599 re-bound to SKU-R from T0 + 10 minutes;
* campaign "porter" pays every ok consumer scan of SKU-C, campaign "lager" every one of SKU-A.

Then the same rules through every way the registry arrives: the CSV loader's refusals of
hostile rows, ``scanstream codes activate`` on a registry folder, a running worker's registry
reload (in process, and a real ``scanstream worker`` on Redis and a broker), and the embedded
``run``.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from scanstream.cli import exits
from scanstream.cli import main as cli_main
from scanstream.engine import config as config_mod
from scanstream.engine import outcomes
from scanstream.engine.pipeline import Pipeline
from scanstream.engine.registry import Registry, RegistryError
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.ext import codec

REPO = Path(__file__).resolve().parents[1]
LOCAL_TOML = REPO / "config" / "local.toml"
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")  # DESIGN.md test key, tenant 7 key_id 0
TENANT = 7
CST = dt.timezone(dt.timedelta(hours=8))
#: 2026-11-20T08:00:00+08:00 = 2026-11-20T00:00:00Z
T0 = int(dt.datetime(2026, 11, 20, 8, tzinfo=CST).timestamp()) * 1000
MINUTE = 60_000
DAY = 1440 * MINUTE

BATCHES = ("tenant,batch,kind,sku,product,activated,size\n"
           "7,42,unit,SKU-A,Lager,1,10000\n"
           "7,44,unit,SKU-A,\"Lager, printed empty\",0,1000\n"
           "7,42,case,SKU-A-CASE,\"Lager, case of 12\",1,1000\n")
DEALERS = "dealer_id,tenant,name,channel,regions,manager,webhook\nD-GD,7,Guangdong KA,KA,44,wang.li,\n"
SHIPMENTS = ("tenant,batch,kind,serial_from,serial_to,dealer_id,shipped_at\n"
             "7,42,unit,0,9999,D-GD,2026-11-01\n7,44,unit,0,999,D-GD,2026-11-01\n")
STORES = "store_id,tenant,dealer_id,region,channel\nS-SZ,7,D-GD,440304,KA\n"
ACTIVATIONS_HEADER = "tenant,batch,serial_from,serial_to,sku,product,activated_at\n"
ACTIVATIONS = (ACTIVATIONS_HEADER
               + "7,44,100,199,SKU-C,Porter,2026-11-20T08:00:00+08:00\n"  # = T0
               + "7,44,300,300,SKU-A,\"Lager, late label\",2026-11-19T00:00:00Z\n"  # T0 - 1 day
               + "7,42,500,599,SKU-R,Radler,2026-11-20T00:10:00Z\n")  # T0 + 10 min
FILES = {"batches.csv": BATCHES, "dealers.csv": DEALERS, "shipments.csv": SHIPMENTS, "stores.csv": STORES}


def write_registry(folder: Path, activations: str | None = ACTIVATIONS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (folder / name).write_text(text, encoding="utf-8")
    if activations is not None:
        (folder / "activations.csv").write_text(activations, encoding="utf-8")
    return folder


def campaign(cid: str, sku: str) -> dict:
    return {"id": cid, "tenant": TENANT, "skus": [sku], "start": dt.datetime(2026, 11, 1, tzinfo=CST),
            "end": dt.datetime(2027, 1, 1, tzinfo=CST), "budget_cents": 1_000_000, "daily_cap": 1000,
            "seed": cid, "tiers": [{"name": "win", "cents": 100, "probability": 1.0, "stock": 10_000}]}


def make_config():
    return config_mod.parse({
        "tenants": [{"id": TENANT, "name": "Test brewery", "keys": [{"key_id": 0, "hex": KEY.hex()}]}],
        "engine": {"batch_size": 100, "resolve_gps": False},
        "campaigns": [campaign("porter", "SKU-C"), campaign("lager", "SKU-A")],
    }, Path("/nonexistent/scanstream.toml"))


def code(batch: int, serial: int, kind: int = 0) -> str:
    return codec.encode(KEY, TENANT, batch, serial, kind=kind)


def event(scan_id: str, code_text: str, ts: int = T0, user: str = "wx-1", **fields) -> bytes:
    return orjson.dumps({"scan_id": scan_id, "ts": ts, "code": code_text, "user_id": user, "region": "440304",
                         **fields})


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    return Registry.load(write_registry(tmp_path_factory.mktemp("registry")))


def rows_of(pipeline: Pipeline, lines: list[bytes]) -> list[dict]:
    """The scan rows, each with ``paid_by``: the campaign that paid it a prize, or ''."""
    rows = outcomes.rows(pipeline.process(lines).scans, outcomes.SCAN_COLUMNS)
    for row in rows:  # a scan's campaign column names the campaign that judged it, won or not
        row["paid_by"] = row["campaign"] if row["draw"] == "won" else ""
    return rows


# (scan, verdict, sku, campaign that pays it): by hand from the three ranges above
CASES = [
    # batch 44 (not activated), range 100..199 from T0: both ends in, one past each end out
    ("44/99", event("a1", code(44, 99)), "not_activated", "SKU-A", ""),
    ("44/100 at T0", event("a2", code(44, 100)), "ok", "SKU-C", "porter"),
    ("44/199", event("a3", code(44, 199)), "ok", "SKU-C", "porter"),
    ("44/200", event("a4", code(44, 200)), "not_activated", "SKU-A", ""),
    ("44/150 1 ms before T0", event("a5", code(44, 150), ts=T0 - 1), "not_activated", "SKU-A", ""),
    # the one-serial range 300..300, active since the day before
    ("44/299", event("a6", code(44, 299)), "not_activated", "SKU-A", ""),
    ("44/300", event("a7", code(44, 300)), "ok", "SKU-A", "lager"),
    ("44/301", event("a8", code(44, 301)), "not_activated", "SKU-A", ""),
    # activated batch 42: outside its range the batch decides; inside, the range from its time on
    ("42/499", event("a9", code(42, 499)), "ok", "SKU-A", "lager"),
    ("42/500 before its time", event("a10", code(42, 500), ts=T0 + 10 * MINUTE - 1), "not_activated", "SKU-A", ""),
    ("42/599 at its time", event("a11", code(42, 599), ts=T0 + 10 * MINUTE), "ok", "SKU-R", ""),
    ("42/600", event("a12", code(42, 600)), "ok", "SKU-A", "lager"),
    # a case code with the same numbers is another code: the unit range does not cover it
    ("case 42/550", event("a13", code(42, 550, kind=1)), "ok", "SKU-A-CASE", ""),
]


@pytest.mark.parametrize("line,verdict,sku,paid_by", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_code_is_judged_by_the_range_that_covers_it(registry, line, verdict, sku, paid_by):
    row = rows_of(Pipeline(make_config(), registry, MemoryStateStore()), [line])[0]
    assert (row["verdict"], row["sku"], row["paid_by"]) == (verdict, sku, paid_by)
    assert row["prize_cents"] == (100 if paid_by else 0)


def test_all_cases_in_one_batch_give_the_same_answers(registry):
    """The lookup is one searchsorted over the batch: mixing the codes changes nothing."""
    rows = rows_of(Pipeline(make_config(), registry, MemoryStateStore()), [c[1] for c in CASES])
    assert [(r["verdict"], r["sku"], r["paid_by"]) for r in rows] == [c[2:] for c in CASES]


def test_a_scan_before_activation_claims_nothing(registry):
    """not_activated comes before repeat: the early scan does not use up the code's first scan, so
    the first scan after activated_at is ok, and wins; one more is a repeat."""
    pipeline = Pipeline(make_config(), registry, MemoryStateStore())
    early, first, again = rows_of(pipeline, [event("b1", code(44, 120), ts=T0 - MINUTE),
                                             event("b2", code(44, 120), ts=T0 + MINUTE, user="wx-2"),
                                             event("b3", code(44, 120), ts=T0 + 2 * MINUTE, user="wx-3")])
    assert (early["verdict"], first["verdict"], again["verdict"]) == ("not_activated", "ok", "repeat")
    assert (first["paid_by"], first["prize_cents"], again["prize_cents"]) == ("porter", 100, 0)


def test_both_state_stores_give_the_same_outcomes(registry, redis_url, redis_prefix, tmp_path):
    """Memory, the embedded store on disk and Redis: the same verdicts, skus and prizes."""
    from scanstream.engine.state.embedded import EmbeddedStateStore
    from scanstream.engine.state.redis import RedisStateStore
    lines = [c[1] for c in CASES] + [event("r1", code(44, 100), ts=T0 + MINUTE, user="wx-9")]
    stores = [MemoryStateStore(), EmbeddedStateStore(tmp_path / "state.sqlite"),
              RedisStateStore.from_url(redis_url, prefix=redis_prefix)]
    seen = []
    for store in stores:
        rows = rows_of(Pipeline(make_config(), registry, store), lines)
        seen.append([(r["verdict"], r["sku"], r["paid_by"], r["prize_cents"]) for r in rows])
        store.close()
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][-1] == ("repeat", "SKU-C", "", 0)


def test_no_activations_file_is_no_ranges(tmp_path):
    registry = Registry.load(write_registry(tmp_path / "r", activations=None))
    assert len(registry.activations.start) == 0
    row = rows_of(Pipeline(make_config(), registry, MemoryStateStore()), [event("c1", code(44, 100))])[0]
    assert row["verdict"] == "not_activated"


# --------------------------------------------------------------------------- hostile rows


def refused(tmp_path: Path, activations: str) -> str:
    with pytest.raises(RegistryError) as err:
        Registry.load(write_registry(tmp_path / uuid.uuid4().hex, activations))
    return str(err.value)


ROW = "7,44,100,199,SKU-C,Porter,2026-11-20T08:00:00+08:00"


@pytest.mark.parametrize("row,expected", [
    ("7,44,200,100,SKU-C,Porter,2026-11-20T08:00:00Z",
     r"activations.csv:3: column serial_to: 100 is below serial_from 200; expected serial_from <= serial_to"),
    ("7,44,NaN,199,SKU-C,Porter,2026-11-20T08:00:00Z",
     r"activations.csv:3: column serial_from: 'NaN' is not a whole number in ASCII digits 0-9; expected 0..4294967295"),
    ("7,44,-1,199,SKU-C,Porter,2026-11-20T08:00:00Z",
     r"activations.csv:3: column serial_from: '-1' is not a whole number"),
    ("7,44,1e3,199,SKU-C,Porter,2026-11-20T08:00:00Z", r"activations.csv:3: column serial_from: '1e3' is not a whole"),
    ("7,44,１００,199,SKU-C,Porter,2026-11-20T08:00:00Z", r"activations.csv:3: column serial_from: '１００' is not"),
    ("7,44,0,4294967296,SKU-C,Porter,2026-11-20T08:00:00Z",
     r"activations.csv:3: column serial_to: '4294967296' is out of range 0..4294967295"),
    ("7,44,0," + "9" * 5000 + ",SKU-C,Porter,2026-11-20T08:00:00Z",
     r"activations.csv:3: column serial_to: '9{40}'\.\.\. \(5000 characters\) is out of range"),
    ("7,44,900,1000,SKU-C,Porter,2026-11-20T08:00:00Z",
     r"activations.csv:3: column serial_to: 1000 is beyond batch 44's size 1000; expected a serial in 0..999"),
    ("7,45,0,10,SKU-C,Porter,2026-11-20T08:00:00Z",
     r"activations.csv:3: column batch: unit batch 45 of tenant 7 is not in batches.csv; expected a registered"),
    ("8,44,0,10,SKU-C,Porter,2026-11-20T08:00:00Z", r"activations.csv:3: column batch: unit batch 44 of tenant 8 "),
    ("7,44,0,10,,Porter,2026-11-20T08:00:00Z", r"activations.csv:3: column sku is empty"),
    ("7,44,0,10,SKU-C,Porter,2026-11-20", r"activations.csv:3: column activated_at: '2026-11-20' is not a time; "
                                         r"expected an RFC 3339 time with a zone, e.g. 2026-11-20T08:00:00\+08:00"),
    ("7,44,0,10,SKU-C,Porter,2026-11-20T08:00:00", r"activated_at: '2026-11-20T08:00:00' is not a time"),
    ("7,44,0,10,SKU-C,Porter,yesterday", r"activations.csv:3: column activated_at: 'yesterday' is not a time"),
    ("7,44,0,10,SKU-C,Porter,2026-02-30T08:00:00Z",
     r"activations.csv:3: column activated_at: '2026-02-30T08:00:00Z' is not a time \(day is out of range"),
    ("7,44,0,10,SKU-C,Porter,2026-11-20T08:00:00+24:00", r"activated_at: '2026-11-20T08:00:00\+24:00' is not a time"),
    ("7,44,0,10,SKU-C,Porter,2026-11-20T08:00:00.NaNZ", r"activated_at: '2026-11-20T08:00:00.NaNZ' is not a time"),
    ("7,44,0,10,SKU-C,Porter,１９９９-11-20T08:00:00Z", r"activated_at: '１９９９-11-20T08:00:00Z' is not a time"),
    ("7,44,0,10,SKU-C,Porter,1999-12-31T23:59:59Z",
     r"activated_at: '1999-12-31T23:59:59Z' is outside the times of scans; expected a time in 2000-01-01"),
    ("7,44,0,10,SKU-C,Porter,2100-01-01T00:00:00Z", r"activated_at: '2100-01-01T00:00:00Z' is outside the times"),
    ("7,44,150,250,SKU-D,Stout,2026-11-21T00:00:00Z",
     r"activations.csv:3: serial range 150..250 overlaps the range 100..199 on line 2 of the same batch"),
    ("7,44,199,199,SKU-D,Stout,2026-11-21T00:00:00Z", r"activations.csv:3: serial range 199..199 overlaps"),
    ("7,44,100,199,SKU-C,Porter,2026-11-20T08:00:00+08:00", r"activations.csv:3: serial range 100..199 overlaps"),
    ("7,44,0,10,SKU-C,Porter,2026-11-20T08:00:00Z,extra", None),  # a cell past the header is ignored, as elsewhere
], ids=["from>to", "NaN", "negative", "exponent", "fullwidth-digits", "2^32", "thousands-of-digits",
        "past-batch-size", "unknown-batch", "other-tenant", "empty-sku", "date-only", "no-zone", "words",
        "feb-30", "offset-24h", "fraction-NaN", "fullwidth-year", "before-2000", "2100", "overlap",
        "overlap-one-serial", "same-range-twice", "extra-cell"])
def test_hostile_rows_are_refused_naming_file_line_column_and_expectation(tmp_path, row, expected):
    text = ACTIVATIONS_HEADER + ROW + "\n" + row + "\n"
    if expected is None:
        Registry.load(write_registry(tmp_path / "r", text))
        return
    assert re.search(expected, refused(tmp_path, text))


def test_hostile_headers_are_refused(tmp_path):
    assert re.search(r"activations.csv:1: header: column 'serial_from' is named twice \(columns 3 and 8\)",
                     refused(tmp_path, "tenant,batch,serial_from,serial_to,sku,product,activated_at,serial_from\n"))
    assert re.search(r"activations.csv:1: missing column\(s\) \['activated_at'\]",
                     refused(tmp_path, "tenant,batch,serial_from,serial_to,sku,product\n"))
    assert re.search(r"activations.csv:2: column kind: 'pallet' is not unit or case",
                     refused(tmp_path, ACTIVATIONS_HEADER.replace("\n", ",kind\n") + ROW + ",pallet\n"))


def test_adjacent_ranges_and_ranges_of_other_batches_are_fine(tmp_path):
    text = (ACTIVATIONS_HEADER + ROW + "\n" + "7,44,200,299,SKU-D,Stout,2026-11-21T00:00:00Z\n"
            + "7,42,100,199,SKU-D,Stout,2026-11-21T00:00:00Z\n")
    text = text.replace(ACTIVATIONS_HEADER, ACTIVATIONS_HEADER.replace("\n", ",kind\n"), 1)
    text = text.replace("\n7,42,100,199,SKU-D,Stout,2026-11-21T00:00:00Z", "\n7,42,100,199,SKU-D,Stout,"
                        "2026-11-21T00:00:00Z,case")
    registry = Registry.load(write_registry(tmp_path / "r", text))
    assert len(registry.activations.start) == 3
    # the fraction counts to the millisecond; finer digits are dropped, as a scan's ts
    fine = Registry.load(write_registry(tmp_path / "f", ACTIVATIONS_HEADER
                                        + "7,44,0,0,SKU-C,Porter,2026-11-20T00:00:00.1239z\n"))
    assert fine.activations.at_ms.tolist() == [T0 + 123]


# --------------------------------------------------------------------------- scanstream codes activate


def cli_config(folder: Path, registry: Path, clickhouse: str = "") -> Path:
    """local.toml with ``registry`` as the registry folder, no state file, and ``clickhouse``."""
    text = LOCAL_TOML.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^dir = "[^"]*"', f"dir = {json.dumps(str(registry))}", text)
    text = re.sub(r'(?m)^clickhouse = "[^"]*"', f"clickhouse = {json.dumps(clickhouse)}", text)
    text = re.sub(r'(?m)^path = "[^"]*".*$', "", text)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scanstream.toml"
    path.write_text(text, encoding="utf-8")
    return path


def activate(config: Path, *options: str) -> int:
    return cli_main(["codes", "activate", "--config", str(config), *options])


RANGE = ("--tenant", "7", "--batch", "44", "--from", "400", "--to", "449", "--sku", "CRAFT-IPA", "--product",
         "Craft IPA, late label", "--at", "2026-11-20T09:00:00+08:00")


def test_activate_appends_a_checked_row_and_the_range_counts(tmp_path, capsys):
    registry = write_registry(tmp_path / "registry")
    config = cli_config(tmp_path / "cfg", registry)
    before = (registry / "activations.csv").read_text()
    assert activate(config, *RANGE) == exits.OK
    out = capsys.readouterr().out
    assert "activated: tenant 7 unit batch 44 serials 400..449 -> CRAFT-IPA" in out
    assert (registry / "activations.csv").read_text() == (
        before + '7,44,400,449,CRAFT-IPA,"Craft IPA, late label",2026-11-20T09:00:00+08:00\n')
    assert not list(registry.glob(".activations.csv.new"))
    loaded = Registry.load(registry)
    pipeline = Pipeline(make_config(), loaded, MemoryStateStore())
    rows = rows_of(pipeline, [event("d1", code(44, 400), ts=T0 + 60 * MINUTE - 1),
                              event("d2", code(44, 449), ts=T0 + 60 * MINUTE), event("d3", code(44, 450))])
    assert [(r["verdict"], r["sku"]) for r in rows] == [("not_activated", "SKU-A"), ("ok", "CRAFT-IPA"),
                                                        ("not_activated", "SKU-A")]
    # the same activation again (after a failed publish, say) adds nothing
    assert activate(config, *RANGE) == exits.OK
    assert "already activated" in capsys.readouterr().out
    assert (registry / "activations.csv").read_text().count("CRAFT-IPA") == 1


def test_activate_writes_a_new_file_with_every_column(tmp_path, capsys):
    registry = write_registry(tmp_path / "registry", activations=None)
    config = cli_config(tmp_path / "cfg", registry)
    assert activate(config, "--tenant", "7", "--batch", "42", "--kind", "case", "--from", "0", "--to", "9",
                    "--sku", "SKU-A-CASE", "--product", "Gift case", "--at", "2026-11-20T00:00:00Z") == exits.OK
    assert (registry / "activations.csv").read_text() == (
        "tenant,batch,kind,serial_from,serial_to,sku,product,activated_at\n"
        "7,42,case,0,9,SKU-A-CASE,Gift case,2026-11-20T00:00:00Z\n")


def test_activate_without_at_means_now(tmp_path, capsys):
    registry = write_registry(tmp_path / "registry")
    before = int(time.time() * 1000)
    assert activate(cli_config(tmp_path / "cfg", registry), *RANGE[:-2]) == exits.OK
    at = Registry.load(registry).activations.at_ms.max()
    assert before - 1000 <= at <= int(time.time() * 1000)
    # run again without --at (its publishing failed, say): the range is there already, at any time
    text = (registry / "activations.csv").read_text()
    assert activate(cli_config(tmp_path / "cfg", registry), *RANGE[:-2]) == exits.OK
    assert "already activated" in capsys.readouterr().out
    assert (registry / "activations.csv").read_text() == text


@pytest.mark.parametrize("options,message", [
    (("--from", "150", "--to", "160"),
     r"activations.csv:5: serial range 150..160 overlaps the range 100..199 on line 2"),
    (("--batch", "46"), r"activations.csv:5: column batch: unit batch 46 of tenant 7 is not in batches.csv"),
    (("--from", "-1"), r"activations.csv:5: column serial_from: '-1' is not a whole number"),
    (("--to", "10", "--from", "20"), r"column serial_to: 10 is below serial_from 20"),
    (("--at", "2026-11-20 09:00"), r"column activated_at: '2026-11-20 09:00' is not a time"),
    (("--sku", " "), r"column sku is empty"),
    (("--product", "x" * 70_000), r"activations.csv:5: column product: field longer than 65536 characters"),
], ids=["overlap", "unknown-batch", "negative", "from>to", "bad-time", "blank-sku", "huge-product"])
def test_activate_refuses_a_bad_range_and_changes_nothing(tmp_path, capsys, options, message):
    registry = write_registry(tmp_path / "registry")
    before = (registry / "activations.csv").read_bytes()
    given = dict(zip(RANGE[::2], RANGE[1::2]))
    given.update(zip(options[::2], options[1::2]))
    assert activate(cli_config(tmp_path / "cfg", registry), *[x for kv in given.items() for x in kv]) == exits.USAGE
    err = capsys.readouterr().err
    assert err.startswith("scanstream: codes activate: refused: ") and re.search(message, err), err
    assert (registry / "activations.csv").read_bytes() == before
    assert not list(registry.glob(".activations.csv.new"))


def test_activate_on_a_broken_registry_is_a_data_error(tmp_path, capsys):
    registry = write_registry(tmp_path / "registry",
                              ACTIVATIONS_HEADER + "7,44,9,1,SKU-C,Porter,2026-11-20T00:00:00Z\n")
    assert activate(cli_config(tmp_path / "cfg", registry), *RANGE) == exits.DATA
    assert "activations.csv:2: column serial_to: 1 is below serial_from 9" in capsys.readouterr().err


def test_activate_without_a_registry_folder_is_a_configuration_error(tmp_path, capsys):
    config = cli_config(tmp_path / "cfg", tmp_path / "nowhere")
    assert activate(config, *RANGE) == exits.CONFIG
    assert "registry.dir" in capsys.readouterr().err


@pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")
def test_activate_publishes_to_the_clickhouse_registry_tables(tmp_path):
    """With a ClickHouse configured the activation reaches registry_activations, and a worker
    reading the registry from ClickHouse (registry.source = "clickhouse") loads the range."""
    registry = write_registry(tmp_path / "registry")
    chdb = "chdb:" + str(tmp_path / "chdb")
    config = cli_config(tmp_path / "cfg", registry, clickhouse=chdb)
    done = subprocess.run([SCANSTREAM, "--config", str(config), "codes", "activate", *RANGE],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "registry_activations 4" in done.stdout
    # chdb opens one data path per process: read it back in a process of its own
    probe = f"""
from scanstream.sinks.clickhouse import ClickHouseSink, connect
from scanstream.sinks.registry_tables import read_registry
from scanstream.engine.registry import Registry
sink = ClickHouseSink(connect({chdb!r}, database="scanstream"))
tables, files = read_registry(sink), Registry.load({str(registry)!r})
a, b = tables.activations, files.activations
for name in ("group_key", "start", "end", "at_ms", "sku", "product"):
    assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
print(sorted(a.sku.tolist()))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "['CRAFT-IPA', 'SKU-A', 'SKU-C', 'SKU-R']"


def test_no_publish_is_refused_when_workers_read_clickhouse(tmp_path, capsys):
    registry = write_registry(tmp_path / "registry")
    config = cli_config(tmp_path / "cfg", registry, clickhouse="http://127.0.0.1:1")
    config.write_text(config.read_text().replace("[registry]\n", "[registry]\nsource = \"clickhouse\"\n"))
    assert activate(config, *RANGE, "--no-publish") == exits.USAGE
    assert "--no-publish" in capsys.readouterr().err


# --------------------------------------------------------------------------- live in running workers


def test_an_activation_reaches_a_running_worker_through_its_registry_reload(tmp_path, capsys):
    """The worker's RegistryReloader sees activations.csv change and swaps the registry in; the
    next batch judges the range activated (the same reloader as the real worker's)."""
    from scanstream.streams.worker import RegistryReloader
    from scanstream.wiring import build_registry
    registry = write_registry(tmp_path / "registry")
    config = replace(make_config(), registry_dir=registry, registry_reload_s=1)
    pipeline = Pipeline(config, build_registry(config), MemoryStateStore())
    now = [0.0]
    reloader = RegistryReloader(config, pipeline, lambda: build_registry(config), clock=lambda: now[0])
    assert rows_of(pipeline, [event("e1", code(44, 420), ts=T0 + 2 * 60 * MINUTE)])[0]["verdict"] == "not_activated"
    assert activate(cli_config(tmp_path / "cfg", registry), *RANGE) == exits.OK
    now[0] = 5.0
    assert reloader.maybe_reload()
    row = rows_of(pipeline, [event("e2", code(44, 420), ts=T0 + 2 * 60 * MINUTE)])[0]
    assert (row["verdict"], row["sku"]) == ("ok", "CRAFT-IPA")


@pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")
def test_a_real_worker_on_redis_picks_up_an_activation_while_it_runs(tmp_path, broker, redis_url, redis_prefix):
    """``scanstream worker`` (Redis state, a Tansu broker, files registry reloaded every second):
    a code of the range is not_activated, ``codes activate`` runs beside the worker, and a later
    scan of the code is ok with the range's sku, its earlier scan having claimed nothing."""
    from kafka import KafkaProducer

    from config_writer import worker_toml
    from scanstream.streams import envelope
    from test_worker import consume, stop

    registry = write_registry(tmp_path / "registry")
    names = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in ("scans", "results", "awards", "alerts", "dlq", "group")}
    kafka = {"bootstrap": broker.bootstrap, **{f"{k}_topic": names[k] for k in ("scans", "results", "awards",
                                                                                  "alerts", "dlq")},
             "group": names["group"], "partitions": 1, "take": 16, "within_ms": 50, "session_timeout_s": 4}
    text = worker_toml(LOCAL_TOML.read_text(encoding="utf-8"), registry=registry, chdb=tmp_path / "chdb",
                       state="redis", redis={"prefix": redis_prefix, "url": redis_url}, kafka=kafka)
    text = text.replace("[registry]\n", "[registry]\nreload_seconds = 1\n", 1)
    config_path = tmp_path / "worker.toml"
    config_path.write_text(text, encoding="utf-8")
    ts = T0 + 2 * 60 * MINUTE
    key = codec.encode(bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f"), TENANT, 44, 420, key_id=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")

    def send(line: bytes) -> None:
        producer.send(names["scans"], envelope.encode([line]), partition=0,
                      headers=[(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())])
        producer.flush()

    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen([SCANSTREAM, "--config", str(config_path), "worker", "--loglevel", "info"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        send(event("w-1", key, ts=ts))
        first = [orjson.loads(x) for x in consume(broker.bootstrap, names["results"], 1, timeout_s=120)]
        assert [r["verdict"] for r in first] == ["not_activated"], (tmp_path / "worker.log").read_text()[-3000:]
        # beside the running worker (it holds the embedded ClickHouse): the folder only
        done = subprocess.run([SCANSTREAM, "--config", str(config_path), "codes", "activate", *RANGE,
                               "--no-publish"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        # the worker reloads within a second of its next batch: send until the range is live
        outcome, deadline, n = None, time.monotonic() + 120, 0
        while time.monotonic() < deadline:
            n += 1
            send(event(f"w-{n + 1}", key, ts=ts, user=f"wx-{n}"))
            got = {r["scan_id"]: r for r in map(orjson.loads, consume(broker.bootstrap, names["results"],
                                                                       n + 1, timeout_s=30))}
            outcome = got.get(f"w-{n + 1}")
            if outcome is not None and outcome["verdict"] != "not_activated":
                break
            time.sleep(0.5)  # the worker reloads after a batch once its reload interval has passed
        assert outcome is not None and (outcome["verdict"], outcome["sku"]) == ("ok", "CRAFT-IPA"), outcome
        assert worker.poll() is None
    finally:
        producer.close()
        stop(worker)
        log.close()


def test_the_embedded_run_judges_ranges(tmp_path, capsys):
    """``scanstream run`` (embedded state on disk) over scans of the ranges: the results file."""
    registry = write_registry(tmp_path / "registry")
    config = cli_config(tmp_path / "cfg", registry)
    config.write_text(config.read_text().replace("[state]\n", f"[state]\npath = {json.dumps(str(tmp_path / 's'))}\n"))
    key = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")  # local.toml signs tenant 7 with key_id 1
    scans = tmp_path / "scans.jsonl"
    scans.write_bytes(b"\n".join([
        event("f1", codec.encode(key, TENANT, 44, 100, key_id=1), ts=T0 - 1),
        event("f2", codec.encode(key, TENANT, 44, 100, key_id=1), ts=T0),
        event("f3", codec.encode(key, TENANT, 44, 200, key_id=1), ts=T0),
        event("f4", codec.encode(key, TENANT, 42, 550, key_id=1), ts=T0 + DAY),
    ]) + b"\n")
    results = tmp_path / "results.jsonl"
    assert cli_main(["run", "--config", str(config), "--input", str(scans), "--results", str(results)]) == exits.OK
    rows = [orjson.loads(line) for line in results.read_bytes().splitlines()]
    assert [(r["verdict"], r["sku"]) for r in rows] == [("not_activated", "SKU-A"), ("ok", "SKU-C"),
                                                        ("not_activated", "SKU-A"), ("ok", "SKU-R")]


def test_activate_keeps_the_files_line_ends_and_column_order(tmp_path, capsys):
    """A file saved by Excel (byte order mark, CRLF, its own column order) gets a row that fits."""
    registry = write_registry(tmp_path / "registry", None)
    (registry / "activations.csv").write_bytes(
        "\ufeffactivated_at,sku,product,tenant,batch,serial_from,serial_to\r\n"
        "2026-11-20T08:00:00+08:00,SKU-C,Porter,7,44,100,199\r\n".encode())
    assert activate(cli_config(tmp_path / "cfg", registry), *RANGE) == exits.OK
    assert (registry / "activations.csv").read_bytes().endswith(
        b'2026-11-20T09:00:00+08:00,CRAFT-IPA,"Craft IPA, late label",7,44,400,449\r\n')
    assert len(Registry.load(registry).activations.start) == 2
