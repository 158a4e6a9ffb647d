"""Web sessions: how the console is signed in (SPEC §3 "Sign-in").

A session is made only by proving the address — completing a sign-in or a sign-up with an
emailed code — and each time a new random token is minted (`kys_` + 256 bits), so a token a
browser held before can never become a signed-in one (no session fixation). Only the token's
SHA-256 is stored, beside a CSRF token that every state-changing call authenticated by the
session must echo (`x-csrf-token`; checked in constant time by `callers.py`).

A session ends at the first of: its absolute lifetime (`lifetime`, from its making), `idle`
without use, sign-out, or "sign out everywhere" (every session of the account). Every sign-in
and every "sign out everywhere" is written to the audit log in the transaction that does it.

Lookups are cached per node like key lookups (`auth.py`): no database round trip per request.
The cache stays exact: the lifetime and idle limits are compared with the clock on every
request (a session that looks idle here is looked up again before it is refused, since
another node may have seen it used); ending sessions is recorded in the account-event feed,
so every node drops them within a poll. Use is recorded in memory and written for all
sessions at once, every so often (`flush_last_used`), never per request.

Failure semantics: while the database is unreachable, cached sessions go on working and new
ones cannot be made or looked up (503); their last use is written once it answers again.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.account_events import SESSION_ENDED, SESSIONS_ENDED, AccountEvents, Event
from core_service.accounts.store import KeyOwner
from core_service.audit import audit_in
from core_service.clock import Clock
from core_service.db.models import Account, Balance, WebSession
from core_service.errors import InvalidSession
from core_service.ids import new_id

TOKEN_PREFIX = "kys_"
_TOKEN_BODY = 43  # secrets.token_urlsafe(32)
_TOKEN_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
_MAX_CACHED = 100_000
_MISS_SECONDS = 5.0
SIGNED_OUT = "You are not signed in (or your session has ended). Sign in again."


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_well_formed(token: str) -> bool:
    body = token[len(TOKEN_PREFIX) :]
    return (
        token.startswith(TOKEN_PREFIX)
        and len(body) == _TOKEN_BODY
        and all(ch in _TOKEN_ALPHABET for ch in body)
    )


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


@dataclass(frozen=True)
class SessionPolicy:
    lifetime: timedelta
    idle: timedelta


@dataclass(frozen=True)
class SessionOwner:
    """A session as a lookup yields it, with its account's state (as a key lookup's)."""

    session_id: str
    token_hash: bytes
    email: str
    csrf_token: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime
    revoked: bool
    account: KeyOwner

    @property
    def account_id(self) -> str:
        return self.account.account_id


@dataclass(frozen=True)
class NewSession:
    token: str  # shown once: the bridge puts it in the cookie
    owner: SessionOwner


class Sessions:
    def __init__(
        self,
        engine: AsyncEngine,
        reads: AsyncEngine,
        clock: Clock,
        policy: SessionPolicy,
        *,
        events: AccountEvents | None = None,
        cache_seconds: float = 300.0,
    ) -> None:
        self._engine = engine
        self._reads = reads
        self._clock = clock
        self.policy = policy
        self._events = events
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, SessionOwner | None]] = {}
        self._by_account: dict[str, set[bytes]] = {}
        # Last use seen on this node, and the sessions used since the last flush.
        self._seen: dict[str, datetime] = {}
        self._used: set[str] = set()
        self._generation = 0

    # -- making and ending ----------------------------------------------------------------

    async def start(
        self, account_id: str, email: str, *, ip: str | None, how: str = "signed in"
    ) -> NewSession:
        """A new session for the account (its email proven just now), audited."""
        token = new_token()
        now = self._clock.now()
        values = dict(
            id=new_id("sess"),
            token_hash=hash_token(token),
            csrf_token=secrets.token_urlsafe(32),
            account_id=account_id,
            created_at=now,
            last_used_at=now,
            expires_at=now + self.policy.lifetime,
            created_ip=ip[:64] if ip else None,
        )
        async with self._engine.begin() as conn:
            await conn.execute(insert(WebSession).values(**values))
            await audit_in(
                conn,
                now,
                actor=f"account:{account_id}",
                action="sign_in",
                account_id=account_id,
                reason=f"{how} with a code mailed to the address",
                details=f"session {values['id']} from {ip or 'an unknown address'}",
            )
        owner = await self._load(hash_token(token))
        if owner is None:  # cannot happen: it was just committed
            raise InvalidSession(SIGNED_OUT)
        return NewSession(token, owner)

    async def end(self, owner: SessionOwner) -> None:
        """Sign this session out (on every node within a poll of the account-event feed)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(WebSession)
                .where(WebSession.id == owner.session_id, WebSession.revoked_at.is_(None))
                .values(revoked_at=self._clock.now())
            )
            if self._events is not None:
                await self._events.record_in(conn, SESSION_ENDED, key_hash=owner.token_hash)
        self.forget(owner.token_hash)

    async def end_all(self, owner: SessionOwner, *, ip: str | None) -> int:
        """Sign out every session of the account ("sign out everywhere"), audited."""
        now = self._clock.now()
        account_id = owner.account_id
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(WebSession)
                .where(WebSession.account_id == account_id, WebSession.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            ended = int(result.rowcount or 0)
            if self._events is not None:
                await self._events.record_in(conn, SESSIONS_ENDED, account_id=account_id)
            await audit_in(
                conn,
                now,
                actor=f"account:{account_id}",
                action="sign_out_everywhere",
                account_id=account_id,
                reason="signed out every session",
                details=f"{ended} sessions ended, from session {owner.session_id} "
                f"at {ip or 'an unknown address'}",
            )
        self.forget_account(account_id)
        return ended

    # -- authenticating -------------------------------------------------------------------

    async def authenticate(self, token: str) -> SessionOwner:
        """The live session the token belongs to, or InvalidSession (401)."""
        if not is_well_formed(token):
            raise InvalidSession(SIGNED_OUT)
        token_hash = hash_token(token)
        owner = await self._lookup(token_hash)
        now = self._clock.now()
        if owner is not None and not owner.revoked and self._idle(owner, now):
            # Another node may have seen it used since this one looked it up.
            self.forget(token_hash)
            owner = await self._lookup(token_hash)
        if owner is None or owner.revoked or owner.expires_at <= now or self._idle(owner, now):
            raise InvalidSession(SIGNED_OUT)
        self._seen[owner.session_id] = now
        self._used.add(owner.session_id)
        return owner

    def _idle(self, owner: SessionOwner, now: datetime) -> bool:
        last = max(owner.last_used_at, self._seen.get(owner.session_id, owner.last_used_at))
        return last + self.policy.idle <= now

    async def _lookup(self, token_hash: bytes) -> SessionOwner | None:
        at = self._clock.monotonic()
        cached = self._cache.get(token_hash)
        if cached is not None and cached[0] > at:
            return cached[1]
        generation = self._generation
        owner = await self._load(token_hash)
        if generation == self._generation:  # no event raced the lookup
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
                self._by_account.clear()
                self._seen.clear()
            ttl = (
                self._cache_seconds
                if owner is not None
                else min(self._cache_seconds, _MISS_SECONDS)
            )
            self._cache[token_hash] = (at + ttl, owner)
            if owner is not None:
                self._by_account.setdefault(owner.account_id, set()).add(token_hash)
        return owner

    async def _load(self, token_hash: bytes) -> SessionOwner | None:
        statement = (
            select(
                WebSession.id,
                WebSession.csrf_token,
                WebSession.account_id,
                WebSession.created_at,
                WebSession.expires_at,
                WebSession.last_used_at,
                WebSession.revoked_at,
                Account.email,
                Account.status,
                Account.pinned_tier,
                Account.status_reason,
                Account.suspended_until,
                Account.terms_version,
                Account.terms_in_use_version,
                Balance.total_purchased_nanos,
            )
            .join(Account, Account.id == WebSession.account_id)
            .join(Balance, Balance.ledger_account == WebSession.account_id)
            .where(WebSession.token_hash == token_hash)
        )
        async with self._reads.connect() as conn:
            row = (await conn.execute(statement)).first()
        if row is None:
            return None
        return SessionOwner(
            session_id=row.id,
            token_hash=token_hash,
            email=row.email,
            csrf_token=row.csrf_token,
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked=row.revoked_at is not None,
            account=KeyOwner(
                key_id="",
                account_id=row.account_id,
                account_status=row.status,
                total_purchased_nanos=row.total_purchased_nanos,
                pinned_tier=row.pinned_tier,
                revoked=False,
                status_reason=row.status_reason,
                suspended_until=row.suspended_until,
                terms_version=row.terms_version,
                terms_in_use_version=row.terms_in_use_version,
            ),
        )

    # -- the feed, and last use -----------------------------------------------------------

    def forget(self, token_hash: bytes) -> None:
        self._generation += 1
        cached = self._cache.pop(token_hash, None)
        if cached is not None and cached[1] is not None:
            self._by_account.get(cached[1].account_id, set()).discard(token_hash)

    def forget_account(self, account_id: str) -> None:
        self._generation += 1
        for token_hash in self._by_account.pop(account_id, set()):
            self._cache.pop(token_hash, None)

    def apply(self, event: Event) -> None:
        """An account event from the feed: a session ended, or the account changed."""
        if event.key_hash is not None:
            self.forget(event.key_hash)
        if event.account_id is not None:
            self.forget_account(event.account_id)

    async def flush_last_used(self) -> int:
        """Write "last used" for every session used since the last flush, in one statement."""
        used, self._used = self._used, set()
        if not used:
            return 0
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(WebSession)
                    .where(WebSession.id.in_(sorted(used)))
                    .values(last_used_at=self._clock.now())
                )
        except BaseException:
            self._used |= used
            raise
        return len(used)
