"""The scan API publisher against a real broker (Tansu) and a real Redis.

Every wait is bounded: consumers poll until the expected number of scans arrived or a
deadline passed, then poll a little longer to catch duplicates.  Consumers ``assign``
partitions instead of joining a group (Tansu's first group join takes half the session
timeout), and never trust end offsets (Tansu reports them wrong).
"""
from __future__ import annotations

import random
import threading
import time
import uuid

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2 as kafka_murmur2

from scanstream.engine import outcomes
from scanstream.engine.keys import KeyTable
from scanstream.ext.codec import mint
from scanstream.ext.scanparse import parse_events
from scanstream.streams import envelope
from scanstream.streams.publisher import (
    InvalidEvent,
    PublishError,
    ScanPublisher,
    check_event,
    code_key,
    code_keys,
    encode_event,
    murmur2,
    partition_for,
)
from scanstream.streams.replies import ReplyWriter

KEY = bytes(range(16))
TS0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PARTITIONS = 8
WAIT_S = 20.0


def codes(batch: int, n: int, start: int = 0) -> list[str]:
    return mint(KEY, 7, batch, start, n).decode("ascii").split()


def scan(i: int, code: str, **extra) -> dict:
    return {"scan_id": f"s-{i}", "ts": TS0 + i, "code": code, "user_id": f"wx-{i % 97}", **extra}


@pytest.fixture
def topic(broker) -> str:
    name = f"scans-{uuid.uuid4().hex[:10]}"
    broker.create_topics([name], PARTITIONS)
    return name


def read_messages(bootstrap: str, topic: str, expect_scans: int, timeout_s: float = WAIT_S,
                  settle_s: float = 0.5) -> list:
    """Every message of ``topic`` until ``expect_scans`` scans arrived (bounded), plus any extra."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="test-reader")
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out, scans = [], 0
    deadline = time.monotonic() + timeout_s
    settle_until = None
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(200, max_records=10_000).values():
                for r in records:
                    out.append(r)
                    scans += len(envelope.decode(r.value, envelope.header(r.headers)))
            if scans >= expect_scans:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
    finally:
        consumer.close()
    return out


def scans_of(messages) -> list[tuple[int, int, dict]]:
    """(partition, offset, event) of every scan, in partition/offset order."""
    rows = []
    for m in sorted(messages, key=lambda r: (r.partition, r.offset)):
        for line in envelope.decode(m.value, envelope.header(m.headers)):
            rows.append((m.partition, m.offset, orjson.loads(line)))
    return rows


# -- validation (no broker needed) -----------------------------------------------------------

GOOD = scan(1, "2000E00058003RJ08V9QZJM3")

BAD = [
    ({k: v for k, v in GOOD.items() if k != "scan_id"}, "scan_id", None),
    ({**GOOD, "scan_id": ""}, "scan_id", ""),
    ({**GOOD, "scan_id": ["a"]}, "scan_id", ["a"]),
    ({**GOOD, "scan_id": "x" * 300}, "scan_id", "x" * 300),
    ({**GOOD, "user_id": None}, "user_id", None),
    ({**GOOD, "user_id": True}, "user_id", True),
    ({k: v for k, v in GOOD.items() if k != "code"}, "code", None),
    ({**GOOD, "code": 12345}, "code", 12345),
    ({k: v for k, v in GOOD.items() if k != "ts"}, "ts", None),
    ({**GOOD, "ts": "2026-01-01 10:00:00"}, "ts", "2026-01-01 10:00:00"),
    ({**GOOD, "ts": "2026-13-01T00:00:00Z"}, "ts", "2026-13-01T00:00:00Z"),
    ({**GOOD, "ts": "yesterday"}, "ts", "yesterday"),
    ({**GOOD, "ts": "2026-02-29T00:00:00Z"}, "ts", "2026-02-29T00:00:00Z"),
    ({**GOOD, "ts": "2026-04-31T00:00:00+08:00"}, "ts", "2026-04-31T00:00:00+08:00"),
    ({**GOOD, "ts": "2026-11-20T10:15:00.Z"}, "ts", "2026-11-20T10:15:00.Z"),
    ({**GOOD, "ts": "2026-11-20T24:00:00Z"}, "ts", "2026-11-20T24:00:00Z"),
    ({**GOOD, "ts": 1.767e12}, "ts", 1.767e12),
    ({**GOOD, "ts": 1_767_225_600}, "ts", 1_767_225_600),  # seconds, not milliseconds
    ({**GOOD, "ts": "1999-12-31T23:59:59Z"}, "ts", "1999-12-31T23:59:59Z"),
    ({**GOOD, "role": "admin"}, "role", "admin"),
    ({**GOOD, "store_id": 1.5}, "store_id", 1.5),
    ({**GOOD, "channel": {"a": 1}}, "channel", {"a": 1}),
    ({**GOOD, "region": "4403x5"}, "region", "4403x5"),
    ({**GOOD, "region": "44030"}, "region", "44030"),
    ({**GOOD, "lat": "22.5"}, "lat", "22.5"),
    ({**GOOD, "lon": float("nan")}, "lon", float("nan")),
    ({**GOOD, "ip": False}, "ip", False),
    ({**GOOD, "device_id": b"raw"}, "device_id", b"raw"),
    ({**GOOD, "user_id": "wx-\ud800"}, "user_id", "wx-\ud800"),  # a lone surrogate: not UTF-8
]

ACCEPTED = [
    GOOD,
    {**GOOD, "ts": "2026-11-20T10:15:00+08:00"},
    {**GOOD, "ts": "2026-11-20t10:15:00.123456z"},
    {**GOOD, "ts": "2026-11-20 10:15:60-05:30"},
    {**GOOD, "ts": "2024-02-29T23:59:59.9+14:00"},
    {**GOOD, "scan_id": 123, "user_id": 456, "store_id": 7},
    {**GOOD, "role": "store", "store_id": "st-1", "channel": "ka", "region": "44", "lat": 22, "lon": 114.1},
    {**GOOD, "region": 440305, "ip": "1.2.3.4", "device_id": "d", "extra": {"kept": [1, 2]}},
    {**GOOD, "role": None, "region": None, "lat": None, "store_id": None, "region2": "anything"},
    {**GOOD, "code": "not a code at all"},  # judged 'malformed' by the worker, not invalid
]


@pytest.mark.parametrize("event,field,value", BAD, ids=[f"{f}={v!r}"[:40] for _, f, v in BAD])
def test_invalid_event_names_field_and_value(event, field, value):
    with pytest.raises(InvalidEvent) as info:
        encode_event(event)
    assert info.value.field == field
    assert f"field {field!r}" in str(info.value)
    shown = repr(value)
    assert shown[:60] in str(info.value)


@pytest.mark.parametrize("event", ACCEPTED)
def test_valid_events_pass(event):
    check_event(event)


def test_publisher_and_worker_agree_on_validity():
    """The publisher rejects exactly what the worker's parse stage would call invalid_event."""
    lines, events = [], []
    for event in [e for e, _, _ in BAD] + ACCEPTED:
        try:
            lines.append(orjson.dumps(event))  # NaN becomes null here, so the worker would take it
        except orjson.JSONEncodeError:
            continue  # not JSON at all: nothing the worker could receive
        if "nan" not in repr(event):
            events.append(event)
        else:
            lines.pop()
    cols = parse_events(lines)
    for event, reason in zip(events, cols["reason"].tolist()):
        try:
            encode_event(event)
            mine = ""
        except InvalidEvent as exc:
            mine = str(exc)
        assert bool(mine) == bool(reason), (event, mine, reason)


