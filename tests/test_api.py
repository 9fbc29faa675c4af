"""The HTTP scan gateway through real HTTP: ``scanstream api`` against a real broker, Redis and worker.

One ``scanstream worker`` process (memory state, the demo world's registry) and one ``scanstream
api`` process serve the module; gateways that must fail (a dead broker, a dead Redis) or hurry
(a 1 ms deadline) run in threads of this process with their configuration changed.  Each test
starts with the attack or the failure, then checks what the scan API is told.
"""
from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest

from scanstream.engine.config import load
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.streams.broker import free_port
from scanstream.streams.synthetic import build_world, generate_scans
from scanstream.wiring import build_pipeline
from test_worker import LOCAL_TOML, SCANSTREAM, local_config, stop, worker_config

pytestmark = pytest.mark.skipif(SCANSTREAM is None, reason="the scanstream console script is not installed")
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"
WAIT_S = 30  # a service that has not started within this fails the test


def _until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = check()
            if got:
                return got
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def winners(tmp_path_factory):
    """The registry folder and consumer scans that win a prize as the first scan of their code."""
    base = tmp_path_factory.mktemp("api-world")
    config = load(LOCAL_TOML)
    world = build_world(7, config.keys.get(7, 1), 1)
    world.write_registry(base / "registry")
    lines = generate_scans(world, 3000, seed=5)
    scans = build_pipeline(local_config(base / "registry"), state=MemoryStateStore()).process(lines).scans
    found = []
    for i, line in enumerate(lines):
        if scans["verdict"][i] == "ok" and scans["prize_cents"][i] > 0 and scans["role"][i] == "consumer":
            found.append((orjson.loads(line), scans["prize_tier"][i], int(scans["prize_cents"][i])))
    assert len(found) >= 6, "the world needs a few winning scans"
    return base / "registry", found


@pytest.fixture(scope="module", params=["redis", "cluster"])
def services(request, winners, broker, tmp_path_factory):
    """(gateway base URL, configuration path): a worker and ``scanstream api`` on the real services,
    with their replies and rate limits on the single Redis, then on the Redis Cluster."""
    import redis

    cluster = request.param == "cluster"
    redis_url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    registry, _ = winners
    tmp = tmp_path_factory.mktemp("api")
    prefix = f"scanstream-test:{uuid.uuid4().hex[:12]}:"
    names = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in ("scans", "results", "awards", "alerts", "dlq", "group")}
    path = worker_config(tmp / "scanstream.toml", registry, tmp / "chdb", broker.bootstrap, names, prefix, "memory",
                         redis_url, cluster=cluster, take=64, within_ms=5)
    with path.open("a", encoding="utf-8") as f:
        # far more than a loaded CI machine needs; no rate limits (tests/test_api_limits.py has them)
        f.write("\n[api]\ndeadline_ms = 10000\nip_rate_per_s = 0\nuser_rate_per_s = 0\n")
    port = free_port()
    logs = [(tmp / "worker.log").open("wb"), (tmp / "api.log").open("wb")]
    worker = subprocess.Popen([SCANSTREAM, "--config", str(path), "worker"], stdout=logs[0], stderr=subprocess.STDOUT,
                              cwd=tmp)
    gateway = subprocess.Popen([SCANSTREAM, "--config", str(path), "api", "--port", str(port)], stdout=logs[1],
                               stderr=subprocess.STDOUT, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        # ready once the worker created the topic and Redis answers
        _until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "the gateway was not ready")
        yield url, path
    finally:
        gateway.terminate()
        gateway.wait(30)
        stop(worker)
        for f in logs:
            f.close()
        client = redis.RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
        for key in list(client.scan_iter(match=f"{prefix}*", count=1000)):
            client.delete(key)  # one by one: on a Cluster the keys are in many slots
        client.close()


@pytest.fixture
def winner(winners):
    """A winning scan nobody has sent yet, with its tier and cents."""
    return winners[1].pop()


def post(url: str, event, path: str = "/v1/scans", **kw) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=orjson.dumps(event), headers={"content-type": "application/json"},
                      timeout=30, **kw)


