"""Per-scan cost of one phase of ``bench_worker.py``, component by component.

For a phase (the worker's envelopes, the naive agent) a ``CostProbe`` takes readings at the
same two instants as the phase's CPU meter and turns them into figures per scan:

- the process's CPU (the phase's ``CpuMeter``: user + system from ``/proc/PID/stat``, every
  thread of the worker or agent);
- the Redis server: CPU (``INFO cpu``, used_cpu_user + used_cpu_sys) and commands
  (``INFO commandstats``: calls and usec per command).  Both count every client of the server,
  other users' too, so two idle windows of ``BACKGROUND_WINDOW_S``, just before and just after
  the phase, with the worker or agent idle, measure what the others spend meanwhile, and the
  server's own housekeeping (its timer, expiry), which alone weighs tens of µs per scan on a
  phase of 20 scans/s: ``background`` is their mean rate times the phase's seconds.  A command a script runs is
  counted as a command of its own and inside its script's usec as well.  A process that counts
  its own commands (the naive agent does) gets them apart: its calls, and their server time
  estimated as its calls times the phase's usec per call of each command;
- Redis entries: a walk of the keys under the phase's prefix (SCAN, TYPE, then HLEN / LLEN /
  SCARD / ZCARD / XLEN, a string counting as one entry, and ``MEMORY USAGE key SAMPLES 0``:
  every element counted, not sampled) before and after the phase, outside the timed section;
  the difference is what the phase created, by key family (the key's first word after the
  prefix: ``rh``, ``rp``, ``dd`` ...).  Bytes are ``MEMORY USAGE`` summed over the
  prefix's keys (this run's keys only, allocator overhead per key included); the server's
  ``used_memory`` difference is kept alongside, for information, since other users move it;
- ClickHouse (chdb): the wall seconds of the inserts over the rows inserted.  The worker's
  are its ``store`` step (``streams.checkpoint``: awards, alerts and scan_events of a batch,
  materialized views included), read from its ``/metrics`` (``scanstream_step_seconds{step=
  "store"}`` sum, and ``scanstream_scans_total`` for the scan rows stored); the naive agent's
  are its one-row inserts, timed in its insert thread and read from its ``--stats-file``;
- the broker: bytes of the records (key + value + header names and values, as a consumer
  reads them; not the broker's own batch framing, which Tansu keeps in memory) produced to
  the scans topic (summed over the messages the benchmark sends) and to each output topic
  (``scan-results`` read by the benchmark's results counter, ``awards``, ``alerts`` and the
  dead-letter topic by a ``TopicTally``).

Separate from the phases because it is accounting only: nothing here decides what a phase
sends or when its clock stops.
"""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Seconds of an idle window before a phase, in which the others' use of the Redis server is measured.
BACKGROUND_WINDOW_S = 2.0
#: Keys per SCAN call and per pipelined round of the census walk.
SCAN_COUNT = 1000
CENSUS_CHUNK = 1000
#: ``MEMORY USAGE ... SAMPLES 0``: count every element of an aggregate, not a sample of 5.
MEMORY_SAMPLES_ALL = 0
#: The command that gives the number of entries of a key of each type; a string is one entry.
ENTRY_COMMANDS = {"hash": "HLEN", "list": "LLEN", "set": "SCARD", "zset": "ZCARD", "stream": "XLEN"}
STRING_TYPE = "string"
MISSING_TYPE = "none"  # TYPE of a key that expired between SCAN and TYPE
#: A key's family: its first word (lowercase letters and underscores) after the prefix.
FAMILY_RE = re.compile(rb"[a-z_]+")
OTHER_FAMILY = "other"
#: Glob characters of SCAN MATCH, escaped in a prefix.
GLOB_SPECIAL_RE = re.compile(r"([*?\[\]\\])")
#: How long a scrape of the worker's /metrics may take.
METRICS_TIMEOUT_S = 5.0
#: The worker's metrics read here (``streams.metrics``).
STEP_SUM, STEP_COUNT, SCANS_TOTAL = "scanstream_step_seconds_sum", "scanstream_step_seconds_count", \
    "scanstream_scans_total"
