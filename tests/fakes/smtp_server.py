"""A minimal SMTP server (RFC 5321) for tests, on 127.0.0.1, port 0, in the caller's event loop.

It speaks EHLO/HELO, AUTH PLAIN and AUTH LOGIN (advertised only when `credentials` is set, and then
required before MAIL), MAIL FROM, RCPT TO, DATA (with dot-unstuffing), RSET, NOOP and QUIT, and
records every accepted message. It does not offer STARTTLS. `reject_recipients` makes RCPT TO fail
with 550 for those addresses.

    async with running_fake_smtp(credentials={"user": "pw"}) as smtp:
        ...  # send to smtp.host:smtp.port
        smtp.server.messages[0].message()["Subject"]
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.parser
import email.policy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage

HOSTNAME = "fake-smtp.test"


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes  # as received, dot-unstuffed, without the final "."
    authenticated_as: str | None

    def message(self) -> EmailMessage:
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class FakeSmtpServer:
    credentials: dict[str, str] | None = None
    reject_recipients: frozenset[str] = frozenset()
    messages: list[ReceivedMessage] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # verbs received, in order
    failed_logins: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await _Session(self, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _Session:
    def __init__(
        self, server: FakeSmtpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.greeted = False
        self.user: str | None = None
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []

    async def reply(self, *lines: str) -> None:
        # Every line but the last of a multi-line reply has "-" after the code.
        marked = [f"{line[:3]}-{line[4:]}" for line in lines[:-1]] + [lines[-1]]
        self.writer.write("".join(f"{line}\r\n" for line in marked).encode())
        await self.writer.drain()

    async def read_line(self) -> str | None:
        raw = await self.reader.readline()
        if not raw:
            return None
        return raw.rstrip(b"\r\n").decode("utf-8", "replace")

    async def run(self) -> None:
        await self.reply(f"220 {HOSTNAME} ESMTP fake ready")
        while (line := await self.read_line()) is not None:
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            self.server.commands.append(verb)
            if verb == "QUIT":
                await self.reply("221 2.0.0 Bye")
                return
            handler = getattr(self, f"do_{verb.lower()}", None) if verb.isalpha() else None
            if handler is None:
                await self.reply("500 5.5.2 Command not recognized")
            else:
                await handler(arg.strip())

    async def do_ehlo(self, arg: str) -> None:
        if not arg:
            await self.reply("501 5.5.4 EHLO needs a domain")
            return
        self.greeted = True
        self.reset()
        lines = [f"250 {HOSTNAME} greets {arg}", "250 8BITMIME"]
        if self.server.credentials is not None:
            lines.append("250 AUTH PLAIN LOGIN")
        lines.append("250 HELP")
        await self.reply(*lines)

    async def do_helo(self, arg: str) -> None:
        if not arg:
            await self.reply("501 5.5.4 HELO needs a domain")
            return
        self.greeted = True
        self.reset()
        await self.reply(f"250 {HOSTNAME}")

    async def do_auth(self, arg: str) -> None:
        if self.server.credentials is None:
            await self.reply("502 5.5.1 AUTH not available")
            return
        if not self.greeted:
            await self.reply("503 5.5.1 EHLO first")
            return
        if self.user is not None:
            await self.reply("503 5.5.1 Already authenticated")
            return
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            response = initial or await self.challenge("")
            decoded = _b64(response)
            parts = decoded.split("\0") if decoded is not None else []
            if len(parts) != 3:
                await self.reply("501 5.5.2 Malformed AUTH PLAIN response")
                return
            user, password = parts[1], parts[2]
        elif mechanism == "LOGIN":
            user_b64 = initial or await self.challenge(base64.b64encode(b"Username:").decode())
            password_b64 = await self.challenge(base64.b64encode(b"Password:").decode())
            user_or_none, password_or_none = _b64(user_b64), _b64(password_b64)
            if user_or_none is None or password_or_none is None:
                await self.reply("501 5.5.2 Malformed AUTH LOGIN response")
                return
            user, password = user_or_none, password_or_none
        else:
            await self.reply("504 5.5.4 Unrecognized authentication type")
            return
        if self.server.credentials.get(user) == password:
            self.user = user
            await self.reply("235 2.7.0 Authentication successful")
        else:
            self.server.failed_logins += 1
            await self.reply("535 5.7.8 Authentication credentials invalid")

    async def challenge(self, text: str) -> str:
        await self.reply(f"334 {text}")
        return await self.read_line() or ""

    async def do_mail(self, arg: str) -> None:
        if not self.greeted:
            await self.reply("503 5.5.1 EHLO or HELO first")
            return
        if self.server.credentials is not None and self.user is None:
            await self.reply("530 5.7.0 Authentication required")
            return
        if self.mail_from is not None:
            await self.reply("503 5.5.1 Nested MAIL command")
            return
        address = _path(arg, "FROM:")
        if address is None:
            await self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        self.mail_from = address
        await self.reply("250 2.1.0 OK")

    async def do_rcpt(self, arg: str) -> None:
        if self.mail_from is None:
            await self.reply("503 5.5.1 MAIL first")
            return
        address = _path(arg, "TO:")
        if not address:
            await self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        if address in self.server.reject_recipients:
            await self.reply("550 5.1.1 No such user here")
            return
        self.rcpt_to.append(address)
        await self.reply("250 2.1.5 OK")

    async def do_data(self, arg: str) -> None:
        if self.mail_from is None or not self.rcpt_to:
            await self.reply("503 5.5.1 RCPT first")
            return
        await self.reply("354 End data with <CR><LF>.<CR><LF>")
        lines: list[bytes] = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                return  # the client went away mid-message: nothing is accepted
            if raw in (b".\r\n", b".\n"):
                break
            lines.append(raw[1:] if raw.startswith(b".") else raw)
        self.server.messages.append(
            ReceivedMessage(self.mail_from, tuple(self.rcpt_to), b"".join(lines), self.user)
        )
        self.reset()
        await self.reply(f"250 2.0.0 OK queued as {len(self.server.messages)}")

    async def do_rset(self, arg: str) -> None:
        self.reset()
        await self.reply("250 2.0.0 OK")

    async def do_noop(self, arg: str) -> None:
        await self.reply("250 2.0.0 OK")

    def reset(self) -> None:
        self.mail_from = None
        self.rcpt_to = []


def _b64(text: str) -> str | None:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _path(arg: str, keyword: str) -> str | None:
    """The address in ``FROM:<addr> [params]`` (``""`` for the null path), or None if malformed."""
    if not arg.upper().startswith(keyword):
        return None
    rest = arg[len(keyword) :].strip()
    if not rest.startswith("<") or ">" not in rest:
        return None
    return rest[1 : rest.index(">")]


@dataclass(frozen=True)
class RunningFakeSmtp:
    server: FakeSmtpServer
    host: str
    port: int


@contextlib.asynccontextmanager
async def running_fake_smtp(
    *, credentials: dict[str, str] | None = None, reject_recipients: frozenset[str] = frozenset()
) -> AsyncIterator[RunningFakeSmtp]:
    fake = FakeSmtpServer(credentials=credentials, reject_recipients=reject_recipients)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield RunningFakeSmtp(fake, "127.0.0.1", port)
    finally:
        server.close()
        await fake.shutdown()
        await server.wait_closed()
