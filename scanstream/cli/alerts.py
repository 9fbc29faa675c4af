"""``scanstream alerts retry``: send again the alert deliveries that a deadline left pending."""
from __future__ import annotations

import argparse
import sys

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config, require_clickhouse
from scanstream.wiring import build_registry


def register(sub: argparse._SubParsersAction) -> None:
    alerts = sub.add_parser("alerts", help="alert deliveries to dealers' managers")
    actions = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    retry = actions.add_parser("retry", parents=[config_option()],
                               help="send again every alert whose latest delivery is pending")
    retry.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                       help="stop trying after this long (default: alerts.run_deadline_s)")
    retry.set_defaults(handler=run_retry)


def run_retry(args: argparse.Namespace) -> int:
    """Exit 0 when nothing is left pending, ``exits.CHECK_FAILED`` when some deliveries are still pending
    or failed."""
    from scanstream.sinks.alerting import retry_pending
    from scanstream.sinks.notifiers import WebhookNotifier
    from scanstream.sinks.webhook_addresses import AddressPolicy
    config = load_config(args)
    a = config.alerts
    deadline = a.run_deadline_s if args.deadline is None else args.deadline
    if not deadline > 0:  # also refuses nan
        print(f"scanstream: --deadline {args.deadline}: expected a number of seconds above 0", file=sys.stderr)
        return exits.USAGE
    sink = require_clickhouse(config)
    try:
        registry = build_registry(config, sink)
        notifier = WebhookNotifier(timeout_s=a.timeout_s, retries=a.retries, backoff_s=a.backoff_s,
                                   address_policy=AddressPolicy(allow_loopback=a.allow_loopback))
        result = retry_pending(sink, registry, notifier, deadline, allow_loopback=a.allow_loopback)
    finally:
        sink.close()
    print(f"pending alerts found: {result.found}; delivered {result.delivered}, failed {result.failed}, "
          f"still pending {result.pending}")
    return exits.OK if result.pending == 0 and result.failed == 0 else exits.CHECK_FAILED