def test_not_a_dict_and_not_serialisable():
    with pytest.raises(InvalidEvent, match="must be a dict"):
        check_event('{"scan_id": "x"}')
    with pytest.raises(InvalidEvent) as info:
        encode_event({**GOOD, "tags": {1, 2}})
    assert info.value.field == "tags"
    with pytest.raises(InvalidEvent) as info:
        encode_event({**GOOD, "blob": "x" * 70_000})
    assert "bytes" in str(info.value)


# -- keys and partitions (no broker needed) --------------------------------------------------

def test_every_spelling_of_a_code_has_one_key():
    code = "2000E00058003RJ08V9QZJM3"  # tenant 7, batch 42, serial 123456
    spellings = [code, code.lower(), "2000-E000-5800-3RJ0-8V9Q-ZJM3", f"https://q.example.cn/c/{code}?from=wx",
                 f"  {code}\n", code[:-1] + ("4" if code[-1] != "4" else "5")]  # last: a mistyped MAC
    assert {code_key(s) for s in spellings} == {b"7:42:123456"}
    assert code_keys(spellings) == [b"7:42:123456"] * len(spellings)
    assert code_key("https://x.cn/a/not-a-code/") == b"NOTACODE"
    assert code_key(" https://x.cn/a/Not-A-Code?x=1 ") == code_key("notacode")


