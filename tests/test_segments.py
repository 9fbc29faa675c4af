"""Scanner profiles, RFM classes and lifecycle stages against a small hand-built stream.

The stream (``STREAM``) is a list of ``scan_events`` rows written through ``ClickHouseSink.insert``
into chdb: ten tenant-7 scanners, one of them also in tenant 8, each built to land in a known
RFM class and lifecycle stage as of ``AS_OF`` under the thresholds of ``SETTINGS``, several
exactly at a threshold or one day past it, plus redelivered copies (replay = 1), scans after
the as-of day, a forger, a store account, a malformed scan (tenant 0) and an event without a
user.  Expected values are literals worked out by hand, the arithmetic in the comments.

chdb hosts one data path per process: the in-process tests share one module-scoped path and
close their client at the end.  The CLI tests run ``scanstream`` as subprocesses against a
second path that another subprocess (this file run as a script) filled with the same stream.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from scanstream.engine import config as config_mod
from scanstream.engine import segments as seg
from scanstream.engine.config import ConfigError
from scanstream.engine.outcomes import SCAN_COLUMNS, empty
from scanstream.engine.segments import SegmentSettings

REPO = Path(__file__).resolve().parents[1]
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
CHINA = timezone(timedelta(hours=8))
AS_OF = date(2026, 11, 30)
LATER = date(2026, 12, 2)

#: Small thresholds, so that a few scans reach them.
SETTINGS = SegmentSettings(utc_offset_minutes=480, roles=("consumer",), recency_days=7, frequency=2,
                           monetary_cents=1000, new_days=3, mature_scans=3, dormant_days=14, churn_days=30)
SEGMENTS_TOML = """
[segments]
utc_offset_minutes = 480
roles = ["consumer"]
recency_days = 7
frequency = 2
monetary_cents = 1000
new_days = 3
mature_scans = 3
dormant_days = 14
churn_days = 30
"""


def cn(text: str) -> int:
    """Epoch ms of a China-time 'YYYY-MM-DD HH:MM[:SS[.fff]]'."""
    return int(datetime.fromisoformat(text).replace(tzinfo=CHINA).timestamp() * 1000)


def scan(sid: str, when: str, user: str, verdict: str, serial: int = 0, *, tenant: int = 7, kind: int = 0,
         batch: int = 101, sku: str = "BEER-500", region: str = "440106", role: str = "consumer",
         cents: int = 0, draw: str | None = None, replay: int = 0) -> dict:
    if draw is None:
        draw = "won" if cents else ("no_prize" if verdict == "ok" and role == "consumer" else "none")
    return {"scan_id": sid, "ts": cn(when), "tenant": tenant, "kind": kind, "batch": batch, "serial": serial,
            "code": f"CODE-{tenant}-{kind}-{batch}-{serial}", "user_id": user, "role": role, "region": region,
            "sku": sku if verdict in ("ok", "repeat") else "", "verdict": verdict, "diversion": "none",
            "campaign": "winter-2026" if draw != "none" else "", "prize_tier": f"{cents / 100:g}" if cents else "",
            "prize_cents": cents, "draw": draw, "replay": replay}


def replay_of(row: dict) -> dict:
    """The redelivered copy of a scan: same scan_id and outcome, replay = 1."""
    return {**row, "replay": 1}


# ------------------------------------------------------------------ the stream (AS_OF = 2026-11-30)
V1 = scan("v1", "2026-11-10 10:00", "u-value", "ok", 1, cents=600)
V2 = scan("v2", "2026-11-20 10:00", "u-value", "ok", 2, sku="BEER-330", cents=400)
R1 = scan("r1", "2026-11-15 10:00", "u-recall", "ok", 50, region="510104", cents=1660)
D1 = scan("d1", "2026-11-27 10:00", "u-develop", "ok", 60, region="330106", cents=8800)
N1 = scan("n1", "2026-11-30 00:00", "u-new", "ok", 90)
L1 = scan("l1", "2026-10-30 10:00", "u-lost", "ok", 110)
STREAM: list[dict] = [
    # u-value: 3 first scans (11-10, 11-20, 11-23 07:00 local = 11-22 23:00 UTC), prizes 600 + 400
    V1, V2,
    scan("v3", "2026-11-23 07:00", "u-value", "ok", 3, region="440305"),
    scan("v4", "2026-11-21 12:00", "u-value", "repeat", 2, sku="BEER-330", region="110105"),  # own code again
    scan("v5", "2026-11-22 12:00", "u-value", "repeat", 50, region="110105"),  # u-recall's code
    scan("v6", "2026-11-22 13:00", "u-value", "bad_mac", 999),
    replay_of(V1),
    # u-recall: first scans 11-15 (1660 won) and 11-22 23:59:59.999 local
    R1,
    scan("r2", "2026-11-22 23:59:59.999", "u-recall", "ok", 51, sku="BEER-330", region="510104"),
    replay_of(R1),
    # u-develop: one first scan 11-27 with 8800, its repeat at the last ms of 11-30, then a first
    # scan at 12-01 00:00 local (= 11-30 16:00 UTC), after AS_OF
    D1,
    scan("d2", "2026-11-30 23:59:59.999", "u-develop", "repeat", 60, region="330106"),
    scan("d3", "2026-12-01 00:00", "u-develop", "ok", 61, sku="CRAFT-IPA", region="330106", cents=880),
    replay_of(D1),
    # u-retain: one first scan 11-15 with 1660
    scan("t1", "2026-11-15 10:00", "u-retain", "ok", 70, region="310101", cents=1660),
    # u-potential: four consumer first scans 11-26..11-29, 880 won; one more as a store (not counted)
    scan("p1", "2026-11-26 10:00", "u-potential", "ok", 80, cents=880),
    scan("p2", "2026-11-27 10:00", "u-potential", "ok", 81),
    scan("p3", "2026-11-28 10:00", "u-potential", "ok", 82),
    scan("p4", "2026-11-29 10:00", "u-potential", "ok", 83),
    scan("p5", "2026-11-29 11:00", "u-potential", "ok", 84, role="store", draw="ineligible"),
    # u-new: one first scan at 11-30 00:00 local (= 11-29 16:00 UTC), three forged, one malformed
    N1,
    scan("n2", "2026-11-29 09:00", "u-new", "bad_mac", 901),
    scan("n3", "2026-11-29 09:01", "u-new", "bad_mac", 902),
    scan("n4", "2026-11-29 09:02", "u-new", "bad_mac", 903),
    scan("n5", "2026-11-29 09:03", "u-new", "malformed", tenant=0, batch=0, region="440106"),
    replay_of(N1),
    # u-maintain: first scans 10-25 and 10-31
    scan("m1", "2026-10-25 10:00", "u-maintain", "ok", 100, region="440305"),
    scan("m2", "2026-10-31 10:00", "u-maintain", "ok", 101, region="440305"),
    # u-lost: one first scan 10-30
    L1,
    replay_of(L1),
    # u-repeat: only repeat scans, 11-20 and 11-28
    scan("q1", "2026-11-20 10:00", "u-repeat", "repeat", 1),
    scan("q2", "2026-11-28 10:00", "u-repeat", "repeat", 3),
    # u-forger: forged codes only
    scan("f1", "2026-11-25 10:00", "u-forger", "bad_mac", 7001),
    scan("f2", "2026-11-25 10:01", "u-forger", "bad_mac", 7002),
    # u-future: first scan after AS_OF
    scan("x1", "2026-12-02 10:00", "u-future", "ok", 120),
    # a store account: case code, role store
    scan("s1", "2026-11-28 10:00", "store-S-1", "ok", 5000, kind=1, batch=201, sku="BEER-500-CASE", role="store",
         draw="ineligible"),
    # an invalid event without a user
    scan("bad-1", "2026-11-28 10:00", "", "invalid_event", tenant=0, batch=0, region=""),
    # tenant 8: the same user id as tenant 7's u-value, one first scan 11-29
    scan("w1", "2026-11-29 10:00", "u-value", "ok", 1, tenant=8, batch=7, sku="WINE-750", region="110105"),
]

#: As of 2026-11-30 (R = days since the last valid scan's local day, F = first scans up to
#: 11-30, M = prize cents; R↑ when R <= 7, F↑ when F >= 2, M↑ when M >= 1000; lifecycle:
#: churned R > 30, dormant R > 14, new when first <= 3 days ago, mature F >= 3, else growing).
#: (tenant, user): (days_since_first, days_since_last, F, M, rfm class, lifecycle stage)
EXPECTED = {
    # last 11-23 (07:00 local; 11-22 in UTC): R = 30 - 23 = 7 <= 7 ↑; F = 3 (v1, v2, v3; v1's
    # replay not counted) ↑; M = 600 + 400 = 1000 >= 1000 ↑.  first 11-10: 20 d > 3; R 7 <= 14
    # active; F 3 >= 3 mature
    (7, "u-value"): (20, 7, 3, 1000, "important_value", "mature"),
    # last 11-22 (23:59:59.999 local): R = 8 > 7 ↓; F = 2 >= 2 ↑; M = 1660 ↑.  first 11-15: 15 d;
    # active (8 <= 14); F 2 < 3 growing
    (7, "u-recall"): (15, 8, 2, 1660, "important_recall", "growing"),
    # last 11-30 (d2 at 23:59:59.999): R = 0 ↑; F = 1 (d3 is on 12-01 local) ↓; M = 8800 ↑ (d3's
    # 880 not yet).  first 11-27: 30 - 27 = 3 <= 3 new
    (7, "u-develop"): (3, 0, 1, 8800, "important_develop", "new"),
    # last 11-15: R = 15 ↓; F = 1 ↓; M = 1660 ↑.  15 > 14 dormant
    (7, "u-retain"): (15, 15, 1, 1660, "important_retain", "dormant"),
    # last 11-29: R = 1 ↑; F = 4 (p5 was a store scan) ↑; M = 880 < 1000 ↓.  first 11-26: 4 > 3;
    # active; F 4 >= 3 mature
    (7, "u-potential"): (4, 1, 4, 880, "potential", "mature"),
    # n1 at 11-30 00:00 local: R = 0 ↑; F = 1 ↓; M = 0 ↓.  first 0 <= 3 new
    (7, "u-new"): (0, 0, 1, 0, "new", "new"),
    # last 10-31: R = 1 + 29 = 30 ↓; F = 2 ↑; M = 0 ↓.  30 > 14 dormant, 30 is not > 30: not churned
    (7, "u-maintain"): (36, 30, 2, 0, "general_maintain", "dormant"),
    # last 10-30: R = 31 ↓; F = 1 ↓; M = 0 ↓.  31 > 30 churned
    (7, "u-lost"): (31, 31, 1, 0, "lost", "churned"),
    # repeats only, 11-20 and 11-28: R = 2 ↑; F = 0 ↓; M = 0 ↓.  first 10 d > 3; active; F 0 < 3 growing
    (7, "u-repeat"): (10, 2, 0, 0, "new", "growing"),
    # tenant 8, one first scan 11-29: R = 1 ↑, F = 1 ↓, M = 0 ↓; first 1 <= 3 new
    (8, "u-value"): (1, 1, 1, 0, "new", "new"),
}

#: As of 2026-12-02, for the scanners whose class or stage moves (the others as the rules say):
EXPECTED_LATER = {
    # last 12-01 (d3): R = 1 ↑; F = 2 (d1, d3) ↑; M = 8800 + 880 = 9680 ↑.  first 11-27: 5 d > 3;
    # active; F 2 < 3 growing
    (7, "u-develop"): (5, 1, 2, 9680, "important_value", "growing"),
    # last 11-23: R = 7 + 2 = 9 > 7 ↓; F 3 ↑; M 1000 ↑ -> recall; 9 <= 14, F 3: mature
    (7, "u-value"): (22, 9, 3, 1000, "important_recall", "mature"),
    # last 10-31: R = 32 > 30 churned
    (7, "u-maintain"): (38, 32, 2, 0, "general_maintain", "churned"),
    # x1 on 12-02: R = 0, F = 1, M = 0 new; first 0 new
    (7, "u-future"): (0, 0, 1, 0, "new", "new"),
    # first scan 11-29: 3 d <= 3 still new
    (8, "u-value"): (3, 3, 1, 0, "new", "new"),
}

#: Segment sizes as of AS_OF, from EXPECTED.
SIZES_T7 = {"rfm:important_value": 1, "rfm:important_recall": 1, "rfm:important_develop": 1,
            "rfm:important_retain": 1, "rfm:potential": 1, "rfm:new": 2,  # u-new, u-repeat
            "rfm:general_maintain": 1, "rfm:lost": 1,
            "lifecycle:new": 2,  # u-develop, u-new
            "lifecycle:growing": 2,  # u-recall, u-repeat
            "lifecycle:mature": 2,  # u-value, u-potential
            "lifecycle:dormant": 2,  # u-retain, u-maintain
            "lifecycle:churned": 1}  # u-lost
SIZES_T8 = {name: 0 for name in seg.segment_names()} | {"rfm:new": 1, "lifecycle:new": 1}


def stream_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    b = empty(SCAN_COLUMNS, len(rows))
    for name, _, _ in SCAN_COLUMNS:
        if any(name in r for r in rows):
            values = [r.get(name, b[name][0]) for r in rows]
            if b[name].dtype == object:
                b[name][:] = values
            else:
                b[name] = np.array(values, dtype=b[name].dtype)
    return b


def load_stream(sink, token: str | None = "stream-1") -> None:
    sink.ensure_schema()
    # two inserts, as two engine batches would be
    half = len(STREAM) // 2
    sink.write_scans(stream_batch(STREAM[:half]), dedup_token=token and f"{token}-a")
    sink.write_scans(stream_batch(STREAM[half:]), dedup_token=token and f"{token}-b")


# =========================================================================== in process (chdb)


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    pytest.importorskip("chdb")
    from scanstream.sinks.clickhouse import ClickHouseSink, connect
    s = ClickHouseSink(connect(f"chdb:{tmp_path_factory.mktemp('chdb-segments')}", database="segments"))
    load_stream(s)
    yield s
    s.close()


def members(sink, as_of: date, tenant: int | None = None) -> dict[tuple[int, str], tuple]:
    names, rows = sink.query(seg.members_sql(SETTINGS, as_of, tenant))
    out = {}
    for row in rows:
        r = dict(zip(names, row))
        out[(r["tenant"], r["user_id"])] = (r["days_since_first"], r["days_since_last"], r["frequency"],
                                            r["monetary_cents"], r["rfm_class"], r["lifecycle"])
    return out


def profiles(sink) -> dict[tuple[int, str], dict]:
    names, rows = sink.query("SELECT * FROM scanner_profiles ORDER BY tenant, user_id")
    return {(r[0], r[1]): dict(zip(names, r)) for r in rows}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=CHINA).astimezone(UTC).replace(tzinfo=None)


def test_profile_fields(sink) -> None:
    p = profiles(sink)
    # users with a user_id; the invalid event without one is not profiled
    assert sorted(p) == [(0, "u-new"), (7, "store-S-1"), (7, "u-develop"), (7, "u-forger"), (7, "u-future"),
                         (7, "u-lost"), (7, "u-maintain"), (7, "u-new"), (7, "u-potential"), (7, "u-recall"),
                         (7, "u-repeat"), (7, "u-retain"), (7, "u-value"), (8, "u-value")]
    v = p[(7, "u-value")]
    assert (v["first_scan"].replace(tzinfo=None), v["last_scan"].replace(tzinfo=None)) == (
        utc("2026-11-10 10:00"), utc("2026-11-23 07:00"))  # v1 .. v3
    assert (v["first_valid_scan"].replace(tzinfo=None), v["last_valid_scan"].replace(tzinfo=None)) == (
        utc("2026-11-10 10:00"), utc("2026-11-23 07:00"))
    assert v["scans"] == 6  # v1..v6; the replayed copy of v1 is not counted
    assert v["valid_scans"] == 5  # v1..v5 (ok, ok, ok, repeat, repeat)
    assert v["first_scans"] == 3  # v1, v2, v3
    assert v["codes"] == 4  # serials 1, 2, 3 and 50 (v4 is serial 2 again)
    assert v["skus"] == 2  # BEER-500 (v1, v3, v5), BEER-330 (v2, v4)
    # valid scans per place: 4401 x2 (v1, v2), 4403 x1 (v3), 1101 x2 (v4, v5); province 44: 3 > 11: 2,
    # city within 44: 4401 (2) > 4403 (1); 1101 ties 4401 but is not in the home province
    assert (v["home_province"], v["home_city"]) == ("44", "4401")
    assert (v["cities"], v["regions_seen"]) == (["1101", "4401", "4403"], 3)
    assert (v["prizes"], v["prize_cents"]) == (2, 600 + 400)
    assert v["roles"] == ["consumer"]
    assert (v["forged_scans"], v["malformed_scans"], v["invalid_scans"]) == (1, 0, 1)  # v6
    assert v["forged_share"] == pytest.approx(1 / 6) and v["invalid_share"] == pytest.approx(1 / 6)

    d = p[(7, "u-develop")]  # the profile has no as-of day: d3 (12-01) counts
    assert (d["scans"], d["valid_scans"], d["first_scans"], d["codes"], d["skus"]) == (3, 3, 2, 2, 2)
    assert (d["prizes"], d["prize_cents"]) == (2, 8800 + 880)
    assert (d["home_province"], d["home_city"], d["regions_seen"]) == ("33", "3301", 1)

    pot = p[(7, "u-potential")]
    assert pot["roles"] == ["consumer", "store"] and pot["first_scans"] == 5  # p1..p5, every role

    n = p[(7, "u-new")]
    # n1 ok, n2..n4 bad_mac: 3 of 4 forged; the malformed n5 names no tenant (tenant 0)
    assert (n["scans"], n["valid_scans"], n["forged_scans"], n["invalid_scans"]) == (4, 1, 3, 3)
    assert n["forged_share"] == 0.75 and n["malformed_share"] == 0
    n0 = p[(0, "u-new")]
    assert (n0["scans"], n0["malformed_scans"], n0["malformed_share"], n0["invalid_share"]) == (1, 1, 1.0, 1.0)
    assert n0["first_valid_scan"] is None and n0["home_province"] == "" and n0["cities"] == []

    f = p[(7, "u-forger")]
    assert (f["scans"], f["valid_scans"], f["codes"], f["forged_share"], f["prizes"]) == (2, 0, 0, 1.0, 0)
    assert f["first_valid_scan"] is None and f["last_valid_scan"] is None

    r = p[(7, "u-recall")]
    assert (r["scans"], r["first_scans"], r["prizes"], r["prize_cents"]) == (2, 2, 1, 1660)  # R1's replay left out
    assert p[(7, "u-lost")]["scans"] == 1  # L1's replay left out
    assert p[(8, "u-value")]["prize_cents"] == 0 and p[(8, "u-value")]["home_city"] == "1101"
    assert p[(7, "store-S-1")]["roles"] == ["store"]


def test_rfm_and_lifecycle_as_of(sink) -> None:
    got = members(sink, AS_OF)
    assert got == EXPECTED
    # left out: u-forger (no valid scan), u-future (first scan after AS_OF), store-S-1 (role store),
    # tenant 0 (no valid scan)
    assert members(sink, AS_OF, tenant=8) == {(8, "u-value"): EXPECTED[(8, "u-value")]}


def test_a_later_as_of_day_moves_scanners(sink) -> None:
    got = members(sink, LATER)
    for key, want in EXPECTED_LATER.items():
        assert got[key] == want, key
    assert (7, "u-future") in got and len(got) == len(EXPECTED) + 1


def test_sql_agrees_with_the_reference_rules(sink) -> None:
    for as_of in (AS_OF, LATER, date(2026, 11, 23), date(2027, 6, 1)):
        for first, last, f, m, rfm, stage in members(sink, as_of).values():
            assert seg.rfm_class(last, f, m, SETTINGS) == rfm
            assert seg.lifecycle_stage(first, last, f, SETTINGS) == stage


def test_profile_agrees_with_segment_inputs(sink) -> None:
    # after every scan (as of 12-02), F and M of the segments equal the profile's consumer-only numbers
    p = profiles(sink)
    for (tenant, user), (_, _, f, m, _, _) in members(sink, LATER).items():
        if user != "u-potential":  # its store scan is in the profile, not in F
            assert (p[(tenant, user)]["first_scans"], p[(tenant, user)]["prize_cents"]) == (f, m), user


def test_sizes(sink) -> None:
    _, rows = sink.query(seg.sizes_sql(SETTINGS, AS_OF))
    counts = seg.sizes(rows)
    assert counts == {7: SIZES_T7, 8: SIZES_T8}
    _, rows = sink.query(seg.sizes_sql(SETTINGS, AS_OF, tenant=1))
    assert seg.sizes(rows, tenant=1) == {1: dict.fromkeys(seg.segment_names(), 0)}


def test_export_sql_lists_the_segment(sink) -> None:
    def users(segment: str, tenant: int | None = None, as_of: date = AS_OF) -> list[str]:
        return [u for (u,) in sink.query(seg.export_sql(SETTINGS, as_of, segment, tenant))[1]]

    assert users("rfm:new", tenant=7) == ["u-new", "u-repeat"]
    assert users("rfm:new") == ["u-new", "u-repeat", "u-value"]  # u-value from tenant 8, once
    assert users("lifecycle:new", tenant=7) == ["u-develop", "u-new"]
    assert users("dormant", tenant=7) == ["u-maintain", "u-retain"]
    assert users("churned", as_of=LATER) == ["u-lost", "u-maintain"]
    assert users("important_value", tenant=8) == []


DASHBOARD = REPO / "config" / "grafana" / "dashboards" / "scanstream-segments.json"


def panel_sql(title: str) -> str:
    """A panel's SQL of the segments dashboard, tenant 7, 2026-11-01 .. 2026-12-31 (the plugin's
    $__dateFilter expands to two Date comparisons)."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (sql,) = [t["rawSql"] for p in board["panels"] if p["title"] == title for t in p["targets"]]
    return (sql.replace("${tenant}", "7")
            .replace("$__dateFilter(date)", "date >= toDate('2026-11-01') AND date <= toDate('2026-12-31')"))


