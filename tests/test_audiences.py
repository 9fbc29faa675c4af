"""Audiences (DESIGN.md "Verdicts", "Audiences"; issue 15 item 3) on every state backend.

The attack first: a store owner, a guide or a rival dealer scans a unit before it is sold, and
the consumer who buys it is told "repeat" and loses the red packet; an outbound scan of a case in
the warehouse uses up the store owner's first scan of it.  A code's first scan is counted per
audience: consumers; the trade (dealer, store, guide); logistics (warehouse).  The same cases
run on the in-process store, the embedded store on disk and a real Redis, which must agree.
"""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest

from scanstream.engine import config as config_mod
from scanstream.engine.audiences import AUDIENCE_SHIFT, CONSUMERS, LOGISTICS, TRADE, audiences, claim_keys
from scanstream.engine.pipeline import Pipeline
from scanstream.engine.registry import Registry, batch_key
from scanstream.engine.state.embedded import EmbeddedStateStore
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.ext import codec
from scanstream.ext.scanparse import ROLES

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
TENANT = 7
T0 = 1_795_140_000_000  # 2026-11-20T10:00:00+08:00, inside the campaign
UNIT, CASE = 0, 1
CST = timezone(timedelta(hours=8))


def csv_rows(header: str, *rows: tuple) -> list[tuple[int, dict[str, str]]]:
    names = header.split(",")
    return [(line, dict(zip(names, (str(v) for v in row)))) for line, row in enumerate(rows, start=2)]


REGISTRY = Registry.from_rows(
    csv_rows("tenant,batch,kind,sku,product,activated,size",
             (7, 42, "unit", "SKU-A", "Lager", 1, 1000), (7, 42, "case", "SKU-A-CASE", "Lager case", 1, 100)),
    csv_rows("dealer_id,tenant,name,channel,regions,manager,webhook", ("D-GD", 7, "Guangdong KA", "", "44", "wang.li", "")),
    csv_rows("tenant,batch,kind,serial_from,serial_to,dealer_id,shipped_at",
             (7, 42, "unit", 0, 999, "D-GD", "2026-11-01"), (7, 42, "case", 0, 99, "D-GD", "2026-11-01")),
    [])

CONFIG = config_mod.parse({
    "tenants": [{"id": TENANT, "keys": [{"key_id": 0, "hex": KEY.hex()}]}],
    "engine": {"resolve_gps": False},
    "campaigns": [{"id": "sure", "tenant": TENANT, "start": datetime(2026, 11, 1, tzinfo=CST),
                   "end": datetime(2026, 12, 31, tzinfo=CST), "budget_cents": 100_000, "daily_cap": 10, "seed": "s",
                   "tiers": [{"name": "8.8", "cents": 880, "probability": 1.0, "stock": 100}]}],
}, Path("/nonexistent/scanstream.toml"))


def scan(scan_id: str, serial: int, role: str, *, kind: int = UNIT, user: str = "", region: str = "440304") -> bytes:
    return orjson.dumps({"scan_id": scan_id, "ts": T0 + len(scan_id), "code": codec.encode(KEY, TENANT, 42, serial,
                                                                                            kind=kind),
                         "user_id": user or f"{role}-user", "role": role, "region": region})


@pytest.fixture(params=["memory", "embedded", "redis"])
def pipeline(request, tmp_path):
    if request.param == "memory":
        state = MemoryStateStore()
    elif request.param == "embedded":
        state = EmbeddedStateStore(tmp_path / "state.sqlite")
    else:
        redis_state = pytest.importorskip("scanstream.engine.state.redis")
        state = redis_state.RedisStateStore.from_url(request.getfixturevalue("redis_url"),
                                                     prefix=f"scanstream-test:{uuid.uuid4().hex[:12]}:")
    yield Pipeline(CONFIG, REGISTRY, state)
    if request.param == "redis":
        state.flush_prefix()
    if hasattr(state, "close"):
        state.close()


def outcomes_of(pipeline: Pipeline, *lines: bytes) -> list[tuple[str, str]]:
    scans = pipeline.process(list(lines)).scans
    return list(zip(scans["verdict"].tolist(), scans["draw"].tolist()))


def test_a_store_scanning_a_unit_first_leaves_the_consumer_their_first_scan_and_prize(pipeline):
    got = outcomes_of(pipeline, scan("store", 1, "store"), scan("consumer", 1, "consumer", user="wx-1"),
                      scan("consumer-2", 1, "consumer", user="wx-2"))
    assert got == [("ok", "ineligible"), ("ok", "won"), ("repeat", "ineligible")]


def test_guides_and_dealers_share_the_trade_s_first_scan(pipeline):
    got = outcomes_of(pipeline, scan("guide", 2, "guide"), scan("dealer", 2, "dealer"), scan("store", 2, "store"))
    assert [v for v, _ in got] == ["ok", "repeat", "repeat"]


