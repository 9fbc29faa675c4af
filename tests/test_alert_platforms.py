"""Alerts against local robots that behave like WeCom, DingTalk and Feishu: their size limits,
their error answers, their mention fields (a real HTTP server on 127.0.0.1, no mocks of urllib).

The attack: a digest of a busy window is longer than a robot takes; before splitting, WeCom
answered errcode 40058 to every retry and the manager never heard of any of the alerts.
"""
from __future__ import annotations

import csv
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from scanstream.engine.registry import Dealers, Registry, RegistryError
from scanstream.sinks.alert_digest import digest_of
from scanstream.sinks.alert_messages import (DINGTALK_BODY_MAX_BYTES, FEISHU_BODY_MAX_BYTES, FORMATS,
                                             WECOM_MARKDOWN_MAX_BYTES, WECOM_TEXT_MAX_BYTES, Route, format_messages)
from scanstream.sinks.alerting import read_routes
from scanstream.sinks.notifiers import WebhookNotifier
from scanstream.sinks.webhook_addresses import AddressPolicy

# 2024-05-01 10:00:00 / 10:15:00 Beijing time.
WINDOW_START = 1714528800000
WINDOW_END = WINDOW_START + 15 * 60 * 1000
PATHS = {"wecom": "/cgi-bin/webhook/send?key=robot-key", "dingtalk": "/robot/send?access_token=tok",
         "feishu": "/open-apis/bot/v2/hook/abc", "generic": "/hook"}
OK = {"generic": {},"wecom": {"errcode": 0, "errmsg": "ok"}, "dingtalk": {"errcode": 0, "errmsg": "ok"},
      "feishu": {"code": 0, "msg": "success"}}
# What each robot answers a message over its limit (the platforms' own words).
TOO_LONG = {"wecom": {"errcode": 40058, "errmsg": "markdown.content exceed max length 4096. invalid Request Parameter"},
            "dingtalk": {"errcode": 460101, "errmsg": "message too long, exceed 20000 bytes"},
            "feishu": {"code": 9499, "msg": "Bad Request"}}


@dataclass
class Robot:
    """The local robots: one per platform path, each holding its platform's limit; ``script``
    answers first (in order), then the limit check, then success."""

    url: str = ""
    received: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {f: [] for f in PATHS})
    script: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, fmt: str) -> str:
        return self.url + PATHS[fmt]

    def answer(self, fmt: str, raw: bytes) -> dict[str, Any]:
        body = orjson.loads(raw)
        with self.lock:
            self.received[fmt].append(body)
            if self.script:
                return self.script.pop(0)
        if fmt == "wecom":
            kind = body["msgtype"]
            limit = WECOM_TEXT_MAX_BYTES if kind == "text" else WECOM_MARKDOWN_MAX_BYTES
            if len(body[kind]["content"].encode()) > limit:
                return {"errcode": 40058, "errmsg": f"{kind}.content exceed max length {limit}. invalid Request Parameter"}
        elif fmt == "dingtalk" and len(raw) > DINGTALK_BODY_MAX_BYTES:
            return TOO_LONG["dingtalk"]
        elif fmt == "feishu" and len(raw) > FEISHU_BODY_MAX_BYTES:
            return TOO_LONG["feishu"]
        return OK[fmt]


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def robot() -> Iterator[Robot]:
    state = Robot()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            path = urllib.parse.urlsplit(self.path).path
            fmt = next(f for f, p in PATHS.items() if p.split("?")[0] == path)
            payload = orjson.dumps(state.answer(fmt, raw))
            self.send_response(200)  # the robots answer errors with HTTP 200 and a code
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
        server.shutdown()
        server.server_close()


@pytest.fixture
def notifier() -> Iterator[WebhookNotifier]:
    n = WebhookNotifier(timeout_s=2.0, retries=2, backoff_s=0.01, max_workers=2,
                        address_policy=AddressPolicy(allow_loopback=True))
    yield n
    n.close()


def alert(i: int, **overrides: Any) -> dict[str, Any]:
    row = {"alert_id": f"a-{i:04d}", "ts": WINDOW_START + i, "tenant": 7, "alert": "diversion", "subtype": "region",
           "dealer_id": "D-GZ-001", "manager": "13800138000", "city": f"{3201 + i % 90:04d}", "code": "",
           "window_start": WINDOW_START, "window_end": WINDOW_END, "count": 1 + i % 7, "detail": ""}
    row.update(overrides)
    return row


def digest(n: int, **overrides: Any) -> dict[str, Any]:
    return digest_of([alert(i, **overrides) for i in range(n)])


def deliver(notifier: WebhookNotifier, message: dict[str, Any], route: Route) -> list[dict[str, Any]]:
    notifier.notify([message], {message["dealer_id"]: route})
    return notifier.drain(timeout=20)


