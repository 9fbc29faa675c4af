"""Each scan's outcome, handed back to the scan API through Redis.

The scan API must answer the consumer within a few hundred milliseconds ("genuine, you won 8.8
yuan"), so it cannot read the whole ``scan-results`` topic.  The worker therefore also writes
each outcome to Redis, where any API instance finds it by its scan_id for ``result_ttl_s``.

Where, for almost every scan: its claim's outcome file.  A new scan whose code decides its verdict
(an identity marked CLAIMED in the state store, ``engine.state.redis``) already names where its
claim recorded that: the claim call's token, its rank, its code's shard (``OUTCOME_REF``, a
``BatchResult``'s ``refs``).  The
worker files the scan's first outcome line there too, in one string per claim call and code shard
(only the call that made the identity, so a file has one writer),
``P rb:{tag}:<token>`` (``file_outcomes``: the slots' offsets, then the lines), and a reader follows
the scan_id's identity to it (``_reading``): no hash field per scan, which cost Redis a new entry and
about 1 us of CPU a scan, most of what a reply cost.  A file expires with the reply hash of its
minute, and is written before the notice that announces its scans.

Where, for the rest: the reply hashes.  A scan_id's outcomes are in its state shard's hash for the minute
(``REPLY_EPOCH_S``) in which they were written, ``P rh:{tag}:<epoch>`` (``reply_hash``), in at most
two fields: its first outcome under the scan_id, and the outcomes of the minute that came with or
after another, oldest first, joined by a newline (JSON lines hold none of their own), under
``HISTORY`` + the scan_id (``history_field``; no scan_id's UTF-8 holds byte 0xFF, so no scan_id
names another's history).  Read in that order, the history then the first outcome, they are the
outcomes in the order they were written.  Why two: a first outcome that has no file (a forged
or unknown code, whose identity holds its final verdict: ``first_outcomes``) is written blind,
with a plain HSET and no read; only the rest (a resend, a conflict, an invalid event, which makes no identity,
or a scan_id twice in one call) is read and joined by the push script: its history, the first
outcome moved into it, then the new lines.  A resent scan_id's outcome is appended to the history
of the minute it comes in.  A hash expires
``result_ttl_s`` after its minute ends, so an outcome is kept between one TTL and one TTL plus a
minute.  A field in a large hash costs about a third of what a list key per scan_id with its own
TTL cost (a key, a list, an expiry entry, and an RPUSH and an EXPIRE of server time each), and
one HSET per shard and slice of ``_SLICE`` writes a chunk's first outcomes.

The writes of a batch go in one round trip per ``REPLY_CHUNK`` outcomes: the first outcomes'
HSETs, then one call of the push script (``_PUSH_LUA``) with the rest, which then publishes a
notice of the chunk's scan_ids, pipelined on one connection so that the notice comes after every
write; the outcome lines are written by ``ext.jsonlines``.  Readers look at the minutes around their wait (``reply_epochs``).  A process
that waits for many scans at once (the HTTP gateway; ``ScanPublisher.await_result`` for the
threads of a Python scan API) holds one subscription to the notices and reads only what someone
there waits for (``ReplyWatcher``): a wait costs a read when it starts and one when its outcome
is announced, not a poll.  A read is one round trip for scan_ids without an identity (a wait
before its publish), and at most three for the others: the hashes and the identities, the
slot's offsets, the slot.

Upgrades: readers of this version read fields and files alike; an older reader finds no filed
outcome.  Upgrade the scan API's side (the gateways, ``ScanPublisher.await_result``) before the
workers.

A reply hash lives in the state shard of its scan_ids (``reply_shards``), as the state store's
keys do: on a Redis Cluster the pushes go in one round trip per shard, to the node that holds it,
and their notices reach every subscriber whichever node publishes them.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import struct
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis

from scanstream.engine import outcomes
from scanstream.engine.state import state_keys
from scanstream.engine.state.redis import identity_epochs, identity_hash, outcome_ref
from scanstream.engine.state.redis_lua import LUA_PRELUDE, SHARD_TAGS, SHARDS, pack_pairs, shard_key

#: The span of one reply hash, s.  Long enough that a wait reads two or three hashes, short
#: enough that an outcome outlives its ``result_ttl_s`` by at most this much.  Writers and readers
#: must agree on it: changing it changes the hashes' names.
REPLY_EPOCH_S = 60
#: Longest single blocking read of the ``ReplyWatcher``'s subscription, s.
WAIT_SLICE_S = 1.0
#: How far the clocks of the scan API's hosts and of Redis may differ, s: readers widen the
#: minutes they read by this much (hosts kept by NTP differ by milliseconds).
CLOCK_SKEW_S = 5.0
#: Outcomes per script call: bounds the time one call holds the server (a few ms here).
REPLY_CHUNK = 5000
#: How often a ``ReplyWatcher`` wait looks for its outcome itself while notices can be lost (the
#: subscription is down or being made again).
SWEEP_S = 0.25
#: How often it looks while the subscription is up: notices are then lost only when a Cluster's
#: bus drops one, so a sweep every ``SWEEP_S`` would cost Redis a read per wait for nothing (most
#: waits last longer than 0.25 s under load); a re-made subscription looks for every wait at once.
LIVE_SWEEP_S = 2.0
#: How far back ``ReplyWatcher.look`` looks at its start by default, s: a retried wait finds an
#: outcome written up to a minute before it began, in two or three reads (each minute is a read:
#: looking back the whole ``result_ttl_s`` cost a thread-awaiting scan API 4-5 ms a wait in
#: its event loop, ``benchmarks/bench_reply_wait.py``).
LOOKBACK_S = 60.0
#: Hex digits of a poll key (``poll_key``): 128 bits, so that no key is found by trying.
POLL_KEY_HEX = 32
#: Rows per HMGET and HSET inside the push script, and per unpacking of their strings: struct
#: unpacks a slice onto Lua's stack, which takes a few thousand values, and slices of 100 were
#: the fastest (a fifth faster than 1 000 in ``bench_state_calls``).
_SLICE = 100

#: The first byte of a history field's name (``history_field``): never a byte of UTF-8.
HISTORY = b"\xff"

#: The push script, for the outcomes that are joined (see the module) and the notice.  KEYS[1]:
#: a key of the call's shard (routing only).  ARGV: key prefix (``P rh:``), TTL, n, the notice
#: (``_notice``: the scan_ids, then the places of the filed ones), the notice channel
#: (``notice_channel``), the runs of joined rows of one shard (per run its shard, one byte, and
#: its number of rows, uint32), ``REPLY_EPOCH_S``, the minute, the pairs scan_id, outcome in run
#: order, each string after its length (``pack_pairs``).  Per run: one HMGET of the rows'
#: histories and first outcomes (a slice at a time), one HSET each of the history with the first
#: outcome and the new lines appended in row order, one HDEL of the first outcomes moved, one
#: EXPIREAT.  Then the notice, which wakes the gateways waiting for any of the scan_ids
#: (``ReplyWatcher``); with nobody subscribed it costs next to nothing.  The first outcomes are
#: not the script's: the writer sends them as plain HSETs just before it, on the same connection,
#: so the notice still comes after them.  Why: Redis spent 2.7 µs of CPU per outcome line written
#: through a script (packed or an argument each, alike) and 1.4 µs through a plain HSET
#: (``INFO cpu`` over 50 000 lines of 436 bytes, 100 a command), and most outcomes are first ones.
_PUSH_LUA = LUA_PRELUDE + r"""
local pre, ttl, n, span, epoch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[7]), ARGV[8]
local runs, pair_blob = ARGV[6], ARGV[9]
local SLICE, HISTORY = """ + str(_SLICE) + r""", '\255'
local pos = 1
for r = 1, #runs / 5 do
  local s, joined = struct.unpack('<BI4', runs, 5 * r - 4)
  local key = shard_key(pre, s) .. ':' .. epoch
  local jids, jlines = {}, {}
  for a = 0, joined - 1, SLICE do
    local k = math.min(joined - a, SLICE)
    local p = unpack_strings(pair_blob, pos, 2 * k)
    pos = p[2 * k + 1]
    for j = 1, k do jids[a + j], jlines[a + j] = p[2 * j - 1], p[2 * j] end
  end
  -- what each joined scan_id held before this call: its history, then its first outcome
  local held, moved, order = {}, {}, {}
  for a = 1, joined, SLICE do
    local e = math.min(a + SLICE - 1, joined)
    local ask = {}
    for j = a, e do ask[2 * (j - a) + 1], ask[2 * (j - a) + 2] = HISTORY .. jids[j], jids[j] end
    local got = redis.call('HMGET', key, unpack(ask))
    for j = a, e do
      local id = jids[j]
      if held[id] == nil then
        local h, f = got[2 * (j - a) + 1], got[2 * (j - a) + 2]
        if f then
          moved[#moved + 1] = id
          if h then h = h .. '\n' .. f else h = f end
        end
        held[id] = h or false
        order[#order + 1] = id
      end
    end
  end
  for j = 1, joined do
    local id = jids[j]
    local v = held[id]
    if v then held[id] = v .. '\n' .. jlines[j] else held[id] = jlines[j] end
  end
  for _, id in ipairs(order) do redis.call('HSET', key, HISTORY .. id, held[id]) end
  for a = 1, #moved, SLICE do redis.call('HDEL', key, unpack(moved, a, math.min(a + SLICE - 1, #moved))) end
  redis.call('EXPIREAT', key, (epoch + 1) * span + ttl)
end
-- the notice: after the writes (the first outcomes' HSETs came before this call on its
-- connection), so a gateway woken by it finds the outcomes
redis.call('PUBLISH', ARGV[5], ARGV[4])
return n
"""


def reply_hash(prefix: str, shard: int, epoch: int) -> str:
    """The reply hash of state shard ``shard`` for minute ``epoch``: ``P rh:{tag}:<epoch>`` (not
    ``reply:``, the family of the lists an older version kept per scan_id, which a scan_id could
    otherwise name)."""
    return f"{prefix}rh:{{{SHARD_TAGS[shard]}}}:{epoch}"


def history_field(scan_id: bytes) -> bytes:
    """The field of a scan_id's outcomes that came with or after another in one minute."""
    return HISTORY + scan_id


def first_outcomes(scans: outcomes.Columns) -> np.ndarray:
    """Which outcomes of a batch are their scan_id's first: an event that made a new identity in
    the state store (neither an invalid event, which makes none, nor a conflict or a replay of
    one that was there).  ``ReplyWriter.push`` writes those without reading first."""
    verdict = np.asarray(scans["verdict"], dtype=object)
    return ~np.isin(verdict, ["invalid_event", "conflict"]) & (np.asarray(scans["replay"]) == 0)


def outcome_file(prefix: str, shard: int, token: bytes) -> bytes:
    """``P rb:{tag}:<token as hex>``: the first outcomes of one claim call's rows in code shard
    ``shard`` (``file_outcomes``), beside that call's record of their code step (``P ck:``)."""
    return b"%b%s:%s" % (prefix.encode("utf-8"), shard_key(b"rb:", shard), token.hex().encode())


#: Where a filed outcome is: its file's code shard and claim token (``OUTCOME_REF``'s), and the
#: bytes [start, end) of its slot.  A notice carries it for each filed outcome it announces, so
#: that a wait it wakes reads the slot alone (``parse_notice``).
PLACE = np.dtype([("row", "<u4"), ("shard", "u1"), ("token", "<u8"), ("start", "<u4"), ("end", "<u4")])


@dataclass(frozen=True)
class Filed:
    """``file_outcomes``: the files to write, and each filed row's place (``PLACE``, ``row`` its index)."""

    files: list[tuple[bytes, bytes]]
    places: np.ndarray


def file_outcomes(prefix: str, lines: Sequence[bytes], refs: np.ndarray, rows: np.ndarray) -> Filed:
    """The outcome files of ``lines[rows]``, as (key, value): per claim token and code shard of
    their ``refs`` (``engine.state.OUTCOME_REF``), the uint32 offsets (little-endian) of slot 0 ..
    m, then the lines, the line of rank r in bytes [offset r, offset r + 1) and m one past the
    highest rank filed; a rank filed by no row (a replay's, a row whose code did not decide) is
    empty.  One string per claim call and shard, where a field per scan cost a hash entry each."""
    rows = np.nonzero(rows)[0]
    places = np.zeros(len(rows), PLACE)
    if not len(rows):
        return Filed([], places)
    ref = refs[rows]
    groups = np.lexsort((ref["rank"], ref["shard"], ref["token"]))
    out = []
    starts = np.flatnonzero(np.r_[True, (np.diff(ref["token"][groups]) != 0) | (np.diff(ref["shard"][groups]) != 0)])
    for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(groups)]):
        mine = groups[a:b]
        ranks = ref["rank"][mine].astype(np.int64)
        if len(np.unique(ranks)) != len(ranks):
            raise ValueError(f"outcome references: a rank filed twice under one token ({ranks.tolist()})")
        chosen = [lines[i] for i in rows[mine].tolist()]
        m = int(ranks[-1]) + 1
        sizes = np.zeros(m, np.int64)
        sizes[ranks] = [len(line) for line in chosen]
        offsets = 4 * (m + 1) + np.concatenate([[0], np.cumsum(sizes)])
        if offsets[-1] >= 1 << 32:
            raise ValueError(f"an outcome file of {int(offsets[-1])} bytes: expected under 4 GiB")
        token = int(ref["token"][mine[0]]).to_bytes(8, "little")
        out.append((outcome_file(prefix, int(ref["shard"][mine[0]]), token),
                    offsets.astype("<u4").tobytes() + b"".join(chosen)))
        places["row"][mine], places["shard"][mine], places["token"][mine] = rows[mine], ref["shard"][mine], ref["token"][mine]
        places["start"][mine], places["end"][mine] = offsets[ranks], offsets[ranks + 1]
    return Filed(out, places)


