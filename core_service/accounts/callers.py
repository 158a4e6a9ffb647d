"""Who is calling the account's own endpoints (AccountingService, checkout, SessionService):
an API key, or a web session (SPEC §3). The key wins when a call carries both. Inference never
comes here: it takes keys only (`auth.py`).

A call that changes something and is authenticated by a session must carry the session's CSRF
token (compared in constant time): a browser tricked into sending the cookie from another site
cannot read the token, so it cannot make the call (403 csrf_failed). A key needs no such token
(a page on another site cannot make a browser send it).

A key its owner limited (spend cap, expiry or allow-list) may read the account but not manage
keys: a limited key must never be able to make itself, or another key, unlimited.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from core_service.accounts.auth import Authenticator
from core_service.accounts.sessions import SIGNED_OUT, SessionOwner, Sessions
from core_service.errors import CsrfFailed, InvalidSession, PermissionDenied
from core_service.values import Principal


@dataclass(frozen=True)
class Credentials:
    """What a call carried: `authorization` ("Bearer <key>"), a session token, a CSRF token."""

    authorization: str | None = None
    session: str | None = None
    csrf: str | None = None


@dataclass(frozen=True)
class Caller:
    principal: Principal
    session: SessionOwner | None = None


class Callers:
    def __init__(self, keys: Authenticator, sessions: Sessions) -> None:
        self._keys = keys
        self._sessions = sessions

    async def identify(self, credentials: Credentials, *, changes: bool = False) -> Caller:
        """The caller, or the error to refuse it with. `changes`: the call changes something
        (a session must then prove it is not forged, with its CSRF token)."""
        if credentials.authorization or not credentials.session:
            return Caller(await self._keys.authenticate(credentials.authorization))
        owner = await self.session(credentials, changes=changes)
        self._keys.note_terms(owner.account)
        principal = self._keys.principal_for(owner.account)
        return Caller(
            Principal(
                account_id=principal.account_id,
                key_id="",
                account_status=principal.account_status,
                tier=principal.tier,
                pinned=principal.pinned,
                status_reason=principal.status_reason,
                suspended_until=principal.suspended_until,
                session_id=owner.session_id,
            ),
            owner,
        )

    def forget_key(self, key_hash: bytes) -> None:
        """Drop this node's cached lookup of a key (it was just revoked here)."""
        self._keys.forget(key_hash)

    async def session(self, credentials: Credentials, *, changes: bool = False) -> SessionOwner:
        """The calling session itself (a key is no session), its CSRF token checked for a
        call that `changes` something."""
        if not credentials.session:
            raise InvalidSession(SIGNED_OUT)
        owner = await self._sessions.authenticate(credentials.session)
        if changes and not (
            credentials.csrf
            and hmac.compare_digest(credentials.csrf.encode(), owner.csrf_token.encode())
        ):
            raise CsrfFailed(
                "This change needs the session's CSRF token in the x-csrf-token header "
                "(GET /v1/auth/session gives it)."
            )
        return owner


def may_manage_keys(principal: Principal) -> None:
    """Refuse key management to a key its owner limited."""
    if principal.session_id is None and principal.key_limits.any:
        raise PermissionDenied(
            "This API key is limited (a spend cap, an expiry or a model allow-list), so it "
            "cannot create, change or revoke keys. Use an unlimited key or the console."
        )
