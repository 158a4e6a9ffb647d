"""Authenticating API keys on the request path.

A malformed key (wrong shape or checksum) is refused without any lookup. A well-formed key is
looked up by its SHA-256 hash; the answer, found or not, is trusted for `cache_seconds` on this
node, which keeps the database off the hot path and bounds how late a revocation or suspension
is seen. Concurrent first requests with one key share a single lookup.

Only hashes are ever compared (by the database index, or as cache keys), so the time a check
takes says nothing about how much of a secret key a guess got right.
"""

from __future__ import annotations

import asyncio

from core_service import keys
from core_service.accounts.store import AccountStore, KeyOwner
from core_service.clock import Clock
from core_service.errors import NotFound, Unauthenticated
from core_service.ratelimit.tiers import TierTable
from core_service.tasks import BackgroundTasks
from core_service.values import Principal

_MAX_CACHED_KEYS = 100_000


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Send the API key as 'Authorization: Bearer YOUR_KEY'.")
    return token.strip()


class Authenticator:
    def __init__(
        self,
        store: AccountStore,
        clock: Clock,
        tiers: TierTable,
        *,
        cache_seconds: float,
        tasks: BackgroundTasks | None = None,
    ) -> None:
        self._store = store
        self._tiers = tiers
        self._tasks = tasks
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, KeyOwner | None]] = {}
        self._pending: dict[bytes, asyncio.Future[KeyOwner | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if not keys.is_well_formed(token):
            raise Unauthenticated("Incorrect API key provided. Check it, or create a new one.")
        key_hash = keys.hash_key(token)
        owner = await self._lookup(key_hash)
        if owner is None or owner.revoked:
            raise Unauthenticated("Incorrect API key provided. Check it, or create a new one.")
        return self.principal_for(owner)

    def principal_for(self, owner: KeyOwner) -> Principal:
        return Principal(
            account_id=owner.account_id,
            key_id=owner.key_id,
            account_status=owner.account_status,
            tier=self._tiers.effective(owner.total_purchased_nanos, owner.pinned_tier),
            pinned=owner.pinned_tier is not None,
            status_reason=owner.status_reason,
            suspended_until=owner.suspended_until,
        )

    async def principal_for_account(self, account_id: str) -> Principal:
        """The account as its keys' requests see it (for admin views of its tier and limits)."""
        owner = await self._store.account_owner(account_id)
        if owner is None:
            raise NotFound(f"No account {account_id}.", param="account_id")
        return self.principal_for(owner)

    def forget(self, key_hash: bytes) -> None:
        """Drop this node's cached answer (e.g. right after revoking on this node)."""
        self._cache.pop(key_hash, None)

    async def _lookup(self, key_hash: bytes) -> KeyOwner | None:
        now = self._clock.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyOwner | None] = asyncio.get_running_loop().create_future()
        self._pending[key_hash] = future
        try:
            owner = await self._store.find_key_owner(key_hash)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # waiters re-raise it; this marks it retrieved
            raise
        finally:
            self._pending.pop(key_hash, None)
        if owner is not None and not owner.revoked and self._tasks is not None:
            # A lookup happens on first use after each cache period: "last used" is exact to
            # that, and costs the request path nothing.
            store, key_id = self._store, owner.key_id
            self._tasks.spawn(f"touch {key_id}", lambda: store.touch_keys([key_id]))
        if len(self._cache) >= _MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[key_hash] = (now + self._cache_seconds, owner)
        future.set_result(owner)
        return owner
