"""Referral codes: eight characters from an alphabet without look-alikes (no 0/O, 1/I)."""

from __future__ import annotations

import secrets

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
LENGTH = 8


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalize(code: str) -> str | None:
    """The code as stored, or None when it cannot be one."""
    cleaned = code.strip().upper()
    if len(cleaned) != LENGTH or any(ch not in ALPHABET for ch in cleaned):
        return None
    return cleaned
