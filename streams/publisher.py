"""The scan API's side of the ``scans`` topic: check each scan, key it by its code, send envelopes.

How a scan travels, and why per-code order holds:

1. ``publish`` checks the event against the scan event schema of DESIGN.md, with the rules the
   worker's parse stage applies (``ext.scanparse``), and raises ``InvalidEvent`` naming the
   field and the bad value: a scan is never dropped or altered silently.  It serialises the
   event once, as the JSON line the worker will read.
2. The message key is the code's identity ``tenant:batch:serial``, decoded with
   ``ext.codec`` (no signing key needed: the fields are in clear).  Every spelling of one code
   (bare, lower case, with dashes, inside a QR URL, even with a mistyped MAC) gets the same
   key; a code that does not decode is keyed by its normalised text.
3. The partition is ``murmur2(key) & 0x7fffffff % partitions``, exactly what kafka-python's
   ``DefaultPartitioner`` (and the Java client's) picks for that key, so every scan of a code
   lands on one partition, whichever path or producer sent it.
4. The scan waits in its partition's buffer, in publish order, until ``linger_ms`` has passed
   since the buffer's first scan or the next scan would make the envelope larger than
   ``max_envelope_bytes``; then the buffer is sealed as one envelope (``streams.envelope``:
   JSON lines, header ``content-type: application/x-ndjson``) holding scans of that
   partition only.
5. One sender thread hands sealed envelopes to the producer in the order they were sealed.
   The producer waits for all in-sync replicas (``acks="all"``), retries, and keeps one
   request in flight per connection, so a retried envelope is never overtaken by the next.

``publish_single`` is the slow path, one message per scan (``application/json``, keyed), kept
for comparison and for callers that need it; it goes through the same sender, behind the
sealed envelopes of its partition, so mixing both paths keeps per-code order too.

Delivery failures (the broker did not take an envelope after all retries) are counted and
raised as ``PublishError`` by ``flush`` and ``close``: call one of them before you tell anyone
that a scan was accepted for good.

Why one file of this length: the checks, the key, the envelope and the send loop are one
promise to the scan API (a scan is sent once, in its code's order, or refused with a reason),
read top to bottom.
"""
from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from scanstream.engine.config import EngineSettings
from scanstream.engine.keys import KeyTable
from scanstream.engine.verdicts import Verdict
from scanstream.ext.codec import murmur2, verify, verify_batch
from scanstream.ext.scanparse import MAX_EVENT_BYTES, parse_events
from scanstream.streams import envelope, replies

#: Headers of the two message kinds (``streams.envelope``).
ENVELOPE_HEADERS = [(envelope.CONTENT_TYPE, envelope.ENVELOPE.encode("ascii"))]
SINGLE_HEADERS = [(envelope.CONTENT_TYPE, envelope.SINGLE.encode("ascii"))]
#: Sealed messages waiting for the sender before ``publish`` blocks (backpressure).
MAX_PENDING_MESSAGES = 10_000
#: ``publish_many`` appends this many scans per lock hold, so the sender is never starved.
APPEND_CHUNK = 2_000
_NO_KEYS = KeyTable()


class InvalidEvent(ValueError):
    """A scan event that breaks the schema; ``field`` and ``value`` say where and what."""

    def __init__(self, field: str, value: Any, problem: str, index: int | None = None):
        self.field = field
        self.value = value
        self.problem = problem
        self.index = index
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        where = f"event {index}: " if index is not None else ""
        super().__init__(f"{where}field {field!r}: {problem} (got {shown})")

    def at(self, index: int) -> InvalidEvent:
        return InvalidEvent(self.field, self.value, self.problem, index)


class PublishError(RuntimeError):
    """Scans the broker did not take, or a publisher that cannot publish (no topic, closed, full)."""


# -- the scan event schema: the worker's own parse stage decides --------------------------------

_FIELD = re.compile(r"missing required field '(\w+)'|^(\w+)")


