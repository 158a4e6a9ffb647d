"""Identifiers: a short type prefix and 96 random bits, e.g. `acct_5f0c2a…`."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
