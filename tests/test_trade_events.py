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
