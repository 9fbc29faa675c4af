"""Alert messages: what a dealer's manager reads, in each chat platform's format, and how it is signed.

``format_messages`` turns an alert (or a digest of alerts: ``sinks.alert_digest``) into the
bodies of one of ``FORMATS``: ``generic`` (the alert as JSON, optionally HMAC-signed in a header),
``wecom`` (WeCom / 企业微信 group robot), ``dingtalk`` (DingTalk / 钉钉 custom robot, signed in
the query string) and ``feishu`` (Feishu / 飞书 custom bot, signed in the body).  A ``Route`` says
where a dealer's alerts go; its format is the dealer registry's ``robot`` column or, when that is
empty, follows from the URL's host (``detect_format``).  Delivery (``sinks/notifiers.py``) sends
what this module formats.

Chat robots refuse a message over their size limit (``MAX_BYTES``), so a digest too long for
one message is split into parts, each under the limit: never inside a line, each part titled
``(k/n)`` and mentioning the manager.  A line that alone does not fit is shortened with ``…``.
The manager is mentioned in the form that notifies on each platform (``Mention``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from scanstream.engine.urls import redact_url

USER_AGENT = "scanstream-notifier/0.1"

#: Formats ``format_messages`` knows (the registry's ``robot`` values: ``Dealers.ROBOTS``).
FORMATS: tuple[str, ...] = ("generic", "wecom", "dingtalk", "feishu")
#: Host -> format, for routes whose format is not configured.
FORMAT_BY_HOST: dict[str, str] = {"qyapi.weixin.qq.com": "wecom", "oapi.dingtalk.com": "dingtalk",
                                   "open.feishu.cn": "feishu", "open.larksuite.com": "feishu"}
#: Headers of a signed ``generic`` delivery.
SIGNATURE_HEADER = "X-Scanstream-Signature"
TIMESTAMP_HEADER = "X-Scanstream-Timestamp"
#: Time zone of the human text: the managers read Beijing time (China has no DST, so a fixed
#: offset is exact and needs no tz database).
DISPLAY_TZ = timezone(timedelta(hours=8))
DISPLAY_TZ_LABEL = "UTC+8"
#: Evidence shown in a chat message is cut here: a chat message is for reading, the full
#: evidence is in the ``alerts`` table and the ``generic`` body.
DETAIL_MAX_CHARS = 300

# Size limits of one message, in bytes.  Over them the platform refuses the message for good
# (``sinks.notifiers`` does not retry that answer), so ``format_messages`` splits below them.
#: WeCom group robot (群机器人配置说明, developer.work.weixin.qq.com/document/path/91770):
#: ``markdown.content`` "最长不超过4096个字节，必须是utf8编码"; over it the robot answers
#: errcode 40058 "markdown.content exceed max length 4096".
WECOM_MARKDOWN_MAX_BYTES = 4096
#: Same page: ``text.content`` "最长不超过2048个字节" (the text message carries mobile mentions).
WECOM_TEXT_MAX_BYTES = 2048
#: DingTalk custom robot: the request body at most 20 000 bytes; over it the robot answers
#: errcode 460101 "message too long, exceed 20000 bytes" (DingTalk's troubleshooting text:
#: "body 大小不合法;请保持大小在 20000bytes 以内").
DINGTALK_BODY_MAX_BYTES = 20_000
#: Feishu custom bot (自定义机器人使用指南, open.feishu.cn/document/ukTMukTMukTM/ucTM5YjL3ETO24yNxkjN):
#: the request body at most 20 KB = 20 480 bytes; a body it cannot take is answered code 9499.
FEISHU_BODY_MAX_BYTES = 20 * 1024
#: What Feishu's signature adds to a signed body after formatting (``signed_request``):
#: ``,"timestamp":"<10 digits>","sign":"<44 base64 chars>"`` is 70 bytes; rounded up.
FEISHU_SIGNATURE_BYTES = 128
#: Each line a message always carries (title, dealer, window, the mention; every line of a single
#: alert) is shortened to at most this fraction of the limit: the at most ten such lines of a
#: single alert then fit in one message with their markup, and a digest keeps over half of each
#: message for its items.
FIXED_LINE_FRACTION = 12
#: Longest user id a mention uses, and longest name it shows (WeCom user ids are 1-64 bytes;
#: DingTalk and Feishu ids are shorter).
MENTION_MAX_CHARS = 64
#: What a shortened line ends with.
ELLIPSIS = "…"
#: What follows the mention.
CHECK_TEXT = "请及时核查 please check"
KIND_LABELS: dict[str, str] = {"diversion": "窜货", "cloned_code": "疑似克隆码"}
SUBTYPE_LABELS: dict[str, str] = {
    "region": "跨区域",
    "channel": "跨渠道",
    "region+channel": "跨区域+跨渠道",
    "users": "多用户扫码",
    "provinces": "多省份扫码",
}
_KIND_EN: dict[str, str] = {"diversion": "diversion", "cloned_code": "cloned code"}
_TS_FIELDS = ("ts", "window_start", "window_end")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A manager that looks like this is a mobile number: mentioned by the platforms' mobile fields.
_MOBILE = re.compile(r"^\+?\d{6,15}$")
# Characters that would end a mention's markup (``<@id>``, ``<at user_id="id">name</at>``) early.
_MARKUP = str.maketrans("", "", '<>"')


@dataclass(frozen=True)
class Route:
    """Where one dealer's alerts go: a robot webhook, its format and secret, the manager to @.

    ``fmt`` None means ``detect_format(webhook)`` (the registry's ``robot`` column sets it).
    ``manager`` is the manager's name or mobile number, ``manager_id`` their platform user id
    (see ``Mention``).  ``secret`` signs the request: DingTalk's
    加签 secret (``SEC...``) or the HMAC key of a ``generic`` receiver; WeCom robots have none
    (their key is part of the URL).
    """

    webhook: str
    fmt: str | None = None
    secret: str | None = None
    manager: str = ""
    #: the manager's user id on the platform (``manager_id`` in dealers.csv); '' when unknown
    manager_id: str = ""

    def __post_init__(self) -> None:
        # Checked here, at configuration time, so that a bad route fails the start and not,
        # silently, every delivery.
        parts = urllib.parse.urlsplit(self.webhook)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook {redact_url(self.webhook)!r}: expected an http:// or https:// URL with a host")
        if self.fmt is not None and self.fmt not in FORMATS:
            raise ValueError(f"route format {self.fmt!r}: expected one of {list(FORMATS)} or None")

    @property
    def format(self) -> str:
        """The format used: the configured one or the one the URL implies."""
        return self.fmt if self.fmt is not None else detect_format(self.webhook)


def detect_format(url: str) -> str:
    """The message format a webhook URL implies: ``wecom``, ``dingtalk`` or ``generic``."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return FORMAT_BY_HOST.get(host, "generic")


def rfc3339(ms: int) -> str:
    """Epoch milliseconds as an RFC 3339 UTC string with milliseconds (``...T10:00:00.000Z``)."""
    # Integer arithmetic: a float timestamp can round a millisecond away.
    return (_EPOCH + timedelta(milliseconds=int(ms))).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _local(ms: int) -> datetime:
    return (_EPOCH + timedelta(milliseconds=int(ms))).astimezone(DISPLAY_TZ)


def _window_text(start_ms: int, end_ms: int) -> str:
    start, end = _local(start_ms), _local(end_ms)
    end_fmt = "%H:%M:%S" if start.date() == end.date() else "%Y-%m-%d %H:%M:%S"
    return f"{start:%Y-%m-%d %H:%M:%S} ~ {end.strftime(end_fmt)} ({DISPLAY_TZ_LABEL})"


def _kind_label(alert: Mapping[str, Any]) -> str:
    """窜货（跨区域）, 疑似克隆码（多用户扫码） ...; unknown kinds show as they are."""
    kind, subtype = str(alert.get("alert", "")), str(alert.get("subtype", ""))
    label = KIND_LABELS.get(kind, kind or "告警")
    return f"{label}（{SUBTYPE_LABELS.get(subtype, subtype)}）" if subtype else label


def _kind_text(alert: Mapping[str, Any]) -> str:
    kind, subtype = str(alert.get("alert", "")), str(alert.get("subtype", ""))
    english = _KIND_EN.get(kind, kind)
    return f"{_kind_label(alert)} {english}/{subtype}" if subtype else f"{_kind_label(alert)} {english}"


def _detail_text(detail: Any) -> str:
    text = detail if isinstance(detail, str) else orjson.dumps(detail).decode()
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"


def _lines(alert: Mapping[str, Any]) -> list[str]:
    """The human facts of a single alert, Chinese first, one markdown line each."""
    lines = [
        f"**类型** kind: {_kind_text(alert)}",
        f"**经销商** dealer: {alert.get('dealer_id', '')}",
        f"**扫码城市** scan city: {alert.get('city', '')}",
        f"**时间窗口** window: {_window_text(alert.get('window_start', 0), alert.get('window_end', 0))}",
        f"**数量** count: {int(alert.get('count', 0))}",
    ]
    if alert.get("code"):
        lines.append(f"**码** code: {alert['code']}")
    if alert.get("detail"):
        lines.append(f"**证据** detail: {_detail_text(alert['detail'])}")
    lines.append(f"**告警编号** alert id: {alert.get('alert_id', '')}")
    return lines


def _digest_head(digest: Mapping[str, Any]) -> list[str]:
    """The lines every part of a digest repeats: its dealer and window."""
    return [
        f"**经销商** dealer: {digest.get('dealer_id', '')}",
        f"**时间窗口** window: {_window_text(digest.get('window_start', 0), digest.get('window_end', 0))}",
    ]


def _item_line(item: Mapping[str, Any]) -> str:
    """One alert of a digest: kind, city or code, count and its alert id, on one line (so that
    a part of a split digest names exactly the alerts it carries)."""
    where = f"城市 city {item.get('city', '')}" if item.get("city") else ""
    code = f" 码 code {item['code']}" if item.get("code") else ""
    return f"**{_kind_label(item)}** {where}{code}: {int(item.get('count', 0))} · 编号 id {item.get('alert_id', '')}"


def _title(alert: Mapping[str, Any]) -> str:
    if alert.get("items"):
        return f"scanstream 告警汇总：{len(alert['items'])} 条 · {alert.get('dealer_id', '')}"
    return f"scanstream 告警：{_kind_label(alert)} · {alert.get('dealer_id', '')}"


def summary(alert: Mapping[str, Any]) -> str:
    """One plain line for logs and the ``generic`` body's ``summary``."""
    return (f"{_title(alert)} | 城市 {alert.get('city', '')} | "
            f"{_window_text(alert.get('window_start', 0), alert.get('window_end', 0))} | "
            f"数量 {int(alert.get('count', 0))} | 经理 {alert.get('manager', '') or '-'}")


def _generic_body(alert: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, value in alert.items():
        if name in _TS_FIELDS:
            body[name] = rfc3339(value)
            body[f"{name}_ms"] = int(value)
        elif name == "detail" and isinstance(value, str):
            # The evidence is JSON text in the alert table; a receiver wants the object.
            try:
                body[name] = orjson.loads(value) if value else {}
            except orjson.JSONDecodeError:
                body[name] = value
        elif hasattr(value, "item"):  # numpy scalar from a batch row
            body[name] = value.item()
        else:
            body[name] = value
    body["summary"] = summary(alert)
    return body


@dataclass(frozen=True)
class Mention:
    """Who a message mentions, in the forms the platforms notify by.

    ``user_id`` is the manager's platform user id: the registry's ``manager_id`` or, without
    one, a ``manager`` that is not a mobile number (registries written before ``manager_id``
    held the user id there).  ``mobile`` is a ``manager`` that looks like a mobile number.
    ``name`` is what a Feishu ``<at>`` shows.

    - WeCom: markdown ``<@user_id>`` in the content; with only a mobile, a text message with
      ``mentioned_mobile_list`` (WeCom markdown cannot mention by mobile);
    - DingTalk: ``at.atUserIds`` with ``@user_id`` in the text, or ``at.atMobiles`` with
      ``@mobile`` (DingTalk highlights the mention only when the text carries it too);
    - Feishu: ``<at user_id="user_id">name</at>`` in the text; a custom bot cannot mention by
      mobile, so a mobile alone is shown as ``@mobile`` and notifies nobody.
    """

    user_id: str = ""
    mobile: str = ""
    name: str = ""

    @classmethod
    def of(cls, alert: Mapping[str, Any]) -> Mention:
        """The mention of ``alert``'s ``manager`` / ``manager_id``."""
        manager = str(alert.get("manager", "") or "").strip().translate(_MARKUP)
        manager_id = str(alert.get("manager_id", "") or "").strip().translate(_MARKUP)
        mobile = manager if _MOBILE.match(manager) else ""
        user_id = manager_id or ("" if mobile else manager)
        name = manager or manager_id
        if len(name) > MENTION_MAX_CHARS:  # a display name, not an id: shortened like any line
            name = name[:MENTION_MAX_CHARS - 1] + ELLIPSIS
        # no platform id is longer; a longer one mentions nobody and would only crowd the message out
        return cls(user_id[:MENTION_MAX_CHARS], mobile, name)

    def __bool__(self) -> bool:
        return bool(self.user_id or self.mobile)


@dataclass(frozen=True)
class Message:
    """One message to send: its JSON ``body`` and the ``alert`` it announces (a digest's part
    carries the digest with only the items this part lists: its delivery records name them)."""

    body: dict[str, Any]
    alert: Mapping[str, Any]


def _plain(line: str) -> str:
    return line.replace("**", "")


def _render(fmt: str, title: str, lines: list[str], mention: Mention) -> dict[str, Any]:
    """The body of one message of a chat format."""
    if fmt == "wecom":
        if mention.mobile and not mention.user_id:
            # Only a text message mentions by mobile; it shows no markdown.
            text = "\n".join([title, *(_plain(line) for line in lines), CHECK_TEXT])
            return {"msgtype": "text", "text": {"content": text, "mentioned_mobile_list": [mention.mobile]}}
        text = "\n".join([f"### {title}", *(f"> {line}" for line in lines)])
        if mention.user_id:
            text += f"\n\n<@{mention.user_id}> {CHECK_TEXT}"
        return {"msgtype": "markdown", "markdown": {"content": text}}
    if fmt == "feishu":  # a plain text message; the bot shows line breaks as they are
        text = "\n".join([title, *(_plain(line) for line in lines)])
        if mention.user_id:
            text += f'\n<at user_id="{mention.user_id}">{mention.name or mention.user_id}</at> {CHECK_TEXT}'
        elif mention.mobile:
            text += f"\n@{mention.mobile} {CHECK_TEXT}"
        return {"msg_type": "text", "content": {"text": text}}
    # dingtalk: its markdown needs a blank line between paragraphs to break lines.
    text = "\n\n".join([f"### {title}", *(f"- {line}" for line in lines)])
    at: dict[str, Any] = {"isAtAll": False}
    if mention.user_id:
        text += f"\n\n@{mention.user_id} {CHECK_TEXT}"
        at["atUserIds"] = [mention.user_id]
    elif mention.mobile:
        text += f"\n\n@{mention.mobile} {CHECK_TEXT}"
        at["atMobiles"] = [mention.mobile]
    return {"msgtype": "markdown", "markdown": {"title": title, "text": text}, "at": at}


def max_bytes(fmt: str, body: Mapping[str, Any]) -> int:
    """The size limit of ``body`` (a chat format's message), in the bytes ``size`` counts."""
    if fmt == "wecom":
        return WECOM_TEXT_MAX_BYTES if body.get("msgtype") == "text" else WECOM_MARKDOWN_MAX_BYTES
    if fmt == "dingtalk":
        return DINGTALK_BODY_MAX_BYTES
    if fmt == "feishu":
        return FEISHU_BODY_MAX_BYTES
    raise ValueError(f"message format {fmt!r}: expected one of {list(FORMATS[1:])} (a chat robot's format)")


def size(fmt: str, body: Mapping[str, Any]) -> int:
    """What the platform holds against ``max_bytes``: WeCom the UTF-8 bytes of the content,
    DingTalk the request body, Feishu the request body once signed."""
    if fmt == "wecom":
        return len(body[body["msgtype"]]["content"].encode())
    signature = FEISHU_SIGNATURE_BYTES if fmt == "feishu" else 0
    return len(orjson.dumps(body)) + signature


def _shorten(line: str, fits: Callable[[str], bool]) -> str:
    """``line``, or its longest start that ``fits`` with ``ELLIPSIS`` after it."""
    if fits(line):
        return line
    lo, hi = 0, len(line)  # fits(line[:lo] + ELLIPSIS) holds (assumed for 0), line[:hi] does not fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(line[:mid] + ELLIPSIS):
            lo = mid
        else:
            hi = mid
    return line[:lo] + ELLIPSIS


def _part_title(title: str, k: int, n: int) -> str:
    return title if n == 1 else f"{title} ({k}/{n})"


def format_messages(alert: Mapping[str, Any], fmt: str) -> list[Message]:
    """The messages that announce ``alert`` (an ``ALERT_COLUMNS`` row or a digest) in ``fmt``.

    ``generic``: one message, the alert's fields, ``ts``/``window_start``/``window_end`` as RFC
    3339 UTC strings plus ``<name>_ms`` epoch milliseconds, ``detail`` parsed, a ``summary``
    line (and a digest's ``items``).  ``wecom``, ``dingtalk``, ``feishu``: the facts as text,
    the manager mentioned (``Mention``), each message within the platform's limit
    (``max_bytes``): a digest whose items do not fit in one is split into parts titled
    ``(k/n)``, a part never ends inside a line, each part repeats the dealer, the window and the
    mention; a line too long for any message is shortened with ``…``.
    """
    if fmt == "generic":
        return [Message(_generic_body(alert), alert)]
    if fmt not in FORMATS:
        raise ValueError(f"message format {fmt!r}: expected one of {list(FORMATS)}")
    mention = Mention.of(alert)
    items: list[Mapping[str, Any]] = list(alert.get("items") or [])
    limit = max_bytes(fmt, _render(fmt, "", [], mention))

    empty = size(fmt, _render(fmt, "", [], mention))

    def line_fits(share: int) -> Callable[[str], bool]:
        # the bytes a line adds to a message (as its title: escaped, with its markup) within ``share``
        return lambda text: size(fmt, _render(fmt, text, [], mention)) - empty <= share

    share = limit // FIXED_LINE_FRACTION
    title = _shorten(_title(alert), line_fits(share))
    fixed = [_shorten(line, line_fits(share)) for line in (_digest_head(alert) if items else _lines(alert))]
    lines = [_item_line(item) for item in items]
    digits = 1
    while True:
        # room for the widest "(k/n)" of a split into at most 10**digits - 1 parts
        widest = f"{title} ({'9' * digits}/{'9' * digits})"
        base = size(fmt, _render(fmt, widest, fixed, mention))
        # each line adds the same bytes wherever it goes (a separator and its own text, escaped)
        room = limit - base
        parts: list[list[int]] = [[]]
        used = 0
        for i, line in enumerate(lines):
            cost = size(fmt, _render(fmt, widest, [*fixed, line], mention)) - base
            if cost > room:  # too long even alone in a part: shortened to fit
                line = lines[i] = _shorten(line, lambda t: size(fmt, _render(fmt, widest, [*fixed, t], mention))
                                           - base <= room)
                cost = size(fmt, _render(fmt, widest, [*fixed, line], mention)) - base
            if used + cost > room and parts[-1]:
                parts.append([])
                used = 0
            parts[-1].append(i)
            used += cost
        if len(str(len(parts))) <= digits:
            break
        digits += 1
    out = []
    for k, part in enumerate(parts, start=1):
        body = _render(fmt, _part_title(title, k, len(parts)), [*fixed, *(lines[i] for i in part)], mention)
        if size(fmt, body) > max_bytes(fmt, body):  # the packing above rules it out; never send it over
            raise ValueError(f"{fmt} message part {k}/{len(parts)} is {size(fmt, body)} bytes; "
                             f"expected at most {max_bytes(fmt, body)}")
        out.append(Message(body, {**alert, "items": [items[i] for i in part]} if items else alert))
    return out


def format_message(alert: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """The body of the one message that announces ``alert`` in ``fmt`` (``format_messages``);
    raises ``ValueError`` when it takes several (a long digest: use ``format_messages``)."""
    messages = format_messages(alert, fmt)
    if len(messages) != 1:
        raise ValueError(f"alert {alert.get('alert_id', '')!r} takes {len(messages)} {fmt} messages; "
                         f"expected one (use format_messages)")
    return messages[0].body


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's 加签 ``sign``: base64 HMAC-SHA256 of ``"{timestamp}\\n{secret}"`` keyed by the
    secret, not yet URL-encoded."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu's signature: base64 HMAC-SHA256, keyed by ``"{timestamp}\n{secret}"``, of nothing."""
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def generic_signature(secret: str, body: bytes) -> str:
    """The ``X-Scanstream-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_request(route: Route, fmt: str, body: bytes) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and body of one attempt; signatures carry the time, so each attempt signs anew."""
    url = route.webhook
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}
    if route.secret:
        now_ms = time.time_ns() // 1_000_000
        if fmt == "dingtalk":
            query = urllib.parse.urlencode({"timestamp": now_ms, "sign": dingtalk_sign(route.secret, now_ms)})
            url += ("&" if urllib.parse.urlsplit(url).query else "?") + query
        elif fmt == "generic":
            headers[SIGNATURE_HEADER] = generic_signature(route.secret, body)
            headers[TIMESTAMP_HEADER] = str(now_ms)
        elif fmt == "feishu":  # Feishu reads the signature from the message itself
            message = orjson.loads(body)
            message["timestamp"] = str(now_ms // 1000)
            message["sign"] = feishu_sign(route.secret, now_ms // 1000)
            body = orjson.dumps(message)
        # WeCom robots have no signing: the key in the URL is the credential.
    return url, headers, body