STORE_STEP = "store"
#: An output tally is caught up when it read nothing for this long (longer than its fetch wait) ...
SETTLE_QUIET_S = 1.0
#: ... within this bound.
SETTLE_BOUND_S = 15.0
#: The tally's fetch wait: Tansu holds a fetch for its whole wait, so this bounds how stale it is.
TALLY_FETCH_WAIT_MS = 100
#: How long to wait for the naive agent's stats file to show the scans of a phase.
STATS_WAIT_S = 5.0
STATS_POLL_S = 0.1
US_PER_S = 1e6


# ---------------------------------------------------------------------------- broker bytes


@dataclass(frozen=True)
class TopicTotals:
    """Records and their bytes (key + value + headers) read from, or sent to, one topic."""

    messages: int = 0
    bytes: int = 0

    def __sub__(self, other: TopicTotals) -> TopicTotals:
        return TopicTotals(self.messages - other.messages, self.bytes - other.bytes)

    def __add__(self, other: TopicTotals) -> TopicTotals:
        return TopicTotals(self.messages + other.messages, self.bytes + other.bytes)


def record_size(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str | bytes, bytes]] | None) -> int:
    """Bytes of one record as a consumer reads it: key, value, and each header's name and value."""
    size = len(key or b"") + len(value or b"")
    for name, data in headers or ():
        size += len(name.encode() if isinstance(name, str) else name) + len(data or b"")
    return size


def messages_totals(messages: Iterable[tuple]) -> TopicTotals:
    """Totals of messages given as (partition, key, value, headers), as the benchmark sends them."""
    n = size = 0
    for _partition, key, value, headers in messages:
        n += 1
        size += record_size(key, value, headers)
    return TopicTotals(n, size)


class TopicTally(threading.Thread):
    """Counts the records and bytes of some topics (by role: ``awards``, ``alerts`` ...) as they arrive.

    ``assign()`` from the beginning, no group; ``totals()`` is a snapshot, ``settle()`` waits
    until nothing more arrives, so that the outputs of a finished phase are all counted.
    """

    def __init__(self, bootstrap: str, topics: dict[str, str], partitions: int):
        super().__init__(name="output-tally", daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.roles = {topic: role for role, topic in topics.items()}
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", fetch_max_wait_ms=TALLY_FETCH_WAIT_MS,
                                      client_id="bench-output-tally")
        parts = [TopicPartition(topic, p) for topic in topics.values() for p in range(partitions)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self._lock = threading.Lock()
        self._totals = {role: TopicTotals() for role in topics}
        self._last_read = time.perf_counter()
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                got = self.consumer.poll(timeout_ms=TALLY_FETCH_WAIT_MS, max_records=100_000)
                if not got:
                    continue
                seen: dict[str, TopicTotals] = {}
                for tp, records in got.items():
                    role = self.roles[tp.topic]
                    size = sum(record_size(r.key, r.value, r.headers) for r in records)
                    seen[role] = seen.get(role, TopicTotals()) + TopicTotals(len(records), size)
                with self._lock:
                    for role, add in seen.items():
                        self._totals[role] = self._totals[role] + add
                    self._last_read = time.perf_counter()
        except BaseException as exc:  # noqa: BLE001 - reported by totals()
            self.error = exc
        finally:
            self.consumer.close()

    def totals(self) -> dict[str, TopicTotals]:
        if self.error is not None:
            raise RuntimeError(f"the output tally failed: {self.error!r}") from self.error
        with self._lock:
            return dict(self._totals)

    def settle(self, quiet_s: float = SETTLE_QUIET_S, bound_s: float = SETTLE_BOUND_S) -> bool:
        """Wait until nothing was read for ``quiet_s``; False when ``bound_s`` passed first."""
        deadline = time.perf_counter() + bound_s
        while time.perf_counter() < deadline:
            with self._lock:
                quiet = time.perf_counter() - self._last_read
            if quiet >= quiet_s:
                return True
            time.sleep(quiet_s - quiet)
        return False

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# ---------------------------------------------------------------------------- Redis counters


@dataclass(frozen=True)
class RedisCounters:
    """The server-wide counters of ``INFO cpu``, ``INFO commandstats`` and ``INFO memory`` at one instant."""

    at: float
    cpu_s: float
    used_memory: int
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec)

    def minus(self, earlier: RedisCounters) -> RedisCounters:
        """What happened between ``earlier`` and this reading (commands that ran, only)."""
        commands = {}
        for name, (calls, usec) in self.commands.items():
            c0, u0 = earlier.commands.get(name, (0, 0))
            if calls - c0 > 0:
                commands[name] = (calls - c0, usec - u0)
        return RedisCounters(self.at - earlier.at, self.cpu_s - earlier.cpu_s, self.used_memory - earlier.used_memory,
                             commands)

    @property
    def calls(self) -> int:
        return sum(c for c, _ in self.commands.values())


