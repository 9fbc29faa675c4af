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
    On a single server each method is one Lua script over the whole batch (the claim two, see
    ``redis_lua``; on a Cluster one per shard, see below), loaded once (``SCRIPT LOAD`` through
    redis-py's ``register_script``) and called by SHA; a script is atomic, which is what the
    memory store gets from its lock.  Arrays travel packed: uint32/int64 columns as
    little-endian binary strings (read in Lua with ``struct.unpack``), strings as a uint32
    length column plus one concatenated blob, 8-byte keys and set members packed; answers
    come back as one binary string (one byte per claim, 19 bytes per grant, 8 per count).
    An empty batch makes no call.

Keys (``P`` is the prefix; ``{t}`` the hash tag of a state shard, ``redis_lua.SHARD_TAGS``)::

    P dd:{t}T:K:B:C         string  dedup bitmap of chunk C of (tenant T, kind K, batch B), in the
                                    chunk's shard (``chunk_shards``), bit ``serial % CHUNK_SERIALS``,
                                    no expiry (``ddN:`` for audience N, ``audiences.claim_keys``)
    P rp:{t}:<epoch>        hash    scan_id -> its identity (``engine.state.pack_answer``: verdict, or
                                    CLAIMED + the shard of its code's chunk; event fingerprint;
                                    for CLAIMED the reference of its outcome: claim token, rank;
                                    first user), in the scan_id's shard (its ``state_keys`` hash),
                                    for scan_ids first claimed in epoch ``now // replay_ttl_s``;
                                    expires at the end of the next epoch
    P ck:{t}:<epoch>        hash    claim token -> the verdicts its claim call's code step gave
                                    (OK or REPEAT, a byte per rank) in the shard of the codes'
                                    chunks: one field per claim call and shard, not per scan
    P cp:{<id>}             hash    budget, prizes, commissions, cap, tiers, s0 .. s<tiers-1> (stock left)
    P cp:{<id>}:aw          hash    12-byte code identity (uint64 batch key, uint32 serial, LE)
                                    -> "tier:cents:commission", kept for ever: one prize per
                                    code, ever, and the guide's commission paid with it
    P cp:{<id>}:ud:<day>    hash    user_id -> prizes paid that day (at most one entry per
                                    prize paid, so no expiry is needed to bound it)
    P bn:{t}                hash    outbound bindings (物流防窜): 8-byte key of a case or unit ->
                                    its history (``redis_lua.BIND_LUA``), kept for ever; one
                                    field per case shipped, whatever the case holds
    P gd:{t}                hash    guides (超级导购码): 12-byte unit identity -> the user_id of the
                                    first guide who sold it (``redis_lua.GUIDES_LUA``), kept for ever
    P campaigns             set     campaign ids, for error messages and operators
    P meta                  hash    the local driver's checkpoint (JSON values), see ``checkpoint``
    P bl                    zset    the block list: 8-byte keys scored by their expiry (ms)
    P w:{t}<8 bytes>        windowed state under a uint64 key, EX ttl from its creation:
                                    a counter (count) or a mark (mark_once)
    P cl:{t}:<g>:<ttl>:<e>  list    ``distinct``'s calls for code group g (``engine.state.set_log``):
                                    the sets themselves live in the worker that owns the group
    P rh:{t}:<minute>       hash    the scan API's replies (``streams/replies.py``, written by the
                                    worker under the same prefix): scan_id -> its outcome lines;
                                    expires the reply TTL after its minute
    P rb:{t}:<token hex>    string  the first outcome lines of one claim call's rows in code shard t,
                                    at the ranks their identities name (``streams/replies.py``
                                    ``file_outcomes``), in place of a reply field each; expires
                                    with the reply hash of its minute

A uint64 key's shard is its low bits (``key_shards``); a scan_id's that of its hash.

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
    A script may only touch keys of one hash slot, and every key above but ``campaigns``,
    ``meta`` and ``bl`` (each one key, used alone) carries the tag of its shard or campaign.  On a
    single server each method is one script call over the whole batch (the claim two); on a
    Cluster (``from_url(..., cluster=True)``) ``_sharded`` splits the batch by shard (grants by
    campaign) and calls the same script once per shard, which changes no answer because rows of
    different shards share no key: a scan_id's rows are all in its shard, a code's in its
    chunk's, a window key's in its own.  The claim is split into two steps for that reason (see
    ``redis_lua``): the scan_id's identity and the code's bit live in different shards, and each
    step is atomic where it decides.  The calls of the shards that one primary serves go to it
    pipelined (``_sharded``), so a step takes one round trip per primary, not per shard.

