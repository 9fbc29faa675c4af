"""Alert notifiers: fired alerts to the dealer's regional manager (区域经理) on team chat.

The engine already sends one alert per key and window; this module only formats and delivers.

A delivery must never crash or stall the engine, so ``WebhookNotifier``:

1. formats and sends on an event loop of its own, in one daemon thread, through one HTTP client
   session (``aiohttp``): keep-alive connections pooled per host, at most ``max_workers`` open
   at once; ``notify`` only schedules and returns at once;
2. bounds every attempt by a connect timeout and a read timeout (``timeout_s`` each, the whole
   attempt by ``ATTEMPT_TIMEOUTS`` of them) and every delivery by a number of retries with
   exponential backoff (doubling from ``backoff_s``, capped at ``max_backoff_s``); reads at most
   ``MAX_REPLY_BYTES`` of a reply and follows no redirect;
3. retries what may heal (connection errors, timeouts, 5xx, 429, a chat robot's ``errcode``
   != 0, its rate limits above all) and gives up at once on what will not (other 4xx,
   redirects, bad URLs, a robot's answer that the message is too long or malformed:
   ``PERMANENT_CODES``; ``_classify`` is the one place that decides);
4. never raises into the caller: every outcome becomes a delivery record (``DELIVERY_FIELDS``),
   collected by ``drain`` for the ``alert_deliveries`` table;
5. stops trying once a delivery's deadline (``notify(..., deadline=)``, ``expire``) has passed:
   no attempt or retry starts after it (waiting for a free connection stops there too), an
   attempt's timeouts are cut to the time left, and the delivery is recorded ``pending`` (to be
   sent again later: ``sinks.alerting``), not failed;
6. sends a digest too long for one chat message as several (``format_messages``), one after
   the other, and records each alert with the outcome of the part that carried it;
7. with an ``AddressPolicy``, refuses webhooks whose host is or resolves to a link-local,
   private or (unless allowed) loopback address, checked at send time and pinned: the client's
   resolver (``CheckingResolver``) hands the connection only the addresses it checked, so a DNS
   answer that changes between the check and the connection (DNS rebinding) cannot redirect it.

``close`` cancels what is under way, closes the connections and ends the thread within
``CLOSE_TIMEOUT_S``; a notifier dropped without ``close`` is stopped the same way when it is
collected (and at interpreter exit).

What is sent (formats, text, signatures, ``Route``) is ``sinks/alert_messages.py``; which
addresses may be called is ``sinks/webhook_addresses.py``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Awaitable, Coroutine, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from yarl import URL

from scanstream.engine import outcomes
from scanstream.engine.urls import redact_url
from scanstream.sinks.alert_messages import Route, format_messages, rfc3339, signed_request
from scanstream.sinks.webhook_addresses import AddressPolicy, CheckingResolver, WebhookRefused

#: Seconds one attempt may wait to connect, and then for each read of the reply, before it fails.
DEFAULT_TIMEOUT_S = 5.0
#: An attempt as a whole (connect, send, the reply) lasts at most this many timeouts, so a
#: reply trickled a byte at a time cannot hold a connection for long.
ATTEMPT_TIMEOUTS = 2
#: Retries after the first attempt, so a delivery makes at most ``1 + retries`` attempts.
DEFAULT_RETRIES = 3
#: Delay before the first retry; each further retry doubles it.
DEFAULT_BACKOFF_S = 1.0
#: Upper bound of one backoff delay (and of a server's ``Retry-After``).
MAX_BACKOFF_S = 30.0
#: HTTP connections open at once, over all webhooks: attempts beyond it wait for a free one.
DEFAULT_MAX_WORKERS = 4
#: Deliveries waiting or in flight beyond which new alerts are recorded as dropped, so a dead
#: chat service cannot grow the queue without bound.
DEFAULT_MAX_PENDING = 10_000
#: Seconds an idle connection stays pooled for the next message to the same robot; below the
#: idle timeouts servers commonly use, so a pooled connection is rarely one the server dropped.
KEEPALIVE_S = 15.0
#: Seconds a host's checked addresses are reused before it is looked up (and checked) again.
DNS_CACHE_S = 10.0
#: Threads doing blocking name lookups (``getaddrinfo``) for the event loop.
LOOKUP_THREADS = 2
#: Seconds ``notify`` waits for the HTTP client to start (its first call only).
STARTUP_TIMEOUT_S = 10.0
#: Upper bound of ``close``: attempts under way cancelled, connections closed, the thread ended.
CLOSE_TIMEOUT_S = 5.0


#: Fields of one delivery record, in the order of the ``alert_deliveries`` table.
DELIVERY_FIELDS: tuple[str, ...] = tuple(outcomes.names(outcomes.DELIVERY_COLUMNS))
DELIVERED = "delivered"
FAILED = "failed"
#: Not delivered because a deadline passed (or delivery was abandoned): to be sent again.
PENDING = "pending"

#: Shortest timeout of an attempt cut short by a deadline.
MIN_ATTEMPT_TIMEOUT_S = 0.05


#: Bytes of a reply read for errcode checks and error messages.
MAX_REPLY_BYTES = 64 * 1024
#: Characters of a reply body kept in a delivery's ``error``.
ERROR_BODY_CHARS = 200

# A chat robot answers HTTP 200 with an error code in the body (WeCom and DingTalk ``errcode``,
# Feishu ``code``).  These codes say the message itself is refused: sending it again gets the
# same answer, so it is recorded failed at once.  Every other code (a rate limit, a server
# error, a webhook being set up) is retried.  Sources: WeCom's global error codes
# (developer.work.weixin.qq.com/document/path/90313) and its robot's answers; DingTalk's robot
# error codes (open.dingtalk.com, custom robot FAQ); Feishu's custom bot guide and FAQ.
#: WeCom: 40058 invalid request parameter, the robot's answer to a ``markdown.content`` over
#: 4096 bytes ("markdown.content exceed max length 4096. invalid Request Parameter").
WECOM_CONTENT_TOO_LONG = 40058
#: WeCom: 400xx are "不合法的…" invalid-parameter answers (40008 invalid message type, 40058 ...).
WECOM_INVALID_PARAMETERS = range(40000, 40100)
#: WeCom: 45009 API call frequency over the limit (a robot takes 20 messages a minute): retried.
WECOM_RATE_LIMITED = 45009
#: DingTalk: 460101 "message too long, exceed 20000 bytes".
DINGTALK_TOO_LONG = 460101
#: DingTalk: 101002 "message is too long", the older answer to the same.
DINGTALK_TOO_LONG_OLD = 101002
#: DingTalk: 40035 missing or invalid parameter ("缺少参数 json": a body it cannot read).
DINGTALK_INVALID_PARAMETER = 40035
#: DingTalk: 400105 unsupported ``msgtype``.
DINGTALK_UNSUPPORTED_MSGTYPE = 400105
#: DingTalk: 130101 "send too fast" and 410100 "too many requests" (20 messages a minute per
#: robot, then throttled for 10 minutes): retried.
DINGTALK_RATE_LIMITED = (130101, 410100)
#: Feishu: 9499 "Bad Request", a body the bot cannot take (malformed, or over 20 KB).
FEISHU_BAD_REQUEST = 9499
#: Feishu: 19002 "param invalid" (e.g. an unknown ``msg_type``).
FEISHU_INVALID_PARAMETER = 19002
#: Feishu: 11232 "frequency limited" (100 messages a minute, 5 a second per bot): retried.
FEISHU_RATE_LIMITED = 11232
#: Format -> the robot codes recorded failed without a retry.
PERMANENT_CODES: dict[str, frozenset[int]] = {
    "wecom": frozenset(WECOM_INVALID_PARAMETERS),
    "dingtalk": frozenset({DINGTALK_TOO_LONG, DINGTALK_TOO_LONG_OLD, DINGTALK_INVALID_PARAMETER,
                           DINGTALK_UNSUPPORTED_MSGTYPE}),
    "feishu": frozenset({FEISHU_BAD_REQUEST, FEISHU_INVALID_PARAMETER}),
}
#: Format -> the robot codes of a rate limit: always retried, even inside an HTTP 4xx.
RATE_LIMIT_CODES: dict[str, frozenset[int]] = {
    "wecom": frozenset({WECOM_RATE_LIMITED}),
    "dingtalk": frozenset(DINGTALK_RATE_LIMITED),
    "feishu": frozenset({FEISHU_RATE_LIMITED}),
}


log = logging.getLogger("scanstream.notifiers")


# --------------------------------------------------------------------------- routes and formats


def delivery_records(alert: Mapping[str, Any], fmt: str, url: str, status: str, attempts: int,
                     http_status: int, error: str) -> list[dict[str, Any]]:
    """The ``alert_deliveries`` rows of one delivery: one per alert a digest carries (or the alert's)."""
    ids = [str(i.get("alert_id", "")) for i in alert["items"]] if alert.get("items") else \
        [str(alert.get("alert_id", ""))]
    now = time.time_ns() // 1_000_000
    return [{"alert_id": alert_id, "ts": now, "channel_format": fmt, "url": redact_url(url), "status": status,
             "attempts": attempts, "http_status": http_status, "error": error} for alert_id in ids]


# --------------------------------------------------------------------------- notifiers


class Notifier(Protocol):
    """What the engine calls: hand over alerts, collect delivery records, close."""

    def notify(self, alerts: list[dict[str, Any]], routes: Mapping[str, Route],
               deadline: float | None = None) -> None: ...

    def drain(self, timeout: float | None = None) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


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


def _robot_code(fmt: str, payload: bytes) -> tuple[int | str, str] | None:
    """A chat robot's error code and message in a reply body; None when it says nothing failed."""
    if fmt not in PERMANENT_CODES:
        return None
    try:
        reply = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None  # without JSON nothing says it failed
    if not isinstance(reply, dict):
        return None
    for code_key, message_key in (("errcode", "errmsg"), ("code", "msg")):  # Feishu says code/msg
        code = reply.get(code_key, 0)
        if code not in (0, "0", None):
            return code, str(reply.get(message_key, ""))[:ERROR_BODY_CHARS]
    return None


def _as_int(code: int | str) -> int | None:
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


def _classify(fmt: str, status: int, payload: bytes, retry_after: float | None = None) -> _Attempt:
    """The outcome of an HTTP reply: the one place that decides what is retried.

    A robot's error code decides when there is one: a rate limit is retried, a code of
    ``PERMANENT_CODES`` (too long, malformed) is not, any other is retried.  Without one:
    2xx is delivered, 5xx and 429 are retried, any other status is not.
    """
    robot = _robot_code(fmt, payload)
    ok_status = 200 <= status < 300
    if robot is not None:
        code, message = robot
        number = _as_int(code)
        label = "errcode" if fmt != "feishu" else "code"
        error = f"{label} {code}: {message}" if ok_status else f"HTTP {status}: {label} {code}: {message}"
        if number in RATE_LIMIT_CODES[fmt]:
            return _Attempt(False, True, status, error + " (rate limited)", retry_after)
        if number in PERMANENT_CODES[fmt]:
            return _Attempt(False, False, status, error + " (refused as too long or malformed: not retried)")
        return _Attempt(False, ok_status or status >= 500 or status == 429, status, error, retry_after)
    if ok_status:
        return _Attempt(True, False, status)
    text = payload[:ERROR_BODY_CHARS].decode("utf-8", "replace").strip()
    retry = status >= 500 or status == 429
    return _Attempt(False, retry, status, f"HTTP {status}" + (f": {text}" if text else ""),
                    retry_after if retry else None)


T = TypeVar("T")


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of a reply body: an endless body is cut there, never buffered whole."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _is_address(host: str) -> bool:
    """Whether ``host`` is an IP address rather than a name (the connector looks up names only)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(eq=False)
class _Job:
    """One scheduled delivery; ``done`` once its record is made (by its task or by ``abandon``)."""

    alert: Mapping[str, Any]
    route: Route
    deadline: float | None  # time.monotonic() after which no attempt starts
    #: what is not recorded yet: the alert, or a digest with the items of the parts not sent
    #: yet; None once all is recorded
    left: Mapping[str, Any] | None = None
    attempts: int = 0  # of the message being sent
    http_status: int = 0
    last_error: str = ""
    done: bool = False
    proxy: str | None = None  # the HTTP proxy the webhook is reached through, from the environment
    future: Future[None] | None = field(default=None, repr=False)
    #: the deadline timer of what the job awaits now (``_before_deadline``): ``expire`` moves it
    timer: asyncio.Timeout | None = field(default=None, repr=False)


class _HttpClient:
    """One HTTP client session (``aiohttp``) on a private event loop run by one daemon thread.

    The notifier's callers are synchronous threads: they hand coroutines over with ``submit``.
    The connector pools keep-alive connections per host and opens at most ``connections`` at
    once; ``slots`` (as many) is what an attempt waits on first, so waiting for a free connection
    is not counted in the attempt's timeouts and ends at the delivery's deadline.  Host names go
    through ``CheckingResolver`` (the address policy, pinned).  Nothing here refers to the
    notifier, so a notifier dropped without ``close`` can be collected and stop its client.
    """

    def __init__(self, connections: int, policy: AddressPolicy | None, unchecked: frozenset[str]):
        self.loop = asyncio.new_event_loop()
        #: blocking name lookups, off the loop; shut down with it
        self.lookups = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="scanstream-notify-dns")
        self.session: aiohttp.ClientSession | None = None
        self.slots: asyncio.Semaphore | None = None
        self._stop_lock = threading.Lock()
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="scanstream-notify", daemon=True)
        self.thread.start()
        try:
            # aiohttp wants its session made on the loop that runs it
            self.submit(self._open(connections, policy, unchecked)).result(STARTUP_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.lookups.shutdown(wait=True, cancel_futures=True)
                self.loop.close()

    async def _open(self, connections: int, policy: AddressPolicy | None, unchecked: frozenset[str]) -> None:
        resolver = CheckingResolver(policy, self.lookups, unchecked)
        connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, resolver=resolver,
                                         ttl_dns_cache=DNS_CACHE_S, keepalive_timeout=KEEPALIVE_S)
        # No cookies (one robot's must not reach another), no proxies but the ones the notifier
        # passes per request (``trust_env`` would look them up on another thread per request),
        # bodies as sent: the request asks for no compression, and an inflated body could be
        # far larger than what is read of it.
        self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                             trust_env=False, auto_decompress=False)
        self.slots = asyncio.Semaphore(connections)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coro`` on the loop; ``RuntimeError`` once the client is stopping."""
        with self._stop_lock:
            if self._stopped:
                coro.close()  # never awaited: say nothing about it
                raise RuntimeError("the notifier's HTTP client is closed")
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, callback: Any) -> None:
        """Run ``callback()`` on the loop, unless the client has stopped."""
        with self._stop_lock:
            if not self._stopped:
                self.loop.call_soon_threadsafe(callback)

    async def _shutdown(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()  # waits until its connections are closed

    def stop(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Cancel what runs, close the session and its connections, end the thread: within
        ``timeout`` seconds (a name lookup under way may finish later, on its own thread)."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if threading.current_thread() is self.thread:
            # called on the loop itself (the notifier collected by one of its tasks): it cannot
            # wait for itself, so the loop stops once the shutdown is done
            self.loop.create_task(self._shutdown()).add_done_callback(lambda _: self.loop.stop())
            return
        end = time.monotonic() + timeout
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout)
        except Exception as exc:  # late or failed: the loop stops all the same
            log.warning("closing the alert notifier's connections: %s: %s", type(exc).__name__, exc)
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed
            pass
        self.thread.join(max(0.0, end - time.monotonic()))
        if self.thread.is_alive():
            log.warning("the alert notifier's thread did not end within %g s", timeout)


class WebhookNotifier:
    """Delivers alerts to chat robots / webhooks in the background, with retries and records.

    ``notify`` never blocks on the network and never raises; ``drain`` collects what has been
    delivered, has failed, or is ``pending`` (its deadline passed).  Every delivery scheduled
    gets exactly one record; ``abandon`` records those still under way as pending, ``close``
    does so too.  Usable as a context manager.

    ``max_workers`` is how many HTTP connections are open at once (over all webhooks).  The HTTP
    client starts with the first ``notify``.  Proxies come from the environment as usual
    (``http_proxy``, ``https_proxy``, ``no_proxy``: corporate egress), read when the notifier is
    made.  ``address_policy`` None sends anywhere http(s) reaches (a library default for
    receivers the caller controls); the engine always passes one
    (``scanstream.wiring.build_alerting``).
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
        self.max_workers = max_workers
        self.max_pending = max_pending
        self.address_policy = address_policy
        #: scheme -> proxy URL, from the environment
        self._proxies = {scheme: url for scheme, url in urllib.request.getproxies().items()
                         if scheme in ("http", "https") and url}
        self._client: _HttpClient | None = None  # started by the first ``notify``
        self._stop_client: weakref.finalize | None = None
        self._lock = threading.Lock()
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
            future: Future[None] | None = None
            with self._lock:
                refused = ("notifier is closed" if self._closing.is_set() else
                           f"dropped: {len(self._pending)} deliveries pending (max_pending {self.max_pending})"
                           if len(self._pending) >= self.max_pending else "")
                if not refused:
                    job = _Job(alert, route, deadline, left=alert)
                    try:
                        future = self._started().submit(self._deliver(job))
                    except Exception as exc:  # the client would not start, or is closed under us
                        refused = f"notifier cannot send: {type(exc).__name__}: {exc}"
                    else:
                        job.future = future
                        self._jobs.add(job)
                        self._pending.add(future)
            if future is not None:
                # outside the lock: a future already done calls ``_forget`` at once, in this thread
                future.add_done_callback(self._forget)
            if refused:
                log.warning("alert %s to %s not sent: %s", alert.get("alert_id"), redact_url(route.webhook), refused)
                self._record(alert, route.format, route.webhook, FAILED, 0, 0, refused)

    def expire(self, deadline: float) -> None:
        """No delivery, scheduled or to come, tries past ``deadline`` (``time.monotonic()``)."""
        with self._lock:
            self._cutoff = deadline if self._cutoff is None else min(self._cutoff, deadline)
            client = self._client
        if client is not None:
            client.call_soon(self._reschedule)  # what waits now waits until the new cutoff at most

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
        with self._lock:
            jobs = [j for j in self._jobs if not j.done]
            for job in jobs:
                job.done = True
                last = f"; last error: {job.last_error}" if job.last_error else ""
                if job.left is not None:  # the parts already sent keep their records
                    self._records.extend(delivery_records(job.left, job.route.format, job.route.webhook, PENDING,
                                                          job.attempts, job.http_status, reason + last))
                    job.left = None
            self._jobs.clear()
        for job in jobs:
            # outside the lock: cancelling calls ``_forget`` at once, in this thread; it cancels
            # the job's task on the loop (an attempt under way closes its connection)
            if job.future is not None:
                job.future.cancel()
        return len(jobs)

    def close(self) -> None:
        """Stop: refuse new alerts, record what was not delivered as ``pending`` (a ``drain``
        after ``close`` returns it), cancel the attempts under way, close the connections and
        end the client's thread, within ``CLOSE_TIMEOUT_S``.  Closing again does nothing."""
        self._closing.set()
        self.abandon("notifier closed before delivery ended")
        with self._lock:
            stop = self._stop_client
        if stop is not None:
            stop()  # runs the client's ``stop`` once, whoever calls first (this or the collector)

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bookkeeping (any thread)

    def _started(self) -> _HttpClient:
        """The HTTP client, started on first use (with ``self._lock`` held)."""
        if self._client is None:
            proxy_hosts = frozenset(h for h in (urllib.parse.urlsplit(p).hostname for p in self._proxies.values()) if h)
            client = _HttpClient(self.max_workers, self.address_policy, proxy_hosts)
            self._client = client
            # stops the client when the notifier is collected unclosed, or at interpreter exit
            self._stop_client = weakref.finalize(self, client.stop)
        return self._client

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _record(self, alert: Mapping[str, Any], fmt: str, url: str, status: str, attempts: int,
                http_status: int, error: str) -> None:
        records = delivery_records(alert, fmt, url, status, attempts, http_status, error)
        with self._lock:
            self._records.extend(records)

    def _finish(self, job: _Job, url: str, status: str, http_status: int, error: str) -> None:
        """The records of what ``job`` has not recorded yet, unless ``abandon`` made them already."""
        with self._lock:
            if job.done:
                return
            job.done = True
            self._jobs.discard(job)
            if job.left is not None:
                self._records.extend(delivery_records(job.left, job.route.format, url, status, job.attempts,
                                                      http_status, error))
                job.left = None

    def _record_part(self, job: _Job, part: Mapping[str, Any], url: str, status: str, http_status: int,
                     error: str) -> None:
        """The records of one part of a split digest (its items); they leave ``job.left``."""
        with self._lock:
            if job.done or job.left is None:
                return  # ``abandon`` recorded them already
            self._records.extend(delivery_records(part, job.route.format, url, status, job.attempts,
                                                  http_status, error))
            # by identity: a part's items are the digest's own objects (``format_messages``)
            sent = {id(item) for item in part.get("items") or ()}
            rest = [item for item in job.left.get("items") or () if id(item) not in sent]
            job.left = {**job.left, "items": rest} if rest else None

    def _until(self, job: _Job) -> float | None:
        """The instant (``time.monotonic()``, the loop's clock) of ``job``'s deadline or the
        cutoff, whichever comes first; None without either."""
        deadlines = [d for d in (job.deadline, self._cutoff) if d is not None]
        return min(deadlines) if deadlines else None

    def _left(self, job: _Job) -> float:
        """Seconds until ``job``'s deadline (or the cutoff), ``inf`` without one."""
        until = self._until(job)
        return math.inf if until is None else until - time.monotonic()

    def _delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds before retry number ``retry`` (1-based): doubling from ``backoff_s``, capped;
        a server's ``Retry-After`` wins when longer, under the same cap."""
        delay = self.backoff_s * (2 ** (retry - 1))
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff_s)

    def _proxy_for(self, url: str) -> str | None:
        """The proxy to reach ``url`` through (None: direct), as urllib would choose it."""
        parts = urllib.parse.urlsplit(url)
        proxy = self._proxies.get(parts.scheme)
        if not proxy or not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
            return None
        return proxy

    # -- on the client's loop

    def _reschedule(self) -> None:
        """Move the deadline timers of what waits now to the (earlier) cutoff ``expire`` set."""
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            timer = job.timer
            if timer is not None and not timer.expired():
                try:
                    timer.reschedule(self._until(job))
                except RuntimeError:  # it fired or was left meanwhile: nothing to move
                    pass

    async def _before_deadline(self, job: _Job, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
        """``(True, result)`` of ``awaitable``, or ``(False, None)`` when ``job``'s deadline (or
        the cutoff, moved by ``expire``) comes first and cancels it."""
        timer = asyncio.timeout_at(self._until(job))
        try:
            async with timer:
                job.timer = timer
                result = await awaitable
        except TimeoutError:
            if timer.expired():
                return False, None
            raise  # the awaitable's own timeout
        finally:
            job.timer = None
        return True, result

    async def _deliver(self, job: _Job) -> None:
        try:
            await self._deliver_job(job)
        except asyncio.CancelledError:
            # ``abandon`` and ``close`` record a job before they cancel it; should anything else
            # cancel it, it is recorded here, as not delivered yet
            last = f"; last error: {job.last_error}" if job.last_error else ""
            self._finish(job, job.route.webhook, PENDING, job.http_status, "delivery cancelled" + last)
            raise
        except Exception as exc:  # nothing may leave a job unrecorded
            log.exception("alert %s: delivery crashed", job.alert.get("alert_id"))
            self._finish(job, job.route.webhook, FAILED, job.http_status, f"{type(exc).__name__}: {exc}")

    async def _deliver_job(self, job: _Job) -> None:
        alert, route = job.alert, job.route
        fmt = route.format
        url = route.webhook
        if job.done:
            return  # abandoned before it started
        if self._left(job) <= 0:
            self._finish(job, url, PENDING, 0, "deadline passed before the first attempt")
            return
        try:
            # The route's manager (registry) wins over the alert's copy, which may be older.
            message = dict(alert)
            if route.manager:
                message["manager"] = route.manager
            if route.manager_id:
                message["manager_id"] = route.manager_id
            messages = format_messages(message, fmt)
            bodies = [orjson.dumps(m.body, option=orjson.OPT_SERIALIZE_NUMPY) for m in messages]
        except Exception as exc:  # a malformed alert is its own failure, no one else's
            self._finish(job, url, FAILED, 0, f"cannot format alert: {type(exc).__name__}: {exc}")
            return
        if self._proxies:  # ``proxy_bypass`` may look names up on some systems: not on the loop
            client = self._client
            assert client is not None
            job.proxy = await asyncio.get_running_loop().run_in_executor(client.lookups, self._proxy_for, url)
        for k, (part, body) in enumerate(zip(messages, bodies), start=1):
            job.attempts, job.http_status, job.last_error = 0, 0, ""
            status, result, url = await self._send(job, fmt, body)
            if status is None:
                return  # abandoned: ``abandon`` recorded what was left
            error = result.error
            of = f"part {k}/{len(messages)}: " if len(messages) > 1 else ""
            if status == PENDING:
                error = (f"deadline passed after {job.attempts} attempt(s); last error: {result.error}"
                         if job.attempts else "deadline passed before the first attempt (no free connection)")
                log.info("alert %s to %s pending: %s%s", alert.get("alert_id"), redact_url(url), of, error)
            elif status == FAILED:
                log.warning("alert %s to %s failed after %d attempt(s): %s%s",
                            alert.get("alert_id"), redact_url(url), job.attempts, of, error)
            last = k == len(messages)
            if last or (status == FAILED and not result.retry) or status == DELIVERED:
                # a part refused for good (its own content, most likely) does not hold back the next
                if last:
                    self._finish(job, url, status, result.http_status, of + error)
                else:
                    self._record_part(job, part.alert, url, status, result.http_status, of + error)
                continue
            # still failing after its retries, or out of time: the parts after it are not tried
            # and share its outcome (pending ones are sent again later)
            self._finish(job, url, status, result.http_status,
                         f"{of}{error}; parts {k + 1}..{len(messages)} not sent after it")
            return

    async def _send(self, job: _Job, fmt: str, body: bytes) -> tuple[str | None, _Attempt, str]:
        """Send one message with retries: its status (None: abandoned), last attempt and URL."""
        url = job.route.webhook
        result = _Attempt(False, False, error="not attempted")
        while True:
            outcome = await self._attempt_in_turn(job, fmt, body)
            if outcome is None:
                return PENDING, result, url  # the deadline came while waiting for a free connection
            result, url = outcome
            job.http_status, job.last_error = result.http_status, result.error
            if result.ok:
                return DELIVERED, result, url
            if not result.retry:
                return FAILED, result, url
            if self._left(job) <= 0:
                return PENDING, result, url
            if job.attempts > self.retries:
                return FAILED, result, url
            delay = self._delay(job.attempts, result.retry_after)
            if delay >= self._left(job):
                return PENDING, result, url  # the next retry would start after the deadline
            slept, _ = await self._before_deadline(job, asyncio.sleep(delay))
            if job.done:
                return None, result, url
            if not slept or self._left(job) <= 0:
                return PENDING, result, url
            if self._closing.is_set():
                result.error += "; notifier closed before the next retry"
                return FAILED, result, url

    async def _attempt_in_turn(self, job: _Job, fmt: str, body: bytes) -> tuple[_Attempt, str] | None:
        """One attempt, once a connection is free: its outcome and URL; None when the deadline
        comes first.  The request is signed when it goes out (signatures carry the time)."""
        client = self._client
        assert client is not None and client.slots is not None
        got, _ = await self._before_deadline(job, client.slots.acquire())
        if not got:
            return None
        if self._left(job) <= 0:  # the slot came at the deadline: no attempt starts after it
            client.slots.release()
            return None
        try:
            job.attempts += 1
            url, headers, signed = signed_request(job.route, fmt, body)
            timeout = min(self.timeout_s, max(self._left(job), MIN_ATTEMPT_TIMEOUT_S))
            finished, result = await self._before_deadline(
                job, self._attempt(url, headers, signed, fmt, timeout, job.proxy))
            if not finished or result is None:  # ``expire`` moved the deadline into the attempt
                result = _Attempt(False, True, error="timeout: the deadline passed during the attempt")
            return result, url
        finally:
            client.slots.release()

    async def _refusal(self, target: URL, proxy: str | None) -> str:
        """Why the address policy refuses ``target`` ('' when it may go out), for what the
        client's resolver does not see: an IP address in the URL (the connector does not look
        it up) and, through a proxy, the webhook's own name (the proxy resolves it, so it is
        checked when it resolves here; when it does not, the proxy decides)."""
        policy = self.address_policy
        host = target.raw_host or ""
        if policy is None or (proxy is None and not _is_address(host)):
            return ""  # a name reached directly: the resolver checks it on the way to the connection
        port = target.port or 0
        try:
            if proxy is None:
                policy.resolve(host, port)  # an address: answered without a lookup
            else:
                client = self._client
                assert client is not None
                await asyncio.get_running_loop().run_in_executor(client.lookups, policy.resolve, host, port)
        except WebhookRefused as exc:
            return str(exc)
        except OSError:
            if proxy is None:
                raise
        return ""

    async def _attempt(self, url: str, headers: dict[str, str], body: bytes, fmt: str, timeout: float,
                       proxy: str | None = None) -> _Attempt:
        """One HTTP POST and its outcome (``_classify``); never raises but on cancellation."""
        client = self._client
        assert client is not None and client.session is not None
        try:
            # as given: a signature in the query (DingTalk's ``sign``) must reach the robot byte
            # for byte, not re-quoted
            target = URL(url, encoded=True) if url.isascii() else URL(url)
            refused = await self._refusal(target, proxy)
            if refused:
                return _Attempt(False, False, error=f"refused: {refused}")
            limits = aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUTS * timeout, sock_connect=timeout, sock_read=timeout,
                                           ceil_threshold=math.inf)  # exact: a deadline is not rounded up
            # ``identity``: the reply is read as sent (robot codes are parsed from it)
            async with client.session.post(target, data=body, headers={**headers, "Accept-Encoding": "identity"},
                                           allow_redirects=False, proxy=proxy, timeout=limits) as reply:
                status = reply.status
                retry_after = _retry_after(reply.headers.get("Retry-After")) if not 200 <= status < 300 else None
                try:
                    payload = await _read_at_most(reply.content, MAX_REPLY_BYTES)
                except (aiohttp.ClientError, TimeoutError, OSError):
                    if 200 <= status < 300:
                        raise  # a success is one only when its body says nothing failed
                    payload = b""  # an error's body is a courtesy: the status says enough
                # leaving the block closes a connection whose body was not read to its end
        except WebhookRefused as exc:  # the resolver's verdict on the host's addresses
            return _Attempt(False, False, error=f"refused: {exc}")
        except aiohttp.ConnectionTimeoutError:
            return _Attempt(False, True, error=f"timeout: no connection within {timeout:g} s")
        except TimeoutError:  # no reply, or not all of it, in time
            return _Attempt(False, True, error=f"timeout: no reply within {timeout:g} s")
        except aiohttp.InvalidURL as exc:  # retrying won't help
            return _Attempt(False, False, error=f"bad request: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return _Attempt(False, True, error=f"connection error: {type(exc).__name__}: {exc}")
        except Exception as exc:  # e.g. ValueError for a URL that cannot be parsed
            return _Attempt(False, False, error=f"{type(exc).__name__}: {exc}")
        return _classify(fmt, status, payload, retry_after)


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
