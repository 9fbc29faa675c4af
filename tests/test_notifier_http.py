"""The notifier's HTTP client against hostile receivers: a local server on 127.0.0.1 (one asyncio
loop in one thread) that never answers, trickles, sends an endless body, redirects inward, or
answers slowly to many at once, and counts the connections it sees.  The address policy allows
loopback where the test needs the request to reach it, and refuses it where the point is that
nothing may connect.  Timings are asserted only as generous upper bounds: they prove "bounded"."""
from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from scanstream.sinks.alert_messages import Route
from scanstream.sinks.notifiers import CLOSE_TIMEOUT_S, MAX_REPLY_BYTES, WebhookNotifier
from scanstream.sinks.webhook_addresses import AddressPolicy

T0 = 1_798_761_600_000
#: Seconds beyond a bound that a busy machine (2 shared cores) may add.
MARGIN_S = 5.0
#: An endless body is cut off by the server after this much: past it, the client read it all.
ENDLESS_CAP_BYTES = 256 * 1024 * 1024
#: What the client may leave in flight (socket buffers on loopback, its own read buffer) beyond
#: ``MAX_REPLY_BYTES`` before it stops reading: far below ``ENDLESS_CAP_BYTES``.
IN_FLIGHT_BYTES = 32 * 1024 * 1024
LOOPBACK = AddressPolicy(allow_loopback=True)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment would swallow requests meant for 127.0.0.1.
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


