"""Fault test 4, fuzz: generated bad input through the worker's batch step and through a real worker.

Hypothesis builds Kafka records the ``scans`` topic should never carry: events with wrong
types, missing fields, huge strings, binary junk, non-UTF-8 bytes, deeply nested JSON, forged,
malformed and foreign codes, wrong or broken ``content-type`` headers, tombstones, envelopes
with empty lines and envelopes larger than a broker takes.  Every event must be accounted for:
an outcome row (a verdict) under its name, and when it is ``invalid_event`` or its message
carries no scans, a dead letter with the reason and the original bytes; nothing may raise.

In process: ``BatchHandler`` with the real pipeline and the Redis state store and replies, for
volume (>= 10 000 events in the short form).  Then a smaller corpus of the same strategies goes
through a real ``scanstream worker`` on the broker, checked by query like every fault test.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import random

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from . import checks, inputs, processes
from . import harness as h

SCALE = h.scale()
MIN_EVENTS = 10_000 if SCALE.name == "short" else 50_000
TS = inputs.DEMO_DAY_START_MS + 3_600_000
_ids = itertools.count(1)


def _dumps(event: dict) -> bytes:
    """JSON bytes of an event; Python's json for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(event)
    except TypeError:
        return json.dumps(event, ensure_ascii=False).encode("utf-8")


def _unique(prefix: str = "fz") -> str:
    return f"{prefix}-{next(_ids):07d}"


# --------------------------------------------------------------------------- strategies


class Codes:
    """Codes to put in events: genuine ones of the fuzz tenant, and every kind of wrong one."""

    def __init__(self, key: bytes, other_key: bytes):
        from scanstream.ext import codec
        rng = random.Random(9)
        self.genuine = [codec.encode(key, 7, 101, rng.randrange(200_000), key_id=1) for _ in range(300)]
        self.wrong = (
            [g[:-1] + ("X" if g[-1] != "X" else "Y") for g in self.genuine[:50]]  # bad MAC
            + [codec.encode(other_key, 7, 101, rng.randrange(200_000), key_id=1) for _ in range(30)]  # foreign key
            + [codec.encode(key, 4242, 101, 5, key_id=1), codec.encode(key, 7, 101, 5, key_id=3)]  # unknown tenant
            + [codec.encode(key, 7, 999, 5, key_id=1),  # unknown batch
               codec.encode(key, 7, 104, 5, key_id=1)]  # not activated
            + ["", "HELLO", "2000E00058003RJ08V9QZJ", "https://q.example.cn/c/", "3000E00058003RJ08V9QZJM3",
               "２０００Ｅ", "2000-E000-5800-3RJ0-8V9Q-ZJM3", "https://q.example.cn/c/" + self.genuine[0] + "?x=1#f",
               self.genuine[1].lower(), "\u0000" * 24, "Z" * 24, "O" * 24, "码" * 24]
        )


def _wrong_value():
    return st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )


