"""KPI views and Grafana panels against a real ClickHouse (chdb) loaded with a known stream.

The module loads a small, hand-built stream (scans with redeliveries, alerts, awards, registry
rows, campaigns) into one chdb database through ``ClickHouseSink`` (``ensure_schema`` applies
config/clickhouse/*.sql, views included), then writes it AGAIN in every way the engine may
repeat itself: the same batch under the same dedup token, redelivered scans (replay = 1), a
batch re-cut after a crash (replay = 0 copies under a new token), a batch re-sent under a new
token, alerts/awards/registry/campaign rows written twice.  Every KPI view must read the same
before and after, and equal the numbers worked out by hand below.  The trade's views (shopping
guides, outbound shipments) are also run on small databases of their own, with hostile rows
written by hand (redeliveries, a reused scan_id, a second guide, a case shipped twice).

Then every panel of the dashboards that read ClickHouse (config/grafana/dashboards/*.json but
the worker's, which reads Prometheus only and is tests/test_metrics.py's) is run: its rawSql
with the dashboard variables and the ClickHouse plugin's macros replaced by what the plugin
would send (``render``, after pkg/macros/macros.go of grafana/clickhouse-datasource).  Its
units (ratios in percent), its days (cut in the dashboards' zone) and its names (Chinese
region names, dealers' names) are checked too.

chdb hosts one data path per process: this module owns one (module-scoped fixture) and
closes its client at the end, so other modules can open theirs.
"""
from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

pytest.importorskip("chdb")

from scanstream.engine.outcomes import ALERT_COLUMNS, AWARD_COLUMNS, SCAN_COLUMNS
from scanstream.sinks.clickhouse import DEFAULT_DDL_DIR, ClickHouseSink, connect
from scanstream.engine.registry_schema import SCHEMA as REGISTRY_SCHEMA
from scanstream.sinks.registry_tables import insert_spec

GRAFANA_DIR = Path(__file__).resolve().parent.parent / "config" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
PANEL_LIST = GRAFANA_DIR / "panels.json"
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"

#: The `campaigns` table as the engine is to write it (config/clickhouse/200_campaigns.sql).
CAMPAIGN_COLUMNS = (
    ("id", "O", "String"), ("tenant", "uint16", "UInt16"), ("budget_cents", "uint64", "UInt64"),
    ("start", "int64", "DateTime64(3, 'UTC')"), ("end", "int64", "DateTime64(3, 'UTC')"),
    ("tiers", "O", "Array(String)"), ("tier_cents", "O", "Array(UInt32)"), ("tier_stock", "O", "Array(UInt64)"),
)
WINTER, SPRING = "winter-2026", "spring-2027"


def ms(local: str) -> int:
    """Epoch milliseconds of an RFC 3339 time (the stream is written in China time)."""
    return int(datetime.fromisoformat(local).timestamp() * 1000)


def columns(rows: Sequence[Mapping[str, Any]], spec) -> dict[str, np.ndarray]:
    """A columnar batch from row dicts; missing fields are zero / empty, list values stay one element."""
    out = {}
    for name, dtype, _ in spec:
        if dtype == "O":
            arr = np.empty(len(rows), dtype=object)
            for i, row in enumerate(rows):
                arr[i] = row.get(name, "")
        else:
            arr = np.array([row.get(name, 0) for row in rows], dtype=dtype)
        out[name] = arr
    return out


# --------------------------------------------------------------------------- the known stream

def scan(scan_id: str, at: str, user: str, verdict: str, code: tuple[int, int, int] = (0, 0, 0), *,
         tenant: int = 7, region: str = "", sku: str = "", dealer: str = "", role: str = "consumer",
         diversion: str = "none", campaign: str = WINTER, tier: str = "", cents: int = 0, draw: str = "ineligible",
         replay: int = 0, channel: str = "", store: str = "") -> dict[str, Any]:
    kind, batch, serial = code
    return {"scan_id": scan_id, "ts": ms(at), "tenant": tenant, "kind": kind, "batch": batch, "serial": serial,
            "code": f"CODE-{tenant}-{kind}-{batch}-{serial}", "user_id": user, "role": role, "region": region,
            "channel": channel, "sku": sku, "dealer_id": dealer, "verdict": verdict, "diversion": diversion,
            "campaign": campaign, "prize_tier": tier, "prize_cents": cents, "draw": draw, "store_id": store,
            "replay": replay}


def replayed(row: dict[str, Any], replay: int = 1) -> dict[str, Any]:
    return {**row, "replay": replay}


D1, D2 = "2026-11-20", "2026-11-21"  # the campaign's two days, China time
# Codes are (kind, batch, serial); batch 101/104 = BEER-500, 102 = BEER-330, 201 = cases of BEER-500.
S = {r["scan_id"]: r for r in [
    # u1 scanned once before the campaign: u1 is not a new user during it
    scan("s00", "2026-11-10T12:00:00+08:00", "u1", "ok", (0, 102, 3), region="330106", sku="BEER-330",
         dealer="D-ZJ", campaign="", draw="none"),
    scan("s01", f"{D1}T10:00:00+08:00", "u1", "ok", (0, 101, 0), region="440106", sku="BEER-500", dealer="D-GD",
         tier="8.8", cents=880, draw="won"),
    scan("s02", f"{D1}T10:00:30+08:00", "u1", "ok", (0, 101, 1), region="440106", sku="BEER-500", dealer="D-GD",
         draw="no_prize"),
    scan("s03", f"{D1}T10:01:00+08:00", "u2", "ok", (0, 101, 5), region="110105", sku="BEER-500", dealer="D-BJ",
         tier="16.6", cents=1660, draw="won"),
    scan("s04", f"{D1}T10:01:30+08:00", "u2", "repeat", (0, 101, 0), region="440106", sku="BEER-500",
         dealer="D-GD"),
    # the campaign leaves Zhejiang (33) out: u3's ok scan there is no draw
    scan("s05", f"{D1}T10:02:00+08:00", "u3", "ok", (0, 102, 0), region="330106", sku="BEER-330", dealer="D-ZJ"),
    scan("s06", f"{D1}T10:02:10+08:00", "u4", "ok", (0, 101, 6), region="430102", sku="BEER-500", dealer="D-BJ",
         diversion="region", draw="no_prize"),
    scan("s07", f"{D1}T10:02:20+08:00", "u4", "bad_mac", (0, 101, 7), region="440305"),
    scan("s08", f"{D1}T10:03:00+08:00", "u4", "bad_mac", (0, 101, 8), region="440106"),
    scan("s09", f"{D1}T10:03:30+08:00", "u1", "bad_mac", (0, 101, 9), region="110105"),
    scan("s10", f"{D1}T10:04:00+08:00", "store-S1", "ok", (1, 201, 0), region="440106", sku="BEER-500-CASE",
         dealer="D-GD", role="store", diversion="channel", channel="horeca", store="S1"),
    scan("s11", f"{D1}T10:05:00+08:00", "u2", "malformed", tenant=0, campaign="", draw="none"),
    scan("s12", f"{D2}T09:00:00+08:00", "u5", "ok", (0, 102, 1), region="320102", sku="BEER-330", dealer="D-ZJ",
         tier="8.8", cents=880, draw="won"),
    scan("s13", f"{D2}T09:00:20+08:00", "u1", "ok", (0, 102, 2), region="330106", sku="BEER-330", dealer="D-ZJ"),
    scan("s14", f"{D2}T09:01:00+08:00", "u3", "repeat", (0, 101, 6), region="430102", sku="BEER-500",
         dealer="D-BJ", diversion="region"),
    scan("s15", f"{D2}T09:01:30+08:00", "u6", "not_activated", (0, 104, 0), region="440106", sku="BEER-500"),
    # another tenant, same batch number: every view must keep tenants apart
    scan("s16", f"{D1}T10:00:00+08:00", "u1", "ok", (0, 101, 0), tenant=8, region="440106", sku="WINE",
         campaign="", draw="none"),
    # the trade (outside 10:00-10:10 of D1, the window the live panels are checked on): guide G1 sells
    # 101/0 before u1 opens it (s01, whose prize earns G1 a commission); guide G2 scans it again the next
    # day; the warehouse ships case 201/0 (packed with 101/0-3) to D-GD and unit 101/5 to D-BJ
    scan("s17", f"{D1}T09:30:00+08:00", "guide-G1", "ok", (0, 101, 0), region="440106", sku="BEER-500",
         dealer="D-GD", role="guide", campaign="", draw="none"),
    scan("s18", f"{D2}T09:30:00+08:00", "guide-G2", "repeat", (0, 101, 0), region="440106", sku="BEER-500",
         dealer="D-GD", role="guide", campaign="", draw="none"),
    scan("s19", f"{D1}T09:00:00+08:00", "wh-1", "ok", (1, 201, 0), region="440103", sku="BEER-500-CASE",
         dealer="D-GD", role="warehouse", campaign="", draw="none"),
    scan("s20", f"{D1}T09:00:30+08:00", "wh-1", "ok", (0, 101, 5), region="440103", sku="BEER-500",
         dealer="D-BJ", role="warehouse", campaign="", draw="none"),
]}
BATCH_A = [S[f"s{i:02d}"] for i in range(10)]
# s13's first write was lost: only its redelivered copy (replay = 1) ever reached ClickHouse
BATCH_B = [S["s10"], S["s11"], S["s12"], replayed(S["s13"]), S["s14"], S["s15"], S["s16"],
           S["s17"], S["s18"], S["s19"], S["s20"]]
