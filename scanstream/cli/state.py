"""``scanstream state migrate``: bring the Redis state store's keys to this version's layout."""
from __future__ import annotations

import argparse

from scanstream.cli import exits
from scanstream.cli.common import config_option, load_config
from scanstream.engine.config import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    state = sub.add_parser("state", help="maintain the Redis state store")
    actions = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    migrate = actions.add_parser(
        "migrate", parents=[config_option()],
        help="bring the keys of an older layout under redis.prefix to this version's (stop every worker first)")
    migrate.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    config = load_config(args)
    if config.state_backend != "redis":
        raise ConfigError(f"state.backend: {config.state_backend!r}: only the Redis state store has key layouts")
    from scanstream.engine.state.redis import LAYOUT, RedisStateStore

    store = RedisStateStore.from_url(config.redis.url, prefix=config.redis.prefix, cluster=config.redis.cluster,
                                     check_layout=False)
    try:
        renamed = store.migrate_layout()
    finally:
        store.close()
    moved = ", ".join(f"{n} {family}" for family, n in sorted(renamed.items())) or "nothing to change"
    print(f"state of prefix {config.redis.prefix!r} is at layout {LAYOUT}: {moved}")
    return exits.OK
