"""How long a thread waiting for a scan's outcome waits after the worker wrote it, and what Redis pays.

Two ways of waiting, in one run, against one Redis server, with the same load:

- ``blocking`` (the baseline): each waiting thread blocks on a list of its scan_id (``BLMOVE``
  from the list to itself), and the writer pushes each outcome to its list with its own TTL
  (RPUSH + EXPIRE per scan, pipelined): how replies travelled before they became hash fields;
- ``watcher``: ``streams.replies`` as the worker and ``ScanPublisher.await_result`` use it: the
  writer's ``ReplyWriter.push`` (one script call per chunk, a field per scan_id in the reply
  hash of its shard and minute, then a notice), the waits on one ``ReplyWatcher`` on an event
  loop in a thread of its own, woken by the notices;
- ``filed``: the same, with each chunk claimed first in a ``RedisStateStore`` as a worker's batch
  is, so that each first outcome is filed under its identity's reference (``file_outcomes``) and
  each wait reads the identity, the slot's offsets and the slot.

The writer pushes ``--chunk`` outcomes at a time at ``--rate`` scans/s (a worker's batches); each
wait starts ``--lead-ms`` before its outcome is written (the scan API awaits right after
publishing).  Printed per way: the wait from the write (the reply step, after ``filed``'s claim)
to the answer (p50, p95, p99), the
Redis server's CPU per scan (``INFO cpu``, readers and writer together), and that of the same
writes with nobody waiting, run right after: the difference is what the waits cost Redis.  Give it a Redis of its
own (its counters count every client):

    redis-server --port 6390 --save "" --daemonize yes
    python benchmarks/bench_reply_wait.py --redis-url redis://127.0.0.1:6390/0
"""
from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import redis
import redis.asyncio as aioredis

from scanstream.engine.registry import batch_key
from scanstream.engine.state.redis import RedisStateStore
from scanstream.engine.verdicts import Verdict
from scanstream.streams import replies

#: The replay TTL of the ``filed`` way's identities, which its waits are told.
REPLAY_TTL_S = 3600

#: The event every outcome of the run answers (``replies.outcome_key``).
KEY = ("C", "u", "consumer", 1)


def _line(scan_id: str) -> bytes:
    return orjson.dumps({"scan_id": scan_id, "code": KEY[0], "user_id": KEY[1], "role": KEY[2], "ts": KEY[3],
                         "verdict": "ok"})


def _server_cpu_s(client) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def blocking(url: str, prefix: str, waiters: int) -> tuple[Callable, Callable, Callable]:
    """The baseline: a list per scan_id, a blocking read per waiting thread."""
    writer = redis.Redis.from_url(url)
    readers = redis.Redis.from_url(url, max_connections=waiters + 8)

    def push(ids: list[str], stamp: Callable[[], None]) -> None:
        stamp()
        pipe = writer.pipeline(transaction=False)
        for s in ids:
            pipe.rpush(prefix + s, _line(s))
            pipe.expire(prefix + s, 60)
        pipe.execute()

    def wait(scan_id: str) -> dict | None:
        key = prefix + scan_id
        value = readers.blmove(key, key, 5, "LEFT", "RIGHT")
        return None if value is None else orjson.loads(value)

    return push, wait, lambda: (writer.close(), readers.close())


def watcher(url: str, prefix: str, waiters: int, claimed: bool = False) -> tuple[Callable, Callable, Callable]:
    """``streams.replies`` as the worker and ``ScanPublisher.await_result`` use it; ``claimed``:
    each chunk claimed first, so that its outcomes are filed (the ``filed`` way)."""
    client = redis.Redis.from_url(url)
    store = RedisStateStore(client, prefix=prefix, replay_ttl_s=REPLAY_TTL_S) if claimed else None
    writer = replies.ReplyWriter(client, prefix, 60)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    aclient = aioredis.Redis.from_url(url)
    watching = replies.ReplyWatcher(aclient, prefix, REPLAY_TTL_S)
    asyncio.run_coroutine_threadsafe(watching.start(), loop).result()

    def push(ids: list[str], stamp: Callable[[], None]) -> None:
        """Write ``ids``' outcomes, calling ``stamp`` when the reply step starts (after the claim)."""
        lines = [_line(s) for s in ids]
        if store is None:
            stamp()
            writer.push(ids, lines, np.ones(len(ids), bool))  # first outcomes, as most are
            return
        n = len(ids)
        serial = np.array([int(s[1:]) for s in ids], np.uint32)
        claims = store.claim(np.array(ids, object), serial.astype(np.uint64) + 1, np.full(n, KEY[1], object),
                             np.full(n, batch_key(1, 0, 1), np.uint64), serial, np.full(n, int(Verdict.OK), np.uint8))
        stamp()
        writer.push(ids, lines, ~claims.replay, claims.ref)

    def wait(scan_id: str) -> dict | None:
        return asyncio.run_coroutine_threadsafe(watching.look(scan_id, KEY, 5), loop).result()

    def close() -> None:
        async def stop() -> None:
            await watching.close()
            await aclient.aclose()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        client.close()

    return push, wait, close


