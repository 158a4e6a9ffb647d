"""Email addresses: validation, and the canonical form that makes one account per person.

Validation is email-validator's (syntax and IDNA normalisation, no DNS on the request path).
The canonical form folds what reaches the same mailbox: case everywhere, `+tags` at providers
that deliver them to the base address, and dots in Gmail local parts (googlemail.com is gmail.com).
"""

from __future__ import annotations

from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from core_service.errors import InvalidRequest

MAX_EMAIL_LENGTH = 254

_GMAIL_DOMAINS = {"gmail.com", "googlemail.com"}
# Providers known to deliver `local+tag@domain` to `local@domain`.
_PLUS_TAG_DOMAINS = _GMAIL_DOMAINS | {
    "outlook.com",
    "hotmail.com",
    "live.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "fastmail.com",
    "fastmail.fm",
    "protonmail.com",
    "proton.me",
    "pm.me",
    "yahoo.com",
    "zoho.com",
    "gmx.com",
}


@dataclass(frozen=True)
class Email:
    address: str  # as normalised by the validator, for sending mail and display
    canonical: str  # the person key


def parse_email(raw: object) -> Email:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidRequest("An email address is required.", param="email")
    if len(raw) > MAX_EMAIL_LENGTH:
        raise InvalidRequest("That email address is too long.", param="email")
    try:
        info = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidRequest(f"That email address is not valid: {exc}", param="email") from None
    return Email(
        address=info.normalized, canonical=canonicalize(info.ascii_email or info.normalized)
    )


def canonicalize(address: str) -> str:
    local, _, domain = address.rpartition("@")
    local, domain = local.lower(), domain.lower()
    if domain == "googlemail.com":
        domain = "gmail.com"
    if domain in _PLUS_TAG_DOMAINS:
        local = local.split("+", 1)[0]
    if domain in _GMAIL_DOMAINS:
        local = local.replace(".", "")
    return f"{local}@{domain}"
