"""Names account holders give their keys."""

from __future__ import annotations

from core_service.errors import InvalidRequest

MAX_KEY_NAME = 100


def key_name(raw: str) -> str:
    name = raw.strip() or "default"
    if len(name) > MAX_KEY_NAME or not name.isprintable():
        raise InvalidRequest(
            f"A key name is up to {MAX_KEY_NAME} printable characters.", param="name"
        )
    return name
