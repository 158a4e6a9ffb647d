"""Authenticating API keys on the request path.

A malformed key (wrong shape or checksum) is refused without any lookup. A well-formed key is
looked up by its SHA-256 hash; the answer is trusted for `cache_seconds` on this node, which
keeps the database off the hot path; revocations, suspensions and tier changes reach every
node through the account-event feed (`events.py`) and drop what they concern at once.
Concurrent first requests with one key share a single lookup.

Only hashes are ever compared (by the database index, or as cache keys), so the time a check
takes says nothing about how much of a secret key a guess got right.

A key past the expiry its owner gave it is refused (401 key_expired) from that moment on every
node: the expiry travels with the cached lookup and is compared with the clock on each request.

Continued use under newer terms of service than the account accepted is recorded once per
account (SPEC §3), in the same periodic flush as keys' last use: never a write per request.
"""

from __future__ import annotations

import asyncio

from core_service import keys
from core_service.account_events import Event
from core_service.accounts.store import AccountStore, KeyOwner
from core_service.clock import Clock
from core_service.errors import KeyExpired, NotFound, Unauthenticated
from core_service.ratelimit.tiers import TierTable
from core_service.values import Principal

_MAX_CACHED_KEYS = 100_000
# Unknown keys are remembered this long at most (a key created elsewhere is not refused for long).
_MISS_SECONDS = 5.0


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
    """Key lookups, cached per node for `cache_seconds` (minutes: revocations and account
    changes arrive through the account-event feed and drop what they concern at once, see
    `apply`). Unknown keys are cached for a few seconds only. Each key's last use is kept in
    memory and written for all used keys at once by `flush_last_used`."""

    def __init__(
        self,
        store: AccountStore,
        clock: Clock,
        tiers: TierTable,
        *,
        cache_seconds: float,
        terms_version: str | None = None,
    ) -> None:
        self._store = store
        self._tiers = tiers
        # The current terms of service: use under them by an account that accepted older ones
        # is recorded (once) by `flush_last_used`.
        self._terms_version = terms_version
        self._terms_pending: set[str] = set()
        self._terms_recorded: set[str] = set()
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._miss_seconds = min(cache_seconds, _MISS_SECONDS)
        self._cache: dict[bytes, tuple[float, KeyOwner | None]] = {}
        self._by_account: dict[str, set[bytes]] = {}
        self._pending: dict[bytes, asyncio.Future[KeyOwner | None]] = {}
        self._used: set[str] = set()
        # Bumped by every event: a lookup that raced one is answered but not cached.
        self._generation = 0

    async def authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if not keys.is_well_formed(token):
            raise Unauthenticated("Incorrect API key provided. Check it, or create a new one.")
        key_hash = keys.hash_key(token)
        owner = await self._lookup(key_hash)
        if owner is None or owner.revoked:
            raise Unauthenticated("Incorrect API key provided. Check it, or create a new one.")
        expires = owner.key_limits.expires_at
        if expires is not None and expires <= self._clock.now():
            raise KeyExpired(
                f"This API key expired at {expires.isoformat().replace('+00:00', 'Z')}. "
                "Create a new key, or give this one a later expiry."
            )
        self._used.add(owner.key_id)
        self.note_terms(owner)
        return self.principal_for(owner)

    def note_terms(self, owner: KeyOwner) -> None:
        """Remember that the account is in use under the current terms, if it accepted older
        ones (recorded by the next flush, once)."""
        current = self._terms_version
        if (
            current is not None
            and owner.terms_version != current
            and owner.terms_in_use_version != current
            and owner.account_id not in self._terms_recorded
        ):
            self._terms_pending.add(owner.account_id)

    def principal_for(self, owner: KeyOwner) -> Principal:
        return Principal(
            account_id=owner.account_id,
            key_id=owner.key_id,
            account_status=owner.account_status,
            tier=self._tiers.effective(owner.total_purchased_nanos, owner.pinned_tier),
            pinned=owner.pinned_tier is not None,
            status_reason=owner.status_reason,
            suspended_until=owner.suspended_until,
            key_limits=owner.key_limits,
        )

    async def principal_for_account(self, account_id: str) -> Principal:
        """The account as its keys' requests see it (for admin views of its tier and limits)."""
        owner = await self._store.account_owner(account_id)
        if owner is None:
            raise NotFound(f"No account {account_id}.", param="account_id")
        return self.principal_for(owner)

    def forget(self, key_hash: bytes) -> None:
        """Drop this node's cached answer (e.g. right after revoking on this node)."""
        self._generation += 1
        cached = self._cache.pop(key_hash, None)
        if cached is not None and cached[1] is not None:
            self._by_account.get(cached[1].account_id, set()).discard(key_hash)

    def forget_account(self, account_id: str) -> None:
        """Drop every cached key of the account (its status, tier or balance changed)."""
        self._generation += 1
        for key_hash in self._by_account.pop(account_id, set()):
            self._cache.pop(key_hash, None)

    def apply(self, event: Event) -> None:
        """An account event from the feed (any node's change)."""
        if event.key_hash is not None:
            self.forget(event.key_hash)
        if event.account_id is not None:
            self.forget_account(event.account_id)

    async def flush_last_used(self) -> int:
        """Write "last used" for every key used since the last flush, in one statement, and
        the accounts seen in use under terms they had not accepted."""
        used, self._used = self._used, set()
        if used:
            try:
                await self._store.touch_keys(sorted(used))
            except BaseException:
                self._used |= used
                raise
        pending, self._terms_pending = self._terms_pending, set()
        if pending and self._terms_version is not None:
            try:
                await self._store.record_terms_in_use(sorted(pending), self._terms_version)
            except BaseException:
                self._terms_pending |= pending
                raise
            if len(self._terms_recorded) > _MAX_CACHED_KEYS:
                self._terms_recorded.clear()
            self._terms_recorded |= pending
        return len(used)

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
        generation = self._generation
        try:
            owner = await self._store.find_key_owner(key_hash)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # waiters re-raise it; this marks it retrieved
            raise
        finally:
            self._pending.pop(key_hash, None)
        if generation == self._generation:  # no event raced the lookup
            if len(self._cache) >= _MAX_CACHED_KEYS:
                self._cache.clear()
                self._by_account.clear()
            ttl = self._cache_seconds if owner is not None else self._miss_seconds
            self._cache[key_hash] = (now + ttl, owner)
            if owner is not None:
                self._by_account.setdefault(owner.account_id, set()).add(key_hash)
        future.set_result(owner)
        return owner
