"""Fault test 5, tenant isolation: two tenants, a campaign each, forged codes, one real worker.

Tenant A (7) and tenant B (8) have their own keys, registries and campaigns; B's campaign is
listed first and covers the same skus, so a scan of A's code that leaked into B's campaign
would be paid by it.  Forgeries: B's tenant id signed with A's key (``bad_mac``), B's tenant
id with a key_id B does not have (``unknown_tenant``), A's tenant id signed with B's key
under a key_id A has not (``unknown_tenant``) or has (``bad_mac``), an unconfigured tenant.
"""
from __future__ import annotations

import os

import pytest

from . import checks, processes
from . import harness as h

SCALE = h.scale()


@pytest.mark.skipif(processes.SCANSTREAM is None, reason="the scanstream console script is not installed")
@pytest.mark.timeout(300 if SCALE.name == "short" else 3600)
def test_a_code_of_one_tenant_never_wins_in_another_tenants_campaign(broker, redis_deployment, tmp_path):
    rep = h.tenants_scenario(tmp_path, broker.bootstrap, redis_deployment.url, SCALE, cluster=redis_deployment.cluster)
    checks.assert_report(rep)
    assert rep.extra["forged codes"] == {"bad_mac": 400, "unknown_tenant": 600}


def test_forged_tenant_with_another_tenants_mac_fails_in_the_verifier():
    from scanstream.engine.codec import verify as reference_verify
    from scanstream.engine.keys import KeyTable
    from scanstream.ext import codec

    a, b = os.urandom(16), os.urandom(16)
    keys = KeyTable({(7, 1): a, (8, 0): b})
    cases = {
        codec.encode(a, 7, 101, 5, key_id=1): "ok",
        codec.encode(b, 8, 101, 5, key_id=0): "ok",
        codec.encode(a, 8, 101, 5, key_id=0): "bad_mac",  # B's id, A's key
        codec.encode(b, 7, 101, 5, key_id=1): "bad_mac",  # A's id, B's key
        codec.encode(a, 8, 101, 5, key_id=1): "unknown_tenant",  # B has no key_id 1
        codec.encode(b, 7, 101, 5, key_id=0): "unknown_tenant",  # A has no key_id 0
        codec.encode(a, 9, 101, 5, key_id=1): "unknown_tenant",
    }
    from scanstream.engine.verdicts import LABELS
    got = codec.verify_batch(list(cases), keys)
    assert [LABELS[v] for v in got.verdict.tolist()] == list(cases.values())
    assert [LABELS[reference_verify(c, keys).verdict] for c in cases] == list(cases.values())
