"""An admin's decision on a referral under review (a shared sign-up IP alone put it there; see
`core_service.referrals.program`), written to the audit log in the same transaction.

- Approve: under_review → pending, then verified and rewarded at once if the referred account
  has already used enough tokens (otherwise when it does). The state change is one conditional
  UPDATE, so of two approvals at once (or twice) exactly one succeeds and the other is told the
  referral is no longer under review; the rewards carry the ledger's idempotency keys and the
  verification is itself conditional, so they are paid exactly once however the approval races
  the periodic check on any node. If the process dies between the approval and the payment,
  the next periodic check pays.
- Reject: under_review or pending → rejected; it earns nothing, ever. A verified referral was
  paid and cannot be rejected.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.audit import audit_in, required_text
from core_service.clock import Clock
from core_service.db.models import AuditEntry, Referral
from core_service.errors import InvalidRequest, NotFound
from core_service.referrals.program import (
    PENDING,
    REJECTED,
    UNDER_REVIEW,
    ReferralProgram,
    ReferralView,
)


class ReferralReview:
    def __init__(self, engine: AsyncEngine, clock: Clock, program: ReferralProgram) -> None:
        self._engine = engine
        self._clock = clock
        self._program = program

    async def approve(
        self, referral_id: str, *, actor: str, reason: str
    ) -> tuple[ReferralView, AuditEntry]:
        entry = await self._decide(
            referral_id,
            frm=(UNDER_REVIEW,),
            to=PENDING,
            action="approve_referral",
            actor=actor,
            reason=reason,
        )
        await self._program.verify_if_due(referral_id)
        return await self._view(referral_id), entry

    async def reject(
        self, referral_id: str, *, actor: str, reason: str
    ) -> tuple[ReferralView, AuditEntry]:
        entry = await self._decide(
            referral_id,
            frm=(UNDER_REVIEW, PENDING),
            to=REJECTED,
            action="reject_referral",
            actor=actor,
            reason=reason,
        )
        return await self._view(referral_id), entry

    async def _decide(
        self,
        referral_id: str,
        *,
        frm: tuple[str, ...],
        to: str,
        action: str,
        actor: str,
        reason: str,
    ) -> AuditEntry:
        reason = required_text(reason, "reason", "reason")
        async with self._engine.begin() as conn:
            changed = (
                await conn.execute(
                    update(Referral)
                    .where(Referral.id == referral_id, Referral.status.in_(frm))
                    .values(status=to, flagged=True)
                    .returning(Referral.referrer_id, Referral.referred_id, Referral.flag_reason)
                )
            ).one_or_none()
            if changed is None:
                status = await conn.scalar(
                    select(Referral.status).where(Referral.id == referral_id)
                )
                if status is None:
                    raise NotFound(f"No referral {referral_id}.", param="referral_id")
                raise InvalidRequest(
                    f"Referral {referral_id} is {status.replace('_', ' ')}; only a referral "
                    f"{' or '.join(s.replace('_', ' ') for s in frm)} can be "
                    f"{'approved' if to == PENDING else 'rejected'}.",
                    param="referral_id",
                )
            return await audit_in(
                conn,
                self._clock.now(),
                actor=actor,
                action=action,
                account_id=changed.referrer_id,
                reason=reason,
                details=(
                    f"referral {referral_id}: {changed.referrer_id} referred "
                    f"{changed.referred_id} (flagged: {changed.flag_reason or 'no'})"
                ),
            )

    async def _view(self, referral_id: str) -> ReferralView:
        [view] = await self._program.search(referral_id=referral_id, limit=1)
        return view
