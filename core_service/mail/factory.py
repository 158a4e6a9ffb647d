"""`mailer_from_url`: the mail backend named by `KYMA_MAIL_URL`.

- unset, empty or ``log:`` — `LogMailer` (the embedded default: mail goes to the log);
- ``file:///abs/dir`` — `FileMailer` writing one ``.eml`` file per mail into that directory;
- ``smtp://[user:pass@]host[:port][?starttls=true]`` — SMTP, plain or upgraded with STARTTLS
  (port 25 by default, 587 with STARTTLS);
- ``smtps://[user:pass@]host[:port]`` — SMTP over implicit TLS (port 465 by default).

User and password are percent-decoded (write ``@`` as ``%40``). Anything else is a `ValueError`
whose message shows the URL with the password masked.
"""

from __future__ import annotations

import logging
import pathlib
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from core_service.mail.file_mailer import FileMailer
from core_service.mail.log_mailer import LogMailer
from core_service.mail.mailer import Mailer
from core_service.mail.smtp_mailer import SmtpMailer

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def mailer_from_url(url: str | None, *, sender: str, logger: logging.Logger) -> Mailer:
    if url is None or not url.strip():
        return LogMailer(logger)
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"KYMA_MAIL_URL {redact_url(url)!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme == "log":
        if parts.netloc or parts.path or parts.query or parts.fragment:
            raise _invalid(url, "'log:' takes nothing after the colon")
        return LogMailer(logger)
    if scheme == "file":
        return FileMailer(_file_directory(url, parts), sender=sender)
    if scheme in ("smtp", "smtps"):
        return _smtp_mailer(url, parts, sender=sender, logger=logger)
    raise _invalid(
        url, "expected log:, file:///absolute/dir, smtp://host[:port] or smtps://host[:port]"
    )


def redact_url(url: str) -> str:
    """`url` with any password replaced by ``***`` (for messages and logs).

    Errs on the side of masking: everything up to the last ``@`` counts as credentials, even in a
    URL too malformed to parse.
    """
    head, sep, rest = url.partition("://")
    if "@" not in (rest if sep else url):
        return url
    if not sep:
        return "***@" + url.rpartition("@")[2]
    userinfo, _, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{head}://{user}{':***' if colon else ''}@{host}"


def _file_directory(url: str, parts: SplitResult) -> pathlib.Path:
    if parts.netloc not in ("", "localhost"):
        raise _invalid(url, "a file: URL names a local directory: file:///absolute/dir")
    if parts.query or parts.fragment:
        raise _invalid(url, "a file: URL takes no query or fragment")
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise _invalid(url, "a file: URL needs an absolute directory: file:///absolute/dir")
    return pathlib.Path(path)


def _smtp_mailer(
    url: str, parts: SplitResult, *, sender: str, logger: logging.Logger
) -> SmtpMailer:
    implicit_tls = parts.scheme.lower() == "smtps"
    try:
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise _invalid(url, "the port must be a number from 1 to 65535") from None
    if not host:
        raise _invalid(url, "no SMTP host")
    if port == 0:
        raise _invalid(url, "the port must be a number from 1 to 65535")
    if parts.path not in ("", "/") or parts.fragment:
        raise _invalid(url, "an SMTP URL takes no path or fragment")

    starttls = False
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "starttls":
            raise _invalid(url, f"unknown parameter {name!r} (only 'starttls' is understood)")
        if value.lower() in _TRUE:
            starttls = True
        elif value.lower() in _FALSE:
            starttls = False
        else:
            raise _invalid(url, "starttls must be true or false")
    if implicit_tls and starttls:
        raise _invalid(url, "smtps: is already TLS; starttls applies to smtp: only")

    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if (username is None) != (password is None) or username == "":
        raise _invalid(url, "SMTP credentials are written user:password@host")

    if port is None:
        port = 465 if implicit_tls else 587 if starttls else 25
    if password is not None and not implicit_tls and not starttls:
        logger.warning(
            "KYMA_MAIL_URL sends the SMTP password to %s:%d without TLS; use smtps: or ?starttls=true",
            host,
            port,
        )
    return SmtpMailer(
        host,
        port,
        username=username,
        password=password,
        starttls=starttls,
        use_tls=implicit_tls,
        sender=sender,
    )


def _invalid(url: str, reason: str) -> ValueError:
    return ValueError(f"KYMA_MAIL_URL {redact_url(url)!r} is not usable: {reason}")
