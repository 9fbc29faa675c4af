"""The Redis state store: the production backend of ``engine.state.StateStore``.

It gives the same answer as ``engine.state.memory`` for every call sequence; the shared tests
(``tests/test_state_stores.py``) run every case and a random differential stream over both.

Synchronous client
    The pipeline is synchronous and CPU-bound and runs in an executor thread of the Faust
    worker, so the store uses redis-py's synchronous client: a call blocks only that thread,
    the worker's event loop keeps serving Kafka.  An asyncio client would force the numpy
    stages to hop between the loop and the executor for every stage.  The client is thread
    safe (a connection pool), so several executor threads may share one store.

One round trip per call
    Each method is one Lua script over the whole batch, loaded once (``SCRIPT LOAD`` through
    redis-py's ``register_script``) and called by SHA; a script is atomic, which is what the
    memory store gets from its lock.  Arrays travel packed: uint32/int64 columns as
    little-endian binary strings (read in Lua with ``struct.unpack``), strings as a uint32
    length column plus one concatenated blob, set members as signed decimal text; answers
    come back as one binary string (one byte per claim, 11 bytes per grant, 8 per count).
    An empty batch makes no call.

Keys (``P`` is the prefix; ``{...}`` is a Redis Cluster hash tag)::

    P dd:{T:K:B:C}          string  dedup bitmap of chunk C of (tenant T, kind K, batch B),
                                    bit ``serial % CHUNK_SERIALS``, no expiry
    P rp:<epoch>:<bucket>   hash    scan_id -> its first answer (``engine.state.pack_answer``: verdict,
                                    event fingerprint, first user), for the scan_ids
                                    of one bucket (a byte of their hash) first claimed in epoch
                                    ``now // replay_ttl_s``; expires at the end of the next epoch
    P cp:{<id>}             hash    budget, prizes, cap, tiers, s0 .. s<tiers-1> (stock left)
    P cp:{<id>}:aw          hash    12-byte code identity (uint64 batch key, uint32 serial, LE)
                                    -> "tier:cents", kept for ever: one prize per code, ever
    P cp:{<id>}:ud:<day>    hash    user_id -> prizes paid that day (at most one entry per
                                    prize paid, so no expiry is needed to bound it)
    P campaigns             set     campaign ids, for error messages and operators
    P meta                  hash    the local driver's checkpoint (JSON values), see ``checkpoint``
    P bl                    zset    the block list: 8-byte keys scored by their expiry (ms)
    P w:<8 bytes>           windowed state under a uint64 key, EX ttl from its creation:
                                    a counter (count) or a mark (mark_once)
    P wd:<epoch>:<bucket>   hash    distinct sets of one bucket (key's first byte % BUCKETS), made in
                                    epoch ``now // ttl``: 8-byte key -> packed 8-byte members
                                    (or "" once they moved to ``P ws:<key>``, a set); expires
                                    at the end of the next epoch

Memory
    A bitmap costs one bit per serial below the highest serial scanned in its chunk.  Two
    allocator effects would waste up to half of that, and both are avoided: SETBIT grows a
    string greedily (doubling), so the script grows a chunk itself, by rewriting it at an
    exact length, before any SETBIT; and jemalloc rounds every allocation up to a size class
    (four per power of two), so lengths are chosen as a class minus the string header
    (``GOOD_LENGTHS``), and a chunk holds ``2**16 - 128`` serials, not ``2**16``: a full
    8 KiB string plus its header would take a 10 KiB block.  Small chunks bound what the
    last, partly used chunk of a batch loses to the size classes (up to a fifth of it) to
    1 KiB per batch, and spread a batch over many keys (slots); a chunk key's own overhead
    (~100 bytes) is about 1 % of a full chunk.  Measured, bits per issued code: 1.01 for
    5 M codes in 3 batches, 1.08 for batches of 100 000 and of 10 000 codes (16 KiB chunks
    gave 1.15 for 100 000, 128 KiB chunks more).  ``benchmarks/
    bench_state_memory.py`` compares that with 90 bytes for a key per code and 56 bytes for a
    member of a set per batch.  The largest item is the replay record: a field of a bucket
    hash per scan_id (its length plus about 50 bytes), kept for one to two ``replay_ttl_s``.

Redis Cluster
    A script may only touch keys of one hash slot.  Every key that a script changes together
    shares a hash tag: a dedup chunk (``{T:K:B:C}``), a campaign (``{<id>}``), a window key
    (its own slot); bucket hashes (replay answers, distinct sets) would take the tag of their
    bucket.  On a single server (or a primary with replicas, the deployment this
    store connects to today) each method is one script call, as described.  For a Cluster the
    batch is split by slot (``redis.cluster.key_slot`` of the group's key) and one script is
    called per slot group, pipelined per node; that split changes no answer because the
    groups share no state: grants of different campaigns are independent, window keys are
    independent, and dedup chunks are independent.  The one key that does not follow is the
    replay record, which is looked up by scan_id but must live in the slot of the bitmap its
    claim sets (the test-and-set and the record of its answer are one atomic step, else a
    crash between them turns a redelivered first scan into a REPEAT).  In Cluster mode it is
    therefore to be filed under the tag of the scan's own chunk: a redelivered scan carries the
    same code, so it finds its record.  That is the only
    difference from the single-server layout (a scan_id reused with a *different* code would
    not be recognised as a replay) and the reason this store does not pretend to support a
    Cluster until that split is written and tested against one.  A prefix that itself holds
    a hash tag (``{ss}:``) puts every key in one slot: correct, but nothing spreads.

Windows
    Window keys get their TTL when they are created and keep it (like the memory store, whose
    entries expire ``ttl_s`` after they were added); ``ttl_s`` below 1 is taken as 1.  The
    memory store sweeps expired window entries after it has answered a call, so a key read in
    the very call that finds it expired still shows its old value there; keys carry their
    window and are never reused after their TTL, so no answer of the engine depends on it.
    ``distinct``'s ``new`` flags are honoured as the memory store does: flagged rows first,
    each starting its set afresh (one HSET of its packed member in this epoch's bucket, found
    before anything older: the same answers even for a wrong flag).  Distinct sets live in
    bucket hashes per epoch of their TTL (see ``_DISTINCT_LUA``): between one and two TTLs.

Errors
    Connection failures, timeouts, a read-only replica or an out-of-memory server raise
    ``StateUnavailable`` naming the URL without its password.  The client does not retry a
    call by itself: a script that timed out may have run, and re-running ``count`` would count
    twice.  The worker does not commit the batch's offsets, and the redelivered batch is safe:
    claims and grants are idempotent, and the pipeline does not count replayed scans again.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from scanstream.engine.state import (CampaignLimits, CampaignState, Claims, DrawStatus, Grants, GrantRequests, StateStore,
                          StateUnavailable, state_keys)
from scanstream.engine.verdicts import Verdict

#: Serials per dedup chunk: a full chunk is an 8 176-byte string, which with its sds header
#: fits jemalloc's 8 KiB size class exactly (2**16 serials would take a 10 KiB block).
CHUNK_BYTES = (1 << 13) - 16
CHUNK_SERIALS = CHUNK_BYTES * 8
#: Members of a ``distinct`` set kept packed in its bucket hash (8 bytes each); a larger set
#: becomes a Redis set of its own.
PACKED_MEMBERS = 32
#: Replay answers and distinct sets are spread over this many hashes per epoch (a power of two up
#: to 256).  Few and therefore large: a hash of up to ``hash-max-listpack-entries`` (128 to 512)
#: fields is a listpack, which Redis searches from end to end on every HGET and HSET, so many
#: small hashes are slower than a few large ones (measured here: 256 buckets cost more than a
#: key per scan_id).
BUCKETS = 16
#: Remember a scan_id's answer this long; a redelivery after that is a new scan.
DEFAULT_REPLAY_TTL_S = 7 * 24 * 3600
#: Client options unless the URL sets them (``?socket_timeout=...``): a large batch's script
#: can take a few seconds, and a dead server must fail fast rather than hang the worker.
CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": 30.0, "socket_connect_timeout": 5.0, "health_check_interval": 30}
#: Shown instead of a password in messages.
REDACTED = "***"

# greedy up to the netloc's last '@', as urlsplit reads it: an unencoded '@' in a password must
# not leave the rest of it visible
_URL_PASSWORD = re.compile(r"(//[^/@:]*:)([^/]*)(@)")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")
#: Server replies that mean "not now" rather than "wrong": another script running too long, a
#: replica without its primary.
_TRANSIENT = ("BUSY", "MASTERDOWN", "LOADING", "TRYAGAIN")
_REPLAY_FLAG = 0x80  # claim answers: verdict | flag when the scan_id was claimed before
_GRANT_DTYPE = np.dtype([("status", "u1"), ("tier", "<i2"), ("cents", "<i8")])  # packed, 11 bytes


def _size_classes(limit: int) -> list[int]:
    """jemalloc's size classes up to ``limit``: 16-byte steps to 128, then four per doubling."""
    classes = list(range(16, 129, 16))
    p = 128
    while p < limit:
        classes += [p + p // 4 * k for k in (1, 2, 3, 4)]
        p *= 2
    return classes


#: Bitmap lengths that fill a size class (class minus sds header and terminator, 16 bytes of
#: margin), from 48 bytes to a full chunk.
GOOD_LENGTHS = np.array([c - 16 for c in _size_classes(CHUNK_BYTES + 16) if c >= 64], np.int64)
assert GOOD_LENGTHS[-1] == CHUNK_BYTES


def good_length(needed: np.ndarray) -> np.ndarray:
    """The bitmap length to allocate for strings that need ``needed`` bytes."""
    return GOOD_LENGTHS[np.searchsorted(GOOD_LENGTHS, needed)]


def redact(url: str) -> str:
    """``url`` without its password (in the netloc or as a ``password=`` query parameter)."""
    url = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), url)
    return _QUERY_PASSWORD.sub(lambda m: m.group(1) + REDACTED, url)


