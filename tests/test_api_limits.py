"""The gateway's rate limits through real HTTP: token buckets in Redis, per client address and per
user_id, shared by two gateway processes' worth of servers (two gateways in threads, one Redis or
one Redis Cluster: every test runs on both, as ``test_api.services`` does).

The attacks first: a client that floods, a user who scans faster than a person can, the same user
spread over two gateways, a batch that would smuggle many scans of one user past the limit.  A
refused request is a 429 problem with Retry-After, publishes nothing and takes no token from
anyone else.
"""
from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from scanstream.engine.config import ConfigError, load
from test_api import Gateway, assert_problem, poll_path, post, services, winners  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


def limited(path, **limits):
    config = load(path)
    # a fresh key prefix per test: its buckets start full whatever an earlier test took
    return replace(config, api=replace(config.api, deadline_ms=1, **limits),
                   redis=replace(config.redis, prefix=f"{config.redis.prefix}{uuid.uuid4().hex[:6]}:"))


def bad_event(n: int, user: str = "wx-limits") -> dict:
    """An event the gateway refuses with 400 after the address's token was taken (no code)."""
    return {"scan_id": f"lim-{uuid.uuid4().hex[:8]}-{n}", "ts": 1795132800000, "user_id": user}


def event(n: int, user: str) -> dict:
    """A valid event (a forged code: the engine answers bad_mac; publishing it is harmless)."""
    return {**bad_event(n, user), "code": "2400E000CM00044JZQYY3T5X"}


def test_a_flooding_client_gets_429_with_retry_after_and_the_bucket_refills(services):
    _, path = services
    with Gateway(limited(path, ip_rate_per_s=0.5, ip_burst=5, user_rate_per_s=0)) as g:
        codes = [post(g.url, bad_event(i)).status_code for i in range(8)]
        # the burst passes (and is judged: 400, no code); then the address is refused
        assert codes[:5] == [400] * 5 and set(codes[5:]) == {429}
        r = post(g.url, bad_event(99))
        body = assert_problem(r, 429, "ip")
        # a token every 2 s: the wait left is at most that, rounded up, and at least a second (it
        # is less than 2 s when the burst's requests took a while on a loaded machine)
        assert "127.0.0.1" in body["detail"] and 1 <= int(r.headers["retry-after"]) <= math.ceil(1 / 0.5)
        # the health probes are not limited: an orchestrator keeps seeing the process alive
        assert httpx.get(f"{g.url}/healthz").status_code == 200
        time.sleep(2.2)  # a token every 2 s: one more request passes, the next does not
        assert [post(g.url, bad_event(i)).status_code for i in range(2)] == [400, 429]


def test_a_user_scanning_too_fast_is_refused_on_every_gateway_and_others_are_not(services):
    _, path = services
    config = limited(path, ip_rate_per_s=0, user_rate_per_s=0.01, user_burst=3)
    with Gateway(config) as a, Gateway(config) as b:  # two gateways, one Redis: one bucket per user
        statuses = [post(url, event(i, "wx-fast")).status_code for i, url in enumerate([a.url, b.url] * 2)]
        assert set(statuses[:3]) <= {200, 202} and statuses[3] == 429, statuses
        body = assert_problem(post(b.url, event(9, "wx-fast")), 429, "user_id")
        assert "0.01 scans a second" in body["detail"]
        # another user is not held back by wx-fast
        assert post(a.url, event(10, "wx-calm")).status_code in (200, 202)


def test_a_refused_batch_takes_no_token_and_one_user_cannot_fill_a_batch(services):
    _, path = services
    config = limited(path, ip_rate_per_s=0, user_rate_per_s=0.01, user_burst=2)
    with Gateway(config) as g:
        # three scans of one user in one batch could never pass: refused as a batch of the wrong shape
        assert_problem(post(g.url, [event(i, "wx-batch") for i in range(3)], "/v1/scans:batch"), 422, "user_id")
        assert post(g.url, [event(10, "wx-a"), event(11, "wx-b")], "/v1/scans:batch").status_code in (200, 202)
        assert post(g.url, [event(12, "wx-a")], "/v1/scans:batch").status_code in (200, 202)
        # wx-a is out of tokens: the batch is refused whole, and wx-b's token is not taken by it
        assert_problem(post(g.url, [event(13, "wx-b"), event(14, "wx-a")], "/v1/scans:batch"), 429, "user_id")
        assert post(g.url, event(15, "wx-b")).status_code in (200, 202)


