"""Prometheus metrics of a worker: scans by verdict, batch latency, lag, queues, service errors.

Served on ``scanstream worker --metrics-port P`` at ``http://127.0.0.1:P/metrics``.  Each
worker keeps its own registry, so tests can run several in one process.
"""
from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge, Histogram, start_http_server

from scanstream.engine.state import StateUnavailable
from scanstream.sinks.exceptions import SinkError

#: Batch latency buckets (seconds): a batch of envelopes takes tens to hundreds of milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def service_of(exc: BaseException) -> str:
    """Which service an exception of a batch step came from."""
    if isinstance(exc, StateUnavailable) or type(exc).__module__.startswith("redis"):
        return "redis"
    if isinstance(exc, SinkError) or "clickhouse" in type(exc).__module__:
        return "clickhouse"
    if "kafka" in type(exc).__module__ or type(exc).__name__.startswith("Producer"):
        return "kafka"
    return "engine"


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.scans = PromCounter("scanstream_scans", "Scans processed, by verdict", ["verdict"],
                                 registry=self.registry)
        self.dead_letters = PromCounter("scanstream_dead_letters", "Messages and events sent to the dead-letter topic",
                                        registry=self.registry)
        self.batch_seconds = Histogram("scanstream_batch_seconds", "Time from taking a batch to its outputs acked",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = PromCounter("scanstream_errors", "Failed batch steps, by service", ["service"],
                                  registry=self.registry)
        self.lag = Gauge("scanstream_consumer_lag", "Messages behind the end of each partition",
                         ["topic", "partition"], registry=self.registry)
        self.pending_alerts = Gauge("scanstream_alert_queue", "Alert digests and deliveries not yet sent",
                                    registry=self.registry)
        self.retrying = Gauge("scanstream_retrying", "1 while a batch is held back by a failing service",
                              registry=self.registry)

    def observe_batch(self, verdicts: Counter, dead_letters: int, seconds: float) -> None:
        for verdict, n in verdicts.items():
            self.scans.labels(verdict).inc(n)
        self.dead_letters.inc(dead_letters)
        self.batch_seconds.observe(seconds)

    def error(self, exc: BaseException) -> None:
        self.errors.labels(service_of(exc)).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
