"""The worker's Prometheus metrics: what operators alert on.

The unit part checks the mappings that keep every label bounded (dead-letter reasons, alert
kinds, delivery statuses), the commit protocol's step observer, the event-time lag and the
campaign gauges, the alert rules and the worker dashboard.  The end-to-end part runs a real
``scanstream worker`` (Tansu broker, Redis state store, embedded ClickHouse), publishes a small
known set of scans one message at a time (so each message is one batch), scrapes ``/metrics``
over HTTP and checks the counts against the local driver's outcomes for the same scans and
against what the worker stored.
"""
from __future__ import annotations

import collections
import math
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config_writer import worker_toml
from scanstream.engine import outcomes
from scanstream.engine.config import load
from scanstream.engine.registry import Registry
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.ext.scanparse import parse_events
from scanstream.sinks.alerting import AlertDelivery
from scanstream.sinks.notifiers import WebhookNotifier
from scanstream.sinks.webhook_addresses import AddressPolicy
from scanstream.streams import envelope
from scanstream.streams.app import read_campaigns
from scanstream.streams.broker import free_port
from scanstream.streams.checkpoint import STEPS, Checkpoint
from scanstream.streams.metrics import (ALERT_KINDS, ALERT_SUBTYPES, DEAD_LETTER_REASONS, DELIVERY_STATUSES, OTHER,
                                        WorkerMetrics, alert_labels, dead_letter_reason, delivery_status)
from scanstream.streams.synthetic import build_world, generate_scans
from scanstream.streams.worker import BatchHandler, Record, dead_letter_reasons
from scanstream.wiring import build_pipeline

