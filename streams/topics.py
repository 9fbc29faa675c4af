"""Creates the worker's topics when the broker does not have them yet."""
from __future__ import annotations

import logging

from scanstream.engine.config import KafkaSettings

log = logging.getLogger("scanstream.topics")


def topic_names(k: KafkaSettings) -> list[str]:
    return [k.scans_topic, k.results_topic, k.awards_topic, k.alerts_topic, k.dlq_topic]


def ensure_topics(k: KafkaSettings, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics with ``kafka.partitions`` partitions; returns the ones created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=k.bootstrap.split(","), client_id="scanstream-admin",
                             request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topic_names(k) if t not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(t, num_partitions=k.partitions, replication_factor=1) for t in missing])
            except TopicAlreadyExistsError:  # another worker was quicker
                pass
            log.info("created topics %s with %d partitions", missing, k.partitions)
        return missing
    finally:
        admin.close()
