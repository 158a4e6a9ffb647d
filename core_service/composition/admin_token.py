"""The admin token: configured, or generated once into the data directory."""

from __future__ import annotations

from core_service.settings import Settings, shared_token


def resolve_admin_token(settings: Settings) -> str:
    """KYMA_ADMIN_TOKEN, or else the token in data_dir/admin_token, created on first start
    (readable by its owner only) so the embedded default works with no configuration."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    # Created whole and linked into place, so that the cores of several workers starting at
    # once end up with the same token.
    return shared_token(settings.admin_token_file, prefix="kyadm_")