def test_a_consumer_s_scan_uses_up_neither_the_trade_nor_logistics(pipeline):
    got = outcomes_of(pipeline, scan("consumer", 3, "consumer"), scan("store", 3, "store"),
                      scan("warehouse", 3, "warehouse"))
    assert [v for v, _ in got] == ["ok", "ok", "ok"]


def test_an_outbound_scan_of_a_case_leaves_the_store_owner_their_first_scan(pipeline):
    got = outcomes_of(pipeline, scan("ship", 4, "warehouse", kind=CASE), scan("open", 4, "store", kind=CASE),
                      scan("reship", 4, "warehouse", kind=CASE))
    assert [v for v, _ in got] == ["ok", "ok", "repeat"]


def test_audiences_hold_across_batches_and_runs(pipeline):
    """In parts, each audience's first scan stays claimed (the split-run rule of DESIGN.md)."""
    assert outcomes_of(pipeline, scan("store", 5, "store")) == [("ok", "ineligible")]
    assert outcomes_of(pipeline, scan("consumer", 5, "consumer")) == [("ok", "won")]
    assert outcomes_of(pipeline, scan("guide", 5, "guide"), scan("consumer-2", 5, "consumer")) == \
        [("repeat", "ineligible"), ("repeat", "ineligible")]


def test_warehouse_scans_are_never_judged_for_diversion(pipeline):
    """A warehouse scan sets where goods are meant to go; the same place for a store is diversion."""
    scans = pipeline.process([scan("ship", 6, "warehouse", region="110105"),
                              scan("store", 6, "store", region="110105")]).scans
    assert scans["diversion"].tolist() == ["none", "region"]


def test_the_embedded_store_keeps_each_audience_s_claim_across_a_restart(tmp_path):
    first = EmbeddedStateStore(tmp_path / "state.sqlite")
    assert outcomes_of(Pipeline(CONFIG, REGISTRY, first), scan("store", 7, "store")) == [("ok", "ineligible")]
    first.checkpoint()  # what the driver does once the batch's outcomes are stored
    first.close()
    again = EmbeddedStateStore(tmp_path / "state.sqlite")
    try:
        got = outcomes_of(Pipeline(CONFIG, REGISTRY, again), scan("consumer", 7, "consumer"),
                          scan("dealer", 7, "dealer"))
        assert got == [("ok", "won"), ("repeat", "ineligible")]
    finally:
        again.close()


def test_claim_keys_of_consumers_are_the_batch_keys_of_before_audiences():
    """A state written before audiences existed keeps its meaning: consumer keys did not move."""
    keys = batch_key(np.array([7, 65535]), np.array([0, 3]), np.array([42, 2**24 - 1]))
    consumer = np.array(["consumer", "consumer"], dtype=object)
    assert claim_keys(keys, consumer).tolist() == keys.tolist()
    store = np.array(["store", "store"], dtype=object)
    assert (claim_keys(keys, store) >> np.uint64(AUDIENCE_SHIFT)).tolist() == [TRADE, TRADE]
    assert int(claim_keys(keys, store)[1]) < 2 ** 44  # the Redis store packs a claim key into 44 bits


def test_every_role_has_an_audience():
    roles = np.array(ROLES, dtype=object)
    assert dict(zip(ROLES, audiences(roles).tolist())) == {
        "consumer": CONSUMERS, "dealer": TRADE, "guide": TRADE, "store": TRADE, "warehouse": LOGISTICS}


def test_redis_names_consumer_bitmaps_as_before_and_the_others_apart(redis_url):
    redis_state = pytest.importorskip("scanstream.engine.state.redis")
    store = redis_state.RedisStateStore.from_url(redis_url, prefix=f"scanstream-test:{uuid.uuid4().hex[:12]}:")
    try:
        outcomes_of(Pipeline(CONFIG, REGISTRY, store), scan("consumer", 8, "consumer"), scan("store", 8, "store"),
                    scan("ship", 8, "warehouse"))
        names = sorted(k.decode().split(":", 2)[2] for k in store.keys(b"dd*:{*"))
        # consumers' chunks keep their name (dd:), the trade's and logistics' are dd1: and dd2:,
        # each after the tag of its chunk's shard
        code = int(batch_key(7, 0, 42))
        expected = [store.dedup_key((a << AUDIENCE_SHIFT) | code, 0).decode().split(":", 2)[2]
                    for a in (CONSUMERS, TRADE, LOGISTICS)]
        assert names == sorted(expected)
        assert [n.split("{")[0] for n in expected] == ["dd:", "dd1:", "dd2:"]
        assert all(n.endswith("}7:0:42:0") for n in names)
    finally:
        store.flush_prefix()
        store.close()


# --------------------------------------------------------------------------- 开箱有礼

