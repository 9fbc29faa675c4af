"""Each scan's outcome, handed back to the scan API through Redis.

The scan API must answer the consumer within a few hundred milliseconds ("genuine, you won 8.8
yuan"), so it cannot read the whole ``scan-results`` topic.  The worker therefore also pushes
each outcome to a Redis list named after its scan_id, with a time to live; ``await_result``
blocks on that list with ``BLMOVE`` from the list to itself, which returns the outcome and
leaves it in place for a retried wait.

The pushes of a batch go in one Lua script call per ``REPLY_CHUNK`` outcomes (see
``_PUSH_LUA``), which then publishes a notice of the chunk's scan_ids, and the outcome lines are
written by ``ext.jsonlines``.  ``await_result`` (threads, one blocking read each) suits a Python
scan API; an event-loop process waiting for hundreds of scans at once (the HTTP gateway) holds
one subscription to the notices instead (``ReplyWatcher``).

A reply list lives in the state shard of its scan_id (``reply_key``), as the state store's keys
do: on a Redis Cluster the pushes go in one call per shard, and their notices reach every
subscriber whichever node publishes them.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from scanstream.engine import outcomes
from scanstream.engine.state import state_keys
from scanstream.engine.state.redis_lua import SHARD_LUA, SHARD_TAGS, SHARDS

#: Longest single blocking call of ``wait_reply``.
WAIT_SLICE_S = 1.0
#: Outcomes per script call: bounds the time one call holds the server (a few ms here).
REPLY_CHUNK = 5000
#: Polls while a scan_id's list holds outcomes of other events (a resend): first and longest gap.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.05
#: How often a ``ReplyWatcher`` wait looks for its outcome itself, should a notice be lost.
SWEEP_S = 0.25

#: ARGV: key prefix, TTL, n, scan_id lengths (uint32), scan_ids, outcome lengths (uint32),
#: outcomes, the notice channel (``notice_channel``), each scan_id's shard (one byte): its list is
#: ``reply_key``.  After the pushes the script publishes one
#: notice on that channel: n (uint32) and the chunk's packed scan_ids, which wakes the gateways
#: waiting for any of them (``ReplyWatcher``); with nobody subscribed it costs next to nothing.  Arrays travel packed, as in the state store's scripts: a pipelined RPUSH and
#: EXPIRE per scan, or an argument per key and value, cost the worker more Python time (command
#: packing) than the whole pipeline.
_PUSH_LUA = SHARD_LUA + r"""
local function strings(lens_blob, blob, n)
  local out, pos, done = {}, 1, 0
  while done < n do
    local k = math.min(n - done, 200)
    local lens = {struct.unpack('<' .. string.rep('I4', k), lens_blob, 4 * done + 1)}
    for j = 1, k do
      out[done + j] = string.sub(blob, pos, pos + lens[j] - 1)
      pos = pos + lens[j]
    end
    done = done + k
  end
  return out
end
local pre, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids, lines = strings(ARGV[4], ARGV[5], n), strings(ARGV[6], ARGV[7], n)
for i = 1, n do
  local key = shard_key(pre, string.byte(ARGV[9], i)) .. ids[i]
  redis.call('RPUSH', key, lines[i])
  redis.call('EXPIRE', key, ttl)
