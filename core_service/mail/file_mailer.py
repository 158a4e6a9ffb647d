"""`FileMailer`: one RFC 5322 message file per mail, for tests, demos and mail picked up by
another process.

Files are named ``<UTC time>-<random>.eml`` (e.g. ``20250101T120000.123456Z-3f9c0a1b2d4e5f60.eml``)
so a directory listing sorts by time and two mails never share a name. Each is written under a
hidden temporary name and renamed into place, so a reader never sees half a message. The writing
runs in a worker thread: the event loop never waits on the disk. Files are readable by the owner
only (they may hold sign-up codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import secrets
import tempfile
from datetime import UTC

from core_service.clock import Clock, SystemClock
from core_service.mail.mailer import Mail, MailError, to_email_message

DEFAULT_SENDER = "Kyma <no-reply@kyma.localhost>"


class FileMailer:
    def __init__(
        self,
        directory: pathlib.Path,
        *,
        sender: str = DEFAULT_SENDER,
        clock: Clock | None = None,
    ) -> None:
        self._directory = directory
        self._sender = sender
        self._clock = clock or SystemClock()

    @property
    def directory(self) -> pathlib.Path:
        return self._directory

    async def send(self, mail: Mail) -> None:
        now = self._clock.now()
        if now.tzinfo is not None:
            now = now.astimezone(UTC)
        data = to_email_message(mail, sender=self._sender, now=now).as_bytes()
        name = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{secrets.token_hex(8)}.eml"
        await asyncio.to_thread(self._write, name, data)

    def _write(self, name: str, data: bytes) -> None:
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self._directory, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, self._directory / name)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError as exc:
            raise MailError(
                f"could not write mail to {self._directory}: {exc.strerror or exc}"
            ) from None

    async def close(self) -> None:
        pass
