"""The built-in dashboard's web server under hostile clients (issue 16: the standard library's
threading server gave each connection a thread and had a backlog of 5; a slow-client run left 654
threads).  No ClickHouse is attached: the panels answer 503, the page and its status answer."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from scanstream.dashboard.server import Dashboard

SLOW_CLIENTS = 300


@pytest.fixture
def dashboard():
    d = Dashboard(port=0).start()
    try:
        yield d
    finally:
        d.close()


def test_hundreds_of_slow_clients_cost_no_threads_and_the_page_still_answers(dashboard):
    threads_before = threading.active_count()
    slow = []
    try:
        for i in range(SLOW_CLIENTS):
            s = socket.create_connection(("127.0.0.1", dashboard.port), timeout=5)
            # half a request, never finished (slowloris), or a connection that says nothing
            if i % 2:
                s.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(s)
        t0 = time.monotonic()
        r = httpx.get(f"{dashboard.url}api/status", timeout=10)
        assert r.status_code == 200 and r.json()["ready"] is False
        assert time.monotonic() - t0 < 5
        # one event loop holds the connections: no thread per client
        assert threading.active_count() - threads_before < 10
    finally:
        for s in slow:
            s.close()


def test_answers_without_clickhouse_and_to_bad_requests(dashboard):
    base = dashboard.url
    assert httpx.get(base).status_code == 200 and "text/html" in httpx.get(base).headers["content-type"]
    head = httpx.head(base)
    assert head.status_code == 200 and head.content == b""
    r = httpx.get(f"{base}api/panel/overview")
    assert r.status_code == 503 and "waiting for the writer" in r.json()["error"]
    assert httpx.get(f"{base}api/panel/overview?tenant=x").status_code == 400
    assert httpx.get(f"{base}api/panel/no-such-panel").status_code == 404
    r = httpx.get(f"{base}static/../server.py")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert httpx.get(f"{base}no/such/page").json() == {"error": "no such page '/no/such/page'"}
    assert httpx.post(f"{base}api/status").status_code == 404  # read-only: no other method
    assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"


def test_a_busy_port_fails_when_the_dashboard_is_made(dashboard):
    with pytest.raises(OSError):
        Dashboard(port=dashboard.port)
