"""Billing fixtures: a real database (SQLite file and a fresh PostgreSQL database) and a fake Stripe
API served over real HTTP on loopback (`tests/fakes/stripe_api.py`)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from decimal import Decimal

import grpc
import pytest
import pytest_asyncio
import stripe
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.accounts.auth import Authenticator
from core_service.accounts.callers import Callers
from core_service.accounts.emails import parse_email
from core_service.accounts.sessions import SessionPolicy, Sessions
from core_service.accounts.store import AccountStore
from core_service.billing.checkout import CheckoutSessions
from core_service.billing.webhooks import StripeWebhooks
from core_service.clock import SystemClock
from core_service.db.engine import create_engine, migrate, session_factory
from core_service.edge.billing import BillingServicer
from core_service.edge.interceptors import ErrorTranslation
from core_service.ratelimit.tiers import TierTable
from core_service.values import DEFAULT_TIERS
from kyma.billing.v1 import billing_service_pb2_grpc
from tests.fakes.postgres import asyncpg_url, fresh_database
from tests.fakes.stripe_api import (
    API_KEY,
    WEBHOOK_SECRET,
    RunningFakeStripe,
    running_fake_stripe,
)

NewAccount = Callable[[], Awaitable[tuple[str, str]]]


@pytest.fixture(scope="session")
def billing_pg_url() -> Iterator[str]:
    """A database of its own on the local PostgreSQL, dropped at the end of the session."""
    with fresh_database("kyma_billing") as url:
        yield asyncpg_url(url)


@pytest_asyncio.fixture(scope="session", params=["sqlite", "postgres"])
async def billing_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AsyncEngine]:
    """A migrated engine per backend, shared by the session; tests keep apart by fresh ids."""
    if request.param == "postgres":
        url = request.getfixturevalue("billing_pg_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('billing') / 'kyma.db'}"
    engine = create_engine(url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def account_store(billing_engine: AsyncEngine) -> AccountStore:
    # No welcome bonus: balances then show purchases alone.
    return AccountStore(session_factory(billing_engine), SystemClock(), welcome_bonus_nanos=0)


@pytest.fixture
def new_account(account_store: AccountStore) -> NewAccount:
    """Creates a real account (with its balance row); returns (account id, API key)."""

    async def create() -> tuple[str, str]:
        made = await account_store.create_account(
            parse_email(f"buyer-{secrets.token_hex(6)}@example.com")
        )
        return made.account.id, made.secret

    return create


@pytest_asyncio.fixture(scope="session")
async def _fake_stripe_server() -> AsyncIterator[RunningFakeStripe]:
    # One server for the session: uvicorn takes ~0.2 s to stop, too long to pay per test.
    async with running_fake_stripe() as running:
        yield running


@pytest.fixture
def fake_stripe(_fake_stripe_server: RunningFakeStripe) -> RunningFakeStripe:
    """The fake Stripe API, with no recorded requests, sessions or failure mode."""
    _fake_stripe_server.api.reset()
    return _fake_stripe_server


@pytest_asyncio.fixture
async def stripe_client(fake_stripe: RunningFakeStripe) -> AsyncIterator[stripe.StripeClient]:
    """The official client, pointed at the fake, over its async httpx transport."""
    http = stripe.HTTPXClient(timeout=5)
    yield stripe.StripeClient(
        API_KEY, base_addresses={"api": fake_stripe.url}, http_client=http, max_network_retries=0
    )
    await http.close_async()


@pytest.fixture
def webhooks(billing_engine: AsyncEngine) -> StripeWebhooks:
    return StripeWebhooks(billing_engine, SystemClock(), webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
def checkout(stripe_client: stripe.StripeClient) -> CheckoutSessions:
    return CheckoutSessions(
        stripe_client,
        success_url="http://127.0.0.1:8000/billing/success?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://127.0.0.1:8000/billing/cancelled",
        min_usd=Decimal("5"),
        max_usd=Decimal("10000"),
    )


@pytest_asyncio.fixture
async def billing_stub(
    account_store: AccountStore,
    checkout: CheckoutSessions,
    webhooks: StripeWebhooks,
    billing_engine: AsyncEngine,
) -> AsyncIterator[billing_service_pb2_grpc.BillingServiceStub]:
    """BillingService on a real grpc.aio server (port 0), wired as the core wires it."""
    authenticator = Authenticator(
        account_store, SystemClock(), TierTable(DEFAULT_TIERS), cache_seconds=0
    )
    sessions = Sessions(
        billing_engine,
        billing_engine,
        SystemClock(),
        SessionPolicy(lifetime=timedelta(days=7), idle=timedelta(days=1)),
    )
    server = grpc.aio.server(interceptors=[ErrorTranslation()])
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
        BillingServicer(Callers(authenticator, sessions), account_store, checkout, webhooks),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield billing_service_pb2_grpc.BillingServiceStub(channel)
    await server.stop(grace=None)