def test_snapshots_feed_the_dashboard(sink) -> None:
    for as_of in (AS_OF, LATER, AS_OF):  # the day taken twice: the later snapshot replaces it
        _, rows = sink.query(seg.sizes_sql(SETTINGS, as_of))
        sink.insert(seg.SNAPSHOT_TABLE, seg.snapshot_batch(seg.sizes(rows), as_of), seg.SNAPSHOT_COLUMNS)
    _, rows = sink.query("SELECT date, tenant, segment, users FROM segment_snapshots FINAL ORDER BY ALL")
    assert len(rows) == 2 * 2 * 13  # days x tenants x segments
    assert {(t, s): n for d, t, s, n in rows if d == AS_OF} == {
        **{(7, k): v for k, v in SIZES_T7.items()}, **{(8, k): v for k, v in SIZES_T8.items()}}
    _, rows = sink.query(panel_sql("RFM classes over time"))
    series = {(t.date(), name): n for t, name, n in rows}
    assert series[(date(2026, 11, 29), "重要价值 important_value")] == 1  # midnight 11-30 China time, in UTC
    assert series[(date(2026, 12, 1), "重要价值 important_value")] == 1  # 12-02: u-develop (EXPECTED_LATER)
    assert series[(date(2026, 12, 1), "新 new")] == 3  # u-new, u-repeat, u-future
    assert len(rows) == 2 * 8
    _, rows = sink.query(panel_sql("Lifecycle stages over time"))
    assert [(name, n) for t, name, n in rows if t.date() == date(2026, 11, 29)] == [
        ("引入 new", 2), ("成长 growing", 2), ("成熟 mature", 2), ("休眠 dormant", 2), ("流失 churned", 1)]
    _, rows = sink.query(panel_sql("Latest snapshot"))
    assert rows[0] == (LATER, "重要价值 important_value", 1, 10.0)  # 1 of 10 scanners on 12-02
    assert len(rows) == 13


