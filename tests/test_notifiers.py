"""Alert notifiers against a real HTTP receiver on 127.0.0.1 (no mocks of the HTTP client)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from scanstream.sinks.alert_messages import SIGNATURE_HEADER, TIMESTAMP_HEADER, Route, detect_format, format_message
from scanstream.sinks.notifiers import DELIVERY_FIELDS, LogNotifier, WebhookNotifier

OK_REPLY = (200, b'{"errcode":0,"errmsg":"ok"}')

# 2024-05-01 10:00:00 / 10:15:00 Beijing time = 02:00 / 02:15 UTC.
WINDOW_START = 1714528800000
WINDOW_END = WINDOW_START + 15 * 60 * 1000


def diversion_alert(**overrides: Any) -> dict[str, Any]:
    alert = {
        "alert_id": "a-0001",
        "ts": WINDOW_START + 61_234,
        "tenant": 7,
        "alert": "diversion",
        "subtype": "region",
        "dealer_id": "D-GZ-001",
        "manager": "13800138000",
        "city": "3201",
        "code": "",
        "window_start": WINDOW_START,
        "window_end": WINDOW_END,
        "count": 17,
        "detail": '{"authorized":["44"],"scanned":["3201"]}',
    }
    alert.update(overrides)
    return alert


@dataclass
class Received:
    path: str
    query: dict[str, list[str]]
    raw_query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A local webhook: answers from ``script`` in order (then ``default``), records requests."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    script: list[tuple[int, bytes]] = field(default_factory=list)
    default: tuple[int, bytes] = OK_REPLY
    # Seconds to stall before answering; the release event ends a stall at teardown.
    delay_s: float = 0.0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self) -> tuple[int, bytes]:
        with self.lock:
            return self.script.pop(0) if self.script else self.default


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment would swallow requests meant for 127.0.0.1.
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            parts = urllib.parse.urlsplit(self.path)
            with state.lock:
                state.requests.append(Received(parts.path, urllib.parse.parse_qs(parts.query), parts.query,
                                               dict(self.headers.items()), body))
            if state.delay_s and state.release.wait(state.delay_s):
                return  # torn down while stalling: just drop the connection
            status, payload = state.reply()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def notifier() -> Iterator[WebhookNotifier]:
    n = WebhookNotifier(timeout_s=2.0, retries=2, backoff_s=0.05, max_workers=4)
    yield n
    n.close()


def deliver(notifier: WebhookNotifier, alert: dict[str, Any], route: Route) -> dict[str, Any]:
    notifier.notify([alert], {alert["dealer_id"]: route})
    records = notifier.drain(timeout=10)
    assert len(records) == 1, records
    assert set(records[0]) == set(DELIVERY_FIELDS)
    return records[0]


# --------------------------------------------------------------------------- formats


def test_detect_format_by_host() -> None:
    assert detect_format("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc") == "wecom"
    assert detect_format("https://oapi.dingtalk.com/robot/send?access_token=abc") == "dingtalk"
    assert detect_format("https://hooks.example.com/scanstream") == "generic"
    assert Route("https://OAPI.dingtalk.com/robot/send?access_token=x").format == "dingtalk"
    assert Route("https://oapi.dingtalk.com/robot/send", fmt="generic").format == "generic"


def test_unknown_format_names_it_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'slack'.*generic.*wecom.*dingtalk"):
        format_message(diversion_alert(), "slack")
    with pytest.raises(ValueError, match=r"'slack'"):
        Route("https://hooks.example.com/x", fmt="slack")
    with pytest.raises(ValueError, match=r"ftp://"):
        Route("ftp://hooks.example.com/x")


def test_generic_body_has_rfc3339_and_epoch_ms() -> None:
    body = format_message(diversion_alert(), "generic")
    assert body["ts"] == "2024-05-01T02:01:01.234Z"
    assert body["ts_ms"] == WINDOW_START + 61_234
    assert body["window_start"] == "2024-05-01T02:00:00.000Z" and body["window_start_ms"] == WINDOW_START
    assert body["window_end"] == "2024-05-01T02:15:00.000Z" and body["window_end_ms"] == WINDOW_END
    assert body["detail"] == {"authorized": ["44"], "scanned": ["3201"]}
    assert (body["dealer_id"], body["city"], body["count"], body["alert"]) == ("D-GZ-001", "3201", 17, "diversion")
    assert "窜货" in body["summary"]


def test_cloned_code_text_is_chinese_first() -> None:
    # a manager with a user id: WeCom markdown (a mobile number alone takes a text message)
    alert = diversion_alert(alert="cloned_code", subtype="users", code="2000E00058003RJ08V9QZJM3", count=5,
                            manager="wang.li")
    text = format_message(alert, "wecom")["markdown"]["content"]
    assert text.startswith("### scanstream 告警：疑似克隆码（多用户扫码）")
    assert "2000E00058003RJ08V9QZJM3" in text
    # Beijing time, the window as the managers read it.
    assert "2024-05-01 10:00:00 ~ 10:15:00 (UTC+8)" in text


# --------------------------------------------------------------------------- deliveries


def test_generic_delivery_is_signed(receiver: Receiver, notifier: WebhookNotifier) -> None:
    secret = "generic-secret"
    record = deliver(notifier, diversion_alert(), Route(receiver.url + "/hook", secret=secret, manager="li.si"))
    assert record["status"] == "delivered" and record["attempts"] == 1 and record["http_status"] == 200
    assert record["channel_format"] == "generic" and record["alert_id"] == "a-0001" and record["error"] == ""
    (req,) = receiver.requests
    assert req.path == "/hook"
    expected = "sha256=" + hmac.new(secret.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.headers[SIGNATURE_HEADER] == expected
    assert abs(int(req.headers[TIMESTAMP_HEADER]) - time.time() * 1000) < 60_000
    body = req.json()
    assert body["dealer_id"] == "D-GZ-001" and body["city"] == "3201" and body["count"] == 17
    assert body["manager"] == "li.si"  # the route's manager wins


def test_wecom_delivery(receiver: Receiver, notifier: WebhookNotifier) -> None:
    record = deliver(notifier, diversion_alert(), Route(receiver.url + "/cgi-bin/webhook/send?key=robot-key",
                                                        fmt="wecom", manager="zhangsan"))
    assert record["status"] == "delivered" and record["channel_format"] == "wecom"
    body = receiver.requests[0].json()
    assert body["msgtype"] == "markdown" and set(body["markdown"]) == {"content"}
    content = body["markdown"]["content"]
    for fact in ("窜货（跨区域）", "D-GZ-001", "3201", "17", "<@zhangsan>", "a-0001"):
        assert fact in content, fact
    assert len(content.encode()) <= 4096
    assert "robot-key" not in record["url"] and "key=***" in record["url"]


def test_dingtalk_delivery_is_signed_and_redacted(receiver: Receiver, notifier: WebhookNotifier) -> None:
    secret = "SEC0123456789abcdef"
    route = Route(receiver.url + "/robot/send?access_token=tok-123", fmt="dingtalk", secret=secret,
                  manager="13800138000")
    record = deliver(notifier, diversion_alert(), route)
    assert record["status"] == "delivered" and record["channel_format"] == "dingtalk"
    (req,) = receiver.requests
    assert req.query["access_token"] == ["tok-123"]
    timestamp = req.query["timestamp"][0]
    assert abs(int(timestamp) - time.time() * 1000) < 60_000
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    assert req.query["sign"] == [base64.b64encode(digest).decode()]
    # On the wire the base64 is URL-encoded (+ / = escaped), as DingTalk requires.
    assert "sign=" + urllib.parse.quote_plus(base64.b64encode(digest).decode()) in req.raw_query
    body = req.json()
    assert body["msgtype"] == "markdown" and set(body["markdown"]) == {"title", "text"}
    text = body["markdown"]["text"]
    for fact in ("窜货", "D-GZ-001", "3201", "17", "@13800138000"):
        assert fact in text, fact
    assert body["at"] == {"isAtAll": False, "atMobiles": ["13800138000"]}
    for value in ("tok-123", secret, req.query["sign"][0], urllib.parse.quote_plus(req.query["sign"][0])):
        assert value not in record["url"]
    assert "access_token=***" in record["url"] and "sign=***" in record["url"]
    assert f"timestamp={timestamp}" in record["url"]


def test_5xx_is_retried_until_delivered(receiver: Receiver, notifier: WebhookNotifier) -> None:
    receiver.script = [(500, b"boom"), (500, b"boom")]
    record = deliver(notifier, diversion_alert(), Route(receiver.url + "/hook"))
    assert record["status"] == "delivered" and record["attempts"] == 3 and record["http_status"] == 200
    assert len(receiver.requests) == 3
    # The same body each time: a receiver may deduplicate on alert_id.
    assert len({r.body for r in receiver.requests}) == 1


def test_429_is_retried(receiver: Receiver, notifier: WebhookNotifier) -> None:
    receiver.script = [(429, b"slow down")]
    record = deliver(notifier, diversion_alert(), Route(receiver.url + "/hook"))
    assert record["status"] == "delivered" and record["attempts"] == 2


def test_retries_give_up_with_the_last_error(receiver: Receiver, notifier: WebhookNotifier) -> None:
    receiver.default = (503, b"down for maintenance")
    record = deliver(notifier, diversion_alert(), Route(receiver.url + "/hook"))
    assert record["status"] == "failed" and record["attempts"] == 3 and record["http_status"] == 503
    assert "503" in record["error"] and "maintenance" in record["error"]


def test_404_is_not_retried(receiver: Receiver, notifier: WebhookNotifier) -> None:
    receiver.default = (404, b"no such hook")
    record = deliver(notifier, diversion_alert(), Route(receiver.url + "/missing"))
    assert record["status"] == "failed" and record["attempts"] == 1 and record["http_status"] == 404
    assert "404" in record["error"]
    assert len(receiver.requests) == 1


def test_wecom_errcode_is_a_failure_and_retried(receiver: Receiver, notifier: WebhookNotifier) -> None:
    receiver.default = (200, '{"errcode":93000,"errmsg":"invalid webhook url"}'.encode())
    record = deliver(notifier, diversion_alert(), Route(receiver.url + "/send?key=k", fmt="wecom"))
    assert record["status"] == "failed" and record["attempts"] == 3 and record["http_status"] == 200
    assert "93000" in record["error"] and "invalid webhook url" in record["error"]


def test_errcode_then_ok_is_delivered(receiver: Receiver, notifier: WebhookNotifier) -> None:
    receiver.script = [(200, b'{"errcode":130101,"errmsg":"send too fast"}')]
    record = deliver(notifier, diversion_alert(), Route(receiver.url + "/robot/send?access_token=t", fmt="dingtalk"))
    assert record["status"] == "delivered" and record["attempts"] == 2


def test_timeout_fails_and_notify_does_not_block(receiver: Receiver) -> None:
    receiver.delay_s = 5.0
    notifier = WebhookNotifier(timeout_s=2.0, retries=0, backoff_s=0.05)
    try:
        started = time.monotonic()
        notifier.notify([diversion_alert()], {"D-GZ-001": Route(receiver.url + "/slow")})
        assert time.monotonic() - started < 0.5
        records = notifier.drain(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        notifier.close()
    (record,) = records
    assert record["status"] == "failed" and record["attempts"] == 1 and record["http_status"] == 0
    assert "timeout" in record["error"]
    assert 1.5 < elapsed < 4.5  # bounded by the timeout, not by the receiver's stall


def test_connection_refused_is_recorded_not_raised() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = WebhookNotifier(timeout_s=1.0, retries=1, backoff_s=0.01)
    try:
        record = deliver(notifier, diversion_alert(), Route(f"http://127.0.0.1:{port}/hook?token=t0p"))
    finally:
        notifier.close()
    assert record["status"] == "failed" and record["attempts"] == 2 and record["http_status"] == 0
    assert "connection" in record["error"].lower()
    assert record["url"] == f"http://127.0.0.1:{port}/hook?token=***"


def test_many_alerts_and_missing_routes(receiver: Receiver, notifier: WebhookNotifier) -> None:
    alerts = [diversion_alert(alert_id=f"a-{i}") for i in range(10)]
    alerts.append(diversion_alert(alert_id="no-route", dealer_id="D-NONE"))
    notifier.notify(alerts, {"D-GZ-001": Route(receiver.url + "/hook")})
    records = notifier.drain(timeout=10)
    assert sorted(r["alert_id"] for r in records) == sorted(f"a-{i}" for i in range(10))
    assert all(r["status"] == "delivered" for r in records)
    assert notifier.drain(timeout=1) == []  # records are handed out once


def test_notify_after_close_records_a_failure(receiver: Receiver) -> None:
    notifier = WebhookNotifier(timeout_s=1.0, retries=0)
    notifier.close()
    notifier.notify([diversion_alert()], {"D-GZ-001": Route(receiver.url + "/hook")})
    (record,) = notifier.drain(timeout=1)
    assert record["status"] == "failed" and record["attempts"] == 0 and "closed" in record["error"]
    assert receiver.requests == []


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"retries -1"):
        WebhookNotifier(retries=-1)
    with pytest.raises(ValueError, match=r"timeout_s 0"):
        WebhookNotifier(timeout_s=0)


def test_log_notifier_logs_one_line_per_alert(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="scanstream.alerts")
    notifier = LogNotifier()
    notifier.notify([diversion_alert(), diversion_alert(alert_id="a-0002", city="1101")], {})
    lines = [r.getMessage() for r in caplog.records if r.name == "scanstream.alerts"]
    assert len(lines) == 2
    assert "a-0001" in lines[0] and "dealer=D-GZ-001" in lines[0] and "count=17" in lines[0]
    assert "city=1101" in lines[1]
    assert notifier.drain() == []


# --------------------------------------------------------------------------- Feishu and digests


def test_feishu_body_and_signature(notifier: WebhookNotifier, receiver: Receiver) -> None:
    assert detect_format("https://open.feishu.cn/open-apis/bot/v2/hook/abc") == "feishu"
    route = Route(receiver.url + "/open-apis/bot/v2/hook/abc", fmt="feishu", secret="feishu-secret",
                  manager="li.na")
    receiver.default = (200, b'{"code":0,"msg":"success"}')
    record = deliver(notifier, diversion_alert(), route)
    assert record["status"] == "delivered" and record["channel_format"] == "feishu"
    body = receiver.requests[0].json()
    assert body["msg_type"] == "text"
    assert "D-GZ-001" in body["content"]["text"] and "3201" in body["content"]["text"]
    # Feishu notifies only through an <at> tag naming the user id (here the legacy manager column)
    assert '<at user_id="li.na">li.na</at>' in body["content"]["text"]
    # recompute Feishu's signature from the timestamp the message carries
    expected = base64.b64encode(hmac.new(f"{body['timestamp']}\nfeishu-secret".encode(), b"",
                                         hashlib.sha256).digest()).decode()
    assert body["sign"] == expected


def test_feishu_error_code_is_a_failure(notifier: WebhookNotifier, receiver: Receiver) -> None:
    receiver.default = (200, b'{"code":19021,"msg":"sign match fail"}')
    record = deliver(notifier, diversion_alert(), Route(receiver.url + "/hook", fmt="feishu"))
    assert record["status"] == "failed" and "19021" in record["error"]


def test_a_digest_is_one_message_listing_every_city_and_one_record_per_alert(notifier: WebhookNotifier,
                                                                             receiver: Receiver) -> None:
    import numpy as np

    from scanstream.engine import outcomes
    from scanstream.sinks.alert_digest import AlertDigests

    alerts = [diversion_alert(alert_id=f"a-{i}", city=city, subtype=kind, count=3)
              for i, (city, kind) in enumerate([("3201", "region"), ("4301", "region"), ("4401", "channel")])]
    alerts.append(diversion_alert(alert_id="a-other", dealer_id="D-OTHER", city="1101"))
    batch = {name: np.array([a[name] for a in alerts], dtype=dtype) for name, dtype, _ in outcomes.ALERT_COLUMNS}
    digests = AlertDigests(grace_ms=60_000)
    assert digests.add(batch, watermark_ms=WINDOW_END) == []  # inside the grace period: still open
    due = digests.add(outcomes.empty(outcomes.ALERT_COLUMNS), watermark_ms=WINDOW_END + 60_000)
    assert sorted(d["dealer_id"] for d in due) == ["D-GZ-001", "D-OTHER"] and len(digests) == 0
    mine = next(d for d in due if d["dealer_id"] == "D-GZ-001")
    assert mine["city"] == "3201,4301,4401" and mine["count"] == 9
    notifier.notify([mine], {"D-GZ-001": Route(receiver.url + "/hook")})
    records = notifier.drain(timeout=10)
    assert len(receiver.requests) == 1  # one message for the dealer's window
    body = receiver.requests[0].json()
    assert [i["city"] for i in body["items"]] == ["3201", "4301", "4401"]
    assert sorted(r["alert_id"] for r in records) == ["a-0", "a-1", "a-2"]
    assert {r["status"] for r in records} == {"delivered"}
    for fmt in ("wecom", "dingtalk", "feishu"):
        text = orjson.dumps(format_message(mine, fmt)).decode()
        assert all(city in text for city in ("3201", "4301", "4401")), fmt
