"""Trade events (DESIGN "Trade events"): the parser's ``action`` and ``dealer_id`` fields, and the
rules that keep a trade action in the hands of the one role that may take it."""
from __future__ import annotations

import orjson
import pytest

from scanstream.ext.scanparse import parse_events

TS = 1767225600000


def _event(**fields) -> bytes:
    return orjson.dumps({"scan_id": "s1", "code": "X", "user_id": "u1", "ts": TS, **fields})


def test_outbound_scan_keeps_action_and_dealer():
    cols = parse_events([_event(role="warehouse", action="ship", dealer_id="D-GD")])
    assert cols["reason"][0] == ""
    assert (cols["action"][0], cols["dealer_id"][0]) == ("ship", "D-GD")


def test_sale_scan_keeps_action():
    cols = parse_events([_event(role="guide", action="sell")])
    assert (cols["reason"][0], cols["action"][0], cols["dealer_id"][0]) == ("", "sell", "")


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
    assert cols["action"][0] == ""


def test_action_is_part_of_the_fingerprint():
    # the same scan_id resent as an outbound scan to another dealer is another event: a conflict
    a, b = parse_events([_event(role="warehouse", action="ship", dealer_id="D-GD"),
                         _event(role="warehouse", action="ship", dealer_id="D-ZJ")])["fingerprint"]
    assert a != b


# --- the state store's bindings, on every backend ---------------------------------------------

from tests.test_state_stores import kind, make_store, open_store, store  # noqa: E402,F401  (fixtures)

import numpy as np  # noqa: E402

from scanstream.engine.state import BINDING_HISTORY  # noqa: E402

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


def test_stores_agree_on_a_random_stream(redis_url):
    rng = np.random.default_rng(15)
    rows = [(int(k), int(t), f"D{d}" if w else "") for k, t, d, w in
            zip((k * 0x9E3779B97F4A7C15 % 2**64 for k in rng.integers(0, 6, 3000).tolist()), rng.integers(0, 400, 3000),
                rng.integers(0, 5, 3000), rng.random(3000) < 0.2)]
    answers = []
    for backend in ("memory", "embedded", "redis"):
        with open_store(backend, redis_url) as s:
            got, i = [], 0
            for size in (1, 7, 100, 500, 2392):
                got += bind(s, rows[i:i + size])
                i += size
            answers.append(got)
    assert answers[0] == answers[1] == answers[2]
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