@st.composite
def events(draw, codes: Codes) -> bytes:
    """One scan event line that is wrong in at least one way (a few are valid, for contrast)."""
    event = {"scan_id": _unique(), "ts": draw(st.sampled_from([TS, "2026-11-20T10:15:00+08:00"])),
             "code": draw(st.sampled_from(codes.genuine + codes.wrong)), "user_id": f"wx-{draw(st.integers(0, 99))}"}
    if draw(st.booleans()):
        event.update(draw(st.fixed_dictionaries({}, optional={
            "role": st.sampled_from(["consumer", "store", "dealer", "robot", "", "CONSUMER"]),
            "region": st.sampled_from(["440106", "44", "999999", "", "abc", "4401061234567"]),
            "lat": st.floats(min_value=-100, max_value=100), "lon": st.floats(min_value=-200, max_value=200),
            "store_id": st.sampled_from(["S-GZ-001", "S-NONE", ""]), "channel": st.sampled_from(["KA", "x", ""]),
            "ip": st.text(max_size=20), "device_id": st.text(max_size=20)})))
    kind = draw(st.sampled_from(["wrong_type", "missing", "huge", "junk", "non_utf8", "nested", "bad_ts",
                                 "top_level", "syntax", "extra", "valid"]))
    if kind == "wrong_type":
        for f in draw(st.lists(st.sampled_from(["scan_id", "ts", "code", "user_id", "role", "region", "lat", "lon",
                                                "store_id", "channel"]), min_size=1, max_size=3, unique=True)):
            value = draw(_wrong_value())
            if f == "scan_id" and type(value) in (int, float):  # numbers are names too: keep them unique
                value = next(_ids) + 10 ** 12 + (0.5 if type(value) is float else 0)
            event[f] = value
    elif kind == "missing":
        for f in draw(st.lists(st.sampled_from(["scan_id", "ts", "code", "user_id"]), min_size=1, max_size=4,
                               unique=True)):
            del event[f]
    elif kind == "huge":
        f = draw(st.sampled_from(["code", "user_id", "scan_id", "region", "ip", "device_id", "store_id"]))
        size = draw(st.sampled_from([1_000, 5_000, 60_000, 70_000, 300_000]))
        fill = draw(st.sampled_from(["A", "0", "é", "码", "\\", "\"", "\n", " "]))
        event[f] = (event[f] if f == "scan_id" else "") + fill * size
    elif kind == "junk":
        return draw(st.sampled_from([b"", b"\x00", b"\xff\xfe", b"\x89PNG\r\n\x1a\n"])) + draw(st.binary(max_size=200))
    elif kind == "non_utf8":
        line = _dumps(event)
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]))
        at = line.index(b'"code":"') + 8
        return line[:at] + bad + line[at:]
    elif kind == "nested":
        depth = draw(st.sampled_from([5, 100, 600, 1_000, 5_000, 50_000]))
        if draw(st.booleans()):
            return b"[" * depth + b"]" * depth
        inner = b'{"a":' * depth + b"1" + b"}" * depth
        return _dumps(event)[:-1] + b',"nested":' + inner + b"}"
    elif kind == "bad_ts":
        event["ts"] = draw(st.sampled_from([-1, 0, 10 ** 20, 2 ** 63, 1.5e12, "2026-13-45T99:00:00Z", "yesterday",
                                            "2026-11-20T10:15:00", "", "1795140000000", "NaN", True]))
    elif kind == "top_level":
        return draw(st.sampled_from([b"[1, 2, 3]", b'"a string"', b"42", b"null", b"true", b"{}", b"[]",
                                     b'[{"scan_id": "x"}]']))
    elif kind == "syntax":
        line = _dumps(event)
        cut = draw(st.integers(1, len(line) - 1))
        return draw(st.sampled_from([line[:cut], line + b"garbage", line.replace(b":", b"=", 1),
                                     b"\xef\xbb\xbf" + line, line.replace(b'"ts":', b'"ts":NaN,"x":', 1),
                                     line.replace(b'"', b"'"), line + b"\r", b" \t" + line,
                                     line[:-1] + b',"scan_id":"' + _unique("dup").encode() + b'"}',
                                     line.replace(b'"code":"', b'"code":"\\ud800', 1)]))
    elif kind == "extra":
        event.update({"unknown": draw(_wrong_value()), "code2": event.get("code"), "\u0000": 1, "": ""})
    return _dumps(event)


CONTENT_TYPES = [b"application/json", b"application/x-ndjson", b"APPLICATION/X-NDJSON", b"text/plain",
                 b"application/json; charset=utf-8", b"application/x-ndjson; charset=utf-8", b"image/png",
                 b"", b"\xff\xfe", b"application/octet-stream", b" application/json ", b"x" * 5000]


