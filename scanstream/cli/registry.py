"""``scanstream registry``: check registry CSV files, or publish them to ClickHouse for workers."""
from __future__ import annotations

import argparse
from pathlib import Path

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config, require_clickhouse
from scanstream.engine.registry import Registry


def register(sub: argparse._SubParsersAction) -> None:
    reg = sub.add_parser("registry", help="check or publish the registry (batches, dealers, shipments, stores)")
    actions = reg.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", parents=[config_option()], help="validate the CSV files")
    check.add_argument("--dir", required=True, help="folder of batches.csv, dealers.csv, shipments.csv, stores.csv "
                                                    "[, activations.csv, packing.csv]")
    check.set_defaults(handler=run_check)
    publish = actions.add_parser("publish", parents=[config_option()],
                                 help="replace the ClickHouse registry tables with the CSV files (workers reload)")
    publish.add_argument("--dir", required=True, help="folder of batches.csv, dealers.csv, shipments.csv, stores.csv "
                                                      "[, activations.csv, packing.csv]")
    publish.set_defaults(handler=run_publish)


def _describe(registry: Registry) -> str:
    return (f"{len(registry.batches.key)} batches ({int(registry.batches.activated.sum())} activated), "
            f"{len(registry.dealers.dealer_id)} dealers, {len(registry.shipments.start)} shipments, "
            f"{len(registry.stores.index)} stores, {len(registry.activations.start)} activation ranges, "
            f"{len(registry.packing.start)} packed ranges")


def run_check(args: argparse.Namespace) -> int:
    print(f"ok: {_describe(Registry.load(Path(args.dir)))}")  # a bad row raises RegistryError: exits.DATA
    return exits.OK


def run_publish(args: argparse.Namespace) -> int:
    from scanstream.sinks.registry_tables import publish_registry
    registry = Registry.load(Path(args.dir))
    sink = require_clickhouse(load_config(args))
    try:
        written = publish_registry(sink, registry)
    finally:
        sink.close()
    print(f"published {_describe(registry)}: " + ", ".join(f"{t} {n}" for t, n in written.items()))
    return exits.OK
