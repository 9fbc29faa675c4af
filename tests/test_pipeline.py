"""engine.Pipeline end to end (DESIGN.md "Verdicts", "Scan event", "Campaign", "Outputs").

A small hand-built world drives the public API only (``config.parse``, ``Registry.from_rows``,
``MemoryStateStore``, ``Pipeline.process``):

* tenant 7 signs with the DESIGN.md test key (key_id 0 only; key_id 1 is *not* configured);
* batches 42 (unit, SKU-A), 43 (unit by default, SKU-B), 44 (unit, not activated) and a
  case batch 42 with the same numbers as the unit batch;
* dealers D-GD (KA, Guangdong "44"), D-JS (traditional, Nanjing "3201" and Shanghai "31") and
  D-ANY (no regions, no channel); unit serials 3000.. of batch 42 are shipped to nobody;
* stores in Shenzhen (KA), a Guangzhou bar (horeca), Nanjing (traditional) and one with neither
  region nor channel;
* one campaign whose only tier has probability 1, so every eligible scan wins and a missing
  prize always means the engine refused it.

Every expectation below is written from DESIGN.md and worked out by hand, not read back from
the engine.  The batch-size test reuses ``streams.synthetic`` for a few thousand mixed scans.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from scanstream.engine import config as config_mod
from scanstream.engine import outcomes
from scanstream.engine.geo import AdcodeIndex
from scanstream.engine.pipeline import BatchResult, Pipeline
from scanstream.engine.registry import Registry
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.ext import codec

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")  # DESIGN.md test key, tenant 7 key_id 0
ROTATED_KEY = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")  # key_id 1: not configured here
TENANT = 7
CST = dt.timezone(dt.timedelta(hours=8))
#: 2026-11-20T08:00:00+08:00, on a 10-minute window boundary.
T0 = 1795651200000
MINUTE = 60_000
WINDOW = 10 * MINUTE
PRIZE_CENTS = 888

VERDICT_ORDER = ["invalid_event", "malformed", "unknown_tenant", "bad_mac", "unknown_batch", "not_activated",
                 "repeat", "ok"]


# --- the world ---------------------------------------------------------------------------------

def config_dict(**overrides) -> dict:
    """A TOML-like document as ``tomllib`` would give it."""
    data = {
        "tenants": [{"id": TENANT, "name": "Test brewery", "keys": [{"key_id": 0, "hex": KEY.hex()}]}],
        "engine": {"batch_size": 100, "resolve_gps": True},
        "diversion": {"window_minutes": 10, "thresholds": {"consumer": 3, "store": 1, "dealer": 1}},
        "clones": {"window_minutes": 10, "max_users": 3},
        "campaigns": [{
            "id": "red", "tenant": TENANT, "skus": ["SKU-A", "SKU-A-CASE"],
            "start": dt.datetime(2026, 11, 1, tzinfo=CST), "end": dt.datetime(2027, 1, 1, tzinfo=CST),
            "budget_cents": 10_000_000, "daily_cap": 1000, "seed": "test-seed",
            "tiers": [{"name": "8.88", "cents": PRIZE_CENTS, "probability": 1.0, "stock": 100_000}],
        }],
    }
    data.update(overrides)
    return data


def make_config(**overrides):
    return config_mod.parse(config_dict(**overrides), Path("/nonexistent/scanstream.toml"))


def csv_rows(header: str, *rows: tuple) -> list[tuple[int, dict[str, str]]]:
    names = header.split(",")
    return [(line, dict(zip(names, (str(v) for v in row)))) for line, row in enumerate(rows, start=2)]


def make_registry() -> Registry:
    return Registry.from_rows(
        csv_rows("tenant,batch,kind,sku,product,activated,size",
                 (7, 42, "unit", "SKU-A", "Lager", 1, 10_000),
                 (7, 43, "", "SKU-B", "Stout", 1, 1_000),  # no kind: a unit batch
                 (7, 44, "unit", "SKU-A", "Lager, spring run", 0, 1_000),
                 (7, 42, "case", "SKU-A-CASE", "Lager, case of 12", 1, 1_000)),
        csv_rows("dealer_id,tenant,name,channel,regions,manager,webhook",
                 ("D-GD", 7, "Guangdong KA", "KA", "44", "wang.li", ""),
                 ("D-JS", 7, "Nanjing and Shanghai", "traditional", "3201;31", "li.na", ""),
                 ("D-ANY", 7, "Everywhere", "", "", "zhao.min", "")),
        csv_rows("tenant,batch,kind,serial_from,serial_to,dealer_id,shipped_at",
                 (7, 42, "unit", 0, 999, "D-GD", "2026-11-01"),
                 (7, 42, "unit", 1000, 1999, "D-JS", "2026-11-01"),
                 (7, 42, "unit", 2000, 2999, "D-ANY", "2026-11-01"),
                 (7, 42, "case", 0, 999, "D-JS", "2026-11-01"),
                 (7, 43, "", 0, 999, "D-GD", "2026-11-01"),
                 (7, 44, "unit", 0, 999, "D-GD", "2026-11-01")),
        csv_rows("store_id,tenant,dealer_id,region,channel",
                 ("S-SZ", 7, "D-GD", "440304", "KA"),
                 ("S-BAR", 7, "D-GD", "440106", "horeca"),
                 ("S-NJ", 7, "D-JS", "320102", "traditional"),
                 ("S-BLANK", 7, "", "", "")),
    )


@pytest.fixture(scope="module")
def registry() -> Registry:
    return make_registry()


@pytest.fixture(scope="module")
def resolve_gps():
    return AdcodeIndex.load().resolve


@pytest.fixture
def pipeline(registry, resolve_gps) -> Pipeline:
    return Pipeline(make_config(), registry, MemoryStateStore(), resolve_gps=resolve_gps)


def code(batch: int, serial: int, kind: int = 0, tenant: int = TENANT, key: bytes = KEY, key_id: int = 0) -> str:
    return codec.encode(key, tenant, batch, serial, kind=kind, key_id=key_id)


def event(scan_id: str, code_text: str, user: str = "wx-1", ts: int | str = T0, **fields) -> bytes:
    return orjson.dumps({"scan_id": scan_id, "ts": ts, "code": code_text, "user_id": user, **fields})


def col(result: BatchResult, name: str) -> list:
    return result.scans[name].tolist()


def one(result: BatchResult, i: int = 0) -> dict:
    """Row ``i`` of the scans as plain Python values."""
    return outcomes.rows(result.scans, outcomes.SCAN_COLUMNS)[i]


def run_batches(pipeline: Pipeline, lines: list[bytes], size: int) -> BatchResult:
    """Lines through the pipeline in batches of ``size``; the outputs concatenated."""
    parts = [pipeline.process(lines[i:i + size]) for i in range(0, len(lines), size)]
    return BatchResult(outcomes.concat(outcomes.SCAN_COLUMNS, [p.scans for p in parts]),
                       outcomes.concat(outcomes.ALERT_COLUMNS, [p.alerts for p in parts]),
                       outcomes.concat(outcomes.AWARD_COLUMNS, [p.awards for p in parts]))


def forged(code_text: str) -> str:
    """The code with its last character changed: DESIGN.md says this is always bad_mac."""
    return code_text[:-1] + ("X" if code_text[-1] != "X" else "Y")


# --- output contract ---------------------------------------------------------------------------

def test_outputs_have_the_contract_columns_and_types(pipeline):
    r = pipeline.process([event("s1", code(42, 1), region="440304"), b"junk"])
    for batch, columns, n in ((r.scans, outcomes.SCAN_COLUMNS, 2), (r.alerts, outcomes.ALERT_COLUMNS, 0),
                              (r.awards, outcomes.AWARD_COLUMNS, 1)):
        assert set(batch) >= set(outcomes.names(columns))
        for name, dtype, _ in columns:
            assert batch[name].dtype == np.dtype(dtype), name
            assert len(batch[name]) == n, name


def test_empty_batch(pipeline):
    r = pipeline.process([])
    assert all(len(v) == 0 for v in r.scans.values())
    assert outcomes.length(r.alerts) == 0 and outcomes.length(r.awards) == 0


# --- verdicts ----------------------------------------------------------------------------------

def world_of_verdicts() -> list[tuple[bytes, str]]:
    """One line per verdict (and a few more), with the verdict DESIGN.md gives it."""
    return [
        (b"this is not json", "invalid_event"),
        (event("v-mal", "HELLO"), "malformed"),
        (event("v-ten", code(42, 5, tenant=9)), "unknown_tenant"),
        (event("v-kid", code(42, 5, key=ROTATED_KEY, key_id=1)), "unknown_tenant"),  # key_id 1 not configured
        (event("v-mac", forged(code(42, 6))), "bad_mac"),
        (event("v-unk", code(99, 1)), "unknown_batch"),
        (event("v-unk-case", code(43, 1, kind=1)), "unknown_batch"),  # batch 43 is registered for units only
        (event("v-nact", code(44, 1)), "not_activated"),
        (event("v-ok", code(42, 7)), "ok"),
        (event("v-rep", code(42, 7), user="wx-2"), "repeat"),
        (event("v-ok-b43", code(43, 7)), "ok"),
    ]


def test_every_verdict_one_row_per_line_in_input_order(registry, resolve_gps):
    cases = world_of_verdicts()
    # a scrambled order; the ok scan (8) still comes before its repeat (9)
    order = [10, 4, 8, 0, 7, 2, 9, 5, 1, 6, 3]
    assert sorted(order) == list(range(len(cases)))
    lines = [cases[i][0] for i in order]
    p = Pipeline(make_config(), registry, MemoryStateStore(), resolve_gps=resolve_gps)
    r = p.process(lines)
    assert outcomes.length(r.scans) == len(lines)
    assert col(r, "verdict") == [cases[i][1] for i in order]
    # scan ids come back where their line was
    for line, sid in zip(lines, col(r, "scan_id")):
        if line.startswith(b"{"):
            assert sid == orjson.loads(line)["scan_id"]
        else:
            assert sid != ""
    assert set(col(r, "verdict")) == set(VERDICT_ORDER)


def test_only_ok_scans_win(pipeline):
    # the campaign's one tier has probability 1: every eligible scan wins, so "not won" is a refusal
    r = pipeline.process([line for line, _ in world_of_verdicts()])
    rows = {row["scan_id"]: row for row in outcomes.rows(r.scans, outcomes.SCAN_COLUMNS)}
    assert rows["v-ok"]["draw"] == "won" and rows["v-ok"]["prize_cents"] == PRIZE_CENTS
    assert rows["v-ok-b43"]["draw"] == "ineligible"  # SKU-B is outside the campaign's skus
    for sid, row in rows.items():
        if sid != "v-ok":
            assert row["draw"] != "won" and row["prize_cents"] == 0 and row["prize_tier"] == "", row
    assert r.awards["scan_id"].tolist() == ["v-ok"]
    assert r.awards["prize_cents"].tolist() == [PRIZE_CENTS] and r.awards["campaign"].tolist() == ["red"]


INVALID_EVENTS = [
    pytest.param(b"not json at all", "not JSON", id="not-json"),
    pytest.param(b'{"scan_id": "x", "ts": 1795651200000', "not JSON", id="truncated-json"),
    pytest.param(b"[1, 2, 3]", "not a JSON object", id="array"),
    pytest.param(b'"a string"', "not a JSON object", id="json-string"),
    pytest.param(b"42", "not a JSON object", id="json-number"),
    pytest.param(b"null", "not a JSON object", id="json-null"),
    pytest.param(b"", "not JSON", id="empty-line"),
    pytest.param(orjson.dumps({"ts": T0, "code": "C", "user_id": "u"}), "scan_id", id="missing-scan_id"),
    pytest.param(orjson.dumps({"scan_id": "x", "code": "C", "user_id": "u"}), "ts", id="missing-ts"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "user_id": "u"}), "code", id="missing-code"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "code": "C"}), "user_id", id="missing-user_id"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "code": None, "user_id": "u"}), "code", id="code-null"),
    pytest.param(orjson.dumps({"scan_id": "", "ts": T0, "code": "C", "user_id": "u"}), "scan_id", id="empty-scan_id"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "code": "C", "user_id": ""}), "user_id", id="empty-user_id"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "code": 42, "user_id": "u"}), "code", id="code-int"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "code": ["C"], "user_id": "u"}), "code", id="code-list"),
    pytest.param(orjson.dumps({"scan_id": ["x"], "ts": T0, "code": "C", "user_id": "u"}), "scan_id",
                 id="scan_id-list"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": "yesterday", "code": "C", "user_id": "u"}), "ts",
                 id="ts-yesterday"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": "2026-11-20T08:00:00", "code": "C", "user_id": "u"}), "ts",
                 id="ts-without-zone"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": "1795651200000", "code": "C", "user_id": "u"}), "ts",
                 id="ts-digits-as-string"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": 1795651200000.5, "code": "C", "user_id": "u"}), "ts",
                 id="ts-float"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": True, "code": "C", "user_id": "u"}), "ts", id="ts-bool"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "code": "C", "user_id": "u", "role": "boss"}), "role",
                 id="role-boss"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "code": "C", "user_id": "u", "role": ""}), "role",
                 id="role-empty"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "code": "C", "user_id": "u", "region": "Shenzhen"}),
                 "region", id="region-not-adcode"),
    pytest.param(orjson.dumps({"scan_id": "x", "ts": T0, "code": "C", "user_id": "u", "lat": "22.5"}), "lat",
                 id="lat-string"),
    pytest.param(orjson.dumps({"scan_id": "x" * 300, "ts": T0, "code": "C", "user_id": "u"}), "scan_id",
                 id="scan_id-too-long"),
    pytest.param(b'{"scan_id": "x", "ts": 1795651200000, "code": "C", "user_id": "u", "pad": "' + b"p" * 70_000
                 + b'"}', "exceeds", id="huge-line"),
]


@pytest.mark.parametrize("line,mentions", INVALID_EVENTS)
def test_invalid_event_keeps_reason_and_raw_line(pipeline, line, mentions):
    good_before = event("g-1", code(42, 11))
    good_after = event("g-2", code(42, 12))
    r = pipeline.process([good_before, line, good_after])
    assert col(r, "verdict") == ["ok", "invalid_event", "ok"]
    assert mentions in r.scans["reason"][1]
    assert r.scans["raw"][1] == line.decode()
    assert r.scans["scan_id"][1] != ""  # never an anonymous row
    assert r.scans["reason"][0] == r.scans["reason"][2] == ""
    assert r.scans["raw"][0] == r.scans["raw"][2] == ""
    assert r.scans["draw"][1] in ("none", "ineligible") and r.scans["prize_cents"][1] == 0
    assert r.scans["diversion"][1] == "none"


def test_lines_that_are_not_text_are_invalid_events_too(pipeline):
    lines = [{"scan_id": "a"}, None, b'\xff{"scan_id": "b"}', event("ok", code(42, 13))]
    r = pipeline.process(lines)
    assert col(r, "verdict") == ["invalid_event"] * 3 + ["ok"]
    assert all(col(r, "reason")[:3]) and all(col(r, "raw")[:3]) and all(col(r, "scan_id"))
    assert "dict" in r.scans["reason"][0] and "\ufffd" in r.scans["raw"][2]


def test_invalid_event_beats_a_bad_code():
    # several problems: the event is unusable, whatever its code
    lines = [orjson.dumps({"scan_id": "x", "ts": "yesterday", "code": "HELLO", "user_id": "u"}),
             orjson.dumps({"scan_id": "y", "ts": T0, "code": forged(code(42, 1)), "user_id": "u", "role": "boss"})]
    r = Pipeline(make_config(), make_registry(), MemoryStateStore()).process(lines)
    assert col(r, "verdict") == ["invalid_event", "invalid_event"]
    assert "ts" in r.scans["reason"][0]
    assert "role" in r.scans["reason"][1]


def test_anonymous_invalid_events_are_named_by_position(pipeline):
    lines = [b"junk", event("ok-1", code(42, 21)), b"junk"]
    positions = np.array(["scans.jsonl:1", "scans.jsonl:2", "scans.jsonl:3"], dtype=object)
    r = pipeline.process(lines, positions=positions)
    assert col(r, "scan_id") == ["pos:scans.jsonl:1", "ok-1", "pos:scans.jsonl:3"]
    assert col(r, "raw") == ["junk", "", "junk"]


def test_huge_str_line_is_measured_in_bytes(pipeline):
    line = orjson.dumps({"scan_id": "x", "ts": T0, "code": code(42, 31), "user_id": "u", "pad": "好" * 30_000}).decode()
    assert len(line.encode()) > 65536 > len(line)
    r = pipeline.process([line])
    assert col(r, "verdict") == ["invalid_event"]


@pytest.mark.parametrize("first,second,expected", [
    # invalid_event > malformed
    (orjson.dumps({"scan_id": "a", "ts": "yesterday", "code": "HELLO", "user_id": "u"}), None, "invalid_event"),
    # malformed > unknown_tenant: "4" makes the version 2, not a v1 code, whatever its tenant
    (event("a", "4" + code(42, 1, tenant=9)[1:]), None, "malformed"),
    (event("a", code(42, 1, tenant=9)[:-1]), None, "malformed"),  # 23 characters
    # unknown_tenant > bad_mac: a forged code of a tenant without keys
    (event("a", forged(code(42, 1, tenant=9))), None, "unknown_tenant"),
    # bad_mac > unknown_batch: a forged code of a batch nobody registered
    (event("a", forged(code(99, 1))), None, "bad_mac"),
    # not_activated > repeat: a not-activated code scanned twice stays not_activated
    (event("a", code(44, 3)), event("b", code(44, 3), user="wx-2"), "not_activated"),
    # unknown_batch > repeat
    (event("a", code(99, 3)), event("b", code(99, 3), user="wx-2"), "unknown_batch"),
    # bad_mac > repeat: a forgery of an already scanned code
    (event("a", code(42, 41)), event("b", forged(code(42, 41)), user="wx-2"), "bad_mac"),
], ids=["invalid>malformed", "malformed>unknown_tenant", "short>unknown_tenant", "unknown_tenant>bad_mac",
        "bad_mac>unknown_batch", "not_activated>repeat", "unknown_batch>repeat", "bad_mac>repeat"])
def test_verdict_precedence(pipeline, first, second, expected):
    lines = [first] + ([second] if second is not None else [])
    r = pipeline.process(lines)
    assert col(r, "verdict")[-1] == expected


def test_code_text_forms_share_one_identity(pipeline):
    c = code(42, 51)
    forms = [c, c.lower(), f"https://q.example.cn/c/{c}", "-".join([c[:8], c[8:16], c[16:]]),
             c.replace("0", "O").replace("1", "I")]
    r = pipeline.process([event(f"f{i}", f) for i, f in enumerate(forms)])
    assert col(r, "verdict") == ["ok"] + ["repeat"] * (len(forms) - 1)
    assert set(col(r, "serial")) == {51}


def test_repeat_by_same_and_other_user_across_batches(pipeline):
    c = code(42, 61)
    a = pipeline.process([event("a", c, user="wx-1")])
    b = pipeline.process([event("b", c, user="wx-1"), event("c", c, user="wx-9")])
    assert col(a, "verdict") == ["ok"]
    assert col(b, "verdict") == ["repeat", "repeat"]
    assert col(b, "replay") == [0, 0]
    assert col(b, "draw") == ["ineligible", "ineligible"]


def test_ok_row_carries_registry_facts(pipeline):
    r = pipeline.process([event("a", code(42, 1500), region="320102", channel="traditional", ip="10.0.0.1",
                                device_id="dev-9", store_id="S-NJ")])
    row = one(r)
    assert row["verdict"] == "ok"
    assert (row["tenant"], row["kind"], row["batch"], row["serial"]) == (7, 0, 42, 1500)
    assert row["sku"] == "SKU-A" and row["dealer_id"] == "D-JS"
    assert (row["ip"], row["device_id"], row["store_id"]) == ("10.0.0.1", "dev-9", "S-NJ")
    assert row["role"] == "consumer" and row["ts"] == T0
    assert row["campaign"] == "red" and row["prize_tier"] == "8.88" and row["prize_cents"] == PRIZE_CENTS


# --- time --------------------------------------------------------------------------------------

SAME_INSTANT = [  # 2026-11-20T00:00:00.250Z in every accepted spelling
    "2026-11-20T00:00:00.250Z",
    "2026-11-20t00:00:00.25z",
    "2026-11-20 00:00:00.250Z",
    "2026-11-20T08:00:00.250+08:00",
    "2026-11-19T19:00:00.25-05:00",
    "2026-11-20T05:30:00.250123456+05:30",  # finer digits are dropped
    "2026-11-20T00:00:00.250+00:00",
    "2026-11-20T00:00:00.250-00:00",
    1795132800250,
]


def test_rfc3339_and_epoch_ms_give_the_same_ts(pipeline):
    lines = [event(f"t{i}", code(42, 100 + i), ts=ts) for i, ts in enumerate(SAME_INSTANT)]
    r = pipeline.process(lines)
    assert col(r, "verdict") == ["ok"] * len(lines), col(r, "reason")
    expected = int(dt.datetime(2026, 11, 20, 0, 0, 0, 250_000, tzinfo=dt.timezone.utc).timestamp() * 1000)
    assert col(r, "ts") == [expected] * len(lines)


@pytest.mark.parametrize("ts,valid", [
    ("2000-01-01T00:00:00Z", True),
    (946684800000, True),
    ("1999-12-31T23:59:59.999Z", False),
    ("2000-01-01T07:59:59+08:00", False),  # 1999-12-31T23:59:59Z
    (946684799999, False),
    ("2099-12-31T23:59:59.999Z", True),
    (4102444799999, True),
    ("2100-01-01T00:00:00Z", False),
    (4102444800000, False),
    (0, False),
    (1795132800, False),  # epoch seconds are not epoch milliseconds
    (-1, False),
])
def test_ts_must_lie_in_2000_to_2100(pipeline, ts, valid):
    r = pipeline.process([event("t", code(42, 150), ts=ts)])
    if valid:
        assert col(r, "verdict") == ["ok"], col(r, "reason")
    else:
        assert col(r, "verdict") == ["invalid_event"]
        assert "ts" in r.scans["reason"][0]


def test_leap_day_of_a_leap_year_is_valid(pipeline):
    r = pipeline.process([event("t", code(42, 151), ts="2028-02-29T12:00:00Z")])
    assert col(r, "verdict") == ["ok"]
    assert col(r, "ts") == [int(dt.datetime(2028, 2, 29, 12, tzinfo=dt.timezone.utc).timestamp() * 1000)]


@pytest.mark.parametrize("ts", ["2026-02-30T00:00:00Z", "2026-04-31T00:00:00Z", "2025-02-29T00:00:00Z"])
def test_impossible_dates_are_invalid(pipeline, ts):
    r = pipeline.process([event("t", code(42, 152), ts=ts)])
    assert col(r, "verdict") == ["invalid_event"]


# --- diversion ---------------------------------------------------------------------------------

DIVERSION_CASES = [
    # (batch, serial, kind, event fields, expected dealer, expected diversion)
    pytest.param(42, 200, 0, {"region": "440304"}, "D-GD", "none", id="in-province"),
    pytest.param(42, 201, 0, {"region": "44"}, "D-GD", "none", id="province-level-region"),
    pytest.param(42, 202, 0, {"region": "110101"}, "D-GD", "region", id="beijing"),
    pytest.param(42, 203, 0, {"region": "440304", "channel": "KA"}, "D-GD", "none", id="same-channel"),
    pytest.param(42, 204, 0, {"region": "440304", "channel": "ecommerce"}, "D-GD", "channel", id="channel"),
    pytest.param(42, 205, 0, {"region": "430102", "channel": "ecommerce"}, "D-GD", "region+channel",
                 id="region+channel"),
    # 4-digit authorisation "3201" (Nanjing) and 2-digit "31" (Shanghai)
    pytest.param(42, 1200, 0, {"region": "320102"}, "D-JS", "none", id="3201-nanjing-district"),
    pytest.param(42, 1201, 0, {"region": "3201"}, "D-JS", "none", id="3201-city-level"),
    pytest.param(42, 1202, 0, {"region": "320505"}, "D-JS", "region", id="suzhou-not-under-3201"),
    pytest.param(42, 1203, 0, {"region": "32"}, "D-JS", "region", id="province-32-not-under-3201"),
    pytest.param(42, 1204, 0, {"region": "310101"}, "D-JS", "none", id="shanghai-under-31"),
    pytest.param(42, 1205, 0, {"region": "330106"}, "D-JS", "region", id="hangzhou"),
    # store channel has priority over the event's channel
    pytest.param(42, 206, 0, {"store_id": "S-BAR", "channel": "KA"}, "D-GD", "channel", id="store-channel-wins"),
    pytest.param(42, 207, 0, {"store_id": "S-SZ", "channel": "horeca"}, "D-GD", "none", id="store-channel-wins-2"),
    pytest.param(42, 208, 0, {"store_id": "S-BLANK", "channel": "horeca"}, "D-GD", "channel",
                 id="blank-store-channel-falls-back"),
    pytest.param(42, 209, 0, {"store_id": "S-UNKNOWN", "channel": "horeca", "region": "440304"}, "D-GD", "channel",
                 id="unknown-store"),
    pytest.param(42, 210, 0, {"store_id": "S-NJ"}, "D-GD", "region+channel", id="store-region-and-channel"),
    # nothing to judge
    pytest.param(42, 211, 0, {}, "D-GD", "none", id="region-unknown"),
    pytest.param(42, 212, 0, {"store_id": "S-BLANK"}, "D-GD", "none", id="store-without-region"),
    pytest.param(42, 2200, 0, {"region": "110101", "channel": "ecommerce"}, "D-ANY", "none", id="dealer-anywhere"),
    pytest.param(42, 3200, 0, {"region": "110101", "channel": "ecommerce"}, "", "none", id="no-dealer"),
    # a case code with a unit code's numbers belongs to the case shipment (D-JS)
    pytest.param(42, 213, 1, {"region": "440304"}, "D-JS", "region", id="case-code-own-shipment"),
    pytest.param(42, 214, 1, {"region": "320102", "channel": "traditional"}, "D-JS", "none", id="case-code-home"),
]


@pytest.mark.parametrize("batch,serial,kind,fields,dealer,expected", DIVERSION_CASES)
def test_diversion(pipeline, batch, serial, kind, fields, dealer, expected):
    c = code(batch, serial, kind=kind)
    r = pipeline.process([event("first", c, **fields), event("again", c, user="wx-2", **fields)])
    assert col(r, "verdict") == ["ok", "repeat"]
    assert col(r, "dealer_id") == [dealer, dealer]
    assert col(r, "diversion") == [expected, expected]


def test_diversion_needs_a_gps_resolver_to_use_gps(registry):
    p = Pipeline(make_config(), registry, MemoryStateStore(), resolve_gps=None)
    r = p.process([event("a", code(42, 220), lat=39.9150, lon=116.4110)])  # Beijing, but unresolved
    assert col(r, "region") == [""] and col(r, "diversion") == ["none"]


@pytest.mark.parametrize("line_fn", [
    lambda: event("x", code(44, 5), region="110101", channel="ecommerce"),  # not activated, shipped to D-GD
    lambda: event("x", forged(code(42, 5)), region="110101", channel="ecommerce"),
    lambda: event("x", code(99, 5), region="110101", channel="ecommerce"),
    lambda: orjson.dumps({"scan_id": "x", "ts": "yesterday", "code": code(42, 5), "user_id": "u",
                          "region": "110101", "channel": "ecommerce"}),
], ids=["not_activated", "bad_mac", "unknown_batch", "invalid_event"])
def test_no_diversion_and_no_alert_for_unverified_scans(pipeline, line_fn):
    lines = [line_fn() for _ in range(5)]
    r = pipeline.process([orjson.dumps({**orjson.loads(l), "scan_id": f"x{i}"}) if l.startswith(b"{") else l
                          for i, l in enumerate(lines)])
    assert col(r, "diversion") == ["none"] * 5
    assert outcomes.length(r.alerts) == 0


def test_unit_and_case_codes_with_same_numbers_are_different_codes(pipeline):
    unit, case = code(42, 300), code(42, 300, kind=1)
    assert unit != case
    r = pipeline.process([event("u", unit), event("c", case), event("u2", unit, user="wx-2"),
                          event("c2", case, user="wx-2")])
    assert col(r, "verdict") == ["ok", "ok", "repeat", "repeat"]
    assert col(r, "kind") == [0, 1, 0, 1]
    assert col(r, "sku") == ["SKU-A", "SKU-A-CASE", "SKU-A", "SKU-A-CASE"]
    assert col(r, "dealer_id") == ["D-GD", "D-JS", "D-GD", "D-JS"]
    # a consumer wins on the unit; the case code is no consumer's prize (DESIGN.md: campaigns
    # reward units unless they name kinds = ["case"], as 开箱有礼 does for store owners)
    assert r.awards["kind"].tolist() == [0]
    assert col(r, "draw")[1] == "ineligible"


# --- place: event region > store region > GPS -------------------------------------------------

FUTIAN = (22.5431, 114.0579)  # 440304
WANGFUJING = (39.9150, 116.4110)  # 110101


def test_region_from_gps(pipeline):
    r = pipeline.process([event("a", code(42, 400), lat=FUTIAN[0], lon=FUTIAN[1]),
                          event("b", code(42, 401), lat=WANGFUJING[0], lon=WANGFUJING[1]),
                          event("c", code(42, 402), lat=0.0, lon=0.0),  # at sea: no district
                          event("d", code(42, 403), lat=FUTIAN[0])])  # half a fix
    assert col(r, "region") == ["440304", "110101", "", ""]
    assert col(r, "diversion") == ["none", "region", "none", "none"]


def test_event_region_beats_store_region_beats_gps(pipeline):
    r = pipeline.process([
        event("a", code(42, 410), region="110101", store_id="S-SZ", lat=FUTIAN[0], lon=FUTIAN[1]),
        event("b", code(42, 411), store_id="S-NJ", lat=FUTIAN[0], lon=FUTIAN[1]),
        event("c", code(42, 412), store_id="S-BLANK", lat=WANGFUJING[0], lon=WANGFUJING[1]),
        event("d", code(42, 413), store_id="S-UNKNOWN", lat=WANGFUJING[0], lon=WANGFUJING[1]),
    ])
    assert col(r, "region") == ["110101", "320102", "110101", "110101"]
    assert col(r, "diversion") == ["region", "region+channel", "region", "region"]


# --- alert windows -----------------------------------------------------------------------------

def diverted(i: int, ts: int, region: str = "110101", user: str | None = None, **fields) -> bytes:
    """A first scan of a D-GD unit code (serial 500 + i) outside Guangdong."""
    return event(f"d{i}", code(42, 500 + i), user=user or f"wx-{i}", ts=ts, region=region, **fields)


@pytest.mark.parametrize("size", [1, 2, 100])
def test_consumer_alert_fires_once_at_the_threshold(registry, resolve_gps, size):
    p = Pipeline(make_config(), registry, MemoryStateStore(), resolve_gps=resolve_gps)
    lines = [diverted(i, T0 + 30_000 * i) for i in range(10)]  # all within [T0, T0 + 10 min)
    r = run_batches(p, lines, size)
    assert col(r, "diversion") == ["region"] * 10
    a = outcomes.rows(r.alerts, outcomes.ALERT_COLUMNS)
    assert len(a) == 1
    alert = a[0]
    assert alert["alert"] == "diversion" and alert["subtype"] == "region"
    assert alert["tenant"] == TENANT
    assert alert["dealer_id"] == "D-GD" and alert["manager"] == "wang.li"
    assert alert["city"] == "1101"
    assert alert["window_start"] == T0 and alert["window_end"] == T0 + WINDOW
    assert alert["count"] == 3
    assert alert["ts"] == T0 + 30_000 * 2  # the third scan fired it
    assert alert["alert_id"] and orjson.loads(alert["detail"])  # evidence is JSON


def test_alert_not_before_threshold_and_again_in_a_new_window(pipeline):
    r1 = pipeline.process([diverted(0, T0), diverted(1, T0 + MINUTE)])
    assert outcomes.length(r1.alerts) == 0
    r2 = pipeline.process([diverted(2, T0 + WINDOW - 1)])  # last millisecond of the window
    assert r2.alerts["ts"].tolist() == [T0 + WINDOW - 1]
    # the next window counts from zero
    r3 = pipeline.process([diverted(3, T0 + WINDOW), diverted(4, T0 + WINDOW + 1)])
    assert outcomes.length(r3.alerts) == 0
    r4 = pipeline.process([diverted(5, T0 + WINDOW + 2), diverted(6, T0 + WINDOW + 3)])
    assert r4.alerts["ts"].tolist() == [T0 + WINDOW + 2]
    assert r4.alerts["window_start"].tolist() == [T0 + WINDOW]
    assert r4.alerts["alert_id"][0] != r2.alerts["alert_id"][0]


def test_alert_keys_are_dealer_kind_and_city(pipeline):
    lines = [
        # two in Beijing (1101) and two in Changsha (4301): no key reaches 3
        diverted(0, T0), diverted(1, T0 + 1), diverted(2, T0 + 2, region="430102"),
        diverted(3, T0 + 3, region="430103"),
        # a channel-only diversion in Guangdong is another kind
        diverted(4, T0 + 4, region="440304", channel="ecommerce"),
        diverted(5, T0 + 5, region="440304", channel="ecommerce"),
        # region+channel in Beijing is another kind again
        diverted(6, T0 + 6, channel="ecommerce"), diverted(7, T0 + 7, channel="ecommerce"),
        # D-JS goods in Beijing: another dealer
        event("js1", code(42, 1300), ts=T0 + 8, region="110101"),
        event("js2", code(42, 1301), ts=T0 + 9, region="110102"),
    ]
    r = pipeline.process(lines)
    assert outcomes.length(r.alerts) == 0
    # a third Changsha district completes the Changsha key only
    r = pipeline.process([diverted(8, T0 + 10, region="430104")])
    assert r.alerts["city"].tolist() == ["4301"] and r.alerts["subtype"].tolist() == ["region"]


def test_store_role_threshold_is_one(pipeline):
    # a D-JS case code scanned by the Shenzhen KA store: region and channel both wrong
    r = pipeline.process([event("s1", code(42, 600, kind=1), user="store-S-SZ", role="store", store_id="S-SZ",
                                ts=T0 + 5),
                          event("s2", code(42, 601, kind=1), user="store-S-SZ", role="store", store_id="S-SZ",
                                ts=T0 + 6)])
    assert col(r, "diversion") == ["region+channel", "region+channel"]
    a = outcomes.rows(r.alerts, outcomes.ALERT_COLUMNS)
    assert len(a) == 1
    assert (a[0]["dealer_id"], a[0]["manager"], a[0]["city"], a[0]["subtype"]) == ("D-JS", "li.na", "4403",
                                                                                     "region+channel")
    assert a[0]["count"] == 1 and a[0]["ts"] == T0 + 5
    assert col(r, "draw") == ["ineligible", "ineligible"]  # stores never win


def test_dealer_role_threshold_is_one(pipeline):
    r = pipeline.process([event("dl1", code(42, 610), user="dealer-bj", role="dealer", region="110105", ts=T0 + 7)])
    assert col(r, "diversion") == ["region"]
    assert r.alerts["dealer_id"].tolist() == ["D-GD"] and r.alerts["manager"].tolist() == ["wang.li"]
    assert r.alerts["count"].tolist() == [1] and r.alerts["ts"].tolist() == [T0 + 7]


def test_one_alert_per_dealer_kind_city_and_window_whatever_the_roles(pipeline):
    # the store scan fires the (D-GD, region, 1101) key; consumers reaching 3 later do not fire it again
    store = event("st", code(42, 620), user="store-x", role="store", region="110101", ts=T0)
    r = pipeline.process([store] + [diverted(i, T0 + 1 + i) for i in range(5)])
    assert r.alerts["ts"].tolist() == [T0]
    assert r.alerts["count"].tolist() == [1]


def test_repeat_scans_count_toward_alerts(pipeline):
    c = code(42, 700)
    r = pipeline.process([event(f"r{i}", c, user=f"wx-{i % 2}", ts=T0 + i, region="110101") for i in range(3)])
    assert col(r, "verdict") == ["ok", "repeat", "repeat"]
    assert r.alerts["alert"].tolist() == ["diversion"]


def clone_scan(i: int, user: str, region: str, serial: int = 800, ts: int | None = None) -> bytes:
    return event(f"cl{serial}-{i}", code(42, serial), user=user, ts=T0 + i if ts is None else ts, region=region)


def test_cloned_code_by_distinct_users(pipeline):
    # max_users = 3: the fourth distinct user in one window fires, once
    users = ["u1", "u2", "u1", "u3", "u2", "u4", "u5", "u6", "u4"]
    r = pipeline.process([clone_scan(i, u, "440304") for i, u in enumerate(users)])
    a = outcomes.rows(r.alerts, outcomes.ALERT_COLUMNS)
    assert len(a) == 1
    assert a[0]["alert"] == "cloned_code" and a[0]["subtype"] == "users"
    assert a[0]["count"] == 4 and a[0]["ts"] == T0 + 5
    assert a[0]["code"] == code(42, 800)
    assert a[0]["dealer_id"] == "D-GD" and a[0]["city"] == "4403"
    assert a[0]["window_start"] == T0 and a[0]["window_end"] == T0 + WINDOW


def test_one_user_scanning_a_code_often_is_no_clone(pipeline):
    r = pipeline.process([clone_scan(i, "u1", "440304", serial=801) for i in range(20)])
    assert outcomes.length(r.alerts) == 0


def test_cloned_code_across_provinces(pipeline):
    r = pipeline.process([clone_scan(0, "u1", "440304", serial=802), clone_scan(1, "u1", "440106", serial=802),
                          clone_scan(2, "u2", "430102", serial=802), clone_scan(3, "u3", "450102", serial=802)])
    clones = [a for a in outcomes.rows(r.alerts, outcomes.ALERT_COLUMNS) if a["alert"] == "cloned_code"]
    assert len(clones) == 1
    assert clones[0]["subtype"] == "provinces" and clones[0]["count"] == 2
    assert clones[0]["ts"] == T0 + 2 and clones[0]["city"] == "4301"


def test_cloned_code_windows_are_separate(pipeline):
    users = ["u1", "u2", "u3"]
    r1 = pipeline.process([clone_scan(i, u, "440304", serial=803) for i, u in enumerate(users)]
                          + [clone_scan(3, "u4", "440304", serial=803, ts=T0 + WINDOW)])
    assert outcomes.length(r1.alerts) == 0


# --- replay ------------------------------------------------------------------------------------

SCAN_OUTCOME = ("verdict", "diversion", "campaign", "prize_tier", "prize_cents", "draw", "dealer_id", "region",
                "ts", "serial")


def outcome(result: BatchResult, i: int) -> tuple:
    return tuple(result.scans[n][i] for n in SCAN_OUTCOME)


def test_replay_in_the_same_batch(pipeline):
    first = event("p1", code(42, 900), region="110101")
    r = pipeline.process([first, first, first])
    assert col(r, "replay") == [0, 1, 1]
    assert outcome(r, 0) == outcome(r, 1) == outcome(r, 2)
    assert col(r, "verdict")[0] == "ok" and col(r, "draw")[0] == "won"
    assert pipeline.state.campaign_state("red").prizes == 1
    # every award row is the one prize of the one code
    assert set(r.awards["scan_id"].tolist()) == {"p1"}
    assert {(int(k), int(b), int(s)) for k, b, s in zip(r.awards["kind"], r.awards["batch"], r.awards["serial"])} \
        == {(0, 42, 900)}


def test_replay_in_a_later_batch_gets_the_first_outcome(pipeline):
    won = event("p1", code(42, 901), region="110101")
    repeat = event("p2", code(42, 901), user="wx-2", region="110101")
    store = event("p3", code(42, 902, kind=1), user="store-S-SZ", role="store", store_id="S-SZ")
    first = pipeline.process([won, repeat, store])
    assert col(first, "verdict") == ["ok", "repeat", "ok"]
    assert col(first, "draw") == ["won", "ineligible", "ineligible"]
    prizes = pipeline.state.campaign_state("red")
    # other scans in between, then everything again in another order
    pipeline.process([event("q1", code(42, 903)), event("q2", code(42, 901), user="wx-3")])
    again = pipeline.process([store, repeat, won])
    assert col(again, "replay") == [1, 1, 1]
    for i, j in ((0, 2), (1, 1), (2, 0)):
        assert outcome(first, i) == outcome(again, j)
    after = pipeline.state.campaign_state("red")
    assert after.prizes == prizes.prizes + 1  # only q1 won
    assert after.budget_left == prizes.budget_left - PRIZE_CENTS
    assert again.awards["scan_id"].tolist() == ["p1"]


def test_replays_do_not_count_toward_alerts(pipeline):
    a, b = diverted(0, T0), diverted(1, T0 + 1)
    r = pipeline.process([a, b, a, b])
    r2 = pipeline.process([a, b, b, a, a])
    assert outcomes.length(r.alerts) == outcomes.length(r2.alerts) == 0
    assert col(r2, "replay") == [1] * 5
    r3 = pipeline.process([diverted(2, T0 + 2)])
    assert r3.alerts["count"].tolist() == [3] and r3.alerts["ts"].tolist() == [T0 + 2]


def test_replays_do_not_count_toward_clone_alerts(pipeline):
    lines = [clone_scan(i, f"u{i}", "440304", serial=904) for i in range(3)]
    r = pipeline.process(lines + lines + lines)
    assert outcomes.length(r.alerts) == 0


def test_replay_of_a_fired_alert_does_not_fire_again(pipeline):
    lines = [diverted(i, T0 + i) for i in range(3)]
    assert outcomes.length(pipeline.process(lines).alerts) == 1
    assert outcomes.length(pipeline.process(lines).alerts) == 0


def test_replay_answers_are_forgotten_after_their_ttl(registry):
    now = [1000.0]
    state = MemoryStateStore(replay_ttl_s=60, clock=lambda: now[0])
    p = Pipeline(make_config(), registry, state)
    line = event("t1", code(42, 905))
    assert col(p.process([line]), "draw") == ["won"]
    now[0] += 59
    assert col(p.process([line]), "replay") == [1]
    now[0] += 2  # past the time to live: a new scan of an already scanned code
    late = p.process([line])
    assert col(late, "replay") == [0] and col(late, "verdict") == ["repeat"] and col(late, "draw") == ["ineligible"]
    assert state.campaign_state("red").prizes == 1


@pytest.mark.parametrize("line", [event("n1", code(44, 9)), event("n2", forged(code(42, 9))),
                                  event("n3", code(99, 9)), event("n4", "HELLO")],
                         ids=["not_activated", "bad_mac", "unknown_batch", "malformed"])
def test_replay_flag_for_unverified_scans(pipeline, line):
    # outcomes.py: replay is 1 whenever the scan_id had been seen before, whatever its verdict
    first = pipeline.process([line])
    again = pipeline.process([line, line])
    assert col(first, "replay") == [0]
    assert col(again, "verdict") == col(first, "verdict") * 2
    assert col(again, "replay") == [1, 1]


# --- batch-size invariance ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from scanstream.streams.synthetic import build_world, generate_scans
    world = build_world(TENANT, KEY, 0)
    directory = tmp_path_factory.mktemp("registry")
    world.write_registry(directory)
    lines = generate_scans(world, 3000, seed=11)
    # the synthetic mix has no codes of unconfigured tenants or keys: add some, spread out
    for i in range(20):
        at = 150 * i + 7
        ts = orjson.loads(lines[at])["ts"] if lines[at].startswith(b'{"scan_id"') else T0
        strange = code(101, i, tenant=9) if i % 2 else code(101, i, key=ROTATED_KEY, key_id=1)
        lines.insert(at, event(f"extra-{i}", strange, ts=ts, region="440106"))
    # limits that bind: stock, budget and the daily cap all run out during the stream
    cfg = make_config(campaigns=[
        {"id": "tight", "tenant": TENANT, "skus": ["BEER-500", "CRAFT-IPA"],
         "start": dt.datetime(2026, 11, 1, tzinfo=CST), "end": dt.datetime(2027, 1, 1, tzinfo=CST),
         "budget_cents": 60_000, "daily_cap": 1, "seed": "synthetic",
         "tiers": [{"name": "small", "cents": 200, "probability": 0.5, "stock": 1_000},
                   {"name": "big", "cents": 1_000, "probability": 0.05, "stock": 10}]},
        {"id": "wide", "tenant": TENANT, "regions": ["44", "11"],
         "start": dt.datetime(2026, 11, 1, tzinfo=CST), "end": dt.datetime(2027, 1, 1, tzinfo=CST),
         "budget_cents": 1_000_000, "daily_cap": 3, "seed": "wide", "utc_offset_minutes": 0,
         "tiers": [{"name": "any", "cents": 100, "probability": 0.3, "stock": 250}]},
    ])
    return cfg, Registry.load(directory), lines


def sorted_rows(batch, columns) -> list[tuple]:
    return sorted(tuple(r.values()) for r in outcomes.rows(batch, columns))


def test_batch_size_invariance(synthetic, resolve_gps):
    cfg, reg, lines = synthetic
    results = {}
    for size in (5000, 100, 7, 1):
        results[size] = run_batches(Pipeline(cfg, reg, MemoryStateStore(), resolve_gps=resolve_gps), lines, size)
    base = results[5000]
    # the stream exercises what the invariance is about
    verdicts = Counter(col(base, "verdict"))
    draws = Counter(col(base, "draw"))
    assert set(verdicts) == set(VERDICT_ORDER), verdicts
    assert {"won", "no_prize", "ineligible", "out_of_stock", "budget", "cap"} <= set(draws), draws
    assert sum(col(base, "replay")) > 0
    assert {"diversion", "cloned_code"} <= set(base.alerts["alert"].tolist())
    assert outcomes.length(base.scans) == len(lines)
    for size in (100, 7, 1):
        other = results[size]
        for name, _, _ in outcomes.SCAN_COLUMNS:
            assert np.array_equal(base.scans[name], other.scans[name]), (size, name)
        assert sorted_rows(other.alerts, outcomes.ALERT_COLUMNS) == sorted_rows(base.alerts, outcomes.ALERT_COLUMNS)
        assert sorted_rows(other.awards, outcomes.AWARD_COLUMNS) == sorted_rows(base.awards, outcomes.AWARD_COLUMNS)


def test_synthetic_stream_invariants(synthetic, resolve_gps):
    cfg, reg, lines = synthetic
    state = MemoryStateStore()
    r = run_batches(Pipeline(cfg, reg, state, resolve_gps=resolve_gps), lines, 500)
    s = outcomes.rows(r.scans, outcomes.SCAN_COLUMNS)
    # input order, one row per line
    for line, row in zip(lines, s):
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            ev = None
        if isinstance(ev, dict) and row["verdict"] != "invalid_event":
            assert row["scan_id"] == ev["scan_id"] and row["ts"] == ev["ts"]
        if row["verdict"] == "invalid_event":
            assert row["reason"] and row["raw"] == line.decode()
    # a code is ok once, ever; a prize only on an ok consumer scan; one prize per code
    ok_codes = Counter((row["kind"], row["batch"], row["serial"]) for row in s
                       if row["verdict"] == "ok" and not row["replay"])
    assert max(ok_codes.values()) == 1
    new_wins = [row for row in s if row["draw"] == "won" and not row["replay"]]
    assert all(row["verdict"] == "ok" and row["role"] == "consumer" for row in s if row["draw"] == "won")
    assert all(row["diversion"] == "none" for row in s if row["verdict"] not in ("ok", "repeat"))
    codes_won = Counter((row["kind"], row["batch"], row["serial"]) for row in new_wins)
    assert max(codes_won.values()) == 1
    for camp in cfg.campaigns:
        mine = [row for row in new_wins if row["campaign"] == camp.id]
        st = state.campaign_state(camp.id)
        assert st.prizes == len(mine)
        assert camp.budget_cents - st.budget_left == sum(row["prize_cents"] for row in mine) <= camp.budget_cents
        for tier, left in zip(camp.tiers, st.stock_left):
            assert tier.stock - left == sum(row["prize_tier"] == tier.name for row in mine) <= tier.stock
