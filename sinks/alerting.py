"""Alert delivery for a driver: log every alert, digest them per dealer and window for the
webhooks, and store each delivery's outcome in ``alert_deliveries``.

The local driver and the Kafka worker both hand each batch's alerts to one ``AlertDelivery``.
An alert never fails, holds or retries a batch of scans: ``add`` returns at once and never
raises (``sinks.notifiers`` sends in the background), and delivery is bounded in time:

- the deliveries a batch starts stop trying ``batch_deadline_s`` after it (``alerts.batch_deadline_s``);
- the end of a run (``close``: the open digests, a worker's shutdown, ``retry_pending``) waits
  at most ``run_deadline_s`` (``alerts.run_deadline_s``) for delivery.

What is not delivered by its deadline is stored as ``pending`` in ``alert_deliveries`` and sent
again: by the same process every ``retry_interval_s`` (the next batch after it), by the next
``AlertDelivery`` that starts on the same ClickHouse (the pending rows' alerts are read back from
``alerts``), or by ``retry_pending`` (``scanstream alerts retry``).  ``pending_count`` says how
many alerts are pending.  Delivery is at least once: an alert abandoned as pending while its
reply was on the way may reach its dealer twice.

Webhook URLs of ``dealers.csv`` that are not http(s) or point at a link-local, private or (unless
``allow_loopback``) loopback address are refused, with an error naming the dealer, the URL
(secrets redacted) and why; an alert for such a dealer is recorded ``failed`` with that reason.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scanstream.engine import outcomes
from scanstream.engine.registry import Registry
from scanstream.engine.urls import redact_url
from scanstream.sinks.alert_digest import AlertDigests, digests_of
from scanstream.sinks.clickhouse import batch_from_rows
from scanstream.sinks.alert_messages import FORMATS, Route, detect_format
from scanstream.sinks.notifiers import DELIVERED, FAILED, PENDING, LogNotifier, delivery_records
from scanstream.sinks.webhook_addresses import WebhookRefused, check_webhook_url

log = logging.getLogger("scanstream.alerts")

#: Seconds the deliveries started by one batch (or one retry round) may keep trying.
DEFAULT_BATCH_DEADLINE_S = 10.0
#: Seconds the end of a run (or a worker's shutdown, or ``retry_pending``) waits for delivery.
DEFAULT_RUN_DEADLINE_S = 60.0
#: Seconds between two retries, within one process, of the alerts left pending.
DEFAULT_RETRY_INTERVAL_S = 60.0
#: Past its deadline, a delivery under way gets this long to record its own outcome before
#: it is recorded pending (an attempt's socket timeout is already cut to the deadline).
CLOSE_GRACE_S = 1.0
#: Pending rows older than this are not sent again (a dealer's chat wants no week-old alert).
PENDING_MAX_AGE_DAYS = 7
#: At most this many pending alerts are read back from ClickHouse in one go.
PENDING_READ_LIMIT = 10_000
#: At most this many pending alerts (or unwritten delivery records) are held in memory; beyond
#: it they wait in ClickHouse for the next start or ``retry_pending``.
MAX_HELD = 100_000

#: The alerts (``ALERT_COLUMNS``, times as epoch ms) whose latest delivery record is pending.
#: On a tie of ``ts`` a record other than pending wins: a delivery recorded in the same
#: millisecond as its pending record is the later fact.
PENDING_ALERTS_SQL = """
SELECT alert_id, toUnixTimestamp64Milli(ts), tenant, alert, subtype, dealer_id, manager, city, code,
       toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end), count, detail
