"""The Faust app of a scanstream worker: its topics and its one agent, declared together.

    scans ──▶ agent (take_events: up to kafka.take messages or kafka.within_ms)
                 ├─ pipeline thread: BatchHandler.take (decode, step 1)              batch N+1
                 ├─ reply thread: Checkpoint.reply (step 2: Redis replies, at once)   batch N+1
                 └─ store thread: Checkpoint.finish (steps 3-6)                        batch N
              ──▶ ClickHouse · alert outbox · scan-results, awards, alerts, scans-dlq · ack

The steps and their order are ``streams.checkpoint.Checkpoint``'s; this module only decides
which thread runs them.  The pipeline and the sinks are synchronous, so the agent runs them in
executor threads and keeps the event loop free for Faust's own work (heartbeats, fetching,
producing): the store thread hands step 5's sends and step 6's acks to the loop and waits for
them.  A batch's replies go out as soon as its pipeline is done; its steps 3-6 follow in the
store thread, which may still be busy with up to ``kafka.in_flight`` earlier batches while the
next pipeline runs.

Errors come in two kinds (``engine.errors``).  A transient one (a service down, a timeout) holds
the batch: the agent retries the failed step with capped backoff and takes nothing new, which is
the backpressure, and the consumer's offsets stay where they were.  A permanent one (a schema
mismatch, a rejected request, a bug) stops the worker with one line naming the step and the
error; the batch is not committed, so it is taken again once the cause is fixed.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faust

from scanstream.engine.config import Config
from scanstream.engine.errors import is_transient
from scanstream.engine.lottery import Campaign
from scanstream.engine.state import CampaignState, StateStore
from scanstream.streams.checkpoint import InFlight
from scanstream.streams.metrics import WorkerMetrics
from scanstream.streams.worker import BatchHandler, Produce, Record, RegistryReloader, dead_letter_reasons

log = logging.getLogger("scanstream.worker")

#: Backoff between retries of a failing batch: doubles from the first value up to the cap.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 15.0
#: How long a stopping worker waits for the outputs of its last batch before leaving them.
STOP_FINISH_S = 10.0
#: How long the store thread waits for the broker to acknowledge a batch's messages (step 5) or
#: for the loop to ack them (step 6) before the step fails as transient and is retried.
LOOP_STEP_TIMEOUT_S = 60.0
#: Seconds between two reports: the log line, the consumer lag, the alert queue and the
#: campaigns' budget and stock left (read from the state store here, never per batch).
REPORT_INTERVAL_S = 10.0


class WorkerStopped(Exception):
    """A permanent error stopped the worker; the message is the one line it logged."""


def stop_worker() -> None:
    """Ask the worker process to shut down as Ctrl-C would (Faust finishes what it can)."""
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class WorkerStatus:
    """What the worker reports about itself (logs, the web view, tests)."""

    state: str = "starting"  # running | retrying | stopped
    fatal: str = ""  # the permanent error that stopped the worker
    batches: int = 0
    scans: int = 0
    dead_letters: int = 0
    last_error: str = ""
    retries: int = 0
    started: float = field(default_factory=time.time)
    #: wall seconds spent in each step, summed over batches: where a slow worker's time goes
    seconds: Counter = field(default_factory=Counter)


def use_fetch_wait(app: faust.App, fetch_wait_ms: int) -> None:
    """Make ``app``'s consumer ask the broker to hold a fetch at most ``fetch_wait_ms``.

    Faust builds aiokafka's consumer with a fixed ``fetch_max_wait_ms`` of 1 500 ms.  The app's
    transport gets a consumer class of its own whose consumer thread sets the wait on the
    aiokafka consumer it creates, before that consumer starts (it hands the wait to its fetcher
    when it starts)."""
    from faust.transport.drivers import aiokafka as driver

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_wait_ms
            return consumer

    base = app.transport.Consumer

    class Consumer(base):  # type: ignore[misc, valid-type]
        def _new_consumer_thread(self):
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = Consumer


def read_campaigns(state: StateStore, campaigns: Sequence[Campaign]) -> list[tuple[Campaign, CampaignState]]:
    """What the state store says is left of each campaign it knows (one read per campaign).

    A campaign the store does not know yet (``KeyError``) is left out; a store that cannot be
    reached raises ``StateUnavailable``.
    """
    out = []
    for campaign in campaigns:
        try:
            out.append((campaign, state.campaign_state(campaign.id)))
        except KeyError:
            continue
    return out


def build_app(config: Config, handler: BatchHandler, reloader: RegistryReloader | None = None,
              *, web_port: int | None = None, metrics: WorkerMetrics | None = None,
              stop: Callable[[], None] = stop_worker) -> tuple[faust.App, WorkerStatus]:
    """The Faust app with the ``scans`` topic, the output topics and the agent.  ``stop`` is called
    once when a permanent error ends the worker (``WorkerStatus.fatal`` says why).  ``metrics``,
    when given, is told every step of the commit protocol, every batch done and every alert
    delivery record, and refreshed on the report timer."""
    k = config.kafka
    if metrics is not None:
        handler.checkpoint.observe = metrics.observe_step
        if handler.alerting is not None:
            handler.alerting.observe = metrics.observe_deliveries
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
        # a stopping worker does not wait for the acks of batches it could not finish: their
        # offsets stay uncommitted and the group takes them again (see ``STOP_FINISH_S``)
        stream_wait_empty=False,
    )
    use_fetch_wait(app, k.fetch_wait_ms)
    scans = app.topic(k.scans_topic, value_type=bytes, key_type=bytes, partitions=k.partitions)
    status = WorkerStatus()
    # one thread runs the pipeline (batches in order), the others reply and store earlier
    # batches' outcomes: chdb and the network release the GIL, so the three overlap
    pipeline_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanstream-pipeline")
    store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanstream-store")
    # replies do not wait for ClickHouse: the scan API's wait is pipeline + reply only
    reply_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scanstream-reply")

    async def retrying(what: str, size: int, step, *args):
        """Await ``step(*args)`` until it succeeds: a transient error holds the batch and retries with
        backoff; a permanent one stops the worker (``WorkerStopped``)."""
        delay = RETRY_FIRST_S
        while True:
            try:
                done = await step(*args)
            except Exception as exc:  # noqa: BLE001 - classified at once: retried only when transient
                status.last_error = f"{type(exc).__name__}: {exc}"[:500]
                if metrics is not None:
                    metrics.error(exc)
                if not is_transient(exc):
                    if not status.fatal:
                        status.state, status.fatal = "stopped", f"{what} of a batch failed permanently: {status.last_error}"
                        log.error("worker stops: %s; the batch stays uncommitted and is taken again after the fix",
                                  status.fatal)
                        stop()
                    raise WorkerStopped(status.fatal) from None
                status.state = "retrying"
                status.retries += 1
                if metrics is not None:
                    metrics.retrying.set(1)
                log.warning("%s of a batch of %d messages failed (%s); retrying in %.1f s", what, size,
                            status.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if status.state != "running":
                log.info("worker running (after %d retries)", status.retries)
            status.state = "running"
            if metrics is not None:
                metrics.retrying.set(0)
            return done

    def in_thread(pool: ThreadPoolExecutor, fn):
        return lambda *args: asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    loop_holder: list[asyncio.AbstractEventLoop] = []  # the agent's loop and stream, once it runs
    agent_stream: list = []

    def on_loop(coroutine) -> None:
        """Run ``coroutine`` on the event loop from the store thread and wait for it."""
        asyncio.run_coroutine_threadsafe(coroutine, loop_holder[0]).result(timeout=LOOP_STEP_TIMEOUT_S)

    async def send_all(messages: list[Produce]) -> None:
        futures = [await app.producer.send(p.topic, p.key, p.value, p.partition, None, p.headers)
                   for p in messages]
        if futures:
            await asyncio.gather(*futures)

    async def ack_all(events) -> None:
        for event in events:  # drops the hold taken in the agent; Faust commits acked offsets
            await agent_stream[0].ack(event)

    handler.send = lambda messages: on_loop(send_all(messages))  # step 5
    handler.ack = lambda batch: on_loop(ack_all(batch.source))  # step 6
    checkpoint = handler.checkpoint

    async def reply(batch: InFlight) -> None:
        t0 = time.perf_counter()
        await retrying("pushing the replies", len(batch.source), in_thread(reply_thread, checkpoint.reply), batch)
        status.seconds["reply"] += time.perf_counter() - t0

    async def finish(batch: InFlight, started: float, replied: asyncio.Task) -> None:
        """Steps 3-6 of one batch, once its replies are out."""
        await replied
        t0 = time.perf_counter()
        await retrying("storing and producing the outcomes", len(batch.source),
                       in_thread(store_thread, checkpoint.finish), batch)
        status.seconds["finish"] += time.perf_counter() - t0
        status.batches += 1
        status.scans += batch.scans
        status.dead_letters += batch.dead_letters
        if metrics is not None:
            scans = batch.result.scans
            metrics.observe_batch(scans["verdict"].tolist(), dead_letter_reasons(batch), batch.result.alerts,
                                  time.perf_counter() - started, scans["ts"][scans["reason"] == ""])

    @app.agent(scans, name="scanstream.process")
    async def process(stream):
        outputs: deque[asyncio.Task] = deque()  # steps 3-6 of earlier batches, oldest first
        loop_holder[:], agent_stream[:] = [asyncio.get_running_loop()], [stream]
        try:
            async for events in stream.take_events(k.take, within=k.within_ms / 1000):
                started = time.perf_counter()
                # take_events acks a batch's messages when it takes the next one; one more
                # reference each keeps them uncommitted until step 6 of their batch
                for event in events:
                    event.message.incref()
                records = [Record(e.message.topic, e.message.partition, e.message.offset, e.message.value,
                                  list(e.message.headers.items()) if isinstance(e.message.headers, dict)
                                  else list(e.message.headers or [])) for e in events]
                batch = await retrying("the pipeline", len(records), in_thread(pipeline_thread, handler.take),
                                       records, events)
                status.seconds["pipeline"] += time.perf_counter() - started
                replied = asyncio.create_task(reply(batch))  # at once, whatever is still being stored
                waited = time.perf_counter()
                while len(outputs) >= k.in_flight:
                    await outputs.popleft()  # a slow sink slows the intake
                status.seconds["wait"] += time.perf_counter() - waited
                outputs.append(asyncio.create_task(finish(batch, started, replied)))
                if reloader is not None:  # the ClickHouse client is safe to share with the store thread
                    await asyncio.get_running_loop().run_in_executor(pipeline_thread, reloader.maybe_reload)
        except WorkerStopped:
            return  # logged once where it happened; ``stop`` is shutting the worker down
        finally:
            # a stopping worker finishes the batches in hand when it can; the rest are redelivered
            pending = [t for t in outputs if not t.done()]
            if pending:
                try:
                    await asyncio.wait_for(asyncio.shield(asyncio.gather(*pending)), timeout=STOP_FINISH_S)
                except (asyncio.TimeoutError, asyncio.CancelledError, WorkerStopped):
                    for task in pending:
                        task.cancel()

    def refresh_campaigns() -> None:
        """The campaigns' budget and stock left into the metrics; a state store away is no reason
        to fail a report (the batches' retries say it)."""
        try:
            for campaign, state in read_campaigns(handler.pipeline.state, config.campaigns):
                metrics.observe_campaign(campaign, state)
        except Exception as exc:  # noqa: BLE001 - the gauges keep their last values
            log.debug("campaign budgets not refreshed: %s", exc)

    @app.timer(interval=REPORT_INTERVAL_S)
    async def report() -> None:
        if metrics is not None:
            if config.campaigns:
                await asyncio.get_running_loop().run_in_executor(None, refresh_campaigns)
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
                          for step in ("pipeline", "wait", "reply", "finish"))
        log.info("worker %s: %d batches, %d scans, %d dead letters, %d retries; seconds in %s%s", status.state,
                 status.batches, status.scans, status.dead_letters, status.retries, spent,
                 f"; last error: {status.last_error}" if status.state == "retrying" else "")

    return app, status