def read_redis_counters(client) -> RedisCounters:
    """One reading of the server's counters (every client's work, not only this run's)."""
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    memory = client.info("memory")
    commands = {}
    for name, fields in stats.items():
        # redis-py names each entry cmdstat_<command> and parses its fields into a dict
        commands[name.removeprefix("cmdstat_")] = (int(fields["calls"]), int(fields["usec"]))
    return RedisCounters(time.perf_counter(), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
                         int(memory["used_memory"]), commands)


# ---------------------------------------------------------------------------- Redis census


@dataclass(frozen=True)
class Family:
    """Keys of one family under a prefix: how many, their entries, their ``MEMORY USAGE`` bytes."""

    keys: int = 0
    entries: int = 0
    bytes: int = 0

    def __add__(self, other: Family) -> Family:
        return Family(self.keys + other.keys, self.entries + other.entries, self.bytes + other.bytes)

    def __sub__(self, other: Family) -> Family:
        return Family(self.keys - other.keys, self.entries - other.entries, self.bytes - other.bytes)


@dataclass(frozen=True)
class Census:
    """What the keys under a prefix hold, by family, and how long the walk took."""

    families: dict[str, Family]
    walk_s: float = 0.0

    def total(self) -> Family:
        out = Family()
        for fam in self.families.values():
            out = out + fam
        return out

    def minus(self, earlier: Census) -> dict[str, Family]:
        """Per family: this census minus ``earlier`` (families that did not change left out)."""
        out = {}
        for name in sorted(set(self.families) | set(earlier.families)):
            diff = self.families.get(name, Family()) - earlier.families.get(name, Family())
            if diff != Family():
                out[name] = diff
        return out


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return GLOB_SPECIAL_RE.sub(r"\\\1", text)


def family_of(key: bytes, prefix: bytes) -> str:
    """The key's family: the first word after the prefix (``rh``, ``rp``, ``dd``)."""
    found = FAMILY_RE.match(key, len(prefix))
    return found.group().decode() if found else OTHER_FAMILY


