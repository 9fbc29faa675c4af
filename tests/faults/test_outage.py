"""Fault test 3, outage: Redis, then ClickHouse, unavailable for a while mid-stream.

Real processes: the worker's Redis is a private ``redis-server`` of the harness, stopped and
started again (the shared Redis is never touched), or a private Redis Cluster one of whose
primaries is killed and restarted, or one with replicas whose primary fails over to its replica;
its ClickHouse is the embedded chdb, which
cannot be stopped like a server, so its storage is made immutable (``chattr -R +i``) for the
same while: every insert then fails inside the engine, at the new part's directory, as on a
disk gone read-only.  The worker must keep running, log ``retrying`` with the error and its
state, hold the batch (backpressure), lose and double nothing, and catch up afterwards.

In process: a ``BatchHandler`` whose ClickHouse client is a real chdb client wrapped to fail
chosen inserts (also between the ``scan_events`` and the ``awards`` insert of one batch), driven
with the agent's retry loop; and the reproducer of the alerts a retried batch loses.
"""
from __future__ import annotations

import collections
import os
import random

import pytest

from scanstream.sinks.exceptions import SinkError

from . import checks, inputs, processes
from . import harness as h

SCALE = h.scale()
skip_no_cli = pytest.mark.skipif(processes.SCANSTREAM is None, reason="the scanstream console script is not installed")


@skip_no_cli
@pytest.mark.timeout(300 if SCALE.name == "short" else 3600)
def test_redis_then_clickhouse_outage_mid_stream(broker, redis_url, tmp_path):
    if not processes.FrozenStorage.available(tmp_path):
        pytest.skip("chattr +i is not available here: no real ClickHouse outage can be produced "
                    "(the in-process sink-failure test below still runs)")
    rep = h.outage_scenario(tmp_path, broker.bootstrap, redis_url, SCALE)
    checks.assert_report(rep)
    assert rep.lost == 0 and rep.doubled == 0
    assert rep.extra["clickhouse outage made by"].startswith("chattr")


@skip_no_cli
@pytest.mark.timeout(300 if SCALE.name == "short" else 3600)
def test_a_redis_cluster_primary_killed_then_restarted_mid_stream(broker, redis_url, tmp_path):
    """The same outage on a Redis Cluster: the primary that serves the most state shards is killed
    (kill -9) and started again from its append-only file.  Meanwhile a batch whose rows touch its
    shards cannot finish (CLUSTERDOWN, refused connections): the worker holds it and retries."""
    # ClickHouse's outage is the same whatever Redis runs as: the test above makes it
    rep = h.outage_scenario(tmp_path, broker.bootstrap, redis_url, SCALE, cluster=True, clickhouse=False)
    checks.assert_report(rep)
    assert rep.lost == 0 and rep.doubled == 0


@skip_no_cli
@pytest.mark.timeout(300 if SCALE.name == "short" else 3600)
def test_a_failover_to_a_replica_mid_stream_loses_and_doubles_nothing(broker, tmp_path):
    """A Cluster with a replica per primary and ``wait_replicas = 1``: a primary killed, its replica
    promoted, the worker holding its batches while the promoted primary has no replica, then the
    killed node back as its replica and the worker caught up."""
    rep = h.failover_scenario(tmp_path, broker.bootstrap, SCALE)
    checks.assert_report(rep)
    assert rep.lost == 0 and rep.doubled == 0
    assert rep.extra["failover retry example"]


# --------------------------------------------------------------------------- in process