REPO = Path(__file__).resolve().parents[1]
LOCAL_TOML = REPO / "config" / "local.toml"
ALERT_RULES = REPO / "config" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "config" / "grafana" / "dashboards" / "scanstream-worker.json"
PROMETHEUS_UID = "scanstream-prometheus"
SCANSTREAM = shutil.which("scanstream", path=str(Path(sys.executable).parent)) or shutil.which("scanstream")
#: Synthetic scans of the end-to-end test, and how many go in one message (one batch each).
E2E_SCANS = 300
E2E_PER_MESSAGE = 50
#: Seconds the end-to-end test waits for the worker to finish one message (the first one
#: includes the worker's start), and for the report timer to refresh the campaign gauges.
BATCH_WAIT_S = 120
REPORT_WAIT_S = 60


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry folder and a stream of synthetic scans."""
    base = tmp_path_factory.mktemp("metrics-world")
    config = load(LOCAL_TOML)
    w = build_world(7, config.keys.get(7, 1), 1)
    w.write_registry(base / "registry")
    return base / "registry", generate_scans(w, E2E_SCANS, seed=21)


def paid_cents(awards, campaign: str) -> int:
    """Prize money of ``campaign`` in a batch's awards, each award once: a scan redelivered within
    the batch repeats its award row (the same payout key; the awards table keeps one)."""
    mine = awards["campaign"] == campaign
    _, first = np.unique(awards["payout_key"][mine].astype(str), return_index=True)
    return int(awards["prize_cents"][mine][first].sum())


def local_config(registry: Path):
    return replace(load(LOCAL_TOML), registry_dir=registry, clickhouse="")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_label(scraped: dict[tuple[str, frozenset], float], name: str, *labels: str) -> dict:
    """The samples of ``name`` keyed by the values of ``labels`` (one label: the value itself)."""
    out = {}
    for (sample, given), value in scraped.items():
        if sample == name:
            values = dict(given)
            key = tuple(values[label] for label in labels)
            out[key[0] if len(key) == 1 else key] = value
    return out


def scrape(metrics: WorkerMetrics) -> dict[tuple[str, frozenset], float]:
    return samples(generate_latest(metrics.registry).decode())


# --------------------------------------------------------------------------- dead-letter reasons


def parser_reason(event: bytes) -> str:
    """The reason the event parser writes for one line."""
    return parse_events([event])["reason"][0]


def envelope_reason(value: bytes | None, content_type: str) -> str:
    with pytest.raises(envelope.EnvelopeError) as caught:
        envelope.decode(value, content_type)
    return str(caught.value)


GOOD = {"scan_id": "s-1", "ts": 1795133248070, "code": "X", "user_id": "u-1"}


@pytest.mark.parametrize("reason, label", [
    (lambda: envelope_reason(None, envelope.SINGLE), "tombstone"),
    (lambda: envelope_reason(b"x", "image/png"), "content_type"),
    (lambda: envelope_reason(b"x", "application/x-ndjson; charset=gbk"), "content_type"),
    (lambda: parser_reason(b"not json"), "not_json"),
    (lambda: parser_reason(b"[1, 2]"), "not_json"),
    (lambda: parser_reason(b'{"scan_id": "a", "scan_id": "b"}'), "not_json"),
    (lambda: parser_reason(b"\xff\xfe{}"), "not_json"),
    (lambda: parser_reason(b'{"x": "' + b"a" * 100_000 + b'"}'), "too_large"),
    (lambda: parser_reason(orjson.dumps({k: v for k, v in GOOD.items() if k != "code"})), "missing_field"),
    (lambda: parser_reason(orjson.dumps({**GOOD, "user_id": ""})), "missing_field"),
    (lambda: parser_reason(orjson.dumps({**GOOD, "ts": "yesterday"})), "bad_field"),
    (lambda: parser_reason(orjson.dumps({**GOOD, "ts": 5})), "bad_field"),
    (lambda: parser_reason(orjson.dumps({**GOOD, "code": 7})), "bad_field"),
    (lambda: parser_reason(orjson.dumps({**GOOD, "role": "pirate"})), "bad_field"),
    (lambda: parser_reason(orjson.dumps({**GOOD, "region": "abc"})), "bad_field"),
    (lambda: parser_reason(orjson.dumps({**GOOD, "lat": 123.0})), "bad_field"),
    (lambda: parser_reason(orjson.dumps({**GOOD, "lat": "north"})), "bad_field"),
    (lambda: parser_reason(orjson.dumps({**GOOD, "user_id": "u" * 10_000})), "bad_field"),
])
def test_each_reason_the_worker_writes_has_its_label(reason, label) -> None:
    text = reason()
    assert text, "the case must make the parser or the envelope complain"
    assert dead_letter_reason(text) == label, text
    assert dead_letter_reason(text.encode()) == label  # as the reason header carries it


def test_several_problems_are_labelled_by_the_first() -> None:
    text = parser_reason(orjson.dumps({"ts": "yesterday", "code": 1}))  # no scan_id, no user, bad ts and code
    assert "; " in text
    assert dead_letter_reason(text) == "missing_field"


@pytest.mark.parametrize("hostile", [
    "", None, 42, b"", b"\xff\xfe", "x" * 100_000, "totally new reason", "\u202etxet", "a;b; c",
    "missing required", "NOT JSON", "; not JSON",
])
def test_unknown_reasons_are_other_and_never_raise(hostile) -> None:
    assert dead_letter_reason(hostile) == OTHER


def test_dead_letter_series_stay_bounded_whatever_the_reasons() -> None:
    metrics = WorkerMetrics()
    reasons = [f"reason number {i}: {'x' * (i % 50)}" for i in range(2000)] + ["message has no value"]
    metrics.observe_batch([], reasons, None, 0.1)
    counted = by_label(scrape(metrics), "scanstream_dead_letters_total", "reason")
    assert set(counted) == set(DEAD_LETTER_REASONS)
    assert counted[OTHER] == 2000 and counted["tombstone"] == 1
    assert sum(counted.values()) == len(reasons)


def test_the_handlers_dead_letters_are_counted_by_reason(world) -> None:
    """A batch with every kind of bad message the worker dead-letters, through ``BatchHandler``."""
    registry, lines = world
    config = local_config(registry)
    handler = BatchHandler(config, build_pipeline(config, state=MemoryStateStore()))
    one = [(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())]
    records = [
        Record("scans", 0, 0, None, []),
        Record("scans", 0, 1, b"\x89PNG", [(envelope.CONTENT_TYPE, b"image/png")]),
        Record("scans", 0, 2, envelope.encode([lines[0], b"not json", orjson.dumps({"scan_id": "m"}),
                                               orjson.dumps({**GOOD, "ts": "later"})]), one),
    ]
    batch = handler.handle(records)
    metrics = WorkerMetrics()
    metrics.observe_batch(batch.result.scans["verdict"].tolist(), dead_letter_reasons(batch), batch.result.alerts,
                          0.01)
    counted = by_label(scrape(metrics), "scanstream_dead_letters_total", "reason")
    assert {k: v for k, v in counted.items() if v} == {"tombstone": 1, "content_type": 1, "not_json": 1,
                                                       "missing_field": 1, "bad_field": 1}


# --------------------------------------------------------------------------- alerts and deliveries


def test_alert_kinds_and_subtypes() -> None:
    assert alert_labels("diversion", "region") == ("diversion", "region")
    assert alert_labels("diversion", "region+channel") == ("diversion", "region+channel")
    assert alert_labels("cloned_code", "provinces") == ("cloned_code", "provinces")
    assert alert_labels("enumeration", "device_id") == ("enumeration", "device_id")
    assert alert_labels("scan_id_conflict", "other_user") == ("scan_id_conflict", "other_user")
    assert alert_labels("martian", "x" * 1000) == (OTHER, OTHER)
    assert alert_labels(None, 3) == (OTHER, OTHER)


def test_alerts_are_counted_by_kind_with_bounded_series() -> None:
    metrics = WorkerMetrics()
    rows = [("diversion", "region"), ("diversion", "channel"), ("diversion", "region"), ("cloned_code", "users"),
            ("enumeration", "ip"), ("scan_id_conflict", "same_user")] + [(f"new-{i}", f"sub-{i}") for i in range(500)]
    alerts = outcomes.empty(outcomes.ALERT_COLUMNS, len(rows))
    alerts["alert"][:] = [r[0] for r in rows]
    alerts["subtype"][:] = [r[1] for r in rows]
    metrics.observe_batch([], [], alerts, 0.1)
    counted = by_label(scrape(metrics), "scanstream_alerts_total", "kind", "subtype")
    assert counted == {("diversion", "region"): 2, ("diversion", "channel"): 1, ("cloned_code", "users"): 1,
                       ("enumeration", "ip"): 1, ("scan_id_conflict", "same_user"): 1, (OTHER, OTHER): 500}
    assert all(k in ALERT_KINDS and s in ALERT_SUBTYPES for k, s in counted)


@pytest.mark.parametrize("record, status", [
    ({"status": "delivered", "error": ""}, "delivered"),
    ({"status": "pending", "error": "deadline passed after 2 attempt(s); last error: HTTP 500"}, "pending"),
    ({"status": "failed", "error": "HTTP 404"}, "failed"),
    ({"status": "failed", "error": "webhook refused: 10.1.2.3 is a private address (10.0.0.0/8)"}, "refused"),
    ({"status": "failed", "error": "refused: localhost resolves to 127.0.0.1, a loopback address"}, "refused"),
    ({"status": "failed", "error": "part 2/3: refused: 10.0.0.1 is a private address"}, "refused"),
    ({"status": "failed", "error": "HTTP 400: refused as too long"}, "failed"),
    ({"status": "lost in space", "error": ""}, OTHER),
    ({}, OTHER),
    ({"status": None, "error": None}, OTHER),
])
def test_delivery_statuses(record, status) -> None:
    assert delivery_status(record) == status
    assert status in DELIVERY_STATUSES


def test_alert_delivery_tells_the_metrics_each_outcome() -> None:
    """A dealer's webhook on a private address is refused: recorded failed, counted ``refused``."""
    dealers = [(2, {"dealer_id": "D1", "tenant": "7", "name": "D1", "channel": "KA", "regions": "44",
                    "manager": "m", "webhook": "http://192.168.7.7/hook?key=s3cr3t"})]
    notifier = WebhookNotifier(timeout_s=1.0, retries=0, address_policy=AddressPolicy())
    delivery = AlertDelivery(Registry.from_rows([], dealers, [], []), notifier, None, grace_ms=0)
    metrics = WorkerMetrics()
    delivery.observe = metrics.observe_deliveries
    alerts = outcomes.empty(outcomes.ALERT_COLUMNS, 1)
    for name, value in {"alert_id": "a-1", "ts": 1_798_761_600_000, "tenant": 7, "alert": "diversion",
                        "subtype": "region", "dealer_id": "D1", "manager": "m", "city": "4401",
                        "window_start": 1_798_761_600_000, "window_end": 1_798_762_200_000, "count": 3,
                        "detail": "{}"}.items():
        alerts[name][0] = value
    delivery.add(alerts, 1_798_762_200_000)
    delivery.close()
    counted = by_label(scrape(metrics), "scanstream_alert_deliveries_total", "status")
    assert counted == {"delivered": 0, "failed": 0, "pending": 0, "refused": 1, OTHER: 0}


