"""Fault harness: real ``scanstream worker`` processes on a real broker, Redis and chdb, broken on purpose.

What it gives a test (or ``python -m tests.faults.harness``):

- ``Scenario``: one isolated deployment on shared services: unique topic names, consumer
  group and Redis prefix, a generated configuration (Redis state, chdb in a temporary folder,
  ``partitions = 4``, ``session_timeout_s = 4``, a small ``take`` so that batches are many),
  fresh random signing keys and campaign seeds (given as hex, through the environment and in a
  key file, so that the secrets test has something to look for), a registry for one or more
  tenants and campaigns whose stock runs out mid-stream;
- ``Worker``: a ``scanstream worker`` subprocess: ``start``, ``kill9``, ``stop`` (SIGTERM);
- ``ScanProducer``: publishes a synthetic stream (``streams.synthetic``) as the scan API does:
  keyed by code, one partition per code, JSON-lines envelopes of a few dozen scans;
  ``publish_paced`` spreads it over time so that faults hit a worker mid-stream.  It knows the
  name under which every line's outcome must appear (its scan_id, or ``pos:`` + its position);
- ``TopicWatcher``: a background consumer (``assign()``, from the first offset) of an output
  topic: results, awards, dead letters; it also searches every message for the secrets;
- ``PrivateRedis`` (a redis-server of our own, to stop and start) and ``FrozenStorage`` (makes
  the chdb data folder immutable with ``chattr +i``: every insert of the embedded ClickHouse
  fails at its part directory, as on a read-only disk, until it is lifted);
- ``check_promises``: after the workers stopped, queries the stores (several chdb folders are
  merged into one, as one ClickHouse server would hold them), the topics and the Redis state
  and returns a ``Report`` with the figures and every promise that was broken.

Scale: ``SCANSTREAM_FAULTS=long`` (or ``--long``) selects the long form; the default is the short
form that CI runs.
"""
from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
MODE_ENV = "SCANSTREAM_FAULTS"
REDIS_URL_ENV = "SCANSTREAM_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Every artifact (worker log, topic) a scenario produced in this process, for the secrets test.
ARTIFACTS: list[Scenario] = []

DEMO_DAY_START_MS = 1795132800000  # streams.synthetic.DEMO_START_MS (2026-11-20T08:00+08:00)
MS_PER_DAY = 86_400_000


# --------------------------------------------------------------------------- scale


@dataclass(frozen=True)
class Scale:
    name: str
    crash_scans: int
    crash_kills: int
    race_scans: int
    outage_scans: int
    redis_outage_s: float
    clickhouse_outage_s: float
    fuzz_batches: int  # hypothesis examples of the in-process fuzz (about 60 events each)
    fuzz_worker_events: int
    tenant_scans: int  # per tenant
    wait_s: float  # upper bound of any wait for a stream to be processed


SHORT = Scale("short", crash_scans=30_000, crash_kills=5, race_scans=12_000, outage_scans=10_000,
              redis_outage_s=8, clickhouse_outage_s=8, fuzz_batches=130, fuzz_worker_events=1_500,
              tenant_scans=2_000, wait_s=240)
LONG = Scale("long", crash_scans=200_000, crash_kills=20, race_scans=100_000, outage_scans=60_000,
             redis_outage_s=30, clickhouse_outage_s=30, fuzz_batches=1_000, fuzz_worker_events=6_000,
             tenant_scans=20_000, wait_s=1_800)


def scale(name: str | None = None) -> Scale:
    name = name or os.environ.get(MODE_ENV, "short")
    if name not in ("short", "long"):
        raise ValueError(f"{MODE_ENV}={name!r}: expected 'short' or 'long'")
    return LONG if name == "long" else SHORT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tenants, campaigns, secrets


@dataclass
class TenantSpec:
    """A tenant and how its key reaches the configuration: ``hex``, ``env`` or ``file``."""

    id: int
    key: bytes
    key_id: int = 1
    via: str = "hex"
    name: str = ""


@dataclass
class CampaignSpec:
    id: str
    tenant: int
    seed: str
    budget_cents: int
    daily_cap: int
    tiers: list[tuple[str, int, float, int]]  # name, cents, probability, stock
    utc_offset_minutes: int = -180  # the synthetic day (00:00-14:00 UTC) crosses midnight at 03:00 UTC
    via: str = "env"  # seed given as ``seed`` or through ``seed_env``
    skus: tuple[str, ...] = ("BEER-500", "BEER-330", "CRAFT-IPA")

    def model(self):
        """The engine's Campaign (for draws and limits)."""
        from scanstream.engine.lottery import Campaign, Tier
        return Campaign(id=self.id, tenant=self.tenant, start_ms=1793462400000, end_ms=1798732800000,
                        budget_cents=self.budget_cents, daily_cap=self.daily_cap,
                        tiers=tuple(Tier(n, c, p, s) for n, c, p, s in self.tiers), seed=self.seed,
                        skus=self.skus, utc_offset_minutes=self.utc_offset_minutes)

    def day(self, ts_ms: int) -> int:
        return (ts_ms + self.utc_offset_minutes * 60_000) // MS_PER_DAY


def stocked_campaign(cid: str, tenant: int, scans: int, *, cap: int = 3, seed: str | None = None,
                     via: str = "env") -> CampaignSpec:
    """A campaign whose tiers run out about halfway through a stream of ``scans`` scans and whose
    budget is a little short of paying every stocked prize."""
    eligible = scans * 0.8  # genuine first consumer scans of the synthetic mix
    tiers = []
    # the rare tiers run out first (about a quarter into the stream), the common ones about halfway
    for name, cents, p, share in (("8.8", 880, 0.20, 0.5), ("16.6", 1660, 0.05, 0.5), ("88", 8800, 0.005, 0.3),
                                  ("168", 16800, 0.001, 0.25)):
        tiers.append((name, cents, p, max(1, int(p * eligible * share))))
    budget = int(sum(c * s for _, c, _, s in tiers) * 0.95)
    return CampaignSpec(cid, tenant, seed or f"seed-{uuid.uuid4().hex}", budget, cap, tiers, via=via)


def secret_needles(tenants: Iterable[TenantSpec], campaigns: Iterable[CampaignSpec]) -> dict[str, bytes]:
    """What must never appear anywhere: keys (raw, hex in any case), seeds and derived draw keys.

    Hex needles are lower case and searched in lower-cased text."""
    needles: dict[str, bytes] = {}
    for t in tenants:
        needles[f"tenant {t.id} key (raw)"] = t.key
        needles[f"tenant {t.id} key (hex)"] = t.key.hex().encode()
    for c in campaigns:
        needles[f"campaign {c.id} seed"] = c.seed.encode()
        draw_key = c.model().key
        needles[f"campaign {c.id} draw key (raw)"] = draw_key
        needles[f"campaign {c.id} draw key (hex)"] = draw_key.hex().encode()
    return needles


