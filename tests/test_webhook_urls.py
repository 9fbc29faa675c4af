"""Webhook URLs from dealers.csv: only http(s), never link-local, private or (unless configured)
loopback addresses; host names are checked when sending, on every address they resolve to,
and the connection goes to the address that was checked (DNS rebinding)."""
from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scanstream.engine import outcomes
from scanstream.engine.config import ConfigError, load
from scanstream.engine.registry import Registry
from scanstream.wiring import build_alerting
from scanstream.sinks.alerting import AlertDelivery, read_routes
from scanstream.sinks.alert_messages import Route
from scanstream.sinks.notifiers import WebhookNotifier
from scanstream.sinks.webhook_addresses import AddressPolicy, WebhookRefused, address_refusal, check_webhook_url

LOCAL_TOML = Path(__file__).resolve().parents[1] / "config" / "local.toml"
T0 = 1_798_761_600_000


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A receiver on 127.0.0.1; yields its port and the headers of each request."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(dict(self.headers.items()))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def alert(dealer: str = "D1", alert_id: str = "a-1") -> dict[str, Any]:
    return {"alert_id": alert_id, "ts": T0, "tenant": 7, "alert": "diversion", "subtype": "region",
            "dealer_id": dealer, "manager": "m", "city": "4401", "code": "", "window_start": T0,
            "window_end": T0 + 600_000, "count": 2, "detail": "{}"}


def send(url: str, policy: AddressPolicy | None) -> dict[str, Any]:
    n = WebhookNotifier(timeout_s=2.0, retries=2, backoff_s=0.05, address_policy=policy)
    try:
        n.notify([alert()], {"D1": Route(url)})
        (record,) = n.drain(timeout=10)
    finally:
        n.close()
    return record


def registry_with(*hooks: tuple[str, str]) -> Registry:
    rows = [(line, {"dealer_id": dealer, "tenant": "7", "name": dealer, "channel": "KA", "regions": "44",
                    "manager": "m", "webhook": url}) for line, (dealer, url) in enumerate(hooks, start=2)]
    return Registry.from_rows([], rows, [], [])


# --------------------------------------------------------------------------- the check itself


@pytest.mark.parametrize("url, why", [
    ("ftp://hooks.example.com/x", "scheme 'ftp' is not http or https"),
    ("file:///etc/passwd", "scheme 'file' is not http or https"),
    ("javascript:alert(1)", "scheme 'javascript' is not http or https"),
    ("hooks.example.com/send", "scheme '(none)' is not http or https"),
    ("http:///no-host", "no host"),
    ("http://hooks.example.com:99999/x", "not a valid URL"),
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address (169.254.0.0/16)"),
    ("http://[fe80::1]/hook", "fe80::1 is a link-local address (fe80::/10)"),
    ("http://10.1.2.3/hook", "10.1.2.3 is a private address (10.0.0.0/8)"),
    ("https://172.16.0.1/hook", "172.16.0.1 is a private address (172.16.0.0/12)"),
    ("https://172.31.255.254/hook", "172.31.255.254 is a private address (172.16.0.0/12)"),
    ("http://192.168.1.10:8080/hook", "192.168.1.10 is a private address (192.168.0.0/16)"),
    ("http://[fd12:3456::1]/hook", "fd12:3456::1 is a private address (fc00::/7)"),
    ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address (127.0.0.0/8)"),
    ("http://127.9.9.9/hook", "127.9.9.9 is a loopback address"),
    ("http://[::1]:8080/hook", "::1 is a loopback address"),
    ("http://[::ffff:10.0.0.1]/hook", "10.0.0.1 is a private address"),
    ("http://0.0.0.0:8080/hook", "0.0.0.0 is a unspecified address"),
])
def test_forbidden_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(WebhookRefused) as info:
        check_webhook_url(url)
    assert why in str(info.value)


@pytest.mark.parametrize("url", ["https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k",
                                 "http://172.32.0.1/hook", "https://8.8.8.8/hook", "http://[2001:db8::1]/x",
                                 "https://hooks.internal.example/x"])  # names are checked when sending
def test_public_addresses_and_host_names_pass(url: str) -> None:
    check_webhook_url(url)