def text_of(fmt: str, body: dict[str, Any]) -> str:
    if fmt == "wecom":
        return body[body["msgtype"]]["content"]
    if fmt == "dingtalk":
        return body["markdown"]["text"]
    return body["content"]["text"]


def item_line(item: dict[str, Any]) -> str:
    """An item's line as the text shows it (without markdown emphasis), up to its alert id."""
    return f"城市 city {item['city']}: {item['count']} · 编号 id {item['alert_id']}"


# --------------------------------------------------------------------------- splitting


@pytest.mark.parametrize(("fmt", "items"), [("wecom", 200), ("dingtalk", 600), ("feishu", 600)])
def test_a_long_digest_reaches_the_robot_in_parts_under_its_limit(robot: Robot, notifier: WebhookNotifier,
                                                                   fmt: str, items: int) -> None:
    big = digest(items)
    route = Route(robot.hook(fmt), fmt=fmt, manager="王经理", manager_id="wangjl")
    records = deliver(notifier, big, route)
    bodies = robot.received[fmt]
    assert len(bodies) > 1, "the digest is longer than one message"
    # every alert delivered, once, in the records
    assert sorted(r["alert_id"] for r in records) == sorted(i["alert_id"] for i in big["items"])
    assert {r["status"] for r in records} == {"delivered"}, {r["error"] for r in records}
    assert all(r["attempts"] == 1 for r in records)  # nothing refused, so nothing retried
    texts = [text_of(fmt, b) for b in bodies]
    n = len(bodies)
    for k, (body, text) in enumerate(zip(bodies, texts), start=1):
        assert f"({k}/{n})" in text.splitlines()[0], text.splitlines()[0]
        assert "D-GZ-001" in text and "2024-05-01 10:00:00 ~ 10:15:00" in text  # every part says whose and when
    # every item's line whole in exactly one part: no line cut, none lost, none twice
    for item in big["items"]:
        holding = [k for k, text in enumerate(texts) if item_line(item) in text]
        assert len(holding) == 1, (item["alert_id"], holding)
    assert "…" not in "".join(texts)


def test_wecom_parts_are_each_under_4096_bytes_and_mention_the_manager(robot: Robot,
                                                                        notifier: WebhookNotifier) -> None:
    deliver(notifier, digest(200), Route(robot.hook("wecom"), manager="王经理", manager_id="wangjl", fmt="wecom"))
    bodies = robot.received["wecom"]
    assert len(bodies) > 1
    for body in bodies:
        assert body["msgtype"] == "markdown"
        content = body["markdown"]["content"]
        assert len(content.encode()) <= WECOM_MARKDOWN_MAX_BYTES
        assert "<@wangjl>" in content  # each part notifies the manager


def test_a_line_longer_than_a_message_is_shortened_not_sent_over(robot: Robot, notifier: WebhookNotifier) -> None:
    huge = digest_of([alert(0, code="C" * 10_000), alert(1)])
    records = deliver(notifier, huge, Route(robot.hook("wecom"), fmt="wecom", manager_id="wangjl"))
    assert {r["status"] for r in records} == {"delivered"}
    texts = [b["markdown"]["content"] for b in robot.received["wecom"]]
    assert all(len(t.encode()) <= WECOM_MARKDOWN_MAX_BYTES for t in texts)
    joined = "\n".join(texts)
    assert "C" * 1000 in joined and "C" * 10_000 not in joined and "…" in joined
    assert item_line(huge["items"][1]) in joined  # the other item is whole


def test_every_chat_format_keeps_under_its_limit_whatever_the_digest() -> None:
    """Without a server: sizes as each platform counts them, for digests small to huge."""
    for n in (1, 3, 51, 200, 1500):
        for manager, manager_id in (("13800138000", ""), ("张三", "ou_abc"), ("", "")):
            d = digest(n, manager=manager)
            d["manager_id"] = manager_id
            for fmt in ("wecom", "dingtalk", "feishu"):
                messages = format_messages(d, fmt)
                carried = [i["alert_id"] for m in messages for i in m.alert["items"]]
                assert carried == [i["alert_id"] for i in d["items"]], (fmt, n)
                for m in messages:
                    raw = orjson.dumps(m.body)
                    if fmt == "wecom":
                        kind = m.body["msgtype"]
                        limit = WECOM_TEXT_MAX_BYTES if kind == "text" else WECOM_MARKDOWN_MAX_BYTES
                        assert len(m.body[kind]["content"].encode()) <= limit
                    else:
                        assert len(raw) <= {"dingtalk": DINGTALK_BODY_MAX_BYTES, "feishu": FEISHU_BODY_MAX_BYTES}[fmt]


