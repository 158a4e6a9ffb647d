"""The official openai SDK, unchanged, against the bridge and core (SQLite and PostgreSQL)."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.asyncio


async def test_chat_completion(client: openai.AsyncOpenAI, kyma) -> None:
    reply = await client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hello there"}], max_tokens=10
    )
    assert reply.model == "test-model"
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 10
    stats = await kyma.upstream.stats()
    forwarded = stats["last_request"]["body"]
    assert forwarded["model"] == "upstream-model"


async def test_streamed_chat_completion_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.model == "test-model" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


async def test_stream_without_usage_request_has_no_usage_chunk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)


async def test_completion(client: openai.AsyncOpenAI) -> None:
    reply = await client.completions.create(model="test-model", prompt="Once upon", max_tokens=6)
    assert reply.model == "test-model"
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens == 6


async def test_streamed_completion(client: openai.AsyncOpenAI) -> None:
    stream = await client.completions.create(
        model="test-model", prompt="Once upon", max_tokens=5, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices)


async def test_embeddings_base64_and_float(client: openai.AsyncOpenAI) -> None:
    reply = await client.embeddings.create(model="test-model", input=["one", "two"])
    assert reply.model == "test-model"
    assert len(reply.data) == 2 and len(reply.data[0].embedding) > 0
    floats = await client.embeddings.create(
        model="test-model", input="one", encoding_format="float", dimensions=8
    )
    assert len(floats.data[0].embedding) == 8


async def test_models(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert "test-model" in ids and "kyma-demo" in ids
    model = await client.models.retrieve("test-model")
    assert model.id == "test-model" and model.owned_by == "kyma-tests"


async def test_demo_model_answers_without_network(client: openai.AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="kyma-demo", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert reply.model == "kyma-demo" and reply.usage.completion_tokens == 5
    stream = await client.chat.completions.create(
        model="kyma-demo",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage.completion_tokens == 5


async def test_unknown_parameters_reach_the_upstream_unchanged(
    client: openai.AsyncOpenAI, kyma
) -> None:
    await client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        temperature=0.25,
        extra_body={"top_k": 7, "repetition_penalty": 1.1, "guided_json": {"type": "object"}},
    )
    body = (await kyma.upstream.stats())["last_request"]["body"]
    assert body["top_k"] == 7 and body["repetition_penalty"] == 1.1
    assert body["guided_json"] == {"type": "object"} and body["temperature"] == 0.25


async def test_client_cannot_choose_upstream_or_credentials(kyma, account) -> None:
    """Whatever the body or headers say, only catalogue deployments are contacted, with their
    own keys; the client's Kyma key never goes upstream."""
    _, key = account
    async with kyma.client(key, default_headers={"x-api-base": "http://127.0.0.1:9"}) as sdk:
        await sdk.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=2,
            extra_body={
                "api_base": "http://127.0.0.1:9/v1",
                "base_url": "http://127.0.0.1:9",
                "api_key": "sk-evil",
            },
        )
    last = (await kyma.upstream.stats())["last_request"]
    assert last["headers"]["authorization"] == "Bearer sk-upstream-secret"
    assert key not in str(last)


async def test_every_response_has_a_request_id(kyma, account) -> None:
    async with kyma.http() as http:
        ok = await http.get("/v1/models", headers={"authorization": f"Bearer {account[1]}"})
        bad = await http.get("/v1/models")
    assert ok.headers["x-request-id"].startswith("req_")
    assert bad.status_code == 401 and bad.headers["x-request-id"].startswith("req_")
