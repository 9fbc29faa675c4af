"""Alert notifiers: fired alerts to the dealer's regional manager (区域经理) on team chat.

The engine already sends one alert per key and window; this module only formats and delivers.

A delivery must never crash or stall the engine, so ``WebhookNotifier``:

1. formats and sends on a thread pool; ``notify`` only schedules and returns at once;
2. bounds every attempt by a socket timeout and every delivery by a number of retries with
   exponential backoff (doubling from ``backoff_s``, capped at ``max_backoff_s``);
3. retries what may heal (connection errors, timeouts, 5xx, 429, a chat robot's ``errcode``
   != 0) and gives up at once on what will not (other 4xx, redirects, bad URLs);
4. never raises into the caller: every outcome becomes a delivery record (``DELIVERY_FIELDS``),
   collected by ``drain`` for the ``alert_deliveries`` table;
5. stops trying once a delivery's deadline (``notify(..., deadline=)``, ``expire``) has passed:
   no retry starts after it, an attempt's socket timeout is cut to the time left, and the
   delivery is recorded ``pending`` (to be sent again later: ``sinks.alerting``), not failed;
6. with an ``AddressPolicy``, refuses webhooks whose host is or resolves to a link-local,
   private or (unless allowed) loopback address, checked at send time and pinned: the
   connection goes to the address that was checked, so a DNS answer that changes between the
   check and the connection (DNS rebinding) cannot redirect it.

Formats: ``generic`` (the alert as JSON, optionally HMAC-signed in a header), ``wecom``
(WeCom / 企业微信 group robot), ``dingtalk`` (DingTalk / 钉钉 custom robot, optionally
signed in the query string) and ``feishu`` (Feishu / 飞书 custom bot, optionally signed in
the body).  A digest (``sinks.alert_digest``: all alerts of one dealer and window) is
formatted like an alert, with one line per city and kind.  A route's format, when not configured, follows from the URL's
host (``detect_format``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.client import HTTPException
from typing import Any, Protocol

import orjson

from scanstream.engine import outcomes

#: Seconds one attempt may wait on the socket (connect, send, each read) before it fails.
DEFAULT_TIMEOUT_S = 5.0
#: Retries after the first attempt, so a delivery makes at most ``1 + retries`` attempts.
DEFAULT_RETRIES = 3
#: Delay before the first retry; each further retry doubles it.
DEFAULT_BACKOFF_S = 1.0
#: Upper bound of one backoff delay (and of a server's ``Retry-After``).
MAX_BACKOFF_S = 30.0
#: Threads sending concurrently.
DEFAULT_MAX_WORKERS = 4
#: Deliveries waiting or in flight beyond which new alerts are recorded as dropped, so a dead
#: chat service cannot grow the queue without bound.
DEFAULT_MAX_PENDING = 10_000

#: Formats ``format_message`` knows.
FORMATS: tuple[str, ...] = ("generic", "wecom", "dingtalk", "feishu")
#: Host -> format, for routes whose format is not configured.
FORMAT_BY_HOST: dict[str, str] = {"qyapi.weixin.qq.com": "wecom", "oapi.dingtalk.com": "dingtalk",
                                   "open.feishu.cn": "feishu", "open.larksuite.com": "feishu"}

#: Headers of a signed ``generic`` delivery.
SIGNATURE_HEADER = "X-Scanstream-Signature"
TIMESTAMP_HEADER = "X-Scanstream-Timestamp"

#: Fields of one delivery record, in the order of the ``alert_deliveries`` table.
DELIVERY_FIELDS: tuple[str, ...] = tuple(outcomes.names(outcomes.DELIVERY_COLUMNS))
DELIVERED = "delivered"
FAILED = "failed"
#: Not delivered because a deadline passed (or delivery was abandoned): to be sent again.
PENDING = "pending"

#: Shortest socket timeout of an attempt cut short by a deadline.
MIN_ATTEMPT_TIMEOUT_S = 0.05

#: Addresses a webhook must not point at: (what, network).  A webhook is an outbound request
#: made on a dealer's say-so (dealers.csv); these would reach the deployment's own network.
FORBIDDEN_NETWORKS: tuple[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network], ...] = tuple(
    (what, ipaddress.ip_network(net)) for what, net in (
        ("loopback", "127.0.0.0/8"), ("loopback", "::1/128"),
        ("link-local", "169.254.0.0/16"), ("link-local", "fe80::/10"),
        ("private", "10.0.0.0/8"), ("private", "172.16.0.0/12"), ("private", "192.168.0.0/16"),
        ("private", "fc00::/7"),
        # 0.0.0.0 and :: reach the local host on Linux: loopback in effect
        ("unspecified", "0.0.0.0/8"), ("unspecified", "::/128"),
    ))

#: Query parameters whose values are credentials (WeCom ``key``, DingTalk ``access_token`` and
#: ``sign`` ...); they are replaced by ``REDACTED`` wherever a URL is recorded or logged.
SECRET_PARAMS: frozenset[str] = frozenset({
    "key", "access_token", "token", "sign", "signature", "sig", "secret", "password", "apikey", "api_key",
})
REDACTED = "REDACTED"

#: Time zone of the human text: the managers read Beijing time (China has no DST, so a fixed
#: offset is exact and needs no tz database).
DISPLAY_TZ = timezone(timedelta(hours=8))
DISPLAY_TZ_LABEL = "UTC+8"
#: Evidence shown in a chat message is cut here: WeCom rejects markdown over 4096 bytes.
DETAIL_MAX_CHARS = 300
#: Bytes of a reply read for errcode checks and error messages.
MAX_REPLY_BYTES = 64 * 1024
#: Characters of a reply body kept in a delivery's ``error``.
ERROR_BODY_CHARS = 200

USER_AGENT = "scanstream-notifier/0.1"

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
# A DingTalk mention needs the member's mobile (atMobiles) or user id (atUserIds).
_MOBILE = re.compile(r"^\+?\d{6,15}$")

log = logging.getLogger("scanstream.notifiers")


# --------------------------------------------------------------------------- routes and formats


@dataclass(frozen=True)
class Route:
    """Where one dealer's alerts go: a robot webhook, its format and secret, the manager to @.

    ``fmt`` None means ``detect_format(webhook)``.  ``secret`` signs the request: DingTalk's
    加签 secret (``SEC...``) or the HMAC key of a ``generic`` receiver; WeCom robots have none
    (their key is part of the URL).
    """

    webhook: str
    fmt: str | None = None
    secret: str | None = None
    manager: str = ""

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


def redact_url(url: str) -> str:
    """``url`` with credential query values (``SECRET_PARAMS``) and user:password removed.

    The other parameters keep their exact encoding, so a recorded URL stays comparable.
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        name, sep, _ = pair.partition("=")
        if urllib.parse.unquote_plus(name).lower() in SECRET_PARAMS:
            pair = f"{name}={REDACTED}"
        pairs.append(pair)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "&".join(pairs), parts.fragment))


