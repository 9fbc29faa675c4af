"""The naive baseline of ``bench_worker.py``: a Faust agent that handles one scan event at a time.

What a first, straightforward Faust implementation of the scan pipeline would look like: no
batches, no envelopes, no numpy.  The agent iterates ``async for event in stream.events()``
and, for every message (one scan event, ``application/json``):

1. ``json.loads`` of the value and a check of the required fields;
2. ``ext.codec.verify`` of the one code (the Cython codec, called per code; ``--pure-codec``
   uses the pure-Python reference ``engine.codec.verify`` instead);
3. a dict lookup of (tenant, kind, batch) in the registry's ``batches.csv`` (sku, activated);
4. dedup: one Redis ``SET key scan_id NX`` per verified, activated code (``redis.asyncio``),
   plus a ``GET`` when the code was taken, to tell a redelivered scan_id (same first answer)
   from a repeat scan;
5. one INSERT of a one-row block into ``scan_events`` (the engine's ClickHouse sink and DDL,
   on chdb or a server), in a one-thread executor so that the event loop keeps serving Kafka
   (``--no-insert`` leaves this step out, to show what the rest costs);
6. one message per scan to the results topic (``Topic.send``, keyed by scan_id).

It does less than the engine (no shipments / dealers / stores, no GPS, no diversion, no
alert windows, no lottery, no Redis replies for ``await_result``), so a comparison
with it flatters the naive side.  Verdicts it can give: invalid_event, malformed,
unknown_tenant, bad_mac, unknown_batch, not_activated, repeat, ok.

Run (the same ``--config`` as ``scanstream worker``: ``[kafka]``, ``[redis]``, ``[sink]``,
``[registry]`` and the tenants' keys are read from it)::

    python benchmarks/naive_agent.py --config worker.toml [--pure-codec] [--no-insert] [--stats-file F]
        [--loglevel info]

``--stats-file F``: every ``STATS_INTERVAL_S`` the agent rewrites F with its counters as JSON:
``scans`` handled, ``inserts`` done and ``insert_s``, the wall seconds they took in the insert
thread, and ``redis_calls``, the Redis commands it sent by name (``bench_worker.py`` reads the
insert cost per row from it, and tells the agent's own commands from other clients' on a
shared server).

Redis keys: ``<redis.prefix>naive:dd:<tenant>:<kind>:<batch>:<serial>`` (no expiry), so the
keys of a run are deleted with the prefix.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # this checkout, as for the other benchmarks
    sys.path.insert(0, str(ROOT))

from scanstream.engine.config import Config, load  # noqa: E402
from scanstream.engine.verdicts import Verdict  # noqa: E402

log = logging.getLogger("scanstream.naive")

REQUIRED = ("scan_id", "ts", "code", "user_id")
#: Seconds between two writes of ``--stats-file``.
STATS_INTERVAL_S = 0.5
KIND_BY_NAME = {"unit": 0, "case": 1, "": 0}


def load_batches(registry_dir: Path) -> dict[tuple[int, int, int], tuple[str, bool]]:
    """(tenant, kind, batch) -> (sku, activated), from ``batches.csv``."""
    out = {}
    with (registry_dir / "batches.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            kind = KIND_BY_NAME[(row.get("kind") or "").strip().lower()]
            out[(int(row["tenant"]), kind, int(row["batch"]))] = (row["sku"], row["activated"].strip() == "1")
    return out


def scan_row(ev: dict, scan_id: str, verdict: str, kind: int, tenant: int, batch: int, serial: int,
             sku: str, reason: str, raw: str) -> dict:
    """The ``scan_events`` columns of one scan (what the naive agent stores and sends)."""
    ts = ev.get("ts") if isinstance(ev.get("ts"), int) else 0
    text = lambda name: "" if ev.get(name) is None else str(ev.get(name))  # noqa: E731
    return {"scan_id": scan_id, "ts": ts, "tenant": tenant, "kind": kind, "batch": batch, "serial": serial,
            "code": text("code"), "user_id": text("user_id"), "role": text("role") or "consumer",
            "region": text("region"), "channel": text("channel"), "sku": sku, "dealer_id": "",
            "verdict": verdict, "diversion": "none", "campaign": "", "prize_tier": "", "prize_cents": 0,
            "draw": "none", "store_id": text("store_id"), "device_id": text("device_id"), "ip": text("ip"),
            "replay": 0, "reason": reason, "raw": raw}


def write_stats(path: Path, counters: dict) -> None:
    """``counters`` as JSON into ``path``, replaced whole so that a reader never sees half a file."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(counters))
    os.replace(part, path)


