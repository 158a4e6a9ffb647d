"""`RedisRateLimitStore`: the rolling window of `store.py` shared by every node through Redis
(one server, or a Redis Cluster).

Layout (under `key_prefix`, default ``kyma:rl:``):

- ``<prefix>{<tag>}:w:<key>``: a hash per counter: ``l``, the newest second stamped (see store.py);
  the buckets as a ring, second ``s``'s count in field ``s % 60`` (which holds second ``s`` for
  every ``s`` in ``[l-59, l]``); ``n``, their running total; and ``w``, the newest second anything
  was added to (for ``reset_ms``; after a true-up emptied that bucket it says a little late). EXPIRE (95 s) is refreshed when
  ``l`` crosses a 30-second boundary; that is only garbage collection.
- ``<prefix>{<tag>}:s:<key>``: a sorted set of concurrency-slot tokens scored by their expiry.

`<key>` is the `Limit.key` percent-escaped (every byte except letters, digits, ``_.-~:``), so Redis
keys are printable, glob-free and in one-to-one correspondence with the counter keys; keys longer
than 200 characters are replaced by their SHA-256.

Redis Cluster: ``{<tag>}`` is a hash tag, so every key with one tag lives in one slot and one
script may touch them all. The tag of a counter key (`hash_tag`) is its first two ``:``-separated
parts when the first is ``acct`` or ``dep`` (``acct:<id>``: each account's counters together;
``dep:<deployment shard>``), else its first part (``signup``, ``verify``: low-traffic limits, each
family in one slot). Every key of one `admit` or `peek` must have the same tag (the limiter's calls
do: one account, or one deployment shard); with a single Redis server nothing depends on it.

Cost per call (the point of the running total and the ring): `admit` is one Lua script (EVALSHA)
that, per key, reads ``n``, ``l`` and the ring field of the current second (one HMGET: when the
second moved on by one, that field is exactly the bucket leaving the window, subtracted from
``n``), and on admission writes the bucket, ``n`` and ``l`` (one HSET). That is two commands per
counter whatever the account's traffic, plus EXPIRE twice a minute, plus one HMGET and one HDEL
after an idle gap of 2 to 59 seconds (a gap of 60 or more deletes the counter). A refusal
additionally reads the refusing key's 60 ring fields (one HMGET) to compute ``Retry-After``. That is a bounded
number of commands whatever the account's traffic; a refusal additionally reads the window's 60
buckets of the refusing key (one HMGET) to compute ``Retry-After``.

Time comes from the injected clock as script arguments, never from Redis ``TIME``: tests control it,
and each node decides with its own clock, so nodes agree to within their clock skew (keep NTP on).

The store owns the Redis client it is given: `close()` closes it (the composition root builds a
client for the store alone and closes the store at shutdown). `warm()` opens connections and loads
the scripts before the first request, so that a cold pool is not mistaken for a slow Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import redis.asyncio
import redis.asyncio.cluster

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

# Garbage collection only (see the module docstring): the window, plus the 30 s the TTL may go
# without a refresh, plus an allowance for clock skew.
_BUCKETS_TTL_S = WINDOW_S + 30 + 5
_MAX_KEY_CHARS = 200
_MAX_TAG_CHARS = 100
# Counter families whose second part (the account, the deployment shard) scopes the hash tag.
_SCOPED = frozenset({"acct", "dep"})

# Shared by the scripts. A counter's buckets are a ring: the count of second s is in field s % 60,
# which holds second s for every s in [l-59, l] (l: the stamp); `n` is their sum.
# `load(k, s)`: n, l (or nil) and the ring field of second s. `advance(k, n, l, t, at_t)` moves the
# stamp to t >= l: the fields of seconds l+1 .. t hold seconds that leave the window, so they are
# subtracted (`at_t`, the loaded field of t, is one of them) and emptied; returns the total in the
# window ending at t, whether the stamp moved, and the count of bucket t. `store` writes the total,
# the stamp and one bucket in one HSET (or deletes an empty counter), and refreshes the TTL when
# the stamp crosses a 30-second boundary (so at most twice a minute).
_PRELUDE = """
local function load(k, s)
  local v = redis.call('HMGET', k, 'n', 'l', s % 60, 'w')
  return tonumber(v[1]) or 0, tonumber(v[2]), tonumber(v[3]) or 0, tonumber(v[4]) or -1