def test_a_failing_observer_loses_no_delivery_record() -> None:
    dealers = [(2, {"dealer_id": "D1", "tenant": "7", "name": "D1", "channel": "KA", "regions": "44",
                    "manager": "m", "webhook": "http://10.0.0.9/hook"})]
    delivery = AlertDelivery(Registry.from_rows([], dealers, [], []),
                             WebhookNotifier(timeout_s=1.0, retries=0, address_policy=AddressPolicy()), None,
                             grace_ms=0)

    def broken(records):
        raise RuntimeError("metrics broke")

    delivery.observe = broken
    alerts = outcomes.empty(outcomes.ALERT_COLUMNS, 1)
    alerts["alert_id"][0], alerts["dealer_id"][0], alerts["alert"][0] = "a-2", "D1", "diversion"
    delivery.add(alerts, 10**13)
    delivery.close()
    assert delivery.counts["failed"] == 1


# --------------------------------------------------------------------------- the commit protocol's steps


class FlakySink:
    """A sink that fails its first ``failures`` stores."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.stored = 0

    def store(self, result, token: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("sink away")
        self.stored += 1


def test_every_step_is_observed_once_per_batch_even_after_a_retry(world) -> None:
    registry, lines = world
    seen: list[str] = []
    metrics = WorkerMetrics()

    def observe(step: str, seconds: float) -> None:
        assert seconds >= 0
        seen.append(step)
        metrics.observe_step(step, seconds)

    sink = FlakySink(failures=1)
    checkpoint = Checkpoint(build_pipeline(local_config(registry), state=MemoryStateStore()), [sink], observe=observe)
    positions = np.array([f"p:{i}" for i in range(100)], dtype=object)
    with pytest.raises(ConnectionError):
        checkpoint.run("t-1", lines[:100], positions)
    assert seen == ["process", "reply"]  # the failed store is the driver's error, not a step done
    checkpoint.run("t-1", lines[:100], positions)  # the driver's retry: the same batch, from the store on
    checkpoint.run("t-2", lines[100:200], positions)
    assert seen == list(STEPS) * 2
    assert sink.stored == 2
    counts = by_label(scrape(metrics), "scanstream_step_seconds_count", "step")
    assert counts == {step: 2 for step in STEPS}


def test_a_step_outside_the_protocol_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="'flush'"):
        WorkerMetrics().observe_step("flush", 0.1)


def test_the_protocol_runs_without_an_observer(world) -> None:
    registry, lines = world
    checkpoint = Checkpoint(build_pipeline(local_config(registry), state=MemoryStateStore()))
    batch = checkpoint.run("t", lines[:10], np.array([str(i) for i in range(10)], dtype=object))
    assert set(STEPS) <= batch.done


# --------------------------------------------------------------------------- event-time lag


def test_event_lag_is_now_minus_the_newest_stored_scan() -> None:
    now = [1_800_000_000.0]
    metrics = WorkerMetrics(clock=lambda: now[0])
    assert math.isnan(scrape(metrics)[("scanstream_event_lag_seconds", frozenset())])  # nothing stored yet
    metrics.observe_batch(["ok"], [], None, 0.1, np.array([1_799_999_000_000, 1_799_999_900_000]))
    assert scrape(metrics)[("scanstream_event_lag_seconds", frozenset())] == pytest.approx(100.0)
    now[0] += 60  # nothing new stored: the lag grows
    assert scrape(metrics)[("scanstream_event_lag_seconds", frozenset())] == pytest.approx(160.0)
    metrics.observe_batch(["ok"], [], None, 0.1, np.array([1_799_000_000_000]))  # an older scan comes late
    assert scrape(metrics)[("scanstream_event_lag_seconds", frozenset())] == pytest.approx(160.0)
    metrics.observe_batch(["ok"], [], None, 0.1, np.array([], np.int64))  # a batch of dead letters only
    assert scrape(metrics)[("scanstream_event_lag_seconds", frozenset())] == pytest.approx(160.0)


def test_a_scan_from_the_future_counts_as_now() -> None:
    now = [1_800_000_000.0]
    metrics = WorkerMetrics(clock=lambda: now[0])
    metrics.observe_batch(["ok"], [], None, 0.1, np.array([1_800_003_600_000]))  # an hour ahead
    assert scrape(metrics)[("scanstream_event_lag_seconds", frozenset())] == pytest.approx(0.0)
    now[0] += 30
    assert scrape(metrics)[("scanstream_event_lag_seconds", frozenset())] == pytest.approx(30.0)


# --------------------------------------------------------------------------- campaigns


def test_campaign_gauges_follow_the_state_store(world) -> None:
    registry, lines = world
    config = local_config(registry)
    state = MemoryStateStore()
    result = build_pipeline(config, state=state).process(lines)
    metrics = WorkerMetrics()
    for c, left in read_campaigns(state, config.campaigns):
        metrics.observe_campaign(c, left)
    scraped = scrape(metrics)
    awards = result.awards
    paid = {c.id: paid_cents(awards, c.id) for c in config.campaigns}
    assert all(paid.values()), paid  # every campaign of the demo configuration paid something
    assert by_label(scraped, "scanstream_campaign_budget_cents", "campaign") == {
        c.id: c.budget_cents for c in config.campaigns}
    assert by_label(scraped, "scanstream_campaign_budget_left_cents", "campaign") == {
        c.id: c.budget_cents - paid[c.id] for c in config.campaigns}
    once = np.unique(awards["payout_key"].astype(str), return_index=True)[1]  # as paid_cents: each award once
    won = collections.Counter(zip(awards["campaign"][once].tolist(), awards["prize_tier"][once].tolist()))
    assert by_label(scraped, "scanstream_campaign_stock_left", "campaign", "tier") == {
        (c.id, t.name): t.stock - won[c.id, t.name] for c in config.campaigns for t in c.tiers}
    assert by_label(scraped, "scanstream_campaign_stock", "campaign", "tier") == {
        (c.id, t.name): t.stock for c in config.campaigns for t in c.tiers}


def test_a_campaign_the_store_does_not_know_is_left_out(world) -> None:
    registry, _ = world
    config = local_config(registry)
    unknown = replace(config.campaigns[0], id="not-defined-yet")
    state = MemoryStateStore()
    build_pipeline(config, state=state)
    assert [c.id for c, _ in read_campaigns(state, [unknown, *config.campaigns])] == [c.id for c in config.campaigns]


# --------------------------------------------------------------------------- names, rules, dashboard


def test_names_follow_the_conventions() -> None:
    for family in WorkerMetrics().registry.collect():
        assert family.name.startswith("scanstream_"), family.name
        assert not family.name.endswith("_total"), family.name  # the counter type adds it
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name


def test_every_alert_rule_says_why_its_threshold_is_where_it_is() -> None:
    text = ALERT_RULES.read_text(encoding="utf-8")
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    for rule in rules:
        # the comment sits right under the rule's name, before its expression
        block = re.search(rf"- alert: {re.escape(rule['alert'])}\n(.*?)\n\s*expr:", text, re.S)
        assert block and re.search(r"(?m)^\s*#\s*\S", block.group(1)), f"{rule['alert']}: no comment says why"
    names = {r["alert"] for r in rules}
    assert {"ScanstreamConflicts", "ScanstreamEventLag", "ScanstreamBudgetLow", "ScanstreamStockLow",
            "ScanstreamAlertDeliveriesFailing"} <= names
    conflicts = next(r for r in rules if r["alert"] == "ScanstreamConflicts")
    assert 'scanstream_scans_total{verdict="conflict"}' in conflicts["expr"]  # no second conflict metric


def dashboard_targets(board: dict) -> list[tuple[dict, dict]]:
    out, stack = [], list(board["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        out.extend((panel, t) for t in panel.get("targets", []))
    return out


def test_the_worker_dashboard_reads_only_exported_metrics_on_the_provisioned_prometheus() -> None:
    import json
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert DASHBOARD.name == f"{board['uid']}.json"
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {f.name + s for f in WorkerMetrics().registry.collect() for s in suffixes[f.type]}
    targets = dashboard_targets(board)
    assert targets
    used = set()
    for panel, target in targets:
        assert panel["datasource"] == {"type": "prometheus", "uid": PROMETHEUS_UID}, panel["title"]
        assert target["datasource"] == {"type": "prometheus", "uid": PROMETHEUS_UID}, panel["title"]
        named = set(re.findall(r"\b(scanstream_\w+)", target["expr"]))
        assert named and named <= exported, (panel["title"], named - exported)
        used |= named
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    # every family the worker exports is on the dashboard
    assert {f.name for f in WorkerMetrics().registry.collect()} <= {re.sub(r"_(total|bucket|sum|count)$", "", n)
                                                                    for n in used}


# --------------------------------------------------------------------------- a real worker


def scrape_url(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return samples(answer.read().decode())


def batches_done(port: int) -> float:
    try:
        return scrape_url(port).get(("scanstream_batch_seconds_count", frozenset()), 0.0)
    except (urllib.error.URLError, ConnectionError):  # the worker is still starting
        return 0.0


def query(config: Path, sql: str, cwd: Path) -> list[list[str]]:
    out = subprocess.run([SCANSTREAM, "--config", str(config), "query", sql], capture_output=True, text=True,
                         cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr
    return [line.split() for line in out.stdout.rstrip("\n").splitlines()[2:-1]]


@pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")
@pytest.mark.timeout(900)
def test_a_real_worker_exports_what_it_did(world, broker, redis_url, redis_prefix, tmp_path) -> None:
    from kafka import KafkaProducer

    registry, synthetic = world
    config = local_config(registry)
    campaign = config.campaigns[0]
    # the synthetic stream's own invalid events, pinned: their reason is a field of the wrong type
    own = [r for r in parse_events(synthetic)["reason"].tolist() if r]
    assert own and all(r.startswith("code must be a string") for r in own)
    # a conflict: the first scan that was ok comes back under its scan_id with another user
    first_ok = build_pipeline(config, state=MemoryStateStore()).process(synthetic).scans
    at = int(np.nonzero(first_ok["verdict"] == "ok")[0][0])
    conflict = orjson.dumps({**orjson.loads(synthetic[at]), "user_id": "someone-else"})
    bad = [b"not json", orjson.dumps({"scan_id": "m-1", "ts": GOOD["ts"], "code": "X"}),
           orjson.dumps({**GOOD, "scan_id": "b-1", "ts": "yesterday"}), conflict]
    lines = synthetic + bad
    expected = build_pipeline(config, state=MemoryStateStore()).process(lines)
    scans = expected.scans
    assert collections.Counter(scans["verdict"].tolist())["conflict"] == 1
    valid_ts = scans["ts"][scans["reason"] == ""]
    newest_s = int(valid_ts.max()) / 1000
    assert newest_s < time.time(), "the scans must lie in the past for the lag's bounds below"
    paid = paid_cents(expected.awards, campaign.id)
    assert paid > 0

    ndjson = [(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode())]
    messages = [(envelope.encode(synthetic[i:i + E2E_PER_MESSAGE]), ndjson, None)
                for i in range(0, len(synthetic), E2E_PER_MESSAGE)]
    # a tombstone is a message with a key and no value
    messages += [(envelope.encode(bad), ndjson, None), (None, [], b"tombstone"),
                 (b"\x89PNG", [(envelope.CONTENT_TYPE, b"image/png")], None)]

    names = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in ("scans", "results", "awards", "alerts", "dlq", "group")}
    kafka = {"bootstrap": broker.bootstrap, **{f"{k}_topic": names[k] for k in ("scans", "results", "awards",
                                                                                  "alerts", "dlq")},
             "group": names["group"], "partitions": 1, "take": 16, "within_ms": 50, "session_timeout_s": 4}
    config_path = tmp_path / "worker.toml"
    config_path.write_text(worker_toml(LOCAL_TOML.read_text(encoding="utf-8"), registry=registry,
                                       chdb=tmp_path / "chdb", state="redis",
                                       redis={"url": redis_url, "prefix": redis_prefix}, kafka=kafka),
                           encoding="utf-8")
    port = free_port()
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([SCANSTREAM, "--config", str(config_path), "worker", "--loglevel", "info",
                                   "--metrics-port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        # one message at a time, each sent once the worker is done with the one before: one batch each
        for n, (value, headers, key) in enumerate(messages, start=1):
            producer.send(names["scans"], value, key=key, partition=0, headers=headers)
            producer.flush()
            deadline = time.monotonic() + BATCH_WAIT_S
            while batches_done(port) < n and worker.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert worker.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert batches_done(port) == n, f"message {n} was not done as batch {n}"
        # the report timer reads the campaign's budget from Redis every few seconds
        want_left = campaign.budget_cents - paid
        deadline = time.monotonic() + REPORT_WAIT_S
        left = None
        while left != want_left and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            left = by_label(scrape_url(port), "scanstream_campaign_budget_left_cents", "campaign").get(campaign.id)
        before = time.time()
        scraped = scrape_url(port)
        after = time.time()
        assert worker.poll() is None, log_path.read_text(errors="replace")[-3000:]
    finally:
        producer.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()

    batches = len(messages)
    assert scraped[("scanstream_batch_seconds_count", frozenset())] == batches
    assert by_label(scraped, "scanstream_step_seconds_count", "step") == {step: batches for step in STEPS}
    assert by_label(scraped, "scanstream_scans_total", "verdict") == dict(collections.Counter(scans["verdict"].tolist()))
    assert by_label(scraped, "scanstream_dead_letters_total", "reason") == {
        "tombstone": 1, "content_type": 1, "not_json": 1, "missing_field": 1, "bad_field": 1 + len(own),
        "too_large": 0, OTHER: 0}
    assert by_label(scraped, "scanstream_alerts_total", "kind", "subtype") == dict(collections.Counter(
        zip(expected.alerts["alert"].tolist(), expected.alerts["subtype"].tolist())))
    assert ("scan_id_conflict", "other_user") in by_label(scraped, "scanstream_alerts_total", "kind", "subtype")
    lag = scraped[("scanstream_event_lag_seconds", frozenset())]
    assert before - newest_s <= lag <= after - newest_s
    assert by_label(scraped, "scanstream_alert_deliveries_total", "status") == {s: 0 for s in DELIVERY_STATUSES}

    # what the worker stored: the budget left is the budget minus the prizes in its awards table
    stored = {(c, tier): (int(n), int(cents)) for c, tier, n, cents in query(
        config_path, "SELECT campaign, prize_tier, count(), sum(prize_cents) FROM awards FINAL "
                     "GROUP BY campaign, prize_tier", tmp_path)}
    stored_paid = {c.id: sum(cents for (cid, _), (_, cents) in stored.items() if cid == c.id)
                   for c in config.campaigns}
    assert stored_paid[campaign.id] == paid
    assert by_label(scraped, "scanstream_campaign_budget_cents", "campaign") == {
        c.id: c.budget_cents for c in config.campaigns}
    assert by_label(scraped, "scanstream_campaign_budget_left_cents", "campaign") == {
        c.id: c.budget_cents - stored_paid[c.id] for c in config.campaigns}
    assert by_label(scraped, "scanstream_campaign_stock_left", "campaign", "tier") == {
        (c.id, t.name): t.stock - stored.get((c.id, t.name), (0, 0))[0] for c in config.campaigns for t in c.tiers}
