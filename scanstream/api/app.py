"""The HTTP scan gateway: check a scan, publish it once, await its outcome, answer JSON.

FastAPI on uvicorn with uvloop and httptools, because the gateway spends its time waiting (on the
broker's acknowledgement and on Redis for the outcome), which an event loop does for thousands
of requests in one process, and FastAPI generates the OpenAPI document from the same pydantic
models that shape the answers, so the contract cannot drift from the code.

One ``POST /v1/scans``, in order:

0. hold one of the gateway's ``[api] max_in_flight`` places (429 with Retry-After at capacity:
   an overloaded gateway refuses at once, before reading or publishing anything);
1. take a token from the client address's bucket (``scanstream.api.limits``: 429 with
   Retry-After past ``[api] ip_rate_per_s``);
2. read the body, at most ``[api] max_body_bytes`` (413 beyond, the rest unread);
3. parse it (400 for JSON that is not, or a key written twice, naming it) and check it with
   the worker's own parse stage (``check_event``: 400 naming the field), then take a token per
   scan from its user_id's bucket (429 past ``[api] user_rate_per_s``; nothing published);
4. count the scan_id's outcomes in its reply hashes (``streams.replies``; 503 when Redis does not
   answer: nothing published);
5. publish through ``ScanPublisher`` and flush, so the broker has it (503 when it does not);
6. await the outcome pushed after that count that answers this event (the same code, user_id,
   role and ts: ``replies.ReplyWatcher``, woken by the worker's notice) until ``[api]
   deadline_ms`` after the request arrived: 200 with the outcome, else 202 with a poll address.

A scan is published once per request and never again by the gateway; a client that resends it
(after a 202, a 503 or a lost answer) sends the same scan_id, which the engine answers as a
redelivery (``replay``) or, with other content, as a ``conflict``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from scanstream.api.limits import RateLimits
from scanstream.api.metrics import METRICS_CONTENT_TYPE, GatewayMetrics
from scanstream.api.models import BatchAnswer, Health, Pending, Problem, ScanEvent, ScanOutcome, outcome
from scanstream.engine.config import Config
from scanstream.streams import replies
from scanstream.streams.publisher import InvalidEvent, PublishError, ScanPublisher, encode_checked, topic_partitions

log = logging.getLogger("scanstream.api")
PROBLEM = "application/problem+json"
#: How long a readiness probe waits for each service.
READY_TIMEOUT_S = 1.0
#: redis.asyncio client options: a dead server fails a request within a second, never hangs it.
REDIS_OPTIONS = {"socket_connect_timeout": 1.0, "socket_timeout": replies.WAIT_SLICE_S + 4.0}
#: Redis connections of one gateway.  Requests share round trips (``replies.RoundTrips``), so a few are
#: busy at once; past this many a command waits for one (at most ``REDIS_POOL_WAIT_S``) instead
#: of failing the request.
REDIS_CONNECTIONS = 32
REDIS_POOL_WAIT_S = 2.0
#: Retry-After of a request refused because the gateway is at capacity (``Gateway.admitted``).
OVERLOAD_RETRY_S = 1
#: How often the gateway measures its event loop's lag (``[api] max_lag_ms``).
LAG_PROBE_S = 0.01
#: Consecutive late probes before the loop counts as behind: one stall (a garbage collection, the
#: publisher's thread holding the GIL) refused a few requests in every second at 200 scans/s,
#: while a backlog makes every probe late.
LAG_PROBES = 3
_PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text, "content": {PROBLEM: {}}}
    for code, text in ((400, "the event is invalid or the body is not JSON; `field` names what"),
                       (413, "the body is larger than [api] max_body_bytes"),
                       (422, "the request's shape is wrong (a batch that is not a list, too long, a scan_id twice)"),
                       (429, "past the rate limit of the client address or of a user_id, or the gateway is at "
                             "capacity ([api] max_in_flight); Retry-After says when to ask again, and nothing was "
                             "published"),
                       (503, "the broker or Redis does not answer; resending the same scan_id is safe"))}


class Refused(Exception):
    """An answer other than success: becomes one problem-details body."""

    def __init__(self, status: int, title: str, detail: str, field: str | None = None, index: int | None = None,
                 failed: dict[str, str] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.headers = headers
        self.problem = Problem(type=f"https://scanstream.dev/problems/{title.lower().replace(' ', '-')}",
                               title=title, status=status, detail=detail, field=field, index=index, failed=failed)


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem.model_dump(exclude_none=True), status_code=problem.status, media_type=PROBLEM,
                        headers=headers)


def poll_address(scan_id: str, key: tuple) -> str:
    """Where a 202's outcome is polled: the scan_id percent-encoded, so that any scan_id (Chinese,
    a slash, CR LF) is one path segment and fits the Location header (Latin-1, one line), and the
    ``poll_key`` of the request's event (its ``outcome_key`` ``key``), so that the poll answers
    that event and nobody else's."""
    return f"/v1/scans/{quote(scan_id, safe='')}?key={replies.poll_key(scan_id, key)}"


