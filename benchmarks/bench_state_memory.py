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
(c) A replay record (the first answer of a scan_id, a field of its shard's hash ``P rp:{tag}:<epoch>``):
    ``used_memory`` delta per record, and the sum of ``MEMORY USAGE`` over the bucket hashes, for
    ``--baseline`` scan_ids whose verdict is not ok (so no bit is set), in three layouts:
    the record before answers kept the event (``old``: the verdict alone as the field's value,
    written here with HSET directly into the same bucket hashes, as the claim script wrote it);
    ``engine.state.pack_answer`` with an empty user (``fingerprint``: verdict + 8-byte
    fingerprint), through ``claim``; and the record as stored now (``new``: verdict, fingerprint
    and a ``--user-len``-character user id like a WeChat openid), through ``claim``.  The memory
    store's figure is the size of the record object (``sys.getsizeof``; the old record was a
    small int, shared, 0 bytes).
(d) Claim throughput, scans per second through ``claim`` of the Redis store and of the
    memory store over the same stream: ``--throughput`` scans in calls of ``--batch`` scans
    (the engine's default batch size), 90 % first scans, 8 % repeat scans of codes scanned
    earlier, 2 % redelivered scan_ids (same fingerprint and user as the first delivery).
    Best of ``--repeat`` runs, each on an empty store.

Every claim carries a random uint64 fingerprint per event and a user id of ``--user-len``
characters (``o`` and base64url characters, as WeChat openids), one user per 4 scans.

Ratios printed: baseline bytes / bitmap bytes per issued code, new / old replay record,
memory-store / Redis claim rate.  The goal is printed as PASS / MISS and never fails the run.

Run: ``python benchmarks/bench_state_memory.py [--url URL] [--issued N] [--quick] [--json [FILE]]``
(``--quick``: 500 000 codes, samples of 100 000, one timed run).
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

from scanstream.engine.registry import batch_key  # noqa: E402
from scanstream.engine.state import pack_answer, state_keys  # noqa: E402
from scanstream.engine.state.memory import MemoryStateStore  # noqa: E402
from scanstream.engine.state.redis import CHUNK_SERIALS, RedisStateStore, StateUnavailable  # noqa: E402
from scanstream.engine.state.redis_lua import SHARDS, shard_key  # noqa: E402
from scanstream.engine.verdicts import Verdict  # noqa: E402

TENANT = 7
GOAL_BITS_PER_CODE = 1.1
#: Characters of a WeChat openid (``o`` then base64url), the user ids of the claims.
OPENID_ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)
#: Scans per user in the generated streams.
SCANS_PER_USER = 4


