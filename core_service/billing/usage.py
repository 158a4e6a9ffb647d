"""Reading usage: per account, model and UTC day, from the aggregates settlements keep."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.clock import Clock
from core_service.db.models import UsageDaily
from core_service.errors import InvalidRequest

DEFAULT_DAYS = 30
MAX_DAYS = 366


def _day(text: str, param: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be a date as YYYY-MM-DD.", param=param) from None


class UsageReport:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    def period(self, start: str, end: str) -> tuple[date, date]:
        last = _day(end, "end_day") if end else self._clock.now().date()
        first = _day(start, "start_day") if start else last - timedelta(days=DEFAULT_DAYS - 1)
        if first > last:
            raise InvalidRequest("'start_day' is after 'end_day'.", param="start_day")
        if (last - first).days >= MAX_DAYS:
            raise InvalidRequest(f"Ask for at most {MAX_DAYS} days at a time.", param="start_day")
        return first, last

    async def rows(self, account_id: str, first: date, last: date) -> list[UsageDaily]:
        statement = (
            select(UsageDaily)
            .where(
                UsageDaily.account_id == account_id, UsageDaily.day >= first, UsageDaily.day <= last
            )
            .order_by(UsageDaily.day.desc(), UsageDaily.model)
        )
        async with self._engine.connect() as conn:
            result = await conn.execute(statement)
            return [UsageDaily(**row._mapping) for row in result]