def find_secrets(data: bytes, needles: dict[str, bytes]) -> list[str]:
    """Names of the needles found in ``data`` (hex ones case-insensitively)."""
    if not data:
        return []
    lower = None
    found = []
    for name, needle in needles.items():
        if name.endswith("(hex)"):
            lower = data.lower() if lower is None else lower
            if needle in lower:
                found.append(name)
        elif needle in data:
            found.append(name)
    return found


# --------------------------------------------------------------------------- registry and streams


def write_registry(directory: Path, worlds: list) -> None:
    """The four CSV files for the synthetic worlds of several tenants (dealers prefixed per tenant)."""
    import csv

    from scanstream.streams.synthetic import BATCHES, DEALERS, SHIPMENTS, STORES

    directory.mkdir(parents=True, exist_ok=True)
    rows = {"batches": [], "dealers": [], "shipments": [], "stores": []}
    for w in worlds:
        d = (lambda dealer, t=w.tenant: f"T{t}-{dealer}" if dealer else "")
        rows["batches"] += [(w.tenant, *b[1:]) for b in BATCHES]
        rows["dealers"] += [(d(i), w.tenant, name, ch, regions, manager, "")
                            for i, name, ch, regions, manager, _ in DEALERS]
        rows["shipments"] += [(w.tenant, b, k, lo, hi, d(dealer), "2026-11-01")
                              for _, b, k, lo, hi, dealer in SHIPMENTS]
        rows["stores"] += [(sid, w.tenant, d(dealer), w.districts[prefix][0][0], ch)
                           for sid, dealer, prefix, ch in STORES]
    headers = {"batches": ["tenant", "batch", "kind", "sku", "product", "activated", "size"],
               "dealers": ["dealer_id", "tenant", "name", "channel", "regions", "manager", "webhook"],
               "shipments": ["tenant", "batch", "kind", "serial_from", "serial_to", "dealer_id", "shipped_at"],
               "stores": ["store_id", "tenant", "dealer_id", "region", "channel"]}
    for name, header in headers.items():
        with (directory / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows[name])


def make_stream(world, n: int, seed: int, id_prefix: str = "") -> list[bytes]:
    """``streams.synthetic.generate_scans`` with every scan_id (and bad event id) prefixed."""
    from scanstream.streams.synthetic import generate_scans

    lines = generate_scans(world, n, seed=seed)
    if not id_prefix:
        return lines
    out = []
    cache: dict[bytes, bytes] = {}
    for line in lines:
        if line in cache:  # a redelivered line stays the same bytes
            out.append(cache[line])
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        if isinstance(event, dict) and isinstance(event.get("scan_id"), str):
            event["scan_id"] = id_prefix + event["scan_id"]
            new = orjson.dumps(event)
        else:
            new = line
        cache[line] = new
        out.append(new)
    return out


def inprocess_config(registry: Path, tenants: list[TenantSpec], campaigns: list[CampaignSpec], *,
                     redis_url: str | None = None, prefix: str = "scanstream-faults:", partitions: int = 4):
    """A ``Config`` for a ``BatchHandler`` in this process (``config/local.toml`` with our tenants,
    campaigns, registry and Redis; no ClickHouse unless the caller passes one to the handler)."""
    from dataclasses import replace

    from scanstream.engine.config import Tenant, load
    from scanstream.engine.keys import KeyTable

    base = load(REPO / "config" / "local.toml")
    return replace(base, tenants={t.id: Tenant(t.id, t.name or f"tenant {t.id}") for t in tenants},
                   keys=KeyTable({(t.id, t.key_id): t.key for t in tenants}), registry_dir=registry,
                   clickhouse="", state_backend="redis" if redis_url else "memory",
                   redis=replace(base.redis, url=redis_url or base.redis.url, prefix=prefix, result_ttl_s=600),
                   kafka=replace(base.kafka, partitions=partitions, scans_topic="fuzz-scans"),
                   campaigns=tuple(c.model() for c in campaigns))


# --------------------------------------------------------------------------- publishing


@dataclass
class _Sent:
    future: Any
    lines: list[bytes] | None  # the lines of an envelope; None for a raw record
    value: bytes | None
    headers: list[tuple[str, bytes]]


