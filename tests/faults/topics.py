"""The broker side of a fault run: publishing scans as the scan API does, and watching output topics.

- ``ScanProducer``: publishes a synthetic stream as the scan API does: keyed by code, one
  partition per code, JSON-lines envelopes of a few dozen scans; ``publish_paced`` spreads it
  over time so that faults hit a worker mid-stream.  It knows the name under which every line's
  outcome must appear (its scan_id, or ``pos:`` + its position);
- ``TopicWatcher``: a background consumer (``assign()``, from the first offset) of an output
  topic: results, awards, dead letters; it also searches every message for the secrets;
- ``ResultsIndex``: what the results topic said, per scan_id.

Separate because it is the only part that talks Kafka (kafka-python clients and their threads);
the workers under test are its counterparts on the same topics.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .inputs import find_secrets


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