def _chunks(items: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def census(client, prefix: str) -> Census:
    """Walk every key under ``prefix``: its family, entries (a string is one) and ``MEMORY USAGE``.

    Pipelined ``CENSUS_CHUNK`` keys at a time; a key that expires during the walk is left out.
    """
    started = time.perf_counter()
    raw_prefix = prefix.encode()
    families: dict[str, Family] = {}
    keys = client.scan_iter(match=glob_escape(prefix) + "*", count=SCAN_COUNT)
    for chunk in _chunks(keys, CENSUS_CHUNK):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.type(key)
        types = [_text(t) for t in pipe.execute()]
        pipe = client.pipeline(transaction=False)
        asked = []
        for key, kind in zip(chunk, types):
            if kind == MISSING_TYPE:
                continue
            # a string is one entry: EXISTS says whether it is still there
            pipe.execute_command(ENTRY_COMMANDS.get(kind, "EXISTS") if kind != STRING_TYPE else "EXISTS", key)
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", MEMORY_SAMPLES_ALL)
            asked.append(key)
        answers = pipe.execute()
        for i, key in enumerate(asked):
            entries, size = answers[2 * i], answers[2 * i + 1]
            if size is None:  # expired meanwhile
                continue
            name = family_of(key, raw_prefix)
            families[name] = families.get(name, Family()) + Family(1, int(entries or 0), int(size))
    return Census(families, time.perf_counter() - started)


# ---------------------------------------------------------------------------- ClickHouse inserts


@dataclass(frozen=True)
class StoreTotals:
    """Wall seconds spent inserting, the inserts (worker: store steps, one per batch) and the scan rows."""

    seconds: float = 0.0
    calls: int = 0
    scan_rows: int = 0

    def __sub__(self, other: StoreTotals) -> StoreTotals:
        return StoreTotals(self.seconds - other.seconds, self.calls - other.calls, self.scan_rows - other.scan_rows)


def scrape_worker_store(url: str) -> StoreTotals:
    """The worker's ``store`` step seconds and count, and its scans stored, from its ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as answer:
        text = answer.read().decode()
    seconds = calls = rows = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == STEP_SUM and sample.labels.get("step") == STORE_STEP:
                seconds += sample.value
            elif sample.name == STEP_COUNT and sample.labels.get("step") == STORE_STEP:
                calls += sample.value
            elif sample.name == SCANS_TOTAL:  # counted when a batch is done, so after its store
                rows += sample.value
    return StoreTotals(seconds, int(calls), int(rows))


class GroupStore:
    """``scrape_worker_store`` summed over the workers of a group, each from its own ``/metrics``.

    A worker that is gone (killed on purpose) keeps its last reading: ``refresh`` it just before
    the kill, so that its inserts up to then are counted."""

    def __init__(self, urls: list[str]):
        self.urls = list(urls)
        self._last: dict[str, StoreTotals] = {}

    def refresh(self, url: str) -> StoreTotals:
        try:
            self._last[url] = scrape_worker_store(url)
        except OSError:  # the worker is gone: its last reading stands
            pass
        return self._last.get(url, StoreTotals())

    def __call__(self) -> StoreTotals:
        seconds = calls = rows = 0
        for url in self.urls:
            got = self.refresh(url)
            seconds, calls, rows = seconds + got.seconds, calls + got.calls, rows + got.scan_rows
        return StoreTotals(seconds, calls, rows)


def read_naive_stats(path: Path, wait_s: float = STATS_WAIT_S) -> dict[str, Any]:
    """The naive agent's ``--stats-file`` (waiting up to ``wait_s`` for its first write)."""
    deadline = time.perf_counter() + wait_s
    while True:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet (the file is replaced whole, never half)
            if time.perf_counter() >= deadline:
                raise RuntimeError(f"the naive agent wrote no stats to {path} within {wait_s} s") from None
        time.sleep(STATS_POLL_S)


def naive_store(path: Path) -> StoreTotals:
    """The naive agent's insert seconds and inserts (one scan row each), from its stats file."""
    stats = read_naive_stats(path)
    return StoreTotals(float(stats["insert_s"]), int(stats["inserts"]), int(stats["inserts"]))


def naive_redis_calls(path: Path) -> dict[str, int]:
    """The Redis commands the naive agent sent, by lowercase name, from its stats file."""
    return {name: int(n) for name, n in read_naive_stats(path)["redis_calls"].items()}


# ---------------------------------------------------------------------------- one phase


@dataclass
class PhaseCost:
    """What one phase cost, as measured by a ``CostProbe``; ``per_scan()`` gives the figures."""

    label: str
    scans: int  # answered in the timed section: the denominator of the counters
    walked_scans: int  # answered when the walk after the phase ran: the denominator of the census
    seconds: float
    process_cpu_s: float | None
    redis: RedisCounters  # the phase's difference
    background: RedisCounters  # the idle window's difference, scaled to the phase's seconds
    created: dict[str, Family]  # per key family, after minus before
    walk_s: float
    store: StoreTotals
    input: TopicTotals  # the scans topic
    outputs: dict[str, TopicTotals]  # per output topic role
    own_commands: dict[str, int] | None = None  # the commands the process counted itself, if it does
    notes: list[str] = field(default_factory=list)

    def own_usec(self) -> float | None:
        """Server µs of the process's own commands: its calls times the phase's usec per call."""
        if self.own_commands is None:
            return None
        total = 0.0
        for name, calls in self.own_commands.items():
            all_calls, usec = self.redis.commands.get(name, (0, 0))
            total += calls * usec / all_calls if all_calls else 0.0
        return total

    def _per(self, value: float | None, n: int | None = None, scale: float = 1.0) -> float | None:
        n = self.scans if n is None else n
        return value * scale / n if value is not None and n else None

    def store_rows(self) -> int:
        """Rows inserted: the scan rows, plus one per award and per alert (one message each)."""
        return self.store.scan_rows + sum(self.outputs[role].messages for role in ("awards", "alerts")
                                          if role in self.outputs)

    def top_commands(self, n: int) -> list[str]:
        return [name for name, _ in sorted(self.redis.commands.items(), key=lambda kv: -kv[1][1])[:n]]

    def per_scan(self) -> dict[str, Any]:
        """Every figure per scan (µs, counts, bytes); None where it could not be measured."""
        total = Family()
        for fam in self.created.values():
            total = total + fam
        rows = self.store_rows()
        scripts = sum(self.redis.commands.get(c, (0, 0))[0] for c in ("evalsha", "eval", "fcall"))
        return {
            "process_cpu_us": self._per(self.process_cpu_s, scale=US_PER_S),
            "redis_cpu_us": self._per(self.redis.cpu_s, scale=US_PER_S),
            "redis_cpu_us_background": self._per(self.background.cpu_s, scale=US_PER_S),
            "redis_commands": self._per(self.redis.calls),
            "redis_commands_background": self._per(self.background.calls),
            "redis_script_calls": self._per(scripts),
            "redis_own_commands": self._per(sum(self.own_commands.values())) if self.own_commands is not None
            else None,
            "redis_own_usec_est": self._per(self.own_usec()),
            "redis_commands_by_usec": {name: {"calls": self._per(c), "usec": self._per(u)}
                                       for name, (c, u) in sorted(self.redis.commands.items(),
                                                                  key=lambda kv: -kv[1][1])},
            "redis_new_keys": self._per(total.keys, self.walked_scans),
            "redis_new_entries": self._per(total.entries, self.walked_scans),
            "redis_bytes_memory_usage": self._per(total.bytes, self.walked_scans),
            "redis_used_memory_delta_bytes": self._per(self.redis.used_memory),
            "redis_by_family": {name: {"keys": self._per(f.keys, self.walked_scans),
                                       "entries": self._per(f.entries, self.walked_scans),
                                       "bytes": self._per(f.bytes, self.walked_scans)}
                                for name, f in self.created.items()},
            "clickhouse_us_per_row": self._per(self.store.seconds, rows, US_PER_S),
            "clickhouse_rows": self._per(rows, self.store.scan_rows),
            "clickhouse_us": self._per(self.store.seconds, self.store.scan_rows, US_PER_S),
            "broker_in_bytes": self._per(self.input.bytes),
            "broker_in_messages": self._per(self.input.messages),
            "broker_out_bytes": {role: self._per(t.bytes) for role, t in self.outputs.items()},
            "broker_out_messages": {role: self._per(t.messages) for role, t in self.outputs.items()},
        }

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "scans": self.scans, "walked_scans": self.walked_scans,
                "seconds": self.seconds, "process_cpu_s": self.process_cpu_s, "redis_cpu_s": self.redis.cpu_s,
                "redis_calls": self.redis.calls, "background_redis_cpu_s": self.background.cpu_s,
                "background_redis_calls": self.background.calls, "redis_used_memory_delta": self.redis.used_memory,
                "created": {k: vars(v) for k, v in self.created.items()}, "census_walk_s": self.walk_s,
                "store": vars(self.store), "store_rows": self.store_rows(), "input": vars(self.input),
                "outputs": {k: vars(v) for k, v in self.outputs.items()}, "own_redis_commands": self.own_commands,
                "per_scan": self.per_scan(), "notes": self.notes}