#: A store owner opening a case and scanning the case code inside wins 5 yuan, two prizes in stock.
CASE_CONFIG = config_mod.parse({
    "tenants": [{"id": TENANT, "keys": [{"key_id": 0, "hex": KEY.hex()}]}],
    "engine": {"resolve_gps": False},
    "campaigns": [
        {"id": "consumers", "tenant": TENANT, "start": datetime(2026, 11, 1, tzinfo=CST),
         "end": datetime(2026, 12, 31, tzinfo=CST), "budget_cents": 100_000, "daily_cap": 10, "seed": "c",
         "tiers": [{"name": "8.8", "cents": 880, "probability": 1.0, "stock": 100}]},
        {"id": "open-case", "tenant": TENANT, "start": datetime(2026, 11, 1, tzinfo=CST),
         "end": datetime(2026, 12, 31, tzinfo=CST), "budget_cents": 1_000, "daily_cap": 1, "seed": "o",
         "roles": ["store"], "kinds": ["case"],
         "tiers": [{"name": "5.0", "cents": 500, "probability": 1.0, "stock": 2}]},
    ],
}, Path("/nonexistent/scanstream.toml"))


@pytest.fixture
def case_pipeline(pipeline):
    return Pipeline(CASE_CONFIG, REGISTRY, pipeline.state)


def test_open_case_rewards_store_owners_for_case_codes_only(case_pipeline):
    result = case_pipeline.process([
        scan("ship-10", 10, "warehouse", kind=CASE),  # the outbound scan does not use up the store's first scan
        scan("open-10", 10, "store", kind=CASE, user="store-a"),
        scan("unit-10", 10, "store", user="store-b"),  # a unit code: not this campaign's kind
        scan("consumer-11", 11, "consumer", kind=CASE),  # a case code scanned by a consumer: nobody's prize
        scan("open-12", 12, "store", kind=CASE, user="store-a"),  # store-a's second prize today: over the cap
        scan("open-13", 13, "store", kind=CASE, user="store-c"),
        scan("open-14", 14, "store", kind=CASE, user="store-d"),  # the stock of two is gone
        scan("unit-15", 15, "consumer", user="wx-1"),
    ])
    scans = result.scans
    assert list(zip(scans["campaign"].tolist(), scans["draw"].tolist(), scans["prize_cents"].tolist())) == [
        ("consumers", "ineligible", 0), ("open-case", "won", 500), ("consumers", "ineligible", 0),
        ("consumers", "ineligible", 0), ("open-case", "cap", 0), ("open-case", "won", 500),
        ("open-case", "out_of_stock", 0), ("consumers", "won", 880)]
    awards = result.awards
    assert list(zip(awards["user_id"].tolist(), awards["beneficiary"].tolist())) == [
        ("store-a", "trade"), ("store-c", "trade"), ("wx-1", "consumer")]
    state = case_pipeline.state.campaign_state("open-case")
    assert (state.prizes, state.budget_left, list(state.stock_left)) == (2, 0, [0])


@pytest.mark.parametrize("campaign, message", [
    ({"roles": ["consumer", "store"]}, "mixes consumers and the trade"),
    ({"roles": ["guide"]}, "expected one or more of ['consumer', 'dealer', 'store']"),
    ({"roles": []}, "expected one or more of"),
    ({"kinds": ["pallet"]}, "expected one or more of ['unit', 'case']"),
])
def test_campaign_roles_and_kinds_are_checked(campaign, message):
    body = {"id": "x", "tenant": TENANT, "start": datetime(2026, 11, 1, tzinfo=CST),
            "end": datetime(2026, 12, 31, tzinfo=CST), "budget_cents": 100, "daily_cap": 1, "seed": "s",
            "tiers": [{"name": "t", "cents": 1, "probability": 1.0, "stock": 1}], **campaign}
    with pytest.raises(config_mod.ConfigError, match=re.escape(message)):
        config_mod.parse({"tenants": [{"id": TENANT, "keys": [{"key_id": 0, "hex": KEY.hex()}]}],
                          "campaigns": [body]}, Path("/nonexistent/scanstream.toml"))


def test_a_scan_id_reused_under_another_role_is_a_conflict_that_wins_nothing(pipeline):
    """The attack: a store's scan_id sent again as a consumer's scan of the same code, hoping the
    new audience's first scan pays.  Another event under a seen scan_id claims nothing."""
    store = scan("reused", 20, "store")
    as_consumer = orjson.dumps({**orjson.loads(store), "role": "consumer", "user_id": "wx-attacker"})
    result = pipeline.process([store, as_consumer, scan("honest", 20, "consumer", user="wx-1")])
    assert list(zip(result.scans["verdict"].tolist(), result.scans["draw"].tolist())) == [
        ("ok", "ineligible"), ("conflict", "ineligible"), ("ok", "won")]
    assert result.awards["user_id"].tolist() == ["wx-1"]
    again = pipeline.process([store])  # split: the same event in a later batch is a replay
    assert again.scans["replay"].tolist() == [1] and len(again.awards["scan_id"]) == 0
