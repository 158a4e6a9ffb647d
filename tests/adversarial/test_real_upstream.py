"""Against a real inference server (llama-cpp-python with SmolLM2-135M, tests/fakes/
llama_server.py): chat and streaming work through Kyma, and what was found against it holds —
input the text-only model cannot take is the requester's failure alone, with the server's own
reason; `max_completion_tokens` reaches it as the limit it reads, and what it wrote is what is
billed, logged and shown; a stream it sends without usage still ends with the usage chunk
the client asked for."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy import select

from core_service.billing.verify import verify_ledger
from core_service.clock import SystemClock
from core_service.db.models import LedgerEntry
from core_service.logs.query import REQUEST_LOGS
from tests.conftest import Kyma, running_kyma
from tests.fakes.llama_server import LlamaServer, llama_server


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    with llama_server() as server:
        yield server


@pytest_asyncio.fixture
async def real(llama: LlamaServer, upstream, tmp_path: pathlib.Path) -> AsyncIterator[Kyma]:  # type: ignore[no-untyped-def]
    catalog = tmp_path / "real.yaml"
    catalog.write_text(
        f"""
models:
  - name: smol
    context_window: 2048
    max_output_tokens: 64
    price: {{input_per_million: "1.00", output_per_million: "2.00"}}
    deployments:
      - name: llama-cpp
        base_url: {llama.base_url}
        model: smollm2
        timeouts: {{connect: 5, first_token: 120, idle: 120, total: 300}}
"""
    )
    async with running_kyma(tmp_path, None, upstream, "sqlite", catalog=catalog) as kyma:
        yield kyma


def _chat(**extra: object) -> dict:
    return {"model": "smol", "messages": [{"role": "user", "content": "Say hello."}], **extra}


async def test_chat_and_stream_through_kyma(real: Kyma) -> None:
    _, key = await real.create_account()
    async with real.client(key) as sdk:
        reply = await sdk.chat.completions.create(**_chat(max_tokens=12))  # type: ignore[call-overload]
        assert reply.choices[0].message.content and reply.model == "smol"
        assert 0 < reply.usage.completion_tokens <= 12
        chunks = [
            chunk
            async for chunk in await sdk.chat.completions.create(  # type: ignore[call-overload]
                **_chat(max_tokens=12), stream=True, stream_options={"include_usage": True}
            )
        ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    await real.verify_ledger()


async def test_max_completion_tokens_is_what_is_written_billed_and_logged(real: Kyma) -> None:
    account_id, key = await real.create_account()
    async with real.http() as http:
        reply = await http.post(
            "/v1/chat/completions",
            json=_chat(max_completion_tokens=10),  # langchain-openai's parameter
            headers={"authorization": f"Bearer {key}"},
        )
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    assert usage["completion_tokens"] <= 10  # the server read it as its limit
    request_id = reply.headers["x-request-id"]
    await real.settled()
    logged = None
    for _ in range(300):  # the request log is written in batches, a moment later
        async with real.core.storage.reads.connect() as conn:
            logged = (
                await conn.execute(
                    select(REQUEST_LOGS.c.completion_tokens, REQUEST_LOGS.c.cost_nanos).where(
                        REQUEST_LOGS.c.request_id == request_id
                    )
                )
            ).first()
        if logged is not None:
            break
        await asyncio.sleep(0.1)
    assert logged is not None and logged.completion_tokens == usage["completion_tokens"]
    async with real.core.storage.reads.connect() as conn:
        charged = await conn.scalar(
            select(LedgerEntry.amount_nanos).where(LedgerEntry.actor == request_id)
        )
    expected = usage["prompt_tokens"] * 1_000 + usage["completion_tokens"] * 2_000
    assert logged.cost_nanos == charged == expected
    report = await verify_ledger(real.core.engine, SystemClock())
    assert report.ok, report.problems


@pytest.mark.parametrize(
    "extra",
    [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                    ],
                }
            ]
        },
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            }
        },
    ],
    ids=["image-part", "json-schema"],
)
async def test_input_the_model_cannot_take_fails_only_its_requester(real: Kyma, extra) -> None:
    attacker_id, attacker = await real.create_account()
    _, victim = await real.create_account()
    statuses = []
    async with real.http() as http:
        for _ in range(4):
            reply = await http.post(
                "/v1/chat/completions",
                json={**_chat(max_tokens=8), **extra},
                headers={"authorization": f"Bearer {attacker}"},
            )
            statuses.append(reply.status_code)
            body = reply.json()
            assert reply.status_code < 500 or reply.status_code in (502, 503), body
            if reply.status_code in (400, 502):
                message = body["error"]["message"]
                assert "127.0.0.1" not in message and "smollm2" not in message
        for _ in range(3):
            ok = await http.post(
                "/v1/chat/completions",
                json=_chat(max_tokens=8),
                headers={"authorization": f"Bearer {victim}"},
            )
            assert ok.status_code == 200, ok.text
    [status] = [
        s for s in real.core.router.status(real.core.catalogue.models()) if s.model == "smol"
    ]
    assert status.state.value == "closed"
    assert (await real.balance(attacker_id)).balance_nanos == 500_000_000  # charged nothing