end
local function advance(k, n, l, t, at_t)
  if not l then return 0, false, 0 end
  if t <= l then return n, false, at_t end
  if t - l >= 60 then
    redis.call('DEL', k)
    return 0, true, 0
  end
  n = n - at_t
  if t - l > 1 then
    local fields = {}
    for s = l + 1, t - 1 do fields[#fields + 1] = s % 60 end
    local counts = redis.call('HMGET', k, unpack(fields))
    for i = 1, #counts do
      if counts[i] then n = n - tonumber(counts[i]) end
    end
    redis.call('HDEL', k, unpack(fields))
  end
  return n, true, 0
end
local function store(k, n, l, t, s, bucket, ttl, w)
  if n > 0 then
    if w then
      redis.call('HSET', k, 'n', n, 'l', t, s % 60, bucket, 'w', w)
    else
      redis.call('HSET', k, 'n', n, 'l', t, s % 60, bucket)
    end
    if not l or math.floor(t / 30) ~= math.floor(l / 30) then redis.call('EXPIRE', k, ttl) end
  elseif l then
    redis.call('DEL', k)
  end
end
local function window(k, t)
  local fields = {}
  for s = t - 59, t do fields[#fields + 1] = s % 60 end
  local counts = redis.call('HMGET', k, unpack(fields))
  for i = 1, #counts do counts[i] = tonumber(counts[i]) or 0 end
  return counts
end
"""

# KEYS: one hash per distinct counter. ARGV: second, ttl, one total cost per key, then
# (key index, limit) per limit. The call is stamped t = max(second, every key's l).
# Returns {admitted, t, {used...}, {newest or -1...}, {window counts or {} per key}} where the
# window counts (t-59 .. t, only for a key some limit refused on) give Retry-After.
_ADMIT_LUA = (
    _PRELUDE
    + """
local t = tonumber(ARGV[1])
local nkeys = #KEYS
local ns, ls, at, ws = {}, {}, {}, {}
for i = 1, nkeys do
  ns[i], ls[i], at[i], ws[i] = load(KEYS[i], t)
  if ls[i] and ls[i] > t then t = ls[i] end
end
if t ~= tonumber(ARGV[1]) then
  -- This node's clock is behind the newest stamp: the bucket it adds to is the stamp's.
  for i = 1, nkeys do at[i] = tonumber(redis.call('HGET', KEYS[i], t % 60)) or 0 end
end
local used, moved, current, newest = {}, {}, {}, {}
for i = 1, nkeys do
  used[i], moved[i], current[i] = advance(KEYS[i], ns[i], ls[i], t, at[i])
end
local base = 2 + nkeys
local admitted = 1
local refusing = {}
for j = base + 1, #ARGV, 2 do
  local k = tonumber(ARGV[j])
  local cost, limit = tonumber(ARGV[2 + k]), tonumber(ARGV[j + 1])
  if used[k] + cost > limit then
    admitted = 0
    if cost <= limit then refusing[k] = true end
  end
end
local windows = {}
for i = 1, nkeys do
  local cost = tonumber(ARGV[2 + i])
  if admitted == 1 and cost > 0 then
    used[i] = used[i] + cost
    ws[i] = t
    store(KEYS[i], used[i], ls[i], t, t, current[i] + cost, ARGV[2], t)
  elseif moved[i] then
    store(KEYS[i], used[i], ls[i], t, t, 0, ARGV[2], nil)
  end
  if used[i] > 0 then newest[i] = ws[i] else newest[i] = -1 end
  if refusing[i] and used[i] > 0 then windows[i] = window(KEYS[i], t) else windows[i] = {} end
end
return {admitted, t, used, newest, windows}
"""
)

# KEYS[1]: the hash. ARGV: now (second), the bucket's second, delta, ttl. A bucket older than the
# window (by the caller's clock or the key's newest stamp) is left alone; a bucket newer than the
# key's newest stamp (a fallback admission counted in afterwards) moves the stamp forward.
_ADJUST_LUA = (
    _PRELUDE
    + """
local now, s, d = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if s < now - 59 then return 0 end
local n, l, at, w = load(KEYS[1], s)
if not l then
  if d <= 0 then return 0 end
elseif s < l - 59 then
  return 0
end
local t = l
if not l or s > l then t = s end
local moved, current
n, moved, current = advance(KEYS[1], n, l, t, at)
local new = math.max(0, current + d)
if new == current and not moved then return 0 end
if new > current and s > w then w = s else w = nil end
store(KEYS[1], n + new - current, l, t, s, new, ARGV[4], w)
return 1
"""
)

# KEYS: the hashes. ARGV: second. Read-only: {used...}, {newest or -1...}.
_PEEK_LUA = """
local t = tonumber(ARGV[1])
local used, newest = {}, {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'n', 'l', 'w')
  local n, l, w = tonumber(v[1]) or 0, tonumber(v[2]), tonumber(v[3]) or -1
  if l and t > l then
    if t - l >= 60 then
      n = 0
    else
      local stale = {}
      for s = l + 1, t do stale[#stale + 1] = s % 60 end
      local counts = redis.call('HMGET', KEYS[i], unpack(stale))
      for j = 1, #counts do
        if counts[j] then n = n - tonumber(counts[j]) end
      end
    end
  end
  used[i] = n
  if n > 0 then newest[i] = w else newest[i] = -1 end
end
return {used, newest}
"""

# KEYS[1]: the sorted set. ARGV: now, expiry, limit, token, ttl in ms (garbage collection).
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1
"""

RedisClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def hash_tag(key: str) -> str:
    """The Cluster hash tag of a counter key (see the module docstring), escaped: no braces."""
    parts = key.split(":")
    tag = ":".join(parts[:2]) if parts[0] in _SCOPED else parts[0]
    escaped = quote(tag, safe=":")
    if len(escaped) > _MAX_TAG_CHARS:
        return "h:" + hashlib.sha256(tag.encode()).hexdigest()
    return escaped


def _escape(key: str) -> str:
    escaped = quote(key, safe=":")
    if len(escaped) > _MAX_KEY_CHARS:
        return "h:" + hashlib.sha256(key.encode()).hexdigest()
    return escaped


class RedisRateLimitStore:
    def __init__(self, redis: RedisClient, clock: Clock, *, key_prefix: str = "kyma:rl:") -> None:
        self._redis = redis
        self._clock = clock
        self._prefix = key_prefix
        self._admit = redis.register_script(_ADMIT_LUA)
        self._adjust = redis.register_script(_ADJUST_LUA)
        self._peek = redis.register_script(_PEEK_LUA)
        self._acquire = redis.register_script(_ACQUIRE_LUA)

    def window_key(self, key: str) -> str:
        """The Redis key of a counter (for tests and tools)."""
        return f"{self._prefix}{{{hash_tag(key)}}}:w:{_escape(key)}"

    def slots_key(self, key: str) -> str:
        return f"{self._prefix}{{{hash_tag(key)}}}:s:{_escape(key)}"

    async def warm(self, connections: int) -> None:
        """Open `connections` connections (each PINGs) and load the scripts, so that the first
        requests find a warm pool. Raises what Redis raises (the caller decides)."""
        await asyncio.gather(*(self._redis.ping() for _ in range(max(1, connections))))
        for script in (self._admit, self._adjust, self._peek, self._acquire):
            await self._redis.script_load(script.script)

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
        reply = await self._admit(keys=[self.window_key(key) for key in index], args=args)
        admitted = bool(reply[0])
        stamp = int(reply[1])
        used = [int(value) for value in reply[2]]
        newest = [int(value) for value in reply[3]]
        states = []
        for limit in limits:
            i = index[limit.key]
            retry = 0
            excess = used[i] + totals[i] - limit.limit
            if not admitted and excess > 0:
                counts = [int(value) for value in reply[4][i]]
                buckets = zip(range(window_floor(stamp), stamp + 1), counts, strict=False)
                retry = retry_after_s(buckets, stamp, excess, totals[i], limit.limit)
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
        return Decision(admitted=admitted, second=stamp, states=tuple(states))

    async def adjust(self, key: str, second: int, delta: int) -> None:
        if not delta:
            return
        now = now_ms(self._clock) // 1000
        if second < window_floor(now):
            return
        await self._adjust(keys=[self.window_key(key)], args=[now, second, delta, _BUCKETS_TTL_S])

    async def adjust_many(self, deltas: Sequence[tuple[str, int, int]]) -> None:
        """Several `adjust`s, sent concurrently (each atomic; not atomic together)."""
        await asyncio.gather(*(self.adjust(key, second, delta) for key, second, delta in deltas))

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        at_ms = now_ms(self._clock)
        keys = list(dict.fromkeys(limit.key for limit in limits))
        if not keys:
            return ()
        reply = await self._peek(keys=[self.window_key(key) for key in keys], args=[at_ms // 1000])
        seen = {
            key: (int(used), int(newest))
            for key, used, newest in zip(keys, reply[0], reply[1], strict=True)
        }
        return tuple(
            limit_state(
                limit.key,
                limit.limit,
                used=seen[limit.key][0],
                newest=seen[limit.key][1] if seen[limit.key][1] >= 0 else None,
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
        acquired = await self._acquire(keys=[self.slots_key(key)], args=args)
        return token if acquired else None

    async def release_slot(self, key: str, token: str) -> None:
        await self._redis.zrem(self.slots_key(key), token)

    async def close(self) -> None:
        await self._redis.aclose()