@st.composite
def records(draw, codes: Codes) -> tuple[bytes | None, list[tuple[str, bytes]], int]:
    """(value, headers, events in it) of one message on the ``scans`` topic."""
    shape = draw(st.sampled_from(["single"] * 40 + ["envelope"] * 40 + ["tombstone"] * 8 + ["headers"] * 20
                                 + ["oversized"]))
    if shape == "tombstone":
        return None, draw(st.sampled_from([[], [("content-type", b"application/x-ndjson")]])), 1
    if shape == "single":
        return draw(events(codes)), draw(st.sampled_from([[], [("content-type", b"application/json")]])), 1
    if shape == "headers":  # one event under a wrong, broken, repeated or oddly spelled header
        names = st.sampled_from(["content-type", "Content-Type", "CONTENT-TYPE", "content_type", "x-other"])
        headers = draw(st.lists(st.tuples(names, st.sampled_from(CONTENT_TYPES) | st.binary(max_size=20)),
                                min_size=1, max_size=3))
        return draw(events(codes)), headers, 1
    if shape == "oversized":  # an envelope far beyond what a broker takes (~1 MB), or one event of 2 MB
        if draw(st.booleans()):  # 1 100 scans of about 1 kB
            user = "u" * draw(st.integers(850, 950))
            lines = [_dumps({"scan_id": _unique("over"), "ts": TS, "code": codes.genuine[i % 300], "user_id": user})
                     for i in range(1_100)]
            return b"\n".join(lines), [("content-type", b"application/x-ndjson")], len(lines)
        return b'{"scan_id": "' + _unique("big").encode() + b'", "code": "' + b"A" * 2_000_000 + b'"}', [], 1
    lines = draw(st.lists(events(codes), min_size=1, max_size=12))
    seps = draw(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n \n"]))
    return seps.join(lines), [("content-type", draw(st.sampled_from([b"application/x-ndjson",
                                                                       b"application/x-ndjson; charset=utf-8"])))], \
        len(lines)


# --------------------------------------------------------------------------- accounting


def account(handler, recs, handled, reasons_required: bool = True) -> list[str]:
    """Every event of ``recs`` accounted for in ``handled``: problems found (empty when all are)."""
    from scanstream.streams import envelope

    k = handler.config.kafka
    dead = {dict(p.headers)["scanstream-position"].decode(): p for p in handled.messages if p.topic == k.dlq_topic}
    scans = handled.result.scans
    problems = []
    row = 0
    for r in recs:
        position = f"{r.topic}/{r.partition}@{r.offset}"
        try:
            lines = envelope.decode(r.value, envelope.header(r.headers))
        except envelope.EnvelopeError:
            d = dead.get(position)
            if d is None or d.value != (r.value or b"") or not dict(d.headers).get("scanstream-reason"):
                problems.append(f"{position}: refused message not dead-lettered with reason and bytes")
            continue
        for i, line in enumerate(lines):
            if row >= len(scans["scan_id"]):
                problems.append(f"{position}:{i}: no outcome row")
                continue
            sid, verdict = scans["scan_id"][row], scans["verdict"][row]
            if not sid or not verdict:
                problems.append(f"{position}:{i}: outcome row without name or verdict")
            if verdict == "invalid_event":
                d = dead.get(f"{position}:{i}")
                if d is None or d.value != line:
                    problems.append(f"{position}:{i}: invalid event not dead-lettered with its bytes")
                elif reasons_required and not scans["replay"][row] and not dict(d.headers).get("scanstream-reason"):
                    problems.append(f"{position}:{i}: dead letter without a reason")
            row += 1
    if row != len(scans["scan_id"]):
        problems.append(f"{len(scans['scan_id'])} outcome rows for {row} events")
    results = sum(len(envelope.decode(p.value, envelope.ENVELOPE)) for p in handled.messages
                  if p.topic == k.results_topic)
    if results != row:
        problems.append(f"{results} rows on scan-results for {row} events")
    return problems


# --------------------------------------------------------------------------- in process


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory):
    from scanstream.streams.synthetic import build_world

    base = tmp_path_factory.mktemp("fuzz")
    tenant = inputs.TenantSpec(7, os.urandom(16), key_id=1, name="Fuzz Brewery")
    world = build_world(7, tenant.key, 1)
    inputs.write_registry(base / "registry", [world])
    return base, tenant, Codes(tenant.key, os.urandom(16))