def test_reinserts_change_no_segment(sink) -> None:
    before_members, before_profiles = members(sink, AS_OF), profiles(sink)
    # the same batches under the same tokens: dropped, the profile view included
    load_stream(sink, token="stream-1")
    assert profiles(sink) == before_profiles
    # re-cut after a crash: every row again under new tokens.  scan_events FINAL keeps one row
    # per scan_id, so the segments are unchanged; so are the profile's distinct counts and prizes
    load_stream(sink, token="stream-2")
    assert members(sink, AS_OF) == before_members
    after = profiles(sink)
    for key, prof in before_profiles.items():
        for field in ("codes", "skus", "prizes", "prize_cents", "home_province", "home_city", "cities", "roles",
                      "first_scan", "last_valid_scan", "forged_share"):
            assert after[key][field] == prof[field], (key, field)
    assert after[(7, "u-value")]["scans"] == 2 * 6  # the documented caveat of the plain counts


# =========================================================================== pure logic


@pytest.mark.parametrize(("last", "f", "m", "want"), [
    (7, 2, 1000, "important_value"),  # every value exactly at its threshold is high
    (8, 2, 1000, "important_recall"),
    (7, 1, 1000, "important_develop"),
    (8, 1, 1000, "important_retain"),
    (7, 2, 999, "potential"),
    (0, 0, 0, "new"),
    (8, 5, 0, "general_maintain"),
    (400, 1, 999, "lost"),
])
def test_rfm_rule(last: int, f: int, m: int, want: str) -> None:
    assert seg.rfm_class(last, f, m, SETTINGS) == want