def fingerprints(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random uint64 event fingerprints (the parser's SipHash of each event)."""
    return rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)


def user_ids(rng: np.random.Generator, n: int, length: int, scans_per_user: int = SCANS_PER_USER) -> np.ndarray:
    """``n`` user ids (object array of str) of ``length`` characters, ``o`` + base64url like a WeChat
    openid; about ``scans_per_user`` rows per distinct user, in random order."""
    if length == 0:
        return np.full(n, "", dtype=object)
    users = max(1, n // scans_per_user)
    raw = OPENID_ALPHABET[rng.integers(0, len(OPENID_ALPHABET), (users, length))]
    raw[:, 0] = ord("o")
    distinct = np.ascontiguousarray(raw).view(f"S{length}").ravel().astype(str).astype(object)
    return distinct[rng.integers(0, users, n)]


def used_memory(store: RedisStateStore) -> int:
    return int(store.client.info("memory")["used_memory"])


def settle(store: RedisStateStore) -> int:
    """``used_memory`` once keys deleted with UNLINK are freed (the server frees large values in a
    background thread) and after the server's cron had a chance to shrink its tables."""
    deadline = time.monotonic() + 30
    while int(store.client.info("memory").get("lazyfree_pending_objects", 0)) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    return used_memory(store)


def claim_in_calls(store, ids: np.ndarray, fps: np.ndarray, users: np.ndarray, codes: np.ndarray,
                   serials: np.ndarray, verdict: np.ndarray, size: int) -> float:
    """Seconds to claim the stream in calls of ``size`` scans."""
    t0 = time.perf_counter()
    for i in range(0, len(ids), size):
        s = slice(i, i + size)
        store.claim(ids[s], fps[s], users[s], codes[s], serials[s], verdict[s])
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
    fps, users = fingerprints(rng, scans), user_ids(rng, scans, args.user_len)
    verdict = np.full(scans, Verdict.OK, np.uint8)
    before = settle(store)
    seconds = claim_in_calls(store, ids, fps, users, codes, serial, verdict, args.claim_batch)
    for records in (b"rp:*", b"ck:*"):  # the scan_ids' records are measured in (c): only bitmaps stay
        delete_matching(store, records)
    after = settle(store)
    redis_bytes = store.dedup_bytes()
    mem = MemoryStateStore()
    claim_in_calls(mem, ids, fps, users, codes, serial, verdict, args.claim_batch)
    return {
        "issued": per_batch * args.batches, "batches": args.batches, "scanned": scans,
        "chunk_serials": CHUNK_SERIALS,
        "bitmap_bytes": redis_bytes, "bits_per_issued_code": redis_bytes * 8 / (per_batch * args.batches),
        "used_memory_delta_bytes": after - before,
        "used_memory_bits_per_issued_code": (after - before) * 8 / (per_batch * args.batches),
        "memory_store_bits_per_issued_code": mem.dedup_bytes() * 8 / (per_batch * args.batches),
        "claim_seconds": seconds,
    }


def replay_keys_usage(store: RedisStateStore) -> tuple[int, int]:
    """Sum of ``MEMORY USAGE`` over the replay bucket hashes, and their number of fields."""
    keys = store.keys(b"rp:*")
    r = store.client
    return (sum(r.memory_usage(k, samples=0) for k in keys), sum(r.hlen(k) for k in keys))


def write_old_records(store: RedisStateStore, ids: np.ndarray, verdict: int, size: int) -> None:
    """The replay records as the claim script wrote them before answers kept the event: field
    scan_id, value the verdict (a Lua number, stored as its decimal string), in this epoch's hash
    of the scan_id's shard, ``P rp:{tag}:<epoch>``, which expires at the end of the next one."""
    r, ttl = store.client, store.replay_ttl_s
    epoch = int(r.time()[0]) // ttl
    bucket = (state_keys(ids) & np.uint64(SHARDS - 1)).astype(np.int64)
    for b in range(SHARDS):
        key = shard_key(store.prefix.encode() + b"rp:", b) + b":%d" % epoch
        mine = ids[bucket == b].tolist()
        for i in range(0, len(mine), size):
            r.hset(key, mapping=dict.fromkeys(mine[i:i + size], verdict))
        if mine:
            r.expireat(key, (epoch + 2) * ttl)


def bench_replay_records(store: RedisStateStore, args: argparse.Namespace, rng: np.random.Generator
                         ) -> dict[str, Any]:
    """(c) Bytes per remembered scan_id, old record against the records with the event kept."""
    n = args.baseline
    ids = np.array([f"rp-{i:09d}" for i in range(n)], dtype=object)
    fps = fingerprints(rng, n)
    layouts = {"old": None, "fingerprint": user_ids(rng, n, 0), "new": user_ids(rng, n, args.user_len)}
    out: dict[str, Any] = {"sample": n, "scan_id_chars": len(ids[0]), "user_chars": args.user_len}
    for name, users in layouts.items():
        before = settle(store)
        if users is None:
            write_old_records(store, ids, int(Verdict.BAD_MAC), args.claim_batch)
        else:
            claim_in_calls(store, ids, fps, users, np.zeros(n, np.uint64), np.zeros(n, np.uint32),
                           np.full(n, Verdict.BAD_MAC, np.uint8), args.claim_batch)
        delta = settle(store) - before
        usage, fields = replay_keys_usage(store)
        if fields != n:
            raise SystemExit(f"(c) {name}: {fields:,} replay records stored for {n:,} scan_ids")
        out[name] = {"used_memory_bytes": delta / n, "memory_usage_bytes": usage / n}
        delete_matching(store, b"rp:*")
    mem = MemoryStateStore()
    claim_in_calls(mem, ids, fps, layouts["new"], np.zeros(n, np.uint64), np.zeros(n, np.uint32),
                   np.full(n, Verdict.BAD_MAC, np.uint8), args.claim_batch)
    out["memory_store_record_bytes"] = sum(map(sys.getsizeof, mem._answers.values())) / n
    out["new_record_value_bytes"] = len(pack_answer(int(Verdict.BAD_MAC), 0, layouts["new"][0]))
    for m in ("used_memory_bytes", "memory_usage_bytes"):
        out[f"new_over_old_{m}"] = out["new"][m] / out["old"][m]
    return out


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
    return {"sample": n, "key_per_code_bytes": key_per_code, "set_per_batch_bytes_per_code": set_per_batch}


def throughput_stream(args: argparse.Namespace, rng: np.random.Generator):
    n = args.throughput
    kind = rng.random(n)
    serial = rng.integers(0, 50_000_000, n).astype(np.uint32)  # fresh codes, spread over 48 chunks
    codes = np.full(n, int(batch_key(TENANT, 0, 9)), np.uint64)
    ids = np.array([f"tp-{i:09d}" for i in range(n)], dtype=object)
    fps, users = fingerprints(rng, n), user_ids(rng, n, args.user_len)
    for i in np.nonzero(kind >= 0.90)[0].tolist():
        if i:
            j = int(rng.integers(0, i))
            serial[i] = serial[j]  # a repeat scan of an earlier code
            if kind[i] >= 0.98:  # the same message delivered again
                ids[i], fps[i], users[i] = ids[j], fps[j], users[j]
    return ids, fps, users, codes, serial, np.full(n, Verdict.OK, np.uint8)


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
    if (answers["redis"].verdict.tolist() != answers["memory"].verdict.tolist()
            or answers["redis"].replay.tolist() != answers["memory"].replay.tolist()):
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
    p.add_argument("--user-len", type=int, default=28,
                   help="characters of each claim's user id, WeChat-openid-like (default 28)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: --issued 500000 --baseline 100000 --throughput 50000 --repeat 1")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the figures as JSON to FILE, or to stdout (instead of the table) without FILE")
    args = p.parse_args(argv)
    if args.quick:
        args.issued, args.baseline, args.throughput, args.repeat = 500_000, 100_000, 50_000, 1
    return args


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
        replay = bench_replay_records(store, args, rng)
    finally:
        store.flush_prefix()
        store.close()
    throughput = bench_throughput(args, rng)
    bitmap_per_code = bitmaps["bitmap_bytes"] / bitmaps["issued"]
    result = {
        "redis": server.get("redis_version"), "allocator": allocator,
        "bitmaps": bitmaps, "baselines": baselines, "replay_records": replay, "throughput": throughput,
        "ratios": {
            "key_per_code_over_bitmap": baselines["key_per_code_bytes"] / bitmap_per_code,
            "set_per_batch_over_bitmap": baselines["set_per_batch_bytes_per_code"] / bitmap_per_code,
            "replay_record_new_over_old": replay["new_over_old_used_memory_bytes"],
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
    rp = replay
    print(f"(c) replay record per remembered scan_id ({rp['sample']:,} scan_ids of {rp['scan_id_chars']} characters; "
          f"used_memory delta / MEMORY USAGE of the bucket hashes)")
    print(f"    old: verdict only        {rp['old']['used_memory_bytes']:6.1f} B  "
          f"{rp['old']['memory_usage_bytes']:6.1f} B")
    print(f"    verdict + fingerprint    {rp['fingerprint']['used_memory_bytes']:6.1f} B  "
          f"{rp['fingerprint']['memory_usage_bytes']:6.1f} B")
    print(f"    new: + {rp['user_chars']}-char user id   {rp['new']['used_memory_bytes']:6.1f} B  "
          f"{rp['new']['memory_usage_bytes']:6.1f} B  (value {rp['new_record_value_bytes']} B)  "
          f"new/old x{rp['new_over_old_used_memory_bytes']:.2f} / x{rp['new_over_old_memory_usage_bytes']:.2f}")
    print(f"    memory store: record object {rp['memory_store_record_bytes']:.1f} B (old: a shared small int, 0 B) "
          f"plus the dict entry and scan_id, as before")
    print(f"(d) claim, {tp['scans']:,} scans in calls of {tp['batch']}: redis {tp['redis_scans_per_s']:,.0f}/s, "
          f"memory {tp['memory_scans_per_s']:,.0f}/s (memory/redis x{tp['memory_over_redis']:.1f})")
    print(f"total {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
