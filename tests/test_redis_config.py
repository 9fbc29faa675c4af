"""A Redis configured to forget claims or to stall its clients is named at every start.

``RedisStateStore.server_advice`` reads each primary's ``appendonly`` and ``lazyfree-lazy-expire``;
``wiring.build_state`` logs what it finds.  Real servers: the shared test Redis (neither set, as
``.ci/services.sh`` starts it), private ``redis-server`` processes with both set and with CONFIG
renamed away (a managed service's refusal), and the test Redis Cluster.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import redis

from redis_cluster import _free_ports
from scanstream.engine.state.redis import RedisStateStore
from scanstream.wiring import build_state
from test_worker import LOCAL_TOML

START_TIMEOUT_S = 20.0


@contextmanager
def private_redis(*extra: str):
    """A ``redis-server`` of this test on a free port with ``extra`` arguments; its URL."""
    (port,) = _free_ports(1)
    home = Path(tempfile.mkdtemp(prefix="scanstream-redis-config-"))
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", str(home), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)


def _store(url: str, cluster: bool = False) -> RedisStateStore:
    return RedisStateStore.from_url(url, prefix=f"scanstream-test:{uuid.uuid4().hex[:12]}:", cluster=cluster)


def test_a_server_that_would_forget_claims_or_stall_is_named(redis_url):
    store = _store(redis_url)
    try:
        advice = store.server_advice()
    finally:
        store.close()
    assert len(advice) == 2
    assert "appendonly is 'no'" in advice[0] and "codes pay again" in advice[0] and redis_url in advice[0]
    assert "lazyfree-lazy-expire is 'no'" in advice[1] and "set lazyfree-lazy-expire yes" in advice[1]


def test_a_server_with_both_set_gets_no_advice():
    with private_redis("--appendonly", "yes", "--lazyfree-lazy-expire", "yes") as url:
        store = _store(url)
        try:
            assert store.server_advice() == []
        finally:
            store.close()


def test_a_server_that_refuses_config_is_named_for_a_check_by_hand():
    with private_redis("--rename-command", "CONFIG", "") as url:
        store = _store(url)
        try:
            (advice,) = store.server_advice()
        finally:
            store.close()
    assert "CONFIG GET refused" in advice and "appendonly yes and lazyfree-lazy-expire yes" in advice


def test_every_primary_of_a_cluster_is_asked(redis_cluster_url):
    store = _store(redis_cluster_url, cluster=True)
    try:
        advice = store.server_advice()
        primaries = {name for name, _, _ in store._primaries()}
    finally:
        store.close()
    assert len(primaries) == 3
    # two findings (the test cluster keeps nothing on disk and frees in its main thread) per primary
    assert sorted(a.split()[1].rstrip(":") for a in advice) == sorted(list(primaries) * 2)


def test_the_worker_and_the_local_driver_log_it_at_start(redis_url, caplog):
    from scanstream.engine.config import load

    config = load(LOCAL_TOML)
    config = replace(config, state_backend="redis",
                     redis=replace(config.redis, url=redis_url, prefix=f"scanstream-test:{uuid.uuid4().hex[:12]}:"))
    with caplog.at_level(logging.WARNING, logger="scanstream.wiring"):
        store = build_state(config)
    store.close()
    logged = [r.getMessage() for r in caplog.records if r.name == "scanstream.wiring"]
    assert any("appendonly is 'no'" in m for m in logged) and any("lazyfree-lazy-expire" in m for m in logged)


def test_an_embedded_store_has_no_server_to_advise(caplog):
    from scanstream.engine.config import load

    with caplog.at_level(logging.WARNING, logger="scanstream.wiring"):
        build_state(replace(load(LOCAL_TOML), state_backend="memory", state_path=None))
    assert not [r for r in caplog.records if r.name == "scanstream.wiring"]