@pytest.mark.parametrize(("first", "last", "f", "want"), [
    (3, 0, 0, "new"), (3, 3, 9, "new"), (4, 0, 2, "growing"), (4, 0, 3, "mature"),
    (20, 14, 9, "mature"), (20, 15, 9, "dormant"), (40, 30, 9, "dormant"), (40, 31, 9, "churned"),
    (2, 20, 0, "dormant"),  # new_days > dormant_days would not make an inactive scanner new
])
def test_lifecycle_rule(first: int, last: int, f: int, want: str) -> None:
    s = SETTINGS if first != 2 else SegmentSettings(new_days=30, dormant_days=14, churn_days=30)
    assert seg.lifecycle_stage(first, last, f, s) == want


def test_segment_names() -> None:
    assert seg.resolve_segment("rfm:new") == ("rfm", "new")
    assert seg.resolve_segment("lifecycle:new") == ("lifecycle", "new")
    assert seg.resolve_segment("important_value") == ("rfm", "important_value")
    assert seg.resolve_segment("churned") == ("lifecycle", "churned")
    with pytest.raises(seg.SegmentError, match="ambiguous: say rfm:new or lifecycle:new"):
        seg.resolve_segment("new")
    with pytest.raises(seg.SegmentError, match="'vip' is not one of"):
        seg.resolve_segment("vip")
    assert len(seg.segment_names()) == 13 and len({c.pattern for c in seg.RFM_CLASSES}) == 8


