"""First outcomes filed under their identity's reference (``streams.replies.file_outcomes``).

A new scan whose code decides its verdict gets no reply field of its own: the worker files its
outcome line in one string per claim call and code shard, at the rank its identity names, and the
scan API follows the identity there.  The attacks first: a thief who resends an owner's scan_id
with a forged code, before and after the owner's outcome lands, must read only its own conflict,
by a wait and by a poll; a crash between the claim and the reply must leave the redelivery's
answer readable; a wait woken by the notice must find a file that a Redis Cluster keeps on
another node.  Each case runs on the single Redis and on the Redis Cluster, on the real claim.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis

from scanstream.engine.registry import batch_key
from scanstream.engine.state import OUTCOME_REF
from scanstream.engine.state.redis import RedisStateStore, identity_epochs, outcome_ref
from scanstream.engine.verdicts import LABELS, Verdict
from scanstream.streams import replies
from scanstream.streams.replies import (FILED, ReplyWatcher, ReplyWriter, file_outcomes, first_outcomes,
                                        outcome_file, poll_key, read_replies, reply_epochs)

TTL_S = 3600


@contextlib.contextmanager
def _store(deployment):
    store = RedisStateStore.from_url(deployment.url, prefix=f"scanstream-test:{uuid.uuid4().hex[:12]}:",
                                     replay_ttl_s=TTL_S, cluster=deployment.cluster)
    try:
        yield store
    finally:
        store.flush_prefix()
        store.close()


def _event(scan_id: str, serial: int, user: str, verdict: Verdict = Verdict.OK, fingerprint: int | None = None,
           code: str | None = None) -> dict:
    return {"scan_id": scan_id, "serial": serial, "user": user, "verdict": verdict,
            "fingerprint": fingerprint if fingerprint is not None else 1000 + serial,
            "code": code or f"CODE-{serial}"}


def _deliver(store: RedisStateStore, writer: ReplyWriter | None, events: list[dict]) -> list[bytes]:
    """One worker batch: the real claim of ``events``, their outcome lines, and (with a writer) the
    reply step as the worker runs it; the lines."""
    n = len(events)
    claims = store.claim(np.array([e["scan_id"] for e in events], object),
                         np.array([e["fingerprint"] for e in events], np.uint64),
                         np.array([e["user"] for e in events], object),
                         np.full(n, batch_key(7, 0, 42), np.uint64),
                         np.array([e["serial"] for e in events], np.uint32),
                         np.array([int(e["verdict"]) for e in events], np.uint8))
    scans = {"scan_id": np.array([e["scan_id"] for e in events], object),
             "verdict": LABELS[claims.verdict], "replay": claims.replay.astype(np.uint8), "outcome_ref": claims.ref}
    lines = [orjson.dumps({"scan_id": e["scan_id"], "code": e["code"], "user_id": e["user"], "role": "consumer",
                           "ts": 1, "verdict": str(v), "replay": int(r)})
             for e, v, r in zip(events, scans["verdict"], scans["replay"])]
    if writer is not None:
        writer.push([e["scan_id"] for e in events], lines, first_outcomes(scans), scans["outcome_ref"])
    return lines


def _read(store, scan_ids: list[str]) -> list[list[dict]]:
    held = read_replies(store.client, store.prefix, TTL_S, scan_ids, reply_epochs(time.time() - 60, time.time()))
    return [[orjson.loads(x) for x in replies.fresh(h, {})] for h in held]


def _fields(store) -> int:
    """Reply fields of the store's prefix (``P rh:`` hashes)."""
    return sum(store.client.hlen(k) for k in store.keys(b"rh:*"))


def test_a_new_scan_gets_no_reply_field_and_is_read_through_its_identity(redis_deployment):
    """250 new scans at OK and 50 forged ones: the forged ones' identities hold their final verdict,
    so they keep a field each; the others are filed, one string per code shard, and each scan_id
    reads back exactly its own line."""
    with _store(redis_deployment) as store:
        writer = ReplyWriter(store.client, store.prefix, 60)
        events = ([_event(f"new-{i}", i, f"wx-{i}") for i in range(250)]
                  + [_event(f"forged-{i}", 10_000 + i, "bot", Verdict.BAD_MAC) for i in range(50)])
        lines = _deliver(store, writer, events)
        assert _fields(store) == 50
        files = store.keys(b"rb:*")
        assert 1 <= len(files) <= 16  # one per code shard of the claim
        got = _read(store, [e["scan_id"] for e in events])
        assert [[orjson.dumps(x) for x in g] for g in got] == [[line] for line in lines]


