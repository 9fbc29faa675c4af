"""Redis server cost per scan of each state-store method and of the replies, without a broker or a worker.

``bench_worker.py`` gives a scan's whole cost in a running worker; this one says where Redis's
share goes.  It runs the pipeline over a saved demo stream (``process_batches.py --save DIR``)
on the Redis state store, under a fresh key prefix, in batches of ``--batch`` scans (a worker's
batch), and writes each batch's outcome lines to the reply hashes as the worker does
(``streams.replies.ReplyWriter``).  Twice, each time on a fresh prefix, with the same work:

1. plain: the server's CPU (``INFO cpu``, user + system) read once before and once after: the
   whole cost, command parsing and network included; then the prefix's keys are walked
   (entries and ``MEMORY USAGE`` by key family);
2. attributed: around every store call and every push, ``INFO cpu`` again: the server's CPU
   that call cost, parsing and I/O included, less what a reading itself costs (the median of
   empty reading pairs, measured at the start), summed by method.  ``INFO commandstats`` cannot
   say it: it leaves out the parsing of a plain command's arguments, and it counts the commands
   a script runs among the top-level ones of the same name, so a plain HMGET or HSET could not
   be told from one inside a script.

    redis-server --port 6390 --save "" --daemonize yes
    python benchmarks/process_batches.py --save /tmp/stream
    python benchmarks/bench_state_calls.py --load /tmp/stream --redis-url redis://127.0.0.1:6390/0

Give it a Redis of its own: the server's counters count every client.  Run by path, so an older
checkout's interpreter (a ``git worktree`` with its own venv) runs the same file on the same
input: the two engines' figures then come from one machine in one sitting.  The figures are
per scan of the stream (junk lines included).

A fresh prefix has empty identity hashes; a server hours into a deployment holds millions of
identities in each.  ``--fill N`` puts N in each shard's hash of this replay epoch and the last
before each pass, so the claim looks up and inserts into hashes of that size.  A hash that grew
past a power of two is rehashed a bucket per command on it, and meanwhile each lookup searches
both tables: N just above a power of two (300 000) measures that state, N well past it
(1 000 000, rehashed while it was filled) the settled one.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_bench_costs import census  # noqa: E402  (this folder's module, run by path)

from scanstream.engine import outcomes  # noqa: E402
from scanstream.engine.config import load  # noqa: E402
from scanstream.engine.state.redis import RedisStateStore, identity_hash  # noqa: E402
from scanstream.engine.state.redis_lua import SHARDS  # noqa: E402
from scanstream.streams.replies import ReplyWriter, first_outcomes  # noqa: E402
from scanstream.wiring import build_pipeline  # noqa: E402

#: The state store's methods that talk to the server (``engine.state.StateStore``).
METHODS = ("claim", "grant", "count", "distinct", "mark_once", "block", "blocked", "bind", "guides")
def server_cpu_s(client) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


#: Empty reading pairs whose median is a reading's own cost.
CALIBRATION_READINGS = 50


class Attribution:
    """Server CPU µs and calls per method, each call's reading less a reading's own cost."""

    def __init__(self, client):
        self.client = client
        self.usec: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        deltas = []
        for _ in range(CALIBRATION_READINGS):
            start = server_cpu_s(client)
            deltas.append(server_cpu_s(client) - start)
        self.reading_us = float(np.median(deltas)) * 1e6

    def wrap(self, name: str, fn):
        def measured(*args, **kwargs):
            start = server_cpu_s(self.client)
            try:
                return fn(*args, **kwargs)
            finally:
                self.usec[name] += (server_cpu_s(self.client) - start) * 1e6 - self.reading_us
                self.calls[name] += 1
        return measured


#: Fields per HSET and HSETs per round trip of ``fill``.
FILL_FIELDS, FILL_COMMANDS = 1_000, 5


def fill(client, prefix: str, per_hash: int, replay_ttl_s: int) -> None:
    """``per_hash`` made-up identities (60-byte values) in each shard's identity hash of this
    replay epoch and the one before (``P rp:{t}:<epoch>``), as a server holds them hours into a
    deployment: the claim then looks up and inserts into large hashes, not empty ones."""
    epoch = int(time.time() // replay_ttl_s)
    value = bytes(60)
    step = FILL_FIELDS * FILL_COMMANDS
    for e in (epoch - 1, epoch):
        for shard in range(SHARDS):
            key = identity_hash(prefix.encode(), shard, e)
            for a in range(0, per_hash, step):
                pipe = client.pipeline(transaction=False)
                for x in range(a, min(a + step, per_hash), FILL_FIELDS):
                    pipe.execute_command("HSET", key, *[v for y in range(x, min(x + FILL_FIELDS, per_hash))
                                                        for v in (b"filled-%d-%d" % (shard, y), value)])
                pipe.execute()


def run(config, lines: list[bytes], url: str, batch: int, attribute: bool, per_hash: int = 0):
    """One pass over ``lines`` on a fresh prefix (its identity hashes filled with ``per_hash``
    fields first): (server CPU s, Attribution or None, key families)."""
    prefix = f"bench-state:{uuid.uuid4().hex[:12]}:"
    store = RedisStateStore.from_url(url, prefix=prefix, replay_ttl_s=config.engine.replay_ttl_hours * 3600)
    if per_hash:
        fill(store.client, prefix, per_hash, store.replay_ttl_s)
    replies = ReplyWriter(store.client, prefix, config.redis.result_ttl_s)
    push = replies.push
    attribution = Attribution(store.client) if attribute else None
    if attribution:
        for name in METHODS:
            setattr(store, name, attribution.wrap(name, getattr(store, name)))
        push = attribution.wrap("replies", push)
    pipeline = build_pipeline(config, state=store)
    try:
        before = server_cpu_s(store.client)
        for start in range(0, len(lines), batch):
            result = pipeline.process(lines[start:start + batch])
            scans = result.scans
            refs = getattr(result, "refs", None)  # an older checkout's engine files no outcome
            push(scans["scan_id"].tolist(), outcomes.outcome_lines(scans), first_outcomes(scans),
                 *([] if refs is None else [refs]))
        cpu_s = server_cpu_s(store.client) - before
        families = census(store.client, prefix).families if not per_hash else {}
    finally:
        store.flush_prefix()
        store.close()
    return cpu_s, attribution, families


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", type=Path, required=True, help="a folder written by process_batches.py --save")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="a Redis server of its own")
    p.add_argument("--batch", type=int, default=1_000, help="scans per batch (default 1000)")
    p.add_argument("--scans", type=int, default=50_000, help="scans of the stream to process (default all 50000)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")
    p.add_argument("--fill", type=int, default=0, metavar="N",
                   help="N identities in each shard's identity hash of this replay epoch and the last, "
                        "before the passes (default 0: empty hashes); entries and bytes are then not walked")
    args = p.parse_args()
    if args.batch < 1 or args.scans < 1 or args.fill < 0:
        p.error("--batch and --scans must be at least 1, --fill at least 0")
    lines = pickle.loads((args.load / "lines.pkl").read_bytes())[:args.scans]
    config = replace(load(args.load / "scanstream.toml"), registry_dir=args.load / "registry", clickhouse="")
    started = time.perf_counter()
    cpu_s, _, families = run(config, lines, args.redis_url, args.batch, attribute=False, per_hash=args.fill)
    wall = time.perf_counter() - started
    _, attribution, _ = run(config, lines, args.redis_url, args.batch, attribute=True, per_hash=args.fill)
    n = len(lines)
    order = sorted(attribution.usec, key=attribution.usec.get, reverse=True)
    figures = {
        "scans": n, "batch": args.batch, "filled_per_hash": args.fill, "wall_s": round(wall, 2),
        "server_cpu_us_per_scan": round(cpu_s / n * 1e6, 2),
        "server_cpu_us_by_method": {"total": round(sum(attribution.usec.values()) / n, 2),
                                **{k: round(attribution.usec[k] / n, 2) for k in order}},
        "calls_per_batch": {k: round(attribution.calls[k] / -(-n // args.batch), 2) for k in order},
        "entries_per_scan": {"total": round(sum(f.entries for f in families.values()) / n, 3),
                             **{k: round(f.entries / n, 3) for k, f in sorted(families.items())}},
        "bytes_per_scan": {"total": round(sum(f.bytes for f in families.values()) / n, 1),
                           **{k: round(f.bytes / n, 1) for k, f in sorted(families.items())}},
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
