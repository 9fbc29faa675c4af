"""The Lua scripts of the Redis state store (``engine/state/redis.py``), one per store method.

Each is atomic over a whole batch, takes its arrays packed (little-endian binary strings read
with ``struct.unpack``) and answers packed.  They live apart from the store because they are a
program of their own, read and changed on their own terms: their ARGV layouts are documented
above each script, and the store's methods are the only callers.

Shards
    Every key a script touches carries the hash tag of one of ``SHARDS`` state shards (or, for a
    campaign's keys, the campaign's id), so that on a Redis Cluster one call touches one slot:
    the store splits a batch by shard there and calls each script once per shard, while on a
    single server one call takes the rows of every shard.  The scripts are the same either way:
    each row (or key) carries its shard number and the script builds its keys from ``TAGS``.
    A shard's tag is chosen so that its slot lies in its own ``1 / SHARDS`` of the slot space,
    so the shards spread evenly over primaries that split the slots evenly.
"""
import itertools
import string

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

#: State shards: a uint64 state key's shard is its low bits (``key & (SHARDS - 1)``), a
#: scan_id's that of its ``state_keys`` hash.  A power of two up to 64.  Few and therefore large
#: bucket hashes: a hash of up to ``hash-max-listpack-entries`` (128 to 512) fields is a
#: listpack, which Redis searches from end to end on every HGET and HSET, so many small hashes are
#: slower than a few large ones (measured here: 256 buckets cost more than a key per scan_id).
#: It also bounds the script calls of a batch on a Cluster (one per shard touched) and the
#: primaries the state spreads over.  Changing it changes every key's name.
SHARDS = 16


