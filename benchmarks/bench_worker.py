"""Scans per second through one ``scanstream worker`` on real services, and publish -> outcome latency.

One run starts everything it needs and removes it afterwards:

- a Tansu broker (``streams.broker.TansuBroker``, Kafka protocol, in memory) on a free port,
  with uniquely named topics of 4 partitions;
- the Redis at ``--redis-url`` (default ``$SCANSTREAM_REDIS_URL`` or
  redis://127.0.0.1:6379/0), used under a fresh random key prefix whose keys are deleted at
  the end (nothing else is touched);
- the synthetic world of ``scanstream demo`` (``streams.synthetic``) written as a registry to
  a temporary folder, and a configuration made from ``--config`` (default
  ``config/local.toml``: its tenants, keys, campaign, diversion settings) with the registry,
  ``state.backend = "redis"`` under that prefix, chdb in the temporary folder, webhooks off,
  the topics, ``kafka.partitions = 4`` and ``kafka.session_timeout_s = 4``; ``kafka.take``
  and ``kafka.within_ms`` keep their defaults;
- ``scanstream worker`` as a subprocess (as tests/test_worker.py starts it), then, for the
  baseline, ``benchmarks/naive_agent.py`` as a subprocess on topics, a consumer group and a
  chdb folder of its own.

Every scan's outcome comes out on the results topic; a consumer in this process, with
``assign()`` (no group, so no join delay) and a short fetch wait, counts the scans they carry
(envelopes opened) and notes when each count was reached.  That count is the completion
signal of every phase.  Each phase uses scan streams of its own (``generate_scans`` with its
own seed; scan_ids prefixed per phase, so no scan is a redelivery of an earlier phase's;
events the publisher would refuse, the stream's junk lines, are left out).  Later phases
reuse codes of earlier ones (the demo world has about 230 000 fresh codes in its shipped
ranges), so more of their scans are ``repeat``.

Phases, in this order:

0. Warm-up: ``--warmup`` scans through ``ScanPublisher.publish_many``; the time from start to
   their last outcome includes the worker's start (imports, chdb, registry, group join).
1. Envelopes (the goal): ``--scans`` scans (default 200 000).  ``ScanPublisher.publish_many``
   (linger ``kafka.linger_ms``, chunks of 10 000) first publishes them to a staging topic
   that nobody consumes, timed alone: that is the publisher's own rate, one thread of this
   process.  The worker then gets the same scans as the messages a publisher sends, built
   with the publisher's own functions (``encode_events``, ``code_keys``, ``partition_for``)
   into envelopes of ``--envelope-scans`` scans per partition (default 125: one publisher
   sealing every 5 ms at 100 000 scans/s over 4 partitions), sent to the worker's topic
   as fast as kafka-python goes; the clock runs from the first send until the last scan's
   outcome arrived.  This isolates the worker: with the live publisher on this machine the
   figure would be the publisher's (reported next to it), and both would share the CPUs.
   ``--envelope-scans 0`` replays the staging topic instead: the envelopes as
   ``publish_many`` sealed them at full speed (thousands of scans each).  Envelope size
   matters: the worker takes ``kafka.take`` messages per batch, whatever they carry.
2. Single-scan messages: ``--single-scans`` scans (default 10 000) through
   ``ScanPublisher.publish_single`` (one ``application/json`` message per scan), staged and
   replayed the same way.
3. Latency: ``ScanPublisher.publish`` paced at ``--latency-rate`` scans/s (default 10 000)
   for ``--latency-seconds`` (default 10) straight to the worker's topic; every
   ``--sample-every``-th scan (default 20) is awaited with ``await_result`` by a pool of
   ``--waiters`` threads (default 256), and its latency is the time from just before
   ``publish`` to the moment ``await_result`` returned.  A sample whose waiter picked it
   up late (all threads busy) would overstate its latency; how many did is reported.
4. Naive agent: the worker is stopped, ``naive_agent.py`` started; ``--naive-scans`` scans
   (default 5 000) through ``publish_single``, after a small warm-up, timed from the first
   publish until the last outcome or ``--naive-seconds`` (default 60), whichever comes
   first (the rate is then scans done / time).  Then the same agent with ``--no-insert``
   (no ClickHouse insert per scan), bounded at 20 s, for information: what the per-event
   insert costs the naive design.

CPU seconds of the worker (or agent), the broker, the Redis server (``INFO cpu``: every
client's work, other users' too) and this process are taken around each phase, so a figure
can be read against the machine's cores: everything here shares them.  So is the time the
worker's threads spent runnable but waiting for a CPU (``/proc/PID/task/*/schedstat``), and
the load average at the start and the end: on a busy machine the figures are pessimistic.

Goals (printed PASS / MISS, never asserted): >= 100 000 scans/s per worker with
envelopes and >= 10x the naive agent; p99 publish -> outcome < 300 ms at 10 000 scans/s.
The fourth goal of the issue, Redis dedup memory <= 1.1 bits per issued code, is measured by
``benchmarks/bench_state_memory.py``, not here.

Run: ``python benchmarks/bench_worker.py [--scans N] [--envelope-scans N] [--single-scans N]
[--naive-scans N] [--naive-seconds S] [--latency-rate R] [--latency-seconds S] [--skip-naive]
[--keep] [--json FILE]`` (about 3 minutes with the defaults on an idle 2-CPU machine).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# this checkout first, so that its in-place build of ext/ is the one measured
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))
sys.path.insert(2, str(ROOT / "tests"))  # config_writer: the worker configurations tests use too

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from machine import machine  # noqa: E402

GOAL_RATE = 100_000
GOAL_RATIO = 10.0
GOAL_P99_MS = 300.0
REDIS_URL_ENV = "SCANSTREAM_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PARTITIONS = 4
#: Scans per envelope: what one publisher sealing every 5 ms at 100 000 scans/s over 4 partitions sends.
DEFAULT_ENVELOPE_SCANS = 125
#: How long the latency phase waits for a worker that fell behind, and the bound on the naive agent without insert.
DRAIN_BOUND_S = 15.0
BARE_BOUND_S = 20.0
SESSION_TIMEOUT_S = 4
#: A verdict in an outcome's JSON (the worker's orjson and the naive agent's json spell it differently).
VERDICT_RE = re.compile(rb'"verdict":\s*"(\w+)"')
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")


# ---------------------------------------------------------------------------- setup


def code_version() -> dict[str, Any]:
    """Commit and uncommitted changes of the code being measured (as bench_pipeline.py reports it)."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    try:
        changed = [line[3:] for line in git("status", "--porcelain", "--", "engine", "ext", "streams", "sinks",
                                            "config").splitlines() if len(line) > 3]
        return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted": changed}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted": []}


