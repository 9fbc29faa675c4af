"""End to end on real services: 100 000 scans through the scan API's publisher, a worker, Redis and chdb.

The scan API publishes with ``ScanPublisher``; one ``scanstream worker`` (Redis state store on a
single server, then on a Redis Cluster; embedded ClickHouse) consumes them from a Tansu broker.  Checked afterwards: every scan_id is
in ``scan_events`` exactly once with the verdict the local driver gives the same stream,
prizes stay within budget, stock and daily caps, and ``await_result`` returned the right
outcome for a sample of scans while the worker ran.
"""
from __future__ import annotations

import collections
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from scanstream.engine.config import load
from config_writer import worker_toml
from scanstream.engine.lottery import draw_numbers, draw_tiers
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.wiring import build_pipeline
from scanstream.streams.publisher import InvalidEvent, ScanPublisher, encode_event
from scanstream.streams.synthetic import build_world, generate_scans
from scanstream.engine.config import EngineSettings
from scanstream.streams.replies import read_replies, reply_epochs

REPO = Path(__file__).resolve().parents[1]
LOCAL_TOML = REPO / "config" / "local.toml"
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
SCANS = 100_000
SAMPLE = 200
WAIT_S = 300

pytestmark = pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")


def query(config: Path, sql: str, cwd: Path) -> list[list[str]]:
    out = subprocess.run([SCANSTREAM, "--config", str(config), "query", sql], capture_output=True, text=True,
                         cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.rstrip("\n").splitlines()[2:-1]
    return [line.split() for line in lines]


@pytest.mark.timeout(600)
def test_publisher_worker_redis_clickhouse(broker, redis_deployment, redis_prefix, tmp_path):
    import redis

    redis_url, cluster = redis_deployment.url, redis_deployment.cluster

    config = load(LOCAL_TOML)
    world = build_world(7, config.keys.get(7, 1), 1)
    world.write_registry(tmp_path / "registry")
    lines = generate_scans(world, SCANS, seed=3)
    events = []
    for line in lines:  # the scan API sends events; what it cannot even validate never leaves it
        try:
            event = orjson.loads(line)
            encode_event(event)
        except (orjson.JSONDecodeError, InvalidEvent):
            continue
        events.append(event)
    assert len(events) > SCANS * 0.99
    local = replace(config, registry_dir=tmp_path / "registry", clickhouse="")
    expected = build_pipeline(local, state=MemoryStateStore()).process([orjson.dumps(e) for e in events]).scans
    first = {}
    for i, sid in enumerate(expected["scan_id"].tolist()):
        first.setdefault(sid, i)

    names = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in ("scans", "results", "awards", "alerts", "dlq", "group")}
    broker.create_topics({names["scans"]: 4, names["results"]: 4, names["awards"]: 4, names["alerts"]: 4,
                          names["dlq"]: 4})
    kafka = {"bootstrap": broker.bootstrap, "group": names["group"], "partitions": 4, "take": 32,
             "session_timeout_s": 4, **{f"{k}_topic": names[k] for k in ("scans", "results", "awards", "alerts", "dlq")}}
    text = worker_toml(LOCAL_TOML.read_text(encoding="utf-8"), registry=tmp_path / "registry", chdb=tmp_path / "chdb",
                       state="redis", redis={"url": redis_url, "prefix": redis_prefix, "cluster": cluster}, kafka=kafka)
    config_path = tmp_path / "worker.toml"
    config_path.write_text(text, encoding="utf-8")

    log = (tmp_path / "worker.log").open("wb")
    started = time.time()  # no reply of this run is older
    worker = subprocess.Popen([SCANSTREAM, "--config", str(config_path), "worker"], stdout=log,
                              stderr=subprocess.STDOUT, cwd=tmp_path)
    sample = random.Random(5).sample(range(len(events)), SAMPLE)
    answers: dict[int, dict | None] = {}
    try:
        with ScanPublisher(broker.bootstrap, topic=names["scans"], linger_ms=5, redis_url=redis_url,
                           prefix=redis_prefix, redis_cluster=cluster) as publisher:
            # one deadline for all the waiting, and none once the worker has stopped: a worker
            # that died fails the test with its log, well before the test's own timeout
            deadline = time.monotonic() + WAIT_S

            def wait_for_sample() -> None:
                for i in sample:
                    answer = None
                    while answer is None and worker.poll() is None and time.monotonic() < deadline:
                        answer = publisher.await_result(events[i]["scan_id"], timeout=1, event=events[i])
                    answers[i] = answer

            waiter = threading.Thread(target=wait_for_sample)
            waiter.start()
            for start in range(0, len(events), 5000):
                publisher.publish_many(events[start:start + 5000])
            publisher.flush(60)
            waiter.join(max(0.0, deadline - time.monotonic()) + 2)
        # all outcomes are out once the last scan's reply is in Redis (one partition per code,
        # so wait for the last scan of every partition: simply every scan_id's reply)
        client = redis.RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
        missing = list(first)
        while missing and worker.poll() is None and time.monotonic() < deadline:
            got = read_replies(client, redis_prefix, EngineSettings.replay_ttl_hours * 3600, missing, reply_epochs(started, time.time()))
            missing = [sid for sid, held in zip(missing, got) if not held]
            if missing:
                time.sleep(1)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        assert not missing, f"{len(missing)} scans got no outcome, e.g. {missing[:3]}"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()

    # await_result gave each sampled scan its outcome: the verdict and diversion the local
    # driver gives it (they follow from the code's own scans, which stay in order on one
    # partition), the prize the worker stored, and a prize only of the tier the code draws.
    # Who gets the last prizes of a tier depends on how partitions interleave, so paid or not
    # is compared with the worker's own record, not with the local run.
    campaigns = {c.id: c for c in config.campaigns}
    ids = ",".join(f"'{events[i]['scan_id']}'" for i in sample)
    stored = {sid: (tier if tier != "-" else "", int(cents), draw) for sid, tier, cents, draw in query(
        config_path, f"SELECT scan_id, if(prize_tier = '', '-', prize_tier), prize_cents, draw "
                     f"FROM scan_events FINAL WHERE scan_id IN ({ids})", tmp_path)}
    for i in sample:
        want = first[events[i]["scan_id"]]
        answer = answers.get(i)
        assert answer is not None, f"scan {events[i]['scan_id']} got no answer within {WAIT_S} s"
        assert (answer["verdict"], answer["diversion"]) == (expected["verdict"][want], expected["diversion"][want])
        assert (answer["prize_tier"], answer["prize_cents"], answer["draw"]) == stored[answer["scan_id"]]
        if answer["draw"] == "won":
            campaign = campaigns[answer["campaign"]]
            drawn = draw_tiers(campaign, draw_numbers(campaign, *(np.array([answer[f]]) for f in
                                                                  ("tenant", "kind", "batch", "serial"))))
            assert campaign.tiers[int(drawn[0])].name == answer["prize_tier"]

    # every scan_id once in scan_events, with the local driver's verdicts
    (total, unique), = query(config_path, "SELECT count(), uniqExact(scan_id) FROM scan_events FINAL", tmp_path)
    assert int(total) == int(unique) == len(first)
    got = {v: int(c) for v, c in query(config_path, "SELECT verdict, count() FROM scan_events FINAL GROUP BY verdict",
                                         tmp_path)}
    want = collections.Counter(expected["verdict"][i] for i in first.values())
    assert got == dict(want)

    # prizes within budget, stock and daily caps, campaign by campaign (the consumers' and 开箱有礼)
    for campaign in config.campaigns:
        only = f"campaign = '{campaign.id}'"
        (paid, prizes), = query(config_path, f"SELECT sum(prize_cents), count() FROM awards FINAL WHERE {only}",
                                tmp_path)
        assert int(prizes) > 0 and int(paid) <= campaign.budget_cents
        for tier, n in query(config_path, f"SELECT prize_tier, count() FROM awards FINAL WHERE {only} "
                                          f"GROUP BY prize_tier", tmp_path):
            assert int(n) <= next(t.stock for t in campaign.tiers if t.name == tier)
        (most,), = query(config_path, f"SELECT max(c) FROM (SELECT user_id, toDate(ts, 'Asia/Shanghai') AS d, "
                                      f"count() AS c FROM awards FINAL WHERE {only} GROUP BY user_id, d)", tmp_path)
        assert int(most) <= campaign.daily_cap
