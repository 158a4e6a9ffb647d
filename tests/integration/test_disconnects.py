"""A client that goes away cancels the upstream request promptly, streamed or not; failures
before the first byte fail over, failures after it end the stream with an error event."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

pytestmark = pytest.mark.asyncio


# Liveness only (a hung test fails rather than hangs): what each test proves is in its events
# and counters, never in how long it took.
LIVENESS_S = 30.0


async def wait_for(predicate, timeout: float = LIVENESS_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def failures(kyma) -> int:
    """Failures the router has judged against the test upstream: a timeout counts, a client
    that left does not."""
    [status] = [
        s
        for s in kyma.core.router.status(kyma.core.catalogue.models())
        if (s.model, s.deployment) == ("test-model", "upstream-a")
    ]
    return status.failures


async def test_stream_disconnect_cancels_upstream(kyma, account) -> None:
    # 200 tokens at 20 a second: left alone the upstream would finish the stream, uncancelled.
    await kyma.upstream.control(tokens_per_second=20)
    async with httpx.AsyncClient(base_url=kyma.http_url, timeout=10) as http:
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "test-model",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 200,
                "stream": True,
            },
            headers={"authorization": f"Bearer {account[1]}"},
        ) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")

    async def cancelled() -> bool:
        stats = await kyma.upstream.stats()
        return stats["cancelled"] >= 1 and stats["in_flight"] == 0

    await wait_for(cancelled)


async def test_unary_disconnect_cancels_upstream(kyma, account) -> None:
    await kyma.upstream.control(latency_ms=3000)
    before = failures(kyma)
    async with kyma.client(account[1], timeout=LIVENESS_S) as sdk:
        call = asyncio.ensure_future(
            sdk.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "x"}], max_tokens=2
            )
        )

        async def at_the_upstream() -> bool:
            return (await kyma.upstream.stats())["in_flight"] == 1

        # The SDK's call goes away once the upstream works on it (a short SDK timeout instead
        # could expire before the request got there, on a busy machine).
        await wait_for(at_the_upstream)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    async def cancelled() -> bool:
        stats = await kyma.upstream.stats()
        return stats["cancelled"] >= 1 and stats["in_flight"] == 0

    await wait_for(cancelled)
    # The client's leaving cancelled it, not the core's own first-token timeout (2 s in the
    # test catalogue), which would have counted as a failure of the deployment.
    await kyma.settled()
    assert failures(kyma) == before


async def test_broken_stream_ends_with_an_error_event(kyma, account) -> None:
    await kyma.upstream.control(drop_stream_after=3)
    async with kyma.client(account[1]) as sdk:
        stream = await sdk.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "x"}],
            max_tokens=50,
            stream=True,
        )
        received = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                received.append(chunk)
    assert 1 <= len(received) <= 4
    assert (await kyma.upstream.stats())["requests_total"] == 1  # nothing retried after bytes


async def test_upstream_hang_times_out_as_504(kyma, account) -> None:
    await kyma.upstream.control(hang_rate=1.0)
    async with kyma.client(account[1]) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            # the test catalogue's first-token timeout is 10 s; a total timeout bounds unary calls
            await asyncio.wait_for(
                sdk.chat.completions.create(
                    model="test-model",
                    messages=[{"role": "user", "content": "x"}],
                    max_tokens=2,
                    stream=True,
                ),
                timeout=LIVENESS_S,
            )
    assert caught.value.status_code == 504


@pytest.mark.parametrize("stream", [False, True])
async def test_disconnect_reaches_the_upstream(kyma, account, stream: bool) -> None:
    """Cancelled by the client's leaving, seen by the upstream while it was still working on the
    request. How fast that happens is the benchmark's to measure (`scripts/bench`)."""
    # Left alone, the upstream would answer after 5 s, or stream for 20 s.
    await kyma.upstream.control(
        latency_ms=0 if stream else 5000, tokens_per_second=5 if stream else 0
    )
    body = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 100,
        "stream": stream,
    }
    before = failures(kyma)
    async with httpx.AsyncClient(base_url=kyma.upstream.url, timeout=5) as probe:

        async def stats() -> dict:
            return (await probe.get("/_stats")).json()

        async def working() -> bool:
            return (await stats())["in_flight"] == 1

        async def cancelled() -> bool:
            current = await stats()
            return current["cancelled"] >= 1 and current["in_flight"] == 0

        async with httpx.AsyncClient(base_url=kyma.http_url, timeout=30) as http:
            request = asyncio.create_task(
                http.post(
                    "/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {account[1]}"},
                )
            )
            await wait_for(working)
            request.cancel()
        await wait_for(cancelled)
        current = await stats()
    assert current["cancelled"] == 1 and current["responses_by_status"] == {"499": 1}
    # Not the core's own timeout (first token 2 s, idle 5 s): that would count as a failure.
    await kyma.settled()
    assert failures(kyma) == before
