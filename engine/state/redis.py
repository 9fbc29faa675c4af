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
    P cp:{<id>}             hash    budget, prizes, commissions, cap, tiers, s0 .. s<tiers-1> (stock left)
    P cp:{<id>}:aw          hash    12-byte code identity (uint64 batch key, uint32 serial, LE)
                                    -> "tier:cents:commission", kept for ever: one prize per
                                    code, ever, and the guide's commission paid with it
    P cp:{<id>}:ud:<day>    hash    user_id -> prizes paid that day (at most one entry per
                                    prize paid, so no expiry is needed to bound it)
    P bn:<bucket>           hash    outbound bindings (物流防窜): 8-byte key of a case or unit ->
                                    its history (``redis_lua.BIND_LUA``), kept for ever; one
                                    field per case shipped, whatever the case holds
    P gd:<bucket>           hash    guides (超级导购码): 12-byte unit identity -> the user_id of the
                                    first guide who sold it (``redis_lua.GUIDES_LUA``), kept for ever
    P campaigns             set     campaign ids, for error messages and operators
    P meta                  hash    the local driver's checkpoint (JSON values), see ``checkpoint``
    P bl                    zset    the block list: 8-byte keys scored by their expiry (ms)
    P w:<8 bytes>           windowed state under a uint64 key, EX ttl from its creation:
                                    a counter (count) or a mark (mark_once)
    P wd:<epoch>:<bucket>   hash    distinct sets of one bucket (key's first byte % BUCKETS), made in
                                    epoch ``now // ttl``: 8-byte key -> packed 8-byte members
                                    (or "" once they moved to ``P ws:<key>``, a set); expires
                                    at the end of the next epoch
    P reply:<scan_id>       list    a scan's outcome for the scan API (``streams/replies.py``,
                                    written by the worker under the same prefix), EX reply TTL

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
    bucket hashes per epoch of their TTL (see ``redis_lua.DISTINCT_LUA``): between one and two TTLs.

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

from scanstream.engine.audiences import AUDIENCE_SHIFT
from scanstream.engine.state import (BINDING_HISTORY, Bindings, CampaignLimits, CampaignState, Claims, DrawStatus, Grants,
                                     GrantRequests, History, StateStore, StateUnavailable, fold, resolve_bindings,
                                     resolve_guides, state_keys, unit_identities)
from scanstream.engine.state.redis_lua import (
    BIND_LUA, BLOCKED_LUA, BLOCK_LUA, CLAIM_LUA, COUNT_LUA, DEFINE_LUA, DISTINCT_LUA, GRANT_LUA, GUIDES_LUA,
    MARK_ONCE_LUA)