class WebhookRefused(ValueError):
    """A webhook URL that must not be called: not http(s), or an address in ``FORBIDDEN_NETWORKS``."""


def address_refusal(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address, *,
                    allow_loopback: bool = False) -> str:
    """Why ``address`` must not be called, or '' when it may (IPv4-mapped IPv6 is judged as IPv4)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for what, network in FORBIDDEN_NETWORKS:
        if ip.version == network.version and ip in network:
            if what in ("loopback", "unspecified") and allow_loopback:
                return ""
            hint = " (allowed only with alerts.allow_loopback = true)" if what in ("loopback", "unspecified") else ""
            return f"{ip} is a {what} address ({network}){hint}"
    return ""


def check_webhook_url(url: str, *, allow_loopback: bool = False) -> None:
    """Raise ``WebhookRefused`` (saying why) when ``url`` is not http(s) with a host, has a bad port,
    or its host is an IP literal in a forbidden range.  Host names are checked when sending
    (``AddressPolicy.resolve``): what they resolve to may change."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        raise WebhookRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"scheme {parts.scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise WebhookRefused("the URL has no host")
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return  # a host name
    reason = address_refusal(ip, allow_loopback=allow_loopback)
    if reason:
        raise WebhookRefused(reason)


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a ``WebhookNotifier`` may connect to: none of ``FORBIDDEN_NETWORKS``, the
    loopback ones when ``allow_loopback`` (tests and laptops with a local receiver)."""

    allow_loopback: bool = False

    def resolve(self, host: str, port: int) -> list[tuple[int, Any]]:
        """``(family, sockaddr)`` of every address of ``host``; ``WebhookRefused`` when any is
        forbidden (one bad answer is enough: a resolver may rotate them).  ``OSError`` when it
        does not resolve."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        out = []
        for family, _, _, _, sockaddr in infos:
            reason = address_refusal(str(sockaddr[0]).split("%", 1)[0], allow_loopback=self.allow_loopback)
            if reason:
                shown = "" if sockaddr[0] == host else f"{host} resolves to "
                raise WebhookRefused(shown + reason)
            out.append((family, sockaddr))
        if not out:
            raise OSError(f"{host} resolves to no address")
        return out


def _pinned_connect(addresses: list[tuple[int, Any]]):
    """A ``socket.create_connection`` that connects to the checked addresses only, whatever
    host it is asked for (the Host header and TLS name stay the URL's)."""
    def create(_address: Any, timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
               source_address: Any = None) -> socket.socket:
        error: OSError | None = None
        for family, sockaddr in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        raise error or OSError("no address to connect to")
    return create


class _Pinning:
    """Mixin of the HTTP(S) handlers: a request carrying ``scanstream_pinned = (host, addresses)``
    connects to those addresses, unless a proxy took over the connection (then ``req.host`` is
    the proxy's and the proxy resolves the name)."""

    def do_open(self, http_class, req, **kwargs):  # type: ignore[no-untyped-def]
        pinned = getattr(req, "scanstream_pinned", None)
        if pinned is not None and req.host == pinned[0] and not req._tunnel_host:
            def connection(*args: Any, **kw: Any) -> Any:
                conn = http_class(*args, **kw)
                conn._create_connection = _pinned_connect(pinned[1])
                return conn
            return super().do_open(connection, req, **kwargs)  # type: ignore[misc]
        return super().do_open(http_class, req, **kwargs)  # type: ignore[misc]


class _PinningHTTPHandler(_Pinning, urllib.request.HTTPHandler):
    pass


class _PinningHTTPSHandler(_Pinning, urllib.request.HTTPSHandler):
    pass


def delivery_records(alert: Mapping[str, Any], fmt: str, url: str, status: str, attempts: int,
                     http_status: int, error: str) -> list[dict[str, Any]]:
    """The ``alert_deliveries`` rows of one delivery: one per alert a digest carries (or the alert's)."""
    ids = [str(i.get("alert_id", "")) for i in alert["items"]] if alert.get("items") else \
        [str(alert.get("alert_id", ""))]
    now = time.time_ns() // 1_000_000
    return [{"alert_id": alert_id, "ts": now, "channel_format": fmt, "url": redact_url(url), "status": status,
             "attempts": attempts, "http_status": http_status, "error": error} for alert_id in ids]


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
    """The human facts of an alert, Chinese first, one markdown line each."""
    if alert.get("items"):
        return _digest_lines(alert)
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


def _digest_lines(digest: Mapping[str, Any]) -> list[str]:
    """A dealer's alerts of one window: one line per city and kind, with its count."""
    lines = [
        f"**经销商** dealer: {digest.get('dealer_id', '')}",
        f"**时间窗口** window: {_window_text(digest.get('window_start', 0), digest.get('window_end', 0))}",
    ]
    for item in digest["items"]:
        where = f"城市 city {item.get('city', '')}" if item.get("city") else ""
        code = f" 码 code {item['code']}" if item.get("code") else ""
        lines.append(f"**{_kind_label(item)}** {where}{code}: {int(item.get('count', 0))}")
    lines.append(f"**告警编号** alert ids: {', '.join(str(i.get('alert_id', '')) for i in digest['items'])}")
    return lines


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


def format_message(alert: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """The JSON body that announces ``alert`` (an ``ALERT_COLUMNS`` row) in format ``fmt``.

    ``generic``: the alert's fields, ``ts``/``window_start``/``window_end`` as RFC 3339 UTC
    strings plus ``<name>_ms`` epoch milliseconds, ``detail`` parsed, and a ``summary`` line.
    ``wecom``: a WeCom group-robot markdown message; ``<@manager>`` mentions the manager.
    ``dingtalk``: a DingTalk robot markdown message with ``at`` naming the manager (a mobile
    number goes to ``atMobiles``, anything else to ``atUserIds``).
    """
    if fmt == "generic":
        return _generic_body(alert)
    if fmt not in FORMATS:
        raise ValueError(f"message format {fmt!r}: expected one of {list(FORMATS)}")
    manager = str(alert.get("manager", "") or "")
    title = _title(alert)
    lines = _lines(alert)
    if fmt == "wecom":
        head = f"### {title}"
        text = "\n".join([head, *(f"> {line}" for line in lines)])
        if manager:
            text += f"\n\n<@{manager}> 请及时核查 please check"
        return {"msgtype": "markdown", "markdown": {"content": text}}
    if fmt == "feishu":  # a plain text message; the bot shows line breaks as they are
        text = "\n".join([title, *(line.replace("**", "") for line in lines)])
        if manager:
            text += f"\n@{manager} 请及时核查 please check"
        return {"msg_type": "text", "content": {"text": text}}
    # dingtalk: its markdown needs a blank line between paragraphs to break lines.
    text = "\n\n".join([f"### {title}", *(f"- {line}" for line in lines)])
    at: dict[str, Any] = {"isAtAll": False}
    if manager:
        text += f"\n\n@{manager} 请及时核查 please check"
        at["atMobiles" if _MOBILE.match(manager) else "atUserIds"] = [manager]
    return {"msgtype": "markdown", "markdown": {"title": title, "text": text}, "at": at}


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


def _signed_request(route: Route, fmt: str, body: bytes) -> tuple[str, dict[str, str], bytes]:
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


# --------------------------------------------------------------------------- notifiers


class Notifier(Protocol):
    """What the engine calls: hand over alerts, collect delivery records, close."""

    def notify(self, alerts: list[dict[str, Any]], routes: Mapping[str, Route],
               deadline: float | None = None) -> None: ...

    def drain(self, timeout: float | None = None) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib turns a redirected POST into a body-less GET; a moved robot URL is a
    # configuration error to report, not to follow.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


@dataclass(slots=True)
class _Attempt:
    """Outcome of one HTTP attempt."""

    ok: bool
    retry: bool
    http_status: int = 0
    error: str = ""
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: rare enough to fall back to our own backoff
        return None


def _reply_error(fmt: str, payload: bytes) -> str:
    """The robot's error for a 2xx reply, '' when it accepted the message."""
    if fmt not in ("wecom", "dingtalk", "feishu"):
        return ""
    try:
        reply = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""  # a 2xx without JSON: nothing says it failed
    if not isinstance(reply, dict):
        return ""
    if reply.get("errcode", 0) not in (0, "0"):
        return f"errcode {reply.get('errcode')}: {str(reply.get('errmsg', ''))[:ERROR_BODY_CHARS]}"
    if reply.get("code", 0) not in (0, "0"):  # Feishu says code/msg
        return f"code {reply.get('code')}: {str(reply.get('msg', ''))[:ERROR_BODY_CHARS]}"
    return ""


@dataclass(eq=False)
class _Job:
    """One scheduled delivery; ``done`` once its record is made (by its thread or by ``abandon``)."""

    alert: Mapping[str, Any]
    route: Route
    deadline: float | None  # time.monotonic() after which no attempt starts
    attempts: int = 0
    http_status: int = 0
    last_error: str = ""
    done: bool = False
    future: Future[None] | None = field(default=None, repr=False)


class WebhookNotifier:
    """Delivers alerts to chat robots / webhooks on a thread pool, with retries and records.

    ``notify`` never blocks on the network and never raises; ``drain`` collects what has been
    delivered, has failed, or is ``pending`` (its deadline passed).  Every delivery scheduled
    gets exactly one record; ``abandon`` records those still under way as pending, ``close``
    does so too.  Usable as a context manager.

    ``address_policy`` None sends anywhere http(s) reaches (a library default for receivers
    the caller controls); the engine always passes one (``scanstream.wiring.build_alerting``).
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 backoff_s: float = DEFAULT_BACKOFF_S, max_workers: int = DEFAULT_MAX_WORKERS, *,
                 max_backoff_s: float = MAX_BACKOFF_S, max_pending: int = DEFAULT_MAX_PENDING,
                 address_policy: AddressPolicy | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s {timeout_s!r}: expected a number of seconds > 0")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries {retries!r}: expected an integer >= 0")
        if not backoff_s >= 0 or not max_backoff_s >= 0:
            raise ValueError(f"backoff_s {backoff_s!r}, max_backoff_s {max_backoff_s!r}: expected seconds >= 0")
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers {max_workers!r}: expected an integer >= 1")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending {max_pending!r}: expected an integer >= 1")
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_pending = max_pending
        self.address_policy = address_policy
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="scanstream-notify")
        # Proxies come from the environment as usual (corporate egress); redirects are refused;
        # a checked address is the one connected to (``_Pinning``).
        self._opener = urllib.request.build_opener(_NoRedirect(), _PinningHTTPHandler(), _PinningHTTPSHandler())
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # retry waits: woken by ``expire`` and ``close``
        self._pending: set[Future[None]] = set()
        self._jobs: set[_Job] = set()
        self._records: list[dict[str, Any]] = []
        self._closing = threading.Event()
        self._cutoff: float | None = None  # ``expire``: no delivery attempts past this

    # -- public

    def notify(self, alerts: list[dict[str, Any]], routes: Mapping[str, Route], deadline: float | None = None) -> None:
        """Schedule one delivery per alert to the route of its ``dealer_id``; return at once.

        ``deadline`` (a ``time.monotonic()`` instant, None: none) is when these deliveries stop
        trying; what is not delivered by then is recorded ``pending``.  Alerts of dealers
        without a route (no webhook configured) are skipped without a record: not having a chat
        robot is not a failed delivery.
        """
        for alert in alerts:
            route = routes.get(str(alert.get("dealer_id", "")))
            if route is None or not route.webhook:
                log.debug("alert %s: no webhook for dealer %r", alert.get("alert_id"), alert.get("dealer_id"))
                continue
            with self._lock:
                refused = ("notifier is closed" if self._closing.is_set() else
                           f"dropped: {len(self._pending)} deliveries pending (max_pending {self.max_pending})"
                           if len(self._pending) >= self.max_pending else "")
                if not refused:
                    job = _Job(alert, route, deadline)
                    try:
                        future = self._pool.submit(self._deliver, job)
                    except RuntimeError as exc:  # the pool was shut down under us
                        refused = f"notifier is closed: {exc}"
                    else:
                        job.future = future
                        self._jobs.add(job)
                        self._pending.add(future)
                        future.add_done_callback(self._forget)
            if refused:
                log.warning("alert %s to %s not sent: %s", alert.get("alert_id"), redact_url(route.webhook), refused)
                self._record(alert, route.format, route.webhook, FAILED, 0, 0, refused)

    def expire(self, deadline: float) -> None:
        """No delivery, scheduled or to come, tries past ``deadline`` (``time.monotonic()``)."""
        with self._wake:
            self._cutoff = deadline if self._cutoff is None else min(self._cutoff, deadline)
            self._wake.notify_all()

    def outstanding(self) -> int:
        """Deliveries scheduled and not yet recorded."""
        with self._lock:
            return len(self._jobs)

    def drain(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait up to ``timeout`` seconds (None: until done) for pending deliveries, then return
        the records of every delivery finished since the last ``drain``.

        Deliveries still running after ``timeout`` stay pending and are returned by a later call.
        """
        with self._lock:
            pending = list(self._pending)
        if pending:
            wait(pending, timeout=timeout)
        with self._lock:
            records, self._records = self._records, []
        return records

    def abandon(self, reason: str = "abandoned before delivery ended") -> int:
        """Record every delivery still waiting or under way as ``pending`` (with ``reason`` and its
        last error) and stop it; a reply that still comes in is not recorded.  Returns how many."""
        with self._wake:
            jobs = [j for j in self._jobs if not j.done]
            for job in jobs:
                job.done = True
                if job.future is not None:
                    job.future.cancel()
                last = f"; last error: {job.last_error}" if job.last_error else ""
                self._records.extend(delivery_records(job.alert, job.route.format, job.route.webhook, PENDING,
                                                      job.attempts, job.http_status, reason + last))
            self._jobs.clear()
            self._wake.notify_all()
        return len(jobs)

    def close(self) -> None:
        """Stop: refuse new alerts, cancel deliveries not started, cut retry waits short; what
        was not delivered is recorded ``pending`` (a ``drain`` after ``close`` returns it).

        Deliveries in the middle of an HTTP attempt end within ``timeout_s`` on their own.
        """
        self._closing.set()
        self.abandon("notifier closed before delivery ended")
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workers

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _record(self, alert: Mapping[str, Any], fmt: str, url: str, status: str, attempts: int,
                http_status: int, error: str) -> None:
        records = delivery_records(alert, fmt, url, status, attempts, http_status, error)
        with self._lock:
            self._records.extend(records)

    def _finish(self, job: _Job, url: str, status: str, http_status: int, error: str) -> None:
        """The one record of ``job``, unless ``abandon`` made it already."""
        records = delivery_records(job.alert, job.route.format, url, status, job.attempts, http_status, error)
        with self._lock:
            if job.done:
                return
            job.done = True
            self._jobs.discard(job)
            self._records.extend(records)

    def _left(self, job: _Job) -> float:
        """Seconds until ``job``'s deadline (or the cutoff), ``inf`` without one."""
        deadlines = [d for d in (job.deadline, self._cutoff) if d is not None]
        return min(deadlines) - time.monotonic() if deadlines else math.inf

    def _sleep(self, job: _Job, delay: float) -> None:
        """Wait ``delay`` seconds, less when the deadline comes first, the notifier closes or
        ``abandon`` takes the job."""
        end = time.monotonic() + delay
        with self._wake:
            while not (self._closing.is_set() or job.done):
                left = min(end - time.monotonic(), self._left(job))
                if left <= 0:
                    break
                self._wake.wait(left)

    def _delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds before retry number ``retry`` (1-based): doubling from ``backoff_s``, capped;
        a server's ``Retry-After`` wins when longer, under the same cap."""
        delay = self.backoff_s * (2 ** (retry - 1))
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff_s)

    def _deliver(self, job: _Job) -> None:
        try:
            self._deliver_job(job)
        except Exception as exc:  # nothing may kill a worker thread or leave a job unrecorded
            log.exception("alert %s: delivery crashed", job.alert.get("alert_id"))
            self._finish(job, job.route.webhook, FAILED, job.http_status, f"{type(exc).__name__}: {exc}")

    def _deliver_job(self, job: _Job) -> None:
        alert, route = job.alert, job.route
        fmt = route.format
        url = route.webhook
        if job.done:
            return  # abandoned while waiting in the queue
        if self._left(job) <= 0:
            self._finish(job, url, PENDING, 0, "deadline passed before the first attempt")
            return
        try:
            # The route's manager (registry) wins over the alert's copy, which may be older.
            message = dict(alert)
            if route.manager:
                message["manager"] = route.manager
            body = orjson.dumps(format_message(message, fmt), option=orjson.OPT_SERIALIZE_NUMPY)
        except Exception as exc:  # a malformed alert must not kill the worker thread
            self._finish(job, url, FAILED, 0, f"cannot format alert: {type(exc).__name__}: {exc}")
            return
        result = _Attempt(False, False, error="not attempted")
        status = FAILED
        while True:
            job.attempts += 1
            url, headers, signed = _signed_request(route, fmt, body)
            timeout = min(self.timeout_s, max(self._left(job), MIN_ATTEMPT_TIMEOUT_S))
            result = self._attempt(url, headers, signed, fmt, timeout)
            job.http_status, job.last_error = result.http_status, result.error
            if result.ok:
                status = DELIVERED
                break
            if not result.retry:
                break
            if self._left(job) <= 0:
                status = PENDING
                break
            if job.attempts > self.retries:
                break
            delay = self._delay(job.attempts, result.retry_after)
            if delay >= self._left(job):
                status = PENDING  # the next retry would start after the deadline
                break
            self._sleep(job, delay)
            if job.done:
                return
            if self._closing.is_set():
                result.error += "; notifier closed before the next retry"
                break
            if self._left(job) <= 0:
                status = PENDING
                break
        error = result.error
        if status == PENDING:
            error = f"deadline passed after {job.attempts} attempt(s); last error: {result.error}"
            log.info("alert %s to %s pending: %s", alert.get("alert_id"), redact_url(url), error)
        elif status == FAILED:
            log.warning("alert %s to %s failed after %d attempt(s): %s",
                        alert.get("alert_id"), redact_url(url), job.attempts, error)
        self._finish(job, url, status, result.http_status, error)

    def _check_address(self, request: urllib.request.Request) -> str:
        """'' when the request may go out (its addresses pinned on it); else why it is refused.

        Raises ``OSError`` when the host does not resolve and no proxy would resolve it.
        """
        if self.address_policy is None:
            return ""
        parts = urllib.parse.urlsplit(request.full_url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        proxied = bool(urllib.request.getproxies().get(parts.scheme)) and not urllib.request.proxy_bypass(host)
        try:
            addresses = self.address_policy.resolve(host, port)
        except WebhookRefused as exc:
            return str(exc)
        except OSError:
            if proxied:
                return ""  # the proxy resolves the name; we cannot see what it finds
            raise
        request.scanstream_pinned = (request.host, addresses)  # type: ignore[attr-defined]
        return ""

    def _attempt(self, url: str, headers: dict[str, str], body: bytes, fmt: str,
                 timeout: float | None = None) -> _Attempt:
        timeout = self.timeout_s if timeout is None else timeout
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            refused = self._check_address(request)
            if refused:
                return _Attempt(False, False, error=f"refused: {refused}")
            with self._opener.open(request, timeout=timeout) as reply:
                status = reply.status
                payload = reply.read(MAX_REPLY_BYTES)
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                text = exc.read(ERROR_BODY_CHARS).decode("utf-8", "replace")
            except Exception:  # the error body is a courtesy; the status says enough
                text = ""
            finally:
                exc.close()
            retry = status >= 500 or status == 429
            error = f"HTTP {status}" + (f": {text.strip()}" if text.strip() else "")
            return _Attempt(False, retry, status, error, _retry_after(exc.headers.get("Retry-After")) if retry else None)
        except (TimeoutError, urllib.error.URLError, HTTPException, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                return _Attempt(False, True, error=f"timeout: no reply within {timeout:g} s")
            if isinstance(reason, (OSError, HTTPException)):
                return _Attempt(False, True, error=f"connection error: {type(reason).__name__}: {reason}")
            # URLError with a text reason: unknown scheme, bad host syntax ... retrying won't help.
            return _Attempt(False, False, error=f"bad request: {reason}")
        except Exception as exc:  # e.g. ValueError for a URL urllib cannot parse
            return _Attempt(False, False, error=f"{type(exc).__name__}: {exc}")
        if not 200 <= status < 300:
            return _Attempt(False, False, status, f"HTTP {status}: unexpected status")
        error = _reply_error(fmt, payload)
        if error:
            return _Attempt(False, True, status, error)
        return _Attempt(True, False, status)


class LogNotifier:
    """Writes one log line per alert to the ``scanstream.alerts`` logger; for laptops and as a
    fallback when no webhook is configured.  Same interface as ``WebhookNotifier``."""

    def __init__(self, level: int = logging.WARNING, logger: logging.Logger | None = None):
        self.level = level
        self.logger = logger or logging.getLogger("scanstream.alerts")

    def notify(self, alerts: list[dict[str, Any]], routes: Mapping[str, Route] | None = None,
               deadline: float | None = None) -> None:
        """Log each alert; the route's manager, when known, replaces the alert's."""
        for alert in alerts:
            route = (routes or {}).get(str(alert.get("dealer_id", "")))
            manager = (route.manager if route and route.manager else alert.get("manager", "")) or "-"
            self.logger.log(
                self.level,
                "alert %s %s/%s dealer=%s city=%s window=%s..%s count=%d manager=%s code=%s",
                alert.get("alert_id", ""), alert.get("alert", ""), alert.get("subtype", ""),
                alert.get("dealer_id", ""), alert.get("city", ""),
                rfc3339(alert.get("window_start", 0)), rfc3339(alert.get("window_end", 0)),
                int(alert.get("count", 0)), manager, alert.get("code", "") or "-",
            )

    def drain(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Nothing is delivered over a network, so there is nothing to record."""
        return []

    def close(self) -> None:
        """Nothing to release."""
