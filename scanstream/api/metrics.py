"""Prometheus metrics of the HTTP scan gateway, served at its own ``/metrics``.

Beside the worker's (``streams.metrics``), under the same naming: what an operator of the scan
API alerts on.

- ``scanstream_api_requests_total{route,status}``: answered requests by route template and HTTP
  status (429: rate limited, 503: the broker or Redis down, 202: the deadline passed);
- ``scanstream_api_request_seconds{route}``: from the request's arrival to its answer.

Labels take their values from fixed sets, so a client sending random paths or methods cannot
grow the number of series: an unknown route is ``other``, a status outside ``STATUSES`` is
``other``.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The gateway's routes (``scanstream.api.app``), as their templates.
ROUTES = ("/v1/scans", "/v1/scans:batch", "/v1/scans/{scan_id}", "/healthz", "/readyz", "/openapi.json",
          "/metrics")
#: The statuses the gateway answers.
STATUSES = (200, 202, 400, 404, 405, 413, 422, 429, 500, 503)
#: Answer latency buckets (seconds): a scan's answer is due within a few hundred milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """One gateway's metrics in a registry of its own (tests run several gateways in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("scanstream_api_requests", "Answered requests by route and HTTP status",
                                ("route", "status"), registry=self.registry)
        self.seconds = Histogram("scanstream_api_request_seconds", "From a request's arrival to its answer",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe(self, route: str, status: int, seconds: float) -> None:
        route = route if route in ROUTES else "other"
        self.requests.labels(route, str(status) if status in STATUSES else "other").inc()
        self.seconds.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
