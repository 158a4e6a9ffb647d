"""Admin RPCs of the referral program: listing, and deciding the referrals under review."""

from __future__ import annotations

import grpc

from core_service.admin.referral_review import ReferralReview
from core_service.edge.admin.enforcement import audit_message
from core_service.edge.admin.paging import page_size
from core_service.edge.messages.referrals import STATUS_NAMES, referral_message
from core_service.errors import InvalidRequest
from core_service.referrals.program import ReferralProgram
from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb
from kyma.admin.v1 import admin_service_pb2 as pb


class ReferralAdmin:
    def __init__(self, referrals: ReferralProgram, review: ReferralReview) -> None:
        self._referrals = referrals
        self._review = review

    async def ListAllReferrals(
        self, request: pb.ListAllReferralsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAllReferralsResponse:
        program = self._referrals
        status = None
        if request.status != accounting_pb.REFERRAL_STATUS_UNSPECIFIED:
            status = STATUS_NAMES.get(request.status)
            if status is None:
                raise InvalidRequest("Unknown referral status.", param="status")
        views = await program.search(
            flagged_only=request.flagged_only, status=status, limit=page_size(request.page_size)
        )
        required = program.policy.tokens_required
        return pb.ListAllReferralsResponse(
            referrals=[referral_message(v, tokens_required=required, reveal=True) for v in views]
        )

    async def ReviewReferral(
        self, request: pb.ReviewReferralRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReviewReferralResponse:
        decisions = {
            pb.REFERRAL_DECISION_APPROVE: self._review.approve,
            pb.REFERRAL_DECISION_REJECT: self._review.reject,
        }
        decide = decisions.get(request.decision)
        if decide is None:
            raise InvalidRequest("The decision must be approve or reject.", param="decision")
        view, entry = await decide(
            request.referral_id,
            actor=request.justification.actor.strip() or "unknown",
            reason=request.justification.reason,
        )
        return pb.ReviewReferralResponse(
            referral=referral_message(
                view, tokens_required=self._referrals.policy.tokens_required, reveal=True
            ),
            audit=audit_message(entry),
        )
