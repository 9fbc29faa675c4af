"""The commit protocol: the one order in which a batch of scans becomes done, for every driver.

A driver *takes* a batch (lines of a file, or Kafka messages) and hands it to ``Checkpoint``; the
batch is *done* when its input position is committed.  ``Checkpoint`` runs the steps in this
order, and no other code decides it:

1. **process**: the pipeline decides every outcome; the state store (claims, budget, stock, caps,
   windows) makes them final, and its ``durable`` (the pipeline's last call) returns only once they
   would survive a failover (the Redis store's ``[redis] wait_replicas``).  A batch whose later step fails is retried from that step with
   these outcomes: the pipeline never runs twice over one batch in one process, since a second
   run would answer replays and lose the alerts the first run fired.
2. **reply**: each outcome to the scan API's reply hashes (``streams.replies``; the local
   driver has none).  Allowed before 3 because step 1 made the answers final: the scan API's
   wait is the pipeline and the reply, not the ClickHouse inserts.  Done before 6.
3. **store**: every ``Sink`` (``sinks.base``) stores the batch under its token, in the order the
   driver gave them (the outcome tables: awards, alerts, scans; then the results file).  A store
   repeated with the same token leaves what readers see as it was.
4. **outbox**: the batch's alerts to delivery.  Delivery never raises and never holds a batch:
   what is not delivered in time is kept as pending and sent again.
5. **produce**: the output messages (the worker's scan-results, awards, alerts and dead letters),
   acknowledged by the broker.
6. **commit**: only now the input position: the worker acks the batch's messages (the consumer
   then commits their offsets); the local driver checkpoints its state together with the cursor
   that says the batch is done, in one transaction.

A crash before 6 takes the batch again from the last committed position; every step is
idempotent under that (a replayed scan_id gets its first answer, the inserts are dropped by their
token, a results file is cut back to its checkpoint), so the effects happen once.  A token alone
does not prove its rows stored (ClickHouse logs it before the part is in place): the outcome
tables check the first batch a process stores, a batch stored again after a failure and a batch
taken again after a crash (``sinks.clickhouse.OutcomeTables``).  A failing step raises; the
driver retries that step (``finish`` skips the steps already done) when the error is transient
and stops when it is permanent (``engine.errors``).

A driver that measures the steps passes ``observe``: it is called with a step's name and its
seconds once per batch that completes the step (the attempt that completed it; failed attempts
are the driver's errors to count), from the thread that ran it.  The protocol itself imports no
metrics library.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanstream.engine.pipeline import BatchResult, Pipeline
from scanstream.sinks.base import Sink

#: The steps, in protocol order.
STEPS = ("process", "reply", "store", "outbox", "produce", "commit")

#: Told each completed step's name and seconds (see the module's docstring).
StepObserver = Callable[[str, float], None]


class ProtocolError(RuntimeError):
    """A driver called a step before the steps it depends on (a bug in the driver; permanent)."""

    transient = False


@dataclass
class InFlight:
    """A batch taken and not yet committed: its input, its outcomes and the steps done.

    ``source`` is what the driver needs to commit it (the worker's messages, the local driver's
    cursor); ``dead`` the inputs that go to the dead-letter output (no event, an invalid one);
    ``outcome_lines`` the outcomes as JSON lines, made once for the replies and the outputs;
    ``messages`` the output messages of step 5, made once.
    """

    token: str
    lines: list[bytes]
    positions: np.ndarray
    source: Any = None
    result: BatchResult | None = None
    dead: list[Any] = field(default_factory=list)
    outcome_lines: list[bytes] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    done: set[str] = field(default_factory=set)

    @property
    def scans(self) -> int:
        """Scan lines in the batch."""
        return len(self.lines)

    @property
    def dead_letters(self) -> int:
        return len(self.dead)


class Checkpoint:
    """Owns the commit order of ``STEPS`` for one driver (see the module's docstring).

    ``sinks`` store in the given order; ``outbox`` takes alerts (``add(alerts, watermark_ms)``,
    an ``AlertDelivery``); ``reply``, ``produce`` and ``commit`` are the driver's own steps, each a
    callable of the ``InFlight`` batch (None: nothing to do).  ``take`` must be called in batch
    order from one thread; the later steps of a batch may run in another thread, one batch at a
    time per step.  ``observe`` (may be set later, as an attribute) times the steps.
    """

    def __init__(self, pipeline: Pipeline, sinks: Sequence[Sink] = (), outbox=None, *,
                 reply: Callable[[InFlight], None] | None = None,
                 produce: Callable[[InFlight], None] | None = None,
                 commit: Callable[[InFlight], None] | None = None,
                 observe: StepObserver | None = None):
        self.pipeline = pipeline
        self.observe = observe
        self.sinks = list(sinks)
        self.outbox = outbox
        self._reply, self._produce, self._commit = reply, produce, commit
        self._watermark = 0
        self._held: dict[str, InFlight] = {}  # taken, not committed: a retaken token gets its outcomes back
        self._lock = threading.Lock()

    # ---- 1 ------------------------------------------------------------------

    def take(self, token: str, lines: list[bytes], positions: np.ndarray, source: Any = None) -> InFlight:
        """Step 1: the batch's outcomes.  A batch taken again before its commit (a driver's retry
        after a failed later step) is the same ``InFlight``, outcomes and steps done included."""
        with self._lock:
            held = self._held.get(token)
        if held is not None:
            held.source = source if source is not None else held.source
            return held
        batch = InFlight(token, lines, positions, source)
        started = time.perf_counter()
        batch.result = self.pipeline.process(lines, positions=positions)
        batch.done.add("process")
        with self._lock:
            self._held[token] = batch
        self._observed("process", started)
        return batch

    # ---- 2-6 ----------------------------------------------------------------

    def reply(self, batch: InFlight) -> None:
        """Step 2: the outcomes to the scan API (safe to repeat)."""
        self._require(batch, "reply")
        started = time.perf_counter()
        if self._reply is not None:
            self._reply(batch)
        batch.done.add("reply")
        self._observed("reply", started)

    def store(self, batch: InFlight) -> None:
        """Step 3: every sink, in order; a sink that stored the batch is not asked again."""
        self._require(batch, "store")
        started = time.perf_counter()
        for i, sink in enumerate(self.sinks):
            mark = f"store:{i}"
            if mark not in batch.done:
                sink.store(batch.result, batch.token)
                batch.done.add(mark)
        batch.done.add("store")
        self._observed("store", started)

    def hand_over(self, batch: InFlight) -> None:
        """Step 4: the alerts to the delivery outbox, with the newest valid scan time seen as the
        watermark that closes digest windows.  Never raises for a delivery problem."""
        self._require(batch, "outbox")
        started = time.perf_counter()
        if self.outbox is not None:
            scans = batch.result.scans
            valid = scans["reason"] == ""
            if valid.any():
                self._watermark = max(self._watermark, int(scans["ts"][valid].max()))
            self.outbox.add(batch.result.alerts, self._watermark)
        batch.done.add("outbox")
        self._observed("outbox", started)

    def produce(self, batch: InFlight) -> None:
        """Step 5: the output messages, acknowledged by the broker."""
        self._require(batch, "produce")
        started = time.perf_counter()
        if self._produce is not None:
            self._produce(batch)
        batch.done.add("produce")
        self._observed("produce", started)

    def commit(self, batch: InFlight) -> None:
        """Step 6: the input position; the batch is done and forgotten."""
        self._require(batch, "commit")
        started = time.perf_counter()
        if self._commit is not None:
            self._commit(batch)
        batch.done.add("commit")
        with self._lock:
            self._held.pop(batch.token, None)
        self._observed("commit", started)

    def finish(self, batch: InFlight) -> None:
        """Steps 3-6 in order, each step not yet done; call again after a failure to go on."""
        for step, run in (("store", self.store), ("outbox", self.hand_over), ("produce", self.produce),
                          ("commit", self.commit)):
            if step not in batch.done:
                run(batch)

    def run(self, token: str, lines: list[bytes], positions: np.ndarray, source: Any = None) -> InFlight:
        """Steps 1-6 in a row, for a driver without concurrency (the local driver, tests)."""
        batch = self.take(token, lines, positions, source)
        if "reply" not in batch.done:
            self.reply(batch)
        self.finish(batch)
        return batch

    def _observed(self, step: str, started: float) -> None:
        """Tell the observer that ``step`` completed, ``started`` being its ``perf_counter``."""
        if self.observe is not None:
            self.observe(step, time.perf_counter() - started)

    @staticmethod
    def _require(batch: InFlight, step: str) -> None:
        # the reply may come after 3-5 (it runs beside them), but before the commit
        needed = [s for s in STEPS[:STEPS.index(step)] if s != "reply" or step == "commit"]
        missing = [s for s in needed if s not in batch.done]
        if missing:
            raise ProtocolError(f"step {step!r} of batch {batch.token} before {missing}; expected the order {STEPS}")
