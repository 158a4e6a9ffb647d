"""Sign-in by a code mailed to the account's address (SPEC §3): the same code machinery and
limits as sign-up (`codes.py`), ending in a new web session (`sessions.py`), audited.

Asking for a code answers the same whether or not the address has an account (a code goes out
only if it has one), and is counted against the same per-address and per-person limits either
way. A session token the browser already held is never kept: completing a sign-in always mints
a new session, and ends the one the browser presented, if any.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.accounts.codes import SIGNIN, WRONG_CODE, EmailCodes
from core_service.accounts.emails import parse_email
from core_service.accounts.sessions import NewSession, Sessions
from core_service.db.models import Account
from core_service.errors import InvalidRequest, InvalidSession


class SigninFlow:
    def __init__(self, engine: AsyncEngine, codes: EmailCodes, sessions: Sessions) -> None:
        self._engine = engine
        self._codes = codes
        self._sessions = sessions

    async def _account(self, canonical: str) -> tuple[str, str] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(Account.id, Account.email).where(Account.email_canonical == canonical)
                )
            ).first()
        return (row.id, row.email) if row is not None else None

    async def start(self, raw_email: str, *, ip: str | None) -> int:
        """Mail a sign-in code if the address has an account; returns how long codes last."""
        email = parse_email(raw_email)
        await self._codes.count_request(SIGNIN, email, ip)
        if await self._account(email.canonical) is not None:
            await self._codes.issue(SIGNIN, email)
        return self._codes.ttl_seconds

    async def complete(
        self, raw_email: str, code: str, *, ip: str | None, replacing: str | None = None
    ) -> NewSession:
        email = parse_email(raw_email)
        await self._codes.redeem(SIGNIN, email, code, ip=ip)
        account = await self._account(email.canonical)
        if account is None:  # the code was right, but the account is gone since
            raise InvalidRequest(WRONG_CODE, param="code")
        started = await self._sessions.start(account[0], account[1], ip=ip)
        if replacing:
            try:
                await self._sessions.end(await self._sessions.authenticate(replacing))
            except InvalidSession:
                pass  # nothing live to end
        return started
