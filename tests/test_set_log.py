"""``distinct``'s sets kept by the workers, each code group logged to Redis (``engine.state.set_log``).

Every test plays several workers against one real Redis (single server and Cluster): each
``RedisStateStore`` is a worker process of its own, with its own sets.  What must hold whatever
happens: the answers of a stream split over any workers and runs are those of one run over the
whole stream (``MemoryStateStore``, the reference); a write that failed never leaves a worker
answering from sets the log does not hold; a log it cannot read stops it with a clear error.
"""
from __future__ import annotations

import random
import time
import uuid
from contextlib import contextmanager

import numpy as np
import pytest
import redis

from scanstream.engine.state import StateUnavailable
from scanstream.engine.state.memory import MemoryStateStore
from scanstream.engine.state.redis import RedisStateStore
from scanstream.engine.state import set_log
from scanstream.engine.state.set_log import SetLogError, pack_call, unpack_call

TTL = 600
GROUPS = 4


def clone_stream(seed: int, n: int = 600, keys: int = 40) -> list[tuple]:
    """Rows of a clone check (key, users' and provinces' members, which are present, new): few
    keys, so sets grow past a member; ``new`` on a key's first row only, as the pipeline flags it."""
    rng = random.Random(seed)
    rows, seen = [], set()
    for _ in range(n):
        key = rng.randrange(1, keys + 1)
        rows.append((key, (rng.randrange(8), rng.randrange(4)), (True, rng.random() < 0.7), key not in seen))
        seen.add(key)
    return rows


def call(store, rows: list[tuple]) -> list[list[int]]:
    """One ``distinct`` call of ``rows``, each key in group ``key % GROUPS``; each row's two sizes."""
    if not rows:
        return []
    keys = np.array([r[0] for r in rows], np.uint64)
    return store.distinct(keys, np.array([r[1] for r in rows], np.uint64), TTL, np.array([r[3] for r in rows]),
                          np.array([r[2] for r in rows]), (keys % np.uint64(GROUPS)).astype(np.int64)).tolist()


@contextmanager
def workers(deployment, client_of=None):
    """``open()`` starts a worker (a store of its own) on one prefix; all are closed and the
    prefix flushed at the end.  ``client_of(client)`` may wrap a worker's client."""
    prefix = f"scanstream-test:{uuid.uuid4().hex[:12]}:"
    opened = []

    def open_worker():
        store = RedisStateStore.from_url(deployment.url, prefix=prefix, cluster=deployment.cluster)
        if client_of is not None:
            store = RedisStateStore(client_of(store.client), prefix=prefix, url=deployment.url)
        opened.append(store)
        return store

    try:
        yield open_worker
    finally:
        cleaner = RedisStateStore.from_url(deployment.url, prefix=prefix, cluster=deployment.cluster)
        cleaner.flush_prefix()
        for s in opened + [cleaner]:
            s.close()


@pytest.mark.parametrize("seed,page", [(1, set_log.LOG_PAGE), (2, set_log.LOG_PAGE), (3, 3)])
def test_a_stream_split_over_workers_and_restarts_gets_the_answers_of_one_run(redis_deployment, seed, page,
                                                                              monkeypatch):
    """Batches of random sizes go to two workers in turn, and now and then to a worker started
    afresh (a restart, a rebalance): each must first take what the others logged (with pages of 3
    elements, a restore reads the log in many pages)."""
    monkeypatch.setattr(set_log, "LOG_PAGE", page)
    rows = clone_stream(seed)
    one_run = call(MemoryStateStore(), rows)
    rng = random.Random(seed)
    with workers(redis_deployment) as open_worker:
        pool = [open_worker(), open_worker()]
        got, i = [], 0
        while i < len(rows):
            size = rng.randrange(1, 60)
            if rng.random() < 0.15:
                pool[rng.randrange(2)] = open_worker()
            got += call(pool[rng.randrange(2)], rows[i:i + size])
            i += size
    assert got == one_run


