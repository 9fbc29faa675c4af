"""Trade events (DESIGN "Trade events"): the parser's ``action`` and ``dealer_id`` fields, and the
rules that keep a trade action in the hands of the one role that may take it."""
from __future__ import annotations

import numpy as np
import orjson
import pytest

from scanstream.engine.pipeline import Pipeline
from scanstream.engine.registry import Registry, RegistryError
from scanstream.engine.state import BINDING_HISTORY
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.ext.scanparse import ACTION_NAMES, ACTION_NONE, parse_events
from tests.test_pipeline import MINUTE, T0, code, csv_rows, event, make_config, make_registry
# the state-store fixtures, so that every bindings case runs on the memory, embedded and Redis stores
from tests.test_state_stores import answers_on_every_backend, kind, make_store, open_store, store  # noqa: F401

TS = 1767225600000


def _event(**fields) -> bytes:
    return orjson.dumps({"scan_id": "s1", "code": "X", "user_id": "u1", "ts": TS, **fields})


def test_outbound_scan_keeps_action_and_dealer():
    cols = parse_events([_event(role="warehouse", action="ship", dealer_id="D-GD")])
    assert cols["reason"][0] == ""
    assert (ACTION_NAMES[cols["action"][0]], cols["dealer_id"][0]) == ("ship", "D-GD")


def test_sale_scan_keeps_action():
    cols = parse_events([_event(role="guide", action="sell")])
    assert (cols["reason"][0], ACTION_NAMES[cols["action"][0]], cols["dealer_id"][0]) == ("", "sell", "")


@pytest.mark.parametrize("fields, expected", [
    # a consumer who sends a warehouse's action would move goods: refused, naming the role
    ({"action": "ship", "dealer_id": "D-GD"}, "action 'ship' is taken by role 'warehouse', not 'consumer'"),
    ({"role": "store", "action": "sell"}, "action 'sell' is taken by role 'guide', not 'store'"),
    ({"role": "warehouse", "action": "ship"}, "action 'ship' needs the dealer_id"),
    ({"role": "warehouse", "action": "ship", "dealer_id": ""}, "action 'ship' needs the dealer_id"),
    ({"role": "warehouse", "action": "return"}, "action 'return' is not one of ['sell', 'ship']"),
    ({"role": "warehouse", "action": 1}, "action '1' is not one of"),
    ({"role": "warehouse", "action": "ship", "dealer_id": ["D-GD"]}, "dealer_id must be a string"),
])
def test_hostile_trade_events_are_invalid_with_a_reason(fields, expected):
    cols = parse_events([_event(**fields)])
    assert expected in cols["reason"][0]
    assert cols["action"][0] == ACTION_NONE


def test_action_is_part_of_the_fingerprint():
    # the same scan_id resent as an outbound scan to another dealer is another event: a conflict
    a, b = parse_events([_event(role="warehouse", action="ship", dealer_id="D-GD"),
                         _event(role="warehouse", action="ship", dealer_id="D-ZJ")])["fingerprint"]
    assert a != b


# --- the state store's bindings, on every backend ---------------------------------------------

CASE, OTHER = 0x1234_5678_9ABC_DEF0, 0xFEDC_BA98_7654_3210


def bind(store, rows):
    """``rows`` of (key, ts, dealer or ''): [(dealer, ts)] as the store answers them."""
    keys, ts, dealers = zip(*rows)
    out = store.bind(np.array(keys, np.uint64), np.array(ts, np.int64), np.array(dealers, dtype=object))
    assert out.dealer.dtype == object and out.ts.dtype == np.int64
    return list(zip(out.dealer.tolist(), out.ts.tolist()))


def test_a_binding_holds_from_its_time_on_and_a_reshipment_rebinds(store):
    assert bind(store, [(CASE, 100, "")]) == [("", -1)]
    assert bind(store, [(CASE, 200, "D-GD"), (CASE, 150, ""), (CASE, 200, ""), (OTHER, 300, "")]) == [
        ("D-GD", 200), ("", -1), ("D-GD", 200), ("", -1)]
    # re-shipped to another dealer at 500: scans from 500 on are judged against it, older ones not
    assert bind(store, [(CASE, 500, "D-ZJ"), (CASE, 499, ""), (CASE, 500, ""), (CASE, 9000, "")]) == [
        ("D-ZJ", 500), ("D-GD", 200), ("D-ZJ", 500), ("D-ZJ", 500)]
    # an outbound scan delivered late (ts 300, after the re-shipment) slots in by its time
    assert bind(store, [(CASE, 300, "D-SH"), (CASE, 350, ""), (CASE, 600, "")]) == [
        ("D-SH", 300), ("D-SH", 300), ("D-ZJ", 500)]


