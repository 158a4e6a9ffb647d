"""The demo transport answers OpenAI HTTP in-process: through plain httpx and through the official
SDK, which must work against it unchanged."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from core_service.tokens import count_tokens
from core_service.upstream.demo import DemoTransport

BASE = "http://demo.invalid/v1"
MESSAGES = [{"role": "user", "content": "Say something."}]


class RecordingSleep:
    """Stands in for asyncio.sleep so pacing is observable without waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=DemoTransport(), base_url=BASE) as client:
        yield client


@pytest.fixture
async def sdk() -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=BASE,
        api_key="x",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=DemoTransport()),
    )
    async with client:
        yield client


def sse_events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    events = raw.split(b"\n\n")[:-1]
    assert all(event.startswith(b"data: ") for event in events)
    return [event[len(b"data: ") :] for event in events]


async def test_chat_over_http(http: httpx.AsyncClient) -> None:
    response = await http.post("/chat/completions", json={"model": "demo", "messages": MESSAGES})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model"] == "demo"
    assert body["usage"]["completion_tokens"] == count_tokens(
        body["choices"][0]["message"]["content"]
    )


async def test_streaming_over_http_is_sse_ending_with_done(http: httpx.AsyncClient) -> None:
    request = {"model": "demo", "messages": MESSAGES, "stream": True, "max_tokens": 4}
    async with http.stream("POST", "/chat/completions", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = await response.aread()
    events = sse_events(raw)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert [chunk["object"] for chunk in chunks] == ["chat.completion.chunk"] * 6
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_any_base_path_is_served() -> None:
    async with httpx.AsyncClient(transport=DemoTransport()) as client:
        for url in ("http://x/openai/v1/completions", "http://x/completions"):
            response = await client.post(url, json={"model": "demo", "prompt": "Hi"})
            assert response.status_code == 200, url
            assert response.json()["object"] == "text_completion"


async def test_pacing_sleeps_once_per_token() -> None:
    sleep = RecordingSleep()
    transport = DemoTransport(tokens_per_second=20, sleep=sleep)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        request = {"model": "demo", "prompt": "Hi", "stream": True, "max_tokens": 5, "n": 2}
        response = await client.post("/completions", json=request)
    assert response.status_code == 200
    assert sleep.calls == [0.05] * 10


async def test_closing_a_stream_stops_generation() -> None:
    sleep = RecordingSleep()
    transport = DemoTransport(tokens_per_second=1000, sleep=sleep)
    request = {"model": "demo", "messages": MESSAGES, "stream": True, "max_tokens": 10_000}
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        async with client.stream("POST", "/chat/completions", json=request) as response:
            received = 0
            async for _ in response.aiter_raw():
                received += 1
                if received == 3:
                    break
    assert len(sleep.calls) <= 3


def test_negative_pacing_is_refused() -> None:
    with pytest.raises(ValueError):
        DemoTransport(tokens_per_second=-1)


@pytest.mark.parametrize(
    ("method", "path", "content", "status"),
    [
        ("POST", "/chat/completions", b"{oops", 400),
        ("POST", "/chat/completions", b'{"model": "demo"}', 400),
        ("POST", "/embeddings", b'{"model": "demo", "input": []}', 400),
        ("POST", "/audio/speech", b"{}", 404),
        ("DELETE", "/models", b"", 405),
    ],
)
async def test_bad_requests_get_openai_errors(
    http: httpx.AsyncClient, method: str, path: str, content: bytes, status: int
) -> None:
    response = await http.request(method, path, content=content)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_sdk_chat(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(
        model="demo-public", messages=MESSAGES, max_tokens=9
    )  # type: ignore[arg-type]
    assert completion.model == "demo-public"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 9


async def test_sdk_streaming_with_usage(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="demo",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage: Any = None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage
    text = "".join(pieces)
    assert usage is not None
    assert usage.completion_tokens == count_tokens(text) == 16
    whole = await sdk.chat.completions.create(model="demo", messages=MESSAGES)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == text


async def test_sdk_completions(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.completions.create(model="demo", prompt=["a", "b"], max_tokens=3)
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    stream = await sdk.completions.create(model="demo", prompt="a", max_tokens=3, stream=True)
    texts = [chunk.choices[0].text async for chunk in stream]
    assert (
        "".join(texts)
        == (await sdk.completions.create(model="demo", prompt="a", max_tokens=3)).choices[0].text
    )


async def test_sdk_embeddings_in_base64_and_float(sdk: openai.AsyncOpenAI) -> None:
    # The SDK asks for base64 by default and decodes it itself.
    default = await sdk.embeddings.create(model="emb", input=["one", "two"])
    floats = await sdk.embeddings.create(model="emb", input=["one", "two"], encoding_format="float")
    assert [item.embedding for item in default.data] == [item.embedding for item in floats.data]
    assert len(default.data[0].embedding) == 256
    short = await sdk.embeddings.create(model="emb", input=[1, 2, 3], dimensions=12)
    assert len(short.data[0].embedding) == 12
    encoded = await sdk.embeddings.create(model="emb", input="one", encoding_format="base64")
    raw = encoded.data[0].embedding
    decoded = list(struct.unpack("<256f", base64.b64decode(raw))) if isinstance(raw, str) else raw
    assert decoded == floats.data[0].embedding


async def test_sdk_models(sdk: openai.AsyncOpenAI) -> None:
    listing = await sdk.models.list()
    assert [model.id for model in listing.data] == ["kyma-demo"]
    model = await sdk.models.retrieve("demo")
    assert model.id == "demo" and model.object == "model"


async def test_sdk_sees_typed_errors(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="demo", messages=[])
    assert caught.value.param == "messages"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        await sdk.get("/no/such/thing", cast_to=object)
