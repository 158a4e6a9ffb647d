"""The bridge's two ways to call the core answer alike: inference calls carried on relay
streams (`KYMA_BRIDGE_RELAY_STREAMS`, the default) and one gRPC call per request (0). Every
other integration test runs the default; these run a request of each kind both ways, and show
that the relay carries many requests on few streams."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.conftest import Kyma, Upstream, running_kyma

pytestmark = pytest.mark.asyncio

LIVENESS_S = 30.0
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest_asyncio.fixture(params=[0, 2], ids=["a-call-each", "relay"])
async def kyma_way(
    request: pytest.FixtureRequest, upstream: Upstream, tmp_path: pathlib.Path
) -> AsyncIterator[Kyma]:
    async with running_kyma(
        tmp_path, None, upstream, "sqlite", bridge_relay_streams=request.param
    ) as running:
        yield running


async def test_answers_errors_and_streams_alike(kyma_way: Kyma) -> None:
    kyma = kyma_way
    _, key = await kyma.create_account()
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=kyma.http_url, timeout=LIVENESS_S) as http:
        done = await http.post("/v1/chat/completions", json=CHAT, headers=auth)
        assert done.status_code == 200, done.text
        assert done.json()["object"] == "chat.completion"
        assert done.headers["x-kyma-cost"]
        assert done.headers["x-ratelimit-limit-requests"]

        wrong = await http.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-kyma-nope"}
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"

        unknown = await http.post(
            "/v1/chat/completions", json={**CHAT, "model": "no"}, headers=auth
        )
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"

        events = []
        async with http.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth
        ) as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]"
        assert len(events) > 2

        messages = await http.post(
            "/v1/messages",
            json={"model": "test-model", "max_tokens": 8, "messages": [CHAT["messages"][0]]},
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        )
        assert messages.status_code == 200, messages.text
        assert messages.json()["type"] == "message"
    await kyma.settled()


async def test_many_requests_ride_few_streams(kyma_way: Kyma) -> None:
    kyma = kyma_way
    relay = kyma.core.server.relay
    _, key = await kyma.create_account()
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=kyma.http_url, timeout=LIVENESS_S) as http:
        replies = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=CHAT, headers=auth) for _ in range(40))
        )
    # The new account's tier allows only some of them this minute: the rest are refused 429,
    # by the core, through the same calls.
    answered = {r.status_code for r in replies}
    assert 200 in answered and answered <= {200, 429}
    streams = relay.streams_opened
    if kyma.settings.bridge_relay_streams:
        assert 1 <= streams <= kyma.settings.bridge_relay_streams
    else:
        assert streams == 0
    await kyma.settled()


async def test_a_core_that_does_not_serve_drains_its_streams(
    upstream: Upstream, tmp_path: pathlib.Path
) -> None:
    """While a core's database does not answer (its health NOT_SERVING), its relay streams
    drain and every stream opened to it drains at once: no call starts there (the bridge
    answers 503, as when no core is reachable, having charged nothing); once it serves again,
    a new stream carries calls."""
    async with running_kyma(tmp_path, None, upstream, "sqlite", bridge_relay_streams=1) as kyma:
        relay = kyma.core.server.relay
        _, key = await kyma.create_account()
        auth = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=kyma.http_url, timeout=LIVENESS_S) as http:
            assert (await http.post("/v1/chat/completions", json=CHAT, headers=auth)).is_success
            opened = relay.streams_opened
            relay.serving(False)
            refused = await http.post("/v1/chat/completions", json=CHAT, headers=auth)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"]
            relay.serving(True)
            again = await http.post("/v1/chat/completions", json=CHAT, headers=auth)
            assert again.status_code == 200, again.text
            assert relay.streams_opened > opened
        await kyma.settled()
