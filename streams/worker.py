"""The worker's batch step: Kafka messages in, outcomes stored, messages to produce out.

``BatchHandler`` knows Kafka only as plain records (``Record``), so it is tested without a
broker; ``streams.app`` feeds it from a Faust agent.  It owns the commit order, the promise
that an offset is committed only after its scans' outcomes are stored:

1. decode each message into scan lines; a message that carries none is dead-lettered
2. run the pipeline over all lines of the batch (state store: claims, windows, prizes)
3. write ``scan_events``, ``alerts`` and ``awards`` to ClickHouse, with a deduplication token
   made of the batch's offsets, so a batch redelivered after a crash is not stored twice
4. push each outcome to its Redis reply list (the scan API's ``await_result``)
5. (agent) produce ``scan-results``, ``awards``, ``alerts`` and dead letters, and wait for the
   broker to acknowledge them
6. (agent) only then ack the batch's messages; the consumer commits acked offsets afterwards

The agent runs step 4 as soon as step 2 is done (the scan API should not wait for ClickHouse),
and steps 1-2 of a batch while steps 3-6 of up to ``kafka.in_flight`` earlier batches are
still under way; offsets are still acked only after steps 3-5 of their own batch.  A crash
anywhere before 6 redelivers the batch; every step is idempotent under redelivery (a replayed
scan_id gets its first answer, a won code its prize back, ClickHouse drops or collapses the
rows again), so delivery is at least once and the effects happen once.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from scanstream.engine import outcomes
from scanstream.engine.config import Config
from scanstream.engine.pipeline import BatchResult, Pipeline
from scanstream.engine.registry import Registry
from scanstream.engine.state import state_keys
from scanstream.streams import envelope, replies

log = logging.getLogger("scanstream.worker")

REASON_HEADER = "scanstream-reason"
POSITION_HEADER = "scanstream-position"


@dataclass(frozen=True)
class Record:
    """What the worker needs of one consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Produce:
    """One message the agent must produce before the batch counts as done."""

    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Handled:
    """A batch after the pipeline: its outcomes, and everything still to be stored and produced."""

    records: list[Record]
    result: BatchResult
    dead: list[Produce]  # dead letters: undecodable messages and invalid events
    scans: int
    token: str  # ClickHouse deduplication token of the batch (``batch_token``)
    replies: list[bytes] = field(default_factory=list)  # one JSON outcome per scan (``outcome_lines``)
    produce: list[Produce] = field(default_factory=list)  # step 5's messages, set by ``store``

    @property
    def dead_letters(self) -> int:
        return len(self.dead)