REDELIVERED = [replayed(S["s01"]), replayed(S["s06"]), replayed(S["s14"]), replayed(S["s17"]), replayed(S["s19"])]
RECUT = [S["s02"], S["s03"], S["s12"]]  # re-processed after a crash with the state lost: replay = 0 again

ALERTS = [
    {"alert_id": "a1", "ts": ms(f"{D1}T10:02:10+08:00"), "tenant": 7, "alert": "diversion", "subtype": "region",
     "dealer_id": "D-BJ", "manager": "zhao.min", "city": "4301", "count": 1,
     "window_start": ms(f"{D1}T10:00:00+08:00"), "window_end": ms(f"{D1}T10:10:00+08:00")},
    # s10's case 201/0 went to D-GD by the outbound scan s19 (engine/diversion.py names what sent it)
    {"alert_id": "a2", "ts": ms(f"{D1}T10:04:00+08:00"), "tenant": 7, "alert": "diversion", "subtype": "channel",
     "dealer_id": "D-GD", "manager": "wang.li", "city": "4401", "count": 1,
     "window_start": ms(f"{D1}T10:00:00+08:00"), "window_end": ms(f"{D1}T10:10:00+08:00"),
     "detail": json.dumps({"role": "store", "scan_id": "s10", "case_batch": 201, "case_serial": 0,
                           "sent_by": "outbound_scan"})},
    {"alert_id": "a3", "ts": ms(f"{D1}T10:03:00+08:00"), "tenant": 7, "alert": "cloned_code", "subtype": "users",
     "city": "4401", "code": "CODE-X", "count": 4},
    {"alert_id": "a4", "ts": ms(f"{D2}T09:00:00+08:00"), "tenant": 7, "alert": "cloned_code",
     "subtype": "provinces", "city": "3101", "code": "CODE-Y", "count": 2},
    {"alert_id": "a5", "ts": ms(f"{D1}T10:15:00+08:00"), "tenant": 7, "alert": "cloned_code", "subtype": "users",
     "city": "4401", "code": "CODE-X", "count": 4},  # the same code again, next window
]


def conflict(alert_id: str, at: str, subtype: str, scan_id: str, first_user: str, user: str, code: str, *,
             tenant: int = 7) -> dict[str, Any]:
    """A scan_id_conflict alert as engine/conflicts.py writes it (no dealer or city; detail names both users)."""
    detail = {"scan_id": scan_id, "first_user": first_user, "user": user, "device_id": f"dev-{user}",
              "ip": "10.0.0.1"}
    return {"alert_id": alert_id, "ts": ms(at), "tenant": tenant, "alert": "scan_id_conflict", "subtype": subtype,
            "code": code, "count": 1, "window_start": ms(at), "window_end": ms(at),
            "detail": json.dumps(detail, separators=(",", ":"))}


# Reused scan ids.  The conflicting scans themselves are not in the stream: their scan_events rows
# share (tenant, scan_id) with the originals and collapse into them; the alerts are what is left.
CONFLICTS = [
    # u1 sent s02's request id again with another code (101/2), then again from another place
    conflict("c1", f"{D1}T10:06:00+08:00", "same_user", "s02", "u1", "u1", "CODE-7-0-101-2"),
    conflict("c2", f"{D2}T09:05:00+08:00", "same_user", "s02", "u1", "u1", "CODE-7-0-101-1"),
    # u9 replayed u2's winning s03 to take its prize
    conflict("c3", f"{D2}T09:10:00+08:00", "other_user", "s03", "u2", "u9", "CODE-7-0-101-5"),
]
AWARDS = [{"scan_id": r["scan_id"], "ts": r["ts"], "tenant": r["tenant"], "campaign": r["campaign"],
           "kind": r["kind"], "batch": r["batch"], "serial": r["serial"], "user_id": r["user_id"],
           "prize_tier": r["prize_tier"], "prize_cents": r["prize_cents"], "beneficiary": "consumer"}
          for r in (S["s01"], S["s03"], S["s12"])]
#: s01's prize earns guide G1 (who sold 101/0 in s17) a commission, from the campaign's budget.
COMMISSION_CENTS = 100
COMMISSIONS = [{**AWARDS[0], "user_id": "guide-G1", "prize_tier": "commission", "prize_cents": COMMISSION_CENTS,
                "beneficiary": "guide"}]
CAMPAIGNS = [
    {"id": WINTER, "tenant": 7, "budget_cents": 10_000, "start": ms(f"{D1}T00:00:00+08:00"),
     "end": ms("2026-11-22T00:00:00+08:00"), "tiers": ["8.8", "16.6", "88"], "tier_cents": [880, 1660, 8800],
     "tier_stock": [100, 20, 2]},
    {"id": SPRING, "tenant": 7, "budget_cents": 5_000, "start": ms("2027-03-01T00:00:00+08:00"),
     "end": ms("2027-04-01T00:00:00+08:00"), "tiers": [], "tier_cents": [], "tier_stock": []},
]
REGISTRY = {
    "registry_batches": [
        {"tenant": 7, "batch": 101, "kind": "unit", "sku": "BEER-500", "product": "Lager 500 ml", "activated": 1,
         "size": 10},
        {"tenant": 7, "batch": 102, "kind": "unit", "sku": "BEER-330", "product": "Lager 330 ml", "activated": 1,
         "size": 20},
        {"tenant": 7, "batch": 104, "kind": "unit", "sku": "BEER-500", "product": "Lager 500 ml (spring)",
         "activated": 0, "size": 5},
        {"tenant": 7, "batch": 201, "kind": "case", "sku": "BEER-500-CASE", "product": "Case of 12",
         "activated": 1, "size": 4},
        {"tenant": 8, "batch": 101, "kind": "unit", "sku": "WINE", "product": "Red", "activated": 1, "size": 100},
    ],
    "registry_dealers": [
        {"dealer_id": "D-GD", "tenant": 7, "name": "Guangdong KA", "channel": "KA", "regions": ["44"],
         "manager": "wang.li"},
        {"dealer_id": "D-BJ", "tenant": 7, "name": "Beijing Distribution", "channel": "KA", "regions": ["11"],
         "manager": "zhao.min"},
        {"dealer_id": "D-ZJ", "tenant": 7, "name": "Zhejiang E-commerce", "channel": "ecommerce",
         "regions": ["33", "3201"], "manager": "zhou.yu"},
    ],
    "registry_shipments": [
        {"tenant": 7, "batch": 101, "kind": "unit", "serial_from": 0, "serial_to": 4, "dealer_id": "D-GD"},
        {"tenant": 7, "batch": 101, "kind": "unit", "serial_from": 5, "serial_to": 9, "dealer_id": "D-BJ"},
        {"tenant": 7, "batch": 102, "kind": "unit", "serial_from": 0, "serial_to": 19, "dealer_id": "D-ZJ"},
        {"tenant": 7, "batch": 104, "kind": "unit", "serial_from": 0, "serial_to": 4, "dealer_id": "D-GD"},
        {"tenant": 7, "batch": 201, "kind": "case", "serial_from": 0, "serial_to": 3, "dealer_id": "D-GD"},
    ],
    "registry_stores": [{"store_id": "S1", "tenant": 7, "dealer_id": "D-GD", "region": "440106", "channel": "KA"}],
    "registry_activations": [],
    "registry_packing": [{"tenant": 7, "case_batch": 201, "case_serial": 0, "unit_batch": 101, "unit_serial_from": 0,
                          "unit_serial_to": 3}],
}


def write_registry_and_campaigns(sink: ClickHouseSink) -> None:
    for f in REGISTRY_SCHEMA:
        sink.insert(f.table, columns(REGISTRY[f.table], insert_spec(f)), insert_spec(f))
    sink.insert("campaigns", columns(CAMPAIGNS, CAMPAIGN_COLUMNS), CAMPAIGN_COLUMNS)


def load_stream(sink: ClickHouseSink) -> None:
    write_registry_and_campaigns(sink)
    sink.write_scans(columns(BATCH_A, SCAN_COLUMNS), dedup_token="scans:p0:0-9")
    sink.write_scans(columns(BATCH_B, SCAN_COLUMNS), dedup_token="scans:p0:10-20")
    sink.write_alerts(columns(ALERTS + CONFLICTS, ALERT_COLUMNS), dedup_token="alerts:p0:0-16")
    sink.write_awards(columns(AWARDS + COMMISSIONS, AWARD_COLUMNS), dedup_token="awards:p0:0-16")


#: Scan rows that reach scan_events in load_duplicates (the token-repeated batch does not).
DUPLICATE_ROWS = len(REDELIVERED) + len(RECUT) + len(BATCH_B)


def load_duplicates(sink: ClickHouseSink) -> None:
    """Everything again, as a crashing, redelivering engine would write it."""
    sink.write_scans(columns(BATCH_A, SCAN_COLUMNS), dedup_token="scans:p0:0-9")  # same token: dropped
    sink.write_scans(columns(REDELIVERED, SCAN_COLUMNS), dedup_token="scans:p0:21-25")
    sink.write_scans(columns(RECUT, SCAN_COLUMNS), dedup_token="scans:p0:recut")
    sink.write_scans(columns(BATCH_B, SCAN_COLUMNS), dedup_token="scans:p0:10-20:retry")  # new token: stored
    sink.write_alerts(columns(ALERTS[:2], ALERT_COLUMNS), dedup_token="alerts:p0:17-19")
    sink.write_alerts(columns(CONFLICTS[2:], ALERT_COLUMNS), dedup_token="alerts:p0:c3:retry")  # c3 again
    sink.write_awards(columns(AWARDS[:1] + COMMISSIONS, AWARD_COLUMNS), dedup_token="awards:p0:17-19")  # given back
    write_registry_and_campaigns(sink)  # a registry reload and an engine restart


