"""The reply hashes (``streams.replies``): what the worker writes for the scan API, and what readers find.

Each case runs on the single Redis and on the Redis Cluster (``redis_deployment``).  The attacks
first: a scan_id resent with other content must keep both outcomes, each for its own waiter;
a line must never be cut into two by what a consumer typed; a wait registered before a resend
must never be answered by what was there before it.
"""
from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from scanstream.engine import outcomes
from scanstream.streams import replies
from scanstream.streams.replies import (REPLY_CHUNK, REPLY_EPOCH_S, ReplyWatcher, ReplyWriter, read_replies,
                                        reply_epochs, reply_hash, reply_shards)


#: The replay TTL of the identities these tests make (``RedisStateStore``), which readers are told.
TTL_S = 3600


def _client(deployment):
    return redis.RedisCluster.from_url(deployment.url) if deployment.cluster else redis.Redis.from_url(deployment.url)


def _aclient(deployment):
    return (aioredis.RedisCluster.from_url(deployment.url) if deployment.cluster
            else aioredis.Redis.from_url(deployment.url))


@contextlib.asynccontextmanager
async def _watching(deployment, prefix: str, **sweeps):
    """A started ``ReplyWatcher`` (sweeping every 50 ms unless ``sweeps`` say otherwise) on a client
    of its own, closed after."""
    aclient = _aclient(deployment)
    watcher = ReplyWatcher(aclient, prefix, TTL_S, **({"sweep_s": 0.05} | sweeps))
    await watcher.start()
    try:
        assert await watcher.subscribed(5)
        yield watcher
    finally:
        await watcher.close()
        await aclient.aclose()


def _line(scan_id: str, verdict: str, user: str = "wx-1", code: str = "C1") -> bytes:
    return orjson.dumps({"scan_id": scan_id, "code": code, "user_id": user, "role": "consumer", "ts": 1,
                         "verdict": verdict})


def _now_epochs() -> range:
    return reply_epochs(time.time() - 5, time.time())


def test_a_resent_scan_id_keeps_every_outcome_in_order(redis_deployment, redis_prefix):
    """The first delivery's ``ok`` and a thief's ``conflict`` under one scan_id, in one call and
    in two: nothing overwrites the first outcome."""
    client = _client(redis_deployment)
    writer = ReplyWriter(client, redis_prefix, 60)
    writer.push(["s-1", "s-2", "s-1"], [_line("s-1", "ok"), _line("s-2", "ok"), _line("s-1", "conflict", "thief")])
    writer.push(["s-1"], [_line("s-1", "replay")])
    one, two = read_replies(client, redis_prefix, TTL_S, ["s-1", "s-2"], _now_epochs())
    assert [orjson.loads(x)["verdict"] for x in replies.fresh(one, {})] == ["ok", "conflict", "replay"]
    assert [orjson.loads(x)["verdict"] for x in replies.fresh(two, {})] == ["ok"]
    client.close()


def _batch(*rows: tuple[str, str, int]) -> outcomes.Columns:
    """Outcome columns of (scan_id, verdict, replay) rows, as the pipeline gives them."""
    cols = outcomes.empty(outcomes.SCAN_COLUMNS, len(rows))
    cols["scan_id"][:] = [r[0] for r in rows]
    cols["verdict"][:] = [r[1] for r in rows]
    cols["replay"][:] = [r[2] for r in rows]
    cols["user_id"][:] = [f"wx-{i}" for i in range(len(rows))]
    return cols


def _verdicts(client, prefix: str, scan_id: str) -> list[str]:
    return [orjson.loads(x)["verdict"] for x in replies.fresh(read_replies(client, prefix, TTL_S, [scan_id], _now_epochs())[0], {})]


