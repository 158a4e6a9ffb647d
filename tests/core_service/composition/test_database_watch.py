"""The core's database check (`chores.watch_database`): a refused or broken connection makes
the core NOT_SERVING at once; a check that only times out does so only when the check made
again at once times out too, so that a moment's stall of the core's own event loop does not
send every bridge around it. Run on a scripted engine, with the timeout and interval made
short (what is proven is the sequence of judgements, not how long anything took)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc_health.v1 import health, health_pb2

from core_service.composition import chores


class _Scripted:
    """An engine whose checks, in turn: answer ("ok"), hang past the timeout ("hang"), or fail
    ("error"); once the script has run out, a check waits until the test ends."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.done = asyncio.Event()

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[_Scripted]:
        yield self

    async def execute(self, _statement: Any) -> None:
        if not self.script:
            self.done.set()
            await asyncio.Event().wait()
        step = self.script.pop(0)
        if step == "hang":
            await asyncio.Event().wait()
        if step == "error":
            raise ConnectionRefusedError("the database is gone")


async def _judgements(monkeypatch: pytest.MonkeyPatch, *script: str) -> list[bool]:
    monkeypatch.setattr(chores, "DATABASE_CHECK_TIMEOUT_SECONDS", 0.02)
    monkeypatch.setattr(chores, "DATABASE_CHECK_INTERVAL_SECONDS", 0.001)
    engine = _Scripted(*script)
    heard: list[bool] = []
    servicer = health.aio.HealthServicer()
    watching = asyncio.ensure_future(
        chores.watch_database(engine, servicer, heard.append)  # type: ignore[arg-type]
    )
    try:
        await asyncio.wait_for(engine.done.wait(), 30)  # a liveness bound
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    reply = await servicer.Check(health_pb2.HealthCheckRequest(service=""), None)
    assert (reply.status == health_pb2.HealthCheckResponse.SERVING) == heard[-1]
    return heard


async def test_one_check_that_times_out_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _judgements(monkeypatch, "ok", "hang", "ok", "hang", "ok") == [True]


async def test_two_in_a_row_do(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _judgements(monkeypatch, "ok", "hang", "hang", "ok") == [True, False, True]


async def test_a_refused_connection_is_judged_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _judgements(monkeypatch, "ok", "error", "ok") == [True, False, True]
    assert await _judgements(monkeypatch, "hang", "error") == [False]
