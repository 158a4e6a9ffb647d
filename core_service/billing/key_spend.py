"""A key's spend against its cap, counted in calendar periods in UTC: the day, the ISO week
(from Monday) and the month, and in all. The hold stores keep one row of these counters per
key (`KeySpend`), locked with the account's balance row, and decide each new hold against the
cap's room — cap − spent in the current period − held by the key's open holds — in the same
batch that decides it against the balance (`hold_store.py`).

A charge counts in the period in which it is settled (as the ledger entry is dated), and a hold
set aside in one period and settled in the next counts in the next. Periods only move forward:
a node whose clock is behind another's counts into the newer period already started.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from core_service.values import CapInterval


def period_start(interval: CapInterval, day: date) -> date:
    if interval == "daily":
        return day
    if interval == "weekly":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_period(interval: CapInterval, start: date) -> date:
    if interval == "daily":
        return start + timedelta(days=1)
    if interval == "weekly":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def resets_at(interval: CapInterval | None, now: datetime) -> datetime | None:
    """When the cap's current period ends (None: a cap without an interval never resets)."""
    if interval is None:
        return None
    start = period_start(interval, now.astimezone(UTC).date())
    return datetime.combine(next_period(interval, start), time(0), tzinfo=UTC)


@dataclass
class KeySpendState:
    """One key's row as a batch reads, changes and writes it back (the row is locked)."""

    key_id: str
    cap_nanos: int | None
    cap_interval: CapInterval | None
    held_nanos: int = 0
    spent_total_nanos: int = 0
    spent_day_nanos: int = 0
    spent_day: date | None = None
    spent_week_nanos: int = 0
    spent_week: date | None = None
    spent_month_nanos: int = 0
    spent_month: date | None = None

    def roll(self, now: datetime) -> None:
        """Start the periods that have begun by `now` (counters of a newer period are kept)."""
        day = now.astimezone(UTC).date()
        for interval, attribute in (
            ("daily", "spent_day"),
            ("weekly", "spent_week"),
            ("monthly", "spent_month"),
        ):
            start = period_start(interval, day)  # type: ignore[arg-type]
            current = getattr(self, attribute)
            if current is None or current < start:
                setattr(self, attribute, start)
                setattr(self, f"{attribute}_nanos", 0)

    def spent(self) -> int:
        """Spent in the cap's current period (everything, without an interval); roll first."""
        if self.cap_interval == "daily":
            return self.spent_day_nanos
        if self.cap_interval == "weekly":
            return self.spent_week_nanos
        if self.cap_interval == "monthly":
            return self.spent_month_nanos
        return self.spent_total_nanos

    def room(self) -> int | None:
        """What the cap still allows to be set aside (None: no cap); roll first."""
        if self.cap_nanos is None:
            return None
        return self.cap_nanos - self.spent() - self.held_nanos

    def charge(self, amount: int, now: datetime) -> None:
        self.roll(now)
        self.spent_total_nanos += amount
        self.spent_day_nanos += amount
        self.spent_week_nanos += amount
        self.spent_month_nanos += amount
