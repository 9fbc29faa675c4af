"""Creates the worker's topics when the broker does not have them yet."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from scanstream.engine.config import KafkaSettings
from scanstream.engine.errors import TransientError

log = logging.getLogger("scanstream.topics")


def topic_names(k: KafkaSettings) -> list[str]:
    return [k.scans_topic, k.results_topic, k.awards_topic, k.alerts_topic, k.dlq_topic]


class BrokerUnavailable(TransientError):
    """No bootstrap broker answered within ``kafka.connect_timeout_s``: the worker cannot start.

    Transient: the same command succeeds once the broker runs (the CLI exits 5)."""


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a client library's logger while its failure is reported by the caller in one line.

    kafka-python logs every failed bootstrap attempt (one ERROR line per backoff), which buries
    the one line an operator needs under dozens of repeats."""
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


def ensure_topics(k: KafkaSettings) -> list[str]:
    """Create the missing topics with ``kafka.partitions`` partitions; returns the ones created.

    Raises ``BrokerUnavailable`` (naming ``kafka.bootstrap``) when no broker answers within
    ``kafka.connect_timeout_s``."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaTimeoutError, TopicAlreadyExistsError

    timeout_ms = int(k.connect_timeout_s * 1000)
    try:
        with _quiet("kafka"):
            admin = KafkaAdminClient(bootstrap_servers=k.bootstrap.split(","), client_id="scanstream-admin",
                                     bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)
    except KafkaTimeoutError as exc:
        raise BrokerUnavailable(f"no Kafka broker answered at {k.bootstrap} within {k.connect_timeout_s:g} s "
                                f"(kafka.bootstrap, kafka.connect_timeout_s): is it running and reachable "
                                f"from here?") from exc
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
