"""The status page's outcome counts (core_service/status/outcomes.py): a flush returns only
once everything counted before it is in the table, even while another flush (the core's chore)
is writing what it took out of memory."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sqlite3
from datetime import UTC, datetime, timedelta

from core_service.clock import SystemClock
from core_service.db.engine import create_engine, migrate
from core_service.status.outcomes import OutcomeCounter


async def test_a_flush_waits_for_the_one_under_way(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "kyma.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await migrate(engine)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        counter = OutcomeCounter(engine, SystemClock())
        now = datetime.now(UTC)
        for status in ("ok", "ok", "UPSTREAM_TIMEOUT", "INVALID_REQUEST"):
            counter.count("m", status, now)
        blocker.execute("BEGIN IMMEDIATE")  # the chore's write will wait for the lock
        chore = asyncio.ensure_future(counter.flush())
        await asyncio.sleep(0)  # it took the counts out of memory and waits to write them
        asked = asyncio.ensure_future(counter.flush())
        await asyncio.sleep(0.05)
        assert not asked.done()  # it waits for the write under way, not returning at once
        blocker.execute("ROLLBACK")
        assert await asked == 0  # nothing was left for it to write
        [hour] = (await counter.availability(timedelta(hours=1)))["m"]
        assert (hour.answered, hour.failed) == (2, 1)  # a caller's bad input counts neither way
        assert await chore == 1
    finally:
        with contextlib.suppress(sqlite3.Error):
            blocker.execute("ROLLBACK")
        blocker.close()
        await engine.dispose()
