"""``scanstream worker``: a Faust worker consuming the ``scans`` topic."""
from __future__ import annotations

import argparse
import logging
import sys

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config, open_clickhouse
from scanstream.engine.config import Config, ConfigError, host_value

#: The highest TCP port number.
PORT_MAX = 65535


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", parents=[config_option()],
                       help="consume scans from Kafka (Faust), write outcomes to ClickHouse, Redis and Kafka")
    p.add_argument("--web-port", type=int, default=None, help="serve Faust's web view on this port (default: off)")
    p.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                   help="serve Prometheus metrics on HOST:PORT/metrics (default: off)")
    p.add_argument("--metrics-host", type=_host, default=None, metavar="HOST",
                   help="the address or host name the metrics listen on (default: [kafka] metrics_host, "
                        "else 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=main)


def _port(text: str) -> int:
    """``--metrics-port``: a TCP port a scraper can be pointed at (0, "any free port", cannot)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= PORT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; expected an integer 1..{PORT_MAX}")
    return port


def _host(text: str) -> str:
    """``--metrics-host``, checked as the configuration key is; a bad one is a usage error."""
    try:
        return host_value(text, "--metrics-host")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def metrics_address(config: Config, host: str | None, port: int | None) -> tuple[str, int] | None:
    """Where the worker serves its metrics: ``(host, port)``, or None when ``--metrics-port`` is not given.

    ``--metrics-host`` wins over ``[kafka] metrics_host``, whose default is loopback, so a worker
    exposes its metrics beyond the machine only when told to.
    """
    if port is None:
        return None
    return (host if host is not None else config.kafka.metrics_host), port


def main(args: argparse.Namespace) -> int:
    try:  # uvloop before anything creates an event loop
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; Windows has none
        pass
    import faust

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
    from scanstream.engine.state.redis import connect
    # the same client options as the state store: a dead server fails the step (retried), never hangs it
    replies = connect(config.redis.url, cluster=config.redis.cluster) if config.redis.replies else None
    alerting = build_alerting(config, registry, clickhouse)
    handler = BatchHandler(config, pipeline, clickhouse, replies, alerting)
    reloader = RegistryReloader(config, pipeline, lambda: build_registry(config, clickhouse), clickhouse,
                                alerting=alerting)
    metrics = WorkerMetrics()
    address = metrics_address(config, args.metrics_host, args.metrics_port)
    if address is not None:
        metrics.serve(address[1], address[0])
    app, status = build_app(config, handler, reloader, web_port=args.web_port, metrics=metrics)
    worker = faust.Worker(app, loglevel=args.loglevel.upper(), quiet=True)
    try:
        worker.execute_from_commandline()  # runs until SIGINT/SIGTERM, or a permanent error
    except SystemExit:
        if not status.fatal:
            raise
    finally:
        alerting.close(timeout=config.alerts.run_deadline_s)  # open digests go out on shutdown, within the deadline
    print(f"scanstream worker: stopped: {status.fatal}", file=sys.stderr)
    # permanent: restarting unchanged fails the same way, unlike a service outage, which it retries
    return exits.DATA