def build_naive_app(config: Config, *, pure_codec: bool = False, insert: bool = True,
                    stats_file: Path | None = None):
    """The Faust app and its one agent; returns (app, counters).  ``stats_file``: see the module's docstring."""
    import faust
    import redis.asyncio as aioredis

    from scanstream.engine import outcomes
    from scanstream.sinks.clickhouse import ClickHouseSink, connect

    if pure_codec:
        from scanstream.engine.codec import verify
    else:
        from scanstream.ext.codec import verify

    k = config.kafka
    if config.registry_dir is None:
        raise SystemExit("the naive agent reads registry.dir/batches.csv; the configuration names no registry.dir")
    batches = load_batches(config.registry_dir)
    keys = config.keys
    prefix = config.redis.prefix + "naive:"
    sink = None
    if config.clickhouse and insert:
        sink = ClickHouseSink(connect(config.clickhouse, database=config.database))
        sink.ensure_schema()
    columns = [name for name, _, _ in outcomes.SCAN_COLUMNS]
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="naive-insert")
    counters = {"scans": 0, "inserts": 0, "insert_s": 0.0}
    redis_calls = {"set": 0, "get": 0}

    app = faust.App(
        k.group,
        broker=[f"kafka://{h.strip()}" for h in k.bootstrap.split(",")],
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=k.partitions,
        broker_session_timeout=k.session_timeout_s,
        broker_heartbeat_interval=max(k.session_timeout_s / 5, 0.5),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        table_cleanup_interval=3600,
    )
    scans = app.topic(k.scans_topic, value_type=bytes, key_type=bytes, partitions=k.partitions)
    results = app.topic(k.results_topic, value_type=bytes, key_type=bytes, partitions=k.partitions)
    state: dict = {}

    def insert(row: dict) -> None:
        started = time.perf_counter()
        sink.write_scans({c: [row[c]] for c in columns})
        # one insert thread: the counters have a single writer
        counters["insert_s"] += time.perf_counter() - started
        counters["inserts"] += 1

    @app.agent(scans, name="scanstream.naive")
    async def process(stream):
        if "redis" not in state:
            state["redis"] = aioredis.Redis.from_url(config.redis.url)
        r = state["redis"]
        loop = asyncio.get_running_loop()
        async for event in stream.events():
            value = event.message.value or b""
            # 1 parse
            ev = None
            try:
                ev = json.loads(value)
                if not isinstance(ev, dict):
                    raise ValueError("not a JSON object")
                missing = [f for f in REQUIRED if ev.get(f) in (None, "")]
                if missing:
                    raise ValueError(f"missing required field {missing[0]}")
                if not isinstance(ev["code"], str):
                    raise ValueError("code is not a string")
            except ValueError as exc:  # json.JSONDecodeError is one
                given = ev.get("scan_id") if isinstance(ev, dict) else None
                scan_id = str(given or f"pos:{event.message.topic}/{event.message.partition}@{event.message.offset}")
                row = scan_row({}, scan_id, "invalid_event", 0, 0, 0, 0, "", str(exc),
                               value.decode("utf-8", "replace"))
            else:
                scan_id = str(ev["scan_id"])
                # 2 verify
                d = verify(ev["code"], keys)
                verdict = Verdict(int(d.verdict))
                sku = ""
                # 3 enrich: one dict lookup
                if verdict == Verdict.OK:
                    found = batches.get((d.tenant, d.kind, d.batch))
                    if found is None:
                        verdict = Verdict.UNKNOWN_BATCH
                    else:
                        sku, activated = found
                        if not activated:
                            verdict = Verdict.NOT_ACTIVATED
                # 4 dedup: SET NX per code
                if verdict == Verdict.OK:
                    key = f"{prefix}dd:{d.tenant}:{d.kind}:{d.batch}:{d.serial}"
                    redis_calls["set"] += 1
                    if not await r.set(key, scan_id, nx=True):
                        redis_calls["get"] += 1
                        first = await r.get(key)
                        if first is None or first.decode() != scan_id:  # else: a redelivery, same answer
                            verdict = Verdict.REPEAT
                row = scan_row(ev, scan_id, verdict.label, d.kind, d.tenant, d.batch, d.serial, sku, "", "")
            # 5 one-row insert
            if sink is not None:
                await loop.run_in_executor(executor, insert, row)
            # 6 one result message per scan
            await results.send(key=scan_id.encode(), value=json.dumps(row).encode(),
                               headers={"content-type": b"application/json"})
            counters["scans"] += 1

    @app.timer(interval=10.0)
    async def report() -> None:
        log.info("naive agent: %d scans", counters["scans"])

    if stats_file is not None:
        @app.timer(interval=STATS_INTERVAL_S)
        async def stats() -> None:
            write_stats(stats_file, {**counters, "redis_calls": redis_calls})

    return app, counters


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--config", type=Path, required=True, help="the worker's configuration file")
    p.add_argument("--pure-codec", action="store_true", help="verify with the pure-Python reference codec")
    p.add_argument("--no-insert", action="store_true", help="leave out the per-event ClickHouse insert")
    p.add_argument("--stats-file", type=Path, default=None,
                   help=f"rewrite this file with the agent's counters (JSON) every {STATS_INTERVAL_S:g} s")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    try:  # as `scanstream worker` does
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    import faust

    from scanstream.streams.topics import ensure_topics

    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load(args.config)
    ensure_topics(config.kafka)
    app, _ = build_naive_app(config, pure_codec=args.pure_codec, insert=not args.no_insert,
                             stats_file=args.stats_file)
    sys.argv = sys.argv[:1]  # faust.Worker must not read this script's options
    faust.Worker(app, loglevel=args.loglevel.upper(), quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