class Hostile:
    """An HTTP/1.1 server on 127.0.0.1 that behaves as ``mode`` says:

    ``ok`` answers 200 ``{}`` (after ``delay_s``), keeping the connection alive; ``silent`` reads
    the request and never answers; ``trickle`` sends a 200's headers, then a byte every
    ``delay_s``; ``endless`` sends ``status`` and a body without end; ``redirect`` answers
    ``status`` with ``Location: location``.  Counts connections (open now, most at once, all)
    and requests; ``sent`` is the body bytes written, ``cut`` set once the client hung up on it.
    """

    def __init__(self, mode: str = "ok", *, status: int = 200, delay_s: float = 0.0, location: str = "") -> None:
        self.mode, self.status, self.delay_s, self.location = mode, status, delay_s, location
        self.lock = threading.Lock()
        self.open = self.max_open = self.accepted = self.requests = self.sent = 0
        self.cut = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "the hostile server did not start"
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        with self.lock:
            self.open += 1
            self.accepted += 1
            self.max_open = max(self.max_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                with self.lock:
                    self.requests += 1
                if not await self._answer(reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        finally:
            with self.lock:
                self.open -= 1  # before closing: the client may connect again once it sees the close
            writer.close()
            self.writers.discard(writer)
            self.tasks.discard(task)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be closed."""
        if self.mode == "silent":
            await reader.read()  # nothing, until the client hangs up
            return False
        if self.mode == "redirect":
            writer.write(f"HTTP/1.1 {self.status} Moved\r\nLocation: {self.location}\r\n"
                         f"Content-Length: 0\r\n\r\n".encode())
            await writer.drain()
            return True
        if self.mode == "trickle":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            while True:
                await writer.drain()
                await asyncio.sleep(self.delay_s)
                writer.write(b" ")
        if self.mode == "endless":
            writer.write(f"HTTP/1.1 {self.status} Whatever\r\nContent-Type: text/plain\r\n"
                         f"Connection: close\r\n\r\n".encode())  # a body that ends when the connection does
            chunk = b"x" * 65536
            try:
                while self.sent < ENDLESS_CAP_BYTES:
                    writer.write(chunk)
                    await writer.drain()
                    with self.lock:
                        self.sent += len(chunk)
            except ConnectionError:
                self.cut.set()
            return False
        await asyncio.sleep(self.delay_s)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        return True

    def close(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()  # the handlers see the connection end, and end
            tasks = list(self.tasks)
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def hostile() -> Iterator[list[Hostile]]:
    """Start servers with ``Hostile(...)`` and append them: they are stopped after the test."""
    servers: list[Hostile] = []
    yield servers
    for server in servers:
        server.close()


def serve(servers: list[Hostile], *args: Any, **kwargs: Any) -> Hostile:
    server = Hostile(*args, **kwargs)
    servers.append(server)
    return server


def alert(alert_id: str = "a-1") -> dict[str, Any]:
    return {"alert_id": alert_id, "ts": T0, "tenant": 7, "alert": "diversion", "subtype": "region",
            "dealer_id": "D1", "manager": "m", "city": "4401", "code": "", "window_start": T0,
            "window_end": T0 + 600_000, "count": 2, "detail": "{}"}


def deliver(notifier: WebhookNotifier, url: str, *, deadline: float | None = None,
            fmt: str | None = None) -> tuple[dict[str, Any], float]:
    """Send one alert to ``url``: its record and the seconds until it came."""
    started = time.monotonic()
    notifier.notify([alert()], {"D1": Route(url, fmt=fmt)}, deadline=deadline)
    (record,) = notifier.drain(timeout=60)
    return record, time.monotonic() - started


def wait_for(condition: Any, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


# --------------------------------------------------------------------------- (a) never answers


def test_a_server_that_never_answers_fails_on_the_read_timeout(hostile: list[Hostile]) -> None:
    server = serve(hostile, "silent")
    with WebhookNotifier(timeout_s=1.0, retries=0, address_policy=LOOPBACK) as n:
        record, elapsed = deliver(n, server.url)
    assert record["status"] == "failed" and record["attempts"] == 1 and record["http_status"] == 0
    assert record["error"] == "timeout: no reply within 1 s"
    assert elapsed < 1.0 + MARGIN_S
    assert server.requests == 1  # it did get the request: the timeout is the reply's


def test_a_server_that_never_answers_leaves_the_delivery_pending_at_its_deadline(hostile: list[Hostile]) -> None:
    server = serve(hostile, "silent")
    with WebhookNotifier(timeout_s=30.0, retries=5, backoff_s=0.05, address_policy=LOOPBACK) as n:
        record, elapsed = deliver(n, server.url, deadline=time.monotonic() + 1.0)
    assert record["status"] == "pending" and record["attempts"] == 1
    assert "deadline passed after 1 attempt(s)" in record["error"] and "timeout" in record["error"]
    assert elapsed < 1.0 + MARGIN_S  # the attempt's 30 s timeout was cut to the deadline


def test_a_reply_trickled_a_byte_at_a_time_is_cut_by_the_attempt_bound(hostile: list[Hostile]) -> None:
    server = serve(hostile, "trickle", delay_s=0.2)  # each read comes well within the read timeout
    with WebhookNotifier(timeout_s=1.0, retries=0, address_policy=LOOPBACK) as n:
        record, elapsed = deliver(n, server.url)
    assert record["status"] == "failed" and record["attempts"] == 1
    assert "timeout" in record["error"]
    assert elapsed < 2 * 1.0 + MARGIN_S  # ATTEMPT_TIMEOUTS x timeout_s, not 100 000 x 0.2 s


# --------------------------------------------------------------------------- (b) endless body


@pytest.mark.parametrize("status, outcome", [(404, "failed"), (200, "delivered")])
def test_an_endless_body_is_read_up_to_max_reply_bytes_only(hostile: list[Hostile], status: int,
                                                            outcome: str) -> None:
    server = serve(hostile, "endless", status=status)
    with WebhookNotifier(timeout_s=30.0, retries=0, address_policy=LOOPBACK) as n:
        record, elapsed = deliver(n, server.url)
    assert record["status"] == outcome and record["http_status"] == status and record["attempts"] == 1
    if status == 404:
        assert record["error"].startswith("HTTP 404: xxxx") and len(record["error"]) < 300
    assert elapsed < 30.0  # the client stopped reading: no read timeout had to end it
    assert server.cut.wait(MARGIN_S), "the client did not hang up on the endless body"
    assert MAX_REPLY_BYTES <= server.sent < IN_FLIGHT_BYTES, server.sent


# --------------------------------------------------------------------------- (c) redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_an_internal_address_is_not_followed(hostile: list[Hostile], status: int) -> None:
    internal = serve(hostile, "ok")  # reachable under this policy: following would reach it
    server = serve(hostile, "redirect", status=status, location=internal.url.replace("/hook", "/admin"))
    with WebhookNotifier(timeout_s=5.0, retries=3, backoff_s=0.01, address_policy=LOOPBACK) as n:
        record, _ = deliver(n, server.url)
    assert record["status"] == "failed" and record["attempts"] == 1 and record["http_status"] == status
    assert record["error"] == f"HTTP {status}"
    assert server.requests == 1 and internal.accepted == 0


# --------------------------------------------------------------------------- (d) addresses


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names answered from the returned dict (fill it in); the rest from the system."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host in answers:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (a, int(port), 0, 0) if ":" in a else (a, int(port))) for a in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize("addresses, why", [
    (["127.0.0.1"], "hooks.evil.test resolves to 127.0.0.1 is a loopback address"),
    (["93.184.216.34", "10.0.0.7"], "hooks.evil.test resolves to 10.0.0.7 is a private address"),
    (["::ffff:169.254.169.254"], "hooks.evil.test resolves to 169.254.169.254 is a link-local address"),
])
def test_a_name_resolving_to_a_forbidden_address_is_refused_before_connecting(
        hostile: list[Hostile], fake_dns: dict[str, list[str]], addresses: list[str], why: str) -> None:
    server = serve(hostile, "ok")
    fake_dns["hooks.evil.test"] = addresses
    with WebhookNotifier(timeout_s=5.0, retries=3, backoff_s=0.01, address_policy=AddressPolicy()) as n:
        record, _ = deliver(n, f"http://hooks.evil.test:{server.port}/hook")
    assert record["status"] == "failed" and record["attempts"] == 1 and record["http_status"] == 0
    assert record["error"].startswith("refused: " + why), record["error"]
    assert server.accepted == 0


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]"])
def test_loopback_by_name_or_by_address_is_refused_without_a_connection(hostile: list[Hostile], host: str) -> None:
    server = serve(hostile, "ok")  # the connector skips its resolver for an address: checked all the same
    with WebhookNotifier(timeout_s=5.0, retries=3, backoff_s=0.01, address_policy=AddressPolicy()) as n:
        record, _ = deliver(n, f"http://{host}:{server.port}/hook")
    assert record["status"] == "failed" and record["attempts"] == 1
    assert record["error"].startswith("refused: ") and "loopback" in record["error"]
    assert server.accepted == 0


# --------------------------------------------------------------------------- (e) bounded concurrency


def test_many_alerts_to_a_slow_server_never_open_more_than_max_workers_connections(hostile: list[Hostile]) -> None:
    limit = 3
    server = serve(hostile, "ok", delay_s=0.1)
    alerts = [alert(f"a-{i:02d}") for i in range(50)]
    with WebhookNotifier(timeout_s=10.0, retries=0, max_workers=limit, address_policy=LOOPBACK) as n:
        n.notify(alerts, {"D1": Route(server.url)})
        records = n.drain(timeout=60)
    assert sorted(r["alert_id"] for r in records) == [a["alert_id"] for a in alerts]
    assert {r["status"] for r in records} == {"delivered"}
    assert server.requests == 50
    assert server.max_open <= limit, server.max_open
    assert server.accepted <= 2 * limit, server.accepted  # kept alive and used again, not one per alert


def test_deliveries_waiting_for_a_connection_stop_at_their_deadline(hostile: list[Hostile]) -> None:
    server = serve(hostile, "silent")
    with WebhookNotifier(timeout_s=30.0, retries=5, max_workers=1, address_policy=LOOPBACK) as n:
        started = time.monotonic()
        n.notify([alert(f"a-{i}") for i in range(5)], {"D1": Route(server.url)}, deadline=started + 1.0)
        records = n.drain(timeout=60)
        elapsed = time.monotonic() - started
    assert len(records) == 5 and {r["status"] for r in records} == {"pending"}
    assert sorted(r["attempts"] for r in records) == [0, 0, 0, 0, 1]  # one connection: one attempt
    waited = [r for r in records if r["attempts"] == 0]
    assert all("deadline passed before the first attempt" in r["error"] for r in waited)
    assert elapsed < 1.0 + MARGIN_S and server.max_open == 1


def test_expire_cuts_a_retry_wait_short(hostile: list[Hostile]) -> None:
    server = serve(hostile, "endless", status=503)  # retried, after a long backoff
    with WebhookNotifier(timeout_s=5.0, retries=3, backoff_s=20.0, address_policy=LOOPBACK) as n:
        n.notify([alert()], {"D1": Route(server.url)})
        assert wait_for(lambda: server.requests == 1, MARGIN_S)
        time.sleep(0.2)  # into the 20 s backoff
        started = time.monotonic()
        n.expire(started + 0.3)
        (record,) = n.drain(timeout=60)
        elapsed = time.monotonic() - started
    assert record["status"] == "pending" and record["attempts"] == 1 and record["http_status"] == 503
    assert elapsed < 0.3 + MARGIN_S  # not the 20 s backoff
    assert server.requests == 1


# --------------------------------------------------------------------------- lifecycle


def test_close_ends_hanging_attempts_within_its_bound(hostile: list[Hostile]) -> None:
    server = serve(hostile, "silent")
    before = threading.active_count()
    n = WebhookNotifier(timeout_s=60.0, retries=0, max_workers=4, address_policy=LOOPBACK)
    n.notify([alert(f"a-{i}") for i in range(8)], {"D1": Route(server.url)})
    assert wait_for(lambda: server.requests == 4, MARGIN_S)
    started = time.monotonic()
    n.close()
    assert time.monotonic() - started < CLOSE_TIMEOUT_S + 1.0
    records = n.drain(timeout=1)
    assert len(records) == 8 and {r["status"] for r in records} == {"pending"}
    assert all("notifier closed" in r["error"] for r in records)
    assert threading.active_count() == before
    assert wait_for(lambda: server.open == 0, MARGIN_S)  # the hanging connections were closed
    n.close()  # again: nothing to do


def test_notifiers_made_and_closed_many_times_leave_no_threads_or_sockets(hostile: list[Hostile]) -> None:
    server = serve(hostile, "ok")
    # by name: the lookups' threads are made, and must go, too
    url = f"http://localhost:{server.port}/hook"
    gc.collect()
    before = threading.active_count()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(20):
            n = WebhookNotifier(timeout_s=5.0, retries=1, backoff_s=0.01, address_policy=LOOPBACK)
            record, _ = deliver(n, url)
            assert record["status"] == "delivered", record
            n.close()
            del n
        # and one dropped without ``close``: collected, it stops its client all the same
        dropped = WebhookNotifier(timeout_s=5.0, retries=1, backoff_s=0.01, address_policy=LOOPBACK)
        assert deliver(dropped, url)[0]["status"] == "delivered"
        del dropped
        gc.collect()
        assert wait_for(lambda: threading.active_count() == before, MARGIN_S), threading.enumerate()
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
    assert wait_for(lambda: server.open == 0, MARGIN_S)
    assert server.requests == 21


# --------------------------------------------------------------------------- proxies


def test_a_proxy_from_the_environment_carries_what_resolves_only_there(hostile: list[Hostile],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = serve(hostile, "ok")  # answers 200 to whatever it is asked to forward
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("no_proxy", "")
    # the name does not resolve here: the proxy resolves it, so the policy cannot judge it
    with WebhookNotifier(timeout_s=5.0, retries=0, address_policy=AddressPolicy()) as n:
        record, _ = deliver(n, "http://hooks.only-the-proxy-knows.invalid/hook")
    assert record["status"] == "delivered", record
    assert proxy.requests == 1


def test_through_a_proxy_a_name_resolving_to_a_forbidden_address_is_still_refused(
        hostile: list[Hostile], monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = serve(hostile, "ok")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("no_proxy", "")
    with WebhookNotifier(timeout_s=5.0, retries=0, address_policy=AddressPolicy()) as n:
        record, _ = deliver(n, "http://localhost:8080/hook")
    assert record["status"] == "failed" and record["error"].startswith("refused: localhost resolves to")
    assert proxy.accepted == 0
