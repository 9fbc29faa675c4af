"""Prometheus metrics of a worker: what operators alert on.

Served on ``scanstream worker --metrics-port P`` at ``http://HOST:P/metrics``, HOST being
``--metrics-host`` or ``[kafka] metrics_host`` (default 127.0.0.1: nothing is exposed beyond
the machine unless configured).  Each worker keeps its own registry, so tests can run several
in one process.

The families (README "Metrics" lists them for operators):

- ``scanstream_scans_total{verdict}``: scans whose batch is done (committed), by verdict; a
  ``conflict`` verdict is a scan_id that came back with another event;
- ``scanstream_dead_letters_total{reason}``: messages and events sent to the dead-letter topic,
  by a reason of ``DEAD_LETTER_REASONS`` (``dead_letter_reason`` maps the free text onto it);
- ``scanstream_batch_seconds``: from taking a batch to its outputs acked;
- ``scanstream_step_seconds{step}``: each step of the commit protocol
  (``streams.checkpoint.STEPS``), one observation per batch that completed the step;
- ``scanstream_event_lag_seconds``: now minus the event time of the newest stored scan;
- ``scanstream_errors_total{service}``, ``scanstream_retrying``: failed steps and held batches;
- ``scanstream_consumer_lag{topic,partition}``: messages behind the end of each partition;
- ``scanstream_alerts_total{kind,subtype}``: alerts raised, by the alert's ``alert`` field and
  its ``subtype`` (both mapped onto fixed sets);
- ``scanstream_alert_deliveries_total{status}``: delivery records by ``DELIVERY_STATUSES``;
- ``scanstream_alert_queue``: alert digests not yet sent;
- ``scanstream_campaign_budget_cents{campaign}`` and ``..._budget_left_cents{campaign}``,
  ``scanstream_campaign_stock{campaign,tier}`` and ``..._stock_left{campaign,tier}``: what a
  campaign was given and what the state store says is left, read on the worker's report timer
  (never per batch: a Redis store pays nothing per scan for them).

Every label takes its values from a fixed set, whatever the input says: free text (a dead
letter's reason, an alert's kind from a future engine) is mapped onto the set, with ``other``
for what is not known, so the number of series stays bounded.
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge, Histogram, start_http_server

from scanstream.engine.config import DEFAULT_METRICS_HOST
from scanstream.engine.conflicts import ALERT as CONFLICT_ALERT
from scanstream.engine.diversion import DIVERSION_LABELS
from scanstream.engine.enumeration import IDENTITIES
from scanstream.engine.lottery import Campaign
from scanstream.engine.state import CampaignState, StateUnavailable
from scanstream.sinks.exceptions import SinkError
from scanstream.sinks.notifiers import DELIVERED, FAILED, PENDING
from scanstream.streams.checkpoint import STEPS

#: Batch latency buckets (seconds): a batch of envelopes takes tens to hundreds of milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Step latency buckets (seconds): finer at the bottom than a batch's, since the outbox and the
#: commit take well under a millisecond while the store may take seconds.
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Milliseconds per second: scan times are epoch milliseconds, the lag gauge is in seconds.
MS_PER_S = 1000.0

#: The label value for anything outside a fixed set (a future reason, kind or status).
OTHER = "other"

#: Why a message or event went to the dead-letter topic, as a bounded label:
#: ``tombstone`` a message without a value; ``content_type`` a content type that is not a scan
#: or an envelope (or not UTF-8); ``not_json`` an event that is not a JSON object (or not text);
#: ``too_large`` an event over the size limit; ``missing_field`` a required field absent or
#: empty; ``bad_field`` a field of the wrong type or out of range (ts, role, region,
#: coordinates, identifier length).
DEAD_LETTER_REASONS = ("tombstone", "content_type", "not_json", "too_large", "missing_field", "bad_field", OTHER)
#: Fragments of the reasons ``streams.envelope`` and ``ext/scanparse.pyx`` write, in the order
#: they are tried: the first that occurs in a reason's first problem names its label.  A
#: content-type reason also says "is not", so the specific fragments come before the general ones.
_REASON_FRAGMENTS: tuple[tuple[str, str], ...] = (
    ("message has no value", "tombstone"),
    ("content-type", "content_type"),
    ("not JSON", "not_json"),
    ("not valid Unicode", "not_json"),
    ("not a JSON object", "not_json"),
    ("written twice", "not_json"),
    ("event must be bytes or str", "not_json"),
    ("exceeds the limit", "too_large"),
    ("missing required field", "missing_field"),
    (" is empty", "missing_field"),
    (" must be ", "bad_field"),
    (" is not ", "bad_field"),
    (" is outside ", "bad_field"),
    (" characters", "bad_field"),  # "user_id has N characters; at most M allowed", cut at "; " above
    ("cannot be fingerprinted", "bad_field"),
)
#: How the event parser joins the problems of one event: the first one names the label.
_PROBLEM_SEPARATOR = "; "

#: The ``alert`` field of the alerts the engine raises: diversion and cloned codes
#: (``engine.diversion``), enumeration (``engine.enumeration``), scan_id conflicts
#: (``engine.conflicts``).
ALERT_KINDS = ("diversion", "cloned_code", "enumeration", CONFLICT_ALERT, OTHER)
#: Their ``subtype`` field: a diversion's mismatch, a clone's evidence (users or provinces), the
#: identity that enumerated, whether a conflicting event kept its user.
ALERT_SUBTYPES = (*(label for label in DIVERSION_LABELS.tolist() if label != "none"), "users", "provinces",
                  *IDENTITIES, "same_user", "other_user", OTHER)

#: A failed delivery whose webhook was refused (not http(s), a private or loopback address), not
#: tried: ``sinks.alerting.read_routes`` and the notifier's address check write these errors, a
#: digest split in parts prefixes its part.
REFUSED = "refused"
_REFUSED_ERROR = re.compile(r"^(?:part \d+/\d+: )?(?:webhook refused|refused:)")
#: Delivery outcomes (``sinks.notifiers`` records): delivered, failed (retries spent, the robot
#: refused the message), pending (a deadline passed: sent again later), refused (see above).
DELIVERY_STATUSES = (DELIVERED, FAILED, PENDING, REFUSED, OTHER)


def service_of(exc: BaseException) -> str:
    """Which service an exception of a batch step came from."""
    if isinstance(exc, StateUnavailable) or type(exc).__module__.startswith("redis"):
        return "redis"
    if isinstance(exc, SinkError) or "clickhouse" in type(exc).__module__:
        return "clickhouse"
    if "kafka" in type(exc).__module__ or type(exc).__name__.startswith("Producer"):
        return "kafka"
    return "engine"


def dead_letter_reason(reason: str | bytes | None) -> str:
    """The bounded label (``DEAD_LETTER_REASONS``) of a dead letter's free-text reason.

    An event with several problems is labelled by the first one the parser found.  Bytes are
    read as UTF-8 (the reason header); anything unrecognised, empty or not text is ``other``.
    """
    if isinstance(reason, (bytes, bytearray)):
        reason = bytes(reason).decode("utf-8", "replace")
    if not isinstance(reason, str) or not reason:
        return OTHER
    first = reason.split(_PROBLEM_SEPARATOR, 1)[0]
    for fragment, label in _REASON_FRAGMENTS:
        if fragment in first:
            return label
    return OTHER


def alert_labels(kind: Any, subtype: Any) -> tuple[str, str]:
    """The bounded ``(kind, subtype)`` labels of an alert's ``alert`` and ``subtype`` fields."""
    return (kind if kind in ALERT_KINDS else OTHER), (subtype if subtype in ALERT_SUBTYPES else OTHER)