Windows
    Window keys get their TTL when they are created and keep it (like the memory store, whose
    entries expire ``ttl_s`` after they were added); ``ttl_s`` below 1 is taken as 1.  The
    memory store sweeps expired window entries after it has answered a call, so a key read in
    the very call that finds it expired still shows its old value there; keys carry their
    window and are never reused after their TTL, so no answer of the engine depends on it.
    ``distinct``'s sets are the memory store's, kept in the process per code group (the scans
    topic's partition of the code) and rebuilt from their log in Redis (``engine.state.set_log``):
    the same answers, at one log element per group and call instead of a hash field per scan.

Errors
    Connection failures, timeouts, a read-only replica or an out-of-memory server raise
    ``StateUnavailable`` naming the URL without its password.  The client does not retry a
    call by itself: a script that timed out may have run, and re-running ``count`` would count
    twice.  The worker does not commit the batch's offsets, and the redelivered batch is safe:
    claims and grants are idempotent, and the pipeline does not count replayed scans again.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson
import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from scanstream.engine.audiences import AUDIENCE_SHIFT
from scanstream.engine.errors import PermanentError
from scanstream.engine.state import (BINDING_HISTORY, Bindings, CampaignLimits, CampaignState, Claims, DrawStatus, Grants,
                                     GrantRequests, History, StateStore, StateUnavailable, fold, resolve_bindings,
                                     OUTCOME_REF, resolve_guides, state_keys, unit_identities)
from scanstream.engine.state.redis_lua import (
    BIND_LUA, BLOCKED_LUA, BLOCK_LUA, CODES_LUA, COUNT_LUA, DEFINE_LUA, GRANT_LUA, GUIDES_LUA, IDS_LUA, MARK_ONCE_LUA,
    SHARDS, pack_strings, shard_key)
from scanstream.engine.state.set_log import SetLog
from scanstream.engine.urls import redact_url
from scanstream.engine.verdicts import Verdict

#: Serials per dedup chunk: a full chunk is an 8 176-byte string, which with its sds header
#: fits jemalloc's 8 KiB size class exactly (2**16 serials would take a 10 KiB block).
CHUNK_BYTES = (1 << 13) - 16
CHUNK_SERIALS = CHUNK_BYTES * 8
#: Remember a scan_id's answer this long; a redelivery after that is a new scan.
DEFAULT_REPLAY_TTL_S = 7 * 24 * 3600
#: Client options unless the URL sets them (``?socket_timeout=...``): a large batch's script
#: can take a few seconds, and a dead server must fail fast rather than hang the worker.
CLIENT_OPTIONS: dict[str, Any] = {"socket_timeout": 30.0, "socket_connect_timeout": 5.0, "health_check_interval": 30}
#: Server replies that mean "not now" rather than "wrong": another script running too long, a
#: replica without its primary.
_TRANSIENT = ("BUSY", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN")
_REPLAY_FLAG = 0x80  # claim answers: verdict | flag when the scan_id was claimed before
#: A scan_id's identity mark while its code's claim decides its verdict (``redis_lua.IDS_LUA``):
#: ``_CLAIMED`` + the shard of the code's chunk, above every ``Verdict``, below ``_REPLAY_FLAG``.
_CLAIMED = 0x40
assert max(Verdict) < _CLAIMED and _CLAIMED + SHARDS <= _REPLAY_FLAG
_SHARD_BITS = np.uint64(SHARDS - 1)
#: A CLAIMED identity's reference to its outcome record: the claim's token and a uint32 rank.
_TOKEN_BYTES = 8
_REF_BYTES = _TOKEN_BYTES + 4
_FOLD_SHARD = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: a multiplier that mixes every bit into the top ones
#: The key layout this store writes, kept in ``P layout``.  Layout 1 (no shard tags, one claim
#: script) was written before the Redis Cluster support; ``migrate_layout`` renames its keys.
#: Layout 2 kept a claim's outcome per scan_id (``ck:`` field scan_id) and a ``distinct`` set as
#: bare packed members; ``migrate_layout`` turns its CLAIMED identities into layout 3's (a final
#: verdict where its outcome is known, else a reference to no record), drops those records and
#: gives each set its size byte.
LAYOUT = 3
#: Keys of layout 1 that ``migrate_layout`` renames, by family: ``dd`` and ``ddN`` bitmaps named
#: ``{T:K:B:C}``, bucket hashes ``rp:<epoch>:<bucket>`` and ``wd:<epoch>:<bucket>``, ``bn:<bucket>``,
#: ``gd:<bucket>``, and the 8-byte window keys ``w:<key>`` and spilled sets ``ws:<key>``.
_OLD_DEDUP = re.compile(rb"dd(\d*):\{(\d+):(\d+):(\d+):(\d+)\}")
_OLD_EPOCH_BUCKET = re.compile(rb"(rp|wd):(\d+):(\d+)")
_OLD_BUCKET = re.compile(rb"(bn|gd):(\d+)")
_WINDOW_KEY_BYTES = 8
FAMILY = re.compile(rb"[a-z]+")  # a key's family: its first word after the prefix
_GRANT_DTYPE = np.dtype([("status", "u1"), ("tier", "<i2"), ("cents", "<i8"), ("commission", "<i8")])
#: ``GRANT_LUA``'s flag on a request's status: its guide's commission was paid now.
_COMMISSION_PAID = 0x80
#: ``GRANT_LUA``'s answer for a request given a prize won before (22 bytes, as ``struct`` packs it).
_PRIZE_BEFORE = np.dtype([("row", "<u4"), ("tier", "<i2"), ("cents", "<i8"), ("commission", "<i8")])


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


def chunk_shards(groups: np.ndarray) -> np.ndarray:
    """The shard of each dedup chunk, given as ``batch key << 20 | chunk number``: the top bits
    of a multiplicative hash, so that the chunks of one batch spread over the shards."""
    return (np.asarray(groups, np.uint64) * _FOLD_SHARD) >> np.uint64(64 - (SHARDS - 1).bit_length())


def key_shards(keys: np.ndarray) -> np.ndarray:
    """The shard of each uint64 state key (already a uniform hash): its low bits, which are the
    first byte's as the scripts read the key packed little-endian."""
    return (np.asarray(keys, np.uint64) & _SHARD_BITS).astype(np.uint8)


def connect(url: str, *, cluster: bool = False, **options: Any) -> redis_py.Redis | redis_py.RedisCluster:
    """A client of the server at ``url``, or of the Redis Cluster its node belongs to, with
    ``CLIENT_OPTIONS`` under ``options`` and no automatic retries: a script that timed out may
    have run, and running ``count`` again would count twice.  A Cluster client still follows
    MOVED and ASK redirections, which the server sends before running anything."""
    kwargs = {**CLIENT_OPTIONS, "retry": Retry(NoBackoff(), 0), **options}
    if cluster:
        kwargs.pop("health_check_interval", None)  # per node connection option a Cluster client sets itself
        return redis_py.RedisCluster.from_url(url, **kwargs)
    return redis_py.Redis.from_url(url, **kwargs)


# --------------------------------------------------------------------------- store


#: Tags to find a key in a slot of each primary with (``durable``): their slots cover nearly all
#: 16 384, so any primary that serves a few slots serves one of them.
_SYNC_TAGS = tuple(b"%d" % i for i in range(20_000))


def _utf8(value: Any) -> bytes:
    """A str in UTF-8 (lone surrogates kept), bytes as they are, anything else as its str."""
    return (value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value if isinstance(value, bytes)
            else str(value).encode())


def _pack_texts(values: np.ndarray) -> bytes:
    """``values`` (str) in UTF-8, packed for the scripts' ``strings`` (``redis_lua.pack_strings``)."""
    return pack_strings([_utf8(v) for v in values.tolist()])


def _pack_rows(cells: np.ndarray, keep: np.ndarray, tails: list[bytes] | None = None) -> bytes:
    """Each row's kept ``cells`` (a (rows, width) uint8 array, ``keep`` of its shape) then its tail,
    packed for the scripts' ``strings`` (``redis_lua.pack_strings``: each after its uint32 length),
    in numpy: a bytes object per row cost twice as much."""
    rows = len(cells)
    head_len = keep.sum(axis=1)
    tail_len = np.fromiter(map(len, tails), np.int64, rows) if tails is not None else np.zeros(rows, np.int64)
    lengths = head_len + tail_len
    starts = np.cumsum(lengths + 4) - lengths  # where each row's cells go, after its length
    out = np.empty(int(lengths.sum()) + 4 * rows, np.uint8)
    out[(starts[:, None] + np.arange(-4, 0)).reshape(-1)] = lengths.astype("<u4").view(np.uint8)
    # the kept cells close up: a cell's place is the number of kept cells before it in its row
    out[(starts[:, None] + np.cumsum(keep, axis=1) - 1)[keep]] = cells[keep]
    if tails is not None:
        # each tail's bytes after its row's cells: its offset in the joined tails moved to its place
        shift = starts + head_len - (np.cumsum(tail_len) - tail_len)
        out[np.repeat(shift, tail_len) + np.arange(int(tail_len.sum()))] = np.frombuffer(b"".join(tails), np.uint8)
    return out.tobytes()


#: Decimal digits of a bit offset in a dedup chunk (``CHUNK_SERIALS`` < 10 ** 5).
_OFFSET_DIGITS = 5


def _decimal_texts(values: np.ndarray) -> bytes:
    """Non-negative integers below 10 ** ``_OFFSET_DIGITS`` as decimal text, packed for the scripts'
    ``strings`` (``redis_lua.pack_strings``), in numpy: a formatted bytes object per value cost
    the worker 0.36 µs."""
    values = np.asarray(values, np.int64)
    powers = 10 ** np.arange(_OFFSET_DIGITS - 1, -1, -1, dtype=np.int64)
    digits = (values[:, None] // powers % 10 + ord("0")).astype(np.uint8)
    # no leading zeros (Redis reads "007" as no integer), but 0 keeps its one digit
    keep = (values[:, None] >= powers) | (powers == 1)
    return _pack_rows(digits, keep)


def _ranks(shards: np.ndarray, groups: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each flagged row's rank among the flagged rows of its shard, in the order of their dedup
    chunks (``groups``), then of the rows (0 elsewhere): the byte of the claim's record (one per
    shard) that keeps the row's outcome.  Chunk order lets the code step take a shard's rows
    chunk by chunk and write its record in the order it sets their bits (``redis_lua.CODES_LUA``,
    its fresh part); row order within a chunk keeps a code's first scan first."""
    out = np.zeros(len(shards), np.int64)
    at = np.nonzero(rows)[0]
    order = np.lexsort((groups[at], shards[at]))  # stable: rows of a chunk keep their order
    sorted_shards = shards[at][order]
    out[at[order]] = np.arange(len(at)) - np.searchsorted(sorted_shards, sorted_shards)
    return out


def _new_identities(given: np.ndarray, code_shards: np.ndarray, fps: np.ndarray, token: bytes,
                    ranks: np.ndarray, users: np.ndarray) -> bytes:
    """Each row's identity (``engine.state.pack_answer``) were its scan_id new (``redis_lua.IDS_LUA``),
    packed for the script's ``strings`` (``redis_lua.pack_strings``): a row at OK gets the mark
    CLAIMED + its code's shard and its reference (the call's ``token`` and its rank), any other
    its verdict; then its fingerprint (``fps``, "<u8") and its user."""
    n = len(given)
    claimed = given == Verdict.OK
    head = np.zeros((n, 1 + 8 + _REF_BYTES), np.uint8)
    head[:, 0] = np.where(claimed, _CLAIMED + code_shards, given)
    head[:, 1:9] = np.ascontiguousarray(fps, "<u8").view(np.uint8).reshape(n, 8)
    head[:, 9:9 + _TOKEN_BYTES] = np.frombuffer(token, np.uint8)
    head[:, 9 + _TOKEN_BYTES:] = np.ascontiguousarray(ranks, "<u4").view(np.uint8).reshape(n, 4)
    keep = np.ones(head.shape, bool)
    keep[:, 9:] = claimed[:, None]
    return _pack_rows(head, keep, [_utf8(u) for u in users.tolist()])


def identity_hash(prefix: bytes, shard: int, epoch: int) -> bytes:
    """``P rp:{t}:<epoch>``: the identities of the scan_ids of ``shard`` first claimed in
    ``epoch`` (of ``replay_ttl_s``), as ``redis_lua``'s ``store`` names it."""
    return b"%b:%d" % (shard_key(prefix + b"rp:", shard), epoch)


def identity_epochs(first_s: float, last_s: float, replay_ttl_s: int) -> range:
    """The epochs whose identity hashes may hold a scan_id claimed up to one ``replay_ttl_s``
    before ``first_s`` and until ``last_s`` (Unix times; a hash outlives its epoch by one)."""
    return range(int(first_s // replay_ttl_s) - 1, int(last_s // replay_ttl_s) + 1)


def outcome_ref(identity: bytes | None) -> tuple[int, bytes, int] | None:
    """Where a stored identity's code outcome is recorded, (code shard, token, rank), for a
    CLAIMED identity with a record; None for any other (a final verdict, a reference to no record,
    a value too short to hold one)."""
    if not identity or len(identity) < 9 + _REF_BYTES or not _CLAIMED <= identity[0] < _CLAIMED + SHARDS:
        return None
    token = identity[9:9 + _TOKEN_BYTES]
    if not any(token):
        return None
    return identity[0] - _CLAIMED, token, int.from_bytes(identity[9 + _TOKEN_BYTES:9 + _REF_BYTES], "little")


def claim_token() -> bytes:
    """A claim call's token: 8 random bytes naming its outcome records, never all zero (the
    reference of an identity whose record is unknown, see ``migrate_layout``)."""
    while True:
        token = os.urandom(_TOKEN_BYTES)
        if any(token):
            return token


def _raise(error: Exception) -> None:
    """Raise an error a pipeline returned, so that ``RedisStateStore._call`` says what it means."""
    raise error


def _keys_blob(keys: np.ndarray) -> bytes:
    return np.ascontiguousarray(keys, np.uint64).astype("<u8").tobytes()


class OldStateLayout(PermanentError):
    """The server holds this prefix's state in an older key layout (permanent until migrated):
    this version would not find its bitmaps and answers, so every code would be new again."""


class RedisStateStore(StateStore):
    """State in a Redis server, shared by every worker that uses the same prefix."""

    def __init__(self, client: redis_py.Redis, *, prefix: str = "scanstream:",
                 replay_ttl_s: int = DEFAULT_REPLAY_TTL_S, url: str | None = None, check_layout: bool = True,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000):
        if replay_ttl_s < 1:
            raise ValueError(f"replay_ttl_s: expected at least 1 second, got {replay_ttl_s}")
        if wait_replicas < 0 or wait_timeout_ms < 1:
            raise ValueError(f"wait_replicas {wait_replicas}, wait_timeout_ms {wait_timeout_ms}: expected at least "
                             f"0 replicas and 1 ms")
        self.wait_replicas, self.wait_timeout_ms = int(wait_replicas), int(wait_timeout_ms)
        self.client = client
        self.prefix = prefix
        self.replay_ttl_s = int(replay_ttl_s)
        self.url = redact_url(url) if url else _describe(client)
        #: a Cluster takes one script call per shard; a single server one call per batch
        self.cluster = isinstance(client, redis_py.RedisCluster)
        self._pre = prefix.encode("utf-8")
        self._campaign_ids: list[str] = []
        self._ids = client.register_script(IDS_LUA)
        self._codes = client.register_script(CODES_LUA)
        self._define = client.register_script(DEFINE_LUA)
        self._grant = client.register_script(GRANT_LUA)
        self._count = client.register_script(COUNT_LUA)
        self._mark_once = client.register_script(MARK_ONCE_LUA)
        self._block = client.register_script(BLOCK_LUA)
        self._blocked = client.register_script(BLOCKED_LUA)
        self._bind = client.register_script(BIND_LUA)
        self._guides = client.register_script(GUIDES_LUA)
        self._sets = SetLog(client, self._pre, self._call)
        # load them now: a wrong URL or a server without Lua fails at start, not mid-stream
        scripts = (self._ids, self._codes, self._define, self._grant, self._count, self._mark_once,
                   self._block, self._blocked, self._bind, self._guides)
        self._call(lambda: [client.script_load(s.script) for s in scripts])
        if check_layout:
            self._check_layout()

    def _check_layout(self) -> None:
        """Refuse state of an older layout (``OldStateLayout``); mark a prefix without any as ``LAYOUT``.

        The marker makes the check one GET after the first start.  A prefix without it is looked
        through once (SCAN) for keys of layout 1: a single server's only, since layout 1 never ran
        on a Cluster."""
        key = self._pre + b"layout"
        found = self._call(lambda: self.client.get(key))
        if found is None:
            old = [] if self.cluster else self._old_keys(limit=1)
            if old:
                raise OldStateLayout(
                    f"Redis state store {self.url}: prefix {self.prefix!r} holds state of layout 1 (e.g. "
                    f"{old[0]!r}); stop every worker and run `scanstream state migrate` once, then start "
                    f"this version (expected layout {LAYOUT})")
            self._call(lambda: self.client.set(key, LAYOUT, nx=True))
        elif int(found) < LAYOUT:
            raise OldStateLayout(
                f"Redis state store {self.url}: prefix {self.prefix!r} holds state of layout {int(found)}; stop "
                f"every worker and run `scanstream state migrate` once, then start this version (expected layout {LAYOUT})")
        elif int(found) != LAYOUT:
            raise OldStateLayout(f"Redis state store {self.url}: prefix {self.prefix!r} holds state of layout "
                                 f"{int(found)}; this version reads layout {LAYOUT}")

    def _old_keys(self, limit: int | None = None) -> list[bytes]:
        """Keys of layout 1 under the prefix (up to ``limit``)."""
        out = []
        for key in self.keys():
            if self._renamed(key) is not None:
                out.append(key)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def _renamed(self, key: bytes) -> bytes | None:
        """The layout-2 name of a layout-1 ``key``, or None for a key of no older layout."""
        rest = key[len(self._pre):]
        m = _OLD_DEDUP.fullmatch(rest)
        if m:
            audience, tenant, kind, batch, chunk = (int(g or 0) for g in m.groups())
            code = (audience << AUDIENCE_SHIFT) | (tenant << 26) | (kind << 24) | batch
            return self.dedup_key(code, chunk)
        m = _OLD_EPOCH_BUCKET.fullmatch(rest)
        if m and int(m.group(3)) < SHARDS:
            return shard_key(self._pre + m.group(1) + b":", int(m.group(3))) + b":" + m.group(2)
        m = _OLD_BUCKET.fullmatch(rest)
        if m and int(m.group(2)) < SHARDS:
            return shard_key(self._pre + m.group(1) + b":", int(m.group(2)))
        for family in (b"w:", b"ws:"):  # a raw 8-byte key: its shard is its first byte's low bits
            if rest.startswith(family) and len(rest) == len(family) + _WINDOW_KEY_BYTES:
                raw = rest[len(family):]
                return shard_key(self._pre + family, raw[0] % SHARDS) + raw
        return None

    def migrate_layout(self) -> dict[str, int]:
        """Bring this prefix to ``LAYOUT``, then mark it; the number of keys or fields changed per
        family.  Every worker on the prefix must be stopped.  Idempotent.

        Layout 1 to 2 renames keys (RENAME keeps each key's TTL), on a single server only: layout 1
        never ran on a Cluster.  Layout 2 to 3 rewrites each CLAIMED identity (``rp``): to the
        verdict its layout-2 outcome record gives, or, without one (a claim killed between its
        steps), to a reference that names no record, so that its redelivery decides as the first
        run would have; then it deletes the layout-2 records (``ck``).  Reply lists and the sets
        ``distinct`` kept in Redis before its set log (``wd``, ``ws``) are left to expire (minutes):
        the clone checks of the window in progress start afresh."""
        changed: dict[str, int] = {}
        found = self._call(lambda: self.client.get(self._pre + b"layout"))
        if found is not None and int(found) > LAYOUT:
            raise OldStateLayout(f"migrate_layout: prefix {self.prefix!r} is at layout {int(found)}, newer than "
                                 f"this version's {LAYOUT}")
        if not self.cluster:
            for key in self._old_keys():
                new = self._renamed(key)
                self._call(lambda: self.client.rename(key, new))
                family = FAMILY.match(key[len(self._pre):]).group(0).decode()
                changed[family] = changed.get(family, 0) + 1
        if found is None or int(found) < 3:
            claims = self._migrate_claims()
            if claims:
                changed["rp claimed"] = claims
        self._call(lambda: self.client.set(self._pre + b"layout", LAYOUT))
        return changed

    def _migrate_claims(self) -> int:
        """Layout 2 to 3 (see ``migrate_layout``); the number of identities rewritten."""
        ck = self._pre + b"ck:"
        records = set(self.keys(b"ck:*"))
        rewritten = 0
        for key in self.keys(b"rp:{*}:*"):
            epoch = int(key.rsplit(b":", 1)[1])
            for scan_id, identity in self._call(lambda: list(self.client.hscan_iter(key, count=1000))):
                mark = identity[0]
                if not _CLAIMED <= mark < _CLAIMED + SHARDS:
                    continue
                outcome = None
                for e in (epoch, epoch + 1, epoch - 1):  # step 2 ran in the identity's epoch or just after
                    name = shard_key(ck, mark - _CLAIMED) + b":%d" % e
                    if name in records:
                        outcome = self._call(lambda: self.client.hget(name, scan_id))
                        if outcome:
                            break
                head = 1 + 8  # the mark and the fingerprint; the first user follows
                new = (outcome[:1] + identity[1:] if outcome else
                       identity[:head] + bytes(_REF_BYTES) + identity[head:])
                self._call(lambda: self.client.hset(key, scan_id, new))
                rewritten += 1
        for key in records:
            self._call(lambda: self.client.delete(key))
        return rewritten

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "scanstream:", replay_ttl_s: int = DEFAULT_REPLAY_TTL_S,
                 cluster: bool = False, check_layout: bool = True, wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000, **options: Any) -> RedisStateStore:
        """A store on the server at ``url`` (``redis://``, ``rediss://`` or ``unix://``), or on the
        Redis Cluster that the node at ``url`` belongs to when ``cluster`` is set.

        ``options`` go to the client over ``CLIENT_OPTIONS``; automatic retries are off (see
        the module docstring).
        """
        try:
            client = connect(url, cluster=cluster, **options)
        except ValueError as exc:
            raise ValueError(f"Redis URL {redact_url(url)!r}: {exc}") from None
        except (redis_py.ConnectionError, redis_py.TimeoutError, redis_py.exceptions.ClusterError) as exc:
            raise StateUnavailable(f"Redis state store {redact_url(url)}: unavailable: {exc}") from exc
        return cls(client, prefix=prefix, replay_ttl_s=replay_ttl_s, url=url, check_layout=check_layout,
                   wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)

    def server_advice(self) -> list[str]:
        """What in the servers' configuration breaks a promise or stalls every client, one line per
        finding and node (``[]`` when nothing does); read with CONFIG GET on each primary.

        - ``appendonly no``: a restart loses the claims and prizes since the last snapshot, and
          the codes they paid pay again.
        - ``lazyfree-lazy-expire no``: the state's hashes per shard and period (scan_id
          identities, replies, clone sets) hold millions of fields, and Redis frees an expired
          one in its main thread: every client waits (0.6-0.9 s for a hash of 2 million fields,
          ``benchmarks/bench_expiry_stall.py``), every ``replay_ttl_hours`` and, for the
          replies, every minute.

        A server that refuses CONFIG (a managed service, a renamed command) gives one line saying
        so: its operator must check both by hand."""
        out = []
        def text(v: Any) -> str:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

        for name, node, _ in self._primaries():
            have: dict[str, str] = {}
            try:
                for setting in ("appendonly", "lazyfree-lazy-expire"):
                    got = self._call(lambda node=node, setting=setting: node.config_get(setting))
                    have.update({text(k): text(v) for k, v in got.items()})
            except redis_py.ResponseError as exc:
                out.append(f"Redis {name}: CONFIG GET refused ({exc}); check by hand that it runs with appendonly yes "
                           f"and lazyfree-lazy-expire yes")
                continue
            if have.get("appendonly") != "yes":
                out.append(f"Redis {name}: appendonly is {have.get('appendonly')!r}: a restart loses every claim and "
                           f"prize written since the last snapshot (all, when it takes none), and their codes "
                           f"pay again; set appendonly yes")
            if have.get("lazyfree-lazy-expire") != "yes":
                out.append(f"Redis {name}: lazyfree-lazy-expire is {have.get('lazyfree-lazy-expire')!r}: an expired "
                           f"state or reply hash (millions of fields) is freed in Redis's main thread and every client "
                           f"waits, about 0.4 s per million fields; set lazyfree-lazy-expire yes")
        return out

    def close(self) -> None:
        self.client.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (redis_py.ConnectionError, redis_py.TimeoutError) as exc:
            self._refresh_slots()
            raise StateUnavailable(f"Redis state store {self.url}: unavailable: {exc}") from exc
        except (redis_py.ReadOnlyError, redis_py.OutOfMemoryError) as exc:
            raise StateUnavailable(f"Redis state store {self.url}: cannot take writes: {exc}") from exc
        except redis_py.exceptions.ClusterError as exc:  # no node serves a slot, or the cluster is down
            raise StateUnavailable(f"Redis state store {self.url}: cluster unavailable: {exc}") from exc
        except redis_py.ResponseError as exc:
            if str(exc).startswith(_TRANSIENT):
                raise StateUnavailable(f"Redis state store {self.url}: unavailable: {exc}") from exc
            raise

    def _refresh_slots(self) -> None:
        """On a Cluster, read the slot map again after a node did not answer: the per-primary
        pipelines (``_sharded``) and ``durable`` talk to nodes directly, where the cluster client's
        own refresh on errors never runs, so after a failover they would call the dead primary
        until it came back (for ever, were it lost).  A map that cannot be read now (the cluster
        is still electing) is read again at the next failure."""
        if not self.cluster:
            return
        try:
            self.client.nodes_manager.initialize()
        except Exception:  # noqa: BLE001 - the caller raises StateUnavailable anyway; the retry re-reads
            pass

    def _sharded(self, script, shards: np.ndarray, call: Callable[[np.ndarray], tuple[list, list]]) -> list[tuple[np.ndarray, Any]]:
        """Run ``script`` over rows whose keys live in ``shards`` (one per row): on a single server
        one call over every row, on a Cluster one call per shard, each over its rows in order.
        ``call(rows)`` gives the KEYS and ARGV of the rows at the indices ``rows``; the answers
        come back with the rows they cover.  Rows of different shards share no key, so splitting
        them changes no answer.

        On a Cluster the calls of the shards one primary serves go to it pipelined on one of its
        connections: a round trip per primary, not per shard.  A call the primary answers with
        MOVED or ASK (its slot moved, refused before anything ran) or NOSCRIPT (a restarted node)
        is made again through the Cluster client, which follows the slot and loads the script."""
        if not self.cluster:
            keys, args = call(np.arange(len(shards)))
            return [(np.arange(len(shards)), self._call(lambda: script(keys=keys, args=args)))]
        order = np.argsort(shards, kind="stable")
        by_node: dict[str, tuple[Any, list[tuple[np.ndarray, list, list]]]] = {}
        for rows in np.split(order, np.nonzero(np.diff(np.asarray(shards)[order]))[0] + 1):
            keys, args = call(rows)
            node = self.client.get_node_from_key(keys[0])
            by_node.setdefault(node.name, (node, []))[1].append((rows, keys, args))
        out = []
        for node, calls in by_node.values():
            def pipelined(node=node, calls=calls) -> list:
                pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
                for _, keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                return pipe.execute(raise_on_error=False)

            for (rows, keys, args), reply in zip(calls, self._call(pipelined)):
                if isinstance(reply, (redis_py.exceptions.NoScriptError, redis_py.exceptions.AskError)):
                    reply = self._call(lambda keys=keys, args=args: script(keys=keys, args=args))
                elif isinstance(reply, Exception):
                    self._call(lambda reply=reply: _raise(reply))
                out.append((rows, reply))
        return out

    # -- dedup -----------------------------------------------------------------------------

    def dedup_key(self, code: int, chunk: int, shard: int | None = None) -> bytes:
        """Key of a dedup chunk; ``code`` is ``audiences.claim_keys``: the batch key
        (tenant, kind, batch) and the audience above it.  Consumers' keys (audience 0) are
        ``dd:{tag}T:K:B:C``, the others' ``ddN:{tag}...``, in the chunk's shard (``chunk_shards``;
        a batch's caller passes it, found for all its chunks at once)."""
        audience = code >> AUDIENCE_SHIFT
        if shard is None:
            shard = int(chunk_shards(np.array([(code << 20) | chunk], np.uint64))[0])
        name = shard_key(b"%bdd%b:" % (self._pre, b"%d" % audience if audience else b""), shard)
        return b"%b%d:%d:%d:%d" % (name, (code >> 26) & 0xFFFF, (code >> 24) & 3, code & 0xFFFFFF, chunk)

    def claim(self, scan_id: np.ndarray, fingerprint: np.ndarray, user: np.ndarray, code: np.ndarray,
              serial: np.ndarray, verdict: np.ndarray) -> Claims:
        """The two steps of ``redis_lua``: each scan_id's identity in its shard, then the codes'
        bits in theirs for the rows whose identity leaves the verdict to the code."""
        n = len(scan_id)
        if not n:
            return Claims(np.zeros(0, np.uint8), np.zeros(0, bool), np.zeros(0, object), np.zeros(0, OUTCOME_REF))
        given = np.asarray(verdict, np.uint8)
        ids, users = np.asarray(scan_id), np.asarray(user)
        id_keys = state_keys(ids)
        id_shards = (id_keys & _SHARD_BITS).astype(np.uint8)
        fps = np.asarray(fingerprint, np.uint64).astype("<u8")
        code, serial = np.asarray(code, np.uint64), np.asarray(serial).astype(np.uint64)
        # a chunk as one integer: batch key (42 bits) and chunk number (20 bits)
        groups = (code << np.uint64(20)) | (serial // np.uint64(CHUNK_SERIALS))
        code_shards = chunk_shards(groups).astype(np.uint8)
        ranks = _ranks(code_shards, groups, given == Verdict.OK).astype("<u4")
        token = claim_token()
        rp = self._pre + b"rp:"
        # the script takes its rows grouped by shard (a run each); on a Cluster ``_sharded`` keeps
        # this order, so each call's rows are one run
        by_shard = np.argsort(id_shards, kind="stable")
        # each row's reference were its scan_id new; the script sends back the known rows' own
        refs = np.zeros((n, _REF_BYTES), np.uint8)
        refs[:, :_TOKEN_BYTES] = np.frombuffer(token, np.uint8)
        refs[:, _TOKEN_BYTES:] = ranks.view(np.uint8).reshape(n, 4)
        _, which, counts = np.unique(id_keys, return_inverse=True, return_counts=True)
        repeated = counts[which.reshape(-1)] > 1  # a 64-bit key shared by chance only costs a slower path

        def identities(rows: np.ndarray) -> tuple[list, list]:
            src = by_shard[rows]
            run_shards, run_rows = np.unique(id_shards[src], return_counts=True)
            again = np.nonzero(repeated[src])[0]
            return [shard_key(rp, int(id_shards[src[0]]))], [
                rp, self.replay_ttl_s, len(rows), int(Verdict.CONFLICT), _CLAIMED,
                np.stack([run_shards, run_rows], 1).astype("<u4").tobytes(), len(run_shards),
                again.astype("<u4").tobytes(), len(again), _pack_texts(ids[src]),
                _new_identities(given[src], code_shards[src], fps[src], token, ranks[src], users[src])]

        out = np.empty(n, np.uint8)
        first_user = np.full(n, "", dtype=object)
        for rows, reply in self._sharded(self._ids, id_shards[by_shard], identities):
            src = by_shard[rows]
            got = np.frombuffer(reply[0], np.uint8)
            out[src] = got
            known = src[got >= _REPLAY_FLAG]
            refs[known] = np.frombuffer(reply[1], np.uint8).reshape(len(known), _REF_BYTES)
            first_user[src[got == Verdict.CONFLICT]] = [u.decode("utf-8", "surrogatepass") for u in reply[2:]]
        mark = out & ~np.uint8(_REPLAY_FLAG)
        claimed = np.nonzero(mark >= _CLAIMED)[0]
        # the references this call minted (its token): only their outcomes are this call's to file;
        # a redelivered identity names an earlier call's token, even when its code step decides
        # afresh (that call died between its steps), and other redeliveries may share that token
        minted = claimed[out[claimed] < _REPLAY_FLAG]
        if len(claimed):
            # the shard the identity names: a redelivery's own code's, unless the same event
            # fingerprint came with another code (then only its record can answer: no bit is set)
            where = (mark[claimed] - _CLAIMED).astype(np.uint8)
            setting = np.where(where == code_shards[claimed], given[claimed], np.uint8(Verdict.CONFLICT))
            out[claimed] = self._claim_codes(refs[claimed], setting, groups[claimed], serial[claimed], where,
                                             out[claimed] < _REPLAY_FLAG)
            lost = claimed[out[claimed] == Verdict.CONFLICT]  # no record there: the first answer is gone
            out[lost] = given[lost]
        verdicts = (out & ~np.uint8(_REPLAY_FLAG)).astype(np.uint8)
        ref = np.zeros(n, OUTCOME_REF)
        if len(minted):
            ref["token"][minted] = refs[minted, :_TOKEN_BYTES].copy().view("<u8").reshape(-1)
            ref["rank"][minted] = refs[minted, _TOKEN_BYTES:].copy().view("<u4").reshape(-1)
            ref["shard"][minted] = mark[minted] - _CLAIMED
        return Claims(verdicts, out >= _REPLAY_FLAG, first_user, ref)

    def _claim_codes(self, refs: np.ndarray, given: np.ndarray, groups: np.ndarray, serial: np.ndarray,
                     shards: np.ndarray, minted: np.ndarray) -> np.ndarray:
        """Step 2 of the claim (``redis_lua.CODES_LUA``) for rows whose identity is CLAIMED, with
        their identities' references ``refs`` (12 bytes a row), in the code shards ``shards``: one
        byte per row (a row not at OK gets its record or keeps its verdict).  ``minted``: the rows
        whose identity this claim made, under its own token, which has no record yet.

        A call's rows go in two parts.  The fresh part, the rows this claim minted at OK (all of
        a batch without redeliveries), sets their bits with no record to read, in rank order per
        shard, which is chunk by chunk (``_ranks``), and writes each shard's record in that order.
        The other part takes the rest in row order, after it.  Unless a row of the other part may
        set a bit of the fresh part's: then every row goes to the other part, where row order
        decides which scan of a code is first."""
        offset = (serial % np.uint64(CHUNK_SERIALS)).astype(np.int64)
        ck = self._pre + b"ck:"
        setting = given == Verdict.OK  # the caller sends a row at OK only to its own chunk's shard
        refs = np.ascontiguousarray(refs)
        token_ids = refs[:, :_TOKEN_BYTES].copy().view("<u8").reshape(-1)
        ranks = refs[:, _TOKEN_BYTES:].copy().view("<u4").reshape(-1)
        own = token_ids[minted][0] if minted.any() else 0  # this claim's token (never 0)
        # a code's bit as one number: rows of one bit always match, of different bits only by
        # chance (which costs that call its fresh part, never an answer)
        bit = (groups * _FOLD_SHARD) ^ offset.astype(np.uint64)
        # a row of the other part naming this claim's token (its scan_id came earlier in the batch)
        # reads the byte the fresh part recorded for its first and sets no bit
        may_set = setting & (token_ids != own)
        answers: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        def chunk_keys(uniq: np.ndarray) -> list[bytes]:
            return [self.dedup_key(g >> 20, g & 0xFFFFF, sh) for g, sh in zip(uniq.tolist(), chunk_shards(uniq).tolist())]

        def fresh_part(fr: np.ndarray) -> tuple[list[bytes], list, tuple[np.ndarray, np.ndarray]]:
            """The fresh part's chunk keys and arguments, and where each row's outcome is in its answer."""
            fr = fr[np.lexsort((ranks[fr], shards[fr]))]
            # per shard: its record's length (its last rank + 1) and the ranks no fresh row holds
            # (OK rows whose scan_id was known: their rank of this claim stays unused)
            run_shards, firsts, counts = np.unique(shards[fr], return_index=True, return_counts=True)
            lengths = ranks[fr][firsts + counts - 1].astype(np.int64) + 1
            holes = [np.setdiff1d(np.arange(length), ranks[fr][f:f + c]) for f, c, length in
                     zip(firsts.tolist(), counts.tolist(), lengths.tolist())]
            starts = np.r_[0, np.nonzero(np.diff(groups[fr]))[0] + 1]  # a run of rows per chunk
            sizes = np.diff(np.r_[starts, len(fr)])
            want = good_length(np.maximum.reduceat(offset[fr] >> 3, starts) + 1)
            chunks_of = np.bincount(np.searchsorted(run_shards, shards[fr][starts]), minlength=len(run_shards))
            record_at = np.zeros(SHARDS, np.int64)  # where each shard's record starts in the answer
            record_at[run_shards] = np.cumsum(lengths) - lengths
            answers_at = record_at[shards[fr]] + ranks[fr]
            return chunk_keys(groups[fr][starts]), [
                refs[fr[0], :_TOKEN_BYTES].tobytes(), len(fr),
                np.stack([run_shards, chunks_of, [len(h) for h in holes]], 1).astype("<u4").tobytes(),
                len(run_shards), np.stack([sizes, want], 1).astype("<u4").tobytes(),
                np.concatenate(holes).astype("<u4").tobytes(), _decimal_texts(offset[fr])], (fr, answers_at)

        def other_part(rest: np.ndarray, first_key: int) -> tuple[list[bytes], list]:
            """The other part's chunk keys (those where its rows may set a bit, from KEYS index
            ``first_key`` on) and arguments."""
            sets = setting[rest]
            uniq, inverse = np.unique(groups[rest][sets], return_inverse=True)
            chunk = np.zeros(len(rest), np.int64)
            chunk[sets] = inverse.reshape(-1) + first_key
            last = np.full(len(uniq), -1, np.int64)
            np.maximum.at(last, inverse.reshape(-1), offset[rest][sets] >> 3)
            # the rows' tokens once each (a call's rows share a few), and each row's by its index
            tokens, which = np.unique(token_ids[rest], return_inverse=True)
            return chunk_keys(uniq), [
                len(rest), tokens.astype("<u8").tobytes(), which.reshape(-1).astype("<u4").tobytes(),
                ranks[rest].tobytes(), given[rest].tobytes(), shards[rest].tobytes(), chunk.astype("<u4").tobytes(),
                _decimal_texts(offset[rest]), good_length(last + 1).astype("<u4").tobytes(), len(uniq)]

        def codes(rows: np.ndarray) -> tuple[list, list]:
            fresh = minted[rows] & setting[rows]
            if fresh.any() and np.isin(bit[rows][~fresh & may_set[rows]], bit[rows][fresh]).any():
                fresh[:] = False
            keys, fr, at = [shard_key(ck, int(shards[rows[0]]))], rows[:0], np.zeros(0, np.int64)
            if fresh.any():
                fresh_keys, args, (fr, at) = fresh_part(rows[fresh])
                keys += fresh_keys
            else:  # an empty fresh part: no token, rows, shards, chunks, unused ranks or offsets
                args = [b"", 0, b"", 0, b"", b"", b""]
            rest = rows[~fresh]
            other_keys, other_args = other_part(rest, len(keys))
            answers[int(rows[0])] = (fr, at, rest)
            return keys + other_keys, [ck, self.replay_ttl_s, int(Verdict.OK), int(Verdict.REPEAT), *args, *other_args]

        out = np.empty(len(refs), np.uint8)
        for rows, (records, other) in self._sharded(self._codes, shards, codes):
            fr, at, rest = answers[int(rows[0])]
            out[fr] = np.frombuffer(records, np.uint8)[at]
            out[rest] = np.frombuffer(other, np.uint8)
        return out

    def dedup_bytes(self) -> int:
        """Bytes of Redis memory held by the dedup bitmaps under this prefix (for memory reports)."""
        keys = self.keys(b"dd*:{*}*")
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.memory_usage(k, samples=0)
        return sum(v or 0 for v in self._call(pipe.execute)) if keys else 0

    # -- lottery ---------------------------------------------------------------------------

    def define_campaigns(self, campaigns: list[CampaignLimits]) -> None:
        if campaigns:
            def define(rows: np.ndarray) -> tuple[list, list]:
                args: list[Any] = [self._pre]
                for c in (campaigns[i] for i in rows.tolist()):
                    args += [c.id, int(c.budget_cents), int(c.daily_cap), ",".join(str(int(s)) for s in c.stocks)]
                return [self._campaign_key(campaigns[rows[0]].id)], args

            self._sharded(self._define, np.arange(len(campaigns)), define)
            self._call(lambda: self.client.sadd(self._pre + b"campaigns", *[c.id for c in campaigns]))
        self._campaign_ids = [c.id for c in campaigns]

    def _campaign_key(self, campaign: str) -> bytes:
        """A campaign's hash; its other keys start with it, so they share its slot."""
        return b"%bcp:{%b}" % (self._pre, campaign.encode("utf-8"))

    def grant(self, requests: GrantRequests) -> Grants:
        """Only the requests that drew a tier go to the script (``redis_lua.GRANT_LUA``), which
        settles them against the stock, the budget and the caps atomically.  The others (about
        three in four) only ask whether their code won before, a read that no request of the
        batch can change (the draw is a function of the campaign's seed and the code, so the
        same code in a campaign draws alike in one batch): they are read with one plain HMGET per
        campaign, which cost Redis a fraction of the script's per-row Lua work."""
        n = len(requests.tier)
        out = np.zeros(n, _GRANT_DTYPE)
        out["status"], out["tier"] = int(DrawStatus.NO_PRIZE), -1
        if not n:
            return _grants(out)
        campaign = np.asarray(requests.campaign, np.int64)
        identity = unit_identities(requests.code, requests.serial)
        tier = np.asarray(requests.tier).astype("<i2")
        drew = np.nonzero(tier >= 0)[0]
        self._prizes_before(campaign, identity, np.nonzero(tier < 0)[0], out)
        if not len(drew):
            return _grants(out)
        campaign, identity, tier = campaign[drew], identity[drew], tier[drew]
        users, guides = np.asarray(requests.user, dtype=object)[drew], np.asarray(requests.guide, dtype=object)[drew]
        day = np.asarray(requests.day).astype("<i8")[drew]
        cents, commission = (np.asarray(requests.cents).astype("<i8")[drew],
                             np.asarray(requests.commission).astype("<i8")[drew])

        guided = (guides != "") & (commission > 0)

        def grant(rows: np.ndarray) -> tuple[list, list]:
            used, index = np.unique(campaign[rows], return_inverse=True)
            ids = [self._campaign_ids[c] for c in used.tolist()]
            # what the requests share goes once: their campaign and day (a group), their tier and
            # cents (a prize), and the prize's text as stored
            groups, group = np.unique(np.stack([index.reshape(-1), day[rows]], 1), axis=0, return_inverse=True)
            prizes, prize = np.unique(np.stack([tier[rows], cents[rows]], 1), axis=0, return_inverse=True)
            mine = np.nonzero(guided[rows])[0]
            g = rows[mine]
            return [self._campaign_key(ids[0])], [
                self._pre, len(rows), len(ids), identity[rows].tobytes(), _pack_texts(users[rows]),
                group.reshape(-1).astype("<u4").tobytes(), len(groups), groups[:, 0].astype("<u4").tobytes(),
                pack_strings([b"%d" % d for d in groups[:, 1].tolist()]),
                prize.reshape(-1).astype("<u4").tobytes(), len(prizes), prizes[:, 0].astype("<i2").tobytes(),
                prizes[:, 1].astype("<i8").tobytes(), pack_strings([b"%d:%d:0" % (t, c) for t, c in prizes.tolist()]),
                len(mine), mine.astype("<u4").tobytes(), commission[g].tobytes(),
                pack_strings([b"%d:%d:%d" % x for x in zip(tier[g].tolist(), cents[g].tolist(), commission[g].tolist())]),
                int(DrawStatus.WON), int(DrawStatus.NO_PRIZE), int(DrawStatus.OUT_OF_STOCK), int(DrawStatus.BUDGET),
                int(DrawStatus.CAP), _COMMISSION_PAID, *ids]

        # a campaign's keys share its slot: on a Cluster one call per campaign
        for rows, (status, found) in self._sharded(self._grant, campaign, grant):
            got = np.frombuffer(status, np.uint8)
            paid = (got & _COMMISSION_PAID) != 0
            got = got & ~np.uint8(_COMMISSION_PAID)
            won = got == DrawStatus.WON
            answer = np.zeros(len(rows), _GRANT_DTYPE)
            answer["status"], answer["tier"] = got, np.where(won, tier[rows], -1)
            answer["cents"] = np.where(won, cents[rows], 0)
            answer["commission"] = np.where(paid, commission[rows], 0)
            before = np.frombuffer(found, _PRIZE_BEFORE)  # won before: stored, or earlier in the batch
            at = before["row"].astype(np.int64)
            answer["tier"][at], answer["cents"][at], answer["commission"][at] = (
                before["tier"], before["cents"], before["commission"])
            out[drew[rows]] = answer
        return _grants(out)

    def _prizes_before(self, campaign: np.ndarray, identity: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[rows]``: the prize each row's code won before in its campaign (``GRANT_LUA`` keeps
        it as "tier:cents:commission", or "tier:cents" from before commissions), where it won one."""
        if not len(rows):
            return
        order = rows[np.argsort(campaign[rows], kind="stable")]
        runs = np.split(order, np.nonzero(np.diff(campaign[order]))[0] + 1)
        keys = [self._campaign_key(self._campaign_ids[int(campaign[run[0]])]) + b":aw" for run in runs]
        for i, v in self._found(keys, runs, [[x.tobytes() for x in identity[run]] for run in runs]):
            parts = v.split(b":")
            out[i] = (int(DrawStatus.WON), int(parts[0]), int(parts[1]),
                      int(parts[2]) if len(parts) > 2 and parts[2] else 0)

    def _found(self, keys: list[bytes], runs: list[np.ndarray],
               fields: list[list[bytes]]) -> Iterator[tuple[int, bytes]]:
        """(row, value) of every field found by HMGET ``fields[j]`` of ``keys[j]``, whose rows are
        ``runs[j]``: one pipelined round trip (on a Cluster the client sends each primary its own)."""
        if not keys:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, names in zip(keys, fields):
            pipe.hmget(key, names)
        for run, values in zip(runs, self._call(pipe.execute)):
            for i, v in zip(run.tolist(), values):
                if v is not None:
                    yield i, v

    def campaign_state(self, campaign: str) -> CampaignState:
        key = self._campaign_key(campaign)
        raw = self._call(lambda: self.client.hgetall(key))
        if not raw:
            defined = self._call(lambda: self.client.smembers(self._pre + b"campaigns"))
            raise KeyError(f"campaign {campaign!r} is not defined; defined: {sorted(d.decode() for d in defined)}")
        h = {k.decode(): int(v) for k, v in raw.items()}
        return CampaignState(h["budget"], tuple(h[f"s{t}"] for t in range(h["tiers"])), h["prizes"],
                             h.get("commissions", 0))

    # -- guides ----------------------------------------------------------------------------

    def _keyed(self, script, name: bytes, uniq: bytes | np.ndarray, width: int, shard: np.ndarray, index: np.ndarray,
               writes: np.ndarray, write_args: Callable[[np.ndarray], list]) -> list[bytes]:
        """Each distinct key's value before the batch, for a script of distinct keys (``guides``,
        ``bind``): ``uniq`` are the distinct keys (``width`` bytes each) grouped by ``shard``,
        ``index`` each row's key, ``writes`` the rows that write (in row order), ``write_args(rows)``
        their arguments past the key indices.

        Only the keys some row writes go to the script, which reads and writes them atomically (two
        workers shipping one case, two guides selling one unit).  The others, almost every key of a
        batch, are read with plain HMGETs, one per shard hash: the script's read of a key it does not
        write answers what a read at that moment answers, and Redis spent about 1.7 µs of CPU a scan
        on the script's per-key Lua work (``bench_state_calls``) where a plain read costs a fraction."""
        blob = np.ascontiguousarray(uniq).view(np.uint8).reshape(-1, width)
        before: list[bytes] = [b""] * len(shard)
        written = np.zeros(len(shard), bool)
        written[index[writes]] = True
        self._read_fields(name, blob, shard, np.nonzero(~written)[0], before)
        keys = np.nonzero(written)[0]  # still grouped by shard
        if not len(keys):
            return before
        local = np.full(len(shard), -1, np.int64)
        local[keys] = np.arange(len(keys))
        write_key = local[index[writes]]

        def call(units: np.ndarray) -> tuple[list, list]:
            lo, hi = int(units[0]), int(units[-1]) + 1  # a shard's keys are contiguous
            mine = writes[(write_key >= lo) & (write_key < hi)]
            return [shard_key(name, int(shard[keys[lo]]))], [
                name, hi - lo, blob[keys[lo:hi]].tobytes(), shard[keys[lo:hi]].tobytes(), len(mine),
                (local[index[mine]] - lo).astype("<u4").tobytes(), *write_args(mine)]

        for units, (value_lens, values) in self._sharded(script, shard[keys], call):
            ends = np.cumsum(np.frombuffer(value_lens, "<u4").astype(np.int64)).tolist()
            for u, a, b in zip(units.tolist(), [0] + ends[:-1], ends):
                before[int(keys[u])] = values[a:b]
        return before

    def _read_fields(self, name: bytes, blob: np.ndarray, shard: np.ndarray, which: np.ndarray,
                     out: list[bytes]) -> None:
        """``out[i]`` = the field ``blob[i]`` of the shard hash ``name{shard[i]}`` (left as it is
        when absent), for the keys ``which`` (grouped by shard): one HMGET per shard hash."""
        if not len(which):
            return
        runs = np.split(which, np.nonzero(np.diff(shard[which]))[0] + 1)
        keys = [shard_key(name, int(shard[run[0]])) for run in runs]
        for i, v in self._found(keys, runs, [[row.tobytes() for row in blob[run]] for run in runs]):
            out[i] = v

    def guides(self, code: np.ndarray, serial: np.ndarray, guide: np.ndarray) -> np.ndarray:
        if not len(code):
            return np.zeros(0, dtype=object)
        # distinct units grouped by shard, so the script reads each shard's hash with one HMGET
        uniq, shard, index = _by_bucket(unit_identities(code, serial), key_shards(fold(code, serial)))
        guide = np.asarray(guide, dtype=object)
        raw = self._keyed(self._guides, self._pre + b"gd:", uniq, uniq.dtype.itemsize, shard, index,
                          np.nonzero(guide != "")[0], lambda rows: [_pack_texts(guide[rows])])
        return resolve_guides(index, [v.decode("utf-8", "surrogatepass") for v in raw], guide)[0]

    # -- bindings --------------------------------------------------------------------------

    def bind(self, keys: np.ndarray, ts: np.ndarray, dealer: np.ndarray) -> Bindings:
        if not len(keys):
            return Bindings(np.zeros(0, dtype=object), np.zeros(0, np.int64))
        keys = np.asarray(keys, np.uint64)
        ts, dealer = np.asarray(ts, np.int64), np.asarray(dealer, dtype=object)
        # distinct keys grouped by shard, so the script reads each shard's hash with one HMGET
        uniq, shard, index = _by_bucket(keys, key_shards(keys))
        raw = self._keyed(self._bind, self._pre + b"bn:", uniq.astype("<u8"), 8, shard, index,
                          np.nonzero(dealer != "")[0],
                          lambda rows: [ts[rows].astype("<i8").tobytes(), _pack_texts(dealer[rows]), BINDING_HISTORY])
        before = {k: _history(v) for k, v in zip(uniq.tolist(), raw) if v}
        return resolve_bindings(keys, before, ts, dealer)[0]

    # -- windows ---------------------------------------------------------------------------

    def _window(self, script, keys: np.ndarray, ttl_s: int, *extra: np.ndarray) -> list[tuple[np.ndarray, Any]]:
        """Run a window script over ``keys`` (and per-row ``extra`` columns, packed), by shard."""
        keys = np.asarray(keys, np.uint64)
        shards = key_shards(keys)
        name = self._pre + b"w:"

        def call(rows: np.ndarray) -> tuple[list, list]:
            return [shard_key(name, int(shards[rows[0]]))], [
                name, max(int(ttl_s), 1), _keys_blob(keys[rows]), *(e[rows].tobytes() for e in extra)]

        return self._sharded(script, shards, call)

    def count(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        out = np.zeros(len(keys), np.int64)
        if len(keys):
            for rows, reply in self._window(self._count, keys, ttl_s):
                out[rows] = np.frombuffer(reply, "<i8")
        return out

    def distinct(self, keys: np.ndarray, members: np.ndarray, ttl_s: int, new: np.ndarray | None = None,
                 present: np.ndarray | None = None, groups: np.ndarray | None = None) -> np.ndarray:
        """Kept in this process per code group and logged to Redis (``engine.state.set_log``)."""
        return self._sets.distinct(np.asarray(keys, np.uint64), members, ttl_s, new, present, groups)

    def mark_once(self, keys: np.ndarray, ttl_s: int) -> np.ndarray:
        out = np.zeros(len(keys), bool)
        if len(keys):
            for rows, reply in self._window(self._mark_once, keys, ttl_s):
                out[rows] = np.frombuffer(reply, np.uint8) == 1
        return out

    def block(self, keys: np.ndarray, ttl_s: int) -> None:
        if len(keys):
            args = [max(int(ttl_s), 1) * 1000, _keys_blob(keys)]
            self._call(lambda: self._block(keys=[self._pre + b"bl"], args=args))

    def blocked(self, keys: np.ndarray) -> np.ndarray:
        if not len(keys):
            return np.zeros(0, bool)
        out = self._call(lambda: self._blocked(keys=[self._pre + b"bl"], args=[_keys_blob(keys)]))
        return np.frombuffer(out, np.uint8) == 1 if out else np.zeros(len(keys), bool)

    # -- durability ------------------------------------------------------------------------

    def durable(self) -> None:
        """Wait until ``wait_replicas`` replicas of every primary hold the writes so far (``WAIT``).

        WAIT counts what the replicas acknowledged of the writes of its own connection, so on each
        primary one connection writes a mark (``P sync``, in a slot of that primary) and waits.
        A primary's replication is one ordered stream: replicas that hold the mark hold every
        write that primary took before it, whichever connection made it.  Fewer in time raises
        ``StateUnavailable``: the batch is not answered, and a failover meanwhile cannot have
        told anyone an outcome whose claim or prize it lost."""
        if not self.wait_replicas:
            return
        for name, node, key in self._primaries():
            def wait(node=node, key=key) -> list:
                pipe = node.pipeline(transaction=False)
                pipe.set(key, b"1")
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                return pipe.execute()
            _, acked = self._call(wait)
            if int(acked) < self.wait_replicas:
                raise StateUnavailable(
                    f"Redis state store {self.url}: {int(acked)} of {self.wait_replicas} replicas of primary {name} "
                    f"acknowledged the batch's writes within {self.wait_timeout_ms} ms ([redis] wait_replicas, "
                    f"wait_timeout_ms); its outcomes are held and it is taken again")

    def _primaries(self) -> list[tuple[str, Any, bytes]]:
        """(name, client, key of a slot it serves) of every primary: the one server, or each
        primary of the Cluster as its slot map says now (a failover moves slots)."""
        key = self._pre + b"sync"
        if not self.cluster:
            return [(self.url, self.client, key)]
        out = []
        for node in self._call(self.client.get_primaries):
            for tag in _SYNC_TAGS:
                tagged = b"%b{%b}" % (key, tag)
                if self.client.get_node_from_key(tagged).name == node.name:
                    out.append((node.name, node.redis_connection, tagged))
                    break
            else:
                raise StateUnavailable(f"Redis state store {self.url}: no key of {len(_SYNC_TAGS)} tags falls in a "
                                       f"slot of primary {node.name}")
        return out

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


def _grants(out: np.ndarray) -> Grants:
    """``Grants`` of the script's rows (``_GRANT_DTYPE``)."""
    return Grants(out["status"].astype(np.uint8), out["tier"].astype(np.int16), out["cents"].astype(np.int64),
                  out["commission"].astype(np.int64))


def _by_bucket(keys: np.ndarray, bucket: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``keys`` ordered by their bucket (``bucket`` per row, the same for equal keys),
    each one's bucket as uint8, and each row's index into them."""
    uniq, first, index = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(bucket[first], kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return uniq[order], np.asarray(bucket)[first][order].astype(np.uint8), rank[index.reshape(-1)]


def _history(raw: bytes) -> History:
    """A binding history as ``BIND_LUA`` stores it: (int64 ts, uint16 length, dealer id) entries."""
    out, pos = [], 0
    while pos < len(raw):
        ts, length = int.from_bytes(raw[pos:pos + 8], "little", signed=True), int.from_bytes(raw[pos + 8:pos + 10],
                                                                                             "little")
        out.append((ts, raw[pos + 10:pos + 10 + length].decode("utf-8", "surrogatepass")))
        pos += 10 + length
    return tuple(out)


def _describe(client: redis_py.Redis | redis_py.RedisCluster) -> str:
    """The server a client talks to, as a URL without its password (for messages)."""
    if isinstance(client, redis_py.RedisCluster):
        node = client.get_default_node()
        return f"redis://{node.host}:{node.port} (cluster)"
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