# --------------------------------------------------------------------------- Lua

#: Helpers shared by the scripts: packed arrays in, packed answers out.  Lua's stack takes a
#: few thousand values, so every bulk unpack/pack goes in slices.
_LUA_PRELUDE = r"""
local function ints(blob, fmt, n)
  local out, pos, done = {}, 1, 0
  while done < n do
    local k = math.min(n - done, 200)
    local vals = {struct.unpack('<' .. string.rep(fmt, k), blob, pos)}
    for j = 1, k do out[done + j] = vals[j] end
    pos = vals[k + 1]
    done = done + k
  end
  return out
end

local function bytes(s)
  local out, n = {}, #s
  for a = 1, n, 4000 do
    local vals = {string.byte(s, a, math.min(a + 3999, n))}
    for j = 1, #vals do out[a + j - 1] = vals[j] end
  end
  return out
end

local function chars(t)
  local parts, n = {}, #t
  for a = 1, n, 4000 do parts[#parts + 1] = string.char(unpack(t, a, math.min(a + 3999, n))) end
  return table.concat(parts)
end

local function pack_ints(fmt, t)
  local parts, n = {}, #t
  for a = 1, n, 200 do
    local b = math.min(a + 199, n)
    parts[#parts + 1] = struct.pack('<' .. string.rep(fmt, b - a + 1), unpack(t, a, b))
  end
  return table.concat(parts)
end

local function strings(lens_blob, blob, n)
  local lens, out, pos = ints(lens_blob, 'I4', n), {}, 1
  for i = 1, n do
    out[i] = string.sub(blob, pos, pos + lens[i] - 1)
    pos = pos + lens[i]
  end
  return out
end
"""

