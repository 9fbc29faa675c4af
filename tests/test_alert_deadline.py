"""Alert delivery within deadlines: a webhook that hangs or answers 500 costs a run at most its
deadline; what is undelivered is stored ``pending`` in ``alert_deliveries`` (embedded ClickHouse)
and delivered by a later start, a later batch, or ``retry_pending``.  The webhook is a real
HTTP server on 127.0.0.1; timings are asserted with generous margins (a noisy machine)."""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("chdb")

from scanstream.engine import outcomes  # noqa: E402
from scanstream.engine.config import ConfigError, load  # noqa: E402
from scanstream.engine.registry import Registry  # noqa: E402
from scanstream.sinks.alerting import AlertDelivery, RetryResult, retry_pending  # noqa: E402
from scanstream.sinks.clickhouse import ClickHouseSink, connect  # noqa: E402
from scanstream.sinks.exceptions import SinkError  # noqa: E402
from scanstream.sinks.notifiers import WebhookNotifier  # noqa: E402
from scanstream.sinks.webhook_addresses import AddressPolicy  # noqa: E402

LOCAL_TOML = Path(__file__).resolve().parents[1] / "config" / "local.toml"
WINDOW_MS = 600_000
T0 = 1_798_761_600_000  # 2027-01-01 00:00 UTC
#: Seconds a run may overrun its deadline here: thread scheduling, chdb, a busy CI machine.
MARGIN_S = 5.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


class Webhook:
    """A receiver whose behaviour the test switches: ``ok``, ``hang`` (no reply for ``hang_s``) or ``500``."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.hang_s = 30.0
        self.bodies: list[dict[str, Any]] = []
        self.hits = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.url = ""

    def alert_ids(self) -> list[str]:
        with self.lock:
            return sorted(i["alert_id"] for body in self.bodies for i in body["items"])


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    state = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                state.hits += 1
                mode = state.mode
            if mode == "hang":
                state.release.wait(state.hang_s)
                return  # drop the connection without a reply
            if mode == "500":
                status, payload = 500, b"internal error"
            else:
                status, payload = 200, b"{}"
                with state.lock:
                    state.bodies.append(orjson.loads(body))
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up (its deadline)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def chdb_target(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one chdb data path of this module (chdb hosts one path per process)."""
    return f"chdb:{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def sink(chdb_target: str, request: pytest.FixtureRequest) -> Iterator[ClickHouseSink]:
    database = "t_" + re.sub(r"\W", "_", request.node.name)[:60]
    s = ClickHouseSink(connect(chdb_target, database=database))
    s.ensure_schema()
    yield s
    s.close()


def registry_for(url: str, dealers: int = 1) -> Registry:
    rows = [(line, {"dealer_id": f"D{i}", "tenant": "7", "name": f"Dealer {i}", "channel": "KA", "regions": "44",
                    "manager": f"m{i}", "webhook": url}) for line, i in enumerate(range(dealers), start=2)]
    return Registry.from_rows([], rows, [], [])


def alerts(n: int, dealers: int = 1, prefix: str = "a") -> outcomes.Columns:
    """``n`` alerts, each in a window of its own (so ``n`` digests), spread over ``dealers``."""
    b = outcomes.empty(outcomes.ALERT_COLUMNS, n)
    for i in range(n):
        start = T0 + i * WINDOW_MS
        b["alert_id"][i] = f"{prefix}-{i:03d}"
        b["ts"][i] = start + 1_000
        b["tenant"][i] = 7
        b["alert"][i] = "diversion"
        b["subtype"][i] = "region"
        b["dealer_id"][i] = f"D{i % dealers}"
        b["manager"][i] = f"m{i % dealers}"
        b["city"][i] = "4401"
        b["window_start"][i] = start
        b["window_end"][i] = start + WINDOW_MS
        b["count"][i] = 3
        b["detail"][i] = "{}"
    return b


def notifier(**kw: Any) -> WebhookNotifier:
    settings = {"timeout_s": 5.0, "retries": 3, "backoff_s": 0.5, "max_workers": 2,
                "address_policy": AddressPolicy(allow_loopback=True), **kw}
    return WebhookNotifier(**settings)


def Delivery(*args: Any, **kw: Any) -> AlertDelivery:  # noqa: N802
    """An ``AlertDelivery`` that may reach the test's receiver on 127.0.0.1."""
    return AlertDelivery(*args, allow_loopback=True, **kw)


def latest_status(sink: ClickHouseSink) -> dict[str, str]:
    _, rows = sink.query("SELECT alert_id, argMax(status, (ts, status != 'pending')) FROM alert_deliveries "
                         "GROUP BY alert_id ORDER BY alert_id")
    return dict(rows)


def rows_of(sink: ClickHouseSink, status: str) -> list[tuple]:
    _, rows = sink.query("SELECT alert_id, attempts, error FROM alert_deliveries WHERE status = {s:String} "
                         "ORDER BY alert_id", {"s": status})
    return rows


# --------------------------------------------------------------------------- deadlines


