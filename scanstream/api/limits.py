"""Rate limits of the HTTP scan gateway: token buckets in Redis, shared by every gateway process.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second; a request takes
one token from its client address's bucket, and its scans one each from their user_id's bucket.
The buckets live in Redis, not in the process, so several gateways behind a load balancer limit
together, and one Lua script checks and takes the tokens of a request's buckets atomically: all
of them or none (a refused batch costs its users nothing).  The clock is Redis' own (``TIME``),
the same for every gateway.

Keys: ``P rl:{t}ip:<address>`` and ``P rl:{t}user:<user_id>``, hashes of (tokens, ms), each
expiring once a full bucket would have refilled: an idle client costs nothing.  ``{t}`` is the tag
of the state shard of the address or user_id (``engine.state.redis_lua.SHARD_TAGS``), so that on
a Redis Cluster a script touches one slot.  There the buckets of one request in several shards
are taken one shard at a time, and when a shard refuses, the tokens already taken in the others
are given back (the same script with negative counts): all or none still, though a request
checked meanwhile may see those tokens gone for a moment.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from scanstream.engine.state.redis_lua import SHARD_TAGS
from scanstream.streams.replies import reply_shards

#: KEYS: buckets.  ARGV: rate (tokens per second), burst, then per key the tokens to take (a
#: negative count gives tokens back, up to the burst).  Returns {0, 0} when every bucket had its
#: tokens (taken), else {1, ms until the emptiest bucket has enough}; nothing is taken then.
_TAKE_LUA = r"""
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left, wait = {}, 0
for i, key in ipairs(KEYS) do
  local h = redis.call('HMGET', key, 'tokens', 'ms')
  local tokens = tonumber(h[1]) or burst
  local since = tonumber(h[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - since) * rate / 1000)
  local cost = tonumber(ARGV[2 + i])
  if tokens < cost then
    wait = math.max(wait, math.ceil((cost - tokens) * 1000 / rate))
  end
  left[i] = tokens - cost
end
if wait > 0 then return {1, wait} end
local ttl = math.ceil(burst * 1000 / rate) + 1000
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'tokens', tostring(left[i]), 'ms', now)
  redis.call('PEXPIRE', key, ttl)
end
return {0, 0}
"""


@dataclass(frozen=True)
class Verdict:
    """What a limit said: allowed, or refused with the seconds to wait before asking again."""

    allowed: bool
    retry_after_s: int = 0


class RateLimits:
    """The gateway's limits per client address and per user_id (``[api]`` ip_* and user_*)."""

    def __init__(self, redis, prefix: str, ip_rate: float, ip_burst: int, user_rate: float, user_burst: int,
                 run: Callable[[list[Callable[[Any], Any]]], Awaitable[list[Any]]] | None = None,
                 cluster: bool = False):
        """``run``, when given, sends commands in a round trip shared with other requests (the
        gateway's ``replies.RoundTrips.run``); else each check is a round trip of its own.  ``cluster``:
        ``redis`` is a Redis Cluster client (a take per shard, see the module's docstring)."""
        self.redis = redis
        self.prefix = prefix
        self.ip = (ip_rate, ip_burst)
        self.user = (user_rate, user_burst)
        self._take = redis.register_script(_TAKE_LUA)
        self._run = run
        self.cluster = cluster

    def key(self, kind: str, who: str) -> str:
        """The bucket of ``who`` (an address or a user_id), in the state shard of ``who``."""
        return f"{self.prefix}rl:{{{SHARD_TAGS[int(reply_shards([who])[0])]}}}{kind}:{who}"

    async def _take_one(self, keys: list[str], args: list) -> tuple[int, int]:
        if self._run is None:
            refused, wait_ms = await self._take(keys=keys, args=args)
        else:
            def take(pipe) -> None:  # queued on the shared pipeline, which loads the script if Redis lacks it
                pipe.scripts.add(self._take)
                pipe.evalsha(self._take.sha, len(keys), *keys, *args)

            ((refused, wait_ms),) = await self._run([take])
        return int(refused), int(wait_ms)

    async def _check(self, kind: str, counts: Counter, rate: float, burst: int) -> Verdict:
        if not rate or not counts:
            return Verdict(True)
        whos = list(counts)
        if not self.cluster:
            groups = [whos]
        else:  # one take per shard; a refusal gives back what the shards before it took
            by_shard: dict[int, list[str]] = {}
            for who, shard in zip(whos, reply_shards(whos).tolist()):
                by_shard.setdefault(shard, []).append(who)
            groups = list(by_shard.values())
        taken: list[list[str]] = []
        for group in groups:
            keys = [self.key(kind, who) for who in group]
            refused, wait_ms = await self._take_one(keys, [repr(rate), burst, *(counts[w] for w in group)])
            if refused:
                for back in taken:
                    await self._take_one([self.key(kind, who) for who in back],
                                         [repr(rate), burst, *(-counts[w] for w in back)])
                return Verdict(False, max(1, math.ceil(wait_ms / 1000)))
            taken.append(group)
        return Verdict(True)

    async def client(self, address: str) -> Verdict:
        """One request from ``address``."""
        return await self._check("ip", Counter([address]), *self.ip)

    async def users(self, user_ids: list[str]) -> Verdict:
        """Scans of these users (one token per scan), all or none."""
        return await self._check("user", Counter(user_ids), *self.user)