#: KEYS: the batch's dedup chunks.  ARGV: replay key prefix, replay TTL, n, scan_id lengths
#: (uint32), scan_ids, given verdicts (one byte each), then for the rows at OK in row order
#: their chunk (uint32 index into KEYS, 0-based) and bit offset (uint32), and per chunk the
#: length to grow it to before any SETBIT; then OK, REPEAT, and each row's replay bucket (one
#: byte).  Returns one byte per row: verdict | 0x80 on replay.
#: Answers live in bucket hashes ``P rp:<epoch>:<bucket>`` (epoch = now // TTL), scan_id ->
#: verdict, read with one HMGET per bucket and epoch (this one, then the one before for the
#: rest) and written with one HSET per bucket: a key with a TTL per scan_id cost a SET EX each
#: (about 4 us of server time) and 130 bytes.  A bucket expires at the end of the next epoch,
#: so an answer is kept between one and two TTLs.
#: ARGV: replay prefix, ttl, n, scan_id lengths + blob, verdicts, chunk + offset per OK row, chunk
#: lengths, OK, REPEAT, bucket per row, fingerprints (8 bytes each), user lengths + blob, CONFLICT.
#: A stored answer is ``engine.state.pack_answer``: verdict byte, fingerprint, first user.
#: Returns {one byte per row: verdict, + 128 for a replay; the first user of each CONFLICT row ...}.
_CLAIM_LUA = _LUA_PRELUDE + r"""
local OK, REPEAT, CONFLICT = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[16])
local rp, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = strings(ARGV[4], ARGV[5], n)
local given = bytes(ARGV[6])
local bucket = bytes(ARGV[12])
local fps = ARGV[13]
local users = strings(ARGV[14], ARGV[15], n)
local nok = #ARGV[7] / 4
local chunk, offset = ints(ARGV[7], 'I4', nok), ints(ARGV[8], 'I4', nok)
local want = ints(ARGV[9], 'I4', #KEYS)
-- grow each chunk at an exact length first: SETBIT would double the allocation
for g = 1, #KEYS do
  local have = redis.call('STRLEN', KEYS[g])
  if have == 0 then
    redis.call('SETRANGE', KEYS[g], want[g] - 1, '\0')
  elseif have < want[g] then
    redis.call('SET', KEYS[g], redis.call('GET', KEYS[g]) .. string.rep('\0', want[g] - have))
  end
end
local now = redis.call('TIME')
local epoch = math.floor(tonumber(now[1]) / ttl)
-- the answers known before this batch
local rows_of = {}
for i = 1, n do
  local r = rows_of[bucket[i]]
  if r == nil then r = {}; rows_of[bucket[i]] = r end
  r[#r + 1] = i
end
local stored = {}
for b, rows in pairs(rows_of) do
  for e = epoch, epoch - 1, -1 do
    local ask = {}
    for _, i in ipairs(rows) do
      if stored[i] == nil then ask[#ask + 1] = i end
    end
    for a = 1, #ask, 1000 do
      local fields = {}
      for j = a, math.min(a + 999, #ask) do fields[#fields + 1] = ids[ask[j]] end
      local vals = redis.call('HMGET', rp .. e .. ':' .. b, unpack(fields))
      for j = 1, #fields do
        if vals[j] then stored[ask[a + j - 1]] = vals[j] end
      end
    end
  end
end
local known, out, writes, firsts, j = {}, {}, {}, {}, 0
for i = 1, n do
  local id, v = ids[i], given[i]
  local fp = string.sub(fps, 8 * i - 7, 8 * i)
  if v == OK then j = j + 1 end
  local first = known[id]  -- the stored answer, or the one an earlier row of this batch made
  if first == nil and stored[i] then
    first = stored[i]
    known[id] = first
  end
  if first ~= nil then
    if string.sub(first, 2, 9) == fp then
      out[i] = string.byte(first, 1) + 128
    else
      out[i] = CONFLICT
      firsts[#firsts + 1] = string.sub(first, 10)
    end
  else
    if v == OK and redis.call('SETBIT', KEYS[chunk[j] + 1], offset[j], 1) == 1 then v = REPEAT end
    local answer = string.char(v) .. fp .. users[i]
    local w = writes[bucket[i]]
    if w == nil then w = {}; writes[bucket[i]] = w end
    w[#w + 1] = id
    w[#w + 1] = answer
    known[id] = answer
    out[i] = v
  end
end
for b, w in pairs(writes) do
  local key = rp .. epoch .. ':' .. b
  for a = 1, #w, 1000 do redis.call('HSET', key, unpack(w, a, math.min(a + 999, #w))) end
  redis.call('EXPIREAT', key, (epoch + 2) * ttl)
end
return {chars(out), unpack(firsts)}
"""