def poll_path(event: dict) -> str:
    """The poll address of ``event`` (the one a 202 for it gives), made by the client."""
    from scanstream.api.app import poll_address
    from scanstream.streams.publisher import encode_checked

    return poll_address(str(event["scan_id"]), encode_checked([event])[1][0])


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status, body
    assert "Traceback" not in r.text
    if field is not None:
        assert body["field"] == field, body
    return body


class Gateway:
    """A gateway in a thread of this process, on a changed configuration."""

    def __init__(self, config):
        from scanstream.api.app import serve

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = serve(config, "127.0.0.1", self.port, "warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        _until(lambda: self.server.started, WAIT_S, "the gateway thread did not start")
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(WAIT_S)


# --------------------------------------------------------------------------- money and codes


def test_a_resent_scan_id_with_other_content_is_a_conflict_never_the_first_answer(services, winner):
    url, _ = services
    event, tier, cents = winner
    first = post(url, event)
    assert first.status_code == 200, first.text
    assert first.json()["prize"] == {"tier": tier, "cents": cents}
    # the attack: someone else's scan_id, sent again as another user to take its answer and prize
    stolen = post(url, {**event, "user_id": "wx-attacker"})
    assert stolen.status_code == 200, stolen.text
    assert stolen.json()["verdict"] == "conflict" and stolen.json()["prize"] is None
    # and the same scan resent unchanged is the client's redelivery: its first answer, paid once
    again = post(url, event)
    assert again.status_code == 200, again.text
    assert again.json()["verdict"] == "ok" and again.json()["replay"] is True
    assert again.json()["prize"] == {"tier": tier, "cents": cents}


def test_a_scan_id_sent_twice_at_once_with_other_content_answers_each_its_own_outcome(services, winner):
    """The race: the victim's winning scan and an attacker's resend of its scan_id (another user)
    reach the gateway together, so both count no outcome before publishing.  Each is
    answered with the outcome of its own event: the attacker never reads "ok, prize"."""
    import concurrent.futures

    url, _ = services
    event, tier, cents = winner
    attack = {**event, "user_id": "wx-racer"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        victim, stolen = pool.map(lambda e: post(url, e), [event, attack])
    assert victim.status_code == 200 and stolen.status_code == 200, (victim.text, stolen.text)
    answers = [victim.json(), stolen.json()]
    # whichever the worker took first is the genuine scan and the other the conflict: one "ok"
    # with the prize, never two (each request answered with its own event's outcome)
    assert sorted(a["verdict"] for a in answers) == ["conflict", "ok"], answers
    for a in answers:
        assert a["prize"] == ({"tier": tier, "cents": cents} if a["verdict"] == "ok" else None), a


def test_a_forged_code_is_bad_mac_and_wins_nothing(services, winner):
    url, _ = services
    event, _, _ = winner
    code = event["code"]
    forged = {**event, "scan_id": f"forged-{uuid.uuid4().hex}", "code": code[:-1] + ("0" if code[-1] != "0" else "1")}
    r = post(url, forged)
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "bad_mac" and r.json()["prize"] is None


def test_a_second_scan_of_a_code_is_a_repeat_and_wins_nothing(services, winner):
    url, _ = services
    event, tier, cents = winner
    assert post(url, event).json()["prize"] == {"tier": tier, "cents": cents}
    r = post(url, {**event, "scan_id": f"again-{uuid.uuid4().hex}", "user_id": "wx-second"})
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "repeat" and r.json()["prize"] is None


def test_a_genuine_scan_answers_ok_with_its_prize(services, winner):
    url, _ = services
    event, tier, cents = winner
    r = post(url, event)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scan_id"] == event["scan_id"] and body["verdict"] == "ok" and body["replay"] is False
    assert body["prize"] == {"tier": tier, "cents": cents} and body["diversion"] in ("none", "region", "channel",
                                                                                    "region+channel")
    assert httpx.get(f"{url}{poll_path(event)}").json() == body  # and a poll reads the same


def test_a_batch_answers_each_scan_in_order_and_refuses_all_for_one_bad_scan(services, winners):
    url, _ = services
    events = [winners[1].pop()[0] for _ in range(2)]
    bad = post(url, [events[0], {k: v for k, v in events[1].items() if k != "code"}], "/v1/scans:batch")
    assert assert_problem(bad, 400, "code")["index"] == 1
    twice = post(url, [events[0], events[0]], "/v1/scans:batch")
    assert assert_problem(twice, 422, "scan_id")["index"] == 1
    r = post(url, events, "/v1/scans:batch")  # nothing of the refused batches was published: both are first scans
    assert r.status_code == 200, r.text
    assert [(x["scan_id"], x["verdict"], x["replay"]) for x in r.json()["results"]] == \
        [(e["scan_id"], "ok", False) for e in events]


def test_a_batch_smuggling_someone_elses_scan_id_gets_a_conflict_and_pays_nothing(services, winners):
    """The attack through the batch route: a victim's winning scan_id resent with the attacker's
    user_id, hidden among honest scans.  Its answer is the conflict of its own event, never the
    victim's prize; the honest scan beside it is judged as usual; the victim's own resend is a replay."""
    url, _ = services
    (victim, tier, cents), (honest, honest_tier, honest_cents) = winners[1].pop(), winners[1].pop()
    assert post(url, victim).json()["prize"] == {"tier": tier, "cents": cents}
    r = post(url, [{**victim, "user_id": "wx-smuggler"}, honest, victim], "/v1/scans:batch")
    assert assert_problem(r, 422, "scan_id")["index"] == 2  # one scan_id twice in one batch: refused whole
    r = post(url, [{**victim, "user_id": "wx-smuggler"}, honest], "/v1/scans:batch")
    assert r.status_code == 200, r.text
    stolen, fair = r.json()["results"]
    assert (stolen["scan_id"], stolen["verdict"], stolen["prize"]) == (victim["scan_id"], "conflict", None)
    assert (fair["verdict"], fair["prize"]) == ("ok", {"tier": honest_tier, "cents": honest_cents})
    again = post(url, [victim], "/v1/scans:batch").json()["results"][0]
    assert (again["verdict"], again["replay"], again["prize"]) == ("ok", True, {"tier": tier, "cents": cents})


def test_a_thief_polling_a_reused_scan_id_never_reads_the_owners_outcome(services, winner):
    """The attack through the poll: a forged code sent under a victim's scan_id, answered 202, then
    polled before the worker has judged it.  The poll used to return the scan_id's newest outcome,
    the victim's "ok" and prize, as the answer to the forged code.  A poll address now carries the
    key of the request's own event: it answers that event's outcome or 404, and a poll without a
    key (anyone trying scan_ids) is refused."""
    _, path = services
    event, tier, cents = winner
    config = load(path)
    url = services[0]
    assert post(url, event).json()["prize"] == {"tier": tier, "cents": cents}
    code = event["code"]
    forged = {**event, "user_id": "wx-poller", "code": code[:-1] + ("0" if code[-1] != "0" else "1")}
    with Gateway(replace(config, api=replace(config.api, deadline_ms=1))) as g:
        r = post(g.url, forged)
        assert r.status_code == 202, r.text
        poll = r.json()["poll"]
        first = _until(lambda: (p := httpx.get(f"{g.url}{poll}")).status_code != 404 and p, WAIT_S,
                       "the polled outcome did not come")
        assert first.status_code == 200, first.text
        assert (first.json()["verdict"], first.json()["prize"]) == ("conflict", None), first.json()
        # no key, a key of another request, a key that is not one: never the victim's outcome
        assert_problem(httpx.get(f"{g.url}/v1/scans/{event['scan_id']}"), 422, "key")
        own = poll.split("?key=")[1]
        other = httpx.get(f"{g.url}/v1/scans/{event['scan_id']}", params={"key": own[::-1]})
        assert_problem(other, 404, "scan_id")
        assert_problem(httpx.get(f"{g.url}/v1/scans/{event['scan_id']}", params={"key": "x" * 5000}), 422, "key")
        # the victim's own key still reads the victim's outcome
        mine = httpx.get(f"{g.url}{poll_path(event)}")
        assert mine.status_code == 200 and mine.json()["prize"] == {"tier": tier, "cents": cents}, mine.text


# --------------------------------------------------------------------------- bad requests


def test_malformed_json_is_a_400_problem(services):
    url, _ = services
    r = httpx.post(f"{url}/v1/scans", content=b'{"scan_id": "x", "ts": ', headers={"content-type": "application/json"})
    assert_problem(r, 400, "body")
    twice = b'{"scan_id": "x", "scan_id": "y", "ts": 1763604900000, "code": "C", "user_id": "u"}'
    assert_problem(httpx.post(f"{url}/v1/scans", content=twice), 400, "scan_id")


def test_a_missing_field_is_a_400_naming_it(services, winner):
    url, _ = services
    event = {k: v for k, v in winner[0].items() if k != "user_id"}
    body = assert_problem(post(url, event), 400, "user_id")
    assert "user_id" in body["detail"]
    assert_problem(post(url, {**winner[0], "role": "king"}), 400, "role")
    assert_problem(post(url, [winner[0]]), 400, "event")  # a list to the single-scan route


def test_an_oversized_body_is_a_413_and_unknown_routes_are_problems_too(services, winner):
    url, path = services
    limit = load(path).api.max_body_bytes
    r = post(url, {**winner[0], "device_id": "x" * limit})
    assert_problem(r, 413, "body")
    assert_problem(httpx.get(f"{url}/v2/nothing"), 404)
    never = {**winner[0], "scan_id": f"never-sent-{uuid.uuid4().hex}"}
    assert_problem(httpx.get(f"{url}{poll_path(never)}"), 404, "scan_id")


# --------------------------------------------------------------------------- deadline and outages


def test_a_passed_deadline_answers_202_and_the_poll_gets_the_outcome(services, winner):
    _, path = services
    event, tier, cents = winner
    config = load(path)
    with Gateway(replace(config, api=replace(config.api, deadline_ms=1))) as g:
        r = post(g.url, event)
        assert r.status_code == 202, r.text
        assert r.json() == {"scan_id": event["scan_id"], "poll": poll_path(event)}
        polled = _until(lambda: (p := httpx.get(f"{g.url}{r.json()['poll']}")).status_code == 200 and p, WAIT_S,
                        "the polled outcome did not come")
        assert polled.json()["verdict"] == "ok" and polled.json()["prize"] == {"tier": tier, "cents": cents}


def test_a_scan_id_in_any_script_passing_the_deadline_is_polled_at_its_encoded_address(services, winner):
    # found by tests/test_api_fuzz.py: a 202 for a scan_id outside Latin-1 was a 500 after the scan was
    # published (the Location header could not hold it); a slash or CR LF broke the poll address or the header
    _, path = services
    event, tier, cents = winner
    event = {**event, "scan_id": f"扫码/{uuid.uuid4().hex}?#\r\nX: y"}
    config = load(path)
    with Gateway(replace(config, api=replace(config.api, deadline_ms=1))) as g:
        r = post(g.url, event)
        assert r.status_code == 202, r.text
        poll = r.json()["poll"]
        assert r.json()["scan_id"] == event["scan_id"] and r.headers["location"] == poll and "x" not in r.headers
        assert poll.isascii() and poll.startswith("/v1/scans/") and poll.count("/") == 3
        polled = _until(lambda: (p := httpx.get(f"{g.url}{poll}")).status_code == 200 and p, WAIT_S,
                        "the polled outcome did not come")
        assert polled.json()["scan_id"] == event["scan_id"] and polled.json()["verdict"] == "ok"
        assert polled.json()["prize"] == {"tier": tier, "cents": cents}


def test_a_dead_broker_is_a_503_naming_it(services, winner):
    _, path = services
    config = load(path)
    dead = f"127.0.0.1:{free_port()}"
    with Gateway(replace(config, kafka=replace(config.kafka, bootstrap=dead),
                         api=replace(config.api, publish_timeout_ms=500))) as g:
        body = assert_problem(post(g.url, winner[0]), 503)
        assert set(body["failed"]) == {"broker"} and dead in body["detail"]
        assert set(assert_problem(httpx.get(f"{g.url}/readyz", timeout=10), 503)["failed"]) == {"broker"}
        assert httpx.get(f"{g.url}/healthz").status_code == 200  # alive, not ready


def test_a_dead_redis_is_a_503_naming_it_before_anything_is_published(services, winner):
    url, path = services
    config = load(path)
    with Gateway(replace(config, redis=replace(config.redis, url=f"redis://127.0.0.1:{free_port()}/0"))) as g:
        body = assert_problem(post(g.url, winner[0]), 503)
        assert set(body["failed"]) == {"redis"} and "nothing was published" in body["detail"]
        assert set(assert_problem(httpx.get(f"{g.url}/readyz", timeout=10), 503)["failed"]) == {"redis"}
    # nothing was published: the scan's first sending through a working gateway is its first scan
    assert post(url, winner[0]).json()["replay"] is False


# --------------------------------------------------------------------------- the contract


def test_problems_are_documented_under_the_media_type_they_are_sent_with(services):
    # FastAPI filed the Problem schema under application/json, never sent, and left the type sent,
    # application/problem+json, without one: no client or fuzzer could check an error body
    url, _ = services
    doc = httpx.get(f"{url}/openapi.json").json()
    problems = [(method, path, status, answer["content"]) for path, item in doc["paths"].items()
                for method, operation in item.items() for status, answer in operation["responses"].items()
                if int(status) >= 400]
    assert len(problems) >= 10
    for method, path, status, content in problems:
        assert content == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}, \
            (method, path, status)
    assert_problem(post(url, {}), 400, "scan_id")  # and that is what is sent


def design_event_fields() -> dict[str, bool]:
    """DESIGN.md's scan event table: field -> required (``lat, lon`` rows name two fields)."""
    section = DESIGN.read_text(encoding="utf-8").split("## Scan event", 1)[1].split("\n## ", 1)[0]
    fields = {}
    for names, required in re.findall(r"(?m)^\| ([a-z_, ]+) \| (yes|no) \|", section):
        for name in names.split(","):
            fields[name.strip()] = required == "yes"
    return fields


#: The JSON types DESIGN's meanings give each field (identifiers may be integers: the parse stage keeps them).
DESIGN_TYPES = {"scan_id": {"string", "integer"}, "ts": {"string", "integer"}, "code": {"string"},
                "user_id": {"string", "integer"}, "role": {"string"}, "store_id": {"string", "integer"},
                "channel": {"string", "integer"}, "region": {"string", "integer"}, "lat": {"number"},
                "lon": {"number"}, "ip": {"string", "integer"}, "device_id": {"string", "integer"}}


def _types(schema: dict) -> set[str]:
    options = schema.get("anyOf", [schema])
    return {o["type"] for o in options if "type" in o} - {"null"}


def test_the_openapi_event_schema_is_designs(services):
    url, _ = services
    doc = httpx.get(f"{url}/openapi.json").json()
    event = doc["paths"]["/v1/scans"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    batch = doc["paths"]["/v1/scans:batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["items"] == event
    design = design_event_fields()
    assert set(design) == set(DESIGN_TYPES), "DESIGN's event table changed: update DESIGN_TYPES"
    assert set(design) <= set(event["properties"])
    assert sorted(event["required"]) == sorted(f for f, req in design.items() if req)
    for field, types in DESIGN_TYPES.items():
        assert _types(event["properties"][field]) == types, field
    assert {"consumer", "store", "dealer"} <= set(event["properties"]["role"]["enum"])
    answers = doc["components"]["schemas"]
    assert {"tier", "cents"} <= set(answers["Prize"]["properties"])
    assert {"scan_id", "verdict", "prize", "diversion", "replay"} <= set(answers["ScanOutcome"]["required"])
    assert {"type", "title", "status", "detail", "field"} <= set(answers["Problem"]["properties"])
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "checks": None}