def topic_names(tag: str) -> dict[str, str]:
    return {k: f"bench-{k}-{tag}" for k in ("scans", "results", "awards", "alerts", "dlq", "group")}


def write_config(base: Path, path: Path, registry: Path, chdb: Path, bootstrap: str, names: dict[str, str],
                 redis_url: str, prefix: str) -> Path:
    """``base`` with the registry, chdb, webhooks off, Redis state under ``prefix`` and the topics."""
    from config_writer import worker_toml
    kafka = {"bootstrap": bootstrap, "group": names["group"], "partitions": PARTITIONS,
             "session_timeout_s": SESSION_TIMEOUT_S,
             **{f"{k}_topic": names[k] for k in ("scans", "results", "awards", "alerts", "dlq")}}
    try:
        text = worker_toml(base.read_text(encoding="utf-8"), registry=registry, chdb=chdb, state="redis",
                           redis={"url": redis_url, "prefix": prefix}, kafka=kafka)
    except ValueError as exc:
        raise SystemExit(f"{base}: {exc}") from None
    path.write_text(text, encoding="utf-8")
    from scanstream.engine.config import load
    load(path)  # fail here, with the key's name, rather than in the worker's log
    return path


def make_events(world, n: int, seed: int, tag: str) -> list[dict]:
    """``n`` scans of the synthetic stream as dicts, minus the lines the publisher refuses, scan_ids tagged."""
    from scanstream.ext.scanparse import parse_events
    from scanstream.streams.synthetic import generate_scans

    lines = generate_scans(world, n, seed=seed)
    reasons = parse_events(lines)["reason"]
    events = []
    for line, reason in zip(lines, reasons.tolist()):
        if reason:
            continue
        ev = orjson.loads(line)
        ev["scan_id"] = f"{tag}-{ev['scan_id']}"
        events.append(ev)
    return events[:n]


# ---------------------------------------------------------------------------- processes and CPU