def test_partition_is_the_default_partitioners():
    rng = random.Random(7)
    for _ in range(20_000):
        data = rng.randbytes(rng.randint(0, 40))
        assert murmur2(data) == kafka_murmur2(data)
    from kafka.partitioner.default import DefaultPartitioner

    class Cluster:  # what DefaultPartitioner asks of the cluster metadata
        def topics(self):
            return {"t"}

        def partitions_for_topic(self, topic):
            return set(range(PARTITIONS))

        def available_partitions_for_topic(self, topic):
            return set(range(PARTITIONS))

    dp = DefaultPartitioner()
    for key in code_keys(codes(42, 2000)) + [b"NOTACODE", b""]:
        assert partition_for(key, PARTITIONS) == dp.partition("t", key, key, None, None, Cluster())


def test_the_engine_finds_each_codes_partition_as_the_publisher_keys_it():
    """The worker keeps a code's clone sets with the code's partition (``StateStore.distinct``'s
    groups): ``code_partitions`` over columns must name the partition the publisher sends it to."""
    import numpy as np
    from scanstream.ext.codec import code_partitions, verify_batch

    rng = random.Random(11)
    tenants = [0, 1, 7, 65535] + [rng.randrange(65536) for _ in range(50)]
    batches = [0, 1, 42, 16777215] + [rng.randrange(1 << 24) for _ in range(50)]
    serials = [0, 9, 123456, 4294967295] + [rng.randrange(1 << 32) for _ in range(50)]
    t, b, s = (np.array(rng.choices(v, k=3000), np.int64) for v in (tenants, batches, serials))
    for partitions in (1, 4, 7, 128):
        want = [partition_for(f"{x}:{y}:{z}".encode(), partitions) for x, y, z in zip(t, b, s)]
        assert code_partitions(t, b, s, partitions).tolist() == want
    minted = codes(42, 500)
    v = verify_batch(minted, KeyTable())
    assert code_partitions(v.tenant, v.batch, v.serial, PARTITIONS).tolist() == \
        [partition_for(k, PARTITIONS) for k in code_keys(minted)]
    with pytest.raises(ValueError, match="at least 1 partition"):
        code_partitions(t, b, s, 0)


# -- against the broker ----------------------------------------------------------------------

def test_missing_topic_and_wrong_partition_count(broker, topic):
    with pytest.raises(PublishError, match="does not exist"):
        ScanPublisher(broker.bootstrap, topic=f"missing-{uuid.uuid4().hex[:8]}", max_block_ms=3000)
    with pytest.raises(ValueError, match="has 8 partitions"):
        ScanPublisher(broker.bootstrap, topic=topic, partitions=4)
    assert not any(t.startswith("missing-") for t in broker.topics())  # the check created nothing


@pytest.mark.timeout(90)
def test_scans_of_one_code_land_on_one_partition_in_order(broker, topic):
    """4 threads publish interleaved scans of 60 codes (several spellings, both paths)."""
    all_codes = codes(42, 60)
    per_thread = 1500
    with ScanPublisher(broker.bootstrap, topic=topic, partitions=PARTITIONS) as pub:
        def worker(t: int) -> None:
            rng = random.Random(t)
            for i in range(per_thread):
                code = rng.choice(all_codes)
                spelled = rng.choice([code, code.lower(), f"https://q.example.cn/c/{code}"])
                event = {**scan(t * per_thread + i, spelled), "thread": t, "seq": i}
                if i % 50 == 0:
                    pub.publish_single(event)
                elif i % 7 == 0:
                    pub.publish_many([event])
                else:
                    pub.publish(event)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not any(th.is_alive() for th in threads)
        pub.flush(WAIT_S)
    total = 4 * per_thread
    rows = scans_of(read_messages(broker.bootstrap, topic, total))
    assert len(rows) == total
    where: dict[bytes, set[int]] = {}
    last_seq: dict[tuple[bytes, int], int] = {}
    for partition, _, event in rows:
        key = code_key(event["code"])
        assert partition == partition_for(key, PARTITIONS)
        where.setdefault(key, set()).add(partition)
        # one thread's scans of one code keep that thread's publish order
        prev = last_seq.get((key, event["thread"]), -1)
        assert event["seq"] > prev, f"{event['scan_id']} overtook an earlier scan of its code"
        last_seq[(key, event["thread"])] = event["seq"]
    assert len(where) == len(all_codes) and all(len(p) == 1 for p in where.values())
    assert len({p for ps in where.values() for p in ps}) > 1  # the codes spread over partitions


