"""Rate-limit storage: the `RateLimitStore` protocol, its value types and the window arithmetic.

The window
----------
Every counter (a `Limit.key`, e.g. ``acct:<id>:rpm`` or ``acct:<id>:tpm``) keeps one count per unix
second ("bucket") and a *stamp*: the newest second any admission was counted in. A request whose
clock reads second ``t`` is stamped ``r = max(t, stamp)`` (so stamps never go backwards, and a node
whose clock runs behind counts in the newest second instead of the past; the in-process store,
with one clock, stamps ``t`` and counts any bucket newer than ``t`` as well, to the same effect),
and is admitted for a counter iff

    sum(counts of the seconds r-59 .. r) + cost <= limit

and on admission ``cost`` is added to bucket ``r``. The stores keep that sum as a running total:
each call first drops the buckets that left the window since the last stamp (subtracting them from
the total), then compares the total. Dropping is done once per bucket, so an admission costs a
bounded amount of work whatever the counter's history (the Redis store's commands per admission
are listed in redis_store.py); nothing is ever read "all the window" except to answer a refusal's
``Retry-After``.

Why this is exact: take any 60-second window aligned to seconds, ``[w, w+59]``, and among the
admissions stamped inside it the one that was *executed* last (admissions are serialized: one Lua
script at a time on the Redis key's node, no await inside the in-process check). Its stamp ``r`` is
at least ``w``, and no bucket newer than ``r`` existed when it ran (stamps never go backwards, and
every counter of one call is stamped alike). So its check counted every bucket from ``r-59 <= w`` to
``r``, i.e. everything stamped in the window, and required that sum, including itself, to be at most
the limit. So no window aligned to whole seconds ever admits more than the limit, on one node or
many. (A window that starts mid-second overlaps 61 buckets; the guarantee holds, like
``Retry-After``, to the second. Across nodes it holds within their clock skew: a node whose clock
runs ahead moves the stamp, and with it the window, forward early.) Upward true-ups (`adjust`
with a positive delta) are corrections after the fact and can push a window over; downward ones
cannot. An `adjust` for a second newer than the stamp (what a node admitted while Redis was away,
counted in when it is back, see fallback.py) moves the stamp to that second like an admission.

All-or-nothing: `admit` checks every limit first and consumes them only if all have room, as one
atomic step (one Lua script in Redis; no await between check and write in process). A refused
request therefore costs nothing. If the same key appears twice in one call, each of its limits must
hold for the *total* cost the call would add to it.

Derived values (what the HTTP layer turns into ``x-ratelimit-*`` and ``Retry-After`` headers):

- ``remaining = max(0, limit - used)``, where ``used`` includes this admission if admitted.
- ``reset_ms = (newest + 60) * 1000 - now_ms``: the time until the newest bucket leaves the window,
  i.e. until the counter is fully restored; 0 when nothing is counted. (The Redis store remembers the
  newest second anything was added to, so after a true-up emptied the newest bucket it may say a
  little later than the in-process store; never earlier.)
- ``retry_after_s`` (only on a limit that refused): the smallest ``s >= 1`` such that, once the
  buckets older than ``t+s-59`` have dropped out, ``used + cost <= limit`` (assuming nothing else is
  admitted meanwhile). Advancing the clock by ``s`` seconds admits the same request; by ``s - 1`` it
  does not. A cost larger than the limit can never fit; we then answer 60 (a full window), so a
  client that retries is told the truth again rather than given a tight loop.

Peek reports the same ``remaining``/``reset_ms`` without counting or refusing anything.

Window seconds come from the injected `Clock` (``clock.now()``), never from the Redis server, so tests
control time and every node decides with its own clock (nodes agree within their clock skew).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import quote

from core_service.clock import Clock

WINDOW_S = 60
# A cost that can never fit is told to wait one full window.
NEVER_FITS_RETRY_S = WINDOW_S

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Limit:
    key: str  # a counter, e.g. "acct:<id>:rpm", "acct:<id>:model:<name>:rpm", "dep:<name>:rpm"
    limit: int  # max admitted within any rolling 60 s window
    cost: (
        int  # what this request adds (1 for request counters, tokens for token counters); may be 0
    )

    def __post_init__(self) -> None:
        if self.limit < 0 or self.cost < 0:
            raise ValueError(
                f"limit and cost must be >= 0, got limit={self.limit} cost={self.cost}"
            )


@dataclass(frozen=True)
class LimitState:
    key: str
    limit: int
    remaining: int  # limit - used in the current window (after this admission if admitted), >= 0
    reset_ms: int  # ms until everything counted now has left the window; 0 if nothing is counted
    retry_after_s: int  # if this limit refused: whole seconds until `cost` would fit (>= 1); else 0


@dataclass(frozen=True)
class Decision:
    admitted: bool
    second: int  # the window second (unix seconds) this admission was counted in
    states: tuple[LimitState, ...]  # one per Limit, in order

    @property
    def retry_after_s(self) -> int:
        if self.admitted:
            return 0
        return max((state.retry_after_s for state in self.states), default=0)


class RateLimitStore(Protocol):
    async def admit(self, limits: Sequence[Limit]) -> Decision:
        """All-or-nothing and atomic: consume every limit's cost, or (if any refuses) nothing."""
        ...

    async def adjust(self, key: str, second: int, delta: int) -> None:
        """True-up: add `delta` to bucket `second` if it is still in the window; never below zero.
        A positive delta for a second newer than any admission counts like an admission then."""
        ...

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        """Read-only view of the limits (cost ignored)."""
        ...

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        """A token if fewer than `limit` live slots are held, else None; slots expire after ttl_s."""
        ...

    async def release_slot(self, key: str, token: str) -> None: ...

    async def close(self) -> None: ...


