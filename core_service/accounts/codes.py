"""One-time codes mailed to an address: what sign-up and sign-in both prove an address with.

Codes are six digits, kept only as a hash, valid for `code_ttl` and for one use, and only for
what they were sent for (`purpose`: a sign-up code does not sign anyone in). One code per
person (canonical address): a new request replaces the last. A code dies after `max_attempts`
wrong guesses, exactly, however many arrive at once and on however many nodes: a guess is
counted by one conditional UPDATE (`attempts < max`) before it is judged, and one that finds no
attempt left is refused unjudged. Guessing is also limited per client address, and so are code
requests (per address and per person), through the rate-limit store every node shares (atomic
admissions), so a code space of a million is never searchable. An IPv6 client counts by its
/64, the block one subscriber is given.

Failure semantics: a wrong, expired, dead or other-purpose code gets one message (a guesser
learns nothing); past a limit, RateLimited (429); a mail that cannot be sent, MailUnavailable
(503) — the code was stored, and a new request replaces it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.accounts.emails import Email
from core_service.clock import Clock
from core_service.db.models import SignupCode
from core_service.errors import InvalidRequest, MailUnavailable, RateLimited
from core_service.mail.mailer import Mail, Mailer, MailError
from core_service.ratelimit.store import Limit, RateLimitStore, rate_key

WRONG_CODE = "That code is wrong or has expired. Check the latest mail, or ask for a new code."
SIGNUP = "signup"
SIGNIN = "signin"
_LABEL = {SIGNUP: "sign-up", SIGNIN: "sign-in"}


@dataclass(frozen=True)
class CodePolicy:
    code_ttl: timedelta
    max_attempts: int
    requests_per_ip_per_minute: int
    requests_per_email_per_minute: int
    verifications_per_ip_per_minute: int


# The name sign-up's settings have always had.
SignupPolicy = CodePolicy


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


class EmailCodes:
    def __init__(
        self,
        engine: AsyncEngine,
        mailer: Mailer,
        limits: RateLimitStore,
        clock: Clock,
        policy: CodePolicy,
    ) -> None:
        self._engine = engine
        self._mailer = mailer
        self._limits = limits
        self._clock = clock
        self.policy = policy

    @property
    def ttl_seconds(self) -> int:
        return int(self.policy.code_ttl.total_seconds())

    async def _limit(self, *limits: Limit, message: str) -> None:
        decision = await self._limits.admit(limits)
        if not decision.admitted:
            raise RateLimited(
                f"{message} Try again in {decision.retry_after_s}s.",
                retry_after_seconds=decision.retry_after_s,
            )

    async def count_request(self, purpose: str, email: Email, ip: str | None) -> None:
        """Count a code request against the per-address and per-person limits (429 beyond)."""
        await self._limit(
            Limit(
                rate_key(purpose, "ip", address_key(ip)),
                self.policy.requests_per_ip_per_minute,
                1,
            ),
            Limit(
                rate_key(purpose, "email", email.canonical),
                self.policy.requests_per_email_per_minute,
                1,
            ),
            message=f"Too many {_LABEL[purpose]} requests.",
        )

    async def issue(self, purpose: str, email: Email, **extra: Any) -> None:
        """Store a new code for the person (replacing theirs) and mail it. `extra` are the
        sign-up's own columns (referral code, signals)."""
        label = _LABEL[purpose]
        code = f"{secrets.randbelow(10**6):06d}"
        now = self._clock.now()
        values = {
            "referral_code": None,
            "signup_ip": None,
            "signup_fingerprint": None,
            **extra,
            "email_canonical": email.canonical,
            "email": email.address,
            "code_hash": _code_hash(email.canonical, code),
            "expires_at": now + self.policy.code_ttl,
            "failed_attempts": 0,
            "purpose": purpose,
            "created_at": now,
        }
        async with self._engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(SignupCode).values(**values)
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[SignupCode.email_canonical],
                    set_={k: statement.excluded[k] for k in values if k != "email_canonical"},
                )
            )
        minutes = self.ttl_seconds // 60
        try:
            await self._mailer.send(
                Mail(
                    to=email.address,
                    subject=f"Your Kyma {label} code: {code}",
                    text=(
                        f"Your Kyma {label} code is {code}\n\n"
                        f"It is valid for {minutes} minutes. If you did not ask for it, ignore this mail.\n"
                    ),
                )
            )
        except MailError:
            raise MailUnavailable(
                f"We could not send the {label} mail. Please try again shortly."
            ) from None

    async def redeem(self, purpose: str, email: Email, code: str, *, ip: str | None) -> Any:
        """Use up the person's code: its row (email as given, sign-up signals, referral code),
        or InvalidRequest with one message for every way it can be wrong."""
        await self._limit(
            Limit(
                rate_key("verify", "ip", address_key(ip)),
                self.policy.verifications_per_ip_per_minute,
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
                        SignupCode.failed_attempts < self.policy.max_attempts,
                        SignupCode.expires_at > self._clock.now(),
                        SignupCode.purpose == purpose,
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
            if row is None:  # no code, expired, out of attempts, or sent for something else
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
        return row