@pytest.mark.timeout(90)
def test_many_scans_become_few_envelopes_none_lost_none_duplicated(broker, topic):
    n = 20_000
    limit = 65_536  # small envelopes, so that some are sealed by size
    events = [scan(i, c, region="440305") for i, c in enumerate(codes(43, n))]
    with ScanPublisher(broker.bootstrap, topic=topic, linger_ms=20, max_envelope_bytes=limit) as pub:
        for lo in range(0, n, 1000):
            assert pub.publish_many(events[lo:lo + 1000]) == 1000
        pub.flush(WAIT_S)
        stats = pub.stats()
    assert stats["accepted"] == stats["handed"] == n and stats["failed"] == 0
    messages = read_messages(broker.bootstrap, topic, n)
    assert len(messages) == stats["envelopes"]
    assert len(messages) < n // 50, f"{len(messages)} messages for {n} scans"
    sizes = []
    for m in messages:
        assert envelope.header(m.headers) == envelope.ENVELOPE
        assert m.key is None
        assert len(m.value) <= limit
        sizes.append(len(m.value))
        for line in envelope.decode(m.value, envelope.ENVELOPE):
            assert partition_for(code_key(orjson.loads(line)["code"]), PARTITIONS) == m.partition
    # how full the envelopes get depends on how fast the test publishes against the linger timer
    # on a loaded machine, so only the cap and the message count are asserted
    ids = [event["scan_id"] for _, _, event in scans_of(messages)]
    assert len(ids) == n and len(set(ids)) == n
    assert set(ids) == {e["scan_id"] for e in events}


@pytest.mark.timeout(60)
def test_linger_seals_an_envelope_per_partition(broker, topic):
    events = [scan(i, c) for i, c in enumerate(codes(44, 200))]
    with ScanPublisher(broker.bootstrap, topic=topic, linger_ms=300) as pub:
        for e in events:
            pub.publish(e)
        t0 = time.monotonic()
        deadline = t0 + 10
        while pub.stats()["handed"] < len(events) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pub.stats()["handed"] == len(events)  # sent by the linger, without flush()
        assert time.monotonic() - t0 < 5
        used = {partition_for(code_key(e["code"]), PARTITIONS) for e in events}
        assert pub.stats()["envelopes"] == len(used)


@pytest.mark.timeout(60)
def test_single_scan_path(broker, topic):
    code = codes(45, 1)[0]
    event = scan(1, f"https://q.example.cn/c/{code}", lat=22.54, lon=114.06)
    with ScanPublisher(broker.bootstrap, topic=topic) as pub:
        pub.publish_single(event)
        pub.flush(WAIT_S)
    (m,) = read_messages(broker.bootstrap, topic, 1)
    assert envelope.header(m.headers) == envelope.SINGLE
    assert m.key == code_key(code) == b"7:45:0"
    assert m.partition == partition_for(m.key, PARTITIONS)
    assert envelope.decode(m.value, envelope.SINGLE) == [orjson.dumps(event)]


@pytest.mark.timeout(60)
def test_invalid_event_is_not_published(broker, topic):
    good = [scan(i, c) for i, c in enumerate(codes(46, 5))]
    with ScanPublisher(broker.bootstrap, topic=topic) as pub:
        with pytest.raises(InvalidEvent, match="event 3: field 'ts'"):
            pub.publish_many(good[:3] + [{**good[3], "ts": "soon"}] + good[4:])
        with pytest.raises(InvalidEvent, match="field 'user_id'"):
            pub.publish({**good[0], "user_id": ""})
        with pytest.raises(InvalidEvent, match="field 'code'"):
            pub.publish_single({**good[0], "code": None})
        assert pub.stats()["accepted"] == 0  # all or none
        pub.publish(good[0])
        pub.flush(WAIT_S)
    assert [e["scan_id"] for _, _, e in scans_of(read_messages(broker.bootstrap, topic, 1))] == ["s-0"]


@pytest.mark.timeout(60)
def test_close_sends_buffered_scans(broker, topic):
    events = [scan(i, c) for i, c in enumerate(codes(47, 500))]
    pub = ScanPublisher(broker.bootstrap, topic=topic, linger_ms=600_000)  # only close() can send them
    pub.publish_many(events)
    assert pub.stats()["handed"] == 0
    pub.close(WAIT_S)
    with pytest.raises(PublishError, match="closed"):
        pub.publish(events[0])
    rows = scans_of(read_messages(broker.bootstrap, topic, len(events)))
    assert sorted(e["scan_id"] for _, _, e in rows) == sorted(e["scan_id"] for e in events)


def _outcome(scan_id: str, verdict: str, prize: int) -> outcomes.Columns:
    cols = outcomes.empty(outcomes.SCAN_COLUMNS, 1)
    cols["scan_id"][0] = scan_id
    cols["verdict"][0] = verdict
    cols["prize_cents"][0] = prize
    cols["tenant"][0] = 7
    return cols