def _problem(event: dict, reason: str) -> InvalidEvent:
    """An InvalidEvent from the parse stage's reason; the first problem names the field."""
    first = reason.split("; ", 1)[0]
    m = _FIELD.search(first)
    field = (m.group(1) or m.group(2)) if m else "event"
    return InvalidEvent(field, event.get(field) if field in event else None, first)


def _serialise(event: Any) -> bytes:
    if type(event) is not dict:
        raise InvalidEvent("event", event, f"a scan event must be a dict (a JSON object), not {type(event).__name__}")
    for field in ("lat", "lon"):  # JSON has no NaN: orjson would send it as null, i.e. absent
        value = event.get(field)
        if type(value) is float and not math.isfinite(value):
            raise InvalidEvent(field, value, "must be a finite number")
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError:
        for name, value in event.items():
            if type(name) is not str:
                raise InvalidEvent("event", name, "field names must be strings") from None
            try:
                orjson.dumps(value)
            except orjson.JSONEncodeError as exc:
                raise InvalidEvent(name, value, f"is not JSON serialisable ({exc})") from None
        raise


def encode_events(events: Sequence[Any]) -> list[bytes]:
    """The events as JSON lines, checked by the worker's own parse stage (``ext.scanparse``).

    Raises ``InvalidEvent`` (with the event's index) for the first event the worker would
    judge ``invalid_event``: the publisher and the worker cannot disagree on the schema.
    """
    return encode_checked(events)[0]


def encode_checked(events: Sequence[Any]) -> tuple[list[bytes], list[tuple]]:
    """``encode_events`` and each event's ``replies.outcome_key`` (the code, user_id, role and
    ts its outcome will carry), from the one parse."""
    lines = []
    for i, event in enumerate(events):
        try:
            lines.append(_serialise(event))
        except InvalidEvent as exc:
            raise exc.at(i) from None
    cols = parse_events(lines)
    reasons = cols["reason"]
    bad = np.nonzero(reasons != "")[0]
    if len(bad):
        i = int(bad[0])
        raise _problem(events[i], reasons[i]).at(i)
    return lines, list(zip(cols["code"].tolist(), cols["user_id"].tolist(), cols["role"].tolist(),
                           cols["ts"].astype(np.int64).tolist()))


def encode_event(event: Any) -> bytes:
    """One checked event as a JSON line (no newline): what the worker reads."""
    line = _serialise(event)
    reason = parse_events([line])["reason"][0]
    if reason:
        raise _problem(event, reason)
    return line


def check_event(event: Any) -> None:
    """Raise ``InvalidEvent`` when the worker would judge ``event`` ``invalid_event``."""
    encode_event(event)


# -- keys and partitions ---------------------------------------------------------------------

def normalise_code(text: str) -> str:
    """A code's text as the decoder reads it: trimmed, last URL path segment, no dashes, upper case."""
    text = text.strip(" \t\r\n")
    for stop in "?#":
        text = text.split(stop, 1)[0]
    return text.rstrip("/").rsplit("/", 1)[-1].replace("-", "").upper()


def _key(verdict: int, tenant: int, batch: int, serial: int, code: str) -> bytes:
    if verdict == Verdict.MALFORMED:
        return normalise_code(code).encode("utf-8", "surrogatepass")
    return f"{tenant}:{batch}:{serial}".encode("ascii")


def code_key(code: str, keys: KeyTable | None = None) -> bytes:
    """The message key of a scan of ``code``: ``b"tenant:batch:serial"``, or its normalised text."""
    d = verify(code, keys or _NO_KEYS)
    return _key(d.verdict, d.tenant, d.batch, d.serial, code)


def code_keys(codes: Sequence[str], keys: KeyTable | None = None) -> list[bytes]:
    """``code_key`` of many codes, decoded in one ``verify_batch`` call."""
    vb = verify_batch(codes, keys or _NO_KEYS)
    return [_key(v, t, b, s, c) for v, t, b, s, c in
            zip(vb.verdict.tolist(), vb.tenant.tolist(), vb.batch.tolist(), vb.serial.tolist(), codes)]


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


#: Producer settings that the topic check's admin client needs too (how to reach the broker).
_CONNECTION_SETTINGS = ("security_protocol", "ssl_", "sasl_", "client_dns_lookup", "api_version")


