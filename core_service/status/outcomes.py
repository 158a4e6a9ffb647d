"""How each model's requests ended, counted cheaply for the status page: every core counts in
memory per model and UTC minute and adds its counts to `model_outcomes` every few seconds
(one statement for all of them), so availability over an hour or a day is a sum over at most
1,440 rows per model, whatever the traffic.

Only outcomes that say something about the service count: answered, or failed for the
service's own reasons (its upstreams failed, timed out or were unreachable; Kyma failed). A
request refused for the caller's reasons (bad input, key, credit, rate limit) or abandoned by
its client counts neither way.

Failure semantics: counts that cannot be written stay in memory and are added at the next
flush; counts of a core that dies are lost with it (a few seconds of one node's traffic).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.clock import Clock
from core_service.db.models import ModelOutcome

# The service's own failures (the contract's error reasons).
FAILURES = frozenset(
    {
        "UPSTREAM_BAD_GATEWAY",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_TIMEOUT",
        "INTERNAL",
        "SERVICE_UNAVAILABLE",
    }
)
KEEP = timedelta(days=2)


@dataclass(frozen=True)
class Availability:
    answered: int
    failed: int

    @property
    def requests(self) -> int:
        return self.answered + self.failed

    @property
    def share(self) -> float | None:
        return self.answered / self.requests if self.requests else None


class OutcomeCounter:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._answered: Counter[tuple[str, datetime]] = Counter()
        self._failed: Counter[tuple[str, datetime]] = Counter()
        # One flush at a time: a flush called while another writes waits for it, so that what
        # was counted before a flush is in the table when it returns (the chore's flush may
        # have taken it out of memory a moment before).
        self._flushing = asyncio.Lock()

    def count(self, model: str | None, status: str, at: datetime) -> None:
        """One request of `model` ended with `status` ("ok" or an error reason) at `at`."""
        if not model:
            return
        minute = at.replace(second=0, microsecond=0)
        if status == "ok":
            self._answered[(model, minute)] += 1
        elif status in FAILURES:
            self._failed[(model, minute)] += 1

    async def flush(self) -> int:
        """Add the counts to the table; returns how many (model, minute) rows it touched.
        Everything counted before the call is in the table when it returns."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
        answered, failed = self._answered, self._failed
        self._answered, self._failed = Counter(), Counter()
        rows = [
            {"model": key[0], "minute": key[1], "answered": answered[key], "failed": failed[key]}
            for key in sorted(set(answered) | set(failed))
        ]
        if not rows:
            return 0
        try:
            async with self._engine.begin() as conn:
                dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
                statement = dialect.insert(ModelOutcome).values(rows)
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[ModelOutcome.model, ModelOutcome.minute],
                        set_={
                            "answered": ModelOutcome.answered + statement.excluded.answered,
                            "failed": ModelOutcome.failed + statement.excluded.failed,
                        },
                    )
                )
        except BaseException:
            self._answered.update(answered)
            self._failed.update(failed)
            raise
        return len(rows)

    async def availability(self, *windows: timedelta) -> dict[str, list[Availability]]:
        """Per model, its outcomes in each window (ending now), in the order asked."""
        now = self._clock.now()
        starts = [now - window for window in windows]
        columns = []
        for start in starts:
            within = ModelOutcome.minute >= start.replace(second=0, microsecond=0)
            columns.append(func.sum(case((within, ModelOutcome.answered), else_=0)))
            columns.append(func.sum(case((within, ModelOutcome.failed), else_=0)))
        statement = (
            select(ModelOutcome.model, *columns)
            .where(ModelOutcome.minute >= min(starts).replace(second=0, microsecond=0))
            .group_by(ModelOutcome.model)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return {
            row[0]: [
                Availability(int(row[1 + 2 * i] or 0), int(row[2 + 2 * i] or 0))
                for i in range(len(windows))
            ]
            for row in rows
        }

    async def prune(self) -> int:
        cutoff = self._clock.now() - KEEP
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(ModelOutcome).where(ModelOutcome.minute < cutoff))
        return int(result.rowcount or 0)
