"""Sign-up by email: a one-time code to the address (`codes.py`: the same machinery and limits
sign-in uses), then the account and its first key — or, for the console, a web session instead
of a key. The terms of service the person accepted are recorded on the account: the version
they name must be the current one; a sign-up that names none accepts the current terms.

One account per person: addresses are compared in canonical form (`accounts/emails.py`) both
when a code is requested and when the account is made. Addresses at disposable-mail providers
are refused (400, `email`) when a code is requested. Every refusal is a `KymaError`: 400 for a
bad address or a wrong/expired/dead code (one message for all three, so a guesser learns nothing),
409 for a person who already has an account, 429 past a limit, 503 when the mail cannot be sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.accounts.codes import SIGNUP, EmailCodes, address_key
from core_service.accounts.emails import Email, is_disposable, parse_email
from core_service.accounts.sessions import NewSession, Sessions
from core_service.accounts.store import AccountStore, NewAccount
from core_service.db.models import Account
from core_service.errors import AlreadyExists, InvalidRequest
from core_service.referrals.program import ReferralProgram
from core_service.terms import TermsCatalogue

__all__ = ["SignupFlow", "SignedUp", "address_key", "clean_signal"]

MAX_FINGERPRINT = 200
MAX_REFERRAL_CODE = 64


def clean_signal(value: str | None, limit: int) -> str | None:
    if not value:
        return None
    value = value.strip()[:limit]
    return value if value.isprintable() and value else None


@dataclass(frozen=True)
class SignedUp:
    created: NewAccount
    session: NewSession | None  # when the sign-up asked for one instead of a key


class SignupFlow:
    def __init__(
        self,
        engine: AsyncEngine,
        store: AccountStore,
        codes: EmailCodes,
        referrals: ReferralProgram,
        terms: TermsCatalogue,
        sessions: Sessions,
    ) -> None:
        self._referrals = referrals
        self._engine = engine
        self._store = store
        self._codes = codes
        self._terms = terms
        self._sessions = sessions

    async def _exists(self, email: Email) -> bool:
        async with self._engine.connect() as conn:
            found = await conn.scalar(
                select(Account.id).where(Account.email_canonical == email.canonical)
            )
        return found is not None

    async def start(
        self, raw_email: str, *, referral_code: str, ip: str | None, fingerprint: str | None
    ) -> int:
        """Mail a code; returns how many seconds it stays valid."""
        email = parse_email(raw_email)
        if is_disposable(email):
            raise InvalidRequest(
                "Addresses at disposable-mail providers cannot be used for a Kyma account. "
                "Sign up with an address you keep.",
                param="email",
            )
        referral = referral_code.strip()
        if len(referral) > MAX_REFERRAL_CODE or not referral.isprintable():
            raise InvalidRequest("That referral code is not valid.", param="referral_code")
        await self._referrals.check_code(referral)
        await self._codes.count_request(SIGNUP, email, ip)
        if await self._exists(email):
            raise AlreadyExists(
                "An account already exists for this email address: Kyma allows one account per "
                "person. Sign in instead: a code mailed to the address (POST /v1/auth/signin).",
                param="email",
            )
        await self._codes.issue(
            SIGNUP,
            email,
            referral_code=referral or None,
            signup_ip=clean_signal(ip, 64),
            signup_fingerprint=clean_signal(fingerprint, MAX_FINGERPRINT),
        )
        return self._codes.ttl_seconds

    def _accepted_terms(self, version: str) -> str:
        current = self._terms.current.version
        version = version.strip()
        if version and version != current:
            raise InvalidRequest(
                f"The current terms of service are version {current}; accept those "
                f'(accepted_terms_version: "{current}").',
                param="accepted_terms_version",
            )
        return current

    async def complete(
        self,
        raw_email: str,
        code: str,
        *,
        ip: str | None,
        session: bool = False,
        accepted_terms_version: str = "",
    ) -> SignedUp:
        email = parse_email(raw_email)
        terms_version = self._accepted_terms(accepted_terms_version)
        row = await self._codes.redeem(SIGNUP, email, code, ip=ip)
        try:
            created = await self._store.create_account(
                Email(address=row.email, canonical=email.canonical),
                signup_ip=row.signup_ip,
                signup_fingerprint=row.signup_fingerprint,
                referred_by=row.referral_code,
                with_key=not session,
                terms_version=terms_version,
            )
        except AlreadyExists:
            raise AlreadyExists(
                "An account already exists for this email address: Kyma allows one account per person.",
                param="email",
            ) from None
        started = None
        if session:
            started = await self._sessions.start(
                created.account.id, created.account.email, ip=ip, how="signed up"
            )
        return SignedUp(created, started)
