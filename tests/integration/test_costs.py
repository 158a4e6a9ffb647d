"""The cost in every answer, through the official openai SDK on SQLite and PostgreSQL: usage.cost
(and x-kyma-cost) exactly the nano-dollars the ledger charged; cached tokens billed at the
cached price, or at the full input price where none is set; reasoning and cached tokens shown
apart in usage, daily usage and the request lookup (GET /v1/account/requests/{id}).

Every answer an SDK client of `kyma` gets is also checked against the ledger after each test
(tests/costs.py, run by the conftest): here the mix covers every endpoint, unary and streamed.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.asyncio

# test-model-cached's prices in nano-dollars per token (USD per million × 1000).
INPUT, CACHED, OUTPUT = 1000, 250, 2000
# What asks the test upstream to report half of each prompt as cached and a quarter of each
# completion as reasoning.
SIMULATE = {"simulate_usage": {"cached_prompt_fraction": 0.5, "reasoning_fraction": 0.25}}
LIVENESS_S = 30.0


def usd(nanos: int) -> str:
    return f"{Decimal(nanos).scaleb(-9):.9f}"


async def request_record(kyma: Any, key: str, request_id: str) -> dict[str, Any]:
    """The request as its owner looks it up, once the request log has it (written in batches
    after the request: polled, with a liveness bound only)."""
    deadline = asyncio.get_running_loop().time() + LIVENESS_S
    async with kyma.http() as http:
        while True:
            reply = await http.get(
                f"/v1/account/requests/{request_id}", headers={"authorization": f"Bearer {key}"}
            )
            if reply.status_code != 404:
                assert reply.status_code == 200, reply.text
                record = reply.json()
                if record["ledger_entries"] or record["cost_usd"] == usd(0):
                    return record
            assert asyncio.get_running_loop().time() < deadline, "the request was never logged"
            await asyncio.sleep(0.05)


async def test_cached_and_reasoning_tokens_are_billed_and_shown_apart(kyma, account) -> None:
    account_id, key = account
    async with kyma.client(key) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="test-model-cached",
            messages=[{"role": "user", "content": "Tell me about rivers and the sea, at length"}],
            max_tokens=8,
            extra_body=SIMULATE,
        )
        reply = raw.parse()
        usage = reply.usage
        assert usage is not None
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        cached = usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
        reasoning = usage.completion_tokens_details.reasoning_tokens  # type: ignore[union-attr]
        assert cached == prompt // 2 > 0 and completion == 8 and reasoning == 2
        # Cached tokens at the cached price, the rest of the prompt at the input price;
        # reasoning is output, at the output price.
        cost = (prompt - cached) * INPUT + cached * CACHED + completion * OUTPUT
        assert usage.cost == usd(cost)  # type: ignore[attr-defined]
        assert raw.headers["x-kyma-cost"] == usd(cost)

        # Where no cache price is set, a cached token costs the full input price.
        plain = await sdk.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "Tell me about rivers and the sea, at length"}],
            max_tokens=8,
            extra_body=SIMULATE,
        )
        assert plain.usage is not None
        assert plain.usage.prompt_tokens_details.cached_tokens == cached  # type: ignore[union-attr]
        assert plain.usage.cost == usd(prompt * INPUT + 8 * OUTPUT)  # type: ignore[attr-defined]

        # Streamed: the last chunk's usage carries the same parts and the charge.
        stream = await sdk.chat.completions.create(
            model="test-model-cached",
            messages=[{"role": "user", "content": "Tell me about rivers and the sea, at length"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=SIMULATE,
        )
        chunks = [chunk async for chunk in stream]
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None
        assert all(chunk.usage is None for chunk in chunks[:-1])
        assert last.usage.prompt_tokens_details.cached_tokens == cached  # type: ignore[union-attr]
        assert last.usage.cost == usd(cost)  # type: ignore[attr-defined]

    record = await request_record(kyma, key, raw.headers["x-request-id"])
    assert record["model"] == "test-model-cached" and record["deployment"] == "upstream-cached"
    assert record["status"] == "ok" and record["endpoint"] == "chat.completions"
    assert record["stream"] is False
    assert record["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 8,
        "total_tokens": prompt + 8,
        "cached_tokens": cached,
        "cache_write_tokens": 0,
        "reasoning_tokens": 2,
        "estimated": False,
    }
    assert record["cost_usd"] == usd(cost)
    [entry] = record["ledger_entries"]
    assert entry["kind"] == "usage" and entry["amount_usd"] == "-" + usd(cost)

    async with kyma.http() as http:
        daily = await http.get("/v1/account/usage", headers={"authorization": f"Bearer {key}"})
    rows = {row["model"]: row for row in daily.json()["data"]}
    assert rows["test-model-cached"]["requests"] == 2
    assert rows["test-model-cached"]["cached_tokens"] == 2 * cached
    assert rows["test-model-cached"]["reasoning_tokens"] == 4
    assert rows["test-model-cached"]["cost_usd"] == usd(2 * cost)
    assert rows["test-model"]["cached_tokens"] == cached
    assert (await kyma.balance(account_id)).balance_nanos == 500_000_000 - 2 * cost - (
        prompt * INPUT + 8 * OUTPUT
    )


async def test_every_answer_shows_what_the_ledger_charged(kyma, account) -> None:
    """Unary and streamed, every endpoint, the upstream's usage and Kyma's own count: each
    answer's usage.cost equals its ledger entries, and together they are the account's spend."""
    account_id, key = account
    messages = [{"role": "user", "content": "Count the stones"}]
    async with kyma.client(key) as sdk:
        await sdk.chat.completions.create(model="test-model", messages=messages, max_tokens=5)
        await sdk.completions.create(model="test-model-cached", prompt="Once upon", max_tokens=4)
        await sdk.completions.create(
            model="test-model-cached", prompt="Once upon", max_tokens=4, extra_body=SIMULATE
        )
        await sdk.embeddings.create(model="test-model", input=["one", "two"])
        await sdk.chat.completions.create(model="kyma-demo", messages=messages, max_tokens=3)
        for model in ("test-model", "test-model-cached", "kyma-demo"):
            stream = await sdk.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=SIMULATE,
            )
            assert [c async for c in stream][-1].usage.cost  # type: ignore[union-attr]
        stream = await sdk.completions.create(
            model="test-model",
            prompt="Once upon",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert [c async for c in stream][-1].usage.cost  # type: ignore[union-attr]
        # An upstream that reports no usage: Kyma counts, and the answer says so.
        await kyma.upstream.control(omit_usage=True)
        counted = await sdk.chat.completions.create(
            model="test-model", messages=messages, max_tokens=4
        )
        assert counted.usage is not None and counted.usage.estimated  # type: ignore[attr-defined]
        stream = await sdk.chat.completions.create(
            model="test-model",
            messages=messages,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        estimated = [c async for c in stream][-1].usage
        assert estimated is not None and estimated.estimated  # type: ignore[attr-defined]
    shown = sum(kyma.costs.costs.values(), Decimal(0))
    assert await kyma.costs.check(kyma) == 11
    spent = 500_000_000 - (await kyma.balance(account_id)).balance_nanos
    assert spent == int(shown * 10**9) > 0


async def test_a_request_is_found_only_by_its_owner(kyma, account) -> None:
    _, key = account
    _, other_key = await kyma.create_account()
    async with kyma.client(key) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="test-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    request_id = raw.headers["x-request-id"]
    assert (await request_record(kyma, key, request_id))["id"] == request_id
    async with kyma.http() as http:
        theirs = await http.get(
            f"/v1/account/requests/{request_id}",
            headers={"authorization": f"Bearer {other_key}"},
        )
        unknown = await http.get(
            "/v1/account/requests/req_nothing", headers={"authorization": f"Bearer {key}"}
        )
        anonymous = await http.get(f"/v1/account/requests/{request_id}")
    for reply in (theirs, unknown):
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "not_found"
    assert anonymous.status_code == 401


async def test_the_sdk_raises_its_typed_error_for_an_unknown_request(kyma, account) -> None:
    async with httpx.AsyncClient(base_url=kyma.http_url) as http:
        reply = await http.get(
            "/v1/account/requests/" + "x" * 500, headers={"authorization": f"Bearer {account[1]}"}
        )
    assert reply.status_code == 404
    with pytest.raises(openai.NotFoundError):
        async with kyma.client(account[1]) as sdk:
            await sdk.get("/account/requests/req_missing", cast_to=object)