# --------------------------------------------------------------------------- fixtures

@dataclass
class Loaded:
    target: str  # the module's chdb path
    sink: ClickHouseSink
    before: dict[str, list]  # every view after load_stream
    after: dict[str, list]  # ... and after load_duplicates
    panels_before: dict[str, list]
    raw_rows_after: int  # count() of scan_events (no FINAL) after load_duplicates
    ingest_rows_after: int


#: Views whose numbers count writes, not scans, and so must change with duplicates.
WRITE_COUNTING_VIEWS = {"kpi_ingest_minute"}


#: The trade's views (shopping guides, outbound scans), which dashboards read beside the KPI views.
TRADE_DDL = ("320_guides.sql", "330_outbound.sql")
#: The views of the dashboards' DDL (config/clickhouse/2*.sql and TRADE_DDL); other files' views are not this
#: module's.
DASHBOARD_DDL = [*DEFAULT_DDL_DIR.glob("2*.sql"), *map(DEFAULT_DDL_DIR.joinpath, TRADE_DDL)]
DASHBOARD_VIEWS = sorted({m.group(1) for path in DASHBOARD_DDL
                          for m in re.finditer(r"CREATE OR REPLACE VIEW (\w+)", path.read_text(encoding="utf-8"))})


def view_names(sink: ClickHouseSink) -> list[str]:
    """The dashboards' views that exist in the sink's database."""
    _, rows = sink.query("SELECT name FROM system.tables WHERE database = currentDatabase() AND engine = 'View' "
                         "AND name IN {names:Array(String)} ORDER BY name", {"names": DASHBOARD_VIEWS})
    return [name for (name,) in rows]


def snapshot(sink: ClickHouseSink) -> dict[str, list]:
    return {name: sorted(map(repr, sink.query(f"SELECT * FROM {name}")[1]))
            for name in view_names(sink) if name not in WRITE_COUNTING_VIEWS}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    target = f"chdb:{tmp_path_factory.mktemp('chdb-dashboards')}"
    sink = ClickHouseSink(connect(target, database="dashboards"))
    try:
        sink.ensure_schema()
        load_stream(sink)
        from scanstream.engine import segments as seg
        for day in (date(2026, 11, 20), date(2026, 11, 21)):
            counts = seg.sizes(sink.query(seg.sizes_sql(seg.SegmentSettings(), day))[1])
            sink.insert(seg.SNAPSHOT_TABLE, seg.snapshot_batch(counts, day), seg.SNAPSHOT_COLUMNS)
        before = snapshot(sink)
        panels_before = run_all_panels(sink)
        load_duplicates(sink)
        after = snapshot(sink)
        raw = sink.query("SELECT count() FROM scan_events")[1][0][0]
        ingest = sink.query("SELECT sum(rows) FROM ingest_minute")[1][0][0]
        yield Loaded(target, sink, before, after, panels_before, raw, ingest)
    finally:
        sink.close()


def kpi(sink: ClickHouseSink, sql: str) -> list[tuple]:
    return sink.query(sql)[1]


def approx_rows(rows: list[tuple]) -> list[tuple]:
    """Rows with floats compared to 1e-9 (a ratio computed by ClickHouse vs by hand)."""
    return [tuple(pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for v in row) for row in rows]


# --------------------------------------------------------------------------- schema

def test_views_exist(loaded: Loaded) -> None:
    names = set(view_names(loaded.sink))
    assert names == set(DASHBOARD_VIEWS)
    expected = {
        "kpi_scans_minute", "kpi_throughput_minute", "kpi_ingest_minute", "kpi_sales_minute", "kpi_sales_hour",
        "kpi_conversion_batch", "kpi_conversion_sku", "kpi_conversion_dealer", "kpi_conversion_province",
        "kpi_conversion_day", "kpi_participation", "kpi_repeat_scan_rate", "kpi_new_returning_day",
        "kpi_campaign_spend", "kpi_campaign_spend_day", "kpi_spend", "kpi_prizes_tier", "kpi_cac_day",
        "kpi_counterfeit_province", "kpi_counterfeit_city", "kpi_cloned_hotspots", "kpi_diversion",
        "kpi_scan_id_conflicts", "guides", "outbound",
    }
    assert expected <= names
    _, rows = loaded.sink.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase() "
                                "AND name IN ('scans_minute', 'diversion_minute', 'ingest_minute', 'campaigns')")
    assert dict(rows) == {"scans_minute": "AggregatingMergeTree", "diversion_minute": "AggregatingMergeTree",
                          "ingest_minute": "AggregatingMergeTree", "campaigns": "ReplacingMergeTree"}


def test_schema_applies_again_without_losing_data(loaded: Loaded) -> None:
    loaded.sink.ensure_schema()  # every start re-applies the DDL: views replaced, MVs and tables kept
    assert snapshot(loaded.sink) == loaded.after


@pytest.mark.parametrize("database", ["s", "b"])
def test_schema_applies_in_a_database_named_like_a_short_alias(loaded: Loaded, database: str) -> None:
    # ClickHouse qualifies a view's tables with the database name; an alias of that name would capture it
    sink = ClickHouseSink(connect(loaded.target, database=database))
    try:
        sink.ensure_schema()
        for name in view_names(sink):
            sink.query(f"SELECT * FROM {name}")
    finally:
        sink.client.command(f"DROP DATABASE IF EXISTS `{database}`")
        sink.close()


# --------------------------------------------------------------------------- duplicates

def test_duplicates_do_not_change_any_kpi(loaded: Loaded) -> None:
    assert loaded.before.keys() == loaded.after.keys()
    changed = [name for name in loaded.before if loaded.before[name] != loaded.after[name]]
    assert changed == []


def test_duplicates_do_not_change_any_panel(loaded: Loaded) -> None:
    after = run_all_panels(loaded.sink)
    changed = [key for key, rows in loaded.panels_before.items()
               if rows != after[key] and "ingest_minute" not in PANEL_SQL[key]]
    assert changed == []


def test_ingest_counts_rows_written(loaded: Loaded) -> None:
    # Rows stored: 10 (batch A) + 11 (batch B) + 5 redelivered + 3 re-cut + 11 (batch B under a new token)
    # = 40; batch A sent again under its own token was dropped, before the MV as well.
    assert loaded.raw_rows_after == 10 + 11 + DUPLICATE_ROWS == 40
    assert loaded.ingest_rows_after == 40
    ((rows, replays, max_delay_s),) = kpi(loaded.sink, "SELECT sum(rows), sum(replays), max(delay_max_s) "
                                                       "FROM kpi_ingest_minute")
    # replays: s13 in batch B (twice: batch B was stored twice) + the 5 redelivered = 7
    assert (rows, replays) == (40, 7)
    # the oldest scan written is s00: its delay is the time from its ts to the write (this test run)
    expected = datetime.now(UTC).timestamp() - S["s00"]["ts"] / 1000
    assert abs(max_delay_s - expected) < 600


# --------------------------------------------------------------------------- live views

def test_throughput_by_verdict(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT tenant, verdict, sum(scans) FROM kpi_throughput_minute "
                            "GROUP BY tenant, verdict ORDER BY tenant, verdict")
    assert rows == [
        (0, "malformed", 1),  # s11: an undecodable code has no tenant
        (7, "bad_mac", 3),  # s07 s08 s09
        (7, "not_activated", 1),  # s15
        # s00 s01 s02 s03 s05 s06 s10 s12 s13 s17 s19 s20 (s01 s17 s19 redelivered, s02 s03 s12 re-cut: once each)
        (7, "ok", 12),
        (7, "repeat", 3),  # s04 s14 s18
        (8, "ok", 1),  # s16
    ]


def test_scans_minute_counts_users_and_codes(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT minute, verdict, role, sku, province, city, scans, users, codes "
                            "FROM kpi_scans_minute WHERE tenant = 7 AND minute = '2026-11-20 02:00:00'")
    # 10:00 China time: s01 and s02, both u1, codes 101/0 and 101/1 (s01 redelivered, s02 re-cut)
    assert rows == [(datetime(2026, 11, 20, 2, 0), "ok", "consumer", "BEER-500", "44", "4401", 2, 1, 2)]


def test_sales_by_region(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT province, city, sum(sales) FROM kpi_sales_minute WHERE tenant = 7 "
                            "GROUP BY province, city ORDER BY province, city")
    # ok consumer scans: s03 (1101); s12 (3201); s00 s05 s13 (3301); s06 (4301); s01 s02 (4401)
    assert rows == [("11", "1101", 1), ("32", "3201", 1), ("33", "3301", 3), ("43", "4301", 1), ("44", "4401", 2)]
    rows = kpi(loaded.sink, "SELECT hour, sum(sales) FROM kpi_sales_hour WHERE tenant = 7 GROUP BY hour ORDER BY hour")
    assert rows == [
        (datetime(2026, 11, 10, 4), 1),  # s00 at 12:00 China time
        (datetime(2026, 11, 20, 2), 5),  # s01 s02 s03 s05 s06
        (datetime(2026, 11, 21, 1), 2),  # s12 s13
    ]