def topic_partitions(bootstrap: str, topic: str, timeout_ms: int = 10_000, settings: dict | None = None) -> int:
    """The partition count of ``topic``; ``PublishError`` when it does not exist.

    Asked with an admin request that never creates the topic: kafka-python 3.0.12 producers
    send ``allow_auto_topic_creation=True`` whatever ``allow_auto_create_topics`` says, and a
    topic created that way gets the broker's default partition count (4 on Tansu).
    """
    extra = {k: v for k, v in (settings or {}).items() if k.startswith(_CONNECTION_SETTINGS)}
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="scanstream-publisher-check",
                                 request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms, **extra)
    except KafkaError as exc:
        raise PublishError(f"no Kafka broker answers on {bootstrap} within {timeout_ms} ms: {exc!r}") from exc
    try:
        for meta in admin.describe_topics([topic]):
            if meta.get("name") == topic and meta.get("error_code") == 0 and meta.get("partitions"):
                return len(meta["partitions"])
    finally:
        admin.close()
    raise PublishError(f"topic {topic!r} does not exist on {bootstrap}; create it first "
                       f"(python -m streams.broker --topics {topic}:8, or kafka-topics.sh)")


# -- the publisher ---------------------------------------------------------------------------

class _Message(NamedTuple):
    partition: int
    key: bytes | None
    value: bytes
    headers: list
    scans: int


class _Buffer:
    __slots__ = ("lines", "size", "deadline")

    def __init__(self, deadline: float):
        self.lines: list[bytes] = []
        self.size = -1  # the envelope's length: lines joined by newlines
        self.deadline = deadline


