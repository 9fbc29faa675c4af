"""``scanstream dev``: the production path on one machine, in one command.

It starts what a laptop lacks and points the local configuration at it, through the same
configuration checks (``engine.config.load`` with overrides, nothing written to disk):

1. a Kafka-protocol broker (the bundled Tansu) on a free port;
2. Redis: the configured one when it answers, else a ``redis-server`` of its own (state kept in
   ``data/dev-redis`` beside the embedded ClickHouse);
3. the topics (the worker creates them), one worker in this process on the embedded
   ClickHouse, the built-in dashboard and the Prometheus metrics endpoint;
4. with ``--demo``: the demo world's registry, then its scans published through
   ``ScanPublisher`` and awaited one by one through Redis, as a scan API would.

Ctrl-C (or SIGTERM) stops the worker, then everything this command started, and only that: a
Redis that was already running keeps running, with the dev state under its own prefix.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from scanstream.cli.common import config_option, load_config, open_clickhouse
from scanstream.engine.config import Config, ConfigError

#: Partitions of the dev topics: enough to show per-partition lag, few for one worker.
DEV_PARTITIONS = 4
#: Key prefix of the dev state in Redis, apart from any other deployment on the same server.
DEV_PREFIX = "scanstream-dev:"
DEFAULT_DEMO_SCANS = 20_000
DEFAULT_METRICS_PORT = 9108
#: How long the demo waits for the topics (the worker creates them as it starts) and for each outcome.
TOPIC_WAIT_S = 60.0
OUTCOME_WAIT_S = 30.0
#: Seconds a Redis started here may take to answer.
REDIS_START_S = 30.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dev", parents=[config_option()],
                       help="broker, Redis, worker, dashboard and metrics on this machine (Ctrl-C stops them)")
    p.add_argument("--demo", action="store_true",
                   help="write the demo world's registry and publish its scans through the scan API's publisher")
    p.add_argument("--scans", type=int, default=DEFAULT_DEMO_SCANS,
                   help=f"scans the demo publishes (default {DEFAULT_DEMO_SCANS:,})")
    p.add_argument("--seed", type=int, default=7, help="random seed of the demo's scans")
    p.add_argument("--dashboard-port", type=int, default=8765, help="built-in dashboard port (0: any free port)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"Prometheus metrics on 127.0.0.1:PORT/metrics (default {DEFAULT_METRICS_PORT})")
    p.add_argument("--loglevel", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=main)


def say(text: str) -> None:
    print(f"scanstream dev: {text}", flush=True)


def _redis_answers(url: str) -> bool:
    import redis as redis_py
    try:
        client = redis_py.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis_py.RedisError, ValueError):
        return False


def _start_redis(folder: Path, stack: contextlib.ExitStack) -> str:
    """A redis-server of this command's own on a free port, its state in ``folder``; stopped on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError("redis.url: no Redis answers there and no redis-server is installed to start one "
                          "(install Redis, or point [redis] url at one)")
    from scanstream.streams.broker import free_port
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "redis.log").open("ab")
    stack.callback(log.close)
    # AOF: the dev state survives a restart of `dev`, as a production Redis must keep its state
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "yes", "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    stack.callback(_stop, proc, "redis-server")
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + REDIS_START_S
    while not _redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ConfigError(f"redis-server on port {port} did not start; see {folder / 'redis.log'}")
        time.sleep(0.1)
    say(f"started redis-server pid {proc.pid} at {url} (state in {folder})")
    return url


def _stop(proc: subprocess.Popen, what: str) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    say(f"stopped {what} pid {proc.pid}")


def _demo_world(config: Config, seed: int, scans: int) -> list[bytes]:
    """The demo world's registry in ``registry.dir`` and its scan lines; output tables emptied."""
    from scanstream.cli.demo import DEMO_TABLES, DEMO_TENANT
    from scanstream.streams.synthetic import GUIDE_SALE_SHARE, build_world, generate_scans
    pairs = [k for t, k in config.keys.pairs() if t == DEMO_TENANT]
    if not pairs or config.registry_dir is None:
        raise ConfigError(f"--demo needs a key for tenant {DEMO_TENANT} and registry.dir (config/local.toml has both)")
    world = build_world(DEMO_TENANT, config.keys.get(DEMO_TENANT, max(pairs)), max(pairs))
    world.write_registry(config.registry_dir)
    sink = open_clickhouse(config)
    try:
        for table in DEMO_TABLES:
            sink.client.command(f"TRUNCATE TABLE IF EXISTS {table}")
    finally:
        sink.close()
    return generate_scans(world, scans, seed=seed, guide_share=GUIDE_SALE_SHARE)


