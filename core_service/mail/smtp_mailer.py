"""`SmtpMailer`: delivery to an SMTP server (production), one connection per mail.

smtplib blocks, so each send runs in a worker thread (`asyncio.to_thread`) and the event loop
never waits on the network. `use_tls` is implicit TLS from the first byte (smtps, usually port
465); `starttls` upgrades a plain connection (usually port 587) and fails if the server cannot;
certificates are verified against the system's trust store. With credentials the mailer logs in
after TLS is up. Every failure becomes a `MailError` naming the server and the reply, with the
password redacted and the original exception dropped, so nothing secret reaches a log.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage

from core_service.clock import Clock, SystemClock
from core_service.mail.mailer import Mail, MailError, to_email_message


class SmtpMailer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool,
        use_tls: bool,
        sender: str,
        timeout: float = 10,
        local_hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Clock | None = None,
    ) -> None:
        if starttls and use_tls:
            raise ValueError("choose either STARTTLS or implicit TLS for SMTP, not both")
        if (username is None) != (password is None):
            raise ValueError("SMTP login needs both a username and a password")
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._starttls = starttls
        self._use_tls = use_tls
        self._sender = sender
        self._timeout = timeout
        self._local_hostname = local_hostname
        self._ssl_context = ssl_context
        self._clock = clock or SystemClock()

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def username(self) -> str | None:
        return self._username

    @property
    def starttls(self) -> bool:
        return self._starttls

    @property
    def use_tls(self) -> bool:
        return self._use_tls

    def __repr__(self) -> str:
        tls = "tls" if self._use_tls else "starttls" if self._starttls else "plain"
        user = f"{self._username}@" if self._username is not None else ""
        return f"SmtpMailer({user}{self._host}:{self._port}, {tls})"

    async def send(self, mail: Mail) -> None:
        message = to_email_message(mail, sender=self._sender, now=self._clock.now())
        await asyncio.to_thread(self._send_blocking, message, mail.to)

    async def close(self) -> None:
        pass

    def _send_blocking(self, message: EmailMessage, to: str) -> None:
        try:
            self._deliver(message, to)
        except smtplib.SMTPAuthenticationError as exc:
            self._fail(f"login as {self._username!r} refused: {_reply(exc)}")
        except smtplib.SMTPRecipientsRefused as exc:
            refused = "; ".join(
                f"{rcpt}: {_reply_text(code, text)}"
                for rcpt, (code, text) in exc.recipients.items()
            )
            self._fail(f"recipient refused: {refused}")
        except smtplib.SMTPSenderRefused as exc:
            self._fail(f"sender {exc.sender!r} refused: {_reply(exc)}")
        except smtplib.SMTPResponseException as exc:
            self._fail(f"{type(exc).__name__}: {_reply(exc)}")
        except smtplib.SMTPNotSupportedError as exc:
            self._fail(f"server does not support what was asked: {exc}")
        except smtplib.SMTPException as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
        except ssl.SSLError as exc:
            self._fail(f"TLS failed: {exc.reason or exc}")
        except TimeoutError:
            self._fail(f"timed out after {self._timeout:g} s")
        except OSError as exc:
            self._fail(f"connection failed: {exc.strerror or exc}")
        except UnicodeEncodeError as exc:
            # smtplib sends commands (and AUTH secrets) as ASCII only.
            self._fail(f"cannot encode the SMTP dialogue as ASCII: {exc.reason}")

    def _deliver(self, message: EmailMessage, to: str) -> None:
        smtp: smtplib.SMTP
        if self._use_tls:
            smtp = smtplib.SMTP_SSL(
                self._host,
                self._port,
                local_hostname=self._local_hostname,
                timeout=self._timeout,
                context=self._context(),
            )
        else:
            smtp = smtplib.SMTP(
                self._host, self._port, local_hostname=self._local_hostname, timeout=self._timeout
            )
        with smtp:
            if self._starttls:
                smtp.starttls(context=self._context())
            if self._username is not None and self._password is not None:
                smtp.login(self._username, self._password)
            smtp.send_message(message, from_addr=self._sender, to_addrs=[to])

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _fail(self, reason: str) -> None:
        if self._password:
            reason = reason.replace(self._password, "***")
        # `from None`: the original exception is left out in case it echoes a secret.
        raise MailError(f"SMTP delivery via {self._host}:{self._port} failed: {reason}") from None


def _reply(exc: smtplib.SMTPResponseException) -> str:
    return _reply_text(exc.smtp_code, exc.smtp_error)


def _reply_text(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}"