class ScanPublisher:
    """Publishes scan events to the ``scans`` topic for the scan API; thread-safe.

    ``partitions`` is read from the topic (which must exist: the publisher never creates it,
    since an auto-created topic gets the broker's default partition count); when given, it
    must match the topic.  ``keys`` is accepted so that a caller holding a configuration can
    pass ``config.keys``; keying never depends on it (the fields it decodes are in clear).
    ``retries`` and ``idempotent`` go to the producer (kafka-python's idempotence, on by
    default there, also keeps a retried envelope from being written twice; Tansu accepts it);
    ``max_block_ms`` bounds the topic check at start and every wait of ``publish*`` for room
    when ``max_pending`` sealed messages are still waiting for the sender (backpressure).
    Other ``producer_config`` goes to ``kafka.KafkaProducer`` (e.g. ``compression_type``,
    ``delivery_timeout_ms``).  Use as a context manager, or call ``close()``: scans still
    buffered are sent then.
    """

    def __init__(self, bootstrap: str, topic: str = "scans", partitions: int | None = None, linger_ms: int = 5,
                 keys: KeyTable | None = None, redis_url: str | None = None, prefix: str = "scanstream:",
                 max_envelope_bytes: int = envelope.MAX_ENVELOPE_BYTES, *, retries: int = 5,
                 max_block_ms: int = 10_000, max_pending: int = MAX_PENDING_MESSAGES,
                 idempotent: bool = True, redis_cluster: bool = False,
                 replay_ttl_s: int = EngineSettings().replay_ttl_s, **producer_config: Any):
        if not MAX_EVENT_BYTES <= max_envelope_bytes <= envelope.MAX_ENVELOPE_BYTES:
            raise ValueError(f"max_envelope_bytes {max_envelope_bytes} must be in {MAX_EVENT_BYTES}.."
                             f"{envelope.MAX_ENVELOPE_BYTES} (one event .. the envelope cap)")
        if linger_ms < 0:
            raise ValueError(f"linger_ms {linger_ms} must be >= 0")
        self.topic = topic
        self.linger_s = linger_ms / 1000
        self.keys = keys
        self.redis_url = redis_url
        self.redis_cluster = redis_cluster  # redis_url is a node of a Redis Cluster (``[redis] cluster``)
        self.prefix = prefix
        #: the workers' ``[engine] replay_ttl_hours``: ``await_result`` finds outcomes through the identities
        self.replay_ttl_s = replay_ttl_s
        self.max_envelope_bytes = max_envelope_bytes
        self.max_block_s = max_block_ms / 1000
        self.max_pending = max_pending
        found = topic_partitions(bootstrap, topic, max_block_ms, producer_config)
        if partitions is not None and partitions != found:
            raise ValueError(f"partitions={partitions} but topic {topic!r} has {found} partitions")
        self.partitions = found
        config = dict(bootstrap_servers=bootstrap, client_id="scanstream-publisher", acks="all", retries=retries,
                      max_in_flight_requests_per_connection=1, enable_idempotence=idempotent, linger_ms=0,
                      allow_auto_create_topics=False, max_block_ms=max_block_ms)
        config.update(producer_config)
        self._producer = KafkaProducer(**config)
        try:
            self._producer.partitions_for(topic)  # metadata now, not at the first send
        except BaseException:
            self._producer.close(0)
            raise
        #: await_result's (event loop, ReplyWatcher, its thread), made on first use
        self._watching = None
        self._cond = threading.Condition(threading.Lock())
        self._buffers: list[_Buffer | None] = [None] * self.partitions
        self._ready: deque[_Message] = deque()
        self._sender_wakes_at = 0.0  # when the idle sender wakes by itself (inf: never; 0: busy)
        self._accepted = 0  # scans taken by publish*
        self._handed = 0  # scans handed to the producer (or failed to be)
        self._flush_upto = 0  # seal every buffer until _handed reaches this
        self._closing = False
        self._closed = False
        self._failed = 0
        self._reported = 0
        self._last_error: BaseException | None = None
        self._sender_error: BaseException | None = None
        self.envelopes = 0
        self.singles = 0
        self._sender = threading.Thread(target=self._run, name=f"scan-publisher-{topic}", daemon=True)
        self._sender.start()

    # -- publishing --------------------------------------------------------------------------

    def publish(self, event: dict) -> None:
        """Check, key and buffer one scan; it is sent within ``linger_ms``."""
        line = encode_event(event)
        key = code_key(event["code"], self.keys)
        p = partition_for(key, self.partitions)
        with self._cond:
            self._check_open()
            self._append(p, line, time.monotonic())

    def publish_many(self, events: Iterable[dict]) -> int:
        """Check every event, then buffer them all in order; returns how many.

        One invalid event raises ``InvalidEvent`` (with its index) and none is published.  A
        ``PublishError`` for lack of room (after ``max_block_ms``) may come after some chunks
        of ``APPEND_CHUNK`` events were buffered; ``stats()["accepted"]`` tells how many.
        """
        events = events if isinstance(events, list) else list(events)
        lines = encode_events(events)
        n = self.partitions
        parts = [partition_for(k, n) for k in code_keys([e["code"] for e in events], self.keys)]
        for lo in range(0, len(lines), APPEND_CHUNK):
            with self._cond:
                self._check_open()
                now = time.monotonic()
                for i in range(lo, min(lo + APPEND_CHUNK, len(lines))):
                    self._append(parts[i], lines[i], now)
        return len(lines)

    def publish_single(self, event: dict) -> None:
        """The slow path: one keyed message per scan (``application/json``), sent without linger."""
        line = encode_event(event)
        key = code_key(event["code"], self.keys)
        p = partition_for(key, self.partitions)
        with self._cond:
            self._check_open()
            self._wait_for_room()
            self._seal(p)  # scans of this partition buffered earlier go first
            self._ready.append(_Message(p, key, line, SINGLE_HEADERS, 1))
            self._accepted += 1
            self.singles += 1
            self._cond.notify_all()

    def _check_open(self) -> None:
        if self._closing:
            raise PublishError("the publisher is closed")
        if self._sender_error is not None:
            raise PublishError(f"the sender thread died: {self._sender_error!r}") from self._sender_error

    def _append(self, p: int, line: bytes, now: float) -> None:
        """Buffer one scan line of partition ``p`` (lock held)."""
        while True:
            buf = self._buffers[p]
            if buf is None:
                if len(self._ready) >= self.max_pending:
                    self._wait_for_room()  # releases the lock: look at the buffer again
                    continue
                buf = self._buffers[p] = _Buffer(now + self.linger_s)
                if buf.deadline < self._sender_wakes_at:
                    self._cond.notify_all()
            elif buf.size + 1 + len(line) > self.max_envelope_bytes:
                self._seal(p)
                continue
            buf.lines.append(line)
            buf.size += 1 + len(line)
            self._accepted += 1
            return

    def _seal(self, p: int) -> None:
        """Turn partition ``p``'s buffer into an envelope for the sender (lock held)."""
        buf = self._buffers[p]
        if buf is None:
            return
        self._buffers[p] = None
        self._ready.append(_Message(p, None, envelope.encode(buf.lines), ENVELOPE_HEADERS, len(buf.lines)))
        self.envelopes += 1
        self._cond.notify_all()

    def _wait_for_room(self) -> None:
        """Backpressure: wait (bounded) while the sender is ``max_pending`` messages behind."""
        if len(self._ready) < self.max_pending:
            return
        if not self._cond.wait_for(lambda: len(self._ready) < self.max_pending or self._closed, self.max_block_s):
            raise PublishError(f"{len(self._ready)} messages wait for the broker for more than "
                               f"{self.max_block_s} s; is it reachable?")

    # -- the sender thread -------------------------------------------------------------------

    def _due(self) -> list[_Message]:
        """Everything to send now, in seal order (lock held)."""
        now = time.monotonic()
        seal_all = self._closing or self._flush_upto > self._handed
        for p, buf in enumerate(self._buffers):
            if buf is not None and (seal_all or buf.deadline <= now):
                self._seal(p)
        out = list(self._ready)
        self._ready.clear()
        return out

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug; make publish and flush say so instead of hanging
            with self._cond:
                self._sender_error = exc
                self._cond.notify_all()
            raise

    def _loop(self) -> None:
        while True:
            with self._cond:
                due = self._due()
                while not due:
                    if self._closing:
                        return
                    deadlines = [b.deadline for b in self._buffers if b is not None]
                    self._sender_wakes_at = min(deadlines) if deadlines else math.inf
                    wait = self._sender_wakes_at - time.monotonic() if deadlines else None
                    self._cond.wait(wait)
                    self._sender_wakes_at = 0.0
                    due = self._due()
                self._cond.notify_all()  # room for publishers waiting on backpressure
            for message in due:
                self._send(message)
            with self._cond:
                self._handed += sum(m.scans for m in due)
                self._cond.notify_all()

    def _send(self, m: _Message) -> None:
        try:
            future = self._producer.send(self.topic, value=m.value, key=m.key, partition=m.partition,
                                         headers=m.headers)
        except Exception as exc:  # the producer refused it (closed, buffer full past max_block_ms)
            self._on_error(m.scans, exc)
            return
        future.add_errback(self._on_error, m.scans)

    def _on_error(self, scans: int, exc: BaseException) -> None:
        with self._cond:
            self._failed += scans
            self._last_error = exc

    # -- flush, close, stats -----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Send every scan published so far and wait until the broker took them (or failed).

        Raises ``PublishError`` when scans failed since the last ``flush`` (all retries
        spent), or when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._accepted
            self._flush_upto = max(self._flush_upto, target)
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._handed >= target or self._sender_error is not None,
                                       None if deadline is None else max(deadline - time.monotonic(), 0)):
                raise PublishError(f"flush: {target - self._handed} scans not handed to the producer "
                                   f"within {timeout} s")
            if self._handed < target:
                raise PublishError(f"flush: {target - self._handed} scans are stuck, the sender thread died: "
                                   f"{self._sender_error!r}") from self._sender_error
        left = None if deadline is None else max(deadline - time.monotonic(), 0)
        try:
            self._producer.flush(left)
        except KafkaTimeoutError as exc:
            raise PublishError(f"flush: the broker did not acknowledge within {timeout} s") from exc
        self._raise_failures()

    def _raise_failures(self) -> None:
        with self._cond:
            failed, self._reported = self._failed - self._reported, self._failed
            error = self._last_error
        if failed:
            raise PublishError(f"{failed} scans were not delivered to {self.topic!r}: {error!r}") from error

    def close(self, timeout: float | None = 30.0) -> None:
        """Send what is buffered, wait for the broker, stop the sender, close the clients."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._sender.join(timeout)
            self._producer.close(timeout)
            self._stop_watching()
            self._closed = True
            with self._cond:
                self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        """Counters since start: scans accepted and handed over, messages sealed, scans failed."""
        with self._cond:
            return {"accepted": self._accepted, "handed": self._handed, "envelopes": self.envelopes,
                    "singles": self.singles, "failed": self._failed, "pending": self._accepted - self._handed}

    def __enter__(self) -> ScanPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- outcomes ----------------------------------------------------------------------------

    def await_result(self, scan_id: str, timeout: float = 0.5, event: dict | None = None,
                     lookback_s: float = replies.LOOKBACK_S) -> dict | None:
        """The outcome of ``scan_id`` (the reply fields of ``streams.replies``), or None after ``timeout`` s.

        Pass the ``event`` that was published: the outcome must then answer that event (the same
        code, user_id, role and ts), so a scan_id that someone resent with another code is
        answered with that resend's ``conflict``, never with the first delivery's verdict and
        prize.  Without it, the scan_id's oldest outcome, whatever event it answered: only for
        scan_ids the caller made itself and never resends with other content.  Outcomes written
        up to ``lookback_s`` before the call count (a minute by default; Redis holds them for
        ``result_ttl_s``), so a retried wait gets it again.

        Outcomes come back through Redis, not the ``scan-results`` topic: the worker writes each
        one to its scan_id's reply hash (``streams.replies.ReplyWriter``) and announces it.
        Reading the topic instead would cost a consumer's fetch latency on top of the worker's
        (too slow for an answer within a few hundred ms), and since any API instance may await
        any scan, every instance would have to read every outcome of every partition only to
        find its own.  One ``streams.replies.ReplyWatcher`` per publisher, on an event loop in a
        thread of its own, hears the announcements for every waiting thread: a wait costs Redis
        a read when it starts and one when its outcome is announced, not a poll.
        """
        if not timeout > 0:
            raise ValueError(f"timeout must be above 0 seconds, got {timeout!r}")
        key = encode_checked([event])[1][0] if event is not None else None
        loop, watcher = self.watcher()
        done = asyncio.run_coroutine_threadsafe(watcher.look(str(scan_id), key, timeout, lookback_s), loop)
        return done.result()

    def watcher(self) -> tuple[asyncio.AbstractEventLoop, replies.ReplyWatcher]:
        """The event loop and ``ReplyWatcher`` of ``await_result`` (made and subscribed on first use; thread-safe)."""
        if self._watching is None:
            if self.redis_url is None:
                raise PublishError("await_result needs redis_url (the Redis the workers write outcomes to)")
            with self._cond:
                if self._watching is None:
                    import redis.asyncio as aioredis

                    loop = asyncio.new_event_loop()
                    thread = threading.Thread(target=loop.run_forever, name="scanstream-replies", daemon=True)
                    thread.start()
                    client = (aioredis.RedisCluster.from_url(self.redis_url) if self.redis_cluster
                              else aioredis.Redis.from_url(self.redis_url))
                    watcher = replies.ReplyWatcher(client, self.prefix, self.replay_ttl_s)
                    asyncio.run_coroutine_threadsafe(watcher.start(), loop).result()
                    self._watching = (loop, watcher, thread)
        return self._watching[0], self._watching[1]

    def _stop_watching(self) -> None:
        if self._watching is None:
            return
        loop, watcher, thread = self._watching

        async def stop() -> None:
            await watcher.close()
            await watcher.client.aclose()

        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            if not thread.is_alive():
                loop.close()
            self._watching = None

    def __repr__(self) -> str:
        return f"ScanPublisher(topic={self.topic!r}, partitions={self.partitions}, {self.stats()})"
