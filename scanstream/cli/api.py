"""``scanstream api``: the HTTP scan gateway (``scanstream.api``) on uvicorn."""
from __future__ import annotations

import argparse

from scanstream.cli.common import config_option, load_config
from scanstream.cli.worker import _host, _port


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", parents=[config_option()],
                       help="serve the HTTP scan gateway: POST /v1/scans publishes a scan and answers its outcome")
    p.add_argument("--host", type=_host, default=None, help="listen on this address (default: [api] host, 127.0.0.1)")
    p.add_argument("--port", type=_port, default=None, help="listen on this port (default: [api] port, 8080)")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    config = load_config(args)
    from scanstream.api.app import serve

    server = serve(config, args.host, args.port, args.loglevel)
    server.run()  # until SIGINT/SIGTERM; the broker and Redis may come later (/readyz says when)
    return 0 if server.started else 5