# --------------------------------------------------------------------------- conversion

def test_conversion_by_batch(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT tenant, batch, kind, sku, activated, issued, scanned_codes, conversion_rate "
                            "FROM kpi_conversion_batch ORDER BY tenant, batch, kind")
    assert rows == approx_rows([
        (7, 101, "unit", "BEER-500", 1, 10, 4, 4 / 10),  # serials 0 1 5 6 (0 and 6 scanned twice)
        (7, 102, "unit", "BEER-330", 1, 20, 4, 4 / 20),  # serials 3 0 1 2
        (7, 104, "unit", "BEER-500", 0, 5, 0, 0 / 5),  # not activated: scans there are not_activated
        (7, 201, "case", "BEER-500-CASE", 1, 4, 1, 1 / 4),  # case 0 (store scan s10)
        (8, 101, "unit", "WINE", 1, 100, 1, 1 / 100),
    ])


def test_conversion_by_sku(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT tenant, sku, issued, scanned_codes, conversion_rate FROM kpi_conversion_sku "
                            "ORDER BY tenant, sku")
    assert rows == approx_rows([
        (7, "BEER-330", 20, 4, 4 / 20),
        (7, "BEER-500", 10, 4, 4 / 10),  # batch 104 (not activated) is not issued
        (7, "BEER-500-CASE", 4, 1, 1 / 4),
        (8, "WINE", 100, 1, 1 / 100),
    ])


def test_conversion_by_dealer_and_province(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT dealer_id, province, issued, scanned_codes, conversion_rate "
                            "FROM kpi_conversion_dealer WHERE tenant = 7 ORDER BY dealer_id")
    assert rows == approx_rows([
        ("D-BJ", "11", 5, 2, 2 / 5),  # 101/5-9 shipped; 101/5 and 101/6 scanned
        ("D-GD", "44", 5 + 4, 3, 3 / 9),  # 101/0-4 + cases 201/0-3 (104 is not activated); 101/0 101/1 201/0
        ("D-ZJ", "33", 20, 4, 4 / 20),  # first region 33 (also authorised for 3201)
    ])
    rows = kpi(loaded.sink, "SELECT province, province_name, issued, scanned_codes, conversion_rate "
                            "FROM kpi_conversion_province WHERE tenant = 7 ORDER BY province")
    assert rows == approx_rows([("11", "北京市", 5, 2, 2 / 5), ("33", "浙江省", 20, 4, 4 / 20),
                                ("44", "广东省", 9, 3, 3 / 9)])


def test_conversion_by_day(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT day, new_codes, scanned_codes, issued, conversion_rate FROM kpi_conversion_day "
                            "WHERE tenant = 7 ORDER BY day")
    issued = 10 + 20 + 4  # activated batches 101, 102, 201
    assert rows == approx_rows([
        (date(2026, 11, 10), 1, 1, issued, 1 / 34),  # 102/3
        (date(2026, 11, 20), 6, 7, issued, 7 / 34),  # 101/0 101/1 101/5 102/0 101/6 201/0
        (date(2026, 11, 21), 2, 9, issued, 9 / 34),  # 102/1 102/2 (101/6 was first scanned on the 20th)
    ])
    # a filter on day does not restart the running total
    rows = kpi(loaded.sink, "SELECT day, scanned_codes FROM kpi_conversion_day WHERE tenant = 7 AND day >= '2026-11-20'"
                            " ORDER BY day")
    assert rows == [(date(2026, 11, 20), 7), (date(2026, 11, 21), 9)]


# --------------------------------------------------------------------------- users

def test_participation(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT dimension, key, participants, scans, codes, lottery_players "
                            "FROM kpi_participation WHERE tenant = 7 ORDER BY dimension, key")
    # valid consumer scans: s00 u1, s01 u1, s02 u1, s03 u2, s04 u2, s05 u3, s06 u4, s12 u5, s13 u1, s14 u3;
    # draws taken (won / no_prize): s01 s02 u1, s03 u2, s06 u4, s12 u5 -> u3 never took part
    assert rows == [
        ("all", "", 5, 10, 8, 4),  # codes 102/3 101/0 101/1 101/5 102/0 101/6 102/1 102/2
        ("batch", "101", 4, 6, 4, 3),  # s01 s02 s03 s04 s06 s14: u1 u2 u4 u3; 101/0 1 5 6; players u1 u2 u4
        ("batch", "102", 3, 4, 4, 1),  # s00 s05 s12 s13: u1 u3 u5; 102/3 0 1 2; only u5 drew (s12)
        ("campaign", WINTER, 5, 9, 7, 4),  # all but s00
        ("city", "1101", 1, 1, 1, 1),  # s03
        ("city", "3201", 1, 1, 1, 1),  # s12
        ("city", "3301", 2, 3, 3, 0),  # s00 s05 s13: u1 u3, no draw taken in Zhejiang
        ("city", "4301", 2, 2, 1, 1),  # s06 u4 (no_prize) s14 u3
        ("city", "4401", 2, 3, 2, 1),  # s01 s02 u1, s04 u2 (repeat: ineligible)
        ("day", "2026-11-10", 1, 1, 1, 0),  # s00
        ("day", "2026-11-20", 4, 6, 5, 3),  # s01-s06: u1 u2 u3 u4; 101/0 101/1 101/5 102/0 101/6; u1 u2 u4
        ("day", "2026-11-21", 3, 3, 3, 1),  # s12 s13 s14: u5 u1 u3; u5 won
        ("province", "11", 1, 1, 1, 1),
        ("province", "32", 1, 1, 1, 1),
        ("province", "33", 2, 3, 3, 0),
        ("province", "43", 2, 2, 1, 1),
        ("province", "44", 2, 3, 2, 1),
        ("sku", "BEER-330", 3, 4, 4, 1),
        ("sku", "BEER-500", 4, 6, 4, 3),
    ]


def test_repeat_scan_rate(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT dimension, key, users, repeat_users, repeat_scan_rate "
                            "FROM kpi_repeat_scan_rate WHERE tenant = 7 AND dimension IN ('all', 'day', 'sku', "
                            "'province', 'campaign') ORDER BY dimension, key")
    assert rows == approx_rows([
        # u1: 102/3 101/0 101/1 102/2; u2: 101/5 101/0; u3: 102/0 101/6; u4: 101/6; u5: 102/1 -> 3 of 5
        ("all", "", 5, 3, 3 / 5),
        ("campaign", WINTER, 5, 3, 3 / 5),  # u1 keeps 101/0 101/1 102/2 without s00
        ("day", "2026-11-10", 1, 0, 0 / 1),
        ("day", "2026-11-20", 4, 2, 2 / 4),  # u1 (101/0 101/1) and u2 (101/5 101/0); u3 u4 one code each
        ("day", "2026-11-21", 3, 0, 0 / 3),  # u5 u1 u3 one code each
        ("province", "11", 1, 0, 0 / 1),
        ("province", "32", 1, 0, 0 / 1),
        ("province", "33", 2, 1, 1 / 2),  # u1: 102/3 102/2; u3: 102/0
        ("province", "43", 2, 0, 0 / 2),  # u4 and u3 both scanned 101/6 only
        ("province", "44", 2, 1, 1 / 2),  # u1: 101/0 101/1; u2: 101/0
        ("sku", "BEER-330", 3, 1, 1 / 3),  # u1: 102/3 102/2; u3: 102/0; u5: 102/1
        ("sku", "BEER-500", 4, 2, 2 / 4),  # u1, u2 two codes; u4, u3 one
    ])


def test_new_vs_returning(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT tenant, day, users, new_users, returning_users, new_share "
                            "FROM kpi_new_returning_day ORDER BY tenant, day")
    # first valid scans: u1 2026-11-10, u2 u3 u4 2026-11-20, u5 2026-11-21
    assert rows == approx_rows([
        (7, date(2026, 11, 10), 1, 1, 0, 1 / 1),
        (7, date(2026, 11, 20), 4, 3, 1, 3 / 4),  # u1 returns
        (7, date(2026, 11, 21), 3, 1, 2, 1 / 3),  # u5 new; u1 u3 return
        (8, date(2026, 11, 20), 1, 1, 0, 1 / 1),  # tenant 8's u1 is a new consumer of tenant 8
    ])


# --------------------------------------------------------------------------- campaigns

def test_campaign_spend_and_cac(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT campaign, configured, budget_cents, spent_cents, prizes, winners, "
                            "commission_cents, remaining_cents, spent_share, new_users, cac_cents "
                            "FROM kpi_campaign_spend WHERE tenant = 7 ORDER BY campaign")
    assert rows == approx_rows([
        (SPRING, True, 5000, 0, 0, 0, 0, 5000, 0 / 5000, 0, None),  # no new user: no CAC
        # prizes 880 + 1660 + 880 = 3420 (s01's prize given back is not paid again) and G1's commission
        # of 100 for s01 (written twice, paid once): 3520 spent, the commission neither a prize nor a
        # winner; new users whose first valid scan is in [11-20, 11-22): u2 u3 u4 u5 (u1 first scanned
        # 11-10) -> CAC 3520 / 4 = 880
        (WINTER, True, 10000, 3520, 3, 3, 100, 10000 - 3520, 3520 / 10000, 4, 3520 / 4),
    ])


