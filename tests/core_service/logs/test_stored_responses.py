"""Stored responses (OpenAI Responses with `store`) are request log rows: read back by their
owner only, continued along their chain, deleted (the row stays), read on the core that wrote
them before the batch lands, and purged with the logs."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import pytest_asyncio

from core_service.clock import SystemClock
from core_service.logs.responses import StoredResponses, issued_at, new_response_id
from core_service.logs.retention import LogRetention
from core_service.logs.writer import RequestLogWriter
from tests.core_service.logs.test_request_logs import (  # noqa: F401
    Db,
    FakeClock,
    count,
    db,
    entry,
    logs_pg_url,
)

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def writer(db: Db) -> AsyncIterator[RequestLogWriter]:  # noqa: F811
    running = RequestLogWriter(db.engine, SystemClock(), flush_interval=60)
    await running.start()
    yield running
    await running.stop(timeout=5)


def turn(account: str, text: str, previous: str | None = None, **changes: object):  # type: ignore[no-untyped-def]
    response_id = new_response_id(datetime.now(UTC))
    request = {"model": "m", "input": text}
    if previous:
        request["previous_response_id"] = previous
    response = {
        "id": response_id,
        "object": "response",
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text.upper()}],
            }
        ],
    }
    return response_id, entry(
        account,
        endpoint="responses",
        request_body=orjson.dumps(request).decode(),
        response_body=orjson.dumps(response).decode(),
        response_id=response_id,
        previous_response_id=previous,
        **changes,
    )


async def test_a_chain_is_read_back_by_its_owner_only(db: Db, writer: RequestLogWriter) -> None:  # noqa: F811
    # An hour on, no id is fresh enough to wait for: only this core's unwritten rows are.
    later = FakeClock(datetime.now(UTC) + timedelta(hours=1))
    stored = StoredResponses(db.engine, db.engine, writer, later)
    account = "acct_" + secrets.token_hex(6)
    first, row1 = turn(account, "one")
    second, row2 = turn(account, "two", first)
    writer.record(row1)
    writer.record(row2)
    # Not yet written (the writer waits a minute): the reader flushes it.
    assert writer.pending == 2
    chain = await stored.chain(account, second)
    assert chain is not None and [orjson.loads(r)["input"] for r, _ in chain] == ["one", "two"]
    assert writer.pending == 0
    assert await stored.chain("acct_someone_else", second) is None
    assert await stored.get("acct_someone_else", first) is None
    got = await stored.get(account, second)
    assert got is not None and orjson.loads(got)["id"] == second
    # A failed request is no stored response.
    failed, row3 = turn(account, "three", second, status="UPSTREAM_BAD_GATEWAY")
    writer.record(row3)
    assert await stored.chain(account, failed) is None
    # Deleting a link breaks what continues it; the log row itself stays.
    assert await stored.delete(account, first)
    assert not await stored.delete(account, first)
    assert await stored.get(account, first) is None
    assert await stored.chain(account, second) is None
    assert await count(db.engine, "request_id = :r", r=row1.request_id) == 1


async def test_a_fresh_id_from_another_core_is_waited_for(db: Db) -> None:  # noqa: F811
    other_core = RequestLogWriter(db.engine, SystemClock(), flush_interval=0.05)
    this_core = RequestLogWriter(db.engine, SystemClock(), flush_interval=0.05)
    await other_core.start()
    stored = StoredResponses(db.engine, db.engine, this_core, SystemClock())
    account = "acct_" + secrets.token_hex(6)
    response_id, row = turn(account, "hello")
    other_core.record(row)
    assert await stored.get(account, response_id) is not None
    assert await stored.get(account, "resp_00000000" + "0" * 40) is None  # old: not waited for
    await other_core.stop(timeout=5)
    assert issued_at(response_id) is not None and issued_at("resp_nothex!") is None


async def test_stored_responses_are_purged_with_the_logs(db: Db, writer: RequestLogWriter) -> None:  # noqa: F811
    long_ago = datetime.now(UTC) - timedelta(days=100)
    account = "acct_" + secrets.token_hex(6)
    response_id, row = turn(account, "old")
    writer.record(replace(row, created_at=long_ago))
    assert await writer.flush(timeout=30)
    later = FakeClock(datetime.now(UTC) + timedelta(hours=1))  # nothing fresh to wait for
    stored = StoredResponses(db.engine, db.engine, writer, later)
    assert await stored.get(account, response_id) is not None
    await LogRetention(db.engine, FakeClock(datetime.now(UTC)), days=90).purge()
    assert await stored.get(account, response_id) is None
