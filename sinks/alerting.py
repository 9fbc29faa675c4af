"""Alert delivery for a driver: log every alert, digest them per dealer and window for the
webhooks, and store each delivery's outcome in ``alert_deliveries``.

The local driver and the Kafka worker both hand each batch's alerts to one ``AlertDelivery``;
deliveries never block or fail a batch (``sinks.notifiers`` retries in the background).
"""
from __future__ import annotations

import logging
import os

from engine import outcomes
from engine.registry import Registry
from sinks.alert_digest import AlertDigests
from sinks.clickhouse import batch_from_rows
from sinks.notifiers import LogNotifier, Route, WebhookNotifier

log = logging.getLogger("scanstream.alerts")


def routes_from_registry(registry: Registry) -> dict[str, Route]:
    """One route per dealer with a webhook; its signing secret from the variable ``secret_env`` names."""
    d = registry.dealers
    routes = {}
    for dealer_id, hook, manager, secret_env in zip(d.dealer_id.tolist(), d.webhook.tolist(), d.manager.tolist(),
                                                    d.secret_env.tolist()):
        if not hook:
            continue
        secret = os.environ.get(secret_env) if secret_env else None
        if secret_env and secret is None:
            log.warning("dealer %s: variable %s (its webhook secret) is not set; sending unsigned", dealer_id,
                        secret_env)
        try:
            routes[dealer_id] = Route(webhook=hook, manager=manager, secret=secret)
        except ValueError as exc:
            log.warning("dealer %s: webhook not used: %s", dealer_id, exc)
    return routes


class AlertDelivery:
    """Logs alerts at once; sends one digest per dealer and window once the window is over."""

    def __init__(self, registry: Registry, notifier: WebhookNotifier | None, clickhouse=None,
                 grace_ms: int | None = None):
        self.notifier = notifier
        self.clickhouse = clickhouse
        self.routes = routes_from_registry(registry)
        self.digests = AlertDigests() if grace_ms is None else AlertDigests(grace_ms)
        self.logger = LogNotifier(level=logging.INFO)

    def set_registry(self, registry: Registry) -> None:
        """New dealers, managers and webhooks (registry reload)."""
        self.routes = routes_from_registry(registry)

    def add(self, alerts: outcomes.Columns, watermark_ms: int | None) -> None:
        """Alerts of one batch; ``watermark_ms`` is the newest event time seen so far."""
        if len(alerts["alert_id"]):
            self.logger.notify(outcomes.rows(alerts, outcomes.ALERT_COLUMNS), self.routes)
        due = self.digests.add(alerts, watermark_ms)
        if due and self.notifier is not None:
            self.notifier.notify(due, self.routes)
        self.store_deliveries(timeout=0)

    def store_deliveries(self, timeout: float | None = 0) -> int:
        """Write the records of finished deliveries to ``alert_deliveries``; returns how many."""
        if self.notifier is None:
            return 0
        records = self.notifier.drain(timeout)
        if records and self.clickhouse is not None:
            self.clickhouse.write_deliveries(batch_from_rows(records, outcomes.DELIVERY_COLUMNS))
        return len(records)

    def close(self, timeout: float | None = None) -> None:
        """Send every open digest, wait for deliveries (up to ``timeout``), store their records."""
        if self.notifier is not None:
            self.notifier.notify(self.digests.drain(), self.routes)
            self.store_deliveries(timeout)
            self.notifier.close()
        else:
            self.digests.drain()