def test_the_same_time_twice_keeps_the_later_scan(store):
    assert bind(store, [(CASE, 200, "D-GD"), (CASE, 200, "D-ZJ"), (CASE, 201, "")]) == [
        ("D-GD", 200), ("D-ZJ", 200), ("D-ZJ", 200)]


def test_history_is_bounded_and_the_oldest_go_first(store):
    bind(store, [(CASE, 1000 + t, f"D{t}") for t in range(BINDING_HISTORY + 3)])
    got = bind(store, [(CASE, 1000 + t, "") for t in range(BINDING_HISTORY + 3)])
    assert got[:3] == [("", -1)] * 3
    assert got[3:] == [(f"D{t}", 1000 + t) for t in range(3, BINDING_HISTORY + 3)]


def test_dealer_ids_of_any_text_round_trip(store):
    odd = "经销商|\x00;\n" + "x" * 200
    assert bind(store, [(CASE, 5, odd), (CASE, 6, "")]) == [(odd, 5), (odd, 5)]
    assert bind(store, [(CASE, 7, "")]) == [(odd, 5)]


def test_stores_agree_on_a_random_stream(redis_url, redis_cluster_url):
    rng = np.random.default_rng(15)
    rows = [(int(k), int(t), f"D{d}" if w else "") for k, t, d, w in
            zip((k * 0x9E3779B97F4A7C15 % 2**64 for k in rng.integers(0, 6, 3000).tolist()), rng.integers(0, 400, 3000),
                rng.integers(0, 5, 3000), rng.random(3000) < 0.2)]
    # batches in which a key is only read (plain reads) and in which it is written (the script)
    answers = answers_on_every_backend(bind, rows, (1, 7, 100, 500, 2380, 3, 5, 4), redis_url, redis_cluster_url)
    assert answers[0] == answers[1] == answers[2] == answers[3]
    assert sum(d != "" for d, _ in answers[0]) > 1000  # the stream really reads bindings


def test_embedded_bindings_survive_a_restart(tmp_path):
    from scanstream.engine.state.embedded import EmbeddedStateStore
    s = EmbeddedStateStore(tmp_path / "state.sqlite")
    bind(s, [(CASE, 200, "D-GD")])
    s.checkpoint(at=1)
    bind(s, [(CASE, 300, "D-ZJ")])  # not checkpointed: lost, as after kill -9
    s.close()
    s = EmbeddedStateStore(tmp_path / "state.sqlite")
    assert bind(s, [(CASE, 400, "")]) == [("D-GD", 200)]
    s.close()


# --- 箱码关联 and outbound scans through the pipeline, every expectation worked out by hand ------
#
# Tenant 7; unit batch 42 and case batch 42 (tests/test_pipeline.py's registry, with packing.csv):
# case 3 holds units 36..47, case 4 holds units 48..59.  shipments.csv sends units 0..999 to D-GD
# (Guangdong, "44", KA) and case 0..999 to D-JS (Nanjing "3201" and Shanghai "31").  A store
# scan (threshold 1) with region 440106 (Guangzhou) and no channel is diverted by region when its
# goods belong to anyone but D-GD.

PACKING_HEADER = "tenant,case_batch,case_serial,unit_batch,unit_serial_from,unit_serial_to"
GZ = "440106"  # Guangzhou: D-GD's region, outside D-JS's


def packed_registry() -> Registry:
    base = make_registry()
    given = [[(i + 2, r) for i, r in enumerate(base.rows[f])] for f in
             ("batches.csv", "dealers.csv", "shipments.csv", "stores.csv", "activations.csv")]
    return Registry.from_rows(*given, csv_rows(PACKING_HEADER, (7, 42, 3, 42, 36, 47), (7, 42, 4, 42, 48, 59)))


def ship(scan_id: str, case: int, dealer: str, ts: int, kind: int = 1, **fields) -> bytes:
    return event(scan_id, code(42, case, kind=kind), user="wh-1", ts=ts, role="warehouse", action="ship",
                 dealer_id=dealer, **fields)


def store_scan(scan_id: str, unit: int, ts: int, region: str = GZ, kind: int = 0) -> bytes:
    return event(scan_id, code(42, unit, kind=kind), user="store-1", ts=ts, role="store", region=region)


