"""The worker's side of the commit protocol: Kafka messages in, outcomes stored, messages out.

``BatchHandler`` knows Kafka only as plain records (``Record``), so it is tested without a
broker; ``streams.app`` feeds it from a Faust agent.  The order in which a batch becomes done is
``streams.checkpoint.Checkpoint``'s; this module supplies the worker's parts of it:

- before step 1, each message is decoded into scan lines; a message that carries none, and
  each invalid event, becomes a dead letter;
- step 2 writes each outcome to its scan_id's Redis reply hash (the scan API's ``await_result``);
- step 3 stores the outcome tables in ClickHouse, with a token made of the batch's offsets;
- step 5 produces ``scan-results``, ``awards``, ``alerts`` and the dead letters;
- step 6 acks the batch's messages, and the consumer commits acked offsets afterwards.

A crash anywhere before 6 redelivers the batch; every step is idempotent under redelivery (a
replayed scan_id gets its first answer, a won code its prize back, ClickHouse drops or collapses
the rows again), so delivery is at least once and the effects happen once.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from scanstream.engine import outcomes
from scanstream.engine.config import Config
from scanstream.engine.pipeline import Pipeline
from scanstream.engine.registry import Registry
from scanstream.engine.state import state_keys
from scanstream.sinks.clickhouse import OutcomeTables
from scanstream.sinks.exceptions import SinkError
from scanstream.streams import envelope, replies
from scanstream.streams.checkpoint import Checkpoint, InFlight

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


def dead_letter_reasons(batch: InFlight) -> list[str]:
    """The reason (free text, as its header carries it) of each dead letter of ``batch``, for the
    metrics; a dead letter without the header gives ''."""
    out = []
    for letter in batch.dead:
        reason = dict(letter.headers).get(REASON_HEADER, b"")
        out.append(reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason))
    return out


def batch_token(records: list[Record]) -> str:
    """Names a batch by the offset ranges it covers: the same messages give the same token."""
    ranges: dict[tuple[str, int], list[int]] = {}
    for r in records:
        ranges.setdefault((r.topic, r.partition), []).append(r.offset)
    text = ",".join(f"{t}/{p}@{min(o)}-{max(o)}" for (t, p), o in sorted(ranges.items()))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class BatchHandler:
    """The worker's steps of the commit protocol around one ``Checkpoint`` (``self.checkpoint``).

    ``take`` (decode, then step 1) must be called in batch order from one thread; the agent runs
    ``checkpoint.reply`` and ``checkpoint.finish`` of earlier batches in other threads meanwhile.
    ``send`` and ``ack`` are set by the agent (step 5's producer, step 6's acks); without them,
    ``handle`` runs every step and leaves the messages of step 5 in the batch's ``messages``.
    """

    def __init__(self, config: Config, pipeline: Pipeline, clickhouse=None, redis_client=None, alerting=None):
        self.config = config
        self.pipeline = pipeline
        self.clickhouse = clickhouse
        self.replies = (replies.ReplyWriter(redis_client, config.redis.prefix, config.redis.result_ttl_s)
                        if redis_client is not None else None)
        self.alerting = alerting  # sinks.alerting.AlertDelivery: logs, digests, webhooks
        self.k = config.kafka
        self.send: Callable[[list[Produce]], None] | None = None  # step 5, given by the agent
        self.ack: Callable[[InFlight], None] | None = None  # step 6, given by the agent
        self.checkpoint = Checkpoint(pipeline, [OutcomeTables(clickhouse)] if clickhouse is not None else [],
                                     alerting, reply=self._reply, produce=self._produce, commit=self._commit)

    def decode(self, records: list[Record]) -> tuple[list[bytes], np.ndarray, list[Produce]]:
        """The scan lines of the batch, their positions, and dead letters."""
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

    def take(self, records: list[Record], source: Any = None) -> InFlight:
        """Decode, then step 1.  The same records taken again before their commit (the agent's
        retry) give the same batch back, with its outcomes and the steps it has done."""
        token = batch_token(records)
        lines, positions, dead = self.decode(records)
        batch = self.checkpoint.take(token, lines, positions, source if source is not None else records)
        if not batch.dead:
            invalid = np.nonzero(batch.result.scans["verdict"] == "invalid_event")[0]
            batch.dead = dead + [self._dead_letter(lines[i], batch.result.scans["reason"][i], positions[i])
                                 for i in invalid.tolist()]
        return batch

    def handle(self, records: list[Record]) -> InFlight:
        """Every step in a row (the agent's retry is calling it again with the same records)."""
        batch = self.take(records)
        if "reply" not in batch.done:
            self.checkpoint.reply(batch)
        self.checkpoint.finish(batch)
        return batch

    @staticmethod
    def outcome_lines(batch: InFlight) -> list[bytes]:
        """The batch's outcomes as JSON lines, made once for the replies and ``scan-results``."""
        if not batch.outcome_lines and len(batch.result.scans["scan_id"]):
            batch.outcome_lines = outcomes.outcome_lines(batch.result.scans)
        return batch.outcome_lines

    def _reply(self, batch: InFlight) -> None:
        """Step 2: each outcome written for the scan API (``streams/replies.py``).  Safe to repeat:
        a repeat writes a first outcome (and its claim's outcome file) over itself and appends a
        joined one again, and a waiter takes the first that answers its event."""
        lines = self.outcome_lines(batch)
        if self.replies is not None and lines:
            scans = batch.result.scans
            self.replies.push(scans["scan_id"].tolist(), lines, replies.first_outcomes(scans),
                              batch.result.refs)

    def _produce(self, batch: InFlight) -> None:
        """Step 5: the batch's messages, made once, sent by the agent's producer when there is one."""
        if not batch.messages:
            result = batch.result
            batch.messages = [
                *batch.dead, *self._results(result.scans, self.outcome_lines(batch)),
                # keyed by the payout key: a payment service's consumer sees one award's messages in
                # order on one partition, and a compacted topic keeps one message per award
                *self._rows(self.k.awards_topic, result.awards, outcomes.AWARD_COLUMNS,
                            lambda row: row["payout_key"]),
                *self._rows(self.k.alerts_topic, result.alerts, outcomes.ALERT_COLUMNS,
                            lambda row: row["dealer_id"] or row["alert_id"])]
        if self.send is not None:
            self.send(batch.messages)

    def _commit(self, batch: InFlight) -> None:
        """Step 6: ack the batch's messages, when the agent consumes them."""
        if self.ack is not None:
            self.ack(batch)

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
    fingerprint changes.  ``load`` builds the registry from the configured source (the
    composition root's ``build_registry``).  A registry that fails to load (a half-written file,
    ClickHouse away) is logged and the old one kept: the worker goes on with what it had.
    """

    def __init__(self, config: Config, pipeline: Pipeline, load: Callable[[], Registry], clickhouse=None,
                 clock=time.monotonic, alerting=None):
        self.config = config
        self.pipeline = pipeline
        self.load = load
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
            registry = self.load()
        except (ValueError, OSError, SinkError) as exc:  # RegistryError, ConfigError, a file or server away
            log.warning("registry reload failed, keeping the current registry: %s", exc)
            return False
        self.pipeline.set_registry(registry)
        if self.alerting is not None:
            self.alerting.set_registry(registry)
        self._seen = seen
        log.info("registry reloaded: %d batches, %d dealers, %d shipments, %d stores", len(registry.batches.key),
                 len(registry.dealers.dealer_id), len(registry.shipments.start), len(registry.stores.index))
        return True
