"""``scanstream demo``: a synthetic world through the whole engine on the embedded defaults."""
from __future__ import annotations

import argparse
import io
import sys
import time

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config, open_clickhouse
from scanstream.cli.dashboard import add_writer_options, writer_dashboard
from scanstream.cli.run import Source, execute
from scanstream.engine.config import ConfigError
from scanstream.streams.synthetic import EMPTY_PRINTED_BATCH, GUIDE_SALE_SHARE, build_world, generate_scans

DEFAULT_SCANS = 100_000
DEMO_TENANT = 7
#: Output tables a demo run starts empty, so that its numbers are the demo's alone.
DEMO_TABLES = ("scan_events", "alerts", "awards", "alert_deliveries", "scans_minute", "diversion_minute",
               "ingest_minute", "scanner_profiles_agg", "state_runs")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", parents=[config_option()],
                       help="build a synthetic world, run its scans through the engine, show the results")
    p.add_argument("--scans", type=int, default=DEFAULT_SCANS, help=f"scans to simulate (default {DEFAULT_SCANS:,})")
    p.add_argument("--seed", type=int, default=7, help="random seed of the world and its scans")
    add_writer_options(p)
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    if args.scans < 1:
        print(f"scanstream: --scans {args.scans} must be at least 1", file=sys.stderr)
        return exits.USAGE
    config = load_config(args)
    pairs = [k for t, k in config.keys.pairs() if t == DEMO_TENANT]
    if not pairs:
        raise ConfigError(f"tenants: the demo needs a key for tenant {DEMO_TENANT}")
    if config.registry_dir is None:
        raise ConfigError("registry.dir: the demo writes its registry there; set it (config/local.toml has it)")
    dashboard = writer_dashboard(args, config)
    try:
        _demo(args, config, pairs, dashboard)
        if dashboard is not None:
            dashboard.serve_until_stopped()
    finally:
        if dashboard is not None:
            dashboard.close()
    return exits.OK


def _demo(args: argparse.Namespace, config, pairs: list[int], dashboard) -> None:
    key_id = max(pairs)
    world = build_world(DEMO_TENANT, config.keys.get(DEMO_TENANT, key_id), key_id)
    world.write_registry(config.registry_dir)
    started = time.perf_counter()
    lines = generate_scans(world, args.scans, seed=args.seed, guide_share=GUIDE_SALE_SHARE)
    data_dir = config.registry_dir.parent
    scans_file = data_dir / "demo-scans.jsonl"
    scans_file.write_bytes(b"\n".join(lines) + b"\n")
    print(f"demo world: tenant {DEMO_TENANT}, registry in {config.registry_dir}; "
          f"{len(lines):,} scan events in {scans_file} ({time.perf_counter() - started:.1f} s)")
    sink = open_clickhouse(config)
    if sink is not None:
        for table in DEMO_TABLES:
            sink.client.command(f"TRUNCATE TABLE IF EXISTS {table}")
        sink.close()
    results = data_dir / "demo-results.jsonl"
    started = time.perf_counter()
    # a demo starts its world over: a new state (--fresh) against the tables emptied above
    source = Source(io.BytesIO(scans_file.read_bytes()), scans_file.name, str(scans_file.resolve()))
    summary = execute(config, source, results, progress_total=len(lines), dashboard=dashboard, fresh=True)
    took = time.perf_counter() - started
    print(f"\n{summary.scans:,} scans in {took:.1f} s ({summary.scans / took:,.0f} scans/s end to end, "
          f"ClickHouse writes included); outcomes per line in {results}")
    cfg = f" --config {args.config}" if getattr(args, "config", None) else ""
    print(f"""
Next:
  scanstream{cfg} query "SELECT verdict, count() AS scans FROM scan_events FINAL GROUP BY verdict ORDER BY scans DESC"
  scanstream{cfg} query "SELECT alert, subtype, dealer_id, city, count, window_start FROM alerts FINAL ORDER BY ts LIMIT 20"
  scanstream{cfg} query "SELECT prize_tier, count() AS prizes, sum(prize_cents) / 100 AS yuan FROM awards FINAL GROUP BY prize_tier"
  scanstream{cfg} query "SELECT sku, verdict, count() AS scans FROM scan_events FINAL WHERE batch = {EMPTY_PRINTED_BATCH} GROUP BY sku, verdict ORDER BY sku, verdict"   # 空码赋值 ranges
  scanstream{cfg} query "SELECT dealer_id, city, count, detail FROM alerts FINAL WHERE detail LIKE '%outbound_scan%'"   # a case diverted after its outbound scan
  scanstream{cfg} query "SELECT user_id AS guide, count() AS commissions, sum(prize_cents) / 100 AS yuan FROM awards FINAL WHERE beneficiary = 'guide' GROUP BY guide ORDER BY yuan DESC LIMIT 5"   # 导购 commissions
  scanstream{cfg} run --input {scans_file} --results results.jsonl    # the same scans again, your own run
  scanstream{cfg} audit --campaign {config.campaigns[0].id if config.campaigns else 'ID'} CODE   # re-derive a prize draw
  scanstream{cfg} dashboard    # live charts of these tables at http://127.0.0.1:8765/ (or: demo --dashboard)""",
          flush=True)
