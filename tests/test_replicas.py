"""A failover to a replica must not pay a code twice: ``[redis] wait_replicas``.

Redis replicates asynchronously: a primary acknowledges a claim before its replica has it.  The
attack, on real processes: a primary and its replica on loopback, the replica cut off (stalled
with SIGSTOP and its link closed, as a partition does); a code's first scan is claimed on the
primary; the primary dies and the replica is promoted.  Without waiting, the first scan's ``ok`` was told before the
promoted replica held its claim, and a second scan of the code is ``ok`` again: two first scans,
two prizes.  With ``wait_replicas = 1`` the first outcome is never told (the store raises
``StateUnavailable``, a transient error: the worker holds the batch and takes it again), so the
code is ``ok`` once.  On the Redis Cluster the store waits on every primary.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from redis_cluster import _free_ports
from scanstream.engine.config import ConfigError, load
from scanstream.engine.state import StateUnavailable
from scanstream.engine.state.redis import RedisStateStore
from scanstream.engine.verdicts import Verdict
from scanstream.streams.synthetic import build_world, generate_scans
from scanstream.wiring import build_pipeline
from test_state_stores import CODE, claim
from test_worker import LOCAL_TOML, local_config

START_TIMEOUT_S = 30.0
WAIT_TIMEOUT_MS = 2000  # a loaded machine's replica acknowledges within it; a cut-off one never


class Replicated:
    """A ``redis-server`` primary and one replica of it on free loopback ports, nothing on disk."""

    def __init__(self):
        self.primary_port, self.replica_port = _free_ports(2)
        self.procs: dict[int, subprocess.Popen] = {}
        self.dir = Path(tempfile.mkdtemp(prefix="scanstream-replicas-"))

    def _start(self, port: int, *extra: str) -> None:
        # the primary's full sync to its replica writes a snapshot: into a folder of our own
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--dbfilename", f"{port}.rdb", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def __enter__(self) -> Replicated:
        self._start(self.primary_port)
        self._start(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        primary = redis.Redis(port=self.primary_port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if primary.info("replication").get("connected_slaves") == 1:
                    slave = primary.info("replication").get("slave0", {})
                    if slave.get("state") == "online":
                        break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not come online")
            time.sleep(0.1)
        primary.close()
        return self

    def cut_off_replica(self) -> None:
        """A partition: the replica stalled (it cannot reconnect) and its link closed by the
        primary, so no later write reaches it, not even into its socket's buffer."""
        self.procs[self.replica_port].send_signal(signal.SIGSTOP)
        primary = redis.Redis(port=self.primary_port)
        primary.client_kill_filter(_type="replica")
        primary.close()

    def fail_over(self) -> str:
        """Kill the primary, wake the replica and promote it; the URL of the new primary."""
        self.procs.pop(self.primary_port).kill()
        self.procs[self.replica_port].send_signal(signal.SIGCONT)
        promoted = redis.Redis(port=self.replica_port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                promoted.replicaof("NO", "ONE")
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        promoted.close()
        return self.url(self.replica_port)

    def __exit__(self, *exc) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_a_failover_to_a_stale_replica_pays_a_code_twice_unless_the_store_waits_for_it(wait_replicas):
    told = []  # the outcomes a worker would have answered: those whose writes durable() vouched for
    with Replicated() as pair:
        prefix = f"scanstream-test:{uuid.uuid4().hex[:12]}:"
        store = RedisStateStore.from_url(pair.url(pair.primary_port), prefix=prefix, wait_replicas=wait_replicas,
                                         wait_timeout_ms=WAIT_TIMEOUT_MS)
        assert claim(store, [("before", CODE, 1, Verdict.OK)]) == [(Verdict.OK, False)]
        # the replica is up: wait until it holds the claim, whatever the store's own setting
        assert store.client.execute_command("WAIT", 1, 10_000) == 1
        pair.cut_off_replica()
        first = claim(store, [("first-scan", CODE, 5, Verdict.OK)])
        try:
            store.durable()
            told += first
        except StateUnavailable as exc:
            assert "0 of 1 replicas" in str(exc) and "wait_replicas" in str(exc)
        store.close()
        # the primary dies; its stalled replica is promoted without the first scan's claim
        promoted = RedisStateStore.from_url(pair.fail_over(), prefix=prefix)
        assert claim(promoted, [("before", CODE, 1, Verdict.OK)]) == [(Verdict.OK, True)]  # what it did get
        told += claim(promoted, [("second-scan", CODE, 5, Verdict.OK)])
        promoted.close()
    firsts = [v for v, _ in told if v == Verdict.OK]
    if wait_replicas:
        assert told == [(Verdict.OK, False)]  # one first scan of the code, told once
    else:
        assert len(firsts) == 2  # the hole this setting closes: the code was a first scan twice


def test_the_pipeline_tells_no_outcome_of_a_batch_its_replicas_do_not_hold(tmp_path):
    config = load(LOCAL_TOML)
    world = build_world(7, config.keys.get(7, 1), 1)
    world.write_registry(tmp_path / "registry")
    lines = generate_scans(world, 200, seed=3)
    with Replicated() as pair:
        store = RedisStateStore.from_url(pair.url(pair.primary_port), prefix=f"scanstream-test:{uuid.uuid4().hex[:12]}:",
                                         wait_replicas=1, wait_timeout_ms=WAIT_TIMEOUT_MS)
        pipeline = build_pipeline(local_config(tmp_path / "registry"), state=store)
        assert len(pipeline.process(lines[:100]).scans["verdict"]) == 100
        pair.cut_off_replica()
        with pytest.raises(StateUnavailable, match="0 of 1 replicas"):
            pipeline.process(lines[100:])
        store.close()


def test_on_a_redis_cluster_the_store_waits_on_every_primary(redis_cluster_url):
    # the test cluster has no replicas: asked for one, every batch is held, naming the primary
    store = RedisStateStore.from_url(redis_cluster_url, prefix=f"scanstream-test:{uuid.uuid4().hex[:12]}:",
                                     cluster=True, wait_replicas=1, wait_timeout_ms=50)
    try:
        primaries = store._primaries()
        assert len({name for name, _, _ in primaries}) == 3
        assert all(store.client.get_node_from_key(key).name == name for name, _, key in primaries)
        claim(store, [("c-1", CODE, 1, Verdict.OK)])
        with pytest.raises(StateUnavailable, match="0 of 1 replicas of primary 127.0.0.1:"):
            store.durable()
        RedisStateStore(store.client, prefix=store.prefix).durable()  # the default waits for none
    finally:
        store.close()


def test_after_a_failover_the_store_answers_without_the_lost_primary():
    """The killed primary never comes back (a lost machine): its replica serves its slots, and the
    store must follow it.  The per-primary pipelines and ``durable`` talk to nodes directly, which
    the cluster client's own refresh never sees, so a refused connection must refresh the slot
    map: before that fix the store retried the dead node until it returned, for ever if it did not."""
    from redis_cluster import RedisCluster

    with RedisCluster(replicas=1) as cluster:
        store = RedisStateStore.from_url(cluster.url, prefix=f"scanstream-test:{uuid.uuid4().hex[:12]}:",
                                         cluster=True, wait_replicas=1, wait_timeout_ms=WAIT_TIMEOUT_MS)
        try:
            rows = [(f"f-{i}", CODE, 100 + i, Verdict.OK) for i in range(64)]  # every shard, every primary
            assert [v for v, _ in claim(store, rows)] == [Verdict.OK] * 64
            store.durable()  # each primary's replica holds the claims
            victim = next(p for p in cluster.primaries() if p != cluster.ports[0])
            cluster.kill_node(victim)
            promoted = cluster.wait_failover(victim)
            errors, answer = [], None
            deadline = time.monotonic() + 30
            while answer is None and time.monotonic() < deadline:
                try:  # the worker's retry loop: a transient error, then the same call again
                    answer = claim(store, rows + [(f"g-{i}", CODE, 300 + i, Verdict.OK) for i in range(64)])
                except StateUnavailable as exc:
                    errors.append(str(exc))
                    time.sleep(0.2)
            assert answer is not None, f"the store never answered after {victim} failed over to {promoted}: {errors[-3:]}"
            # the claims the replica held are replays, the new scans are first scans, nothing paid twice
            assert [v for v, _ in answer] == [Verdict.OK] * 128 and [r for _, r in answer[:64]] == [True] * 64
            # the promoted primary has no replica: no batch is durable, and the error names it
            with pytest.raises(StateUnavailable, match=f"0 of 1 replicas of primary 127.0.0.1:{promoted}"):
                for _ in range(20):
                    store.durable()
                    time.sleep(0.1)
        finally:
            store.close()


@pytest.mark.parametrize("line, message", [
    ("wait_replicas = -1", "wait_replicas"),
    ("wait_replicas = nan", "wait_replicas"),
    ("wait_replicas = 1.5", "wait_replicas"),
    ("wait_replicas = 99", "wait_replicas"),
    ("wait_timeout_ms = 0", "wait_timeout_ms"),
])
def test_hostile_wait_settings_are_refused_naming_the_key(tmp_path, line, message):
    path = tmp_path / "c.toml"
    base = LOCAL_TOML.read_text(encoding="utf-8")
    path.write_text(base.replace("[redis]", f"[redis]\n{line}", 1) if "[redis]" in base else f"{base}\n[redis]\n{line}\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_the_wait_settings_reach_the_store(tmp_path, redis_url):
    from scanstream.wiring import build_state
    config = load(LOCAL_TOML)
    config = replace(config, state_backend="redis",
                     redis=replace(config.redis, url=redis_url, wait_replicas=2, wait_timeout_ms=70))
    store = build_state(config)
    try:
        assert (store.wait_replicas, store.wait_timeout_ms) == (2, 70)
    finally:
        store.close()