def _shard_tags(shards: int) -> tuple[str, ...]:
    """For each shard, the shortest tag (then the first in alphabetical order) of digits and
    lowercase letters whose slot lies in the shard's own part of the slot space: short, because
    the tag is part of every key's name, and a dedup chunk's name is a part of its memory."""
    span = REDIS_CLUSTER_HASH_SLOTS // shards
    tags: dict[int, str] = {}
    for length in range(1, 4):
        for chars in itertools.product(TAG_ALPHABET, repeat=length):
            tag = "".join(chars)
            tags.setdefault(key_slot(tag.encode()) // span, tag)
        if len(tags) == shards:
            return tuple(tags[s] for s in range(shards))
    raise AssertionError(f"no tag of three characters for every one of {shards} shards")


TAG_ALPHABET = string.digits + string.ascii_lowercase
#: The hash tag of each shard (without braces).
SHARD_TAGS = _shard_tags(SHARDS)


def shard_key(name: bytes, shard: int) -> bytes:
    """``name{tag}``: the key (or key prefix) ``name`` in ``shard``, as the scripts' ``shard_key`` builds it."""
    return b"%b{%b}" % (name, SHARD_TAGS[shard].encode())


#: The shards in Lua: ``shard_key(name, shard)`` as in Python (also for ``streams/replies.py``).
SHARD_LUA = ("local TAGS = {" + ", ".join(f"'{t}'" for t in SHARD_TAGS) + "}\n"
             + f"local SHARDS = {SHARDS}" + r"""
-- a key (or key prefix) name in a shard: name{tag}
local function shard_key(name, shard) return name .. '{' .. TAGS[shard + 1] .. '}' end
""")

#: Helpers shared by the scripts: packed arrays in, packed answers out.  Lua's stack takes a
#: few thousand values, so every bulk unpack/pack goes in slices.
LUA_PRELUDE = SHARD_LUA + r"""

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

-- the values of fields[1..k] (grouped by shard, shard[i] naming each one's hash shard_key(pre, shard)),
-- '' for a missing field: one HMGET per run of a shard, in slices
local function hmget_buckets(pre, fields, bucket, k)
  local vals, a = {}, 1
  while a <= k do
    local b = bucket[a]
    local z = a
    while z < k and bucket[z + 1] == b do z = z + 1 end
    for s = a, z, 4000 do
      local e = math.min(s + 3999, z)
      local got = redis.call('HMGET', shard_key(pre, b), unpack(fields, s, e))
      for j = 1, e - s + 1 do vals[s + j - 1] = got[j] or '' end
    end
    a = z + 1
  end
  return vals
end

-- queue field = value for the epoch hash of shard s; store() writes the queue.  A queue counts
-- its length (n): Lua 5.1 finds #t by a binary search, which a row's appends paid twice.
local function add_write(writes, s, field, value)
  local w = writes[s]
  if w == nil then w = {n = 0}; writes[s] = w end
  local n = w.n
  w[n + 1], w[n + 2], w.n = field, value, n + 2
end

-- w[1..wn] (field, value, field, value, ...) into the hash key, in HSETs of up to 500 pairs (Lua's
-- stack), and the hash expires at expire_at (kept for ever without one)
local function hset_all(key, w, wn, expire_at)
  for a = 1, wn, 1000 do redis.call('HSET', key, unpack(w, a, math.min(a + 999, wn))) end
  if expire_at then redis.call('EXPIREAT', key, expire_at) end
end

-- one HSET per shard into this epoch's hash, which expires at the end of the next epoch
local function store(pre, writes, epoch, ttl)
  for s, w in pairs(writes) do hset_all(shard_key(pre, s) .. ':' .. epoch, w, w.n, (epoch + 2) * ttl) end
end

-- grow a dedup chunk to want bytes (0: leave it) before any bit is set: BITFIELD and SETBIT would
-- double the allocation, where an exact length fills its allocator class (``good_length``)
local function grow(key, want)
  if want == 0 then return end
  local have = redis.call('STRLEN', key)
  if have == 0 then
    redis.call('SETRANGE', key, want - 1, '\0')
  elseif have < want then
    redis.call('SET', key, redis.call('GET', key) .. string.rep('\0', want - have))
  end
end

-- the struct format of k strings, each after its uint32 length (``pack_strings``), made once per k
local STRING_FORMATS = {}
local function strings_format(k)
  local f = STRING_FORMATS[k]
  if f == nil then f = '<' .. string.rep('I4c0', k); STRING_FORMATS[k] = f end
  return f
end

-- the k strings of blob from pos (each after its uint32 length), unpacked by struct in C:
-- {s1, ..., sk, the position after them}; k at most a few hundred (Lua's stack)
local function unpack_strings(blob, pos, k) return {struct.unpack(strings_format(k), blob, pos)} end

-- the n strings of blob, each after its uint32 length (``pack_strings``)
local function strings(blob, n)
  local out, pos, done = {}, 1, 0
  while done < n do
    local k = math.min(n - done, 100)
    local vals = unpack_strings(blob, pos, k)
    for j = 1, k do out[done + j] = vals[j] end
    pos = vals[k + 1]
    done = done + k
  end
  return out
end
"""


def pack_strings(values: list[bytes]) -> bytes:
    """``values`` each after its uint32 length (little-endian), as the scripts' ``unpack_strings``
    reads them: struct's ``c0`` then makes the strings in C (a ``string.sub`` each cost Lua a tenth
    of a microsecond per string).  One join, 0.09 µs a value here (a numpy scatter of the bytes
    cost 0.7 µs for an outcome line)."""
    return b"".join([part for v in values for part in (len(v).to_bytes(4, "little"), v)])


def pack_pairs(keys: list[bytes], values: list[bytes]) -> bytes:
    """``pack_strings`` of key 1, value 1, key 2, value 2, ...: an HSET's arguments."""
    return pack_strings([x for pair in zip(keys, values) for x in pair])


#: The claim is two steps, because a scan_id and a code live in different shards (on a Cluster,
#: on different servers) and each step must be atomic where it decides:
#:
#: 1. ``IDS_LUA``, in the scan_id's shard: the scan_id's identity.  A scan_id seen before with
#:    another event is a CONFLICT, with the same event a replay.  A new scan_id is recorded with
#:    its event's fingerprint and user; a row that is not OK gets its final verdict there and
#:    then, an OK row the mark CLAIMED + the shard of its code's chunk and a reference to where
#:    step 2 records its verdict: the claim's token (8 random bytes, one per claim call) and the
#:    row's rank among the claim's OK rows of that shard.  A redelivery follows the reference,
#:    whatever code it carries.
#: 2. ``CODES_LUA``, in the code's shard, for the rows marked CLAIMED: the test-and-set of the
#:    code's bit and the record of its outcome, together.  The outcomes of one claim call in one
#:    shard are one field, the token, holding a byte per rank (0: none yet), not a field per
#:    scan: a reference whose byte is set gets it back; only a row without one sets a bit.
#:
#: A crash between the steps leaves an identity whose reference has no byte; the batch's
#: redelivery finds its own identity (same fingerprint) and step 2 decides as the first time
#: would have, recording the byte under the first claim's token.  A scan_id reused with another
#: event never reaches step 2, whatever its code.
#:
#: Both keep their records in shard hashes per epoch of the replay TTL (epoch = now // TTL),
#: read with one HMGET per shard and epoch (this one, then the one before for the rest) and
#: written with one HSET per shard: a key with a TTL per scan_id cost a SET EX each (about 4 us
#: of server time) and 130 bytes.  A hash expires at the end of the next epoch, so a record is
#: kept between one and two TTLs.
#:
#: IDS_LUA.  KEYS[1]: a key in the rows' shard (routing only).  ARGV: identity prefix (``P rp:``),
#: TTL, n, CONFLICT, CLAIMED, the runs (per run its shard and its number of rows, uint32 each: the
#: rows come grouped by shard, one run on a Cluster), the number of runs, the rows whose scan_id
#: occurs more than once in the call (uint32 indices, 0-based, and their number), the scan_ids,
#: each row's identity were its scan_id new (strings as ``pack_strings`` packs them).  An identity
#: is ``engine.state.pack_answer``: verdict (or CLAIMED + code shard), fingerprint, for a CLAIMED
#: mark its reference (token, rank as uint32), first user.  The caller builds each row's (it
#: knows all of it: the given verdict, the code's shard, the call's token and the row's rank);
#: building them in Lua was a third of the script's time, and Redis is the part that does not
#: scale out.
#:
#: Its cost is Lua's, not the hash's (callgrind: three quarters of a row's instructions were the
#: interpreter's and its allocator's), so a row makes as few Lua values as it can: a run's
#: scan_ids go to the HMGETs as one slice of the unpacked ones, its writes to one HSET queue, and
#: only the rows the caller marks as repeated in the call go through the table of identities this
#: call made (an earlier row of the same scan_id decides a later one's answer).
#: Returns {one byte per row: its verdict, or CLAIMED + code shard, + 128 when its scan_id was
#: known with the same event; per such row (in row order) its stored reference, 12 bytes, zeros
#: when its mark is not CLAIMED (a new row's reference is the caller's own); the first user of
#: each CONFLICT row ...}.
IDS_LUA = LUA_PRELUDE + r"""
local rp, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local CONFLICT, CLAIMED = tonumber(ARGV[4]), tonumber(ARGV[5])
local runs = ints(ARGV[6], 'I4', 2 * tonumber(ARGV[7]))
local repeated = {}
for _, i in ipairs(ints(ARGV[8], 'I4', tonumber(ARGV[9]))) do repeated[i + 1] = true end
local ids, mine = strings(ARGV[10], n), strings(ARGV[11], n)
local NOREF = string.rep('\0', 12)
local now = redis.call('TIME')
local epoch = math.floor(tonumber(now[1]) / ttl)
local out, found, firsts, made = {}, {}, {}, {}
local a = 1
for r = 1, #runs, 2 do
  local s, z = runs[r], a + runs[r + 1] - 1
  local key = shard_key(rp, s) .. ':'
  local w, wn = {}, 0
  for b0 = a, z, 1000 do
    local b1 = math.min(b0 + 999, z)
    -- this epoch's record first, then the one before (HMGET gives false for a missing field)
    local cur = redis.call('HMGET', key .. epoch, unpack(ids, b0, b1))
    local old = redis.call('HMGET', key .. (epoch - 1), unpack(ids, b0, b1))
    for i = b0, b1 do
      local id, answer = ids[i], mine[i]
      local first = cur[i - b0 + 1] or old[i - b0 + 1]
      if repeated[i] then first = made[id] or first end
      if first then
        local mark = string.byte(first, 1)
        if string.sub(first, 2, 9) == string.sub(answer, 2, 9) then
          out[i] = mark + 128
          if mark >= CLAIMED then found[#found + 1] = string.sub(first, 10, 21) else found[#found + 1] = NOREF end
        else
          out[i] = CONFLICT
          if mark >= CLAIMED then firsts[#firsts + 1] = string.sub(first, 22) else firsts[#firsts + 1] = string.sub(first, 10) end
        end
      else
        if repeated[i] then made[id] = answer end
        w[wn + 1], w[wn + 2] = id, answer
        wn = wn + 2
        out[i] = string.byte(answer, 1)
      end
    end
  end
  if wn > 0 then hset_all(key .. epoch, w, wn, (epoch + 2) * ttl) end
  a = z + 1
end
return {chars(out), table.concat(found), unpack(firsts)}
"""

#: CODES_LUA.  KEYS: a key of the rows' shard (routing only), then the dedup chunks of the fresh
#: part, then those where a row of the other part may set a bit (one shard's on a Cluster).  A
#: claim's record (``P ck:{t}:<epoch>`` field token) holds one byte per rank, 0 where none is
#: recorded.  Bits are set with one BITFIELD per slice of a chunk's rows, not a SETBIT per row.
#: The rows come in two parts (``RedisStateStore._claim_codes``), the fresh part first:
#:
#: - fresh: the rows this claim minted (its token, which has no record yet), at OK, chunk by
#:   chunk in each shard, which is their rank order (``_ranks``).  So no record is read, each sets
#:   its bit (OK, or REPEAT when it was set), and a shard's record is their outcomes in order,
#:   with a 0 at each rank no row of the part holds (a row whose identity was known).  A row of
#:   it makes a third of the Lua values of the other part's.  The caller keeps a row out of it
#:   when a row of the other part may set the same bit (row order then decides which is first).
#: - other: any rows, in row order.  A row whose reference has a byte (recorded before, by an
#:   earlier row, or by the fresh part) gets it back; else an OK row sets its bit and records
#:   that; any other row keeps its verdict (its record has expired).
#:
#: ARGV: outcome prefix (``P ck:``), TTL, OK, REPEAT; the fresh part: the token (8 bytes), its
#: number of rows, per shard its number, its number of chunks and of unused ranks (uint32 each),
#: the number of shards, per chunk its number of rows and the length to grow it to (uint32 each),
#: the unused ranks (uint32, 0-based, per shard in order), each row's bit offset (decimal text,
#: ``pack_strings``: BITFIELD takes it as text, and Lua's number to text was a quarter of a row's
#: cost); the other part: its number of rows, the distinct tokens of their references (8 bytes
#: each), each row's token (uint32 index into them, 0-based) and rank (uint32), given verdicts,
#: shards (its chunk's), chunk (uint32 index into KEYS, 0-based; 0 for a row that sets no bit) and
#: bit offset (decimal text), per chunk of the part the length to grow it to (uint32), and their
#: number.  Returns {the fresh part's records, one per shard in order; one byte per row of the
#: other part: its verdict, + 128 when it was recorded before}.
CODES_LUA = LUA_PRELUDE + r"""
local ck, ttl = ARGV[1], tonumber(ARGV[2])
local OK, REPEAT = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = redis.call('TIME')
local epoch = math.floor(tonumber(now[1]) / ttl)
-- set the bits at offset[a..b] in the chunk key, in order: the old bit of each
local function set_bits(key, offset, a, b)
  local args, x = {}, 0
  for j = a, b do
    args[x + 1], args[x + 2], args[x + 3], args[x + 4] = 'SET', 'u1', offset[j], '1'
    x = x + 4
  end
  return redis.call('BITFIELD', key, unpack(args))
end

-- the fresh part
local token, m = ARGV[5], tonumber(ARGV[6])
local runs = ints(ARGV[7], 'I4', 3 * tonumber(ARGV[8]))
local fresh_chunks = 0
for r = 2, #runs, 3 do fresh_chunks = fresh_chunks + runs[r] end
local sizes = ints(ARGV[9], 'I4', 2 * fresh_chunks)
local unused = 0
for r = 3, #runs, 3 do unused = unused + runs[r] end
local holes = ints(ARGV[10], 'I4', unused)
local offset = strings(ARGV[11], m)
local records, i, g, h = {}, 0, 1, 0
for r = 1, #runs, 3 do
  local rec, k, hole = {}, 0, {}
  for x = h + 1, h + runs[r + 2] do hole[holes[x] + 1] = true end
  h = h + runs[r + 2]
  for _ = 1, runs[r + 1] do
    g = g + 1
    local key, rows = KEYS[g], sizes[2 * g - 3]
    grow(key, sizes[2 * g - 2])
    for a = i + 1, i + rows, 500 do
      local old = set_bits(key, offset, a, math.min(a + 499, i + rows))
      for j = 1, #old do
        k = k + 1
        while hole[k] do rec[k] = 0; k = k + 1 end
        if old[j] == 1 then rec[k] = REPEAT else rec[k] = OK end
      end
    end
    i = i + rows
  end
  local text = chars(rec)
  hset_all(shard_key(ck, runs[r]) .. ':' .. epoch, {token, text}, 2, (epoch + 2) * ttl)
  records[#records + 1] = text
end
records = table.concat(records)

-- the other part
local n = tonumber(ARGV[12])
if n == 0 then return {records, ''} end
local tokens = ARGV[13]
local tidx, rank = ints(ARGV[14], 'I4', n), ints(ARGV[15], 'I4', n)
local given, shard = bytes(ARGV[16]), bytes(ARGV[17])
local chunk, offset = ints(ARGV[18], 'I4', n), strings(ARGV[19], n)
local want = ints(ARGV[20], 'I4', tonumber(ARGV[21]))
for c = 1, #want do grow(KEYS[g + c], want[c]) end
local function token_of(t) return string.sub(tokens, 8 * t - 7, 8 * t) end
-- the records of the rows' tokens, rec[shard][token] = {raw = the stored string, t = its bytes
-- once changed, first = the first row of each rank}: one HMGET per shard in this epoch, then in
-- the one before for the rest
local rec, asked = {}, {}
for i = 1, n do
  local s, t = shard[i], tidx[i] + 1
  local rs = rec[s]
  if rs == nil then rs = {}; rec[s] = rs; asked[s] = {} end
  if rs[t] == nil then
    rs[t] = false
    local list = asked[s]
    list[#list + 1] = t
  end
end
for s, missing in pairs(asked) do
  for e = epoch, epoch - 1, -1 do
    local rest = {}
    for a = 1, #missing, 1000 do
      local fields = {}
      for j = a, math.min(a + 999, #missing) do fields[#fields + 1] = token_of(missing[j]) end
      local vals = redis.call('HMGET', shard_key(ck, s) .. ':' .. e, unpack(fields))
      for j = 1, #fields do
        local t = missing[a + j - 1]
        if vals[j] then rec[s][t] = {raw = vals[j], first = {}} else rest[#rest + 1] = t end
      end
    end
    missing = rest
  end
  for _, t in ipairs(missing) do rec[s][t] = {raw = '', first = {}} end
end
-- which rows set a bit: those at OK whose reference has no byte yet (a later row of the same
-- reference takes the outcome of the first), each chunk's in a list of their offsets
local out, copies, ops = {}, {}, {}
for i = 1, n do
  local r, at = rec[shard[i]][tidx[i] + 1], rank[i] + 1
  local b
  if r.t then b = r.t[at] else b = string.byte(r.raw, at) end
  if b ~= nil and b ~= 0 then
    out[i] = b + 128
  elseif r.first[at] ~= nil then
    copies[#copies + 1] = i
  elseif given[i] == OK then
    r.first[at] = i
    local c = chunk[i] + 1
    local list = ops[c]
    if list == nil then list = {n = 0, rows = {}}; ops[c] = list end
    list.n = list.n + 1
    list[list.n], list.rows[list.n] = offset[i], i
  else
    out[i] = given[i]
  end
end
for c, list in pairs(ops) do
  for a = 1, list.n, 500 do
    local old = set_bits(KEYS[c], list, a, math.min(a + 499, list.n))
    for j = 1, #old do
      local i = list.rows[a + j - 1]
      local v = OK
      if old[j] == 1 then v = REPEAT end
      out[i] = v
      local r, at = rec[shard[i]][tidx[i] + 1], rank[i] + 1
      if r.t == nil then r.t, r.len = bytes(r.raw), #r.raw end
      for x = r.len + 1, at - 1 do r.t[x] = 0 end
      r.t[at] = v
      if at > r.len then r.len = at end
    end
  end
end
for _, i in ipairs(copies) do out[i] = out[rec[shard[i]][tidx[i] + 1].first[rank[i] + 1]] + 128 end
-- one HSET per shard of the records changed, into this epoch's hash
local writes = {}
for s, rs in pairs(rec) do
  for t, r in pairs(rs) do
    if r.t then add_write(writes, s, token_of(t), chars(r.t)) end
  end
end
store(ck, writes, epoch, ttl)
return {records, chars(out)}
"""

#: KEYS[1]: the first campaign's hash (routing only; on a Cluster one call per campaign).  ARGV:
#: prefix, then per campaign: id, budget, daily cap, stocks (comma separated).
DEFINE_LUA = r"""
local pre, i = ARGV[1], 2
while i <= #ARGV do
  local id, budget, cap, stocks = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local base = pre .. 'cp:{' .. id .. '}'
  redis.call('HSETNX', base, 'budget', budget)
  redis.call('HSETNX', base, 'prizes', 0)
  redis.call('HSETNX', base, 'commissions', 0)
  redis.call('HSET', base, 'cap', cap)
  local t = 0
  for s in string.gmatch(stocks, '[^,]+') do
    redis.call('HSETNX', base, 's' .. t, s)
    t = t + 1
  end
  if t > tonumber(redis.call('HGET', base, 'tiers') or 0) then redis.call('HSET', base, 'tiers', t) end
  i = i + 4
end
return 1
"""

#: Outbound bindings.  KEYS[1]: a key in the keys' shard (routing only).  ARGV: the shard hash
#: prefix (``P bn:``), number of distinct keys k that the batch writes (the caller reads the rest
#: with plain HMGETs, ``RedisStateStore._keyed``), the keys (8 bytes each, grouped by shard), each
#: key's shard (one byte), number of writes w, per
#: write in row order its key (uint32 index, 0-based), ts (int64), dealer ids (``pack_strings``),
#: and the history kept per key.  A key's value is its history, entries of ts (int64),
#: dealer length (uint16) and dealer id, sorted by ts.  The writes are merged as
#: ``engine.state.merge_binding`` does; the answer is every key's value before the batch
#: (lengths as uint32, then the values), from which ``engine.state.resolve_bindings`` answers the
#: rows: reading and writing in one script is what makes two workers' shipments of one case atomic.
BIND_LUA = LUA_PRELUDE + r"""
local pre, k = ARGV[1], tonumber(ARGV[2])
local kb, bucket = ARGV[3], bytes(ARGV[4])
local w = tonumber(ARGV[5])
local widx, wts = ints(ARGV[6], 'I4', w), ints(ARGV[7], 'i8', w)
local wdealer = strings(ARGV[8], w)
local keep = tonumber(ARGV[9])
local fields = {}
for i = 1, k do fields[i] = string.sub(kb, 8 * i - 7, 8 * i) end
local vals = hmget_buckets(pre, fields, bucket, k)
local function decode(raw)
  local out, pos = {}, 1
  while pos <= #raw do
    local t, len, nxt = struct.unpack('<i8I2', raw, pos)
    out[#out + 1] = {t, string.sub(raw, nxt, nxt + len - 1)}
    pos = nxt + len
  end
  return out
end
local hist = {}
for j = 1, w do
  local key = widx[j] + 1
  local h = hist[key] or decode(vals[key])
  local kept = {}
  for _, e in ipairs(h) do if e[1] ~= wts[j] then kept[#kept + 1] = e end end
  kept[#kept + 1] = {wts[j], wdealer[j]}
  table.sort(kept, function(x, y) return x[1] < y[1] end)
  while #kept > keep do table.remove(kept, 1) end
  hist[key] = kept
end
for key, h in pairs(hist) do
  local parts = {}
  for _, e in ipairs(h) do parts[#parts + 1] = struct.pack('<i8I2', e[1], #e[2]) .. e[2] end
  redis.call('HSET', shard_key(pre, bucket[key]), fields[key], table.concat(parts))
end
local lens = {}
for i = 1, k do lens[i] = #vals[i] end
return {pack_ints('I4', lens), table.concat(vals)}
"""

#: Guides of units.  KEYS[1]: a key in the units' shard (routing only).  ARGV: the shard hash
#: prefix (``P gd:``), number of distinct units k that the batch sells (the caller reads the rest
#: with plain HMGETs, ``RedisStateStore._keyed``), their identities (12 bytes each,
#: ``engine.state.unit_identities``, grouped by shard), each unit's shard (one byte), number of sales w, per sale in row order its unit (uint32 index, 0-based),
#: guide ids (``pack_strings``).  A sale makes its guide the unit's guide unless the unit
#: has one.  The answer is every unit's guide before the batch (lengths as uint32, then the ids),
#: from which ``engine.state.resolve_guides`` answers the rows.
GUIDES_LUA = LUA_PRELUDE + r"""
local pre, k = ARGV[1], tonumber(ARGV[2])
local ib, bucket = ARGV[3], bytes(ARGV[4])
local w = tonumber(ARGV[5])
local widx = ints(ARGV[6], 'I4', w)
local wguide = strings(ARGV[7], w)
local fields = {}
for i = 1, k do fields[i] = string.sub(ib, 12 * i - 11, 12 * i) end
local vals = hmget_buckets(pre, fields, bucket, k)
local now = {}
for j = 1, w do
  local u = widx[j] + 1
  if (now[u] or vals[u]) == '' then
    now[u] = wguide[j]
    redis.call('HSET', shard_key(pre, bucket[u]), fields[u], wguide[j])
  end
end
local lens = {}
for i = 1, k do lens[i] = #vals[i] end
return {pack_ints('I4', lens), table.concat(vals)}
"""

#: The requests that drew a tier (tier >= 0; a request without one only asks whether its code won
#: before, which the caller reads itself with a plain HMGET, ``RedisStateStore.grant``), settled
#: against the stock, the budget and the caps.  ARGV: prefix, n, number of campaigns m, code
#: identities (12 bytes each), user_ids (``pack_strings``), each request's group (uint32 index,
#: 0-based), the number of groups, per group (a campaign and a day) its campaign (uint32 index into
#: the m ids, 0-based) and its day (decimal text), each request's prize (uint32 index, 0-based),
#: the number of prizes, per prize (a tier and an amount) its tier (int16), cents (int64) and text
#: as stored when won ("tier:cents:0"), the number of requests with a guide, per such request its
#: row (uint32, 0-based), the guide's commission (int64) and the prize's text as stored when won
#: with it ("tier:cents:commission"), the DrawStatus codes WON NO_PRIZE OUT_OF_STOCK BUDGET CAP, the
#: flag PAID, then the m ids.  A code's prize is kept as "tier:cents:commission" (a prize stored
#: before commissions existed, "tier:cents", had none).  The caller sends what requests share once
#: (their campaign and day, their tier and amount, the texts), because Lua's work per value is what
#: a request costs Redis: a request is four values here, where it was ten (41 400 instructions a
#: drawn request, now 26 900, counted by callgrind).
#: Returns {one byte per request: its status, + PAID when its guide's commission was paid now; per
#: request answered with a prize won before (stored, or by an earlier request of the batch): its
#: row (uint32), tier (int16), cents (int64), commission (int64)}.  A request that won now has the
#: tier and cents it drew.
#: It reads first (prizes won before, the users' daily counts) and writes last (the campaign, its
#: prizes, the counts), one command per key: a refusal midway (a tier the stored campaign lacks)
#: then writes nothing, where a prize written before it would come back on the batch's retry as
#: won before, out of a budget never charged.
GRANT_LUA = LUA_PRELUDE + r"""
local WON, NO_PRIZE, OUT_OF_STOCK, BUDGET, CAP, PAID = tonumber(ARGV[19]), tonumber(ARGV[20]),
  tonumber(ARGV[21]), tonumber(ARGV[22]), tonumber(ARGV[23]), tonumber(ARGV[24])
local pre, n, m = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ids, users, group = ARGV[4], strings(ARGV[5], n), ints(ARGV[6], 'I4', n)
local ng = tonumber(ARGV[7])
local group_campaign, group_day = ints(ARGV[8], 'I4', ng), strings(ARGV[9], ng)
local prize, np = ints(ARGV[10], 'I4', n), tonumber(ARGV[11])
local prize_tier, prize_cents, prize_text = ints(ARGV[12], 'h', np), ints(ARGV[13], 'i8', np), strings(ARGV[14], np)
local guided = tonumber(ARGV[15])
local cut, cut_text = {}, {}  -- by row: the guide's commission and the prize's text with it
do
  local rows, cuts, texts = ints(ARGV[16], 'I4', guided), ints(ARGV[17], 'i8', guided), strings(ARGV[18], guided)
  for j = 1, guided do cut[rows[j] + 1], cut_text[rows[j] + 1] = cuts[j], texts[j] end
end
-- a user's prizes of a day as the text HSET takes: each count turned to text once a call (Lua's
-- number to text is a libc snprintf)
local COUNTS = {}
local function count_text(k)
  local t = COUNTS[k]
  if t == nil then t = tostring(k); COUNTS[k] = t end
  return t
end
local C = {}
for c = 1, m do
  local id = ARGV[24 + c]
  local base = pre .. 'cp:{' .. id .. '}'
  local h = redis.call('HGETALL', base)
  if #h == 0 then return redis.error_reply('campaign ' .. id .. ' is not defined in the state store') end
  local st = {}
  for k = 1, #h, 2 do st[h[k]] = tonumber(h[k + 1]) end
  local stock = {}
  for t = 0, st.tiers - 1 do stock[t] = st['s' .. t] end
  C[c] = {base = base, aw = base .. ':aw', budget = st.budget, cap = st.cap, prizes = st.prizes,
          commissions = st.commissions or 0, stock = stock, won = {}, awards = {n = 0}, paid = false}
end
local field, status, found, before = {}, {}, {}, {}
-- prizes won before this batch are given back whatever was drawn now: one HMGET per campaign
-- and slice of its rows
local rows_of = {}
for i = 1, n do
  field[i] = string.sub(ids, 12 * i - 11, 12 * i)
  status[i] = NO_PRIZE
  local c = group_campaign[group[i] + 1] + 1
  local r = rows_of[c]
  if r == nil then r = {}; rows_of[c] = r end
  r[#r + 1] = i
end
for c, rows in pairs(rows_of) do
  for a = 1, #rows, 1000 do
    local ask = {}
    for j = a, math.min(a + 999, #rows) do ask[#ask + 1] = field[rows[j]] end
    local got = redis.call('HMGET', C[c].aw, unpack(ask))
    for j = 1, #ask do
      local p, i = got[j], rows[a + j - 1]
      if p then
        local t, amt, g = string.match(p, '^(-?%d+):(-?%d+):?(%d*)$')
        status[i], before[i] = WON, true
        found[#found + 1] = struct.pack('<I4hi8i8', i - 1, tonumber(t), tonumber(amt), tonumber(g) or 0)
      end
    end
  end
end
-- the prizes each drawn request's user was paid that day, read up front (one HMGET per campaign
-- and day): nothing below writes them before the end.  count[g][user], and start[g][user] as read
local count, start, dkey = {}, {}, {}
for g = 1, ng do
  count[g], start[g] = {}, {}
  dkey[g] = C[group_campaign[g] + 1].base .. ':ud:' .. group_day[g]
end
local asked = {}
for i = 1, n do
  if not before[i] then
    local g, u = group[i] + 1, users[i]
    local s = start[g]
    if s[u] == nil then
      s[u] = false
      local q = asked[g]
      if q == nil then q = {}; asked[g] = q end
      q[#q + 1] = u
    end
  end
end
for g, q in pairs(asked) do
  local cg, sg = count[g], start[g]
  for a = 1, #q, 1000 do
    local b = math.min(a + 999, #q)
    local got = redis.call('HMGET', dkey[g], unpack(q, a, b))
    for j = a, b do
      local k = tonumber(got[j - a + 1] or 0)
      cg[q[j]], sg[q[j]] = k, k
    end
  end
end
-- drawn prizes, in request order: the earlier scan takes the last one
local paid_now = {}
for i = 1, n do
  if not before[i] then
    local g, p = group[i] + 1, prize[i] + 1
    local c, t, amount = C[group_campaign[g] + 1], prize_tier[p], prize_cents[p]
    local first = c.won[field[i]]
    if first then  -- the same code won earlier in this batch: its prize again
      local fp = prize[first] + 1
      status[i] = status[first]
      found[#found + 1] = struct.pack('<I4hi8i8', i - 1, prize_tier[fp], prize_cents[fp], paid_now[first] or 0)
    else
      if c.stock[t] == nil then
        return redis.error_reply('campaign ' .. c.base .. ' has no tier ' .. t)
      end
      local cg, u = count[g], users[i]
      if c.stock[t] <= 0 then
        status[i] = OUT_OF_STOCK
      elseif c.budget < amount then
        status[i] = BUDGET
      elseif cg[u] >= c.cap then
        status[i] = CAP
      else
        c.stock[t] = c.stock[t] - 1
        c.budget = c.budget - amount
        c.prizes = c.prizes + 1
        c.paid = true
        cg[u] = cg[u] + 1
        status[i] = WON
        local award = prize_text[p]
        -- the guide's commission: after the prize, only while the budget covers it
        local k = cut[i]
        if k and k > 0 and c.budget >= k then
          c.budget = c.budget - k
          c.commissions = c.commissions + 1
          award, status[i], paid_now[i] = cut_text[i], WON + PAID, k
        end
        local aw = c.awards
        aw[aw.n + 1], aw[aw.n + 2], aw.n = field[i], award, aw.n + 2
        c.won[field[i]] = i
      end
    end
  end
end
for c = 1, m do
  local s = C[c]
  if s.paid then
    local args = {'budget', string.format('%d', s.budget), 'prizes', string.format('%d', s.prizes),
                  'commissions', string.format('%d', s.commissions)}
    for t, left in pairs(s.stock) do
      args[#args + 1] = 's' .. t
      args[#args + 1] = string.format('%d', left)
    end
    redis.call('HSET', s.base, unpack(args))
    hset_all(s.aw, s.awards, s.awards.n)
  end
end
-- the users whose count went up, one HSET per campaign and day
for g = 1, ng do
  local w, wn, sg = {}, 0, start[g]
  for u, k in pairs(count[g]) do
    if k ~= sg[u] then w[wn + 1], w[wn + 2], wn = u, count_text(k), wn + 2 end
  end
  hset_all(dkey[g], w, wn)
end
return {chars(status), table.concat(found)}
"""

#: Window scripts.  KEYS[1]: a key in the keys' shard (routing only).  ARGV: key prefix, TTL,
#: keys (8 bytes each); a key lives in its shard (its first byte % SHARDS), as ``P w:{tag}<key>``.
COUNT_LUA = LUA_PRELUDE + r"""
local pre, ttl, blob = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #blob / 8 do
  local raw = string.sub(blob, 8 * i - 7, 8 * i)
  local k = shard_key(pre, string.byte(raw, 1) % SHARDS) .. raw
  local total = redis.call('INCR', k)
  if total == 1 then redis.call('EXPIRE', k, ttl) end
  out[i] = total
end
return pack_ints('i8', out)
"""

MARK_ONCE_LUA = LUA_PRELUDE + r"""
local pre, ttl, blob = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 1, #blob / 8 do
  local raw = string.sub(blob, 8 * i - 7, 8 * i)
  out[i] = redis.call('SET', shard_key(pre, string.byte(raw, 1) % SHARDS) .. raw, 1, 'EX', ttl, 'NX') and 1 or 0
end
return chars(out)
"""

#: The block list.  KEYS[1]: the list, a sorted set of 8-byte keys scored by their expiry in
#: milliseconds of the server's clock.  ARGV: TTL in ms, keys (8 bytes each).
BLOCK_LUA = r"""
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
BLOCKED_LUA = LUA_PRELUDE + r"""
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
