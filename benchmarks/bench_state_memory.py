"""Redis memory per issued code for dedup, against a key per code; claim throughput.

Measured on the Redis server at ``--url`` (default redis://127.0.0.1:6379/0), under a fresh
random key prefix that is deleted at the end (only that prefix is touched):

(a) Dedup bitmaps.  ``--issued`` codes are issued in ``--batches`` equal batches (tenant 7,
    unit codes), and ``--scan-share`` of them are scanned at random serials through
    ``RedisStateStore.claim``, ``--claim-batch`` scans per call, as the pipeline would.  A
    bitmap spans its chunk up to the highest serial scanned, so what it costs depends on the
    codes issued, not on how many were scanned; the figure is bits of Redis memory per issued
    code: the sum of ``MEMORY USAGE`` (allocator size classes and key overhead included) over
    the bitmap keys.  Goal: <= 1.1 bits per issued code.  The memory store's bitsets
    (``MemoryStateStore.dedup_bytes``) are shown next to it, as is ``INFO memory``'s
    ``used_memory`` delta over the bitmap phase, taken after the replay records were deleted
    (it also holds whatever the keyspace's hash table kept from them).
(b) Baselines on a ``--baseline`` sample, extrapolated linearly to ``--issued`` codes: one
    string key per code (``SET <prefix>code:<tenant>:<kind>:<batch>:<serial> 1``) measured by
    ``used_memory`` delta, and one set per batch with the serials as members (``SADD``), by
    ``MEMORY USAGE`` of the sets.
(c) A replay record (the first answer of a scan_id, a field of a bucket hash): ``used_memory`` delta
    per record over a claim of ``--baseline`` scans whose verdict is not ok (so no bit is set).
(d) Claim throughput, scans per second through ``claim`` of the Redis store and of the
    memory store over the same stream: ``--throughput`` scans in calls of ``--batch`` scans
    (the engine's default batch size), 90 % first scans, 8 % repeat scans of codes scanned
    earlier, 2 % redelivered scan_ids.  Best of ``--repeat`` runs, each on an empty store.

Ratios printed: baseline bytes / bitmap bytes per issued code, memory-store / Redis claim
rate.  The goal is printed as PASS / MISS and never fails the run.

Run: ``python benchmarks/bench_state_memory.py [--url URL] [--issued N] [--json [FILE]]``
(``--json`` alone prints the figures as JSON on stdout instead of the table).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from engine.registry import batch_key  # noqa: E402
from engine.state.memory import MemoryStateStore  # noqa: E402
from engine.state.redis import CHUNK_SERIALS, RedisStateStore, StateUnavailable  # noqa: E402
from engine.verdicts import Verdict  # noqa: E402

TENANT = 7
GOAL_BITS_PER_CODE = 1.1


def used_memory(store: RedisStateStore) -> int:
    return int(store.client.info("memory")["used_memory"])


def settle(store: RedisStateStore) -> int:
    """``used_memory`` after the server's cron had a chance to shrink its tables."""
    time.sleep(0.3)
    return used_memory(store)


def claim_in_calls(store, ids: np.ndarray, codes: np.ndarray, serials: np.ndarray, verdict: np.ndarray,
                   size: int) -> float:
    """Seconds to claim the stream in calls of ``size`` scans."""
    t0 = time.perf_counter()
    for i in range(0, len(ids), size):
        store.claim(ids[i:i + size], codes[i:i + size], serials[i:i + size], verdict[i:i + size])
    return time.perf_counter() - t0


def delete_matching(store: RedisStateStore, suffix: bytes) -> None:
    keys = store.keys(suffix)
    for i in range(0, len(keys), 5000):
        store.client.unlink(*keys[i:i + 5000])