def test_a_thief_resending_a_filed_scan_id_reads_only_its_own_conflict(redis_deployment):
    """The owner's ``ok`` is filed; a thief resends its scan_id with a forged code, once after the
    owner's outcome landed and once racing it (its wait registered before).  Each of the thief's
    waits gets its conflict, a poll with the thief's key the conflict, the owner's poll the ``ok``;
    the owner's filed line never answers the thief."""
    with _store(redis_deployment) as store:
        writer = ReplyWriter(store.client, store.prefix, 60)
        owner = _event("victim-1", 1, "wx-owner")
        racing = _event("victim-2", 2, "wx-owner")
        copied = _event("victim-3", 3, "wx-owner")
        thief = dict(owner, user="wx-thief", fingerprint=99, code="FORGED-1")
        thief_racing = dict(racing, user="wx-thief", fingerprint=98, code="FORGED-2")
        # the owner's code, user and ts copied, another field changed: the same outcome key, so
        # only what the wait counted before keeps the owner's "ok" from answering it
        copycat = dict(copied, fingerprint=97)
        key_of = {name: (e["code"], e["user"], "consumer", 1) for name, e in
                  (("owner", owner), ("thief", thief), ("thief_racing", thief_racing), ("copycat", copycat))}

        async def scenario():
            aclient = (aioredis.RedisCluster.from_url(redis_deployment.url) if redis_deployment.cluster
                       else aioredis.Redis.from_url(redis_deployment.url))
            watcher = ReplyWatcher(aclient, store.prefix, TTL_S, sweep_s=0.05)
            await watcher.start()
            try:
                assert await watcher.subscribed(5)
                # racing: the thief's wait counts before the owner's outcome exists
                early = watcher.expect("victim-2", {}, key_of["thief_racing"])
                _deliver(store, writer, [owner, racing, copied])
                epochs = reply_epochs(time.time(), time.time())
                seen = [replies.counts(held, epochs) for held in await replies.read_async(
                    watcher.trips, store.prefix, TTL_S, ["victim-1", "victim-3"], [epochs] * 2)]
                assert [s[FILED] for s in seen] == [1, 1]  # the owner's outcomes are there, filed
                late = watcher.expect("victim-1", seen[0], key_of["thief"])
                same_key = watcher.expect("victim-3", seen[1], key_of["copycat"])
                _deliver(store, writer, [thief, thief_racing, copycat])
                answers = [await watcher.wait(w, 5) for w in (late, early, same_key)]
                trips = replies.RoundTrips(aclient)
                polls = [await replies.latest_reply(trips, store.prefix, TTL_S, "victim-1", 60,
                                                    poll_key("victim-1", key_of[who])) for who in ("thief", "owner")]
                return answers, polls
            finally:
                await watcher.close()
                await aclient.aclose()

        answers, polls = asyncio.run(scenario())
        assert [(a["user_id"], a["verdict"]) for a in answers] == [("wx-thief", "conflict")] * 2 + [("wx-owner", "conflict")]
        assert [(p["user_id"], p["verdict"]) for p in polls] == [("wx-thief", "conflict"), ("wx-owner", "ok")]
        assert [[x["verdict"] for x in g] for g in _read(store, ["victim-1", "victim-2", "victim-3"])] == [
            ["ok", "conflict"]] * 3


def test_a_crash_between_the_claim_and_the_reply_leaves_the_redelivery_readable(redis_deployment):
    """The first delivery claims and dies before its reply step: its identities name a file that
    never comes.  The redelivery is a replay, joined into the history, and is what a reader finds;
    the dead worker's reply, should it land after all, is read first and alone in the file."""
    with _store(redis_deployment) as store:
        writer = ReplyWriter(store.client, store.prefix, 60)
        events = [_event(f"crash-{i}", i, f"wx-{i}") for i in range(20)]
        first = _deliver(store, None, events)  # claimed, not replied
        again = _deliver(store, writer, events)
        assert not store.keys(b"rb:*")
        assert [[x["replay"] for x in g] for g in _read(store, [e["scan_id"] for e in events])] == [[1]] * 20
        # the zombie's own reply step, late: it files its first outcomes under its claim's token
        scans = {"scan_id": np.array([e["scan_id"] for e in events], object),
                 "verdict": np.full(20, "ok", object), "replay": np.zeros(20, np.uint8)}
        found = store.client.hmget(_identity_key(store, "crash-0"), [b"crash-0"])[0]
        shard, token, rank = outcome_ref(found)
        refs = np.zeros(20, OUTCOME_REF)
        refs[0] = (int.from_bytes(token, "little"), rank, shard)
        writer.push([e["scan_id"] for e in events][:1], first[:1], first_outcomes(scans)[:1], refs[:1])
        got = _read(store, ["crash-0"])[0]
        assert [orjson.dumps(x) for x in got] == [first[0], again[0]]