def test_days_are_local_days() -> None:
    s = SETTINGS
    assert seg.default_as_of(s, datetime(2026, 11, 29, 15, 59, 59, tzinfo=UTC)) == date(2026, 11, 29)
    assert seg.default_as_of(s, datetime(2026, 11, 29, 16, 0, tzinfo=UTC)) == date(2026, 11, 30)
    assert seg.day_end_utc(AS_OF, s) == datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
    assert seg.local_day(cn("2026-11-23 07:00"), s) == date(2026, 11, 23)
    with pytest.raises(TypeError):
        seg.members_sql(s, datetime(2026, 11, 30))
    with pytest.raises(ValueError, match="tenant"):
        seg.members_sql(s, AS_OF, tenant=70000)


# =========================================================================== configuration


def write_config(path: Path, segments: str, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(f"""
        [[tenants]]
        id = 7
        keys = [{{ key_id = 0, hex = "000102030405060708090a0b0c0d0e0f" }}]

        [[tenants]]
        id = 8
        keys = [{{ key_id = 0, hex = "000102030405060708090a0b0c0d0e0f" }}]
        {extra}
    """) + textwrap.dedent(segments), encoding="utf-8")
    return path


def test_config_reads_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_mod.load(write_config(tmp_path / "a.toml", SEGMENTS_TOML)).segments == SETTINGS
    assert config_mod.load(write_config(tmp_path / "b.toml", "")).segments == SegmentSettings()
    assert config_mod.load(REPO / "config" / "local.toml").segments == SegmentSettings()
    for name, value in (("SCANSTREAM_KEY_7_0", "00" * 16), ("SCANSTREAM_KEY_7_1", "11" * 16),
                        ("SCANSTREAM_SEED_WINTER_2026", "a seed")):
        monkeypatch.setenv(name, value)
    assert config_mod.load(REPO / "config" / "production.toml").segments == SegmentSettings()