def bench_bitmaps(store: RedisStateStore, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    per_batch = args.issued // args.batches
    scans = int(args.issued * args.scan_share)
    batch = rng.integers(0, args.batches, scans)
    serial = rng.integers(0, per_batch, scans).astype(np.uint32)
    codes = batch_key(TENANT, 0, batch + 1).astype(np.uint64)
    ids = np.array([f"bm-{i:09d}" for i in range(scans)], dtype=object)
    verdict = np.full(scans, Verdict.OK, np.uint8)
    before = settle(store)
    seconds = claim_in_calls(store, ids, codes, serial, verdict, args.claim_batch)
    delete_matching(store, b"rp:*")  # the replay records are measured in (c)
    after = settle(store)
    redis_bytes = store.dedup_bytes()
    mem = MemoryStateStore()
    claim_in_calls(mem, ids, codes, serial, verdict, args.claim_batch)
    return {
        "issued": per_batch * args.batches, "batches": args.batches, "scanned": scans,
        "chunk_serials": CHUNK_SERIALS,
        "bitmap_bytes": redis_bytes, "bits_per_issued_code": redis_bytes * 8 / (per_batch * args.batches),
        "used_memory_delta_bytes": after - before,
        "used_memory_bits_per_issued_code": (after - before) * 8 / (per_batch * args.batches),
        "memory_store_bits_per_issued_code": mem.dedup_bytes() * 8 / (per_batch * args.batches),
        "claim_seconds": seconds,
    }


def bench_baselines(store: RedisStateStore, args: argparse.Namespace) -> dict[str, Any]:
    n = args.baseline
    r, p = store.client, store.prefix.encode()
    before = settle(store)
    for i in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for s in range(i, min(i + 10_000, n)):
            pipe.set(b"%bcode:%d:0:1:%d" % (p, TENANT, s), 1)
        pipe.execute()
    key_per_code = (settle(store) - before) / n
    delete_matching(store, b"code:*")
    sets = [b"%bserials:%d:0:%d" % (p, TENANT, b) for b in range(args.batches)]
    per_set = n // args.batches
    for key in sets:
        for i in range(0, per_set, 10_000):
            r.sadd(key, *range(i, min(i + 10_000, per_set)))
    set_per_batch = sum(r.memory_usage(k, samples=0) for k in sets) / (per_set * args.batches)
    r.unlink(*sets)
    # (c) replay records: claims that set no bit
    ids = np.array([f"rp-{i:09d}" for i in range(n)], dtype=object)
    before = settle(store)
    claim_in_calls(store, ids, np.zeros(n, np.uint64), np.zeros(n, np.uint32),
                   np.full(n, Verdict.BAD_MAC, np.uint8), args.claim_batch)
    replay = (settle(store) - before) / n
    delete_matching(store, b"rp:*")
    return {"sample": n, "key_per_code_bytes": key_per_code, "set_per_batch_bytes_per_code": set_per_batch,
            "replay_record_bytes": replay}


def throughput_stream(args: argparse.Namespace, rng: np.random.Generator):
    n = args.throughput
    kind = rng.random(n)
    serial = rng.integers(0, 50_000_000, n).astype(np.uint32)  # fresh codes, spread over 48 chunks
    codes = np.full(n, int(batch_key(TENANT, 0, 9)), np.uint64)
    ids = np.array([f"tp-{i:09d}" for i in range(n)], dtype=object)
    for i in np.nonzero(kind >= 0.90)[0].tolist():
        if i:
            j = int(rng.integers(0, i))
            serial[i] = serial[j]  # a repeat scan of an earlier code
            if kind[i] >= 0.98:
                ids[i] = ids[j]  # the same message delivered again
    return ids, codes, serial, np.full(n, Verdict.OK, np.uint8)


def bench_throughput(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    stream = throughput_stream(args, rng)
    rates: dict[str, float] = {}
    answers = {}
    for name in ("redis", "memory"):
        best = float("inf")
        for _ in range(args.repeat):
            if name == "redis":
                store = RedisStateStore.from_url(args.url, prefix=f"bench-tp-{uuid.uuid4().hex[:10]}:",
                                                 replay_ttl_s=3600)
            else:
                store = MemoryStateStore(replay_ttl_s=3600)
            try:
                best = min(best, claim_in_calls(store, *stream, args.batch))
                answers[name] = store.claim(*(c[:1000] for c in stream))  # replays now: the first answers
            finally:
                if name == "redis":
                    store.flush_prefix()
                    store.close()
        rates[name] = args.throughput / best
    if answers["redis"].verdict.tolist() != answers["memory"].verdict.tolist():
        raise SystemExit("the two stores answered differently; not timing a wrong store")
    return {"scans": args.throughput, "batch": args.batch, "redis_scans_per_s": rates["redis"],
            "memory_scans_per_s": rates["memory"], "memory_over_redis": rates["memory"] / rates["redis"]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--url", default="redis://127.0.0.1:6379/0", help="Redis server (default redis://127.0.0.1:6379/0)")
    p.add_argument("--issued", type=int, default=5_000_000, help="codes issued, over all batches (default 5000000)")
    p.add_argument("--batches", type=int, default=3, help="batches the codes are issued in (default 3)")
    p.add_argument("--scan-share", type=float, default=0.2,
                   help="share of the issued codes scanned, at random serials (default 0.2)")
    p.add_argument("--claim-batch", type=int, default=50_000,
                   help="scans per claim call in (a) and (c) (default 50000)")
    p.add_argument("--baseline", type=int, default=200_000, help="codes in the baseline samples (default 200000)")
    p.add_argument("--throughput", type=int, default=200_000, help="scans in the throughput stream (default 200000)")
    p.add_argument("--batch", type=int, default=5000, help="scans per claim call in (d) (default 5000)")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of (d), best is reported (default 2)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the figures as JSON to FILE, or to stdout (instead of the table) without FILE")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    try:
        store = RedisStateStore.from_url(args.url, prefix=f"bench-{uuid.uuid4().hex[:10]}:", replay_ttl_s=3600)
    except StateUnavailable as exc:
        print(f"bench_state_memory: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        server = store.client.info("server")
        allocator = store.client.info("memory").get("mem_allocator")
        bitmaps = bench_bitmaps(store, args, rng)
        baselines = bench_baselines(store, args)
    finally:
        store.flush_prefix()
        store.close()
    throughput = bench_throughput(args, rng)
    bitmap_per_code = bitmaps["bitmap_bytes"] / bitmaps["issued"]
    result = {
        "redis": server.get("redis_version"), "allocator": allocator,
        "bitmaps": bitmaps, "baselines": baselines, "throughput": throughput,
        "ratios": {
            "key_per_code_over_bitmap": baselines["key_per_code_bytes"] / bitmap_per_code,
            "set_per_batch_over_bitmap": baselines["set_per_batch_bytes_per_code"] / bitmap_per_code,
            "memory_over_redis_claim_rate": throughput["memory_over_redis"],
        },
        "goal_bits_per_issued_code": GOAL_BITS_PER_CODE,
        "goal_met": bitmaps["bits_per_issued_code"] <= GOAL_BITS_PER_CODE,
        "seconds": time.perf_counter() - t0,
    }
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    b, bl, tp, ra = bitmaps, baselines, throughput, result["ratios"]
    issued = b["issued"]
    print(f"redis {result['redis']} ({result['allocator']}); {issued:,} codes issued in {b['batches']} batches, "
          f"{b['scanned']:,} scanned "
          f"({b['claim_seconds']:.1f} s of claims)")
    print(f"(a) dedup bitmaps        {b['bitmap_bytes']:>14,} B  {b['bits_per_issued_code']:6.3f} bits/issued code "
          f"[{'PASS' if result['goal_met'] else 'MISS'} <= {GOAL_BITS_PER_CODE}]")
    print(f"    used_memory delta    {b['used_memory_delta_bytes']:>14,} B  "
          f"{b['used_memory_bits_per_issued_code']:6.3f} bits/issued code")
    print(f"    memory store bitsets {'':>14}    {b['memory_store_bits_per_issued_code']:6.3f} bits/issued code")
    print(f"(b) key per code         {bl['key_per_code_bytes'] * issued:>14,.0f} B  "
          f"{bl['key_per_code_bytes']:6.1f} B/code (sample {bl['sample']:,})  x{ra['key_per_code_over_bitmap']:,.0f}")
    print(f"    set per batch        {bl['set_per_batch_bytes_per_code'] * issued:>14,.0f} B  "
          f"{bl['set_per_batch_bytes_per_code']:6.1f} B/code  x{ra['set_per_batch_over_bitmap']:,.0f}")
    print(f"(c) replay record        {bl['replay_record_bytes']:6.1f} B per remembered scan_id")
    print(f"(d) claim, {tp['scans']:,} scans in calls of {tp['batch']}: redis {tp['redis_scans_per_s']:,.0f}/s, "
          f"memory {tp['memory_scans_per_s']:,.0f}/s (memory/redis x{tp['memory_over_redis']:.1f})")
    print(f"total {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