end
-- the notice: after the pushes, in the same call, so a gateway woken by it finds the outcomes
redis.call('PUBLISH', ARGV[8], struct.pack('<I4', n) .. ARGV[4] .. ARGV[5])
return n
"""


def reply_key(prefix: str, scan_id: str) -> str:
    """The reply list of ``scan_id``: ``P reply:{tag}<scan_id>``, in the state shard of the scan_id."""
    return f"{prefix}reply:{{{SHARD_TAGS[int(reply_shards([scan_id])[0])]}}}{scan_id}"


def reply_shards(scan_ids: Sequence[str]) -> np.ndarray:
    """The state shard of each scan_id (that of its identity in the state store)."""
    return (state_keys(list(scan_ids)) & np.uint64(SHARDS - 1)).astype(np.uint8)


def notice_channel(prefix: str) -> str:
    """The pub/sub channel on which the worker announces each chunk of outcomes it pushed."""
    return f"{prefix}replied"


def notice_ids(message: bytes) -> list[bytes]:
    """The scan_ids of a notice (``_PUSH_LUA``), as bytes; [] for a message of another shape."""
    if len(message) < 4:
        return []
    n = int.from_bytes(message[:4], "little")
    if len(message) < 4 + 4 * n:
        return []
    lens = np.frombuffer(message, "<u4", n, 4)
    ends = np.cumsum(lens, dtype=np.int64) + 4 + 4 * n
    if n and ends[-1] != len(message):
        return []
    starts = ends - lens
    return [message[a:b] for a, b in zip(starts.tolist(), ends.tolist())]


def outcome_key(reply: dict[str, Any]) -> tuple:
    """What ties an outcome to the event it answers: its code, user_id, role and ts, as the
    worker's parse stage read them (``publisher.outcome_keys`` gives an event's)."""
    return reply.get("code"), reply.get("user_id"), reply.get("role"), reply.get("ts")


def _packed(values: Sequence[bytes]) -> tuple[bytes, bytes]:
    lens = np.fromiter(map(len, values), np.uint32, len(values)).astype("<u4")
    return lens.tobytes(), b"".join(values)


class ReplyWriter:
    """Pushes outcomes to their scan_ids' reply lists, ``REPLY_CHUNK`` per round trip."""

    def __init__(self, client, prefix: str, ttl_s: int):
        if ttl_s < 1:
            raise ValueError(f"reply ttl_s: expected at least 1 second, got {ttl_s}")
        self.client = client
        self.prefix = prefix
        self.ttl_s = int(ttl_s)
        self.channel = notice_channel(prefix).encode("utf-8")
        self._push = client.register_script(_PUSH_LUA)
        import redis
        #: a Cluster takes one call per shard (a script touches one slot)
        self.cluster = isinstance(client, redis.RedisCluster)

    def push(self, scan_ids: Sequence[str], lines: Sequence[bytes]) -> int:
        """Push ``lines[i]`` to the reply list of ``scan_ids[i]``; the number pushed."""
        if len(scan_ids) != len(lines):
            raise ValueError(f"{len(scan_ids)} scan_ids for {len(lines)} outcomes: expected one each")
        pre = f"{self.prefix}reply:".encode("utf-8")
        shards = reply_shards(scan_ids) if len(scan_ids) else np.zeros(0, np.uint8)
        groups = ([np.nonzero(shards == s)[0] for s in np.unique(shards).tolist()] if self.cluster
                  else [np.arange(len(lines))])
        for rows in groups:
            for a in range(0, len(rows), REPLY_CHUNK):
                part = rows[a:a + REPLY_CHUNK].tolist()
                ids = [scan_ids[i].encode("utf-8", "surrogatepass") for i in part]
                routing = [reply_key(self.prefix, scan_ids[part[0]])]  # where a Cluster runs the call
                self._push(keys=routing, args=[pre, self.ttl_s, len(part), *_packed(ids),
                                               *_packed([lines[i] for i in part]), self.channel,
                                               shards[part].tobytes()])
        return len(lines)

    def push_outcomes(self, scans: outcomes.Columns) -> int:
        """Push every outcome of a batch (for callers that have not built the lines yet)."""
        return self.push(scans["scan_id"].tolist(), outcomes.outcome_lines(scans))


def wait_reply(client, prefix: str, scan_id: str, timeout_s: float,
               answers: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
    """The outcome of ``scan_id``, waiting up to ``timeout_s``; None when none came in time.

    Without ``answers``, the list's oldest outcome.  With it, the oldest outcome for which
    ``answers`` is true: a scan_id resent with other content has two outcomes in its list, the
    first delivery's and the resend's ``conflict``, and only the caller knows which event it is
    waiting for (``ScanPublisher.await_result`` passes the event).
    """
    if not timeout_s > 0:  # Redis reads a zero timeout as "wait for ever"
        raise ValueError(f"timeout_s {timeout_s!r} must be above 0")
    key = reply_key(prefix, scan_id)
    deadline = time.monotonic() + timeout_s
    pause = POLL_FIRST_S
    while True:
        # short blocking slices: a client's socket timeout may be shorter than the whole wait
        left = deadline - time.monotonic()
        if answers is None:
            if left <= 0:
                return None
            value = client.blmove(key, key, min(left, WAIT_SLICE_S), "LEFT", "RIGHT")
            if value is not None:
                return orjson.loads(value)
            continue
        held = client.lrange(key, 0, -1)
        for value in held:
            reply = orjson.loads(value)
            if answers(reply):
                return reply
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not held:  # block until the first outcome comes (RIGHT to RIGHT: the order stays)
            client.blmove(key, key, max(min(left, WAIT_SLICE_S), 0.001), "RIGHT", "RIGHT")
        else:  # outcomes of other events under this scan_id: a resend, rare; poll for ours
            time.sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX_S)