@pytest.mark.parametrize(("line", "message"), [
    ("recency_days = -1", "segments.recency_days: -1 out of range"),
    ("recency_days = 7.5", "segments.recency_days: expected an integer"),
    ("frequency = 0", "segments.frequency: 0 out of range"),
    ("frequency = \"3\"", "segments.frequency: expected an integer, got '3'"),
    ("monetary_cents = 0", "segments.monetary_cents: 0 out of range"),
    ("new_days = true", "segments.new_days: expected an integer"),
    ("mature_scans = 0", "segments.mature_scans: 0 out of range"),
    ("dormant_days = -3", "segments.dormant_days: -3 out of range"),
    ("churn_days = 14", "segments.churn_days: 14 must be more than dormant_days (14)"),
    ("churn_days = 10", "segments.churn_days: 10 must be more than dormant_days (14)"),
    ("utc_offset_minutes = 900", "segments.utc_offset_minutes: 900 out of range"),
    ("roles = [\"buyer\"]", "segments.roles: 'buyer' is not one of ['consumer', 'dealer', 'guide', 'store', 'warehouse']"),
    ("roles = []", "segments.roles: expected at least one of"),
    ("roles = \"consumer\"", "segments.roles: expected a list of strings"),
    ("recency = 7", "segments.recency: unknown key"),
])
def test_config_errors_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    key = line.split(" = ")[0]
    body = "\n".join(ln for ln in SEGMENTS_TOML.strip().splitlines() if not ln.startswith(key + " ")) + "\n" + line
    with pytest.raises(ConfigError) as info:
        config_mod.load(write_config(tmp_path / "bad.toml", body))
    assert message in str(info.value)