def test_a_hanging_webhook_costs_a_run_its_deadline_and_leaves_pending_rows(webhook: Webhook, sink) -> None:
    webhook.mode = "hang"
    n = 12
    batch = alerts(n)
    sink.write_alerts(batch)
    delivery = Delivery(registry_for(webhook.url), notifier(), sink, grace_ms=0,
                             batch_deadline_s=1.5, run_deadline_s=3.0)
    started = time.monotonic()
    delivery.add(batch, int(batch["window_end"].max()))  # every window over: n digests due now
    assert time.monotonic() - started < 1.0  # the batch does not wait for delivery
    delivery.close()
    elapsed = time.monotonic() - started
    # unbounded: 12 digests x 4 attempts x 5 s / 2 threads = 120 s and more
    assert elapsed < 3.0 + MARGIN_S, elapsed
    assert delivery.pending_count() == n
    assert latest_status(sink) == {f"a-{i:03d}": "pending" for i in range(n)}
    pending = rows_of(sink, "pending")
    assert len(pending) == n
    assert all("deadline" in error for _, _, error in pending)
    assert webhook.hits >= 1


def test_the_run_deadline_bounds_the_digests_sent_at_the_end(webhook: Webhook, sink) -> None:
    webhook.mode = "hang"
    n = 10
    batch = alerts(n, dealers=2)
    sink.write_alerts(batch)
    delivery = Delivery(registry_for(webhook.url, dealers=2), notifier(retries=5), sink,
                             batch_deadline_s=30.0, run_deadline_s=2.0)
    started = time.monotonic()
    delivery.add(batch, None)  # no watermark: every digest stays open until close
    assert delivery.in_flight() == 0
    delivery.close()
    assert time.monotonic() - started < 2.0 + MARGIN_S
    assert delivery.pending_count() == n
    assert set(latest_status(sink).values()) == {"pending"}


def test_a_500_webhook_is_bounded_and_the_next_start_delivers(webhook: Webhook, sink) -> None:
    webhook.mode = "500"
    n = 8
    batch = alerts(n)
    sink.write_alerts(batch)
    registry = registry_for(webhook.url)
    first = Delivery(registry, notifier(retries=50, backoff_s=0.2, max_backoff_s=0.2), sink, grace_ms=0,
                          batch_deadline_s=1.0, run_deadline_s=2.0)
    started = time.monotonic()
    first.add(batch, int(batch["window_end"].max()))
    first.close()
    assert time.monotonic() - started < 2.0 + MARGIN_S
    assert first.pending_count() == n
    assert set(latest_status(sink).values()) == {"pending"}
    assert any("HTTP 500" in error for _, _, error in rows_of(sink, "pending"))
    assert webhook.bodies == []

    webhook.mode = "ok"
    second = Delivery(registry, notifier(), sink, batch_deadline_s=5.0, run_deadline_s=10.0)  # reads pending
    assert second.in_flight() == n
    second.close()
    assert second.pending_count() == 0
    assert webhook.alert_ids() == [f"a-{i:03d}" for i in range(n)]
    assert latest_status(sink) == {f"a-{i:03d}": "delivered" for i in range(n)}
    # delivered again in the digests of the first send: one message per dealer and window
    assert len(webhook.bodies) == n and all(len(b["items"]) == 1 for b in webhook.bodies)
    # and a third start finds nothing left to send
    third = Delivery(registry, notifier(), sink)
    assert third.in_flight() == 0
    third.close()


def test_retry_pending_delivers_what_an_earlier_run_left(webhook: Webhook, sink) -> None:
    webhook.mode = "hang"
    n = 6
    batch = alerts(n)
    sink.write_alerts(batch)
    registry = registry_for(webhook.url)
    run = Delivery(registry, notifier(), sink, grace_ms=0, batch_deadline_s=1.0, run_deadline_s=1.0)
    run.add(batch, int(batch["window_end"].max()))
    run.close()
    assert set(latest_status(sink).values()) == {"pending"}

    webhook.mode = "ok"
    started = time.monotonic()
    result = retry_pending(sink, registry, notifier(), deadline_s=10.0, allow_loopback=True)
    assert time.monotonic() - started < 10.0 + MARGIN_S
    assert result == RetryResult(found=n, delivered=n, failed=0, pending=0)
    assert latest_status(sink) == {f"a-{i:03d}": "delivered" for i in range(n)}
    assert webhook.alert_ids() == [f"a-{i:03d}" for i in range(n)]
    assert retry_pending(sink, registry, notifier(), deadline_s=5.0, allow_loopback=True) == RetryResult(0, 0, 0, 0)