class ReplyWatcher:
    """The outcomes awaited by one event-loop process (the HTTP gateway), woken by the worker's notices.

    A blocking read per waiting request (``BLMOVE``) holds a Redis connection each: at 1 000
    scans/s and 150 ms a wait, 150 connections, past redis.asyncio's pool, and a read per request
    besides.  Instead one subscription to ``notice_channel`` per process hears every chunk of
    outcomes the workers push (``_PUSH_LUA`` publishes after pushing), and only the scan_ids
    someone here waits for are read, all in one pipelined round trip.

    ``expect(scan_id, seen, key)`` before publishing, then ``wait``: the first outcome at index
    ``seen`` or later of the scan_id's reply list whose ``outcome_key`` is ``key``.  Count the list
    (``LLEN``) before publishing, so a resent scan_id is answered by its own outcome (a ``replay``, or a
    ``conflict`` when its content differs), never with the first delivery's verdict and prize,
    even when two requests carry one scan_id at once.  Pub/sub delivers at most once (a
    reconnect loses notices), so a wait also looks for itself every ``SWEEP_S``; the reply lists,
    not the notices, are what holds outcomes.
    """

    def __init__(self, client, prefix: str, sweep_s: float = SWEEP_S):
        self.client = client
        self.prefix = prefix
        self.sweep_s = sweep_s
        self.channel = notice_channel(prefix)
        #: scan_id (bytes) -> the waits for it: (seen, key, future)
        self._waits: dict[bytes, list[tuple[int, tuple, Any]]] = {}
        self._listener = None
        self._subscribed = None

    async def start(self) -> None:
        import asyncio

        self._subscribed = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        import asyncio

        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass

    async def _listen(self) -> None:
        """Subscribe and dispatch notices, for ever; a lost connection is logged and re-made."""
        import asyncio
        import logging

        log = logging.getLogger("scanstream.replies")
        pause = SWEEP_S
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if not self._subscribed.done():
                    self._subscribed.set_result(None)
                pause = SWEEP_S
                while True:
                    message = await pubsub.get_message(timeout=WAIT_SLICE_S)
                    if message is not None and message["type"] == "message":
                        await self._wake([sid for sid in notice_ids(message["data"]) if sid in self._waits])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: waits sweep until it is back
                log.warning("reply notices lost (%r); waits look for their outcomes every %.2f s until Redis "
                            "answers", exc, self.sweep_s)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - the connection is gone already
                    pass

    async def subscribed(self, timeout: float) -> bool:
        """True once the subscription is in place (a readiness check)."""
        import asyncio

        try:
            await asyncio.wait_for(asyncio.shield(self._subscribed), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _wake(self, scan_ids: list[bytes]) -> None:
        """Read the lists of ``scan_ids`` (one round trip) and answer the waits they satisfy."""
        if not scan_ids:
            return
        starts = [min(seen for seen, _, _ in self._waits[sid]) for sid in scan_ids]
        async with self.client.pipeline(transaction=False) as pipe:
            for sid, start in zip(scan_ids, starts):
                pipe.lrange(self._key(sid), start, -1)
            held = await pipe.execute()
        for sid, start, values in zip(scan_ids, starts, held):
            self._answer(sid, start, values)

    def _key(self, scan_id: bytes) -> bytes:
        return reply_key(self.prefix, scan_id.decode("utf-8", "surrogatepass")).encode("utf-8", "surrogatepass")

    def _answer(self, scan_id: bytes, start: int, values: list[bytes], only: tuple | None = None) -> None:
        """Answer the waits for ``scan_id`` (or the one wait ``only``) that ``values``, the reply
        list from index ``start`` on, holds an outcome for."""
        if not values:
            return
        replies = [orjson.loads(v) for v in values]
        for seen, key, future in (self._waits.get(scan_id, ()) if only is None else (only,)):
            if future.done():
                continue
            for reply in replies[max(0, seen - start):]:
                if outcome_key(reply) == key:
                    future.set_result(reply)
                    break

    def expect(self, scan_id: str, seen: int, key: tuple) -> Expected:
        """Register a wait, before its scan is published (so no notice can pass unheard): the
        outcome answering the event whose ``outcome_key`` is ``key``, among those pushed after the
        reply list held ``seen``.  ``wait`` for it, or ``forget`` it when the publish failed."""
        import asyncio

        sid = scan_id.encode("utf-8", "surrogatepass")
        expected = Expected(sid, seen, key, asyncio.get_running_loop().create_future())
        self._waits.setdefault(sid, []).append(expected.entry)
        return expected

    def forget(self, expected: Expected) -> None:
        waits = self._waits.get(expected.scan_id, [])
        if expected.entry in waits:
            waits.remove(expected.entry)
        if not waits:
            self._waits.pop(expected.scan_id, None)

    async def wait(self, expected: Expected, timeout_s: float) -> dict[str, Any] | None:
        """The expected outcome, or None after ``timeout_s``; raises what Redis raises.  Woken by
        a notice; looks for itself every ``sweep_s`` and once more at the deadline."""
        import asyncio

        deadline = time.monotonic() + timeout_s
        future = expected.entry[2]
        try:
            while True:
                left = deadline - time.monotonic()
                if left > 0:
                    try:
                        return await asyncio.wait_for(asyncio.shield(future), min(left, self.sweep_s))
                    except asyncio.TimeoutError:
                        pass
                self._answer(expected.scan_id, expected.seen,
                             await self.client.lrange(self._key(expected.scan_id), expected.seen, -1), expected.entry)
                if future.done():
                    return future.result()
                if deadline - time.monotonic() <= 0:
                    return None
        finally:
            self.forget(expected)


@dataclass(frozen=True)
class Expected:
    """One registered wait of a ``ReplyWatcher``."""

    scan_id: bytes
    seen: int
    key: tuple
    future: Any

    @property
    def entry(self) -> tuple[int, tuple, Any]:
        return self.seen, self.key, self.future


async def latest_reply(client, prefix: str, scan_id: str) -> dict[str, Any] | None:
    """The newest outcome of ``scan_id`` (a poll after a 202), or None while there is none."""
    value = await client.lindex(reply_key(prefix, scan_id), -1)
    return None if value is None else orjson.loads(value)
