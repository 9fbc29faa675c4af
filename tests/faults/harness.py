"""Fault scenarios: real ``scanstream worker`` processes on a real broker, Redis and chdb, broken on purpose.

This module holds the scenarios each fault test runs (crash, race, workers, outage, tenants, fuzz), their
``Scale`` and the command line (``python -m tests.faults.harness``, which runs them all and then
the secrets search).  The parts they are made of are modules of their own:

- ``inputs``: tenants, campaigns and their secrets, the registry, synthetic scan streams;
- ``processes``: the ``scanstream worker`` processes, a private Redis, frozen chdb storage;
- ``topics``: publishing scans as the scan API does, and watching the output topics;
- ``scenario``: ``Scenario``, one isolated deployment on the shared broker and Redis;
- ``stores``: SQL on the workers' chdb folders (one process per folder);
- ``checks``: the promises checked afterwards, and the ``Report`` of the broken ones.

Separate from those because a scenario is a story (publish, kill, stop, restart, check) told
with them; a test reads as one call of a scenario and one ``checks.assert_report``.

Scale: ``SCANSTREAM_FAULTS=long`` (or ``--long``) selects the long form; the default is the short
form that CI runs.
"""
from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .checks import Report, check_promises, grep_secrets, local_reference
from .inputs import DEMO_DAY_START_MS, TenantSpec, make_stream, stocked_campaign
from .processes import FrozenStorage, PrivateRedis, Worker
from .scenario import ARTIFACTS, Scenario
from .stores import probe

MODE_ENV = "SCANSTREAM_FAULTS"
REDIS_URL_ENV = "SCANSTREAM_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


# --------------------------------------------------------------------------- scale


@dataclass(frozen=True)
class Scale:
    name: str
    crash_scans: int
    crash_kills: int
    race_scans: int
    workers_scans: int  # the stream of the several-workers scenario, published at once
    outage_scans: int
    redis_outage_s: float
    clickhouse_outage_s: float
    fuzz_batches: int  # hypothesis examples of the in-process fuzz (about 60 events each)
    fuzz_worker_events: int
    tenant_scans: int  # per tenant
    wait_s: float  # upper bound of any wait for a stream to be processed


SHORT = Scale("short", crash_scans=30_000, crash_kills=5, race_scans=12_000, workers_scans=20_000,
              outage_scans=10_000, redis_outage_s=8, clickhouse_outage_s=8, fuzz_batches=130,
              fuzz_worker_events=1_500, tenant_scans=2_000, wait_s=240)
LONG = Scale("long", crash_scans=200_000, crash_kills=20, race_scans=100_000, workers_scans=150_000,
             outage_scans=60_000, redis_outage_s=30, clickhouse_outage_s=30, fuzz_batches=1_000,
             fuzz_worker_events=6_000, tenant_scans=20_000, wait_s=1_800)


def scale(name: str | None = None) -> Scale:
    name = name or os.environ.get(MODE_ENV, "short")
    if name not in ("short", "long"):
        raise ValueError(f"{MODE_ENV}={name!r}: expected 'short' or 'long'")
    return LONG if name == "long" else SHORT


