"""The admin token: configured, or generated once into the data directory."""

from __future__ import annotations

import secrets

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