def _publish_demo(config: Config, lines: list[bytes], stop: threading.Event) -> None:
    """The scan API's side: publish every scan, then await each outcome through Redis."""
    import orjson

    from scanstream.streams.publisher import InvalidEvent, PublishError, ScanPublisher, topic_partitions
    deadline = time.monotonic() + TOPIC_WAIT_S
    while not stop.is_set():  # the worker creates the topics as it starts
        try:
            topic_partitions(config.kafka.bootstrap, config.kafka.scans_topic, 2_000)
            break
        except Exception:  # noqa: BLE001 - kafka-python raises several kinds while a topic does not exist yet
            if time.monotonic() > deadline:
                say(f"demo: topic {config.kafka.scans_topic!r} did not appear within {TOPIC_WAIT_S:.0f} s")
                return
            time.sleep(0.5)
    events, refused = [], 0
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            event = None
        if isinstance(event, dict) and isinstance(event.get("scan_id"), str):
            events.append(event)
        else:
            refused += 1  # the demo's junk lines: a scan API would refuse them before publishing
    started = time.monotonic()
    verdicts: Counter = Counter()
    with ScanPublisher(config.kafka.bootstrap, config.kafka.scans_topic, redis_url=config.redis.url,
                       prefix=config.redis.prefix, redis_cluster=config.redis.cluster,
                       replay_ttl_s=config.engine.replay_ttl_s) as publisher:
        published = []
        for event in events:
            try:
                publisher.publish(event)
                published.append(event)
            except InvalidEvent:
                refused += 1
            except PublishError as exc:
                say(f"demo: publishing stopped: {exc}")
                return
        publisher.flush()
        say(f"demo: published {len(published):,} scans ({refused:,} lines refused as the scan API would)")
        missing = 0
        for event in published:
            if stop.is_set():
                return
            outcome = publisher.await_result(event["scan_id"], timeout=OUTCOME_WAIT_S, event=event)
            if outcome is None:
                missing += 1
            else:
                verdicts[outcome.get("verdict", "?")] += 1
    took = time.monotonic() - started
    mix = ", ".join(f"{v} {n:,}" for v, n in verdicts.most_common())
    say(f"demo: {sum(verdicts.values()):,} outcomes back in {took:.1f} s ({mix}); {missing:,} not answered")


def main(args: argparse.Namespace) -> int:
    if args.scans < 1:
        raise ConfigError(f"--scans {args.scans}: expected at least 1")
    base = load_config(args)  # the local configuration, checked before anything starts
    if not base.clickhouse:
        raise ConfigError("sink.clickhouse: dev writes to the embedded ClickHouse; set it (config/local.toml has it)")
    from scanstream.cli import worker
    from scanstream.cli.dashboard import WriterDashboard
    from scanstream.streams.broker import TansuBroker

    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(TansuBroker())
        stack.callback(say, f"stopped the broker at {broker.bootstrap}")
        say(f"started the Tansu broker pid {broker.pid} at {broker.bootstrap}")
        if _redis_answers(base.redis.url):
            redis_url = base.redis.url
            say(f"using the Redis at {base.redis.url.split('@')[-1]} (keys under {DEV_PREFIX!r})")
        else:
            data = Path(base.clickhouse.removeprefix("chdb:")).parent if base.clickhouse.startswith("chdb:") \
                else Path.cwd() / "data"
            redis_url = _start_redis(data / "dev-redis", stack)
        args.overrides = {"state": {"backend": "redis"}, "redis": {"url": redis_url, "prefix": DEV_PREFIX},
                          "kafka": {"bootstrap": broker.bootstrap, "partitions": DEV_PARTITIONS}}
        config = load_config(args)
        stop = threading.Event()
        stack.callback(stop.set)
        if args.demo:
            from scanstream.wiring import build_state
            state = build_state(config)
            state.flush_prefix()  # the demo starts its world over, as `scanstream demo` does
            state.close()
            lines = _demo_world(config, args.seed, args.scans)
        dashboard = WriterDashboard(config, "127.0.0.1", args.dashboard_port)
        stack.callback(dashboard.close)
        dashboard.attach(open_clickhouse(config, create_schema=True))
        say(f"dashboard {dashboard.url} · metrics http://127.0.0.1:{args.metrics_port}/metrics · Ctrl-C stops all")
        if args.demo:
            threading.Thread(target=_publish_demo, args=(config, lines, stop), name="dev-demo", daemon=True).start()
        worker_args = argparse.Namespace(config=getattr(args, "config", None), overrides=args.overrides,
                                         web_port=None, metrics_port=args.metrics_port, metrics_host="127.0.0.1",
                                         loglevel=args.loglevel)
        try:
            status = worker.main(worker_args)  # runs until Ctrl-C / SIGTERM, or a permanent error
        except SystemExit as exc:  # the worker stopped as asked
            status = 0 if exc.code in (None, 0) else int(exc.code) if isinstance(exc.code, int) else 1
        except KeyboardInterrupt:
            status = 0
    print("scanstream dev: everything it started has stopped", file=sys.stderr)
    return status
