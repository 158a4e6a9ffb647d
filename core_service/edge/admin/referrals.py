"""Admin RPCs of the referral program."""

from __future__ import annotations

import grpc

from core_service.edge.admin.paging import page_size
from core_service.edge.messages.referrals import referral_message
from core_service.referrals.program import ReferralProgram
from kyma.admin.v1 import admin_service_pb2 as pb


class ReferralAdmin:
    def __init__(self, referrals: ReferralProgram) -> None:
        self._referrals = referrals

    async def ListAllReferrals(
        self, request: pb.ListAllReferralsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAllReferralsResponse:
        program = self._referrals
        views = await program.search(
            flagged_only=request.flagged_only, limit=page_size(request.page_size)
        )
        required = program.policy.tokens_required
        return pb.ListAllReferralsResponse(
            referrals=[referral_message(v, tokens_required=required, reveal=True) for v in views]
        )