def test_a_refused_batch_of_users_in_two_shards_gives_back_the_token_it_took(services):
    """On a Redis Cluster the buckets of two shards are taken one after the other: the second
    refusing gives the first its token back (on a single server one script takes none)."""
    from scanstream.streams.replies import reply_shards

    _, path = services
    users = [f"wx-shard-{i}" for i in range(40)]
    shards = reply_shards(users).tolist()
    first = users[0]
    second = next(u for u, s in zip(users, shards) if s != shards[0])
    config = limited(path, ip_rate_per_s=0, user_rate_per_s=0.01, user_burst=2)
    with Gateway(config) as g:
        assert post(g.url, [event(1, first), event(2, second)], "/v1/scans:batch").status_code in (200, 202)
        assert post(g.url, event(3, second)).status_code in (200, 202)  # second's bucket is empty now
        assert_problem(post(g.url, [event(4, first), event(5, second)], "/v1/scans:batch"), 429, "user_id")
        # first's token, taken before second's shard refused, was given back: one left, then none
        assert post(g.url, event(6, first)).status_code in (200, 202)
        assert_problem(post(g.url, event(7, first)), 429, "user_id")


def test_a_dead_redis_refuses_with_503_before_the_limit_is_asked(services):
    _, path = services
    config = limited(path, ip_rate_per_s=5.0)
    dead = replace(config, redis=replace(config.redis, url="redis://127.0.0.1:1/0"))
    with Gateway(dead) as g:
        body = assert_problem(post(g.url, event(1, "wx-1")), 503)
        assert set(body["failed"]) == {"redis"} and "nothing was published" in body["detail"]


@pytest.mark.parametrize("line, message", [
    ("ip_rate_per_s = nan", "ip_rate_per_s"), ("ip_rate_per_s = -1", "ip_rate_per_s"),
    ("user_burst = 0", "user_burst"), ("user_rate_per_s = true", "user_rate_per_s"),
    ("ip_burst = 1.5", "ip_burst"),
])
def test_hostile_limits_are_refused_naming_the_key(tmp_path, line, message):
    text = Path(__file__).resolve().parents[1].joinpath("config", "local.toml").read_text(encoding="utf-8")
    path = tmp_path / "scanstream.toml"
    path.write_text(text + f"\n[api]\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"api.{message}"):
        load(path)


def test_the_gateway_counts_its_answers_by_route_and_status_in_bounded_series(services):
    _, path = services
    with Gateway(limited(path, ip_rate_per_s=0.01, ip_burst=2, user_rate_per_s=0)) as g:
        for i in range(3):
            post(g.url, bad_event(i))  # 400, 400, then 429
        for i in range(5):  # random paths must not make series of their own
            httpx.get(f"{g.url}/no/such/{uuid.uuid4().hex}")
        text = httpx.get(f"{g.url}/metrics").text
    counts = {(route, status): float(n) for route, status, n in
              re.findall(r'scanstream_api_requests_total\{route="([^"]+)",status="(\w+)"\} (\S+)', text)}
    assert counts[("/v1/scans", "400")] == 2 and counts[("/v1/scans", "429")] == 1
    assert counts[("other", "404")] == 5 and not any("no/such" in r for r, _ in counts)
    assert 'scanstream_api_request_seconds_count{route="/v1/scans"} 3.0' in text


def test_an_overloaded_gateway_refuses_with_429_and_publishes_nothing_it_refused(services):
    """More POSTs at once than [api] max_in_flight: the excess is refused at once with 429 and
    Retry-After, and only the admitted scans are published (each gets its outcome; a refused
    scan_id never gets one), so a client that retries later is neither lost nor counted twice."""
    import concurrent.futures

    _, path = services
    config = load(path)
    config = replace(config, api=replace(config.api, deadline_ms=3000, max_in_flight=2, ip_rate_per_s=0,
                                         user_rate_per_s=0))
    sent = [event(i, f"wx-overload-{i}") for i in range(8)]
    with Gateway(config) as g, concurrent.futures.ThreadPoolExecutor(len(sent)) as pool:
        answers = list(pool.map(lambda e: post(g.url, e), sent))
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 202, 429} and statuses.count(429) >= 1, statuses
        admitted = [e for e, a in zip(sent, answers) if a.status_code != 429]
        assert 1 <= len(admitted) < len(sent)
        for e, a in zip(sent, answers):
            if a.status_code == 429:
                body = assert_problem(a, 429, "gateway")
                assert "max_in_flight" in body["detail"] and int(a.headers["retry-after"]) >= 1
        # every admitted scan has its outcome; no refused one was published
        for e in admitted:
            _poll_outcome(g.url, e)
        time.sleep(1.0)  # a refused scan published by mistake would be answered by now
        for e, a in zip(sent, answers):
            if a.status_code == 429:
                assert httpx.get(f"{g.url}{poll_path(e)}").status_code == 404, e["scan_id"]
        # capacity comes back once the admitted requests are answered
        assert post(g.url, event(99, "wx-overload-after")).status_code in (200, 202)