class ScanProducer:
    """Publishes scans to the ``scans`` topic as the scan API's publisher does and remembers
    where every message landed.

    Scans are keyed by their code (``streams.publisher.code_key``), partitioned like Kafka's
    default partitioner and sent as JSON-lines envelopes (``application/x-ndjson``) of at most
    ``per_envelope`` scans of one partition, in order, one request in flight (per-code order).
    ``send_record`` sends anything (fuzz).  After ``flush``, ``names()`` is the outcome name of
    every line: its scan_id as the worker's parse stage reads it, or ``pos:topic/p@offset:i``.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, per_envelope: int = 50):
        from kafka import KafkaProducer

        self.topic = topic
        self.partitions = partitions
        self.per_envelope = per_envelope
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=10, linger_ms=2,
                                      max_in_flight_requests_per_connection=1, max_request_size=4_000_000,
                                      client_id="faults-scan-api")
        self.sent: list[_Sent] = []
        self.lines = 0
        self._lock = threading.Lock()

    def partition_of(self, line: bytes) -> int:
        from scanstream.streams.publisher import code_key, partition_for
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        code = event.get("code") if isinstance(event, dict) else None
        key = code_key(code) if isinstance(code, str) else line[:64]
        return partition_for(key, self.partitions)

    def send_lines(self, lines: list[bytes]) -> None:
        from scanstream.streams import envelope

        by_partition: dict[int, list[bytes]] = collections.defaultdict(list)
        for line in lines:
            by_partition[self.partition_of(line)].append(line)
        headers = [(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())]
        with self._lock:
            for p, part in sorted(by_partition.items()):
                for start in range(0, len(part), self.per_envelope):
                    chunk = part[start:start + self.per_envelope]
                    value = envelope.encode(chunk)
                    future = self.producer.send(self.topic, value, partition=p, headers=headers)
                    self.sent.append(_Sent(future, chunk, value, headers))
            self.lines += len(lines)

    def send_record(self, value: bytes | None, headers: list[tuple[str, bytes]], partition: int | None = None,
                    key: bytes | None = None) -> None:
        with self._lock:
            future = self.producer.send(self.topic, value, key=key, partition=partition, headers=headers)
            self.sent.append(_Sent(future, None, value, headers))

    def publish_paced(self, lines: list[bytes], duration_s: float, steps: int = 60) -> threading.Thread:
        """Send ``lines`` in ``steps`` slices spread over ``duration_s`` seconds, in a thread."""
        steps = max(1, steps)

        def run():
            size = max(1, -(-len(lines) // steps))
            t0 = time.monotonic()
            for i, start in enumerate(range(0, len(lines), size)):
                self.send_lines(lines[start:start + size])
                self.producer.flush(60)
                pause = t0 + duration_s * (i + 1) / steps - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            self.producer.flush(120)

        thread = threading.Thread(target=run, name="faults-publisher", daemon=True)
        thread.start()
        return thread

    def flush(self, timeout_s: float = 120) -> None:
        self.producer.flush(timeout_s)
        for s in self.sent:
            s.future.get(timeout_s)  # raises when the broker did not take it

    def records(self) -> list[tuple[int, int, _Sent]]:
        """(partition, offset, sent) of every message, after ``flush``."""
        out = []
        for s in self.sent:
            md = s.future.get(60)
            out.append((md.partition, md.offset, s))
        return out

    def names(self) -> list[tuple[str, bytes, str]]:
        """(outcome name, line, position) of every scan line sent, after ``flush``.

        The lines of a message are what ``streams.envelope.decode`` makes of it (the worker's
        own reading); a message it refuses carries no lines (it is dead-lettered whole)."""
        from scanstream.ext.scanparse import parse_events

        from scanstream.streams import envelope

        out = []
        for p, offset, s in self.records():
            try:
                lines = envelope.decode(s.value, envelope.header(s.headers))
            except envelope.EnvelopeError:
                continue
            ids = parse_events(lines)["scan_id"].tolist() if lines else []
            for i, (line, sid) in enumerate(zip(lines, ids)):
                position = f"{self.topic}/{p}@{offset}:{i}"
                out.append((sid if sid else f"pos:{position}", line, position))
        return out

    def close(self) -> None:
        self.producer.close(30)


# --------------------------------------------------------------------------- watching output topics


@dataclass
class Message:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class TopicWatcher(threading.Thread):
    """Consumes one topic from its first offset (``assign()``, no group) until stopped.

    ``handle(message)`` is called for each message in the consumer thread; ``keep`` keeps
    every message in ``messages``.  Every message's key, value and headers are searched for
    ``needles`` (``find_secrets``); hits go to ``secrets_found``.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, *, handle: Callable[[Message], None] | None = None,
                 keep: bool = False, needles: dict[str, bytes] | None = None):
        super().__init__(name=f"watch-{topic}", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.handle = handle
        self.keep = keep
        self.needles = needles or {}
        self.messages: list[Message] = []
        self.count = 0
        self.secrets_found: list[str] = []
        self.last_message = time.monotonic()
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        try:
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                     auto_offset_reset="earliest", client_id=f"faults-{self.topic}",
                                     max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024)
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            try:
                while not self._halt.is_set():
                    polled = consumer.poll(timeout_ms=500, max_records=5000)
                    for tp, batch in polled.items():
                        for m in batch:
                            msg = Message(tp.partition, m.offset, m.key, m.value, list(m.headers or []))
                            if self.needles:
                                blob = b"\0".join([m.key or b"", m.value or b""] +
                                                  [n.encode() + b"=" + (v or b"") for n, v in msg.headers])
                                for hit in find_secrets(blob, self.needles):
                                    self.secrets_found.append(f"{hit} in {self.topic}/{tp.partition}@{m.offset}")
                            with self.lock:
                                if self.keep:
                                    self.messages.append(msg)
                                if self.handle is not None:
                                    self.handle(msg)
                                self.count += 1
                            self.last_message = time.monotonic()
            finally:
                consumer.close()
        except BaseException as exc:  # reported by the test through .error
            self.error = exc

    def idle_s(self) -> float:
        return time.monotonic() - self.last_message

    def drain(self, idle_s: float = 3.0, timeout_s: float = 120.0) -> None:
        """Wait until nothing new came for ``idle_s`` (the producers are done)."""
        deadline = time.monotonic() + timeout_s
        while self.idle_s() < idle_s and time.monotonic() < deadline:
            time.sleep(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


class ResultsIndex:
    """What the results topic said: rows per scan_id, and whether a scan_id's answers agree."""

    FIELDS = ("verdict", "prize_tier", "prize_cents", "tenant", "kind", "batch", "serial")

    def __init__(self):
        self.rows = 0
        self.count: collections.Counter[str] = collections.Counter()
        self.answer: dict[str, tuple] = {}
        self.disagree: dict[str, list[tuple]] = {}
        self.bad_messages = 0

    def __call__(self, msg: Message) -> None:
        from scanstream.streams import envelope
        try:
            lines = envelope.decode(msg.value, envelope.header(msg.headers))
        except envelope.EnvelopeError:
            self.bad_messages += 1
            return
        for line in lines:
            row = orjson.loads(line)
            sid = row["scan_id"]
            self.rows += 1
            self.count[sid] += 1
            answer = tuple(row[f] for f in self.FIELDS)
            first = self.answer.setdefault(sid, answer)
            if answer != first:
                self.disagree.setdefault(sid, [first]).append(answer)


# --------------------------------------------------------------------------- processes


class Worker:
    """One ``scanstream worker`` process with its own chdb folder and log (appended across restarts)."""

    def __init__(self, scenario: Scenario, label: str):
        self.scenario = scenario
        self.label = label
        self.chdb = scenario.root / f"chdb-{label}"
        self.config = scenario.write_config(scenario.root / f"worker-{label}.toml", self.chdb)
        self.log_path = scenario.root / f"worker-{label}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        atexit.register(self._last_resort)

    def start(self) -> Worker:
        if SCANSTREAM is None:
            raise RuntimeError("the scanstream console script is not installed (pip install -e .)")
        assert not self.alive(), "already running"
        self.starts += 1
        with self.log_path.open("ab") as fh:
            fh.write(f"=== harness: start #{self.starts} of worker {self.label} ===\n".encode())
            self.proc = subprocess.Popen([SCANSTREAM, "--config", str(self.config), "worker", "--loglevel", "info"],
                                         stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.scenario.root, env=self.scenario.env())
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.alive(), f"worker {self.label} is not running:\n{self.log_tail()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1
        with self.log_path.open("ab") as fh:
            fh.write(f"=== harness: kill -9 #{self.kills} of worker {self.label} ===\n".encode())

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then SIGKILL when it has not exited after ``timeout_s``; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode

    def _last_resort(self) -> None:
        if self.alive():
            self.proc.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


class PrivateRedis:
    """A redis-server of our own on a free port, to stop and start (the shared one is never touched).

    ``--save ""`` (no snapshots) with the append-only file fsynced at every write: a Redis that
    forgets its state on a restart breaks every promise by construction (dedup bitmaps, prizes,
    stock), so persistence is a deployment requirement; the outage tested here is the service
    being down, not its data being thrown away.
    """

    def __init__(self, root: Path):
        self.dir = root / "private-redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "redis.log"
        atexit.register(self._last_resort)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30) -> PrivateRedis:
        import redis

        with self.log_path.open("ab") as fh:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir), "--daemonize", "no"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_path.read_text()[-2000:]}")
            try:
                client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=2)
                if client.ping():
                    client.close()
                    return self
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server on {self.port} did not answer within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _last_resort(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


class FrozenStorage:
    """Makes a chdb data folder's table storage immutable (``chattr -R +i``) while active.

    The embedded ClickHouse then fails every insert when it creates the new part's directory
    ("filesystem error: in create_directories: Operation not permitted"), like a server whose
    disk went read-only, and works again once the flag is lifted.  Needs CAP_LINUX_IMMUTABLE
    and a filesystem with the flag (``FrozenStorage.available``).
    """

    _active: list[Path] = []

    def __init__(self, chdb: Path):
        self.store = chdb / "store"

    @staticmethod
    def available(probe_dir: Path) -> bool:
        if shutil.which("chattr") is None:
            return False
        d = probe_dir / f"chattr-probe-{uuid.uuid4().hex[:6]}"
        d.mkdir(parents=True)
        try:
            if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
                return False
            try:
                (d / "x").touch()
                return False  # the flag is not enforced here
            except OSError:
                return True
        finally:
            subprocess.run(["chattr", "-i", str(d)], capture_output=True)
            shutil.rmtree(d, ignore_errors=True)

    def freeze(self) -> None:
        subprocess.run(["chattr", "-R", "+i", str(self.store)], check=True, capture_output=True)
        FrozenStorage._active.append(self.store)

    def thaw(self) -> None:
        subprocess.run(["chattr", "-R", "-i", str(self.store)], check=True, capture_output=True)
        if self.store in FrozenStorage._active:
            FrozenStorage._active.remove(self.store)

    def __enter__(self) -> FrozenStorage:
        self.freeze()
        return self

    def __exit__(self, *exc) -> None:
        self.thaw()


@atexit.register
def _thaw_everything() -> None:  # never leave an undeletable folder behind
    for store in list(FrozenStorage._active):
        subprocess.run(["chattr", "-R", "-i", str(store)], capture_output=True)


# --------------------------------------------------------------------------- stores (chdb folders)

_PROBE = r"""
import json, sys
from scanstream.sinks.clickhouse import ClickHouseSink, connect
req = json.loads(sys.stdin.read())
sink = ClickHouseSink(connect("chdb:" + req["path"], database=req["database"]))
out = {}
try:
    if req.get("ensure"):
        sink.ensure_schema()
    for table, blob in req.get("import", []):
        with open(blob, "rb") as fh:
            data = fh.read()
        if data:
            sink.client.raw_insert(table, insert_block=data, fmt="Native")
    for table, blob in req.get("export", []):
        with open(blob, "wb") as fh:
            fh.write(sink.client.raw_query(f"SELECT * FROM {table}", fmt="Native"))
    for name, sql in req.get("queries", {}).items():
        out[name] = [list(r) for r in sink.query(sql)[1]]
finally:
    sink.close()
sys.stdout.write(json.dumps(out, default=str))
"""

OUTCOME_TABLES = ("scan_events", "alerts", "awards")


def probe(chdb: Path, queries: dict[str, str] | None = None, *, ensure: bool = False,
          export: list[tuple[str, str]] | None = None, imports: list[tuple[str, str]] | None = None,
          database: str = "scanstream", timeout_s: float = 300) -> dict[str, list[list]]:
    """Run SQL on a chdb folder in a process of its own (chdb: one folder per process)."""
    req = {"path": str(chdb), "database": database, "queries": queries or {}, "ensure": ensure,
           "export": export or [], "import": imports or []}
    out = subprocess.run([sys.executable, "-c", _PROBE], input=json.dumps(req), capture_output=True, text=True,
                         cwd=REPO, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"chdb probe of {chdb} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def merge_stores(stores: list[Path], into: Path) -> Path:
    """One chdb folder holding the outcome tables of several (as one ClickHouse server would)."""
    if len(stores) == 1:
        return stores[0]
    blobs = []
    for i, s in enumerate(stores):
        export = [(t, str(into.parent / f"{into.name}-{i}-{t}.native")) for t in OUTCOME_TABLES]
        probe(s, export=export)
        blobs += export
    probe(into, ensure=True, imports=blobs)
    for _, blob in blobs:
        os.unlink(blob)
    return into


def scanstream_query(config: Path, sql: str, env: dict[str, str], cwd: Path) -> list[list[str]]:
    """``scanstream query`` as an operator would run it; rows as lists of cells."""
    out = subprocess.run([SCANSTREAM, "--config", str(config), "query", sql], capture_output=True, text=True,
                         cwd=cwd, timeout=180, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"scanstream query failed: {out.stderr[-2000:]}")
    return [line.split() for line in out.stdout.rstrip("\n").splitlines()[2:-1]]


# --------------------------------------------------------------------------- the scenario


class Scenario:
    """One isolated deployment on the shared broker and Redis (see the module docstring)."""

    def __init__(self, root: Path, bootstrap: str, redis_url: str, *, label: str, tenants: list[TenantSpec],
                 campaigns: list[CampaignSpec], partitions: int = 4, take: int = 4, within_ms: int = 50,
                 per_envelope: int = 50, session_timeout_s: float = 4, worlds: list | None = None):
        from scanstream.streams.synthetic import build_world

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.label = label
        self.tenants = tenants
        self.campaigns = campaigns
        self.partitions = partitions
        self.take = take
        self.within_ms = within_ms
        self.session_timeout_s = session_timeout_s
        tag = uuid.uuid4().hex[:8]
        self.topics = {k: f"faults-{label}-{k}-{tag}" for k in ("scans", "results", "awards", "alerts", "dlq")}
        self.group = f"faults-{label}-{tag}"
        self.prefix = f"scanstream-faults:{label}:{tag}:"
        self._env: dict[str, str] = {}
        self.needles = secret_needles(tenants, campaigns)
        self.worlds = worlds or [build_world(t.id, t.key, t.key_id) for t in tenants]
        self.registry = self.root / "registry"
        write_registry(self.registry, self.worlds)
        self.workers: list[Worker] = []
        self.watchers: dict[str, TopicWatcher] = {}
        self.results = ResultsIndex()
        self.awards_seen: dict[str, list[dict]] = collections.defaultdict(list)
        self._create_topics()
        self.producer = ScanProducer(bootstrap, self.topics["scans"], partitions, per_envelope)
        ARTIFACTS.append(self)

    # -- configuration ---------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
        env.update(self._env)
        return env

    def _key_toml(self, t: TenantSpec) -> str:
        if t.via == "hex":
            return f'{{ key_id = {t.key_id}, hex = "{t.key.hex()}" }}'
        if t.via == "env":
            var = f"FAULTS_KEY_{t.id}_{t.key_id}"
            self._env[var] = t.key.hex().upper()  # upper case: the grep must find any case
            return f'{{ key_id = {t.key_id}, env = "{var}" }}'
        path = self.root / f"key-{t.id}-{t.key_id}.hex"
        path.write_text(t.key.hex() + "\n", encoding="ascii")
        return f"{{ key_id = {t.key_id}, file = {json.dumps(str(path))} }}"

    def _campaign_toml(self, c: CampaignSpec) -> str:
        if c.via == "env":
            var = "FAULTS_SEED_" + "".join(ch if ch.isalnum() else "_" for ch in c.id).upper()
            self._env[var] = c.seed
            seed = f"seed_env = {json.dumps(var)}"
        else:
            seed = f"seed = {json.dumps(c.seed)}"
        tiers = ",\n".join(f'  {{ name = "{n}", cents = {cents}, probability = {p}, stock = {s} }}'
                           for n, cents, p, s in c.tiers)
        return f"""
[[campaigns]]
id = {json.dumps(c.id)}
tenant = {c.tenant}
skus = {json.dumps(list(c.skus))}
start = 2026-11-01T00:00:00+08:00
end = 2027-01-01T00:00:00+08:00
budget_cents = {c.budget_cents}
daily_cap = {c.daily_cap}
utc_offset_minutes = {c.utc_offset_minutes}
{seed}
tiers = [
{tiers}
]
"""

    def write_config(self, path: Path, chdb: Path, redis_url: str | None = None) -> Path:
        from config_writer import toml_table
        tenants = "".join(f"""
[[tenants]]
id = {t.id}
name = {json.dumps(t.name or f"tenant {t.id}")}
keys = [{self._key_toml(t)}]
""" for t in self.tenants)
        k = self.topics
        text = f"""# generated by tests/faults/harness.py for scenario {self.label}
{tenants}
[engine]
replay_ttl_hours = 24

[registry]
dir = {json.dumps(str(self.registry))}
reload_seconds = 3600

[state]
backend = "redis"

[sink]
clickhouse = {json.dumps("chdb:" + str(chdb))}

[alerts]
webhooks = false
allow_loopback = true

""" + toml_table("redis", {"url": redis_url or self.redis_url, "prefix": self.prefix, "result_ttl_s": 7200}) + "\n" + \
            toml_table("kafka", {"bootstrap": self.bootstrap, **{f"{n}_topic": k[n] for n in
                                                                  ("scans", "results", "awards", "alerts", "dlq")},
                                 "group": self.group, "partitions": self.partitions, "take": self.take,
                                 "within_ms": self.within_ms, "session_timeout_s": self.session_timeout_s}) + """
""" + "".join(self._campaign_toml(c) for c in self.campaigns)
        path.write_text(text, encoding="utf-8")
        return path

    def _create_topics(self) -> None:
        from scanstream.engine.config import KafkaSettings
        from scanstream.streams.topics import ensure_topics

        ensure_topics(KafkaSettings(bootstrap=self.bootstrap, scans_topic=self.topics["scans"],
                                    results_topic=self.topics["results"], awards_topic=self.topics["awards"],
                                    alerts_topic=self.topics["alerts"], dlq_topic=self.topics["dlq"],
                                    partitions=self.partitions))

    # -- processes and watchers ------------------------------------------------------------

    def worker(self, label: str) -> Worker:
        w = Worker(self, label)
        self.workers.append(w)
        return w

    def watch(self) -> None:
        """Start consuming the results, awards and dead-letter topics."""
        def on_award(msg: Message) -> None:
            self.awards_seen[(msg.key or b"").decode()].append(orjson.loads(msg.value))

        self.watchers = {
            "results": TopicWatcher(self.bootstrap, self.topics["results"], self.partitions, handle=self.results,
                                    needles=self.needles),
            "awards": TopicWatcher(self.bootstrap, self.topics["awards"], self.partitions, handle=on_award,
                                   needles=self.needles),
            "dlq": TopicWatcher(self.bootstrap, self.topics["dlq"], self.partitions, keep=True, needles=self.needles),
            "alerts": TopicWatcher(self.bootstrap, self.topics["alerts"], self.partitions, needles=self.needles),
        }
        for w in self.watchers.values():
            w.start()

    def answered(self) -> int:
        with self.watchers["results"].lock:
            return len(self.results.count)

    def wait_done(self, names: set[str], timeout_s: float, workers: list[Worker] | None = None,
                  on_tick: Callable[[], None] | None = None) -> None:
        """Until every name has a row on the results topic; raises on timeout or a dead worker."""
        deadline = time.monotonic() + timeout_s
        workers = self.workers if workers is None else workers
        while True:
            with self.watchers["results"].lock:
                missing = [n for n in names if n not in self.results.count] if len(self.results.count) >= len(names) \
                    else None
            if missing == []:
                return
            for w in workers:
                if w.proc is not None and not w.alive():
                    raise RuntimeError(f"worker {w.label} exited ({w.proc.returncode}):\n{w.log_tail()}")
            err = self.watchers["results"].error
            if err is not None:
                raise RuntimeError(f"results watcher failed: {err!r}")
            if time.monotonic() > deadline:
                have = self.answered()
                raise TimeoutError(f"{len(names) - have if missing is None else len(missing)} of {len(names)} "
                                   f"scans have no result after {timeout_s:.0f} s")
            if on_tick is not None:
                on_tick()
            time.sleep(0.5)

    def redis_client(self, url: str | None = None):
        import redis
        return redis.Redis.from_url(url or self.redis_url, socket_timeout=30)

    def close(self, *, redis_urls: Iterable[str] = ()) -> None:
        for w in self.workers:
            if w.alive():
                w.stop()
        for watcher in self.watchers.values():
            if watcher.is_alive():
                watcher.stop()
        try:
            self.producer.close()
        except Exception:
            pass
        for url in [self.redis_url, *redis_urls]:
            try:
                client = self.redis_client(url)
                keys = list(client.scan_iter(match=f"{self.prefix}*", count=5000))
                for i in range(0, len(keys), 5000):
                    client.delete(*keys[i:i + 5000])
                client.close()
            except Exception:
                pass


# --------------------------------------------------------------------------- promises


def local_reference(sc: Scenario, lines: list[bytes]):
    """The local driver's outcomes for the same stream (memory state store, no sinks): what a
    worker that never failed would find, for the figures that are not promises (alerts)."""
    import tomllib
    from dataclasses import replace

    from scanstream.engine.config import parse
    from scanstream.engine.state.memory import MemoryStateStore
    from scanstream.wiring import build_pipeline

    path = sc.write_config(sc.root / "local-reference.toml", sc.root / "unused-chdb")
    saved = {k: os.environ.get(k) for k in sc._env}
    os.environ.update(sc._env)
    try:
        config = parse(tomllib.loads(path.read_text(encoding="utf-8")), path)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    config = replace(config, clickhouse="", state_backend="memory")
    return build_pipeline(config, state=MemoryStateStore()).process(lines)




@dataclass
class Report:
    scenario: str
    lines: int = 0
    scan_ids: int = 0
    rows_final: int = 0
    distinct_final: int = 0
    rows_raw: int = 0
    lost: int = 0
    doubled: int = 0
    unexpected: int = 0
    results_rows: int = 0
    results_missing: int = 0
    results_disagree: int = 0
    replies_missing: int = 0
    dead_letters: int = 0
    invalid_lines: int = 0
    invalid_not_dead_lettered: int = 0
    prizes: int = 0
    paid_cents: int = 0
    out_of_stock: int = 0
    budget_refusals: int = 0
    cap_refusals: int = 0
    campaigns: dict[str, dict[str, Any]] = field(default_factory=dict)
    kills: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        self.violations.append(msg)

    def figures(self) -> str:
        camp = "; ".join(f"{cid}: {c['prizes']} prizes, {c['paid_cents'] / 100:.2f} of {c['budget_cents'] / 100:.2f} "
                         f"yuan, tiers {c['tiers']}" for cid, c in self.campaigns.items())
        extra = "".join(f", {k} {v}" for k, v in self.extra.items())
        return (f"[{self.scenario}] kills survived {self.kills}, lines {self.lines}, scans {self.scan_ids}, "
                f"rows {self.rows_final} (raw {self.rows_raw}), results rows {self.results_rows}, "
                f"dead letters {self.dead_letters}, prizes {self.prizes} ({self.paid_cents / 100:.2f} yuan), "
                f"refused: out_of_stock {self.out_of_stock}, budget {self.budget_refusals}, cap {self.cap_refusals}; "
                f"lost = {self.lost}, doubled = {self.doubled}, results missing = {self.results_missing}, "
                f"violations = {len(self.violations)}{extra}. {camp}")


def assert_report(rep: Report) -> None:
    """Print the figures (``pytest -s`` shows them) and fail with every violation."""
    print(rep.figures())
    assert not rep.violations, f"{len(rep.violations)} promises broken in {rep.scenario}:\n" + "\n".join(
        v[:2000] for v in rep.violations)


def _identity(field_bytes: bytes) -> tuple[int, int, int, int]:
    key, serial = int.from_bytes(field_bytes[:8], "little"), int.from_bytes(field_bytes[8:12], "little")
    return key >> 26, (key >> 24) & 3, key & 0xFFFFFF, serial


def check_promises(sc: Scenario, sent: list[tuple[str, bytes, str]], *, stores: list[Path] | None = None,
                   redis_url: str | None = None, kills: int = 0, require_exhaustion: bool = True,
                   check_replies: bool = True, reference=None) -> Report:
    """Check every promise of issue 5 after the workers stopped; returns the figures and violations.

    ``sent`` is ``ScanProducer.names()``: (outcome name, line, position) of every line published.
    ``reference`` (``local_reference``) adds figures that are not promises: alerts the local
    driver raises for the same stream that the workers did not store.
    """
    rep = Report(sc.label, kills=kills)
    assert not any(w.alive() for w in sc.workers), "stop the workers first: chdb is one process per folder"
    names = {n for n, _, _ in sent}
    rep.lines, rep.scan_ids = len(sent), len(names)

    # -- the ClickHouse side, merged into one store as one server would hold it
    stores = stores or [w.chdb for w in sc.workers]
    store = merge_stores(sorted(set(stores)), sc.root / "chdb-merged")
    q = probe(store, {
        "final": "SELECT count(), uniqExact(scan_id) FROM scan_events FINAL",
        "raw": "SELECT count() FROM scan_events",
        "ids": "SELECT scan_id FROM scan_events FINAL",
        "draws": "SELECT campaign, draw, count() FROM scan_events FINAL GROUP BY campaign, draw",
        "won": "SELECT scan_id, tenant, kind, batch, serial, campaign, prize_tier, prize_cents, user_id, "
               "toUnixTimestamp64Milli(ts) FROM scan_events FINAL WHERE draw = 'won'",
        "prized_not_won": "SELECT count() FROM scan_events FINAL WHERE prize_cents > 0 AND draw != 'won'",
        "awards": "SELECT scan_id, tenant, kind, batch, serial, campaign, prize_tier, prize_cents, user_id, "
                  "toUnixTimestamp64Milli(ts) FROM awards FINAL",
        "awards_raw": "SELECT tenant, campaign, kind, batch, serial, uniqExact(scan_id), "
                      "uniqExact(prize_tier, prize_cents) FROM awards GROUP BY tenant, campaign, kind, batch, serial "
                      "HAVING uniqExact(scan_id) > 1 OR uniqExact(prize_tier, prize_cents) > 1",
        "invalid": "SELECT scan_id FROM scan_events FINAL WHERE verdict = 'invalid_event'",
        "replayed": "SELECT scan_id FROM scan_events FINAL WHERE replay = 1",
        "alerts": "SELECT alert_id FROM alerts FINAL",
    })
    copies = collections.Counter(n for n, _, _ in sent)
    # a scan published once whose only stored row says replay = 1: its first processing failed
    # after the claim (crash, outage) and the retry found its own claim
    rep.extra["first deliveries stored as replay=1"] = sum(1 for (sid,) in q["replayed"] if copies.get(sid) == 1)
    if reference is not None:
        want = set(reference.alerts["alert_id"].tolist())
        got = {a for (a,) in q["alerts"]}
        rep.extra["alerts"] = len(got)
        rep.extra["alerts lost vs local driver"] = len(want - got)
    (count, distinct), = q["final"]
    rep.rows_final, rep.distinct_final, rep.rows_raw = int(count), int(distinct), int(q["raw"][0][0])
    stored = {r[0] for r in q["ids"]}
    lost = names - stored
    extra = stored - names
    rep.lost = len(lost)
    rep.unexpected = len(extra)
    rep.doubled = rep.rows_final - rep.distinct_final
    if lost:
        rep.fail(f"{len(lost)} published scans are not in scan_events, e.g. {sorted(lost)[:5]}")
    if extra:
        rep.fail(f"{len(extra)} scan_events rows were never published, e.g. {sorted(extra)[:5]}")
    if rep.doubled:
        rep.fail(f"scan_events FINAL has {rep.rows_final} rows for {rep.distinct_final} scan_ids")

    # -- scan-results: every scan at least once, and every answer of a scan_id the same
    for w in sc.watchers.values():
        w.drain(idle_s=3)
    with sc.watchers["results"].lock:
        rep.results_rows = sc.results.rows
        missing = names - set(sc.results.count)
        rep.results_disagree = len(sc.results.disagree)
        disagree = dict(list(sc.results.disagree.items())[:3])
    rep.results_missing = len(missing)
    if missing:
        rep.fail(f"{len(missing)} scans never appeared on scan-results, e.g. {sorted(missing)[:5]}")
    if disagree:
        rep.fail(f"{rep.results_disagree} scan_ids got different answers on scan-results: {disagree}")

    # -- dead letters: every invalid_event line, with its reason and original bytes
    dlq = sc.watchers["dlq"]
    with dlq.lock:
        dead = list(dlq.messages)
    rep.dead_letters = len(dead)
    dead_by_pos = {dict(m.headers).get("scanstream-position", b"").decode(): m for m in dead}
    invalid = {r[0] for r in q["invalid"]}
    lines_of = {}
    for name, line, pos in sent:
        if name in invalid:
            lines_of.setdefault(name, []).append((line, pos))
    rep.invalid_lines = sum(len(v) for v in lines_of.values())
    bad = []
    copies_of = collections.Counter(n for n, _, _ in sent)
    for name, items in lines_of.items():
        for line, pos in items:
            m = dead_by_pos.get(pos)
            # a reused scan_id is answered as a replay of its first line: the reason may be that line's
            if m is None or m.value != line or (copies_of[name] == 1 and not dict(m.headers).get("scanstream-reason")):
                bad.append(pos)
    rep.invalid_not_dead_lettered = len(bad)
    if bad:
        rep.fail(f"{len(bad)} invalid events are not on the dead-letter topic with reason and bytes, e.g. {bad[:3]}")

    # -- Redis replies for the scan API
    client = sc.redis_client(redis_url)
    if check_replies:
        ordered = sorted(names)
        missing_replies = 0
        for i in range(0, len(ordered), 5000):
            pipe = client.pipeline(transaction=False)
            for n in ordered[i:i + 5000]:
                pipe.exists(f"{sc.prefix}reply:{n}")
            missing_replies += sum(1 for x in pipe.execute() if not x)
        rep.replies_missing = missing_replies
        if missing_replies:
            rep.fail(f"{missing_replies} scans have no Redis reply")

    # -- prizes: one per code, budget, stock, daily cap; Redis, table and topic agree
    for campaign, draw, n in q["draws"]:
        n = int(n)
        if draw == "out_of_stock":
            rep.out_of_stock += n
        elif draw == "budget":
            rep.budget_refusals += n
        elif draw == "cap":
            rep.cap_refusals += n
    if int(q["prized_not_won"][0][0]):
        rep.fail(f"{q['prized_not_won'][0][0]} scans carry prize money without draw = won")
    won_by_code: dict[tuple, list] = collections.defaultdict(list)
    for sid, tenant, kind, batch, serial, campaign, tier, cents, user, ts in q["won"]:
        won_by_code[(campaign, int(tenant), int(kind), int(batch), int(serial))].append((sid, tier, int(cents)))
    twice = {k: v for k, v in won_by_code.items() if len(v) > 1}
    if twice:
        rep.fail(f"{len(twice)} codes won in more than one scan: {list(twice.items())[:3]}")
    if q["awards_raw"]:
        rep.fail(f"{len(q['awards_raw'])} codes have award rows of different scans or prizes: {q['awards_raw'][:3]}")
    awards = {}
    for sid, tenant, kind, batch, serial, campaign, tier, cents, user, ts in q["awards"]:
        awards[(campaign, int(tenant), int(kind), int(batch), int(serial))] = (sid, tier, int(cents), user, int(ts))
    if {k: v[0] for k, v in won_by_code.items()} != {k: (a[0], a[1], a[2]) for k, a in awards.items()}:
        only_scans = set(won_by_code) - set(awards)
        only_awards = set(awards) - set(won_by_code)
        rep.fail(f"awards table and scan_events disagree: {len(only_scans)} wins without an award row, "
                 f"{len(only_awards)} awards without a winning scan")
    rep.prizes = len(awards)
    rep.paid_cents = sum(a[2] for a in awards.values())
    with sc.watchers["awards"].lock:
        topic_awards = {k: list(v) for k, v in sc.awards_seen.items()}
    for c in sc.campaigns:
        mine = {k: a for k, a in awards.items() if k[0] == c.id}
        paid = sum(a[2] for a in mine.values())
        tiers = collections.Counter(a[1] for a in mine.values())
        stock = {n: s for n, _, _, s in c.tiers}
        info = {"prizes": len(mine), "paid_cents": paid, "budget_cents": c.budget_cents,
                "tiers": {n: f"{tiers.get(n, 0)}/{stock[n]}" for n in stock}}
        rep.campaigns[c.id] = info
        if paid > c.budget_cents:
            rep.fail(f"campaign {c.id}: paid {paid} cents, budget {c.budget_cents}")
        for n, got in tiers.items():
            if n not in stock or got > stock[n]:
                rep.fail(f"campaign {c.id}: tier {n} paid {got} times, stock {stock.get(n)}")
        per_day = collections.Counter((a[3], c.day(a[4])) for a in mine.values())
        info["max_prizes_user_day"] = max(per_day.values(), default=0)
        over = {k: v for k, v in per_day.items() if v > c.daily_cap}
        if over:
            rep.fail(f"campaign {c.id}: users over the daily cap {c.daily_cap}: {list(over.items())[:3]}")
        for k in mine:
            if k[1] != c.tenant:
                rep.fail(f"campaign {c.id} of tenant {c.tenant} paid a code of tenant {k[1]}: {k}")
        # the Redis state: what was granted, and what is left
        base = f"{sc.prefix}cp:{{{c.id}}}"
        h = {k.decode(): int(v) for k, v in client.hgetall(base).items()}
        granted = {(c.id, *_identity(f)): tuple(v.decode().split(":")) for f, v in client.hgetall(base + ":aw").items()}
        info["redis_prizes"] = len(granted)
        if h:
            if h["prizes"] != len(granted) or h["budget"] != c.budget_cents - paid:
                rep.fail(f"campaign {c.id}: Redis says {h['prizes']} prizes, budget left {h['budget']}; the awards "
                         f"table says {len(mine)} prizes, {c.budget_cents - paid} left")
            for t, (n, _, _, s) in enumerate(c.tiers):
                if h.get(f"s{t}") != s - tiers.get(n, 0):
                    rep.fail(f"campaign {c.id}: Redis stock of tier {n} is {h.get(f's{t}')}, the awards table "
                             f"leaves {s - tiers.get(n, 0)}")
            if require_exhaustion and not any(h.get(f"s{t}") == 0 for t in range(len(c.tiers))):
                rep.fail(f"campaign {c.id}: no tier ran out of stock; the scenario did not test exhaustion")
        names_of = [n for n, _, _, _ in c.tiers]
        lost_awards = [k for k in granted if k not in mine]
        if lost_awards:
            rep.fail(f"campaign {c.id}: {len(lost_awards)} prizes granted in Redis are not in the awards table, "
                     f"e.g. {lost_awards[:3]}")
        for k, (t, cents) in granted.items():
            a = mine.get(k)
            if a is not None and (a[1], a[2]) != (names_of[int(t)], int(cents)):
                rep.fail(f"campaign {c.id}: Redis granted {k} tier {t} {cents}, the table says {a[1]} {a[2]}")
            on_topic = topic_awards.get(f"{k[1]}:{k[2]}:{k[3]}:{k[4]}", [])
            if not any(r["campaign"] == c.id and r["prize_cents"] == int(cents) for r in on_topic):
                rep.fail(f"campaign {c.id}: granted prize {k} never reached the awards topic")
        for dkey in client.scan_iter(match=f"{base}:ud:*", count=1000):
            for user, got in client.hgetall(dkey).items():
                if int(got) > c.daily_cap:
                    rep.fail(f"campaign {c.id}: Redis counts {int(got)} prizes for {user!r} on {dkey!r}")
    client.close()
    for name, w in sc.watchers.items():
        if w.error is not None:
            rep.fail(f"watcher of {name} failed: {w.error!r}")
    return rep


# --------------------------------------------------------------------------- scenarios


def new_key() -> bytes:
    return os.urandom(16)


def crash_scenario(root: Path, bootstrap: str, redis_url: str, sc_: Scale, *, seed: int = 1,
                   kill_seed: int | None = None) -> Report:
    """Test 1: ``kills`` kill -9 of the worker at random moments while it works; restart each time.

    The kill moments are random (``kill_seed``, logged, makes a run's moments repeatable)."""
    kill_seed = kill_seed if kill_seed is not None else int.from_bytes(os.urandom(4), "big")
    log(f"crash: kill moments from kill_seed={kill_seed}")
    rng = random.Random(kill_seed)
    tenants = [TenantSpec(7, new_key(), key_id=1, via="env", name="Crash Brewery")]
    campaigns = [stocked_campaign("crash-campaign", 7, sc_.crash_scans)]
    sc = Scenario(root, bootstrap, redis_url, label="crash", tenants=tenants, campaigns=campaigns, take=4,
                  per_envelope=40)
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


def race_scenario(root: Path, bootstrap: str, redis_url: str, sc_: Scale, *, seed: int = 2) -> Report:
    """Test 2: two workers in one group; the second joins mid-stream, later the first is stopped."""
    tenants = [TenantSpec(7, new_key(), key_id=0, via="hex", name="Race Brewery")]
    campaigns = [stocked_campaign("race-campaign", 7, sc_.race_scans, via="seed")]
    sc = Scenario(root, bootstrap, redis_url, label="race", tenants=tenants, campaigns=campaigns, take=4,
                  per_envelope=40)
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


def outage_scenario(root: Path, bootstrap: str, shared_redis_url: str, sc_: Scale, *, seed: int = 3,
                    clickhouse: bool = True) -> Report:
    """Test 3: the worker's Redis (a private server) stopped mid-stream, then its ClickHouse storage
    frozen; the worker keeps running, retries, reports it, and catches up."""
    redis_server = PrivateRedis(root).start()
    tenants = [TenantSpec(7, new_key(), key_id=1, via="file", name="Outage Brewery")]
    campaigns = [stocked_campaign("outage-campaign", 7, sc_.outage_scans)]
    sc = Scenario(root, bootstrap, redis_server.url, label="outage", tenants=tenants, campaigns=campaigns, take=4,
                  per_envelope=40)
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
        publishing.join(sc_.wait_s)
        sc.producer.flush()
        sent = sc.producer.names()
        sc.wait_done({n for n, _, _ in sent}, sc_.wait_s)
        if not worker.alive():
            raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
        worker.stop()
        rep = check_promises(sc, sent, redis_url=redis_server.url, reference=local_reference(sc, lines))
        rep.extra["seconds"] = round(time.monotonic() - t0)
        rep.extra["clickhouse outage made by"] = "chattr +i on the chdb storage" if can_freeze else "not possible here"
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
        redis_server.stop()


def tenants_scenario(root: Path, bootstrap: str, redis_url: str, sc_: Scale, *, seed: int = 5) -> Report:
    """Test 5: tenants A (7) and B (8), a campaign each (B's first and with A's skus); forged codes."""
    from scanstream.ext import codec

    a = TenantSpec(7, new_key(), key_id=1, via="hex", name="Tenant A")
    b = TenantSpec(8, new_key(), key_id=0, via="env", name="Tenant B")
    camp_b = stocked_campaign("tenant-b-campaign", 8, sc_.tenant_scans * 4, cap=50)
    camp_a = stocked_campaign("tenant-a-campaign", 7, sc_.tenant_scans * 4, cap=50)
    sc = Scenario(root, bootstrap, redis_url, label="tenants", tenants=[a, b], campaigns=[camp_b, camp_a], take=8)
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
                         genuine: list[str]) -> Report:
    """Test 4 on a real worker: fuzzed records on the ``scans`` topic, then every promise checked.

    ``corpus`` holds (value, headers, events) records; each goes to a random partition with a
    random key, followed by a few genuine scans (the worker must still be working)."""
    from scanstream.streams import envelope

    campaigns = [stocked_campaign("fuzz-worker-campaign", 7, 2_000)]
    sc = Scenario(root, bootstrap, redis_url, label="fuzz", tenants=[tenant], campaigns=campaigns, take=8)
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


def _searchable_files(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".toml" and not path.name.startswith("key-"):
            yield path  # configuration and key files hold the secrets by design


def grep_secrets(scenarios: list[Scenario]) -> tuple[list[str], int, int]:
    """Test 6: each scenario's keys, seeds and draw keys searched in every file it left (worker
    logs, the private Redis's log, chdb data) and every message of its results, dead-letter,
    awards and alerts topics (consumed again from the start).  Returns (hits, files, messages)."""
    found, files = [], 0
    for sc in scenarios:
        for path in _searchable_files(sc.root):
            files += 1
            found += [f"{hit} in {path}" for hit in find_secrets(path.read_bytes(), sc.needles)]
    watchers = [TopicWatcher(sc.bootstrap, sc.topics[name], sc.partitions, needles=sc.needles)
                for sc in scenarios for name in ("results", "dlq", "awards", "alerts")]
    for w in watchers:
        w.start()
    time.sleep(2)
    for w in watchers:  # all consume at once; each is done when its topic stays quiet
        w.drain(idle_s=3, timeout_s=300)
    for w in watchers:
        w.stop()
        if w.error is not None:
            raise RuntimeError(f"consuming {w.topic} failed: {w.error!r}")
        found += w.secrets_found
    return found, files, sum(w.count for w in watchers)


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
    parser.add_argument("--only", default="crash,race,outage,fuzz,tenants",
                        help="comma-separated scenarios: crash, race, outage, fuzz, tenants (the secrets search "
                             "over all of them always runs last)")
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
    runs = {"crash": crash_scenario, "race": race_scenario, "outage": outage_scenario, "fuzz": fuzz_scenario,
            "tenants": tenants_scenario}
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
