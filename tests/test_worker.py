"""The Kafka worker: its batch step without a broker, then the whole worker on real services.

The unit part drives ``streams.worker.BatchHandler`` with plain records.  The integration part
starts ``scanstream worker`` as a process against a real Tansu broker, the machine's Redis and
an embedded ClickHouse (chdb), publishes the demo stream, and checks the outcomes against the
local driver's outcomes for the same stream: the same scans give the same results whichever
driver and state store run them.
"""
from __future__ import annotations

import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from scanstream.engine.config import EngineSettings, KafkaSettings, load
from config_writer import worker_toml
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.wiring import build_pipeline, build_registry
from scanstream.streams import envelope
from scanstream.streams.synthetic import ACTIVATIONS, GUIDE_SALE_SHARE, SHIPMENTS, build_world, generate_scans
from scanstream.streams.broker import free_port
from scanstream.streams.worker import BatchHandler, Record, RegistryReloader, batch_token

REPO = Path(__file__).resolve().parents[1]
LOCAL_TOML = REPO / "config" / "local.toml"
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
STREAM_SCANS = 6000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("worker-world")
    config = load(LOCAL_TOML)
    w = build_world(7, config.keys.get(7, 1), 1)
    w.write_registry(base / "registry")
    lines = generate_scans(w, STREAM_SCANS, seed=11, guide_share=GUIDE_SALE_SHARE)  # guides' sales: commissions
    return base, lines


def local_config(registry: Path, **kafka):
    config = load(LOCAL_TOML)
    return replace(config, registry_dir=registry, clickhouse="",
                   kafka=replace(config.kafka, **kafka) if kafka else config.kafka)


def records_of(lines: list[bytes], per_message: int, topic: str = "scans") -> list[Record]:
    out = []
    for offset, start in enumerate(range(0, len(lines), per_message)):
        out.append(Record(topic, 0, offset, envelope.encode(lines[start:start + per_message]),
                          [(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())]))
    return out


# --------------------------------------------------------------------------- the batch step


def test_handler_gives_the_local_pipelines_outcomes(world):
    base, lines = world
    config = local_config(base / "registry")
    local = build_pipeline(config, state=MemoryStateStore()).process(lines)
    handler = BatchHandler(config, build_pipeline(config, state=MemoryStateStore()))
    handled = [handler.handle(records_of(lines[i:i + 1000], 250)) for i in range(0, len(lines), 1000)]
    named = ~np.char.startswith(local.scans["scan_id"].astype(str), "raw:")  # events without a scan_id
    for column in ("scan_id", "verdict", "diversion", "campaign", "prize_tier", "prize_cents", "draw", "replay"):
        got = np.concatenate([h.result.scans[column] for h in handled])
        assert got[named].tolist() == local.scans[column][named].tolist(), column
    anonymous = np.concatenate([h.result.scans["scan_id"] for h in handled])[~named]
    assert all(s.startswith("pos:scans/0@") for s in anonymous) and len(set(anonymous)) == len(anonymous)
    assert sum(h.scans for h in handled) == len(lines)


def test_results_are_envelopes_partitioned_by_scan_id(world):
    base, lines = world
    config = local_config(base / "registry", partitions=4)
    handled = BatchHandler(config, build_pipeline(config, state=MemoryStateStore())).handle(records_of(lines[:500], 100))
    results = [p for p in handled.messages if p.topic == config.kafka.results_topic]
    assert 1 <= len(results) <= 4
    assert len({p.partition for p in results}) == len(results)
    carried = [orjson.loads(line) for p in results for line in envelope.decode(p.value, envelope.header(p.headers))]
    assert sorted(r["scan_id"] for r in carried) == sorted(handled.result.scans["scan_id"].tolist())
    # a scan_id's partition does not depend on the batch it came in
    again = BatchHandler(config, build_pipeline(config, state=MemoryStateStore())).handle(records_of(lines[:10], 10))
    where = {orjson.loads(line)["scan_id"]: p.partition for p in results for line in p.value.split(b"\n")}
    for p in again.messages:
        if p.topic == config.kafka.results_topic:
            for line in p.value.split(b"\n"):
                assert where[orjson.loads(line)["scan_id"]] == p.partition


