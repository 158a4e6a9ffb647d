"""Low-balance alerts (SPEC §4): an account may set a threshold; when its available balance
(balance − held) falls below it, one email goes out per crossing — not one per request.

The state is one column, `accounts.low_balance_alerted_at`: None while the alert is armed.
`check` runs off the request path (a chore every few seconds on every core) and:

1. re-arms every alerted account whose available balance is back at or above its threshold
   (the next fall below it is a new crossing);
2. looks at the accounts whose balance went down since the last round on this node (charged
   by its writer's batches, or whose threshold was just set), plus every account with a
   threshold in a slower sweep (balances lowered by other means), and sends the alert for each
   that is below its threshold and armed.

Exactly once across nodes: an alert is claimed by one conditional UPDATE (armed → alerted)
before its mail is sent; of the nodes that see the same crossing, one claims it. A mail that
cannot be sent gives the claim back, so a later round tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.billing.pricing import nanos_to_usd
from core_service.clock import Clock
from core_service.db.models import Account, Balance
from core_service.mail.mailer import Mail, Mailer, MailError

log = logging.getLogger(__name__)

# Every this many rounds, every account with a threshold is looked at (not only those charged).
SWEEP_EVERY = 60


def _usd(nanos: int) -> str:
    """Whole cents for people ("0.50"), as many places as needed beyond that."""
    text = nanos_to_usd(nanos).rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


class LowBalanceAlerts:
    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        mailer: Mailer,
        *,
        charged: Callable[[], set[str]],
        billing_link: str,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._mailer = mailer
        self._charged = charged
        self._billing_link = billing_link
        self._watched: set[str] = set()
        self._rounds = 0

    def watch(self, account_id: str) -> None:
        """Look at this account in the next round (its threshold changed)."""
        self._watched.add(account_id)

    async def check(self) -> int:
        """One round; returns how many alerts were sent."""
        sweep = self._rounds % SWEEP_EVERY == 0
        self._rounds += 1
        candidates = self._charged() | self._watched
        self._watched = set()
        available = (
            select(Balance.balance_nanos - Balance.held_nanos)
            .where(Balance.ledger_account == Account.id)
            .scalar_subquery()
        )
        now = self._clock.now()
        async with self._engine.begin() as conn:
            await conn.execute(
                update(Account)
                .where(
                    Account.low_balance_alerted_at.is_not(None),
                    or_(
                        Account.low_balance_threshold_nanos.is_(None),
                        available >= Account.low_balance_threshold_nanos,
                    ),
                )
                .values(low_balance_alerted_at=None)
            )
            if not (sweep or candidates):
                return 0
            which = (
                Account.low_balance_threshold_nanos.is_not(None)
                if sweep
                else Account.id.in_(sorted(candidates))
            )
            claimed = (
                await conn.execute(
                    update(Account)
                    .where(
                        which,
                        Account.low_balance_alerted_at.is_(None),
                        Account.low_balance_threshold_nanos.is_not(None),
                        available < Account.low_balance_threshold_nanos,
                    )
                    .values(low_balance_alerted_at=now)
                    .returning(Account.id, Account.email, Account.low_balance_threshold_nanos)
                )
            ).all()
            balances = {}
            if claimed:
                rows = await conn.execute(
                    select(
                        Balance.ledger_account, Balance.balance_nanos - Balance.held_nanos
                    ).where(Balance.ledger_account.in_([row.id for row in claimed]))
                )
                balances = {account: int(value) for account, value in rows}
        sent = 0
        for row in claimed:
            if await self._send(
                row.email, balances.get(row.id, 0), row.low_balance_threshold_nanos
            ):
                sent += 1
            else:
                await self._give_back(row.id, now)
        return sent

    async def _send(self, to: str, available: int, threshold: int) -> bool:
        try:
            await self._mailer.send(
                Mail(
                    to=to,
                    subject=f"Your Kyma balance is below ${_usd(threshold)}",
                    text=(
                        f"Your available Kyma balance is ${_usd(available)}, below the "
                        f"${_usd(threshold)} you asked to be told about.\n\n"
                        f"Add credits at {self._billing_link} so that your requests keep "
                        "running. You get this mail once each time the balance falls below the "
                        "threshold; change or remove it in your account settings.\n"
                    ),
                )
            )
        except MailError as error:
            log.warning("could not send a low-balance alert (%s); retrying later", error)
            return False
        return True

    async def _give_back(self, account_id: str, claimed_at: datetime) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(Account)
                .where(and_(Account.id == account_id, Account.low_balance_alerted_at == claimed_at))
                .values(low_balance_alerted_at=None)
            )