def test_spend_by_dimension(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT campaign, dimension, key, spent_cents, prizes, winners, commission_cents "
                            "FROM kpi_spend WHERE tenant = 7 AND dimension != 'city' ORDER BY dimension, key")
    # winning scans: s01 (u1, 880, batch 101, 44, 11-20, and G1's commission of 100), s03 (u2, 1660, 101, 11,
    # 11-20), s12 (u5, 880, 102, 32, 11-21)
    assert rows == [
        (WINTER, "all", "", 3420 + 100, 3, 3, 100),  # = kpi_campaign_spend's spent_cents, prizes, winners
        (WINTER, "batch", "101", 880 + 100 + 1660, 2, 2, 100),
        (WINTER, "batch", "102", 880, 1, 1, 0),
        (WINTER, "day", "2026-11-20", 880 + 100 + 1660, 2, 2, 100),
        (WINTER, "day", "2026-11-21", 880, 1, 1, 0),
        (WINTER, "province", "11", 1660, 1, 1, 0),
        (WINTER, "province", "32", 880, 1, 1, 0),
        (WINTER, "province", "44", 880 + 100, 1, 1, 100),
        (WINTER, "sku", "BEER-330", 880, 1, 1, 0),
        (WINTER, "sku", "BEER-500", 880 + 100 + 1660, 2, 2, 100),
    ]


def test_burn_down(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT campaign, day, spent_cents, prizes, cumulative_cents, budget_cents, "
                            "remaining_cents FROM kpi_campaign_spend_day WHERE tenant = 7 ORDER BY campaign, day")
    assert rows == [
        (SPRING, date(2027, 3, 1), 0, 0, 0, 5000, 5000),  # its start day: full budget
        # s01 s03, and s01's commission (spent, not a prize)
        (WINTER, date(2026, 11, 20), 880 + 1660 + 100, 2, 2640, 10000, 10000 - 2640),
        (WINTER, date(2026, 11, 21), 880, 1, 2640 + 880, 10000, 10000 - 3520),  # s12
    ]


def test_prizes_by_tier(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT campaign, prize_tier, prizes, spent_cents, winners, tier_cents, stock, "
                            "stock_left FROM kpi_prizes_tier WHERE tenant = 7 ORDER BY campaign, tier_cents")
    assert rows == [
        (WINTER, "commission", 1, 100, 1, 0, 0, None),  # G1's commission: a pseudo-tier, no amount or stock
        (WINTER, "8.8", 2, 2 * 880, 2, 880, 100, 100 - 2),  # s01 (u1), s12 (u5)
        (WINTER, "16.6", 1, 1660, 1, 1660, 20, 20 - 1),  # s03 (u2)
        (WINTER, "88", 0, 0, 0, 8800, 2, 2),
    ]


def test_cac_by_day(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT day, spent_cents, new_users, cac_cents FROM kpi_cac_day WHERE tenant = 7 "
                            "ORDER BY day")
    assert rows == approx_rows([
        (date(2026, 11, 10), 0, 1, 0 / 1),  # u1
        (date(2026, 11, 20), 880 + 1660 + 100, 3, 2640 / 3),  # u2 u3 u4; prizes and the commission
        (date(2026, 11, 21), 880, 1, 880 / 1),  # u5
    ])


# --------------------------------------------------------------------------- fraud

def test_counterfeit_hot_spots(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT province, province_name, bad_mac_scans, users, round(lat), round(lon) "
                            "FROM kpi_counterfeit_province WHERE tenant = 7 ORDER BY province")
    # s07 (440305, u4), s08 (440106, u4) in Guangdong; s09 (110105, u1) in Beijing
    assert rows == [("11", "北京市", 1, 1, 40.0, 116.0), ("44", "广东省", 2, 1, 23.0, 113.0)]
    rows = kpi(loaded.sink, "SELECT city, city_name, bad_mac_scans FROM kpi_counterfeit_city WHERE tenant = 7 "
                            "ORDER BY city")
    assert rows == [("1101", "北京市", 1), ("4401", "广州市", 1), ("4403", "深圳市", 1)]


def test_cloned_code_hot_spots(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT province, province_name, city, city_name, alerts, codes "
                            "FROM kpi_cloned_hotspots WHERE tenant = 7 ORDER BY city")
    # a4 (CODE-Y) in Shanghai; a3 and a5 (CODE-X, two windows) in Guangzhou
    assert rows == [("31", "上海市", "3101", "上海市", 1, 1), ("44", "广东省", "4401", "广州市", 2, 1)]


def test_diversion_by_dealer_and_region(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT dealer_id, dealer_name, manager, diversion, province, city, city_name, alerts, "
                            "diverted_scans, diverted_codes FROM kpi_diversion WHERE tenant = 7 ORDER BY dealer_id")
    assert rows == [
        # a1; s06 (u4, ok) and s14 (u3, repeat) of code 101/6 in Changsha
        ("D-BJ", "Beijing Distribution", "zhao.min", "region", "43", "4301", "长沙市", 1, 2, 1),
        # a2; s10, the store scan of case 201/0 in the wrong channel
        ("D-GD", "Guangdong KA", "wang.li", "channel", "44", "4401", "广州市", 1, 1, 1),
    ]


def test_scan_id_conflicts(loaded: Loaded) -> None:
    rows = kpi(loaded.sink, "SELECT tenant, subtype, alerts, scan_ids, users, first_ts, last_ts "
                            "FROM kpi_scan_id_conflicts ORDER BY tenant, subtype")
    assert [r[:5] for r in rows] == [
        (7, "other_user", 1, 1, 2),  # c3 (written twice: FINAL keeps one): s03, u2 and u9
        (7, "same_user", 2, 1, 1),  # c1 c2: both s02, u1 only
    ]
    assert [(in_china(r[5]), in_china(r[6])) for r in rows] == [
        (datetime(2026, 11, 21, 9, 10, tzinfo=CHINA),) * 2,
        (datetime(2026, 11, 20, 10, 6, tzinfo=CHINA), datetime(2026, 11, 21, 9, 5, tzinfo=CHINA)),
    ]


# --------------------------------------------------------------------------- the trade: guides, outbound

@contextmanager
def own_database(loaded: Loaded, database: str) -> Iterator[ClickHouseSink]:
    """A database of its own on the module's chdb path (one path per process), with the whole schema;
    dropped at the end."""
    sink = ClickHouseSink(connect(loaded.target, database=database))
    try:
        sink.ensure_schema()
        yield sink
    finally:
        sink.client.command(f"DROP DATABASE IF EXISTS `{database}`")
        sink.close()


def award(scan_id: str, at: str, user: str, code: tuple[int, int, int], tier: str, cents: int, beneficiary: str, *,
          tenant: int = 7, campaign: str = WINTER) -> dict[str, Any]:
    kind, batch, serial = code
    return {"scan_id": scan_id, "ts": ms(at), "tenant": tenant, "campaign": campaign, "kind": kind, "batch": batch,
            "serial": serial, "user_id": user, "prize_tier": tier, "prize_cents": cents, "beneficiary": beneficiary}


U1, U2, U3, U5 = (0, 301, 1), (0, 301, 2), (0, 301, 3), (0, 301, 5)
T = "2026-11-20T"  # China time


