"""Each scan's outcome, handed back to the scan API through Redis.

The scan API must answer the consumer within a few hundred milliseconds ("genuine, you won 8.8
yuan"), so it cannot read the whole ``scan-results`` topic.  The worker therefore also pushes
each outcome to a Redis list named after its scan_id, with a time to live; ``await_result``
blocks on that list with ``BLMOVE`` from the list to itself, which returns the outcome and
leaves it in place for a retried wait.

The pushes of a batch go in one Lua script call per ``REPLY_CHUNK`` outcomes (see
``_PUSH_LUA``), and the outcome lines are written by ``ext.jsonlines``.  Like the state store, the script touches keys of many hash
slots, so it runs on a single server or a primary with replicas, not a Redis Cluster.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from scanstream.engine import outcomes

#: Longest single blocking call of ``wait_reply``.
WAIT_SLICE_S = 1.0
#: Outcomes per script call: bounds the time one call holds the server (a few ms here).
REPLY_CHUNK = 5000
#: Polls while a scan_id's list holds outcomes of other events (a resend): first and longest gap.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.05

#: ARGV: key prefix, TTL, n, scan_id lengths (uint32), scan_ids, outcome lengths (uint32),
#: outcomes.  Arrays travel packed, as in the state store's scripts: a pipelined RPUSH and
#: EXPIRE per scan, or an argument per key and value, cost the worker more Python time (command
#: packing) than the whole pipeline.
_PUSH_LUA = r"""
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
  local key = pre .. ids[i]
  redis.call('RPUSH', key, lines[i])
  redis.call('EXPIRE', key, ttl)
end
return n
"""


def reply_key(prefix: str, scan_id: str) -> str:
    return f"{prefix}reply:{scan_id}"


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
        self._push = client.register_script(_PUSH_LUA)

    def push(self, scan_ids: Sequence[str], lines: Sequence[bytes]) -> int:
        """Push ``lines[i]`` to the reply list of ``scan_ids[i]``; the number pushed."""
        if len(scan_ids) != len(lines):
            raise ValueError(f"{len(scan_ids)} scan_ids for {len(lines)} outcomes: expected one each")
        pre = reply_key(self.prefix, "").encode("utf-8")
        for a in range(0, len(lines), REPLY_CHUNK):
            ids = [s.encode("utf-8", "surrogatepass") for s in scan_ids[a:a + REPLY_CHUNK]]
            chunk = lines[a:a + REPLY_CHUNK]
            self._push(args=[pre, self.ttl_s, len(chunk), *_packed(ids), *_packed(chunk)])
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


async def wait_new_reply(client, prefix: str, scan_id: str, seen: int, timeout_s: float) -> dict[str, Any] | None:
    """The outcome of ``scan_id`` pushed after its reply list held ``seen`` outcomes; None after ``timeout_s``.

    For an HTTP gateway on an event loop (``client`` is a ``redis.asyncio`` client).  Count the
    list (``LLEN reply_key``) before publishing and pass it as ``seen``: a retried scan_id's list
    already holds the first outcome, and the answer to this request is the one the worker
    pushes for it (a redelivery's ``replay = 1``, or a ``conflict``), never the first outcome
    served again to whoever resent the scan_id.

    Reads never reorder the list (``wait_reply``'s ``BLMOVE LEFT RIGHT`` rotates it), so
    outcomes keep their push order and ``seen`` stays an index.  A new scan_id (``seen`` 0)
    blocks in Redis (``BLMOVE key key RIGHT RIGHT``, which returns at once and leaves the list
    as it was once anything is there); an older one is polled, ``POLL_FIRST_S`` doubling to
    ``POLL_MAX_S``: retries are rare.
    """
    import asyncio

    key = reply_key(prefix, scan_id)
    deadline = time.monotonic() + timeout_s
    pause = POLL_FIRST_S
    while True:
        value = await client.lindex(key, seen)
        if value is not None:
            return orjson.loads(value)
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if seen == 0:
            await client.blmove(key, key, max(min(left, WAIT_SLICE_S), 0.001), "RIGHT", "RIGHT")
        else:
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX_S)


async def latest_reply(client, prefix: str, scan_id: str) -> dict[str, Any] | None:
    """The newest outcome of ``scan_id`` (a poll after a 202), or None while there is none."""
    value = await client.lindex(reply_key(prefix, scan_id), -1)
    return None if value is None else orjson.loads(value)
