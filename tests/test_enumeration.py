"""Enumeration defence: scanners who submit many forged codes are flagged and blocked.

Both state stores run the same cases (the Redis one with a prefix of its own).
"""
from __future__ import annotations

import pytest

from scanstream.engine.pipeline import Pipeline
from scanstream.engine.state.memory import MemoryStateStore
from test_pipeline import MINUTE, T0, code, col, event, make_config, make_registry

THRESHOLD = 5


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        yield MemoryStateStore()
        return
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    from scanstream.engine.state.redis import RedisStateStore
    s = RedisStateStore.from_url(redis_url, prefix=prefix, replay_ttl_s=3600)
    yield s
    s.flush_prefix()
    s.close()


def pipeline(store, **enumeration) -> Pipeline:
    settings = {"window_minutes": 10, "threshold": THRESHOLD, "block": True, "block_hours": 24, **enumeration}
    return Pipeline(make_config(enumeration=settings), make_registry(), store)


def forged(i: int) -> str:
    real = code(42, 500 + i)
    return real[:-1] + ("X" if real[-1] != "X" else "Y")


def test_flagged_at_the_threshold_and_not_before(store):
    p = pipeline(store)
    lines = [event(f"f{i}", forged(i), user="bot", ts=T0 + i * 1000, ip="10.0.0.9") for i in range(THRESHOLD + 3)]
    alerts = []
    for i, line in enumerate(lines):  # one scan per batch: the alert fires at exactly the 5th
        result = p.process([line])
        alerts.append([(a, s) for a, s in zip(result.alerts["alert"].tolist(), result.alerts["subtype"].tolist())])
    assert alerts[:THRESHOLD - 1] == [[]] * (THRESHOLD - 1)
    assert sorted(alerts[THRESHOLD - 1]) == [("enumeration", "ip"), ("enumeration", "user_id")]
    assert alerts[THRESHOLD:] == [[]] * 3  # once per identity and window


def test_blocked_scanner_keeps_verdicts_but_wins_nothing(store):
    p = pipeline(store)
    attack = [event(f"f{i}", forged(i), user="bot", ts=T0 + i) for i in range(THRESHOLD)]
    genuine = [event(f"g{i}", code(42, 100 + i), user="bot", ts=T0 + 1000 + i) for i in range(3)]
    other = [event("o1", code(42, 200), user="wx-honest", ts=T0 + 2000)]
    before = p.process([event("g-early", code(42, 99), user="bot", ts=T0 - 1)])
    assert col(before, "draw") == ["won"]  # not flagged yet: wins like anyone
    result = p.process(attack + genuine + other)
    assert col(result, "verdict")[THRESHOLD:] == ["ok"] * 4  # genuine scans are still counted as ok
    assert col(result, "draw")[THRESHOLD:] == ["blocked"] * 3 + ["won"]
    assert col(result, "prize_cents")[THRESHOLD:THRESHOLD + 3] == [0, 0, 0]
    later = p.process([event("g-later", code(42, 300), user="bot", ts=T0 + 5 * MINUTE)])
    assert col(later, "draw") == ["blocked"]  # the block outlives the window


def test_block_within_one_batch_starts_after_the_crossing_scan(store):
    p = pipeline(store)
    lines = [event("g0", code(42, 10), user="bot", ts=T0)]
    lines += [event(f"f{i}", forged(i), user="bot", ts=T0 + 1 + i) for i in range(THRESHOLD)]
    lines += [event("g1", code(42, 11), user="bot", ts=T0 + 100)]
    result = p.process(lines)
    assert col(result, "draw")[0] == "won" and col(result, "draw")[-1] == "blocked"


def test_one_typo_is_never_flagged(store):
    p = pipeline(store)
    users = [f"wx-{i}" for i in range(50)]
    lines = [event(f"t{i}", forged(i), user=u, ts=T0 + i) for i, u in enumerate(users)]  # one typo each
    lines += [event(f"g{i}", code(42, 600 + i), user=u, ts=T0 + 100 + i) for i, u in enumerate(users)]
    result = p.process(lines)
    assert len(result.alerts["alert_id"]) == 0
    assert col(result, "draw")[50:] == ["won"] * 50


def test_blocking_can_be_off(store):
    p = pipeline(store, block=False)
    lines = [event(f"f{i}", forged(i), user="bot", ts=T0 + i) for i in range(THRESHOLD)]
    lines.append(event("g", code(42, 700), user="bot", ts=T0 + 100))
    result = p.process(lines)
    assert "enumeration" in result.alerts["alert"].tolist()
    assert col(result, "draw")[-1] == "won"


def test_replayed_forgeries_count_once(store):
    p = pipeline(store)
    line = event("f-same", forged(1), user="bot", ts=T0)
    for _ in range(THRESHOLD * 2):
        result = p.process([line])
        assert len(result.alerts["alert_id"]) == 0
