"""Accounts: the account store, key authentication, web sessions and who is calling the
account's own endpoints, sign-up and sign-in by mailed code, the terms of service, referrals
and enforcement, and the bridge credential that decides whose word on a sign-up's client
address the core takes (KYMA_BRIDGE_TOKEN, or data_dir/bridge_token made on first start; a
token that cannot be read or made stops the start-up)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.account_events import AccountEvents, Event
from core_service.accounts.auth import Authenticator
from core_service.accounts.callers import Callers
from core_service.accounts.codes import CodePolicy, EmailCodes
from core_service.accounts.sessions import SessionPolicy, Sessions
from core_service.accounts.signin import SigninFlow
from core_service.accounts.signup import SignupFlow
from core_service.accounts.store import AccountStore
from core_service.admin.directory import AccountDirectory
from core_service.admin.enforcement import Enforcement
from core_service.billing.pricing import usd_to_nanos
from core_service.clock import Clock
from core_service.db.engine import session_factory
from core_service.mail.factory import mailer_from_url
from core_service.mail.mailer import Mailer
from core_service.ratelimit.store import RateLimitStore
from core_service.ratelimit.tiers import TierTable
from core_service.referrals.program import ReferralPolicy, ReferralProgram
from core_service.settings import Settings
from core_service.terms import TermsCatalogue


@dataclass(frozen=True)
class Accounts:
    events: AccountEvents
    store: AccountStore
    authenticator: Authenticator
    sessions: Sessions
    callers: Callers
    signup: SignupFlow
    signin: SigninFlow
    terms: TermsCatalogue
    mailer: Mailer
    referrals: ReferralProgram
    enforcement: Enforcement
    directory: AccountDirectory
    bridge_token: SecretStr  # what the operator's bridge presents (see edge/signup.py)

    def apply(self, event: Event) -> None:
        """An account event from the feed, for every cache that holds accounts."""
        self.authenticator.apply(event)
        self.sessions.apply(event)

    async def flush_last_used(self) -> int:
        """Keys' and sessions' last use (and terms in use), written in a few statements."""
        return await self.authenticator.flush_last_used() + await self.sessions.flush_last_used()


def open_accounts(
    settings: Settings,
    clock: Clock,
    stack: contextlib.AsyncExitStack,
    *,
    engine: AsyncEngine,
    reads: AsyncEngine,
    tiers: TierTable,
    limits_store: RateLimitStore,
) -> Accounts:
    referrals = ReferralProgram(
        engine,
        clock,
        ReferralPolicy(
            enabled=settings.referrals_enabled,
            tokens_required=settings.referral_tokens_required,
            reward_nanos=usd_to_nanos(settings.referral_reward_usd),
            link_base=settings.public_base_url,
        ),
    )
    events = AccountEvents(engine, reads, clock)
    store = AccountStore(
        session_factory(engine),
        clock,
        welcome_bonus_nanos=usd_to_nanos(settings.welcome_bonus_usd),
        referrals=referrals,
        reads=session_factory(reads),
        events=events,
    )
    mailer = mailer_from_url(
        settings.mail_url, sender=settings.mail_sender, logger=logging.getLogger("kyma.mail")
    )
    stack.push_async_callback(mailer.close)
    terms = (
        TermsCatalogue.from_directory(settings.terms_dir)
        if settings.terms_dir is not None
        else TermsCatalogue.packaged()
    )
    codes = EmailCodes(
        engine,
        mailer,
        limits_store,
        clock,
        CodePolicy(
            code_ttl=timedelta(seconds=settings.signup_code_ttl_seconds),
            max_attempts=settings.signup_max_attempts,
            requests_per_ip_per_minute=settings.signups_per_ip_per_minute,
            requests_per_email_per_minute=settings.signups_per_email_per_minute,
            verifications_per_ip_per_minute=settings.verifications_per_ip_per_minute,
        ),
    )
    sessions = Sessions(
        engine,
        reads,
        clock,
        SessionPolicy(
            lifetime=timedelta(seconds=settings.session_lifetime_seconds),
            idle=timedelta(seconds=settings.session_idle_seconds),
        ),
        events=events,
        cache_seconds=settings.key_cache_seconds,
    )
    authenticator = Authenticator(
        store,
        clock,
        tiers,
        cache_seconds=settings.key_cache_seconds,
        terms_version=terms.current.version,
    )
    return Accounts(
        events=events,
        store=store,
        authenticator=authenticator,
        sessions=sessions,
        callers=Callers(authenticator, sessions),
        signup=SignupFlow(engine, store, codes, referrals, terms, sessions),
        signin=SigninFlow(engine, codes, sessions),
        terms=terms,
        mailer=mailer,
        referrals=referrals,
        enforcement=Enforcement(engine, clock, events=events),
        directory=AccountDirectory(engine),
        bridge_token=SecretStr(settings.bridge_credential()),
    )
