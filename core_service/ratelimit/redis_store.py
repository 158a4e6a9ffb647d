"""`RedisRateLimitStore`: the rolling window of `store.py` shared by every node through Redis.

Layout (under `key_prefix`, default ``kyma:rl:``):

- ``<prefix>w:<key>``: a hash, field = window second (decimal unix seconds), value = count. Each
  write sets EXPIRE to the window plus a few seconds of skew allowance; that is only garbage
  collection: the scripts prune fields older than the window themselves and never count them.
- ``<prefix>s:<key>``: a sorted set of concurrency-slot tokens scored by their expiry (unix seconds).

`<key>` is the `Limit.key` percent-escaped (every byte except letters, digits, ``_.-~:``), so Redis keys
are printable, glob-free and in one-to-one correspondence with the counter keys, whatever model or
deployment names they contain; keys longer than 200 characters are replaced by their SHA-256. (For
the counter keys themselves to be unambiguous, build them with `store.rate_key`.)

One round trip per call: `admit` is one Lua script (EVALSHA, loaded on demand by redis-py) that
prunes, checks every limit and, only if all have room, consumes them all, so it is atomic and
all-or-nothing across nodes. The script returns the counts and, on refusal, the window's buckets;
the remaining/reset/retry arithmetic is `store.py`'s, shared with the in-process store.

Time comes from the injected clock as script arguments, never from Redis ``TIME``: tests control it,
and each node decides with its own clock, so nodes agree to within their clock skew (keep NTP on).

With Redis Cluster every key of one `admit` must hash to one slot: put a hash tag in `key_prefix`
(e.g. ``kyma:rl:{rl}:``).

The store owns the Redis client it is given: `close()` closes it (the composition root builds a
client for the store alone and closes the store at shutdown).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import redis.asyncio

from core_service.clock import Clock
from core_service.ratelimit.store import (
    WINDOW_S,
    Decision,
    Limit,
    LimitState,
    limit_state,
    now_ms,
    retry_after_s,
    window_floor,
)

# Garbage collection only (see the module docstring): the window plus an allowance for clock skew.
_BUCKETS_TTL_S = WINDOW_S + 5
_MAX_KEY_CHARS = 200

# KEYS: one hash per distinct counter. ARGV: second, ttl, one total cost per key, then
# (key index, limit) per limit. Returns {admitted, {used...}, {newest or -1...}, {buckets...}}
# where buckets (only when refused) holds, per key, the window's {second, count, ...} oldest first.
_ADMIT_LUA = """
local t = tonumber(ARGV[1])
local floor = t - 59
local nkeys = #KEYS
local used, newest, lists = {}, {}, {}
for i = 1, nkeys do
  local flat = redis.call('HGETALL', KEYS[i])
  local list, stale, sum = {}, {}, 0
  for j = 1, #flat, 2 do
    local s, c = tonumber(flat[j]), tonumber(flat[j + 1])
    if s < floor then
      stale[#stale + 1] = flat[j]
    elseif c > 0 then
      list[#list + 1] = {s, c}
      sum = sum + c
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[i], unpack(stale)) end
  table.sort(list, function(a, b) return a[1] < b[1] end)
  used[i] = sum
  lists[i] = list
  if #list > 0 then newest[i] = list[#list][1] else newest[i] = -1 end
end
local base = 2 + nkeys
local admitted = 1
for j = base + 1, #ARGV, 2 do
  local k = tonumber(ARGV[j])
  if used[k] + tonumber(ARGV[2 + k]) > tonumber(ARGV[j + 1]) then admitted = 0 end
end
local buckets = {}
if admitted == 1 then
  for i = 1, nkeys do
    local cost = tonumber(ARGV[2 + i])
    if cost > 0 then
      redis.call('HINCRBY', KEYS[i], ARGV[1], ARGV[2 + i])
      redis.call('EXPIRE', KEYS[i], ARGV[2])
      used[i] = used[i] + cost
      if newest[i] < t then newest[i] = t end
    end
  end
else
  for i = 1, nkeys do
    local flat = {}
    for _, b in ipairs(lists[i]) do
      flat[#flat + 1] = b[1]
      flat[#flat + 1] = b[2]
    end
    buckets[i] = flat
  end
end
return {admitted, used, newest, buckets}
"""

# KEYS[1]: the hash. ARGV: oldest second still in the window, second, delta, ttl.
_ADJUST_LUA = """
if tonumber(ARGV[2]) < tonumber(ARGV[1]) then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
if current + tonumber(ARGV[3]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return 1
"""

# KEYS[1]: the sorted set. ARGV: now, expiry, limit, token, ttl in ms (garbage collection).
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1
"""


def _escape(key: str) -> str:
    escaped = quote(key, safe=":")
    if len(escaped) > _MAX_KEY_CHARS:
        return "h:" + hashlib.sha256(key.encode()).hexdigest()
    return escaped


class RedisRateLimitStore:
    def __init__(
        self, redis: redis.asyncio.Redis, clock: Clock, *, key_prefix: str = "kyma:rl:"
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._prefix = key_prefix
        self._admit = redis.register_script(_ADMIT_LUA)
        self._adjust = redis.register_script(_ADJUST_LUA)
        self._acquire = redis.register_script(_ACQUIRE_LUA)

    def _window_key(self, key: str) -> str:
        return f"{self._prefix}w:{_escape(key)}"

    def _slots_key(self, key: str) -> str:
        return f"{self._prefix}s:{_escape(key)}"

    async def admit(self, limits: Sequence[Limit]) -> Decision:
        at_ms = now_ms(self._clock)
        second = at_ms // 1000
        if not limits:
            return Decision(admitted=True, second=second, states=())
        index: dict[str, int] = {}
        totals: list[int] = []
        for limit in limits:
            if limit.key not in index:
                index[limit.key] = len(totals)
                totals.append(0)
            totals[index[limit.key]] += limit.cost
        args: list[Any] = [second, _BUCKETS_TTL_S, *totals]
        for limit in limits:
            args += [index[limit.key] + 1, limit.limit]
        reply = await self._admit(keys=[self._window_key(key) for key in index], args=args)
        admitted = bool(reply[0])
        used = [int(value) for value in reply[1]]
        newest = [int(value) for value in reply[2]]
        states = []
        for limit in limits:
            i = index[limit.key]
            retry = 0
            excess = used[i] + totals[i] - limit.limit
            if not admitted and excess > 0:
                flat = [int(value) for value in reply[3][i]]
                buckets = zip(flat[0::2], flat[1::2], strict=True)
                retry = retry_after_s(buckets, second, excess, totals[i], limit.limit)
            states.append(
                limit_state(
                    limit.key,
                    limit.limit,
                    used=used[i],
                    newest=newest[i] if newest[i] >= 0 else None,
                    at_ms=at_ms,
                    refused_retry_s=retry,
                )
            )
        return Decision(admitted=admitted, second=second, states=tuple(states))

    async def adjust(self, key: str, second: int, delta: int) -> None:
        if not delta:
            return
        floor = window_floor(now_ms(self._clock) // 1000)
        if second < floor:
            return
        await self._adjust(
            keys=[self._window_key(key)], args=[floor, second, delta, _BUCKETS_TTL_S]
        )

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        at_ms = now_ms(self._clock)
        floor = window_floor(at_ms // 1000)
        keys = list(dict.fromkeys(limit.key for limit in limits))
        if not keys:
            return ()
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(self._window_key(key))
            replies = await pipe.execute()
        seen: dict[str, tuple[int, int | None]] = {}
        for key, fields in zip(keys, replies, strict=True):
            counted = [
                (int(s), int(c)) for s, c in fields.items() if int(s) >= floor and int(c) > 0
            ]
            seen[key] = (sum(c for _, c in counted), max((s for s, _ in counted), default=None))
        return tuple(
            limit_state(
                limit.key,
                limit.limit,
                used=seen[limit.key][0],
                newest=seen[limit.key][1],
                at_ms=at_ms,
            )
            for limit in limits
        )

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        at_ms = now_ms(self._clock)
        token = secrets.token_urlsafe(12)
        ttl_ms = max(1, round(ttl_s * 1000))
        args: list[str | int] = [
            repr(at_ms / 1000),
            repr((at_ms + ttl_ms) / 1000),
            limit,
            token,
            ttl_ms,
        ]
        acquired = await self._acquire(keys=[self._slots_key(key)], args=args)
        return token if acquired else None

    async def release_slot(self, key: str, token: str) -> None:
        await self._redis.zrem(self._slots_key(key), token)

    async def close(self) -> None:
        await self._redis.aclose()