def test_generic_stays_one_message(robot: Robot, notifier: WebhookNotifier) -> None:
    big = digest(600)
    assert len(format_messages(big, "generic")) == 1
    records = deliver(notifier, big, Route(robot.hook("generic"), fmt="generic"))
    assert len(records) == 600 and {r["status"] for r in records} == {"delivered"}
    (body,) = robot.received["generic"]
    assert len(body["items"]) == 600


# --------------------------------------------------------------------------- permanent and transient answers


@pytest.mark.parametrize(("fmt", "answer", "code"), [
    ("wecom", TOO_LONG["wecom"], "40058"),
    ("wecom", {"errcode": 40008, "errmsg": "invalid message type"}, "40008"),
    ("dingtalk", TOO_LONG["dingtalk"], "460101"),
    ("dingtalk", {"errcode": 40035, "errmsg": "缺少参数 json"}, "40035"),
    ("feishu", TOO_LONG["feishu"], "9499"),
    ("feishu", {"code": 19002, "msg": "param invalid: msg_type"}, "19002"),
])
def test_too_long_or_malformed_is_not_retried_and_recorded_failed(robot: Robot, notifier: WebhookNotifier,
                                                                  fmt: str, answer: dict, code: str) -> None:
    robot.script = [answer]
    records = deliver(notifier, alert(1), Route(robot.hook(fmt), fmt=fmt, manager_id="wangjl"))
    (record,) = records
    assert record["status"] == "failed" and record["attempts"] == 1, record
    assert code in record["error"] and "not retried" in record["error"]
    assert len(robot.received[fmt]) == 1  # exactly one attempt reached the robot


@pytest.mark.parametrize(("fmt", "answer"), [
    ("wecom", {"errcode": 45009, "errmsg": "api freq out of limit"}),
    ("dingtalk", {"errcode": 130101, "errmsg": "send too fast"}),
    ("dingtalk", {"errcode": 410100, "errmsg": "too many requests"}),
    ("feishu", {"code": 11232, "msg": "frequency limited"}),
])
def test_a_rate_limit_is_retried_until_delivered(robot: Robot, notifier: WebhookNotifier, fmt: str,
                                                 answer: dict) -> None:
    robot.script = [answer, answer]
    (record,) = deliver(notifier, alert(1), Route(robot.hook(fmt), fmt=fmt, manager_id="wangjl"))
    assert record["status"] == "delivered" and record["attempts"] == 3, record
    assert len(robot.received[fmt]) == 3


def test_a_part_refused_for_good_does_not_hold_back_the_others(robot: Robot, notifier: WebhookNotifier) -> None:
    big = digest(200)
    robot.script = [OK["wecom"], {"errcode": 40058, "errmsg": "invalid Request Parameter"}]  # part 2 refused
    records = deliver(notifier, big, Route(robot.hook("wecom"), fmt="wecom", manager_id="wangjl"))
    assert len(records) == 200 and len({r["alert_id"] for r in records}) == 200
    failed = {r["alert_id"] for r in records if r["status"] == "failed"}
    second = robot.received["wecom"][1]["markdown"]["content"]
    assert failed and failed == {i["alert_id"] for i in big["items"] if item_line(i) in second}
    assert all("part 2/" in r["error"] and "40058" in r["error"] for r in records if r["status"] == "failed")
    assert {r["status"] for r in records if r["alert_id"] not in failed} == {"delivered"}


def test_a_robot_still_failing_after_retries_ends_the_parts_after_it(robot: Robot) -> None:
    n = WebhookNotifier(timeout_s=2.0, retries=1, backoff_s=0.01, address_policy=AddressPolicy(allow_loopback=True))
    try:
        robot.script = [{"errcode": -1, "errmsg": "system busy"}] * 2
        records = deliver(n, digest(200), Route(robot.hook("wecom"), fmt="wecom", manager_id="wangjl"))
    finally:
        n.close()
    assert len(records) == 200 and {r["status"] for r in records} == {"failed"}
    assert len(robot.received["wecom"]) == 2  # part 1 and its one retry; the later parts were not tried
    assert all("not sent after it" in r["error"] for r in records)


# --------------------------------------------------------------------------- mentions


def test_wecom_mentions_a_user_id_in_markdown_and_a_mobile_in_a_text_message(robot: Robot,
                                                                              notifier: WebhookNotifier) -> None:
    deliver(notifier, alert(1, manager="张三"), Route(robot.hook("wecom"), fmt="wecom", manager_id="zhangsan"))
    deliver(notifier, alert(2, manager="13800138000"), Route(robot.hook("wecom"), fmt="wecom"))
    by_id, by_mobile = robot.received["wecom"]
    assert by_id["msgtype"] == "markdown" and "<@zhangsan>" in by_id["markdown"]["content"]
    assert by_mobile["msgtype"] == "text"
    assert by_mobile["text"]["mentioned_mobile_list"] == ["13800138000"]
    assert "D-GZ-001" in by_mobile["text"]["content"] and "**" not in by_mobile["text"]["content"]


