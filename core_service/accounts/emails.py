"""Email addresses: validation, the canonical form that makes one account per person, and
disposable-address domains.

Validation is email-validator's (syntax and IDNA normalisation, no DNS on the request path);
an invalid address is an `InvalidRequest` naming `email`. The canonical form folds what
reaches the same mailbox:

- case everywhere;
- `+tags` at providers that deliver them to the base address;
- dots in Gmail local parts (googlemail.com is gmail.com);
- Fastmail's subdomain addressing: `anything@user.fastmail.com` is `user@fastmail.com` (and,
  as Fastmail spells a username's `_` as `-` in a subdomain, `_` and `-` are one character there);
- the Proton family: protonmail.com, protonmail.ch and pm.me are proton.me, and Proton treats
  `.`, `_` and `-` in a username as transparent (`john.doe` is `johndoe`).

Folding more than a provider does only ever refuses a second sign-up that might have been a
different person; folding less lets one mailbox farm welcome bonuses, so the rules follow what
the providers document. Canonical forms are computed when an address is parsed: accounts made
before a rule existed keep the canonical form they were given.

Disposable domains come from the `disposable-email-domains` package (a maintained community
list, pinned in pyproject.toml; upgrading the pin updates the list). A subdomain of a listed
domain is disposable too.
"""

from __future__ import annotations

from dataclasses import dataclass

from disposable_email_domains import blocklist as _DISPOSABLE_DOMAINS
from email_validator import EmailNotValidError, validate_email

from core_service.errors import InvalidRequest

MAX_EMAIL_LENGTH = 254

_GMAIL_DOMAINS = {"gmail.com", "googlemail.com"}
_PROTON = "proton.me"
_PROTON_DOMAINS = {_PROTON, "protonmail.com", "protonmail.ch", "pm.me"}
# Fastmail's own domains, where `anything@user.<domain>` is delivered to `user@<domain>`.
# Different domains are different mailboxes there (alice@fastmail.com is not alice@sent.com).
_FASTMAIL_DOMAINS = {
    "fastmail.com",
    "fastmail.fm",
    "fastmail.cn",
    "fastmail.co.uk",
    "fastmail.com.au",
    "fastmail.de",
    "fastmail.es",
    "fastmail.in",
    "fastmail.jp",
    "fastmail.nl",
    "fastmail.se",
    "fastmail.to",
    "fastmail.tw",
    "fastmail.us",
    "messagingengine.com",
    "sent.com",
}
# Providers known to deliver `local+tag@domain` to `local@domain`.
_PLUS_TAG_DOMAINS = (
    _GMAIL_DOMAINS
    | _PROTON_DOMAINS
    | _FASTMAIL_DOMAINS
    | {
        "outlook.com",
        "hotmail.com",
        "live.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "yahoo.com",
        "zoho.com",
        "gmx.com",
    }
)


@dataclass(frozen=True)
class Email:
    address: str  # as normalised by the validator, for sending mail and display
    canonical: str  # the person key (ASCII: IDNA domains in their xn-- form)


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


def _fastmail_base(domain: str) -> str | None:
    """The Fastmail domain that `domain` is, or is a subdomain of."""
    for base in _FASTMAIL_DOMAINS:
        if domain == base or domain.endswith("." + base):
            return base
    return None


def canonicalize(address: str) -> str:
    local, _, domain = address.rpartition("@")
    local, domain = local.lower(), domain.lower()
    if domain == "googlemail.com":
        domain = "gmail.com"
    if domain in _PROTON_DOMAINS:
        domain = _PROTON
    fastmail = _fastmail_base(domain)
    if fastmail is not None and domain != fastmail:
        # Subdomain addressing: the label just left of the Fastmail domain is the username,
        # and what stands before the @ is only a tag.
        local, domain = domain[: -len(fastmail) - 1].rsplit(".", 1)[-1], fastmail
    if domain in _PLUS_TAG_DOMAINS:
        local = local.split("+", 1)[0]
    if domain in _GMAIL_DOMAINS:
        local = local.replace(".", "")
    if domain == _PROTON:
        local = local.replace(".", "").replace("_", "").replace("-", "")
    if fastmail is not None:
        local = local.replace("_", "-")
    return f"{local}@{domain}"


def is_disposable(email: Email) -> bool:
    """Whether the address is at a disposable-address provider (or a subdomain of one). The
    canonical form's domain is the ASCII one the list uses; folding changes only the domains of
    the providers above, none of them disposable."""
    labels = email.canonical.rpartition("@")[2].split(".")
    return any(".".join(labels[i:]) in _DISPOSABLE_DOMAINS for i in range(len(labels) - 1))