from scanstream.engine.urls import redact_url
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
#: Server replies that mean "not now" rather than "wrong": another script running too long, a
#: replica without its primary.
_TRANSIENT = ("BUSY", "MASTERDOWN", "LOADING", "TRYAGAIN")
_REPLAY_FLAG = 0x80  # claim answers: verdict | flag when the scan_id was claimed before
_GRANT_DTYPE = np.dtype([("status", "u1"), ("tier", "<i2"), ("cents", "<i8"), ("commission", "<i8")])  # 19 bytes


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
        self.url = redact_url(url) if url else _describe(client)
        self._pre = prefix.encode("utf-8")
        self._campaign_ids: list[str] = []
        self._claim = client.register_script(CLAIM_LUA)
        self._define = client.register_script(DEFINE_LUA)
        self._grant = client.register_script(GRANT_LUA)
        self._count = client.register_script(COUNT_LUA)
        self._distinct = client.register_script(DISTINCT_LUA)
        self._mark_once = client.register_script(MARK_ONCE_LUA)
        self._block = client.register_script(BLOCK_LUA)
        self._blocked = client.register_script(BLOCKED_LUA)
        self._bind = client.register_script(BIND_LUA)
        self._guides = client.register_script(GUIDES_LUA)
        # load them now: a wrong URL or a server without Lua fails at start, not mid-stream
        scripts = (self._claim, self._define, self._grant, self._count, self._distinct, self._mark_once,
                   self._block, self._blocked, self._bind, self._guides)
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
            raise ValueError(f"Redis URL {redact_url(url)!r}: {exc}") from None
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
        """Key of a dedup chunk; ``code`` is ``audiences.claim_keys``: the batch key
        (tenant, kind, batch) and the audience above it.  Consumers' keys (audience 0) are named
        as before audiences existed, ``dd:{tenant:kind:batch:chunk}``; the others ``ddN:``."""
        audience = code >> AUDIENCE_SHIFT
        return b"%bdd%b:{%d:%d:%d:%d}" % (self._pre, b"%d" % audience if audience else b"", (code >> 26) & 0xFFFF,
                                          (code >> 24) & 3, code & 0xFFFFFF, chunk)

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
        keys = self.keys(b"dd*:{*")
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
            return Grants(np.zeros(0, np.uint8), np.zeros(0, np.int16), np.zeros(0, np.int64), np.zeros(0, np.int64))
        used, index = np.unique(np.asarray(requests.campaign, np.int64), return_inverse=True)
        ids = [self._campaign_ids[c] for c in used.tolist()]
        identity = unit_identities(requests.code, requests.serial)
        lens, blob = _pack_strings(np.asarray(requests.user, dtype=object))
        guide_lens, guides = _pack_strings(np.asarray(requests.guide, dtype=object))
        args = [self._pre, n, len(ids), index.astype("<u4").tobytes(), identity.tobytes(), lens, blob,
                np.asarray(requests.day).astype("<i8").tobytes(), np.asarray(requests.tier).astype("<i2").tobytes(),
                np.asarray(requests.cents).astype("<i8").tobytes(), guide_lens, guides,
                np.asarray(requests.commission).astype("<i8").tobytes(),
                int(DrawStatus.WON), int(DrawStatus.NO_PRIZE), int(DrawStatus.OUT_OF_STOCK), int(DrawStatus.BUDGET),
                int(DrawStatus.CAP), *ids]
        out = np.frombuffer(self._call(lambda: self._grant(args=args)), _GRANT_DTYPE)
        return Grants(out["status"].astype(np.uint8), out["tier"].astype(np.int16), out["cents"].astype(np.int64),
                      out["commission"].astype(np.int64))

    def campaign_state(self, campaign: str) -> CampaignState:
        key = b"%bcp:{%b}" % (self._pre, campaign.encode("utf-8"))
        raw = self._call(lambda: self.client.hgetall(key))
        if not raw:
            defined = self._call(lambda: self.client.smembers(self._pre + b"campaigns"))
            raise KeyError(f"campaign {campaign!r} is not defined; defined: {sorted(d.decode() for d in defined)}")
        h = {k.decode(): int(v) for k, v in raw.items()}
        return CampaignState(h["budget"], tuple(h[f"s{t}"] for t in range(h["tiers"])), h["prizes"],
                             h.get("commissions", 0))

    # -- guides ----------------------------------------------------------------------------

    def guides(self, code: np.ndarray, serial: np.ndarray, guide: np.ndarray) -> np.ndarray:
        n = len(code)
        if not n:
            return np.zeros(0, dtype=object)
        # distinct units grouped by bucket, so the script reads each bucket with one HMGET
        uniq, bucket, index = _by_bucket(unit_identities(code, serial),
                                         fold(code, serial) & np.uint64(BUCKETS - 1))
        guide = np.asarray(guide, dtype=object)
        sales = np.nonzero(guide != "")[0]
        lens, blob = _pack_strings(guide[sales])
        args = [self._pre + b"gd:", len(uniq), uniq.tobytes(), bucket.tobytes(), len(sales),
                index[sales].astype("<u4").tobytes(), lens, blob]
        value_lens, values = self._call(lambda: self._guides(args=args))
        ends = np.cumsum(np.frombuffer(value_lens, "<u4").astype(np.int64)).tolist()
        before = [values[a:b].decode("utf-8", "surrogatepass") for a, b in zip([0] + ends[:-1], ends)]
        return resolve_guides(index, before, guide)[0]

    # -- bindings --------------------------------------------------------------------------

    def bind(self, keys: np.ndarray, ts: np.ndarray, dealer: np.ndarray) -> Bindings:
        n = len(keys)
        if not n:
            return Bindings(np.zeros(0, dtype=object), np.zeros(0, np.int64))
        keys = np.asarray(keys, np.uint64)
        # distinct keys grouped by bucket, so the script reads each bucket with one HMGET
        uniq, bucket, index = _by_bucket(keys, keys & np.uint64(BUCKETS - 1))
        writes = np.nonzero(np.asarray(dealer, dtype=object) != "")[0]
        lens, blob = _pack_strings(np.asarray(dealer, dtype=object)[writes])
        args = [self._pre + b"bn:", len(uniq), _keys_blob(uniq), bucket.tobytes(), len(writes), index[writes].astype("<u4").tobytes(),
                np.asarray(ts, np.int64)[writes].astype("<i8").tobytes(), lens, blob, BINDING_HISTORY]
        value_lens, values = self._call(lambda: self._bind(args=args))
        ends = np.cumsum(np.frombuffer(value_lens, "<u4").astype(np.int64)).tolist()
        before = {k: _history(values[a:b]) for k, a, b in zip(uniq.tolist(), [0] + ends[:-1], ends) if b > a}
        return resolve_bindings(keys, before, np.asarray(ts, np.int64), np.asarray(dealer, dtype=object))[0]

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


def _describe(client: redis_py.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
