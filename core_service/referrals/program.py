"""The referral program: an account's code brings in new accounts; a referral is verified once
the referred account has used `tokens_required` tokens (no time limit), and then both accounts
receive `reward` — exactly once, however many nodes notice it at the same moment: the status
change from pending is conditional, and the two reward entries carry idempotency keys.

Abuse signals are weighed, not applied blindly. A self-referral, a referral between accounts
sharing a client fingerprint, and one by an account whose referral privileges were revoked are
rejected: they earn nothing, and are flagged. A shared sign-up IP alone is not proof (offices,
campuses and carrier NAT share one), so such a referral is flagged and put `under_review`: it
earns nothing until an admin approves it (`core_service.admin.referral_review`), after which it
is pending like any other and pays once the threshold is met — at once, if it already was. With
the program switched off, no referral is made or verified (pending ones stay pending).

States: pending → verified; under_review → pending (approved) or rejected; pending → rejected
(an admin's rejection, or a referrer revoked before it verified).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core_service.billing.ledger import (
    SYSTEM_REFERRAL_REWARDS,
    EntryKind,
    Transfer,
    post_in,
)
from core_service.clock import Clock
from core_service.db.models import Account, Referral, UsageDaily
from core_service.errors import InvalidRequest
from core_service.ids import new_id
from core_service.referrals import codes as referral_codes

PENDING = "pending"
UNDER_REVIEW = "under_review"
VERIFIED = "verified"
REJECTED = "rejected"
STATUSES = (PENDING, UNDER_REVIEW, VERIFIED, REJECTED)
REVOKED_REASON = "the referrer's referral privileges are revoked"


@dataclass(frozen=True)
class ReferralPolicy:
    enabled: bool
    tokens_required: int
    reward_nanos: int
    link_base: str = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ReferralView:
    id: str
    referrer_id: str
    referred_id: str
    referred_email: str
    status: str
    flagged: bool
    flag_reason: str | None
    created_at: object
    verified_at: object
    tokens_used: int


def mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


class ReferralProgram:
    def __init__(self, engine: AsyncEngine, clock: Clock, policy: ReferralPolicy) -> None:
        self._engine = engine
        self._clock = clock
        self.policy = policy

    def link(self, code: str) -> str:
        return f"{self.policy.link_base.rstrip('/')}/signup?ref={code}" if code else ""

    async def check_code(self, code: str) -> None:
        """At sign-up: refuse a code that names no account (when the program runs)."""
        if not code or not self.policy.enabled:
            return
        normal = referral_codes.normalize(code)
        async with self._engine.connect() as conn:
            found = normal and await conn.scalar(
                select(Account.id).where(Account.referral_code == normal)
            )
        if not found:
            raise InvalidRequest("That referral code does not exist.", param="referral_code")

    async def attach_in(self, conn: AsyncConnection, referred: Account, code: str | None) -> None:
        """In the new account's transaction: the pending (or flagged) referral, if any."""
        normal = referral_codes.normalize(code or "")
        if not self.policy.enabled or normal is None:
            return
        referrer = (
            await conn.execute(
                select(
                    Account.id,
                    Account.email_canonical,
                    Account.signup_ip,
                    Account.signup_fingerprint,
                    Account.referrals_revoked,
                ).where(Account.referral_code == normal)
            )
        ).one_or_none()
        if referrer is None:
            return
        status, reason = PENDING, None
        if referrer.id == referred.id or referrer.email_canonical == referred.email_canonical:
            status, reason = REJECTED, "self-referral"
        elif (
            referred.signup_fingerprint
            and referrer.signup_fingerprint == referred.signup_fingerprint
        ):
            status, reason = REJECTED, "same client fingerprint as the referrer"
        elif referrer.referrals_revoked:
            status, reason = REJECTED, REVOKED_REASON
        elif referred.signup_ip and referrer.signup_ip == referred.signup_ip:
            status, reason = UNDER_REVIEW, "same sign-up IP as the referrer"
        await conn.execute(
            insert(Referral).values(
                id=new_id("ref"),
                referrer_id=referrer.id,
                referred_id=referred.id,
                status=status,
                flagged=reason is not None,
                flag_reason=reason,
                created_at=self._clock.now(),
            )
        )

    @staticmethod
    def _tokens_used():  # type: ignore[no-untyped-def]
        return (
            select(
                func.coalesce(func.sum(UsageDaily.prompt_tokens + UsageDaily.completion_tokens), 0)
            )
            .where(UsageDaily.account_id == Referral.referred_id)
            .correlate(Referral)
            .scalar_subquery()
        )

    async def verify_due(self, *, batch: int = 500) -> int:
        """Verify and reward the pending referrals whose referred account crossed the threshold.
        Safe to run on every node at once. Returns how many this call verified."""
        if not self.policy.enabled:
            return 0
        async with self._engine.connect() as conn:
            due = (
                await conn.scalars(
                    select(Referral.id)
                    .where(
                        Referral.status == PENDING,
                        self._tokens_used() >= self.policy.tokens_required,
                    )
                    .limit(batch)
                )
            ).all()
        verified = 0
        for referral_id in due:
            if await self._verify(referral_id):
                verified += 1
        return verified

    async def verify_if_due(self, referral_id: str) -> bool:
        """Verify and reward this referral if it is pending and its threshold is met (as
        `verify_due` would on its next run; whichever comes first pays, once)."""
        if not self.policy.enabled:
            return False
        async with self._engine.connect() as conn:
            due = await conn.scalar(
                select(Referral.id).where(
                    Referral.id == referral_id,
                    Referral.status == PENDING,
                    self._tokens_used() >= self.policy.tokens_required,
                )
            )
        return bool(due) and await self._verify(referral_id)

    async def _verify(self, referral_id: str) -> bool:
        now = self._clock.now()
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    update(Referral)
                    .where(Referral.id == referral_id, Referral.status == PENDING)
                    .values(status=VERIFIED, verified_at=now)
                    .returning(Referral.referrer_id, Referral.referred_id)
                )
            ).one_or_none()
            if row is None:
                return False  # another node got there first
            revoked = await conn.scalar(
                select(Account.referrals_revoked).where(Account.id == row.referrer_id)
            )
            if revoked:
                await conn.execute(
                    update(Referral)
                    .where(Referral.id == referral_id)
                    .values(status=REJECTED, flagged=True, flag_reason=REVOKED_REASON)
                )
                return False
            for side, account in (("referrer", row.referrer_id), ("referred", row.referred_id)):
                await post_in(
                    conn,
                    Transfer(
                        idempotency_key=f"referral:{referral_id}:{side}",
                        kind=EntryKind.REFERRAL_REWARD,
                        debit_account=SYSTEM_REFERRAL_REWARDS,
                        credit_account=account,
                        amount_nanos=self.policy.reward_nanos,
                        actor="system",
                        reason="Referral reward",
                        reference=referral_id,
                    ),
                    now,
                )
        return True

    async def search(
        self,
        *,
        referrer_id: str | None = None,
        referral_id: str | None = None,
        flagged_only: bool = False,
        status: str | None = None,
        limit: int = 200,
    ) -> list[ReferralView]:
        statement = (
            select(
                Referral,
                Account.email.label("referred_email"),
                self._tokens_used().label("tokens_used"),
            )
            .join(Account, Account.id == Referral.referred_id)
            .order_by(Referral.created_at.desc())
            .limit(limit)
        )
        if referrer_id:
            statement = statement.where(Referral.referrer_id == referrer_id)
        if referral_id:
            statement = statement.where(Referral.id == referral_id)
        if flagged_only:
            statement = statement.where(Referral.flagged.is_(True))
        if status:
            statement = statement.where(Referral.status == status)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [
            ReferralView(
                id=r.id,
                referrer_id=r.referrer_id,
                referred_id=r.referred_id,
                referred_email=r.referred_email,
                status=r.status,
                flagged=r.flagged,
                flag_reason=r.flag_reason,
                created_at=r.created_at,
                verified_at=r.verified_at,
                tokens_used=int(r.tokens_used),
            )
            for r in rows
        ]