def log(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- scenarios


def new_key() -> bytes:
    return os.urandom(16)


def crash_scenario(root: Path, bootstrap: str, redis_url: str, sc_: Scale, *, seed: int = 1,
                   kill_seed: int | None = None, cluster: bool = False) -> Report:
    """Test 1: ``kills`` kill -9 of the worker at random moments while it works; restart each time.

    The kill moments are random (``kill_seed``, logged, makes a run's moments repeatable).
    ``cluster``: ``redis_url`` is a node of a Redis Cluster."""
    kill_seed = kill_seed if kill_seed is not None else int.from_bytes(os.urandom(4), "big")
    log(f"crash: kill moments from kill_seed={kill_seed}")
    rng = random.Random(kill_seed)
    tenants = [TenantSpec(7, new_key(), key_id=1, via="env", name="Crash Brewery")]
    campaigns = [stocked_campaign("crash-campaign", 7, sc_.crash_scans)]
    sc = Scenario(root, bootstrap, redis_url, label="crash", tenants=tenants, campaigns=campaigns, take=4,
                  per_envelope=40, cluster=cluster)
    try:
        lines = make_stream(sc.worlds[0], sc_.crash_scans, seed=seed)
        # the stream arrives in parts, one while the worker is down after each kill, so the
        # restarted worker always has a backlog and new scans to work on when it is killed again
        parts = sc_.crash_kills + 1
        chunks = [lines[i * len(lines) // parts:(i + 1) * len(lines) // parts] for i in range(parts)]
        sc.watch()
        sc.producer.send_lines(chunks[0])
        worker = sc.worker("w1").start()
        t0 = time.monotonic()
        for k in range(sc_.crash_kills):
            before = sc.answered()
            deadline = time.monotonic() + sc_.wait_s
            while sc.answered() <= before:  # the worker is at work again
                if not worker.alive():
                    raise RuntimeError(f"worker died by itself:\n{worker.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the worker made no progress after restart {k}:\n{worker.log_tail()}")
                time.sleep(0.05)
            time.sleep(rng.uniform(0.05, 2.5))
            worker.kill9()
            log(f"crash: kill -9 #{k + 1} after {time.monotonic() - t0:.0f} s, {sc.answered()} scans answered")
            sc.producer.send_lines(chunks[k + 1])
            time.sleep(rng.uniform(0, 1.0))
            worker.start()
        sc.producer.flush()
        sent = sc.producer.names()
        sc.wait_done({n for n, _, _ in sent}, sc_.wait_s)
        worker.stop()
        rep = check_promises(sc, sent, kills=worker.kills, reference=local_reference(sc, lines))
        rep.extra["seconds"] = round(time.monotonic() - t0)
        rep.extra["kill_seed"] = kill_seed
        if worker.kills < sc_.crash_kills:
            rep.fail(f"only {worker.kills} kills happened")
        return rep
    finally:
        sc.close()


def race_scenario(root: Path, bootstrap: str, redis_url: str, sc_: Scale, *, seed: int = 2,
                  cluster: bool = False) -> Report:
    """Test 2: two workers in one group; the second joins mid-stream, later the first is stopped.
    ``cluster``: ``redis_url`` is a node of a Redis Cluster."""
    tenants = [TenantSpec(7, new_key(), key_id=0, via="hex", name="Race Brewery")]
    # draws fixed by the scenario's seed, as the outage scenario's: with a random one the budget
    # ran out before any tier now and then (once in a CI run on a Cluster: every tier at 93-97 %
    # of its stock), and the run then proved nothing about exhaustion
    draw_seed = "seed-" + hashlib.sha256(f"race-{seed}".encode()).hexdigest()[:32]
    campaigns = [stocked_campaign("race-campaign", 7, sc_.race_scans, via="seed", seed=draw_seed)]
    sc = Scenario(root, bootstrap, redis_url, label="race", tenants=tenants, campaigns=campaigns, take=4,
                  per_envelope=40, cluster=cluster)
    try:
        lines = make_stream(sc.worlds[0], sc_.race_scans, seed=seed)
        sc.watch()
        first = sc.worker("w1").start()
        duration = 25.0 if sc_.name == "short" else 150.0
        publishing = sc.producer.publish_paced(lines, duration_s=duration, steps=80)
        t0 = time.monotonic()
        _wait_progress(sc, lambda: sc.answered() >= len(lines) * 0.15, sc_.wait_s, [first])
        second = sc.worker("w2").start()
        log(f"race: second worker started at {sc.answered()} answered")
        _wait_progress(sc, lambda: sc.answered() >= len(lines) * 0.5, sc_.wait_s, [first, second])
        first.stop()
        log(f"race: first worker stopped (SIGTERM) at {sc.answered()} answered")
        publishing.join(sc_.wait_s)
        sc.producer.flush()
        sent = sc.producer.names()
        sc.wait_done({n for n, _, _ in sent}, sc_.wait_s, workers=[second])
        second.stop()
        rep = check_promises(sc, sent, reference=local_reference(sc, lines))
        rep.extra["seconds"] = round(time.monotonic() - t0)
        first_log = first.log_text()
        second_log = second.log_text()
        for w in (first, second):  # both workers must have taken part
            (n,), = probe(w.chdb, {"n": "SELECT count() FROM scan_events"})["n"]
            rep.extra[f"rows stored by {w.label}"] = int(n)
            if not int(n):
                rep.fail(f"worker {w.label} stored no scan: the group never shared the partitions")
        if first.proc.returncode not in (0, -signal.SIGTERM):
            rep.fail(f"the first worker exited with {first.proc.returncode} on SIGTERM:\n{first.log_tail()}")
        for text, w in ((first_log, first), (second_log, second)):
            if "Traceback" in text:
                rep.fail(f"worker {w.label} logged a traceback:\n{w.log_tail()}")
        return rep
    finally:
        sc.close()


def _wait_progress(sc: Scenario, cond: Callable[[], bool], timeout_s: float, workers: list[Worker]) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.label} exited:\n{w.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no progress within {timeout_s} s ({sc.answered()} answered)")
        time.sleep(0.2)


# --------------------------------------------------------------------------- several workers

#: Partitions of the several-workers scenario: 2 or 4 workers get two or more each, and the
#: survivors of a kill an uneven share, as a production group would.
WORKERS_PARTITIONS = 8
#: The kill comes once this share of the stream is answered: every worker is at work by then
#: and most of the stream is still a backlog, so the survivors' own rate can be measured.
WORKERS_KILL_SHARE = 0.35
#: The survivors' rate after the rebalance is measured until this share is answered: at the
#: very end some partitions are drained while others are not, which says nothing about the group.
WORKERS_TAIL_SHARE = 0.9
#: The rate before the kill is taken over at most this many seconds before it (the start-up ramp left out).
RATE_WINDOW_S = 5.0
#: How often the answered count is sampled for those rates.
PROGRESS_SAMPLE_S = 0.2
#: What Faust logs once a worker has its first assignment in the group, and how often the logs are read for it.
READY_LINE = "[^Worker]: Ready"
READY_POLL_S = 0.2
#: What a worker logs when its first batch is done (streams/app.py): it had partitions and worked them.
RUNNING_LINE = "worker running (after"


class ProgressTimeline(threading.Thread):
    """Samples ``Scenario.answered()`` every ``PROGRESS_SAMPLE_S`` as (monotonic time, answered) pairs,
    so that the group's rate before a kill, the stall of the rebalance and the survivors' rate
    after it can be read afterwards."""

    def __init__(self, sc: Scenario):
        super().__init__(name="faults-progress", daemon=True)
        self.sc = sc
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.monotonic(), self.sc.answered()))
            self._halt.wait(PROGRESS_SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def count_at(self, t: float) -> int:
        """Answered at time ``t`` (the last sample taken by then)."""
        return max((n for at, n in self.samples if at <= t), default=0)

    def time_of(self, n: int) -> float | None:
        """When ``n`` scans were answered (the first sample that saw it), None if never."""
        return next((at for at, got in self.samples if got >= n), None)

    def rate(self, t0: float, t1: float) -> float:
        return (self.count_at(t1) - self.count_at(t0)) / (t1 - t0) if t1 > t0 else 0.0

    def write(self, path: Path, t_kill: float) -> None:
        """The samples as "seconds since the kill, answered" lines, beside the workers' logs."""
        path.write_text("".join(f"{at - t_kill:.2f}\t{n}\n" for at, n in self.samples), encoding="utf-8")

    def longest_stall(self, after: float, until: float) -> tuple[float, float]:
        """(start, end) of the longest time without a new answer between ``after`` and ``until``."""
        last_t, last_n = after, self.count_at(after)
        best = (after, after)
        for at, n in self.samples:
            if at <= after or at > until:
                continue
            if n > last_n:
                if at - last_t > best[1] - best[0]:
                    best = (last_t, at)
                last_t, last_n = at, n
        return best


@dataclass
class WorkerShare:
    """What one worker of the group stored, split by whether it had answered the scan when the kill
    came: scans per ``scans`` partition (a scan_id sent on several partitions, e.g. reused with
    another code, is counted in the totals only)."""

    before: int = 0
    after: int = 0
    before_by_partition: collections.Counter[int] = field(default_factory=collections.Counter)
    after_by_partition: collections.Counter[int] = field(default_factory=collections.Counter)

    def text(self) -> str:
        def spread(counts: collections.Counter[int]) -> str:
            return ", ".join(f"p{p} {n}" for p, n in sorted(counts.items()))
        return (f"{self.before} before the kill ({spread(self.before_by_partition)}), "
                f"{self.after} after ({spread(self.after_by_partition)})")


def worker_shares(sc: Scenario, sent: list[tuple[str, bytes, str]],
                  answered_before: dict[str, set[str]]) -> dict[str, WorkerShare]:
    """Per worker label: the scans its chdb folder holds, split into those it answered first by
    the time of the kill (``answered_before[label]``: the scan_ids seen answered then) and the
    others, per ``scans`` partition they were read from.

    A scan is stored (step 3) before it is produced (step 5), so a scan answered before the kill
    was stored by then by the worker that answered it.  A batch the killed worker had processed
    but not committed is delivered again to a survivor, which stores its scans again with
    ``replay = 1`` (their claims were made): the survivor's work after the kill, even when the
    killed worker had answered them; so is a later line reusing an answered scan_id (a
    ``conflict`` or a redelivery in the stream).  ``original`` says which row is neither.
    Invalid events are left out: they claim nothing, so a redelivered one is stored as if new."""
    partitions_of: dict[str, set[int]] = collections.defaultdict(set)
    for name, _, position in sent:  # a position is "topic/partition@offset:line"
        partitions_of[name].add(int(position.rsplit("/", 1)[1].split("@", 1)[0]))
    shares = {}
    for w in sc.workers:
        share = WorkerShare()
        answered = answered_before[w.label]
        rows = probe(w.chdb, {"ids": "SELECT scan_id, max(original) FROM scan_events "
                                     "WHERE verdict != 'invalid_event' GROUP BY scan_id"})["ids"]
        for sid, first in rows:
            before = sid in answered and bool(int(first))
            if before:
                share.before += 1
            else:
                share.after += 1
            parts = partitions_of.get(sid, set())
            if len(parts) == 1:
                (share.before_by_partition if before else share.after_by_partition)[next(iter(parts))] += 1
        shares[w.label] = share
    return shares


def _wait_group(workers: list[Worker], timeout_s: float) -> None:
    """Until every worker has had an assignment: the group then holds them all, each with partitions
    (a member's first assignment completes only once every member has joined that generation)."""
    deadline = time.monotonic() + timeout_s
    while not all(READY_LINE in w.log_text() for w in workers):
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.label} exited before the group formed:\n{w.log_tail()}")
        if time.monotonic() > deadline:
            waiting = [w.label for w in workers if READY_LINE not in w.log_text()]
            raise TimeoutError(f"workers {waiting} had no assignment within {timeout_s} s")
        time.sleep(READY_POLL_S)


def workers_scenario(root: Path, bootstrap: str, redis_url: str, sc_: Scale, *, workers: int,
                     cluster: bool = False, seed: int = 6, kill_seed: int | None = None) -> Report:
    """Test 7: ``workers`` workers in one group on 8 partitions; one of them killed with kill -9 mid-stream.

    The workers start together and the whole stream is published once the group holds them all,
    so that it is a backlog the group works through at its own speed.  Once about a third is
    answered, one worker (chosen by ``kill_seed``, logged) is killed; its partitions stay
    unserved until its session times out, then the group rebalances and the survivors take them
    over, with its batches that were processed but not committed.  Then every promise is checked,
    and that the survivors did take over: every partition the killed worker served before the
    kill was served by a survivor after it.  Figures: per worker, the scans answered before and
    after the kill and on which partitions; the group's rate before the kill, the stall, and the
    survivors' rate after the rebalance.  ``cluster``: ``redis_url`` is a node of a Redis Cluster."""
    if not 2 <= workers <= WORKERS_PARTITIONS:
        raise ValueError(f"workers={workers}: between 2 (one survives) and {WORKERS_PARTITIONS} (one partition each)")
    kill_seed = kill_seed if kill_seed is not None else int.from_bytes(os.urandom(4), "big")
    victim_index = random.Random(kill_seed).randrange(workers)
    tenants = [TenantSpec(7, new_key(), key_id=1, via="hex", name="Workers Brewery")]
    campaigns = [stocked_campaign("workers-campaign", 7, sc_.workers_scans)]
    sc = Scenario(root, bootstrap, redis_url, label="workers", tenants=tenants, campaigns=campaigns,
                  partitions=WORKERS_PARTITIONS, take=4, per_envelope=40, cluster=cluster)
    timeline = ProgressTimeline(sc)
    try:
        lines = make_stream(sc.worlds[0], sc_.workers_scans, seed=seed)
        sc.watch()
        group = [sc.worker(f"w{i + 1}").start() for i in range(workers)]
        victim = group[victim_index]
        survivors = [w for w in group if w is not victim]
        log(f"workers: {workers} workers; {victim.label} is killed (kill_seed={kill_seed})")
        t0 = time.monotonic()
        _wait_group(group, sc_.wait_s)
        log(f"workers: the group formed {time.monotonic() - t0:.0f} s after the start")
        timeline.start()
        sc.producer.send_lines(lines)
        sc.producer.flush()
        sent = sc.producer.names()
        names = {n for n, _, _ in sent}
        _wait_progress(sc, lambda: sc.answered() >= len(names) * WORKERS_KILL_SHARE, sc_.wait_s, group)
        if RUNNING_LINE not in victim.log_text():
            raise RuntimeError(f"worker {victim.label} had done no batch when it was to be killed:\n"
                               f"{victim.log_tail()}")
        victim.kill9()
        t_kill = time.monotonic()
        with sc.watchers["results"].lock:
            answered_at_kill = set(sc.results.count)
        log(f"workers: kill -9 of {victim.label} at {len(answered_at_kill)} answered")
        # its last answers may reach the watcher late; until its session times out its partitions
        # cannot move, so a scan of its own answered meanwhile was answered by it, before the kill
        time.sleep(sc.session_timeout_s / 2)
        with sc.watchers["results"].lock:
            answered_soon_after = set(sc.results.count)
        answered_before = {w.label: answered_soon_after if w is victim else answered_at_kill for w in group}
        sc.wait_done(names, sc_.wait_s, workers=survivors)
        timeline.stop()
        timeline.write(sc.root / "progress.tsv", t_kill)
        for w in survivors:
            w.stop()
        rep = check_promises(sc, sent, kills=victim.kills, reference=local_reference(sc, lines))
        rep.extra["seconds"] = round(time.monotonic() - t0)
        rep.extra["kill_seed"] = kill_seed
        shares = worker_shares(sc, sent, answered_before)
        for w in group:
            rep.extra[f"{w.label}{' (killed)' if w is victim else ''}"] = shares[w.label].text()
        taken = set(shares[victim.label].before_by_partition)
        if not shares[victim.label].before:
            rep.fail(f"the killed worker {victim.label} had answered no scan: the kill tested nothing")
        for w in survivors:
            if not shares[w.label].after:
                rep.fail(f"survivor {w.label} answered nothing after the kill")
        orphaned = taken - set().union(*(shares[w.label].after_by_partition for w in survivors))
        if orphaned:
            rep.fail(f"partitions {sorted(orphaned)} of the killed worker were not taken over by a survivor")
        _rates(rep, timeline, t_kill, len(names))
        for w in survivors:
            if w.proc.returncode not in (0, -signal.SIGTERM):
                rep.fail(f"survivor {w.label} exited with {w.proc.returncode} on SIGTERM:\n{w.log_tail()}")
            if "Traceback" in w.log_text():
                rep.fail(f"survivor {w.label} logged a traceback:\n{w.log_tail()}")
        return rep
    finally:
        if timeline.is_alive():
            timeline.stop()
        sc.close()


def _rates(rep: Report, timeline: ProgressTimeline, t_kill: float, total: int) -> None:
    """The group's rate before the kill, the longest stall after it, and the survivors' rate from
    the end of that stall until ``WORKERS_TAIL_SHARE`` of the stream was answered."""
    t_first = timeline.time_of(1)
    t_done = timeline.time_of(total) or timeline.samples[-1][0]
    t_tail = timeline.time_of(int(total * WORKERS_TAIL_SHARE)) or t_done
    before = timeline.rate(max(t_first or t_kill, t_kill - RATE_WINDOW_S), t_kill)
    stall_start, stall_end = timeline.longest_stall(t_kill, t_done)
    if t_tail <= stall_end:  # the backlog was nearly done when the survivors resumed: use what is left
        t_tail = t_done
    after = timeline.rate(stall_end, t_tail)
    rep.extra["group scans/s before the kill"] = round(before)
    rep.extra["longest stall after the kill"] = (f"{stall_end - stall_start:.1f} s, from "
                                                 f"{stall_start - t_kill:.1f} s after it")
    rep.extra["survivors' scans/s after the stall"] = round(after)
    rep.extra["after / before"] = round(after / before, 2) if before else None


class _ClusterNodeOutage:
    """The Redis of an outage on a Redis Cluster: a private persistent cluster of its own, one of
    whose primaries (the one that serves the most state shards) is killed and restarted."""

    def __init__(self):
        from redis_cluster import RedisCluster
        self.cluster = RedisCluster(persistent=True).start()
        self.url = self.cluster.url
        self.node = self._busiest_port()

    def _busiest_port(self) -> int:
        import redis
        from scanstream.engine.state.redis_lua import SHARD_TAGS
        client = redis.RedisCluster.from_url(self.url)
        try:
            ports = [client.get_node_from_key("{%s}" % tag).port for tag in SHARD_TAGS]
        finally:
            client.close()
        return max(set(ports), key=ports.count)

    def stop(self) -> None:
        self.cluster.kill_node(self.node)

    def start(self) -> None:
        self.cluster.restart_node(self.node)

    def close(self) -> None:
        self.cluster.stop()


def _finish(sc: Scenario, worker: Worker, publishing: threading.Thread, lines: list[bytes], redis_url: str,
            sc_: Scale, t0: float) -> Report:
    """After an outage: the rest of the stream published and processed, the worker stopped (alive
    until then), every promise checked against the local driver's run of ``lines``."""
    publishing.join(sc_.wait_s)
    sc.producer.flush()
    sent = sc.producer.names()
    sc.wait_done({n for n, _, _ in sent}, sc_.wait_s)
    if not worker.alive():
        raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
    worker.stop()
    rep = check_promises(sc, sent, redis_url=redis_url, reference=local_reference(sc, lines))
    rep.extra["seconds"] = round(time.monotonic() - t0)
    return rep


def outage_scenario(root: Path, bootstrap: str, shared_redis_url: str, sc_: Scale, *, seed: int = 3,
                    cluster: bool = False, clickhouse: bool = True) -> Report:
    """Test 3: the worker's Redis (a private server) stopped mid-stream, then its ClickHouse storage
    frozen (unless not ``clickhouse``); the worker keeps running, retries, reports it, and catches
    up.  ``cluster``: the worker's Redis is a private Redis Cluster, and one of its primaries is
    killed (kill -9) and restarted from its append-only file."""
    if cluster:
        outage = _ClusterNodeOutage()
        redis_server = outage
    else:
        redis_server = PrivateRedis(root).start()
    tenants = [TenantSpec(7, new_key(), key_id=1, via="file", name="Outage Brewery")]
    # draws fixed by the scenario's seed: with a random one the budget ran out before any tier in
    # about one short run in four, and the run then proved nothing about exhaustion
    draw_seed = "seed-" + hashlib.sha256(f"outage-{seed}".encode()).hexdigest()[:32]
    campaigns = [stocked_campaign("outage-campaign", 7, sc_.outage_scans, seed=draw_seed)]
    sc = Scenario(root, bootstrap, redis_server.url, label="outage", tenants=tenants, campaigns=campaigns, take=4,
                  per_envelope=40, cluster=cluster)
    try:
        lines = make_stream(sc.worlds[0], sc_.outage_scans, seed=seed)
        sc.watch()
        worker = sc.worker("w1").start()
        t0 = time.monotonic()
        outages = [("redis", sc_.redis_outage_s)]
        can_freeze = clickhouse and FrozenStorage.available(root)
        if can_freeze:
            outages.append(("clickhouse", sc_.clickhouse_outage_s))
        duration = sum(s for _, s in outages) + 14.0
        publishing = sc.producer.publish_paced(lines, duration_s=duration, steps=60)
        timeline = []
        for i, (service, seconds) in enumerate(outages):
            share = (i + 1) / (len(outages) + 1)
            _wait_progress(sc, lambda share=share: sc.answered() >= len(lines) * share * 0.8, sc_.wait_s, [worker])
            before_log = len(worker.log_text())
            at = sc.answered()
            if service == "redis":
                redis_server.stop()
            else:
                frozen = FrozenStorage(worker.chdb).__enter__()
            log(f"outage: {service} down at {at} answered")
            time.sleep(seconds)
            during = sc.answered()
            if service == "redis":
                redis_server.start()
            else:
                frozen.__exit__()
            log(f"outage: {service} back after {seconds} s; {during - at} answered while it was down")
            # the worker catches up: more results come, and it says it is running again
            _wait_progress(sc, lambda during=during: sc.answered() > during + 50
                           or sc.answered() >= len(lines) * 0.999, sc_.wait_s, [worker])
            deadline = time.monotonic() + 60
            while "worker running (after" not in worker.log_text()[before_log:] and time.monotonic() < deadline:
                time.sleep(0.5)
            timeline.append((service, worker.log_text()[before_log:], at, during))
        rep = _finish(sc, worker, publishing, lines, redis_server.url, sc_, t0)
        rep.extra["clickhouse outage made by"] = ("chattr +i on the chdb storage" if can_freeze else
                                                  "not possible here" if clickhouse else "not asked for")
        for service, text, at, during in timeline:
            # backpressure: while the service is down no batch completes; what still shows up on
            # scan-results is what was already done when it went down
            rep.extra[f"{service} down: scans answered meanwhile"] = during - at
            if during - at > len(lines) // 4:
                rep.fail(f"{service} outage: {during - at} scans were answered while it was down")
            retry = [ln for ln in text.splitlines() if "retrying" in ln]
            states = [ln for ln in text.splitlines() if "worker retrying" in ln]
            back = [ln for ln in text.splitlines() if "worker running (after" in ln]
            rep.extra[f"{service} outage"] = f"{len(retry)} retry lines, {len(states)} state reports"
            want = "Redis state store" if service == "redis" else "SinkError"
            if not any(want in ln for ln in retry):
                rep.fail(f"{service} outage: no 'retrying' line naming the error ({want}) in the worker log:\n"
                         + "\n".join(text.splitlines()[-20:]))
            if not back:
                rep.fail(f"{service} outage: the worker never logged that it runs again")
            if sc_.redis_outage_s >= 10 and not states:
                rep.fail(f"{service} outage: no periodic state report ('worker retrying') in the log")
            rep.extra[f"{service} retry example"] = (retry[0][:300] if retry else "")
        if "Traceback" in worker.log_text():
            rep.fail(f"the worker logged a traceback:\n{worker.log_tail()}")
        return rep
    finally:
        sc.close()
        if cluster:
            outage.close()
        else:
            redis_server.stop()


def failover_scenario(root: Path, bootstrap: str, sc_: Scale, *, seed: int = 4) -> Report:
    """A failover mid-stream: the worker's Redis is a private persistent Cluster of three primaries
    with a replica each, and the workers wait for one replica (``[redis] wait_replicas = 1``).  The
    primary that serves the most state shards is killed (kill -9); its replica takes its slots
    over.  The promoted node has no replica of its own, so no batch can be made durable: the
    worker holds its batch and retries (it must not tell an outcome only one node holds), until
    the killed node is started again and comes back as the new primary's replica.  Then it
    catches up: nothing lost, nothing paid twice."""
    from redis_cluster import RedisCluster

    cluster = RedisCluster(persistent=True, replicas=1).start()
    tenants = [TenantSpec(7, new_key(), key_id=1, via="file", name="Failover Brewery")]
    draw_seed = "seed-" + hashlib.sha256(f"failover-{seed}".encode()).hexdigest()[:32]
    campaigns = [stocked_campaign("failover-campaign", 7, sc_.outage_scans, seed=draw_seed)]
    sc = Scenario(root, bootstrap, cluster.url, label="failover", tenants=tenants, campaigns=campaigns, take=4,
                  per_envelope=40, cluster=True, redis_settings={"wait_replicas": 1, "wait_timeout_ms": 500})
    try:
        import redis
        from scanstream.engine.state.redis_lua import SHARD_TAGS
        client = redis.RedisCluster.from_url(cluster.url)
        try:
            serving = [client.get_node_from_key("{%s}" % tag).port for tag in SHARD_TAGS]
        finally:
            client.close()
        # the busiest primary that is not the node the workers were given as their address
        victim = max(set(serving) - {cluster.ports[0]}, key=serving.count)
        lines = make_stream(sc.worlds[0], sc_.outage_scans, seed=seed)
        sc.watch()
        worker = sc.worker("w1").start()
        t0 = time.monotonic()
        publishing = sc.producer.publish_paced(lines, duration_s=sc_.redis_outage_s + 14.0, steps=60)
        _wait_progress(sc, lambda: sc.answered() >= len(lines) * 0.4, sc_.wait_s, [worker])
        before_log = len(worker.log_text())
        at = sc.answered()
        cluster.kill_node(victim)
        log(f"failover: primary {victim} killed at {at} answered")
        promoted = cluster.wait_failover(victim)
        promoted_after = time.monotonic()
        log(f"failover: {promoted} took over {victim}'s slots")
        # the worker follows the slots to the promoted node and finds it alone: it must hold its
        # batches, saying why (the retry back-off is up to 8 s, so allow a few)
        time.sleep(sc_.redis_outage_s)
        deadline = time.monotonic() + 40
        while "replicas of primary" not in worker.log_text()[before_log:] and time.monotonic() < deadline:
            time.sleep(0.5)
        during = sc.answered()
        cluster.restart_node(victim)
        deadline = time.monotonic() + 60
        while victim not in cluster.replicas_of(promoted) and time.monotonic() < deadline:
            time.sleep(0.2)
        log(f"failover: {victim} back as a replica of {promoted} after {time.monotonic() - promoted_after:.1f} s; "
            f"{during - at} answered meanwhile")
        _wait_progress(sc, lambda: sc.answered() > during + 50 or sc.answered() >= len(lines) * 0.999,
                       sc_.wait_s, [worker])
        rep = _finish(sc, worker, publishing, lines, cluster.url, sc_, t0)
        rep.extra["answered while a primary had no replica"] = during - at
        # a batch is told only once a replica of every primary holds it: with the promoted primary
        # alone no batch completes; what still shows up is what was done before the kill
        if during - at > len(lines) // 4:
            rep.fail(f"failover: {during - at} scans were answered while a primary had no replica")
        text = worker.log_text()[before_log:]
        retry = [ln for ln in text.splitlines() if "retrying" in ln]
        rep.extra["failover retry example"] = next((ln[:300] for ln in retry if "replicas of primary" in ln), "")
        if not any(f"0 of 1 replicas of primary 127.0.0.1:{promoted}" in ln for ln in retry):
            rep.fail("failover: no 'retrying' line naming the missing replica in the worker log:\n"
                     + "\n".join(text.splitlines()[-20:]))
        if "Traceback" in worker.log_text():
            rep.fail(f"the worker logged a traceback:\n{worker.log_tail()}")
        return rep
    finally:
        sc.close()
        cluster.stop()


def tenants_scenario(root: Path, bootstrap: str, redis_url: str, sc_: Scale, *, seed: int = 5,
                     cluster: bool = False) -> Report:
    """Test 5: tenants A (7) and B (8), a campaign each (B's first and with A's skus); forged codes."""
    from scanstream.ext import codec

    a = TenantSpec(7, new_key(), key_id=1, via="hex", name="Tenant A")
    b = TenantSpec(8, new_key(), key_id=0, via="env", name="Tenant B")
    camp_b = stocked_campaign("tenant-b-campaign", 8, sc_.tenant_scans * 4, cap=50)
    camp_a = stocked_campaign("tenant-a-campaign", 7, sc_.tenant_scans * 4, cap=50)
    sc = Scenario(root, bootstrap, redis_url, label="tenants", tenants=[a, b], campaigns=[camp_b, camp_a], take=8,
                  cluster=cluster)
    try:
        lines = make_stream(sc.worlds[0], sc_.tenant_scans, seed=seed, id_prefix="A-") + \
            make_stream(sc.worlds[1], sc_.tenant_scans, seed=seed + 1, id_prefix="B-")
        # forgeries: B's tenant id under A's key, B's tenant id with a key_id B does not have, A's
        # tenant id signed with B's key under a key_id A does not have, an unconfigured tenant
        forged = {}
        rng = random.Random(seed)
        ts = DEMO_DAY_START_MS + 3_600_000
        for i in range(200):
            serial = rng.randrange(200_000)
            for label, code, want in (
                ("b-with-a-key", codec.encode(a.key, 8, 101, serial, key_id=0), "bad_mac"),
                ("b-unknown-keyid", codec.encode(a.key, 8, 101, serial, key_id=1), "unknown_tenant"),
                ("a-with-b-key", codec.encode(b.key, 7, 101, serial, key_id=0), "unknown_tenant"),
                ("a-keyid-b-key", codec.encode(b.key, 7, 101, serial, key_id=1), "bad_mac"),
                ("unconfigured", codec.encode(a.key, 9, 101, serial, key_id=1), "unknown_tenant"),
            ):
                sid = f"forged-{label}-{i}"
                forged[sid] = want
                lines.append(orjson.dumps({"scan_id": sid, "ts": ts + i, "code": code, "user_id": f"wx-forger-{i}",
                                           "role": "consumer", "region": "440106"}))
        lines.sort(key=_ts_of)  # the tenants' scans interleave in time; a stable sort keeps each code's order
        sc.watch()
        worker = sc.worker("w1").start()
        t0 = time.monotonic()
        sc.producer.send_lines(lines)
        sc.producer.flush()
        sent = sc.producer.names()
        sc.wait_done({n for n, _, _ in sent}, sc_.wait_s)
        worker.stop()
        rep = check_promises(sc, sent, require_exhaustion=False)
        rep.extra["seconds"] = round(time.monotonic() - t0)
        q = probe(worker.chdb, {
            "cross_scans": f"SELECT campaign, tenant, count() FROM scan_events FINAL WHERE campaign != '' AND "
                           f"((campaign = '{camp_b.id}' AND tenant != 8) OR "
                           f"(campaign = '{camp_a.id}' AND tenant != 7)) GROUP BY campaign, tenant",
            "cross_awards": f"SELECT campaign, tenant, count() FROM awards FINAL WHERE "
                            f"(campaign = '{camp_b.id}' AND tenant != 8) OR (campaign = '{camp_a.id}' AND tenant != 7) "
                            f"GROUP BY campaign, tenant",
            "per_tenant": "SELECT tenant, campaign, count() FROM awards FINAL GROUP BY tenant, campaign",
            "forged": "SELECT scan_id, verdict, prize_cents, campaign FROM scan_events FINAL "
                      "WHERE startsWith(scan_id, 'forged-')",
        })
        if q["cross_scans"]:
            rep.fail(f"scans entered another tenant's campaign: {q['cross_scans']}")
        if q["cross_awards"]:
            rep.fail(f"prizes paid across tenants: {q['cross_awards']}")
        rep.extra["awards per tenant/campaign"] = {f"{t}/{c}": int(n) for t, c, n in q["per_tenant"]}
        if not any(int(t) == 8 for t, _, _ in q["per_tenant"]) or not any(int(t) == 7 for t, _, _ in q["per_tenant"]):
            rep.fail(f"both tenants should have won prizes: {q['per_tenant']}")
        got = {sid: (verdict, int(cents)) for sid, verdict, cents, _ in q["forged"]}
        wrong = {sid: (got.get(sid), want) for sid, want in forged.items() if got.get(sid, ("", 0)) != (want, 0)}
        rep.extra["forged codes"] = dict(collections.Counter(got[s][0] for s in got))
        if wrong:
            rep.fail(f"{len(wrong)} forged codes were not refused as expected: {list(wrong.items())[:5]}")
        return rep
    finally:
        sc.close()


def fuzz_worker_scenario(root: Path, bootstrap: str, redis_url: str, sc_: Scale, corpus: list, tenant: TenantSpec,
                         genuine: list[str], *, cluster: bool = False) -> Report:
    """Test 4 on a real worker: fuzzed records on the ``scans`` topic, then every promise checked.

    ``corpus`` holds (value, headers, events) records; each goes to a random partition with a
    random key, followed by a few genuine scans (the worker must still be working).  ``cluster``:
    ``redis_url`` is a node of a Redis Cluster."""
    from scanstream.streams import envelope

    campaigns = [stocked_campaign("fuzz-worker-campaign", 7, 2_000)]
    sc = Scenario(root, bootstrap, redis_url, label="fuzz", tenants=[tenant], campaigns=campaigns, take=8,
                  cluster=cluster)
    try:
        sc.watch()
        worker = sc.worker("w1").start()
        t0 = time.monotonic()
        rng = random.Random(11)
        for value, headers, _ in corpus:
            key = rng.choice([None, b"", os.urandom(8), b"7:101:5"])  # a tombstone needs a key
            sc.producer.send_record(value, headers, partition=rng.randrange(sc.partitions),
                                    key=key if value is not None or key else b"deleted")
        tail = [orjson.dumps({"scan_id": f"after-fuzz-{i}", "ts": DEMO_DAY_START_MS + i, "code": code,
                              "user_id": f"wx-after-{i}", "role": "consumer", "region": "440106"})
                for i, code in enumerate(genuine[:40])]
        sc.producer.send_lines(tail)
        sc.producer.flush()
        sent = sc.producer.names()
        refused = []
        for p, offset, s in sc.producer.records():
            try:
                envelope.decode(s.value, envelope.header(s.headers))
            except envelope.EnvelopeError:
                refused.append((f"{sc.topics['scans']}/{p}@{offset}", s.value or b""))
        sc.wait_done({n for n, _, _ in sent}, sc_.wait_s)
        dlq = sc.watchers["dlq"]
        deadline = time.monotonic() + sc_.wait_s
        while time.monotonic() < deadline:
            with dlq.lock:
                have = {dict(m.headers).get("scanstream-position", b"").decode() for m in dlq.messages}
            if all(pos in have for pos, _ in refused):
                break
            time.sleep(0.5)
        worker.stop()
        rep = check_promises(sc, sent, require_exhaustion=False)
        rep.extra["seconds"] = round(time.monotonic() - t0)
        rep.extra["records"] = len(corpus)
        rep.extra["events"] = sum(n for _, _, n in corpus)
        rep.extra["refused messages"] = len(refused)
        with dlq.lock:
            by_pos = {dict(m.headers).get("scanstream-position", b"").decode(): m for m in dlq.messages}
        for pos, value in refused:
            m = by_pos.get(pos)
            if m is None or m.value != value or not dict(m.headers).get("scanstream-reason"):
                rep.fail(f"refused message {pos} is not on the dead-letter topic with reason and original bytes")
        text = worker.log_text()
        if "Traceback" in text:
            rep.fail(f"the worker logged a traceback:\n{worker.log_tail(60)}")
        if worker.starts != 1:
            rep.fail("the worker had to be restarted")
        return rep
    finally:
        sc.close()


def _ts_of(line: bytes) -> int:
    try:
        ev = orjson.loads(line)
        ts = ev.get("ts") if isinstance(ev, dict) else None
        return ts if isinstance(ts, int) else 0
    except orjson.JSONDecodeError:
        return 0


def fuzz_scenario(root: Path, bootstrap: str, redis_url: str, sc_: Scale) -> Report:
    """Test 4's real-worker part from the command line (the corpus comes from ``test_fuzz``)."""
    from .test_fuzz import Codes, corpus

    tenant = TenantSpec(7, new_key(), key_id=1, via="env", name="Fuzz Brewery")
    codes = Codes(tenant.key, new_key())
    return fuzz_worker_scenario(root, bootstrap, redis_url, sc_, corpus(codes, sc_.fuzz_worker_events), tenant,
                                codes.genuine)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.harness",
                                     description="Run the fault scenarios against real services and print figures.")
    parser.add_argument("--long", action="store_true",
                        help="the long form (>= 200k scans, >= 20 kill -9, 30 s outages)")
    parser.add_argument("--only", default="crash,race,workers,outage,fuzz,tenants",
                        help="comma-separated scenarios: crash, race, workers, outage, fuzz, tenants (the secrets "
                             "search over all of them always runs last)")
    parser.add_argument("--workers", type=int, default=4,
                        help="workers in the group of the workers scenario, one of them killed (default 4)")
    parser.add_argument("--bootstrap", default=None, help="use this Kafka broker (default: start a Tansu)")
    parser.add_argument("--redis-url", default=os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, chdb)")
    args = parser.parse_args(argv)
    chosen = scale("long" if args.long else None)
    root = Path(tempfile.mkdtemp(prefix="scanstream-faults-"))
    broker = None
    if args.bootstrap is None:
        from scanstream.streams.broker import TansuBroker
        broker = TansuBroker().start()
        bootstrap = broker.bootstrap
    else:
        bootstrap = args.bootstrap
    runs = {"crash": crash_scenario, "race": race_scenario,
            "workers": functools.partial(workers_scenario, workers=args.workers), "outage": outage_scenario,
            "fuzz": fuzz_scenario, "tenants": tenants_scenario}
    failed = 0
    try:
        for name in args.only.split(","):
            t0 = time.monotonic()
            rep = runs[name.strip()](root / name.strip(), bootstrap, args.redis_url, chosen)
            print(rep.figures(), flush=True)
            for v in rep.violations:
                print(f"  VIOLATION: {v}", flush=True)
            failed += bool(rep.violations)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
        found, files, messages = grep_secrets([sc for sc in ARTIFACTS if sc.root.exists()])
        print(f"[secrets] searched {files} files and {messages} messages: {len(found)} keys or seeds found", flush=True)
        for hit in found[:20]:
            print(f"  VIOLATION: {hit}", flush=True)
        failed += bool(found)
    finally:
        if broker is not None:
            broker.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