def batch_token(records: list[Record]) -> str:
    """Names a batch by the offset ranges it covers: the same messages give the same token."""
    ranges: dict[tuple[str, int], list[int]] = {}
    for r in records:
        ranges.setdefault((r.topic, r.partition), []).append(r.offset)
    text = ",".join(f"{t}/{p}@{min(o)}-{max(o)}" for (t, p), o in sorted(ranges.items()))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class BatchHandler:
    """Steps 1-4 of the commit order, and the messages of step 5.

    ``process`` (steps 1-2), ``reply`` (step 4) and ``store`` (step 3) are separate so that
    the agent can run the pipeline of one batch while the outcomes of earlier ones are being
    replied, stored and produced; ``handle`` is the three in a row.  ``process`` must be
    called in batch order from one thread (the state store sees the batches in the order they
    were taken); ``reply`` and then ``store`` may run in other threads, and are safe to repeat.
    """

    def __init__(self, config: Config, pipeline: Pipeline, clickhouse=None, redis_client=None, alerting=None):
        self.config = config
        self.pipeline = pipeline
        self.clickhouse = clickhouse
        self.replies = (replies.ReplyWriter(redis_client, config.redis.prefix, config.redis.result_ttl_s)
                        if redis_client is not None else None)
        self.alerting = alerting  # sinks.alerting.AlertDelivery: logs, digests, webhooks
        self.k = config.kafka
        self._watermark = 0

    def decode(self, records: list[Record]) -> tuple[list[bytes], np.ndarray, list[Produce]]:
        """Step 1: the scan lines of the batch, their positions, and dead letters."""
        lines: list[bytes] = []
        positions: list[str] = []
        dead: list[Produce] = []
        for r in records:
            try:
                carried = envelope.decode(r.value, envelope.header(r.headers))
            except envelope.EnvelopeError as exc:
                dead.append(self._dead_letter(r.value or b"", str(exc), f"{r.topic}/{r.partition}@{r.offset}"))
                continue
            lines.extend(carried)
            positions.extend(f"{r.topic}/{r.partition}@{r.offset}:{i}" for i in range(len(carried)))
        return lines, np.array(positions, dtype=object), dead

    def _dead_letter(self, value: bytes, reason: str, position: str) -> Produce:
        return Produce(self.k.dlq_topic, value, key=position.encode(),
                       headers=[(REASON_HEADER, reason.encode("utf-8", "replace")[:1000]),
                                (POSITION_HEADER, position.encode())])

    def process(self, records: list[Record]) -> Handled:
        """Steps 1-2: decode and run the pipeline; returns what ``store`` needs.

        Only what depends on the order of batches happens here; the outcome messages are
        built by ``store``, in the other thread.
        """
        lines, positions, dead = self.decode(records)
        result = self.pipeline.process(lines, positions=positions)
        invalid = np.nonzero(result.scans["verdict"] == "invalid_event")[0]
        for i in invalid.tolist():
            dead.append(self._dead_letter(lines[i], result.scans["reason"][i], positions[i]))
        return Handled(records, result, dead, len(lines), batch_token(records))

    @staticmethod
    def outcome_lines(handled: Handled) -> list[bytes]:
        """The batch's outcomes as JSON lines, made once for the replies and ``scan-results``."""
        if not handled.replies and len(handled.result.scans["scan_id"]):
            handled.replies = replies.reply_lines(handled.result.scans)
        return handled.replies

    def reply(self, handled: Handled) -> None:
        """Step 4: each outcome pushed to its Redis reply list.  Safe to repeat.

        It needs nothing but the pipeline's outcomes, which the state store has already made
        final (a redelivered batch gets the same answers), so the agent runs it at once, beside
        the ClickHouse writes of earlier batches: the scan API's wait does not include them.
        """
        lines = self.outcome_lines(handled)
        if self.replies is not None and lines:
            self.replies.push(handled.result.scans["scan_id"].tolist(), lines)

    def store(self, handled: Handled) -> None:
        """Step 3: outcomes into ClickHouse (deduplicated by the batch's token), and the messages
        of step 5 into ``handled.produce``.  Runs after ``reply``; safe to repeat."""
        result, token = handled.result, handled.token
        handled.produce = [*handled.dead, *self._results(result.scans, self.outcome_lines(handled)),
                           *self._rows(self.k.awards_topic, result.awards, outcomes.AWARD_COLUMNS,
                                       lambda row: f"{row['tenant']}:{row['kind']}:{row['batch']}:{row['serial']}"),
                           *self._rows(self.k.alerts_topic, result.alerts, outcomes.ALERT_COLUMNS,
                                       lambda row: row["dealer_id"] or row["alert_id"])]
        if self.clickhouse is not None:
            self.clickhouse.write_scans(result.scans, dedup_token=f"{token}:scans")
            self.clickhouse.write_alerts(result.alerts, dedup_token=f"{token}:alerts")
            self.clickhouse.write_awards(result.awards, dedup_token=f"{token}:awards")
        if self.alerting is not None:  # best effort, in the background: never holds the batch
            valid = result.scans["reason"] == ""
            if valid.any():
                self._watermark = max(self._watermark, int(result.scans["ts"][valid].max()))
            self.alerting.add(result.alerts, self._watermark)

    def handle(self, records: list[Record]) -> Handled:
        """Steps 1-4 in a row; returns what step 5 must produce."""
        handled = self.process(records)
        self.reply(handled)
        self.store(handled)
        return handled

    def _results(self, scans: outcomes.Columns, lines: list[bytes]) -> list[Produce]:
        """scan-results as envelopes, one per partition of the scan_id key.

        One message per scan would cost the producer more than the whole pipeline; an
        envelope per partition keeps "keyed by scan_id" (all results of a scan_id on one
        partition) at a fraction of the cost.  The partition is SipHash(scan_id) mod the
        topic's partitions.
        """
        if not len(scans["scan_id"]):
            return []
        part = (state_keys(scans["scan_id"]) % np.uint64(self.k.partitions)).astype(np.int64)
        headers = [(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())]
        out = []
        for p in np.unique(part).tolist():
            chosen = [lines[i] for i in np.nonzero(part == p)[0].tolist()]
            for chunk in envelope.chunks(chosen):  # a broker takes messages of about 1 MB at most
                out.append(Produce(self.k.results_topic, envelope.encode(chunk), partition=int(p), headers=headers))
        return out

    @staticmethod
    def _rows(topic: str, batch: outcomes.Columns, columns, key_of) -> list[Produce]:
        return [Produce(topic, orjson.dumps(row), key=str(key_of(row)).encode(),
                        headers=[(envelope.CONTENT_TYPE, envelope.SINGLE.encode())])
                for row in outcomes.rows(batch, columns)]


class RegistryReloader:
    """Swaps in a new registry when its source changed; checked every ``reload_s`` seconds.

    Source ``files``: the CSV folder, changed when a file's modification time or size
    changes.  Source ``clickhouse``: the ``registry_*`` tables, changed when their contents'
    fingerprint changes.  A registry that fails to load is logged and the old one kept.
    """

    def __init__(self, config: Config, pipeline: Pipeline, clickhouse=None, clock=time.monotonic, alerting=None):
        self.config = config
        self.pipeline = pipeline
        self.clickhouse = clickhouse
        self.alerting = alerting
        self.clock = clock
        self._next = clock() + config.registry_reload_s
        self._seen = self._fingerprint()

    def _fingerprint(self) -> Any:
        if self.config.registry_source == "clickhouse":
            from scanstream.sinks.registry_tables import fingerprint
            return fingerprint(self.clickhouse)
        if self.config.registry_dir is None:
            return None
        files = sorted(self.config.registry_dir.glob("*.csv"))
        return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)

    def maybe_reload(self, force: bool = False) -> bool:
        """Reload when due and changed; True when a new registry is in place."""
        if not force and self.clock() < self._next:
            return False
        self._next = self.clock() + self.config.registry_reload_s
        try:
            seen = self._fingerprint()
            if seen == self._seen and not force:
                return False
            from scanstream.wiring import build_registry
            registry: Registry = build_registry(self.config, self.clickhouse)
        except Exception as exc:  # a half-written file must not stop the worker
            log.warning("registry reload failed, keeping the current registry: %s", exc)
            return False
        self.pipeline.set_registry(registry)
        if self.alerting is not None:
            self.alerting.set_registry(registry)
        self._seen = seen
        log.info("registry reloaded: %d batches, %d dealers, %d shipments, %d stores", len(registry.batches.key),
                 len(registry.dealers.dealer_id), len(registry.shipments.start), len(registry.stores.index))
        return True
