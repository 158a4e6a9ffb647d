"""Admin RPCs of purchases: the signed Stripe sessions that were recorded and not credited."""

from __future__ import annotations

import grpc

from core_service.billing.webhooks import StripeWebhooks
from core_service.edge.admin.paging import page_size
from core_service.edge.messages.accounts import timestamp
from kyma.admin.v1 import admin_service_pb2 as pb


class PaymentAdmin:
    def __init__(self, webhooks: StripeWebhooks) -> None:
        self._webhooks = webhooks

    async def ListIgnoredPayments(
        self, request: pb.ListIgnoredPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListIgnoredPaymentsResponse:
        rows = await self._webhooks.ignored(limit=page_size(request.page_size))
        return pb.ListIgnoredPaymentsResponse(
            payments=[
                pb.IgnoredPayment(
                    id=row.id,
                    event_id=row.event_id,
                    event_type=row.event_type,
                    session_id=row.session_id or "",
                    account_id=row.account_id or "",
                    amount_total=row.amount_total,
                    currency=row.currency or "",
                    reason=row.reason,
                    received_at=timestamp(row.received_at),
                )
                for row in rows
            ]
        )