def rate_key(*parts: str) -> str:
    """A counter key from its parts, each escaped so that any model or deployment name (with ':',
    '/', spaces, '%', anything) yields a distinct key: ``rate_key("acct", id, "model", name, "rpm")``.
    """
    return ":".join([part if _PLAIN(part) else quote(part, safe="") for part in parts])


# What `quote(part, safe="")` leaves as it is: such parts (ids, most names) skip its machinery.
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def now_ms(clock: Clock) -> int:
    """Unix time in whole milliseconds, computed exactly (no float rounding at second boundaries)."""
    return (clock.now() - _EPOCH) // _MS


def window_floor(second: int) -> int:
    """The oldest bucket that still counts at `second`."""
    return second - WINDOW_S + 1


def reset_ms(newest: int | None, at_ms: int) -> int:
    """Time until bucket `newest` (the newest non-empty one) leaves the window."""
    if newest is None:
        return 0
    return max(0, (newest + WINDOW_S) * 1000 - at_ms)


def retry_after_s(
    buckets: Iterable[tuple[int, int]], second: int, excess: int, cost: int, limit: int
) -> int:
    """Seconds until `excess` (= used + cost - limit > 0) has dropped out of the window.

    `buckets` are (second, count) pairs in the window, oldest first. Bucket ``b`` stops counting at
    second ``b + 60``, i.e. after ``b + 60 - second`` seconds.
    """
    if cost > limit:
        return NEVER_FITS_RETRY_S
    freed = 0
    for bucket, count in buckets:
        freed += count
        if freed >= excess:
            return max(1, bucket + WINDOW_S - second)
    return NEVER_FITS_RETRY_S  # unreachable when the buckets hold `used`: a full window frees all


def limit_state(
    key: str,
    limit: int,
    *,
    used: int,
    newest: int | None,
    at_ms: int,
    refused_retry_s: int = 0,
) -> LimitState:
    return LimitState(
        key=key,
        limit=limit,
        remaining=max(0, limit - used),
        reset_ms=reset_ms(newest, at_ms),
        retry_after_s=refused_retry_s,
    )