#: ARGV: prefix, then per campaign: id, budget, daily cap, stocks (comma separated).
_DEFINE_LUA = r"""
local pre, i = ARGV[1], 2
while i <= #ARGV do
  local id, budget, cap, stocks = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local base = pre .. 'cp:{' .. id .. '}'
  redis.call('HSETNX', base, 'budget', budget)
  redis.call('HSETNX', base, 'prizes', 0)
  redis.call('HSET', base, 'cap', cap)
  local t = 0
  for s in string.gmatch(stocks, '[^,]+') do
    redis.call('HSETNX', base, 's' .. t, s)
    t = t + 1
  end
  if t > tonumber(redis.call('HGET', base, 'tiers') or 0) then redis.call('HSET', base, 'tiers', t) end
  redis.call('SADD', pre .. 'campaigns', id)
  i = i + 4
end
return 1
"""

#: ARGV: prefix, n, number of campaigns m, campaign (uint32 index into the m ids), code
#: identities (12 bytes each), user_id lengths (uint32), user_ids, day (int64), tier (int16),
#: cents (int64), the DrawStatus codes WON NO_PRIZE OUT_OF_STOCK BUDGET CAP, then the m ids.
#: Returns 11 bytes per request: status (uint8), tier (int16), cents (int64).
_GRANT_LUA = _LUA_PRELUDE + r"""
local WON, NO_PRIZE, OUT_OF_STOCK, BUDGET, CAP =
  tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local pre, n, m = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local camp = ints(ARGV[4], 'I4', n)
local users = strings(ARGV[6], ARGV[7], n)
local day, tier, cents = ints(ARGV[8], 'i8', n), ints(ARGV[9], 'h', n), ints(ARGV[10], 'i8', n)
local C = {}
for c = 1, m do
  local id = ARGV[15 + c]
  local base = pre .. 'cp:{' .. id .. '}'
  local h = redis.call('HGETALL', base)
  if #h == 0 then return redis.error_reply('campaign ' .. id .. ' is not defined in the state store') end
  local st = {}
  for k = 1, #h, 2 do st[h[k]] = tonumber(h[k + 1]) end
  local stock = {}
  for t = 0, st.tiers - 1 do stock[t] = st['s' .. t] end
  C[c] = {base = base, aw = base .. ':aw', budget = st.budget, cap = st.cap, prizes = st.prizes,
          stock = stock, won = {}, days = {}, paid = false}
end
local field, status, otier, ocents, prior = {}, {}, {}, {}, {}
-- prizes won before this batch are given back whatever was drawn now
for i = 1, n do
  field[i] = string.sub(ARGV[5], 12 * i - 11, 12 * i)
  status[i], otier[i], ocents[i] = NO_PRIZE, -1, 0
  local p = redis.call('HGET', C[camp[i] + 1].aw, field[i])
  if p then
    local t, a = string.match(p, '^(-?%d+):(-?%d+)$')
    status[i], otier[i], ocents[i], prior[i] = WON, tonumber(t), tonumber(a), true
  end
end
-- drawn prizes, in request order: the earlier scan takes the last one
for i = 1, n do
  local t = tier[i]
  if t >= 0 and not prior[i] then
    local c, amount = C[camp[i] + 1], cents[i]
    local again = c.won[field[i]]
    if again then
      status[i], otier[i], ocents[i] = WON, again[1], again[2]
    else
      if c.stock[t] == nil then
        return redis.error_reply('campaign ' .. c.base .. ' has no tier ' .. t)
      end
      local dkey = c.base .. ':ud:' .. string.format('%d', day[i])
      local users_of_day = c.days[dkey]
      if users_of_day == nil then users_of_day = {}; c.days[dkey] = users_of_day end
      if c.stock[t] <= 0 then
        status[i] = OUT_OF_STOCK
      elseif c.budget < amount then
        status[i] = BUDGET
      else
        local u = users[i]
        local got = users_of_day[u]
        if got == nil then
          got = {tonumber(redis.call('HGET', dkey, u) or 0), false}
          users_of_day[u] = got
        end
        if got[1] >= c.cap then
          status[i] = CAP
        else
          c.stock[t] = c.stock[t] - 1
          c.budget = c.budget - amount
          c.prizes = c.prizes + 1
          c.paid = true
          got[1], got[2] = got[1] + 1, true
          redis.call('HSET', c.aw, field[i], string.format('%d:%d', t, amount))
          c.won[field[i]] = {t, amount}
          status[i], otier[i], ocents[i] = WON, t, amount
        end
      end
    end
  end
end
for c = 1, m do
  local s = C[c]
  if s.paid then
    local args = {'budget', string.format('%d', s.budget), 'prizes', string.format('%d', s.prizes)}
    for t, left in pairs(s.stock) do
      args[#args + 1] = 's' .. t
      args[#args + 1] = string.format('%d', left)
    end
    redis.call('HSET', s.base, unpack(args))
    for dkey, users_of_day in pairs(s.days) do
      for u, got in pairs(users_of_day) do
        if got[2] then redis.call('HSET', dkey, u, got[1]) end
      end
    end
  end
end
local parts = {}
for i = 1, n do parts[i] = struct.pack('<Bhi8', status[i], otier[i], ocents[i]) end
return table.concat(parts)
"""