def test_dingtalk_mentions_by_mobile_or_user_id_with_the_at_in_the_text(robot: Robot,
                                                                        notifier: WebhookNotifier) -> None:
    deliver(notifier, alert(1, manager="13800138000"), Route(robot.hook("dingtalk"), fmt="dingtalk"))
    deliver(notifier, alert(2, manager="李四"), Route(robot.hook("dingtalk"), fmt="dingtalk", manager_id="lisi01"))
    by_mobile, by_id = robot.received["dingtalk"]
    assert by_mobile["at"] == {"isAtAll": False, "atMobiles": ["13800138000"]}
    assert "@13800138000" in by_mobile["markdown"]["text"]
    assert by_id["at"] == {"isAtAll": False, "atUserIds": ["lisi01"]}
    assert "@lisi01" in by_id["markdown"]["text"]


def test_feishu_mentions_with_an_at_tag(robot: Robot, notifier: WebhookNotifier) -> None:
    route = Route(robot.hook("feishu"), fmt="feishu", manager="王五", manager_id="ou_7d8a6e6df7621556ce0d21922b676706")
    deliver(notifier, alert(1), route)
    (body,) = robot.received["feishu"]
    assert '<at user_id="ou_7d8a6e6df7621556ce0d21922b676706">王五</at>' in body["content"]["text"]


# --------------------------------------------------------------------------- the registry's robot and manager_id


def write_registry(folder: Path, dealers: list[dict[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "batches.csv").write_text("tenant,batch,sku,activated\n7,1,S,1\n")
    (folder / "shipments.csv").write_text("tenant,batch,serial_from,serial_to,dealer_id\n")
    (folder / "stores.csv").write_text("store_id,tenant,region,channel\n")
    names = ["dealer_id", "tenant", "name", "channel", "regions", "manager", "webhook", "robot", "manager_id"]
    with (folder / "dealers.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, names)
        writer.writeheader()
        writer.writerows([{"tenant": "7", "channel": "KA", "regions": "44", **d} for d in dealers])


def test_the_robot_column_overrides_the_host_guess(tmp_path: Path, robot: Robot, notifier: WebhookNotifier) -> None:
    write_registry(tmp_path, [
        # a WeCom robot behind a relay whose host says nothing
        {"dealer_id": "D-GZ-001", "manager": "王经理", "manager_id": "wangjl", "robot": "WeCom",
         "webhook": robot.hook("wecom")},
        # a relay at WeCom's host that takes the generic JSON
        {"dealer_id": "D-2", "webhook": "https://qyapi.weixin.qq.com/relay", "robot": "generic"},
        {"dealer_id": "D-3", "webhook": "https://oapi.dingtalk.com/robot/send?access_token=t", "robot": ""},
    ])
    routes, refused = read_routes(Registry.load(tmp_path), allow_loopback=True)
    assert not refused
    assert (routes["D-GZ-001"].format, routes["D-2"].format, routes["D-3"].format) == ("wecom", "generic", "dingtalk")
    assert routes["D-GZ-001"].manager_id == "wangjl"
    (record,) = deliver(notifier, alert(1), routes["D-GZ-001"])
    assert record["status"] == "delivered" and record["channel_format"] == "wecom"
    (body,) = robot.received["wecom"]
    assert body["msgtype"] == "markdown" and "<@wangjl>" in body["markdown"]["content"]


@pytest.mark.parametrize(("column", "value", "expected"), [
    ("robot", "slack", r"column robot: 'slack' is not a robot format; expected one of generic, wecom, dingtalk, feishu"),
    ("manager_id", 'x"><at user_id="all', r"column manager_id: .* is not a chat user id; expected at most 64"),
    ("manager_id", "u" * 65, r"column manager_id: .* is not a chat user id"),
])
def test_a_bad_robot_or_manager_id_names_file_line_column_and_value(tmp_path: Path, column: str, value: str,
                                                                    expected: str) -> None:
    write_registry(tmp_path, [{"dealer_id": "D-1", "webhook": "https://hooks.example.com/x"},
                              {"dealer_id": "D-2", "webhook": "https://hooks.example.com/y", column: value}])
    with pytest.raises(RegistryError, match=re.escape(str(tmp_path / "dealers.csv")) + ":3: " + expected):
        Registry.load(tmp_path)


def test_the_registry_robots_are_the_message_formats() -> None:
    assert Dealers.ROBOTS == FORMATS