def reply_shards(scan_ids: Sequence[str]) -> np.ndarray:
    """The state shard of each scan_id (that of its identity in the state store)."""
    return (state_keys(list(scan_ids)) & np.uint64(SHARDS - 1)).astype(np.uint8)


def reply_epochs(first_s: float, last_s: float) -> range:
    """The minutes whose hashes may hold an outcome written between ``first_s`` and ``last_s``
    (Unix times by the reader's clock).  The writer's minute is Redis's clock, so the span is
    widened by ``CLOCK_SKEW_S`` each side: usually one hash, two near a minute's end."""
    return range(_epoch(first_s - CLOCK_SKEW_S), _epoch(last_s + CLOCK_SKEW_S) + 1)


def _epoch(t: float) -> int:
    return int(t // REPLY_EPOCH_S)


def notice_channel(prefix: str) -> str:
    """The pub/sub channel on which the worker announces each chunk of outcomes it pushed."""
    return f"{prefix}replied"


def parse_notice(message: bytes) -> tuple[list[bytes], dict[bytes, tuple[int, int, int, int]]]:
    """The scan_ids of a notice (``_notice``), as bytes, and the place of each that was filed:
    {scan_id: (code shard, claim token, start, end)}; an older worker's notice (the scan_ids alone)
    places none; ([], {}) for a message of another shape."""
    if len(message) < 4:
        return [], {}
    n = int.from_bytes(message[:4], "little")
    if len(message) < 4 + 4 * n:
        return [], {}
    lens = np.frombuffer(message, "<u4", n, 4)
    ends = np.cumsum(lens, dtype=np.int64) + 4 + 4 * n
    tail = int(ends[-1]) if n else 4
    if tail != len(message) and (tail + 4 > len(message) or (len(message) - tail - 4) % PLACE.itemsize):
        return [], {}
    starts = ends - lens
    ids = [message[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
    if tail == len(message):
        return ids, {}
    places = np.frombuffer(message, PLACE, offset=tail + 4)
    if len(places) != int.from_bytes(message[tail:tail + 4], "little") or (len(places) and places["row"].max() >= n):
        return [], {}
    return ids, {ids[p["row"]]: (int(p["shard"]), int(p["token"]), int(p["start"]), int(p["end"]))
                 for p in places}


def outcome_key(reply: dict[str, Any]) -> tuple:
    """What ties an outcome to the event it answers: its code, user_id, role and ts, as the
    worker's parse stage read them (``publisher.outcome_keys`` gives an event's)."""
    return reply.get("code"), reply.get("user_id"), reply.get("role"), reply.get("ts")


def poll_key(scan_id: str, key: tuple) -> str:
    """The key of the poll address of a request whose event's ``outcome_key`` is ``key``
    (``POLL_KEY_HEX`` hex digits): what ties a poll to the event it sent.

    The newest outcome of a scan_id is not the poller's to read: after a scan_id was resent with a
    forged code, it is the first delivery's "ok" and prize until the forgery is judged, and anyone
    trying scan_ids would read other people's prizes.  The key hashes the scan_id with the event's
    code, user_id, role and ts: naming an outcome takes its code (and its 40-bit MAC) and its
    user_id, which only the event's sender has.  Written by the gateway for each 202, computed
    again from each outcome line when a poll comes (``latest_reply``)."""
    code, user, role, ts = key
    blob = orjson.dumps([scan_id, code, user, role, int(ts) if isinstance(ts, (int, float)) else ts])
    return hashlib.blake2b(blob, digest_size=POLL_KEY_HEX // 2, person=b"scanstream-poll").hexdigest()


#: A scan_id's outcome lines as read, per minute: {epoch: lines, oldest first}; its filed first
#: outcome (``file_outcomes``) under ``FILED``, before every minute.
Held = dict[int, list[bytes]]
#: The key of ``Held`` for the first outcome found through the scan_id's identity: it is read
#: first, as the oldest (a joined outcome that another worker wrote before it, a conflict racing
#: the first delivery's reply, is still answered by its own outcome key, ``ReplyWatcher``).
FILED = -1


@dataclass(frozen=True)
class Reads:
    """The reads of many scan_ids' outcomes, each over its own minutes: one HMGET per reply hash
    (state shard and minute), whatever the number of scan_ids in it (``reads`` builds them)."""

    #: per HMGET: the reply hash and the fields asked of it, each scan_id's history then the scan_id
    commands: list[tuple[str, list[bytes]]]
    #: per HMGET: its minute and the index, among the scan_ids read, of each field asked
    rows: list[tuple[int, list[int]]]
    #: the scan_ids read (UTF-8) and the state shard of each
    ids: list[bytes]
    shards: list[int]

    @property
    def n(self) -> int:
        """How many scan_ids were read."""
        return len(self.ids)

    def held(self, answers: Sequence[Sequence[bytes | None]]) -> list[Held]:
        """Each scan_id's outcomes, per minute, from the answers of ``commands`` (in order)."""
        if len(answers) != len(self.commands):
            raise ValueError(f"{len(answers)} answers for {len(self.commands)} reads: expected one each")
        out: list[Held] = [{} for _ in range(self.n)]
        for (e, rows), values in zip(self.rows, answers):
            for j, i in enumerate(rows):
                history, first = values[2 * j], values[2 * j + 1]
                if history or first:
                    out[i][e] = (history.split(b"\n") if history else []) + (first.split(b"\n") if first else [])
        return out


def reads(prefix: str, scan_ids: Sequence[str | bytes], spans: Sequence[range]) -> Reads:
    """The HMGETs that read ``scan_ids[i]``'s outcomes in the minutes ``spans[i]``, grouped by
    reply hash; ``Reads.held`` sorts the answers back to each scan_id."""
    if len(scan_ids) != len(spans):
        raise ValueError(f"{len(scan_ids)} scan_ids for {len(spans)} spans of minutes: expected one each")
    ids = [s if isinstance(s, bytes) else s.encode("utf-8", "surrogatepass") for s in scan_ids]
    # the shards in one call; the grouping in a dict: a wait reads one to three scan_ids, where
    # numpy's fixed cost per call (a sort and a dozen arrays) made a read of one cost 37 us
    shards = reply_shards(ids).tolist() if ids else []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (shard, span) in enumerate(zip(shards, spans)):
        for e in span:
            groups.setdefault((shard, e), []).append(i)
    commands = [(reply_hash(prefix, shard, e), [f for i in rows for f in (history_field(ids[i]), ids[i])])
                for (shard, e), rows in groups.items()]
    rows = [(e, mine) for (_, e), mine in groups.items()]
    return Reads(commands, rows, ids, shards)


def counts(lines: Held, epochs: range) -> dict[int, int]:
    """How many outcomes each minute of ``epochs`` holds (the read of ``lines``), and whether a
    filed first outcome was there (``FILED``): what a wait registers as seen before it
    publishes, and where its reads start."""
    return {FILED: len(lines.get(FILED, ())), **{e: len(lines.get(e, ())) for e in epochs}}


def first_minute(seen: dict[int, int]) -> int:
    """The first minute that ``seen`` (``counts``) covers: where a wait's reads start."""
    return min(e for e in seen if e != FILED)


def fresh(lines: Held, seen: dict[int, int]) -> list[bytes]:
    """The outcomes written after ``seen`` (``counts`` of an earlier read), oldest first."""
    return [line for e in sorted(lines) for line in lines[e][seen.get(e, 0):]]


#: What a reading (``_reading``) asks for at each step: Redis commands, sent in one round trip.
Commands = list[tuple]


def _reading(prefix: str, replay_ttl_s: int, scan_ids: Sequence[str | bytes], spans: Sequence[range],
             known: Sequence[tuple[int, int, int, int] | None] | None = None) -> Generator[Commands, list, list[Held]]:
    """Each scan_id's outcomes: its minutes ``spans[i]`` of the reply hashes and its filed first
    outcome, at its place ``known[i]`` (code shard, token, start, end: a notice's) or through its
    identity.  A generator of the round trips it needs (a driver sends each list of commands and
    sends back their answers; ``read_replies``, ``read_async``):

    1. the reply hashes (``reads``), one HMGET per hash; the slots of known places (GETRANGE); for
       the others, the identity hashes of the epochs a live identity may be in
       (``identity_epochs``), one HMGET per hash;
    2. for each identity that names an outcome file, the two offsets of its slot (GETRANGE);
    3. each non-empty slot (GETRANGE).

    A reading that needs no identity (a wait woken by a notice that placed its outcome), or finds
    none (a wait before its publish), is one round trip.  A file that is not there (a crash
    between the claim and the reply, or expired) holds nothing, and a slot is kept only if its
    line names the scan_id read."""
    plan = reads(prefix, scan_ids, spans)
    ids = plan.ids
    known = list(known) if known is not None else [None] * len(ids)
    now = time.time()
    epochs = identity_epochs(now - CLOCK_SKEW_S, now + CLOCK_SKEW_S, replay_ttl_s)
    pre = prefix.encode("utf-8")
    placed: list[tuple[int, bytes, int, int]] = []  # (scan_id, file, start, end) of the notices' places
    groups: dict[tuple[int, int], list[int]] = {}  # (shard, epoch) -> the scan_ids whose identity is read
    for i, shard in enumerate(plan.shards):
        if known[i] is None:
            for e in epochs:
                groups.setdefault((shard, e), []).append(i)
        else:
            code_shard, token, a, b = known[i]
            if b > a:
                placed.append((i, outcome_file(prefix, code_shard, token.to_bytes(8, "little")), a, b))
    answers = yield ([("HMGET", key, *fields) for key, fields in plan.commands]
                     + [("GETRANGE", key, a, b - 1) for _, key, a, b in placed]
                     + [("HMGET", identity_hash(pre, shard, e), *[ids[i] for i in rows])
                        for (shard, e), rows in groups.items()])
    held = plan.held(answers[:len(plan.commands)])
    _keep_filed(held, ids, [i for i, _, _, _ in placed], answers[len(plan.commands):len(plan.commands) + len(placed)])
    found: dict[int, tuple[int, bytes]] = {}  # scan_id -> (epoch, identity): the newest epoch's
    for ((_, e), rows), values in zip(groups.items(), answers[len(plan.commands) + len(placed):]):
        for i, value in zip(rows, values):
            if value is not None and (i not in found or found[i][0] < e):
                found[i] = (e, value)
    slots = []  # (scan_id, file, rank) of each identity that names a file
    for i, (_, value) in sorted(found.items()):
        ref = outcome_ref(value)
        if ref is not None:
            code_shard, token, rank = ref
            slots.append((i, outcome_file(prefix, code_shard, token), rank))
    if not slots:
        return held
    heads = yield [("GETRANGE", key, 4 * rank, 4 * rank + 7) for _, key, rank in slots]
    spans_found = []
    for (i, key, _), head in zip(slots, heads):
        if len(head) == 8:
            a, b = struct.unpack("<II", head)
            if b > a:
                spans_found.append((i, key, a, b))
    if not spans_found:
        return held
    lines = yield [("GETRANGE", key, a, b - 1) for _, key, a, b in spans_found]
    _keep_filed(held, ids, [i for i, _, _, _ in spans_found], lines)
    return held


def _keep_filed(held: list[Held], ids: list[bytes], rows: list[int], lines: list[bytes]) -> None:
    """``lines[j]``, read from a slot, as the filed outcome of scan_id ``rows[j]``, if it is that
    scan_id's: a place from a notice, or an identity, never makes another scan's outcome answer."""
    for i, line in zip(rows, lines):
        if line:
            try:
                mine = orjson.loads(line).get("scan_id") == ids[i].decode("utf-8", "surrogatepass")
            except (orjson.JSONDecodeError, AttributeError):
                mine = False
            if mine:
                held[i][FILED] = [line]


def read_replies(client, prefix: str, replay_ttl_s: int, scan_ids: Sequence[str], epochs: range) -> list[Held]:
    """Each scan_id's outcomes in ``epochs`` and its filed first outcome (a blocking client),
    ``_reading``'s round trips each pipelined."""
    reading = _reading(prefix, replay_ttl_s, scan_ids, [epochs] * len(scan_ids))
    try:
        commands = next(reading)
        while True:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            commands = reading.send(pipe.execute() if commands else [])
    except StopIteration as done:
        return done.value


async def read_async(trips: RoundTrips, prefix: str, replay_ttl_s: int, scan_ids: Sequence[str | bytes],
                     spans: Sequence[range], known: Sequence[tuple[int, int, int, int] | None] | None = None
                     ) -> list[Held]:
    """``read_replies`` for an event loop, each scan_id over its own minutes (and its filed
    outcome's place ``known[i]``, when a notice gave it), each round trip shared with the reads of
    the same turn of the loop (``trips``)."""
    reading = _reading(prefix, replay_ttl_s, scan_ids, spans, known)
    try:
        commands = next(reading)
        while True:
            answers = await trips.run([lambda pipe, c=c: pipe.execute_command(*c) for c in commands]) if commands else []
            commands = reading.send(answers)
    except StopIteration as done:
        return done.value


def _notice(scan_ids: Sequence[bytes], places: np.ndarray) -> bytes:
    """A notice of ``scan_ids`` (``parse_notice`` reads it): their number, their uint32 lengths,
    them, then the number of ``places`` (``PLACE``, ``row`` an index into ``scan_ids``) and them."""
    lens = np.fromiter(map(len, scan_ids), np.uint32, len(scan_ids)).astype("<u4")
    return (len(scan_ids).to_bytes(4, "little") + lens.tobytes() + b"".join(scan_ids)
            + len(places).to_bytes(4, "little") + np.ascontiguousarray(places, PLACE).tobytes())


class ReplyWriter:
    """Writes outcomes to their scan_ids' reply hashes, ``REPLY_CHUNK`` per round trip."""

    def __init__(self, client, prefix: str, ttl_s: int):
        if ttl_s < 1:
            raise ValueError(f"reply ttl_s: expected at least 1 second, got {ttl_s}")
        self.client = client
        self.prefix = prefix
        self.ttl_s = int(ttl_s)
        self.channel = notice_channel(prefix).encode("utf-8")
        #: loaded by its first call (and after a node's restart): see ``_push_chunk``
        self._push = client.register_script(_PUSH_LUA)
        self._offset, self._offset_until = 0.0, 0.0
        #: a Cluster takes one call per shard (a script touches one slot)
        self.cluster = isinstance(client, redis.RedisCluster)

    def push(self, scan_ids: Sequence[str], lines: Sequence[bytes], first: np.ndarray | None = None,
             refs: np.ndarray | None = None) -> int:
        """Append ``lines[i]`` to the outcomes of ``scan_ids[i]``; the number written.  ``first``
        flags the outcomes that are their scan_id's first (``first_outcomes``), written blind; None:
        every outcome is joined to what its scan_id holds (the script).  ``refs`` (the batch's
        ``BatchResult.refs``) files a first outcome whose identity holds a reference in its
        claim's outcome file (``file_outcomes``) rather than in a field of its own."""
        if len(scan_ids) != len(lines) or (first is not None and len(first) != len(lines)) or (
                refs is not None and len(refs) != len(lines)):
            raise ValueError(f"{len(scan_ids)} scan_ids, {len(lines)} outcomes, "
                             f"{'no' if first is None else len(first)} first flags and "
                             f"{'no' if refs is None else len(refs)} references: expected one each")
        blind_rows = np.zeros(len(lines), bool) if first is None else np.asarray(first, bool)
        shards = reply_shards(scan_ids) if len(scan_ids) else np.zeros(0, np.uint8)
        epoch = _epoch(self._redis_time())
        filed = blind_rows & (refs["token"] != 0) if refs is not None else np.zeros(len(lines), bool)
        places = np.zeros(0, PLACE)
        if filed.any():
            # before any notice: a gateway woken by one must find the file, which on a Cluster
            # lives on another node than the notice's
            places = self._file(lines, refs, filed, epoch)
            blind_rows = blind_rows & ~filed
        place_of = np.full(len(lines), -1, np.int64)  # each row's index in ``places``
        place_of[places["row"]] = np.arange(len(places))
        groups = ([np.nonzero(shards == s)[0] for s in np.unique(shards).tolist()] if self.cluster
                  else [np.arange(len(lines))])
        for rows in groups:
            for a in range(0, len(rows), REPLY_CHUNK):
                part = rows[a:a + REPLY_CHUNK]
                ids = [scan_ids[i].encode("utf-8", "surrogatepass") for i in part.tolist()]
                blind = blind_rows[part]
                if len(set(ids)) < len(ids):  # a scan_id twice in one chunk: rare, so counted only then
                    seen = collections.Counter(ids)
                    blind &= np.fromiter((seen[i] == 1 for i in ids), bool, len(ids))
                mine = np.nonzero(place_of[part] >= 0)[0]
                placed = places[place_of[part[mine]]]
                placed["row"] = mine  # the notice names rows of its chunk
                self._push_chunk(ids, [lines[i] for i in part.tolist()], blind, placed, shards[part], epoch)
        return len(lines)

    def _file(self, lines: Sequence[bytes], refs: np.ndarray, filed: np.ndarray, epoch: int) -> np.ndarray:
        """The ``filed`` rows' outcomes, one string per claim token and code shard (``file_outcomes``),
        in one round trip (a Cluster's pipeline sends each to its node); their places."""
        expiry = (epoch + 1) * REPLY_EPOCH_S + self.ttl_s
        done = file_outcomes(self.prefix, lines, refs, filed)
        pipe = self.client.pipeline(transaction=False)
        for key, value in done.files:
            pipe.set(key, value, exat=expiry)
        pipe.execute()
        return done.places

    def _push_chunk(self, ids: list[bytes], lines: list[bytes], blind: np.ndarray, places: np.ndarray,
                    shards: np.ndarray, epoch: int) -> None:
        """One chunk's round trip (all of one shard on a Cluster): the blind rows' HSETs per shard,
        then the script with the joined rows and the notice (of every row, with the filed ones'
        ``places``), pipelined on one connection."""
        expiry = (epoch + 1) * REPLY_EPOCH_S + self.ttl_s
        commands: list[tuple] = []
        for s in np.unique(shards[blind]).tolist():
            key = reply_hash(self.prefix, s, epoch)
            mine = np.nonzero(blind & (shards == s))[0].tolist()
            for b in range(0, len(mine), _SLICE):
                commands.append(("HSET", key, *[x for i in mine[b:b + _SLICE] for x in (ids[i], lines[i])]))
            commands.append(("EXPIREAT", key, expiry))
        joined = ~blind
        joined[places["row"]] = False  # filed already: only in the notice
        joined = np.nonzero(joined)[0]
        joined = joined[np.argsort(shards[joined], kind="stable")]  # a shard's rows together, in row order
        run_shards, counts = np.unique(shards[joined], return_counts=True)
        runs = np.zeros(len(counts), [("shard", "u1"), ("count", "<u4")])
        runs["shard"], runs["count"] = run_shards, counts
        routing = reply_hash(self.prefix, int(shards[0]), 0)  # where a Cluster runs the call
        args = [self.prefix.encode("utf-8") + b"rh:", self.ttl_s, len(ids), _notice(ids, places), self.channel,
                runs.tobytes(), REPLY_EPOCH_S, epoch,
                pack_pairs([ids[i] for i in joined.tolist()], [lines[i] for i in joined.tolist()])]
        target = (self.client.get_redis_connection(self.client.get_node_from_key(routing)) if self.cluster
                  else self.client)
        pipe = target.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        pipe.evalsha(self._push.sha, 1, routing, *args)
        answers = pipe.execute(raise_on_error=False)
        failed = next((x for x in answers if isinstance(x, Exception)), None)
        if failed is None:
            return
        if isinstance(failed, (redis.exceptions.NoScriptError, redis.exceptions.AskError,
                               redis.exceptions.MovedError)):
            # a restarted node without the script, or a slot that moved: again through the client,
            # which loads the script and follows the slot (HSETs of the same lines change nothing)
            for command in commands:
                self.client.execute_command(*command)
            self._push(keys=[routing], args=args)
            return
        raise failed

    def _redis_time(self) -> float:
        """Redis's clock (the minute of the hashes is Redis's), from this host's and an offset
        read with ``TIME`` once per ``REPLY_EPOCH_S``."""
        now = time.time()
        if now >= self._offset_until:
            seconds, micros = self.client.time()
            self._offset = seconds + micros / 1e6 - time.time()
            self._offset_until = now + REPLY_EPOCH_S
        return now + self._offset

    def push_outcomes(self, scans: outcomes.Columns, refs: np.ndarray | None = None) -> int:
        """Push every outcome of a batch (for callers that have not built the lines yet); ``refs``
        as ``push`` takes them (a ``BatchResult``'s)."""
        return self.push(scans["scan_id"].tolist(), outcomes.outcome_lines(scans), first_outcomes(scans), refs)


class RoundTrips:
    """The Redis commands of requests that arrive together, sent in one pipelined round trip.

    Under load a gateway (or a ``ReplyWatcher``) holds hundreds of requests at once; a round trip each would cost each
    request a connection and the event loop a write, a read and a wake-up per command.  Commands
    queued in one turn of the loop go out together on the next, and each caller gets its own
    results (or the round trip's error)."""

    def __init__(self, client):
        self.client = client
        self._queued: list[tuple[list[Callable[[Any], Any]], asyncio.Future]] = []

    async def run(self, commands: list[Callable[[Any], Any]]) -> list[Any]:
        """Each of ``commands`` is called with the shared pipeline to add one command; their results."""
        future = asyncio.get_running_loop().create_future()
        if not self._queued:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._send()))
        self._queued.append((commands, future))
        return await future

    async def _send(self) -> None:
        queued, self._queued = self._queued, []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for commands, _ in queued:
                    for add in commands:
                        add(pipe)
                results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - every caller of this round trip is told
            for _, future in queued:
                if not future.done():
                    future.set_exception(exc)
            return
        at = 0
        for commands, future in queued:
            mine, at = results[at:at + len(commands)], at + len(commands)
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if not future.done():
                if failed is not None:
                    future.set_exception(failed)
                else:
                    future.set_result(mine)


class ReplyWatcher:
    """The outcomes awaited by one event-loop process (the HTTP gateway), woken by the worker's notices.

    A poll per waiting request would cost Redis a read every few milliseconds per request.
    Instead one subscription to ``notice_channel`` per process hears every chunk of outcomes the
    workers write (``_PUSH_LUA`` publishes after writing), and only the scan_ids someone here
    waits for are read, all in one pipelined round trip.

    ``seen`` and ``expect`` before publishing, then ``wait``: the first outcome written after
    ``seen`` whose ``outcome_key`` is ``key``.  So a resent scan_id is answered by its own outcome
    (a ``replay``, or a ``conflict`` when its content differs), never with the first delivery's
    verdict and prize, even when two requests carry one scan_id at once.  Pub/sub delivers at
    most once (a reconnect loses notices), so a re-made subscription looks for every wait once, and
    a wait also looks for itself every ``SWEEP_S`` while the subscription is down (``LIVE_SWEEP_S``
    while it is up); the reply hashes, not the notices, are what holds outcomes.
    """

    def __init__(self, client, prefix: str, replay_ttl_s: int, sweep_s: float = SWEEP_S,
                 live_sweep_s: float = LIVE_SWEEP_S):
        self.client = client
        self.prefix = prefix
        #: the state store's (``[engine] replay_ttl_hours``): where the identities are
        self.replay_ttl_s = replay_ttl_s
        self.sweep_s = sweep_s
        self.live_sweep_s = max(live_sweep_s, sweep_s)
        #: the subscription is up: a notice announces every outcome written from here on
        self.live = False
        self.channel = notice_channel(prefix)
        #: the reads of every wait, notice and sweep: many waits at once share one round trip and
        #: one connection, not one each
        self.trips = RoundTrips(client)
        #: scan_id (bytes) -> the waits for it: (seen, key, future)
        self._waits: dict[bytes, list[tuple[dict[int, int], tuple, Any]]] = {}
        self._listener = None
        self._subscribed = None

    async def start(self) -> None:
        self._subscribed = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass

    async def _listen(self) -> None:
        """Subscribe and dispatch notices, for ever; a lost connection is logged and re-made."""
        import logging

        log = logging.getLogger("scanstream.replies")
        pause = SWEEP_S
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.live = True
                if not self._subscribed.done():
                    self._subscribed.set_result(None)
                # the notices of outcomes written while it was down are lost: look for every wait once
                await self._wake(list(self._waits))
                pause = SWEEP_S
                while True:
                    message = await pubsub.get_message(timeout=WAIT_SLICE_S)
                    if message is not None and message["type"] == "message":
                        ids, places = parse_notice(message["data"])
                        await self._wake([sid for sid in ids if sid in self._waits], places)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: waits sweep until it is back
                self.live = False
                log.warning("reply notices lost (%r); waits look for their outcomes every %.2f s until Redis "
                            "answers", exc, self.sweep_s)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
            finally:
                self.live = False
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - the connection is gone already
                    pass

    async def subscribed(self, timeout: float) -> bool:
        """True once the subscription is in place (a readiness check)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._subscribed), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def read(self, scan_ids: Sequence[bytes], first: Sequence[int],
                   places: dict[bytes, tuple[int, int, int, int]] | None = None) -> list[Held]:
        """The outcomes of each of ``scan_ids`` in its reply hashes from minute ``first`` on, and
        its filed first outcome (at its place in ``places``, as a notice gives it, if there), in
        the round trips that the reads of this turn of the event loop share (``RoundTrips``)."""
        last = _epoch(time.time() + CLOCK_SKEW_S)
        return await read_async(self.trips, self.prefix, self.replay_ttl_s, scan_ids,
                                [range(f, max(f, last) + 1) for f in first],
                                [places.get(s) for s in scan_ids] if places else None)

    async def _wake(self, scan_ids: list[bytes], places: dict[bytes, tuple[int, int, int, int]] | None = None) -> None:
        """Read the outcomes of ``scan_ids`` and answer the waits they satisfy: one round trip when
        a notice gave the place of each filed one (``places``)."""
        if not scan_ids:
            return
        # from the first minute any of a scan_id's waits counted
        first = [min(first_minute(seen) for seen, _, _ in self._waits[sid]) for sid in scan_ids]
        for sid, lines in zip(scan_ids, await self.read(scan_ids, first, places)):
            self._answer(sid, lines)

    def _answer(self, scan_id: bytes, lines: Held, only: tuple | None = None) -> None:
        """Answer the waits for ``scan_id`` (or the one wait ``only``) that ``lines`` hold an outcome for."""
        if not lines:
            return
        for seen, key, future in (self._waits.get(scan_id, ()) if only is None else (only,)):
            if future.done():
                continue
            for line in fresh(lines, seen):
                reply = orjson.loads(line)
                if key is None or outcome_key(reply) == key:
                    future.set_result(reply)
                    break

    def expect(self, scan_id: str, seen: dict[int, int], key: tuple) -> Expected:
        """Register a wait, before its scan is published (so no notice can pass unheard): the
        outcome answering the event whose ``outcome_key`` is ``key``, among those written after
        ``seen`` (``counts`` of a read just before, over ``reply_epochs(now, now)``; an empty one
        for a scan_id that had none).  ``wait`` for
        it, or ``forget`` it when the publish failed."""
        sid = scan_id.encode("utf-8", "surrogatepass")
        seen = dict(seen)
        if not any(e != FILED for e in seen):
            seen[_epoch(time.time() - CLOCK_SKEW_S)] = 0  # where its reads start
        expected = Expected(sid, seen, key, asyncio.get_running_loop().create_future())
        self._waits.setdefault(sid, []).append(expected.entry)
        return expected

    async def look(self, scan_id: str, key: tuple | None, timeout_s: float,
                   lookback_s: float = LOOKBACK_S) -> dict[str, Any] | None:
        """For a wait that starts after its scan was published (``ScanPublisher.await_result``):
        the oldest outcome of ``scan_id`` written up to ``lookback_s`` before now, or after, whose
        ``outcome_key`` is ``key`` (any, for None); None after ``timeout_s``.  Registered first,
        then read once over the whole look-back, so an outcome announced in between is not
        missed; its later reads (notices, sweeps) cover only the minutes from now on."""
        now = time.time()
        expected = self.expect(scan_id, {_epoch(now - CLOCK_SKEW_S): 0}, key)
        try:
            back = await self.read([expected.scan_id], [_epoch(now - lookback_s - CLOCK_SKEW_S)])
            self._answer(expected.scan_id, back[0], expected.entry)
        except BaseException:
            self.forget(expected)
            raise
        return await self.wait(expected, timeout_s)

    def forget(self, expected: Expected) -> None:
        waits = self._waits.get(expected.scan_id, [])
        if expected.entry in waits:
            waits.remove(expected.entry)
        if not waits:
            self._waits.pop(expected.scan_id, None)

    async def wait(self, expected: Expected, timeout_s: float) -> dict[str, Any] | None:
        """The expected outcome, or None after ``timeout_s``; raises what Redis raises.  Woken by
        a notice; looks for itself every ``live_sweep_s`` while the subscription is up, every
        ``sweep_s`` while it is not, and once more at the deadline."""
        deadline = time.monotonic() + timeout_s
        future = expected.entry[2]
        try:
            while True:
                left = deadline - time.monotonic()
                if left > 0:
                    try:
                        every = self.live_sweep_s if self.live else self.sweep_s
                        return await asyncio.wait_for(asyncio.shield(future), min(left, every))
                    except asyncio.TimeoutError:
                        pass
                self._answer(expected.scan_id, (await self.read([expected.scan_id], [first_minute(expected.seen)]))[0],
                             expected.entry)
                if future.done():
                    return future.result()
                if deadline - time.monotonic() <= 0:
                    return None
        finally:
            self.forget(expected)


@dataclass(frozen=True)
class Expected:
    """One registered wait of a ``ReplyWatcher``."""

    scan_id: bytes
    seen: dict[int, int]
    key: tuple
    future: Any

    @property
    def entry(self) -> tuple[dict[int, int], tuple, Any]:
        return self.seen, self.key, self.future


async def latest_reply(trips: RoundTrips, prefix: str, replay_ttl_s: int, scan_id: str, ttl_s: float,
                       key: str) -> dict[str, Any] | None:
    """The newest outcome of ``scan_id`` written within ``ttl_s`` that answers the event whose
    ``poll_key`` is ``key`` (a poll after a 202), or None."""
    now = time.time()
    (lines,) = await read_async(trips, prefix, replay_ttl_s, [scan_id], [reply_epochs(now - ttl_s, now)])
    for line in reversed(fresh(lines, {})):
        reply = orjson.loads(line)
        if hmac.compare_digest(poll_key(scan_id, outcome_key(reply)), key):
            return reply
    return None
