"""Pieces shared by the sub-commands: the --config option, opening the configured ClickHouse."""
from __future__ import annotations

import argparse

from scanstream.engine import config as config_mod
from scanstream.engine.config import CONFIG_ENV, Config, ConfigError


def config_option() -> argparse.ArgumentParser:
    """A parent parser so ``--config`` works before and after the sub-command name."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"deployment configuration (default: ${CONFIG_ENV}, else config/local.toml)")
    return parent


def load_config(args: argparse.Namespace) -> Config:
    return config_mod.load(getattr(args, "config", None), getattr(args, "overrides", None))


def open_clickhouse(config: Config, *, create_schema: bool = True):
    """The ClickHouse sink of ``[sink] clickhouse``, schema applied; None when none is configured."""
    if not config.clickhouse:
        return None
    from scanstream.sinks.clickhouse import ClickHouseSink, connect
    sink = ClickHouseSink(connect(config.clickhouse, database=config.database))
    if create_schema:
        sink.ensure_schema()
        from scanstream.sinks.registry_tables import publish_campaigns
        publish_campaigns(sink, config.campaigns)  # budgets live in the config; the views need them
    return sink


def require_clickhouse(config: Config):
    sink = open_clickhouse(config)
    if sink is None:
        raise ConfigError("sink.clickhouse: no ClickHouse is configured (e.g. clickhouse = \"chdb:../data/chdb\")")
    return sink