FROM alerts FINAL
WHERE alert_id IN (
    SELECT alert_id FROM alert_deliveries
    WHERE ts >= now64(3) - toIntervalDay({days:UInt32})
    GROUP BY alert_id
    HAVING argMax(status, (ts, status != 'pending')) = 'pending'
)
ORDER BY tenant, dealer_id, window_start, alert_id
LIMIT {limit:UInt32}
"""

_ALERT_NAMES = outcomes.names(outcomes.ALERT_COLUMNS)


def _seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} {value!r}: expected a finite number of seconds > 0")
    return float(value)


def read_routes(registry: Registry, *,
                allow_loopback: bool = False) -> tuple[dict[str, Route], dict[str, tuple[str, str, str]]]:
    """The routes of the dealers with a webhook, and the refused ones: dealer -> (URL, why, format).

    A route's format is the dealer's ``robot`` (empty: the URL's host decides), its mention the
    dealer's ``manager`` and ``manager_id``, its signing secret the variable ``secret_env`` names.  A refused webhook
    is logged as an error naming the dealer, the URL (secrets redacted) and the reason.
    """
    d = registry.dealers
    routes: dict[str, Route] = {}
    refused: dict[str, tuple[str, str, str]] = {}
    for dealer_id, hook, manager, secret_env, robot, manager_id in zip(
            d.dealer_id.tolist(), d.webhook.tolist(), d.manager.tolist(), d.secret_env.tolist(), d.robot.tolist(),
            d.manager_id.tolist()):
        if not hook:
            continue
        try:
            check_webhook_url(hook, allow_loopback=allow_loopback)
            secret = os.environ.get(secret_env) if secret_env else None
            # ``robot`` names the format; empty, the URL's host implies it
            route = Route(webhook=hook, fmt=robot or None, manager=manager, secret=secret, manager_id=manager_id)
        except (WebhookRefused, ValueError) as exc:
            reason = f"webhook refused: {exc}"
            log.error("dealer %s: webhook %r refused: %s", dealer_id, redact_url(hook), exc)
            refused[dealer_id] = (hook, reason, robot if robot in FORMATS else detect_format(hook))
            continue
        if secret_env and secret is None:
            log.warning("dealer %s: variable %s (its webhook secret) is not set; sending unsigned", dealer_id,
                        secret_env)
        routes[dealer_id] = route
    return routes, refused


def routes_from_registry(registry: Registry, *, allow_loopback: bool = False) -> dict[str, Route]:
    """One route per dealer with an acceptable webhook (``read_routes`` without the refused ones)."""
    return read_routes(registry, allow_loopback=allow_loopback)[0]


def read_pending(clickhouse, *, max_age_days: int = PENDING_MAX_AGE_DAYS,
                 limit: int = PENDING_READ_LIMIT) -> list[dict[str, Any]]:
    """The alerts (``ALERT_COLUMNS`` dicts) whose latest delivery record in ``alert_deliveries``
    is ``pending``, read back from ``alerts``; raises ``SinkError`` when ClickHouse fails."""
    _, rows = clickhouse.query(PENDING_ALERTS_SQL, {"days": int(max_age_days), "limit": int(limit)})
    out = []
    for row in rows:
        alert = dict(zip(_ALERT_NAMES, row))
        for name in ("ts", "tenant", "window_start", "window_end", "count"):
            alert[name] = int(alert[name])
        out.append(alert)
    return out


@dataclass(frozen=True)
class RetryResult:
    """What ``retry_pending`` did: alerts found pending, and how their deliveries ended."""

    found: int
    delivered: int
    failed: int
    pending: int


class AlertDelivery:
    """Logs alerts at once; sends one digest per dealer and window once the window is over;
    keeps what its deadlines left undelivered as pending and sends it again later."""

    def __init__(self, registry: Registry, notifier, clickhouse=None, grace_ms: int | None = None, *,
                 batch_deadline_s: float = DEFAULT_BATCH_DEADLINE_S, run_deadline_s: float = DEFAULT_RUN_DEADLINE_S,
                 allow_loopback: bool = False, retry_stored: bool = True,
                 retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S, clock=time.monotonic):
        self.notifier = notifier  # a WebhookNotifier, or None: log only
        self.clickhouse = clickhouse
        self.batch_deadline_s = _seconds(batch_deadline_s, "batch_deadline_s")
        self.run_deadline_s = _seconds(run_deadline_s, "run_deadline_s")
        self.retry_interval_s = _seconds(retry_interval_s, "retry_interval_s")
        self.allow_loopback = allow_loopback
        self.clock = clock
        self.routes, self.refused = read_routes(registry, allow_loopback=allow_loopback)
        self.digests = AlertDigests() if grace_ms is None else AlertDigests(grace_ms)
        self.logger = LogNotifier(level=logging.INFO)
        #: records made, by status (this object's lifetime)
        self.counts: Counter[str] = Counter()
        #: told every batch of records as they are collected (a worker's metrics); may be set later
        self.observe: Callable[[list[dict[str, Any]]], None] | None = None
        self._lock = threading.RLock()
        self._sent: dict[str, dict[str, Any]] = {}  # alert_id -> alert, delivery under way
        self._pending: dict[str, dict[str, Any]] = {}  # alert_id -> alert, pending: to send again
        self._unwritten: list[dict[str, Any]] = []  # records not yet in ClickHouse
        self._next_retry = clock() + self.retry_interval_s
        if retry_stored and notifier is not None and clickhouse is not None:
            self.retry_stored(raise_errors=False)

    # -- public

    def set_registry(self, registry: Registry) -> None:
        """New dealers, managers and webhooks (registry reload)."""
        self.routes, self.refused = read_routes(registry, allow_loopback=self.allow_loopback)

    def add(self, alerts: outcomes.Columns, watermark_ms: int | None) -> None:
        """Alerts of one batch; ``watermark_ms`` is the newest event time seen so far.

        Returns at once and never raises: a failing webhook, notifier or ClickHouse is logged
        and recorded, never passed on to the batch.
        """
        try:
            if len(alerts["alert_id"]):
                self.logger.notify(outcomes.rows(alerts, outcomes.ALERT_COLUMNS), self.routes)
            due = self.digests.add(alerts, watermark_ms)
            if due and self.notifier is not None:
                self._send(due, self.clock() + self.batch_deadline_s)
            if self._pending and self.notifier is not None and self.clock() >= self._next_retry:
                self.retry_held()
            self.store_deliveries(timeout=0)
        except Exception:  # noqa: BLE001 - an alert never fails a batch
            log.exception("alert delivery failed; the batch goes on")

    def retry_held(self, deadline_s: float | None = None) -> int:
        """Send the alerts held as pending again (deadline: ``batch_deadline_s``); returns how many."""
        with self._lock:
            self._next_retry = self.clock() + self.retry_interval_s
            held = [a for i, a in self._pending.items() if i not in self._sent]
            self._pending.clear()
        if held and self.notifier is not None:
            log.info("sending %d pending alert(s) again", len(held))
            self._send(digests_of(held), self.clock() + (deadline_s or self.batch_deadline_s))
        return len(held)

    def retry_stored(self, deadline_s: float | None = None, *, raise_errors: bool = True) -> int:
        """Read the alerts whose latest delivery in ClickHouse is pending and send them again
        (deadline: ``batch_deadline_s``); returns how many.  With ``raise_errors`` false a
        ClickHouse error is logged and 0 returned."""
        if self.notifier is None or self.clickhouse is None:
            return 0
        try:
            stored = read_pending(self.clickhouse)
        except Exception as exc:
            if raise_errors:
                raise
            log.warning("pending alert deliveries not read back (sent again on a later start): %s", exc)
            return 0
        with self._lock:
            fresh = [a for a in stored if a["alert_id"] not in self._sent]
            for a in fresh:
                self._pending.pop(a["alert_id"], None)
        if fresh:
            log.info("sending %d alert(s) pending from an earlier run again", len(fresh))
            self._send(digests_of(fresh), self.clock() + (deadline_s or self.batch_deadline_s))
        return len(fresh)

    def pending_count(self) -> int:
        """Alerts whose delivery is pending (a deadline passed), held to be sent again; after
        ``close``, what the run leaves pending in ``alert_deliveries``."""
        with self._lock:
            return len(self._pending)

    def in_flight(self) -> int:
        """Alerts whose delivery is under way."""
        with self._lock:
            return len(self._sent)

    def store_deliveries(self, timeout: float | None = 0) -> int:
        """Write the records of finished deliveries to ``alert_deliveries`` (waiting up to
        ``timeout`` for deliveries under way); returns how many were collected.  Never raises:
        records ClickHouse refuses are kept and written with the next ones."""
        records: list[dict[str, Any]] = []
        if self.notifier is not None:
            try:
                records = self.notifier.drain(timeout)
            except Exception:  # noqa: BLE001
                log.exception("collecting alert delivery records failed")
        self._take(records)
        with self._lock:
            batch = [*self._unwritten, *records]
            self._unwritten = []
        if batch and self.clickhouse is not None:
            try:
                self.clickhouse.write_deliveries(batch_from_rows(batch, outcomes.DELIVERY_COLUMNS))
            except Exception as exc:  # noqa: BLE001 - written with the next records
                log.warning("%d alert delivery record(s) not stored yet: %s", len(batch), exc)
                with self._lock:
                    self._unwritten = batch[-MAX_HELD:]
        return len(records)

    def close(self, timeout: float | None = None) -> None:
        """End of a run: send every open digest (and, when due, the held pending alerts), wait for
        delivery at most ``run_deadline_s`` (or ``timeout`` when shorter), record what is left as
        pending, store the records.  Never raises."""
        if self.notifier is None:
            self.digests.drain()
            return
        try:
            limit = self.run_deadline_s if timeout is None else max(0.0, min(timeout, self.run_deadline_s))
            deadline = self.clock() + limit
            try:
                self.notifier.expire(time.monotonic() + limit)
            except AttributeError:  # a notifier without deadlines
                pass
            self._send(self.digests.drain(), deadline)
            if self._pending and self.clock() >= self._next_retry:
                self.retry_held()
            self.store_deliveries(timeout=max(0.0, deadline - self.clock()) + CLOSE_GRACE_S)
            try:
                left = self.notifier.abandon("run deadline passed before delivery ended")
            except AttributeError:
                left = 0
            if left:
                log.warning("%d alert deliveries still under way at the run deadline (%g s): pending", left, limit)
            self.store_deliveries(timeout=0)
        except Exception:  # noqa: BLE001
            log.exception("alert delivery at the end of the run failed")
        finally:
            try:
                self.notifier.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the alert notifier failed")
            # closing records nothing new after ``abandon``; what it might, is stored here
            self.store_deliveries(timeout=0)
            with self._lock:  # nothing is under way any more: whatever was is pending
                for alert_id, alert in self._sent.items():
                    self._pending.setdefault(alert_id, alert)
                self._sent.clear()
        if self._pending:
            log.warning("%d alert(s) pending delivery; sent again on the next start or by 'scanstream alerts retry'",
                        len(self._pending))

    # -- internals

    def _send(self, digests: list[dict[str, Any]], deadline: float) -> None:
        """Schedule ``digests``; a refused route or a notifier error becomes a record, never an exception."""
        monotonic_deadline = time.monotonic() + (deadline - self.clock())
        for digest in digests:
            dealer = str(digest.get("dealer_id", ""))
            items = digest.get("items") or [digest]
            if dealer in self.refused:
                url, reason, fmt = self.refused[dealer]
                self._local(delivery_records(digest, fmt, url, FAILED, 0, 0, reason))
                continue
            if dealer not in self.routes:
                continue  # no webhook: not a failed delivery
            with self._lock:
                for item in items:
                    self._sent[str(item["alert_id"])] = item
            try:
                self.notifier.notify([digest], self.routes, deadline=monotonic_deadline)
            except Exception as exc:  # noqa: BLE001 - recorded pending, sent again later
                log.exception("alert notifier failed; %d alert(s) pending", len(items))
                route = self.routes[dealer]
                self._local(delivery_records(digest, route.format, route.webhook, PENDING, 0, 0,
                                             f"notifier error: {type(exc).__name__}: {exc}"))

    def _local(self, records: list[dict[str, Any]]) -> None:
        """Records made here (refused routes, notifier errors): counted now, written with the next store."""
        self._take(records)
        with self._lock:
            self._unwritten.extend(records)
            del self._unwritten[:-MAX_HELD]

    def _take(self, records: list[dict[str, Any]]) -> None:
        """Follow each alert's latest status: delivered and failed are done, pending is held."""
        with self._lock:
            for record in records:
                alert_id, status = record["alert_id"], record["status"]
                self.counts[status] += 1
                alert = self._sent.pop(alert_id, None)
                if status == PENDING:
                    if alert is not None and len(self._pending) < MAX_HELD:
                        self._pending[alert_id] = alert
                elif status in (DELIVERED, FAILED):
                    self._pending.pop(alert_id, None)
        if records and self.observe is not None:
            try:
                self.observe(records)
            except Exception:  # noqa: BLE001 - counting must not lose the records being written
                log.exception("counting alert delivery records failed")


def retry_pending(clickhouse, registry: Registry, notifier, deadline_s: float = DEFAULT_RUN_DEADLINE_S, *,
                  allow_loopback: bool = False) -> RetryResult:
    """Send again every alert whose latest delivery in ``alert_deliveries`` is pending, to the
    webhooks ``registry`` names now; wait at most ``deadline_s``; store the outcomes (what is
    still undelivered stays pending).  Closes ``notifier``.  For ``scanstream alerts retry``;
    raises ``SinkError`` when ClickHouse cannot be read."""
    delivery = AlertDelivery(registry, notifier, clickhouse, batch_deadline_s=deadline_s, run_deadline_s=deadline_s,
                             allow_loopback=allow_loopback, retry_stored=False)
    try:
        found = delivery.retry_stored(deadline_s)
    except Exception:
        notifier.close()
        raise
    delivery.close()
    return RetryResult(found=found, delivered=delivery.counts[DELIVERED], failed=delivery.counts[FAILED],
                       pending=delivery.pending_count())