def test_content_type_parameters(world):
    """HTTP clients add ``; charset=utf-8``: still an envelope; another charset is refused."""
    base, lines = world
    config = local_config(base / "registry")
    handler = BatchHandler(config, build_pipeline(config, state=MemoryStateStore()))
    carried = envelope.encode(lines[:3])
    records = [
        Record("scans", 0, 0, carried, [(envelope.CONTENT_TYPE, b"application/x-ndjson; charset=utf-8")]),
        Record("scans", 0, 1, carried, [(envelope.CONTENT_TYPE, b"Application/X-NDJSON;charset=\"UTF8\"")]),
        Record("scans", 0, 2, lines[3], [(envelope.CONTENT_TYPE, b"application/json; charset=utf-8")]),
        Record("scans", 0, 3, carried, [(envelope.CONTENT_TYPE, b"application/x-ndjson; charset=gbk")]),
    ]
    handled = handler.handle(records)
    assert handled.scans == 7
    dead = [p for p in handled.messages if p.topic == config.kafka.dlq_topic]
    assert len(dead) == 1 and dead[0].value == carried
    assert b"gbk" in dict(dead[0].headers)["scanstream-reason"]


def test_undecodable_messages_and_invalid_events_are_dead_lettered_with_reason(world):
    base, lines = world
    config = local_config(base / "registry")
    handler = BatchHandler(config, build_pipeline(config, state=MemoryStateStore()))
    records = [
        Record("scans", 0, 0, b"\x89PNG....", [(envelope.CONTENT_TYPE, b"image/png")]),
        Record("scans", 0, 1, None, []),
        Record("scans", 0, 2, b"not json", []),
        Record("scans", 1, 7, envelope.encode([lines[0], b"{\"scan_id\": 5}"]),
               [(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())]),
    ]
    handled = handler.handle(records)
    dead = [p for p in handled.messages if p.topic == config.kafka.dlq_topic]
    assert handled.dead_letters == len(dead) == 4
    by_value = {p.value: dict(p.headers) for p in dead}
    assert b"image/png" in by_value[b"\x89PNG...."]["scanstream-reason"]
    assert b"tombstone" in by_value[b""]["scanstream-reason"]
    assert b"not JSON" in by_value[b"not json"]["scanstream-reason"]
    assert by_value[b"not json"]["scanstream-position"] == b"scans/0@2:0"
    assert b"missing required field" in by_value[b"{\"scan_id\": 5}"]["scanstream-reason"]
    # the scans that could be read are all accounted for: one good, two invalid events
    assert sorted(handled.result.scans["verdict"].tolist()) == sorted(
        ["invalid_event", "invalid_event", handled.result.scans["verdict"][1]])
    assert handled.scans == 3


def test_batch_token_names_the_offsets():
    a = [Record("scans", 0, 5, b""), Record("scans", 1, 9, b""), Record("scans", 0, 6, b"")]
    assert batch_token(a) == batch_token(list(reversed(a)))
    assert batch_token(a) != batch_token(a[:2])
    assert batch_token(a) != batch_token([Record("scans", 0, 5, b""), Record("scans", 1, 10, b""),
                                          Record("scans", 0, 6, b"")])


def test_registry_reload_from_files_without_restart(tmp_path, world):
    base, lines = world
    registry = tmp_path / "registry"
    shutil.copytree(base / "registry", registry)
    config = replace(local_config(registry), registry_reload_s=1)
    pipeline = build_pipeline(config, state=MemoryStateStore())
    now = [0.0]
    reloader = RegistryReloader(config, pipeline, lambda: build_registry(config), clock=lambda: now[0])
    unknown = next(line for line in lines if b'"code"' in line
                   and pipeline.process([line]).scans["verdict"][0] == "unknown_batch")
    batches = (registry / "batches.csv").read_text()
    batch = pipeline.process([unknown]).scans["batch"][0]
    (registry / "batches.csv").write_text(batches + f"7,{batch},unit,NEW-SKU,New product,1,10000\n")
    assert not reloader.maybe_reload()  # not due yet
    now[0] = 5.0
    assert reloader.maybe_reload()
    redelivered_elsewhere = orjson.loads(unknown)
    redelivered_elsewhere["scan_id"] += "-new"
    out = pipeline.process([orjson.dumps(redelivered_elsewhere)]).scans
    assert out["verdict"][0] == "ok" and out["sku"][0] == "NEW-SKU"
    now[0] = 10.0
    (registry / "batches.csv").write_text("tenant,batch\n7,not-a-number\n")  # half-written file
    assert not reloader.maybe_reload()
    assert pipeline.registry.batches.sku.tolist().count("NEW-SKU") == 1  # the good registry stays


