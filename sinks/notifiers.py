"""Alert notifiers: fired alerts to the dealer's regional manager (区域经理) on team chat.

The engine already sends one alert per key and window; this module only formats and delivers.

A delivery must never crash or stall the engine, so ``WebhookNotifier``:

1. formats and sends on a thread pool; ``notify`` only schedules and returns at once;
2. bounds every attempt by a socket timeout and every delivery by a number of retries with
   exponential backoff (doubling from ``backoff_s``, capped at ``max_backoff_s``);
3. retries what may heal (connection errors, timeouts, 5xx, 429, a chat robot's ``errcode``
   != 0) and gives up at once on what will not (other 4xx, redirects, bad URLs);
4. never raises into the caller: every outcome becomes a delivery record (``DELIVERY_FIELDS``),
   collected by ``drain`` for the ``alert_deliveries`` table.

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
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.client import HTTPException
from typing import Any, Protocol

import orjson

from engine import outcomes

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

    def notify(self, alerts: list[dict[str, Any]], routes: Mapping[str, Route]) -> None: ...

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


class WebhookNotifier:
    """Delivers alerts to chat robots / webhooks on a thread pool, with retries and records.

    ``notify`` never blocks on the network and never raises; ``drain`` collects what has been
    delivered or has failed.  Call ``drain`` before ``close``: ``close`` abandons deliveries
    still waiting.  Usable as a context manager.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 backoff_s: float = DEFAULT_BACKOFF_S, max_workers: int = DEFAULT_MAX_WORKERS, *,
                 max_backoff_s: float = MAX_BACKOFF_S, max_pending: int = DEFAULT_MAX_PENDING):
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
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="scanstream-notify")
        # Proxies come from the environment as usual (corporate egress); redirects are refused.
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._lock = threading.Lock()
        self._pending: set[Future[None]] = set()
        self._records: list[dict[str, Any]] = []
        self._closing = threading.Event()

    # -- public

    def notify(self, alerts: list[dict[str, Any]], routes: Mapping[str, Route]) -> None:
        """Schedule one delivery per alert to the route of its ``dealer_id``; return at once.

        Alerts of dealers without a route (no webhook configured) are skipped without a record:
        not having a chat robot is not a failed delivery.
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
                    try:
                        future = self._pool.submit(self._deliver, alert, route)
                    except RuntimeError as exc:  # the pool was shut down under us
                        refused = f"notifier is closed: {exc}"
                    else:
                        self._pending.add(future)
                        future.add_done_callback(self._forget)
            if refused:
                log.warning("alert %s to %s not sent: %s", alert.get("alert_id"), redact_url(route.webhook), refused)
                self._record(alert, route.format, route.webhook, FAILED, 0, 0, refused)

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

    def close(self) -> None:
        """Stop: refuse new alerts, cancel deliveries not started, cut retry waits short.

        Deliveries in the middle of an HTTP attempt end within ``timeout_s`` on their own.
        """
        self._closing.set()
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
        # a digest's delivery is the delivery of each alert it carries
        ids = [str(i.get("alert_id", "")) for i in alert["items"]] if alert.get("items") else \
            [str(alert.get("alert_id", ""))]
        now = time.time_ns() // 1_000_000
        records = [{"alert_id": alert_id, "ts": now, "channel_format": fmt, "url": redact_url(url), "status": status,
                    "attempts": attempts, "http_status": http_status, "error": error} for alert_id in ids]
        with self._lock:
            self._records.extend(records)

    def _delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds before retry number ``retry`` (1-based): doubling from ``backoff_s``, capped;
        a server's ``Retry-After`` wins when longer, under the same cap."""
        delay = self.backoff_s * (2 ** (retry - 1))
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff_s)

    def _deliver(self, alert: Mapping[str, Any], route: Route) -> None:
        fmt = route.format
        url = route.webhook
        try:
            # The route's manager (registry) wins over the alert's copy, which may be older.
            message = dict(alert)
            if route.manager:
                message["manager"] = route.manager
            body = orjson.dumps(format_message(message, fmt), option=orjson.OPT_SERIALIZE_NUMPY)
        except Exception as exc:  # a malformed alert must not kill the worker thread
            self._record(alert, fmt, url, FAILED, 0, 0, f"cannot format alert: {type(exc).__name__}: {exc}")
            return
        attempts = 0
        result = _Attempt(False, False, error="not attempted")
        while True:
            attempts += 1
            url, headers, signed = _signed_request(route, fmt, body)
            result = self._attempt(url, headers, signed, fmt)
            if result.ok or not result.retry or attempts > self.retries:
                break
            if self._closing.wait(self._delay(attempts, result.retry_after)):
                result.error += "; notifier closed before the next retry"
                break
        status = DELIVERED if result.ok else FAILED
        if not result.ok:
            log.warning("alert %s to %s failed after %d attempt(s): %s",
                        alert.get("alert_id"), redact_url(url), attempts, result.error)
        self._record(alert, fmt, url, status, attempts, result.http_status, result.error)

    def _attempt(self, url: str, headers: dict[str, str], body: bytes, fmt: str) -> _Attempt:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as reply:
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
                return _Attempt(False, True, error=f"timeout: no reply within {self.timeout_s:g} s")
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

    def notify(self, alerts: list[dict[str, Any]], routes: Mapping[str, Route] | None = None) -> None:
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