def delivery_status(record: Mapping[str, Any]) -> str:
    """The bounded status label (``DELIVERY_STATUSES``) of one delivery record of ``sinks.notifiers``."""
    status = record.get("status")
    if status == FAILED and _REFUSED_ERROR.match(str(record.get("error") or "")):
        return REFUSED
    return status if status in (DELIVERED, FAILED, PENDING) else OTHER


class WorkerMetrics:
    """The metrics of one worker, in a registry of its own (see the module's docstring).

    ``clock`` gives wall seconds since the epoch, as the scans' times are; a test passes its own.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        self.scans = PromCounter("scanstream_scans", "Scans processed, by verdict", ["verdict"],
                                 registry=self.registry)
        self.dead_letters = PromCounter("scanstream_dead_letters",
                                        "Messages and events sent to the dead-letter topic, by reason",
                                        ["reason"], registry=self.registry)
        self.batch_seconds = Histogram("scanstream_batch_seconds", "Time from taking a batch to its outputs acked",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.step_seconds = Histogram("scanstream_step_seconds",
                                      "Time of each step of the commit protocol, per batch that completed it",
                                      ["step"], buckets=STEP_BUCKETS, registry=self.registry)
        self.event_lag = Gauge("scanstream_event_lag_seconds",
                               "Now minus the event time of the newest stored scan (NaN before the first)",
                               registry=self.registry)
        self.event_lag.set_function(self._event_lag)
        self.errors = PromCounter("scanstream_errors", "Failed batch steps, by service", ["service"],
                                  registry=self.registry)
        self.lag = Gauge("scanstream_consumer_lag", "Messages behind the end of each partition",
                         ["topic", "partition"], registry=self.registry)
        self.alerts = PromCounter("scanstream_alerts", "Alerts raised, by kind and subtype", ["kind", "subtype"],
                                  registry=self.registry)
        self.deliveries = PromCounter("scanstream_alert_deliveries", "Alert delivery outcomes, by status",
                                      ["status"], registry=self.registry)
        self.pending_alerts = Gauge("scanstream_alert_queue", "Alert digests and deliveries not yet sent",
                                    registry=self.registry)
        self.retrying = Gauge("scanstream_retrying", "1 while a batch is held back by a failing service",
                              registry=self.registry)
        self.budget = Gauge("scanstream_campaign_budget_cents", "A campaign's configured budget, in cents",
                            ["campaign"], registry=self.registry)
        self.budget_left = Gauge("scanstream_campaign_budget_left_cents",
                                 "A campaign's budget not yet paid out, in cents (state store)",
                                 ["campaign"], registry=self.registry)
        self.stock = Gauge("scanstream_campaign_stock", "A campaign's configured prizes per tier",
                           ["campaign", "tier"], registry=self.registry)
        self.stock_left = Gauge("scanstream_campaign_stock_left", "Prizes of a campaign's tier not yet paid out "
                                "(state store)", ["campaign", "tier"], registry=self.registry)
        # the fixed label sets start at zero, so a rate or an alert has a series before the first event
        for step in STEPS:
            self.step_seconds.labels(step)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        for status in DELIVERY_STATUSES:
            self.deliveries.labels(status)
        self._newest_ms: int | None = None
        self._newest_lock = threading.Lock()

    # -- per batch (the store thread) and per step (the thread that ran it)

    def observe_batch(self, verdicts: Iterable[str], dead_letter_reasons: Iterable[str | bytes],
                      alerts: Mapping[str, np.ndarray] | None, seconds: float,
                      event_ms: np.ndarray | None = None) -> None:
        """One batch done: the verdicts of its scans, the reasons of its dead letters (free text),
        its alerts (columns with ``alert`` and ``subtype``), its seconds from taking to acked, and
        the event times (epoch ms) of its stored scans."""
        for verdict, n in Counter(verdicts).items():
            self.scans.labels(str(verdict)).inc(n)
        for reason, n in Counter(dead_letter_reason(r) for r in dead_letter_reasons).items():
            self.dead_letters.labels(reason).inc(n)
        if alerts is not None and len(alerts["alert"]):
            for (kind, subtype), n in Counter(alert_labels(k, s) for k, s in
                                              zip(alerts["alert"].tolist(), alerts["subtype"].tolist())).items():
                self.alerts.labels(kind, subtype).inc(n)
        self.batch_seconds.observe(seconds)
        if event_ms is not None and len(event_ms):
            self.observe_stored(int(np.max(event_ms)))

    def observe_step(self, step: str, seconds: float) -> None:
        """A commit-protocol step completed in ``seconds`` (``Checkpoint``'s observer); a step
        outside ``STEPS`` is a caller's bug and raises ``ValueError`` naming it."""
        if step not in STEPS:
            raise ValueError(f"step {step!r} is not one of the commit protocol's steps {STEPS}")
        self.step_seconds.labels(step).observe(seconds)

    def observe_stored(self, newest_ms: int) -> None:
        """The newest event time (epoch ms) of a stored batch's scans.

        A time ahead of this machine's clock (a phone's clock set forward) counts as now: kept
        as it is, it would hold the lag below zero and hide a real one until the clock caught up.
        """
        now_ms = int(self.clock() * MS_PER_S)
        with self._newest_lock:
            newest = min(int(newest_ms), now_ms)
            if self._newest_ms is None or newest > self._newest_ms:
                self._newest_ms = newest

    def _event_lag(self) -> float:
        """Read at each scrape: the lag keeps growing while nothing new is stored."""
        with self._newest_lock:
            newest = self._newest_ms
        if newest is None:
            return math.nan
        return self.clock() - newest / MS_PER_S

    def error(self, exc: BaseException) -> None:
        """A batch step failed with ``exc`` (counted by the service it came from)."""
        self.errors.labels(service_of(exc)).inc()

    # -- alert delivery (``AlertDelivery.observe``) and the report timer

    def observe_deliveries(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Delivery records of ``sinks.notifiers`` (or ``sinks.alerting``), counted by status."""
        for status, n in Counter(delivery_status(r) for r in records).items():
            self.deliveries.labels(status).inc(n)

    def observe_campaign(self, campaign: Campaign, state: CampaignState) -> None:
        """What ``campaign`` was given and what the state store says is left of it.

        A tier the configuration no longer names but the store still counts is labelled by its
        position (``tier-N``), so its stock stays visible.
        """
        self.budget.labels(campaign.id).set(campaign.budget_cents)
        self.budget_left.labels(campaign.id).set(state.budget_left)
        names = [t.name for t in campaign.tiers]
        for tier in campaign.tiers:
            self.stock.labels(campaign.id, tier.name).set(tier.stock)
        for t, left in enumerate(state.stock_left):
            self.stock_left.labels(campaign.id, names[t] if t < len(names) else f"tier-{t}").set(left)

    def serve(self, port: int, host: str = DEFAULT_METRICS_HOST) -> WSGIServer:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; the server is returned so a
        test can ``shutdown()`` it (a worker's lives as long as the process)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