def test_a_claim_cut_between_its_steps_is_answered_whoever_redelivers_it(redis_deployment):
    """A worker dies between the claim's two steps: its identities name its token, and no code
    step recorded them.  The survivors that redeliver the batch, split over two of them, decide
    those scans as the first time (not replays), but the file under the dead worker's token is
    not theirs to write: one survivor's file would overwrite the other's rows.  Every scan keeps
    its outcome (found in 4 workers with one killed, where 65 scans had none)."""
    with _store(redis_deployment) as store:
        writer = ReplyWriter(store.client, store.prefix, 60)
        events = [_event(f"cut-{i}", i, f"wx-{i}") for i in range(40)]
        code_step = store._claim_codes

        def killed(*args, **kwargs):
            raise RuntimeError("killed between the claim's steps")
        store._claim_codes = killed
        with pytest.raises(RuntimeError, match="killed"):
            _deliver(store, writer, events)
        store._claim_codes = code_step
        first_half = _deliver(store, writer, events[::2])
        second_half = _deliver(store, writer, events[1::2])
        got = _read(store, [e["scan_id"] for e in events])
        assert [[orjson.dumps(x) for x in g] for g in got] == [
            [line] for pair in zip(first_half, second_half) for line in pair]
        assert [g[0]["verdict"] for g in got] == ["ok"] * 40


def _identity_key(store, scan_id: str) -> bytes:
    from scanstream.engine.state.redis import identity_hash
    from scanstream.streams.replies import reply_shards

    shard = int(reply_shards([scan_id])[0])
    now = time.time()
    for e in reversed(identity_epochs(now, now, TTL_S)):
        key = identity_hash(store.prefix.encode(), shard, e)
        if store.client.hexists(key, scan_id):
            return key
    raise AssertionError(f"no identity for {scan_id}")


def test_a_wait_woken_by_the_notice_finds_the_file(redis_deployment):
    """The file is written before the notice, so a wait that only a notice wakes (its sweeps
    every 30 s) is answered at once; on a Cluster the file and the notice are on other nodes."""
    with _store(redis_deployment) as store:
        writer = ReplyWriter(store.client, store.prefix, 60)
        events = [_event(f"woken-{i}", i, f"wx-{i}") for i in range(40)]

        async def scenario():
            aclient = (aioredis.RedisCluster.from_url(redis_deployment.url) if redis_deployment.cluster
                       else aioredis.Redis.from_url(redis_deployment.url))
            watcher = ReplyWatcher(aclient, store.prefix, TTL_S, sweep_s=30, live_sweep_s=30)
            sent: list[list[bytes]] = []  # each round trip's commands
            run = watcher.trips.run

            async def counted(commands):
                class Recorder:
                    def execute_command(self, *args):
                        sent[-1].append(args[0].encode() + b" " + (args[1] if isinstance(args[1], bytes)
                                                                   else str(args[1]).encode()))
                sent.append([])
                for add in commands:
                    add(Recorder())
                return await run(commands)
            watcher.trips.run = counted
            await watcher.start()
            try:
                assert await watcher.subscribed(5)
                waits = [watcher.expect(e["scan_id"], {}, (e["code"], e["user"], "consumer", 1)) for e in events]
                started = time.monotonic()
                await asyncio.to_thread(_deliver, store, writer, events)
                got = [await watcher.wait(w, 10) for w in waits]
                return got, time.monotonic() - started, sent
            finally:
                await watcher.close()
                await aclient.aclose()

        got, took, sent = asyncio.run(scenario())
        assert [g and g["scan_id"] for g in got] == [e["scan_id"] for e in events]
        assert took < 10  # not a sweep's doing: those would come after 30 s, past every wait's end
        assert _fields(store) == 0
        # the notices placed every outcome: each wake read the slots it named, no identity
        assert sent and all(c.startswith((b"HMGET", b"GETRANGE")) for trip in sent for c in trip)
        assert not [c for trip in sent for c in trip if b"rp:" in c]
        assert sum(c.startswith(b"GETRANGE") for trip in sent for c in trip) == len(events)


