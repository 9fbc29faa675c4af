"""The Faust app of a scanstream worker: its topics and its one agent, declared together.

    scans ──▶ agent (take_events: up to kafka.take messages or kafka.within_ms)
                 └─ BatchHandler in a worker thread: pipeline, ClickHouse, Redis replies
              ──▶ scan-results (envelopes) · awards · alerts · scans-dlq

The pipeline and the sinks are synchronous and CPU-bound, so the agent runs them in one
executor thread and keeps the event loop free for Faust's own work (heartbeats, fetching,
producing).  While a service is down the agent retries the same batch with backoff and takes
nothing new: that is the backpressure, and the consumer's offsets stay where they were.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faust

from engine.config import Config
from streams.metrics import WorkerMetrics
from streams.worker import BatchHandler, Handled, Record, RegistryReloader

log = logging.getLogger("scanstream.worker")

#: Backoff between retries of a failing batch: doubles from the first value up to the cap.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 15.0


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
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanstream-batch")

    async def run_batch(records: list[Record]) -> Handled:
        """Steps 1-4 in the executor, retried with backoff until they succeed."""
        loop = asyncio.get_running_loop()
        delay = RETRY_FIRST_S
        while True:
            try:
                handled = await loop.run_in_executor(executor, handler.handle, records)
                if status.state != "running":
                    log.info("worker running (after %d retries)", status.retries)
                status.state = "running"
                if metrics is not None:
                    metrics.retrying.set(0)
                return handled
            except Exception as exc:  # a service is down: hold the batch, take nothing new
                status.state, status.last_error = "retrying", f"{type(exc).__name__}: {exc}"[:500]
                status.retries += 1
                if metrics is not None:
                    metrics.error(exc)
                    metrics.retrying.set(1)
                log.warning("batch of %d messages failed (%s); retrying in %.1f s", len(records),
                            status.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def produce(handled: Handled) -> None:
        """Step 5: send every output and wait for the broker's acknowledgements."""
        futures = [await app.producer.send(p.topic, p.key, p.value, p.partition, None, p.headers)
                   for p in handled.produce]
        if futures:
            await asyncio.gather(*futures)

    @app.agent(scans, name="scanstream.process")
    async def process(stream):
        async for events in stream.take_events(k.take, within=k.within_ms / 1000):
            started = time.perf_counter()
            records = [Record(e.message.topic, e.message.partition, e.message.offset, e.message.value,
                              list(e.message.headers.items()) if isinstance(e.message.headers, dict)
                              else list(e.message.headers or [])) for e in events]
            handled = await run_batch(records)
            delay = RETRY_FIRST_S
            while True:
                try:
                    await produce(handled)
                    break
                except Exception as exc:
                    status.state, status.last_error = "retrying", f"{type(exc).__name__}: {exc}"[:500]
                    if metrics is not None:
                        metrics.error(exc)
                    log.warning("producing outputs failed (%s); retrying in %.1f s", status.last_error, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
            status.batches += 1
            status.scans += handled.scans
            status.dead_letters += handled.dead_letters
            if metrics is not None:
                metrics.observe_batch(Counter(handled.result.scans["verdict"].tolist()), handled.dead_letters,
                                      time.perf_counter() - started)
            if reloader is not None:
                await asyncio.get_running_loop().run_in_executor(executor, reloader.maybe_reload)
            # 6: returning to take_events acks these events; Faust commits acked offsets

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
        log.info("worker %s: %d batches, %d scans, %d dead letters, %d retries%s", status.state, status.batches,
                 status.scans, status.dead_letters, status.retries,
                 f", last error: {status.last_error}" if status.state == "retrying" else "")

    return app, status