# --------------------------------------------------------------------------- the real worker


def worker_config(path: Path, registry: Path, chdb: Path, bootstrap: str, names: dict[str, str], prefix: str,
                  state: str, redis_url: str | None = None, *, cluster: bool = False, **kafka_settings) -> Path:
    """A worker's configuration file; ``cluster``: ``redis_url`` is a node of a Redis Cluster."""
    kafka = {"bootstrap": bootstrap, **{f"{k}_topic": names[k] for k in ("scans", "results", "awards", "alerts", "dlq")},
             "group": names["group"], "partitions": 4, "take": 16, "within_ms": 50, "session_timeout_s": 4,
             **kafka_settings}
    redis = {"prefix": prefix, **({"url": redis_url} if redis_url else {}), **({"cluster": True} if cluster else {})}
    path.write_text(worker_toml(LOCAL_TOML.read_text(encoding="utf-8"), registry=registry, chdb=chdb, state=state,
                                redis=redis, kafka=kafka), encoding="utf-8")
    return path


def stop(worker: subprocess.Popen) -> None:
    """Stop a worker as an operator would (SIGTERM), and kill it when it does not leave in time."""
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()


def consume(bootstrap: str, topic: str, want: int, timeout_s: float, *, keys: bool = False) -> list:
    """Scan lines (envelopes opened) from ``topic`` until ``want`` arrived or time is up; with
    ``keys``, (message key, line) pairs."""
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=1000, group_id=None)
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < deadline:
            for message in consumer:
                lines = envelope.decode(message.value, envelope.header(message.headers))
                out.extend([(message.key, line) for line in lines] if keys else lines)
                if len(out) >= want:
                    break
    finally:
        consumer.close()
    return out


def committed_offset(bootstrap: str, group: str, topic: str, partition: int, want: int, timeout_s: float) -> int | None:
    """The group's committed offset of one partition, polled until it is ``want`` or time is up."""
    from kafka import KafkaAdminClient, TopicPartition
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            tp = TopicPartition(topic, partition)
            meta = admin.list_group_offsets({group: [tp]}).get(group, {}).get(tp)
            got = meta.offset if meta is not None else None
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.5)
    finally:
        admin.close()


@pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")
@pytest.mark.parametrize("state", ["memory", "redis", "cluster"])
def test_worker_on_real_services_matches_the_local_driver(state, world, broker, redis_url, redis_prefix, tmp_path,
                                                          request):
    import redis
    from kafka import KafkaProducer

    cluster = state == "cluster"
    if cluster:  # the state store on the Redis Cluster, the replies too
        redis_url = request.getfixturevalue("redis_cluster_url")
    base, lines = world
    names = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in ("scans", "results", "awards", "alerts", "dlq", "group")}
    config_path = worker_config(tmp_path / "worker.toml", base / "registry", tmp_path / "chdb", broker.bootstrap,
                                names, redis_prefix, "redis" if cluster else state,
                                redis_url if cluster else None, cluster=cluster)
    local = build_pipeline(local_config(base / "registry"), state=MemoryStateStore()).process(lines)
    expected = local.scans
    log = (tmp_path / "worker.log").open("wb")
    metrics_port = free_port()
    worker = subprocess.Popen([SCANSTREAM, "--config", str(config_path), "worker", "--loglevel", "info",
                               "--metrics-port", str(metrics_port)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        # envelopes of 200 scans, one partition each, in stream order: what the publisher sends
        for start in range(0, len(lines), 200):
            producer.send(names["scans"], envelope.encode(lines[start:start + 200]), partition=0,
                          headers=[(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())])
        producer.send(names["scans"], b"\x00 not a scan", partition=0, headers=[(envelope.CONTENT_TYPE, b"x/y")])
        producer.flush()
        producer.close()
        sent = -(-len(lines) // 200) + 1
        results = consume(broker.bootstrap, names["results"], len(lines), timeout_s=120)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        assert len(results) == len(lines)
        got = {}
        for line in results:
            row = orjson.loads(line)
            if not row["scan_id"].startswith("pos:"):  # events without a scan_id are named by position
                got.setdefault(row["scan_id"], row)  # a redelivered scan_id: the first row is the first outcome
        want = {}
        for i, sid in enumerate(expected["scan_id"].tolist()):
            if not sid.startswith("raw:"):
                want.setdefault(sid, {c: expected[c][i].item() if hasattr(expected[c][i], "item") else expected[c][i]
                                      for c in ("verdict", "diversion", "dealer_id", "prize_tier", "prize_cents",
                                                "draw")})
        assert {s: {c: r[c] for c in want[s]} for s, r in got.items()} == want
        # outbound scans moved goods on this path too: the demo's diverted case is D-ZJ's in Guangzhou
        moved = [w for w in want.values() if w["dealer_id"] == "D-ZJ" and w["diversion"] == "region"]
        assert len(moved) >= 3, moved
        # the payout outbox: one message per award, keyed and carrying the award's payout key
        want_keys = sorted(local.awards["payout_key"].tolist())
        assert want_keys, "a world without awards would prove nothing"
        awards = consume(broker.bootstrap, names["awards"], len(want_keys), 60, keys=True)
        assert sorted(orjson.loads(value)["payout_key"] for _, value in awards) == want_keys
        # 导购 commissions too, each to its guide (config/local.toml pays 1 yuan)
        want_commissions = sorted((u, c) for u, c, b in zip(local.awards["user_id"].tolist(),
                                                           local.awards["prize_cents"].tolist(),
                                                           local.awards["beneficiary"].tolist()) if b == "guide")
        assert want_commissions and {c for _, c in want_commissions} == {100}
        assert sorted((a["user_id"], a["prize_cents"]) for a in map(orjson.loads, (v for _, v in awards))
                      if a["beneficiary"] == "guide") == want_commissions
        assert all(key.decode() == orjson.loads(value)["payout_key"] for key, value in awards)
        # the scan API's synchronous reply, through Redis
        client = redis.RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
        from scanstream.streams.replies import fresh, read_replies, reply_epochs
        sample = expected["scan_id"][123]
        (held,) = read_replies(client, redis_prefix, EngineSettings.replay_ttl_hours * 3600, [sample], reply_epochs(time.time() - 600, time.time()))
        assert [orjson.loads(x)["verdict"] for x in fresh(held, {})] == [expected["verdict"][123]]
        dead = consume(broker.bootstrap, names["dlq"], 1 + int((expected["verdict"] == "invalid_event").sum()), 30)
        assert b"\x00 not a scan" in dead
        # the worker's Prometheus metrics count what it processed
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        scraped = {v: float(n) for v, n in re.findall(r'scanstream_scans_total\{verdict="(\w+)"\} (\S+)', text)}
        assert scraped == {v: float(n) for v, n in collections.Counter(expected["verdict"].tolist()).items()}
        assert sum(float(n) for n in re.findall(r'(?m)^scanstream_dead_letters_total\{reason="\w+"\} (\S+)', text)) == len(dead)
        assert float(re.search(r"(?m)^scanstream_batch_seconds_count (\S+)", text).group(1)) >= 1
        # every message's offset is committed once its outcomes are out (Faust commits every few seconds)
        assert committed_offset(broker.bootstrap, names["group"], names["scans"], 0, sent, 30) == sent
    finally:
        stop(worker)
        log.close()
    # with the worker gone, chdb is free: every scan is in scan_events exactly once
    query = subprocess.run([SCANSTREAM, "--config", str(config_path), "query",
                            "SELECT verdict, count() FROM scan_events FINAL GROUP BY verdict ORDER BY verdict"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert query.returncode == 0, query.stderr
    rows = dict(re.findall(r"(?m)^(\w+)\s+(\d+)$", query.stdout))
    distinct = {}
    for i, (sid, verdict) in enumerate(zip(expected["scan_id"].tolist(), expected["verdict"].tolist())):
        distinct.setdefault(sid if not sid.startswith("raw:") else f"line-{i}", verdict)
    assert {k: int(v) for k, v in rows.items()} == dict(collections.Counter(distinct.values()))


@pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")
def test_registry_published_to_clickhouse_reads_back_the_same(world, tmp_path):
    """Workers with registry.source = "clickhouse" see what `scanstream registry publish` wrote."""
    base, lines = world
    chdb = tmp_path / "chdb"
    config_path = tmp_path / "c.toml"
    text = LOCAL_TOML.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^clickhouse = "chdb:[^"]*"', f"clickhouse = {json.dumps('chdb:' + str(chdb))}", text)
    config_path.write_text(text, encoding="utf-8")
    published = subprocess.run([SCANSTREAM, "--config", str(config_path), "registry", "publish", "--dir",
                                str(base / "registry")], capture_output=True, text=True, timeout=120)
    assert published.returncode == 0, published.stderr
    assert f"registry_shipments {len(SHIPMENTS)}" in published.stdout
    assert f"registry_activations {len(ACTIVATIONS)}" in published.stdout
    # chdb opens one data path per process: compare in a process of its own
    probe = f"""
import sys, numpy as np
from scanstream.engine.registry import Registry
from scanstream.sinks.clickhouse import ClickHouseSink, connect
from scanstream.sinks.registry_tables import read_registry, fingerprint
files = Registry.load({str(base / 'registry')!r})
sink = ClickHouseSink(connect({'chdb:' + str(chdb)!r}))
tables = read_registry(sink)
for name in ("key", "sku", "activated", "size"):
    assert getattr(files.batches, name).tolist() == getattr(tables.batches, name).tolist(), name
assert sorted(files.dealers.dealer_id.tolist()) == sorted(tables.dealers.dealer_id.tolist())
assert files.shipments.start.tolist() == tables.shipments.start.tolist()
assert sorted(files.stores.index) == sorted(tables.stores.index)
for name in ("group_key", "start", "end", "at_ms", "sku", "product"):
    assert getattr(files.activations, name).tolist() == getattr(tables.activations, name).tolist(), name
first = fingerprint(sink)
sink.client.command("INSERT INTO registry_stores VALUES ('S-NEW', 7, '', '440106', 'KA')")
assert fingerprint(sink) != first
print("same")
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]


def test_result_envelopes_stay_under_the_message_size_limit(world):
    base, lines = world
    config = local_config(base / "registry", partitions=1)
    many = lines * 4  # about 24 000 scans in one batch: several MB of outcomes
    handled = BatchHandler(config, build_pipeline(config, state=MemoryStateStore())).handle(records_of(many, 2000))
    results = [p for p in handled.messages if p.topic == config.kafka.results_topic]
    assert len(results) > 1 and all(len(p.value) <= envelope.MAX_ENVELOPE_BYTES for p in results)
    assert sum(len(envelope.decode(p.value, envelope.ENVELOPE)) for p in results) == len(many)


@pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")
def test_a_permanent_error_stops_the_worker_with_one_line_and_loses_nothing(world, broker, redis_url, redis_prefix,
                                                                              tmp_path):
    """Redis refuses the worker's scripts (NOPERM: a permission, not an outage) in the middle of a
    stream.  Retrying cannot cure that, so the worker stops at once with exit status 4 and one
    line naming the error, without committing the refused batch; once the permission is back, a
    new worker answers every scan exactly once."""
    import redis

    base, lines = world
    admin = redis.Redis.from_url(redis_url)
    user, password = f"scanstream-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    # keys and channels under the prefix: the worker PUBLISHes a notice per reply batch on
    # {prefix}replied, and Redis 7 grants new users no channel unless told
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=[f"{redis_prefix}*"],
                      channels=[f"{redis_prefix}*"], commands=["+@all"])
    host = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    names = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in ("scans", "results", "awards", "alerts", "dlq", "group")}
    config_path = worker_config(tmp_path / "worker.toml", base / "registry", tmp_path / "chdb", broker.bootstrap,
                                names, redis_prefix, "redis", redis_url=f"redis://{user}:{password}@{host}/0",
                                partitions=1, take=4)
    from kafka import KafkaProducer
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")

    def publish(part: list[bytes]) -> None:
        for start in range(0, len(part), 200):
            producer.send(names["scans"], envelope.encode(part[start:start + 200]), partition=0,
                          headers=[(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())])
        producer.flush()

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            return subprocess.Popen([SCANSTREAM, "--config", str(config_path), "worker", "--loglevel", "info"],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path), log_path

    first_half, second_half = lines[:2000], lines[2000:]
    worker, log_path = start("first")
    try:
        publish(first_half)
        assert len(consume(broker.bootstrap, names["results"], len(first_half), timeout_s=120)) == len(first_half)
        admin.execute_command("ACL", "SETUSER", user, "-@scripting")  # the operator's mistake: scripts forbidden
        publish(second_half)
        status = worker.wait(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    text = log_path.read_text(errors="replace")
    stopped = [ln for ln in text.splitlines() if ln.startswith("scanstream worker: stopped:")]
    assert status == 4, text[-3000:]  # permanent: a supervisor must not restart it unchanged
    assert len(stopped) == 1 and "no permissions" in stopped[0], text[-3000:]
    assert "retrying in" not in text  # a permission is not an outage: no retry loop
    assert "Traceback" not in text, text[-3000:]
    committed = committed_offset(broker.bootstrap, names["group"], names["scans"], 0, 10, 10)
    assert committed is not None and committed <= 10  # 10 envelopes of the first half; none of the second
    # the operator fixes the permission; a new worker takes the refused batches again
    admin.execute_command("ACL", "SETUSER", user, "+@all")
    worker, log_path = start("second")
    try:
        results = consume(broker.bootstrap, names["results"], len(lines), timeout_s=120)
    finally:
        stop(worker)
        admin.acl_deluser(user)
        producer.close()
    assert len(results) == len(lines)
    expected = build_pipeline(local_config(base / "registry"), state=MemoryStateStore()).process(lines).scans
    got = collections.Counter(sid for sid in (orjson.loads(r)["scan_id"] for r in results) if not sid.startswith("pos:"))
    want = collections.Counter(sid for sid in expected["scan_id"].tolist() if not sid.startswith("raw:"))
    assert got == want  # every scan answered once: nothing of the refused batch lost or doubled


def test_the_worker_asks_the_broker_to_hold_a_fetch_at_most_fetch_wait_ms(world):
    """Faust fixes aiokafka's fetch wait at 1 500 ms; a broker that holds every fetch for the whole
    wait (Tansu) then adds it to every scan's answer.  The worker's consumer takes [kafka]
    fetch_wait_ms instead (no broker is contacted: the consumer is made, not started)."""
    import asyncio

    from scanstream.streams.app import build_app
    from scanstream.streams.worker import BatchHandler

    base, _ = world
    config = local_config(base / "registry")
    config = replace(config, kafka=replace(config.kafka, bootstrap="127.0.0.1:1", fetch_wait_ms=37))
    app, _ = build_app(config, BatchHandler(config, build_pipeline(config, state=MemoryStateStore()), None, None))

    async def fetch_wait() -> int:
        noop = lambda *a: None  # noqa: E731
        consumer = app.transport.create_consumer(callback=noop, on_partitions_revoked=noop,
                                                 on_partitions_assigned=noop)
        aio = consumer._new_consumer_thread()._create_worker_consumer(app.transport)
        try:
            return aio._fetch_max_wait_ms
        finally:
            await aio.stop()

    assert asyncio.run(fetch_wait()) == 37
    assert load(LOCAL_TOML).kafka.fetch_wait_ms == KafkaSettings().fetch_wait_ms == 500  # Apache Kafka's own
