"""`Metering.landed`: an answer waits for its settlement's commit, bounded, never cancelling it,
and not at all while the database is failing; a settlement that fails does not fail the answer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from core_service.billing import metering
from core_service.billing.metering import Metering

pytestmark = pytest.mark.asyncio


def _metering(*, failing: bool = False) -> Metering:
    holds = SimpleNamespace(writer=SimpleNamespace(failing=failing))
    return Metering(holds)  # type: ignore[arg-type]


async def test_the_answer_waits_for_the_commit() -> None:
    ended: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(_metering().landed(ended))
    await asyncio.sleep(0)
    assert not waiting.done()
    ended.set_result(1)
    await waiting


async def test_a_caller_that_leaves_does_not_cancel_the_settlement() -> None:
    ended: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(_metering().landed(ended))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not ended.cancelled()
    ended.set_result(1)  # still the writer's to finish


async def test_the_wait_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metering, "SETTLEMENT_WAIT_SECONDS", 0.01)
    ended: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    await _metering().landed(ended)  # returns although the settlement never committed
    assert not ended.done()


async def test_no_wait_while_the_database_is_failing() -> None:
    ended: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    await _metering(failing=True).landed(ended)
    assert not ended.done()


async def test_a_failed_settlement_does_not_fail_the_answer() -> None:
    ended: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(_metering().landed(ended))
    await asyncio.sleep(0)
    ended.set_exception(RuntimeError("database gone"))
    await waiting  # no exception
    ended.exception()  # retrieved: the writer retries it
