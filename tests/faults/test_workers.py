"""Fault test 7, several workers: four workers in one group on 8 partitions, one killed with kill -9.

The whole stream is a backlog the group works through; once about a third is answered one
worker is killed.  Its partitions wait for its session to time out, the group rebalances and
the three survivors take them over, with the batches it had processed but not committed.
Afterwards every promise is checked (nothing lost, answered twice differently or paid twice;
budget, stock and caps kept), and that every partition the killed worker served was served by
a survivor after the kill.  The figures (``pytest -s``) give each worker's scans before and
after the kill, the stall of the rebalance and the survivors' rate against the group's before.
"""
from __future__ import annotations

import pytest

from . import checks, processes
from . import harness as h

SCALE = h.scale()
#: Workers in the group: four on 8 partitions, two partitions each before the kill.
WORKERS = 4
pytestmark = [pytest.mark.skipif(processes.SCANSTREAM is None, reason="the scanstream console script is not installed"),
              pytest.mark.timeout(300 if SCALE.name == "short" else 3600)]


def _assert_taken_over(rep: checks.Report) -> None:
    checks.assert_report(rep)
    assert rep.kills == 1
    assert rep.lost == 0 and rep.doubled == 0 and rep.prizes > 0 and rep.out_of_stock > 0


def test_four_workers_one_killed_the_survivors_take_over(broker, redis_url, tmp_path):
    rep = h.workers_scenario(tmp_path, broker.bootstrap, redis_url, SCALE, workers=WORKERS)
    _assert_taken_over(rep)


def test_four_workers_one_killed_on_a_redis_cluster(broker, redis_cluster_url, tmp_path):
    """The same on a real Redis Cluster: the kill may also land between the per-shard calls of a step."""
    rep = h.workers_scenario(tmp_path, broker.bootstrap, redis_cluster_url, SCALE, workers=WORKERS, cluster=True)
    _assert_taken_over(rep)