#: Window scripts.  ARGV: key prefix, TTL, keys (8 bytes each) [, members as signed decimals
#: separated by commas].
_COUNT_LUA = _LUA_PRELUDE + r"""
local pre, ttl, blob = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #blob / 8 do
  local k = pre .. string.sub(blob, 8 * i - 7, 8 * i)
  local total = redis.call('INCR', k)
  if total == 1 then redis.call('EXPIRE', k, ttl) end
  out[i] = total
end
return pack_ints('i8', out)
"""

#: ``distinct``.  ARGV: prefix, TTL (s), keys and members (8 bytes each), one byte per row (1
#: where the caller flags the key as new), the most members kept packed, BUCKETS.
#: A set lives as one field of a bucket hash, ``P wd:<epoch>:<its key's first byte % BUCKETS>`` with
#: epoch = now // TTL, holding its members packed (a code's scanners in one window are one or
#: two), read with one HMGET per bucket (this epoch, then the one before for the rest) and
#: written with one HSET per bucket: no key of its own to create and expire per set.  Each bucket hash expires at the
#: end of the epoch after its own, so a set lives between one and two TTLs.  Past the packed
#: size the members move to a Redis set ``P ws:<key>`` with the same expiry, and the field
#: holds an empty string.  Flagged rows go first and replace whatever their key held, then the
#: rest in order: the memory store's order, so even a wrong flag gets the same answers.
_DISTINCT_LUA = _LUA_PRELUDE + r"""
local pre, ttl, blob, members = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local flagged, spill, nb = bytes(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = redis.call('TIME')
local epoch = math.floor(tonumber(now[1]) / ttl)
local n = #blob / 8
local out, held = {}, {}
local function bucket(e, b) return pre .. 'wd:' .. e .. ':' .. b end
local function key(i) return string.sub(blob, 8 * i - 7, 8 * i) end
local function member(i) return string.sub(members, 8 * i - 7, 8 * i) end
for i = 1, n do
  if flagged[i] == 1 then
    held[key(i)] = {packed = member(i), size = 1, epoch = epoch, dirty = true}
    out[i] = 1
  end
end
-- the other rows' sets: one HMGET per bucket in this epoch, then in the one before for the rest
local wanted = {}
for i = 1, n do
  if flagged[i] ~= 1 then
    local k = key(i)
    if held[k] == nil and wanted[k] == nil then
      local b = string.byte(k, 1) % nb
      wanted[k] = b
    end
  end
end
for e = epoch, epoch - 1, -1 do
  local by_bucket = {}
  for k, b in pairs(wanted) do
    local list = by_bucket[b]
    if list == nil then list = {}; by_bucket[b] = list end
    list[#list + 1] = k
  end
  for b, list in pairs(by_bucket) do
    for a = 1, #list, 1000 do
      local part = {unpack(list, a, math.min(a + 999, #list))}
      local vals = redis.call('HMGET', bucket(e, b), unpack(part))
      for j = 1, #part do
        local v, k = vals[j], part[j]
        if v then
          if v == '' then
            local h = {set = pre .. 'ws:' .. k, epoch = e}
            h.size = redis.call('SCARD', h.set)
            held[k] = h
          else
            held[k] = {packed = v, size = #v / 8, epoch = e}
          end
          wanted[k] = nil
        end
      end
    end
  end
end
for k in pairs(wanted) do held[k] = {packed = '', size = 0, epoch = epoch} end
for i = 1, n do
  if flagged[i] ~= 1 then
    local k, m = key(i), member(i)
    local h = held[k]
    if h.set then
      h.size = h.size + redis.call('SADD', h.set, m)
    else
      local seen = false
      for p = 1, #h.packed, 8 do
        if string.sub(h.packed, p, p + 7) == m then seen = true; break end
      end
      if not seen then
        h.packed, h.size, h.dirty = h.packed .. m, h.size + 1, true
      end
    end
    out[i] = h.size
  end
end
-- write back: one HSET per bucket hash, which expires at the end of the epoch after its own
local writes = {}
for k, h in pairs(held) do
  if h.dirty then
    local home = bucket(h.epoch, string.byte(k, 1) % nb)
    local w = writes[home]
    if w == nil then w = {expiry = (h.epoch + 2) * ttl}; writes[home] = w end
    if h.size <= spill then
      w[#w + 1] = k
      w[#w + 1] = h.packed
    else
      local set = pre .. 'ws:' .. k
      redis.call('DEL', set)
      for a = 1, h.size, 500 do
        local part = {}
        for j = a, math.min(a + 499, h.size) do part[#part + 1] = string.sub(h.packed, 8 * j - 7, 8 * j) end
        redis.call('SADD', set, unpack(part))
      end
      redis.call('EXPIREAT', set, w.expiry)
      w[#w + 1] = k
      w[#w + 1] = ''
    end
  end
end
for home, w in pairs(writes) do
  for a = 1, #w, 1000 do redis.call('HSET', home, unpack(w, a, math.min(a + 999, #w))) end
  redis.call('EXPIREAT', home, w.expiry)
end
return pack_ints('i8', out)
"""

