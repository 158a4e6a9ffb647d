"""Where holds live: the hot-path writes of every request (place before forwarding, settle or
release after), each one short transaction on the database that is the source of truth.

These run on every request, so each backend does them with its own driver in as few round
trips as it allows (PostgreSQL: one statement each; SQLite: one thread hop each), rather than
through the ORM. The rows they write are the same the rest of Kyma reads with SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol


@dataclass(frozen=True)
class NewHold:
    hold_id: str
    account_id: str
    amount_nanos: int
    request_id: str
    model: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Settlement:
    """What a request used, to settle its hold with."""

    cost_nanos: int
    prompt_tokens: int
    completion_tokens: int
    estimated: bool


@dataclass(frozen=True)
class SettleOrder:
    hold_id: str
    settlement: Settlement
    now: datetime

    @property
    def day(self) -> date:
        return self.now.date()


USAGE_REVENUE = "system:usage_revenue"


def usage_reason(model: str, settlement: Settlement) -> str:
    return (
        f"{model}: {settlement.prompt_tokens} prompt + {settlement.completion_tokens} completion "
        "tokens" + (" (estimated)" if settlement.estimated else "")
    )


class HoldStore(Protocol):
    async def place(self, hold: NewHold) -> int | None:
        """Reserve the hold's amount if the available balance covers it. None when placed;
        otherwise the available balance that fell short (nothing written)."""
        ...

    async def settle(self, order: SettleOrder) -> int | None:
        """End an open hold at min(cost, hold): one usage entry, balance and held reduced,
        daily usage added to. The amount charged, or None when the hold had already ended."""
        ...

    async def end(self, hold_id: str, status: str, now: datetime) -> bool:
        """End an open hold charging nothing (status "released" or "expired")."""
        ...

    async def close(self) -> None: ...
