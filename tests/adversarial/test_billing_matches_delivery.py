"""Billing matches what was delivered, whatever the upstream does: the output limit reaches it
in the parameter it reads (always one: the client's, or the model's cap the hold covers); a
stream that runs past what was held is cut there; a client that asked for usage always gets
a usage chunk; and usage views, request logs and the ledger agree to the nano-dollar."""

from __future__ import annotations

import asyncio

import orjson
from sqlalchemy import select

from core_service import tokens
from core_service.billing.verify import verify_ledger
from core_service.clock import SystemClock
from core_service.db.models import LedgerEntry
from core_service.logs.query import REQUEST_LOGS


async def _last_upstream_body(kyma) -> dict:  # type: ignore[no-untyped-def]
    stats = await kyma.upstream.stats()
    body = stats["last_request"]["body"]
    assert isinstance(body, dict), body
    return body


def _sse(lines: list[str]) -> list[dict]:
    return [
        orjson.loads(line[6:])
        for line in lines
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


async def test_the_output_limit_reaches_the_upstream_as_max_tokens(kyma, account) -> None:
    _, key = account
    async with kyma.http() as http:
        for body, sent in (
            ({"max_completion_tokens": 7}, 7),  # langchain-openai's parameter
            ({"max_tokens": 9}, 9),
            ({}, 2048),  # none given: the model's cap, which the hold covered
        ):
            reply = await http.post(
                "/v1/chat/completions",
                json={
                    "model": "test-model",
                    "messages": [{"role": "user", "content": "hi"}],
                    **body,
                },
                headers={"authorization": f"Bearer {key}"},
            )
            assert reply.status_code == 200
            forwarded = await _last_upstream_body(kyma)
            assert forwarded["max_tokens"] == sent and "max_completion_tokens" not in forwarded


async def test_a_stream_past_its_hold_is_cut_there(kyma, account) -> None:
    account_id, key = account
    await kyma.upstream.control(overrun_tokens=25)  # writes 25 tokens past what it was sent
    async with kyma.http() as http:
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "test-model",
                "messages": [{"role": "user", "content": "tell me a long story"}],
                "max_tokens": 10,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers={"authorization": f"Bearer {key}"},
        ) as reply:
            lines = [line async for line in reply.aiter_lines()]
    chunks = _sse(lines)
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    assert tokens.count_tokens(text) <= 10  # never more than was held
    assert any(
        c.get("choices") and c["choices"][0].get("finish_reason") == "length" for c in chunks
    )
    [usage] = [c["usage"] for c in chunks if c.get("usage")]
    assert usage["completion_tokens"] == tokens.count_tokens(text)
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
    await kyma.settled()
    report = await verify_ledger(kyma.core.engine, SystemClock())
    assert report.ok, report.problems


async def test_include_usage_always_gets_a_usage_chunk(kyma, account) -> None:
    _, key = account
    await kyma.upstream.control(omit_usage=True)
    async with kyma.http() as http:
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "test-model",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 12,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers={"authorization": f"Bearer {key}"},
        ) as reply:
            chunks = _sse([line async for line in reply.aiter_lines()])
    [final] = [c for c in chunks if c.get("usage")]
    assert final["choices"] == [] and final["usage"]["estimated"] is True
    assert final["usage"]["completion_tokens"] > 0


async def test_what_people_see_agrees_with_the_ledger(kyma, account) -> None:
    """A unary reply from an upstream that wrote past its limit is charged at most its hold:
    the request log shows that charge, as the ledger and the daily usage do."""
    account_id, key = account
    await kyma.upstream.control(overrun_tokens=500)
    async with kyma.http() as http:
        reply = await http.post(
            "/v1/chat/completions",
            json={
                "model": "test-model",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
            },
            headers={"authorization": f"Bearer {key}", "x-request-id": "ignored-by-design"},
        )
    assert reply.status_code == 200
    request_id = reply.headers["x-request-id"]
    await kyma.settled()
    for _ in range(300):  # the log is written in batches, a moment later
        async with kyma.core.storage.reads.connect() as conn:
            logged = (
                await conn.execute(
                    select(REQUEST_LOGS.c.cost_nanos).where(REQUEST_LOGS.c.request_id == request_id)
                )
            ).first()
        if logged is not None:
            break
        await asyncio.sleep(0.1)
    assert logged is not None
    async with kyma.core.storage.reads.connect() as conn:
        charged = await conn.scalar(
            select(LedgerEntry.amount_nanos).where(
                LedgerEntry.kind == "usage", LedgerEntry.actor == request_id
            )
        )
    assert logged.cost_nanos == charged
    report = await verify_ledger(kyma.core.engine, SystemClock())
    assert report.ok, report.problems
