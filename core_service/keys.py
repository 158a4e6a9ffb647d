"""API key format: `ky_` + 32 random base62 characters + a 6-character base62 CRC32 checksum.

Like GitHub's tokens, the fixed prefix lets secret scanners find leaked keys, and the checksum
lets Kyma refuse a mistyped or made-up key without touching the database. Keys carry about
190 bits of entropy, so a plain SHA-256 is a sufficient stored form: nothing of the key is kept
but its hash and its display prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib

PREFIX = "ky_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_LENGTH = 32
_CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + _RANDOM_LENGTH + _CHECKSUM_LENGTH
DISPLAY_PREFIX_LENGTH = len(PREFIX) + 6
# The shape, checked in C on every request before the checksum (a Python loop over the
# characters was most of this check's cost).
_SHAPE = re.compile(f"{PREFIX}[0-9A-Za-z]{{{_RANDOM_LENGTH + _CHECKSUM_LENGTH}}}")


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), _CHECKSUM_LENGTH)


def generate() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LENGTH))
    return f"{PREFIX}{body}{_checksum(body)}"


def is_well_formed(key: str) -> bool:
    """True when `key` has Kyma's shape and a valid checksum (no secret comparison involved)."""
    if len(key) != KEY_LENGTH or _SHAPE.fullmatch(key) is None:
        return False
    rest = key[len(PREFIX) :]
    body, checksum = rest[:_RANDOM_LENGTH], rest[_RANDOM_LENGTH:]
    return hmac.compare_digest(_checksum(body), checksum)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]