def rows_of(result) -> dict[str, tuple]:
    return {s: (v, d, dv) for s, v, d, dv in zip(result.scans["scan_id"].tolist(), result.scans["verdict"].tolist(),
                                                 result.scans["dealer_id"].tolist(),
                                                 result.scans["diversion"].tolist())}


@pytest.fixture
def packed_pipeline():
    return lambda state=None: Pipeline(make_config(), packed_registry(), state or MemoryStateStore())


def test_packing_resolves_units_to_cases_and_case_shipments_ship_their_units():
    reg = packed_registry()
    case_batch, case_serial = reg.lookup_cases(np.array([7, 7, 7, 7]), np.array([0, 0, 0, 1]),
                                               np.array([42, 42, 42, 42]), np.array([35, 36, 59, 3]))
    assert case_batch.tolist() == [-1, 42, 42, -1] and case_serial.tolist() == [-1, 3, 4, -1]
    # units 36..47 have their own shipment (D-GD); a unit of a shipment-less batch follows its case
    assert reg.dealers.dealer_id[reg.lookup_dealers(np.array([7]), np.array([0]), np.array([42]),
                                                    np.array([40]))].tolist() == ["D-GD"]


def test_an_outbound_scan_binds_the_case_and_every_unit_in_it(packed_pipeline):
    p = packed_pipeline()
    r = rows_of(p.process([
        store_scan("before", 40, T0),  # shipments.csv: D-GD, in Guangzhou: fine
        ship("out-1", 3, "D-JS", T0 + MINUTE),  # the warehouse sends case 3 (units 36..47) to D-JS
        store_scan("after", 41, T0 + 2 * MINUTE),  # a unit of case 3 in Guangzhou: diverted from D-JS
        store_scan("late", 42, T0 + 30),  # scanned before the shipment (delivered late): D-GD's
        store_scan("other-case", 50, T0 + 2 * MINUTE),  # case 4 was never shipped by a scan: D-GD
        store_scan("case-itself", 3, T0 + 3 * MINUTE, kind=1),  # the case code: D-JS, diverted
    ]))
    assert r == {"before": ("ok", "D-GD", "none"), "out-1": ("ok", "D-JS", "none"),
                 "after": ("ok", "D-JS", "region"), "late": ("ok", "D-GD", "none"),
                 "other-case": ("ok", "D-GD", "none"), "case-itself": ("ok", "D-JS", "region")}


def test_the_alert_names_the_case_and_the_outbound_scan(packed_pipeline):
    p = packed_pipeline()
    res = p.process([ship("out-1", 3, "D-JS", T0), store_scan("after", 41, T0 + MINUTE)])
    alerts = [orjson.loads(d) for d, a in zip(res.alerts["detail"].tolist(), res.alerts["alert"].tolist())
              if a == "diversion"]
    assert len(alerts) == 1  # store threshold 1: one alert, for D-JS's manager
    assert (alerts[0]["case_batch"], alerts[0]["case_serial"], alerts[0]["sent_by"]) == (42, 3, "outbound_scan")
    assert res.alerts["dealer_id"].tolist() == ["D-JS"]


def test_a_reshipment_rebinds_and_a_unit_shipped_alone_follows_its_own_scan(packed_pipeline):
    p = packed_pipeline()
    r = rows_of(p.process([
        ship("out-1", 3, "D-JS", T0),
        ship("out-2", 3, "D-GD", T0 + 10 * MINUTE),  # the case comes back and goes to Guangdong
        store_scan("between", 36, T0 + 5 * MINUTE),
        store_scan("after", 37, T0 + 11 * MINUTE),
        ship("unit-out", 38, "D-JS", T0 + 12 * MINUTE, kind=0),  # one bottle shipped on its own
        store_scan("unit-after", 38, T0 + 13 * MINUTE),
        store_scan("sibling", 39, T0 + 13 * MINUTE),
    ]))
    assert r["out-2"] == ("repeat", "D-GD", "none")  # logistics' second scan of the case: still binds
    assert r["between"] == ("ok", "D-JS", "region")
    assert r["after"] == ("ok", "D-GD", "none")
    assert r["unit-after"] == ("ok", "D-JS", "region")
    assert r["sibling"] == ("ok", "D-GD", "none")


