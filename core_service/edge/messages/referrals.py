"""Referrals as protobuf messages."""

from __future__ import annotations

from core_service.edge.messages.accounts import timestamp
from core_service.referrals.program import ReferralView, mask_email
from kyma.accounting.v1 import accounting_service_pb2 as pb

STATUS = {
    "pending": pb.REFERRAL_STATUS_PENDING,
    "under_review": pb.REFERRAL_STATUS_UNDER_REVIEW,
    "verified": pb.REFERRAL_STATUS_VERIFIED,
    "rejected": pb.REFERRAL_STATUS_REJECTED,
}
STATUS_NAMES = {value: name for name, value in STATUS.items()}


def referral_message(
    view: ReferralView, *, tokens_required: int, reveal: bool = False
) -> pb.Referral:
    return pb.Referral(
        id=view.id,
        referred_email=view.referred_email if reveal else mask_email(view.referred_email),
        status=STATUS.get(view.status, pb.REFERRAL_STATUS_UNSPECIFIED),
        tokens_used=view.tokens_used,
        tokens_required=tokens_required,
        created_at=timestamp(view.created_at),  # type: ignore[arg-type]
        verified_at=timestamp(view.verified_at),  # type: ignore[arg-type]
        flagged=view.flagged,
        flag_reason=view.flag_reason or "",
        referrer_id=view.referrer_id,
        referred_id=view.referred_id,
    )