class FlakyClient:
    """A real clickhouse-connect client whose inserts fail on the calls numbered in ``fail``."""

    def __init__(self, client, fail: set[int]):
        self._client = client
        self.fail = fail
        self.calls = 0
        self.failed: list[tuple[int, str]] = []

    def insert(self, table, *args, **kwargs):
        self.calls += 1
        if self.calls in self.fail:
            from clickhouse_connect.driver.exceptions import OperationalError
            self.failed.append((self.calls, table))
            raise OperationalError(f"injected failure of insert #{self.calls} into {table}")
        return self._client.insert(table, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def _records(lines: list[bytes], per_message: int, partitions: int = 4):
    from scanstream.streams import envelope
    from scanstream.streams.worker import Record

    by_partition = collections.defaultdict(list)
    for line in lines:
        by_partition[hash(line) % partitions].append(line)
    out, offsets = [], collections.Counter()
    for p, part in sorted(by_partition.items()):
        for start in range(0, len(part), per_message):
            out.append(Record("scans", p, offsets[p], envelope.encode(part[start:start + per_message]),
                              [(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())]))
            offsets[p] += 1
    return out


@pytest.mark.timeout(300)
def test_sink_failures_in_process_are_retried_without_loss_or_doubles(tmp_path, redis_url, redis_prefix):
    from scanstream.engine.state.redis import RedisStateStore
    from scanstream.wiring import build_pipeline
    from scanstream.sinks.clickhouse import ClickHouseSink, connect
    from scanstream.streams.synthetic import build_world
    from scanstream.streams.worker import BatchHandler

    tenant = inputs.TenantSpec(7, os.urandom(16), key_id=1)
    campaign = inputs.stocked_campaign("sink-faults", 7, 6000)
    world = build_world(7, tenant.key, 1)
    inputs.write_registry(tmp_path / "registry", [world])
    config = inputs.inprocess_config(tmp_path / "registry", [tenant], [campaign], redis_url=redis_url,
                                     prefix=redis_prefix)
    lines = inputs.make_stream(world, 6000, seed=21)
    records = _records(lines, 50)
    batches = [records[i:i + 4] for i in range(0, len(records), 4)]
    rng = random.Random(4)
    # about one insert in six fails, sometimes several in a row (an outage of N calls), so that
    # failures fall on scan_events, alerts and awards, also after another insert of the batch went in
    fail = set()
    call = 1
    while call < len(batches) * 3:
        call += rng.randint(1, 10)
        fail.update(range(call, call + rng.choice([1, 1, 2, 4])))
    real = connect("chdb:" + str(tmp_path / "chdb"))
    flaky = FlakyClient(real, fail)
    sink = ClickHouseSink(flaky)
    sink.ensure_schema()
    state = RedisStateStore.from_url(redis_url, prefix=redis_prefix)
    handler = BatchHandler(config, build_pipeline(config, state=state), sink, None)
    retries = partial = 0
    try:
        for batch in batches:
            for attempt in range(50):  # the agent's loop (streams/app.py run_batch), without the sleeps
                before = flaky.calls
                try:
                    handler.handle(batch)
                    break
                except Exception as exc:
                    assert "injected failure" in str(exc), exc
                    retries += 1
                    partial += flaky.calls - before > 1  # an earlier insert of this attempt went in
            else:
                pytest.fail("a batch never went through")
        names = {n for n in _names(records)}
        _, ((count, distinct, raw),) = sink.query(
            "SELECT (SELECT count() FROM scan_events FINAL), (SELECT uniqExact(scan_id) FROM scan_events FINAL), "
            "(SELECT count() FROM scan_events)")
        _, ids = sink.query("SELECT scan_id FROM scan_events FINAL")
        _, awards = sink.query("SELECT tenant, kind, batch, serial, prize_tier, prize_cents, beneficiary "
                               "FROM awards FINAL")
        _, (award_raw,) = sink.query("SELECT count() FROM awards")
    finally:
        sink.close()
    granted = state.client.hgetall(f"{redis_prefix}cp:{{{campaign.id}}}:aw")
    state.close()
    assert retries >= 10 and partial >= 3, (retries, partial, flaky.failed)
    assert {i for (i,) in ids} == names
    assert count == distinct == len(names)
    assert raw == count, "the deduplication token must drop a re-sent scan_events insert"
    # a prize given back to a redelivered scan in a later batch is written again under another
    # token; the table keeps one row per code (FINAL), which is the promise
    # a code that won keeps "tier:cents:commission" in Redis: one prize row each, and a guide's
    # commission row for each prize paid with one
    prizes = [a for a in awards if a[6] != "guide"]
    commissions = [a for a in awards if a[6] == "guide"]
    assert len(prizes) == len(granted) > 0 and award_raw[0] >= len(awards)
    assert len(commissions) == sum(int(v.split(b":")[2]) > 0 for v in granted.values()) > 0
    assert {a[5] for a in commissions} == {campaign.guide_cents}
    tiers = collections.Counter(a[4] for a in prizes)
    assert all(tiers[n] <= s for n, _, _, s in campaign.tiers)
    assert sum(a[5] for a in awards) <= campaign.budget_cents


def _names(records):
    from scanstream.ext.scanparse import parse_events

    from scanstream.streams import envelope

    for r in records:
        lines = envelope.decode(r.value, envelope.header(r.headers))
        for i, sid in enumerate(parse_events(lines)["scan_id"].tolist()):
            yield sid or f"pos:{r.topic}/{r.partition}@{r.offset}:{i}"


class FailsOnScans(FlakyClient):
    """A real client whose first insert into ``scan_events`` fails, after the batch's alerts went in."""

    def __init__(self, client):
        super().__init__(client, set())

    def insert(self, table, *args, **kwargs):
        if table == "scan_events" and not self.failed:
            from clickhouse_connect.driver.exceptions import OperationalError
            self.failed.append((self.calls + 1, table))
            raise OperationalError("injected failure: ClickHouse is down")
        return super().insert(table, *args, **kwargs)


@pytest.mark.timeout(120)
def test_a_retried_batch_keeps_its_alerts(tmp_path, redis_url, redis_prefix):
    """One failed scan_events insert past the claim step, the agent retries the batch: every alert
    of the batch is stored once and handed to delivery once (the retry re-uses the batch's
    outcomes instead of running the pipeline again, which would answer replays and fire none)."""
    from scanstream.engine.state.memory import MemoryStateStore
    from scanstream.engine.state.redis import RedisStateStore
    from scanstream.sinks.clickhouse import ClickHouseSink, connect
    from scanstream.streams.synthetic import build_world
    from scanstream.streams.worker import BatchHandler
    from scanstream.wiring import build_pipeline

    tenant = inputs.TenantSpec(7, os.urandom(16), key_id=1)
    world = build_world(7, tenant.key, 1)
    inputs.write_registry(tmp_path / "registry", [world])
    lines = inputs.make_stream(world, 3000, seed=3)
    config = inputs.inprocess_config(tmp_path / "registry", [tenant], [], redis_url=redis_url, prefix=redis_prefix)
    expected = build_pipeline(config, state=MemoryStateStore()).process(lines)
    reference = expected.alerts["alert_id"].tolist()
    assert reference, "the stream must fire alerts"

    class Outbox:
        def __init__(self):
            self.alerts = []

        def add(self, alerts, watermark_ms):
            self.alerts += alerts["alert_id"].tolist()

    client = FailsOnScans(connect("chdb:" + str(tmp_path / "chdb")))
    sink = ClickHouseSink(client)
    sink.ensure_schema()
    outbox = Outbox()
    state = RedisStateStore.from_url(redis_url, prefix=redis_prefix)
    handler = BatchHandler(config, build_pipeline(config, state=state), sink, alerting=outbox)
    records = _records(lines, 100, partitions=1)
    try:
        with pytest.raises(SinkError) as failed:
            handler.handle(records)
        assert failed.value.transient, "a server that is down is a transient failure: the agent retries"
        batch = handler.handle(records)  # the agent's retry of the same batch
        _, stored = sink.query("SELECT alert_id FROM alerts FINAL")
        _, (scans,) = sink.query("SELECT count() FROM scan_events FINAL")
    finally:
        sink.close()
        state.close()
    assert client.failed, "the injected failure must have happened"
    assert sorted(a for (a,) in stored) == sorted(reference)
    assert sorted(outbox.alerts) == sorted(reference), "each alert handed to delivery exactly once"
    assert scans[0] == len(set(batch.result.scans["scan_id"].tolist()))  # every scan stored, once per scan_id