class Proc:
    """A subprocess with its log; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path):
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.p = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> float:
        """Seconds the process took to exit after SIGTERM (killed after ``timeout_s``)."""
        t = time.perf_counter()
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._log.close()
        return time.perf_counter() - t


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def runq_wait_s(pid: int | None) -> float | None:
    """Seconds the threads of a process spent runnable but waiting for a CPU (``/proc/PID/task/*/schedstat``)."""
    if pid is None:
        return None
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):  # a thread that just ended
                continue
    except OSError:
        return None
    return total / 1e9


def redis_cpu_s(client) -> float | None:
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except Exception:  # noqa: BLE001 - optional information
        return None


def delete_prefix(client, prefix: str) -> int:
    """Delete every key under ``prefix`` (this run's keys only)."""
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            n += client.unlink(*batch)
            batch.clear()
    if batch:
        n += client.unlink(*batch)
    return n


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """CPU seconds spent by the worker (or agent), the broker, Redis and this process over a phase."""

    def __init__(self, agent_pid: int | None, broker_pid: int | None, redis_client):
        self.pids = {"agent": agent_pid, "broker": broker_pid}
        self.redis = redis_client

    def read(self) -> dict[str, float | None]:
        out = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        out["agent waiting for a CPU"] = runq_wait_s(self.pids["agent"])
        out["redis server"] = redis_cpu_s(self.redis)  # every client's work, not only this run's
        out["bench"] = self_cpu_s()
        return out

    @staticmethod
    def spent(a: dict, b: dict) -> dict[str, float | None]:
        return {k: (b[k] - a[k]) if a.get(k) is not None and b.get(k) is not None else None for k in a}


# ---------------------------------------------------------------------------- results


class ResultCounter(threading.Thread):
    """Counts the scans carried by the messages of the results topic; notes when each count was reached."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        super().__init__(name="results-counter", daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", fetch_max_wait_ms=10,
                                      max_partition_fetch_bytes=8 * 1024 * 1024, client_id="bench-results")
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.cond = threading.Condition()
        self.count = 0
        self.messages = 0
        self.verdicts: Counter[str] = Counter()
        self.history: list[tuple[float, int]] = []  # (perf_counter, count) after each poll that brought scans
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from scanstream.streams import envelope
        try:
            while not self._halt.is_set():
                got = self.consumer.poll(timeout_ms=50, max_records=100_000)
                if not got:
                    continue
                t = time.perf_counter()
                n = m = 0
                seen: Counter[str] = Counter()
                for records in got.values():
                    for r in records:
                        n += len(envelope.decode(r.value, envelope.header(r.headers)))
                        m += 1
                        seen.update(VERDICT_RE.findall(r.value))
                with self.cond:
                    self.verdicts.update(seen)
                    self.count += n
                    self.messages += m
                    self.history.append((t, self.count))
                    self.cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported by wait_for
            with self.cond:
                self.error = exc
                self.cond.notify_all()
        finally:
            self.consumer.close()

    def wait_for(self, target: int, timeout_s: float, alive=lambda: True, stall_s: float = 30.0) -> float | None:
        """perf_counter time at which ``count`` reached ``target``.

        None after ``timeout_s``, when ``alive()`` turns false, or when the count has not moved
        for ``stall_s`` seconds (a worker retrying a batch for ever).
        """
        start = time.perf_counter()
        deadline = start + timeout_s
        with self.cond:
            while self.count < target:
                if self.error is not None:
                    raise RuntimeError(f"the results consumer failed: {self.error!r}") from self.error
                now = time.perf_counter()
                moved = max(start, self.history[-1][0]) if self.history else start
                if now >= deadline or now - moved > stall_s or not alive():
                    return None
                self.cond.wait(min(deadline - now, 0.5))
            return next(t for t, c in self.history if c >= target)

    def verdict_snapshot(self) -> Counter[str]:
        with self.cond:
            return Counter({k.decode(): v for k, v in self.verdicts.items()})

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# ---------------------------------------------------------------------------- staging


def build_messages(events: list[dict], partitions: int, per_envelope: int | None) -> list[tuple]:
    """The messages a ScanPublisher sends for ``events``, as (partition, key, value, headers).

    The publisher's own functions do the work (``encode_events``, ``code_keys``,
    ``partition_for``); ``per_envelope`` None gives one keyed ``application/json`` message per
    scan (``publish_single``), else envelopes sealed every ``per_envelope`` scans of a
    partition, in stream order (the last ones shorter), as the publisher seals them when its
    linger ends after that many scans.
    """
    from scanstream.streams import envelope
    from scanstream.streams.publisher import ENVELOPE_HEADERS, SINGLE_HEADERS, code_keys, encode_events, partition_for

    lines = encode_events(events)
    keys = code_keys([e["code"] for e in events])
    parts = [partition_for(key, partitions) for key in keys]
    if per_envelope is None:
        return [(p, key, line, SINGLE_HEADERS) for p, key, line in zip(parts, keys, lines)]
    out: list[tuple] = []
    buffers: dict[int, list[bytes]] = {}
    for p, line in zip(parts, lines):
        buf = buffers.setdefault(p, [])
        buf.append(line)
        if len(buf) == per_envelope:
            out.append((p, None, envelope.encode(buf), ENVELOPE_HEADERS))
            buffers[p] = []
    out.extend((p, None, envelope.encode(buf), ENVELOPE_HEADERS) for p, buf in buffers.items() if buf)
    return out


def read_back(bootstrap: str, topic: str, partitions: int, scans: int, timeout_s: float = 60.0) -> list[tuple]:
    """Every message of a staging topic as (partition, key, value, headers), until ``scans`` scans were read."""
    from kafka import KafkaConsumer, TopicPartition

    from scanstream.streams import envelope

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50,
                             max_partition_fetch_bytes=16 * 1024 * 1024, client_id="bench-staging")
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out: list[tuple] = []
    n = 0
    deadline = time.monotonic() + timeout_s
    try:
        while n < scans:
            if time.monotonic() > deadline:
                raise RuntimeError(f"staging topic {topic}: read {n} of {scans} scans in {timeout_s} s")
            for records in consumer.poll(timeout_ms=200, max_records=100_000).values():
                for r in records:
                    out.append((r.partition, r.key, r.value, list(r.headers or [])))
                    n += len(envelope.decode(r.value, envelope.header(r.headers)))
    finally:
        consumer.close()
    if n != scans:
        raise RuntimeError(f"staging topic {topic}: {n} scans, expected {scans}")
    return out


def replay(bootstrap: str, topic: str, messages: list[tuple]) -> tuple[float, float]:
    """Send ``messages`` to ``topic`` (same partitions, keys, headers) as fast as possible.

    Returns the time of the first send and the seconds until the broker acknowledged all.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, batch_size=1024 * 1024,
                             max_request_size=8 * 1024 * 1024, allow_auto_create_topics=False,
                             client_id="bench-replay")
    try:
        producer.partitions_for(topic)  # metadata before the clock starts
        t0 = time.perf_counter()
        for partition, key, value, headers in messages:
            producer.send(topic, value=value, key=key, partition=partition, headers=headers)
        producer.flush()
        return t0, time.perf_counter() - t0
    finally:
        producer.close(10)


@dataclass
class Throughput:
    scans: int
    messages: int
    seconds: float | None
    publisher_s: float
    send_s: float | None = None
    cpu: dict = field(default_factory=dict)
    done: int = 0
    publisher_messages: int = 0
    complete: bool = True
    verdicts: dict = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.done / self.seconds if self.seconds and self.done else None

    @property
    def publisher_rate(self) -> float:
        return self.scans / self.publisher_s if self.publisher_s else float("inf")

    def as_dict(self) -> dict:
        return {"scans": self.scans, "scans_done": self.done, "complete": self.complete, "messages": self.messages,
                "scans_per_message": self.scans / self.messages if self.messages else None,
                "seconds": self.seconds, "scans_per_s": self.rate,
                "publisher_s": self.publisher_s, "publisher_scans_per_s": self.publisher_rate,
                "publisher_messages": self.publisher_messages, "replay_send_s": self.send_s, "cpu_s": self.cpu,
                "verdicts": self.verdicts}


def staged_phase(ctx: Ctx, events: list[dict], single: bool, per_envelope: int, timeout_s: float,
                 label: str) -> Throughput:
    """Time the publisher alone (to a staging topic), then the worker on the same scans (replayed)."""
    from scanstream.streams.publisher import ScanPublisher

    staging = f"bench-staging-{uuid.uuid4().hex[:8]}"
    ctx.broker.create_topics({staging: PARTITIONS})
    n = len(events)
    with ScanPublisher(ctx.broker.bootstrap, topic=staging, linger_ms=ctx.linger_ms) as pub:
        t = time.perf_counter()
        if single:
            for ev in events:
                pub.publish_single(ev)
        else:
            for lo in range(0, n, 10_000):
                pub.publish_many(events[lo:lo + 10_000])
        pub.flush()
        publisher_s = time.perf_counter() - t
        sealed = pub.stats()["singles" if single else "envelopes"]
    if single or per_envelope > 0:
        messages = build_messages(events, PARTITIONS, None if single else per_envelope)
    else:  # the publisher's own envelopes, as it sealed them at full speed
        messages = read_back(ctx.broker.bootstrap, staging, PARTITIONS, n)
    try:  # free the broker's memory; Tansu may not support it
        ctx.broker.admin().delete_topics([staging])
    except Exception:  # noqa: BLE001
        pass
    target = ctx.counter.count + n
    mix = ctx.counter.verdict_snapshot()
    before = ctx.cpu.read()
    t0, send_s = replay(ctx.broker.bootstrap, ctx.names["scans"], messages)
    t_end = ctx.counter.wait_for(target, timeout_s, ctx.worker.alive)
    cpu = CpuMeter.spent(before, ctx.cpu.read())
    done = n if t_end is not None else n - (target - ctx.counter.count)
    seconds = (t_end if t_end is not None else time.perf_counter()) - t0
    if t_end is None:
        why = "the worker exited" if not ctx.worker.alive() else worker_trouble(ctx.worker)
        ctx.note(f"{label}: only {done:,} of {n:,} outcomes after {seconds:.0f} s; {why}")
    return Throughput(n, len(messages), seconds, publisher_s, send_s, cpu, done, sealed, t_end is not None,
                      dict(ctx.counter.verdict_snapshot() - mix))


def worker_trouble(proc: Proc) -> str:
    """The worker's last warning or error, for a phase that stalled."""
    lines = [line for line in proc.log_tail(400).splitlines() if "WARNING" in line or "ERROR" in line]
    return f"its last warning: {lines[-1].strip()[:400]}" if lines else "no warning in its log"


# ---------------------------------------------------------------------------- latency


@dataclass
class Latency:
    target_rate: float
    scans: int
    publish_s: float
    samples_ms: list[float]
    timeouts: int
    late_pickups: int
    cpu: dict = field(default_factory=dict)
    drain_s: float | None = None
    errors: int = 0

    @property
    def achieved_rate(self) -> float:
        return self.scans / self.publish_s if self.publish_s else 0.0

    def pct(self, q: float) -> float | None:
        return float(np.percentile(self.samples_ms, q)) if self.samples_ms else None

    def as_dict(self) -> dict:
        return {"target_scans_per_s": self.target_rate, "achieved_scans_per_s": self.achieved_rate,
                "scans": self.scans, "publish_s": self.publish_s, "samples": len(self.samples_ms),
                "timeouts": self.timeouts, "errors": self.errors, "late_pickups": self.late_pickups,
                "p50_ms": self.pct(50), "p95_ms": self.pct(95), "p99_ms": self.pct(99),
                "max_ms": max(self.samples_ms) if self.samples_ms else None,
                "drain_after_publish_s": self.drain_s, "cpu_s": self.cpu}


def latency_phase(ctx: Ctx, events: list[dict], rate: float, every: int, waiters: int,
                  await_timeout_s: float = 5.0) -> Latency:
    from scanstream.streams.publisher import ScanPublisher

    url = ctx.redis_url
    if "max_connections=" not in url:  # one connection per waiting thread (redis-py's default pool holds 100)
        url += ("&" if "?" in url else "?") + f"max_connections={waiters + 16}"
    pub = ScanPublisher(ctx.broker.bootstrap, topic=ctx.names["scans"], linger_ms=ctx.linger_ms,
                        redis_url=url, prefix=ctx.prefix)
    pub.redis().ping()  # connect before the clock starts
    q: queue.SimpleQueue = queue.SimpleQueue()
    samples: list[float] = []
    late = timeouts = 0
    errors: list[str] = []
    lock = threading.Lock()

    def waiter() -> None:
        nonlocal late, timeouts
        while True:
            item = q.get()
            if item is None:
                return
            scan_id, t_pub = item
            lag = time.perf_counter() - t_pub
            try:
                outcome = pub.await_result(scan_id, timeout=await_timeout_s)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the phase goes on
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            dt = time.perf_counter() - t_pub
            with lock:
                if outcome is None:
                    timeouts += 1
                else:
                    samples.append(dt * 1000)
                    if lag > 0.005:
                        late += 1

    threads = [threading.Thread(target=waiter, name=f"await-{i}", daemon=True) for i in range(waiters)]
    for th in threads:
        th.start()
    n = len(events)
    target = ctx.counter.count + n
    before = ctx.cpu.read()
    try:
        t0 = time.perf_counter()
        i = 0
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            while i < due:
                ev = events[i]
                t = time.perf_counter()
                pub.publish(ev)
                if i % every == 0:
                    q.put((ev["scan_id"], t))
                i += 1
            time.sleep(0.0005)
        publish_s = time.perf_counter() - t0
        pub.flush(30)
        # a worker that fell behind need not catch up: it is stopped after this phase
        t_end = ctx.counter.wait_for(target, DRAIN_BOUND_S, ctx.worker.alive, stall_s=DRAIN_BOUND_S)
        drain = t_end - (t0 + publish_s) if t_end is not None else None
        if t_end is None:
            ctx.note(f"latency phase: {target - ctx.counter.count:,} outcomes still missing {DRAIN_BOUND_S:.0f} s "
                     f"after the last publish (the worker fell behind the paced rate)")
        for _ in threads:
            q.put(None)
        for th in threads:
            th.join(await_timeout_s + 5)
    finally:
        pub.close(10)
    cpu = CpuMeter.spent(before, ctx.cpu.read())
    if errors:
        ctx.note(f"latency phase: {len(errors)} await_result calls failed, e.g. {errors[0]}")
    return Latency(rate, n, publish_s, samples, timeouts, late, cpu, drain, len(errors))


# ---------------------------------------------------------------------------- naive agent


def naive_phase(ctx: Ctx, config: Path, names: dict[str, str], events: list[dict], warmup: list[dict],
                limit_s: float, label: str, extra: tuple[str, ...] = ()) -> tuple[Throughput, float]:
    """Start naive_agent.py, warm it up, then time ``events`` through it (single-scan messages)."""
    from scanstream.streams.publisher import ScanPublisher

    log_name = re.sub(r"\W+", "-", label) + ".log"
    agent = Proc(label, [sys.executable, str(Path(__file__).with_name("naive_agent.py")), "--config", str(config),
                         "--loglevel", "info", *extra], ctx.tmp / log_name, ctx.tmp)
    ctx.procs.append(agent)
    counter = ResultCounter(ctx.broker.bootstrap, names["results"], PARTITIONS)
    counter.start()
    try:
        with ScanPublisher(ctx.broker.bootstrap, topic=names["scans"], linger_ms=ctx.linger_ms) as pub:
            t = time.perf_counter()
            for ev in warmup:
                pub.publish_single(ev)
            pub.flush(30)
            if counter.wait_for(len(warmup), 120, agent.alive, stall_s=120) is None:
                raise RuntimeError(f"{label}: no outcome for its warm-up scans within 120 s; its log ends with:\n"
                                   f"{agent.log_tail()}")
            startup = time.perf_counter() - t
            meter = CpuMeter(agent.pid, ctx.broker.pid, ctx.redis)
            mix = counter.verdict_snapshot()
            before = meter.read()
            t0 = time.perf_counter()
            for ev in events:
                pub.publish_single(ev)
            pub.flush(30)
            publisher_s = time.perf_counter() - t0
        target = len(warmup) + len(events)
        t_end = counter.wait_for(target, max(limit_s - (time.perf_counter() - t0), 0.1), agent.alive,
                                 stall_s=limit_s)
        cpu = CpuMeter.spent(before, meter.read())
        done = len(events) if t_end is not None else counter.count - len(warmup)
        seconds = (t_end if t_end is not None else time.perf_counter()) - t0
        if t_end is None:
            ctx.note(f"{label}: {done:,} of {len(events):,} scans within the {limit_s:.0f} s bound; "
                     f"its rate is scans done / {seconds:.1f} s")
        return Throughput(len(events), len(events), seconds, publisher_s, None, cpu, done, len(events),
                          t_end is not None, dict(counter.verdict_snapshot() - mix)), startup
    finally:
        counter.stop()
        agent.stop()


# ---------------------------------------------------------------------------- run


@dataclass
class Ctx:
    tmp: Path
    broker: Any
    names: dict[str, str]
    redis_url: str
    prefix: str
    redis: Any
    linger_ms: int
    counter: ResultCounter | None = None
    worker: Proc | None = None
    cpu: CpuMeter | None = None
    procs: list[Proc] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--scans", type=int, default=200_000, help="scans of the envelope phase (default 200000)")
    p.add_argument("--envelope-scans", type=int, default=DEFAULT_ENVELOPE_SCANS,
                   help=f"scans per envelope sent to the worker (default {DEFAULT_ENVELOPE_SCANS}: one publisher at "
                        f"{GOAL_RATE:,} scans/s, 5 ms linger, {PARTITIONS} partitions); 0: the envelopes "
                        f"publish_many sealed at full speed")
    p.add_argument("--single-scans", type=int, default=10_000,
                   help="scans of the single-scan-per-message phase (default 10000)")
    p.add_argument("--naive-scans", type=int, default=5_000, help="scans through the naive agent (default 5000)")
    p.add_argument("--naive-seconds", type=float, default=60.0,
                   help="bound on the naive agent's timed phase, seconds (default 60)")
    p.add_argument("--latency-rate", type=float, default=10_000, help="paced publish rate, scans/s (default 10000)")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="length of the paced phase (default 10)")
    p.add_argument("--sample-every", type=int, default=20, help="await every N-th paced scan (default 20)")
    p.add_argument("--waiters", type=int, default=256, help="threads awaiting sampled outcomes (default 256)")
    p.add_argument("--warmup", type=int, default=2_000, help="scans before the timed phases (default 2000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the first stream; later phases add 1, 2, ...")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "local.toml",
                   help="configuration to start from (default config/local.toml)")
    p.add_argument("--redis-url", default=os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL),
                   help=f"Redis (default ${REDIS_URL_ENV} or {DEFAULT_REDIS_URL})")
    p.add_argument("--skip-naive", action="store_true", help="do not run the naive agent")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs, chdb)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args(argv)
    for name in ("scans", "single_scans", "naive_scans", "warmup", "sample_every", "waiters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.envelope_scans < 0:
        p.error("--envelope-scans must be 0 or more")
    if args.latency_rate <= 0 or args.latency_seconds <= 0 or args.naive_seconds <= 0:
        p.error("--latency-rate, --latency-seconds and --naive-seconds must be above 0")
    return args


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def cpu_text(cpu: dict, wall: float | None, who: str = "worker") -> str:
    """CPU use over a phase; ``agent`` is the worker or the naive agent (``who``)."""
    if not wall:
        return ""
    parts = [f"{who if k == 'agent' else k} {v / wall:.2f}" for k, v in cpu.items()
             if v is not None and "waiting" not in k]
    waited = cpu.get("agent waiting for a CPU")
    return "CPU cores busy: " + ", ".join(parts) + (
        f"; the {who}'s threads waited {waited:.1f} s in all for a CPU" if waited is not None else "")


def main(argv=None) -> int:
    args = parse_args(argv)
    if SCANSTREAM is None:
        print("error: the scanstream console script is not installed (pip install -e .)", file=sys.stderr)
        return 2
    import redis

    from scanstream.engine.config import load
    from scanstream.streams.broker import TansuBroker
    from scanstream.streams.publisher import ScanPublisher
    from scanstream.streams.synthetic import build_world

    info, version = machine("numpy", "orjson", "faust", "aiokafka", "kafka", "redis", "chdb"), code_version()
    load_avg = info["load_average"]
    print(f"machine: {info['platform']}")
    print(f"cpu:     {info['cpu']}, {info['cpu_count']} CPUs ({info['cpus_usable']} usable)"
          + (f", load average {load_avg[0]:.2f}" if load_avg else ""))
    print(f"python:  {info['python_impl']} {info['python']}, faust {info['faust']}, aiokafka {info['aiokafka']}, "
          f"kafka-python {info['kafka']}, redis-py {info['redis']}, chdb {info['chdb']}")
    print(f"engine:  commit {version['commit']}" + (f" + uncommitted changes in {', '.join(version['uncommitted'])}"
                                                     if version["uncommitted"] else ""))
    base_config = load(args.config)
    client = redis.Redis.from_url(args.redis_url, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"error: Redis does not answer on {args.redis_url}: {exc}", file=sys.stderr)
        return 2
    tag = uuid.uuid4().hex[:8]
    prefix = f"scanstream-bench:{tag}:"
    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    broker = TansuBroker(log_path=tmp / "tansu.log")
    ctx = Ctx(tmp, broker, topic_names(tag), args.redis_url, prefix, client, base_config.kafka.linger_ms)
    naive_names, bare_names = topic_names(f"naive-{tag}"), topic_names(f"naive-bare-{tag}")
    doc: dict[str, Any] = {"machine": info, "code": version}
    t_run = time.perf_counter()
    try:
        # ------------------------------------------------------------ inputs
        t = time.perf_counter()
        world = build_world(7, base_config.keys.get(7, 1), 1)
        world.write_registry(tmp / "registry")
        seeds = iter(range(args.seed, args.seed + 10))
        latency_n = int(args.latency_rate * args.latency_seconds)
        warm = make_events(world, args.warmup, next(seeds), "w")
        env_events = make_events(world, args.scans, next(seeds), "e")
        single_events = make_events(world, args.single_scans, next(seeds), "s")
        lat_events = make_events(world, latency_n, next(seeds), "l")
        naive_events = make_events(world, args.naive_scans, next(seeds), "n") if not args.skip_naive else []
        naive_warm = make_events(world, 50, next(seeds), "nw") if not args.skip_naive else []
        bare_events = make_events(world, args.naive_scans, next(seeds), "b") if not args.skip_naive else []
        bare_warm = make_events(world, 50, next(seeds), "bw") if not args.skip_naive else []
        gen_s = time.perf_counter() - t

        broker.start()
        all_topics = {n: PARTITIONS for k, n in ctx.names.items() if k != "group"}
        for names in (naive_names, bare_names):
            all_topics.update({n: PARTITIONS for k, n in names.items() if k != "group"})
        broker.create_topics(all_topics)
        cfg = write_config(args.config, tmp / "worker.toml", tmp / "registry", tmp / "chdb", broker.bootstrap,
                           ctx.names, args.redis_url, prefix)
        cfg_naive = write_config(args.config, tmp / "naive.toml", tmp / "registry", tmp / "chdb-naive",
                                 broker.bootstrap, naive_names, args.redis_url, prefix)
        cfg_bare = write_config(args.config, tmp / "naive-bare.toml", tmp / "registry", tmp / "chdb-naive",
                                broker.bootstrap, bare_names, args.redis_url, prefix)
        k = load(cfg).kafka
        print(f"setup:   Tansu {broker.bootstrap} (pid {broker.pid}), Redis {args.redis_url} under a fresh prefix, "
              f"chdb in a temp folder; topics of {PARTITIONS} partitions; worker: take {k.take} messages or "
              f"{k.within_ms} ms, session timeout {k.session_timeout_s:g} s; publisher linger {k.linger_ms} ms")
        print(f"input:   synthetic world of `scanstream demo` ({args.config.name}); streams generated in "
              f"{gen_s:.1f} s: "
              f"warm-up {len(warm):,}, envelopes {len(env_events):,}, single {len(single_events):,}, "
              f"latency {len(lat_events):,}, naive {len(naive_events):,} scans")
        print(flush=True)

        # ------------------------------------------------------------ worker
        ctx.counter = ResultCounter(broker.bootstrap, ctx.names["results"], PARTITIONS)
        ctx.counter.start()
        t = time.perf_counter()
        ctx.worker = Proc("worker", [SCANSTREAM, "--config", str(cfg), "worker", "--loglevel", "info"],
                          tmp / "worker.log", tmp)
        ctx.procs.append(ctx.worker)
        with ScanPublisher(broker.bootstrap, topic=ctx.names["scans"], linger_ms=ctx.linger_ms) as pub:
            pub.publish_many(warm)
            pub.flush(30)
        if ctx.counter.wait_for(len(warm), 180, ctx.worker.alive, stall_s=180) is None:
            raise RuntimeError(f"the worker gave no outcome for its warm-up scans within 180 s; its log ends "
                               f"with:\n{ctx.worker.log_tail()}")
        startup_s = time.perf_counter() - t
        print(f"[0] worker started and warmed up: {len(warm):,} scans answered {startup_s:.1f} s after its start",
              flush=True)
        ctx.cpu = CpuMeter(ctx.worker.pid, broker.pid, client)

        envelopes = staged_phase(ctx, env_events, False, args.envelope_scans, 300, "envelope phase")
        print(f"[1] envelopes: {envelopes.done:,} of {envelopes.scans:,} scans in {envelopes.messages:,} messages "
              f"({envelopes.scans / envelopes.messages:,.0f} scans each) in {fmt(envelopes.seconds, '.2f')} s; "
              f"publisher alone {envelopes.publisher_s:.2f} s", flush=True)
        single = lat = None
        if envelopes.complete:
            single = staged_phase(ctx, single_events, True, 0, 300, "single-scan phase")
            print(f"[2] single-scan messages: {single.done:,} of {single.scans:,} scans in "
                  f"{fmt(single.seconds, '.2f')} s; publisher alone {single.publisher_s:.2f} s", flush=True)
        if single is not None and single.complete:
            lat = latency_phase(ctx, lat_events, args.latency_rate, args.sample_every, args.waiters)
            print(f"[3] latency: {lat.scans:,} scans published in {lat.publish_s:.1f} s, {len(lat.samples_ms):,} "
                  f"outcomes awaited", flush=True)
        else:
            ctx.note("the worker is stuck: later worker phases skipped")
        worker_log = ctx.worker.log_path.read_text(errors="replace")
        retries = len(re.findall(r"retrying in", worker_log))
        worker_stop_s = ctx.worker.stop()

        naive = naive_startup = bare = bare_startup = None
        if not args.skip_naive:
            naive, naive_startup = naive_phase(ctx, cfg_naive, naive_names, naive_events, naive_warm,
                                               args.naive_seconds, "naive agent")
            print(f"[4] naive agent: {naive.done:,} of {naive.scans:,} scans in {fmt(naive.seconds, '.1f')} s "
                  f"(started and warmed up in {naive_startup:.1f} s)", flush=True)
            bare, bare_startup = naive_phase(ctx, cfg_bare, bare_names, bare_events, bare_warm,
                                             min(args.naive_seconds, BARE_BOUND_S), "naive agent without insert",
                                             ("--no-insert",))
            print(f"[5] naive agent without the per-event insert: {bare.done:,} of {bare.scans:,} scans in "
                  f"{fmt(bare.seconds, '.1f')} s (started and warmed up in {bare_startup:.1f} s)", flush=True)

        # ------------------------------------------------------------ report
        print()
        ratio = envelopes.rate / naive.rate if naive and naive.rate and envelopes.rate else None
        ratio_single = single.rate / naive.rate if naive and naive.rate and single and single.rate else None
        w = 47

        def row(label: str, t: Throughput | None) -> None:
            if t is None:
                return
            print(f"{label:<{w}} {t.done:>9,} {t.messages:>9,} {fmt(t.seconds, '.2f'):>8} {fmt(t.rate):>10} "
                  f"{fmt(t.publisher_rate):>11}" + ("" if t.complete else "  (incomplete)"))

        print(f"{'throughput':<{w}} {'scans':>9} {'messages':>9} {'time s':>8} {'scans/s':>10} {'publisher':>11}")
        print(f"{'':<{w}} {'':>9} {'':>9} {'':>8} {'':>10} {'scans/s':>11}")
        row(f"worker, envelopes ({envelopes.scans / envelopes.messages:,.0f} scans each)", envelopes)
        row("worker, one scan per message", single)
        row("naive agent, one scan per message", naive)
        row("  the same without its per-event insert", bare)
        print(f"  worker rows: from the first message sent to the worker's topic until the last scan's outcome was "
              f"read back; sending took {fmt(envelopes.send_s, '.2f')} s"
              + (f" / {single.send_s:.2f} s" if single else "") + " of it")
        print(f"  publisher column: ScanPublisher alone, one thread, to a staging topic nobody reads "
              f"(publish_many in chunks of 10 000: {envelopes.publisher_messages:,} envelopes, "
              f"{envelopes.scans / max(envelopes.publisher_messages, 1):,.0f} scans each; publish_single)")
        print("  naive rows: from the first publish_single until the last outcome (the publisher is far ahead); "
              "the second row leaves out the chdb insert per scan (information only)")
        for label, t in (("envelopes", envelopes), ("single", single), ("naive", naive),
                         ("naive without insert", bare)):
            if t is not None and t.seconds:
                per_cpu = t.done / t.cpu["agent"] if t.cpu.get("agent") else None
                print(f"  {label}: {cpu_text(t.cpu, t.seconds, 'agent' if label.startswith('naive') else 'worker')}"
                      + (f"; {per_cpu:,.0f} scans per {'agent' if label.startswith('naive') else 'worker'} "
                         f"CPU second"
                         if per_cpu else ""))
        for label, t in (("envelopes", envelopes), ("single", single), ("naive", naive),
                         ("naive without insert", bare)):
            if t is not None and t.verdicts:
                total = sum(t.verdicts.values())
                print(f"  {label} verdicts: " + ", ".join(f"{v} {c / total:.1%}" for v, c in
                                                         sorted(t.verdicts.items(), key=lambda kv: -kv[1])))
        if ratio is not None:
            print(f"worker (envelopes) / naive agent: {ratio:.1f}x"
                  + (f"; worker (one scan per message) / naive agent: {ratio_single:.1f}x" if ratio_single else ""))
        print()
        if lat is not None:
            print(f"latency publish -> await_result: {lat.scans:,} scans published at {lat.achieved_rate:,.0f} "
                  f"scans/s (target {lat.target_rate:,.0f}) for {lat.publish_s:.1f} s with ScanPublisher.publish; "
                  f"every {args.sample_every}th awaited: {len(lat.samples_ms):,} samples")
            print(f"  p50 {fmt(lat.pct(50), '.1f')} ms   p95 {fmt(lat.pct(95), '.1f')} ms   "
                  f"p99 {fmt(lat.pct(99), '.1f')} ms   "
                  f"max {fmt(max(lat.samples_ms) if lat.samples_ms else None, '.1f')}"
                  f" ms   timeouts (5 s): {lat.timeouts}   picked up > 5 ms late by the waiter pool: {lat.late_pickups}"
                  + (f"   failed: {lat.errors}" if lat.errors else ""))
            if lat.late_pickups:
                print("  a sample picked up late was already waiting for a thread: its latency is an upper bound "
                      "(more --waiters, or a larger --sample-every)")
            print(f"  last outcome on the results topic {fmt(lat.drain_s, '.2f')} s after the last publish; "
                  f"{cpu_text(lat.cpu, lat.publish_s)}")
            print()
        print(f"worker: ready and warm {startup_s:.1f} s after start; stopped {worker_stop_s:.1f} s after SIGTERM; "
              f"{retries} retry warnings in its log")
        for note in ctx.notes:
            print(f"note: {note}")
        print()
        p99 = lat.pct(99) if lat else None
        goals = {
            "envelopes_rate": {"target": GOAL_RATE, "value": envelopes.rate,
                               "pass": bool(envelopes.complete and envelopes.rate and envelopes.rate >= GOAL_RATE)},
            "vs_naive": {"target": GOAL_RATIO, "value": ratio, "pass": bool(ratio and ratio >= GOAL_RATIO)},
            "p99_latency_ms": {"target": GOAL_P99_MS, "value": p99,
                               "at_scans_per_s": lat.achieved_rate if lat else None,
                               "pass": bool(p99 is not None and p99 < GOAL_P99_MS and lat.timeouts == 0
                                            and lat.errors == 0)},
        }

        def goal(text: str, g: dict, value: str) -> None:
            print(f"goal: {text}: {'PASS' if g['pass'] else 'MISS'} ({value})")

        goal(f">= {GOAL_RATE:,} scans/s per worker with envelopes", goals["envelopes_rate"],
             f"{fmt(envelopes.rate)} scans/s" + ("" if envelopes.complete else ", incomplete"))
        goal(f">= {GOAL_RATIO:g}x the naive agent", goals["vs_naive"],
             f"{ratio:.1f}x" if ratio is not None else "no ratio")
        goal(f"p99 publish -> outcome < {GOAL_P99_MS:g} ms at {args.latency_rate:,.0f} scans/s",
             goals["p99_latency_ms"], (f"p99 {fmt(p99, '.1f')} ms at {lat.achieved_rate:,.0f} scans/s"
                                       + (f", {lat.timeouts} timeouts" if lat.timeouts else "")) if lat else "not run")
        print("goal: Redis dedup memory <= 1.1 bits per issued code: measured by benchmarks/bench_state_memory.py")
        end_load = os.getloadavg() if hasattr(os, "getloadavg") else None
        print(f"\nrun took {time.perf_counter() - t_run:.0f} s"
              + (f"; load average at the end {end_load[0]:.2f} (1 min), {end_load[1]:.2f} (5 min) on "
                 f"{info['cpus_usable']} CPUs: other processes share them" if end_load else ""))

        if args.json:
            doc.update({
                "params": {k2: (str(v) if isinstance(v, Path) else v) for k2, v in vars(args).items()},
                "setup": {"partitions": PARTITIONS, "take": k.take, "within_ms": k.within_ms,
                          "session_timeout_s": k.session_timeout_s, "linger_ms": k.linger_ms,
                          "generate_s": gen_s, "load_average_end": list(end_load) if end_load else None},
                "worker": {"startup_s": startup_s, "stop_s": worker_stop_s, "retry_warnings": retries},
                "envelopes": envelopes.as_dict(),
                "single": single.as_dict() if single else None,
                "latency": lat.as_dict() if lat else None,
                "naive": {**naive.as_dict(), "startup_s": naive_startup} if naive else None,
                "naive_without_insert": {**bare.as_dict(), "startup_s": bare_startup} if bare else None,
                "ratios": {"envelopes_vs_naive": ratio, "single_vs_naive": ratio_single},
                "notes": ctx.notes,
                "goals": goals,
            })
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0
    finally:
        t_clean = time.perf_counter()
        cleanup = [*((f"stop {proc.name}", proc.stop) for proc in ctx.procs),
                   *([("results consumer", ctx.counter.stop)] if ctx.counter else []), ("broker", broker.stop),
                   ("Redis keys", lambda: delete_prefix(client, prefix)), ("Redis client", client.close)]
        slow = []
        for name, step in cleanup:
            t = time.perf_counter()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"cleanup: {name}: {exc!r}", file=sys.stderr)
            if time.perf_counter() - t > 1:
                slow.append(f"{name} {time.perf_counter() - t:.0f} s")
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"cleanup took {time.perf_counter() - t_clean:.0f} s" + (f" ({', '.join(slow)})" if slow else ""))


if __name__ == "__main__":
    sys.exit(main())