def test_outcome_files_hold_each_rank_at_its_offsets():
    """``file_outcomes``: per token and code shard, the offsets of ranks 0 .. m then the lines; a
    rank nobody filed (a replay's) is empty; a rank filed twice is refused."""
    refs = np.zeros(5, OUTCOME_REF)
    refs["token"] = [7, 7, 9, 7, 7]
    refs["shard"] = [3, 3, 3, 5, 3]
    refs["rank"] = [2, 0, 0, 0, 4]
    lines = [b"two", b"zero", b"other-token", b"other-shard", b"four"]
    filed = file_outcomes("p:", lines, refs, np.array([True, True, True, True, True]))
    files = dict(filed.files)
    seven = (7).to_bytes(8, "little")
    blob = files[outcome_file("p:", 3, seven)]
    offsets = np.frombuffer(blob, "<u4", 6)
    slot = [blob[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    assert slot == [b"zero", b"", b"two", b"", b"four"]
    assert len(files) == 3 and files[outcome_file("p:", 5, seven)].endswith(b"other-shard")
    # each row's place: its file and the bytes of its slot, as a notice carries it
    for p in filed.places:
        key = outcome_file("p:", int(p["shard"]), int(p["token"]).to_bytes(8, "little"))
        assert files[key][p["start"]:p["end"]] == lines[p["row"]]
    assert file_outcomes("p:", lines, refs, np.zeros(5, bool)).files == []
    refs["rank"][1] = 2
    with pytest.raises(ValueError, match="a rank filed twice"):
        file_outcomes("p:", lines, refs, np.ones(5, bool))


def test_a_notice_that_places_another_scans_slot_answers_nothing(redis_deployment):
    """A forged notice (anyone who may PUBLISH on the channel) naming, for a waited scan_id, the
    slot of another scan's outcome with the waiter's own code and user: the read keeps a slot only
    when its line names the scan_id read, so the wait stays unanswered."""
    with _store(redis_deployment) as store:
        writer = ReplyWriter(store.client, store.prefix, 60)
        _deliver(store, writer, [_event("other-1", 1, "wx-1", code="SAME")])
        found = store.client.hmget(_identity_key(store, "other-1"), [b"other-1"])[0]
        shard, token, rank = outcome_ref(found)
        blob = store.client.get(outcome_file(store.prefix, shard, token))
        start, end = np.frombuffer(blob, "<u4", 2, 4 * rank).tolist()
        place = (shard, int.from_bytes(token, "little"), start, end)

        async def scenario():
            aclient = (aioredis.RedisCluster.from_url(redis_deployment.url) if redis_deployment.cluster
                       else aioredis.Redis.from_url(redis_deployment.url))
            try:
                trips = replies.RoundTrips(aclient)
                epochs = reply_epochs(time.time(), time.time())
                return await replies.read_async(trips, store.prefix, TTL_S, ["victim-9", "other-1"], [epochs] * 2,
                                                [place, place])
            finally:
                await aclient.aclose()

        victim, other = asyncio.run(scenario())
        assert victim == {} and FILED in other


def test_notices_carry_the_places_of_filed_outcomes_and_refuse_other_shapes():
    """``parse_notice``: scan_ids and places back as sent; a truncated or padded notice is no notice."""
    places = np.zeros(2, replies.PLACE)
    places["row"], places["shard"], places["token"] = [2, 0], [4, 9], [77, 88]
    places["start"], places["end"] = [40, 50], [45, 60]
    ids = [b"a", b"bb", "码".encode()]
    message = replies._notice(ids, places)
    got_ids, got_places = replies.parse_notice(message)
    assert got_ids == ids
    assert got_places == {ids[2]: (4, 77, 40, 45), b"a": (9, 88, 50, 60)}
    assert replies.parse_notice(replies._notice(ids, places[:0])) == (ids, {})
    older = replies._notice(ids, places[:0])[:-4]  # an older worker's: the scan_ids alone
    assert replies.parse_notice(older) == (ids, {})
    for broken in (message[:-1], message + b"x", message[:3], b"", older + b"xy"):
        assert replies.parse_notice(broken) == ([], {})
    far = places.copy()
    far["row"][0] = 3  # past the notice's scan_ids
    assert replies.parse_notice(replies._notice(ids, far)) == ([], {})


def test_only_a_claimed_identity_with_a_record_leads_to_a_file():
    """``outcome_ref``: what the reader follows, and the identities it must not."""
    from scanstream.engine.state import pack_answer
    from scanstream.engine.state.redis import _CLAIMED

    token = bytes(range(1, 9))
    assert outcome_ref(pack_answer(_CLAIMED + 5, 42, "wx", token + (3).to_bytes(4, "little"))) == (5, token, 3)
    assert outcome_ref(pack_answer(int(Verdict.BAD_MAC), 42, "a-long-user-id-of-thirty-bytes")) is None
    assert outcome_ref(pack_answer(_CLAIMED + 5, 42, "wx", bytes(12))) is None  # a reference to no record
    assert outcome_ref(None) is None and outcome_ref(b"\x45") is None