class CostProbe:
    """Readings around one phase: ``begin()`` just before its CPU meter starts, ``end()`` just
    after it stops, ``finish()`` once its figures are known (it walks the keys again).

    ``census_prefix``: the keys the phase creates; ``outputs``: the output topics' totals so far
    (by role); ``settle``: waits until those totals are caught up; ``store``: the insert totals so
    far (the worker's metrics or the naive agent's stats); ``own_calls``, when the process counts
    its own Redis commands, those so far by lowercase name.
    """

    def __init__(self, label: str, client, census_prefix: str, outputs: Callable[[], dict[str, TopicTotals]],
                 settle: Callable[[], bool], store: Callable[[], StoreTotals],
                 own_calls: Callable[[], dict[str, int]] | None = None):
        self.label = label
        self.client = client
        self.census_prefix = census_prefix
        self._outputs, self._settle, self._store, self._own_calls = outputs, settle, store, own_calls
        self.result: PhaseCost | None = None
        self.notes: list[str] = []

    def _idle_window(self) -> tuple[RedisCounters, RedisCounters]:
        """The server's counters over ``BACKGROUND_WINDOW_S`` while our process idles: (end, difference)."""
        first = read_redis_counters(self.client)
        time.sleep(BACKGROUND_WINDOW_S)
        last = read_redis_counters(self.client)
        return last, last.minus(first)

    def begin(self) -> None:
        """Untimed: walk the keys, measure the others' use of Redis while ours idles; then the
        readings at the start of the timed section."""
        if not self._settle():
            self.notes.append("the output topics were still moving before the phase")
        self._census = census(self.client, self.census_prefix)
        self._start, self._idle = self._idle_window()
        self._outputs0, self._store0 = self._outputs(), self._store()
        self._own0 = self._own_calls() if self._own_calls is not None else None

    def end(self) -> None:
        """The readings at the end of the timed section (called right after the CPU meter's)."""
        self._redis = read_redis_counters(self.client).minus(self._start)
        self._store1 = self._store()
        self._outputs_at_end = self._outputs()
        self._own1 = self._own_calls() if self._own_calls is not None else None

    def finish(self, scans: int, walked_scans: int, seconds: float, process_cpu_s: float | None,
               input_totals: TopicTotals, complete: bool) -> PhaseCost:
        """Untimed: the outputs caught up, the keys walked again; the phase's ``PhaseCost``.

        A ``complete`` phase's outputs are counted once the tallies caught up (the last outputs
        were on the broker when the phase ended); a phase cut short by its bound keeps the
        totals of the end of its timed section, which go with its ``scans``.
        """
        outputs_at_end = self._outputs_at_end
        if complete:
            if not self._settle():
                self.notes.append(f"the output topics did not settle within {SETTLE_BOUND_S:.0f} s")
            outputs_at_end = self._outputs()
        _, idle_after = self._idle_window()
        after = census(self.client, self.census_prefix)
        background = self._background(idle_after, seconds)
        own = None
        if self._own0 is not None and self._own1 is not None:
            own = {name: n - self._own0.get(name, 0) for name, n in self._own1.items()}
        self.result = PhaseCost(
            self.label, scans, walked_scans, seconds, process_cpu_s, self._redis, background,
            after.minus(self._census), self._census.walk_s + after.walk_s, self._store1 - self._store0,
            input_totals, {role: t - self._outputs0.get(role, TopicTotals()) for role, t in outputs_at_end.items()},
            own, self.notes)
        return self.result

    def _background(self, idle_after: RedisCounters, seconds: float) -> RedisCounters:
        """The others' use of the server over ``seconds``, at the mean rate of the two idle windows."""
        window_s = self._idle.at + idle_after.at
        scale = seconds / window_s if window_s else 0.0
        commands = {}
        for name in set(self._idle.commands) | set(idle_after.commands):
            c0, u0 = self._idle.commands.get(name, (0, 0))
            c1, u1 = idle_after.commands.get(name, (0, 0))
            commands[name] = (round((c0 + c1) * scale), round((u0 + u1) * scale))
        return RedisCounters(seconds, (self._idle.cpu_s + idle_after.cpu_s) * scale, 0, commands)
