"""The gRPC server: every servicer of the edge, the interceptors every call goes through,
health checking and reflection."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import SecretStr

from core_service.clock import Clock
from core_service.composition.accounts import Accounts
from core_service.composition.billing import Billing
from core_service.composition.limits import Limits
from core_service.composition.routing import Routing
from core_service.composition.status import Status
from core_service.composition.storage import Storage
from core_service.edge.accounting import AccountingServicer
from core_service.edge.admin.accounts import AccountAdmin
from core_service.edge.admin.catalogue import CatalogueAdmin
from core_service.edge.admin.credits import CreditAdmin
from core_service.edge.admin.enforcement import EnforcementAdmin
from core_service.edge.admin.incidents import IncidentAdmin
from core_service.edge.admin.limits import LimitAdmin
from core_service.edge.admin.logs import LogAdmin
from core_service.edge.admin.payments import PaymentAdmin
from core_service.edge.admin.referrals import ReferralAdmin
from core_service.edge.admin.service import SERVICE as ADMIN_SERVICE
from core_service.edge.admin.service import AdminServicer
from core_service.edge.billing import BillingServicer
from core_service.edge.inference import InferenceServicer
from core_service.edge.interceptors import AdminToken, ErrorTranslation
from core_service.edge.ratelimit import RateLimitServicer
from core_service.edge.relay import InferenceRelayServicer, inference_methods
from core_service.edge.routing import RoutingServicer
from core_service.edge.sessions import SessionServicer
from core_service.edge.signup import SignupServicer
from core_service.edge.status import StatusServicer
from core_service.inference.pipeline import InferencePipeline
from core_service.logs.lookup import RequestRecords
from core_service.logs.query import RequestLogQuery
from core_service.logs.responses import StoredResponses
from kyma.accounting.v1 import (
    accounting_service_pb2,
    accounting_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
    signup_service_pb2,
    signup_service_pb2_grpc,
)
from kyma.admin.v1 import admin_service_pb2_grpc
from kyma.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from kyma.contract.v1.constants import MAX_MESSAGE_BYTES
from kyma.inference.v1 import (
    inference_service_pb2,
    inference_service_pb2_grpc,
    relay_service_pb2,
    relay_service_pb2_grpc,
)
from kyma.ratelimit.v1 import ratelimit_service_pb2, ratelimit_service_pb2_grpc
from kyma.routing.v1 import routing_service_pb2, routing_service_pb2_grpc
from kyma.status.v1 import status_service_pb2, status_service_pb2_grpc

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    # Clients reconnect at least every 5 minutes (jittered; calls in flight finish on the old
    # connection), and a bridge that reaches the cores by name then resolves it again: cores
    # added since (a scale-up) get calls too.
    ("grpc.max_connection_age_ms", 300_000),
]

# Every service the core serves (health and reflection aside), by full name.
SERVICES = [
    inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    relay_service_pb2.DESCRIPTOR.services_by_name["InferenceRelay"].full_name,
    routing_service_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name,
    accounting_service_pb2.DESCRIPTOR.services_by_name["AccountingService"].full_name,
    signup_service_pb2.DESCRIPTOR.services_by_name["SignupService"].full_name,
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    ADMIN_SERVICE.full_name,
    billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
    ratelimit_service_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name,
    status_service_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
]


@dataclass(frozen=True)
class Server:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    # Told first when the core stops, so that the bridges' relay streams drain.
    relay: InferenceRelayServicer


class CannotListen(Exception):
    """The core's gRPC server could not bind its address."""


def build_server(
    host: str,
    port: int,
    clock: Clock,
    *,
    admin_token: str,
    pipeline: InferencePipeline,
    storage: Storage,
    limits: Limits,
    routing: Routing,
    accounts: Accounts,
    billing: Billing,
    status: Status,
    public_base_url: str = "http://127.0.0.1:8000",
    stored_responses: StoredResponses,
) -> Server:
    translation = ErrorTranslation()
    server = grpc.aio.server(
        options=GRPC_OPTIONS,
        # Outermost first: the admin token before anything runs, then error translation.
        interceptors=[AdminToken(SecretStr(admin_token), [ADMIN_SERVICE.full_name]), translation],
    )
    authenticator = accounts.authenticator
    inference = InferenceServicer(pipeline, accounts.authenticator, stored_responses)
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(inference, server)
    # The same calls, many on one stream (the bridge's way), behind the same translation.
    relay = InferenceRelayServicer(inference_methods(inference, translation))
    relay_service_pb2_grpc.add_InferenceRelayServicer_to_server(relay, server)
    routing_service_pb2_grpc.add_RoutingServiceServicer_to_server(
        RoutingServicer(authenticator, routing.catalogue), server
    )
    accounting_service_pb2_grpc.add_AccountingServiceServicer_to_server(
        AccountingServicer(
            accounts.callers,
            accounts.store,
            storage.ledger,
            billing.usage,
            accounts.enforcement,
            clock,
            accounts.referrals,
            RequestRecords(storage.reads, storage.retention),
            terms=accounts.terms,
            catalogue=routing.catalogue,
            logs=RequestLogQuery(storage.reads),
            low_balance=billing.low_balance,
            terms_link=f"{public_base_url.rstrip('/')}/terms",
            tiers=limits.tiers,
        ),
        server,
    )
    admin = AdminServicer(
        AccountAdmin(
            accounts.store, authenticator, accounts.directory, accounts.enforcement, storage.ledger
        ),
        CreditAdmin(storage.ledger, storage.engine, clock),
        LimitAdmin(accounts.store, authenticator, limits.limiter, limits.tiers, storage.ledger),
        EnforcementAdmin(accounts.enforcement, accounts.store, authenticator, storage.ledger),
        CatalogueAdmin(routing.router, routing.catalogue),
        ReferralAdmin(accounts.referrals, accounts.referral_review),
        LogAdmin(RequestLogQuery(storage.engine), storage.retention),
        PaymentAdmin(billing.webhooks),
        IncidentAdmin(status.incidents, status.report),
    )
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)  # type: ignore[arg-type]
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
        BillingServicer(
            accounts.callers, accounts.store, billing.checkout, billing.webhooks, clock=clock
        ),
        server,
    )
    ratelimit_service_pb2_grpc.add_RateLimitServiceServicer_to_server(
        RateLimitServicer(authenticator, limits.limiter), server
    )
    signup_service_pb2_grpc.add_SignupServiceServicer_to_server(
        SignupServicer(accounts.signup, bridge_token=accounts.bridge_token, terms=accounts.terms),
        server,
    )
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(
        SessionServicer(
            accounts.signin,
            accounts.sessions,
            accounts.callers,
            bridge_token=accounts.bridge_token,
        ),
        server,
    )
    status_service_pb2_grpc.add_StatusServiceServicer_to_server(
        StatusServicer(status.report), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # gRPC says only that it failed
        raise CannotListen(
            f"cannot listen on {host}:{port} (KYMA_GRPC_HOST, KYMA_GRPC_PORT): the port is "
            "taken, or the address is not one of this machine's"
        ) from None
    return Server(server=server, health=health_servicer, port=bound, relay=relay)