def test_guides_by_hand(loaded: Loaded) -> None:
    g = dict(role="guide", campaign="", draw="none")
    scans = [
        scan("g01", f"{T}10:00:00+08:00", "G1", "ok", U1, **g),  # G1 sells U1 first
        scan("g02", f"{T}11:00:00+08:00", "G2", "repeat", U1, **g),  # a second guide, later: G2's sale, G1's unit
        scan("c01", f"{T}12:00:00+08:00", "cu1", "ok", U1, tier="8.8", cents=880, draw="won"),  # opened after
        scan("c02", f"{T}12:30:00+08:00", "cu2", "repeat", U1),  # not a first scan: not counted
        scan("c03", f"{T}09:00:00+08:00", "cu3", "ok", U2),  # opened BEFORE G1's sale of U2: not G1's doing
        scan("g03", f"{T}10:30:00+08:00", "G1", "ok", U2, **g),
        # the same ts on U3: the smaller scan_id is the first guide (G2); a consumer at that very ts counts
        scan("g05", f"{T}14:00:00+08:00", "G2", "ok", U3, **g),
        scan("g06", f"{T}14:00:00+08:00", "G1", "repeat", U3, **g),
        scan("c04", f"{T}14:00:00+08:00", "cu4", "ok", U3, tier="8.8", cents=880, draw="won"),
        scan("g07", f"{T}15:00:00+08:00", "G1", "ok", (1, 401, 1), **g),  # a case: G1's sale, not a unit
        scan("g08", f"{T}15:30:00+08:00", "G1", "bad_mac", U5, **g),  # forged: no sale
        scan("g09", f"{T}10:00:00+08:00", "G1", "ok", U1, tenant=8, **g),  # tenant 8's own G1 and U1
    ]
    again = [
        replayed(scans[0]),  # g01 redelivered
        replayed(scans[2]),  # c01 redelivered
        # g03's scan_id reused by G3 for another unit: a conflict, collapsed into g03 (and never valid)
        scan("g03", f"{T}10:30:00+08:00", "G3", "conflict", U5, **g),
    ]
    awards = [
        award("c01", f"{T}12:00:00+08:00", "cu1", U1, "8.8", 880, "consumer"),  # a prize, not a commission
        award("c01", f"{T}12:00:00+08:00", "G1", U1, "commission", 150, "guide"),
        award("c04", f"{T}14:00:00+08:00", "G2", U3, "commission", 150, "guide"),
        award("cx", f"{T}16:00:00+08:00", "G4", (0, 301, 9), "commission", 200, "guide"),  # scans not stored here
    ]
    with own_database(loaded, "guides_by_hand") as sink:
        sink.write_scans(columns(scans, SCAN_COLUMNS), dedup_token="g:0")
        sink.write_scans(columns(again, SCAN_COLUMNS), dedup_token="g:1")
        sink.write_awards(columns(awards, AWARD_COLUMNS), dedup_token="a:0")
        sink.write_awards(columns(awards[1:2], AWARD_COLUMNS), dedup_token="a:1")  # G1's commission written twice
        rows = kpi(sink, "SELECT tenant, user_id, sales, units, consumer_scans, commissions, commission_cents "
                         "FROM guides ORDER BY tenant, user_id")
        units = kpi(sink, "SELECT tenant, batch, serial, guide_id FROM v_guide_units ORDER BY tenant, batch, serial")
    assert rows == [
        # sales g01 g03 g06 g07; units U1 U2 (U3 is G2's); opened after the sale: c01 (U1), not c03 (U2)
        (7, "G1", 4, 2, 1, 1, 150),
        (7, "G2", 2, 1, 1, 1, 150),  # sales g02 g05; unit U3; c04 at the sale's ts
        (7, "G4", 0, 0, 0, 1, 200),  # paid, no sale stored
        (8, "G1", 1, 1, 0, 0, 0),  # g09
    ]
    assert units == [(7, 301, 1, "G1"), (7, 301, 2, "G1"), (7, 301, 3, "G2"), (8, 301, 1, "G1")]


CASE_1, CASE_2, CASE_3, CASE_9 = (1, 401, 1), (1, 401, 2), (1, 401, 3), (1, 401, 9)
PACKING = [  # tenant, case_batch, case_serial, unit_batch, unit_serial_from, unit_serial_to
    (7, 401, 1, 301, 0, 11),  # 12 units
    (7, 401, 2, 301, 12, 23),  # never shipped
    (7, 401, 3, 302, 0, 2), (7, 401, 3, 302, 10, 12),  # one case, two ranges: 6 units
]


def diversion_alert(alert_id: str, dealer: str, sent_by: str, *, alert: str = "diversion",
                    tenant: int = 7) -> dict[str, Any]:
    detail = {"role": "consumer", "scan_id": f"for-{alert_id}", "case_batch": 401, "case_serial": 1,
              "sent_by": sent_by}
    return {"alert_id": alert_id, "ts": ms(f"{T}18:00:00+08:00"), "tenant": tenant, "alert": alert,
            "subtype": "region", "dealer_id": dealer, "city": "4301", "count": 1,
            "window_start": ms(f"{T}18:00:00+08:00"), "window_end": ms(f"{T}18:10:00+08:00"),
            "detail": json.dumps(detail)}


def test_outbound_by_hand(loaded: Loaded) -> None:
    w = dict(role="warehouse", campaign="", draw="none")
    scans = [
        scan("o01", f"{T}08:00:00+08:00", "wh", "ok", CASE_1, dealer="D-A", **w),
        scan("o02", f"{T}08:05:00+08:00", "wh", "repeat", CASE_1, dealer="D-A", **w),  # the case shipped twice
        scan("o03", f"{T}08:10:00+08:00", "wh", "ok", (0, 301, 5), dealer="D-A", **w),  # a unit of CASE_1
        scan("o04", f"{T}08:20:00+08:00", "wh", "ok", (0, 301, 30), dealer="D-A", **w),  # a unit in no case
        scan("o05", f"{T}09:00:00+08:00", "wh", "ok", CASE_3, dealer="D-B", **w),
        scan("o06", f"{T}09:10:00+08:00", "wh", "repeat", CASE_1, dealer="D-B", **w),  # CASE_1 re-routed to D-B
        scan("o07", f"{T}09:20:00+08:00", "wh", "ok", CASE_9, dealer="D-B", **w),  # not in packing: no units
        scan("o08", f"{T}09:30:00+08:00", "wh", "bad_mac", CASE_2, dealer="D-C", **w),  # forged: not shipped
        scan("o09", f"{T}09:00:00+08:00", "wh", "ok", CASE_1, tenant=8, dealer="D-A", **w),  # tenant 8: no packing
        # scans judged against a dealer: D-A's goods out of territory (ok and repeat), one in it
        scan("d01", f"{T}12:00:00+08:00", "cu1", "ok", (0, 301, 1), dealer="D-A", diversion="region"),
        scan("d02", f"{T}12:10:00+08:00", "cu2", "repeat", (0, 301, 1), dealer="D-A", diversion="channel"),
        scan("d03", f"{T}12:20:00+08:00", "cu3", "ok", (0, 301, 2), dealer="D-A"),
        scan("d04", f"{T}12:30:00+08:00", "cu4", "ok", (0, 302, 0), dealer="D-B", diversion="region+channel"),
        scan("d05", f"{T}12:40:00+08:00", "cu5", "ok", (0, 303, 0), dealer="D-S", diversion="region"),  # shipments
    ]
    again = [
        replayed(scans[4]),  # o05 redelivered
        replayed(scans[9]),  # d01 redelivered
        # o04's scan_id reused for another unit and dealer: a conflict, collapsed into o04 (and never valid)
        scan("o04", f"{T}08:20:00+08:00", "wh", "conflict", (0, 301, 31), dealer="D-C", **w),
    ]
    alerts = [
        diversion_alert("x1", "D-A", "outbound_scan"),
        diversion_alert("x2", "D-A", "shipments"),  # the dealer came from shipments.csv: not a case alert
        diversion_alert("x3", "D-B", "outbound_scan"),
        diversion_alert("x4", "D-A", "outbound_scan", alert="cloned_code"),  # not a diversion alert
        diversion_alert("x5", "D-S", "shipments"),
    ]
    packing = [dict(zip(("tenant", "case_batch", "case_serial", "unit_batch", "unit_serial_from", "unit_serial_to"), p))
               for p in PACKING]
    dealers = [{"dealer_id": "D-A", "tenant": 7, "name": "Alpha Trading", "channel": "KA", "regions": ["44"]},
               {"dealer_id": "D-B", "tenant": 7, "name": "华南物流", "channel": "KA", "regions": ["45"]}]
    (pack,) = [f for f in REGISTRY_SCHEMA if f.table == "registry_packing"]
    (deal,) = [f for f in REGISTRY_SCHEMA if f.table == "registry_dealers"]
    with own_database(loaded, "outbound_by_hand") as sink:
        for _ in range(2):  # a registry reload
            sink.insert(pack.table, columns(packing, insert_spec(pack)), insert_spec(pack))
            sink.insert(deal.table, columns(dealers, insert_spec(deal)), insert_spec(deal))
        sink.write_scans(columns(scans, SCAN_COLUMNS), dedup_token="o:0")
        sink.write_scans(columns(again, SCAN_COLUMNS), dedup_token="o:1")
        sink.write_alerts(columns(alerts, ALERT_COLUMNS), dedup_token="x:0")
        sink.write_alerts(columns(alerts[:1], ALERT_COLUMNS), dedup_token="x:1")  # x1 written twice
        rows = kpi(sink, "SELECT tenant, dealer_id, dealer_name, outbound_scans, cases, units, diverted_scans, "
                         "case_alerts FROM outbound ORDER BY tenant, dealer_id")
    assert rows == [
        # o01 o02 o03 o04; CASE_1; 301/0-11 (o03's 301/5 among them, CASE_1 twice: once) + 301/30; d01 d02; x1
        (7, "D-A", "Alpha Trading", 4, 1, 12 + 1, 2, 1),
        # o05 o06 o07; CASE_3 CASE_1 CASE_9; 302/0-2 + 302/10-12 + 301/0-11 (CASE_9 packs nothing); d04; x3
        (7, "D-B", "华南物流", 3, 3, 6 + 12, 1, 1),
        (7, "D-S", "", 0, 0, 0, 1, 0),  # d05; x5 was sent by shipments.csv; no such dealer in the registry
        (8, "D-A", "", 1, 1, 0, 0, 0),  # o09: tenant 7's packing and dealer names are not tenant 8's
    ]


# --------------------------------------------------------------------------- Grafana panels

#: Macros of grafana-clickhouse-datasource (pkg/macros/macros.go: the Macros map).
PLUGIN_MACROS = {"fromTime", "toTime", "fromTime_ms", "toTime_ms", "timeFilter", "timeFilter_ms", "dateFilter",
                 "dateTimeFilter", "dt", "timeInterval", "timeInterval_ms", "interval_s"}
_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)")


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval_s: int = 60


def render_variables(sql: str, variables: Mapping[str, list[str]]) -> str:
    """Grafana's interpolation of ``${var}``, ``$var`` and ``${var:singlequote}`` (done by the frontend)."""
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        fmt = m.group(2)
        if name not in variables:
            raise AssertionError(f"unknown dashboard variable {name!r} in {sql!r}")
        values = variables[name]
        if fmt == "singlequote":
            return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
        if fmt not in (None, "raw", "csv"):
            raise AssertionError(f"variable format {fmt!r} not handled by this test")
        return ",".join(values)
    return _VARIABLE.sub(one, sql)


