"""Fault test 1, crash: ``kill -9`` the worker at random moments while it processes, restart it.

The stream (a campaign whose stock runs out mid-stream) is published while the worker is
being killed, so kills land between any two steps of the commit order: in the pipeline (after
the claims, after the grants), during the ClickHouse inserts, before or after the Redis
replies, while the outputs are produced, around the offset commit.  Afterwards every promise
is checked by query (``checks.check_promises``).  Short form: 30 000 scans, 5 kills; long
form (``SCANSTREAM_FAULTS=long``): 200 000 scans, 20 kills.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from . import checks, processes
from . import harness as h

SCALE = h.scale()
pytestmark = [pytest.mark.skipif(processes.SCANSTREAM is None, reason="the scanstream console script is not installed"),
              pytest.mark.timeout(300 if SCALE.name == "short" else 7200)]


def test_kill_9_at_random_points_loses_and_doubles_nothing(broker, redis_url, tmp_path):
    rep = h.crash_scenario(tmp_path, broker.bootstrap, redis_url, SCALE)
    checks.assert_report(rep)
    assert rep.kills >= SCALE.crash_kills
    assert rep.lost == 0 and rep.doubled == 0 and rep.prizes > 0 and rep.out_of_stock > 0


def test_kill_9_at_random_points_on_a_redis_cluster_loses_and_doubles_nothing(broker, redis_cluster_url, tmp_path):
    """The same on a real Redis Cluster of three primaries: a kill may now also land between the
    two steps of a claim (the scan_ids' identities, then the codes' bits, on other nodes) and
    between the per-shard calls of one step."""
    # CI's short form runs it at half the stream and three kills: the same paths, in CI's time budget
    scale = replace(SCALE, crash_scans=SCALE.crash_scans // 2, crash_kills=3) if SCALE.name == "short" else SCALE
    rep = h.crash_scenario(tmp_path, broker.bootstrap, redis_cluster_url, scale, cluster=True)
    checks.assert_report(rep)
    assert rep.kills >= scale.crash_kills
    assert rep.lost == 0 and rep.doubled == 0 and rep.prizes > 0 and rep.out_of_stock > 0
