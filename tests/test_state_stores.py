"""The state stores (engine.state): one contract, two backends, identical answers.

Every behavioural case runs over the memory store and the Redis store (a unique key prefix
per test, deleted afterwards).  Then differential tests feed the same random call sequences,
and the real Pipeline the same synthetic scan stream, through both and require equal outputs,
call by call.  The Redis cases use ``tests/conftest.py``'s ``redis_url`` (the Redis of
``.ci/services.sh``): a Redis that does not answer fails them.

Expectations come from the interface docstrings in ``engine/state/__init__.py`` and DESIGN.md
("Verdicts", "Campaign"), worked out by hand.
"""
from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanstream.engine import config as config_mod
from scanstream.engine.pipeline import Pipeline
from scanstream.engine.registry import Registry, batch_key
from scanstream.engine.state import (CampaignLimits, CampaignState, DrawStatus, GrantRequests, StateStore, pack_answer,
                                     state_keys)
from scanstream.engine.state.embedded import EmbeddedStateStore
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.engine.state import StateUnavailable
from scanstream.engine.state.set_log import unpack_call
from scanstream.engine.state.redis import (CHUNK_BYTES, CHUNK_SERIALS, OldStateLayout, RedisStateStore, chunk_shards,
                                          good_length)
from scanstream.engine.state.redis_lua import LUA_PRELUDE, SHARD_TAGS, pack_strings, shard_key
from redis.crc import key_slot
from scanstream.engine.verdicts import Verdict

OK, REPEAT, BAD_MAC, NOT_ACTIVATED, CONFLICT = (Verdict.OK, Verdict.REPEAT, Verdict.BAD_MAC, Verdict.NOT_ACTIVATED,
                                             Verdict.CONFLICT)
WON, NO_PRIZE, OUT_OF_STOCK, BUDGET, CAP = (DrawStatus.WON, DrawStatus.NO_PRIZE, DrawStatus.OUT_OF_STOCK,
                                             DrawStatus.BUDGET, DrawStatus.CAP)
SERIAL_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
CODE = int(batch_key(7, 0, 42))


# --- stores ------------------------------------------------------------------------------------

@contextmanager
def open_store(kind: str, url: str | None = None, replay_ttl_s: int = 3600):
    """A fresh store of ``kind``; a Redis one (on ``url``; ``cluster``: on the Redis Cluster whose
    node ``url`` is) gets a unique prefix, deleted on exit."""
    if kind == "memory":
        yield MemoryStateStore(replay_ttl_s=replay_ttl_s)
        return
    if kind == "embedded":
        with tempfile.TemporaryDirectory() as folder:
            store = EmbeddedStateStore(Path(folder) / "state.sqlite", replay_ttl_s=replay_ttl_s)
            try:
                yield store
            finally:
                store.close()
        return
    store = RedisStateStore.from_url(url, prefix=f"scanstream-test:{uuid.uuid4().hex[:12]}:",
                                     replay_ttl_s=replay_ttl_s, cluster=kind == "cluster")
    try:
        yield store
    finally:
        store.flush_prefix()
        store.close()


def answers_on_every_backend(call, rows: list, sizes: tuple[int, ...], redis_url: str,
                             cluster_url: str | None = None) -> list:
    """``call(store, rows)`` over ``rows`` cut into batches of ``sizes``, on a fresh memory, embedded
    and Redis store, and a Redis Cluster's when ``cluster_url`` is given; their answers, each a list
    of the rows' answers in order."""
    assert sum(sizes) == len(rows)
    answers = []
    for backend in ("memory", "embedded", "redis") + (("cluster",) if cluster_url else ()):
        with open_store(backend, cluster_url if backend == "cluster" else redis_url) as s:
            got, i = [], 0
            for size in sizes:
                got += call(s, rows[i:i + size])
                i += size
            answers.append(got)
    return answers