@pytest.mark.timeout(300 if SCALE.name == "short" else 3600)
def test_fuzzed_records_through_the_batch_step(fuzz_world, redis_url, redis_prefix):
    import redis

    from scanstream.engine.state.redis import RedisStateStore
    from scanstream.wiring import build_pipeline
    from scanstream.streams.worker import BatchHandler, Record

    base, tenant, codes = fuzz_world
    campaign = inputs.stocked_campaign("fuzz-campaign", 7, 2_000)
    config = inputs.inprocess_config(base / "registry", [tenant], [campaign], redis_url=redis_url, prefix=redis_prefix)
    state = RedisStateStore.from_url(redis_url, prefix=redis_prefix)
    replies = redis.Redis.from_url(redis_url)
    handler = BatchHandler(config, build_pipeline(config, state=state), None, replies)
    offsets = collections.Counter()
    totals = collections.Counter()

    @settings(max_examples=SCALE.fuzz_batches, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(records(codes), min_size=30, max_size=60))
    def one_batch(drawn):
        recs = []
        for value, headers, n in drawn:
            p = len(recs) % 4
            recs.append(Record("fuzz-scans", p, offsets[p], value, headers))
            offsets[p] += 1
            totals["events"] += n
        totals["records"] += len(recs)
        handled = handler.handle(recs)  # must not raise
        problems = account(handler, recs, handled)
        assert not problems, problems[:10]
        totals["rows"] += len(handled.result.scans["scan_id"])
        totals["dead letters"] += handled.dead_letters
        for v in handled.result.scans["verdict"].tolist():
            totals[v] += 1

    try:
        one_batch()
    finally:
        state.close()
        replies.close()
    print(dict(totals))
    h.log(f"fuzz in process: {dict(totals)}")
    assert totals["events"] >= MIN_EVENTS, totals
    assert totals["invalid_event"] > 0 and totals["dead letters"] > totals["invalid_event"]


# --------------------------------------------------------------------------- a real worker


def corpus(codes: Codes, n_events: int, seed: int = 0) -> list[tuple[bytes | None, list, int]]:
    """Records drawn from the same strategies (hypothesis run as a generator), at most ~900 kB each."""
    out: list = []

    @settings(max_examples=n_events // 60 + 5, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(records(codes), min_size=30, max_size=60))
    def collect(drawn):
        for value, headers, n in drawn:
            if sum(x[2] for x in out) < n_events and (value is None or len(value) <= 900_000):
                out.append((value, headers, n))

    collect()
    return out


@pytest.mark.skipif(processes.SCANSTREAM is None, reason="the scanstream console script is not installed")
@pytest.mark.timeout(300 if SCALE.name == "short" else 3600)
def test_fuzzed_records_through_a_real_worker(fuzz_world, broker, redis_deployment, tmp_path):
    _, tenant, codes = fuzz_world
    rep = h.fuzz_worker_scenario(tmp_path, broker.bootstrap, redis_deployment.url, SCALE,
                                 corpus(codes, SCALE.fuzz_worker_events), tenant, codes.genuine,
                                 cluster=redis_deployment.cluster)
    checks.assert_report(rep)
    assert rep.extra["refused messages"] > 0 and rep.invalid_lines > 0


def test_an_invalid_event_reusing_a_scan_id_is_still_dead_lettered(fuzz_world, redis_url, redis_prefix):
    """A poison message that carries the scan_id of an earlier good scan is not a redelivery (a
    redelivery is the same message again): it must be dead-lettered like any poison message."""
    from scanstream.engine.state.redis import RedisStateStore
    from scanstream.wiring import build_pipeline
    from scanstream.streams import envelope
    from scanstream.streams.worker import BatchHandler, Record

    base, tenant, codes = fuzz_world
    config = inputs.inprocess_config(base / "registry", [tenant], [], redis_url=redis_url, prefix=redis_prefix)
    state = RedisStateStore.from_url(redis_url, prefix=redis_prefix)
    handler = BatchHandler(config, build_pipeline(config, state=state))
    good = orjson.dumps({"scan_id": "reused-1", "ts": TS, "code": codes.genuine[0], "user_id": "wx-1"})
    poison = orjson.dumps({"scan_id": "reused-1", "ts": "not a time", "code": 42, "user_id": None})
    json_ct = [(envelope.CONTENT_TYPE, envelope.SINGLE.encode())]
    first = handler.handle([Record("t", 0, 0, good, json_ct)])
    second = handler.handle([Record("t", 0, 1, poison, json_ct)])
    state.close()
    assert first.result.scans["verdict"][0] == "ok"
    dead = [p for p in second.messages if p.topic == config.kafka.dlq_topic]
    assert [p.value for p in dead] == [poison], (second.result.scans["verdict"].tolist(), dead)
