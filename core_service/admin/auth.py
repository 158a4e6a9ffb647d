"""The admin token: checked in constant time on every admin call."""

from __future__ import annotations

import hmac
import secrets

from pydantic import SecretStr

from core_service.accounts.auth import bearer_token
from core_service.errors import AdminUnauthenticated, Unauthenticated
from core_service.settings import Settings


def resolve_admin_token(settings: Settings) -> str:
    """KYMA_ADMIN_TOKEN, or else the token in data_dir/admin_token, created on first start
    (readable by its owner only) so the embedded default works with no configuration."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = settings.admin_token_file
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"kyadm_{secrets.token_urlsafe(32)}"
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


class AdminGuard:
    def __init__(self, token: SecretStr) -> None:
        self._token = token.get_secret_value().encode()

    def check(self, authorization: str | None) -> None:
        try:
            given = bearer_token(authorization).encode()
        except Unauthenticated:
            raise AdminUnauthenticated(
                "Admin calls need 'authorization: Bearer <admin token>'."
            ) from None
        if not hmac.compare_digest(given, self._token):
            raise AdminUnauthenticated("The admin token is not valid.")