def render_macros(sql: str, tr: TimeRange) -> str:
    """The plugin's macro expansion (grafana/clickhouse-datasource pkg/macros/macros.go)."""
    def dt(t: datetime) -> str:
        return f"toDateTime({int(t.timestamp())})"

    def dt64(t: datetime) -> str:
        return f"fromUnixTimestamp64Milli({int(t.timestamp() * 1000)})"

    def d(t: datetime) -> str:
        return f"toDate('{t.astimezone(UTC):%Y-%m-%d}')"

    def one(m: re.Match) -> str:
        name, raw_args = m.group(1), m.group(2)
        args = [a.strip() for a in raw_args.split(",")] if raw_args is not None else []
        if name not in PLUGIN_MACROS:
            raise AssertionError(f"$__{name} is not a macro of {CLICKHOUSE_PLUGIN}")
        if name in ("timeFilter", "timeFilter_ms", "dateFilter", "timeInterval", "timeInterval_ms"):
            assert len(args) == 1, f"$__{name} takes one argument: {m.group(0)}"
        if name == "timeFilter":
            return f"{args[0]} >= {dt(tr.start)} AND {args[0]} <= {dt(tr.end)}"
        if name == "timeFilter_ms":
            return f"{args[0]} >= {dt64(tr.start)} AND {args[0]} <= {dt64(tr.end)}"
        if name == "dateFilter":
            return f"{args[0]} >= {d(tr.start)} AND {args[0]} <= {d(tr.end)}"
        if name in ("dateTimeFilter", "dt"):
            assert len(args) == 2, m.group(0)
            return (f"({args[0]} >= {d(tr.start)} AND {args[0]} <= {d(tr.end)}) AND "
                    f"({args[1]} >= {dt(tr.start)} AND {args[1]} <= {dt(tr.end)})")
        if name == "timeInterval":
            return f"toStartOfInterval(toDateTime({args[0]}), INTERVAL {max(tr.interval_s, 1)} second)"
        if name == "timeInterval_ms":
            return f"toStartOfInterval(toDateTime64({args[0]}, 3), INTERVAL {max(tr.interval_s * 1000, 1)} millisecond)"
        if name == "interval_s":
            return str(max(tr.interval_s, 1))
        return {"fromTime": dt(tr.start), "toTime": dt(tr.end), "fromTime_ms": dt64(tr.start),
                "toTime_ms": dt64(tr.end)}[name]
    return _MACRO.sub(one, sql)


def render(sql: str, tr: TimeRange, variables: Mapping[str, list[str]]) -> str:
    return render_macros(render_variables(sql, variables), tr)


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def reads_clickhouse(board: dict) -> bool:
    """Whether a dashboard has a ClickHouse query (a panel's or a variable's)."""
    stack = list(board["panels"]) + list(board.get("templating", {}).get("list", []))
    while stack:
        item = stack.pop()
        stack.extend(item.get("panels", []))
        for source in [item.get("datasource")] + [t.get("datasource") for t in item.get("targets", [])]:
            if isinstance(source, dict) and source.get("type") == CLICKHOUSE_PLUGIN:
                return True
    return False


def clickhouse_dashboards() -> dict[str, dict]:
    """The dashboards this module runs: those reading ClickHouse (panels.json lists their panels)."""
    return {file: board for file, board in dashboards().items() if reads_clickhouse(board)}


def query_panels() -> Iterator[tuple[str, dict, dict, dict]]:
    """(file, dashboard, panel, target) of every query target, rows' nested panels included."""
    for file, board in clickhouse_dashboards().items():
        stack = list(board["panels"])
        while stack:
            panel = stack.pop(0)
            stack.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                yield file, board, panel, target


def panel_key(file: str, panel: dict, target: dict) -> str:
    return f"{file}#{panel['id']}{target['refId']}"


PANEL_SQL = {panel_key(f, p, t): t["rawSql"] for f, _, p, t in query_panels()
             if t.get("datasource", {}).get("type") == CLICKHOUSE_PLUGIN}


def now_utc() -> datetime:
    return datetime.now(UTC)


def full_range() -> TimeRange:
    """From before the stream to after it and after now (ingest_minute is stamped with the write time)."""
    stream_end = datetime(2026, 11, 22, tzinfo=UTC)
    return TimeRange(min(datetime(2026, 11, 1, tzinfo=UTC), now_utc() - timedelta(days=1)),
                     max(stream_end, now_utc()) + timedelta(days=1))


#: Values of the dashboard variables for the known stream ("All" campaigns).
VARIABLES = {"tenant": ["7"], "campaign": [WINTER, SPRING]}


def run_all_panels(sink: ClickHouseSink) -> dict[str, list]:
    tr = full_range()
    return {key: sorted(map(repr, sink.query(render(sql, tr, VARIABLES))[1])) for key, sql in PANEL_SQL.items()}


def test_panel_list_matches_dashboards() -> None:
    listed = json.loads(PANEL_LIST.read_text(encoding="utf-8"))["panels"]
    found = {(f, p["id"], t["refId"]): (p["title"], t.get("datasource", {}).get("type")) for f, _, p, t in
             query_panels()}
    assert {(e["dashboard"], e["panel_id"], e["refId"]) for e in listed} == set(found)
    for e in listed:
        title, ds_type = found[(e["dashboard"], e["panel_id"], e["refId"])]
        assert e["title"] == title
        assert (e["datasource"], e["expect"]) in (("clickhouse", "rows"), ("prometheus", "placeholder")), e
        assert (ds_type == CLICKHOUSE_PLUGIN) == (e["datasource"] == "clickhouse")


def test_panels_are_well_formed() -> None:
    uids = set()
    for file, board in dashboards().items():
        assert file == f"{board['uid']}.json"
        if reads_clickhouse(board):
            uids.add(board["uid"])
        defined = {v["name"] for v in board["templating"]["list"]}
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), file
    for key, sql in PANEL_SQL.items():
        file = key.split("#")[0]
        board = dashboards()[file]
        defined = {v["name"] for v in board["templating"]["list"]}
        used = {m.group(1) or m.group(3) for m in _VARIABLE.finditer(sql)}
        assert used <= defined, (key, used - defined)
        assert {m.group(1) for m in _MACRO.finditer(sql)} <= PLUGIN_MACROS, key
        assert ";" not in sql, key
    for file, _, panel, target in query_panels():
        if target.get("datasource", {}).get("type") == CLICKHOUSE_PLUGIN:
            assert target["editorType"] == "sql" and target["datasource"]["uid"] == "scanstream-clickhouse"
            series = target["queryType"] == "timeseries"
            assert target["format"] == (0 if series else 1)
            if series:  # a time series needs its time column
                assert re.search(r"\bAS time\b", target["rawSql"]), panel_key(file, panel, target)
    assert uids == {"scanstream-live", "scanstream-kpis", "scanstream-fraud", "scanstream-segments"}


def test_every_panel_runs_and_returns_rows(loaded: Loaded) -> None:
    listed = {f"{e['dashboard']}#{e['panel_id']}{e['refId']}": e["expect"]
              for e in json.loads(PANEL_LIST.read_text(encoding="utf-8"))["panels"]}
    tr = full_range()
    empty = []
    for key, sql in PANEL_SQL.items():
        rows = loaded.sink.query(render(sql, tr, VARIABLES))[1]  # raises (SinkError) when it does not run
        if listed[key] == "rows" and not rows:
            empty.append(key)
    assert empty == []
    assert len(PANEL_SQL) >= 25


def test_variable_queries_run(loaded: Loaded) -> None:
    seen = {}
    for board in clickhouse_dashboards().values():
        for var in board["templating"]["list"]:
            if var.get("type") == "query" and var["datasource"]["type"] == CLICKHOUSE_PLUGIN:
                rows = loaded.sink.query(render_variables(var["query"], VARIABLES))[1]
                seen[var["name"]] = sorted(str(r[0]) for r in rows)
    assert seen == {"tenant": ["7", "8"], "campaign": [SPRING, WINTER]}


def panel_rows(sink: ClickHouseSink, title: str, tr: TimeRange) -> list[tuple]:
    (key,) = [panel_key(f, p, t) for f, _, p, t in query_panels() if p["title"] == title]
    return sink.query(render(PANEL_SQL[key], tr, VARIABLES))[1]


CHINA = timezone(timedelta(hours=8))


def in_china(t: datetime) -> datetime:
    """A DateTime read back (naive values are UTC) in China time."""
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(CHINA)


def test_time_filter_and_interval_reach_the_panels(loaded: Loaded) -> None:
    china = CHINA
    tr = TimeRange(datetime(2026, 11, 20, 10, 0, tzinfo=china), datetime(2026, 11, 20, 10, 10, tzinfo=china))
    rows = panel_rows(loaded.sink, "Scans per minute", tr)
    assert [(in_china(t).strftime("%H:%M"), n) for t, n in rows] == [
        ("10:00", 2), ("10:01", 2), ("10:02", 3), ("10:03", 2), ("10:04", 1)]  # s11 is tenant 0
    rows = panel_rows(loaded.sink, "Scans per minute", TimeRange(tr.start, tr.end, interval_s=300))
    assert [n for _, n in rows] == [2 + 2 + 3 + 2 + 1]  # one 5-minute bucket: 10:00-10:05
    # the cumulative conversion keeps counting the days before the range
    rows = panel_rows(loaded.sink, "Conversion over time (cumulative)",
                      TimeRange(datetime(2026, 11, 20, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)))
    assert [(in_china(r[0]).date(), r[2]) for r in rows] == [(date(2026, 11, 20), 7), (date(2026, 11, 21), 9)]