def test_a_first_outcome_written_blind_never_overwrites_nor_hides_another(redis_deployment, redis_prefix):
    """A scan's first outcome is written without a read.  The attacks on that: an invalid event
    (which makes no identity, so the worker cannot know it was there) sent under the scan_id just
    before the genuine scan, and just after; a thief's conflict pushed by another worker before the
    owner's first outcome lands; a replay.  Every outcome stays, in the order it was written, and
    the first outcome moves into the history once another comes."""
    client = _client(redis_deployment)
    writer = ReplyWriter(client, redis_prefix, 60)
    writer.push_outcomes(_batch(("inv-first", "invalid_event", 0)))
    writer.push_outcomes(_batch(("inv-first", "ok", 0), ("inv-after", "ok", 0)))
    writer.push_outcomes(_batch(("inv-after", "invalid_event", 0)))
    assert _verdicts(client, redis_prefix, "inv-first") == ["invalid_event", "ok"]
    assert _verdicts(client, redis_prefix, "inv-after") == ["ok", "invalid_event"]
    # a thief's conflict, judged and pushed by another worker before the owner's outcome lands
    writer.push_outcomes(_batch(("race", "conflict", 0)))
    writer.push_outcomes(_batch(("race", "ok", 0)))
    writer.push_outcomes(_batch(("race", "repeat", 1)))
    assert _verdicts(client, redis_prefix, "race") == ["conflict", "ok", "repeat"]
    # once joined, a scan_id's outcomes are one field, its history; a lone first outcome is its own
    key = reply_hash(redis_prefix, int(reply_shards(["inv-after"])[0]), int(time.time() // REPLY_EPOCH_S))
    assert client.hget(key, "inv-after") is None
    assert client.hget(key, replies.history_field(b"inv-after")).count(b"\n") == 1
    writer.push_outcomes(_batch(("alone", "ok", 0)))
    alone = reply_hash(redis_prefix, int(reply_shards(["alone"])[0]), int(time.time() // REPLY_EPOCH_S))
    assert client.hget(alone, replies.history_field(b"alone")) is None and client.hget(alone, "alone")
    client.close()


def test_blind_and_joined_outcomes_of_every_shard_in_one_call_each_reach_their_scan_id(redis_deployment,
                                                                                       redis_prefix):
    """One call with first outcomes, resends and a scan_id twice, across shards and past the
    script's slices: the blind rows travel as arguments of their own and the joined ones packed,
    and each scan_id must end with exactly its own outcomes, in order."""
    client = _client(redis_deployment)
    writer = ReplyWriter(client, redis_prefix, 60)
    writer.push_outcomes(_batch(*[(f"old-{i}", "ok", 0) for i in range(30)]))
    rows = [(f"new-{i}", "ok", 0) for i in range(3 * replies._SLICE)]
    rows[::7] = [(f"old-{i}", "conflict", 0) for i in range(len(rows[::7]))]
    rows += [("twice", "ok", 0), ("new-1", "ok", 1), ("twice", "conflict", 0)]
    writer.push_outcomes(_batch(*rows))
    want: dict[str, list[str]] = {f"old-{i}": ["ok"] for i in range(30)}
    for sid, verdict, _ in rows:
        want.setdefault(sid, []).append(verdict)
    got = read_replies(client, redis_prefix, TTL_S, list(want), _now_epochs())
    assert {sid: [orjson.loads(x)["verdict"] for x in replies.fresh(h, {})] for sid, h in zip(want, got)} == want
    client.close()


def test_a_node_that_forgot_the_push_script_still_gets_every_outcome(redis_deployment, redis_prefix):
    """The script is loaded when the writer starts; a node restarted since (``SCRIPT FLUSH`` here)
    answers the pipelined call NOSCRIPT after it took the first outcomes' HSETs: the writer sends
    the call again through the client, and nothing is lost or written twice."""
    client = _client(redis_deployment)
    writer = ReplyWriter(client, redis_prefix, 60)
    client.script_flush()
    writer.push_outcomes(_batch(("flushed", "ok", 0), ("flushed-2", "ok", 0)))
    client.script_flush()
    writer.push_outcomes(_batch(("flushed", "conflict", 0)))
    assert _verdicts(client, redis_prefix, "flushed") == ["ok", "conflict"]
    assert _verdicts(client, redis_prefix, "flushed-2") == ["ok"]
    client.close()


def test_a_wait_counts_a_first_outcome_once_when_it_moves_into_the_history(redis_deployment, redis_prefix):
    """A wait counted the owner's ``ok`` (a lone first outcome); the thief's conflict then moves it
    into the history: the wait must get the conflict, never the ``ok`` again as if it were new."""
    client = _client(redis_deployment)
    writer = ReplyWriter(client, redis_prefix, 60)
    writer.push_outcomes(_batch(("moved", "ok", 0)))
    epochs = _now_epochs()
    seen = replies.counts(read_replies(client, redis_prefix, TTL_S, ["moved"], epochs)[0], epochs)
    assert sum(seen.values()) == 1
    writer.push_outcomes(_batch(("moved", "conflict", 0)))
    new = replies.fresh(read_replies(client, redis_prefix, TTL_S, ["moved"], epochs)[0], seen)
    assert [orjson.loads(x)["verdict"] for x in new] == ["conflict"]
    client.close()


def test_outcomes_an_older_worker_joined_in_the_scan_ids_field_are_read_and_kept(redis_deployment, redis_prefix):
    """During an upgrade an older worker still joins every outcome into the scan_id's own field:
    a reader splits it into its lines, and a newer worker's join keeps them, in order."""
    client = _client(redis_deployment)
    sid = "older"
    key = reply_hash(redis_prefix, int(reply_shards([sid])[0]), int(time.time() // REPLY_EPOCH_S))
    client.hset(key, sid, _line(sid, "ok") + b"\n" + _line(sid, "conflict"))
    client.expire(key, 120)
    assert _verdicts(client, redis_prefix, sid) == ["ok", "conflict"]
    ReplyWriter(client, redis_prefix, 60).push_outcomes(_batch((sid, "conflict", 0)))
    assert _verdicts(client, redis_prefix, sid) == ["ok", "conflict", "conflict"]
    client.close()


def test_a_scan_id_repeated_across_the_scripts_slices_keeps_every_outcome(redis_deployment, redis_prefix):
    """The push script writes a shard's outcomes a slice at a time (``replies._SLICE``) straight
    from their unpacking: a scan_id that already held an outcome, and comes again in a later
    slice of the same call, must still end with every outcome in row order, whatever slice its
    rows fall in; its neighbours keep exactly their own."""
    client = _client(redis_deployment)
    writer = ReplyWriter(client, redis_prefix, 60)
    writer.push(["hot"], [_line("hot", "ok")])
    shard = int(reply_shards(["hot"])[0])
    # enough scan_ids of the same shard that "hot" comes in its first, middle and last slice
    same = [s for s in (f"n-{i}" for i in range(40 * replies._SLICE)) if int(reply_shards([s])[0]) == shard]
    same = same[:3 * replies._SLICE]
    ids = ["hot"] + same[:replies._SLICE] + ["hot"] + same[replies._SLICE:] + ["hot"]
    verdicts = {0: "conflict", replies._SLICE + 1: "replay", len(ids) - 1: "conflict"}
    writer.push(ids, [_line(s, verdicts.get(i, "ok"), f"u{i}") for i, s in enumerate(ids)])
    got = read_replies(client, redis_prefix, TTL_S, ["hot", *same], _now_epochs())
    assert [orjson.loads(x)["verdict"] for x in replies.fresh(got[0], {})] == ["ok", "conflict", "replay", "conflict"]
    assert [[orjson.loads(x)["user_id"] for x in replies.fresh(h, {})] for h in got[1:]] == \
        [[f"u{ids.index(s)}"] for s in same]
    client.close()


def test_a_typed_newline_cannot_split_an_outcome(redis_deployment, redis_prefix):
    """Outcomes of one scan_id are joined by a newline: a user_id or scan_id holding one must come
    back escaped inside its line, not as a forged second outcome."""
    client = _client(redis_deployment)
    cols = outcomes.empty(outcomes.SCAN_COLUMNS, 2)
    cols["scan_id"][:] = ["s\nnl", "s\nnl"]
    cols["user_id"][:] = ['wx-1\n{"verdict": "ok", "prize_cents": 99900}', "wx-2"]
    cols["verdict"][:] = ["conflict", "ok"]
    ReplyWriter(client, redis_prefix, 60).push_outcomes(cols)
    got = replies.fresh(read_replies(client, redis_prefix, TTL_S, ["s\nnl"], _now_epochs())[0], {})
    assert [orjson.loads(x)["user_id"] for x in got] == [cols["user_id"][0], "wx-2"]
    client.close()


def test_a_chunk_spans_every_shard_and_more_fields_than_one_command_takes(redis_deployment, redis_prefix):
    """More scan_ids than the script's slices (100) and than one call's chunk, across all 16
    shards: each scan_id holds exactly its own line, in one hash per shard and minute."""
    client = _client(redis_deployment)
    n = REPLY_CHUNK + 1500
    ids = [f"bulk-{i}" for i in range(n)]
    ReplyWriter(client, redis_prefix, 60).push(ids, [_line(s, "ok", f"u{i}") for i, s in enumerate(ids)])
    got = read_replies(client, redis_prefix, TTL_S, ids, _now_epochs())
    assert [[orjson.loads(x)["user_id"] for x in replies.fresh(h, {})] for h in got] == [[f"u{i}"] for i in range(n)]
    assert len(set(reply_shards(ids).tolist())) == 16
    # one hash per shard holds them all (they were written within a second or two)
    keys = {k for h, s in zip(got, reply_shards(ids).tolist()) for e in h for k in [reply_hash(redis_prefix, s, e)]}
    assert 16 <= len(keys) <= 32
    client.close()


def test_a_reply_hash_expires_one_ttl_after_its_minute(redis_deployment, redis_prefix):
    client = _client(redis_deployment)
    ReplyWriter(client, redis_prefix, 7).push(["ttl-1"], [_line("ttl-1", "ok")])
    held = read_replies(client, redis_prefix, TTL_S, ["ttl-1"], _now_epochs())[0]
    (epoch,) = held
    ttl = client.ttl(reply_hash(redis_prefix, int(reply_shards(["ttl-1"])[0]), epoch))
    assert 7 - 1 <= ttl <= 7 + REPLY_EPOCH_S
    with pytest.raises(ValueError, match="ttl_s"):
        ReplyWriter(client, redis_prefix, 0)
    client.close()


def test_a_wait_is_answered_only_by_what_came_after_it_counted(redis_deployment, redis_prefix):
    """The gateway counts before publishing.  Outcomes already there, in this minute's hash and in
    the minute before (a resend across a minute's end), must not answer the new wait, even when
    they answer the same event (a replay of a winning scan: the old line says ``ok`` with its
    prize; the resend's own outcome is what the resender must get)."""
    client = _client(redis_deployment)
    sid = "cross-minute"
    shard = int(reply_shards([sid])[0])
    before = int(time.time() // REPLY_EPOCH_S) - 1
    client.hset(reply_hash(redis_prefix, shard, before), sid, _line(sid, "ok"))
    client.expire(reply_hash(redis_prefix, shard, before), 60)
    writer = ReplyWriter(client, redis_prefix, 60)
    writer.push([sid], [_line(sid, "ok")])
    key = replies.outcome_key(orjson.loads(_line(sid, "ok")))

    async def scenario():
        async with _watching(redis_deployment, redis_prefix) as watcher:
            # as a read a second into the minute spans it (and the next minute, should it have begun)
            epochs = range(before, int(time.time() // REPLY_EPOCH_S) + 2)
            (seen,) = [replies.counts(h, epochs) for h in read_replies(client, redis_prefix, TTL_S, [sid], epochs)]
            assert sum(seen.values()) == 2
            expected = watcher.expect(sid, seen, key)
            assert await watcher.wait(expected, 0.3) is None  # what was there does not answer
            expected = watcher.expect(sid, seen, key)
            asyncio.get_running_loop().call_later(0.1, writer.push, [sid], [_line(sid, "replay")])
            got = await watcher.wait(expected, 5)
            assert got is not None and got["verdict"] == "replay"

    asyncio.run(scenario())
    client.close()


def test_a_poll_reads_the_newest_outcome_of_its_own_event_only(redis_deployment, redis_prefix):
    """``latest_reply``: the owner's key reads the owner's ``ok`` even when a thief's ``conflict`` is
    newer, the thief's key the ``conflict``; a key of nobody's event, or a scan_id never written,
    reads nothing (the poll is a 404, never the scan_id's newest outcome)."""
    client = _client(redis_deployment)
    writer = ReplyWriter(client, redis_prefix, 60)
    owner, thief = _line("late-1", "ok"), _line("late-1", "conflict", "thief", code="FORGED")
    writer.push(["late-1", "late-1", "late-1"], [owner, thief, owner])
    key_of = {name: replies.poll_key("late-1", replies.outcome_key(orjson.loads(line)))
              for name, line in (("owner", owner), ("thief", thief))}
    assert key_of["owner"] != key_of["thief"] and len(key_of["owner"]) == replies.POLL_KEY_HEX

    async def scenario():
        aclient = _aclient(redis_deployment)
        try:
            trips = replies.RoundTrips(aclient)
            return [await replies.latest_reply(trips, redis_prefix, TTL_S, sid, 60, key) for sid, key in (
                ("late-1", key_of["owner"]), ("late-1", key_of["thief"]), ("late-1", "0" * replies.POLL_KEY_HEX),
                ("never-written", key_of["owner"]))]
        finally:
            await aclient.aclose()

    mine, theirs, nobody, never = asyncio.run(scenario())
    assert (mine["verdict"], mine["user_id"]) == ("ok", "wx-1")
    assert (theirs["verdict"], theirs["user_id"]) == ("conflict", "thief")
    assert nobody is None and never is None
    client.close()


def test_reply_epochs_cover_the_clocks_of_reader_and_server():
    t = 1_000_000 * REPLY_EPOCH_S + 30.0
    assert list(reply_epochs(t, t)) == [1_000_000]  # mid-minute: one hash
    edge = 1_000_000 * REPLY_EPOCH_S + 1.0  # a second into the minute: the one before may be Redis's
    assert list(reply_epochs(edge, edge)) == [999_999, 1_000_000]
    assert list(reply_epochs(t - 2 * REPLY_EPOCH_S, t)) == [999_998, 999_999, 1_000_000]
    assert np.all(reply_shards(["a", "b"]) < 16)


def test_a_late_wait_finds_what_its_look_back_covers_and_no_more(redis_deployment, redis_prefix):
    """``look`` (``ScanPublisher.await_result``): an outcome written three minutes before the wait
    is found when the wait looks back five, not when it looks back one (the default)."""
    client = _client(redis_deployment)
    sid = "late-wait"
    old = int(time.time() // REPLY_EPOCH_S) - 3
    client.hset(reply_hash(redis_prefix, int(reply_shards([sid])[0]), old), sid, _line(sid, "ok"))
    key = replies.outcome_key(orjson.loads(_line(sid, "ok")))

    async def scenario():
        async with _watching(redis_deployment, redis_prefix) as watcher:
            return (await watcher.look(sid, key, 0.2),
                    await watcher.look(sid, key, 0.2, lookback_s=5 * REPLY_EPOCH_S),
                    await watcher.look(sid, None, 0.2, lookback_s=5 * REPLY_EPOCH_S))

    short, long, anything = asyncio.run(scenario())
    assert short is None and long["verdict"] == "ok" and anything == long
    client.delete(reply_hash(redis_prefix, int(reply_shards([sid])[0]), old))
    client.close()


def test_many_reads_ask_each_reply_hash_once_and_each_scan_id_only_its_minutes(redis_deployment, redis_prefix):
    """``reads``: scan_ids in every shard, each over its own minutes, are one HMGET per hash; each
    gets back what its own minutes hold and nothing of a minute outside them."""
    client = _client(redis_deployment)
    now = int(time.time() // REPLY_EPOCH_S)
    ids = [f"span-{i}" for i in range(200)]
    shards = reply_shards(ids).tolist()
    for sid, s in zip(ids, shards):  # an outcome three minutes ago and one in this minute
        client.hset(reply_hash(redis_prefix, s, now - 3), sid, _line(sid, "old"))
        client.hset(reply_hash(redis_prefix, s, now), sid, _line(sid, "ok"))
    spans = [range(now - 3, now + 1) if i % 2 else range(now - 1, now + 1) for i in range(len(ids))]
    plan = replies.reads(redis_prefix, ids, spans)
    assert len(plan.commands) == len({(s, e) for s, span in zip(shards, spans) for e in span})
    # each scan_id's two fields (its history, then its first outcome) in each of its minutes
    assert sum(len(fields) for _, fields in plan.commands) == 2 * sum(len(span) for span in spans)

    async def scenario():
        aclient = _aclient(redis_deployment)
        try:
            return await replies.read_async(replies.RoundTrips(aclient), redis_prefix, TTL_S, ids, spans)
        finally:
            await aclient.aclose()

    for i, (sid, held) in enumerate(zip(ids, asyncio.run(scenario()))):
        verdicts = [orjson.loads(line)["verdict"] for line in replies.fresh(held, {})]
        assert verdicts == (["old", "ok"] if i % 2 else ["ok"]), (sid, held)
    assert replies.reads(redis_prefix, [], []).commands == []
    for s in set(shards):
        client.delete(reply_hash(redis_prefix, s, now - 3), reply_hash(redis_prefix, s, now))
    client.close()


def test_outcomes_written_while_the_subscription_was_lost_are_found_when_it_is_back(redis_deployment,
                                                                                    redis_prefix):
    """Notices are at most once: Redis drops the watcher's subscription (``CLIENT KILL TYPE
    pubsub``, as it does to a subscriber past its output buffer) and the outcome is written while
    nobody listens.  With sweeps too rare to find it before the wait's deadline, the re-made
    subscription must look for every wait itself, and answer this one long before the deadline."""
    client = _client(redis_deployment)
    writer = ReplyWriter(client, redis_prefix, 60)
    sid = "lost-notice"
    line = _line(sid, "ok")
    deadline_s = 30.0

    def kill_subscriptions() -> int:
        if redis_deployment.cluster:
            return sum(client.get_redis_connection(node).client_kill_filter(_type="pubsub")
                       for node in client.get_nodes())
        return client.client_kill_filter(_type="pubsub")

    async def scenario():
        async with _watching(redis_deployment, redis_prefix, sweep_s=deadline_s, live_sweep_s=deadline_s) as watcher:
            now = time.time()
            epochs = reply_epochs(now, now)
            expected = watcher.expect(sid, replies.counts({}, epochs), replies.outcome_key(orjson.loads(line)))
            assert kill_subscriptions() >= 1
            writer.push([sid], [line])  # its notice reaches nobody
            started = time.monotonic()
            got = await watcher.wait(expected, deadline_s)
            return got, time.monotonic() - started

    got, took = asyncio.run(scenario())
    assert got is not None and got["verdict"] == "ok"
    assert took < deadline_s / 2, f"answered after {took:.1f} s: by the deadline's last read, not the re-made subscription"
    client.close()