class _AnyText(Convertor):
    """A path parameter of any text: the server decodes %2F and %0A before routing, and Starlette's
    ``:path`` stops at a line break, so a scan_id the parse stage takes could not be polled."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", _AnyText())


def _overloaded(why: str) -> Refused:
    """429 for a gateway at capacity (``Gateway.admitted``), with when to ask again."""
    return Refused(429, "Too many requests", f"{why}; ask again in {OVERLOAD_RETRY_S} s", field="gateway",
                   headers={"Retry-After": str(OVERLOAD_RETRY_S)})


def _unavailable(service: str, detail: str) -> Refused:
    return Refused(503, f"{service} unavailable", detail, failed={service: detail})


# -- reading a request -----------------------------------------------------------------------

async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to pass ``limit`` bytes (by Content-Length, else read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, "Request too large", f"the body has {int(declared)} bytes; at most {limit} "
                      f"([api] max_body_bytes)", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, "Request too large", f"the body passes {limit} bytes ([api] max_body_bytes)",
                          field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise Refused(400, "Invalid event", f"the key {key!r} is written twice in one object; the engine "
                          f"treats such an event as unusable", field=key)
        out[key] = value
    return out


def parse_json(body: bytes) -> Any:
    """The body as JSON; 400 when it is not (a key written twice counts: DESIGN "invalid_event")."""
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8
        raise Refused(400, "Malformed JSON", f"the body is not JSON: {exc}", field="body") from None


def _invalid(exc: InvalidEvent) -> Refused:
    where = f"scan {exc.index}: " if exc.index is not None else ""
    return Refused(400, "Invalid event", f"{where}{exc.field}: {exc.problem}", field=exc.field, index=exc.index)


# -- the gateway -----------------------------------------------------------------------------

class Gateway:
    """The services behind the routes: one publisher (made when the broker first answers) and Redis."""

    def __init__(self, config: Config):
        self.config = config
        self.api = config.api
        self._publisher: ScanPublisher | None = None
        # One publish-and-flush at a time (one sender task, ``_send_groups``): ``flush`` reports the
        # failures since the last flush, so two flushes at once could each be told of the other's
        # failure.  The requests that arrive while one is under way wait together and go in the
        # next (a group commit): a broker's acknowledgement is shared by every request of its
        # group, and so is a failure.
        self._waiting: list[tuple[Sequence[dict], asyncio.Future]] = []
        self._sender: asyncio.Task | None = None
        self.redis = None
        self.limits: RateLimits | None = None
        self.watcher: replies.ReplyWatcher | None = None
        self.active = 0  # POSTs being handled (``admitted``)
        self.lag_s = 0.0  # how late the event loop ran, at least, at each of its last probes (``_probe_lag``)
        self._lag_probe: asyncio.Task | None = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        cluster = self.config.redis.cluster
        if cluster:  # connections per node; a pipeline goes to each node its keys' slots are on
            self.redis = aioredis.RedisCluster.from_url(self.config.redis.url, max_connections=REDIS_CONNECTIONS,
                                                        **REDIS_OPTIONS)
        else:
            pool = aioredis.BlockingConnectionPool.from_url(self.config.redis.url, max_connections=REDIS_CONNECTIONS,
                                                            timeout=REDIS_POOL_WAIT_S, **REDIS_OPTIONS)
            self.redis = aioredis.Redis(connection_pool=pool)
        self.watcher = replies.ReplyWatcher(self.redis, self.config.redis.prefix,
                                              self.config.engine.replay_ttl_s)
        #: one round trip for the reads and rate limits of the requests of one turn of the loop
        self.trips = self.watcher.trips
        await self.watcher.start()
        a = self.api
        # a Cluster's pipeline cannot load a script a node lacks: its limits take a round trip each
        self.limits = RateLimits(self.redis, self.config.redis.prefix, a.ip_rate_per_s, a.ip_burst,
                                 a.user_rate_per_s, a.user_burst, run=None if cluster else self.trips.run,
                                 cluster=cluster)
        self._lag_probe = asyncio.create_task(self._probe_lag())

    async def _probe_lag(self) -> None:
        """Measure, every ``LAG_PROBE_S``, how much later than asked the loop woke this task; the
        lag is the least of the last ``LAG_PROBES`` measures (sustained, not one stall)."""
        loop = asyncio.get_running_loop()
        recent: deque[float] = deque(maxlen=LAG_PROBES)
        while True:
            asked = loop.time() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            recent.append(max(0.0, loop.time() - asked))
            self.lag_s = min(recent) if len(recent) == LAG_PROBES else 0.0

    # -- rate limits

    async def limit_client(self, request: Request) -> None:
        """429 when the client address is past ``[api] ip_rate_per_s`` (the peer's address: a proxy
        in front must be given a limit of its own or none)."""
        address = request.client.host if request.client else "unknown"
        await self._limit(self.limits.client(address), "ip", f"client {address}", self.api.ip_rate_per_s,
                          self.api.ip_burst, "requests")

    async def limit_users(self, events: Sequence[dict]) -> None:
        """429 when a scan's user_id is past ``[api] user_rate_per_s``; nothing is taken from any
        user then.  A batch with more scans of one user than ``user_burst`` could never pass: 422."""
        users = [str(e["user_id"]) for e in events]
        if self.api.user_rate_per_s:
            user, most = Counter(users).most_common(1)[0]
            if most > self.api.user_burst:
                raise Refused(422, "Invalid batch", f"{most} scans of user_id {user!r} in one batch; at most "
                              f"{self.api.user_burst} ([api] user_burst)", field="user_id")
        await self._limit(self.limits.users(users), "user_id", "a user_id", self.api.user_rate_per_s,
                          self.api.user_burst, "scans")

    async def _limit(self, check, field: str, who: str, rate: float, burst: int, unit: str) -> None:
        try:
            verdict = await check
        except Exception as exc:  # redis.RedisError, OSError: before anything was published
            raise self._redis_down(exc, published=False) from None
        if not verdict.allowed:
            raise Refused(429, "Too many requests", f"{who} is past {rate:g} {unit} a second (burst {burst}); ask "
                          f"again in {verdict.retry_after_s} s", field=field,
                          headers={"Retry-After": str(verdict.retry_after_s)})

    @contextmanager
    def admitted(self):
        """Hold one of the ``[api] max_in_flight`` places for a POST, or refuse it with 429.

        Past capacity a request is refused before its body is read and before anything is asked
        of Redis or the broker, which costs the gateway almost nothing: overload is answered at
        once, while the requests already admitted keep their deadlines.  Capacity is also passed
        when the event loop runs late (``lag_s`` above ``[api] max_lag_ms``): requests
        then wait unseen in sockets and the loop's queue, where ``max_in_flight`` cannot count them,
        and a request admitted then would answer past its deadline."""
        if self.active >= self.api.max_in_flight:
            raise _overloaded(f"the gateway is handling {self.active} requests, its most ([api] max_in_flight)")
        if self.api.max_lag_ms and self.lag_s * 1000 > self.api.max_lag_ms:
            raise _overloaded(f"the gateway runs {1000 * self.lag_s:.0f} ms behind, more than [api] max_lag_ms "
                              f"({self.api.max_lag_ms})")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    async def close(self) -> None:
        if self._lag_probe is not None:
            self._lag_probe.cancel()
        if self.watcher is not None:
            await self.watcher.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self._publisher is not None:
            await asyncio.to_thread(self._publisher.close, self.api.publish_timeout_ms / 1000)

    # -- broker

    def _make_publisher(self) -> ScanPublisher:
        if self._publisher is None:
            k = self.config.kafka
            self._publisher = ScanPublisher(k.bootstrap, k.scans_topic, linger_ms=k.linger_ms, keys=self.config.keys,
                                            max_block_ms=self.api.publish_timeout_ms)
        return self._publisher

    def _send(self, events: Sequence[dict]) -> None:
        """Publish ``events`` and wait until the broker acknowledged them (in a worker thread, called
        by the one sender task only)."""
        publisher = self._make_publisher()
        publisher.publish_many(events)
        publisher.flush(self.api.publish_timeout_ms / 1000)

    async def publish(self, events: Sequence[dict]) -> None:
        """Publish ``events`` with the other requests waiting now, and return once the broker has
        them all; 503 when it does not (then none of the group counts as published)."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((events, done))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_groups())
        try:
            await done
        except InvalidEvent:
            raise
        except Exception as exc:  # PublishError, KafkaError: the broker did not take them
            log.warning("publishing %d scans failed: %r", len(events), exc)
            raise _unavailable("broker", f"the broker at {self.config.kafka.bootstrap} did not acknowledge the "
                               f"scan within {self.api.publish_timeout_ms} ms ({type(exc).__name__}); "
                               f"resending the same scan_id is safe") from None

    async def _send_groups(self) -> None:
        linger = self.config.kafka.linger_ms / 1000
        while self._waiting:
            # the publisher's linger: requests of the next few ms join the group, so the broker gets
            # fuller envelopes and the worker fewer messages (its cost is per message, not per scan)
            if linger:
                await asyncio.sleep(linger)
            group, self._waiting = self._waiting, []
            try:
                await asyncio.to_thread(self._send, [e for events, _ in group for e in events])
            except Exception as exc:
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in group:
                    if not done.done():
                        done.set_result(None)

    # -- Redis

    def _redis_down(self, exc: Exception, published: bool) -> Refused:
        log.warning("Redis failed: %r", exc)
        then = ("the scan was published; resend the same scan_id or poll later" if published
                else "nothing was published")
        return _unavailable("redis", f"Redis does not answer ({type(exc).__name__}); {then}")

    async def seen(self, scan_ids: Sequence[str]) -> list[dict[int, int]]:
        """How many outcomes each scan_id has now, per reply hash (before publishing)."""
        prefix = self.config.redis.prefix
        now = time.time()
        epochs = replies.reply_epochs(now, now)
        try:
            lines = await replies.read_async(self.trips, prefix, self.watcher.replay_ttl_s, scan_ids,
                                             [epochs] * len(scan_ids))
        except Exception as exc:  # redis.RedisError, OSError
            raise self._redis_down(exc, published=False) from None
        return [replies.counts(held, epochs) for held in lines]

    async def publish_and_wait(self, events: Sequence[dict], keys: Sequence[tuple],
                               deadline: float) -> list[ScanOutcome | Pending]:
        """Publish ``events`` (their ``outcome_key``s ``keys``) and await each outcome until ``deadline``.

        The waits are registered before the publish, so the worker's notice cannot come first."""
        scan_ids = [str(e["scan_id"]) for e in events]
        seen = await self.seen(scan_ids)
        expected = [self.watcher.expect(s, n, k) for s, n, k in zip(scan_ids, seen, keys)]
        try:
            await self.publish(events)
        except BaseException:
            for e in expected:
                self.watcher.forget(e)
            raise
        return list(await asyncio.gather(*(self._wait(s, e, deadline) for s, e in zip(scan_ids, expected))))

    async def _wait(self, scan_id: str, expected: replies.Expected, deadline: float) -> ScanOutcome | Pending:
        try:
            reply = await self.watcher.wait(expected, deadline - time.monotonic())
        except Exception as exc:
            raise self._redis_down(exc, published=True) from None
        return Pending(scan_id=scan_id, poll=poll_address(scan_id, expected.key)) if reply is None else outcome(reply)

    async def latest(self, scan_id: str, key: str) -> ScanOutcome | None:
        """The newest outcome of ``scan_id`` that answers the event whose ``replies.poll_key`` is ``key``."""
        try:
            reply = await replies.latest_reply(self.trips, self.config.redis.prefix, self.watcher.replay_ttl_s,
                                               scan_id, self.config.redis.result_ttl_s, key)
        except Exception as exc:
            raise self._redis_down(exc, published=False) from None
        return None if reply is None else outcome(reply)

    # -- readiness

    async def ready(self) -> dict[str, str]:
        """Each service that does not answer within ``READY_TIMEOUT_S``, and why; {} when ready."""
        k = self.config.kafka

        async def broker() -> None:
            await asyncio.to_thread(topic_partitions, k.bootstrap, k.scans_topic, int(READY_TIMEOUT_S * 1000))

        async def redis() -> None:
            await asyncio.wait_for(self.redis.ping(), READY_TIMEOUT_S)

        failed = {}
        for name, result in zip(("broker", "redis"), await asyncio.gather(broker(), redis(), return_exceptions=True)):
            if isinstance(result, BaseException):
                failed[name] = (str(result) if isinstance(result, PublishError)
                                else f"{type(result).__name__}: {result}")[:300]
        return failed


