"""The Faust app of a scanstream worker: its topics and its one agent, declared together.

    scans ──▶ agent (take_events: up to kafka.take messages or kafka.within_ms)
                 ├─ pipeline thread: BatchHandler.process (decode, pipeline)      batch N+1
                 ├─ reply thread: BatchHandler.reply (Redis replies, at once)      batch N+1
                 └─ store thread: BatchHandler.store (ClickHouse, output messages)  batch N
              ──▶ scan-results (envelopes) · awards · alerts · scans-dlq, then ack batch N

The pipeline and the sinks are synchronous, so the agent runs them in executor threads and
keeps the event loop free for Faust's own work (heartbeats, fetching, producing).  A batch's
replies go out as soon as its pipeline is done; its ClickHouse writes and produced messages
follow in the store thread, which may still be busy with up to ``kafka.in_flight`` earlier
batches while the next pipeline runs.  A batch's messages are acked only when its own outputs
are replied, stored and produced.  While a service is down the agent retries the same step
with backoff and takes nothing new: that is the backpressure, and the consumer's offsets stay
where they were.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faust

from scanstream.engine.config import Config
from scanstream.streams.metrics import WorkerMetrics
from scanstream.streams.worker import BatchHandler, Handled, Record, RegistryReloader

log = logging.getLogger("scanstream.worker")

#: Backoff between retries of a failing batch: doubles from the first value up to the cap.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 15.0
#: How long a stopping worker waits for the outputs of its last batch before leaving them.
STOP_FINISH_S = 10.0


@dataclass
class WorkerStatus:
    """What the worker reports about itself (logs, the web view, tests)."""

    state: str = "starting"  # running | retrying | stopped
    batches: int = 0
    scans: int = 0
    dead_letters: int = 0
    last_error: str = ""
    retries: int = 0
    started: float = field(default_factory=time.time)
    #: wall seconds spent in each step, summed over batches: where a slow worker's time goes
    seconds: Counter = field(default_factory=Counter)


def build_app(config: Config, handler: BatchHandler, reloader: RegistryReloader | None = None,
              *, web_port: int | None = None, metrics: WorkerMetrics | None = None) -> tuple[faust.App, WorkerStatus]:
    """The Faust app with the ``scans`` topic, the output topics and the agent."""
    k = config.kafka
    app = faust.App(
        k.group,
        broker=[f"kafka://{h.strip()}" for h in k.bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=k.partitions,
        broker_session_timeout=k.session_timeout_s,
        broker_heartbeat_interval=max(k.session_timeout_s / 5, 0.5),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,  # acks=all: an outcome counts as produced once every replica has it
        web_enabled=web_port is not None,
        web_port=web_port or k.web_port,
        web_bind="127.0.0.1",
        table_cleanup_interval=3600,
    )
    scans = app.topic(k.scans_topic, value_type=bytes, key_type=bytes, partitions=k.partitions)
    status = WorkerStatus()
    # one thread runs the pipeline (batches in order), the others reply and store earlier
    # batches' outcomes: chdb and the network release the GIL, so the three overlap
    pipeline_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanstream-pipeline")
    store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanstream-store")
    # replies do not wait for ClickHouse: the scan API's wait is pipeline + reply only
    reply_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanstream-reply")

    async def retrying(what: str, size: int, step, *args):
        """Await ``step(*args)`` until it succeeds, with backoff: a failing service holds the batch."""
        delay = RETRY_FIRST_S
        while True:
            try:
                done = await step(*args)
                if status.state != "running":
                    log.info("worker running (after %d retries)", status.retries)
                status.state = "running"
                if metrics is not None:
                    metrics.retrying.set(0)
                return done
            except Exception as exc:  # a service is down: hold the batch, take nothing new
                status.state, status.last_error = "retrying", f"{type(exc).__name__}: {exc}"[:500]
                status.retries += 1
                if metrics is not None:
                    metrics.error(exc)
                    metrics.retrying.set(1)
                log.warning("%s of a batch of %d messages failed (%s); retrying in %.1f s", what, size,
                            status.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def in_thread(pool: ThreadPoolExecutor, fn):
        return lambda *args: asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def produce(handled: Handled) -> None:
        """Step 5: send every output and wait for the broker's acknowledgements."""
        futures = [await app.producer.send(p.topic, p.key, p.value, p.partition, None, p.headers)
                   for p in handled.produce]
        if futures:
            await asyncio.gather(*futures)

    async def reply(handled: Handled) -> None:
        t0 = time.perf_counter()
        await retrying("pushing the replies", len(handled.records), in_thread(reply_thread, handler.reply), handled)
        status.seconds["reply"] += time.perf_counter() - t0

    async def finish(stream, events, handled: Handled, started: float, replied: asyncio.Task) -> None:
        """Steps 3-6 of one batch, once its replies are out: store, produce, then ack its messages."""
        size = len(events)
        await replied
        t0 = time.perf_counter()
        await retrying("storing the outcomes", size, in_thread(store_thread, handler.store), handled)
        t1 = time.perf_counter()
        await retrying("producing the outputs", size, produce, handled)
        status.seconds["store"] += t1 - t0
        status.seconds["produce"] += time.perf_counter() - t1
        for event in events:  # 6: drops the hold taken in the agent; Faust commits acked offsets
            await stream.ack(event)
        status.batches += 1
        status.scans += handled.scans
        status.dead_letters += handled.dead_letters
        if metrics is not None:
            metrics.observe_batch(Counter(handled.result.scans["verdict"].tolist()), handled.dead_letters,
                                  time.perf_counter() - started)

    @app.agent(scans, name="scanstream.process")
    async def process(stream):
        outputs: deque[asyncio.Task] = deque()  # steps 3-6 of earlier batches, oldest first
        try:
            async for events in stream.take_events(k.take, within=k.within_ms / 1000):
                started = time.perf_counter()
                # take_events acks a batch's messages when it takes the next one; one more
                # reference each keeps them uncommitted until ``finish`` has stored them
                for event in events:
                    event.message.incref()
                records = [Record(e.message.topic, e.message.partition, e.message.offset, e.message.value,
                                  list(e.message.headers.items()) if isinstance(e.message.headers, dict)
                                  else list(e.message.headers or [])) for e in events]
                handled = await retrying("the pipeline", len(records), in_thread(pipeline_thread, handler.process),
                                         records)
                status.seconds["pipeline"] += time.perf_counter() - started
                replied = asyncio.create_task(reply(handled))  # at once, whatever is still being stored
                waited = time.perf_counter()
                while len(outputs) >= k.in_flight:
                    await outputs.popleft()  # a slow sink slows the intake
                status.seconds["wait"] += time.perf_counter() - waited
                outputs.append(asyncio.create_task(finish(stream, events, handled, started, replied)))
                if reloader is not None:  # the ClickHouse client is safe to share with the store thread
                    await asyncio.get_running_loop().run_in_executor(pipeline_thread, reloader.maybe_reload)
        finally:
            # a stopping worker finishes the batches in hand when it can; the rest are redelivered
            pending = [t for t in outputs if not t.done()]
            if pending:
                try:
                    await asyncio.wait_for(asyncio.shield(asyncio.gather(*pending)), timeout=STOP_FINISH_S)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    for task in pending:
                        task.cancel()

    @app.timer(interval=10.0)
    async def report() -> None:
        if metrics is not None:
            consumer = app.consumer
            for tp in consumer.assignment():
                try:  # a broker without end offsets (e.g. Tansu) shows nonsense here: see README
                    position = await consumer.position(tp)
                    if position is not None:
                        metrics.lag.labels(tp.topic, str(tp.partition)).set(max(consumer.highwater(tp) - position, 0))
                except Exception:  # noqa: BLE001 - lag is information, never a reason to stop
                    pass
            if handler.alerting is not None:
                metrics.pending_alerts.set(len(handler.alerting.digests))
                # an idle worker has no batch to carry the retry of deliveries left pending
                await asyncio.get_running_loop().run_in_executor(None, handler.alerting.retry_held)
        spent = ", ".join(f"{step} {status.seconds[step]:.1f}"
                          for step in ("pipeline", "wait", "reply", "store", "produce"))
        log.info("worker %s: %d batches, %d scans, %d dead letters, %d retries; seconds in %s%s", status.state,
                 status.batches, status.scans, status.dead_letters, status.retries, spent,
                 f"; last error: {status.last_error}" if status.state == "retrying" else "")

    return app, status
