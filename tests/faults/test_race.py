"""Fault test 2, race: two workers in one consumer group and rebalances in the middle.

The first worker runs alone, the second joins mid-stream (a rebalance hands it partitions,
possibly with batches the first had taken but not committed), then the first is stopped with
SIGTERM (another rebalance).  Each worker has its own chdb folder; the check merges them into
one store, as one ClickHouse server would hold both workers' rows, and checks every promise.
"""
from __future__ import annotations

import pytest

from . import checks, processes
from . import harness as h

SCALE = h.scale()
pytestmark = [pytest.mark.skipif(processes.SCANSTREAM is None, reason="the scanstream console script is not installed"),
              pytest.mark.timeout(300 if SCALE.name == "short" else 3600)]


def test_second_worker_joins_then_first_leaves(broker, redis_url, tmp_path):
    rep = h.race_scenario(tmp_path, broker.bootstrap, redis_url, SCALE)
    checks.assert_report(rep)
    assert rep.lost == 0 and rep.doubled == 0 and rep.prizes > 0


def test_second_worker_joins_then_first_leaves_on_a_redis_cluster(broker, redis_cluster_url, tmp_path):
    """Two workers sharing a real Redis Cluster: rebalanced partitions, nothing lost or paid twice."""
    rep = h.race_scenario(tmp_path, broker.bootstrap, redis_cluster_url, SCALE, cluster=True)
    checks.assert_report(rep)
    assert rep.lost == 0 and rep.doubled == 0 and rep.prizes > 0