# -- the application -------------------------------------------------------------------------

class _Measured:
    """Counts each answer by route and status and times it (``GatewayMetrics``), and sends the
    scan POSTs straight to their handlers.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs each
    request in a task group of its own and copies the response through a stream, which cost the
    gateway more CPU per request than its own work.  For the same reason the POST routes in
    ``direct`` skip the router: matching every route, FastAPI's per-request exit stack and its
    handler wrapper took a third of the gateway's CPU at 1 000 scans/s, while those handlers take
    the raw ``Request`` and need none of it.  They stay declared on the app (the same functions),
    which documents them in ``/openapi.json``; answers are the same either way (tests/test_api*)."""

    def __init__(self, app, metrics: GatewayMetrics, direct: dict[str, Callable] | None = None):
        self.app = app
        self.metrics = metrics
        self.direct = direct or {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sent(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        handler = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
        try:
            if handler is None:
                await self.app(scope, receive, sent)
                return
            request = Request(scope, receive)
            try:
                response = await handler(request)
            except Refused as exc:  # a bug is not caught here: the app's outer handler logs it, 500
                response = problem_response(exc.problem, exc.headers)
            await response(scope, receive, sent)
        finally:  # by route, never by the path asked for: unknown paths make no new series
            route = scope["path"] if handler is not None else getattr(scope.get("route"), "path", "")
            self.metrics.observe(route, status[0], time.perf_counter() - started)


def _event_body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _problems_as_sent(app: FastAPI) -> None:
    """Document problems under the media type they are sent with.

    FastAPI files an extra response's model under the route's own media type (application/json),
    so the document said every error body was application/json and left application/problem+json,
    the type actually sent, without a schema: a client validating by content type (or a fuzzer)
    had nothing to check a problem against.  The Problem schema moves to application/problem+json.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for item in generate()["paths"].values():
                for operation in item.values():
                    for answer in operation.get("responses", {}).values():
                        content = answer.get("content", {})
                        if PROBLEM in content and "application/json" in content:
                            content[PROBLEM] = content.pop("application/json")
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(config: Config) -> FastAPI:
    """The gateway's ASGI application for ``config``."""
    gateway = Gateway(config)
    api = config.api

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(title="scanstream scan gateway", version="1", lifespan=lifespan,
                  description="Publish QR-code scans to scanstream and get each one's verdict and prize back.")
    app.state.gateway = gateway
    metrics = GatewayMetrics()
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        """The gateway's Prometheus metrics (``scanstream.api.metrics``)."""
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)
    event_schema = ScanEvent.model_json_schema(ref_template="#/components/schemas/{model}")

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused):
        return problem_response(exc.problem, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        return problem_response(Refused(exc.status_code, title, str(exc.detail)).problem, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return problem_response(Refused(422, "Invalid request", str(first.get("msg", "invalid request")),
                                        field=field).problem)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):  # logged with its traceback here, never sent
        log.exception("internal error on %s %s", request.method, request.url.path)
        return problem_response(Refused(500, "Internal error", "the gateway failed; the error is in its log").problem)

    @app.post("/v1/scans", response_model=ScanOutcome, openapi_extra=_event_body(event_schema),
              responses={202: {"model": Pending, "description": "the deadline passed; poll for the outcome"},
                         **_PROBLEM_RESPONSES})
    async def post_scan(request: Request):
        """Publish one scan and answer its outcome, or 202 with a poll address when the deadline passes."""
        deadline = time.monotonic() + api.deadline_ms / 1000
        with gateway.admitted():
            return await _post_scan(request, deadline)

    async def _post_scan(request: Request, deadline: float):
        await gateway.limit_client(request)
        event = parse_json(await read_body(request, api.max_body_bytes))
        try:
            _, (key,) = encode_checked([event])
        except InvalidEvent as exc:
            raise _invalid(InvalidEvent(exc.field, exc.value, exc.problem)) from None
        await gateway.limit_users([event])
        (answer,) = await gateway.publish_and_wait([event], [key], deadline)
        return _answer(answer, isinstance(answer, Pending))

    @app.post("/v1/scans:batch", response_model=BatchAnswer,
              openapi_extra=_event_body({"type": "array", "items": event_schema, "minItems": 1,
                                         "maxItems": api.max_batch}),
              responses={202: {"model": BatchAnswer, "description": "some outcomes passed the deadline: poll them"},
                         **_PROBLEM_RESPONSES})
    async def post_batch(request: Request):
        """Publish a list of scans (all or none) and answer each outcome, in request order."""
        deadline = time.monotonic() + api.deadline_ms / 1000
        with gateway.admitted():
            return await _post_batch(request, deadline)

    async def _post_batch(request: Request, deadline: float):
        await gateway.limit_client(request)
        events = parse_json(await read_body(request, api.max_body_bytes))
        if not isinstance(events, list) or not events:
            raise Refused(422, "Invalid batch", "the body must be a non-empty JSON array of scan events", field="body")
        if len(events) > api.max_batch:
            raise Refused(422, "Invalid batch", f"{len(events)} scans; at most {api.max_batch} per batch "
                          f"([api] max_batch)", field="body")
        try:
            _, keys = encode_checked(events)
        except InvalidEvent as exc:
            raise _invalid(exc) from None
        scan_ids = [str(e["scan_id"]) for e in events]
        first: dict[str, int] = {}
        for i, sid in enumerate(scan_ids):
            if first.setdefault(sid, i) != i:
                raise Refused(422, "Invalid batch", f"scan {i} repeats the scan_id of scan {first[sid]}; send a "
                              f"resent scan on its own", field="scan_id", index=i)
        await gateway.limit_users(events)
        answers = await gateway.publish_and_wait(events, keys, deadline)
        pending = any(isinstance(a, Pending) for a in answers)
        return JSONResponse(BatchAnswer(results=list(answers)).model_dump(), status_code=202 if pending else 200)

    app.add_middleware(_Measured, metrics=metrics, direct={"/v1/scans": post_scan, "/v1/scans:batch": post_batch})

    @app.get("/v1/scans/{scan_id:any_text}", response_model=ScanOutcome,
             responses={404: {"model": Problem, "description": "no outcome (yet) for this scan_id and key",
                              "content": {PROBLEM: {}}}, 422: _PROBLEM_RESPONSES[422], 503: _PROBLEM_RESPONSES[503]})
    async def get_scan(scan_id: str, key: str | None = Query(None, description=(
            "the key of the poll address a 202 gave (its `poll` and `Location`): the outcome of that "
            "request's event, not the scan_id's newest"))):
        """The newest outcome of ``scan_id`` answering the event of the 202 that gave this address; 404
        while there is none (not yet processed, or expired)."""
        if key is None or len(key) != replies.POLL_KEY_HEX or key.strip("0123456789abcdef"):
            shown = "no key" if key is None else repr(key if len(key) <= 40 else key[:37] + "...")
            raise Refused(422, "Invalid poll", f"key: expected the {replies.POLL_KEY_HEX} hex digits of the poll "
                          f"address a 202 answer gave (its poll field and Location header), got "
                          f"{shown}; an outcome is only told to the request that sent its event",
                          field="key")
        answer = await gateway.latest(scan_id, key)
        if answer is None:
            raise Refused(404, "Not found", f"no outcome for scan_id {scan_id!r} and this key yet; outcomes are "
                          f"kept {config.redis.result_ttl_s} s ([redis] result_ttl_s)", field="scan_id")
        return answer

    @app.get("/healthz", response_model=Health)
    async def healthz():
        """The process is alive and serving (services are not asked: see /readyz)."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: _PROBLEM_RESPONSES[503]})
    async def readyz():
        """200 when the broker (the scans topic) and Redis answer; else 503 naming which did not."""
        failed = await gateway.ready()
        if failed:
            raise Refused(503, "Not ready", "not ready: " + "; ".join(f"{k}: {v}" for k, v in failed.items()),
                          failed=failed)
        return Health(status="ok", checks={"broker": "ok", "redis": "ok"})

    _problems_as_sent(app)
    return app


def _answer(answer: ScanOutcome | Pending, pending: bool) -> JSONResponse:
    if pending:
        return JSONResponse(answer.model_dump(), status_code=202, headers={"Location": answer.poll})
    return JSONResponse(answer.model_dump(), status_code=200)


def serve(config: Config, host: str | None = None, port: int | None = None, log_level: str = "info"):
    """A uvicorn server for ``config`` (uvloop, httptools), not yet started: ``.run()`` or ``await .serve()``."""
    import uvicorn

    app = create_app(config)
    server_config = uvicorn.Config(app, host=host or config.api.host, port=port or config.api.port, loop="uvloop",
                                   http="httptools", lifespan="on", log_level=log_level, access_log=False,
                                   timeout_keep_alive=5, server_header=False)
    return uvicorn.Server(server_config)
