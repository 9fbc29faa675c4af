"""Redis server cost per scan of each state-store method and of the replies, without a broker or a worker.

``bench_worker.py`` gives a scan's whole cost in a running worker; this one says where Redis's
share goes.  It runs the pipeline over a saved demo stream (``process_batches.py --save DIR``)
on the Redis state store, under a fresh key prefix, in batches of ``--batch`` scans (a worker's
batch), and pushes each batch's outcome lines to the reply lists as the worker does
(``streams.replies.ReplyWriter``).  Around every store call and every push it reads the
server's CPU (``INFO cpu``, user + system); the cost of the two readings alone, measured
``CALIBRATION_CALLS`` times before the run, is taken off each.  At the end it walks the
prefix's keys (entries and ``MEMORY USAGE`` by key family) and deletes them.

    redis-server --port 6390 --save "" --daemonize yes
    python benchmarks/process_batches.py --save /tmp/stream
    python benchmarks/bench_state_calls.py --load /tmp/stream --redis-url redis://127.0.0.1:6390/0

Give it a Redis of its own: the server's counters count every client.  Run by path, so an older
checkout's interpreter (a ``git worktree`` with its own venv) runs the same file on the same
input: the two engines' figures then come from one machine in one sitting.  The figures are
server CPU µs, entries and bytes per scan of the stream (junk lines included).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_bench_costs import census  # noqa: E402  (this folder's module, run by path)

from scanstream.engine import outcomes  # noqa: E402
from scanstream.engine.config import load  # noqa: E402
from scanstream.engine.state.redis import RedisStateStore  # noqa: E402
from scanstream.streams.replies import ReplyWriter  # noqa: E402
from scanstream.wiring import build_pipeline  # noqa: E402

#: The state store's methods that talk to the server (``engine.state.StateStore``).
METHODS = ("claim", "grant", "count", "distinct", "mark_once", "block", "blocked", "bind", "guides")
#: Pairs of CPU readings taken back to back, to learn what a reading itself costs the server.
CALIBRATION_CALLS = 200


def server_cpu_s(client) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


class Meter:
    """Server CPU seconds and calls per method, each net of the cost of its two readings."""

    def __init__(self, client):
        self.client = client
        self.cpu_s: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        before = server_cpu_s(client)
        for _ in range(CALIBRATION_CALLS):
            server_cpu_s(client)
        #: what the readings around a call add to its delta: one reading's cost
        self.reading_s = (server_cpu_s(client) - before) / (CALIBRATION_CALLS + 1)

    def wrap(self, name: str, fn):
        def measured(*args, **kwargs):
            start = server_cpu_s(self.client)
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu_s[name] += server_cpu_s(self.client) - start - self.reading_s
                self.calls[name] += 1
        return measured


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--load", type=Path, required=True, help="a folder written by process_batches.py --save")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="a Redis server of its own")
    p.add_argument("--batch", type=int, default=1_000, help="scans per batch (default 1000)")
    p.add_argument("--scans", type=int, default=50_000, help="scans of the stream to process (default all 50000)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args()
    if args.batch < 1 or args.scans < 1:
        p.error("--batch and --scans must be at least 1")
    lines = pickle.loads((args.load / "lines.pkl").read_bytes())[:args.scans]
    config = replace(load(args.load / "scanstream.toml"), registry_dir=args.load / "registry", clickhouse="")
    prefix = f"bench-state:{uuid.uuid4().hex[:12]}:"
    store = RedisStateStore.from_url(args.redis_url, prefix=prefix,
                                     replay_ttl_s=config.engine.replay_ttl_hours * 3600)
    meter = Meter(store.client)
    for name in METHODS:
        setattr(store, name, meter.wrap(name, getattr(store, name)))
    replies = ReplyWriter(store.client, prefix, config.redis.result_ttl_s)
    push = meter.wrap("replies", replies.push)
    pipeline = build_pipeline(config, state=store)
    try:
        started = time.perf_counter()
        for start in range(0, len(lines), args.batch):
            scans = pipeline.process(lines[start:start + args.batch]).scans
            push(scans["scan_id"].tolist(), outcomes.outcome_lines(scans))
        wall = time.perf_counter() - started
        families = census(store.client, prefix).families
    finally:
        store.flush_prefix()
        store.close()
    n = len(lines)
    per_scan = {name: round(meter.cpu_s[name] / n * 1e6, 2) for name in sorted(meter.cpu_s, key=meter.cpu_s.get,
                                                                                  reverse=True)}
    figures = {
        "scans": n, "batch": args.batch, "wall_s": round(wall, 2),
        "reading_us": round(meter.reading_s * 1e6, 1),
        "server_cpu_us_per_scan": {"total": round(sum(meter.cpu_s.values()) / n * 1e6, 2), **per_scan},
        "calls_per_batch": {name: round(meter.calls[name] / -(-n // args.batch), 2) for name in per_scan},
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
