"""Sign-up by email: a one-time code to the address, then the account and its first key.

Codes are six digits, kept only as a hash, valid for `code_ttl` and for one use; a code dies
after `max_attempts` wrong guesses, exactly, however many arrive at once and on however many
nodes: a guess is counted by one conditional UPDATE (`attempts < max`) before it is judged, and
one that finds no attempt left is refused unjudged. Guessing is also limited per client address,
and so are code requests (per address and per email), through the rate-limit store every node
shares (atomic admissions), so a code space of a million is never searchable. An IPv6 client
counts by its /64, the block one subscriber is given.

One account per person: addresses are compared in canonical form (`accounts/emails.py`) both
when a code is requested and when the account is made. Addresses at disposable-mail providers
are refused (400, `email`) when a code is requested. Every refusal is a `KymaError`: 400 for a
bad address or a wrong/expired/dead code (one message for all three, so a guesser learns nothing),
409 for a person who already has an account, 429 past a limit, 503 when the mail cannot be sent.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.accounts.emails import Email, is_disposable, parse_email
from core_service.accounts.store import AccountStore, NewAccount
from core_service.clock import Clock
from core_service.db.models import Account, SignupCode
from core_service.errors import (
    AlreadyExists,
    InvalidRequest,
    MailUnavailable,
    RateLimited,
)
from core_service.mail.mailer import Mail, Mailer, MailError
from core_service.ratelimit.store import Limit, RateLimitStore, rate_key
from core_service.referrals.program import ReferralProgram

WRONG_CODE = "That code is wrong or has expired. Check the latest mail, or ask for a new code."
MAX_FINGERPRINT = 200
MAX_REFERRAL_CODE = 64


@dataclass(frozen=True)
class SignupPolicy:
    code_ttl: timedelta
    max_attempts: int
    requests_per_ip_per_minute: int
    requests_per_email_per_minute: int
    verifications_per_ip_per_minute: int


def _code_hash(canonical: str, code: str) -> bytes:
    return hashlib.sha256(f"{canonical}\n{code}".encode()).digest()


def address_key(ip: str | None) -> str:
    """What the per-address limits count by: the IPv4 address, or the /64 an IPv6 address is in
    (one subscriber's link gets a whole /64 to rotate through). Not an address: as given."""
    if not ip:
        return "unknown"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def clean_signal(value: str | None, limit: int) -> str | None:
    if not value:
        return None
    value = value.strip()[:limit]
    return value if value.isprintable() and value else None


class SignupFlow:
    def __init__(
        self,
        engine: AsyncEngine,
        store: AccountStore,
        mailer: Mailer,
        limits: RateLimitStore,
        clock: Clock,
        policy: SignupPolicy,
        referrals: ReferralProgram,
    ) -> None:
        self._referrals = referrals
        self._engine = engine
        self._store = store
        self._mailer = mailer
        self._limits = limits
        self._clock = clock
        self._policy = policy

    async def _limit(self, *limits: Limit, message: str) -> None:
        decision = await self._limits.admit(limits)
        if not decision.admitted:
            raise RateLimited(
                f"{message} Try again in {decision.retry_after_s}s.",
                retry_after_seconds=decision.retry_after_s,
            )

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
        await self._limit(
            Limit(
                rate_key("signup", "ip", address_key(ip)),
                self._policy.requests_per_ip_per_minute,
                1,
            ),
            Limit(
                rate_key("signup", "email", email.canonical),
                self._policy.requests_per_email_per_minute,
                1,
            ),
            message="Too many sign-up requests.",
        )
        if await self._exists(email):
            raise AlreadyExists(
                "An account already exists for this email address: Kyma allows one account per "
                "person. Sign in with that account's API key instead.",
                param="email",
            )
        code = f"{secrets.randbelow(10**6):06d}"
        now = self._clock.now()
        values = dict(
            email_canonical=email.canonical,
            email=email.address,
            code_hash=_code_hash(email.canonical, code),
            expires_at=now + self._policy.code_ttl,
            failed_attempts=0,
            referral_code=referral or None,
            signup_ip=clean_signal(ip, 64),
            signup_fingerprint=clean_signal(fingerprint, MAX_FINGERPRINT),
            created_at=now,
        )
        async with self._engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(SignupCode).values(**values)
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[SignupCode.email_canonical],
                    set_={k: statement.excluded[k] for k in values if k != "email_canonical"},
                )
            )
        minutes = int(self._policy.code_ttl.total_seconds() // 60)
        try:
            await self._mailer.send(
                Mail(
                    to=email.address,
                    subject=f"Your Kyma sign-up code: {code}",
                    text=(
                        f"Your Kyma sign-up code is {code}\n\n"
                        f"It is valid for {minutes} minutes. If you did not ask for it, ignore this mail.\n"
                    ),
                )
            )
        except MailError:
            raise MailUnavailable(
                "We could not send the sign-up mail. Please try again shortly."
            ) from None
        return int(self._policy.code_ttl.total_seconds())

    async def complete(self, raw_email: str, code: str, *, ip: str | None) -> NewAccount:
        email = parse_email(raw_email)
        await self._limit(
            Limit(
                rate_key("verify", "ip", address_key(ip)),
                self._policy.verifications_per_ip_per_minute,
                1,
            ),
            message="Too many verification attempts.",
        )
        code = code.strip()
        if not (len(code) == 6 and code.isdigit() and code.isascii()):
            raise InvalidRequest(WRONG_CODE, param="code")
        key = _code_hash(email.canonical, code)
        async with self._engine.begin() as conn:
            # Count the guess before judging it, in one statement that admits it only while
            # attempts are left: PostgreSQL re-checks the condition on the row a concurrent
            # guess just updated, SQLite has one writer at a time, so `max_attempts` concurrent
            # guesses are all that are ever judged. A right guess's count does not matter: it
            # deletes the code.
            row = (
                await conn.execute(
                    update(SignupCode)
                    .where(
                        SignupCode.email_canonical == email.canonical,
                        SignupCode.failed_attempts < self._policy.max_attempts,
                        SignupCode.expires_at > self._clock.now(),
                    )
                    .values(failed_attempts=SignupCode.failed_attempts + 1)
                    .returning(
                        SignupCode.code_hash,
                        SignupCode.email,
                        SignupCode.signup_ip,
                        SignupCode.signup_fingerprint,
                        SignupCode.referral_code,
                    )
                )
            ).one_or_none()
            if row is None:  # no code, expired, or out of attempts
                raise InvalidRequest(WRONG_CODE, param="code")
            right = hmac.compare_digest(row.code_hash, key)
            if right:
                # Single use: only one verification can delete the row it matched.
                used = await conn.execute(
                    delete(SignupCode).where(
                        SignupCode.email_canonical == email.canonical, SignupCode.code_hash == key
                    )
                )
                right = used.rowcount == 1
            # A wrong guess leaves the block normally, so its count is committed.
        if not right:
            raise InvalidRequest(WRONG_CODE, param="code")
        try:
            return await self._store.create_account(
                Email(address=row.email, canonical=email.canonical),
                signup_ip=row.signup_ip,
                signup_fingerprint=row.signup_fingerprint,
                referred_by=row.referral_code,
            )
        except AlreadyExists:
            raise AlreadyExists(
                "An account already exists for this email address: Kyma allows one account per person.",
                param="email",
            ) from None
