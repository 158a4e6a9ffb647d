"""Accounts and API keys in the database: accounts with their opening balance and welcome
bonus, keys with their limits and their spend row (made with the key: the hold stores count
every hold of the key in it, see `billing/key_spend.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core_service import keys
from core_service.account_events import ACCOUNT_CHANGED, KEY_CHANGED, KEY_REVOKED, AccountEvents
from core_service.accounts.emails import Email
from core_service.accounts.key_limits import stored_limits
from core_service.billing.ledger import (
    SYSTEM_WELCOME_BONUS,
    EntryKind,
    Transfer,
    open_balance_in,
    post_in,
)
from core_service.clock import Clock
from core_service.db import models
from core_service.errors import AlreadyExists, InvalidRequest
from core_service.ids import new_id
from core_service.referrals import codes as referral_codes
from core_service.referrals.program import ReferralProgram
from core_service.values import NO_KEY_LIMITS, KeyLimits

# Live (unrevoked) keys an account may hold at once.
MAX_LIVE_KEYS = 25


@dataclass(frozen=True)
class KeyOwner:
    """What a key lookup yields: the key and the state of its account."""

    key_id: str
    account_id: str
    account_status: str
    total_purchased_nanos: int
    pinned_tier: int | None
    revoked: bool
    status_reason: str | None = None
    suspended_until: datetime | None = None
    key_limits: KeyLimits = NO_KEY_LIMITS
    # The terms version the account accepted (None: none recorded).
    terms_version: str | None = None
    terms_in_use_version: str | None = None


@dataclass(frozen=True)
class NewAccount:
    account: models.Account
    key: models.ApiKey | None  # None: made for a web session, without a key
    secret: str  # the API key itself: returned once, never stored ("" without a key)


@dataclass(frozen=True)
class KeyView:
    """A key as its owner sees it: the key, and its spend row (cap, interval, counters)."""

    key: models.ApiKey
    spend: models.KeySpend | None

    @property
    def limits(self) -> KeyLimits:
        return stored_limits(
            cap_nanos=self.spend.cap_nanos if self.spend else None,
            cap_interval=self.spend.cap_interval if self.spend else None,
            expires_at=self.key.expires_at,
            allowed_models=self.key.allowed_models,
        )


def welcome_bonus(account_id: str, amount_nanos: int) -> Transfer:
    return Transfer(
        idempotency_key=f"welcome:{account_id}",
        kind=EntryKind.WELCOME_BONUS,
        debit_account=SYSTEM_WELCOME_BONUS,
        credit_account=account_id,
        amount_nanos=amount_nanos,
        actor="system",
        reason="Welcome bonus",
    )


class AccountStore:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        *,
        welcome_bonus_nanos: int,
        referrals: ReferralProgram | None = None,
        reads: async_sessionmaker[AsyncSession] | None = None,
        events: AccountEvents | None = None,
    ) -> None:
        self._sessions = sessions
        # Reads never take SQLite's write lock (see db/engine.py).
        self._reads = reads or sessions
        self._events = events
        self._clock = clock
        self._welcome_bonus_nanos = welcome_bonus_nanos
        self._referrals = referrals

    async def create_account(
        self,
        email: Email,
        *,
        key_name: str = "default",
        signup_ip: str | None = None,
        signup_fingerprint: str | None = None,
        referred_by: str | None = None,
        with_key: bool = True,
        terms_version: str | None = None,
    ) -> NewAccount:
        for _ in range(3):
            try:
                return await self._create(
                    email,
                    key_name if with_key else None,
                    signup_ip,
                    signup_fingerprint,
                    referred_by,
                    terms_version,
                )
            except IntegrityError:
                if await self._canonical_taken(email.canonical):
                    raise AlreadyExists(
                        "An account already exists for this email address (one account per person).",
                        param="email",
                    ) from None
                # Otherwise two new accounts drew the same referral code: draw again.
        raise AlreadyExists("Could not create the account; please retry.")

    async def _canonical_taken(self, canonical: str) -> bool:
        async with self._reads() as session:
            found = await session.scalar(
                select(models.Account.id).where(models.Account.email_canonical == canonical)
            )
        return found is not None

    async def _create(
        self,
        email: Email,
        key_name: str | None,
        signup_ip: str | None,
        signup_fingerprint: str | None,
        referred_by: str | None,
        terms_version: str | None,
    ) -> NewAccount:
        now = self._clock.now()
        account = models.Account(
            id=new_id("acct"),
            email=email.address,
            email_canonical=email.canonical,
            status="active",
            created_at=now,
            referrals_revoked=False,
            signup_ip=signup_ip,
            signup_fingerprint=signup_fingerprint,
            referral_code=referral_codes.new_code(),
            terms_version=terms_version,
            terms_accepted_at=now if terms_version else None,
        )
        secret = keys.generate() if key_name is not None else ""
        key = self._new_key(account.id, key_name, secret, now) if key_name is not None else None
        async with self._sessions.begin() as session:
            session.add(account)
            await session.flush()
            if key is not None:
                session.add(key)
                session.add(self._new_spend(key))
            connection = await session.connection()
            await open_balance_in(connection, account.id)
            if self._welcome_bonus_nanos > 0:
                await post_in(connection, welcome_bonus(account.id, self._welcome_bonus_nanos), now)
            if self._referrals is not None and referred_by:
                await self._referrals.attach_in(connection, account, referred_by)
        return NewAccount(account=account, key=key, secret=secret)

    async def create_key(
        self,
        account_id: str,
        name: str,
        *,
        max_live: int = MAX_LIVE_KEYS,
        key_values: dict[str, Any] | None = None,
        spend_values: dict[str, Any] | None = None,
    ) -> tuple[KeyView, str]:
        """A new key for the account, with its limits (column values, see `key_limits.py`):
        (its view, the secret, shown once). An account holds at most `max_live` unrevoked
        keys, exactly however many are created at once: the account row is locked
        (PostgreSQL) or the write lock held (SQLite) while they are counted."""
        secret = keys.generate()
        key = self._new_key(account_id, name, secret, self._clock.now())
        for column, value in (key_values or {}).items():
            setattr(key, column, value)
        spend = self._new_spend(key)
        for column, value in (spend_values or {}).items():
            setattr(spend, column, value)
        async with self._sessions.begin() as session:
            await session.execute(
                select(models.Account.id).where(models.Account.id == account_id).with_for_update()
            )
            live = await session.scalar(
                select(func.count()).where(
                    models.ApiKey.account_id == account_id, models.ApiKey.revoked_at.is_(None)
                )
            )
            if (live or 0) >= max_live:
                raise InvalidRequest(
                    f"An account holds at most {max_live} live keys; revoke one first.",
                    param="name",
                )
            session.add(key)
            session.add(spend)
        return KeyView(key, spend), secret

    @staticmethod
    def _new_spend(key: models.ApiKey) -> models.KeySpend:
        return models.KeySpend(
            key_id=key.id,
            account_id=key.account_id,
            held_nanos=0,
            spent_total_nanos=0,
            spent_day_nanos=0,
            spent_week_nanos=0,
            spent_month_nanos=0,
        )

    @staticmethod
    def _new_key(account_id: str, name: str, secret: str, now: datetime) -> models.ApiKey:
        return models.ApiKey(
            id=new_id("key"),
            account_id=account_id,
            name=name,
            display_prefix=keys.display_prefix(secret),
            key_hash=keys.hash_key(secret),
            created_at=now,
        )

    async def find_key_owner(self, key_hash: bytes) -> KeyOwner | None:
        statement = (
            select(
                models.ApiKey.id,
                models.ApiKey.account_id,
                models.ApiKey.revoked_at,
                models.ApiKey.expires_at,
                models.ApiKey.allowed_models,
                models.KeySpend.cap_nanos,
                models.KeySpend.cap_interval,
                models.Account.status,
                models.Account.pinned_tier,
                models.Account.status_reason,
                models.Account.suspended_until,
                models.Account.terms_version,
                models.Account.terms_in_use_version,
                models.Balance.total_purchased_nanos,
            )
            .join(models.Account, models.Account.id == models.ApiKey.account_id)
            .join(models.Balance, models.Balance.ledger_account == models.ApiKey.account_id)
            .outerjoin(models.KeySpend, models.KeySpend.key_id == models.ApiKey.id)
            .where(models.ApiKey.key_hash == key_hash)
        )
        async with self._reads() as session:
            row = (await session.execute(statement)).first()
        if row is None:
            return None
        return KeyOwner(
            key_id=row.id,
            account_id=row.account_id,
            account_status=row.status,
            total_purchased_nanos=row.total_purchased_nanos,
            pinned_tier=row.pinned_tier,
            revoked=row.revoked_at is not None,
            status_reason=row.status_reason,
            suspended_until=row.suspended_until,
            key_limits=stored_limits(
                cap_nanos=row.cap_nanos,
                cap_interval=row.cap_interval,
                expires_at=row.expires_at,
                allowed_models=row.allowed_models,
            ),
            terms_version=row.terms_version,
            terms_in_use_version=row.terms_in_use_version,
        )

    async def account_owner(self, account_id: str) -> KeyOwner | None:
        """The account as a key lookup would see it (for admin views of its limits)."""
        statement = (
            select(
                models.Account.status,
                models.Account.pinned_tier,
                models.Account.status_reason,
                models.Account.suspended_until,
                models.Account.terms_version,
                models.Account.terms_in_use_version,
                models.Balance.total_purchased_nanos,
            )
            .join(models.Balance, models.Balance.ledger_account == models.Account.id)
            .where(models.Account.id == account_id)
        )
        async with self._reads() as session:
            row = (await session.execute(statement)).first()
        if row is None:
            return None
        return KeyOwner(
            key_id="",
            account_id=account_id,
            account_status=row.status,
            total_purchased_nanos=row.total_purchased_nanos,
            pinned_tier=row.pinned_tier,
            revoked=False,
            status_reason=row.status_reason,
            suspended_until=row.suspended_until,
            terms_version=row.terms_version,
            terms_in_use_version=row.terms_in_use_version,
        )

    async def pin_tier(self, account_id: str, tier: int | None) -> bool:
        async with self._sessions.begin() as session:
            account = await session.get(models.Account, account_id)
            if account is None:
                return False
            account.pinned_tier = tier
            if self._events is not None:
                await self._events.record_in(
                    await session.connection(), ACCOUNT_CHANGED, account_id=account_id
                )
        return True

    async def list_keys(self, account_id: str) -> list[KeyView]:
        statement = (
            select(models.ApiKey, models.KeySpend)
            .outerjoin(models.KeySpend, models.KeySpend.key_id == models.ApiKey.id)
            .where(models.ApiKey.account_id == account_id)
            .order_by(models.ApiKey.created_at.desc(), models.ApiKey.id)
        )
        async with self._reads() as session:
            return [KeyView(key, spend) for key, spend in (await session.execute(statement))]

    async def update_key(
        self,
        account_id: str,
        key_id: str,
        *,
        key_values: dict[str, Any],
        spend_values: dict[str, Any],
    ) -> KeyView | None:
        """Change a key's name or limits (column values, see `key_limits.py`); None when the
        account has no such key. Every node drops its cached lookup of the key within a poll
        of the account-event feed; the cap is read by the hold stores under the key's row
        lock, so a new cap decides the very next batch on every node."""
        async with self._sessions.begin() as session:
            key = await session.get(models.ApiKey, key_id)
            if key is None or key.account_id != account_id:
                return None
            for column, value in key_values.items():
                setattr(key, column, value)
            spend = await session.get(models.KeySpend, key_id)
            if spend is None:  # made before key_spend rows existed and missed by the migration
                spend = self._new_spend(key)
                session.add(spend)
            for column, value in spend_values.items():
                setattr(spend, column, value)
            if self._events is not None:
                await self._events.record_in(
                    await session.connection(), KEY_CHANGED, key_hash=key.key_hash
                )
            await session.flush()
            return KeyView(key, spend)

    async def revoke_key(self, account_id: str, key_id: str) -> KeyView | None:
        """Revoke the account's key (idempotent); None when the account has no such key."""
        async with self._sessions.begin() as session:
            key = await session.get(models.ApiKey, key_id)
            if key is None or key.account_id != account_id:
                return None
            if key.revoked_at is None:
                key.revoked_at = self._clock.now()
                if self._events is not None:
                    # Every node drops the key from its cache within a poll of the feed.
                    await self._events.record_in(
                        await session.connection(), KEY_REVOKED, key_hash=key.key_hash
                    )
            return KeyView(key, await session.get(models.KeySpend, key_id))

    async def touch_keys(self, key_ids: list[str]) -> None:
        """Record that these keys were used just now (called off the request path)."""
        if not key_ids:
            return
        async with self._sessions.begin() as session:
            await session.execute(
                update(models.ApiKey)
                .where(models.ApiKey.id.in_(key_ids))
                .values(last_used_at=self._clock.now())
            )

    async def record_terms_in_use(self, account_ids: list[str], version: str) -> int:
        """Record that these accounts went on using Kyma under terms `version` (which they had
        not accepted): once per account and version, off the request path."""
        if not account_ids:
            return 0
        account = models.Account
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(account)
                .where(
                    account.id.in_(account_ids),
                    or_(account.terms_version.is_(None), account.terms_version != version),
                    or_(
                        account.terms_in_use_version.is_(None),
                        account.terms_in_use_version != version,
                    ),
                )
                .values(terms_in_use_version=version, terms_in_use_since=self._clock.now())
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def accept_terms(self, account_id: str, version: str) -> models.Account | None:
        async with self._sessions.begin() as session:
            account = await session.get(models.Account, account_id)
            if account is None:
                return None
            if account.terms_version != version:
                account.terms_version = version
                account.terms_accepted_at = self._clock.now()
                if self._events is not None:
                    await self._events.record_in(
                        await session.connection(), ACCOUNT_CHANGED, account_id=account_id
                    )
            return account

    async def set_low_balance_threshold(
        self, account_id: str, threshold_nanos: int | None
    ) -> models.Account | None:
        """Set (or clear) the alert threshold; the alert is armed again for it."""
        async with self._sessions.begin() as session:
            account = await session.get(models.Account, account_id)
            if account is None:
                return None
            account.low_balance_threshold_nanos = threshold_nanos
            account.low_balance_alerted_at = None
            return account

    async def get_account(self, account_id: str) -> models.Account | None:
        async with self._reads() as session:
            return await session.get(models.Account, account_id)