def test_attacks_bind_nothing(packed_pipeline):
    p = packed_pipeline()
    forged = code(42, 3, kind=1)
    forged = forged[:-1] + ("X" if forged[-1] != "X" else "Y")
    res = p.process([
        ship("out-1", 3, "D-GD", T0),
        # the same scan_id resent to another dealer: a conflict, which must not move the goods
        ship("out-1", 3, "D-JS", T0 + MINUTE),
        event("forged", forged, user="wh-1", ts=T0 + MINUTE, role="warehouse", action="ship", dealer_id="D-JS"),
        ship("nobody", 3, "D-NOPE", T0 + MINUTE),  # a dealer dealers.csv does not hold
        event("consumer-ship", code(42, 3, kind=1), ts=T0 + MINUTE, action="ship", dealer_id="D-JS"),
        store_scan("after", 40, T0 + 2 * MINUTE),
    ])
    assert res.scans["verdict"].tolist() == ["ok", "conflict", "bad_mac", "invalid_event", "invalid_event", "ok"]
    # still bound to D-GD: nothing moved it
    assert (res.scans["dealer_id"][5], res.scans["diversion"][5]) == ("D-GD", "none")
    res = p.process([ship("x", 3, "D-NOPE", T0)])
    assert "'D-NOPE' is not a dealer of tenant 7" in res.scans["reason"][0]


def test_another_tenants_dealer_is_refused():
    base = make_registry()
    rows = {f: [(i + 2, r) for i, r in enumerate(base.rows[f])] for f in base.rows}
    rows["dealers.csv"].append((99, {"dealer_id": "D-OTHER", "tenant": "8", "name": "", "channel": "KA",
                                     "regions": "44", "manager": "", "webhook": ""}))
    reg = Registry.from_rows(*(rows[f] for f in ("batches.csv", "dealers.csv", "shipments.csv", "stores.csv")))
    p = Pipeline(make_config(), reg, MemoryStateStore())
    res = p.process([ship("x", 3, "D-OTHER", T0)])
    assert res.scans["verdict"].tolist() == ["invalid_event"]


def _stream() -> list[bytes]:
    lines = []
    for case in (3, 4):
        lines.append(ship(f"out-{case}", case, "D-JS" if case == 3 else "D-GD", T0 + case))
    for i, unit in enumerate(range(36, 60)):
        lines.append(store_scan(f"s-{unit}", unit, T0 + MINUTE + i))
        if unit == 45:
            lines.append(ship("back", 3, "D-GD", T0 + MINUTE + i))
    lines.append(lines[3])  # a redelivery
    return lines


@pytest.mark.parametrize("backend", ["memory", "embedded", "redis"])
def test_split_runs_equal_one_run_on_every_backend(backend, redis_url, tmp_path):
    def run(sizes):
        with open_store(backend, redis_url) as s:
            p = Pipeline(make_config(), packed_registry(), s)
            lines, out, alerts, i = _stream(), [], [], 0
            for size in sizes:
                res = p.process(lines[i:i + size])
                out += list(zip(res.scans["scan_id"].tolist(), res.scans["verdict"].tolist(),
                                res.scans["dealer_id"].tolist(), res.scans["diversion"].tolist(),
                                res.scans["replay"].tolist()))
                alerts += res.alerts["alert_id"].tolist()
                i += size
            return out, sorted(alerts)
    whole = run([100])
    assert run([1] * 30) == whole
    assert run([7, 7, 7, 7, 7]) == whole
    assert len(whole[1]) == 1  # one alert per dealer, city and window: D-JS in Guangzhou
    diverted = [row[0] for row in whole[0] if row[3] != "none" and not row[4]]
    # units 36..45 went to D-JS with case 3 (diverted in Guangzhou), 46..47 after it came back
    assert diverted == [f"s-{u}" for u in range(36, 46)]


def test_a_registry_without_packing_loads_and_hostile_packing_is_refused():
    base = make_registry()
    given = [[(i + 2, r) for i, r in enumerate(base.rows[f])] for f in
             ("batches.csv", "dealers.csv", "shipments.csv", "stores.csv", "activations.csv")]
    for rows, message in [
        (((7, 42, 3, 42, 36, 47), (7, 42, 4, 42, 47, 59)), "overlaps"),  # unit 47 in two cases
        (((7, 99, 3, 42, 36, 47),), "case batch 99 of tenant 7 is not in batches.csv"),
        (((7, 42, 3, 42, 47, 36),), "below unit_serial_from"),
        (((7, 42, 3, 42, 36, 20_000),), "beyond unit batch 42's size"),
        (((7, 42, "x", 42, 36, 47),), "case_serial"),
        (((7, 42, 3, 99, 36, 47),), "unit batch 99 of tenant 7 is not in batches.csv"),
    ]:
        with pytest.raises(RegistryError, match=message):
            Registry.from_rows(*given, csv_rows(PACKING_HEADER, *rows))