_MARK_ONCE_LUA = _LUA_PRELUDE + r"""
local pre, ttl, blob = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #blob / 8 do
  out[i] = redis.call('SET', pre .. string.sub(blob, 8 * i - 7, 8 * i), 1, 'EX', ttl, 'NX') and 1 or 0
end
return chars(out)
"""

#: The block list.  KEYS[1]: the list, a sorted set of 8-byte keys scored by their expiry in
#: milliseconds of the server's clock.  ARGV: TTL in ms, keys (8 bytes each).
_BLOCK_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local blob, expiry = ARGV[2], now + tonumber(ARGV[1])
for i = 1, #blob / 8 do
  redis.call('ZADD', KEYS[1], 'NX', expiry, string.sub(blob, 8 * i - 7, 8 * i))
end
return 1
"""

#: KEYS[1]: the block list.  ARGV[1]: keys (8 bytes each).  Returns one byte per key, or an
#: empty string when the list is empty (the usual case: one EXISTS for the whole batch).
_BLOCKED_LUA = _LUA_PRELUDE + r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return '' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blob = ARGV[1]
local n, out = #blob / 8, {}
for a = 1, n, 1000 do
  local b, wanted = math.min(a + 999, n), {}
  for i = a, b do wanted[#wanted + 1] = string.sub(blob, 8 * i - 7, 8 * i) end
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(wanted))
  for j = 1, #wanted do
    out[a + j - 1] = (scores[j] and tonumber(scores[j]) > now) and 1 or 0
  end
end
return chars(out)
"""


# --------------------------------------------------------------------------- store


def _pack_strings(values: np.ndarray) -> tuple[bytes, bytes]:
    """uint32 lengths and the concatenation of ``values`` (str) in UTF-8."""
    encoded = [v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v if isinstance(v, bytes)
               else str(v).encode() for v in values.tolist()]
    return np.fromiter(map(len, encoded), np.uint32, len(encoded)).astype("<u4").tobytes(), b"".join(encoded)


def _keys_blob(keys: np.ndarray) -> bytes:
    return np.ascontiguousarray(keys, np.uint64).astype("<u8").tobytes()