def _poll_outcome(url: str, event: dict, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}{poll_path(event)}")
        if r.status_code == 200:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"no outcome for {event['scan_id']} within {timeout_s} s")


async def _hold_loop(times: int, seconds: float = 0.12) -> None:
    """Hold the running event loop ``times`` times, as a burst of work holds it, letting the lag
    probe run between holds (its timer is overdue, so it runs on the next turns)."""
    import asyncio

    for _ in range(times):
        time.sleep(seconds)
        for _ in range(5):
            await asyncio.sleep(0)


def test_a_gateway_whose_event_loop_runs_late_refuses_new_posts_until_it_catches_up(services):
    """Requests waiting in sockets and in the loop's queue are not counted by max_in_flight: a loop
    that keeps running later than [api] max_lag_ms refuses new POSTs with 429 until it has caught
    up; one stall (a garbage collection) refuses nothing."""
    import asyncio

    from scanstream.api.app import LAG_PROBES, Gateway as App, Refused

    _, path = services
    config = load(path)
    config = replace(config, api=replace(config.api, max_lag_ms=50))

    async def main() -> None:
        gateway = App(config)
        probe = asyncio.create_task(gateway._probe_lag())
        await asyncio.sleep(0.1)
        await _hold_loop(1)  # one stall
        with gateway.admitted():
            assert gateway.lag_s <= 0.05
        await _hold_loop(LAG_PROBES)  # behind at every probe: a backlog
        assert gateway.lag_s > 0.05
        with pytest.raises(Refused) as refused:
            with gateway.admitted():
                pass
        assert refused.value.problem.status == 429 and refused.value.problem.field == "gateway"
        assert "max_lag_ms" in refused.value.problem.detail and refused.value.headers["Retry-After"] == "1"
        assert gateway.active == 0
        await asyncio.sleep(0.1)  # caught up: admitted again
        with gateway.admitted():
            assert gateway.active == 1
        probe.cancel()

    asyncio.run(main())


def test_a_bug_under_a_scan_post_answers_a_500_problem_and_is_counted(services):
    """The scan POSTs skip the router (``_Measured.direct``): an error nobody expected there must
    still reach the app's last handler, a problem body without the traceback, counted as 500."""
    _, path = services
    with Gateway(limited(path, ip_rate_per_s=0, user_rate_per_s=0)) as g:
        gateway = g.server.config.app.state.gateway

        async def broken(request):
            raise RuntimeError("a bug in the rate limiter")

        gateway.limit_client = broken
        r = post(g.url, event(1, "wx-bug"))
        body = assert_problem(r, 500, None)
        assert "rate limiter" not in r.text and "Traceback" not in r.text, body
        text = httpx.get(f"{g.url}/metrics").text
    assert 'scanstream_api_requests_total{route="/v1/scans",status="500"} 1.0' in text