def test_retry_pending_against_a_dead_webhook_keeps_them_pending_within_its_deadline(webhook: Webhook, sink) -> None:
    webhook.mode = "hang"
    batch = alerts(4)
    sink.write_alerts(batch)
    registry = registry_for(webhook.url)
    run = Delivery(registry, notifier(), sink, grace_ms=0, batch_deadline_s=1.0, run_deadline_s=1.0)
    run.add(batch, int(batch["window_end"].max()))
    run.close()
    started = time.monotonic()
    result = retry_pending(sink, registry, notifier(), deadline_s=1.5, allow_loopback=True)
    assert time.monotonic() - started < 1.5 + MARGIN_S
    assert result == RetryResult(found=4, delivered=0, failed=0, pending=4)
    assert set(latest_status(sink).values()) == {"pending"}


def test_a_worker_sends_its_pending_alerts_again_on_a_later_batch(webhook: Webhook, sink) -> None:
    webhook.mode = "hang"
    batch = alerts(3)
    sink.write_alerts(batch)
    delivery = Delivery(registry_for(webhook.url), notifier(), sink, grace_ms=0, batch_deadline_s=1.0,
                             run_deadline_s=10.0, retry_interval_s=0.2)
    delivery.add(batch, int(batch["window_end"].max()))
    wait_until(lambda: delivery.store_deliveries(timeout=0.2) >= 0 and delivery.pending_count() == 3, 1.0 + MARGIN_S)
    assert set(latest_status(sink).values()) == {"pending"}

    webhook.mode = "ok"
    time.sleep(0.3)  # past retry_interval_s
    delivery.add(outcomes.empty(outcomes.ALERT_COLUMNS), None)  # the next batch, no alerts of its own
    wait_until(lambda: delivery.store_deliveries(timeout=0.2) >= 0 and delivery.pending_count() == 0, MARGIN_S)
    assert latest_status(sink) == {f"a-{i:03d}": "delivered" for i in range(3)}
    delivery.close()


def wait_until(condition, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition not met in time"


# --------------------------------------------------------------------------- never into the batch


class ExplodingNotifier:
    """A notifier whose every call fails."""

    def notify(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("chat robot library crashed")

    def drain(self, timeout: float | None = None) -> list[dict[str, Any]]:
        raise RuntimeError("drain crashed")

    def close(self) -> None:
        raise RuntimeError("close crashed")


class DownClickHouse:
    """A ClickHouse that refuses everything."""

    def __init__(self) -> None:
        self.tries = 0

    def write_deliveries(self, batch: Any, **kw: Any) -> int:
        self.tries += 1
        raise SinkError("insert of rows into alert_deliveries failed: connection refused")

    def query(self, *args: Any, **kw: Any) -> Any:
        raise SinkError("query failed: connection refused")


def test_a_notifier_that_raises_never_reaches_the_batch(webhook: Webhook, sink) -> None:
    batch = alerts(3)
    delivery = Delivery(registry_for(webhook.url), ExplodingNotifier(), sink, grace_ms=0)
    delivery.add(batch, int(batch["window_end"].max()))  # does not raise
    delivery.close()  # does not raise either
    assert delivery.pending_count() == 3
    pending = rows_of(sink, "pending")
    assert [r[0] for r in pending] == ["a-000", "a-001", "a-002"]
    assert all("chat robot library crashed" in error for _, _, error in pending)


def test_a_clickhouse_outage_never_reaches_the_batch(webhook: Webhook) -> None:
    down = DownClickHouse()
    batch = alerts(2)
    delivery = Delivery(registry_for(webhook.url), notifier(), down, grace_ms=0)  # its start reads: fails quietly
    delivery.add(batch, int(batch["window_end"].max()))
    delivery.close()
    assert down.tries >= 1
    assert webhook.alert_ids() == ["a-000", "a-001"]  # delivery does not depend on storing its records


# --------------------------------------------------------------------------- configuration


def _config_with(tmp_path: Path, line: str) -> Path:
    text = LOCAL_TOML.read_text(encoding="utf-8")
    key = line.split("=", 1)[0].strip()
    text, n = re.subn(rf"(?m)^{key} = .*$", line, text)
    assert n == 1
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_deadline_settings_load() -> None:
    a = load(LOCAL_TOML).alerts
    assert (a.batch_deadline_s, a.run_deadline_s) == (10.0, 60.0)


@pytest.mark.parametrize("key", ["batch_deadline_s", "run_deadline_s"])
@pytest.mark.parametrize("value, says", [("0", "0 out of range"), ("-1.5", "-1.5 out of range"),
                                         ("nan", "nan is not a finite number"), ("inf", "inf is not a finite number"),
                                         ('"10"', "expected a number, got '10'"),
                                         ("true", "got the boolean true")])
def test_bad_deadlines_name_the_key_and_the_value(tmp_path: Path, key: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(_config_with(tmp_path, f"{key} = {value}"))
    assert f"alerts.{key}" in str(info.value) and says in str(info.value)


def test_bad_deadlines_are_refused_by_the_delivery_too() -> None:
    with pytest.raises(ValueError, match=r"batch_deadline_s 0"):
        AlertDelivery(Registry.empty(), None, batch_deadline_s=0)
    with pytest.raises(ValueError, match=r"run_deadline_s inf"):
        AlertDelivery(Registry.empty(), None, run_deadline_s=float("inf"))
