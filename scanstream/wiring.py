"""Builds a ready Pipeline from a configuration: registry, state store and GPS resolver.

The only place that turns configuration choices (``state.backend = "memory"`` ...) into
objects, so the local driver and the Faust worker assemble the engine the same way.
"""
from __future__ import annotations

import logging

from scanstream.engine.config import Config, ConfigError
from scanstream.engine.pipeline import Pipeline
from scanstream.engine.registry import Registry
from scanstream.engine.state import StateStore

log = logging.getLogger("scanstream.wiring")


def build_registry(config: Config, clickhouse=None) -> Registry:
    """The registry of ``[registry]``: the CSV folder, the ClickHouse tables, or empty."""
    if config.registry_source == "clickhouse":
        from scanstream.sinks.registry_tables import read_registry
        if clickhouse is None:
            raise ConfigError("registry.source: reading the registry from ClickHouse needs an open sink")
        return read_registry(clickhouse)
    if config.registry_dir is None:
        return Registry.empty()
    if not config.registry_dir.is_dir():
        raise ConfigError(f"registry.dir: {str(config.registry_dir)!r} is not a folder; it must hold batches.csv, "
                          f"dealers.csv, shipments.csv and stores.csv (scanstream demo writes a sample)")
    return Registry.load(config.registry_dir)


def build_state(config: Config) -> StateStore:
    """The state store of ``[state]``: Redis, the embedded store on disk at ``path``, or (no path)
    the memory store, which forgets everything when the process ends.  A Redis configured so that
    it would forget claims or stall its clients is logged as a warning (``server_advice``)."""
    if config.state_backend == "memory":
        if config.state_path is not None:
            from scanstream.engine.state.embedded import EmbeddedStateStore
            return EmbeddedStateStore(config.state_path, replay_ttl_s=config.engine.replay_ttl_s)
        from scanstream.engine.state.memory import MemoryStateStore
        return MemoryStateStore(replay_ttl_s=config.engine.replay_ttl_s)
    from scanstream.engine.state.redis import RedisStateStore
    store = RedisStateStore.from_url(config.redis.url, prefix=config.redis.prefix, cluster=config.redis.cluster,
                                     replay_ttl_s=config.engine.replay_ttl_s,
                                     wait_replicas=config.redis.wait_replicas,
                                     wait_timeout_ms=config.redis.wait_timeout_ms)
    for advice in store.server_advice():  # at every start, where the operator reads the log
        log.warning("%s", advice)
    return store


def build_pipeline(config: Config, registry: Registry | None = None, state: StateStore | None = None) -> Pipeline:
    resolve = None
    if config.engine.resolve_gps:
        from scanstream.engine.geo import AdcodeIndex
        resolve = AdcodeIndex.load().resolve
    return Pipeline(config, registry if registry is not None else build_registry(config),
                    state if state is not None else build_state(config), resolve_gps=resolve)


def build_alerting(config: Config, registry: Registry, clickhouse=None):
    """Alert delivery: logs always, webhooks when ``alerts.webhooks`` is on, within the deadlines
    of ``[alerts]``; webhooks on link-local, private or (unless ``allow_loopback``) loopback
    addresses refused.  With a ClickHouse, deliveries left pending by an earlier run are sent again."""
    from scanstream.sinks.alerting import AlertDelivery
    from scanstream.sinks.notifiers import WebhookNotifier
    from scanstream.sinks.webhook_addresses import AddressPolicy
    a = config.alerts
    notifier = None
    if a.webhooks:
        notifier = WebhookNotifier(timeout_s=a.timeout_s, retries=a.retries, backoff_s=a.backoff_s,
                                   address_policy=AddressPolicy(allow_loopback=a.allow_loopback))
    return AlertDelivery(registry, notifier, clickhouse, grace_ms=a.digest_grace_s * 1000,
                         batch_deadline_s=a.batch_deadline_s, run_deadline_s=a.run_deadline_s,
                         allow_loopback=a.allow_loopback)
