"""Outgoing mail: what a mail is, what a backend does with it, and how delivery fails.

Backends live one per file (`log_mailer`, `file_mailer`, `smtp_mailer`); `factory.mailer_from_url`
picks one from `KYMA_MAIL_URL`. `send` either hands the mail on or raises `MailError`, whose
message is safe to log: it never holds a password.
"""

from __future__ import annotations

import email.policy
import email.utils
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol

# Non-ASCII text goes out quoted-printable or base64, so any server takes it without 8BITMIME.
_POLICY = email.policy.default.clone(cte_type="7bit")


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str


class MailError(Exception):
    """Delivery failed; the message says why and never includes a password."""


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None: ...

    async def close(self) -> None: ...


def to_email_message(mail: Mail, *, sender: str, now: datetime) -> EmailMessage:
    """The RFC 5322 message for `mail`; `MailError` if a header would be malformed."""
    message = EmailMessage(policy=_POLICY)
    try:
        message["From"] = sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = email.utils.format_datetime(now)
        # An explicit domain: make_msgid would otherwise ask DNS for this host's name.
        message["Message-ID"] = email.utils.make_msgid(domain=_domain_of(sender))
        message.set_content(mail.text)
    except (ValueError, TypeError) as exc:
        # e.g. a line break in a header (header injection) or an unparsable address.
        raise MailError(f"mail to {mail.to!r} is malformed: {exc}") from None
    return message


def _domain_of(address: str) -> str:
    _, addr = email.utils.parseaddr(address)
    domain = addr.rpartition("@")[2]
    return domain or "kyma.localhost"
