"""Attacks on redelivery: a scan_id reused with another event (DESIGN.md "Redelivery").

A winning scan's request id is sent again with (a) a forged code, (b) another user, (c) another
valid code never scanned, (d) a code of a batch not activated, (e) the same code from another
place.  Each is a ``conflict``: nothing claimed, nothing paid, no award written or changed, one
``scan_id_conflict`` alert naming both users.  The same cases run over every state backend.
"""
from __future__ import annotations

import orjson
import pytest

from scanstream.engine.pipeline import Pipeline
from scanstream.engine.state.embedded import EmbeddedStateStore
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.engine.state.redis import RedisStateStore
from tests.test_pipeline import T0, code, col, event, forged, make_config


@pytest.fixture(params=["memory", "redis", "embedded"])
def state(request, tmp_path):
    if request.param == "memory":
        yield MemoryStateStore()
    elif request.param == "embedded":
        store = EmbeddedStateStore(tmp_path / "state.sqlite")
        yield store
        store.close()
    else:
        store = RedisStateStore.from_url(request.getfixturevalue("redis_url"),
                                         prefix=request.getfixturevalue("redis_prefix"))
        yield store
        store.close()


@pytest.fixture
def pipeline(registry, state) -> Pipeline:
    return Pipeline(make_config(), registry, state)


@pytest.fixture(scope="module")
def registry():
    from tests.test_pipeline import make_registry
    return make_registry()


WIN = dict(scan_id="w1", code_text=code(42, 950), user="victim", region="440304")

ATTACKS = {
    "forged_code": dict(WIN, code_text=forged(code(42, 950))),
    "other_user": dict(WIN, user="thief"),
    "other_valid_code": dict(WIN, code_text=code(42, 951)),
    "not_activated": dict(WIN, code_text=code(44, 5)),
    "other_place": dict(WIN, region="110101"),
    "other_time": dict(WIN, ts=T0 + 1),
}


def line(scan_id: str, code_text: str, user: str, region: str, ts: int = T0) -> bytes:
    return event(scan_id, code_text, user=user, ts=ts, region=region)


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
@pytest.mark.parametrize("same_batch", [False, True], ids=["later_batch", "same_batch"])
def test_reused_scan_id_with_another_event_is_a_conflict(pipeline, attack, same_batch):
    won, evil = line(**WIN), line(**ATTACKS[attack])
    if same_batch:
        r = pipeline.process([won, evil])
        second = 1
        awards_before = []
    else:
        r0 = pipeline.process([won])
        assert col(r0, "verdict") == ["ok"] and col(r0, "draw") == ["won"]
        awards_before = r0.awards["user_id"].tolist()
        r = pipeline.process([evil])
        second = 0
    state = pipeline.state.campaign_state("red")
    assert col(r, "verdict")[second] == "conflict"
    assert col(r, "replay")[second] == 0
    assert col(r, "draw")[second] in ("none", "ineligible") and col(r, "prize_cents")[second] == 0
    assert col(r, "diversion")[second] == "none"
    # paid once, for the victim only; no award row names the attacker
    assert state.prizes == 1
    awards = awards_before + r.awards["user_id"].tolist()
    assert awards == ["victim"]
    alerts = [a for a in zip(r.alerts["alert"].tolist(), r.alerts["subtype"].tolist(), r.alerts["detail"].tolist())
              if a[0] == "scan_id_conflict"]
    assert len(alerts) == 1
    detail = orjson.loads(alerts[0][2])
    assert detail["first_user"] == "victim" and detail["user"] == ATTACKS[attack]["user"]
    assert alerts[0][1] == ("other_user" if attack == "other_user" else "same_user")
    # the code the attacker named was not claimed: its own first scan is still ok
    if attack == "other_valid_code":
        assert col(pipeline.process([line("w2", code(42, 951), "honest", "440304")]), "verdict") == ["ok"]
    # the victim's redelivery still gets the first answer, byte for byte
    again = pipeline.process([won])
    assert col(again, "verdict") == ["ok"] and col(again, "replay") == [1] and col(again, "draw") == ["won"]
    assert again.awards["user_id"].tolist() == ["victim"]
    # the attack sent again is a conflict again, and raises the same alert (same id)
    evil_again = pipeline.process([evil])
    assert col(evil_again, "verdict") == ["conflict"]
    ids = [a for a, k in zip(evil_again.alerts["alert_id"].tolist(), evil_again.alerts["alert"].tolist())
           if k == "scan_id_conflict"]
    assert ids == [i for i, k in zip(r.alerts["alert_id"].tolist(), r.alerts["alert"].tolist())
                   if k == "scan_id_conflict"]


def test_key_order_and_spacing_are_not_a_conflict(pipeline):
    won = orjson.loads(line(**WIN))
    first = pipeline.process([orjson.dumps(won)])
    reordered = orjson.dumps(dict(reversed(list(won.items())))).replace(b",", b", ")
    again = pipeline.process([reordered])
    assert col(again, "replay") == [1] and col(again, "verdict") == col(first, "verdict") == ["ok"]


def test_a_duplicated_key_is_an_invalid_event_not_a_hidden_field(pipeline):
    # a reader keeping the first user_id and one keeping the last would see two events
    evil = line(**WIN)[:-1] + b',"user_id":"thief"}'
    r = pipeline.process([line(**WIN), evil])
    assert col(r, "verdict") == ["ok", "invalid_event"]
    assert "written twice" in col(r, "reason")[1]
    assert pipeline.state.campaign_state("red").prizes == 1


def test_an_event_nested_too_deep_to_fingerprint_is_an_invalid_event(pipeline):
    deep = b'{"scan_id":"d1","ts":%d,"code":"X","user_id":"u","x":%s1%s}' % (T0, b"[" * 300, b"]" * 300)
    r = pipeline.process([deep, line(**WIN)])
    assert col(r, "verdict") == ["invalid_event", "ok"] and "fingerprint" in col(r, "reason")[0]


def test_fingerprint_is_of_the_content_not_the_spelling():
    from scanstream.ext.scanparse import parse_events
    base = b'{"scan_id":"a","ts":%d,"code":"X","user_id":"u","lat":1.5%s}'
    same = [base % (T0, b""), b'{"lat":1.50, "user_id":"u","code":"X","ts":%d,"scan_id":"a"}' % T0]
    other = [base % (T0, extra) for extra in (b',"x":null', b',"x":"1"', b',"x":1', b',"x":{"a":[2]}',
                                                b',"xa":1', b',"x":1.0')]
    fps = parse_events(same + other)["fingerprint"].tolist()
    assert fps[0] == fps[1] and 0 not in fps
    assert len(set(fps[1:])) == len(other) + 1  # every other content, another fingerprint
    # nested objects are compared with their keys sorted too
    a, b = (parse_events([base % (T0, x)])["fingerprint"][0] for x in (b',"x":{"b":1,"a":2}', b',"x":{"a":2,"b":1}'))
    assert a == b
