"""``scanstream worker``: a Faust worker consuming the ``scans`` topic."""
from __future__ import annotations

import argparse
import logging

from scanstream.cli.common import config_option, load_config, open_clickhouse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", parents=[config_option()],
                       help="consume scans from Kafka (Faust), write outcomes to ClickHouse, Redis and Kafka")
    p.add_argument("--web-port", type=int, default=None, help="serve Faust's web view on this port (default: off)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (default: off)")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    try:  # uvloop before anything creates an event loop
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows has none
        pass
    import faust
    import redis as redis_py

    from scanstream.wiring import build_alerting, build_pipeline, build_registry, build_state
    from scanstream.streams.app import build_app
    from scanstream.streams.metrics import WorkerMetrics
    from scanstream.streams.topics import ensure_topics
    from scanstream.streams.worker import BatchHandler, RegistryReloader

    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args)
    ensure_topics(config.kafka)
    clickhouse = open_clickhouse(config)
    registry = build_registry(config, clickhouse)
    if clickhouse is not None and config.registry_source == "files":
        from scanstream.sinks.registry_tables import publish_registry
        publish_registry(clickhouse, registry)
    pipeline = build_pipeline(config, registry, build_state(config))
    from scanstream.engine.state.redis import CLIENT_OPTIONS
    # the same timeouts as the state store: a dead server fails the step (retried), never hangs it
    replies = redis_py.Redis.from_url(config.redis.url, **CLIENT_OPTIONS) if config.redis.replies else None
    alerting = build_alerting(config, registry, clickhouse)
    handler = BatchHandler(config, pipeline, clickhouse, replies, alerting)
    reloader = RegistryReloader(config, pipeline, clickhouse, alerting=alerting)
    metrics = WorkerMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    app, _ = build_app(config, handler, reloader, web_port=args.web_port, metrics=metrics)
    worker = faust.Worker(app, loglevel=args.loglevel.upper(), quiet=True)
    try:
        worker.execute_from_commandline()  # runs until SIGINT/SIGTERM
    finally:
        alerting.close(timeout=config.alerts.run_deadline_s)  # open digests go out on shutdown, within the deadline
    return 0