def test_geomap_panels_have_coordinates(loaded: Loaded) -> None:
    rows = panel_rows(loaded.sink, "Counterfeit hot spots by province", full_range())
    assert [(name, n) for name, _, _, n in rows] == [("广东省", 2), ("北京市", 1)]
    assert all(18 < lat < 54 and 73 < lon < 136 for _, lat, lon, _ in rows)
    rows = panel_rows(loaded.sink, "Cloned-code hot spots by city", full_range())
    assert sorted((name, alerts) for name, _, _, alerts, _ in rows) == [("上海市", 1), ("广州市", 2)]


def test_scan_id_conflict_panels(loaded: Loaded) -> None:
    rows = panel_rows(loaded.sink, "Scan id conflicts over time", full_range())
    assert sorted((kind, n) for _, kind, n in rows) == [("other_user", 1), ("same_user", 1), ("same_user", 1)]
    rows = panel_rows(loaded.sink, "Latest scan id conflicts", full_range())
    assert [r[1:6] for r in rows] == [  # newest first, c3 once
        ("other_user", "CODE-7-0-101-5", "s03", "u2", "u9"),
        ("same_user", "CODE-7-0-101-1", "s02", "u1", "u1"),
        ("same_user", "CODE-7-0-101-2", "s02", "u1", "u1"),
    ]


#: The zone the campaigns' and the KPI views' days are cut in, and the dashboards show.
DASHBOARD_ZONE = "Asia/Shanghai"
LOCAL_TOML = GRAFANA_DIR.parent / "local.toml"
#: Output columns holding a ratio: 0..1 (shown with unit percentunit) or 0..100 (percent).
RATIO_0_1 = re.compile(r"(?:_rate|_share)$")
RATIO_0_100 = re.compile(r"_pct$")
#: Calls that cut time into days (or place a day on the time axis), with the zone they name.
_DAY_CALL = re.compile(r"\b(toDate|toDateTime|toStartOfDay)\((\$?\w+(?:\.\w+)?)(?:,\s*'([^']*)')?\)")
#: First arguments of those calls that are a date string, not a time: no zone to cut in.
DATE_STRINGS = {"key", "r.key", "s.key"}


def field_unit(panel: dict, column: str) -> str | None:
    """The unit Grafana shows a column with: its byName override, else the panel's default."""
    config = panel.get("fieldConfig", {})
    for override in config.get("overrides", []):
        if override["matcher"] == {"id": "byName", "options": column}:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    return prop["value"]
    return config.get("defaults", {}).get("unit")


def test_ratio_columns_have_percent_units(loaded: Loaded) -> None:
    tr = full_range()
    checked, wrong = set(), []
    for file, _, panel, target in query_panels():
        if target.get("datasource", {}).get("type") != CLICKHOUSE_PLUGIN:
            continue
        names, _ = loaded.sink.query(render(target["rawSql"], tr, VARIABLES))
        for column in names:
            want = "percentunit" if RATIO_0_1.search(column) else "percent" if RATIO_0_100.search(column) else None
            if want is None:
                continue
            checked.add(column)
            if field_unit(panel, column) != want:
                wrong.append((file, panel["title"], column, field_unit(panel, column), want))
    assert wrong == []
    assert {"conversion_rate", "repeat_scan_rate", "spent_share", "share_pct"} <= checked


def test_days_are_cut_in_the_dashboards_zone() -> None:
    offset_min = int(datetime(2026, 11, 20, tzinfo=ZoneInfo(DASHBOARD_ZONE)).utcoffset() / timedelta(minutes=1))
    config = tomllib.loads(LOCAL_TOML.read_text(encoding="utf-8"))
    # the demo's campaigns and segments end their days at midnight of the zone the dashboards use
    assert {c.get("utc_offset_minutes", offset_min) for c in config["campaigns"]} == {offset_min}
    assert config["segments"]["utc_offset_minutes"] == offset_min
    daily = []
    for file, board in clickhouse_dashboards().items():
        assert board["timezone"] == DASHBOARD_ZONE, file  # the time axis and "today" in China time
        for _, _, panel, target in (q for q in query_panels() if q[0] == file):
            sql = target.get("rawSql", "")
            assert "$__dateFilter(day)" not in sql, (file, panel["title"])  # UTC dates of the range
            for func, arg, zone in _DAY_CALL.findall(sql):
                if arg in DATE_STRINGS:
                    continue
                assert zone == DASHBOARD_ZONE, (file, panel["title"], f"{func}({arg}, {zone!r})")
                daily.append(panel["title"])
    assert {"Conversion over time (cumulative)", "Participants per day", "Budget burn-down",
            "Customer acquisition cost per day", "RFM classes over time"} <= set(daily)


def test_daily_panels_filter_china_days(loaded: Loaded) -> None:
    # 2026-11-20 16:00 UTC is 11-21 00:00 China time: the range starts with the 21st's China day
    tr = TimeRange(datetime(2026, 11, 20, 16, tzinfo=UTC), datetime(2026, 11, 21, 15, 59, tzinfo=UTC))
    rows = panel_rows(loaded.sink, "New vs returning consumers per day", tr)
    assert [(in_china(r[0]), r[1], r[2]) for r in rows] == [(datetime(2026, 11, 21, tzinfo=CHINA), 1, 2)]


def test_grafana_names_regions_and_dealers(loaded: Loaded) -> None:
    rows = panel_rows(loaded.sink, "Latest diversion alerts", full_range())
    assert [(r[1], r[4]) for r in rows] == [("Guangdong KA", "广东省 广州市"), ("Beijing Distribution", "湖南省 长沙市")]
    rows = panel_rows(loaded.sink, "Latest cloned-code alerts", full_range())
    assert sorted({r[3] for r in rows}) == ["上海市", "广东省 广州市"]  # a municipality named once
    rows = panel_rows(loaded.sink, "Diverted scans per dealer", full_range())
    assert {r[1] for r in rows} == {"Beijing Distribution", "Guangdong KA"}
    rows = panel_rows(loaded.sink, "Diversion by dealer and region", full_range())
    assert {(r[0], r[4]) for r in rows} == {("Beijing Distribution", "长沙市"), ("Guangdong KA", "广州市")}
    rows = panel_rows(loaded.sink, "Repeat-scan rate and participation by batch, sku and province (to date)",
                      full_range())
    assert {r[2] for r in rows if r[0] == "province"} == {"北京市", "江苏省", "浙江省", "湖南省", "广东省"}


def test_trade_panels(loaded: Loaded) -> None:
    rows = panel_rows(loaded.sink, "Shopping guides (to date)", full_range())
    assert rows == [
        ("guide-G1", 1, 1, 1, 1, 1.0),  # s17 sells 101/0; u1 opens it after (s01, ok), s04 is a repeat; 1 yuan
        ("guide-G2", 1, 0, 0, 0, 0.0),  # s18: 101/0 again, a day later: G1's unit
    ]
    rows = panel_rows(loaded.sink, "Outbound shipments by dealer (to date)", full_range())
    assert sorted(rows) == [
        ("Beijing Distribution", 1, 0, 1, 2, 0),  # s20: unit 101/5; s06 s14 diverted; a1 named no outbound scan
        ("Guangdong KA", 1, 1, 4, 1, 1),  # s19: case 201/0 packed with 101/0-3; s10 diverted; a2 (sent_by)
    ]


def test_provisioning_files() -> None:
    ds = (GRAFANA_DIR / "provisioning" / "datasources" / "clickhouse.yaml").read_text(encoding="utf-8")
    assert "type: grafana-clickhouse-datasource" in ds and "uid: scanstream-clickhouse" in ds
    for var in ("HOST", "PORT", "USER", "PASSWORD"):
        assert f"${{SCANSTREAM_CLICKHOUSE_{var}}}" in ds
    provider = (GRAFANA_DIR / "provisioning" / "dashboards" / "scanstream.yaml").read_text(encoding="utf-8")
    assert "type: file" in provider and "path:" in provider
    try:
        import yaml
    except ImportError:
        return
    assert yaml.safe_load(ds)["datasources"][0]["jsonData"]["host"] == "${SCANSTREAM_CLICKHOUSE_HOST}"
    assert yaml.safe_load(provider)["providers"][0]["type"] == "file"


# --------------------------------------------------------------------------- merges (last: it rewrites the parts)

def test_merges_do_not_change_any_kpi(loaded: Loaded) -> None:
    # The value tests above ran on unmerged parts (duplicates present); merging changes nothing.
    for table in ("scan_events", "alerts", "awards", "campaigns", "scans_minute", "diversion_minute"):
        loaded.sink.client.command(f"OPTIMIZE TABLE {table} FINAL")
    assert snapshot(loaded.sink) == loaded.after
    assert kpi(loaded.sink, "SELECT count() FROM scan_events") == [(len(S),)]  # one row per scan_id