def test_loopback_only_when_allowed() -> None:
    for url in ("http://127.0.0.1:1/x", "http://[::1]:1/x"):
        check_webhook_url(url, allow_loopback=True)
        with pytest.raises(WebhookRefused, match=r"allowed only with alerts.allow_loopback = true"):
            check_webhook_url(url)
    # allowing loopback allows nothing else
    for url in ("http://10.0.0.1/x", "http://169.254.169.254/x", "http://192.168.0.1/x"):
        with pytest.raises(WebhookRefused):
            check_webhook_url(url, allow_loopback=True)
    assert address_refusal("127.0.0.1", allow_loopback=True) == ""
    assert "loopback" in address_refusal("::ffff:127.0.0.1")


# --------------------------------------------------------------------------- dealers.csv


def test_refused_dealers_are_named_with_the_url_redacted_and_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    registry = registry_with(("D-OK", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=fine"),
                             ("D-META", "http://169.254.169.254/latest?token=s3cr3t-meta"),
                             ("D-LAN", "https://u:pw-lan@10.0.0.5/hook?key=s3cr3t-lan"),
                             ("D-FTP", "ftp://files.example.com/drop?access_token=s3cr3t-ftp"),
                             ("D-LOCAL", "http://127.0.0.1:9000/hook"))
    with caplog.at_level(logging.ERROR, logger="scanstream.alerts"):
        routes, refused = read_routes(registry)
    assert list(routes) == ["D-OK"]
    assert set(refused) == {"D-META", "D-LAN", "D-FTP", "D-LOCAL"}
    text = caplog.text
    assert "s3cr3t" not in text and "pw-lan" not in text
    assert re.search(r"dealer D-META: webhook 'http://169.254.169.254/latest\?token=\*\*\*' refused: "
                     r"169.254.169.254 is a link-local address", text)
    assert re.search(r"dealer D-LAN: webhook 'https://u:\*\*\*@10.0.0.5/hook\?key=\*\*\*' refused: "
                     r"10.0.0.5 is a private address", text)
    assert re.search(r"dealer D-FTP: webhook 'ftp://files.example.com/drop\?access_token=\*\*\*' refused: "
                     r"scheme 'ftp' is not http or https", text)
    assert "dealer D-LOCAL" in text and "allow_loopback" in text
    routes, refused = read_routes(registry, allow_loopback=True)
    assert sorted(routes) == ["D-LOCAL", "D-OK"]


class Recorder:
    """Stands in for the ClickHouse sink: keeps the delivery records written."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write_deliveries(self, batch: dict[str, Any], **kw: Any) -> int:
        names = list(batch)
        self.rows += [dict(zip(names, values)) for values in zip(*(batch[n].tolist() for n in names))]
        return len(batch["alert_id"])

    def query(self, *args: Any, **kw: Any) -> tuple[list[str], list[tuple]]:
        return [], []


def test_an_alert_for_a_refused_dealer_is_recorded_failed_with_the_reason() -> None:
    store = Recorder()
    notifier = WebhookNotifier(timeout_s=1.0, retries=0, address_policy=AddressPolicy())
    delivery = AlertDelivery(registry_with(("D1", "http://192.168.7.7/hook?key=s3cr3t")), notifier, store, grace_ms=0)
    batch = outcomes.empty(outcomes.ALERT_COLUMNS, 1)
    for name, value in alert().items():
        batch[name][0] = value
    delivery.add(batch, T0 + 600_000)
    delivery.close()
    (row,) = store.rows
    assert row["alert_id"] == "a-1" and row["status"] == "failed" and row["attempts"] == 0
    assert row["url"] == "http://192.168.7.7/hook?key=***"
    assert "192.168.7.7 is a private address" in row["error"]
    assert delivery.pending_count() == 0


# --------------------------------------------------------------------------- at send time


def test_a_name_resolving_to_loopback_is_refused_when_sending(receiver) -> None:
    port, seen = receiver
    record = send(f"http://localhost:{port}/hook?key=s3cr3t", AddressPolicy())
    assert record["status"] == "failed" and record["attempts"] == 1  # refused: not retried
    assert "refused: localhost resolves to" in record["error"] and "loopback" in record["error"]
    assert record["url"] == f"http://localhost:{port}/hook?key=***"
    assert seen == []
    assert send(f"http://localhost:{port}/hook", AddressPolicy(allow_loopback=True))["status"] == "delivered"
    assert len(seen) == 1


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """``socket.getaddrinfo`` answering ``answers`` for their names; returns the names asked."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host in answers:
            asked.append(host)
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (a, int(port), 0, 0) if ":" in a else (a, int(port))) for a in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_any_forbidden_address_of_a_name_refuses_it(monkeypatch: pytest.MonkeyPatch, receiver) -> None:
    port, seen = receiver
    _fake_dns(monkeypatch, {"hooks.rebind.test": ["93.184.216.34", "10.0.0.7"]})
    record = send(f"http://hooks.rebind.test:{port}/hook", AddressPolicy(allow_loopback=True))
    assert record["status"] == "failed"
    assert "refused: hooks.rebind.test resolves to 10.0.0.7 is a private address (10.0.0.0/8)" in record["error"]
    assert seen == []


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch: pytest.MonkeyPatch, receiver) -> None:
    """The name resolves (in this test's DNS) to the receiver's 127.0.0.1 once; the HTTP client
    must not resolve it a second time (a rebinding answer would then win): the request reaches
    the checked address, with the URL's host in its Host header."""
    port, seen = receiver
    answers = {"hooks.pinned.test": ["127.0.0.1"]}
    asked = _fake_dns(monkeypatch, answers)
    n = WebhookNotifier(timeout_s=2.0, retries=0, address_policy=AddressPolicy(allow_loopback=True))
    original = AddressPolicy.resolve  # the check the client's resolver makes

    def check_then_rebind(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        verdict = original(self, *args, **kwargs)
        answers["hooks.pinned.test"] = ["10.9.9.9"]  # what a rebinding DNS answers next
        return verdict

    monkeypatch.setattr(AddressPolicy, "resolve", check_then_rebind)
    try:
        n.notify([alert()], {"D1": Route(f"http://hooks.pinned.test:{port}/hook")})
        (record,) = n.drain(timeout=10)
    finally:
        n.close()
    assert record["status"] == "delivered", record
    assert asked == ["hooks.pinned.test"]  # resolved once, by the check
    assert seen[0]["Host"] == f"hooks.pinned.test:{port}"


def test_without_a_policy_the_notifier_sends_anywhere_http_reaches(receiver) -> None:
    port, seen = receiver  # the library default, for receivers the caller controls (test_notifiers)
    assert send(f"http://127.0.0.1:{port}/hook", None)["status"] == "delivered"


# --------------------------------------------------------------------------- configuration


def _config(tmp_path: Path, line: str | None) -> Path:
    text = LOCAL_TOML.read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^allow_loopback = .*\n", "" if line is None else line + "\n", text)
    assert n == 1
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_allow_loopback_is_off_unless_configured(tmp_path: Path) -> None:
    assert load(_config(tmp_path, None)).alerts.allow_loopback is False
    assert load(_config(tmp_path, "allow_loopback = true")).alerts.allow_loopback is True
    assert load(LOCAL_TOML).alerts.allow_loopback is True  # a laptop's receivers are local
    with pytest.raises(ConfigError, match=r"alerts.allow_loopback: expected true or false, got 'yes'"):
        load(_config(tmp_path, 'allow_loopback = "yes"'))


def test_build_alerting_applies_the_flag(tmp_path: Path, receiver) -> None:
    port, _ = receiver
    registry = registry_with(("D1", f"http://127.0.0.1:{port}/hook"))
    base = load(LOCAL_TOML)
    strict = build_alerting(replace(base, alerts=replace(base.alerts, allow_loopback=False)), registry)
    loose = build_alerting(base, registry)
    try:
        assert "D1" in strict.refused and "D1" not in strict.routes
        assert "D1" in loose.routes
        assert loose.notifier.address_policy == AddressPolicy(allow_loopback=True)
        assert strict.notifier.address_policy == AddressPolicy(allow_loopback=False)
    finally:
        strict.close(timeout=0)
        loose.close(timeout=0)