def test_a_restore_reads_the_previous_epochs_log_before_this_ones(redis_deployment, monkeypatch):
    """A group's calls span two epochs of its log (two list keys): a worker started afresh must
    apply the older epoch's whole log first, however many pages each takes to read."""
    monkeypatch.setattr(set_log, "LOG_PAGE", 2)
    rows = clone_stream(5, n=300)
    now = [(int(time.time()) // TTL) * TTL - 100.0]  # 100 s before an epoch's end
    reference = MemoryStateStore(clock=lambda: now[0])
    with workers(redis_deployment) as open_worker:
        first = open_worker()
        first._sets.clock = lambda: now[0]
        got, want = [], []
        for a in range(0, 200, 20):  # ten calls, the last five in the next epoch
            now[0] += 30.0
            got += call(first, rows[a:a + 20])
            want += call(reference, rows[a:a + 20])
        fresh = open_worker()
        fresh._sets.clock = lambda: now[0]
        epoch = int(now[0]) // TTL
        assert all(first.client.llen(first._sets.log_key(g, TTL, e)) > 0 for g in range(GROUPS)
                   for e in (epoch - 1, epoch))  # every group's calls in both epochs' logs
        got += call(fresh, rows[200:])
        want += call(reference, rows[200:])
    assert got == want


class FailingWrites:
    """A client whose next pipeline with an RPUSH fails before anything is sent, as a dropped
    connection does, while ``fail`` is set; ``before_write`` runs first, when given."""

    def __init__(self, client):
        self.client = client
        self.fail = False
        self.before_write = None

    def __getattr__(self, name):
        return getattr(self.client, name)

    def pipeline(self, *args, **kwargs):
        return _Pipeline(self, self.client.pipeline(*args, **kwargs))


class _Pipeline:
    def __init__(self, owner: FailingWrites, pipe):
        self.owner, self.pipe, self.writes = owner, pipe, False

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def rpush(self, *args):
        self.writes = True
        return self.pipe.rpush(*args)

    def execute(self, *args, **kwargs):
        if self.writes and self.owner.before_write is not None:
            hook, self.owner.before_write = self.owner.before_write, None
            hook()
        if self.writes and self.owner.fail:
            self.owner.fail = False
            self.pipe.reset()
            raise redis.ConnectionError("connection dropped before the write (test)")
        return self.pipe.execute(*args, **kwargs)


def test_a_call_whose_log_write_failed_is_answered_again_as_one_run_would(redis_deployment):
    """The attack on continuity: the sets change in the worker, then Redis does not take the log
    write.  The call must fail (its batch is redelivered), and the redelivery must not find its
    own members already there (which would hide a clone's crossing)."""
    rows = clone_stream(7)
    one_run = call(MemoryStateStore(), rows)
    clients = []
    with workers(redis_deployment, lambda c: clients.append(FailingWrites(c)) or clients[-1]) as open_worker:
        worker = open_worker()
        got = call(worker, rows[:200])
        clients[0].fail = True
        with pytest.raises(StateUnavailable, match="connection dropped"):
            call(worker, rows[200:300])
        assert worker._sets.groups_held() == []  # what it had changed is not trusted
        got += call(worker, rows[200:300])  # the redelivery
        got += call(open_worker(), rows[300:])
    assert got == one_run


def test_a_writer_coming_between_read_and_write_makes_the_worker_rebuild_from_the_log(redis_deployment):
    """A worker that lost its partition but has not noticed yet writes between another worker's
    read and write: the latter's sets no longer match the log's order, so it drops them and
    answers its next call from the log."""
    rows = clone_stream(11)
    clients = []
    with workers(redis_deployment, lambda c: clients.append(FailingWrites(c)) or clients[-1]) as open_worker:
        late, owner = open_worker(), open_worker()
        call(owner, rows[:100])
        clients[1].before_write = lambda: call(late, rows[100:150])
        call(owner, rows[150:250])
        held = set(owner._sets.groups_held())
        assert held < set(range(GROUPS))  # the groups both wrote were dropped
        # from here on the owner answers as the log's order: late's rows, then its own
        reference = MemoryStateStore()
        call(reference, rows[:150])
        call(reference, rows[150:250])
        assert call(owner, rows[250:]) == call(reference, rows[250:])


def test_a_log_element_this_version_cannot_read_stops_the_worker_with_a_clear_error(redis_deployment):
    with workers(redis_deployment) as open_worker:
        first = open_worker()
        call(first, [(4, (1, 1), (True, True), True)])
        key = first._sets.log_key(0, TTL, int(time.time()) // TTL)
        first.client.rpush(key, b"\x07garbage")
        with pytest.raises(SetLogError, match="written by another version") as caught:
            call(open_worker(), [(4, (2, 1), (True, True), False)])
        assert key.decode() in str(caught.value) and not caught.value.transient


def test_groups_a_worker_no_longer_uses_are_dropped_after_two_ttls(redis_deployment):
    with workers(redis_deployment) as open_worker:
        worker = open_worker()
        keys = np.array([1, 2], np.uint64)
        worker.distinct(keys, np.array([5, 6], np.uint64), 1, groups=np.array([1, 2]))
        assert worker._sets.groups_held() == [1, 2]
        time.sleep(2.2)
        worker.distinct(keys[:1], np.array([7], np.uint64), 1, groups=np.array([1]))
        assert worker._sets.groups_held() == [1]


def test_a_logged_call_reads_back_as_it_was_made():
    members = np.array([[0, 2**64 - 1], [3, 4]], np.uint64)
    for new, present in [(None, None), (np.array([True, False]), np.array([[True, False], [False, True]]))]:
        keys, got, ttl, got_new, got_present, at = unpack_call(
            pack_call(np.array([9, 2**64 - 1], np.uint64), members, 30, new, present, 12.5))
        assert keys.tolist() == [9, 2**64 - 1] and got.tolist() == members.tolist() and (ttl, at) == (30, 12.5)
        assert (got_new is None) == (new is None) and (got_present is None) == (present is None)
        if new is not None:
            assert got_new.tolist() == new.tolist() and got_present.tolist() == present.tolist()
    flat = unpack_call(pack_call(np.array([1], np.uint64), np.array([8], np.uint64), 5, None, None, 0.0))[1]
    assert flat.shape == (1,) and flat.tolist() == [8]
    with pytest.raises(ValueError, match="expected format 1"):
        unpack_call(pack_call(np.array([1], np.uint64), np.array([8], np.uint64), 5, None, None, 0.0)[:-1])