@pytest.fixture(params=["memory", "redis", "embedded", "cluster"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def make_store(kind, request):
    """``make_store(replay_ttl_s=...)``: a context manager giving a fresh store of ``kind``."""
    url = {"redis": "redis_url", "cluster": "redis_cluster_url"}.get(kind)
    url = request.getfixturevalue(url) if url else None
    return lambda **options: open_store(kind, url, **options)


@pytest.fixture(scope="module", params=["redis", "cluster"])
def server(request) -> tuple[str, str]:
    """A Redis store's kind and URL: a single server, then a real Redis Cluster."""
    fixture = {"redis": "redis_url", "cluster": "redis_cluster_url"}[request.param]
    return request.param, request.getfixturevalue(fixture)


@pytest.fixture
def store(make_store):
    with make_store() as s:
        yield s


@pytest.fixture
def redis_store(redis_url):
    with open_store("redis", redis_url) as s:
        yield s


def claim(store: StateStore, rows: list[tuple], full: bool = False) -> list[tuple]:
    """Claim ``(scan_id, code, serial, verdict[, fingerprint[, user]])`` rows; (verdict, replay) per row,
    and the first user too when ``full``.

    Without a fingerprint a row's event is its scan_id's one event (fingerprint 1), user ``u``:
    the redeliveries of the older cases.
    """
    rows = [tuple(r) + (1, "u")[len(r) - 4:] for r in rows]
    if rows:
        ids, codes, serials, verdicts, fps, users = zip(*rows)
    else:
        ids, codes, serials, verdicts, fps, users = (), (), (), (), (), ()
    c = store.claim(np.array(ids, dtype=object), np.array(fps, np.uint64), np.array(users, dtype=object),
                    np.array(codes, np.uint64), np.array(serials, np.uint32), np.array(verdicts, np.uint8))
    assert c.verdict.dtype == np.uint8 and c.replay.dtype == bool and c.first_user.dtype == object
    if full:
        return list(zip(c.verdict.tolist(), c.replay.tolist(), c.first_user.tolist()))
    return list(zip(c.verdict.tolist(), c.replay.tolist()))


def u64(values) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


# --- claim -------------------------------------------------------------------------------------

def test_first_scan_ok_then_repeat_across_batches(store):
    assert claim(store, [("s1", CODE, 5, OK)]) == [(OK, False)]
    assert claim(store, [("s2", CODE, 5, OK)]) == [(REPEAT, False)]
    assert claim(store, [("s3", CODE, 5, OK), ("s4", CODE, 6, OK)]) == [(REPEAT, False), (OK, False)]


def test_duplicate_codes_in_a_batch_only_the_first_is_ok(store):
    rows = [("a", CODE, 9, OK), ("b", CODE, 9, OK), ("c", CODE, 10, OK), ("d", CODE, 9, OK)]
    assert claim(store, rows) == [(OK, False), (REPEAT, False), (OK, False), (REPEAT, False)]


def test_scan_id_replayed_in_the_same_batch_gets_the_first_answer_and_touches_no_bit(store):
    # the second row is a redelivery of s1 (even with another code): s1's answer, no bit for serial 2
    got = claim(store, [("s1", CODE, 1, OK), ("s1", CODE, 2, OK), ("s2", CODE, 1, OK), ("s1", CODE, 1, BAD_MAC)])
    assert got == [(OK, False), (OK, True), (REPEAT, False), (OK, True)]
    assert claim(store, [("s3", CODE, 2, OK)]) == [(OK, False)]


def test_scan_id_replayed_in_a_later_batch_gets_the_first_answer(store):
    claim(store, [("s1", CODE, 1, OK), ("s2", CODE, 1, OK)])
    assert claim(store, [("s2", CODE, 1, OK), ("s1", CODE, 1, OK)]) == [(REPEAT, True), (OK, True)]
    # whatever the verdict it comes with now
    assert claim(store, [("s1", CODE, 1, BAD_MAC), ("s2", CODE, 7, OK)]) == [(OK, True), (REPEAT, True)]
    assert claim(store, [("s9", CODE, 7, OK)]) == [(OK, False)]


def test_scan_id_reused_with_another_event_is_a_conflict_that_claims_nothing(store):
    """The attack: a winning scan's request id sent again with another code, user or place."""
    CONFLICT = Verdict.CONFLICT
    assert claim(store, [("s1", CODE, 1, OK, 10, "victim")], full=True) == [(OK, False, "")]
    # (a) forged code, (b) another user, (c) another, never scanned code: none is a replay
    got = claim(store, [("s1", CODE, 1, BAD_MAC, 11, "victim"), ("s1", CODE, 1, OK, 12, "thief"),
                        ("s1", CODE, 2, OK, 13, "thief")], full=True)
    assert got == [(CONFLICT, False, "victim")] * 3
    # nothing was claimed: serial 2's first scan is still ok; the stored answer is unchanged
    assert claim(store, [("s2", CODE, 2, OK, 20, "w")]) == [(OK, False)]
    assert claim(store, [("s1", CODE, 1, OK, 10, "victim")]) == [(OK, True)]
    # the same conflicting event again is still a conflict, not the replay of itself
    assert claim(store, [("s1", CODE, 1, OK, 12, "thief")], full=True) == [(CONFLICT, False, "victim")]


def test_scan_id_reused_with_another_event_in_the_same_batch_is_a_conflict(store):
    CONFLICT = Verdict.CONFLICT
    got = claim(store, [("s1", CODE, 5, OK, 1, "a"), ("s1", CODE, 6, OK, 2, "b"), ("s1", CODE, 5, OK, 1, "a"),
                        ("s2", CODE, 6, OK, 3, "c")], full=True)
    assert got == [(OK, False, ""), (CONFLICT, False, "a"), (OK, True, ""), (OK, False, "")]


def test_a_conflict_on_an_invalid_first_answer_names_its_user(store):
    # the first event was not valid (not activated): a later event under its id still conflicts
    claim(store, [("s1", CODE, 3, NOT_ACTIVATED, 7, "first")])
    assert claim(store, [("s1", CODE, 3, OK, 8, "second")], full=True) == [(Verdict.CONFLICT, False, "first")]
    assert claim(store, [("s9", CODE, 3, OK, 9, "third")]) == [(OK, False)]


def test_rows_not_ok_keep_their_verdict_and_only_have_it_remembered(store):
    assert claim(store, [("s1", CODE, 3, BAD_MAC), ("s2", CODE, 3, NOT_ACTIVATED), ("s3", 0, 0, 1)]) == \
        [(BAD_MAC, False), (NOT_ACTIVATED, False), (1, False)]
    # no bit was set: the code's first valid scan is still ok
    assert claim(store, [("s4", CODE, 3, OK)]) == [(OK, False)]
    # the remembered answer wins over the verdict of a redelivery
    assert claim(store, [("s1", CODE, 3, OK), ("s2", CODE, 3, OK), ("s3", CODE, 3, OK)]) == \
        [(BAD_MAC, True), (NOT_ACTIVATED, True), (1, True)]


def test_tenant_kind_and_batch_are_part_of_a_code(store):
    keys = [batch_key(7, 0, 42), batch_key(7, 1, 42), batch_key(7, 0, 43), batch_key(8, 0, 42),
            batch_key(0, 0, 0), batch_key(65535, 3, 2**24 - 1), batch_key(65535, 0, 2**24 - 1)]
    rows = [(f"a{i}-{s}", int(k), s, OK) for i, k in enumerate(keys) for s in (0, SERIAL_MAX)]
    assert claim(store, rows) == [(OK, False)] * len(rows)
    again = [(f"b{i}", c, s, v) for i, (_, c, s, v) in enumerate(rows)]
    assert claim(store, again) == [(REPEAT, False)] * len(rows)


def test_serials_at_byte_and_chunk_boundaries(store):
    chunk = CHUNK_SERIALS  # the Redis store's chunk size; powers of two and byte edges as well
    serials = sorted({0, 1, 7, 8, 9, 255, 256, 2**17 - 1, 2**17, 2**20 - 1, 2**20, 2**20 + 1, chunk - 1, chunk,
                      chunk + 1, 2 * chunk - 1, 2 * chunk, 2**31, SERIAL_MAX - 1, SERIAL_MAX})
    got = claim(store, [(f"a{s}", CODE, s, OK) for s in serials])
    assert got == [(OK, False)] * len(serials)
    # each bit is its own: neighbours still free
    neighbours = sorted({s + d for s in serials for d in (-1, 1) if 0 <= s + d <= SERIAL_MAX} - set(serials))
    assert claim(store, [(f"n{s}", CODE, s, OK) for s in neighbours]) == [(OK, False)] * len(neighbours)
    assert claim(store, [(f"b{s}", CODE, s, OK) for s in serials + neighbours]) == \
        [(REPEAT, False)] * (len(serials) + len(neighbours))


def test_bits_survive_growth_of_a_chunk(store):
    # a bitmap that grows after its first bits keeps them
    grown = (3, 20_000, 17, 100_000, 120_000, 1_000_000, 900_000)
    for i, s in enumerate(grown):
        assert claim(store, [(f"a{i}", CODE, s, OK)]) == [(OK, False)]
    assert claim(store, [(f"b{s}", CODE, s, OK) for s in sorted(grown)]) == [(REPEAT, False)] * len(grown)


def test_empty_claim(store):
    assert claim(store, []) == []


def test_large_batch_in_order(store):
    # larger than every slice the Redis scripts unpack at once; a few duplicates of both kinds
    n = 12_345
    serial = np.arange(n) * 3
    serial[100] = serial[99]  # a duplicate code
    ids = np.array([f"scan-{i}" for i in range(n)], dtype=object)
    ids[5000] = ids[4000]  # a redelivery
    verdict = np.full(n, OK, np.uint8)
    verdict[::97] = BAD_MAC
    c = store.claim(ids, np.ones(n, np.uint64), np.full(n, "u", object), np.full(n, CODE, np.uint64),
                    serial.astype(np.uint32), verdict)
    expect = np.where(verdict == OK, OK, BAD_MAC).astype(np.uint8)
    expect[100] = REPEAT if verdict[100] == OK else BAD_MAC
    expect[5000] = expect[4000]
    assert c.verdict.tolist() == expect.tolist()
    assert np.nonzero(c.replay)[0].tolist() == [5000]


# --- lottery -----------------------------------------------------------------------------------

def grant(store: StateStore, rows: list[tuple]) -> list[tuple[int, int, int]]:
    """Grant ``(campaign, serial, user, day, tier, cents)`` rows of code CODE; (status, tier, cents)."""
    camp, serial, user, day, tier, cents = zip(*rows)
    g = store.grant(GrantRequests(
        campaign=np.array(camp, np.int64), code=np.full(len(rows), CODE, np.uint64),
        serial=np.array(serial, np.uint32), user=np.array(user, dtype=object), day=np.array(day, np.int64),
        tier=np.array(tier, np.int16), cents=np.array(cents, np.int64)))
    assert (g.status.dtype, g.tier.dtype, g.cents.dtype) == (np.uint8, np.int16, np.int64)
    return list(zip(g.status.tolist(), g.tier.tolist(), g.cents.tolist()))


def test_stock_runs_out_per_tier(store):
    store.define_campaigns([CampaignLimits("c", 1_000_000, (2, 1), daily_cap=100)])
    got = grant(store, [(0, s, f"u{s}", 1, t, 10 * (t + 1)) for s, t in enumerate((0, 1, 0, 1, 0))])
    assert got == [(WON, 0, 10), (WON, 1, 20), (WON, 0, 10), (OUT_OF_STOCK, -1, 0), (OUT_OF_STOCK, -1, 0)]
    assert store.campaign_state("c").stock_left == (0, 0)
    assert grant(store, [(0, 9, "u9", 1, 1, 20)]) == [(OUT_OF_STOCK, -1, 0)]


def test_budget_is_never_exceeded(store):
    store.define_campaigns([CampaignLimits("c", 250, (100,), daily_cap=100)])
    got = grant(store, [(0, 1, "a", 1, 0, 100), (0, 2, "b", 1, 0, 100), (0, 3, "c", 1, 0, 100),
                        (0, 4, "d", 1, 0, 50), (0, 5, "e", 1, 0, 1)])
    assert got == [(WON, 0, 100), (WON, 0, 100), (BUDGET, -1, 0), (WON, 0, 50), (BUDGET, -1, 0)]
    assert store.campaign_state("c").budget_left == 0


def test_a_grant_refused_mid_batch_writes_nothing_so_its_retry_pays_within_the_budget(server):
    """The attack on the grant script's atomicity: a batch whose later row names a tier the stored
    campaign lacks (a config and state out of step) is refused.  Had the rows before it written
    their prizes, the batch's retry would give those codes their prize back as won before, paid
    out of a budget that was never charged."""
    import redis as redis_py
    with open_store(*server) as s:
        s.define_campaigns([CampaignLimits("c", 1_000, (5,), daily_cap=5)])
        with pytest.raises(redis_py.ResponseError, match="has no tier 3"):
            grant(s, [(0, 1, "a", 1, 0, 100), (0, 2, "b", 1, 0, 100), (0, 3, "c", 1, 3, 100)])
        assert s.campaign_state("c") == CampaignState(1_000, (5,), 0, 0)
        # the retry without the bad row pays each code once, and the budget says so
        assert grant(s, [(0, 1, "a", 1, 0, 100), (0, 2, "b", 1, 0, 100)]) == [(WON, 0, 100)] * 2
        assert s.campaign_state("c") == CampaignState(800, (3,), 2, 0)


def test_daily_cap_per_user_and_day(store):
    store.define_campaigns([CampaignLimits("c", 10_000, (100,), daily_cap=2)])
    got = grant(store, [(0, 1, "u", 5, 0, 1), (0, 2, "u", 5, 0, 1), (0, 3, "u", 5, 0, 1),
                        (0, 4, "v", 5, 0, 1), (0, 5, "u", 6, 0, 1)])
    assert [g[0] for g in got] == [WON, WON, CAP, WON, WON]
    assert grant(store, [(0, 6, "u", 5, 0, 1), (0, 7, "u", 6, 0, 1), (0, 8, "u", 6, 0, 1)]) == \
        [(CAP, -1, 0), (WON, 0, 1), (CAP, -1, 0)]


def test_limits_are_checked_stock_then_budget_then_cap(store):
    store.define_campaigns([CampaignLimits("c", 5, (1, 5), daily_cap=1)])
    assert grant(store, [(0, 1, "u", 1, 0, 5)]) == [(WON, 0, 5)]
    # stock of tier 0, budget and cap all exhausted: out_of_stock; tier 1: budget before cap
    assert grant(store, [(0, 2, "u", 1, 0, 5), (0, 3, "u", 1, 1, 1)]) == [(OUT_OF_STOCK, -1, 0), (BUDGET, -1, 0)]


def test_a_code_wins_once_and_gets_its_prize_back(store):
    store.define_campaigns([CampaignLimits("c", 1000, (10, 10), daily_cap=10)])
    assert grant(store, [(0, 1, "u", 1, 1, 300), (0, 1, "v", 1, 0, 100)]) == [(WON, 1, 300), (WON, 1, 300)]
    before = store.campaign_state("c")
    assert before == type(before)(700, (10, 9), 1)
    # later: the same prize whatever is drawn now (no prize, another tier), and nothing paid again
    assert grant(store, [(0, 1, "w", 2, -1, 0), (0, 1, "u", 1, 0, 100)]) == [(WON, 1, 300), (WON, 1, 300)]
    assert store.campaign_state("c") == before


def test_a_code_drawn_without_prize_after_winning_in_the_same_batch(store):
    # prizes won before the batch are given back to every row; within the batch, only drawn rows
    # look at what the batch has paid so far (memory.grant's order)
    store.define_campaigns([CampaignLimits("c", 1000, (10,), daily_cap=10)])
    assert grant(store, [(0, 1, "u", 1, 0, 100), (0, 1, "u", 1, -1, 0), (0, 1, "u", 1, 0, 100)]) == \
        [(WON, 0, 100), (NO_PRIZE, -1, 0), (WON, 0, 100)]
    assert grant(store, [(0, 2, "u", 1, -1, 0)]) == [(NO_PRIZE, -1, 0)]


def test_campaigns_are_separate(store):
    store.define_campaigns([CampaignLimits("a", 100, (1,), daily_cap=1), CampaignLimits("b", 100, (1,), daily_cap=1)])
    # the same code and user win once in each campaign; caps and stocks do not mix
    assert grant(store, [(0, 1, "u", 1, 0, 10), (1, 1, "u", 1, 0, 20), (0, 2, "u", 1, 0, 10)]) == \
        [(WON, 0, 10), (WON, 0, 20), (OUT_OF_STOCK, -1, 0)]
    assert store.campaign_state("a").budget_left == 90 and store.campaign_state("b").budget_left == 80


def test_define_campaigns_keeps_counters_and_updates_the_cap(store):
    store.define_campaigns([CampaignLimits("c", 1000, (5,), daily_cap=1)])
    grant(store, [(0, 1, "u", 1, 0, 100)])
    # a restart with another budget and stock keeps the running counters; the cap is the new one
    store.define_campaigns([CampaignLimits("c", 50, (1, 7), daily_cap=2)])
    assert store.campaign_state("c") == type(store.campaign_state("c"))(900, (4, 7), 1)
    assert grant(store, [(0, 2, "u", 1, 1, 100)]) == [(WON, 1, 100)]
    assert grant(store, [(0, 3, "u", 1, 0, 1)]) == [(CAP, -1, 0)]


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_daily_caps_follow_the_campaign_id_when_campaigns_are_reordered(make_store):
    with make_store() as s:
        s.define_campaigns([CampaignLimits("a", 100, (9,), daily_cap=1), CampaignLimits("b", 100, (9,), daily_cap=1)])
        assert grant(s, [(0, 1, "u", 1, 0, 1)]) == [(WON, 0, 1)]  # u reached a's cap
        s.define_campaigns([CampaignLimits("b", 100, (9,), daily_cap=1), CampaignLimits("a", 100, (9,), daily_cap=1)])
        assert grant(s, [(0, 2, "u", 1, 0, 1), (1, 3, "u", 1, 0, 1)]) == [(WON, 0, 1), (CAP, -1, 0)]


def test_campaign_state_of_an_unknown_campaign(store):
    store.define_campaigns([CampaignLimits("c", 1, (1,), daily_cap=1)])
    with pytest.raises(KeyError, match="nope"):
        store.campaign_state("nope")


def test_empty_grant(store):
    store.define_campaigns([CampaignLimits("c", 1, (1,), daily_cap=1)])
    g = store.grant(GrantRequests(*(np.zeros(0, t) for t in (np.int64, np.uint64, np.uint32, object, np.int64,
                                                                np.int16, np.int64))))
    assert len(g.status) == len(g.tier) == len(g.cents) == 0


# --- windows -----------------------------------------------------------------------------------

def test_count_totals_in_order(store):
    assert store.count(u64([1, 2, 1, U64_MAX, 1, 0]), 60).tolist() == [1, 1, 2, 1, 3, 1]
    assert store.count(u64([2, 1, U64_MAX]), 60).tolist() == [2, 4, 2]
    assert store.count(u64([]), 60).tolist() == []


def test_distinct_sizes_in_order(store):
    keys = u64([1, 1, 1, 2, 1, 2])
    members = u64([7, U64_MAX, 7, 7, 2**63, 0])
    assert store.distinct(keys, members, 60).tolist() == [1, 2, 2, 1, 3, 2]
    assert store.distinct(u64([1, 3]), u64([U64_MAX, U64_MAX]), 60).tolist() == [3, 1]
    assert store.distinct(u64([]), u64([]), 60).tolist() == []


def test_distinct_with_keys_flagged_new(store):
    # the caller's hint: flagged keys have no set yet and no earlier row in the batch
    keys, members = u64([1, 2, 1, 3, 2]), u64([5, 6, 7, 8, 6])
    new = np.array([True, True, False, False, False])
    assert store.distinct(keys, members, 60, new).tolist() == [1, 1, 2, 1, 1]
    assert store.distinct(u64([1, 4]), u64([9, 9]), 60, np.array([False, True])).tolist() == [3, 1]


def test_distinct_with_a_wrong_new_flag_replaces_the_set(store):
    # outside the contract, but both stores must still agree: the flagged row starts the set again
    store.distinct(u64([1, 1]), u64([5, 6]), 60)
    assert store.distinct(u64([1, 1]), u64([7, 5]), 60, np.array([False, True])).tolist() == [2, 1]
    assert store.distinct(u64([1]), u64([6]), 60).tolist() == [3]


def test_distinct_past_the_packed_size_keeps_counting_and_its_ttl(make_store):
    # a cloned code scanned by many users: the Redis store turns its packed string into a set
    many = np.arange(1, 101, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with make_store() as s:
        assert s.distinct(u64([7] * 20), many[:20], 2).tolist() == list(range(1, 21))
        again = np.concatenate([many[:50], many[10:70]])
        assert s.distinct(u64([7] * 110), again, 2).tolist() == [20] * 20 + list(range(21, 51)) + [50] * 40 + list(
            range(51, 71))
        assert s.distinct(u64([7, 7, 8]), u64([1, int(many[0]), 1]), 2).tolist() == [71, 71, 1]
        # a flagged row replaces even a large set
        assert s.distinct(u64([7, 7]), u64([5, 6]), 2, np.array([True, False])).tolist() == [1, 2]
        assert s.distinct(u64([9] * 40), many[:40], 1).tolist() == list(range(1, 41))
        assert s.distinct(u64([9]), u64([3]), 1).tolist() == [41]
        time.sleep(4.1)  # an entry lives at least its TTL, and at most twice as long
        s.mark_once(u64([99]), 60)  # the memory store sweeps expired windows after a call
        assert s.distinct(u64([7, 9]), u64([5, int(many[0])]), 60).tolist() == [1, 1]


def test_distinct_with_two_sets_per_key(store):
    # a clone check's users and provinces of one code: column 1 only where the scan has a place
    keys = u64([1, 1, 2, 1, 1, 2])
    members = u64([[7, 44], [8, 44], [7, 0], [7, 31], [9, 0], [7, 0]])
    present = np.array([[1, 1], [1, 1], [1, 0], [1, 1], [1, 0], [1, 1]], bool)
    assert store.distinct(keys, members, 60, present=present).tolist() == \
        [[1, 1], [2, 1], [1, 0], [2, 2], [3, 2], [1, 1]]
    # flagged rows start both sets, a later row of the same key adds to them; a set that was
    # kept with one column (a one-set call) is column 0 of a two-set call
    new = np.array([True, False, True, False])
    got = store.distinct(u64([3, 3, 4, 1]), u64([[5, 11], [6, 11], [5, 0], [10, 44]]), 60, new,
                         np.array([[1, 1], [1, 1], [1, 0], [1, 1]], bool))
    assert got.tolist() == [[1, 1], [2, 1], [1, 0], [4, 2]]
    assert store.distinct(u64([5, 5]), u64([1, 2]), 60).tolist() == [1, 2]
    assert store.distinct(u64([5]), u64([[3, 9]]), 60).tolist() == [[3, 1]]
    assert store.distinct(u64([5]), u64([4]), 60, present=np.array([False])).tolist() == [3]


def test_distinct_flagged_rows_of_one_key_and_edge_members(store):
    # the Redis store's caller builds a flagged row's field; whatever its bytes (0, all ones, an
    # absent set, two flagged rows of one key: the later one starts the set again), every store
    # must answer alike, and later calls must read back exactly what was written
    keys = u64([1, 1, 2, 3, 1])
    members = u64([[0, U64_MAX], [U64_MAX, 0], [2**63, 1], [5, 6], [0, 7]])
    present = np.array([[1, 1], [1, 0], [0, 0], [0, 1], [1, 1]], bool)
    new = np.array([True, True, True, True, False])
    assert store.distinct(keys, members, 60, new, present).tolist() == [[1, 1], [1, 0], [0, 0], [0, 1], [2, 1]]
    again = store.distinct(u64([1, 1, 2, 3]), u64([[U64_MAX, U64_MAX], [0, 7], [2**63, 1], [5, 6]]), 60)
    assert again.tolist() == [[2, 2], [2, 2], [1, 1], [1, 1]]


def test_distinct_with_two_sets_one_past_the_packed_size(make_store):
    many = np.arange(1, 81, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with make_store() as s:
        members = np.stack([many, np.full(80, 44, np.uint64)], axis=1)
        assert s.distinct(u64([7] * 80), members, 60).tolist() == [[i, 1] for i in range(1, 81)]
        more = np.stack([many[:5], u64([31] * 5)], axis=1)
        assert s.distinct(u64([7] * 5), more, 60).tolist() == [[80, 2]] * 5


def test_mark_once(store):
    assert store.mark_once(u64([5, 6, 5, U64_MAX]), 60).tolist() == [True, True, False, True]
    assert store.mark_once(u64([6, 7]), 60).tolist() == [False, True]
    assert store.mark_once(u64([]), 60).tolist() == []


def test_block_list(make_store):
    with make_store() as s:
        assert s.blocked(u64([1, 2])).tolist() == [False, False]  # an empty list
        s.block(u64([1, U64_MAX]), 1)
        s.block(u64([]), 1)
        assert s.blocked(u64([1, 2, U64_MAX, 1])).tolist() == [True, False, True, True]
        time.sleep(0.6)
        s.block(u64([1, 2]), 1)  # 1 keeps its expiry, 2 gets a second from now
        time.sleep(0.6)
        assert s.blocked(u64([1, 2, U64_MAX])).tolist() == [False, True, False]
        s.block(u64([1]), 3600)  # back on the list after its expiry
        assert s.blocked(u64([1, 2])).tolist() == [True, True]
        assert s.blocked(u64([])).tolist() == []


def test_answers_and_windows_expire_after_their_ttl(make_store):
    with make_store(replay_ttl_s=1) as s:
        assert claim(s, [("s1", CODE, 1, OK)]) == [(OK, False)]
        assert s.count(u64([1, 1]), 1).tolist() == [1, 2]
        assert s.mark_once(u64([2]), 1).tolist() == [True]
        assert s.distinct(u64([3]), u64([9]), 1).tolist() == [1]
        assert s.count(u64([4]), 3600).tolist() == [1]
        time.sleep(2.1)
        # the scan_id is forgotten: a new scan of a code already taken
        assert claim(s, [("s1", CODE, 1, OK)]) == [(REPEAT, False)]
        # the memory store sweeps expired windows after a call, so touch another key first
        s.mark_once(u64([99]), 60)
        assert s.count(u64([1, 4]), 1).tolist() == [1, 2]
        assert s.mark_once(u64([2]), 1).tolist() == [True]
        assert s.distinct(u64([3]), u64([8]), 1).tolist() == [1]


# --- differential: random call sequences through both stores ------------------------------------

CODES = [int(batch_key(7, 0, 42)), int(batch_key(7, 1, 42)), int(batch_key(65535, 3, 2**24 - 1))]
SERIALS = [0, 1, 7, 8, CHUNK_SERIALS - 1, CHUNK_SERIALS, 2**20, 5_000_000, SERIAL_MAX]
LIMITS = [CampaignLimits("a", 500, (3, 1), daily_cap=2), CampaignLimits("b", 41, (3,), daily_cap=1)]


def claim_rows():
    row = st.tuples(st.sampled_from([f"s{i}" for i in range(12)]), st.sampled_from(CODES), st.sampled_from(SERIALS),
                    st.sampled_from([OK, OK, OK, BAD_MAC, NOT_ACTIVATED, 1]), st.sampled_from([1, 1, 1, 2, U64_MAX]),
                    st.sampled_from(["u", "v", "微信-w"]))
    return st.tuples(st.just("claim"), st.lists(row, max_size=12))


def grant_rows():
    row = st.tuples(st.integers(0, 1), st.sampled_from(CODES), st.sampled_from(SERIALS[:5]),
                    st.sampled_from(["u", "v", "微信-w"]), st.integers(0, 2), st.integers(-1, 1),
                    st.sampled_from([0, 1, 40, 100]))
    return st.tuples(st.just("grant"), st.lists(row, max_size=10))


def window_rows(name: str, base: int):
    keys = st.sampled_from([base, base + 1, base + 2, U64_MAX - base])
    members = st.sampled_from([0, 1, 2**63, U64_MAX])
    return st.tuples(st.just(name), st.lists(st.tuples(keys, members, st.booleans()), max_size=10))


def pair_rows(base: int):
    """``distinct`` with two sets per key, on the keys of the one-set calls too: (key, member,
    flag, second member, whether the second is present)."""
    keys = st.sampled_from([base, base + 1, base + 2, U64_MAX - base])
    members = st.sampled_from([0, 1, 2**63, U64_MAX])
    return st.tuples(st.just("distinct_pairs"),
                     st.lists(st.tuples(keys, members, st.booleans(), members, st.booleans()), max_size=10))


def apply(store: StateStore, op: str, rows: list) -> tuple:
    """One call on ``store``; its answer as plain lists (dtypes included)."""
    if op == "claim":
        return tuple(claim(store, rows, full=True))
    if op == "define":
        store.define_campaigns(LIMITS)
        return tuple(store.campaign_state(c.id) for c in LIMITS)
    if op == "grant":
        rows = [r for r in rows if r[0] == 0 or r[5] < 1]  # campaign b has one tier
        if not rows:
            return ()
        c, code, serial, user, day, tier, cents = map(list, zip(*rows))
        g = store.grant(GrantRequests(np.array(c, np.int64), u64(code), np.array(serial, np.uint32),
                                      np.array(user, dtype=object), np.array(day, np.int64),
                                      np.array(tier, np.int16), np.array(cents, np.int64)))
        return (g.status.dtype.str, g.tier.dtype.str, g.cents.dtype.str, g.status.tolist(), g.tier.tolist(),
                g.cents.tolist(), tuple(store.campaign_state(x.id) for x in LIMITS))
    keys = u64([r[0] for r in rows])
    if op == "count":
        out = store.count(keys, 600)
    elif op == "distinct":
        out = store.distinct(keys, u64([r[1] for r in rows]), 600)
    elif op == "distinct_new":
        out = store.distinct(keys, u64([r[1] for r in rows]), 600, np.array([r[2] for r in rows], bool))
    elif op == "distinct_pairs":
        out = store.distinct(keys, u64([(r[1], r[3]) for r in rows]).reshape(len(rows), 2), 600,
                             np.array([r[2] for r in rows], bool), np.array([(True, r[4]) for r in rows], bool
                                                                            ).reshape(len(rows), 2))
    elif op == "block":
        store.block(keys, 600)
        return ()
    elif op == "blocked":
        out = store.blocked(keys)
    else:
        out = store.mark_once(keys, 600)
    return out.dtype.str, out.tolist()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(claim_rows(), grant_rows(), window_rows("count", 10), window_rows("distinct", 20),
                          window_rows("distinct_new", 40), pair_rows(20), pair_rows(40),
                          window_rows("mark_once", 30), window_rows("block", 30), window_rows("blocked", 30),
                          st.just(("define", []))), max_size=14))
def test_random_call_sequences_give_identical_answers(server, ops):
    with open_store("memory") as mem, open_store(*server) as red:
        for s in (mem, red):
            s.define_campaigns(LIMITS)
        for op, rows in ops:
            assert apply(mem, op, rows) == apply(red, op, rows), (op, rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(claim_rows(), grant_rows(), window_rows("count", 10), window_rows("distinct", 20),
                          window_rows("mark_once", 30), window_rows("block", 30), window_rows("blocked", 30)),
                max_size=14), st.lists(st.integers(0, 14), max_size=4))
def test_embedded_store_reopened_at_any_checkpoint_answers_as_one_process(ops, reopen_at):
    """The embedded store closed and opened again between calls answers as if it never stopped;
    calls after the last checkpoint are lost with the process, as after kill -9."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.sqlite"
        mem, emb = MemoryStateStore(replay_ttl_s=3600), EmbeddedStateStore(path, replay_ttl_s=3600)
        try:
            for s in (mem, emb):
                s.define_campaigns(LIMITS)
            for i, (op, rows) in enumerate(ops):
                if i in reopen_at:
                    emb.checkpoint(position=i)
                    emb.apply_lost = apply(emb, "count", [(99, 0, False)])  # made after the checkpoint: lost
                    emb.close()
                    emb = EmbeddedStateStore(path, replay_ttl_s=3600)
                    assert emb.meta("position") == i
                assert apply(mem, op, rows) == apply(emb, op, rows), (op, rows)
            assert apply(mem, "count", [(99, 0, False)]) == apply(emb, "count", [(99, 0, False)])
        finally:
            emb.close()


def test_embedded_store_refuses_a_second_process_and_an_unknown_format(tmp_path):
    from scanstream.engine.state.embedded import StateFileError, StateInUse
    path = tmp_path / "state.sqlite"
    first = EmbeddedStateStore(path)
    with pytest.raises(StateInUse, match="in use by another"):
        EmbeddedStateStore(path)
    first.close()
    import sqlite3
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'format'")
    with pytest.raises(StateFileError, match="--fresh"):
        EmbeddedStateStore(path)
    assert EmbeddedStateStore.remove(path) and not path.exists()


def test_embedded_state_whose_creation_was_cut_short_opens_and_keeps_its_identity(tmp_path):
    """Disk full (or kill -9) while a new state file was being created left its format written
    and its id not: the next run opened it with a KeyError traceback.  Now the creation is one
    transaction, and a file cut short before that completes its identity on opening, once."""
    import sqlite3
    path = tmp_path / "state.sqlite"
    EmbeddedStateStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta WHERE key != 'format'")
    reopened = EmbeddedStateStore(path)
    state_id = reopened.state_id
    reopened.close()
    again = EmbeddedStateStore(path)
    assert again.state_id == state_id and len(state_id) == 32
    again.close()


def test_embedded_store_folds_its_log_into_a_snapshot(tmp_path, monkeypatch):
    from scanstream.engine.state import embedded
    monkeypatch.setattr(embedded, "MIN_LOG_BYTES_FOR_SNAPSHOT", 1)
    path = tmp_path / "state.sqlite"
    mem, emb = MemoryStateStore(replay_ttl_s=3600), EmbeddedStateStore(path, replay_ttl_s=3600)
    for b in range(5):
        rows = [(f"s{b}-{i}", CODE, (b * 7 + i) % 20, OK, i % 3, "u") for i in range(10)]
        assert claim(mem, rows, full=True) == claim(emb, rows, full=True)
        emb.checkpoint(batch=b)
    emb.close()
    import sqlite3
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM snapshot").fetchone()[0] == 1
        # folded once the log outgrew the snapshot; what is logged since is smaller than it
        assert db.execute("SELECT count(*) FROM ops").fetchone()[0] < 5
    emb = EmbeddedStateStore(path, replay_ttl_s=3600)
    rows = [(f"s{b}-{i}", CODE, i, OK, i % 3, "u") for b in range(5) for i in range(10)] + \
        [(f"t{i}", CODE, i, OK) for i in range(25)]
    assert claim(mem, rows, full=True) == claim(emb, rows, full=True)
    emb.close()


def test_large_random_batches_give_identical_answers(server):
    """Batches larger than every slice of the Redis scripts, with collisions of every kind."""
    rng = np.random.default_rng(2024)
    with open_store("memory") as mem, open_store(*server) as red:
        for s in (mem, red):
            # limits that bind during the run, so that rows fall on every side of them
            s.define_campaigns(LIMITS[:1] + [CampaignLimits("b", 300_000, (4000, 50), daily_cap=3)])
        for b in range(6):
            n = 9000
            ids = np.array([f"id-{x}" for x in rng.integers(0, 30_000, n)], dtype=object)
            code = u64(rng.choice(CODES, n))
            serial = rng.integers(0, 3_000_000, n).astype(np.uint32)
            verdict = rng.choice(np.array([OK] * 8 + [BAD_MAC, NOT_ACTIVATED], np.uint8), n)
            # a scan_id comes back with its own event (fingerprint of its id) or, now and then, another
            fps = u64([hash(i) & 0xFFFF for i in ids.tolist()])
            fps[rng.random(n) < 0.05] += u64(1)
            users = np.array([f"u{x}" for x in rng.integers(0, 50, n)], dtype=object)
            a = mem.claim(ids, fps, users, code, serial, verdict)
            r = red.claim(ids, fps, users, code, serial, verdict)
            assert a.verdict.tolist() == r.verdict.tolist() and a.replay.tolist() == r.replay.tolist()
            assert a.first_user.tolist() == r.first_user.tolist()
            assert (a.verdict == Verdict.CONFLICT).any()
            keys, members = u64(rng.integers(0, 2000, n)), u64(rng.integers(0, 50, n))
            assert mem.count(keys, 600).tolist() == red.count(keys, 600).tolist()
            assert mem.distinct(keys + u64(10**6), members, 600).tolist() == \
                red.distinct(keys + u64(10**6), members, 600).tolist()
            # flagged as new: keys of this batch only, first row of each (as the pipeline flags them)
            fresh_keys = keys + u64(10**7 * (b + 1))
            first = np.zeros(n, bool)
            first[np.unique(fresh_keys, return_index=True)[1]] = True
            assert mem.distinct(fresh_keys, members, 600, first).tolist() == \
                red.distinct(fresh_keys, members, 600, first).tolist()
            # a few hot keys with many members: sets past the Redis store's packed size
            hot, many = keys % u64(20) + u64(3 * 10**6), u64(rng.integers(0, 1000, n))
            assert mem.distinct(hot, many, 600).tolist() == red.distinct(hot, many, 600).tolist()
            # two sets per key (a clone check's users and provinces), some flagged, the second
            # set of hot keys past the packed size, half the second members missing
            pairs = np.stack([members, many], axis=1)
            present = np.stack([np.ones(n, bool), rng.random(n) < 0.5], axis=1)
            for kk, flags in ((fresh_keys + u64(5 * 10**6), first), (hot + u64(10**5), None)):
                assert mem.distinct(kk, pairs, 600, flags, present).tolist() == \
                    red.distinct(kk, pairs, 600, flags, present).tolist()
            marks = keys + u64(2 * 10**6)
            assert mem.mark_once(marks, 600).tolist() == red.mark_once(marks, 600).tolist()
            for s in (mem, red):
                s.block(marks[:b * 7], 600)
            assert mem.blocked(marks).tolist() == red.blocked(marks).tolist()
            camp = rng.integers(0, 2, n)
            tier = rng.integers(-1, 2, n).astype(np.int16)  # both campaigns have two tiers
            req = GrantRequests(camp, code, serial % 5000, np.array([f"u{x}" for x in rng.integers(0, 500, n)],
                                dtype=object), rng.integers(0, 3, n), tier, rng.integers(0, 1000, n))
            ga, gr = mem.grant(req), red.grant(req)
            assert ga.status.tolist() == gr.status.tolist() and ga.tier.tolist() == gr.tier.tolist()
            assert ga.cents.tolist() == gr.cents.tolist()
            assert [mem.campaign_state(c) for c in "ab"] == [red.campaign_state(c) for c in "ab"]


def test_reused_scan_ids_across_the_claims_slices_of_one_shard_agree_with_memory(server):
    """The attack on the claim's fast path: a scan_id only goes through the script's table of
    identities made in the call when the caller marks it repeated, and the script reads a shard's
    rows in slices of 1000.  So: 2 500 rows of one shard, scan_ids stored by an earlier batch and
    new ones, each coming back up to four times in the batch, across the slices' edges, with its
    own event, another one (a thief's) or the stored one, in every order."""
    rng = np.random.default_rng(17)
    pool = [f"r-{x}" for x in range(20_000)]
    keys = state_keys(np.array(pool, dtype=object))
    one_shard = [i for i, k in zip(pool, keys.tolist()) if k % 16 == 3][:900]
    assert len(one_shard) == 900
    stored, fresh = one_shard[:300], one_shard[300:]
    with open_store("memory") as mem, open_store(*server) as red:
        def both(ids, fps, users):
            n = len(ids)
            args = (np.array(ids, dtype=object), u64(fps), np.array(users, dtype=object),
                    u64([CODE] * n), (np.arange(n) % 5000).astype(np.uint32),
                    rng.choice(np.array([OK] * 6 + [BAD_MAC], np.uint8), n))
            a, r = mem.claim(*args), red.claim(*args)
            assert a.verdict.tolist() == r.verdict.tolist()
            assert a.replay.tolist() == r.replay.tolist()
            assert a.first_user.tolist() == r.first_user.tolist()
            return r
        both(stored, [1] * len(stored), ["owner"] * len(stored))
        ids = [stored[x] for x in rng.integers(0, 300, 1200)] + [fresh[x] for x in rng.integers(0, 600, 1300)]
        rng.shuffle(ids)
        fps = rng.choice(np.array([1, 1, 2, 3], np.uint64), len(ids))  # own event, or a thief's
        got = both(ids, fps, [f"u{f}" for f in fps.tolist()])
        verdicts = got.verdict.tolist()
        assert verdicts.count(CONFLICT) > 300 and got.replay.sum() > 300


def test_new_scans_behind_a_redelivered_cut_claim_of_their_codes_do_not_take_its_bits(server, monkeypatch):
    """The attack on the code step's fresh part, which sets the bits of the rows a claim minted
    before the rows of the other part: a claim dies between its steps, and its redelivery comes
    back with new scans of the same codes behind it (a code's later scans come after it in its
    partition).  The redelivered scans were first: they must keep OK, the new ones get REPEAT,
    as in a claim that was never cut."""
    first = [(f"first-{i}", CODE, 100 + i, OK) for i in range(40)]
    later = [(f"later-{i}", CODE, 100 + i, OK) for i in range(0, 40, 3)] + \
        [(f"new-{i}", CODE, 5000 + i, OK) for i in range(30)]
    with open_store("memory") as whole, open_store(*server) as cut:
        claim(whole, first)
        with monkeypatch.context() as m:
            m.setattr(type(cut), "_claim_codes", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
            with pytest.raises(KeyboardInterrupt):
                claim(cut, first)
        expected = claim(whole, first + later)
        assert expected[:40] == [(OK, True)] * 40 and expected[40:54] == [(REPEAT, False)] * 14
        assert claim(cut, first + later) == [(OK, False)] * 40 + expected[40:]
        assert claim(cut, first + later) == claim(whole, first + later)


def test_ranks_of_known_scan_ids_stay_unused_in_the_fresh_part_s_record(server):
    """The fresh part writes a shard's record as its rows' outcomes in rank order, with a 0 for
    each rank of the claim that no row of it holds: the OK rows whose scan_id was known (a
    redelivery, a thief's reuse).  Such rows, scan_ids repeated in the batch, and new scans of
    one code, in every order; then the whole batch again, whose every row reads its record."""
    rng = np.random.default_rng(23)
    stored = [(f"s-{i}", CODE, i, OK) for i in range(0, 400, 2)]
    with open_store("memory") as mem, open_store(*server) as red:
        assert claim(mem, stored, full=True) == claim(red, stored, full=True)
        rows = []
        for x in rng.integers(0, 4, 1500).tolist():
            i = int(rng.integers(0, 400))
            if x == 0:  # a redelivery of a stored scan, or a thief's reuse of its scan_id
                rows.append((f"s-{i - i % 2}", CODE, i - i % 2, OK, int(rng.integers(1, 3)), "t"))
            elif x == 1:  # a new scan of a code scanned before, or again in this batch
                rows.append((f"n-{i}", CODE, i, OK))
            else:  # a new scan of a new code, in chunks of every shard
                rows.append((f"m-{i}-{x}", CODE + x, int(rng.integers(0, 3 * CHUNK_SERIALS)), OK))
        got = claim(red, rows, full=True)
        assert got == claim(mem, rows, full=True)
        assert {v for v, _, _ in got} == {OK, REPEAT, CONFLICT}
        assert claim(red, rows, full=True) == claim(mem, rows, full=True)


def test_grants_agree_on_neighbouring_codes_with_commissions(redis_url, redis_cluster_url):
    """Codes of adjacent batches and serials (whose packed identities differ in a few low bits, so
    any cheap hash of them collides often), prizes drawn again and again, guides' commissions and
    a budget that runs out: every store grants alike, batch by batch (on Redis, the rows that drew
    no tier read their code's earlier prize outside the script, on one server and on a Cluster)."""
    rng = np.random.default_rng(3)
    limits = [CampaignLimits("a", 60_000, (50, 5), 2), CampaignLimits("b", 2_500, (30,), 3)]
    stores = [open_store(kind, redis_cluster_url if kind == "cluster" else redis_url)
              for kind in ("memory", "embedded", "redis", "cluster")]
    opened = [s.__enter__() for s in stores]
    seen: set[int] = set()
    try:
        for each in opened:
            each.define_campaigns(limits)
        for _ in range(30):
            n = 200
            camp = rng.integers(0, 2, n)
            tier = np.where(camp == 0, rng.integers(-1, 2, n), rng.integers(-1, 1, n)).astype(np.int16)
            req = GrantRequests(camp, rng.integers(0, 4, n).astype(np.uint64) + u64(1 << 30),
                                rng.integers(0, 300, n).astype(np.uint32),
                                np.array([f"u{x}" for x in rng.integers(0, 40, n)], dtype=object),
                                rng.integers(0, 2, n).astype(np.int64), tier,
                                np.where(tier < 0, 0, np.where(tier == 0, 100, 700)).astype(np.int64),
                                np.array(["", "g1", "g2"], dtype=object)[rng.integers(0, 3, n)],
                                np.full(n, 40, np.int64))
            got = [st.grant(req) for st in opened]
            seen.update(got[0].status.tolist())
            for g in got[1:]:
                for f in ("status", "tier", "cents", "commission"):
                    assert getattr(g, f).tolist() == getattr(got[0], f).tolist(), f
        states = [[st.campaign_state(c.id) for c in limits] for st in opened]
        assert states[0] == states[1] == states[2] == states[3]
        # the stream reached every limit: stock, budget (prizes and commissions), daily cap
        assert {DrawStatus.OUT_OF_STOCK, DrawStatus.BUDGET, DrawStatus.CAP} <= seen
        assert states[0][1].budget_left < 700 and states[0][0].commissions > 0
    finally:
        for s in stores:
            s.__exit__(None, None, None)


def test_grant_requests_that_share_a_tier_a_day_or_a_guide_keep_their_own_amounts(server):
    """The grant script takes what requests share once: a campaign and day (whose users' counts
    one read gets), a tier and amount (with the prize's text as stored), and only the requests
    with a guide carry a commission.  The attack on that sharing: one call where tier 0 pays
    another amount in each campaign, and even within one (a tier whose amount changed), days
    cross, each guide's commission differs, and codes are drawn again in the batch.  Every
    request must be paid, capped and stored as its own, as the memory store does."""
    rng = np.random.default_rng(31)
    limits = [CampaignLimits("a", 90_000, (400, 60), 3), CampaignLimits("b", 40_000, (300,), 2)]
    with open_store("memory") as mem, open_store(*server) as red:
        for each in (mem, red):
            each.define_campaigns(limits)
        for _ in range(12):
            n = 300
            camp = rng.integers(0, 2, n)
            tier = np.where(camp == 0, rng.integers(-1, 2, n), rng.integers(-1, 1, n)).astype(np.int16)
            cents = np.where(tier < 0, 0, 100 * (tier + 1) + 7 * camp + rng.integers(0, 2, n)).astype(np.int64)
            req = GrantRequests(camp, rng.integers(0, 3, n).astype(np.uint64) + u64(1 << 30),
                                rng.integers(0, 120, n).astype(np.uint32),
                                np.array([f"u{x}" for x in rng.integers(0, 30, n)], dtype=object),
                                rng.integers(0, 3, n).astype(np.int64), tier, cents,
                                np.array(["", "g1", "g2"], dtype=object)[rng.integers(0, 3, n)],
                                rng.integers(0, 60, n).astype(np.int64))
            a, r = mem.grant(req), red.grant(req)
            for f in ("status", "tier", "cents", "commission"):
                assert getattr(r, f).tolist() == getattr(a, f).tolist(), f
        assert [red.campaign_state(c.id) for c in limits] == [mem.campaign_state(c.id) for c in limits]
        paid = mem.campaign_state("a")
        assert paid.commissions > 0 and paid.prizes > 0


# --- the real pipeline over both stores --------------------------------------------------------

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
CST = dt.timezone(dt.timedelta(hours=8))


@pytest.fixture(scope="module")
def synthetic_world(tmp_path_factory):
    from scanstream.streams.synthetic import build_world, generate_scans
    world = build_world(7, KEY, 0)
    directory = tmp_path_factory.mktemp("registry")
    world.write_registry(directory)
    lines = generate_scans(world, 4000, seed=6)
    config = config_mod.parse({
        "tenants": [{"id": 7, "name": "Test brewery", "keys": [{"key_id": 0, "hex": KEY.hex()}]}],
        "engine": {"batch_size": 300, "resolve_gps": True},
        "diversion": {"window_minutes": 10, "thresholds": {"consumer": 3, "store": 1, "dealer": 1}},
        "clones": {"window_minutes": 10, "max_users": 3},
        # limits that bind during the stream: stock, budget and the daily cap
        "campaigns": [
            {"id": "tight", "tenant": 7, "skus": ["BEER-500", "CRAFT-IPA"],
             "start": dt.datetime(2026, 11, 1, tzinfo=CST), "end": dt.datetime(2027, 1, 1, tzinfo=CST),
             "budget_cents": 60_000, "daily_cap": 1, "seed": "synthetic",
             "tiers": [{"name": "small", "cents": 200, "probability": 0.5, "stock": 1_000},
                       {"name": "big", "cents": 1_000, "probability": 0.05, "stock": 10}]},
            {"id": "wide", "tenant": 7, "regions": ["44", "11"],
             "start": dt.datetime(2026, 11, 1, tzinfo=CST), "end": dt.datetime(2027, 1, 1, tzinfo=CST),
             "budget_cents": 1_000_000, "daily_cap": 3, "seed": "wide", "utc_offset_minutes": 0,
             "tiers": [{"name": "any", "cents": 100, "probability": 0.3, "stock": 250}]},
        ],
    }, Path("/nonexistent/scanstream.toml"))
    return config, Registry.load(directory), lines


def run_stream(pipeline: Pipeline, lines: list[bytes], size: int) -> list[dict]:
    out = []
    for i in range(0, len(lines), size):
        r = pipeline.process(lines[i:i + size])
        out.append({part: {k: v.tolist() for k, v in getattr(r, part).items()}
                    for part in ("scans", "alerts", "awards")})
    return out


def test_pipeline_gives_identical_outcomes_with_both_stores(synthetic_world, server):
    from scanstream.engine.geo import AdcodeIndex
    config, registry, lines = synthetic_world
    resolve = AdcodeIndex.load().resolve
    results = {}
    with open_store("memory") as mem, open_store(*server) as red:
        for name, s in (("memory", mem), ("redis", red)):
            pipeline = Pipeline(config, registry, s, resolve_gps=resolve)
            first = run_stream(pipeline, lines, 300)
            again = run_stream(pipeline, lines[:700], 250)  # the stream redelivered: all replays
            results[name] = (first, again, [s.campaign_state(c.id) for c in config.campaigns])
    assert results["memory"] == results["redis"]
    first, again, _ = results["redis"]
    # the stream exercised what the stores decide
    verdicts = {v for b in first for v in b["scans"]["verdict"]}
    draws = {d for b in first for d in b["scans"]["draw"]}
    assert {"ok", "repeat"} <= verdicts
    assert {"won", "out_of_stock", "budget", "cap"} <= draws, draws
    assert sum(len(b["alerts"]["alert_id"]) for b in first) > 0
    # redelivered: every readable scan is a replay; an invalid event is judged by its own bytes
    assert all(r == (v != "invalid_event") for b in again for r, v in zip(b["scans"]["replay"], b["scans"]["verdict"]))


# --- Redis only: layout, memory, round trips, errors ----------------------------------------

@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_a_claim_cut_between_its_two_steps_is_decided_again_as_the_first_time(make_store, monkeypatch):
    """The attack on the two-step claim: the worker dies after the scan_ids' identities are
    written and before the codes' bits are set.  The redelivered batch (and a reused scan_id
    sent meanwhile) must get exactly the answers of an uninterrupted claim."""
    rows = [("first", CODE, 5, OK), ("again", CODE, 5, OK), ("forged", CODE, 9, BAD_MAC), ("other", CODE, 6, OK)]
    with make_store() as cut, make_store() as whole:
        expected = claim(whole, rows)
        assert expected == [(OK, False), (REPEAT, False), (BAD_MAC, False), (OK, False)]

        def killed(*args, **kwargs):
            raise KeyboardInterrupt("kill -9 between the two steps")

        with monkeypatch.context() as m:
            m.setattr(type(cut), "_claim_codes", killed)
            with pytest.raises(KeyboardInterrupt):
                claim(cut, rows)
        # a reused scan_id with another event, before the redelivery: a conflict, no bit taken
        assert claim(cut, [("first", CODE, 7, OK, 2, "thief")], full=True) == [(Verdict.CONFLICT, False, "u")]
        # the redelivery decides as the first time; the forged row's answer was final in the
        # first step already, so it comes back as a replay, as after a kill past a whole claim
        assert claim(cut, rows) == [(OK, False), (REPEAT, False), (BAD_MAC, True), (OK, False)]
        assert claim(cut, rows) == [(v, True) for v, _ in expected]  # and then it is a replay
        assert claim(cut, [("late", CODE, 7, OK)]) == [(OK, False)]  # the thief's code was not taken


def test_each_call_is_one_round_trip_and_a_claim_two(redis_store):
    """On a single server a call is one script over the whole batch; a claim with OK rows is two
    (the scan_ids' identities, then the codes' bits); ``distinct`` two pipelined round trips (its
    log read, then its log written: ``set_log``)."""
    calls = []
    original, pipeline = redis_store.client.execute_command, redis_store.client.pipeline

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    def counted_pipeline(*args, **kwargs):
        pipe = pipeline(*args, **kwargs)
        run = pipe.execute

        def execute(*a, **k):
            calls.append("pipeline: " + " ".join(sorted({c[0][0] for c in pipe.command_stack})))
            return run(*a, **k)

        pipe.execute = execute
        return pipe

    redis_store.define_campaigns(LIMITS)
    redis_store.client.execute_command = counting
    redis_store.client.pipeline = counted_pipeline
    n = 5000
    ids = np.array([f"x{i}" for i in range(n)], dtype=object)
    redis_store.claim(ids, np.ones(n, np.uint64), np.full(n, "u", object), u64(np.resize(CODES, n)),
                      np.arange(n, dtype=np.uint32) * 997, np.full(n, OK, np.uint8))
    redis_store.grant(GrantRequests(np.zeros(n, np.int64), u64(np.resize(CODES, n)), np.arange(n, dtype=np.uint32),
                                    ids, np.zeros(n, np.int64), np.zeros(n, np.int16), np.full(n, 1, np.int64)))
    keys = u64(np.arange(n))
    redis_store.count(keys, 60)
    redis_store.distinct(keys + u64(n), keys, 60)
    redis_store.mark_once(keys + u64(2 * n), 60)
    assert calls == ["EVALSHA"] * 4 + ["pipeline: LRANGE", "pipeline: EXPIREAT RPUSH", "EVALSHA"]


def test_dedup_chunks_are_keyed_per_code_and_chunk_with_their_shard_tag(redis_store):
    code = int(batch_key(65535, 1, 2**24 - 1))
    claim(redis_store, [("a", code, CHUNK_SERIALS - 1, OK), ("b", code, CHUNK_SERIALS, OK),
                        ("c", code, SERIAL_MAX, OK)])
    keys = sorted(set(redis_store.client.scan_iter(match=redis_store.prefix.encode() + b"dd:*")))
    chunks = (0, 1, SERIAL_MAX // CHUNK_SERIALS)
    assert keys == sorted(redis_store.dedup_key(code, c) for c in chunks)
    for c in chunks:  # the chunk's identity in the name, after the tag of its shard
        key = redis_store.dedup_key(code, c)
        shard = int(chunk_shards(np.array([(code << 20) | c], np.uint64))[0])
        assert key == shard_key(redis_store.prefix.encode() + b"dd:", shard) + b"65535:1:16777215:%d" % c
        assert key_slot(key) == key_slot(b"{%s}" % SHARD_TAGS[shard].encode())
    assert redis_store.client.getbit(redis_store.dedup_key(code, 0), CHUNK_SERIALS - 1) == 1
    assert redis_store.client.getbit(redis_store.dedup_key(code, 1), 0) == 1


def test_bit_offsets_travel_as_redis_reads_integers():
    """BITFIELD refuses "007": the offsets' text has no leading zeros, and 0 keeps its digit."""
    from scanstream.engine.state.redis import _decimal_texts
    offsets = [0, 1, 9, 10, 99, 100, 1000, 10000, CHUNK_SERIALS - 1]
    assert _decimal_texts(np.array(offsets)) == pack_strings([b"%d" % o for o in offsets])
    assert _decimal_texts(np.array([], np.int64)) == b""


def test_bitmaps_grow_to_exact_size_classes(redis_store):
    """No greedy doubling of SETBIT: a bitmap takes about one bit per serial below its highest."""
    n = 50_000
    for i in range(0, n, 5_000):  # serials in order: the growth pattern that SETBIT doubles
        s = np.arange(i, i + 5_000, dtype=np.uint32)
        redis_store.claim(np.array([f"g{x}" for x in s.tolist()], dtype=object), np.ones(len(s), np.uint64),
                          np.full(len(s), "u", object), np.full(len(s), CODE, np.uint64), s,
                          np.full(len(s), OK, np.uint8))
    key = redis_store.dedup_key(CODE, 0)
    assert redis_store.client.strlen(key) == good_length(np.array([n // 8]))[0]
    assert redis_store.client.memory_usage(key, samples=0) <= n // 8 * 1.25 + 200
    assert redis_store.dedup_bytes() == redis_store.client.memory_usage(key, samples=0)
    claim(redis_store, [("full", CODE, CHUNK_BYTES * 8 - 1, OK)])
    assert redis_store.client.strlen(key) == CHUNK_BYTES
    assert redis_store.client.memory_usage(key, samples=0) <= 8 * 1024 + 100


def identity_key(store: RedisStateStore, scan_id: str) -> bytes:
    """The hash that holds ``scan_id``'s identity now: its shard's, this epoch's."""
    shard = int(state_keys([scan_id])[0]) % len(SHARD_TAGS)
    return shard_key(store.prefix.encode() + b"rp:", shard) + b":%d" % (int(time.time()) // store.replay_ttl_s)


def test_identities_built_by_the_caller_are_what_the_script_would_have_stored():
    # the claim's caller packs each row's identity were its scan_id new; users of every kind
    # (empty, CJK, a lone surrogate, a long one) and every mark must come out byte for byte as
    # pack_answer writes them, each at its own offset
    from scanstream.engine.state.redis import _new_identities
    rng = np.random.default_rng(7)
    n = 300
    given = np.where(np.arange(n) % 3 == 0, BAD_MAC, OK).astype(np.uint8)
    code_shards = rng.integers(0, len(SHARD_TAGS), n).astype(np.uint8)
    fps = rng.integers(0, 2**64 - 1, n, dtype=np.uint64).astype("<u8")
    ranks = rng.integers(0, 2**32 - 1, n, dtype=np.uint64).astype("<u4")
    users = np.array([["", "用户", "u\udc80", "x" * 300][i % 4] + str(i) * (i % 2) for i in range(n)], object)
    token = bytes(range(1, 9))
    blob = _new_identities(given, code_shards, fps, token, ranks, users)
    want = [pack_answer(0x40 + int(code_shards[i]) if given[i] == OK else int(given[i]), int(fps[i]), users[i],
                        token + int(ranks[i]).to_bytes(4, "little") if given[i] == OK else b"") for i in range(n)]
    assert blob == pack_strings(want)
    assert _new_identities(given[:0], code_shards[:0], fps[:0], token, ranks[:0], users[:0]) == b""


def test_strings_packed_for_the_scripts_come_back_whole(redis_store):
    # every script reads its strings with the prelude's strings(): lengths of 0, of a few hundred
    # bytes and past a slice of 100, bytes of every value, a count not a multiple of the slice
    values = [b"", b"\x00" * 4, bytes(range(256)), "用户".encode(), b"x" * 70_000] + [b"%d" % i for i in range(250)]
    script = redis_store.client.register_script(
        LUA_PRELUDE + "local got = strings(ARGV[1], tonumber(ARGV[2])) return got")
    assert script(keys=["k"], args=[pack_strings(values), len(values)]) == values
    assert script(keys=["k"], args=[b"", 0]) == []


def test_keys_have_their_ttls(redis_store):
    r, p = redis_store.client, redis_store.prefix.encode()
    # the scan_id's identity is a field of this epoch's hash of its shard, naming the shard of
    # its code's chunk and its outcome's place there: the claim call's token and the row's rank,
    # where the token's field holds a byte per rank; both are kept between one and two replay TTLs
    claim(redis_store, [("scan-0", CODE, 2, BAD_MAC), ("scan-1", CODE, 1, OK), ("scan-2", CODE, 3, OK)])
    code_shard = int(chunk_shards(np.array([CODE << 20], np.uint64))[0])
    assert r.hget(identity_key(redis_store, "scan-0"), "scan-0") == pack_answer(BAD_MAC, 1, "u")
    first = r.hget(identity_key(redis_store, "scan-1"), "scan-1")
    token = first[9:17]
    assert first == pack_answer(0x40 + code_shard, 1, "u", token + (0).to_bytes(4, "little"))
    assert r.hget(identity_key(redis_store, "scan-2"), "scan-2") == \
        pack_answer(0x40 + code_shard, 1, "u", token + (1).to_bytes(4, "little"))
    (outcomes,) = redis_store.keys(b"ck:*")
    assert outcomes.startswith(shard_key(p + b"ck:", code_shard))
    assert r.hgetall(outcomes) == {token: bytes([OK, OK])}  # one field for the whole claim call
    for key in (identity_key(redis_store, "scan-1"), outcomes):
        assert 3600 <= r.ttl(key) <= 7200
    assert r.ttl(redis_store.dedup_key(CODE, 0)) == -1  # a code is taken for ever
    redis_store.count(u64([1]), 100)
    redis_store.distinct(u64([2]), u64([U64_MAX]), 100)
    redis_store.mark_once(u64([3]), 100)
    def window_key(k: int) -> bytes:  # in the shard of its low bits
        return shard_key(p + b"w:", k % len(SHARD_TAGS)) + k.to_bytes(8, "little")

    for k in (1, 3):
        assert 90 < r.ttl(window_key(k)) <= 100
    # the TTL counts from the key's creation, as in the memory store: a later add keeps it
    redis_store.count(u64([1]), 5000)
    assert r.ttl(window_key(1)) <= 100
    # distinct's sets live in this process; each call is an element of its code group's log for
    # the epoch, which expires at the end of the next epoch: between one and two TTLs after the call
    redis_store.distinct(u64([2]), u64([5]), 100)
    (log,) = redis_store.keys(b"cl:*")
    assert log == redis_store._sets.log_key(0, 100, int(time.time()) // 100)
    calls = [unpack_call(blob) for blob in r.lrange(log, 0, -1)]
    assert [(c[0].tolist(), c[1].tolist(), c[2], c[3], c[4]) for c in calls] == \
        [([2], [U64_MAX], 100, None, None), ([2], [5], 100, None, None)]
    assert 100 <= r.ttl(log) <= 200


def write_layout_1(client, prefix: bytes, ttl_s: int) -> None:
    """State as the store of layout 1 wrote it, before the shard tags: a dedup chunk of CODE with
    serial 5 taken, the answer of scan_id ``old-1`` in its bucket hash, a window counter at 3 and
    an outbound binding."""
    client.setbit(prefix + b"dd:{7:0:42:0}", 5, 1)
    bucket = int(state_keys(["old-1"])[0]) % len(SHARD_TAGS)
    client.hset(prefix + b"rp:%d:%d" % (int(time.time()) // ttl_s, bucket), "old-1", pack_answer(OK, 1, "u"))
    client.set(prefix + b"w:" + (1).to_bytes(8, "little"), 3, ex=600)
    history = (5).to_bytes(8, "little", signed=True) + len(b"D-1").to_bytes(2, "little") + b"D-1"
    client.hset(prefix + b"bn:%d" % (9 % len(SHARD_TAGS)), (9).to_bytes(8, "little"), history)


def test_state_of_layout_1_is_refused_until_migrated_then_answers_as_before(redis_url):
    """An upgrade must not start on state it cannot read (every code would be new again and pay
    again where no prize record guards it): the store refuses, ``state migrate`` renames the keys,
    and the old bits, answers, windows and bindings answer as before."""
    import redis

    client = redis.Redis.from_url(redis_url)
    prefix = f"scanstream-test:{uuid.uuid4().hex[:12]}:"
    try:
        write_layout_1(client, prefix.encode(), 3600)
        with pytest.raises(OldStateLayout, match="scanstream state migrate"):
            RedisStateStore(client, prefix=prefix, replay_ttl_s=3600)
        renamed = RedisStateStore(client, prefix=prefix, replay_ttl_s=3600, check_layout=False).migrate_layout()
        assert renamed == {"dd": 1, "rp": 1, "w": 1, "bn": 1}
        store = RedisStateStore(client, prefix=prefix, replay_ttl_s=3600)
        assert claim(store, [("old-1", CODE, 5, OK), ("new-1", CODE, 5, OK), ("new-2", CODE, 6, OK)]) == \
            [(OK, True), (REPEAT, False), (OK, False)]
        assert store.count(u64([1]), 600).tolist() == [4]
        bound = store.bind(u64([9]), np.array([6], np.int64), np.array([""], dtype=object))
        assert bound.dealer.tolist() == ["D-1"] and bound.ts.tolist() == [5]
        assert RedisStateStore(client, prefix=prefix, check_layout=False).migrate_layout() == {}  # idempotent
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_state_of_layout_2_is_refused_until_migrated_then_answers_as_before(server):
    """Layout 2 kept a claim's outcome as a field per scan_id.  After the migration a claim whose
    outcome was recorded answers with it (here REPEAT, which a fresh decision would not give), and
    one killed between its steps decides as its first run would have (not a replay: the first
    run answered nothing)."""
    kind, url = server
    with open_store(kind, url) as store:
        client, p = store.client, store.prefix.encode()
        epoch = int(time.time()) // store.replay_ttl_s
        code_shard = int(chunk_shards(np.array([CODE << 20], np.uint64))[0])
        client.setbit(store.dedup_key(CODE, 0), 5, 1)  # serial 5 is taken by "done"'s first run
        client.hset(identity_key(store, "done"), "done", pack_answer(0x40 + code_shard, 1, "u"))
        client.hset(shard_key(p + b"ck:", code_shard) + b":%d" % epoch, "done", bytes([REPEAT]))
        client.hset(identity_key(store, "killed"), "killed", pack_answer(0x40 + code_shard, 1, "u"))
        client.set(p + b"layout", 2)
        with pytest.raises(OldStateLayout, match="layout 2.*scanstream state migrate"):
            RedisStateStore(client, prefix=store.prefix)
        assert RedisStateStore(client, prefix=store.prefix, check_layout=False).migrate_layout() == \
            {"rp claimed": 2}
        assert store.keys(b"ck:*") == []  # the per-scan records are gone
        migrated = RedisStateStore(client, prefix=store.prefix, replay_ttl_s=store.replay_ttl_s)
        assert claim(migrated, [("done", CODE, 5, OK), ("killed", CODE, 6, OK), ("killed", CODE, 6, OK),
                                ("done", CODE, 7, OK, 2)]) == [(REPEAT, True), (OK, False), (OK, True), (CONFLICT, False)]
        assert claim(migrated, [("killed", CODE, 6, OK), ("thief", CODE, 7, OK)]) == [(OK, True), (OK, False)]
        assert RedisStateStore(client, prefix=store.prefix, check_layout=False).migrate_layout() == {}  # idempotent


def test_a_node_that_forgot_the_scripts_still_answers(server):
    """A restarted node has no scripts: the calls pipelined to it answer NOSCRIPT, and the store
    makes them again through the client, which loads the script (on a Cluster, per primary)."""
    kind, url = server
    with open_store(kind, url) as store:
        assert claim(store, [(f"s{i}", CODE, i * CHUNK_SERIALS, OK) for i in range(40)]) == [(OK, False)] * 40
        nodes = store.client.get_primaries() if store.cluster else [None]
        for node in nodes:
            (store.client.get_redis_connection(node) if node else store.client).script_flush()
        assert claim(store, [(f"s{i}", CODE, i * CHUNK_SERIALS, OK) for i in range(40)]) == [(OK, True)] * 40
        assert claim(store, [(f"t{i}", CODE, i * CHUNK_SERIALS, OK) for i in range(40)]) == [(REPEAT, False)] * 40


def test_a_prefix_marked_with_an_unknown_layout_is_refused(redis_store):
    redis_store.client.set(redis_store.prefix + "layout", 99)
    with pytest.raises(OldStateLayout, match="layout 99"):
        RedisStateStore(redis_store.client, prefix=redis_store.prefix)


def test_flush_prefix_deletes_only_its_own_keys(redis_url):
    with open_store("redis", redis_url) as outer:
        glob_prefix = outer.prefix + "x[*]?:"
        inner = RedisStateStore(outer.client, prefix=glob_prefix)
        claim(inner, [("a", CODE, 1, OK)])
        inner.count(u64([1]), 60)
        decoy = outer.prefix + "x*Z:decoy"  # matched by the prefix read as a glob pattern
        outer.client.set(decoy, 1)
        assert inner.flush_prefix() == 5  # its layout mark, identities, outcomes, a dedup chunk, a counter
        assert set(outer.client.scan_iter(match=outer.prefix + "*")) == {decoy.encode(), (outer.prefix + "layout").encode()}


def test_unreachable_server_is_state_unavailable_without_the_password():
    with pytest.raises(StateUnavailable) as info:
        RedisStateStore.from_url("redis://user:s3cret-pw@127.0.0.1:1/0", prefix="t:", replay_ttl_s=60)
    message = str(info.value)
    assert "127.0.0.1:1" in message and "s3cret-pw" not in message and "***" in message


def test_a_server_that_goes_away_mid_stream_is_state_unavailable(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: cannot start a private server to stop")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://:pw-never-shown@127.0.0.1:{port}/0"
        for _ in range(100):
            try:
                store = RedisStateStore.from_url(url, prefix="t:", replay_ttl_s=60)
                break
            except StateUnavailable:
                time.sleep(0.05)
        else:
            pytest.fail("the private redis-server did not start")
        assert claim(store, [("a", CODE, 1, OK)]) == [(OK, False)]
        server.terminate()
        server.wait(10)
        with pytest.raises(StateUnavailable, match=f"127.0.0.1:{port}.*unavailable") as info:
            claim(store, [("b", CODE, 2, OK)])
        assert "pw-never-shown" not in str(info.value)
        store.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_odd_scan_ids(store):
    # scan ids are arbitrary strings: separators, braces, NUL, non-ASCII, empty, long
    odd = ["", ",", "a,b", "{tag}", "\x00nul", "请求-1", "x" * 300, "s1", "s1 "]
    rows = [(s, CODE, i, OK) for i, s in enumerate(odd)]
    assert claim(store, rows) == [(OK, False)] * len(odd)
    assert claim(store, rows) == [(OK, True)] * len(odd)


def test_the_workers_report_reads_what_is_left_of_each_campaign(store):
    """The worker's metrics read budget and stock left through ``campaign_state`` on its report
    timer (``streams.app.read_campaigns``): the same gauges on every backend, an unknown campaign
    left out."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from scanstream.engine.lottery import Campaign, Tier
    from scanstream.streams.app import read_campaigns
    from scanstream.streams.metrics import WorkerMetrics

    tiers = (Tier("small", 10, 0.5, 3), Tier("big", 100, 0.1, 1))
    known = Campaign("c", 7, 0, 1, 1000, 5, tiers, seed="not-secret")
    unknown = Campaign("later", 7, 0, 1, 50, 5, tiers[:1], seed="not-secret")
    store.define_campaigns([CampaignLimits("c", 1000, (3, 1), daily_cap=5)])
    assert grant(store, [(0, 1, "u", 1, 1, 100), (0, 2, "v", 1, 0, 10), (0, 3, "w", 1, 1, 100)]) == \
        [(WON, 1, 100), (WON, 0, 10), (OUT_OF_STOCK, -1, 0)]
    metrics = WorkerMetrics()
    read = read_campaigns(store, [unknown, known])
    assert [c.id for c, _ in read] == ["c"]
    for campaign, state in read:
        metrics.observe_campaign(campaign, state)
    got = {(s.name, tuple(sorted(s.labels.values()))): s.value
           for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
           for s in f.samples if s.name.startswith("scanstream_campaign")}
    assert got == {("scanstream_campaign_budget_cents", ("c",)): 1000,
                   ("scanstream_campaign_budget_left_cents", ("c",)): 890,
                   ("scanstream_campaign_stock", ("c", "small")): 3, ("scanstream_campaign_stock", ("big", "c")): 1,
                   ("scanstream_campaign_stock_left", ("c", "small")): 2,
                   ("scanstream_campaign_stock_left", ("big", "c")): 0}