def run(way: str, url: str, args: argparse.Namespace, waits: bool = True) -> dict:
    """One run of ``way``; with ``waits`` False the same writes at the same pace, nobody waiting."""
    prefix = f"bench-reply-wait:{uuid.uuid4().hex[:8]}:"
    push, wait, close = (blocking(url, prefix, args.waiters) if way == "blocking"
                         else watcher(url, prefix, args.waiters, claimed=way == "filed"))
    ids = [f"s{i}" for i in range(args.scans)]
    written: dict[str, float] = {}
    waited: list[float] = []
    missing = []
    pool = ThreadPoolExecutor(args.waiters)

    def one(scan_id: str) -> None:
        got = wait(scan_id)
        if got is None or got["scan_id"] != scan_id:
            missing.append(scan_id)
        else:
            waited.append(time.monotonic() - written[scan_id])

    def start_waits(t0: float) -> None:
        for i, s in enumerate(ids if waits else ()):
            time.sleep(max(0.0, t0 + i / args.rate - args.lead_ms / 1000 - time.monotonic()))
            pool.submit(one, s)

    stats = redis.Redis.from_url(url)
    cpu0 = _server_cpu_s(stats)
    t0 = time.monotonic() + args.lead_ms / 1000 + 0.05
    starter = threading.Thread(target=start_waits, args=(t0,))
    starter.start()
    for a in range(0, len(ids), args.chunk):
        time.sleep(max(0.0, t0 + a / args.rate - time.monotonic()))
        part = ids[a:a + args.chunk]

        def stamp(part=part) -> None:
            now = time.monotonic()
            for s in part:
                written[s] = now
        push(part, stamp)
    starter.join()
    pool.shutdown(wait=True)
    cpu = _server_cpu_s(stats) - cpu0
    stats.close()
    close()
    waited.sort()
    n = len(waited) or 1
    return {"way": way, "answered": len(waited), "missing": len(missing),
            "p50_ms": waited[n // 2] * 1e3 if waited else None, "p95_ms": waited[int(n * 0.95)] * 1e3 if waited else None,
            "p99_ms": waited[int(n * 0.99)] * 1e3 if waited else None, "redis_cpu_us_per_scan": cpu / args.scans * 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="a Redis server of its own")
    p.add_argument("--scans", type=int, default=3000, help="outcomes per run (default 3000)")
    p.add_argument("--rate", type=float, default=1000, help="outcomes written per second (default 1000)")
    p.add_argument("--chunk", type=int, default=20, help="outcomes per write (default 20)")
    p.add_argument("--lead-ms", type=float, default=50, help="how long before its outcome a wait starts (default 50)")
    p.add_argument("--waiters", type=int, default=256, help="waiting threads (default 256)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each way, interleaved (default 3)")
    p.add_argument("--ways", default="blocking,watcher,filed", help="which ways, comma-separated (default all three)")
    args = p.parse_args()
    print(f"{args.scans} outcomes at {args.rate:.0f}/s in chunks of {args.chunk}, each awaited from {args.lead_ms:.0f} "
          f"ms before it is written by a pool of {args.waiters} threads; Redis {args.redis_url}")
    for r in range(args.rounds):
        for way in args.ways.split(","):
            f = run(way, args.redis_url, args)
            alone = run(way, args.redis_url, args, waits=False)["redis_cpu_us_per_scan"]
            print(f"  round {r + 1} {way:8}  answered {f['answered']:5}  missing {f['missing']}  write -> answer p50 "
                  f"{f['p50_ms']:.1f} ms  p95 {f['p95_ms']:.1f}  p99 {f['p99_ms']:.1f}   Redis CPU "
                  f"{f['redis_cpu_us_per_scan']:.1f} us/scan (the writes alone {alone:.1f}: the waits "
                  f"{f['redis_cpu_us_per_scan'] - alone:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
