"""Each scan's outcome, handed back to the scan API through Redis.

The scan API must answer the consumer within a few hundred milliseconds ("genuine, you won 8.8
yuan"), so it cannot read the whole ``scan-results`` topic.  The worker therefore also pushes
each outcome to a Redis list named after its scan_id, with a time to live, in one pipeline per
batch; ``await_result`` blocks on that list with ``BLMOVE`` from the list to itself, which
returns the outcome and leaves it in place for a retried wait.
"""
from __future__ import annotations

import time
from typing import Any

import orjson

from engine import outcomes

#: Longest single blocking call of ``wait_reply``.
WAIT_SLICE_S = 1.0
#: Fields of an outcome as the scan API receives it: the results-file fields.
REPLY_FIELDS = ("scan_id", "ts", "tenant", "kind", "batch", "serial", "code", "user_id", "role", "region",
                "channel", "sku", "dealer_id", "verdict", "diversion", "campaign", "prize_tier", "prize_cents",
                "draw", "replay", "reason")


def reply_key(prefix: str, scan_id: str) -> str:
    return f"{prefix}reply:{scan_id}"


def reply_rows(scans: outcomes.Columns) -> list[dict[str, Any]]:
    cols = [(f, scans[f].tolist()) for f in REPLY_FIELDS]
    n = len(cols[0][1])
    return [{f: v[i] for f, v in cols} for i in range(n)]


def push_replies(client, prefix: str, scans: outcomes.Columns, ttl_s: int) -> int:
    """Push every outcome of a batch to its scan_id's reply list (one round trip)."""
    pipe = client.pipeline(transaction=False)
    rows = reply_rows(scans)
    for row in rows:
        key = reply_key(prefix, row["scan_id"])
        pipe.rpush(key, orjson.dumps(row))
        pipe.expire(key, ttl_s)
    pipe.execute()
    return len(rows)


def wait_reply(client, prefix: str, scan_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The outcome of ``scan_id``, waiting up to ``timeout_s``; None when none came in time."""
    if not timeout_s > 0:  # Redis reads a zero timeout as "wait for ever"
        raise ValueError(f"timeout_s {timeout_s!r} must be above 0")
    key = reply_key(prefix, scan_id)
    deadline = time.monotonic() + timeout_s
    while True:
        # short blocking slices: a client's socket timeout may be shorter than the whole wait
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        value = client.blmove(key, key, min(left, WAIT_SLICE_S), "LEFT", "RIGHT")
        if value is not None:
            return orjson.loads(value)
