"""The mail backends: the log, message files, and SMTP against a real server on loopback."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import logging
import pathlib
import smtplib
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest

from core_service.mail.factory import mailer_from_url, redact_url
from core_service.mail.file_mailer import FileMailer
from core_service.mail.log_mailer import LogMailer
from core_service.mail.mailer import Mail, MailError
from core_service.mail.smtp_mailer import SmtpMailer
from tests.fakes.pg_cluster import free_port
from tests.fakes.smtp_server import running_fake_smtp

SENDER = "Kyma <no-reply@kyma.example>"
SIGNUP = Mail(to="ada@example.com", subject="Your Kyma code", text="Your code is 123456.\n")
PASSWORD = "hunter2-s3cret"
LOGGER = logging.getLogger("tests.mail")
LIVENESS_S = 30.0  # a hung send fails the test instead of stalling the suite


class StepClock:
    """A wall clock that moves one millisecond per reading."""

    def __init__(self) -> None:
        self._now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        self._now += timedelta(milliseconds=1)
        return self._now

    def monotonic(self) -> float:
        return 0.0


def parse_file(path: pathlib.Path) -> EmailMessage:
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
    assert isinstance(parsed, EmailMessage)
    return parsed


def smtp_mailer(port: int, **kwargs: object) -> SmtpMailer:
    options: dict[str, object] = {
        "starttls": False,
        "use_tls": False,
        "sender": SENDER,
        "timeout": 2,
    }
    options.update(kwargs)
    return SmtpMailer("127.0.0.1", port, local_hostname="client.test", **options)  # type: ignore[arg-type]


# --- LogMailer ---------------------------------------------------------------------------------


async def test_log_mailer_logs_recipient_subject_and_text(caplog: pytest.LogCaptureFixture) -> None:
    mailer = LogMailer(LOGGER)
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        await mailer.send(SIGNUP)
    await mailer.close()

    [record] = [r for r in caplog.records if r.name == LOGGER.name]
    assert record.levelno == logging.INFO
    text = record.getMessage()
    assert "ada@example.com" in text
    assert "Your Kyma code" in text
    assert "Your code is 123456." in text


# --- FileMailer --------------------------------------------------------------------------------


async def test_file_mailer_writes_a_message_that_parses_back(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "mail" / "outbox"  # created on demand
    mailer = FileMailer(directory, sender=SENDER)
    await mailer.send(
        Mail(to="zoë@example.com", subject="Bienvenue — ½ off", text="Héllo\n.dot line\n")
    )
    await mailer.close()

    [path] = list(directory.iterdir())
    assert path.suffix == ".eml"
    message = parse_file(path)
    assert message["From"] == SENDER
    assert message["To"] == "zoë@example.com"
    assert message["Subject"] == "Bienvenue — ½ off"
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith(
        "@kyma.example>"
    )
    assert abs(message["Date"].datetime - datetime.now(UTC)) < timedelta(minutes=1)
    assert message.get_content() == "Héllo\n.dot line\n"
    assert path.read_bytes().isascii()  # 7-bit safe, whatever the text


async def test_file_mailer_concurrent_sends_make_distinct_files_and_leave_no_temp_files(
    tmp_path: pathlib.Path,
) -> None:
    mailer = FileMailer(tmp_path, sender=SENDER)
    await asyncio.gather(
        *(
            mailer.send(Mail(to=f"user{i}@example.com", subject=f"n{i}", text=f"body {i}\n"))
            for i in range(25)
        )
    )

    files = sorted(tmp_path.iterdir())
    assert len(files) == 25
    assert all(path.suffix == ".eml" and not path.name.startswith(".") for path in files)
    assert sorted(parse_file(path)["Subject"] for path in files) == sorted(
        f"n{i}" for i in range(25)
    )
    assert len({parse_file(path)["Message-ID"] for path in files}) == 25


async def test_file_mailer_names_sort_by_time(tmp_path: pathlib.Path) -> None:
    mailer = FileMailer(tmp_path, sender=SENDER, clock=StepClock())
    for i in range(5):
        await mailer.send(Mail(to="ada@example.com", subject=f"n{i}", text="x\n"))

    names = sorted(path.name for path in tmp_path.iterdir())
    assert names[0].startswith("20250301T120000.001000Z-")
    assert [parse_file(tmp_path / name)["Subject"] for name in names] == [f"n{i}" for i in range(5)]


async def test_file_mailer_refuses_header_injection(tmp_path: pathlib.Path) -> None:
    mailer = FileMailer(tmp_path, sender=SENDER)
    with pytest.raises(MailError):
        await mailer.send(
            Mail(to="ada@example.com", subject="hi\r\nBcc: eve@example.com", text="x")
        )
    assert list(tmp_path.iterdir()) == []


async def test_file_mailer_unwritable_directory_is_a_mail_error(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    mailer = FileMailer(blocker / "outbox", sender=SENDER)
    with pytest.raises(MailError, match="could not write mail"):
        await mailer.send(SIGNUP)


# --- mailer_from_url ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "", "  ", "log:", "LOG:"])
def test_factory_log_forms(url: str | None) -> None:
    assert isinstance(mailer_from_url(url, sender=SENDER, logger=LOGGER), LogMailer)


@pytest.mark.parametrize(
    ("url", "directory"),
    [
        ("file:///var/spool/kyma", "/var/spool/kyma"),
        ("file://localhost/var/spool/kyma/", "/var/spool/kyma"),
        ("file:///tmp/kyma%20mail", "/tmp/kyma mail"),
    ],
)
def test_factory_file_forms(url: str, directory: str) -> None:
    mailer = mailer_from_url(url, sender=SENDER, logger=LOGGER)
    assert isinstance(mailer, FileMailer)
    assert mailer.directory == pathlib.Path(directory)


@pytest.mark.parametrize(
    ("url", "host", "port", "username", "starttls", "use_tls"),
    [
        ("smtp://mail.example.com", "mail.example.com", 25, None, False, False),
        ("smtp://mail.example.com:2525", "mail.example.com", 2525, None, False, False),
        ("smtp://mail.example.com?starttls=true", "mail.example.com", 587, None, True, False),
        ("smtp://mail.example.com:25?starttls=false", "mail.example.com", 25, None, False, False),
        (
            "smtp://u%40x.io:p%3Aw%40d@mail.example.com:587?starttls=1",
            "mail.example.com",
            587,
            "u@x.io",
            True,
            False,
        ),
        ("smtps://mail.example.com", "mail.example.com", 465, None, False, True),
        ("SMTPS://apikey:secret@[::1]:1465", "::1", 1465, "apikey", False, True),
    ],
)
def test_factory_smtp_forms(
    url: str, host: str, port: int, username: str | None, starttls: bool, use_tls: bool
) -> None:
    mailer = mailer_from_url(url, sender=SENDER, logger=LOGGER)
    assert isinstance(mailer, SmtpMailer)
    assert (mailer.host, mailer.port, mailer.username, mailer.starttls, mailer.use_tls) == (
        host,
        port,
        username,
        starttls,
        use_tls,
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example.com",
        "mailto:ada@example.com",
        "/var/spool/kyma",
        "log:stdout",
        "file:relative/dir",
        "file://otherhost/dir",
        "file:///",
        "file:///dir?x=1",
        "smtp://",
        "smtp://:25",
        f"smtp:u:{PASSWORD}@mail.example.com",
        f"smtp://u:{PASSWORD}@mail.example.com:port",
        f"smtp://u:{PASSWORD}@mail.example.com:0",
        f"smtp://u:{PASSWORD}@mail.example.com:70000",
        f"smtp://u:{PASSWORD}@mail.example.com?starttls=maybe",
        f"smtp://u:{PASSWORD}@mail.example.com?tls=true",
        f"smtps://u:{PASSWORD}@mail.example.com?starttls=true",
        f"smtp://u:{PASSWORD}@mail.example.com/path",
        "smtp://u:hunt/er2@mail.example.com",
        f"smtpx://u:{PASSWORD}@mail.example.com",
        f"smtp://:{PASSWORD}@mail.example.com",
        "smtp://user@mail.example.com",
    ],
)
def test_factory_rejects_unusable_urls_without_showing_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="KYMA_MAIL_URL") as caught:
        mailer_from_url(url, sender=SENDER, logger=LOGGER)
    assert PASSWORD not in str(caught.value)
    assert "hunt/er2" not in str(caught.value)


def test_factory_warns_about_a_password_sent_in_the_clear(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        mailer_from_url(f"smtp://u:{PASSWORD}@mail.example.com", sender=SENDER, logger=LOGGER)
        mailer_from_url(f"smtps://u:{PASSWORD}@mail.example.com", sender=SENDER, logger=LOGGER)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "without TLS" in warning.getMessage()
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (f"smtp://u:{PASSWORD}@h:25?starttls=true", "smtp://u:***@h:25?starttls=true"),
        ("smtp://u@h", "smtp://u@h"),
        ("file:///var/mail@home", "file:///var/mail@home"),
        (f"smtp:u:{PASSWORD}@h", "***@h"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_smtp_mailer_refuses_both_tls_modes_and_half_credentials() -> None:
    with pytest.raises(ValueError):
        SmtpMailer("h", 25, starttls=True, use_tls=True, sender=SENDER)
    with pytest.raises(ValueError):
        SmtpMailer("h", 25, username="u", starttls=False, use_tls=False, sender=SENDER)


# --- SmtpMailer against a real SMTP server on loopback ------------------------------------------


async def test_smtp_mailer_delivers_with_dot_stuffing_and_non_ascii() -> None:
    text = "Your code is 123456.\n.leading dot\n..two dots\n.\nzoë\n"
    async with running_fake_smtp() as smtp:
        mailer = smtp_mailer(smtp.port)
        await mailer.send(Mail(to="ada@example.com", subject="Code — ½", text=text))
        await mailer.close()

        [received] = smtp.server.messages
    assert received.mail_from == "no-reply@kyma.example"
    assert received.rcpt_to == ("ada@example.com",)
    assert received.authenticated_as is None
    message = received.message()
    assert message["From"] == SENDER
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Code — ½"
    assert message["Date"] is not None and message["Message-ID"] is not None
    assert message.get_content().replace("\r\n", "\n") == text  # SMTP lines end in CRLF
    assert smtp.server.commands[0] == "EHLO"
    assert smtp.server.commands[-1] == "QUIT"


async def test_smtp_mailer_logs_in_with_percent_decoded_credentials_from_the_url() -> None:
    async with running_fake_smtp(credentials={"ada@kyma.example": "p@ss:w0rd/1"}) as smtp:
        url = f"smtp://ada%40kyma.example:p%40ss%3Aw0rd%2F1@127.0.0.1:{smtp.port}"
        mailer = mailer_from_url(url, sender=SENDER, logger=LOGGER)
        await asyncio.gather(*(mailer.send(SIGNUP) for _ in range(3)))

        assert len(smtp.server.messages) == 3
        assert {m.authenticated_as for m in smtp.server.messages} == {"ada@kyma.example"}
        assert "AUTH" in smtp.server.commands


async def test_smtp_mailer_wrong_password_is_a_mail_error_without_the_password() -> None:
    async with running_fake_smtp(credentials={"ada": "right-password"}) as smtp:
        mailer = smtp_mailer(smtp.port, username="ada", password=PASSWORD)
        with pytest.raises(MailError, match="535") as caught:
            await mailer.send(SIGNUP)
        assert smtp.server.failed_logins >= 1  # smtplib tries PLAIN, then LOGIN
        assert smtp.server.messages == []
    assert PASSWORD not in str(caught.value)
    assert caught.value.__suppress_context__


async def test_smtp_mailer_without_login_where_one_is_required_is_a_mail_error() -> None:
    async with running_fake_smtp(credentials={"ada": "pw"}) as smtp:
        with pytest.raises(MailError, match="530"):
            await smtp_mailer(smtp.port).send(SIGNUP)


async def test_smtp_mailer_starttls_required_but_not_offered_is_a_mail_error() -> None:
    async with running_fake_smtp(credentials={"ada": PASSWORD}) as smtp:
        mailer = smtp_mailer(smtp.port, starttls=True, username="ada", password=PASSWORD)
        with pytest.raises(MailError, match="(?i)starttls") as caught:
            await mailer.send(SIGNUP)
        # Nothing, least of all the password, went over the unencrypted connection.
        assert "AUTH" not in smtp.server.commands
        assert smtp.server.messages == []
    assert PASSWORD not in str(caught.value)


async def test_smtp_mailer_refused_recipient_is_a_mail_error() -> None:
    async with running_fake_smtp(reject_recipients=frozenset({"nobody@example.com"})) as smtp:
        with pytest.raises(MailError, match="recipient refused.*550"):
            await smtp_mailer(smtp.port).send(Mail(to="nobody@example.com", subject="s", text="t"))
        assert smtp.server.messages == []


async def test_smtp_mailer_unreachable_server_fails_fast() -> None:
    # Fast means refused at once rather than waiting out the timeout: the error says which
    # (a timeout reads "timed out after 2 s"), so no stopwatch is needed.
    mailer = smtp_mailer(free_port())
    with pytest.raises(MailError, match="connection failed"):
        await mailer.send(SIGNUP)


async def test_smtp_mailer_silent_server_times_out() -> None:
    connected = asyncio.Event()

    async def never_greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(never_greet, "127.0.0.1", 0)
    try:
        mailer = smtp_mailer(server.sockets[0].getsockname()[1], timeout=0.2)
        # The server never answers: only the mailer's own timeout can end this (the outer
        # bound is liveness only, 150 times the timeout).
        with pytest.raises(MailError, match="timed out"):
            await asyncio.wait_for(mailer.send(SIGNUP), LIVENESS_S)
        assert connected.is_set()
    finally:
        server.close()
        await server.wait_closed()


async def test_fake_smtp_server_speaks_helo_auth_login_rset_and_noop() -> None:
    """The fake itself, driven command by command, so the tests above can trust it."""
    async with running_fake_smtp(credentials={"bob": "pw"}) as smtp:

        def dialogue() -> list[tuple[int, bytes]]:
            with smtplib.SMTP(
                "127.0.0.1", smtp.port, local_hostname="client.test", timeout=2
            ) as client:
                replies = [client.helo("client.test"), client.noop()]
                client.ehlo("client.test")
                client.user, client.password = "bob", "pw"
                replies.append(client.auth("LOGIN", client.auth_login, initial_response_ok=False))
                replies.append(client.mail("first@example.com"))
                replies.append(client.rset())
                replies.append(client.rcpt("x@example.com"))  # no MAIL any more
                replies.append(client.mail("bob@example.com"))
                replies.append(client.rcpt("x@example.com"))
                replies.append(client.data(b"Subject: hi\r\n\r\n..dotted\r\nplain\r\n"))
                return replies

        replies = await asyncio.to_thread(dialogue)
        [received] = smtp.server.messages

    assert [code for code, _ in replies] == [250, 250, 235, 250, 250, 503, 250, 250, 250]
    assert received.mail_from == "bob@example.com"
    assert received.authenticated_as == "bob"
    assert received.data == b"Subject: hi\r\n\r\n..dotted\r\nplain\r\n"
