"""Fan-out of a pipeline batch to every configured output, in one place.

Order within a batch: results file, then ClickHouse (scans, alerts, awards), then alert
notification.  A driver calls ``write`` and, only when it returns, treats the batch as done
(the local driver moves on; the Faust worker commits offsets).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import IO

import orjson

from engine import outcomes
from engine.pipeline import BatchResult
from engine.registry import Registry
from sinks.clickhouse import batch_from_rows
from sinks.notifiers import LogNotifier, Route, WebhookNotifier

log = logging.getLogger("scanstream.outputs")

#: Fields of a results-file line: DESIGN.md "Outputs", then why a draw paid or not, whether the
#: scan_id was a redelivery, and why an event was invalid.
RESULT_FIELDS = ("scan_id", "ts", "tenant", "kind", "batch", "serial", "code", "user_id", "role", "region",
                 "channel", "sku", "dealer_id", "verdict", "diversion", "campaign", "prize_tier", "prize_cents",
                 "draw", "replay", "reason")


def routes_from_registry(registry: Registry) -> dict[str, Route]:
    """One notification route per dealer that has a webhook."""
    d = registry.dealers
    routes = {}
    for dealer_id, hook, manager in zip(d.dealer_id.tolist(), d.webhook.tolist(), d.manager.tolist()):
        if hook:
            try:
                routes[dealer_id] = Route(webhook=hook, manager=manager)
            except ValueError as exc:
                log.warning("dealer %s: webhook not used: %s", dealer_id, exc)
    return routes


class ResultsFile:
    """``--results FILE``: one JSON object per input event, in input order."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fh: IO[bytes] = self.path.open("wb")

    def write(self, scans: outcomes.Columns) -> None:
        cols = [(f, scans[f].tolist()) for f in RESULT_FIELDS]
        n = len(cols[0][1])
        self._fh.write(b"".join(orjson.dumps({f: v[i] for f, v in cols}) + b"\n" for i in range(n)))

    def close(self) -> None:
        self._fh.close()


class Outputs:
    """Every output of a run: results file, ClickHouse sink, alert notifiers."""

    def __init__(self, results: ResultsFile | None = None, clickhouse=None,
                 notifier: WebhookNotifier | LogNotifier | None = None, routes: dict[str, Route] | None = None):
        self.results = results
        self.clickhouse = clickhouse
        self.notifier = notifier
        self.routes = routes or {}
        self.log_alerts = LogNotifier(level=logging.INFO)

    def write(self, result: BatchResult, token: str | None = None) -> None:
        """Store one batch everywhere; ``token`` identifies the batch for insert deduplication."""
        if self.results is not None:
            self.results.write(result.scans)
        if self.clickhouse is not None:
            self.clickhouse.write_scans(result.scans, dedup_token=f"{token}:scans" if token else None)
            self.clickhouse.write_alerts(result.alerts, dedup_token=f"{token}:alerts" if token else None)
            self.clickhouse.write_awards(result.awards, dedup_token=f"{token}:awards" if token else None)
        if len(result.alerts["alert_id"]):
            alerts = outcomes.rows(result.alerts, outcomes.ALERT_COLUMNS)
            self.log_alerts.notify(alerts, self.routes)
            if self.notifier is not None:
                self.notifier.notify(alerts, self.routes)

    def flush_deliveries(self, timeout: float | None = None) -> int:
        """Wait for pending webhook deliveries and store their records; returns how many."""
        if self.notifier is None:
            return 0
        records = self.notifier.drain(timeout)
        if records and self.clickhouse is not None:
            self.clickhouse.write_deliveries(batch_from_rows(records, outcomes.DELIVERY_COLUMNS))
        return len(records)

    def close(self) -> None:
        self.flush_deliveries()
        if self.notifier is not None:
            self.notifier.close()
        if self.results is not None:
            self.results.close()
