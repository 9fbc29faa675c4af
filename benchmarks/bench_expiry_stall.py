"""How long Redis stops answering when one of the state's large hashes expires, with and without lazy freeing.

The state lives in a few hashes per shard and period (``engine/state/redis.py``: the scan_ids'
identities per ``replay_ttl_hours``, the replies per minute), of up to millions of fields each.
This fills one hash of ``--fields`` fields (scan_id-sized names, 60-byte values), lets it expire,
and pings the server without pause meanwhile: the longest ping is how long every client waited.
Once with ``lazyfree-lazy-expire no`` (Redis's default: the hash is freed in the main thread), then
with ``yes`` (freed in a background thread).  It sets that option with CONFIG SET and deletes
everything in the database it is given, so give it a server of its own:

    redis-server --port 6390 --save "" --daemonize yes
    python benchmarks/bench_expiry_stall.py --redis-url redis://127.0.0.1:6390/0
"""
from __future__ import annotations

import argparse
import time

import redis

#: Fields per HSET while filling.
FILL_CHUNK = 10_000
#: How long the pings run after the expiry is set, s (Redis's active expiry runs ten times a second).
WATCH_S = 3.0


def stall(client, fields: int, lazy: str) -> tuple[float, int]:
    """The longest ping while a hash of ``fields`` fields expires (s), and the hash's bytes."""
    client.flushdb()
    client.config_set("lazyfree-lazy-expire", lazy)
    pipe = client.pipeline(transaction=False)
    for a in range(0, fields, FILL_CHUNK):
        pipe.hset("big", mapping={b"scan-%012d" % i: b"x" * 60 for i in range(a, min(a + FILL_CHUNK, fields))})
        if len(pipe) >= 20:
            pipe.execute()
    pipe.execute()
    size = client.memory_usage("big") or 0
    client.pexpire("big", 300)
    worst, end = 0.0, time.monotonic() + WATCH_S
    while time.monotonic() < end:
        t = time.monotonic()
        client.ping()
        worst = max(worst, time.monotonic() - t)
    if client.exists("big"):
        raise RuntimeError("the hash did not expire within the watch; is the server's active expiry off?")
    return worst, size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", required=True, help="a Redis server of its own: its database is emptied")
    p.add_argument("--fields", type=int, default=2_000_000, help="fields of the hash (default 2 000 000)")
    args = p.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    before = client.config_get("lazyfree-lazy-expire").get("lazyfree-lazy-expire", "no")
    try:
        for lazy in ("no", "yes"):
            worst, size = stall(client, args.fields, lazy)
            print(f"lazyfree-lazy-expire {lazy:3}: a hash of {args.fields:,} fields ({size / 1e6:.0f} MB) expired; "
                  f"longest ping meanwhile {worst * 1e3:.0f} ms")
    finally:
        client.config_set("lazyfree-lazy-expire", before)
        client.flushdb()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