@pytest.mark.timeout(60)
def test_await_result_through_redis(broker, topic, redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    with ScanPublisher(broker.bootstrap, topic=topic, redis_url=redis_url, prefix=redis_prefix) as pub:
        pub.publish(scan(1, codes(48, 1)[0]))
        # the worker's side answers 0.2 s later, while the API waits
        timer = threading.Timer(0.2, ReplyWriter(client, redis_prefix, 60).push_outcomes, (_outcome("s-1", "ok", 880),))
        timer.start()
        t0 = time.monotonic()
        got = pub.await_result("s-1", timeout=5)
        assert got is not None and 0.1 < time.monotonic() - t0 < 3
        assert (got["scan_id"], got["verdict"], got["prize_cents"], got["tenant"]) == ("s-1", "ok", 880, 7)
        assert pub.await_result("s-1", timeout=1) == got  # a retried wait gets it again
        t0 = time.monotonic()
        assert pub.await_result("never-pushed", timeout=0.3) is None
        assert 0.25 < time.monotonic() - t0 < 2
        with pytest.raises(ValueError, match="timeout"):
            pub.await_result("s-1", timeout=0)
    timer.join(5)
    client.close()


@pytest.mark.timeout(60)
def test_a_resent_scan_id_with_another_code_is_not_answered_with_the_first_prize(broker, topic, redis_url,
                                                                                   redis_prefix):
    """The attack on the scan API's answer: a winning scan's scan_id resent with a forged code.  The
    engine answers the resend ``conflict``; the API awaiting the resend's outcome must see that,
    not "genuine, you won" from the first delivery still among the scan_id's outcomes."""
    from scanstream.engine.state.memory import MemoryStateStore
    from scanstream.wiring import build_pipeline
    from tests.test_pipeline import T0, code, event, make_config, make_registry

    genuine = orjson.loads(event("s-win", code(42, 7), user="wx-1", ts=T0))
    forged = {**genuine, "code": code(42, 8)[:-1] + ("X" if code(42, 8)[-1] != "X" else "Y"), "user_id": "wx-thief"}
    pipeline = build_pipeline(make_config(), state=MemoryStateStore(), registry=make_registry())
    client = redis.Redis.from_url(redis_url)
    writer = ReplyWriter(client, redis_prefix, 60)
    with ScanPublisher(broker.bootstrap, topic=topic, redis_url=redis_url, prefix=redis_prefix) as pub:
        for e in (genuine, forged):  # the worker's side: each delivery's outcome pushed in turn
            pub.publish(e)
            writer.push_outcomes(pipeline.process([orjson.dumps(e)]).scans)
        theirs = pub.await_result("s-win", timeout=2, event=forged)
        assert (theirs["verdict"], theirs["prize_cents"], theirs["user_id"]) == ("conflict", 0, "wx-thief")
        mine = pub.await_result("s-win", timeout=2, event=genuine)
        assert (mine["verdict"], mine["prize_cents"] > 0, mine["user_id"]) == ("ok", True, "wx-1")
        # an event whose outcome never came: None after the timeout, not another event's outcome
        other = {**genuine, "code": code(42, 9)}
        t0 = time.monotonic()
        assert pub.await_result("s-win", timeout=0.3, event=other) is None
        assert 0.25 < time.monotonic() - t0 < 2
    client.close()


def test_await_result_needs_redis(broker, topic):
    with ScanPublisher(broker.bootstrap, topic=topic) as pub:
        with pytest.raises(PublishError, match="redis_url"):
            pub.await_result("x", 0.1)


def test_envelope_limit_is_checked():
    with pytest.raises(ValueError, match="max_envelope_bytes"):
        ScanPublisher("127.0.0.1:1", max_envelope_bytes=1000)  # refused before any connection


@pytest.mark.timeout(60)
def test_undelivered_scans_are_reported(broker):
    """A broker that goes away: flush() says how many scans were lost, within its bound."""
    from scanstream.streams.broker import TansuBroker

    own = TansuBroker().start()  # not the session's broker: this one is stopped half-way
    try:
        own.create_topics(["scans"], PARTITIONS)
        pub = ScanPublisher(own.bootstrap, delivery_timeout_ms=2000, request_timeout_ms=1000)
        pub.publish(scan(0, codes(49, 1)[0]))
        pub.flush(WAIT_S)
    finally:
        own.stop()
    pub.publish_many([scan(i, c) for i, c in enumerate(codes(49, 100))])
    t0 = time.monotonic()
    with pytest.raises(PublishError, match="100 scans were not delivered"):
        pub.flush(15)
    assert time.monotonic() - t0 < 10
    pub.close(5)
    assert pub.stats()["failed"] == 100