class RedisStateStore(StateStore):
    """State in a Redis server, shared by every worker that uses the same prefix."""

    def __init__(self, client: redis_py.Redis, *, prefix: str = "scanstream:",
                 replay_ttl_s: int = DEFAULT_REPLAY_TTL_S, url: str | None = None):
        if replay_ttl_s < 1:
            raise ValueError(f"replay_ttl_s: expected at least 1 second, got {replay_ttl_s}")
        self.client = client
        self.prefix = prefix
        self.replay_ttl_s = int(replay_ttl_s)
        self.url = redact(url) if url else _describe(client)
        self._pre = prefix.encode("utf-8")
        self._campaign_ids: list[str] = []
        self._claim = client.register_script(_CLAIM_LUA)
        self._define = client.register_script(_DEFINE_LUA)
        self._grant = client.register_script(_GRANT_LUA)
        self._count = client.register_script(_COUNT_LUA)
        self._distinct = client.register_script(_DISTINCT_LUA)
        self._mark_once = client.register_script(_MARK_ONCE_LUA)
        self._block = client.register_script(_BLOCK_LUA)
        self._blocked = client.register_script(_BLOCKED_LUA)
        # load them now: a wrong URL or a server without Lua fails at start, not mid-stream
        scripts = (self._claim, self._define, self._grant, self._count, self._distinct, self._mark_once,
                   self._block, self._blocked)
        self._call(lambda: [client.script_load(s.script) for s in scripts])

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "scanstream:", replay_ttl_s: int = DEFAULT_REPLAY_TTL_S,
                 **options: Any) -> RedisStateStore:
        """A store on the server at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        ``options`` go to ``redis.Redis.from_url`` over ``CLIENT_OPTIONS``; automatic retries
        are off (see the module docstring).
        """
        kwargs = {**CLIENT_OPTIONS, "retry": Retry(NoBackoff(), 0), **options}
        try:
            client = redis_py.Redis.from_url(url, **kwargs)
        except ValueError as exc:
            raise ValueError(f"Redis URL {redact(url)!r}: {exc}") from None
        return cls(client, prefix=prefix, replay_ttl_s=replay_ttl_s, url=url)

    def close(self) -> None:
        self.client.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (redis_py.ConnectionError, redis_py.TimeoutError) as exc:
            raise StateUnavailable(f"Redis state store {self.url}: unavailable: {exc}") from exc
        except (redis_py.ReadOnlyError, redis_py.OutOfMemoryError) as exc:
            raise StateUnavailable(f"Redis state store {self.url}: cannot take writes: {exc}") from exc
        except redis_py.ResponseError as exc:
            if str(exc).startswith(_TRANSIENT):
                raise StateUnavailable(f"Redis state store {self.url}: unavailable: {exc}") from exc
            raise

    # -- dedup -----------------------------------------------------------------------------

    def dedup_key(self, code: int, chunk: int) -> bytes:
        """Key of a dedup chunk; ``code`` is ``registry.batch_key(tenant, kind, batch)``."""
        return b"%bdd:{%d:%d:%d:%d}" % (self._pre, code >> 26, (code >> 24) & 3, code & 0xFFFFFF, chunk)

    def claim(self, scan_id: np.ndarray, fingerprint: np.ndarray, user: np.ndarray, code: np.ndarray,
              serial: np.ndarray, verdict: np.ndarray) -> Claims:
        n = len(scan_id)
        if not n:
            return Claims(np.zeros(0, np.uint8), np.zeros(0, bool), np.zeros(0, object))
        given = np.asarray(verdict, np.uint8)
        lens, blob = _pack_strings(np.asarray(scan_id))
        user_lens, user_blob = _pack_strings(np.asarray(user))
        ok = np.nonzero(given == Verdict.OK)[0]
        s = np.asarray(serial)[ok].astype(np.uint64)
        # a chunk as one integer: batch key (42 bits) and chunk number (20 bits)
        groups = (np.asarray(code, np.uint64)[ok] << np.uint64(20)) | (s // np.uint64(CHUNK_SERIALS))
        uniq, chunk = np.unique(groups, return_inverse=True)
        offset = s % np.uint64(CHUNK_SERIALS)
        last = np.zeros(len(uniq), np.int64)
        np.maximum.at(last, chunk, (offset >> np.uint64(3)).astype(np.int64))
        keys = [self.dedup_key(int(g) >> 20, int(g) & 0xFFFFF) for g in uniq.tolist()]
        args = [self._pre + b"rp:", self.replay_ttl_s, n, lens, blob, given.tobytes(),
                chunk.astype("<u4").tobytes(), offset.astype("<u4").tobytes(),
                good_length(last + 1).astype("<u4").tobytes(), int(Verdict.OK), int(Verdict.REPEAT),
                (state_keys(np.asarray(scan_id)) & np.uint64(BUCKETS - 1)).astype(np.uint8).tobytes(),
                np.asarray(fingerprint, np.uint64).astype("<u8").tobytes(), user_lens, user_blob,
                int(Verdict.CONFLICT)]
        reply = self._call(lambda: self._claim(keys=keys, args=args))
        out = np.frombuffer(reply[0], np.uint8)
        verdicts = (out & ~np.uint8(_REPLAY_FLAG)).astype(np.uint8)
        first_user = np.full(n, "", dtype=object)
        conflicts = np.nonzero(verdicts == Verdict.CONFLICT)[0]
        first_user[conflicts] = [u.decode("utf-8", "surrogatepass") for u in reply[1:]]
        return Claims(verdicts, out >= _REPLAY_FLAG, first_user)

    def dedup_bytes(self) -> int:
        """Bytes of Redis memory held by the dedup bitmaps under this prefix (for memory reports)."""
        keys = self.keys(b"dd:*")
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.memory_usage(k, samples=0)
        return sum(v or 0 for v in self._call(pipe.execute)) if keys else 0

    # -- lottery ---------------------------------------------------------------------------

    def define_campaigns(self, campaigns: list[CampaignLimits]) -> None:
        args: list[Any] = [self._pre]
        for c in campaigns:
            args += [c.id, int(c.budget_cents), int(c.daily_cap), ",".join(str(int(s)) for s in c.stocks)]
        if campaigns:
            self._call(lambda: self._define(args=args))
        self._campaign_ids = [c.id for c in campaigns]

    def grant(self, requests: GrantRequests) -> Grants:
        n = len(requests.tier)
        if not n:
            return Grants(np.zeros(0, np.uint8), np.zeros(0, np.int16), np.zeros(0, np.int64))
        used, index = np.unique(np.asarray(requests.campaign, np.int64), return_inverse=True)
        ids = [self._campaign_ids[c] for c in used.tolist()]
        identity = np.empty(n, np.dtype([("code", "<u8"), ("serial", "<u4")]))
        identity["code"] = requests.code
        identity["serial"] = requests.serial
        lens, blob = _pack_strings(np.asarray(requests.user, dtype=object))
        args = [self._pre, n, len(ids), index.astype("<u4").tobytes(), identity.tobytes(), lens, blob,
                np.asarray(requests.day).astype("<i8").tobytes(), np.asarray(requests.tier).astype("<i2").tobytes(),
                np.asarray(requests.cents).astype("<i8").tobytes(),
                int(DrawStatus.WON), int(DrawStatus.NO_PRIZE), int(DrawStatus.OUT_OF_STOCK), int(DrawStatus.BUDGET),
                int(DrawStatus.CAP), *ids]
        out = np.frombuffer(self._call(lambda: self._grant(args=args)), _GRANT_DTYPE)
        return Grants(out["status"].astype(np.uint8), out["tier"].astype(np.int16), out["cents"].astype(np.int64))

    def campaign_state(self, campaign: str) -> CampaignState:
        key = b"%bcp:{%b}" % (self._pre, campaign.encode("utf-8"))
        raw = self._call(lambda: self.client.hgetall(key))
        if not raw:
            defined = self._call(lambda: self.client.smembers(self._pre + b"campaigns"))
            raise KeyError(f"campaign {campaign!r} is not defined; defined: {sorted(d.decode() for d in defined)}")
        h = {k.decode(): int(v) for k, v in raw.items()}
        return CampaignState(h["budget"], tuple(h[f"s{t}"] for t in range(h["tiers"])), h["prizes"])

    # -- windows ---------------------------------------------------------------------------

    def _window(self, script, keys: np.ndarray, ttl_s: int, *extra: bytes) -> bytes:
        args = [self._pre + b"w:", max(int(ttl_s), 1), _keys_blob(keys), *extra]
        return self._call(lambda: script(args=args))

    def count(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        if not len(keys):
            return np.zeros(0, np.int64)
        return np.frombuffer(self._window(self._count, keys, ttl_s), "<i8").astype(np.int64)

    def distinct(self, keys: np.ndarray, members: np.ndarray, ttl_s: int, new: np.ndarray | None = None) -> np.ndarray:
        if not len(keys):
            return np.zeros(0, np.int64)
        flags = (np.zeros(len(keys), np.uint8) if new is None else np.asarray(new, bool).astype(np.uint8)).tobytes()
        args = [self._pre, max(int(ttl_s), 1), _keys_blob(keys), _keys_blob(members), flags, PACKED_MEMBERS,
                BUCKETS]
        return np.frombuffer(self._call(lambda: self._distinct(args=args)), "<i8").astype(np.int64)

    def mark_once(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        if not len(keys):
            return np.zeros(0, bool)
        return np.frombuffer(self._window(self._mark_once, keys, ttl_s), np.uint8) == 1

    def block(self, keys: np.ndarray, ttl_s: int) -> None:
        if len(keys):
            args = [max(int(ttl_s), 1) * 1000, _keys_blob(keys)]
            self._call(lambda: self._block(keys=[self._pre + b"bl"], args=args))

    def blocked(self, keys: np.ndarray) -> np.ndarray:
        if not len(keys):
            return np.zeros(0, bool)
        out = self._call(lambda: self._blocked(keys=[self._pre + b"bl"], args=[_keys_blob(keys)]))
        return np.frombuffer(out, np.uint8) == 1 if out else np.zeros(len(keys), bool)

    # -- maintenance -----------------------------------------------------------------------

    def checkpoint(self, **meta: Any) -> None:
        """Store the driver's ``meta`` (every call is durable on the server as it is made)."""
        if meta:
            mapping = {k: orjson.dumps(v) for k, v in meta.items()}
            self._call(lambda: self.client.hset(self._pre + b"meta", mapping=mapping))

    def meta(self, key: str) -> Any:
        value = self._call(lambda: self.client.hget(self._pre + b"meta", key))
        return None if value is None else orjson.loads(value)

    def keys(self, pattern: bytes = b"*") -> list[bytes]:
        """Keys under this store's prefix that match the glob ``pattern`` (SCAN; for operators,
        tests and benchmarks, never on the hot path)."""
        match = re.sub(rb"([*?\[\]\\])", rb"\\\1", self._pre) + pattern
        # SCAN may return a key twice while the keyspace is being rehashed
        return self._call(lambda: list(dict.fromkeys(self.client.scan_iter(match=match, count=1000))))

    def flush_prefix(self) -> int:
        """Delete every key under this store's prefix (SCAN + UNLINK); the number deleted.

        For tests and benchmarks that share a server: keys of other prefixes are untouched.
        """
        keys, deleted = self.keys(), 0
        for i in range(0, len(keys), 1000):
            deleted += self._call(lambda: self.client.unlink(*keys[i:i + 1000]))
        return deleted


def _describe(client: redis_py.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
