"""`LogMailer`: the embedded default. Mail goes to the log at INFO, so a developer running
`kyma serve` with no configuration can read the sign-up code there."""

from __future__ import annotations

import logging

from core_service.mail.mailer import Mail


class LogMailer:
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    async def send(self, mail: Mail) -> None:
        self._logger.info("mail to %s, subject %r:\n%s", mail.to, mail.subject, mail.text)

    async def close(self) -> None:
        pass