def test_segments_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("segments = 3\n" + write_config(tmp_path / "ok.toml", "").read_text(), encoding="utf-8")
    with pytest.raises(ConfigError, match="^segments: expected a table, got int$"):
        config_mod.load(path)


# =========================================================================== the CLI (subprocesses)

def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SCANSTREAM_CONFIG"}
    return subprocess.run([SCANSTREAM, *args], check=False, cwd=cwd, capture_output=True, timeout=180, env=env,
                          text=True)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(configuration, working folder): a chdb path filled with STREAM by another process."""
    if SCANSTREAM is None:
        pytest.skip("the scanstream console script is not installed")
    pytest.importorskip("chdb")
    home = tmp_path_factory.mktemp("segments-cli")
    chdb = home / "chdb"
    config = write_config(home / "conf" / "scanstream.toml", SEGMENTS_TOML,
                          extra=f"\n[sink]\nclickhouse = {json.dumps('chdb:' + str(chdb))}\n")
    loader = subprocess.run([sys.executable, str(Path(__file__).resolve()), "load", f"chdb:{chdb}"],
                            check=False, cwd=home, capture_output=True, text=True, timeout=180)
    assert loader.returncode == 0, loader.stderr
    return config, home


def export(cli, *args: str) -> list[str]:
    config, home = cli
    out = home / "crowd.txt"
    if out.exists():
        out.unlink()
    proc = ok(sh("segments", "export", "--config", str(config), "--out", str(out), *args, cwd=home))
    users = out.read_text(encoding="utf-8").splitlines()
    assert f"wrote {len(users)} users of " in proc.stdout
    return users


def test_cli_export_writes_exactly_the_segment(cli) -> None:
    assert export(cli, "--segment", "rfm:important_value", "--as-of", "2026-11-30", "--tenant", "7") == ["u-value"]
    assert export(cli, "--segment", "lifecycle:new", "--as-of", "2026-11-30", "--tenant", "7") == [
        "u-develop", "u-new"]
    assert export(cli, "--segment", "rfm:new", "--as-of", "2026-11-30") == ["u-new", "u-repeat", "u-value"]
    assert export(cli, "--segment", "dormant", "--as-of", "2026-11-30", "--tenant", "7") == [
        "u-maintain", "u-retain"]
    assert export(cli, "--segment", "important_value", "--as-of", "2026-12-02", "--tenant", "7") == ["u-develop"]
    assert export(cli, "--segment", "lost", "--as-of", "2026-11-30", "--tenant", "8") == []
    # every scanner is in exactly one class and one stage
    classes = [u for c in seg.RFM_CLASSES for u in export(cli, "--segment", f"rfm:{c.name}", "--as-of",
                                                          "2026-11-30", "--tenant", "7")]
    assert sorted(classes) == sorted(u for t, u in EXPECTED if t == 7)
    config, home = cli
    proc = ok(sh("segments", "export", "--config", str(config), "--segment", "lifecycle:mature", "--out", "-",
                 "--as-of", "2026-11-30", "--tenant", "7", cwd=home))
    assert proc.stdout == "u-potential\nu-value\n" and "2 users of lifecycle:mature" in proc.stderr


def test_cli_export_refuses_an_ambiguous_name(cli) -> None:
    config, home = cli
    proc = sh("segments", "export", "--config", str(config), "--segment", "new", "--out", str(home / "x.txt"),
              cwd=home)
    assert proc.returncode == 2 and "ambiguous: say rfm:new or lifecycle:new" in proc.stderr
    assert not (home / "x.txt").exists()
    proc = sh("segments", "show", "--config", str(config), "--as-of", "30.11.2026", cwd=home)
    assert proc.returncode == 2 and "expected YYYY-MM-DD" in proc.stderr


def test_cli_show_prints_the_sizes(cli) -> None:
    config, home = cli
    out = ok(sh("segments", "show", "--config", str(config), "--as-of", "2026-11-30", cwd=home)).stdout
    assert out.startswith("Segments as of 2026-11-30: ")
    got, kind = {}, None
    for line in out.splitlines():
        if line.startswith(("RFM classes", "Lifecycle stages")):
            kind = "rfm" if line.startswith("RFM") else "lifecycle"
            continue
        cells = re.split(r"\s{2,}", line.strip())
        if kind and len(cells) == 6 and cells[0].isdigit():
            assert float(cells[4]) == pytest.approx(100 * int(cells[3]) / (9 if cells[0] == "7" else 1), abs=0.05)
            got[(int(cells[0]), f"{kind}:{cells[1]}")] = int(cells[3])
    assert {k: v for k, v in got.items() if k[0] == 7} == {(7, name): n for name, n in SIZES_T7.items()}
    assert {k: v for k, v in got.items() if k[0] == 8} == {(8, name): n for name, n in SIZES_T8.items()}
    assert re.search(r"(?m)^\s+7\s+important_value\s+R↑F↑M↑\s+1\s+11\.1\s+重要价值$", out)  # 1 of 9 scanners


def test_cli_snapshot_stores_the_sizes(cli) -> None:
    config, home = cli
    ok(sh("segments", "snapshot", "--config", str(config), "--as-of", "2026-11-30", cwd=home))
    ok(sh("segments", "snapshot", "--config", str(config), "--as-of", "2026-12-02", cwd=home))
    proc = ok(sh("segments", "snapshot", "--config", str(config), "--as-of", "2026-11-30", cwd=home))  # again
    assert "stored 26 segment sizes for 2026-11-30 (tenants: 7, 8)" in proc.stdout  # 2 tenants x 13 segments
    sql = ("SELECT toString(date), tenant, segment, users FROM segment_snapshots FINAL "
           "ORDER BY date, tenant, segment")
    rows = query_rows(config, home, sql)
    first = {(t, s): n for d, t, s, n in rows if d == "2026-11-30"}
    assert first == {**{(7, k): v for k, v in SIZES_T7.items()}, **{(8, k): v for k, v in SIZES_T8.items()}}
    later = {(t, s): n for d, t, s, n in rows if d == "2026-12-02"}
    # 12-02: u-future joins (10 scanners in tenant 7); u-develop -> important_value, u-value ->
    # important_recall, u-maintain -> churned (EXPECTED_LATER); the others keep their class and stage
    # (u-new, u-repeat: R = 2, 4 <= 7; u-retain 17 <= 30 dormant; u-recall R 10 > 7 still recall, growing)
    assert later[(7, "rfm:important_value")] == 1 and later[(7, "rfm:important_recall")] == 2
    assert later[(7, "rfm:important_develop")] == 0 and later[(7, "rfm:new")] == 3
    assert later[(7, "lifecycle:churned")] == 2 and later[(7, "lifecycle:dormant")] == 1
    assert sum(n for (t, s), n in later.items() if t == 7 and s.startswith("rfm:")) == 10
    assert len(rows) == 2 * 2 * 13


def query_rows(config: Path, home: Path, sql: str) -> list[tuple]:
    """Rows of ``scanstream query`` output (its text table), cells split on 2+ spaces."""
    out = ok(sh("query", "--config", str(config), sql, cwd=home)).stdout
    lines = out.rstrip("\n").splitlines()[2:-1]
    rows = []
    for line in lines:
        d, t, s, n = re.split(r"\s{2,}", line.strip())
        rows.append((d, int(t), s, int(n)))
    return rows


# =========================================================================== loader (run as a script)

if __name__ == "__main__":
    # python tests/test_segments.py load chdb:PATH [DATABASE]: STREAM into a chdb path, from a
    # process of its own (chdb allows one path per process)
    from scanstream.sinks.clickhouse import ClickHouseSink, connect

    _, command, target, *rest = sys.argv
    assert command == "load", sys.argv
    _sink = ClickHouseSink(connect(target, database=rest[0] if rest else "scanstream"))
    load_stream(_sink)
    _sink.close()
