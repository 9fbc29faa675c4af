"""Rate limits of the HTTP scan gateway: token buckets in Redis, shared by every gateway process.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second; a request takes
one token from its client address's bucket, and its scans one each from their user_id's bucket.
The buckets live in Redis, not in the process, so several gateways behind a load balancer limit
together, and one Lua script checks and takes the tokens of a request's buckets atomically: all
of them or none (a refused batch costs its users nothing).  The clock is Redis' own (``TIME``),
the same for every gateway.

Keys: ``P rl:ip:<address>`` and ``P rl:user:<user_id>``, hashes of (tokens, ms), each expiring
once a full bucket would have refilled: an idle client costs nothing.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

#: KEYS: buckets.  ARGV: rate (tokens per second), burst, then per key the tokens to take.
#: Returns {0, 0} when every bucket had its tokens (taken), else {1, ms until the emptiest bucket
#: has enough}; nothing is taken then.
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
                 run: Callable[[list[Callable[[Any], Any]]], Awaitable[list[Any]]] | None = None):
        """``run``, when given, sends commands in a round trip shared with other requests (the
        gateway's ``RoundTrips.run``); else each check is a round trip of its own."""
        self.redis = redis
        self.prefix = prefix
        self.ip = (ip_rate, ip_burst)
        self.user = (user_rate, user_burst)
        self._take = redis.register_script(_TAKE_LUA)
        self._run = run

    async def _check(self, kind: str, counts: Counter, rate: float, burst: int) -> Verdict:
        if not rate or not counts:
            return Verdict(True)
        keys = [f"{self.prefix}rl:{kind}:{who}" for who in counts]
        args = [repr(rate), burst, *counts.values()]
        if self._run is None:
            refused, wait_ms = await self._take(keys=keys, args=args)
        else:
            def take(pipe) -> None:  # queued on the shared pipeline, which loads the script if Redis lacks it
                pipe.scripts.add(self._take)
                pipe.evalsha(self._take.sha, len(keys), *keys, *args)

            ((refused, wait_ms),) = await self._run([take])
        return Verdict(not refused, max(1, math.ceil(int(wait_ms) / 1000)) if refused else 0)

    async def client(self, address: str) -> Verdict:
        """One request from ``address``."""
        return await self._check("ip", Counter([address]), *self.ip)

    async def users(self, user_ids: list[str]) -> Verdict:
        """Scans of these users (one token per scan), all or none."""
        return await self._check("user", Counter(user_ids), *self.user)
